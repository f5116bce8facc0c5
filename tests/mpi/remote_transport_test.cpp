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
