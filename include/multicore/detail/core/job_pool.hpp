// SPDX-License-Identifier: MIT
// Jobs recycled with their buffers, so that steady traffic allocates nothing.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../util/warm_buffer.hpp"
#include "../util/warm_shelf.hpp"
#include "job.hpp"

namespace multicore::detail {

/// Hands out jobs and takes them back once resolved, with their request buffer and completion
/// storage. Each thread that takes jobs keeps one of its own (a call() that received its own
/// answer reuses it for its next call without any lock); the rest wait in a shared free list,
/// also every job given back by a thread that never takes one (the collector: a job cached
/// there would never be used again, and the caller that lost it would make a new one). Large
/// request buffers are kept warm (see WarmBuffer) for the next large requests, since faulting in
/// a fresh one costs more than copying into it: up to max_warm_requests of them, a map's window
/// of large chunks, within `max_warm_bytes` in all, until none was used for WarmBuffer::warm_for.
/// Thread-safe.
class JobPool {
 public:
  static constexpr std::size_t max_warm_requests = 8;

  explicit JobPool(std::size_t max_warm_bytes = WarmBuffer::max_warm_bytes) noexcept
      : max_warm_bytes_(max_warm_bytes) {}

  /// A job to fill in: a recycled one when there is one. A request expected to be large
  /// (`size_hint` bytes) gets the smallest warm large buffer that holds it, if one does.
  std::unique_ptr<Job> take(std::size_t size_hint = 0);

  /// Takes back a job whose completion has been resolved.
  void give_back(std::unique_ptr<Job> job) noexcept;

  /// Gives back the large request buffers once none was used for a while.
  void release_cold_buffers() noexcept;

  /// Jobs in the shared free list (for tests).
  std::size_t spare_jobs() {
    std::lock_guard lock(mutex_);
    return spare_jobs_.size();
  }

  /// Large request buffers kept warm (for tests).
  std::size_t warm_requests() {
    std::lock_guard lock(mutex_);
    return warm_requests_.size();
  }

 private:
  static constexpr std::size_t max_spare_jobs = 1024;
  using Clock = WarmBuffer::Clock;

  /// One job per thread, outside any lock. Jobs belong to no pool in particular.
  static std::unique_ptr<Job>& cached_job() noexcept {
    thread_local std::unique_ptr<Job> job;
    return job;
  }

  /// The pool this thread last took a job from (0: none yet): only threads that take jobs
  /// cache one, and a thread's first take from a pool leaves a spare behind (see take).
  static std::uint64_t& last_taken_from() noexcept {
    thread_local std::uint64_t pool = 0;
    return pool;
  }

  /// A number no other JobPool of this process had: an address may be reused by a later pool.
  static std::uint64_t new_id() noexcept {
    static std::atomic<std::uint64_t> last{0};
    return last.fetch_add(1, std::memory_order_relaxed) + 1;
  }

  /// Keeps `buffer` warm, emptied, if the bounds allow (see WarmShelf::keep); else leaves it,
  /// to be freed with the job's recycling.
  void keep_warm(Writer& buffer) noexcept;

  const std::uint64_t id_ = new_id();
  std::size_t max_warm_bytes_;
  std::mutex mutex_;  // guards everything below
  std::vector<std::unique_ptr<Job>> spare_jobs_;
  WarmShelf<Writer> warm_requests_{max_warm_requests};  // large request buffers, emptied
  Clock::time_point warm_used_{};                       // when one was last given back
};

// ---- definitions ------------------------------------------------------------------------------

inline std::unique_ptr<Job> JobPool::take(std::size_t size_hint) {
  const bool first_here = std::exchange(last_taken_from(), id_) != id_;
  std::unique_ptr<Job> job = std::move(cached_job());
  if (job && !first_here && size_hint <= Job::max_kept_bytes) return job;  // no lock
  std::lock_guard lock(mutex_);
  const bool made = !job && spare_jobs_.empty();
  if (made) {
    job = std::make_unique<Job>();
  } else if (!job) {
    job = std::move(spare_jobs_.back());
    spare_jobs_.pop_back();
  }
  // And a spare, with a thread's first job from this pool (also when it brought one along from
  // another pool): a job whose answer another thread delivered goes back only after its caller
  // was told, so a caller that moves on at once finds no job; without the spare, its next call
  // would make one more (once, under load, unlike in any warm-up). With a request buffer like
  // this one's, for the same reason.
  if ((made || first_here) && spare_jobs_.empty()) {
    auto spare = std::make_unique<Job>();
    if (size_hint <= Job::max_kept_bytes) spare->request.reserve(size_hint);
    spare_jobs_.push_back(std::move(spare));
  }
  if (size_hint > Job::max_kept_bytes) {
    // The smallest warm buffer that holds the request: the larger ones stay for larger ones.
    if (Writer warm = warm_requests_.take(size_hint); warm.capacity() != 0) {
      job->request = std::move(warm);
    }
  }
  return job;
}

inline void JobPool::give_back(std::unique_ptr<Job> job) noexcept {
  const bool large = job->request.capacity() > Job::max_kept_bytes;
  if (!large) {
    job->recycle();
    if (std::unique_ptr<Job>& cached = cached_job(); !cached && last_taken_from() != 0) {
      cached = std::move(job);
      return;
    }
  }
  std::lock_guard lock(mutex_);
  if (large) keep_warm(job->request);
  job->recycle();
  if (spare_jobs_.size() < max_spare_jobs) spare_jobs_.push_back(std::move(job));
}

inline void JobPool::keep_warm(Writer& buffer) noexcept {
  buffer.clear(max_warm_bytes_);  // one larger than the bound is freed here
  if (buffer.capacity() == 0) return;
  warm_used_ = Clock::now();
  warm_requests_.keep(buffer, max_warm_bytes_);
}

inline void JobPool::release_cold_buffers() noexcept {
  std::lock_guard lock(mutex_);
  if (!warm_requests_.empty() && Clock::now() - warm_used_ >= WarmBuffer::warm_for) {
    warm_requests_.clear();
  }
}

}  // namespace multicore::detail
