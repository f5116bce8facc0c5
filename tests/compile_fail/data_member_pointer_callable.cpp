// expect: multicore: a pointer to a data member is not a callable multicore can send
// SPDX-License-Identifier: MIT
// Must not compile: a data member pointer would make the task return a reference into the
// worker's copy of the object.
#include <multicore/detail/serialize/serialize.hpp>

struct Point {
  int x;
  int norm() const { return x < 0 ? -x : x; }
};

int main() {
  multicore::detail::check_callable<decltype(&Point::norm)>();  // fine: a member function
  multicore::detail::check_callable<decltype(&Point::x)>();
}
