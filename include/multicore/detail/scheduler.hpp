// SPDX-License-Identifier: MIT
// Jobs, dispatch to the least-loaded worker, the collector thread, and what happens to every
// job when a worker dies, hangs, lies or the pool closes.
#pragma once

#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
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
#include <type_traits>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../errors.hpp"
#include "queue.hpp"
#include "transport.hpp"
#include "wire.hpp"

namespace multicore::detail {

/// Receives the tail of an answer (see wire.hpp) piece by piece, straight into the result.
class AnswerTail {
 public:
  /// The next bytes of the tail; never more than were announced to open_tail().
  virtual void append(std::span<const std::byte> bytes) noexcept = 0;
  /// The whole tail arrived: the result is complete.
  virtual void deliver_tail(std::uint64_t run_nanos) noexcept = 0;

 protected:
  ~AnswerTail() = default;
};

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

/// The longest task timeout the scheduler keeps (2^62 ns, about 146 years): longer ones mean
/// the same, practically never. It keeps every deadline, a steady-clock reading (nanoseconds
/// since boot) plus the timeout, far inside int64.
inline constexpr std::chrono::nanoseconds max_task_timeout{std::int64_t{1} << 62};

/// How long a worker may go on running a job of an abandoned map before it is killed and
/// replaced. Automatic chunks aim at about 0.5 ms, so they end well within it and cost no
/// respawn (a fork and on_worker_start); only long ones, whose answers nobody wants, are cut
/// off, so that the pool is soon free again for other work.
inline constexpr std::chrono::milliseconds abandon_grace{100};

struct SchedulerOptions {
  std::chrono::nanoseconds task_timeout{0};  ///< 0: none; at most max_task_timeout
  std::size_t max_tasks_per_worker = 0;      ///< 0: unlimited
};

/// How many jobs a worker may hold at once (one running, the rest queued in its ring). Long
/// tasks get a shallow queue, so uneven work balances across workers; short ones a deep queue,
/// so a worker never idles waiting for the parent to send the next one. The bound aims at
/// about 100 us of queued work per worker.
class InFlightBound {
 public:
  static constexpr std::size_t min_jobs = 2;
  static constexpr std::size_t max_jobs = max_jobs_in_flight;

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

inline std::string describe_exit(int pid, int wait_status) {
  const std::string who = "multicore: worker process " + std::to_string(pid);
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* name = strsignal(sig);
    return who + " was killed by signal " + std::to_string(sig) + " (" +
           (name != nullptr ? name : "unknown") + ")";
  }
  return who + " exited with code " + std::to_string(WEXITSTATUS(wait_status));
}

inline WorkerLost worker_lost(int pid, int wait_status, const std::string& what) {
  const bool signalled = WIFSIGNALED(wait_status);
  return WorkerLost(describe_exit(pid, wait_status) + " " + what,
                    signalled ? WTERMSIG(wait_status) : 0,
                    signalled ? -1 : WEXITSTATUS(wait_status));
}

class Scheduler {
 public:
  /// Starts every worker and waits until each has run on_worker_start. Throws SystemError if a
  /// process cannot be forked, Error if a worker fails to start; nothing is left running then.
  Scheduler(std::unique_ptr<Transport> transport, SchedulerOptions options)
      : transport_(std::move(transport)), options_(options), slots_(transport_->size()) {
    start_all();
    pending_check_ = [this] { return has_news(); };
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
  /// calling thread reads the rings itself (whoever holds collect_mutex_ receives), so its own
  /// answer reaches it without a hand-off through the collector thread. Spins while that pays,
  /// then sleeps in `sleep` and lets the collector deliver.
  template <class Done, class Sleep>
  void call(std::unique_ptr<Job> job, Done&& done, Sleep&& sleep) {
    // Announce the polling first: an answer that comes back at once must not ring the
    // collector awake, to contend with us for collect_mutex_.
    sync_callers_.fetch_add(1, std::memory_order_relaxed);
    transport_->polling(+1);
    try {
      submit(std::move(job));
    } catch (...) {
      transport_->polling(-1);
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
    transport_->polling(+1);
    help_until(done, sleep);
  }

 private:
  template <class Done, class Sleep>
  void help_until(Done&& done, Sleep&& sleep) noexcept {
    SpinBudget& budget = caller_spin();
    const bool caught = budget.spin([&] {
      if (done()) return true;
      // Poll with plain loads of the shared indices; lock only when there is something.
      bool bytes = false;
      for (unsigned k = 0; k < size() && !bytes; ++k) bytes = transport_->has_bytes(k);
      if (bytes && collect_mutex_.try_lock()) {
        try {
          for (unsigned k = 0; k < size(); ++k) receive(k);
        } catch (...) {
          // Out of memory while receiving: the collector will retry; we just wait.
        }
        collect_mutex_.unlock();
      }
      return done();
    });
    // From here the collector collects again. Answers that workers published without ringing
    // (we were polling) belong to jobs still outstanding: wake it if there are any.
    transport_->polling(-1);
    sync_callers_.fetch_sub(1, std::memory_order_relaxed);
    if (outstanding_.load(std::memory_order_acquire) > (done() ? 0 : 1)) {
      kick_.store(true, std::memory_order_relaxed);
      transport_->wake();
    }
    if (caught) {
      budget.learn(std::chrono::nanoseconds{0});
    } else if (!done()) {
      const auto start = std::chrono::steady_clock::now();
      sleep();
      budget.learn(std::chrono::steady_clock::now() - start);
    }
  }

 private:
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

 public:
  /// Some jobs' completions now say abandoned() (a map was abandoned): nobody wants their
  /// answers. Those still in the parent are dropped as dispatch comes to them; those sent but
  /// not started are cancelled (the worker skips them); a worker still running one after
  /// abandon_grace is killed and replaced. Thread-safe.
  void abandon() noexcept {
    {
      std::lock_guard lock(mutex_);
      const Clock::time_point check_at = Clock::now() + abandon_grace;
      for (unsigned k = 0; k < size(); ++k) {
        Slot& s = slots_[k];
        const std::uint64_t running = transport_->running(k, nullptr);
        // in_flight holds the last jobs sent to this process, in order: the front one's position
        // in the worker's stream of jobs is this.
        const std::size_t first = s.dispatched - s.in_flight.size();
        bool any = false;
        for (std::size_t i = 0; i < s.in_flight.size(); ++i) {
          Job& job = *s.in_flight[i];
          if (!job.completion().abandoned()) continue;
          any = true;
          if (job.id != running) transport_->cancel(k, first + i, job.id);
        }
        // Checked then whatever runs: a job whose cancellation came too late runs by now.
        if (any) s.cut_off_at = std::min(s.cut_off_at, check_at);
      }
    }
    kick_.store(true, std::memory_order_relaxed);
    transport_->wake();
  }

  /// Stops accepting, continues workers stopped from outside, waits for every submitted job to
  /// resolve, stops the workers. Bounded once the work is done: workers that do not stop in
  /// time are killed.
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
  static_assert(std::is_same_v<Clock::duration, std::chrono::nanoseconds>,
                "deadlines compare the collector's clock with the workers' steady_now_ns()");

  enum class Life {
    starting,  ///< asked for a process, not ready yet
    ready,     ///< can take jobs
    backoff,   ///< could not be (re)started; retry at retry_at
    stopping,  ///< told to stop (graceful shutdown)
    stopped,   ///< gone for good
  };

  /// An answer being read from a worker (by whoever holds collect_mutex_).
  struct Assembly {
    ResponseHeader header{};
    std::size_t header_got = 0;
    Writer payload;
    std::uint64_t wanted = 0;    // payload bytes to assemble: all, or those before the tail
    AnswerTail* tail = nullptr;  // where the tail goes, once open
    std::uint64_t tail_left = 0;
    std::unique_ptr<Job> job;  // claimed once the header checked out

    /// Ready for the next answer; returns the job of this one.
    std::unique_ptr<Job> reset() noexcept {
      header_got = 0;
      payload.clear();
      wanted = 0;
      tail = nullptr;
      tail_left = 0;
      return std::move(job);
    }
  };

  struct Slot {
    Life life = Life::starting;
    RingQueue<std::unique_ptr<Job>> in_flight;  // sent or being sent, oldest first
    std::size_t sent = 0;                       // bytes of in_flight.back() already written
    bool partial = false;                       // in_flight.back() is not fully written yet
    std::size_t dispatched = 0;                 // jobs given to this process
    // We killed the process because this task overran (task_timeout, or abandon_grace), or
    // because it was stopped, holding jobs but running none (stopped_idle).
    std::uint64_t timed_out_task = 0;
    // When to kill the process if it is still running a job of an abandoned map.
    Clock::time_point cut_off_at = Clock::time_point::max();
    // The process broke the protocol; it is being killed. Set under mutex_ (by whoever sends
    // or receives), read by receive() under collect_mutex_ only: hence atomic.
    std::atomic<bool> corrupt{false};
    unsigned start_failures = 0;
    Clock::time_point retry_at{};
    // Under collect_mutex_ (the collector thread, or a call() helping):
    Assembly assembly;
    Clock::time_point assembly_used{};  // last use of a large assembly buffer
    std::uint64_t answers_received = 0;
    SlotState seen = SlotState::spawning;
  };

  /// A job that ended without an answer, to be failed outside the lock.
  struct Failure {
    std::unique_ptr<Job> job;
    std::exception_ptr error;
  };

  // ---- start-up -------------------------------------------------------------------------

  void start_all() {
    for (unsigned k = 0; k < size(); ++k) transport_->spawn(k);
    const auto all_settled = [this] {
      for (unsigned k = 0; k < size(); ++k) {
        if (transport_->state(k) == SlotState::spawning) return false;
      }
      return true;
    };
    while (!all_settled()) {
      transport_->wait(all_settled, std::chrono::milliseconds(100), true);
      if (!all_settled() && !transport_->alive()) {
        throw Error("multicore: the pool's fork server died while starting the workers");
      }
    }
    for (unsigned k = 0; k < size(); ++k) {
      const WorkerStatus st = transport_->status(k);
      if (st.state == SlotState::ready) {
        slots_[k].life = Life::ready;
        slots_[k].seen = SlotState::ready;
        continue;
      }
      if (st.state == SlotState::spawn_failed) throw SystemError("fork", st.spawn_errno);
      if (st.start_failed) throw Error("multicore: on_worker_start threw: " + st.start_error);
      throw Error(describe_exit(st.pid, st.wait_status) + " while starting (in on_worker_start)");
    }
  }

  // ---- sending (under mutex_) -------------------------------------------------------------

  static void stamp_id(Job& job) noexcept {
    std::memcpy(job.request.data() + offsetof(RequestHeader, task_id), &job.id, sizeof job.id);
  }

  bool can_take(const Slot& s) const noexcept {
    return s.life == Life::ready && !s.partial && !s.corrupt.load(std::memory_order_relaxed) &&
           s.in_flight.size() < bound_.value() &&
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
      const Slot& s = slots_[k];
      if (!can_take(s)) continue;
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
      watch_deadlines_locked();
      s.in_flight.push_back(pending_.pop_front());
      ++s.dispatched;
      s.sent = 0;
      s.partial = true;
      pump_locked(static_cast<unsigned>(k));
    }
  }

  /// Writes more of the slot's last job; a payload larger than the ring goes in pieces as the
  /// worker makes room.
  bool pump_locked(unsigned k) noexcept {
    Slot& s = slots_[k];
    if (!s.partial) return false;
    const Writer& request = s.in_flight.back()->request;
    // Sends piece by piece while there is room (the transport takes at most a piece at once).
    const auto send_while_room = [&] {
      std::size_t total = 0;
      while (s.sent < request.size()) {
        const std::size_t n = transport_->send(k, request.bytes().subspan(s.sent));
        if (n == 0) break;
        s.sent += n;
        total += n;
      }
      return total;
    };
    std::size_t n = send_while_room();
    if (s.sent < request.size()) {
      // Announce that we wait for room, then look once more: either we see the room the
      // worker made meanwhile, or the worker sees our flag and rings.
      transport_->want_room(k, true);
      n += send_while_room();
    }
    if (s.sent == request.size()) {
      s.partial = false;
      transport_->want_room(k, false);
    }
    if (transport_->send_corrupt(k)) mark_corrupt_locked(k);
    return n > 0;
  }

  // ---- the collector ----------------------------------------------------------------------

  /// Runs on its own thread: reads answers, follows worker lives, enforces timeouts.
  void collect() noexcept {
    auto heartbeat = Clock::now();
    std::vector<char> died(size());
    std::vector<Failure> failures;
    while (!stop_.load(std::memory_order_acquire)) {
      bool progressed = false;
      Clock::time_point wake_at = Clock::now() + std::chrono::milliseconds(100);
      try {
        std::lock_guard collecting(collect_mutex_);
        // A death is reported only after the process is gone, so whatever it published is
        // already in the ring: look at the states first, then read every ring dry.
        for (unsigned k = 0; k < size(); ++k) {
          died[k] = transport_->state(k) == SlotState::dead ? 1 : 0;
        }
        for (unsigned k = 0; k < size(); ++k) progressed |= receive(k);
        {
          std::lock_guard lock(mutex_);
          for (unsigned k = 0; k < size(); ++k) {
            progressed |= pump_locked(k);
            progressed |= follow_life_locked(k, died[k] != 0, failures, wake_at);
          }
          dispatch_locked();
          enforce_timeouts_locked(wake_at);
          cut_off_abandoned_locked(wake_at);
          keep_recycled_locked();
          if (Clock::now() >= heartbeat) {
            heartbeat = Clock::now() + std::chrono::milliseconds(100);
            if (!transport_->alive()) fork_server_lost_locked(failures);
            release_cold_buffers();
          }
        }
        progressed |= !failures.empty();
        fail_all(failures);
      } catch (...) {
        // Only allocation failures can land here; keep going rather than lose every job.
        std::fputs("multicore: collector: unexpected error, retrying\n", stderr);
      }
      if (!progressed) {
        // While a call() spins on the rings itself, a spinning collector would only take a
        // core from it (or from a worker): sleep instead, and let it collect.
        const bool spin = sync_callers_.load(std::memory_order_relaxed) == 0;
        const auto left = wake_at - Clock::now();
        transport_->wait(pending_check_, std::max<Clock::duration>(left, Clock::duration(1)), spin);
      }
    }
  }

  /// Cheap look for anything the collector must handle (called while it spins or before it
  /// sleeps). Touches no receive state: a call() may be receiving meanwhile.
  bool has_news() noexcept {
    if (stop_.load(std::memory_order_relaxed) || kick_.exchange(false)) return true;
    const bool answers_are_ours = sync_callers_.load(std::memory_order_relaxed) == 0;
    for (unsigned k = 0; k < size(); ++k) {
      if (transport_->state(k) != slots_[k].seen) return true;
      if (answers_are_ours && transport_->has_bytes(k)) return true;
      if (transport_->room_made(k)) return true;
    }
    return false;
  }

  /// Reads every complete answer worker k has published. Holding collect_mutex_.
  bool receive(unsigned k) {
    Slot& s = slots_[k];
    Assembly& a = s.assembly;
    // Read before looking at the bytes: every answer counted here is fully published.
    const std::uint64_t answers_sent = transport_->answers_sent(k);
    bool progressed = false;
    for (;;) {
      if (s.corrupt.load(std::memory_order_relaxed)) return progressed;
      if (transport_->receive_corrupt(k)) {
        mark_corrupt(k);
        return true;
      }
      if (a.job && a.tail == nullptr && a.payload.size() == a.wanted) {
        progressed = true;
        if (a.wanted == a.header.payload_bytes) {
          Reader reader(std::span<const std::byte>(a.payload.bytes()));
          finish(s, [&](Completion& c) { c.deliver(reader, a.header.run_nanos); });
          continue;
        }
        // All before the tail is here: the tail goes straight into the result, if it can.
        a.tail = a.job->completion().open_tail(a.payload.bytes(), a.header.tail_bytes);
        if (a.tail != nullptr) {
          a.tail_left = a.header.tail_bytes;
        } else {
          a.wanted = a.header.payload_bytes;
          start_payload(a);
        }
        continue;
      }
      if (a.job && a.tail != nullptr && a.tail_left == 0) {
        progressed = true;
        AnswerTail& tail = *a.tail;
        finish(s, [&](Completion&) { tail.deliver_tail(a.header.run_nanos); });
        continue;
      }
      const std::span<const std::byte> bytes = transport_->peek(k);
      if (bytes.empty()) {
        if (answers_sent > s.answers_received) {
          mark_corrupt(k);  // it claims answers it never wrote: truncated
          return true;
        }
        return progressed;
      }
      progressed = true;
      if (a.tail != nullptr) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), a.tail_left));
        a.tail->append(bytes.first(n));
        a.tail_left -= n;
        transport_->consume(k, n);
        continue;
      }
      if (a.job) {  // the payload, arriving in pieces
        const auto n = static_cast<std::size_t>(
            std::min<std::uint64_t>(bytes.size(), a.wanted - a.payload.size()));
        a.payload.write(bytes.data(), n);
        transport_->consume(k, n);
        continue;
      }
      if (a.header_got == 0 && bytes.size() >= sizeof(ResponseHeader)) {
        std::memcpy(&a.header, bytes.data(), sizeof a.header);
        if (!claim(k)) return true;
        const std::size_t whole = sizeof(ResponseHeader) + a.header.payload_bytes;
        if (bytes.size() >= whole) {
          // Fast path: the whole answer is contiguous in the ring; decode it in place.
          Reader reader(bytes.subspan(sizeof(ResponseHeader), a.header.payload_bytes));
          finish(s, [&](Completion& c) { c.deliver(reader, a.header.run_nanos); });
          transport_->consume(k, whole);
        } else {
          transport_->consume(k, sizeof(ResponseHeader));
          start_payload(a);
        }
        continue;
      }
      // A header split across the ring's end (or published in pieces).
      const std::size_t n = std::min(bytes.size(), sizeof(ResponseHeader) - a.header_got);
      std::memcpy(reinterpret_cast<std::byte*>(&a.header) + a.header_got, bytes.data(), n);
      a.header_got += n;
      transport_->consume(k, n);
      if (a.header_got == sizeof(ResponseHeader)) {
        if (!claim(k)) return true;
        start_payload(a);
      }
    }
  }

  /// Gets the assembly ready for the payload's bytes (all, or those before a tail).
  static void start_payload(Assembly& a) {
    if (a.wanted == 0) a.wanted = a.header.payload_bytes - a.header.tail_bytes;
    // Untrusted size: reserve a bounded amount up front, grow as bytes really arrive.
    a.payload.reserve(
        static_cast<std::size_t>(std::min<std::uint64_t>(a.wanted, max_unproven_reserve_bytes)));
  }

  /// The header in the assembly is complete: check it against the job this worker must answer
  /// next, and take that job off the slot (which frees room for the next dispatch).
  bool claim(unsigned k) {
    Slot& s = slots_[k];
    std::lock_guard lock(mutex_);
    const bool expected = !s.in_flight.empty() && !(s.partial && s.in_flight.size() == 1) &&
                          is_valid(s.assembly.header, s.in_flight.front()->id);
    if (!expected) {
      mark_corrupt_locked(k);
      return false;
    }
    s.assembly.job = s.in_flight.pop_front();
    // An abandoned job's run time (none, if it was skipped) says nothing about the work to come.
    if (!s.assembly.job->completion().abandoned()) bound_.observe(s.assembly.header.run_nanos);
    dispatch_locked();
    keep_recycled_locked();
    return true;
  }

  /// Resolves the answered job: `deliver(completion)` hands it the answer.
  template <class Deliver>
  void finish(Slot& s, Deliver&& deliver) {
    Assembly& a = s.assembly;
    ++s.answers_received;
    deliver(a.job->completion());  // may read a.payload
    std::unique_ptr<Job> job = a.reset();
    keep_warm(a.payload, s.assembly_used);
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

  // Large buffers (an answer's assembly, a spare request buffer) stay allocated, their pages
  // mapped, for `warm_for` after their last use, up to `max_warm_bytes`: back-to-back large
  // payloads then skip re-faulting them, which costs more than copying them. The heartbeat
  // gives back what was not used meanwhile.
  static constexpr std::size_t max_warm_bytes = std::size_t{256} << 20;
  static constexpr std::chrono::seconds warm_for{1};

  static void keep_warm(Writer& buffer, Clock::time_point& used) noexcept {
    buffer.clear(max_warm_bytes);
    if (buffer.capacity() > Job::max_kept_bytes) used = Clock::now();
  }

  /// Gives back large buffers unused for `warm_for`. Collector thread, holding collect_mutex_.
  void release_cold_buffers() noexcept {
    const auto cold = Clock::now() - warm_for;
    for (Slot& s : slots_) {
      if (s.assembly.payload.capacity() > Job::max_kept_bytes && s.assembly_used < cold &&
          !s.assembly.job) {
        s.assembly.payload.clear(0);
      }
    }
    std::lock_guard lock(spare_mutex_);
    if (spare_request_.capacity() > 0 && spare_used_ < cold) spare_request_ = Writer();
  }

  /// Moves jobs finished by the collector to the free list new_job() takes from.
  void keep_recycled_locked() {
    for (auto& job : recycled_) {
      if (spare_jobs_.size() >= max_spare_jobs) break;
      spare_jobs_.push_back(std::move(job));
    }
    recycled_.clear();
  }

  void mark_corrupt(unsigned k) {
    std::lock_guard lock(mutex_);
    mark_corrupt_locked(k);
  }

  void mark_corrupt_locked(unsigned k) noexcept {
    Slot& s = slots_[k];
    if (s.corrupt.exchange(true, std::memory_order_relaxed)) return;
    transport_->kill(k);
  }

  /// Notices starts, deaths and failed forks of slot k. Collector thread, under mutex_.
  /// `died` is the state read before the ring was last drained (see collect()).
  bool follow_life_locked(unsigned k, bool died, std::vector<Failure>& failures,
                          Clock::time_point& wake_at) {
    Slot& s = slots_[k];
    const SlotState state = transport_->state(k);
    if (s.life == Life::starting && state == SlotState::ready) {
      s.seen = state;
      s.life = Life::ready;
      s.start_failures = 0;
      return true;
    }
    if (died && s.life != Life::stopped && s.life != Life::backoff) {
      s.seen = SlotState::dead;
      bury_locked(k, failures);
      return true;
    }
    if (state == SlotState::spawn_failed && s.life == Life::starting) {
      s.seen = state;
      start_failed_locked(
          k, std::make_exception_ptr(SystemError("fork", transport_->status(k).spawn_errno)),
          failures);
      return true;
    }
    if (state != SlotState::dead) s.seen = state;  // a death waits for the next drain
    if (s.life == Life::backoff && (!closed_ || !pending_.empty())) {
      if (Clock::now() >= s.retry_at) {
        respawn_locked(k);
        return true;
      }
      wake_at = std::min(wake_at, s.retry_at);
    }
    return false;
  }

  /// Worker k is dead: fail the job it was running, requeue the others, and replace it.
  void bury_locked(unsigned k, std::vector<Failure>& failures) {
    Slot& s = slots_[k];
    const WorkerStatus st = transport_->status(k);
    const std::uint64_t running = transport_->running(k, nullptr);
    // Every job this worker still owes an answer, oldest first: one half-read (if any), then
    // the rest in the order they were sent.
    std::vector<std::unique_ptr<Job>> owed;
    if (s.assembly.job) owed.push_back(s.assembly.reset());
    while (!s.in_flight.empty()) owed.push_back(s.in_flight.pop_front());
    // The culprit is the job the worker had claimed. A worker that broke the protocol without
    // a claim left the oldest answer unreadable: blaming that one guarantees progress.
    auto culprit =
        std::find_if(owed.begin(), owed.end(), [&](const auto& job) { return job->id == running; });
    const bool corrupt = s.corrupt.load(std::memory_order_relaxed);
    if (culprit == owed.end() && corrupt && !owed.empty()) culprit = owed.begin();
    if (culprit != owed.end() && (*culprit)->completion().abandoned()) {
      owed.erase(culprit);  // nobody wants its answer, nor to hear how it ended
      resolved_locked(1);
    } else if (culprit != owed.end()) {
      std::exception_ptr error;
      if (s.timed_out_task == (*culprit)->id) {
        error = timeout_error(st);
      } else if (corrupt) {
        error = std::make_exception_ptr(worker_lost(
            st.pid, st.wait_status,
            "after sending a corrupt or truncated answer; it was stopped and replaced"));
      } else if (s.timed_out_task == 0) {
        error =
            std::make_exception_ptr(worker_lost(st.pid, st.wait_status, "while running this task"));
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
    if (s.life == Life::stopping) {
      s.life = Life::stopped;
      changed_.notify_all();
      return;
    }
    if (st.start_failed) {
      start_failed_locked(
          k,
          std::make_exception_ptr(
              Error("multicore: on_worker_start threw in a replacement worker: " + st.start_error)),
          failures);
      return;
    }
    if (s.life == Life::starting) {
      // Died before it was ready (in on_worker_start, say): retrying at once would fork as
      // fast as it dies. Back off like any start failure.
      start_failed_locked(k,
                          std::make_exception_ptr(Error(describe_exit(st.pid, st.wait_status) +
                                                        " while starting (in on_worker_start)")),
                          failures);
      return;
    }
    if (closed_ && pending_.empty()) {
      s.life = Life::stopped;
      changed_.notify_all();
      return;
    }
    respawn_locked(k);
  }

  std::exception_ptr timeout_error(const WorkerStatus& st) const {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(options_.task_timeout);
    return std::make_exception_ptr(TaskTimeout(
        "multicore: the task ran longer than task_timeout (" + std::to_string(ms.count()) +
        " ms); its worker process " + std::to_string(st.pid) + " was killed and replaced"));
  }

  void forget_process_locked(unsigned k) noexcept {
    Slot& s = slots_[k];
    transport_->reset(k);
    s.sent = 0;
    s.partial = false;
    s.dispatched = 0;
    s.timed_out_task = 0;
    s.cut_off_at = Clock::time_point::max();
    s.corrupt.store(false, std::memory_order_relaxed);
    s.assembly.reset();
    s.answers_received = 0;
  }

  void respawn_locked(unsigned k) {
    Slot& s = slots_[k];
    s.life = Life::starting;
    s.seen = SlotState::spawning;
    transport_->spawn(k);
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

  /// Kills the workers whose task overran task_timeout, and plans the collector's next look.
  /// A worker publishes when its task's clock starts (and restarts it after streaming the
  /// argument's tail) without telling anyone, so the collector plans to look again by the
  /// earliest deadline of a running task and, while jobs are in flight or were sent since its
  /// last look, within task_timeout of now: a clock that starts after this look has its deadline
  /// after that. Collector thread, holding collect_mutex_ and mutex_, after dispatching.
  void enforce_timeouts_locked(Clock::time_point& wake_at) {
    if (options_.task_timeout.count() <= 0) return;
    const Clock::time_point now = Clock::now();
    const std::int64_t now_ns = now.time_since_epoch().count();
    // Sent since the last look counts even if answered already: calls in a steady stream then
    // keep the collector watching at its pace, instead of each waking it (watch_deadlines_locked).
    bool holding = sent_since_look_;
    sent_since_look_ = false;
    for (unsigned k = 0; k < size(); ++k) {
      Slot& s = slots_[k];
      // Only a worker that owes answers can overrun: jobs in flight, or an answer still
      // streaming in (its job is in the assembly; the collector thread holds collect_mutex_).
      if (s.life != Life::ready || s.timed_out_task != 0 ||
          (s.in_flight.empty() && !s.assembly.job) || s.corrupt.load(std::memory_order_relaxed)) {
        continue;
      }
      holding = true;
      std::int64_t since = 0;
      const std::uint64_t running = transport_->running(k, &since);
      if (running == 0) since = 0;
      // A worker stopped (SIGSTOP) cannot run its jobs, nor restart its task's clock after
      // streaming: stopped that long, it counts as overrunning too.
      const std::int64_t stopped = transport_->stopped_since_ns(k);
      if (stopped != 0 && (since == 0 || stopped < since)) since = stopped;
      if (since == 0) continue;
      // No overflow: since is nanoseconds since boot, the timeout at most max_task_timeout.
      const std::int64_t deadline = since + options_.task_timeout.count();
      if (now_ns >= deadline) {
        s.timed_out_task = running != 0 ? running : stopped_idle;
        transport_->kill(k);
      } else {
        wake_at = std::min(wake_at, Clock::time_point(std::chrono::nanoseconds(deadline)));
      }
    }
    if (holding) wake_at = std::min(wake_at, now + options_.task_timeout);
    deadlines_watched_ = wake_at <= now + options_.task_timeout;
  }

  /// Kills the workers still running a job of an abandoned map abandon_grace after the
  /// abandonment (see abandon()). Collector thread, under mutex_.
  void cut_off_abandoned_locked(Clock::time_point& wake_at) {
    const Clock::time_point now = Clock::now();
    for (unsigned k = 0; k < size(); ++k) {
      Slot& s = slots_[k];
      // A process being killed or gone is forgotten with its cut_off_at.
      if (s.cut_off_at == Clock::time_point::max() || s.life != Life::ready ||
          s.timed_out_task != 0 || s.corrupt.load(std::memory_order_relaxed)) {
        continue;
      }
      if (now < s.cut_off_at) {
        wake_at = std::min(wake_at, s.cut_off_at);
        continue;
      }
      s.cut_off_at = Clock::time_point::max();
      const std::uint64_t running = transport_->running(k, nullptr);
      for (std::size_t i = 0; i < s.in_flight.size(); ++i) {
        Job& job = *s.in_flight[i];
        if (job.id == running && job.completion().abandoned()) {
          s.timed_out_task = running;
          transport_->kill(k);
          break;
        }
      }
    }
  }

  /// A job goes to a worker. If the collector planned to sleep longer than task_timeout (no job
  /// was in flight at its last look, and the timeout is shorter than its heartbeat), it could
  /// miss the job's deadline: wake it to plan again. At most once per look, and only in pools
  /// with a timeout.
  void watch_deadlines_locked() noexcept {
    if (options_.task_timeout.count() <= 0) return;
    sent_since_look_ = true;
    if (deadlines_watched_) return;
    deadlines_watched_ = true;
    kick_.store(true, std::memory_order_relaxed);
    transport_->wake();
  }

  static constexpr std::uint64_t stopped_idle = ~std::uint64_t{0};  // no task has this id

  /// The fork server is gone (killed from outside): its workers died with it and no
  /// replacement can be made. Everything unresolved fails; the pool refuses new work.
  void fork_server_lost_locked(std::vector<Failure>& failures) {
    mark_closed_locked(
        "multicore: the pool's fork server died, so the pool can no longer run tasks");
    auto lost = [](const std::string& what) {
      return std::make_exception_ptr(WorkerLost(what, SIGKILL, -1));
    };
    for (Slot& s : slots_) {
      if (s.assembly.job) {
        failures.push_back({s.assembly.reset(), lost(closed_reason_)});
      }
      while (!s.in_flight.empty()) {
        failures.push_back({s.in_flight.pop_front(), lost(closed_reason_)});
      }
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

  void mark_closed_locked(const char* reason) {
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
        // Waiting for the work, like joining a thread, waits as long as a task runs; a worker
        // stopped from outside (SIGSTOP) would make that for ever.
        transport_->resume();
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
        if (s.assembly.job) failures.push_back({s.assembly.reset(), closed});
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
    RequestHeader stop;
    stop.kind = RequestKind::stop;
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(&stop), sizeof stop);
    for (unsigned k = 0; k < size(); ++k) {
      Slot& s = slots_[k];
      if (s.life == Life::ready || s.life == Life::starting) {
        // Nothing is in flight any more, so the request ring has room for this.
        if (transport_->send(k, bytes) == bytes.size()) {
          s.life = Life::stopping;
          continue;
        }
      }
      if (s.life != Life::stopping) s.life = Life::stopped;
    }
    kick_.store(true, std::memory_order_relaxed);
    transport_->wake();
    changed_.wait_for(lock, std::chrono::seconds(2), [&] {
      return std::all_of(slots_.begin(), slots_.end(),
                         [](const Slot& s) { return s.life == Life::stopped; });
    });
  }

  std::unique_ptr<Transport> transport_;
  SchedulerOptions options_;

  std::mutex mutex_;  // guards everything below except the collector-only fields
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
  // The collector's planned wake-up comes before the deadline of any job sent from now on.
  bool deadlines_watched_ = false;
  bool sent_since_look_ = false;  // a job was sent since enforce_timeouts_locked last ran
  std::string closed_reason_;

  std::atomic<std::size_t> outstanding_{0};  // submitted, not yet answered or failed
  std::atomic<bool> closing_{false};         // closed_, readable without mutex_
  std::atomic<bool> stop_{false};
  std::atomic<bool> kick_{false};
  std::atomic<unsigned> sync_callers_{0};  // call()s spinning in wait_helping
  // Guards what receiving touches (assemblies, the response rings' read side, recycled_): the
  // collector thread holds it for each pass; a call() takes it when it can.
  std::mutex collect_mutex_;
  std::function<bool()> pending_check_;
  std::thread collector_;
  std::mutex close_mutex_;
  bool finished_ = false;
};

}  // namespace multicore::detail
