// SPDX-License-Identifier: MIT
// Pools and fork(): pools made inside workers (in tasks, in on_worker_start, nested), pools
// made while other threads work, and what a process forked by the application does with them.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <multicore/multicore.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/app.hpp"
#include "support/failure.hpp"
#include "support/leak_check.hpp"

namespace {

using multicore::MapOptions;
using multicore::Pool;
using multicore::PoolOptions;
using multicore_test::AppResult;
using multicore_test::Report;
using multicore_test::run_app;

int twice(int x) { return 2 * x; }

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
// on_worker_start must be able to make a pool too.
TEST(NestedPool, MadeInAReplacementWorkersOnWorkerStart) {
  EXPECT_EQ(
      report_of([](const Report& report) {
        Pool pool(PoolOptions{.workers = 1, .on_worker_start = make_worker_pool});
        const pid_t first = pool.call(worker_pid);
        report.outcome("crash", [&] {
          return pool.submit([] { multicore_test::segfault_by_raise(); }).get(), 0;
        });
        report.line(std::string("replaced: ") + (pool.call(worker_pid) != first ? "yes" : "no"));
        report.outcome("call", [&] { return pool.call(twice_in_worker_pool, 4); });
      }),
      "crash: WorkerLost signal=11 exit_code=-1\nreplaced: yes\ncall: value 8\n");
}

// Another thread of the application hammers a pool (submit and call, answers decoded by the
// collector meanwhile) while pools are made on this one: whatever lock that thread holds at the
// moment of a fork, the new pools' workers must still be able to make pools of their own.
TEST(NestedPool, MadeInWorkersOfAPoolMadeWhileAnotherThreadUsesAPool) {
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

}  // namespace
