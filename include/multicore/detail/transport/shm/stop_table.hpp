// SPDX-License-Identifier: MIT
// The stop flags of every StopSource, in one shared anonymous mapping that every process forked
// from this one (fork server, workers) inherits: a worker reads its task's flag with one load.
#pragma once

#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>

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

/// Whether a slot's `word` is past `live`, the word a token remembers: its source was stopped or
/// let go since. A slot's own word only ever moves forward from a live word (by 1 when stopped,
/// to the next generation when let go); a mirrored word (see StopTable::mirror) may also still
/// be behind it. Wrap-safe: generations are compared as a distance.
constexpr bool stop_word_passed(std::uint32_t word, std::uint32_t live) noexcept {
  return static_cast<std::int32_t>(word - live) > 0;
}

/// The mapping. Made once per process tree before any worker is forked (see PoolCore), so the
/// parent's stores are the workers' loads. `id` tells this table from another process image's
/// (an MPI rank's), where the same slot number means nothing.
///
/// Over MPI, each node agent's table also mirrors rank 0's: `mirror_id` is rank 0's `id`, and
/// `mirror[i]` follows rank 0's slot i as far as stops go (rank 0 relays each stop of a source
/// that a pool of a Cluster may have sent: see Transport::relay_stop), so that the agent's
/// workers see rank 0's tokens stop. Mirrored slots are apart from the agent's own: a source
/// made on the agent's node keeps a slot of its own.
struct StopTable {
  static constexpr std::uint32_t slots = 4096;  ///< StopSources alive at once, all processes

  std::uint64_t id = 0;
  std::atomic<std::uint64_t> mirror_id{0};  ///< 0: mirrors no table
  StopSlot slot[slots];
  std::atomic<std::uint32_t> mirror[slots] = {};

  /// The word a token of table `table`, slot `i`, reads; null for a foreign table.
  const std::atomic<std::uint32_t>* word_for(std::uint64_t table, std::uint32_t i) const noexcept {
    if (i >= slots) return nullptr;
    if (table == id) return &slot[i].word;
    if (table == mirror_id.load(std::memory_order_relaxed)) return &mirror[i];
    return nullptr;
  }

  /// Mirrors rank 0's slot `i` reaching `word` (see above): moves mirror[i] forward to it and
  /// wakes its waiters. Messages may come in any order; the word never moves back.
  void mirror_word(std::uint32_t i, std::uint32_t word) noexcept {
    if (i >= slots) return;
    std::uint32_t seen = mirror[i].load(std::memory_order_relaxed);
    while (stop_word_passed(word, seen)) {
      if (mirror[i].compare_exchange_weak(seen, word, std::memory_order_seq_cst)) {
        futex_wake_all(&mirror[i]);
        return;
      }
    }
  }

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

/// A fresh random id for this process's table: from getrandom(2) (not <random>, whose
/// std::random_device would cost every file that includes the library a quarter of a second
/// to parse), or, should the kernel refuse, from the time, the pid and an address. Never 0,
/// the id of no table.
inline std::uint64_t random_table_id() noexcept {
  std::uint64_t id = 0;
  if (::getrandom(&id, sizeof id, 0) != static_cast<ssize_t>(sizeof id)) {
    id = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
         (static_cast<std::uint64_t>(::getpid()) << 40) ^ reinterpret_cast<std::uintptr_t>(&id);
  }
  return id | 1;
}

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
    t->id = random_table_id();
    stop_table_pointer().store(t, std::memory_order_release);
    return t;
  }();
  return *table;
}

}  // namespace multicore::detail
