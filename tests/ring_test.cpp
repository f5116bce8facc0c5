// SPDX-License-Identifier: MIT
// Tests for the SPSC byte ring: exact bytes, partial writes, wrap-around, reset, distrust of the
// other side's index, and a two-process stream of framed records through a small ring.
#include "multicore/detail/transport/shm/ring.hpp"

#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <new>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "multicore/detail/transport/shm/futex.hpp"
#include "multicore/detail/transport/shm/shm.hpp"
#include "multicore/detail/transport/shm/stream.hpp"
#include "support/child_watch.hpp"

namespace {

using multicore::detail::Doorbell;
using multicore::detail::RingControl;
using multicore::detail::RingMemory;
using multicore::detail::RingReader;
using multicore::detail::RingWriter;
using multicore::detail::SharedRegion;
using multicore::detail::SpinBudget;
using multicore::detail::wait_for;
using multicore_test::ChildWatch;

constexpr std::size_t page = 4096;

/// A ring in anonymous shared memory, laid out as the pool lays it out: the control block on
/// the first page, `capacity` data bytes from the second page on.
class SharedRing {
 public:
  explicit SharedRing(std::size_t capacity) : region_(page + capacity), capacity_(capacity) {
    control_ = new (region_.data()) RingControl{};
  }

  RingMemory memory() const noexcept { return {control_, data(), capacity_}; }
  RingControl& control() const noexcept { return *control_; }
  std::byte* data() const noexcept { return region_.data() + page; }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  SharedRegion region_;
  std::size_t capacity_;
  RingControl* control_ = nullptr;
};

/// `n` bytes that differ from their neighbours and from other `seed`s.
std::vector<std::byte> Pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> bytes(n);
  for (std::size_t i = 0; i < n; ++i)
    bytes[i] = static_cast<std::byte>((i * 31 + seed * 7 + 1) & 0xff);
  return bytes;
}

/// Reads exactly `n` bytes, or fails the test.
std::vector<std::byte> ReadExact(RingReader& reader, std::size_t n) {
  std::vector<std::byte> bytes(n);
  EXPECT_TRUE(reader.read_exact(bytes)) << "wanted " << n << " bytes";
  return bytes;
}

/// Moves the ring's indices to `offset` (through the real API): writes and reads that many bytes.
void Advance(RingWriter& writer, RingReader& reader, std::size_t offset) {
  const std::vector<std::byte> filler = Pattern(offset, 99);
  std::span<const std::byte> rest(filler);
  std::vector<std::byte> sink(offset);
  std::size_t got = 0;
  while (!rest.empty() || got < offset) {
    const std::size_t n = writer.write_some(rest);
    rest = rest.subspan(n);
    got += reader.read_some(std::span(sink).subspan(got));
  }
  ASSERT_EQ(sink, filler);
}

// ----- Single-process behaviour ----------------------------------------------------------------

TEST(Ring, WritesAndReadsExactBytes) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  EXPECT_EQ(writer.capacity(), page);
  EXPECT_EQ(writer.writable(), page);
  EXPECT_EQ(reader.readable(), 0u);

  const std::vector<std::byte> message = Pattern(100, 1);
  EXPECT_EQ(writer.write_some(message), message.size());
  EXPECT_EQ(ring.control().head.load(), 100u);
  EXPECT_EQ(reader.readable(), 100u);
  EXPECT_EQ(writer.writable(), page - 100);

  EXPECT_EQ(ReadExact(reader, 40), std::vector<std::byte>(message.begin(), message.begin() + 40));
  EXPECT_EQ(ring.control().tail.load(), 40u);
  EXPECT_EQ(reader.readable(), 60u);
  EXPECT_EQ(ReadExact(reader, 60), std::vector<std::byte>(message.begin() + 40, message.end()));
  EXPECT_EQ(reader.readable(), 0u);
  EXPECT_FALSE(writer.corrupt());
  EXPECT_FALSE(reader.corrupt());
}

TEST(Ring, ReadExactTakesNothingUnlessEverythingIsThere) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  const std::vector<std::byte> message = Pattern(10, 2);
  ASSERT_EQ(writer.write_some(message), 10u);

  std::vector<std::byte> out(11, std::byte{0xee});
  EXPECT_FALSE(reader.read_exact(out));
  EXPECT_EQ(out, std::vector<std::byte>(11, std::byte{0xee}));
  EXPECT_EQ(reader.readable(), 10u);
  EXPECT_EQ(ring.control().tail.load(), 0u);
  EXPECT_EQ(ReadExact(reader, 10), message);
}

TEST(Ring, ReadSomeTakesWhatIsThere) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  const std::vector<std::byte> message = Pattern(10, 3);
  ASSERT_EQ(writer.write_some(message), 10u);

  std::vector<std::byte> out(64);
  EXPECT_EQ(reader.read_some(out), 10u);
  EXPECT_TRUE(std::equal(message.begin(), message.end(), out.begin()));
  EXPECT_EQ(reader.read_some(out), 0u);
}

TEST(Ring, EmptyWriteDoesNothing) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  EXPECT_EQ(writer.write_some({}), 0u);
  EXPECT_EQ(ring.control().head.load(), 0u);
}

// Regression for fuzz_ring's first finding (tests/fuzz/regressions/fuzz_ring/read-*-empty-span-*):
// reading into an empty span -- whose data() is null -- called memcpy(nullptr, src, 0), which is
// undefined behaviour (memcpy's arguments are declared nonnull). Fails under UBSan until
// RingReader::copy_out returns early for n == 0; the plain build cannot see it.
TEST(Ring, ReadsIntoAnEmptySpan) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  EXPECT_TRUE(reader.read_exact(std::span<std::byte>{}));  // nothing readable yet
  EXPECT_EQ(reader.read_some(std::span<std::byte>{}), 0u);
  ASSERT_EQ(writer.write_some(Pattern(3, 30)), 3u);
  EXPECT_TRUE(reader.read_exact(std::span<std::byte>{}));
  EXPECT_EQ(reader.read_some(std::span<std::byte>{}), 0u);
  EXPECT_EQ(reader.readable(), 3u);
  EXPECT_EQ(ring.control().tail.load(), 0u);
}

TEST(Ring, WritesPartiallyWhenFull) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  const std::vector<std::byte> big = Pattern(page + 904, 4);

  EXPECT_EQ(writer.write_some(big), page);
  EXPECT_EQ(writer.writable(), 0u);
  EXPECT_EQ(writer.write_some(std::span(big).subspan(page)), 0u);
  EXPECT_EQ(reader.readable(), page);

  // Reading frees exactly what was read.
  EXPECT_EQ(ReadExact(reader, 100), std::vector<std::byte>(big.begin(), big.begin() + 100));
  EXPECT_EQ(writer.writable(), 100u);
  EXPECT_EQ(writer.write_some(std::span(big).subspan(page)), 100u);
  EXPECT_EQ(writer.writable(), 0u);

  EXPECT_EQ(ReadExact(reader, page),
            std::vector<std::byte>(big.begin() + 100, big.begin() + 100 + page));
  EXPECT_FALSE(writer.corrupt());
  EXPECT_FALSE(reader.corrupt());
}

TEST(Ring, HoldsExactlyCapacity) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  // Once from offset 0, once from an offset where the full ring straddles the wrap point.
  for (const std::size_t offset : {std::size_t{0}, std::size_t{1234}}) {
    SCOPED_TRACE(offset);
    Advance(writer, reader, offset);
    const std::vector<std::byte> full = Pattern(page, 5);
    EXPECT_EQ(writer.write_some(full), page);
    EXPECT_EQ(writer.writable(), 0u);
    EXPECT_EQ(reader.readable(), page);
    EXPECT_EQ(ring.control().head.load() - ring.control().tail.load(), page);
    EXPECT_EQ(ReadExact(reader, page), full);
    EXPECT_EQ(reader.readable(), 0u);
    EXPECT_EQ(writer.writable(), page);
    EXPECT_FALSE(writer.corrupt());
    EXPECT_FALSE(reader.corrupt());
  }
}

TEST(Ring, WrapsAroundMidRecord) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  Advance(writer, reader, 3000);

  // 1096 bytes fit before the end of the buffer, the other 904 go to its start.
  const std::vector<std::byte> record = Pattern(2000, 6);
  ASSERT_EQ(writer.write_some(record), record.size());
  EXPECT_TRUE(std::equal(record.begin(), record.begin() + 1096, ring.data() + 3000));
  EXPECT_TRUE(std::equal(record.begin() + 1096, record.end(), ring.data()));

  EXPECT_EQ(reader.readable(), 2000u);
  EXPECT_EQ(ReadExact(reader, 2000), record);
  EXPECT_EQ(ring.control().tail.load(), 5000u);
}

TEST(Ring, ReadExactAcrossTheWrapPoint) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  Advance(writer, reader, page - 3);
  const std::vector<std::byte> record = Pattern(8, 7);
  ASSERT_EQ(writer.write_some(record), 8u);
  EXPECT_EQ(ReadExact(reader, 8), record);
}

TEST(Ring, PeekStopsAtTheWrapPoint) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  Advance(writer, reader, 3000);
  const std::vector<std::byte> record = Pattern(2000, 8);
  ASSERT_EQ(writer.write_some(record), record.size());

  std::span<const std::byte> first = reader.peek();
  EXPECT_EQ(first.data(), ring.data() + 3000);
  ASSERT_EQ(first.size(), 1096u);
  EXPECT_TRUE(std::equal(first.begin(), first.end(), record.begin()));
  // Peeking does not consume.
  EXPECT_EQ(reader.peek().size(), 1096u);
  EXPECT_EQ(reader.readable(), 2000u);
  EXPECT_EQ(ring.control().tail.load(), 3000u);

  reader.consume(first.size());
  std::span<const std::byte> second = reader.peek();
  EXPECT_EQ(second.data(), ring.data());
  ASSERT_EQ(second.size(), 904u);
  EXPECT_TRUE(std::equal(second.begin(), second.end(), record.begin() + 1096));
  reader.consume(second.size());
  EXPECT_TRUE(reader.peek().empty());
}

TEST(Ring, PeekOfEmptyRingIsEmpty) {
  SharedRing ring(page);
  RingReader reader(ring.memory());
  EXPECT_TRUE(reader.peek().empty());
}

TEST(Ring, ConsumeInPiecesPublishesTheTail) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  const std::vector<std::byte> full = Pattern(page, 9);
  ASSERT_EQ(writer.write_some(full), page);
  ASSERT_EQ(writer.writable(), 0u);
  ASSERT_EQ(reader.peek().size(), page);  // consume() releases bytes the reader has seen

  reader.consume(10);
  EXPECT_EQ(ring.control().tail.load(), 10u);
  EXPECT_EQ(writer.writable(), 10u);
  reader.consume(90);
  EXPECT_EQ(ring.control().tail.load(), 100u);
  EXPECT_EQ(reader.readable(), page - 100);
  std::span<const std::byte> rest = reader.peek();
  ASSERT_EQ(rest.size(), page - 100);
  EXPECT_TRUE(std::equal(rest.begin(), rest.end(), full.begin() + 100));
}

TEST(Ring, WriterSeesSpaceFreedByAnotherViewOfTheSameRing) {
  // Each process has its own views; all they share is the control block and the data.
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  ASSERT_EQ(writer.write_some(Pattern(page, 10)), page);
  RingReader other(ring.memory());  // attaches at the published tail (0)
  EXPECT_EQ(other.readable(), page);
  std::vector<std::byte> sink(page);
  EXPECT_EQ(other.read_some(sink), page);
  EXPECT_EQ(writer.writable(), page);
}

// ----- reset() ---------------------------------------------------------------------------------

// Regression: reset() used to clear only the local view. A replacement worker attaching to the
// response ring then started writing at the dead worker's stale head, and the parent, reading
// from 0, took stale bytes for the new worker's answer.
TEST(Ring, ReaderResetZeroesSharedIndicesForAReplacementWriter) {
  SharedRing ring(page);
  RingReader parent(ring.memory());
  {
    RingWriter dead_worker(ring.memory());
    Advance(dead_worker, parent, 5000);
    ASSERT_EQ(dead_worker.write_some(Pattern(300, 11)), 300u);  // an answer never read
  }
  ASSERT_EQ(parent.readable(), 300u);
  ReadExact(parent, 100);

  parent.reset();
  EXPECT_EQ(ring.control().head.load(), 0u);
  EXPECT_EQ(ring.control().tail.load(), 0u);
  EXPECT_EQ(parent.readable(), 0u);
  EXPECT_TRUE(parent.peek().empty());

  RingWriter replacement(ring.memory());
  EXPECT_EQ(replacement.writable(), page);
  const std::vector<std::byte> answer = Pattern(7, 12);
  ASSERT_EQ(replacement.write_some(answer), answer.size());
  EXPECT_EQ(parent.readable(), answer.size());
  EXPECT_EQ(ReadExact(parent, answer.size()), answer);
  EXPECT_EQ(parent.readable(), 0u);
  EXPECT_FALSE(parent.corrupt());
  EXPECT_FALSE(replacement.corrupt());
}

// The same for the request ring, where the parent is the writer.
TEST(Ring, WriterResetZeroesSharedIndicesForAReplacementReader) {
  SharedRing ring(page);
  RingWriter parent(ring.memory());
  {
    RingReader dead_worker(ring.memory());
    Advance(parent, dead_worker, 5000);
    ASSERT_EQ(parent.write_some(Pattern(300, 13)), 300u);  // a request never read
    ReadExact(dead_worker, 100);
  }

  parent.reset();
  EXPECT_EQ(ring.control().head.load(), 0u);
  EXPECT_EQ(ring.control().tail.load(), 0u);
  EXPECT_EQ(parent.writable(), page);

  RingReader replacement(ring.memory());
  EXPECT_EQ(replacement.readable(), 0u);
  const std::vector<std::byte> request = Pattern(page, 14);
  ASSERT_EQ(parent.write_some(request), page);  // the whole ring is free again
  EXPECT_EQ(replacement.readable(), page);
  EXPECT_EQ(ReadExact(replacement, page), request);
  EXPECT_FALSE(parent.corrupt());
  EXPECT_FALSE(replacement.corrupt());
}

TEST(Ring, ResetClearsCorruption) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  ring.control().tail.store(1);  // ahead of head 0
  ring.control().head.store(page + 1);
  EXPECT_EQ(writer.write_some(Pattern(page + 1, 15)), 0u);
  EXPECT_EQ(reader.readable(), 0u);
  ASSERT_TRUE(writer.corrupt());
  ASSERT_TRUE(reader.corrupt());

  writer.reset();
  EXPECT_FALSE(writer.corrupt());
  reader.reset();
  EXPECT_FALSE(reader.corrupt());
  const std::vector<std::byte> message = Pattern(5, 16);
  EXPECT_EQ(writer.write_some(message), 5u);
  EXPECT_EQ(ReadExact(reader, 5), message);
}

// ----- A broken other side -----------------------------------------------------------------------
// The parent reads responses from, and writes requests to, a process that may be broken: an
// index it publishes is never trusted, or the parent would copy past the buffer or overwrite
// bytes not yet read.

TEST(Ring, WriterReportsCorruptWhenTailIsAheadOfHead) {
  for (const std::uint64_t bad :
       {std::uint64_t{101}, std::uint64_t{page}, std::numeric_limits<std::uint64_t>::max()}) {
    SCOPED_TRACE(bad);
    SharedRing ring(page);
    RingWriter writer(ring.memory());
    ASSERT_EQ(writer.write_some(Pattern(100, 17)), 100u);
    ring.control().tail.store(bad);
    EXPECT_EQ(writer.write_some(Pattern(page, 18)), 0u);
    EXPECT_TRUE(writer.corrupt());
    EXPECT_EQ(writer.writable(), 0u);
    EXPECT_EQ(writer.write_some(Pattern(1, 19)), 0u);
    EXPECT_EQ(ring.control().head.load(), 100u);  // nothing more was published
  }
}

TEST(Ring, WriterReportsCorruptWhenTailIsMoreThanCapacityBehind) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  Advance(writer, reader, 3 * page);
  ASSERT_EQ(writer.write_some(Pattern(100, 20)), 100u);
  const std::uint64_t head = ring.control().head.load();
  ring.control().tail.store(head - page - 1);  // would mean more than `page` bytes unread
  EXPECT_EQ(writer.write_some(Pattern(page, 21)), 0u);
  EXPECT_TRUE(writer.corrupt());
  EXPECT_EQ(writer.writable(), 0u);
  EXPECT_EQ(ring.control().head.load(), head);
}

TEST(Ring, WriterAcceptsTheBoundaryTails) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  Advance(writer, reader, 2 * page);
  ASSERT_EQ(writer.write_some(Pattern(page, 22)), page);
  // tail == head - capacity: full, not corrupt.
  EXPECT_EQ(writer.writable(), 0u);
  EXPECT_FALSE(writer.corrupt());
  // tail == head: empty, not corrupt.
  ring.control().tail.store(ring.control().head.load());
  EXPECT_EQ(writer.writable(), page);
  EXPECT_FALSE(writer.corrupt());
}

TEST(Ring, ReaderReportsCorruptWhenHeadIsBehindTail) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  Advance(writer, reader, 100);
  ring.control().head.store(50);

  EXPECT_EQ(reader.readable(), 0u);
  EXPECT_TRUE(reader.corrupt());
  EXPECT_TRUE(reader.peek().empty());
  std::vector<std::byte> out(16);
  EXPECT_EQ(reader.read_some(out), 0u);
  EXPECT_FALSE(reader.read_exact(std::span(out).first(1)));
  EXPECT_EQ(ring.control().tail.load(), 100u);  // nothing was consumed
}

TEST(Ring, ReaderReportsCorruptWhenHeadIsMoreThanCapacityAhead) {
  for (const std::uint64_t ahead : {std::uint64_t{page + 1}, std::uint64_t{1} << 40,
                                    std::numeric_limits<std::uint64_t>::max() - 100}) {
    SCOPED_TRACE(ahead);
    SharedRing ring(page);
    RingWriter writer(ring.memory());
    RingReader reader(ring.memory());
    Advance(writer, reader, 100);
    ring.control().head.store(100 + ahead);

    EXPECT_EQ(reader.readable(), 0u);
    EXPECT_TRUE(reader.corrupt());
    EXPECT_TRUE(reader.peek().empty());
    std::vector<std::byte> out(2 * page);
    EXPECT_EQ(reader.read_some(out), 0u);
    EXPECT_FALSE(reader.read_exact(std::span(out).first(page)));
    EXPECT_EQ(ring.control().tail.load(), 100u);
  }
}

TEST(Ring, ReaderAcceptsAFullRing) {
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  Advance(writer, reader, 100);
  ring.control().head.store(100 + page);  // head == tail + capacity: full, not corrupt
  EXPECT_EQ(reader.readable(), page);
  EXPECT_FALSE(reader.corrupt());
  EXPECT_EQ(reader.peek().size(), page - 100);  // up to the wrap point
}

TEST(Ring, ReaderKeepsWhatWasPublishedBeforeTheHeadWentBad) {
  // Bytes published under a valid head are the producer's; a later impossible head must not
  // make the reader hand out more than those.
  SharedRing ring(page);
  RingWriter writer(ring.memory());
  RingReader reader(ring.memory());
  const std::vector<std::byte> message = Pattern(20, 23);
  ASSERT_EQ(writer.write_some(message), 20u);
  ASSERT_EQ(reader.readable(), 20u);
  ring.control().head.store(std::numeric_limits<std::uint64_t>::max());
  std::vector<std::byte> out(page);
  const std::size_t n = reader.read_some(out);
  EXPECT_TRUE(reader.corrupt());
  EXPECT_LE(n, 20u);
  EXPECT_TRUE(
      std::equal(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n), message.begin()));
  EXPECT_EQ(reader.readable(), 0u);
}

// ----- Two processes -----------------------------------------------------------------------------

/// What the two processes share besides the ring: a doorbell each, as the pool has
/// (the consumer sleeps on `data_bell`, the producer on `room_bell`).
struct StreamShared {
  RingControl ring;
  alignas(multicore::detail::cache_line_size) Doorbell data_bell;
  alignas(multicore::detail::cache_line_size) Doorbell room_bell;
};

constexpr std::size_t stream_ring_bytes = 4096;
constexpr std::size_t stream_total_bytes = std::size_t{64} << 20;
constexpr std::uint64_t stream_seed = 0x5eed'2024;

/// A checksum of `bytes`: FNV-1a's multiply-xor over 8-byte words (few steps per byte, so the
/// stream test stays quick under sanitizers), then over the bytes that are left.
std::uint64_t Checksum(std::span<const std::byte> bytes) noexcept {
  constexpr std::uint64_t prime = 0x100000001b3ull;
  std::uint64_t hash = 0xcbf29ce484222325ull;
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t word = 0;
    std::memcpy(&word, bytes.data() + i, 8);
    hash = (hash ^ word) * prime;
  }
  for (; i < bytes.size(); ++i) hash = (hash ^ static_cast<std::uint8_t>(bytes[i])) * prime;
  return hash;
}

/// The records of the stream, the same sequence in both processes:
///   [u32 payload length][u32 sequence number][payload][u64 Checksum of header and payload]
/// Lengths are mostly small, sometimes several times the ring (so records straddle the wrap
/// point and stream through in pieces).
class RecordSource {
 public:
  static constexpr std::size_t header_bytes = 8;
  static constexpr std::size_t trailer_bytes = 8;

  explicit RecordSource(std::uint64_t seed) : rng_(seed) {}

  /// Replaces `out` with the next record.
  void next(std::vector<std::byte>& out) {
    const unsigned kind = static_cast<unsigned>(rng_() % 100);
    std::uint32_t length = 0;
    if (kind < 70) {
      length = static_cast<std::uint32_t>(rng_() % 65);
    } else if (kind < 95) {
      length = static_cast<std::uint32_t>(65 + rng_() % 960);
    } else {
      length = static_cast<std::uint32_t>(1025 + rng_() % (3 * stream_ring_bytes));
    }
    out.resize(header_bytes + length + trailer_bytes);
    std::memcpy(out.data(), &length, 4);
    std::memcpy(out.data() + 4, &sequence_, 4);
    ++sequence_;
    for (std::size_t i = 0; i < length; i += 8) {
      const std::uint64_t word = rng_();
      std::memcpy(out.data() + header_bytes + i, &word, std::min<std::size_t>(8, length - i));
    }
    const std::uint64_t sum = Checksum(std::span(out).first(header_bytes + length));
    std::memcpy(out.data() + header_bytes + length, &sum, trailer_bytes);
  }

 private:
  std::mt19937_64 rng_;
  std::uint32_t sequence_ = 0;
};

/// Exit codes of the producer process.
enum ProducerExit { producer_ok = 0, producer_corrupt = 3 };

/// The child: streams records until `stream_total_bytes`, written in pieces of random sizes,
/// waiting for room exactly as a worker waits to send its answer.
[[noreturn]] void Produce(StreamShared& shared, RingMemory memory) noexcept {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  RingWriter writer(memory);
  SpinBudget budget;
  RecordSource source(stream_seed);
  std::mt19937 pieces(7);
  std::vector<std::byte> record;
  for (std::size_t sent = 0; sent < stream_total_bytes; sent += record.size()) {
    source.next(record);
    const std::span<const std::byte> bytes(record);
    std::size_t put = 0;
    while (put < bytes.size()) {
      const std::size_t piece = std::min<std::size_t>(bytes.size() - put, 1 + pieces() % 3000);
      const std::size_t n = writer.write_some(bytes.subspan(put, piece));
      if (writer.corrupt()) _exit(producer_corrupt);
      put += n;
      if (n > 0) {
        shared.data_bell.ring();  // after publishing
        continue;
      }
      wait_for(shared.room_bell, budget, [&] { return writer.writable() > 0; });
    }
  }
  _exit(producer_ok);
}

TEST(Ring, StreamsRecordsBetweenTwoProcesses) {
  SharedRegion region(page + stream_ring_bytes);
  auto* shared = new (region.data()) StreamShared{};
  const RingMemory memory{&shared->ring, region.data() + page, stream_ring_bytes};
  RingReader reader(memory);

  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << "fork: " << std::strerror(errno);
  if (pid == 0) Produce(*shared, memory);
  ChildWatch child(pid, shared->data_bell);

  SpinBudget budget;
  std::mt19937 methods(11);
  // Fills `out` from the ring by a random mix of read_some, peek/consume and read_exact,
  // ringing the producer's bell after each consume. False if the producer is gone first.
  const auto read = [&](std::span<std::byte> out) {
    std::size_t got = 0;
    while (got < out.size()) {
      const std::size_t want = std::min<std::size_t>(out.size() - got, 1 + methods() % 5000);
      const std::span<std::byte> to = out.subspan(got, want);
      std::size_t n = 0;
      switch (methods() % 3) {
        case 0:
          n = reader.read_some(to);
          break;
        case 1: {
          const std::span<const std::byte> bytes = reader.peek();
          EXPECT_GE(bytes.data(), memory.data);
          EXPECT_LE(bytes.data() + bytes.size(), memory.data + memory.capacity);
          n = std::min(bytes.size(), want);
          std::memcpy(to.data(), bytes.data(), n);
          reader.consume(n);
          break;
        }
        default:
          n = reader.read_exact(to) ? want : reader.read_some(to);
          break;
      }
      got += n;
      if (n > 0) {
        shared->room_bell.ring();  // after consuming
        continue;
      }
      wait_for(shared->data_bell, budget, [&] { return reader.readable() > 0 || child.gone(); });
      if (reader.readable() == 0 && child.gone()) return false;
    }
    return true;
  };

  RecordSource expected_source(stream_seed);
  std::vector<std::byte> expected;
  std::vector<std::byte> record;
  std::size_t received = 0;
  std::size_t records = 0;
  while (received < stream_total_bytes) {
    expected_source.next(expected);
    record.resize(RecordSource::header_bytes);
    ASSERT_TRUE(read(record)) << "the producer ended after " << records << " records";
    std::uint32_t length = 0;
    std::uint32_t sequence = 0;
    std::memcpy(&length, record.data(), 4);
    std::memcpy(&sequence, record.data() + 4, 4);
    ASSERT_EQ(sequence, records);
    ASSERT_EQ(length + RecordSource::header_bytes + RecordSource::trailer_bytes, expected.size())
        << "record " << records;
    record.resize(expected.size());
    ASSERT_TRUE(read(std::span(record).subspan(RecordSource::header_bytes)))
        << "the producer ended inside record " << records;
    std::uint64_t sum = 0;
    std::memcpy(&sum, record.data() + RecordSource::header_bytes + length, 8);
    ASSERT_EQ(sum, Checksum(std::span(record).first(RecordSource::header_bytes + length)))
        << "checksum of record " << records;
    ASSERT_EQ(std::memcmp(record.data(), expected.data(), record.size()), 0)
        << "bytes of record " << records;
    received += record.size();
    ++records;
  }
  const int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status)) << "producer killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), producer_ok);
  EXPECT_EQ(reader.readable(), 0u) << "bytes after the last record";
  EXPECT_FALSE(reader.corrupt());
  EXPECT_GT(records, 1000u);
}

/// The room handshake of a stream (StreamProducer/StreamConsumer), as a worker's answer uses
/// it: what the two processes share besides the ring.
struct RoomShared {
  RingControl ring;
  alignas(multicore::detail::cache_line_size) Doorbell data_bell;
  alignas(multicore::detail::cache_line_size) Doorbell room_bell;
  std::atomic<std::uint32_t> wants_room{0};
};

/// The state of process `pid` as /proc shows it ('S': asleep), or 0 if it cannot be read.
char ProcessState(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const std::size_t paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() ? 0 : line[paren + 2];
}

// A consumer answers the producer's "I want room" (wants_room 1 -> 2, and a ring) in consume(),
// right after giving bytes back. When those bytes are ones the producer had already seen free
// (it filled them before finding the ring full), the answer comes with no room: the producer
// sleeps again, the answer spent, and every later consume sees 2 and rings nobody. A worker's
// 64 MiB answer then stopped for ever half-way (mpi.two_ranks, LargeArgumentsAndResultsReach-
// EveryRank: gdb showed exactly this, an empty ring, wants_room 2, the worker asleep). Here the
// late answer is made by hand; the stream must go on whatever the producer was doing then.
TEST(Ring, ProducerWaitingForRoomWakesAfterAnAnswerThatCameWithNoRoom) {
  using multicore::detail::StreamConsumer;
  using multicore::detail::StreamEnds;
  using multicore::detail::StreamProducer;
  constexpr std::size_t capacity = 4096;
  constexpr std::size_t total = 4 * capacity;
  SharedRegion region(page + capacity);
  auto* shared = new (region.data()) RoomShared{};
  const StreamEnds ends{{&shared->ring, region.data() + page, capacity},
                        &shared->data_bell,
                        &shared->room_bell,
                        &shared->wants_room,
                        nullptr};

  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << "fork: " << std::strerror(errno);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::vector<std::byte> bytes(total);
    for (std::size_t i = 0; i < total; ++i) bytes[i] = static_cast<std::byte>(i * 7);
    StreamProducer producer(ends);
    SpinBudget budget;
    producer.write_all(bytes, budget);
    _exit(0);
  }
  ChildWatch child(pid, shared->data_bell);

  // Bounded looks at the child (20 s: a hang guard, never reached when all is well).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  const auto until = [&](auto&& done) {
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline || child.gone()) return false;
      sched_yield();
    }
    return true;
  };
  // The ring is full and the producer announced it wants room.
  ASSERT_TRUE(until(
      [&] { return shared->ring.head.load() == capacity && shared->wants_room.load() == 1; }));
  // The late answer: what consume() does after giving back bytes the producer had already
  // counted as free.
  std::uint32_t waiting = 1;
  ASSERT_TRUE(shared->wants_room.compare_exchange_strong(waiting, 2));
  shared->room_bell.ring();
  // The producer has settled asleep again (or re-announced and slept, once fixed).
  ASSERT_TRUE(
      until([&] { return shared->room_bell.sleeping.load() == 1 && ProcessState(pid) == 'S'; }));

  // Now read everything as the parent does; the producer must keep publishing.
  StreamConsumer consumer(ends);
  SpinBudget budget;
  std::size_t received = 0;
  bool intact = true;
  while (received < total) {
    const std::span<const std::byte> bytes = consumer.wait_for_bytes(
        budget, [] {}, std::chrono::seconds(10));
    if (bytes.empty()) break;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      intact = intact && bytes[i] == static_cast<std::byte>((received + i) * 7);
    }
    received += bytes.size();
    consumer.consume(bytes.size());
  }
  EXPECT_EQ(received, total) << "the producer stopped, waiting for room in an empty ring";
  EXPECT_TRUE(intact);
  if (received == total) {
    const int status = child.wait();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
}

}  // namespace
