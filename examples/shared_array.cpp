// SPDX-License-Identifier: MIT
// SharedArray: an input the parent fills after the pool was made, read-only in the tasks, and
// an output the tasks write in place. Only handles cross; no element is copied.
#include <cmath>
#include <cstddef>
#include <future>
#include <iomanip>
#include <iostream>
#include <multicore/multicore.hpp>
#include <vector>

using multicore::SharedArray;

// One task's piece: y[i] = sqrt(x[i]) for i in [begin, end).
void square_roots(std::size_t begin, std::size_t end, SharedArray<const double> x,
                  SharedArray<double> y) {
  for (std::size_t i = begin; i < end; ++i) y[i] = std::sqrt(x[i]);
}

// The same work for map(): a function object whose members travel through its serialize()
// (a lambda capturing arrays is not trivially copyable, so it could not be sent).
struct Halve {
  SharedArray<double> y;
  double operator()(std::pair<std::size_t, std::size_t> piece) const {
    double sum = 0;
    for (std::size_t i = piece.first; i < piece.second; ++i) sum += (y[i] /= 2);
    return sum;  // small results still come back as values
  }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(y);
  }
};

int main() {
  multicore::Pool pool;
  constexpr std::size_t n = 1'000'000;

  // Made after the pool: the workers are not forks of this memory, they map it.
  SharedArray<double> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<double>(i) * static_cast<double>(i);
  SharedArray<double> y(n);

  std::vector<std::future<void>> done;
  for (auto [begin, end] : multicore::ranges(n))
    done.push_back(pool.submit(square_roots, begin, end, x.read_only(), y));
  for (auto& f : done) f.get();  // from here, y holds what the tasks wrote

  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) wrong += y[i] != static_cast<double>(i);
  std::cout << "y[i] = sqrt(x[i]) for " << n << " elements, " << wrong << " wrong\n";

  double sum = 0;
  for (double part : pool.map(Halve{y}, multicore::ranges(n, 16))) sum += part;
  std::cout << std::fixed << std::setprecision(1) << "halved in place: y[999999] = " << y[n - 1]
            << ", sum " << sum << '\n';
  return wrong == 0 ? 0 : 1;
}
