// SPDX-License-Identifier: MIT
// Filling a large output from a large input, y[i] = f(x[i]) with a CPU-bound f, four ways:
// (a) a plain loop, (b) Pool::map over ranges() returning vectors the parent copies into y,
// (c) tasks writing a SharedArray in place, (d) an OpenMP parallel for in one process (when
// built with OpenMP). Reports each run's seconds; compare Plain / InPlace (speedup) and
// InPlace / OpenMP.
//
// ParentLoopOverOldMemory measures what the pool's copy-on-write snapshot costs the parent.
//
// Each runs unmeasured passes first (3 s): a worker's first touch of each page of an array it
// mapped is a page-table fault (4 KiB pages: shared memory gets no transparent huge pages by
// default), which later passes (the mapping is cached) do not pay; with pieces going to
// whichever worker is free, one pass does not warm every worker on every piece.
//
// Knob (environment): MULTICORE_BENCH_SHARED_MIB, the size of x and of y (default 512).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <future>
#include <memory>
#include <utility>
#include <vector>

#include "baselines.hpp"

namespace {

using multicore::SharedArray;

/// CPU-bound: a few dependent floating-point steps per element (about 10 ns), so the work, not
/// the memory bandwidth, decides.
[[gnu::always_inline]] inline double f(double x) {
  for (int k = 0; k < 2; ++k) x = std::sqrt(x * x + 1.0) * 0.999;
  return x;
}

std::size_t elements() {
  return static_cast<std::size_t>(bench::env_long("MULTICORE_BENCH_SHARED_MIB", 512)) << 20 >> 3;
}

/// x filled, y pre-touched: made once, after the pool (shared memory is never copied on
/// write, so the plain loop and OpenMP pay nothing for the pool's existence).
struct Data {
  SharedArray<double> x{elements()};
  SharedArray<double> y{elements()};
  Data() {
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(i % 1000);
    std::fill(y.begin(), y.end(), 0.0);
  }
};

multicore::Pool& pool() {
  static multicore::Pool p;
  return p;
}

Data& data() {
  (void)pool();
  static Data d;
  return d;
}

/// Pieces per worker: enough for balance, few enough that a task's overhead is nothing.
std::vector<std::pair<std::size_t, std::size_t>> pieces() {
  return multicore::ranges(data().x.size(), 4 * pool().size());
}

void fill(std::size_t begin, std::size_t end, SharedArray<const double> x, SharedArray<double> y) {
  for (std::size_t i = begin; i < end; ++i) y[i] = f(x[i]);
}

/// (b)'s function: reads x in place, returns its piece of y as a vector.
struct Piece {
  SharedArray<const double> x;
  std::vector<double> operator()(std::pair<std::size_t, std::size_t> piece) const {
    std::vector<double> out(piece.second - piece.first);
    for (std::size_t i = piece.first; i < piece.second; ++i) out[i - piece.first] = f(x[i]);
    return out;
  }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(x);
  }
};

/// Buffers made before any pool, touched: a std::vector, and a SharedArray.
std::vector<double>& old_vector() {
  static std::vector<double> v(elements(), 1.0);
  return v;
}
SharedArray<double>& old_shared() {
  static SharedArray<double> a = [] {
    SharedArray<double> made(elements());
    std::fill(made.begin(), made.end(), 1.0);
    return made;
  }();
  return a;
}

/// What the pool's snapshot costs the parent: one pass writing memory the parent had before
/// the pool was made, with no pool (0), with a fresh idle pool (1: every page's first write is
/// a copy-on-write fault), and over a SharedArray with a fresh idle pool (2: shared memory is
/// never copied). Runs first, before the other benchmarks make their pool.
void ParentLoopOverOldMemory(benchmark::State& state) {
  const long mode = state.range(0);
  double* p = mode == 2 ? old_shared().data() : old_vector().data();
  const std::size_t n = elements();
  for (auto _ : state) {
    state.PauseTiming();
    std::unique_ptr<multicore::Pool> idle;
    if (mode != 0) idle = std::make_unique<multicore::Pool>(multicore::PoolOptions{.workers = 1});
    state.ResumeTiming();
    for (std::size_t i = 0; i < n; ++i) p[i] = p[i] * 0.5 + 1.0;
    benchmark::ClobberMemory();
    state.PauseTiming();
    idle.reset();
    state.ResumeTiming();
  }
}
BENCHMARK(ParentLoopOverOldMemory)
    ->ArgName("mode")
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void run(benchmark::State& state, auto&& body) {
  Data& d = data();
  for (auto _ : state) {
    body(d);
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["MiB"] = static_cast<double>(d.x.size() * sizeof(double) >> 20);
}

void PlainLoop(benchmark::State& state) {
  run(state, [](Data& d) {
    for (std::size_t i = 0; i < d.x.size(); ++i) d.y[i] = f(d.x[i]);
  });
}

void MapReturningVectors(benchmark::State& state) {
  run(state, [](Data& d) {
    const auto ps = pieces();
    std::size_t k = 0;
    for (const std::vector<double>& piece :
         pool().map(Piece{d.x.read_only()}, ps, multicore::MapOptions{.chunk_size = 1})) {
      std::copy(piece.begin(), piece.end(),
                d.y.begin() + static_cast<std::ptrdiff_t>(ps[k++].first));
    }
  });
}

void SharedArrayInPlace(benchmark::State& state) {
  run(state, [](Data& d) {
    std::vector<std::future<void>> done;
    for (auto [begin, end] : pieces())
      done.push_back(pool().submit(fill, begin, end, d.x.read_only(), d.y));
    for (auto& task : done) task.get();
  });
}

BENCHMARK(PlainLoop)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(3);
BENCHMARK(MapReturningVectors)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(3);
BENCHMARK(SharedArrayInPlace)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(3);

#ifdef MULTICORE_BENCH_OPENMP
void OpenMP(benchmark::State& state) {
  run(state, [](Data& d) {
    const double* x = d.x.data();
    double* y = d.y.data();
    const auto n = static_cast<std::ptrdiff_t>(d.x.size());
#pragma omp parallel for schedule(static)
    for (std::ptrdiff_t i = 0; i < n; ++i) y[i] = f(x[i]);
  });
}
BENCHMARK(OpenMP)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(3);
#endif

}  // namespace

BENCHMARK_MAIN();
