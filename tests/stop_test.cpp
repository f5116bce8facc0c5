// SPDX-License-Identifier: MIT
// StopSource and StopToken: stops seen by running tasks, tasks not started cancelled, grace
// kills, maps cancelled from another thread, tokens of destroyed sources.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <fstream>
#include <future>
#include <iterator>
#include <multicore/multicore.hpp>
#include <optional>
#include <ranges>
#include <string>
#include <thread>
#include <vector>

#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"
#include "support/shared_counter.hpp"

/// A result whose decoding, in the parent, stops a StopSource (a Codec may run any code): it
/// says it is decoding, then waits to be let go (see the test that uses it).
struct StopsWhenDecoded {
  int value = 0;
};
namespace stops_when_decoded {
std::promise<void>* decoding = nullptr;
std::shared_future<void> go;
multicore::StopSource* to_stop = nullptr;
}  // namespace stops_when_decoded

template <>
struct multicore::Codec<StopsWhenDecoded> {
  static void encode(multicore::Writer& out, const StopsWhenDecoded& v) {
    out.write(&v.value, sizeof v.value);
  }
  static StopsWhenDecoded decode(multicore::Reader& in) {
    StopsWhenDecoded v;
    in.read(&v.value, sizeof v.value);
    if (stops_when_decoded::decoding != nullptr) {
      stops_when_decoded::decoding->set_value();
      stops_when_decoded::go.wait();
      stops_when_decoded::to_stop->request_stop();
    }
    return v;
  }
};

namespace {

using namespace std::chrono_literals;
using multicore::Cancelled;
using multicore::Pool;
using multicore::PoolOptions;
using multicore::StopSource;
using multicore::StopToken;
using multicore_test::error_of;
using multicore_test::ready_within;
using multicore_test::SharedCounter;
using multicore_test::TerminateIfFailed;

// Shared with every worker (made before any pool): tasks say they started, or count runs.
SharedCounter started;
SharedCounter ran;

PoolOptions workers(unsigned n) {
  PoolOptions o;
  o.workers = n;
  return o;
}

/// Waits (bounded, as a hang guard) until `counter` reaches `n`; false with a failure if not.
bool reaches(const SharedCounter& counter, int n) {
  const auto give_up = std::chrono::steady_clock::now() + multicore_test::pipe_liveness;
  while ((*counter).load() < n) {
    if (std::chrono::steady_clock::now() > give_up) {
      ADD_FAILURE() << "counter stayed at " << (*counter).load() << ", expected " << n;
      return false;
    }
    std::this_thread::yield();
  }
  return true;
}

/// Says it started, then spins until stopped; returns how many times it looked.
long spin_until_stopped(StopToken stop) {
  ++*started;
  long looks = 0;
  while (!stop.stop_requested()) ++looks;
  return looks;
}

/// Says it started, then blocks on the token (at most a minute).
bool wait_until_stopped(StopToken stop) {
  ++*started;
  return stop.wait_for(60s);
}

/// Ignores its token: only a kill ends it.
int ignore_stop(StopToken) {
  ++*started;
  for (;;) std::this_thread::sleep_for(1s);
}

int count_run(StopToken, int x) {
  ++*ran;
  return x;
}

/// Submits a task that holds the pool's worker until `blocker` is stopped, and waits until it
/// runs: tasks submitted next wait behind it.
std::future<bool> occupy(Pool& pool, const StopSource& blocker) {
  auto busy = pool.submit(wait_until_stopped, blocker.get_token());
  EXPECT_TRUE(reaches(started, 1));
  return busy;
}

/// `n` tasks that carry `source`'s token and count their runs in `ran`.
std::vector<std::future<int>> counting_tasks(Pool& pool, const StopSource& source, int n) {
  std::vector<std::future<int>> tasks;
  for (int i = 0; i < n; ++i) tasks.push_back(pool.submit(count_run, source.get_token(), i));
  return tasks;
}

class Stop : public ::testing::Test {
 protected:
  void SetUp() override {
    (*started).store(0);
    (*ran).store(0);
  }
};

TEST_F(Stop, DefaultTokenNeverStops) {
  const StopToken token;
  EXPECT_FALSE(token.stop_possible());
  EXPECT_FALSE(token.stop_requested());
  EXPECT_FALSE(token.wait_for(1ms));
}

TEST_F(Stop, TokenSeesItsSourceInThisProcess) {
  StopSource source;
  const StopToken token = source.get_token();
  EXPECT_TRUE(token.stop_possible());
  EXPECT_FALSE(token.stop_requested());
  EXPECT_FALSE(token.wait_for(1ms));
  EXPECT_TRUE(source.request_stop());
  EXPECT_FALSE(source.request_stop());  // already
  EXPECT_TRUE(token.stop_requested());
  EXPECT_TRUE(token.wait_for(60s));
  EXPECT_TRUE(StopSource(source).stop_requested());  // copies share the state
}

TEST_F(Stop, RunningTaskSeesStopMadeAfterThePool) {
  Pool pool(workers(2));
  TerminateIfFailed guard(pool);
  StopSource source;  // after the pool: its flag is still shared with the workers
  auto spinning = pool.submit(spin_until_stopped, source.get_token());
  auto waiting = pool.submit(wait_until_stopped, source.get_token());
  ASSERT_TRUE(reaches(started, 2));
  source.request_stop();
  ASSERT_TRUE(ready_within(spinning));
  ASSERT_TRUE(ready_within(waiting));
  EXPECT_GE(spinning.get(), 0);
  EXPECT_TRUE(waiting.get());
}

TEST_F(Stop, TokenCapturedByALambdaWorks) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopSource source;
  auto f = pool.submit([token = source.get_token()] { return wait_until_stopped(token); });
  ASSERT_TRUE(reaches(started, 1));
  source.request_stop();
  ASSERT_TRUE(ready_within(f));
  EXPECT_TRUE(f.get());
}

// Task::run takes a token as it takes any argument: a run not started when its source is
// stopped is cancelled, and a running one sees its own source's stop.
TEST_F(Stop, ATokenPassedToTaskRunIsSeenAndCancelsWhatHasNotStarted) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopSource first, second;
  multicore::Task<bool> task(pool);
  task.run(wait_until_stopped, first.get_token());
  task.run(wait_until_stopped, second.get_token());  // queued behind the first
  ASSERT_TRUE(reaches(started, 1));
  second.request_stop();  // the first still runs: the second has not started
  first.request_stop();
  EXPECT_THROW(task.get(), Cancelled);  // the second run's error, after the first returned
  EXPECT_EQ((*started).load(), 1);
}

TEST_F(Stop, PendingTasksAreCancelledAndNeverRun) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopSource blocker;
  auto busy = occupy(pool, blocker);
  StopSource source;
  // Some wait in the parent's queue, some in the worker's ring: both kinds are cancelled.
  std::vector<std::future<int>> pending = counting_tasks(pool, source, 20);
  EXPECT_TRUE(source.request_stop());
  for (auto& f : pending) {
    ASSERT_TRUE(ready_within(f));
    EXPECT_TRUE(error_of<Cancelled>(f));
  }
  blocker.request_stop();
  ASSERT_TRUE(ready_within(busy));
  EXPECT_TRUE(busy.get());
  pool.shutdown();  // every skipped request answered: nothing ran
  EXPECT_EQ((*ran).load(), 0);
}

// The moment between request_stop() setting the flag and the pools sweeping their queues: a
// worker that takes a task of the source then must skip it (it has not started), and the
// future must say Cancelled. The test sets the flag alone, as request_stop() does first, and
// never lets the sweep run, so any task the worker takes falls in that moment.
TEST_F(Stop, ATaskTakenAfterTheFlagIsSetButBeforeThePoolSweepsIsNotRun) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopSource blocker;
  auto busy = occupy(pool, blocker);
  StopSource source;
  std::vector<std::future<int>> behind = counting_tasks(pool, source, 4);
  const auto flag = multicore::detail::stop_flag(source.get_token());
  ASSERT_TRUE(flag);
  ASSERT_TRUE(multicore::detail::stop_table().stop(flag->slot, flag->word));  // no sweep
  blocker.request_stop();  // the worker goes on to the tasks behind
  ASSERT_TRUE(ready_within(busy));
  for (auto& f : behind) {
    ASSERT_TRUE(ready_within(f));
    EXPECT_TRUE(error_of<Cancelled>(f));
  }
  EXPECT_EQ((*ran).load(), 0);
  const multicore::PoolStats stats = pool.stats();
  EXPECT_EQ(stats.failed_by.cancelled, 4u);
}

TEST_F(Stop, TasksSubmittedWithAStoppedTokenAreCancelled) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopSource source;
  source.request_stop();
  auto f = pool.submit(count_run, source.get_token(), 1);
  ASSERT_TRUE(ready_within(f));
  EXPECT_TRUE(error_of<Cancelled>(f));
  EXPECT_TRUE(multicore_test::thrown_exactly<Cancelled>(
      [&] { (void)pool.call(count_run, source.get_token(), 2); }));
  EXPECT_EQ(pool.call(count_run, StopToken(), 3), 3);
  pool.shutdown();
  EXPECT_EQ((*ran).load(), 1);
}

TEST_F(Stop, GraceKillsTheWorkerOfATaskThatIgnoresStop) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopSource source;
  auto f = pool.submit(ignore_stop, source.get_token());
  ASSERT_TRUE(reaches(started, 1));
  source.request_stop(10ms);
  ASSERT_TRUE(ready_within(f));
  EXPECT_TRUE(error_of<Cancelled>(f));
  // Replaced: the pool runs tasks again.
  EXPECT_EQ(pool.call(count_run, StopToken(), 7), 7);
  EXPECT_EQ(pool.size(), 1u);
}

TEST_F(Stop, GraceCanFollowAPlainStop) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopSource source;
  auto f = pool.submit(ignore_stop, source.get_token());
  ASSERT_TRUE(reaches(started, 1));
  EXPECT_TRUE(source.request_stop());
  EXPECT_FALSE(source.request_stop(0ms));  // stopped already, but the kill still comes
  ASSERT_TRUE(ready_within(f));
  EXPECT_TRUE(error_of<Cancelled>(f));
}

TEST_F(Stop, MapCancelledFromAnotherThreadEnds) {
  Pool pool(workers(2));
  TerminateIfFailed guard(pool);
  StopSource source;
  multicore::MapOptions options;
  options.stop = source.get_token();
  std::thread stopper([&] {
    if (reaches(ran, 100)) source.request_stop();
  });
  std::size_t values = 0;
  std::size_t cancelled = 0;
  bool last_cancelled = false;
  // An endless input: only the stop ends this loop.
  for (auto& item :
       pool.map([](int x) { return count_run({}, x); }, multicore_test::numbers_from(0), options)
           .items()) {
    last_cancelled = !item;
    if (item) {
      ++values;
    } else {
      EXPECT_TRUE(
          multicore_test::thrown_exactly<Cancelled>([&] { std::rethrow_exception(item.error()); }));
      ++cancelled;
    }
  }
  stopper.join();
  EXPECT_GE(values, 1u);
  EXPECT_GE(cancelled, 1u);
  EXPECT_TRUE(last_cancelled);  // Cancelled took the place after the last input read
}

TEST_F(Stop, TokenOfADestroyedSourceReadsStopped) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopToken token;
  {
    StopSource source;
    token = source.get_token();
    EXPECT_FALSE(pool.call([token] { return token.stop_requested(); }));
  }
  EXPECT_TRUE(token.stop_requested());
  // A new source may take the same slot: the old token still reads stopped.
  StopSource next;
  EXPECT_FALSE(next.get_token().stop_requested());
  EXPECT_TRUE(token.stop_requested());
  // Captured: a stopped token as an argument would cancel the task (see the next tests).
  EXPECT_TRUE(pool.call(
      [token, n = next.get_token()] { return token.stop_requested() && !n.stop_requested(); }));
}

TEST_F(Stop, DestroyingTheSourceCancelsItsPendingTasks) {
  Pool pool(workers(1));
  TerminateIfFailed guard(pool);
  StopSource blocker;
  auto busy = occupy(pool, blocker);
  std::optional<StopSource> source(std::in_place);
  auto f = pool.submit(count_run, source->get_token(), 1);
  source.reset();
  ASSERT_TRUE(ready_within(f));
  EXPECT_TRUE(error_of<Cancelled>(f));
  blocker.request_stop();
  ASSERT_TRUE(ready_within(busy));
}

TEST_F(Stop, InlinePoolCancelsAndSeesTokens) {
  PoolOptions o;
  o.run_inline = true;
  Pool pool(o);
  StopSource source;
  EXPECT_FALSE(pool.call([](StopToken t) { return t.stop_requested(); }, source.get_token()));
  source.request_stop();
  auto f = pool.submit(count_run, source.get_token(), 1);
  EXPECT_TRUE(error_of<Cancelled>(f));
  EXPECT_EQ((*ran).load(), 0);
}

TEST_F(Stop, TooManySourcesIsAClearError) {
  std::vector<StopSource> sources;
  std::optional<multicore::Error> error;
  try {
    for (unsigned i = 0; i <= multicore::detail::StopTable::slots; ++i) sources.emplace_back();
  } catch (const multicore::Error& e) {
    error = e;
  }
  ASSERT_TRUE(error);
  EXPECT_NE(std::string(error->what()).find("too many StopSources"), std::string::npos);
  sources.clear();
  EXPECT_NO_THROW(StopSource());  // their slots are free again
}

TEST_F(Stop, ACopyDestroyedInAForkedChildLeavesTheSourceAlone) {
  std::optional<StopSource> source(std::in_place);
  const StopToken token = source->get_token();
  const auto end = multicore_test::in_child(
      [&](int) {
        source.reset();  // the child's copy of the last reference: what exit() would destroy
        return 0;
      },
      multicore_test::pipe_liveness);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
  EXPECT_FALSE(token.stop_requested());
  EXPECT_FALSE(source->stop_requested());
}

StopsWhenDecoded make_stops_when_decoded(int x) { return {x}; }

/// Whether thread `tid` of this process is asleep (blocked), from /proc.
bool asleep(pid_t tid) {
  std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const std::size_t end = line.rfind(')');
  return end != std::string::npos && end + 2 < line.size() && line[end + 2] == 'S';
}

// Regression: request_stop() told the pools while holding the lock of the list of pools. A
// thread stopping source A waited, under that lock, for the pool's collector, which was decoding
// an answer whose Codec stopped source B and so waited for that lock: a deadlock, and every
// future of the pool hung. (In a child: the deadlock would hang this test binary.)
TEST_F(Stop, AStopWhileTheCollectorDecodesACodecThatStopsAnotherSourceDoesNotDeadlock) {
  const auto end = multicore_test::in_child(
      [](int) {
        Pool pool(workers(1));
        StopSource a, b;
        std::promise<void> decoding, go;
        stops_when_decoded::decoding = &decoding;
        stops_when_decoded::go = go.get_future().share();
        stops_when_decoded::to_stop = &b;
        auto answer = pool.submit(make_stops_when_decoded, 7);
        decoding.get_future().wait();  // the collector is decoding, holding what it holds
        std::promise<pid_t> stopper_tid;
        std::thread stopper([&] {
          stopper_tid.set_value(gettid());
          a.request_stop();  // waits for the collector
        });
        const pid_t tid = stopper_tid.get_future().get();
        while (!asleep(tid)) std::this_thread::yield();  // blocked, under whatever it holds
        go.set_value();
        const bool answered = answer.wait_for(10s) == std::future_status::ready;
        if (!answered) _exit(1);  // deadlocked: its threads can neither finish nor be joined
        stopper.join();
        return answer.get().value == 7 && b.stop_requested() && a.stop_requested() ? 0 : 2;
      },
      20s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

TEST_F(Stop, NegativeGraceIsRejected) {
  StopSource source;
  EXPECT_THROW(source.request_stop(-1ms), std::invalid_argument);
  EXPECT_FALSE(source.stop_requested());
}

}  // namespace
