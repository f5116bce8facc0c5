// SPDX-License-Identifier: MIT
// Pool start-up: construct a Pool of usable_cores() workers, get a first result, destroy it;
// for a small parent and for one with 256 MiB resident. Baseline: fork + pipe answer + waitpid.
#include <benchmark/benchmark.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>

#include "baselines.hpp"

namespace {

using Clock = std::chrono::steady_clock;

/// `mib` MiB of touched private memory in 4 KiB pages (no transparent huge pages), as a
/// parent with a big heap has: fork copies one page-table entry per page.
class Ballast {
 public:
  explicit Ballast(std::size_t mib) : bytes_(mib << 20) {
    if (bytes_ == 0) return;
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) bench::fail("mmap of the ballast");
    madvise(p, bytes_, MADV_NOHUGEPAGE);
    std::memset(p, 1, bytes_);
    data_ = p;
  }
  ~Ballast() {
    if (data_ != nullptr) munmap(data_, bytes_);
  }
  Ballast(const Ballast&) = delete;
  Ballast& operator=(const Ballast&) = delete;

 private:
  std::size_t bytes_;
  void* data_ = nullptr;
};

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Ours: Pool() with usable_cores() workers, first trivial result, ~Pool().
void BM_PoolStartup(benchmark::State& state, std::size_t ballast_mib) {
  const Ballast ballast(ballast_mib);
  double construct = 0;
  double first = 0;
  double destroy = 0;
  unsigned workers = 0;
  for (auto _ : state) {
    auto t0 = Clock::now();
    {
      multicore::Pool pool;
      construct += ms_since(t0);
      t0 = Clock::now();
      const int r = pool.submit(bench::trivial, 20).get();
      first += ms_since(t0);
      if (r != bench::trivial(20)) state.SkipWithError("wrong first result");
      workers = pool.size();
      t0 = Clock::now();
    }
    destroy += ms_since(t0);
  }
  state.SetItemsProcessed(state.iterations());
  using benchmark::Counter;
  state.counters["construct_ms"] = Counter(construct, Counter::kAvgIterations);
  state.counters["first_result_ms"] = Counter(first, Counter::kAvgIterations);
  state.counters["destroy_ms"] = Counter(destroy, Counter::kAvgIterations);
  state.counters["workers"] = workers;
}
BENCHMARK_CAPTURE(BM_PoolStartup, small_parent, 0)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_PoolStartup, parent_256MiB, 256)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Baseline: fork one child, read its 8-byte answer from a pipe, reap it.
void BM_ForkFirstAnswer(benchmark::State& state, std::size_t ballast_mib) {
  const Ballast ballast(ballast_mib);
  for (auto _ : state) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) bench::fail("pipe");
    std::uint64_t answer = 0;
    {
      bench::Child child([&] {
        const std::uint64_t v = 42;
        _exit(write(fds[1], &v, sizeof v) == sizeof v ? 0 : 1);
      });
      close(fds[1]);
      if (read(fds[0], &answer, sizeof answer) != sizeof answer) {
        state.SkipWithError("no answer from the child");
      }
    }  // reaped here
    close(fds[0]);
    if (answer != 42) break;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(BM_ForkFirstAnswer, small_parent, 0)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_ForkFirstAnswer, parent_256MiB, 256)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
