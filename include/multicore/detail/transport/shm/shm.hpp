// SPDX-License-Identifier: MIT
// Anonymous shared memory, made before fork and inherited by the fork server and workers.
#pragma once

#include <boost/interprocess/anonymous_shared_memory.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <cerrno>
#include <cstddef>
#include <string>

#include "../../../errors.hpp"

namespace multicore::detail {

/// A MAP_SHARED | MAP_ANONYMOUS region. It has no name, so nothing can appear in /dev/shm and
/// no permission can be wrong; the kernel frees it when the last process that maps it is gone.
class SharedRegion {
 public:
  /// Throws SystemError when the mapping cannot be made (for example ENOMEM).
  explicit SharedRegion(std::size_t bytes) : region_(map(bytes)) {}

  std::byte* data() const noexcept { return static_cast<std::byte*>(region_.get_address()); }
  std::size_t size() const noexcept { return region_.get_size(); }

 private:
  static boost::interprocess::mapped_region map(std::size_t bytes) {
    try {
      return boost::interprocess::anonymous_shared_memory(bytes);
    } catch (const boost::interprocess::interprocess_exception& e) {
      const int err = e.get_native_error() != 0 ? e.get_native_error() : ENOMEM;
      throw SystemError("mapping " + std::to_string(bytes) + " bytes of shared memory", err);
    }
  }

  boost::interprocess::mapped_region region_;
};

}  // namespace multicore::detail
