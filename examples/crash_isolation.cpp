// SPDX-License-Identifier: MIT
// Crash isolation: tasks that segfault, abort or exit die alone. Their futures say how; every
// other task gets its result; the dead workers are replaced and the pool keeps its size.
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <future>
#include <iostream>
#include <multicore/multicore.hpp>
#include <set>
#include <thread>
#include <vector>

int risky(int x) {
  if (x == 3) std::raise(SIGSEGV);  // as a wild pointer would
  if (x == 5) std::abort();         // as a failed assert would
  if (x == 7) std::exit(3);         // as a library that "handles" errors by exiting would
  return x * 10;
}

int slow_pid(int) {  // long enough that a batch spreads over every worker
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return static_cast<int>(getpid());
}

int main() {
  multicore::Pool pool;
  std::vector<std::future<int>> results;
  for (int x = 0; x < 10; ++x) results.push_back(pool.submit(risky, x));

  int good = 0, lost = 0;
  for (std::size_t x = 0; x < results.size(); ++x) {
    std::cout << "risky(" << x << "): ";
    try {
      std::cout << results[x].get() << '\n';
      ++good;
    } catch (const multicore::WorkerLost& e) {  // signal() 0: it exited; exit_code() -1: killed
      std::cout << "WorkerLost, signal " << e.signal() << ", exit code " << e.exit_code() << "\n  "
                << e.what() << '\n';
      ++lost;
    }
  }

  // Still usable, and still full: a new batch spreads over pool.size() distinct processes.
  std::vector<std::future<int>> batch;
  for (unsigned i = 0; i < 4 * pool.size(); ++i) batch.push_back(pool.submit(slow_pid, 0));
  std::set<int> pids;
  for (auto& f : batch) pids.insert(f.get());
  std::cout << good << " results, " << lost << " lost workers; afterwards " << pids.size() << " of "
            << pool.size() << " workers answered\n";
  return good == 7 && lost == 3 ? 0 : 1;
}
