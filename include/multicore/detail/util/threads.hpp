// SPDX-License-Identifier: MIT
// The threads of this process: multicore names its own, so it can tell them from the
// application's when it forks a fork server.
#pragma once

#include <dirent.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <string>
#include <thread>
#include <utility>

#include "../../errors.hpp"
#include "../../options.hpp"

namespace multicore::detail {

/// Every thread multicore starts has a name with this prefix (seen in `top -H`, gdb, /proc).
inline constexpr char own_thread_prefix[] = "multicore";

/// Names the calling thread (at most 15 characters, the kernel's limit).
inline void name_this_thread(const char* name) noexcept {
  pthread_setname_np(pthread_self(), name);
}

/// Starts a thread of multicore's own that names itself `name`, then runs `body`. Returns once
/// the name is set: a thread still starting would count as the application's in
/// other_threads() (a pool made right after this one warned, or refused), and under ASan it
/// holds a lock of the sanitizer's allocator that a fork made at that moment (the application's
/// or the next pool's) would copy held into the child. Throws std::system_error as std::thread.
template <class Body>
std::thread start_own_thread(const char* name, Body body) {
  std::latch named(1);
  std::thread thread([&named, name, body = std::move(body)]() mutable {
    name_this_thread(name);
    named.count_down();  // the last use of `named`, which lives on the caller's stack
    body();
  });
  named.wait();
  return thread;
}

/// Threads of this process other than the calling one and multicore's own.
inline unsigned other_threads() noexcept {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  const long self = static_cast<long>(gettid());
  unsigned others = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.' || std::atol(entry->d_name) == self) continue;
    char name[32] = {};
    const std::string path = std::string("/proc/self/task/") + entry->d_name + "/comm";
    if (std::FILE* comm = std::fopen(path.c_str(), "re")) {
      if (std::fgets(name, sizeof name, comm) == nullptr) name[0] = '\0';
      std::fclose(comm);
    }
    if (std::strncmp(name, own_thread_prefix, sizeof own_thread_prefix - 1) != 0) ++others;
  }
  closedir(dir);
  return others;
}

/// Called before forking a fork server, as `what` ("a Pool", "a Cluster") is made: says once
/// per process on stderr, or throws Error, when other threads run (what they hold at the fork,
/// a lock or a thread-pool runtime such as OpenMP's, is copied into every worker half-made).
inline void check_other_threads(OtherThreads policy, const char* what, const char* option) {
  if (policy == OtherThreads::ignore) return;
  const unsigned others = other_threads();
  if (others == 0) return;
  const std::string message =
      std::string("multicore: this process runs ") + std::to_string(others) +
      " other thread(s) as " + what +
      " is made. Its workers are forked from this process, so a lock another thread holds "
      "right now stays locked in every worker, and a thread-pool runtime already started here "
      "(OpenMP, TBB, a std::thread pool) can hang tasks that use it. Make it first thing in "
      "main(), before starting threads; or set " +
      option + " = multicore::OtherThreads::ignore to silence this (error: to refuse).";
  if (policy == OtherThreads::error) throw Error(message);
  static std::atomic<bool> said{false};
  if (!said.exchange(true)) std::fprintf(stderr, "%s\n", message.c_str());
}

}  // namespace multicore::detail
