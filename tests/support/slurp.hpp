// SPDX-License-Identifier: MIT
// Whole-file reads for probing /proc, where files vanish with their processes.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace multicore_test {

/// The file's contents, or as much as could be read ("" if it cannot be opened). Uses read(2),
/// not std::ifstream: a /proc/<pid> file of a process that exits meanwhile fails with ESRCH,
/// which std::ifstream reports by throwing.
inline std::string slurp(const std::string& path) {
  std::string contents;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return contents;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    contents.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return contents;
}

}  // namespace multicore_test
