// SPDX-License-Identifier: MIT
// Single-producer, single-consumer byte ring in shared memory, carrying framed messages.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace multicore::detail {

inline constexpr std::size_t cache_line_size = 64;

/// The shared half of a ring. `head` and `tail` count bytes ever published and consumed; they
/// only grow (2^64 bytes never wrap in practice), and their difference is what is readable.
/// Each sits on its own cache line and has exactly one writer:
///   head: the producer process; tail: the consumer process.
/// Bytes become visible only when `head` moves past them (release), so a producer that dies
/// mid-copy leaves nothing half-written behind: the consumer never sees those bytes.
struct RingControl {
  alignas(cache_line_size) std::atomic<std::uint64_t> head{0};
  /// Messages the producer has fully published (it counts one after moving `head` past its
  /// last byte). On head's cache line: the consumer reads both for one line transfer.
  std::atomic<std::uint64_t> messages{0};
  alignas(cache_line_size) std::atomic<std::uint64_t> tail{0};
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "rings need lock-free 64-bit atomics to work across processes");
static_assert(offsetof(RingControl, tail) == cache_line_size);
static_assert(sizeof(RingControl) == 2 * cache_line_size);

/// Where a ring lives: its control block and `capacity` data bytes (a power of two).
struct RingMemory {
  RingControl* control = nullptr;
  std::byte* data = nullptr;
  std::size_t capacity = 0;
};

/// Most bytes either side of a ring should copy before it publishes them (producer) or gives
/// them back (consumer). Without a bound, a large payload moves in lock step: the producer
/// fills the whole ring while the consumer waits for it, then the consumer empties it while
/// the producer waits. In pieces of an eighth of the ring, both copy at the same time.
inline std::span<const std::byte> ring_piece(std::span<const std::byte> bytes,
                                             std::size_t capacity) noexcept {
  return bytes.first(std::min(bytes.size(), capacity / 8));
}

/// The producer's view of a ring. One per process side; keeps private copies of its own
/// index and of the last tail it saw, so the common case touches no shared cache line twice.
class RingWriter {
 public:
  RingWriter() = default;
  explicit RingWriter(RingMemory memory) noexcept
      : memory_(memory), head_(memory.control->head.load(std::memory_order_relaxed)) {
    refresh();
  }

  std::size_t capacity() const noexcept { return memory_.capacity; }
  /// The consumer published an impossible tail; the ring can no longer be used.
  bool corrupt() const noexcept { return corrupt_; }

  /// Bytes that can be written now without waiting.
  std::size_t writable() noexcept {
    if (memory_.capacity - (head_ - cached_tail_) == 0) refresh();
    return memory_.capacity - static_cast<std::size_t>(head_ - cached_tail_);
  }

  /// Copies as much of `bytes` as fits and publishes it. Never blocks; returns bytes written.
  std::size_t write_some(std::span<const std::byte> bytes) noexcept {
    std::size_t n = std::min(bytes.size(), writable());
    if (n < bytes.size()) {
      refresh();
      n = std::min(bytes.size(), writable());
    }
    if (n == 0) return 0;
    copy_in(bytes.data(), n);
    head_ += n;
    memory_.control->head.store(head_, std::memory_order_release);
    return n;
  }

  /// Counts a message whose bytes are all published (see RingControl::messages).
  void count_message() noexcept {
    const std::uint64_t n = memory_.control->messages.load(std::memory_order_relaxed);
    memory_.control->messages.store(n + 1, std::memory_order_release);
  }

  /// Forgets everything in the ring. Only valid while no consumer process is attached (the
  /// worker on the other side is dead and not yet replaced).
  void reset() noexcept {
    head_ = cached_tail_ = 0;
    corrupt_ = false;
    memory_.control->tail.store(0, std::memory_order_relaxed);
    memory_.control->messages.store(0, std::memory_order_relaxed);
    memory_.control->head.store(0, std::memory_order_release);
  }

 private:
  // The tail comes from another process, which may be broken: a value outside
  // [head - capacity, head] is never trusted (it would make us overwrite unread bytes or copy
  // past the buffer). The ring is then marked corrupt and reports no space.
  void refresh() noexcept {
    const std::uint64_t tail = memory_.control->tail.load(std::memory_order_acquire);
    if (tail > head_ || head_ - tail > memory_.capacity) {
      corrupt_ = true;
      cached_tail_ = head_ - memory_.capacity;
      return;
    }
    cached_tail_ = tail;
  }

  void copy_in(const std::byte* from, std::size_t n) noexcept {
    if (n == 0) return;  // `from` may be null then, and memcpy(_, nullptr, 0) is undefined
    const std::size_t at = static_cast<std::size_t>(head_) & (memory_.capacity - 1);
    const std::size_t first = std::min(n, memory_.capacity - at);
    std::memcpy(memory_.data + at, from, first);
    std::memcpy(memory_.data, from + first, n - first);
  }

  RingMemory memory_;
  std::uint64_t head_ = 0;
  std::uint64_t cached_tail_ = 0;
  bool corrupt_ = false;
};

/// The consumer's view of a ring.
class RingReader {
 public:
  RingReader() = default;
  explicit RingReader(RingMemory memory) noexcept
      : memory_(memory), tail_(memory.control->tail.load(std::memory_order_relaxed)) {
    refresh();
  }

  std::size_t capacity() const noexcept { return memory_.capacity; }
  /// The producer published an impossible head; the ring can no longer be used.
  bool corrupt() const noexcept { return corrupt_; }

  /// Bytes published and not yet consumed: a lower bound, since the shared head is re-read only
  /// when the ring looks empty (so a wait predicate should test readable() > 0, not >= n).
  std::size_t readable() noexcept {
    if (cached_head_ == tail_) refresh();
    return static_cast<std::size_t>(cached_head_ - tail_);
  }

  /// The readable bytes that are contiguous in memory (up to the wrap point). Stay valid until
  /// consume().
  std::span<const std::byte> peek() noexcept {
    const std::size_t n = readable();
    const std::size_t at = static_cast<std::size_t>(tail_) & (memory_.capacity - 1);
    return {memory_.data + at, std::min(n, memory_.capacity - at)};
  }

  /// Copies exactly `out.size()` bytes if that many are readable; otherwise copies nothing.
  bool read_exact(std::span<std::byte> out) noexcept {
    if (readable() < out.size()) {
      refresh();
      if (static_cast<std::size_t>(cached_head_ - tail_) < out.size()) return false;
    }
    copy_out(out.data(), out.size());
    consume(out.size());
    return true;
  }

  /// Copies up to `out.size()` readable bytes and consumes them; returns how many.
  std::size_t read_some(std::span<std::byte> out) noexcept {
    refresh();
    const std::size_t n = std::min(out.size(), static_cast<std::size_t>(cached_head_ - tail_));
    copy_out(out.data(), n);
    consume(n);
    return n;
  }

  /// Releases `n` bytes back to the producer; `n` must not exceed what peek() or readable()
  /// last showed.
  void consume(std::size_t n) noexcept {
    tail_ += n;
    memory_.control->tail.store(tail_, std::memory_order_release);
  }

  /// Messages the producer says it has fully published. Read it before looking at the bytes:
  /// every message it counts is then entirely readable.
  std::uint64_t messages() const noexcept {
    return memory_.control->messages.load(std::memory_order_acquire);
  }

  /// Forgets everything in the ring. Only valid while no producer process is attached.
  void reset() noexcept {
    tail_ = cached_head_ = 0;
    corrupt_ = false;
    memory_.control->head.store(0, std::memory_order_relaxed);
    memory_.control->messages.store(0, std::memory_order_relaxed);
    memory_.control->tail.store(0, std::memory_order_release);
  }

 private:
  // Same distrust as RingWriter::refresh: a head outside [tail, tail + capacity] marks the
  // ring corrupt and reads as empty.
  void refresh() noexcept {
    const std::uint64_t head = memory_.control->head.load(std::memory_order_acquire);
    if (head < tail_ || head - tail_ > memory_.capacity) {
      corrupt_ = true;
      cached_head_ = tail_;
      return;
    }
    cached_head_ = head;
  }

  void copy_out(std::byte* to, std::size_t n) const noexcept {
    if (n == 0) return;  // `to` may be null then, and memcpy(nullptr, _, 0) is undefined
    const std::size_t at = static_cast<std::size_t>(tail_) & (memory_.capacity - 1);
    const std::size_t first = std::min(n, memory_.capacity - at);
    std::memcpy(to, memory_.data + at, first);
    std::memcpy(to + first, memory_.data, n - first);
  }

  RingMemory memory_;
  std::uint64_t tail_ = 0;
  std::uint64_t cached_head_ = 0;
  bool corrupt_ = false;
};

}  // namespace multicore::detail
