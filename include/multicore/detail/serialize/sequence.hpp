// SPDX-License-Identifier: MIT
// Raw sequences (a count and one memcpy), their builder for bytes that arrive in pieces, and
// which values travel as a message's tail.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../util/huge_pages.hpp"
#include "../util/linkage.hpp"
#include "traits.hpp"

namespace multicore::detail {

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

/// Throws SerializationError: a sequence claims `count` elements of `element_bytes` bytes, more
/// than the `available` bytes hold.
[[noreturn]] MULTICORE_DECL void throw_sequence_too_long(std::uint64_t count,
                                                         std::size_t element_bytes,
                                                         std::uint64_t available);

/// Reads a raw sequence's element count, checked against the `available` bytes that are to
/// hold its elements before anything is allocated, so a corrupt count cannot ask for a huge
/// buffer.
template <class T>
std::size_t read_sequence_count(Reader& in, std::uint64_t available) {
  using E = typename T::value_type;
  std::uint64_t count = 0;
  in.read(&count, sizeof count);
  if (count > available / sizeof(E)) throw_sequence_too_long(count, sizeof(E), available);
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

/// Values that can form a message's tail: those the encoding rule sends as a raw sequence.
template <class T>
concept tail_value = encoding_of<T>(Format::binary)
== Encoding::raw_sequence;

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

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL void throw_sequence_too_long(std::uint64_t count, std::size_t element_bytes,
                                            std::uint64_t available) {
  throw SerializationError("multicore: corrupt data: a sequence claims " + std::to_string(count) +
                           " elements of " + std::to_string(element_bytes) + " bytes, but only " +
                           std::to_string(available) + " bytes are left");
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
