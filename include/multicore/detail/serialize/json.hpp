// SPDX-License-Identifier: MIT
// The JSON path: cereal's JSON archives over Writer and Reader bytes, the checks that keep
// rapidjson away from text it would misparse, and encode/decode with the format chosen at run
// time. Only code that offers Format::json includes it (Task): see CerealArchive.
#pragma once

#include <cereal/archives/json.hpp>
#include <cereal/external/base64.hpp>
#include <cstddef>
#include <exception>
#include <istream>
#include <ostream>
#include <span>
#include <streambuf>
#include <string>
#include <string_view>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../util/demangle.hpp"
#include "../util/linkage.hpp"
#include "serialize.hpp"
#include "traits.hpp"

namespace multicore::detail {

/// Deepest nesting of JSON arrays and objects a JSON encode or decode accepts (rapidjson and
/// cereal both recurse once per level).
inline constexpr std::size_t max_json_nesting = 1024;

// ---------------------------------------------------------------------------------------------
// Streams over Writer and Reader bytes, for cereal's JSON archives (which take std::ostream and
// std::istream). No copy of the payload is made in either direction.

/// Appends everything written to it to a Writer. Never throws (an exception would escape from
/// cereal::JSONOutputArchive's noexcept destructor, which writes the closing brace): when the
/// Writer cannot grow it reports a short write, which sets badbit on the stream, and failed().
class WriterStreambuf final : public std::streambuf {
 public:
  explicit WriterStreambuf(Writer& out) noexcept : out_(out) {}
  bool failed() const noexcept { return failed_; }

 protected:
  std::streamsize xsputn(const char* data, std::streamsize n) override {
    try {
      out_.write(data, static_cast<std::size_t>(n));
      return n;
    } catch (const std::exception&) {  // std::bad_alloc or std::length_error from the Writer
      failed_ = true;
      return 0;
    }
  }

  int_type overflow(int_type ch) override {
    if (traits_type::eq_int_type(ch, traits_type::eof())) return traits_type::not_eof(ch);
    const char c = traits_type::to_char_type(ch);
    return xsputn(&c, 1) == 1 ? ch : traits_type::eof();
  }

 private:
  Writer& out_;
  bool failed_ = false;
};

/// Reads a span of bytes in place.
class SpanStreambuf final : public std::streambuf {
 public:
  explicit SpanStreambuf(std::span<const std::byte> bytes) noexcept {
    // std::streambuf wants char*, but writes to the get area only from pbackfail(), which this
    // class does not override (the default fails), so the bytes are never modified.
    char* begin = const_cast<char*>(reinterpret_cast<const char*>(bytes.data()));
    setg(begin, begin, begin + bytes.size());
  }
};

/// cereal's JSON archives can carry it.
template <class T>
concept json_value =
    deeply_serializable<cereal::JSONOutputArchive, cereal::JSONInputArchive, T>() &&
    std::default_initializable<T> && std::move_constructible<T>;

/// Whether `token` is a JSON number of the shapes rapidjson's writer produces (cereal writes
/// integers and doubles): `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at most 20 significant digits, or
/// `-?[1-9](\.[0-9]{1,16})?e-?[1-9][0-9]{0,2}` within a double's range. Anything else is corrupt:
/// rapidjson 1.1.0, the version Debian 12 ships, misparses and even hits undefined behaviour on
/// some numbers outside these shapes, e.g. "0.0e300" (fixed upstream after 1.1.0, see
/// https://github.com/Tencent/rapidjson/issues/1724 for the same release's stack.h issue).
MULTICORE_DECL bool canonical_json_number(std::string_view token);

/// Checks JSON text before rapidjson and cereal see it, and after cereal wrote it:
///  - nesting deeper than max_json_nesting is rejected, because rapidjson's recursive parser
///    would overflow the stack on a long run of '[';
///  - a number must have one of the shapes rapidjson writes (see canonical_json_number());
///  - a raw NUL byte is rejected: valid JSON has none, and rapidjson takes one for the end of
///    its input, so whatever follows it would be ignored;
///  - a string holding an escaped NUL character is rejected, because cereal's JSON reader builds
///  std::string
///    from a C string and would silently drop everything after the NUL
///    (cereal::JSONInputArchive::loadValue(std::string&) uses GetString() without its length).
MULTICORE_DECL void check_json_text(std::span<const std::byte> text);

/// Format::json's cereal archive (see CerealArchive in serialize.hpp): one JSON document, a
/// single member "value". A type cereal's JSON archives cannot carry is reported when encoding
/// (or decoding), as a SerializationError that says what to do.
template <>
struct CerealArchive<Format::json> {
  template <class T>
  static void save(Writer& out, const T& value) {
    if constexpr (json_value<T>) {
      const std::size_t start = out.size();
      WriterStreambuf buffer(out);
      std::ostream stream(&buffer);
      {
        // NoIndent: no indentation; the archive writes its closing brace when destroyed.
        cereal::JSONOutputArchive archive(stream, cereal::JSONOutputArchive::Options::NoIndent());
        archive(cereal::make_nvp("value", value));
      }
      if (buffer.failed() || !stream) throw std::bad_alloc();
      check_json_text(out.bytes().subspan(start));
    } else {
      throw SerializationError(unsupported_message<T>());
    }
  }

  template <class T>
  static T load(std::span<const std::byte> frame) {
    if constexpr (json_value<T>) {
      T value{};
      check_json_text(frame);
      SpanStreambuf buffer(frame);
      std::istream stream(&buffer);
      // rapidjson parses the whole frame as one document and fails on anything after it, so a
      // successful load has consumed exactly the framed bytes.
      cereal::JSONInputArchive archive(stream);
      archive(cereal::make_nvp("value", value));
      return value;
    } else {
      throw SerializationError(unsupported_message<T>());
    }
  }

  template <class T>
  static std::string unsupported_message() {
    const std::string name = type_name<T>();
    return "multicore: Format::json needs a cereal serialize() function for " + name +
           " (or a multicore::Codec<" + name + "> specialisation), or use Format::binary";
  }
};

// ---------------------------------------------------------------------------------------------
// The format chosen at run time (TaskOptions::format, or a format read from a message).

/// Throws unless `format` is one of the enumerators (it may come from a corrupt record).
MULTICORE_DECL void check_format(Format format);

/// encode<F>() for the `format` given at run time.
template <class T>
void encode(Writer& out, const T& value, Format format) {
  check_format(format);
  if (format == Format::json) {
    encode<Format::json>(out, value);
  } else {
    encode<Format::binary>(out, value);
  }
}

/// decode<T, F>() for the `format` given at run time.
template <class T>
T decode(Reader& in, Format format) {
  check_format(format);
  if (format == Format::json) return decode<T, Format::json>(in);
  return decode<T, Format::binary>(in);
}

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL bool canonical_json_number(std::string_view token) {
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  std::size_t i = token.starts_with('-') ? 1 : 0;
  const std::size_t integer_begin = i;
  while (i < token.size() && is_digit(token[i])) ++i;
  const std::string_view integer = token.substr(integer_begin, i - integer_begin);
  if (integer.empty() || integer.size() > 21 || (integer.size() > 1 && integer[0] == '0')) {
    return false;
  }
  std::string_view fraction;
  if (i < token.size() && token[i] == '.') {
    const std::size_t fraction_begin = ++i;
    while (i < token.size() && is_digit(token[i])) ++i;
    fraction = token.substr(fraction_begin, i - fraction_begin);
    if (fraction.empty() || fraction.size() > 23) return false;
  }
  const bool zero = integer == "0" && fraction.find_first_not_of('0') == std::string_view::npos;
  if (i == token.size()) {  // no exponent
    if (zero) return fraction.size() <= 1;
    if (fraction.empty()) return integer.size() <= 20;
    const std::size_t leading_zeros =
        integer == "0" ? fraction.find_first_not_of('0') + 1 : 0;  // "0.000123": 4
    const std::size_t digits = integer.size() + fraction.size();
    const std::size_t trailing_zeros = fraction.size() - 1 - fraction.find_last_not_of('0');
    return leading_zeros <= 7 && digits - leading_zeros - trailing_zeros <= 20;
  }
  if (token[i] != 'e' || integer.size() != 1 || integer[0] == '0' || fraction.size() > 16) {
    return false;
  }
  const bool negative = ++i < token.size() && token[i] == '-';
  if (negative) ++i;
  const std::string_view exponent = token.substr(i);
  if (exponent.empty() || exponent.size() > 3 || exponent[0] == '0' ||
      exponent.find_first_not_of("0123456789") != std::string_view::npos) {
    return false;
  }
  int magnitude = 0;
  for (const char c : exponent) magnitude = magnitude * 10 + (c - '0');
  // At the ends of a double's range compare the 17 significant digits with the extreme values
  // rapidjson writes: 1.7976931348623157e308 and 5e-324 (anything below 2.5e-324 is 0).
  std::string mantissa = std::string(integer) + std::string(fraction);
  mantissa.resize(17, '0');
  if (negative) {
    return magnitude < 324 || (magnitude == 324 && mantissa >= "25000000000000000");
  }
  return magnitude < 308 || (magnitude == 308 && mantissa <= "17976931348623157");
}

MULTICORE_DECL void check_json_text(std::span<const std::byte> text) {
  constexpr std::string_view escaped_nul = "u0000";
  const std::string_view chars(reinterpret_cast<const char*>(text.data()), text.size());
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < chars.size(); ++i) {
    const char c = chars[i];
    if (c == '\0') {
      throw SerializationError("multicore: corrupt data: NUL byte in JSON text");
    }
    if (in_string) {
      if (c == '\\') {
        if (chars.substr(i + 1, escaped_nul.size()) == escaped_nul) {
          throw SerializationError(
              "multicore: Format::json cannot carry a string with an embedded NUL character "
              "(cereal's JSON reader stops at it); use Format::binary");
        }
        ++i;  // skip the escaped character
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      std::size_t end = i + 1;
      while (end < chars.size() &&
             std::string_view("0123456789+-.eE").find(chars[end]) != std::string_view::npos) {
        ++end;
      }
      const std::string_view token = chars.substr(i, end - i);
      if (!canonical_json_number(token) &&
          !(token == "-" && chars.substr(end).starts_with("Infinity"))) {
        throw SerializationError("multicore: corrupt data: malformed JSON number " +
                                 std::string(token.substr(0, 40)));
      }
      i = end - 1;
    } else if (c == '[' || c == '{') {
      if (++depth > max_json_nesting) {
        throw SerializationError("multicore: JSON nested more than " +
                                 std::to_string(max_json_nesting) + " levels deep");
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

MULTICORE_DECL void check_format(Format format) {
  if (format != Format::binary && format != Format::json) {
    throw SerializationError("multicore: unknown format " +
                             std::to_string(static_cast<int>(format)));
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail

// A Codec<T> element inside a JSON value (rule 1 of the encoding rule, traits.hpp) is its
// Codec's bytes as a base64 string. These are in namespace cereal because cereal finds an
// archive's functions by argument-dependent lookup, and these archives are cereal's.
namespace cereal {

template <multicore::detail::codec_element T>
std::string CEREAL_SAVE_MINIMAL_FUNCTION_NAME(const JSONOutputArchive& /*archive*/,
                                              const T& value) {
  multicore::Writer bytes;
  multicore::Codec<T>::encode(bytes, value);
  return base64::encode(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
}

template <multicore::detail::codec_element T>
void CEREAL_LOAD_MINIMAL_FUNCTION_NAME(const JSONInputArchive& /*archive*/, T& value,
                                       const std::string& text) {
  const std::string bytes = base64::decode(text);  // stops at the first non-base64 character
  multicore::Reader in(std::as_bytes(std::span(bytes)));
  value = multicore::Codec<T>::decode(in);
  if (in.remaining() != 0) {
    throw multicore::SerializationError(
        "multicore: corrupt data: " + std::to_string(in.remaining()) +
        " bytes left over after a Codec value");
  }
}

// Preferred even when T has cereal functions too.
template <multicore::detail::codec_element T>
struct specialize<JSONOutputArchive, T, specialization::non_member_load_save_minimal> {};
template <multicore::detail::codec_element T>
struct specialize<JSONInputArchive, T, specialization::non_member_load_save_minimal> {};

}  // namespace cereal
