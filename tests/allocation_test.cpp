// SPDX-License-Identifier: MIT
// Pool::call with small values allocates nothing, in the caller or in the worker, once warm:
// values up to 4 KiB are held inline, only larger ones go to the heap. A map reuses its chunks'
// storage. (Counts every operator new of this binary; its workers are forks of it, so they
// count too.)
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <multicore/multicore.hpp>
#include <new>
#include <string>
#include <vector>

#include "support/leak_check.hpp"

namespace {
std::atomic<std::uint64_t> process_allocations{0};
thread_local std::uint64_t thread_allocations = 0;
/// Allocations of at least this many bytes are also counted apart.
constexpr std::size_t large_bytes = 4000;
std::atomic<std::uint64_t> large_allocations{0};
}  // namespace

// g++ 12 at -O3 inlines these replacements into the deallocations of code that allocated with
// them, then warns that free() gets memory from operator new: both are these, over malloc.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t n) {
  ++thread_allocations;
  process_allocations.fetch_add(1, std::memory_order_relaxed);
  if (n >= large_bytes) large_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n != 0 ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t /*n*/) noexcept { std::free(p); }

namespace {

using multicore::Pool;
using multicore::PoolOptions;

/// A raw value as large as multicore still holds inline.
struct Page {
  std::array<unsigned char, 4096> bytes;
};

std::uint64_t allocations_in_this_process() {
  return process_allocations.load(std::memory_order_relaxed);
}

int plus_one(int x) { return x + 1; }

Page next_page(const Page& page) {
  Page out;
  for (std::size_t i = 0; i < out.bytes.size(); ++i) out.bytes[i] = page.bytes[i] + 1;
  return out;
}

template <class Calls>
void expect_no_allocation(Pool& pool, Calls&& calls) {
  calls();  // warm up: jobs are recycled, buffers kept
  const std::uint64_t worker_before = pool.call(allocations_in_this_process);
  const std::uint64_t caller_before = thread_allocations;
  calls();
  EXPECT_EQ(thread_allocations - caller_before, 0u) << "in the caller";
  EXPECT_EQ(pool.call(allocations_in_this_process) - worker_before, 0u) << "in the worker";
}

TEST(Allocation, CallWithAnIntAllocatesNothing) {
  Pool pool(PoolOptions{.workers = 1});
  expect_no_allocation(pool, [&] {
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(pool.call(plus_one, i), i + 1);
  });
}

TEST(Allocation, CallWithA4KiBValueAllocatesNothing) {
  Pool pool(PoolOptions{.workers = 1});
  Page page{};
  expect_no_allocation(pool, [&] {
    for (int i = 0; i < 100; ++i) page = pool.call(next_page, page);
  });
  EXPECT_EQ(page.bytes[0], 200);
}

/// Maps `chunks` chunks of `chunk` ints through `pool`, checks the results, and returns how
/// many large blocks this process allocated meanwhile.
std::uint64_t large_allocations_of_a_map(Pool& pool, std::size_t chunk, std::size_t chunks) {
  const std::vector<int> inputs(chunk * chunks, 1);
  multicore::MapOptions options;
  options.chunk_size = chunk;
  const std::uint64_t before = large_allocations.load();
  std::size_t sum = 0;
  for (int r : pool.map(plus_one, inputs, options)) sum += static_cast<std::size_t>(r);
  EXPECT_EQ(sum, 2 * inputs.size());
  return large_allocations.load() - before;
}

// Storage allocated afresh for each chunk's inputs and results (then freed, and given back to
// the system by malloc) cost page faults that made maps of trivial items several times slower
// on some VMs. Regression test: a map of many chunks allocates large blocks for a window's
// worth of chunks, not for every chunk.
TEST(Allocation, AMapOfManyChunksReusesTheirStorage) {
  Pool pool(PoolOptions{.workers = 1});
  constexpr std::size_t chunk = 1000;  // inputs 4000 bytes, results more: both counted
  static_assert(chunk * sizeof(int) >= large_bytes);
  constexpr std::size_t chunks = 256;
  EXPECT_LT(large_allocations_of_a_map(pool, chunk, chunks), chunks / 2)
      << "large blocks allocated";
}

std::string echo(const std::string& s) { return s; }

/// Maps one chunk of 200 one-character strings through `pool`, checks the results, and returns
/// how many large blocks this process allocated meanwhile: only the chunk's inputs and results
/// vectors are that large (its strings are short, held inline, so its request and its answer
/// take ~2 KB each).
std::uint64_t large_allocations_of_a_map_of_strings(Pool& pool) {
  constexpr std::size_t chunk = 200;
  static_assert(chunk * sizeof(std::string) >= large_bytes);
  const std::vector<std::string> inputs(chunk, "x");
  multicore::MapOptions options;
  options.chunk_size = chunk;
  const std::uint64_t before = large_allocations.load();
  std::size_t length = 0;
  for (const std::string& r : pool.map(echo, inputs, options)) length += r.size();
  EXPECT_EQ(length, inputs.size());
  return large_allocations.load() - before;
}

// A map's kept chunk storage lived as long as the map, so every map's first window of chunks
// had fresh inputs and results vectors, faulted in again: on a VM where page faults are dear, a
// map of 2^16 trivial items ran 1.1 to 3 times slower than with malloc told to keep its memory.
// Regression test: a map like the one before it reuses that one's chunk storage (the pool's).
// (One chunk a map: how many vectors a map of several holds at once depends on timing.)
TEST(Allocation, AMapReusesTheChunkStorageOfTheMapBeforeIt) {
  Pool pool(PoolOptions{.workers = 1});
  EXPECT_EQ(large_allocations_of_a_map_of_strings(pool), 2u)
      << "the first map allocates its chunk's inputs and results";
  EXPECT_EQ(large_allocations_of_a_map_of_strings(pool), 0u) << "large blocks allocated";
}

// With large chunks (400 KB requests here) every chunk's request buffer but one was allocated
// afresh: only one large buffer was kept (see JobPool.AWindowOfLargeRequestBuffersIsKeptWarm).
TEST(Allocation, AMapOfLargeChunksReusesTheirRequestBuffers) {
  Pool pool(PoolOptions{.workers = 2});
  constexpr std::size_t chunks = 64;
  EXPECT_LT(large_allocations_of_a_map(pool, 100'000, chunks), chunks / 2)
      << "large blocks allocated";
}

}  // namespace
