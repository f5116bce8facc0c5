// SPDX-License-Identifier: MIT
// The byte payloads the echo benchmarks send, and the cheap check that one came back whole.
#pragma once

#include <cstddef>
#include <vector>

/// n bytes of a known pattern.
inline std::vector<char> make_payload(std::size_t n) {
  std::vector<char> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<char>(i * 131);
  return v;
}

/// Same size and same first and last byte: an echo that came back (not a full compare, which
/// would dominate the time of large payloads).
inline bool same_ends(const std::vector<char>& a, const std::vector<char>& b) {
  return a.size() == b.size() && (a.empty() || (a.front() == b.front() && a.back() == b.back()));
}
