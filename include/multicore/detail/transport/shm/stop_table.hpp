// SPDX-License-Identifier: MIT
// The stop flags of every StopSource, in one shared anonymous mapping that every process forked
// from this one (fork server, workers) inherits: a worker reads its task's flag with one load.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <random>

#include "../../../errors.hpp"
#include "futex.hpp"

namespace multicore::detail {

/// One source's flag. `word` is (generation << 1) | stopped: a token remembers the word its
/// source had while live, so "stop requested" is simply "the word changed", whether by a stop
/// (bit 0 set) or by the source letting the slot go (generation bumped). The futex waits on it.
struct StopSlot {
  std::atomic<std::uint32_t> word{0};
  std::atomic<std::uint32_t> taken{0};  ///< 1 while a source owns the slot (any process)
};
static_assert(sizeof(StopSlot) == 8 && std::atomic<std::uint32_t>::is_always_lock_free);

/// The mapping. Made once per process tree before any worker is forked (see PoolCore), so the
/// parent's stores are the workers' loads. `id` tells this table from another process image's
/// (an MPI rank's), where the same slot number means nothing.
struct StopTable {
  static constexpr std::uint32_t slots = 4096;  ///< StopSources alive at once, all processes

  std::uint64_t id = 0;
  StopSlot slot[slots];

  /// Takes a free slot for a new source; none when all are taken. Lock-free and valid across
  /// processes (a worker may make sources too).
  std::optional<std::uint32_t> acquire() noexcept {
    for (std::uint32_t i = 0; i < slots; ++i) {
      std::uint32_t free = 0;
      if (slot[i].taken.load(std::memory_order_relaxed) == 0 &&
          slot[i].taken.compare_exchange_strong(free, 1, std::memory_order_acquire)) {
        return i;
      }
    }
    return std::nullopt;
  }

  /// Sets slot `i`'s stop bit and wakes its waiters. True if this call set it.
  bool stop(std::uint32_t i, std::uint32_t live) noexcept {
    std::uint32_t expected = live;
    const bool first =
        slot[i].word.compare_exchange_strong(expected, live | 1, std::memory_order_seq_cst);
    if (first) futex_wake_all(&slot[i].word);
    return first;
  }

  /// Lets slot `i` go: the next generation starts (old tokens see their word changed, so
  /// they read as stopped for ever, whatever source takes the slot next).
  void release(std::uint32_t i) noexcept {
    const std::uint32_t next = ((slot[i].word.load(std::memory_order_relaxed) >> 1) + 1) << 1;
    slot[i].word.store(next, std::memory_order_seq_cst);
    futex_wake_all(&slot[i].word);
    slot[i].taken.store(0, std::memory_order_release);
  }
};

/// This process's table, or null before the first stop_table(). Atomic: a token may be read on
/// any thread; the pointer never changes once set.
inline std::atomic<StopTable*>& stop_table_pointer() noexcept {
  static std::atomic<StopTable*> table{nullptr};
  return table;
}

/// This process's table, mapped on first use (shared with every process forked after that).
/// Throws SystemError if it cannot be mapped. The mapping lives as long as the process.
inline StopTable& stop_table() {
  static StopTable* const table = [] {
    void* p =
        mmap(nullptr, sizeof(StopTable), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw SystemError("mmap of the StopSource table", errno);
    auto* t = new (p) StopTable;
    t->id = (std::uint64_t{std::random_device{}()} << 32) | std::random_device{}();
    t->id |= 1;  // never 0, the id of no table
    stop_table_pointer().store(t, std::memory_order_release);
    return t;
  }();
  return *table;
}

}  // namespace multicore::detail
