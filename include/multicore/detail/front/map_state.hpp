// SPDX-License-Identifier: MIT
// Pool::map and Pool::map_unordered: inputs cut into chunks, a bounded window of chunks in
// flight, results streamed back in input order (or as they come).
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../map_item.hpp"
#include "../../options.hpp"
#include "../core/pool_core.hpp"
#include "../protocol/entries.hpp"
#include "../protocol/map_chunk.hpp"
#include "../protocol/request.hpp"
#include "../serialize/serialize.hpp"
#include "../util/thread_team.hpp"
#include "chunk_sizer.hpp"
#include "completions.hpp"

namespace multicore::detail {

/// Where chunk completions put their results for the consuming thread. Shared with the
/// completions, which can outlive an abandoned stream.
template <class Out>
struct MapInbox {
  struct Arrival {
    std::size_t first = 0;  // key of the chunk (index of its first input)
    std::vector<ItemResult<Out>> results;
    std::exception_ptr failure;  // the chunk got no answer at all
    std::uint64_t run_nanos = 0;
    std::size_t bytes = 0;  // of the answer
  };
  std::mutex mutex;
  std::condition_variable arrived_cv;
  std::vector<Arrival> arrived;
  std::atomic<std::size_t> arrivals{0};  // ever posted: lets the consumer poll without the lock
  std::atomic<bool> abandoned{false};
};

template <class Out>
class ChunkCompletion final : public Completion {
 public:
  ChunkCompletion(std::shared_ptr<MapInbox<Out>> inbox, std::size_t first, std::size_t count)
      : inbox_(std::move(inbox)), first_(first), count_(count) {}

  void deliver(Reader& payload, std::uint64_t run_nanos) noexcept override {
    if (abandoned()) return;
    std::exception_ptr error = error_of([&] {
      const std::size_t bytes = payload.remaining();
      auto results = read_chunk<Out>(payload, count_);
      post({first_, std::move(results), nullptr, run_nanos, bytes});
    });
    if (error) fail(std::move(error));
  }

  void fail(std::exception_ptr error) noexcept override {
    try {
      post({first_, {}, std::move(error), 0, 0});
    } catch (...) {
      std::fputs("multicore: out of memory while failing a map chunk\n", stderr);
    }
  }

  bool abandoned() const noexcept override {
    return inbox_->abandoned.load(std::memory_order_relaxed);
  }

 private:
  void post(typename MapInbox<Out>::Arrival arrival) {
    std::lock_guard lock(inbox_->mutex);  // held while notifying: see MapState's sleep
    inbox_->arrived.push_back(std::move(arrival));
    inbox_->arrivals.fetch_add(1, std::memory_order_release);
    inbox_->arrived_cv.notify_one();
  }

  std::shared_ptr<MapInbox<Out>> inbox_;
  std::size_t first_;
  std::size_t count_;
};

inline void check_map_options(const MapOptions& o) {
  if (o.threads_per_worker == 0 || o.threads_per_worker > 1024) {
    throw std::invalid_argument("multicore: MapOptions::threads_per_worker is " +
                                std::to_string(o.threads_per_worker) +
                                "; it must be between 1 and 1024");
  }
}

/// The engine of a map: reads the inputs, cuts them into chunks, keeps a bounded window of
/// chunks in flight and hands results to MapResults' iterator, from one thread.
/// `Source` is how the input is held: `T&` for an lvalue the caller keeps alive, `T` for an
/// rvalue the map owns. (Not std::views::all: clang 14 cannot compile libstdc++ 12's views,
/// and holding the range directly keeps map usable with containers there.)
template <class Fn, class Source, bool Ordered>
class MapState {
  using Range = std::remove_reference_t<Source>;

 public:
  using In = wire_t<std::ranges::range_reference_t<Range&>>;
  using Out = item_result_t<Fn, In>;
  using value_type = std::conditional_t<Ordered, Out, std::pair<std::size_t, Out>>;

 private:
  struct Chunk {
    std::vector<In> inputs;  // kept to resend items one by one if the chunk's worker died
    std::vector<ItemResult<Out>> results;
    std::size_t bytes = 0;  // of the request
    bool done = false;
  };

 public:
  // The callable goes straight to its one copy, here: a lambda capturing a large value is
  // large, and must not be copied through the stack.
  template <class F>
  MapState(std::weak_ptr<PoolCore> core, F&& fn, Source&& source, MapOptions options)
      : core_(std::move(core)),
        workers_(std::max(1u, lock_core(core_)->size())),
        fn_(std::forward<F>(fn)),
        view_(std::forward<Source>(source)),
        options_(options),
        inbox_(std::make_shared<MapInbox<Out>>()),
        sizer_(workers_, options_.threads_per_worker) {
    check_map_options(options_);
    if constexpr (std::ranges::sized_range<Range&>) {
      total_ = static_cast<std::size_t>(std::ranges::size(view_));
    }
    min_window_ = std::max<std::size_t>(2, 2 * workers_);
    max_window_ = std::max<std::size_t>(2, 32 * workers_);
  }

  /// Abandons the chunks still with the pool, if any (see Scheduler::abandon). A pool that
  /// is gone answered them all before it went.
  ~MapState() {
    inbox_->abandoned.store(true, std::memory_order_relaxed);
    if (inbox_->arrivals.load(std::memory_order_acquire) != sent_) {
      if (std::shared_ptr<PoolCore> core = core_.lock()) core->abandon();
    }
  }

  void start() {
    it_.emplace(std::ranges::begin(view_));
    next_item();
  }

  bool at_end() const noexcept { return current_ == nullptr; }

  std::size_t index() const noexcept { return current_key_ + position_; }

  value_type& current() {
    ItemResult<Out>& r = current_->results[position_];
    if (r.error) std::rethrow_exception(r.error);
    if constexpr (Ordered) {
      return *r.value;
    } else {
      if (!yielded_) yielded_.emplace(current_key_ + position_, std::move(*r.value));
      return *yielded_;
    }
  }

  /// The current item as a value or the error in its place (see MapResults::items()).
  MapItem<Out>& current_item() {
    if (!item_) {
      ItemResult<Out>& r = current_->results[position_];
      item_.emplace(index(), r.error ? nullptr : &*r.value, r.error);
    }
    return *item_;
  }

  void next_item() {
    item_.reset();
    if constexpr (!Ordered) yielded_.reset();
    if (current_ != nullptr && ++position_ < current_->results.size()) return;
    if (current_ != nullptr) {
      chunks_.erase(current_key_);
      current_ = nullptr;
    }
    for (;;) {
      fill();
      if (chunks_.empty()) {  // input exhausted and everything yielded
        report_progress();
        return;
      }
      if (take_done_chunk()) return;
      wait_for_arrivals();
    }
  }

 private:
  /// Makes the next ready chunk current (for map: only the one next in input order).
  bool take_done_chunk() {
    auto found = chunks_.end();
    if constexpr (Ordered) {
      found = chunks_.begin();  // keys are input indices: the first one is next in order
      if (!found->second.done) return false;
    } else {
      found =
          std::find_if(chunks_.begin(), chunks_.end(), [](const auto& c) { return c.second.done; });
      if (found == chunks_.end()) return false;
    }
    current_key_ = found->first;
    current_ = &found->second;
    position_ = 0;
    return true;
  }

  /// Waits for chunk answers, helping to collect them meanwhile (spinning on the rings like
  /// Pool::call), so that small chunks do not each cost a sleeping thread's wake-up.
  void wait_for_arrivals() {
    const auto posted = [&] {
      return inbox_->arrivals.load(std::memory_order_acquire) != settled_;
    };
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
    std::vector<typename MapInbox<Out>::Arrival> arrivals;
    {
      std::lock_guard lock(inbox_->mutex);
      arrivals.swap(inbox_->arrived);
    }
    settled_ += arrivals.size();
    for (auto& a : arrivals) settle(std::move(a));
    report_progress();
  }

  /// Tells on_progress how far the map is: at most once per interval, and when all is done.
  void report_progress() {
    if (!options_.on_progress || final_reported_) return;
    const auto now = std::chrono::steady_clock::now();
    const bool final = input_done_ && done_items_ == consumed_;
    if (!final && now < next_report_) return;
    next_report_ = now + options_.progress_interval;
    final_reported_ = final;
    options_.on_progress(MapProgress{done_items_, total_, now - began_});
  }

  void settle(typename MapInbox<Out>::Arrival a) {
    auto found = chunks_.find(a.first);
    if (found == chunks_.end()) return;
    Chunk& chunk = found->second;
    const std::size_t n = chunk.inputs.size();
    if (!a.failure) {
      sizer_.observe(n, a.run_nanos, chunk.bytes + a.bytes);
      done_items_ += n;
      chunk.results = std::move(a.results);
      chunk.done = true;
      chunk.inputs.clear();
      return;
    }
    if (n > 1 && is_worker_failure(a.failure)) {
      // The chunk's worker died or overran: run its items one by one, so that only the item
      // that really crashes (or hangs) fails, and every other one gets its value.
      std::vector<In> inputs = std::move(chunk.inputs);
      chunks_.erase(found);
      for (std::size_t i = 0; i < n; ++i) {
        std::vector<In> one;
        one.push_back(std::move(inputs[i]));
        send(a.first + i, std::move(one));
      }
      return;
    }
    fail(chunk, n, a.failure);
  }

  /// Every one of the chunk's `n` items yields `error`, in its place in the stream.
  void fail(Chunk& chunk, std::size_t n, const std::exception_ptr& error) {
    done_items_ += n;
    chunk.results = std::vector<ItemResult<Out>>(n);
    for (ItemResult<Out>& r : chunk.results) r.error = error;
    chunk.done = true;
    chunk.inputs.clear();
  }

  static bool is_worker_failure(const std::exception_ptr& e) {
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

  /// Chunks allowed in flight or ready: about window_items items, between 2 and 32 chunks
  /// per worker. Small chunks need many in flight, or each worker idles between them long
  /// enough to fall asleep, and every chunk then pays a wake-up. While automatic chunks are
  /// still growing, the fewest: a full window of small first chunks would stand in the way of
  /// the larger ones.
  std::size_t window() const noexcept {
    std::size_t chunk = options_.chunk_size;
    if (chunk == 0) {
      if (sizer_.growing()) return min_window_;
      chunk = sizer_.goal();
    }
    return std::clamp(window_items / chunk, min_window_, max_window_);
  }

  /// Keeps the window full: reads inputs, cuts them into chunks, sends them.
  void fill() {
    for (;;) {
      if (input_done_) return;
      if (stop_seen(options_.stop)) {
        // Cancelled: what was sent ends as it may, then Cancelled ends the map.
        input_done_ = true;
        fail(chunks_[consumed_++], 1, cancelled_error());
        return;
      }
      if (chunks_.size() >= window()) return;
      const std::size_t want = chunk_size();
      std::vector<In> inputs;
      inputs.reserve(std::min<std::size_t>(want, 65536));  // chunk_size may be huge
      std::exception_ptr input_error;
      try {
        auto& it = *it_;
        const auto end = std::ranges::end(view_);
        while (inputs.size() < want && it != end) {
          inputs.emplace_back(*it);
          ++it;
        }
        if (it == end) input_done_ = true;
      } catch (...) {
        // The input itself failed: what was read before still runs, then its error takes
        // the next place in the stream, and the map ends there.
        input_error = std::current_exception();
        input_done_ = true;
      }
      const std::size_t first = consumed_;
      consumed_ += inputs.size();
      if (!inputs.empty()) send(first, std::move(inputs));
      if (input_error) fail(chunks_[consumed_++], 1, input_error);
    }
  }

  /// Sends a chunk. One that cannot be sent (the pool is closed or gone, an item cannot be
  /// encoded) fails in place: each of its items yields the error.
  void send(std::size_t first, std::vector<In> inputs) {
    Chunk& chunk = chunks_[first];
    chunk.inputs = std::move(inputs);
    const std::uint64_t n = chunk.inputs.size();
    try {
      std::shared_ptr<PoolCore> core = lock_core(core_);
      std::unique_ptr<Job> job = core->new_job();
      job->emplace_completion<ChunkCompletion<Out>>(inbox_, first, n);
      job->stop = options_.stop;
      Writer& msg = job->request;
      const CollectKeepAlive collect(job->keep_alive);
      begin_request(msg);
      encode_callable<Format::binary>(msg, fn_);
      msg.write(&n, sizeof n);
      encode_items(msg, chunk.inputs);
      finish_request(msg, entry_id<MapChunk<Fn, In>>(), options_.threads_per_worker);
      chunk.bytes = msg.size();
      core->submit(std::move(job));
      ++sent_;
    } catch (...) {
      fail(chunk, n, std::current_exception());
    }
  }

  /// Items per chunk: fixed if the user chose, else from the sizer (see ChunkSizer).
  std::size_t chunk_size() const {
    if (options_.chunk_size != 0) return options_.chunk_size;
    std::optional<std::size_t> left;
    if constexpr (std::ranges::sized_range<Range&>) {
      const auto total = static_cast<std::size_t>(std::ranges::size(view_));
      left = total > consumed_ ? total - consumed_ : 0;
    }
    return sizer_.next(left);
  }

  std::weak_ptr<PoolCore> core_;  // the Pool's: see make_core
  std::size_t workers_ = 1;
  Fn fn_;
  Source view_;
  MapOptions options_;
  std::shared_ptr<MapInbox<Out>> inbox_;
  std::size_t settled_ = 0;  // arrivals taken from the inbox so far
  std::size_t sent_ = 0;     // chunks submitted (each posts one arrival, unless abandoned)
  std::optional<std::ranges::iterator_t<Range&>> it_;
  bool input_done_ = false;
  std::size_t consumed_ = 0;
  static constexpr std::size_t window_items = 16384;
  std::size_t min_window_ = 2;
  std::size_t max_window_ = 2;
  ChunkSizer sizer_;
  std::map<std::size_t, Chunk> chunks_;  // in flight or ready, keyed by first input index
  // What on_progress hears.
  std::size_t done_items_ = 0;  // results or errors in place (of consumed_ items read)
  std::optional<std::size_t> total_;
  std::chrono::steady_clock::time_point began_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point next_report_ = began_ + options_.progress_interval;
  bool final_reported_ = false;
  Chunk* current_ = nullptr;
  std::size_t current_key_ = 0;
  std::size_t position_ = 0;
  std::optional<value_type> yielded_;  // map_unordered's current (index, value)
  std::optional<MapItem<Out>> item_;   // items()' current item
};

}  // namespace multicore::detail
