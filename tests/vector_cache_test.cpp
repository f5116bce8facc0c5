// SPDX-License-Identifier: MIT
// VectorCache: the storage of maps' chunks, kept from one chunk and one map to the next, within
// bounds, and given back once it stays unused.
#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <multicore/detail/util/vector_cache.hpp>
#include <string>
#include <vector>

namespace {

using multicore::detail::VectorCache;
using multicore::detail::WarmBuffer;

template <class T = int>
std::vector<T> with_capacity(std::size_t n) {
  std::vector<T> v;
  v.reserve(n);
  return v;
}

TEST(VectorCache, AKeptVectorComesBackEmptyWithItsStorage) {
  VectorCache cache;
  std::vector<std::string> used(100, "an element with its own heap storage, destroyed");
  const auto* storage = used.data();
  cache.keep(used);
  EXPECT_TRUE(used.empty());
  EXPECT_EQ(used.capacity(), 0u) << "the storage went to the cache";
  std::vector<std::string> again = cache.take<std::string>(100);
  EXPECT_EQ(again.data(), storage);
  EXPECT_TRUE(again.empty());
  EXPECT_EQ(cache.kept_bytes(), 0u);
}

TEST(VectorCache, ATakeGetsTheSmallestKeptVectorThatHoldsIt) {
  VectorCache cache;
  for (std::size_t n : {std::size_t{1000}, std::size_t{10}, std::size_t{100}}) {
    std::vector<int> v = with_capacity(n);
    cache.keep(v);
  }
  EXPECT_EQ(cache.take<int>(50).capacity(), 100u);
  EXPECT_EQ(cache.take<int>(5000).capacity(), 0u) << "none holds it: a new vector";
  EXPECT_EQ(cache.take<int>(1).capacity(), 10u);
  EXPECT_EQ(cache.take<int>(1).capacity(), 1000u);
  EXPECT_EQ(cache.take<int>(1).capacity(), 0u);
}

TEST(VectorCache, ElementTypesAreKeptApart) {
  VectorCache cache;
  std::vector<int> ints = with_capacity(100);
  cache.keep(ints);
  EXPECT_EQ(cache.take<unsigned>(1).capacity(), 0u);
  EXPECT_EQ(cache.take<int>(1).capacity(), 100u);
}

TEST(VectorCache, ALargerVectorDisplacesTheSmallestWhenATypeHasItsFill) {
  VectorCache cache;
  for (std::size_t i = 0; i < VectorCache::max_per_type; ++i) {
    std::vector<int> v = with_capacity(100 + i);
    cache.keep(v);
  }
  std::vector<int> smaller = with_capacity(50);
  cache.keep(smaller);
  std::vector<int> larger = with_capacity(1000);
  cache.keep(larger);
  EXPECT_EQ(cache.take<int>(1).capacity(), 101u) << "the 100 made room for the 1000";
  EXPECT_EQ(cache.take<int>(1000).capacity(), 1000u);
  std::size_t left = 0;
  while (cache.take<int>(1).capacity() != 0) ++left;
  EXPECT_EQ(left, VectorCache::max_per_type - 2);
}

TEST(VectorCache, WhatIsKeptStaysWithinItsBytes) {
  VectorCache cache(1000 * sizeof(int));
  std::vector<int> a = with_capacity(600);
  std::vector<int> b = with_capacity(600);
  std::vector<int> c = with_capacity(400);
  cache.keep(a);
  cache.keep(b);  // would exceed the bound: freed
  cache.keep(c);
  EXPECT_EQ(cache.kept_bytes(), 1000 * sizeof(int));
  EXPECT_EQ(cache.take<int>(500).capacity(), 600u);
  EXPECT_EQ(cache.take<int>(500).capacity(), 0u);
}

// The same rule as the warm request buffers (WarmShelf): at the byte bound, a larger vector takes
// the place of as many smaller ones of its type as it needs; it was the one freed before.
TEST(VectorCache, ALargerVectorDisplacesSmallerOnesAtTheByteBound) {
  VectorCache cache(1000 * sizeof(int));
  for (int i = 0; i < 3; ++i) {
    std::vector<int> v = with_capacity(300);
    cache.keep(v);
  }
  std::vector<int> larger = with_capacity(600);
  cache.keep(larger);
  EXPECT_EQ(cache.kept_bytes(), 900 * sizeof(int));
  EXPECT_EQ(cache.take<int>(500).capacity(), 600u);
  EXPECT_EQ(cache.take<int>(1).capacity(), 300u);
  EXPECT_EQ(cache.take<int>(1).capacity(), 0u);
}

// Other types' vectors count against the bound, and are not displaced.
TEST(VectorCache, TheByteBoundIsSharedByAllTypes) {
  VectorCache cache(1000 * sizeof(int));
  std::vector<int> ints = with_capacity(600);
  cache.keep(ints);
  std::vector<unsigned> too_many = with_capacity<unsigned>(500);
  cache.keep(too_many);  // freed: 1100 in all
  std::vector<unsigned> fits = with_capacity<unsigned>(400);
  cache.keep(fits);
  EXPECT_EQ(cache.kept_bytes(), 1000 * sizeof(int));
  EXPECT_EQ(cache.take<unsigned>(1).capacity(), 400u);
  EXPECT_EQ(cache.take<int>(1).capacity(), 600u);
}

TEST(VectorCache, EverythingIsGivenBackOnceNothingWasKeptForAWhile) {
  VectorCache cache;
  std::vector<int> v = with_capacity(100);
  cache.keep(v);
  const auto kept_at = VectorCache::Clock::now();
  cache.release_if_cold(kept_at);
  EXPECT_EQ(cache.kept_bytes(), 100 * sizeof(int)) << "still warm";
  cache.release_if_cold(kept_at + WarmBuffer::warm_for + std::chrono::milliseconds(1));
  EXPECT_EQ(cache.kept_bytes(), 0u);
  EXPECT_EQ(cache.take<int>(1).capacity(), 0u);
}

}  // namespace
