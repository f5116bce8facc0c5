// SPDX-License-Identifier: MIT
// Worker output into the application's logger: every line a worker prints, on stdout or stderr,
// goes to spdlog with the worker's number, instead of raw to the terminal.
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <future>
#include <iostream>
#include <multicore/multicore.hpp>
#include <vector>

int check(int part) {
  std::printf("checking part %d\n", part);  // plain printing, as a library deep down would
  if (part % 4 == 3) std::fprintf(stderr, "part %d: checksum mismatch\n", part);
  return part % 4 == 3 ? 0 : 1;
}

int main() {
  auto log = spdlog::stdout_logger_mt("workers");
  log->set_pattern("%n %l: %v");
  multicore::PoolOptions options;
  options.workers = 2;
  // Called on one thread of the pool's, one line at a time.
  options.on_worker_output = [log](unsigned worker, multicore::WorkerStream stream,
                                   std::string_view line) {
    const auto level =
        stream == multicore::WorkerStream::err ? spdlog::level::warn : spdlog::level::info;
    log->log(level, "[worker {}] {}", worker, line);
  };
  int good = 0;
  {
    multicore::Pool pool(options);
    std::vector<std::future<int>> results;
    for (int part = 0; part < 8; ++part) results.push_back(pool.submit(check, part));
    for (auto& r : results) good += r.get();
  }  // the pool's end hands every line still on its way to the logger
  log->flush();
  std::cout << good << " of 8 parts are good" << std::endl;
}
