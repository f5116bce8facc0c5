// SPDX-License-Identifier: MIT
// The pool's shared memory: who owns which field, and how the region is carved up.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>

#include "futex.hpp"
#include "ring.hpp"
#include "stream.hpp"

namespace multicore::detail {

/// Life of one worker slot. Each transition has exactly one writer:
///   parent:  -> spawning (before asking the fork server for a process)
///   worker:  spawning -> ready (after on_worker_start returned)
///   fork server: spawning -> spawn_failed (fork failed), any -> dead (after reaping the worker)
enum class SlotState : std::uint32_t { empty, spawning, ready, spawn_failed, dead };

/// Most jobs the parent has in flight to one worker at a time (sent, not yet answered).
inline constexpr std::size_t max_jobs_in_flight = 256;

/// Per-worker shared state. The worker's hot fields and the parent-written fields sit on
/// separate cache lines.
struct SlotShared {
  // Lifecycle (cold).
  alignas(cache_line_size) std::atomic<SlotState> state{SlotState::empty};
  std::atomic<std::int32_t> pid{0};          ///< fork server, after fork
  std::atomic<std::int32_t> wait_status{0};  ///< fork server, raw waitpid() status
  std::atomic<std::int32_t> spawn_errno{0};  ///< fork server, when fork failed
  /// Fork server: when the worker was stopped (SIGSTOP; steady clock, ns), 0 while it runs.
  std::atomic<std::int64_t> stopped_since_ns{0};
  std::atomic<std::uint32_t> start_failed{0};  ///< worker: on_worker_start threw (see start_error)
  /// Fork server: the worker replaced its program (exec) or closed its exec watch; killed.
  std::atomic<std::uint32_t> replaced_program{0};
  char start_error[256]{};  ///< worker, NUL-terminated, before start_failed

  // Progress, written only by the worker.
  alignas(cache_line_size) std::atomic<std::uint64_t> running{
      0};  ///< task being processed, 0: none
  /// When the entry (the user's code) started, steady clock; 0 while the task's payloads stream.
  std::atomic<std::int64_t> running_since_ns{0};
  /// 1 once the worker flushed its stdio and went to sleep, 0 from its next task on: whatever
  /// it printed is then in its pipes (a partial line there is complete; see output.hpp).
  std::atomic<std::uint32_t> quiet{0};

  // The worker sleeps here; the parent rings it after publishing requests or making room for
  // answers (see stream.hpp), or asks the worker to stop.
  alignas(cache_line_size) Doorbell worker_bell;
  /// Room handshakes (stream.hpp): 0 / 1: the producer waits for room / 2: the consumer made
  /// room and rang the producer's bell.
  std::atomic<std::uint32_t> request_room{0};  ///< producer: the parent; consumer: the worker
  std::atomic<std::uint32_t> answer_room{0};   ///< producer: the worker; consumer: the parent

  RingControl request;   ///< parent -> worker
  RingControl response;  ///< worker -> parent

  /// Parent: jobs the worker must skip, unstarted (their map was abandoned). A job's entry is
  /// its position in the stream of jobs sent to this process, modulo max_jobs_in_flight; the
  /// jobs in flight never share one. The worker skips a job whose id it finds there, so a stale
  /// entry never matches a later job (ids are never reused).
  alignas(cache_line_size) std::atomic<std::uint64_t> cancelled[max_jobs_in_flight]{};
};
static_assert(offsetof(SlotShared, running) % cache_line_size == 0);
static_assert(offsetof(SlotShared, worker_bell) % cache_line_size == 0);
static_assert(offsetof(SlotShared, request) % cache_line_size == 0);
static_assert(offsetof(SlotShared, cancelled) % cache_line_size == 0);

/// Pool-wide shared state.
struct PoolShared {
  /// The parent's collector sleeps here; workers ring it when they publish a response (or free
  /// request space the parent waits for), the fork server when a worker died or failed to start.
  alignas(cache_line_size) Doorbell parent_bell;
  /// Parent threads reading the response rings themselves right now (Pool::call): workers
  /// then publish answers without ringing parent_bell, which would only wake a collector that
  /// has nothing to do.
  std::atomic<std::uint32_t> parent_polling{0};
  /// Parent, before the fork server is forked: a random number that only the processes of this
  /// pool hold at this address. The fork server reads it in a worker's memory to tell one that
  /// closed its descriptors from one that ran exec (see Zygote::still_ours).
  std::uint64_t identity = 0;
};

/// Carves the region: [PoolShared][SlotShared x n][request data, response data] x n.
/// Ring data is page-aligned so a ring never shares a page with control fields.
struct Layout {
  static constexpr std::size_t page = 4096;

  unsigned workers;
  std::size_t ring_bytes;  // a power of two >= page

  static constexpr std::size_t align_up(std::size_t n, std::size_t a) noexcept {
    return (n + a - 1) / a * a;
  }
  std::size_t header_bytes() const noexcept {
    return align_up(sizeof(PoolShared) + workers * sizeof(SlotShared), page);
  }
  std::size_t total_bytes() const noexcept {
    return header_bytes() + std::size_t{2} * workers * ring_bytes;
  }

  PoolShared* pool(std::byte* base) const noexcept {
    return std::launder(reinterpret_cast<PoolShared*>(base));
  }
  SlotShared* slot(std::byte* base, unsigned k) const noexcept {
    return std::launder(reinterpret_cast<SlotShared*>(base + sizeof(PoolShared)) + k);
  }
  RingMemory request(std::byte* base, unsigned k) const noexcept {
    return {&slot(base, k)->request, base + header_bytes() + std::size_t{2} * k * ring_bytes,
            ring_bytes};
  }
  RingMemory response(std::byte* base, unsigned k) const noexcept {
    return {&slot(base, k)->response, base + header_bytes() + (std::size_t{2} * k + 1) * ring_bytes,
            ring_bytes};
  }

  /// Worker k's requests: the parent produces, the worker consumes.
  StreamEnds requests(std::byte* base, unsigned k) const noexcept {
    SlotShared* s = slot(base, k);
    return {request(base, k), &s->worker_bell, &pool(base)->parent_bell, &s->request_room, nullptr};
  }
  /// Worker k's answers: the worker produces, the parent consumes (and may poll for them).
  StreamEnds answers(std::byte* base, unsigned k) const noexcept {
    SlotShared* s = slot(base, k);
    return {response(base, k), &pool(base)->parent_bell, &s->worker_bell, &s->answer_room,
            &pool(base)->parent_polling};
  }

  /// Constructs the control blocks in fresh (zero-filled) shared memory.
  void construct(std::byte* base) const {
    new (base) PoolShared{};
    for (unsigned k = 0; k < workers; ++k) new (slot(base, k)) SlotShared{};
  }
};
static_assert(sizeof(PoolShared) % cache_line_size == 0);
static_assert(sizeof(SlotShared) % cache_line_size == 0);

}  // namespace multicore::detail
