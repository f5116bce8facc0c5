// SPDX-License-Identifier: MIT
// The value types the response fuzzer decodes and the layout of its inputs, shared with the
// seed-corpus generator (make_corpus.cpp) so that seeds and harness always agree.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <multicore/codec.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <valarray>
#include <variant>
#include <vector>

namespace fuzz {

/// A user type with a cereal serialize() function.
struct Particle {
  std::string name;
  std::vector<float> position;
  std::int64_t id = 0;
  bool charged = false;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(name, position, id, charged);
  }
};

/// A recursive type: decoding must bound its depth, not overflow the stack.
struct Node {
  std::int32_t value = 0;
  std::unique_ptr<Node> next;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(value, next);
  }
};

/// A type with a Codec whose decode() throws a non-multicore exception on bad data.
struct Celsius {
  double degrees = 0;
};

}  // namespace fuzz

template <>
struct multicore::Codec<fuzz::Celsius> {
  static void encode(multicore::Writer& out, const fuzz::Celsius& c) {
    out.write(&c.degrees, sizeof c.degrees);
  }
  static fuzz::Celsius decode(multicore::Reader& in) {
    fuzz::Celsius c;
    in.read(&c.degrees, sizeof c.degrees);
    if (!(c.degrees >= -273.15)) throw std::domain_error("below absolute zero");
    return c;
  }
};

namespace fuzz {

/// What the worker's answers may claim to be. Index value_type_count stands for void.
using ValueTypes =
    std::tuple<int, std::string, std::vector<int>, std::map<std::string, std::vector<double>>,
               std::optional<std::string>, std::variant<int, std::string>, Particle,
               std::unique_ptr<Node>,
               std::tuple<std::shared_ptr<int>, std::shared_ptr<std::string>, std::shared_ptr<int>>,
               std::vector<bool>, std::list<std::string>, std::unordered_map<int, std::string>,
               std::valarray<double>, Celsius, std::array<std::string, 2>>;
inline constexpr std::size_t value_type_count = std::tuple_size_v<ValueTypes>;
inline constexpr std::size_t void_type = value_type_count;

/// Calls `f.template operator()<T>()` with T the `index`-th value type, or void for
/// `void_type`; any larger index wraps around.
template <class F>
void with_type(std::size_t index, F&& f) {
  index %= value_type_count + 1;
  if (index == void_type) {
    f.template operator()<void>();
    return;
  }
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (void)((index == I ? (f.template operator()<std::tuple_element_t<I, ValueTypes>>(), true)
                       : false) ||
           ...);
  }
  (std::make_index_sequence<value_type_count>{});
}

// ---- fuzz_response input layout ---------------------------------------------------------------
// byte 0: mode: even -> drive the Scheduler, odd -> call the decoders directly.
//
// Scheduler mode: one worker whose response ring carries the input's stream.
//   byte 1: bits 0-1: jobs - 1; bit 2: Format::json; bits 3-5: answers the worker claims to have
//           sent; bit 6: after the whole stream, the worker publishes an impossible head; bit 7:
//           a large ring (large_response_ring_bytes) instead of a small one
//   bytes 2-5: one per job: bits 0-4: its result type (with_type); bit 5: a map chunk instead of
//           a submit; bits 6-7: items in the chunk - 1
//   bytes 6-7: how many bytes the worker publishes at a time, little-endian (0: as many as fit)
//   bytes 8-: the response stream (ResponseHeader + payload, ...; a payload may end with a tail)
// Decoder mode:
//   byte 1: the value type (with_type)
//   byte 2: bits 0-1: 0 decode, 1 read_outcome, 2 read_chunk; bit 2: Format::json
//   byte 3: items expected by read_chunk
//   bytes 4-: the bytes decoded
inline constexpr std::size_t scheduler_prefix = 8;
inline constexpr std::size_t decoder_prefix = 4;
inline constexpr std::size_t max_jobs = 4;
/// Ring size of the fuzzed worker: small, so answers wrap and stream through in pieces. The
/// parent reads a ring in pieces of an eighth of it (stream.hpp), so here even a header arrives
/// in pieces.
inline constexpr std::size_t response_ring_bytes = 256;
/// The large ring: its pieces hold a header and a small payload, which the parent then reads in
/// place.
inline constexpr std::size_t large_response_ring_bytes = 4096;

// ---- fuzz_ring input layout ---------------------------------------------------------------------
// byte 0: below stream_mode, the ring alone: capacity 2^(3 + byte % 10), 8 ... 4096 bytes, then
// RingOps; from stream_mode on, whole messages through a ring (MessageSender, AnswerReceiver):
// capacity 2^(6 + byte % 8), 64 ... 8192 bytes, then StreamOps.
// Each operation is an opcode byte followed by its arguments (missing bytes read as 0).
inline constexpr std::uint8_t stream_mode = 200;

enum class RingOp : std::uint8_t {
  write = 0,           ///< u16 n: write_some of n bytes
  read_exact = 1,      ///< u16 n
  read_some = 2,       ///< u16 n
  peek = 3,            ///<
  consume = 4,         ///< u16 n: consume min(n, peek().size())
  set_tail = 5,        ///< u8 how, u64 value: a broken consumer publishes a tail
  set_head = 6,        ///< u8 how, u64 value: a broken producer publishes a head
  reset_writer = 7,    ///< writer.reset(), and a new consumer attaches
  reset_reader = 8,    ///< reader.reset(), and a new producer attaches
  check = 9,           ///< writable() and readable() stay within capacity
  reattach = 10,       ///< u8 which: a new view of the same ring (only while not tampered with)
  ring_op_count = 11,  ///< opcodes wrap modulo this
};

enum class StreamOp : std::uint8_t {
  send = 0,     ///< u16 n, u8 t: start sending an answer of n % (4 capacity + 1) payload
                ///< bytes, its last n * t / 255 announced as a tail (if none is in progress)
  pump = 1,     ///< the sender moves its message on
  receive = 2,  ///< u8 take: the receiver reads; it takes a tail when take is odd
  reset = 3,    ///< both ends forget everything (a new worker)
  stream_op_count = 4,  ///< opcodes wrap modulo this
};

}  // namespace fuzz
