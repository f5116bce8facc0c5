// SPDX-License-Identifier: MIT
// A byte buffer that keeps its memory between uses, and gives back what stays unused.
#pragma once

#include <chrono>
#include <cstddef>

#include "../../codec.hpp"

namespace multicore::detail {

/// The one policy for transfer buffers (requests, answers, assemblies, on either side): a
/// buffer up to `small` bytes keeps its memory for good; a larger one keeps it, pages mapped,
/// for `warm_for` after its last use and up to `max_warm_bytes`, because back-to-back large
/// payloads would otherwise fault fresh pages in every time (which costs more than copying
/// them); whoever owns it calls release_if_cold() now and then to give back what went unused.
class WarmBuffer {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::size_t max_warm_bytes = std::size_t{256} << 20;
  static constexpr std::chrono::seconds warm_for{1};

  explicit WarmBuffer(std::size_t small) noexcept : small_(small) {}

  Writer& get() noexcept { return buffer_; }
  const Writer& get() const noexcept { return buffer_; }

  /// Done with the contents: keeps the memory per the policy, and notes when it was used.
  void done() noexcept {
    buffer_.clear(max_warm_bytes);
    if (buffer_.capacity() > small_) used_ = Clock::now();
  }

  /// Whether memory beyond `small` is held.
  bool holds_large() const noexcept { return buffer_.capacity() > small_; }

  /// Gives back a large buffer unused since `warm_for` before `now`. Not while in use.
  void release_if_cold(Clock::time_point now) noexcept {
    if (holds_large() && now - used_ >= warm_for) release();
  }

  /// Gives back a large buffer now. Not while in use.
  void release() noexcept {
    if (holds_large()) buffer_ = Writer();
  }

 private:
  Writer buffer_;
  std::size_t small_;
  Clock::time_point used_{};
};

}  // namespace multicore::detail
