// SPDX-License-Identifier: MIT
// Pool::call: the synchronous form of submit, whose caller collects answers from the rings.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <future>
#include <memory>
#include <multicore/multicore.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"
#include "support/workers.hpp"

namespace {

using multicore::Pool;
using multicore::PoolOptions;

int twice(int x) { return 2 * x; }
std::string greet(std::string name) { return "hello " + name; }
pid_t process_id() { return getpid(); }

class CallTest : public multicore_test::WorkerCountTest {};

TEST_P(CallTest, ReturnsTheResultFromAWorkerProcess) {
  Pool pool(options());
  EXPECT_EQ(pool.call(twice, 21), 42);
  EXPECT_EQ(pool.call(greet, "world"), "hello world");
  EXPECT_NE(pool.call(process_id), getpid());
  int calls = 0;
  pool.call([] {});  // void
  for (int i = 0; i < 1000; ++i) calls += pool.call(twice, i) == 2 * i ? 1 : 0;
  EXPECT_EQ(calls, 1000);
}

TEST_P(CallTest, ThrowsWhatTheFutureWouldHold) {
  Pool pool(options());
  try {
    pool.call([] { throw std::out_of_range("too far"); });
    FAIL() << "no exception";
  } catch (const multicore::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::out_of_range");
    EXPECT_EQ(e.message(), "too far");
  }
}

TEST_P(CallTest, CrashGivesWorkerLost) {
  Pool pool(options());
  try {
    pool.call([] { multicore_test::segfault_by_raise(); });
    FAIL() << "no exception";
  } catch (const multicore::WorkerLost& e) {
    EXPECT_EQ(e.signal(), SIGSEGV);
    EXPECT_EQ(e.exit_code(), -1);
  }
  EXPECT_EQ(pool.call(twice, 5), 10);  // the worker was replaced
}

TEST_P(CallTest, TimesOut) {
  PoolOptions o = options();
  o.task_timeout = std::chrono::milliseconds(100);
  Pool pool(o);
  EXPECT_THROW(pool.call([] { pause(); }), multicore::TaskTimeout);
  EXPECT_EQ(pool.call(twice, 6), 12);
}

// Every error reaches its caller intact, however quickly the caller drops it. Under TSan this
// is also the regression test for the collector destroying a caller's error: it used to fail
// the call from inside its catch block, which still held the exception when the caller was
// already done with it.
TEST_P(CallTest, EveryErrorArrivesWhole) {
  Pool pool(options());
  int whole = 0;
  constexpr int calls = 500;
  for (int i = 0; i < calls; ++i) {
    try {
      pool.call([](int n) -> int { throw std::runtime_error("error " + std::to_string(n)); }, i);
    } catch (const multicore::RemoteError& e) {
      whole += e.message() == "error " + std::to_string(i) ? 1 : 0;
    }
  }
  EXPECT_EQ(whole, calls);
}

TEST_P(CallTest, ClosedPoolThrowsPoolClosed) {
  Pool pool(options());
  pool.shutdown();
  EXPECT_THROW(pool.call(twice, 1), multicore::PoolClosed);
}

// A caller collects every answer it finds, not only its own: futures submitted by others must
// still be fulfilled, whoever reads their answers.
TEST_P(CallTest, CollectsOtherAnswersToo) {
  Pool pool(options());
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 200; ++i) futures.push_back(pool.submit(twice, i));
  for (int i = 0; i < 200; ++i) EXPECT_EQ(pool.call(twice, -i), -2 * i);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), 2 * i);
}

// Many threads calling at once contend for the right to read the rings; each must get exactly
// its own answer.
TEST_P(CallTest, ManyThreadsAtOnce) {
  Pool pool(options());
  constexpr int threads = 6;
  constexpr int per_thread = 400;
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < threads; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        const int x = t * 100000 + i;
        if (pool.call(twice, x) != 2 * x) wrong.fetch_add(1);
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(wrong.load(), 0);
}

// A long task makes the caller give up spinning and sleep; the collector must then deliver.
TEST_P(CallTest, SleepingCallerIsWokenByTheCollector) {
  Pool pool(options());
  EXPECT_EQ(pool.call(
                [](int x) {
                  std::this_thread::sleep_for(std::chrono::milliseconds(50));
                  return x + 1;
                },
                1),
            2);
}

// terminate() from another thread resolves a blocked call() with PoolClosed.
TEST_P(CallTest, TerminateResolvesABlockedCall) {
  Pool pool(options());
  auto blocked = std::async(std::launch::async, [&] {
    try {
      pool.call([] { pause(); });
      return std::string("returned");
    } catch (const multicore::PoolClosed&) {
      return std::string("PoolClosed");
    }
  });
  // Whether terminate() cuts the task off while it runs or comes before it was submitted, the
  // call must end with PoolClosed; it must never hang.
  pool.terminate();
  EXPECT_EQ(blocked.get(), "PoolClosed");
}

TEST(CallInline, RunsInTheCallingProcess) {
  PoolOptions o;
  o.workers = 2;
  o.run_inline = true;
  Pool pool(o);
  EXPECT_EQ(pool.call(process_id), getpid());
  EXPECT_THROW(pool.call([] { throw 7; }), multicore::RemoteError);
}

// Regression (a TSan report in CI): call()'s slot lives on the caller's stack, and the caller
// leaves as soon as sleep() returns. The delivering thread used to publish `done` before taking
// the slot's mutex to wake the sleeper, so a sleeper that saw `done` on its way into the wait
// (or on a spurious wake-up) could leave, and free the slot, while the deliverer was still
// about to lock that mutex. Here every slot is freed the moment its sleeper returns. TSan
// reports the deliverer's late lock (it did within seconds, every run, with the old protocol);
// the plain and ASan builds rarely hit the narrow window, so the TSan job is the real guard.
TEST(CallResult, SleeperLeavesOnlyWhenTheDelivererIsDoneWithTheResult) {
  using Result = multicore::detail::CallResult<int>;
  constexpr int rounds = 20000;
  std::atomic<Result*> handed{nullptr};
  std::thread deliverer([&] {
    for (int i = 0; i < rounds; ++i) {
      Result* slot = nullptr;
      while ((slot = handed.exchange(nullptr, std::memory_order_acquire)) == nullptr) {
        std::this_thread::yield();
      }
      // Deliver just as the caller goes to sleep: the moment the old protocol got wrong.
      while (!slot->latch.has_sleeper()) {
        std::this_thread::yield();
      }
      slot->value.make([&] { return i; });
      slot->latch.arrive();
    }
  });
  int right = 0;
  for (int i = 0; i < rounds; ++i) {
    auto slot = std::make_unique<Result>();
    handed.store(slot.get(), std::memory_order_release);
    slot->latch.wait();
    right += slot->take() == i ? 1 : 0;
  }
  deliverer.join();
  EXPECT_EQ(right, rounds);
}

INSTANTIATE_TEST_SUITE_P(Workers, CallTest, multicore_test::worker_counts(),
                         multicore_test::worker_count_name);

}  // namespace
