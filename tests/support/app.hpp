// SPDX-License-Identifier: MIT
// A forked child "application" that runs a Pool and reports what happened through a pipe.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <multicore/multicore.hpp>
#include <sstream>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "support/failure.hpp"

// Tests that change the process's identity, limits or threads, that kill it, or that may hang
// it, run their Pool in a forked child. The child reports through a pipe, one line per fact, and
// the test asserts on those lines: no gtest assertion runs in the child. A child that does not
// finish within the pipe's liveness bound is killed, so a hang becomes a failure.
namespace multicore_test {

/// Where an application writes its report.
class Report {
 public:
  explicit Report(int fd) : fd_(fd) {}
  void line(const std::string& text) const {
    const std::string l = text + "\n";
    write_all(fd_, l.data(), l.size());
  }
  /// One line describing how `f` ended: "value <v>", or the exception's exact type and fields.
  template <class F>
  void outcome(const std::string& label, F&& f) const {
    line(label + ": " + describe(std::forward<F>(f)));
  }

  template <class F>
  static std::string describe(F&& f) {
    try {
      std::ostringstream out;
      out << "value " << f();
      return out.str();
    } catch (const multicore::SystemError& e) {
      return "SystemError code=" + std::to_string(e.code().value()) + " what=" + e.what();
    } catch (const multicore::WorkerLost& e) {
      return "WorkerLost signal=" + std::to_string(e.signal()) +
             " exit_code=" + std::to_string(e.exit_code());
    } catch (const std::exception& e) {
      return multicore::detail::demangle(typeid(e).name()) + " what=" + e.what();
    }
  }

 private:
  int fd_;
};

struct AppResult {
  std::string report;
  int status = -1;
};

/// Forks an application that runs `body(report)`, then exits; returns its report (read to
/// end-of-file) and its wait status. An exception out of `body` is reported as "uncaught: ...".
template <class F>
AppResult run_app(F body) {
  Pipe report;
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    report.close_read();
    const Report r(report.write_fd());
    int code = 0;
    try {
      body(r);
    } catch (const std::exception& e) {
      r.line(std::string("uncaught: ") + e.what());
      code = 1;
    }
    std::fflush(nullptr);
    _exit(code);
  }
  report.close_write();
  AppResult result;
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return result;
  }
  bool complete = false;
  result.report = read_to_end(report.read_fd(), pipe_liveness, &complete);
  if (!complete) kill(pid, SIGKILL);  // stuck: the failure is recorded; do not hang here too
  result.status = reap(pid);
  return result;
}

/// The lines of a report.
inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace multicore_test
