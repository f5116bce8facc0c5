// SPDX-License-Identifier: MIT
// Byte buffers for encoding values, and the Codec<T> customisation point.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include "detail/util/huge_pages.hpp"
#include "detail/util/linkage.hpp"
#include "errors.hpp"

namespace multicore {

namespace detail {
// The throws of Writer and Reader, out of line: the messages are built once, in the compiled
// part (util/linkage.hpp), not in every function that reads or writes.

/// Throws std::length_error: a Writer would grow past its maximum size.
[[noreturn]] MULTICORE_DECL void throw_writer_overflow();

/// Throws SerializationError "multicore: truncated data: needed N bytes, M left".
[[noreturn]] MULTICORE_DECL void throw_truncated(std::size_t needed, std::size_t left);
}  // namespace detail

/// Growable byte buffer that encoders append to.
///
/// Appending never zero-fills (`extend` and `resize` hand out uninitialised bytes), and the
/// capacity grows geometrically, so a sequence of small appends is amortised O(1). Movable,
/// not copyable; not thread-safe. Throws std::bad_alloc when memory runs out and
/// std::length_error when a size would overflow `std::size_t`.
///
///     multicore::Writer out;
///     out.write(&header, sizeof header);
///     std::memcpy(out.extend(payload.size()), payload.data(), payload.size());
class Writer {
 public:
  Writer() noexcept = default;
  Writer(Writer&& other) noexcept
      : data_(std::move(other.data_)),
        size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}
  Writer& operator=(Writer&& other) noexcept {
    data_ = std::move(other.data_);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
    return *this;
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  ~Writer() = default;

  /// Appends the `n` bytes at `data` (`data` may be null when `n` is 0).
  void write(const void* data, std::size_t n) {
    if (n == 0) return;
    std::memcpy(extend(n), data, n);
  }

  /// Appends `n` uninitialised bytes and returns a pointer to the first; the caller fills them.
  /// The pointer is valid until the next call that may grow the buffer.
  std::byte* extend(std::size_t n) {
    const std::size_t old_size = size_;
    resize(grown_size(n));
    return data_.get() + old_size;
  }

  /// Makes room for at least `n` bytes in total, so appends up to that size do not reallocate.
  void reserve(std::size_t n) {
    if (n > capacity_) grow(n);
  }

  /// Number of bytes written so far.
  std::size_t size() const noexcept { return size_; }
  /// Number of bytes the buffer holds before it has to reallocate.
  std::size_t capacity() const noexcept { return capacity_; }

  /// The bytes written so far.
  std::span<const std::byte> bytes() const noexcept { return {data_.get(), size_}; }
  /// The bytes written so far, writable (to back-patch a length, for example).
  std::span<std::byte> bytes() noexcept { return {data_.get(), size_}; }
  /// Start of the buffer; null while nothing was ever reserved.
  std::byte* data() noexcept { return data_.get(); }
  /// Start of the buffer; null while nothing was ever reserved.
  const std::byte* data() const noexcept { return data_.get(); }

  /// Forgets the contents and keeps the capacity.
  void clear() noexcept { size_ = 0; }

  /// Forgets the contents; keeps the capacity only up to `max_kept` bytes, so a buffer that
  /// once held something huge does not pin that memory for good.
  void clear(std::size_t max_kept) noexcept {
    size_ = 0;
    if (capacity_ > max_kept) {
      data_.reset();
      capacity_ = 0;
    }
  }

  /// Shrinks to `n` bytes, or grows to `n` with the new bytes uninitialised.
  void resize(std::size_t n) {
    if (n > max_size) detail::throw_writer_overflow();
    if (n > capacity_) reserve(n < capacity_ * 2 ? capacity_ * 2 : std::max(n, min_capacity));
    size_ = n;
  }

 private:
  static constexpr std::size_t min_capacity = 64;
  // Sizes stay below half the address space, so doubling the capacity cannot overflow.
  static constexpr std::size_t max_size = static_cast<std::size_t>(-1) / 2;

  /// reserve() when it must reallocate: out of line (detail/util/linkage.hpp), so that the
  /// appends inlined in every encoder stay small.
  MULTICORE_DECL void grow(std::size_t n);

  std::size_t grown_size(std::size_t n) const {
    if (n > max_size - size_) detail::throw_writer_overflow();
    return size_ + n;
  }

  std::unique_ptr<std::byte[]> data_;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

/// Reads the bytes a Writer produced, front to back, without copying them.
///
/// Every read is bounds-checked: asking for more bytes than are left throws
/// multicore::SerializationError ("multicore: truncated data: needed N bytes, M left") and
/// leaves the position unchanged, so corrupt input can never make it read past the end. The
/// bytes must outlive the Reader. Not thread-safe.
class Reader {
 public:
  /// Reads `bytes` from the start.
  explicit Reader(std::span<const std::byte> bytes) noexcept : bytes_(bytes) {}

  /// Copies the next `n` bytes to `out` (`out` may be null when `n` is 0).
  void read(void* out, std::size_t n) {
    const std::span<const std::byte> source = take(n);
    if (n != 0) std::memcpy(out, source.data(), n);
  }

  /// Returns the next `n` bytes (a view into the underlying buffer) and moves past them.
  std::span<const std::byte> take(std::size_t n) {
    if (n > remaining()) detail::throw_truncated(n, remaining());
    const std::span<const std::byte> result = bytes_.subspan(position_, n);
    position_ += n;
    return result;
  }

  /// Bytes not read yet.
  std::size_t remaining() const noexcept { return bytes_.size() - position_; }
  /// Bytes read so far.
  std::size_t position() const noexcept { return position_; }

 private:
  std::span<const std::byte> bytes_;
  std::size_t position_ = 0;
};

/// Customisation point: specialise it to choose how a type is encoded. A specialisation takes
/// priority over every built-in encoding (row 1 of the encoding rule, see README "Callables and
/// values"), in both Format::binary and Format::json, wherever T is sent: as an argument,
/// result or map item, and inside containers and other cereal values (for a class or enum T;
/// arithmetic types inside cereal values keep cereal's encoding). In Format::json a T inside a
/// JSON value is the base64 of the bytes `encode` wrote. A Codec that copies the bytes, as this
/// one does, forces raw bytes for a trivially copyable type that has cereal functions:
///
///     template <>
///     struct multicore::Codec<Point> {
///       static void encode(multicore::Writer& out, const Point& p) { out.write(&p, sizeof p); }
///       static Point decode(multicore::Reader& in) {
///         Point p;
///         in.read(&p, sizeof p);
///         return p;
///       }
///     };
///
/// `decode` reads the bytes `encode` wrote, from a Reader that may hold corrupt data (it is
/// bounds-checked, so reading through it is safe); anything either function throws reaches the
/// caller as multicore::SerializationError. Specialise before the first use of the type in a
/// translation unit. The primary template is left undefined on purpose.
template <class T>
struct Codec;

// ---- definitions (see detail/util/linkage.hpp) -----------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL void Writer::grow(std::size_t n) {
  auto bigger = std::make_unique_for_overwrite<std::byte[]>(n);
  detail::advise_huge_pages(bigger.get(), n);
  if (size_ != 0) std::memcpy(bigger.get(), data_.get(), size_);
  data_ = std::move(bigger);
  capacity_ = n;
}

MULTICORE_DECL void detail::throw_writer_overflow() {
  throw std::length_error("multicore: Writer size overflows size_t");
}

MULTICORE_DECL void detail::throw_truncated(std::size_t needed, std::size_t left) {
  throw SerializationError("multicore: truncated data: needed " + std::to_string(needed) +
                           " bytes, " + std::to_string(left) + " left");
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore
