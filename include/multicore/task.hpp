// SPDX-License-Identifier: MIT
// Task: a batch of runs whose results come back in run() order, behind a load-average gate.
#pragma once

#include <cmath>
#include <exception>
#include <future>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/call.hpp"
#include "detail/pool_core.hpp"
#include "detail/promise.hpp"
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
/// A Task is used from one thread.
template <class R = void>
class Task {
 public:
  /// Reads the load average if `options.max_load_average` > 0: when the 1-minute load per
  /// usable core is above it, this task runs inline. Throws std::invalid_argument for a
  /// negative or NaN threshold, SystemError if the load average cannot be read.
  explicit Task(Pool& pool, TaskOptions options = {}) : pool_(&pool), options_(options) {
    if (options.max_load_average < 0 || std::isnan(options.max_load_average)) {
      throw std::invalid_argument("multicore: TaskOptions::max_load_average must be >= 0, got " +
                                  std::to_string(options.max_load_average));
    }
    parallel_ =
        options.max_load_average == 0 || load_average_per_core() <= options.max_load_average;
  }

  /// False when the load gate said no: run() then executes inline.
  explicit operator bool() const noexcept { return parallel_; }

  /// Runs `f(args...)`: in the pool, or inline right now when the gate said no. Its result
  /// must convert to R (for Task<void>, any result is ignored). Throws std::logic_error after
  /// get(), PoolClosed when the pool is shut down, SerializationError when an argument cannot
  /// be encoded (for Format::json: when it has no cereal serialize()).
  template <class F, class... Args>
  void run(F&& f, Args&&... args) {
    using Result = detail::result_of_t<F, Args...>;
    static_assert(std::is_void_v<R> || std::is_convertible_v<Result, R>,
                  "multicore: Task<R>::run: the function's result does not convert to R");
    if (got_) throw std::logic_error("multicore: Task::run() called after get()");
    if (parallel_) {
      futures_.push_back(wrap<Result>(
          pool_->submit_as(options_.format, std::forward<F>(f), std::forward<Args>(args)...)));
      return;
    }
    using Fn = std::decay_t<F>;
    detail::check_call<Fn, detail::wire_t<Args>...>();
    auto completion = std::make_unique<detail::PromiseCompletion<Result>>(options_.format);
    auto future = completion->future();
    Writer request;
    detail::encode_call(request, options_.format, static_cast<const Fn&>(f),
                        static_cast<const detail::wire_t<Args>&>(args)...);
    detail::PoolCore::run_here(request.bytes(), *completion);
    futures_.push_back(wrap<Result>(std::move(future)));
  }

  /// Waits for every run() and returns their results in run() order (nothing for Task<void>).
  /// If any failed, waits for all of them, then throws the first failure in run() order.
  /// Call once: a second get() throws std::logic_error.
  auto get() {
    if (got_) throw std::logic_error("multicore: Task::get() called twice");
    got_ = true;
    std::exception_ptr first_error;
    if constexpr (std::is_void_v<R>) {
      for (auto& f : futures_) {
        try {
          f.get();
        } catch (...) {
          if (!first_error) first_error = std::current_exception();
        }
      }
      if (first_error) std::rethrow_exception(first_error);
    } else {
      std::vector<R> results;
      results.reserve(futures_.size());
      for (auto& f : futures_) {
        try {
          results.push_back(f.get());
        } catch (...) {
          if (!first_error) first_error = std::current_exception();
        }
      }
      if (first_error) std::rethrow_exception(first_error);
      return results;
    }
  }

 private:
  using Stored = std::conditional_t<std::is_void_v<R>, void, R>;

  /// Adapts a future of the function's own result type to one of R.
  template <class Result>
  static std::future<Stored> wrap(std::future<Result> f) {
    if constexpr (std::is_same_v<Result, Stored>) {
      return f;
    } else {
      return std::async(std::launch::deferred, [f = std::move(f)]() mutable -> Stored {
        if constexpr (std::is_void_v<Stored>) {
          f.get();
        } else {
          return static_cast<Stored>(f.get());
        }
      });
    }
  }

  Pool* pool_;
  TaskOptions options_;
  bool parallel_ = true;
  bool got_ = false;
  std::vector<std::future<Stored>> futures_;
};

}  // namespace multicore
