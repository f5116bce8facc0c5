// SPDX-License-Identifier: MIT
// Encodes task arguments and results to bytes and back: Codec<T>, raw bytes or cereal.
#pragma once

#include <cxxabi.h>

#include <array>
#include <bit>
#include <cereal/archives/binary.hpp>  // cereal's standard archives: see raw_fallback
#include <cereal/archives/json.hpp>
#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/forward_list.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/valarray.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <forward_list>
#include <functional>
#include <istream>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <ostream>
#include <set>
#include <span>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <valarray>
#include <variant>
#include <vector>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../util/demangle.hpp"
#include "../util/huge_pages.hpp"

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

/// Deepest nesting of values a binary decode accepts; each value cereal loads inside another
/// counts one level (a std::unique_ptr link costs about 5). Measured at about 260 bytes of stack
/// per level with -O0 -fsanitize=address, so the limit costs at most ~1 MiB of stack.
inline constexpr std::size_t max_binary_nesting = 4096;
/// Deepest nesting of JSON arrays and objects a JSON encode or decode accepts (rapidjson and
/// cereal both recurse once per level).
inline constexpr std::size_t max_json_nesting = 1024;

template <class T>
struct is_string_view : std::false_type {};
template <class C, class Traits>
struct is_string_view<std::basic_string_view<C, Traits>> : std::true_type {};

template <class T>
struct is_span : std::false_type {};
template <class E, std::size_t N>
struct is_span<std::span<E, N>> : std::true_type {};

template <class T>
struct is_reference_wrapper : std::false_type {};
template <class T>
struct is_reference_wrapper<std::reference_wrapper<T>> : std::true_type {};

/// Object pointers, member pointers, std::nullptr_t and std::reference_wrapper (trivially
/// copyable, but an address underneath): addresses in the sender's memory. Function pointers
/// are not among them: workers are forks of the same program, so code addresses mean the same
/// in every process (a callable is sent the same way).
template <class T>
concept address_value =
    (std::is_pointer_v<T> && !std::is_function_v<std::remove_pointer_t<T>>) ||
    std::is_member_pointer_v<T> || std::is_null_pointer_v<T> || is_reference_wrapper<T>::value;

/// Non-owning views whose bytes live in the sender's memory.
template <class T>
concept view_value = is_string_view<T>::value || is_span<T>::value;

/// `multicore::Codec<T>` is specialised with `encode(Writer&, const T&)` and
/// `decode(Reader&) -> T`.
template <class T>
concept has_codec = requires(Writer& out, Reader& in, const T& value) {
  Codec<T>::encode(out, value);
  { Codec<T>::decode(in) } -> std::same_as<T>;
};

/// `multicore::Codec<T>` is specialised at all (a complete type), whatever its members.
template <class T>
concept codec_declared = requires {
  sizeof(Codec<T>);
};

/// Sent as a memcpy of its object representation. Decoding trusts the bytes to be one: corrupt
/// bytes give a wrong value (or, for a bool or enum member, an invalid one), never a bad read.
template <class T>
concept raw_value = std::is_trivially_copyable_v<T> && std::is_object_v<T> && !std::is_array_v<T> &&
                    !address_value<T> && !view_value<T>;

template <class T>
struct is_raw_sequence : std::false_type {};
// std::vector<bool> is excluded: it packs bits and has no data().
template <class E>
struct is_raw_sequence<std::vector<E, std::allocator<E>>>
    : std::bool_constant<raw_value<E> && !std::is_same_v<E, bool>> {};
template <class E, class Traits>
struct is_raw_sequence<std::basic_string<E, Traits, std::allocator<E>>>
    : std::bool_constant<raw_value<E>> {};

/// A contiguous std container of raw values: sent as an element count and one memcpy.
template <class T>
concept raw_sequence = is_raw_sequence<T>::value;

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

// ---------------------------------------------------------------------------------------------
// Binary archives: cereal's binary format, written straight into a Writer and read back from
// untrusted bytes.
//
// cereal::BinaryInputArchive trusts its input: a corrupt container size makes it resize a
// vector or list to billions of elements before it notices the data is missing, a byte other
// than 0 or 1 becomes a bool (undefined behaviour), a deep enough recursive value overflows the
// stack, and a shared_ptr back-reference can name an object of another type (memory
// corruption). CheckedBinaryInputArchive reads the same bytes and rejects all of those with an
// exception instead. Both archives also send trivially copyable types that have no cereal
// functions as raw bytes, so `std::map<std::string, Point>` works when `Point` alone does.
// User types written against a cereal `Archive` template work unchanged; functions written for
// cereal::BinaryOutputArchive / BinaryInputArchive alone are not used (make them templates).

/// Saves what cereal::BinaryOutputArchive would, appending to a Writer.
class CheckedBinaryOutputArchive
    : public cereal::OutputArchive<CheckedBinaryOutputArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit CheckedBinaryOutputArchive(Writer& out)
      : OutputArchive<CheckedBinaryOutputArchive, cereal::AllowEmptyClassElision>(this),
        out_(out) {}

  void saveBinary(const void* data, std::size_t n) { out_.write(data, n); }

 private:
  Writer& out_;
};

/// Loads what CheckedBinaryOutputArchive (or cereal::BinaryOutputArchive) saved, from a
/// bounds-checked span.
class CheckedBinaryInputArchive
    : public cereal::InputArchive<CheckedBinaryInputArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit CheckedBinaryInputArchive(std::span<const std::byte> bytes)
      : InputArchive<CheckedBinaryInputArchive, cereal::AllowEmptyClassElision>(this), in_(bytes) {}

  /// Copies the next `n` bytes to `data`; throws SerializationError when fewer are left.
  void loadBinary(void* data, std::size_t n) { in_.read(data, n); }
  std::size_t remaining() const noexcept { return in_.remaining(); }

  /// A container claims `count` elements. Every element cereal writes takes at least one byte
  /// (elements of an empty type aside), so a count beyond the bytes left is corrupt; checking it
  /// here keeps cereal from allocating for elements that are not there.
  void check_count(std::uint64_t count) const {
    if (count > in_.remaining()) {
      throw SerializationError("multicore: corrupt data: a container claims " +
                               std::to_string(count) + " elements, but only " +
                               std::to_string(in_.remaining()) + " bytes are left");
    }
  }

  void enter() {
    if (++depth_ > max_binary_nesting) {
      throw SerializationError("multicore: values nested more than " +
                               std::to_string(max_binary_nesting) + " levels deep");
    }
  }
  void leave() noexcept { --depth_; }

  /// Type of the shared_ptr being loaded, innermost last (see prologue()).
  void push_shared_type(const std::type_info& type) { shared_types_.push_back(&type); }
  void pop_shared_type() noexcept { shared_types_.pop_back(); }

  // These hide cereal::InputArchive's members of the same names: cereal's shared_ptr loader
  // calls them on the most derived archive. They remember the type each id was loaded as, so a
  // corrupt back-reference to an object of another type is rejected instead of cast.
  void registerSharedPointer(std::uint32_t id, std::shared_ptr<void> ptr) {
    shared_pointer_types_[id & ~cereal::detail::msb_32bit] = current_shared_type();
    InputArchive::registerSharedPointer(id, std::move(ptr));
  }
  std::shared_ptr<void> getSharedPointer(std::uint32_t id) {
    if (id != 0) {
      const auto found = shared_pointer_types_.find(id);
      if (found != shared_pointer_types_.end() && *found->second != *current_shared_type()) {
        throw SerializationError(
            "multicore: corrupt data: a shared_ptr refers to an object of another type");
      }
    }
    return InputArchive::getSharedPointer(id);  // throws cereal::Exception for unknown ids
  }

 private:
  const std::type_info* current_shared_type() const noexcept {
    return shared_types_.empty() ? &typeid(void) : shared_types_.back();
  }

  Reader in_;
  std::size_t depth_ = 0;
  std::vector<const std::type_info*> shared_types_;
  std::unordered_map<std::uint32_t, const std::type_info*> shared_pointer_types_;
};

// The functions below are found by argument-dependent lookup from cereal's dispatch. prologue()
// and epilogue() run around every value loaded, which is where nesting is counted.

template <class T>
void prologue(CheckedBinaryInputArchive& archive, const T& /*value*/) {
  archive.enter();
}
template <class T>
void epilogue(CheckedBinaryInputArchive& archive, const T& /*value*/) noexcept {
  archive.leave();
}
template <class T>
void prologue(CheckedBinaryInputArchive& archive,
              const cereal::memory_detail::PtrWrapper<std::shared_ptr<T>&>& /*wrapper*/) {
  archive.enter();
  archive.push_shared_type(typeid(T));
}
template <class T>
void epilogue(CheckedBinaryInputArchive& archive,
              const cereal::memory_detail::PtrWrapper<std::shared_ptr<T>&>& /*wrapper*/) noexcept {
  archive.pop_shared_type();
  archive.leave();
}

template <class T>
requires std::is_arithmetic_v<T>
void CEREAL_LOAD_FUNCTION_NAME(CheckedBinaryInputArchive& archive, T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    static_assert(sizeof(bool) == 1, "cereal's binary archive stores a bool as one byte");
    std::uint8_t byte = 0;
    archive.loadBinary(&byte, 1);
    if (byte > 1) {
      throw SerializationError("multicore: corrupt data: bool byte is " + std::to_string(byte));
    }
    value = byte == 1;
  } else {
    archive.loadBinary(std::addressof(value), sizeof(T));
  }
}

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CheckedBinaryInputArchive& archive,
                                    cereal::NameValuePair<T>& named) {
  archive(named.value);
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(CheckedBinaryInputArchive& archive, cereal::SizeTag<T>& tag) {
  archive(tag.size);
  archive.check_count(static_cast<std::uint64_t>(tag.size));
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(CheckedBinaryInputArchive& archive, cereal::BinaryData<T>& data) {
  archive.loadBinary(data.data, static_cast<std::size_t>(data.size));
}

template <class T>
requires std::is_arithmetic_v<T>
void CEREAL_SAVE_FUNCTION_NAME(CheckedBinaryOutputArchive& archive, const T& value) {
  archive.saveBinary(std::addressof(value), sizeof(T));
}

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CheckedBinaryOutputArchive& archive,
                                    cereal::NameValuePair<T>& named) {
  archive(named.value);
}

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CheckedBinaryOutputArchive& archive, cereal::SizeTag<T>& tag) {
  archive(tag.size);
}

template <class T>
void CEREAL_SAVE_FUNCTION_NAME(CheckedBinaryOutputArchive& archive,
                               const cereal::BinaryData<T>& data) {
  archive.saveBinary(data.data, static_cast<std::size_t>(data.size));
}

// cereal's own std::valarray functions take &valarray[0], undefined behaviour for an empty
// valarray (UBSan: "reference binding to null pointer"); these more specialised overloads skip
// the data when there is none. Same bytes as cereal's.
template <class T>
requires std::is_arithmetic_v<T>
void CEREAL_SAVE_FUNCTION_NAME(CheckedBinaryOutputArchive& archive,
                               const std::valarray<T>& valarray) {
  archive(cereal::make_size_tag(static_cast<cereal::size_type>(valarray.size())));
  if (valarray.size() != 0) archive(cereal::binary_data(&valarray[0], valarray.size() * sizeof(T)));
}

template <class T>
requires std::is_arithmetic_v<T>
void CEREAL_LOAD_FUNCTION_NAME(CheckedBinaryInputArchive& archive, std::valarray<T>& valarray) {
  cereal::size_type size = 0;
  archive(cereal::make_size_tag(size));
  valarray.resize(static_cast<std::size_t>(size));
  if (size != 0) archive(cereal::binary_data(&valarray[0], valarray.size() * sizeof(T)));
}

/// A trivially copyable type that cereal cannot serialize on its own; inside a cereal value it
/// goes as raw bytes, as it does on its own. (Asking cereal's standard archives, which never see
/// these overloads, keeps the constraint from depending on itself.)
template <class T>
concept raw_fallback =
    raw_value<T> && !std::is_arithmetic_v<T> && std::default_initializable<T> &&
    !cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value &&
    !cereal::traits::is_input_serializable<T, cereal::BinaryInputArchive>::value;

template <raw_fallback T>
void CEREAL_SAVE_FUNCTION_NAME(CheckedBinaryOutputArchive& archive, const T& value) {
  archive.saveBinary(std::addressof(value), sizeof(T));
}

template <raw_fallback T>
void CEREAL_LOAD_FUNCTION_NAME(CheckedBinaryInputArchive& archive, T& value) {
  archive.loadBinary(std::addressof(value), sizeof(T));
}

}  // namespace multicore::detail

// Polymorphic types registered with cereal bind to these archives too, and save_minimal /
// load_minimal pairs are matched across them.
CEREAL_REGISTER_ARCHIVE(multicore::detail::CheckedBinaryOutputArchive)
CEREAL_REGISTER_ARCHIVE(multicore::detail::CheckedBinaryInputArchive)
CEREAL_SETUP_ARCHIVE_TRAITS(multicore::detail::CheckedBinaryInputArchive,
                            multicore::detail::CheckedBinaryOutputArchive)

namespace multicore::detail {

// ---------------------------------------------------------------------------------------------
// Which types cereal can carry.
//
// cereal's traits look at the outermost type only: `std::vector<X>` counts as serializable
// whatever X is (and so does a raw pointer, whose overload exists only to static_assert), and
// the error comes later, from deep inside cereal. deeply_serializable() also looks inside the
// standard types multicore supports, so sendable<T> is true only for what really compiles.

template <class... Ts>
struct type_list {};

/// The types a standard template is made of; empty for everything else (cereal's answer about
/// a user type with a serialize() function has to be trusted).
template <class T>
struct nested_types {
  using type = type_list<>;
};
template <class E, class A>
struct nested_types<std::vector<E, A>> {
  using type = type_list<E>;
};
template <class E, class A>
struct nested_types<std::deque<E, A>> {
  using type = type_list<E>;
};
template <class E, class A>
struct nested_types<std::list<E, A>> {
  using type = type_list<E>;
};
template <class E, class A>
struct nested_types<std::forward_list<E, A>> {
  using type = type_list<E>;
};
template <class E, std::size_t N>
struct nested_types<std::array<E, N>> {
  using type = type_list<E>;
};
template <class E>
struct nested_types<std::valarray<E>> {
  using type = type_list<E>;
};
template <class K, class C, class A>
struct nested_types<std::set<K, C, A>> {
  using type = type_list<K>;
};
template <class K, class C, class A>
struct nested_types<std::multiset<K, C, A>> {
  using type = type_list<K>;
};
template <class K, class H, class E, class A>
struct nested_types<std::unordered_set<K, H, E, A>> {
  using type = type_list<K>;
};
template <class K, class H, class E, class A>
struct nested_types<std::unordered_multiset<K, H, E, A>> {
  using type = type_list<K>;
};
template <class K, class V, class C, class A>
struct nested_types<std::map<K, V, C, A>> {
  using type = type_list<K, V>;
};
template <class K, class V, class C, class A>
struct nested_types<std::multimap<K, V, C, A>> {
  using type = type_list<K, V>;
};
template <class K, class V, class H, class E, class A>
struct nested_types<std::unordered_map<K, V, H, E, A>> {
  using type = type_list<K, V>;
};
template <class K, class V, class H, class E, class A>
struct nested_types<std::unordered_multimap<K, V, H, E, A>> {
  using type = type_list<K, V>;
};
template <class A, class B>
struct nested_types<std::pair<A, B>> {
  using type = type_list<A, B>;
};
template <class... Ts>
struct nested_types<std::tuple<Ts...>> {
  using type = type_list<Ts...>;
};
template <class E>
struct nested_types<std::optional<E>> {
  using type = type_list<E>;
};
template <class... Ts>
struct nested_types<std::variant<Ts...>> {
  using type = type_list<Ts...>;
};
template <class E, class D>
struct nested_types<std::unique_ptr<E, D>> {
  using type = type_list<E>;
};
template <class E>
struct nested_types<std::shared_ptr<E>> {
  using type = type_list<E>;
};
template <class E>
struct nested_types<std::weak_ptr<E>> {
  using type = type_list<E>;
};

template <class T>
struct is_basic_string : std::false_type {};
template <class C, class Traits, class A>
struct is_basic_string<std::basic_string<C, Traits, A>> : std::true_type {};

template <class Out, class In, class T>
consteval bool deeply_serializable();

template <class Out, class In, class... Ts>
consteval bool all_deeply_serializable(type_list<Ts...> /*types*/) {
  return (deeply_serializable<Out, In, Ts>() && ...);
}

/// cereal can save `T` with `Out` and load it with `In`, and so every type `T` is made of.
template <class Out, class In, class T>
consteval bool deeply_serializable() {
  if constexpr (std::is_pointer_v<T> || address_value<T> || view_value<T> ||
                std::is_reference_v<T> || std::is_void_v<T>) {
    return false;
  } else if constexpr (std::is_same_v<Out, cereal::JSONOutputArchive> &&
                       is_basic_string<T>::value && !std::is_same_v<T, std::string>) {
    return false;  // the JSON archives only have std::string overloads
  } else if constexpr (!cereal::traits::is_output_serializable<T, Out>::value ||
                       !cereal::traits::is_input_serializable<T, In>::value) {
    return false;
  } else {
    return all_deeply_serializable<Out, In>(typename nested_types<T>::type{});
  }
}

/// cereal's binary format can carry it (see CheckedBinaryOutputArchive), and a decode can make
/// one to load into.
template <class T>
concept cereal_value =
    deeply_serializable<CheckedBinaryOutputArchive, CheckedBinaryInputArchive, T>() &&
    std::default_initializable<T> && std::move_constructible<T>;

/// cereal's JSON archives can carry it.
template <class T>
concept json_value =
    deeply_serializable<cereal::JSONOutputArchive, cereal::JSONInputArchive, T>() &&
    std::default_initializable<T> && std::move_constructible<T>;

/// Can cross a process boundary as a task argument or result. Pointers and views never can,
/// even with a Codec: their decoded value could only point into the receiver's buffers.
template <class T>
concept sendable = !address_value<T> && !view_value<T> &&
                   (has_codec<T> || raw_value<T> || raw_sequence<T> || cereal_value<T>);

// ---------------------------------------------------------------------------------------------
// Compile-time checks with messages a user can act on. Each check fires at most one
// static_assert: the branches are exclusive, so a pointer is reported as a pointer only.

/// Fails to compile, naming the problem, when an argument of (decayed) type `T` cannot be sent
/// to a worker. `Index` is the 1-based argument number: it appears in the compiler's
/// "in instantiation of" note, which tells the user which argument is wrong.
template <std::size_t Index, class T>
constexpr void check_argument() {
  if constexpr (is_reference_wrapper<T>::value) {
    static_assert(!is_reference_wrapper<T>::value,
                  "multicore: argument is a std::reference_wrapper (std::ref, std::cref): an "
                  "address, which means nothing in another process. Pass the value itself.");
  } else if constexpr (address_value<T>) {
    static_assert(!address_value<T>,
                  "multicore: argument is a raw pointer; its address means nothing in another "
                  "process. Pass the value itself, a std::vector or a std::string instead.");
  } else if constexpr (view_value<T>) {
    static_assert(!view_value<T>,
                  "multicore: std::string_view and std::span point into the caller's memory; "
                  "pass a std::string or std::vector instead.");
  } else if constexpr (codec_declared<T> && !has_codec<T>) {
    static_assert(has_codec<T>,
                  "multicore: multicore::Codec<T> is specialised but lacks static void "
                  "encode(multicore::Writer&, const T&) or static T decode(multicore::Reader&).");
  } else if constexpr (!sendable<T>) {
    static_assert(sendable<T>,
                  "multicore: this type cannot be sent to a worker process: make it trivially "
                  "copyable, give it a cereal serialize() function, or specialise "
                  "multicore::Codec<T>.");
  }
}

/// Fails to compile, naming the problem, when a function's result type `T` (as returned, not
/// decayed) cannot be sent back from a worker. `void` is fine.
template <class T>
constexpr void check_result() {
  if constexpr (std::is_reference_v<T>) {
    static_assert(!std::is_reference_v<T>,
                  "multicore: the function returns a reference; return a value instead.");
  } else if constexpr (!std::is_void_v<T>) {
    using V = std::remove_cv_t<T>;
    if constexpr (is_reference_wrapper<V>::value) {
      static_assert(!is_reference_wrapper<V>::value,
                    "multicore: the function returns a std::reference_wrapper: an address, which "
                    "means nothing in another process. Return a value instead.");
    } else if constexpr (address_value<V>) {
      static_assert(!address_value<V>,
                    "multicore: the function returns a raw pointer; its address means nothing in "
                    "another process. Return a value instead.");
    } else if constexpr (view_value<V>) {
      static_assert(!view_value<V>,
                    "multicore: std::string_view and std::span point into the worker's memory; "
                    "return a std::string or std::vector instead.");
    } else if constexpr (codec_declared<V> && !has_codec<V>) {
      static_assert(has_codec<V>,
                    "multicore: multicore::Codec<T> is specialised but lacks static void "
                    "encode(multicore::Writer&, const T&) or static T decode(multicore::Reader&).");
    } else if constexpr (!sendable<V>) {
      static_assert(sendable<V>,
                    "multicore: this type cannot be sent to a worker process: make it trivially "
                    "copyable, give it a cereal serialize() function, or specialise "
                    "multicore::Codec<T>.");
    }
  }
}

/// A callable that can be sent to a worker: a function pointer, a trivially copyable class (a
/// lambda capturing nothing or only trivially copyable values; sent as bytes, valid in a fork
/// of the same program), or a sendable function object.
template <class F>
concept sendable_callable = (std::is_pointer_v<F> &&
                             std::is_function_v<std::remove_pointer_t<F>>) ||
                            (std::is_class_v<F> && std::is_trivially_copyable_v<F>) || sendable<F>;

/// Fails to compile when the (decayed) callable type `F` cannot be sent to a worker.
template <class F>
constexpr void check_callable() {
  static_assert(sendable_callable<F>,
                "multicore: this callable cannot be sent to a worker process: use a function, a "
                "lambda that captures only trivially copyable values, or a function object with "
                "a cereal serialize() function (std::function cannot cross a process boundary).");
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding.

/// What went wrong, for the message of the SerializationError that replaces the exception being
/// handled. Call only inside a catch block.
inline std::string describe_current_exception() {
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

/// The SerializationError for a failed decode of a T, describing the exception being handled:
/// "multicore: could not decode T: <what went wrong>".
template <class T>
SerializationError decode_error() {
  return SerializationError("multicore: could not decode " + type_name<T>() + ": " +
                            describe_current_exception());
}

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
  if (length > in.remaining()) {
    throw SerializationError("multicore: truncated data: needed " + std::to_string(length) +
                             " bytes, " + std::to_string(in.remaining()) + " left");
  }
  return in.take(static_cast<std::size_t>(length));
}

/// Whether `token` is a JSON number of the shapes rapidjson's writer produces (cereal writes
/// integers and doubles): `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at most 20 significant digits, or
/// `-?[1-9](\.[0-9]{1,16})?e-?[1-9][0-9]{0,2}` within a double's range. Anything else is corrupt:
/// rapidjson 1.1.0, the version Debian 12 ships, misparses and even hits undefined behaviour on
/// some numbers outside these shapes, e.g. "0.0e300" (fixed upstream after 1.1.0, see
/// https://github.com/Tencent/rapidjson/issues/1724 for the same release's stack.h issue).
inline bool canonical_json_number(std::string_view token) {
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
inline void check_json_text(std::span<const std::byte> text) {
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

/// Appends `value` as [u64 byte length][one cereal archive in format F].
template <Format F, class T>
void encode_cereal(Writer& out, const T& value) {
  const std::size_t start = out.size();
  out.extend(sizeof(std::uint64_t));
  if constexpr (F == Format::json) {
    WriterStreambuf buffer(out);
    std::ostream stream(&buffer);
    {
      // NoIndent: no indentation; the archive writes its closing brace when destroyed.
      cereal::JSONOutputArchive archive(stream, cereal::JSONOutputArchive::Options::NoIndent());
      archive(cereal::make_nvp("value", value));
    }
    if (buffer.failed() || !stream) throw std::bad_alloc();
    check_json_text(out.bytes().subspan(start + sizeof(std::uint64_t)));
  } else {
    CheckedBinaryOutputArchive archive(out);
    archive(value);
  }
  patch_length(out, start);
}

/// Reads what encode_cereal<F> wrote.
template <Format F, class T>
T decode_cereal(Reader& in) {
  const std::span<const std::byte> frame = take_frame(in);
  T value{};
  if constexpr (F == Format::json) {
    check_json_text(frame);
    SpanStreambuf buffer(frame);
    std::istream stream(&buffer);
    // rapidjson parses the whole frame as one document and fails on anything after it, so a
    // successful load has consumed exactly the framed bytes.
    cereal::JSONInputArchive archive(stream);
    archive(cereal::make_nvp("value", value));
  } else {
    CheckedBinaryInputArchive archive(frame);
    archive(value);
    if (archive.remaining() != 0) {
      throw SerializationError("multicore: corrupt data: " + std::to_string(archive.remaining()) +
                               " bytes left over after the value");
    }
  }
  return value;
}

/// Values larger than this never sit on a thread's stack inside multicore (see Stored): a
/// stack is 8 MiB at most by default, and a thread's may be much smaller, while a value's size
/// is meant to be limited only by memory. Values up to this size stay inline, allocating nothing.
inline constexpr std::size_t max_inline_value_bytes = std::size_t{4} << 10;

/// Uninitialised storage for one T.
template <class T>
struct alignas(T) RawRoom {
  std::byte bytes[sizeof(T)];
};

/// Makes the trivially copyable T whose object representation is at `bytes` in the storage at
/// `where`: copying the bytes there creates it (an implicit-lifetime type), with no copy of the
/// value through the stack.
template <class T>
T* raw_value_at(void* where, const std::byte* bytes) noexcept {
  std::memcpy(where, bytes, sizeof(T));
  return std::launder(static_cast<T*>(where));
}

template <class T>
void encode_raw_sequence(Writer& out, const T& sequence) {
  using E = typename T::value_type;
  const std::uint64_t count = sequence.size();
  const std::size_t bytes = sequence.size() * sizeof(E);
  std::byte* target = out.extend(sizeof count + bytes);
  std::memcpy(target, &count, sizeof count);
  if (bytes != 0) std::memcpy(target + sizeof count, sequence.data(), bytes);
}

/// Builds a raw sequence of a known element count from its bytes, given in pieces of any size
/// and alignment (a piece may end inside an element). Elements are copied in without the
/// zero-fill pass resize() would make first.
template <class T>
class SequenceBuilder {
  using E = typename T::value_type;
  // Room for one element that arrives in pieces, and for a batch of elements that arrive
  // misaligned: in the builder, or on the heap for an element too large for a stack.
  static constexpr bool large = sizeof(E) > max_inline_value_bytes;
  static constexpr std::size_t batch = large ? 1 : max_inline_value_bytes / sizeof(E);
  using Staging = std::conditional_t<large, std::unique_ptr<RawRoom<E>>, RawRoom<E>>;

 public:
  /// Expects `count` elements. Reserves room for all of them, or for at most `reserve_bytes`
  /// when the count is not to be trusted yet (it came from another process and its bytes have
  /// not arrived): the room then grows as they do. Throws std::bad_alloc or std::length_error.
  explicit SequenceBuilder(std::size_t count,
                           std::size_t reserve_bytes = std::numeric_limits<std::size_t>::max())
      : count_(count), left_(count * sizeof(E)) {
    reserve(std::min(count, std::max<std::size_t>(reserve_bytes / sizeof(E), 1)));
    if constexpr (large) {
      if (count != 0) partial_ = std::make_unique_for_overwrite<RawRoom<E>>();
    }
  }

  /// Bytes still expected.
  std::size_t left() const noexcept { return left_; }

  /// Appends the next bytes; at most left() of them. Never throws: if the room cannot grow, the
  /// bytes are dropped and take() throws std::bad_alloc.
  void append(std::span<const std::byte> bytes) noexcept {
    left_ -= bytes.size();
    if (failed_) return;
    const std::size_t complete = count_ - (left_ + sizeof(E) - 1) / sizeof(E);
    if (complete > sequence_.capacity()) {
      try {  // grow geometrically: the copies growing makes add up to under a third of the size
        reserve(std::min(count_, std::max(complete, 4 * sequence_.capacity())));
      } catch (...) {
        failed_ = true;
        return;
      }
    }
    if (partial_size_ != 0) {  // finish the element the previous piece began
      const std::size_t n = std::min(bytes.size(), sizeof(E) - partial_size_);
      std::memcpy(partial() + partial_size_, bytes.data(), n);
      partial_size_ += n;
      bytes = bytes.subspan(n);
      if (partial_size_ < sizeof(E)) return;
      push(std::launder(reinterpret_cast<const E*>(partial())), 1);
      partial_size_ = 0;
    }
    const std::size_t whole = bytes.size() / sizeof(E);
    append_elements(bytes.first(whole * sizeof(E)));
    partial_size_ = bytes.size() - whole * sizeof(E);
    if (partial_size_ != 0) {  // an element the next piece finishes
      std::memcpy(partial(), bytes.data() + whole * sizeof(E), partial_size_);
    }
  }

  /// The sequence; call once left() is 0. Throws std::bad_alloc if memory ran out meanwhile.
  T take() {
    if (failed_) throw std::bad_alloc();
    return std::move(sequence_);
  }

 private:
  void reserve(std::size_t elements) {
    sequence_.reserve(elements);
    advise_huge_pages(sequence_.data(), elements * sizeof(E));
  }

  void append_elements(std::span<const std::byte> bytes) noexcept {
    if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(E) == 0) {
      push(reinterpret_cast<const E*>(bytes.data()), bytes.size() / sizeof(E));
      return;
    }
    // Misaligned for E (a ring hands out pieces at any offset): through an aligned buffer that
    // stays in the L1 cache (for a large E: the staging room, one element at a time). memcpy
    // into it creates the E objects (trivially copyable types are implicit-lifetime types).
    const auto through = [&](std::byte* buffer) noexcept {
      while (!bytes.empty()) {
        const std::size_t n = std::min(bytes.size(), batch * sizeof(E));
        std::memcpy(buffer, bytes.data(), n);
        push(std::launder(reinterpret_cast<const E*>(buffer)), n / sizeof(E));
        bytes = bytes.subspan(n);
      }
    };
    if constexpr (large) {
      through(partial());
    } else {
      alignas(E) std::byte buffer[batch * sizeof(E)];
      through(buffer);
    }
  }

  std::byte* partial() noexcept {
    if constexpr (large) {
      return partial_->bytes;
    } else {
      return partial_.bytes;
    }
  }

  void push(const E* first, std::size_t n) noexcept {
    if constexpr (requires { sequence_.append(first, n); }) {
      sequence_.append(first, n);  // a string's insert() would build a temporary copy first
    } else {
      sequence_.insert(sequence_.end(), first, first + n);
    }
  }

  T sequence_;
  std::size_t count_;
  std::size_t left_;
  Staging partial_;
  std::size_t partial_size_ = 0;
  bool failed_ = false;
};

/// Reads a raw sequence's element count, checked against the `available` bytes that are to
/// hold its elements before anything is allocated, so a corrupt count cannot ask for a huge
/// buffer.
template <class T>
std::size_t read_sequence_count(Reader& in, std::uint64_t available) {
  using E = typename T::value_type;
  std::uint64_t count = 0;
  in.read(&count, sizeof count);
  if (count > available / sizeof(E)) {
    throw SerializationError("multicore: corrupt data: a sequence claims " + std::to_string(count) +
                             " elements of " + std::to_string(sizeof(E)) + " bytes, but only " +
                             std::to_string(available) + " bytes are left");
  }
  return static_cast<std::size_t>(count);
}

template <class T>
T decode_raw_sequence(Reader& in) {
  const std::size_t n = read_sequence_count<T>(in, in.remaining());
  SequenceBuilder<T> builder(n);
  builder.append(in.take(builder.left()));
  return builder.take();
}

/// Raw sequences at least this large travel as their message's tail (see wire.hpp) when they
/// are its last value. Smaller ones are cheap to copy through a buffer that stays in cache.
inline constexpr std::size_t min_tail_bytes = std::size_t{64} << 10;

/// Values that can form a message's tail: raw sequences encoded as such, not by a Codec.
template <class T>
concept tail_value = raw_sequence<T> && !has_codec<T>;

/// The tail `value` forms as its message's last value in `format`: the bytes of its elements
/// when it is a large enough raw sequence, else 0.
template <class T>
std::size_t tail_bytes_of(const T& value, Format format) noexcept {
  if constexpr (tail_value<T>) {
    const std::size_t bytes = value.size() * sizeof(typename T::value_type);
    if (format == Format::binary && bytes >= min_tail_bytes) return bytes;
  }
  return 0;
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

/// Throws unless `format` is one of the enumerators (it may come from a corrupt record).
inline void check_format(Format format) {
  if (format != Format::binary && format != Format::json) {
    throw SerializationError("multicore: unknown format " +
                             std::to_string(static_cast<int>(format)));
  }
}

template <class T>
std::string json_unsupported_message() {
  const std::string name = type_name<T>();
  return "multicore: Format::json needs a cereal serialize() function for " + name +
         " (or a multicore::Codec<" + name + "> specialisation), or use Format::binary";
}

/// Appends `value` to `out` in `format`, using the first encoding that applies:
///   Format::binary: Codec<T>, then raw bytes, then a raw sequence, then cereal's binary archive;
///   Format::json:   Codec<T>, then cereal's JSON archive; a type with neither throws.
/// Throws SerializationError naming the type if encoding fails; `out` is then left as it was.
template <class T>
void encode(Writer& out, const T& value, Format format) {
  static_assert(!codec_declared<T> || has_codec<T>,
                "multicore: multicore::Codec<T> is specialised but lacks static void "
                "encode(multicore::Writer&, const T&) or static T decode(multicore::Reader&).");
  static_assert(sendable<T>,
                "multicore: this type cannot be sent to a worker process: make it trivially "
                "copyable, give it a cereal serialize() function, or specialise "
                "multicore::Codec<T>.");
  const std::size_t start = out.size();
  try {
    check_format(format);
    if constexpr (has_codec<T>) {
      Codec<T>::encode(out, value);
    } else if (format == Format::json) {
      if constexpr (json_value<T>) {
        encode_cereal<Format::json>(out, value);
      } else {
        throw SerializationError(json_unsupported_message<T>());
      }
    } else if constexpr (raw_value<T>) {
      out.write(std::addressof(value), sizeof(T));
    } else if constexpr (raw_sequence<T>) {
      encode_raw_sequence(out, value);
    } else {
      encode_cereal<Format::binary>(out, value);
    }
  } catch (const abi::__forced_unwind&) {  // thread cancellation must keep unwinding
    out.resize(start);
    throw;
  } catch (...) {
    out.resize(start);
    throw SerializationError("multicore: could not encode " + type_name<T>() + ": " +
                             describe_current_exception());
  }
}

/// Reads one value that encode() wrote in `format` from `in`. The bytes are untrusted: on any
/// failure (truncated or corrupt data, a type mismatch, out of memory, an exception from a
/// Codec) it throws SerializationError naming the type, e.g. "multicore: could not decode
/// std::vector<int>: truncated data: needed 8 bytes, 3 left". It never reads out of bounds.
template <class T>
T decode(Reader& in, Format format) {
  static_assert(!codec_declared<T> || has_codec<T>,
                "multicore: multicore::Codec<T> is specialised but lacks static void "
                "encode(multicore::Writer&, const T&) or static T decode(multicore::Reader&).");
  static_assert(sendable<T>,
                "multicore: this type cannot be sent to a worker process: make it trivially "
                "copyable, give it a cereal serialize() function, or specialise "
                "multicore::Codec<T>.");
  try {
    check_format(format);
    if constexpr (has_codec<T>) {
      return Codec<T>::decode(in);
    } else if (format == Format::json) {
      if constexpr (json_value<T>) {
        return decode_cereal<Format::json, T>(in);
      } else {
        throw SerializationError(json_unsupported_message<T>());
      }
    } else if constexpr (raw_value<T>) {
      return decode_raw_value<T>(in);
    } else if constexpr (raw_sequence<T>) {
      return decode_raw_sequence<T>(in);
    } else {
      return decode_cereal<Format::binary, T>(in);
    }
  } catch (const abi::__forced_unwind&) {
    throw;
  } catch (...) {
    throw decode_error<T>();
  }
}

/// decode() in place: makes the T in `where` (uninitialised storage for one) instead of
/// returning it, so that a large value never passes through a stack. Throws what decode()
/// throws, and then leaves no T in `where`.
template <class T>
T* decode_at(void* where, Reader& in, Format format) {
  if constexpr (raw_value<T> && !has_codec<T>) {
    if (format == Format::binary) {
      try {
        return raw_value_at<T>(where, in.take(sizeof(T)).data());
      } catch (...) {
        throw decode_error<T>();
      }
    }
  }
  // decode()'s result is a prvalue: it is made right in `where` (guaranteed copy elision); the
  // decoders under it return their one local object, which compilers build there too (NRVO).
  return ::new (where) T(decode<T>(in, format));
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

  /// Replaces the value by one decoded from `in`, in place (see decode_at()).
  T& decode(Reader& in, Format format) {
    return construct([&](void* where) { decode_at<T>(where, in, format); });
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

}  // namespace multicore::detail
