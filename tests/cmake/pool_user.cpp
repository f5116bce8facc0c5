// SPDX-License-Identifier: MIT
// A file that uses every part of the front end a program would: compiled with
// MULTICORE_SEPARATE_COMPILATION by the emit_check.compiled_part test, it must not compile any
// of the pool's machinery itself (that is in multicore::compiled). Compiled only, never run.
#include <multicore/multicore.hpp>
#include <string>
#include <vector>

int square(int x) { return x * x; }

int main() {
  multicore::Pool pool;
  multicore::StopSource stop;
  int total = pool.submit(square, 3).get() + pool.call(square, 4);
  total += pool.submit([](multicore::StopToken, int x) { return x; }, stop.get_token(), 5).get();
  for (int r : pool.map(square, std::vector<int>{1, 2, 3})) total += r;
  for (auto [i, r] : pool.map_unordered(square, std::vector<int>{1, 2})) total += r;
  multicore::Task<std::string> task(pool);
  task.run([](int x) { return std::to_string(x); }, 6);
  for (const std::string& s : task.get()) total += static_cast<int>(s.size());
  multicore::SharedArray<double> shared(8);
  total += static_cast<int>(shared.size()) + static_cast<int>(pool.stats().done);
  pool.shutdown();
  return total > 0 ? 0 : 1;
}
