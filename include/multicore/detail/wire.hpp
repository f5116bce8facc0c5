// SPDX-License-Identifier: MIT
// What travels through the rings: framed request and response messages, and their checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace multicore::detail {

// A message is a fixed header followed by `payload_bytes` of payload. Messages follow each
// other in a ring's byte stream; a payload larger than the ring streams through in pieces.

inline constexpr std::uint32_t request_magic = 0x4d435251;   // "MCRQ"
inline constexpr std::uint32_t response_magic = 0x4d435253;  // "MCRS"

/// Sanity bound on one payload (256 TiB): a larger size can only come from corruption.
inline constexpr std::uint64_t max_payload_bytes = std::uint64_t{1} << 48;

enum class RequestKind : std::uint32_t {
  call = 1,  ///< run `entry` on the payload and answer with one response
  stop = 2,  ///< exit cleanly; no response
};

/// Parent -> worker. The parent is trusted: the worker is a fork of the same program.
struct RequestHeader {
  std::uint32_t magic = request_magic;
  RequestKind kind = RequestKind::call;
  std::uint64_t task_id = 0;
  /// Names the code to run. Today: the address of an `Entry` function in the forked image
  /// (valid in every worker, which is a fork of this program). A registry of names can take
  /// its place for transports where addresses do not survive (exec, another machine).
  std::uint64_t entry = 0;
  std::uint64_t payload_bytes = 0;
  std::uint32_t format = 0;   ///< Format of the values in the payload
  std::uint32_t threads = 1;  ///< threads the entry may use (Pool::map's threads_per_worker)
};
static_assert(std::is_trivially_copyable_v<RequestHeader> && sizeof(RequestHeader) == 40);

/// Worker -> parent. Never trusted: every field is checked before use (see is_valid).
struct ResponseHeader {
  std::uint32_t magic = response_magic;
  std::uint32_t reserved = 0;
  std::uint64_t task_id = 0;
  std::uint64_t payload_bytes = 0;
  std::uint64_t run_nanos = 0;  ///< time the entry took, for adaptive chunking
};
static_assert(std::is_trivially_copyable_v<ResponseHeader> && sizeof(ResponseHeader) == 32);

/// True when `h` is a well-formed answer to the task the parent expects next from this worker
/// (workers answer strictly in the order they were sent tasks).
inline bool is_valid(const ResponseHeader& h, std::uint64_t expected_task_id) noexcept {
  return h.magic == response_magic && h.reserved == 0 && h.task_id == expected_task_id &&
         h.payload_bytes <= max_payload_bytes;
}

}  // namespace multicore::detail
