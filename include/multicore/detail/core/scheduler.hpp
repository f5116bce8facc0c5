// SPDX-License-Identifier: MIT
// The scheduler: accepts jobs, runs the collector thread that turns transport events into
// resolved jobs, and closes the pool; dispatch, supervision and job recycling are its parts.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../../errors.hpp"
#include "../../stats.hpp"
#include "../../stop.hpp"
#include "../transport/transport.hpp"
#include "../util/process.hpp"
#include "../util/spin.hpp"
#include "../util/threads.hpp"
#include "../util/vector_cache.hpp"
#include "dispatch.hpp"
#include "job.hpp"
#include "job_pool.hpp"
#include "publisher.hpp"
#include "supervisor.hpp"

namespace multicore::detail {

struct SchedulerOptions {
  std::chrono::nanoseconds task_timeout{0};  ///< 0: none
  std::size_t max_tasks_per_worker = 0;      ///< 0: unlimited
};

/// Runs jobs on a transport's workers and resolves every one exactly once: with its answer, or
/// with an error when its worker dies, it times out, or the pool closes.
///
/// Locks, always taken in this order:
///  - collect_mutex_: the receive side of the transport (poll). The collector thread holds it
///    for each pass; a thread waiting in call() or help() takes it when it can and receives
///    its own answers without a hand-off;
///  - mutex_ (the scheduling lock): dispatch_, supervisor_, closing state; submitters take it;
///  - the job pool's own lock (innermost).
/// Completions run with no scheduling lock held (they run user code: Codec decoders,
/// promises), but under collect_mutex_: the thread running them cannot wait for an answer of
/// this scheduler, which only it could read (submit() refuses it).
class Scheduler final : private TailRouter, private StopListener {
 public:
  /// Starts every worker and waits until each has run on_worker_start. Throws SystemError if a
  /// process cannot be forked, Error if a worker fails to start; nothing is left running then.
  Scheduler(std::unique_ptr<Transport> transport, SchedulerOptions options);
  /// Shuts down, then waits for terminate() calls still running on other threads (a watchdog
  /// ending the wait for a hung task): they use the members until they return.
  ~Scheduler() {
    stop_listeners().remove(this);
    shutdown();
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return terminate_calls_ == 0; });
  }
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  unsigned size() const noexcept { return transport_->size(); }

  /// A job to fill in and submit() (see JobPool::take). Thread-safe.
  std::unique_ptr<Job> new_job(std::size_t size_hint = 0) { return jobs_.take(size_hint); }

  /// Storage kept for maps' chunks, from one map to the next (see VectorCache).
  std::shared_ptr<VectorCache> vectors() const noexcept { return vectors_; }

  /// Queues a job (request encoded, completion set) and sends it if a worker has room.
  /// Thread-safe. Throws PoolClosed once the pool is closing (the job is then destroyed
  /// without its completion being called).
  void submit(std::unique_ptr<Job> job);

  /// Submits a job and waits until `done` holds, helping to collect answers meanwhile: the
  /// calling thread polls the transport itself, so its own answer reaches it without a hand-off
  /// through the collector thread. Spins while that pays, then sleeps in `sleep` and lets the
  /// collector deliver.
  template <class Done, class Sleep>
  void call(std::unique_ptr<Job> job, Done&& done, Sleep&& sleep);

  /// Waits until `done` holds, helping to collect answers as call() does (for jobs submitted
  /// earlier: Task::get, a map waiting for its next chunk).
  template <class Done, class Sleep>
  void help(Done&& done, Sleep&& sleep) noexcept;

  /// Some jobs' completions now say abandoned() (a map was abandoned): nobody wants their
  /// answers. Those not sent yet are dropped as dispatch comes to them; those sent but not
  /// started are cancelled (the worker skips them); a worker still running one after
  /// abandon_grace is killed and replaced. Thread-safe.
  void abandon() noexcept;

  /// A StopSource was stopped: its jobs not started fail with Cancelled now (those sent are
  /// skipped by their worker, and their answers dropped); with a `grace`, a worker still
  /// running one then is killed and replaced. Thread-safe; runs on the thread that stopped the
  /// source. (Declared inline, as is open_tail: an override defined out of the class, not
  /// inline where the class is defined, would be the class's key function, and every file that
  /// includes this header would then emit the vtable and, through it, most of the scheduler,
  /// pool or no pool.)
  inline void stop_requested(const StopToken& token,
                             const std::chrono::nanoseconds* grace) noexcept override;

  /// Stops accepting, continues workers stopped from outside, waits for every submitted job to
  /// resolve, stops the workers. Bounded once the work is done: workers that do not stop in
  /// time are killed.
  void shutdown() noexcept { close(false); }
  /// Stops now: unfinished jobs fail with PoolClosed, workers are killed. Bounded. May run on
  /// another thread while shutdown() or the destructor waits, and ends that wait.
  void terminate() noexcept;

  /// A consistent snapshot of what the pool has done and does (see PoolStats). Thread-safe;
  /// holds the scheduling lock for a moment.
  PoolStats stats();

 private:
  using Clock = std::chrono::steady_clock;

  // ---- the collector (collect_mutex_) ----
  void collect() noexcept;
  bool receive(unsigned k, std::vector<Failure>& failures);
  void started(unsigned k, int pid);
  void answered(unsigned k, const Event& e);
  void died(unsigned k, const Death& death, std::vector<Failure>& failures);
  inline AnswerTail* open_tail(unsigned k, std::uint64_t task_id, std::span<const std::byte> head,
                               std::uint64_t tail_bytes) noexcept override;
  template <class Done, class Sleep>
  void help_until(Done&& done, Sleep&& sleep) noexcept;
  void receive_all(bool wait) noexcept;

  // ---- scheduling (mutex_) ----
  void dispatch_locked();
  std::unique_ptr<Job> claim_locked(unsigned k, std::uint64_t task_id);
  void fail_queue_locked(const std::exception_ptr& error, std::vector<Failure>& failures);
  void transport_lost_locked(const std::string& reason, std::vector<Failure>& failures);
  void mark_closed_locked(const std::string& reason);

  // ---- resolving (no lock) ----
  void finish(std::unique_ptr<Job> job) noexcept;
  void fail_all(std::vector<Failure>& failures) noexcept;
  void count_failures_locked(const std::vector<Failure>& failures) noexcept;
  void resolved(std::size_t n) noexcept;
  void close(bool hard) noexcept;

  /// The scheduler whose answers the calling thread reads now (holding its collect_mutex_),
  /// running the completions' user code; null if none.
  static const Scheduler*& reading_answers() noexcept {
    thread_local const Scheduler* scheduler = nullptr;
    return scheduler;
  }
  /// Marks the calling thread as reading `s`'s answers for its lifetime (see submit()).
  class ReadingAnswers {
   public:
    explicit ReadingAnswers(const Scheduler* s) noexcept : previous_(reading_answers()) {
      reading_answers() = s;
    }
    ~ReadingAnswers() { reading_answers() = previous_; }
    ReadingAnswers(const ReadingAnswers&) = delete;
    ReadingAnswers& operator=(const ReadingAnswers&) = delete;

   private:
    const Scheduler* previous_;
  };

  /// Each calling thread learns its own spin budget (tasks differ by caller).
  static SpinBudget& caller_spin() noexcept {
    thread_local SpinBudget budget;
    return budget;
  }

  /// finish() hands answers to the publisher while more than this many jobs per worker are
  /// outstanding (throughput, not latency, counts then).
  static constexpr std::size_t publish_elsewhere_above = 4;
  /// How many answers an idle collector publishes before it looks for events again.
  static constexpr std::size_t publish_batch = 64;

  std::unique_ptr<Transport> transport_;
  SchedulerOptions options_;
  JobPool jobs_;
  const std::shared_ptr<VectorCache> vectors_ = std::make_shared<VectorCache>();

  // Under mutex_:
  std::mutex mutex_;
  std::condition_variable changed_;  // a job resolved while closing; a worker stopped
  Dispatcher dispatch_;
  Supervisor supervisor_;
  bool closed_ = false;
  bool terminating_ = false;
  // The counts of stats(): the totals (queued, running and the workers are filled in there),
  // and per worker slot what its answers said.
  PoolStats counts_;
  struct SlotCounts {
    std::uint64_t tasks = 0;
    std::uint64_t busy_ns = 0;
  };
  std::vector<SlotCounts> slot_counts_;
  unsigned terminate_calls_ = 0;  // terminate() calls in progress (see ~Scheduler)
  std::string closed_reason_;

  // Atomics, read without a lock:
  std::atomic<std::size_t> outstanding_{0};  // submitted, not yet answered or failed
  std::atomic<bool> closing_{false};         // closed_
  std::atomic<bool> stop_{false};            // the collector must exit
  std::atomic<unsigned> sync_callers_{0};    // threads polling in help_until

  // After jobs_ and the atomics, which its thread uses until stop() joins it.
  Publisher publisher_{[this](std::vector<std::unique_ptr<Job>>& jobs) {
    for (auto& job : jobs) jobs_.give_back(std::move(job));
    resolved(jobs.size());
  }};

  std::mutex collect_mutex_;
  std::thread collector_;
  std::mutex close_mutex_;  // close() runs once
  bool finished_ = false;   // under close_mutex_
};

// ---- definitions ------------------------------------------------------------------------------

inline Scheduler::Scheduler(std::unique_ptr<Transport> transport, SchedulerOptions options)
    : transport_(std::move(transport)),
      options_(options),
      dispatch_(*transport_, options.max_tasks_per_worker),
      supervisor_(*transport_, options.task_timeout),
      slot_counts_(transport_->size()) {
  supervisor_.start_all(*this);
  stop_listeners().add(this);
  collector_ = start_own_thread("multicore-coll", [this] { collect(); });
}

inline void Scheduler::submit(std::unique_ptr<Job> job) {
  // Its answer would have to be read by this very thread, which is busy in user code (a
  // Codec<T>::decode, a completion) until the job is done: a deadlock.
  if (reading_answers() == this) {
    throw Error(
        "multicore: a Pool cannot be used from code that runs while that pool's answers are "
        "read (a Codec<T>::decode, say): it would wait for this very thread");
  }
  if (transport_->delivering_output_here()) {
    throw Error(
        "multicore: a Pool cannot be used from its on_worker_output callback: the pool's output "
        "waits for the callback to return, and so may its workers (one that fills its output "
        "pipe stops), so a task sent from there could wait for ever; hand the work to another "
        "thread");
  }
  {
    std::lock_guard lock(mutex_);
    if (closed_) throw PoolClosed(closed_reason_);
    ++counts_.submitted;
    // Checked under the lock that stop_requested() sweeps the queue under: a job is either
    // queued before the sweep or sees the stop here.
    if (!stop_seen(job->stop)) {
      dispatch_.push_back(std::move(job));
      outstanding_.fetch_add(1, std::memory_order_relaxed);
      dispatch_locked();
      return;
    }
    ++counts_.failed;
    ++counts_.failed_by.cancelled;
  }
  job->completion().fail(cancelled_error());
  jobs_.give_back(std::move(job));
}

template <class Done, class Sleep>
void Scheduler::call(std::unique_ptr<Job> job, Done&& done, Sleep&& sleep) {
  // Announce the polling first: an answer that comes back at once must not ring the collector
  // awake, to contend with us for collect_mutex_.
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

template <class Done, class Sleep>
void Scheduler::help(Done&& done, Sleep&& sleep) noexcept {
  if (done()) return;
  sync_callers_.fetch_add(1, std::memory_order_relaxed);
  transport_->callers_polling(+1);
  help_until(done, sleep);
}

template <class Done, class Sleep>
void Scheduler::help_until(Done&& done, Sleep&& sleep) noexcept {
  SpinBudget& budget = caller_spin();
  const bool caught = budget.spin([&] {
    if (done()) return true;
    // Look with plain loads first; lock only when there is something.
    bool news = false;
    for (unsigned k = 0; k < size() && !news; ++k) news = transport_->may_have_events(k);
    if (news) receive_all(false);
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

/// Receives every worker's events in this thread. If another thread is at it, waits for it to
/// finish its pass (`wait`), or leaves it to that thread. Not once the pool is closing down
/// (close() closes the transport once it has collect_mutex_).
inline void Scheduler::receive_all(bool wait) noexcept {
  if (wait) {
    collect_mutex_.lock();
  } else if (!collect_mutex_.try_lock()) {
    return;
  }
  if (stop_.load(std::memory_order_acquire)) {
    collect_mutex_.unlock();
    return;
  }
  std::vector<Failure> failures;
  {
    const ReadingAnswers reading(this);
    try {
      for (unsigned k = 0; k < size(); ++k) receive(k, failures);
    } catch (...) {
      // Out of memory while receiving: the collector will retry.
    }
  }
  collect_mutex_.unlock();
  fail_all(failures);
}

inline void Scheduler::abandon() noexcept {
  {
    std::lock_guard lock(mutex_);
    const Clock::time_point check_at = Clock::now() + abandon_grace;
    for (unsigned k = 0; k < size(); ++k) {
      const std::uint64_t running = supervisor_.running_task(k);
      bool any = false;
      dispatch_.for_each_held(k, [&](Job& job) {
        if (!job.completion().abandoned()) return;
        any = true;
        if (job.id != running) transport_->cancel(k, job.id);
      });
      // Checked then whatever runs: a job whose cancellation came too late runs by now.
      if (any) supervisor_.cut_off_at(k, check_at);
    }
  }
  transport_->wake();
}

inline void Scheduler::stop_requested(const StopToken& token,
                                      const std::chrono::nanoseconds* grace) noexcept {
  // First, workers in other process images (MPI agents') learn of it: their tasks' tokens.
  if (const std::optional<StopFlag> flag = stop_flag(token)) {
    transport_->relay_stop(flag->slot, flag->word);
  }
  // Receiving is held off while the jobs workers still owe are failed: their answers (which
  // would recycle them) wait. This thread may be the one receiving (a Codec stopping a source).
  std::unique_lock collecting(collect_mutex_, std::defer_lock);
  std::optional<ReadingAnswers> reading;
  if (reading_answers() != this) {
    collecting.lock();
    // Closing: close() fails what is left, and may have closed the transport already.
    if (stop_.load(std::memory_order_acquire)) return;
    reading.emplace(this);
  }
  std::vector<Failure> failures;
  std::vector<Completion*> owed;
  try {
    // Receive first: which task each worker runs must be fresh, or a task running since the
    // collector's last look would be taken for one not started. The fence pairs with the one
    // in WorkerLoop::run: a worker that claims a task after this look sees the flag, set
    // before it, and skips the task.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // Twice: a poll reads the ring of answers before the word that says what runs, so a task
    // that ran from start to end between those two reads shows in neither (the word says none
    // again, the answer landed after the ring was read). The second look reads the ring after
    // the first read the word: a task not running then and not answered now had not started.
    for (int look = 0; look < 2 && collecting.owns_lock(); ++look) {
      for (unsigned k = 0; k < size(); ++k) receive(k, failures);
    }
    // Only then is "not running" final and the job Cancelled now. Else (the look is stale:
    // this thread is the one receiving, or the workers are in another process image, whose
    // look comes over MPI) the worker's answer says it: skipped, so Cancelled (see answered),
    // or run, as it had started before the stop.
    const bool final_look = collecting.owns_lock() && transport_->capabilities().same_image;
    std::lock_guard lock(mutex_);
    for (auto& job : dispatch_.take_pending_if([&](const Job& j) { return j.stop == token; })) {
      failures.push_back({std::move(job), cancelled_error()});
    }
    const Clock::time_point cut_off =
        Clock::now() + (grace != nullptr ? *grace : Clock::duration{});
    for (unsigned k = 0; k < size(); ++k) {
      const std::uint64_t running = supervisor_.running_task(k);
      bool any = false;
      dispatch_.for_each_held(k, [&](Job& job) {
        if (job.stop != token) return;
        any = true;
        job.stop_kills |= grace != nullptr;
        // Not started: the worker skips it, and its future need not wait for the tasks before
        // it.
        if (job.id == running || job.resolved || dispatch_.answering(k, job)) return;
        transport_->cancel(k, job.id);
        if (!final_look) return;
        job.resolved = true;
        ++counts_.failed;
        ++counts_.failed_by.cancelled;
        owed.push_back(&job.completion());
      });
      if (any && grace != nullptr) supervisor_.cut_off_at(k, cut_off);
    }
  } catch (...) {
    // Out of memory for the lists: the jobs run (and see the stop) rather than hang.
  }
  transport_->wake();
  if (!owed.empty()) {
    const std::exception_ptr cancelled = cancelled_error();
    for (Completion* c : owed) c->fail(cancelled);
  }
  reading.reset();
  if (collecting.owns_lock()) collecting.unlock();
  fail_all(failures);
}

inline void Scheduler::terminate() noexcept {
  {
    std::lock_guard lock(mutex_);
    ++terminate_calls_;
    terminating_ = true;
    mark_closed_locked("multicore: the pool was terminated");
  }
  changed_.notify_all();
  close(true);
  // Notified under the lock: the destructor, once it sees the count at 0, may free changed_.
  std::lock_guard lock(mutex_);
  --terminate_calls_;
  changed_.notify_all();
}

/// Runs on its own thread: reads events, follows worker lives, enforces timeouts.
inline void Scheduler::collect() noexcept {
  auto heartbeat = Clock::now();
  std::vector<Failure> failures;
  while (!stop_.load(std::memory_order_acquire)) {
    bool progressed = false;
    Clock::time_point wake_at = Clock::now() + std::chrono::milliseconds(100);
    try {
      std::lock_guard collecting(collect_mutex_);
      const ReadingAnswers reading(this);
      for (unsigned k = 0; k < size(); ++k) progressed |= receive(k, failures);
      {
        std::lock_guard lock(mutex_);
        const bool wanted = !closed_ || !dispatch_.idle();
        for (unsigned k = 0; k < size(); ++k) {
          if (supervisor_.alive(k)) progressed |= transport_->pump(k);
          progressed |= supervisor_.retry_start(k, wanted, wake_at);
        }
        dispatch_locked();
        supervisor_.enforce_timeouts(wake_at, [this](unsigned k) { return dispatch_.owes(k); });
        supervisor_.cut_off_abandoned(wake_at, [this](unsigned k, std::uint64_t task) {
          bool abandoned = false;
          dispatch_.for_each_held(k, [&](Job& job) {
            if (job.id == task) abandoned = job.completion().abandoned() || job.stop_kills;
          });
          return abandoned;
        });
        if (Clock::now() >= heartbeat) {
          heartbeat = Clock::now() + std::chrono::milliseconds(100);
          if (const std::string reason = transport_->broken(); !reason.empty()) {
            transport_lost_locked(reason, failures);
          }
          transport_->release_cold_buffers();
          jobs_.release_cold_buffers();
          vectors_->release_if_cold(Clock::now());
        }
      }
      progressed |= !failures.empty();
      fail_all(failures);
    } catch (...) {
      // Only allocation failures can land here; keep going rather than lose every job.
      std::fputs("multicore: collector: unexpected error, retrying\n", stderr);
    }
    // Nothing to read: help the publisher (its queue grows when it is the slower one).
    if (!progressed) progressed = publisher_.publish_some(publish_batch);
    if (!progressed && !stop_.load(std::memory_order_acquire)) {
      // While a call() polls for answers itself, a spinning collector would only take a core
      // from it (or from a worker): sleep instead, and let it collect.
      transport_->wait(wake_at, sync_callers_.load(std::memory_order_relaxed) == 0);
    }
  }
}

/// Handles every event worker k has. Holding collect_mutex_.
inline bool Scheduler::receive(unsigned k, std::vector<Failure>& failures) {
  bool progressed = false;
  for (;;) {
    const Event e = transport_->poll(k, *this);
    switch (e.kind) {
      case Event::Kind::none:
        return progressed;
      case Event::Kind::ready:
        started(k, e.pid);
        break;
      case Event::Kind::running:
        supervisor_.running(k, e.task_id, e.since_ns);
        break;
      case Event::Kind::stopped:
        supervisor_.stopped(k, e.since_ns);
        break;
      case Event::Kind::answer:
        answered(k, e);
        break;
      case Event::Kind::died:
        died(k, *e.death, failures);
        break;
    }
    progressed = true;
  }
}

inline void Scheduler::started(unsigned k, int pid) {
  std::lock_guard lock(mutex_);
  supervisor_.started(k, pid);
  dispatch_locked();
}

/// Worker k answered: resolve the job (with no lock held: completions run user code).
inline void Scheduler::answered(unsigned k, const Event& e) {
  std::unique_ptr<Job> job;
  bool cancelled = false;
  {
    std::lock_guard lock(mutex_);
    if (supervisor_.corrupt(k)) return;  // what it says no longer counts
    job = claim_locked(k, e.task_id);
    if (!job) return;
    // Every answer has an outcome but that of a request the worker skipped, which says nothing.
    // Skipped for its stopped token (see stop_requested): Cancelled, unless it was already.
    cancelled = !job->resolved && !e.dropped && e.tail == nullptr && e.payload.empty() &&
                stop_seen(job->stop);
    // An abandoned job's run time (none, if it was skipped) says nothing of the work to come.
    if (!job->completion().abandoned() && !cancelled) dispatch_.bound().observe(e.run_nanos);
    if (job->resolved) {
      // Cancelled while the worker owed it, and counted then (see stop_requested).
    } else if (cancelled) {
      ++counts_.failed;
      ++counts_.failed_by.cancelled;
    } else if (e.dropped) {
      ++counts_.failed;
      ++counts_.failed_by.other;
    } else {
      ++counts_.done;
      if (job->completion().reports_exception(e.payload)) ++counts_.threw;
    }
    slot_counts_[k].tasks += 1;
    slot_counts_[k].busy_ns += e.run_nanos;
  }
  supervisor_.answered(k, e.task_id);
  if (cancelled) {
    job->completion().fail(cancelled_error());
  } else if (e.dropped) {
    job->completion().fail(error_of(
        [] { throw SerializationError("multicore: out of memory while receiving the answer"); }));
  } else if (job->resolved) {
    // Cancelled while the worker owed it (see stop_requested): the answer is not wanted.
  } else if (e.tail != nullptr) {
    e.tail->deliver_tail(e.run_nanos);
  } else {
    Reader reader(e.payload);
    job->completion().deliver(reader, e.run_nanos);
  }
  finish(std::move(job));
}

/// An answer's tail is coming (asked from inside poll()): it goes straight into the result if
/// the job's completion can take it.
inline AnswerTail* Scheduler::open_tail(unsigned k, std::uint64_t task_id,
                                        std::span<const std::byte> head,
                                        std::uint64_t tail_bytes) noexcept {
  Job* job = nullptr;
  try {
    std::lock_guard lock(mutex_);
    if (supervisor_.corrupt(k)) return nullptr;
    std::unique_ptr<Job> claimed = claim_locked(k, task_id);
    if (claimed) job = dispatch_.hold_answering(k, std::move(claimed));
  } catch (...) {  // no memory to dispatch now: the answer is assembled instead
    return nullptr;
  }
  if (job != nullptr && job->resolved) return nullptr;  // assembled, then dropped by answered()
  return job == nullptr ? nullptr : job->completion().open_tail(head, tail_bytes);
}

/// Worker k died: fail the job it was running, requeue the others, replace it.
inline void Scheduler::died(unsigned k, const Death& death, std::vector<Failure>& failures) {
  std::lock_guard lock(mutex_);
  std::vector<std::unique_ptr<Job>> owed = dispatch_.take_owed(k);
  supervisor_.blame(k, death, owed, failures);
  // Those whose source was stopped are not run again.
  std::erase_if(owed, [&](std::unique_ptr<Job>& job) {
    if (!stop_seen(job->stop)) return false;
    failures.push_back({std::move(job), cancelled_error()});
    return true;
  });
  // The rest never ran, or ran but their answers cannot be read any more: back to the head of
  // the queue, in their original order.
  dispatch_.push_front(owed);
  dispatch_.forget(k);
  const bool wanted = !closed_ || !dispatch_.idle();
  if (const std::exception_ptr error = supervisor_.after_death(k, death, wanted)) {
    fail_queue_locked(error, failures);
  }
  changed_.notify_all();
  dispatch_locked();
}

inline void Scheduler::dispatch_locked() {
  const Dispatcher::Dispatched d =
      dispatch_.dispatch([this](unsigned k) { return supervisor_.can_take(k); });
  // The collector must see a sent job's deadline in time (task_timeout).
  if (d.sent != 0 && supervisor_.sent()) transport_->wake();
  counts_.abandoned += d.dropped;
  if (d.dropped != 0 && outstanding_.fetch_sub(d.dropped, std::memory_order_acq_rel) == d.dropped) {
    changed_.notify_all();
  }
}

/// The job worker k owes the answer to `task_id`, or nullptr: then the worker is broken (it
/// answered a task it does not owe) and is killed.
inline std::unique_ptr<Job> Scheduler::claim_locked(unsigned k, std::uint64_t task_id) {
  std::unique_ptr<Job> job = dispatch_.claim(k, task_id);
  if (!job) {
    supervisor_.mark_corrupt(k);
    return nullptr;
  }
  dispatch_locked();  // it freed room
  return job;
}

/// No worker can run the queue (none could be started): fail it rather than let it wait.
inline void Scheduler::fail_queue_locked(const std::exception_ptr& error,
                                         std::vector<Failure>& failures) {
  while (!dispatch_.idle()) failures.push_back({dispatch_.pop_front(), error});
}

/// The machinery behind the workers is gone (the fork server was killed from outside): its
/// workers died with it and no replacement can be made. Everything unresolved fails; the pool
/// refuses new work.
inline void Scheduler::transport_lost_locked(const std::string& reason,
                                             std::vector<Failure>& failures) {
  mark_closed_locked(reason);
  for (unsigned k = 0; k < size(); ++k) {
    for (auto& job : dispatch_.take_owed(k)) {
      failures.push_back(
          {std::move(job), std::make_exception_ptr(WorkerLost(reason, SIGKILL, -1))});
    }
  }
  supervisor_.lost_all();
  // Never sent, so not lost by a worker: the pool closed under them.
  fail_queue_locked(std::make_exception_ptr(PoolClosed(reason)), failures);
  changed_.notify_all();
}

inline void Scheduler::mark_closed_locked(const std::string& reason) {
  if (!closed_) closed_reason_ = reason;
  closed_ = true;
  closing_.store(true, std::memory_order_seq_cst);
}

/// Publishes an answered job (or has the publisher do it), recycles it and counts it resolved.
inline void Scheduler::finish(std::unique_ptr<Job> job) noexcept {
  if (job->completion().unpublished()) {
    // Only while many jobs wait: a lone call's answer would pay a thread hop.
    if (outstanding_.load(std::memory_order_relaxed) > publish_elsewhere_above * size()) {
      job = publisher_.take(std::move(job));
      if (!job) return;
    }
    job->completion().publish();
  }
  jobs_.give_back(std::move(job));
  resolved(1);
}

inline void Scheduler::fail_all(std::vector<Failure>& failures) noexcept {
  if (failures.empty()) return;
  {
    std::lock_guard lock(mutex_);
    count_failures_locked(failures);
  }
  // Nobody wants an abandoned job's answer, nor to hear how it ended; a job cancelled while
  // its worker owed it has heard already.
  for (Failure& f : failures) {
    if (!f.job->completion().abandoned() && !f.job->resolved) f.job->completion().fail(f.error);
  }
  const std::size_t n = failures.size();
  failures.clear();
  resolved(n);
}

inline void Scheduler::count_failures_locked(const std::vector<Failure>& failures) noexcept {
  for (const Failure& f : failures) {
    if (f.job->resolved) continue;  // cancelled while its worker owed it: counted then
    if (f.job->completion().abandoned()) {
      ++counts_.abandoned;
      continue;
    }
    ++counts_.failed;
    PoolStats::Failed& by = counts_.failed_by;
    try {
      std::rethrow_exception(f.error);
    } catch (const WorkerLost&) {
      ++by.worker_lost;
    } catch (const TaskTimeout&) {
      ++by.task_timeout;
    } catch (const PoolClosed&) {
      ++by.pool_closed;
    } catch (const Cancelled&) {
      ++by.cancelled;
    } catch (...) {
      ++by.other;
    }
  }
}

inline PoolStats Scheduler::stats() {
  // Workers publish what they run without waking anyone: take in what they said first, so a
  // task that started shows as running. Waiting for the collector's pass, if it is in one:
  // otherwise what the workers said may be only half taken in. (Not from code that reads this
  // pool's answers: this thread holds collect_mutex_ then.)
  if (reading_answers() != this) receive_all(true);
  PoolStats s;
  std::vector<WorkerStats> workers(size());  // allocated before the lock is taken
  std::vector<std::string> where(size());
  for (unsigned k = 0; k < size(); ++k) where[k] = transport_->location(k);
  std::lock_guard lock(mutex_);
  const std::int64_t now = steady_now_ns();
  s = counts_;
  s.queued = dispatch_.queued();
  s.running = s.submitted - s.queued - s.done - s.failed - s.abandoned;
  s.replaced = supervisor_.replaced();
  for (unsigned k = 0; k < size(); ++k) {
    WorkerStats& w = workers[k];
    w.index = k;
    w.pid = supervisor_.pid(k);
    w.where = std::move(where[k]);
    w.tasks = slot_counts_[k].tasks;
    w.busy = std::chrono::nanoseconds(slot_counts_[k].busy_ns);
    if (const std::int64_t since = supervisor_.running_since(k); since != 0 && now > since) {
      w.current_task = std::chrono::nanoseconds(now - since);
    }
    w.replaced = supervisor_.replaced(k);
  }
  s.workers = std::move(workers);
  return s;
}

/// `n` jobs got their answer or error; wakes a shutdown waiting for the last one.
inline void Scheduler::resolved(std::size_t n) noexcept {
  if (n == 0) return;
  // Only a closing pool waits for the count to reach zero: skip the lock otherwise. closing_ is
  // set before that wait checks the count, under mutex_, so the last job cannot miss it.
  if (outstanding_.fetch_sub(n, std::memory_order_seq_cst) == n &&
      closing_.load(std::memory_order_seq_cst)) {
    std::lock_guard lock(mutex_);  // pairs with the waiter's predicate check
    changed_.notify_all();
  }
}

inline void Scheduler::close(bool hard) noexcept {
  std::lock_guard close_lock(close_mutex_);
  if (finished_) return;
  {
    std::unique_lock lock(mutex_);
    mark_closed_locked("multicore: the pool is shut down; no new tasks are accepted");
    if (!hard) {
      // Waiting for the work, like joining a thread, waits as long as a task runs; a worker
      // stopped from outside (SIGSTOP) would make that for ever.
      transport_->resume();
      changed_.wait(
          lock, [&] { return terminating_ || outstanding_.load(std::memory_order_seq_cst) == 0; });
      hard = terminating_;
    }
    if (!hard) {
      // Every worker exits once its queue is empty (nothing is in flight now); wait for them,
      // bounded: the ones that do not stop in time are killed by close() below.
      supervisor_.stop_all();
      transport_->wake();
      changed_.wait_for(lock, std::chrono::seconds(2), [&] { return supervisor_.all_stopped(); });
    }
  }
  stop_.store(true, std::memory_order_release);
  transport_->wake();
  if (collector_.joinable()) collector_.join();
  std::vector<Failure> failures;
  {
    std::lock_guard collecting(collect_mutex_);  // a call() may be receiving
    std::lock_guard lock(mutex_);
    const auto closed = std::make_exception_ptr(
        PoolClosed("multicore: the pool was terminated before this task finished"));
    for (unsigned k = 0; k < size(); ++k) {
      for (auto& job : dispatch_.take_owed(k)) failures.push_back({std::move(job), closed});
    }
    while (!dispatch_.idle()) {
      std::unique_ptr<Job> job = dispatch_.pop_front();
      if (!job->completion().abandoned()) failures.push_back({std::move(job), closed});
    }
    // Closed before the jobs are failed (a transport may still be reading their requests),
    // and under both locks: a call() receiving its own answer may be using the transport (it
    // kills a worker that sent a malformed claim), and the seam's contract is that close()
    // runs alone (TSan saw ShmTransport::close race with kill in AdversarialLifetime).
    transport_->close();
  }
  fail_all(failures);
  publisher_.stop();  // no answer comes any more: what it holds is all it will get
  finished_ = true;
}

}  // namespace multicore::detail
