// SPDX-License-Identifier: MIT
// Timeouts: a task that hangs is failed with TaskTimeout after PoolOptions::task_timeout; its
// worker is killed and replaced, and the pool carries on.
#include <chrono>
#include <future>
#include <iomanip>
#include <iostream>
#include <multicore/multicore.hpp>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

int maybe_hang(int x) {
  if (x == 2) std::this_thread::sleep_for(1h);  // stands in for a deadlock or an endless loop
  return x * x;
}

int main() {
  multicore::Pool pool({.task_timeout = 500ms});
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::future<int>> results;
  for (int x = 0; x < 6; ++x) results.push_back(pool.submit(maybe_hang, x));

  std::cout << std::fixed << std::setprecision(2);
  for (std::size_t x = 0; x < results.size(); ++x) {
    std::cout << "maybe_hang(" << x << "): ";
    try {
      std::cout << results[x].get() << '\n';
    } catch (const multicore::TaskTimeout& e) {
      const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
      std::cout << "TaskTimeout after " << waited.count() << " s\n  " << e.what() << '\n';
    }
  }

  // The replacement worker is in service: the pool runs new work as before.
  const int sum = pool.submit(maybe_hang, 3).get() + pool.submit(maybe_hang, 4).get() +
                  pool.submit(maybe_hang, 5).get();
  std::cout << "afterwards, 3*3 + 4*4 + 5*5 = " << sum << '\n';
}
