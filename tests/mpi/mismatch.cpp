// SPDX-License-Identifier: MIT
// Built twice, as mismatch_a and mismatch_b (MULTICORE_TEST_VARIANT differs, so their code and
// build-ids differ), and started as one job: mpirun -np 1 mismatch_a : -np 1 mismatch_b. Every
// rank must refuse with the same clear error and the job must end, never hang.
#include <cstdio>
#include <multicore/mpi.hpp>
#include <multicore/multicore.hpp>

#ifndef MULTICORE_TEST_VARIANT
#define MULTICORE_TEST_VARIANT 0
#endif

long variant(long x) { return x * 2 + MULTICORE_TEST_VARIANT; }

int main(int argc, char** argv) {
  try {
    multicore::mpi::Cluster cluster(argc, argv, {.workers_per_rank = 1});
    multicore::Pool pool(cluster);
    std::printf("unexpected: the ranks agreed, %ld\n", pool.call(variant, 1L));
    return 0;
  } catch (const multicore::Error& e) {
    std::printf("rank 0 refused: %s\n", e.what());
    return 3;
  }
}
