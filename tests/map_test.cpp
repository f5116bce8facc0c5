// SPDX-License-Identifier: MIT
// Tests for Pool::map and Pool::map_unordered: order, input kinds, chunking, threads per
// worker, failing and crashing items, laziness, abandonment, misuse and concurrent maps.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <future>
#include <iterator>
#include <latch>
#include <list>
#include <multicore/detail/front/chunk_sizer.hpp>
#include <multicore/multicore.hpp>
#include <new>
#include <numeric>
#include <ranges>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"
#include "support/shared_counter.hpp"
#include "support/workers.hpp"

namespace {

using multicore_test::Pipe;
using multicore_test::SharedCounter;
using namespace std::chrono_literals;

using multicore::MapOptions;
using multicore::Pool;
using multicore::PoolOptions;
using multicore::RemoteError;
using multicore::WorkerLost;

std::int64_t square(int x) { return std::int64_t{x} * x; }
std::string as_string(int x) { return std::to_string(x); }

int sleepy_triple(int x) {
  usleep(20'000);
  return 3 * x;
}

// Throws for every input with x % 50 == 7.
int triple_or_throw(int x) {
  if (x % 50 == 7) throw std::domain_error("bad input " + std::to_string(x));
  return 3 * x;
}

constexpr int crash_input = 4321;
// Kills its worker process for one specific input.
int triple_or_abort(int x) {
  if (x == crash_input) std::abort();
  return 3 * x;
}

// Named trivially copyable function objects (sent as bytes, like capturing lambdas).
struct Affine {
  std::int64_t a;
  std::int64_t b;
  std::int64_t operator()(int x) const { return a * x + b; }
};

struct SleepThenAffine {
  int micros;
  std::int64_t b;
  std::int64_t operator()(int x) const {
    usleep(static_cast<useconds_t>(micros));
    return std::int64_t{x} + b;
  }
};

/// A map item for the abandonment tests. It reports its index through the `started` pipe; item 0
/// then returns at once, every other one waits for a byte from the `gate` pipe (-1: none ever
/// comes) for 30 s, far beyond every bound of the tests, which never wait that long.
struct GatedItem {
  int started;
  int gate;
  int operator()(int x) const {
    multicore_test::write_all(started, &x, sizeof x);
    if (x == 0) return 0;
    if (gate < 0) {
      std::this_thread::sleep_for(30s);
      return x;
    }
    char byte = 0;
    multicore_test::read_exact(gate, &byte, 1, 30s);
    return x;
  }
};

/// Every result of an ordered map, in the order yielded.
template <class Range>
auto collect(Range&& results) {
  std::vector<std::ranges::range_value_t<Range>> out;
  for (auto&& r : results) out.push_back(r);
  return out;
}

template <class In, class F>
auto sequential(const In& inputs, F f) {
  std::vector<std::invoke_result_t<F&, std::ranges::range_reference_t<const In>>> out;
  for (auto&& x : inputs) out.push_back(f(x));
  return out;
}

/// An input-only range 0, 1, 2, ... (endless unless given a limit) that counts the elements the
/// consumer pulled (dereferenced). Single pass: not a forward range.
class CountingInput {
 public:
  explicit CountingInput(std::size_t limit = static_cast<std::size_t>(-1)) : limit_(limit) {}

  class iterator {
   public:
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(CountingInput* range) : range_(range) {}
    int operator*() const {
      ++range_->pulled_;
      return static_cast<int>(range_->next_);
    }
    iterator& operator++() {
      ++range_->next_;
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) {
      return it.range_->exhausted();
    }

   private:
    CountingInput* range_ = nullptr;
  };

  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const { return {}; }
  std::size_t pulled() const { return pulled_; }
  bool exhausted() const { return next_ >= limit_; }

 private:
  std::size_t limit_;
  std::size_t next_ = 0;
  std::size_t pulled_ = 0;
};
static_assert(std::ranges::input_range<CountingInput>);
static_assert(!std::ranges::forward_range<CountingInput>);

/// Chunks a map keeps in flight or ready for chunks of `chunk` items (detail::MapState::window:
/// about 16384 items, between 2 and 32 chunks per worker, at least 2).
std::size_t map_window(const Pool& pool, std::size_t chunk) {
  return std::clamp<std::size_t>(16384 / chunk, std::max<std::size_t>(2, 2 * pool.size()),
                                 std::max<std::size_t>(2, 32 * pool.size()));
}

// ----- Parameterised over worker counts ---------------------------------------------------------

class MapTest : public multicore_test::WorkerCountTest {};

INSTANTIATE_TEST_SUITE_P(Workers, MapTest, multicore_test::worker_counts(),
                         multicore_test::worker_count_name);

TEST_P(MapTest, VectorInOrder) {
  Pool pool(options());
  std::vector<int> inputs(1000);
  for (std::size_t i = 0; i < inputs.size(); ++i) inputs[i] = static_cast<int>(i * 7 % 1001) - 500;
  EXPECT_EQ(collect(pool.map(square, inputs)), sequential(inputs, square));
  // Strings go through cereal rather than raw bytes.
  EXPECT_EQ(collect(pool.map(as_string, inputs)), sequential(inputs, as_string));
}

TEST_P(MapTest, ListIsNotRandomAccess) {
  Pool pool(options());
  std::list<int> inputs;
  for (int i = 0; i < 500; ++i) inputs.push_back(i % 2 == 0 ? i : -i);
  EXPECT_EQ(collect(pool.map(square, inputs)), sequential(inputs, square));
}

TEST_P(MapTest, BoundedIota) {
  Pool pool(options());
  const auto inputs = multicore_test::numbers(0, 2000);
  EXPECT_EQ(collect(pool.map(Affine{3, -1}, inputs)), sequential(inputs, Affine{3, -1}));
}

// The issue's own words: an endless std::views::iota(0), abandoned early. Not with clang before
// 16, which cannot compile libstdc++'s views at all (see numbers.hpp); the test above covers the
// same behaviour there with a stand-in range.
#if !defined(__clang__) || __clang_major__ >= 16
TEST_P(MapTest, StdViewsIotaEndlessBreakEarly) {
  Pool pool(options());
  std::int64_t expected = 0;
  for (std::int64_t s : pool.map(square, std::views::iota(0))) {
    ASSERT_EQ(s, expected * expected);
    if (++expected == 300) break;
  }
  EXPECT_EQ(expected, 300);
  EXPECT_EQ(collect(pool.map(square, std::views::iota(0, 5))),
            (std::vector<std::int64_t>{0, 1, 4, 9, 16}));
}
#endif

TEST_P(MapTest, EndlessIotaBreakEarlyThenPoolStillWorks) {
  Pool pool(options());
  std::vector<std::int64_t> got;
  for (std::int64_t s : pool.map(square, multicore_test::numbers_from(0))) {
    got.push_back(s);
    if (got.size() == 300) break;
  }
  ASSERT_EQ(got.size(), 300u);
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], static_cast<std::int64_t>(i * i)) << "index " << i;
  }
  // The abandoned map's answers must not disturb what comes next.
  EXPECT_EQ(pool.submit(square, 12).get(), 144);
  const auto inputs = multicore_test::numbers(-50, 50);
  EXPECT_EQ(collect(pool.map(Affine{-2, 5}, inputs)), sequential(inputs, Affine{-2, 5}));
}

TEST_P(MapTest, InputOnlyRange) {
  Pool pool(options());
  CountingInput inputs(777);
  const auto got = collect(pool.map(square, inputs));
  ASSERT_EQ(got.size(), 777u);
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], static_cast<std::int64_t>(i * i));
  EXPECT_EQ(inputs.pulled(), 777u);
}

TEST_P(MapTest, UnorderedYieldsEveryIndexExactlyOnce) {
  Pool pool(options());
  std::vector<int> inputs(1500);
  for (std::size_t i = 0; i < inputs.size(); ++i) inputs[i] = static_cast<int>(i) * 3 - 2000;
  std::vector<int> seen(inputs.size(), 0);
  std::size_t count = 0;
  for (auto [index, value] : pool.map_unordered(square, inputs)) {
    ASSERT_LT(index, inputs.size());
    ++seen[index];
    EXPECT_EQ(value, square(inputs[index])) << "index " << index;
    ++count;
  }
  EXPECT_EQ(count, inputs.size());
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), static_cast<std::ptrdiff_t>(inputs.size()));
}

TEST_P(MapTest, UnorderedOverInputOnlyRangeAndStrings) {
  Pool pool(options());
  CountingInput inputs(300);
  std::vector<std::string> by_index(300);
  std::size_t count = 0;
  for (auto&& [index, value] : pool.map_unordered(as_string, inputs)) {
    ASSERT_LT(index, by_index.size());
    EXPECT_TRUE(by_index[index].empty()) << "index " << index << " yielded twice";
    by_index[index] = value;
    ++count;
  }
  EXPECT_EQ(count, 300u);
  for (std::size_t i = 0; i < by_index.size(); ++i) EXPECT_EQ(by_index[i], std::to_string(i));
}

TEST_P(MapTest, EmptyInput) {
  Pool pool(options());
  const std::vector<int> none;
  EXPECT_TRUE(collect(pool.map(square, none)).empty());
  EXPECT_TRUE(collect(pool.map(square, multicore_test::numbers(5, 5))).empty());
  std::size_t unordered = 0;
  for (auto&& r : pool.map_unordered(square, none)) {
    (void)r;
    ++unordered;
  }
  EXPECT_EQ(unordered, 0u);
  auto results = pool.map(square, std::list<int>{});
  EXPECT_TRUE(results.begin() == results.end());
  EXPECT_EQ(pool.submit(square, 3).get(), 9);
}

TEST_P(MapTest, ThreadsPerWorkerGiveCorrectResults) {
  Pool pool(options());
  const auto inputs = multicore_test::numbers(0, 24);
  const auto expected = sequential(inputs, [](int x) { return 3 * x; });  // without the sleep
  MapOptions threaded;
  threaded.threads_per_worker = 4;
  EXPECT_EQ(collect(pool.map(sleepy_triple, inputs, threaded)), expected);

  // Failures on helper threads are reported per item, too.
  threaded.chunk_size = 8;
  const auto with_failures = multicore_test::numbers(0, 120);
  std::size_t i = 0;
  auto results = pool.map(triple_or_throw, with_failures, threaded);
  for (auto it = results.begin(); it != results.end(); ++it, ++i) {
    if (i % 50 == 7) {
      EXPECT_THROW((void)*it, RemoteError) << "index " << i;
    } else {
      EXPECT_EQ(*it, 3 * static_cast<int>(i));
    }
  }
  EXPECT_EQ(i, 120u);

  std::vector<int> unordered(24, -1);
  for (auto [index, value] : pool.map_unordered(sleepy_triple, inputs, threaded)) {
    unordered[index] = value;
  }
  EXPECT_EQ(unordered, expected);
}

TEST_P(MapTest, ThrowingItemOnlyFailsItsOwnResult) {
  Pool pool(options());
  for (std::size_t chunk : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1000}}) {
    SCOPED_TRACE("chunk_size " + std::to_string(chunk));
    MapOptions o;
    o.chunk_size = chunk;
    auto results = pool.map(triple_or_throw, multicore_test::numbers(0, 300), o);
    int i = 0;
    for (auto it = results.begin(); it != results.end(); ++it, ++i) {
      if (i % 50 != 7) {
        EXPECT_EQ(*it, 3 * i);
        continue;
      }
      try {
        (void)*it;
        ADD_FAILURE() << "index " << i << " did not throw";
      } catch (const RemoteError& e) {
        EXPECT_EQ(e.type_name(), "std::domain_error");
        EXPECT_EQ(e.message(), "bad input " + std::to_string(i));
      }
    }
    EXPECT_EQ(i, 300);
  }
}

// map_unordered: the error replaces the (index, value) pair, so a failed item is counted but
// its index cannot be known from the error (see the report: doubtful behaviour).
TEST_P(MapTest, UnorderedWithThrowingItems) {
  Pool pool(options());
  MapOptions o;
  o.chunk_size = 7;
  auto results = pool.map_unordered(triple_or_throw, multicore_test::numbers(0, 300), o);
  std::vector<int> seen(300, 0);
  int errors = 0;
  for (auto it = results.begin(); it != results.end(); ++it) {
    try {
      auto [index, value] = *it;
      ++seen[index];
      EXPECT_EQ(value, 3 * static_cast<int>(index));
    } catch (const RemoteError& e) {
      EXPECT_EQ(e.type_name(), "std::domain_error");
      ++errors;
    }
  }
  EXPECT_EQ(errors, 6);
  for (int i = 0; i < 300; ++i) EXPECT_EQ(seen[static_cast<std::size_t>(i)], i % 50 == 7 ? 0 : 1);
}

// Errors as values (issue 13): items() yields every item, value or error, in the same order,
// so a loop goes past failed items without an iterator loop and try/catch.
TEST_P(MapTest, ItemsHoldAValueOrTheErrorInItsPlace) {
  Pool pool(options());
  MapOptions o;
  o.chunk_size = 7;
  std::vector<std::size_t> indexes;
  int errors = 0;
  for (auto& item : pool.map(triple_or_throw, multicore_test::numbers(0, 100), o).items()) {
    indexes.push_back(item.index());
    if (item) {
      EXPECT_EQ(*item, 3 * static_cast<int>(item.index()));
      EXPECT_FALSE(item.error());
    } else {
      ++errors;
      EXPECT_EQ(item.index() % 50, 7u);
      EXPECT_THROW(item.value(), RemoteError);  // value() throws the error in its place
      try {
        std::rethrow_exception(item.error());
      } catch (const RemoteError& e) {
        EXPECT_EQ(e.type_name(), "std::domain_error");
      }
    }
  }
  EXPECT_EQ(errors, 2);
  std::vector<std::size_t> expected(100);
  std::iota(expected.begin(), expected.end(), std::size_t{0});
  EXPECT_EQ(indexes, expected);  // input order, failed items included

  std::vector<int> seen(100, 0);
  errors = 0;
  for (auto& item :
       pool.map_unordered(triple_or_throw, multicore_test::numbers(0, 100), o).items()) {
    ++seen[item.index()];
    if (item.has_value()) {
      EXPECT_EQ(item.value(), 3 * static_cast<int>(item.index()));
    } else {
      ++errors;
    }
  }
  EXPECT_EQ(errors, 2);
  EXPECT_EQ(seen, std::vector<int>(100, 1));

  // From a variable: items() refers to it; the results are still iterated only once.
  auto results = pool.map(triple_or_throw, std::vector<int>{6, 7, 8});
  std::vector<bool> valued;
  for (auto& item : results.items()) valued.push_back(item.has_value());
  EXPECT_EQ(valued, (std::vector<bool>{true, false, true}));
  EXPECT_THROW(results.begin(), std::logic_error);
}

class MapCrashTest : public MapTest {
 protected:
  void SetUp() override {
    // std::abort() must not spend time writing core files.
    const rlimit no_core{0, 0};
    ASSERT_EQ(setrlimit(RLIMIT_CORE, &no_core), 0);
  }
};

INSTANTIATE_TEST_SUITE_P(Workers, MapCrashTest, multicore_test::worker_counts(),
                         multicore_test::worker_count_name);

// A worker that dies mid-chunk fails only the item that killed it: the stream resends the
// chunk's items one by one. Worker starts are counted (on_worker_start, in shared memory) to
// prove it: exactly two deaths, the multi-item chunk and then the crashing item alone.
TEST_P(MapCrashTest, CrashingItemOnlyFailsItsOwnResult) {
  for (std::size_t chunk : {std::size_t{0}, std::size_t{100}}) {
    SCOPED_TRACE(chunk == 0 ? std::string("automatic chunks")
                            : "chunk_size " + std::to_string(chunk));
    const SharedCounter starts;
    PoolOptions po = options();
    po.on_worker_start = [&starts] { ++*starts; };
    Pool pool(po);
    const int workers = static_cast<int>(pool.size());
    MapOptions o;
    o.chunk_size = chunk;
    auto results = pool.map(triple_or_abort, multicore_test::numbers(0, 6000), o);
    int i = 0;
    int lost = 0;
    for (auto it = results.begin(); it != results.end(); ++it, ++i) {
      if (i != crash_input) {
        ASSERT_EQ(*it, 3 * i) << "index " << i;
        continue;
      }
      try {
        (void)*it;
        ADD_FAILURE() << "the crashing item did not throw";
      } catch (const WorkerLost& e) {
        ++lost;
        EXPECT_EQ(e.signal(), SIGABRT);
        EXPECT_EQ(e.exit_code(), -1);
      }
    }
    EXPECT_EQ(i, 6000);
    EXPECT_EQ(lost, 1);
    // The pool replaced the dead workers and keeps its size.
    EXPECT_EQ(static_cast<int>(pool.size()), workers);
    EXPECT_EQ(pool.submit(square, 11).get(), 121);
    // After shutdown() every replacement has started (and stopped): starts = workers + deaths.
    // With automatic chunks, 6000 fast items have grown the chunks far beyond one item by
    // input 4321, so there too the crash happens inside a multi-item chunk.
    pool.shutdown();
    EXPECT_EQ(*starts - workers, 2) << "worker deaths";
  }
}

TEST_P(MapTest, LazyWithFixedChunks) {
  Pool pool(options());
  for (std::size_t chunk : {std::size_t{1}, std::size_t{7}}) {
    SCOPED_TRACE("chunk_size " + std::to_string(chunk));
    MapOptions o;
    o.chunk_size = chunk;
    CountingInput endless;
    auto results = pool.map(square, endless, o);
    EXPECT_EQ(endless.pulled(), 0u) << "map() itself must not read the input";
    const std::size_t bound = map_window(pool, chunk) * chunk;
    std::size_t read = 0;
    for (auto it = results.begin(); read < 200; ++it) {
      ASSERT_EQ(*it, static_cast<std::int64_t>(read * read));
      ++read;
      // At every point, at most a window of chunks beyond what was yielded has been read.
      ASSERT_LE(endless.pulled(), read + bound) << "after " << read << " results";
      ASSERT_GE(endless.pulled(), read);
    }
  }
}

TEST_P(MapTest, LazyWithAutomaticChunks) {
  Pool pool(options());
  // CountingInput counts the elements pulled; it runs in this process.
  CountingInput counted;
  auto results = pool.map(square, counted);
  auto it = results.begin();
  ASSERT_EQ(*it, 0);
  // Before any chunk has been timed, automatic chunks hold threads_per_worker (1) item each, and
  // the window is at its smallest while the sizer is still growing. The answer that completes
  // the sizer's first measurements may end its growth and widen the window at once; the map
  // then tops the window up (chunks of at most `growth` times the 1-item chunks measured)
  // before it yields the first result. So at most a full window of such chunks was read.
  EXPECT_GE(counted.pulled(), 1u);
  EXPECT_LE(counted.pulled(), map_window(pool, 1) * multicore::detail::ChunkSizer::growth);
  for (std::size_t read = 1; read < 2000; ++read) {
    ++it;
    ASSERT_EQ(*it, static_cast<std::int64_t>(read * read));
  }
  // However the chunks grew, at most a window of the largest chunks is read ahead.
  EXPECT_LE(counted.pulled(), 2000 + map_window(pool, 1) * multicore::detail::ChunkSizer::max_size);
}

// Enough trivial items for automatic chunks to grow to their goal and shrink again at the end
// of a sized input (see detail::ChunkSizer): every result, in order, from sized and unsized
// inputs alike.
TEST_P(MapTest, AutomaticChunksGrowAndShrinkKeepingOrder) {
  Pool pool(options());
  constexpr std::size_t n = 200'000;
  const auto inputs = multicore_test::numbers(0, static_cast<int>(n));
  const auto expected = sequential(inputs, Affine{3, 1});
  EXPECT_EQ(collect(pool.map(Affine{3, 1}, inputs)), expected);
  CountingInput unsized(n);
  std::vector<std::int64_t> got;
  for (std::int64_t r : pool.map(Affine{3, 1}, unsized)) got.push_back(r);
  EXPECT_EQ(got, expected);
  EXPECT_EQ(unsized.pulled(), n);
  std::vector<std::int64_t> unordered(n);
  std::size_t count = 0;
  for (auto [index, value] : pool.map_unordered(Affine{3, 1}, inputs)) {
    unordered[index] = value;
    ++count;
  }
  EXPECT_EQ(count, n);
  EXPECT_EQ(unordered, expected);
}

TEST_P(MapTest, ChunkSizes) {
  Pool pool(options());
  const auto inputs = multicore_test::numbers(-300, 2700);
  const auto expected = sequential(inputs, Affine{5, 2});
  for (std::size_t chunk : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1000}}) {
    SCOPED_TRACE("chunk_size " + std::to_string(chunk));
    MapOptions o;
    o.chunk_size = chunk;
    EXPECT_EQ(collect(pool.map(Affine{5, 2}, inputs, o)), expected);
    std::vector<std::int64_t> unordered(expected.size());
    std::size_t count = 0;
    for (auto [index, value] : pool.map_unordered(Affine{5, 2}, inputs, o)) {
      unordered[index] = value;
      ++count;
    }
    EXPECT_EQ(count, expected.size());
    EXPECT_EQ(unordered, expected);
  }
}

// A chunk size beyond the input (even absurdly so) means "one chunk holds everything".
// Regression test: fill() once reserved chunk_size elements up front, so 2^40 threw
// std::bad_alloc and SIZE_MAX std::length_error.
TEST_P(MapTest, HugeChunkSize) {
  Pool pool(options());
  const auto inputs = multicore_test::numbers(0, 10);
  for (std::size_t chunk :
       {std::size_t{1} << 20, std::size_t{1} << 40, static_cast<std::size_t>(-1)}) {
    SCOPED_TRACE("chunk_size " + std::to_string(chunk));
    MapOptions o;
    o.chunk_size = chunk;
    EXPECT_EQ(collect(pool.map(Affine{1, 2}, inputs, o)), sequential(inputs, Affine{1, 2}));
  }
}

TEST_P(MapTest, CapturingLambda) {
  Pool pool(options());
  // Not const: constants need no capture (clang says so), and the closure must carry state.
  std::int64_t offset = 1'000'000;
  int factor = 3;
  const auto inputs = multicore_test::numbers(0, 500);
  auto f = [offset, factor](int x) { return offset + factor * x; };
  EXPECT_EQ(collect(pool.map(f, inputs)), sequential(inputs, f));
}

TEST_P(MapTest, AbandonedMapNeverLeaksResultsIntoLaterMaps) {
  Pool pool(options());
  {
    // Slow items in small chunks: when this map is dropped, many chunks are still in flight.
    MapOptions o;
    o.chunk_size = 2;
    auto abandoned =
        pool.map(SleepThenAffine{2000, 1'000'000}, multicore_test::numbers(0, 100000), o);
    auto it = abandoned.begin();
    for (int i = 0; i < 5; ++i, ++it) ASSERT_EQ(*it, 1'000'000 + i);
  }
  for (int round = 0; round < 2; ++round) {
    const auto inputs = multicore_test::numbers(0, 300);
    EXPECT_EQ(collect(pool.map(Affine{2, 0}, inputs)), sequential(inputs, Affine{2, 0}));
    std::vector<int> seen(300, 0);
    for (auto [index, value] : pool.map_unordered(Affine{1, -7}, inputs)) {
      ASSERT_LT(index, seen.size());
      ++seen[index];
      EXPECT_EQ(value, static_cast<std::int64_t>(index) - 7);
    }
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 300);
  }
  EXPECT_EQ(pool.submit(square, -4).get(), 16);
}

TEST_P(MapTest, AbandonedBeforeFirstResult) {
  Pool pool(options());
  {
    auto never_read = pool.map(SleepThenAffine{1000, 0}, multicore_test::numbers(0, 1000));
    (void)never_read;  // begin() never called: nothing is sent
  }
  {
    auto started = pool.map(SleepThenAffine{1000, 0}, multicore_test::numbers(0, 1000));
    auto it = started.begin();  // sends a window, waits for the first result
    EXPECT_EQ(*it, 0);
  }
  const auto inputs = multicore_test::numbers(0, 50);
  EXPECT_EQ(collect(pool.map(Affine{1, 1}, inputs)), sequential(inputs, Affine{1, 1}));
}

/// Starts a map of GatedItems in chunks of one, takes its first result (item 0) and waits until
/// every worker has started a gated item (each then runs one, with the rest queued behind it),
/// then abandons the map. Returns the `submit`s made while the map was alive.
std::vector<std::future<std::int64_t>> abandon_gated_map(Pool& pool, int items, int gate_fd,
                                                         const Pipe& started, int submits) {
  std::vector<std::future<std::int64_t>> submitted;
  MapOptions one;
  one.chunk_size = 1;
  auto results =
      pool.map(GatedItem{started.write_fd(), gate_fd}, multicore_test::numbers(0, items), one);
  auto it = results.begin();
  EXPECT_EQ(*it, 0);
  for (int i = 0; i < submits; ++i) submitted.push_back(pool.submit(square, i));
  std::vector<int> first(pool.size() + 1);
  EXPECT_TRUE(
      multicore_test::read_exact(started.read_fd(), first.data(), first.size() * sizeof(int)))
      << "not every worker started an item";
  return submitted;
}

/// Shuts the pool down (bounded), then checks that no item started after the abandonment.
void expect_no_late_start(Pool& pool, Pipe& started) {
  auto closing = std::async(std::launch::async, [&] { pool.shutdown(); });
  ASSERT_TRUE(multicore_test::ready_within(closing)) << "the pool waits for abandoned items";
  started.close_write();  // the workers are gone: end-of-file once the pipe is read dry
  std::string late = multicore_test::read_to_end(started.read_fd());
  EXPECT_EQ(late.size() / sizeof(int), 0u) << "abandoned chunks started after the abandonment";
}

// Abandoning a map cancels the rest (see the README): a worker still running one of its chunks
// after a grace is killed and replaced, so the pool does not wait for items nobody wants (here,
// 30 s each), and the chunks queued behind never run.
TEST_P(MapTest, AbandonedMapOfLongItemsIsCutOff) {
  Pipe started;
  Pool pool(options());
  const multicore_test::TerminateIfFailed guard(pool);
  abandon_gated_map(pool, 1000, -1, started, 0);
  auto quick = pool.submit(square, 3);
  ASSERT_TRUE(multicore_test::ready_within(quick));
  EXPECT_EQ(quick.get(), 9);
  expect_no_late_start(pool, started);
}

// Chunks running when their map is abandoned may finish; those queued behind them in the
// workers' rings are skipped, never started.
TEST_P(MapTest, AbandonedMapSkipsChunksNotStarted) {
  Pipe started;
  Pipe gate;
  Pool pool(options());
  const multicore_test::TerminateIfFailed guard(pool);
  abandon_gated_map(pool, 1000, gate.read_fd(), started, 0);
  const std::string open(256, 'x');  // lets every running item (and any that wrongly starts) end
  ASSERT_TRUE(multicore_test::write_all(gate.write_fd(), open.data(), open.size()));
  auto quick = pool.submit(square, 3);
  ASSERT_TRUE(multicore_test::ready_within(quick));
  EXPECT_EQ(quick.get(), 9);
  expect_no_late_start(pool, started);
}

// Chunks that end soon after the abandonment (automatic chunks aim at about 0.5 ms) finish: no
// worker is replaced for them.
TEST_P(MapTest, AbandonedMapOfShortItemsReplacesNoWorker) {
  SharedCounter starts;
  PoolOptions o = options();
  o.on_worker_start = [count = starts.get()] { count->fetch_add(1); };
  Pool pool(o);
  {
    auto results = pool.map(SleepThenAffine{1000, 0}, multicore_test::numbers(0, 100000));
    auto it = results.begin();
    for (int i = 0; i < 5; ++i, ++it) ASSERT_EQ(*it, i);
  }
  EXPECT_EQ(pool.submit(square, 2).get(), 4);
  pool.shutdown();
  EXPECT_EQ((*starts).load(), static_cast<int>(expected_size())) << "a worker was replaced";
}

TEST_P(MapTest, IteratingTwiceThrowsLogicError) {
  Pool pool(options());
  const std::vector<int> inputs{1, 2, 3};
  auto results = pool.map(square, inputs);
  EXPECT_EQ(collect(results), (std::vector<std::int64_t>{1, 4, 9}));
  EXPECT_THROW((void)results.begin(), std::logic_error);

  auto unordered = pool.map_unordered(square, inputs);
  (void)unordered.begin();
  EXPECT_THROW((void)unordered.begin(), std::logic_error);
}

TEST_P(MapTest, BadThreadsPerWorkerThrowsInvalidArgument) {
  Pool pool(options());
  const std::vector<int> inputs{1, 2, 3};
  MapOptions zero;
  zero.threads_per_worker = 0;
  EXPECT_THROW((void)pool.map(square, inputs, zero), std::invalid_argument);
  EXPECT_THROW((void)pool.map_unordered(square, inputs, zero), std::invalid_argument);
  try {
    (void)pool.map(square, inputs, zero);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("threads_per_worker"), std::string::npos) << e.what();
  }
  MapOptions huge;
  huge.threads_per_worker = 1025;
  EXPECT_THROW((void)pool.map(square, inputs, huge), std::invalid_argument);
  EXPECT_EQ(collect(pool.map(square, inputs)), (std::vector<std::int64_t>{1, 4, 9}));
}

TEST_P(MapTest, ConcurrentMapsFromSeveralThreads) {
  constexpr int threads = 3;
  Pool pool(options());
  std::latch start(threads);
  std::vector<std::vector<std::int64_t>> got(threads);
  std::vector<std::thread> mappers;
  for (int t = 0; t < threads; ++t) {
    mappers.emplace_back([&, t] {
      start.arrive_and_wait();
      MapOptions o;
      o.chunk_size = t == 0 ? 0 : static_cast<std::size_t>(t * 5);
      for (std::int64_t v :
           pool.map(Affine{t + 1, t * 100000}, multicore_test::numbers(0, 1500), o)) {
        got[static_cast<std::size_t>(t)].push_back(v);
      }
    });
  }
  for (auto& m : mappers) m.join();
  for (int t = 0; t < threads; ++t) {
    EXPECT_EQ(got[static_cast<std::size_t>(t)],
              sequential(multicore_test::numbers(0, 1500), Affine{t + 1, t * 100000}))
        << "thread " << t;
  }
}

// Maps of different types at once on one pool share its kept chunk storage: their inputs
// (ints) one kind of vector, their results two others. Each still gets its own results, in
// order, round after round.
TEST_P(MapTest, ConcurrentMapsOfDifferentTypesShareThePoolsChunkStorage) {
  Pool pool(options());
  const auto inputs = multicore_test::numbers(0, 3000);
  std::latch start(2);
  std::vector<std::vector<std::int64_t>> squares;
  std::thread other([&] {
    start.arrive_and_wait();
    for (int round = 0; round < 3; ++round) squares.push_back(collect(pool.map(square, inputs)));
  });
  start.arrive_and_wait();
  std::vector<std::vector<std::string>> strings;
  for (int round = 0; round < 3; ++round) strings.push_back(collect(pool.map(as_string, inputs)));
  other.join();
  for (const auto& got : squares) EXPECT_EQ(got, sequential(inputs, square));
  for (const auto& got : strings) EXPECT_EQ(got, sequential(inputs, as_string));
  EXPECT_EQ(squares.size(), 3u);
}

// ----- Not parameterised ------------------------------------------------------------------------

// Tasks submitted while the map was alive are not abandoned with it: they run and get their
// values, also the one queued in the worker's ring behind the map's running chunk (requeued,
// like after any death, when that chunk is cut off).
TEST(Map, TasksQueuedBehindAnAbandonedMapComplete) {
  Pipe started;
  Pool pool(PoolOptions{.workers = 1});
  const multicore_test::TerminateIfFailed guard(pool);
  // Item 1 runs, alone in the ring once item 0 has answered: the first task joins it there (a
  // worker holds at least two jobs), the others wait in the parent.
  auto queued = abandon_gated_map(pool, 2, -1, started, 20);
  for (std::size_t i = 0; i < queued.size(); ++i) {
    ASSERT_TRUE(multicore_test::ready_within(queued[i])) << "task " << i;
    EXPECT_EQ(queued[i].get(), square(static_cast<int>(i)));
  }
  expect_no_late_start(pool, started);
}

TEST(Map, ResultsAreYieldedBeforeTheInputEnds) {
  // An ordered map yields the first result while later inputs are still unread: the consumer
  // sees results of an endless input at all (the sized/unsized distinction must not matter).
  Pool pool(PoolOptions{.workers = 2});
  CountingInput endless;
  auto results = pool.map(as_string, endless);
  auto it = results.begin();
  EXPECT_EQ(*it, "0");
  ++it;
  EXPECT_EQ(*it, "1");
}

pid_t pid_of_runner(int /*x*/) { return getpid(); }

// A map range outliving its pool kept a dangling PoolCore& (heap-use-after-free under ASan). In
// a plain build the freed core read as an inline pool: the map "worked", running the function
// in the application's own process, without isolation.
TEST(MapLifetime, MapOutlivingItsPoolThrowsPoolClosed) {
  const std::vector<int> inputs(100, 1);
  auto make_map = [&] {
    Pool pool(PoolOptions{.workers = 2});
    return pool.map(pid_of_runner, inputs);
  };
  auto results = make_map();
  EXPECT_TRUE(multicore_test::thrown_exactly<multicore::PoolClosed>([&] {
    for (pid_t pid : results) ASSERT_NE(pid, getpid()) << "ran in the application's process";
  }));
}

TEST(MapLifetime, MapSurvivesItsPoolBeingMoved) {
  Pool a(PoolOptions{.workers = 2});
  auto results = a.map(square, multicore_test::Numbers(0, 100), {.chunk_size = 4});
  auto it = results.begin();
  Pool b = std::move(a);
  int i = 0;
  for (; it != results.end(); ++it, ++i) EXPECT_EQ(*it, square(i));
  EXPECT_EQ(i, 100);
}

// An input range whose dereference throws at `bad`, and ends at 2000.
class ThrowsAt {
 public:
  class iterator {
   public:
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    iterator(int i, int bad) : i_(i), bad_(bad) {}
    int operator*() const {
      if (i_ == bad_) throw std::runtime_error("input " + std::to_string(i_) + " is unreadable");
      return i_;
    }
    iterator& operator++() {
      ++i_;
      return *this;
    }
    void operator++(int) { ++i_; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.i_ >= 2000; }

   private:
    int i_ = 0;
    int bad_ = 0;
  };
  explicit ThrowsAt(int bad) : bad_(bad) {}
  iterator begin() const { return {0, bad_}; }
  std::default_sentinel_t end() const { return {}; }

 private:
  int bad_;
};

// An input range that throws part-way: the map dropped the chunk it was reading and ended, so
// the results of the inputs read before the failure vanished without an error (items 748..999
// here). Now every input read before it yields its result, then the input's error is thrown
// once (by the dereference at its index), then the map ends.
TEST(MapInput, InputThatThrowsMidWayLosesNoResultsReadBeforeIt) {
  Pool pool(PoolOptions{.workers = 2});
  const ThrowsAt inputs(1000);
  auto results = pool.map(square, inputs, {.chunk_size = 4});
  std::vector<std::int64_t> values;
  int input_errors = 0;
  auto it = results.begin();
  while (it != results.end()) {
    try {
      values.push_back(*it);
    } catch (const std::runtime_error&) {
      EXPECT_EQ(it.index(), 1000u);
      ++input_errors;
    }
    try {
      ++it;
    } catch (const std::runtime_error&) {
      ++input_errors;
    }
    ASSERT_LE(input_errors, 1) << "the input's error was reported more than once";
  }
  EXPECT_EQ(input_errors, 1);
  ASSERT_EQ(values.size(), 1000u) << "results of inputs read before the failure were dropped";
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(values[static_cast<std::size_t>(i)], square(i));
}

TEST(MapInput, UnorderedMapYieldsTheInputsErrorAtItsIndex) {
  Pool pool(PoolOptions{.workers = 2});
  const ThrowsAt inputs(10);
  auto results = pool.map_unordered(square, inputs, {.chunk_size = 4});
  std::vector<std::size_t> seen;
  std::size_t failed_at = 0;
  for (auto it = results.begin(); it != results.end(); ++it) {
    try {
      seen.push_back((*it).first);
    } catch (const std::runtime_error&) {
      failed_at = it.index();
    }
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(failed_at, 10u);
}

}  // namespace
