// SPDX-License-Identifier: MIT
// Pool: persistent worker processes that run your functions, fed through shared memory.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>

#include "codec.hpp"
#include "detail/core/pool_core.hpp"
#include "detail/front/completions.hpp"
#include "detail/front/submit.hpp"
#include "detail/protocol/entries.hpp"
#include "detail/protocol/request.hpp"
#include "detail/util/linkage.hpp"
#include "errors.hpp"
#include "map.hpp"
#include "options.hpp"
#include "stats.hpp"

namespace multicore {

template <class R>
class Task;

namespace mpi {
class Cluster;
}

/// A fixed set of worker processes, forked once, that run functions for you.
///
/// Each task runs in a separate process: if it crashes, calls exit, hangs past
/// `task_timeout`, leaks or scribbles on global state, your process is unharmed, the task's
/// future reports what happened, and the worker is replaced. Arguments and results are copied
/// through shared memory (raw bytes for trivially copyable values, cereal otherwise).
///
///     multicore::Pool pool;                                    // one worker per usable core
///     std::future<int> f = pool.submit(fib, 30);               // runs in a worker process
///     for (double r : pool.map(simulate, std::views::iota(0, 1000)))
///       consume(r);                                            // in input order, as they finish
///     std::cout << f.get();
///
/// Workers are forks of your program made when the pool is built: they see globals as they
/// were then. Make pools early, before starting threads. All member functions are thread-safe
/// except destruction and move-assignment (like any standard type). Linux only.
class Pool {
 public:
  /// Forks the fork server and the workers, runs `on_worker_start` in each, and returns when
  /// all are ready. Throws std::invalid_argument for bad options, SystemError when a process or
  /// the shared memory cannot be made, Error when on_worker_start throws; nothing is left
  /// running then.
  MULTICORE_DECL explicit Pool(PoolOptions options = {});

  /// Runs on the workers of every rank of an MPI job (see multicore/mpi.hpp, which defines this
  /// constructor): size() is their sum. One Pool at a time per Cluster; throws Error otherwise.
  explicit Pool(mpi::Cluster& cluster);

  /// Finishes every submitted task, then stops the workers (see shutdown()). In a process
  /// forked after the pool was made, releases nothing (see detail::make_core). Tasks and maps
  /// made from this pool then throw PoolClosed where they would need it.
  MULTICORE_DECL ~Pool();

  /// Tasks and maps made from `other` carry on with this one.
  Pool(Pool&&) noexcept = default;
  /// Shuts this pool down (finishing its work), then takes over `other`'s.
  MULTICORE_DECL Pool& operator=(Pool&& other) noexcept;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Number of worker processes (also in inline mode, where none are made).
  unsigned size() const noexcept { return core_ ? core_->size() : 0; }

  /// Runs `f(args...)` in a worker process. Never blocks on the task.
  ///
  /// `f` is a function, a lambda that captures only trivially copyable values, or a function
  /// object with a cereal serialize(). Arguments are copied (a string literal becomes a
  /// std::string); what cannot cross a process boundary is a compile-time error.
  ///
  /// The future holds the result, or throws: RemoteError (the task threw), WorkerLost (its
  /// worker died), TaskTimeout, SerializationError, PoolClosed (terminate() cut it off).
  /// Throws PoolClosed itself after shutdown()/terminate(), SerializationError if an argument
  /// cannot be encoded.
  template <class F, class... Args>
  std::future<detail::call_result_t<F, Args...>> submit(F&& f, Args&&... args) {
    detail::check_submission<F, Args...>();
    using R = detail::call_result_t<F, Args...>;
    std::unique_ptr<detail::Job> job =
        detail::request_job<Format::binary, F, Args...>(&core(), f, args...);
    std::future<R> future =
        job->emplace_completion<detail::PromiseCompletion<R, Format::binary>>().future();
    core().submit(std::move(job));
    return future;
  }

  /// Runs `f(args...)` in a worker process and waits for its result: the synchronous form of
  /// submit(), like Python's Pool.apply. Use it to isolate one call (a crash-prone or
  /// thread-unsafe library) without needing a future.
  ///
  /// Faster than submit().get() for one call at a time: the calling thread picks its answer
  /// straight from the worker's ring (spinning briefly, then sleeping) instead of waiting for
  /// the collector thread to fulfil a std::future. Returns the result or throws what the
  /// future would (RemoteError, WorkerLost, TaskTimeout, SerializationError, PoolClosed).
  template <class F, class... Args>
  detail::call_result_t<F, Args...> call(F&& f, Args&&... args) {
    detail::check_submission<F, Args...>();
    using R = detail::call_result_t<F, Args...>;
    detail::CallResult<R> result;
    std::unique_ptr<detail::Job> job =
        detail::request_job<Format::binary, F, Args...>(&core(), f, args...);
    job->emplace_completion<detail::CallCompletion<R, Format::binary>>(&result);
    core().call(
        std::move(job), [&] { return result.latch.done(); }, [&] { result.latch.wait(); });
    return result.take();
  }

  /// Applies `f` to every input in worker processes and yields the results in input order,
  /// each as soon as it and all before it are done.
  ///
  /// Lazy: inputs are read through a bounded window as you iterate, so an endless range works
  /// as long as you stop. Inputs travel in chunks (MapOptions::chunk_size, automatic by
  /// default); MapOptions::threads_per_worker > 1 runs items of a chunk on several threads
  /// per worker, for functions that block. Dereferencing a result whose task failed throws
  /// its error; ++ continues with the next one. An input range that throws ends the map: the
  /// inputs read before it yield their results, then its exception takes the next place.
  /// Destroying the range early abandons the rest: chunks not started never run, and a worker
  /// still running one 100 ms later is replaced.
  ///
  ///     for (int square : pool.map([](int x) { return x * x; }, std::views::iota(0)))
  ///       if (square > 1000) break;
  ///
  /// An item that is a std::tuple or std::pair is spread over the parameters of a function
  /// that takes its elements rather than the item (Python's starmap), as with zip():
  ///
  ///     for (double z : pool.map([](int x, double y) { return x * y; }, multicore::zip(xs, ys)))
  ///
  /// `inputs` is held by reference when it is an lvalue: keep it alive while iterating.
  template <class F, std::ranges::input_range R>
  auto map(F&& f, R&& inputs, MapOptions options = {}) {
    return make_map<true>(std::forward<F>(f), std::forward<R>(inputs), options);
  }

  /// Like map(), but yields (input index, result) pairs in the order tasks finish.
  template <class F, std::ranges::input_range R>
  auto map_unordered(F&& f, R&& inputs, MapOptions options = {}) {
    return make_map<false>(std::forward<F>(f), std::forward<R>(inputs), options);
  }

  /// A consistent snapshot of what the pool has done and does: tasks submitted, queued,
  /// running, done and failed (by error), workers replaced (by why), and per worker its pid,
  /// tasks, busy time and current task's running time (see PoolStats). Cheap; any thread.
  PoolStats stats() { return core().stats(); }

  /// Stops accepting tasks, waits until every submitted task is resolved, then stops the
  /// workers (killing any that do not exit within 2 s). First continues (SIGCONT) any worker
  /// stopped from outside, so that its task can finish. Blocks as long as the tasks run, like
  /// joining a thread: a task that never ends blocks it for ever unless task_timeout is set
  /// (terminate() does not wait). Idempotent; never throws.
  void shutdown() noexcept {
    if (core_ && !is_snapshot()) core_->shutdown();
  }

  /// Stops now: kills the workers; every unfinished task's future gets PoolClosed. Bounded
  /// (a few seconds at most, even with stopped or unresponsive workers). Never throws.
  void terminate() noexcept {
    if (core_ && !is_snapshot()) core_->terminate();
  }

 private:
  template <class R>
  friend class Task;

  /// True in a process forked after this pool was made (a fork server, a worker, a child of
  /// the application): this object is then a copy of the parent's, a snapshot.
  bool is_snapshot() const noexcept { return generation_ != detail::process_generation(); }

  /// The pool's core; throws in a process forked after the pool was made (see
  /// throw_snapshot), PoolClosed when this Pool was moved from.
  MULTICORE_DECL detail::PoolCore& core();

  [[noreturn]] MULTICORE_DECL static void throw_snapshot();

  /// Shuts the pool down, then lets go of its core. Tasks and maps that borrow the core at
  /// that moment (on other threads) keep it until they are done with it, but it is closed:
  /// they finish what they started and throw PoolClosed for anything new.
  void release() noexcept {
    shutdown();
    core_.reset();
  }

  /// The core that a Task made from a pool of `generation` borrowed, for one use, or null once
  /// that Pool is gone. Throws as core() does in a process forked after the pool was made.
  MULTICORE_DECL static std::shared_ptr<detail::PoolCore> borrow(
      const std::weak_ptr<detail::PoolCore>& core, std::uint64_t generation);

  /// borrow(), throwing PoolClosed once the Pool is gone.
  MULTICORE_DECL static std::shared_ptr<detail::PoolCore> lock(
      const std::weak_ptr<detail::PoolCore>& core, std::uint64_t generation);

  template <bool Ordered, class F, class R>
  auto make_map(F&& f, R&& inputs, const MapOptions& options) {
    using Fn = std::decay_t<F>;
    // An lvalue input is held by reference (the caller keeps it alive), an rvalue by value.
    using Source = std::conditional_t<std::is_lvalue_reference_v<R>, R, std::remove_cvref_t<R>>;
    using In = detail::wire_t<std::ranges::range_reference_t<std::remove_reference_t<Source>&>>;
    if constexpr (detail::spreads_item<Fn, In>()) {  // f(a, b, ...) for a tuple item
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        detail::check_invocation<Fn, Fn&, std::tuple_element_t<I, In>...>();
      }
      (std::make_index_sequence<std::tuple_size_v<In>>{});
    } else {
      detail::check_invocation<Fn, Fn&, In>();
    }
    static_assert(!std::is_void_v<detail::item_result_t<Fn, In>>,
                  "multicore: map needs a function that returns a value; for functions that "
                  "return nothing use submit() or Task<void>");
    (void)core();  // throws if this pool cannot be used here
    return MapResults<Fn, Source, Ordered>(core_, std::forward<F>(f), std::forward<R>(inputs),
                                           options);
  }

  std::uint64_t generation_ = detail::process_generation();  // before core_: see core()
  std::shared_ptr<detail::PoolCore> core_;
};

// ---- definitions (see detail/util/linkage.hpp) -----------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL Pool::Pool(PoolOptions options) : core_(detail::make_core(std::move(options))) {}

MULTICORE_DECL Pool::~Pool() { release(); }

MULTICORE_DECL Pool& Pool::operator=(Pool&& other) noexcept {
  if (this != &other) {
    release();
    core_ = std::move(other.core_);
    generation_ = other.generation_;
  }
  return *this;
}

MULTICORE_DECL detail::PoolCore& Pool::core() {
  // First: in a worker, this object is a snapshot taken while the pool was being built.
  if (is_snapshot()) throw_snapshot();
  if (!core_) throw PoolClosed("multicore: this Pool was moved from");
  return *core_;
}

MULTICORE_DECL void Pool::throw_snapshot() {
  throw Error(
      "multicore: a Pool cannot be used from inside a worker process, nor from any other "
      "process forked after it was made: the copy there is a snapshot, not a working pool "
      "(make a new Pool there if you need one)");
}

MULTICORE_DECL std::shared_ptr<detail::PoolCore> Pool::borrow(
    const std::weak_ptr<detail::PoolCore>& core, std::uint64_t generation) {
  if (generation != detail::process_generation()) throw_snapshot();
  return core.lock();
}

MULTICORE_DECL std::shared_ptr<detail::PoolCore> Pool::lock(
    const std::weak_ptr<detail::PoolCore>& core, std::uint64_t generation) {
  if (generation != detail::process_generation()) throw_snapshot();
  return detail::lock_core(core);
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore
