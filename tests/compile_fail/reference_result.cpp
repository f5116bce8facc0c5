// expect: multicore: the function returns a reference. return a value instead
// SPDX-License-Identifier: MIT
// Must not compile: a reference result would refer to an object in the worker.
#include <multicore/detail/serialize/serialize.hpp>
#include <string>

int main() {
  multicore::detail::check_result<std::string>();  // fine
  multicore::detail::check_result<const std::string&>();
}
