// SPDX-License-Identifier: MIT
// Tests for ranges(): exact coverage, order, balance and the default of usable_cores() pieces.
#include "multicore/ranges.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <limits>
#include <utility>
#include <vector>

#include "multicore/system.hpp"

namespace {

using Pieces = std::vector<std::pair<std::size_t, std::size_t>>;

// Checks every property ranges(n, parts) promises, for parts > 0.
void ExpectValidSplit(std::size_t n, std::size_t parts) {
  SCOPED_TRACE(testing::Message() << "n=" << n << " parts=" << parts);
  const Pieces pieces = multicore::ranges(n, parts);
  ASSERT_EQ(pieces.size(), std::min(n, parts));
  std::size_t next = 0;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const auto [begin, end] = pieces[i];
    ASSERT_EQ(begin, next) << "piece " << i << " does not start where the previous one ended";
    ASSERT_LT(begin, end) << "piece " << i << " is empty";
    if (i > 0) {
      const std::size_t previous = pieces[i - 1].second - pieces[i - 1].first;
      const std::size_t size = end - begin;
      ASSERT_LE(size, previous) << "a smaller piece comes before a larger one";
      ASSERT_LE(previous - size, 1U) << "piece sizes differ by more than one";
    }
    next = end;
  }
  EXPECT_EQ(next, n) << "the pieces do not reach n";
}

TEST(Ranges, ZeroItemsGiveNoPieces) {
  EXPECT_TRUE(multicore::ranges(0).empty());
  EXPECT_TRUE(multicore::ranges(0, 0).empty());
  EXPECT_TRUE(multicore::ranges(0, 1).empty());
  EXPECT_TRUE(multicore::ranges(0, 7).empty());
}

TEST(Ranges, CoversEveryIndexOnce) {
  const std::vector<std::size_t> sizes = {1,   2,    3,    4,    5,    7,     8,      9,
                                          15,  16,   17,   31,   63,   64,    65,     100,
                                          127, 1000, 1023, 1024, 1025, 65537, 1000003};
  const std::vector<std::size_t> part_counts = {1,  2,  3,  4,  5,   6,    7,    8,    9,    13,
                                                16, 17, 63, 64, 100, 1000, 1024, 1025, 4096, 65536};
  for (const std::size_t n : sizes) {
    for (const std::size_t parts : part_counts) {
      ExpectValidSplit(n, parts);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(Ranges, EveryIndexLandsInExactlyOnePiece) {
  for (std::size_t n = 0; n <= 40; ++n) {
    for (std::size_t parts = 1; parts <= 45; ++parts) {
      std::vector<int> hits(n, 0);
      for (const auto& [begin, end] : multicore::ranges(n, parts)) {
        for (std::size_t i = begin; i < end; ++i) ++hits.at(i);
      }
      EXPECT_EQ(std::count(hits.begin(), hits.end(), 1), static_cast<std::ptrdiff_t>(n))
          << "n=" << n << " parts=" << parts;
    }
  }
}

TEST(Ranges, LargerPiecesComeFirst) {
  EXPECT_EQ(multicore::ranges(10, 4), (Pieces{{0, 3}, {3, 6}, {6, 8}, {8, 10}}));
  EXPECT_EQ(multicore::ranges(7, 3), (Pieces{{0, 3}, {3, 5}, {5, 7}}));
}

TEST(Ranges, EvenSplitGivesEqualPieces) {
  EXPECT_EQ(multicore::ranges(12, 4), (Pieces{{0, 3}, {3, 6}, {6, 9}, {9, 12}}));
}

TEST(Ranges, OnePartIsTheWholeRange) {
  EXPECT_EQ(multicore::ranges(1, 1), (Pieces{{0, 1}}));
  EXPECT_EQ(multicore::ranges(1000, 1), (Pieces{{0, 1000}}));
}

TEST(Ranges, FewerItemsThanPartsGivesSingletons) {
  EXPECT_EQ(multicore::ranges(3, 8), (Pieces{{0, 1}, {1, 2}, {2, 3}}));
  EXPECT_EQ(multicore::ranges(1, 1000), (Pieces{{0, 1}}));
}

TEST(Ranges, AsManyItemsAsPartsGivesSingletons) {
  EXPECT_EQ(multicore::ranges(4, 4), (Pieces{{0, 1}, {1, 2}, {2, 3}, {3, 4}}));
}

TEST(Ranges, LargestSizeDoesNotOverflow) {
  constexpr std::size_t n = std::numeric_limits<std::size_t>::max();
  ExpectValidSplit(n, 1);
  ExpectValidSplit(n, 3);
  ExpectValidSplit(n, 64);
  const Pieces pieces = multicore::ranges(n, 2);
  ASSERT_EQ(pieces.size(), 2U);
  EXPECT_EQ(pieces[0], std::make_pair(std::size_t{0}, n / 2 + 1));
  EXPECT_EQ(pieces[1], std::make_pair(n / 2 + 1, n));
}

TEST(Ranges, DefaultPartsIsUsableCores) {
  const std::size_t cores = multicore::usable_cores();
  EXPECT_EQ(multicore::ranges(1000000).size(), cores);
  EXPECT_EQ(multicore::ranges(1000000, 0), multicore::ranges(1000000, cores));
  ExpectValidSplit(1000000, cores);
}

TEST(Ranges, DefaultPartsWithFewItemsGivesSingletons) {
  EXPECT_EQ(multicore::ranges(1), (Pieces{{0, 1}}));
  const std::size_t cores = multicore::usable_cores();
  EXPECT_EQ(multicore::ranges(cores).size(), cores);
}

}  // namespace
