// SPDX-License-Identifier: MIT
// Beyond one machine: the quick start's work (count primes below 4000000 in 40 tasks) on the
// workers of every rank of an MPI job. The same Pool, map and submit as on one machine; only the
// Cluster line is new. Run with, for example:
//   mpirun --bind-to none -np 2 ./cluster                       (two agents on this machine)
//   mpirun --bind-to none --map-by ppr:1:node --hostfile hosts ./cluster   (one per machine)
#include <unistd.h>

#include <chrono>
#include <future>
#include <iomanip>
#include <iostream>
#include <multicore/mpi.hpp>
#include <numeric>
#include <string>
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

// Where a task ran: a worker on one of the job's machines (its host name and process id).
std::string where(int /*unused*/) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string(host) + ", pid " + std::to_string(getpid());
}

int main(int argc, char** argv) {
  // On every rank: that node's fork server, then MPI. Ranks other than 0 serve here until rank
  // 0's Cluster is destroyed, then exit; what follows runs once, on rank 0.
  multicore::mpi::Cluster cluster(argc, argv);
  multicore::Pool pool(cluster);  // size(): the workers of every rank
  std::cout << cluster.ranks() << " ranks, " << pool.size() << " workers\n";
  std::cout << "a task ran in a worker on " << pool.call(where, 0) << '\n';

  using clock = std::chrono::steady_clock;
  std::vector<int> blocks(40);
  std::iota(blocks.begin(), blocks.end(), 0);
  const auto t0 = clock::now();
  long parallel = 0;
  for (long n : pool.map(count_primes, blocks)) parallel += n;  // streamed in input order
  const std::chrono::duration<double> took = clock::now() - t0;
  std::cout << std::fixed << std::setprecision(2) << "primes below 4000000: " << parallel << " in "
            << took.count() << " s on " << pool.size() << " workers\n";
  return parallel == 283146 ? 0 : 1;
}
