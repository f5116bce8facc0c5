// SPDX-License-Identifier: MIT
// Keeps a Cluster's workers out of the MPI job: they are forks of a rank, not processes of it.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" char** environ;  // POSIX; glibc declares it in <unistd.h> only with _GNU_SOURCE

namespace multicore::detail::mpi {

/// True for a variable through which a process reaches the MPI job's process manager: PMIx
/// (Open MPI's mpirun, Slurm's srun) and PMI (MPICH's Hydra, srun's PMI-2) server addresses,
/// namespace, rank and the like.
inline bool names_the_process_manager(const char* entry) noexcept {
  return std::strncmp(entry, "PMIX_", 5) == 0 || std::strncmp(entry, "PMI_", 4) == 0;
}

/// Removes the process manager's variables from this process's environment; run first in
/// every worker, on every rank. A worker inherits them from its rank (its fork server is made
/// before MPI starts, but the launcher set them before the program ran), so a task that
/// called MPI_Init, itself or through a library, would reach the process manager as that very
/// rank: the manager then took it for the rank and the whole job hung in MPI_Finalize at its
/// end. Without them, MPI_Init in a worker fails at once (mpirun also forbids singletons) and
/// the worker is lost, with MPI's message as its stderr. Other variables (such as
/// OMPI_COMM_WORLD_RANK, which says where a task runs) stay.
inline void leave_the_job_environment() {
  std::vector<std::string> names;  // unsetenv() moves `environ` under our feet: names first
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (!names_the_process_manager(*entry)) continue;
    const char* equals = std::strchr(*entry, '=');
    names.emplace_back(*entry, equals != nullptr ? static_cast<std::size_t>(equals - *entry)
                                                 : std::strlen(*entry));
  }
  for (const std::string& name : names) unsetenv(name.c_str());
}

}  // namespace multicore::detail::mpi
