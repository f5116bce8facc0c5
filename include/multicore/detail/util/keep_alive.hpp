// SPDX-License-Identifier: MIT
// What a request needs alive until its job is done, collected while the request is encoded.
#pragma once

#include <memory>
#include <vector>

namespace multicore::detail {

/// Objects a request refers to without carrying them (the shared memory a SharedArray names:
/// a worker opens it through the parent's descriptor, which must stay open until then).
using KeepAlive = std::vector<std::shared_ptr<const void>>;

/// Where encoders on this thread put what the request being encoded needs alive; null when no
/// job is being encoded (an encode() of the user's own, or a worker encoding an answer).
inline KeepAlive*& keep_alive_sink() noexcept {
  thread_local KeepAlive* sink = nullptr;
  return sink;
}

/// While it lives, encoders on this thread add to `into` (a job's list).
class CollectKeepAlive {
 public:
  explicit CollectKeepAlive(KeepAlive& into) noexcept : previous_(keep_alive_sink()) {
    keep_alive_sink() = &into;
  }
  ~CollectKeepAlive() { keep_alive_sink() = previous_; }
  CollectKeepAlive(const CollectKeepAlive&) = delete;
  CollectKeepAlive& operator=(const CollectKeepAlive&) = delete;

 private:
  KeepAlive* previous_;
};

}  // namespace multicore::detail
