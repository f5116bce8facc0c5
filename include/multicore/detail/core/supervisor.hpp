// SPDX-License-Identifier: MIT
// The lives of the workers: starting, ready, backing off, stopping; whom to blame when one
// dies; killing the one whose task overran task_timeout.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../../errors.hpp"
#include "../../stats.hpp"
#include "../transport/transport.hpp"
#include "../util/process.hpp"
#include "job.hpp"

namespace multicore::detail {

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

/// What a worker that was most likely killed for lack of memory adds to its message.
inline std::string out_of_memory_note(const Death& d) {
  if (!d.out_of_memory) return {};
  return ", most likely by the kernel's out-of-memory killer (it killed a process on that machine "
         "since the worker started): the work needed more memory than the machine, or its memory "
         "limit, had left";
}

/// What a worker killed by a timer's signal adds to its message. The task that armed the timer
/// (alarm, setitimer, timer_create) may have returned long before, and the task blamed may be
/// innocent: a worker runs many tasks, and the default action of these signals ends a process.
inline std::string timer_note(const Death& d) {
  if (d.signal != SIGALRM && d.signal != SIGVTALRM && d.signal != SIGPROF) return {};
  return ", by a timer's signal: this task, or one that ran before it on this worker, armed a "
         "timer (alarm, setitimer, timer_create) and left it armed; a worker runs many tasks, so "
         "disarm timers before returning (alarm(0)), or set PoolOptions::max_tasks_per_worker "
         "to 1";
}

inline WorkerLost worker_lost(const Death& d, const std::string& what) {
  return WorkerLost(describe(d) + " " + what, d.signal, d.signal != 0 ? -1 : d.exit_code, d.output,
                    d.out_of_memory);
}

/// The error for a worker that could not be started, from how it ended.
inline std::exception_ptr start_error(const Death& d, bool replacement) {
  switch (d.cause) {
    case Death::Cause::spawn_failed:
      return std::make_exception_ptr(SystemError("fork", d.error));
    case Death::Cause::start_failed:  // where: "" here, " on rank 3 (node07)" over MPI
      return std::make_exception_ptr(
          Error(std::string(replacement ? "multicore: on_worker_start threw in a replacement "
                                          "worker"
                                        : "multicore: on_worker_start threw") +
                d.where + ": " + d.text));
    default:
      return std::make_exception_ptr(
          Error(describe(d) + " while starting (in on_worker_start)" + out_of_memory_note(d)));
  }
}

/// The longest task timeout the scheduler keeps (2^62 ns, about 146 years): longer ones mean
/// the same, practically never. It keeps every deadline, a steady-clock reading (nanoseconds
/// since boot) plus the timeout, far inside int64.
inline constexpr std::chrono::nanoseconds max_task_timeout{std::int64_t{1} << 62};

/// How long a worker may go on running a job of an abandoned map before it is killed and
/// replaced. Automatic chunks aim at about 0.5 ms, so they end well within it and cost no
/// respawn (a fork and on_worker_start); only long ones, whose answers nobody wants, are cut
/// off, so that the pool is soon free again for other work.
inline constexpr std::chrono::milliseconds abandon_grace{100};

/// A job that ended without an answer, to be failed outside the scheduling lock.
struct Failure {
  std::unique_ptr<Job> job;
  std::exception_ptr error;
};

/// Follows every worker's life and decides what its death means. Not thread-safe: the
/// scheduler calls it under its scheduling lock, except where a member says otherwise.
class Supervisor {
 public:
  using Clock = std::chrono::steady_clock;

  Supervisor(Transport& transport, std::chrono::nanoseconds task_timeout);

  /// Starts every worker and waits until each is ready or has failed; throws the first
  /// failure (SystemError, Error). Before any other member; polls through `router`.
  void start_all(TailRouter& router);

  /// Worker k is ready and healthy: it may be given jobs.
  bool can_take(unsigned k) const noexcept { return slots_[k].life == Life::ready && !corrupt(k); }
  /// Worker k is alive for all we know: a message in progress to it may still be moved. Once
  /// its death is seen (or the transport broke), the jobs it held may be gone: nothing of
  /// theirs must be touched again until a new worker starts in the slot.
  bool alive(unsigned k) const noexcept {
    return slots_[k].life == Life::ready || slots_[k].life == Life::stopping;
  }
  /// Worker k broke the protocol and is being killed. Any thread.
  bool corrupt(unsigned k) const noexcept {
    return slots_[k].corrupt.load(std::memory_order_relaxed);
  }
  /// Worker k broke the protocol: kills it (once).
  void mark_corrupt(unsigned k) noexcept;
  /// Its `ready` event, naming its process (0: unknown).
  void started(unsigned k, int pid) noexcept;
  /// Worker k's process id while it is ready; 0 otherwise or if the transport cannot tell.
  int pid(unsigned k) const noexcept { return slots_[k].pid; }
  /// When worker k's running task started (steady_now_ns()), 0 if it runs none. Any thread.
  std::int64_t running_since(unsigned k) const noexcept {
    if (slots_[k].running_task.load(std::memory_order_relaxed) == 0) return 0;
    return slots_[k].running_since.load(std::memory_order_relaxed);
  }
  /// Its `running` event, and its answer (no task runs then). Receive side, without the lock.
  void running(unsigned k, std::uint64_t task, std::int64_t since) noexcept {
    slots_[k].running_since.store(since, std::memory_order_relaxed);
    slots_[k].running_task.store(task, std::memory_order_relaxed);
  }
  /// (The answer of `task` may be read after the `running` event of the worker's next task:
  /// the ring and the word that says what runs are read apart. That task still runs.)
  void answered(unsigned k, std::uint64_t task) noexcept {
    if (slots_[k].running_task.load(std::memory_order_relaxed) == task) {
      slots_[k].running_task.store(0, std::memory_order_relaxed);
    }
  }
  /// Its `stopped` event. Receive side, without the lock.
  void stopped(unsigned k, std::int64_t since) noexcept {
    slots_[k].stopped_since.store(since, std::memory_order_relaxed);
  }
  /// The task worker k runs, as far as its events said (0: none).
  std::uint64_t running_task(unsigned k) const noexcept {
    return slots_[k].running_task.load(std::memory_order_relaxed);
  }

  /// A job was sent to a worker. True if the collector must be woken to plan its next look
  /// again: it planned to sleep past task_timeout (nothing was in flight) and would miss the
  /// job's deadline. At most once per look, and only in pools with a timeout.
  bool sent() noexcept;

  /// Worker k died owing the jobs in `owed`, oldest first. Moves the one to blame (if any) to
  /// `failures` with its error; the rest stay in `owed`, to run again.
  void blame(unsigned k, const Death& death, std::vector<std::unique_ptr<Job>>& owed,
             std::vector<Failure>& failures);
  /// Then replaces it, or backs off when it could not start, or lets it rest when it is not
  /// `wanted` any more (closing, nothing queued). Returns the start error when no worker at all
  /// can run now: whatever is queued should fail with it rather than wait.
  std::exception_ptr after_death(unsigned k, const Death& death, bool wanted);
  /// Starts slot k again once its backoff is over (if still `wanted`); otherwise lowers
  /// `wake_at` to when it will be. True if it started one.
  bool retry_start(unsigned k, bool wanted, Clock::time_point& wake_at);
  /// Kills workers whose task ran past task_timeout, and plans the collector's next look in
  /// `wake_at`. `owes(k)`: worker k owes answers.
  template <class Owes>
  void enforce_timeouts(Clock::time_point& wake_at, Owes&& owes);
  /// Worker k holds jobs nobody wants (their map was abandoned): the one it runs `at` is cut off
  /// if it is one of them.
  void cut_off_at(unsigned k, Clock::time_point at) noexcept {
    slots_[k].cut_off_at = std::min(slots_[k].cut_off_at, at);
  }
  /// Kills the workers still running an abandoned job at their cut-off time (`abandoned(k,
  /// task)` says whether worker k's job `task` is one); lowers `wake_at` to the next one.
  template <class Abandoned>
  void cut_off_abandoned(Clock::time_point& wake_at, Abandoned&& abandoned);

  /// Asks every live worker to exit once it has answered everything (nothing is in flight).
  void stop_all() noexcept;
  bool all_stopped() const noexcept;
  /// The transport broke: every worker is gone for good.
  void lost_all() noexcept;

  /// Worker processes replaced so far, by why; and how often slot k's was.
  const PoolStats::Replaced& replaced() const noexcept { return replaced_; }
  std::uint64_t replaced(unsigned k) const noexcept { return slots_[k].replaced; }

 private:
  enum class Life {
    starting,  ///< asked for a process, not ready yet
    ready,     ///< can take jobs
    backoff,   ///< could not be (re)started; retry at retry_at
    stopping,  ///< told to stop (graceful shutdown)
    stopped,   ///< gone for good
  };

  /// timed_out_task of a worker killed for being stopped, or stuck outside any task (flushing
  /// output), while holding jobs but running none.
  static constexpr std::uint64_t stopped_idle = ~std::uint64_t{0};  // no task has this id

  struct Slot {
    Life life = Life::starting;
    // We killed the process because this task overran (task_timeout, or abandon_grace), or
    // because it was stopped or stuck, holding jobs but running none (stopped_idle).
    std::uint64_t timed_out_task = 0;
    bool cut_off = false;        // that kill was for abandon_grace, not task_timeout
    std::uint64_t replaced = 0;  // times its process was replaced
    // When to kill the process if it is still running a job of an abandoned map.
    Clock::time_point cut_off_at = Clock::time_point::max();
    unsigned start_failures = 0;
    Clock::time_point retry_at{};
    Clock::time_point start_began{};  // when the replacement starting now was asked for
    int pid = 0;                      // from its ready event
    bool start_timed_out = false;     // we killed it: its on_worker_start ran too long
    // Read without the lock too (can_take from the receive side): atomic.
    std::atomic<bool> corrupt{false};
    // What it runs (from `running` events): written on the receive side without the lock.
    std::atomic<std::uint64_t> running_task{0};
    std::atomic<std::int64_t> running_since{0};
    std::atomic<std::int64_t> stopped_since{0};  // from `stopped` events, likewise
  };

  void respawn(unsigned k);
  std::exception_ptr start_failed(unsigned k, std::exception_ptr error);
  std::exception_ptr timeout_error(const Death& death) const;

  Transport& transport_;
  std::chrono::nanoseconds task_timeout_;
  /// With a task_timeout: how long a replacement's on_worker_start may run (see start_all()).
  std::chrono::nanoseconds start_allowance_{0};
  std::vector<Slot> slots_;
  PoolStats::Replaced replaced_;
  // The collector's planned wake-up comes before the deadline of any job sent from now on.
  bool deadlines_watched_ = false;
  bool sent_since_look_ = false;  // a job was sent since enforce_timeouts last ran
};

// ---- definitions ------------------------------------------------------------------------------

inline Supervisor::Supervisor(Transport& transport, std::chrono::nanoseconds task_timeout)
    : transport_(transport), task_timeout_(task_timeout), slots_(transport.size()) {}

inline void Supervisor::start_all(TailRouter& router) {
  const Clock::time_point began = Clock::now();
  const unsigned n = transport_.size();
  std::vector<char> settled(n, 0);
  std::vector<Death> deaths(n);
  for (unsigned k = 0; k < n; ++k) transport_.start(k);
  for (unsigned left = n; left > 0;) {
    for (unsigned k = 0; k < n; ++k) {
      if (settled[k] != 0) continue;
      const Event e = transport_.poll(k, router);
      if (e.kind != Event::Kind::ready && e.kind != Event::Kind::died) continue;
      if (e.kind == Event::Kind::died) deaths[k] = *e.death;
      slots_[k].pid = e.pid;
      settled[k] = e.kind == Event::Kind::ready ? 1 : 2;
      --left;
    }
    if (left == 0) break;
    if (!transport_.broken().empty()) {
      throw Error("multicore: the pool's fork server died while starting the workers");
    }
    transport_.wait(Clock::now() + std::chrono::milliseconds(100), true);
  }
  for (unsigned k = 0; k < n; ++k) {
    if (settled[k] == 2) std::rethrow_exception(start_error(deaths[k], false));
    slots_[k].life = Life::ready;
  }
  // A replacement runs the same on_worker_start from the same snapshot: one that takes more
  // than twice what the first workers took, plus task_timeout, is taken for hung (tasks wait
  // for it, and nothing else would ever end them).
  start_allowance_ = task_timeout_ + 2 * (Clock::now() - began);
}

inline void Supervisor::mark_corrupt(unsigned k) noexcept {
  if (!slots_[k].corrupt.exchange(true, std::memory_order_relaxed)) transport_.kill(k);
}

inline void Supervisor::started(unsigned k, int pid) noexcept {
  Slot& s = slots_[k];
  if (s.life != Life::starting) return;
  s.life = Life::ready;
  s.pid = pid;
  s.start_failures = 0;
}

inline void Supervisor::blame(unsigned k, const Death& death,
                              std::vector<std::unique_ptr<Job>>& owed,
                              std::vector<Failure>& failures) {
  const Slot& s = slots_[k];
  // The culprit is the job the worker had claimed. A worker that broke the protocol without a
  // claim left the oldest answer unreadable: blaming that one guarantees progress.
  auto culprit = std::find_if(owed.begin(), owed.end(),
                              [&](const auto& job) { return job->id == death.running; });
  const bool corrupt =
      s.corrupt.load(std::memory_order_relaxed) || death.cause == Death::Cause::violation;
  if (culprit == owed.end() && corrupt && !owed.empty()) culprit = owed.begin();
  if (culprit == owed.end()) return;
  std::exception_ptr error;
  if (s.timed_out_task == (*culprit)->id && (*culprit)->stop_kills) {
    error = std::make_exception_ptr(Cancelled(
        "multicore: the task was cancelled: it still ran when its StopSource's grace period "
        "ended; its worker process " +
        std::to_string(death.pid) + death.where + " was killed and replaced"));
  } else if (s.timed_out_task == (*culprit)->id) {
    error = timeout_error(death);
  } else if (corrupt) {
    error = std::make_exception_ptr(worker_lost(
        death, "after sending a corrupt or truncated answer; it was stopped and replaced"));
  } else if (death.cause == Death::Cause::replaced_program) {
    error = std::make_exception_ptr(worker_lost(
        death,
        "while running this task, which replaced the worker's program (exec): start another "
        "program from a child process (posix_spawn, or fork then exec)"));
  } else if (s.timed_out_task == 0) {
    error = std::make_exception_ptr(worker_lost(
        death, "while running this task" + out_of_memory_note(death) + timer_note(death)));
  }
  // Otherwise we killed it for a task that finished just before: this one did nothing wrong
  // and runs again.
  if (!error) return;
  failures.push_back({std::move(*culprit), std::move(error)});
  owed.erase(culprit);
}

inline std::exception_ptr Supervisor::after_death(unsigned k, const Death& death, bool wanted) {
  Slot& s = slots_[k];
  const Life was = s.life;
  // Why it is gone, should it be replaced below: read before the slot forgets.
  std::uint64_t* why = &replaced_.crashed;
  if (s.corrupt.load(std::memory_order_relaxed) || death.cause == Death::Cause::violation) {
    why = &replaced_.broke_protocol;
  } else if (s.timed_out_task != 0) {
    why = s.cut_off ? &replaced_.cut_off : &replaced_.timed_out;
  } else if (death.signal == 0 && death.exit_code == 0) {
    why = &replaced_.retired;  // a worker exits by itself, cleanly, after max_tasks_per_worker
  }
  s.timed_out_task = 0;
  s.cut_off = false;
  s.pid = 0;
  s.cut_off_at = Clock::time_point::max();
  s.corrupt.store(false, std::memory_order_relaxed);
  s.running_task.store(0, std::memory_order_relaxed);
  s.running_since.store(0, std::memory_order_relaxed);
  s.stopped_since.store(0, std::memory_order_relaxed);
  if (std::exchange(s.start_timed_out, false)) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(start_allowance_);
    return start_failed(
        k, std::make_exception_ptr(
               Error("multicore: on_worker_start ran longer than " + std::to_string(ms.count()) +
                     " ms in a replacement worker (task_timeout plus twice what the first workers' "
                     "start took); it was killed")));
  }
  if (was == Life::starting || death.cause == Death::Cause::start_failed) {
    // Died before it was ready (in on_worker_start, say, or no process could be made):
    // retrying at once would fork as fast as it dies. Back off like any start failure.
    return start_failed(k, start_error(death, true));
  }
  if (was == Life::stopping || was == Life::stopped || !wanted) {
    s.life = Life::stopped;
    return nullptr;
  }
  ++*why;
  ++s.replaced;
  respawn(k);
  return nullptr;
}

inline void Supervisor::respawn(unsigned k) {
  slots_[k].life = Life::starting;
  slots_[k].start_began = Clock::now();
  try {
    transport_.start(k);
  } catch (...) {
    // The machinery is gone (broken() says so at the next heartbeat, which fails what is
    // left): until then the slot waits like any slot that could not start.
    (void)start_failed(k, std::current_exception());
  }
}

/// A worker could not be started: try again later, backing off. Returns `error` if no worker
/// at all can run meanwhile.
inline std::exception_ptr Supervisor::start_failed(unsigned k, std::exception_ptr error) {
  Slot& s = slots_[k];
  s.start_failures = std::min(s.start_failures + 1, 10u);
  s.life = Life::backoff;
  s.retry_at = Clock::now() + std::chrono::milliseconds(10) * (1u << (s.start_failures - 1));
  const bool any_worker = std::any_of(slots_.begin(), slots_.end(), [](const Slot& o) {
    return o.life == Life::ready || o.life == Life::starting;
  });
  return any_worker ? nullptr : error;
}

inline bool Supervisor::retry_start(unsigned k, bool wanted, Clock::time_point& wake_at) {
  Slot& s = slots_[k];
  if (s.life != Life::backoff || !wanted) return false;
  if (Clock::now() >= s.retry_at) {
    respawn(k);
    return true;
  }
  wake_at = std::min(wake_at, s.retry_at);
  return false;
}

inline bool Supervisor::sent() noexcept {
  if (task_timeout_.count() <= 0) return false;
  sent_since_look_ = true;
  if (deadlines_watched_) return false;
  deadlines_watched_ = true;
  return true;
}

// A worker publishes when its task's clock starts (and restarts it after streaming the
// argument's tail) without waking anyone: the collector sees it at its next look. So it plans to
// look again by the earliest deadline of a running task and, while jobs are in flight or were
// sent since its last look, within task_timeout of now: a clock that starts after this look has
// its deadline after that. (Having workers ring the parent instead made every call in a pool
// with a timeout wake a sleeping collector: about 50 times slower.)
template <class Owes>
void Supervisor::enforce_timeouts(Clock::time_point& wake_at, Owes&& owes) {
  if (task_timeout_.count() <= 0) return;
  const Clock::time_point now = Clock::now();
  const std::int64_t now_ns = now.time_since_epoch().count();
  // Sent since the last look counts even if answered already: calls in a steady stream then
  // keep the collector watching at its pace, instead of each waking it (see sent()).
  bool holding = sent_since_look_;
  sent_since_look_ = false;
  for (unsigned k = 0; k < slots_.size(); ++k) {
    Slot& s = slots_[k];
    if (s.life == Life::starting && !s.start_timed_out) {
      const Clock::time_point deadline = s.start_began + start_allowance_;
      if (now >= deadline) {
        s.start_timed_out = true;
        transport_.kill(k);
      } else {
        wake_at = std::min(wake_at, deadline);
      }
      continue;
    }
    // Only a worker that owes answers can overrun.
    if (s.life != Life::ready || s.timed_out_task != 0 || !owes(k) || corrupt(k)) continue;
    holding = true;
    // Running task 0 since a time: busy outside any task (flushing output), it cannot start
    // the tasks it holds either.
    const std::uint64_t running = s.running_task.load(std::memory_order_relaxed);
    std::int64_t since = s.running_since.load(std::memory_order_relaxed);
    // A worker stopped (SIGSTOP) cannot run its jobs, nor restart its task's clock after
    // streaming: stopped that long, it counts as overrunning too.
    const std::int64_t stopped = s.stopped_since.load(std::memory_order_relaxed);
    if (stopped != 0 && (since == 0 || stopped < since)) since = stopped;
    if (since == 0) continue;
    // No overflow: since is nanoseconds since boot, the timeout at most max_task_timeout.
    const std::int64_t deadline = since + task_timeout_.count();
    if (now_ns >= deadline) {
      s.timed_out_task = running != 0 ? running : stopped_idle;
      transport_.kill(k);
    } else {
      wake_at = std::min(wake_at, Clock::time_point(std::chrono::nanoseconds(deadline)));
    }
  }
  if (holding) wake_at = std::min(wake_at, now + task_timeout_);
  deadlines_watched_ = wake_at <= now + task_timeout_;
}

template <class Abandoned>
void Supervisor::cut_off_abandoned(Clock::time_point& wake_at, Abandoned&& abandoned) {
  const Clock::time_point now = Clock::now();
  for (unsigned k = 0; k < slots_.size(); ++k) {
    Slot& s = slots_[k];
    // A process being killed or gone is forgotten with its cut_off_at.
    if (s.cut_off_at == Clock::time_point::max() || s.life != Life::ready ||
        s.timed_out_task != 0 || corrupt(k)) {
      continue;
    }
    if (now < s.cut_off_at) {
      wake_at = std::min(wake_at, s.cut_off_at);
      continue;
    }
    s.cut_off_at = Clock::time_point::max();
    const std::uint64_t running = s.running_task.load(std::memory_order_relaxed);
    if (running != 0 && abandoned(k, running)) {
      s.timed_out_task = running;
      s.cut_off = true;
      transport_.kill(k);
    }
  }
}

inline std::exception_ptr Supervisor::timeout_error(const Death& death) const {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(task_timeout_);
  return std::make_exception_ptr(
      TaskTimeout("multicore: the task ran longer than task_timeout (" +
                  std::to_string(ms.count()) + " ms); its worker process " +
                  std::to_string(death.pid) + death.where + " was killed and replaced"));
}

inline void Supervisor::stop_all() noexcept {
  for (unsigned k = 0; k < slots_.size(); ++k) {
    Slot& s = slots_[k];
    // Nothing is in flight any more, so the transport takes the request at once.
    if ((s.life == Life::ready || s.life == Life::starting) && transport_.try_stop(k)) {
      s.life = Life::stopping;
    } else if (s.life != Life::stopping) {
      s.life = Life::stopped;
    }
  }
}

inline bool Supervisor::all_stopped() const noexcept {
  return std::all_of(slots_.begin(), slots_.end(),
                     [](const Slot& s) { return s.life == Life::stopped; });
}

inline void Supervisor::lost_all() noexcept {
  for (Slot& s : slots_) s.life = Life::stopped;
}

}  // namespace multicore::detail
