// expect: multicore: argument is a std::reference_wrapper \(std::ref, std::cref\): an address
// SPDX-License-Identifier: MIT
// Must not compile: std::ref/std::cref are trivially copyable, but they carry an address, which
// the worker would read in its own memory (a stale value, or a crash).
#include <functional>
#include <multicore/detail/serialize/serialize.hpp>

int main() {
  multicore::detail::check_argument<1, int>();  // fine
  multicore::detail::check_argument<2, std::reference_wrapper<const int>>();
}
