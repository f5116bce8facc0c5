// SPDX-License-Identifier: MIT
// Values built to break whoever handles them (constructors and serializers that throw, exit or
// crash, destructors that throw, enormous or odd values): the caller gets a typed error and the
// pool heals.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <exception>
#include <multicore/multicore.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/app.hpp"
#include "support/failure.hpp"
#include "support/in_child.hpp"
#include "support/leak_check.hpp"

namespace hostile_value {

/// What a Saboteur's save() does in the worker.
enum class Sabotage { none, throw_error, exit, segfault };

/// A cereal type whose save() misbehaves when it is asked to.
struct Saboteur {
  Sabotage sabotage = Sabotage::none;
  std::string text;
  template <class Archive>
  void save(Archive& archive) const {
    switch (sabotage) {
      case Sabotage::throw_error:
        throw std::runtime_error("save refused");
      case Sabotage::exit:
        _exit(9);
      case Sabotage::segfault:
        multicore_test::default_segv_action();
        std::raise(SIGSEGV);
        break;
      case Sabotage::none:
        break;
    }
    archive(static_cast<int>(sabotage), text);
  }
  template <class Archive>
  void load(Archive& archive) {
    int s = 0;
    archive(s, text);
    sabotage = static_cast<Sabotage>(s);
  }
};

/// Its move constructor throws (and so does its copy constructor): decoding in place must not
/// need either, and a failure to move the result into a promise is a SerializationError.
struct Immovable {
  std::string text;
  Immovable() = default;
  Immovable(const Immovable&) { throw std::runtime_error("copy refused"); }
  Immovable(Immovable&&) { throw std::runtime_error("move refused"); }
  Immovable& operator=(const Immovable&) = default;
  Immovable& operator=(Immovable&&) = default;
  ~Immovable() = default;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(text);
  }
};

/// Its destructor throws in a worker (only there: the test's own copies must die quietly).
/// Destructors are noexcept, so the throw calls std::terminate.
inline pid_t test_process = getpid();
[[noreturn]] inline void throw_from_destructor() { throw std::runtime_error("destructor"); }
struct ThrowsWhenDestroyedInAWorker {
  int value = 0;
  ThrowsWhenDestroyedInAWorker() = default;
  ThrowsWhenDestroyedInAWorker(const ThrowsWhenDestroyedInAWorker&) = default;
  ThrowsWhenDestroyedInAWorker& operator=(const ThrowsWhenDestroyedInAWorker&) = default;
  ~ThrowsWhenDestroyedInAWorker() {
    if (getpid() != test_process) throw_from_destructor();
  }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(value);
  }
};

}  // namespace hostile_value

namespace {

using hostile_value::Immovable;
using hostile_value::Sabotage;
using hostile_value::Saboteur;
using hostile_value::ThrowsWhenDestroyedInAWorker;
using multicore::Pool;
using multicore::PoolOptions;
using multicore::RemoteError;
using multicore::SerializationError;
using multicore::WorkerLost;
using multicore_test::error_of;

pid_t own_pid() { return getpid(); }

Saboteur sabotaged(Sabotage s) { return {s, "result"}; }

TEST(HostileValue, ResultWhoseSaveThrowsIsASerializationErrorAndKeepsTheWorker) {
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  auto result = pool.submit(sabotaged, Sabotage::throw_error);
  const auto error = error_of<SerializationError>(result);
  ASSERT_TRUE(error);
  EXPECT_NE(std::string(error->what()).find("save refused"), std::string::npos) << error->what();
  EXPECT_EQ(pool.submit(own_pid).get(), before);
}

TEST(HostileValue, ResultWhoseSaveExitsOrCrashesCostsOnlyItsWorker) {
  multicore_test::no_core_dump();
  Pool pool(PoolOptions{.workers = 1});
  auto exited = pool.submit(sabotaged, Sabotage::exit);
  const auto exit_error = error_of<WorkerLost>(exited);
  ASSERT_TRUE(exit_error);
  EXPECT_EQ(exit_error->exit_code(), 9);
  auto crashed = pool.submit(sabotaged, Sabotage::segfault);
  const auto crash_error = error_of<WorkerLost>(crashed);
  ASSERT_TRUE(crash_error);
  EXPECT_EQ(crash_error->signal(), SIGSEGV);
  EXPECT_EQ(pool.submit(sabotaged, Sabotage::none).get().text, "result");
}

Immovable make_immovable(const Immovable& in) {
  Immovable out;  // built in place (NRVO): never copied nor moved
  out.text = in.text + "!";
  return out;
}

// Decoding makes the argument and the result in place, so the worker never needs to copy or
// move them.
TEST(HostileValue, TypeThatCannotBeCopiedOrMovedIsDecodedInPlace) {
  Pool pool(PoolOptions{.workers = 1});
  Immovable in;
  in.text = "in";
  EXPECT_EQ(pool.call([](const Immovable& x) { return x.text.size(); }, in), 2u);
}

// std::future needs to move the result in: that failure is the value's, reported as a
// SerializationError. Regression test: the move threw inside std::promise::set_value, that is
// inside std::call_once, and where call_once is not exception-safe (TSan's pthread_once, GCC
// PR 66146) the set_exception that followed waited forever, in the collector: this future and
// every later one hung. In a child, so that a hang is a failure.
TEST(HostileValue, ResultThatCannotBeMovedIntoItsFutureIsASerializationError) {
  const auto end = multicore_test::in_child(
      [](int report) {
        Pool pool(PoolOptions{.workers = 1});
        Immovable in;
        in.text = "in";
        auto future = pool.submit(make_immovable, in);
        const auto error = error_of<SerializationError>(future);
        multicore_test::say(report, error ? error->what() : "no SerializationError");
        multicore_test::say(report,
                            "then: " + std::to_string(pool.call([](int x) { return x + 1; }, 1)));
        return 0;
      },
      std::chrono::seconds(30));
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
  EXPECT_NE(end.report.find("move refused"), std::string::npos) << end.report;
  EXPECT_NE(end.report.find("then: 2\n"), std::string::npos) << end.report;
}

std::string enormous(std::size_t bytes) { return std::string(bytes, 'e'); }

TEST(HostileValue, EnormousStringResult) {
  Pool pool(PoolOptions{.workers = 1});
  constexpr std::size_t bytes = std::size_t{200} << 20;
  const std::string result = pool.submit(enormous, bytes).get();
  ASSERT_EQ(result.size(), bytes);
  EXPECT_EQ(result.find_first_not_of('e'), std::string::npos);
  EXPECT_EQ(pool.call(enormous, std::size_t{3}), "eee");
}

TEST(HostileValue, VectorOfBool) {
  Pool pool(PoolOptions{.workers = 1});
  std::vector<bool> bits(1001);
  for (std::size_t i = 0; i < bits.size(); i += 3) bits[i] = true;
  const auto flipped = pool.call(
      [](std::vector<bool> v) {
        v.flip();
        return v;
      },
      bits);
  ASSERT_EQ(flipped.size(), bits.size());
  for (std::size_t i = 0; i < bits.size(); ++i) EXPECT_NE(flipped[i], bits[i]) << i;
}

int throw_gigantic_message() { throw std::runtime_error(std::string(std::size_t{100} << 20, 'w')); }

TEST(HostileValue, ExceptionWithAGiganticMessage) {
  Pool pool(PoolOptions{.workers = 1});
  const pid_t before = pool.submit(own_pid).get();
  auto thrown = pool.submit(throw_gigantic_message);
  const auto error = error_of<RemoteError>(thrown);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->message().size(), std::size_t{100} << 20);
  EXPECT_EQ(pool.submit(own_pid).get(), before);
}

int throw_nested() {
  try {
    throw std::out_of_range("inner");
  } catch (...) {
    std::throw_with_nested(std::runtime_error("outer"));
  }
}

int rethrow_stored() {
  std::exception_ptr stored;
  try {
    throw std::invalid_argument("stored");
  } catch (...) {
    stored = std::current_exception();
  }
  std::rethrow_exception(stored);
}

// A nested exception reaches the caller as its outer exception (type and message); what it
// nests stays in the worker. A rethrown exception_ptr is the exception it holds.
TEST(HostileValue, NestedAndRethrownExceptions) {
  Pool pool(PoolOptions{.workers = 1});
  auto nested = pool.submit(throw_nested);
  const auto outer = error_of<RemoteError>(nested);
  ASSERT_TRUE(outer);
  EXPECT_EQ(outer->message(), "outer");
  EXPECT_NE(outer->type_name().find("std::runtime_error"), std::string::npos) << outer->type_name();
  auto rethrown = pool.submit(rethrow_stored);
  const auto stored = error_of<RemoteError>(rethrown);
  ASSERT_TRUE(stored);
  EXPECT_EQ(stored->type_name(), "std::invalid_argument");
  EXPECT_EQ(stored->message(), "stored");
}

// A destructor that throws terminates the worker, whether it destroys the argument or the
// result: the task fails as a crashed one, and the pool replaces its worker.
TEST(HostileValue, DestructorThrowingInTheWorkerCrashesOnlyThatWorker) {
  Pool pool(PoolOptions{.workers = 1});
  auto argument = pool.submit([](const ThrowsWhenDestroyedInAWorker& x) { return x.value; },
                              ThrowsWhenDestroyedInAWorker{});
  const auto argument_error = error_of<WorkerLost>(argument);
  ASSERT_TRUE(argument_error);
  EXPECT_EQ(argument_error->signal(), SIGABRT);
  auto result = pool.submit([] { return ThrowsWhenDestroyedInAWorker{}; });
  const auto result_error = error_of<WorkerLost>(result);
  ASSERT_TRUE(result_error);
  EXPECT_EQ(result_error->signal(), SIGABRT);
  EXPECT_EQ(pool.call([](int x) { return x + 1; }, 1), 2);
}

}  // namespace

// ----- A decoder that uses the pool ------------------------------------------------------------

namespace hostile_value {

multicore::Pool* resolver_pool = nullptr;

/// Its decoder resolves the value through resolver_pool (in the application only).
struct Resolved {
  int v = 0;
};

}  // namespace hostile_value

template <>
struct multicore::Codec<hostile_value::Resolved> {
  static void encode(Writer& out, const hostile_value::Resolved& r) { out.write(&r.v, sizeof r.v); }
  static hostile_value::Resolved decode(Reader& in) {
    hostile_value::Resolved r;
    in.read(&r.v, sizeof r.v);
    if (hostile_value::resolver_pool != nullptr && !multicore::detail::in_worker_process()) {
      r.v = hostile_value::resolver_pool->call([](int x) { return x * x; }, r.v);
    }
    return r;
  }
};

namespace hostile_value {
namespace {

Resolved make_resolved(int v) { return Resolved{v}; }

// Regression test: answers are decoded by the thread that reads them (the collector, or a
// call() polling), so a nested call() in a decoder waited for an answer only that thread could
// read: a deadlock that not even terminate() ended. Now the nested use throws Error, and the
// answer being decoded fails with it.
TEST(HostileValue, DecoderThatUsesItsOwnPoolGetsAnErrorNotADeadlock) {
  const auto end = multicore_test::in_child(
      [](int report) {
        multicore::Pool pool(multicore::PoolOptions{.workers = 2});
        resolver_pool = &pool;
        const std::string outcome =
            multicore_test::Report::describe([&] { return pool.call(make_resolved, 3).v; });
        resolver_pool = nullptr;
        multicore_test::say(report, outcome);
        multicore_test::say(report, "then: " + std::to_string(pool.call(make_resolved, 4).v));
        return 0;
      },
      std::chrono::seconds(10));
  EXPECT_TRUE(end.exited_with(0)) << end.describe();
  EXPECT_EQ(end.report,
            "multicore::SerializationError what=multicore: could not decode "
            "hostile_value::Resolved: multicore: a Pool cannot be used from code that runs while "
            "that pool's answers are read (a Codec<T>::decode, say): it would wait for this very "
            "thread\nthen: 4\n");
}

}  // namespace
}  // namespace hostile_value
