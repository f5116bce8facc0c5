// SPDX-License-Identifier: MIT
// What travels through the rings: framed request and response messages, and their checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../../stop.hpp"

namespace multicore::detail {

// A message is a fixed header followed by `payload_bytes` of payload. Messages follow each
// other in a ring's byte stream; a payload larger than the ring streams through in pieces.
//
// A payload may end with a *tail*: the elements of a large raw sequence (a std::vector or
// std::string of trivially copyable values) that is the payload's last value. The bytes are the
// same either way; `tail_bytes` only tells the receiver that it may decode everything before the
// tail first, and then copy the tail straight from the ring into the sequence it is building,
// instead of assembling the whole payload in a buffer and copying it a second time. The sender
// likewise writes the tail straight from the sequence into the ring.

inline constexpr std::uint32_t request_magic = 0x4d435251;   // "MCRQ"
inline constexpr std::uint32_t response_magic = 0x4d435253;  // "MCRS"

/// Sanity bound on one payload (256 TiB): a larger size can only come from corruption.
inline constexpr std::uint64_t max_payload_bytes = std::uint64_t{1} << 48;

/// Most memory the parent reserves up front on the word of a worker's header (which may be
/// corrupt): for more, memory grows as the bytes really arrive.
inline constexpr std::size_t max_unproven_reserve_bytes = std::size_t{64} << 20;

enum class RequestKind : std::uint32_t {
  call = 1,  ///< run `entry` on the payload and answer with one response
  stop = 2,  ///< exit cleanly; no response
};

/// Parent -> worker. The parent is trusted: the worker is a fork of the same program.
struct RequestHeader {
  std::uint32_t magic = request_magic;
  RequestKind kind = RequestKind::call;
  std::uint64_t task_id = 0;
  /// Names the code to run: an `Entry` function, as (module, offset) (see util/code_ref.hpp),
  /// valid in every process that runs this build.
  std::uint64_t entry = 0;
  std::uint64_t payload_bytes = 0;
  std::uint64_t tail_bytes = 0;  ///< the payload's last bytes that form its tail (0: none)
  std::uint32_t reserved = 0;    ///< (the format is part of the entry: see Call)
  std::uint32_t threads = 1;     ///< threads the entry may use (Pool::map's threads_per_worker)
  /// The task's StopToken, if it carries one (a default token if not): a worker that takes the
  /// request once its source is stopped skips it, as a cancelled one (see WorkerLoop::run).
  StopToken stop;
};
static_assert(std::is_trivially_copyable_v<RequestHeader> && sizeof(RequestHeader) == 64);

/// Worker -> parent. Never trusted: every field is checked before use (see well_formed; the
/// parent checks the task id against the task it expects next from that worker).
struct ResponseHeader {
  std::uint32_t magic = response_magic;
  std::uint32_t reserved = 0;
  std::uint64_t task_id = 0;
  std::uint64_t payload_bytes = 0;
  std::uint64_t tail_bytes = 0;  ///< the payload's last bytes that form its tail (0: none)
  std::uint64_t run_nanos = 0;   ///< time the entry took, for adaptive chunking
};
static_assert(std::is_trivially_copyable_v<ResponseHeader> && sizeof(ResponseHeader) == 40);

/// True when `h` can be the header of an answer: the framing a transport checks before it
/// trusts the sizes. Whether it answers the task the parent expects is for the parent to check.
inline bool well_formed(const ResponseHeader& h) noexcept {
  return h.magic == response_magic && h.reserved == 0 && h.payload_bytes <= max_payload_bytes &&
         h.tail_bytes <= h.payload_bytes;
}

}  // namespace multicore::detail
