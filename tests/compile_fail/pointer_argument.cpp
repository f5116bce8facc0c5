// expect: multicore: argument is a raw pointer. its address means nothing in another process
// SPDX-License-Identifier: MIT
// Must not compile: a raw pointer argument cannot cross a process boundary.
#include <multicore/detail/serialize/serialize.hpp>

int main() {
  multicore::detail::check_argument<1, double>();  // fine
  multicore::detail::check_argument<2, int*>();
}
