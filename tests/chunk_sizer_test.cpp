// SPDX-License-Identifier: MIT
// The automatic chunk size policy (detail::ChunkSizer), fed chosen costs: no clock, no pool.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <multicore/detail/front/chunk_sizer.hpp>
#include <optional>

namespace {

using multicore::detail::ChunkSizer;

constexpr std::optional<std::size_t> endless = std::nullopt;

/// Feeds `times` chunks of `items` items costing `item_ns` and `item_bytes` each.
void feed(ChunkSizer& sizer, std::size_t items, std::uint64_t item_ns, std::size_t item_bytes,
          int times = 1) {
  for (int i = 0; i < times; ++i) sizer.observe(items, items * item_ns, items * item_bytes);
}

/// Items of `item_bytes` (request and answer) that fill a chunk's bytes target.
std::size_t target_items(std::size_t item_bytes) {
  return static_cast<std::size_t>(ChunkSizer::target_bytes) / item_bytes;
}

TEST(ChunkSizer, StartsWithOneItemPerThread) {
  EXPECT_EQ(ChunkSizer(2, 1).next(endless), 1u);
  EXPECT_EQ(ChunkSizer(2, 8).next(endless), 8u);
  EXPECT_TRUE(ChunkSizer(2, 1).growing());
  EXPECT_FALSE(ChunkSizer(2, 1).measured());
}

TEST(ChunkSizer, SlowItemsTravelAlone) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 1, 10'000'000, 8, 4);  // 10 ms items
  EXPECT_EQ(sizer.goal(), 1u);
  EXPECT_EQ(sizer.next(endless), 1u);
  EXPECT_FALSE(sizer.growing());
}

TEST(ChunkSizer, SlowItemsStillFillEveryThread) {
  ChunkSizer sizer(2, 4);
  feed(sizer, 4, 10'000'000, 8, 4);
  EXPECT_EQ(sizer.next(endless), 4u);
}

TEST(ChunkSizer, MicrosecondItemsRunHalfAMillisecondAChunk) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 100, 5'000, 8, 4);  // 5 us items
  EXPECT_EQ(sizer.goal(), 100u);
  EXPECT_EQ(sizer.next(endless), 100u);
}

TEST(ChunkSizer, TrivialItemsAreBoundByBytes) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 8192, 2, 8, 4);  // 2 ns and 8 bytes (request and answer) an item
  EXPECT_EQ(sizer.goal(), target_items(8));
  ChunkSizer large(2, 1);
  feed(large, 100, 2, 4096, 4);  // 4 KiB items
  EXPECT_EQ(large.goal(), target_items(4096));
}

TEST(ChunkSizer, GrowsAtMostEightfoldOverTheLargestChunkMeasured) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 1, 2, 8, 4);
  EXPECT_EQ(sizer.next(endless), 8u);
  EXPECT_TRUE(sizer.growing());
  feed(sizer, 8, 2, 8);
  EXPECT_EQ(sizer.next(endless), 64u);
  feed(sizer, 64, 2, 8);
  feed(sizer, 512, 2, 8);
  EXPECT_EQ(sizer.next(endless), 4096u);
  feed(sizer, 4096, 2, 8);
  EXPECT_EQ(sizer.next(endless), target_items(8));
  EXPECT_FALSE(sizer.growing());
}

TEST(ChunkSizer, TooFewMeasurementsAreStillGrowing) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 1, 10'000'000, 8, 3);
  EXPECT_TRUE(sizer.growing()) << "three chunks, all maybe a fresh worker's slow first ones";
  feed(sizer, 1, 10'000'000, 8);
  EXPECT_FALSE(sizer.growing());
}

TEST(ChunkSizer, OneSlowChunkAmongFastOnesDoesNotShrinkChunks) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 100, 5'000, 8, 4);
  feed(sizer, 100, 500'000, 8);  // preempted: 100 times slower
  EXPECT_EQ(sizer.next(endless), 100u);
}

TEST(ChunkSizer, FollowsItemsThatGetDearer) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 500, 1'000, 8, 4);
  EXPECT_EQ(sizer.next(endless), 500u);
  feed(sizer, 500, 100'000, 8, 4);  // 100 times dearer from here on
  EXPECT_EQ(sizer.next(endless), 5u);
}

TEST(ChunkSizer, FollowsItemsThatGetCheaper) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 5, 100'000, 8, 4);
  feed(sizer, 5, 1'000, 8);
  EXPECT_EQ(sizer.next(endless), 40u) << "500 is the goal, but growth is 8x of 5";
}

TEST(ChunkSizer, ShrinksAsTheSizedInputRunsOut) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 500, 1'000, 8, 4);  // 1 us items: 500 to a chunk, 50 at the least
  EXPECT_EQ(sizer.next(std::size_t{1} << 20), 500u);
  EXPECT_EQ(sizer.next(1'000), 250u) << "a quarter of what is left, with 2 workers";
  EXPECT_EQ(sizer.next(400), 100u);
  EXPECT_EQ(sizer.next(100), 50u) << "no chunk of less than 50 us of work";
  EXPECT_EQ(sizer.next(3), 50u) << "the input ends first";
}

TEST(ChunkSizer, SlowItemsShrinkToOneAtTheEnd) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 10, 100'000, 8, 4);  // 100 us items: 5 to a chunk
  EXPECT_EQ(sizer.next(40), 5u);
  EXPECT_EQ(sizer.next(8), 2u);
  EXPECT_EQ(sizer.next(3), 1u);
}

// Trivial items do not shrink at all: a whole chunk of them runs in microseconds, and chunks
// shrinking to one item each would pay a chunk's overhead apiece.
TEST(ChunkSizer, TrivialItemsDoNotShrinkAtTheEnd) {
  ChunkSizer sizer(2, 1);
  feed(sizer, 8192, 2, 8, 4);
  EXPECT_EQ(sizer.next(20'000), target_items(8));
  EXPECT_EQ(sizer.next(100), target_items(8));
}

TEST(ChunkSizer, NeverBelowOneItemPerThread) {
  ChunkSizer sizer(2, 8);
  feed(sizer, 8, 100'000, 8, 4);  // 100 us items: 5 to a chunk, but 8 threads
  EXPECT_EQ(sizer.next(endless), 8u);
  EXPECT_EQ(sizer.next(3), 8u);
}

TEST(ChunkSizer, FreeItemsAreBounded) {
  ChunkSizer sizer(1, 1);
  for (std::size_t n = 1; n <= ChunkSizer::max_size; n *= ChunkSizer::growth) {
    sizer.observe(n, 0, 0);
  }
  // Counted as 1 ns and 1 byte an item: the bytes bound it.
  EXPECT_EQ(sizer.next(endless), target_items(1));
}

TEST(ChunkSizer, EmptyChunksAreIgnored) {
  ChunkSizer sizer(2, 1);
  sizer.observe(0, 1'000, 8);
  EXPECT_FALSE(sizer.measured());
}

}  // namespace
