// SPDX-License-Identifier: MIT
// Process-wide facts: which process this is (application, fork server, worker), and the clock.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>

namespace multicore::detail {

/// True in a worker process.
inline bool& in_worker_process() noexcept {
  static bool value = false;
  return value;
}

/// Counts the forks multicore made on the way to this process (0 in the application). A Pool
/// remembers the value it was built with: its copy in a fork server or worker is a snapshot,
/// not a working pool, and must refuse to be used, while a pool built inside a worker works.
inline std::uint64_t& process_generation() noexcept {
  static std::uint64_t value = 0;
  return value;
}

/// Tells a worker from a copy of it made by fork(), which user code may do in a task: the copy
/// must not go on as the worker. Asked twice a task, so without a system call (the two
/// getpid() calls it replaced were about 13% of a trivial call()'s round trip on a VM): a page
/// the kernel hands every child zero-filled (MADV_WIPEONFORK, Linux 4.14) holds 1 in the
/// process that claimed it. Where the kernel cannot do that, getpid() it is.
class ForkMark {
 public:
  /// The process's one mark. Made in the application, before its first fork server (see
  /// ShmTransport), and so inherited: a page first mapped in a worker could take the addresses
  /// of memory kept out of the workers (keep_out_of_workers), and a task's stray read there
  /// would find the mark instead of a fault. Never unmapped.
  static ForkMark& instance() noexcept {
    static ForkMark mark;
    return mark;
  }

  /// From now on this process is the one: a process forked from it is a copy.
  void claim() noexcept {
    pid_ = getpid();
    if (mark_ != nullptr) *mark_ = 1;
  }

  /// True in a process forked from the one that last claimed the mark (or from such a copy).
  bool in_a_copy() const noexcept { return mark_ != nullptr ? *mark_ == 0 : getpid() != pid_; }

 private:
  ForkMark() noexcept {
    constexpr std::size_t bytes = 1;  // mmap and madvise take whole pages
    void* page = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return;
    if (madvise(page, bytes, MADV_WIPEONFORK) != 0) {
      munmap(page, bytes);
      return;
    }
    mark_ = static_cast<volatile unsigned char*>(page);
  }

  pid_t pid_ = 0;
  volatile unsigned char* mark_ = nullptr;
};

/// The steady clock in nanoseconds: what workers and the parent stamp events with (the same
/// clock in every process of one machine).
inline std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Moves a descriptor the library just made off 0, 1 and 2 (returns it as it is if it is not
/// one of them), close-on-exec. A program that closed its standard streams gets new
/// descriptors there, and whatever it, a library or a worker then writes to "stderr" would
/// land in the library's socket. -1 on failure, with errno set (`fd` is closed either way).
inline int above_stdio(int fd) noexcept {
  if (fd < 0 || fd > STDERR_FILENO) return fd;
  const int moved = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  const int err = errno;
  close(fd);
  errno = err;
  return moved;
}

/// above_stdio() for both ends of a new pipe or socket pair. On failure both are closed and
/// false is returned, with errno set.
inline bool pair_above_stdio(int (&fds)[2]) noexcept {
  fds[0] = above_stdio(fds[0]);
  fds[1] = above_stdio(fds[1]);
  if (fds[0] >= 0 && fds[1] >= 0) return true;
  const int err = errno;
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  errno = err;
  return false;
}

/// Leaves a worker without running the parent's atexit handlers or static destructors (they
/// belong to the parent's snapshot and may touch files or locks it owns), after flushing what
/// the tasks printed.
[[noreturn]] inline void leave_worker(int code) noexcept {
  std::fflush(nullptr);
  _exit(code);
}

}  // namespace multicore::detail
