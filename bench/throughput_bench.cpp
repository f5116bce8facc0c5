// SPDX-License-Identifier: MIT
// Throughput of trivial tasks: Pool::map (automatic and fixed chunk sizes) and many
// independent Pool::submit calls, against a std::thread pool and a plain loop.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <future>
#include <ranges>
#include <vector>

#include "baselines.hpp"

namespace {

/// Sum of trivial(i) for i in [0, n), to check the pool's answers.
std::int64_t expected_sum(std::int64_t n) { return n * n; }  // sum of 2i+1 = n^2

multicore::Pool make_pool() {
  multicore::Pool pool;  // one worker per usable core
  for (int i = 0; i < 100; ++i) benchmark::DoNotOptimize(pool.submit(bench::trivial, i).get());
  return pool;
}

// Ours: map over iota(0, N) with automatic chunking, consuming every result in order.
void BM_MapTrivial(benchmark::State& state) {
  const auto n = static_cast<int>(state.range(0));
  multicore::Pool pool = make_pool();
  for (auto _ : state) {
    std::int64_t sum = 0;
    for (int r : pool.map(bench::trivial, std::views::iota(0, n))) sum += r;
    if (sum != expected_sum(n)) {
      state.SkipWithError("wrong results from map");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["workers"] = pool.size();
}
BENCHMARK(BM_MapTrivial)
    ->ArgName("n")
    ->Arg(1 << 10)
    ->Arg(1 << 14)
    ->Arg(1 << 18)
    ->Arg(1 << 22)
    ->UseRealTime();

// Ours: map with a fixed chunk size. N grows with the chunk so every worker gets many chunks.
void BM_MapChunkSize(benchmark::State& state) {
  const auto chunk = static_cast<std::size_t>(state.range(0));
  const int n = static_cast<int>(std::clamp<std::size_t>(chunk * 64, 1 << 14, 1 << 22));
  multicore::Pool pool = make_pool();
  multicore::MapOptions options;
  options.chunk_size = chunk;
  for (auto _ : state) {
    std::int64_t sum = 0;
    for (int r : pool.map(bench::trivial, std::views::iota(0, n), options)) sum += r;
    if (sum != expected_sum(n)) {
      state.SkipWithError("wrong results from map");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["n"] = n;
}
BENCHMARK(BM_MapChunkSize)->ArgName("chunk")->RangeMultiplier(4)->Range(1, 65536)->UseRealTime();

// Automatic against fixed chunk sizes on the workloads issue 13 names: the ratio that matters
// is BM_MapWork/work:W/chunk:0 (automatic) over the best fixed chunk of the same work.
enum Work : int {
  trivial_items,  // bench::trivial over iota(0, 2^20)
  items_5us,      // 2^16 items of ~5 us
  items_10ms,     // 64 items of ~10 ms
  ramp_1_100us,   // 8192 items whose cost grows from 1 us to 100 us along the input
};

/// Busy for `ns` nanoseconds (a CPU-bound item of known cost); returns its argument.
inline constexpr auto spin = [](std::uint32_t ns) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::nanoseconds(ns);
  while (std::chrono::steady_clock::now() < end) {
  }
  return ns;
};

/// The item costs (ns) of a spin workload.
std::vector<std::uint32_t> costs(Work work) {
  std::vector<std::uint32_t> out;
  if (work == items_5us) out.assign(1 << 16, 5'000);
  if (work == items_10ms) out.assign(64, 10'000'000);
  if (work == ramp_1_100us) {
    const std::uint32_t n = 8192;
    for (std::uint32_t i = 0; i < n; ++i) out.push_back(1'000 + 99'000 * i / (n - 1));
  }
  return out;
}

void BM_MapWork(benchmark::State& state) {
  const auto work = static_cast<Work>(state.range(0));
  multicore::MapOptions options;
  options.chunk_size = static_cast<std::size_t>(state.range(1));
  multicore::Pool pool = make_pool();
  const std::vector<std::uint32_t> items = costs(work);
  const int n = work == trivial_items ? 1 << 20 : static_cast<int>(items.size());
  std::uint64_t want = 0;
  for (std::uint32_t c : items) want += c;
  for (auto _ : state) {
    if (work == trivial_items) {
      std::int64_t sum = 0;
      for (int r : pool.map(bench::trivial, std::views::iota(0, n), options)) sum += r;
      if (sum != expected_sum(n)) state.SkipWithError("wrong results from map");
    } else {
      std::uint64_t sum = 0;
      for (std::uint32_t r : pool.map(spin, items, options)) sum += r;
      if (sum != want) state.SkipWithError("wrong results from map");
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_MapWork)
    ->ArgNames({"work", "chunk"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int work : {trivial_items, items_5us, items_10ms, ramp_1_100us}) {
        for (int chunk : {0, 1, 10, 100, 1000, 10000, 100000}) {
          // 2^20 trivial items one by one take seconds and are never the best
          if (work == trivial_items && chunk == 1) continue;
          // 64 items of 10 ms: every chunk of 100 or more is one chunk of all 64
          if (work == items_10ms && chunk > 100) continue;
          b->Args({work, chunk});
        }
      }
    })
    ->UseRealTime();

// Ours: N independent submits (no chunking), then every get.
void BM_SubmitMany(benchmark::State& state) {
  const auto n = static_cast<int>(state.range(0));
  multicore::Pool pool = make_pool();
  std::vector<std::future<int>> futures;
  futures.reserve(static_cast<std::size_t>(n));
  for (auto _ : state) {
    futures.clear();
    for (int i = 0; i < n; ++i) futures.push_back(pool.submit(bench::trivial, i));
    std::int64_t sum = 0;
    for (auto& f : futures) sum += f.get();
    if (sum != expected_sum(n)) {
      state.SkipWithError("wrong results from submit");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_SubmitMany)->ArgName("n")->Arg(1 << 10)->Arg(1 << 14)->UseRealTime();

// The same many independent calls through a Task, which needs no std::future per call.
void BM_TaskMany(benchmark::State& state) {
  const auto n = static_cast<int>(state.range(0));
  multicore::Pool pool = make_pool();
  for (auto _ : state) {
    multicore::Task<int> task(pool);
    for (int i = 0; i < n; ++i) task.run(bench::trivial, i);
    std::int64_t sum = 0;
    for (int r : task.get()) sum += r;
    if (sum != expected_sum(n)) {
      state.SkipWithError("wrong results from Task");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_TaskMany)->ArgName("n")->Arg(1 << 10)->Arg(1 << 14)->UseRealTime();

// Baseline: the same with a std::thread pool of usable_cores() threads.
void BM_ThreadPoolSubmitMany(benchmark::State& state) {
  const auto n = static_cast<int>(state.range(0));
  bench::ThreadPool pool(multicore::usable_cores());
  std::vector<std::future<int>> futures;
  futures.reserve(static_cast<std::size_t>(n));
  for (auto _ : state) {
    futures.clear();
    for (int i = 0; i < n; ++i) futures.push_back(pool.submit(bench::trivial, i));
    std::int64_t sum = 0;
    for (auto& f : futures) sum += f.get();
    if (sum != expected_sum(n)) {
      state.SkipWithError("wrong results from the thread pool");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_ThreadPoolSubmitMany)->ArgName("n")->Arg(1 << 10)->Arg(1 << 14)->UseRealTime();

// Baseline: the trivial function in a plain loop on this thread (results kept observable).
void BM_SequentialLoop(benchmark::State& state) {
  const auto n = static_cast<int>(state.range(0));
  for (auto _ : state) {
    for (int i = 0; i < n; ++i) {
      int r = bench::trivial(i);
      benchmark::DoNotOptimize(r);
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_SequentialLoop)->ArgName("n")->Arg(1 << 20)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
