// SPDX-License-Identifier: MIT
// fast_map's example: a function that blocks (sleeps) and then computes, over 8 inputs, on
// processes x threads. Results stream in, in input order. Usage: fast_map [sleep seconds, 1]
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <multicore/multicore.hpp>
#include <thread>
#include <vector>

double sleep_seconds = 1.0;  // set from argv before the Pool is made, so the workers see it

int io_and_cpu_expensive_function(int x) {
  std::this_thread::sleep_for(std::chrono::duration<double>(sleep_seconds));  // the "I/O"
  volatile long sink = 0;
  for (long i = 0; i < 100'000; ++i) sink = sink + i;  // the CPU part
  return x * x;
}

int main(int argc, char** argv) {
  if (argc > 1) sleep_seconds = std::atof(argv[1]);
  multicore::Pool pool;  // workers are forks of this process as it is now
  // Enough threads per process that all 8 calls block at once (fast_map: 4 cores -> 4 x 2).
  const unsigned threads = (8 + pool.size() - 1) / pool.size();
  std::cout << std::fixed << std::setprecision(2) << pool.size() << " workers x " << threads
            << " threads\n";

  const auto start = std::chrono::steady_clock::now();
  const auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const std::vector<int> inputs{0, 1, 2, 3, 4, 5, 6, 7};
  std::size_t i = 0;
  for (int square :
       pool.map(io_and_cpu_expensive_function, inputs, {.threads_per_worker = threads}))
    std::cout << inputs[i++] << " -> " << square << " at " << seconds() << " s\n";
  std::cout << "8 calls in " << seconds() << " s; one after another they take over "
            << 8 * sleep_seconds << " s\n";
}
