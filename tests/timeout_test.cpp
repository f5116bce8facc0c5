// SPDX-License-Identifier: MIT
// task_timeout and max_tasks_per_worker: overrunning tasks fail with TaskTimeout and cost only
// their worker; payload streaming does not count; workers are recycled after N tasks.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <future>
#include <map>
#include <multicore/multicore.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"

namespace timeout_test_types {

/// How long decoding a SlowToDecode result blocks the parent's collector thread.
constexpr std::chrono::milliseconds decode_stall{1500};

/// A result whose decoding in the parent is slow. The parent decodes results on its collector
/// thread, so while one decodes, no other bytes move through any ring: the way to make a
/// payload's streaming take longer than task_timeout, deterministically.
struct SlowToDecode {
  int value;
};

/// A result whose decoding in the parent waits for a byte on `release_fd`: it holds the
/// collector thread (and so every ring) until the test lets it go.
struct Held {
  int value;
};

inline int release_fd = -1;  // read end: one byte lets the decode finish

}  // namespace timeout_test_types

template <>
struct multicore::Codec<timeout_test_types::SlowToDecode> {
  static void encode(Writer& out, const timeout_test_types::SlowToDecode& v) {
    out.write(&v.value, sizeof v.value);
  }
  static timeout_test_types::SlowToDecode decode(Reader& in) {
    timeout_test_types::SlowToDecode v{};
    in.read(&v.value, sizeof v.value);
    // Making the decode slow, not synchronising anything.
    if (!multicore::detail::in_worker_process()) {
      std::this_thread::sleep_for(timeout_test_types::decode_stall);
    }
    return v;
  }
};

template <>
struct multicore::Codec<timeout_test_types::Held> {
  static void encode(Writer& out, const timeout_test_types::Held& h) {
    out.write(&h.value, sizeof h.value);
  }
  static timeout_test_types::Held decode(Reader& in) {
    timeout_test_types::Held h{};
    in.read(&h.value, sizeof h.value);
    char byte = 0;
    multicore_test::read_exact(timeout_test_types::release_fd, &byte, 1);
    return h;
  }
};

namespace {

using multicore::Pool;
using multicore::PoolOptions;
using multicore::TaskTimeout;
using multicore_test::error_of;
using multicore_test::Pipe;
using namespace std::chrono_literals;
using timeout_test_types::SlowToDecode;

pid_t own_pid() { return getpid(); }

int spin_forever() {
  volatile std::uint64_t spins = 0;
  for (;;) spins = spins + 1;
}

int sleep_for_a_minute() {
  std::this_thread::sleep_for(60s);
  return 1;
}

// ----- task_timeout ----------------------------------------------------------------------------

/// Keeps a core busy for `ms` of wall time (or until killed); returns `ms`.
int busy_for(int ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  volatile std::uint64_t spins = 0;
  while (std::chrono::steady_clock::now() < until) spins = spins + 1;
  return ms;
}

TEST(Timeout, InfiniteLoopGivesTaskTimeoutAndQueuedTasksComplete) {
  Pool pool(PoolOptions{.workers = 1, .task_timeout = 200ms});
  const pid_t before = pool.submit(own_pid).get();
  auto looping = pool.submit(spin_forever);
  std::vector<std::future<pid_t>> queued;
  for (int i = 0; i < 6; ++i) queued.push_back(pool.submit(own_pid));

  const auto timeout = error_of<TaskTimeout>(looping);
  ASSERT_TRUE(timeout);
  const std::string what = timeout->what();
  EXPECT_NE(what.find("task_timeout (200 ms)"), std::string::npos) << what;
  EXPECT_NE(what.find("worker process " + std::to_string(before)), std::string::npos) << what;

  std::set<pid_t> pids;
  for (auto& f : queued) pids.insert(f.get());
  ASSERT_EQ(pids.size(), 1u) << "the queued tasks all ran on the one replacement";
  EXPECT_NE(*pids.begin(), before) << "the timed-out worker must have been replaced";
  EXPECT_FALSE(multicore_test::running(before)) << "the timed-out worker must be gone";
  EXPECT_EQ(pool.size(), 1u);
}

TEST(Timeout, SleepingPastTheTimeoutGivesTaskTimeout) {
  Pool pool(PoolOptions{.workers = 2, .task_timeout = 200ms});
  auto sleeping = pool.submit(sleep_for_a_minute);
  auto quick = pool.submit([](int x) { return x + 1; }, 1);
  ASSERT_TRUE(error_of<TaskTimeout>(sleeping));
  EXPECT_EQ(quick.get(), 2);
  EXPECT_EQ(pool.submit([](int x) { return x + 1; }, 2).get(), 3);
  EXPECT_EQ(pool.size(), 2u);
}

// A task that needs less than its timeout is left alone. The margin (600 ms of 1000 ms) is
// generous so that a loaded machine cannot push the task over.
TEST(Timeout, TaskThatFinishesUnderTheTimeoutSucceeds) {
  Pool pool(PoolOptions{.workers = 1, .task_timeout = 1000ms});
  const pid_t before = pool.submit(own_pid).get();
  auto slow = pool.submit(
      [](int x) {
        std::this_thread::sleep_for(600ms);
        return x * 2;
      },
      21);
  EXPECT_EQ(slow.get(), 42);
  EXPECT_EQ(pool.submit(own_pid).get(), before) << "the worker must not have been replaced";
}

// A timeout far shorter than the collector's heartbeat must still fire near its deadline: the
// collector has to learn at once that a worker started a task. 300 ms is 30 times the timeout.
TEST(Timeout, ShortTimeoutCutsOffABusyTask) {
  Pool pool(PoolOptions{.workers = 1, .task_timeout = 10ms});
  const multicore_test::TerminateIfFailed guard(pool);
  auto busy = pool.submit(busy_for, 300);
  EXPECT_TRUE(error_of<TaskTimeout>(busy));
  EXPECT_EQ(pool.size(), 1u);
}

// The same for a queue: each task starts on a fresh replacement, and each start must arm its
// deadline. The collector used to learn of a start only at its next heartbeat, up to 100 ms
// later, so these 80 ms tasks returned values.
TEST(Timeout, ShortTimeoutCutsOffEveryTaskOfAQueue) {
  Pool pool(PoolOptions{.workers = 2, .task_timeout = 10ms});
  const multicore_test::TerminateIfFailed guard(pool);
  std::vector<std::future<int>> busy;
  for (int i = 0; i < 8; ++i) busy.push_back(pool.submit(busy_for, 80));
  for (std::size_t i = 0; i < busy.size(); ++i) {
    EXPECT_TRUE(error_of<TaskTimeout>(busy[i])) << "task " << i;
  }
  EXPECT_EQ(pool.submit(busy_for, 0).get(), 0);
}

int busy_after_reading(const std::vector<std::uint8_t>& bytes) { return busy_for(80) + bytes[0]; }

// The clock stops while an argument's tail streams in and starts again once it is read: that
// start, too, must arm the deadline (the collector's last look was while it sent the tail).
TEST(Timeout, ShortTimeoutCutsOffATaskOnceItsArgumentStreamedIn) {
  Pool pool(PoolOptions{.workers = 1, .ring_bytes = 64 << 10, .task_timeout = 10ms});
  const multicore_test::TerminateIfFailed guard(pool);
  for (int i = 0; i < 3; ++i) {
    auto busy = pool.submit(busy_after_reading, std::vector<std::uint8_t>(std::size_t{1} << 20));
    EXPECT_TRUE(error_of<TaskTimeout>(busy)) << "task " << i;
  }
}

// A huge task_timeout means "practically never": the pool runs tasks normally. max() overflowed
// the conversion to nanoseconds (undefined behaviour: the UBSan build aborts); 18'446'744'073'710
// ms (584 years) wrapped around to 0.45 ms, which timed out every task.
TEST(Timeout, HugeTimeoutMeansPracticallyNever) {
  for (const auto huge :
       {std::chrono::milliseconds::max(), std::chrono::milliseconds(18'446'744'073'710)}) {
    Pool pool(PoolOptions{.workers = 1, .task_timeout = huge});
    const multicore_test::TerminateIfFailed guard(pool);
    EXPECT_EQ(pool.submit(busy_for, 200).get(), 200) << huge.count() << " ms";
    EXPECT_EQ(pool.call(busy_for, 1), 1) << huge.count() << " ms";
  }
}

std::uint64_t fingerprint(const std::vector<std::uint8_t>& bytes) {
  // Cheap on purpose (the function's run time counts toward the timeout, even in Debug).
  return bytes.size() * 1'000'003 + bytes.front() * 1009u + bytes[bytes.size() / 2] * 7u +
         bytes.back();
}

std::vector<std::uint8_t> big_payload(std::size_t n) {
  std::vector<std::uint8_t> bytes(n);
  for (std::size_t i = 0; i < n; i += 4096) bytes[i] = static_cast<std::uint8_t>(i / 4096);
  bytes.front() = 11;
  bytes[n / 2] = 22;
  bytes.back() = 33;
  return bytes;
}

// 32 MiB through a 64 KiB ring, each way, while the parent's collector is stalled for three
// times the timeout (see SlowToDecode): the streaming of the argument (before the function
// runs) and of the result (after it ran) takes far longer than task_timeout, and must not count.
TEST(Timeout, PayloadStreamingDoesNotCountTowardTheTimeout) {
  constexpr std::size_t big = std::size_t{32} << 20;
  static_assert(timeout_test_types::decode_stall >= 3 * 500ms);
  Pool pool(PoolOptions{.workers = 1, .ring_bytes = 64 << 10, .task_timeout = 500ms});
  const pid_t before = pool.submit(own_pid).get();
  const std::vector<std::uint8_t> payload = big_payload(big);

  // Argument direction: the stall hits while the worker waits for the rest of the argument.
  auto stall = pool.submit([](int x) { return SlowToDecode{x}; }, 1);
  auto argument = pool.submit(fingerprint, payload);
  EXPECT_EQ(stall.get().value, 1);
  EXPECT_EQ(argument.get(), fingerprint(payload));

  // Result direction: the stall hits while the worker waits for room to write its result.
  auto stall_again = pool.submit([](int x) { return SlowToDecode{x}; }, 2);
  auto result = pool.submit([](std::size_t n) { return big_payload(n); }, big);
  EXPECT_EQ(stall_again.get().value, 2);
  EXPECT_EQ(result.get(), payload);

  EXPECT_EQ(pool.submit(own_pid).get(), before) << "no task may have timed out";
}

// A worker stopped (SIGSTOP) in the middle of a task cannot finish it: the timeout kills it
// (SIGKILL works on stopped processes) and it is replaced.
TEST(Timeout, StoppedWorkerMidTaskIsKilledByTheTimeout) {
  Pipe started;
  Pipe gate;
  const int started_fd = started.write_fd();
  const int gate_fd = gate.read_fd();
  Pool pool(PoolOptions{.workers = 1, .task_timeout = 300ms});
  // The task tells us its pid, then finishes as soon as the gate opens.
  auto task = pool.submit(
      [](int tell, int wait) {
        const pid_t self = getpid();
        multicore_test::write_all(tell, &self, sizeof self);
        char byte = 0;
        return multicore_test::read_exact(wait, &byte, 1) ? 1 : 0;
      },
      started_fd, gate_fd);
  const pid_t worker = multicore_test::read_value<pid_t>(started.read_fd());
  ASSERT_EQ(kill(worker, SIGSTOP), 0);
  const char open = 1;
  ASSERT_TRUE(multicore_test::write_all(gate.write_fd(), &open, 1));  // too late: it is stopped

  ASSERT_TRUE(error_of<TaskTimeout>(task));
  EXPECT_FALSE(multicore_test::running(worker)) << "the stopped worker must have been killed";
  const pid_t after = pool.submit(own_pid).get();
  EXPECT_NE(after, worker);
  EXPECT_EQ(pool.size(), 1u);
}

// A worker stopped between tasks never starts the ones sent to it. With a timeout, it is killed
// once stopped that long with tasks to run, and they run on its replacement (they had not started:
// nothing fails). These used to wait forever: no task clock ran.
TEST(Timeout, StoppedIdleWorkerIsReplacedForTheTasksSentToIt) {
  Pool pool(PoolOptions{.workers = 1, .task_timeout = 100ms});
  const multicore_test::TerminateIfFailed guard(pool);
  const pid_t worker = pool.submit(own_pid).get();
  ASSERT_EQ(kill(worker, SIGSTOP), 0);
  auto next = pool.submit(own_pid);
  ASSERT_TRUE(multicore_test::ready_within(next));
  EXPECT_NE(next.get(), worker);
  EXPECT_FALSE(multicore_test::running(worker)) << "the stopped worker must have been killed";
}

// The task's clock stops while its answer streams out (the parent may be slow to read), so a
// worker stopped there used to wait forever, its task's future with it. Now a stopped worker
// holding tasks counts as overrunning: TaskTimeout.
TEST(Timeout, WorkerStoppedWhileStreamingItsAnswerIsKilledByTheTimeout) {
  Pipe started;
  Pipe release;
  timeout_test_types::release_fd = release.read_fd();
  Pool pool(PoolOptions{.workers = 1, .ring_bytes = 64 << 10, .task_timeout = 100ms});
  const multicore_test::TerminateIfFailed guard(pool);
  // The collector decodes this until released: the next answer fills the ring, and its worker
  // waits for room to write the rest.
  auto held = pool.submit([](int x) { return timeout_test_types::Held{x}; }, 1);
  auto big = pool.submit(
      [](int tell) {
        const pid_t self = getpid();
        multicore_test::write_all(tell, &self, sizeof self);
        return big_payload(std::size_t{32} << 20);
      },
      started.write_fd());
  const pid_t worker = multicore_test::read_value<pid_t>(started.read_fd());
  // Asleep after its pid: waiting for room to write the rest of its answer, which it cannot
  // finish while the collector is held. (Asleep earlier, its task's clock would still run.)
  const auto deadline = std::chrono::steady_clock::now() + multicore_test::pipe_liveness;
  for (;;) {
    const auto stat = multicore_test::proc_stat(worker);
    ASSERT_TRUE(stat && std::chrono::steady_clock::now() < deadline) << "the worker never slept";
    if (stat->state == 'S') break;
  }
  ASSERT_EQ(kill(worker, SIGSTOP), 0);
  const char go = 1;
  ASSERT_TRUE(multicore_test::write_all(release.write_fd(), &go, 1));
  EXPECT_EQ(held.get().value, 1);
  ASSERT_TRUE(multicore_test::ready_within(big));
  EXPECT_TRUE(error_of<TaskTimeout>(big));
  EXPECT_NE(pool.submit(own_pid).get(), worker);
}

// ----- max_tasks_per_worker --------------------------------------------------------------------

class Recycling : public ::testing::TestWithParam<unsigned> {};

INSTANTIATE_TEST_SUITE_P(MaxTasksPerWorker, Recycling, ::testing::Values(1u, 2u),
                         [](const auto& p) { return std::to_string(p.param) + "Workers"; });

// Also the regression test for a replaced worker's response ring that was not reset: the
// replacement's first answer was then misread and the worker killed as corrupt.
TEST_P(Recycling, EveryPidServesAtMostNTasksInSequence) {
  const unsigned workers = GetParam();
  constexpr std::size_t limit = 3;
  constexpr int tasks = 12;
  Pool pool(PoolOptions{.workers = workers, .max_tasks_per_worker = limit});
  const multicore_test::TerminateIfFailed guard(pool);
  std::map<pid_t, int> served;
  for (int i = 0; i < tasks; ++i) {
    auto f = pool.submit([](int x) { return std::pair<int, pid_t>(x * 7, getpid()); }, i);
    ASSERT_TRUE(multicore_test::ready_within(f)) << "task " << i;
    const auto [value, pid] = f.get();
    ASSERT_EQ(value, i * 7) << "task " << i;
    ++served[pid];
    ASSERT_EQ(pool.size(), workers);
  }
  for (const auto& [pid, count] : served) {
    EXPECT_LE(count, static_cast<int>(limit)) << "pid " << pid;
  }
  EXPECT_GE(served.size(), static_cast<std::size_t>(tasks) / limit);
  if (workers == 1) {
    EXPECT_EQ(served.size(), static_cast<std::size_t>(tasks) / limit);
    for (const auto& [pid, count] : served) EXPECT_EQ(count, static_cast<int>(limit));
  }
}

TEST_P(Recycling, EveryPidServesAtMostNTasksInABatch) {
  const unsigned workers = GetParam();
  constexpr std::size_t limit = 3;
  constexpr int tasks = 60;
  Pool pool(PoolOptions{.workers = workers, .max_tasks_per_worker = limit});
  std::vector<std::future<std::pair<int, pid_t>>> futures;
  for (int i = 0; i < tasks; ++i) {
    futures.push_back(pool.submit([](int x) { return std::pair<int, pid_t>(x + 5, getpid()); }, i));
  }
  std::map<pid_t, int> served;
  for (int i = 0; i < tasks; ++i) {
    const auto [value, pid] = futures[static_cast<std::size_t>(i)].get();
    EXPECT_EQ(value, i + 5) << "task " << i;
    ++served[pid];
  }
  for (const auto& [pid, count] : served) {
    EXPECT_LE(count, static_cast<int>(limit)) << "pid " << pid;
  }
  EXPECT_EQ(pool.size(), workers);
}

// With one worker the recycling is exact: after 12 tasks with a limit of 3, five processes were
// started (the fifth replaces the fourth, which exits after its third task) and one is left.
TEST(MaxTasksPerWorker, KeepsExactlyOneLiveWorker) {
  Pipe starts;
  const int starts_fd = starts.write_fd();
  Pool pool(PoolOptions{.workers = 1,
                        .on_worker_start =
                            [starts_fd] {
                              const pid_t self = getpid();
                              multicore_test::write_all(starts_fd, &self, sizeof self);
                            },
                        .max_tasks_per_worker = 3});
  const multicore_test::TerminateIfFailed guard(pool);
  const pid_t fork_server = multicore_test::child_pids().at(0);
  for (int i = 0; i < 12; ++i) {
    auto f = pool.submit([](int x) { return x; }, i);
    ASSERT_TRUE(multicore_test::ready_within(f)) << "task " << i;
    ASSERT_EQ(f.get(), i);
  }
  std::vector<pid_t> started;
  for (int i = 0; i < 5; ++i)
    started.push_back(multicore_test::read_value<pid_t>(starts.read_fd()));
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(multicore_test::running(started[std::size_t(i)]));
  EXPECT_EQ(multicore_test::live_children_of(fork_server), std::vector<pid_t>{started.back()});
}

// Regression test: a worker flushes what tasks printed when it goes idle, outside any task. With
// stdout a pipe nobody reads, that flush blocks, and the next task sent to the worker was never
// claimed: it waited for ever, task_timeout or not. A worker stuck so while holding tasks now
// counts as overrunning: it is killed, and the task (which never started) runs on the
// replacement.
pid_t print_then_own_pid() {
  std::fputs(std::string(3000, 'x').c_str(), stdout);  // under the stdio buffer: kept for later
  return getpid();
}

/// True once `pid` is blocked in write(2) (syscall 1 on x86-64; its number on others), waiting
/// at most 10 s.
bool blocked_in_write_within(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/syscall";
  const std::string write_call = std::to_string(SYS_write) + " ";
  for (int i = 0; i < 1000; ++i) {
    if (multicore_test::slurp(path).starts_with(write_call)) return true;
    usleep(10'000);  // polling a state, bounded: not waiting for a guess
  }
  return false;
}

TEST(Timeout, WorkerBlockedFlushingItsOutputWhenIdleDoesNotHangTheNextTask) {
  const auto end = multicore_test::in_child(
      [](int report) {
        Pipe unread;  // made full, so that the first flush blocks
        fcntl(unread.write_fd(), F_SETFL, O_NONBLOCK);
        const std::string block(4096, 'x');
        while (write(unread.write_fd(), block.data(), block.size()) > 0) {
        }
        fcntl(unread.write_fd(), F_SETFL, 0);  // the workers share the open file: blocking
        dup2(unread.write_fd(), STDOUT_FILENO);
        Pool pool(PoolOptions{.workers = 1, .task_timeout = 300ms});
        const pid_t first = pool.call(print_then_own_pid);
        if (!blocked_in_write_within(first)) {
          multicore_test::say(report, "the idle worker did not block flushing");
          return 1;
        }
        auto next = pool.submit(print_then_own_pid);
        if (next.wait_for(10s) != std::future_status::ready) {
          multicore_test::say(report, "the next task waited 10 s with task_timeout = 300 ms");
          pool.terminate();
          return 1;
        }
        const pid_t second = next.get();
        pool.terminate();  // its worker blocks flushing too, for ever
        return second != first ? 0 : 1;
      },
      60s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

}  // namespace
