// SPDX-License-Identifier: MIT
// ResultLatch: how a thread waits for the results of its own calls (Pool::call, Task::get).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace multicore::detail {

/// Counts results still to come; the waiting thread sleeps until none are left. The waiter may
/// destroy the latch the moment it sees done() (Pool::call's lives on the caller's stack), so the
/// thread that delivers the last result touches it no more once it has published that: without
/// a sleeper it publishes with one atomic operation; with one, under the mutex the sleeper
/// checks done() under, so the sleeper cannot leave before the deliverer has let go.
///
/// One waiter. expect() comes from the waiter's thread, before the call it counts is sent.
class ResultLatch {
 public:
  /// One more result to come.
  void expect() noexcept { word_.fetch_add(one, std::memory_order_relaxed); }

  /// A result is in place (its value or error stored before): counts it, and wakes the waiter
  /// if it was the last. Also takes back an expect() whose call was never sent.
  void arrive() noexcept {
    std::uint64_t word = word_.load(std::memory_order_relaxed);
    while (word != (one | sleeping)) {  // the last result for a sleeper: see below
      if (word_.compare_exchange_weak(word, word - one, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
        return;
      }
    }
    // Publishing 0 outside the mutex would let the sleeper see it on its way into the wait, or
    // on a spurious wake-up, and destroy the mutex before we lock it.
    std::lock_guard lock(mutex_);
    word_.store(0, std::memory_order_release);
    woken_.notify_one();
  }

  /// No result is still to come.
  bool done() const noexcept { return word_.load(std::memory_order_acquire) == 0; }

  /// Blocks until done().
  void wait() {
    std::unique_lock lock(mutex_);
    std::uint64_t word = word_.load(std::memory_order_acquire);
    do {
      if (word == 0) return;
    } while (!word_.compare_exchange_weak(word, word | sleeping, std::memory_order_acq_rel,
                                          std::memory_order_acquire));
    woken_.wait(lock, [&] { return done(); });
  }

  /// The waiter is in wait() (or on its way, holding the mutex).
  bool has_sleeper() const noexcept {
    return (word_.load(std::memory_order_acquire) & sleeping) != 0;
  }

 private:
  // The count of results to come, times two, plus the `sleeping` bit.
  static constexpr std::uint64_t sleeping = 1;
  static constexpr std::uint64_t one = 2;

  std::atomic<std::uint64_t> word_{0};
  std::mutex mutex_;
  std::condition_variable woken_;
};

}  // namespace multicore::detail
