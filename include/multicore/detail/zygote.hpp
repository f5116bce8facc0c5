// SPDX-License-Identifier: MIT
// The fork server: a single-threaded copy of the program made when the pool is built, which
// forks every worker, so that replacements start from the same memory snapshot.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <mutex>
#include <vector>

#include "layout.hpp"
#include "worker.hpp"

namespace multicore::detail {

/// A command from the parent, sent over a SOCK_SEQPACKET socket (one command per packet).
/// The socket is also the fork server's lifeline: end-of-file means the parent is gone.
struct ZygoteCommand {
  enum Op : std::uint32_t { spawn = 1, kill = 2, exit = 3 };
  Op op = spawn;
  std::uint32_t slot = 0;
};

/// Descriptors every pool of this process owns. A newly forked fork server closes the other
/// pools' ones, or it would keep their lifelines open and they would never see end-of-file.
struct OwnedDescriptors {
  std::mutex mutex;
  std::vector<int> fds;

  static OwnedDescriptors& instance() {
    static OwnedDescriptors registry;
    return registry;
  }
};

/// What the fork server needs; built by the parent before fork (the fork server must not
/// allocate: it may be a fork of a multithreaded program).
struct ZygoteSetup {
  int command_fd = -1;
  pid_t parent = 0;
  std::vector<int> foreign_fds;      // other pools' descriptors, to close
  std::vector<WorkerSetup> workers;  // one per slot
  std::vector<pid_t> pids;           // one per slot: the live worker's pid, or 0
};

class Zygote {
 public:
  explicit Zygote(ZygoteSetup& setup) noexcept : s_(setup) {}

  [[noreturn]] void run() noexcept {
    ++process_generation();
    for (int fd : s_.foreign_fds) close(fd);
    // Its own process group: a Ctrl-C at the terminal reaches the application, which decides;
    // the workers then stop with the pool instead of dying mid-task.
    setpgid(0, 0);
    // An application that set SIGCHLD to SIG_IGN would have its children reaped by the kernel,
    // and the fork server could never learn how a worker died. Workers get the setting back.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &default_action, &saved_child_action_);
    sigset_t child_signal;
    sigemptyset(&child_signal);
    sigaddset(&child_signal, SIGCHLD);
    sigprocmask(SIG_BLOCK, &child_signal, &saved_mask_);
    signal_fd_ = signalfd(-1, &child_signal, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signal_fd_ < 0) _exit(71);
    // The parent may have died between fork and now; nobody would then ever close the socket.
    if (getppid() != s_.parent) finish();
    for (;;) {
      pollfd fds[2] = {{s_.command_fd, POLLIN, 0}, {signal_fd_, POLLIN, 0}};
      // The timeout is a second line of defence for parent death (the socket can stay open if
      // the application forked a child of its own that inherited it).
      const int ready = poll(fds, 2, 250);
      if (ready < 0 && errno != EINTR) finish();
      if (getppid() != s_.parent) finish();
      if (fds[1].revents != 0) reap();
      if (fds[0].revents != 0) command();
    }
  }

 private:
  void command() noexcept {
    ZygoteCommand c;
    const ssize_t n = recv(s_.command_fd, &c, sizeof c, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n != static_cast<ssize_t>(sizeof c) || c.slot >= s_.workers.size()) finish();
    switch (c.op) {
      case ZygoteCommand::spawn:
        spawn(c.slot);
        return;
      case ZygoteCommand::kill:
        if (s_.pids[c.slot] > 0) ::kill(s_.pids[c.slot], SIGKILL);
        return;
      case ZygoteCommand::exit:
        break;
    }
    finish();
  }

  void spawn(std::uint32_t k) noexcept {
    SlotShared& slot = *s_.workers[k].slot;
    const pid_t self = getpid();
    const pid_t pid = fork();
    if (pid == 0) become_worker(k, self);
    if (pid < 0) {
      slot.spawn_errno.store(errno, std::memory_order_relaxed);
      slot.state.store(SlotState::spawn_failed, std::memory_order_release);
      s_.workers[k].pool->parent_bell.ring();
      return;
    }
    s_.pids[k] = pid;
    slot.pid.store(pid, std::memory_order_relaxed);
  }

  [[noreturn]] void become_worker(std::uint32_t k, pid_t zygote) noexcept {
    ++process_generation();
    // A group of its own: a task calling kill(0, ...) then hits only its own worker, not the
    // fork server and every other worker.
    setpgid(0, 0);
    close(signal_fd_);
    close(s_.command_fd);
    sigaction(SIGCHLD, &saved_child_action_, nullptr);
    sigprocmask(SIG_SETMASK, &saved_mask_, nullptr);
    // Die with the fork server (which dies with the parent). Checked after setting it, in case
    // the fork server was already gone.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != zygote) _exit(0);
    Worker(s_.workers[k]).run();
  }

  void reap() noexcept {
    signalfd_siginfo info;
    while (read(signal_fd_, &info, sizeof info) > 0) {
    }
    int status = 0;
    pid_t pid = 0;
    while ((pid = waitpid(-1, &status, WNOHANG | WUNTRACED | WCONTINUED)) > 0) {
      for (std::size_t k = 0; k < s_.pids.size(); ++k) {
        if (s_.pids[k] != pid) continue;
        SlotShared& slot = *s_.workers[k].slot;
        if (WIFSTOPPED(status) || WIFCONTINUED(status)) {
          // A stopped worker cannot run its tasks: a pool with a timeout replaces it (see
          // Scheduler::enforce_timeouts_locked).
          slot.stopped_since_ns.store(WIFSTOPPED(status) ? steady_now_ns() : 0,
                                      std::memory_order_relaxed);
          continue;
        }
        s_.pids[k] = 0;
        slot.wait_status.store(status, std::memory_order_relaxed);
        slot.state.store(SlotState::dead, std::memory_order_release);
        s_.workers[k].pool->parent_bell.ring();
      }
    }
  }

  /// Kills and reaps every worker, then exits. SIGKILL works on stopped processes and on
  /// processes that ignore SIGTERM, so this is bounded.
  [[noreturn]] void finish() noexcept {
    for (pid_t pid : s_.pids) {
      if (pid > 0) ::kill(pid, SIGKILL);
    }
    for (std::size_t k = 0; k < s_.pids.size(); ++k) {
      if (s_.pids[k] <= 0) continue;
      int status = 0;
      while (waitpid(s_.pids[k], &status, 0) < 0 && errno == EINTR) {
      }
      SlotShared& slot = *s_.workers[k].slot;
      slot.wait_status.store(status, std::memory_order_relaxed);
      slot.state.store(SlotState::dead, std::memory_order_release);
    }
    if (!s_.workers.empty()) s_.workers[0].pool->parent_bell.ring();
    _exit(0);
  }

  ZygoteSetup& s_;
  sigset_t saved_mask_{};
  struct sigaction saved_child_action_ {};
  int signal_fd_ = -1;
};

}  // namespace multicore::detail
