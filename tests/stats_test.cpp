// SPDX-License-Identifier: MIT
// Pool::stats(): counts that add up while tasks come and go, errors and replacements counted by
// kind, and per worker its process, tasks and running task.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <multicore/multicore.hpp>
#include <optional>
#include <ranges>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "support/failure.hpp"
#include "support/numbers.hpp"

namespace {

using multicore::Pool;
using multicore::PoolOptions;
using multicore::PoolStats;
using namespace multicore_test;

int pid_of_worker() { return static_cast<int>(getpid()); }

/// Throws for odd inputs: the answer then carries the task's exception.
int odd_throws(int x) {
  if (x % 2 != 0) throw std::runtime_error("odd");
  return x;
}

/// Every task accepted is in exactly one state.
void expect_adds_up(const PoolStats& s) {
  EXPECT_EQ(s.submitted, s.queued + s.running + s.done + s.failed + s.abandoned);
  const PoolStats::Failed& by = s.failed_by;
  EXPECT_EQ(s.failed, by.worker_lost + by.task_timeout + by.pool_closed + by.cancelled + by.other);
  EXPECT_LE(s.threw, s.done);
}

TEST(Stats, CountsAddUpWhileSeveralThreadsSubmit) {
  Pool pool(PoolOptions{.workers = 2});
  constexpr int threads = 4;
  constexpr int per_thread = 300;
  std::atomic<bool> submitting{true};
  std::thread watcher([&] {
    std::uint64_t last_done = 0;
    while (submitting.load()) {
      const PoolStats s = pool.stats();
      expect_adds_up(s);
      EXPECT_GE(s.done, last_done);  // counts only grow
      last_done = s.done;
    }
  });
  std::vector<std::thread> submitters;
  std::atomic<int> odd_seen{0};
  for (int t = 0; t < threads; ++t) {
    submitters.emplace_back([&, t] {
      std::vector<std::future<int>> futures;
      for (int i = 0; i < per_thread; ++i) futures.push_back(pool.submit(odd_throws, t + i));
      for (auto& f : futures) {
        try {
          f.get();
        } catch (const multicore::RemoteError&) {
          odd_seen.fetch_add(1);
        }
      }
    });
  }
  for (auto& s : submitters) s.join();
  submitting.store(false);
  watcher.join();

  const PoolStats s = pool.stats();
  expect_adds_up(s);
  EXPECT_EQ(s.submitted, std::uint64_t{threads * per_thread});
  EXPECT_EQ(s.done, s.submitted);
  EXPECT_EQ(s.threw, static_cast<std::uint64_t>(odd_seen.load()));
  EXPECT_EQ(s.queued + s.running + s.failed, 0u);
  ASSERT_EQ(s.workers.size(), 2u);
  std::uint64_t tasks = 0;
  for (const multicore::WorkerStats& w : s.workers) tasks += w.tasks;
  EXPECT_EQ(tasks, s.done);
}

TEST(Stats, EachWorkerIsNamedByItsProcess) {
  // One task per worker at a time: each blocks until both have started. (Pipes before the
  // pool: its workers inherit them.)
  Pipe started;
  Pipe release;
  Pool pool(PoolOptions{.workers = 2});
  std::set<int> from_tasks;
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 2; ++i) {
    futures.push_back(pool.submit(
        [](int started_fd, int release_fd) {
          const char c = 1;
          write_all(started_fd, &c, 1);
          char r = 0;
          read_exact(release_fd, &r, 1);
          return static_cast<int>(getpid());
        },
        started.write_fd(), release.read_fd()));
  }
  read_value<char>(started.read_fd());
  read_value<char>(started.read_fd());
  {
    const PoolStats s = pool.stats();
    EXPECT_EQ(s.running, 2u);
    for (const multicore::WorkerStats& w : s.workers) {
      EXPECT_GT(w.current_task.count(), 0) << "worker " << w.index;
      EXPECT_EQ(w.where, "");
    }
  }
  const char go[2] = {1, 1};
  write_all(release.write_fd(), go, 2);
  for (auto& f : futures) from_tasks.insert(f.get());
  std::set<int> from_stats;
  const PoolStats s = pool.stats();
  for (const multicore::WorkerStats& w : s.workers) {
    from_stats.insert(w.pid);
    EXPECT_EQ(w.tasks, 1u);
    EXPECT_GT(w.busy.count(), 0);
    EXPECT_EQ(w.current_task.count(), 0);
  }
  EXPECT_EQ(from_stats, from_tasks);
}

TEST(Stats, ACrashIsAWorkerLostAndAReplacement) {
  Pool pool(PoolOptions{.workers = 1});
  const int first = pool.call(pid_of_worker);
  EXPECT_THROW(pool.submit([] { segfault_by_raise(); }).get(), multicore::WorkerLost);
  const int second = pool.call(pid_of_worker);  // runs on the replacement: the death was seen
  const PoolStats s = pool.stats();
  expect_adds_up(s);
  EXPECT_EQ(s.failed_by.worker_lost, 1u);
  EXPECT_EQ(s.replaced.crashed, 1u);
  EXPECT_EQ(s.workers[0].replaced, 1u);
  EXPECT_NE(first, second);
  EXPECT_EQ(s.workers[0].pid, second);
}

TEST(Stats, ATimeoutIsCountedAsOne) {
  Pool pool(PoolOptions{.workers = 1, .task_timeout = std::chrono::milliseconds(200)});
  EXPECT_THROW(pool.submit([] { hang_forever(); }).get(), multicore::TaskTimeout);
  (void)pool.call(pid_of_worker);
  const PoolStats s = pool.stats();
  expect_adds_up(s);
  EXPECT_EQ(s.failed_by.task_timeout, 1u);
  EXPECT_EQ(s.replaced.timed_out, 1u);
  EXPECT_EQ(s.replaced.crashed, 0u);
}

TEST(Stats, AWorkerThatRanItsTasksIsRetired) {
  Pool pool(PoolOptions{.workers = 1, .max_tasks_per_worker = 2});
  for (int i = 0; i < 3; ++i) (void)pool.call(pid_of_worker);  // the third needs a new process
  const PoolStats s = pool.stats();
  EXPECT_EQ(s.replaced.retired, 1u);
  EXPECT_EQ(s.replaced.crashed, 0u);
  EXPECT_EQ(s.done, 3u);
}

TEST(Stats, TerminateFailsWhatIsLeftAsPoolClosed) {
  Pipe started;
  Pool pool(PoolOptions{.workers = 1});
  auto blocked = pool.submit(
      [](int fd) {
        const char c = 1;
        write_all(fd, &c, 1);
        hang_forever();
      },
      started.write_fd());
  auto queued = pool.submit(pid_of_worker);
  read_value<char>(started.read_fd());
  pool.terminate();
  EXPECT_THROW(blocked.get(), multicore::PoolClosed);
  EXPECT_THROW(queued.get(), multicore::PoolClosed);
  const PoolStats s = pool.stats();
  expect_adds_up(s);
  EXPECT_EQ(s.failed_by.pool_closed, 2u);
  EXPECT_EQ(s.submitted, 2u);
}

TEST(Stats, ATaskOfAStoppedSourceIsCountedAsCancelled) {
  Pool pool(PoolOptions{.workers = 1});
  multicore::StopSource stop;
  stop.request_stop();
  EXPECT_THROW(pool.submit([](multicore::StopToken) { return 1; }, stop.get_token()).get(),
               multicore::Cancelled);
  const PoolStats s = pool.stats();
  expect_adds_up(s);
  EXPECT_EQ(s.submitted, 1u);
  EXPECT_EQ(s.failed_by.cancelled, 1u);
}

TEST(Stats, InlineModeCountsTasksAndHasNoWorkers) {
  Pool pool(PoolOptions{.run_inline = true});
  EXPECT_EQ(pool.call(odd_throws, 2), 2);
  EXPECT_THROW(pool.call(odd_throws, 3), multicore::RemoteError);
  const PoolStats s = pool.stats();
  EXPECT_EQ(s.submitted, 2u);
  EXPECT_EQ(s.done, 2u);
  EXPECT_EQ(s.threw, 1u);
  EXPECT_TRUE(s.workers.empty());
}

// ----- MapOptions::on_progress ------------------------------------------------------------------

int twice(int x) { return 2 * x; }

struct Heard {
  std::vector<multicore::MapProgress> calls;
  std::vector<std::thread::id> threads;
};

multicore::MapOptions listening(Heard& heard, std::chrono::milliseconds interval) {
  multicore::MapOptions options;
  options.chunk_size = 10;
  options.progress_interval = interval;
  options.on_progress = [&heard](const multicore::MapProgress& p) {
    heard.calls.push_back(p);
    heard.threads.push_back(std::this_thread::get_id());
  };
  return options;
}

TEST(Progress, ReportsGrowingCountsOfASizedMapInTheConsumingThread) {
  Pool pool(PoolOptions{.workers = 2});
  std::vector<int> inputs(1000);
  for (int i = 0; i < 1000; ++i) inputs[static_cast<std::size_t>(i)] = i;
  Heard heard;
  long sum = 0;
  for (int r : pool.map(twice, inputs, listening(heard, std::chrono::milliseconds(0)))) sum += r;
  EXPECT_EQ(sum, 999L * 1000);
  ASSERT_FALSE(heard.calls.empty());
  for (std::size_t i = 0; i < heard.calls.size(); ++i) {
    EXPECT_EQ(heard.calls[i].total, std::optional<std::size_t>(1000));
    EXPECT_EQ(heard.threads[i], std::this_thread::get_id());
    if (i > 0) {
      EXPECT_GE(heard.calls[i].done, heard.calls[i - 1].done);
    }
  }
  EXPECT_EQ(heard.calls.back().done, 1000u);
}

TEST(Progress, AnInputWithoutASizeHasNoTotal) {
  Pool pool(PoolOptions{.workers = 2});
  const auto inputs = multicore_test::unsized_numbers(0, 500);
  static_assert(!std::ranges::sized_range<decltype(inputs)>);
  Heard heard;
  std::size_t n = 0;
  for (auto& item :
       pool.map_unordered(twice, inputs, listening(heard, std::chrono::milliseconds(0))).items()) {
    EXPECT_TRUE(item.has_value());
    ++n;
  }
  EXPECT_EQ(n, 500u);
  ASSERT_FALSE(heard.calls.empty());
  EXPECT_EQ(heard.calls.back().total, std::nullopt);
  EXPECT_EQ(heard.calls.back().done, 500u);
}

TEST(Progress, ALongIntervalLeavesOnlyTheFinalReport) {
  Pool pool(PoolOptions{.workers = 2});
  std::vector<int> inputs(300, 1);
  Heard heard;
  for (int r : pool.map(twice, inputs, listening(heard, std::chrono::hours(1)))) EXPECT_EQ(r, 2);
  ASSERT_EQ(heard.calls.size(), 1u);
  EXPECT_EQ(heard.calls[0].done, 300u);
}

}  // namespace
