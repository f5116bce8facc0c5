// SPDX-License-Identifier: MIT
// The descriptors this process's pools own, which a new fork server must close.
#pragma once

#include <unistd.h>

#include <mutex>
#include <new>
#include <vector>

namespace multicore::detail {

/// Descriptors every pool of this process owns. A newly forked fork server closes them all (its
/// own pool's too), and so its workers hold none: they would keep other pools' lifelines and
/// their workers' output pipes open, which would then never show end-of-file.
/// The mutex is never held across a fork, but another thread may hold it at that moment:
/// after_fork() gives the child a fresh one (see watch_forks()).
struct OwnedDescriptors {
  std::mutex mutex;
  std::vector<int> fds;
  /// In a worker, the write end of its exec watch (see Zygote::watch_closed), which only the
  /// worker may hold: the child of any fork closes it, a task's child as well as a fork server
  /// made in the worker, or its exec would go unnoticed while that child lives. Else -1.
  int exec_watch = -1;

  static OwnedDescriptors& instance() {
    static OwnedDescriptors registry;
    return registry;
  }

  /// `fd` was just made: fork servers forked from now on close it. Throws std::bad_alloc.
  void add(int fd) {
    std::lock_guard lock(mutex);
    fds.push_back(fd);
  }
  /// `fd` is about to be closed (its number may then be reused for anything).
  void remove(int fd) noexcept {
    std::lock_guard lock(mutex);
    std::erase(fds, fd);
  }

  /// In the child of a fork, while it has one thread. The holder of the old mutex, if any,
  /// stayed in the parent. The list stays: those descriptors are open in the child too, and
  /// a fork server the child makes must close them as well.
  void after_fork() noexcept {
    new (&mutex) std::mutex;
    if (exec_watch >= 0) ::close(exec_watch);
    exec_watch = -1;
  }
};

}  // namespace multicore::detail
