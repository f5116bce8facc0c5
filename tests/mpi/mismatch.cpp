// SPDX-License-Identifier: MIT
// Built twice, as mismatch_a and mismatch_b (MULTICORE_TEST_VARIANT differs, so their code and
// build-ids differ), and started as one job: mpirun -np 1 mismatch_a : -np 1 mismatch_b. Every
// rank must refuse with the same clear error and the job must end, never hang; rank 0, whose
// Cluster throws, must be free to carry on.
#include <cstdio>
#include <multicore/mpi.hpp>
#include <multicore/multicore.hpp>

#ifndef MULTICORE_TEST_VARIANT
#define MULTICORE_TEST_VARIANT 0
#endif

long variant(long x) { return x * 2 + MULTICORE_TEST_VARIANT; }

/// Longest Collatz sequence below `n`: work that takes rank 0 a while (0.2 s for 500000 here).
long longest_collatz(long n) {
  long longest = 0;
  for (long i = 1; i < n; ++i) {
    long steps = 0;
    for (long x = i; x != 1; ++steps) x = x % 2 ? 3 * x + 1 : x / 2;
    longest = steps > longest ? steps : longest;
  }
  return longest;
}

int main(int argc, char** argv) {
  try {
    multicore::mpi::Cluster cluster(argc, argv, {.workers_per_rank = 1});
    multicore::Pool pool(cluster);
    std::printf("unexpected: the ranks agreed, %ld\n", pool.call(variant, 1L));
    return 0;
  } catch (const multicore::Error& e) {
    std::printf("rank 0 refused: %s\n", e.what());
    std::fflush(stdout);
    // The error is rank 0's to handle: here, by carrying on with this machine's cores, for a
    // while. The agents, which refused too, must not abort the job under it (a rank that
    // exits non-zero makes mpirun kill the others).
    multicore::Pool local({.workers = 1});
    std::printf("rank 0 carried on: %ld\n", local.call(longest_collatz, 500000L));
    return 3;
  }
}
