// SPDX-License-Identifier: MIT
// Pool lifecycle under failure: fork failures (making the pool and replacing a worker), parent
// death, terminate()/destruction with unresponsive workers, and a fork server killed from outside.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <future>
#include <iostream>
#include <memory>
#include <multicore/multicore.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/app.hpp"
#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"

namespace {

using multicore::Pool;
using multicore::PoolClosed;
using multicore::PoolOptions;
using multicore::SystemError;
using multicore::WorkerLost;
using multicore_test::AppResult;
using multicore_test::error_of;
using multicore_test::lines_of;
using multicore_test::Pipe;
using multicore_test::Report;
using multicore_test::run_app;
using multicore_test::thrown_exactly;
using namespace std::chrono_literals;

pid_t own_pid() { return getpid(); }

/// The unprivileged user a fork-failure application runs as (called in the application). Not
/// `nobody` itself: the limit counts every process of the user, and tests running at the same
/// time (ctest -j) would eat into each other's allowance. A uid derived from the application's
/// own pid (no passwd entry is needed) keeps them apart; whatever processes that user already
/// has are counted in (tasks_of_uid).
uid_t unprivileged_uid() { return 50000 + static_cast<uid_t>(getpid() % 10000); }

/// Threads (which RLIMIT_NPROC counts, as processes) whose real uid is `uid`.
int tasks_of_uid(uid_t uid) {
  int count = 0;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/proc"), closedir);
  while (const dirent* e = readdir(dir.get())) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::istringstream status(multicore_test::slurp(std::string("/proc/") + e->d_name + "/status"));
    std::string line;
    long real_uid = -1;
    int threads = 0;
    while (std::getline(status, line)) {
      if (line.rfind("Uid:", 0) == 0) real_uid = std::strtol(line.c_str() + 4, nullptr, 10);
      if (line.rfind("Threads:", 0) == 0) threads = std::atoi(line.c_str() + 8);
    }
    if (real_uid == static_cast<long>(uid)) count += threads;
  }
  return count;
}

/// In an application: become an unprivileged user (RLIMIT_NPROC does not bind root, nor a
/// process with CAP_SYS_RESOURCE or CAP_SYS_ADMIN, which setuid() drops) and allow `extra`
/// more processes or threads of that user than exist now (this one included), with a hard
/// limit `headroom` above that. Reports "skip: ..." and returns false if that is not permitted.
bool become_unprivileged_with_process_limit(const Report& report, int extra, int headroom = 0) {
  const uid_t uid = unprivileged_uid();
  if (setgroups(0, nullptr) != 0 || setgid(uid) != 0 || setuid(uid) != 0) {
    report.line(std::string("skip: cannot drop root privileges: ") + std::strerror(errno));
    return false;
  }
  const auto soft = static_cast<rlim_t>(tasks_of_uid(uid) + extra);
  const rlimit limit{soft, soft + static_cast<rlim_t>(headroom)};
  if (setrlimit(RLIMIT_NPROC, &limit) != 0) {
    report.line(std::string("skip: setrlimit: ") + std::strerror(errno));
    return false;
  }
  return true;
}

/// A "skip: " line from the application becomes GTEST_SKIP.
#define SKIP_IF_APP_SKIPPED(result)                                               \
  do {                                                                            \
    if ((result).report.rfind("skip: ", 0) == 0) GTEST_SKIP() << (result).report; \
  } while (false)

// ----- (1) Fork failure while making a pool ----------------------------------------------------

struct ForkLimitCase {
  const char* name;
  // Processes or threads the application may start: the fork server comes first, then the
  // pool's output reader thread (see ShmTransport's constructor), so 0 = not even the fork
  // server, and 2 = the fork server and the reader but no worker.
  int extra;
};

void PrintTo(const ForkLimitCase& c, std::ostream* os) { *os << c.name; }

class ForkFailure : public ::testing::TestWithParam<ForkLimitCase> {};

INSTANTIATE_TEST_SUITE_P(Lifecycle, ForkFailure,
                         ::testing::Values(ForkLimitCase{"NoForkServer", 0},
                                           ForkLimitCase{"NoWorker", 2},
                                           ForkLimitCase{"OneWorkerOfThree", 3}),
                         [](const auto& p) { return std::string(p.param.name); });

// The Pool constructor throws SystemError(EAGAIN) naming fork, and leaves no process behind:
// not in the application, and no orphan (which, this process being a subreaper, would be
// reparented here).
TEST_P(ForkFailure, WhileMakingThePoolThrowsSystemErrorAndLeavesNothing) {
  const int extra = GetParam().extra;
  const AppResult app = run_app([extra](const Report& report) {
    if (!become_unprivileged_with_process_limit(report, extra)) return;
    report.outcome("construct", [] {
      Pool pool(PoolOptions{.workers = 3});
      return pool.size();
    });
    report.line("children: " + std::to_string(multicore_test::live_children_of(getpid()).size()));
  });
  SKIP_IF_APP_SKIPPED(app);
  ASSERT_TRUE(WIFEXITED(app.status) && WEXITSTATUS(app.status) == 0) << app.report;
  const auto lines = lines_of(app.report);
  ASSERT_EQ(lines.size(), 2u) << app.report;
  EXPECT_EQ(lines[0], "construct: SystemError code=" + std::to_string(EAGAIN) +
                          " what=multicore: fork failed: " + std::strerror(EAGAIN));
  EXPECT_EQ(lines[1], "children: 0");
  EXPECT_TRUE(multicore_test::child_pids().empty()) << "an orphaned worker was reparented here";
}

// ----- (2) Fork failure while replacing a worker -----------------------------------------------

/// An application whose fork server cannot fork one more worker: the process limit is set so
/// that the pool just fits (the application's thread, the collector thread, the fork server
/// and the workers), then the application raises its own soft limit (the fork server keeps the
/// one it was born with) and forks a "hog" that takes the slot a dead worker frees.
class Hog {
 public:
  Hog() {
    rlimit limit{};
    getrlimit(RLIMIT_NPROC, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NPROC, &limit);
    pid_ = fork();
    if (pid_ == 0) {
      gate_.close_write();  // or it would never see end-of-file
      char byte = 0;
      while (read(gate_.read_fd(), &byte, 1) < 0 && errno == EINTR) {
      }
      _exit(0);
    }
  }
  bool started() const { return pid_ > 0; }
  /// Ends the hog and reaps it: only then does the kernel count one process fewer.
  void release() {
    if (pid_ <= 0) return;
    gate_.close_write();
    multicore_test::reap(pid_);
    pid_ = 0;
  }
  ~Hog() { release(); }

 private:
  Pipe gate_;
  pid_t pid_ = 0;
};

int crash() { multicore_test::segfault_by_raise(); }

TEST(Lifecycle, ForkFailureDuringAReplacementFailsTheQueuedTasksThenRecovers) {
  const AppResult app = run_app([](const Report& report) {
    constexpr unsigned workers = 1;
    // The pool's tasks: its output reader thread, the fork server, the workers, the collector.
    if (!become_unprivileged_with_process_limit(report, 3 + workers, 8)) return;
    Pool pool(PoolOptions{.workers = workers});
    const pid_t first = pool.submit(own_pid).get();
    Hog hog;
    if (!hog.started()) return report.line("hog: fork failed");
    auto crashed = pool.submit(crash);
    std::vector<std::future<int>> queued;
    for (int i = 0; i < 3; ++i) queued.push_back(pool.submit([](int x) { return x + 1; }, i));
    report.outcome("crashed", [&] { return crashed.get(); });
    for (std::size_t i = 0; i < queued.size(); ++i) {
      report.outcome("queued " + std::to_string(i), [&] { return queued[i].get(); });
    }
    hog.release();  // room for one process again: the next retry brings the worker back
    // Until that retry (after a backoff), a pool with no worker fails new tasks at once with
    // the fork error, as the queued ones: submit again until the replacement is there (bounded).
    report.outcome("after", [&] {
      for (int attempt = 1;; ++attempt) {
        try {
          return pool.submit([](int x) { return x * 2; }, 21).get();
        } catch (const multicore::SystemError&) {
          if (attempt == 500) throw;
          usleep(10'000);
        }
      }
    });
    report.line(std::string("replaced: ") + (pool.submit(own_pid).get() != first ? "yes" : "no"));
    pool.shutdown();
    report.line("shut down");
  });
  SKIP_IF_APP_SKIPPED(app);
  EXPECT_TRUE(WIFEXITED(app.status) && WEXITSTATUS(app.status) == 0) << app.report;
  const std::string fork_failed = "SystemError code=" + std::to_string(EAGAIN) +
                                  " what=multicore: fork failed: " + std::strerror(EAGAIN);
  EXPECT_EQ(app.report,
            "crashed: WorkerLost signal=11 exit_code=-1\n"
            "queued 0: " +
                fork_failed + "\n" + "queued 1: " + fork_failed + "\n" +
                "queued 2: " + fork_failed + "\n" +
                "after: value 42\n"
                "replaced: yes\n"
                "shut down\n");
  EXPECT_TRUE(multicore_test::child_pids().empty());
}

TEST(Lifecycle, ForkFailureDuringAReplacementSendsQueuedTasksToTheOtherWorker) {
  const AppResult app = run_app([](const Report& report) {
    constexpr unsigned workers = 2;
    // The pool's tasks: its output reader thread, the fork server, the workers, the collector.
    if (!become_unprivileged_with_process_limit(report, 3 + workers, 8)) return;
    Pool pool(PoolOptions{.workers = workers});
    Hog hog;
    if (!hog.started()) return report.line("hog: fork failed");
    auto crashed = pool.submit(crash);
    std::vector<std::future<int>> queued;
    for (int i = 0; i < 8; ++i) queued.push_back(pool.submit([](int x) { return x + 1; }, i));
    report.outcome("crashed", [&] { return crashed.get(); });
    for (std::size_t i = 0; i < queued.size(); ++i) {
      report.outcome("queued " + std::to_string(i), [&] { return queued[i].get(); });
    }
    hog.release();
    pool.shutdown();
    report.line("shut down");
  });
  SKIP_IF_APP_SKIPPED(app);
  EXPECT_TRUE(WIFEXITED(app.status) && WEXITSTATUS(app.status) == 0) << app.report;
  std::string expected = "crashed: WorkerLost signal=11 exit_code=-1\n";
  for (int i = 0; i < 8; ++i) {
    expected += "queued " + std::to_string(i) + ": value " + std::to_string(i + 1) + "\n";
  }
  expected += "shut down\n";
  EXPECT_EQ(app.report, expected);
  EXPECT_TRUE(multicore_test::child_pids().empty());
}

// A replacement whose on_worker_start throws is a failed start too: with no other worker, the
// queued tasks fail with that error instead of waiting forever.
TEST(Lifecycle, ReplacementWhoseOnWorkerStartThrowsFailsTheQueuedTasks) {
  // Shared with every worker: how many have started.
  void* shared = mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(shared, MAP_FAILED);
  auto* starts = new (shared) std::atomic<int>(0);
  {
    Pool pool(PoolOptions{.workers = 1, .on_worker_start = [starts] {
                            if (starts->fetch_add(1) >= 1) throw std::runtime_error("no more");
                          }});
    auto crashed = pool.submit(crash);
    std::vector<std::future<int>> queued;
    for (int i = 0; i < 3; ++i) queued.push_back(pool.submit([](int x) { return x; }, i));
    const auto lost = error_of<WorkerLost>(crashed);
    ASSERT_TRUE(lost);
    EXPECT_EQ(lost->signal(), SIGSEGV);
    for (auto& f : queued) {
      const auto error = error_of<multicore::Error>(f);
      ASSERT_TRUE(error);
      EXPECT_EQ(std::string(error->what()),
                "multicore: on_worker_start threw in a replacement worker: no more");
    }
  }
  munmap(shared, sizeof(std::atomic<int>));
}

// The same when a replacement dies in on_worker_start instead of throwing (it aborts: the
// resource it needs is gone). It never becomes ready, so it can never run anything: the queued
// tasks must fail rather than wait for ever, and the pool must retry with backoff rather than
// fork replacements in a tight loop.
TEST(Lifecycle, ReplacementThatDiesInOnWorkerStartFailsTheQueuedTasks) {
  void* shared = mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(shared, MAP_FAILED);
  auto* starts = new (shared) std::atomic<int>(0);
  {
    Pool pool(PoolOptions{.workers = 1, .on_worker_start = [starts] {
                            if (starts->fetch_add(1) >= 1) {
                              multicore_test::no_core_dump();
                              std::abort();
                            }
                          }});
    auto crashed = pool.submit(crash);
    std::vector<std::future<int>> queued;
    for (int i = 0; i < 3; ++i) queued.push_back(pool.submit([](int x) { return x; }, i));
    EXPECT_TRUE(error_of<WorkerLost>(crashed));
    // Liveness bound: a task nobody can run must fail, not wait for ever.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    for (auto& f : queued) {
      if (f.wait_until(deadline) != std::future_status::ready) {
        ADD_FAILURE() << "a queued task still waits, 10 s after its worker died";
        continue;
      }
      EXPECT_TRUE(thrown_exactly<multicore::Error>([&] { (void)f.get(); }));
    }
    const int starts_so_far = starts->load();
    // No assertion may leave this scope before here: with tasks that never resolve, only
    // terminate() (not the destructor's graceful shutdown) is bounded.
    pool.terminate();
    // A loose bound on a count, not a time: with backoff this is a handful of starts.
    EXPECT_LT(starts_so_far, 200) << "replacements were forked in a tight loop, without backoff";
  }
  munmap(shared, sizeof(std::atomic<int>));
}

// The same when a replacement hangs in on_worker_start. Regression test: the pool waited for it
// for ever, so the queued tasks never ran nor failed, task_timeout or not. With a task_timeout,
// a replacement whose on_worker_start runs longer than task_timeout plus twice what the first
// workers' start took is killed, as a failed start: backoff, and with no worker left the
// queued tasks fail.
TEST(Lifecycle, ReplacementThatHangsInOnWorkerStartFailsTheQueuedTasks) {
  void* shared = mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(shared, MAP_FAILED);
  auto* starts = new (shared) std::atomic<int>(0);
  {
    Pool pool(PoolOptions{.workers = 1,
                          .on_worker_start =
                              [starts] {
                                if (starts->fetch_add(1) >= 1) multicore_test::hang_forever();
                              },
                          .task_timeout = 300ms});
    auto crashed = pool.submit(crash);
    auto queued = pool.submit([](int x) { return x; }, 2);
    EXPECT_TRUE(error_of<WorkerLost>(crashed));
    if (queued.wait_for(10s) != std::future_status::ready) {
      ADD_FAILURE() << "the queued task waited 10 s with task_timeout = 300 ms";
    } else {
      const auto error = error_of<multicore::Error>(queued);
      ASSERT_TRUE(error);
      EXPECT_TRUE(
          std::string(error->what()).starts_with("multicore: on_worker_start ran longer than "))
          << error->what();
    }
    pool.terminate();  // bounded, whatever happened
  }
  munmap(shared, sizeof(std::atomic<int>));
}

// ----- (3) Parent death ------------------------------------------------------------------------

// The application makes a pool of two workers, keeps one of them busy, tells us the pids of
// the fork server and both workers, and is SIGKILLed. All three must exit promptly.
TEST(Lifecycle, WorkersAndForkServerExitWhenTheParentIsKilled) {
  Pipe report;
  Pipe busy_pid;
  std::fflush(nullptr);
  const pid_t app = fork();
  ASSERT_GE(app, 0);
  if (app == 0) {
    report.close_read();
    try {
      Pool pool(PoolOptions{.workers = 2});
      auto busy = pool.submit(
          [](int tell) -> int {
            const pid_t self = getpid();
            multicore_test::write_all(tell, &self, sizeof self);
            multicore_test::hang_forever();
          },
          busy_pid.write_fd());
      pid_t pids[3] = {};
      if (!multicore_test::read_exact(busy_pid.read_fd(), &pids[1], sizeof pids[1])) _exit(1);
      pids[2] = pool.submit(own_pid).get();  // the least-loaded worker: the idle one
      const auto stat = multicore_test::proc_stat(pids[2]);
      pids[0] = stat ? stat->ppid : 0;
      multicore_test::write_all(report.write_fd(), pids, sizeof pids);
      multicore_test::hang_forever();
    } catch (...) {
      _exit(1);
    }
  }
  report.close_write();
  // If an assertion below gives up early, the application must not be left hanging.
  struct KillOnExit {
    pid_t pid;
    ~KillOnExit() {
      if (pid > 0 && kill(pid, SIGKILL) == 0) multicore_test::reap(pid);
    }
  } guard{app};
  pid_t pids[3] = {};
  ASSERT_TRUE(multicore_test::read_exact(report.read_fd(), pids, sizeof pids));
  const pid_t fork_server = pids[0];
  ASSERT_NE(pids[1], pids[2]);
  ASSERT_TRUE(multicore_test::proc_stat(fork_server));
  EXPECT_EQ(multicore_test::proc_stat(fork_server)->ppid, app);
  EXPECT_EQ(multicore_test::proc_stat(pids[1])->ppid, fork_server);

  // pidfds first, while the pids cannot have been reused.
  int pidfds[3];
  for (int i = 0; i < 3; ++i) {
    pidfds[i] = multicore_test::pidfd_open(pids[i]);
    ASSERT_GE(pidfds[i], 0) << std::strerror(errno);
  }
  ASSERT_EQ(kill(app, SIGKILL), 0);
  const auto killed_at = std::chrono::steady_clock::now();
  const int app_status = multicore_test::reap(app);
  guard.pid = 0;
  EXPECT_TRUE(WIFSIGNALED(app_status) && WTERMSIG(app_status) == SIGKILL);

  // Liveness bound, not a performance assertion: the issue promises "within a second"; the
  // measured time is printed and recorded below.
  const char* names[3] = {"fork server", "busy worker", "idle worker"};
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(multicore_test::pidfd_exited_within(pidfds[i], 10s))
        << "the " << names[i] << " (pid " << pids[i] << ") outlived its application";
  }
  const auto took = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::steady_clock::now() - killed_at);
  for (int fd : pidfds) close(fd);
  // This process is a subreaper: the fork server was reparented here when the application
  // died. It kills and reaps its workers before it exits; any worker that outlived it would
  // have been reparented here too, and is reaped the same way.
  const int status = multicore_test::reap(fork_server);
  EXPECT_NE(status, -1) << "the fork server was not reparented here";
  for (int i = 1; i < 3; ++i) {
    if (multicore_test::reap(pids[i]) == -1) {
      EXPECT_FALSE(multicore_test::proc_stat(pids[i])) << names[i] << " left a zombie behind";
    }
  }
  std::cout << "[   INFO   ] fork server and workers gone " << took.count()
            << " us after the application was killed\n";
  RecordProperty("parent_death_cleanup_us", std::to_string(took.count()));
}

/// The sockets `pid` has open, as "socket:[inode]" strings.
std::set<std::string> sockets_of(pid_t pid) {
  std::set<std::string> sockets;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (!d) return sockets;
  while (const dirent* e = readdir(d.get())) {
    char target[256] = {};
    const std::string link = dir + "/" + e->d_name;
    const ssize_t n = readlink(link.c_str(), target, sizeof target - 1);
    if (n > 0 && std::string(target, static_cast<std::size_t>(n)).rfind("socket:", 0) == 0) {
      sockets.insert(std::string(target, static_cast<std::size_t>(n)));
    }
  }
  return sockets;
}

// The fork server learns that the parent is gone from end-of-file on its command socket
// ("the socket is also the fork server's lifeline"). That only happens if no other process
// holds the parent's end: the fork server and the workers must close their inherited copies.
// (Otherwise parent death is noticed only by the fork server's 250 ms getppid() poll.)
TEST(Lifecycle, OnlyTheParentHoldsItsEndOfTheForkServerLifeline) {
  const std::set<std::string> before = sockets_of(getpid());
  Pool pool(PoolOptions{.workers = 2});
  std::set<std::string> parent_end;
  for (const std::string& s : sockets_of(getpid())) {
    if (before.count(s) == 0) parent_end.insert(s);
  }
  ASSERT_EQ(parent_end.size(), 1u) << "expected one new socket in the parent: its command end";
  const std::string& lifeline = *parent_end.begin();
  const std::vector<pid_t> children = multicore_test::child_pids();
  ASSERT_EQ(children.size(), 1u);
  const pid_t fork_server = children[0];
  EXPECT_EQ(sockets_of(fork_server).count(lifeline), 0u)
      << "the fork server holds the parent's end of its own lifeline (" << lifeline
      << "), so it never sees end-of-file when the parent dies";
  for (pid_t worker : multicore_test::live_children_of(fork_server)) {
    EXPECT_EQ(sockets_of(worker).count(lifeline), 0u)
        << "worker " << worker << " holds the parent's end of the lifeline (" << lifeline << ")";
  }
}

// ----- (4) terminate() and the destructor with unresponsive workers ----------------------------

TEST(Lifecycle, TerminateWithABusyWorkerThatIgnoresSigterm) {
  Pipe started;
  Pool pool(PoolOptions{.workers = 1});
  auto stubborn = pool.submit(
      [](int tell) -> int {
        std::signal(SIGTERM, SIG_IGN);
        const pid_t self = getpid();
        multicore_test::write_all(tell, &self, sizeof self);
        multicore_test::hang_forever();
      },
      started.write_fd());
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(pool.submit([](int x) { return x; }, i));
  const pid_t worker = multicore_test::read_value<pid_t>(started.read_fd());
  pool.terminate();
  EXPECT_TRUE(error_of<PoolClosed>(stubborn));
  for (auto& f : queued) EXPECT_TRUE(error_of<PoolClosed>(f));
  EXPECT_TRUE(thrown_exactly<PoolClosed>([&] { (void)pool.submit(own_pid); }));
  EXPECT_FALSE(multicore_test::running(worker));
}

TEST(Lifecycle, DestructorWithIdleWorkersThatIgnoreSigterm) {
  std::set<pid_t> workers;
  {
    Pool pool(PoolOptions{.workers = 2});
    std::vector<std::future<pid_t>> futures;
    for (int i = 0; i < 8; ++i) {
      futures.push_back(pool.submit([] {
        std::signal(SIGTERM, SIG_IGN);
        return getpid();
      }));
    }
    for (auto& f : futures) workers.insert(f.get());
  }
  for (pid_t pid : workers) EXPECT_FALSE(multicore_test::running(pid));
}

std::vector<pid_t> workers_of_only_pool() {
  const std::vector<pid_t> children = multicore_test::child_pids();
  EXPECT_EQ(children.size(), 1u) << "expected only the fork server as our child";
  return children.empty() ? std::vector<pid_t>{} : multicore_test::live_children_of(children[0]);
}

TEST(Lifecycle, TerminateWithStoppedIdleWorkers) {
  Pool pool(PoolOptions{.workers = 2});
  const std::vector<pid_t> workers = workers_of_only_pool();
  ASSERT_EQ(workers.size(), 2u);
  for (pid_t pid : workers) ASSERT_EQ(kill(pid, SIGSTOP), 0);
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 5; ++i) futures.push_back(pool.submit([](int x) { return x; }, i));
  pool.terminate();
  for (auto& f : futures) EXPECT_TRUE(error_of<PoolClosed>(f));
  for (pid_t pid : workers) EXPECT_FALSE(multicore_test::running(pid));
}

TEST(Lifecycle, ShutdownWithAStoppedIdleWorker) {
  Pool pool(PoolOptions{.workers = 2});
  EXPECT_EQ(pool.submit([](int x) { return x + 1; }, 1).get(), 2);
  const std::vector<pid_t> workers = workers_of_only_pool();
  ASSERT_EQ(workers.size(), 2u);
  ASSERT_EQ(kill(workers[0], SIGSTOP), 0);
  pool.shutdown();  // graceful, with nothing left to do: must not wait for the stopped worker
  for (pid_t pid : workers) EXPECT_FALSE(multicore_test::running(pid));
  EXPECT_TRUE(thrown_exactly<PoolClosed>([&] { (void)pool.submit(own_pid); }));
}

TEST(Lifecycle, DestructorWithAStoppedIdleWorker) {
  std::vector<pid_t> workers;
  {
    Pool pool(PoolOptions{.workers = 2});
    workers = workers_of_only_pool();
    ASSERT_EQ(workers.size(), 2u);
    ASSERT_EQ(kill(workers[1], SIGSTOP), 0);
  }
  for (pid_t pid : workers) EXPECT_FALSE(multicore_test::running(pid));
}

TEST(Lifecycle, TerminateWithAStoppedBusyWorker) {
  Pipe started;
  Pipe gate;
  Pool pool(PoolOptions{.workers = 1});
  auto busy = pool.submit(
      [](int tell, int wait) {
        const pid_t self = getpid();
        multicore_test::write_all(tell, &self, sizeof self);
        char byte = 0;
        return multicore_test::read_exact(wait, &byte, 1) ? 1 : 0;
      },
      started.write_fd(), gate.read_fd());
  auto queued = pool.submit([](int x) { return x; }, 5);
  const pid_t worker = multicore_test::read_value<pid_t>(started.read_fd());
  ASSERT_EQ(kill(worker, SIGSTOP), 0);
  const char open = 1;
  ASSERT_TRUE(multicore_test::write_all(gate.write_fd(), &open, 1));  // it cannot see this
  pool.terminate();
  EXPECT_TRUE(error_of<PoolClosed>(busy));
  EXPECT_TRUE(error_of<PoolClosed>(queued));
  EXPECT_FALSE(multicore_test::running(worker));
}

/// Workers whose fork server died died with it (PR_SET_PDEATHSIG) and were reparented here (this
/// process is a subreaper): the pool must have reaped them, so none is left as our child, not
/// even as a zombie.
void expect_reaped_by_the_pool(const std::vector<pid_t>& workers) {
  for (pid_t pid : workers) {
    EXPECT_EQ(multicore_test::reap(pid), -1) << "worker " << pid << " was left for us to reap";
  }
}

/// Waits (bounded) until `pid` is stopped; false if it is not within the liveness bound.
bool stopped(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + multicore_test::pipe_liveness;
  for (;;) {
    const auto stat = multicore_test::proc_stat(pid);
    if (stat && stat->state == 'T') return true;
    if (!stat || std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
}

enum class Ending { shutdown, destructor };

void PrintTo(Ending e, std::ostream* os) {
  *os << (e == Ending::shutdown ? "shutdown" : "destructor");
}

class StoppedBusyWorker : public ::testing::TestWithParam<Ending> {};

INSTANTIATE_TEST_SUITE_P(Lifecycle, StoppedBusyWorker,
                         ::testing::Values(Ending::shutdown, Ending::destructor),
                         [](const auto& p) {
                           return std::string(p.param == Ending::shutdown ? "Shutdown"
                                                                          : "Destructor");
                         });

// A worker stopped from outside (SIGSTOP) while it runs a task, and no task_timeout: shutdown()
// and the destructor wait for the submitted work, so they first continue every worker
// (SIGCONT, through the fork server); the task finishes and its future has its value.
// Regression test: they waited for ever for a task that could not run.
TEST_P(StoppedBusyWorker, FinishesItsTaskWhenThePoolIsShutDown) {
  Pipe started;
  Pipe gate;
  auto pool = std::make_unique<Pool>(PoolOptions{.workers = 1});
  auto busy = pool->submit(
      [](int tell, int wait) {
        const pid_t self = getpid();
        multicore_test::write_all(tell, &self, sizeof self);
        char byte = 0;
        return multicore_test::read_exact(wait, &byte, 1) ? 42 : 0;
      },
      started.write_fd(), gate.read_fd());
  const pid_t worker = multicore_test::read_value<pid_t>(started.read_fd());
  ASSERT_EQ(kill(worker, SIGSTOP), 0);
  ASSERT_TRUE(stopped(worker));
  const char open = 1;
  ASSERT_TRUE(multicore_test::write_all(gate.write_fd(), &open, 1));  // it cannot see this yet
  auto ended = std::async(std::launch::async, [&] {
    if (GetParam() == Ending::shutdown) {
      pool->shutdown();
    } else {
      pool.reset();
    }
  });
  if (ended.wait_for(multicore_test::pipe_liveness) != std::future_status::ready) {
    ADD_FAILURE() << "the pool's " << (GetParam() == Ending::shutdown ? "shutdown()" : "destructor")
                  << " still waits for the stopped worker";
    kill(worker, SIGCONT);
  }
  ended.get();
  ASSERT_EQ(busy.wait_for(0s), std::future_status::ready);
  EXPECT_EQ(busy.get(), 42);
}

// A stopped fork server cannot reap, kill or fork: terminate() kills it (bounded), and its
// workers die with it (PR_SET_PDEATHSIG).
TEST(Lifecycle, TerminateWithAStoppedForkServer) {
  Pipe started;
  Pool pool(PoolOptions{.workers = 1});
  const std::vector<pid_t> children = multicore_test::child_pids();
  ASSERT_EQ(children.size(), 1u);
  const pid_t fork_server = children[0];
  auto busy = pool.submit(
      [](int tell) -> int {
        const pid_t self = getpid();
        multicore_test::write_all(tell, &self, sizeof self);
        multicore_test::hang_forever();
      },
      started.write_fd());
  const pid_t worker = multicore_test::read_value<pid_t>(started.read_fd());
  ASSERT_EQ(kill(fork_server, SIGSTOP), 0);
  pool.terminate();
  EXPECT_TRUE(error_of<PoolClosed>(busy));
  EXPECT_FALSE(multicore_test::running(fork_server));
  expect_reaped_by_the_pool({worker});
}

// The destructor, which waits for the work, continues the fork server (SIGCONT) instead; it
// completes either way.
TEST(Lifecycle, DestructorWithAStoppedForkServer) {
  std::vector<pid_t> workers;
  pid_t fork_server = 0;
  {
    Pool pool(PoolOptions{.workers = 2});
    const std::vector<pid_t> children = multicore_test::child_pids();
    ASSERT_EQ(children.size(), 1u);
    fork_server = children[0];
    workers = multicore_test::live_children_of(fork_server);
    ASSERT_EQ(workers.size(), 2u);
    ASSERT_EQ(kill(fork_server, SIGSTOP), 0);
    // Running tasks does not need the fork server.
    EXPECT_EQ(pool.submit([](int x) { return x * 5; }, 5).get(), 25);
  }
  EXPECT_FALSE(multicore_test::running(fork_server));
  expect_reaped_by_the_pool(workers);
}

// ----- (5) The fork server killed from outside -------------------------------------------------

TEST(Lifecycle, ForkServerKilledFromOutside) {
  Pipe started;
  std::vector<pid_t> workers;
  {
    Pool pool(PoolOptions{.workers = 2});
    const std::vector<pid_t> children = multicore_test::child_pids();
    ASSERT_EQ(children.size(), 1u);
    const pid_t fork_server = children[0];
    workers = multicore_test::live_children_of(fork_server);
    ASSERT_EQ(workers.size(), 2u);
    auto busy = pool.submit(
        [](int tell) -> int {
          const pid_t self = getpid();
          multicore_test::write_all(tell, &self, sizeof self);
          multicore_test::hang_forever();
        },
        started.write_fd());
    (void)multicore_test::read_value<pid_t>(started.read_fd());
    // The other worker, the least loaded, takes the next task: keep it busy too, and queue
    // tasks behind both (one on each, the rest waiting to be sent).
    auto busy2 = pool.submit(
        [](int tell) -> int {
          const pid_t self = getpid();
          multicore_test::write_all(tell, &self, sizeof self);
          multicore_test::hang_forever();
        },
        started.write_fd());
    (void)multicore_test::read_value<pid_t>(started.read_fd());
    std::vector<std::future<int>> others;
    for (int i = 0; i < 4; ++i) others.push_back(pool.submit([](int x) { return x; }, i));

    ASSERT_EQ(kill(fork_server, SIGKILL), 0);
    for (auto* f : {&busy, &busy2}) {
      const auto lost = error_of<WorkerLost>(*f);
      ASSERT_TRUE(lost);
      EXPECT_EQ(lost->signal(), SIGKILL);
      EXPECT_EQ(lost->exit_code(), -1);
      EXPECT_NE(std::string(lost->what()).find("fork server died"), std::string::npos)
          << lost->what();
    }
    // Those already sent to a worker were lost with it; those never sent fail as closed.
    for (auto& f : others) {
      try {
        (void)f.get();
        ADD_FAILURE() << "a queued task returned although its pool lost its fork server";
      } catch (const WorkerLost& e) {
        EXPECT_NE(std::string(e.what()).find("fork server died"), std::string::npos) << e.what();
      } catch (const PoolClosed& e) {
        EXPECT_NE(std::string(e.what()).find("fork server died"), std::string::npos) << e.what();
      }
    }
    const auto closed = thrown_exactly<PoolClosed>([&] { (void)pool.submit(own_pid); });
    ASSERT_TRUE(closed);
    EXPECT_NE(std::string(closed->what()).find("fork server died"), std::string::npos);
  }  // the destructor must complete
  expect_reaped_by_the_pool(workers);
}

/// Children of the calling process, zombies included, as "<n> (<states>)": "0 ()" when none.
std::string describe_children() {
  std::string states;
  const std::vector<pid_t> children = multicore_test::child_pids();
  for (pid_t pid : children) {
    const auto stat = multicore_test::proc_stat(pid);
    states += stat ? stat->state : '-';
  }
  return std::to_string(children.size()) + " (" + states + ")";
}

// An application that is a child subreaper (as a container's init is) inherits the workers of a
// fork server killed from outside: they die with it (PR_SET_PDEATHSIG) and are reparented to
// the application. Regression test: nobody reaped them, and they stayed as zombies for ever; the
// pool knows their pids and must reap them.
int slow_item(int x) {
  usleep(10'000);
  return x;
}

// The fork server is killed mid-map. The chunk in flight got WorkerLost, the map resent its
// items one by one, the resend threw out of ++ and the stream was at its end: 192 of 200 items
// got neither a value nor an error. Now every item yields an outcome (README: sent tasks
// WorkerLost, unsent ones PoolClosed), each error thrown by its dereference, never by ++.
TEST(Lifecycle, MapWhoseForkServerDiesYieldsAnOutcomeForEveryItem) {
  const auto end = multicore_test::in_child(
      [](int report) {
        Pool pool(PoolOptions{.workers = 2});
        auto results = pool.map(slow_item, multicore_test::Numbers(0, 200), {.chunk_size = 4});
        int values = 0;
        int errors = 0;
        bool killed = false;
        bool increment_threw = false;
        auto it = results.begin();
        while (it != results.end()) {
          try {
            if (*it == static_cast<int>(it.index())) ++values;
          } catch (const WorkerLost&) {
            ++errors;
          } catch (const PoolClosed&) {
            ++errors;
          }
          if (!killed && values == 5) {
            killed = true;
            for (pid_t fork_server : multicore_test::child_pids()) kill(fork_server, SIGKILL);
          }
          try {
            ++it;
          } catch (const std::exception& e) {
            multicore_test::say(report, std::string("++ threw: ") + e.what());
            increment_threw = true;
          }
        }
        multicore_test::say(
            report, std::to_string(values) + " values, " + std::to_string(errors) + " errors");
        return values + errors == 200 && !increment_threw ? 0 : 1;
      },
      30s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// A task may clear its worker's parent-death signal: prctl does, and so does any change of the
// worker's effective user or group id (a task that drops privileges). That worker must still
// end when its fork server dies, not wait for requests for ever, orphaned. Regression test: it
// stayed, adopted by init, after the pool and its application were gone. (In an application
// that is not a subreaper: a subreaper's pool kills what it adopts, see reap_orphans. This
// process is one, so the worker ends up here, and is reaped here.)
TEST(Lifecycle, AWorkerWhoseTaskClearedItsParentDeathSignalEndsWithItsForkServer) {
  const AppResult app = run_app([](const Report& report) {
    Pool pool(PoolOptions{.workers = 1});
    const pid_t worker = pool.call([] {
      prctl(PR_SET_PDEATHSIG, 0);
      return getpid();
    });
    const auto stat = multicore_test::proc_stat(worker);
    if (!stat) return report.line("no worker");
    report.line(std::to_string(worker));
    const int pidfd = multicore_test::pidfd_open(worker);
    if (pidfd < 0) return report.line(std::string("pidfd_open: ") + std::strerror(errno));
    kill(stat->ppid, SIGKILL);
    const bool ended = multicore_test::pidfd_exited_within(pidfd, 10s);
    report.line(ended ? "the worker ended" : "the worker outlived its fork server");
    if (!ended) syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);  // leave nothing
    close(pidfd);
  });
  EXPECT_TRUE(WIFEXITED(app.status) && WEXITSTATUS(app.status) == 0) << app.report;
  const auto lines = lines_of(app.report);
  ASSERT_EQ(lines.size(), 2u) << app.report;
  EXPECT_EQ(lines[1], "the worker ended");
  // Ended (or killed by the application), and adopted by this process: not left a zombie.
  const pid_t worker = std::stoi(lines[0]);
  EXPECT_NE(multicore_test::reap(worker), -1) << "worker " << worker << " was not adopted here";
}

TEST(Lifecycle, ForkServerKilledFromOutsideLeavesASubreaperApplicationNoZombie) {
  const AppResult app = run_app([](const Report& report) {
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
      return report.line(std::string("skip: prctl: ") + std::strerror(errno));
    }
    {
      Pipe started;
      Pool pool(PoolOptions{.workers = 2});
      const std::vector<pid_t> children = multicore_test::child_pids();
      if (children.size() != 1) return report.line("expected only the fork server as a child");
      auto busy = pool.submit(
          [](int tell) -> int {
            const pid_t self = getpid();
            multicore_test::write_all(tell, &self, sizeof self);
            multicore_test::hang_forever();
          },
          started.write_fd());
      pid_t worker = 0;
      if (!multicore_test::read_exact(started.read_fd(), &worker, sizeof worker)) {
        return report.line("the task did not start");
      }
      kill(children[0], SIGKILL);
      report.outcome("busy", [&] { return busy.get(); });
    }
    report.line("children after the pool: " + describe_children());
  });
  SKIP_IF_APP_SKIPPED(app);
  EXPECT_TRUE(WIFEXITED(app.status) && WEXITSTATUS(app.status) == 0) << app.report;
  EXPECT_EQ(app.report,
            "busy: WorkerLost signal=9 exit_code=-1\n"
            "children after the pool: 0 ()\n");
}

/// The pool a worker made in on_worker_start (null elsewhere).
std::unique_ptr<Pool>& worker_pool() {
  static std::unique_ptr<Pool> pool;
  return pool;
}

/// Uses the worker's own pool, after starting a child process that exits at once and that this
/// worker never reaps.
int through_worker_pool(int x) {
  if (fork() == 0) _exit(0);
  return worker_pool()->call([](int y) { return 2 * y; }, x);
}

// What a worker leaves when it ends is adopted by the nearest child subreaper: the fork server of
// a pool it made (in on_worker_start, kept in a global: a worker ends with _exit, so that pool is
// never destroyed; its fork server exits when it sees its lifeline close), and a child a task
// started and never reaped. Regression test: in a subreaper application (a container's init)
// they were reparented to the application and stayed zombies for ever, one more with every
// replaced worker. The fork server is now a subreaper itself and reaps them.
TEST(Lifecycle, WorkersLeaveASubreaperApplicationNoZombie) {
  const AppResult app = run_app([](const Report& report) {
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
      return report.line(std::string("skip: prctl: ") + std::strerror(errno));
    }
    {
      Pool pool(
          PoolOptions{.workers = 1,
                      .on_worker_start =
                          [] { worker_pool() = std::make_unique<Pool>(PoolOptions{.workers = 1}); },
                      .max_tasks_per_worker = 1});
      int sum = 0;
      for (int i = 1; i <= 4; ++i) sum += pool.call(through_worker_pool, i);  // 4 workers
      report.line("sum: " + std::to_string(sum));
    }
    report.line("children after the pool: " + describe_children());
  });
  SKIP_IF_APP_SKIPPED(app);
  EXPECT_TRUE(WIFEXITED(app.status) && WEXITSTATUS(app.status) == 0) << app.report;
  EXPECT_EQ(app.report, "sum: 20\nchildren after the pool: 0 ()\n");
}

// Regression test: a daemon that closed its standard streams before making its pool got the
// pool's command socket there (fd 2 with only stderr closed), so the next line anything wrote
// to stderr was a packet to the fork server, which took it for a broken parent and exited
// ("the pool's fork server died"). The library's descriptors never take 0, 1 or 2.
int twice(int x) { return 2 * x; }

TEST(Lifecycle, StandardStreamsClosedBeforeThePoolIsMadeStayFree) {
  for (const int first_closed : {STDERR_FILENO, STDIN_FILENO}) {
    const AppResult app = run_app([first_closed](const Report& report) {
      for (int fd = first_closed; fd <= STDERR_FILENO; ++fd) close(fd);
      Pool pool(PoolOptions{.workers = 2});
      report.outcome("first", [&] { return pool.call(twice, 3); });
      for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd) {
        if (fd >= first_closed && fcntl(fd, F_GETFD) != -1) {
          report.line("the pool took fd " + std::to_string(fd));
        }
      }
      std::fputs("a log line\n", stderr);
      std::fflush(stderr);
      report.outcome("after a line on stderr", [&] { return pool.call(twice, 4); });
    });
    EXPECT_EQ(app.report, "first: value 6\nafter a line on stderr: value 8\n")
        << "closed from fd " << first_closed;
  }
}

}  // namespace
