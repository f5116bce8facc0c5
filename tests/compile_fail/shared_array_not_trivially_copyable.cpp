// expect: multicore: SharedArray<T> needs a trivially copyable T
// SPDX-License-Identifier: MIT
// Must not compile: a SharedArray of a type whose bytes cannot be shared as they are.
#include <multicore/shared_array.hpp>
#include <string>

int main() { multicore::SharedArray<std::string> strings(4); }
