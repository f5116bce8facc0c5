// SPDX-License-Identifier: MIT
// Memory hygiene: large transfer buffers stay warm while used, and go back when idle.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <multicore/multicore.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "support/failure.hpp"  // MULTICORE_TEST_ASAN, MULTICORE_TEST_TSAN
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
std::size_t size_of_first(std::vector<char> v, int /*unused*/) { return v.size(); }

/// The VmFlags of this process's mapping that contains `address` ("" if there is none).
std::string mapping_flags(const void* address) {
  const auto target = reinterpret_cast<std::uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;
    char dash = 0;
    std::istringstream header(line);
    if (header >> std::hex >> begin >> dash >> end && dash == '-') {
      inside = begin <= target && target < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

/// The first huge-page boundary at or after `data`.
const void* first_huge_page(const void* data, std::size_t page) {
  return reinterpret_cast<const void*>((reinterpret_cast<std::uintptr_t>(data) + page - 1) &
                                       ~(page - 1));
}

// Large buffers that are about to be filled ask for transparent huge pages ("hg" in VmFlags),
// whichever way they are made: a Writer growing to hold an encoding, or a received sequence.
TEST(Memory, LargeBuffersAskForHugePages) {
  const std::size_t page = multicore::detail::huge_page_bytes();
  if (page == 0) GTEST_SKIP() << "this kernel has no transparent huge pages";
  const std::size_t large = 8 * page;

  multicore::Writer out;
  out.reserve(large);
  EXPECT_NE(mapping_flags(first_huge_page(out.data(), page)).find(" hg"), std::string::npos);

  const std::vector<char> sent(large, 'x');
  multicore::Writer encoded;
  multicore::detail::encode(encoded, sent, multicore::Format::binary);
  multicore::Reader in(encoded.bytes());
  const auto received = multicore::detail::decode<std::vector<char>>(in, multicore::Format::binary);
  EXPECT_EQ(received, sent);
  EXPECT_NE(mapping_flags(first_huge_page(received.data(), page)).find(" hg"), std::string::npos);
}

// After a 128 MiB round trip a worker holds its argument and answer buffers (about 256 MiB),
// warm for the next large task; once idle for a second it must give them back. The poll below
// is a liveness bound (it ends as soon as the memory is back), not a timing assertion.
/// Runs `work` in the pool's one worker, then checks that the worker holds at least `held` more
/// memory than before while busy, and gives it back once idle.
template <class Work>
void expect_held_then_given_back(multicore::Pool& pool, Work&& work, std::size_t held_kib) {
  const pid_t worker = pool.call(getpid);
  const std::size_t before = resident_kib(worker);
  ASSERT_GT(before, 0u);
  work();
  const std::size_t peak = resident_kib(worker);
  EXPECT_GT(peak, before + held_kib) << "the worker should hold the memory now";
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

TEST(Memory, IdleWorkerGivesBackLargeBuffers) {
  if (MULTICORE_TEST_TSAN) {
    GTEST_SKIP() << "ThreadSanitizer's shadow memory moves resident size by more than the buffers";
  }
  multicore::Pool pool({.workers = 1});
  const std::vector<char> big(std::size_t{128} << 20, 'x');
  // Not the last argument, so it is not read straight from the ring into its vector (as a
  // request's tail would be): it passes through the worker's request buffer, which stays warm.
  expect_held_then_given_back(
      pool, [&] { EXPECT_EQ(pool.call(size_of_first, big, 0), big.size()); },
      std::size_t{128} << 10);
}

TEST(Memory, IdleWorkerGivesBackWhatTasksFreed) {
  if (MULTICORE_TEST_TSAN || MULTICORE_TEST_ASAN) {
    GTEST_SKIP() << "the sanitizer replaces glibc's malloc, whose tuning this tests";
  }
  multicore::Pool pool({.workers = 1});
  const std::vector<char> big(std::size_t{128} << 20, 'x');
  // The worker's copy of `big` (argument, then result) is freed after the answer: glibc would
  // unmap it at once, but the worker keeps it for the next task, until idle.
  expect_held_then_given_back(
      pool, [&] { EXPECT_EQ(pool.call(echo, big).size(), big.size()); }, std::size_t{128} << 10);
}

}  // namespace
