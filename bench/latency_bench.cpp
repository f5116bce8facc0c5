// SPDX-License-Identifier: MIT
// Round-trip latency of one task in flight: Pool::submit(f, int).get() against raw
// shared-memory ping-pong, a thread pool, a fork+pipe child and a bare promise/future hand-off.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <future>
#include <thread>

#include "baselines.hpp"

namespace {

constexpr unsigned pool_workers = 2;
constexpr int warm_up_calls = 100;

// Ours: one submit and one get per iteration, nothing else in flight.
void BM_SubmitRoundTrip(benchmark::State& state) {
  multicore::PoolOptions options;
  options.workers = pool_workers;
  multicore::Pool pool(options);
  int x = 0;
  for (int i = 0; i < warm_up_calls; ++i)
    benchmark::DoNotOptimize(pool.submit(bench::trivial, i).get());
  for (auto _ : state) {
    const int r = pool.submit(bench::trivial, x).get();
    if (r != bench::trivial(x)) {
      state.SkipWithError("wrong result from the pool");
      break;
    }
    ++x;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SubmitRoundTrip)->UseRealTime();

// The same call through Pool::call: synchronous, the caller reads its answer from the ring.
void BM_CallRoundTrip(benchmark::State& state) {
  multicore::PoolOptions options;
  options.workers = pool_workers;
  multicore::Pool pool(options);
  int x = 0;
  for (int i = 0; i < warm_up_calls; ++i) benchmark::DoNotOptimize(pool.call(bench::trivial, i));
  for (auto _ : state) {
    const int r = pool.call(bench::trivial, x);
    if (r != bench::trivial(x)) {
      state.SkipWithError("wrong result from the pool");
      break;
    }
    ++x;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CallRoundTrip)->UseRealTime();

// Baseline: two processes, one shared page, spin up to `spins` pauses then a shared futex.
void BM_ShmPingPong(benchmark::State& state) {
  bench::PingPong ping(static_cast<std::uint32_t>(state.range(0)));
  for (int i = 0; i < warm_up_calls; ++i) ping.round_trip();
  for (auto _ : state) ping.round_trip();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ShmPingPong)->ArgName("spins")->Arg(2000)->UseRealTime();

// Baseline: both sides busy-poll, never sleep; the physical limit of a cross-process wake-up.
void BM_ShmPingPongBusyPoll(benchmark::State& state) {
  bench::PingPong ping(bench::PingPong::forever);
  for (int i = 0; i < warm_up_calls; ++i) ping.round_trip();
  for (auto _ : state) ping.round_trip();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ShmPingPongBusyPoll)->UseRealTime();

// Baseline: the same call on an in-process std::thread pool (mutex + condition_variable queue,
// std::future result), with as many threads as the pool has workers.
void BM_ThreadPoolRoundTrip(benchmark::State& state) {
  bench::ThreadPool pool(pool_workers);
  int x = 0;
  for (int i = 0; i < warm_up_calls; ++i)
    benchmark::DoNotOptimize(pool.submit(bench::trivial, i).get());
  for (auto _ : state) {
    benchmark::DoNotOptimize(pool.submit(bench::trivial, x).get());
    ++x;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ThreadPoolRoundTrip)->UseRealTime();

// Baseline: a minimal fork+pipe pool of one child: 8 bytes there, 8 bytes back.
void BM_ForkPipeRoundTrip(benchmark::State& state) {
  bench::PipeChild child;
  std::uint64_t x = 0;
  for (int i = 0; i < warm_up_calls; ++i) x = child.call(x);
  for (auto _ : state) {
    const std::uint64_t r = child.call(x);
    if (r != x + 1) {
      state.SkipWithError("wrong answer from the pipe child");
      break;
    }
    x = r;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ForkPipeRoundTrip)->UseRealTime();

// Baseline: the floor of any std::future API. A helper thread (busy-polling, so it adds as
// little as possible) sets a std::promise that this thread waits on with future.get().
void BM_PromiseFutureHandoff(benchmark::State& state) {
  std::atomic<std::promise<int>*> slot{nullptr};
  std::atomic<bool> stop{false};
  std::thread helper([&] {
    int i = 0;
    while (!stop.load(std::memory_order_acquire)) {
      std::promise<int>* p = slot.exchange(nullptr, std::memory_order_acq_rel);
      if (p == nullptr) {
        bench::cpu_relax();
        continue;
      }
      p->set_value(i++);
    }
  });
  for (auto _ : state) {
    std::promise<int> promise;
    std::future<int> future = promise.get_future();
    slot.store(&promise, std::memory_order_release);
    benchmark::DoNotOptimize(future.get());
  }
  stop.store(true, std::memory_order_release);
  helper.join();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PromiseFutureHandoff)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
