// expect: multicore: this type cannot be sent to a worker process
// SPDX-License-Identifier: MIT
// Must not compile: a std::reference_wrapper inside a container is an address all the same.
#include <functional>
#include <multicore/detail/serialize/serialize.hpp>
#include <vector>

int main() { multicore::detail::check_argument<1, std::vector<std::reference_wrapper<int>>>(); }
