// expect: multicore: this type cannot be sent to a worker process: make it trivially copyable
// SPDX-License-Identifier: MIT
// Must not compile: a standard container is only as sendable as what it holds.
#include <map>
#include <memory>
#include <multicore/detail/serialize/serialize.hpp>
#include <string>

struct Handle {
  std::unique_ptr<int> resource;
};

int main() { multicore::detail::check_argument<1, std::map<std::string, Handle>>(); }
