// SPDX-License-Identifier: MIT
// Memory hygiene: large transfer buffers stay warm while used, and go back when idle.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <fstream>
#include <multicore/multicore.hpp>
#include <string>
#include <vector>

#include "support/leak_check.hpp"

// Under AddressSanitizer, free() parks blocks in a quarantine (256 MiB by default) to catch
// use-after-free, so a worker's released buffers would stay resident and the test below could not
// tell a leak from ASan's bookkeeping. With no quarantine, ASan unmaps large blocks on free like
// glibc does. Workers are forks of this binary, so the setting reaches them; ASAN_OPTIONS in the
// environment still overrides it. Unused without ASan.
extern "C" __attribute__((used)) const char* __asan_default_options() {
  return "quarantine_size_mb=0";
}

namespace {

/// Resident memory of process `pid`, in KiB (0 if it cannot be read).
std::size_t resident_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  std::size_t value = 0;
  while (status >> key) {
    if (key == "VmRSS:") {
      status >> value;
      return value;
    }
    status.ignore(4096, '\n');
  }
  return 0;
}

std::vector<char> echo(std::vector<char> v) { return v; }

// After a 128 MiB round trip a worker holds its argument and answer buffers (about 256 MiB),
// warm for the next large task; once idle for a second it must give them back. The poll below
// is a liveness bound (it ends as soon as the memory is back), not a timing assertion.
TEST(Memory, IdleWorkerGivesBackLargeBuffers) {
  multicore::Pool pool({.workers = 1});
  const pid_t worker = pool.call(getpid);
  const std::size_t before = resident_kib(worker);
  ASSERT_GT(before, 0u);
  const std::vector<char> big(std::size_t{128} << 20, 'x');
  EXPECT_EQ(pool.call(echo, big).size(), big.size());
  const std::size_t peak = resident_kib(worker);
  EXPECT_GT(peak, before + (std::size_t{128} << 10)) << "the worker should hold the buffers now";
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::size_t now = peak;
  while (std::chrono::steady_clock::now() < give_up) {
    now = resident_kib(worker);
    if (now < before + (std::size_t{32} << 10)) break;
    usleep(50'000);  // polling another process's memory; there is nothing to wait on
  }
  EXPECT_LT(now, before + (std::size_t{32} << 10))
      << "the idle worker still holds " << (now - before) / 1024 << " MiB";
  EXPECT_EQ(pool.call(echo, std::vector<char>(10, 'y')).size(), 10u);  // still works
}

}  // namespace
