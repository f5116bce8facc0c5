// SPDX-License-Identifier: MIT
// Global GoogleTest environment: no child process, fd or /dev/shm entry may outlive the tests.
#include "support/leak_check.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <map>
#include <sstream>

#include "support/slurp.hpp"

namespace multicore_test {
namespace {

using Clock = std::chrono::steady_clock;

/// How long teardown waits for children to go away before it calls them leaked.
constexpr auto grace = std::chrono::seconds(2);

/// Calls f(name, fd of the open directory) for each entry of dir but "." and "..".
template <class F>
void for_each_entry(const char* dir, F f) {
  DIR* d = opendir(dir);
  if (d == nullptr) return;
  while (const dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      f(e->d_name, dirfd(d));
    }
  }
  closedir(d);
}

struct Child {
  pid_t pid;
  char state;        // R, S, D, Z (zombie), ...
  std::string comm;  // the kernel's short name, still readable for a zombie
};

std::vector<Child> children() {
  std::vector<Child> result;
  const long self = getpid();
  for_each_entry("/proc", [&](const char* name, int) {
    char* end = nullptr;
    const long pid = std::strtol(name, &end, 10);
    if (*end != '\0' || pid <= 0) return;  // not a process
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses, so the fields are
    // read after the last ')'. An empty read means the process has just gone.
    const std::string stat = slurp("/proc/" + std::string(name) + "/stat");
    const auto open = stat.find('(');
    const auto close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open) return;
    char state = '?';
    long ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %ld", &state, &ppid) != 2 || ppid != self) {
      return;
    }
    result.push_back({static_cast<pid_t>(pid), state, stat.substr(open + 1, close - open - 1)});
  });
  std::sort(result.begin(), result.end(),
            [](const Child& a, const Child& b) { return a.pid < b.pid; });
  return result;
}

std::string describe(const Child& c) {
  std::string cmdline = slurp("/proc/" + std::to_string(c.pid) + "/cmdline");
  std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
  while (!cmdline.empty() && cmdline.back() == ' ') cmdline.pop_back();
  std::ostringstream out;
  out << "pid " << c.pid << " (" << c.comm << ") state " << c.state
      << (c.state == 'Z' ? " [zombie]" : "") << " cmdline: " << (cmdline.empty() ? "-" : cmdline);
  return out.str();
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "wait status " + std::to_string(status);
}

/// Open fds of this process and what they point to ("/dev/null", "pipe:[1234]", ...).
std::map<int, std::string> open_fds() {
  std::map<int, std::string> fds;
  for_each_entry("/proc/self/fd", [&](const char* name, int dir_fd) {
    const int fd = std::atoi(name);
    if (fd == dir_fd) return;  // the listing's own fd
    std::array<char, PATH_MAX> target{};
    const std::string link = std::string("/proc/self/fd/") + name;
    const ssize_t n = readlink(link.c_str(), target.data(), target.size());
    fds[fd] = n < 0 ? std::string("?") : std::string(target.data(), static_cast<std::size_t>(n));
  });
  return fds;
}

void nap() {
  const timespec ten_ms{0, 10'000'000};
  nanosleep(&ten_ms, nullptr);
}

/// Reaps every child that has exited; returns one line per reaped child.
std::string reap_exited(std::map<pid_t, std::string>& names) {
  std::string lines;
  int status = 0;
  pid_t pid = 0;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    lines += "\n  pid " + std::to_string(pid) + " (" + names[pid] + ") " + describe_status(status);
  }
  return lines;
}

class LeakCheck final : public ::testing::Environment {
 public:
  void SetUp() override {
    // Worker processes are forked by a fork server; when it dies they would be reparented to init
    // and escape the check. As a subreaper this process inherits them instead.
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
      ADD_FAILURE() << "leak check: prctl(PR_SET_CHILD_SUBREAPER) failed: " << std::strerror(errno);
    }
    fds_ = open_fds();
    shm_ = shm_entries();
  }

  void TearDown() override {
    check_children();
    check_fds();
    check_shm();
  }

 private:
  // Children may still be on their way out (an orphaned worker whose SIGKILL the kernel is still
  // delivering), so this reaps and rescans for a bounded time before it calls anything leaked.
  static void check_children() {
    std::map<pid_t, std::string> names;
    std::string reaped;
    std::vector<Child> left;
    for (const auto deadline = Clock::now() + grace;;) {
      for (const Child& c : children()) names[c.pid] = c.comm;
      reaped += reap_exited(names);
      left = children();
      if (left.empty() || Clock::now() >= deadline) break;
      nap();
    }
    if (!reaped.empty()) {
      std::cerr << "leak check (note, not a failure): reaped children that ended late:" << reaped
                << '\n';
    }
    if (left.empty()) return;
    std::string list;
    for (const Child& c : left) list += "\n  " + describe(c);
    ADD_FAILURE() << "leak check: " << left.size() << " child process(es) still there "
                  << std::chrono::seconds(grace).count()
                  << " s after the last test (orphaned workers count: this process is their "
                     "subreaper); killing them:"
                  << list;
    kill_all();
  }

  // SIGKILLs and reaps every child, including orphans reparented here meanwhile, so one leaking
  // test does not spill into what runs next.
  static void kill_all() {
    std::map<pid_t, std::string> names;
    for (const auto deadline = Clock::now() + grace; Clock::now() < deadline; nap()) {
      const auto left = children();
      if (left.empty()) return;
      for (const Child& c : left) kill(c.pid, SIGKILL);
      reap_exited(names);
    }
  }

  void check_fds() const {
    std::string list;
    for (const auto& [fd, target] : open_fds()) {
      const auto before = fds_.find(fd);
      if (before == fds_.end()) {
        list += "\n  fd " + std::to_string(fd) + " -> " + target;
      } else if (before->second != target) {
        list += "\n  fd " + std::to_string(fd) + " -> " + target + " (was " + before->second + ")";
      }
    }
    if (!list.empty()) {
      ADD_FAILURE() << "leak check: fds opened by the tests and left open:" << list;
    }
  }

  void check_shm() const {
    std::string list;
    for (const std::string& name : shm_entries()) {
      if (shm_.count(name) == 0) list += "\n  /dev/shm/" + name;
    }
    if (!list.empty()) ADD_FAILURE() << "leak check: new entries left in /dev/shm:" << list;
  }

  std::map<int, std::string> fds_;
  std::set<std::string> shm_;
};

// Registered at static-initialisation time so that every test executable linking the support
// library gets the check without doing anything. gtest owns and deletes the environment.
[[maybe_unused]] ::testing::Environment* const leak_check =
    ::testing::AddGlobalTestEnvironment(new LeakCheck);

}  // namespace

std::vector<pid_t> child_pids() {
  std::vector<pid_t> pids;
  for (const Child& c : children()) pids.push_back(c.pid);
  return pids;
}

std::size_t open_fd_count() { return open_fds().size(); }

std::set<std::string> shm_entries() {
  std::set<std::string> names;
  for_each_entry("/dev/shm", [&](const char* name, int) {
    // Open MPI's shared-memory segments: made by MPI jobs running beside a test (the mpi tests
    // started by ctest -j, anything else on the machine), never by a test binary that counts
    // entries (none of them loads MPI). CI's leftovers job checks /dev/shm after every job.
    if (std::string_view(name).starts_with("vader_segment.")) return;
    names.insert(name);
  });
  return names;
}

}  // namespace multicore_test
