// SPDX-License-Identifier: MIT
// Consumer check (find_package): the umbrella header compiles and the target links on its own.
#include <cstdio>
#include <multicore/multicore.hpp>

int main() {
  const auto parts = multicore::ranges(10, 2);
  for (const auto& [begin, end] : parts) std::printf("[%zu, %zu) ", begin, end);
  std::printf("\n");
  return parts.size() == 2 ? 0 : 1;
}
