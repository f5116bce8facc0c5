// SPDX-License-Identifier: MIT
// The worker counts pool tests run with (1, 2 and usable_cores()), as a GoogleTest fixture.
#pragma once

#include <gtest/gtest.h>

#include <multicore/multicore.hpp>
#include <string>

namespace multicore_test {

/// A pool test parameterised over the worker count; 0 stands for usable_cores().
class WorkerCountTest : public ::testing::TestWithParam<unsigned> {
 protected:
  multicore::PoolOptions options() const {
    multicore::PoolOptions o;
    o.workers = GetParam();
    return o;
  }
  unsigned expected_size() const {
    return GetParam() == 0 ? multicore::usable_cores() : GetParam();
  }
};

inline auto worker_counts() { return ::testing::Values(1u, 2u, 0u); }

inline std::string worker_count_name(const ::testing::TestParamInfo<unsigned>& info) {
  if (info.param == 0) return "usableCores";
  return std::to_string(info.param) + (info.param == 1 ? "worker" : "workers");
}

}  // namespace multicore_test
