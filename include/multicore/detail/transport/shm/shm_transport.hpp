// SPDX-License-Identifier: MIT
// The shared-memory transport: workers forked by a fork server, two rings each.
#pragma once

#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "../../../errors.hpp"
#include "../../protocol/wire.hpp"
#include "../../util/code_ref.hpp"
#include "../../util/oom_kills.hpp"
#include "../../util/process.hpp"
#include "../transport.hpp"
#include "futex.hpp"
#include "layout.hpp"
#include "output.hpp"
#include "shm.hpp"
#include "stream.hpp"
#include "zygote.hpp"

namespace multicore::detail {

/// What makes a shared-memory transport.
struct ShmOptions {
  unsigned workers = 1;
  std::size_t ring_bytes = std::size_t{1} << 20;  ///< a power of two, at least a page
  std::function<void()> on_start;
  std::size_t max_tasks = 0;  ///< 0: unlimited
  WorkerOutput output = WorkerOutput::inherit;
  std::function<void(unsigned, WorkerStream, std::string_view)> on_output;
};

/// Workers forked by a fork server; one request and one answer ring per worker, in anonymous
/// shared memory made before the fork server was forked (so there is no name to leak). See
/// Transport for the contract; stream.hpp for what travels through the rings.
class ShmTransport final : public Transport {
 public:
  /// Maps the shared memory and forks the fork server (no worker yet: start() makes them).
  /// Throws SystemError when either fails; nothing is left behind then.
  explicit ShmTransport(ShmOptions options)
      : options_(std::move(options)),
        layout_{options_.workers, options_.ring_bytes},
        region_(layout_.total_bytes()),
        senders_(options_.workers),
        sent_(options_.workers),
        slots_(options_.workers),
        outputs_(
            options_.workers, options_.output, options_.on_output,
            {[this](unsigned k) { return slot(k).pid.load(std::memory_order_relaxed); },
             [this](unsigned k) { return slot(k).quiet.load(std::memory_order_acquire) != 0; }}) {
    std::byte* base = region_.data();
    layout_.construct(base);
    pool_ = layout_.pool(base);
    pool_->identity = random_identity();
    const std::uint64_t oom_kills = oom_kills_so_far();
    for (Slot& s : slots_) s.oom_kills_before = oom_kills;
    ZygoteSetup setup;
    setup.parent = getpid();
    setup.pids.assign(options_.workers, 0);
    setup.exec_watches.assign(options_.workers, -1);
    setup.unwatched.assign(options_.workers, 0);
    setup.poll_set.resize(2 + std::size_t{options_.workers});
    for (unsigned k = 0; k < options_.workers; ++k) {
      setup.workers.push_back({pool_, layout_.slot(base, k), layout_.requests(base, k),
                               layout_.answers(base, k),
                               WorkerPlan{&options_.on_start, options_.max_tasks}});
      senders_[k] = MessageSender(layout_.requests(base, k));
      slots_[k].receiver = AnswerReceiver(layout_.answers(base, k));
    }
    // The fork server first, the output reader then: a process that forks while another of its
    // threads is inside malloc passes a locked allocator to the child (glibc's malloc guards
    // against that, AddressSanitizer's in g++ 12 does not), and the fork server would hand it
    // to every worker. A new thread allocates as it starts.
    ForkMark::instance();  // see there: before the first fork
    fork_zygote(setup);
    try {
      outputs_.start_reader();
    } catch (...) {
      close();
      throw;
    }
  }

  ~ShmTransport() override { close(); }
  ShmTransport(const ShmTransport&) = delete;
  ShmTransport& operator=(const ShmTransport&) = delete;

  unsigned size() const noexcept override { return layout_.workers; }
  Capabilities capabilities() const noexcept override { return {true, true, max_jobs_in_flight}; }

  void start(unsigned k) override {
    const WorkerPipes pipes = outputs_.open(k);  // first: if it throws, nothing has changed
    // The previous worker (if any) is gone and reaped: nobody else touches these now.
    SlotShared& shared = slot(k);
    senders_[k].reset();
    Slot& s = slots_[k];
    s.receiver.reset();
    // A replacement reads the count afresh; the pool's first workers keep the reading the
    // constructor took for them all (it costs 10 to 50 us, which a large pool would pay per
    // worker).
    if (s.seen.load(std::memory_order_relaxed) != SlotState::empty) {
      s.oom_kills_before = oom_kills_so_far();
    }
    s.seen.store(SlotState::spawning, std::memory_order_relaxed);
    s.task = 0;
    s.since = 0;
    s.died = false;
    s.violation.store(nullptr, std::memory_order_relaxed);
    s.killed.store(false, std::memory_order_relaxed);
    shared.running.store(0, std::memory_order_relaxed);
    shared.running_since_ns.store(0, std::memory_order_relaxed);
    shared.quiet.store(0, std::memory_order_relaxed);
    shared.stopped_since_ns.store(0, std::memory_order_relaxed);
    shared.pid.store(0, std::memory_order_relaxed);
    s.stopped.store(0, std::memory_order_relaxed);
    sent_[k] = {};
    for (auto& c : shared.cancelled) c.store(0, std::memory_order_relaxed);
    shared.start_failed.store(0, std::memory_order_relaxed);
    shared.start_error[0] = '\0';
    shared.state.store(SlotState::spawning, std::memory_order_release);
    const bool sent = command({ZygoteCommand::spawn, k}, pipes);
    for (int fd : {pipes.err, pipes.out}) {
      if (fd >= 0) ::close(fd);  // the fork server's and the worker's now
    }
    if (!sent) {
      throw Error("multicore: the pool's fork server is gone; no worker can be started");
    }
  }

  void kill(unsigned k) noexcept override {
    slots_[k].killed.store(true, std::memory_order_relaxed);
    command({ZygoteCommand::kill, k});
  }

  void resume() noexcept override {
    if (zygote_ > 0) ::kill(zygote_, SIGCONT);  // a stopped fork server could not pass it on
    command({ZygoteCommand::resume, 0});        // only it knows exactly which pids are workers
  }

  void cancel(unsigned k, std::uint64_t task_id) noexcept override {
    // The worker looks its next message up by its place in the stream of messages sent to it
    // (see ShmWorkerChannel::cancelled); at most max_jobs_in_flight are unanswered, so the
    // places of those still to come never share an entry.
    const Sent& sent = sent_[k];
    for (std::size_t i = 0; i < max_jobs_in_flight; ++i) {
      if (sent.ids[i] == task_id && task_id != 0) {
        slot(k).cancelled[i].store(task_id, std::memory_order_relaxed);
        return;
      }
    }
  }

  bool try_stop(unsigned k) noexcept override {
    static const RequestHeader stop = [] {
      RequestHeader h;
      h.kind = RequestKind::stop;
      return h;
    }();
    return try_send(k, {reinterpret_cast<const std::byte*>(&stop), sizeof stop});
  }

  bool try_send(unsigned k, std::span<const std::byte> message) noexcept override {
    const bool taken = senders_[k].start(message);
    if (taken) {
      RequestHeader h;
      std::memcpy(&h, message.data(), std::min(message.size(), sizeof h));
      Sent& sent = sent_[k];
      sent.ids[sent.count++ % max_jobs_in_flight] = h.kind == RequestKind::call ? h.task_id : 0;
      check_sender(k);
    }
    return taken;
  }

  bool pump(unsigned k) noexcept override {
    const bool moved = senders_[k].pump();
    check_sender(k);
    return moved;
  }

  bool sending(unsigned k) const noexcept override { return senders_[k].busy(); }

  Event poll(unsigned k, TailRouter& router) noexcept override {
    Slot& s = slots_[k];
    if (s.died) return {};
    // A death is reported by the fork server only after the process is gone, so whatever it
    // published is in the ring already: read the state first, then the ring dry.
    const SlotShared& shared = slot(k);
    const SlotState state = shared.state.load(std::memory_order_acquire);
    if (state == SlotState::ready && s.seen.load(std::memory_order_relaxed) != SlotState::ready) {
      s.seen.store(SlotState::ready, std::memory_order_relaxed);
      Event e = event(Event::Kind::ready, 0);
      e.pid = shared.pid.load(std::memory_order_relaxed);
      return e;
    }
    if (s.violation.load(std::memory_order_relaxed) == nullptr) {
      const auto status =
          s.receiver.next([&](const ResponseHeader& h, std::span<const std::byte> head) {
            return router.open_tail(k, h.task_id, head, h.tail_bytes);
          });
      if (status == AnswerReceiver::Status::answer) {
        const ResponseHeader& h = s.receiver.header();
        Event e = event(Event::Kind::answer, h.task_id);
        e.run_nanos = h.run_nanos;
        e.payload = s.receiver.payload();
        e.tail = s.receiver.tail();
        e.dropped = s.receiver.dropped();
        return e;
      }
      if (status == AnswerReceiver::Status::violation) violated(k, s.receiver.what());
    }
    // Every complete answer is read: now whether it was stopped, what it runs, whether it is gone.
    const std::int64_t stopped = shared.stopped_since_ns.load(std::memory_order_acquire);
    if (stopped != s.stopped.load(std::memory_order_relaxed)) {
      s.stopped.store(stopped, std::memory_order_relaxed);
      Event e = event(Event::Kind::stopped, 0);
      e.since_ns = stopped;
      return e;
    }
    const std::uint64_t task = shared.running.load(std::memory_order_acquire);
    const std::int64_t since = shared.running_since_ns.load(std::memory_order_acquire);
    if (task != s.task || since != s.since) {
      s.task = task;
      s.since = since;
      // Task 0 too: the parent's picture must not keep a clock that stopped (task 0 with a
      // time means busy outside any task: flushing output).
      Event e = event(Event::Kind::running, task);
      e.since_ns = since;
      return e;
    }
    if (state == SlotState::dead || state == SlotState::spawn_failed) {
      s.seen.store(state, std::memory_order_relaxed);
      s.died = true;
      s.death = death_of(k, state);
      Event e = event(Event::Kind::died, 0);
      e.death = &s.death;
      return e;
    }
    return {};
  }

  bool may_have_events(unsigned k) const noexcept override {
    const Slot& s = slots_[k];
    return s.receiver.has_bytes() ||
           slot(k).state.load(std::memory_order_relaxed) != s.seen.load(std::memory_order_relaxed);
  }

  bool wait(std::chrono::steady_clock::time_point deadline, bool spin) noexcept override {
    const auto news = [this] { return has_news(); };
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds{0}) return news();
    if (spin) return wait_for(pool_->parent_bell, spin_, news, left);
    return pool_->parent_bell.sleep_unless(news, left);
  }

  void wake() noexcept override {
    woken_.store(true, std::memory_order_release);
    pool_->parent_bell.ring();
  }

  void callers_polling(int delta) noexcept override {
    if (delta > 0) {
      pool_->parent_polling.fetch_add(1, std::memory_order_relaxed);
    } else {
      pool_->parent_polling.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  std::string broken() noexcept override {
    if (zygote_alive()) return {};
    return "multicore: the pool's fork server died, so the pool can no longer run tasks";
  }

  /// See WorkerOutputs::deliver_remote: an mpi::Cluster's rank 0 delivers its agents' lines
  /// with its own.
  void deliver_remote_output(unsigned k, int pid, WorkerStream stream, std::string where,
                             std::string line) {
    outputs_.deliver_remote(k, pid, stream, std::move(where), std::move(line));
  }
  /// See WorkerOutputs::forward_to: an MPI agent sends its workers' lines to rank 0.
  void forward_output(const WorkerOutputs::Forward* forward) noexcept {
    outputs_.forward_to(forward);
  }

  void close() noexcept override {
    if (command_fd_ >= 0) {
      command({ZygoteCommand::exit, 0});
      OwnedDescriptors::instance().remove(command_fd_);
      ::close(command_fd_);
      command_fd_ = -1;
    }
    if (zygote_ > 0) reap_zygote();
    outputs_.stop();  // after the workers: their pipes are read to the end
  }

  /// Kills every worker and waits (at most a few seconds) until each is gone, but keeps the
  /// fork server: whoever uses this transport next starts slots again (see mpi::Cluster, whose
  /// fork server serves one Pool after another).
  void stop_workers() noexcept {
    const auto live = [this](unsigned k) {
      const SlotState st = slot(k).state.load(std::memory_order_acquire);
      return st == SlotState::spawning || st == SlotState::ready;
    };
    for (unsigned k = 0; k < size(); ++k) {
      if (live(k)) kill(k);
    }
    const auto gone = [&] {
      for (unsigned k = 0; k < size(); ++k) {
        if (live(k)) return false;
      }
      return true;
    };
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!gone() && std::chrono::steady_clock::now() < deadline && zygote_alive()) {
      pool_->parent_bell.sleep_unless(gone, std::chrono::milliseconds(100));
    }
  }

  bool delivering_output_here() const noexcept override { return outputs_.delivering_here(); }

  void release_cold_buffers() noexcept override {
    const auto now = WarmBuffer::Clock::now();
    for (Slot& s : slots_) s.receiver.release_if_cold(now);
  }

 private:
  /// The parent's side of slot k: receive side. `seen` and `stopped` are also read by wait()
  /// and may_have_events() (any thread), `violation` also written by the send side: hence
  /// atomic.
  struct Slot {
    AnswerReceiver receiver;
    std::atomic<SlotState> seen{SlotState::empty};
    std::uint64_t task = 0;  // last `running` seen
    std::int64_t since = 0;
    std::atomic<std::int64_t> stopped{0};  // last `stopped` reported (also read by wait())
    bool died = false;                     // reported; nothing more until start()
    Death death;
    std::atomic<const char*> violation{nullptr};  // the worker broke the protocol: how
    std::atomic<bool> killed{false};     // kill() was asked for this worker: no OOM killer's doing
    std::uint64_t oom_kills_before = 0;  // oom_kills_so_far() as it was started
  };

  SlotShared& slot(unsigned k) const noexcept { return *layout_.slot(region_.data(), k); }

  /// What PoolShared::identity holds: random, so that no program a worker runs by exec has it at
  /// that address.
  static std::uint64_t random_identity() noexcept {
    std::uint64_t value = 0;
    if (getrandom(&value, sizeof value, GRND_NONBLOCK) == static_cast<ssize_t>(sizeof value)) {
      return value;
    }
    // No entropy yet (early boot): the time and the process tell pools apart well enough.
    return (static_cast<std::uint64_t>(steady_now_ns()) * 0x9e3779b97f4a7c15) ^
           (static_cast<std::uint64_t>(getpid()) << 32);
  }

  static Event event(Event::Kind kind, std::uint64_t task_id) noexcept {
    Event e;
    e.kind = kind;
    e.task_id = task_id;
    return e;
  }

  /// The worker scribbled on the request ring's indices: it is broken.
  void check_sender(unsigned k) noexcept {
    if (senders_[k].corrupt()) violated(k, "an impossible index in its request ring");
  }

  /// Slot k's worker broke the protocol: kill it (once); its death reports why.
  void violated(unsigned k, const char* what) noexcept {
    const char* none = nullptr;
    if (slots_[k].violation.compare_exchange_strong(none, what)) kill(k);
  }

  Death death_of(unsigned k, SlotState state) {
    const SlotShared& shared = slot(k);
    Death d;
    d.pid = shared.pid.load(std::memory_order_relaxed);
    d.running = shared.running.load(std::memory_order_relaxed);
    d.output = outputs_.died(k, d.pid);
    if (state == SlotState::spawn_failed) {
      d.cause = Death::Cause::spawn_failed;
      d.error = shared.spawn_errno.load(std::memory_order_relaxed);
      return d;
    }
    const int status = shared.wait_status.load(std::memory_order_relaxed);
    if (WIFSIGNALED(status)) {
      d.signal = WTERMSIG(status);
      d.exit_code = -1;
    } else {
      d.signal = 0;
      d.exit_code = WEXITSTATUS(status);
    }
    if (const char* what = slots_[k].violation.load(std::memory_order_relaxed)) {
      d.cause = Death::Cause::violation;
      d.text = what;
    } else if (shared.start_failed.load(std::memory_order_acquire) != 0) {
      d.cause = Death::Cause::start_failed;
      d.text.assign(shared.start_error, strnlen(shared.start_error, sizeof shared.start_error));
    } else if (shared.replaced_program.load(std::memory_order_acquire) != 0) {
      d.cause = Death::Cause::replaced_program;
    } else if (d.signal == SIGKILL && !slots_[k].killed.load(std::memory_order_relaxed)) {
      d.out_of_memory = oom_kills_so_far() > slots_[k].oom_kills_before;
    }
    return d;
  }

  /// Cheap look for anything the collector must handle; touches no receive state (a caller may
  /// be receiving meanwhile).
  bool has_news() noexcept {
    if (woken_.exchange(false, std::memory_order_acq_rel)) return true;
    const bool answers_are_ours = pool_->parent_polling.load(std::memory_order_relaxed) == 0;
    for (unsigned k = 0; k < size(); ++k) {
      const Slot& s = slots_[k];
      const SlotShared& shared = slot(k);
      if (shared.state.load(std::memory_order_relaxed) != s.seen.load(std::memory_order_relaxed)) {
        return true;
      }
      if (answers_are_ours && s.receiver.has_bytes()) return true;
      if (senders_[k].room_made()) return true;
      if (shared.stopped_since_ns.load(std::memory_order_relaxed) !=
          s.stopped.load(std::memory_order_relaxed)) {
        return true;  // stopped or continued: a task_timeout deadline changed
      }
    }
    return false;
  }

  /// Sends `c` to the fork server, with the new worker's `pipes` if any (see ZygoteCommand).
  bool command(ZygoteCommand c, WorkerPipes pipes = {}) noexcept {
    if (command_fd_ < 0) return false;
    iovec data{&c, sizeof c};
    msghdr m{};
    m.msg_iov = &data;
    m.msg_iovlen = 1;
    const int fds[2] = {pipes.err, pipes.out};
    const std::size_t count = pipes.err < 0 ? 0 : pipes.out < 0 ? 1 : 2;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof fds)] = {};
    if (count != 0) {
      m.msg_control = control;
      m.msg_controllen = CMSG_SPACE(count * sizeof(int));
      cmsghdr* h = CMSG_FIRSTHDR(&m);
      h->cmsg_level = SOL_SOCKET;
      h->cmsg_type = SCM_RIGHTS;
      h->cmsg_len = CMSG_LEN(count * sizeof(int));
      std::memcpy(CMSG_DATA(h), fds, count * sizeof(int));
    }
    ssize_t n = 0;
    while ((n = ::sendmsg(command_fd_, &m, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
    }
    return n == static_cast<ssize_t>(sizeof c);
  }

  /// Makes the command socket and forks the fork server. No lock is held across the fork:
  /// the child would inherit it locked, and a pool made there (in a task, in on_worker_start)
  /// would wait for it for ever.
  void fork_zygote(ZygoteSetup& setup) {
    // Code is named by its module's place in this table (util/code_ref.hpp): the workers must
    // see the very table the parent names code with, so it is read before they are forked.
    (void)ModuleTable::instance();
    auto& owned = OwnedDescriptors::instance();
    {
      // Made and registered at once: a fork server another thread forks meanwhile closes our
      // end, or it would hold our lifeline open.
      std::lock_guard lock(owned.mutex);
      setup.foreign_fds = owned.fds;
      setup.foreign_fds.reserve(owned.fds.size() + 1);  // so that no push_back below throws
      owned.fds.reserve(owned.fds.size() + 1);
      int fds[2];
      if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) {
        throw SystemError("socketpair", errno);
      }
      if (!pair_above_stdio(fds)) throw SystemError("fcntl", errno);
      command_fd_ = fds[0];
      setup.command_fd = fds[1];
      owned.fds.push_back(command_fd_);
      // Our own end too: while the fork server or a worker held it, the server would never
      // see end-of-file when the parent dies.
      setup.foreign_fds.push_back(command_fd_);
    }
    // Whatever stdio holds unwritten would otherwise be written again by every copy.
    std::fflush(nullptr);
    auto become_zygote = [&setup]() noexcept { Zygote(setup).run(); };
    const char* failed = nullptr;
    const pid_t pid = fork_on_normal_stack(become_zygote, failed);
    const int err = errno;
    ::close(setup.command_fd);
    if (pid < 0) {
      OwnedDescriptors::instance().remove(command_fd_);
      ::close(command_fd_);
      command_fd_ = -1;
      throw SystemError(failed, err);
    }
    zygote_ = pid;
  }

  bool zygote_alive() noexcept {
    if (zygote_ <= 0) return false;
    int status = 0;
    const pid_t r = waitpid(zygote_, &status, WNOHANG);
    if (r == 0) return true;
    if (r == zygote_ || (r < 0 && errno == ECHILD)) {  // reaped (or by someone else)
      zygote_ = 0;
      reap_orphans();
    }
    return zygote_ > 0;
  }

  /// Waits (bounded) for the fork server to exit after it was told to; if it does not
  /// (stopped, say), kills it: its workers then die with it (PR_SET_PDEATHSIG).
  void reap_zygote() noexcept {
    if (!exited_within(std::chrono::seconds(2))) ::kill(zygote_, SIGKILL);
    int status = 0;
    while (waitpid(zygote_, &status, 0) < 0 && errno == EINTR) {
    }
    zygote_ = 0;
    reap_orphans();
  }

  /// The fork server is gone; workers it had not reaped died with it (PR_SET_PDEATHSIG) and
  /// were reparented to the nearest child subreaper. If that is this process (a container's
  /// init is one), nobody else knows them: reaps them, or they stay zombies for ever.
  /// waitpid() on a pid that is not our child fails (ECHILD) without touching anything, and a
  /// pid that is our child cannot have been reused: only the pids the fork server had not
  /// reaped (slot not dead) are looked at.
  void reap_orphans() noexcept {
    for (unsigned k = 0; k < size(); ++k) {
      const SlotShared& s = slot(k);
      const pid_t pid = s.pid.load(std::memory_order_relaxed);
      if (pid <= 0 || s.state.load(std::memory_order_acquire) == SlotState::dead) continue;
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) != 0) continue;  // reaped now, or not ours
      ::kill(pid, SIGKILL);  // ours and alive: on its way out, unless it missed the signal
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }

  /// True once the fork server has exited, waiting at most `limit`. Uses a pidfd, which
  /// becomes readable when the process exits, so no polling loop is needed.
  bool exited_within(std::chrono::milliseconds limit) const noexcept {
    const int pidfd = above_stdio(static_cast<int>(syscall(SYS_pidfd_open, zygote_, 0)));
    if (pidfd < 0) return false;  // kernel < 5.3: go straight to SIGKILL (bounded either way)
    pollfd p{pidfd, POLLIN, 0};
    int r = 0;
    while ((r = ::poll(&p, 1, static_cast<int>(limit.count()))) < 0 && errno == EINTR) {
    }
    ::close(pidfd);
    return r > 0;
  }

  ShmOptions options_;  // the workers' on_start is this object's copy, in the snapshot
  Layout layout_;
  SharedRegion region_;
  PoolShared* pool_ = nullptr;
  /// The ids of the last messages sent to a slot's worker, by their place in its stream modulo
  /// max_jobs_in_flight (0 for a stop request), so that cancel() finds their cancel entry.
  struct Sent {
    std::array<std::uint64_t, max_jobs_in_flight> ids{};
    std::uint64_t count = 0;
  };

  std::vector<MessageSender> senders_;  // send side, with sent_
  std::vector<Sent> sent_;
  std::vector<Slot> slots_;  // receive side (see Slot)
  WorkerOutputs outputs_;
  std::atomic<bool> woken_{false};
  SpinBudget spin_;
  int command_fd_ = -1;
  pid_t zygote_ = 0;
};

}  // namespace multicore::detail
