// SPDX-License-Identifier: MIT
// Throughput of trivial tasks: Pool::map (automatic and fixed chunk sizes) and many
// independent Pool::submit calls, against a std::thread pool and a plain loop.
#include <benchmark/benchmark.h>

#include <algorithm>
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
