// SPDX-License-Identifier: MIT
// Pools and fork(): pools made inside workers (in tasks, in on_worker_start, nested), pools
// made while other threads work, and what a process forked by the application does with them.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <latch>
#include <memory>
#include <multicore/multicore.hpp>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include "support/app.hpp"
#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"

namespace {

using multicore::MapOptions;
using multicore::Pool;
using multicore::PoolOptions;
using multicore_test::AppResult;
using multicore_test::Report;
using multicore_test::run_app;

int twice(int x) { return 2 * x; }

/// Why a test cannot run under ThreadSanitizer: in it, a process forked from one with several
/// threads starts threads, which TSan does not support (it kills the process: die_after_fork).
constexpr const char* threads_after_multithreaded_fork =
    "ThreadSanitizer kills a process forked from a multithreaded one when it starts a thread";

/// Makes a pool in the calling process and uses it every way: submit, call, map (8x).
int use_new_pool(int x) {
  Pool pool(PoolOptions{.workers = 2});
  int sum = pool.submit(twice, x).get() + pool.call(twice, x);
  for (int r : pool.map(twice, std::vector<int>{x, x})) sum += r;
  return sum;
}

/// One level deeper: a pool whose task makes a pool (8x).
int use_pool_that_makes_a_pool(int x) {
  Pool pool(PoolOptions{.workers = 1});
  return pool.call(use_new_pool, x);
}

/// The application's report when it ran `body` and ended normally.
std::string report_of(void (*body)(const Report&)) {
  const AppResult app = run_app(body);
  EXPECT_TRUE(WIFEXITED(app.status) && WEXITSTATUS(app.status) == 0)
      << "status " << app.status << ", report:\n"
      << app.report;
  return app.report;
}

// ----- Pools made inside workers ---------------------------------------------------------------

// The library's own error message, for a Pool used inside a worker, says "make a new Pool
// there if you need one". Regression test: that pool hung for ever, because the mutex guarding
// the pools' descriptors was held across the fork that made the fork server, so every worker
// inherited it locked.
TEST(NestedPool, MadeAndUsedInsideATask) {
  const std::string got = report_of([](const Report& report) {
    Pool pool(PoolOptions{.workers = 1});
    report.outcome("submit", [&] { return pool.submit(use_new_pool, 5).get(); });
    report.outcome("call", [&] { return pool.call(use_new_pool, 6); });
    int sum = 0;
    for (int r : pool.map(use_new_pool, std::vector<int>{1, 2})) sum += r;
    report.line("map: " + std::to_string(sum));
  });
  EXPECT_EQ(got, "submit: value 40\ncall: value 48\nmap: 24\n");
}

TEST(NestedPool, TwoLevelsDeep) {
  const std::string got = report_of([](const Report& report) {
    Pool pool(PoolOptions{.workers = 1});
    report.outcome("call", [&] { return pool.call(use_pool_that_makes_a_pool, 3); });
  });
  EXPECT_EQ(got, "call: value 24\n");
}

/// The pool a worker made in on_worker_start (null elsewhere).
std::unique_ptr<Pool>& worker_pool() {
  static std::unique_ptr<Pool> pool;
  return pool;
}

void make_worker_pool() { worker_pool() = std::make_unique<Pool>(PoolOptions{.workers = 1}); }

int twice_in_worker_pool(int x) { return worker_pool()->call(twice, x); }

pid_t worker_pid() { return getpid(); }

TEST(NestedPool, MadeInOnWorkerStart) {
  const std::string got = report_of([](const Report& report) {
    Pool pool(PoolOptions{.workers = 2, .on_worker_start = make_worker_pool});
    report.outcome("call", [&] { return pool.call(twice_in_worker_pool, 21); });
    int sum = 0;
    for (int r : pool.map(twice_in_worker_pool, std::vector<int>{1, 2, 3})) sum += r;
    report.line("map: " + std::to_string(sum));
  });
  EXPECT_EQ(got, "call: value 42\nmap: 12\n");
}

// A replacement worker is forked later, by the fork server, from the same snapshot: its
// on_worker_start must be able to make a pool too. (Each worker here runs one task.)
TEST(NestedPool, MadeInAReplacementWorkersOnWorkerStart) {
  const std::string got = report_of([](const Report& report) {
    Pool pool(
        PoolOptions{.workers = 1, .on_worker_start = make_worker_pool, .max_tasks_per_worker = 1});
    const pid_t first = pool.call(worker_pid);
    report.outcome("call", [&] { return pool.call(twice_in_worker_pool, 4); });
    report.line(std::string("replaced: ") + (pool.call(worker_pid) != first ? "yes" : "no"));
  });
  EXPECT_EQ(got, "call: value 8\nreplaced: yes\n");
}

// Another thread of the application hammers a pool (submit and call, answers decoded by the
// collector meanwhile) while pools are made on this one: whatever lock that thread holds at the
// moment of a fork, the new pools' workers must still be able to make pools of their own.
TEST(NestedPool, MadeInWorkersOfAPoolMadeWhileAnotherThreadUsesAPool) {
  if (MULTICORE_TEST_ASAN || MULTICORE_TEST_TSAN) {
    // Seen under ASan: a worker inherited a size class of ASan's allocator locked by the
    // hammering thread, and its pool's collector thread waited for it for ever. glibc's malloc
    // takes its locks around fork(); the sanitizers' allocators do so only from LLVM 18
    // (llvm/llvm-project#75290, ASan; #96600, TSan), later than g++ 12's.
    GTEST_SKIP() << "the sanitizer's allocator is not fork-safe (in g++ 12)";
  }
  const std::string got = report_of([](const Report& report) {
    Pool busy(PoolOptions{.workers = 2});
    std::atomic<bool> stop{false};
    std::atomic<long> calls{0};
    std::thread hammer([&] {
      while (!stop.load()) {
        auto f = busy.submit(twice, 1);
        calls += busy.call(twice, 1) + f.get();
      }
    });
    int ok = 0;
    for (int round = 0; round < 10; ++round) {
      Pool pool(PoolOptions{.workers = 2});
      ok += pool.call(use_new_pool, 1) == 8 ? 1 : 0;
    }
    stop = true;
    hammer.join();
    report.line("rounds ok: " + std::to_string(ok));
    report.line(std::string("hammered: ") + (calls.load() > 0 ? "yes" : "no"));
  });
  EXPECT_EQ(got, "rounds ok: 10\nhammered: yes\n");
}

// ----- Threads inside workers, after a fork --------------------------------------------------

int sum_with_two_threads(int x) {
  Pool pool(PoolOptions{.workers = 1});
  int sum = 0;
  for (int r : pool.map(twice, std::vector<int>{x, x, x, x},
                        MapOptions{.chunk_size = 4, .threads_per_worker = 2})) {
    sum += r;
  }
  return sum;
}

// A map with threads_per_worker runs on a team of threads kept by the process. A process forked
// from one that has such a team (a worker whose earlier map used threads, then makes a pool)
// has the team's bookkeeping but not its threads. Regression test: the new pool's workers
// waited for ever for helper threads that did not exist.
TEST(NestedPool, MapWithThreadsAfterTheWorkerUsedThreads) {
  if (MULTICORE_TEST_TSAN) GTEST_SKIP() << threads_after_multithreaded_fork;
  const std::string got = report_of([](const Report& report) {
    Pool pool(PoolOptions{.workers = 1});
    int sum = 0;
    for (int r : pool.map(twice, std::vector<int>{1, 1, 1, 1},
                          MapOptions{.chunk_size = 4, .threads_per_worker = 2}))
      sum += r;
    report.line("threads in the worker: " + std::to_string(sum));
    report.outcome("nested", [&] { return pool.call(sum_with_two_threads, 5); });
  });
  EXPECT_EQ(got, "threads in the worker: 8\nnested: value 40\n");
}

// The same with the team made in the application: an inline pool runs its map's threads here.
TEST(NestedPool, MapWithThreadsInWorkersOfAnApplicationThatUsedThreads) {
  if (MULTICORE_TEST_TSAN) GTEST_SKIP() << threads_after_multithreaded_fork;
  const std::string got = report_of([](const Report& report) {
    {
      Pool inline_pool(PoolOptions{.run_inline = true});
      int sum = 0;
      for (int r : inline_pool.map(twice, std::vector<int>{1, 1, 1, 1},
                                   MapOptions{.chunk_size = 4, .threads_per_worker = 2}))
        sum += r;
      report.line("inline: " + std::to_string(sum));
    }
    Pool pool(PoolOptions{.workers = 1});
    int sum = 0;
    for (int r : pool.map(twice, std::vector<int>{3, 3, 3, 3},
                          MapOptions{.chunk_size = 4, .threads_per_worker = 2}))
      sum += r;
    report.line("workers: " + std::to_string(sum));
  });
  EXPECT_EQ(got, "inline: 8\nworkers: 24\n");
}

// ----- A process the application forks while a pool exists -----------------------------------

/// Reports, when static destructors destroy it, that they got past the global pool (it is made
/// first, so destroyed last).
struct ExitWitness {
  int fd = -1;  // set in the child only
  ~ExitWitness() {
    const char done[] = "static destructors done\n";
    if (fd >= 0) multicore_test::write_all(fd, done, sizeof done - 1);
  }
};

ExitWitness& exit_witness() {
  static ExitWitness witness;
  return witness;
}

/// A pool with static storage duration: static destructors (exit()) destroy it, also in a
/// child the application forked.
std::optional<Pool>& global_pool() {
  exit_witness();
  static std::optional<Pool> pool;
  return pool;
}

/// The worker pids of a pool of `n` (each worker answers with its own pid at least once).
std::set<pid_t> worker_pids(Pool& pool, unsigned n) {
  std::set<pid_t> pids;
  for (int i = 0; i < 100 && pids.size() < n; ++i) {
    std::vector<std::future<pid_t>> futures;
    for (unsigned k = 0; k < 4 * n; ++k) futures.push_back(pool.submit(worker_pid));
    for (auto& f : futures) pids.insert(f.get());
  }
  return pids;
}

/// Forks a child that runs `body(report, the report's fd)` (no gtest assertion there), then
/// _exits, and returns its report. Waits at most the pipe's liveness bound for it, then kills
/// it. `status` gets its wait status.
template <class Body>
std::string fork_child(Body body, int& status) {
  multicore_test::Pipe pipe;
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    pipe.close_read();
    body(Report(pipe.write_fd()), pipe.write_fd());
    _exit(0);
  }
  pipe.close_write();
  bool complete = false;
  std::string report =
      multicore_test::read_to_end(pipe.read_fd(), multicore_test::pipe_liveness, &complete);
  if (!complete) kill(pid, SIGKILL);
  status = multicore_test::reap(pid);
  return report;
}

/// What a child says when it uses a pool it inherited.
constexpr const char* refused =
    "multicore::Error what=multicore: a Pool cannot be used from inside a worker process, nor "
    "from any other process forked after it was made: the copy there is a snapshot, not a "
    "working pool (make a new Pool there if you need one)";

// The application forks a child while a global pool exists, and the child leaves with exit(),
// which runs static destructors: the pool's too. Regression test: that destructor shut down the
// parent's pool from the child (it sent its workers "stop" through the shared rings) and then
// hung joining a collector thread that does not exist in the child.
TEST(ForkedByTheApplication, ChildThatCallsExitWithAGlobalPool) {
  Pool& pool = global_pool().emplace(PoolOptions{.workers = 2});
  multicore_test::TerminateIfFailed guard(pool);
  const std::set<pid_t> workers = worker_pids(pool, 2);
  ASSERT_EQ(workers.size(), 2u);
  int status = -1;
  const std::string report = fork_child(
      [](const Report& r, int fd) {
        r.outcome("submit", [] { return global_pool()->submit(twice, 1).get(); });
        r.line("exiting");
        exit_witness().fd = fd;
        std::exit(0);  // static destructors: global_pool() with it
      },
      status);
  EXPECT_EQ(report, std::string("submit: ") + refused + "\nexiting\nstatic destructors done\n");
  EXPECT_TRUE(WIFEXITED(status)) << "status " << status;
  // LeakSanitizer checks the child at exit(), and fails it: what only the parent's other threads
  // (the collector) pointed to looks leaked in a child that has none of them.
  if (!MULTICORE_TEST_ASAN) {
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  // The parent's pool is untouched: same workers, every task succeeds.
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 20; ++i) futures.push_back(pool.submit(twice, i));
  for (std::size_t i = 0; i < futures.size(); ++i) {
    if (multicore_test::ready_within(futures[i])) {
      EXPECT_EQ(futures[i].get(), 2 * static_cast<int>(i));
    }
  }
  EXPECT_EQ(worker_pids(pool, 2), workers);
  global_pool().reset();
}

// The same with a child that destroys, moves over, shuts down and terminates Pool objects it
// inherited, then makes and uses a pool of its own.
TEST(ForkedByTheApplication, ChildThatReleasesInheritedPools) {
  if (MULTICORE_TEST_TSAN) GTEST_SKIP() << threads_after_multithreaded_fork;
  auto pool = std::make_unique<Pool>(PoolOptions{.workers = 2});
  Pool other(PoolOptions{.workers = 1});
  multicore_test::TerminateIfFailed guard(*pool);
  const std::set<pid_t> workers = worker_pids(*pool, 2);
  int status = -1;
  const std::string report = fork_child(
      [&](const Report& r, int) {
        r.outcome("call", [&] { return pool->call(twice, 1); });
        pool->shutdown();
        pool->terminate();
        pool.reset();
        r.line("destroyed");
        other = Pool(PoolOptions{.workers = 1});  // over a snapshot: the new one works
        r.outcome("new pool", [&] { return other.call(twice, 2); });
        other.shutdown();
        r.line("done");
      },
      status);
  EXPECT_EQ(report, std::string("call: ") + refused + "\ndestroyed\nnew pool: value 4\ndone\n");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  auto f = pool->submit(twice, 21);
  if (multicore_test::ready_within(f)) {
    EXPECT_EQ(f.get(), 42);
  }
  EXPECT_EQ(other.call(twice, 5), 10);
  EXPECT_EQ(worker_pids(*pool, 2), workers);
}

/// Runs `body` while another thread holds `mutex`, as if that thread were inside the library
/// at that moment; the lock is let go once `body` returns or throws.
template <class Body>
void while_another_thread_holds(std::mutex& mutex, Body body) {
  std::latch held(1);
  std::latch done(1);
  std::thread holder([&] {
    std::lock_guard lock(mutex);
    held.count_down();
    done.wait();
  });
  held.wait();
  try {
    body();
  } catch (...) {
    done.count_down();
    holder.join();
    throw;
  }
  done.count_down();
  holder.join();
}

// Another thread of the application holds the library's process-wide lock (it is making or
// destroying a pool) at the moment this thread forks. Regression test: the child inherited the
// lock held, by a thread that does not exist there, and a pool made in the child waited for it
// for ever. (Without the test holding it on purpose, about one child in twenty hung when one
// thread forked while another made pools.)
TEST(ForkedByTheApplication, ChildMakesAPoolAlthoughAnotherThreadHeldTheLibrarysLock) {
  if (MULTICORE_TEST_TSAN) GTEST_SKIP() << threads_after_multithreaded_fork;
  Pool pool(PoolOptions{.workers = 1});
  int status = -1;
  std::string report;
  while_another_thread_holds(multicore::detail::OwnedDescriptors::instance().mutex, [&] {
    report = fork_child(
        [](const Report& r, int) {
          Pool own(PoolOptions{.workers = 1});
          r.outcome("call", [&] { return own.call(twice, 21); });
        },
        status);
  });
  EXPECT_EQ(report, "call: value 42\n");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_EQ(pool.call(twice, 2), 4);
}

// The same for the lock of the workers' cache of SharedArray mappings (taken in the parent when
// an array lets go of its memory): a pool forked while another thread held it left it taken in
// its workers, and their first task with an array waited for ever.
TEST(ForkedByTheApplication, APoolMadeWhileAnotherThreadHeldTheArrayMappingsLockServesArrays) {
  if (MULTICORE_TEST_TSAN) GTEST_SKIP() << threads_after_multithreaded_fork;
  std::optional<Pool> pool;
  while_another_thread_holds(multicore::detail::SharedMappings::instance().mutex,
                             [&] { pool.emplace(PoolOptions{.workers = 1}); });
  const multicore_test::TerminateIfFailed guard(*pool);
  multicore::SharedArray<int> array(4);
  auto written = pool->submit(
      [](multicore::SharedArray<int> a) {
        a[2] = 7;
        return a.size();
      },
      array);
  ASSERT_TRUE(multicore_test::ready_within(written));
  EXPECT_EQ(written.get(), 4u);
  EXPECT_EQ(array[2], 7);
}

// ----- What workers inherit from the thread that makes the pool ------------------------------

/// Runs `body` on a new thread with a stack of `stack_bytes` (0: the default) and waits for it.
template <class Body>
void on_thread(std::size_t stack_bytes, Body body) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (stack_bytes != 0) pthread_attr_setstacksize(&attr, stack_bytes);
  pthread_t thread;
  const int error = pthread_create(
      &thread, &attr,
      [](void* b) -> void* {
        (*static_cast<Body*>(b))();
        return nullptr;
      },
      &body);
  pthread_attr_destroy(&attr);
  ASSERT_EQ(error, 0) << std::strerror(error);
  pthread_join(thread, nullptr);
}

/// The calling process's blocked-signal mask, as /proc shows it ("SigBlk:\t<hex>").
std::string blocked_signals() {
  const std::string status = multicore_test::slurp("/proc/self/status");
  const auto at = status.find("SigBlk:");
  return at == std::string::npos ? "?" : status.substr(at, status.find('\n', at) - at);
}

int crash() { multicore_test::segfault_by_raise(); }

// A thread that blocks every signal (as threads that leave signal handling to one thread do)
// makes a pool. Regression test: its workers inherited the mask, so raise(SIGSEGV) did nothing
// and the task died of the abort() after it (WorkerLost signal 6) instead of signal 11.
TEST(InheritedState, CrashInAWorkerOfAPoolMadeOnAThreadThatBlocksSignals) {
  std::string mask;
  std::string crashed;
  on_thread(0, [&] {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    Pool pool(PoolOptions{.workers = 1});
    mask = pool.call(blocked_signals);
    crashed = Report::describe([&] { return pool.call(crash); });
  });
  EXPECT_EQ(mask, "SigBlk:\t0000000000000000");
  EXPECT_EQ(crashed, "WorkerLost signal=11 exit_code=-1");
}

/// Uses `bytes` of stack, touching it page by page from the top down (so that running out of
/// stack hits the guard page, rather than jumping over it); returns the pages touched.
__attribute__((noinline)) int use_stack(std::size_t bytes) {
  constexpr std::size_t page = 4096;
  char* top = static_cast<char*>(__builtin_alloca(bytes));
  int pages = 0;
  for (std::size_t offset = bytes; offset >= page; offset -= page) {
    static_cast<volatile char*>(top)[offset - 1] = 1;
    ++pages;
  }
  return pages;
}

// A thread with a small stack (256 KiB) makes a pool. Regression test: a fork runs on the
// forking thread's stack, so the fork server and every worker had 256 KiB too, and a task
// using 4 MiB of stack (well within the usual 8 MiB) died of SIGSEGV.
TEST(InheritedState, WorkersOfAPoolMadeOnASmallStackThreadHaveANormalStack) {
  rlimit limit{};
  getrlimit(RLIMIT_STACK, &limit);
  constexpr std::size_t used = std::size_t{4} << 20;
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < 2 * used) {
    GTEST_SKIP() << "RLIMIT_STACK is " << limit.rlim_cur << " bytes: too small for the test";
  }
  std::string outcome;
  on_thread(std::size_t{256} << 10, [&] {
    Pool pool(PoolOptions{.workers = 1});
    outcome = Report::describe([&] { return pool.call(use_stack, used); });
  });
  EXPECT_EQ(outcome, "value " + std::to_string(used / 4096));
}

/// What this process's standard input is ("/dev/null", "pipe:[...]"...), and what a read() of
/// up to 64 bytes from it gives: "eof", or the bytes read.
std::string stdin_and_read() {
  char link[128] = {};
  if (readlink("/proc/self/fd/0", link, sizeof link - 1) < 0) std::strcpy(link, "?");
  char bytes[64];
  const ssize_t n = read(STDIN_FILENO, bytes, sizeof bytes);
  const std::string got = n < 0 ? "error" : n == 0 ? "eof" : std::string(bytes, std::size_t(n));
  return std::string(link) + " " + got;
}

/// Makes a pipe this process's standard input while it lives, with `text` in it, written end
/// closed; gives the previous one back after.
class StdinFrom {
 public:
  explicit StdinFrom(const std::string& text) : saved_(dup(STDIN_FILENO)) {
    int fds[2] = {-1, -1};
    if (pipe(fds) != 0) {
      ADD_FAILURE() << "pipe failed";
      return;
    }
    EXPECT_TRUE(multicore_test::write_all(fds[1], text.data(), text.size()));
    ::close(fds[1]);
    dup2(fds[0], STDIN_FILENO);
    ::close(fds[0]);
  }
  ~StdinFrom() {
    dup2(saved_, STDIN_FILENO);
    ::close(saved_);
  }
  StdinFrom(const StdinFrom&) = delete;
  StdinFrom& operator=(const StdinFrom&) = delete;

 private:
  int saved_;
};

// A worker's standard input is /dev/null. Regression test: workers inherited the application's,
// so a task that read it took input the application was waiting for (here, all of it), and from
// a terminal it was stopped (SIGTTIN: a worker leads a background process group) and its future
// never became ready.
TEST(InheritedState, WorkersReadEndOfFileFromStdinAndLeaveTheApplicationsInput) {
  const StdinFrom input("the application's input\n");
  Pool pool(PoolOptions{.workers = 1});
  EXPECT_EQ(pool.call(stdin_and_read), "/dev/null eof");
  const std::string here = stdin_and_read();
  EXPECT_TRUE(here.ends_with(" the application's input\n")) << here;
}

/// True when the caller runs on the stack its process started with ("[stack]" in its maps).
bool on_initial_stack() {
  const auto here = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
  std::istringstream maps(multicore_test::slurp("/proc/self/maps"));
  for (std::string line; std::getline(maps, line);) {
    if (line.size() < 7 || line.compare(line.size() - 7, 7, "[stack]") != 0) continue;
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR, &begin, &end) != 2) return false;
    return begin <= here && here < end;
  }
  return false;
}

// The common path is unchanged: a pool made on the main thread forks its fork server right
// there, so workers run on the stack the program started with, which grows on demand.
TEST(InheritedState, WorkersOfAPoolMadeOnTheMainThreadRunOnTheInitialStack) {
  ASSERT_TRUE(on_initial_stack()) << "this test must run on the main thread";
  Pool pool(PoolOptions{.workers = 1});
  EXPECT_TRUE(pool.call(on_initial_stack));
}

/// What a worker got from the process and the thread that made its pool.
std::string worker_state() {
  char cwd[4096] = "?";
  if (getcwd(cwd, sizeof cwd) == nullptr) std::strcpy(cwd, "?");
  const mode_t mask = umask(0);
  umask(mask);
  const char* setting = std::getenv("MULTICORE_TEST_SETTING");
  rlimit files{};
  getrlimit(RLIMIT_NOFILE, &files);
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  sched_getaffinity(0, sizeof cpus, &cpus);
  std::string name = multicore_test::slurp("/proc/self/comm");
  if (!name.empty() && name.back() == '\n') name.pop_back();
  std::ostringstream out;
  out << "cwd=" << cwd << " umask=" << std::oct << mask << std::dec
      << " setting=" << (setting != nullptr ? setting : "-") << " files=" << files.rlim_cur
      << " cpus=" << CPU_COUNT(&cpus) << " nice=" << getpriority(PRIO_PROCESS, 0)
      << " name=" << name << " " << blocked_signals();
  return out.str();
}

class WhatWorkersInherit : public ::testing::TestWithParam<std::size_t> {};

INSTANTIATE_TEST_SUITE_P(InheritedState, WhatWorkersInherit,
                         ::testing::Values(std::size_t{0}, std::size_t{256} << 10),
                         [](const auto& p) {
                           return p.param == 0 ? std::string("DefaultStack")
                                               : std::string("SmallStack");
                         });

// Checks what README.md ("Fork semantics") says workers inherit: from the process as it was when
// the pool was made (replacements too: each task here runs in a fresh worker), and from the thread
// that made it, also when that thread's stack is small and the fork is made from a helper thread.
TEST_P(WhatWorkersInherit, TheProcessAsItWasAndTheThreadThatMadeThePool) {
  static std::size_t stack_bytes;
  stack_bytes = GetParam();
  const AppResult app = run_app([](const Report& report) {
    if (chdir("/") != 0) return report.line("chdir failed");
    umask(027);
    setenv("MULTICORE_TEST_SETTING", "before", 1);
    rlimit files{};
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = 200;
    setrlimit(RLIMIT_NOFILE, &files);
    const int nice = getpriority(PRIO_PROCESS, 0) + 2;
    std::unique_ptr<Pool> pool;
    on_thread(stack_bytes, [&] {
      cpu_set_t first;
      sched_getaffinity(0, sizeof first, &first);
      for (std::size_t cpu = 0, kept = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (CPU_ISSET(cpu, &first) && kept++ > 0) CPU_CLR(cpu, &first);
      }
      sched_setaffinity(0, sizeof first, &first);                    // this thread only
      setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice);  // this thread only
      pthread_setname_np(pthread_self(), "pool-maker");
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, SIGUSR1);
      pthread_sigmask(SIG_BLOCK, &one, nullptr);
      pool = std::make_unique<Pool>(PoolOptions{.workers = 1, .max_tasks_per_worker = 1});
    });
    report.line("first: " + pool->call(worker_state));
    // Changed afterwards: replacements are forked by the fork server, which kept the old ones.
    if (chdir("/tmp") != 0) return report.line("chdir failed");
    umask(0);
    setenv("MULTICORE_TEST_SETTING", "after", 1);
    files.rlim_cur = 100;
    setrlimit(RLIMIT_NOFILE, &files);
    report.line("replacement: " + pool->call(worker_state));
    report.line("nice: " + std::to_string(nice));
  });
  const auto lines = multicore_test::lines_of(app.report);
  ASSERT_EQ(lines.size(), 3u) << app.report;
  const std::string expected = "cwd=/ umask=27 setting=before files=200 cpus=1 " +
                               lines[2].substr(std::string("nice: ").size()).insert(0, "nice=") +
                               " name=pool-maker SigBlk:\t0000000000000000";
  EXPECT_EQ(lines[0], "first: " + expected);
  EXPECT_EQ(lines[1], "replacement: " + expected);
}

// ----- Copies of a worker that user code forks -------------------------------------------------

int square(int x) { return x * x; }

/// No process is left once the pool is gone (the test process is a subreaper: orphans land
/// here). Kills what is left, so one failure does not spill into the next test.
void expect_no_process_left() {
  EXPECT_TRUE(multicore_test::no_children_within(std::chrono::seconds(3)))
      << "left: " << testing::PrintToString(multicore_test::child_pids());
  multicore_test::kill_children();
}

/// How a process forked now ends: its exit status, or -1.
template <class Child>
int exit_status_of_fork(Child&& child) {
  const pid_t pid = fork();
  if (pid == 0) _exit(child());
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

// What tells a worker from a copy of it, without getpid(): a copy (and its copies) says so; a
// copy that claims the mark is the one in turn.
TEST(ForkMark, TellsTheProcessThatClaimedItFromItsCopies) {
  multicore::detail::ForkMark& mark = multicore::detail::ForkMark::instance();
  mark.claim();
  EXPECT_FALSE(mark.in_a_copy());
  EXPECT_EQ(exit_status_of_fork([&] { return mark.in_a_copy() ? 10 : 11; }), 10);
  EXPECT_EQ(exit_status_of_fork([&] {
              if (exit_status_of_fork([&] { return mark.in_a_copy() ? 10 : 11; }) != 10) return 1;
              mark.claim();
              if (mark.in_a_copy()) return 2;
              return exit_status_of_fork([&] { return mark.in_a_copy() ? 10 : 11; });
            }),
            10);
  EXPECT_FALSE(mark.in_a_copy());
}

// Regression test: both processes of a fork() in a task returned, and the copy carried on as a
// second worker on the same rings (it answered too: "corrupt or truncated answer", and it
// outlived the pool). A copy that comes back into the worker's loop now exits at once.
int fork_and_return(int x) {
  fork();
  return x;
}

TEST(ForkedByATask, CopyThatReturnsFromTheTaskIsNoWorker) {
  {
    Pool pool(PoolOptions{.workers = 2});
    EXPECT_EQ(pool.call(fork_and_return, 1), 1);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
  }
  expect_no_process_left();
}

// Regression test: the copy made by a fork in on_worker_start returned into the worker's loop.
TEST(ForkedByATask, CopyThatReturnsFromOnWorkerStartIsNoWorker) {
  {
    Pool pool(PoolOptions{.workers = 1, .on_worker_start = [] { fork(); }});
    for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
  }
  expect_no_process_left();
}

// Regression test: forked from an item run by a threads_per_worker helper thread, the copy's
// only thread was that helper, which waited for the team's next chunk for ever.
int fork_in_item(int x) {
  if (x == 3) fork();
  return x;
}

TEST(ForkedByATask, CopyMadeInAThreadsPerWorkerItemEnds) {
  {
    Pool pool(PoolOptions{.workers = 2});
    int sum = 0;
    for (int x : pool.map(fork_in_item, multicore_test::Numbers(0, 64),
                          {.chunk_size = 8, .threads_per_worker = 4})) {
      sum += x;
    }
    EXPECT_EQ(sum, 63 * 64 / 2);
  }
  expect_no_process_left();
}

// Regression test: in the classic daemon dance the worker exits, and its child returned from
// the task and wrote the answer (5) into the worker's rings, then served the slot's requests
// alongside the replacement and outlived the pool. The task's worker exited: WorkerLost.
int daemonise(int x) {
  if (fork() > 0) _exit(0);
  setsid();
  return x;
}

TEST(ForkedByATask, DaemonisingTaskIsAWorkerLostAndLeavesNoProcess) {
  {
    Pool pool(PoolOptions{.workers = 2});
    EXPECT_TRUE(multicore_test::thrown_exactly<multicore::WorkerLost>(
        [&] { (void)pool.call(daemonise, 5); }));
    for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
  }
  expect_no_process_left();
}

// Regression test: a process a task started and left running (in the worker's process group,
// the pool's shared memory mapped) outlived the pool. The fork server kills what is left of
// the pool's processes when it ends.
int start_helper_process(int x) {
  if (fork() == 0) {
    for (;;) pause();
  }
  return x;
}

TEST(ForkedByATask, HelperProcessEndsWithThePool) {
  {
    Pool pool(PoolOptions{.workers = 2});
    EXPECT_EQ(pool.call(start_helper_process, 3), 3);
  }
  expect_no_process_left();
}

// The same for one that left the worker's process group (setsid()) and whose worker ended
// first: adopted by the fork server, it is killed too.
int start_session_leader(int x) {
  if (fork() == 0) {
    setsid();
    for (;;) pause();
  }
  return x;
}

TEST(ForkedByATask, ProcessInASessionOfItsOwnEndsWithThePool) {
  {
    Pool pool(PoolOptions{.workers = 1, .max_tasks_per_worker = 1});
    EXPECT_EQ(pool.call(start_session_leader, 3), 3);
    EXPECT_EQ(pool.call(square, 3), 9);  // on the replacement: the first worker has ended
  }
  expect_no_process_left();
}

// A child the application forks while another thread is in call() uses the pool it inherited.
// Its copy has no collector thread and numbers its jobs like the parent's: it was seen sending
// requests into the parent's rings and reading the parent's answers (returning 0, the parent's
// square(0)) or hanging. It throws Error, as a pool used inside a worker does, and leaves the
// parent's pool alone. (Regression guard: passed already when it was moved here from the
// DISABLED_ scenarios, fixed by the snapshot check in Pool::core().)
TEST(ForkedByTheApplication, ChildCannotUseThePoolWhileAnotherThreadCalls) {
  const auto end = multicore_test::in_child(
      [](int report) {
        Pool pool(PoolOptions{.workers = 2});
        std::atomic<bool> stop{false};
        std::atomic<int> calls{0};
        std::thread caller([&] {
          for (int i = 0; !stop; ++i) {
            (void)pool.call(square, i % 100);
            ++calls;
          }
        });
        while (calls < 10) std::this_thread::yield();  // the caller is in its loop of calls
        const pid_t child = fork();
        if (child == 0) {
          alarm(5);  // a hang ends the child (SIGALRM), reported below
          try {
            multicore_test::say(report,
                                "child: call returned " + std::to_string(pool.call(square, 6)));
          } catch (const multicore::Error& e) {
            if (typeid(e) == typeid(multicore::Error)) _exit(0);
            multicore_test::say(report, std::string("child: wrong error: ") + e.what());
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
        if (bad != 0)
          multicore_test::say(report, "parent: " + std::to_string(bad) + " wrong results");
        if (!WIFEXITED(status)) multicore_test::say(report, "child: hung in call()");
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 && bad == 0 ? 0 : 1;
      },
      std::chrono::seconds(30));
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

}  // namespace
