// SPDX-License-Identifier: MIT
// Tests for the Publisher alone: every job it takes is published exactly once, then finished;
// a batch goes last job first; a helping thread publishes the latest; stop() publishes what
// is queued and refuses the rest. Each step is ordered by the test through a gate, not a sleep.
#include <gtest/gtest.h>
#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <multicore/detail/core/job.hpp>
#include <multicore/detail/core/publisher.hpp>
#include <mutex>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace detail = multicore::detail;
using namespace std::chrono_literals;

/// Liveness bound for anything the test waits for: never reached unless something hangs.
constexpr auto liveness = 5s;

std::string this_thread_name() {
  char name[16] = {};
  pthread_getname_np(pthread_self(), name, sizeof name);
  return name;
}

/// Threads of this process named `name`.
int threads_named(const std::string& name) {
  int n = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string line;
    if (std::getline(comm, line) && line == name) ++n;
  }
  return n;
}

/// What the jobs' completions did, in order.
class Log {
 public:
  struct Entry {
    int job;
    std::string thread;
  };

  void published(int job) {
    std::lock_guard lock(mutex_);
    entries_.push_back({job, this_thread_name()});
    changed_.notify_all();
  }
  void finished(int job) {
    std::lock_guard lock(mutex_);
    finished_.push_back(job);
    changed_.notify_all();
  }

  /// Waits (bounded) until `n` jobs are published; false if they never are.
  bool await_published(std::size_t n) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, liveness, [&] { return entries_.size() >= n; });
  }

  std::vector<int> order() {
    std::lock_guard lock(mutex_);
    std::vector<int> jobs;
    for (const Entry& e : entries_) jobs.push_back(e.job);
    return jobs;
  }
  std::vector<Entry> entries() {
    std::lock_guard lock(mutex_);
    return entries_;
  }
  std::vector<int> finished() {
    std::lock_guard lock(mutex_);
    return finished_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Entry> entries_;
  std::vector<int> finished_;
};

/// A gate the first published job can be made to wait at, so that the test knows what the
/// publisher's thread is doing while it queues more.
class Gate {
 public:
  void arrive_and_wait() {
    std::unique_lock lock(mutex_);
    arrived_ = true;
    changed_.notify_all();
    changed_.wait_for(lock, liveness, [&] { return open_; });
  }
  bool await_arrival() {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, liveness, [&] { return arrived_; });
  }
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool arrived_ = false;
  bool open_ = false;
};

/// A completion decoded but unpublished, as a small future's is once its answer was read.
class Unpublished final : public detail::Completion {
 public:
  Unpublished(Log& log, int job, Gate* gate) : log_(log), job_(job), gate_(gate) {}

  void deliver(multicore::Reader& /*payload*/, std::uint64_t /*run_nanos*/) noexcept override {}
  void fail(std::exception_ptr /*error*/) noexcept override {}
  bool unpublished() const noexcept override { return unpublished_; }
  void publish() noexcept override {
    EXPECT_TRUE(unpublished_) << "job " << job_ << " published twice";
    unpublished_ = false;
    if (gate_ != nullptr) gate_->arrive_and_wait();
    log_.published(job_);
  }
  int job() const noexcept { return job_; }

 private:
  Log& log_;
  int job_;
  Gate* gate_;
  bool unpublished_ = true;
};

class PublisherTest : public ::testing::Test {
 protected:
  std::unique_ptr<detail::Job> job(int n, Gate* gate = nullptr) {
    auto job = std::make_unique<detail::Job>();
    job->emplace_completion<Unpublished>(log_, n, gate);
    return job;
  }

  /// Queues job `n`; fails the test if the publisher gives it back.
  void take(int n, Gate* gate = nullptr) {
    EXPECT_EQ(publisher_.take(job(n, gate)), nullptr) << "job " << n << " was refused";
  }

  Log log_;  // before publisher_, whose thread writes to it until stop()
  detail::Publisher publisher_{[this](std::vector<std::unique_ptr<detail::Job>>& jobs) {
    for (auto& j : jobs) {
      auto& c = static_cast<Unpublished&>(j->completion());
      EXPECT_FALSE(c.unpublished()) << "job " << c.job() << " finished before it was published";
      log_.finished(c.job());
    }
  }};
};

TEST_F(PublisherTest, EveryJobTakenIsPublishedOnceOnItsOwnThreadThenFinished) {
  constexpr int n = 500;
  for (int i = 0; i < n; ++i) take(i);
  ASSERT_TRUE(log_.await_published(n));
  publisher_.stop();
  std::vector<int> published = log_.order();
  std::sort(published.begin(), published.end());
  std::vector<int> finished = log_.finished();
  std::sort(finished.begin(), finished.end());
  std::vector<int> all(n);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(published, all);
  EXPECT_EQ(finished, all);
  for (const Log::Entry& e : log_.entries()) EXPECT_EQ(e.thread, "multicore-pub") << e.job;
}

TEST_F(PublisherTest, ABatchIsPublishedLastJobFirst) {
  Gate gate;
  take(0, &gate);
  ASSERT_TRUE(gate.await_arrival());  // the thread is publishing job 0 alone
  for (int i = 1; i <= 4; ++i) take(i);
  gate.open();
  ASSERT_TRUE(log_.await_published(5));
  EXPECT_EQ(log_.order(), (std::vector<int>{0, 4, 3, 2, 1}));
}

TEST_F(PublisherTest, AHelpingThreadPublishesTheLatestJobsItself) {
  Gate gate;
  take(0, &gate);
  ASSERT_TRUE(gate.await_arrival());
  for (int i = 1; i <= 4; ++i) take(i);
  EXPECT_TRUE(publisher_.publish_some(2));  // 3 and 4, on this thread, 4 first
  gate.open();
  ASSERT_TRUE(log_.await_published(5));
  EXPECT_EQ(log_.order(), (std::vector<int>{4, 3, 0, 2, 1}));
  const std::string me = this_thread_name();
  for (const Log::Entry& e : log_.entries()) {
    EXPECT_EQ(e.thread, e.job >= 3 ? me : std::string("multicore-pub")) << "job " << e.job;
  }
  EXPECT_FALSE(publisher_.publish_some(2)) << "nothing is queued any more";
}

TEST_F(PublisherTest, StopPublishesWhatIsQueuedThenRefusesMore) {
  Gate gate;
  take(0, &gate);
  ASSERT_TRUE(gate.await_arrival());
  take(1);
  take(2);
  auto stopped = std::async(std::launch::async, [&] { publisher_.stop(); });
  EXPECT_EQ(stopped.wait_for(0s), std::future_status::timeout);  // job 0 is being published
  gate.open();
  ASSERT_EQ(stopped.wait_for(liveness), std::future_status::ready);
  EXPECT_EQ(log_.order(), (std::vector<int>{0, 2, 1}));
  EXPECT_EQ(log_.finished().size(), 3u);
  std::unique_ptr<detail::Job> refused = publisher_.take(job(3));
  ASSERT_NE(refused, nullptr);
  EXPECT_TRUE(refused->completion().unpublished()) << "a refused job is left to its caller";
}

TEST_F(PublisherTest, ItsThreadStartsWithTheFirstJob) {
  EXPECT_EQ(threads_named("multicore-pub"), 0);
  take(0);
  EXPECT_EQ(threads_named("multicore-pub"), 1);
  publisher_.stop();
  EXPECT_EQ(log_.order(), std::vector<int>{0});
}

}  // namespace
