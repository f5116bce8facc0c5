// expect: read-only|const-qualified|returns a const value
// SPDX-License-Identifier: MIT
// Must not compile: writing through a SharedArray<const T> (the input tasks must not change).
#include <multicore/shared_array.hpp>

int main() {
  multicore::SharedArray<double> out(4);
  multicore::SharedArray<const double> in = out.read_only();
  in[0] = 1.0;
}
