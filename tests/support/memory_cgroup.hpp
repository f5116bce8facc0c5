// SPDX-License-Identifier: MIT
// A memory cgroup with a small limit, for tests that need the kernel's out-of-memory killer to
// kill a process for real: a process that moves itself in and grows past the limit is killed.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace multicore_test {

/// Named `name`, made under the cgroup of this process (cgroup v1's memory hierarchy, or v2 when
/// its memory controller is enabled for children), removed when destroyed (once no process is left
/// in it). Needs the right to make cgroups (root, usually): where it cannot be made, made() is
/// false and why_not() says why.
class MemoryCgroup {
 public:
  MemoryCgroup(const std::string& name, std::size_t limit_bytes) {
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
  /// procs() of the cgroup `name` that a process in the same cgroup as this one made.
  static std::string procs_of(const std::string& name) {
    if (const std::string v1 = own_path("memory"); !v1.empty()) {
      return "/sys/fs/cgroup/memory" + v1 + "/" + name + "/cgroup.procs";
    }
    return "/sys/fs/cgroup" + own_path("") + "/" + name + "/cgroup.procs";
  }

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

/// Moves the calling process into the memory cgroup whose cgroup.procs is `procs`, then grows
/// until the kernel's out-of-memory killer kills it. Returns how it failed, should it not die.
inline int join_then_outgrow(const std::string& procs) {
  if (std::FILE* f = std::fopen(procs.c_str(), "w")) {
    const bool joined = std::fprintf(f, "%d", static_cast<int>(getpid())) > 0;
    if (std::fclose(f) != 0 || !joined) return -1;
  } else {
    return -1;
  }
  constexpr std::size_t piece = std::size_t{1} << 20;
  for (int i = 0; i < 1024; ++i) {  // 1 GiB at most: far past any limit a test sets
    auto* memory = static_cast<char*>(std::malloc(piece));
    if (memory == nullptr) return -2;
    std::memset(memory, 1, piece);  // kept: the point is to grow
  }
  return -3;  // not killed
}

}  // namespace multicore_test
