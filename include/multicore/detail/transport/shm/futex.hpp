// SPDX-License-Identifier: MIT
// Waiting across processes: a bounded, adaptive spin, then a process-shared futex.
#pragma once

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <ctime>

#include "../../util/spin.hpp"

namespace multicore::detail {

// libstdc++'s std::atomic::wait uses FUTEX_PRIVATE_FLAG, which keys the futex on the virtual
// address in one process and so never wakes a waiter in another process. These calls leave the
// flag off: the kernel then keys on the shared page, which works across fork.
inline void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                       const timespec* relative_timeout) noexcept {
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
  // EAGAIN (value changed), EINTR and ETIMEDOUT all just mean "look again".
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, relative_timeout,
          nullptr, 0);
}

inline void futex_wake_all(std::atomic<std::uint32_t>* word) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr,
          0);
}

/// A process-shared wake-up channel with one sleeper (its owner) and any number of ringers.
/// Lives in shared memory. The ringer pays one fence and one load when nobody sleeps; the
/// futex syscall only happens when the owner really went to sleep.
///
/// Protocol (Dekker-style; both sides use seq_cst fences so at least one sees the other):
///   owner:  seq0 = seq; sleeping = 1; fence; if (!ready()) futex_wait(seq, seq0); sleeping = 0
///   ringer: publish data; fence; if (sleeping) { ++seq; futex_wake(seq) }
/// Only the owner ever clears `sleeping`: a ringer that cleared it could let a second ringer
/// skip the wake while the owner is still asleep (a lost wake-up).
struct Doorbell {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> sleeping{0};

  void ring() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sleeping.load(std::memory_order_relaxed) != 0) {
      seq.fetch_add(1, std::memory_order_seq_cst);
      futex_wake_all(&seq);
    }
  }

  /// Sleeps until rung or `timeout` passes, unless `ready()` already holds. Returns ready().
  template <class Ready>
  bool sleep_unless(Ready&& ready, std::chrono::nanoseconds timeout) noexcept {
    const std::uint32_t seq0 = seq.load(std::memory_order_seq_cst);
    sleeping.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (ready()) {
      sleeping.store(0, std::memory_order_relaxed);
      return true;
    }
    const timespec relative{static_cast<time_t>(timeout.count() / 1'000'000'000),
                            static_cast<long>(timeout.count() % 1'000'000'000)};
    futex_wait(&seq, seq0, timeout.count() > 0 ? &relative : nullptr);
    sleeping.store(0, std::memory_order_relaxed);
    return ready();
  }
};

/// Spins, then sleeps on `bell` until `ready()` or until `timeout` has passed in total.
/// `timeout` <= 0 waits without limit. Calls `before_sleep()` once if it has to sleep (a worker
/// flushes its output there). Returns ready().
template <class Ready, class BeforeSleep>
bool wait_for(Doorbell& bell, SpinBudget& budget, Ready&& ready, std::chrono::nanoseconds timeout,
              BeforeSleep&& before_sleep) noexcept {
  if (budget.spin(ready)) {
    budget.learn(std::chrono::nanoseconds{0});  // within the window, and no clock to read
    return true;
  }
  // The spin took its whole budget; time the rest of the wait from here (close enough).
  const auto start = std::chrono::steady_clock::now();
  const auto learn = [&](bool result) {
    budget.learn(std::chrono::steady_clock::now() - start);
    return result;
  };
  before_sleep();
  if (timeout.count() <= 0) {
    while (!bell.sleep_unless(ready, std::chrono::nanoseconds{0})) {
    }
    return learn(true);
  }
  const auto deadline = start + timeout;
  for (;;) {
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds{0}) return learn(ready());
    if (bell.sleep_unless(ready, left)) return learn(true);
  }
}

template <class Ready>
bool wait_for(Doorbell& bell, SpinBudget& budget, Ready&& ready,
              std::chrono::nanoseconds timeout = std::chrono::nanoseconds{0}) noexcept {
  return wait_for(bell, budget, ready, timeout, [] {});
}

}  // namespace multicore::detail
