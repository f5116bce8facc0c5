// SPDX-License-Identifier: MIT
// libFuzzer target: any sequence of ring operations, including a broken other side publishing
// impossible indices, keeps every access inside the ring and every count within capacity.
//
// The ring's data is a heap block of exactly `capacity` bytes, so ASan reports any access past
// it. A model (a deque of the bytes in flight) checks the exact contents while neither index
// has been tampered with; after tampering only the safety properties are checked: accesses stay
// in bounds (ASan), readable() and writable() never exceed the capacity, peek() stays inside
// the buffer, nothing is written or read beyond what was asked. Input layout: fuzz_types.hpp.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <multicore/detail/transport/shm/ring.hpp>
#include <span>
#include <vector>

#include "fuzz_types.hpp"

namespace {

namespace detail = multicore::detail;
using fuzz::RingOp;

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

}  // namespace

// A UBSan report in the fuzz job's log should say where it came from.
extern "C" const char* __ubsan_default_options() { return "print_stacktrace=1"; }

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  if (in.empty()) return 0;
  const std::size_t capacity = std::size_t{1} << (3 + in.u8() % 10);
  Harness harness(capacity);
  harness.run(in);
  return 0;
}
