// expect: multicore: std::string_view and std::span point into the caller's memory
// SPDX-License-Identifier: MIT
// Must not compile: a std::string_view argument would point into the caller's memory.
#include <multicore/detail/serialize/serialize.hpp>
#include <string_view>

int main() {
  multicore::detail::check_argument<1, std::string>();  // fine
  multicore::detail::check_argument<2, std::string_view>();
}
