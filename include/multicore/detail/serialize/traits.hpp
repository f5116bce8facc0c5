// SPDX-License-Identifier: MIT
// Which types can cross a process boundary, and how each is sent: Codec<T>, raw bytes, a raw
// sequence or cereal. Compile-time checks with messages a user can act on.
#pragma once

#include <array>
#include <bitset>
#include <cereal/archives/binary.hpp>  // user_cereal asks cereal's own archives
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
#include <chrono>
#include <complex>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <forward_list>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <valarray>
#include <variant>
#include <vector>

#include "../../codec.hpp"
#include "../../options.hpp"

namespace cereal {
class JSONOutputArchive;
class JSONInputArchive;
}  // namespace cereal

namespace multicore::detail {

// Defined in binary_archive.hpp; the traits below that name them are evaluated only where it is
// included (serialize.hpp includes everything).
class CheckedBinaryOutputArchive;
class CheckedBinaryInputArchive;

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

/// Trivially copyable: its object representation can be sent as a memcpy (whether it is depends
/// on the encoding rule, see encoding_of()). Decoding trusts the bytes to be one: corrupt
/// bytes give a wrong value (or, for a bool or enum member, an invalid one), never a bad read.
template <class T>
concept raw_value = std::is_trivially_copyable_v<T> && std::is_object_v<T> && !std::is_array_v<T> &&
                    !address_value<T> && !view_value<T>;

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

// ---------------------------------------------------------------------------------------------
// The encoding rule: how a value of type T is sent, the same in every place a value crosses
// (arguments, results, map items and blocks, tails, size hints, both formats, inside cereal
// values). In this order:
//   1. Codec<T> when specialised;
//   2. the user's own cereal functions (member or free, versioned or not, any of serialize,
//      save/load, save_minimal/load_minimal);
//   3. raw bytes for trivially copyable values, one memcpy (or a message's tail) for a
//      std::vector or std::basic_string of them;
//   4. cereal for standard containers and the rest.
// In Format::json rows 3 and 4 are cereal's JSON archive (raw bytes are not JSON).

template <class T>
struct is_std_leaf : std::false_type {};
template <class Rep, class Period>
struct is_std_leaf<std::chrono::duration<Rep, Period>> : std::true_type {};
template <class Clock, class Duration>
struct is_std_leaf<std::chrono::time_point<Clock, Duration>> : std::true_type {};
template <class E>
struct is_std_leaf<std::complex<E>> : std::true_type {};
template <std::size_t N>
struct is_std_leaf<std::bitset<N>> : std::true_type {};

/// A type cereal has its own functions for: arithmetic types, enums, pointers (cereal's only
/// static_asserts), standard templates.
template <class T>
concept cereal_builtin =
    std::is_arithmetic_v<T> || std::is_enum_v<T> || std::is_pointer_v<T> || is_std_leaf<T>::value ||
    !std::is_same_v<typename nested_types<T>::type, type_list<>> ||
    is_basic_string<T>::value;

/// The user wrote cereal functions for T; cereal's own functions for standard types do not
/// count. (Asked of cereal's standard archives, which never see multicore's overloads, so the
/// answer cannot depend on itself.)
template <class T>
concept user_cereal =
    !cereal_builtin<T> &&
    (cereal::traits::detail::count_output_serializers<T, cereal::BinaryOutputArchive>::value != 0 ||
     cereal::traits::detail::count_input_serializers<T, cereal::BinaryInputArchive>::value != 0);

template <class T>
consteval bool sent_raw();

template <class... Ts>
consteval bool all_sent_raw(type_list<Ts...> /*types*/) {
  return (sent_raw<Ts>() && ...);
}

/// Row 3 applies: trivially copyable, and neither T nor a type a standard T is made of (the E of
/// a std::array<E, N> or std::optional<E>) has a Codec or the user's cereal functions.
template <class T>
consteval bool sent_raw() {
  if constexpr (!raw_value<T> || has_codec<T> || user_cereal<T>) {
    return false;
  } else {
    return all_sent_raw(typename nested_types<T>::type{});
  }
}

/// Sent as a memcpy of its object representation (in Format::binary).
template <class T>
concept plain_raw = sent_raw<T>();

template <class T>
struct is_raw_sequence : std::false_type {};
// std::vector<bool> is excluded: it packs bits and has no data().
template <class E>
struct is_raw_sequence<std::vector<E, std::allocator<E>>>
    : std::bool_constant<plain_raw<E> && !std::is_same_v<E, bool>> {};
template <class E, class Traits>
struct is_raw_sequence<std::basic_string<E, Traits, std::allocator<E>>>
    : std::bool_constant<plain_raw<E>> {};

/// A contiguous std container of plain raw values: sent as an element count and one memcpy.
template <class T>
concept raw_sequence = is_raw_sequence<T>::value;

/// A value inside a cereal value (an element, a member) that its Codec<T> writes. Arithmetic
/// types are left to cereal: their functions also write cereal's own sizes and ids, which a
/// user's Codec must not change.
template <class T>
concept codec_element = has_codec<T> && !std::is_arithmetic_v<T>;

/// How a value is sent; see encoding_of().
enum class Encoding : std::uint8_t {
  codec,         ///< Codec<T>::encode / decode
  user_cereal,   ///< the user's cereal functions, through cereal's archive for the format
  raw,           ///< sizeof(T) bytes
  raw_sequence,  ///< u64 element count, then the elements' bytes (or a message's tail)
  cereal,        ///< cereal's archive for the format
  none,          ///< cannot be sent
};

/// The encoding rule (see above), decided at compile time. In Format::json, `cereal` means
/// cereal's JSON archive, which reports a type it cannot carry when encoding (json.hpp).
template <class T>
consteval Encoding encoding_of(Format format) {
  if constexpr (address_value<T> || view_value<T>) {
    return Encoding::none;  // even with a Codec: a decoded view could only point into a buffer
  } else if constexpr (has_codec<T>) {
    return Encoding::codec;
  } else if (format == Format::json) {
    return user_cereal<T> ? Encoding::user_cereal : Encoding::cereal;
  } else if constexpr (user_cereal<T>) {
    return cereal_value<T> ? Encoding::user_cereal : Encoding::none;
  } else if constexpr (plain_raw<T>) {
    return Encoding::raw;
  } else if constexpr (raw_sequence<T>) {
    return Encoding::raw_sequence;
  } else {
    return cereal_value<T> ? Encoding::cereal : Encoding::none;
  }
}

/// Can cross a process boundary as a task argument or result. Pointers and views never can,
/// even with a Codec: their decoded value could only point into the receiver's buffers.
template <class T>
concept sendable = encoding_of<T>(Format::binary)
!= Encoding::none;

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

/// A callable that can be sent to a worker: a function pointer, a pointer to a member function
/// (both sent by name), a trivially copyable class (a lambda capturing nothing or only
/// trivially copyable values; sent as bytes, valid in a fork of the same program), or a
/// sendable function object.
template <class F>
concept sendable_callable = (std::is_pointer_v<F> &&
                             std::is_function_v<std::remove_pointer_t<F>>) ||
                            std::is_member_function_pointer_v<F> ||
                            (std::is_class_v<F> && std::is_trivially_copyable_v<F>) || sendable<F>;

/// Fails to compile when the (decayed) callable type `F` cannot be sent to a worker.
template <class F>
constexpr void check_callable() {
  static_assert(!std::is_member_object_pointer_v<F>,
                "multicore: a pointer to a data member is not a callable multicore can send "
                "(its result would be a reference into the worker's copy): use a lambda, "
                "[](const T& object) { return object.member; }");
  static_assert(std::is_member_object_pointer_v<F> || sendable_callable<F>,
                "multicore: this callable cannot be sent to a worker process: use a function, a "
                "lambda that captures only trivially copyable values, or a function object with "
                "a cereal serialize() function (std::function cannot cross a process boundary).");
}

}  // namespace multicore::detail
