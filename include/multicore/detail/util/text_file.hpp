// SPDX-License-Identifier: MIT
// Reading the small text files of /proc and /sys, without <fstream> (which every file that
// includes the library would otherwise parse).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <optional>
#include <string>

#include "linkage.hpp"

namespace multicore::detail {

// Whole contents of a small text file (procfs/sysfs), or nullopt if it cannot be read.
MULTICORE_DECL std::optional<std::string> read_text_file(const std::string& file);

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL std::optional<std::string> read_text_file(const std::string& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string text;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0) {
      text.append(buffer, static_cast<std::size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      ::close(fd);
      if (n < 0) return std::nullopt;
      return text;
    }
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
