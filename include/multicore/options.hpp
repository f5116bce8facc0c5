// SPDX-License-Identifier: MIT
// Plain option structs for Pool, Pool::map and Task.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <string_view>

#include "stop.hpp"

namespace multicore {

/// What to do when other threads run as a `Pool` (or `mpi::Cluster`) forks its fork server:
/// whatever they hold at that moment (a lock, an OpenMP runtime's thread pool) is copied into
/// every worker half-made, and tasks that touch it can hang.
enum class OtherThreads {
  warn,    ///< say so once per process on stderr, with what to do (the default)
  ignore,  ///< say nothing (you know the threads hold nothing tasks need)
  error,   ///< throw multicore::Error instead of making the pool
};

/// Where the workers' stdout and stderr go (see `PoolOptions::worker_output`).
enum class WorkerOutput {
  /// Straight to the parent's stdout and stderr, as the workers print it (the default).
  inherit,
  /// Line by line, each prefixed `[worker 3 pid 4242] `; a line is never split or mixed with
  /// another worker's.
  tagged,
};

/// Which of a worker's streams a line of `PoolOptions::on_worker_output` comes from.
enum class WorkerStream { out, err };

/// How a `Pool` is built. Every field has a sensible default; `Pool(PoolOptions{})` uses
/// one worker per usable core.
struct PoolOptions {
  /// Number of worker processes; 0 means `usable_cores()`. At most 1024.
  unsigned workers = 0;
  /// Bytes of each shared-memory ring (one request and one response ring per worker).
  /// Rounded up to a power of two; from 64 KiB to 1 GiB. Larger payloads stream through.
  std::size_t ring_bytes = std::size_t{1} << 20;
  /// Runs in every worker process after it starts, also in replacements (open a database
  /// connection, seed a generator, ...). If it throws while the pool is being made, the
  /// `Pool` constructor throws `multicore::Error`.
  std::function<void()> on_worker_start{};
  /// 0: none. Otherwise a task running longer is failed with `TaskTimeout` and its worker
  /// is killed and replaced. Any length is accepted: `milliseconds::max()` means practically
  /// never (timeouts beyond about 146 years all count as that).
  std::chrono::milliseconds task_timeout{0};
  /// 0: unlimited. Otherwise each worker is replaced after running this many tasks.
  std::size_t max_tasks_per_worker = 0;
  /// Debug aid: run every task in the calling process, through the same encode/decode path.
  /// `MULTICORE_INLINE=1` in the environment does the same for every pool.
  bool run_inline = false;
  /// Other threads running as the pool is made (see OtherThreads; multicore's own threads,
  /// other pools' included, do not count). Not checked in inline mode, which forks nothing.
  OtherThreads other_threads = OtherThreads::warn;
  /// What becomes of the workers' stdout and stderr. Whatever the mode, the last lines a dead
  /// worker wrote to stderr are in its `WorkerLost::output_tail()`.
  WorkerOutput worker_output = WorkerOutput::inherit;
  /// If set, every line the workers print (stdout and stderr, without its newline) goes here
  /// instead, whatever `worker_output` says: `(worker, stream, line)`, `worker` being the
  /// worker's number (0 to workers - 1). Called on one thread of the pool's, one line at a
  /// time, in the order each worker printed them; what it throws is ignored. A slow callback
  /// slows only the workers that print. It must not use its own pool (that throws Error) nor
  /// wait for its results: the pool's output, and workers that fill their pipe, wait for it.
  std::function<void(unsigned, WorkerStream, std::string_view)> on_worker_output{};
};

/// How far a map is, as MapOptions::on_progress hears it.
struct MapProgress {
  std::size_t done = 0;  ///< items whose results (or errors) have come back
  /// Items in all, when the input is a sized range (std::ranges::size); unknown otherwise.
  std::optional<std::size_t> total;
  std::chrono::steady_clock::duration elapsed{};  ///< since the map was made
};

/// How `Pool::map` and `Pool::map_unordered` cut their input into tasks.
struct MapOptions {
  /// Inputs per task; 0 lets the pool choose (and adapt it to how long items take).
  std::size_t chunk_size = 0;
  /// Threads in each worker that run items of one chunk concurrently; use more than 1 for
  /// functions that block (I/O, sleeps), as fast_map does: processes x threads.
  unsigned threads_per_worker = 1;
  /// Called with how far the map is, in the thread that iterates over its results (while it
  /// waits for them, or moves on to the next), at most once per `progress_interval`, and once
  /// more when the last item is done. What it throws comes out of the iteration.
  std::function<void(const MapProgress&)> on_progress{};
  std::chrono::milliseconds progress_interval{100};
  /// Cancels the map when its source is stopped (from any thread): no more inputs are read,
  /// chunks not started never run, and their items, then one more in the next place, throw
  /// Cancelled, which ends the map. request_stop(grace) also cuts off chunks still running.
  StopToken stop{};
};

/// Wire format of a `Task`'s arguments and results.
enum class Format {
  binary,  ///< by the encoding rule: Codec, your cereal functions, raw bytes, cereal (README)
  json,    ///< cereal's JSON archive for every value (each needs a cereal serialize())
};

/// How a `Task` decides to run, and how it encodes values.
struct TaskOptions {
  /// 0: no gate. Otherwise, when the 1-minute load average divided by `usable_cores()` is
  /// above this, the task runs its work inline in the caller instead of in the pool.
  double max_load_average = 0;
  Format format = Format::binary;
};

}  // namespace multicore
