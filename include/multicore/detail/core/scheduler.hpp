// SPDX-License-Identifier: MIT
// Jobs, dispatch to the least-loaded worker, the collector thread, and what happens to every
// job when a worker dies, hangs, lies or the pool closes.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../protocol/wire.hpp"
#include "../transport/transport.hpp"
#include "../util/process.hpp"
#include "../util/ring_queue.hpp"
#include "../util/warm_buffer.hpp"

namespace multicore::detail {

/// Where a job's answer goes. Exactly one of deliver(), AnswerTail::deliver_tail() and fail()
/// is called, exactly once.
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

/// One unit of work: a complete request message and where its answer goes. Jobs are recycled
/// with their request buffer and completion storage, so steady traffic allocates nothing here
/// (and nothing allocated by a submitting thread is freed by the collector thread).
class Job {
 public:
  std::uint64_t id = 0;
  Writer request;

  Job() = default;
  ~Job() { reset_completion(); }
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
  void recycle() noexcept {
    reset_completion();
    id = 0;
    if (request.capacity() > max_kept_bytes) {
      request = Writer();
    } else {
      request.clear();
    }
  }

 private:
  // Room for the library's completions (120 bytes for a std::vector result, which carries the
  // state to receive a tail), so steady traffic allocates none.
  static constexpr std::size_t inline_bytes = 128;

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

struct SchedulerOptions {
  std::chrono::nanoseconds task_timeout{0};  ///< 0: none
  std::size_t max_tasks_per_worker = 0;      ///< 0: unlimited
};

/// How many jobs a worker may hold at once (one running, the rest queued in its ring). Long
/// tasks get a shallow queue, so uneven work balances across workers; short ones a deep queue,
/// so a worker never idles waiting for the parent to send the next one. The bound aims at
/// about 100 us of queued work per worker.
class InFlightBound {
 public:
  static constexpr std::size_t min_jobs = 2;
  static constexpr std::size_t max_jobs = 64;

  std::size_t value() const noexcept { return value_; }

  /// Learns from one answer's run time.
  void observe(std::uint64_t run_nanos) noexcept {
    average_ns_ += (static_cast<double>(run_nanos) - average_ns_) / 8;  // ~last 8 answers
    const double fit = 100'000.0 / std::max(average_ns_, 1.0);
    value_ = static_cast<std::size_t>(
        std::clamp(fit, static_cast<double>(min_jobs), static_cast<double>(max_jobs)));
  }

 private:
  double average_ns_ = 1'000'000;  // assume long tasks until told otherwise
  std::size_t value_ = min_jobs;
};

/// "multicore: worker process 4242 was killed by signal 11 (Segmentation fault)": how a worker
/// ended, for error messages.
inline std::string describe(const Death& d) {
  const std::string who = "multicore: worker process " + std::to_string(d.pid) + d.where;
  if (d.signal != 0) {
    const char* name = strsignal(d.signal);
    return who + " was killed by signal " + std::to_string(d.signal) + " (" +
           (name != nullptr ? name : "unknown") + ")";
  }
  return who + " exited with code " + std::to_string(d.exit_code);
}

inline WorkerLost worker_lost(const Death& d, const std::string& what) {
  return WorkerLost(describe(d) + " " + what, d.signal, d.signal != 0 ? -1 : d.exit_code);
}

/// Error for a worker that could not be started, from its death.
inline std::exception_ptr start_error(const Death& d, bool replacement) {
  switch (d.cause) {
    case Death::Cause::spawn_failed:
      return std::make_exception_ptr(SystemError("fork", d.error));
    case Death::Cause::start_failed:
      return std::make_exception_ptr(Error(replacement
                                               ? "multicore: on_worker_start threw in a "
                                                 "replacement worker: " +
                                                     d.text
                                               : "multicore: on_worker_start threw: " + d.text));
    default:
      return std::make_exception_ptr(Error(describe(d) + " while starting (in on_worker_start)"));
  }
}

class Scheduler final : private TailRouter {
 public:
  /// Starts every worker and waits until each has run on_worker_start. Throws SystemError if a
  /// process cannot be forked, Error if a worker fails to start; nothing is left running then.
  Scheduler(std::unique_ptr<Transport> transport, SchedulerOptions options)
      : transport_(std::move(transport)), options_(options), slots_(transport_->size()) {
    start_all();
    collector_ = std::thread([this] { collect(); });
  }

  ~Scheduler() { shutdown(); }
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  unsigned size() const noexcept { return static_cast<unsigned>(slots_.size()); }

  /// A job to fill in and submit(): a recycled one when there is one. Thread-safe. A request
  /// expected to be large (`size_hint` bytes) gets the spare large buffer if it fits.
  std::unique_ptr<Job> new_job(std::size_t size_hint = 0) {
    std::unique_ptr<Job> job = recycled_job();
    if (size_hint > Job::max_kept_bytes) {
      std::lock_guard lock(spare_mutex_);
      if (spare_request_.capacity() >= size_hint) job->request = std::move(spare_request_);
    }
    return job;
  }

  /// Queues a job (request encoded, completion set) and sends it if a worker has room.
  /// Thread-safe. Throws PoolClosed once the pool is closing (the job is then destroyed
  /// without its completion being called).
  void submit(std::unique_ptr<Job> job) {
    std::lock_guard lock(mutex_);
    if (closed_) throw PoolClosed(closed_reason_);
    job->id = ++last_id_;
    stamp_id(*job);
    pending_.push_back(std::move(job));
    outstanding_.fetch_add(1, std::memory_order_relaxed);
    dispatch_locked();
  }

  /// Submits a job and waits until `done` holds, helping to collect answers meanwhile: the
  /// calling thread polls the transport itself (whoever holds collect_mutex_ receives), so its
  /// own answer reaches it without a hand-off through the collector thread. Spins while that
  /// pays, then sleeps in `sleep` and lets the collector deliver.
  template <class Done, class Sleep>
  void call(std::unique_ptr<Job> job, Done&& done, Sleep&& sleep) {
    // Announce the polling first: an answer that comes back at once must not ring the
    // collector awake, to contend with us for collect_mutex_.
    sync_callers_.fetch_add(1, std::memory_order_relaxed);
    transport_->callers_polling(+1);
    try {
      submit(std::move(job));
    } catch (...) {
      transport_->callers_polling(-1);
      sync_callers_.fetch_sub(1, std::memory_order_relaxed);
      throw;
    }
    help_until(done, sleep);
  }

  /// Waits until `done` holds, helping to collect answers as call() does (for jobs submitted
  /// earlier: Task::get, a map waiting for its next chunk).
  template <class Done, class Sleep>
  void help(Done&& done, Sleep&& sleep) noexcept {
    if (done()) return;
    sync_callers_.fetch_add(1, std::memory_order_relaxed);
    transport_->callers_polling(+1);
    help_until(done, sleep);
  }

  /// Stops accepting, waits for every submitted job to resolve, stops the workers. Bounded
  /// once the work is done: workers that do not stop in time are killed.
  void shutdown() noexcept { close(false); }

  /// Stops now: unfinished jobs fail with PoolClosed, workers are killed. Bounded.
  void terminate() noexcept {
    {
      std::lock_guard lock(mutex_);
      terminating_ = true;
      mark_closed_locked("multicore: the pool was terminated");
    }
    changed_.notify_all();
    close(true);
  }

 private:
  using Clock = std::chrono::steady_clock;

  enum class Life {
    starting,  ///< asked for a process, not ready yet
    ready,     ///< can take jobs
    backoff,   ///< could not be (re)started; retry at retry_at
    stopping,  ///< told to stop (graceful shutdown)
    stopped,   ///< gone for good
  };

  struct Slot {
    // Under mutex_:
    Life life = Life::starting;
    RingQueue<std::unique_ptr<Job>> in_flight;  // handed to the transport, oldest first
    std::unique_ptr<Job> answering;             // its answer's tail is arriving (see open_tail)
    std::size_t dispatched = 0;                 // jobs given to this process
    std::uint64_t timed_out_task = 0;           // we killed the process because this task overran
    unsigned start_failures = 0;
    Clock::time_point retry_at{};
    // The process broke the protocol; it is being killed. Set under mutex_ (by whoever sends
    // or receives); read under collect_mutex_ too: hence atomic.
    std::atomic<bool> corrupt{false};
    // What the worker runs (from `running` events): written under collect_mutex_, read by the
    // collector's timeout check under mutex_.
    std::atomic<std::uint64_t> running_task{0};
    std::atomic<std::int64_t> running_since{0};
  };

  /// A job that ended without an answer, to be failed outside the lock.
  struct Failure {
    std::unique_ptr<Job> job;
    std::exception_ptr error;
  };

  // ---- start-up -------------------------------------------------------------------------

  /// Starts every worker and waits until each is ready or has failed to start.
  void start_all() {
    std::vector<char> settled(size(), 0);
    std::vector<Death> deaths(size());
    for (unsigned k = 0; k < size(); ++k) transport_->start(k);
    for (unsigned left = size(); left > 0;) {
      for (unsigned k = 0; k < size(); ++k) {
        if (settled[k] != 0) continue;
        const Event e = transport_->poll(k, *this);
        if (e.kind == Event::Kind::ready || e.kind == Event::Kind::died) {
          if (e.kind == Event::Kind::died) deaths[k] = *e.death;
          settled[k] = e.kind == Event::Kind::ready ? 1 : 2;
          --left;
        }
      }
      if (left == 0) break;
      if (const std::string reason = transport_->broken(); !reason.empty()) {
        throw Error("multicore: the pool's fork server died while starting the workers");
      }
      transport_->wait(Clock::now() + std::chrono::milliseconds(100), true);
    }
    for (unsigned k = 0; k < size(); ++k) {
      if (settled[k] == 2) std::rethrow_exception(start_error(deaths[k], false));
      slots_[k].life = Life::ready;
    }
  }

  // ---- sending (under mutex_) -------------------------------------------------------------

  static void stamp_id(Job& job) noexcept {
    std::memcpy(job.request.data() + offsetof(RequestHeader, task_id), &job.id, sizeof job.id);
  }

  bool can_take(unsigned k) const noexcept {
    const Slot& s = slots_[k];
    return s.life == Life::ready && !transport_->sending(k) &&
           !s.corrupt.load(std::memory_order_relaxed) && s.in_flight.size() < bound_.value() &&
           (options_.max_tasks_per_worker == 0 || s.dispatched < options_.max_tasks_per_worker);
  }

  /// The least-loaded worker that can take a job, or -1. Ties go to the worker used last: it
  /// is the one most likely still spinning, so one-at-a-time calls find a hot worker, while a
  /// burst still spreads out because loads differ.
  int pick_slot_locked() noexcept {
    int best = -1;
    const unsigned n = size();
    for (unsigned i = 0; i < n; ++i) {
      const unsigned k = (last_used_ + i) % n;
      if (!can_take(k)) continue;
      const Slot& s = slots_[k];
      if (best < 0 || s.in_flight.size() < slots_[static_cast<unsigned>(best)].in_flight.size()) {
        best = static_cast<int>(k);
        if (s.in_flight.empty()) break;
      }
    }
    if (best >= 0) last_used_ = static_cast<unsigned>(best);
    return best;
  }

  void dispatch_locked() {
    while (!pending_.empty()) {
      if (pending_.front()->completion().abandoned()) {
        pending_.pop_front();
        resolved_locked(1);
        continue;
      }
      const int k = pick_slot_locked();
      if (k < 0) return;
      Slot& s = slots_[static_cast<unsigned>(k)];
      if (!transport_->try_send(static_cast<unsigned>(k), pending_.front()->request.bytes())) {
        return;  // can_take said it could: only a transport that just broke gets here
      }
      s.in_flight.push_back(pending_.pop_front());
      ++s.dispatched;
    }
  }

  // ---- the collector ----------------------------------------------------------------------

  /// Runs on its own thread: reads answers, follows worker lives, enforces timeouts.
  void collect() noexcept {
    auto heartbeat = Clock::now();
    std::vector<Failure> failures;
    while (!stop_.load(std::memory_order_acquire)) {
      bool progressed = false;
      Clock::time_point wake_at = Clock::now() + std::chrono::milliseconds(100);
      try {
        std::lock_guard collecting(collect_mutex_);
        for (unsigned k = 0; k < size(); ++k) progressed |= receive(k, failures);
        {
          std::lock_guard lock(mutex_);
          for (unsigned k = 0; k < size(); ++k) {
            progressed |= transport_->pump(k);
            progressed |= retry_start_locked(k, wake_at);
          }
          enforce_timeouts_locked(wake_at);
          dispatch_locked();
          keep_recycled_locked();
          if (Clock::now() >= heartbeat) {
            heartbeat = Clock::now() + std::chrono::milliseconds(100);
            if (const std::string reason = transport_->broken(); !reason.empty()) {
              transport_lost_locked(reason, failures);
            }
            release_cold_buffers();
          }
        }
        progressed |= !failures.empty();
        fail_all(failures);
      } catch (...) {
        // Only allocation failures can land here; keep going rather than lose every job.
        std::fputs("multicore: collector: unexpected error, retrying\n", stderr);
      }
      if (!progressed && !stop_.load(std::memory_order_acquire)) {
        // While a call() polls for answers itself, a spinning collector would only take a
        // core from it (or from a worker): sleep instead, and let it collect.
        const bool spin = sync_callers_.load(std::memory_order_relaxed) == 0;
        transport_->wait(wake_at, spin);
      }
    }
  }

  /// Handles every event worker k has for us. Holding collect_mutex_.
  bool receive(unsigned k, std::vector<Failure>& failures) {
    bool progressed = false;
    for (;;) {
      const Event e = transport_->poll(k, *this);
      switch (e.kind) {
        case Event::Kind::none:
          return progressed;
        case Event::Kind::ready:
          started(k);
          break;
        case Event::Kind::running:
          slots_[k].running_since.store(e.since_ns, std::memory_order_relaxed);
          slots_[k].running_task.store(e.task_id, std::memory_order_relaxed);
          break;
        case Event::Kind::answer:
          answered(k, e);
          break;
        case Event::Kind::died: {
          std::lock_guard lock(mutex_);
          bury_locked(k, *e.death, failures);
          break;
        }
      }
      progressed = true;
    }
  }

  void started(unsigned k) {
    std::lock_guard lock(mutex_);
    Slot& s = slots_[k];
    if (s.life != Life::starting) return;
    s.life = Life::ready;
    s.start_failures = 0;
    dispatch_locked();
  }

  /// The job worker k must answer next, taken off the slot if `id` is its id (which frees room
  /// for the next dispatch); otherwise the worker is broken, and nullptr.
  std::unique_ptr<Job> claim_locked(unsigned k, std::uint64_t id) {
    Slot& s = slots_[k];
    if (s.answering) {
      if (s.answering->id == id) return std::move(s.answering);
    } else if (!s.in_flight.empty() && s.in_flight.front()->id == id &&
               !(s.in_flight.size() == 1 && transport_->sending(k))) {
      std::unique_ptr<Job> job = s.in_flight.pop_front();
      dispatch_locked();
      keep_recycled_locked();
      return job;
    }
    mark_corrupt_locked(k);
    return nullptr;
  }

  /// An answer's tail is coming (TailRouter, called from inside poll()): it goes straight into
  /// the result if the job's completion can take it.
  AnswerTail* open_tail(unsigned k, std::uint64_t task_id, std::span<const std::byte> head,
                        std::uint64_t tail_bytes) noexcept override {
    Slot& s = slots_[k];
    Job* job = nullptr;
    try {
      std::lock_guard lock(mutex_);
      if (s.corrupt.load(std::memory_order_relaxed)) return nullptr;
      if (!s.answering) s.answering = claim_locked(k, task_id);
      job = s.answering.get();
    } catch (...) {  // no memory to dispatch: the answer is assembled instead
      return nullptr;
    }
    return job == nullptr ? nullptr : job->completion().open_tail(head, tail_bytes);
  }

  /// Worker k answered: resolve the job (outside mutex_: completions run user code).
  void answered(unsigned k, const Event& e) {
    Slot& s = slots_[k];
    std::unique_ptr<Job> job;
    {
      std::lock_guard lock(mutex_);
      if (s.corrupt.load(std::memory_order_relaxed)) return;
      job = claim_locked(k, e.task_id);
      if (!job) return;
      bound_.observe(e.run_nanos);
    }
    s.running_task.store(0, std::memory_order_relaxed);
    if (e.tail != nullptr) {
      e.tail->deliver_tail(e.run_nanos);
    } else {
      Reader reader(e.payload);
      job->completion().deliver(reader, e.run_nanos);
    }
    finish(std::move(job));
  }

  /// Resolves the bookkeeping of an answered job and recycles it.
  void finish(std::unique_ptr<Job> job) {
    if (job->request.capacity() > Job::max_kept_bytes) {
      std::lock_guard lock(spare_mutex_);
      if (job->request.capacity() > spare_request_.capacity()) {
        spare_request_ = std::move(job->request);
        keep_warm(spare_request_, spare_used_);
      }
    }
    job->recycle();
    // Kept by this thread first: a call() that received its own answer reuses the job for
    // its next call without taking mutex_.
    if (std::unique_ptr<Job>& cached = cached_job(); !cached) {
      cached = std::move(job);
    } else {
      recycled_.push_back(std::move(job));
    }
    resolved(1);
  }

  template <class Done, class Sleep>
  void help_until(Done&& done, Sleep&& sleep) noexcept {
    SpinBudget& budget = caller_spin();
    const bool caught = budget.spin([&] {
      if (done()) return true;
      // Look with plain loads first; lock only when there is something.
      bool news = false;
      for (unsigned k = 0; k < size() && !news; ++k) news = transport_->may_have_events(k);
      if (news && collect_mutex_.try_lock()) {
        std::vector<Failure> failures;
        try {
          for (unsigned k = 0; k < size(); ++k) receive(k, failures);
        } catch (...) {
          // Out of memory while receiving: the collector will retry; we just wait.
        }
        collect_mutex_.unlock();
        if (!failures.empty()) fail_all(failures);
      }
      return done();
    });
    // From here the collector collects again. Answers that workers published without ringing
    // (we were polling) belong to jobs still outstanding: wake it if there are any.
    transport_->callers_polling(-1);
    sync_callers_.fetch_sub(1, std::memory_order_relaxed);
    if (outstanding_.load(std::memory_order_acquire) > (done() ? 0 : 1)) transport_->wake();
    if (caught) {
      budget.learn(std::chrono::nanoseconds{0});
    } else if (!done()) {
      const auto start = Clock::now();
      sleep();
      budget.learn(Clock::now() - start);
    }
  }

  std::unique_ptr<Job> recycled_job() {
    if (std::unique_ptr<Job>& cached = cached_job()) return std::move(cached);
    {
      std::lock_guard lock(mutex_);
      if (!spare_jobs_.empty()) {
        std::unique_ptr<Job> job = std::move(spare_jobs_.back());
        spare_jobs_.pop_back();
        return job;
      }
    }
    return std::make_unique<Job>();
  }

  // Large request buffers stay allocated, their pages mapped, for `warm_for` after their last
  // use, up to `max_warm_bytes`: back-to-back large payloads then skip re-faulting them, which
  // costs more than copying them. The heartbeat gives back what was not used meanwhile.
  static constexpr std::size_t max_warm_bytes = WarmBuffer::max_warm_bytes;
  static constexpr auto warm_for = WarmBuffer::warm_for;

  static void keep_warm(Writer& buffer, Clock::time_point& used) noexcept {
    buffer.clear(max_warm_bytes);
    if (buffer.capacity() > Job::max_kept_bytes) used = Clock::now();
  }

  /// Gives back large buffers unused for `warm_for`. Collector thread, holding collect_mutex_.
  void release_cold_buffers() noexcept {
    transport_->release_cold_buffers();
    std::lock_guard lock(spare_mutex_);
    if (spare_request_.capacity() > 0 && spare_used_ < Clock::now() - warm_for) {
      spare_request_ = Writer();
    }
  }

  /// Moves jobs finished by the collector to the free list new_job() takes from.
  void keep_recycled_locked() {
    for (auto& job : recycled_) {
      if (spare_jobs_.size() >= max_spare_jobs) break;
      spare_jobs_.push_back(std::move(job));
    }
    recycled_.clear();
  }

  void mark_corrupt_locked(unsigned k) noexcept {
    Slot& s = slots_[k];
    if (s.corrupt.exchange(true, std::memory_order_relaxed)) return;
    transport_->kill(k);
  }

  /// Worker k is dead: fail the job it was running, requeue the others, and replace it.
  void bury_locked(unsigned k, const Death& death, std::vector<Failure>& failures) {
    Slot& s = slots_[k];
    if (s.life == Life::starting) {
      // Died before it was ready (in on_worker_start, say, or no process could be made):
      // retrying at once would fork as fast as it dies. Back off like any start failure.
      forget_process_locked(k);
      start_failed_locked(k, start_error(death, true), failures);
      return;
    }
    // Every job this worker still owes an answer, oldest first: one whose tail was arriving
    // (if any), then the rest in the order they were sent.
    std::vector<std::unique_ptr<Job>> owed;
    if (s.answering) owed.push_back(std::move(s.answering));
    while (!s.in_flight.empty()) owed.push_back(s.in_flight.pop_front());
    // The culprit is the job the worker had claimed. A worker that broke the protocol without
    // a claim left the oldest answer unreadable: blaming that one guarantees progress.
    auto culprit = std::find_if(owed.begin(), owed.end(),
                                [&](const auto& job) { return job->id == death.running; });
    const bool corrupt =
        s.corrupt.load(std::memory_order_relaxed) || death.cause == Death::Cause::violation;
    if (culprit == owed.end() && corrupt && !owed.empty()) culprit = owed.begin();
    if (culprit != owed.end()) {
      std::exception_ptr error;
      if (s.timed_out_task == (*culprit)->id) {
        error = timeout_error(death);
      } else if (corrupt) {
        error = std::make_exception_ptr(worker_lost(
            death, "after sending a corrupt or truncated answer; it was stopped and replaced"));
      } else if (s.timed_out_task == 0) {
        error = std::make_exception_ptr(worker_lost(death, "while running this task"));
      }
      // Otherwise we killed it for a task that finished just before: this one did nothing
      // wrong and runs again.
      if (error) {
        failures.push_back({std::move(*culprit), std::move(error)});
        owed.erase(culprit);
      }
    }
    // The rest never ran, or ran but their answers cannot be read any more: back to the head
    // of the queue, in their original order.
    for (auto job = owed.rbegin(); job != owed.rend(); ++job) pending_.push_front(std::move(*job));
    forget_process_locked(k);
    if (s.life == Life::stopping || s.life == Life::stopped || (closed_ && pending_.empty())) {
      s.life = Life::stopped;
      changed_.notify_all();
      return;
    }
    if (death.cause == Death::Cause::start_failed) {  // on_worker_start threw in a replacement
      start_failed_locked(k, start_error(death, true), failures);
      return;
    }
    respawn_locked(k);
  }

  std::exception_ptr timeout_error(const Death& death) const {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(options_.task_timeout);
    return std::make_exception_ptr(
        TaskTimeout("multicore: the task ran longer than task_timeout (" +
                    std::to_string(ms.count()) + " ms); its worker process " +
                    std::to_string(death.pid) + death.where + " was killed and replaced"));
  }

  void forget_process_locked(unsigned k) noexcept {
    Slot& s = slots_[k];
    s.dispatched = 0;
    s.timed_out_task = 0;
    s.corrupt.store(false, std::memory_order_relaxed);
    s.running_task.store(0, std::memory_order_relaxed);
    s.running_since.store(0, std::memory_order_relaxed);
  }

  void respawn_locked(unsigned k) {
    Slot& s = slots_[k];
    s.life = Life::starting;
    transport_->start(k);
  }

  /// A worker could not be started. Try again later (backing off); meanwhile, if no worker at
  /// all can run the queue, fail it rather than let it wait forever.
  void start_failed_locked(unsigned k, std::exception_ptr error, std::vector<Failure>& failures) {
    Slot& s = slots_[k];
    s.start_failures = std::min(s.start_failures + 1, 10u);
    s.life = Life::backoff;
    s.retry_at = Clock::now() + std::chrono::milliseconds(10) * (1u << (s.start_failures - 1));
    const bool any_worker = std::any_of(slots_.begin(), slots_.end(), [](const Slot& o) {
      return o.life == Life::ready || o.life == Life::starting;
    });
    if (any_worker) return;
    while (!pending_.empty()) failures.push_back({pending_.pop_front(), error});
  }

  /// Retries starting slot k once its backoff has passed. Collector thread, under mutex_.
  bool retry_start_locked(unsigned k, Clock::time_point& wake_at) {
    Slot& s = slots_[k];
    if (s.life != Life::backoff || (closed_ && pending_.empty())) return false;
    if (Clock::now() >= s.retry_at) {
      respawn_locked(k);
      return true;
    }
    wake_at = std::min(wake_at, s.retry_at);
    return false;
  }

  /// Kills the worker whose task overran task_timeout. Collector thread, under mutex_.
  void enforce_timeouts_locked(Clock::time_point& wake_at) {
    if (options_.task_timeout.count() <= 0) return;
    const auto now_ns = steady_now_ns();
    for (unsigned k = 0; k < size(); ++k) {
      Slot& s = slots_[k];
      if (s.life != Life::ready || s.timed_out_task != 0 ||
          s.corrupt.load(std::memory_order_relaxed)) {
        continue;
      }
      const std::uint64_t running = s.running_task.load(std::memory_order_relaxed);
      const std::int64_t since = s.running_since.load(std::memory_order_relaxed);
      if (running == 0 || since == 0) continue;
      const std::int64_t deadline = since + options_.task_timeout.count();
      if (now_ns >= deadline) {
        s.timed_out_task = running;
        transport_->kill(k);
      } else {
        wake_at = std::min(wake_at, Clock::now() + std::chrono::nanoseconds(deadline - now_ns));
      }
    }
  }

  /// The machinery behind the workers is gone (the fork server was killed from outside): its
  /// workers died with it and no replacement can be made. Everything unresolved fails; the
  /// pool refuses new work.
  void transport_lost_locked(const std::string& reason, std::vector<Failure>& failures) {
    mark_closed_locked(reason.c_str());
    auto lost = [&] { return std::make_exception_ptr(WorkerLost(closed_reason_, SIGKILL, -1)); };
    for (Slot& s : slots_) {
      if (s.answering) failures.push_back({std::move(s.answering), lost()});
      while (!s.in_flight.empty()) failures.push_back({s.in_flight.pop_front(), lost()});
      s.life = Life::stopped;
    }
    // Never sent, so not lost by a worker: the pool closed under them.
    const auto closed = std::make_exception_ptr(PoolClosed(closed_reason_));
    while (!pending_.empty()) failures.push_back({pending_.pop_front(), closed});
    changed_.notify_all();
  }

  void fail_all(std::vector<Failure>& failures) noexcept {
    for (Failure& f : failures) f.job->completion().fail(f.error);
    const std::size_t n = failures.size();
    failures.clear();
    resolved(n);
  }

  /// `n` jobs got their answer or error; wakes a shutdown waiting for the last one.
  void resolved(std::size_t n) noexcept {
    if (n == 0) return;
    // Only a closing pool waits for the count to reach zero: skip the lock otherwise. closing_
    // is set before that wait checks the count, under mutex_, so the last job cannot miss it.
    if (outstanding_.fetch_sub(n, std::memory_order_seq_cst) == n &&
        closing_.load(std::memory_order_seq_cst)) {
      std::lock_guard lock(mutex_);  // pairs with the waiter's predicate check
      changed_.notify_all();
    }
  }

  void resolved_locked(std::size_t n) noexcept {
    if (outstanding_.fetch_sub(n, std::memory_order_acq_rel) == n) changed_.notify_all();
  }

  /// One recycled job per thread, outside any lock. Jobs belong to no pool in particular.
  static std::unique_ptr<Job>& cached_job() noexcept {
    thread_local std::unique_ptr<Job> job;
    return job;
  }

  /// Each calling thread learns its own spin budget (tasks differ by caller).
  static SpinBudget& caller_spin() noexcept {
    thread_local SpinBudget budget;
    return budget;
  }

  // ---- closing ----------------------------------------------------------------------------

  void mark_closed_locked(const std::string& reason) {
    if (!closed_) closed_reason_ = reason;
    closed_ = true;
    closing_.store(true, std::memory_order_seq_cst);
  }

  void close(bool hard) noexcept {
    std::lock_guard close_lock(close_mutex_);
    if (finished_) return;
    {
      std::unique_lock lock(mutex_);
      mark_closed_locked("multicore: the pool is shut down; no new tasks are accepted");
      if (!hard) {
        changed_.wait(lock, [&] {
          return terminating_ || outstanding_.load(std::memory_order_seq_cst) == 0;
        });
        hard = terminating_;
      }
      if (!hard) stop_workers_locked(lock);
    }
    stop_.store(true, std::memory_order_release);
    transport_->wake();
    if (collector_.joinable()) collector_.join();
    std::vector<Failure> failures;
    {
      std::lock_guard collecting(collect_mutex_);  // a call() may be receiving
      std::lock_guard lock(mutex_);
      auto closed = std::make_exception_ptr(
          PoolClosed("multicore: the pool was terminated before this task finished"));
      for (Slot& s : slots_) {
        if (s.answering) failures.push_back({std::move(s.answering), closed});
        while (!s.in_flight.empty()) failures.push_back({s.in_flight.pop_front(), closed});
      }
      while (!pending_.empty()) {
        std::unique_ptr<Job> job = pending_.pop_front();
        if (!job->completion().abandoned()) failures.push_back({std::move(job), closed});
      }
    }
    fail_all(failures);
    transport_->close();
    finished_ = true;
  }

  /// Asks every worker to exit once its queue is empty, and waits (bounded) until they have.
  void stop_workers_locked(std::unique_lock<std::mutex>& lock) {
    for (unsigned k = 0; k < size(); ++k) {
      Slot& s = slots_[k];
      // Nothing is in flight any more, so the transport takes the request at once.
      if ((s.life == Life::ready || s.life == Life::starting) && transport_->try_stop(k)) {
        s.life = Life::stopping;
      } else if (s.life != Life::stopping) {
        s.life = Life::stopped;
      }
    }
    transport_->wake();
    changed_.wait_for(lock, std::chrono::seconds(2), [&] {
      return std::all_of(slots_.begin(), slots_.end(),
                         [](const Slot& s) { return s.life == Life::stopped; });
    });
  }

  std::unique_ptr<Transport> transport_;
  SchedulerOptions options_;

  std::mutex mutex_;  // guards everything below except where noted
  std::condition_variable changed_;
  std::vector<Slot> slots_;
  RingQueue<std::unique_ptr<Job>> pending_;
  std::uint64_t last_id_ = 0;
  unsigned last_used_ = 0;
  InFlightBound bound_;
  static constexpr std::size_t max_spare_jobs = 1024;
  std::mutex spare_mutex_;  // guards the two below
  Writer spare_request_;    // a large request buffer kept warm for the next large request
  Clock::time_point spare_used_{};
  std::vector<std::unique_ptr<Job>> spare_jobs_;
  std::vector<std::unique_ptr<Job>> recycled_;  // under collect_mutex_
  bool closed_ = false;
  bool terminating_ = false;
  std::string closed_reason_;

  std::atomic<std::size_t> outstanding_{0};  // submitted, not yet answered or failed
  std::atomic<bool> closing_{false};         // closed_, readable without mutex_
  std::atomic<bool> stop_{false};
  std::atomic<unsigned> sync_callers_{0};  // call()s polling in help_until
  // Guards the receive side of the transport (poll) and recycled_: the collector thread holds
  // it for each pass; a call() takes it when it can.
  std::mutex collect_mutex_;
  std::thread collector_;
  std::mutex close_mutex_;
  bool finished_ = false;
};

}  // namespace multicore::detail
