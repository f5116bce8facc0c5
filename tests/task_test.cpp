// SPDX-License-Identifier: MIT
// Tests for Task<R>: results in run() order, failures, misuse, Format::json, and the seed's
// ranges() pattern (workers read the items from a global; only indices travel).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <latch>
#include <map>
#include <memory>
#include <multicore/multicore.hpp>
#include <numeric>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"
#include "support/person.hpp"

namespace {

using namespace std::chrono_literals;
using multicore::Format;
using multicore::Pool;
using multicore::PoolOptions;
using multicore::RemoteError;
using multicore::SerializationError;
using multicore::Task;
using multicore::TaskOptions;

// ----- Functions the tasks run -------------------------------------------------------------------

std::string as_string(int item) { return std::to_string(item); }

// The seed's "items" in global scope: made at static initialisation, so before any Pool forks,
// and every worker sees them without their being sent.
const std::vector<std::string> items = [] {
  std::vector<std::string> v;
  for (int i = 0; i < 100; ++i) v.push_back("item" + std::to_string(i));
  return v;
}();

// The seed's multi_expensive_as_string: works on items[begin, end), receiving only indices.
std::string join_items(std::size_t begin, std::size_t end) {
  std::string out;
  for (std::size_t i = begin; i < end; ++i) {
    if (i != begin) out += ",";
    out += items.at(i);
  }
  return out;
}

int pid_of_runner() { return static_cast<int>(getpid()); }

// Fails for 2 (slowly: it finishes after the failure of 4) and for 4 (at once).
int checked(int x) {
  if (x == 2) {
    usleep(50'000);
    throw std::runtime_error("two");
  }
  if (x == 4) throw std::logic_error("four");
  return x * 10;
}

// Creates `dir/<x>` (so the test can see it ran), then fails like checked().
void mark_then_check(std::string dir, int x) {
  if (x % 3 == 0) usleep(20'000);
  const std::string path = dir + "/" + std::to_string(x);
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) throw std::runtime_error("cannot create " + path);
  std::fclose(f);
  (void)checked(x);
}

// Trivially copyable, no serialize(): fine for Format::binary, not for Format::json.
struct RawPoint {
  int x;
  int y;
  friend bool operator==(const RawPoint&, const RawPoint&) = default;
};

int sum_point(RawPoint p) { return p.x + p.y; }
RawPoint make_point(int x) { return RawPoint{x, -x}; }

/// A fresh empty directory, removed with its contents at the end of the scope.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "task_test.XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::system_error(errno, std::generic_category());
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// The RemoteError that `f()` throws; a test failure if it throws something else or nothing.
template <class F>
RemoteError remote_error_of(F&& f) {
  try {
    f();
    ADD_FAILURE() << "expected a RemoteError, but nothing was thrown";
  } catch (const RemoteError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a RemoteError, got: " << e.what();
  }
  return RemoteError("<none>", "<none>");
}

// ----- Tests -----------------------------------------------------------------------------------

class TaskTest : public ::testing::Test {
 protected:
  Pool pool_{PoolOptions{.workers = 2}};
};

TEST_F(TaskTest, SeedExampleTwentyRunsInRunOrder) {
  Task<std::string> task(pool_);
  EXPECT_TRUE(task);
  for (int i = 0; i < 20; ++i) task.run(as_string, i);
  const std::vector<std::string> results = task.get();
  std::vector<std::string> expected;
  for (int i = 0; i < 20; ++i) expected.push_back(std::to_string(i));
  EXPECT_EQ(results, expected);
}

TEST_F(TaskTest, RunsInWorkerProcesses) {
  Task<int> task(pool_);
  for (int i = 0; i < 6; ++i) task.run(pid_of_runner);
  for (int pid : task.get()) EXPECT_NE(pid, static_cast<int>(getpid()));
}

TEST_F(TaskTest, EmptyTaskGetsNothing) {
  Task<int> task(pool_);
  EXPECT_TRUE(task.get().empty());
  Task<> nothing(pool_);
  EXPECT_NO_THROW(nothing.get());
}

TEST_F(TaskTest, ResultsConvertToR) {
  // The functions return int; Task<double> and Task<long long> convert each result.
  Task<double> task(pool_);
  task.run([](int x) { return x * 3; }, 5);
  task.run(checked, 7);
  EXPECT_EQ(task.get(), (std::vector<double>{15.0, 70.0}));
  // Task<void> ignores results of non-void functions.
  Task<> ignoring(pool_);
  ignoring.run(checked, 1);
  EXPECT_NO_THROW(ignoring.get());
}

TEST_F(TaskTest, VoidGetRethrowsFirstFailureAfterAllFinished) {
  const TempDir dir;
  Task<> task(pool_);
  for (int i = 0; i < 10; ++i) task.run(mark_then_check, dir.path().string(), i);
  const RemoteError e = remote_error_of([&] { task.get(); });
  // The first failure in run() order, although run 4 failed earlier in time.
  EXPECT_EQ(e.type_name(), "std::runtime_error");
  EXPECT_EQ(e.message(), "two");
  // get() returned only after every run finished: each left its mark.
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(std::filesystem::exists(dir.path() / std::to_string(i))) << "run " << i;
  }
}

TEST_F(TaskTest, ValueGetThrowsFirstFailureInRunOrder) {
  Task<int> task(pool_);
  for (int i = 0; i < 8; ++i) task.run(checked, i);
  const RemoteError e = remote_error_of([&] { (void)task.get(); });
  EXPECT_EQ(e.type_name(), "std::runtime_error");
  EXPECT_EQ(e.message(), "two");
}

TEST_F(TaskTest, NonStdExceptionInTask) {
  Task<int> task(pool_);
  task.run([]() -> int { throw 42; });
  const RemoteError e = remote_error_of([&] { (void)task.get(); });
  EXPECT_EQ(e.type_name(), "int");
}

TEST_F(TaskTest, GetTwiceThrowsLogicError) {
  Task<int> task(pool_);
  task.run(checked, 1);
  EXPECT_EQ(task.get(), std::vector<int>{10});
  EXPECT_THROW((void)task.get(), std::logic_error);

  Task<int> failed(pool_);
  failed.run(checked, 4);
  EXPECT_THROW((void)failed.get(), RemoteError);
  EXPECT_THROW((void)failed.get(), std::logic_error);

  Task<> void_task(pool_);
  void_task.run(checked, 1);
  void_task.get();
  EXPECT_THROW(void_task.get(), std::logic_error);
}

TEST_F(TaskTest, RunAfterGetThrowsLogicError) {
  Task<int> task(pool_);
  task.run(checked, 1);
  (void)task.get();
  EXPECT_THROW(task.run(checked, 2), std::logic_error);
  Task<> void_task(pool_);
  void_task.get();
  EXPECT_THROW(void_task.run(checked, 2), std::logic_error);
}

// Copies of a Task would share one batch, and the first get() would take the results from
// the other, which then returned moved-from (empty) values without an error.
static_assert(!std::is_copy_constructible_v<Task<std::string>> &&
              !std::is_copy_assignable_v<Task<std::string>>);
static_assert(std::is_nothrow_move_constructible_v<Task<std::string>> &&
              std::is_nothrow_move_assignable_v<Task<std::string>>);

TEST_F(TaskTest, MovedTaskKeepsItsRuns) {
  Task<std::string> task(pool_);
  task.run(as_string, 1);
  task.run(as_string, 2);
  Task<std::string> moved = std::move(task);
  moved.run(as_string, 3);
  EXPECT_EQ(moved.get(), (std::vector<std::string>{"1", "2", "3"}));
}

// A moved-from Task has no batch: get() and run() dereferenced a null pointer (SIGSEGV).
TEST_F(TaskTest, MovedFromTaskThrowsLogicError) {
  Task<int> task(pool_);
  Task<int> other = std::move(task);
  // NOLINTBEGIN(bugprone-use-after-move): the point of the test
  EXPECT_THROW((void)task.get(), std::logic_error);
  EXPECT_THROW(task.run(checked, 1), std::logic_error);
  Task<> void_task(pool_);
  Task<> void_other = std::move(void_task);
  EXPECT_THROW(void_task.get(), std::logic_error);
  // NOLINTEND(bugprone-use-after-move)
}

// A Task kept a Pool*: once the Pool object was moved (into a member, a vector that grows),
// get() threw PoolClosed "this Pool was moved from" although the pool still ran its runs.
TEST(TaskLifetime, TaskSurvivesItsPoolBeingMoved) {
  Pool a(PoolOptions{.workers = 2});
  Task<int> task(a);
  task.run(checked, 3);
  Pool b = std::move(a);
  task.run(checked, 5);
  EXPECT_EQ(task.get(), (std::vector<int>{30, 50}));
}

// run() after the pool was destroyed read the freed Pool (heap-use-after-free under ASan; in a
// plain build the misleading "cannot be used from inside a worker process" Error).
TEST(TaskLifetime, TaskRunAfterItsPoolIsGoneThrowsPoolClosed) {
  auto pool = std::make_unique<Pool>(PoolOptions{.workers = 2});
  Task<int> task(*pool);
  task.run(checked, 3);
  pool.reset();
  EXPECT_TRUE(multicore_test::thrown_exactly<multicore::PoolClosed>([&] { task.run(checked, 4); }));
  // What ran before the pool went was finished by its destructor.
  EXPECT_EQ(task.get(), std::vector<int>{30});
}

TEST(TaskLifetime, TaskOfAMovedFromPoolThrowsPoolClosed) {
  Pool a(PoolOptions{.workers = 1});
  Pool b = std::move(a);
  Task<int> task(a);  // NOLINT(bugprone-use-after-move): the point of the test
  EXPECT_TRUE(multicore_test::thrown_exactly<multicore::PoolClosed>([&] { task.run(checked, 4); }));
}

// A Pool object, like any standard type, must not be assigned (or destroyed) while other
// threads call its members. What other threads may hold across that is a Task made from it:
// its runs accepted by the old pool get their values (the assignment finishes them), later
// ones throw PoolClosed, and nothing races (TSan). Each thread runs until it sees PoolClosed
// (bounded: a thread that never does is a failure).
TEST(TaskLifetime, TasksOnOtherThreadsOutliveAMoveAssignmentOfTheirPool) {
  constexpr int threads = 4;
  Pool pool(PoolOptions{.workers = 2});
  std::vector<Task<int>> tasks;
  for (int t = 0; t < threads; ++t) tasks.emplace_back(pool);
  std::latch running(threads);
  std::vector<std::size_t> accepted(threads, 0);
  std::vector<std::vector<int>> results(threads);
  std::vector<char> closed(threads, 0);
  std::atomic<bool> give_up{false};
  std::vector<std::thread> users;
  for (int t = 0; t < threads; ++t) {
    users.emplace_back([&, t] {
      const auto i = static_cast<std::size_t>(t);
      try {
        while (!give_up.load()) {
          tasks[i].run(checked, 1);
          if (++accepted[i] == 1) running.count_down();
        }
      } catch (const multicore::PoolClosed&) {
        closed[i] = 1;
      }
      results[i] = tasks[i].get();
    });
  }
  Pool replacement(PoolOptions{.workers = 1});
  running.wait();
  pool = std::move(replacement);
  auto joined = std::async(std::launch::async, [&] {
    for (std::thread& u : users) u.join();
  });
  if (joined.wait_for(10s) != std::future_status::ready) give_up = true;
  joined.get();
  for (std::size_t i = 0; i < threads; ++i) {
    EXPECT_TRUE(closed[i]) << "thread " << i << " never saw PoolClosed";
    EXPECT_EQ(results[i], std::vector<int>(accepted[i], 10)) << "thread " << i;
  }
  EXPECT_EQ(pool.call(checked, 3), 30);
}

TEST_F(TaskTest, RunOnShutDownPoolThrowsPoolClosed) {
  pool_.shutdown();
  Task<int> task(pool_);
  EXPECT_THROW(task.run(checked, 1), multicore::PoolClosed);
}

TEST_F(TaskTest, RangesWithGlobalItemsAsInTheSeed) {
  Task<std::string> task(pool_);
  const auto pieces = multicore::ranges(items.size());
  ASSERT_EQ(pieces.size(), std::min<std::size_t>(items.size(), multicore::usable_cores()));
  for (auto [begin, end] : pieces) task.run(join_items, begin, end);
  const std::vector<std::string> parts = task.get();
  ASSERT_EQ(parts.size(), pieces.size());
  std::string joined;
  for (const std::string& part : parts) joined += (joined.empty() ? "" : ",") + part;
  EXPECT_EQ(joined, join_items(0, items.size()));

  // More pieces than workers; still in run() order.
  Task<std::string> many(pool_);
  for (auto [begin, end] : multicore::ranges(items.size(), 7)) many.run(join_items, begin, end);
  const auto seven = many.get();
  ASSERT_EQ(seven.size(), 7u);
  EXPECT_EQ(seven[0], join_items(0, 15));
  EXPECT_EQ(seven[6], join_items(86, 100));
}

// ----- Format::json ------------------------------------------------------------------------------

TEST_F(TaskTest, JsonRoundTripsStrings) {
  Task<std::string> task(pool_, TaskOptions{.format = Format::json});
  task.run([](std::string s) { return s + "!"; }, std::string("h\u00e9llo \"quoted\" \\ \n tab\t"));
  task.run([](std::string s) { return s; }, std::string());
  task.run(as_string, -12);
  EXPECT_EQ(task.get(),
            (std::vector<std::string>{"h\u00e9llo \"quoted\" \\ \n tab\t!", "", "-12"}));
}

TEST_F(TaskTest, JsonRoundTripsVectorsAndMaps) {
  Task<std::vector<int>> vectors(pool_, TaskOptions{.format = Format::json});
  vectors.run(
      [](std::vector<int> v) {
        for (int& x : v) x = -x;
        return v;
      },
      std::vector<int>{1, 2, 3});
  vectors.run([](std::vector<int> v) { return v; }, std::vector<int>{});
  EXPECT_EQ(vectors.get(), (std::vector<std::vector<int>>{{-1, -2, -3}, {}}));

  using Ages = std::map<std::string, int>;
  Task<Ages> maps(pool_, TaskOptions{.format = Format::json});
  maps.run(
      [](Ages m) {
        m["carl"] = static_cast<int>(m.size());
        return m;
      },
      Ages{{"ann", 31}, {"bob", 42}});
  EXPECT_EQ(maps.get(), (std::vector<Ages>{{{"ann", 31}, {"bob", 42}, {"carl", 2}}}));
}

TEST_F(TaskTest, JsonRoundTripsUserTypeWithSerialize) {
  Task<Person> task(pool_, TaskOptions{.format = Format::json});
  task.run(
      [](Person p) {
        p.age += 1;
        p.tags.emplace_back("json");
        return p;
      },
      Person{"Ann", 31, {"admin"}});
  EXPECT_EQ(task.get(), (std::vector<Person>{Person{"Ann", 32, {"admin", "json"}}}));
}

TEST_F(TaskTest, JsonErrorsAreStillRemoteErrors) {
  Task<int> task(pool_, TaskOptions{.format = Format::json});
  task.run(checked, 4);
  const RemoteError e = remote_error_of([&] { (void)task.get(); });
  EXPECT_EQ(e.type_name(), "std::logic_error");
  EXPECT_EQ(e.message(), "four");
}

// A trivially copyable type without serialize() cannot be written as JSON. As an argument the
// caller's encode fails, so run() throws; as a result the worker's encode fails, so get() throws.
TEST_F(TaskTest, JsonWithoutSerializeThrowsSerializationError) {
  Task<int> as_argument(pool_, TaskOptions{.format = Format::json});
  try {
    as_argument.run(sum_point, RawPoint{1, 2});
    ADD_FAILURE() << "run() did not throw";
  } catch (const SerializationError& e) {
    EXPECT_NE(std::string(e.what()).find("Format::json"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(as_argument.get().empty());

  Task<RawPoint> as_result(pool_, TaskOptions{.format = Format::json});
  EXPECT_NO_THROW(as_result.run(make_point, 3));
  EXPECT_THROW((void)as_result.get(), SerializationError);

  // The same values are fine in Format::binary.
  Task<RawPoint> binary(pool_);
  binary.run(make_point, 3);
  EXPECT_EQ(binary.get(), std::vector<RawPoint>{(RawPoint{3, -3})});
}

// A Task destroyed before get() leaves its runs somewhere to land: they finish normally and the
// pool carries on (their results are dropped).
TEST(TaskLifetime, DestroyedBeforeGetWhileRunsAreInFlight) {
  multicore::Pool pool({.workers = 2});
  {
    multicore::Task<int> task(pool);
    for (int i = 0; i < 200; ++i) {
      task.run(
          [](int x) {
            std::this_thread::sleep_for(std::chrono::microseconds(200));
            return x;
          },
          i);
    }
  }  // destroyed with most runs still queued or running
  multicore::Task<int> next(pool);
  for (int i = 0; i < 50; ++i) next.run([](int x) { return x * 3; }, i);
  const std::vector<int> results = next.get();
  ASSERT_EQ(results.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(results[static_cast<std::size_t>(i)], 3 * i);
}

}  // namespace
