// SPDX-License-Identifier: MIT
// Beyond one machine: a Pool over the ranks of an MPI job against raw MPI on the same ranks.
// Two modes of one binary, since a rank can run either a Cluster agent or a raw MPI partner but
// not both (a Cluster must be made before MPI is initialised); bench/mpi_compare runs both
// alternately and prints the ratios:
// - `mpirun --bind-to none -np 2 mpi_bench --raw`: BM_RawPingPong, a blocking
//   MPI_Send/MPI_Recv echo between ranks 0 and 1 (the baseline);
// - `mpirun --bind-to none -np 2 mpi_bench --raw-relay`: BM_RawRelay, the same echo relayed by
//   rank 1 through shared memory to a process it forked and back, every wait yielding: a remote
//   call's chain of processes built by hand, the floor of such a chain on this machine;
// - `mpirun --bind-to none -np 2 mpi_bench --calls`: BM_CallRemote, pool.call(echo, bytes)
//   answered by the worker of rank 1 (rank 0's one worker is kept busy), and BM_StopRemote,
//   from request_stop() to a task on rank 1 seeing it;
// - `mpirun --bind-to none -np 3 mpi_bench`: BM_MapTrivial / BM_MapCpu over every worker (one
//   per rank: rank 0's and 2 agents').
// Bytes processed = payload size per round trip, as in payload_bench.
#include <benchmark/benchmark.h>
#include <mpi.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <future>
#include <memory>
#include <multicore/mpi.hpp>
#include <new>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "payload.hpp"

namespace {

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgName("bytes")->Arg(8)->Arg(64 << 10)->Arg(64 << 20)->UseRealTime();
}

// ---- raw MPI ----------------------------------------------------------------------------------

constexpr int tag_echo = 1;
constexpr int tag_stop = 2;

constexpr int tag_relay = 3;

/// Shared memory between rank 1 and the process it forks for BM_RawRelay: one message at a time,
/// each side spinning (and yielding: three processes share two cores here) for its turn.
struct Mailbox {
  static constexpr std::size_t capacity = 64 << 10;
  std::atomic<std::uint64_t> asked{0};     // messages put in; ~0: the relay process must exit
  std::atomic<std::uint64_t> answered{0};  // messages echoed
  std::size_t size = 0;
  char data[capacity];
};
Mailbox* mailbox = nullptr;

template <class Ready>
void wait_for(Ready&& ready) {
  while (!ready()) sched_yield();
}

/// The forked process of rank 1: copies each message it is given, as a worker decodes its
/// argument and encodes its result, and says it is done.
[[noreturn]] void relay_process() {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  std::vector<char> copy;
  for (std::uint64_t seen = 0;;) {
    wait_for([&] { return mailbox->asked.load(std::memory_order_acquire) != seen; });
    seen = mailbox->asked.load(std::memory_order_acquire);
    if (seen == ~std::uint64_t{0}) _exit(0);
    copy.assign(mailbox->data, mailbox->data + mailbox->size);
    std::memcpy(mailbox->data, copy.data(), copy.size());
    mailbox->answered.store(seen, std::memory_order_release);
  }
}

/// Rank 1 of the raw mode, before MPI starts: maps the mailbox and forks the relay process.
void start_relay_process() {
  void* p =
      mmap(nullptr, sizeof(Mailbox), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  mailbox = new (p) Mailbox;
  if (fork() == 0) relay_process();
}

/// Waits for `request`, letting the other processes of the chain run meanwhile: a blocking MPI
/// call spins without yielding, and with three processes on two cores it holds a core the
/// process it waits for needs.
void complete_yielding(MPI_Request& request) {
  for (int done = 0;;) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done != 0) return;
    sched_yield();
  }
}

// Rank 1 of the raw mode: echoes every message back until told to stop; a relayed one goes
// through the relay process first, and every wait of the relay job yields (see
// complete_yielding).
void raw_echo_partner(bool relay) {
  std::vector<char> buffer;
  std::uint64_t relayed = 0;
  for (;;) {
    MPI_Status status;
    if (relay) {
      for (int flag = 0; flag == 0; sched_yield()) {
        MPI_Iprobe(0, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &status);
        if (flag != 0) break;
      }
    } else {
      MPI_Probe(0, MPI_ANY_TAG, MPI_COMM_WORLD, &status);
    }
    int n = 0;
    MPI_Get_count(&status, MPI_CHAR, &n);
    buffer.resize(static_cast<std::size_t>(n));
    MPI_Recv(buffer.data(), n, MPI_CHAR, 0, status.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (status.MPI_TAG == tag_stop) break;
    if (status.MPI_TAG == tag_relay && mailbox != nullptr && buffer.size() <= Mailbox::capacity) {
      std::memcpy(mailbox->data, buffer.data(), buffer.size());
      mailbox->size = buffer.size();
      mailbox->asked.store(++relayed, std::memory_order_release);
      wait_for([&] { return mailbox->answered.load(std::memory_order_acquire) == relayed; });
      std::memcpy(buffer.data(), mailbox->data, buffer.size());
    }
    if (relay) {
      MPI_Request sent = MPI_REQUEST_NULL;
      MPI_Isend(buffer.data(), n, MPI_CHAR, 0, status.MPI_TAG, MPI_COMM_WORLD, &sent);
      complete_yielding(sent);
    } else {
      MPI_Send(buffer.data(), n, MPI_CHAR, 0, status.MPI_TAG, MPI_COMM_WORLD);
    }
  }
  if (mailbox != nullptr) {
    mailbox->asked.store(~std::uint64_t{0}, std::memory_order_release);
    wait(nullptr);
  }
}

// warm_up_note: both sides make one round trip before timing. The first one of a size moves
// into fresh memory on every process on the way (MPI's included) and was 10 to 20 times slower
// at 64 MiB, for raw MPI as for a call (450 to 525 ms against 29 ms here); Google Benchmark
// reports the one iteration alone whenever it passes the minimum time, which it did for one
// side and not the other, so the 64 MiB ratio compared a first round trip with warm ones.

// The payload to rank 1 and back. Tag tag_echo: rank 1 echoes it (BM_RawPingPong, the
// baseline, blocking MPI_Send/MPI_Recv); tag_relay: rank 1 relays it through shared memory to
// the process it forked and back first, every wait yielding (BM_RawRelay: a remote call's chain
// of processes, built by hand, without serialization, scheduling or failure handling).
template <int Tag>
void BM_RawEcho(benchmark::State& state) {
  const auto n = static_cast<int>(state.range(0));
  const std::vector<char> payload = make_payload(static_cast<std::size_t>(n));
  std::vector<char> back(payload.size());
  const auto round_trip = [&] {
    if constexpr (Tag == tag_relay) {
      MPI_Request r = MPI_REQUEST_NULL;
      MPI_Isend(payload.data(), n, MPI_CHAR, 1, Tag, MPI_COMM_WORLD, &r);
      complete_yielding(r);
      MPI_Irecv(back.data(), n, MPI_CHAR, 1, Tag, MPI_COMM_WORLD, &r);
      complete_yielding(r);
    } else {
      MPI_Send(payload.data(), n, MPI_CHAR, 1, Tag, MPI_COMM_WORLD);
      MPI_Recv(back.data(), n, MPI_CHAR, 1, Tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
  };
  round_trip();  // untimed: see warm_up_note
  for (auto _ : state) round_trip();
  if (!same_ends(back, payload)) state.SkipWithError("the echo came back different");
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

// ---- the Cluster ------------------------------------------------------------------------------

multicore::Pool* the_pool = nullptr;

std::vector<char> echo(std::vector<char> v) { return v; }

// The MPI rank whose agent runs this worker (workers inherit the agent's environment).
int rank_of_worker(int /*unused*/) {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  return rank != nullptr ? std::atoi(rank) : -1;
}

// Keeps a worker busy until `path` exists; says where it runs by making `path`.started first.
int hold_until_exists(std::string path) {
  if (FILE* f = std::fopen((path + ".started").c_str(), "w")) {
    std::fprintf(f, "%d", rank_of_worker(0));
    std::fclose(f);
  }
  while (access(path.c_str(), F_OK) != 0) usleep(200);
  return rank_of_worker(0);
}

// A worker held busy on rank 0 (so that calls go to rank 1's), until destroyed.
class LocalWorkerHeld {
 public:
  explicit LocalWorkerHeld(multicore::Pool& pool)
      : pool_(pool), flag_("/tmp/multicore_mpi_bench_" + std::to_string(getpid())) {
    // The dispatcher may give the hold to either rank's worker: try again until it is rank 0's.
    for (int attempt = 0; attempt < 20 && !held_; ++attempt) {
      release();
      held_ = started_on() == 0;
    }
    if (!held_) release();
  }
  ~LocalWorkerHeld() { release(); }
  LocalWorkerHeld(const LocalWorkerHeld&) = delete;
  LocalWorkerHeld& operator=(const LocalWorkerHeld&) = delete;
  bool held() const noexcept { return held_; }

 private:
  /// Starts a hold and returns the rank it runs on (-1 if it did not start within 10 s).
  int started_on() {
    unlink(flag_.c_str());
    hold_ = pool_.submit(hold_until_exists, flag_);
    const std::string started = flag_ + ".started";
    for (int i = 0; i < 50'000; ++i) {
      if (FILE* f = std::fopen(started.c_str(), "r")) {
        int rank = -1;
        const bool read = std::fscanf(f, "%d", &rank) == 1;
        std::fclose(f);
        if (read) return rank;
      }
      usleep(200);
    }
    return -1;
  }
  void release() {
    if (!hold_.valid()) return;
    if (FILE* f = std::fopen(flag_.c_str(), "w")) std::fclose(f);
    hold_.get();
    unlink(flag_.c_str());
    unlink((flag_ + ".started").c_str());
    held_ = false;
  }

  multicore::Pool& pool_;
  std::string flag_;
  std::future<int> hold_;
  bool held_ = false;
};

// Ours: pool.call(echo, payload) answered by the worker of rank 1, while rank 0's one worker is
// held busy (by main, for the whole run). Checked to run on rank 1 first.
void BM_CallRemote(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  multicore::Pool& pool = *the_pool;
  const std::vector<char> payload = make_payload(n);
  if (pool.call(rank_of_worker, 0) != 1) state.SkipWithError("calls did not reach rank 1");
  pool.call(echo, payload);  // untimed: see warm_up_note
  for (auto _ : state) {
    std::vector<char> back = pool.call(echo, payload);
    if (!same_ends(back, payload)) {
      state.SkipWithError("the echo came back different");
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

/// When a task saw its stop (CLOCK_MONOTONIC: one clock for every rank of one machine), and on
/// which rank.
struct StopSeen {
  int rank = -1;
  std::int64_t at_ns = 0;
};

std::int64_t monotonic_ns() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return std::int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

/// Waits for the stop, spinning on stop_requested() (spin != 0) or asleep in wait_for().
StopSeen wait_for_stop(multicore::StopToken token, int spin) {
  if (spin != 0) {
    while (!token.stop_requested()) {
    }
  } else {
    while (!token.wait_for(std::chrono::seconds(60))) {
    }
  }
  return {rank_of_worker(0), monotonic_ns()};
}

// Ours over MPI: from request_stop() on rank 0 to a task on rank 1 seeing it (manual time), the
// stop relayed to rank 1's agent and mirrored there; arg 1: the task spins on stop_requested(),
// 0: it sleeps in wait_for(). Counter answered_us: until rank 0 has the task's answer. Ranks on
// one machine only (the clock is compared across ranks).
void BM_StopRemote(benchmark::State& state) {
  multicore::Pool& pool = *the_pool;
  const int spin = static_cast<int>(state.range(0));
  std::vector<double> seen_us, answered_us;
  for (auto _ : state) {
    multicore::StopSource source;
    auto done = pool.submit(wait_for_stop, source.get_token(), spin);
    // Started: rank 1's agent has said its worker runs the task's code.
    for (;;) {
      const multicore::PoolStats s = pool.stats();
      if (s.workers.size() > 1 && s.workers[1].current_task > std::chrono::nanoseconds(0)) break;
      sched_yield();
    }
    const std::int64_t asked = monotonic_ns();
    source.request_stop();
    const StopSeen seen = done.get();
    const std::int64_t answered = monotonic_ns();
    if (seen.rank != 1) {
      state.SkipWithError("the task did not run on rank 1");
      break;
    }
    const double seconds = static_cast<double>(seen.at_ns - asked) / 1e9;
    state.SetIterationTime(seconds);
    seen_us.push_back(seconds * 1e6);
    answered_us.push_back(static_cast<double>(answered - asked) / 1e3);
  }
  const auto median = [](std::vector<double>& v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  };
  state.counters["median_us"] = median(seen_us);
  state.counters["answered_us"] = median(answered_us);
}

long trivial(long x) { return x * 2 + 1; }

// ~1 ms of CPU per item.
long cpu_item(long x) {
  volatile long acc = x;
  for (long i = 0; i < 400'000; ++i) acc = acc * 31 + i;
  return acc;
}

// Ours: map over every worker of every rank (2 agents with -np 3), automatic chunks.
template <long (*Fn)(long)>
void BM_Map(benchmark::State& state) {
  std::vector<long> items(static_cast<std::size_t>(state.range(0)));
  std::iota(items.begin(), items.end(), 0L);
  long sum = 0;
  for (auto _ : state) {
    for (long r : the_pool->map(Fn, items)) sum += r;
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.counters["workers"] = the_pool->size();
}

// Baseline: the CPU items one after the other in this process.
void BM_CpuSequential(benchmark::State& state) {
  long sum = 0, done = 0;
  for (auto _ : state) sum += cpu_item(done++);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(done);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view mode = argc > 1 ? argv[1] : "";
  if (mode == "--raw" || mode == "--raw-relay") {
    // Its own job: the relay process spins for its turn, which would slow the plain ping-pong.
    // Forked before MPI starts, as a Cluster forks its fork server.
    const bool relay = mode == "--raw-relay";
    if (const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
        relay && r != nullptr && std::atoi(r) == 1) {
      start_relay_process();
    }
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rank = 0, ranks = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    if (rank == 1) raw_echo_partner(relay);
    if (rank == 0 && ranks >= 2) {
      if (relay) {
        benchmark::RegisterBenchmark("BM_RawRelay", BM_RawEcho<tag_relay>)
            ->ArgName("bytes")
            ->Arg(8)
            ->Arg(64 << 10)
            ->UseRealTime();
      } else {
        benchmark::RegisterBenchmark("BM_RawPingPong", BM_RawEcho<tag_echo>)->Apply(sizes);
      }
      benchmark::Initialize(&argc, argv);
      benchmark::RunSpecifiedBenchmarks();
      MPI_Send(nullptr, 0, MPI_CHAR, 1, tag_stop, MPI_COMM_WORLD);
    }
    MPI_Finalize();
    return 0;
  }
  // One worker per rank. --calls: rank 0's is held busy, and calls go to rank 1's.
  const bool calls = argc > 1 && std::string_view(argv[1]) == "--calls";
  multicore::mpi::Cluster cluster(argc, argv, {.workers_per_rank = 1});
  multicore::Pool pool(cluster);
  the_pool = &pool;
  std::unique_ptr<LocalWorkerHeld> held;
  if (calls) {
    held = std::make_unique<LocalWorkerHeld>(pool);
    if (!held->held()) {
      std::fprintf(stderr, "mpi_bench: could not hold rank 0's worker (run with -np 2 or more)\n");
      return 1;
    }
    benchmark::RegisterBenchmark("BM_CallRemote", BM_CallRemote)->Apply(sizes);
    benchmark::RegisterBenchmark("BM_StopRemote", BM_StopRemote)
        ->ArgName("spin")
        ->Arg(1)
        ->Arg(0)
        ->UseManualTime();
  } else {
    benchmark::RegisterBenchmark("BM_MapTrivial", BM_Map<trivial>)->Arg(100'000)->UseRealTime();
    benchmark::RegisterBenchmark("BM_MapCpu", BM_Map<cpu_item>)->Arg(600)->UseRealTime();
    benchmark::RegisterBenchmark("BM_CpuSequential", BM_CpuSequential)->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
