// SPDX-License-Identifier: MIT
// A worker that writes a corrupt or truncated record is treated as failed, never trusted: the
// parent validates what comes out of a ring and cannot be crashed by it.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <future>
#include <multicore/detail/protocol/wire.hpp>
#include <multicore/detail/transport/shm/shm_channel.hpp>
#include <multicore/multicore.hpp>
#include <ostream>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"

namespace corrupt_test_types {

/// How a Garbage result is written: each way is a well-framed answer whose payload is not what
/// the parent expects.
enum class Scribble : std::uint8_t {
  none,                // a correct answer: the control
  bad_outcome_byte,    // an outcome tag that does not exist
  truncated_value,     // the value is 2 bytes short
  trailing_bytes,      // a good value followed by bytes nobody asked for
  empty_payload,       // not even an outcome tag
  lying_error_length,  // "the task threw", with a type name claimed to be 4 GiB long
  truncated_message,   // "serialization failed", with a message shorter than its length
};

/// A result whose encoding (in the worker only) scribbles over the answer's payload: the
/// Codec replaces the outcome tag the worker wrote just before it, and what follows.
struct Garbage {
  Scribble how;
  std::int32_t value;
};

/// A result whose decoding in the parent (on its collector thread, which reads every ring)
/// tells the workers it has begun, through a pipe, and then waits until a worker says it is
/// done, through another: a way to act in a worker while the collector sits between two reads.
struct Announced {
  int value;
};
inline int decoding_fd = -1;   // write end: "the parent is decoding"
inline int corrupted_fd = -1;  // read end: "go on"

/// A value whose encoding or decoding fails in the worker (only there), as a Codec that
/// depends on worker-local state might.
struct Fragile {
  enum Mode : std::int32_t { fine, encode_fails, decode_fails } mode;
};

/// Its Codec's decode forgets to read `b`, which its encode wrote.
struct Halves {
  std::int32_t a = 0;
  std::int32_t b = 0;
};

}  // namespace corrupt_test_types

template <>
struct multicore::Codec<corrupt_test_types::Halves> {
  using Halves = corrupt_test_types::Halves;
  static void encode(Writer& out, const Halves& h) {
    out.write(&h.a, sizeof h.a);
    out.write(&h.b, sizeof h.b);
  }
  static Halves decode(Reader& in) {
    Halves h;
    in.read(&h.a, sizeof h.a);
    return h;
  }
};

template <>
struct multicore::Codec<corrupt_test_types::Fragile> {
  using Fragile = corrupt_test_types::Fragile;
  static void encode(Writer& out, const Fragile& f) {
    if (multicore::detail::in_worker_process() && f.mode == Fragile::encode_fails) {
      throw std::runtime_error("cannot encode this one");
    }
    out.write(&f.mode, sizeof f.mode);
  }
  static Fragile decode(Reader& in) {
    Fragile f{};
    in.read(&f.mode, sizeof f.mode);
    if (multicore::detail::in_worker_process() && f.mode == Fragile::decode_fails) {
      throw std::runtime_error("cannot decode this one");
    }
    return f;
  }
};

template <>
struct multicore::Codec<corrupt_test_types::Announced> {
  static void encode(Writer& out, const corrupt_test_types::Announced& a) {
    out.write(&a.value, sizeof a.value);
  }
  static corrupt_test_types::Announced decode(Reader& in) {
    corrupt_test_types::Announced a{};
    in.read(&a.value, sizeof a.value);
    const char two[2] = {1, 1};  // one for each run of the task that waits for it
    multicore_test::write_all(corrupt_test_types::decoding_fd, two, sizeof two);
    char byte = 0;
    multicore_test::read_exact(corrupt_test_types::corrupted_fd, &byte, 1);
    return a;
  }
};

template <>
struct multicore::Codec<corrupt_test_types::Garbage> {
  using Garbage = corrupt_test_types::Garbage;
  using Scribble = corrupt_test_types::Scribble;

  static void encode(Writer& out, const Garbage& g) {
    out.resize(out.size() - 1);  // drop the outcome tag (value = 0) written before this call
    const auto tag = [&](std::uint8_t t) { out.write(&t, 1); };
    switch (g.how) {
      case Scribble::none:
        tag(0);
        out.write(&g.value, sizeof g.value);
        return;
      case Scribble::bad_outcome_byte:
        tag(0x7f);
        out.write(&g.value, sizeof g.value);
        return;
      case Scribble::truncated_value:
        tag(0);
        out.write(&g.value, sizeof g.value - 2);
        return;
      case Scribble::trailing_bytes:
        tag(0);
        out.write(&g.value, sizeof g.value);
        out.write("xyz", 3);
        return;
      case Scribble::empty_payload:
        return;
      case Scribble::lying_error_length: {
        tag(1);
        const std::uint32_t length = 0xffffffff;
        out.write(&length, sizeof length);
        out.write("std::bogus", 10);
        return;
      }
      case Scribble::truncated_message: {
        tag(2);
        const std::uint32_t length = 100;
        out.write(&length, sizeof length);
        out.write("abc", 3);
        return;
      }
    }
  }

  static Garbage decode(Reader& in) {
    Garbage g{Scribble::none, 0};
    in.read(&g.value, sizeof g.value);
    return g;
  }
};

namespace {

using corrupt_test_types::Halves;
using multicore::Pool;
using multicore::PoolOptions;
using multicore::SerializationError;
using multicore::WorkerLost;
using multicore::detail::current_worker;
using multicore::detail::ResponseHeader;
using multicore_test::error_of;
using namespace std::chrono_literals;

pid_t own_pid() { return getpid(); }

// ----- Scribbling on the response ring from inside a task -------------------------------------
//
// The worker's own RingWriter keeps a private copy of the head; the shared head in
// responses.control equals it whenever the worker is inside a task (it publishes every answer
// in full before it reads the next request), and only this process ever stores it. So a task
// can append bytes at head & (capacity - 1) and publish them with a release store, exactly as
// the writer would. It must then never return: the worker would write its own answer at its
// stale head, over ours, and which of the two the parent read would depend on timing. Nor
// _exit: the parent's kill (it must kill a worker that lied) would race with the exit, and the
// WorkerLost fields would depend on who won. Blocking forever makes it deterministic: the
// process can only end by the parent's SIGKILL, and if the parent missed the corruption the
// task would hang, which the pool's (liveness) task_timeout turns into a TaskTimeout, so the
// test fails with a clear message instead of timing out.

const multicore::detail::ShmWorkerSetup& me() {
  const auto* setup = current_worker();
  if (setup == nullptr) throw std::logic_error("not in a worker");
  return *setup;
}

void wake_parent() { me().pool->parent_bell.ring(); }

void publish(std::span<const std::byte> bytes) {
  const auto& ring = me().answers.ring;
  const std::uint64_t head = ring.control->head.load(std::memory_order_relaxed);
  const std::uint64_t tail = ring.control->tail.load(std::memory_order_acquire);
  if (head - tail + bytes.size() > ring.capacity) throw std::logic_error("no room in the ring");
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    ring.data[(head + i) & (ring.capacity - 1)] = bytes[i];
  }
  ring.control->head.store(head + bytes.size(), std::memory_order_release);
  wake_parent();
}

void publish(const ResponseHeader& h, std::size_t header_bytes = sizeof(ResponseHeader)) {
  publish(std::span<const std::byte>(reinterpret_cast<const std::byte*>(&h), header_bytes));
}

/// Says "one more answer is fully written", as the worker does after each answer.
void claim_an_answer() {
  me().answers.ring.control->messages.fetch_add(1, std::memory_order_release);
  wake_parent();
}

ResponseHeader header_for_this_task() {
  ResponseHeader h;
  h.task_id = me().slot->running.load(std::memory_order_relaxed);
  return h;
}

/// Waits until the parent has read every answer this worker published, and returns the tail.
/// An impossible index published while earlier answers are still unread also destroys those
/// answers; which task gets the blame then is a separate test (ImpossibleIndexBlamesOnly...).
std::uint64_t wait_until_drained() {
  const auto& ring = me().answers.ring;
  const std::uint64_t head = ring.control->head.load(std::memory_order_relaxed);
  while (ring.control->tail.load(std::memory_order_acquire) != head) sched_yield();
  return head;
}

enum class Corruption {
  bad_magic,
  wrong_task_id,
  reserved_field_set,
  impossible_payload_length,
  tail_longer_than_payload,
  truncated_payload,
  huge_payload_then_nothing,
  truncated_header,
  answer_claimed_never_written,
  head_beyond_capacity,
  head_behind_tail,
};

int corrupt(Corruption how) {
  ResponseHeader h = header_for_this_task();
  switch (how) {
    case Corruption::bad_magic:
      h.magic = 0xbadbad00;
      publish(h);
      break;
    case Corruption::wrong_task_id:
      h.task_id += 1;  // the id of the task queued behind this one
      publish(h);
      break;
    case Corruption::reserved_field_set:
      h.reserved = 1;
      publish(h);
      break;
    case Corruption::impossible_payload_length:
      h.payload_bytes = multicore::detail::max_payload_bytes + 1;
      publish(h);
      break;
    case Corruption::tail_longer_than_payload:
      h.payload_bytes = 10;
      h.tail_bytes = 11;
      publish(h);
      break;
    case Corruption::truncated_payload: {
      h.payload_bytes = 100;
      publish(h);
      const std::byte some[10]{};
      publish(some);
      claim_an_answer();
      break;
    }
    case Corruption::huge_payload_then_nothing:
      h.payload_bytes = std::uint64_t{1} << 40;  // 1 TiB: under the sanity bound
      publish(h);
      claim_an_answer();
      break;
    case Corruption::truncated_header:
      publish(h, sizeof h / 2);
      claim_an_answer();
      break;
    case Corruption::answer_claimed_never_written:
      claim_an_answer();
      break;
    case Corruption::head_beyond_capacity: {
      const auto& ring = me().answers.ring;
      const std::uint64_t tail = wait_until_drained();
      ring.control->head.store(tail + ring.capacity + 1, std::memory_order_release);
      wake_parent();
      break;
    }
    case Corruption::head_behind_tail: {
      const auto& ring = me().answers.ring;
      const std::uint64_t tail = wait_until_drained();
      ring.control->head.store(tail - 1, std::memory_order_release);
      wake_parent();
      break;
    }
  }
  multicore_test::hang_forever();
}

struct CorruptionCase {
  const char* name;
  Corruption how;
};

const CorruptionCase corruption_cases[] = {
    {"BadMagic", Corruption::bad_magic},
    {"WrongTaskId", Corruption::wrong_task_id},
    {"ReservedFieldSet", Corruption::reserved_field_set},
    {"ImpossiblePayloadLength", Corruption::impossible_payload_length},
    {"TailLongerThanPayload", Corruption::tail_longer_than_payload},
    {"TruncatedPayload", Corruption::truncated_payload},
    {"HugePayloadThenNothing", Corruption::huge_payload_then_nothing},
    {"TruncatedHeader", Corruption::truncated_header},
    {"AnswerClaimedNeverWritten", Corruption::answer_claimed_never_written},
    {"HeadBeyondCapacity", Corruption::head_beyond_capacity},
    {"HeadBehindTail", Corruption::head_behind_tail},
};

void PrintTo(const CorruptionCase& c, std::ostream* os) { *os << c.name; }

class CorruptRecord : public ::testing::TestWithParam<CorruptionCase> {};

INSTANTIATE_TEST_SUITE_P(Corrupt, CorruptRecord, ::testing::ValuesIn(corruption_cases),
                         [](const auto& p) { return std::string(p.param.name); });

// The lying worker's task gets WorkerLost (the parent killed it: SIGKILL), the worker is
// replaced, and every other task, before and after it, gets its value.
TEST_P(CorruptRecord, GivesWorkerLostAndOnlyThatTaskFails) {
  // task_timeout is a liveness bound only (see above): no task here comes near it.
  Pool pool(PoolOptions{.workers = 1, .task_timeout = 20s});
  const pid_t before = pool.submit(own_pid).get();
  std::vector<std::future<std::pair<int, pid_t>>> earlier;
  std::vector<std::future<std::pair<int, pid_t>>> later;
  const auto square = [](int x) { return std::pair<int, pid_t>(x * x, getpid()); };
  for (int i = 0; i < 3; ++i) earlier.push_back(pool.submit(square, i));
  auto lying = pool.submit(corrupt, GetParam().how);
  for (int i = 3; i < 10; ++i) later.push_back(pool.submit(square, i));

  const auto lost = error_of<WorkerLost>(lying);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGKILL);
  EXPECT_EQ(lost->exit_code(), -1);
  const std::string what = lost->what();
  EXPECT_NE(what.find("corrupt or truncated"), std::string::npos) << what;
  EXPECT_NE(what.find("worker process " + std::to_string(before)), std::string::npos) << what;

  for (int i = 0; i < 3; ++i) {
    const auto [value, pid] = earlier[static_cast<std::size_t>(i)].get();
    EXPECT_EQ(value, i * i);
    EXPECT_EQ(pid, before);
  }
  std::set<pid_t> replacement;
  for (int i = 3; i < 10; ++i) {
    const auto [value, pid] = later[static_cast<std::size_t>(i - 3)].get();
    EXPECT_EQ(value, i * i);
    replacement.insert(pid);
  }
  ASSERT_EQ(replacement.size(), 1u);
  EXPECT_NE(*replacement.begin(), before);
  EXPECT_FALSE(multicore_test::running(before));
  EXPECT_EQ(pool.size(), 1u);
}

// ----- Answers with a tail (wire.hpp): the parent streams it into the result, unless the head
// does not announce exactly such a value -----------------------------------------------------

using Words = std::vector<std::uint32_t>;

/// Publishes an answer of a Words value with a tail: the head says `count` elements follow,
/// the header says `tail_words` do, of which the first `sent_words` are published.
void publish_tail_answer(std::uint64_t count, std::size_t tail_words, std::size_t sent_words) {
  const std::uint8_t outcome = 0;  // Outcome::value
  std::vector<std::byte> head(1 + sizeof count);
  std::memcpy(head.data(), &outcome, 1);
  std::memcpy(head.data() + 1, &count, sizeof count);
  ResponseHeader h = header_for_this_task();
  h.tail_bytes = tail_words * sizeof(std::uint32_t);
  h.payload_bytes = head.size() + h.tail_bytes;
  publish(h);
  publish(head);
  const Words words(sent_words, 7);
  publish(std::as_bytes(std::span(words)));
  claim_an_answer();
}

// The worker claims a whole answer but its tail stops short: the parent, streaming the tail
// into the result, sees the ring run dry and blames that task alone.
TEST(CorruptTail, TruncatedTailGivesWorkerLost) {
  Pool pool(PoolOptions{.workers = 1, .task_timeout = 20s});  // liveness bound, as above
  const pid_t before = pool.submit(own_pid).get();
  auto earlier = pool.submit([](int x) { return Words(20'000, static_cast<std::uint32_t>(x)); }, 3);
  auto lying = pool.submit([]() -> Words {
    publish_tail_answer(20'000, 20'000, 100);
    multicore_test::hang_forever();
  });
  auto later = pool.submit([](int x) { return Words(20'000, static_cast<std::uint32_t>(x)); }, 4);

  const auto lost = error_of<WorkerLost>(lying);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGKILL);
  const std::string what = lost->what();
  EXPECT_NE(what.find("corrupt or truncated"), std::string::npos) << what;
  EXPECT_EQ(earlier.get(), Words(20'000, 3));
  EXPECT_EQ(later.get(), Words(20'000, 4));
  EXPECT_NE(pool.submit(own_pid).get(), before);
}

// A well-framed answer whose head announces fewer elements than its tail holds: the parent
// does not stream it, decodes it whole instead, and reports what is wrong with it.
TEST(CorruptTail, HeadThatDisagreesWithTheTailGivesSerializationError) {
  Pool pool(PoolOptions{.workers = 1});
  auto lying = pool.submit([]() -> Words {
    publish_tail_answer(19'999, 20'000, 20'000);
    multicore_test::hang_forever();  // the parent has its answer; terminate() ends this
  });
  const auto error = error_of<SerializationError>(lying);
  ASSERT_TRUE(error);
  const std::string what = error->what();
  EXPECT_NE(what.find("4 unexpected trailing bytes"), std::string::npos) << what;
  pool.terminate();
}

// When a worker publishes an impossible index while answers it published earlier are still
// unread, those answers are lost with the ring. The task that broke the ring is the one the
// worker was running (SlotShared::running); it alone may fail, and it must not be run again.
//
// Made deterministic with one worker and three tasks: E1's result makes the collector wait in
// the middle of reading the ring (see Announced); meanwhile E2 answers (published, unread) and
// C, the culprit, publishes head = tail - 1, then lets the collector go on.
TEST(Corrupt, ImpossibleIndexBlamesOnlyTheTaskThatWroteIt) {
  using corrupt_test_types::Announced;
  multicore_test::Pipe decoding;
  multicore_test::Pipe corrupted;
  multicore_test::Pipe culprit_runs;
  corrupt_test_types::decoding_fd = decoding.write_fd();
  corrupt_test_types::corrupted_fd = corrupted.read_fd();
  Pool pool(PoolOptions{.workers = 1, .task_timeout = 20s});  // liveness bound, as above

  auto e1 = pool.submit([] { return Announced{1}; });
  auto e2 = pool.submit(
      [](int wait_fd) {
        char byte = 0;
        multicore_test::read_exact(wait_fd, &byte, 1);  // until the collector is in E1's decode
        return 2;
      },
      decoding.read_fd());
  auto c = pool.submit(
      [](int runs_fd, int go_on_fd) -> int {
        const char run = 1;
        multicore_test::write_all(runs_fd, &run, 1);
        const auto& ring = me().answers.ring;
        const std::uint64_t tail = ring.control->tail.load(std::memory_order_acquire);
        ring.control->head.store(tail - 1, std::memory_order_release);
        wake_parent();
        multicore_test::write_all(go_on_fd, &run, 1);
        multicore_test::hang_forever();
      },
      culprit_runs.write_fd(), corrupted.write_fd());

  EXPECT_EQ(e1.get().value, 1);
  const auto lost = error_of<WorkerLost>(c);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGKILL);
  try {
    EXPECT_EQ(e2.get(), 2);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "E2 did nothing wrong (it answered before the ring was broken), but its "
                     "future threw: "
                  << e.what();
  }
  pool.shutdown();

  culprit_runs.close_write();
  const std::string runs = multicore_test::read_to_end(culprit_runs.read_fd());
  EXPECT_EQ(runs.size(), 1u) << "the culprit must run once, not be retried on a replacement";
}

// ----- Well-framed answers with a garbage payload: SerializationError, the worker lives on ----

using corrupt_test_types::Garbage;
using corrupt_test_types::Scribble;

struct GarbageCase {
  const char* name;
  Scribble how;
  const char* message;  // a part of what() that names the problem
};

const GarbageCase garbage_cases[] = {
    {"BadOutcomeByte", Scribble::bad_outcome_byte, "unknown outcome 127"},
    {"TruncatedValue", Scribble::truncated_value, "truncated data"},
    {"TrailingBytes", Scribble::trailing_bytes, "3 unexpected trailing bytes"},
    {"EmptyPayload", Scribble::empty_payload, "truncated data"},
    {"LyingErrorLength", Scribble::lying_error_length, "truncated data"},
    {"TruncatedMessage", Scribble::truncated_message, "truncated data"},
};

void PrintTo(const GarbageCase& c, std::ostream* os) { *os << c.name; }

class GarbagePayload : public ::testing::TestWithParam<GarbageCase> {};

INSTANTIATE_TEST_SUITE_P(Corrupt, GarbagePayload, ::testing::ValuesIn(garbage_cases),
                         [](const auto& p) { return std::string(p.param.name); });

TEST_P(GarbagePayload, GivesSerializationErrorAndKeepsTheWorker) {
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  auto earlier = pool.submit([](int x) { return x + 100; }, 1);
  auto garbage = pool.submit([](Scribble how) { return Garbage{how, 1234}; }, GetParam().how);
  auto later = pool.submit([](int x) { return x + 100; }, 2);

  const auto error = error_of<SerializationError>(garbage);
  ASSERT_TRUE(error);
  const std::string what = error->what();
  EXPECT_NE(what.find(GetParam().message), std::string::npos) << what;
  EXPECT_EQ(earlier.get(), 101);
  EXPECT_EQ(later.get(), 102);
  EXPECT_EQ(pool.submit(own_pid).get(), before) << "a bad payload is not a broken worker";
}

// The control: the same Codec writing a correct answer round-trips, so the failures above come
// from the scribbling alone.
TEST(Corrupt, GarbageCodecRoundTripsWhenItDoesNotScribble) {
  Pool pool(PoolOptions{.workers = 1});
  const Garbage g = pool.submit([] { return Garbage{Scribble::none, 5}; }).get();
  EXPECT_EQ(g.value, 5);
}

// ----- Serialization failures in the worker: SerializationError for that task only ----------

using corrupt_test_types::Fragile;

TEST(Serialization, ResultThatCannotBeEncodedInTheWorker) {
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  auto bad = pool.submit([] { return Fragile{Fragile::encode_fails}; });
  auto good = pool.submit([] { return Fragile{Fragile::fine}; });
  const auto error = error_of<SerializationError>(bad);
  ASSERT_TRUE(error);
  const std::string what = error->what();
  EXPECT_NE(what.find("cannot encode this one"), std::string::npos) << what;
  EXPECT_EQ(good.get().mode, Fragile::fine);
  EXPECT_EQ(pool.submit(own_pid).get(), before);
}

TEST(Serialization, ArgumentThatCannotBeDecodedInTheWorker) {
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  const auto mode = [](Fragile f) { return static_cast<int>(f.mode); };
  auto bad = pool.submit(mode, Fragile{Fragile::decode_fails});
  auto good = pool.submit(mode, Fragile{Fragile::fine});
  const auto error = error_of<SerializationError>(bad);
  ASSERT_TRUE(error);
  const std::string what = error->what();
  EXPECT_NE(what.find("cannot decode this one"), std::string::npos) << what;
  EXPECT_EQ(good.get(), 0);
  EXPECT_EQ(pool.submit(own_pid).get(), before);
}

// An argument Codec that reads less than it wrote. For a result this was caught (trailing
// bytes); for an argument the next argument was decoded from the leftover bytes, and the task
// silently computed with wrong values (1 + 0 + 2 = 3 here, instead of an error).
int sum_halves(Halves h, int c) { return h.a + h.b + c; }
int half_sum(Halves h) { return h.a + h.b; }

TEST(Serialization, ArgumentCodecThatReadsLessThanItWroteIsASerializationError) {
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  auto shifted = pool.submit(sum_halves, Halves{1, 2}, 3);
  const auto error = error_of<SerializationError>(shifted);
  ASSERT_TRUE(error);
  const std::string what = error->what();
  EXPECT_NE(what.find("4 bytes of the request were left"), std::string::npos) << what;
  EXPECT_TRUE(multicore_test::thrown_exactly<SerializationError>([&] {
    (void)pool.call(sum_halves, Halves{1, 2}, 3);
  }));
  // Alone, or last: the leftover bytes are not read by anything.
  EXPECT_TRUE(multicore_test::thrown_exactly<SerializationError>([&] {
    (void)pool.call(half_sum, Halves{1, 2});
  }));
  EXPECT_EQ(pool.submit(own_pid).get(), before);
}

TEST(Serialization, MapItemCodecThatReadsLessThanItWroteIsASerializationError) {
  Pool pool(PoolOptions{.workers = 1});
  const std::vector<Halves> inputs(10, Halves{1, 2});
  int errors = 0;
  auto results = pool.map(half_sum, inputs, {.chunk_size = 5});
  for (auto it = results.begin(); it != results.end(); ++it) {
    if (multicore_test::thrown_exactly<SerializationError>([&] { (void)*it; })) ++errors;
  }
  EXPECT_EQ(errors, 10);
}

}  // namespace
