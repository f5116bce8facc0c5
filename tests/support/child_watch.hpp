// SPDX-License-Identifier: MIT
// A forked test child, reaped on a thread of its own so that waiting on it never hangs.
#pragma once

#include <sys/types.h>
#include <sys/wait.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <multicore/detail/transport/shm/futex.hpp>
#include <thread>

namespace multicore_test {

using multicore::detail::Doorbell;

/// Reaps a child on a thread of its own and, when it is gone, rings `bell`: a parent waiting on
/// that bell for the child's answer then also wakes when the child dies, so it never hangs on a
/// dead child and needs no timeout. Destroyed early (a failed assertion), it kills the child.
class ChildWatch {
 public:
  ChildWatch(pid_t pid, Doorbell& bell) : pid_(pid), bell_(bell), thread_([this] { watch(); }) {}
  ~ChildWatch() {
    if (!gone()) ::kill(pid_, SIGKILL);
    if (thread_.joinable()) thread_.join();
  }
  ChildWatch(const ChildWatch&) = delete;
  ChildWatch& operator=(const ChildWatch&) = delete;

  pid_t pid() const noexcept { return pid_; }
  bool gone() const noexcept { return gone_.load(std::memory_order_acquire); }

  /// Waits until the child has ended (it must be on its way out); returns its waitpid() status.
  int wait() {
    if (thread_.joinable()) thread_.join();
    return status_;
  }

 private:
  void watch() noexcept {
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    status_ = status;
    gone_.store(true, std::memory_order_release);
    bell_.ring();
  }

  pid_t pid_;
  Doorbell& bell_;
  int status_ = 0;
  std::atomic<bool> gone_{false};
  std::thread thread_;
};

}  // namespace multicore_test
