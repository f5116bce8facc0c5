// SPDX-License-Identifier: MIT
// What can be checked about a call before it runs in another process: compile-time checks.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

#include "../serialize/serialize.hpp"

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

}  // namespace multicore::detail
