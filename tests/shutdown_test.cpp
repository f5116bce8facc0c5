// SPDX-License-Identifier: MIT
// Tests for Pool::shutdown, Pool::terminate and the destructor: submitted work finishes (or is
// cut off with PoolClosed), repeated and mixed calls are fine, concurrent submitters see either
// success or PoolClosed, and no process outlives the pool.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <future>
#include <latch>
#include <memory>
#include <multicore/multicore.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support/leak_check.hpp"
#include "support/workers.hpp"

namespace {

using multicore::Pool;
using multicore::PoolClosed;
using multicore::PoolOptions;
using namespace std::chrono_literals;

int slow_square(int x) {
  usleep(3'000);
  return x * x;
}

int square(int x) { return x * x; }

// Never returns: only terminate() (SIGKILL) ends it.
int block_forever(int /*x*/) {
  for (;;) pause();
}

template <class T>
bool is_ready(const std::future<T>& f) {
  return f.wait_for(0s) == std::future_status::ready;
}

/// What `f.get()` throws: "PoolClosed", "value" if it returns, or "other: <what>".
template <class T>
std::string outcome_of(std::future<T>& f) {
  try {
    (void)f.get();
    return "value";
  } catch (const PoolClosed&) {
    return "PoolClosed";
  } catch (const std::exception& e) {
    return std::string("other: ") + e.what();
  }
}

class ShutdownTest : public multicore_test::WorkerCountTest {};

INSTANTIATE_TEST_SUITE_P(Workers, ShutdownTest, multicore_test::worker_counts(),
                         multicore_test::worker_count_name);

TEST_P(ShutdownTest, ShutdownWaitsForSubmittedWork) {
  Pool pool(options());
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 50; ++i) futures.push_back(pool.submit(slow_square, i));
  pool.shutdown();
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(is_ready(futures[static_cast<std::size_t>(i)])) << "task " << i;
    EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), i * i);
  }
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{}) << "shutdown() left processes";
  EXPECT_THROW(pool.submit(square, 1), PoolClosed);
  EXPECT_EQ(pool.size(), GetParam() == 0 ? multicore::usable_cores() : GetParam());
}

TEST_P(ShutdownTest, DestructorWaitsForSubmittedWork) {
  std::vector<std::future<int>> futures;
  {
    Pool pool(options());
    for (int i = 0; i < 50; ++i) futures.push_back(pool.submit(slow_square, i));
  }
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(is_ready(futures[static_cast<std::size_t>(i)])) << "task " << i;
    EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), i * i);
  }
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
}

TEST_P(ShutdownTest, DestructorWaitsForMapWorkInFlight) {
  std::vector<int> got;
  {
    Pool pool(options());
    auto results = pool.map(slow_square, std::vector<int>{1, 2, 3, 4, 5, 6});
    for (int r : results) got.push_back(r);
    auto f = pool.submit(slow_square, 9);
    EXPECT_EQ(f.get(), 81);
  }
  EXPECT_EQ(got, (std::vector<int>{1, 4, 9, 16, 25, 36}));
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
}

TEST_P(ShutdownTest, ShutdownTwiceIsFine) {
  Pool pool(options());
  auto f = pool.submit(square, 6);
  pool.shutdown();
  pool.shutdown();
  ASSERT_TRUE(is_ready(f));
  EXPECT_EQ(f.get(), 36);
  EXPECT_THROW(pool.submit(square, 1), PoolClosed);
}

TEST_P(ShutdownTest, TerminateCutsOffUnfinishedTasksWithPoolClosed) {
  Pool pool(options());
  auto done = pool.submit(square, 5);
  EXPECT_EQ(done.get(), 25);
  // Enough blocked tasks to fill every worker, its queue, and the pool's pending queue.
  const std::size_t n = 2 * pool.size() + 3;
  std::vector<std::future<int>> blocked;
  for (std::size_t i = 0; i < n; ++i) blocked.push_back(pool.submit(block_forever, 0));
  pool.terminate();  // must return although every worker is stuck (the ctest timeout guards)
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(is_ready(blocked[i])) << "task " << i << " unresolved after terminate()";
    EXPECT_EQ(outcome_of(blocked[i]), "PoolClosed") << "task " << i;
  }
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{}) << "terminate() left processes";
  EXPECT_THROW(pool.submit(square, 1), PoolClosed);
}

TEST_P(ShutdownTest, TerminateThenShutdown) {
  Pool pool(options());
  auto blocked = pool.submit(block_forever, 0);
  pool.terminate();
  pool.shutdown();  // returns at once: nothing left to wait for
  pool.terminate();
  EXPECT_EQ(outcome_of(blocked), "PoolClosed");
  EXPECT_THROW(pool.submit(square, 1), PoolClosed);
}

TEST_P(ShutdownTest, ShutdownThenTerminate) {
  Pool pool(options());
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 10; ++i) futures.push_back(pool.submit(slow_square, i));
  pool.shutdown();
  pool.terminate();  // nothing unfinished: the results stand
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), i * i) << "task " << i;
  }
  EXPECT_THROW(pool.submit(square, 1), PoolClosed);
}

TEST_P(ShutdownTest, DestructorAfterTerminateWithBlockedTasks) {
  std::optional<std::future<int>> blocked;
  {
    Pool pool(options());
    blocked = pool.submit(block_forever, 0);
    pool.terminate();
  }
  EXPECT_EQ(outcome_of(*blocked), "PoolClosed");
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
}

TEST_P(ShutdownTest, ShutdownWhileOtherThreadsSubmit) {
  constexpr int threads = 4;
  constexpr int submits_before_shutdown = 20;
  Pool pool(options());
  std::latch warmed_up(threads);
  struct Record {
    std::vector<std::future<int>> futures;
    std::vector<int> inputs;
    int attempts = 0;
    int closed = 0;
    std::string other_error;
  };
  std::vector<Record> records(threads);
  std::vector<std::thread> submitters;
  for (int t = 0; t < threads; ++t) {
    submitters.emplace_back([&pool, &warmed_up, &rec = records[static_cast<std::size_t>(t)], t] {
      for (int i = 0;; ++i) {
        ++rec.attempts;
        try {
          const int input = t * 100000 + i;
          rec.futures.push_back(pool.submit(square, input % 40000));
          rec.inputs.push_back(input % 40000);
        } catch (const PoolClosed&) {
          ++rec.closed;
          return;
        } catch (const std::exception& e) {
          rec.other_error = e.what();
          return;
        }
        if (i + 1 == submits_before_shutdown) warmed_up.count_down();
      }
    });
  }
  warmed_up.wait();
  pool.shutdown();
  for (auto& s : submitters) s.join();
  for (int t = 0; t < threads; ++t) {
    Record& rec = records[static_cast<std::size_t>(t)];
    SCOPED_TRACE("thread " + std::to_string(t));
    EXPECT_EQ(rec.other_error, "");
    EXPECT_EQ(rec.closed, 1);
    EXPECT_GE(rec.futures.size(), static_cast<std::size_t>(submits_before_shutdown));
    EXPECT_EQ(rec.attempts, static_cast<int>(rec.futures.size()) + rec.closed);
    for (std::size_t i = 0; i < rec.futures.size(); ++i) {
      // Accepted before shutdown() closed the pool, so shutdown() finished it.
      ASSERT_TRUE(is_ready(rec.futures[i])) << "future " << i;
      EXPECT_EQ(rec.futures[i].get(), rec.inputs[i] * rec.inputs[i]) << "future " << i;
    }
  }
}

TEST(Shutdown, NoProcessAfterDestruction) {
  const std::vector<pid_t> before = multicore_test::child_pids();
  EXPECT_EQ(before, std::vector<pid_t>{});
  {
    Pool pool(PoolOptions{.workers = 2});
    EXPECT_EQ(pool.submit(square, 3).get(), 9);
    EXPECT_FALSE(multicore_test::child_pids().empty());
  }
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
  {
    Pool pool(PoolOptions{.workers = 2});
    (void)pool.submit(block_forever, 0);
    pool.terminate();
  }
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
}

TEST(Shutdown, ManyPoolsOneAfterAnother) {
  for (int i = 0; i < 10; ++i) {
    Pool pool(PoolOptions{.workers = 2});
    EXPECT_EQ(pool.submit(square, i).get(), i * i);
  }
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
}

TEST(Shutdown, TwoPoolsAtOnceShutDownIndependently) {
  Pool first(PoolOptions{.workers = 1});
  auto second = std::make_unique<Pool>(PoolOptions{.workers = 1});
  EXPECT_EQ(second->submit(square, 4).get(), 16);
  second.reset();
  EXPECT_EQ(first.submit(square, 5).get(), 25);
}

// Regression test: a watchdog thread calls terminate() to end a destructor that waits for a hung
// task, the one way to bound ~Pool. terminate() waited for the close the destructor was running,
// then used the scheduler the destructor had just freed (heap-use-after-free under ASan, in most
// runs). Now the destructor waits for terminate() calls in progress. (Any interleaving is valid;
// the delay only makes the interesting one, the destructor already waiting, the likely one.)
TEST(Shutdown, WatchdogTerminateWhileTheDestructorWaits) {
  for (int round = 0; round < 3; ++round) {
    auto pool = std::make_unique<Pool>(PoolOptions{.workers = 2});
    auto stuck = pool->submit(block_forever, 1);
    std::thread watchdog([p = pool.get()] {
      usleep(50'000);
      p->terminate();
    });
    pool.reset();  // waits for `stuck` until the watchdog terminates
    watchdog.join();
    EXPECT_EQ(outcome_of(stuck), "PoolClosed");
  }
}

}  // namespace
