// SPDX-License-Identifier: MIT
// A job (one request message and where its answer goes) and the completion it carries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <span>
#include <utility>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../stop.hpp"
#include "../transport/transport.hpp"
#include "../util/keep_alive.hpp"
#include "../util/linkage.hpp"

namespace multicore::detail {

/// Where a job's answer goes. Exactly one of deliver(), AnswerTail::deliver_tail() and fail()
/// is called, exactly once, unless the job is dropped unsent because abandoned() said so.
class Completion {
 public:
  virtual ~Completion() = default;
  /// The worker answered; `payload` is what the entry wrote (untrusted bytes: decode with care).
  virtual void deliver(Reader& payload, std::uint64_t run_nanos) noexcept = 0;
  /// An answer has a tail of `tail_bytes`; `head` is the rest of its payload (untrusted).
  /// Returns where the tail goes if `head` decodes to the start of a value that the tail
  /// completes; otherwise nullptr, and the whole payload is then assembled and deliver()ed
  /// (which reports whatever is wrong with it). Called again if the answer is sent again.
  virtual AnswerTail* open_tail(std::span<const std::byte> /*head*/,
                                std::uint64_t /*tail_bytes*/) noexcept {
    return nullptr;
  }
  /// The job has no answer: its worker died, it timed out, or the pool closed.
  virtual void fail(std::exception_ptr error) noexcept = 0;
  /// Nobody wants the answer any more (an abandoned map): a job not yet sent is dropped.
  virtual bool abandoned() const noexcept { return false; }
  /// After deliver() or deliver_tail(): whether the outcome is decoded but not yet visible to
  /// the caller, which publish() (on any thread, once) then does. (A completion that wraps
  /// another forwards both, or the inner one's caller never hears of its answer.)
  virtual bool unpublished() const noexcept { return false; }
  virtual void publish() noexcept {}
  /// Whether `payload` (an answer about to be delivered; untrusted) says that the task threw,
  /// for the pool's statistics. Completions of one call can tell; others say no.
  virtual bool reports_exception(std::span<const std::byte> /*payload*/) const noexcept {
    return false;
  }
};

/// Runs `work` and returns what it threw (null if nothing), after the handler has ended.
/// Completions fail with it from there: a handled exception stays referenced until its handler
/// ends, so failing from inside the handler could let the caller finish with the error first
/// and leave this thread to destroy it (running the user's exception destructor here, and a
/// race as far as TSan can tell, which cannot see libstdc++'s reference count).
template <class Work>
std::exception_ptr error_of(Work&& work) noexcept {
  try {
    std::forward<Work>(work)();
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

/// The error of a job whose StopSource was stopped before it started.
MULTICORE_DECL std::exception_ptr cancelled_error();

/// One unit of work: a complete request message and where its answer goes. Jobs are recycled
/// with their request buffer and completion storage, so steady traffic allocates nothing here
/// (and nothing allocated by a submitting thread is freed by the collector thread).
class Job {
 public:
  std::uint64_t id = 0;
  Writer request;
  /// The job is cancelled when this token's source is stopped (see Scheduler::stop_requested).
  StopToken stop;
  /// request_stop(grace) asked for its worker to be killed if it still runs it at the cut-off.
  bool stop_kills = false;
  /// Its completion already failed with Cancelled while a worker still owes its answer, which
  /// is then dropped. Under the scheduling lock.
  bool resolved = false;
  /// What the request refers to and must outlive it (filled while it is encoded).
  KeepAlive keep_alive;

  Job() = default;
  // Out of line (util/linkage.hpp): every function that holds a job would compile it again.
  MULTICORE_DECL ~Job();
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  /// Makes the job's completion, in place when it is small (they all are, today).
  template <class C, class... Args>
  C& emplace_completion(Args&&... args) {
    reset_completion();
    if constexpr (sizeof(C) <= inline_bytes && alignof(C) <= alignof(std::max_align_t)) {
      completion_ = new (storage_) C(std::forward<Args>(args)...);
      inline_ = true;
    } else {
      completion_ = new C(std::forward<Args>(args)...);
      inline_ = false;
    }
    return static_cast<C&>(*completion_);
  }

  Completion& completion() noexcept { return *completion_; }

  /// Request buffers up to this size stay with the job when it is recycled.
  static constexpr std::size_t max_kept_bytes = std::size_t{64} << 10;

  /// Ready for reuse: no completion, no request (a large request buffer is let go).
  MULTICORE_DECL void recycle() noexcept;

 private:
  // Room for the library's completions (160 bytes for a future's std::string result, which it
  // holds until published; 144 for a std::vector, which also carries the state to receive a
  // tail), so steady traffic allocates none.
  static constexpr std::size_t inline_bytes = 192;

  void reset_completion() noexcept {
    if (completion_ == nullptr) return;
    if (inline_) {
      completion_->~Completion();
    } else {
      delete completion_;
    }
    completion_ = nullptr;
  }

  alignas(std::max_align_t) std::byte storage_[inline_bytes];
  Completion* completion_ = nullptr;
  bool inline_ = false;
};

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL std::exception_ptr cancelled_error() {
  return std::make_exception_ptr(
      Cancelled("multicore: the task was cancelled: its StopSource was stopped before it ran"));
}

MULTICORE_DECL Job::~Job() { reset_completion(); }

MULTICORE_DECL void Job::recycle() noexcept {
  reset_completion();
  id = 0;
  stop = {};
  stop_kills = false;
  resolved = false;
  keep_alive.clear();
  if (request.capacity() > max_kept_bytes) {
    request = Writer();
  } else {
    request.clear();
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
