// SPDX-License-Identifier: MIT
// Adversarial scenarios that break the library today (issue 8, hardening). Every case is
// DISABLED_ so the suite stays green; each fails when run with --gtest_also_run_disabled_tests
// (a few only under a sanitizer, as noted), and becomes the regression test of its fix: drop
// the prefix (and move it next to its feature's tests) once fixed. Scenarios that could hang or
// crash run in a forked child with a time limit (support/in_child.hpp).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <multicore/multicore.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"
#include "support/sanitizer.hpp"
#include "support/shared_counter.hpp"

namespace {

using multicore::Pool;
using multicore::PoolClosed;
using multicore::PoolOptions;
using multicore_test::in_child;
using multicore_test::say;
using namespace std::chrono_literals;

PoolOptions workers(unsigned n) {
  PoolOptions o;
  o.workers = n;
  return o;
}

int square(int x) { return x * x; }

int crash(int /*x*/) { multicore_test::segfault_by_raise(); }
int hang(int /*x*/) { multicore_test::hang_forever(); }

// ----- Processes a task leaves behind --------------------------------------------------------

// fork() in a task, and both processes return from it: the child carries on as a second worker
// on the same rings (it answers too, and then waits for requests), with no PR_SET_PDEATHSIG, so
// it outlives the pool forever.
int fork_and_return(int x) {
  fork();
  return x;
}

TEST(AdversarialFailing, DISABLED_TaskThatForksAndReturnsInBothProcessesLeavesNoRogueWorker) {
  {
    Pool pool(workers(2));
    EXPECT_EQ(pool.call(fork_and_return, 1), 1);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
  }
  EXPECT_TRUE(multicore_test::no_children_within(3s))
      << "the task's child lives on as a worker: "
      << testing::PrintToString(multicore_test::child_pids());
  multicore_test::kill_children();
}

// The same from on_worker_start: the child of a fork there returns into the worker's loop.
TEST(AdversarialFailing, DISABLED_OnWorkerStartThatForksLeavesNoRogueWorker) {
  {
    PoolOptions o = workers(1);
    o.on_worker_start = [] { fork(); };
    Pool pool(o);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
  }
  EXPECT_TRUE(multicore_test::no_children_within(3s))
      << "left: " << testing::PrintToString(multicore_test::child_pids());
  multicore_test::kill_children();
}

// The same from an item run by a threads_per_worker helper thread: the child's only thread is
// that helper, which goes back to waiting for the team's next chunk, forever.
int fork_in_item(int x) {
  if (x == 3) fork();
  return x;
}

TEST(AdversarialFailing, DISABLED_ForkInAThreadsPerWorkerItemLeavesNoProcess) {
  {
    Pool pool(workers(2));
    int sum = 0;
    for (int x : pool.map(fork_in_item, multicore_test::Numbers(0, 64),
                          {.chunk_size = 8, .threads_per_worker = 4})) {
      sum += x;
    }
    EXPECT_EQ(sum, 63 * 64 / 2);
  }
  EXPECT_TRUE(multicore_test::no_children_within(3s))
      << "left: " << testing::PrintToString(multicore_test::child_pids());
  multicore_test::kill_children();
}

// The classic daemon dance in a task: the worker exits, but its child returns from the task and
// writes an answer into the worker's rings: the call returns that answer (5) or WorkerLost,
// whichever the parent sees first. The child then serves the slot's requests alongside the
// replacement, and outlives the pool. Expected: WorkerLost (exit code 0), nothing left.
int daemonise(int x) {
  if (fork() > 0) _exit(0);
  setsid();
  return x;
}

TEST(AdversarialFailing, DISABLED_DaemonisingTaskLeavesNoProcess) {
  {
    Pool pool(workers(2));
    EXPECT_TRUE(multicore_test::thrown_exactly<multicore::WorkerLost>(
        [&] { (void)pool.call(daemonise, 5); }));
    for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
  }
  EXPECT_TRUE(multicore_test::no_children_within(3s))
      << "left: " << testing::PrintToString(multicore_test::child_pids());
  multicore_test::kill_children();
}

// A task that starts a helper process and returns: the helper (in the worker's process group)
// keeps the pool's shared memory mapped and outlives the pool.
int start_helper_process(int x) {
  if (fork() == 0) {
    for (;;) pause();
  }
  return x;
}

TEST(AdversarialFailing, DISABLED_HelperProcessOfATaskDoesNotOutliveThePool) {
  {
    Pool pool(workers(2));
    EXPECT_EQ(pool.call(start_helper_process, 3), 3);
  }
  EXPECT_TRUE(multicore_test::no_children_within(3s))
      << "left: " << testing::PrintToString(multicore_test::child_pids());
  multicore_test::kill_children();
}

// ----- The application forks ---------------------------------------------------------------

// A child the application forks (while another thread is in call()) uses the pool it
// inherited. Its copy has no collector thread and numbers its jobs like the parent's, so it
// sends requests into the parent's rings and reads the parent's answers: seen returning 0
// (the parent's square(0)) or hanging. It should throw Error, as a pool used inside a worker
// does, and leave the parent's pool alone.
int forty_two() { return 42; }

TEST(AdversarialFailing, DISABLED_ChildOfTheApplicationCannotUseThePool) {
  const auto end = in_child(
      [](int report) {
        Pool pool(workers(2));
        std::atomic<bool> stop{false};
        std::thread caller([&] {
          for (int i = 0; !stop; ++i) (void)pool.call(square, i % 100);
        });
        usleep(10'000);
        const pid_t child = fork();
        if (child == 0) {
          alarm(5);  // a hang ends the child (SIGALRM), reported below
          try {
            say(report, "child: call returned " + std::to_string(pool.call(forty_two)));
          } catch (const multicore::Error& e) {
            if (typeid(e) == typeid(multicore::Error)) _exit(0);
            say(report, std::string("child: wrong error: ") + e.what());
          }
          _exit(1);
        }
        int bad = 0;
        for (int i = 0; i < 200; ++i) {
          if (pool.call(square, i) != i * i) ++bad;
        }
        const int status = multicore_test::reap(child);
        stop = true;
        caller.join();
        if (bad != 0) say(report, "parent: " + std::to_string(bad) + " wrong results");
        if (!WIFEXITED(status)) say(report, "child: hung in call()");
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 && bad == 0 ? 0 : 1;
      },
      30s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// ----- Serialization ---------------------------------------------------------------------------

// A Codec<T>::decode that itself uses the pool (say, a value that resolves a reference through
// it). Answers are decoded by the thread holding the collector's receive lock (the collector, or
// a call() helping); the nested call() waits for an answer that only that thread could read:
// deadlock, and terminate() cannot end it (it joins the collector). Expected: a clear error
// (std::logic_error or multicore::Error) instead of a hang.
Pool* resolver_pool = nullptr;

struct Resolved {
  int v = 0;
};

}  // namespace

template <>
struct multicore::Codec<Resolved> {
  static void encode(Writer& out, const Resolved& r) { out.write(&r.v, sizeof r.v); }
  static Resolved decode(Reader& in) {
    Resolved r;
    in.read(&r.v, sizeof r.v);
    if (resolver_pool != nullptr && !multicore::detail::in_worker_process()) {
      r.v = resolver_pool->call(square, r.v);
    }
    return r;
  }
};

namespace {

Resolved make_resolved(int v) { return Resolved{v}; }

TEST(AdversarialFailing, DISABLED_CodecDecodeThatUsesThePoolDoesNotDeadlock) {
  const auto end = in_child(
      [](int report) {
        Pool pool(workers(2));
        resolver_pool = &pool;
        try {
          say(report, "call: " + std::to_string(pool.call(make_resolved, 3).v));
        } catch (const std::exception& e) {
          say(report, std::string("call threw: ") + e.what());
        }
        resolver_pool = nullptr;
        return 0;
      },
      10s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// ----- Memory --------------------------------------------------------------------------------

/// Sets RLIMIT_AS to what the process maps now plus `headroom`.
void limit_address_space(std::size_t headroom) {
  const std::string status = multicore_test::slurp("/proc/self/status");
  const auto at = status.find("VmSize:");
  const long kib = at == std::string::npos ? 0 : std::atol(status.c_str() + at + 7);
  rlimit limit{};
  getrlimit(RLIMIT_AS, &limit);
  limit.rlim_cur = static_cast<rlim_t>(kib) * 1024 + headroom;
  setrlimit(RLIMIT_AS, &limit);
}

std::vector<std::string> mebibyte_strings(int n) {
  return std::vector<std::string>(static_cast<std::size_t>(n), std::string(1 << 20, 'x'));
}

// An answer the application has no memory to assemble: a cereal value (or a vector when even
// the 64 MiB start of its tail receiver cannot be had) goes through the assembly buffer, whose
// growth throws std::bad_alloc out of Scheduler::receive(). The collector catches it, prints
// "multicore: collector: unexpected error, retrying" and retries the same growth: forever (a
// busy loop, ~10^4 lines a second on stderr), and the call never returns. Expected: that
// answer fails with SerializationError ("out of memory"), as a vector that ran out of memory
// half-way does, and the pool carries on. (Sanitizers reserve far more address space.)
TEST(AdversarialFailing, DISABLED_AnswerTooLargeToAssembleIsASerializationError) {
  if (multicore_test::under_sanitizer) GTEST_SKIP() << "RLIMIT_AS and sanitizers";
  const auto end = in_child(
      [](int report) {
        Pool pool(workers(2));
        std::freopen("/dev/null", "w", stderr);  // the retry loop floods it
        limit_address_space(std::size_t{64} << 20);
        try {
          (void)pool.call(mebibyte_strings, 200);
          say(report, "the answer arrived");
          return 1;
        } catch (const multicore::SerializationError&) {
        }
        return pool.call(square, 7) == 49 ? 0 : 1;
      },
      20s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// ----- Descriptors -----------------------------------------------------------------------------

// A daemon that closed stderr before making its pool: the pool's command socket gets fd 2, so
// the next line anything writes to stderr (the application, a library, multicore's own
// diagnostics) is a packet to the fork server, which takes it for a broken parent and exits,
// killing every worker ("the pool's fork server died").
TEST(AdversarialFailing, DISABLED_StderrClosedBeforeThePoolIsMadeDoesNotKillIt) {
  const auto end = in_child(
      [](int report) {
        close(STDERR_FILENO);
        Pool pool(workers(2));
        (void)pool.call(square, 3);
        std::fputs("a log line\n", stderr);
        std::fflush(stderr);
        usleep(300'000);  // the fork server polls every 250 ms at most
        try {
          return pool.call(square, 4) == 16 ? 0 : 1;
        } catch (const std::exception& e) {
          say(report, std::string("after one line on stderr: ") + e.what());
          return 1;
        }
      },
      20s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// ----- task_timeout does not cover a worker that never claims the task -------------------------

// The timeout runs from the moment the worker claims a task. A worker that is stopped while idle
// (README: "its worker is SIGSTOPped" -> TaskTimeout) never claims the next one: its future
// waits forever, task_timeout or not.
TEST(AdversarialFailing, DISABLED_TaskSentToAStoppedIdleWorkerTimesOut) {
  const auto end = in_child(
      [](int report) {
        PoolOptions o = workers(1);
        o.task_timeout = 300ms;
        Pool pool(o);
        (void)pool.call(square, 1);
        for (pid_t fork_server : multicore_test::child_pids()) {
          for (pid_t w : multicore_test::live_children_of(fork_server)) kill(w, SIGSTOP);
        }
        auto f = pool.submit(square, 5);
        if (f.wait_for(10s) != std::future_status::ready) {
          say(report, "the future waited 10 s with task_timeout = 300 ms");
          pool.terminate();
          return 1;
        }
        return multicore_test::thrown_exactly<multicore::TaskTimeout>([&] { (void)f.get(); }) ? 0
                                                                                              : 1;
      },
      30s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// The same without any signal: a worker flushes what tasks printed when it goes idle, outside
// any task. With stdout a pipe nobody reads, that flush blocks once the pipe is full, and the
// next task sent to the worker is never claimed: it hangs despite task_timeout.
int chatty(int x) {
  const std::string line(3000, 'x');
  std::fputs(line.c_str(), stdout);  // under the pipe's 4 KiB stdio buffer: flushed when idle
  return x;
}

TEST(AdversarialFailing, DISABLED_WorkerBlockedFlushingIdleOutputDoesNotHangTheNextTask) {
  const auto end = in_child(
      [](int report) {
        multicore_test::Pipe unread;
        dup2(unread.write_fd(), STDOUT_FILENO);
        unread.close_write();
        PoolOptions o = workers(1);
        o.task_timeout = 300ms;
        Pool pool(o);
        for (int i = 0; i < 40; ++i) {
          auto f = pool.submit(chatty, i);
          if (f.wait_for(5s) != std::future_status::ready) {
            say(report, "task " + std::to_string(i) + " waited 5 s with task_timeout = 300 ms");
            pool.terminate();
            return 1;
          }
          try {
            (void)f.get();
          } catch (const multicore::TaskTimeout&) {
          }
          usleep(20'000);  // the worker goes idle and flushes
        }
        return 0;
      },
      60s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// A replacement whose on_worker_start hangs: the pool waits for it forever, so a task queued
// behind the crash never runs and never fails, task_timeout or not (only terminate() ends it).
// Expected: a replacement that does not start within a bound counts as a failed start (backoff,
// and with no worker left the queued tasks fail, as when on_worker_start throws).

TEST(AdversarialFailing, DISABLED_ReplacementHangingInOnWorkerStartDoesNotHangQueuedTasks) {
  const auto end = in_child(
      [](int report) {
        static multicore_test::SharedCounter starts;
        PoolOptions o = workers(1);
        o.task_timeout = 300ms;
        o.on_worker_start = [] {
          if ((*starts)++ > 0) multicore_test::hang_forever();
        };
        Pool pool(o);
        auto crashed = pool.submit(crash, 1);
        auto queued = pool.submit(square, 2);
        if (queued.wait_for(10s) != std::future_status::ready) {
          say(report, "the queued task waited 10 s with task_timeout = 300 ms");
          pool.terminate();
          return 1;
        }
        return 0;
      },
      30s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// A stopped fork server (SIGSTOP from outside, a debugger) can neither reap nor kill: a worker
// that dies is never reported and a task past task_timeout is never cut off, so both futures
// wait as long as the fork server stays stopped. The parent could see deaths itself (a pidfd per
// worker polls readable at exit, even before the reap) and kill a timed-out worker itself (its
// pid cannot be reused before the fork server reaps it).
TEST(AdversarialFailing, DISABLED_TimeoutsAndDeathsAreReportedWhileTheForkServerIsStopped) {
  const auto end = in_child(
      [](int report) {
        PoolOptions o = workers(2);
        o.task_timeout = 300ms;
        Pool pool(o);
        const std::vector<pid_t> fork_servers = multicore_test::child_pids();
        kill(fork_servers.at(0), SIGSTOP);
        auto crashed = pool.submit(crash, 1);
        auto stuck = pool.submit(hang, 1);
        const bool reported = crashed.wait_for(5s) == std::future_status::ready &&
                              stuck.wait_for(5s) == std::future_status::ready;
        if (!reported) say(report, "a crash or a timeout waited 5 s for the stopped fork server");
        kill(fork_servers.at(0), SIGCONT);
        return reported ? 0 : 1;
      },
      30s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// ----- Races the contract allows (or seems to) -------------------------------------------------

// A watchdog thread calls terminate() to unblock a destructor that waits for a hung task, the
// one way to bound ~Pool. terminate() blocks on the close mutex the destructor holds, then
// reads the Scheduler the destructor has just freed: heap-use-after-free (ASan, in most runs).

TEST(AdversarialFailing, DISABLED_WatchdogTerminateWhileTheDestructorWaitsIsSafe) {
  for (int round = 0; round < 3; ++round) {
    auto pool = std::make_unique<Pool>(workers(2));
    auto stuck = pool->submit(hang, 1);
    std::thread watchdog([p = pool.get()] {
      usleep(50'000);
      p->terminate();
    });
    pool.reset();  // waits for `stuck` until the watchdog terminates
    watchdog.join();
    EXPECT_TRUE(multicore_test::error_of<PoolClosed>(stuck));
  }
}

}  // namespace
