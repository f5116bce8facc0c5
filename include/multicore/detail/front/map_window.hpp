// SPDX-License-Identifier: MIT
// MapWindow: the part of a map's engine that does not depend on its types (the window of chunks
// in flight, chunk sizes, progress, waiting for answers, sending), compiled once.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

#include "../../errors.hpp"
#include "../../options.hpp"
#include "../core/job.hpp"
#include "../core/pool_core.hpp"
#include "../protocol/request.hpp"
#include "../util/function_ref.hpp"
#include "../util/keep_alive.hpp"
#include "../util/linkage.hpp"
#include "../util/vector_cache.hpp"
#include "chunk_sizer.hpp"

namespace multicore::detail {

/// What chunk completions and the consuming thread share of a map's inbox, whatever its
/// result type (MapInbox<Out> adds the arrivals themselves). Shared with the completions,
/// which can outlive an abandoned stream.
struct MapInboxBase {
  std::mutex mutex;
  std::condition_variable arrived_cv;
  std::atomic<std::size_t> arrivals{0};  // ever posted: lets the consumer poll without the lock
  std::atomic<bool> abandoned{false};
  /// Where chunks' inputs and results vectors come from and go back to: the pool's, or in
  /// inline mode the map's own.
  std::shared_ptr<VectorCache> vectors;
};

/// A chunk of a map, in flight or ready: MapState's chunks add its inputs and results.
struct MapChunkSlot {
  virtual ~MapChunkSlot() = default;
  std::size_t bytes = 0;  // of the request
  bool done = false;
};

/// Throws std::invalid_argument for MapOptions a map cannot run with.
MULTICORE_DECL void check_map_options(const MapOptions& o);

/// The bookkeeping of a map that is the same for every function and item type: MapState (its
/// typed half) derives from it. Its members are not templates, so a file that maps compiles
/// them not at all with the compiled part (util/linkage.hpp), and once without it.
class MapWindow {
 protected:
  /// `inbox`: the map's MapInbox (see MapState); `total`: the number of inputs, when the range
  /// knows it.
  MULTICORE_DECL MapWindow(std::weak_ptr<PoolCore> core, const MapOptions& options,
                           std::shared_ptr<MapInboxBase> inbox, std::optional<std::size_t> total);
  MapWindow(const MapWindow&) = delete;
  MapWindow& operator=(const MapWindow&) = delete;

  /// Abandons the chunks still with the pool, if any (see Scheduler::abandon). A pool that
  /// is gone answered them all before it went.
  MULTICORE_DECL ~MapWindow();

  /// Waits until a chunk answer was posted that is not settled yet, helping to collect answers
  /// meanwhile (spinning on the rings like Pool::call), so that small chunks do not each cost
  /// a sleeping thread's wake-up.
  MULTICORE_DECL void wait_for_posts();

  /// Tells on_progress how far the map is: at most once per interval, and when all is done.
  MULTICORE_DECL void report_progress();

  /// Whether a chunk's failure is its worker's (it died or overran), not its items'.
  MULTICORE_DECL static bool is_worker_failure(const std::exception_ptr& e);

  /// Chunks allowed in flight or ready: about window_items items, between 2 and 32 chunks
  /// per worker. Small chunks need many in flight, or each worker idles between them long
  /// enough to fall asleep, and every chunk then pays a wake-up. While automatic chunks are
  /// still growing, the fewest: a full window of small first chunks would stand in the way of
  /// the larger ones.
  MULTICORE_DECL std::size_t window() const noexcept;

  /// Items per chunk: fixed if the user chose, else from the sizer (see ChunkSizer). `left`:
  /// inputs not read yet, when the range knows it.
  MULTICORE_DECL std::size_t chunk_size(std::optional<std::size_t> left) const;

  /// Sends a chunk of `items` items: a job for the chunk entry named `entry`, whose completion
  /// and payload (callable, item count, items) `fill(job)` makes. Returns the request's size.
  /// Throws what fill throws, PoolClosed when the pool is closed or gone.
  MULTICORE_DECL std::size_t submit_chunk(std::uint64_t entry, std::size_t items,
                                          FunctionRef<void(Job&)> fill);

  // The chunks in flight or ready, keyed by their first input's index. Behind functions, not
  // a template's std::map: one map of slots serves every map type, compiled once.

  /// The chunk whose first input is `first`, made by `make()` if there is none.
  MULTICORE_DECL MapChunkSlot& chunk(std::size_t first,
                                     FunctionRef<std::unique_ptr<MapChunkSlot>()> make);
  /// The chunk whose first input is `first`, or nullptr.
  MULTICORE_DECL MapChunkSlot* find_chunk(std::size_t first) noexcept;
  MULTICORE_DECL void erase_chunk(std::size_t first) noexcept;
  std::size_t chunk_count() const noexcept { return chunks_.size(); }
  /// The next chunk to yield, with its key in `first`, or nullptr while there is none: the
  /// first chunk in input order once it is done (`ordered`), else any done chunk.
  MULTICORE_DECL MapChunkSlot* next_done_chunk(bool ordered, std::size_t& first) noexcept;

  std::weak_ptr<PoolCore> core_;  // the Pool's: see make_core
  std::size_t workers_ = 1;
  MapOptions options_;
  std::shared_ptr<MapInboxBase> inbox_;  // a MapInbox<Out>: see MapState::inbox()
  std::size_t settled_ = 0;              // arrivals taken from the inbox so far
  std::size_t sent_ = 0;  // chunks submitted (each posts one arrival, unless abandoned)
  double request_bytes_per_item_ = 0;  // the last chunk's request's (see submit_chunk)
  bool input_done_ = false;
  std::size_t consumed_ = 0;
  static constexpr std::size_t window_items = 16384;
  std::size_t min_window_ = 2;
  std::size_t max_window_ = 2;
  ChunkSizer sizer_;
  // What on_progress hears.
  std::size_t done_items_ = 0;  // results or errors in place (of consumed_ items read)
  std::optional<std::size_t> total_;
  std::chrono::steady_clock::time_point began_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point next_report_ = began_ + options_.progress_interval;
  bool final_reported_ = false;
  std::map<std::size_t, std::unique_ptr<MapChunkSlot>> chunks_;
};

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL void check_map_options(const MapOptions& o) {
  if (o.threads_per_worker == 0 || o.threads_per_worker > 1024) {
    throw std::invalid_argument("multicore: MapOptions::threads_per_worker is " +
                                std::to_string(o.threads_per_worker) +
                                "; it must be between 1 and 1024");
  }
}

MULTICORE_DECL MapWindow::MapWindow(std::weak_ptr<PoolCore> core, const MapOptions& options,
                                    std::shared_ptr<MapInboxBase> inbox,
                                    std::optional<std::size_t> total)
    : core_(std::move(core)),
      workers_(std::max(1u, lock_core(core_)->size())),
      options_(options),
      inbox_(std::move(inbox)),
      sizer_(workers_, options_.threads_per_worker),
      total_(total) {
  check_map_options(options_);
  inbox_->vectors = lock_core(core_)->vectors();
  if (!inbox_->vectors) inbox_->vectors = std::make_shared<VectorCache>();
  min_window_ = std::max<std::size_t>(2, 2 * workers_);
  max_window_ = std::max<std::size_t>(2, 32 * workers_);
}

MULTICORE_DECL MapWindow::~MapWindow() {
  inbox_->abandoned.store(true, std::memory_order_relaxed);
  if (inbox_->arrivals.load(std::memory_order_acquire) != sent_) {
    if (std::shared_ptr<PoolCore> core = core_.lock()) core->abandon();
  }
}

MULTICORE_DECL void MapWindow::wait_for_posts() {
  const auto posted = [&] { return inbox_->arrivals.load(std::memory_order_acquire) != settled_; };
  const auto sleep = [&] {
    std::unique_lock lock(inbox_->mutex);
    inbox_->arrived_cv.wait(lock, posted);
  };
  // A pool that is gone answered every chunk before it went: they are in the inbox.
  if (std::shared_ptr<PoolCore> core = core_.lock()) {
    core->help(posted, sleep);
  } else {
    sleep();
  }
}

MULTICORE_DECL void MapWindow::report_progress() {
  if (!options_.on_progress || final_reported_) return;
  const auto now = std::chrono::steady_clock::now();
  const bool final = input_done_ && done_items_ == consumed_;
  if (!final && now < next_report_) return;
  next_report_ = now + options_.progress_interval;
  final_reported_ = final;
  options_.on_progress(MapProgress{done_items_, total_, now - began_});
}

MULTICORE_DECL bool MapWindow::is_worker_failure(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const WorkerLost&) {
    return true;
  } catch (const TaskTimeout&) {
    return true;
  } catch (...) {
    return false;
  }
}

MULTICORE_DECL std::size_t MapWindow::window() const noexcept {
  std::size_t chunk = options_.chunk_size;
  if (chunk == 0) {
    if (sizer_.growing()) return min_window_;
    chunk = sizer_.goal();
  }
  return std::clamp(window_items / chunk, min_window_, max_window_);
}

MULTICORE_DECL std::size_t MapWindow::chunk_size(std::optional<std::size_t> left) const {
  if (options_.chunk_size != 0) return options_.chunk_size;
  return sizer_.next(left);
}

MULTICORE_DECL std::size_t MapWindow::submit_chunk(std::uint64_t entry, std::size_t items,
                                                   FunctionRef<void(Job&)> fill) {
  std::shared_ptr<PoolCore> core = lock_core(core_);
  // The request's size, guessed from the last one's with room for slightly larger items: a
  // large chunk then gets one of the large buffers kept warm (see JobPool) instead of a fresh
  // one that its encoding grows, twice over, each growth faulting in new pages.
  const auto hint =
      static_cast<std::size_t>(request_bytes_per_item_ * static_cast<double>(items) * 1.125);
  std::unique_ptr<Job> job = core->new_job(hint);
  job->stop = options_.stop;
  Writer& msg = job->request;
  msg.reserve(hint);
  const CollectKeepAlive collect(job->keep_alive);
  begin_request(msg);
  fill(*job);
  finish_request(msg, entry, options_.threads_per_worker);
  const std::size_t bytes = msg.size();
  core->submit(std::move(job));
  ++sent_;
  if (items != 0) request_bytes_per_item_ = static_cast<double>(bytes) / static_cast<double>(items);
  return bytes;
}

MULTICORE_DECL MapChunkSlot& MapWindow::chunk(std::size_t first,
                                              FunctionRef<std::unique_ptr<MapChunkSlot>()> make) {
  std::unique_ptr<MapChunkSlot>& slot = chunks_[first];
  if (!slot) {
    try {
      slot = make();
    } catch (...) {
      chunks_.erase(first);  // no empty slot left behind
      throw;
    }
  }
  return *slot;
}

MULTICORE_DECL MapChunkSlot* MapWindow::find_chunk(std::size_t first) noexcept {
  const auto found = chunks_.find(first);
  return found == chunks_.end() ? nullptr : found->second.get();
}

MULTICORE_DECL void MapWindow::erase_chunk(std::size_t first) noexcept { chunks_.erase(first); }

MULTICORE_DECL MapChunkSlot* MapWindow::next_done_chunk(bool ordered, std::size_t& first) noexcept {
  auto found = chunks_.begin();  // keys are input indices: the first one is next in order
  if (ordered) {
    if (found == chunks_.end() || !found->second->done) return nullptr;
  } else {
    found =
        std::find_if(chunks_.begin(), chunks_.end(), [](const auto& c) { return c.second->done; });
    if (found == chunks_.end()) return nullptr;
  }
  first = found->first;
  return found->second.get();
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
