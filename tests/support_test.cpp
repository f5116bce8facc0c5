// SPDX-License-Identifier: MIT
// The test support itself: helpers that other tests' verdicts depend on.
#include <gtest/gtest.h>

#include <string>

#include "support/slurp.hpp"

namespace {

// Regression: slurp read through std::ifstream, which throws when read(2) fails. Reading
// /proc/<pid>/stat of a process that exits between open and read fails with ESRCH, so a scan of
// /proc (live_children_of) threw at random while other tests' processes came and went. A
// directory gives the same kind of failure (EISDIR) every time.
TEST(Slurp, GivesWhatItCouldReadInsteadOfThrowing) {
  EXPECT_EQ(multicore_test::slurp("/proc"), "");
  EXPECT_EQ(multicore_test::slurp("/nonexistent/file"), "");
  const std::string stat = multicore_test::slurp("/proc/self/stat");
  EXPECT_NE(stat.find(") "), std::string::npos) << stat;  // "pid (comm) state ..."
}

}  // namespace
