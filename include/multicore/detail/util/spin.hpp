// SPDX-License-Identifier: MIT
// Spinning before sleeping: how to spin politely, and for how long.
#pragma once

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace multicore::detail {

/// Tells the CPU we are spinning (saves power, frees the sibling hyperthread).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

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

}  // namespace multicore::detail
