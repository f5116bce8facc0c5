// SPDX-License-Identifier: MIT
// The definitions of pool_core.hpp: the pool's core on its scheduler and transport.
#pragma once

#include <pthread.h>

#include <bit>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <utility>

#include "../../codec.hpp"
#include "../../system.hpp"
#include "../protocol/entries.hpp"
#include "../transport/shm/shm_transport.hpp"
#include "../transport/shm/zygote.hpp"
#include "../util/code_ref.hpp"
#include "../util/huge_pages.hpp"
#include "../util/threads.hpp"
#include "pool_core.hpp"
#include "scheduler.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define MULTICORE_LEAK_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define MULTICORE_LEAK_SANITIZER 1
#endif
#endif
#if MULTICORE_LEAK_SANITIZER
#include <sanitizer/lsan_interface.h>
#endif

namespace multicore::detail {

/// True when MULTICORE_INLINE is set to something other than "0" or "".
inline bool inline_requested_by_environment() noexcept {
  const char* v = std::getenv("MULTICORE_INLINE");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

/// Runs in the child of every fork() (the pool's own and the application's alike) once this
/// process has made a pool, while the child has a single thread. Every Pool object the child
/// inherited becomes a snapshot (see Pool::core()), and the library's process-wide state is
/// made usable again: a lock another thread held at the moment of the fork would otherwise
/// stay locked for ever in the child, and threads of the parent do not exist there.
inline void after_fork_in_child() noexcept {
  ++process_generation();
  OwnedDescriptors::instance().after_fork();
}

MULTICORE_DECL void watch_forks() {
  static const int error = [] {
    // Made now, before any fork can run the handler: a child that inherited one of them
    // half-constructed (by another thread) would wait for it for ever. The same goes for
    // every lazily made process-wide value that workers use: another thread making it at the
    // moment of a fork leaves its guard taken in the child (a worker hung in the first
    // Writer::reserve that way).
    OwnedDescriptors::instance();
    huge_page_bytes();
    ModuleTable::instance();
    return pthread_atfork(nullptr, nullptr, after_fork_in_child);
  }();
  if (error != 0) throw SystemError("pthread_atfork", error);
}

/// Checks the options a user gave and fills in the defaults. Throws std::invalid_argument
/// naming the field and the offending value.
MULTICORE_DECL PoolOptions validated(PoolOptions o) {
  if (o.workers == 0) o.workers = usable_cores();
  if (o.workers > max_workers) {
    throw std::invalid_argument("multicore: PoolOptions::workers is " + std::to_string(o.workers) +
                                "; the maximum is " + std::to_string(max_workers));
  }
  if (o.ring_bytes < min_ring_bytes || o.ring_bytes > max_ring_bytes) {
    throw std::invalid_argument("multicore: PoolOptions::ring_bytes is " +
                                std::to_string(o.ring_bytes) + "; it must be between " +
                                std::to_string(min_ring_bytes) + " and " +
                                std::to_string(max_ring_bytes));
  }
  o.ring_bytes = std::bit_ceil(o.ring_bytes);
  if (o.task_timeout.count() < 0) {
    throw std::invalid_argument("multicore: PoolOptions::task_timeout is negative (" +
                                std::to_string(o.task_timeout.count()) + " ms)");
  }
  if (inline_requested_by_environment()) o.run_inline = true;
  return o;
}

/// PoolOptions::task_timeout in the scheduler's nanoseconds, saturated at max_task_timeout
/// (std::chrono's own conversion overflows past 292 years, undefined behaviour).
inline std::chrono::nanoseconds saturated_timeout(std::chrono::milliseconds timeout) noexcept {
  constexpr auto max_ms = std::chrono::duration_cast<std::chrono::milliseconds>(max_task_timeout);
  return timeout >= max_ms ? max_task_timeout : std::chrono::nanoseconds(timeout);
}

MULTICORE_DECL PoolCore::PoolCore(PoolOptions options) : options_(validated(std::move(options))) {
  watch_forks();
  if (options_.run_inline) {
    run_on_worker_start_here();
    return;
  }
  check_other_threads(options_.other_threads, "a Pool", "PoolOptions::other_threads");
  stop_table();  // before the first fork: every worker shares this process's stop flags
  ShmOptions shm;
  shm.workers = options_.workers;
  shm.ring_bytes = options_.ring_bytes;
  shm.on_start = options_.on_worker_start;
  shm.max_tasks = options_.max_tasks_per_worker;
  shm.output = options_.worker_output;
  shm.on_output = options_.on_worker_output;
  start(std::make_unique<ShmTransport>(std::move(shm)));
}

MULTICORE_DECL PoolCore::PoolCore(PoolOptions options, std::unique_ptr<Transport> transport) {
  watch_forks();
  options.workers = transport->size();
  options_ = validated(std::move(options));
  if (options_.run_inline) {
    run_on_worker_start_here();
    return;
  }
  start(std::move(transport));
}

MULTICORE_DECL PoolCore::~PoolCore() = default;

MULTICORE_DECL std::unique_ptr<Job> PoolCore::new_job(std::size_t size_hint) {
  return scheduler_ ? scheduler_->new_job(size_hint) : std::make_unique<Job>();
}

MULTICORE_DECL std::shared_ptr<VectorCache> PoolCore::vectors() const noexcept {
  return scheduler_ ? scheduler_->vectors() : nullptr;
}

MULTICORE_DECL void PoolCore::submit(std::unique_ptr<Job> job) {
  if (scheduler_) {
    scheduler_->submit(std::move(job));
    return;
  }
  if (closed_.load(std::memory_order_acquire)) {
    throw PoolClosed("multicore: the pool is shut down; no new tasks are accepted");
  }
  if (stop_seen(job->stop)) {
    job->completion().fail(cancelled_error());
    inline_cancelled_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const bool threw = run_here(job->request.bytes(), job->completion());
  inline_done_.fetch_add(1, std::memory_order_relaxed);
  if (threw) inline_threw_.fetch_add(1, std::memory_order_relaxed);
}

MULTICORE_DECL void PoolCore::call(std::unique_ptr<Job> job, FunctionRef<bool()> done,
                                   FunctionRef<void()> sleep) {
  if (!scheduler_) {
    submit(std::move(job));
    return;
  }
  scheduler_->call(std::move(job), done, sleep);
}

MULTICORE_DECL void PoolCore::help(FunctionRef<bool()> done, FunctionRef<void()> sleep) {
  if (scheduler_) {
    scheduler_->help(done, sleep);
  } else if (!done()) {
    sleep();
  }
}

MULTICORE_DECL void PoolCore::abandon() noexcept {
  if (scheduler_) scheduler_->abandon();
}

MULTICORE_DECL void PoolCore::shutdown() noexcept {
  closed_.store(true, std::memory_order_release);
  if (scheduler_) scheduler_->shutdown();
}

MULTICORE_DECL void PoolCore::terminate() noexcept {
  closed_.store(true, std::memory_order_release);
  if (scheduler_) scheduler_->terminate();
}

MULTICORE_DECL bool PoolCore::run_here(std::span<const std::byte> request, Completion& completion) {
  Writer answer;
  const std::int64_t began = steady_now_ns();
  run_request(request, answer);
  const bool threw = completion.reports_exception(answer.bytes());
  Reader reader(std::span<const std::byte>(answer.bytes()));
  completion.deliver(reader, static_cast<std::uint64_t>(steady_now_ns() - began));
  if (completion.unpublished()) completion.publish();
  return threw;
}

MULTICORE_DECL PoolStats PoolCore::stats() {
  if (scheduler_) return scheduler_->stats();
  PoolStats s;
  s.done = inline_done_.load(std::memory_order_relaxed);
  s.threw = inline_threw_.load(std::memory_order_relaxed);
  s.failed = s.failed_by.cancelled = inline_cancelled_.load(std::memory_order_relaxed);
  s.submitted = s.done + s.failed;
  return s;
}

MULTICORE_DECL void PoolCore::start(std::unique_ptr<Transport> transport) {
  SchedulerOptions s;
  s.task_timeout = saturated_timeout(options_.task_timeout);
  s.max_tasks_per_worker = options_.max_tasks_per_worker;
  scheduler_ = std::make_unique<Scheduler>(std::move(transport), s);
}

MULTICORE_DECL void PoolCore::run_on_worker_start_here() {
  if (!options_.on_worker_start) return;
  try {
    options_.on_worker_start();
  } catch (...) {
    throw Error("multicore: on_worker_start threw: " + describe_thrown());
  }
}

MULTICORE_DECL std::shared_ptr<PoolCore> share_core(std::unique_ptr<PoolCore> made) {
  const std::uint64_t generation = process_generation();
  return std::shared_ptr<PoolCore>(made.release(), [generation](PoolCore* core) {
    if (generation == process_generation()) {
      delete core;
      return;
    }
#if MULTICORE_LEAK_SANITIZER
    __lsan_ignore_object(core);
#endif
  });
}

MULTICORE_DECL std::shared_ptr<PoolCore> make_core(PoolOptions options) {
  return share_core(std::make_unique<PoolCore>(std::move(options)));
}

}  // namespace multicore::detail
