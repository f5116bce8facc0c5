// SPDX-License-Identifier: MIT
// Tests for waiting across processes: the shared futex, Doorbell's protocol (no lost wake-ups)
// and wait_for's spin-then-sleep with a timeout.
#include "multicore/detail/transport/shm/futex.hpp"

#include <gtest/gtest.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <type_traits>

#include "multicore/detail/transport/shm/ring.hpp"  // cache_line_size
#include "multicore/detail/transport/shm/shm.hpp"
#include "support/child_watch.hpp"
#include "support/slurp.hpp"

namespace {

using multicore::detail::cache_line_size;
using multicore::detail::Doorbell;
using multicore::detail::SharedRegion;
using multicore::detail::SpinBudget;
using multicore::detail::wait_for;
using multicore_test::ChildWatch;
using namespace std::chrono_literals;

/// Liveness bound for waits that must end: far beyond any wake-up latency, only reached when
/// the wake-up under test is lost (the assertion then fails instead of the test hanging).
constexpr auto liveness_bound = std::chrono::seconds(20);

/// An object of type T constructed in its own anonymous shared mapping, visible to children
/// forked after construction.
template <class T>
class Shared {
 public:
  Shared() : region_(sizeof(T)) { object_ = new (region_.data()) T{}; }
  T* operator->() const noexcept { return object_; }
  T& operator*() const noexcept { return *object_; }

 private:
  SharedRegion region_;
  T* object_ = nullptr;
};

/// The scheduler state of process `pid` from /proc/<pid>/stat: 'R', 'S' (sleeping in the
/// kernel), 'Z', ...; '?' if it cannot be read.
char ProcessState(pid_t pid) {
  const std::string stat = multicore_test::slurp("/proc/" + std::to_string(pid) + "/stat");
  const auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? '?' : stat[close + 2];
}

/// Busy-polls (yielding) until `done()` or the liveness bound passes; returns done().
template <class Done>
bool PollUntil(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + liveness_bound;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    sched_yield();
  }
  return true;
}

/// Raw futex wake, returning how many waiters the kernel woke. `op` is FUTEX_WAKE (shared:
/// keyed on the page, what futex.hpp uses) or FUTEX_WAKE_PRIVATE (keyed on this process's
/// address space, what libstdc++'s std::atomic::notify_all uses).
long FutexWake(std::atomic<std::uint32_t>& word, int op) {
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), op, INT_MAX, nullptr, nullptr,
                 0);
}

/// Forks; the child runs `body` (which must not return normally: it ends with _exit).
template <class Body>
pid_t ForkChild(Body body) {
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    body();
    _exit(100);
  }
  return pid;
}

void ExpectExitedWith(int status, int code) {
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), code);
}

// ----- One process -----------------------------------------------------------------------------

TEST(Futex, RingWithoutASleeperMakesNoWakeUp) {
  Doorbell bell;
  bell.ring();
  EXPECT_EQ(bell.seq.load(), 0u);  // no sleeper: no futex call, nothing to wake
  bell.sleeping.store(1);
  bell.ring();
  EXPECT_EQ(bell.seq.load(), 1u);
  EXPECT_EQ(bell.sleeping.load(), 1u);  // only the sleeper clears its own flag
}

TEST(Futex, SleepUnlessReturnsAtOnceWhenReady) {
  Doorbell bell;
  EXPECT_TRUE(bell.sleep_unless([] { return true; }, 0ns));  // 0: would sleep without limit
  EXPECT_EQ(bell.sleeping.load(), 0u);
}

TEST(Futex, WaitForReturnsAtOnceWhenReady) {
  Doorbell bell;
  SpinBudget budget;
  EXPECT_TRUE(wait_for(bell, budget, [] { return true; }));
  EXPECT_TRUE(wait_for(
      bell, budget, [] { return true; }, 1ms));
}

TEST(Futex, WaitForTimesOutWhenNeverRung) {
  Doorbell bell;
  SpinBudget budget;
  EXPECT_FALSE(wait_for(
      bell, budget, [] { return false; }, 20ms));
  EXPECT_EQ(bell.sleeping.load(), 0u);
  EXPECT_FALSE(bell.sleep_unless([] { return false; }, 5ms));
  EXPECT_EQ(bell.sleeping.load(), 0u);
}

// ----- Across processes ------------------------------------------------------------------------

struct WakeShared {
  alignas(cache_line_size) Doorbell child_bell;
  alignas(cache_line_size) Doorbell parent_bell;
  alignas(cache_line_size) std::atomic<std::uint32_t> go{0};
  std::atomic<std::uint32_t> woke{0};
};

TEST(Futex, ChildAsleepOnADoorbellWakesWhenTheParentRings) {
  Shared<WakeShared> shared;
  const pid_t pid = ForkChild([&] {
    SpinBudget budget;
    wait_for(shared->child_bell, budget, [&] { return shared->go.load() != 0; });
    shared->woke.store(1);
    shared->parent_bell.ring();
    _exit(0);
  });
  ASSERT_GE(pid, 0) << "fork: " << std::strerror(errno);
  ChildWatch child(pid, shared->parent_bell);

  // Ring only once the child is really asleep in the kernel (past its spin), so that the
  // wake-up, not the spin, is what is tested.
  ASSERT_TRUE(PollUntil([&] {
    return child.gone() || (shared->child_bell.sleeping.load() == 1 && ProcessState(pid) == 'S');
  }));
  ASSERT_FALSE(child.gone());
  EXPECT_EQ(shared->woke.load(), 0u);

  shared->go.store(1);
  shared->child_bell.ring();

  SpinBudget budget;
  EXPECT_TRUE(wait_for(
      shared->parent_bell, budget, [&] { return shared->woke.load() != 0 || child.gone(); },
      liveness_bound));
  EXPECT_EQ(shared->woke.load(), 1u) << "the child did not wake up";
  ExpectExitedWith(child.wait(), 0);
}

// libstdc++'s std::atomic::wait/notify use FUTEX_PRIVATE_FLAG: the kernel keys such a futex on
// (address space, address), so a notify in one process can never reach a waiter in another.
// futex.hpp leaves the flag off, keying on the shared page instead. The kernel's count of woken
// waiters shows both, with no timing involved: a private wake finds nobody, a shared one finds
// the sleeping child.
TEST(Futex, SharedFutexWakesAnotherProcessWherePrivateOneCannot) {
  Shared<WakeShared> shared;
  const pid_t pid = ForkChild([&] {
    shared->child_bell.sleeping.store(1);  // "about to sleep"
    while (shared->go.load() == 0) multicore::detail::futex_wait(&shared->go, 0, nullptr);
    shared->woke.store(1);
    shared->parent_bell.ring();
    _exit(0);
  });
  ASSERT_GE(pid, 0) << "fork: " << std::strerror(errno);
  ChildWatch child(pid, shared->parent_bell);
  ASSERT_TRUE(PollUntil([&] {
    return child.gone() || (shared->child_bell.sleeping.load() == 1 && ProcessState(pid) == 'S');
  }));
  ASSERT_FALSE(child.gone());

  EXPECT_EQ(FutexWake(shared->go, FUTEX_WAKE_PRIVATE), 0) << "a private wake reached the child";
  shared->go.store(1);
  EXPECT_EQ(FutexWake(shared->go, FUTEX_WAKE), 1) << "the shared wake did not reach the child";

  SpinBudget budget;
  EXPECT_TRUE(wait_for(
      shared->parent_bell, budget, [&] { return shared->woke.load() != 0 || child.gone(); },
      liveness_bound));
  EXPECT_EQ(shared->woke.load(), 1u);
  ExpectExitedWith(child.wait(), 0);
}

TEST(Futex, FutexWakeAllWakesASleeperInAnotherProcess) {
  Shared<WakeShared> shared;
  const pid_t pid = ForkChild([&] {
    shared->child_bell.sleeping.store(1);
    while (shared->go.load() == 0) multicore::detail::futex_wait(&shared->go, 0, nullptr);
    shared->woke.store(1);
    shared->parent_bell.ring();
    _exit(0);
  });
  ASSERT_GE(pid, 0) << "fork: " << std::strerror(errno);
  ChildWatch child(pid, shared->parent_bell);
  ASSERT_TRUE(PollUntil([&] {
    return child.gone() || (shared->child_bell.sleeping.load() == 1 && ProcessState(pid) == 'S');
  }));
  ASSERT_FALSE(child.gone());

  shared->go.store(1);
  multicore::detail::futex_wake_all(&shared->go);

  SpinBudget budget;
  EXPECT_TRUE(wait_for(
      shared->parent_bell, budget, [&] { return shared->woke.load() != 0 || child.gone(); },
      liveness_bound));
  EXPECT_EQ(shared->woke.load(), 1u) << "the child did not wake up";
  ExpectExitedWith(child.wait(), 0);
}

// ----- No lost wake-ups --------------------------------------------------------------------------
// Two processes hand a counter back and forth; each side waits for the other's value on its own
// doorbell and rings the other's after publishing. The waits have no timeout: a single lost
// wake-up leaves both sides asleep and the test hangs (ctest's 60 s timeout fails it). A child
// that dies instead wakes the parent through ChildWatch, so that failure is reported directly.

constexpr std::uint64_t round_trips = 100'000;

struct PingPong {
  alignas(cache_line_size) Doorbell parent_bell;                // the parent sleeps here
  alignas(cache_line_size) Doorbell child_bell;                 // the child sleeps here
  alignas(cache_line_size) std::atomic<std::uint64_t> ping{0};  // parent -> child
  alignas(cache_line_size) std::atomic<std::uint64_t> pong{0};  // child -> parent
  alignas(cache_line_size) std::atomic<std::uint64_t> child_sleeps{0};
};

/// Waits as the pool does: wait_for's adaptive spin, then the futex.
struct SpinThenSleep {
  SpinBudget budget;
  std::uint64_t sleeps = 0;
  template <class Ready>
  void operator()(Doorbell& bell, Ready ready) {
    wait_for(bell, budget, ready);
  }
};

/// Never spins: every wait that finds the value not there yet goes through the futex, so the
/// Dekker handshake between `sleeping` and `seq` is what keeps the wake-ups from being lost.
struct AlwaysSleep {
  std::uint64_t sleeps = 0;  // futex waits entered (the first look found nothing)
  template <class Ready>
  void operator()(Doorbell& bell, Ready ready) {
    for (;;) {
      bool first = true;
      const auto probe = [&] {
        const bool r = ready();
        if (first && !r) ++sleeps;
        first = false;
        return r;
      };
      if (bell.sleep_unless(probe, 0ns)) return;
    }
  }
};

template <class Wait>
void PlayPingPong() {
  Shared<PingPong> shared;
  const pid_t pid = ForkChild([&] {
    Wait wait;
    for (std::uint64_t i = 1; i <= round_trips; ++i) {
      wait(shared->child_bell, [&] { return shared->ping.load(std::memory_order_acquire) == i; });
      shared->pong.store(i, std::memory_order_release);
      shared->parent_bell.ring();
    }
    shared->child_sleeps.store(wait.sleeps);
    _exit(0);
  });
  ASSERT_GE(pid, 0) << "fork: " << std::strerror(errno);
  ChildWatch child(pid, shared->parent_bell);

  Wait wait;
  std::uint64_t completed = 0;
  for (std::uint64_t i = 1; i <= round_trips; ++i) {
    shared->ping.store(i, std::memory_order_release);
    shared->child_bell.ring();
    wait(shared->parent_bell,
         [&] { return shared->pong.load(std::memory_order_acquire) == i || child.gone(); });
    if (shared->pong.load() != i) break;  // the child died
    ++completed;
  }
  EXPECT_EQ(completed, round_trips);
  ExpectExitedWith(child.wait(), 0);
  if constexpr (std::is_same_v<Wait, AlwaysSleep>) {
    // The futex path was really taken on both sides, not just the first look.
    EXPECT_GT(wait.sleeps, 0u);
    EXPECT_GT(shared->child_sleeps.load(), 0u);
  }
}

TEST(Futex, PingPongLosesNoWakeUps) { PlayPingPong<SpinThenSleep>(); }

TEST(Futex, PingPongThroughTheFutexLosesNoWakeUps) { PlayPingPong<AlwaysSleep>(); }

}  // namespace
