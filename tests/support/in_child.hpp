// SPDX-License-Identifier: MIT
// Runs a scenario in a forked child process with a time limit, so that a hang or a crash
// becomes a test failure instead of a stuck or dead test binary.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <utility>

#include "failure.hpp"
#include "leak_check.hpp"

namespace multicore_test {

/// How a scenario run by in_child() ended.
struct ChildEnd {
  bool hung = false;   ///< still running at the time limit (then killed)
  int status = 0;      ///< its wait status otherwise
  std::string report;  ///< what it wrote to its report pipe

  bool exited_with(int code) const {
    return !hung && WIFEXITED(status) && WEXITSTATUS(status) == code;
  }
  std::string describe() const {
    if (hung) return "hung (killed at the time limit); report: " + report;
    if (WIFSIGNALED(status)) {
      return "killed by signal " + std::to_string(WTERMSIG(status)) + "; report: " + report;
    }
    return "exited with " + std::to_string(WEXITSTATUS(status)) + "; report: " + report;
  }
};

/// Waits (bounded) until this process has no child left, reaping those that exit. Orphaned
/// workers of a killed child are reparented here (the leak check makes this process a
/// subreaper); their fork server kills them within a poll period.
inline bool no_children_within(std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    while (waitpid(-1, &status, WNOHANG) > 0) {
    }
    if (child_pids().empty()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    usleep(10'000);
  }
}

/// Kills and reaps every child of this process (what a scenario left behind), so that one
/// failing scenario does not spill into the next test.
inline void kill_children() {
  for (pid_t pid : child_pids()) kill(pid, SIGKILL);
  no_children_within(std::chrono::seconds(5));
}

/// Runs `scenario(report_fd)` in a forked child, which exits with the int it returns. A child
/// still running after `limit` is killed and reported as hung. Leaves no process behind.
template <class Scenario>
ChildEnd in_child(Scenario&& scenario, std::chrono::milliseconds limit) {
  ChildEnd end;
  Pipe report;
  const pid_t pid = fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork failed";
    return end;
  }
  if (pid == 0) {
    report.close_read();
    const int code = std::forward<Scenario>(scenario)(report.write_fd());
    _exit(code);
  }
  report.close_write();
  const int pidfd = pidfd_open(pid);
  if (!pidfd_exited_within(pidfd, limit)) {
    end.hung = true;
    kill(pid, SIGKILL);
  }
  close(pidfd);
  end.status = reap(pid);
  end.report = read_to_end(report.read_fd(), std::chrono::milliseconds(5000));
  EXPECT_TRUE(no_children_within(std::chrono::seconds(5))) << "the scenario left processes";
  kill_children();
  return end;
}

/// Writes a line to a scenario's report pipe.
inline void say(int fd, const std::string& text) {
  const std::string line = text + "\n";
  write_all(fd, line.data(), line.size());
}

}  // namespace multicore_test
