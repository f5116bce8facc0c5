// expect: multicore: std::string_view and std::span point into the worker's memory
// SPDX-License-Identifier: MIT
// Must not compile: a function returning std::span would hand back a view of worker memory.
#include <multicore/detail/serialize/serialize.hpp>
#include <span>

int main() { multicore::detail::check_result<std::span<const int>>(); }
