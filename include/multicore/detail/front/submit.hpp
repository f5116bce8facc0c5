// SPDX-License-Identifier: MIT
// The one path from a call to a job, shared by Pool::submit, Pool::call and Task::run: the
// compile-time checks, then a job holding the encoded request.
#pragma once

#include <cstddef>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>

#include "../../errors.hpp"
#include "../../options.hpp"
#include "../../stop.hpp"
#include "../core/job.hpp"
#include "../core/pool_core.hpp"
#include "../protocol/request.hpp"
#include "checks.hpp"

namespace multicore::detail {

/// The result type of `f(args...)` as a worker calls it: on its own copies of the arguments
/// (their wire types), as rvalues.
template <class F, class... Args>
using call_result_t = result_of_t<std::decay_t<F>, wire_t<Args>...>;

/// Everything about `f(args...)` that can be checked at compile time, for any kind of call.
template <class F, class... Args>
constexpr void check_submission() {
  check_call<std::decay_t<F>, wire_t<Args>...>();
  static_assert(std::is_same_v<call_result_t<F, Args...>, result_of_t<F, Args...>>,
                "multicore: the function's result type depends on whether its arguments are "
                "lvalues or rvalues; the worker calls it with rvalues");
}

/// A job whose request runs `fn(args...)` (wire types already) in format Fmt: one of `core`'s
/// recycled jobs, or a new one when there is no core (a Task that runs inline). The request's
/// size is hinted once, before anything is written. Throws SerializationError when a value
/// cannot be encoded.
template <Format Fmt, class Fn, class... Ws>
std::unique_ptr<Job> encoded_job(PoolCore* core, const Fn& fn, const Ws&... args) {
  const std::size_t hint = request_size_hint<Fmt, Fn>(args...);
  std::unique_ptr<Job> job = core != nullptr ? core->new_job(hint) : std::make_unique<Job>();
  try {
    job->request.reserve(hint);
    const CollectKeepAlive collect(job->keep_alive);
    encode_call<Fmt>(job->request, fn, args...);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // std::bad_alloc, or a length_error from the Writer
    throw SerializationError(std::string("multicore: could not encode the task: ") + message_of(e));
  }
  return job;
}

/// The first of `args` that is a StopToken (there is one).
template <class A, class... Rest>
StopToken first_token(const A& a, const Rest&... rest) {
  if constexpr (std::is_same_v<wire_t<A>, StopToken>) {
    return a;
  } else {
    return first_token(rest...);
  }
}

/// encoded_job() for the caller's own F and Args (given explicitly, as deduced by the caller's
/// forwarding references), so that a string literal is still seen as one and sent as a
/// std::string.
template <Format Fmt, class F, class... Args>
std::unique_ptr<Job> request_job(PoolCore* core, const F& f, const Args&... args) {
  std::unique_ptr<Job> job = encoded_job<Fmt>(core, static_cast<const std::decay_t<F>&>(f),
                                              static_cast<const wire_t<Args>&>(args)...);
  // The first StopToken argument cancels the job (a token captured by `f` cannot be seen).
  if constexpr ((std::is_same_v<wire_t<Args>, StopToken> || ...)) job->stop = first_token(args...);
  return job;
}

}  // namespace multicore::detail
