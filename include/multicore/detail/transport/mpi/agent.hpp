// SPDX-License-Identifier: MIT
// A node agent (every MPI rank but 0): runs this node's workers for rank 0, relaying requests
// down to them and what happens to them up to rank 0.
#pragma once

#include <sched.h>
#include <sys/prctl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../util/process.hpp"
#include "../../util/spin.hpp"
#include "../shm/shm_transport.hpp"
#include "../shm/stop_table.hpp"
#include "mpi_api.hpp"
#include "relay.hpp"

namespace multicore::detail::mpi {

/// Serves rank 0 until it says exit. The workers are this node's ShmTransport (made before MPI
/// was initialised, so they carry none of its state); rank 0's scheduler decides everything, the
/// agent only relays. It never blocks in MPI (a rank waiting in MPI_Recv burns a core in Open
/// MPI): it polls, then naps on the local transport's bell, which wakes it at once for local
/// events and after at most `max_nap` for messages from rank 0.
class Agent final : private TailRouter {
 public:
  explicit Agent(ShmTransport& local) : local_(local), slots_(local.size()) {
    local_.forward_output(&forward_);
  }
  ~Agent() { local_.forward_output(nullptr); }
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  /// Serves until rank 0 says exit; by then every local worker is gone.
  void run() {
    // Naps end when asked, not up to 50 us later (the default timer slack): the agent's naps
    // are short, and the first message after one waits for its end.
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    auto nap = min_nap;
    auto idle_since = std::chrono::steady_clock::now();
    while (!exiting_) {
      bool progressed = false;
      bool workers_busy = false;  // some local worker has a request to answer
      while (std::optional<Message> m = inbox_.poll(&spares_)) {
        handle(*m);
        progressed = true;
      }
      for (unsigned j = 0; j < slots_.size(); ++j) {
        progressed |= feed(j);
        workers_busy |= !slots_[j].sent.empty();
        progressed |= local_.pump(j);
        for (Event e = local_.poll(j, *this); e.kind != Event::Kind::none;
             e = local_.poll(j, *this)) {
          forward(j, e);
          progressed = true;
        }
      }
      progressed |= outbox_.send_written();
      progressed |= send_lines();
      progressed |= outbox_.progress(&spares_);
      const auto now = std::chrono::steady_clock::now();
      if (streaming_ != no_stream) unstall_stream(now);
      if (progressed) {
        nap = min_nap;
        idle_since = now;
        continue;
      }
      // Just busy: more is likely to come at once (the next request of a caller in a loop, the
      // answer of a short task), and any nap costs tens of microseconds here. Look again,
      // letting a worker that shares this core run meanwhile; while none has work, keep the
      // core: handing it to a worker that only spins for its next request costs a switch (some
      // microseconds) each way, and the request rank 0 sends next would wait for them.
      // A message moving over MPI moves only while we call MPI (several calls on both sides for
      // a large or TCP message): no nap until it has gone or arrived.
      const bool transferring = inbox_.receiving() || outbox_.moving();
      if (transferring || now - idle_since < spin_window) {
        if (workers_busy || transferring) {  // the other side of a transfer may share the core
          sched_yield();
        } else {
          cpu_relax();
        }
        continue;
      }
      // Long idle: nap longer still; the first request after it waits a little more.
      const auto limit = now - idle_since > std::chrono::seconds(1) ? max_idle_nap : max_nap;
      spares_.release_if_cold(now);
      local_.wait(now + nap, false);
      nap = std::min<std::chrono::microseconds>(nap * 2, limit);
    }
    local_.close();  // its last lines come here first
    // An answer still streaming is cut: its worker is gone.
    if (streaming_ != no_stream) end_stream(false, 0);
    send_lines();
    Header bye;
    bye.kind = Kind::bye;
    outbox_.post(0, bye, {});
    while (!outbox_.empty()) outbox_.progress();
  }

 private:
  static constexpr std::chrono::microseconds spin_window{200};
  static constexpr std::chrono::microseconds min_nap{2};
  static constexpr std::chrono::microseconds max_nap{1000};
  static constexpr std::chrono::microseconds max_idle_nap{20000};
  /// An answer that streams and gets no byte for this long is cut (see unstall_stream).
  static constexpr std::chrono::milliseconds max_stream_stall{100};

  /// A tail goes into the slot's answer buffer, after its head: the answer then goes up whole,
  /// or as it is written when it streams. Appending never allocates: open_tail() made room for
  /// the head and the whole announced tail, and a tail is never longer than announced
  /// (AnswerTail's contract).
  class TailSink final : public AnswerTail {
   public:
    Writer* out = nullptr;
    void append(std::span<const std::byte> bytes) noexcept override {
      out->write(bytes.data(), bytes.size());
    }
    void deliver_tail(std::uint64_t /*run_nanos*/) noexcept override {}
  };

  struct Slot {
    std::uint64_t life = 0;         // the life rank 0 last started; 0: none
    std::uint64_t worker_life = 0;  // the life the local worker was started for
    bool alive = false;             // a local worker exists (until its death is seen)
    bool start_pending = false;     // start it once the previous worker's death is seen
    bool kill_pending = false;      // kill it as soon as it is started
    std::deque<Writer> queued;      // requests not handed to the worker yet
    /// Queued requests rank 0 cancelled behind others: the worker skips them in turn (answers
    /// go up in the order rank 0 sent the requests).
    std::vector<std::uint64_t> cancelled;
    std::deque<Writer> sent;  // handed over, answer not seen yet
    Writer answer;            // an answer whose tail is arriving
    // Where that tail goes: one per slot, since several workers stream answers at once.
    TailSink sink;
  };

  /// A line a worker printed (tagged output), on its way to rank 0.
  struct Line {
    unsigned slot = 0;
    int pid = 0;
    WorkerStream stream = WorkerStream::out;
    std::string text;
  };

  /// Sends rank 0 the lines the output reader handed over; true if there were any. Called on
  /// every turn of the agent's loop: without lines, one atomic exchange.
  bool send_lines() {
    if (!has_lines_.exchange(false, std::memory_order_acquire)) return false;
    {
      std::lock_guard lock(lines_mutex_);
      if (lines_.empty()) return false;
      sending_lines_.swap(lines_);
    }
    for (const Line& l : sending_lines_) {
      Header h;
      h.kind = Kind::output;
      h.slot = l.slot;
      h.task_id = l.stream == WorkerStream::err ? 1 : 0;
      h.value = l.pid;
      Writer line;
      line.write(l.text.data(), l.text.size());
      const std::span<const std::byte> bytes = line.bytes();
      outbox_.post(0, h, bytes, std::move(line));
    }
    sending_lines_.clear();
    return true;
  }

  void handle(Message& m) {
    if (m.header.kind == Kind::exit) {
      exiting_ = true;
      return;
    }
    if (m.header.kind == Kind::resume) {
      local_.resume();
      return;
    }
    if (m.header.kind == Kind::stop_flag) {
      stop_table().mirror_word(m.header.slot, static_cast<std::uint32_t>(m.header.value));
      return;
    }
    if (m.header.slot >= slots_.size()) return;  // malformed: ignore
    const unsigned j = m.header.slot;
    Slot& s = slots_[j];
    switch (m.header.kind) {
      case Kind::start:
        s.life = m.header.life;
        s.queued.clear();
        s.cancelled.clear();
        s.sent.clear();
        if (s.alive) {
          s.start_pending = true;  // the worker of the life before is still dying
        } else {
          start(j);
        }
        break;
      case Kind::kill:
        if (m.header.life != s.life) break;
        if (s.start_pending) {
          s.kill_pending = true;
        } else if (s.alive) {
          local_.kill(j);
        }
        break;
      case Kind::stop:
        if (m.header.life == s.life) s.queued.push_back(stop_request());
        break;
      case Kind::request:
        if (m.header.life == s.life) s.queued.push_back(std::move(m.bytes));
        break;
      case Kind::cancel:
        if (m.header.life == s.life) cancel(j, m.header.task_id);
        break;
      default:
        break;
    }
  }

  void start(unsigned j) {
    Slot& s = slots_[j];
    s.start_pending = false;
    s.alive = true;
    s.worker_life = s.life;
    local_.start(j);
    if (std::exchange(s.kill_pending, false)) local_.kill(j);
  }

  static Writer stop_request() {
    RequestHeader h;
    h.kind = RequestKind::stop;
    Writer w;
    w.write(&h, sizeof h);
    return w;
  }

  /// The task a queued message asks for; 0 for a stop request (or a malformed one).
  static std::uint64_t task_of(const Writer& message) noexcept {
    RequestHeader request;
    if (message.size() < sizeof request) return 0;
    std::memcpy(&request, message.data(), sizeof request);
    return request.kind == RequestKind::call ? request.task_id : 0;
  }

  /// Rank 0 no longer wants `task_id`'s answer. Answers must go up in the order rank 0 sent the
  /// requests: the next request due, still here, is answered with nothing at once (as a worker
  /// answers a request it skips); one behind others is skipped by the worker in its turn, as
  /// is one the worker has already.
  void cancel(unsigned j, std::uint64_t task_id) {
    Slot& s = slots_[j];
    for (auto it = s.queued.begin(); it != s.queued.end(); ++it) {
      if (task_id == 0 || task_of(*it) != task_id) continue;
      if (it != s.queued.begin() || !s.sent.empty()) {
        s.cancelled.push_back(task_id);
        return;
      }
      s.queued.erase(it);
      Header h;
      h.kind = Kind::answer;
      h.slot = j;
      h.life = s.worker_life;
      h.task_id = task_id;
      outbox_.post(0, h, {});
      return;
    }
    local_.cancel(j, task_id);
  }

  /// Hands the next queued request to slot j's worker when it can take one.
  bool feed(unsigned j) {
    Slot& s = slots_[j];
    if (s.queued.empty() || !s.alive || s.start_pending || local_.sending(j)) return false;
    if (!local_.try_send(j, s.queued.front().bytes())) return false;
    if (!s.cancelled.empty()) {
      const auto it = std::find(s.cancelled.begin(), s.cancelled.end(), task_of(s.queued.front()));
      if (it != s.cancelled.end()) {
        local_.cancel(j, *it);
        s.cancelled.erase(it);
      }
    }
    s.sent.push_back(std::move(s.queued.front()));
    s.queued.pop_front();
    return true;
  }

  AnswerTail* open_tail(unsigned j, std::uint64_t task_id, std::span<const std::byte> head,
                        std::uint64_t tail_bytes) noexcept override {
    Slot& s = slots_[j];
    const std::size_t bytes = head.size() + static_cast<std::size_t>(tail_bytes);
    try {
      if (bytes > max_piece && !outbox_.streaming()) {
        // Its first pieces go up while the worker writes the rest: rank 0's side of MPI moves
        // them meanwhile, where a whole answer would leave only once the worker is done.
        Writer buffer = spares_.take(bytes + sizeof(StreamEnd));
        buffer.clear();
        buffer.write(head.data(), head.size());
        Header h;
        h.kind = Kind::answer_streamed;
        h.slot = j;
        h.life = s.worker_life;
        h.task_id = task_id;
        h.bytes = bytes + sizeof(StreamEnd);
        s.sink.out = &outbox_.open_stream(0, h, std::move(buffer));
        streaming_ = j;
        stream_bytes_ = h.bytes;
        stream_written_ = head.size();
        stream_moved_ = std::chrono::steady_clock::now();
        return &s.sink;
      }
      s.answer = spares_.take(bytes);
      s.answer.clear();
      s.answer.write(head.data(), head.size());
    } catch (...) {
      return nullptr;  // the local transport assembles it instead
    }
    s.sink.out = &s.answer;
    return &s.sink;
  }

  /// Ends the answer that streams: `whole`, or cut (its worker died, or stalled: see
  /// unstall_stream); a cut one's bytes are made up to the size announced, and rank 0 drops it.
  void end_stream(bool whole, std::uint64_t run_nanos) {
    Writer& out = *slots_[streaming_].sink.out;
    StreamEnd end;
    end.run_nanos = run_nanos;
    end.whole = whole ? 1 : 0;
    if (!whole) out.resize(stream_bytes_ - sizeof end);  // never grows: reserved in open_tail
    out.write(&end, sizeof end);
    streaming_ = no_stream;
    outbox_.close_stream();
  }

  /// Messages behind an answer that streams wait for its end: if its worker stops writing it
  /// (stopped from outside, by a debugger, say), the answers of the agent's other workers would
  /// wait as long. Past max_stream_stall without a byte, the stream is cut (rank 0 drops it)
  /// and the answer is assembled here, to go up whole once its worker is done.
  void unstall_stream(std::chrono::steady_clock::time_point now) {
    Slot& s = slots_[streaming_];
    const Writer& out = *s.sink.out;
    if (out.size() != stream_written_) {
      stream_written_ = out.size();
      stream_moved_ = now;
      return;
    }
    if (now - stream_moved_ < max_stream_stall) return;
    try {
      s.answer = spares_.take(stream_bytes_ - sizeof(StreamEnd));
      s.answer.clear();
      s.answer.write(out.data(), out.size());
    } catch (...) {  // no memory for it: it streams on
      return;
    }
    end_stream(false, 0);
    s.sink.out = &s.answer;
  }

  /// Tells rank 0 what happened to slot j's worker.
  void forward(unsigned j, const Event& e) {
    Slot& s = slots_[j];
    Header h;
    h.slot = j;
    h.life = s.worker_life;  // events are about the local worker's life (the slot's may be newer)
    h.task_id = e.task_id;
    switch (e.kind) {
      case Event::Kind::ready:
        h.kind = Kind::ready;
        h.value = e.pid;
        outbox_.post(0, h, {});
        return;
      case Event::Kind::running:
        h.kind = Kind::running;
        h.value = e.since_ns == 0 ? -1 : steady_now_ns() - e.since_ns;
        outbox_.post(0, h, {});
        return;
      case Event::Kind::stopped:
        h.kind = Kind::stopped;
        h.value = e.since_ns == 0 ? -1 : steady_now_ns() - e.since_ns;
        outbox_.post(0, h, {});
        return;
      case Event::Kind::answer: {
        h.kind = Kind::answer;
        h.value = static_cast<std::int64_t>(e.run_nanos);
        if (!s.sent.empty()) {
          spares_.give(std::move(s.sent.front()));
          s.sent.pop_front();
        }
        if (e.tail != nullptr && streaming_ == j) {
          end_stream(true, e.run_nanos);
          return;
        }
        Writer answer;
        if (e.tail != nullptr) {
          answer = std::move(s.answer);
        } else {
          answer.write(e.payload.data(), e.payload.size());
        }
        const std::span<const std::byte> bytes = answer.bytes();
        outbox_.post(0, h, bytes, std::move(answer));
        return;
      }
      case Event::Kind::died: {
        if (streaming_ == j) end_stream(false, 0);  // before the death it explains
        h.kind = Kind::died;
        s.alive = false;
        s.sent.clear();
        // Requests of this life die with it; what is queued after a newer start is the newer's.
        if (!s.start_pending) s.queued.clear();
        Writer record = encode_death(*e.death);
        const std::span<const std::byte> bytes = record.bytes();
        outbox_.post(0, h, bytes, std::move(record));
        if (s.start_pending) start(j);
        return;
      }
      case Event::Kind::none:
        return;
    }
  }

  ShmTransport& local_;
  // Lines from the output reader thread (see forward_), sent by the agent's thread.
  std::mutex lines_mutex_;
  std::vector<Line> lines_;
  std::vector<Line> sending_lines_;
  std::atomic<bool> has_lines_{false};  // set after each push to lines_
  const WorkerOutputs::Forward forward_ = [this](unsigned slot, int pid, WorkerStream stream,
                                                 std::string_view text) {
    {
      std::lock_guard lock(lines_mutex_);
      lines_.push_back({slot, pid, stream, std::string(text)});
    }
    has_lines_.store(true, std::memory_order_release);
    local_.wake();  // the agent may nap
  };
  std::vector<Slot> slots_;
  SpareBuffers spares_;  // before the boxes, which may hold its buffers
  Inbox inbox_{0, tag_down};
  Outbox outbox_{tag_up};
  static constexpr unsigned no_stream = ~0u;
  unsigned streaming_ = no_stream;  // the slot whose answer streams (see open_tail)
  std::size_t stream_bytes_ = 0;    // its bytes, StreamEnd included
  std::size_t stream_written_ = 0;  // of them, written when last looked (see unstall_stream)
  std::chrono::steady_clock::time_point stream_moved_{};  // when that changed
  bool exiting_ = false;
};

}  // namespace multicore::detail::mpi
