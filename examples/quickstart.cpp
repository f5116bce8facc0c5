// SPDX-License-Identifier: MIT
// Quick start: one call in a worker process, then a parallel map, timed against a plain loop.
#include <chrono>
#include <future>
#include <iomanip>
#include <iostream>
#include <multicore/multicore.hpp>
#include <numeric>
#include <vector>

// CPU-bound work: count the primes in [block * 100000, (block + 1) * 100000) by trial division.
long count_primes(int block) {
  long count = 0;
  for (long n = block * 100'000L; n < (block + 1) * 100'000L; ++n) {
    bool prime = n > 1;
    for (long d = 2; d * d <= n && prime; ++d) prime = n % d != 0;
    count += prime;
  }
  return count;
}

int main() {
  multicore::Pool pool;  // forks one worker process per usable core, once
  std::future<long> first = pool.submit(count_primes, 0);  // runs in a worker process
  std::cout << "primes below 100000: " << first.get() << '\n';

  using clock = std::chrono::steady_clock;
  std::vector<int> blocks(40);  // the primes below 4000000, in 40 tasks
  std::iota(blocks.begin(), blocks.end(), 0);
  auto t0 = clock::now();
  long sequential = 0;
  for (int b : blocks) sequential += count_primes(b);
  auto t1 = clock::now();
  long parallel = 0;
  for (long n : pool.map(count_primes, blocks)) parallel += n;  // streamed in input order
  auto t2 = clock::now();

  std::chrono::duration<double> seq = t1 - t0, par = t2 - t1;
  std::cout << std::fixed << std::setprecision(2) << "primes below 4000000: " << parallel
            << "\nsequential " << seq.count() << " s, parallel " << par.count() << " s on "
            << pool.size() << " workers: " << seq / par << "x faster\n";
  return parallel == sequential ? 0 : 1;
}
