// SPDX-License-Identifier: MIT
// A memory cgroup with a small limit, for tests that need the kernel's out-of-memory killer to
// kill a process for real: a process that moves itself in and grows past the limit is killed.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace multicore_test {

/// Made under the cgroup of this process (cgroup v1's memory hierarchy, or v2 when its memory
/// controller is enabled for children), removed when destroyed (once no process is left in
/// it). Needs the right to make cgroups (root, usually): where it cannot be made, made() is
/// false and why_not() says why.
class MemoryCgroup {
 public:
  explicit MemoryCgroup(std::size_t limit_bytes) {
    const std::string name = "multicore-test-" + std::to_string(getpid());
    if (const std::string v1 = own_path("memory"); !v1.empty()) {
      const std::string base = "/sys/fs/cgroup/memory" + v1;
      if (make(base, name) && write(dir_ + "/memory.limit_in_bytes", limit_bytes)) {
        // With swap accounting, swap counts too: none, so that the limit is a hard one.
        write(dir_ + "/memory.memsw.limit_in_bytes", limit_bytes);
        return;
      }
    } else if (const std::string v2 = own_path(""); !v2.empty()) {
      const std::string base = "/sys/fs/cgroup" + v2;
      if (!contains_word(base + "/cgroup.subtree_control", "memory")) {
        why_not_ = "cgroup v2 without the memory controller for children of " + base;
        return;
      }
      if (make(base, name) && write(dir_ + "/memory.max", limit_bytes)) {
        write(dir_ + "/memory.swap.max", 0);
        return;
      }
    } else {
      why_not_ = "no memory cgroup in /proc/self/cgroup";
    }
    remove();
  }

  ~MemoryCgroup() { remove(); }
  MemoryCgroup(const MemoryCgroup&) = delete;
  MemoryCgroup& operator=(const MemoryCgroup&) = delete;

  bool made() const { return made_; }
  const std::string& why_not() const { return why_not_; }
  /// Where a process writes its pid to move itself in.
  std::string procs() const { return dir_ + "/cgroup.procs"; }

 private:
  /// This process's cgroup in the v1 hierarchy of `controller` ("": the v2 one), or "".
  static std::string own_path(const std::string& controller) {
    std::ifstream in("/proc/self/cgroup");
    for (std::string line; std::getline(in, line);) {
      // "hierarchy-id:controller-list:path"
      const auto first = line.find(':');
      const auto second = line.find(':', first + 1);
      if (first == std::string::npos || second == std::string::npos) continue;
      std::stringstream controllers(line.substr(first + 1, second - first - 1));
      const std::string path = line.substr(second + 1);
      if (controller.empty() && line.compare(0, 2, "0:") == 0 && second == first + 1) {
        return path == "/" ? std::string("/.") : path;
      }
      for (std::string c; std::getline(controllers, c, ',');) {
        if (!controller.empty() && c == controller) return path == "/" ? std::string("/.") : path;
      }
    }
    return {};
  }

  static bool contains_word(const std::string& file, const std::string& word) {
    std::ifstream in(file);
    for (std::string w; in >> w;) {
      if (w == word) return true;
    }
    return false;
  }

  bool make(const std::string& base, const std::string& name) {
    dir_ = base + "/" + name;
    if (mkdir(dir_.c_str(), 0755) != 0) {
      why_not_ = "cannot make " + dir_ + ": " + std::strerror(errno);
      return false;
    }
    made_ = true;
    return true;
  }

  bool write(const std::string& file, std::size_t value) {
    std::ofstream out(file);
    out << value << std::flush;
    if (!out) {
      why_not_ = "cannot write " + file;
      return false;
    }
    return true;
  }

  void remove() {
    if (made_ && rmdir(dir_.c_str()) != 0) {
      std::fprintf(stderr, "memory_cgroup: cannot remove %s: %s\n", dir_.c_str(),
                   std::strerror(errno));
    }
    made_ = false;
  }

  std::string dir_;
  std::string why_not_;
  bool made_ = false;
};

}  // namespace multicore_test
