// SPDX-License-Identifier: MIT
// ranges(): cut [0, n) into balanced contiguous pieces, one task's worth each; zip(): several
// inputs walked together.
#pragma once

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "multicore/system.hpp"

namespace multicore {

/// Splits the indices [0, n) into contiguous half-open pieces [begin, end), in order, that
/// cover every index exactly once. There are `min(n, parts)` pieces, none of them empty; their
/// sizes differ by at most one, larger pieces first (`ranges(10, 4)` gives [0,3) [3,6) [6,8)
/// [8,10)). `parts == 0` means `usable_cores()`; `n == 0` gives an empty vector.
///
/// Send indices, not the items: the workers are forks of the caller and already see them.
///
///     multicore::Task<std::string> task(pool);
///     for (auto [begin, end] : multicore::ranges(items.size())) task.run(render, begin, end);
///     std::vector<std::string> pieces = task.get();
///
/// Thread-safe. Throws only what allocating the result throws (`std::bad_alloc`).
inline std::vector<std::pair<std::size_t, std::size_t>> ranges(std::size_t n,
                                                               std::size_t parts = 0) {
  if (parts == 0) parts = usable_cores();
  if (parts > n) parts = n;
  std::vector<std::pair<std::size_t, std::size_t>> pieces;
  if (parts == 0) return pieces;
  pieces.reserve(parts);
  const std::size_t size = n / parts;
  const std::size_t larger = n % parts;  // the first `larger` pieces get one extra index
  std::size_t begin = 0;
  for (std::size_t i = 0; i < parts; ++i) {
    const std::size_t end = begin + size + (i < larger ? 1 : 0);
    pieces.emplace_back(begin, end);
    begin = end;
  }
  return pieces;
}

/// The range zip() returns. `Sources` are how the inputs are held: `R&` for an lvalue the
/// caller keeps alive, `R` for an rvalue it owns.
template <class... Sources>
class Zip {
 public:
  /// One item: copies of the elements at the same position of every input.
  using value_type = std::tuple<std::ranges::range_value_t<std::remove_reference_t<Sources>&>...>;

  /// A single-pass iterator: each ++ moves every input on.
  class iterator {
   public:
    using value_type = Zip::value_type;
    using difference_type = std::ptrdiff_t;
    using iterator_concept = std::input_iterator_tag;

    iterator() = default;
    value_type operator*() const {
      return std::apply([](const auto&... it) { return value_type(*it...); }, its_);
    }
    iterator& operator++() {
      std::apply([](auto&... it) { (++it, ...); }, its_);
      return *this;
    }
    void operator++(int) { ++*this; }
    /// At the end as soon as one input is: the shortest one decides.
    friend bool operator==(const iterator& i, std::default_sentinel_t) {
      return [&]<std::size_t... I>(std::index_sequence<I...>) {
        return ((std::get<I>(i.its_) == std::get<I>(i.ends_)) || ...);
      }
      (std::index_sequence_for<Sources...>{});
    }

   private:
    friend class Zip;
    std::tuple<std::ranges::iterator_t<std::remove_reference_t<Sources>&>...> its_;
    std::tuple<std::ranges::sentinel_t<std::remove_reference_t<Sources>&>...> ends_;
  };

  template <class... Rs>
  explicit Zip(Rs&&... inputs) : inputs_(std::forward<Rs>(inputs)...) {}

  /// Call once: the inputs may be single-pass.
  iterator begin() {
    iterator it;
    it.its_ = std::apply([](auto&... r) { return std::tuple(std::ranges::begin(r)...); }, inputs_);
    it.ends_ = std::apply([](auto&... r) { return std::tuple(std::ranges::end(r)...); }, inputs_);
    return it;
  }
  std::default_sentinel_t end() const noexcept { return {}; }

  /// The shortest input's size, when every input knows its size.
  std::size_t size() const
      requires(std::ranges::sized_range<const std::remove_reference_t<Sources>>&&...) {
    return std::apply(
        [](auto&... r) { return std::min({static_cast<std::size_t>(std::ranges::size(r))...}); },
        inputs_);
  }

 private:
  std::tuple<Sources...> inputs_;
};

/// The inputs walked together: the i-th item is a std::tuple of copies of the i-th elements of
/// every input; it ends with the shortest input (endless inputs are fine, as long as one
/// ends or the caller stops). Lazy: it reads an element only when its item is read. Lvalue
/// inputs are held by reference (keep them alive), rvalues moved in. Single-pass. libstdc++ 12
/// has no std::views::zip; this one is made for Pool::map, which spreads each tuple over the
/// function's parameters:
///
///     std::vector<double> xs = ..., ys = ...;
///     for (double r : pool.map([](double x, double y) { return x * y; }, multicore::zip(xs, ys)))
///       use(r);
template <std::ranges::input_range... Rs>
requires(sizeof...(Rs) > 0)
    Zip<std::conditional_t<std::is_lvalue_reference_v<Rs>, Rs, std::remove_cvref_t<Rs>>...> zip(
        Rs&&... inputs) {
  return Zip<std::conditional_t<std::is_lvalue_reference_v<Rs>, Rs, std::remove_cvref_t<Rs>>...>(
      std::forward<Rs>(inputs)...);
}

}  // namespace multicore
