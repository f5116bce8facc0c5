// SPDX-License-Identifier: MIT
// Threads running as a Pool is made (issue 13): its fork server is forked from this process,
// so what other threads hold at that moment is copied into every worker. Said once on stderr,
// or refused, or ignored, as PoolOptions::other_threads says; multicore's own threads (other
// pools' collectors) do not count. Each case runs in a forked child (a process starts with one
// thread, and "once per process" needs a fresh process), its stderr going to the report pipe.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <multicore/multicore.hpp>
#include <string>
#include <thread>

#include "support/in_child.hpp"
#include "support/leak_check.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using multicore::OtherThreads;
using multicore::Pool;
using multicore::PoolOptions;
using multicore_test::in_child;
using namespace std::chrono_literals;

int square(int x) { return x * x; }

PoolOptions one_worker(OtherThreads policy = OtherThreads::warn) {
  PoolOptions o;
  o.workers = 1;
  o.other_threads = policy;
  return o;
}

/// A thread of the application that waits until released (joined by the destructor).
class BusyThread {
 public:
  BusyThread() : thread_([f = release_.get_future()]() mutable { f.wait(); }) {}
  ~BusyThread() {
    release_.set_value();
    thread_.join();
  }
  BusyThread(const BusyThread&) = delete;
  BusyThread& operator=(const BusyThread&) = delete;

 private:
  std::promise<void> release_;
  std::thread thread_;
};

/// Runs `scenario` in a child whose stderr is the report; returns what it wrote there.
template <class Scenario>
std::string stderr_of(Scenario scenario) {
  const auto end = in_child(
      [&](int report) {
        dup2(report, STDERR_FILENO);
        return scenario();
      },
      30s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
  return end.report;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

constexpr char warning[] = "multicore: this process runs 1 other thread(s) as a Pool is made";

TEST(OtherThreads, AnApplicationThreadIsReportedOnceWithWhatToDo) {
  const std::string said = stderr_of([] {
    BusyThread busy;
    Pool first(one_worker());
    Pool second(one_worker());
    return first.submit(square, 3).get() + second.submit(square, 4).get() == 25 ? 0 : 1;
  });
  EXPECT_EQ(count(said, warning), 1u) << said;
  EXPECT_NE(said.find("before starting threads"), std::string::npos) << said;
  EXPECT_NE(said.find("PoolOptions::other_threads = multicore::OtherThreads::ignore"),
            std::string::npos)
      << said;
}

TEST(OtherThreads, PoolsOwnThreadsDoNotCount) {
  const std::string said = stderr_of([] {
    Pool first(one_worker());
    multicore::MapOptions threaded;
    threaded.threads_per_worker = 2;
    long sum = 0;
    for (int r : first.map(square, std::vector<int>{1, 2, 3, 4}, threaded)) sum += r;
    Pool second(one_worker());  // while the first's collector thread runs
    return sum == 30 && second.submit(square, 2).get() == 4 ? 0 : 1;
  });
  EXPECT_EQ(said, "");
}

// A pool made right after another, before the first's threads had run, counted them as the
// application's (they name themselves as they start): the second warned or, here, refused.
// Regression test. (Under ASan, such a half-started thread also held an allocator lock that the
// second pool's fork server and workers inherited held, and an application forking at that
// moment hung in its child.)
TEST(OtherThreads, APoolJustMadeHasStartedItsThreads) {
  const std::string said = stderr_of([] {
    for (int i = 0; i < 20; ++i) {
      Pool first(one_worker());
      try {
        Pool second(one_worker(OtherThreads::error));
      } catch (const multicore::Error& e) {
        std::fprintf(stderr, "pool %d: %s\n", i, e.what());
        return 1;
      }
    }
    return 0;
  });
  EXPECT_EQ(said, "");
}

TEST(OtherThreads, ErrorRefusesToMakeThePool) {
  const std::string said = stderr_of([] {
    BusyThread busy;
    try {
      Pool pool(one_worker(OtherThreads::error));
      return 1;
    } catch (const multicore::Error& e) {
      const std::string what = e.what();
      return what.find("runs 1 other thread(s) as a Pool is made") != std::string::npos ? 0 : 2;
    }
  });
  EXPECT_EQ(said, "");
}

TEST(OtherThreads, IgnoreSaysNothing) {
  const std::string said = stderr_of([] {
    BusyThread busy;
    Pool pool(one_worker(OtherThreads::ignore));
    return pool.submit(square, 5).get() == 25 ? 0 : 1;
  });
  EXPECT_EQ(said, "");
}

TEST(OtherThreads, InlineModeForksNothingAndSaysNothing) {
  const std::string said = stderr_of([] {
    BusyThread busy;
    PoolOptions o = one_worker();
    o.run_inline = true;
    Pool pool(o);
    return pool.submit(square, 5).get() == 25 ? 0 : 1;
  });
  EXPECT_EQ(said, "");
}

TEST(OtherThreads, OpenMpThreadsStartedBeforeThePoolAreReported) {
#ifdef _OPENMP
  const std::string said = stderr_of([] {
    int threads = 0;
#pragma omp parallel num_threads(2)
    {
#pragma omp single
      threads = omp_get_num_threads();
    }
    Pool pool(one_worker());  // OpenMP keeps its team's thread alive after the region
    return threads == 2 && pool.submit(square, 6).get() == 36 ? 0 : 1;
  });
  EXPECT_EQ(count(said, warning), 1u) << said;
#else
  GTEST_SKIP() << "built without OpenMP";
#endif
}

}  // namespace
