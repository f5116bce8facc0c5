// SPDX-License-Identifier: MIT
// libFuzzer target: any sequence of ring operations, including a broken other side publishing
// impossible indices, keeps every access inside the ring and every count within capacity; and
// whole messages sent through a ring by the parent's framing code (MessageSender) come out of
// it (AnswerReceiver) exactly as they went in, whatever the interleaving.
//
// The ring's data is a heap block of exactly `capacity` bytes, so ASan reports any access past
// it. A model (a deque of the bytes in flight) checks the exact contents while neither index
// has been tampered with; after tampering only the safety properties are checked: accesses stay
// in bounds (ASan), readable() and writable() never exceed the capacity, peek() stays inside
// the buffer, nothing is written or read beyond what was asked. Input layout: fuzz_types.hpp.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <multicore/detail/transport/shm/ring.hpp>
#include <multicore/detail/transport/shm/stream.hpp>
#include <span>
#include <vector>

#include "fuzz_types.hpp"

namespace {

namespace detail = multicore::detail;
using fuzz::RingOp;
using fuzz::StreamOp;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_ring: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

void require(bool condition, const char* what) {
  if (!condition) fail(what);
}

/// Reads the input front to back; past its end every value is 0.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const noexcept { return at_ >= size_; }
  std::uint8_t u8() noexcept { return at_ < size_ ? data_[at_++] : 0; }
  std::uint16_t u16() noexcept {
    const std::uint16_t low = u8();
    return static_cast<std::uint16_t>(low | (u8() << 8));
  }
  std::uint64_t u64() noexcept {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t{u8()} << (8 * i);
    return v;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

class Harness {
 public:
  explicit Harness(std::size_t capacity)
      : capacity_(capacity),
        control_(std::make_unique<detail::RingControl>()),
        data_(std::make_unique<std::byte[]>(capacity)),
        writer_(memory()),
        reader_(memory()) {}

  void run(Input& in) {
    while (!in.empty()) {
      switch (static_cast<RingOp>(in.u8() % static_cast<std::uint8_t>(RingOp::ring_op_count))) {
        case RingOp::write:
          write(in.u16());
          break;
        case RingOp::read_exact:
          read_exact(in.u16());
          break;
        case RingOp::read_some:
          read_some(in.u16());
          break;
        case RingOp::peek:
          (void)peek();
          break;
        case RingOp::consume:
          consume(in.u16());
          break;
        case RingOp::set_tail:
          control_->tail.store(tampered_value(in, control_->tail.load()));
          tampered_ = true;
          break;
        case RingOp::set_head:
          control_->head.store(tampered_value(in, control_->head.load()));
          tampered_ = true;
          break;
        case RingOp::reset_writer:
          writer_.reset();
          require(control_->head.load() == 0 && control_->tail.load() == 0,
                  "writer reset left shared indices");
          reader_ = detail::RingReader(memory());
          clean();
          break;
        case RingOp::reset_reader:
          reader_.reset();
          require(control_->head.load() == 0 && control_->tail.load() == 0,
                  "reader reset left shared indices");
          writer_ = detail::RingWriter(memory());
          clean();
          break;
        case RingOp::check:
          require(writer_.writable() <= capacity_, "writable() > capacity");
          require(reader_.readable() <= capacity_, "readable() > capacity");
          if (!tampered_) {
            require(!writer_.corrupt() && !reader_.corrupt(), "corrupt without tampering");
            require(reader_.readable() <= model_.size(), "readable() > bytes in flight");
            require(writer_.writable() <= capacity_ - model_.size(), "writable() > free space");
          }
          break;
        case RingOp::reattach:
          // A new process's view picks up the shared indices as they stand. Only meaningful
          // while they are consistent (the pool resets a ring before a new process attaches).
          if (!tampered_) {
            if ((in.u8() & 1u) == 0) {
              writer_ = detail::RingWriter(memory());
            } else {
              reader_ = detail::RingReader(memory());
            }
          }
          break;
        default:
          break;
      }
    }
  }

 private:
  detail::RingMemory memory() const noexcept { return {control_.get(), data_.get(), capacity_}; }

  void clean() {
    model_.clear();
    tampered_ = false;
    require(!writer_.corrupt() && !reader_.corrupt(), "corrupt right after reset");
  }

  static std::uint64_t tampered_value(Input& in, std::uint64_t current) {
    const std::uint8_t how = in.u8();
    const std::uint64_t v = in.u64();
    switch (how % 3) {
      case 0:
        return v;  // anything at all
      case 1:
        return current + static_cast<std::uint64_t>(static_cast<std::int16_t>(v));  // nearby
      default:
        return current - (v & 0xffff);  // behind
    }
  }

  void write(std::size_t n) {
    n %= 2 * capacity_ + 1;
    std::vector<std::byte> bytes(n);
    for (std::byte& b : bytes) b = static_cast<std::byte>(next_++);
    const std::size_t free_before = capacity_ - model_.size();
    const std::size_t written = writer_.write_some(bytes);
    require(written <= n, "wrote more than asked");
    require(written <= capacity_, "wrote more than capacity");
    if (!tampered_) {
      require(written == std::min(n, free_before), "write_some left room unused");
      require(!writer_.corrupt(), "writer corrupt without tampering");
      model_.insert(model_.end(), bytes.begin(),
                    bytes.begin() + static_cast<std::ptrdiff_t>(written));
    }
  }

  void expect_front(std::span<const std::byte> got) {
    if (tampered_) return;
    require(got.size() <= model_.size(), "read more than was written");
    require(std::equal(got.begin(), got.end(), model_.begin()), "read wrong bytes");
    model_.erase(model_.begin(), model_.begin() + static_cast<std::ptrdiff_t>(got.size()));
  }

  void read_exact(std::size_t n) {
    n %= 2 * capacity_ + 1;
    std::vector<std::byte> out(n);
    const bool ok = reader_.read_exact(out);
    if (!tampered_) require(ok == (n <= model_.size()), "read_exact disagrees with the model");
    if (ok) expect_front(out);
  }

  void read_some(std::size_t n) {
    n %= 2 * capacity_ + 1;
    std::vector<std::byte> out(n);
    const std::size_t got = reader_.read_some(out);
    require(got <= n, "read_some read more than asked");
    if (!tampered_) require(got == std::min(n, model_.size()), "read_some left bytes behind");
    expect_front(std::span(out).first(got));
  }

  std::span<const std::byte> peek() {
    const std::span<const std::byte> bytes = reader_.peek();
    require(bytes.size() <= capacity_, "peek() larger than capacity");
    if (!bytes.empty()) {
      require(bytes.data() >= data_.get() && bytes.data() + bytes.size() <= data_.get() + capacity_,
              "peek() outside the ring");
    }
    std::uint8_t sum = 0;  // touch every byte, so ASan checks the whole span
    for (const std::byte b : bytes)
      sum = static_cast<std::uint8_t>(sum + static_cast<std::uint8_t>(b));
    sink_ = sum;
    if (!tampered_) {
      require(bytes.size() <= model_.size(), "peek() shows more than was written");
      require(std::equal(bytes.begin(), bytes.end(), model_.begin()), "peek() shows wrong bytes");
    }
    return bytes;
  }

  void consume(std::size_t n) {
    const std::span<const std::byte> bytes = peek();
    n = std::min(n, bytes.size());
    reader_.consume(n);
    if (!tampered_) model_.erase(model_.begin(), model_.begin() + static_cast<std::ptrdiff_t>(n));
  }

  std::size_t capacity_;
  std::unique_ptr<detail::RingControl> control_;
  std::unique_ptr<std::byte[]> data_;  // exactly capacity_ bytes: ASan guards both ends
  detail::RingWriter writer_;
  detail::RingReader reader_;
  std::deque<std::byte> model_;  // bytes written and not yet consumed
  bool tampered_ = false;
  std::uint8_t next_ = 0;
  volatile std::uint8_t sink_ = 0;
};

/// Whole answers through one ring, the parent's framing code on both ends: MessageSender (as the
/// parent sends requests) publishes them, AnswerReceiver (as the parent reads answers)
/// reassembles them, in any interleaving the input chooses. Every answer must come out as it
/// went in (header, payload, and the tail through a sink when the receiver takes it), in order,
/// with no violation; a receiver that finds a whole answer published must return it; a sender
/// waiting for room must learn that room was made; and draining both ends at the end must
/// deliver everything.
class StreamHarness {
 public:
  explicit StreamHarness(std::size_t capacity)
      : capacity_(capacity),
        control_(std::make_unique<detail::RingControl>()),
        data_(std::make_unique<std::byte[]>(capacity)),
        sender_(ends()),
        receiver_(ends()) {}

  void run(Input& in) {
    while (!in.empty()) {
      switch (
          static_cast<StreamOp>(in.u8() % static_cast<std::uint8_t>(StreamOp::stream_op_count))) {
        case StreamOp::send: {
          const std::size_t n = in.u16() % (4 * capacity_ + 1);
          send(n, n * in.u8() / 255);
          break;
        }
        case StreamOp::pump:
          pump();
          break;
        case StreamOp::receive:
          (void)receive((in.u8() & 1u) != 0);
          break;
        case StreamOp::reset:
          sender_.reset();
          receiver_.reset();
          expected_.clear();
          break;
        default:
          break;
      }
    }
    // Whatever is under way must get through, each step moving something.
    for (bool take = false; !expected_.empty(); take = !take) {
      const bool pumped = pump();
      if (!receive(take) && !pumped) fail("the stream stalled with answers still to deliver");
    }
  }

 private:
  struct Message {
    detail::ResponseHeader header;
    std::vector<std::byte> bytes;  // header, then payload
    std::span<const std::byte> payload() const {
      return std::span(bytes).subspan(sizeof(detail::ResponseHeader));
    }
  };

  /// Collects a tail, checking that it never exceeds what was announced.
  class Sink final : public detail::AnswerTail {
   public:
    void open(std::uint64_t announced) {
      left_ = announced;
      bytes_.clear();
    }
    void append(std::span<const std::byte> bytes) noexcept override {
      require(bytes.size() <= left_, "a tail longer than announced");
      left_ -= bytes.size();
      bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
    }
    void deliver_tail(std::uint64_t /*run_nanos*/) noexcept override {}
    std::uint64_t left() const { return left_; }
    const std::vector<std::byte>& bytes() const { return bytes_; }

   private:
    std::uint64_t left_ = 0;
    std::vector<std::byte> bytes_;
  };

  detail::StreamEnds ends() {
    return {{control_.get(), data_.get(), capacity_}, &bell_, &bell_, &wants_room_, nullptr};
  }

  void send(std::size_t payload_bytes, std::size_t tail_bytes) {
    if (sender_.busy()) return;
    Message m;
    m.header.task_id = ++last_task_;
    m.header.payload_bytes = payload_bytes;
    m.header.tail_bytes = tail_bytes;
    m.header.run_nanos = last_task_ * 3;
    m.bytes.resize(sizeof m.header + payload_bytes);
    std::memcpy(m.bytes.data(), &m.header, sizeof m.header);
    for (std::size_t i = 0; i < payload_bytes; ++i) {
      m.bytes[sizeof m.header + i] = static_cast<std::byte>(last_task_ * 31 + i);
    }
    expected_.push_back(std::move(m));  // a deque: the bytes stay put while they are sent
    require(sender_.start(expected_.back().bytes), "an idle sender refused a message");
    note_progress();
  }

  bool pump() {
    const bool moved = sender_.pump();
    note_progress();
    return moved;
  }

  /// After the sender moved: if it waits for room, the room handshake is armed from here.
  void note_progress() {
    tail_at_pump_ = control_->tail.load();
    require(!sender_.corrupt(), "the sender saw an impossible index");
  }

  /// True if the receiver moved anything.
  bool receive(bool take_tail) {
    const std::uint64_t tail_before = control_->tail.load();
    const Message* opened = nullptr;
    const auto status = receiver_.next([&](const detail::ResponseHeader& h,
                                           std::span<const std::byte> head) -> detail::AnswerTail* {
      require(!expected_.empty(), "a tail opened with no answer under way");
      const Message& m = expected_.front();
      require(std::memcmp(&h, &m.header, sizeof h) == 0, "open_tail: wrong header");
      const std::size_t head_bytes = m.payload().size() - h.tail_bytes;
      require(std::ranges::equal(head, m.payload().first(head_bytes)), "open_tail: wrong head");
      opened = &m;
      if (!take_tail) return nullptr;
      sink_.open(h.tail_bytes);
      tail_task_ = h.task_id;
      return &sink_;
    });
    require(status != detail::AnswerReceiver::Status::violation, "valid traffic was a violation");
    const bool consumed = control_->tail.load() != tail_before;
    if (sender_.busy() && control_->tail.load() != tail_at_pump_) {
      require(sender_.room_made(), "room was made, but the waiting sender was not told");
    }
    if (status == detail::AnswerReceiver::Status::none) {
      // Every message but one in progress is wholly in the ring: the oldest must have come out.
      const std::size_t whole = expected_.size() - (sender_.busy() ? 1 : 0);
      require(whole == 0, "a whole answer was published, but not received");
      return consumed;
    }
    require(!expected_.empty(), "an answer nobody sent");
    const Message& m = expected_.front();
    require(opened == nullptr || opened == &m, "a tail opened for another answer");
    require(std::memcmp(&receiver_.header(), &m.header, sizeof m.header) == 0, "wrong header");
    if (receiver_.tail() != nullptr) {
      // (It may have been taken by an earlier call, which returned before the answer was whole.)
      require(receiver_.tail() == &sink_ && tail_task_ == m.header.task_id,
              "a tail went where it was not sent");
      require(sink_.left() == 0, "an answer delivered before its whole tail arrived");
      require(std::ranges::equal(sink_.bytes(), m.payload().last(m.header.tail_bytes)),
              "wrong tail");
      require(receiver_.payload().empty(), "a payload besides the tail");
    } else {
      require(std::ranges::equal(receiver_.payload(), m.payload()), "wrong payload");
    }
    expected_.pop_front();
    return true;
  }

  std::size_t capacity_;
  std::unique_ptr<detail::RingControl> control_;
  std::unique_ptr<std::byte[]> data_;  // exactly capacity_ bytes: ASan guards both ends
  detail::Doorbell bell_;              // nobody sleeps on it
  std::atomic<std::uint32_t> wants_room_{0};
  detail::MessageSender sender_;
  detail::AnswerReceiver receiver_;
  std::deque<Message> expected_;    // sent (or being sent) and not received, oldest first
  std::uint64_t tail_at_pump_ = 0;  // the consumer's index when the sender last moved
  std::uint64_t last_task_ = 0;
  Sink sink_;
  std::uint64_t tail_task_ = 0;  // the answer whose tail the sink took
};

}  // namespace

// A UBSan report in the fuzz job's log should say where it came from.
extern "C" const char* __ubsan_default_options() { return "print_stacktrace=1"; }

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  if (in.empty()) return 0;
  const std::uint8_t mode = in.u8();
  if (mode >= fuzz::stream_mode) {
    StreamHarness harness(std::size_t{1} << (6 + mode % 8));
    harness.run(in);
    return 0;
  }
  Harness harness(std::size_t{1} << (3 + mode % 10));
  harness.run(in);
  return 0;
}
