// SPDX-License-Identifier: MIT
// Encodes task arguments and results to bytes and back: Codec<T>, raw bytes or cereal.
#pragma once

#include <cxxabi.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../util/demangle.hpp"
#include "../util/linkage.hpp"
#include "binary_archive.hpp"
#include "sequence.hpp"
#include "traits.hpp"

// Wire format of one value (all integers in host byte order: both ends are the same program):
//   Codec<T>          whatever Codec<T>::encode writes (both formats)
//   raw value         sizeof(T) bytes, a memcpy of the object
//   raw sequence      u64 element count, then count * sizeof(E) bytes
//   cereal value      u64 byte length, then one cereal binary archive or one JSON document
// Only cereal values carry a length: they are the only encodings whose decoder could otherwise
// stop short of, or run past, what the encoder wrote without noticing.
//
// Decoding treats its input as untrusted (a worker may die mid-write, or a bug may corrupt a
// ring), so every read is bounds-checked, every length is checked against the bytes left before
// anything is allocated, and nesting is bounded so recursive types cannot overflow the stack.

namespace multicore::detail {
// ---------------------------------------------------------------------------------------------
// Encoding and decoding.

/// What went wrong, for the message of the SerializationError that replaces the exception being
/// handled. Call only inside a catch block.
MULTICORE_DECL std::string describe_current_exception();

/// decode_error<T>() for the type `type` (not a template: built once, in the compiled part).
MULTICORE_DECL SerializationError decode_error_for(const std::type_info& type);

/// The SerializationError for a failed decode of a T, describing the exception being handled:
/// "multicore: could not decode T: <what went wrong>". Call only inside a catch block.
template <class T>
SerializationError decode_error() {
  return decode_error_for(typeid(T));
}

/// Throws SerializationError "multicore: could not encode T: <what went wrong>" for the type
/// `type`, describing the exception being handled, after cutting `out` back to `start`. Call
/// only inside a catch block.
[[noreturn]] MULTICORE_DECL void throw_encode_error(Writer& out, std::size_t start,
                                                    const std::type_info& type);

/// Throws SerializationError: `left` bytes were left over after a cereal archive's value.
[[noreturn]] MULTICORE_DECL void throw_left_over(std::size_t left);

/// Writes the u64 byte length of everything appended since `start` (where 8 bytes were
/// reserved for it) into those 8 bytes.
inline void patch_length(Writer& out, std::size_t start) {
  const std::uint64_t length = out.size() - start - sizeof(std::uint64_t);
  std::memcpy(out.data() + start, &length, sizeof length);
}

/// Reads a u64 length prefix and returns that many following bytes, bounds-checked.
inline std::span<const std::byte> take_frame(Reader& in) {
  std::uint64_t length = 0;
  in.read(&length, sizeof length);
  if (length > in.remaining()) throw_truncated(static_cast<std::size_t>(length), in.remaining());
  return in.take(static_cast<std::size_t>(length));
}

/// The cereal archive of format F: `save(out, value)` appends one archive holding `value`,
/// `load<T>(frame)` reads one back from exactly the bytes of `frame`. Format::json's lives
/// in json.hpp, which only code that offers JSON includes (Task): code that sends only binary
/// (Pool, maps, the worker's entries for them) never compiles rapidjson.
template <Format F>
struct CerealArchive;

template <>
struct CerealArchive<Format::binary> {
  template <class T>
  static void save(Writer& out, const T& value) {
    CheckedBinaryOutputArchive archive(out);
    archive(value);
  }

  template <class T>
  static T load(std::span<const std::byte> frame) {
    T value{};
    CheckedBinaryInputArchive archive(frame);
    archive(value);
    if (archive.remaining() != 0) throw_left_over(archive.remaining());
    return value;
  }
};

/// Appends `value` as [u64 byte length][one cereal archive in format F].
template <Format F, class T>
void encode_cereal(Writer& out, const T& value) {
  const std::size_t start = out.size();
  out.extend(sizeof(std::uint64_t));
  CerealArchive<F>::save(out, value);
  patch_length(out, start);
}

/// Reads what encode_cereal<F> wrote.
template <Format F, class T>
T decode_cereal(Reader& in) {
  return CerealArchive<F>::template load<T>(take_frame(in));
}

template <class T>
T decode_raw_value(Reader& in) {
  if constexpr (std::is_default_constructible_v<T>) {  // read in place: T may be large
    T value;
    in.read(std::addressof(value), sizeof(T));
    return value;
  } else {
    std::array<std::byte, sizeof(T)> bytes;
    in.read(bytes.data(), sizeof(T));
    return std::bit_cast<T>(bytes);
  }
}

/// Appends `value` in format F, encoded by the encoding rule (encoding_of(), traits.hpp).
template <Format F, class T>
void encode_value(Writer& out, const T& value) {
  constexpr Encoding how = encoding_of<T>(F);
  if constexpr (how == Encoding::codec) {
    Codec<T>::encode(out, value);
  } else if constexpr (how == Encoding::raw) {
    out.write(std::addressof(value), sizeof(T));
  } else if constexpr (how == Encoding::raw_sequence) {
    encode_raw_sequence(out, value);
  } else {
    encode_cereal<F>(out, value);
  }
}

/// Reads what encode_value<F> wrote.
template <Format F, class T>
T decode_value(Reader& in) {
  constexpr Encoding how = encoding_of<T>(F);
  if constexpr (how == Encoding::codec) {
    return Codec<T>::decode(in);
  } else if constexpr (how == Encoding::raw) {
    return decode_raw_value<T>(in);
  } else if constexpr (how == Encoding::raw_sequence) {
    return decode_raw_sequence<T>(in);
  } else {
    return decode_cereal<F, T>(in);
  }
}

/// Appends `value` to `out` in format F, encoded by the encoding rule (encoding_of()).
/// Throws SerializationError naming the type if encoding fails; `out` is then left as it was.
/// (Format::json needs json.hpp, which also has the forms that take the format at run time.)
template <Format F = Format::binary, class T>
void encode(Writer& out, const T& value) {
  static_assert(!codec_declared<T> || has_codec<T>,
                "multicore: multicore::Codec<T> is specialised but lacks static void "
                "encode(multicore::Writer&, const T&) or static T decode(multicore::Reader&).");
  static_assert(sendable<T>,
                "multicore: this type cannot be sent to a worker process: make it trivially "
                "copyable, give it a cereal serialize() function, or specialise "
                "multicore::Codec<T>.");
  const std::size_t start = out.size();
  try {
    encode_value<F>(out, value);
  } catch (const abi::__forced_unwind&) {  // thread cancellation must keep unwinding
    out.resize(start);
    throw;
  } catch (...) {
    throw_encode_error(out, start, typeid(T));
  }
}

/// Reads one value that encode<F>() wrote from `in`. The bytes are untrusted: on any failure
/// (truncated or corrupt data, a type mismatch, out of memory, an exception from a Codec) it
/// throws SerializationError naming the type, e.g. "multicore: could not decode
/// std::vector<int>: truncated data: needed 8 bytes, 3 left". It never reads out of bounds.
template <class T, Format F = Format::binary>
T decode(Reader& in) {
  static_assert(!codec_declared<T> || has_codec<T>,
                "multicore: multicore::Codec<T> is specialised but lacks static void "
                "encode(multicore::Writer&, const T&) or static T decode(multicore::Reader&).");
  static_assert(sendable<T>,
                "multicore: this type cannot be sent to a worker process: make it trivially "
                "copyable, give it a cereal serialize() function, or specialise "
                "multicore::Codec<T>.");
  try {
    return decode_value<F, T>(in);
  } catch (const abi::__forced_unwind&) {
    throw;
  } catch (...) {
    throw decode_error<T>();
  }
}

/// decode() in place: makes the T in `where` (uninitialised storage for one) instead of
/// returning it, so that a large value never passes through a stack. Throws what decode()
/// throws, and then leaves no T in `where`.
template <class T, Format F = Format::binary>
T* decode_at(void* where, Reader& in) {
  if constexpr (encoding_of<T>(F) == Encoding::raw) {
    try {
      return raw_value_at<T>(where, in.take(sizeof(T)).data());
    } catch (...) {
      throw decode_error<T>();
    }
  } else {
    // decode()'s result is a prvalue: it is made right in `where` (guaranteed copy elision);
    // the decoders under it return their one local object, which compilers build there too
    // (NRVO).
    return ::new (where) T(decode<T, F>(in));
  }
}

/// Holds at most one T, like std::optional<T> (and as compact), but a T larger than
/// max_inline_value_bytes on the heap. The T is made in place: from a function's result (a T
/// returned by value is built right there: guaranteed copy elision) or decoded into it. Moving
/// a Stored moves the pointer to a large T, never the T.
template <class T>
class Stored {
  static constexpr bool large = sizeof(T) > max_inline_value_bytes;

 public:
  Stored() noexcept = default;
  Stored(Stored&& other) noexcept(large || std::is_nothrow_move_constructible_v<T>) {
    if constexpr (large) {
      room_ = std::move(other.room_);
      engaged_ = std::exchange(other.engaged_, false);
    } else if (other.engaged_) {
      make([&] { return std::move(*other); });
    }
  }
  Stored& operator=(Stored&&) = delete;
  ~Stored() { reset(); }

  bool has_value() const noexcept { return engaged_; }
  T& operator*() noexcept { return *value(); }
  const T& operator*() const noexcept { return *const_cast<Stored&>(*this).value(); }
  T* operator->() noexcept { return value(); }
  const T* operator->() const noexcept { return const_cast<Stored&>(*this).value(); }

  /// Replaces the value by what `construct(where)` makes in the uninitialised storage `where`
  /// for a T. Throws what construct throws (the Stored is then empty), or std::bad_alloc.
  template <class Construct>
  T& construct(Construct&& construct) {
    reset();
    std::forward<Construct>(construct)(room());
    engaged_ = true;
    return *value();
  }

  /// Replaces the value by `make()`'s result, made in place.
  template <class Make>
  T& make(Make&& make) {
    return construct([&](void* where) { ::new (where) T(std::forward<Make>(make)()); });
  }

  /// Replaces the value by one decoded from `in` in format F, in place (see decode_at()).
  template <Format F = Format::binary>
  T& decode(Reader& in) {
    return construct([&](void* where) { decode_at<T, F>(where, in); });
  }

  void reset() noexcept {
    if (std::exchange(engaged_, false)) std::destroy_at(value());
  }

 private:
  void* room() {
    if constexpr (large) {
      if (!room_) room_ = std::make_unique_for_overwrite<RawRoom<T>>();
      return room_->bytes;
    } else {
      return room_.bytes;
    }
  }

  T* value() noexcept {
    if constexpr (large) {
      return std::launder(reinterpret_cast<T*>(room_->bytes));
    } else {
      return std::launder(reinterpret_cast<T*>(room_.bytes));
    }
  }

  std::conditional_t<large, std::unique_ptr<RawRoom<T>>, RawRoom<T>> room_;
  bool engaged_ = false;
};
// A map chunk holds one per item, on both sides: a pointer more (the first version had one)
// made a map of ints fault in 1.5x the memory and run at half speed.
static_assert(sizeof(Stored<int>) == sizeof(std::optional<int>));

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL SerializationError decode_error_for(const std::type_info& type) {
  return SerializationError("multicore: could not decode " + demangle(type.name()) + ": " +
                            describe_current_exception());
}

MULTICORE_DECL void throw_encode_error(Writer& out, std::size_t start, const std::type_info& type) {
  out.resize(start);
  throw SerializationError("multicore: could not encode " + demangle(type.name()) + ": " +
                           describe_current_exception());
}

MULTICORE_DECL void throw_left_over(std::size_t left) {
  throw SerializationError("multicore: corrupt data: " + std::to_string(left) +
                           " bytes left over after the value");
}

MULTICORE_DECL std::string describe_current_exception() {
  try {
    throw;
  } catch (const SerializationError& error) {
    constexpr std::string_view prefix = "multicore: ";
    const std::string_view what = message_of(error);
    return std::string(what.starts_with(prefix) ? what.substr(prefix.size()) : what);
  } catch (const std::bad_alloc&) {
    return "out of memory";
  } catch (const std::length_error& error) {
    return std::string("length error: ") + message_of(error);
  } catch (...) {
    return describe_thrown();
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
