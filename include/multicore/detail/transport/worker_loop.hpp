// SPDX-License-Identifier: MIT
// The worker process, over any transport: wait for a request, run it, answer; until told to
// stop or replaced.
#pragma once

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <span>
#include <string>

#include "../../codec.hpp"
#include "../../stop.hpp"
#include "../protocol/entries.hpp"
#include "../protocol/wire.hpp"
#include "../util/process.hpp"
#include "../util/thread_team.hpp"
#include "../util/warm_buffer.hpp"

namespace multicore::detail {

/// The worker's end of a transport: where the request stream comes from, where answers go, and
/// what the parent may see of the worker. Every call blocks as long as it must (the worker has
/// nothing else to do); none throws.
class WorkerChannel {
 public:
  /// Waits until the next request starts arriving, at most `timeout` (0: without limit).
  /// False if none did. Flushes the tasks' output (stdio) before going to sleep.
  virtual bool wait_for_request(std::chrono::nanoseconds timeout) noexcept = 0;
  /// The next contiguous bytes of the request stream (at least one; waits for them), valid
  /// until consume().
  virtual std::span<const std::byte> peek() noexcept = 0;
  virtual void consume(std::size_t n) noexcept = 0;

  /// Sends bytes of an answer; end_answer() after its last byte (the parent counts answers to
  /// detect a stream cut short).
  virtual void write(std::span<const std::byte> bytes) noexcept = 0;
  virtual void end_answer() noexcept = 0;

  /// The worker started running `task_id` (0: no task): the parent blames it if the worker
  /// dies now. Published before the task's payload is touched.
  virtual void claim(std::uint64_t task_id) noexcept = 0;
  /// The user's code of the claimed task runs since `ns` (steady_now_ns()), or paused (0):
  /// task_timeout counts only while it runs.
  virtual void running_since(std::int64_t ns) noexcept = 0;
  /// The parent no longer wants the request just claimed (asked once per call request, in the
  /// order they come): skip it.
  virtual bool cancelled(std::uint64_t task_id) noexcept = 0;
  /// on_worker_start returned: the worker takes requests.
  virtual void started() noexcept = 0;
  /// on_worker_start threw `what`; the worker exits right after.
  virtual void start_failed(const char* what) noexcept = 0;

 protected:
  ~WorkerChannel() = default;
};

/// What a worker runs with, prepared by the parent before any fork.
struct WorkerPlan {
  const std::function<void()>* on_start = nullptr;
  std::size_t max_tasks = 0;  ///< 0: unlimited; else the worker exits after that many tasks
};

/// A worker's life: on_worker_start, then requests one at a time until a stop request, the task
/// limit, or death. Runs in the worker process and never returns.
class WorkerLoop {
 public:
  WorkerLoop(WorkerChannel& channel, const WorkerPlan& plan) noexcept
      : channel_(channel), plan_(plan) {}

  [[noreturn]] void run() noexcept {
    in_worker_process() = true;
    self_.claim();
    start();
    std::size_t done = 0;
    for (;;) {
      give_back_idle_memory();
      RequestHeader header;
      read_exact({reinterpret_cast<std::byte*>(&header), sizeof header});
      if (header.kind == RequestKind::stop) leave_worker(0);
      // Claim the task before touching its payload: if anything from here on kills the
      // process, the parent blames this task and no other.
      channel_.claim(header.task_id);
      // A task whose source is stopped is skipped: it has not started. Paired with the fence
      // in Scheduler::stop_requested, which sets the flag before it looks at what we claimed:
      // either the parent sees this claim (and lets the answer decide), or we see the flag.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (channel_.cancelled(header.task_id) || stop_seen(header.stop)) {
        skip(header);
      } else {
        serve(header);
      }
      channel_.claim(0);
      // Skipped requests count too: the parent counts every request it sends.
      if (plan_.max_tasks != 0 && ++done >= plan_.max_tasks) leave_worker(0);
    }
  }

 private:
  void start() noexcept {
    keep_freed_memory();
    try {
      if (plan_.on_start != nullptr && *plan_.on_start) (*plan_.on_start)();
    } catch (...) {
      channel_.start_failed(describe_start_failure().c_str());
      leave_worker(70);
    }
    stay_the_worker();
    std::fflush(nullptr);
    channel_.started();
  }

  /// Ends a copy of the worker that user code forked (in on_worker_start, a task or an item)
  /// and that came back here: only the worker itself may touch the channel, and the copy's
  /// stdio buffers hold the worker's output, so it leaves without flushing them. Called
  /// whenever user code returns, before the channel is touched.
  void stay_the_worker() const noexcept {
    if (self_.in_a_copy()) _exit(0);
  }

  /// What on_worker_start threw, as a sentence (called in its handler).
  static std::string describe_start_failure() noexcept {
    try {
      return describe_thrown();
    } catch (...) {  // out of memory: say no more than the pool's message does
      return {};
    }
  }

  /// Reads past a cancelled request's payload and answers it with nothing.
  void skip(const RequestHeader& header) noexcept {
    for (std::uint64_t left = header.payload_bytes; left != 0;) {
      const std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(left, channel_.peek().size()));
      channel_.consume(n);
      left -= n;
    }
    task_id_ = header.task_id;
    began_ = steady_now_ns();
    Writer& answer = answer_.get();
    answer.resize(sizeof(ResponseHeader));
    send_answer(answer, {});
  }

  void serve(const RequestHeader& header) noexcept {
    // The tail, if any, stays in the channel: the entry reads it straight into its argument.
    const std::uint64_t tail_bytes = std::min(header.tail_bytes, header.payload_bytes);
    Writer& payload = payload_.get();
    Writer& answer = answer_.get();
    payload.resize(static_cast<std::size_t>(header.payload_bytes - tail_bytes));
    read_exact(payload.bytes());
    answer.resize(sizeof(ResponseHeader));
    task_id_ = header.task_id;
    answered_ = false;
    began_ = steady_now_ns();
    // task_timeout counts only while the user's code runs, not while payloads stream.
    channel_.running_since(began_);
    tail_.start(tail_bytes);
    Reader reader(std::span<const std::byte>(payload.bytes()));
    const CallContext context{header.threads, tail_bytes != 0 ? &tail_ : nullptr, &sender_, &team_};
    const Entry entry = entry_named(header.entry);
    if (entry == nullptr) {
      // Only a module loaded after this worker's program image was made can be missing: the
      // task's worker is lost (the parent says so), nothing else is.
      std::fputs("multicore: a task names code in a module this worker does not have\n", stderr);
      leave_worker(72);
    }
    entry(reader, answer, context);
    stay_the_worker();
    tail_.skip_rest();  // an entry that failed before reading it
    if (!answered_) send_answer(answer, {});
    payload.clear(max_warm_bytes);
    answer.clear(max_warm_bytes);
  }

  /// Sends the answer in `out` (room for its header first), followed by `tail`.
  void send_answer(Writer& out, std::span<const std::byte> tail) noexcept {
    stay_the_worker();
    channel_.running_since(0);
    ResponseHeader response;
    response.task_id = task_id_;
    response.payload_bytes = out.size() - sizeof response + tail.size();
    response.tail_bytes = tail.size();
    response.run_nanos = static_cast<std::uint64_t>(steady_now_ns() - began_);
    std::memcpy(out.data(), &response, sizeof response);
    channel_.write(out.bytes());
    channel_.write(tail);
    channel_.end_answer();
    answered_ = true;
  }

  /// Blocks until `out` is filled from the request stream.
  void read_exact(std::span<std::byte> out) noexcept {
    while (!out.empty()) {
      const std::span<const std::byte> bytes = channel_.peek();
      const std::size_t n = std::min(bytes.size(), out.size());
      std::memcpy(out.data(), bytes.data(), n);
      channel_.consume(n);
      out = out.subspan(n);
    }
  }

  /// The request's tail, read from the channel as the entry asks for it.
  class ChannelTail final : public RequestTail {
   public:
    explicit ChannelTail(WorkerLoop& loop) noexcept : loop_(loop) {}

    void start(std::uint64_t bytes) noexcept {
      left_ = bytes;
      paused_ = false;
    }

    std::uint64_t left() const noexcept override { return left_; }

    std::span<const std::byte> next() noexcept override {
      loop_.stay_the_worker();
      if (!paused_) {  // streaming is not running the user's code (see serve())
        loop_.channel_.running_since(0);
        paused_ = true;
      }
      const std::span<const std::byte> piece = loop_.channel_.peek();
      return piece.first(static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), left_)));
    }

    void consume(std::size_t n) noexcept override {
      loop_.channel_.consume(n);
      left_ -= n;
      if (left_ == 0 && paused_) loop_.channel_.running_since(steady_now_ns());
    }

    /// Reads and drops what the entry did not read.
    void skip_rest() noexcept {
      while (left_ != 0) consume(next().size());
    }

   private:
    WorkerLoop& loop_;
    std::uint64_t left_ = 0;
    bool paused_ = false;
  };

  class ChannelSender final : public AnswerSender {
   public:
    explicit ChannelSender(WorkerLoop& loop) noexcept : loop_(loop) {}
    void send(Writer& out, std::span<const std::byte> tail) noexcept override {
      loop_.send_answer(out, tail);
    }

   private:
    WorkerLoop& loop_;
  };

  /// Has glibc's malloc keep what tasks free, up to `max_warm_bytes` at the heap's top, for the
  /// next task. By default it unmaps a freed block of more than 32 MiB at once (smaller ones
  /// too, until its thresholds adapt) and trims free memory off the heap's top. A large argument
  /// then lands in pages that are already mapped: fresh ones cost the kernel a zeroing pass,
  /// about as much as copying them. give_back_idle_memory() returns the memory.
  /// (No effect with another allocator, or under a sanitizer, which replaces malloc.)
  void keep_freed_memory() noexcept {
    mallopt(M_MMAP_MAX, 0);  // every block from the heap (glibc still maps if the heap is full)
    mallopt(M_TRIM_THRESHOLD, static_cast<int>(max_warm_bytes));
    trimmed_heap_end_ = heap_end();
  }

  static std::uintptr_t heap_end() noexcept { return reinterpret_cast<std::uintptr_t>(sbrk(0)); }

  /// Between tasks: if large buffers are held, or the heap grew, waits at most `warm_for` for
  /// the next request, and gives the memory back if none came.
  void give_back_idle_memory() noexcept {
    const bool heap_grew = heap_end() > trimmed_heap_end_ + kept_buffer_bytes;
    if (!heap_grew && !payload_.holds_large() && !answer_.holds_large()) return;
    if (channel_.wait_for_request(warm_for)) return;
    payload_.release();
    answer_.release();
    malloc_trim(0);  // the heap's top, and whole free pages inside it
    trimmed_heap_end_ = heap_end();
  }

  /// Buffers stay allocated (and their pages mapped) between tasks up to this size for good;
  /// larger ones (up to `max_warm_bytes`) until the worker has been idle for `warm_for`.
  static constexpr std::size_t kept_buffer_bytes = std::size_t{1} << 20;
  static constexpr std::size_t max_warm_bytes = WarmBuffer::max_warm_bytes;
  static constexpr std::chrono::nanoseconds warm_for = WarmBuffer::warm_for;

  WorkerChannel& channel_;
  WorkerPlan plan_;
  WarmBuffer payload_{kept_buffer_bytes};
  WarmBuffer answer_{kept_buffer_bytes};
  ChannelTail tail_{*this};
  ChannelSender sender_{*this};
  ThreadTeam team_;  // made in this process, with no threads until a chunk asks for them
  ForkMark& self_ = ForkMark::instance();  // claimed in run(), in the worker
  std::uint64_t task_id_ = 0;
  std::int64_t began_ = 0;
  bool answered_ = false;
  std::uintptr_t trimmed_heap_end_ = 0;
};

}  // namespace multicore::detail
