// SPDX-License-Identifier: MIT
// Round trip of a std::vector<char> payload, 64 B to 64 MiB, against one memcpy, four memcpy
// through shared memory between two processes, and a std::thread pool (moves, no copy).
// Bytes processed = payload size per round trip (not counting the way back twice).
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "baselines.hpp"
#include "payload.hpp"

namespace {

constexpr auto echo = [](std::vector<char> v) { return v; };

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgName("bytes")->RangeMultiplier(8)->Range(64, 64 << 20)->UseRealTime();
}

// Ours: submit an echo of the vector and get it back.
void BM_RoundTripBytes(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  multicore::Pool pool;
  const std::vector<char> payload = make_payload(n);
  for (int i = 0; i < 3; ++i) benchmark::DoNotOptimize(pool.submit(echo, payload).get());
  for (auto _ : state) {
    std::vector<char> back = pool.submit(echo, payload).get();
    if (!same_ends(back, payload)) {
      state.SkipWithError("the echo came back different");
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_RoundTripBytes)->Apply(sizes);

// Ours, by ring size: a 16 MiB echo through the smallest ring allowed, a middle one and the
// default (1 MiB). A payload larger than the ring streams through it; a smaller ring means
// more hand-offs between the two sides, each a wait when they share a core.
void BM_RoundTripRing(benchmark::State& state) {
  const auto ring = static_cast<std::size_t>(state.range(0));
  const auto n = static_cast<std::size_t>(state.range(1));
  multicore::Pool pool(multicore::PoolOptions{.ring_bytes = ring});
  const std::vector<char> payload = make_payload(n);
  for (int i = 0; i < 3; ++i) benchmark::DoNotOptimize(pool.submit(echo, payload).get());
  for (auto _ : state) {
    std::vector<char> back = pool.submit(echo, payload).get();
    if (!same_ends(back, payload)) {
      state.SkipWithError("the echo came back different");
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_RoundTripRing)
    ->ArgNames({"ring", "bytes"})
    ->Args({static_cast<std::int64_t>(multicore::detail::min_ring_bytes), 16 << 20})
    ->Args({256 << 10, 16 << 20})
    ->Args({1 << 20, 16 << 20})
    ->UseRealTime();

// Baseline: one in-process memcpy of the payload (the memory bandwidth unit).
void BM_Memcpy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const std::vector<char> from = make_payload(n);
  std::vector<char> to(n, 1);
  for (auto _ : state) {
    std::memcpy(to.data(), from.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_Memcpy)->Apply(sizes);

// Baseline: the least a copying process transport does, across two processes: user -> shm,
// shm -> worker buffer, worker buffer -> shm, shm -> user, with a spin-then-futex hand-off
// each way. Whole-payload buffers, so no flow control and no pipelining.
void BM_ShmFourCopies(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const std::vector<char> user = make_payload(n);
  std::vector<char> back(n, 1);
  std::vector<char> worker_buffer(n, 1);  // the child's copy (copy-on-write, touched in warm-up)
  bench::SharedMemory request(n);
  bench::SharedMemory response(n);
  bench::PingPong ping(2000, [&] {
    std::memcpy(worker_buffer.data(), request.data(), n);
    std::memcpy(response.data(), worker_buffer.data(), n);
  });
  for (int i = 0; i < 3; ++i) ping.round_trip();
  for (auto _ : state) {
    std::memcpy(request.data(), user.data(), n);
    ping.round_trip();
    std::memcpy(back.data(), response.data(), n);
    benchmark::ClobberMemory();
  }
  if (!same_ends(back, user)) state.SkipWithError("the copy came back different");
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_ShmFourCopies)->Apply(sizes);

// Baseline: the same echo on a std::thread pool. The vector is moved in and out: near zero
// copy, so this is the cost of a thread hand-off, not of moving bytes.
void BM_ThreadPoolRoundTripBytes(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  bench::ThreadPool pool(multicore::usable_cores());
  std::vector<char> payload = make_payload(n);
  for (auto _ : state) {
    payload = pool.submit(echo, std::move(payload)).get();
    if (payload.size() != n) {
      state.SkipWithError("the echo came back different");
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
  state.SetLabel("moves: near zero copy");
}
BENCHMARK(BM_ThreadPoolRoundTripBytes)->Apply(sizes);

}  // namespace

BENCHMARK_MAIN();
