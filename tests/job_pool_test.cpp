// SPDX-License-Identifier: MIT
// JobPool: jobs recycled with their buffers, so that steady traffic allocates nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <multicore/detail/core/job_pool.hpp>
#include <thread>
#include <utility>
#include <vector>

namespace {

using multicore::detail::Job;
using multicore::detail::JobPool;

// A caller's next job while its last one is still out (the collector delivered its answer and
// gives it back only after the caller was told) is the spare made along with the caller's first
// job. It must come with a request buffer as large as that first request's, or the call that
// gets it allocates: Allocation.CallWithAnIntAllocatesNothing failed so on a loaded machine,
// where that happens only after the warm-up.
TEST(JobPool, TheSpareMadeWithAThreadsFirstJobHasARequestBuffer) {
  JobPool pool;
  std::thread caller([&] {  // a thread that has taken no job yet
    std::unique_ptr<Job> first = pool.take(100);
    first->request.reserve(100);  // as encoded_job does
    std::unique_ptr<Job> second = pool.take(100);
    EXPECT_GE(second->request.capacity(), 100u);
    pool.give_back(std::move(first));
    pool.give_back(std::move(second));
  });
  caller.join();
}

// The same holds for a thread that brings a cached job along from another pool (jobs belong to
// no pool): its first job from this pool is the cached one, and no spare was made, so its next
// call, while the first job was still with the collector, allocated two jobs after the warm-up
// (Allocation.CallWithA4KiBValueAllocatesNothing failed so when run after another test's pool
// in the same process).
TEST(JobPool, AThreadsFirstJobFromAPoolLeavesASpareAlsoWhenItBringsOneAlong) {
  JobPool earlier;
  JobPool later;
  std::thread caller([&] {
    earlier.give_back(earlier.take(100));  // now cached by this thread
    std::unique_ptr<Job> first = later.take(100);
    EXPECT_EQ(later.spare_jobs(), 1u);
    std::unique_ptr<Job> second = later.take(100);
    EXPECT_GE(second->request.capacity(), 100u);
    EXPECT_EQ(later.spare_jobs(), 0u);
    later.give_back(std::move(first));
    later.give_back(std::move(second));
  });
  caller.join();
}

// A map keeps a window of chunks in flight; with large chunks (a fixed chunk_size of 100000
// ints: 400 KB requests) every chunk's request buffer was allocated afresh but one, since only
// one large buffer was kept, and faulting them in made such maps 3 to 4 times slower than maps
// of 10000-item chunks. A window's worth of large buffers is kept warm.
TEST(JobPool, AWindowOfLargeRequestBuffersIsKeptWarm) {
  constexpr std::size_t large = 4 * Job::max_kept_bytes;
  constexpr std::size_t window = 4;
  JobPool pool;
  std::vector<std::unique_ptr<Job>> jobs;
  for (std::size_t i = 0; i < window; ++i) {
    jobs.push_back(pool.take(large));
    jobs.back()->request.reserve(large + i);  // as encoded_job does
  }
  for (auto& job : jobs) pool.give_back(std::move(job));
  jobs.clear();
  for (std::size_t i = 0; i < window; ++i) {
    jobs.push_back(pool.take(large));
    EXPECT_GE(jobs.back()->request.capacity(), large) << "job " << i;
  }
}

// Kept large buffers are best fits: a smaller request takes the smallest that holds it, leaving
// the larger ones to requests that need them.
TEST(JobPool, ALargeRequestTakesTheSmallestWarmBufferThatHoldsIt) {
  constexpr std::size_t small = 2 * Job::max_kept_bytes;
  constexpr std::size_t big = 8 * Job::max_kept_bytes;
  JobPool pool;
  std::unique_ptr<Job> a = pool.take(big);
  a->request.reserve(big);
  std::unique_ptr<Job> b = pool.take(small);
  b->request.reserve(small);
  pool.give_back(std::move(a));
  pool.give_back(std::move(b));
  std::unique_ptr<Job> first = pool.take(small);
  std::unique_ptr<Job> second = pool.take(big);
  EXPECT_GE(first->request.capacity(), small);
  EXPECT_LT(first->request.capacity(), big);
  EXPECT_GE(second->request.capacity(), big);
}

// Kept buffers are bounded in number and in bytes (the one buffer kept before was bounded so):
// one that would pass either bound is freed.
TEST(JobPool, WarmLargeBuffersStayWithinTheirBounds) {
  constexpr std::size_t large = 4 * Job::max_kept_bytes;
  for (const std::size_t max_bytes : {3 * large, std::size_t{1} << 30}) {
    JobPool pool(max_bytes);
    std::vector<std::unique_ptr<Job>> jobs;
    for (std::size_t i = 0; i < 3 * JobPool::max_warm_requests; ++i) {
      jobs.push_back(pool.take(large));
      jobs.back()->request.reserve(large);
    }
    for (auto& job : jobs) pool.give_back(std::move(job));
    const std::size_t most = std::min(JobPool::max_warm_requests, max_bytes / large);
    EXPECT_EQ(pool.warm_requests(), most) << "bound " << max_bytes;
    pool.release_cold_buffers();  // used just now: not cold, kept
    EXPECT_EQ(pool.warm_requests(), most) << "bound " << max_bytes;
  }
}

// At a bound, a larger buffer takes the place of smaller ones (the largest requests are the
// dearest to fault in); a buffer no larger than those kept is the one left out.
TEST(JobPool, ALargerBufferDisplacesSmallerOnesAtTheBound) {
  constexpr std::size_t large = 4 * Job::max_kept_bytes;
  JobPool pool(3 * large);
  std::vector<std::unique_ptr<Job>> jobs;
  for (const std::size_t bytes : {large, large, large, 2 * large, large}) {
    jobs.push_back(pool.take(bytes));
    jobs.back()->request.reserve(bytes);
  }
  for (auto& job : jobs) pool.give_back(std::move(job));
  EXPECT_EQ(pool.warm_requests(), 2u);  // one of `large`, then the larger one; the last left out
  std::unique_ptr<Job> big = pool.take(2 * large);
  EXPECT_GE(big->request.capacity(), 2 * large);
  std::unique_ptr<Job> other = pool.take(large);
  EXPECT_GE(other->request.capacity(), large);
  EXPECT_EQ(pool.warm_requests(), 0u);
}

}  // namespace
