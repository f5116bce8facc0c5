// SPDX-License-Identifier: MIT
// Rank 0's RemoteTransport against a scripted agent: rank 1 plays the agent's half of the relay
// protocol message by message, so the order in which events reach rank 0 is fixed. Run by
// CTest under mpirun with 2 ranks; rank 0 runs the tests, rank 1 only the script.
#include <gtest/gtest.h>

#include <chrono>
#include <multicore/detail/transport/mpi/handshake.hpp>
#include <multicore/detail/transport/mpi/relay.hpp>
#include <multicore/detail/transport/mpi/remote_transport.hpp>
#include <optional>
#include <string>

namespace {

using namespace multicore::detail;
using namespace multicore::detail::mpi;
using multicore::Writer;
using namespace std::chrono_literals;

/// Answers here carry no tails.
struct NoTails final : TailRouter {
  AnswerTail* open_tail(unsigned, std::uint64_t, std::span<const std::byte>,
                        std::uint64_t) noexcept override {
    return nullptr;
  }
};

/// Byte i of the streamed message below.
std::byte streamed_byte(std::size_t i) { return static_cast<std::byte>(i * 7 + i / 4096); }
constexpr std::size_t streamed_bytes = max_piece + 64;

/// Streams a message of two pieces, and posts another after the first piece went.
void stream_with_a_message_posted_meanwhile(Outbox& outbox) {
  Header h;
  h.kind = Kind::answer_streamed;
  h.bytes = streamed_bytes;
  Writer buffer;
  buffer.reserve(streamed_bytes);
  Writer& out = outbox.open_stream(0, h, std::move(buffer));
  const auto write = [&](std::size_t from, std::size_t to) {
    for (std::size_t i = from; i < to; ++i) *out.extend(1) = streamed_byte(i);
  };
  write(0, max_piece);
  outbox.send_written();  // the first piece goes
  Header meanwhile;
  meanwhile.kind = Kind::ready;
  meanwhile.slot = 1;
  outbox.post(0, meanwhile, {});
  write(max_piece, streamed_bytes);
  outbox.close_stream();
}

/// The scripted agent (rank 1, two workers): once both slots are started, says that worker 1 is
/// ready, then worker 0, in that order; streams on every resume; stops when rank 0 says exit.
/// Each test's part stands alone, so that --gtest_filter may leave any test out.
void scripted_agent() {
  Inbox inbox(0, tag_down);
  Outbox outbox(tag_up);
  std::uint64_t lives[2] = {0, 0};
  int started = 0;
  for (;;) {
    outbox.progress();
    std::optional<Message> m = inbox.poll();
    if (!m) continue;
    if (m->header.kind == Kind::exit) break;
    if (m->header.kind == Kind::resume) stream_with_a_message_posted_meanwhile(outbox);
    if (m->header.kind == Kind::start) {
      lives[m->header.slot] = m->header.life;
      if (++started != 2) continue;
      for (const std::uint32_t slot : {1u, 0u}) {
        Header h;
        h.kind = Kind::ready;
        h.slot = slot;
        h.life = lives[slot];
        outbox.post(0, h, {});
      }
    }
  }
  while (!outbox.empty()) outbox.progress();
}

TEST(RemoteTransport, EventsAlreadyReceivedForAnotherSlotEndAWait) {
  RemoteTransport transport({AgentInfo{1, 2, "the scripted agent"}});
  transport.start(0);
  transport.start(1);
  NoTails router;
  // Slot 1's event came first: polling slot 0 takes it off MPI too, and keeps it for slot 1.
  Event e;
  do {
    e = transport.poll(0, router);
  } while (e.kind == Event::Kind::none);
  EXPECT_EQ(e.kind, Event::Kind::ready);
  // Nothing more will arrive over MPI; the event waiting for slot 1 must end the wait at once
  // (the collector sleeps in wait() and polls only when it returns true).
  EXPECT_TRUE(transport.wait(std::chrono::steady_clock::now() + 30s, false));
  EXPECT_EQ(transport.poll(1, router).kind, Event::Kind::ready);
}

// A message posted while a stream is open goes after the stream's last piece: the peer reads
// a message's pieces right after its header (the scripted agent streams when it gets resume).
TEST(Outbox, AMessagePostedWhileAStreamIsOpenFollowsItsLastPiece) {
  Outbox outbox(tag_down);
  Header go;
  go.kind = Kind::resume;
  outbox.post(1, go, {});
  while (!outbox.empty()) outbox.progress();
  Inbox inbox(1, tag_up);
  const auto next = [&] {
    for (;;) {
      if (std::optional<Message> m = inbox.poll()) return std::move(*m);
    }
  };
  Message streamed = next();
  EXPECT_EQ(streamed.header.kind, Kind::answer_streamed);
  ASSERT_EQ(streamed.bytes.size(), streamed_bytes);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < streamed_bytes; ++i)
    wrong += streamed.bytes.data()[i] != streamed_byte(i);
  EXPECT_EQ(wrong, 0u);
  Message meanwhile = next();
  EXPECT_EQ(meanwhile.header.kind, Kind::ready);
  EXPECT_EQ(meanwhile.header.slot, 1u);
}

// An agent keeps calling MPI without a nap while something it sent is on its way; not while an
// answer that streams waits for its worker to write more (a worker stopped from outside, say).
TEST(Outbox, AStreamWaitingForItsNextPieceIsNotMoving) {
  Outbox outbox(tag_down);
  Header h;
  h.kind = Kind::kill;  // about no life: the scripted agent takes it and ignores it
  h.bytes = 2 * max_piece;
  Writer buffer;
  buffer.reserve(h.bytes);
  Writer& out = outbox.open_stream(1, h, std::move(buffer));
  out.resize(max_piece);
  outbox.send_written();
  EXPECT_TRUE(outbox.moving());
  const auto give_up = std::chrono::steady_clock::now() + 60s;  // a hang guard
  while (outbox.moving() && std::chrono::steady_clock::now() < give_up) outbox.progress();
  EXPECT_FALSE(outbox.moving());
  EXPECT_FALSE(outbox.empty());
  out.resize(2 * max_piece);
  outbox.close_stream();
  EXPECT_TRUE(outbox.moving());
  while (!outbox.empty() && std::chrono::steady_clock::now() < give_up) outbox.progress();
  EXPECT_TRUE(outbox.empty());
}

/// A buffer whose memory holds `bytes` (reserved, not touched).
Writer with_capacity(std::size_t bytes) {
  Writer w;
  w.reserve(bytes);
  return w;
}

// Relaying one large message after another reuses the memory of the one before.
TEST(SpareBuffers, ALargeBufferGivenBackCarriesTheNextLargeMessage) {
  SpareBuffers spares;
  Writer used = with_capacity(std::size_t{4} << 20);
  const std::byte* memory = used.data();
  spares.give(std::move(used));
  Writer next = spares.take(std::size_t{3} << 20);
  EXPECT_EQ(next.data(), memory);
  EXPECT_EQ(next.size(), std::size_t{3} << 20);
}

// Two are kept, the largest, and a message takes the smallest that holds it.
TEST(SpareBuffers, TheTwoLargestAreKeptAndBestFitsTaken) {
  SpareBuffers spares;
  const std::byte* memory[3] = {};
  for (std::size_t i = 0; i < 3; ++i) {
    Writer w = with_capacity((std::size_t{2} << 20) << i);  // 2, 4 and 8 MiB
    memory[i] = w.data();
    spares.give(std::move(w));
  }
  // 1.5 MiB would take the 2 MiB buffer, had it been kept.
  EXPECT_EQ(spares.take(std::size_t{3} << 19).data(), memory[1]);
  EXPECT_EQ(spares.take(std::size_t{3} << 19).data(), memory[2]);
}

// What is kept stays within WarmBuffer::max_warm_bytes in all, as other warm buffers do; two
// buffers of 200 and 150 MiB were both kept before.
TEST(SpareBuffers, WhatIsKeptStaysWithinTheWarmBytesInAll) {
  SpareBuffers spares;
  Writer larger = with_capacity(std::size_t{200} << 20);
  const std::byte* memory = larger.data();
  spares.give(std::move(larger));
  spares.give(with_capacity(std::size_t{150} << 20));  // 350 MiB in all: left out
  EXPECT_EQ(spares.take(std::size_t{100} << 20).data(), memory);
}

}  // namespace

/// A rank's card with these modules (build-id, name; "" names the executable).
Card card_with(std::vector<std::pair<std::string, std::string>> modules) {
  Card c;
  c.version = relay_version;
  c.host = "node7";
  c.workers = 2;
  c.modules = std::move(modules);
  return c;
}

const std::pair<std::string, std::string> program{"aa01", ""};
const std::pair<std::string, std::string> libc{"cc03", "/lib/x86_64-linux-gnu/libc.so.6"};
const std::pair<std::string, std::string> libm{"dd04", "/lib/x86_64-linux-gnu/libm.so.6"};
const std::pair<std::string, std::string> preloaded{
    "ee05", "/usr/libexec/valgrind/vgpreload_core-amd64-linux.so"};
const std::string same_modules =
    ": every rank must load the same modules in the same order (preload a tool such as "
    "valgrind on every rank or on none)";

TEST(Handshake, TheSameModulesAreNoMismatch) {
  EXPECT_EQ(mismatch(1, card_with({program, libm, libc}), card_with({program, libm, libc})), "");
}

// Build-ids decide: the same library found at another path on another machine is the same.
TEST(Handshake, TheSameBuildAtAnotherPathIsNoMismatch) {
  EXPECT_EQ(mismatch(1, card_with({program, libc}),
                     card_with({program, {libc.first, "/usr/lib/x86_64-linux-gnu/libc.so.6"}})),
            "");
}

TEST(Handshake, ADifferentBuildIsNamed) {
  EXPECT_EQ(mismatch(1, card_with({program, libc}), card_with({{"ab02", ""}, libc})),
            "multicore: rank 1 on node7 runs a different build of the executable (build-id ab02) "
            "than rank 0 (aa01)");
}

// As under `mpirun -np 1 ./app : -np 1 valgrind ./app`: rank 1 loads one module more, early.
TEST(Handshake, AModuleOnlyTheRankLoadsIsNamed) {
  EXPECT_EQ(
      mismatch(1, card_with({program, libm, libc}), card_with({program, preloaded, libm, libc})),
      "multicore: rank 1 on node7 loads " + preloaded.second + ", which rank 0 does not" +
          same_modules);
}

TEST(Handshake, AModuleTheRankLacksIsNamed) {
  EXPECT_EQ(
      mismatch(2, card_with({program, preloaded, libm, libc}), card_with({program, libm, libc})),
      "multicore: rank 2 on node7 does not load " + preloaded.second + ", which rank 0 does" +
          same_modules);
  EXPECT_EQ(mismatch(2, card_with({program, libm, libc}), card_with({program, libm})),
            "multicore: rank 2 on node7 does not load " + libc.second + ", which rank 0 does" +
                same_modules);
}

TEST(Handshake, ModulesInAnotherOrderAreNamed) {
  EXPECT_EQ(mismatch(1, card_with({program, libm, libc}), card_with({program, libc, libm})),
            "multicore: rank 1 on node7 loads " + libc.second + " where rank 0 loads " +
                libm.second + same_modules);
}

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int status = 0;
  if (rank == 1) {
    scripted_agent();
  } else {
    ::testing::InitGoogleTest(&argc, argv);
    status = RUN_ALL_TESTS();
    Outbox outbox(tag_down);
    outbox.post(1, Header{}, {});  // Header's kind is exit by default
    while (!outbox.empty()) outbox.progress();
  }
  MPI_Finalize();
  return status;
}
