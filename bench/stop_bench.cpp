// SPDX-License-Identifier: MIT
// What a StopToken costs: stop_requested() per call (in this process and in a worker, against
// std::stop_token), and the latency from request_stop() in the parent to a task seeing it,
// spinning on stop_requested() or asleep in wait_for().
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <stop_token>
#include <vector>

#include "baselines.hpp"

namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// Baseline: C++20's own token, one process.
void BM_StdStopTokenCheck(benchmark::State& state) {
  std::stop_source source;
  const std::stop_token token = source.get_token();
  for (auto _ : state) benchmark::DoNotOptimize(token.stop_requested());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_StdStopTokenCheck);

void BM_StopRequested(benchmark::State& state) {
  multicore::StopSource source;
  const multicore::StopToken token = source.get_token();
  for (auto _ : state) benchmark::DoNotOptimize(token.stop_requested());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_StopRequested);

/// Checks `token` `n` times in a worker; returns the nanoseconds that took.
std::int64_t check_many(multicore::StopToken token, std::int64_t n) {
  const std::int64_t start = now_ns();
  for (std::int64_t i = 0; i < n; ++i) benchmark::DoNotOptimize(token.stop_requested());
  return now_ns() - start;
}

// The same check inside a worker process, timed there (manual time: one iteration is 10^6
// checks, reported per check through items).
void BM_StopRequestedInWorker(benchmark::State& state) {
  multicore::Pool pool(multicore::PoolOptions{.workers = 1});
  multicore::StopSource source;
  constexpr std::int64_t checks = 1'000'000;
  for (auto _ : state) {
    const std::int64_t ns = pool.call(check_many, source.get_token(), checks);
    state.SetIterationTime(static_cast<double>(ns) / 1e9);
  }
  state.SetItemsProcessed(state.iterations() * checks);
}
BENCHMARK(BM_StopRequestedInWorker)->UseManualTime();

struct Times {
  std::atomic<std::int64_t> started{0};  // the task runs (it sets this first)
  std::atomic<std::int64_t> seen{0};     // when it saw the stop
};
Times* times = nullptr;

/// Says it started, then waits for the stop: spinning (spin != 0) or in wait_for().
int wait_for_stop(multicore::StopToken token, int spin) {
  times->started.store(now_ns(), std::memory_order_release);
  if (spin != 0) {
    while (!token.stop_requested()) {
    }
  } else {
    token.wait_for(std::chrono::seconds(60));
  }
  times->seen.store(now_ns(), std::memory_order_release);
  return 0;
}

// From request_stop() in the parent to the task seeing it, in ms of manual time per iteration
// (a new source each time); arg 1: the task spins on stop_requested(), 0: it sleeps in
// wait_for() (a futex wake-up).
void BM_StopLatency(benchmark::State& state) {
  bench::SharedMemory cell(4096);  // before the pool: its workers inherit the mapping
  times = cell.make<Times>();
  multicore::Pool pool(multicore::PoolOptions{.workers = 1});
  const int spin = static_cast<int>(state.range(0));
  std::vector<double> latencies;
  for (auto _ : state) {
    multicore::StopSource source;
    times->started.store(0);
    times->seen.store(0);
    auto done = pool.submit(wait_for_stop, source.get_token(), spin);
    while (times->started.load(std::memory_order_acquire) == 0) {
    }
    const std::int64_t asked = now_ns();
    source.request_stop();
    done.get();
    const double seconds = static_cast<double>(times->seen.load() - asked) / 1e9;
    state.SetIterationTime(seconds);
    latencies.push_back(seconds * 1e6);
  }
  std::sort(latencies.begin(), latencies.end());
  if (!latencies.empty()) {
    state.counters["median_us"] = latencies[latencies.size() / 2];
    state.counters["max_us"] = latencies.back();
  }
}
BENCHMARK(BM_StopLatency)->ArgName("spin")->Arg(1)->Arg(0)->UseManualTime();

}  // namespace

BENCHMARK_MAIN();
