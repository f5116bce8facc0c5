// SPDX-License-Identifier: MIT
// Adversarial use that the library withstands (issue 8, hardening): signals hammering every
// entry point, an application reaping or stopping the pool's processes, tasks that stop
// themselves, change identity or scribble over their rings, forks and execs in the
// application, extreme but legal options, misbehaving Codecs, odd ranges, and memory limits in
// the application. Regression guards; what still breaks is in adversarial_failing_test.cpp.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <future>
#include <initializer_list>
#include <limits>
#include <memory>
#include <multicore/detail/transport/shm/shm_channel.hpp>  // current_worker(): the tests that corrupt a ring
#include <multicore/multicore.hpp>
#include <ranges>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"
#include "support/numbers.hpp"
#include "support/sanitizer.hpp"

namespace {

using multicore::Pool;
using multicore::PoolClosed;
using multicore::PoolOptions;
using multicore::SerializationError;
using multicore::WorkerLost;
using multicore_test::error_of;
using multicore_test::in_child;
using multicore_test::say;
using multicore_test::thrown_exactly;
using namespace std::chrono_literals;

PoolOptions workers(unsigned n) {
  PoolOptions o;
  o.workers = n;
  return o;
}

int square(int x) { return x * x; }
int plus_one(int x) { return x + 1; }
int crash(int /*x*/) { multicore_test::segfault_by_raise(); }

/// Waits (bounded) until a child of `fork_server` (a worker) is in `state`: 'T' (stopped) or
/// 'Z' (dead, not reaped yet).
bool some_worker_in_state(char state, pid_t fork_server) {
  for (const auto deadline = std::chrono::steady_clock::now() + 10s;
       std::chrono::steady_clock::now() < deadline; usleep(1000)) {
    std::unique_ptr<DIR, int (*)(DIR*)> proc(opendir("/proc"), closedir);
    while (const dirent* e = proc ? readdir(proc.get()) : nullptr) {
      char* end = nullptr;
      const long pid = std::strtol(e->d_name, &end, 10);
      if (*end != '\0' || pid <= 0) continue;
      const auto s = multicore_test::proc_stat(static_cast<pid_t>(pid));
      if (s && s->ppid == fork_server && s->state == state) return true;
    }
  }
  return false;
}

// ----- Signals -------------------------------------------------------------------------------

void ignore_signal(int /*signal*/) {}

// A handler installed without SA_RESTART, fired every 200 us: every blocking call in the
// application's threads (futex waits, condition variables, waitpid, poll, send) keeps seeing
// EINTR, through submit, call, map, Task and the destructor.
//
// Tests whose workers crash on purpose have Crash or Corrupt in their names: CI's TSan run
// leaves them out (TSan turns a worker's SIGSEGV into a report and exit code 66).
TEST(Adversarial, SignalsWithoutSaRestartHammerEveryEntryPoint) {
  struct sigaction action {};
  action.sa_handler = ignore_signal;
  struct sigaction old {};
  sigaction(SIGALRM, &action, &old);
  const itimerval often{{0, 200}, {0, 200}};
  setitimer(ITIMER_REAL, &often, nullptr);
  {
    Pool pool(workers(2));
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 200; ++i) futures.push_back(pool.submit(square, i));
    for (int i = 0; i < 200; ++i) EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), i * i);
    for (int i = 0; i < 200; ++i) EXPECT_EQ(pool.call(square, i), i * i);
    long sum = 0;
    for (int x : pool.map(plus_one, multicore_test::Numbers(0, 20'000))) sum += x;
    EXPECT_EQ(sum, 20'000L * 20'001 / 2);
    multicore::Task<int> task(pool);
    for (int i = 0; i < 20; ++i) task.run(square, i);
    EXPECT_EQ(task.get().size(), 20u);
  }
  const itimerval off{};
  setitimer(ITIMER_REAL, &off, nullptr);
  sigaction(SIGALRM, &old, nullptr);
}

void reap_every_child(int /*signal*/) {
  const int saved = errno;
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  errno = saved;
}

// The application reaps every child it has from a SIGCHLD handler: the pool's only child is
// its fork server, which reaps the workers itself, so crashes are still reported in full.
TEST(Adversarial, SigchldHandlerThatReapsEveryChildStillSeesCrashes) {
  struct sigaction action {};
  action.sa_handler = reap_every_child;
  action.sa_flags = SA_RESTART;
  struct sigaction old {};
  sigaction(SIGCHLD, &action, &old);
  {
    Pool pool(workers(2));
    for (int i = 0; i < 10; ++i) EXPECT_EQ(pool.call(square, i), i * i);
    auto crashed = pool.submit(crash, 1);
    const auto lost = error_of<WorkerLost>(crashed);
    ASSERT_TRUE(lost);
    EXPECT_EQ(lost->signal(), SIGSEGV);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(pool.call(square, i), i * i);
  }
  sigaction(SIGCHLD, &old, nullptr);
}

// The fork server is stopped while a worker crashes: nobody can reap or replace it until
// SIGCONT, then the crash is reported and the queued task runs on the replacement.
TEST(Adversarial, StoppedForkServerReportsACrashAfterSigcont) {
  Pool pool(workers(1));
  multicore_test::TerminateIfFailed guard(pool);
  const std::vector<pid_t> fork_servers = multicore_test::child_pids();
  ASSERT_EQ(fork_servers.size(), 1u);
  ASSERT_EQ(kill(fork_servers[0], SIGSTOP), 0);
  auto crashed = pool.submit(crash, 1);
  auto queued = pool.submit(square, 3);
  EXPECT_TRUE(some_worker_in_state('Z', fork_servers[0])) << "the worker did not die";
  ASSERT_EQ(kill(fork_servers[0], SIGCONT), 0);
  ASSERT_TRUE(multicore_test::ready_within(crashed));
  EXPECT_TRUE(error_of<WorkerLost>(crashed));
  ASSERT_TRUE(multicore_test::ready_within(queued));
  EXPECT_EQ(queued.get(), 9);
  EXPECT_EQ(pool.call(square, 4), 16);
}

int stop_myself(int x) {
  raise(SIGSTOP);
  return x;
}

TEST(Adversarial, TaskThatStopsItselfTimesOut) {
  PoolOptions o = workers(1);
  o.task_timeout = 200ms;
  Pool pool(o);
  auto stopped = pool.submit(stop_myself, 1);
  ASSERT_TRUE(multicore_test::ready_within(stopped));
  EXPECT_TRUE(error_of<multicore::TaskTimeout>(stopped));
  EXPECT_EQ(pool.call(square, 4), 16);
}

TEST(Adversarial, TaskThatStopsItselfWithoutTimeoutIsCutOffByTerminate) {
  Pool pool(workers(1));
  const std::vector<pid_t> fork_servers = multicore_test::child_pids();
  ASSERT_EQ(fork_servers.size(), 1u);
  auto stopped = pool.submit(stop_myself, 1);
  EXPECT_TRUE(some_worker_in_state('T', fork_servers[0]));
  pool.terminate();
  EXPECT_TRUE(error_of<PoolClosed>(stopped));
}

// Started flag and worker pid through a pipe, then SIGTERM from outside while it runs.
int report_then_wait(int fd) {
  const pid_t me = getpid();
  multicore_test::write_all(fd, &me, sizeof me);
  multicore_test::hang_forever();
}

TEST(Adversarial, SigtermToABusyWorkerIsWorkerLostWithThatSignal) {
  multicore_test::Pipe started;
  Pool pool(workers(2));
  multicore_test::TerminateIfFailed guard(pool);
  auto busy = pool.submit(report_then_wait, started.write_fd());
  const auto worker = multicore_test::read_value<pid_t>(started.read_fd());
  ASSERT_GT(worker, 0);
  ASSERT_EQ(kill(worker, SIGTERM), 0);
  ASSERT_TRUE(multicore_test::ready_within(busy));
  const auto lost = error_of<WorkerLost>(busy);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGTERM);
  EXPECT_EQ(pool.call(square, 3), 9);
}

// ----- Tasks that change their process -------------------------------------------------------

int become_somebody_else(int x) {
  if (chdir("/") != 0) return -1;
  setsid();  // fails (EPERM): a worker leads its own process group already
  if (setgid(65534) != 0 || setuid(65534) != 0) return -3;
  return x;
}

// A worker that moves to /, tries to start a new session and drops root still
// answers, and can still be killed, replaced and stopped by its (root) fork server.
TEST(Adversarial, TaskThatChangesUidAndDirectoryThenCrashes) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to change uid";
  {
    Pool pool(workers(2));
    EXPECT_EQ(pool.call(become_somebody_else, 1), 1);
    EXPECT_EQ(pool.call(become_somebody_else, 2), 2);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
    auto crashed = pool.submit(crash, 1);
    EXPECT_TRUE(error_of<WorkerLost>(crashed));
  }
  EXPECT_TRUE(multicore_test::no_children_within(5s));
}

// A task replaces its response ring with private memory: its answer never reaches the parent,
// which sees a worker claiming an answer it did not write (corrupt) and replaces it.
int hide_my_response_ring(int x) {
  const auto* worker = multicore::detail::current_worker();
  void* ring = const_cast<std::byte*>(worker->answers.ring.data);
  if (mmap(ring, 4096, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) ==
      MAP_FAILED) {
    return -1;
  }
  return x;
}

TEST(Adversarial, TaskThatRemapsItsResponseRingIsCorruptAndReplaced) {
  PoolOptions o = workers(2);
  o.task_timeout = 2s;  // the answer could also just never come: bounded either way
  Pool pool(o);
  auto hidden = pool.submit(hide_my_response_ring, 1);
  ASSERT_TRUE(multicore_test::ready_within(hidden));
  EXPECT_THROW((void)hidden.get(), multicore::Error);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
}

// A task unmaps the start of its request ring: its own answer still goes out, the worker then
// faults reading the next request, and that request runs on the replacement.
int unmap_my_request_ring(int x) {
  const auto* worker = multicore::detail::current_worker();
  munmap(const_cast<std::byte*>(worker->requests.ring.data), 4096);
  return x;
}

TEST(Adversarial, TaskThatUnmapsItsRequestRingCrashesOnlyItsWorker) {
  Pool pool(workers(1));
  EXPECT_EQ(pool.call(unmap_my_request_ring, 1), 1);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(pool.call(square, i), i * i);
}

int use_an_inline_pool(int x) {
  PoolOptions o;
  o.run_inline = true;
  Pool inner(o);
  return inner.call(square, x) + static_cast<int>(multicore::ranges(10, 3).size());
}

TEST(Adversarial, InlinePoolInsideATask) {
  Pool pool(workers(1));
  EXPECT_EQ(pool.call(use_an_inline_pool, 4), 19);
}

// ----- The application forks and execs -------------------------------------------------------

// The application forks (a child that uses nothing of the pool and _exits) in the middle of a
// map and while another thread is in call(): the parent's pool does not notice.
TEST(Adversarial, ApplicationForksMidMapAndDuringCallsChildUsesNothing) {
  Pool pool(workers(2));
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::thread caller([&] {
    for (int i = 0; !stop; i = (i + 1) % 100) {
      if (pool.call(square, i) != i * i) ++wrong;
    }
  });
  long sum = 0;
  int n = 0;
  for (int x : pool.map(plus_one, multicore_test::Numbers(0, 100'000))) {
    sum += x;
    if (++n % 10'000 == 0) {
      const pid_t child = fork();
      if (child == 0) _exit(0);
      EXPECT_EQ(multicore_test::reap(child), 0);
    }
  }
  stop = true;
  caller.join();
  EXPECT_EQ(sum, 100'000L * 100'001 / 2);
  EXPECT_EQ(wrong.load(), 0);
}

// exec() while a pool is alive: the command socket is close-on-exec, so the fork server sees
// end-of-file and takes its workers down; nothing outlives the exec'd program.
TEST(Adversarial, ApplicationExecsWhileThePoolIsAliveLeavesNothing) {
  const auto end = in_child(
      [](int /*report*/) {
        Pool pool(workers(2));
        if (pool.call(square, 2) != 4) return 1;
        execl("/bin/true", "true", static_cast<char*>(nullptr));
        return 2;
      },
      20s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

// ----- Extreme but legal options ----------------------------------------------------------------

TEST(Adversarial, ChunkSizeExtremes) {
  Pool pool(workers(2));
  long sum = 0;
  for (int x : pool.map(plus_one, multicore_test::Numbers(0, 10'000),
                        {.chunk_size = std::numeric_limits<std::size_t>::max()})) {
    sum += x;
  }
  EXPECT_EQ(sum, 10'000L * 10'001 / 2);
  sum = 0;
  for (int x : pool.map(plus_one, multicore_test::Numbers(0, 5'000), {.chunk_size = 1})) sum += x;
  EXPECT_EQ(sum, 5'000L * 5'001 / 2);
}

int blocking_item(int x) {
  usleep(500);
  return x;
}

TEST(Adversarial, ThreadsPerWorkerAtItsMaximum) {
  Pool pool(workers(2));
  long sum = 0;
  for (int x : pool.map(blocking_item, multicore_test::Numbers(0, 2048),
                        {.chunk_size = 1024, .threads_per_worker = 1024})) {
    sum += x;
  }
  EXPECT_EQ(sum, 2047L * 2048 / 2);
}

std::vector<char> echo_bytes(std::vector<char> v) { return v; }

// The smallest ring (4097 bytes: rounded up to 8 KiB) and payloads at every boundary of its
// pieces, of the ring, and of the tail threshold.
TEST(Adversarial, SmallestRingWithPayloadsAtEveryBoundary) {
  PoolOptions o = workers(2);
  o.ring_bytes = 65537;  // just above the minimum: rounded up to 128 KiB, pieces of 16 KiB
  Pool pool(o);
  for (const std::size_t n :
       std::initializer_list<std::size_t>{0, 1, 16383, 16384, 16385, 65535, 65536, 65537, 131071,
                                          131072, 131073, 262145, 300'000}) {
    std::vector<char> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<char>(i * 7);
    EXPECT_EQ(pool.call(echo_bytes, v), v) << n << " bytes";
  }
}

TEST(Adversarial, TwentyThousandFuturesAtOnce) {
  Pool pool(workers(2));
  std::vector<std::future<int>> futures;
  futures.reserve(20'000);
  for (int i = 0; i < 20'000; ++i) futures.push_back(pool.submit(square, i % 1000));
  for (int i = 0; i < 20'000; ++i) {
    EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), (i % 1000) * (i % 1000));
  }
}

TEST(Adversarial, SelfMoveAssignmentKeepsThePool) {
  Pool pool(workers(1));
  Pool& same = pool;
  pool = std::move(same);
  EXPECT_EQ(pool.call(square, 5), 25);
}

// ----- Codecs and values ---------------------------------------------------------------------

struct Greedy {  // its decode reads more than its encode wrote
  int v = 0;
};
struct Prickly {  // its encode throws an int for negatives, its decode a C string for 99
  int v = 0;
};

}  // namespace

template <>
struct multicore::Codec<Greedy> {
  static void encode(Writer& out, const Greedy& g) { out.write(&g.v, sizeof g.v); }
  static Greedy decode(Reader& in) {
    Greedy g;
    in.read(&g.v, sizeof g.v);
    int more = 0;
    in.read(&more, sizeof more);
    return g;
  }
};

template <>
struct multicore::Codec<Prickly> {
  static void encode(Writer& out, const Prickly& p) {
    if (p.v < 0) throw 17;
    out.write(&p.v, sizeof p.v);
  }
  static Prickly decode(Reader& in) {
    Prickly p;
    in.read(&p.v, sizeof p.v);
    if (p.v == 99) throw "99 is not welcome";
    return p;
  }
};

namespace {

int from_greedy(Greedy g) { return g.v; }
Prickly to_prickly(int v) { return Prickly{v}; }
int from_prickly(Prickly p) { return p.v; }

// Whatever a Codec does wrong (over-reading, throwing things that are not exceptions), in the
// application or in the worker, the caller gets a SerializationError and the pool carries on.
TEST(Adversarial, MisbehavingCodecsGiveSerializationError) {
  Pool pool(workers(2));
  const auto serialization_error = [](auto&& f) { return thrown_exactly<SerializationError>(f); };
  EXPECT_TRUE(serialization_error([&] { (void)pool.call(from_greedy, Greedy{3}); }));
  EXPECT_TRUE(serialization_error([&] { (void)pool.call(to_prickly, 99); }));
  EXPECT_TRUE(serialization_error([&] { (void)pool.call(to_prickly, -1); }));
  EXPECT_TRUE(serialization_error([&] { (void)pool.call(from_prickly, Prickly{-1}); }));
  EXPECT_TRUE(serialization_error([&] { (void)pool.call(from_prickly, Prickly{99}); }));
  auto future = pool.submit(to_prickly, 99);
  EXPECT_TRUE(error_of<SerializationError>(future));
  const std::vector<Prickly> unsendable{{1}, {-1}};
  EXPECT_TRUE(serialization_error([&] {
    for (int x : pool.map(from_prickly, unsendable)) (void)x;
  }));
  const std::vector<int> inputs{1, 99, 3};
  auto results = pool.map(to_prickly, inputs);
  std::vector<std::string> outcomes;
  for (auto it = results.begin(); it != results.end(); ++it) {
    try {
      outcomes.push_back(std::to_string((*it).v));
    } catch (const SerializationError&) {
      outcomes.push_back("SerializationError at " + std::to_string(it.index()));
    }
  }
  EXPECT_EQ(outcomes, (std::vector<std::string>{"1", "SerializationError at 1", "3"}));
  EXPECT_EQ(pool.call(square, 6), 36);
}

double not_a_number(int /*x*/) { return std::nan(""); }
double infinity(int sign) { return sign * HUGE_VAL; }
std::string echo_string(std::string s) { return s; }

TEST(Adversarial, JsonCarriesNanInfinitiesAndEveryNonNulByte) {
  Pool pool(workers(2));
  multicore::Task<double> numbers(pool, {.format = multicore::Format::json});
  numbers.run(not_a_number, 0);
  numbers.run(infinity, 1);
  numbers.run(infinity, -1);
  const std::vector<double> got = numbers.get();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_TRUE(std::isnan(got[0]));
  EXPECT_EQ(got[1], HUGE_VAL);
  EXPECT_EQ(got[2], -HUGE_VAL);
  std::string every_byte;
  for (int c = 1; c < 256; ++c) every_byte.push_back(static_cast<char>(c));
  multicore::Task<std::string> text(pool, {.format = multicore::Format::json});
  text.run(echo_string, every_byte);
  text.run(echo_string, std::string("\xF0\x9F\x98\x80 \xE2\x82\xAC \xC3\xA9 \xFF\xFE"));
  EXPECT_EQ(text.get(),
            (std::vector<std::string>{
                every_byte, std::string("\xF0\x9F\x98\x80 \xE2\x82\xAC \xC3\xA9 \xFF\xFE")}));
}

TEST(Adversarial, TaskVoidDropsResultsAndTaskConvertsThem) {
  Pool pool(workers(2));
  multicore::Task<void> dropped(pool);
  dropped.run(square, 3);
  dropped.run(echo_string, std::string("ignored"));
  EXPECT_NO_THROW(dropped.get());
  multicore::Task<long double> widened(pool);
  widened.run(square, 3);
  widened.run(not_a_number, 0);
  const auto got = widened.get();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], 9.0L);
  EXPECT_TRUE(std::isnan(got[1]));
}

// A serializable function object whose copy constructor throws: submit, call and Task encode
// it without copying; map copies it once, in the caller, and lets the exception through.
struct ThrowsWhenCopied {
  int factor = 2;
  ThrowsWhenCopied() = default;
  ThrowsWhenCopied(const ThrowsWhenCopied& /*other*/) { throw std::runtime_error("no copies"); }
  ThrowsWhenCopied(ThrowsWhenCopied&&) = default;
  ThrowsWhenCopied& operator=(const ThrowsWhenCopied&) = default;
  ThrowsWhenCopied& operator=(ThrowsWhenCopied&&) = default;
  ~ThrowsWhenCopied() = default;
  int operator()(int x) const { return x * factor; }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(factor);
  }
};

TEST(Adversarial, CallableWhoseCopyThrows) {
  Pool pool(workers(2));
  const ThrowsWhenCopied f;
  EXPECT_EQ(pool.submit(f, 3).get(), 6);
  EXPECT_EQ(pool.call(f, 4), 8);
  multicore::Task<int> task(pool);
  task.run(f, 5);
  EXPECT_EQ(task.get(), std::vector<int>{10});
  const std::vector<int> inputs{1, 2, 3};
  EXPECT_THROW((void)pool.map(f, inputs), std::runtime_error);
  EXPECT_EQ(pool.call(square, 3), 9);
}

// Inputs that can only be moved, made on the fly by a single-pass range.
struct MoveOnly {
  int v = 0;
  MoveOnly() = default;
  explicit MoveOnly(int x) : v(x) {}
  MoveOnly(MoveOnly&&) = default;
  MoveOnly& operator=(MoveOnly&&) = default;
  MoveOnly(const MoveOnly&) = delete;
  MoveOnly& operator=(const MoveOnly&) = delete;
  ~MoveOnly() = default;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(v);
  }
};

class MoveOnlyMaker {
 public:
  class iterator {
   public:
    using value_type = MoveOnly;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(int i) : i_(i) {}
    MoveOnly operator*() const { return MoveOnly(i_); }
    iterator& operator++() {
      ++i_;
      return *this;
    }
    void operator++(int) { ++i_; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.i_ >= 1000; }

   private:
    int i_ = 0;
  };
  iterator begin() const { return iterator(0); }
  std::default_sentinel_t end() const { return {}; }
};

int unwrap(MoveOnly m) { return m.v; }

TEST(Adversarial, MapOverMoveOnlyItemsMadeOnTheFly) {
  Pool pool(workers(2));
  long sum = 0;
  for (int x : pool.map(unwrap, MoveOnlyMaker{}, {.chunk_size = 7})) sum += x;
  EXPECT_EQ(sum, 999L * 1000 / 2);
}

// A range whose begin() throws: the map's begin() passes the exception on, nothing is sent.
struct BrokenRange {
  multicore_test::NumberIterator begin() const { throw std::runtime_error("cannot start"); }
  multicore_test::NumberIterator end() const { return multicore_test::NumberIterator(10); }
};

TEST(Adversarial, RangeWhoseBeginThrows) {
  Pool pool(workers(2));
  auto results = pool.map(square, BrokenRange{});
  EXPECT_THROW((void)results.begin(), std::runtime_error);
  EXPECT_EQ(pool.call(square, 7), 49);
}

// libstdc++'s views: filtered and reversed, an istream, a join, an endless iota cut by take.
// Not with clang before 16, which cannot compile them (see numbers.hpp).
#if !defined(__clang__) || __clang_major__ >= 16
TEST(Adversarial, StdViewsOfEveryShape) {
  Pool pool(workers(2));
  std::vector<int> got;
  for (int x : pool.map(square, std::views::iota(0, 10) | std::views::filter([](int i) {
                                  return i % 3 == 0;
                                }) | std::views::reverse)) {
    got.push_back(x);
  }
  EXPECT_EQ(got, (std::vector<int>{81, 36, 9, 0}));
  std::istringstream text("1 2 3 4 5 6 7 8 9 10");
  long sum = 0;
  for (int x : pool.map(square, std::views::istream<int>(text))) sum += x;
  EXPECT_EQ(sum, 385);
  const std::vector<std::vector<int>> nested{{1, 2}, {}, {3}, {4, 5, 6}};
  sum = 0;
  for (int x : pool.map(square, nested | std::views::join)) sum += x;
  EXPECT_EQ(sum, 91);
  sum = 0;
  for (int x : pool.map(square, std::views::iota(0) | std::views::take(10))) sum += x;
  EXPECT_EQ(sum, 285);
}
#endif

// ----- Memory limits in the application ------------------------------------------------------

/// Sets RLIMIT_AS to what the process maps now plus `headroom`.
void limit_address_space(std::size_t headroom) {
  const std::string status = multicore_test::slurp("/proc/self/status");
  const auto at = status.find("VmSize:");
  const long kib = at == std::string::npos ? 0 : std::atol(status.c_str() + at + 7);
  rlimit limit{};
  getrlimit(RLIMIT_AS, &limit);
  limit.rlim_cur = static_cast<rlim_t>(kib) * 1024 + headroom;
  setrlimit(RLIMIT_AS, &limit);
}

std::vector<char> mebibytes(int n) { return std::vector<char>(std::size_t(n) << 20, 'x'); }

// The application runs out of address space while it receives a vector larger than what is
// left (but with room to start on it: 64 MiB, plus 64 MiB for a thread's malloc arena): that
// answer is a SerializationError ("out of memory") and the pool carries on. (Sanitizers reserve
// far more address space than they use.) With less room than that, see below.
TEST(Adversarial, ApplicationOutOfAddressSpaceWhileReceivingAHugeAnswer) {
  if (multicore_test::under_sanitizer) GTEST_SKIP() << "RLIMIT_AS and sanitizers";
  const auto end = in_child(
      [](int report) {
        Pool pool(workers(2));  // its workers keep the limit they had: none
        limit_address_space(std::size_t{192} << 20);
        try {
          (void)pool.call(mebibytes, 256);
          say(report, "the answer arrived");
          return 1;
        } catch (const SerializationError&) {
        }
        return pool.call(square, 7) == 49 ? 0 : 1;
      },
      40s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

std::vector<std::string> mebibyte_strings(int n) {
  return std::vector<std::string>(static_cast<std::size_t>(n), std::string(1 << 20, 'x'));
}

// Regression test: an answer the application has no memory to assemble (a cereal value, or a
// vector when even the 64 MiB start of its tail receiver cannot be had) goes through the
// assembly buffer; when that could not grow, the receiver retried the same growth for ever and
// the call never returned (the worker waited for room in its ring). Now the rest of the answer
// is read past and the call fails with SerializationError ("out of memory"), as a vector that
// ran out of memory half-way does; the pool carries on. (Sanitizers reserve far more address
// space.)
TEST(Adversarial, ApplicationWithNoMemoryToAssembleAnAnswer) {
  if (multicore_test::under_sanitizer) GTEST_SKIP() << "RLIMIT_AS and sanitizers";
  const auto end = in_child(
      [](int report) {
        Pool pool(workers(2));
        limit_address_space(std::size_t{64} << 20);
        try {
          (void)pool.call(mebibyte_strings, 200);
          say(report, "the answer arrived");
          return 1;
        } catch (const SerializationError&) {
        }
        return pool.call(square, 7) == 49 ? 0 : 1;
      },
      20s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

TEST(Adversarial, PoolLargerThanTheAddressSpaceLimitThrowsSystemError) {
  if (multicore_test::under_sanitizer) GTEST_SKIP() << "RLIMIT_AS and sanitizers";
  const auto end = in_child(
      [](int report) {
        limit_address_space(std::size_t{256} << 20);
        PoolOptions o = workers(2);
        o.ring_bytes = std::size_t{1} << 30;  // 4 GiB of rings
        try {
          Pool pool(o);
          say(report, "the pool was made");
          return 1;
        } catch (const multicore::SystemError&) {
          return 0;
        }
      },
      20s);
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
}

}  // namespace
