// SPDX-License-Identifier: MIT
// How many processes the kernel's out-of-memory killer has killed: what tells a worker it
// killed from one that anyone else killed with SIGKILL, which looks the same to waitpid().
#pragma once

#include <charconv>
#include <cstdint>
#include <string_view>

#include "linkage.hpp"
#include "text_file.hpp"

namespace multicore::detail {

/// Processes the out-of-memory killer has killed on this machine since boot, for the whole
/// system or for a memory cgroup's limit alike (/proc/vmstat's oom_kill, Linux 4.13); 0 where
/// the kernel does not say. Takes some 10 to 50 us: read as a worker starts and when one dies
/// of SIGKILL, never per task.
MULTICORE_DECL std::uint64_t oom_kills_so_far();

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL std::uint64_t oom_kills_so_far() {
  const auto text = read_text_file("/proc/vmstat");
  if (!text) return 0;
  constexpr std::string_view key = "\noom_kill ";
  const std::size_t at = text->find(key);
  if (at == std::string::npos) return 0;
  const char* first = text->data() + at + key.size();
  std::uint64_t kills = 0;
  std::from_chars(first, text->data() + text->size(), kills);
  return kills;
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
