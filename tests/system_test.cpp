// SPDX-License-Identifier: MIT
// Tests for usable_cores() (affinity, cgroup v1/v2 quotas) and load_average_per_core().
#include "multicore/system.hpp"

#include <gtest/gtest.h>
#include <sched.h>
#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "multicore/errors.hpp"

namespace {

namespace fs = std::filesystem;
namespace detail = multicore::detail;

// The CPUs this thread may run on, read from "Cpus_allowed_list:" in /proc/thread-self/status
// (for example "0-3,8"): a source independent of the sched_getaffinity code under test.
std::vector<unsigned> AllowedCpus() {
  std::ifstream status("/proc/thread-self/status");
  std::string line;
  constexpr std::string_view key = "Cpus_allowed_list:";
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) != 0) continue;
    std::vector<unsigned> cpus;
    std::string_view list(line);
    list.remove_prefix(key.size());
    while (!list.empty()) {
      const auto comma = list.find(',');
      std::string_view item = list.substr(0, comma);
      list.remove_prefix(comma == std::string_view::npos ? list.size() : comma + 1);
      item.remove_prefix(std::min(item.find_first_not_of(" \t"), item.size()));
      if (item.empty()) continue;
      unsigned first = 0;
      unsigned last = 0;
      const auto dash = item.find('-');
      std::from_chars(item.data(), item.data() + item.size(), first);
      last = first;
      if (dash != std::string_view::npos) {
        std::from_chars(item.data() + dash + 1, item.data() + item.size(), last);
      }
      for (unsigned cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
    }
    return cpus;
  }
  throw std::runtime_error("no Cpus_allowed_list in /proc/thread-self/status");
}

// A directory tree under the temp dir standing in for "/", removed with everything in it.
class FakeRoot {
 public:
  FakeRoot() {
    std::string name = (fs::temp_directory_path() / "multicore_system_test_XXXXXX").string();
    if (::mkdtemp(name.data()) == nullptr) throw std::system_error(errno, std::generic_category());
    path_ = name;
  }
  ~FakeRoot() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  FakeRoot(const FakeRoot&) = delete;
  FakeRoot& operator=(const FakeRoot&) = delete;

  // Writes `text` to `relative` (e.g. "proc/self/cgroup"), creating the directories.
  void Write(const fs::path& relative, std::string_view text) const {
    const fs::path file = path_ / relative;
    fs::create_directories(file.parent_path());
    std::ofstream(file) << text;
  }
  void MakeDirectory(const fs::path& relative) const { fs::create_directories(path_ / relative); }

  std::optional<unsigned> Limit() const { return detail::cgroup_cpu_limit(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Points usable_cores() at a fake tree for the guard's lifetime.
class SystemRootGuard {
 public:
  explicit SystemRootGuard(const fs::path& root) : saved_(detail::system_root()) {
    detail::system_root() = root;
  }
  ~SystemRootGuard() { detail::system_root() = saved_; }
  SystemRootGuard(const SystemRootGuard&) = delete;
  SystemRootGuard& operator=(const SystemRootGuard&) = delete;

 private:
  fs::path saved_;
};

// Replaces load_average_per_core()'s source for the guard's lifetime.
class LoadSourceGuard {
 public:
  explicit LoadSourceGuard(detail::LoadAverageSource source)
      : saved_(detail::load_average_source()) {
    detail::load_average_source() = source;
  }
  ~LoadSourceGuard() { detail::load_average_source() = saved_; }
  LoadSourceGuard(const LoadSourceGuard&) = delete;
  LoadSourceGuard& operator=(const LoadSourceGuard&) = delete;

 private:
  detail::LoadAverageSource saved_;
};

// Saves this thread's CPU affinity mask and puts it back on destruction.
class AffinityGuard {
 public:
  AffinityGuard() : set_(CPU_ALLOC(cpus)) {
    if (set_ == nullptr) throw std::bad_alloc();
    CPU_ZERO_S(bytes, set_);
    if (::sched_getaffinity(0, bytes, set_) != 0) {
      CPU_FREE(set_);
      throw std::system_error(errno, std::generic_category(), "sched_getaffinity");
    }
  }
  ~AffinityGuard() {
    EXPECT_EQ(::sched_setaffinity(0, bytes, set_), 0) << "could not restore the CPU mask";
    CPU_FREE(set_);
  }
  AffinityGuard(const AffinityGuard&) = delete;
  AffinityGuard& operator=(const AffinityGuard&) = delete;

 private:
  static constexpr std::size_t cpus = 1 << 16;
  static constexpr std::size_t bytes = CPU_ALLOC_SIZE(cpus);
  cpu_set_t* set_;
};

void PinToCpu(unsigned cpu) {
  constexpr std::size_t cpus = 1 << 16;
  ASSERT_LT(cpu, cpus);
  cpu_set_t* set = CPU_ALLOC(cpus);
  ASSERT_NE(set, nullptr);
  const std::size_t bytes = CPU_ALLOC_SIZE(cpus);
  CPU_ZERO_S(bytes, set);
  CPU_SET_S(cpu, bytes, set);
  const int result = ::sched_setaffinity(0, bytes, set);
  CPU_FREE(set);
  ASSERT_EQ(result, 0) << "sched_setaffinity to CPU " << cpu << " failed";
}

// --- usable_cores() -----------------------------------------------------------------------

TEST(UsableCores, IsAtLeastOne) { EXPECT_GE(multicore::usable_cores(), 1U); }

TEST(UsableCores, EqualsAffinityCountWithoutCgroupLimit) {
  const FakeRoot root;  // no proc/self/cgroup at all: no quota can apply
  const SystemRootGuard guard(root.path());
  EXPECT_EQ(multicore::usable_cores(), AllowedCpus().size());
}

TEST(UsableCores, EqualsAffinityCountCappedByTheRealCgroupLimit) {
  std::size_t expected = AllowedCpus().size();
  if (const auto limit = detail::cgroup_cpu_limit("/")) {
    expected = std::min<std::size_t>(expected, *limit);
  }
  EXPECT_EQ(multicore::usable_cores(), expected);
}

TEST(UsableCores, PinnedToOneCpuGivesOne) {
  const std::vector<unsigned> allowed = AllowedCpus();
  ASSERT_FALSE(allowed.empty());
  {
    const AffinityGuard restore;
    PinToCpu(allowed.back());
    ASSERT_EQ(AllowedCpus(), std::vector<unsigned>{allowed.back()});
    EXPECT_EQ(multicore::usable_cores(), 1U);
  }
  EXPECT_EQ(AllowedCpus(), allowed) << "the CPU mask was not restored";
}

TEST(UsableCores, CgroupQuotaBelowAffinityWins) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/app\n");
  root.Write("sys/fs/cgroup/app/cpu.max", "100000 100000\n");
  const SystemRootGuard guard(root.path());
  EXPECT_EQ(multicore::usable_cores(), 1U);
}

TEST(UsableCores, CgroupQuotaAboveAffinityDoesNotAddCores) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/app\n");
  root.Write("sys/fs/cgroup/app/cpu.max", "1000000000 1000\n");  // a million CPUs
  const SystemRootGuard guard(root.path());
  EXPECT_EQ(multicore::usable_cores(), AllowedCpus().size());
}

// Run by CTest under `taskset -c 0` with MULTICORE_EXPECT_USABLE_CORES=1 (tests/CMakeLists.txt);
// skipped in a normal run.
TEST(UsableCores, MatchesCountExpectedByEnvironment) {
  const char* expected = std::getenv("MULTICORE_EXPECT_USABLE_CORES");
  if (expected == nullptr) GTEST_SKIP() << "MULTICORE_EXPECT_USABLE_CORES is not set";
  EXPECT_EQ(std::to_string(multicore::usable_cores()), expected);
}

// --- cgroup v2 ----------------------------------------------------------------------------

TEST(CgroupV2, ParsesCpuMax) {
  EXPECT_EQ(detail::parse_cgroup_v2_cpu_max("150000 100000\n"), 1.5);
  EXPECT_EQ(detail::parse_cgroup_v2_cpu_max("200000 100000"), 2.0);
  EXPECT_EQ(detail::parse_cgroup_v2_cpu_max("50000 100000\n"), 0.5);
  EXPECT_EQ(detail::parse_cgroup_v2_cpu_max("max 100000\n"), std::nullopt);
  EXPECT_EQ(detail::parse_cgroup_v2_cpu_max("max"), std::nullopt);
}

TEST(CgroupV2, RejectsMalformedCpuMax) {
  for (const std::string_view text :
       {"", "\n", "garbage", "150000", "150000 ", "150000 0", "0 100000", "-150000 100000",
        "1.5 100000", "150000 100000 7", "150000 abc", "0x100 100000", "+150000 100000",
        "99999999999999999999999 100000"}) {
    EXPECT_EQ(detail::parse_cgroup_v2_cpu_max(text), std::nullopt) << '"' << text << '"';
  }
}

TEST(CgroupV2, FractionalQuotaRoundsUp) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/app\n");
  root.Write("sys/fs/cgroup/app/cpu.max", "150000 100000\n");
  EXPECT_EQ(root.Limit(), 2U);
}

TEST(CgroupV2, QuotaBelowOneCpuGivesOneCore) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/app\n");
  root.Write("sys/fs/cgroup/app/cpu.max", "5000 100000\n");
  EXPECT_EQ(root.Limit(), 1U);
}

TEST(CgroupV2, MaxMeansNoLimit) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/app\n");
  root.Write("sys/fs/cgroup/app/cpu.max", "max 100000\n");
  EXPECT_EQ(root.Limit(), std::nullopt);
}

TEST(CgroupV2, ParentLimitBindsChild) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/user.slice/app/worker\n");
  root.Write("sys/fs/cgroup/user.slice/app/worker/cpu.max", "400000 100000\n");
  root.Write("sys/fs/cgroup/user.slice/app/cpu.max", "max 100000\n");
  root.Write("sys/fs/cgroup/user.slice/cpu.max", "300000 100000\n");
  EXPECT_EQ(root.Limit(), 3U);
}

TEST(CgroupV2, ChildLimitBelowParentWins) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/user.slice/app\n");
  root.Write("sys/fs/cgroup/user.slice/app/cpu.max", "100000 100000\n");
  root.Write("sys/fs/cgroup/user.slice/cpu.max", "800000 100000\n");
  EXPECT_EQ(root.Limit(), 1U);
}

TEST(CgroupV2, MalformedFilesAreIgnored) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/a/b/c\n");
  root.Write("sys/fs/cgroup/a/b/c/cpu.max", "garbage\n");
  root.Write("sys/fs/cgroup/a/b/cpu.max", "0 100000\n");
  root.Write("sys/fs/cgroup/a/cpu.max", "300000 100000\n");
  EXPECT_EQ(root.Limit(), 3U);
}

TEST(CgroupV2, OnlyMalformedFilesMeanNoLimit) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/a\n");
  root.Write("sys/fs/cgroup/a/cpu.max", "150000 0\n");
  EXPECT_EQ(root.Limit(), std::nullopt);
}

TEST(CgroupV2, LimitAtMountRootAppliesWhenCgroupPathIsNotMounted) {
  // A container that mounts its own cgroup as /sys/fs/cgroup while /proc/self/cgroup still
  // shows the host's path.
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/system.slice/docker-0123abcd.scope\n");
  root.Write("sys/fs/cgroup/cpu.max", "200000 100000\n");
  EXPECT_EQ(root.Limit(), 2U);
}

TEST(CgroupV2, FindsUnifiedLineAmongV1Lines) {
  EXPECT_EQ(detail::cgroup_path("12:cpu,cpuacct:/x\n0::/y/z\n1:name=systemd:/w\n", ""), "/y/z");
  EXPECT_EQ(detail::cgroup_path("0::/with:colon\n", ""), "/with:colon");
  EXPECT_EQ(detail::cgroup_path("4:memory:/x\n", ""), std::nullopt);
  EXPECT_EQ(detail::cgroup_path("", ""), std::nullopt);
  EXPECT_EQ(detail::cgroup_path("junk\n0:/no-second-colon\n", ""), std::nullopt);
}

// --- cgroup v1 ----------------------------------------------------------------------------

TEST(CgroupV1, ParsesQuotaAndPeriod) {
  EXPECT_EQ(detail::parse_cgroup_v1_cpu_quota("250000\n", "100000\n"), 2.5);
  EXPECT_EQ(detail::parse_cgroup_v1_cpu_quota("-1\n", "100000\n"), std::nullopt);
  for (const auto& [quota, period] :
       std::vector<std::pair<std::string_view, std::string_view>>{{"", "100000"},
                                                                  {"abc", "100000"},
                                                                  {"0", "100000"},
                                                                  {"100000", "0"},
                                                                  {"100000", "-5"},
                                                                  {"100000", ""},
                                                                  {"1e5", "100000"}}) {
    EXPECT_EQ(detail::parse_cgroup_v1_cpu_quota(quota, period), std::nullopt)
        << '"' << quota << "\" / \"" << period << '"';
  }
}

TEST(CgroupV1, QuotaUnderCpuCpuacctMount) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "5:cpuacct,cpu:/job\n3:cpuset:/\n");
  root.Write("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "250000\n");
  root.Write("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(root.Limit(), 3U);
}

TEST(CgroupV1, QuotaUnderCpuMount) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "2:cpu:/job\n");
  root.Write("sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "150000\n");
  root.Write("sys/fs/cgroup/cpu/job/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(root.Limit(), 2U);
}

TEST(CgroupV1, NegativeQuotaMeansNoLimit) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "2:cpu:/job\n");
  root.Write("sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "-1\n");
  root.Write("sys/fs/cgroup/cpu/job/cpu.cfs_period_us", "100000\n");
  root.Write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
  root.Write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(root.Limit(), std::nullopt);
}

TEST(CgroupV1, ParentLimitBindsChild) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "2:cpu:/outer/inner\n");
  root.Write("sys/fs/cgroup/cpu/outer/inner/cpu.cfs_quota_us", "800000\n");
  root.Write("sys/fs/cgroup/cpu/outer/inner/cpu.cfs_period_us", "100000\n");
  root.Write("sys/fs/cgroup/cpu/outer/cpu.cfs_quota_us", "100000\n");
  root.Write("sys/fs/cgroup/cpu/outer/cpu.cfs_period_us", "50000\n");
  EXPECT_EQ(root.Limit(), 2U);
}

TEST(CgroupV1, MalformedFilesAreIgnored) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "2:cpu:/outer/inner\n");
  root.Write("sys/fs/cgroup/cpu/outer/inner/cpu.cfs_quota_us", "lots\n");
  root.Write("sys/fs/cgroup/cpu/outer/inner/cpu.cfs_period_us", "100000\n");
  root.Write("sys/fs/cgroup/cpu/outer/cpu.cfs_quota_us", "400000\n");  // period missing
  root.Write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "500000\n");
  root.Write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(root.Limit(), 5U);
}

TEST(CgroupV1, OnlyTheCpuControllerCounts) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "3:cpuset:/job\n2:cpuacct:/job\n");
  for (const char* mount : {"cpuset", "cpuacct", "cpu"}) {
    root.Write(fs::path("sys/fs/cgroup") / mount / "job/cpu.cfs_quota_us", "100000\n");
    root.Write(fs::path("sys/fs/cgroup") / mount / "job/cpu.cfs_period_us", "100000\n");
  }
  EXPECT_EQ(root.Limit(), std::nullopt);
}

// --- both hierarchies ---------------------------------------------------------------------

TEST(Cgroup, HybridSystemTakesTheTighterLimit) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "4:cpu,cpuacct:/job\n0::/job\n");
  root.Write("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "300000\n");
  root.Write("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us", "100000\n");
  root.Write("sys/fs/cgroup/job/cpu.max", "200000 100000\n");
  EXPECT_EQ(root.Limit(), 2U);
}

TEST(Cgroup, NoProcFileMeansNoLimit) {
  const FakeRoot root;
  root.MakeDirectory("sys/fs/cgroup");
  root.Write("sys/fs/cgroup/cpu.max", "100000 100000\n");
  EXPECT_EQ(root.Limit(), std::nullopt);
}

TEST(Cgroup, NoCgroupFilesMeansNoLimit) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/app\n4:cpu:/app\n");
  EXPECT_EQ(root.Limit(), std::nullopt);
}

TEST(Cgroup, DotDotInPathDoesNotEscapeTheMount) {
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/../../outside\n");
  root.Write("sys/fs/cgroup/outside/cpu.max", "100000 100000\n");
  root.Write("outside/cpu.max", "100000 100000\n");
  EXPECT_EQ(root.Limit(), 1U);  // read from sys/fs/cgroup/outside, never from above the mount
  EXPECT_EQ(detail::cgroup_dirs("/m", "/../a/./b/"),
            (std::vector<std::string>{"/m", "/m/a", "/m/a/b"}));
}

// --- load_average_per_core() --------------------------------------------------------------

TEST(LoadAveragePerCore, MatchesGetloadavgPerUsableCore) {
  const auto cores = static_cast<double>(multicore::usable_cores());
  double before = 0;
  ASSERT_EQ(::getloadavg(&before, 1), 1);
  const double measured = multicore::load_average_per_core();
  double after = 0;
  ASSERT_EQ(::getloadavg(&after, 1), 1);
  // The kernel may update the load between the reads; the value must lie between them.
  EXPECT_GE(measured, std::min(before, after) / cores);
  EXPECT_LE(measured, std::max(before, after) / cores);
}

TEST(LoadAveragePerCore, DefaultSourceIsGetloadavg) {
  EXPECT_EQ(detail::load_average_source(), &detail::read_load_average);
}

TEST(LoadAveragePerCore, UsesInjectedSource) {
  {
    const LoadSourceGuard guard([] { return 12.0; });
    EXPECT_EQ(multicore::load_average_per_core(), 12.0 / multicore::usable_cores());
  }
  EXPECT_EQ(detail::load_average_source(), &detail::read_load_average);
}

TEST(LoadAveragePerCore, DividesByUsableCores) {
  const LoadSourceGuard load([] { return 3.0; });
  const FakeRoot root;
  root.Write("proc/self/cgroup", "0::/\n");
  root.Write("sys/fs/cgroup/cpu.max", "100000 100000\n");
  const SystemRootGuard guard(root.path());
  EXPECT_EQ(multicore::load_average_per_core(), 3.0);
}

TEST(LoadAveragePerCore, SourceFailureSurfacesAsSystemError) {
  const LoadSourceGuard guard([]() -> double { throw multicore::SystemError("getloadavg", EIO); });
  try {
    multicore::load_average_per_core();
    FAIL() << "expected multicore::SystemError";
  } catch (const multicore::SystemError& error) {
    EXPECT_EQ(error.code(), std::error_code(EIO, std::generic_category()));
    EXPECT_NE(std::string(error.what()).find("getloadavg"), std::string::npos) << error.what();
  }
}

}  // namespace
