// expect: multicore: this callable cannot be sent to a worker process
// SPDX-License-Identifier: MIT
// Must not compile: std::function cannot cross a process boundary.
#include <functional>
#include <multicore/detail/serialize/serialize.hpp>

int main() {
  auto lambda = [](int value) { return value + 1; };
  multicore::detail::check_callable<decltype(lambda)>();  // fine
  multicore::detail::check_callable<std::function<int(int)>>();
}
