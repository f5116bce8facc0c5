// SPDX-License-Identifier: MIT
// JobPool: jobs recycled with their buffers, so that steady traffic allocates nothing.
#include <gtest/gtest.h>

#include <cstddef>
#include <memory>
#include <multicore/detail/core/job_pool.hpp>
#include <thread>
#include <utility>

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

}  // namespace
