// SPDX-License-Identifier: MIT
// What a pool has done and is doing: the snapshot Pool::stats() returns.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace multicore {

/// One worker slot of a pool. A slot keeps its index when its process is replaced; the counts
/// cover every process it had.
struct WorkerStats {
  unsigned index = 0;  ///< 0 .. Pool::size()-1
  /// Its process now; 0 while it has none (being started or replaced, stopped at shutdown).
  int pid = 0;
  /// Where it runs: "" on this machine, "rank 3 (node07)" for a worker of an MPI agent.
  std::string where;
  std::uint64_t tasks = 0;  ///< tasks it answered (a map chunk is one task)
  /// Their run time in the worker (decoding the arguments and running your function).
  std::chrono::nanoseconds busy{0};
  /// How long the task it runs now has run; 0 when it runs none.
  std::chrono::nanoseconds current_task{0};
  std::uint64_t replaced = 0;  ///< times its process was replaced (see PoolStats::Replaced)
};

/// A consistent snapshot of a pool's work, from Pool::stats() (any thread; it takes the pool's
/// scheduling lock for a moment). Tasks are what `submit`, `call` and `Task::run` send, and the
/// chunks a map cuts its input into (MapOptions::chunk_size). Always
/// `submitted == queued + running + done + failed + abandoned`.
struct PoolStats {
  std::uint64_t submitted = 0;  ///< accepted by the pool
  std::uint64_t queued = 0;     ///< waiting for a worker
  /// Handed to a worker and not yet resolved (includes a task whose error is being delivered).
  std::uint64_t running = 0;
  /// Answered by a worker: with a value, or with the exception the task threw.
  std::uint64_t done = 0;
  /// Of `done`: the task threw (its future throws RemoteError). Map chunks are not looked
  /// into: their items' errors are not counted here.
  std::uint64_t threw = 0;
  /// Ended without an answer: the sum of the counts in `failed_by`.
  std::uint64_t failed = 0;
  struct Failed {
    std::uint64_t worker_lost = 0;   ///< its worker died (WorkerLost)
    std::uint64_t task_timeout = 0;  ///< it ran past task_timeout (TaskTimeout)
    std::uint64_t pool_closed = 0;   ///< terminate() or a lost fork server (PoolClosed)
    std::uint64_t cancelled = 0;     ///< its StopSource was stopped (Cancelled)
    /// Anything else: no memory to receive the answer (SerializationError), no worker could
    /// be started (Error, SystemError).
    std::uint64_t other = 0;
  } failed_by;
  /// Chunks of a map abandoned before they were sent (the map's range was destroyed early).
  std::uint64_t abandoned = 0;

  /// Worker processes replaced, by why. A process that could not start is not counted.
  struct Replaced {
    std::uint64_t crashed = 0;    ///< died on its own: a signal, exit() or _exit() in a task
    std::uint64_t timed_out = 0;  ///< killed: its task ran past task_timeout, or it was stopped
    std::uint64_t retired = 0;    ///< ran max_tasks_per_worker tasks
    /// killed: still running a chunk of an abandoned map, or a cancelled task past its grace
    std::uint64_t cut_off = 0;
    std::uint64_t broke_protocol = 0;  ///< killed: it sent a corrupt answer
  } replaced;

  /// One entry per worker slot, in slot order. Empty for a pool in inline mode.
  std::vector<WorkerStats> workers;
};

}  // namespace multicore
