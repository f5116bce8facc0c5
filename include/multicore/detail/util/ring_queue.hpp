// SPDX-License-Identifier: MIT
// A FIFO over a circular buffer, for the scheduler's job queues.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace multicore::detail {

/// Double-ended FIFO whose storage only grows. std::deque frees a block whenever a queue
/// drains and allocates one when it refills; a worker's queue does that for every task, and
/// the block is often freed on another thread than the one that allocated it, which defeats
/// malloc's per-thread caches. Not thread-safe.
template <class T>
class RingQueue {
 public:
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }

  T& front() noexcept { return slots_[head_]; }
  T& back() noexcept { return (*this)[size_ - 1]; }
  /// The i-th element from the front.
  T& operator[](std::size_t i) noexcept { return slots_[(head_ + i) & (slots_.size() - 1)]; }

  void push_back(T value) {
    grow_if_full();
    (*this)[size_] = std::move(value);
    ++size_;
  }

  void push_front(T value) {
    grow_if_full();
    head_ = (head_ + slots_.size() - 1) & (slots_.size() - 1);
    slots_[head_] = std::move(value);
    ++size_;
  }

  T pop_front() {
    T value = std::move(slots_[head_]);
    head_ = (head_ + 1) & (slots_.size() - 1);
    --size_;
    return value;
  }

  T pop_back() {
    T value = std::move(back());
    --size_;
    return value;
  }

  void clear() {
    while (!empty()) pop_front();
  }

 private:
  void grow_if_full() {
    if (size_ < slots_.size()) return;
    std::vector<T> bigger(slots_.empty() ? 8 : slots_.size() * 2);  // a power of two
    for (std::size_t i = 0; i < size_; ++i) bigger[i] = std::move((*this)[i]);
    slots_ = std::move(bigger);
    head_ = 0;
  }

  std::vector<T> slots_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
};

}  // namespace multicore::detail
