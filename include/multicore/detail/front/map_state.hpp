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
#include "map_window.hpp"

namespace multicore::detail {

/// Where chunk completions put their results for the consuming thread. Shared with the
/// completions, which can outlive an abandoned stream.
template <class Out>
struct MapInbox : MapInboxBase {
  struct Arrival {
    std::size_t first = 0;  // key of the chunk (index of its first input)
    std::vector<ItemResult<Out>> results;
    std::exception_ptr failure;  // the chunk got no answer at all
    std::uint64_t run_nanos = 0;
    std::size_t bytes = 0;  // of the answer
  };
  std::vector<Arrival> arrived;
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
      auto results =
          read_chunk<Out>(payload, count_, inbox_->vectors->template take<ItemResult<Out>>(count_));
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
    std::lock_guard lock(inbox_->mutex);  // held while notifying: see MapWindow::wait_for_posts
    inbox_->arrived.push_back(std::move(arrival));
    inbox_->arrivals.fetch_add(1, std::memory_order_release);
    inbox_->arrived_cv.notify_one();
  }

  std::shared_ptr<MapInbox<Out>> inbox_;
  std::size_t first_;
  std::size_t count_;
};

/// The engine of a map: reads the inputs, cuts them into chunks, keeps a bounded window of
/// chunks in flight and hands results to MapResults' iterator, from one thread. What does not
/// depend on the types is MapWindow's; this half holds the inputs, the function and the results.
/// `Source` is how the input is held: `T&` for an lvalue the caller keeps alive, `T` for an
/// rvalue the map owns. (Not std::views::all: clang 14 cannot compile libstdc++ 12's views,
/// and holding the range directly keeps map usable with containers there.)
template <class Fn, class Source, bool Ordered>
class MapState : private MapWindow {
  using Range = std::remove_reference_t<Source>;

 public:
  using In = wire_t<std::ranges::range_reference_t<Range&>>;
  using Out = item_result_t<Fn, In>;
  using value_type = std::conditional_t<Ordered, Out, std::pair<std::size_t, Out>>;

 private:
  MapInbox<Out>& inbox() noexcept { return static_cast<MapInbox<Out>&>(*inbox_); }

  struct Chunk final : MapChunkSlot {
    std::vector<In> inputs;  // kept to resend items one by one if the chunk's worker died
    std::vector<ItemResult<Out>> results;
  };

  /// The chunk whose first input is `first`, made if there is none.
  Chunk& chunk_at(std::size_t first) {
    return static_cast<Chunk&>(chunk(first, [] { return std::make_unique<Chunk>(); }));
  }

 public:
  // The callable goes straight to its one copy, here: a lambda capturing a large value is
  // large, and must not be copied through the stack.
  template <class F>
  MapState(std::weak_ptr<PoolCore> core, F&& fn, Source&& source, const MapOptions& options)
      : MapWindow(std::move(core), options, std::make_shared<MapInbox<Out>>(), std::nullopt),
        fn_(std::forward<F>(fn)),
        view_(std::forward<Source>(source)) {
    if constexpr (std::ranges::sized_range<Range&>) {
      total_ = static_cast<std::size_t>(std::ranges::size(view_));
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
    next_chunk();
  }

 private:
  /// next_item() at the end of the current chunk. Kept out of line (g++ would otherwise take
  /// it into next_item(), then find next_item() too large to inline into the caller's loop),
  /// so that the step from one result to the next stays a few inlined instructions.
  [[gnu::noinline]] void next_chunk() {
    if (current_ != nullptr) {
      inbox_->vectors->keep(current_->results);
      erase_chunk(current_key_);
      current_ = nullptr;
    }
    for (;;) {
      fill();
      if (chunk_count() == 0) {  // input exhausted and everything yielded
        report_progress();
        return;
      }
      if (take_done_chunk()) return;
      wait_for_arrivals();
    }
  }

  /// Makes the next ready chunk current (for map: only the one next in input order).
  bool take_done_chunk() {
    std::size_t first = 0;
    MapChunkSlot* found = next_done_chunk(Ordered, first);
    if (found == nullptr) return false;
    current_key_ = first;
    current_ = static_cast<Chunk*>(found);
    position_ = 0;
    return true;
  }

  /// Waits for chunk answers (see MapWindow::wait_for_posts), then settles them.
  void wait_for_arrivals() {
    wait_for_posts();
    std::vector<typename MapInbox<Out>::Arrival> arrivals;
    {
      std::lock_guard lock(inbox().mutex);
      arrivals.swap(inbox().arrived);
    }
    settled_ += arrivals.size();
    for (auto& a : arrivals) settle(std::move(a));
    report_progress();
  }

  void settle(typename MapInbox<Out>::Arrival a) {
    MapChunkSlot* found = find_chunk(a.first);
    if (found == nullptr) return;
    Chunk& chunk = static_cast<Chunk&>(*found);
    const std::size_t n = chunk.inputs.size();
    if (!a.failure) {
      sizer_.observe(n, a.run_nanos, chunk.bytes + a.bytes);
      done_items_ += n;
      chunk.results = std::move(a.results);
      chunk.done = true;
      inbox_->vectors->keep(chunk.inputs);
      return;
    }
    if (n > 1 && is_worker_failure(a.failure)) {
      // The chunk's worker died or overran: run its items one by one, so that only the item
      // that really crashes (or hangs) fails, and every other one gets its value.
      std::vector<In> inputs = std::move(chunk.inputs);
      erase_chunk(a.first);
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

  /// Keeps the window full: reads inputs, cuts them into chunks, sends them.
  void fill() {
    for (;;) {
      if (input_done_) return;
      if (stop_seen(options_.stop)) {
        // Cancelled: what was sent ends as it may, then Cancelled ends the map.
        input_done_ = true;
        fail(chunk_at(consumed_++), 1, cancelled_error());
        return;
      }
      if (chunk_count() >= window()) return;
      const std::size_t want = chunk_size(left());
      const std::size_t reserved = std::min<std::size_t>(want, 65536);  // chunk_size may be huge
      std::vector<In> inputs = inbox_->vectors->take<In>(reserved);
      inputs.reserve(reserved);
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
      if (input_error) fail(chunk_at(consumed_++), 1, input_error);
    }
  }

  /// Inputs not read yet, when the range knows how many it has.
  std::optional<std::size_t> left() const {
    if constexpr (std::ranges::sized_range<Range&>) {
      const auto total = static_cast<std::size_t>(std::ranges::size(view_));
      return total > consumed_ ? total - consumed_ : 0;
    } else {
      return std::nullopt;
    }
  }

  /// Sends a chunk. One that cannot be sent (the pool is closed or gone, an item cannot be
  /// encoded) fails in place: each of its items yields the error.
  void send(std::size_t first, std::vector<In> inputs) {
    Chunk& chunk = chunk_at(first);
    chunk.inputs = std::move(inputs);
    const std::uint64_t n = chunk.inputs.size();
    try {
      chunk.bytes = submit_chunk(entry_id<MapChunk<Fn, In>>(), n, [&](Job& job) {
        job.emplace_completion<ChunkCompletion<Out>>(
            std::static_pointer_cast<MapInbox<Out>>(inbox_), first, n);
        Writer& msg = job.request;
        encode_callable<Format::binary>(msg, fn_);
        msg.write(&n, sizeof n);
        encode_items(msg, chunk.inputs);
      });
    } catch (...) {
      fail(chunk, n, std::current_exception());
    }
  }

  Fn fn_;
  Source view_;
  std::optional<std::ranges::iterator_t<Range&>> it_;
  Chunk* current_ = nullptr;
  std::size_t current_key_ = 0;
  std::size_t position_ = 0;
  std::optional<value_type> yielded_;  // map_unordered's current (index, value)
  std::optional<MapItem<Out>> item_;   // items()' current item
};

}  // namespace multicore::detail
