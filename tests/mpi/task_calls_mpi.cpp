// SPDX-License-Identifier: MIT
// Tasks that call MPI_Init in their workers, on every rank: each loses its worker (a worker is
// not a process of the MPI job), the pool goes on, and the job ends as usual with status 0.
// Before workers were kept out of the job, a worker's MPI_Init reached its rank's process
// manager as that very rank, and the whole job hung in MPI_Finalize at its end.
// Usage (under mpirun, any number of ranks): task_calls_mpi
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <future>
#include <multicore/mpi.hpp>
#include <multicore/multicore.hpp>
#include <string>
#include <vector>

namespace {

int join_the_job(int) {
  MPI_Init(nullptr, nullptr);  // fails in a worker: Open MPI's default handler then exits
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int twice(int x) { return 2 * x; }

int fail(const char* what) {
  std::printf("task_calls_mpi: FAIL: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  multicore::mpi::Cluster cluster(argc, argv, {.workers_per_rank = 1});
  multicore::Pool pool(cluster);
  // One call per worker at once: every rank's worker gets one.
  std::vector<std::future<int>> calls;
  for (unsigned i = 0; i < pool.size(); ++i) calls.push_back(pool.submit(join_the_job, 0));
  unsigned lost = 0;
  for (auto& call : calls) {
    try {
      call.get();
    } catch (const multicore::WorkerLost& e) {
      if (std::string(e.what()).find("MPI_Init") == std::string::npos) {
        std::printf("task_calls_mpi: %s\n", e.what());
        return fail("WorkerLost does not quote what MPI said");
      }
      ++lost;
    }
  }
  if (lost != calls.size()) return fail("a task joined the MPI job");
  std::vector<int> inputs(64);
  for (int i = 0; i < 64; ++i) inputs[static_cast<std::size_t>(i)] = i;
  int expected = 0;
  for (int r : pool.map(twice, inputs)) {
    if (r != 2 * expected++) return fail("the pool went wrong afterwards");
  }
  if (expected != 64) return fail("the map afterwards came back short");
  std::printf("task_calls_mpi: ok: %u workers lost, the pool went on\n", lost);
  return 0;  // ~Cluster: the job ends here (it hung in MPI_Finalize before)
}
