// SPDX-License-Identifier: MIT
// FunctionRef: a borrowed callable, so that code behind a seam need not be a template.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace multicore::detail {

template <class Signature>
class FunctionRef;

/// Refers to a callable for the duration of a call, without owning or copying it (the shape
/// of C++26's std::function_ref). PoolCore takes its waits' conditions this way: a template
/// parameter there would compile the scheduler again in every file that waits for a result.
template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F, std::enable_if_t<!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
                                          std::is_invocable_r_v<R, F&, Args...>,
                                      int> = 0>
  FunctionRef(F&& f) noexcept  // NOLINT(google-explicit-constructor): a parameter type
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(object))(std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace multicore::detail
