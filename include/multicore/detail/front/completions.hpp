// SPDX-License-Identifier: MIT
// Completions: how an answer becomes a future's value, a call's result or a Task run's.
#pragma once

#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../core/job.hpp"
#include "../protocol/entries.hpp"
#include "../protocol/outcome.hpp"
#include "../serialize/serialize.hpp"
#include "checks.hpp"
#include "result_latch.hpp"

namespace multicore::detail {

/// Builds a result of type R from an answer's tail (see Completion::open_tail). Only raw
/// sequences can come as a tail; for other types open() says no.
template <class R>
class TailReceiver {
 public:
  bool open(std::span<const std::byte> /*head*/, std::uint64_t /*tail_bytes*/) noexcept {
    return false;
  }
};

template <class R>
requires tail_value<R>
class TailReceiver<R> {
 public:
  /// True when `head` is a value outcome and the element count of a sequence whose elements
  /// are exactly the `tail_bytes` to come (and there is memory to start on it).
  bool open(std::span<const std::byte> head, std::uint64_t tail_bytes) noexcept {
    builder_.reset();
    try {
      Reader in(head);
      Outcome outcome{};
      in.read(&outcome, 1);
      if (outcome != Outcome::value) return false;
      const std::size_t n = read_sequence_count<R>(in, tail_bytes);
      if (in.remaining() != 0 || n * sizeof(typename R::value_type) != tail_bytes) return false;
      builder_.emplace(n, max_unproven_reserve_bytes);
      return true;
    } catch (...) {  // corrupt, or no memory: the answer is assembled and decoded instead
      return false;
    }
  }

  void append(std::span<const std::byte> bytes) noexcept { builder_->append(bytes); }

  /// The value; throws SerializationError if memory ran out while it arrived.
  R take() {
    try {
      return builder_->take();
    } catch (...) {
      throw decode_error<R>();
    }
  }

 private:
  std::optional<SequenceBuilder<R>> builder_;
};

/// The part every completion of one call shares: reads the outcome, from the whole answer
/// (deliver) or from its head and its tail (open_tail), and resolves it, or hands the error to
/// `Derived::fail(error)`. A value of type V is made in place, in the Stored<V> that
/// `Derived::place(scratch)` names: its own destination, or `scratch` (a value that must then
/// move on, into a promise say); `Derived::resolve(value)` is called with it (`resolve()` for
/// void). resolve() may throw; its error then goes to fail(). The answer is in format F.
template <class Derived, class V, Format F>
class ValueCompletion : public Completion, private AnswerTail {
 public:
  void deliver(Reader& payload, std::uint64_t /*run_nanos*/) noexcept final {
    std::exception_ptr error = error_of([&] {
      read_value_tag(payload);
      if constexpr (std::is_void_v<V>) {
        expect_end(payload);
        derived().resolve();
      } else {
        resolve_with([&](Stored<V>& value) {
          value.template decode<F>(payload);
          expect_end(payload);
        });
      }
    });
    if (error) derived().fail(std::move(error));
  }

  bool reports_exception(std::span<const std::byte> payload) const noexcept final {
    return !payload.empty() && payload[0] == static_cast<std::byte>(Outcome::remote_error);
  }

  AnswerTail* open_tail(std::span<const std::byte> head, std::uint64_t tail_bytes) noexcept final {
    // Only binary answers have tails.
    return F == Format::binary && tail_.open(head, tail_bytes) ? this : nullptr;
  }

 private:
  Derived& derived() noexcept { return static_cast<Derived&>(*this); }

  /// Has `fill(value)` make the value where the derived completion wants it, then resolves.
  template <class Fill>
  void resolve_with(Fill&& fill) {
    Stored<V> scratch;
    Stored<V>& value = derived().place(scratch);
    std::forward<Fill>(fill)(value);
    try {
      derived().resolve(value);
    } catch (...) {  // moving the value into a promise, or converting it for a Task, threw
      throw decode_error<V>();
    }
  }

  void append(std::span<const std::byte> bytes) noexcept final {
    if constexpr (tail_value<V>) tail_.append(bytes);
  }

  void deliver_tail(std::uint64_t /*run_nanos*/) noexcept final {
    if constexpr (tail_value<V>) {  // open_tail() never succeeds for other types
      std::exception_ptr error = error_of([&] {
        resolve_with([&](Stored<V>& value) { value.make([&] { return tail_.take(); }); });
      });
      if (error) derived().fail(std::move(error));
    }
  }

  TailReceiver<V> tail_;
};

/// Resolves a std::promise<R> with the outcome of one call, answered in format F. A small value
/// (and void) is decoded into the completion and set in the promise by publish(), which the
/// scheduler may leave to its publisher thread (see Publisher); other values are set at once.
template <class R, Format F>
class PromiseCompletion final : public ValueCompletion<PromiseCompletion<R, F>, R, F> {
  static constexpr bool publishes_later = [] {
    if constexpr (std::is_void_v<R>) {
      return true;
    } else {
      return sizeof(R) <= 64 && std::is_nothrow_move_constructible_v<R>;
    }
  }();
  struct Nothing {};

 public:
  std::future<R> future() { return promise_.get_future(); }

  template <class V>
  Stored<V>& place(Stored<V>& scratch) noexcept {
    if constexpr (publishes_later) {
      return value_;
    } else {
      return scratch;  // a promise cannot make its value in place: moved in below
    }
  }
  void resolve() noexcept { unpublished_ = true; }
  template <class V>
  void resolve(Stored<V>& value) {
    if constexpr (publishes_later) {
      unpublished_ = true;  // decoded into value_ (see place)
    } else if constexpr (std::is_nothrow_move_constructible_v<V>) {
      promise_.set_value(std::move(*value));
    } else {
      // set_value moves the value inside std::call_once. Where a throw out of call_once leaves
      // its flag taken (TSan's pthread_once, GCC PR 66146), fail()'s set_exception would then
      // wait forever, in the collector. So the value is moved once here first, outside the
      // promise: a move that throws, throws here. (One move more, for such types only; a move
      // that throws only the second time is still unsafe on those platforms.)
      Stored<V> moved;
      moved.make([&] { return std::move(*value); });
      promise_.set_value(std::move(*moved));
    }
  }

  bool unpublished() const noexcept override { return unpublished_; }
  void publish() noexcept override {
    if constexpr (publishes_later) {
      unpublished_ = false;
      try {
        if constexpr (std::is_void_v<R>) {
          promise_.set_value();
        } else {
          promise_.set_value(std::move(*value_));
        }
      } catch (...) {
        // Only std::future_error for a promise already satisfied, which a job's single outcome
        // rules out; the value's move is noexcept.
      }
    }
  }

  void fail(std::exception_ptr error) noexcept override {
    try {
      promise_.set_exception(std::move(error));
    } catch (...) {
      // Already satisfied: the value won (resolve's set_value succeeded before a later throw).
    }
  }

 private:
  std::promise<R> promise_;
  // The value, decoded and waiting for publish().
  [[no_unique_address]] std::conditional_t<publishes_later && !std::is_void_v<R>, Stored<R>,
                                           Nothing>
      value_;
  bool unpublished_ = false;
};

/// Where Pool::call()'s answer lands: on the caller's stack (a large value in a Stored, on the
/// heap), filled in by whichever thread delivers it. The caller returns (destroying this) as
/// soon as `latch` is done: see ResultLatch.
template <class R>
struct CallResult {
  CallResult() noexcept { latch.expect(); }

  Stored<std::conditional_t<std::is_void_v<R>, char, R>> value;
  std::exception_ptr error;
  ResultLatch latch;

  /// The result, or the error thrown. Call once the latch is done.
  R take() {
    if (error) std::rethrow_exception(error);
    if constexpr (!std::is_void_v<R>) return std::move(*value);
  }
};

/// Resolves a CallResult with the outcome of one call, answered in format F.
template <class R, Format F>
class CallCompletion final : public ValueCompletion<CallCompletion<R, F>, R, F> {
 public:
  explicit CallCompletion(CallResult<R>* result) : result_(result) {}

  /// The value is decoded right into the caller's CallResult.
  template <class V>
  Stored<V>& place(Stored<V>& /*scratch*/) noexcept {
    return result_->value;
  }
  void resolve() { result_->latch.arrive(); }
  template <class V>
  void resolve(Stored<V>& /*value*/) {
    result_->latch.arrive();
  }

  void fail(std::exception_ptr error) noexcept override {
    result_->error = std::move(error);
    result_->latch.arrive();
  }

 private:
  CallResult<R>* result_;
};

/// Where a Task's runs land, one RunResult per run in run() order. Shared with the runs'
/// completions, so a Task destroyed before its runs finish leaves nothing dangling.
template <class R>
struct TaskBatch {
  using Value = std::conditional_t<std::is_void_v<R>, char, R>;
  struct RunResult {
    Stored<Value> value;  // set for void too: the run succeeded
    std::exception_ptr error;
  };
  std::deque<RunResult> runs;  // push_back keeps references to earlier runs valid
  ResultLatch latch;           // one count per run
};

/// Resolves one run of a Task: decodes the function's own result type `Result` (in format F)
/// and stores it converted to the Task's R.
template <class R, class Result, Format F>
class TaskRunCompletion final : public ValueCompletion<TaskRunCompletion<R, Result, F>, Result, F> {
 public:
  TaskRunCompletion(std::shared_ptr<TaskBatch<R>> batch, typename TaskBatch<R>::RunResult* result)
      : batch_(std::move(batch)), result_(result) {}

  /// A result of the Task's own type is decoded right into its RunResult; another is converted.
  template <class V>
  Stored<V>& place(Stored<V>& scratch) noexcept {
    if constexpr (std::is_same_v<V, R>) {
      return result_->value;
    } else {
      return scratch;
    }
  }
  void resolve() {
    result_->value.make([] { return char{}; });
    batch_->latch.arrive();
  }
  template <class V>
  void resolve(Stored<V>& value) {
    if constexpr (std::is_void_v<R>) {
      result_->value.make([] { return char{}; });
    } else if constexpr (!std::is_same_v<V, R>) {
      result_->value.make([&] { return static_cast<R>(std::move(*value)); });
    }
    batch_->latch.arrive();
  }

  void fail(std::exception_ptr error) noexcept override {
    result_->error = std::move(error);
    batch_->latch.arrive();
  }

 private:
  std::shared_ptr<TaskBatch<R>> batch_;
  typename TaskBatch<R>::RunResult* result_;
};

}  // namespace multicore::detail
