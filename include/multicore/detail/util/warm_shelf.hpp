// SPDX-License-Identifier: MIT
// Emptied large buffers kept for the next ones, within a count and a byte bound.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

namespace multicore::detail {

/// Emptied buffers (byte buffers, or vectors of any element type) kept for reuse, because
/// faulting in fresh pages costs more than the work done with them (see WarmBuffer): up to
/// `max_count` of them within a byte bound. Best fit on take; at a bound, a newcomer takes the
/// place of smaller ones (the largest are the dearest to fault in) if that makes enough room,
/// else it is the one left out. Not thread-safe: its owner locks, and decides when it is cold.
template <class Buffer>
class WarmShelf {
 public:
  explicit WarmShelf(std::size_t max_count) noexcept : max_count_(max_count) {}

  /// The smallest kept buffer with room for `n` elements, taken off the shelf; else an empty
  /// one, since growing a smaller one would allocate anyway (it stays for smaller requests).
  Buffer take(std::size_t n) noexcept {
    auto best = kept_.end();
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->capacity() >= n && (best == kept_.end() || it->capacity() < best->capacity())) {
        best = it;
      }
    }
    if (best == kept_.end()) return Buffer();
    Buffer out = std::move(*best);
    kept_.erase(best);
    bytes_ -= bytes_of(out);
    return out;
  }

  /// Keeps `used` (emptied, its storage kept) if that fits within `max_bytes` for the whole
  /// shelf, making room by freeing smaller ones; else leaves it with the caller, to be freed.
  /// Returns whether it was kept.
  bool keep(Buffer& used, std::size_t max_bytes) noexcept {
    const std::size_t bytes = bytes_of(used);
    if (bytes == 0) return false;
    std::size_t larger = 0;
    std::size_t larger_bytes = 0;
    for (const Buffer& kept : kept_) {
      if (kept.capacity() < used.capacity()) continue;
      ++larger;
      larger_bytes += bytes_of(kept);
    }
    if (larger >= max_count_ || larger_bytes + bytes > max_bytes) return false;
    while (kept_.size() >= max_count_ || bytes_ + bytes > max_bytes) {
      auto smallest = std::min_element(
          kept_.begin(), kept_.end(),
          [](const Buffer& a, const Buffer& b) { return a.capacity() < b.capacity(); });
      bytes_ -= bytes_of(*smallest);
      kept_.erase(smallest);
    }
    try {
      kept_.push_back(std::move(used));
    } catch (...) {  // no memory to note it: it stays with the caller
      return false;
    }
    bytes_ += bytes;
    return true;
  }

  /// Frees every kept buffer.
  void clear() noexcept {
    kept_.clear();
    bytes_ = 0;
  }

  std::size_t size() const noexcept { return kept_.size(); }
  bool empty() const noexcept { return kept_.empty(); }
  /// Bytes of storage kept.
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  static std::size_t bytes_of(const Buffer& b) noexcept {
    if constexpr (requires { typename Buffer::value_type; }) {
      return b.capacity() * sizeof(typename Buffer::value_type);
    } else {
      return b.capacity();  // a byte buffer
    }
  }

  std::size_t max_count_;
  std::vector<Buffer> kept_;
  std::size_t bytes_ = 0;  // of every kept buffer's storage
};

}  // namespace multicore::detail
