// SPDX-License-Identifier: MIT
// libFuzzer target: arbitrary bytes from a worker's response ring must never crash the parent.
//
// Two modes (see fuzz_types.hpp for the input layout):
//  - the real parent-side path: a Scheduler over a one-worker transport whose answer ring
//    carries the input, read by the real framing code as ShmTransport reads it (AnswerReceiver:
//    headers checked, reassembled across the ring's wrap point or when published in pieces,
//    payloads assembled, tails routed through the scheduler's TailRouter, truncation and
//    impossible indices detected). The scheduler checks that each answer is the one it expects
//    and hands it to the real completions (PromiseCompletion<T>, ChunkCompletion<T>), which
//    decode it. An answer with a tail goes through Completion::open_tail(): when the completion
//    takes it, the tail streams straight into the result, which must then equal what the whole
//    answer decodes to. Every job must then be resolved exactly once, with a value or one of the
//    errors the parent may legitimately report for a broken worker;
//  - the decoders alone, faster: read_outcome<T>, read_chunk<T> and decode<T> on the input.
// Anything else -- another exception type, a job resolved twice or never, and of course any
// memory error ASan or UBSan sees -- aborts, which libFuzzer reports as a crash.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <future>
#include <memory>
#include <multicore/detail/core/scheduler.hpp>
#include <multicore/detail/front/completions.hpp>
#include <multicore/detail/front/map_state.hpp>
#include <multicore/detail/protocol/entries.hpp>
#include <multicore/detail/protocol/request.hpp>
#include <multicore/detail/serialize/json.hpp>
#include <multicore/detail/serialize/serialize.hpp>
#include <multicore/detail/transport/shm/stream.hpp>
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
        if (format == Format::json) {
          (void)detail::read_outcome<T, Format::json>(reader);
        } else {
          (void)detail::read_outcome<T>(reader);
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
          results = detail::read_chunk<T>(reader, expected);  // maps are binary only
        } catch (...) {
          fail("read_chunk threw");
        }
        if (results.size() != expected) fail("read_chunk: wrong number of results");
        for (const auto& r : results) {
          if (r.error) {
            if (r.value.has_value()) fail("read_chunk: an item has both a value and an error");
            check_error(r.error);
          } else if (!r.value.has_value()) {
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
/// published into a small answer ring, `piece` bytes at a time, as the parent's real framing
/// code (AnswerReceiver) reads it, exactly as ShmTransport reads a worker's ring. The worker
/// says it has sent `claimed` answers once it has published the whole input (a claim that may
/// lie), and may then scribble an impossible head. Its replacement, if the parent kills it, has
/// nothing to say.
class FuzzTransport final : public detail::Transport {
 public:
  FuzzTransport(std::span<const std::byte> stream, std::size_t ring_bytes, std::size_t piece,
                std::uint64_t claimed, bool bad_head_at_end)
      : ring_bytes_(ring_bytes),
        stream_(stream),
        piece_(piece == 0 ? stream.size() : piece),
        claimed_(claimed),
        bad_head_at_end_(bad_head_at_end),
        control_(std::make_unique<detail::RingControl>()),
        // Exactly the ring's size on the heap, so ASan sees any access past it.
        data_(std::make_unique<std::byte[]>(ring_bytes)),
        writer_(memory()),
        receiver_(detail::StreamEnds{memory(), &bell_, &bell_, &wants_room_, nullptr}) {}

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
  detail::Capabilities capabilities() const noexcept override { return {}; }

  void start(unsigned /*k*/) override {
    if (++lives_ > 1) {  // a replacement, with a fresh ring and nothing to say
      writer_.reset();
      receiver_.reset();
      stream_ = {};
      bad_head_at_end_ = false;
    }
    violation_ = nullptr;
    dying_.store(false);
    died_.store(false);
    ready_.store(false);
  }

  void kill(unsigned /*k*/) noexcept override { dying_.store(true); }
  void resume() noexcept override {}  // nothing here is ever stopped
  void cancel(unsigned /*k*/, std::uint64_t /*task_id*/) noexcept override {}  // nor skipped
  bool try_stop(unsigned /*k*/) noexcept override {
    dying_.store(true);
    return true;
  }

  bool try_send(unsigned /*k*/, std::span<const std::byte> /*message*/) noexcept override {
    return ready_.load() && !died_.load();  // swallowed
  }
  bool pump(unsigned /*k*/) noexcept override { return false; }
  bool sending(unsigned /*k*/) const noexcept override { return false; }

  // As ShmTransport::poll: ready first, then every complete answer in the ring, then the death.
  detail::Event poll(unsigned k, detail::TailRouter& router) noexcept override {
    if (died_.load()) return {};
    if (!ready_.load()) {
      ready_.store(true);
      return event(detail::Event::Kind::ready);
    }
    while (violation_ == nullptr) {
      if (!dying_.load()) publish();
      const auto status =
          receiver_.next([&](const detail::ResponseHeader& h, std::span<const std::byte> head) {
            return router.open_tail(k, h.task_id, head, h.tail_bytes);
          });
      if (status == detail::AnswerReceiver::Status::answer) {
        detail::Event e = event(detail::Event::Kind::answer);
        e.task_id = receiver_.header().task_id;
        e.run_nanos = receiver_.header().run_nanos;
        e.payload = receiver_.payload();
        e.tail = receiver_.tail();
        return e;
      }
      if (status == detail::AnswerReceiver::Status::violation) {
        violation_ = receiver_.what();
        dying_.store(true);  // as ShmTransport kills a worker that broke the protocol
      } else if (dying_.load() || !can_publish()) {
        break;
      }
    }
    if (!dying_.load()) return {};
    died_.store(true);
    death_ = detail::Death{};
    death_.cause =
        violation_ != nullptr ? detail::Death::Cause::violation : detail::Death::Cause::ended;
    death_.pid = 4242;
    death_.signal = SIGKILL;
    death_.exit_code = -1;
    if (violation_ != nullptr) death_.text = violation_;
    detail::Event e = event(detail::Event::Kind::died);
    e.death = &death_;
    return e;
  }

  bool may_have_events(unsigned /*k*/) const noexcept override {
    return true;  // a hint, and only callers polling for answers ask (none here)
  }

  bool wait(std::chrono::steady_clock::time_point deadline, bool /*spin*/) noexcept override {
    if (has_news()) return true;
    std::unique_lock lock(mutex_);
    if (all_submitted_) {
      idle_ = true;
      idle_cv_.notify_all();
    }
    const bool woken = cv_.wait_until(lock, deadline, [&] { return woken_; });
    woken_ = false;
    return woken;
  }

  void wake() noexcept override {
    {
      std::lock_guard lock(mutex_);
      woken_ = true;
    }
    cv_.notify_all();
  }

  void callers_polling(int /*delta*/) noexcept override {}
  void release_cold_buffers() noexcept override {
    receiver_.release_if_cold(std::chrono::steady_clock::now());
  }
  std::string broken() noexcept override { return {}; }
  void close() noexcept override {}

 private:
  detail::RingMemory memory() const noexcept { return {control_.get(), data_.get(), ring_bytes_}; }

  static detail::Event event(detail::Event::Kind kind) noexcept {
    detail::Event e;
    e.kind = kind;
    return e;
  }

  bool drained() const noexcept { return control_->head.load() == control_->tail.load(); }

  /// The worker has more to publish, and room for it.
  bool can_publish() noexcept {
    if (!published_allowed_.load()) return false;
    return (!stream_.empty() && writer_.writable() > 0) || (bad_head_at_end_ && drained());
  }

  /// Something for the collector: an event to report, or input to publish. Collector thread.
  bool has_news() noexcept {
    if (!ready_.load() || (dying_.load() && !died_.load())) return true;
    if (violation_ != nullptr || died_.load()) return false;
    return can_publish() || receiver_.has_bytes();
  }

  // A worker answers only what it was asked: nothing is published before every job was sent.
  void publish() noexcept {
    if (!published_allowed_.load()) return;
    if (!stream_.empty()) {
      const std::size_t n = writer_.write_some(stream_.first(std::min(stream_.size(), piece_)));
      stream_ = stream_.subspan(n);
      // Like a real worker, which counts an answer only after publishing all of its bytes, the
      // fake claims its answers once the whole stream is in the ring. The claim itself may lie.
      if (stream_.empty() && lives_ == 1) control_->messages.store(claimed_);
      return;
    }
    if (bad_head_at_end_ && drained()) {
      // Once its answers are read, the worker scribbles an impossible head.
      bad_head_at_end_ = false;
      control_->head.store(control_->tail.load() + ring_bytes_ + 1);
    }
  }

  // Collector thread only, but for the atomics (try_send runs on the submitting thread).
  const std::size_t ring_bytes_;
  std::span<const std::byte> stream_;
  const std::size_t piece_;
  const std::uint64_t claimed_;
  bool bad_head_at_end_;
  std::unique_ptr<detail::RingControl> control_;
  std::unique_ptr<std::byte[]> data_;
  detail::Doorbell bell_;  // nobody sleeps on it: the collector sleeps in wait()
  std::atomic<std::uint32_t> wants_room_{0};
  detail::RingWriter writer_;        // the worker's end
  detail::AnswerReceiver receiver_;  // the parent's end
  unsigned lives_ = 0;
  const char* violation_ = nullptr;
  detail::Death death_;
  std::atomic<bool> ready_{false};  // reported
  std::atomic<bool> dying_{false};  // killed or stopped: publishes no more
  std::atomic<bool> died_{false};   // reported
  std::atomic<bool> published_allowed_{false};

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
  bool unpublished() const noexcept override { return inner_->unpublished(); }
  void publish() noexcept override { inner_->publish(); }

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
void submit(detail::Scheduler& scheduler, std::unique_ptr<detail::Completion> completion,
            JobCheck& check) {
  std::unique_ptr<detail::Job> job = scheduler.new_job();
  detail::begin_request(job->request);
  detail::finish_request(job->request, 0, 1);
  job->emplace_completion<Counted>(std::move(completion), check);
  scheduler.submit(std::move(job));
}

/// A value built from an answer's tail must be the one the whole answer decodes to.
template <class T>
void same_as_decoded(const T& value, std::span<const std::byte> answer) {
  try {
    multicore::Reader reader(answer);
    const T decoded = detail::read_outcome<T>(reader);
    detail::expect_end(reader);
    if (decoded != value) fail("a tail answer's value differs from the decoded answer");
  } catch (...) {
    fail("a tail answer was delivered, but the whole answer does not decode");
  }
}

template <class T, Format F>
void add_promise_job(detail::Scheduler& scheduler, JobCheck& job) {
  auto completion = std::make_unique<detail::PromiseCompletion<T, F>>();
  auto future = std::make_shared<std::future<T>>(completion->future());
  submit(scheduler, std::move(completion), job);
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
  inbox->vectors = scheduler.vectors();  // as a map's (see MapWindow)
  submit(scheduler, std::make_unique<detail::ChunkCompletion<T>>(inbox, 0, items), job);
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
  const std::size_t ring_bytes =
      (data[1] & 0x80u) != 0 ? fuzz::large_response_ring_bytes : fuzz::response_ring_bytes;
  const std::size_t piece = data[6] | (std::size_t{data[7]} << 8);
  const std::span<const std::byte> stream(
      reinterpret_cast<const std::byte*>(data) + fuzz::scheduler_prefix,
      size - fuzz::scheduler_prefix);

  auto owned = std::make_unique<FuzzTransport>(stream, ring_bytes, piece, claimed, bad_head);
  FuzzTransport& transport = *owned;
  std::vector<JobCheck> checks(jobs);
  {
    detail::Scheduler scheduler(std::move(owned), detail::SchedulerOptions{});
    for (std::size_t j = 0; j < jobs; ++j) {
      const std::uint8_t spec = data[2 + j];
      const std::size_t items = (spec >> 6) + 1u;
      const bool chunk = (spec & 0x20u) != 0;
      fuzz::with_type(spec & 0x1fu, [&]<class T>() {
        if constexpr (!std::is_void_v<T>) {
          if (chunk) {
            add_chunk_job<T>(scheduler, items, checks[j]);
            return;
          }
        }
        if (format == Format::json) {
          add_promise_job<T, Format::json>(scheduler, checks[j]);
        } else {
          add_promise_job<T, Format::binary>(scheduler, checks[j]);
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
