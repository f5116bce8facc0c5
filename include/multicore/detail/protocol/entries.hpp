// SPDX-License-Identifier: MIT
// Turning a call into a request message, running it in the worker, and reading its outcome.
#pragma once

#include <cxxabi.h>

#include <atomic>
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
#include "../util/code_ref.hpp"
#include "../util/demangle.hpp"
#include "../util/linkage.hpp"
#include "outcome.hpp"
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
  unsigned threads = 1;
  RequestTail* tail = nullptr;     ///< the request's tail, if it has one and it is unread
  AnswerSender* sender = nullptr;  ///< set in a worker, where an answer may have a tail
  ThreadTeam* team = nullptr;      ///< the worker's own threads; null inline (see MapChunk)
};

/// The code a request names. Decodes its payload, runs the user's function and writes the
/// outcome to `out`, or sends it with a tail through `context.sender`. Never throws: every
/// failure becomes an outcome the parent can read.
using Entry = void (*)(Reader& payload, Writer& out, const CallContext& context) noexcept;

/// A pointer to a member function as the Itanium C++ ABI lays it out (g++ and clang on Linux):
/// `ptr` is the function's address, or for a virtual function 1 + its offset in the vtable;
/// `adjustment` is added to the object's address to get `this`.
struct MemberFunctionBits {
  std::uintptr_t ptr;
  std::ptrdiff_t adjustment;
};

/// A member function pointer's name: its function's name (see code_name) unless it is virtual
/// (a vtable offset means the same in every image), then a tag and the adjustment.
struct MemberFunctionName {
  std::uint64_t function;
  std::int64_t adjustment;
  std::uint64_t is_virtual;  // 0 or 1 (a whole word: the struct has no padding to send)
};

template <class Fn>
MemberFunctionName name_member_function(const Fn& fn) {
  static_assert(sizeof(Fn) == sizeof(MemberFunctionBits), "multicore: not the Itanium C++ ABI");
  MemberFunctionBits bits;
  std::memcpy(&bits, &fn, sizeof bits);
  const bool is_virtual = (bits.ptr & 1u) != 0;
  return {is_virtual ? bits.ptr : code_name(reinterpret_cast<const void*>(bits.ptr)),
          bits.adjustment, is_virtual ? 1u : 0u};
}

template <class Fn>
Fn member_function_named(const MemberFunctionName& name) {
  MemberFunctionBits bits{name.function, static_cast<std::ptrdiff_t>(name.adjustment)};
  if (name.is_virtual == 0) {
    void* address = code_address(name.function);
    if (address == nullptr) {
      throw SerializationError(
          "multicore: the member function to run is in a module this process does not have");
    }
    bits.ptr = reinterpret_cast<std::uintptr_t>(address);
  }
  Fn fn;
  std::memcpy(static_cast<void*>(&fn), &bits, sizeof bits);
  return fn;
}

// The callable crosses as raw bytes when it is trivially copyable: a function pointer or a
// lambda's captures are meaningful in a fork of the same program. Anything else must be
// serializable like an argument, in format F.
template <Format F, class Fn>
void encode_callable(Writer& out, const Fn& fn) {
  if constexpr (std::is_pointer_v<Fn>) {  // a function: by name, valid in every image
    const std::uint64_t name = code_name(reinterpret_cast<const void*>(fn));
    out.write(&name, sizeof name);
  } else if constexpr (std::is_member_function_pointer_v<Fn>) {  // by name too
    const MemberFunctionName name = name_member_function(fn);
    out.write(&name, sizeof name);
  } else if constexpr (std::is_trivially_copyable_v<Fn>) {
    if constexpr (!std::is_empty_v<Fn>) out.write(&fn, sizeof fn);
  } else {
    encode<F>(out, fn);
  }
}

/// Decodes the callable into `fn`. A callable is often large (a lambda may capture an array):
/// it is made in place, like any value.
template <Format F, class Fn>
void decode_callable(Stored<Fn>& fn, Reader& in) {
  if constexpr (std::is_pointer_v<Fn>) {  // a function, by name (see encode_callable)
    std::uint64_t name = 0;
    in.read(&name, sizeof name);
    void* address = code_address(name);
    if (address == nullptr) {
      throw SerializationError(
          "multicore: the function to run is in a module this process does not have");
    }
    fn.make([&] { return reinterpret_cast<Fn>(address); });
  } else if constexpr (std::is_member_function_pointer_v<Fn>) {
    MemberFunctionName name;
    in.read(&name, sizeof name);
    fn.make([&] { return member_function_named<Fn>(name); });
  } else if constexpr (std::is_trivially_copyable_v<Fn>) {
    // Not std::bit_cast: g++ 12 rejects closure types there. A trivially copyable closure is
    // an implicit-lifetime type, so copying its bytes into suitable storage creates it.
    fn.construct([&](void* where) {
      if constexpr (!std::is_empty_v<Fn>) raw_value_at<Fn>(where, in.take(sizeof(Fn)).data());
    });
  } else {
    fn.template decode<F>(in);
  }
}

/// Decodes a request's last value into `value`, reading its elements from the request's tail
/// if it has one (only binary requests have tails).
template <Format F, class T>
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
  value.template decode<F>(in);
}

/// Decodes the arguments of a call into `args`, left to right (wire order).
template <Format F, class... Args>
void decode_arguments(std::tuple<Stored<Args>...>& args, Reader& in, const CallContext& context) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    // A comma fold evaluates the decodes left to right.
    (
        [&] {
          if constexpr (I + 1 == sizeof...(Args)) {
            decode_last<F>(std::get<I>(args), in, context);
          } else {
            std::get<I>(args).template decode<F>(in);
          }
        }(),
        ...);
  }
  (std::index_sequence_for<Args...>{});
}

/// Checks that decoding a request's values read all of it. Values are not framed one by one:
/// a Codec whose decode reads less than its encode wrote would leave the next value to be
/// decoded from its leftover bytes, and the task would silently run with wrong arguments.
MULTICORE_DECL void expect_request_end(const Reader& in);

/// Runs `fn(args...)` and appends its outcome, in format F, to `out` (or sends it, see
/// CallContext::sender).
template <Format F, class Fn, class... Args>
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
      const std::size_t tail = tail_bytes_of(*result, F);
      if (tail != 0 && context.sender != nullptr) {
        // encode() would write the same bytes: the count, then the elements (as the tail).
        const std::uint64_t count = result->size();
        out.write(&count, sizeof count);
        context.sender->send(out, {reinterpret_cast<const std::byte*>(result->data()), tail});
        return;
      }
    }
    if constexpr (!std::is_void_v<Result>) encode<F>(out, *result);
  } catch (...) {
    write_serialization_failure(out, mark, "encoding the result in the worker");
  }
}

/// The entry for `Pool::submit(fn, args...)`: payload = callable, then each argument, all in
/// format F, as is the answer.
template <Format F, class Fn, class... Args>
struct Call {
  static void entry(Reader& in, Writer& out, const CallContext& context) noexcept {
    const std::size_t mark = out.size();
    Stored<Fn> fn;
    std::tuple<Stored<Args>...> args;
    try {
      decode_callable<F>(fn, in);
      decode_arguments<F>(args, in, context);
      expect_request_end(in);
    } catch (...) {
      write_serialization_failure(out, mark, "decoding the arguments in the worker");
      return;
    }
    run_and_write<F>(out, context, *fn, args);
  }
};

/// The entry a request names in this process, or nullptr if its module is not loaded here.
inline Entry entry_named(std::uint64_t name) noexcept {
  return reinterpret_cast<Entry>(code_address(name));
}

/// The name of an entry (see util/code_ref.hpp), found once per entry type. Not a guarded
/// static: a guard another thread holds at the moment of a fork stays taken in the child, and
/// a worker making a pool of its own would wait for it for ever. Finding it twice is harmless.
template <class Fn>
std::uint64_t entry_id() {
  static std::atomic<std::uint64_t> name{0};
  std::uint64_t found = name.load(std::memory_order_relaxed);
  if (found == 0) {
    found = code_name(reinterpret_cast<const void*>(&Fn::entry));
    name.store(found, std::memory_order_relaxed);
  }
  return found;
}

/// Runs a request message in this process, exactly as a worker would: the inline mode and the
/// load gate's fallback use it, so a task behaves the same wherever it runs.
inline void run_request(std::span<const std::byte> msg, Writer& out) noexcept {
  RequestHeader h;
  std::memcpy(&h, msg.data(), sizeof h);
  Reader payload(msg.subspan(sizeof h));
  const CallContext context{h.threads};
  entry_named(h.entry)(payload, out, context);  // named here, by this very process
}

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL void expect_request_end(const Reader& in) {
  if (in.remaining() != 0) {
    throw SerializationError("multicore: " + std::to_string(in.remaining()) +
                             " bytes of the request were left after decoding it (does a "
                             "multicore::Codec<T>::decode read less than its encode writes?)");
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
