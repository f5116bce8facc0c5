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

namespace multicore::detail {

/// Tells the CPU we are spinning (saves power, frees the sibling hyperthread).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

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

/// How long to spin before sleeping, learnt from how long recent waits really took: a wait
/// that ended within `max_spin` (by spinning or after sleeping) says spinning would catch the
/// next event without a wake-up; longer ones (long tasks) say spinning is wasted, and would take
/// a core that, on a small machine, the tasks need. Measured in time, not PAUSEs: a PAUSE takes
/// 10 to 140 cycles depending on the CPU.
class SpinBudget {
 public:
  static constexpr std::chrono::nanoseconds min_spin{1'000};
  static constexpr std::chrono::nanoseconds max_spin{100'000};
  /// Past this, the spin also yields the CPU between looks (spin, then yield, then sleep, like
  /// crossbeam's Backoff). The side we wait for may share our core (a loaded machine, or more
  /// processes than cores): a pure spin would keep it from running for the whole budget, at
  /// every hand-off (a 16 MiB echo through a 4 KiB ring took 5 s so, pinned to one core, and
  /// 0.3 s yielding). With a core to itself, sched_yield returns at once.
  static constexpr std::chrono::nanoseconds yield_after{2'000};

  /// Spins up to the budget waiting for `ready()`; true if it became ready meanwhile.
  template <class Ready>
  bool spin(Ready&& ready) noexcept {
    const auto start = std::chrono::steady_clock::now();
    for (std::uint32_t i = 1;; ++i) {
      if (ready()) return true;
      cpu_relax();
      // Reading the clock costs about as much as a few pauses: do it now and then.
      if (i % 64 == 0) {
        const auto spun = std::chrono::steady_clock::now() - start;
        if (spun >= budget_) return ready();
        if (spun >= yield_after) sched_yield();
      }
    }
  }

  /// Learns from a whole wait (spin and sleep) that took `waited`. Within the window, spin the
  /// whole window next time: a wake-up costs more than the spin (10 to 80 us on a virtual CPU
  /// that has gone idle), and an event that came this soon is likely to come as soon again.
  /// Beyond it, halve the budget: waits are long now (long tasks), and spinning only burns.
  void learn(std::chrono::nanoseconds waited) noexcept {
    budget_ = waited < max_spin ? max_spin : std::max(min_spin, budget_ / 2);
  }

 private:
  std::chrono::nanoseconds budget_{max_spin};
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
