// SPDX-License-Identifier: MIT
// Consumer check (find_package): the umbrella header compiles, the target links on its own, and a
// task really runs in a worker process.
#include <unistd.h>

#include <cstdio>
#include <multicore/multicore.hpp>

int square(int x) { return x * x; }

int main() {
  multicore::Pool pool({.workers = 2});
  const int result = pool.submit(square, 12).get();
  const bool elsewhere = pool.submit([] { return getpid(); }).get() != getpid();
  std::printf("square(12) = %d in a worker process: %s\n", result, elsewhere ? "yes" : "no");
  return result == 144 && elsewhere ? 0 : 1;
}
