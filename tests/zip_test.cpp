// SPDX-License-Identifier: MIT
// zip() and map's starmap: several inputs per item, over sized and endless inputs.
#include <gtest/gtest.h>

#include <cstddef>
#include <iterator>
#include <list>
#include <multicore/multicore.hpp>
#include <ranges>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using multicore::Pool;
using multicore::PoolOptions;

/// 0, 1, 2, ... for ever, counting the elements read (zip must read only what it yields).
struct Naturals {
  int* reads;
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    int* reads = nullptr;
    int next = 0;
    int operator*() const {
      ++*reads;
      return next;
    }
    iterator& operator++() {
      ++next;
      return *this;
    }
    void operator++(int) { ++next; }
  };
  iterator begin() const { return {reads, 0}; }
  std::unreachable_sentinel_t end() const { return {}; }
};
static_assert(std::ranges::input_range<Naturals>);

TEST(Zip, StopsAtTheShortestAndKnowsItsSize) {
  const std::vector<int> xs{1, 2, 3, 4};
  const std::list<std::string> names{"a", "b", "c"};
  auto zipped = multicore::zip(xs, names);
  static_assert(std::ranges::input_range<decltype(zipped)>);
  EXPECT_EQ(zipped.size(), 3u);
  std::vector<std::tuple<int, std::string>> seen;
  for (auto item : zipped) seen.push_back(item);
  EXPECT_EQ(seen, (std::vector<std::tuple<int, std::string>>{{1, "a"}, {2, "b"}, {3, "c"}}));
  EXPECT_EQ(multicore::zip(xs, std::vector<int>{}).begin(), std::default_sentinel);
}

TEST(Zip, IsLazyOverEndlessInputs) {
  int reads = 0;
  const std::vector<double> ys{0.5, 1.5};
  std::vector<std::tuple<int, double>> seen;
  for (auto item : multicore::zip(Naturals{&reads}, ys)) seen.push_back(item);
  EXPECT_EQ(seen, (std::vector<std::tuple<int, double>>{{0, 0.5}, {1, 1.5}}));
  EXPECT_EQ(reads, 2);  // nothing read past the shortest input's end
  // Both endless: ends when the caller stops.
  int taken = 0;
  for (auto [a, b] : multicore::zip(Naturals{&reads}, Naturals{&reads})) {
    EXPECT_EQ(a, b);
    if (++taken == 5) break;
  }
  EXPECT_EQ(reads, 2 + 2 * 5);
}

TEST(Zip, OwnsRvalueInputs) {
  auto zipped = multicore::zip(std::vector<int>{1, 2}, std::vector<int>{3, 4, 5});
  int sum = 0;
  for (auto [a, b] : zipped) sum += a * b;
  EXPECT_EQ(sum, 1 * 3 + 2 * 4);
}

int multiply(int a, double b) { return static_cast<int>(a * b); }

TEST(Starmap, MapSpreadsZippedItemsOverTheParameters) {
  Pool pool(PoolOptions{.workers = 2});
  std::vector<int> xs(1000);
  std::vector<double> ys(999);
  for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<int>(i);
  for (std::size_t i = 0; i < ys.size(); ++i) ys[i] = 2.0;
  std::vector<int> out;
  for (int r : pool.map(multiply, multicore::zip(xs, ys))) out.push_back(r);
  ASSERT_EQ(out.size(), 999u);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], 2 * static_cast<int>(i));
}

TEST(Starmap, EndlessZippedInputsStopWhenTheCallerDoes) {
  Pool pool(PoolOptions{.workers = 2});
  int reads = 0;  // counted in this process, where the inputs are read
  int taken = 0;
  for (auto [index, sum] : pool.map_unordered([](int a, int b) { return a + b; },
                                              multicore::zip(Naturals{&reads}, Naturals{&reads}))) {
    EXPECT_EQ(sum, 2 * static_cast<int>(index));
    if (++taken == 100) break;
  }
  EXPECT_EQ(taken, 100);
}

TEST(Starmap, PairsAndTuplesAreSpreadOnlyWhenTheFunctionTakesTheElements) {
  Pool pool(PoolOptions{.workers = 1});
  const std::vector<std::pair<int, int>> pairs{{1, 2}, {3, 4}};
  std::vector<int> spread;
  for (int r : pool.map([](int a, int b) { return a - b; }, pairs)) spread.push_back(r);
  EXPECT_EQ(spread, (std::vector<int>{-1, -1}));
  // A function that takes the pair itself gets the pair.
  std::vector<int> whole;
  for (int r : pool.map([](std::pair<int, int> p) { return p.first * p.second; }, pairs)) {
    whole.push_back(r);
  }
  EXPECT_EQ(whole, (std::vector<int>{2, 12}));
  const std::vector<std::tuple<int, int, int>> triples{{1, 2, 3}};
  for (int r : pool.map([](int a, int b, int c) { return a * 100 + b * 10 + c; }, triples)) {
    EXPECT_EQ(r, 123);
  }
}

TEST(Starmap, WorksInline) {
  Pool pool(PoolOptions{.workers = 1, .run_inline = true});
  const std::vector<int> xs{1, 2, 3};
  int sum = 0;
  for (int r : pool.map([](int a, int b) { return a * b; }, multicore::zip(xs, xs))) sum += r;
  EXPECT_EQ(sum, 14);
}

}  // namespace
