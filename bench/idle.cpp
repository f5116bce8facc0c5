// SPDX-License-Identifier: MIT
// Idle cost: CPU seconds per second of wall time used by an idle pool, after a burst of work
// (so spin budgets are at their largest): the parent (getrusage RUSAGE_SELF: the collector
// thread, as the benchmark thread sleeps), the workers and the fork server (/proc/<pid>/stat
// utime + stime, 10 ms resolution). Expected: all about 0, every process blocked on a futex.
//
// Knob (environment): MULTICORE_BENCH_IDLE_SECONDS (default 2).
#include <benchmark/benchmark.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "baselines.hpp"

namespace {

struct ProcStat {
  int ppid = 0;
  double cpu_seconds = 0;  // utime + stime
  bool ok = false;
};

ProcStat read_stat(int pid) {
  ProcStat s;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return s;
  const auto close = line.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return s;
  std::istringstream fields(line.substr(close + 2));
  std::vector<std::string> f;
  for (std::string x; fields >> x;) f.push_back(x);
  if (f.size() < 13) return s;  // f[0] is field 3 (state): ppid is f[1], utime f[11], stime f[12]
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  s.ppid = std::stoi(f[1]);
  s.cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) / tick;
  s.ok = true;
  return s;
}

/// Our direct children: the pool's fork server (the workers are its children).
std::vector<int> children() {
  std::vector<int> pids;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return pids;
  const int self = getpid();
  while (const dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    const ProcStat s = read_stat(static_cast<int>(pid));
    if (s.ok && s.ppid == self) pids.push_back(static_cast<int>(pid));
  }
  closedir(dir);
  return pids;
}

double self_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  const auto secs = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return secs(u.ru_utime) + secs(u.ru_stime);
}

double cpu_seconds(const std::vector<int>& pids) {
  double sum = 0;
  for (int pid : pids) sum += read_stat(pid).cpu_seconds;
  return sum;
}

/// Worker pids, by asking each worker for its getpid(): size() slow tasks at once land on
/// size() different workers (the pool sends each to the least-loaded one).
std::vector<int> worker_pids(multicore::Pool& pool) {
  std::set<int> pids;
  const auto whoami = [] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return static_cast<int>(getpid());
  };
  for (int round = 0; round < 20 && pids.size() < pool.size(); ++round) {
    std::vector<std::future<int>> futures;
    for (unsigned i = 0; i < pool.size(); ++i) futures.push_back(pool.submit(whoami));
    for (auto& f : futures) pids.insert(f.get());
  }
  return {pids.begin(), pids.end()};
}

void BM_IdleCpu(benchmark::State& state) {
  const auto idle = std::chrono::seconds(bench::env_long("MULTICORE_BENCH_IDLE_SECONDS", 2));
  multicore::Pool pool;
  const std::vector<int> workers = worker_pids(pool);
  if (workers.size() != pool.size()) {
    state.SkipWithError("could not find every worker's pid");
    return;
  }
  std::vector<int> fork_server = children();
  // A burst of round trips: every spin budget grows to its maximum.
  for (int i = 0; i < 2000; ++i) benchmark::DoNotOptimize(pool.submit(bench::trivial, i).get());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let the spins run out

  double parent = 0;
  double worker = 0;
  double server = 0;
  double wall = 0;
  for (auto _ : state) {
    const double p0 = self_cpu_seconds();
    const double w0 = cpu_seconds(workers);
    const double s0 = cpu_seconds(fork_server);
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(idle);
    parent += self_cpu_seconds() - p0;
    worker += cpu_seconds(workers) - w0;
    server += cpu_seconds(fork_server) - s0;
    wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  state.counters["parent_cpu_per_s"] = parent / wall;
  state.counters["workers_cpu_per_s"] = worker / wall;
  state.counters["fork_server_cpu_per_s"] = server / wall;
  state.counters["total_cpu_per_s"] = (parent + worker + server) / wall;
  state.counters["workers"] = static_cast<double>(workers.size());
  // No SetItemsProcessed: nothing is processed; the counters above are the figures.
}
BENCHMARK(BM_IdleCpu)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
