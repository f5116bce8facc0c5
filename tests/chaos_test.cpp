// SPDX-License-Identifier: MIT
// Chaos: thousands of tasks from several threads, a known seeded subset of which crash, throw,
// exit or hang. Every future resolves with exactly its expected outcome, the pool keeps its
// size, and nothing is left behind.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <future>
#include <iostream>
#include <multicore/multicore.hpp>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"

namespace {

using multicore::Pool;
using multicore::PoolOptions;
using multicore::RemoteError;
using multicore::TaskTimeout;
using multicore::WorkerLost;
using namespace std::chrono_literals;

enum class Kind : std::uint8_t { value, segfault, throws, exits, hangs };

std::uint64_t expected_value(std::uint64_t input) { return input * 0x9e3779b97f4a7c15u + 12345; }

std::uint64_t chaos_task(std::uint64_t input, Kind kind) {
  switch (kind) {
    case Kind::value:
      return expected_value(input);
    case Kind::segfault:
      multicore_test::segfault_by_raise();
    case Kind::throws:
      throw std::runtime_error("chaos " + std::to_string(input));
    case Kind::exits:
      _exit(7);
    case Kind::hangs:
      multicore_test::hang_forever();
  }
  return 0;
}

/// The expected outcome of one future; an empty string when it matched.
std::string check(std::future<std::uint64_t>& f, std::uint64_t input, Kind kind) {
  try {
    const std::uint64_t v = f.get();
    if (kind != Kind::value) return "got a value, expected a failure";
    return v == expected_value(input) ? "" : "wrong value " + std::to_string(v);
  } catch (const std::exception& e) {
    const std::string got = multicore::detail::demangle(typeid(e).name()) + ": " + e.what();
    if (typeid(e) == typeid(WorkerLost)) {
      const auto& lost = static_cast<const WorkerLost&>(e);
      if (kind == Kind::segfault && lost.signal() == SIGSEGV && lost.exit_code() == -1) return "";
      if (kind == Kind::exits && lost.signal() == 0 && lost.exit_code() == 7) return "";
    } else if (typeid(e) == typeid(RemoteError)) {
      const auto& remote = static_cast<const RemoteError&>(e);
      if (kind == Kind::throws && remote.type_name() == "std::runtime_error" &&
          remote.message() == "chaos " + std::to_string(input)) {
        return "";
      }
    } else if (typeid(e) == typeid(TaskTimeout)) {
      if (kind == Kind::hangs) return "";
    }
    return "unexpected " + got;
  }
}

TEST(Chaos, EveryFutureResolvesWithExactlyItsExpectedOutcome) {
  constexpr unsigned workers = 2;
  constexpr int threads = 4;
  constexpr int per_thread = 750;
  constexpr int tasks = threads * per_thread;

  // The plan, from a fixed seed: 2% segfault, 2% throw, 2% _exit(7), 1% hang past the timeout.
  std::mt19937_64 rng(20240611);
  std::vector<Kind> plan(tasks);
  std::array<int, 5> counts{};
  for (Kind& k : plan) {
    const auto roll = rng() % 1000;
    k = roll < 20   ? Kind::segfault
        : roll < 40 ? Kind::throws
        : roll < 60 ? Kind::exits
        : roll < 70 ? Kind::hangs
                    : Kind::value;
    ++counts[static_cast<std::size_t>(k)];
  }
  const int deaths = counts[1] + counts[3] + counts[4];
  ASSERT_GT(counts[4], 0);

  const std::size_t fds_before = multicore_test::open_fd_count();
  const std::set<std::string> shm_before = multicore_test::shm_entries();
  const auto began = std::chrono::steady_clock::now();
  {
    multicore_test::Pipe starts;
    const int starts_fd = starts.write_fd();
    Pool pool(PoolOptions{.workers = workers,
                          .on_worker_start =
                              [starts_fd] {
                                const pid_t self = getpid();
                                multicore_test::write_all(starts_fd, &self, sizeof self);
                              },
                          .task_timeout = 400ms});
    const std::vector<pid_t> children = multicore_test::child_pids();
    ASSERT_EQ(children.size(), 1u);
    const pid_t fork_server = children[0];

    // size() as every submitter sees it, after each of its submissions.
    std::atomic<int> size_changes{0};

    std::vector<std::future<std::uint64_t>> futures(tasks);
    std::vector<std::thread> submitters;
    for (int t = 0; t < threads; ++t) {
      submitters.emplace_back([&, t] {
        for (int i = t * per_thread; i < (t + 1) * per_thread; ++i) {
          const auto index = static_cast<std::size_t>(i);
          futures[index] = pool.submit(chaos_task, static_cast<std::uint64_t>(i), plan[index]);
          if (pool.size() != workers) ++size_changes;
        }
      });
    }
    for (auto& s : submitters) s.join();

    int mismatches = 0;
    for (int i = 0; i < tasks; ++i) {
      const auto index = static_cast<std::size_t>(i);
      const std::string problem = check(futures[index], static_cast<std::uint64_t>(i), plan[index]);
      if (!problem.empty() && ++mismatches <= 20) {
        ADD_FAILURE() << "task " << i << " (kind " << static_cast<int>(plan[index])
                      << "): " << problem;
      }
    }
    EXPECT_EQ(mismatches, 0);
    EXPECT_EQ(size_changes.load(), 0);

    // Every death was followed by exactly one replacement; every start reported its pid. Once
    // all have reported, exactly `workers` of them are alive: the fork server's children.
    std::vector<pid_t> started;
    for (int i = 0; i < static_cast<int>(workers) + deaths; ++i) {
      started.push_back(multicore_test::read_value<pid_t>(starts.read_fd()));
    }
    std::vector<pid_t> alive;
    for (pid_t pid : started) {
      if (multicore_test::running(pid)) alive.push_back(pid);
    }
    std::sort(alive.begin(), alive.end());
    EXPECT_EQ(alive.size(), workers);
    EXPECT_EQ(multicore_test::live_children_of(fork_server), alive);
    EXPECT_EQ(pool.size(), workers);
    // The pool still works after all that.
    EXPECT_EQ(pool.submit(chaos_task, std::uint64_t{7}, Kind::value).get(), expected_value(7));
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - began);

  // Nothing left behind: the fork server and every worker are reaped, no fd or /dev/shm entry
  // remains (the global leak check repeats this after the last test).
  EXPECT_TRUE(multicore_test::child_pids().empty());
  EXPECT_EQ(multicore_test::open_fd_count(), fds_before);
  EXPECT_EQ(multicore_test::shm_entries(), shm_before);

  std::cout << "[   INFO   ] " << tasks << " tasks (" << counts[0] << " values, " << counts[1]
            << " segfaults, " << counts[2] << " throws, " << counts[3] << " exits, " << counts[4]
            << " hangs) in " << took.count() << " ms\n";
  RecordProperty("chaos_ms", std::to_string(took.count()));
}

}  // namespace
