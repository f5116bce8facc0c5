// SPDX-License-Identifier: MIT
// MapOptions::threads_per_worker's threads belong to one process and one run: concurrent
// inline maps do not share them, and no fork (a pool made later, a pool made inside a worker)
// inherits threads that do not exist in it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <future>
#include <multicore/multicore.hpp>
#include <thread>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"

namespace {

using multicore::MapOptions;
using multicore::Pool;
using multicore::PoolOptions;
using multicore_test::Numbers;

const MapOptions threaded{.chunk_size = 64, .threads_per_worker = 4};

long square(int x) { return static_cast<long>(x) * x; }

/// Maps square over [0, n) with `threaded` options; true if every result is right.
bool threaded_map_is_right(Pool& pool, int n) {
  int expected = 0;
  for (long r : pool.map(square, Numbers(0, n), threaded)) {
    if (r != square(expected++)) return false;
  }
  return expected == n;
}

/// Runs `scenario` in a forked child (so that a deadlock cannot hang the test, and no thread it
/// leaves behind reaches the other tests) and says whether it returned true within the
/// liveness bound. A child still running then is killed.
template <class Scenario>
::testing::AssertionResult succeeds_in_child(Scenario scenario) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return ::testing::AssertionFailure() << "fork failed";
  if (pid == 0) {
    bool ok = false;
    try {
      ok = scenario();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "scenario threw: %s\n", e.what());
    }
    std::fflush(nullptr);
    _exit(ok ? 0 : 1);
  }
  const int pidfd = multicore_test::pidfd_open(pid);
  const bool exited = multicore_test::pidfd_exited_within(pidfd, multicore_test::pipe_liveness);
  close(pidfd);
  if (!exited) kill(pid, SIGKILL);
  const int status = multicore_test::reap(pid);
  if (!exited) {
    return ::testing::AssertionFailure()
           << "still running after " << multicore_test::pipe_liveness.count() << " ms: deadlocked";
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "wrong results (wait status " << status << ")";
}

// Inline maps run on the calling thread; threaded ones on several threads at once each.
TEST(ThreadTeam, ConcurrentThreadedInlineMapsEachGetTheirOwnResults) {
  EXPECT_TRUE(succeeds_in_child([] {
    Pool pool(PoolOptions{.workers = 2, .run_inline = true});
    std::vector<std::future<bool>> runs;
    for (int t = 0; t < 4; ++t) {
      runs.push_back(std::async(std::launch::async, [&pool] {
        bool right = true;
        for (int round = 0; round < 20; ++round) right = threaded_map_is_right(pool, 1000) && right;
        return right;
      }));
    }
    bool right = true;
    for (auto& run : runs) right = run.get() && right;
    return right;
  }));
}

// The pool made after a threaded inline map forks this process: its workers must not inherit
// the inline map's threads (which do not exist in a fork) as theirs.
TEST(ThreadTeam, PoolMadeAfterAThreadedInlineMapRunsThreadedMaps) {
  EXPECT_TRUE(succeeds_in_child([] {
    bool right = false;
    {
      Pool inline_pool(PoolOptions{.workers = 1, .run_inline = true});
      right = threaded_map_is_right(inline_pool, 500);
    }
    Pool pool(PoolOptions{.workers = 1});
    return threaded_map_is_right(pool, 500) && right;
  }));
}

bool pool_in_worker_runs_threaded_maps() {
  Pool inner(PoolOptions{.workers = 1});
  return threaded_map_is_right(inner, 500);
}

// A worker that ran threaded chunks has threads of its own; a pool made inside it forks it,
// and that pool's workers must start with none.
TEST(ThreadTeam, PoolMadeInAWorkerThatRanThreadedChunksRunsThreadedMaps) {
  Pool pool(PoolOptions{.workers = 1});
  multicore_test::TerminateIfFailed guard(pool);
  ASSERT_TRUE(threaded_map_is_right(pool, 500));
  auto nested = pool.submit(pool_in_worker_runs_threaded_maps);
  ASSERT_TRUE(multicore_test::ready_within(nested));
  EXPECT_TRUE(nested.get());
}

}  // namespace
