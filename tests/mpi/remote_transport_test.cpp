// SPDX-License-Identifier: MIT
// Rank 0's RemoteTransport against a scripted agent: rank 1 plays the agent's half of the relay
// protocol message by message, so the order in which events reach rank 0 is fixed. Run by
// CTest under mpirun with 2 ranks; rank 0 runs the tests, rank 1 only the script.
#include <gtest/gtest.h>

#include <chrono>
#include <multicore/detail/transport/mpi/relay.hpp>
#include <multicore/detail/transport/mpi/remote_transport.hpp>
#include <optional>

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

/// The scripted agent (rank 1, two workers): once both slots are started, says that worker 1 is
/// ready, then worker 0, in that order; then takes whatever comes until rank 0 says exit.
void scripted_agent() {
  Inbox inbox(0, tag_down);
  Outbox outbox(tag_up);
  std::uint64_t lives[2] = {0, 0};
  int started = 0;
  while (started < 2) {
    if (std::optional<Message> m = inbox.poll(); m && m->header.kind == Kind::start) {
      lives[m->header.slot] = m->header.life;
      ++started;
    }
  }
  for (const std::uint32_t slot : {1u, 0u}) {
    Header h;
    h.kind = Kind::ready;
    h.slot = slot;
    h.life = lives[slot];
    outbox.post(0, h, {});
  }
  for (;;) {
    outbox.progress();
    if (std::optional<Message> m = inbox.poll(); m && m->header.kind == Kind::exit) break;
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
