// SPDX-License-Identifier: MIT
// cereal's binary format, written straight into a Writer and read back from untrusted bytes.
#pragma once

#include <cereal/archives/binary.hpp>  // cereal's standard archives: see raw_fallback
#include <cereal/cereal.hpp>
#include <cereal/types/memory.hpp>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <valarray>
#include <vector>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "traits.hpp"

namespace multicore::detail {

/// Deepest nesting of values a binary decode accepts; each value cereal loads inside another
/// counts one level (a std::unique_ptr link costs about 5). Measured at about 260 bytes of stack
/// per level with -O0 -fsanitize=address, so the limit costs at most ~1 MiB of stack.
inline constexpr std::size_t max_binary_nesting = 4096;

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
  /// Where the bytes go, for a Codec<T> element.
  Writer& writer() noexcept { return out_; }

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
  /// The bytes left, for a Codec<T> element.
  Reader& reader() noexcept { return in_; }

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

// The encoding rule inside cereal values (see traits.hpp): an element with a Codec<T> is written
// by its Codec (rule 1, preferred by cereal even when T has cereal functions too: see the
// cereal::specialize below), the user's cereal functions are cereal's business (rule 2), and a
// plain raw value goes as its bytes, a std::vector of them as one memcpy (rule 3).

template <codec_element T>
void CEREAL_SAVE_FUNCTION_NAME(CheckedBinaryOutputArchive& archive, const T& value) {
  Codec<T>::encode(archive.writer(), value);
}

template <codec_element T>
void CEREAL_LOAD_FUNCTION_NAME(CheckedBinaryInputArchive& archive, T& value) {
  value = Codec<T>::decode(archive.reader());
}

/// A plain raw value that cereal cannot serialize on its own goes as its bytes. (Asking cereal's
/// standard archives, which never see these overloads, keeps the constraint from depending on
/// itself; a std::array or std::complex of raw values has cereal's functions, which write the
/// same bytes.)
template <class T>
concept raw_fallback =
    plain_raw<T> && !std::is_arithmetic_v<T> && std::default_initializable<T> &&
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

// A std::vector of raw_fallback elements: one memcpy instead of one call per element (cereal's
// own overload does this for arithmetic elements). The same bytes as element by element.
template <raw_fallback E, class A>
void CEREAL_SAVE_FUNCTION_NAME(CheckedBinaryOutputArchive& archive,
                               const std::vector<E, A>& vector) {
  archive(cereal::make_size_tag(static_cast<cereal::size_type>(vector.size())));
  archive.saveBinary(vector.data(), vector.size() * sizeof(E));
}

template <raw_fallback E, class A>
void CEREAL_LOAD_FUNCTION_NAME(CheckedBinaryInputArchive& archive, std::vector<E, A>& vector) {
  cereal::size_type size = 0;
  archive(cereal::make_size_tag(size));
  if (size > archive.remaining() / sizeof(E)) {  // before allocating for elements not there
    throw SerializationError("multicore: corrupt data: a vector claims " + std::to_string(size) +
                             " elements of " + std::to_string(sizeof(E)) + " bytes, but only " +
                             std::to_string(archive.remaining()) + " bytes are left");
  }
  vector.resize(static_cast<std::size_t>(size));
  archive.loadBinary(vector.data(), vector.size() * sizeof(E));
}

}  // namespace multicore::detail

// Polymorphic types registered with cereal bind to these archives too, and save_minimal /
// load_minimal pairs are matched across them.
CEREAL_REGISTER_ARCHIVE(multicore::detail::CheckedBinaryOutputArchive)
CEREAL_REGISTER_ARCHIVE(multicore::detail::CheckedBinaryInputArchive)
CEREAL_SETUP_ARCHIVE_TRAITS(multicore::detail::CheckedBinaryInputArchive,
                            multicore::detail::CheckedBinaryOutputArchive)

namespace cereal {
// A Codec<T> element is written by its Codec even when T has cereal functions too (rule 1).
template <multicore::detail::codec_element T>
struct specialize<multicore::detail::CheckedBinaryOutputArchive, T,
                  specialization::non_member_load_save> {};
template <multicore::detail::codec_element T>
struct specialize<multicore::detail::CheckedBinaryInputArchive, T,
                  specialization::non_member_load_save> {};
}  // namespace cereal
