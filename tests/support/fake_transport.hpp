// SPDX-License-Identifier: MIT
// A Transport with no process behind it: the test scripts every worker event, and sees every
// request, kill, stop and start the scheduler makes. Checks the seam's contract as it goes.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <multicore/detail/protocol/wire.hpp>
#include <multicore/detail/transport/transport.hpp>
#include <multicore/errors.hpp>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace multicore_test {

namespace fake {

using multicore::detail::AnswerTail;
using multicore::detail::Capabilities;
using multicore::detail::Death;
using multicore::detail::Event;
using multicore::detail::TailRouter;
using multicore::detail::Transport;

/// How one start(k) goes. `hold`: no event until the test calls ready(), spawn_failed() or
/// start_failed() for the slot. `broken`: the transport finds it can make no worker any more:
/// start() throws, and broken() says `text` from then on.
struct StartPlan {
  enum class Kind : std::uint8_t { ready, hold, spawn_failed, start_failed, broken };
  Kind kind = Kind::ready;
  int error = 0;     ///< spawn_failed: the errno
  std::string text;  ///< start_failed: what on_worker_start threw; broken: why
};

/// A request the scheduler handed over with try_send().
struct Sent {
  unsigned slot = 0;
  unsigned life = 0;  ///< which process of the slot took it: 1 for the first, 2 for its replacement
  std::uint64_t task_id = 0;
  std::vector<std::byte> payload;  ///< what followed the RequestHeader
};

/// An answer as the test scripts it.
struct Answer {
  std::uint64_t task_id = 0;
  std::vector<std::byte> payload;
  std::uint64_t tail_bytes = 0;  ///< the payload's last bytes form a tail (see wire.hpp)
  std::uint64_t run_nanos = 0;
};

/// What the test can see of one slot.
struct SlotRecord {
  unsigned lives = 0;  ///< start() calls
  unsigned kills = 0;
  unsigned stops = 0;               ///< try_stop() calls
  std::uint64_t claim = 0;          ///< the task the scripted worker runs (0: none)
  bool alive = false;               ///< a process exists, its death not scripted yet
  std::vector<std::uint64_t> sent;  ///< task ids handed to this slot, every life, in order
};

/// Everything the test can see, read under the fake's lock (see FakeTransport::inspect).
struct State {
  std::vector<SlotRecord> slots;
  std::vector<Sent> sent;               ///< every request taken, in order
  std::vector<std::string> log;         ///< "start 0", "sent 0 3", "answer 0 3", "kill 1", ...
  std::vector<std::string> violations;  ///< broken promises of the seam's contract
  std::uint64_t version = 0;            ///< bumped by each change a collector pass may react to
  std::uint64_t idle_version = 0;       ///< `version` when the collector last went idle in wait()
  int callers_polling = 0;
  bool closed = false;

  std::size_t count_in_log(const std::string& entry) const {
    return static_cast<std::size_t>(std::count(log.begin(), log.end(), entry));
  }
};

/// The fake. Thread-safe everywhere (one mutex), and checks the thread contract of Transport:
/// a verb that overlaps another it may not overlap is recorded in State::violations, as are a
/// start() of a slot whose worker was not reported dead, calls after close(), malformed
/// requests and request bytes that changed before their answer or death was reported.
class FakeTransport final : public Transport {
 public:
  explicit FakeTransport(unsigned workers) : slots_(workers) { state_.slots.resize(workers); }

  // ---- the test's side --------------------------------------------------------------------

  /// How the next start()s of slot k go, in order; once used up, they make a ready worker.
  void plan_start(unsigned k, StartPlan plan) {
    std::lock_guard lock(mutex_);
    slots_.at(k).plans.push_back(std::move(plan));
  }

  /// Slot k's held start: the worker is ready / could not be made / on_worker_start threw.
  void ready(unsigned k) {
    std::lock_guard lock(mutex_);
    push_locked(k, event_of(Event::Kind::ready));
  }
  void spawn_failed(unsigned k, int error) {
    Death d;
    d.cause = Death::Cause::spawn_failed;
    d.error = error;
    die(k, d);
  }
  void start_failed(unsigned k, std::string text) {
    Death d;
    d.cause = Death::Cause::start_failed;
    d.exit_code = 1;
    d.text = std::move(text);
    die(k, d);
  }

  /// Worker k claims `task` and runs its code since `since_ns` (steady_now_ns()), or has
  /// paused it (0).
  void running(unsigned k, std::uint64_t task, std::int64_t since_ns) {
    Scripted s = event_of(Event::Kind::running);
    s.task_id = task;
    s.since_ns = since_ns;
    std::lock_guard lock(mutex_);
    state_.slots.at(k).claim = task;
    push_locked(k, std::move(s));
  }

  /// Worker k answers. With `cut_after`, the worker dies (killed by SIGKILL, no claim) after
  /// that many bytes of the answer's tail, if the tail is taken by a sink.
  void answer(unsigned k, Answer a, std::optional<std::uint64_t> cut_after = std::nullopt) {
    std::lock_guard lock(mutex_);
    Scripted s = answer_locked(k, std::move(a));
    s.cut_after = cut_after;
    if (cut_after) {
      s.death = death_locked(k);
      s.death.signal = SIGKILL;
      s.death.exit_code = -1;
      state_.slots.at(k).alive = false;
    }
    push_locked(k, std::move(s));
  }

  /// Worker k's answer `a` lands while the scheduler's next poll of k looks: that poll sees
  /// nothing (it read the ring just before), and the answer is there for the poll after it.
  /// Nothing wakes the collector until then: the test decides which thread polls next.
  void answer_during_next_poll(unsigned k, Answer a) {
    std::lock_guard lock(mutex_);
    slots_.at(k).landing = answer_locked(k, std::move(a));
  }

  /// Worker k is gone as `death` says; its pid is filled in.
  void die(unsigned k, Death death) {
    std::lock_guard lock(mutex_);
    die_locked(k, std::move(death));
  }

  /// Worker k is killed by `signal` while running its claimed task.
  void crash(unsigned k, int signal) {
    std::lock_guard lock(mutex_);
    Death d = death_locked(k);
    d.signal = signal;
    d.exit_code = -1;
    die_locked(k, std::move(d));
  }

  /// Whether kill(k) makes the worker die at once (killed by SIGKILL, with its claim), as a
  /// real process would; otherwise the test scripts the death. Default: yes.
  void die_on_kill(bool on) {
    std::lock_guard lock(mutex_);
    die_on_kill_ = on;
  }

  /// Each new worker takes at most `bytes` of requests until the test makes room (make_room):
  /// a longer message stays in progress (sending(k)) and moves on in pump(k). Default: no limit.
  void limit_room(std::size_t bytes) {
    std::lock_guard lock(mutex_);
    room_per_worker_ = bytes;
  }
  /// Worker k took `bytes` more of its requests off its ring.
  void make_room(unsigned k, std::size_t bytes) {
    std::lock_guard lock(mutex_);
    slots_.at(k).room += bytes;
    woken_ = true;  // as room made for a message in progress ends a real wait()
    changed_locked();
  }

  /// Answers each request as it is taken (in try_send), if `answer_for` returns an answer.
  /// Called under the fake's lock: it must not call the fake.
  void respond(std::function<std::optional<Answer>(const Sent&)> answer_for) {
    std::lock_guard lock(mutex_);
    responder_ = std::move(answer_for);
  }

  /// broken() says `reason` from now on, and start() throws.
  void break_with(std::string reason) {
    std::lock_guard lock(mutex_);
    broken_ = std::move(reason);
    changed_locked();
  }

  /// Calls `f(const State&)` under the lock and returns what it returns.
  template <class F>
  auto inspect(F&& f) const {
    std::lock_guard lock(mutex_);
    return f(state_);
  }
  State snapshot() const {
    return inspect([](const State& s) { return s; });
  }

  /// Waits until `pred(const State&)` holds, at most `limit`; fails the test if it never does.
  /// Once the test has failed, does not wait: one failure should not cost a bound per step.
  template <class Pred>
  bool await(Pred&& pred, const char* what,
             std::chrono::milliseconds limit = std::chrono::seconds(5)) const {
    if (::testing::Test::HasFailure()) limit = std::chrono::milliseconds(0);
    std::unique_lock lock(mutex_);
    if (changed_cv_.wait_for(lock, limit, [&] { return pred(state_); })) return true;
    ADD_FAILURE() << "fake transport: not within " << limit.count() << " ms: " << what
                  << "\nlog: " << joined_locked();
    return false;
  }

  /// Waits until the collector went idle (in wait(), nothing to poll) after every change so
  /// far: every event scripted until now was handled, and a whole collector pass (timeouts
  /// included) ran after the last one.
  bool await_idle() const {
    const std::uint64_t now = inspect([](const State& s) { return s.version; });
    return await([now](const State& s) { return s.idle_version >= now; }, "collector idle");
  }

  /// Task ids handed to slot k, in order, every life.
  std::vector<std::uint64_t> sent_to(unsigned k) const {
    return inspect([k](const State& s) { return s.slots.at(k).sent; });
  }

  // ---- Transport ----------------------------------------------------------------------------

  unsigned size() const noexcept override { return static_cast<unsigned>(slots_.size()); }
  Capabilities capabilities() const noexcept override { return {true, true}; }

  void start(unsigned k) override {
    const Exclusive send(slots_[k].send_side, *this, "send side of a slot (start)");
    std::lock_guard lock(mutex_);
    not_closed_locked("start");
    Slot& slot = slots_[k];
    if (!slot.plans.empty() && slot.plans.front().kind == StartPlan::Kind::broken) {
      broken_ = slot.plans.front().text;
      slot.plans.pop_front();
      changed_locked();
    }
    if (!broken_.empty()) throw multicore::Error("fake transport: " + broken_);
    SlotRecord& r = state_.slots[k];
    if (!slot.reported_dead) violation_locked("start(" + std::to_string(k) + ") of a live slot");
    slot.reported_dead = false;
    ++r.lives;
    r.alive = true;
    r.claim = 0;
    slot.pid = next_pid_++;
    slot.left = {};
    slot.room = room_per_worker_;
    log_locked("start " + std::to_string(k));
    StartPlan plan;
    if (!slot.plans.empty()) {
      plan = std::move(slot.plans.front());
      slot.plans.pop_front();
    }
    switch (plan.kind) {
      case StartPlan::Kind::ready:
        push_locked(k, event_of(Event::Kind::ready));
        break;
      case StartPlan::Kind::hold:
      case StartPlan::Kind::broken:  // (taken above)
        changed_locked();
        break;
      case StartPlan::Kind::spawn_failed: {
        Death d;
        d.cause = Death::Cause::spawn_failed;
        d.error = plan.error;
        die_locked(k, d);
        break;
      }
      case StartPlan::Kind::start_failed: {
        Death d;
        d.cause = Death::Cause::start_failed;
        d.exit_code = 1;
        d.text = plan.text;
        die_locked(k, d);
        break;
      }
    }
  }

  void kill(unsigned k) noexcept override {
    std::lock_guard lock(mutex_);
    not_closed_locked("kill");
    SlotRecord& r = state_.slots[k];
    ++r.kills;
    log_locked("kill " + std::to_string(k));
    if (r.alive && die_on_kill_) {
      Death d = death_locked(k);
      d.signal = SIGKILL;
      d.exit_code = -1;
      die_locked(k, std::move(d));
    } else {
      changed_locked();
    }
  }

  void resume() noexcept override {
    std::lock_guard lock(mutex_);
    log_locked("resume");
    changed_locked();
  }

  void cancel(unsigned k, std::uint64_t task_id) noexcept override {
    const Exclusive send(slots_[k].send_side, *this, "send side of a slot (cancel)");
    std::lock_guard lock(mutex_);
    log_locked("cancel " + std::to_string(k) + " " + std::to_string(task_id));
    changed_locked();
  }

  bool try_stop(unsigned k) noexcept override {
    const Exclusive send(slots_[k].send_side, *this, "send side of a slot (try_stop)");
    std::lock_guard lock(mutex_);
    not_closed_locked("try_stop");
    SlotRecord& r = state_.slots[k];
    ++r.stops;
    log_locked("stop " + std::to_string(k));
    if (r.alive) {  // exits at once: the scheduler asks only once every answer is in
      Death d = death_locked(k);
      d.exit_code = 0;
      die_locked(k, std::move(d));
    } else {
      changed_locked();
    }
    return true;
  }

  bool try_send(unsigned k, std::span<const std::byte> message) noexcept override {
    const Exclusive send(slots_[k].send_side, *this, "send side of a slot (try_send)");
    std::lock_guard lock(mutex_);
    not_closed_locked("try_send");
    Slot& slot = slots_[k];
    if (!slot.reported_ready || slot.reported_dead || !slot.left.empty()) return false;
    multicore::detail::RequestHeader h;
    if (message.size() < sizeof h) {
      violation_locked("a request shorter than its header");
      return false;
    }
    std::memcpy(&h, message.data(), sizeof h);
    if (h.magic != multicore::detail::request_magic ||
        h.kind != multicore::detail::RequestKind::call || h.task_id == 0 ||
        h.payload_bytes != message.size() - sizeof h || h.tail_bytes > h.payload_bytes) {
      violation_locked("a malformed request");
      return false;
    }
    Sent sent{k, state_.slots[k].lives, h.task_id,
              std::vector<std::byte>(message.begin() + sizeof h, message.end())};
    slot.unanswered.push_back({h.task_id, message, {message.begin(), message.end()}});
    slot.left = message;
    take_locked(slot);
    state_.slots[k].sent.push_back(h.task_id);
    log_locked("sent " + std::to_string(k) + " " + std::to_string(h.task_id));
    std::optional<Answer> answer;
    if (responder_) answer = responder_(sent);
    state_.sent.push_back(std::move(sent));
    if (answer) {
      Scripted s = event_of(Event::Kind::answer);
      s.task_id = answer->task_id;
      s.answer = std::move(*answer);
      push_locked(k, std::move(s));
    } else {
      changed_locked();
    }
    return true;
  }

  bool pump(unsigned k) noexcept override {
    const Exclusive send(slots_[k].send_side, *this, "send side of a slot (pump)");
    std::lock_guard lock(mutex_);
    not_closed_locked("pump");
    return take_locked(slots_[k]);
  }

  bool sending(unsigned k) const noexcept override {
    std::lock_guard lock(mutex_);
    return !slots_[k].left.empty();
  }

  Event poll(unsigned k, TailRouter& router) noexcept override {
    const Exclusive receive(slots_[k].receive_side, *this, "receive side of a slot (poll)");
    Slot& slot = slots_[k];
    Scripted s;
    {
      std::lock_guard lock(mutex_);
      not_closed_locked("poll");
      if (slot.landing) {
        log_locked("landing " + std::to_string(k) + " " + std::to_string(slot.landing->task_id));
        push_locked(k, std::move(*slot.landing));
        slot.landing.reset();
        return {};
      }
      if (slot.events.empty()) return {};
      s = std::move(slot.events.front());
      slot.events.pop_front();
      const std::string at = std::to_string(k);
      switch (s.kind) {
        case Event::Kind::ready:
          slot.reported_ready = true;
          log_locked("ready " + at);
          break;
        case Event::Kind::running:
          log_locked("running " + at + " " + std::to_string(s.task_id));
          break;
        case Event::Kind::stopped:
          log_locked("stopped " + at);
          break;
        case Event::Kind::answer:
          if (s.cut_after) {
            log_locked("answer cut " + at + " " + std::to_string(s.task_id));
          } else {
            log_locked("answer " + at + " " + std::to_string(s.task_id));
            check_unanswered_locked(slot, s.task_id);
          }
          break;
        case Event::Kind::died:
        case Event::Kind::none:
          log_locked("died " + at);
          break;
      }
      if (s.kind == Event::Kind::died || s.cut_after) {
        check_unanswered_locked(slot, 0);
        slot.reported_ready = false;
        slot.reported_dead = true;
      }
      changed_locked();
    }
    // Outside the lock: the router takes the scheduler's locks, which it holds around
    // try_send() and kill().
    Event e;
    e.kind = s.kind;
    e.task_id = s.task_id;
    e.since_ns = s.since_ns;
    switch (s.kind) {
      case Event::Kind::answer:
        slot.received = std::move(s.answer.payload);
        e.run_nanos = s.answer.run_nanos;
        if (s.answer.tail_bytes != 0) e.tail = stream_tail(k, s, router, slot);
        if (s.cut_after) {
          slot.death = std::move(s.death);
          return died_event(slot);
        }
        if (e.tail == nullptr) e.payload = slot.received;
        return e;
      case Event::Kind::died:
        slot.death = std::move(s.death);
        return died_event(slot);
      default:
        return e;
    }
  }

  bool may_have_events(unsigned k) const noexcept override {
    std::lock_guard lock(mutex_);
    return !slots_[k].events.empty();
  }

  bool wait(std::chrono::steady_clock::time_point deadline, bool /*spin*/) noexcept override {
    const Exclusive waiting(waiting_, *this, "wait");
    std::unique_lock lock(mutex_);
    const auto news = [&] {
      return woken_ || std::any_of(slots_.begin(), slots_.end(),
                                   [](const Slot& s) { return !s.events.empty(); });
    };
    if (!news()) {
      state_.idle_version = state_.version;
      changed_cv_.notify_all();
    }
    const bool news_came = changed_cv_.wait_until(lock, deadline, news);
    woken_ = false;
    return news_came;
  }

  void wake() noexcept override {
    std::lock_guard lock(mutex_);
    woken_ = true;
    changed_cv_.notify_all();
  }

  void callers_polling(int delta) noexcept override {
    std::lock_guard lock(mutex_);
    state_.callers_polling += delta;
    if (state_.callers_polling < 0) violation_locked("callers_polling went below 0");
  }

  void release_cold_buffers() noexcept override {}  // nothing is kept warm

  std::string broken() noexcept override {
    std::lock_guard lock(mutex_);
    // Once told, the scheduler fails what the workers held (the contract lets it free their
    // requests then): nothing is owed any more.
    if (!broken_.empty()) {
      for (Slot& slot : slots_) slot.unanswered.clear();
    }
    return broken_;
  }

  void close() noexcept override {
    std::lock_guard lock(mutex_);
    if (state_.closed) return;
    state_.closed = true;
    for (SlotRecord& r : state_.slots) r.alive = false;
    log_locked("close");
    changed_locked();
  }

 private:
  /// One scripted event.
  struct Scripted {
    Event::Kind kind = Event::Kind::none;
    std::uint64_t task_id = 0;
    std::int64_t since_ns = 0;
    Answer answer;
    std::optional<std::uint64_t> cut_after;  // answer: die after this many tail bytes
    Death death;                             // died, or an answer cut short
  };

  /// A request taken and not yet answered: the bytes must stay as they were until then.
  struct Unanswered {
    std::uint64_t task_id;
    std::span<const std::byte> message;
    std::vector<std::byte> copy;
  };

  struct Slot {
    // Under mutex_:
    std::deque<Scripted> events;
    std::optional<Scripted> landing;  // see answer_during_next_poll
    std::deque<StartPlan> plans;
    std::deque<Unanswered> unanswered;
    int pid = 0;
    std::span<const std::byte> left;  // the part of the last request not taken yet
    std::size_t room = 0;             // bytes the worker takes before the test makes room
    bool reported_ready = false;      // the scheduler polled its ready event
    bool reported_dead = true;  // ... its died event (or it never had a worker): start() may run
    // Receive side (the thread in poll(k)): what the last event points to.
    std::vector<std::byte> received;
    std::vector<std::byte> tail;
    Death death;
    // Contract checks: which verbs are in progress.
    std::atomic<bool> send_side{false};
    std::atomic<bool> receive_side{false};
  };

  /// Marks a verb in progress; one that was already is a violation of the thread contract.
  class Exclusive {
   public:
    Exclusive(std::atomic<bool>& flag, FakeTransport& owner, const char* what) noexcept
        : flag_(flag), mine_(!flag.exchange(true, std::memory_order_acquire)) {
      if (!mine_) {
        std::lock_guard lock(owner.mutex_);
        owner.violation_locked(std::string("two threads at once in the ") + what);
      }
    }
    ~Exclusive() {
      if (mine_) flag_.store(false, std::memory_order_release);
    }
    Exclusive(const Exclusive&) = delete;
    Exclusive& operator=(const Exclusive&) = delete;

   private:
    std::atomic<bool>& flag_;
    bool mine_;
  };

  static Scripted event_of(Event::Kind kind) {
    Scripted s;
    s.kind = kind;
    return s;
  }

  Event died_event(Slot& slot) noexcept {
    Event e;
    e.kind = Event::Kind::died;
    e.death = &slot.death;
    return e;
  }

  /// The tail of the answer in `s`, if the router has a sink for it: fed in small pieces, up to
  /// `cut_after` bytes if the worker dies on the way.
  AnswerTail* stream_tail(unsigned k, const Scripted& s, TailRouter& router, Slot& slot) noexcept {
    const std::span<const std::byte> payload = slot.received;
    const auto head_bytes = static_cast<std::size_t>(payload.size() - s.answer.tail_bytes);
    AnswerTail* sink =
        router.open_tail(k, s.task_id, payload.first(head_bytes), s.answer.tail_bytes);
    if (sink == nullptr) return nullptr;
    std::span<const std::byte> tail = payload.subspan(head_bytes);
    if (s.cut_after) tail = tail.first(std::min<std::size_t>(tail.size(), *s.cut_after));
    constexpr std::size_t piece = 7;  // odd, so pieces split the elements of any sequence
    while (!tail.empty()) {
      const std::size_t n = std::min(piece, tail.size());
      sink->append(tail.first(n));
      tail = tail.subspan(n);
    }
    return sink;
  }

  /// The worker takes as much of the message in progress as it has room for, reading every
  /// byte (as a real transport copies them): they must still be those try_send() was given.
  bool take_locked(Slot& slot) {
    const std::size_t n = std::min(slot.room, slot.left.size());
    if (n == 0) return false;
    const Unanswered& u = slot.unanswered.back();  // only the last request can be in progress
    const std::size_t at = u.message.size() - slot.left.size();
    if (!std::equal(slot.left.begin(), slot.left.begin() + static_cast<std::ptrdiff_t>(n),
                    u.copy.begin() + static_cast<std::ptrdiff_t>(at))) {
      violation_locked("the bytes of request " + std::to_string(u.task_id) +
                       " changed while it was being sent");
    }
    slot.left = slot.left.subspan(n);
    if (slot.room != unlimited) slot.room -= n;
    return true;
  }

  Death death_locked(unsigned k) const {
    Death d;
    d.pid = slots_[k].pid;
    d.running = state_.slots[k].claim;
    return d;
  }

  void die_locked(unsigned k, Death death) {
    SlotRecord& r = state_.slots[k];
    if (death.cause != Death::Cause::spawn_failed && death.pid == 0) death.pid = slots_[k].pid;
    r.alive = false;
    r.claim = 0;
    Scripted s = event_of(Event::Kind::died);
    s.death = std::move(death);
    push_locked(k, std::move(s));
  }

  /// The event of worker k's answer `a`; the worker no longer runs that task.
  Scripted answer_locked(unsigned k, Answer a) {
    Scripted s = event_of(Event::Kind::answer);
    s.task_id = a.task_id;
    s.answer = std::move(a);
    SlotRecord& r = state_.slots.at(k);
    if (r.claim == s.task_id) r.claim = 0;
    return s;
  }

  void push_locked(unsigned k, Scripted s) {
    slots_[k].events.push_back(std::move(s));
    changed_locked();
  }

  void changed_locked() {
    ++state_.version;
    changed_cv_.notify_all();
  }

  /// The bytes of the request answered now (`task_id`), or of every request a dead worker
  /// held (0), must not have changed since try_send().
  void check_unanswered_locked(Slot& slot, std::uint64_t task_id) {
    const auto check = [&](const Unanswered& u) {
      if (!std::equal(u.message.begin(), u.message.end(), u.copy.begin(), u.copy.end())) {
        violation_locked("the bytes of request " + std::to_string(u.task_id) +
                         " changed before its answer or death was reported");
      }
    };
    if (task_id == 0) {
      for (const Unanswered& u : slot.unanswered) check(u);
      slot.unanswered.clear();
    } else if (!slot.unanswered.empty() && slot.unanswered.front().task_id == task_id) {
      check(slot.unanswered.front());
      slot.unanswered.pop_front();
    }
  }

  void not_closed_locked(const char* verb) {
    if (state_.closed) violation_locked(std::string(verb) + "() after close()");
  }

  void violation_locked(std::string what) {
    state_.violations.push_back(std::move(what));
    changed_cv_.notify_all();
  }

  void log_locked(std::string entry) { state_.log.push_back(std::move(entry)); }

  std::string joined_locked() const {
    std::string all;
    for (const std::string& entry : state_.log) all += entry + "; ";
    return all;
  }

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_cv_;
  std::deque<Slot> slots_;  // a deque: Slot holds atomics, which cannot move
  State state_;
  std::function<std::optional<Answer>(const Sent&)> responder_;
  std::string broken_;
  static constexpr std::size_t unlimited = SIZE_MAX;
  std::size_t room_per_worker_ = unlimited;
  bool die_on_kill_ = true;
  bool woken_ = false;
  int next_pid_ = 4000;
  std::atomic<bool> waiting_{false};
};

/// Lends a FakeTransport to a Scheduler (which takes ownership of its Transport) while the test
/// keeps it: the test can still look at what happened after the scheduler is gone.
class Lent final : public Transport {
 public:
  explicit Lent(std::shared_ptr<FakeTransport> fake) : fake_(std::move(fake)) {}
  ~Lent() override { fake_->close(); }  // as a real transport's destructor does
  Lent(const Lent&) = delete;
  Lent& operator=(const Lent&) = delete;

  unsigned size() const noexcept override { return fake_->size(); }
  Capabilities capabilities() const noexcept override { return fake_->capabilities(); }
  void start(unsigned k) override { fake_->start(k); }
  void kill(unsigned k) noexcept override { fake_->kill(k); }
  bool try_stop(unsigned k) noexcept override { return fake_->try_stop(k); }
  void resume() noexcept override { fake_->resume(); }
  void cancel(unsigned k, std::uint64_t task_id) noexcept override { fake_->cancel(k, task_id); }
  bool try_send(unsigned k, std::span<const std::byte> message) noexcept override {
    return fake_->try_send(k, message);
  }
  bool pump(unsigned k) noexcept override { return fake_->pump(k); }
  bool sending(unsigned k) const noexcept override { return fake_->sending(k); }
  Event poll(unsigned k, TailRouter& router) noexcept override { return fake_->poll(k, router); }
  bool may_have_events(unsigned k) const noexcept override { return fake_->may_have_events(k); }
  bool wait(std::chrono::steady_clock::time_point deadline, bool spin) noexcept override {
    return fake_->wait(deadline, spin);
  }
  void wake() noexcept override { fake_->wake(); }
  void callers_polling(int delta) noexcept override { fake_->callers_polling(delta); }
  void release_cold_buffers() noexcept override { fake_->release_cold_buffers(); }
  std::string broken() noexcept override { return fake_->broken(); }
  void close() noexcept override { fake_->close(); }

 private:
  std::shared_ptr<FakeTransport> fake_;
};

}  // namespace fake

using fake::FakeTransport;

}  // namespace multicore_test
