// SPDX-License-Identifier: MIT
// Tasks that crash, exit, are killed or throw: only that task fails, with exactly what happened,
// and the pool keeps its size with replacements indistinguishable from the originals.
#include <dirent.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <multicore/multicore.hpp>
#include <new>
#include <optional>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"
#include "support/memory_cgroup.hpp"
#include "support/numbers.hpp"

namespace crash_test_types {
/// Thrown by a task: a type not derived from std::exception.
struct NotAnException {
  int code;
};

/// A result whose decoding in the parent holds the collector thread (which reads every ring)
/// until the test lets it go: while it is held, no answer behind this one can be read.
struct Held {
  int value;
};
inline int release_fd = -1;  // read end: one byte lets the decode finish
}  // namespace crash_test_types

template <>
struct multicore::Codec<crash_test_types::Held> {
  static void encode(Writer& out, const crash_test_types::Held& h) {
    out.write(&h.value, sizeof h.value);
  }
  static crash_test_types::Held decode(Reader& in) {
    crash_test_types::Held h{};
    in.read(&h.value, sizeof h.value);
    char byte = 0;
    multicore_test::read_exact(crash_test_types::release_fd, &byte, 1);
    return h;
  }
};

namespace {

using multicore::Pool;
using multicore::PoolOptions;
using multicore::RemoteError;
using multicore::WorkerLost;
using multicore_test::error_of;
using multicore_test::Pipe;

// ----- Ways to die -----------------------------------------------------------------------------

enum class Death {
  segfault_raise,
  segfault_null_write,
  abort,
  exit_0,
  exit_3,
  underscore_exit_3,
  thread_exit,
  raise_sigkill,
  oom_kill,
};

// What the OOM killer does: the process has grown, then gets SIGKILL. (A real OOM kill needs a
// memory cgroup limit and is not deterministic on a shared machine; the worker cannot tell the
// difference, and neither can the pool: both see a process killed by SIGKILL.)
[[noreturn]] void grow_then_get_oom_killed() {
  constexpr std::size_t bytes = std::size_t{64} << 20;
  auto* memory = static_cast<char*>(std::malloc(bytes));
  if (memory != nullptr) std::memset(memory, 1, bytes);
  kill(getpid(), SIGKILL);
  std::abort();  // not reached
}

int die(Death how) {
  switch (how) {
    case Death::segfault_raise:
      multicore_test::segfault_by_raise();
    case Death::segfault_null_write:
      multicore_test::segfault_by_null_write();
    case Death::abort:
      multicore_test::no_core_dump();
      std::abort();
    case Death::exit_0:
      std::exit(0);
    case Death::exit_3:
      std::exit(3);
    case Death::underscore_exit_3:
      _exit(3);
    case Death::thread_exit:
      pthread_exit(nullptr);
    case Death::raise_sigkill:
      std::raise(SIGKILL);
      break;
    case Death::oom_kill:
      grow_then_get_oom_killed();
  }
  return -1;  // raise(SIGKILL) does not return
}

pid_t own_pid() { return getpid(); }

struct DeathCase {
  const char* name;
  Death how;
  int signal;     // expected WorkerLost::signal()
  int exit_code;  // expected WorkerLost::exit_code()
  const char* message;
};

const DeathCase death_cases[] = {
    {"SegfaultByRaise", Death::segfault_raise, SIGSEGV, -1, "was killed by signal 11"},
    {"SegfaultByNullWrite", Death::segfault_null_write, SIGSEGV, -1, "was killed by signal 11"},
    {"Abort", Death::abort, SIGABRT, -1, "was killed by signal 6"},
    {"ExitZero", Death::exit_0, 0, 0, "exited with code 0"},
    {"ExitThree", Death::exit_3, 0, 3, "exited with code 3"},
    {"UnderscoreExitThree", Death::underscore_exit_3, 0, 3, "exited with code 3"},
    // Its only thread ends: the worker exits as a process whose last thread ends does. Glibc
    // aborted it ("FATAL: exception not rethrown") when the unwind was caught as an exception.
    {"ThreadExit", Death::thread_exit, 0, 0, "exited with code 0"},
    {"RaiseSigkill", Death::raise_sigkill, SIGKILL, -1, "was killed by signal 9"},
    {"OomKill", Death::oom_kill, SIGKILL, -1, "was killed by signal 9"},
};

void PrintTo(const DeathCase& c, std::ostream* os) { *os << c.name; }

class WorkerDeath : public ::testing::TestWithParam<DeathCase> {};

INSTANTIATE_TEST_SUITE_P(Crash, WorkerDeath, ::testing::ValuesIn(death_cases),
                         [](const auto& p) { return std::string(p.param.name); });

// The future of a task that kills its worker throws WorkerLost with the exact signal or exit
// code; the worker is replaced and the pool goes on.
TEST_P(WorkerDeath, FutureThrowsWorkerLostWithExactStatus) {
  const DeathCase& c = GetParam();
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();

  auto crashed = pool.submit(die, c.how);
  const auto lost = error_of<WorkerLost>(crashed);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), c.signal);
  EXPECT_EQ(lost->exit_code(), c.exit_code);
  const std::string what = lost->what();
  EXPECT_NE(what.find("worker process " + std::to_string(before)), std::string::npos) << what;
  EXPECT_NE(what.find(c.message), std::string::npos) << what;
  // Its exec watch closed as it died: that is no exec (see TaskThatReplacesItsWorkersProgram...).
  EXPECT_EQ(what.find("replaced the worker's program"), std::string::npos) << what;
  // Whatever killed it, it was not the kernel's out-of-memory killer (OomKill only acts as it).
  EXPECT_FALSE(lost->out_of_memory());
  EXPECT_EQ(what.find("out-of-memory"), std::string::npos) << what;

  const pid_t after = pool.submit(own_pid).get();
  EXPECT_NE(after, before) << "the dead worker must have been replaced";
  EXPECT_EQ(pool.size(), 1u);
  EXPECT_EQ(pool.submit([](int x) { return x * 3; }, 14).get(), 42);
}

// A worker the kernel's out-of-memory killer killed (for real: in a memory cgroup with a small
// limit) says so, by WorkerLost::out_of_memory() and in its message; a SIGKILL from anyone
// else does not (the OomKill case above). Regression test: a bare "killed by signal 9".
TEST(Crash, WorkerKilledByTheOutOfMemoryKillerIsReportedSo) {
  multicore_test::MemoryCgroup cgroup("multicore-test-" + std::to_string(getpid()),
                                      std::size_t{64} << 20);
  if (!cgroup.made()) GTEST_SKIP() << "no memory cgroup to fill: " << cgroup.why_not();
  {
    Pool pool(PoolOptions{.workers = 1});
    auto killed = pool.submit(multicore_test::join_then_outgrow, cgroup.procs());
    const auto lost = error_of<WorkerLost>(killed);
    ASSERT_TRUE(lost) << "the task did not die (it returned how it failed)";
    EXPECT_EQ(lost->signal(), SIGKILL);
    EXPECT_TRUE(lost->out_of_memory());
    const std::string what = lost->what();
    EXPECT_NE(what.find("was killed by signal 9 (Killed) while running this task, most likely by "
                        "the kernel's out-of-memory killer"),
              std::string::npos)
        << what;
    EXPECT_EQ(pool.submit([](int x) { return x * 3; }, 14).get(), 42);
  }  // the replacement, in the application's cgroup, ends before the cgroup is removed
}

/// Arms the worker's real-time timer, as alarm() does (in milliseconds), and returns at once,
/// leaving it armed.
int leave_a_timer_armed(int ms) {
  itimerval timer{};
  timer.it_value.tv_sec = ms / 1000;
  timer.it_value.tv_usec = (ms % 1000) * 1000;
  return setitimer(ITIMER_REAL, &timer, nullptr);
}

/// Runs until the worker's real-time timer, armed before this task, fires: its signal ends the
/// worker. -1 when none is armed (the kernel reads an active timer as at least 1 us left, and
/// the signal is sent as it expires, so this returns only on a worker that had none).
int run_until_the_timer_fires() {
  for (;;) {
    itimerval left{};
    getitimer(ITIMER_REAL, &left);
    if (left.it_value.tv_sec == 0 && left.it_value.tv_usec == 0) return -1;
    sched_yield();
  }
}

// A task that leaves a timer armed kills its worker when the timer fires (SIGALRM ends a
// process), which is often during a later task: that task's WorkerLost says so, since the task
// it blames may be innocent. Regression test: the message said only "killed by signal 14
// (Alarm clock)".
TEST(Crash, WorkerKilledByATimerATaskLeftArmedSaysSo) {
  Pool pool(PoolOptions{.workers = 1});
  auto armed = pool.submit(leave_a_timer_armed, 500);
  auto later = pool.submit(run_until_the_timer_fires);
  ASSERT_EQ(armed.get(), 0);
  std::optional<WorkerLost> lost;
  try {
    if (later.get() == -1) {
      GTEST_SKIP() << "the timer fired between the two tasks (the worker waited 500 ms for the "
                      "second one): the second ran on a replacement";
    }
  } catch (const WorkerLost& e) {
    lost = e;
  }
  ASSERT_TRUE(lost) << "the later task did not fail with WorkerLost";
  EXPECT_EQ(lost->signal(), SIGALRM);
  const std::string what = lost->what();
  EXPECT_NE(what.find("was killed by signal 14 (Alarm clock) while running this task, by a "
                      "timer's signal: this task, or one that ran before it on this worker, "
                      "armed a timer"),
            std::string::npos)
      << what;
  EXPECT_EQ(pool.submit([](int x) { return x * 3; }, 14).get(), 42);
}

/// The process that set up exit_time_code(); in any other (a worker), its code says it ran.
pid_t exit_time_code_owner = 0;

void say_if_in_a_worker(const char* what) {
  if (getpid() != exit_time_code_owner) std::fprintf(stderr, "%s ran in a worker\n", what);
}

struct DestroyedAtExit {
  ~DestroyedAtExit() { say_if_in_a_worker("a static destructor"); }
};

/// Gives this process an atexit handler and a static object, as applications have.
void exit_time_code() {
  static const bool done = [] {
    exit_time_code_owner = getpid();
    static DestroyedAtExit object;
    std::atexit([] { say_if_in_a_worker("an atexit handler"); });
    return true;
  }();
  (void)done;
}

// A task that calls exit() (as C libraries do on errors: libjpeg's default error handler does)
// ends its worker with that status, without running the application's atexit handlers and
// static destructors there: they belong to the application (they may flush its buffers again,
// remove its files, ...), which is why workers end with _exit. Regression test: both ran.
TEST(Crash, ExitInATaskRunsNoneOfTheApplicationsExitTimeCode) {
  exit_time_code();
  Pool pool(PoolOptions{.workers = 1});
  auto crashed = pool.submit(die, Death::exit_3);
  const auto lost = error_of<WorkerLost>(crashed);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->exit_code(), 3);
  EXPECT_EQ(lost->output_tail(), "");
  EXPECT_GT(pool.call(own_pid), 0) << "the pool goes on";
}

/// Replaces the worker's program by `sleep seconds`, as a task does that calls exec where fork
/// then exec, posix_spawn or system() was meant. Returns only if exec failed.
int replace_the_program(int seconds) {
  const std::string duration = std::to_string(seconds);
  execlp("sleep", "sleep", duration.c_str(), static_cast<char*>(nullptr));
  return -1;
}

/// Submits `task(3600)`, which replaces its worker's program: the task must get WorkerLost
/// saying so, at once, and the pool go on. `first`, if given, is called on the worker before,
/// and must return a positive number.
void expect_replacing_the_program_fails_at_once(int (*task)(int), int (*first)() = nullptr) {
  using namespace std::chrono_literals;
  Pool pool(PoolOptions{.workers = 1});
  if (first != nullptr) {
    ASSERT_GT(pool.call(first), 0);
  }
  auto replaced = pool.submit(task, 3600);
  // A liveness bound, not a timing assertion: before, this waited the hour.
  if (replaced.wait_for(30s) != std::future_status::ready) {
    pool.terminate();
    FAIL() << "the future waited for the program its task started";
  }
  const auto lost = error_of<WorkerLost>(replaced);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGKILL);
  EXPECT_NE(std::string(lost->what()).find("replaced the worker's program (exec"),
            std::string::npos)
      << lost->what();
  EXPECT_GT(pool.call(own_pid), 0) << "the pool goes on";
}

// A task that replaces its worker's program takes the worker with it: it gets WorkerLost saying
// so, at once, rather than a future that waits until that program ends (for ever, if it is a
// server). Regression test: the future waited as long as the program ran.
TEST(Crash, TaskThatReplacesItsWorkersProgramFailsAtOnce) {
  expect_replacing_the_program_fails_at_once(replace_the_program);
}

/// Forks a child that lives as long as this worker (it inherits every descriptor, the fork
/// server's watch on this worker included), then replaces the worker's program.
int replace_the_program_after_forking_a_child(int seconds) {
  const pid_t worker = getpid();
  const pid_t child = fork();
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == worker) pause();
    _exit(0);
  }
  if (child < 0) return -1;
  return replace_the_program(seconds);
}

// The same when the task forked a child first, which keeps every descriptor it inherited.
// Regression test: the child held the worker's exec watch open, and the future waited as long
// as the program ran.
TEST(Crash, TaskThatReplacesItsWorkersProgramAfterForkingAChildFailsAtOnce) {
  expect_replacing_the_program_fails_at_once(replace_the_program_after_forking_a_child);
}

/// Descriptors process `pid` has open (-1 if /proc cannot tell).
int open_descriptors(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (const dirent* e = readdir(d)) n += e->d_name[0] != '.' ? 1 : 0;
  closedir(d);
  return n;
}

/// The state letter /proc gives process `pid` ('S': asleep, 'R': running, ...), '?' if none.
char process_state(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  const std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto paren = text.rfind(')');  // "pid (comm) state ...", comm may hold anything
  return paren != std::string::npos && paren + 2 < text.size() ? text[paren + 2] : '?';
}

/// Closes every descriptor of its worker above stderr, as a daemon does, or code tidying up
/// before it drops privileges; then waits until the fork server has dealt with that (it closes
/// its end of the worker's exec watch first, then goes back to sleep in poll: by then a worker
/// it meant to kill has its SIGKILL, and dies on its next system call), and returns its pid.
/// -1: the fork server did not react within 20 s.
int close_descriptors_then_wait_for_the_fork_server() {
  const pid_t server = getppid();
  const int before = open_descriptors(server);
  syscall(SYS_close_range, 3u, ~0u, 0u);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  bool seen = false;  // the fork server closed its end
  while (std::chrono::steady_clock::now() < deadline) {
    if (!seen) {
      seen = open_descriptors(server) < before;
    } else if (process_state(server) == 'S') {
      return getpid();
    }
    sched_yield();
  }
  return -1;
}

// A task that closes its worker's descriptors (all of them above stderr) has not replaced the
// worker's program: it completes, and the worker goes on serving. Regression test: the fork
// server took the closed exec watch for an exec and killed the worker (WorkerLost "replaced
// the worker's program").
TEST(Crash, TaskThatClosesItsWorkersDescriptorsCompletesAndTheWorkerStays) {
  Pool pool(PoolOptions{.workers = 1});
  const pid_t worker = pool.call(own_pid);
  EXPECT_EQ(pool.call(close_descriptors_then_wait_for_the_fork_server), worker);
  EXPECT_EQ(pool.call(own_pid), worker);
  EXPECT_EQ(pool.stats().replaced.crashed, 0u);
}

// Its later exec is still seen: such a worker is watched otherwise (its memory looked at), and
// a task of it that replaces the program gets WorkerLost saying so, not a future that waits.
TEST(Crash, TaskThatReplacesTheProgramOfAWorkerWithoutDescriptorsFailsAtOnce) {
  expect_replacing_the_program_fails_at_once(replace_the_program,
                                             close_descriptors_then_wait_for_the_fork_server);
}

// With one worker and more tasks than it may hold in flight (at most 256), some tasks are queued
// behind the crashing one in the worker's ring and the rest wait in the parent: all of them
// must run on the replacement and succeed.
TEST_P(WorkerDeath, OnlyTheCrashingTaskFails) {
  const DeathCase& c = GetParam();
  Pool pool(PoolOptions{.workers = 1});
  constexpr int n = 100;
  constexpr int crasher = 2;
  std::vector<std::future<std::pair<int, pid_t>>> results;
  std::future<int> crashed;
  for (int i = 0; i < n; ++i) {
    if (i == crasher) {
      crashed = pool.submit(die, c.how);
      results.emplace_back();
      continue;
    }
    results.push_back(pool.submit([](int x) { return std::pair<int, pid_t>(x * x, getpid()); }, i));
  }
  const auto lost = error_of<WorkerLost>(crashed);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), c.signal);
  EXPECT_EQ(lost->exit_code(), c.exit_code);

  std::set<pid_t> before_crash;
  std::set<pid_t> after_crash;
  for (int i = 0; i < n; ++i) {
    if (i == crasher) continue;
    const auto [square, pid] = results[static_cast<std::size_t>(i)].get();
    EXPECT_EQ(square, i * i) << "task " << i;
    (i < crasher ? before_crash : after_crash).insert(pid);
  }
  // Tasks before the crasher ran on the first process, every task after it on its replacement.
  ASSERT_EQ(before_crash.size(), 1u);
  ASSERT_EQ(after_crash.size(), 1u);
  EXPECT_NE(*before_crash.begin(), *after_crash.begin());
  EXPECT_EQ(pool.size(), 1u);
}

// The same with several workers and several parent threads submitting: every other future gets
// its value.
TEST(Crash, OnlyTheCrashingTasksFailWithManyWorkersAndThreads) {
  Pool pool(PoolOptions{.workers = 2});
  constexpr int per_thread = 60;
  std::vector<std::future<int>> futures[3];
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        if (i % 20 == 7) {
          futures[t].push_back(pool.submit(die, Death::segfault_raise));
        } else {
          futures[t].push_back(pool.submit([](int x) { return x + 1; }, t * 1000 + i));
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 3; ++t) {
    for (int i = 0; i < per_thread; ++i) {
      auto& f = futures[t][static_cast<std::size_t>(i)];
      if (i % 20 == 7) {
        const auto lost = error_of<WorkerLost>(f);
        ASSERT_TRUE(lost) << "thread " << t << " task " << i;
        EXPECT_EQ(lost->signal(), SIGSEGV);
        EXPECT_EQ(lost->exit_code(), -1);
      } else {
        EXPECT_EQ(f.get(), t * 1000 + i + 1) << "thread " << t << " task " << i;
      }
    }
  }
  EXPECT_EQ(pool.size(), 2u);
}

std::uint64_t fingerprint(const std::vector<std::uint8_t>& bytes) {
  std::uint64_t h = bytes.size();
  for (std::size_t i = 0; i < bytes.size(); i += 4096) h = h * 31 + bytes[i];
  return h * 31 + bytes.back();
}

std::vector<std::uint8_t> big_bytes(std::size_t n) {
  std::vector<std::uint8_t> bytes(n);
  for (std::size_t i = 0; i < n; i += 4096) bytes[i] = static_cast<std::uint8_t>(i / 4096 + 1);
  bytes.back() = 99;
  return bytes;
}

// A task queued behind the crasher whose argument (32 MiB through a 64 KiB ring) was only partly
// sent when the worker died: it is sent again, whole, to the replacement.
TEST(Crash, QueuedTaskWithAPartlySentArgumentCompletesAfterACrash) {
  Pool pool(PoolOptions{.workers = 1, .ring_bytes = 64 << 10});
  const std::vector<std::uint8_t> payload = big_bytes(std::size_t{32} << 20);
  auto crashed = pool.submit(die, Death::segfault_raise);
  auto big = pool.submit(fingerprint, payload);
  auto after = pool.submit([](int x) { return x + 1; }, 1);
  ASSERT_TRUE(error_of<WorkerLost>(crashed));
  EXPECT_EQ(big.get(), fingerprint(payload));
  EXPECT_EQ(after.get(), 2);
}

// A worker killed while it streams a result larger than the ring (the parent had read only part
// of it): that task gets WorkerLost, the half-read answer is discarded, the others complete.
TEST(Crash, WorkerKilledWhileWritingItsAnswer) {
  Pipe release;
  Pipe returning;
  crash_test_types::release_fd = release.read_fd();
  Pool pool(PoolOptions{.workers = 1, .ring_bytes = 64 << 10});
  // The first answer holds the collector: the second cannot be read past the ring's 64 KiB.
  auto held = pool.submit([] { return crash_test_types::Held{5}; });
  auto big = pool.submit(
      [](int tell) {
        const pid_t self = getpid();
        multicore_test::write_all(tell, &self, sizeof self);
        return big_bytes(std::size_t{32} << 20);
      },
      returning.write_fd());
  auto queued = pool.submit([](int x) { return x * 2; }, 21);
  const pid_t worker = multicore_test::read_value<pid_t>(returning.read_fd());
  ASSERT_EQ(kill(worker, SIGKILL), 0);
  const char go = 1;
  ASSERT_TRUE(multicore_test::write_all(release.write_fd(), &go, 1));

  EXPECT_EQ(held.get().value, 5);
  const auto lost = error_of<WorkerLost>(big);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGKILL);
  EXPECT_EQ(lost->exit_code(), -1);
  EXPECT_EQ(queued.get(), 42);
  EXPECT_NE(pool.submit(own_pid).get(), worker);
}

// ----- Throwing tasks: RemoteError, the worker lives on ----------------------------------------

struct ThrowCase {
  const char* name;
  int kind;
  const char* type_name;
  const char* message;
};

int throw_something(int kind) {
  switch (kind) {
    case 0:
      throw crash_test_types::NotAnException{7};
    case 1:
      throw 42;
    case 2:
      throw std::string("a thrown string");
    case 3:
      throw "a thrown literal";
    case 4:
      throw std::runtime_error("a runtime error");
    case 5:
      throw std::out_of_range("index 9 is out of range");
    default:
      return 0;
  }
}

const ThrowCase throw_cases[] = {
    {"NotAnException", 0, "crash_test_types::NotAnException", ""},
    {"Int", 1, "int", ""},
    {"StdString", 2, "std::string", "a thrown string"},
    {"CharPointer", 3, "char const*", "a thrown literal"},
    {"RuntimeError", 4, "std::runtime_error", "a runtime error"},
    {"OutOfRange", 5, "std::out_of_range", "index 9 is out of range"},
};

void PrintTo(const ThrowCase& c, std::ostream* os) { *os << c.name; }

class Throwing : public ::testing::TestWithParam<ThrowCase> {};

INSTANTIATE_TEST_SUITE_P(Crash, Throwing, ::testing::ValuesIn(throw_cases),
                         [](const auto& p) { return std::string(p.param.name); });

TEST_P(Throwing, GivesRemoteErrorWithDemangledTypeAndKeepsTheWorker) {
  const ThrowCase& c = GetParam();
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  auto thrown = pool.submit(throw_something, c.kind);
  const auto error = error_of<RemoteError>(thrown);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->type_name(), c.type_name);
  EXPECT_EQ(error->message(), c.message);
  const std::string what = error->what();
  EXPECT_NE(what.find(c.type_name), std::string::npos) << what;
  EXPECT_NE(what.find(c.message), std::string::npos) << what;
  EXPECT_EQ(pool.submit(own_pid).get(), before) << "a throwing task must not cost the worker";
}

// Out of memory that the task sees as std::bad_alloc (address space limit reached) is an
// exception like any other: RemoteError, and the worker survives.
std::size_t exhaust_address_space() {
  rlimit old{};
  getrlimit(RLIMIT_AS, &old);
  struct Restore {
    rlimit limit;
    ~Restore() { setrlimit(RLIMIT_AS, &limit); }
  } restore{old};
  long pages = 0;
  std::sscanf(multicore_test::slurp("/proc/self/statm").c_str(), "%ld", &pages);
  const auto mapped = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE));
  const rlimit tight{mapped + (rlim_t{64} << 20), old.rlim_max};
  if (setrlimit(RLIMIT_AS, &tight) != 0) throw std::logic_error("setrlimit failed");
  std::vector<std::unique_ptr<char[]>> blocks;
  blocks.reserve(1024);
  constexpr std::size_t block = std::size_t{16} << 20;
  for (;;) {
    blocks.emplace_back(new char[block]);
    std::memset(blocks.back().get(), 1, block);  // touch it: really use the memory
  }
}

TEST(Crash, BadAllocIsARemoteErrorAndKeepsTheWorker) {
#if MULTICORE_TEST_ASAN
  GTEST_SKIP() << "AddressSanitizer reserves terabytes of address space for its shadow memory "
                  "and aborts when RLIMIT_AS makes its own mappings fail";
#endif
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  auto exhausted = pool.submit(exhaust_address_space);
  const auto error = error_of<RemoteError>(exhausted);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->type_name(), "std::bad_alloc");
  EXPECT_EQ(pool.submit(own_pid).get(), before);
  EXPECT_EQ(pool.submit([](int x) { return x * 2; }, 21).get(), 42);
}

// The worker describes a thrown exception by copying its type name and message; when memory
// runs out while it does (here: a 256 MiB message under an address-space limit), the task
// still threw, and the worker is healthy. It must not send an answer the parent takes for a
// corrupt one (and then kill the worker for it).
int throw_while_out_of_memory() {
  std::runtime_error error(std::string(std::size_t{256} << 20, 'x'));  // shared, not copied
  long pages = 0;
  std::sscanf(multicore_test::slurp("/proc/self/statm").c_str(), "%ld", &pages);
  const auto mapped = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE));
  rlimit limit{};
  getrlimit(RLIMIT_AS, &limit);
  limit.rlim_cur = mapped + (rlim_t{16} << 20);  // no room for a second copy of the message
  setrlimit(RLIMIT_AS, &limit);
  throw error;
}

pid_t lift_address_space_limit() {
  rlimit limit{};
  getrlimit(RLIMIT_AS, &limit);
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_AS, &limit);
  return getpid();
}

TEST(Crash, TaskThrowingWhileOutOfMemoryKeepsItsWorker) {
#if MULTICORE_TEST_ASAN
  GTEST_SKIP() << "AddressSanitizer reserves terabytes of address space for its shadow memory "
                  "and aborts when RLIMIT_AS makes its own mappings fail";
#endif
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  auto thrown = pool.submit(throw_while_out_of_memory);
  const auto error = error_of<RemoteError>(thrown);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->type_name(), "std::runtime_error");
  EXPECT_EQ(pool.submit(lift_address_space_limit).get(), before)
      << "the worker was replaced: it was treated as broken";
}

// ----- The pool keeps its size, and replacements are indistinguishable ------------------------

class CrashWorkers : public ::testing::TestWithParam<unsigned> {};

INSTANTIATE_TEST_SUITE_P(Crash, CrashWorkers, ::testing::Values(1u, 2u),
                         [](const auto& p) { return std::to_string(p.param) + "Workers"; });

// Fifty crashes in a row: every one is a WorkerLost, the pool keeps working, and at the end it
// has exactly size() live workers. Every worker start (originals and replacements) reports its
// pid through a pipe from on_worker_start, so the test knows when all replacements exist
// without sleeping: a replacement is forked only after its predecessor was reaped.
TEST_P(CrashWorkers, KeepsItsSizeThroughFiftyCrashesInARow) {
  const unsigned workers = GetParam();
  constexpr int crashes = 50;
  Pipe starts;
  const int starts_fd = starts.write_fd();
  {
    Pool pool(PoolOptions{.workers = workers, .on_worker_start = [starts_fd] {
                            const pid_t self = getpid();
                            multicore_test::write_all(starts_fd, &self, sizeof self);
                          }});
    const std::vector<pid_t> parent_children = multicore_test::child_pids();
    ASSERT_EQ(parent_children.size(), 1u) << "expected only the fork server as our child";
    const pid_t fork_server = parent_children.front();

    for (int i = 0; i < crashes; ++i) {
      auto crashed =
          pool.submit(die, i % 2 == 0 ? Death::segfault_raise : Death::underscore_exit_3);
      const auto lost = error_of<WorkerLost>(crashed);
      ASSERT_TRUE(lost) << "crash " << i;
      EXPECT_EQ(lost->signal(), i % 2 == 0 ? SIGSEGV : 0);
      EXPECT_EQ(lost->exit_code(), i % 2 == 0 ? -1 : 3);
      ASSERT_EQ(pool.size(), workers);
      ASSERT_EQ(pool.submit([](int x) { return x - 1; }, i).get(), i - 1) << "after crash " << i;
    }

    std::vector<pid_t> started;
    for (unsigned i = 0; i < workers + crashes; ++i) {
      started.push_back(multicore_test::read_value<pid_t>(starts.read_fd()));
    }
    std::vector<pid_t> alive;
    for (pid_t pid : started) {
      if (multicore_test::running(pid)) alive.push_back(pid);
    }
    std::sort(alive.begin(), alive.end());
    EXPECT_EQ(alive.size(), workers) << "live workers after the crashes";
    EXPECT_EQ(multicore_test::live_children_of(fork_server), alive);
    EXPECT_EQ(std::set<pid_t>(started.begin(), started.end()).size(), started.size());
    EXPECT_EQ(pool.size(), workers);
  }
}

// The program state a worker starts from.
int g_setting = 0;              // set before the pool is made, changed after
std::string g_name = "before";  // likewise, on the heap
int g_scribbled = 0;            // changed by a task inside a worker
pid_t g_started_in = 0;         // set by on_worker_start, in the worker
int g_start_count = 0;          // incremented by on_worker_start, in the worker

struct WorkerView {
  pid_t pid;
  int setting;
  int scribbled;
  pid_t started_in;
  int start_count;
  char name[16];
};

WorkerView look_around() {
  WorkerView v{getpid(), g_setting, g_scribbled, g_started_in, g_start_count, {}};
  std::strncpy(v.name, g_name.c_str(), sizeof v.name - 1);
  return v;
}

int scribble_then_crash() {
  g_scribbled = 99;
  g_name = "scribbled";
  multicore_test::segfault_by_raise();
}

// A replacement starts from the snapshot taken when the pool was made, not from the parent as
// it is now nor from its crashed predecessor, and runs on_worker_start again.
TEST(Crash, ReplacementSeesThePoolConstructionSnapshotAndRunsOnWorkerStart) {
  g_setting = 1;
  g_name = "at construction";
  g_scribbled = 0;
  Pool pool(PoolOptions{.workers = 1, .on_worker_start = [] {
                          g_started_in = getpid();
                          ++g_start_count;
                        }});
  g_setting = 2;  // after the pool was made: no worker may ever see this
  g_name = "changed later";

  const WorkerView first = pool.submit(look_around).get();
  EXPECT_EQ(first.setting, 1);
  EXPECT_STREQ(first.name, "at construction");
  EXPECT_EQ(first.started_in, first.pid);
  EXPECT_EQ(first.start_count, 1);

  auto crashed = pool.submit(scribble_then_crash);
  ASSERT_TRUE(error_of<WorkerLost>(crashed));

  const WorkerView second = pool.submit(look_around).get();
  EXPECT_NE(second.pid, first.pid);
  EXPECT_EQ(second.setting, 1) << "the replacement must see the value from pool construction";
  EXPECT_STREQ(second.name, "at construction");
  EXPECT_EQ(second.scribbled, 0) << "the crashed worker's changes must not leak into its successor";
  EXPECT_EQ(second.started_in, second.pid) << "on_worker_start must run in the replacement";
  EXPECT_EQ(second.start_count, 1);

  // The parent itself never ran on_worker_start.
  EXPECT_EQ(g_start_count, 0);
  EXPECT_EQ(g_started_in, 0);
}

/// Reads every result of a map of x -> x * 10 over [0, n) whose item `bad` killed its worker:
/// that item must throw WorkerLost with `signal` and `exit_code`, every other one its value.
template <class Results>
void expect_only_the_bad_item_lost(Results& results, int n, int bad, int signal, int exit_code) {
  int index = 0;
  for (auto it = results.begin(); it != results.end(); ++it, ++index) {
    if (index == bad) {
      const auto lost = multicore_test::thrown_exactly<WorkerLost>([&] { (void)*it; });
      ASSERT_TRUE(lost);
      EXPECT_EQ(lost->signal(), signal) << lost->what();
      EXPECT_EQ(lost->exit_code(), exit_code) << lost->what();
      continue;
    }
    EXPECT_EQ(*it, index * 10);
  }
  EXPECT_EQ(index, n);
}

// Pool::map with one input per chunk: the item whose function crashes throws WorkerLost when its
// result is read, every other item has its value.
TEST(Crash, MapItemThatCrashesFailsAlone) {
  Pool pool(PoolOptions{.workers = 2});
  constexpr int n = 40;
  constexpr int bad = 17;
  auto results = pool.map(
      [](int x) {
        if (x == bad) multicore_test::segfault_by_raise();
        return x * 10;
      },
      multicore_test::numbers(0, n), multicore::MapOptions{.chunk_size = 1});
  expect_only_the_bad_item_lost(results, n, bad, SIGSEGV, -1);
}

// An item that ends its thread (pthread_exit) on one of a worker's team threads ends that
// worker, like a crash: the item gets WorkerLost, every other item its value. The team must
// not go on one thread short (its chunk would never finish), nor may glibc abort the worker
// for an unwind caught as an exception (regression: the item got "killed by signal 6").
TEST(Crash, MapItemThatEndsItsThreadFailsAloneOnAWorkersTeam) {
  Pool pool(PoolOptions{.workers = 2});
  constexpr int n = 40;
  constexpr int bad = 17;
  auto results = pool.map(
      [](int x) {
        if (x == bad) pthread_exit(nullptr);
        return x * 10;
      },
      multicore_test::numbers(0, n),
      multicore::MapOptions{.chunk_size = 4, .threads_per_worker = 2});
  expect_only_the_bad_item_lost(results, n, bad, 0, 0);
}

}  // namespace
