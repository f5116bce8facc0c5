// SPDX-License-Identifier: MIT
// How much of the machine this process may use: CPU affinity, cgroup CPU quota, load average.
#pragma once

#include <sched.h>
#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "multicore/detail/util/linkage.hpp"
#include "multicore/detail/util/text_file.hpp"
#include "multicore/errors.hpp"

namespace multicore::detail {

// Test seam: the directory under which `proc/self/cgroup` and `sys/fs/cgroup` are looked up.
// Tests point it at a fake tree and restore it; nothing else writes it, so it is only read
// concurrently in production. (Paths here are plain strings and files are read with open/read:
// <filesystem> and <fstream> would be parsed by every file that includes the library, for the
// sake of a few small files.)
MULTICORE_DECL std::string& system_root();

// `dir` and `name` joined by one '/'.
MULTICORE_DECL std::string path_join(std::string_view dir, std::string_view name);

// The 1-minute load average from getloadavg(3). getloadavg does not promise to set errno, so
// a failure without one is reported as EIO.
MULTICORE_DECL double read_load_average();

// Test seam: where load_average_per_core() gets the 1-minute load average. Same rules as
// system_root(): tests replace it and restore it.
using LoadAverageSource = double (*)();
MULTICORE_DECL LoadAverageSource& load_average_source();

// Number of CPUs in this thread's affinity mask, or 0 if it cannot be read. The mask is sized
// with CPU_ALLOC and grown while the kernel answers EINVAL (its mask is larger than ours), so
// machines with more than CPU_SETSIZE (1024) CPUs are counted correctly.
MULTICORE_DECL unsigned affinity_cores() noexcept;

MULTICORE_DECL bool is_directory(const std::string& path) noexcept;

MULTICORE_DECL std::string_view trim(std::string_view text) noexcept;

// All of `text` as an integer (decimal, optional '-' for signed types), else nullopt.
template <class Int>
std::optional<Int> parse_integer(std::string_view text) noexcept {
  Int value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// cgroup v2 `cpu.max`: "<quota> <period>" in microseconds, or "max <period>" for no limit.
// Returns quota / period in CPUs (e.g. 1.5), or nullopt for "max" and for anything malformed,
// which the caller ignores.
MULTICORE_DECL std::optional<double> parse_cgroup_v2_cpu_max(std::string_view text) noexcept;

// cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`. A negative quota (the kernel writes -1)
// means no limit. Returns quota / period in CPUs, or nullopt for no limit and malformed input.
MULTICORE_DECL std::optional<double> parse_cgroup_v1_cpu_quota(
    std::string_view quota_text, std::string_view period_text) noexcept;

// The cgroup path of the hierarchy whose controller list contains `controller` (v1), or of the
// unified hierarchy ("0::<path>", v2) when `controller` is empty. Lines of /proc/self/cgroup
// are "<id>:<controller,list>:<path>"; the path may itself contain ':'.
MULTICORE_DECL std::optional<std::string> cgroup_path(std::string_view proc_self_cgroup,
                                                      std::string_view controller);

// The directories from a hierarchy's mount point down to the process's cgroup, mount point
// first. A parent's quota binds its children, so every one of them is consulted. Walking from
// the mount point also covers containers that mount their own cgroup as the root while
// /proc/self/cgroup still shows the host path: the deeper directories simply do not exist.
MULTICORE_DECL std::vector<std::string> cgroup_dirs(const std::string& mount,
                                                    std::string_view path);

// Rounds a CPU quota up to whole cores: 1.5 CPUs of time can keep 2 workers busy.
MULTICORE_DECL unsigned quota_to_cores(double cpus) noexcept;

// The tightest cgroup CPU quota (v2 cpu.max and v1 cfs quota, this cgroup and every ancestor)
// in whole cores, looked up under `root` ("/" in production), or nullopt if there is none.
// Unreadable or malformed files are ignored.
MULTICORE_DECL std::optional<unsigned> cgroup_cpu_limit(const std::string& root);

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL std::string& system_root() {
  static std::string root{"/"};
  return root;
}

MULTICORE_DECL std::string path_join(std::string_view dir, std::string_view name) {
  std::string path(dir);
  if (path.empty() || path.back() != '/') path += '/';
  path += name;
  return path;
}

MULTICORE_DECL double read_load_average() {
  double load = 0;
  errno = 0;
  if (::getloadavg(&load, 1) != 1) {
    const int err = errno;
    throw SystemError("getloadavg", err != 0 ? err : EIO);
  }
  return load;
}

MULTICORE_DECL LoadAverageSource& load_average_source() {
  static LoadAverageSource source = &read_load_average;
  return source;
}

MULTICORE_DECL unsigned affinity_cores() noexcept {
  for (std::size_t cpus = CPU_SETSIZE; cpus <= (std::size_t{1} << 22); cpus *= 2) {
    cpu_set_t* set = CPU_ALLOC(cpus);
    if (set == nullptr) return 0;
    const std::size_t bytes = CPU_ALLOC_SIZE(cpus);
    CPU_ZERO_S(bytes, set);
    const int result = ::sched_getaffinity(0, bytes, set);
    const int err = errno;
    const int count = result == 0 ? CPU_COUNT_S(bytes, set) : 0;
    CPU_FREE(set);
    if (result == 0) return count > 0 ? static_cast<unsigned>(count) : 0;
    if (err != EINVAL) return 0;
  }
  return 0;
}

MULTICORE_DECL bool is_directory(const std::string& path) noexcept {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

MULTICORE_DECL std::string_view trim(std::string_view text) noexcept {
  constexpr std::string_view space = " \t\r\n";
  const auto first = text.find_first_not_of(space);
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(space) - first + 1);
}

MULTICORE_DECL std::optional<double> parse_cgroup_v2_cpu_max(std::string_view text) noexcept {
  text = trim(text);
  const auto gap = text.find_first_of(" \t");
  const std::string_view quota = text.substr(0, gap);
  if (quota == "max") return std::nullopt;
  if (gap == std::string_view::npos) return std::nullopt;
  const auto q = parse_integer<std::uint64_t>(quota);
  const auto p = parse_integer<std::uint64_t>(trim(text.substr(gap)));
  if (!q || !p || *q == 0 || *p == 0) return std::nullopt;
  return static_cast<double>(*q) / static_cast<double>(*p);
}

MULTICORE_DECL std::optional<double> parse_cgroup_v1_cpu_quota(
    std::string_view quota_text, std::string_view period_text) noexcept {
  const auto q = parse_integer<std::int64_t>(trim(quota_text));
  const auto p = parse_integer<std::int64_t>(trim(period_text));
  if (!q || !p || *q <= 0 || *p <= 0) return std::nullopt;
  return static_cast<double>(*q) / static_cast<double>(*p);
}

MULTICORE_DECL std::optional<std::string> cgroup_path(std::string_view proc_self_cgroup,
                                                      std::string_view controller) {
  while (!proc_self_cgroup.empty()) {
    const auto newline = proc_self_cgroup.find('\n');
    const std::string_view line = proc_self_cgroup.substr(0, newline);
    proc_self_cgroup.remove_prefix(newline == std::string_view::npos ? proc_self_cgroup.size()
                                                                     : newline + 1);
    const auto first = line.find(':');
    if (first == std::string_view::npos) continue;
    const auto second = line.find(':', first + 1);
    if (second == std::string_view::npos) continue;
    const std::string_view id = line.substr(0, first);
    std::string_view controllers = line.substr(first + 1, second - first - 1);
    const std::string_view path = line.substr(second + 1);
    if (controller.empty()) {
      if (id == "0" && controllers.empty()) return std::string(path);
      continue;
    }
    while (!controllers.empty()) {
      const auto comma = controllers.find(',');
      if (controllers.substr(0, comma) == controller) return std::string(path);
      controllers.remove_prefix(comma == std::string_view::npos ? controllers.size() : comma + 1);
    }
  }
  return std::nullopt;
}

MULTICORE_DECL std::vector<std::string> cgroup_dirs(const std::string& mount,
                                                    std::string_view path) {
  std::vector<std::string> dirs{mount};
  std::string dir = mount;
  while (!path.empty()) {
    const auto slash = path.find('/');
    const std::string_view part = path.substr(0, slash);
    path.remove_prefix(slash == std::string_view::npos ? path.size() : slash + 1);
    if (part.empty() || part == "." || part == "..") continue;
    dir = path_join(dir, part);
    dirs.push_back(dir);
  }
  return dirs;
}

MULTICORE_DECL unsigned quota_to_cores(double cpus) noexcept {
  const double cores = std::ceil(cpus);
  if (!(cores >= 1)) return 1;
  if (cores >= static_cast<double>(std::numeric_limits<unsigned>::max())) {
    return std::numeric_limits<unsigned>::max();
  }
  return static_cast<unsigned>(cores);
}

MULTICORE_DECL std::optional<unsigned> cgroup_cpu_limit(const std::string& root) {
  const auto cgroups = read_text_file(path_join(root, "proc/self/cgroup"));
  if (!cgroups) return std::nullopt;
  const std::string mounts = path_join(root, "sys/fs/cgroup");
  std::optional<double> tightest;
  const auto consider = [&tightest](std::optional<double> cpus) {
    if (cpus && (!tightest || *cpus < *tightest)) tightest = cpus;
  };

  if (const auto path = cgroup_path(*cgroups, "")) {
    for (const auto& dir : cgroup_dirs(mounts, *path)) {
      if (const auto text = read_text_file(path_join(dir, "cpu.max")))
        consider(parse_cgroup_v2_cpu_max(*text));
    }
  }
  if (const auto path = cgroup_path(*cgroups, "cpu")) {
    // Distributions mount the v1 cpu controller alone or co-mounted with cpuacct (often with
    // the other names as symlinks); the first that exists is the hierarchy.
    for (const char* name : {"cpu", "cpu,cpuacct", "cpuacct,cpu"}) {
      if (!is_directory(path_join(mounts, name))) continue;
      for (const auto& dir : cgroup_dirs(path_join(mounts, name), *path)) {
        const auto quota = read_text_file(path_join(dir, "cpu.cfs_quota_us"));
        const auto period = read_text_file(path_join(dir, "cpu.cfs_period_us"));
        if (quota && period) consider(parse_cgroup_v1_cpu_quota(*quota, *period));
      }
      break;
    }
  }
  if (!tightest) return std::nullopt;
  return quota_to_cores(*tightest);
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail

namespace multicore {

/// Number of CPUs this process can really use: the CPUs in the calling thread's affinity mask
/// (so `taskset -c 0 ./app` gives 1), further limited by the cgroup CPU quota of the process's
/// cgroup and all its ancestors (cgroup v2 `cpu.max`, cgroup v1 `cpu.cfs_quota_us`), rounded
/// up to whole cores (a quota of 1.5 CPUs gives 2).
///
/// Always at least 1. Never throws: if the affinity mask cannot be read it falls back to
/// `std::thread::hardware_concurrency()`, then to 1; unreadable cgroup files are ignored.
/// Thread-safe. Not cached: each call reads the mask and a few small /proc and /sys files, so
/// it reflects `sched_setaffinity` and quota changes made since the last call.
MULTICORE_DECL unsigned usable_cores() noexcept;

/// The system's 1-minute load average divided by `usable_cores()`: about 1.0 when every
/// usable core is busy. This is the figure `TaskOptions::max_load_average` is compared with.
///
/// Thread-safe. Throws `multicore::SystemError` (operation "getloadavg") if the load average
/// cannot be read.
MULTICORE_DECL double load_average_per_core();

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL unsigned usable_cores() noexcept {
  unsigned cores = detail::affinity_cores();
  if (cores == 0) cores = std::thread::hardware_concurrency();
  if (cores == 0) cores = 1;
  try {
    if (const auto limit = detail::cgroup_cpu_limit(detail::system_root())) {
      if (*limit < cores) cores = *limit;
    }
  } catch (...) {
    // Only std::bad_alloc can get here; the quota is then unknown and the affinity count
    // stands.
  }
  return cores;
}

MULTICORE_DECL double load_average_per_core() {
  const double load = detail::load_average_source()();
  return load / static_cast<double>(usable_cores());
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore
