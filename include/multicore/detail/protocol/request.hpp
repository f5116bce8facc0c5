// SPDX-License-Identifier: MIT
// Turning a call into a request message: its header, its size, its bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>

#include "../../codec.hpp"
#include "../../options.hpp"
#include "../serialize/serialize.hpp"
#include "entries.hpp"
#include "wire.hpp"

namespace multicore::detail {

/// Starts a request message: room for the header, which `finish_request` fills in.
inline void begin_request(Writer& msg) { msg.resize(sizeof(RequestHeader)); }

/// `tail_bytes`: the payload ends with a tail of that many bytes (see wire.hpp).
inline void finish_request(Writer& msg, std::uint64_t entry, unsigned threads,
                           std::uint64_t tail_bytes = 0) {
  RequestHeader h;
  h.entry = entry;
  h.payload_bytes = msg.size() - sizeof(RequestHeader);
  h.tail_bytes = tail_bytes;
  h.threads = threads;
  std::memcpy(msg.data(), &h, sizeof h);
}

/// Bytes `value` will take on the wire when that is cheap to know (raw values and sequences of
/// them), else 0. Lets a request be sized once instead of grown by doubling, which for a large
/// vector would copy it several times over.
template <class T>
std::size_t size_hint(const T& value) noexcept {
  constexpr Encoding how = encoding_of<T>(Format::binary);  // the only format with a hint
  if constexpr (how == Encoding::raw) {
    return sizeof(T);
  } else if constexpr (how == Encoding::raw_sequence) {
    return sizeof(std::uint64_t) + value.size() * sizeof(typename T::value_type);
  } else {
    return 0;
  }
}

/// Bytes the request for `fn(args...)` in format F will take, when cheap to know (0 otherwise).
template <Format F, class Fn, class... Args>
std::size_t request_size_hint(const Args&... args) noexcept {
  if constexpr (F != Format::binary) return 0;
  return sizeof(RequestHeader) + sizeof(Fn) + (size_hint(args) + ... + 0);
}

/// Encodes `fn(args...)` in format F as a complete request message (task id still 0).
template <Format F, class Fn, class... Args>
void encode_call(Writer& msg, const Fn& fn, const Args&... args) {
  begin_request(msg);
  encode_callable<F>(msg, fn);
  (encode<F>(msg, args), ...);
  std::size_t tail = 0;
  if constexpr (sizeof...(Args) != 0) {
    tail = tail_bytes_of(std::get<sizeof...(Args) - 1>(std::tie(args...)), F);
  }
  finish_request(msg, entry_id<Call<F, Fn, Args...>>(), 1, tail);
}

}  // namespace multicore::detail
