// SPDX-License-Identifier: MIT
// Tests for Pool::submit: callables, argument and result types, remote errors, futures, many
// submitting threads, closed pools, misuse from inside a worker, moved-from pools and size().
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <latch>
#include <map>
#include <multicore/multicore.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "support/leak_check.hpp"
#include "support/person.hpp"
#include "support/workers.hpp"

// A user exception type, in a named namespace so that its demangled name is predictable.
namespace app {
class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
}  // namespace app

namespace {

using multicore::Pool;
using multicore::PoolClosed;
using multicore::PoolOptions;
using multicore::RemoteError;
using namespace std::chrono_literals;

// ----- Test types ------------------------------------------------------------------------------

struct Point {
  int x;
  double y;
  double sum() const { return x + y; }
  Point scaled(int k) const { return {x * k, y * k}; }
  friend bool operator==(const Point&, const Point&) = default;
};
static_assert(std::is_trivially_copyable_v<Point>);

// A polymorphic type with a cereal serialize(): its virtual member functions can be sent.
struct Shape {
  virtual ~Shape() = default;
  virtual double area() const = 0;
};
struct Square final : Shape {
  Square() = default;
  explicit Square(double s) : side(s) {}
  double area() const override { return side * side; }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(side);
  }
  double side = 0;
};

// A type with neither serialize() nor trivial copyability: only its Codec makes it sendable.
struct Label {
  std::string text;
  friend bool operator==(const Label&, const Label&) = default;
};

// Counts the parent's Codec<Label> calls (the worker's calls count in the worker's memory).
std::atomic<int> label_encodes{0};
std::atomic<int> label_decodes{0};

}  // namespace

template <>
struct multicore::Codec<Label> {
  static void encode(multicore::Writer& out, const Label& label) {
    ++label_encodes;
    const auto n = static_cast<std::uint32_t>(label.text.size());
    out.write(&n, sizeof n);
    out.write(label.text.data(), label.text.size());
  }
  static Label decode(multicore::Reader& in) {
    ++label_decodes;
    std::uint32_t n = 0;
    in.read(&n, sizeof n);
    const auto bytes = in.take(n);
    return Label{std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size())};
  }
};

namespace {

// A serializable function object: not trivially copyable (it holds a std::string), so it
// crosses through cereal.
struct Greeter {
  std::string greeting;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(greeting);
  }
  std::string operator()(const std::string& name) const { return greeting + ", " + name + "!"; }
};
static_assert(!std::is_trivially_copyable_v<Greeter>);

int add(int a, int b) { return a + b; }
int twice(int x) { return 2 * x; }
int pid_of_runner() { return static_cast<int>(getpid()); }
void do_nothing(int /*x*/) {}
void throw_in_void(int x) { throw std::out_of_range("index " + std::to_string(x)); }

/// The RemoteError that `future.get()` throws; a test failure if it throws something else.
template <class T>
RemoteError remote_error_of(std::future<T>& future) {
  try {
    future.get();
    ADD_FAILURE() << "expected a RemoteError, but the task succeeded";
  } catch (const RemoteError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a RemoteError, got: " << e.what();
  } catch (...) {
    ADD_FAILURE() << "expected a RemoteError, got an exception of unknown type";
  }
  return RemoteError("<none>", "<none>");
}

// ----- Parameterised over worker counts ---------------------------------------------------------

// The parameter is PoolOptions::workers: 1, 2, or 0 (usable_cores()).
class SubmitTest : public multicore_test::WorkerCountTest {};

INSTANTIATE_TEST_SUITE_P(Workers, SubmitTest, multicore_test::worker_counts(),
                         multicore_test::worker_count_name);

TEST_P(SubmitTest, SizeIsTheConfiguredWorkerCount) {
  Pool pool(options());
  EXPECT_EQ(pool.size(), expected_size());
}

TEST_P(SubmitTest, RunsInAnotherProcess) {
  Pool pool(options());
  const int pid = pool.submit(pid_of_runner).get();
  EXPECT_NE(pid, static_cast<int>(getpid()));
  EXPECT_GT(pid, 0);
}

TEST_P(SubmitTest, FunctionPointerAndFunctionReference) {
  Pool pool(options());
  auto by_reference = pool.submit(add, 2, 40);
  auto by_pointer = pool.submit(&add, -7, 3);
  EXPECT_EQ(by_reference.get(), 42);
  EXPECT_EQ(by_pointer.get(), -4);
}

TEST_P(SubmitTest, CapturelessLambda) {
  Pool pool(options());
  EXPECT_EQ(pool.submit([](int a, int b) { return a * b; }, 6, 7).get(), 42);
  EXPECT_EQ(pool.submit([] { return 123; }).get(), 123);
}

TEST_P(SubmitTest, LambdaCapturingTriviallyCopyableValues) {
  // Regression test: g++ 12 once rejected every capturing closure here (std::bit_cast in
  // detail::decode_callable; g++ calls a capturing closure not trivially copyable once its
  // deleted copy assignment has been looked at).
  Pool pool(options());
  int base = 1000;  // not const: a constant needs no capture, and clang says so
  const Point offset{3, 0.25};
  double scale = 1.5;
  auto f = pool.submit(
      [base, offset, scale](int x) {
        return Point{base + x + offset.x, scale * offset.y};
      },
      20);
  EXPECT_EQ(f.get(), (Point{1023, 0.375}));
  Pool* self = &pool;  // a pointer capture is allowed (only the worker's copy is used)
  EXPECT_EQ(pool.submit([self, base] { return self != nullptr ? base : -1; }).get(), 1000);
}

// A named trivially copyable function object is sent as bytes, like a capturing closure.
struct AddOffset {
  int offset;
  int operator()(int x) const { return x + offset; }
};

TEST_P(SubmitTest, TriviallyCopyableFunctionObject) {
  Pool pool(options());
  EXPECT_EQ(pool.submit(AddOffset{100}, 23).get(), 123);
  EXPECT_EQ(pool.submit(AddOffset{-5}, 5).get(), 0);
}

TEST_P(SubmitTest, SerializableFunctionObject) {
  Pool pool(options());
  const Greeter hello{"Hello"};
  EXPECT_EQ(pool.submit(hello, std::string("world")).get(), "Hello, world!");
  EXPECT_EQ(pool.submit(Greeter{"Bye"}, std::string("moon")).get(), "Bye, moon!");
}

// A member pointer is a callable as std::invoke sees it (issue 13): the object is the first
// argument, sent like any argument. A member function is named like a function (by module and
// offset, valid on every rank of an MPI job); a virtual one by its place in the vtable.
TEST_P(SubmitTest, MemberFunctionPointerWithTheObjectAsFirstArgument) {
  Pool pool(options());
  EXPECT_EQ(pool.submit(&Point::sum, Point{2, 0.5}).get(), 2.5);
  EXPECT_EQ(pool.call(&Point::scaled, Point{3, 0.5}, 2), (Point{6, 1.0}));
  EXPECT_EQ(pool.call(&Shape::area, Square(3.0)), 9.0);  // virtual, called on a Square
  EXPECT_EQ(pool.call(&Square::area, Square(0.5)), 0.25);
  std::vector<double> sums;
  for (double s : pool.map(&Point::sum, std::vector<Point>{{1, 0.5}, {2, 0.25}})) sums.push_back(s);
  EXPECT_EQ(sums, (std::vector<double>{1.5, 2.25}));
}

// Wrapped by std::mem_fn or a lambda a member function works too (as bytes: in a fork only).
TEST_P(SubmitTest, MemberFunctionThroughMemFnOrLambda) {
  Pool pool(options());
  static_assert(std::is_trivially_copyable_v<decltype(std::mem_fn(&Point::sum))>);
  EXPECT_EQ(pool.submit(std::mem_fn(&Point::sum), Point{2, 0.5}).get(), 2.5);
  EXPECT_EQ(pool.submit([](const Point& p) { return p.sum(); }, Point{-1, 0.25}).get(), -0.75);
  auto call = [pmf = &Point::sum](const Point& p) { return (p.*pmf)(); };
  EXPECT_EQ(pool.submit(call, Point{-1, 0.5}).get(), -0.5);
}

TEST_P(SubmitTest, ArithmeticAndTriviallyCopyableValues) {
  Pool pool(options());
  EXPECT_EQ(pool.submit([](double d) { return d / 4; }, 3.0).get(), 0.75);
  EXPECT_EQ(pool.submit([](char c) { return static_cast<char>(c + 1); }, 'a').get(), 'b');
  EXPECT_EQ(pool.submit([](std::int64_t v) { return v * 3; }, std::int64_t{1} << 40).get(),
            std::int64_t{3} << 40);
  EXPECT_EQ(pool.submit([](bool b) { return !b; }, false).get(), true);
  EXPECT_EQ(pool.submit(
                    [](Point p) {
                      return Point{p.x * 2, p.y * 2};
                    },
                    Point{4, -1.5})
                .get(),
            (Point{8, -3.0}));
}

TEST_P(SubmitTest, Strings) {
  Pool pool(options());
  EXPECT_EQ(pool.submit([](std::string s) { return s + "!"; }, std::string("hi")).get(), "hi!");
  // A string literal travels as a std::string (not as a pointer into this process).
  EXPECT_EQ(pool.submit([](const std::string& s) { return s.size(); }, "hello").get(), 5u);
  EXPECT_EQ(pool.submit([](std::string s) { return s + s; }, "ab").get(), "abab");
  std::string with_nul("a\0b", 3);
  EXPECT_EQ(pool.submit([](std::string s) { return s; }, with_nul).get(), with_nul);
  EXPECT_EQ(pool.submit([](std::string s) { return s; }, std::string()).get(), "");
}

TEST_P(SubmitTest, StandardContainersAndVocabularyTypes) {
  Pool pool(options());
  const std::vector<int> numbers{5, -1, 9, 0};
  EXPECT_EQ(pool.submit(
                    [](std::vector<int> v) {
                      std::reverse(v.begin(), v.end());
                      return v;
                    },
                    numbers)
                .get(),
            (std::vector<int>{0, 9, -1, 5}));

  const std::map<std::string, int> ages{{"ann", 31}, {"bob", 42}};
  auto older = pool.submit(
      [](std::map<std::string, int> m) {
        for (auto& [name, age] : m) ++age;
        m["new"] = 0;
        return m;
      },
      ages);
  EXPECT_EQ(older.get(), (std::map<std::string, int>{{"ann", 32}, {"bob", 43}, {"new", 0}}));

  auto half = [](int x) -> std::optional<int> {
    if (x % 2 != 0) return std::nullopt;
    return x / 2;
  };
  EXPECT_EQ(pool.submit(half, 10).get(), std::optional<int>(5));
  EXPECT_EQ(pool.submit(half, 11).get(), std::nullopt);
  EXPECT_EQ(pool.submit([](std::optional<std::string> s) { return s.value_or("none"); },
                        std::optional<std::string>())
                .get(),
            "none");

  using IntOrString = std::variant<int, std::string>;
  auto flip = [](IntOrString v) -> IntOrString {
    if (const int* i = std::get_if<int>(&v)) return std::to_string(*i);
    return static_cast<int>(std::get<std::string>(v).size());
  };
  EXPECT_EQ(pool.submit(flip, IntOrString(77)).get(), IntOrString(std::string("77")));
  EXPECT_EQ(pool.submit(flip, IntOrString(std::string("four"))).get(), IntOrString(4));

  using Triple = std::tuple<int, std::string, double>;
  EXPECT_EQ(pool.submit(
                    [](Triple t) {
                      return Triple{std::get<0>(t) + 1, std::get<1>(t) + "x", std::get<2>(t) * 2};
                    },
                    Triple{1, "a", 1.25})
                .get(),
            (Triple{2, "ax", 2.5}));

  using NameAndCount = std::pair<std::string, int>;
  EXPECT_EQ(pool.submit(
                    [](NameAndCount p) {
                      return NameAndCount{p.first + p.first, -p.second};
                    },
                    NameAndCount{"ab", 3})
                .get(),
            (NameAndCount{"abab", -3}));
}

TEST_P(SubmitTest, UserTypeWithSerialize) {
  Pool pool(options());
  const Person ann{"Ann", 31, {"admin", "ops"}};
  auto birthday = pool.submit(
      [](Person p) {
        ++p.age;
        p.tags.push_back("cake");
        return p;
      },
      ann);
  EXPECT_EQ(birthday.get(), (Person{"Ann", 32, {"admin", "ops", "cake"}}));
}

TEST_P(SubmitTest, CodecSpecialisationIsUsed) {
  Pool pool(options());
  const int encodes = label_encodes.load();
  const int decodes = label_decodes.load();
  auto shout = pool.submit([](Label l) { return Label{l.text + "!!"}; }, Label{"hey"});
  EXPECT_EQ(shout.get(), (Label{"hey!!"}));
  // In this process: the argument was encoded once and the result decoded once.
  EXPECT_EQ(label_encodes.load() - encodes, 1);
  EXPECT_EQ(label_decodes.load() - decodes, 1);
}

TEST_P(SubmitTest, VoidResults) {
  Pool pool(options());
  std::future<void> ok = pool.submit(do_nothing, 5);
  std::future<void> lambda = pool.submit([] {});
  EXPECT_NO_THROW(ok.get());
  EXPECT_NO_THROW(lambda.get());
  std::future<void> bad = pool.submit(throw_in_void, 9);
  const RemoteError e = remote_error_of(bad);
  EXPECT_EQ(e.type_name(), "std::out_of_range");
  EXPECT_EQ(e.message(), "index 9");
}

// Thousands of small futures at once: their answers are made visible on the collector, on the
// publisher's thread, or both (see core/publisher.hpp); each gets exactly its own outcome,
// whichever order they are waited for in.
TEST_P(SubmitTest, AFloodOfSmallFuturesEachGetsItsOwnOutcome) {
  Pool pool(options());
  constexpr std::size_t n = 3000;
  const auto thrown = [](std::size_t i) { return i % 100 == 7; };
  std::vector<std::future<std::size_t>> sizes;
  std::vector<std::future<std::string>> strings;
  std::vector<std::future<void>> voids;
  for (std::size_t i = 0; i < n; ++i) {
    sizes.push_back(pool.submit([](std::size_t x) { return 3 * x; }, i));
    strings.push_back(pool.submit([](std::size_t x) { return std::to_string(x); }, i));
    const int x = static_cast<int>(i);
    voids.push_back(thrown(i) ? pool.submit(throw_in_void, x) : pool.submit(do_nothing, x));
  }
  for (std::size_t i = n; i-- > 0;) EXPECT_EQ(sizes[i].get(), 3 * i);
  for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(strings[i].get(), std::to_string(i));
  for (std::size_t i = 0; i < n; ++i) {
    if (thrown(i)) {
      EXPECT_EQ(remote_error_of(voids[i]).message(), "index " + std::to_string(i));
    } else {
      EXPECT_NO_THROW(voids[i].get());
    }
  }
}

// The pool's end waits until every future of a flood is ready: none is left to a thread that
// is gone.
TEST_P(SubmitTest, EveryFutureOfAFloodIsReadyWhenThePoolIsGone) {
  constexpr std::size_t n = 3000;
  std::vector<std::future<std::size_t>> sizes;
  {
    Pool pool(options());
    for (std::size_t i = 0; i < n; ++i) {
      sizes.push_back(pool.submit([](std::size_t x) { return x + 1; }, i));
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(sizes[i].wait_for(std::chrono::seconds(0)), std::future_status::ready) << i;
    EXPECT_EQ(sizes[i].get(), i + 1);
  }
}

TEST_P(SubmitTest, ManyArguments) {
  Pool pool(options());
  auto describe = [](int a, double b, std::string c, std::vector<int> d, Point e,
                     std::optional<int> f, char g, std::int64_t h, bool i) {
    std::string out = std::to_string(a) + "|" + std::to_string(b) + "|" + c + "|";
    for (int x : d) out += std::to_string(x) + ",";
    out += "|" + std::to_string(e.x) + ":" + std::to_string(e.y) + "|";
    out += (f ? std::to_string(*f) : "none") + "|" + std::string(1, g) + "|" + std::to_string(h);
    out += i ? "|yes" : "|no";
    return out;
  };
  auto f = pool.submit(describe, 1, 2.5, std::string("three"), std::vector<int>{4, 5},
                       Point{6, 7.5}, std::optional<int>(), 'z', std::int64_t{-9}, true);
  EXPECT_EQ(f.get(), "1|2.500000|three|4,5,|6:7.500000|none|z|-9|yes");
}

TEST_P(SubmitTest, StdExceptionBecomesRemoteError) {
  Pool pool(options());
  auto f =
      pool.submit([](int x) -> int { throw std::runtime_error("boom " + std::to_string(x)); }, 7);
  const RemoteError e = remote_error_of(f);
  EXPECT_EQ(e.type_name(), "std::runtime_error");
  EXPECT_EQ(e.message(), "boom 7");
  EXPECT_EQ(std::string(e.what()), "task threw std::runtime_error: boom 7");
}

TEST_P(SubmitTest, UserExceptionTypeKeepsItsName) {
  Pool pool(options());
  auto f = pool.submit([]() -> int { throw app::ParseError("line 3: unexpected '}'"); });
  const RemoteError e = remote_error_of(f);
  EXPECT_EQ(e.type_name(), "app::ParseError");
  EXPECT_EQ(e.message(), "line 3: unexpected '}'");
  EXPECT_NE(std::string(e.what()).find("line 3: unexpected '}'"), std::string::npos);
}

TEST_P(SubmitTest, NonStdExceptionsBecomeRemoteError) {
  Pool pool(options());
  auto thrown_int = pool.submit([]() -> int { throw 42; });
  const RemoteError i = remote_error_of(thrown_int);
  EXPECT_EQ(i.type_name(), "int");
  EXPECT_EQ(i.message(), "");
  EXPECT_EQ(std::string(i.what()), "task threw int");

  auto thrown_string = pool.submit([]() -> int { throw std::string("bad input"); });
  const RemoteError s = remote_error_of(thrown_string);
  EXPECT_EQ(s.type_name(), "std::string");
  EXPECT_EQ(s.message(), "bad input");

  auto thrown_literal = pool.submit([]() -> int { throw "a literal"; });
  const RemoteError l = remote_error_of(thrown_literal);
  EXPECT_EQ(l.type_name(), "char const*");
  EXPECT_EQ(l.message(), "a literal");
}

TEST_P(SubmitTest, RemoteErrorIsAMulticoreError) {
  Pool pool(options());
  auto f = pool.submit([]() -> int { throw std::logic_error("nope"); });
  EXPECT_THROW(f.get(), multicore::Error);
}

TEST_P(SubmitTest, FutureSupportsWaitFor) {
  Pool pool(options());
  auto f = pool.submit(twice, 21);
  ASSERT_TRUE(f.valid());
  // A generous bound: this only waits, it asserts nothing about speed.
  ASSERT_EQ(f.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(f.get(), 42);
  EXPECT_FALSE(f.valid());
}

TEST_P(SubmitTest, ManyThreadsSubmitAtOnce) {
  constexpr int threads = 8;
  constexpr int per_thread = 500;
  Pool pool(options());
  std::latch start(threads);
  std::vector<std::vector<std::future<std::int64_t>>> futures(threads);
  std::vector<std::thread> submitters;
  for (int t = 0; t < threads; ++t) {
    submitters.emplace_back([&pool, &start, &futures, t] {
      start.arrive_and_wait();
      for (int i = 0; i < per_thread; ++i) {
        futures[static_cast<std::size_t>(t)].push_back(pool.submit(
            [](int tt, int ii) { return std::int64_t{tt} * 1'000'000 + ii * ii; }, t, i));
      }
    });
  }
  for (auto& s : submitters) s.join();
  for (int t = 0; t < threads; ++t) {
    ASSERT_EQ(futures[static_cast<std::size_t>(t)].size(), static_cast<std::size_t>(per_thread));
    for (int i = 0; i < per_thread; ++i) {
      EXPECT_EQ(futures[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)].get(),
                std::int64_t{t} * 1'000'000 + i * i)
          << "thread " << t << " task " << i;
    }
  }
}

TEST_P(SubmitTest, SubmitAfterShutdownThrowsPoolClosed) {
  Pool pool(options());
  EXPECT_EQ(pool.submit(twice, 1).get(), 2);
  pool.shutdown();
  EXPECT_THROW(pool.submit(twice, 2), PoolClosed);
  EXPECT_THROW(pool.submit([] {}), PoolClosed);
  EXPECT_EQ(pool.size(), expected_size());
}

TEST_P(SubmitTest, SubmitAfterTerminateThrowsPoolClosed) {
  Pool pool(options());
  EXPECT_EQ(pool.submit(twice, 1).get(), 2);
  pool.terminate();
  EXPECT_THROW(pool.submit(twice, 2), PoolClosed);
}

// Submits to the pool it points to: run inside a worker, where that Pool is only a snapshot.
struct NestedSubmit {
  Pool* pool;
  int operator()(int x) const { return pool->submit(twice, x).get(); }
};

// The same through map() and through a Task.
struct NestedMap {
  Pool* pool;
  int operator()(int x) const {
    int sum = 0;
    for (int r : pool->map(twice, std::vector<int>{x, x})) sum += r;
    return sum;
  }
};

struct NestedTask {
  Pool* pool;
  int operator()(int x) const {
    multicore::Task<int> task(*pool);
    task.run(twice, x);
    return task.get().at(0);
  }
};

void expect_refused_in_worker(RemoteError e) {
  EXPECT_EQ(e.type_name(), "multicore::Error");
  EXPECT_NE(e.message().find("cannot be used from inside a worker process"), std::string::npos)
      << e.message();
}

// Regression test: the workers are forked while the Pool is still being constructed, so their
// snapshot of the Pool object had no valid core yet; using it crashed or gave the wrong error.
TEST_P(SubmitTest, PoolUsedInsideItsOwnWorkerFails) {
  Pool pool(options());
  // A function object holding a Pool* is trivially copyable (as is a lambda capturing it); the
  // worker's copy of the Pool is a snapshot that must refuse to work.
  {
    SCOPED_TRACE("submit");
    auto nested = pool.submit(NestedSubmit{&pool}, 4);
    expect_refused_in_worker(remote_error_of(nested));
  }
  // The pool itself is unharmed.
  EXPECT_EQ(pool.submit(twice, 5).get(), 10);
  {
    SCOPED_TRACE("submit from a capturing lambda");
    Pool* self = &pool;
    auto nested = pool.submit([self](int x) { return self->submit(twice, x).get(); }, 4);
    expect_refused_in_worker(remote_error_of(nested));
  }
  {
    SCOPED_TRACE("map");
    auto nested = pool.submit(NestedMap{&pool}, 4);
    expect_refused_in_worker(remote_error_of(nested));
  }
  {
    SCOPED_TRACE("Task");
    auto nested = pool.submit(NestedTask{&pool}, 4);
    expect_refused_in_worker(remote_error_of(nested));
  }
  EXPECT_EQ(pool.submit(twice, 6).get(), 12);
}

// A pool that was complete when this pool's workers were forked is refused there too (its
// snapshot is not a working pool either: no fork server, no collector thread).
TEST_P(SubmitTest, OtherPoolUsedInsideAWorkerFails) {
  Pool other(PoolOptions{.workers = 1});
  Pool pool(options());
  auto nested = pool.submit(NestedSubmit{&other}, 4);
  expect_refused_in_worker(remote_error_of(nested));
  EXPECT_EQ(other.submit(twice, 7).get(), 14);
}

// ----- Not parameterised ------------------------------------------------------------------------

int twice_in_a_pool_of_its_own(int x) {
  Pool inner(PoolOptions{.workers = 1});
  return inner.call(twice, x) + inner.submit(twice, x).get();
}

// Regression test: a worker inherited the fork server's registry of descriptors locked (the
// parent holds its mutex across the fork), so a Pool made inside a worker, as the error for
// the snapshot tells users to do, hung in its constructor.
TEST(Submit, PoolMadeInsideAWorkerWorks) {
  Pool pool(PoolOptions{.workers = 1});
  auto nested = pool.submit(twice_in_a_pool_of_its_own, 4);
  if (nested.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    pool.terminate();
    FAIL() << "the pool made inside the worker hung";
  }
  EXPECT_EQ(nested.get(), 16);
}

TEST(Submit, WorkersZeroMeansUsableCores) {
  Pool pool;
  EXPECT_EQ(pool.size(), multicore::usable_cores());
  EXPECT_EQ(pool.submit(add, 1, 1).get(), 2);
}

TEST(Submit, MovedFromPool) {
  Pool a(PoolOptions{.workers = 2});
  auto before = a.submit(twice, 1);
  Pool b(std::move(a));
  // NOLINTBEGIN(bugprone-use-after-move): the moved-from state is what is tested
  EXPECT_EQ(a.size(), 0u);
  EXPECT_THROW(a.submit(twice, 1), PoolClosed);
  EXPECT_THROW((void)a.map(twice, std::vector<int>{1, 2}), PoolClosed);
  a.shutdown();  // no-ops, must not crash
  a.terminate();
  // NOLINTEND(bugprone-use-after-move)
  EXPECT_EQ(before.get(), 2);
  EXPECT_EQ(b.size(), 2u);
  EXPECT_EQ(b.submit(twice, 5).get(), 10);

  // Move assignment finishes the target's own work first, then takes over the source's pool.
  Pool c(PoolOptions{.workers = 1});
  auto pending = c.submit(
      [](int x) {
        usleep(20'000);
        return x + 1;
      },
      99);
  c = std::move(b);
  ASSERT_EQ(pending.wait_for(0s), std::future_status::ready);
  EXPECT_EQ(pending.get(), 100);
  EXPECT_EQ(c.size(), 2u);
  EXPECT_EQ(c.submit(twice, 8).get(), 16);
  EXPECT_EQ(b.size(), 0u);  // NOLINT(bugprone-use-after-move)
}

TEST(Submit, NoProcessOutlivesThePool) {
  {
    Pool pool(PoolOptions{.workers = 2});
    EXPECT_EQ(pool.submit(twice, 3).get(), 6);
    EXPECT_FALSE(multicore_test::child_pids().empty());  // the fork server, at least
  }
  EXPECT_EQ(multicore_test::child_pids(), std::vector<pid_t>{});
}

}  // namespace
