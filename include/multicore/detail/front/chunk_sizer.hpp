// SPDX-License-Identifier: MIT
// Automatic map chunk sizes (MapOptions::chunk_size = 0), from what completed chunks cost.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace multicore::detail {

/// Chooses the size of a map's next chunk from what the chunks that completed cost. A pure
/// policy: it reads no clock, so tests feed it durations.
///
/// Every chunk pays a fixed overhead of a few microseconds (a job, a ring message, a wake-up);
/// beyond it, a chunk costs its worker the run of its items, and the map's thread the reading,
/// encoding and decoding of their bytes. Chunks are sized so that both dwarf the overhead, and
/// neither holds the other up for long:
/// - a worker's run aims at worker_target_ns: slow items travel alone or in few, and a chunk's
///   worker never holds the end of a map much longer than that;
/// - request and answer together aim at target_bytes: with items that cost nothing to run (the
///   map's thread is then the bottleneck, at about a nanosecond a byte) a chunk is small enough
///   that workers start at once and the last answers are decoded at once, and large enough
///   that its fixed overhead stays small (measured on trivial items against fixed sizes, once
///   maps kept their chunks' storage: 64 KiB reached 0.84 to 0.97 of the best fixed size, 128
///   KiB 0.93 to 0.96, 256 KiB no better);
/// - a chunk is at most `growth` times the largest chunk measured so far, so that a few cheap
///   first items cannot make one huge chunk of items that turn out slow;
/// - with a sized input, a chunk is at most a 1/(2 x workers) share of what is left (guided
///   scheduling), so chunks shrink as the input runs out and the workers finish together; but
///   not below tail_floor_ns of work: a chunk that short cannot hold the end of a map up, and
///   cheap items shrinking to chunks of one item each would pay a chunk's overhead apiece (a
///   map of 2^20 trivial items ended with some 40 such chunks).
/// Before the first answer, chunks hold one item per worker thread.
class ChunkSizer {
 public:
  static constexpr double worker_target_ns = 500'000;
  static constexpr double tail_floor_ns = 50'000;
  static constexpr double target_bytes = 128 << 10;
  static constexpr std::size_t growth = 8;
  static constexpr std::size_t max_size = std::size_t{1} << 18;

  /// `threads`: threads per worker (a chunk holds at least one item per thread).
  ChunkSizer(std::size_t workers, std::size_t threads) noexcept
      : workers_(std::max<std::size_t>(workers, 1)), threads_(std::max<std::size_t>(threads, 1)) {}

  /// A chunk of `items` items ran `worker_ns` in its worker; its request and answer took
  /// `bytes` in all.
  void observe(std::size_t items, std::uint64_t worker_ns, std::size_t bytes) noexcept {
    if (items == 0) return;
    const auto n = static_cast<double>(items);
    recent_[observed_ % recent_.size()] = {static_cast<double>(worker_ns) / n,
                                           static_cast<double>(bytes) / n};
    ++observed_;
    largest_ = std::max(largest_, items);
  }

  /// Whether any chunk was measured yet.
  bool measured() const noexcept { return observed_ != 0; }

  /// The size the measured costs ask for, before the growth and end-of-input limits: what the
  /// chunks settle at (one item per thread before any measurement).
  std::size_t goal() const noexcept {
    if (!measured()) return threads_;
    // Noise only ever lengthens a run (a preempted worker, a cold cache, a fresh worker's
    // first page faults): the least of the last few chunks' is the least noisy, and lags only
    // a few chunks behind items that get dearer along the input. Bytes are not noisy: the
    // most of the last few keeps chunks of items that grow within the target.
    double bytes = 1;
    for (std::size_t i = 0; i < std::min(observed_, recent_.size()); ++i) {
      bytes = std::max(bytes, recent_[i].bytes);
    }
    const double fit = std::min(worker_target_ns / item_run_ns(), target_bytes / bytes);
    const auto size = static_cast<std::size_t>(std::clamp(fit, 1.0, double{max_size}));
    return std::max(size, threads_);
  }

  /// Whether chunks may still grow: too few were measured to trust the goal (the first chunks
  /// a fresh worker runs are slow), or the goal is beyond what growth allows yet.
  bool growing() const noexcept { return observed_ < recent_.size() || largest_ * growth < goal(); }

  /// Items for the next chunk; `left`: the inputs not sent yet, when the input is sized.
  std::size_t next(std::optional<std::size_t> left) const noexcept {
    std::size_t size = goal();
    if (measured()) size = std::min(size, largest_ * growth);
    if (left) size = std::min(size, std::max(*left / (2 * workers_), tail_floor()));
    return std::max(size, threads_);
  }

 private:
  /// An item's run in its worker: the least of the last few chunks' (noise only ever
  /// lengthens a run), at least 1 ns, at most worker_target_ns.
  double item_run_ns() const noexcept {
    double run_ns = worker_target_ns;
    for (std::size_t i = 0; i < std::min(observed_, recent_.size()); ++i) {
      run_ns = std::min(run_ns, recent_[i].run_ns);
    }
    return std::max(1.0, run_ns);
  }

  /// Items below which the end of a sized input shrinks chunks no further (see the class).
  std::size_t tail_floor() const noexcept {
    return static_cast<std::size_t>(
        std::clamp(tail_floor_ns / item_run_ns(), 1.0, double{max_size}));
  }

  struct Cost {
    double run_ns = 0;  // per item, in the worker
    double bytes = 0;   // per item, request and answer
  };
  std::size_t workers_;
  std::size_t threads_;
  std::array<Cost, 4> recent_{};  // the last chunks measured, the newest at observed_ - 1
  std::size_t observed_ = 0;
  std::size_t largest_ = 0;  // items of the largest chunk measured
};

}  // namespace multicore::detail
