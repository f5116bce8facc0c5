// SPDX-License-Identifier: MIT
// The encoding rule (issue 9): Codec<T>, then the user's cereal functions, then raw bytes, then
// cereal; the same in both formats, inside containers and across a pool.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <complex>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <map>
#include <multicore/multicore.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"

namespace encoding {

// Which encoding ran is counted (in the process that ran it).
inline int cereal_calls = 0;
inline int codec_calls = 0;

inline void reset_counts() {
  cereal_calls = 0;
  codec_calls = 0;
}

// Trivially copyable types with each form of cereal function.
struct Member {
  int v = 0;
  template <class Archive>
  void serialize(Archive& archive) {
    ++cereal_calls;
    archive(v);
  }
  friend bool operator==(const Member&, const Member&) = default;
};

struct Free {
  int v = 0;
  friend bool operator==(const Free&, const Free&) = default;
};
template <class Archive>
void serialize(Archive& archive, Free& value) {
  ++cereal_calls;
  archive(value.v);
}

struct SaveLoad {
  int v = 0;
  template <class Archive>
  void save(Archive& archive) const {
    ++cereal_calls;
    archive(v);
  }
  template <class Archive>
  void load(Archive& archive) {
    ++cereal_calls;
    archive(v);
  }
  friend bool operator==(const SaveLoad&, const SaveLoad&) = default;
};

struct Minimal {
  int v = 0;
  friend bool operator==(const Minimal&, const Minimal&) = default;
};
template <class Archive>
int save_minimal(const Archive& /*archive*/, const Minimal& value) {
  ++cereal_calls;
  return value.v;
}
template <class Archive>
void load_minimal(const Archive& /*archive*/, Minimal& value, const int& v) {
  ++cereal_calls;
  value.v = v;
}

struct Versioned {
  int v = 0;
  template <class Archive>
  void serialize(Archive& archive, const std::uint32_t /*version*/) {
    ++cereal_calls;
    archive(v);
  }
  friend bool operator==(const Versioned&, const Versioned&) = default;
};

/// Has a Codec and cereal functions: the Codec wins.
struct Coded {
  int v = 0;
  template <class Archive>
  void serialize(Archive& archive) {
    ++cereal_calls;
    archive(v);
  }
  friend bool operator==(const Coded&, const Coded&) = default;
};

/// Has neither: raw bytes.
struct Plain {
  int v = 0;
  friend bool operator==(const Plain&, const Plain&) = default;
};

/// What a Sabotaging value's save() does (in the worker: the parent's copies save nothing).
enum class Sabotage : int { none, throw_error, exit, segfault };

/// Trivially copyable with a save() that misbehaves when asked to: the rule must call it.
struct Sabotaging {
  Sabotage sabotage = Sabotage::none;
  template <class Archive>
  void save(Archive& archive) const {
    switch (sabotage) {
      case Sabotage::throw_error:
        throw std::runtime_error("save refused");
      case Sabotage::exit:
        _exit(9);
      case Sabotage::segfault:
        multicore_test::default_segv_action();
        std::raise(SIGSEGV);
        break;
      case Sabotage::none:
        break;
    }
    archive(static_cast<int>(sabotage));
  }
  template <class Archive>
  void load(Archive& archive) {
    int s = 0;
    archive(s);
    sabotage = static_cast<Sabotage>(s);
  }
};

}  // namespace encoding

inline constexpr std::uint32_t coded_marker = 0xC0DEC0DE;

template <>
struct multicore::Codec<encoding::Coded> {
  static void encode(multicore::Writer& out, const encoding::Coded& value) {
    ++encoding::codec_calls;
    out.write(&coded_marker, sizeof coded_marker);
    out.write(&value.v, sizeof value.v);
  }
  static encoding::Coded decode(multicore::Reader& in) {
    ++encoding::codec_calls;
    std::uint32_t marker = 0;
    in.read(&marker, sizeof marker);
    if (marker != coded_marker) throw std::runtime_error("not a Coded");
    encoding::Coded value;
    in.read(&value.v, sizeof value.v);
    return value;
  }
};

namespace {

using encoding::cereal_calls;
using encoding::codec_calls;
using encoding::Coded;
using encoding::Plain;
using encoding::Sabotage;
using encoding::Sabotaging;
using multicore::Format;
using multicore::Pool;
using multicore::PoolOptions;
using multicore::Reader;
using multicore::SerializationError;
using multicore::WorkerLost;
using multicore::Writer;
using multicore::detail::decode;
using multicore::detail::encode;
using multicore::detail::type_name;
using multicore_test::error_of;

template <class V>
Writer encoded(const V& value, Format format) {
  Writer out;
  encode(out, value, format);
  return out;
}

template <class V>
V round_trip(const V& value, Format format) {
  const Writer bytes = encoded(value, format);
  Reader in(bytes.bytes());
  V out = decode<V>(in, format);
  EXPECT_EQ(in.remaining(), 0u) << type_name<V>();
  return out;
}

/// Calls check(value) for a T alone and inside each container the rule must reach into.
template <class T, class Check>
void alone_and_inside_containers(Check check) {
  check(T{7});
  check(std::vector<T>{T{1}, T{2}, T{3}});
  check(std::map<int, T>{{1, T{4}}, {2, T{5}}});
  check(std::optional<T>{T{6}});
  check(std::tuple<T, int>{T{8}, 9});
}

constexpr Format formats[] = {Format::binary, Format::json};

// ----- The rule, as the compiler decides it -------------------------------------------------

using multicore::detail::Encoding;
using multicore::detail::encoding_of;

template <class T, Encoding binary, Encoding json>
constexpr bool encoded_as() {
  return encoding_of<T>(Format::binary) == binary && encoding_of<T>(Format::json) == json;
}

static_assert(encoded_as<Coded, Encoding::codec, Encoding::codec>());
static_assert(encoded_as<encoding::Member, Encoding::user_cereal, Encoding::user_cereal>());
static_assert(encoded_as<encoding::Free, Encoding::user_cereal, Encoding::user_cereal>());
static_assert(encoded_as<encoding::SaveLoad, Encoding::user_cereal, Encoding::user_cereal>());
static_assert(encoded_as<encoding::Minimal, Encoding::user_cereal, Encoding::user_cereal>());
static_assert(encoded_as<encoding::Versioned, Encoding::user_cereal, Encoding::user_cereal>());
static_assert(encoded_as<Plain, Encoding::raw, Encoding::cereal>());
static_assert(encoded_as<int, Encoding::raw, Encoding::cereal>());
// cereal's own functions for standard trivially copyable types do not count...
static_assert(encoded_as<std::array<int, 3>, Encoding::raw, Encoding::cereal>());
static_assert(encoded_as<std::chrono::milliseconds, Encoding::raw, Encoding::cereal>());
static_assert(encoded_as<std::complex<double>, Encoding::raw, Encoding::cereal>());
static_assert(encoded_as<std::optional<Plain>, Encoding::raw, Encoding::cereal>());
// ...unless a type they are made of has a Codec or the user's functions.
static_assert(encoded_as<std::optional<encoding::Member>, Encoding::cereal, Encoding::cereal>());
static_assert(encoded_as<std::array<Coded, 2>, Encoding::cereal, Encoding::cereal>());
static_assert(encoded_as<std::vector<Plain>, Encoding::raw_sequence, Encoding::cereal>());
static_assert(encoded_as<std::string, Encoding::raw_sequence, Encoding::cereal>());
static_assert(encoded_as<std::vector<encoding::Member>, Encoding::cereal, Encoding::cereal>());
static_assert(encoded_as<std::vector<Coded>, Encoding::cereal, Encoding::cereal>());
static_assert(encoding_of<int*>(Format::binary) == Encoding::none);

// ----- The precedence table --------------------------------------------------------------------

template <class T>
class UserCerealFunctions : public ::testing::Test {};
using UserCerealTypes = ::testing::Types<encoding::Member, encoding::Free, encoding::SaveLoad,
                                         encoding::Minimal, encoding::Versioned>;
TYPED_TEST_SUITE(UserCerealFunctions, UserCerealTypes);

// Row 2: a trivially copyable type's own cereal functions are used, in both formats, alone
// and inside containers (Format::binary and std::vector used to send its bytes instead).
TYPED_TEST(UserCerealFunctions, AreUsedInBothFormatsAndInsideContainers) {
  for (const Format format : formats) {
    alone_and_inside_containers<TypeParam>([&](const auto& value) {
      encoding::reset_counts();
      EXPECT_EQ(round_trip(value, format), value);
      EXPECT_GT(cereal_calls, 0) << type_name<std::decay_t<decltype(value)>>() << " in "
                                 << (format == Format::json ? "json" : "binary");
      EXPECT_EQ(codec_calls, 0);
    });
  }
}

// Row 1: a Codec beats the type's cereal functions, also inside containers (where it used to
// be ignored) and in JSON (where an element's Codec bytes go as a base64 string).
TEST(EncodingRule, CodecWinsInBothFormatsAndInsideContainers) {
  for (const Format format : formats) {
    alone_and_inside_containers<Coded>([&](const auto& value) {
      encoding::reset_counts();
      EXPECT_EQ(round_trip(value, format), value);
      EXPECT_GT(codec_calls, 0) << type_name<std::decay_t<decltype(value)>>() << " in "
                                << (format == Format::json ? "json" : "binary");
      EXPECT_EQ(cereal_calls, 0) << type_name<std::decay_t<decltype(value)>>();
    });
  }
}

TEST(EncodingRule, CodecBytesAreWhatTheCodecWroteInsideAVector) {
  const Writer bytes = encoded(std::vector<Coded>{Coded{1}, Coded{2}}, Format::binary);
  std::size_t markers = 0;
  for (std::size_t i = 0; i + sizeof coded_marker <= bytes.size(); ++i) {
    markers += std::memcmp(bytes.data() + i, &coded_marker, sizeof coded_marker) == 0;
  }
  EXPECT_EQ(markers, 2u);
}

// Row 3: a trivially copyable type without functions is its bytes; a vector of them one count
// and one memcpy.
TEST(EncodingRule, PlainTriviallyCopyableValuesAreTheirBytes) {
  const Plain plain{42};
  const Writer one = encoded(plain, Format::binary);
  ASSERT_EQ(one.size(), sizeof(Plain));
  EXPECT_EQ(std::memcmp(one.data(), &plain, sizeof plain), 0);

  const std::vector<Plain> plains{Plain{1}, Plain{2}};
  const Writer many = encoded(plains, Format::binary);
  ASSERT_EQ(many.size(), sizeof(std::uint64_t) + 2 * sizeof(Plain));
  EXPECT_EQ(std::memcmp(many.data() + sizeof(std::uint64_t), plains.data(), 2 * sizeof(Plain)), 0);
  alone_and_inside_containers<Plain>(
      [](const auto& value) { EXPECT_EQ(round_trip(value, Format::binary), value); });

  // A vector of them inside a cereal value: one count, then their bytes (one copy).
  const std::map<int, std::vector<Plain>> nested{{1, plains}};
  const Writer framed = encoded(nested, Format::binary);
  const std::byte* end = framed.data() + framed.size();
  EXPECT_EQ(std::memcmp(end - 2 * sizeof(Plain), plains.data(), 2 * sizeof(Plain)), 0);
  EXPECT_EQ(round_trip(nested, Format::binary), nested);
}

TEST(EncodingRule, RejectsAVectorOfRawValuesClaimingMoreThanItsBytesInsideACerealValue) {
  Writer bytes = encoded(std::map<int, std::vector<Plain>>{{1, {Plain{1}}}}, Format::binary);
  // The vector's count is the u64 before its one element; claim a billion elements.
  const std::uint64_t huge = 1'000'000'000;
  std::memcpy(bytes.data() + bytes.size() - sizeof(Plain) - sizeof huge, &huge, sizeof huge);
  Reader in(bytes.bytes());
  const auto error = multicore_test::thrown_exactly<SerializationError>(
      [&] { (void)decode<std::map<int, std::vector<Plain>>>(in, Format::binary); });
  ASSERT_TRUE(error);
  EXPECT_NE(std::string(error->what()).find("claims"), std::string::npos) << error->what();
}

// ----- Across a pool ---------------------------------------------------------------------------

int cereal_calls_seen(const encoding::Member& /*argument*/) { return cereal_calls; }
encoding::Member member_of(int v) { return {v}; }
Sabotaging sabotaged(Sabotage sabotage) { return {sabotage}; }

TEST(EncodingRule, PoolUsesTheUserFunctionsForArgumentsResultsAndMapItems) {
  encoding::reset_counts();
  Pool pool(PoolOptions{.workers = 1});
  // The worker decoded the argument with serialize(), so its count is at least 1.
  EXPECT_GT(pool.submit(cereal_calls_seen, encoding::Member{1}).get(), 0);
  EXPECT_EQ(pool.submit(member_of, 5).get(), encoding::Member{5});
  EXPECT_GT(cereal_calls, 0);  // the parent decoded the result with serialize()
  const std::vector<encoding::Member> items{{1}, {2}, {3}};
  for (const int seen : pool.map(cereal_calls_seen, items)) EXPECT_GT(seen, 0);
}

TEST(EncodingRule, UserSaveThatThrowsInTheWorkerIsASerializationError) {
  Pool pool(PoolOptions{.workers = 1});
  auto result = pool.submit(sabotaged, Sabotage::throw_error);
  const auto error = error_of<SerializationError>(result);
  ASSERT_TRUE(error);
  EXPECT_NE(std::string(error->what()).find("save refused"), std::string::npos) << error->what();
  EXPECT_EQ(pool.submit(sabotaged, Sabotage::none).get().sabotage, Sabotage::none);
}

TEST(EncodingRule, UserSaveThatExitsOrCrashesInTheWorkerCostsOnlyItsWorker) {
  multicore_test::no_core_dump();
  Pool pool(PoolOptions{.workers = 1});
  auto exited = pool.submit(sabotaged, Sabotage::exit);
  const auto exit_error = error_of<WorkerLost>(exited);
  ASSERT_TRUE(exit_error);
  EXPECT_EQ(exit_error->exit_code(), 9);
  auto crashed = pool.submit(sabotaged, Sabotage::segfault);
  const auto crash_error = error_of<WorkerLost>(crashed);
  ASSERT_TRUE(crash_error);
  EXPECT_EQ(crash_error->signal(), SIGSEGV);
  EXPECT_EQ(pool.submit(sabotaged, Sabotage::none).get().sabotage, Sabotage::none);
  EXPECT_EQ(pool.size(), 1u);
}

}  // namespace
