// SPDX-License-Identifier: MIT
// The exceptions multicore throws: one root, one type per way a task can fail.
#pragma once

#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include "detail/util/linkage.hpp"

namespace multicore {

/// Root of every exception multicore throws; `what()` is a sentence a user understands.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An operating-system call failed (fork, mmap, socketpair, ...). Keeps the errno as `code()`.
class SystemError : public Error {
 public:
  /// `what()` reads "multicore: <operation> failed: <strerror(err)>".
  SystemError(const std::string& operation, int err)
      : Error("multicore: " + operation + " failed: " + std::generic_category().message(err)),
        code_(err, std::generic_category()) {}
  const std::error_code& code() const noexcept { return code_; }

 private:
  std::error_code code_;
};

/// The task threw. `type_name()` is the demangled type of what it threw (for example
/// "std::runtime_error" or "int"); `what()` contains the thrown object's own message.
class RemoteError : public Error {
 public:
  RemoteError(std::string type_name, const std::string& message);
  const std::string& type_name() const noexcept { return type_name_; }
  /// The thrown object's own `what()` (empty when the thrown type has none).
  const std::string& message() const noexcept { return message_; }

 private:
  std::string type_name_;
  std::string message_;
};

/// The worker process died while running this task. `signal()` is the signal that killed it
/// (0 if it exited); `exit_code()` is its exit status (-1 if it was killed by a signal);
/// `output_tail()` is the end (at most 4 KiB, from the start of a line) of what it wrote to
/// stderr: an `abort()` or `assert` message, a sanitizer report, a `terminate` message. `what()`
/// ends with it too, when there is one.
class WorkerLost : public Error {
 public:
  WorkerLost(const std::string& what, int signal, int exit_code, std::string output_tail = {},
             bool out_of_memory = false)
      : Error(output_tail.empty() ? what
                                  : what + "; the end of its stderr:\n" + output_tail +
                                        (output_tail.back() == '\n' ? "" : "\n")),
        signal_(signal),
        exit_code_(exit_code),
        output_tail_(std::move(output_tail)),
        out_of_memory_(out_of_memory) {}
  int signal() const noexcept { return signal_; }
  int exit_code() const noexcept { return exit_code_; }
  /// The last lines the worker wrote to stderr before it died ("" if none, or over MPI).
  const std::string& output_tail() const noexcept { return output_tail_; }
  /// True when the kernel's out-of-memory killer most likely killed it: it died of a SIGKILL
  /// the pool did not send, and the killer killed a process on its machine (for the machine's
  /// memory or a memory cgroup's limit) since the worker started. (Who sent a SIGKILL is not
  /// known for certain: one from elsewhere, just after the killer killed another process, reads
  /// the same.)
  bool out_of_memory() const noexcept { return out_of_memory_; }

 private:
  int signal_;
  int exit_code_;
  std::string output_tail_;
  bool out_of_memory_;
};

/// The task ran longer than `PoolOptions::task_timeout`; its worker was killed and replaced.
class TaskTimeout : public Error {
 public:
  using Error::Error;
};

/// The task carried a StopToken whose StopSource was stopped: it was not started, or it still
/// ran after request_stop(grace)'s grace period and its worker was killed and replaced.
class Cancelled : public Error {
 public:
  using Error::Error;
};

/// The task was submitted after `shutdown()`/`terminate()`, or cut off by `terminate()`.
class PoolClosed : public Error {
 public:
  using Error::Error;
};

/// A value could not be encoded or decoded, in the caller or in the worker.
class SerializationError : public Error {
 public:
  using Error::Error;
};

// ---- definitions (see detail/util/linkage.hpp) -----------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL RemoteError::RemoteError(std::string type_name, const std::string& message)
    : Error("task threw " + type_name + (message.empty() ? "" : ": " + message)),
      type_name_(std::move(type_name)),
      message_(message) {}

#endif  // MULTICORE_DEFINE

}  // namespace multicore
