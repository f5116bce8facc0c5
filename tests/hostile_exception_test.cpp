// SPDX-License-Identifier: MIT
// Exceptions built to break whoever describes them (a what() that returns nullptr, or that
// throws): every place multicore reads a user exception's message must survive them.
#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <exception>
#include <multicore/multicore.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/failure.hpp"
#include "support/leak_check.hpp"

namespace hostile {
/// what() returns nullptr: std::string(e.what()) is undefined behaviour (a segfault in practice).
struct NullWhat : std::exception {
  const char* what() const noexcept override { return nullptr; }
};

/// what() throws. what() is noexcept, so the throw calls std::terminate inside it: nothing can
/// catch it, in a worker or anywhere else.
[[noreturn]] inline const char* throw_instead_of_answering() { throw 7; }
struct ThrowingWhat : std::exception {
  const char* what() const noexcept override { return throw_instead_of_answering(); }
};

/// A Codec whose encode and decode throw NullWhat, on either side of the process boundary.
struct Unencodable {
  int value = 0;
};
struct Undecodable {
  int value = 0;
};
}  // namespace hostile

template <>
struct multicore::Codec<hostile::Unencodable> {
  static void encode(Writer& /*out*/, const hostile::Unencodable& /*value*/) {
    throw hostile::NullWhat();
  }
  static hostile::Unencodable decode(Reader& in) {
    hostile::Unencodable u;
    in.read(&u.value, sizeof u.value);
    return u;
  }
};
template <>
struct multicore::Codec<hostile::Undecodable> {
  static void encode(Writer& out, const hostile::Undecodable& value) {
    out.write(&value.value, sizeof value.value);
  }
  static hostile::Undecodable decode(Reader& /*in*/) { throw hostile::NullWhat(); }
};

namespace {

using multicore::Error;
using multicore::Pool;
using multicore::PoolOptions;
using multicore::RemoteError;
using multicore::SerializationError;
using multicore::Task;
using multicore::WorkerLost;
using multicore_test::error_of;
using multicore_test::thrown_exactly;

int throw_null_what(int /*x*/) { throw hostile::NullWhat(); }

pid_t own_pid() { return getpid(); }

void expect_null_what(const std::optional<RemoteError>& error) {
  ASSERT_TRUE(error);
  EXPECT_EQ(error->type_name(), "hostile::NullWhat");
  EXPECT_EQ(error->message(), "");
}

class NullWhatIn : public ::testing::TestWithParam<bool> {
 protected:
  PoolOptions options() const { return {.workers = 1, .run_inline = GetParam()}; }
};

INSTANTIATE_TEST_SUITE_P(HostileException, NullWhatIn, ::testing::Bool(),
                         [](const auto& p) { return p.param ? "Inline" : "Worker"; });

TEST_P(NullWhatIn, SubmitGivesRemoteErrorAndKeepsTheWorker) {
  Pool pool(options());
  const pid_t before = pool.submit(own_pid).get();
  auto thrown = pool.submit(throw_null_what, 1);
  expect_null_what(error_of<RemoteError>(thrown));
  EXPECT_EQ(pool.submit(own_pid).get(), before) << "the worker died describing the exception";
}

TEST_P(NullWhatIn, CallGivesRemoteError) {
  Pool pool(options());
  expect_null_what(thrown_exactly<RemoteError>([&] { pool.call(throw_null_what, 1); }));
  EXPECT_EQ(pool.call([](int x) { return x + 1; }, 1), 2);
}

TEST_P(NullWhatIn, MapItemGivesRemoteErrorAndTheOthersTheirValues) {
  Pool pool(options());
  const std::vector<int> inputs{0, 1, 2, 3};
  std::vector<int> values;
  for (int threads : {1, 2}) {
    auto results = pool.map(
        [](int x) {
          if (x == 2) throw hostile::NullWhat();
          return x * 10;
        },
        inputs, {.chunk_size = 4, .threads_per_worker = static_cast<unsigned>(threads)});
    for (auto it = results.begin(); it != results.end(); ++it) {
      if (it.index() == 2) {
        expect_null_what(thrown_exactly<RemoteError>([&] { *it; }));
      } else {
        values.push_back(*it);
      }
    }
  }
  EXPECT_EQ(values, (std::vector<int>{0, 10, 30, 0, 10, 30}));
}

double overloaded() { return 1e9; }

TEST_P(NullWhatIn, TaskRunGivesRemoteError) {
  Pool pool(options());
  auto& source = multicore::detail::load_average_source();
  const auto saved = source;
  source = &overloaded;  // a gated Task then runs inline, in the caller
  for (double gate : {0.0, 1.0}) {
    Task<int> task(pool, {.max_load_average = gate});
    EXPECT_EQ(static_cast<bool>(task), gate == 0.0);
    task.run(throw_null_what, 1);
    expect_null_what(thrown_exactly<RemoteError>([&] { task.get(); }));
  }
  source = saved;
}

TEST_P(NullWhatIn, CodecThrowingItGivesSerializationError) {
  Pool pool(options());
  const auto sent = thrown_exactly<SerializationError>(
      [&] { pool.submit([](hostile::Unencodable u) { return u.value; }, hostile::Unencodable{}); });
  ASSERT_TRUE(sent);
  EXPECT_NE(std::string(sent->what()).find("hostile::Unencodable"), std::string::npos)
      << sent->what();
  // In the worker: decoding the argument, then encoding the result.
  auto decoded =
      pool.submit([](hostile::Undecodable u) { return u.value; }, hostile::Undecodable{});
  ASSERT_TRUE(error_of<SerializationError>(decoded));
  auto encoded = pool.submit([] { return hostile::Unencodable{}; });
  ASSERT_TRUE(error_of<SerializationError>(encoded));
  // In the caller: decoding the result.
  auto result = pool.submit([] { return hostile::Undecodable{}; });
  ASSERT_TRUE(error_of<SerializationError>(result));
  EXPECT_EQ(pool.call([](int x) { return x + 1; }, 1), 2);
}

TEST_P(NullWhatIn, OnWorkerStartThrowingItGivesError) {
  PoolOptions o = options();
  o.on_worker_start = [] { throw hostile::NullWhat(); };
  const auto error = thrown_exactly<Error>([&] { Pool pool(o); });
  ASSERT_TRUE(error);
  EXPECT_EQ(std::string(error->what()),
            "multicore: on_worker_start threw: an exception of type hostile::NullWhat with no "
            "message");
}

// A what() that throws terminates the process that asks it: in a worker, that is the task's
// worker, which the pool replaces like any crashed one.
TEST(HostileException, ThrowingWhatCrashesOnlyItsWorker) {
  Pool pool(PoolOptions{.workers = 1});
  auto thrown = pool.submit([] { throw hostile::ThrowingWhat(); });
  const auto lost = error_of<WorkerLost>(thrown);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->signal(), SIGABRT);
  EXPECT_EQ(pool.call([](int x) { return x + 1; }, 1), 2);
}

TEST(HostileException, OnWorkerStartThrowingThrowingWhatCrashesTheWorkerAndGivesError) {
  const auto error = thrown_exactly<Error>([] {
    Pool pool(PoolOptions{.workers = 1, .on_worker_start = [] { throw hostile::ThrowingWhat(); }});
  });
  ASSERT_TRUE(error);
  EXPECT_NE(std::string(error->what()).find("while starting"), std::string::npos) << error->what();
}

}  // namespace
