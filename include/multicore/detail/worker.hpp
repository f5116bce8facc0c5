// SPDX-License-Identifier: MIT
// The worker process: wait for a request, run it, answer; until told to stop or replaced.
#pragma once

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <span>
#include <string>

#include "../codec.hpp"
#include "call.hpp"
#include "futex.hpp"
#include "layout.hpp"
#include "ring.hpp"
#include "thread_team.hpp"
#include "wire.hpp"

namespace multicore::detail {

/// True in a worker process.
inline bool& in_worker_process() noexcept {
  static bool value = false;
  return value;
}

/// Counts the forks on the way to this process since it (or an ancestor) made its first pool
/// (see watch_forks()). A Pool remembers the value it was built with: its copy in a fork
/// server, a worker or a child the application forked is a snapshot, not a working pool, and
/// must refuse to be used, while a pool built in that process works.
inline std::uint64_t& process_generation() noexcept {
  static std::uint64_t value = 0;
  return value;
}

inline std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Everything a worker needs, prepared by the parent before any fork.
struct WorkerSetup {
  PoolShared* pool = nullptr;
  SlotShared* slot = nullptr;
  RingMemory requests;
  RingMemory responses;
  const std::function<void()>* on_start = nullptr;
  std::size_t max_tasks = 0;  // 0: unlimited
};

/// The running worker's setup, or nullptr outside a worker. A test seam: failure tests use it
/// from inside a task to scribble on the worker's own rings, as a broken worker would.
inline const WorkerSetup*& current_worker() noexcept {
  static const WorkerSetup* setup = nullptr;
  return setup;
}

/// Leaves the worker without running the parent's atexit handlers or static destructors (they
/// belong to the parent's snapshot and may touch files or locks it owns), after flushing what
/// the tasks printed.
[[noreturn]] inline void leave_worker(int code) noexcept {
  std::fflush(nullptr);
  _exit(code);
}

class Worker {
 public:
  explicit Worker(const WorkerSetup& setup) noexcept
      : setup_(setup), requests_(setup.requests), responses_(setup.responses) {}

  [[noreturn]] void run() noexcept {
    in_worker_process() = true;
    current_worker() = &setup_;
    start();
    std::size_t done = 0;
    for (;;) {
      give_back_idle_buffers();
      RequestHeader header;
      read_exact({reinterpret_cast<std::byte*>(&header), sizeof header});
      if (header.kind == RequestKind::stop) leave_worker(0);
      // Claim the task before touching its payload: if anything from here on kills the
      // process, the parent blames this task and no other.
      setup_.slot->running.store(header.task_id, std::memory_order_release);
      if (cancelled(header)) {
        skip(header);
      } else {
        serve(header);
      }
      setup_.slot->running.store(0, std::memory_order_release);
      // Skipped jobs count too: the parent counts every job it sends (see Scheduler::can_take).
      if (setup_.max_tasks != 0 && ++done >= setup_.max_tasks) leave_worker(0);
    }
  }

 private:
  /// True if the parent cancelled this job (see SlotShared::cancelled). Looked up after the job
  /// was claimed in `running`: a cancellation too late for this look finds the job running, and
  /// the parent deals with it as with any job of the abandoned map that had started.
  bool cancelled(const RequestHeader& header) noexcept {
    const std::uint64_t position = jobs_read_++;
    return setup_.slot->cancelled[position % max_jobs_in_flight].load(std::memory_order_relaxed) ==
           header.task_id;
  }

  /// Reads past a cancelled job's payload and answers it with nothing.
  void skip(const RequestHeader& header) noexcept {
    for (std::uint64_t left = header.payload_bytes; left != 0;) {
      const std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(left, wait_for_request_bytes().size()));
      consume_request_bytes(n);
      left -= n;
    }
    task_id_ = header.task_id;
    began_ = steady_now_ns();
    answer_.resize(sizeof(ResponseHeader));
    send_answer(answer_, {});
  }

  void start() noexcept {
    keep_freed_memory();
    try {
      if (setup_.on_start != nullptr && *setup_.on_start) (*setup_.on_start)();
    } catch (...) {
      describe_start_failure();
      setup_.slot->start_failed.store(1, std::memory_order_release);
      leave_worker(70);
    }
    std::fflush(nullptr);
    setup_.slot->state.store(SlotState::ready, std::memory_order_release);
    setup_.pool->parent_bell.ring();
  }

  void describe_start_failure() noexcept {
    std::string what;
    try {
      what = describe_thrown();
    } catch (...) {  // out of memory: say no more than the pool's message does
    }
    char* out = setup_.slot->start_error;
    const std::size_t n = std::min(what.size(), sizeof setup_.slot->start_error - 1);
    std::memcpy(out, what.data(), n);
    out[n] = '\0';
  }

  void serve(const RequestHeader& header) noexcept {
    // The tail, if any, stays in the ring: the entry reads it straight into its argument.
    const std::uint64_t tail_bytes = std::min(header.tail_bytes, header.payload_bytes);
    payload_.resize(static_cast<std::size_t>(header.payload_bytes - tail_bytes));
    read_exact(payload_.bytes());
    answer_.resize(sizeof(ResponseHeader));
    task_id_ = header.task_id;
    answered_ = false;
    began_ = steady_now_ns();
    // task_timeout counts only while the user's code runs, not while payloads stream.
    setup_.slot->running_since_ns.store(began_, std::memory_order_release);
    tail_.start(tail_bytes);
    Reader reader(std::span<const std::byte>(payload_.bytes()));
    const CallContext context{static_cast<Format>(header.format), header.threads,
                              tail_bytes != 0 ? &tail_ : nullptr, &sender_, &team_};
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the id is an entry address (see RequestHeader)
    reinterpret_cast<Entry>(static_cast<std::uintptr_t>(header.entry))(reader, answer_, context);
    tail_.skip_rest();  // an entry that failed before reading it
    if (!answered_) send_answer(answer_, {});
    payload_.clear(max_warm_bytes);
    answer_.clear(max_warm_bytes);
  }

  /// Sends the answer in `out` (room for its header first), followed by `tail`.
  void send_answer(Writer& out, std::span<const std::byte> tail) noexcept {
    setup_.slot->running_since_ns.store(0, std::memory_order_release);
    ResponseHeader response;
    response.task_id = task_id_;
    response.payload_bytes = out.size() - sizeof response + tail.size();
    response.tail_bytes = tail.size();
    response.run_nanos = static_cast<std::uint64_t>(steady_now_ns() - began_);
    std::memcpy(out.data(), &response, sizeof response);
    write_all(out.bytes());
    write_all(tail);
    // Counted only after the bytes: the parent reads it to detect a worker that claims more
    // answers than it really wrote (a truncated or corrupt stream).
    responses_.count_message();
    answered_ = true;
  }

  /// The request's tail, read from the ring as the entry asks for it.
  class RingTail final : public RequestTail {
   public:
    explicit RingTail(Worker& worker) noexcept : worker_(worker) {}

    void start(std::uint64_t bytes) noexcept {
      left_ = bytes;
      paused_ = false;
    }

    std::uint64_t left() const noexcept override { return left_; }

    std::span<const std::byte> next() noexcept override {
      if (!paused_) {  // streaming is not running the user's code (see serve())
        worker_.setup_.slot->running_since_ns.store(0, std::memory_order_release);
        paused_ = true;
      }
      const std::span<const std::byte> piece = worker_.wait_for_request_bytes();
      return piece.first(static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), left_)));
    }

    void consume(std::size_t n) noexcept override {
      worker_.consume_request_bytes(n);
      left_ -= n;
      if (left_ == 0 && paused_) {
        worker_.setup_.slot->running_since_ns.store(steady_now_ns(), std::memory_order_release);
      }
    }

    /// Reads and drops what the entry did not read.
    void skip_rest() noexcept {
      while (left_ != 0) consume(next().size());
    }

   private:
    Worker& worker_;
    std::uint64_t left_ = 0;
    bool paused_ = false;
  };

  class Sender final : public AnswerSender {
   public:
    explicit Sender(Worker& worker) noexcept : worker_(worker) {}
    void send(Writer& out, std::span<const std::byte> tail) noexcept override {
      worker_.send_answer(out, tail);
    }

   private:
    Worker& worker_;
  };

  /// Has glibc's malloc keep what tasks free, up to `max_warm_bytes` at the heap's top, for the
  /// next task. By default it unmaps a freed block of more than 32 MiB at once (smaller ones
  /// too, until its thresholds adapt) and trims free memory off the heap's top. A large argument
  /// then lands in pages that are already mapped: fresh ones cost the kernel a zeroing pass,
  /// about as much as copying them. give_back_idle_buffers() returns the memory.
  /// (No effect with another allocator, or under a sanitizer, which replaces malloc.)
  void keep_freed_memory() noexcept {
    mallopt(M_MMAP_MAX, 0);  // every block from the heap (glibc still maps if the heap is full)
    mallopt(M_TRIM_THRESHOLD, static_cast<int>(max_warm_bytes));
    trimmed_heap_end_ = heap_end();
  }

  static std::uintptr_t heap_end() noexcept { return reinterpret_cast<std::uintptr_t>(sbrk(0)); }

  /// Between tasks: if large buffers are held, or the heap grew, waits at most `warm_for` for
  /// the next request, and gives the memory back if none came.
  void give_back_idle_buffers() noexcept {
    const bool heap_grew = heap_end() > trimmed_heap_end_ + kept_buffer_bytes;
    if (!heap_grew && payload_.capacity() + answer_.capacity() <= 2 * kept_buffer_bytes) return;
    const auto ready = [&] { return requests_.readable() > 0; };
    if (wait_for(setup_.slot->worker_bell, request_spin_, ready, warm_for,
                 [] { std::fflush(nullptr); })) {
      return;
    }
    payload_.clear(kept_buffer_bytes);
    answer_.clear(kept_buffer_bytes);
    malloc_trim(0);  // the heap's top, and whole free pages inside it
    trimmed_heap_end_ = heap_end();
  }

  /// Blocks until the request ring has bytes; returns those that are contiguous, up to a
  /// piece.
  std::span<const std::byte> wait_for_request_bytes() noexcept {
    for (;;) {
      const std::span<const std::byte> bytes = requests_.peek();
      if (!bytes.empty()) return ring_piece(bytes, requests_.capacity());
      // What the tasks printed goes out when the worker runs out of work and goes to sleep,
      // not after every task (a flush walks every stdio stream).
      wait_for(
          setup_.slot->worker_bell, request_spin_, [&] { return requests_.readable() > 0; },
          std::chrono::nanoseconds{0}, [] { std::fflush(nullptr); });
    }
  }

  /// Gives `n` read bytes back to the parent, waking it if it waits for room.
  void consume_request_bytes(std::size_t n) noexcept {
    requests_.consume(n);
    std::uint32_t waiting = 1;
    if (setup_.slot->parent_wants_space.compare_exchange_strong(waiting, 2)) {
      setup_.pool->parent_bell.ring();
    }
  }

  /// Blocks until `out` is filled from the request ring.
  void read_exact(std::span<std::byte> out) noexcept {
    std::size_t got = 0;
    while (got < out.size()) {
      const std::span<const std::byte> bytes = wait_for_request_bytes();
      const std::size_t n = std::min(bytes.size(), out.size() - got);
      std::memcpy(out.data() + got, bytes.data(), n);
      consume_request_bytes(n);
      got += n;
    }
  }

  /// Blocks until all of `bytes` is published to the response ring.
  void write_all(std::span<const std::byte> bytes) noexcept {
    std::size_t put = 0;
    while (put < bytes.size()) {
      const std::size_t n =
          responses_.write_some(ring_piece(bytes.subspan(put), responses_.capacity()));
      put += n;
      if (n > 0) {
        if (setup_.pool->parent_polling.load(std::memory_order_relaxed) == 0) {
          setup_.pool->parent_bell.ring();
        }
        continue;
      }
      setup_.slot->worker_wants_room.store(1, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_seq_cst);  // see ShmTransport::consume
      wait_for(setup_.slot->worker_bell, response_spin_, [&] { return responses_.writable() > 0; });
      setup_.slot->worker_wants_room.store(0, std::memory_order_relaxed);
    }
  }

  /// Buffers stay allocated (and their pages mapped) between tasks up to this size; beyond
  /// it, the memory goes back after the task.
  static constexpr std::size_t kept_buffer_bytes = std::size_t{1} << 20;
  /// Larger buffers stay warm (their pages mapped) between tasks, which saves re-faulting them
  /// for back-to-back large payloads, up to this size and for `warm_for` of idleness.
  static constexpr std::size_t max_warm_bytes = std::size_t{256} << 20;
  static constexpr std::chrono::seconds warm_for{1};

  WorkerSetup setup_;
  RingReader requests_;
  RingWriter responses_;
  SpinBudget request_spin_;
  SpinBudget response_spin_;
  Writer payload_;
  Writer answer_;
  RingTail tail_{*this};
  Sender sender_{*this};
  ThreadTeam team_;  // made in this process, with no threads until a chunk asks for them
  std::uint64_t task_id_ = 0;
  std::uint64_t jobs_read_ = 0;  // call requests read: the position of the next one
  std::int64_t began_ = 0;
  bool answered_ = false;
  std::uintptr_t trimmed_heap_end_ = 0;
};

}  // namespace multicore::detail
