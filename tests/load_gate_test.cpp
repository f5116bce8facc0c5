// SPDX-License-Identifier: MIT
// Tests for Task's load-average gate (TaskOptions::max_load_average) and load_average_per_core(),
// driven by a fake load-average source (multicore::detail::load_average_source()).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <limits>
#include <multicore/multicore.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/leak_check.hpp"

namespace {

using multicore::Pool;
using multicore::PoolOptions;
using multicore::RemoteError;
using multicore::Task;
using multicore::TaskOptions;

// The fake source: returns `fake_load` and counts its calls (a plain function pointer, as the
// seam requires, so the state is global).
std::atomic<int> source_calls{0};
double fake_load = 0;

double fake_source() {
  ++source_calls;
  return fake_load;
}

double failing_source() {
  ++source_calls;
  throw multicore::SystemError("getloadavg", EIO);
}

/// Installs a load-average source for the scope and restores the previous one.
class LoadSourceGuard {
 public:
  explicit LoadSourceGuard(multicore::detail::LoadAverageSource source)
      : saved_(multicore::detail::load_average_source()) {
    multicore::detail::load_average_source() = source;
  }
  ~LoadSourceGuard() { multicore::detail::load_average_source() = saved_; }
  LoadSourceGuard(const LoadSourceGuard&) = delete;
  LoadSourceGuard& operator=(const LoadSourceGuard&) = delete;

 private:
  multicore::detail::LoadAverageSource saved_;
};

int pid_of_runner() { return static_cast<int>(getpid()); }
int square(int x) { return x * x; }
int fail_on_three(int x) {
  if (x == 3) throw std::invalid_argument("three");
  return x;
}

class LoadGate : public ::testing::Test {
 protected:
  void SetUp() override {
    source_calls = 0;
    fake_load = 0;
  }
  Pool pool_{PoolOptions{.workers = 2}};
  const LoadSourceGuard guard_{&fake_source};
  const double cores_ = multicore::usable_cores();
  const int my_pid_ = static_cast<int>(getpid());
};

TEST_F(LoadGate, HighLoadRunsInline) {
  fake_load = 10 * cores_;  // 10 per core
  Task<int> pids(pool_, TaskOptions{.max_load_average = 0.8});
  EXPECT_EQ(source_calls.load(), 1);
  EXPECT_FALSE(pids);
  for (int i = 0; i < 5; ++i) pids.run(pid_of_runner);
  EXPECT_EQ(pids.get(), std::vector<int>(5, my_pid_));

  Task<int> squares(pool_, TaskOptions{.max_load_average = 0.8});
  EXPECT_FALSE(squares);
  for (int i = 0; i < 10; ++i) squares.run(square, i);
  EXPECT_EQ(squares.get(), (std::vector<int>{0, 1, 4, 9, 16, 25, 36, 49, 64, 81}));
}

TEST_F(LoadGate, HighLoadInlineErrorsAreStillRemoteErrors) {
  fake_load = 10 * cores_;
  Task<int> task(pool_, TaskOptions{.max_load_average = 0.5});
  ASSERT_FALSE(task);
  for (int i = 0; i < 5; ++i) task.run(fail_on_three, i);  // run() itself does not throw
  try {
    (void)task.get();
    ADD_FAILURE() << "get() did not throw";
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::invalid_argument");
    EXPECT_EQ(e.message(), "three");
  }
  Task<> void_task(pool_, TaskOptions{.max_load_average = 0.5});
  ASSERT_FALSE(void_task);
  void_task.run(fail_on_three, 3);
  EXPECT_THROW(void_task.get(), RemoteError);
}

TEST_F(LoadGate, LowLoadRunsInWorkers) {
  fake_load = 0.1 * cores_;
  Task<int> task(pool_, TaskOptions{.max_load_average = 0.8});
  EXPECT_EQ(source_calls.load(), 1);
  EXPECT_TRUE(task);
  for (int i = 0; i < 5; ++i) task.run(pid_of_runner);
  for (int pid : task.get()) EXPECT_NE(pid, my_pid_);
}

TEST_F(LoadGate, LoadExactlyAtThresholdRunsInWorkers) {
  fake_load = 0.5 * cores_;  // exactly 0.5 per core: "above" is what closes the gate
  Task<int> task(pool_, TaskOptions{.max_load_average = 0.5});
  EXPECT_TRUE(task);
  task.run(pid_of_runner);
  EXPECT_NE(task.get().at(0), my_pid_);
}

TEST_F(LoadGate, ThresholdIsPerUsableCore) {
  // A total load just above the core count is above 1.0 per core, just below is not.
  fake_load = cores_ * 1.01;
  EXPECT_FALSE((Task<int>(pool_, TaskOptions{.max_load_average = 1.0})));
  fake_load = cores_ * 0.99;
  EXPECT_TRUE((Task<int>(pool_, TaskOptions{.max_load_average = 1.0})));
}

TEST_F(LoadGate, DecidedOnceAtConstruction) {
  fake_load = 10 * cores_;
  Task<int> task(pool_, TaskOptions{.max_load_average = 0.8});
  ASSERT_FALSE(task);
  fake_load = 0;  // the load drops: this task keeps its decision
  task.run(pid_of_runner);
  task.run(pid_of_runner);
  EXPECT_FALSE(task);
  EXPECT_EQ(task.get(), std::vector<int>(2, my_pid_));
  EXPECT_EQ(source_calls.load(), 1);
}

TEST_F(LoadGate, ZeroMeansNoGateAndTheSourceIsNotConsulted) {
  fake_load = 1000 * cores_;
  Task<int> task(pool_, TaskOptions{.max_load_average = 0});
  Task<int> defaulted(pool_);
  EXPECT_EQ(source_calls.load(), 0);
  EXPECT_TRUE(task);
  EXPECT_TRUE(defaulted);
  task.run(pid_of_runner);
  EXPECT_NE(task.get().at(0), my_pid_);
}

TEST_F(LoadGate, NegativeOrNanThresholdThrowsInvalidArgument) {
  EXPECT_THROW((Task<int>(pool_, TaskOptions{.max_load_average = -0.5})), std::invalid_argument);
  EXPECT_THROW(
      (Task<int>(pool_, TaskOptions{.max_load_average = std::numeric_limits<double>::quiet_NaN()})),
      std::invalid_argument);
  EXPECT_THROW(
      (Task<>(pool_, TaskOptions{.max_load_average = -std::numeric_limits<double>::infinity()})),
      std::invalid_argument);
  try {
    Task<int> task(pool_, TaskOptions{.max_load_average = -2});
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("max_load_average"), std::string::npos) << e.what();
  }
  EXPECT_EQ(source_calls.load(), 0);
}

TEST_F(LoadGate, UnreadableLoadAverageThrowsSystemError) {
  const LoadSourceGuard failing(&failing_source);
  EXPECT_THROW((Task<int>(pool_, TaskOptions{.max_load_average = 0.5})), multicore::SystemError);
  EXPECT_THROW((void)multicore::load_average_per_core(), multicore::SystemError);
  // Without a gate the load is not read, so nothing fails.
  Task<int> ungated(pool_);
  ungated.run(square, 4);
  EXPECT_EQ(ungated.get(), std::vector<int>{16});
}

TEST_F(LoadGate, LoadAveragePerCoreUsesTheSource) {
  fake_load = 3.0;
  EXPECT_DOUBLE_EQ(multicore::load_average_per_core(), 3.0 / cores_);
  EXPECT_EQ(source_calls.load(), 1);
  fake_load = 0;
  EXPECT_EQ(multicore::load_average_per_core(), 0.0);
  EXPECT_EQ(source_calls.load(), 2);
}

TEST(LoadGateSource, GuardRestoresTheRealSource) {
  const auto real = multicore::detail::load_average_source();
  {
    const LoadSourceGuard guard(&fake_source);
    EXPECT_EQ(multicore::detail::load_average_source(), &fake_source);
  }
  EXPECT_EQ(multicore::detail::load_average_source(), real);
  EXPECT_EQ(real, &multicore::detail::read_load_average);
  // The real source gives a plausible value on Linux.
  const double per_core = multicore::load_average_per_core();
  EXPECT_GE(per_core, 0.0);
  EXPECT_TRUE(std::isfinite(per_core));
}

}  // namespace
