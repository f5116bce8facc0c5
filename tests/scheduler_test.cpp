// SPDX-License-Identifier: MIT
// Tests for the Scheduler alone, over a scripted fake transport (support/fake_transport.hpp):
// dispatch, blame when a worker dies, lies or overruns, start failures, max_tasks, abandonment,
// shutdown, terminate and a broken transport, each step decided by the test, with no process
// and no sleep. Every job must be resolved exactly once (or, abandoned, never).
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <multicore/detail/core/scheduler.hpp>
#include <multicore/detail/front/completions.hpp>
#include <multicore/detail/protocol/entries.hpp>
#include <multicore/detail/protocol/request.hpp>
#include <multicore/detail/serialize/serialize.hpp>
#include <multicore/detail/util/process.hpp>
#include <multicore/errors.hpp>
#include <multicore/stop.hpp>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/fake_transport.hpp"

namespace {

namespace detail = multicore::detail;
using detail::Death;
using detail::Scheduler;
using detail::SchedulerOptions;
using multicore::Format;
using multicore::PoolClosed;
using multicore::TaskTimeout;
using multicore::WorkerLost;
using multicore_test::thrown_exactly;
using multicore_test::fake::Answer;
using multicore_test::fake::FakeTransport;
using multicore_test::fake::Lent;
using multicore_test::fake::StartPlan;
using multicore_test::fake::State;
using namespace std::chrono_literals;

using Bytes = std::vector<std::byte>;

/// Liveness bound for anything the test waits for: never reached unless something hangs.
constexpr auto liveness = 5s;

/// A long run time: answers that report it keep the in-flight bound at its minimum.
constexpr std::uint64_t long_run_ns = 1'000'000'000;

Bytes value_payload(int value) {
  multicore::Writer out;
  detail::write_outcome(out, detail::Outcome::value);
  detail::encode(out, value);
  return {out.bytes().begin(), out.bytes().end()};
}

Bytes remote_error_payload(const std::string& type, const std::string& message) {
  multicore::Writer out;
  detail::write_outcome(out, detail::Outcome::remote_error);
  detail::write_string(out, type);
  detail::write_string(out, message);
  return {out.bytes().begin(), out.bytes().end()};
}

/// An answer whose payload is a std::vector<int>, its elements announced as the tail.
Answer vector_answer(std::uint64_t task, const std::vector<int>& values) {
  multicore::Writer out;
  detail::write_outcome(out, detail::Outcome::value);
  detail::encode(out, values);
  Answer a;
  a.task_id = task;
  a.payload.assign(out.bytes().begin(), out.bytes().end());
  a.tail_bytes = values.size() * sizeof(int);
  a.run_nanos = long_run_ns;
  return a;
}

/// What one job's completion was given.
struct Got {
  int calls = 0;                 ///< deliver + deliver_tail + fail: must end as exactly 1
  int tails_opened = 0;          ///< open_tail() calls that took the tail
  bool via_tail = false;         ///< delivered through deliver_tail()
  std::optional<Bytes> payload;  ///< the answer's payload (head and tail together)
  std::exception_ptr error;
};

/// Every job's outcome, for the test thread to wait on.
class Board {
 public:
  std::size_t add() {
    std::lock_guard lock(mutex_);
    got_.emplace_back();
    return got_.size() - 1;
  }

  void delivered(std::size_t job, Bytes payload, bool via_tail) {
    std::lock_guard lock(mutex_);
    Got& g = got_.at(job);
    ++g.calls;
    g.payload = std::move(payload);
    g.via_tail = via_tail;
    cv_.notify_all();
  }
  void failed(std::size_t job, std::exception_ptr error) {
    std::lock_guard lock(mutex_);
    Got& g = got_.at(job);
    ++g.calls;
    g.error = std::move(error);
    cv_.notify_all();
  }
  void tail_opened(std::size_t job) {
    std::lock_guard lock(mutex_);
    ++got_.at(job).tails_opened;
  }

  bool resolved(std::size_t job) const {
    std::lock_guard lock(mutex_);
    return got_.at(job).calls > 0;
  }

  /// Waits (bounded) until the job is resolved; fails the test if it never is. Once the test
  /// has failed, does not wait.
  Got await(std::size_t job) const {
    const auto limit = ::testing::Test::HasFailure() ? 0s : liveness;
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, limit, [&] { return got_.at(job).calls > 0; })) {
      ADD_FAILURE() << "job " << job << " was not resolved within the liveness bound";
    }
    return got_.at(job);
  }

  /// Blocks until the job is resolved or `limit` passes (the sleep of Scheduler::call).
  void sleep_until_resolved(std::size_t job, std::chrono::milliseconds limit) const {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, limit, [&] { return got_.at(job).calls > 0; });
  }

  Got get(std::size_t job) const {
    std::lock_guard lock(mutex_);
    return got_.at(job);
  }
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return got_.size();
  }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  std::deque<Got> got_;
};

/// A completion that records what it gets on the board, and checks that a tail arrives as
/// announced.
class Recording final : public detail::Completion, private detail::AnswerTail {
 public:
  Recording(Board& board, std::size_t job, bool takes_tail,
            std::shared_ptr<std::atomic<bool>> abandoned)
      : board_(board), job_(job), takes_tail_(takes_tail), abandoned_(std::move(abandoned)) {}

  void deliver(multicore::Reader& payload, std::uint64_t /*run_nanos*/) noexcept override {
    const auto bytes = payload.take(payload.remaining());
    board_.delivered(job_, Bytes(bytes.begin(), bytes.end()), false);
  }
  detail::AnswerTail* open_tail(std::span<const std::byte> head,
                                std::uint64_t tail_bytes) noexcept override {
    if (!takes_tail_) return nullptr;
    board_.tail_opened(job_);
    assembled_.assign(head.begin(), head.end());  // a fresh start if the answer comes again
    tail_left_ = tail_bytes;
    return this;
  }
  void fail(std::exception_ptr error) noexcept override { board_.failed(job_, std::move(error)); }
  bool abandoned() const noexcept override { return abandoned_ && abandoned_->load(); }

 private:
  void append(std::span<const std::byte> bytes) noexcept override {
    EXPECT_LE(bytes.size(), tail_left_) << "a tail longer than announced";
    tail_left_ -= std::min<std::uint64_t>(bytes.size(), tail_left_);
    assembled_.insert(assembled_.end(), bytes.begin(), bytes.end());
  }
  void deliver_tail(std::uint64_t /*run_nanos*/) noexcept override {
    EXPECT_EQ(tail_left_, 0u) << "deliver_tail() before the whole tail arrived";
    board_.delivered(job_, std::move(assembled_), true);
  }

  Board& board_;
  std::size_t job_;
  bool takes_tail_;
  std::shared_ptr<std::atomic<bool>> abandoned_;
  Bytes assembled_;
  std::uint64_t tail_left_ = 0;
};

std::string this_thread_name() {
  char name[16] = {};
  pthread_getname_np(pthread_self(), name, sizeof name);
  return name;
}

/// A completion made visible after it is decoded, as a small future's is (see Publisher): says
/// which thread published it.
class PublishedLater final : public detail::Completion {
 public:
  explicit PublishedLater(std::promise<std::string>& by) : by_(by) {}

  void deliver(multicore::Reader& /*payload*/, std::uint64_t /*run_nanos*/) noexcept override {
    unpublished_ = true;
  }
  void fail(std::exception_ptr error) noexcept override { by_.set_exception(std::move(error)); }
  bool unpublished() const noexcept override { return unpublished_; }
  void publish() noexcept override {
    unpublished_ = false;
    by_.set_value(this_thread_name());
  }

 private:
  std::promise<std::string>& by_;
  bool unpublished_ = false;
};

/// How the test submits a job.
struct JobSpec {
  bool takes_tail = false;
  std::shared_ptr<std::atomic<bool>> abandoned;  ///< the job is abandoned once this is true
  multicore::StopToken stop;                     ///< the token the job's task carries
};

JobSpec taking_tail(bool takes) { return {takes, nullptr, {}}; }
JobSpec abandoned_when(std::shared_ptr<std::atomic<bool>> flag) {
  return {false, std::move(flag), {}};
}

/// The job a request carries: its payload is the job's index on the board.
std::size_t job_of(const multicore_test::fake::Sent& sent) {
  std::uint64_t job = 0;
  EXPECT_EQ(sent.payload.size(), sizeof job);
  std::memcpy(&job, sent.payload.data(), std::min(sizeof job, sent.payload.size()));
  return static_cast<std::size_t>(job);
}

/// Runs Scheduler::shutdown() on another thread. Should the test leave before it returned,
/// terminate() ends it: a graceful shutdown waits for jobs a failed test will never answer.
class ShutdownThread {
 public:
  explicit ShutdownThread(Scheduler& scheduler)
      : scheduler_(scheduler),
        done_(std::async(std::launch::async, [&scheduler] { scheduler.shutdown(); })) {}
  ~ShutdownThread() {
    if (!returned_within(0s)) scheduler_.terminate();
  }
  ShutdownThread(const ShutdownThread&) = delete;
  ShutdownThread& operator=(const ShutdownThread&) = delete;

  bool returned_within(std::chrono::milliseconds limit) {
    return done_.wait_for(limit) == std::future_status::ready;
  }

 private:
  Scheduler& scheduler_;
  std::future<void> done_;
};

class SchedulerTest : public ::testing::Test {
 protected:
  /// The fake for `workers` slots, to script before start().
  FakeTransport& workers(unsigned n) {
    fake_ = std::make_shared<FakeTransport>(n);
    return *fake_;
  }

  Scheduler& start(SchedulerOptions options = {}) {
    scheduler_ = std::make_unique<Scheduler>(std::make_unique<Lent>(fake_), options);
    return *scheduler_;
  }

  void TearDown() override {
    if (scheduler_) {
      // A failed test may leave jobs nobody will answer: a graceful shutdown would wait forever.
      if (HasFailure()) scheduler_->terminate();
      scheduler_.reset();
    }
    if (!fake_) return;
    const State s = fake_->snapshot();
    EXPECT_TRUE(s.violations.empty())
        << "the scheduler broke the transport's contract: " << s.violations.front();
    EXPECT_EQ(s.callers_polling, 0);
    EXPECT_TRUE(s.closed) << "nobody closed the transport";
    for (std::size_t j = 0; j < board_.size(); ++j) {
      EXPECT_LE(board_.get(j).calls, 1) << "job " << j << " was resolved more than once";
    }
  }

  /// Submits a job whose request carries its index; returns the index.
  std::size_t submit(JobSpec spec = {}) {
    const std::size_t index = board_.add();
    std::unique_ptr<detail::Job> job = scheduler_->new_job();
    detail::begin_request(job->request);
    const std::uint64_t marker = index;
    job->request.write(&marker, sizeof marker);
    detail::finish_request(job->request, 0, 1);
    job->emplace_completion<Recording>(board_, index, spec.takes_tail, std::move(spec.abandoned));
    job->stop = spec.stop;
    scheduler_->submit(std::move(job));
    return index;
  }

  std::vector<std::size_t> submit_many(std::size_t n) {
    std::vector<std::size_t> jobs;
    for (std::size_t i = 0; i < n; ++i) jobs.push_back(submit());
    return jobs;
  }

  /// The task id of job `j`, once it was sent to a worker.
  std::uint64_t task(std::size_t j) {
    std::uint64_t id = 0;
    fake_->await(
        [&](const State& s) {
          for (const auto& sent : s.sent) {
            if (job_of(sent) == j) {
              id = sent.task_id;
              return true;
            }
          }
          return false;
        },
        "the job was sent");
    return id;
  }

  /// Jobs slot k was sent, in order: in its `life`-th process only, or in all (0).
  std::vector<std::size_t> sent_to(unsigned k, unsigned life = 0) const {
    return fake_->inspect([&](const State& s) {
      std::vector<std::size_t> jobs;
      for (const auto& sent : s.sent) {
        if (sent.slot == k && (life == 0 || sent.life == life)) jobs.push_back(job_of(sent));
      }
      return jobs;
    });
  }

  /// Waits until slot k's `life`-th process (all: 0) was sent `n` jobs.
  void await_sent(unsigned k, std::size_t n, unsigned life = 0) {
    fake_->await(
        [&](const State& s) {
          std::size_t count = 0;
          for (const auto& sent : s.sent) {
            count += sent.slot == k && (life == 0 || sent.life == life) ? 1 : 0;
          }
          return count >= n;
        },
        "jobs sent");
  }

  void await_log(const std::string& entry, std::size_t times = 1) {
    fake_->await([&](const State& s) { return s.count_in_log(entry) >= times; }, entry.c_str());
  }

  /// Worker k answers job j with `value`.
  void answer(unsigned k, std::size_t j, int value, std::uint64_t run_ns = long_run_ns) {
    fake_->answer(k, {task(j), value_payload(value), 0, run_ns});
  }

  /// The value job j was answered with (after waiting for it).
  int value_of(std::size_t j) {
    const Got g = board_.await(j);
    if (!g.payload) {
      ADD_FAILURE() << "job " << j << " failed: "
                    << (g.error ? multicore_test::describe_exception(g.error) : "no error");
      return -1;
    }
    multicore::Reader in(*g.payload);
    const int v = detail::read_outcome<int>(in);
    detail::expect_end(in);
    return v;
  }

  /// The error job j failed with, if it is exactly E (after waiting for it).
  template <class E>
  std::optional<E> error_of(std::size_t j) {
    const Got g = board_.await(j);
    return thrown_exactly<E>([&] {
      if (g.error) std::rethrow_exception(g.error);
    });
  }

  /// Shuts the scheduler down, waiting at most the liveness bound (then terminates it).
  void shutdown_bounded() {
    ShutdownThread shutdown(*scheduler_);
    EXPECT_TRUE(shutdown.returned_within(liveness)) << "shutdown() did not return in time";
  }

  /// Answers `n` jobs at once with run time 0: the in-flight bound grows as with short tasks.
  void warm_up(std::size_t n) {
    fake_->respond([](const multicore_test::fake::Sent& sent) {
      return std::optional<Answer>(Answer{sent.task_id, value_payload(0), 0, 0});
    });
    const std::vector<std::size_t> jobs = submit_many(n);
    for (const std::size_t j : jobs) board_.await(j);
    fake_->respond(nullptr);
  }

  Board board_;  // before scheduler_: the jobs' completions refer to it
  std::shared_ptr<FakeTransport> fake_;
  std::unique_ptr<Scheduler> scheduler_;
};

// ---- dispatch -----------------------------------------------------------------------------

TEST_F(SchedulerTest, StartsEveryWorkerAndResolvesAnAnswer) {
  workers(2);
  start();
  EXPECT_EQ(fake_->snapshot().log,
            (std::vector<std::string>{"start 0", "start 1", "ready 0", "ready 1"}));
  const std::size_t a = submit();
  answer(0, a, 42);
  EXPECT_EQ(value_of(a), 42);
  EXPECT_EQ(board_.get(a).calls, 1);
}

TEST_F(SchedulerTest, LeastLoadedWorkerGetsEachJobUpToTheInFlightBound) {
  workers(2);
  start();
  // Long tasks: the bound stays at its minimum, two jobs per worker. Ties go to the worker used
  // last (likely still spinning), so a burst alternates in pairs.
  const std::vector<std::size_t> j = submit_many(5);
  await_sent(0, 2);
  await_sent(1, 2);
  EXPECT_EQ(sent_to(0), (std::vector<std::size_t>{j[0], j[3]}));
  EXPECT_EQ(sent_to(1), (std::vector<std::size_t>{j[1], j[2]}));
  // The fifth waits for room; the answer on worker 1 makes it, so it goes there.
  answer(1, j[1], 1);
  await_sent(1, 3);
  EXPECT_EQ(sent_to(1), (std::vector<std::size_t>{j[1], j[2], j[4]}));
  EXPECT_EQ(sent_to(0), (std::vector<std::size_t>{j[0], j[3]}));
  answer(0, j[0], 0);
  answer(1, j[2], 2);
  answer(0, j[3], 3);
  answer(1, j[4], 4);
  for (std::size_t i = 0; i < j.size(); ++i) EXPECT_EQ(value_of(j[i]), static_cast<int>(i));
}

TEST_F(SchedulerTest, ShortTasksDeepenTheInFlightBound) {
  workers(1);
  start();
  warm_up(40);
  // Answers with no run time: the worker now holds more than the minimum of two, unanswered.
  const std::vector<std::size_t> jobs = submit_many(10);
  await_sent(0, 40 + 10);
  for (const std::size_t j : jobs) answer(0, j, 7);
  for (const std::size_t j : jobs) EXPECT_EQ(value_of(j), 7);
}

TEST_F(SchedulerTest, AJobIsNotSentWhileThePreviousMessageIsStillBeingTaken) {
  FakeTransport& fake = workers(1);
  fake.limit_room(sizeof(detail::RequestHeader) + 4);  // each request needs room made once
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  await_sent(0, 1);
  ASSERT_TRUE(fake.await_idle());
  EXPECT_EQ(sent_to(0), std::vector<std::size_t>{a});  // b waits although the bound allows two
  // The rest of a, and room for b's head (a job's payload is a few bytes); then the rest of b.
  fake.make_room(0, sizeof(detail::RequestHeader) + 16);
  await_sent(0, 2);
  EXPECT_EQ(sent_to(0), (std::vector<std::size_t>{a, b}));
  fake.make_room(0, sizeof(detail::RequestHeader) + 16);
  answer(0, a, 1);
  answer(0, b, 2);
  EXPECT_EQ(value_of(a), 1);
  EXPECT_EQ(value_of(b), 2);
}

// ---- blame --------------------------------------------------------------------------------

TEST_F(SchedulerTest, DeathBlamesTheClaimedTaskAndRequeuesTheRestInOrderAheadOfLaterJobs) {
  FakeTransport& fake = workers(1);
  start();
  warm_up(40);  // so that one worker holds several jobs
  const std::vector<std::size_t> jobs = submit_many(30);
  await_sent(0, 40 + 2);
  ASSERT_TRUE(fake.await_idle());
  const std::vector<std::size_t> held = sent_to(0, 1);
  const std::size_t bound = held.size() - 40;
  ASSERT_GE(bound, 3u) << "the worker must hold the claimed job and at least two more";
  ASSERT_LT(bound, jobs.size()) << "some jobs must still be queued";

  fake.running(0, task(jobs[0]), detail::steady_now_ns());
  fake.crash(0, SIGSEGV);
  const auto lost = error_of<WorkerLost>(jobs[0]);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGSEGV);
  EXPECT_EQ(lost->exit_code(), -1);
  EXPECT_NE(std::string(lost->what()).find("killed by signal 11"), std::string::npos)
      << lost->what();

  // The replacement gets the held jobs first, in their order, then the queued ones.
  await_sent(0, bound, 2);
  ASSERT_TRUE(fake.await_idle());
  const std::vector<std::size_t> expected(jobs.begin() + 1,
                                          jobs.begin() + 1 + static_cast<std::ptrdiff_t>(bound));
  EXPECT_EQ(sent_to(0, 2), expected);
  for (std::size_t i = 1; i < jobs.size(); ++i) answer(0, jobs[i], static_cast<int>(i));
  for (std::size_t i = 1; i < jobs.size(); ++i) EXPECT_EQ(value_of(jobs[i]), static_cast<int>(i));
  EXPECT_EQ(fake.snapshot().slots[0].lives, 2u);
}

TEST_F(SchedulerTest, ExitWhileRunningATaskReportsTheExitCode) {
  FakeTransport& fake = workers(1);
  start();
  const std::size_t a = submit();
  fake.running(0, task(a), detail::steady_now_ns());
  Death d;
  d.exit_code = 3;
  d.running = task(a);
  fake.die(0, d);
  const auto lost = error_of<WorkerLost>(a);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), 0);
  EXPECT_EQ(lost->exit_code(), 3);
  EXPECT_NE(std::string(lost->what()).find("exited with code 3"), std::string::npos)
      << lost->what();
}

TEST_F(SchedulerTest, DeathWithoutAClaimBlamesNobodyAndRerunsEveryJob) {
  FakeTransport& fake = workers(1);
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  const std::size_t c = submit();
  // The worker ran a and dropped its claim, then died while writing the answer.
  fake.running(0, task(a), detail::steady_now_ns());
  Death d;
  d.signal = SIGKILL;
  d.exit_code = -1;
  d.running = 0;
  fake.die(0, d);
  await_sent(0, 2, 2);
  EXPECT_EQ(sent_to(0, 2), (std::vector<std::size_t>{a, b}));
  answer(0, a, 1);
  answer(0, b, 2);
  answer(0, c, 3);
  EXPECT_EQ(value_of(a), 1);
  EXPECT_EQ(value_of(b), 2);
  EXPECT_EQ(value_of(c), 3);
}

TEST_F(SchedulerTest, AnswerWithTheWrongTaskKillsTheWorkerAndBlamesItsClaim) {
  FakeTransport& fake = workers(1);
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  fake.running(0, task(a), detail::steady_now_ns());
  fake.answer(0, {task(b) + 1000, value_payload(1), 0, long_run_ns});
  const auto lost = error_of<WorkerLost>(a);
  ASSERT_TRUE(lost);
  EXPECT_NE(std::string(lost->what()).find("corrupt or truncated"), std::string::npos)
      << lost->what();
  EXPECT_EQ(lost->signal(), SIGKILL);
  EXPECT_EQ(fake.snapshot().slots[0].kills, 1u);
  await_sent(0, 1, 2);
  answer(0, b, 2);
  EXPECT_EQ(value_of(b), 2);
}

TEST_F(SchedulerTest, AnswerWithTheWrongTaskAndNoClaimBlamesTheOldestJob) {
  FakeTransport& fake = workers(1);
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  fake.answer(0, {task(b), value_payload(2), 0, long_run_ns});  // b before a: out of order
  const auto lost = error_of<WorkerLost>(a);
  ASSERT_TRUE(lost);
  EXPECT_NE(std::string(lost->what()).find("corrupt or truncated"), std::string::npos);
  EXPECT_EQ(fake.snapshot().slots[0].kills, 1u);
  await_sent(0, 1, 2);
  EXPECT_EQ(sent_to(0, 2), std::vector<std::size_t>{b});
  answer(0, b, 2);
  EXPECT_EQ(value_of(b), 2);
}

TEST_F(SchedulerTest, AnswerToARequestStillBeingSentBreaksTheProtocol) {
  FakeTransport& fake = workers(1);
  fake.limit_room(sizeof(detail::RequestHeader));  // the job's payload stays unsent
  start();
  const std::size_t a = submit();
  fake.answer(0, {task(a), value_payload(1), 0, long_run_ns});
  const auto lost = error_of<WorkerLost>(a);
  ASSERT_TRUE(lost);
  EXPECT_NE(std::string(lost->what()).find("corrupt or truncated"), std::string::npos);
  EXPECT_EQ(fake.snapshot().slots[0].kills, 1u);
}

TEST_F(SchedulerTest, ViolationDeathBlamesTheOldestJobAndRequeuesTheRest) {
  FakeTransport& fake = workers(1);
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  await_sent(0, 2);
  Death d;
  d.cause = Death::Cause::violation;
  d.signal = SIGKILL;
  d.exit_code = -1;
  d.text = "a malformed answer header";
  fake.die(0, d);
  const auto lost = error_of<WorkerLost>(a);
  ASSERT_TRUE(lost);
  EXPECT_NE(std::string(lost->what()).find("corrupt or truncated"), std::string::npos);
  await_sent(0, 1, 2);
  EXPECT_EQ(sent_to(0, 2), std::vector<std::size_t>{b});
  answer(0, b, 2);
  EXPECT_EQ(value_of(b), 2);
}

// ---- answers with tails -------------------------------------------------------------------

TEST_F(SchedulerTest, TailGoesStraightToTheCompletionThatTakesIt) {
  workers(1);
  start();
  const std::size_t a = submit(taking_tail(true));
  const std::size_t b = submit(taking_tail(false));
  const std::vector<int> values{1, 2, 3, 4, 5, 6, 7, 8, 9};
  const Answer answer_a = vector_answer(task(a), values);
  const Answer answer_b = vector_answer(task(b), values);
  fake_->answer(0, answer_a);
  fake_->answer(0, answer_b);
  const Got got_a = board_.await(a);
  const Got got_b = board_.await(b);
  EXPECT_TRUE(got_a.via_tail);
  EXPECT_EQ(got_a.payload, answer_a.payload);
  EXPECT_FALSE(got_b.via_tail);  // refused: the whole payload is delivered instead
  EXPECT_EQ(got_b.payload, answer_b.payload);
}

TEST_F(SchedulerTest, DeathInTheMiddleOfATailRerunsTheTask) {
  FakeTransport& fake = workers(1);
  start();
  const std::size_t a = submit(taking_tail(true));
  const Answer whole = vector_answer(task(a), std::vector<int>(40, 7));
  fake.answer(0, whole, /*cut_after=*/50);  // dies after 50 of 160 tail bytes, claim dropped
  await_sent(0, 1, 2);
  EXPECT_FALSE(board_.resolved(a));
  fake.answer(0, whole);
  const Got got = board_.await(a);
  EXPECT_EQ(got.calls, 1);
  EXPECT_EQ(got.tails_opened, 2);
  EXPECT_TRUE(got.via_tail);
  EXPECT_EQ(got.payload, whole.payload);
}

TEST_F(SchedulerTest, RealCompletionsDecodeScriptedAnswers) {
  FakeTransport& fake = workers(1);
  start();
  std::future<int> value;
  std::future<int> thrown;
  for (std::future<int>* future : {&value, &thrown}) {
    std::unique_ptr<detail::Job> job = scheduler_->new_job();
    detail::begin_request(job->request);
    detail::finish_request(job->request, 0, 1);
    *future = job->emplace_completion<detail::PromiseCompletion<int, Format::binary>>().future();
    scheduler_->submit(std::move(job));
  }
  await_sent(0, 2);
  const std::vector<std::uint64_t> tasks = fake.sent_to(0);
  fake.answer(0, {tasks[0], value_payload(42), 0, long_run_ns});
  fake.answer(0, {tasks[1], remote_error_payload("std::domain_error", "no"), 0, long_run_ns});
  ASSERT_TRUE(multicore_test::ready_within(value, liveness));
  EXPECT_EQ(value.get(), 42);
  ASSERT_TRUE(multicore_test::ready_within(thrown, liveness));
  const auto error = multicore_test::error_of<multicore::RemoteError>(thrown);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->type_name(), "std::domain_error");
  EXPECT_EQ(error->message(), "no");
}

void submit_published_later(Scheduler& scheduler, std::promise<std::string>& by) {
  std::unique_ptr<detail::Job> job = scheduler.new_job();
  detail::begin_request(job->request);
  detail::finish_request(job->request, 0, 1);
  job->emplace_completion<PublishedLater>(by);
  scheduler.submit(std::move(job));
}

TEST_F(SchedulerTest, ALoneAnswerIsPublishedByTheThreadThatReadItWithoutAHop) {
  FakeTransport& fake = workers(1);
  start();
  std::promise<std::string> by;
  submit_published_later(*scheduler_, by);
  await_sent(0, 1);
  fake.answer(0, {fake.sent_to(0)[0], value_payload(1), 0, long_run_ns});
  std::future<std::string> publisher = by.get_future();
  ASSERT_TRUE(multicore_test::ready_within(publisher, liveness));
  EXPECT_EQ(publisher.get(), "multicore-coll");
}

TEST_F(SchedulerTest, WhileManyJobsWaitEveryAnswerIsPublishedBeforeShutdownReturns) {
  workers(2);
  start();
  warm_up(64);  // a deep in-flight bound
  fake_->respond([](const multicore_test::fake::Sent& sent) {
    return std::optional<Answer>(Answer{sent.task_id, value_payload(0), 0, 0});
  });
  std::deque<std::promise<std::string>> by(400);
  for (auto& promise : by) submit_published_later(*scheduler_, promise);
  shutdown_bounded();
  for (auto& promise : by) {
    std::future<std::string> publisher = promise.get_future();
    ASSERT_EQ(publisher.wait_for(0s), std::future_status::ready);
    const std::string name = publisher.get();
    EXPECT_TRUE(name == "multicore-coll" || name == "multicore-pub") << name;
  }
}

// ---- start failures -------------------------------------------------------------------------

TEST_F(SchedulerTest, ConstructionThrowsTheForkErrorWhenAWorkerCannotBeMade) {
  FakeTransport& fake = workers(2);
  fake.plan_start(1, {StartPlan::Kind::spawn_failed, EAGAIN, ""});
  const auto error = thrown_exactly<multicore::SystemError>([&] { start(); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->code().value(), EAGAIN);
}

TEST_F(SchedulerTest, ConstructionThrowsWhatOnWorkerStartThrew) {
  FakeTransport& fake = workers(2);
  fake.plan_start(0, {StartPlan::Kind::start_failed, 0, "no database"});
  const auto error = thrown_exactly<multicore::Error>([&] { start(); });
  ASSERT_TRUE(error);
  EXPECT_EQ(std::string(error->what()), "multicore: on_worker_start threw: no database");
}

TEST_F(SchedulerTest, ConstructionWaitsUntilEveryWorkerIsReady) {
  FakeTransport& fake = workers(2);
  fake.plan_start(1, {StartPlan::Kind::hold, 0, ""});
  auto constructed = std::async(std::launch::async, [&] { start(); });
  await_log("ready 0");
  EXPECT_TRUE(fake.await_idle());  // it waits for worker 1 in wait(), not spinning
  EXPECT_EQ(constructed.wait_for(0s), std::future_status::timeout);
  fake.ready(1);  // (whatever failed above: the constructor must return before the test does)
  ASSERT_EQ(constructed.wait_for(liveness), std::future_status::ready);
  const std::size_t a = submit();
  const std::size_t b = submit();
  EXPECT_EQ(sent_to(1), std::vector<std::size_t>{b});
  answer(0, a, 1);
  answer(1, b, 2);
  EXPECT_EQ(value_of(a), 1);
  EXPECT_EQ(value_of(b), 2);
}

TEST_F(SchedulerTest, WhileNoWorkerCanStartQueuedJobsFailThenWorkResumes) {
  FakeTransport& fake = workers(1);
  fake.plan_start(0, {StartPlan::Kind::ready, 0, ""});
  fake.plan_start(0, {StartPlan::Kind::hold, 0, ""});
  fake.plan_start(0, {StartPlan::Kind::hold, 0, ""});
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  fake.running(0, task(a), detail::steady_now_ns());
  fake.crash(0, SIGKILL);
  ASSERT_TRUE(error_of<WorkerLost>(a));
  // The replacement cannot be forked: b, requeued, has no worker left to wait for.
  await_log("start 0", 2);
  fake.spawn_failed(0, EAGAIN);
  const auto fork_error = error_of<multicore::SystemError>(b);
  ASSERT_TRUE(fork_error);
  EXPECT_EQ(fork_error->code().value(), EAGAIN);
  // The start is retried (after a backoff). While it is under way, a job waits for it...
  await_log("start 0", 3);
  const std::size_t c = submit();
  ASSERT_TRUE(fake.await_idle());
  EXPECT_FALSE(board_.resolved(c));
  // ... and fails when it fails.
  fake.start_failed(0, "no database");
  const auto start_error = error_of<multicore::Error>(c);
  ASSERT_TRUE(start_error);
  EXPECT_EQ(std::string(start_error->what()),
            "multicore: on_worker_start threw in a replacement worker: no database");
  // The next retry works: jobs run again.
  await_log("ready 0", 2);
  const std::size_t d = submit();
  answer(0, d, 4);
  EXPECT_EQ(value_of(d), 4);
  const State s = fake.snapshot();
  EXPECT_EQ(s.slots[0].lives, 4u);
  EXPECT_EQ(sent_to(0), (std::vector<std::size_t>{a, b, d}));
}

TEST_F(SchedulerTest, JobsOfAWorkerThatCannotBeReplacedRunOnAnother) {
  FakeTransport& fake = workers(2);
  fake.plan_start(1, {StartPlan::Kind::ready, 0, ""});
  for (int i = 0; i < 3; ++i) fake.plan_start(1, {StartPlan::Kind::spawn_failed, ENOMEM, ""});
  start();
  const std::size_t a = submit();  // to worker 0
  const std::size_t b = submit();  // to worker 1
  EXPECT_EQ(sent_to(1), std::vector<std::size_t>{b});
  Death d;
  d.signal = SIGKILL;
  d.exit_code = -1;
  fake.die(1, d);  // no claim: b is requeued, and worker 0 can run it
  await_sent(0, 2);
  EXPECT_EQ(sent_to(0), (std::vector<std::size_t>{a, b}));
  answer(0, a, 1);
  answer(0, b, 2);
  EXPECT_EQ(value_of(a), 1);
  EXPECT_EQ(value_of(b), 2);
}

// ---- timeouts -----------------------------------------------------------------------------
// (No test here is named "Timeout" or "Corrupt": CI's TSan job skips such names, meant for tests
// whose workers die on purpose, and these run no process.)

SchedulerOptions with_timeout(std::chrono::nanoseconds timeout) {
  SchedulerOptions o;
  o.task_timeout = timeout;
  return o;
}

TEST_F(SchedulerTest, OverdueTaskIsKilledAndFailsAsOverrun) {
  FakeTransport& fake = workers(1);
  start(with_timeout(1s));
  const std::size_t a = submit();
  const std::size_t b = submit();
  fake.running(0, task(a), detail::steady_now_ns() - std::chrono::nanoseconds(10s).count());
  const auto timeout = error_of<TaskTimeout>(a);
  ASSERT_TRUE(timeout);
  EXPECT_NE(std::string(timeout->what()).find("task_timeout (1000 ms)"), std::string::npos)
      << timeout->what();
  EXPECT_EQ(fake.snapshot().slots[0].kills, 1u);
  await_sent(0, 1, 2);
  answer(0, b, 2);
  EXPECT_EQ(value_of(b), 2);
}

TEST_F(SchedulerTest, PausedOrRecentTaskIsNotKilled) {
  FakeTransport& fake = workers(1);
  start(with_timeout(10s));
  const std::size_t a = submit();
  fake.running(0, task(a), 0);  // paused (its arguments still streaming in, say)
  ASSERT_TRUE(fake.await_idle());
  fake.running(0, task(a), detail::steady_now_ns());
  ASSERT_TRUE(fake.await_idle());
  EXPECT_EQ(fake.snapshot().slots[0].kills, 0u);
  fake.running(0, task(a), detail::steady_now_ns() - std::chrono::nanoseconds(20s).count());
  ASSERT_TRUE(error_of<TaskTimeout>(a));
  EXPECT_EQ(fake.snapshot().slots[0].kills, 1u);
}

// The ring of answers and the word that says what a worker runs are read apart: the worker can
// finish a, claim b and start it between the collector's look at the ring and its look at the
// word. Then b's `running` event comes before a's answer, and that answer must not make the
// pool forget that b runs: b's deadline went with it (an overdue b was never killed), and a
// stop took the running b for one not started (Cancelled, its answer dropped).
TEST_F(SchedulerTest, AnAnswerReadAfterTheNextTaskStartedLeavesThatTaskRunning) {
  FakeTransport& fake = workers(1);
  start(with_timeout(50ms));
  const std::size_t a = submit();
  const std::size_t b = submit();
  await_sent(0, 2);
  fake.running(0, task(a), detail::steady_now_ns());
  fake.running(0, task(b), detail::steady_now_ns());
  answer(0, a, 1);
  EXPECT_EQ(value_of(a), 1);
  EXPECT_TRUE(error_of<TaskTimeout>(b));  // b still runs, and overruns
  EXPECT_EQ(fake.snapshot().slots[0].kills, 1u);
}

// The same order of events, then a stop of b's token: b had started, so it is not Cancelled but
// returns what it computed. Regression test: the pool took b for one not started, failed its
// future with Cancelled and dropped its answer (seen now and then in stop_bench's
// BM_StopLatency, which stops a task it has seen start).
TEST_F(SchedulerTest, AStopAfterAnAnswerReadLateLeavesTheNextTaskRunning) {
  FakeTransport& fake = workers(1);
  start();
  multicore::StopSource source;
  const std::size_t a = submit();
  JobSpec stoppable;
  stoppable.stop = source.get_token();
  const std::size_t b = submit(stoppable);
  await_sent(0, 2);
  fake.running(0, task(a), detail::steady_now_ns());
  fake.running(0, task(b), detail::steady_now_ns());
  answer(0, a, 1);
  EXPECT_EQ(value_of(a), 1);  // a's answer was read after b's `running` event
  source.request_stop();
  EXPECT_FALSE(board_.resolved(b));
  answer(0, b, 2);
  EXPECT_EQ(value_of(b), 2);
}

// A task can run from start to end between two reads of one poll: the poll reads the ring of
// answers (not there yet), then the word that says what runs (back to none). A stop at that
// moment took the task for one not started: Cancelled, and its answer dropped. Regression test
// (seen in stop_bench's BM_StopLatency, 8 runs in 25): its answer, read by a second look, is
// its outcome.
TEST_F(SchedulerTest, AStopLooksAgainForAnAnswerThatLandedWhileItLooked) {
  FakeTransport& fake = workers(1);
  start();
  multicore::StopSource source;
  JobSpec stoppable;
  stoppable.stop = source.get_token();
  const std::size_t b = submit(stoppable);
  await_sent(0, 1);
  ASSERT_TRUE(fake.await_idle());
  fake.answer_during_next_poll(0, {task(b), value_payload(2), 0, long_run_ns});
  source.request_stop();
  EXPECT_EQ(value_of(b), 2);
}

TEST_F(SchedulerTest, TaskThatAnsweredJustBeforeTheKillForOverrunIsNotBlamed) {
  FakeTransport& fake = workers(1);
  fake.die_on_kill(false);  // the test says when the killed worker's death is seen
  start(with_timeout(1s));
  const std::size_t a = submit();
  const std::size_t b = submit();
  fake.running(0, task(a), detail::steady_now_ns() - std::chrono::nanoseconds(10s).count());
  await_log("kill 0");
  // Meanwhile the worker had finished a and claimed b: b did nothing wrong.
  answer(0, a, 1);
  fake.running(0, task(b), detail::steady_now_ns());
  fake.crash(0, SIGKILL);
  EXPECT_EQ(value_of(a), 1);
  await_sent(0, 1, 2);
  EXPECT_FALSE(board_.resolved(b));
  answer(0, b, 2);
  EXPECT_EQ(value_of(b), 2);
}

// ---- max_tasks_per_worker, abandonment ----------------------------------------------------

TEST_F(SchedulerTest, NoProcessIsSentMoreThanMaxTasksPerWorker) {
  FakeTransport& fake = workers(1);
  SchedulerOptions options;
  options.max_tasks_per_worker = 3;
  start(options);
  const std::vector<std::size_t> jobs = submit_many(5);
  answer(0, jobs[0], 0);
  answer(0, jobs[1], 1);
  await_sent(0, 3);
  ASSERT_TRUE(fake.await_idle());
  EXPECT_EQ(sent_to(0, 1), (std::vector<std::size_t>{jobs[0], jobs[1], jobs[2]}));
  answer(0, jobs[2], 2);
  // The worker exits after its third task, as its own max_tasks tells it to.
  Death exited;
  exited.exit_code = 0;
  fake.die(0, exited);
  await_sent(0, 2, 2);
  answer(0, jobs[3], 3);
  answer(0, jobs[4], 4);
  for (std::size_t i = 0; i < jobs.size(); ++i) EXPECT_EQ(value_of(jobs[i]), static_cast<int>(i));
  EXPECT_EQ(sent_to(0, 2), (std::vector<std::size_t>{jobs[3], jobs[4]}));
}

TEST_F(SchedulerTest, AbandonedJobIsDroppedFromTheQueueUnsent) {
  workers(1);
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  auto abandon = std::make_shared<std::atomic<bool>>(false);
  const std::size_t c = submit(abandoned_when(abandon));
  const std::size_t d = submit();
  abandon->store(true);
  answer(0, a, 1);
  await_sent(0, 3);
  EXPECT_EQ(sent_to(0), (std::vector<std::size_t>{a, b, d}));
  answer(0, b, 2);
  answer(0, d, 4);
  EXPECT_EQ(value_of(d), 4);
  shutdown_bounded();  // waits for nothing more: c no longer counts
  EXPECT_EQ(board_.get(c).calls, 0);
}

// ---- shutdown, terminate, a broken transport ----------------------------------------------

TEST_F(SchedulerTest, ShutdownWaitsForQueuedAndInFlightJobsThenStopsEveryWorker) {
  FakeTransport& fake = workers(2);
  start();
  const std::vector<std::size_t> jobs = submit_many(5);  // 2 + 2 sent, 1 queued
  ShutdownThread shutdown(*scheduler_);
  ASSERT_TRUE(fake.await_idle());
  EXPECT_FALSE(shutdown.returned_within(0s));
  EXPECT_EQ(fake.snapshot().slots[0].stops + fake.snapshot().slots[1].stops, 0u);
  answer(1, jobs[1], 1);  // makes room for the queued job on worker 1
  await_sent(1, 3);
  answer(0, jobs[0], 0);
  answer(1, jobs[2], 2);
  answer(0, jobs[3], 3);
  answer(1, jobs[4], 4);
  ASSERT_TRUE(shutdown.returned_within(liveness));
  for (std::size_t i = 0; i < jobs.size(); ++i) EXPECT_EQ(value_of(jobs[i]), static_cast<int>(i));
  const State s = fake.snapshot();
  EXPECT_EQ(s.slots[0].stops, 1u);
  EXPECT_EQ(s.slots[1].stops, 1u);
  EXPECT_EQ(s.slots[0].kills + s.slots[1].kills, 0u);
  // Every worker was asked to stop only once every answer was in.
  const auto starts_with = [](const char* prefix) {
    return [prefix](const std::string& entry) { return entry.rfind(prefix, 0) == 0; };
  };
  const auto first_stop = std::find_if(s.log.begin(), s.log.end(), starts_with("stop"));
  const auto last_answer = std::find_if(s.log.rbegin(), s.log.rend(), starts_with("answer"));
  EXPECT_LE(last_answer.base(), first_stop);  // base(): just after the last answer
  EXPECT_TRUE(thrown_exactly<PoolClosed>([&] { submit(); }));
}

TEST_F(SchedulerTest, TerminateFailsEveryUnresolvedJobOnceWithPoolClosed) {
  FakeTransport& fake = workers(2);
  start();
  const std::vector<std::size_t> jobs = submit_many(6);  // 2 + 2 sent, 2 queued
  answer(0, jobs[0], 0);
  EXPECT_EQ(value_of(jobs[0]), 0);
  await_sent(0, 3);
  // Behind a job that waits, an abandoned one stays queued until the end.
  auto abandon = std::make_shared<std::atomic<bool>>(true);
  const std::size_t abandoned = submit(abandoned_when(abandon));
  // A graceful shutdown waits for the rest; terminate cuts it short.
  ShutdownThread shutdown(*scheduler_);
  ASSERT_TRUE(fake.await_idle());
  scheduler_->terminate();
  ASSERT_TRUE(shutdown.returned_within(liveness));
  for (std::size_t i = 1; i < jobs.size(); ++i) {
    EXPECT_TRUE(error_of<PoolClosed>(jobs[i])) << "job " << i;
    EXPECT_EQ(board_.get(jobs[i]).calls, 1);
  }
  EXPECT_EQ(board_.get(abandoned).calls, 0);
  EXPECT_TRUE(fake.snapshot().closed);
  EXPECT_TRUE(thrown_exactly<PoolClosed>([&] { submit(); }));
  scheduler_->terminate();  // again: nothing more happens
  scheduler_->shutdown();
  for (std::size_t i = 1; i < jobs.size(); ++i) EXPECT_EQ(board_.get(jobs[i]).calls, 1);
}

TEST_F(SchedulerTest, BrokenTransportLosesJobsInFlightAndClosesTheQueue) {
  FakeTransport& fake = workers(1);
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  const std::size_t c = submit();
  await_sent(0, 2);
  fake.break_with("the fork server died");
  for (const std::size_t j : {a, b}) {
    const auto lost = error_of<WorkerLost>(j);
    ASSERT_TRUE(lost);
    EXPECT_EQ(std::string(lost->what()), "the fork server died");
    EXPECT_EQ(lost->signal(), SIGKILL);
  }
  const auto closed = error_of<PoolClosed>(c);
  ASSERT_TRUE(closed);
  EXPECT_EQ(std::string(closed->what()), "the fork server died");
  const auto refused = thrown_exactly<PoolClosed>([&] { submit(); });
  ASSERT_TRUE(refused);
  EXPECT_EQ(std::string(refused->what()), "the fork server died");
  EXPECT_EQ(fake.snapshot().slots[0].lives, 1u);
}

// The transport may still be taking a request when it breaks: it reads the request's bytes on
// every pump() until the worker's death is reported (ShmTransport's MessageSender keeps a span
// of them), so they must outlive the failed job. Disabled: today the scheduler frees them when
// it fails the job (transport_lost_locked), and the next pump() reads freed memory (the fake
// reports changed bytes; ASan a heap-use-after-free). Enable with the fix.
TEST_F(SchedulerTest, RequestInProgressOutlivesABrokenTransport) {
  FakeTransport& fake = workers(1);
  fake.limit_room(sizeof(detail::RequestHeader));  // the job's payload stays unsent
  start();
  const std::size_t a = submit();
  await_sent(0, 1);
  fake.break_with("the fork server died");
  ASSERT_TRUE(error_of<WorkerLost>(a));
  fake.make_room(0, 64);  // the dead worker's ring had room left: the transport sends more
  ASSERT_TRUE(fake.await_idle());
  fake.crash(0, SIGKILL);
  ASSERT_TRUE(fake.await_idle());
}

TEST_F(SchedulerTest, TransportThatBreaksWhileReplacingAWorkerResolvesEveryJobOnce) {
  FakeTransport& fake = workers(1);
  fake.plan_start(0, {StartPlan::Kind::ready, 0, ""});
  fake.plan_start(0, {StartPlan::Kind::broken, 0, "the fork server died"});
  start();
  const std::size_t a = submit();
  const std::size_t b = submit();
  const std::size_t c = submit();
  fake.running(0, task(a), detail::steady_now_ns());
  fake.crash(0, SIGKILL);  // its replacement cannot be made: start() throws
  const auto lost = error_of<WorkerLost>(a);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGKILL);
  for (const std::size_t j : {b, c}) {
    const auto closed = error_of<PoolClosed>(j);
    ASSERT_TRUE(closed);
    EXPECT_EQ(std::string(closed->what()), "the fork server died");
  }
  EXPECT_TRUE(thrown_exactly<PoolClosed>([&] { submit(); }));
}

// ---- concurrency ----------------------------------------------------------------------------

TEST_F(SchedulerTest, CallersThatPollForTheirOwnAnswersShareTheReceiveSide) {
  FakeTransport& fake = workers(2);
  fake.respond([](const multicore_test::fake::Sent& sent) {
    return std::optional<Answer>(
        Answer{sent.task_id, value_payload(static_cast<int>(job_of(sent))), 0, 1000});
  });
  start();
  constexpr int calls_per_thread = 300;
  std::vector<std::thread> callers;
  for (int t = 0; t < 2; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < calls_per_thread; ++i) {
        const std::size_t index = board_.add();
        std::unique_ptr<detail::Job> job = scheduler_->new_job();
        detail::begin_request(job->request);
        const std::uint64_t marker = index;
        job->request.write(&marker, sizeof marker);
        detail::finish_request(job->request, 0, 1);
        job->emplace_completion<Recording>(board_, index, false, nullptr);
        scheduler_->call(
            std::move(job), [&] { return board_.resolved(index); },
            [&] { board_.sleep_until_resolved(index, 100ms); });
        EXPECT_TRUE(board_.resolved(index));
      }
    });
  }
  for (std::thread& t : callers) t.join();
  ASSERT_EQ(board_.size(), 2u * calls_per_thread);
  for (std::size_t j = 0; j < board_.size(); ++j) EXPECT_EQ(value_of(j), static_cast<int>(j));
}

}  // namespace
