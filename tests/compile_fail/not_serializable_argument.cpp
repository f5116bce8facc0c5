// expect: multicore: this type cannot be sent to a worker process: make it trivially copyable
// SPDX-License-Identifier: MIT
// Must not compile: a type that is neither trivially copyable nor serializable.
#include <memory>
#include <multicore/detail/serialize/serialize.hpp>
#include <vector>

struct Handle {
  std::unique_ptr<int> resource;  // not trivially copyable, no serialize(), no Codec
};

int main() {
  multicore::detail::check_argument<1, std::vector<int>>();  // fine
  multicore::detail::check_argument<2, Handle>();
}
