// SPDX-License-Identifier: MIT
// Beyond one machine: the same Pool over the ranks of an MPI job started with mpirun or srun.
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "detail/core/pool_core.hpp"
#include "detail/transport/composite.hpp"
#include "detail/transport/mpi/agent.hpp"
#include "detail/transport/mpi/handshake.hpp"
#include "detail/transport/mpi/mpi_api.hpp"
#include "detail/transport/mpi/outside_the_job.hpp"
#include "detail/transport/mpi/remote_transport.hpp"
#include "detail/transport/shm/shm_transport.hpp"
#include "detail/util/threads.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "pool.hpp"
#include "system.hpp"

namespace multicore::mpi {

/// How every rank of a Cluster runs its workers. Give every rank the same options (they all run
/// the same main()).
struct ClusterOptions {
  /// Worker processes on each rank; 0: that node's usable_cores(). At most 1024.
  unsigned workers_per_rank = 0;
  /// Bytes of each shared-memory ring on each node (see PoolOptions::ring_bytes).
  std::size_t ring_bytes = std::size_t{1} << 20;
  /// Runs in every worker on every rank as it starts, replacements included.
  std::function<void()> on_worker_start{};
  /// 0: none. Otherwise a task running longer fails with TaskTimeout; its worker is replaced.
  std::chrono::milliseconds task_timeout{0};
  /// 0: unlimited. Otherwise each worker is replaced after running this many tasks.
  std::size_t max_tasks_per_worker = 0;
  /// Other threads running as the Cluster makes its fork server (see PoolOptions).
  OtherThreads other_threads = OtherThreads::warn;
  /// Where workers' stdout and stderr go (see PoolOptions::worker_output). Tagged: every
  /// rank's workers' lines are written by rank 0, prefixed with the worker, its pid, rank and
  /// host (`[worker 5 pid 4242 rank 1 (node07)] `). Inherit: each worker writes to its rank's
  /// own stdout and stderr, which mpirun forwards.
  WorkerOutput worker_output = WorkerOutput::inherit;
  /// Every rank's workers' lines, called on rank 0 (see PoolOptions::on_worker_output);
  /// `worker` is the Pool's worker index. The agents' copies of it are never called.
  std::function<void(unsigned, WorkerStream, std::string_view)> on_worker_output{};
};

/// The machines of an MPI job, made into one set of workers for a Pool.
///
/// Make it first thing in main(), on every rank, before any thread starts:
///
///     int main(int argc, char** argv) {
///       multicore::mpi::Cluster cluster(argc, argv);  // ranks > 0 serve here, then exit
///       multicore::Pool pool(cluster);                // rank 0: workers on every rank's node
///       for (long n : pool.map(collatz_steps, inputs)) ...
///     }
///
/// and start the program with `mpirun --bind-to none -np 4 ./app` (or one rank per machine:
/// `--map-by ppr:1:node`). On every rank the constructor first makes that node's fork server (so
/// workers carry no MPI state), then initialises MPI and checks that every rank runs the same
/// build (the same GNU build-id for every module; a rank that does not is an Error on rank 0,
/// to handle as the application sees fit, and every other rank prints it and exits with status
/// 0, so that mpirun does not kill rank 0 meanwhile). On ranks other than 0 it never returns:
/// the rank serves as its node's agent, running that node's workers for rank 0, and calls
/// std::exit(0) when rank 0's Cluster is destroyed. So the code after it runs once, on rank 0,
/// and never needs `if (rank == 0)`.
///
/// Workers on each rank see their program as it was when that rank made its Cluster: set up
/// what tasks read before making it. Workers are not processes of the MPI job: a task cannot
/// call MPI (MPI_Init in a task fails and loses its worker, with MPI's message, and the job goes
/// on), and workers do not see the process manager's variables (`PMIX_*`, `PMI_*`). A rank
/// that dies (its node fails, its agent is killed) ends the whole job: Open MPI 4.1 cannot go
/// on without it.
class Cluster {
 public:
  /// Throws Error when a rank runs another build, std::logic_error when MPI is already
  /// initialised (the fork server must come first), std::invalid_argument for bad options,
  /// SystemError when the fork server cannot be made.
  Cluster(int& argc, char**& argv, ClusterOptions options = {});
  /// On rank 0: tells every agent to exit, waits until they have, finalises MPI.
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  /// Ranks in the job (rank 0 and its agents).
  int ranks() const noexcept { return static_cast<int>(agents_.size()) + 1; }
  /// Workers over every rank: the size of a Pool made from this cluster.
  unsigned workers() const noexcept;

 private:
  friend class multicore::Pool;
  /// The core of a Pool on every rank's workers. One Pool at a time: throws Error otherwise.
  std::unique_ptr<detail::PoolCore> make_pool_core();

  ClusterOptions options_;
  std::unique_ptr<detail::ShmTransport> local_;  // this node's workers and fork server
  std::vector<detail::mpi::AgentInfo> agents_;
  std::atomic<bool> pool_alive_{false};
  bool finalized_ = false;
  std::uint64_t generation_ = detail::process_generation();  // the process that made it
};

// ---- definitions ------------------------------------------------------------------------------

namespace detail_cluster {

inline detail::ShmOptions shm_options(const ClusterOptions& o, unsigned workers) {
  detail::ShmOptions shm;
  shm.workers = workers;
  shm.ring_bytes = o.ring_bytes;
  // Every worker leaves the MPI job first (see leave_the_job_environment), then runs the user's.
  shm.on_start = [user = o.on_worker_start] {
    detail::mpi::leave_the_job_environment();
    if (user) user();
  };
  shm.max_tasks = o.max_tasks_per_worker;
  shm.output = o.worker_output;
  shm.on_output = o.on_worker_output;
  return shm;
}

/// The options a local Pool would have, for validation and for scheduling.
inline PoolOptions pool_options(const ClusterOptions& o) {
  PoolOptions p;
  p.workers = o.workers_per_rank;
  p.ring_bytes = o.ring_bytes;
  p.task_timeout = o.task_timeout;
  p.max_tasks_per_worker = o.max_tasks_per_worker;
  p.worker_output = o.worker_output;
  p.on_worker_output = o.on_worker_output;
  return p;
}

}  // namespace detail_cluster

inline Cluster::Cluster(int& argc, char**& argv, ClusterOptions options)
    : options_(std::move(options)) {
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (initialised != 0) {
    throw std::logic_error(
        "multicore: make the mpi::Cluster before MPI is initialised: its fork server must be "
        "made first, so that workers carry no MPI state");
  }
  detail::watch_forks();  // as a Pool does, before its fork server: workers run it too
  const PoolOptions checked = detail::validated(detail_cluster::pool_options(options_));
  detail::check_other_threads(options_.other_threads, "a Cluster", "ClusterOptions::other_threads");
  options_.ring_bytes = checked.ring_bytes;
  detail::stop_table();  // before the fork server: this node's workers see its stop flags
  local_ = std::make_unique<detail::ShmTransport>(
      detail_cluster::shm_options(options_, checked.workers));
  int provided = 0;
  detail::mpi::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided),
                     "MPI_Init_thread");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string verdict =
      provided < MPI_THREAD_MULTIPLE
          ? "multicore: this MPI library does not support MPI_THREAD_MULTIPLE"
          : "";
  detail::mpi::Roster roster = detail::mpi::meet(local_->size(), verdict);
  if (!roster.error.empty()) {
    local_.reset();
    MPI_Finalize();
    finalized_ = true;
    if (rank == 0) throw Error(roster.error);
    // Status 0: the error is rank 0's to handle (it may carry on without the cluster), and a
    // rank that exits non-zero makes mpirun kill every other, rank 0 included, often before
    // its own report is out. The job's status is then rank 0's.
    std::fprintf(stderr, "%s\n", roster.error.c_str());
    std::exit(0);
  }
  if (rank != 0) {
    detail::mpi::Agent(*local_).run();
    local_.reset();
    MPI_Finalize();
    std::exit(0);
  }
  agents_ = std::move(roster.agents);
}

inline Cluster::~Cluster() {
  if (finalized_) return;
  // In a process forked from rank 0 (by the application), the Cluster is a snapshot: MPI,
  // the agents and the fork server belong to the parent. Leave them be (the memory goes with
  // this process).
  if (generation_ != detail::process_generation()) {
    (void)local_.release();
    return;
  }
  detail::mpi::say_goodbye(agents_);
  local_.reset();
  MPI_Finalize();
}

inline unsigned Cluster::workers() const noexcept {
  unsigned n = local_ ? local_->size() : 0;
  for (const auto& a : agents_) n += a.workers;
  return n;
}

inline std::unique_ptr<detail::PoolCore> Cluster::make_pool_core() {
  if (pool_alive_.exchange(true)) {
    throw Error("multicore: a Cluster serves one Pool at a time; destroy the first one");
  }
  // The local fork server outlives the Pool (the next one uses it too): closing the pool stops
  // its workers only. The agents likewise keep serving.
  struct Lease {
    explicit Lease(std::atomic<bool>& a) noexcept : alive(a) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { alive.store(false); }
    std::atomic<bool>& alive;
  };
  try {
    detail::ShmTransport* local = local_.get();
    // The agents' workers' lines (tagged output) come to this node's reader, numbered as the
    // Pool numbers workers: this node's first.
    auto remote = std::make_shared<detail::mpi::RemoteTransport>(
        agents_, [local, first = local->size()](unsigned k, int pid, WorkerStream stream,
                                                std::string where, std::string line) {
          local->deliver_remote_output(first + k, pid, stream, std::move(where), std::move(line));
        });
    auto lease = std::make_shared<Lease>(pool_alive_);
    auto transport = std::make_unique<detail::CompositeTransport>(
        std::vector<detail::Transport*>{local, remote.get()},
        [local, remote, lease](std::size_t part) {
          if (part == 0) {
            local->stop_workers();
          } else {
            remote->close();
          }
        });
    return std::make_unique<detail::PoolCore>(detail_cluster::pool_options(options_),
                                              std::move(transport));
  } catch (...) {
    pool_alive_.store(false);
    throw;
  }
}

}  // namespace multicore::mpi

namespace multicore {

inline Pool::Pool(mpi::Cluster& cluster) : core_(detail::share_core(cluster.make_pool_core())) {}

}  // namespace multicore
