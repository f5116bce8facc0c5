// SPDX-License-Identifier: MIT
// The seed library's "render 100 items" usage: a Task of trivial runs, then ranges() over
// items that the workers read from a global instead of receiving them.
#include <chrono>
#include <iomanip>
#include <iostream>
#include <multicore/multicore.hpp>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

// Filled before the Pool is made, so every worker (a fork of this program) already has it.
const std::vector<int> items = [] {
  std::vector<int> v(100);
  std::iota(v.begin(), v.end(), 0);
  return v;
}();

std::string as_string(int item) { return std::to_string(item); }

std::string expensive_as_string(int item) {
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return std::to_string(item);
}

// Gets indices, not items: sending the items would cost copies the workers do not need.
std::string multi_expensive_as_string(std::size_t begin, std::size_t end) {
  std::string out;
  for (std::size_t i = begin; i < end; ++i)
    out += (i > begin ? "," : "") + expensive_as_string(items[i]);
  return out;
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

int main() {
  multicore::Pool pool;

  // Example 1: trivial (and slightly pointless) usage.
  multicore::Task<std::string> trivial(pool);
  for (int i = 0; i < 20; ++i) trivial.run(as_string, i);
  std::cout << join(trivial.get()) << '\n';

  // Example 2: split the job with ranges(): one contiguous piece per usable core. Pieces that
  // are too small cost more in overhead than they gain.
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const std::string sequential = multi_expensive_as_string(0, items.size());
  const auto t1 = clock::now();
  multicore::Task<std::string> task(pool);
  for (auto [begin, end] : multicore::ranges(items.size()))
    task.run(multi_expensive_as_string, begin, end);
  std::string parallel = join(task.get());
  const auto t2 = clock::now();
  std::cout << parallel << '\n';

  const std::chrono::duration<double> seq = t1 - t0, par = t2 - t1;
  std::erase(parallel, ' ');  // without the spaces join() added, it is the sequential result
  std::cout << std::fixed << std::setprecision(2) << "100 items, 10 ms each: sequential "
            << seq.count() << " s, parallel " << par.count() << " s in "
            << multicore::ranges(items.size()).size() << " tasks, "
            << (parallel == sequential ? "same result\n" : "DIFFERENT RESULT\n");
  return parallel == sequential ? 0 : 1;
}
