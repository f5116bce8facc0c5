// SPDX-License-Identifier: MIT
// A node agent killed with SIGKILL while rank 0 waits for its answers: the whole job must end
// (Open MPI 4.1 cannot go on without a rank), with a message, and leave nothing running.
// Usage (under mpirun, 2 ranks or more): agent_killed <directory for the ranks' pid files>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <multicore/mpi.hpp>
#include <multicore/multicore.hpp>
#include <string>
#include <thread>
#include <vector>

int slow(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  return x;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string dir = argv[1];
  // Every rank says where it is before the Cluster is made (its agent's pid, for rank 1).
  if (const char* rank = std::getenv("OMPI_COMM_WORLD_RANK")) {
    std::ofstream(dir + "/rank" + rank + ".pid") << getpid() << '\n';
  }
  multicore::mpi::Cluster cluster(argc, argv, {.workers_per_rank = 1});
  multicore::Pool pool(cluster);
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 40; ++i) futures.push_back(pool.submit(slow, i));
  pid_t agent = 0;
  std::ifstream(dir + "/rank1.pid") >> agent;
  if (agent <= 0) return 2;
  std::printf("killing the agent of rank 1, pid %d\n", agent);
  std::fflush(stdout);
  kill(agent, SIGKILL);
  for (auto& f : futures) f.get();  // mpirun ends the job meanwhile
  std::printf("unexpected: every task finished\n");
  return 0;
}
