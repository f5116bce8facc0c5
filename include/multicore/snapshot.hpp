// SPDX-License-Identifier: MIT
// Keeping large buffers that tasks do not need out of the snapshot pools fork their workers from.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>

#include "errors.hpp"

namespace multicore {

namespace detail {

/// Elements in one block of memory that outlives the call: a span, or a container as an lvalue.
template <class R>
concept buffer = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
    std::ranges::borrowed_range<R>;

/// The elements' own bytes (madvise takes them as they are: constness does not matter to it).
template <buffer R>
std::span<std::byte> bytes_of(R&& elements) noexcept {
  const void* data = std::ranges::data(elements);
  return {static_cast<std::byte*>(const_cast<void*>(data)),
          std::ranges::size(elements) * sizeof(std::ranges::range_value_t<R>)};
}

inline std::uintptr_t page_size() noexcept {
  static const auto size = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  return size;
}

/// madvise(`advice`) on the whole pages inside [p, p + bytes); returns them (maybe none).
inline std::span<std::byte> advise_whole_pages(void* p, std::size_t bytes, int advice,
                                               const char* operation) {
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  if (p == nullptr && bytes != 0) {
    throw std::invalid_argument(std::string("multicore: ") + operation + ": null pointer with " +
                                std::to_string(bytes) + " bytes");
  }
  if (bytes > std::numeric_limits<std::uintptr_t>::max() - begin) {
    throw std::invalid_argument(std::string("multicore: ") + operation + ": " +
                                std::to_string(bytes) + " bytes from " + std::to_string(begin) +
                                " wrap around the address space");
  }
  const std::uintptr_t page = page_size();
  const std::uintptr_t first = (begin + page - 1) / page * page;  // no overflow: see above
  const std::uintptr_t last = (begin + bytes) / page * page;
  if (first >= last) return {};
  auto* start = reinterpret_cast<std::byte*>(first);
  const std::size_t length = last - first;
  if (madvise(start, length, advice) != 0) throw SystemError(operation, errno);
  return {start, length};
}

}  // namespace detail

/// Keeps the memory of [p, p + bytes) out of every process forked from now on: the fork server
/// of a Pool made after this call and its workers (replacements included), and forks of your own.
/// Then, while such a pool lives, your process writes those pages without a copy-on-write fault,
/// and the memory comes back as soon as your process frees it (see README, "Fork semantics").
///
///     std::vector<double> scratch(n);                   // only this process uses it
///     multicore::keep_out_of_workers(scratch);          // before making the pool
///     multicore::Pool pool;
///
/// Only whole pages can be left out: the ones inside the range. A partial page at either end
/// stays in the snapshot (it may hold other data); the returned span is what was left out
/// (empty if the range holds no whole page). Allocate with ParentOnlyAllocator to leave out all
/// of a buffer.
///
/// The pages are NOT MAPPED in those processes: a task that touches them kills its worker
/// (SIGSEGV: the task fails with WorkerLost), or, if the worker has since mapped something else
/// at that address, reads that. Never let a task reach such memory (a pointer or a global).
///
/// Call it before making the pool: a pool made earlier already holds the pages (its fork server
/// was forked then, and forks its replacement workers), so for that pool nothing changes.
/// The exclusion belongs to the pages, not to your object, until they are unmapped: a large
/// block from glibc's malloc is unmapped by free(), but memory an allocator keeps and hands out
/// again stays excluded; call keep_in_workers() on it before freeing it. A vector that grows
/// moves to memory that is not excluded.
///
/// Throws std::invalid_argument for a null `p` with `bytes` > 0 or a range that wraps around
/// the address space, and multicore::SystemError (with errno) if the kernel refuses: ENOMEM
/// when part of the range is not mapped. Thread-safe.
inline std::span<std::byte> keep_out_of_workers(void* p, std::size_t bytes) {
  return detail::advise_whole_pages(p, bytes, MADV_DONTFORK, "madvise(MADV_DONTFORK)");
}

/// keep_out_of_workers() over the elements of a contiguous container (an lvalue) or a span: their
/// own bytes, not memory they point to.
template <detail::buffer R>
std::span<std::byte> keep_out_of_workers(R&& elements) {
  const std::span<std::byte> bytes = detail::bytes_of(elements);
  return keep_out_of_workers(bytes.data(), bytes.size());
}

/// Undoes keep_out_of_workers() for the whole pages inside [p, p + bytes): processes forked from
/// now on get them again. Same errors; returns the pages it applied to.
inline std::span<std::byte> keep_in_workers(void* p, std::size_t bytes) {
  return detail::advise_whole_pages(p, bytes, MADV_DOFORK, "madvise(MADV_DOFORK)");
}

template <detail::buffer R>
std::span<std::byte> keep_in_workers(R&& elements) {
  const std::span<std::byte> bytes = detail::bytes_of(elements);
  return keep_in_workers(bytes.data(), bytes.size());
}

/// An allocator whose memory is never in a fork's snapshot: each allocation is its own mapping
/// of whole pages, keep_out_of_workers() from the start, and unmapped (given back at once, also
/// while a pool lives) when deallocated.
///
///     std::vector<double, multicore::ParentOnlyAllocator<double>> scratch(n);
///
/// For large buffers only your process uses: each allocation takes at least a page and a system
/// call. Tasks must not touch it (see keep_out_of_workers()). allocate() throws std::bad_alloc
/// when the memory cannot be mapped, multicore::SystemError if it cannot be left out. Stateless:
/// all instances are equal.
template <class T>
class ParentOnlyAllocator {
 public:
  using value_type = T;

  ParentOnlyAllocator() noexcept = default;
  template <class U>
  ParentOnlyAllocator(const ParentOnlyAllocator<U>& /*other*/) noexcept {}  // NOLINT: rebinding

  T* allocate(std::size_t n) {
    static_assert(alignof(T) <= 4096, "multicore: ParentOnlyAllocator aligns to a page at most");
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    const std::size_t bytes = length(n);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    if (madvise(p, bytes, MADV_DONTFORK) != 0) {
      const int err = errno;
      munmap(p, bytes);
      throw SystemError("madvise(MADV_DONTFORK)", err);
    }
    return static_cast<T*>(p);
  }

  void deallocate(T* p, std::size_t n) noexcept { munmap(p, length(n)); }

  template <class U>
  bool operator==(const ParentOnlyAllocator<U>& /*other*/) const noexcept {
    return true;
  }

 private:
  static std::size_t length(std::size_t n) noexcept {
    return n == 0 ? 1 : n * sizeof(T);  // mmap refuses 0 bytes; allocate(0) must still succeed
  }
};

}  // namespace multicore
