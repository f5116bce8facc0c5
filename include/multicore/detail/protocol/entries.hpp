// SPDX-License-Identifier: MIT
// Turning a call into a request message, running it in the worker, and reading its outcome.
#pragma once

#include <cxxabi.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../serialize/serialize.hpp"
#include "../util/demangle.hpp"
#include "wire.hpp"

namespace multicore::detail {

/// The tail of a request (see wire.hpp), still in the worker's ring: the entry reads it from
/// there straight into the sequence it decodes as the request's last value.
class RequestTail {
 public:
  /// Bytes of the tail not read yet.
  virtual std::uint64_t left() const noexcept = 0;
  /// Waits for more of the tail and returns the next contiguous bytes of it (at most left());
  /// they stay valid until consume().
  virtual std::span<const std::byte> next() noexcept = 0;
  virtual void consume(std::size_t n) noexcept = 0;

 protected:
  ~RequestTail() = default;
};

/// Sends an answer whose value ends in a tail: the bytes the entry wrote to `out` (after the
/// room left for the header, which it fills in), then `tail` straight from the value's own
/// memory.
class AnswerSender {
 public:
  virtual void send(Writer& out, std::span<const std::byte> tail) noexcept = 0;

 protected:
  ~AnswerSender() = default;
};

class ThreadTeam;

/// What the worker tells an entry about the request besides its payload.
struct CallContext {
  Format format = Format::binary;
  unsigned threads = 1;
  RequestTail* tail = nullptr;     ///< the request's tail, if it has one and it is unread
  AnswerSender* sender = nullptr;  ///< set in a worker, where an answer may have a tail
  ThreadTeam* team = nullptr;      ///< the worker's own threads; null inline (see MapChunk)
};

/// The code a request names. Decodes its payload, runs the user's function and writes the
/// outcome to `out`, or sends it with a tail through `context.sender`. Never throws: every
/// failure becomes an outcome the parent can read.
using Entry = void (*)(Reader& payload, Writer& out, const CallContext& context) noexcept;

/// First byte of every outcome a worker writes for one call (or one item of a map chunk).
enum class Outcome : std::uint8_t {
  value = 0,                ///< followed by the encoded result (nothing for void)
  remote_error = 1,         ///< followed by the thrown type's name and its message
  serialization_error = 2,  ///< followed by a message
};

inline void write_string(Writer& out, std::string_view s) {
  const auto n = static_cast<std::uint32_t>(s.size());
  out.write(&n, sizeof n);
  out.write(s.data(), s.size());
}

inline std::string read_string(Reader& in) {
  std::uint32_t n = 0;
  in.read(&n, sizeof n);
  const auto bytes = in.take(n);
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

inline void write_outcome(Writer& out, Outcome o) { out.write(&o, 1); }

/// Records the exception being handled as a remote error: its type and, where it has one, its
/// message. Works for anything thrown, std::exception or not.
inline void write_current_exception(Writer& out) noexcept {
  const std::size_t mark = out.size();
  std::string type = "unknown exception";
  std::string message;
  try {
    if (const std::type_info* t = abi::__cxa_current_exception_type()) type = demangle(t->name());
    try {
      throw;
    } catch (const std::exception& e) {
      message = message_of(e);
    } catch (const std::string& s) {
      message = s;
    } catch (const char* s) {
      message = s;
    } catch (...) {
    }
    write_outcome(out, Outcome::remote_error);
    write_string(out, type);
    write_string(out, message);
  } catch (...) {
    // Out of memory while describing the error (a huge message, say): keep what fits, the
    // type, so the answer stays well-formed and the worker is not taken for broken.
    out.resize(mark);
    try {
      write_outcome(out, Outcome::remote_error);
      write_string(out, type);
      write_string(out, "");
    } catch (...) {
      // Not even that: an empty outcome, which the parent reports as a SerializationError
      // for this task, and the worker lives on.
      out.resize(mark);
    }
  }
}

/// Records a serialization failure that happened while `doing` something in the worker.
inline void write_serialization_failure(Writer& out, std::size_t mark, const char* doing) noexcept {
  out.resize(mark);
  std::string message = std::string("multicore: ") + doing + " failed";
  try {
    throw;
  } catch (const std::exception& e) {
    message = message_of(e);
  } catch (...) {
  }
  try {
    write_outcome(out, Outcome::serialization_error);
    write_string(out, message);
  } catch (...) {
    out.resize(mark);
  }
}

/// Reads an outcome's tag: returns if a value follows, or throws what the worker reported.
inline void read_value_tag(Reader& in) {
  Outcome o{};
  in.read(&o, 1);
  switch (o) {
    case Outcome::value:
      return;
    case Outcome::remote_error: {
      std::string type = read_string(in);
      std::string message = read_string(in);
      throw RemoteError(std::move(type), message);
    }
    case Outcome::serialization_error:
      throw SerializationError(read_string(in));
  }
  throw SerializationError("multicore: corrupt result from worker: unknown outcome " +
                           std::to_string(static_cast<unsigned>(o)));
}

/// Reads one outcome; returns the value or throws what the worker reported. (For values that
/// may be large: read_value_tag(), then Stored::decode().)
template <class R>
R read_outcome(Reader& in, Format format) {
  read_value_tag(in);
  if constexpr (!std::is_void_v<R>) return decode<R>(in, format);
}

// The callable crosses as raw bytes when it is trivially copyable: a function pointer or a
// lambda's captures are meaningful in a fork of the same program. Anything else must be
// serializable like an argument.
template <class Fn>
void encode_callable(Writer& out, const Fn& fn, Format format) {
  if constexpr (std::is_trivially_copyable_v<Fn>) {
    if constexpr (!std::is_empty_v<Fn>) out.write(&fn, sizeof fn);
  } else {
    encode(out, fn, format);
  }
}

/// Decodes the callable into `fn`. A callable is often large (a lambda may capture an array):
/// it is made in place, like any value.
template <class Fn>
void decode_callable(Stored<Fn>& fn, Reader& in, Format format) {
  if constexpr (std::is_trivially_copyable_v<Fn>) {
    // Not std::bit_cast: g++ 12 rejects closure types there. A trivially copyable closure is
    // an implicit-lifetime type, so copying its bytes into suitable storage creates it.
    fn.construct([&](void* where) {
      if constexpr (!std::is_empty_v<Fn>) raw_value_at<Fn>(where, in.take(sizeof(Fn)).data());
    });
  } else {
    fn.decode(in, format);
  }
}

/// Decodes a request's last value into `value`, reading its elements from the request's tail
/// if it has one.
template <class T>
void decode_last(Stored<T>& value, Reader& in, const CallContext& context) {
  if constexpr (tail_value<T>) {
    if (context.tail != nullptr && context.tail->left() != 0) {
      RequestTail& tail = *context.tail;
      try {
        const std::size_t n = read_sequence_count<T>(in, tail.left());
        if (n * sizeof(typename T::value_type) != tail.left()) {
          throw SerializationError("multicore: corrupt data: the sequence does not fill the tail");
        }
        SequenceBuilder<T> builder(n);
        while (builder.left() != 0) {
          const std::span<const std::byte> piece = tail.next();
          builder.append(piece);
          tail.consume(piece.size());
        }
        value.make([&] { return builder.take(); });
        return;
      } catch (...) {
        throw decode_error<T>();
      }
    }
  }
  value.decode(in, context.format);
}

/// Decodes the arguments of a call into `args`, left to right (wire order).
template <class... Args>
void decode_arguments(std::tuple<Stored<Args>...>& args, Reader& in, const CallContext& context) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    // A comma fold evaluates the decodes left to right.
    (
        [&] {
          if constexpr (I + 1 == sizeof...(Args)) {
            decode_last(std::get<I>(args), in, context);
          } else {
            std::get<I>(args).decode(in, context.format);
          }
        }(),
        ...);
  }
  (std::index_sequence_for<Args...>{});
}

/// Runs `fn(args...)` and appends its outcome to `out` (or sends it, see CallContext::sender).
template <class Fn, class... Args>
void run_and_write(Writer& out, const CallContext& context, Fn& fn,
                   std::tuple<Stored<Args>...>& args) noexcept {
  // Called as rvalues: the worker's copies are its own, and this matches the result type
  // Pool::submit promises (std::invoke_result_t<F, Args...> with decayed types).
  using Result = std::invoke_result_t<Fn, Args...>;
  const auto call = [&] {
    return std::apply(
        [&](Stored<Args>&... arg) { return std::invoke(std::move(fn), std::move(*arg)...); }, args);
  };
  const std::size_t mark = out.size();
  Stored<std::conditional_t<std::is_void_v<Result>, char, Result>> result;
  try {
    if constexpr (std::is_void_v<Result>) {
      call();
    } else {
      result.make(call);  // the function's result is made right in `result`: no copy
    }
  } catch (...) {
    out.resize(mark);
    write_current_exception(out);
    return;
  }
  try {
    write_outcome(out, Outcome::value);
    if constexpr (tail_value<Result>) {
      const std::size_t tail = tail_bytes_of(*result, context.format);
      if (tail != 0 && context.sender != nullptr) {
        // encode() would write the same bytes: the count, then the elements (as the tail).
        const std::uint64_t count = result->size();
        out.write(&count, sizeof count);
        context.sender->send(out, {reinterpret_cast<const std::byte*>(result->data()), tail});
        return;
      }
    }
    if constexpr (!std::is_void_v<Result>) encode(out, *result, context.format);
  } catch (...) {
    write_serialization_failure(out, mark, "encoding the result in the worker");
  }
}

/// The entry for `Pool::submit(fn, args...)`: payload = callable, then each argument.
template <class Fn, class... Args>
struct Call {
  static void entry(Reader& in, Writer& out, const CallContext& context) noexcept {
    const std::size_t mark = out.size();
    Stored<Fn> fn;
    std::tuple<Stored<Args>...> args;
    try {
      decode_callable(fn, in, context.format);
      decode_arguments(args, in, context);
    } catch (...) {
      write_serialization_failure(out, mark, "decoding the arguments in the worker");
      return;
    }
    run_and_write(out, context, *fn, args);
  }
};

template <class Fn>
std::uint64_t entry_id() noexcept {
  return reinterpret_cast<std::uintptr_t>(&Fn::entry);
}

/// Starts a request message: room for the header, which `finish_request` fills in.
inline void begin_request(Writer& msg) { msg.resize(sizeof(RequestHeader)); }

/// `tail_bytes`: the payload ends with a tail of that many bytes (see wire.hpp).
inline void finish_request(Writer& msg, std::uint64_t entry, Format format, unsigned threads,
                           std::uint64_t tail_bytes = 0) {
  RequestHeader h;
  h.entry = entry;
  h.payload_bytes = msg.size() - sizeof(RequestHeader);
  h.tail_bytes = tail_bytes;
  h.format = static_cast<std::uint32_t>(format);
  h.threads = threads;
  std::memcpy(msg.data(), &h, sizeof h);
}

/// Bytes `value` will take on the wire when that is cheap to know (raw values and sequences of
/// them), else 0. Lets a request be sized once instead of grown by doubling, which for a large
/// vector would copy it several times over.
template <class T>
std::size_t size_hint(const T& value) noexcept {
  if constexpr (has_codec<T>) {
    return 0;
  } else if constexpr (raw_value<T>) {
    return sizeof(T);
  } else if constexpr (raw_sequence<T>) {
    return sizeof(std::uint64_t) + value.size() * sizeof(typename T::value_type);
  } else {
    return 0;
  }
}

/// Bytes the request for `fn(args...)` will take, when cheap to know (0 otherwise).
template <class Fn, class... Args>
std::size_t request_size_hint(Format format, const Args&... args) noexcept {
  if (format != Format::binary) return 0;
  return sizeof(RequestHeader) + sizeof(Fn) + (size_hint(args) + ... + 0);
}

/// Encodes `fn(args...)` as a complete request message (task id still 0).
template <class Fn, class... Args>
void encode_call(Writer& msg, Format format, const Fn& fn, const Args&... args) {
  msg.reserve(request_size_hint<Fn>(format, args...));
  begin_request(msg);
  encode_callable(msg, fn, format);
  (encode(msg, args, format), ...);
  std::size_t tail = 0;
  if constexpr (sizeof...(Args) != 0) {
    tail = tail_bytes_of(std::get<sizeof...(Args) - 1>(std::tie(args...)), format);
  }
  finish_request(msg, entry_id<Call<Fn, Args...>>(), format, 1, tail);
}

/// Runs a request message in this process, exactly as a worker would: the inline mode and the
/// load gate's fallback use it, so a task behaves the same wherever it runs.
inline void run_request(std::span<const std::byte> msg, Writer& out) noexcept {
  RequestHeader h;
  std::memcpy(&h, msg.data(), sizeof h);
  Reader payload(msg.subspan(sizeof h));
  const CallContext context{static_cast<Format>(h.format), h.threads};
  // NOLINTNEXTLINE(performance-no-int-to-ptr): the id is the entry's address (see RequestHeader)
  reinterpret_cast<Entry>(static_cast<std::uintptr_t>(h.entry))(payload, out, context);
}

}  // namespace multicore::detail
