// SPDX-License-Identifier: MIT
// What workers print: tagged line by line (never torn or mixed), or routed to a callback; and
// the end of a dead worker's stderr in its WorkerLost.
#undef NDEBUG  // the failed-assert test needs assert() active in the workers
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <multicore/detail/transport/shm/output.hpp>
#include <multicore/multicore.hpp>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"
#include "support/shared_counter.hpp"

namespace {

using multicore::Pool;
using multicore::PoolOptions;
using multicore::WorkerLost;
using multicore::WorkerOutput;
using multicore::WorkerStream;
using multicore_test::error_of;
using multicore_test::ready_within;

/// Sends this process's `fd` (1 or 2) into a pipe while it lives; text() is what came through,
/// once released. A thread drains the pipe meanwhile, so writers never block on it.
class Captured {
 public:
  explicit Captured(int fd) : fd_(fd), saved_(dup(fd)) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) ADD_FAILURE() << "pipe2 failed";
    dup2(fds[1], fd_);
    ::close(fds[1]);
    read_fd_ = fds[0];
    reader_ = std::thread([this] { text_ = multicore_test::read_to_end(read_fd_); });
  }
  ~Captured() { release(); }
  Captured(const Captured&) = delete;
  Captured& operator=(const Captured&) = delete;

  /// Gives `fd` back; everything written to it until now is in the result.
  const std::string& release() {
    if (saved_ >= 0) {
      dup2(saved_, fd_);  // closes the pipe's last write end: the reader sees end-of-file
      ::close(saved_);
      saved_ = -1;
      reader_.join();
      ::close(read_fd_);
    }
    return text_;
  }

 private:
  int fd_;
  int saved_;
  int read_fd_ = -1;
  std::thread reader_;
  std::string text_;
};

/// Lines handed to on_worker_output, in the order they came.
struct Lines {
  struct Line {
    unsigned worker;
    WorkerStream stream;
    std::string text;
  };
  std::mutex mutex;
  std::vector<Line> lines;
  std::string awaited;  // a line whose first arrival sets `arrived`
  std::promise<void> arrived;
  bool awaited_seen = false;

  PoolOptions options(unsigned workers) {
    PoolOptions o;
    o.workers = workers;
    o.on_worker_output = [this](unsigned worker, WorkerStream stream, std::string_view text) {
      std::lock_guard lock(mutex);
      lines.push_back({worker, stream, std::string(text)});
      if (text == awaited && !awaited_seen) {
        awaited_seen = true;
        arrived.set_value();
      }
    };
    return o;
  }
  std::vector<std::string> of(WorkerStream stream) {
    std::lock_guard lock(mutex);
    std::vector<std::string> out;
    for (const Line& l : lines) {
      if (l.stream == stream) out.push_back(l.text);
    }
    return out;
  }
};

constexpr int lines_per_task = 10'000;

/// Prints lines_per_task lines "task T line N ....": buffered stdout, so the buffer is written
/// out in pieces that cut lines anywhere.
pid_t print_lines(int task) {
  for (int n = 0; n < lines_per_task; ++n) {
    std::printf("task %d line %d %s\n", task, n,
                std::string(static_cast<std::size_t>(n % 97), 'x').c_str());
  }
  return getpid();
}

/// Threads of this process, from /proc.
int thread_count() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (const dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

/// Threads this process ran at its first fork since `armed` was set (-1: none yet).
std::atomic<bool> armed{false};
std::atomic<int> threads_at_fork{-1};

// Regression: the pool started its output reader thread, then forked its fork server. A fork
// while another thread is inside malloc hands a locked allocator to the child; AddressSanitizer's
// allocator (g++ 12) is not guarded against that, and a new thread allocates as it starts: about
// one pool in four under ASan had workers stuck for ever in malloc, and maps hung. A process
// must fork its fork server with no thread of the pool running yet.
TEST(WorkerOutput, ForkServerIsForkedBeforeThePoolStartsAThread) {
  pthread_atfork(
      [] {
        if (armed.exchange(false)) threads_at_fork = thread_count();
      },
      nullptr, nullptr);
  for (WorkerOutput mode : {WorkerOutput::inherit, WorkerOutput::tagged}) {
    SCOPED_TRACE(mode == WorkerOutput::inherit ? "inherit" : "tagged");
    const int before = thread_count();
    threads_at_fork = -1;
    armed = true;
    PoolOptions o;
    o.workers = 1;
    o.worker_output = mode;
    Pool pool(o);
    EXPECT_EQ(threads_at_fork.load(), before) << "threads when the fork server was forked";
    EXPECT_EQ(pool.call([] { return 6 * 7; }), 42);
  }
}

TEST(WorkerOutput, TaggedLinesOfFourWorkersAreNeverTornOrInterleaved) {
  Captured out(STDOUT_FILENO);
  std::vector<pid_t> pids;
  {
    PoolOptions o;
    o.workers = 4;
    o.worker_output = WorkerOutput::tagged;
    o.other_threads = multicore::OtherThreads::ignore;  // the capturing thread
    Pool pool(o);
    std::vector<std::future<pid_t>> futures;
    for (int t = 0; t < 4; ++t) futures.push_back(pool.submit(print_lines, t));
    for (auto& f : futures) pids.push_back(f.get());
  }  // the pool's end delivers everything its workers printed
  const std::string& text = out.release();
  std::map<int, int> next;  // per task: the line number expected next
  std::istringstream in(text);
  std::size_t count = 0;
  for (std::string l; std::getline(in, l); ++count) {
    // "[worker W pid P] task T line N xxx" (std::regex is too slow for 40,000 lines under TSan)
    unsigned worker = 0;
    int pid = 0, task = 0, n = 0, end = 0;
    const int got = std::sscanf(l.c_str(), "[worker %u pid %d] task %d line %d %n", &worker, &pid,
                                &task, &n, &end);
    ASSERT_TRUE(got == 4 && end > 0 && worker < 4 && task >= 0 && task < 4)
        << "a torn or mixed line: " << l;
    const std::string_view rest = std::string_view(l).substr(static_cast<std::size_t>(end));
    ASSERT_EQ(rest, std::string(static_cast<std::size_t>(n % 97), 'x')) << "a torn line: " << l;
    ASSERT_EQ(n, next[task]++) << "task " << task << "'s lines out of order";
    EXPECT_EQ(pid, pids[static_cast<std::size_t>(task)]) << l;
  }
  EXPECT_EQ(count, std::size_t{4} * lines_per_task);
  EXPECT_EQ(text.back(), '\n');
}

// Over MPI, rank 0's reader delivers its agents' workers' lines with its own (see
// mpi::Cluster): tagged with the rank and host they come from, each line whole.
TEST(WorkerOutput, LinesFromAnotherRankAreTaggedWithItsRankAndHost) {
  Captured out(STDOUT_FILENO);
  Captured err(STDERR_FILENO);
  {
    multicore::detail::WorkerOutputs outputs(
        1, WorkerOutput::tagged, {}, {[](unsigned) { return 0; }, [](unsigned) { return true; }});
    outputs.start_reader();
    outputs.deliver_remote(5, 4242, WorkerStream::out, "rank 1 (node07)", "hello");
    outputs.deliver_remote(6, 4343, WorkerStream::err, "rank 2 (node08)", "trouble");
    outputs.stop();
  }
  EXPECT_EQ(out.release(), "[worker 5 pid 4242 rank 1 (node07)] hello\n");
  EXPECT_EQ(err.release(), "[worker 6 pid 4343 rank 2 (node08)] trouble\n");
}

// And with a callback, they reach it under the Pool's index of their worker.
TEST(WorkerOutput, LinesFromAnotherRankReachTheCallback) {
  Lines lines;
  {
    multicore::detail::WorkerOutputs outputs(
        1, WorkerOutput::inherit, lines.options(1).on_worker_output,
        {[](unsigned) { return 0; }, [](unsigned) { return true; }});
    outputs.start_reader();
    outputs.deliver_remote(5, 4242, WorkerStream::err, "rank 1 (node07)", "hello");
    outputs.stop();
  }
  ASSERT_EQ(lines.lines.size(), 1u);
  EXPECT_EQ(lines.lines[0].worker, 5u);
  EXPECT_EQ(lines.lines[0].stream, WorkerStream::err);
  EXPECT_EQ(lines.lines[0].text, "hello");
}

int announce_and_count(int x) {
  std::fprintf(stderr, "err %d\n", x);
  std::printf("out %d\n", x);
  return x;
}

TEST(WorkerOutput, CallbackGetsEveryLineOfBothStreamsWithItsWorker) {
  Lines lines;
  {
    Pool pool(lines.options(2));
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 100; ++i) futures.push_back(pool.submit(announce_and_count, i));
    for (auto& f : futures) f.get();
  }
  auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  std::vector<std::string> err, out;
  for (int i = 0; i < 100; ++i) {
    err.push_back("err " + std::to_string(i));
    out.push_back("out " + std::to_string(i));
  }
  EXPECT_EQ(sorted(lines.of(WorkerStream::err)), sorted(err));
  EXPECT_EQ(sorted(lines.of(WorkerStream::out)), sorted(out));
  for (const auto& l : lines.lines) EXPECT_LT(l.worker, 2u);
}

TEST(WorkerOutput, InheritForwardsStderrUnchanged) {
  Captured err(STDERR_FILENO);
  {
    Pool pool(PoolOptions{.workers = 1, .other_threads = multicore::OtherThreads::ignore});
    pool.call([] { std::fputs("as it is, no tag", stderr); });
  }
  EXPECT_EQ(err.release(), "as it is, no tag");
}

TEST(WorkerOutput, WorkerLostCarriesTheAbortMessage) {
  Pool pool(PoolOptions{.workers = 1});
  auto f = pool.submit([] {
    std::fprintf(stderr, "noise before\nfatal: the disk is on fire (code 42)\n");
    std::abort();
  });
  const auto e = error_of<WorkerLost>(f);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->output_tail(), "noise before\nfatal: the disk is on fire (code 42)\n");
  EXPECT_NE(std::string(e->what()).find("fatal: the disk is on fire (code 42)"), std::string::npos)
      << e->what();
  EXPECT_EQ(e->signal(), SIGABRT);
}

TEST(WorkerOutput, WorkerLostCarriesTheFailedAssert) {
  Pool pool(PoolOptions{.workers = 1});
  auto f = pool.submit(
      [](int answer) {
        assert(answer == 42 && "the answer is wrong");
        return answer;
      },
      41);
  const auto e = error_of<WorkerLost>(f);
  ASSERT_TRUE(e);
  EXPECT_NE(e->output_tail().find("Assertion"), std::string::npos) << e->output_tail();
  EXPECT_NE(e->output_tail().find("the answer is wrong"), std::string::npos) << e->output_tail();
}

TEST(WorkerOutput, TailIsTheLastFourKibibytesFromALineStart) {
  Pool pool(PoolOptions{.workers = 1});
  auto f = pool.submit([] {
    for (int i = 0; i < 1000; ++i) std::fprintf(stderr, "line %d\n", i);
    std::_Exit(3);
  });
  const auto e = error_of<WorkerLost>(f);
  ASSERT_TRUE(e);
  const std::string& tail = e->output_tail();
  EXPECT_LE(tail.size(), 4096u);
  EXPECT_GT(tail.size(), 3000u);
  EXPECT_EQ(tail.rfind("line ", 0), 0u) << "starts mid-line: " << tail.substr(0, 20);
  EXPECT_EQ(tail.substr(tail.size() - 9), "line 999\n");
  EXPECT_EQ(e->exit_code(), 3);
}

TEST(WorkerOutput, ReplacementStartsWithAnEmptyTail) {
  Pool pool(PoolOptions{.workers = 1});
  auto first = pool.submit([] {
    std::fputs("first worker's last words\n", stderr);
    std::_Exit(1);
  });
  ASSERT_TRUE(error_of<WorkerLost>(first));
  auto second = pool.submit([] { std::_Exit(2); });
  const auto e = error_of<WorkerLost>(second);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->output_tail(), "");
  EXPECT_EQ(std::string(e->what()).find("last words"), std::string::npos);
}

TEST(WorkerOutput, OnWorkerStartOutputIsNotLost) {
  Lines lines;
  {
    PoolOptions o = lines.options(3);
    o.on_worker_start = [] {
      std::printf("started on stdout\n");  // buffered: flushed before the worker is ready
      std::fprintf(stderr, "started on stderr\n");
    };
    Pool pool(o);
  }
  EXPECT_EQ(lines.of(WorkerStream::out), std::vector<std::string>(3, "started on stdout"));
  EXPECT_EQ(lines.of(WorkerStream::err), std::vector<std::string>(3, "started on stderr"));
}

TEST(WorkerOutput, OnWorkerStartStderrIsInTheTail) {
  PoolOptions o;
  o.workers = 1;
  o.on_worker_start = [] { std::fputs("opened the database\n", stderr); };
  Pool pool(o);
  auto f = pool.submit([] { std::abort(); });
  const auto e = error_of<WorkerLost>(f);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->output_tail(), "opened the database\n");
}

TEST(WorkerOutput, WorkerKilledMidLineKeepsItsPartialLines) {
  Lines lines;
  {
    Pool pool(lines.options(1));
    auto f = pool.submit([] {
      multicore_test::write_all(STDOUT_FILENO, "half a line", 11);
      multicore_test::write_all(STDERR_FILENO, "half an error", 13);
      raise(SIGKILL);
    });
    const auto e = error_of<WorkerLost>(f);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->output_tail(), "half an error");
  }
  EXPECT_EQ(lines.of(WorkerStream::out), std::vector<std::string>{"half a line"});
  EXPECT_EQ(lines.of(WorkerStream::err), std::vector<std::string>{"half an error"});
}

TEST(WorkerOutput, PartialLineIsFlushedWhenTheTaskEnds) {
  Lines lines;
  lines.awaited = "no newline";
  auto arrived = lines.arrived.get_future();
  Pool pool(lines.options(1));
  pool.call([] { multicore_test::write_all(STDOUT_FILENO, "no newline", 10); });
  EXPECT_TRUE(ready_within(arrived));  // the worker lives on: only the task's end flushes it
}

/// Writes 3 lines' worth of max_line_bytes and 5 bytes more without a newline, then waits
/// until the test sets `*go`.
struct PrintWithoutNewlineThenWait {
  std::atomic<int>* go;
  void operator()() const {
    const std::string y(3 * multicore::detail::max_line_bytes + 5, 'y');
    multicore_test::write_all(STDOUT_FILENO, y.data(), y.size());
    while (go->load() == 0) sched_yield();
  }
};

// A task printing without newlines: what it printed goes on in lines of max_line_bytes while
// the task still runs, not all at its end (the parent held all of it until then: a task that
// printed a progress bar with \r, or garbage, for hours filled the parent's memory).
TEST(WorkerOutput, ALineWithoutEndGoesOnInBoundedPiecesWhileItsTaskRuns) {
  const multicore_test::SharedCounter go;  // made before the pool, so the worker shares it
  Lines lines;
  lines.awaited = std::string(multicore::detail::max_line_bytes, 'y');
  auto arrived = lines.arrived.get_future();
  {
    Pool pool(lines.options(1));
    auto task = pool.submit(PrintWithoutNewlineThenWait{go.get()});
    EXPECT_TRUE(ready_within(arrived));  // while the task waits
    (*go).store(1);
    task.get();
  }
  std::vector<std::size_t> lengths;  // compared as lengths: a failure prints no 64 KiB line
  bool only_y = true;
  for (const std::string& line : lines.of(WorkerStream::out)) {
    lengths.push_back(line.size());
    only_y = only_y && line.find_first_not_of('y') == std::string::npos;
  }
  const std::size_t n = multicore::detail::max_line_bytes;
  EXPECT_EQ(lengths, (std::vector<std::size_t>{n, n, n, 5}));
  EXPECT_TRUE(only_y);
}

}  // namespace

namespace {

int print_to_stderr(int n) {
  for (int i = 0; i < n; ++i) std::fprintf(stderr, "line %d of a task that prints a lot\n", i);
  return n;
}

// A callback that uses its own pool waits for tasks while it holds up the pool's output, which
// the pool's workers wait on (one that fills its pipe blocks): it fails at once, with an error
// that says so, and every future of the pool completes. Regression test: the pool hung.
TEST(WorkerOutput, UsingThePoolFromItsOwnOutputCallbackFailsAtOnce) {
  constexpr int lines = 20'003;
  std::vector<std::string> errors;  // what the callback's calls threw; only its thread touches it
  std::promise<void> all_lines;
  auto all_lines_came = all_lines.get_future();
  std::atomic<Pool*> the_pool{nullptr};  // set after the reader thread started
  PoolOptions options;
  options.workers = 1;
  options.on_worker_output = [&](unsigned, WorkerStream, std::string_view) {
    try {
      the_pool.load()->call(print_to_stderr, 0);
    } catch (const multicore::Error& e) {
      errors.emplace_back(e.what());
    }
    if (errors.size() == lines) all_lines.set_value();
  };
  Pool pool(options);
  the_pool.store(&pool);
  auto few = pool.submit(print_to_stderr, 3);
  auto many = pool.submit(print_to_stderr, lines - 3);  // ~800 KiB: more than a pipe holds
  ASSERT_TRUE(ready_within(few));
  ASSERT_TRUE(ready_within(many));
  EXPECT_EQ(few.get() + many.get(), lines);
  ASSERT_TRUE(ready_within(all_lines_came));  // lines may come after their task's answer
  EXPECT_NE(errors.front().find("cannot be used from its on_worker_output callback"),
            std::string::npos)
      << errors.front();
}

TEST(WorkerOutput, TailIsCompleteWhileAChildOfTheWorkerHoldsItsStderr) {
  Lines lines;
  {
    Pool pool(lines.options(1));
    auto f = pool.submit([] {
      if (fork() == 0) {  // inherits the worker's stderr pipe and keeps it open
        for (;;) pause();
      }
      multicore_test::write_all(STDERR_FILENO, "last words, no newline", 22);
      std::abort();
    });
    const auto e = error_of<WorkerLost>(f);  // must not wait for the child's end of the pipe
    ASSERT_TRUE(e);
    EXPECT_EQ(e->output_tail(), "last words, no newline");
    EXPECT_EQ(pool.call([] { return 7; }), 7);
  }  // the pool's end kills the child it adopted
  EXPECT_EQ(lines.of(WorkerStream::err), std::vector<std::string>{"last words, no newline"});
}

}  // namespace

namespace {

/// What process `pid` holds open: the target of each descriptor ("pipe:[inode]", a path...).
std::map<int, std::string> descriptors_of(pid_t pid) {
  std::map<int, std::string> held;
  const std::string dir_name = "/proc/" + std::to_string(pid) + "/fd";
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(dir_name.c_str()), closedir);
  if (!dir) return held;
  while (const dirent* e = readdir(dir.get())) {
    if (e->d_name[0] == '.') continue;
    char link[128] = {};
    const std::string path = dir_name + "/" + e->d_name;
    if (readlink(path.c_str(), link, sizeof link - 1) > 0) held[std::atoi(e->d_name)] = link;
  }
  held.erase(dirfd(dir.get()));  // this very listing's (when pid is this process)
  return held;
}

/// The descriptors `pid` holds that this process did not hold as `before`.
std::map<int, std::string> added_to(pid_t pid, const std::map<int, std::string>& before) {
  std::map<int, std::string> added;
  for (const auto& [fd, target] : descriptors_of(pid)) {
    const auto it = before.find(fd);
    if (it == before.end() || it->second != target) added[fd] = target;
  }
  return added;
}

std::string listed(const std::map<int, std::string>& fds) {
  std::string text;
  for (const auto& [fd, target] : fds) text += std::to_string(fd) + " -> " + target + "; ";
  return text;
}

// A worker holds what the application held when the pool was made (stdin aside) and, as its stderr
// (and, tagged, its stdout), a pipe of its own, whose end-of-file tells the parent that its output
// is complete; and its exec watch, a pipe whose other end only its fork server holds. Nothing else
// of any pool: a sibling's pipe kept open would hide that sibling's end;
// the pools' event descriptors are theirs (a task writing one would wake a reader thread for
// nothing). Two pools, the second made while the first runs.
TEST(WorkerOutput, WorkersAndForkServersHoldNoDescriptorOfAnyPool) {
  for (WorkerOutput mode : {WorkerOutput::inherit, WorkerOutput::tagged}) {
    SCOPED_TRACE(mode == WorkerOutput::inherit ? "inherit" : "tagged");
    const std::map<int, std::string> before = descriptors_of(getpid());
    PoolOptions o;
    o.workers = 2;
    o.worker_output = mode;
    Pool first(o);
    Pool second(o);
    const std::vector<pid_t> servers = multicore_test::live_children_of(getpid());
    ASSERT_EQ(servers.size(), 2u) << "the fork servers";
    std::set<std::string> pipes;
    for (pid_t server : servers) {
      std::map<int, std::string> added = added_to(server, before);
      // Its stdin is /dev/null (see InheritedState in fork_test.cpp), whatever ours is.
      EXPECT_EQ(descriptors_of(server)[0], "/dev/null");
      added.erase(0);
      // Its own end of its command socket, the signalfd it learns of deaths by, and its workers'
      // exec watches.
      std::multiset<std::string> kinds;
      std::set<std::string> watches;
      for (const auto& [fd, target] : added) {
        if (target.starts_with("pipe:")) watches.insert(target);
        kinds.insert(target.starts_with("socket:") ? "socket"
                     : target.starts_with("pipe:") ? "pipe"
                                                   : target);
      }
      EXPECT_EQ(kinds,
                (std::multiset<std::string>{"anon_inode:[signalfd]", "pipe", "pipe", "socket"}))
          << "fork server " << server << ": " << listed(added);
      const std::vector<pid_t> workers = multicore_test::live_children_of(server);
      ASSERT_EQ(workers.size(), 2u);
      for (pid_t worker : workers) {
        std::map<int, std::string> added_here = added_to(worker, before);
        // Its stdin is /dev/null (see InheritedState in fork_test.cpp), whatever ours is.
        EXPECT_EQ(descriptors_of(worker)[0], "/dev/null");
        added_here.erase(0);
        std::vector<int> fds;
        int watched = 0;
        for (const auto& [fd, target] : added_here) {
          EXPECT_TRUE(target.starts_with("pipe:")) << fd << " -> " << target;
          EXPECT_TRUE(pipes.insert(target).second) << target << " is held by two workers";
          if (fd > 2 && watches.contains(target)) {
            ++watched;
          } else {
            fds.push_back(fd);
          }
        }
        EXPECT_EQ(watched, 1) << "worker " << worker << ": " << listed(added_here);
        const std::vector<int> expected =
            mode == WorkerOutput::tagged ? std::vector<int>{1, 2} : std::vector<int>{2};
        EXPECT_EQ(fds, expected) << "worker " << worker << ": " << listed(added_here);
      }
    }
    EXPECT_EQ(first.call([] { return 6; }) * second.call([] { return 7; }), 42);
  }
}

}  // namespace
