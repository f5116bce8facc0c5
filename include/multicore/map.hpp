// SPDX-License-Identifier: MIT
// MapResults: what Pool::map and Pool::map_unordered return.
#pragma once

#include <cstddef>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "detail/front/map_state.hpp"
#include "map_item.hpp"
#include "options.hpp"

namespace multicore {

class Pool;

/// The lazy results of Pool::map (`Ordered`: in input order) and Pool::map_unordered ((input
/// index, result) pairs, as they finish). A single-pass input range: iterate it once, from one
/// thread. Destroying it early abandons the map: chunks not yet started are dropped, a worker
/// still running one after abandon_grace is replaced, answers still coming are discarded, the
/// pool stays usable. Movable, not copyable.
///
/// `Fn` is the function's type and `Source` how the input is held (`T&` for an lvalue you keep
/// alive while iterating, `T` for an rvalue the results own); write `auto` unless you must
/// name it.
template <class Fn, class Source, bool Ordered>
class MapResults {
  using State = detail::MapState<Fn, Source, Ordered>;

 public:
  /// A result: the function's result for map(), an (input index, result) pair for
  /// map_unordered().
  using value_type = typename State::value_type;

  /// The iterator of both ranges: over results (`AsItems` false) or over items().
  template <bool AsItems>
  class Cursor {
   public:
    using value_type =
        std::conditional_t<AsItems, MapItem<typename State::Out>, MapResults::value_type>;
    using difference_type = std::ptrdiff_t;
    using iterator_concept = std::input_iterator_tag;

    Cursor() = default;

    /// The current result. Throws the task's error (RemoteError, WorkerLost, ...) in place of
    /// a value that could not be computed (items(): the item, holding that error); ++ then
    /// moves on to the next one.
    value_type& operator*() const {
      if constexpr (AsItems) {
        return state_->current_item();
      } else {
        return state_->current();
      }
    }
    /// Index of the current item in the input, also when its result is an error (for
    /// map_unordered, whose failed items have no (index, value) pair to show it).
    std::size_t index() const noexcept { return state_->index(); }
    Cursor& operator++() {
      state_->next_item();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const Cursor& it, std::default_sentinel_t) noexcept {
      return it.state_ == nullptr || it.state_->at_end();
    }

   private:
    friend class MapResults;
    explicit Cursor(State* state) noexcept : state_(state) {}

    State* state_ = nullptr;
  };
  using iterator = Cursor<false>;

  /// Starts the map (sends the first window of chunks) and waits for the first result.
  /// Call once: this is a single-pass range.
  iterator begin() { return iterator(start()); }
  std::default_sentinel_t end() const noexcept { return {}; }

  /// The same results, as items that each hold a value or the error in its place, with the
  /// input's index (for map_unordered too, where the value is then the function's result
  /// alone): a loop over them never throws for a failed item. Iterate either this or the
  /// results themselves, once.
  class Items {
   public:
    using iterator = Cursor<true>;

    /// Starts the map as MapResults::begin() does (once, for both ranges).
    iterator begin() { return iterator(results_->start()); }
    std::default_sentinel_t end() const noexcept { return {}; }

   private:
    friend class MapResults;
    explicit Items(MapResults* results) noexcept : results_(results) {}
    explicit Items(MapResults&& results) : owned_(std::move(results)), results_(&*owned_) {}

    std::optional<MapResults> owned_;  // when made from a temporary: pool.map(...).items()
    MapResults* results_;
  };

  /// See Items. Made from a temporary (`for (auto& item : pool.map(f, in).items())`) it owns
  /// the results; from a variable, it refers to it: keep that alive while iterating.
  Items items() & noexcept { return Items(this); }
  Items items() && { return Items(std::move(*this)); }

 private:
  friend class Pool;

  /// Starts the map (sends the first window of chunks) and waits for the first result.
  State* start() {
    if (started_) throw std::logic_error("multicore: a map's results can be iterated only once");
    started_ = true;
    state_->start();
    return state_.get();
  }

  template <class F>
  MapResults(std::weak_ptr<detail::PoolCore> core, F&& fn, Source&& source,
             const MapOptions& options)
      : state_(std::make_unique<State>(std::move(core), std::forward<F>(fn),
                                       std::forward<Source>(source), options)) {}

  std::unique_ptr<State> state_;
  bool started_ = false;
};

}  // namespace multicore
