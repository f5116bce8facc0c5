// SPDX-License-Identifier: MIT
// libFuzzer target: arbitrary bytes from a worker's response ring must never crash the parent.
//
// Two modes (see fuzz_types.hpp for the input layout):
//  - the real parent-side path: a Scheduler whose one worker is a fake Transport, its response
//    ring filled with the input. The collector thread validates headers (is_valid), claims jobs,
//    assembles payloads across the ring's wrap point and hands them to the real completions
//    (PromiseCompletion<T>, ChunkCompletion<T>), which decode them. An answer with a tail goes
//    through Completion::open_tail(): when the completion takes it, the tail streams straight
//    into the result, which must then equal what the whole answer decodes to. Every job must
//    then be resolved exactly once, with a value or one of the errors the parent may
//    legitimately report for a broken worker;
//  - the decoders alone, faster: read_outcome<T>, read_chunk<T> and decode<T> on the input.
// Anything else -- another exception type, a job resolved twice or never, and of course any
// memory error ASan or UBSan sees -- aborts, which libFuzzer reports as a crash.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <future>
#include <memory>
#include <multicore/detail/call.hpp>
#include <multicore/detail/map_stream.hpp>
#include <multicore/detail/promise.hpp>
#include <multicore/detail/scheduler.hpp>
#include <multicore/detail/serialize.hpp>
#include <multicore/detail/transport.hpp>
#include <multicore/errors.hpp>
#include <mutex>
#include <span>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "fuzz_types.hpp"

namespace {

namespace detail = multicore::detail;
using multicore::Format;

[[noreturn]] void fail(const char* what, const char* detail_text = "") {
  std::fprintf(stderr, "fuzz_response: %s %s\n", what, detail_text);
  std::fflush(stderr);
  std::abort();
}

/// FUZZ_VERBOSE=1 in the environment prints each outcome (to check what a seed exercises).
bool verbose() {
  static const bool on = std::getenv("FUZZ_VERBOSE") != nullptr;
  return on;
}

void note(const char* what, const char* text = "") {
  if (verbose()) std::fprintf(stderr, "  %s %s\n", what, text);
}

/// Errors the parent may report for a broken worker's answer; anything else is a bug.
void check_error(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const multicore::SerializationError& e) {
    note("SerializationError:", e.what());
  } catch (const multicore::RemoteError& e) {
    note("RemoteError:", e.what());
  } catch (const multicore::WorkerLost& e) {
    note("WorkerLost:", e.what());
  } catch (const multicore::PoolClosed& e) {
    note("PoolClosed:", e.what());
  } catch (const std::exception& e) {
    fail("unexpected exception:", typeid(e).name());
  } catch (...) {
    fail("unexpected exception of a non-std type");
  }
}

// ---- decoder mode -----------------------------------------------------------------------------

template <class T>
void fuzz_decoders(unsigned op, Format format, std::size_t expected,
                   std::span<const std::byte> in) {
  multicore::Reader reader(in);
  switch (op) {
    case 0:
      if constexpr (!std::is_void_v<T>) {
        try {
          (void)detail::decode<T>(reader, format);
          note("value");
        } catch (...) {
          check_error(std::current_exception());
        }
      }
      break;
    case 1:
      try {
        if constexpr (std::is_void_v<T>) {
          detail::read_outcome<void>(reader, format);
        } else {
          (void)detail::read_outcome<T>(reader, format);
        }
        detail::expect_end(reader);
        note("value");
      } catch (...) {
        check_error(std::current_exception());
      }
      break;
    default:
      if constexpr (!std::is_void_v<T>) {
        // Documented never to throw: a malformed answer is an error on every item.
        std::vector<detail::ItemResult<T>> results;
        try {
          results = detail::read_chunk<T>(reader, expected, format);
        } catch (...) {
          fail("read_chunk threw");
        }
        if (results.size() != expected) fail("read_chunk: wrong number of results");
        for (const auto& r : results) {
          if (r.error) {
            if (r.value) fail("read_chunk: an item has both a value and an error");
            check_error(r.error);
          } else if (!r.value) {
            fail("read_chunk: an item has neither a value nor an error");
          } else {
            note("item value");
          }
        }
      }
      break;
  }
}

// ---- scheduler mode ---------------------------------------------------------------------------

/// One worker that swallows every request and answers with the fuzz input: the input is
/// published into a small response ring as the collector consumes it, `piece` bytes at a time.
class FuzzTransport final : public detail::Transport {
 public:
  FuzzTransport(std::span<const std::byte> stream, std::size_t piece, std::uint64_t claimed,
                bool bad_head_at_end)
      : stream_(stream),
        piece_(piece),
        claimed_(claimed),
        bad_head_at_end_(bad_head_at_end),
        control_(std::make_unique<detail::RingControl>()),
        // Exactly the ring's size on the heap, so ASan sees any access past it.
        data_(std::make_unique<std::byte[]>(fuzz::response_ring_bytes)),
        writer_(memory()),
        reader_(memory()) {}

  /// Every job is submitted: from now on an idle collector means the input is used up.
  void all_submitted() {
    {
      std::lock_guard lock(mutex_);
      all_submitted_ = true;
    }
    published_allowed_.store(true);
    wake();
  }

  /// Blocks until the collector has nothing left to do with the input.
  void wait_until_idle() {
    std::unique_lock lock(mutex_);
    idle_cv_.wait(lock, [&] { return idle_; });
  }

  unsigned size() const noexcept override { return 1; }

  void spawn(unsigned /*k*/) override {
    ++lives_;
    state_.store(detail::SlotState::ready);
  }

  void kill(unsigned /*k*/) noexcept override {
    detail::SlotState expected = detail::SlotState::ready;
    state_.compare_exchange_strong(expected, detail::SlotState::dead);
  }

  void resume() noexcept override {}  // nothing here is ever stopped

  detail::WorkerStatus status(unsigned /*k*/) const override {
    detail::WorkerStatus st;
    st.state = state_.load();
    st.wait_status = 9;  // as waitpid() reports a SIGKILL
    st.pid = 4242;
    return st;
  }

  detail::SlotState state(unsigned /*k*/) const noexcept override { return state_.load(); }

  std::size_t send(unsigned /*k*/, std::span<const std::byte> bytes) noexcept override {
    return bytes.size();
  }
  void want_room(unsigned /*k*/, bool /*on*/) noexcept override {}
  bool room_made(unsigned /*k*/) const noexcept override { return false; }

  std::span<const std::byte> peek(unsigned /*k*/) noexcept override {
    publish();
    const std::span<const std::byte> bytes = reader_.peek();
    const std::byte* begin = data_.get();
    if (bytes.data() < begin || bytes.data() + bytes.size() > begin + fuzz::response_ring_bytes) {
      fail("peek() outside the ring");
    }
    return bytes;
  }

  void consume(unsigned /*k*/, std::size_t n) noexcept override {
    if (n > reader_.peek().size()) fail("the scheduler consumed more than it peeked");
    reader_.consume(n);
  }

  bool receive_corrupt(unsigned /*k*/) const noexcept override { return reader_.corrupt(); }
  bool send_corrupt(unsigned /*k*/) const noexcept override { return false; }

  // Input still to feed counts as bytes: the collector then comes to peek(), which feeds it.
  bool has_bytes(unsigned /*k*/) const noexcept override {
    return !stream_.empty() || bad_head_at_end_ ||
           control_->head.load(std::memory_order_acquire) !=
               control_->tail.load(std::memory_order_relaxed);
  }

  std::uint64_t running(unsigned /*k*/, std::int64_t* since_ns) const noexcept override {
    if (since_ns != nullptr) *since_ns = 0;
    return 0;
  }

  std::int64_t stopped_since_ns(unsigned /*k*/) const noexcept override { return 0; }

  void cancel(unsigned /*k*/, std::uint64_t /*position*/,
              std::uint64_t /*task_id*/) noexcept override {}

  // Like a real worker, which counts an answer only after publishing all of its bytes, the
  // fake claims its answers once the whole stream is in the ring. The claim itself may lie.
  std::uint64_t answers_sent(unsigned /*k*/) const noexcept override {
    return lives_ == 1 && published_all_ ? claimed_ : 0;
  }

  void reset(unsigned /*k*/) noexcept override {
    writer_.reset();
    reader_.reset();
    stream_ = {};  // the replacement has nothing to say
    bad_head_at_end_ = false;
  }

  void wait(const std::function<bool()>& pending, std::chrono::nanoseconds timeout,
            bool /*spin*/) override {
    if (pending()) return;
    std::unique_lock lock(mutex_);
    if (all_submitted_ && stream_.empty() && !bad_head_at_end_ && reader_.readable() == 0) {
      idle_ = true;
      idle_cv_.notify_all();
    }
    cv_.wait_for(lock, timeout, [&] { return woken_; });
    woken_ = false;
  }

  void wake() noexcept override {
    {
      std::lock_guard lock(mutex_);
      woken_ = true;
    }
    cv_.notify_all();
  }

  void polling(int /*delta*/) noexcept override {}

  bool alive() noexcept override { return true; }
  void close() noexcept override {}

 private:
  detail::RingMemory memory() const noexcept {
    return {control_.get(), data_.get(), fuzz::response_ring_bytes};
  }

  // A worker answers only what it was asked: nothing is published before every job was sent.
  // Collector thread only (through peek()).
  void publish() noexcept {
    if (!published_allowed_.load()) return;
    if (!stream_.empty()) {
      const std::size_t n = writer_.write_some(
          stream_.first(std::min(stream_.size(), piece_ == 0 ? stream_.size() : piece_)));
      stream_ = stream_.subspan(n);
      published_all_ = stream_.empty() && lives_ == 1;
      return;
    }
    if (bad_head_at_end_ && reader_.readable() == 0) {
      // Once its answers are read, the worker scribbles an impossible head.
      bad_head_at_end_ = false;
      control_->head.store(control_->tail.load() + fuzz::response_ring_bytes + 1);
    }
  }

  std::span<const std::byte> stream_;
  const std::size_t piece_;
  const std::uint64_t claimed_;
  bool bad_head_at_end_;
  std::unique_ptr<detail::RingControl> control_;
  std::unique_ptr<std::byte[]> data_;
  detail::RingWriter writer_;
  detail::RingReader reader_;
  std::atomic<detail::SlotState> state_{detail::SlotState::empty};
  std::atomic<unsigned> lives_{0};
  std::atomic<bool> published_allowed_{false};
  bool published_all_ = false;  // collector thread only

  std::mutex mutex_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  bool woken_ = false;
  bool all_submitted_ = false;
  bool idle_ = false;
};

/// One submitted job and how to check its outcome once the scheduler is done.
struct JobCheck {
  std::atomic<int> calls{0};
  std::function<void()> check;
  // An answer whose tail went straight into the result (collector thread; read once it joined):
  // the head and the tail as they arrived, to decode the ordinary way and compare.
  bool via_tail = false;
  std::vector<std::byte> tail_answer;
};

/// Wraps a real completion and counts how often the scheduler resolves it, and checks that a
/// tail arrives exactly as announced.
class Counted final : public detail::Completion, private detail::AnswerTail {
 public:
  Counted(std::unique_ptr<detail::Completion> inner, JobCheck& job)
      : inner_(std::move(inner)), job_(job) {}
  void deliver(multicore::Reader& payload, std::uint64_t run_nanos) noexcept override {
    job_.calls.fetch_add(1);
    inner_->deliver(payload, run_nanos);
  }
  detail::AnswerTail* open_tail(std::span<const std::byte> head,
                                std::uint64_t tail_bytes) noexcept override {
    tail_ = inner_->open_tail(head, tail_bytes);
    if (tail_ == nullptr) {
      note("tail refused: the whole payload is assembled");
      return nullptr;
    }
    note("tail opened");
    tail_left_ = tail_bytes;
    job_.tail_answer.assign(head.begin(), head.end());
    return this;
  }
  void fail(std::exception_ptr error) noexcept override {
    job_.calls.fetch_add(1);
    inner_->fail(std::move(error));
  }
  bool abandoned() const noexcept override { return inner_->abandoned(); }

 private:
  void append(std::span<const std::byte> bytes) noexcept override {
    if (tail_ == nullptr) ::fail("append() without an open tail");
    if (bytes.size() > tail_left_) ::fail("append() past the announced tail");
    tail_left_ -= bytes.size();
    job_.tail_answer.insert(job_.tail_answer.end(), bytes.begin(), bytes.end());
    tail_->append(bytes);
  }
  void deliver_tail(std::uint64_t run_nanos) noexcept override {
    if (tail_ == nullptr) ::fail("deliver_tail() without an open tail");
    if (tail_left_ != 0) ::fail("deliver_tail() before the whole tail arrived");
    job_.calls.fetch_add(1);
    job_.via_tail = true;
    note("tail delivered");
    tail_->deliver_tail(run_nanos);
  }

  std::unique_ptr<detail::Completion> inner_;
  JobCheck& job_;
  detail::AnswerTail* tail_ = nullptr;
  std::uint64_t tail_left_ = 0;
};

/// Submits a job whose request the fake worker swallows; its answer goes to `completion`.
void submit(detail::Scheduler& scheduler, Format format,
            std::unique_ptr<detail::Completion> completion, JobCheck& check) {
  std::unique_ptr<detail::Job> job = scheduler.new_job();
  detail::begin_request(job->request);
  detail::finish_request(job->request, 0, format, 1);
  job->emplace_completion<Counted>(std::move(completion), check);
  scheduler.submit(std::move(job));
}

/// A value built from an answer's tail must be the one the whole answer decodes to.
template <class T>
void same_as_decoded(const T& value, std::span<const std::byte> answer) {
  try {
    multicore::Reader reader(answer);
    const T decoded = detail::read_outcome<T>(reader, Format::binary);
    detail::expect_end(reader);
    if (decoded != value) fail("a tail answer's value differs from the decoded answer");
  } catch (...) {
    fail("a tail answer was delivered, but the whole answer does not decode");
  }
}

template <class T>
void add_promise_job(detail::Scheduler& scheduler, Format format, JobCheck& job) {
  auto completion = std::make_unique<detail::PromiseCompletion<T>>(format);
  auto future = std::make_shared<std::future<T>>(completion->future());
  submit(scheduler, format, std::move(completion), job);
  job.check = [future, &job] {
    if (future->wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      fail("a submitted job's future was never resolved");
    }
    try {
      if constexpr (std::is_void_v<T>) {
        future->get();
      } else {
        const T value = future->get();
        if constexpr (detail::tail_value<T>) {
          if (job.via_tail) same_as_decoded(value, job.tail_answer);
        }
      }
      note("value");
    } catch (...) {
      if (job.via_tail) fail("a tail answer resolved with an error");
      check_error(std::current_exception());
    }
  };
}

template <class T>
void add_chunk_job(detail::Scheduler& scheduler, std::size_t items, JobCheck& job) {
  auto inbox = std::make_shared<detail::MapInbox<T>>();
  submit(scheduler, Format::binary, std::make_unique<detail::ChunkCompletion<T>>(inbox, 0, items),
         job);
  job.check = [inbox, items] {
    std::lock_guard lock(inbox->mutex);
    if (inbox->arrived.size() != 1) fail("a map chunk did not arrive exactly once");
    const auto& arrival = inbox->arrived.front();
    if (arrival.failure) {
      check_error(arrival.failure);
      return;
    }
    if (arrival.results.size() != items) fail("a map chunk has the wrong number of results");
    for (const auto& r : arrival.results) {
      if (r.error) {
        check_error(r.error);
      } else {
        note("item value");
      }
    }
  };
}

void fuzz_scheduler(const std::uint8_t* data, std::size_t size) {
  if (size < fuzz::scheduler_prefix) return;
  const std::size_t jobs = (data[1] & 3u) + 1;
  const Format format = (data[1] & 4u) != 0 ? Format::json : Format::binary;
  const std::uint64_t claimed = (data[1] >> 3) & 7u;
  const bool bad_head = (data[1] & 0x40u) != 0;
  const std::size_t piece = data[6] | (std::size_t{data[7]} << 8);
  const std::span<const std::byte> stream(
      reinterpret_cast<const std::byte*>(data) + fuzz::scheduler_prefix,
      size - fuzz::scheduler_prefix);

  auto owned = std::make_unique<FuzzTransport>(stream, piece, claimed, bad_head);
  FuzzTransport& transport = *owned;
  std::vector<JobCheck> checks(jobs);
  {
    detail::Scheduler scheduler(std::move(owned), detail::SchedulerOptions{});
    for (std::size_t j = 0; j < jobs; ++j) {
      const std::uint8_t spec = data[2 + j];
      const std::size_t items = (spec >> 6) + 1u;
      const bool chunk = (spec & 0x20u) != 0;
      fuzz::with_type(spec & 0x1fu, [&]<class T>() {
        if constexpr (std::is_void_v<T>) {
          add_promise_job<void>(scheduler, format, checks[j]);
        } else if (chunk) {
          add_chunk_job<T>(scheduler, items, checks[j]);
        } else {
          add_promise_job<T>(scheduler, format, checks[j]);
        }
      });
    }
    transport.all_submitted();
    transport.wait_until_idle();
    scheduler.terminate();  // whatever got no answer now fails with PoolClosed
  }
  for (JobCheck& job : checks) {
    if (job.calls.load() != 1) fail("a job was not resolved exactly once");
    job.check();
  }
}

}  // namespace

// A UBSan report in the fuzz job's log should say where it came from.
extern "C" const char* __ubsan_default_options() { return "print_stacktrace=1"; }

// An input that makes the scheduler hang is a bug (a job never resolved, a collector that never
// goes idle): report it after 30 s, unless the command line sets -timeout, rather than after
// libFuzzer's default of 20 minutes.
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  static std::vector<char*> args;
  static char timeout[] = "-timeout=30";
  args.assign(*argv, *argv + *argc);
  for (char* arg : args) {
    if (std::string_view(arg).starts_with("-timeout=")) return 0;
  }
  args.insert(args.begin() + 1, timeout);
  args.push_back(nullptr);
  *argc = static_cast<int>(args.size() - 1);
  *argv = args.data();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  if ((data[0] & 1u) == 0) {
    fuzz_scheduler(data, size);
    return 0;
  }
  if (size < fuzz::decoder_prefix) return 0;
  const unsigned op = data[2] & 3u;
  const Format format = (data[2] & 4u) != 0 ? Format::json : Format::binary;
  const std::size_t expected = data[3];
  const std::span<const std::byte> bytes(
      reinterpret_cast<const std::byte*>(data) + fuzz::decoder_prefix, size - fuzz::decoder_prefix);
  fuzz::with_type(data[1], [&]<class T>() { fuzz_decoders<T>(op, format, expected, bytes); });
  return 0;
}
