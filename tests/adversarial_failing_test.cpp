// SPDX-License-Identifier: MIT
// Adversarial scenarios that break the library today (issue 8, hardening). Every case is
// DISABLED_ so the suite stays green; each fails when run with --gtest_also_run_disabled_tests
// (a few only under a sanitizer, as noted), and becomes the regression test of its fix: drop
// the prefix (and move it next to its feature's tests) once fixed. Scenarios that could hang or
// crash run in a forked child with a time limit (support/in_child.hpp).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <multicore/multicore.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"
#include "support/sanitizer.hpp"
#include "support/shared_counter.hpp"

namespace {

using multicore::Pool;
using multicore::PoolClosed;
using multicore::PoolOptions;
using multicore_test::in_child;
using multicore_test::say;
using namespace std::chrono_literals;

PoolOptions workers(unsigned n) {
  PoolOptions o;
  o.workers = n;
  return o;
}

int crash(int /*x*/) { multicore_test::segfault_by_raise(); }
int hang(int /*x*/) { multicore_test::hang_forever(); }

// ----- The fork server stopped from outside ----------------------------------------------------

// A stopped fork server (SIGSTOP from outside, a debugger) can neither reap nor kill: a worker
// that dies is never reported and a task past task_timeout is never cut off, so both futures
// wait as long as the fork server stays stopped. The parent could see deaths itself (a pidfd per
// worker polls readable at exit, even before the reap) and kill a timed-out worker itself (its
// pid cannot be reused before the fork server reaps it).
TEST(AdversarialFailing, DISABLED_TimeoutsAndDeathsAreReportedWhileTheForkServerIsStopped) {
  const auto end = in_child(
      [](int report) {
        PoolOptions o = workers(2);
        o.task_timeout = 300ms;
        Pool pool(o);
        const std::vector<pid_t> fork_servers = multicore_test::child_pids();
        kill(fork_servers.at(0), SIGSTOP);
        auto crashed = pool.submit(crash, 1);
        auto stuck = pool.submit(hang, 1);
        const bool reported = crashed.wait_for(5s) == std::future_status::ready &&
                              stuck.wait_for(5s) == std::future_status::ready;
        if (!reported) say(report, "a crash or a timeout waited 5 s for the stopped fork server");
        kill(fork_servers.at(0), SIGCONT);
        return reported ? 0 : 1;
      },
      30s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

}  // namespace
