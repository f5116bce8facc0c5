// SPDX-License-Identifier: MIT
// The descriptors this process's pools own, which a new fork server must close.
#pragma once

#include <mutex>
#include <new>
#include <vector>

namespace multicore::detail {

/// Descriptors every pool of this process owns. A newly forked fork server closes the other
/// pools' ones, or it would keep their lifelines open and they would never see end-of-file.
/// The mutex is never held across a fork, but another thread may hold it at that moment:
/// after_fork() gives the child a fresh one (see watch_forks()).
struct OwnedDescriptors {
  std::mutex mutex;
  std::vector<int> fds;

  static OwnedDescriptors& instance() {
    static OwnedDescriptors registry;
    return registry;
  }

  /// In the child of a fork, while it has one thread. The holder of the old mutex, if any,
  /// stayed in the parent. The list stays: those descriptors are open in the child too, and
  /// a fork server the child makes must close them as well.
  void after_fork() noexcept { new (&mutex) std::mutex; }
};

}  // namespace multicore::detail
