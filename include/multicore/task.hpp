// SPDX-License-Identifier: MIT
// Task: a batch of runs whose results come back in run() order, behind a load-average gate.
#pragma once

#include <cmath>
#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/core/pool_core.hpp"
#include "detail/front/completions.hpp"
#include "detail/front/submit.hpp"
#include "detail/protocol/entries.hpp"
#include "detail/protocol/request.hpp"
#include "detail/serialize/json.hpp"
#include "options.hpp"
#include "pool.hpp"
#include "system.hpp"

namespace multicore {

/// A batch of calls run on a Pool, whose results come back in the order of the run() calls.
/// This is the seed library's Task: decide once whether going parallel is worth it right now
/// (the load-average gate), then run() as many calls as you like and get() them all.
///
///     multicore::Task<std::string> task(pool, {.max_load_average = 0.8});
///     for (auto [begin, end] : multicore::ranges(items.size()))
///       task.run(render, begin, end);             // render reads the items from a global
///     for (const std::string& part : task.get()) std::cout << part;
///
/// When the gate says no (`!task`), run() executes each call right away in the calling
/// process, through the same encode/decode path, so results and errors look the same.
/// A Task is used from one thread. It is move-only, and keeps working when its Pool object
/// is moved; once its Pool is destroyed, run() throws PoolClosed.
template <class R = void>
class Task {
 public:
  /// Reads the load average if `options.max_load_average` > 0: when the 1-minute load per
  /// usable core is above it, this task runs inline. Throws std::invalid_argument for a
  /// negative or NaN threshold, SystemError if the load average cannot be read.
  explicit Task(Pool& pool, TaskOptions options = {})
      : generation_(pool.generation_), options_(options) {
    // In a worker, `pool` is a snapshot taken while it was being made: its core_ may not be
    // constructed yet. Such a Task throws (see Pool::lock) before it would need one.
    if (!pool.is_snapshot()) core_ = pool.core_;
    if (options.max_load_average < 0 || std::isnan(options.max_load_average)) {
      throw std::invalid_argument("multicore: TaskOptions::max_load_average must be >= 0, got " +
                                  std::to_string(options.max_load_average));
    }
    parallel_ =
        options.max_load_average == 0 || load_average_per_core() <= options.max_load_average;
  }

  // Move-only: copies would share one batch of results, which the first get() takes.
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  Task(Task&&) noexcept = default;
  Task& operator=(Task&&) noexcept = default;
  ~Task() = default;

  /// False when the load gate said no: run() then executes inline.
  explicit operator bool() const noexcept { return parallel_; }

  /// Runs `f(args...)`: in the pool, or inline right now when the gate said no. Its result
  /// must convert to R (for Task<void>, any result is ignored). Never waits for the call.
  /// Throws std::logic_error after get() or on a moved-from Task, PoolClosed when the pool is
  /// shut down or destroyed,
  /// SerializationError when an argument cannot be encoded (for Format::json: when it has no
  /// cereal serialize()).
  template <class F, class... Args>
  void run(F&& f, Args&&... args) {
    detail::check_submission<F, Args...>();
    static_assert(std::is_void_v<R> || std::is_convertible_v<detail::call_result_t<F, Args...>, R>,
                  "multicore: Task<R>::run: the function's result does not convert to R");
    check_not_moved_from();
    if (got_) throw std::logic_error("multicore: Task::run() called after get()");
    if (options_.format == Format::json) {
      run_as<Format::json, F, Args...>(f, args...);
    } else {
      run_as<Format::binary, F, Args...>(f, args...);
    }
  }

  /// Waits for every run() and returns their results in run() order (nothing for Task<void>).
  /// If any failed, waits for all of them, then throws the first failure in run() order.
  /// Call once: a second get(), or get() on a moved-from Task, throws std::logic_error. While
  /// it waits, the calling thread helps collect answers from the workers.
  auto get() {
    check_not_moved_from();
    if (got_) throw std::logic_error("multicore: Task::get() called twice");
    got_ = true;
    if (!batch_->latch.done()) {
      // A pool that is gone resolved every run before it went.
      if (std::shared_ptr<detail::PoolCore> core = Pool::borrow(core_, generation_)) {
        core->help([&] { return batch_->latch.done(); }, [&] { batch_->latch.wait(); });
      }
    }
    std::exception_ptr first_error;
    if constexpr (std::is_void_v<R>) {
      for (auto& result : batch_->runs) {
        if (result.error && !first_error) first_error = result.error;
      }
      if (first_error) std::rethrow_exception(first_error);
    } else {
      std::vector<R> results;
      results.reserve(batch_->runs.size());
      for (auto& result : batch_->runs) {
        if (result.error) {
          if (!first_error) first_error = result.error;
        } else if (!first_error) {
          results.push_back(std::move(*result.value));
        }
      }
      if (first_error) std::rethrow_exception(first_error);
      return results;
    }
  }

 private:
  /// run() in format Fmt.
  template <Format Fmt, class F, class... Args>
  void run_as(const F& f, const Args&... args) {
    using Result = detail::call_result_t<F, Args...>;
    std::shared_ptr<detail::PoolCore> core;
    if (parallel_) core = Pool::lock(core_, generation_);
    std::unique_ptr<detail::Job> job = detail::request_job<Fmt, F, Args...>(core.get(), f, args...);
    auto& result = batch_->runs.emplace_back();
    job->emplace_completion<detail::TaskRunCompletion<R, Result, Fmt>>(batch_, &result);
    batch_->latch.expect();
    if (!parallel_) {
      detail::PoolCore::run_here(job->request.bytes(), job->completion());
      return;
    }
    try {
      core->submit(std::move(job));
    } catch (...) {
      batch_->latch.arrive();  // takes the expect() back
      batch_->runs.pop_back();
      throw;
    }
  }

  void check_not_moved_from() const {
    if (!batch_) throw std::logic_error("multicore: this Task was moved from");
  }

  std::weak_ptr<detail::PoolCore> core_;  // the Pool's: see detail::make_core
  std::uint64_t generation_;              // the Pool's: see Pool::lock
  TaskOptions options_;
  bool parallel_ = true;
  bool got_ = false;
  // Shared with the runs' completions: a Task destroyed before they finish leaves them a
  // place to write.
  std::shared_ptr<detail::TaskBatch<R>> batch_ = std::make_shared<detail::TaskBatch<R>>();
};

}  // namespace multicore
