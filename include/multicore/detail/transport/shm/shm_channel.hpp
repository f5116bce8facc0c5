// SPDX-License-Identifier: MIT
// The worker's end of the shared-memory transport: its two streams and its slot's fields.
#pragma once

#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>

#include "../worker_loop.hpp"
#include "layout.hpp"
#include "stream.hpp"

namespace multicore::detail {

/// Everything a forked worker needs, prepared by the parent before any fork.
struct ShmWorkerSetup {
  PoolShared* pool = nullptr;
  SlotShared* slot = nullptr;
  StreamEnds requests;  ///< the worker consumes
  StreamEnds answers;   ///< the worker produces
  WorkerPlan plan;
};

/// The running worker's setup, or nullptr outside a worker. A test seam: failure tests use it
/// from inside a task to scribble on the worker's own rings, as a broken worker would.
inline const ShmWorkerSetup*& current_worker() noexcept {
  static const ShmWorkerSetup* setup = nullptr;
  return setup;
}

class ShmWorkerChannel final : public WorkerChannel {
 public:
  /// Made in the worker just forked, whose parent is still its fork server (checked then).
  explicit ShmWorkerChannel(const ShmWorkerSetup& setup) noexcept
      : setup_(setup),
        requests_(setup.requests),
        answers_(setup.answers),
        fork_server_(getppid()) {}

  bool wait_for_request(std::chrono::nanoseconds timeout) noexcept override {
    return !requests_
                .wait_for_bytes(
                    request_spin_, [this] { before_sleep(); }, timeout)
                .empty();
  }

  std::span<const std::byte> peek() noexcept override {
    return requests_.wait_for_bytes(request_spin_, [this] { before_sleep(); });
  }

  void consume(std::size_t n) noexcept override { requests_.consume(n); }

  void write(std::span<const std::byte> bytes) noexcept override {
    answers_.write_all(bytes, answer_spin_);
  }

  void end_answer() noexcept override { answers_.count_message(); }

  void claim(std::uint64_t task_id) noexcept override {
    if (task_id != 0) setup_.slot->quiet.store(0, std::memory_order_relaxed);
    setup_.slot->running.store(task_id, std::memory_order_release);
  }

  void running_since(std::int64_t ns) noexcept override {
    setup_.slot->running_since_ns.store(ns, std::memory_order_release);
  }

  /// Looked up after the request was claimed: a cancellation too late for this look finds the
  /// task running, and the parent deals with it as with any task it wants no more (see
  /// ShmTransport::cancel, which writes the entry of this request's place in the stream).
  bool cancelled(std::uint64_t task_id) noexcept override {
    const std::uint64_t place = requests_read_++;
    return setup_.slot->cancelled[place % max_jobs_in_flight].load(std::memory_order_relaxed) ==
           task_id;
  }

  void started() noexcept override {
    // The fork server stores the pid too, but only once fork() returns there, which may be
    // after this: the parent reads it with the ready state.
    setup_.slot->pid.store(getpid(), std::memory_order_relaxed);
    setup_.slot->state.store(SlotState::ready, std::memory_order_release);
    setup_.pool->parent_bell.ring();
  }

  void start_failed(const char* what) noexcept override {
    if (what == nullptr) what = "";
    char* out = setup_.slot->start_error;
    const std::size_t n = strnlen(what, sizeof setup_.slot->start_error - 1);
    std::memcpy(out, what, n);
    out[n] = '\0';
    setup_.slot->start_failed.store(1, std::memory_order_release);
  }

 private:
  void before_sleep() noexcept {
    flush_output();
    stay_bound_to_the_fork_server();
  }

  /// A task may have cleared the parent-death signal the worker started with (prctl does, and
  /// so does any change of its effective user or group id: a task dropping privileges). Then,
  /// if its fork server died, the worker would sleep here for ever, orphaned. So before each
  /// sleep (not each task: two system calls) it is set again, and checked after setting, in
  /// case the fork server is gone already.
  void stay_bound_to_the_fork_server() const noexcept {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != fork_server_) leave_worker(0);
  }

  /// What the tasks printed goes out when the worker runs out of work and goes to sleep, not
  /// after every task (a flush walks every stdio stream). A flush blocks while its pipe is full
  /// (nobody reads it): the parent sees the worker busy outside any task meanwhile, and
  /// task_timeout cuts it off as it would a task, if it holds tasks it cannot start.
  void flush_output() noexcept {
    running_since(steady_now_ns());
    std::fflush(nullptr);
    setup_.slot->quiet.store(1, std::memory_order_release);
    running_since(0);
  }

  const ShmWorkerSetup& setup_;
  StreamConsumer requests_;
  StreamProducer answers_;
  SpinBudget request_spin_;
  SpinBudget answer_spin_;
  std::uint64_t requests_read_ = 0;  // the place of the next request in the stream
  pid_t fork_server_;
};

}  // namespace multicore::detail
