// expect: multicore: the function returns a raw pointer. its address means nothing
// SPDX-License-Identifier: MIT
// Must not compile: a pointer result would point into the worker's memory.
#include <multicore/detail/serialize/serialize.hpp>

int main() {
  multicore::detail::check_result<void>();  // fine
  multicore::detail::check_result<const char*>();
}
