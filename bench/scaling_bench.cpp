// SPDX-License-Identifier: MIT
// CPU-bound scaling: 200 tasks of ~10 ms of pure CPU on all usable cores, through map (chunk
// size 1) and submit, against the same tasks in a plain loop. Reports speedup as a counter.
//
// Knobs (environment): MULTICORE_BENCH_CPU_TASKS (default 200), MULTICORE_BENCH_CPU_TASK_MS
// (default 10). Each benchmark runs a fixed single iteration (about tasks x ms / cores).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <future>
#include <vector>

#include "baselines.hpp"

namespace {

using Clock = std::chrono::steady_clock;

/// Pure CPU: a dependent chain of multiply-adds the compiler cannot shorten.
[[gnu::noinline]] std::uint64_t burn(std::uint64_t iterations) {
  std::uint64_t x = iterations;
  for (std::uint64_t i = 0; i < iterations; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    asm volatile("" : "+r"(x));
  }
  return x;
}

struct Workload {
  int tasks = 200;
  double task_ms = 10;
  std::uint64_t iterations = 0;  // of burn() for one task
};

/// Calibrated once, before any pool is made (workers are forks: they inherit nothing needed,
/// the iteration count travels as an argument). Takes the fastest of several probes, the one
/// least disturbed by other load on the machine.
const Workload& workload() {
  static const Workload w = [] {
    Workload r;
    r.tasks = static_cast<int>(bench::env_long("MULTICORE_BENCH_CPU_TASKS", 200));
    r.task_ms = static_cast<double>(bench::env_long("MULTICORE_BENCH_CPU_TASK_MS", 10));
    constexpr std::uint64_t probe = 1 << 20;
    double best_ns = 1e300;
    for (int i = 0; i < 15; ++i) {
      const auto t0 = Clock::now();
      benchmark::DoNotOptimize(burn(probe));
      const std::chrono::duration<double, std::nano> dt = Clock::now() - t0;
      best_ns = std::min(best_ns, dt.count());
    }
    r.iterations = static_cast<std::uint64_t>(r.task_ms * 1e6 / (best_ns / probe));
    return r;
  }();
  return w;
}

/// Seconds of every sequential run so far (their median is the reference for speedup).
std::vector<double>& sequential_runs() {
  static std::vector<double> runs;
  return runs;
}

double sequential_reference() {
  std::vector<double> runs = sequential_runs();
  if (runs.empty()) return workload().tasks * workload().task_ms / 1e3;  // nominal, calibrated
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

void report(benchmark::State& state, double seconds, unsigned cores) {
  const Workload& w = workload();
  state.SetItemsProcessed(state.iterations() * w.tasks);
  const double speedup = sequential_reference() / seconds;
  state.counters["speedup"] = speedup;
  state.counters["cores"] = cores;
  state.counters["efficiency"] = speedup / cores;
  state.counters["task_ms"] = w.task_ms;
}

// Baseline: every task in a plain loop on this thread.
void BM_CpuBoundSequential(benchmark::State& state) {
  const Workload& w = workload();
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (int i = 0; i < w.tasks; ++i) benchmark::DoNotOptimize(burn(w.iterations));
    seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    sequential_runs().push_back(seconds);
  }
  report(state, seconds, 1);
}
BENCHMARK(BM_CpuBoundSequential)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

enum class Via { map, submit };

// Ours: the same tasks on a pool of usable_cores() workers; the iteration count travels as
// the argument.
void BM_CpuBound(benchmark::State& state, Via via) {
  const Workload& w = workload();
  const auto task = [](std::uint64_t iterations) { return burn(iterations); };
  const std::vector<std::uint64_t> inputs(static_cast<std::size_t>(w.tasks), w.iterations);
  multicore::Pool pool;
  benchmark::DoNotOptimize(pool.submit(task, std::uint64_t{1}).get());  // workers warm
  multicore::MapOptions one;
  one.chunk_size = 1;
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    std::uint64_t sum = 0;
    if (via == Via::map) {
      for (std::uint64_t r : pool.map(task, inputs, one)) sum += r;
    } else {
      std::vector<std::future<std::uint64_t>> futures;
      for (std::uint64_t n : inputs) futures.push_back(pool.submit(task, n));
      for (auto& f : futures) sum += f.get();
    }
    benchmark::DoNotOptimize(sum);
    seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  report(state, seconds, pool.size());
}
BENCHMARK_CAPTURE(BM_CpuBound, map, Via::map)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_CpuBound, submit, Via::submit)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  workload();  // calibrate first, alone
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
