// SPDX-License-Identifier: MIT
// What a Pool is underneath: validated options, and either worker processes or inline mode.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "../../errors.hpp"
#include "../../options.hpp"
#include "../../stats.hpp"
#include "../transport/transport.hpp"
#include "../util/function_ref.hpp"
#include "../util/linkage.hpp"
#include "../util/process.hpp"
#include "job.hpp"

// This header declares the pool's core; pool_core_impl.hpp defines it, with everything that
// runs the workers (the scheduler, the shared-memory transport, the fork server). Files that
// use a Pool see only this: its templates reach the machinery through the functions below.
// Header-only (the default), every file that includes this also includes those definitions,
// inline; with the compiled part, only src/multicore.cpp does (see util/linkage.hpp).

namespace multicore::detail {

inline constexpr unsigned max_workers = 1024;
/// Below this, large payloads stream in too many hand-offs: each is a wait when the two sides
/// share a core, and a 16 MiB echo through a 4 KiB ring took 20 times as long as through the
/// default 1 MiB (payload_bench's BM_RoundTripRing); through 64 KiB, a few times as long.
inline constexpr std::size_t min_ring_bytes = std::size_t{64} << 10;
inline constexpr std::size_t max_ring_bytes = std::size_t{1} << 30;

/// Checks the options a user gave and fills in the defaults. Throws std::invalid_argument
/// naming the field and the offending value.
MULTICORE_DECL PoolOptions validated(PoolOptions o);

/// Registers, once, what the child of every fork of this process runs (see
/// after_fork_in_child): before the first fork server is made, so that its workers run it too.
/// Throws SystemError if it cannot be registered.
MULTICORE_DECL void watch_forks();

class Scheduler;
class VectorCache;

/// The machinery shared by Pool, Pool::map and Task: accepts encoded jobs and resolves their
/// completions, in worker processes or, in inline mode, right here.
class PoolCore {
 public:
  /// A pool of workers forked on this machine (or inline, as the options say).
  explicit PoolCore(PoolOptions options);
  /// A pool on the workers of `transport` (a cluster's): `options` say how it is scheduled
  /// (task_timeout, max_tasks_per_worker, run_inline); `workers` is the transport's size.
  PoolCore(PoolOptions options, std::unique_ptr<Transport> transport);
  ~PoolCore();
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;

  unsigned size() const noexcept { return options_.workers; }
  bool is_inline() const noexcept { return options_.run_inline; }

  /// A job to fill in (request and completion) and submit(); `size_hint`: see
  /// Scheduler::new_job.
  std::unique_ptr<Job> new_job(std::size_t size_hint = 0);

  /// Storage kept for maps' chunks, shared by the pool's maps (see VectorCache); nullptr in
  /// inline mode.
  std::shared_ptr<VectorCache> vectors() const noexcept;

  /// Queues a filled-in job. Throws PoolClosed after shutdown()/terminate(), and Error when
  /// called from inside one of this pool's workers.
  void submit(std::unique_ptr<Job> job);

  /// Submits a job and waits for it, helping to collect answers (see Scheduler::wait_helping);
  /// in inline mode runs it here. Returns once the job's completion has been resolved.
  void call(std::unique_ptr<Job> job, FunctionRef<bool()> done, FunctionRef<void()> sleep);

  /// Waits until `done` holds (for jobs already submitted), helping to collect answers; in
  /// inline mode they all ran already.
  void help(FunctionRef<bool()> done, FunctionRef<void()> sleep);

  /// Some jobs were abandoned (see Scheduler::abandon); in inline mode they all ran already.
  void abandon() noexcept;

  void shutdown() noexcept;
  void terminate() noexcept;

  /// Runs a request in this process, through the same entry and decoding as a worker would.
  /// Returns whether the task threw (see Completion::reports_exception).
  static bool run_here(std::span<const std::byte> request, Completion& completion);

  /// What the pool has done (see PoolStats). In inline mode every task is done once submitted,
  /// and there are no workers.
  PoolStats stats();

 private:
  void start(std::unique_ptr<Transport> transport);
  /// Inline mode has no worker: on_worker_start runs once, here.
  void run_on_worker_start_here();

  PoolOptions options_;
  std::unique_ptr<Scheduler> scheduler_;
  std::atomic<bool> closed_{false};
  std::atomic<std::uint64_t> inline_done_{0};  // inline mode: tasks run, and those that threw
  std::atomic<std::uint64_t> inline_threw_{0};
  std::atomic<std::uint64_t> inline_cancelled_{0};  // refused: their StopSource was stopped
};

/// Owns a pool's core for a Pool, and lends it (weakly) to the Tasks and maps made from it:
/// they survive the Pool object being moved, and notice it being destroyed (see lock_core).
/// In a process forked after the core was made (a worker, a child of the application), the
/// core is a snapshot of the parent's: its collector thread, fork server and workers belong to
/// the parent. Destroying it there would join a thread that does not exist and stop the
/// parent's workers (through the shared rings and the inherited command socket), so it is left
/// as it is; its memory goes with the process. LeakSanitizer, which also checks a forked child
/// that exits normally, is told that this is meant.
MULTICORE_DECL std::shared_ptr<PoolCore> share_core(std::unique_ptr<PoolCore> made);

/// A core on workers forked on this machine, shared as share_core() says.
MULTICORE_DECL std::shared_ptr<PoolCore> make_core(PoolOptions options);

/// The core a Task or a map borrowed, for one use. Throws PoolClosed once its Pool is gone.
MULTICORE_DECL std::shared_ptr<PoolCore> lock_core(const std::weak_ptr<PoolCore>& core);

#if MULTICORE_DEFINE
MULTICORE_DECL std::shared_ptr<PoolCore> lock_core(const std::weak_ptr<PoolCore>& core) {
  std::shared_ptr<PoolCore> locked = core.lock();
  if (!locked) {
    throw PoolClosed(
        "multicore: the Pool is gone (destroyed, or moved from before this Task or map was "
        "made from it)");
  }
  return locked;
}
#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail

#if MULTICORE_DEFINE
#include "pool_core_impl.hpp"  // IWYU pragma: keep (the definitions, header-only)
#endif
