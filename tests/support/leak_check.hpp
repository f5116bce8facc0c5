// SPDX-License-Identifier: MIT
// Process, file-descriptor and /dev/shm probes used by the leak check every test executable runs.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <set>
#include <string>
#include <vector>

// Linking tests/support/leak_check.cpp registers a global ::testing::Environment that, around the
// whole test program, makes this process a child subreaper (orphaned workers of a fork server are
// reparented here, so they are visible) and after the last test fails the run if a child process,
// a new fd or a new /dev/shm entry is left. The functions below let a test assert the same mid-way.
namespace multicore_test {

/// Pids of every process whose parent is this process, zombies included, in ascending order.
std::vector<pid_t> child_pids();

/// Number of file descriptors open in this process (the one used to count them is not counted).
std::size_t open_fd_count();

/// Names of the entries in /dev/shm (empty if it does not exist).
std::set<std::string> shm_entries();

}  // namespace multicore_test
