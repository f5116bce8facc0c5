// SPDX-License-Identifier: MIT
// Which worker gets which job: the queue of jobs not sent yet, what each worker holds, and
// how much it may hold.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "../protocol/wire.hpp"
#include "../transport/transport.hpp"
#include "../util/ring_queue.hpp"
#include "job.hpp"

namespace multicore::detail {

/// How many jobs a worker may hold at once (one running, the rest queued in its ring). Long
/// tasks get a shallow queue, so uneven work balances across workers; short ones a deep queue,
/// so a worker never idles waiting for the parent to send the next one. The bound aims at
/// about 100 us of queued work per worker. Its top is deep because a trivial task costs the
/// parent more than the worker (resolving a std::promise alone is a syscall): the parent lags,
/// and the answers it has not read yet count as held (measured: 256 reads 16384 trivial
/// submits ~1.4x faster than 64 did; 1024 no faster than 256).
class InFlightBound {
 public:
  static constexpr std::size_t min_jobs = 2;
  static constexpr std::size_t max_jobs = 256;

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

/// The jobs not sent yet, in order, and those each worker holds (sent, answer not taken yet),
/// oldest first. Sends each job to the least-loaded worker that may take one, within the
/// in-flight bound, so uneven tasks balance and, when a worker dies, what it held is known
/// exactly. Not thread-safe: the scheduler calls it under its scheduling lock.
class Dispatcher {
 public:
  Dispatcher(Transport& transport, std::size_t max_tasks_per_worker);

  bool idle() const noexcept { return pending_.empty(); }
  /// Jobs not sent yet.
  std::size_t queued() const noexcept { return pending_.size(); }
  /// Queues a job (its id stamped into its request).
  void push_back(std::unique_ptr<Job> job);
  /// Puts jobs back at the head of the queue, in their order (they were sent before the rest).
  void push_front(std::vector<std::unique_ptr<Job>>& jobs);
  std::unique_ptr<Job> pop_front() { return pending_.pop_front(); }
  /// Takes the queued jobs `pred` selects; the others keep their order.
  template <class Pred>
  std::vector<std::unique_ptr<Job>> take_pending_if(Pred&& pred);

  struct Dispatched {
    std::size_t sent = 0;
    std::size_t dropped = 0;  ///< nobody wanted them any more (Completion::abandoned)
  };
  /// Sends queued jobs to the workers `can_take(k)` allows, while they have room; drops those
  /// nobody wants any more.
  template <class CanTake>
  Dispatched dispatch(CanTake&& can_take);

  /// Takes the job whose answer worker k starts or finishes sending, if `task_id` is the one it
  /// owes next; nullptr if not (the worker is broken). Frees room for the next dispatch.
  std::unique_ptr<Job> claim(unsigned k, std::uint64_t task_id);
  /// Keeps the job whose answer's tail is arriving, until its answer is complete.
  Job* hold_answering(unsigned k, std::unique_ptr<Job> job);

  /// Every job worker k still owes an answer, oldest first (it is dead).
  std::vector<std::unique_ptr<Job>> take_owed(unsigned k);
  /// Worker k is a new process: it has been given nothing yet.
  void forget(unsigned k) noexcept { held_[k].dispatched = 0; }

  std::size_t holding(unsigned k) const noexcept { return held_[k].in_flight.size(); }
  /// Worker k owes answers: jobs in flight, or an answer whose tail is arriving.
  bool owes(unsigned k) const noexcept {
    return !held_[k].in_flight.empty() || held_[k].answering != nullptr;
  }
  /// Calls `f(Job&)` for every job worker k holds, oldest first.
  template <class F>
  void for_each_held(unsigned k, F&& f) {
    Held& h = held_[k];
    if (h.answering) f(*h.answering);
    for (std::size_t i = 0; i < h.in_flight.size(); ++i) f(*h.in_flight[i]);
  }
  /// Whether `job` is the one whose answer's tail worker k is sending.
  bool answering(unsigned k, const Job& job) const noexcept {
    return held_[k].answering.get() == &job;
  }
  InFlightBound& bound() noexcept { return bound_; }

 private:
  struct Held {
    RingQueue<std::unique_ptr<Job>> in_flight;  // handed to the transport, oldest first
    std::unique_ptr<Job> answering;             // its answer's tail is arriving
    std::size_t dispatched = 0;                 // jobs given to this process
  };

  bool has_room(unsigned k) const noexcept;
  template <class CanTake>
  int pick(CanTake& can_take) noexcept;

  Transport& transport_;
  std::size_t max_tasks_;
  std::size_t max_in_flight_;  // what the transport keeps track of (see Capabilities)
  std::vector<Held> held_;
  RingQueue<std::unique_ptr<Job>> pending_;
  std::uint64_t last_id_ = 0;
  unsigned last_used_ = 0;
  InFlightBound bound_;
};

// ---- definitions ------------------------------------------------------------------------------

inline Dispatcher::Dispatcher(Transport& transport, std::size_t max_tasks_per_worker)
    : transport_(transport),
      max_tasks_(max_tasks_per_worker),
      max_in_flight_(transport.capabilities().max_in_flight),
      held_(transport.size()) {}

inline void Dispatcher::push_back(std::unique_ptr<Job> job) {
  job->id = ++last_id_;
  std::memcpy(job->request.data() + offsetof(RequestHeader, task_id), &job->id, sizeof job->id);
  std::memcpy(job->request.data() + offsetof(RequestHeader, stop), &job->stop, sizeof job->stop);
  pending_.push_back(std::move(job));
}

inline void Dispatcher::push_front(std::vector<std::unique_ptr<Job>>& jobs) {
  for (auto job = jobs.rbegin(); job != jobs.rend(); ++job) pending_.push_front(std::move(*job));
  jobs.clear();
}

inline bool Dispatcher::has_room(unsigned k) const noexcept {
  const Held& h = held_[k];
  return !transport_.sending(k) && h.in_flight.size() < std::min(bound_.value(), max_in_flight_) &&
         (max_tasks_ == 0 || h.dispatched < max_tasks_);
}

/// The least-loaded worker that can take a job, or -1. Ties go to the worker used last: it is
/// the one most likely still spinning, so one-at-a-time calls find a hot worker, while a burst
/// still spreads out because loads differ.
template <class CanTake>
int Dispatcher::pick(CanTake& can_take) noexcept {
  int best = -1;
  const auto n = static_cast<unsigned>(held_.size());
  for (unsigned i = 0; i < n; ++i) {
    const unsigned k = (last_used_ + i) % n;
    if (!can_take(k) || !has_room(k)) continue;
    if (best < 0 || holding(k) < holding(static_cast<unsigned>(best))) {
      best = static_cast<int>(k);
      if (holding(k) == 0) break;
    }
  }
  if (best >= 0) last_used_ = static_cast<unsigned>(best);
  return best;
}

template <class CanTake>
Dispatcher::Dispatched Dispatcher::dispatch(CanTake&& can_take) {
  Dispatched d;
  while (!pending_.empty()) {
    if (pending_.front()->completion().abandoned()) {
      pending_.pop_front();
      ++d.dropped;
      continue;
    }
    const int picked = pick(can_take);
    if (picked < 0) break;
    const auto k = static_cast<unsigned>(picked);
    // has_room() said the transport takes it: only a transport that just broke refuses.
    if (!transport_.try_send(k, pending_.front()->request.bytes())) break;
    held_[k].in_flight.push_back(pending_.pop_front());
    ++held_[k].dispatched;
    ++d.sent;
  }
  return d;
}

template <class Pred>
std::vector<std::unique_ptr<Job>> Dispatcher::take_pending_if(Pred&& pred) {
  std::vector<std::unique_ptr<Job>> taken;
  for (std::size_t n = pending_.size(); n > 0; --n) {
    std::unique_ptr<Job> job = pending_.pop_front();
    if (pred(std::as_const(*job))) {
      taken.push_back(std::move(job));
    } else {
      pending_.push_back(std::move(job));
    }
  }
  return taken;
}

inline std::unique_ptr<Job> Dispatcher::claim(unsigned k, std::uint64_t task_id) {
  Held& h = held_[k];
  if (h.answering) return h.answering->id == task_id ? std::move(h.answering) : nullptr;
  // An answer to a job still being handed over is impossible: the worker has not read it all.
  if (h.in_flight.empty() || h.in_flight.front()->id != task_id ||
      (h.in_flight.size() == 1 && transport_.sending(k))) {
    return nullptr;
  }
  return h.in_flight.pop_front();
}

inline Job* Dispatcher::hold_answering(unsigned k, std::unique_ptr<Job> job) {
  held_[k].answering = std::move(job);
  return held_[k].answering.get();
}

inline std::vector<std::unique_ptr<Job>> Dispatcher::take_owed(unsigned k) {
  Held& h = held_[k];
  std::vector<std::unique_ptr<Job>> owed;
  if (h.answering) owed.push_back(std::move(h.answering));
  while (!h.in_flight.empty()) owed.push_back(h.in_flight.pop_front());
  return owed;
}

}  // namespace multicore::detail
