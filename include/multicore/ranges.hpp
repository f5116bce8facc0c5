// SPDX-License-Identifier: MIT
// ranges(): cut [0, n) into balanced contiguous pieces, one task's worth each.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "multicore/system.hpp"

namespace multicore {

/// Splits the indices [0, n) into contiguous half-open pieces [begin, end), in order, that
/// cover every index exactly once. There are `min(n, parts)` pieces, none of them empty; their
/// sizes differ by at most one, larger pieces first (`ranges(10, 4)` gives [0,3) [3,6) [6,8)
/// [8,10)). `parts == 0` means `usable_cores()`; `n == 0` gives an empty vector.
///
/// Send indices, not the items: the workers are forks of the caller and already see them.
///
///     multicore::Task<std::string> task(pool);
///     for (auto [begin, end] : multicore::ranges(items.size())) task.run(render, begin, end);
///     std::vector<std::string> pieces = task.get();
///
/// Thread-safe. Throws only what allocating the result throws (`std::bad_alloc`).
inline std::vector<std::pair<std::size_t, std::size_t>> ranges(std::size_t n,
                                                               std::size_t parts = 0) {
  if (parts == 0) parts = usable_cores();
  if (parts > n) parts = n;
  std::vector<std::pair<std::size_t, std::size_t>> pieces;
  if (parts == 0) return pieces;
  pieces.reserve(parts);
  const std::size_t size = n / parts;
  const std::size_t larger = n % parts;  // the first `larger` pieces get one extra index
  std::size_t begin = 0;
  for (std::size_t i = 0; i < parts; ++i) {
    const std::size_t end = begin + size + (i < larger ? 1 : 0);
    pieces.emplace_back(begin, end);
    begin = end;
  }
  return pieces;
}

}  // namespace multicore
