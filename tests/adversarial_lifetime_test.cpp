// SPDX-License-Identifier: MIT
// Adversarial lifetimes and races between the application's threads that the library withstands
// (issue 8, hardening): terminate() against call(), Task::get, map and shutdown() in other
// threads; every entry point at once; nested maps; futures, Tasks and map ranges that outlive
// or follow their pool. Run under TSan and ASan too. Scenarios that could hang run in a forked
// child with a time limit. What still breaks is in adversarial_failing_test.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <latch>
#include <memory>
#include <multicore/multicore.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"

namespace {

using multicore::Pool;
using multicore::PoolClosed;
using multicore::PoolOptions;
using multicore_test::error_of;
using multicore_test::in_child;
using multicore_test::say;
using namespace std::chrono_literals;

PoolOptions workers(unsigned n) {
  PoolOptions o;
  o.workers = n;
  return o;
}

int square(int x) { return x * x; }
int plus_one(int x) { return x + 1; }
int hang(int /*x*/) { multicore_test::hang_forever(); }

int slow_plus_one(int x) {
  usleep(2'000);
  return x + 1;
}

// ----- terminate() against the other entry points -------------------------------------------

// 16 threads in call() while another terminates: every call returns its value or throws
// PoolClosed, none hangs, none gets anything else.
TEST(AdversarialLifetime, CallFrom16ThreadsWhileAnotherTerminates) {
  const auto end = in_child(
      [](int report) {
        for (int round = 0; round < 3; ++round) {
          Pool pool(workers(2));
          std::atomic<int> outcomes{0};
          std::atomic<int> wrong{0};
          std::latch started(17);
          std::vector<std::thread> callers;
          for (int t = 0; t < 16; ++t) {
            callers.emplace_back([&] {
              started.arrive_and_wait();
              for (int i = 0; i < 100; ++i) {
                try {
                  if (pool.call(square, i) != i * i) ++wrong;
                } catch (const PoolClosed&) {
                } catch (...) {
                  ++wrong;
                }
                ++outcomes;
              }
            });
          }
          started.arrive_and_wait();
          pool.terminate();
          for (std::thread& t : callers) t.join();
          if (wrong != 0 || outcomes != 1600) {
            say(report, std::to_string(wrong) + " wrong of " + std::to_string(outcomes));
            return 1;
          }
        }
        return 0;
      },
      40s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// shutdown() waits for a task that never ends; terminate() from a second thread ends it, while a
// third keeps submitting: all three return, the submitter sees values or PoolClosed.
TEST(AdversarialLifetime, ShutdownTerminateAndSubmitFromThreeThreads) {
  const auto end = in_child(
      [](int report) {
        for (int round = 0; round < 3; ++round) {
          Pool pool(workers(2));
          auto stuck = pool.submit(hang, 1);
          std::atomic<bool> stop{false};
          std::atomic<int> wrong{0};
          std::thread submitter([&] {
            while (!stop) {
              try {
                auto f = pool.submit(square, 2);
                if (f.get() != 4) ++wrong;
              } catch (const PoolClosed&) {
              } catch (...) {
                ++wrong;
              }
            }
          });
          std::thread closer([&] { pool.shutdown(); });
          std::thread terminator([&] { pool.terminate(); });
          closer.join();
          terminator.join();
          stop = true;
          submitter.join();
          try {
            (void)stuck.get();
            ++wrong;
          } catch (const PoolClosed&) {
          }
          if (wrong != 0) {
            say(report, std::to_string(wrong) + " wrong outcomes");
            return 1;
          }
        }
        return 0;
      },
      40s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// Task::get() helps collect while another thread terminates: it throws PoolClosed.
TEST(AdversarialLifetime, TaskGetWhileAnotherThreadTerminates) {
  const auto end = in_child(
      [](int report) {
        for (int round = 0; round < 3; ++round) {
          Pool pool(workers(2));
          multicore::Task<int> task(pool);
          for (int i = 0; i < 10; ++i) task.run(hang, i);
          std::thread terminator([&] { pool.terminate(); });
          try {
            (void)task.get();
            say(report, "get() returned values");
            terminator.join();
            return 1;
          } catch (const PoolClosed&) {
          }
          terminator.join();
        }
        return 0;
      },
      40s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// A map waiting for its first chunks while another thread terminates: items throw PoolClosed
// (and ++ may too, when it can no longer send), none hangs, none has a value.
TEST(AdversarialLifetime, MapWhileAnotherThreadTerminates) {
  const auto end = in_child(
      [](int report) {
        for (int round = 0; round < 3; ++round) {
          Pool pool(workers(2));
          std::thread terminator;
          int closed = 0;
          int values = 0;
          try {
            auto results = pool.map(hang, multicore_test::Numbers(0, 100), {.chunk_size = 2});
            terminator = std::thread([&] { pool.terminate(); });
            for (auto it = results.begin(); it != results.end(); ++it) {
              try {
                (void)*it;
                ++values;
              } catch (const PoolClosed&) {
                ++closed;
              }
            }
          } catch (const PoolClosed&) {
            ++closed;
          }
          terminator.join();
          if (values != 0) {
            say(report, "a hung item has a value");
            return 1;
          }
          if (closed == 0) {
            say(report, "no PoolClosed");
            return 1;
          }
        }
        return 0;
      },
      40s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// ----- Everything at once --------------------------------------------------------------------

// Eight threads, each cycling through map, call, submit and Task on one pool.
TEST(AdversarialLifetime, EveryEntryPointFromEightThreads) {
  Pool pool(workers(2));
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 8; ++round) {
        switch ((t + round) % 4) {
          case 0: {
            long sum = 0;
            for (int x : pool.map(plus_one, multicore_test::Numbers(0, 500))) sum += x;
            if (sum != 500L * 501 / 2) ++wrong;
            break;
          }
          case 1:
            for (int i = 0; i < 30; ++i) {
              if (pool.call(square, i) != i * i) ++wrong;
            }
            break;
          case 2: {
            std::vector<std::future<int>> futures;
            for (int i = 0; i < 30; ++i) futures.push_back(pool.submit(square, i));
            for (int i = 0; i < 30; ++i) {
              if (futures[static_cast<std::size_t>(i)].get() != i * i) ++wrong;
            }
            break;
          }
          default: {
            multicore::Task<int> task(pool);
            for (int i = 0; i < 30; ++i) task.run(square, i);
            const std::vector<int> results = task.get();
            for (int i = 0; i < 30; ++i) {
              if (results[static_cast<std::size_t>(i)] != i * i) ++wrong;
            }
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

// A map whose input is another map: on the same pool (the outer map's chunks and the inner
// map's wait for the same workers), and across two pools.
TEST(AdversarialLifetime, MapOverAMapOnTheSamePoolAndAcrossTwoPools) {
  Pool pool(workers(2));
  Pool other(workers(2));
  const multicore_test::Numbers inputs(0, 20'000);
  const long expected = 20'000L * 19'999 / 2 + 2 * 20'000L;
  long sum = 0;
  for (int x : pool.map(plus_one, pool.map(plus_one, inputs))) sum += x;
  EXPECT_EQ(sum, expected);
  sum = 0;
  for (int x : other.map(plus_one, pool.map(plus_one, inputs))) sum += x;
  EXPECT_EQ(sum, expected);
  sum = 0;
  for (int x : pool.map(slow_plus_one, other.map(slow_plus_one, multicore_test::Numbers(0, 100)),
                        {.chunk_size = 3})) {
    sum += x;
  }
  EXPECT_EQ(sum, 100L * 99 / 2 + 200);
}

// ----- What outlives its pool ----------------------------------------------------------------

TEST(AdversarialLifetime, FuturesOutliveTheirPool) {
  std::vector<std::future<int>> finished;
  std::future<int> cut_off;
  {
    Pool pool(workers(2));
    for (int i = 0; i < 20; ++i) finished.push_back(pool.submit(square, i));
    pool.shutdown();
  }
  {
    Pool pool(workers(1));
    cut_off = pool.submit(hang, 1);
    pool.terminate();
  }
  for (int i = 0; i < 20; ++i) EXPECT_EQ(finished[static_cast<std::size_t>(i)].get(), i * i);
  EXPECT_TRUE(error_of<PoolClosed>(cut_off));
}

// A Task whose runs all finished before its pool was destroyed still hands out their results.
TEST(AdversarialLifetime, TaskGetAfterItsPoolIsGone) {
  auto pool = std::make_unique<Pool>(workers(2));
  multicore::Task<int> task(*pool);
  for (int i = 0; i < 20; ++i) task.run(square, i);
  pool.reset();  // waits for the runs
  const std::vector<int> results = task.get();
  ASSERT_EQ(results.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(results[static_cast<std::size_t>(i)], i * i);
}

// Map ranges destroyed after their pool, never started or half-iterated with chunks in flight:
// the destructor drains them, nothing is touched afterwards (ASan).
TEST(AdversarialLifetime, MapRangesDestroyedAfterTheirPool) {
  const multicore_test::Numbers inputs(0, 1'000);
  auto pool = std::make_unique<Pool>(workers(2));
  auto never_started = pool->map(square, inputs);
  auto half_done = pool->map(slow_plus_one, inputs, {.chunk_size = 5});
  auto it = half_done.begin();
  for (int i = 0; i < 10; ++i) ++it;
  pool.reset();
}

// A map keeps working when its Pool object is moved (it holds the pool's machinery, not the
// Pool object).
TEST(AdversarialLifetime, MapSurvivesItsPoolBeingMoved) {
  Pool first(workers(2));
  auto results = first.map(plus_one, multicore_test::Numbers(0, 10'000), {.chunk_size = 10});
  auto it = results.begin();
  long sum = 0;
  for (int i = 0; i < 100; ++i, ++it) sum += *it;
  Pool second = std::move(first);
  for (; it != results.end(); ++it) sum += *it;
  EXPECT_EQ(sum, 10'000L * 10'001 / 2);
  EXPECT_EQ(second.call(square, 3), 9);
  EXPECT_THROW((void)first.call(square, 3), PoolClosed);  // NOLINT(bugprone-use-after-move)
}

}  // namespace
