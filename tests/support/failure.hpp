// SPDX-License-Identifier: MIT
// Helpers shared by the failure-handling tests: ways for a task to die, pipes between the test
// and its workers, process probes, and exact-exception checks.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <future>
#include <memory>
#include <multicore/detail/util/demangle.hpp>
#include <optional>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "slurp.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define MULTICORE_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MULTICORE_TEST_ASAN 1
#endif
#endif
#ifndef MULTICORE_TEST_ASAN
#define MULTICORE_TEST_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__)
#define MULTICORE_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MULTICORE_TEST_TSAN 1
#endif
#endif
#ifndef MULTICORE_TEST_TSAN
#define MULTICORE_TEST_TSAN 0
#endif

namespace multicore_test {

// ----- Ways for a task to die ------------------------------------------------------------------

/// Keeps a crashing worker from writing a core file (slow, and litter in the working directory).
inline void no_core_dump() noexcept {
  const rlimit none{0, 0};
  setrlimit(RLIMIT_CORE, &none);
}

/// Under AddressSanitizer a SIGSEGV is caught by ASan's handler, which reports it and exits with
/// status 1; put the default action back so the kernel kills the worker by the signal, as it
/// does in a normal build (where this changes nothing).
inline void default_segv_action() noexcept {
  if (MULTICORE_TEST_ASAN != 0) {
    std::signal(SIGSEGV, SIG_DFL);
    std::signal(SIGBUS, SIG_DFL);
  }
}

/// Dies of a real segmentation fault: a store to an address with no mapping behind it.
[[noreturn]] inline void segfault_by_null_write() noexcept {
  no_core_dump();
  default_segv_action();
  // A page mapped PROT_NONE stands in for null: a literal null store is undefined behaviour
  // that UBSan would report (and exit) before the hardware ever faults.
  void* page = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  volatile int* target = page == MAP_FAILED ? nullptr : static_cast<volatile int*>(page);
  *target = 42;
  std::abort();  // not reached
}

/// Dies of SIGSEGV sent to itself.
[[noreturn]] inline void segfault_by_raise() noexcept {
  no_core_dump();
  default_segv_action();
  std::raise(SIGSEGV);
  std::abort();  // not reached
}

/// Waits for signals forever: a task that hangs without using a core.
[[noreturn]] inline void hang_forever() noexcept {
  for (;;) pause();
}

// ----- Pipes -----------------------------------------------------------------------------------

/// A pipe made before a Pool, so that the pool's workers (forks of the fork server, itself a
/// fork made when the pool was built) inherit both ends. Closes what it still holds.
class Pipe {
 public:
  Pipe() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe2: " << std::strerror(errno);
      return;
    }
    read_fd_ = fds[0];
    write_fd_ = fds[1];
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  int read_fd() const noexcept { return read_fd_; }
  int write_fd() const noexcept { return write_fd_; }
  void close_read() noexcept {
    if (read_fd_ >= 0) ::close(read_fd_);
    read_fd_ = -1;
  }
  void close_write() noexcept {
    if (write_fd_ >= 0) ::close(write_fd_);
    write_fd_ = -1;
  }

 private:
  int read_fd_ = -1;
  int write_fd_ = -1;
};

/// Writes all of `n` bytes (also from a worker or a forked child: async-signal-safe calls only).
inline bool write_all(int fd, const void* data, std::size_t n) noexcept {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

/// Liveness bound for reads from a pipe: long enough never to matter on a loaded machine, short
/// enough to fail inside ctest's 60 s timeout with a message rather than be killed.
inline constexpr std::chrono::milliseconds pipe_liveness{20'000};

/// Reads exactly `n` bytes, waiting at most `limit` in total. False on timeout or end-of-file.
inline bool read_exact(int fd, void* data, std::size_t n,
                       std::chrono::milliseconds limit = pipe_liveness) noexcept {
  char* p = static_cast<char*>(data);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (n > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    const int ready = poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    const ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

/// Reads one trivially copyable value; fails the test (and returns a default) on timeout.
template <class T>
T read_value(int fd) {
  T value{};
  EXPECT_TRUE(read_exact(fd, &value, sizeof value)) << "nothing came through the pipe";
  return value;
}

/// Reads until end-of-file (bounded by `limit`) and returns everything read. `complete`, if
/// given, tells whether end-of-file was reached.
inline std::string read_to_end(int fd, std::chrono::milliseconds limit = pipe_liveness,
                               bool* complete = nullptr) {
  std::string out;
  if (complete != nullptr) *complete = false;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ADD_FAILURE() << "no end-of-file on the pipe within the liveness bound; got: " << out;
      return out;
    }
    pollfd pfd{fd, POLLIN, 0};
    const int ready = poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    char buffer[4096];
    const ssize_t r = ::read(fd, buffer, sizeof buffer);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (complete != nullptr) *complete = true;
      return out;
    }
    out.append(buffer, static_cast<std::size_t>(r));
  }
}

// ----- Processes -------------------------------------------------------------------------------

/// State letter and parent of a process from /proc/<pid>/stat; nullopt if it is gone.
struct ProcStat {
  char state = '?';
  pid_t ppid = 0;
};
inline std::optional<ProcStat> proc_stat(pid_t pid) {
  const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  ProcStat s;
  long ppid = 0;
  if (std::sscanf(stat.c_str() + close + 1, " %c %ld", &s.state, &ppid) != 2) return std::nullopt;
  s.ppid = static_cast<pid_t>(ppid);
  return s;
}

/// Live (not zombie) children of `parent`, found by scanning /proc.
inline std::vector<pid_t> live_children_of(pid_t parent) {
  std::vector<pid_t> result;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/proc"), closedir);
  if (!dir) return result;
  while (const dirent* e = readdir(dir.get())) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    const auto s = proc_stat(static_cast<pid_t>(pid));
    if (s && s->ppid == parent && s->state != 'Z' && s->state != 'X') {
      result.push_back(static_cast<pid_t>(pid));
    }
  }
  std::sort(result.begin(), result.end());
  return result;
}

/// True while `pid` exists and is not a zombie.
inline bool running(pid_t pid) {
  const auto s = proc_stat(pid);
  return s && s->state != 'Z' && s->state != 'X';
}

inline int pidfd_open(pid_t pid) noexcept {
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
}

/// Waits (bounded by `limit`) until the process behind `pidfd` has exited.
inline bool pidfd_exited_within(int pidfd, std::chrono::milliseconds limit) noexcept {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() < 0) return false;
    pollfd pfd{pidfd, POLLIN, 0};
    const int r = poll(&pfd, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    return r > 0;
  }
}

/// The wait status of a child of this process (blocking), or -1 if it is not one.
inline int reap(pid_t pid) noexcept {
  int status = 0;
  pid_t r = 0;
  while ((r = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }
  return r == pid ? status : -1;
}

// ----- Exceptions ------------------------------------------------------------------------------

inline std::string describe_exception(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return multicore::detail::demangle(typeid(x).name()) + ": " + x.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}

/// Runs `f` and returns the exception it threw if its dynamic type is exactly `E`; otherwise
/// records a failure naming what happened instead.
template <class E, class F>
std::optional<E> thrown_exactly(F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const E& e) {
    if (typeid(e) == typeid(E)) return e;
    ADD_FAILURE() << "expected exactly " << multicore::detail::type_name<E>() << ", got a "
                  << multicore::detail::demangle(typeid(e).name()) << ": " << e.what();
    return std::nullopt;
  } catch (...) {
    ADD_FAILURE() << "expected " << multicore::detail::type_name<E>() << ", got "
                  << describe_exception(std::current_exception());
    return std::nullopt;
  }
  ADD_FAILURE() << "expected " << multicore::detail::type_name<E>() << ", but nothing was thrown";
  return std::nullopt;
}

/// Calls pool.terminate() when it goes out of scope in a test that has failed. Declare it after
/// the pool: a failed assertion that returns early with tasks that will never be answered would
/// otherwise hang in the destructor (a graceful shutdown waits for every task).
template <class P>
class TerminateIfFailed {
 public:
  explicit TerminateIfFailed(P& pool) : pool_(pool) {}
  ~TerminateIfFailed() {
    if (::testing::Test::HasFailure()) pool_.terminate();
  }
  TerminateIfFailed(const TerminateIfFailed&) = delete;
  TerminateIfFailed& operator=(const TerminateIfFailed&) = delete;

 private:
  P& pool_;
};

/// Waits for `future` at most `limit` (a liveness bound); false, with a failure, if it is late.
template <class T>
bool ready_within(std::future<T>& future, std::chrono::milliseconds limit = pipe_liveness) {
  if (future.wait_for(limit) == std::future_status::ready) return true;
  ADD_FAILURE() << "no answer within " << limit.count() << " ms";
  return false;
}

/// The exception a future holds, if it is exactly `E`.
template <class E, class T>
std::optional<E> error_of(std::future<T>& future) {
  return thrown_exactly<E>([&] { future.get(); });
}

}  // namespace multicore_test
