// SPDX-License-Identifier: MIT
// The same Pool over MPI ranks: run under mpirun by CTest (tests/mpi/CMakeLists.txt) with 1, 2
// and 4 ranks, and once over TCP only. The Cluster is made in main() on every rank; ranks other
// than 0 serve there and never run a test, so every test below runs on rank 0 only.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <multicore/mpi.hpp>
#include <multicore/multicore.hpp>
#include <mutex>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "support/memory_cgroup.hpp"

namespace {

using multicore::Pool;
using multicore::RemoteError;
using multicore::TaskTimeout;
using multicore::WorkerLost;
using namespace std::chrono_literals;

multicore::mpi::Cluster* the_cluster = nullptr;

/// Every line the workers of every rank printed, as ClusterOptions::on_worker_output got it
/// (on rank 0).
struct PrintedLine {
  unsigned worker;
  multicore::WorkerStream stream;
  std::string text;
};
std::mutex printed_mutex;
std::vector<PrintedLine> printed;

/// While set, record_line also submits a task to this pool, and keeps what that threw here.
std::atomic<Pool*> pool_in_callback{nullptr};
std::vector<std::string> callback_errors;  // under printed_mutex

long square(long x);

void record_line(unsigned worker, multicore::WorkerStream stream, std::string_view text) {
  std::string error;
  if (Pool* pool = pool_in_callback.load()) {
    try {
      pool->submit(square, 2L);
    } catch (const multicore::Error& e) {
      error = e.what();
    }
  }
  std::lock_guard lock(printed_mutex);
  printed.push_back({worker, stream, std::string(text)});
  if (pool_in_callback.load() != nullptr) callback_errors.push_back(error);
}

/// This process's MPI rank, as mpirun announces it, read before the Cluster is made: workers see
/// the program as it was then, so a task can tell which rank's node it runs on.
int launched_rank = -1;

/// While this file exists, on_worker_start throws in the workers of the rank it names. One
/// path for every rank of the job (all on this machine): it is named after the job's id.
std::string start_fails_file;

/// The memory cgroup whose limit case 7 of misbehave() outgrows (see MemoryCgroup): named
/// after the job's id too, as every rank's workers must find it.
std::string oom_cgroup;

/// The tests' ClusterOptions::on_worker_start.
void start_worker() {
  int rank = -1;
  if (std::FILE* f = std::fopen(start_fails_file.c_str(), "r")) {
    if (std::fscanf(f, "%d", &rank) != 1) rank = -1;
    std::fclose(f);
  }
  if (rank == launched_rank) throw std::runtime_error("no database here");
}

/// ClusterOptions::task_timeout is set: 2 s, unless MULTICORE_TEST_NO_TASK_TIMEOUT is.
bool tasks_time_out = true;

long square(long x) { return x * x; }

std::vector<char> echo(std::vector<char> bytes) { return bytes; }

/// 3 MiB whose every byte depends on `seed`: answers of different tasks differ everywhere.
std::vector<char> pattern(int seed) {
  std::vector<char> bytes(3u << 20);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<char>((i * 31 + static_cast<std::size_t>(seed) * 7919) >> 3);
  }
  return bytes;
}

int misbehave(int how) {
  switch (how) {
    case 1:
      throw std::runtime_error("thrown on a node");
    case 2:
      std::signal(SIGSEGV, SIG_DFL);
      std::raise(SIGSEGV);
      break;
    case 3:
      _exit(3);
    case 4:
      for (;;) {  // past task_timeout
      }
    case 5:
      std::fprintf(stderr, "dying on rank %d\n", launched_rank);
      std::abort();
    case 7:  // killed by the kernel's out-of-memory killer
      return multicore_test::join_then_outgrow(multicore_test::MemoryCgroup::procs_of(oom_cgroup));
    case 6: {  // replaces the worker's program while a child of it holds every descriptor
      const pid_t worker = getpid();
      if (fork() == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == worker) pause();
        _exit(0);
      }
      execlp("sleep", "sleep", "3600", static_cast<char*>(nullptr));
      break;
    }
    default:
      break;
  }
  return how;
}

/// A file that tasks wait for: one_per_worker's tasks all wait at it until every one of them is
/// submitted. Least-loaded dispatch then gives each worker one; a task that ended at once would
/// free its worker for the next submit, and a rank could get none (it did, on a loaded machine).
/// Every rank of these tests runs on this machine, so all see the file.
class Gate {
 public:
  Gate() {
    static int made = 0;
    path_ =
        "/tmp/multicore-cluster-gate-" + std::to_string(getpid()) + "-" + std::to_string(++made);
  }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  ~Gate() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }
  void open() const { std::fclose(std::fopen(path_.c_str(), "w")); }

 private:
  std::string path_;
};

/// Returns once the file at `path` exists (every rank of these tests runs on this machine).
void wait_for_file(const std::string& path) {
  const auto give_up = std::chrono::steady_clock::now() + 60s;  // a hang guard, never reached
  while (access(path.c_str(), F_OK) != 0) {
    if (std::chrono::steady_clock::now() > give_up) throw std::runtime_error("no " + path);
    sched_yield();
  }
}

/// How many variables of the MPI job's process manager (PMIX_*, PMI_*) this process sees.
int process_manager_variables() {
  int n = 0;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string_view e(*entry);
    if (e.starts_with("PMIX_") || e.starts_with("PMI_")) ++n;
  }
  return n;
}

constexpr int rank_of_node = 0;
constexpr int count_process_manager_variables = -1;
constexpr int rank_in_environment = -2;

/// What one_per_worker's tasks run once `gate` is open: the rank of the worker's node (as read
/// before the Cluster, or as the worker's environment says now), how many process manager
/// variables it sees, or misbehave(how).
int at_gate(const std::string& gate, int how) {
  wait_for_file(gate);
  if (how == rank_of_node) return launched_rank;
  if (how == count_process_manager_variables) return process_manager_variables();
  if (how == rank_in_environment) {
    const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
    return rank != nullptr ? std::atoi(rank) : -1;
  }
  return misbehave(how);
}

/// One task per worker at once, each running at_gate(how): iterate over the futures; the gate
/// goes when this does, after them.
class one_per_worker {
 public:
  one_per_worker(Pool& pool, int how) {
    for (unsigned k = 0; k < pool.size(); ++k) {
      futures_.push_back(pool.submit(at_gate, gate_.path(), how));
    }
    gate_.open();
  }
  auto begin() { return futures_.begin(); }
  auto end() { return futures_.end(); }

 private:
  Gate gate_;
  std::vector<std::future<int>> futures_;  // destroyed first
};

int ranks() { return the_cluster->ranks(); }

TEST(Cluster, PoolSizeIsEveryRanksWorkers) {
  Pool pool(*the_cluster);
  EXPECT_EQ(pool.size(), static_cast<unsigned>(ranks()));  // one worker per rank here
  EXPECT_EQ(pool.size(), the_cluster->workers());
}

/// The ranks that one task per worker, each running at_gate(how), returned.
std::set<int> ranks_seen(Pool& pool, int how) {
  std::set<int> seen;
  for (auto& f : one_per_worker(pool, how)) seen.insert(f.get());
  return seen;
}

/// 0, 1, ... ranks() - 1.
std::set<int> every_rank() {
  std::set<int> all;
  for (int r = 0; r < ranks(); ++r) all.insert(r);
  return all;
}

TEST(Cluster, TasksRunOnEveryRank) {
  Pool pool(*the_cluster);
  EXPECT_EQ(ranks_seen(pool, rank_of_node), every_rank());
}

// A worker is a fork of its rank, not a process of the MPI job: were the process manager's
// variables left to it, MPI_Init in a task would join the job as that rank (and the job hung
// at its end; tests/mpi/task_calls_mpi.cpp). OMPI_COMM_WORLD_RANK and the like stay.
TEST(Cluster, WorkersOnEveryRankAreOutsideTheMpiJob) {
  if (process_manager_variables() == 0) GTEST_SKIP() << "not started by a PMIx or PMI launcher";
  Pool pool(*the_cluster);
  for (auto& f : one_per_worker(pool, count_process_manager_variables)) EXPECT_EQ(f.get(), 0);
  EXPECT_EQ(ranks_seen(pool, rank_in_environment), every_rank());
}

// On one machine the Pool's constructor throws what on_worker_start threw; over ranks, the
// error also says where.
TEST(Cluster, OnWorkerStartThrowingOnARankGivesAnErrorNamingIt) {
  if (ranks() < 2) GTEST_SKIP() << "needs a rank besides 0";
  const int failing = ranks() - 1;
  std::string what;
  {
    // Removed however this block ends: left behind, it would fail every later test's Pool.
    struct RemovedAtEnd {
      ~RemovedAtEnd() { std::remove(start_fails_file.c_str()); }
    } removed;
    std::ofstream(start_fails_file) << failing << '\n';
    try {
      Pool pool(*the_cluster);
    } catch (const multicore::Error& e) {
      what = e.what();
    }
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  EXPECT_EQ(what, "multicore: on_worker_start threw on rank " + std::to_string(failing) + " (" +
                      host + "): no database here");
  Pool pool(*the_cluster);  // the next one starts
  EXPECT_EQ(pool.size(), the_cluster->workers());
}

TEST(Cluster, MapGivesEveryResultInInputOrder) {
  Pool pool(*the_cluster);
  std::vector<long> inputs(20000);
  std::iota(inputs.begin(), inputs.end(), -10000);
  std::vector<long> results;
  for (long r : pool.map(square, inputs)) results.push_back(r);
  ASSERT_EQ(results.size(), inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) ASSERT_EQ(results[i], inputs[i] * inputs[i]);
  std::vector<char> seen(inputs.size(), 0);
  for (auto [index, value] : pool.map_unordered(square, inputs)) {
    ASSERT_EQ(value, inputs[index] * inputs[index]);
    seen[index] += 1;
  }
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](char c) { return c == 1; }));
}

TEST(Cluster, SubmitCallAndTask) {
  Pool pool(*the_cluster);
  EXPECT_EQ(pool.submit(square, 12L).get(), 144);
  for (long i = 0; i < 200; ++i) ASSERT_EQ(pool.call(square, i), i * i);
  multicore::Task<long> task(pool);
  for (long i = 0; i < 100; ++i) task.run(square, i);
  const std::vector<long> got = task.get();
  for (long i = 0; i < 100; ++i) ASSERT_EQ(got[static_cast<std::size_t>(i)], i * i);
  // A lambda's captures travel as bytes: values, not pointers, mean the same on another node.
  const long offset = 7 + static_cast<long>(pool.size());  // not a constant: really captured
  EXPECT_EQ(pool.call([offset](long x) { return x + offset; }, 5L), 5 + offset);
}

TEST(Cluster, LargeArgumentsAndResultsReachEveryRank) {
  Pool pool(*the_cluster);
  std::vector<char> big(64 << 20);
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>(i / 4096);
  std::vector<std::future<std::vector<char>>> echoes;
  for (unsigned k = 0; k < pool.size(); ++k) echoes.push_back(pool.submit(echo, big));
  for (auto& e : echoes) EXPECT_TRUE(e.get() == big);
}

// Large answers from several workers of one agent stream at the same time: each must arrive
// whole and unmixed (run with 2 workers per rank by mpi.two_workers_per_rank).
TEST(Cluster, LargeAnswersStreamingAtOnceKeepTheirOwnBytes) {
  Pool pool(*the_cluster);
  std::vector<std::future<std::vector<char>>> answers;
  for (int seed = 0; seed < static_cast<int>(4 * pool.size()); ++seed) {
    answers.push_back(pool.submit(pattern, seed));
  }
  for (int seed = 0; seed < static_cast<int>(answers.size()); ++seed) {
    ASSERT_TRUE(answers[static_cast<std::size_t>(seed)].get() == pattern(seed)) << seed;
  }
}

// Agents and rank 0 reuse the buffers of large messages for the next ones: each must still
// arrive with its own size and bytes, larger or smaller than the one before.
TEST(Cluster, LargeMessagesOneAfterAnotherKeepTheirOwnSizeAndBytes) {
  Pool pool(*the_cluster);
  std::size_t round = 0;
  for (std::size_t size : {(8u << 20) + 3, (2u << 20) + 1, (24u << 20) + 5, (3u << 19)}) {
    std::vector<char> bytes(size);
    for (std::size_t i = 0; i < size; i += 1000) bytes[i] = static_cast<char>(i / 1000 + round);
    bytes.back() = static_cast<char>(++round);
    std::vector<std::future<std::vector<char>>> echoes;
    for (unsigned k = 0; k < pool.size(); ++k) echoes.push_back(pool.submit(echo, bytes));
    for (auto& e : echoes) ASSERT_TRUE(e.get() == bytes) << size;
  }
}

TEST(Cluster, AThrowingTaskGivesRemoteError) {
  Pool pool(*the_cluster);
  for (auto& f : one_per_worker(pool, 1)) {
    try {
      f.get();
      ADD_FAILURE() << "no error";
    } catch (const RemoteError& e) {
      EXPECT_EQ(e.type_name(), "std::runtime_error");
      EXPECT_EQ(e.message(), "thrown on a node");
    }
  }
}

/// Every worker runs `how` once; each must fail with E, naming the rank for remote workers;
/// afterwards the pool goes on: its workers are replaced, and tasks succeed.
template <class E, class Check>
void every_worker_fails(int how, Check&& check) {
  Pool pool(*the_cluster);
  int remote = 0;
  for (auto& f : one_per_worker(pool, how)) {
    try {
      f.get();
      ADD_FAILURE() << "no error";
    } catch (const E& e) {
      check(e);
      const std::string what = e.what();
      if (what.find(" on rank ") != std::string::npos) ++remote;
    }
  }
  if constexpr (std::is_same_v<E, WorkerLost>) {
    EXPECT_EQ(remote, ranks() - 1);
  }
  std::vector<std::future<long>> after;
  for (long i = 0; i < 4 * static_cast<long>(pool.size()); ++i)
    after.push_back(pool.submit(square, i));
  for (long i = 0; i < static_cast<long>(after.size()); ++i) {
    EXPECT_EQ(after[static_cast<std::size_t>(i)].get(), i * i);
  }
  EXPECT_EQ(pool.size(), static_cast<unsigned>(ranks()));
}

TEST(Cluster, ASegfaultingTaskGivesWorkerLostNamingItsRank) {
  every_worker_fails<WorkerLost>(2, [](const WorkerLost& e) {
    EXPECT_EQ(e.signal(), SIGSEGV);
    EXPECT_EQ(e.exit_code(), -1);
  });
}

TEST(Cluster, AnExitingTaskGivesWorkerLost) {
  every_worker_fails<WorkerLost>(3, [](const WorkerLost& e) {
    EXPECT_EQ(e.signal(), 0);
    EXPECT_EQ(e.exit_code(), 3);
  });
}

// On every rank, as on one machine: the worker is killed at once (not at the task's timeout),
// also when a child the task forked keeps the descriptors the worker inherited. Regression test:
// a Cluster's workers did not run the library's fork handler, and the child kept the fork
// server's watch on the worker open.
TEST(Cluster, ATaskThatReplacesItsWorkersProgramAfterForkingGivesWorkerLost) {
  every_worker_fails<WorkerLost>(6, [](const WorkerLost& e) {
    EXPECT_NE(std::string(e.what()).find("replaced the worker's program (exec"), std::string::npos)
        << e.what();
  });
}

// A worker the out-of-memory killer kills on another rank's node says so there too (its agent
// reads the node's count of such kills), as on one machine.
TEST(Cluster, AWorkerTheOutOfMemoryKillerKillsGivesWorkerLostSayingSo) {
  const multicore_test::MemoryCgroup cgroup(oom_cgroup, std::size_t{64} << 20);
  if (!cgroup.made()) GTEST_SKIP() << "no memory cgroup to fill: " << cgroup.why_not();
  every_worker_fails<WorkerLost>(7, [](const WorkerLost& e) {
    EXPECT_EQ(e.signal(), SIGKILL);
    EXPECT_TRUE(e.out_of_memory()) << e.what();
    EXPECT_NE(std::string(e.what()).find("most likely by the kernel's out-of-memory killer"),
              std::string::npos)
        << e.what();
  });
}

/// 32 MiB whose second half cannot be read: a worker sending it faults (SIGSEGV) halfway.
std::vector<char> half_unreadable() {
  std::vector<char> bytes(32u << 20, 'x');
  const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto half = reinterpret_cast<std::uintptr_t>(bytes.data() + bytes.size() / 2);
  const auto end = reinterpret_cast<std::uintptr_t>(bytes.data() + bytes.size());
  const std::uintptr_t from = (half + page - 1) / page * page;
  mprotect(reinterpret_cast<void*>(from), end / page * page - from, PROT_NONE);
  return bytes;
}

/// Once `gate` is open: an answer whose worker dies (SIGSEGV) halfway through sending it.
std::vector<char> torn_answer(const std::string& gate) {
  at_gate(gate, 0);
  std::signal(SIGSEGV, SIG_DFL);
  return half_unreadable();
}

/// Every worker of `pool` echoes 24 MiB.
void expect_large_echoes(Pool& pool) {
  std::vector<char> big(24u << 20);
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>(i / 4096);
  std::vector<std::future<std::vector<char>>> echoes;
  for (unsigned k = 0; k < pool.size(); ++k) echoes.push_back(pool.submit(echo, big));
  for (auto& e : echoes) {
    ASSERT_EQ(e.wait_for(60s), std::future_status::ready) << "a hang";
    EXPECT_TRUE(e.get() == big);
  }
}

// An agent sends a large answer's first pieces while its worker still writes the rest; a worker
// that dies in the middle must give WorkerLost, not a torn answer, nor a wait for the rest.
TEST(Cluster, AWorkerDyingHalfwayThroughALargeAnswerGivesWorkerLost) {
  Pool pool(*the_cluster);
  int remote = 0;
  {
    Gate gate;
    std::vector<std::future<std::vector<char>>> answers;
    for (unsigned k = 0; k < pool.size(); ++k)
      answers.push_back(pool.submit(torn_answer, gate.path()));
    gate.open();
    for (auto& a : answers) {
      ASSERT_EQ(a.wait_for(60s), std::future_status::ready) << "a hang: the answer never ended";
      try {
        a.get();
        ADD_FAILURE() << "no error";
      } catch (const WorkerLost& e) {
        EXPECT_EQ(e.signal(), SIGSEGV);
        if (std::string(e.what()).find(" on rank ") != std::string::npos) ++remote;
      }
    }
  }
  EXPECT_EQ(remote, ranks() - 1);
  expect_large_echoes(pool);
}

/// Where stall_halfway's worker says it stopped.
char stopped_mark[256];

void create_mark_and_stop(int /*signal*/) {
  close(open(stopped_mark, O_CREAT | O_WRONLY, 0600));  // both async-signal-safe
  raise(SIGSTOP);
}

/// A 32 MiB answer whose worker stops itself (SIGSTOP) halfway through sending it, once it
/// created the file `stopped`.
std::vector<char> stall_halfway(const std::string& stopped) {
  std::snprintf(stopped_mark, sizeof stopped_mark, "%s", stopped.c_str());
  struct sigaction stop = {};
  stop.sa_handler = create_mark_and_stop;
  sigaction(SIGSEGV, &stop, nullptr);
  return half_unreadable();
}

/// Once `gate` is open: on an agent's worker, stall_halfway(stopped); on rank 0's node, nothing.
std::vector<char> half_sent_answer(const std::string& gate, const std::string& stopped) {
  return at_gate(gate, 0) == 0 ? std::vector<char>() : stall_halfway(stopped);
}

/// Once `gate` is open: 32 MiB. On an agent's worker, the first to create the file `mark`
/// stops itself halfway through sending them, and then creates `mark` + ".stopped"; the others
/// answer after that, behind it.
std::vector<char> answer_or_stall(const std::string& gate, const std::string& mark) {
  const std::string stopped = mark + ".stopped";
  if (at_gate(gate, 0) != 0 && close(open(mark.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600)) == 0) {
    return stall_halfway(stopped);
  }
  wait_for_file(stopped);
  return std::vector<char>(32u << 20, 'y');
}

// A worker stopped from outside (a debugger, SIGSTOP) halfway through a large answer that its
// agent streams must not hold up what the agent's other workers answer (run with 2 workers per
// rank by mpi.two_workers_per_rank).
TEST(Cluster, LargeAnswerOfAStoppedWorkerHoldsUpNoOtherWorker) {
  Pool pool(*the_cluster);
  if (ranks() == 1 || pool.size() < 2 * static_cast<unsigned>(ranks()) || tasks_time_out) {
    GTEST_SKIP() << "needs an agent with two workers, and no task_timeout (which would end the "
                    "stopped worker)";
  }
  Gate mark;  // created by the worker that stalls; mark + ".stopped" once it has
  const std::string stopped = mark.path() + ".stopped";
  // However the test ends: the stopped worker's answer never comes, and its mark goes.
  struct End {
    Pool& pool;
    const std::string& stopped;
    ~End() {
      pool.terminate();
      std::remove(stopped.c_str());
    }
  } end{pool, stopped};
  {
    Gate gate;
    std::vector<std::future<std::vector<char>>> answers;
    for (unsigned k = 0; k < pool.size(); ++k) {
      answers.push_back(pool.submit(answer_or_stall, gate.path(), mark.path()));
    }
    gate.open();
    ASSERT_NO_THROW(wait_for_file(stopped)) << "no worker stopped";
    const auto give_up = std::chrono::steady_clock::now() + 60s;  // a hang guard
    const auto answered = [&] {
      return std::count_if(answers.begin(), answers.end(),
                           [](auto& a) { return a.wait_for(0s) == std::future_status::ready; });
    };
    while (answered() < pool.size() - 1 && std::chrono::steady_clock::now() < give_up) {
      sched_yield();
    }
    ASSERT_EQ(answered(), pool.size() - 1) << "answers held up by the stopped worker's";
    for (auto& a : answers) {
      if (a.wait_for(0s) == std::future_status::ready) {
        EXPECT_EQ(a.get().size(), 32u << 20);
      }
    }
  }
}

// A Pool terminated while an agent's worker is halfway through sending a large answer (stopped
// there): what was still to come of it must not reach the next Pool as messages of its own.
TEST(Cluster, APoolTerminatedWhileAnAnswerIsHalfSentLeavesTheNextPoolWhole) {
  if (ranks() == 1) GTEST_SKIP() << "no agent";
  {
    Pool first(*the_cluster);
    Gate stopped;  // the file the stopped worker creates
    Gate gate;     // one task per worker: none ends before all are submitted
    std::vector<std::future<std::vector<char>>> answers;
    for (unsigned k = 0; k < first.size(); ++k) {
      answers.push_back(first.submit(half_sent_answer, gate.path(), stopped.path()));
    }
    gate.open();
    ASSERT_NO_THROW(wait_for_file(stopped.path())) << "no worker stopped";
    first.terminate();  // kills the stopped worker: its agent ends the answer it was sending
  }
  Pool second(*the_cluster);
  expect_large_echoes(second);
}

TEST(Cluster, ATaskPastItsTimeoutGivesTaskTimeout) {
  every_worker_fails<TaskTimeout>(4, [](const TaskTimeout&) {});
}

TEST(Cluster, QueuedTasksCompleteWhenAWorkerDies) {
  Pool pool(*the_cluster);
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 40; ++i) futures.push_back(pool.submit(misbehave, i % 8 == 2 ? 2 : 0));
  int lost = 0;
  for (int i = 0; i < 40; ++i) {
    if (i % 8 == 2) {
      EXPECT_THROW(futures[static_cast<std::size_t>(i)].get(), WorkerLost);
      ++lost;
    } else {
      EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), 0);
    }
  }
  EXPECT_EQ(lost, 5);
}

TEST(Cluster, OnePoolAtATime) {
  auto first = std::make_unique<Pool>(*the_cluster);
  EXPECT_THROW(Pool second(*the_cluster), multicore::Error);
  first.reset();
  Pool third(*the_cluster);
  EXPECT_EQ(third.call(square, 3L), 9);
}

// A process the application forks on rank 0 (which then returns from main, or exits) destroys
// its copies of the Pool and the Cluster: they are snapshots, and must leave the parent's MPI
// job, agents and workers alone.
TEST(Cluster, AForkedChildDestroyingItsCopiesLeavesTheClusterAlone) {
  auto pool = std::make_unique<Pool>(*the_cluster);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    pool.reset();
    the_cluster->~Cluster();  // as returning from main() would
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::set<int> seen;  // every rank's worker still answers
  for (auto& f : one_per_worker(*pool, 0)) seen.insert(f.get());
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(ranks()));
  pool.reset();
  Pool next(*the_cluster);
  EXPECT_EQ(next.call(square, 4L), 16);
}

TEST(Cluster, StatsNameTheProcessAndRankOfEachWorker) {
  Pool pool(*the_cluster);
  EXPECT_EQ(pool.call(square, 3L), 9);
  const multicore::PoolStats s = pool.stats();
  ASSERT_EQ(s.workers.size(), pool.size());
  EXPECT_EQ(s.done, 1u);
  unsigned remote = 0;
  for (const multicore::WorkerStats& w : s.workers) {
    EXPECT_GT(w.pid, 0) << "worker " << w.index;
    if (w.where.rfind("rank ", 0) == 0) ++remote;
  }
  const unsigned per_rank = pool.size() / static_cast<unsigned>(ranks());
  EXPECT_EQ(remote, pool.size() - per_rank);  // all but rank 0's
}

/// Runs until `stop` says so, spinning (how = 0) or asleep in wait_for (how = 1); returns the
/// rank of the worker's node. How = 2 ignores the stop (until a 60 s hang guard).
int until_stopped(multicore::StopToken stop, int how) {
  const auto give_up = std::chrono::steady_clock::now() + 60s;  // a hang guard, never reached
  while (std::chrono::steady_clock::now() < give_up) {
    if (how == 0 && stop.stop_requested()) return launched_rank;
    if (how == 1 && stop.wait_for(60s)) return launched_rank;
    sched_yield();
  }
  return -1;
}

/// Waits until every worker of `pool` runs a task's code (a hang guard fails the test).
void until_all_running(Pool& pool) {
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  const auto all_started = [&] {
    const multicore::PoolStats s = pool.stats();
    return std::all_of(s.workers.begin(), s.workers.end(),
                       [](const multicore::WorkerStats& w) { return w.current_task > 0ns; });
  };
  while (!all_started()) {
    ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "the tasks never all started";
    sched_yield();
  }
}

// Rank 0 relays each stop to the agents: a token passed to a task on another rank reads stopped
// there too, whether the task polls it or waits on it.
TEST(Cluster, AStopReachesRunningTasksOnEveryRank) {
  for (int how : {0, 1}) {
    SCOPED_TRACE(how == 0 ? "stop_requested" : "wait_for");
    Pool pool(*the_cluster);
    multicore::StopSource stop;
    std::vector<std::future<int>> running;
    for (unsigned k = 0; k < pool.size(); ++k) {
      running.push_back(pool.submit(until_stopped, stop.get_token(), how));
    }
    until_all_running(pool);
    stop.request_stop();
    std::set<int> seen;
    for (auto& f : running) seen.insert(f.get());
    std::set<int> all;
    for (int r = 0; r < ranks(); ++r) all.insert(r);
    EXPECT_EQ(seen, all);
  }
}

// Tasks queued behind running ones, on every rank, are cancelled; tasks that ignore the stop
// are killed after the grace and get Cancelled too; every rank's worker is replaced and works.
TEST(Cluster, AStopCancelsQueuedTasksAndItsGraceKillsOnEveryRank) {
  Pool pool(*the_cluster);
  multicore::StopSource stop;
  std::vector<std::future<int>> running, queued;
  for (unsigned k = 0; k < pool.size(); ++k) {
    running.push_back(pool.submit(until_stopped, stop.get_token(), 2));
  }
  until_all_running(pool);
  for (unsigned k = 0; k < pool.size(); ++k) {
    queued.push_back(pool.submit(until_stopped, stop.get_token(), 0));
  }
  stop.request_stop(100ms);
  for (auto& f : queued) EXPECT_THROW(f.get(), multicore::Cancelled);
  for (auto& f : running) EXPECT_THROW(f.get(), multicore::Cancelled);
  // Every worker was killed: wait for its replacement, then each one answers.
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  const auto all_replaced = [&] {
    const multicore::PoolStats s = pool.stats();
    return std::all_of(s.workers.begin(), s.workers.end(), [](const multicore::WorkerStats& w) {
      return w.replaced == 1 && w.pid != 0;
    });
  };
  while (!all_replaced()) {
    ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "the workers were not all replaced";
    sched_yield();
  }
  EXPECT_EQ(pool.stats().replaced.cut_off, pool.size());
  EXPECT_EQ(ranks_seen(pool, rank_of_node), every_rank());
}

// A token of a source made after the pool, reused slot and all: a stop of the first source does
// not stop the second one's tasks on other ranks.
TEST(Cluster, AStoppedSourceDoesNotStopTheNextOneInItsSlot) {
  Pool pool(*the_cluster);
  {
    multicore::StopSource first;
    first.request_stop();
  }
  multicore::StopSource second;  // likely the same slot, a generation on
  std::vector<std::future<int>> running;
  for (unsigned k = 0; k < pool.size(); ++k) {
    running.push_back(pool.submit(until_stopped, second.get_token(), 0));
  }
  until_all_running(pool);  // none of them returned at once: they all still run
  second.request_stop();
  for (auto& f : running) EXPECT_GE(f.get(), 0);
}

/// Prints a line to stdout and one to stderr, naming its pid and rank; returns its pid.
int print_lines(const std::string& gate) {
  at_gate(gate, 0);
  std::printf("out of pid %d on rank %d\n", static_cast<int>(getpid()), launched_rank);
  std::fflush(stdout);
  std::fprintf(stderr, "err of pid %d on rank %d\n", static_cast<int>(getpid()), launched_rank);
  return static_cast<int>(getpid());
}

// Tagged output over MPI: what the workers of every rank print reaches on_worker_output on rank
// 0, line by line, with the index the Pool gives the worker that printed it.
TEST(Cluster, WorkersOfEveryRankPrintToTheCallbackOnRankZero) {
  Pool pool(*the_cluster);
  Gate gate;
  std::vector<std::future<int>> futures;
  for (unsigned k = 0; k < pool.size(); ++k)
    futures.push_back(pool.submit(print_lines, gate.path()));
  gate.open();
  std::set<int> pids;
  for (auto& f : futures) pids.insert(f.get());
  ASSERT_EQ(pids.size(), pool.size()) << "the tasks did not run one per worker";
  const multicore::PoolStats stats = pool.stats();
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    std::size_t seen = 0;
    {
      std::lock_guard lock(printed_mutex);
      for (const PrintedLine& line : printed) {
        ASSERT_LT(line.worker, pool.size());
        const int pid = stats.workers[line.worker].pid;
        const auto rank = line.worker / (pool.size() / static_cast<unsigned>(ranks()));
        const std::string expected =
            std::string(line.stream == multicore::WorkerStream::out ? "out of pid "
                                                                    : "err of pid ") +
            std::to_string(pid) + " on rank " + std::to_string(rank);
        if (line.text == expected) ++seen;
      }
    }
    if (seen == 2 * pool.size()) break;
    ASSERT_LT(std::chrono::steady_clock::now(), give_up) << seen << " of the lines arrived";
    sched_yield();
  }
  std::lock_guard lock(printed_mutex);
  printed.clear();
}

// As on one machine, the callback cannot use its own pool, whichever rank printed the line: that
// fails at once (the lines of every rank wait for the callback, on rank 0's output thread).
TEST(Cluster, UsingThePoolFromItsOutputCallbackFailsAtOnceForLinesOfEveryRank) {
  Pool pool(*the_cluster);
  pool_in_callback.store(&pool);
  Gate gate;
  std::vector<std::future<int>> futures;
  for (unsigned k = 0; k < pool.size(); ++k)
    futures.push_back(pool.submit(print_lines, gate.path()));
  gate.open();
  for (auto& f : futures) f.get();
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    {
      std::lock_guard lock(printed_mutex);
      if (callback_errors.size() >= 2 * pool.size()) break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "the lines did not all arrive";
    sched_yield();
  }
  pool_in_callback.store(nullptr);
  std::lock_guard lock(printed_mutex);
  std::set<int> ranks_printed;
  for (const PrintedLine& line : printed) {
    ranks_printed.insert(
        static_cast<int>(line.worker / (pool.size() / static_cast<unsigned>(ranks()))));
  }
  EXPECT_EQ(ranks_printed.size(), static_cast<std::size_t>(ranks()));
  for (const std::string& error : callback_errors) {
    EXPECT_NE(error.find("cannot be used from its on_worker_output callback"), std::string::npos)
        << "[" << error << "]";
  }
  printed.clear();
  callback_errors.clear();
}

// Whatever rank a worker died on, its WorkerLost carries the end of its stderr.
TEST(Cluster, WorkerLostCarriesTheEndOfTheStderrOfAWorkerOnAnyRank) {
  Pool pool(*the_cluster);
  std::set<std::string> tails;
  for (auto& f : one_per_worker(pool, 5)) {
    try {
      f.get();
      ADD_FAILURE() << "no error";
    } catch (const WorkerLost& e) {
      tails.insert(e.output_tail());
    }
  }
  std::set<std::string> expected;
  for (int r = 0; r < ranks(); ++r) expected.insert("dying on rank " + std::to_string(r) + "\n");
  EXPECT_EQ(tails, expected);
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* r = std::getenv("OMPI_COMM_WORLD_RANK")) launched_rank = std::atoi(r);
  if (launched_rank < 0) launched_rank = 0;  // a singleton, started without mpirun
  // One worker per rank unless told (mpi.two_workers_per_rank): some tests count on it.
  const char* workers = std::getenv("MULTICORE_TEST_WORKERS_PER_RANK");
  const unsigned per_rank = workers != nullptr ? static_cast<unsigned>(std::atoi(workers)) : 1;
  tasks_time_out = std::getenv("MULTICORE_TEST_NO_TASK_TIMEOUT") == nullptr;
  const char* job = std::getenv("OMPI_MCA_ess_base_jobid");
  start_fails_file = std::string("/tmp/multicore-cluster-start-fails-") +
                     (job != nullptr ? job : std::to_string(getpid()));
  oom_cgroup =
      std::string("multicore-test-oom-") + (job != nullptr ? job : std::to_string(getpid()));
  multicore::mpi::Cluster cluster(
      argc, argv,
      {.workers_per_rank = per_rank,
       .on_worker_start = start_worker,
       .task_timeout = tasks_time_out ? std::chrono::seconds(2) : std::chrono::seconds(0),
       .on_worker_output = record_line});
  the_cluster = &cluster;  // ranks other than 0 never get here
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
