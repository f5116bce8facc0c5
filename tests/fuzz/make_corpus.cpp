// SPDX-License-Identifier: MIT
// Writes the fuzzers' seed corpora: small valid inputs made with the library's own encoders, so
// they match the wire format exactly. Usage (from the repository root, after building the fuzz
// preset):  build/fuzz/tests/fuzz/tools/fuzz_make_corpus tests/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <multicore/detail/front/map_state.hpp>
#include <multicore/detail/protocol/entries.hpp>
#include <multicore/detail/protocol/request.hpp>
#include <multicore/detail/protocol/wire.hpp>
#include <multicore/detail/serialize/json.hpp>
#include <multicore/detail/serialize/serialize.hpp>
#include <string>
#include <vector>

#include "fuzz_types.hpp"

namespace {

namespace detail = multicore::detail;
using multicore::Format;
using multicore::Writer;

/// Index of T in fuzz::ValueTypes (or fuzz::void_type).
template <class T, std::size_t I = 0>
constexpr std::uint8_t type_index() {
  if constexpr (std::is_void_v<T>) {
    return static_cast<std::uint8_t>(fuzz::void_type);
  } else if constexpr (std::is_same_v<T, std::tuple_element_t<I, fuzz::ValueTypes>>) {
    return static_cast<std::uint8_t>(I);
  } else {
    return type_index<T, I + 1>();
  }
}

void put(Writer& out, const void* data, std::size_t n) { out.write(data, n); }

template <class T>
void value_outcome(Writer& out, const T& value, Format format) {
  detail::write_outcome(out, detail::Outcome::value);
  detail::encode(out, value, format);
}

/// Appends a response message for `task_id` whose payload is `payload`, the last `tail_bytes`
/// of it announced as its tail.
void response(Writer& stream, std::uint64_t task_id, const Writer& payload,
              std::uint64_t tail_bytes = 0) {
  detail::ResponseHeader h;
  h.task_id = task_id;
  h.payload_bytes = payload.size();
  h.tail_bytes = tail_bytes;
  h.run_nanos = 1000;
  put(stream, &h, sizeof h);
  put(stream, payload.data(), payload.size());
}

struct Job {
  std::uint8_t type;
  bool chunk = false;
  std::uint8_t items = 1;
};

/// A scheduler-mode input: configuration, then the response stream.
std::vector<std::uint8_t> scheduler_input(std::initializer_list<Job> jobs, Format format,
                                          unsigned claimed, std::uint16_t piece,
                                          const Writer& stream, bool bad_head = false,
                                          bool large_ring = false) {
  std::vector<std::uint8_t> in(fuzz::scheduler_prefix, 0);
  in[0] = 0;
  in[1] = static_cast<std::uint8_t>((jobs.size() - 1) | (format == Format::json ? 4u : 0u) |
                                    (claimed << 3) | (bad_head ? 0x40u : 0u) |
                                    (large_ring ? 0x80u : 0u));
  std::size_t j = 0;
  for (const Job& job : jobs) {
    in[2 + j++] =
        static_cast<std::uint8_t>(job.type | (job.chunk ? 0x20u : 0u) | ((job.items - 1u) << 6));
  }
  in[6] = static_cast<std::uint8_t>(piece & 0xff);
  in[7] = static_cast<std::uint8_t>(piece >> 8);
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(stream.data());
  in.insert(in.end(), bytes, bytes + stream.size());
  return in;
}

std::vector<std::uint8_t> decoder_input(std::uint8_t type, unsigned op, Format format,
                                        std::uint8_t expected, const Writer& payload) {
  std::vector<std::uint8_t> in{
      1, type, static_cast<std::uint8_t>(op | (format == Format::json ? 4u : 0u)), expected};
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(payload.data());
  in.insert(in.end(), bytes, bytes + payload.size());
  return in;
}

void save(const std::filesystem::path& dir, const std::string& name,
          const std::vector<std::uint8_t>& bytes) {
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  std::printf("%s/%s: %zu bytes\n", dir.c_str(), name.c_str(), bytes.size());
}

fuzz::Particle particle() { return {"electron", {1.5f, -2.0f, 0.25f}, 11, true}; }

void response_corpus(const std::filesystem::path& dir) {
  using StringMap = std::map<std::string, std::vector<double>>;
  {  // one int, in one piece
    Writer payload, stream;
    value_outcome(payload, 42, Format::binary);
    response(stream, 1, payload);
    save(dir, "submit_int", scheduler_input({{type_index<int>()}}, Format::binary, 1, 0, stream));
  }
  {  // a string longer than the ring, then a vector, published 7 bytes at a time
    Writer a, b, stream;
    value_outcome(a, std::string(300, 'x'), Format::binary);
    value_outcome(b, std::vector<int>{1, 2, 3}, Format::binary);
    response(stream, 1, a);
    response(stream, 2, b);
    save(dir, "submit_string_vector_pieces",
         scheduler_input({{type_index<std::string>()}, {type_index<std::vector<int>>()}},
                         Format::binary, 2, 7, stream));
  }
  {  // JSON: map, optional, variant
    Writer a, b, c, stream;
    value_outcome(a, StringMap{{"a", {1.0, 2.5}}, {"b", {}}}, Format::json);
    value_outcome(b, std::optional<std::string>("maybe"), Format::json);
    value_outcome(c, std::variant<int, std::string>(std::string("v")), Format::json);
    response(stream, 1, a);
    response(stream, 2, b);
    response(stream, 3, c);
    save(dir, "submit_json_three",
         scheduler_input({{type_index<StringMap>()},
                          {type_index<std::optional<std::string>>()},
                          {type_index<std::variant<int, std::string>>()}},
                         Format::json, 3, 0, stream));
  }
  {  // a remote error, then void
    Writer a, b, stream;
    detail::write_outcome(a, detail::Outcome::remote_error);
    detail::write_string(a, "std::runtime_error");
    detail::write_string(a, "boom");
    detail::write_outcome(b, detail::Outcome::value);
    response(stream, 1, a);
    response(stream, 2, b);
    save(dir, "submit_remote_error_void",
         scheduler_input({{type_index<fuzz::Particle>()}, {type_index<void>()}}, Format::binary, 2,
                         0, stream));
  }
  {  // a serialization error, a user type, a Codec type, a recursive type
    Writer a, b, c, d, stream;
    detail::write_outcome(a, detail::Outcome::serialization_error);
    detail::write_string(a, "multicore: could not encode");
    value_outcome(b, particle(), Format::binary);
    value_outcome(c, fuzz::Celsius{21.5}, Format::binary);
    auto node = std::make_unique<fuzz::Node>();
    node->value = 1;
    node->next = std::make_unique<fuzz::Node>();
    value_outcome(d, node, Format::binary);
    response(stream, 1, a);
    response(stream, 2, b);
    response(stream, 3, c);
    response(stream, 4, d);
    save(dir, "submit_four_kinds",
         scheduler_input({{type_index<int>()},
                          {type_index<fuzz::Particle>()},
                          {type_index<fuzz::Celsius>()},
                          {type_index<std::unique_ptr<fuzz::Node>>()}},
                         Format::binary, 4, 0, stream));
  }
  {  // map chunks: outcomes layout (a value and an error), raw layout (ints)
    Writer a, b, stream;
    const std::uint64_t two = 2;
    put(a, &two, sizeof two);
    auto layout = detail::ChunkLayout::outcomes;
    put(a, &layout, 1);
    value_outcome(a, particle(), Format::binary);
    detail::write_outcome(a, detail::Outcome::remote_error);
    detail::write_string(a, "int");
    detail::write_string(a, "");
    const std::uint64_t three = 3;
    put(b, &three, sizeof three);
    layout = detail::ChunkLayout::raw;
    put(b, &layout, 1);
    for (const int v : {7, 8, 9}) put(b, &v, sizeof v);
    response(stream, 1, a);
    response(stream, 2, b);
    save(dir, "chunks",
         scheduler_input({{type_index<fuzz::Particle>(), true, 2}, {type_index<int>(), true, 3}},
                         Format::binary, 2, 0, stream));
  }
  {  // a failed chunk; shared pointers that share
    Writer a, b, stream;
    const std::uint64_t zero = 0;
    put(a, &zero, sizeof zero);
    const auto layout = detail::ChunkLayout::failed;
    put(a, &layout, 1);
    detail::write_outcome(a, detail::Outcome::serialization_error);
    detail::write_string(a, "multicore: corrupt chunk");
    using Shared =
        std::tuple<std::shared_ptr<int>, std::shared_ptr<std::string>, std::shared_ptr<int>>;
    auto one = std::make_shared<int>(1);
    value_outcome(b, Shared{one, std::make_shared<std::string>("s"), one}, Format::binary);
    response(stream, 1, a);
    response(stream, 2, b);
    save(dir, "chunk_failed_shared",
         scheduler_input({{type_index<std::string>(), true, 1}, {type_index<Shared>()}},
                         Format::binary, 2, 0, stream));
  }
  {  // the worker claims two answers but sent one (truncated), then a bad head
    Writer a, stream;
    value_outcome(a, 5, Format::binary);
    response(stream, 1, a);
    save(dir, "truncated",
         scheduler_input({{type_index<int>()}, {type_index<int>()}}, Format::binary, 2, 0, stream));
    save(dir, "bad_head",
         scheduler_input({{type_index<int>()}, {type_index<int>()}}, Format::binary, 1, 0, stream,
                         true));
  }
  // Tails: a raw sequence that ends the payload may be announced as its tail, which the parent
  // streams straight into the result when the head (outcome, count) matches it.
  const std::vector<int> ints = [] {
    std::vector<int> v(100);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int>(i * 0x01010101u);
    return v;
  }();
  const auto int_bytes = [](const std::vector<int>& v) { return v.size() * sizeof(int); };
  // A small tail answer, a string tail longer than the ring, a vector<int> tail, then an
  // ordinary answer. The parent reads this small ring in pieces of 32 bytes, so every answer
  // takes the tail path (the large_ring seeds below reach the in-place path): published as
  // fast as the ring takes them, the vector's elements start misaligned and one is split by the
  // ring's end; published 7 bytes at a time, the pieces split elements.
  for (const std::uint16_t piece : {std::uint16_t{0}, std::uint16_t{7}}) {
    Writer a, b, c, d, stream;
    value_outcome(a, std::vector<int>{1, 2, 3}, Format::binary);
    const std::string text(300, 't');
    value_outcome(b, text, Format::binary);
    value_outcome(c, ints, Format::binary);
    value_outcome(d, 6, Format::binary);
    response(stream, 1, a, 3 * sizeof(int));
    response(stream, 2, b, text.size());
    response(stream, 3, c, int_bytes(ints));
    response(stream, 4, d);
    save(dir, piece == 0 ? "tail_answers" : "tail_answers_pieces",
         scheduler_input({{type_index<std::vector<int>>()},
                          {type_index<std::string>()},
                          {type_index<std::vector<int>>()},
                          {type_index<int>()}},
                         Format::binary, 4, piece, stream));
  }
  {  // the head's count disagrees with tail_bytes: one element too few (the tail then starts in
     // the head's count, which no longer ends the head), and a count that decodes fine but
     // whose tail_bytes leave one element in the head; both fall back to the whole payload
    Writer a, b, stream;
    detail::write_outcome(a, detail::Outcome::value);
    const std::uint64_t fewer = ints.size() - 1;
    put(a, &fewer, sizeof fewer);
    put(a, ints.data(), int_bytes(ints));
    value_outcome(b, ints, Format::binary);
    response(stream, 1, a, int_bytes(ints));
    response(stream, 2, b, int_bytes(ints) - sizeof(int));
    save(dir, "tail_count_mismatch",
         scheduler_input({{type_index<std::vector<int>>()}, {type_index<std::vector<int>>()}},
                         Format::binary, 2, 0, stream));
  }
  {  // tail_bytes > payload_bytes: an invalid header
    Writer a, stream;
    value_outcome(a, ints, Format::binary);
    response(stream, 1, a, a.size() + 1);
    save(dir, "tail_past_payload",
         scheduler_input({{type_index<std::vector<int>>()}}, Format::binary, 1, 0, stream));
  }
  {  // a remote error whose message is announced as a tail; a tail on a type that has none
     // (Particle); a whole payload announced as the tail (no head at all). In pieces, so that
     // even the small answer reaches open_tail() rather than the fast path.
    Writer a, b, c, stream;
    detail::write_outcome(a, detail::Outcome::remote_error);
    detail::write_string(a, "std::runtime_error");
    const std::string message(280, 'm');
    detail::write_string(a, message);
    value_outcome(b, particle(), Format::binary);
    value_outcome(c, ints, Format::binary);
    response(stream, 1, a, message.size());
    response(stream, 2, b, 3 * sizeof(float));
    response(stream, 3, c, c.size());
    save(dir, "tail_remote_error",
         scheduler_input({{type_index<std::vector<int>>()},
                          {type_index<fuzz::Particle>()},
                          {type_index<std::vector<int>>()}},
                         Format::binary, 3, 31, stream));
  }
  {  // JSON answers have no tails: announced anyway, it is decoded whole
    Writer a, stream;
    value_outcome(a, std::string(250, 'j'), Format::json);
    response(stream, 1, a, 100);
    save(dir, "tail_json",
         scheduler_input({{type_index<std::string>()}}, Format::json, 1, 0, stream));
  }
  {  // the worker claims its answer was sent, but the stream stops inside the tail; then the
     // same with an impossible head after it
    Writer a, stream;
    value_outcome(a, ints, Format::binary);
    response(stream, 1, a, int_bytes(ints));
    const auto* bytes = reinterpret_cast<const std::byte*>(stream.data());
    Writer cut;
    put(cut, bytes, stream.size() - 150);
    save(dir, "tail_truncated",
         scheduler_input({{type_index<std::vector<int>>()}}, Format::binary, 1, 13, cut));
    save(dir, "tail_truncated_bad_head",
         scheduler_input({{type_index<std::vector<int>>()}}, Format::binary, 0, 13, cut, true));
  }
  {  // a large ring: small answers, one with a tail, are read in place, a large one arrives in
     // pieces; then the worker claims one answer more than it sent (truncated)
    Writer a, b, c, d, stream;
    value_outcome(a, 42, Format::binary);
    value_outcome(b, std::vector<int>{1, 2, 3}, Format::binary);
    const std::string text(1000, 'l');
    value_outcome(c, text, Format::binary);
    value_outcome(d, particle(), Format::binary);
    response(stream, 1, a);
    response(stream, 2, b, 3 * sizeof(int));
    response(stream, 3, c, text.size());
    Writer three;  // the first three answers
    put(three, stream.data(), stream.size());
    response(stream, 4, d);
    const std::initializer_list<Job> jobs{{type_index<int>()},
                                          {type_index<std::vector<int>>()},
                                          {type_index<std::string>()},
                                          {type_index<fuzz::Particle>()}};
    save(dir, "large_ring", scheduler_input(jobs, Format::binary, 4, 0, stream, false, true));
    save(dir, "large_ring_truncated",
         scheduler_input(jobs, Format::binary, 4, 0, three, false, true));
  }
  // Decoder mode.
  for (const Format format : {Format::binary, Format::json}) {
    const std::string suffix = format == Format::json ? "_json" : "_binary";
    {
      Writer p;
      detail::encode(p, StringMap{{"k", {0.5}}}, format);
      save(dir, "decode_map" + suffix, decoder_input(type_index<StringMap>(), 0, format, 0, p));
    }
    {
      Writer p;
      detail::encode(p, std::list<std::string>{"a", "bc"}, format);
      save(dir, "decode_list" + suffix,
           decoder_input(type_index<std::list<std::string>>(), 0, format, 0, p));
    }
    {
      Writer p;
      detail::encode(p, std::unordered_map<int, std::string>{{1, "one"}}, format);
      save(dir, "decode_unordered_map" + suffix,
           decoder_input(type_index<std::unordered_map<int, std::string>>(), 0, format, 0, p));
    }
    {
      Writer p;
      value_outcome(p, std::array<std::string, 2>{"x", "y"}, format);
      save(dir, "outcome_array" + suffix,
           decoder_input(type_index<std::array<std::string, 2>>(), 1, format, 0, p));
    }
    {
      Writer p;
      value_outcome(p, std::valarray<double>{1.0, 2.0}, format);
      save(dir, "outcome_valarray" + suffix,
           decoder_input(type_index<std::valarray<double>>(), 1, format, 0, p));
    }
  }
  {  // a raw sequence, its elements aligned (decode) and misaligned (after the outcome byte)
    Writer p, q;
    detail::encode(p, std::vector<int>{1, -2, 3}, Format::binary);
    save(dir, "decode_vector_int",
         decoder_input(type_index<std::vector<int>>(), 0, Format::binary, 0, p));
    value_outcome(q, std::vector<int>{4, 5, -6}, Format::binary);
    save(dir, "outcome_vector_int",
         decoder_input(type_index<std::vector<int>>(), 1, Format::binary, 0, q));
  }
  {
    Writer p;
    detail::encode(p, std::vector<bool>{true, false, true}, Format::binary);
    save(dir, "decode_vector_bool",
         decoder_input(type_index<std::vector<bool>>(), 0, Format::binary, 0, p));
  }
  {
    Writer p;
    const std::uint64_t one = 1;
    put(p, &one, sizeof one);
    const auto layout = detail::ChunkLayout::outcomes;
    put(p, &layout, 1);
    value_outcome(p, std::string("item"), Format::json);
    save(dir, "read_chunk_json", decoder_input(type_index<std::string>(), 2, Format::json, 1, p));
  }
}

/// fuzz_ring: an opcode byte, then its arguments (see fuzz_types.hpp).
class RingScript {
 public:
  explicit RingScript(unsigned capacity_log2) {
    bytes_.push_back(static_cast<std::uint8_t>(capacity_log2 - 3));
  }
  RingScript& op(fuzz::RingOp o) {
    bytes_.push_back(static_cast<std::uint8_t>(o));
    return *this;
  }
  RingScript& op(fuzz::RingOp o, std::uint16_t n) {
    op(o);
    bytes_.push_back(static_cast<std::uint8_t>(n & 0xff));
    bytes_.push_back(static_cast<std::uint8_t>(n >> 8));
    return *this;
  }
  RingScript& tamper(fuzz::RingOp o, std::uint8_t how, std::uint64_t value) {
    op(o);
    bytes_.push_back(how);
    for (int i = 0; i < 8; ++i) bytes_.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
    return *this;
  }
  RingScript& byte(std::uint8_t b) {
    bytes_.push_back(b);
    return *this;
  }
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<std::uint8_t> bytes_;
};

/// fuzz_ring's stream mode: an opcode byte, then its arguments (see fuzz_types.hpp).
class StreamScript {
 public:
  explicit StreamScript(unsigned capacity_log2) {
    static_assert(fuzz::stream_mode % 8 == 0, "the mode byte's value modulo 8 picks the capacity");
    bytes_.push_back(static_cast<std::uint8_t>(fuzz::stream_mode + capacity_log2 - 6));
  }
  StreamScript& send(std::uint16_t payload_bytes, std::uint8_t tail_share) {
    bytes_.push_back(static_cast<std::uint8_t>(fuzz::StreamOp::send));
    bytes_.push_back(static_cast<std::uint8_t>(payload_bytes & 0xff));
    bytes_.push_back(static_cast<std::uint8_t>(payload_bytes >> 8));
    bytes_.push_back(tail_share);
    return *this;
  }
  StreamScript& pump(int times = 1) {
    for (int i = 0; i < times; ++i)
      bytes_.push_back(static_cast<std::uint8_t>(fuzz::StreamOp::pump));
    return *this;
  }
  StreamScript& receive(bool take_tail) {
    bytes_.push_back(static_cast<std::uint8_t>(fuzz::StreamOp::receive));
    bytes_.push_back(take_tail ? 1 : 0);
    return *this;
  }
  StreamScript& reset() {
    bytes_.push_back(static_cast<std::uint8_t>(fuzz::StreamOp::reset));
    return *this;
  }
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<std::uint8_t> bytes_;
};

void ring_corpus(const std::filesystem::path& dir) {
  using fuzz::RingOp;
  save(dir, "small_ring",
       RingScript(4)
           .op(RingOp::write, 10)
           .op(RingOp::read_exact, 10)
           .op(RingOp::write, 20)
           .op(RingOp::peek)
           .op(RingOp::consume, 5)
           .op(RingOp::read_some, 100)
           .op(RingOp::check)
           .bytes());
  save(dir, "wrap_mid_record",
       RingScript(12)
           .op(RingOp::write, 3000)
           .op(RingOp::read_some, 3000)
           .op(RingOp::write, 2000)
           .op(RingOp::peek)
           .op(RingOp::consume, 1096)
           .op(RingOp::peek)
           .op(RingOp::read_exact, 904)
           .op(RingOp::check)
           .bytes());
  save(dir, "bad_tail",
       RingScript(6)
           .op(RingOp::write, 5)
           .tamper(RingOp::set_tail, 1, 100)
           .op(RingOp::write, 100)
           .op(RingOp::check)
           .op(RingOp::reset_writer)
           .op(RingOp::write, 3)
           .op(RingOp::read_exact, 3)
           .bytes());
  save(dir, "bad_head",
       RingScript(8)
           .op(RingOp::write, 50)
           .op(RingOp::read_some, 20)
           .tamper(RingOp::set_head, 0, ~std::uint64_t{0})
           .op(RingOp::read_some, 100)
           .op(RingOp::check)
           .op(RingOp::reset_reader)
           .op(RingOp::reattach)
           .byte(1)
           .op(RingOp::write, 7)
           .op(RingOp::peek)
           .bytes());
  // Stream mode: answers larger than a 64-byte ring (pieces of 8 bytes, so headers arrive cut),
  // with tails taken and refused, the sender waiting for room.
  save(dir, "stream_small_ring",
       StreamScript(6)
           .send(200, 128)
           .pump(2)
           .receive(true)
           .pump(3)
           .receive(true)
           .send(20, 0)
           .receive(false)
           .pump()
           .send(150, 255)
           .pump()
           .receive(false)
           .bytes());
  // Small answers whole in a large ring's piece, read in place; one with a tail.
  save(dir, "stream_in_place",
       StreamScript(13)
           .send(100, 0)
           .receive(true)
           .send(400, 200)
           .receive(true)
           .send(0, 0)
           .receive(false)
           .send(3000, 250)
           .receive(true)
           .bytes());
  // A new worker: both ends forget an answer half sent.
  save(dir, "stream_reset",
       StreamScript(7).send(500, 100).pump(2).receive(true).reset().send(60, 30).bytes());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus directory, e.g. tests/fuzz/corpus>\n", argv[0]);
    return 2;
  }
  const std::filesystem::path root(argv[1]);
  response_corpus(root / "fuzz_response");
  ring_corpus(root / "fuzz_ring");
  return 0;
}
