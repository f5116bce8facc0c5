// SPDX-License-Identifier: MIT
// Progress: a long map with a live progress line (done / total, rate, time left), redrawn in
// place on a terminal and printed as plain lines otherwise (a log, a CI job); then the pool's
// statistics.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <multicore/multicore.hpp>
#include <vector>

/// About a millisecond of arithmetic: stands in for real work per item.
double simulate(int seed) {
  double x = seed;
  for (int i = 0; i < 50'000; ++i) x = std::sin(x) + 1.0;
  return x;
}

int main(int argc, char** argv) {
  const int items = argc > 1 ? std::atoi(argv[1]) : 4000;
  const bool terminal = isatty(STDOUT_FILENO) != 0;
  multicore::Pool pool;

  multicore::MapOptions options;
  options.progress_interval = std::chrono::milliseconds(terminal ? 100 : 1000);
  options.on_progress = [&](const multicore::MapProgress& p) {
    const double seconds = std::chrono::duration<double>(p.elapsed).count();
    const double rate = seconds > 0 ? static_cast<double>(p.done) / seconds : 0;
    const std::size_t total = p.total.value_or(0);  // sized input here: always known
    const double left = rate > 0 ? static_cast<double>(total - p.done) / rate : 0;
    std::printf("%s%zu / %zu items, %.0f items/s, %.1f s left%s", terminal ? "\r" : "", p.done,
                total, rate, left, terminal ? "   " : "\n");
    std::fflush(stdout);
  };

  std::vector<int> seeds(static_cast<std::size_t>(items));
  for (int i = 0; i < items; ++i) seeds[static_cast<std::size_t>(i)] = i;
  double sum = 0;
  for (double r : pool.map(simulate, seeds, options)) sum += r;
  if (terminal) std::printf("\n");

  const multicore::PoolStats s = pool.stats();
  std::printf("sum %.3f; %llu tasks done, %llu failed, on %zu workers:\n", sum,
              static_cast<unsigned long long>(s.done), static_cast<unsigned long long>(s.failed),
              s.workers.size());
  for (const multicore::WorkerStats& w : s.workers) {
    std::printf("  worker %u (pid %d): %llu tasks, busy %.2f s\n", w.index, w.pid,
                static_cast<unsigned long long>(w.tasks),
                std::chrono::duration<double>(w.busy).count());
  }
}
