// SPDX-License-Identifier: MIT
// Completions that resolve a std::promise, and the compile-time checks on a submitted call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../core/scheduler.hpp"
#include "../protocol/entries.hpp"
#include "../protocol/outcome.hpp"
#include "../serialize/serialize.hpp"
#include "checks.hpp"

namespace multicore::detail {

/// Builds a result of type R from an answer's tail (see Completion::open_tail). Only raw
/// sequences can come as a tail; for other types open() says no.
template <class R>
class TailReceiver {
 public:
  bool open(std::span<const std::byte> /*head*/, std::uint64_t /*tail_bytes*/,
            Format /*format*/) noexcept {
    return false;
  }
};

template <class R>
requires tail_value<R>
class TailReceiver<R> {
 public:
  /// True when `head` is a value outcome and the element count of a sequence whose elements
  /// are exactly the `tail_bytes` to come (and there is memory to start on it).
  bool open(std::span<const std::byte> head, std::uint64_t tail_bytes, Format format) noexcept {
    builder_.reset();
    if (format != Format::binary) return false;  // only binary answers have tails
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
/// void). resolve() may throw; its error then goes to fail().
template <class Derived, class V>
class ValueCompletion : public Completion, private AnswerTail {
 public:
  explicit ValueCompletion(Format format) noexcept : format_(format) {}

  void deliver(Reader& payload, std::uint64_t /*run_nanos*/) noexcept final {
    std::exception_ptr error = error_of([&] {
      read_value_tag(payload);
      if constexpr (std::is_void_v<V>) {
        expect_end(payload);
        derived().resolve();
      } else {
        resolve_with([&](Stored<V>& value) {
          value.decode(payload, format_);
          expect_end(payload);
        });
      }
    });
    if (error) derived().fail(std::move(error));
  }

  AnswerTail* open_tail(std::span<const std::byte> head, std::uint64_t tail_bytes) noexcept final {
    return tail_.open(head, tail_bytes, format_) ? this : nullptr;
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

  Format format_;
  TailReceiver<V> tail_;
};

/// Resolves a std::promise<R> with the outcome of one call.
template <class R>
class PromiseCompletion final : public ValueCompletion<PromiseCompletion<R>, R> {
 public:
  explicit PromiseCompletion(Format format) : ValueCompletion<PromiseCompletion<R>, R>(format) {}

  std::future<R> future() { return promise_.get_future(); }

  // A promise cannot make its value in place: it is decoded into `scratch`, then moved in.
  template <class V>
  Stored<V>& place(Stored<V>& scratch) noexcept {
    return scratch;
  }
  void resolve() { promise_.set_value(); }
  template <class V>
  void resolve(Stored<V>& value) {
    if constexpr (std::is_nothrow_move_constructible_v<V>) {
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

  void fail(std::exception_ptr error) noexcept override {
    try {
      promise_.set_exception(std::move(error));
    } catch (...) {
      // Already satisfied: the value won (resolve's set_value succeeded before a later throw).
    }
  }

 private:
  std::promise<R> promise_;
};

/// Where Pool::call()'s answer lands: on the caller's stack (a large value in a Stored, on the
/// heap), filled in by whichever thread delivers it. The caller returns (destroying this) as soon
/// as it sees `done`, so the delivering thread must not touch the object after publishing `done`. A
/// caller that went to `sleeping` sees `done` only under `mutex`, which the deliverer holds from
/// publishing to waking it: the sleeper cannot leave before the deliverer has let go.
template <class R>
struct CallSlot {
  enum State : int { pending, sleeping, done };
  std::atomic<int> state{pending};
  Stored<std::conditional_t<std::is_void_v<R>, char, R>> value;
  std::exception_ptr error;
  std::mutex mutex;
  std::condition_variable woken;

  bool is_done() const noexcept { return state.load(std::memory_order_acquire) == done; }

  /// The result, or the error thrown. Call once is_done().
  R take() {
    if (error) std::rethrow_exception(error);
    if constexpr (!std::is_void_v<R>) return std::move(*value);
  }

  /// Blocks until done.
  void sleep() {
    std::unique_lock lock(mutex);
    int expected = pending;
    if (!state.compare_exchange_strong(expected, sleeping, std::memory_order_acq_rel)) return;
    woken.wait(lock, [&] { return is_done(); });
  }

  /// Publishes the outcome (value or error already stored).
  void finish() noexcept {
    int expected = pending;
    if (state.compare_exchange_strong(expected, done, std::memory_order_acq_rel)) return;
    // The caller is asleep or on its way (it holds the mutex from announcing it until it
    // waits: no lost wake-up). Publishing `done` outside the mutex would let it see `done` on
    // its way in, or on a spurious wake-up, and destroy the mutex before we lock it.
    std::lock_guard lock(mutex);
    state.store(done, std::memory_order_release);
    woken.notify_one();
  }
};

/// Resolves a CallSlot with the outcome of one call.
template <class R>
class CallCompletion final : public ValueCompletion<CallCompletion<R>, R> {
 public:
  CallCompletion(CallSlot<R>* slot, Format format)
      : ValueCompletion<CallCompletion<R>, R>(format), slot_(slot) {}

  /// The value is decoded right into the caller's slot.
  template <class V>
  Stored<V>& place(Stored<V>& /*scratch*/) noexcept {
    return slot_->value;
  }
  void resolve() { slot_->finish(); }
  template <class V>
  void resolve(Stored<V>& /*value*/) {
    slot_->finish();
  }

  void fail(std::exception_ptr error) noexcept override {
    slot_->error = std::move(error);
    slot_->finish();
  }

 private:
  CallSlot<R>* slot_;
};

/// Where a Task's runs land, one slot per run in run() order. Shared with the runs'
/// completions, so a Task destroyed before its runs finish leaves nothing dangling.
template <class R>
struct TaskBatch {
  using Value = std::conditional_t<std::is_void_v<R>, char, R>;
  struct Slot {
    Stored<Value> value;  // set for void too: the run succeeded
    std::exception_ptr error;
  };
  std::deque<Slot> slots;  // push_back keeps references to earlier slots valid
  std::atomic<std::size_t> remaining{0};
  std::mutex mutex;
  std::condition_variable finished;

  bool done() const noexcept { return remaining.load(std::memory_order_acquire) == 0; }

  void sleep() {
    std::unique_lock lock(mutex);
    finished.wait(lock, [&] { return done(); });
  }

  void one_done() noexcept {
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(mutex);  // pairs with sleep()'s predicate check
      finished.notify_all();
    }
  }
};

/// Resolves one run of a Task: decodes the function's own result type `Result` and stores it
/// converted to the Task's R.
template <class R, class Result>
class TaskRunCompletion final : public ValueCompletion<TaskRunCompletion<R, Result>, Result> {
 public:
  TaskRunCompletion(std::shared_ptr<TaskBatch<R>> batch, typename TaskBatch<R>::Slot* slot,
                    Format format)
      : ValueCompletion<TaskRunCompletion<R, Result>, Result>(format),
        batch_(std::move(batch)),
        slot_(slot) {}

  /// A result of the Task's own type is decoded right into its slot; another is converted.
  template <class V>
  Stored<V>& place(Stored<V>& scratch) noexcept {
    if constexpr (std::is_same_v<V, R>) {
      return slot_->value;
    } else {
      return scratch;
    }
  }
  void resolve() {
    slot_->value.make([] { return char{}; });
    batch_->one_done();
  }
  template <class V>
  void resolve(Stored<V>& value) {
    if constexpr (std::is_void_v<R>) {
      slot_->value.make([] { return char{}; });
    } else if constexpr (!std::is_same_v<V, R>) {
      slot_->value.make([&] { return static_cast<R>(std::move(*value)); });
    }
    batch_->one_done();
  }

  void fail(std::exception_ptr error) noexcept override {
    slot_->error = std::move(error);
    batch_->one_done();
  }

 private:
  std::shared_ptr<TaskBatch<R>> batch_;
  typename TaskBatch<R>::Slot* slot_;
};

}  // namespace multicore::detail
