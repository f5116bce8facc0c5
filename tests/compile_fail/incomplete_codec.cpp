// expect: multicore: multicore::Codec<T> is specialised but lacks static void encode
// SPDX-License-Identifier: MIT
// Must not compile: a Codec without a usable decode() is reported, not silently ignored.
#include <multicore/codec.hpp>
#include <multicore/detail/serialize/serialize.hpp>

struct Point {
  int x;
  int y;
};

template <>
struct multicore::Codec<Point> {
  static void encode(multicore::Writer& out, const Point& p) { out.write(&p, sizeof p); }
  static Point read(multicore::Reader& in);  // should be named decode
};

int main() { multicore::detail::check_argument<1, Point>(); }
