// SPDX-License-Identifier: MIT
// Messages through one shared-memory ring: both ends of its data and room handshakes, and the
// framing of whole messages on both sides (pieces, a header cut by the ring's end, truncation).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "../../../codec.hpp"
#include "../../protocol/wire.hpp"
#include "../../util/warm_buffer.hpp"
#include "../transport.hpp"
#include "futex.hpp"
#include "ring.hpp"

namespace multicore::detail {

// One direction of a worker's traffic (requests: parent -> worker, answers: worker -> parent)
// is a byte ring plus two handshakes, each field with one writer:
//
//  data: the producer publishes bytes (RingWriter), then rings the consumer's bell, unless the
//        consumer says it polls (it will see them without a wake-up).
//  room: a producer that finds the ring full sets `wants_room` 0 -> 1, fences and tries once
//        more; a consumer that gives bytes back fences and, seeing 1, moves it 1 -> 2 and rings
//        the producer's bell. Only the consumer makes 1 -> 2 (a compare-and-swap, so it cannot
//        resurrect a wait the producer has cancelled) and only the producer sets 0 or 1. A
//        producer that cannot sleep (the parent) takes 2 as news: room was made, send more.
//        A sleeping producer wakes on 2 too, with or without room: the bytes that answer came
//        with may be ones it had already seen free (given back before it found the ring full,
//        answered after it announced). Asleep on a spent answer, it would never be rung again
//        (consumers ring only on 1 -> 2); awake, it announces afresh.
//
// Both processes build the same StreamEnds from the shared layout; each uses one end.

/// Where one direction of traffic lives, as both processes see it.
struct StreamEnds {
  RingMemory ring;
  Doorbell* consumer_bell = nullptr;                 ///< rung when bytes are published
  Doorbell* producer_bell = nullptr;                 ///< rung when room is made for the producer
  std::atomic<std::uint32_t>* wants_room = nullptr;  ///< 0 / 1: producer waits / 2: room made
  /// Nonzero while the consumer polls for bytes itself: publishing then rings no bell. Null
  /// when the consumer never polls.
  const std::atomic<std::uint32_t>* consumer_polls = nullptr;
};

/// Most bytes either end copies before it publishes them (producer) or gives them back
/// (consumer). Without a bound, a large payload moves in lock step: the producer fills the
/// whole ring while the consumer waits, then the consumer empties it while the producer waits.
/// In pieces of an eighth of the ring, both copy at the same time.
inline std::size_t piece_bytes(std::size_t capacity) noexcept { return capacity / 8; }

/// The producing end of a stream.
class StreamProducer {
 public:
  StreamProducer() = default;
  explicit StreamProducer(const StreamEnds& ends) noexcept : ends_(ends), ring_(ends.ring) {}

  /// The consumer published an impossible tail: the stream can no longer be used.
  bool corrupt() const noexcept { return ring_.corrupt(); }
  std::size_t writable() noexcept { return ring_.writable(); }

  /// Publishes as much of `bytes` as fits now, up to a piece, and rings the consumer. Never
  /// blocks; returns the bytes published.
  std::size_t write_some(std::span<const std::byte> bytes) noexcept {
    const std::size_t n =
        ring_.write_some(bytes.first(std::min(bytes.size(), piece_bytes(ring_.capacity()))));
    if (n > 0 && (ends_.consumer_polls == nullptr ||
                  ends_.consumer_polls->load(std::memory_order_relaxed) == 0)) {
      ends_.consumer_bell->ring();
    }
    return n;
  }

  /// Counts a message whose bytes are all published (see RingControl::messages).
  void count_message() noexcept { ring_.count_message(); }

  /// Room handshake: announces that the producer waits for room (or no longer does). After
  /// announcing, try writing once more before giving up: either that finds the room the
  /// consumer made meanwhile, or the consumer sees the announcement and answers it.
  void want_room(bool on) noexcept {
    ends_.wants_room->store(on ? 1 : 0, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with StreamConsumer::consume
  }
  /// The consumer made room since want_room(true).
  bool room_made() const noexcept { return ends_.wants_room->load(std::memory_order_relaxed) == 2; }

  /// Blocks until all of `bytes` is published; while the ring is full, spins (up to `spin`'s
  /// budget), then sleeps on the producer's bell.
  void write_all(std::span<const std::byte> bytes, SpinBudget& spin) noexcept {
    while (!bytes.empty()) {
      const std::size_t n = write_some(bytes);
      bytes = bytes.subspan(n);
      if (n > 0) continue;
      want_room(true);
      wait_for(*ends_.producer_bell, spin, [&] { return ring_.writable() > 0 || room_made(); });
      want_room(false);
    }
  }

  /// Forgets every byte. Only while nobody consumes (the worker on the other side is dead).
  void reset() noexcept {
    ring_.reset();
    ends_.wants_room->store(0, std::memory_order_relaxed);
  }

 private:
  StreamEnds ends_{};
  RingWriter ring_;
};

/// The consuming end of a stream.
class StreamConsumer {
 public:
  StreamConsumer() = default;
  explicit StreamConsumer(const StreamEnds& ends) noexcept : ends_(ends), ring_(ends.ring) {}

  /// The producer published an impossible head: the stream can no longer be used.
  bool corrupt() const noexcept { return ring_.corrupt(); }

  /// Are bytes waiting? Reads only the shared indices, so any thread of the consuming process
  /// may ask, even while another one consumes.
  bool has_bytes() const noexcept {
    const RingControl& c = *ends_.ring.control;
    return c.head.load(std::memory_order_acquire) != c.tail.load(std::memory_order_relaxed);
  }
  /// Published bytes not consumed yet (a lower bound: see RingReader::readable).
  std::size_t readable() noexcept { return ring_.readable(); }
  /// Messages the producer says it has fully published. Read it before looking at the bytes:
  /// every message it counts is then entirely readable.
  std::uint64_t messages() const noexcept { return ring_.messages(); }

  /// The published bytes that are contiguous, up to a piece; valid until consume().
  std::span<const std::byte> peek() noexcept {
    const std::span<const std::byte> bytes = ring_.peek();
    return bytes.first(std::min(bytes.size(), piece_bytes(ring_.capacity())));
  }

  /// Gives `n` bytes (at most what peek() showed) back to the producer, and answers its room
  /// handshake.
  void consume(std::size_t n) noexcept {
    ring_.consume(n);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with StreamProducer::want_room
    std::uint32_t waiting = 1;
    if (ends_.wants_room->load(std::memory_order_relaxed) == 1 &&
        ends_.wants_room->compare_exchange_strong(waiting, 2)) {
      ends_.producer_bell->ring();
    }
  }

  /// Blocks until bytes are readable and returns the contiguous ones, up to a piece. Spins (up
  /// to `spin`'s budget), then calls `before_sleep` once and sleeps on the consumer's bell.
  /// With a `timeout` above 0, returns an empty span once it has passed.
  template <class BeforeSleep>
  std::span<const std::byte> wait_for_bytes(SpinBudget& spin, BeforeSleep&& before_sleep,
                                            std::chrono::nanoseconds timeout = {}) noexcept {
    for (;;) {
      const std::span<const std::byte> bytes = peek();
      if (!bytes.empty()) return bytes;
      if (!wait_for(
              *ends_.consumer_bell, spin, [&] { return ring_.readable() > 0; }, timeout,
              before_sleep)) {
        return {};
      }
    }
  }

  /// Forgets every byte. Only while nobody produces (the process on the other side is dead).
  void reset() noexcept { ring_.reset(); }

 private:
  StreamEnds ends_{};
  RingReader ring_;
};

/// Sends whole messages through a stream without ever blocking (the parent's end): a message
/// larger than the room the ring has goes in pieces, each time pump() is called.
class MessageSender {
 public:
  MessageSender() = default;
  explicit MessageSender(const StreamEnds& ends) noexcept : stream_(ends) {}

  /// Part of a message is still to be sent.
  bool busy() const noexcept { return !left_.empty(); }
  bool corrupt() const noexcept { return stream_.corrupt(); }
  /// The consumer made room for the message in progress: worth a pump(). Reads only the
  /// shared flag (set only while a message is in progress), never the sender's own state, so
  /// another thread may ask (ShmTransport::has_news, in the collector's wait, while a caller
  /// starts a message).
  bool room_made() const noexcept { return stream_.room_made(); }

  /// Starts sending `message`, which must stay valid until it is all sent. False while busy.
  bool start(std::span<const std::byte> message) noexcept {
    if (busy() || message.empty()) return false;
    left_ = message;
    pump();
    return true;
  }

  /// Sends more of the message in progress, as far as there is room. True if bytes moved.
  bool pump() noexcept {
    if (!busy()) return false;
    std::size_t moved = send_while_room();
    if (busy()) {
      stream_.want_room(true);
      moved += send_while_room();
    }
    if (!busy()) {
      stream_.want_room(false);
      stream_.count_message();
    }
    return moved > 0;
  }

  /// Drops the message in progress and every byte in the ring. Only while nobody consumes.
  void reset() noexcept {
    left_ = {};
    stream_.reset();
  }

 private:
  std::size_t send_while_room() noexcept {
    std::size_t moved = 0;
    while (!left_.empty()) {
      const std::size_t n = stream_.write_some(left_);
      if (n == 0) break;
      left_ = left_.subspan(n);
      moved += n;
    }
    return moved;
  }

  StreamProducer stream_;
  std::span<const std::byte> left_;
};

/// Reads whole answers from a stream without ever blocking and trusting nothing (the parent's
/// end): a header may be cut by the ring's end; a payload may be larger than the ring (it is
/// assembled, or its tail goes straight where the caller wants it); the worker may die or lie
/// at any byte. What is checked here is framing; whether an answer is the one the parent
/// expects is for the caller to judge.
class AnswerReceiver {
 public:
  enum class Status : std::uint8_t {
    none,       ///< no complete answer yet
    answer,     ///< header(), and payload() or tail(), form a whole answer
    violation,  ///< the stream is broken (what() says how); nothing more is read from it
  };

  AnswerReceiver() = default;
  explicit AnswerReceiver(const StreamEnds& ends) noexcept : stream_(ends) {}

  /// The next answer, if one is complete. `open_tail(header, head)` is asked where an
  /// announced tail goes once the payload before it has arrived (an AnswerTail*, or nullptr
  /// to have the whole payload assembled instead). What the last call returned (payload
  /// bytes) is valid until this is called again.
  template <class OpenTail>
  Status next(OpenTail&& open_tail) noexcept {
    if (what_ != nullptr) return Status::violation;
    finish_previous();
    // Read before the bytes: every answer it counts is then fully readable.
    const std::uint64_t sent = stream_.messages();
    for (;;) {
      if (stream_.corrupt()) return violation("an impossible ring index");
      if (in_answer_ && tail_ == nullptr && assembled() == wanted_) {
        if (wanted_ == header_.payload_bytes) {
          payload_ = assembly().bytes();
          return answered();
        }
        // All of the payload before the tail is here: the tail may go straight to its value.
        if (!dropped_) tail_ = open_tail(header_, assembly().bytes());
        if (tail_ != nullptr) {
          tail_left_ = header_.tail_bytes;
        } else {
          wanted_ = header_.payload_bytes;
          reserve_payload();
        }
        continue;
      }
      if (tail_ != nullptr && tail_left_ == 0) {
        payload_ = {};
        return answered();
      }
      const std::span<const std::byte> bytes = stream_.peek();
      if (bytes.empty()) {
        if (sent > received_) return violation("it counted an answer it did not write (truncated)");
        return Status::none;
      }
      if (tail_ != nullptr) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), tail_left_));
        tail_->append(bytes.first(n));
        tail_left_ -= n;
        stream_.consume(n);
        continue;
      }
      if (in_answer_) {  // the payload, arriving in pieces
        const auto n =
            static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), wanted_ - assembled()));
        if (!dropped_) {
          try {
            assembly().write(bytes.data(), n);
          } catch (...) {  // out of memory: the rest is read past, and the answer is lost
            drop_payload();
          }
        }
        if (dropped_) dropped_bytes_ += n;
        stream_.consume(n);
        continue;
      }
      if (header_got_ == 0 && bytes.size() >= sizeof(ResponseHeader)) {
        std::memcpy(&header_, bytes.data(), sizeof header_);
        if (!well_formed(header_)) return violation("a malformed answer header");
        in_answer_ = true;
        const std::size_t whole = sizeof(ResponseHeader) + header_.payload_bytes;
        if (bytes.size() >= whole) {  // all contiguous: read in place, give back next time
          payload_ = bytes.subspan(sizeof(ResponseHeader), header_.payload_bytes);
          consume_after_ = whole;
          return answered();
        }
        stream_.consume(sizeof(ResponseHeader));
        start_payload();
        continue;
      }
      // A header cut by the ring's end (or published in pieces).
      const std::size_t n = std::min(bytes.size(), sizeof(ResponseHeader) - header_got_);
      std::memcpy(reinterpret_cast<std::byte*>(&header_) + header_got_, bytes.data(), n);
      header_got_ += n;
      stream_.consume(n);
      if (header_got_ == sizeof(ResponseHeader)) {
        if (!well_formed(header_)) return violation("a malformed answer header");
        in_answer_ = true;
        start_payload();
      }
    }
  }

  const ResponseHeader& header() const noexcept { return header_; }
  /// The whole payload of the answer next() found, unless it went through a tail.
  std::span<const std::byte> payload() const noexcept { return payload_; }
  /// The sink the tail of the answer next() found went to, or nullptr.
  AnswerTail* tail() const noexcept { return tail_; }
  /// The answer next() found could not be kept (no memory to assemble it): its payload is
  /// empty, its bytes were read past.
  bool dropped() const noexcept { return dropped_; }
  /// How the stream is broken, after a violation.
  const char* what() const noexcept { return what_; }
  /// An answer has started arriving but is not complete.
  bool partial() const noexcept { return header_got_ != 0 || in_answer_; }

  bool has_bytes() const noexcept { return stream_.has_bytes(); }

  /// Gives back a large assembly buffer that went unused for a while.
  void release_if_cold(WarmBuffer::Clock::time_point now) noexcept {
    if (!partial()) assembly_buffer_.release_if_cold(now);
  }

  /// Forgets every byte and the answer in progress. Only while nobody produces.
  void reset() noexcept {
    stream_.reset();
    consume_after_ = 0;
    clear();
    received_ = 0;
    what_ = nullptr;
  }

 private:
  Writer& assembly() noexcept { return assembly_buffer_.get(); }

  /// Payload bytes read so far (assembled, or read past).
  std::uint64_t assembled() noexcept { return dropped_ ? dropped_bytes_ : assembly().size(); }

  /// Out of memory while assembling: reads past the rest of the payload, tail included (the
  /// worker waits for room in the ring), gives the memory back, and reports the answer dropped.
  void drop_payload() noexcept {
    dropped_ = true;
    dropped_bytes_ = assembly().size();
    wanted_ = header_.payload_bytes;
    assembly_buffer_.done();
    assembly_buffer_.release();
  }

  Status answered() noexcept {
    ++received_;
    done_ = true;
    return Status::answer;
  }

  Status violation(const char* what) noexcept {
    what_ = what;
    return Status::violation;
  }

  /// Gives back the bytes of the answer last returned (read in place), and starts afresh.
  void finish_previous() noexcept {
    if (consume_after_ != 0) {
      stream_.consume(consume_after_);
      consume_after_ = 0;
    }
    if (done_) clear();
  }

  void clear() noexcept {
    header_got_ = 0;
    in_answer_ = false;
    done_ = false;
    wanted_ = 0;
    tail_ = nullptr;
    tail_left_ = 0;
    payload_ = {};
    dropped_ = false;
    dropped_bytes_ = 0;
    assembly_buffer_.done();
  }

  void start_payload() noexcept {
    header_got_ = sizeof(ResponseHeader);
    wanted_ = header_.payload_bytes - header_.tail_bytes;
    reserve_payload();
  }

  /// The size came from the worker: reserve a bounded amount up front, grow as bytes arrive.
  void reserve_payload() noexcept {
    try {
      assembly().reserve(
          static_cast<std::size_t>(std::min<std::uint64_t>(wanted_, max_unproven_reserve_bytes)));
    } catch (...) {  // no memory now: the writes below grow it as they can
    }
  }

  StreamConsumer stream_;
  WarmBuffer assembly_buffer_{std::size_t{64} << 10};
  ResponseHeader header_{};
  std::size_t header_got_ = 0;
  bool in_answer_ = false;           // the header is complete and well formed
  bool done_ = false;                // next() returned this answer
  std::uint64_t wanted_ = 0;         // payload bytes to assemble: all, or those before the tail
  bool dropped_ = false;             // out of memory: the payload is read past (see drop_payload())
  std::uint64_t dropped_bytes_ = 0;  // payload bytes read so far, once dropped_
  AnswerTail* tail_ = nullptr;
  std::uint64_t tail_left_ = 0;
  std::span<const std::byte> payload_;
  std::size_t consume_after_ = 0;  // bytes of an answer read in place, to give back next time
  std::uint64_t received_ = 0;     // answers completed since the last reset
  const char* what_ = nullptr;
};

}  // namespace multicore::detail
