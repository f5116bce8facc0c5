// SPDX-License-Identifier: MIT
// Completions that resolve a std::promise, and the compile-time checks on a submitted call.
#pragma once

#include <exception>
#include <future>
#include <type_traits>
#include <utility>

#include "../codec.hpp"
#include "../errors.hpp"
#include "../options.hpp"
#include "call.hpp"
#include "scheduler.hpp"
#include "serialize.hpp"

namespace multicore::detail {

/// How an argument travels: as its decayed type, except that a string literal becomes a
/// std::string (its decayed `const char*` would be a pointer into the caller's memory).
template <class T>
struct wire {
  using type = std::decay_t<T>;
};
template <std::size_t N>
struct wire<const char (&)[N]> {
  using type = std::string;
};
template <std::size_t N>
struct wire<char (&)[N]> {
  using type = std::string;
};
template <class T>
using wire_t = typename wire<T>::type;

/// std::invoke_result_t when the call is valid; otherwise a placeholder, so that the
/// static_asserts in check_call (and not a substitution failure) explain what is wrong.
template <class F, class... Args>
struct result_of {
  using type = void;
};
template <class F, class... Args>
requires std::is_invocable_v<F, Args...>
struct result_of<F, Args...> {
  using type = std::invoke_result_t<F, Args...>;
};
template <class F, class... Args>
using result_of_t = typename result_of<F, Args...>::type;

/// Everything about `f(args...)` that can be checked before running it in another process.
/// `Ws` are the wire types of the arguments, which the worker passes as rvalues; `Callee` is
/// how the worker holds the callable (an rvalue for submit, an lvalue for map's many items).
template <class Fn, class Callee, class... Ws>
constexpr void check_invocation() {
  check_callable<Fn>();
  [&]<std::size_t... I>(std::index_sequence<I...>) { (check_argument<I + 1, Ws>(), ...); }
  (std::index_sequence_for<Ws...>{});
  if constexpr (std::is_invocable_v<Callee, Ws...>) {
    check_result<std::invoke_result_t<Callee, Ws...>>();
  } else {
    static_assert(!std::is_invocable_v<Fn&, Ws&...>,
                  "multicore: the function takes an argument by non-const reference, but it runs "
                  "on the worker's own copy, so your variable would never change. Take the "
                  "argument by value or by const&, and return results instead.");
    static_assert(std::is_invocable_v<Callee, Ws...>,
                  "multicore: the function cannot be called with these arguments (the worker "
                  "passes it its own copies, as rvalues).");
  }
}

template <class Fn, class... Ws>
constexpr void check_call() {
  check_invocation<Fn, Fn, Ws...>();
}

/// Checks the trailing bytes of an answer: a well-formed one has none.
inline void expect_end(const Reader& in) {
  if (in.remaining() != 0) {
    throw SerializationError("multicore: corrupt result from worker: " +
                             std::to_string(in.remaining()) + " unexpected trailing bytes");
  }
}

/// Resolves a std::promise<R> with the outcome of one call.
template <class R>
class PromiseCompletion final : public Completion {
 public:
  explicit PromiseCompletion(Format format) : format_(format) {}

  std::future<R> future() { return promise_.get_future(); }

  void deliver(Reader& payload, std::uint64_t /*run_nanos*/) noexcept override {
    try {
      if constexpr (std::is_void_v<R>) {
        read_outcome<void>(payload, format_);
        expect_end(payload);
        promise_.set_value();
      } else {
        R value = read_outcome<R>(payload, format_);
        expect_end(payload);
        promise_.set_value(std::move(value));
      }
    } catch (...) {
      fail(std::current_exception());
    }
  }

  void fail(std::exception_ptr error) noexcept override {
    try {
      promise_.set_exception(std::move(error));
    } catch (...) {
      // Already satisfied: the value won (deliver's set_value succeeded before a later throw).
    }
  }

 private:
  std::promise<R> promise_;
  Format format_;
};

}  // namespace multicore::detail
