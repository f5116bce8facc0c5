// SPDX-License-Identifier: MIT
// The publisher: a second thread that makes decoded answers visible to their callers while
// many are waiting, so that the collector is not the only thread that does it.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "../util/threads.hpp"
#include "job.hpp"

namespace multicore::detail {

/// Publishes jobs whose completion is decoded but not yet visible (Completion::unpublished):
/// on a thread of its own, started when first needed, and on any thread that calls
/// publish_some(). Why a thread: making a std::future ready costs a system call however
/// uncontended (libstdc++'s std::call_once is glibc's pthread_once, whose slow path always
/// wakes), 0.3 to 1.5 us on our machines; with many small tasks, a collector doing that for
/// every answer was the busiest thread of the application, while an in-process thread pool
/// spreads those calls over its threads.
///
/// A batch is published last job first: a caller waiting for the oldest future of a batch
/// (the usual order of get() calls) then wakes once for the whole batch, not once per future.
/// Thread-safe.
class Publisher {
 public:
  /// `finish(jobs)` takes published jobs (recycles them, counts them resolved).
  explicit Publisher(std::function<void(std::vector<std::unique_ptr<Job>>&)> finish)
      : finish_(std::move(finish)) {}
  ~Publisher() { stop(); }
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  /// Queues `job` for publication; returns it instead when it cannot be queued (stopped, no
  /// memory, no thread could be started): the caller then publishes it itself.
  std::unique_ptr<Job> take(std::unique_ptr<Job> job) noexcept;

  /// Publishes up to `most` of the latest queued jobs on the calling thread (a collector with
  /// nothing else to do helps). Whether there were any.
  bool publish_some(std::size_t most) noexcept;

  /// Publishes what is queued, then ends the thread. Later take() calls return their job.
  void stop() noexcept;

 private:
  void run() noexcept;
  /// Publishes `batch` (last first), hands it to finish_ and leaves it empty.
  void publish(std::vector<std::unique_ptr<Job>>& batch) noexcept;

  std::function<void(std::vector<std::unique_ptr<Job>>&)> finish_;
  std::mutex mutex_;  // guards everything below
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Job>> queue_;
  std::vector<std::unique_ptr<Job>> helper_batch_;  // publish_some()'s, kept for its capacity
  bool asleep_ = false;
  bool stopped_ = false;
  bool no_thread_ = false;  // starting it failed: the callers publish
  std::thread thread_;
  std::mutex helper_mutex_;  // one publish_some() at a time (it uses helper_batch_)
};

// ---- definitions ------------------------------------------------------------------------------

inline std::unique_ptr<Job> Publisher::take(std::unique_ptr<Job> job) noexcept {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    if (stopped_ || no_thread_) return job;
    try {
      if (!thread_.joinable()) thread_ = start_own_thread("multicore-pub", [this] { run(); });
    } catch (...) {
      no_thread_ = true;
      return job;
    }
    try {
      queue_.push_back(std::move(job));
    } catch (...) {
      return job;  // push_back moves nothing when it throws
    }
    wake = asleep_;
  }
  if (wake) wake_.notify_one();
  return nullptr;
}

inline bool Publisher::publish_some(std::size_t most) noexcept {
  std::unique_lock helping(helper_mutex_, std::try_to_lock);
  if (!helping.owns_lock()) return false;
  std::vector<std::unique_ptr<Job>>& batch = helper_batch_;
  {
    std::lock_guard lock(mutex_);
    const std::size_t n = std::min(most, queue_.size());
    if (n == 0) return false;
    try {
      batch.reserve(n);
    } catch (...) {
      return false;  // the thread publishes them
    }
    // The latest ones, kept in their order: publish() goes last first.
    const auto from = queue_.end() - static_cast<std::ptrdiff_t>(n);
    batch.insert(batch.end(), std::make_move_iterator(from), std::make_move_iterator(queue_.end()));
    queue_.erase(from, queue_.end());
  }
  publish(batch);
  return true;
}

inline void Publisher::stop() noexcept {
  {
    std::lock_guard lock(mutex_);
    stopped_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  // The thread publishes everything queued before it ends; without one, nothing was queued.
}

inline void Publisher::run() noexcept {
  std::vector<std::unique_ptr<Job>> batch;
  std::unique_lock lock(mutex_);
  for (;;) {
    while (queue_.empty() && !stopped_) {
      asleep_ = true;
      wake_.wait(lock);
      asleep_ = false;
    }
    if (queue_.empty()) return;  // stopped, and all published
    batch.swap(queue_);          // queue_ takes the previous batch's capacity: no allocation
    lock.unlock();
    publish(batch);
    lock.lock();
  }
}

inline void Publisher::publish(std::vector<std::unique_ptr<Job>>& batch) noexcept {
  for (auto job = batch.rbegin(); job != batch.rend(); ++job) (*job)->completion().publish();
  finish_(batch);
  batch.clear();
}

}  // namespace multicore::detail
