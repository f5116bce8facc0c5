// SPDX-License-Identifier: MIT
// Transparent huge pages for large buffers that are about to be filled.
#pragma once

#include <sys/mman.h>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <system_error>

#include "linkage.hpp"
#include "text_file.hpp"

namespace multicore::detail {

/// Size of a transparent huge page (2 MiB on x86-64), or 0 when the kernel has none.
MULTICORE_DECL std::size_t huge_page_bytes();

/// Asks the kernel to back the whole huge pages inside [data, data + bytes) with transparent
/// huge pages, for fresh memory about to be written in full (a received payload, an encoding
/// buffer). Faulting such memory in 4 KiB at a time costs more than filling it: 64 MiB took
/// 41 ms in 4 KiB faults against 17 ms, copy included, in huge pages on the 2-core VM this was
/// tuned on. Only buffers of several huge pages qualify, so small ones keep the system's policy.
/// A hint: with THP disabled, or on any error, the memory simply keeps ordinary pages.
inline void advise_huge_pages(void* data, std::size_t bytes) noexcept {
  constexpr std::size_t min_huge_pages = 4;
  const std::size_t page = huge_page_bytes();
  if (page == 0 || bytes < min_huge_pages * page) return;
  const auto start = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = (start + page - 1) & ~(page - 1);
  const std::uintptr_t last = (start + bytes) & ~(page - 1);
  if (first < last) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
}

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL std::size_t huge_page_bytes() {
  static const std::size_t bytes = [] {
    const auto text = read_text_file("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
    std::size_t value = 0;
    if (!text ||
        std::from_chars(text->data(), text->data() + text->size(), value).ec != std::errc{}) {
      return std::size_t{0};
    }
    return (value & (value - 1)) == 0 ? value : std::size_t{0};
  }();
  return bytes;
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
