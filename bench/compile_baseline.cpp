// SPDX-License-Identifier: MIT
// Issue 13's compile-time baseline: the README's first example (its first ```cpp block) written
// with std::async instead of multicore. bench/compare compiles both, alternately, at -O2 and
// reports the ratio. Not built by CMake: only compiled.
#include <algorithm>
#include <cstddef>
#include <future>
#include <iostream>
#include <numeric>
#include <vector>

long collatz_steps(long n) {
  long steps = 0;
  for (; n != 1; ++steps) n = n % 2 ? 3 * n + 1 : n / 2;
  return steps;
}

int main() {
  std::cout << std::async(std::launch::async, collatz_steps, 27).get() << '\n';
  std::vector<long> numbers(1'000'000);
  std::iota(numbers.begin(), numbers.end(), 1);
  // The map: one std::async per piece, results in input order.
  const std::size_t pieces = 8;
  std::vector<std::future<std::vector<long>>> parts;
  for (std::size_t p = 0; p < pieces; ++p) {
    parts.push_back(std::async(std::launch::async, [&numbers, p] {
      std::vector<long> out;
      const std::size_t n = numbers.size();
      for (std::size_t i = p * n / pieces; i < (p + 1) * n / pieces; ++i) {
        out.push_back(collatz_steps(numbers[i]));
      }
      return out;
    }));
  }
  long longest = 0;
  for (auto& part : parts) {
    for (long steps : part.get()) longest = std::max(longest, steps);
  }
  std::cout << longest << '\n';
}
