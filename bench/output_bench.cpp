// SPDX-License-Identifier: MIT
// What routing worker output costs: a task that prints 1 MB (80-byte lines) on stdout, with the
// parent's stdout on /dev/null, in each WorkerOutput mode and through on_worker_output.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <multicore/multicore.hpp>
#include <string>
#include <string_view>

namespace {

constexpr std::size_t megabyte = std::size_t{1} << 20;
constexpr std::size_t line_bytes = 80;

/// Prints 1 MiB in lines and flushes it: it is then in the pipe (or on /dev/null).
int print_megabyte() {
  const std::string line(line_bytes - 1, 'x');
  for (std::size_t n = 0; n < megabyte / line_bytes; ++n) std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  return 0;
}

/// The parent's stdout on /dev/null while it lives (the workers' too, in inherit mode: they
/// are forked after it was made).
class StdoutToNull {
 public:
  StdoutToNull() : saved_(dup(STDOUT_FILENO)) {
    std::fflush(stdout);
    const int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    dup2(null, STDOUT_FILENO);
    close(null);
  }
  ~StdoutToNull() {
    std::fflush(stdout);
    dup2(saved_, STDOUT_FILENO);
    close(saved_);
  }
  StdoutToNull(const StdoutToNull&) = delete;
  StdoutToNull& operator=(const StdoutToNull&) = delete;

 private:
  int saved_;
};

/// Arg 0: inherit (the baseline); 1: tagged; 2: on_worker_output with a callback that does
/// nothing. A pipe holds 64 KiB: a call returns only once nearly all it printed was delivered.
void BM_PrintMegabyte(benchmark::State& state) {
  StdoutToNull null;
  multicore::PoolOptions options;
  options.workers = 1;
  if (state.range(0) == 1) options.worker_output = multicore::WorkerOutput::tagged;
  if (state.range(0) == 2) {
    options.on_worker_output = [](unsigned, multicore::WorkerStream, std::string_view line) {
      benchmark::DoNotOptimize(line.data());
    };
  }
  {
    multicore::Pool pool(options);
    for (auto _ : state) pool.call(print_megabyte);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(megabyte));
  state.SetLabel(state.range(0) == 0 ? "inherit" : state.range(0) == 1 ? "tagged" : "callback");
}
BENCHMARK(BM_PrintMegabyte)->Arg(0)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
