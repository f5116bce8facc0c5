// SPDX-License-Identifier: MIT
// How late TaskTimeout arrives after a task's deadline, for timeouts of 1, 10 and 100 ms; and
// what a timeout costs a pool whose tasks never reach it (round trips with and without one).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "baselines.hpp"

namespace {

using Clock = std::chrono::steady_clock;

/// When the current task started (steady clock, ns), written by the task in its worker.
std::atomic<std::int64_t>* started_at = nullptr;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

/// Notes when it starts, then keeps a core busy until its worker is killed.
int spin_until_killed(int) {
  started_at->store(now_ns(), std::memory_order_release);
  for (;;) multicore::detail::cpu_relax();
}

// Ours: one task at a time overruns task_timeout; the time from its deadline (its start plus
// the timeout) to TaskTimeout reaching the caller's future is the lateness (counters: mean and
// largest, in ms). An iteration also waits for the timed-out worker's replacement.
void BM_TimeoutLateness(benchmark::State& state) {
  bench::SharedMemory cell(4096);  // before the pool: its workers inherit the mapping
  started_at = cell.make<std::atomic<std::int64_t>>();
  const std::chrono::milliseconds timeout(state.range(0));
  multicore::Pool pool(multicore::PoolOptions{.workers = 1, .task_timeout = timeout});
  const auto timeout_ns = std::chrono::nanoseconds(timeout).count();
  double late_sum_ms = 0;
  double late_max_ms = 0;
  for (auto _ : state) {
    started_at->store(0);
    auto future = pool.submit(spin_until_killed, 0);
    try {
      future.get();
      state.SkipWithError("the task returned instead of timing out");
      break;
    } catch (const multicore::TaskTimeout&) {
    }
    const std::int64_t start = started_at->load(std::memory_order_acquire);
    if (start == 0) {
      state.SkipWithError("TaskTimeout for a task that never started");
      break;
    }
    const double late_ms = static_cast<double>(now_ns() - start - timeout_ns) / 1e6;
    late_sum_ms += late_ms;
    late_max_ms = std::max(late_max_ms, late_ms);
  }
  const auto n = static_cast<double>(std::max<benchmark::IterationCount>(state.iterations(), 1));
  state.counters["late_ms"] = late_sum_ms / n;
  state.counters["late_max_ms"] = late_max_ms;
}
BENCHMARK(BM_TimeoutLateness)->ArgName("timeout_ms")->Arg(1)->Arg(10)->Arg(100)->UseRealTime();

constexpr unsigned pool_workers = 2;
constexpr int warm_up_calls = 100;

multicore::PoolOptions round_trip_options(const benchmark::State& state) {
  return multicore::PoolOptions{.workers = pool_workers,
                                .task_timeout = std::chrono::milliseconds(state.range(0))};
}

// What watching deadlines costs: latency_bench's round trips, without a timeout (0) and with
// one that the tasks never reach (10 s).
void BM_SubmitRoundTrip(benchmark::State& state) {
  multicore::Pool pool(round_trip_options(state));
  for (int i = 0; i < warm_up_calls; ++i) {
    benchmark::DoNotOptimize(pool.submit(bench::trivial, i).get());
  }
  int x = 0;
  for (auto _ : state) benchmark::DoNotOptimize(pool.submit(bench::trivial, x++).get());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SubmitRoundTrip)->ArgName("timeout_ms")->Arg(0)->Arg(10'000)->UseRealTime();

void BM_CallRoundTrip(benchmark::State& state) {
  multicore::Pool pool(round_trip_options(state));
  for (int i = 0; i < warm_up_calls; ++i) benchmark::DoNotOptimize(pool.call(bench::trivial, i));
  int x = 0;
  for (auto _ : state) benchmark::DoNotOptimize(pool.call(bench::trivial, x++));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CallRoundTrip)->ArgName("timeout_ms")->Arg(0)->Arg(10'000)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
