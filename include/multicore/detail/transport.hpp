// SPDX-License-Identifier: MIT
// The seam between scheduling and the workers, and its shared-memory implementation.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
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

#include "../errors.hpp"
#include "futex.hpp"
#include "layout.hpp"
#include "ring.hpp"
#include "shm.hpp"
#include "worker.hpp"
#include "zygote.hpp"

namespace multicore::detail {

/// How a worker slot stands, as the transport sees it.
struct WorkerStatus {
  SlotState state = SlotState::empty;
  int wait_status = 0;        ///< raw waitpid() status, when dead
  int spawn_errno = 0;        ///< when spawn_failed
  bool start_failed = false;  ///< it died because on_worker_start threw
  std::string start_error;    ///< what on_worker_start threw
  int pid = 0;
};

/// Everything scheduling, futures and failure bookkeeping need from "workers": send bytes to
/// worker k, receive bytes from it, learn what became of it, replace it. Shared-memory rings
/// plus a fork server are the first implementation; a message-passing one (MPI) can follow
/// without touching the scheduler. Except where noted, only one parent thread at a time may
/// call the methods for a given worker (the scheduler's lock ensures it).
class Transport {
 public:
  virtual ~Transport() = default;

  virtual unsigned size() const noexcept = 0;

  /// Asks for a fresh process in slot k; its status goes spawning -> ready (or dead).
  virtual void spawn(unsigned k) = 0;
  /// Kills slot k's process (SIGKILL); its death is then reported like any other.
  virtual void kill(unsigned k) noexcept = 0;
  /// Continues every worker process (SIGCONT), in case one was stopped from outside.
  virtual void resume() noexcept = 0;
  virtual WorkerStatus status(unsigned k) const = 0;
  /// Cheap check of just the state, for polling loops.
  virtual SlotState state(unsigned k) const noexcept = 0;

  /// Writes as much of `bytes` to worker k as fits now, up to one piece (a fraction of the
  /// ring, so the worker can copy out while more is copied in); never blocks. Returns bytes
  /// written.
  virtual std::size_t send(unsigned k, std::span<const std::byte> bytes) noexcept = 0;
  /// Asks to be woken (see wait) when worker k makes room for more sending.
  virtual void want_room(unsigned k, bool on) noexcept = 0;
  /// Worker k made room since want_room(k, true).
  virtual bool room_made(unsigned k) const noexcept = 0;
  /// Worker k has published bytes not yet consumed. Reads only shared indices, so any thread
  /// may ask, even while another one receives.
  virtual bool has_bytes(unsigned k) const noexcept = 0;
  /// Received bytes from worker k that are contiguous, up to one piece; valid until
  /// consume(k, ...).
  virtual std::span<const std::byte> peek(unsigned k) noexcept = 0;
  virtual void consume(unsigned k, std::size_t n) noexcept = 0;
  /// Worker k broke the ring protocol (an impossible index) on the side the parent reads
  /// (receive_corrupt) or writes (send_corrupt); it must be treated as failed. Each is asked
  /// by the thread that uses that side.
  virtual bool receive_corrupt(unsigned k) const noexcept = 0;
  virtual bool send_corrupt(unsigned k) const noexcept = 0;
  /// The task worker k has claimed (0: none) and when it claimed it (steady clock, ns).
  virtual std::uint64_t running(unsigned k, std::int64_t* since_ns) const noexcept = 0;
  /// Asks worker k to skip the job at `position` in the stream of jobs sent to its current
  /// process (0: the first) if it has not started it yet; it then answers it with an empty
  /// payload. `task_id` is that job's id.
  virtual void cancel(unsigned k, std::uint64_t position, std::uint64_t task_id) noexcept = 0;
  /// When worker k's process was stopped (SIGSTOP; steady clock, ns), 0 while it runs.
  virtual std::int64_t stopped_since_ns(unsigned k) const noexcept = 0;
  /// Answers worker k says it has fully sent in its current life.
  virtual std::uint64_t answers_sent(unsigned k) const noexcept = 0;
  /// Forgets all in-transit bytes of slot k. Only while slot k has no live process.
  virtual void reset(unsigned k) noexcept = 0;

  /// Blocks the collector until something may have happened (bytes, a death, a wake()), or
  /// `timeout` passes; spins first if `spin`. `pending` is re-checked after announcing sleep,
  /// so nothing is missed.
  virtual void wait(const std::function<bool()>& pending, std::chrono::nanoseconds timeout,
                    bool spin) = 0;
  /// Wakes wait() from any parent thread.
  virtual void wake() noexcept = 0;
  /// A parent thread starts (+1) or stops (-1) reading the rings itself; meanwhile workers
  /// need not wake the collector for answers.
  virtual void polling(int delta) noexcept = 0;

  /// False once the machinery behind the workers (the fork server) is gone.
  virtual bool alive() noexcept = 0;
  /// Kills whatever is left and releases everything. Bounded; idempotent.
  virtual void close() noexcept = 0;
};

/// Workers forked by a fork server; one request and one response ring per worker in anonymous
/// shared memory made before the fork server was forked.
class ShmTransport final : public Transport {
 public:
  ShmTransport(unsigned workers, std::size_t ring_bytes, const std::function<void()>& on_start,
               std::size_t max_tasks)
      : layout_{workers, ring_bytes},
        region_(layout_.total_bytes()),
        on_start_(on_start),
        writers_(workers),
        readers_(workers) {
    std::byte* base = region_.data();
    layout_.construct(base);
    pool_ = layout_.pool(base);
    ZygoteSetup setup;
    setup.parent = getpid();
    setup.pids.assign(workers, 0);
    for (unsigned k = 0; k < workers; ++k) {
      setup.workers.push_back({pool_, layout_.slot(base, k), layout_.request(base, k),
                               layout_.response(base, k), &on_start_, max_tasks});
      writers_[k] = RingWriter(layout_.request(base, k));
      readers_[k] = RingReader(layout_.response(base, k));
    }
    fork_zygote(setup);
  }

  ~ShmTransport() override { close(); }
  ShmTransport(const ShmTransport&) = delete;
  ShmTransport& operator=(const ShmTransport&) = delete;

  unsigned size() const noexcept override { return layout_.workers; }

  void spawn(unsigned k) override {
    SlotShared& s = slot(k);
    s.start_failed.store(0, std::memory_order_relaxed);
    s.start_error[0] = '\0';
    s.state.store(SlotState::spawning, std::memory_order_release);
    if (!command({ZygoteCommand::spawn, k})) {
      throw Error("multicore: the pool's fork server is gone; no worker can be started");
    }
  }

  void kill(unsigned k) noexcept override { command({ZygoteCommand::kill, k}); }

  void resume() noexcept override {
    if (zygote_ > 0) ::kill(zygote_, SIGCONT);  // a stopped fork server could not pass it on
    command({ZygoteCommand::resume, 0});
  }

  WorkerStatus status(unsigned k) const override {
    const SlotShared& s = slot(k);
    WorkerStatus st;
    st.state = s.state.load(std::memory_order_acquire);
    st.wait_status = s.wait_status.load(std::memory_order_relaxed);
    st.spawn_errno = s.spawn_errno.load(std::memory_order_relaxed);
    st.start_failed = s.start_failed.load(std::memory_order_acquire) != 0;
    if (st.start_failed) {
      st.start_error.assign(s.start_error, strnlen(s.start_error, sizeof s.start_error));
    }
    st.pid = s.pid.load(std::memory_order_relaxed);
    return st;
  }

  SlotState state(unsigned k) const noexcept override {
    return slot(k).state.load(std::memory_order_acquire);
  }

  std::size_t send(unsigned k, std::span<const std::byte> bytes) noexcept override {
    const std::size_t n = writers_[k].write_some(ring_piece(bytes, writers_[k].capacity()));
    if (n > 0) slot(k).worker_bell.ring();
    return n;
  }

  void want_room(unsigned k, bool on) noexcept override {
    slot(k).parent_wants_space.store(on ? 1 : 0, std::memory_order_relaxed);
    // Order the flag before the caller's next look at the free space (Dekker, as Doorbell).
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }

  bool room_made(unsigned k) const noexcept override {
    return slot(k).parent_wants_space.load(std::memory_order_relaxed) == 2;
  }

  bool has_bytes(unsigned k) const noexcept override {
    const RingControl& ring = slot(k).response;
    return ring.head.load(std::memory_order_acquire) != ring.tail.load(std::memory_order_relaxed);
  }

  std::span<const std::byte> peek(unsigned k) noexcept override {
    return ring_piece(readers_[k].peek(), readers_[k].capacity());
  }

  void consume(unsigned k, std::size_t n) noexcept override {
    readers_[k].consume(n);
    // Dekker with Worker::write_all: the worker raises its flag, then looks at the room.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (slot(k).worker_wants_room.load(std::memory_order_relaxed) != 0) slot(k).worker_bell.ring();
  }

  bool receive_corrupt(unsigned k) const noexcept override { return readers_[k].corrupt(); }
  bool send_corrupt(unsigned k) const noexcept override { return writers_[k].corrupt(); }

  std::uint64_t running(unsigned k, std::int64_t* since_ns) const noexcept override {
    const SlotShared& s = slot(k);
    const std::uint64_t id = s.running.load(std::memory_order_acquire);
    if (since_ns != nullptr) *since_ns = s.running_since_ns.load(std::memory_order_relaxed);
    return id;
  }

  void cancel(unsigned k, std::uint64_t position, std::uint64_t task_id) noexcept override {
    slot(k).cancelled[position % max_jobs_in_flight].store(task_id, std::memory_order_relaxed);
  }

  std::int64_t stopped_since_ns(unsigned k) const noexcept override {
    return slot(k).stopped_since_ns.load(std::memory_order_relaxed);
  }

  std::uint64_t answers_sent(unsigned k) const noexcept override { return readers_[k].messages(); }

  void reset(unsigned k) noexcept override {
    SlotShared& s = slot(k);
    writers_[k].reset();
    readers_[k].reset();
    s.running.store(0, std::memory_order_relaxed);
    s.running_since_ns.store(0, std::memory_order_relaxed);
    s.stopped_since_ns.store(0, std::memory_order_relaxed);
    s.parent_wants_space.store(0, std::memory_order_relaxed);
    s.worker_wants_room.store(0, std::memory_order_relaxed);
    s.pid.store(0, std::memory_order_relaxed);
  }

  void wait(const std::function<bool()>& pending, std::chrono::nanoseconds timeout,
            bool spin) override {
    if (spin) {
      wait_for(pool_->parent_bell, spin_, pending, timeout);
    } else {
      pool_->parent_bell.sleep_unless(pending, timeout);
    }
  }

  void wake() noexcept override { pool_->parent_bell.ring(); }

  void polling(int delta) noexcept override {
    if (delta > 0) {
      pool_->parent_polling.fetch_add(1, std::memory_order_relaxed);
    } else {
      pool_->parent_polling.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  bool alive() noexcept override {
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

  void close() noexcept override {
    if (command_fd_ >= 0) {
      command({ZygoteCommand::exit, 0});
      unregister_fd(command_fd_);
      ::close(command_fd_);
      command_fd_ = -1;
    }
    if (zygote_ > 0) reap_zygote();
  }

 private:
  SlotShared& slot(unsigned k) const noexcept { return *layout_.slot(region_.data(), k); }

  bool command(ZygoteCommand c) noexcept {
    if (command_fd_ < 0) return false;
    ssize_t n = 0;
    while ((n = ::send(command_fd_, &c, sizeof c, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
    }
    return n == static_cast<ssize_t>(sizeof c);
  }

  /// Makes the command socket and forks the fork server. No lock is held across the fork:
  /// the child would inherit it locked, and a pool made there (in a task, in on_worker_start)
  /// would wait for it for ever.
  void fork_zygote(ZygoteSetup& setup) {
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
      unregister_fd(command_fd_);
      ::close(command_fd_);
      command_fd_ = -1;
      throw SystemError(failed, err);
    }
    zygote_ = pid;
  }

  static void unregister_fd(int fd) noexcept {
    auto& owned = OwnedDescriptors::instance();
    std::lock_guard lock(owned.mutex);
    std::erase(owned.fds, fd);
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
    const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, zygote_, 0));
    if (pidfd < 0) return false;  // kernel < 5.3: go straight to SIGKILL (bounded either way)
    pollfd p{pidfd, POLLIN, 0};
    int r = 0;
    while ((r = poll(&p, 1, static_cast<int>(limit.count()))) < 0 && errno == EINTR) {
    }
    ::close(pidfd);
    return r > 0;
  }

  Layout layout_;
  SharedRegion region_;
  std::function<void()> on_start_;  // the workers' copy is this object, in the snapshot
  PoolShared* pool_ = nullptr;
  std::vector<RingWriter> writers_;
  std::vector<RingReader> readers_;
  SpinBudget spin_;
  int command_fd_ = -1;
  pid_t zygote_ = 0;
};

}  // namespace multicore::detail
