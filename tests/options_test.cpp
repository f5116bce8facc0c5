// SPDX-License-Identifier: MIT
// Tests for PoolOptions: validation, workers, on_worker_start, inline mode (run_inline and
// MULTICORE_INLINE) and ring_bytes with payloads much larger than the ring.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <future>
#include <multicore/multicore.hpp>
#include <new>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "support/leak_check.hpp"
#include "support/shared_counter.hpp"
#include "support/workers.hpp"

namespace {

using multicore_test::SharedCounter;

using multicore::Pool;
using multicore::PoolOptions;
using multicore::RemoteError;

int twice(int x) { return 2 * x; }
int pid_of_runner() { return static_cast<int>(getpid()); }
int pid_of_runner_of_item(int /*item*/) { return static_cast<int>(getpid()); }
int fail_with(int x) { throw std::runtime_error("failed " + std::to_string(x)); }

/// The std::invalid_argument message Pool(options) throws, or "" (and a test failure).
std::string invalid_argument_message(PoolOptions options) {
  try {
    Pool pool(std::move(options));
    ADD_FAILURE() << "the Pool was made";
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected std::invalid_argument, got " << typeid(e).name() << ": " << e.what();
  }
  return "";
}

PoolOptions with_ring(std::size_t bytes) {
  PoolOptions o;
  o.workers = 1;
  o.ring_bytes = bytes;
  return o;
}

// ----- Validation --------------------------------------------------------------------------------

TEST(PoolOptionsValidation, RingBytesOutOfRange) {
  const std::size_t one_gib = std::size_t{1} << 30;
  // 4 KiB was the minimum until the cost of its hand-offs showed (see payload_bench's
  // BM_RoundTripRing): a 16 MiB echo took 20 times as long as through the default ring.
  for (std::size_t bad : {std::size_t{0}, std::size_t{1}, std::size_t{4096}, std::size_t{65535},
                          one_gib + 1, std::size_t{1} << 40, static_cast<std::size_t>(-1)}) {
    SCOPED_TRACE("ring_bytes " + std::to_string(bad));
    const std::string what = invalid_argument_message(with_ring(bad));
    EXPECT_NE(what.find("ring_bytes"), std::string::npos) << what;
    EXPECT_NE(what.find(std::to_string(bad)), std::string::npos) << what;
  }
  EXPECT_TRUE(multicore_test::child_pids().empty());
}

TEST(PoolOptionsValidation, TooManyWorkers) {
  for (unsigned bad : {1025u, 5000u, ~0u}) {
    PoolOptions o;
    o.workers = bad;
    const std::string what = invalid_argument_message(o);
    EXPECT_NE(what.find("workers"), std::string::npos) << what;
    EXPECT_NE(what.find(std::to_string(bad)), std::string::npos) << what;
  }
}

TEST(PoolOptionsValidation, NegativeTaskTimeout) {
  PoolOptions o;
  o.workers = 1;
  o.task_timeout = std::chrono::milliseconds(-1);
  const std::string what = invalid_argument_message(o);
  EXPECT_NE(what.find("task_timeout"), std::string::npos) << what;
}

TEST(PoolOptionsValidation, RingBytesAtTheLowerBoundWorks) {
  Pool pool(with_ring(std::size_t{64} << 10));
  EXPECT_EQ(pool.submit(twice, 21).get(), 42);
}

TEST(PoolOptionsValidation, RingBytesNotAPowerOfTwoWorks) {
  for (std::size_t bytes : {std::size_t{65537}, std::size_t{100000}, std::size_t{300000}}) {
    SCOPED_TRACE("ring_bytes " + std::to_string(bytes));
    Pool pool(with_ring(bytes));
    EXPECT_EQ(pool.submit(twice, 5).get(), 10);
    // A payload larger than the ring, however it was rounded.
    const std::vector<int> big(300'000, 7);
    EXPECT_EQ(pool.submit([](std::vector<int> v) { return v; }, big).get(), big);
  }
}

TEST(PoolOptionsValidation, WorkersZeroMeansUsableCores) {
  PoolOptions o;
  o.workers = 0;
  Pool pool(o);
  EXPECT_EQ(pool.size(), multicore::usable_cores());
}

// ----- on_worker_start ---------------------------------------------------------------------------

// Set by on_worker_start in the process that runs it.
int started_in_pid = 0;
int start_count = 0;

void record_start() {
  started_in_pid = static_cast<int>(getpid());
  ++start_count;
}

struct StartReport {
  int pid;             // the process that ran the task
  int started_in_pid;  // the process on_worker_start ran in, as this process saw it
  int start_count;     // how often on_worker_start ran in this process
  bool all_arrived;    // the barrier saw every worker
};

// Counts arrivals in shared memory, then waits (bounded) until `expected` tasks are running at
// once: since a worker runs one task at a time, those tasks run in distinct workers.
struct Rendezvous {
  std::atomic<int>* arrived;
  int expected;
  StartReport operator()() const {
    arrived->fetch_add(1);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    bool all = false;
    while (!(all = arrived->load() >= expected) && std::chrono::steady_clock::now() < give_up) {
      usleep(200);
    }
    return {static_cast<int>(getpid()), started_in_pid, start_count, all};
  }
};

class OnWorkerStart : public multicore_test::WorkerCountTest {};

INSTANTIATE_TEST_SUITE_P(Workers, OnWorkerStart, multicore_test::worker_counts(),
                         multicore_test::worker_count_name);

TEST_P(OnWorkerStart, RunsOnceInEveryWorker) {
  const SharedCounter arrived;  // made before the pool, so the workers share it
  PoolOptions o;
  o.workers = GetParam();
  o.on_worker_start = record_start;
  Pool pool(o);
  const int n = static_cast<int>(pool.size());
  EXPECT_EQ(start_count, 0) << "on_worker_start ran in the parent";

  std::vector<std::future<StartReport>> reports;
  for (int i = 0; i < n; ++i) reports.push_back(pool.submit(Rendezvous{arrived.get(), n}));
  std::set<int> pids;
  for (auto& f : reports) {
    const StartReport r = f.get();
    EXPECT_TRUE(r.all_arrived) << "the tasks did not run in " << n << " workers at once";
    EXPECT_NE(r.pid, static_cast<int>(getpid()));
    EXPECT_EQ(r.started_in_pid, r.pid);
    EXPECT_EQ(r.start_count, 1);
    pids.insert(r.pid);
  }
  EXPECT_EQ(pids.size(), static_cast<std::size_t>(n));

  // Later tasks see the same one-time start in whichever worker runs them.
  for (int i = 0; i < 4 * n; ++i) {
    const StartReport r = pool.submit(Rendezvous{arrived.get(), 0}).get();
    EXPECT_EQ(r.started_in_pid, r.pid);
    EXPECT_EQ(r.start_count, 1);
    EXPECT_EQ(pids.count(r.pid), 1u) << "a task ran in an unknown worker " << r.pid;
  }
}

TEST(OnWorkerStartFailure, ThrowingMakesTheConstructorThrowError) {
  PoolOptions o;
  o.workers = 2;
  o.on_worker_start = [] { throw std::runtime_error("no database at /nowhere"); };
  try {
    Pool pool(o);
    ADD_FAILURE() << "the Pool was made";
  } catch (const multicore::Error& e) {
    EXPECT_EQ(typeid(e), typeid(multicore::Error)) << typeid(e).name();
    const std::string what = e.what();
    EXPECT_NE(what.find("on_worker_start"), std::string::npos) << what;
    EXPECT_NE(what.find("no database at /nowhere"), std::string::npos) << what;
  }
  // Nothing is left running (the leak check verifies this again after the tests).
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
}

TEST(OnWorkerStartFailure, ThrowingANonStdExceptionMakesTheConstructorThrowError) {
  PoolOptions o;
  o.workers = 1;
  o.on_worker_start = [] { throw 17; };
  try {
    Pool pool(o);
    ADD_FAILURE() << "the Pool was made";
  } catch (const multicore::Error& e) {
    EXPECT_EQ(typeid(e), typeid(multicore::Error)) << typeid(e).name();
    EXPECT_NE(std::string(e.what()).find("on_worker_start"), std::string::npos) << e.what();
  }
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
}

// ----- Inline mode -------------------------------------------------------------------------------

/// Sets (or unsets, for nullopt) MULTICORE_INLINE for the scope, then restores it.
class InlineEnvironment {
 public:
  explicit InlineEnvironment(std::optional<std::string> value) {
    if (const char* old = std::getenv("MULTICORE_INLINE")) saved_ = old;
    if (value) {
      setenv("MULTICORE_INLINE", value->c_str(), 1);
    } else {
      unsetenv("MULTICORE_INLINE");
    }
  }
  ~InlineEnvironment() {
    if (saved_) {
      setenv("MULTICORE_INLINE", saved_->c_str(), 1);
    } else {
      unsetenv("MULTICORE_INLINE");
    }
  }
  InlineEnvironment(const InlineEnvironment&) = delete;
  InlineEnvironment& operator=(const InlineEnvironment&) = delete;

 private:
  std::optional<std::string> saved_;
};

/// Checks that `pool` runs everything in this process and still reports errors as RemoteError.
void expect_runs_inline(Pool& pool, unsigned configured_workers) {
  const int me = static_cast<int>(getpid());
  EXPECT_EQ(pool.size(), configured_workers);
  EXPECT_EQ(pool.submit(pid_of_runner).get(), me);
  EXPECT_EQ(pool.submit(twice, 8).get(), 16);
  auto failing = pool.submit(fail_with, 3);
  try {
    (void)failing.get();
    ADD_FAILURE() << "no exception";
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::runtime_error");
    EXPECT_EQ(e.message(), "failed 3");
  }
  std::vector<int> pids;
  for (int pid : pool.map(pid_of_runner_of_item, std::vector<int>{1, 2, 3})) pids.push_back(pid);
  EXPECT_EQ(pids, std::vector<int>(3, me));
  multicore::Task<int> task(pool);
  task.run(pid_of_runner);
  EXPECT_EQ(task.get(), std::vector<int>{me});
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{}) << "inline mode made processes";
  pool.shutdown();
  EXPECT_THROW(pool.submit(twice, 1), multicore::PoolClosed);
}

TEST(InlineMode, RunInlineOption) {
  const InlineEnvironment unset(std::nullopt);
  start_count = 0;
  PoolOptions o;
  o.workers = 3;
  o.run_inline = true;
  o.on_worker_start = record_start;
  Pool pool(o);
  // on_worker_start runs once, here (there are no workers).
  EXPECT_EQ(start_count, 1);
  EXPECT_EQ(started_in_pid, static_cast<int>(getpid()));
  expect_runs_inline(pool, 3);
  start_count = 0;
  started_in_pid = 0;
}

TEST(InlineMode, EnvironmentVariable) {
  const InlineEnvironment inline_env(std::string("1"));
  PoolOptions o;
  o.workers = 2;
  Pool pool(o);
  expect_runs_inline(pool, 2);
}

TEST(InlineMode, EnvironmentVariableZeroMeansWorkers) {
  const InlineEnvironment off(std::string("0"));
  PoolOptions o;
  o.workers = 1;
  Pool pool(o);
  EXPECT_NE(pool.submit(pid_of_runner).get(), static_cast<int>(getpid()));
}

// ----- Payloads much larger than the ring --------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64, fixed seed), so that a fragment delivered out
/// of place or twice cannot go unnoticed.
template <class Byte>
std::vector<Byte> pseudo_random_bytes(std::size_t n, std::uint64_t seed) {
  std::vector<Byte> out(n);
  std::uint64_t s = seed * 0x9E3779B97F4A7C15u + 1;
  for (std::size_t i = 0; i < n; i += sizeof s) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    std::memcpy(out.data() + i, &s, std::min(sizeof s, n - i));
  }
  return out;
}

template <class Byte>
std::vector<Byte> plus_one(std::vector<Byte> v) {
  for (Byte& b : v) b = static_cast<Byte>(b + 1);
  return v;
}

// Three bytes: never aligned, and split between the ring's pieces.
struct Rgb {
  std::uint8_t r, g, b;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

// Twelve bytes, aligned to four.
struct Triple {
  std::int32_t x, y, z;
  friend bool operator==(const Triple&, const Triple&) = default;
};

template <class Sequence>
Sequence sample_sequence(std::size_t n, std::uint64_t seed) {
  using E = typename Sequence::value_type;
  const auto bytes = pseudo_random_bytes<std::uint8_t>(n * sizeof(E), seed);
  Sequence out(n, E{});
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

template <class Sequence>
Sequence reversed(Sequence s) {
  std::reverse(s.begin(), s.end());
  return s;
}

// A large sequence that is a message's last value (the last argument, or the result) travels
// as the message's tail (see wire.hpp): copied between the ring and its vector with no buffer
// in between. The odd-sized string argument before it makes the tail start anywhere in the
// ring; the Format::json Task and the non-last argument take the ordinary path.
template <class Sequence>
void expect_sequences_round_trip(Pool& pool) {
  const auto reverse_after = [](std::string /*prefix*/, Sequence s) { return reversed(s); };
  const auto reverse_before = [](Sequence s, int /*suffix*/) { return reversed(s); };
  for (const std::size_t n : {std::size_t{100}, std::size_t{70'001}, std::size_t{300'007}}) {
    SCOPED_TRACE("elements " + std::to_string(n));
    const Sequence input = sample_sequence<Sequence>(n, n);
    const Sequence expected = reversed(input);
    EXPECT_TRUE(pool.submit(reverse_after, std::string("odd"), input).get() == expected);
    EXPECT_TRUE(pool.call(reverse_after, std::string("x"), input) == expected);
    EXPECT_TRUE(pool.submit(reverse_before, input, 1).get() == expected);
    multicore::Task<Sequence> task(pool);
    task.run(reverse_after, std::string("ab"), input);
    task.run(reverse_after, std::string("abcde"), input);
    for (const Sequence& got : task.get()) EXPECT_TRUE(got == expected);
  }
}

TEST(LargePayloads, SequencesOfEveryElementSizeTravelAsTails) {
  for (const std::size_t ring : {std::size_t{64} << 10, std::size_t{1} << 20}) {
    SCOPED_TRACE("ring_bytes " + std::to_string(ring));
    Pool pool(PoolOptions{.workers = 2, .ring_bytes = ring});
    expect_sequences_round_trip<std::vector<std::uint8_t>>(pool);
    expect_sequences_round_trip<std::vector<Rgb>>(pool);
    expect_sequences_round_trip<std::vector<std::uint32_t>>(pool);
    expect_sequences_round_trip<std::vector<Triple>>(pool);
    expect_sequences_round_trip<std::vector<std::uint64_t>>(pool);
    expect_sequences_round_trip<std::string>(pool);
    expect_sequences_round_trip<std::u16string>(pool);
  }
}

TEST(LargePayloads, JsonSequencesTakeTheOrdinaryPath) {
  Pool pool(PoolOptions{.workers = 1, .ring_bytes = std::size_t{64} << 10});
  const auto input = sample_sequence<std::vector<std::uint32_t>>(100'000, 5);
  multicore::Task<std::vector<std::uint32_t>> task(pool, {.format = multicore::Format::json});
  task.run([](std::vector<std::uint32_t> v) { return reversed(v); }, input);
  const auto results = task.get();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0] == reversed(input));
}

TEST(LargePayloads, SmallRingCarriesMegabytes) {
  PoolOptions o;
  o.workers = 2;
  o.ring_bytes = std::size_t{64} << 10;
  Pool pool(o);
  for (std::size_t size :
       {std::size_t{1} << 20, (std::size_t{3} << 20) + 17, std::size_t{8} << 20}) {
    SCOPED_TRACE("bytes " + std::to_string(size));
    const auto input = pseudo_random_bytes<std::uint8_t>(size, size);
    const auto got = pool.submit(plus_one<std::uint8_t>, input).get();
    ASSERT_EQ(got.size(), input.size());
    EXPECT_TRUE(got == plus_one(input));
  }
  // Through cereal (a vector of strings) as well, and through map.
  std::vector<std::string> words;
  for (int i = 0; i < 20000; ++i) words.push_back("word-" + std::to_string(i * 7919));
  EXPECT_EQ(pool.submit([](std::vector<std::string> v) { return v; }, words).get(), words);
  std::vector<std::vector<std::uint8_t>> blobs;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    blobs.push_back(pseudo_random_bytes<std::uint8_t>(300'000, seed));
  }
  std::size_t i = 0;
  for (const auto& got : pool.map(plus_one<std::uint8_t>, blobs)) {
    ASSERT_LT(i, blobs.size());
    EXPECT_TRUE(got == plus_one(blobs[i])) << "blob " << i;
    ++i;
  }
  EXPECT_EQ(i, blobs.size());
}

// Issue 2: "a 64 MiB vector through a 64 KiB ring round-trips intact".
TEST(LargePayloads, SixtyFourMebibytesThroughSixtyFourKibibyteRing) {
  PoolOptions o;
  o.workers = 1;
  o.ring_bytes = 64 << 10;
  Pool pool(o);
  const auto input = pseudo_random_bytes<char>(std::size_t{64} << 20, 64);
  const auto got = pool.submit([](std::vector<char> v) { return v; }, input).get();
  ASSERT_EQ(got.size(), input.size());
  EXPECT_TRUE(got == input);  // not EXPECT_EQ: a failure would print 64 MiB
  // The pool still works afterwards.
  EXPECT_EQ(pool.submit(twice, 32).get(), 64);
}

}  // namespace
