// SPDX-License-Identifier: MIT
// Tests for the serialization layer: Writer/Reader, encode/decode in both formats, corrupt input.
#include <gtest/gtest.h>

#include <array>
#include <bitset>
#include <chrono>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <deque>
#include <forward_list>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <multicore/codec.hpp>
#include <multicore/detail/serialize/json.hpp>
#include <multicore/detail/serialize/serialize.hpp>
#include <multicore/detail/util/demangle.hpp>
#include <multicore/errors.hpp>
#include <multicore/options.hpp>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <valarray>
#include <variant>
#include <vector>

#include "support/person.hpp"

namespace {

using multicore::Format;
using multicore::Reader;
using multicore::SerializationError;
using multicore::Writer;
using multicore::detail::decode;
using multicore::detail::encode;

// ----- Test types ------------------------------------------------------------------------------

struct Point {
  int x;
  double y;
  friend bool operator==(const Point&, const Point&) = default;
};

// Trivially copyable but not default-constructible: decoded through std::bit_cast.
class Meters {
 public:
  explicit Meters(double value) : value_(value) {}
  double value() const { return value_; }
  friend bool operator==(const Meters&, const Meters&) = default;

 private:
  double value_;
};

// A user type with separate non-member save() and load().
struct Account {
  std::string id;
  long long cents = 0;
  friend bool operator==(const Account&, const Account&) = default;
};
template <class Archive>
void save(Archive& archive, const Account& account) {
  archive(cereal::make_nvp("id", account.id), cereal::make_nvp("cents", account.cents));
}
template <class Archive>
void load(Archive& archive, Account& account) {
  archive(cereal::make_nvp("id", account.id), cereal::make_nvp("cents", account.cents));
}

// Trivially copyable, with a Codec: the Codec must win over the raw encoding.
struct Celsius {
  std::int32_t tenths;
  friend bool operator==(const Celsius&, const Celsius&) = default;
};

// Its Codec throws while encoding a negative value and while decoding a zero.
struct Fragile {
  int value;
};

// A recursive type, to check nesting limits.
struct Node {
  std::unique_ptr<Node> next;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(next);
  }
};

// A cereal type whose serialize() throws on save when asked to.
struct Throwing {
  bool fail = false;
  std::vector<int> values;
  template <class Archive>
  void save(Archive& archive) const {
    archive(values);
    if (fail) throw std::runtime_error("refusing to save");
    archive(fail);
  }
  template <class Archive>
  void load(Archive& archive) {
    archive(values, fail);
  }
};

struct NotSendable {
  std::unique_ptr<int> owned;  // not trivially copyable, no serialize()
};

}  // namespace

template <>
struct multicore::Codec<Celsius> {
  static constexpr std::byte tag{0xC5};
  static void encode(Writer& out, const Celsius& value) {
    out.write(&tag, 1);
    const auto tenths = static_cast<std::int16_t>(value.tenths);
    out.write(&tenths, sizeof tenths);
  }
  static Celsius decode(Reader& in) {
    std::byte read_tag{};
    in.read(&read_tag, 1);
    if (read_tag != tag) throw std::runtime_error("bad Celsius tag");
    std::int16_t tenths = 0;
    in.read(&tenths, sizeof tenths);
    return Celsius{tenths};
  }
};

template <>
struct multicore::Codec<Fragile> {
  static void encode(Writer& out, const Fragile& value) {
    out.write(&value.value, sizeof value.value);
    if (value.value < 0) throw std::invalid_argument("negative values are not allowed");
  }
  static Fragile decode(Reader& in) {
    Fragile value{};
    in.read(&value.value, sizeof value.value);
    if (value.value == 0) throw std::domain_error("zero is not a Fragile");
    return value;
  }
};

namespace {

// ----- Compile-time classification -------------------------------------------------------------

namespace d = multicore::detail;

static_assert(d::raw_value<int> && d::raw_value<Point> && d::raw_value<Meters>);
static_assert(d::raw_value<int (*)(int)>, "function pointers are valid in a fork");
static_assert(!d::raw_value<int*> && !d::raw_value<const char*> && !d::raw_value<std::nullptr_t>);
static_assert(!d::raw_value<int Point::*> && !d::raw_value<std::string_view>);
static_assert(!d::raw_value<std::span<int>> && !d::raw_value<std::span<const int, 3>>);
static_assert(d::raw_sequence<std::vector<int>> && d::raw_sequence<std::string>);
static_assert(d::raw_sequence<std::vector<Meters>> && d::raw_sequence<std::u32string>);
static_assert(!d::raw_sequence<std::vector<bool>> && !d::raw_sequence<std::vector<std::string>>);
static_assert(d::has_codec<Celsius> && !d::has_codec<Point> && !d::has_codec<int>);
static_assert(d::cereal_value<Person> && d::json_value<Person> && d::json_value<Account>);
static_assert(d::cereal_value<Point>, "inside cereal values it rides as raw bytes");
static_assert(!d::json_value<Point>);
static_assert(d::sendable<std::map<std::string, std::vector<std::pair<int, std::string>>>>);
static_assert(d::sendable<std::optional<std::string>> && d::sendable<std::unique_ptr<Person>>);
static_assert(!d::sendable<int*> && !d::sendable<std::string_view> && !d::sendable<NotSendable>);
static_assert(!d::sendable<std::function<int(int)>>);
static_assert(!d::sendable<std::vector<int*>> && !d::sendable<std::vector<NotSendable>>);
static_assert(!d::sendable<std::map<std::string, std::optional<std::string_view>>>);
static_assert(d::sendable<std::map<std::string, Point>> && !d::json_value<std::map<int, Point>>);
static_assert(d::cereal_value<std::vector<std::u16string>>);
static_assert(!d::json_value<std::u16string> && !d::json_value<std::vector<std::u16string>>);
static_assert(!d::sendable<std::vector<std::vector<Meters>>>, "cereal needs a default constructor");

inline constexpr auto captureless = [](int value) { return value * 2; };
inline constexpr auto capture_int = [factor = 3](int value) { return value * factor; };
static_assert(d::sendable_callable<int (*)(int)>);
static_assert(d::sendable_callable<std::decay_t<decltype(captureless)>>);
static_assert(d::sendable_callable<std::decay_t<decltype(capture_int)>>);
static_assert(!d::sendable_callable<std::function<int(int)>>);

// The checks themselves compile for good types (failing cases live in compile_fail/).
constexpr bool checks_accept_good_types() {
  d::check_argument<1, int>();
  d::check_argument<2, std::string>();
  d::check_argument<3, Person>();
  d::check_argument<4, Celsius>();
  d::check_result<void>();
  d::check_result<std::vector<Person>>();
  d::check_result<const std::string>();
  d::check_callable<int (*)(int)>();
  d::check_callable<std::decay_t<decltype(capture_int)>>();
  return true;
}
static_assert(checks_accept_good_types());

// ----- Helpers ---------------------------------------------------------------------------------

constexpr std::array<Format, 2> both_formats{Format::binary, Format::json};

const char* name(Format format) { return format == Format::json ? "json" : "binary"; }

template <class T>
Writer encoded(const T& value, Format format) {
  Writer out;
  encode(out, value, format);
  return out;
}

template <class T>
T round_trip(const T& value, Format format) {
  const Writer out = encoded(value, format);
  Reader in(out.bytes());
  T result = decode<T>(in, format);
  EXPECT_EQ(in.remaining(), 0u) << "decode must consume exactly what encode wrote";
  return result;
}

std::uint64_t read_u64(std::span<const std::byte> bytes, std::size_t at = 0) {
  std::uint64_t value = 0;
  std::memcpy(&value, bytes.data() + at, sizeof value);
  return value;
}

void write_u64(std::span<std::byte> bytes, std::uint64_t value, std::size_t at = 0) {
  std::memcpy(bytes.data() + at, &value, sizeof value);
}

std::vector<std::byte> as_bytes(std::string_view text) {
  std::vector<std::byte> bytes(text.size());
  if (!text.empty()) std::memcpy(bytes.data(), text.data(), text.size());
  return bytes;
}

// A cereal frame ([u64 length][payload]) around `payload`.
std::vector<std::byte> framed(std::span<const std::byte> payload) {
  std::vector<std::byte> bytes(sizeof(std::uint64_t) + payload.size());
  write_u64(bytes, payload.size());
  if (!payload.empty()) std::memcpy(bytes.data() + 8, payload.data(), payload.size());
  return bytes;
}

// Decodes `bytes` as T, expecting SerializationError; returns its message.
template <class T>
std::string decode_error(std::span<const std::byte> bytes, Format format) {
  Reader in(bytes);
  try {
    (void)decode<T>(in, format);
  } catch (const SerializationError& error) {
    return error.what();
  } catch (const std::exception& error) {
    ADD_FAILURE() << "expected SerializationError, got "
                  << multicore::detail::demangle(typeid(error).name()) << ": " << error.what();
    return {};
  }
  ADD_FAILURE() << "decoding " << bytes.size() << " bytes as " << multicore::detail::type_name<T>()
                << " (" << name(format) << ") unexpectedly succeeded";
  return {};
}

// ----- Writer and Reader -----------------------------------------------------------------------

TEST(Writer, ClearWithLimitReleasesOnlyLargeBuffers) {
  Writer small;
  small.write("abc", 3);
  const std::size_t kept = small.capacity();
  small.clear(1024);
  EXPECT_EQ(small.size(), 0u);
  EXPECT_EQ(small.capacity(), kept);  // under the limit: warm for the next use
  Writer large;
  large.resize(4096);
  large.clear(1024);
  EXPECT_EQ(large.size(), 0u);
  EXPECT_EQ(large.capacity(), 0u);  // over the limit: the memory went back
  large.write("xy", 2);             // and it is still usable
  EXPECT_EQ(large.size(), 2u);
}

TEST(Writer, AppendsAndGrowsKeepingEarlierBytes) {
  Writer out;
  EXPECT_EQ(out.size(), 0u);
  EXPECT_TRUE(out.bytes().empty());
  out.write(nullptr, 0);
  EXPECT_EQ(out.size(), 0u);
  for (std::uint32_t i = 0; i < 10000; ++i) out.write(&i, sizeof i);
  ASSERT_EQ(out.size(), 40000u);
  EXPECT_GE(out.capacity(), out.size());
  for (std::uint32_t i = 0; i < 10000; ++i) {
    std::uint32_t value = 0;
    std::memcpy(&value, out.data() + i * sizeof value, sizeof value);
    ASSERT_EQ(value, i);
  }
}

TEST(Writer, ExtendHandsOutBytesAtTheEnd) {
  Writer out;
  out.write("ab", 2);
  std::byte* tail = out.extend(3);
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(tail, out.data() + 2);
  std::memcpy(tail, "cde", 3);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(out.data()), out.size()), "abcde");
}

TEST(Writer, ClearKeepsCapacityAndResizeShrinksOrGrows) {
  Writer out;
  out.reserve(1000);
  const std::byte* buffer = out.data();
  EXPECT_GE(out.capacity(), 1000u);
  out.write("hello", 5);
  out.clear();
  EXPECT_EQ(out.size(), 0u);
  EXPECT_EQ(out.data(), buffer);
  out.write("hello", 5);
  out.resize(2);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(out.data()), out.size()), "he");
  out.resize(900);
  EXPECT_EQ(out.size(), 900u);
  EXPECT_EQ(out.data(), buffer) << "growing within capacity must not reallocate";
  EXPECT_EQ(std::memcmp(out.data(), "he", 2), 0);
}

TEST(Writer, MoveTransfersTheBuffer) {
  Writer out;
  out.write("xyz", 3);
  Writer moved(std::move(out));
  EXPECT_EQ(moved.size(), 3u);
  EXPECT_EQ(out.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_EQ(out.capacity(), 0u);
  Writer assigned;
  assigned = std::move(moved);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(assigned.data()), assigned.size()), "xyz");
  out.write("again", 5);  // a moved-from Writer is usable
  EXPECT_EQ(out.size(), 5u);
}

TEST(Writer, RejectsSizesThatOverflow) {
  Writer out;
  out.write("a", 1);
  EXPECT_THROW(out.extend(std::numeric_limits<std::size_t>::max()), std::length_error);
  EXPECT_EQ(out.size(), 1u);
}

TEST(Reader, ReadsFrontToBackAndRefusesToOverrun) {
  const auto bytes = as_bytes("abcdef");
  Reader in(bytes);
  char two[2] = {};
  in.read(two, 2);
  EXPECT_EQ(std::string(two, 2), "ab");
  EXPECT_EQ(in.position(), 2u);
  EXPECT_EQ(in.remaining(), 4u);
  const auto view = in.take(3);
  EXPECT_EQ(view.data(), bytes.data() + 2) << "take() must not copy";
  try {
    in.take(5);
    FAIL() << "take(5) with 1 byte left succeeded";
  } catch (const SerializationError& error) {
    EXPECT_STREQ(error.what(), "multicore: truncated data: needed 5 bytes, 1 left");
  }
  EXPECT_EQ(in.position(), 5u) << "a failed read must not move the position";
  in.read(nullptr, 0);
  in.read(two, 1);
  EXPECT_EQ(two[0], 'f');
  EXPECT_THROW(in.read(two, 1), SerializationError);
}

// ----- Round trips -----------------------------------------------------------------------------

TEST(Codec, RoundTripsArithmeticValues) {
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    EXPECT_EQ(round_trip(0, format), 0);
    EXPECT_EQ(round_trip(-123456789, format), -123456789);
    EXPECT_EQ(round_trip(std::numeric_limits<std::int64_t>::min(), format),
              std::numeric_limits<std::int64_t>::min());
    EXPECT_EQ(round_trip(std::numeric_limits<std::uint64_t>::max(), format),
              std::numeric_limits<std::uint64_t>::max());
    EXPECT_EQ(round_trip('x', format), 'x');
    EXPECT_EQ(round_trip(true, format), true);
    for (const double value :
         {0.1, 1.0 / 3.0, -2.5e-300, 6.02214076e23, std::numeric_limits<double>::max(),
          std::numeric_limits<double>::denorm_min()}) {
      EXPECT_EQ(round_trip(value, format), value);
    }
    EXPECT_EQ(round_trip(1.5f, format), 1.5f);
  }
}

TEST(Codec, SendsTriviallyCopyableValuesAsTheirBytes) {
  const Point point{7, -0.25};
  const Writer out = encoded(point, Format::binary);
  ASSERT_EQ(out.size(), sizeof(Point));
  Point copy{};
  std::memcpy(&copy, out.data(), sizeof copy);
  EXPECT_EQ(copy, point);
  EXPECT_EQ(round_trip(point, Format::binary), point);
  const std::array<Point, 3> points{{{1, 1.5}, {2, 2.5}, {3, 3.5}}};
  EXPECT_EQ(round_trip(points, Format::binary), points);
}

TEST(Codec, RoundTripsTypesWithoutDefaultConstructor) {
  EXPECT_EQ(round_trip(Meters(42.5), Format::binary), Meters(42.5));
  const std::vector<Meters> distances{Meters(1), Meters(-2), Meters(1e9)};
  EXPECT_EQ(round_trip(distances, Format::binary), distances);
}

TEST(Codec, SendsTrivialClosuresAndFunctionPointers) {
  const auto closure = capture_int;
  const auto copy = round_trip(closure, Format::binary);
  EXPECT_EQ(copy(5), 15);
  int (*function)(int) = +captureless;
  EXPECT_EQ(round_trip(function, Format::binary)(21), 42);
}

TEST(Codec, RoundTripsVectorsOfInt) {
  const std::vector<int> values{1, -2, 3, std::numeric_limits<int>::max()};
  const std::vector<int> empty;
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    EXPECT_EQ(round_trip(values, format), values);
    EXPECT_EQ(round_trip(empty, format), empty);
  }
  // Binary layout of a raw sequence: u64 count, then the elements.
  const Writer out = encoded(values, Format::binary);
  ASSERT_EQ(out.size(), 8 + values.size() * sizeof(int));
  EXPECT_EQ(read_u64(out.bytes()), values.size());
  EXPECT_EQ(std::memcmp(out.data() + 8, values.data(), values.size() * sizeof(int)), 0);
}

// A sequence is decoded straight from the received bytes when they happen to be aligned for its
// elements, element by element otherwise: both ways must give the same values. A leading run of
// chars shifts the sequence to every offset.
TEST(Codec, DecodesSequencesAtAnyAlignment) {
  const std::vector<double> doubles{1.5, -2.25, 1e300, 0.0};
  const std::vector<Meters> distances{Meters(1), Meters(-2), Meters(3)};
  const std::u32string text = U"multicore";
  for (std::size_t shift = 0; shift < alignof(double); ++shift) {
    SCOPED_TRACE(shift);
    Writer out;
    for (std::size_t i = 0; i < shift; ++i) encode(out, 'x', Format::binary);
    encode(out, doubles, Format::binary);
    encode(out, distances, Format::binary);
    encode(out, text, Format::binary);
    Reader in(out.bytes());
    for (std::size_t i = 0; i < shift; ++i) EXPECT_EQ(decode<char>(in, Format::binary), 'x');
    EXPECT_EQ(decode<std::vector<double>>(in, Format::binary), doubles);
    EXPECT_EQ(decode<std::vector<Meters>>(in, Format::binary), distances);
    EXPECT_EQ(decode<std::u32string>(in, Format::binary), text);
    EXPECT_EQ(in.remaining(), 0u);
  }
}

// A sequence arriving in pieces (a ring hands out any length at any address): every piece
// length from 1 to 3 elements and a bit, at every misalignment, so elements split between
// pieces and land unaligned.
template <class Sequence>
void expect_built_from_any_pieces(const Sequence& expected) {
  using E = typename Sequence::value_type;
  const std::size_t bytes = expected.size() * sizeof(E);
  for (std::size_t shift = 0; shift < alignof(std::max_align_t); ++shift) {
    std::vector<std::byte> source(shift + bytes);
    std::memcpy(source.data() + shift, expected.data(), bytes);
    const std::span<const std::byte> all = std::span<const std::byte>(source).subspan(shift);
    for (std::size_t piece = 1; piece <= 3 * sizeof(E) + 1; ++piece) {
      SCOPED_TRACE("shift " + std::to_string(shift) + ", piece " + std::to_string(piece));
      multicore::detail::SequenceBuilder<Sequence> builder(expected.size());
      for (std::size_t at = 0; at < bytes; at += piece) {
        builder.append(all.subspan(at, std::min(piece, bytes - at)));
      }
      EXPECT_EQ(builder.left(), 0u);
      EXPECT_TRUE(builder.take() == expected);
    }
  }
}

TEST(Codec, BuildsSequencesFromPiecesOfAnySizeAndAlignment) {
  expect_built_from_any_pieces(std::vector<double>{1.5, -2.25, 1e300, 0.0, 7.0, -0.5, 3.25});
  expect_built_from_any_pieces(std::vector<Meters>{Meters(1), Meters(-2), Meters(3), Meters(4)});
  expect_built_from_any_pieces(std::u32string(U"pieces of text"));
  expect_built_from_any_pieces(std::string("chars need no alignment"));
  // Longer than the 4 KiB bounce buffer used for misaligned pieces.
  std::vector<std::uint64_t> long_one(1500);
  for (std::size_t i = 0; i < long_one.size(); ++i) long_one[i] = i * 0x9E3779B97F4A7C15u;
  multicore::detail::SequenceBuilder<std::vector<std::uint64_t>> builder(long_one.size());
  std::vector<std::byte> source(1 + long_one.size() * sizeof(std::uint64_t));
  std::memcpy(source.data() + 1, long_one.data(), source.size() - 1);
  builder.append(std::span<const std::byte>(source).subspan(1));
  EXPECT_TRUE(builder.take() == long_one);
}

// A count from another process is not trusted with memory before its bytes arrive (a broken
// worker's 57-byte answer once made the parent reserve 4 GiB): the builder reserves a bounded
// amount and grows as the bytes come.
TEST(Codec, SequenceBuilderReservesOnlyWhatArrivingBytesJustify) {
  const std::size_t claimed = std::size_t{1} << 40;  // 4 TiB of ints: no machine has that
  multicore::detail::SequenceBuilder<std::vector<int>> lying(claimed, std::size_t{64} << 10);
  const int some[3] = {1, 2, 3};
  lying.append(std::as_bytes(std::span(some)));
  EXPECT_EQ(lying.left(), claimed * sizeof(int) - sizeof some);

  std::vector<std::uint64_t> expected(5000);
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = i * 0x9E3779B97F4A7C15u;
  multicore::detail::SequenceBuilder<std::vector<std::uint64_t>> growing(expected.size(), 16);
  const auto bytes = std::as_bytes(std::span(expected));
  for (std::size_t at = 0; at < bytes.size(); at += 7) {
    growing.append(bytes.subspan(at, std::min<std::size_t>(7, bytes.size() - at)));
  }
  EXPECT_TRUE(growing.take() == expected);
}

TEST(Codec, RoundTripsOneMebibyteOfChars) {
  std::vector<char> big(std::size_t{1} << 20);
  std::mt19937 random(7);
  for (char& c : big) c = static_cast<char>(random());
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    EXPECT_EQ(round_trip(big, format), big);
  }
  EXPECT_EQ(encoded(big, Format::binary).size(), 8 + big.size());
}

TEST(Codec, RoundTripsStringsWithEmbeddedNuls) {
  const std::string with_nuls("a\0b\0\0c", 6);
  ASSERT_EQ(with_nuls.size(), 6u);
  EXPECT_EQ(round_trip(with_nuls, Format::binary), with_nuls);
  EXPECT_EQ(round_trip(std::string(), Format::binary), "");
  EXPECT_EQ(round_trip(std::u16string(u"h\0i", 3), Format::binary), std::u16string(u"h\0i", 3));
  EXPECT_EQ(round_trip(std::string("plain \"quoted\" \\ text\n\t\x01"), Format::json),
            "plain \"quoted\" \\ text\n\t\x01");
  EXPECT_EQ(round_trip(std::string(), Format::json), "");
}

TEST(Codec, RefusesJsonStringsWithEmbeddedNulsInsteadOfTruncating) {
  // cereal's JSON reader would stop at the NUL; refusing is better than losing data silently.
  Writer out;
  try {
    encode(out, std::string("a\0b", 3), Format::json);
    FAIL() << "encoding a string with a NUL as JSON succeeded";
  } catch (const SerializationError& error) {
    EXPECT_NE(std::string(error.what()).find("NUL"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("std::string"), std::string::npos) << error.what();
  }
  EXPECT_EQ(out.size(), 0u) << "a failed encode must leave the Writer as it was";
  const auto bytes = framed(as_bytes(R"({"value":"a\u0000b"})"));
  EXPECT_NE(decode_error<std::string>(bytes, Format::json).find("NUL"), std::string::npos);
}

TEST(Codec, RoundTripsNestedContainers) {
  const std::map<std::string, std::vector<std::pair<int, std::string>>> nested{
      {"", {}},
      {"one", {{1, "uno"}}},
      {"many", {{2, "dos"}, {3, std::string(300, 'z')}, {-4, ""}}},
  };
  const std::vector<std::vector<std::string>> grid{{"a", "b"}, {}, {"c"}};
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    EXPECT_EQ(round_trip(nested, format), nested);
    EXPECT_EQ(round_trip(grid, format), grid);
  }
}

TEST(Codec, RoundTripsOptional) {
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    EXPECT_EQ(round_trip(std::optional<std::string>("here"), format), "here");
    EXPECT_EQ(round_trip(std::optional<std::string>(), format), std::nullopt);
    EXPECT_EQ(round_trip(std::optional<int>(5), format), 5);
    EXPECT_EQ(round_trip(std::optional<int>(), format), std::nullopt);
  }
}

TEST(Codec, RoundTripsVariant) {
  using Value = std::variant<int, std::string, std::vector<double>>;
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    for (const Value& value : {Value(17), Value("text"), Value(std::vector<double>{0.5, -1})}) {
      const Value copy = round_trip(value, format);
      EXPECT_EQ(copy.index(), value.index());
      EXPECT_EQ(copy, value);
    }
  }
}

TEST(Codec, RoundTripsTuplesAndPairs) {
  const std::tuple<int, std::string, double> tuple{-1, "mid", 2.75};
  const std::pair<std::string, std::vector<int>> pair{"key", {9, 8}};
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    EXPECT_EQ(round_trip(tuple, format), tuple);
    EXPECT_EQ(round_trip(pair, format), pair);
  }
}

TEST(Codec, RoundTripsSmartPointers) {
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    const auto owned = round_trip(std::make_unique<std::string>("owned"), format);
    ASSERT_NE(owned, nullptr);
    EXPECT_EQ(*owned, "owned");
    EXPECT_EQ(round_trip(std::unique_ptr<Person>(), format), nullptr);

    // Two shared_ptrs to one object come back as two shared_ptrs to one object.
    const auto shared = std::make_shared<int>(11);
    const auto copy = round_trip(std::make_pair(shared, shared), format);
    ASSERT_NE(copy.first, nullptr);
    EXPECT_EQ(*copy.first, 11);
    EXPECT_EQ(copy.first, copy.second);
  }
}

TEST(Codec, RoundTripsOtherStandardTypes) {
  const std::deque<int> deque{1, 2, 3};
  const std::list<std::string> list{"x", "y"};
  const std::forward_list<double> forward{0.5, 1.5};
  const std::set<std::string> set{"b", "a"};
  const std::unordered_map<std::string, int> hash_map{{"k", 1}, {"l", 2}};
  const std::unordered_set<int> hash_set{4, 5, 6};
  const std::array<std::string, 2> strings{"first", "second"};
  const std::chrono::milliseconds duration{1234};
  const std::complex<double> complex{1.5, -2};
  const std::bitset<70> bits = std::bitset<70>(0xF0F0) << 60;
  const std::vector<bool> flags{true, false, true, true};
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    EXPECT_EQ(round_trip(deque, format), deque);
    EXPECT_EQ(round_trip(list, format), list);
    EXPECT_EQ(round_trip(forward, format), forward);
    EXPECT_EQ(round_trip(set, format), set);
    EXPECT_EQ(round_trip(hash_map, format), hash_map);
    EXPECT_EQ(round_trip(hash_set, format), hash_set);
    EXPECT_EQ(round_trip(strings, format), strings);
    EXPECT_EQ(round_trip(duration, format), duration);
    EXPECT_EQ(round_trip(complex, format), complex);
    EXPECT_EQ(round_trip(bits, format), bits);
    EXPECT_EQ(round_trip(flags, format), flags);
    const std::valarray<double> valarray{1.0, 2.0, 4.0};
    const std::valarray<double> valarray_copy = round_trip(valarray, format);
    ASSERT_EQ(valarray_copy.size(), 3u);
    EXPECT_EQ(valarray_copy[2], 4.0);
    EXPECT_EQ(round_trip(std::valarray<int>(), format).size(), 0u);
  }
}

TEST(Codec, SendsTriviallyCopyableTypesInsideContainersAsBytes) {
  const std::map<std::string, Point> points{{"origin", {0, 0}}, {"far", {1000000, -1e300}}};
  EXPECT_EQ(round_trip(points, Format::binary), points);
  const std::optional<std::pair<Point, std::string>> pair{{{1, 2}, "two"}};
  EXPECT_EQ(round_trip(pair, Format::binary), pair);
  // Inside a cereal value (a std::list is not a raw sequence) a Point takes sizeof(Point) bytes.
  const Writer one = encoded(std::list<Point>{{1, 1}}, Format::binary);
  const Writer two = encoded(std::list<Point>{{1, 1}, {2, 2}}, Format::binary);
  EXPECT_EQ(two.size() - one.size(), sizeof(Point));
  EXPECT_EQ(round_trip(std::list<Point>{{1, 1}, {2, 2}}, Format::binary),
            (std::list<Point>{{1, 1}, {2, 2}}));
}

TEST(Codec, RoundTripsUserTypesWithCerealFunctions) {
  const Person person{"Ada", 36, {"math", "engines"}};
  const Account account{"acc-1", -5000};
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    EXPECT_EQ(round_trip(person, format), person);
    EXPECT_EQ(round_trip(account, format), account);
    EXPECT_EQ(round_trip(std::vector<Person>{person, Person{}}, format),
              (std::vector<Person>{person, Person{}}));
  }
  // JSON output is one readable document with the member names.
  const Writer out = encoded(person, Format::json);
  const std::string text(reinterpret_cast<const char*>(out.data()) + 8, out.size() - 8);
  EXPECT_EQ(read_u64(out.bytes()), text.size());
  EXPECT_NE(text.find("\"name\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"Ada\""), std::string::npos) << text;
  EXPECT_EQ(text.front(), '{');
  EXPECT_EQ(text.back(), '}');
}

TEST(Codec, PrefersCodecOverRawBytes) {
  static_assert(std::is_trivially_copyable_v<Celsius>);
  const Celsius value{-273};
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    const Writer out = encoded(value, format);
    ASSERT_EQ(out.size(), 3u) << "expected the Codec's 3 bytes, not sizeof(Celsius) raw bytes";
    EXPECT_EQ(out.data()[0], std::byte{0xC5});
    EXPECT_EQ(round_trip(value, format), value);
  }
  // decode goes through the Codec too: the raw bytes of a Celsius are rejected by it.
  Writer raw;
  raw.write(&value, sizeof value);
  EXPECT_NE(decode_error<Celsius>(raw.bytes(), Format::binary).find("bad Celsius tag"),
            std::string::npos);
}

TEST(Codec, DecodesSeveralValuesFromOneBuffer) {
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    Writer out;
    encode(out, 42, format);
    encode(out, std::string("two"), format);
    encode(out, Celsius{5}, format);
    encode(out, Person{"P", 1, {}}, format);
    Reader in(out.bytes());
    EXPECT_EQ(decode<int>(in, format), 42);
    EXPECT_EQ(decode<std::string>(in, format), "two");
    EXPECT_EQ(decode<Celsius>(in, format), Celsius{5});
    EXPECT_EQ(decode<Person>(in, format), (Person{"P", 1, {}}));
    EXPECT_EQ(in.remaining(), 0u);
  }
}

// ----- Failures --------------------------------------------------------------------------------

TEST(Codec, JsonNeedsSerializeForTriviallyCopyableTypes) {
  Writer out;
  out.write("keep", 4);
  try {
    encode(out, Point{1, 2}, Format::json);
    FAIL() << "Point was encoded as JSON without a serialize() function";
  } catch (const SerializationError& error) {
    const std::string what = error.what();
    EXPECT_NE(what.find("serialize"), std::string::npos) << what;
    EXPECT_NE(what.find("Point"), std::string::npos) << what;
    EXPECT_NE(what.find("could not encode"), std::string::npos) << what;
  }
  EXPECT_EQ(out.size(), 4u) << "a failed encode must leave the Writer as it was";
  const std::string what = decode_error<Point>(framed(as_bytes("{}")), Format::json);
  EXPECT_NE(what.find("serialize"), std::string::npos) << what;
  EXPECT_NE(what.find("could not decode Point"), std::string::npos) << what;
}

TEST(Codec, ThrowingCodecGivesSerializationError) {
  Writer out;
  try {
    encode(out, Fragile{-1}, Format::binary);
    FAIL() << "the Codec's exception was swallowed";
  } catch (const SerializationError& error) {
    EXPECT_STREQ(error.what(),
                 "multicore: could not encode Fragile: negative values are not allowed");
  }
  EXPECT_EQ(out.size(), 0u) << "bytes the Codec wrote before it threw must be rolled back";
  const Writer zero = encoded(Fragile{0}, Format::binary);
  EXPECT_EQ(decode_error<Fragile>(zero.bytes(), Format::binary),
            "multicore: could not decode Fragile: zero is not a Fragile");
}

TEST(Codec, ThrowingSerializeGivesSerializationError) {
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    Writer out;
    try {
      encode(out, Throwing{true, {1, 2, 3}}, format);
      FAIL() << "the serialize() exception was swallowed";
    } catch (const SerializationError& error) {
      EXPECT_NE(std::string(error.what()).find("refusing to save"), std::string::npos);
    }
    EXPECT_EQ(out.size(), 0u);
    EXPECT_EQ(round_trip(Throwing{false, {4}}, format).values, std::vector<int>{4});
  }
}

TEST(Codec, RejectsUnknownFormat) {
  Writer unknown;
  EXPECT_THROW(encode(unknown, 1, static_cast<Format>(7)), SerializationError);
  EXPECT_EQ(unknown.size(), 0u);
  const Writer out = encoded(1, Format::binary);
  EXPECT_NE(decode_error<int>(out.bytes(), static_cast<Format>(7)).find("unknown format 7"),
            std::string::npos);
}

// Every strict prefix of a valid encoding must fail cleanly (ASan/UBSan builds check "cleanly").
template <class T>
void expect_every_truncation_throws(const T& value) {
  for (const Format format : both_formats) {
    if (format == Format::json && !(d::json_value<T> || d::has_codec<T>)) continue;
    SCOPED_TRACE(std::string(name(format)) + " " + d::type_name<T>());
    const Writer out = encoded(value, format);
    ASSERT_GT(out.size(), 0u);
    for (std::size_t length = 0; length < out.size(); ++length) {
      const std::string what = decode_error<T>(out.bytes().first(length), format);
      EXPECT_NE(what.find("could not decode " + d::type_name<T>()), std::string::npos)
          << "length " << length << ": " << what;
    }
  }
}

TEST(Codec, ThrowsOnEveryTruncation) {
  expect_every_truncation_throws(12345);
  expect_every_truncation_throws(Point{1, 2});
  expect_every_truncation_throws(std::vector<int>{1, 2, 3});
  expect_every_truncation_throws(std::string("truncate me"));
  expect_every_truncation_throws(std::vector<std::string>{"ab", "", "cde"});
  expect_every_truncation_throws(std::map<std::string, std::vector<std::pair<int, std::string>>>{
      {"k", {{1, "v"}, {2, "w"}}}, {"l", {}}});
  expect_every_truncation_throws(Person{"Grace", 85, {"cobol"}});
  expect_every_truncation_throws(std::optional<std::string>("maybe"));
  expect_every_truncation_throws(std::variant<int, std::string>("alt"));
  expect_every_truncation_throws(std::make_unique<std::string>("boxed"));
  expect_every_truncation_throws(Celsius{12});
}

// Truncation inside a frame whose length was fixed up to match: the archive itself runs short.
TEST(Codec, ThrowsOnTruncatedArchiveInsideAConsistentFrame) {
  const Person person{"Linus", 54, {"kernel", "git"}};
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    const Writer out = encoded(person, format);
    const auto payload = out.bytes().subspan(8);
    for (std::size_t length = 0; length < payload.size(); ++length) {
      const std::string what = decode_error<Person>(framed(payload.first(length)), format);
      EXPECT_NE(what.find("could not decode Person"), std::string::npos) << what;
    }
  }
}

TEST(Codec, RejectsBytesLeftOverInsideAFrame) {
  const Writer out = encoded(Person{"x", 1, {}}, Format::binary);
  std::vector<std::byte> payload(out.bytes().begin() + 8, out.bytes().end());
  payload.push_back(std::byte{0});
  const std::string what = decode_error<Person>(framed(payload), Format::binary);
  EXPECT_NE(what.find("1 bytes left over"), std::string::npos) << what;
  const auto json = framed(as_bytes(R"({"value":{"name":"x","age":1,"tags":[]}} trailing)"));
  EXPECT_NE(decode_error<Person>(json, Format::json).find("could not decode Person"),
            std::string::npos);
  // rapidjson stops at a NUL byte; one after the document must not hide trailing bytes.
  std::vector<std::byte> hidden = as_bytes(R"({"value":{"name":"x","age":1,"tags":[]}})");
  hidden.push_back(std::byte{0});
  hidden.push_back(std::byte{'!'});
  EXPECT_NE(decode_error<Person>(framed(hidden), Format::json).find("NUL byte"), std::string::npos);
}

// A corrupt count must be refused before anything is allocated for it. The messages prove which
// check fired: "corrupt data" is only produced by the checks that run before allocation (an
// attempted huge allocation would report "out of memory" or "length error" instead).
TEST(Codec, RejectsHugeCountsBeforeAllocating) {
  for (const std::uint64_t count : {std::uint64_t{1} << 24, std::uint64_t{1} << 40,
                                    std::numeric_limits<std::uint64_t>::max()}) {
    SCOPED_TRACE(count);
    // Raw sequences: u64 count + elements.
    Writer ints = encoded(std::vector<int>{1, 2}, Format::binary);
    write_u64(ints.bytes(), count);
    EXPECT_NE(decode_error<std::vector<int>>(ints.bytes(), Format::binary)
                  .find("corrupt data: a sequence claims " + std::to_string(count)),
              std::string::npos);
    Writer text = encoded(std::string("abc"), Format::binary);
    write_u64(text.bytes(), count);
    EXPECT_NE(decode_error<std::string>(text.bytes(), Format::binary).find("corrupt data"),
              std::string::npos);

    // cereal containers: the size tag inside a valid frame (right after the frame length).
    const auto expect_size_tag_rejected = [count](auto value) {
      using T = decltype(value);
      Writer out = encoded(value, Format::binary);
      write_u64(out.bytes(), count, 8);
      const std::string what = decode_error<T>(out.bytes(), Format::binary);
      EXPECT_NE(what.find("corrupt data: a container claims " + std::to_string(count)),
                std::string::npos)
          << what;
    };
    expect_size_tag_rejected(std::vector<std::string>{"a"});
    expect_size_tag_rejected(std::list<int>{1});
    expect_size_tag_rejected(std::deque<double>{1});
    expect_size_tag_rejected(std::map<int, int>{{1, 2}});
    expect_size_tag_rejected(std::unordered_map<int, int>{{1, 2}});
    expect_size_tag_rejected(std::vector<bool>{true});

    // The frame length itself.
    Writer frame = encoded(Person{"p", 2, {}}, Format::json);
    write_u64(frame.bytes(), count);
    EXPECT_NE(decode_error<Person>(frame.bytes(), Format::json).find("truncated data"),
              std::string::npos);
  }
}

TEST(Codec, RejectsInvalidBoolAndVariantIndex) {
  Writer flag = encoded(std::optional<std::string>(), Format::binary);
  ASSERT_EQ(flag.size(), 9u);  // frame length + the bool "no value"
  flag.data()[8] = std::byte{2};
  EXPECT_NE(decode_error<std::optional<std::string>>(flag.bytes(), Format::binary)
                .find("corrupt data: bool byte is 2"),
            std::string::npos);

  using Alternatives = std::variant<int, std::string>;
  for (const std::int32_t index : {2, -1, std::numeric_limits<std::int32_t>::max()}) {
    Writer variant = encoded(Alternatives(1), Format::binary);
    std::memcpy(variant.data() + 8, &index, sizeof index);
    const std::string what = decode_error<Alternatives>(variant.bytes(), Format::binary);
    EXPECT_NE(what.find("could not decode std::variant<int, std::string>"), std::string::npos)
        << what;
  }
}

TEST(Codec, RejectsSharedPtrBackReferenceToAnotherType) {
  // Encoded as two shared_ptrs to one int; decoding the second as a string must not cast the int.
  const auto shared = std::make_shared<int>(5);
  const Writer out = encoded(std::make_pair(shared, shared), Format::binary);
  using Mixed = std::pair<std::shared_ptr<int>, std::shared_ptr<std::string>>;
  const std::string what = decode_error<Mixed>(out.bytes(), Format::binary);
  EXPECT_NE(what.find("shared_ptr refers to an object of another type"), std::string::npos) << what;
  Writer dangling = encoded(std::make_pair(shared, shared), Format::binary);
  const std::uint32_t unknown_id = 77;
  std::memcpy(dangling.data() + dangling.size() - sizeof unknown_id, &unknown_id,
              sizeof unknown_id);
  using Same = std::pair<std::shared_ptr<int>, std::shared_ptr<int>>;
  EXPECT_NE(decode_error<Same>(dangling.bytes(), Format::binary).find("Could not find id 77"),
            std::string::npos);
}

std::unique_ptr<Node> chain(std::size_t length) {
  std::unique_ptr<Node> head;
  for (std::size_t i = 0; i < length; ++i) {
    auto node = std::make_unique<Node>();
    node->next = std::move(head);
    head = std::move(node);
  }
  return head;
}

std::size_t length_of(const Node* node) {
  std::size_t length = 0;
  for (; node != nullptr; node = node->next.get()) ++length;
  return length;
}

void unlink(std::unique_ptr<Node> head) {  // iteratively: a long chain would recurse in ~Node
  while (head) head = std::move(head->next);
}

TEST(Codec, BoundsNestingDepth) {
  auto shallow = chain(100);
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    auto copy = round_trip(shallow, format);
    EXPECT_EQ(length_of(copy.get()), 100u);
    unlink(std::move(copy));
  }
  unlink(std::move(shallow));
  // Too deep: refused, not a stack overflow.
  auto deep = chain(1000);  // about 5 levels per link
  const Writer out = encoded(deep, Format::binary);
  unlink(std::move(deep));
  const std::string what = decode_error<std::unique_ptr<Node>>(out.bytes(), Format::binary);
  EXPECT_NE(what.find("nested more than"), std::string::npos) << what;

  const auto brackets = framed(as_bytes(std::string(1'000'000, '[')));
  EXPECT_NE(decode_error<std::vector<int>>(brackets, Format::json).find("nested more than"),
            std::string::npos);
  // Brackets inside a JSON string are text, not nesting.
  EXPECT_EQ(round_trip(std::string(5000, '['), Format::json), std::string(5000, '['));
}

TEST(Codec, RejectsJsonOfTheWrongShape) {
  for (const std::string_view text :
       {"", "{", "[]", "null", R"({"value":"text"})", R"({"other":1})", R"({"value":1.5})",
        R"({"value":[1,2]})", "\xff\xfe", R"({"value":1)", R"({"value":+1})", R"({"value":.5})"}) {
    SCOPED_TRACE(text);
    const std::string what = decode_error<int>(framed(as_bytes(text)), Format::json);
    EXPECT_NE(what.find("could not decode int"), std::string::npos) << what;
  }
}

// rapidjson 1.1.0 (Debian 12) misparses some numbers its own writer never produces, and hits
// undefined behaviour on a few; only the shapes rapidjson writes may reach it.
TEST(Codec, AcceptsOnlyJsonNumbersOfTheShapesRapidjsonWrites) {
  for (const std::string_view number :
       {"0.0e300", "0e5", "0.00000000000000000000000", "1e-2147483647", "9e308", "1e-324", "01",
        "1E5", "1e+5", "1.", "-", "1e", "1e0999", "0.1e-5", "1.23456789012345678e5",
        "123456789012345678901", "0.000000001234"}) {
    SCOPED_TRACE(number);
    const auto text = framed(as_bytes(R"({"value":)" + std::string(number) + "}"));
    const std::string what = decode_error<double>(text, Format::json);
    EXPECT_NE(what.find("malformed JSON number"), std::string::npos) << what;
  }
  const std::vector<std::pair<std::string_view, double>> good{
      {"0", 0.0},
      {"-0.0", -0.0},
      {"12.5", 12.5},
      {"1e-7", 1e-7},
      {"-2.5e100", -2.5e100},
      {"0.000123", 0.000123},
      {"5e-324", std::numeric_limits<double>::denorm_min()},
      {"1.7976931348623157e308", std::numeric_limits<double>::max()},
      {"18446744073709551615", 18446744073709551615.0}};
  for (const auto& [number, value] : good) {
    SCOPED_TRACE(number);
    const auto text = framed(as_bytes(R"({"value":)" + std::string(number) + "}"));
    Reader in(text);
    EXPECT_EQ(decode<double>(in, Format::json), value);
  }
  for (const double value :
       {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}) {
    EXPECT_EQ(round_trip(value, Format::json), value);
  }
  EXPECT_TRUE(std::isnan(round_trip(std::numeric_limits<double>::quiet_NaN(), Format::json)));
}

// Random corruption of valid encodings: every decode either succeeds or throws
// SerializationError. Run under -fsanitize=address,undefined this also proves no invalid reads.
template <class T>
void survive_random_corruption(const T& value, Format format, std::mt19937& random) {
  const Writer out = encoded(value, format);
  for (int round = 0; round < 400; ++round) {
    std::vector<std::byte> bytes(out.bytes().begin(), out.bytes().end());
    const int flips = 1 + static_cast<int>(random() % 4);
    for (int i = 0; i < flips; ++i) {
      bytes[random() % bytes.size()] = static_cast<std::byte>(random());
    }
    Reader in(bytes);
    try {
      (void)decode<T>(in, format);
    } catch (const SerializationError&) {
      // expected for most corruptions
    } catch (const std::exception& error) {
      FAIL() << d::type_name<T>() << ": " << multicore::detail::demangle(typeid(error).name())
             << " escaped decode: " << error.what();
    }
  }
}

TEST(Codec, SurvivesRandomCorruption) {
  std::mt19937 random(12345);
  const Person person{"Corrupt", 3, {"a", "bb"}};
  const std::map<std::string, std::vector<std::pair<int, std::string>>> nested{
      {"k", {{1, "v"}}}, {"m", {{2, "w"}, {3, "x"}}}};
  for (const Format format : both_formats) {
    SCOPED_TRACE(name(format));
    survive_random_corruption(person, format, random);
    survive_random_corruption(nested, format, random);
    survive_random_corruption(std::variant<int, std::string, std::vector<double>>("s"), format,
                              random);
    survive_random_corruption(std::make_pair(std::make_shared<std::string>("s"),
                                             std::make_unique<std::vector<int>>(3, 4)),
                              format, random);
    survive_random_corruption(std::list<std::optional<std::string>>{"a", std::nullopt}, format,
                              random);
    survive_random_corruption(std::bitset<100>().set(3), format, random);
  }
  survive_random_corruption(std::vector<int>{1, 2, 3}, Format::binary, random);
  survive_random_corruption(std::string("raw"), Format::binary, random);
}

// ----- Type names ------------------------------------------------------------------------------

TEST(TypeName, ReadsLikeTheSource) {
  EXPECT_EQ(d::type_name<int>(), "int");
  EXPECT_EQ(d::type_name<std::string>(), "std::string");
  EXPECT_EQ(d::type_name<std::vector<int>>(), "std::vector<int>");
  EXPECT_EQ(d::type_name<std::runtime_error>(), "std::runtime_error");
  EXPECT_EQ((d::type_name<std::map<std::string, std::vector<std::pair<int, std::string>>>>()),
            "std::map<std::string, std::vector<std::pair<int, std::string>>>");
  EXPECT_EQ(d::type_name<std::unique_ptr<Person>>(), "std::unique_ptr<Person>");
  EXPECT_EQ(d::demangle("not a mangled name"), "not a mangled name");
  EXPECT_EQ(d::demangle(typeid(std::vector<std::string>).name()), "std::vector<std::string>");
}

}  // namespace
