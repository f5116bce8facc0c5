// SPDX-License-Identifier: MIT
// Values larger than a thread's stack (4 and 16 MiB structs with the bytes inline) as arguments
// and results of every kind of call, in workers and inline: the limit is memory, not the stack
// of the worker, of the collector thread or of the caller.
#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <multicore/multicore.hpp>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/leak_check.hpp"
#include "support/sanitizer.hpp"

namespace large_value_test {

inline constexpr std::size_t mib = std::size_t{1} << 20;

/// Trivially copyable: travels as its raw bytes.
template <std::size_t Bytes>
struct Raw {
  std::array<std::uint64_t, Bytes / 8> words;
};

/// Not trivially copyable (the string): travels through its cereal serialize().
template <std::size_t Bytes>
struct Cereal {
  std::array<std::uint64_t, Bytes / 8> words;
  std::string name;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(words, name);
  }
};

/// Travels through a multicore::Codec.
template <std::size_t Bytes>
struct Coded {
  std::array<std::uint64_t, Bytes / 8> words;
};

}  // namespace large_value_test

template <std::size_t Bytes>
struct multicore::Codec<large_value_test::Coded<Bytes>> {
  static void encode(Writer& out, const large_value_test::Coded<Bytes>& value) {
    out.write(value.words.data(), sizeof value.words);
  }
  static large_value_test::Coded<Bytes> decode(Reader& in) {
    large_value_test::Coded<Bytes> value;  // returned in place (NRVO): never on the stack
    in.read(value.words.data(), sizeof value.words);
    return value;
  }
};

namespace {

using large_value_test::Cereal;
using large_value_test::Coded;
using large_value_test::mib;
using large_value_test::Raw;
using multicore::Pool;
using multicore::PoolOptions;
using multicore::Task;

// Nothing here may hold a T on the stack: T is bigger than the stack. Results returned by value
// are built straight in heap memory (`new T(f())` elides the copy), and the functions the tasks
// run take their argument by reference and build their result in place (NRVO).

template <class T>
std::unique_ptr<T> input(std::uint64_t seed) {
  auto value = std::make_unique<T>();
  for (std::size_t i = 0; i < value->words.size(); ++i) value->words[i] = seed + i;
  if constexpr (requires { value->name; }) value->name = "input " + std::to_string(seed);
  return value;
}

template <class T>
T twice(const T& in) {
  T out;
  for (std::size_t i = 0; i < in.words.size(); ++i) out.words[i] = 2 * in.words[i] + 1;
  if constexpr (requires { out.name; }) out.name = in.name + " twice";
  return out;
}

/// Checks that `value` is twice(input<T>(seed)), without a copy.
template <class T>
void expect_twice(const T& value, std::uint64_t seed) {
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < value.words.size(); ++i)
    wrong += value.words[i] != 2 * (seed + i) + 1;
  EXPECT_EQ(wrong, 0u) << "of " << value.words.size() << " words";
  if constexpr (requires { value.name; }) {
    EXPECT_EQ(value.name, "input " + std::to_string(seed) + " twice");
  }
}

template <class T>
class LargeValue : public ::testing::Test {};

using LargeTypes = ::testing::Types<Raw<4 * mib>, Raw<16 * mib>, Cereal<4 * mib>, Cereal<16 * mib>,
                                    Coded<4 * mib>, Coded<16 * mib>>;

class TypeNames {
 public:
  template <class T>
  static std::string GetName(int index) {
    const char* const names[] = {"Raw4MiB",     "Raw16MiB",  "Cereal4MiB",
                                 "Cereal16MiB", "Coded4MiB", "Coded16MiB"};
    return names[index];
  }
};

TYPED_TEST_SUITE(LargeValue, LargeTypes, TypeNames);

PoolOptions pool_options(bool run_inline) { return {.workers = 1, .run_inline = run_inline}; }

TYPED_TEST(LargeValue, ThroughSubmit) {
  using T = TypeParam;
  for (bool run_inline : {false, true}) {
    Pool pool(pool_options(run_inline));
    const auto in = input<T>(run_inline ? 1 : 2);
    auto future = pool.submit(twice<T>, *in);
    std::unique_ptr<T> out(new T(future.get()));
    expect_twice(*out, run_inline ? 1 : 2);
  }
}

TYPED_TEST(LargeValue, ThroughCall) {
  using T = TypeParam;
  for (bool run_inline : {false, true}) {
    Pool pool(pool_options(run_inline));
    const auto in = input<T>(3);
    std::unique_ptr<T> out(new T(pool.call(twice<T>, *in)));
    expect_twice(*out, 3);
  }
}

double overloaded() { return 1e9; }

TYPED_TEST(LargeValue, ThroughTask) {
  using T = TypeParam;
  Pool pool(pool_options(false));
  auto& source = multicore::detail::load_average_source();
  const auto saved = source;
  source = &overloaded;  // a gated Task runs inline, in the caller
  for (double gate : {0.0, 1.0}) {
    Task<T> task(pool, {.max_load_average = gate});
    EXPECT_EQ(static_cast<bool>(task), gate == 0.0);
    const auto first = input<T>(4);
    const auto second = input<T>(5);
    task.run(twice<T>, *first);
    task.run(twice<T>, *second);
    const std::vector<T> results = task.get();
    ASSERT_EQ(results.size(), 2u);
    expect_twice(results[0], 4);
    expect_twice(results[1], 5);
  }
  source = saved;
}

/// The same kind of value as T, 8 times smaller under TSan. TSan checks a copy 8 bytes at a
/// time (and maps shadow memory for every new buffer), and this test copies 24 items about ten
/// times each: 90 s at 16 MiB. What TSan is here for, the threads that hand the values over,
/// does not depend on their size: 512 KiB and 2 MiB still cross the ring (1 MiB, in pieces of
/// 128 KiB) in many pieces and laps, and live on the heap. That they may be larger than any
/// stack, every other build shows.
template <class T>
struct MapSized;
template <template <std::size_t> class Kind, std::size_t Bytes>
struct MapSized<Kind<Bytes>> {
  using type = Kind<(MULTICORE_TEST_TSAN ? Bytes / 8 : Bytes)>;
};

TYPED_TEST(LargeValue, ThroughMapAsItemAndResult) {
  using T = typename MapSized<TypeParam>::type;
  for (bool run_inline : {false, true}) {
    Pool pool(pool_options(run_inline));
    std::vector<T> inputs(3);
    for (std::size_t k = 0; k < inputs.size(); ++k) inputs[k] = std::move(*input<T>(10 + k));
    for (unsigned threads : {1u, 2u}) {
      std::uint64_t seed = 10;
      for (const T& result : pool.map(twice<T>, inputs, {.threads_per_worker = threads})) {
        expect_twice(result, seed++);
      }
      EXPECT_EQ(seed, 13u);
      std::size_t seen = 0;
      for (const auto& [index, result] :
           pool.map_unordered(twice<T>, inputs, {.chunk_size = 3, .threads_per_worker = threads})) {
        expect_twice(result, 10 + index);
        ++seen;
      }
      EXPECT_EQ(seen, 3u);
    }
  }
}

// A std::vector of large raw elements is a raw sequence, sent as its message's tail.
TEST(LargeValue, VectorOfLargeElementsAsTail) {
  using T = Raw<4 * mib>;
  for (bool run_inline : {false, true}) {
    Pool pool(pool_options(run_inline));
    std::vector<T> inputs(3);
    for (std::size_t k = 0; k < inputs.size(); ++k) inputs[k] = *input<T>(20 + k);
    const auto each_twice = [](const std::vector<T>& in) {
      std::vector<T> out(in.size());
      for (std::size_t k = 0; k < in.size(); ++k) {
        for (std::size_t i = 0; i < in[k].words.size(); ++i) {
          out[k].words[i] = 2 * in[k].words[i] + 1;
        }
      }
      return out;
    };
    const std::vector<T> results = pool.submit(each_twice, inputs).get();
    ASSERT_EQ(results.size(), 3u);
    for (std::size_t k = 0; k < results.size(); ++k) expect_twice(results[k], 20 + k);
  }
}

// A lambda that captures a large value is a large callable: it crosses as its bytes and is
// made in place in the worker, and map keeps one copy of it, on the heap.
TEST(LargeValue, LambdaCapturingALargeValue) {
  using T = Raw<4 * mib>;
  const auto in = input<T>(30);
  // `new auto(lambda)` builds the closure, and its captured copy, in heap memory.
  auto* const raw = new auto([big = *in](std::size_t i) { return big.words[i]; });
  const std::unique_ptr<std::remove_pointer_t<decltype(raw)>> picks(raw);
  for (bool run_inline : {false, true}) {
    Pool pool(pool_options(run_inline));
    EXPECT_EQ(pool.submit(*picks, std::size_t{5}).get(), 35u);
    EXPECT_EQ(pool.call(*picks, std::size_t{6}), 36u);
    std::uint64_t expected = 30;
    for (std::uint64_t word : pool.map(*picks, std::vector<std::size_t>{0, 1, 2})) {
      EXPECT_EQ(word, expected++);
    }
  }
}

}  // namespace
