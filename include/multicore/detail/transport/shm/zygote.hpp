// SPDX-License-Identifier: MIT
// The fork server: a single-threaded copy of the program made when the pool is built, which
// forks every worker, so that replacements start from the same memory snapshot.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <span>
#include <vector>

#include "../../util/process.hpp"
#include "layout.hpp"
#include "owned_descriptors.hpp"
#include "shm_channel.hpp"

namespace multicore::detail {

/// A command from the parent, sent over a SOCK_SEQPACKET socket (one command per packet).
/// The socket is also the fork server's lifeline: end-of-file means the parent is gone.
/// A spawn command carries the new worker's stderr pipe, then (tagged output) its stdout pipe,
/// as SCM_RIGHTS descriptors (see ShmTransport::start).
struct ZygoteCommand {
  enum Op : std::uint32_t { spawn = 1, kill = 2, exit = 3, resume = 4 };
  Op op = spawn;
  std::uint32_t slot = 0;
};

/// What the fork server needs; built by the parent before fork (the fork server must not
/// allocate: it may be a fork of a multithreaded program).
struct ZygoteSetup {
  int command_fd = -1;
  pid_t parent = 0;
  std::vector<int> foreign_fds;         // other pools' descriptors, to close
  std::vector<ShmWorkerSetup> workers;  // one per slot
  std::vector<pid_t> pids;              // one per slot: the live worker's pid, or 0
  std::vector<int> exec_watches;        // one per slot: its worker's exec watch, or -1
  /// One per slot: 1 when its worker closed its exec watch without exec (its task closed its
  /// descriptors): its memory is looked at instead, on every wake-up (see watch_closed).
  std::vector<char> unwatched;
  std::vector<pollfd> poll_set;  // command socket, signalfd, then one per slot
};

/// How much stack a program's main thread may use: the soft RLIMIT_STACK, or 8 MiB when it is
/// unlimited or unknown (glibc then gives new threads only 2 MiB).
inline std::size_t normal_stack_bytes() noexcept {
  rlimit limit{};
  if (getrlimit(RLIMIT_STACK, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
    return std::size_t{8} << 20;
  }
  return static_cast<std::size_t>(limit.rlim_cur);
}

/// True when the calling thread's stack holds normal_stack_bytes(). The stack a process
/// started with grows on demand up to that size; the kernel put the program's file name
/// (AT_EXECFN) at its very top, which makes it cheap to recognise. Other stacks (a thread's,
/// or that of a process forked from a thread) have a fixed size, which pthread_getattr_np
/// reports cheaply for them (only for the initial stack does it read /proc/self/maps, which
/// takes 0.1 to 1 ms).
inline bool normal_stack() noexcept {
  const std::size_t wanted = normal_stack_bytes();
  const auto here = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
  const std::uintptr_t top = getauxval(AT_EXECFN);
  if (top != 0 && here < top && top - here < wanted) return true;
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return false;
  void* base = nullptr;
  std::size_t bytes = 0;
  const bool normal = pthread_attr_getstack(&attr, &base, &bytes) == 0 && bytes >= wanted;
  pthread_attr_destroy(&attr);
  return normal;
}

/// fork(), with the child on a stack of normal size. A child runs on the stack of the thread
/// that forked it, and so does every worker the fork server forks: a pool made on a thread
/// with a small stack would give its tasks that small stack. Then the fork is made from a
/// helper thread with a normal one (it inherits the calling thread's signal mask, CPU
/// affinity, nice value and name, as the child would). Otherwise (the main thread, a thread
/// with a default stack) it is a plain fork() right here. Runs `child()`, which must not
/// return, in the child. Returns fork()'s result in the parent; -1 on failure, with errno set
/// and `failed` naming the call that failed.
template <class Child>
pid_t fork_on_normal_stack(Child& child, const char*& failed) noexcept {
  struct Fork {
    Child& child;
    pid_t pid = -1;
    int error = 0;
    void run() noexcept {
      pid = fork();
      error = errno;
      if (pid == 0) child();
    }
  } f{child};
  failed = "fork";
  if (normal_stack()) {
    f.run();
  } else {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    int err = pthread_attr_setstacksize(&attr, normal_stack_bytes());
    pthread_t helper;
    if (err == 0) {
      err = pthread_create(
          &helper, &attr,
          [](void* p) -> void* {
            static_cast<Fork*>(p)->run();
            return nullptr;
          },
          &f);
    }
    pthread_attr_destroy(&attr);
    if (err != 0) {
      failed = "pthread_create";
      f.error = err;
    } else {
      pthread_join(helper, nullptr);
    }
  }
  errno = f.error;
  return f.pid;
}

class Zygote {
 public:
  explicit Zygote(ZygoteSetup& setup) noexcept : s_(setup) {}

  [[noreturn]] void run() noexcept {
    for (int fd : s_.foreign_fds) close(fd);
    OwnedDescriptors::instance().fds.clear();  // closed: no pool made here must close them
    // Never the application's stdin: a task reading it would take input the application waits
    // for (a pipe's, or a file's at the offset they share) or, from a terminal, be stopped
    // (SIGTTIN: a worker leads a background process group) and never answer. End-of-file.
    // Set here, once, for every worker, and so that this process does not hold the
    // application's stdin open either. (Where /dev/null cannot be opened, it stays.)
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd > STDIN_FILENO) {
      dup2(null_fd, STDIN_FILENO);
      close(null_fd);
    }
    // Its own process group: a Ctrl-C at the terminal reaches the application, which decides;
    // the workers then stop with the pool instead of dying mid-task.
    setpgid(0, 0);
    // What a worker leaves when it ends (the fork server of a pool made in it, a process a
    // task started) is adopted here rather than by the application, which may be a subreaper
    // itself (a container's init) that knows nothing of them: they would stay zombies there.
    // reap() and finish() reap them. (Not inherited by the workers.)
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    // An application that set SIGCHLD to SIG_IGN would have its children reaped by the kernel,
    // and the fork server could never learn how a worker died. Workers get the setting back.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &default_action, &saved_child_action_);
    // Only SIGCHLD is blocked (it is read through signalfd), whatever the thread that made the
    // pool blocked: a worker that inherited a blocked SIGSEGV would not die of raise(SIGSEGV).
    sigset_t child_signal;
    sigemptyset(&child_signal);
    sigaddset(&child_signal, SIGCHLD);
    sigprocmask(SIG_SETMASK, &child_signal, nullptr);
    signal_fd_ = above_stdio(signalfd(-1, &child_signal, SFD_CLOEXEC | SFD_NONBLOCK));
    if (signal_fd_ < 0) _exit(71);
    // The parent may have died between fork and now; nobody would then ever close the socket.
    if (getppid() != s_.parent) finish();
    for (;;) {
      std::vector<pollfd>& fds = s_.poll_set;
      fds[0] = {s_.command_fd, POLLIN, 0};
      fds[1] = {signal_fd_, POLLIN, 0};
      for (std::size_t k = 0; k < s_.exec_watches.size(); ++k) {
        // Only its hang-up counts (bytes a task wrote into it do not); -1: poll skips it.
        fds[2 + k] = {s_.exec_watches[k], 0, 0};
      }
      // The timeout is a second line of defence for parent death (the socket can stay open if
      // the application forked a child of its own that inherited it).
      const int ready = poll(fds.data(), fds.size(), 250);
      if (ready < 0 && errno != EINTR) finish();
      if (getppid() != s_.parent) finish();
      if (fds[1].revents != 0) reap();
      for (std::size_t k = 0; k < s_.exec_watches.size(); ++k) {
        // Unless reap() closed it meanwhile: a watch of the same number may be a new worker's.
        if ((fds[2 + k].revents & (POLLHUP | POLLERR)) != 0 &&
            fds[2 + k].fd == s_.exec_watches[k]) {
          watch_closed(k);
        }
      }
      if (fds[0].revents != 0) command();
      look_at_unwatched();
    }
  }

 private:
  static constexpr std::size_t max_pipes = 2;  // see ZygoteCommand

  void command() noexcept {
    ZygoteCommand c;
    iovec data{&c, sizeof c};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_pipes)];
    msghdr m{};
    m.msg_iov = &data;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    const ssize_t n = recvmsg(s_.command_fd, &m, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    // The worker's stderr, then its stdout: -1 where the worker keeps this process's own.
    int pipes[max_pipes] = {-1, -1};
    for (cmsghdr* h = CMSG_FIRSTHDR(&m); h != nullptr; h = CMSG_NXTHDR(&m, h)) {
      if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count && i < max_pipes; ++i) {
        std::memcpy(&pipes[i], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
        // Above 2, or dup2()ing one onto 1 or 2 in the worker could replace the other.
        pipes[i] = above_stdio(pipes[i]);
      }
    }
    if (n != static_cast<ssize_t>(sizeof c) || c.slot >= s_.workers.size()) finish();
    switch (c.op) {
      case ZygoteCommand::spawn:
        spawn(c.slot, pipes);
        for (int fd : pipes) {
          if (fd >= 0) close(fd);  // the worker's now: the parent sees end-of-file as it dies
        }
        return;
      case ZygoteCommand::kill:
        if (s_.pids[c.slot] > 0) kill_worker(s_.pids[c.slot]);
        return;
      case ZygoteCommand::resume:  // only this process knows exactly which pids are workers
        for (pid_t pid : s_.pids) {
          if (pid > 0) ::kill(pid, SIGCONT);
        }
        return;
      case ZygoteCommand::exit:
        break;
    }
    finish();
  }

  void spawn(std::uint32_t k, const int (&pipes)[max_pipes]) noexcept {
    SlotShared& slot = *s_.workers[k].slot;
    const pid_t self = getpid();
    // The worker's exec watch (see watch_closed): a pipe whose write end only the worker holds,
    // closed by exec. Without one (no descriptors left), the worker is not watched.
    int watch[2] = {-1, -1};
    if (pipe2(watch, O_CLOEXEC) != 0 || !pair_above_stdio(watch)) watch[0] = watch[1] = -1;
    slot.replaced_program.store(0, std::memory_order_relaxed);
    const pid_t pid = fork();
    if (pid == 0) {
      if (watch[0] >= 0) close(watch[0]);  // the fork server's end
      become_worker(k, self, pipes, watch[1]);
    }
    if (watch[1] >= 0) close(watch[1]);
    if (pid < 0) {
      if (watch[0] >= 0) close(watch[0]);
      slot.spawn_errno.store(errno, std::memory_order_relaxed);
      slot.state.store(SlotState::spawn_failed, std::memory_order_release);
      s_.workers[k].pool->parent_bell.ring();
      return;
    }
    s_.pids[k] = pid;
    slot.pid.store(pid, std::memory_order_relaxed);
    close_exec_watch(k);  // the previous worker's, had its death not been read yet
    s_.exec_watches[k] = watch[0];
    s_.unwatched[k] = 0;
  }

  void close_exec_watch(std::size_t k) noexcept {
    if (s_.exec_watches[k] >= 0) close(s_.exec_watches[k]);
    s_.exec_watches[k] = -1;
  }

  /// Slot k's exec watch closed: its worker died, is dying, or replaced its program by exec (a
  /// task calling exec where fork then exec, posix_spawn or system() was meant), or closed the
  /// descriptor (a task closing every descriptor it does not know, as daemons do). After exec
  /// it can never answer, and its task's future would wait for as long as that program runs:
  /// it is killed, and the parent told why. A worker that only closed the descriptor goes on;
  /// from now on its memory tells whether it ran exec (look_at_unwatched).
  void watch_closed(std::size_t k) noexcept {
    close_exec_watch(k);
    const pid_t pid = s_.pids[k];
    if (pid <= 0 || !runs(pid)) return;
    if (still_ours(k)) {
      s_.unwatched[k] = 1;
      return;
    }
    replaced_program(k);
  }

  /// Workers without an exec watch: killed if they ran exec since the last look. Every
  /// wake-up, so within the poll timeout.
  void look_at_unwatched() noexcept {
    for (std::size_t k = 0; k < s_.unwatched.size(); ++k) {
      if (s_.unwatched[k] == 0 || s_.pids[k] <= 0 || !runs(s_.pids[k])) continue;
      // Looked at again after a failed read: a worker that ended meanwhile did not exec.
      if (!still_ours(k) && runs(s_.pids[k])) replaced_program(k);
    }
  }

  void replaced_program(std::size_t k) noexcept {
    s_.unwatched[k] = 0;
    s_.workers[k].slot->replaced_program.store(1, std::memory_order_release);
    kill_worker(s_.pids[k]);
  }

  /// Whether worker k still has the pool's memory where it was forked with it, as no program
  /// it ran by exec would: reads the pool's identity there. False too where the kernel lets no
  /// process read another's memory (a worker made non-dumpable, a Yama ptrace_scope of 3):
  /// closing the exec watch then counts as exec, as it did before workers were looked at.
  bool still_ours(std::size_t k) noexcept {
    const std::uint64_t& identity = s_.workers[k].pool->identity;
    std::uint64_t seen = 0;
    iovec local{&seen, sizeof seen};
    iovec remote{const_cast<std::uint64_t*>(&identity), sizeof seen};
    return process_vm_readv(s_.pids[k], &local, 1, &remote, 1, 0) ==
               static_cast<ssize_t>(sizeof seen) &&
           seen == identity;
  }

  /// Whether our child `pid` runs, neither exited nor on its way out (a process closes its
  /// descriptors as it exits, before it can be waited for). Leaves it to be waited for. When
  /// /proc cannot tell, says no.
  static bool runs(pid_t pid) noexcept {
    siginfo_t info{};
    if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        info.si_pid != 0) {
      return false;
    }
    // /proc/<pid>/stat: "pid (comm) state ppid pgrp session tty_nr tpgid flags ...", where
    // comm may hold anything, ')' too. Read without allocating.
    char path[32];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char text[512];
    const ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return false;
    text[n] = '\0';
    const char* p = std::strrchr(text, ')');
    for (int field = 2; p != nullptr && field < 9; ++field) p = std::strchr(p + 1, ' ');
    if (p == nullptr) return false;
    constexpr unsigned long exiting = 0x4;  // PF_EXITING
    return (std::strtoul(p + 1, nullptr, 10) & exiting) == 0;
  }

  [[noreturn]] void become_worker(std::uint32_t k, pid_t zygote, const int (&pipes)[max_pipes],
                                  int exec_watch) noexcept {
    // Published before any user code prints: the parent tags its lines with it.
    s_.workers[k].slot->pid.store(getpid(), std::memory_order_relaxed);
    if (pipes[0] >= 0) dup2(pipes[0], STDERR_FILENO);
    if (pipes[1] >= 0) dup2(pipes[1], STDOUT_FILENO);
    for (int fd : pipes) {
      if (fd >= 0) close(fd);
    }
    // A group of its own: a task calling kill(0, ...) then hits only its own worker, not the
    // fork server and every other worker.
    setpgid(0, 0);
    close(signal_fd_);
    close(s_.command_fd);
    for (std::size_t j = 0; j < s_.exec_watches.size(); ++j) close_exec_watch(j);
    OwnedDescriptors::instance().exec_watch = exec_watch;  // no child of the worker holds it
    sigaction(SIGCHLD, &saved_child_action_, nullptr);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    // Die with the fork server (which dies with the parent). Checked after setting it, in case
    // the fork server was already gone.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != zygote) _exit(0);
#if defined(__GLIBC__)
    // A task that calls exit() (C libraries do, on errors) ends the worker as _exit would, with
    // its status: the application's atexit handlers and static destructors, which exit() runs
    // after this (last registered, first run), belong to it (see leave_worker).
    on_exit([](int status, void*) { leave_worker(status); }, nullptr);
#endif
    const ShmWorkerSetup& setup = s_.workers[k];
    current_worker() = &setup;
    ShmWorkerChannel channel(setup);
    WorkerLoop(channel, setup.plan).run();
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
        s_.unwatched[k] = 0;
        close_exec_watch(k);
        slot.wait_status.store(status, std::memory_order_relaxed);
        slot.state.store(SlotState::dead, std::memory_order_release);
        s_.workers[k].pool->parent_bell.ring();
      }
    }
  }

  /// Kills and reaps every worker, then exits. SIGKILL works on stopped processes and on
  /// processes that ignore SIGTERM, so this is bounded; so is the wait for adopted processes.
  [[noreturn]] void finish() noexcept {
    for (pid_t pid : s_.pids) {
      if (pid > 0) kill_worker(pid);
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
    end_adopted(std::chrono::seconds(1));
    _exit(0);
  }

  /// Kills a worker and the processes its tasks started in its process group (the worker's
  /// pid names its group while the worker is unreaped, so the group is the worker's own).
  static void kill_worker(pid_t pid) noexcept {
    ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);  // a task may have moved the worker to another group
  }

  /// Kills and reaps what is left of the pool's process tree, for at most `limit`: every
  /// process the fork server adopted (see run()), the processes of dead workers and those that
  /// left their worker's group (setsid(), a pool made in a worker). Killing one makes its own
  /// children orphans, adopted here in turn. (Without /proc/thread-self/children they are only
  /// reaped as they exit, and what outlives `limit` is adopted by whoever adopts orphans next.)
  void end_adopted(std::chrono::nanoseconds limit) noexcept {
    const std::int64_t deadline = steady_now_ns() + limit.count();
    for (;;) {
      kill_children();
      int status = 0;
      pid_t pid = 0;
      while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      }
      const std::int64_t left_ms = (deadline - steady_now_ns()) / 1'000'000;
      if (pid < 0 || left_ms <= 0) return;  // no child left (ECHILD), or out of time
      pollfd ready{signal_fd_, POLLIN, 0};
      poll(&ready, 1, static_cast<int>(left_ms));
      signalfd_siginfo info;
      while (read(signal_fd_, &info, sizeof info) > 0) {
      }
    }
  }

  /// SIGKILLs every child of this (single-threaded) process. Reads the list without
  /// allocating: the fork server may be a fork of a multithreaded program.
  static void kill_children() noexcept {
    const int fd = open("/proc/thread-self/children", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buffer[512];
    pid_t pid = 0;
    for (ssize_t n = 0; (n = read(fd, buffer, sizeof buffer)) > 0;) {
      for (const char c : std::span(buffer, static_cast<std::size_t>(n))) {
        if (c >= '0' && c <= '9') {
          pid = pid * 10 + (c - '0');
        } else if (pid != 0) {  // the list is "pid pid ... "
          ::kill(pid, SIGKILL);
          pid = 0;
        }
      }
    }
    close(fd);
  }

  ZygoteSetup& s_;
  struct sigaction saved_child_action_ {};
  int signal_fd_ = -1;
};

}  // namespace multicore::detail
