// SPDX-License-Identifier: MIT
// Rank 0's view of the node agents: every worker of every agent as a slot of one Transport.
#pragma once

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../../../options.hpp"
#include "../../protocol/wire.hpp"
#include "../../util/process.hpp"
#include "../transport.hpp"
#include "mpi_api.hpp"
#include "relay.hpp"

namespace multicore::detail::mpi {

/// What rank 0 knows of one agent.
struct AgentInfo {
  int rank = 0;
  unsigned workers = 0;
  std::string host;
};

/// The workers of every node agent, numbered agent by agent: slot k of this transport is
/// worker j of one agent. Every MPI call is made under one mutex (the scheduler calls from
/// several threads; MPI_THREAD_MULTIPLE allows it, and the calls are short). Waiting is polling
/// with a growing sleep, up to `max_nap`, but none while a message moves (see has_news()): MPI
/// has no wait that does not burn a core.
class RemoteTransport final : public Transport {
 public:
  /// Where the agents' workers' lines go (tagged output): `(k, pid, stream, where, line)`,
  /// called on the thread that receives, under this transport's lock: it must be quick.
  using OutputSink = std::function<void(unsigned, int, WorkerStream, std::string, std::string)>;

  explicit RemoteTransport(std::vector<AgentInfo> agents, OutputSink output = {})
      : agents_(std::move(agents)), output_(std::move(output)) {
    unsigned total = 0;
    for (const AgentInfo& a : agents_) {
      inboxes_.emplace_back(a.rank, tag_up);
      first_slot_.push_back(total);
      total += a.workers;
    }
    slots_ = std::vector<Slot>(total);
    for (std::size_t a = 0; a < agents_.size(); ++a) {
      for (unsigned j = 0; j < agents_[a].workers; ++j) {
        slots_[first_slot_[a] + j].agent = a;
        slots_[first_slot_[a] + j].worker = j;
      }
    }
  }
  ~RemoteTransport() override { close(); }

  unsigned size() const noexcept override { return static_cast<unsigned>(slots_.size()); }
  Capabilities capabilities() const noexcept override { return {false, false, 64}; }

  void start(unsigned k) override {
    std::lock_guard lock(mutex_);
    Slot& s = slots_[k];
    queued_ -= s.events.size();
    s.events.clear();
    s.died = false;
    s.life = next_life();
    control(k, Kind::start);
  }

  void kill(unsigned k) noexcept override {
    std::lock_guard lock(mutex_);
    try {
      control(k, Kind::kill);
    } catch (...) {  // MPI failed: the job is ending anyway
    }
  }

  bool try_stop(unsigned k) noexcept override {
    std::lock_guard lock(mutex_);
    try {
      control(k, Kind::stop);
      return true;
    } catch (...) {
      return false;
    }
  }

  void resume() noexcept override {
    std::lock_guard lock(mutex_);
    try {
      for (const AgentInfo& a : agents_) {
        Header h;
        h.kind = Kind::resume;
        outbox_.post(a.rank, h, {});
      }
    } catch (...) {  // MPI failed: the job is ending anyway
    }
  }

  void relay_stop(std::uint32_t slot, std::uint32_t word) noexcept override {
    std::lock_guard lock(mutex_);
    try {
      for (const AgentInfo& a : agents_) {
        Header h;
        h.kind = Kind::stop_flag;
        h.slot = slot;
        h.value = word;
        outbox_.post(a.rank, h, {});
      }
    } catch (...) {  // MPI failed: the job is ending anyway
    }
  }

  void cancel(unsigned k, std::uint64_t task_id) noexcept override {
    std::lock_guard lock(mutex_);
    try {
      Header h;
      h.kind = Kind::cancel;
      h.slot = slots_[k].worker;
      h.life = slots_[k].life;
      h.task_id = task_id;
      outbox_.post(agent_rank(k), h, {});
    } catch (...) {
    }
  }

  bool try_send(unsigned k, std::span<const std::byte> message) noexcept override {
    if (message.size() < sizeof(RequestHeader)) return false;
    RequestHeader request;
    std::memcpy(&request, message.data(), sizeof request);
    std::lock_guard lock(mutex_);
    try {
      Header h;
      h.kind = Kind::request;
      h.slot = slots_[k].worker;
      h.life = slots_[k].life;
      h.task_id = request.task_id;
      outbox_.post(agent_rank(k), h, message);
      return true;
    } catch (...) {
      return false;
    }
  }

  bool pump(unsigned /*k*/) noexcept override {
    std::lock_guard lock(mutex_);
    try {
      return outbox_.progress();
    } catch (...) {
      return false;
    }
  }

  bool sending(unsigned /*k*/) const noexcept override { return false; }

  Event poll(unsigned k, TailRouter& /*router*/) noexcept override {
    std::lock_guard lock(mutex_);
    Slot& s = slots_[k];
    try {
      receive(s.agent);
    } catch (...) {  // MPI failed: nothing new can be known
    }
    if (s.events.empty()) return {};
    spares_.give(std::move(s.current.bytes));  // the scheduler is done with the last answer
    s.current = std::move(s.events.front());
    s.events.pop_front();
    --queued_;
    Event e = s.current.event;
    if (e.kind == Event::Kind::answer) e.payload = s.current.bytes.bytes();
    if (e.kind == Event::Kind::died) {
      s.death = std::move(s.current.death);
      e.death = &s.death;
    }
    return e;
  }

  // A hint: knowing would take an MPI call under the lock, which is what poll() does anyway.
  bool may_have_events(unsigned /*k*/) const noexcept override { return true; }

  bool wait(std::chrono::steady_clock::time_point deadline, bool /*spin*/) noexcept override {
    auto nap = std::chrono::microseconds(1);
    for (;;) {
      if (woken_.exchange(false, std::memory_order_acq_rel) || has_news()) return true;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      nap = std::min({nap * 2, max_nap,
                      std::chrono::duration_cast<std::chrono::microseconds>(deadline - now)});
      const timespec ts{0, static_cast<long>(nap.count()) * 1000};
      nanosleep(&ts, nullptr);
    }
  }

  void wake() noexcept override { woken_.store(true, std::memory_order_release); }
  void callers_polling(int /*delta*/) noexcept override {}
  void release_cold_buffers() noexcept override {
    std::lock_guard lock(mutex_);
    spares_.release_if_cold(SpareBuffers::Clock::now());
  }
  std::string broken() noexcept override { return {}; }

  void close() noexcept override {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    // Workers still alive are killed; the agents keep serving (a later Pool starts them again).
    try {
      for (unsigned k = 0; k < slots_.size(); ++k) {
        if (!slots_[k].died) control(k, Kind::kill);
      }
      while (!outbox_.empty()) outbox_.progress();
      // A message half received is received to its end: its other pieces would reach the next
      // Pool's inboxes as messages of their own. One that streams ends once its agent has
      // killed its worker, as it was just told to.
      for (Inbox& in : inboxes_) {
        while (in.receiving()) {
          if (!in.poll(&spares_)) sched_yield();
        }
      }
    } catch (...) {
    }
  }

  /// Cheap look for anything to receive, from any agent (also lets MPI make progress). Events
  /// already received are news: a poll of one slot takes every message its agent sent, also
  /// those about the agent's other slots, which then wait here for their own poll. While a
  /// message moves, yes: receiving it further is what the caller must do next (it moves only
  /// while someone calls MPI; a nap per step made 64 KiB over TCP take milliseconds).
  bool has_news() noexcept {
    {
      std::lock_guard lock(mutex_);
      if (queued_ != 0) return true;
      try {
        outbox_.progress();
        if (!transferring_locked()) {
          int flag = 0;
          check(MPI_Iprobe(MPI_ANY_SOURCE, tag_up, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE),
                "MPI_Iprobe");
          return flag != 0;
        }
      } catch (...) {
        return false;
      }
    }
    // The other side of the transfer may share this core: let it run before looking again.
    sched_yield();
    return true;
  }

  std::string location(unsigned k) const override {
    const AgentInfo& a = agents_[slots_[k].agent];
    return "rank " + std::to_string(a.rank) + " (" + a.host + ")";
  }

 private:
  static constexpr std::chrono::microseconds max_nap{1000};

  struct Pending {
    Event event;
    Writer bytes;  // an answer's payload
    Death death;
  };

  struct Slot {
    std::size_t agent = 0;
    unsigned worker = 0;  // the agent's slot number
    std::deque<Pending> events;
    Pending current;  // what the last poll returned (its bytes stay valid until the next)
    Death death;
    bool died = false;
    std::uint64_t life = 0;  // numbered by next_life() at each start
  };

  /// Lives are numbered across every RemoteTransport of this process, so a Pool made after
  /// another one never mistakes the old pool's messages for its own.
  static std::uint64_t next_life() noexcept {
    static std::atomic<std::uint64_t> last{0};
    return last.fetch_add(1, std::memory_order_relaxed) + 1;
  }

  int agent_rank(unsigned k) const noexcept { return agents_[slots_[k].agent].rank; }

  /// A message is on its way, either way. Under mutex_.
  bool transferring_locked() const noexcept {
    return !outbox_.empty() || std::any_of(inboxes_.begin(), inboxes_.end(),
                                           [](const Inbox& in) { return in.receiving(); });
  }

  /// Sends a message without bytes about slot k. Under mutex_.
  void control(unsigned k, Kind kind) {
    Header h;
    h.kind = kind;
    h.slot = slots_[k].worker;
    h.life = slots_[k].life;
    outbox_.post(agent_rank(k), h, {});
  }

  /// Takes every message agent `a` has sent and queues its events by slot. Under mutex_.
  void receive(std::size_t a) {
    outbox_.progress();
    while (std::optional<Message> m = inboxes_[a].poll(&spares_)) {
      if (m->header.slot >= agents_[a].workers) continue;  // malformed: ignore
      const unsigned k = first_slot_[a] + m->header.slot;
      if (m->header.kind == Kind::output) {
        try {
          if (output_) {
            const std::span<const std::byte> line = m->bytes.bytes();
            output_(k, static_cast<int>(m->header.value),
                    m->header.task_id == 1 ? WorkerStream::err : WorkerStream::out, location(k),
                    std::string(reinterpret_cast<const char*>(line.data()), line.size()));
          }
        } catch (...) {  // out of memory: the line is lost, not the events behind it
        }
        continue;
      }
      if (m->header.life != slots_[k].life) continue;  // about an earlier life of the slot
      Pending p;
      p.event.task_id = m->header.task_id;
      switch (m->header.kind) {
        case Kind::ready:
          p.event.kind = Event::Kind::ready;
          p.event.pid = static_cast<int>(m->header.value);
          break;
        case Kind::running:
          p.event.kind = Event::Kind::running;
          p.event.since_ns = m->header.value < 0 ? 0 : steady_now_ns() - m->header.value;
          break;
        case Kind::stopped:
          p.event.kind = Event::Kind::stopped;
          p.event.since_ns = m->header.value < 0 ? 0 : steady_now_ns() - m->header.value;
          break;
        case Kind::answer:
          p.event.kind = Event::Kind::answer;
          p.event.run_nanos = static_cast<std::uint64_t>(m->header.value);
          p.bytes = std::move(m->bytes);
          break;
        case Kind::answer_streamed: {
          StreamEnd end;
          const std::size_t n = m->bytes.size();
          if (n < sizeof end) continue;  // malformed: ignore
          std::memcpy(&end, m->bytes.data() + (n - sizeof end), sizeof end);
          if (end.whole == 0) continue;  // cut: its worker's death, or the answer whole, follows
          p.event.kind = Event::Kind::answer;
          p.event.run_nanos = end.run_nanos;
          p.bytes = std::move(m->bytes);
          p.bytes.resize(n - sizeof end);
          break;
        }
        case Kind::died:
          p.event.kind = Event::Kind::died;
          p.death = decode_death(m->bytes.bytes(), " on " + location(k));
          slots_[k].died = true;
          break;
        default:
          continue;
      }
      slots_[k].events.push_back(std::move(p));
      ++queued_;
    }
  }

  std::vector<AgentInfo> agents_;
  OutputSink output_;
  std::vector<unsigned> first_slot_;  // this transport's slot of each agent's worker 0
  std::mutex mutex_;                  // every MPI call, and everything below
  SpareBuffers spares_;               // before the boxes, which may hold its buffers
  std::vector<Inbox> inboxes_;
  Outbox outbox_{tag_down};
  std::vector<Slot> slots_;
  std::size_t queued_ = 0;  // events received and not yet polled, over every slot
  std::atomic<bool> woken_{false};
  bool closed_ = false;
};

}  // namespace multicore::detail::mpi
