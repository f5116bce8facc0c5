// SPDX-License-Identifier: MIT
// The seam between scheduling and the workers: whole messages out, events back.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

// This header is the whole contract between the scheduler (detail/core/) and whatever runs the
// workers: forked processes over shared-memory rings (transport/shm/), node agents over MPI
// (transport/mpi/), or a script in a test (tests/support/fake_transport.hpp). It includes no
// shared memory, fork, serialization or MPI header, and a test checks that it stays so.

namespace multicore::detail {

/// Receives the tail of an answer (see protocol/wire.hpp) piece by piece, straight into the
/// value it completes.
class AnswerTail {
 public:
  /// The next bytes of the tail; never more than announced to TailRouter::open_tail().
  virtual void append(std::span<const std::byte> bytes) noexcept = 0;
  /// The whole tail arrived: the value is complete.
  virtual void deliver_tail(std::uint64_t run_nanos) noexcept = 0;

 protected:
  ~AnswerTail() = default;
};

/// Asked by Transport::poll() when an answer announces a tail: where should it go?
class TailRouter {
 public:
  /// Worker k's answer to `task_id` ends in a tail of `tail_bytes`; `head` is the payload
  /// before it (untrusted bytes). Returns where the tail goes, or nullptr: the transport then
  /// assembles the whole payload and reports it as a plain answer.
  virtual AnswerTail* open_tail(unsigned k, std::uint64_t task_id, std::span<const std::byte> head,
                                std::uint64_t tail_bytes) noexcept = 0;

 protected:
  ~TailRouter() = default;
};

/// How a worker ended, in terms every transport can give.
struct Death {
  enum class Cause : std::uint8_t {
    ended,             ///< the process exited or was killed (signal / exit_code say how)
    spawn_failed,      ///< no process could be made (`error` is the errno)
    start_failed,      ///< on_worker_start threw (`text` is what it said)
    violation,         ///< it broke the protocol (`text` says how); the transport killed it
    replaced_program,  ///< a task replaced its program (exec); the transport killed it
  };
  Cause cause = Cause::ended;
  int pid = 0;                ///< 0 when there never was a process
  int signal = 0;             ///< the signal that killed it, 0 if it exited
  int exit_code = -1;         ///< its exit status, -1 if a signal killed it
  int error = 0;              ///< spawn_failed: errno
  std::uint64_t running = 0;  ///< the task it had started (claimed), 0 if none
  std::string text;           ///< start_failed, violation: what happened
  std::string where;          ///< where it ran, for messages: "" locally, " on rank 3 (node07)"
  std::string output;         ///< ended: the end of what it wrote to stderr ("" if unknown)
  /// ended by SIGKILL that the transport did not send, while the kernel's out-of-memory killer
  /// killed a process: most likely this one (waitpid() cannot tell who sent a SIGKILL)
  bool out_of_memory = false;
};

/// Something that happened to worker k, as poll(k) reports it.
struct Event {
  enum class Kind : std::uint8_t {
    none,     ///< nothing new
    ready,    ///< the worker started (on_worker_start returned): it takes messages now
    running,  ///< it runs task `task_id`'s code since `since_ns`, or paused it (since_ns 0);
              ///< task 0: it is busy outside any task since `since_ns` (flushing output)
    stopped,  ///< it was stopped (SIGSTOP) at `since_ns`, or continued (since_ns 0)
    answer,   ///< `task_id` is answered: `payload`, or through the tail opened for it
    died,     ///< the worker is gone: `death` says how; start(k) may replace it
  };
  Kind kind = Kind::none;
  std::uint64_t task_id = 0;  ///< running, answer
  /// running: when the task's user code started, on this process's steady clock
  /// (steady_now_ns()); 0 while it is not running user code (arguments still streaming in).
  /// stopped: when the worker was stopped; 0 once it runs again.
  std::int64_t since_ns = 0;
  std::uint64_t run_nanos = 0;  ///< answer: how long the user's code ran
  /// answer: the whole payload (untrusted), valid until the next poll(k); empty when `tail`.
  std::span<const std::byte> payload;
  AnswerTail* tail = nullptr;  ///< answer: the sink its tail went to (from the TailRouter)
  /// answer: there was no memory to receive it (payload empty, no tail): the job fails.
  bool dropped = false;
  const Death* death = nullptr;  ///< died: valid until the next poll(k) or start(k)
  int pid = 0;                   ///< ready: the worker's process id (0: the transport cannot tell)
};

/// What a transport can do, for the layers above to adapt (or refuse) what they send.
struct Capabilities {
  /// Workers run this very program image (forks): code and data addresses mean the same there.
  bool same_image = true;
  /// Workers run on this machine: shared memory made here can be handed to them.
  bool same_machine = true;
  /// Most messages a slot may hold unanswered at once (cancel() keeps track of no more).
  std::size_t max_in_flight = 64;
};

/// The workers, as the scheduler sees them: numbered slots 0..size()-1, each holding at most
/// one live worker at a time. Messages are whole requests (protocol/wire.hpp: RequestHeader then
/// payload); what comes back are events.
///
/// Thread contract (the scheduler's locks provide it):
///  - send side of slot k: try_send, pump, try_stop, cancel, start: one thread at a time;
///  - receive side of slot k: poll: one thread at a time, concurrently with the send side;
///  - wait: one thread at a time (the collector);
///  - kill, resume, wake, may_have_events, callers_polling, size, capabilities: any thread,
///    any time;
///  - construction, close and destruction: no other call in progress.
class Transport {
 public:
  virtual ~Transport() = default;

  virtual unsigned size() const noexcept = 0;
  virtual Capabilities capabilities() const noexcept = 0;
  /// Where slot k's workers run, for people: "" on this machine, "rank 3 (node07)" elsewhere.
  virtual std::string location(unsigned /*k*/) const { return {}; }

  /// Asks for a new worker in slot k (empty, or after its died event). Its `ready` (or `died`)
  /// event follows. Throws Error when no worker can be made any more (see broken()).
  virtual void start(unsigned k) = 0;
  /// Kills slot k's worker, if any; its `died` event follows as for any death.
  virtual void kill(unsigned k) noexcept = 0;
  /// Asks slot k's worker to exit once it has answered every message sent so far. False if
  /// the request cannot be sent now (the previous message is still being taken).
  [[nodiscard]] virtual bool try_stop(unsigned k) noexcept = 0;
  /// Continues every worker stopped from outside (SIGSTOP): whoever waits for their work
  /// would otherwise wait for ever. Any thread.
  virtual void resume() noexcept = 0;
  /// Slot k's worker should skip the message for `task_id` if it has not started it (nobody
  /// wants its answer any more), and answer it with an empty payload. It may have started it
  /// already: the answer then comes as usual. Send side.
  virtual void cancel(unsigned k, std::uint64_t task_id) noexcept = 0;
  /// A StopSource of this process was stopped: its `slot` in this process's stop table now
  /// holds `word`. Workers forked here share that table and see it already; a transport whose
  /// workers live in another process image passes it on to theirs (see StopTable::mirror).
  /// Any thread.
  virtual void relay_stop(std::uint32_t /*slot*/, std::uint32_t /*word*/) noexcept {}

  /// Hands a whole request to slot k's worker, or returns false without taking it (the worker
  /// is not ready, or is still taking the previous message). Never blocks: a message larger
  /// than the transport can take at once is streamed as the worker makes room (see pump). The
  /// bytes must stay valid and unchanged until the message's answer is reported, or until the
  /// worker's death is reported or close() returns; after a death (or once broken), the caller
  /// does not pump(k) again before start(k).
  [[nodiscard]] virtual bool try_send(unsigned k, std::span<const std::byte> message) noexcept = 0;
  /// Moves slot k's message in progress further, as far as the worker has room. True if any
  /// byte moved.
  virtual bool pump(unsigned k) noexcept = 0;
  /// True while slot k still has part of a message to hand over (try_send would say false).
  virtual bool sending(unsigned k) const noexcept = 0;

  /// The next event of slot k (kind none if nothing happened). Answers come in the order their
  /// requests were sent; `running` comes before the answer or death it precedes; `died` comes
  /// after every answer the worker completed.
  virtual Event poll(unsigned k, TailRouter& router) noexcept = 0;
  /// Cheap look, from any thread: may poll(k) have something? (A hint: false negatives are
  /// covered by wait(), false positives cost a poll.)
  virtual bool may_have_events(unsigned k) const noexcept = 0;

  /// Blocks until some slot may have an event or room was made for a message in progress,
  /// wake() was called since the last wait() returned, or `deadline` passes. Spins a while
  /// first when `spin` (not while another thread polls for answers itself: it needs the CPU).
  /// Returns false if it returned for the deadline alone: a deadline already passed makes it a
  /// mere look.
  virtual bool wait(std::chrono::steady_clock::time_point deadline, bool spin) noexcept = 0;
  /// Makes the current or next wait() return, from any thread. Never lost.
  virtual void wake() noexcept = 0;
  /// A thread starts (+1) or stops (-1) polling for answers itself: meanwhile workers need not
  /// wake the collector for every answer. A hint; transports may ignore it.
  virtual void callers_polling(int delta) noexcept = 0;

  /// Gives back memory kept warm for answers that went unused for a while. Receive side;
  /// called now and then.
  virtual void release_cold_buffers() noexcept = 0;

  /// Whether the calling thread runs the application's on_worker_output callback for these
  /// workers right now. Their output waits for it meanwhile, and so may they (one that fills
  /// its pipe blocks): a task sent from there could wait for ever (see Scheduler::submit).
  virtual bool delivering_output_here() const noexcept { return false; }

  /// Why no worker can run any more (the fork server is gone, say), or "" while all is well.
  /// Once broken, every slot's worker is gone or going, and start() throws.
  virtual std::string broken() noexcept = 0;
  /// Kills whatever is left and releases everything. Bounded; idempotent.
  virtual void close() noexcept = 0;
};

}  // namespace multicore::detail
