// SPDX-License-Identifier: MIT
// SharedArray: memory made at any time that tasks read and write in place, with no name to
// leak, bounded mappings in every process, and nothing left when the parent dies.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <future>
#include <multicore/multicore.hpp>
#include <numeric>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"

namespace {

using multicore::Pool;
using multicore::PoolOptions;
using multicore::SharedArray;
using multicore_test::error_of;
using multicore_test::ready_within;
using multicore_test::TerminateIfFailed;

/// What a process holds of SharedArrays: mappings of their memory, and descriptors of it.
struct Held {
  std::size_t mappings = 0;
  std::size_t descriptors = 0;
};

constexpr const char* memfd_name = "memfd:multicore-shared-array";

Held held_here() {
  Held held;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find(memfd_name) != std::string::npos) ++held.mappings;
  }
  DIR* dir = opendir("/proc/self/fd");
  while (dirent* e = dir != nullptr ? readdir(dir) : nullptr) {
    char target[256] = {};
    const std::string link = std::string("/proc/self/fd/") + e->d_name;
    if (readlink(link.c_str(), target, sizeof target - 1) > 0 &&
        std::string(target).find(memfd_name) != std::string::npos) {
      ++held.descriptors;
    }
  }
  if (dir != nullptr) closedir(dir);
  return held;
}

/// Every descriptor of this process, counted in a worker.
std::size_t fds_here() { return multicore_test::open_fd_count(); }

void fill(std::size_t begin, std::size_t end, SharedArray<double> out) {
  for (std::size_t i = begin; i < end; ++i) out[i] = 2.0 * static_cast<double>(i);
}

double sum(SharedArray<const double> in) { return std::accumulate(in.begin(), in.end(), 0.0); }

TEST(SharedArray, MadeAfterThePoolTasksWriteInPlaceAndTheParentReads) {
  Pool pool(PoolOptions{.workers = 2});
  constexpr std::size_t n = 100'000;
  SharedArray<double> out(n);
  EXPECT_EQ(out.size(), n);
  EXPECT_EQ(out[n - 1], 0.0);  // zero-filled
  std::vector<std::future<void>> done;
  for (auto [begin, end] : multicore::ranges(n, 8))
    done.push_back(pool.submit(fill, begin, end, out));
  for (auto& f : done) f.get();
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 2.0 * static_cast<double>(i)) << i;
  // Read back by tasks, read-only, after the parent changed it.
  out[0] = 1e9;
  EXPECT_EQ(pool.call(sum, out.read_only()), std::accumulate(out.begin(), out.end(), 0.0));
}

/// A function object with the array as a member: how map() takes it (captured).
struct Square {
  SharedArray<std::int64_t> out;
  int operator()(std::pair<std::size_t, std::size_t> range) const {
    for (std::size_t i = range.first; i < range.second; ++i) {
      out[i] = static_cast<std::int64_t>(i * i);
    }
    return 1;
  }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(out);
  }
};

TEST(SharedArray, MapOverRangesWritesThroughACapturedArray) {
  Pool pool(PoolOptions{.workers = 2});
  constexpr std::size_t n = 10'007;
  Square square{SharedArray<std::int64_t>(n)};
  int parts = 0;
  for (int part : pool.map(square, multicore::ranges(n, 50))) parts += part;
  EXPECT_EQ(parts, 50);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(square.out[i], static_cast<std::int64_t>(i * i));
}

/// A function object that every item of a map needs with a large constant (a model, a table).
struct LookUp {
  SharedArray<const std::int64_t> table;
  std::int64_t operator()(std::size_t i) const { return table[i % table.size()]; }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(table);
  }
};

// A map's function object is encoded into every chunk: held as a SharedArray, a large table
// adds a handle to each, never its elements, and each worker maps it once.
TEST(SharedArray, ALargeTableInAMapsFunctionObjectTravelsAsItsHandle) {
  SharedArray<std::int64_t> table(std::size_t{4} << 20);  // 32 MiB
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::int64_t>(3 * i);
  multicore::Writer large;
  multicore::Writer tiny;
  multicore::detail::encode(large, LookUp{table.read_only()});
  multicore::detail::encode(tiny, LookUp{SharedArray<std::int64_t>(1).read_only()});
  EXPECT_EQ(large.size(), tiny.size());
  EXPECT_LT(large.size(), 256u);

  Pool pool(PoolOptions{.workers = 2});
  const std::vector<std::size_t> items{0, 1, 4'000'000, 4'194'303, 4'194'304, 7};
  multicore::MapOptions one_per_chunk;
  one_per_chunk.chunk_size = 1;
  std::vector<std::int64_t> got;
  for (std::int64_t v : pool.map(LookUp{table.read_only()}, items, one_per_chunk)) got.push_back(v);
  EXPECT_EQ(got, (std::vector<std::int64_t>{0, 3, 12'000'000, 12'582'909, 0, 21}));
}

TEST(SharedArray, RunInlineWorks) {
  Pool pool(PoolOptions{.workers = 1, .run_inline = true});
  SharedArray<double> out(1000);
  pool.submit(fill, std::size_t{0}, std::size_t{1000}, out).get();
  EXPECT_EQ(out[999], 1998.0);
  EXPECT_EQ(pool.call(sum, out.read_only()), 999.0 * 1000.0);
}

TEST(SharedArray, AnEmptyArrayCrosses) {
  Pool pool(PoolOptions{.workers = 1});
  EXPECT_EQ(pool.call(sum, SharedArray<double>(0).read_only()), 0.0);
  EXPECT_EQ(pool.call(sum, SharedArray<const double>()), 0.0);
}

// A moved-from handle is empty, as a moved-from std::vector is (it kept its size, with no
// memory behind it, before the array kept its own address).
TEST(SharedArray, AMovedFromArrayIsEmpty) {
  SharedArray<int> a(8);
  a[7] = 5;
  SharedArray<int> b(std::move(a));
  EXPECT_EQ(b.size(), 8u);
  EXPECT_EQ(b[7], 5);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): the state is what is tested
  EXPECT_EQ(a.data(), nullptr);
  SharedArray<int> c(2);
  c = std::move(b);
  EXPECT_EQ(c.size(), 8u);
  EXPECT_EQ(c[7], 5);
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b.data(), nullptr);
  const SharedArray<const int> view = c.read_only();
  EXPECT_EQ(view.data(), c.data());
  EXPECT_EQ(view[7], 5);
}

TEST(SharedArray, WorkersMapAReadOnlyArrayReadOnly) {
  Pool pool(PoolOptions{.workers = 1});
  TerminateIfFailed guard(pool);
  SharedArray<int> a(16);
  auto scribble = [](SharedArray<const int> in) {
    multicore_test::no_core_dump();
    multicore_test::default_segv_action();
    const_cast<int&>(in[0]) = 1;  // the mapping refuses: SIGSEGV
    return 0;
  };
  auto result = pool.submit(scribble, a.read_only());
  ASSERT_TRUE(ready_within(result));
  EXPECT_TRUE(error_of<multicore::WorkerLost>(result));
  EXPECT_EQ(a[0], 0);
}

TEST(SharedArray, TheParentMayDropItsLastHandleRightAfterSubmitting) {
  multicore_test::Pipe gate;
  Pool pool(PoolOptions{.workers = 1});
  TerminateIfFailed guard(pool);
  const int gate_fd = gate.read_fd();
  // The one worker is busy until the gate opens, so the next task waits in the queue while
  // nothing but the job holds the array.
  auto busy = pool.submit([gate_fd] {
    char c = 0;
    return multicore_test::read_exact(gate_fd, &c, 1);
  });
  auto written = pool.submit(
      [](SharedArray<int> a) {
        for (int& x : a) x = 7;
        return std::accumulate(a.begin(), a.end(), 0);
      },
      SharedArray<int>(100));
  EXPECT_EQ(held_here().descriptors, 1u);  // held by the queued job alone
  ASSERT_TRUE(multicore_test::write_all(gate.write_fd(), "x", 1));
  ASSERT_TRUE(ready_within(busy));
  EXPECT_TRUE(busy.get());
  ASSERT_TRUE(ready_within(written));
  EXPECT_EQ(written.get(), 700);
}

TEST(SharedArray, HandlesOutliveThePool) {
  SharedArray<double> kept(64);
  {
    Pool pool(PoolOptions{.workers = 1});
    pool.submit(fill, std::size_t{0}, std::size_t{64}, kept).get();
    SharedArray<double> dropped(64);  // dropped while the pool lives
    pool.submit(fill, std::size_t{0}, std::size_t{64}, dropped).get();
  }
  EXPECT_EQ(kept[63], 126.0);
  kept[0] = 5.0;  // still mapped, writable
  EXPECT_EQ(kept[0], 5.0);
}

TEST(SharedArray, MadeBeforeThePoolCrossesLikeAnyOther) {
  SharedArray<double> early(64);
  Pool pool(PoolOptions{.workers = 1});
  pool.submit(fill, std::size_t{0}, std::size_t{64}, early).get();
  EXPECT_EQ(early[63], 126.0);
}

TEST(SharedArray, AWorkerThatDiesWhileWritingLeavesTheMemoryValid) {
  Pool pool(PoolOptions{.workers = 1});
  TerminateIfFailed guard(pool);
  SharedArray<int> a(1000);
  auto dying = pool.submit(
      [](SharedArray<int> out) {
        for (std::size_t i = 0; i < 500; ++i) out[i] = 1;
        multicore_test::segfault_by_raise();
      },
      a);
  ASSERT_TRUE(ready_within(dying));
  EXPECT_TRUE(error_of<multicore::WorkerLost>(dying));
  EXPECT_EQ(std::accumulate(a.begin(), a.end(), 0), 500);
  // The replacement worker maps it again and carries on.
  pool.submit([](SharedArray<int> out) { out[999] = 2; }, a).get();
  EXPECT_EQ(a[999], 2);
}

TEST(SharedArray, AThousandArraysInALoopGrowNoDescriptorsOrMappings) {
  Pool pool(PoolOptions{.workers = 2});
  auto in_worker = [] {
    const Held held = held_here();
    return std::pair<std::size_t, std::size_t>(held.mappings, fds_here());
  };
  const std::size_t parent_fds = multicore_test::open_fd_count();
  const auto worker_before = pool.call(in_worker);
  for (int i = 0; i < 1000; ++i) {
    SharedArray<int> a(1024);
    pool.submit([](SharedArray<int> out, int v) { out[0] = v; }, a, i).get();
    ASSERT_EQ(a[0], i);
  }
  // A finished job lets go of its arrays right after its caller was told: wait (bounded).
  for (int tries = 0; held_here().descriptors != 0 && tries < 2000; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(held_here().descriptors, 0u);
  EXPECT_EQ(held_here().mappings, 0u);
  EXPECT_EQ(multicore::detail::SharedMappings::instance().size(), 0u);
  EXPECT_LE(multicore_test::open_fd_count(), parent_fds);
  // Either worker: each keeps at most the last array it saw and the one before (whose job the
  // parent may not have let go yet when the last one was decoded); without the sweep, 16.
  for (int w = 0; w < 4; ++w) {
    const auto worker_after = pool.call(in_worker);
    EXPECT_LE(worker_after.first, 2u);
    EXPECT_EQ(worker_after.second, worker_before.second);
  }
}

TEST(SharedArray, AHandleFromAnotherMachineIsASerializationError) {
  SharedArray<int> a(8);
  multicore::Writer out;
  multicore::detail::encode(out, a);
  // The handle names the machine by its boot id (after the element count, at its end).
  std::span<std::byte> bytes = out.bytes();
  bytes[bytes.size() - 5] ^= std::byte{1};
  multicore::Reader in(bytes);
  const auto error = multicore_test::thrown_exactly<multicore::SerializationError>(
      [&] { multicore::detail::decode<SharedArray<int>>(in); });
  ASSERT_TRUE(error);
  EXPECT_NE(std::string(error->what()).find("another machine"), std::string::npos) << error->what();
}

TEST(SharedArray, AParentKilledBySigkillLeavesNothing) {
  const auto shm_before = multicore_test::shm_entries();
  const multicore_test::ChildEnd end = multicore_test::in_child(
      [](int report_fd) {
        multicore_test::Pipe started;
        Pool pool(PoolOptions{.workers = 2});
        SharedArray<int> a(1 << 20);
        const int started_fd = started.write_fd();
        std::vector<std::future<void>> hanging;
        for (int w = 0; w < 2; ++w) {
          hanging.push_back(pool.submit(
              [started_fd](SharedArray<int> out) {
                out[0] = 1;
                multicore_test::write_all(started_fd, "s", 1);
                multicore_test::hang_forever();
              },
              a));
        }
        char c[2];
        if (!multicore_test::read_exact(started.read_fd(), c, 2)) return 1;
        multicore_test::write_all(report_fd, "mapped", 6);
        raise(SIGKILL);
        return 2;
      },
      std::chrono::seconds(60));
  EXPECT_TRUE(!end.hung && WIFSIGNALED(end.status) && WTERMSIG(end.status) == SIGKILL)
      << end.describe();
  EXPECT_EQ(end.report, "mapped");
  EXPECT_TRUE(multicore_test::no_children_within(std::chrono::seconds(20)));
  EXPECT_EQ(multicore_test::shm_entries(), shm_before);
}

}  // namespace
