// SPDX-License-Identifier: MIT
// What a worker answers for one call (or one item of a map chunk): a value, or what went wrong.
#pragma once

#include <cxxabi.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../serialize/serialize.hpp"
#include "../util/demangle.hpp"
#include "../util/linkage.hpp"
#include "../util/process.hpp"

namespace multicore::detail {

/// First byte of every outcome a worker writes for one call (or one item of a map chunk).
enum class Outcome : std::uint8_t {
  value = 0,                ///< followed by the encoded result (nothing for void)
  remote_error = 1,         ///< followed by the thrown type's name and its message
  serialization_error = 2,  ///< followed by a message
};

MULTICORE_DECL void write_string(Writer& out, std::string_view s);

MULTICORE_DECL std::string read_string(Reader& in);

inline void write_outcome(Writer& out, Outcome o) { out.write(&o, 1); }

/// Records the exception being handled as a remote error: its type and, where it has one, its
/// message. Works for anything thrown, std::exception or not.
MULTICORE_DECL void write_current_exception(Writer& out) noexcept;

/// Records a serialization failure that happened while `doing` something in the worker.
MULTICORE_DECL void write_serialization_failure(Writer& out, std::size_t mark,
                                                const char* doing) noexcept;

/// Reads an outcome's tag: returns if a value follows, or throws what the worker reported.
MULTICORE_DECL void read_value_tag(Reader& in);

/// Reads one outcome; returns the value or throws what the worker reported. (For values that
/// may be large: read_value_tag(), then Stored::decode().)
template <class R, Format F = Format::binary>
R read_outcome(Reader& in) {
  read_value_tag(in);
  if constexpr (!std::is_void_v<R>) return decode<R, F>(in);
}

/// Checks the trailing bytes of an answer: a well-formed one has none.
MULTICORE_DECL void expect_end(const Reader& in);

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL void write_string(Writer& out, std::string_view s) {
  const auto n = static_cast<std::uint32_t>(s.size());
  out.write(&n, sizeof n);
  out.write(s.data(), s.size());
}

MULTICORE_DECL std::string read_string(Reader& in) {
  std::uint32_t n = 0;
  in.read(&n, sizeof n);
  const auto bytes = in.take(n);
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

/// Called in a handler of what a task threw. A task that ends its thread (pthread_exit, or a
/// cancellation) unwinds it with a forced unwind, which no handler may swallow: glibc aborts
/// the process if one does. In a worker it ends the worker, as a process ends when its last
/// thread does (and never a team thread alone: its chunk would wait for it for ever). In the
/// application (a Task run inline) it cannot pass the entries' noexcept: the process ends, as
/// it did before this was caught. Not checked for null references: that unwind carries no C++
/// object, so the handler's reference is null by design (UBSan would report it).
__attribute__((no_sanitize("null"))) inline void leave_if_the_thread_ends() noexcept {
  try {
    throw;
  } catch (abi::__forced_unwind&) {
    if (in_worker_process()) leave_worker(0);
    std::terminate();
  } catch (...) {
  }
}

MULTICORE_DECL void write_current_exception(Writer& out) noexcept {
  leave_if_the_thread_ends();
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

MULTICORE_DECL void write_serialization_failure(Writer& out, std::size_t mark,
                                                const char* doing) noexcept {
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

MULTICORE_DECL void read_value_tag(Reader& in) {
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

MULTICORE_DECL void expect_end(const Reader& in) {
  if (in.remaining() != 0) {
    throw SerializationError("multicore: corrupt result from worker: " +
                             std::to_string(in.remaining()) + " unexpected trailing bytes");
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
