// SPDX-License-Identifier: MIT
// Emptied vectors of any element type, kept between uses, and given back once they stay unused.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "warm_buffer.hpp"
#include "warm_shelf.hpp"

namespace multicore::detail {

/// Storage for a pool's map chunks (their inputs and results vectors), kept from one chunk to
/// the next and from one map to the next: vectors allocated afresh fault their pages in again
/// (malloc gives large blocks back to the system as they are freed), which on some VMs made a
/// map of trivial items several times slower. The same policy as large transfer buffers (see
/// WarmBuffer and WarmShelf): up to max_per_type vectors of each element type, `max_bytes` in
/// all, all given back once none was kept for WarmBuffer::warm_for. Thread-safe.
class VectorCache {
 public:
  using Clock = WarmBuffer::Clock;
  static constexpr std::size_t max_per_type = 16;

  explicit VectorCache(std::size_t max_bytes = WarmBuffer::max_warm_bytes) noexcept
      : max_bytes_(max_bytes) {}

  /// The smallest kept vector (empty) with room for `n` elements; else a new one (see
  /// WarmShelf::take).
  template <class T>
  std::vector<T> take(std::size_t n) noexcept {
    std::lock_guard lock(mutex_);
    Shelf<T>* shelf = find<T>();
    if (shelf == nullptr) return {};
    const std::size_t before = shelf->vectors.bytes();
    std::vector<T> out = shelf->vectors.take(n);
    bytes_ -= before - shelf->vectors.bytes();
    return out;
  }

  /// Keeps `used`'s storage if the bounds allow (see WarmShelf::keep: a larger vector displaces
  /// smaller ones of its type); `used` is left empty either way. Destroys its elements first,
  /// outside the lock.
  template <class T>
  void keep(std::vector<T>& used) noexcept {
    used.clear();
    if (used.capacity() == 0) return;
    std::vector<T> left_out;  // freed after the lock is released
    std::lock_guard lock(mutex_);
    used_ = Clock::now();
    Shelf<T>* shelf = find<T>();
    if (shelf == nullptr) {
      try {
        shelves_.push_back(std::make_unique<Shelf<T>>());
      } catch (...) {  // no memory to note it: it is freed
        left_out = std::move(used);
        return;
      }
      shelf = static_cast<Shelf<T>*>(shelves_.back().get());
    }
    const std::size_t others = bytes_ - shelf->vectors.bytes();  // bytes_ <= max_bytes_ always
    if (!shelf->vectors.keep(used, max_bytes_ - others)) {
      left_out = std::move(used);
    }
    bytes_ = others + shelf->vectors.bytes();
  }

  /// Gives back every kept vector if none was kept for WarmBuffer::warm_for before `now`.
  void release_if_cold(Clock::time_point now) noexcept {
    std::vector<std::unique_ptr<ShelfBase>> cold;  // freed after the lock is released
    {
      std::lock_guard lock(mutex_);
      if (shelves_.empty() || now - used_ < WarmBuffer::warm_for) return;
      cold.swap(shelves_);
      bytes_ = 0;
    }
  }

  /// Bytes of storage kept (for tests).
  std::size_t kept_bytes() {
    std::lock_guard lock(mutex_);
    return bytes_;
  }

 private:
  struct ShelfBase {
    virtual ~ShelfBase() = default;
    const void* type = nullptr;
  };
  template <class T>
  struct Shelf final : ShelfBase {
    Shelf() noexcept { type = &type_tag<T>; }
    WarmShelf<std::vector<T>> vectors{max_per_type};
  };
  /// One address per element type: what tells shelves apart.
  template <class T>
  static constexpr char type_tag = 0;

  template <class T>
  Shelf<T>* find() noexcept {
    for (auto& shelf : shelves_) {
      if (shelf->type == &type_tag<T>) return static_cast<Shelf<T>*>(shelf.get());
    }
    return nullptr;
  }

  std::size_t max_bytes_;
  std::mutex mutex_;  // guards everything below
  std::vector<std::unique_ptr<ShelfBase>> shelves_;
  std::size_t bytes_ = 0;  // of every kept vector's storage
  Clock::time_point used_{};
};

}  // namespace multicore::detail
