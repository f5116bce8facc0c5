// SPDX-License-Identifier: MIT
// A few persistent threads inside one worker process, for MapOptions::threads_per_worker.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "function_ref.hpp"
#include "linkage.hpp"
#include "threads.hpp"

namespace multicore::detail {

/// Runs body(i) for every i in [0, n) on up to `threads` threads of this process, the calling
/// thread included, and returns when all are done. Threads are made on first use and kept
/// until the team is destroyed (a worker runs many chunks). One run at a time, so a team has
/// one owner: a worker (which serves one request at a time) or a single inline run. Never
/// global: a fork made later (a pool made in the application or inside a worker) would
/// inherit a team whose threads do not exist in it, and concurrent inline maps would share it.
class ThreadTeam {
 public:
  ThreadTeam() = default;
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  MULTICORE_DECL ~ThreadTeam();

  /// `body(begin, end)` runs the items [begin, end) and must not throw: on one thread it is
  /// called once for all `n`, on several once per item, so that a fast item costs no call of
  /// its own. Not a template (the body is borrowed, see FunctionRef): the team's threads are
  /// compiled once, in the compiled part (util/linkage.hpp).
  MULTICORE_DECL void run(std::size_t n, unsigned threads,
                          FunctionRef<void(std::size_t, std::size_t)> body);

 private:
  MULTICORE_DECL void help(std::size_t index);
  MULTICORE_DECL void take_items();

  /// Ends a process an item forked, once its thread is back from the items: the copy has none
  /// of the team's other threads, so it would wait for them (or for the next run) for ever.
  void leave_if_forked() const noexcept {
    if (getpid() != owner_) _exit(0);
  }

  const pid_t owner_ = getpid();  // the team's threads exist in this process only
  std::mutex mutex_;
  std::condition_variable work_;
  std::condition_variable done_;
  std::vector<std::thread> helpers_;
  const FunctionRef<void(std::size_t, std::size_t)>* body_ = nullptr;
  std::size_t n_ = 0;
  std::atomic<std::size_t> next_{0};
  std::size_t wanted_ = 0;
  std::size_t busy_ = 0;
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
};

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL ThreadTeam::~ThreadTeam() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  for (std::thread& t : helpers_) t.join();
}

MULTICORE_DECL void ThreadTeam::run(std::size_t n, unsigned threads,
                                    FunctionRef<void(std::size_t, std::size_t)> body) {
  const std::size_t helpers = threads > 1 && n > 1 ? std::min<std::size_t>(threads, n) - 1 : 0;
  if (helpers == 0) {
    body(0, n);
    return;
  }
  {
    std::unique_lock lock(mutex_);
    while (helpers_.size() < helpers) {
      const std::size_t index = helpers_.size();
      helpers_.push_back(start_own_thread("multicore-team", [this, index] { help(index); }));
    }
    body_ = &body;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    wanted_ = helpers;
    busy_ = helpers;
    ++generation_;
  }
  work_.notify_all();
  take_items();
  leave_if_forked();
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return busy_ == 0; });
}

MULTICORE_DECL void ThreadTeam::help(std::size_t index) {
  std::uint64_t seen = 0;
  std::unique_lock lock(mutex_);
  for (;;) {
    work_.wait(lock, [&] { return stopping_ || (generation_ != seen && index < wanted_); });
    if (stopping_) return;
    seen = generation_;
    lock.unlock();
    take_items();
    leave_if_forked();
    lock.lock();
    if (--busy_ == 0) done_.notify_all();
  }
}

MULTICORE_DECL void ThreadTeam::take_items() {
  for (;;) {
    const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= n_) return;
    (*body_)(i, i + 1);
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
