// SPDX-License-Identifier: MIT
// Jobs recycled with their buffers, so that steady traffic allocates nothing.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../util/warm_buffer.hpp"
#include "job.hpp"

namespace multicore::detail {

/// Hands out jobs and takes them back once resolved, with their request buffer and completion
/// storage. Each thread that takes jobs keeps one of its own (a call() that received its own
/// answer reuses it for its next call without any lock); the rest wait in a shared free list,
/// also every job given back by a thread that never takes one (the collector: a job cached
/// there would never be used again, and the caller that lost it would make a new one). One large
/// request buffer is kept warm (see WarmBuffer) for the next large request, since faulting in a
/// fresh one costs more than copying into it. Thread-safe.
class JobPool {
 public:
  /// A job to fill in: a recycled one when there is one. A request expected to be large
  /// (`size_hint` bytes) gets the warm large buffer if it is big enough.
  std::unique_ptr<Job> take(std::size_t size_hint = 0);

  /// Takes back a job whose completion has been resolved.
  void give_back(std::unique_ptr<Job> job) noexcept;

  /// Gives back a large request buffer that went unused for a while.
  void release_cold_buffers() noexcept;

 private:
  static constexpr std::size_t max_spare_jobs = 1024;
  using Clock = WarmBuffer::Clock;

  /// One job per thread, outside any lock. Jobs belong to no pool in particular.
  static std::unique_ptr<Job>& cached_job() noexcept {
    thread_local std::unique_ptr<Job> job;
    return job;
  }

  /// Whether this thread has taken a job: only such threads cache one.
  static bool& takes_jobs() noexcept {
    thread_local bool takes = false;
    return takes;
  }

  std::mutex mutex_;  // guards everything below
  std::vector<std::unique_ptr<Job>> spare_jobs_;
  Writer large_request_;  // a large request buffer kept warm for the next large request
  Clock::time_point large_used_{};
};

// ---- definitions ------------------------------------------------------------------------------

inline std::unique_ptr<Job> JobPool::take(std::size_t size_hint) {
  takes_jobs() = true;
  std::unique_ptr<Job> job = std::move(cached_job());
  if (job && size_hint <= Job::max_kept_bytes) return job;  // the common case: no lock
  std::lock_guard lock(mutex_);
  if (!job && !spare_jobs_.empty()) {
    job = std::move(spare_jobs_.back());
    spare_jobs_.pop_back();
  }
  if (!job) {
    job = std::make_unique<Job>();
    // And a spare: a job whose answer another thread delivered goes back only after its
    // caller was told, so a caller that moves on at once finds no job; without the spare, its
    // next call would make one more (once, under load, unlike in any warm-up). With a request
    // buffer like this one's, for the same reason.
    if (spare_jobs_.empty()) {
      auto spare = std::make_unique<Job>();
      if (size_hint <= Job::max_kept_bytes) spare->request.reserve(size_hint);
      spare_jobs_.push_back(std::move(spare));
    }
  }
  if (size_hint > Job::max_kept_bytes && large_request_.capacity() >= size_hint) {
    job->request = std::move(large_request_);
  }
  return job;
}

inline void JobPool::give_back(std::unique_ptr<Job> job) noexcept {
  const bool large = job->request.capacity() > Job::max_kept_bytes;
  if (!large) {
    job->recycle();
    if (std::unique_ptr<Job>& cached = cached_job(); !cached && takes_jobs()) {
      cached = std::move(job);
      return;
    }
  }
  std::lock_guard lock(mutex_);
  if (large && job->request.capacity() > large_request_.capacity()) {
    large_request_ = std::move(job->request);
    large_request_.clear(WarmBuffer::max_warm_bytes);
    large_used_ = Clock::now();
  }
  job->recycle();
  if (spare_jobs_.size() < max_spare_jobs) spare_jobs_.push_back(std::move(job));
}

inline void JobPool::release_cold_buffers() noexcept {
  std::lock_guard lock(mutex_);
  if (large_request_.capacity() > 0 && Clock::now() - large_used_ >= WarmBuffer::warm_for) {
    large_request_ = Writer();
  }
}

}  // namespace multicore::detail
