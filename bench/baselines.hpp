// SPDX-License-Identifier: MIT
// Baselines the benchmarks measure multicore against, written without the library: raw
// shared-memory ping-pong, a fork+pipe child, an in-process std::thread pool.
#pragma once

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <multicore/multicore.hpp>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace bench {

/// The trivial task every throughput benchmark uses: cheap, but not foldable away.
inline constexpr auto trivial = [](int x) { return x * 2 + 1; };

// The baselines spin with the same pause instruction as the library.
using multicore::detail::cpu_relax;

[[noreturn]] inline void fail(const std::string& what) {
  throw std::runtime_error("bench: " + what + ": " + std::strerror(errno));
}

// ---- anonymous shared memory and forked children --------------------------------------------

/// An anonymous MAP_SHARED mapping: inherited by fork, gone when the last process unmaps it.
class SharedMemory {
 public:
  explicit SharedMemory(std::size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) fail("mmap of " + std::to_string(bytes) + " bytes");
    data_ = static_cast<std::byte*>(p);
  }
  ~SharedMemory() { munmap(data_, bytes_); }
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return bytes_; }

  /// Constructs a T at the start of the mapping.
  template <class T>
  T* make() {
    static_assert(sizeof(T) <= 4096);
    return new (data_) T();
  }

 private:
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// A forked child running `body` (which must not return normally: it ends with _exit). The
/// child dies with the parent (PR_SET_PDEATHSIG); the destructor reaps it, so no benchmark
/// leaves a process behind. Call `stop` first to tell the child to leave.
class Child {
 public:
  template <class Body>
  explicit Child(Body&& body) {
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) fail("fork");
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      body();
      _exit(0);
    }
  }
  ~Child() { wait(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  /// Waits for the child to exit; returns its exit code (-1 if it was killed).
  int wait() noexcept {
    if (pid_ <= 0) return status_;
    int st = 0;
    while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = 0;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return status_;
  }

 private:
  pid_t pid_ = 0;
  int status_ = 0;
};

// ---- raw shared-memory ping-pong ------------------------------------------------------------

inline void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, nullptr, nullptr,
          0);
}

inline void futex_wake(std::atomic<std::uint32_t>* word) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr,
          0);
}

/// One direction of a ping-pong: a sequence number its writer bumps, and a flag its reader
/// raises before sleeping on the sequence's futex. Non-private futexes, so they work across
/// fork. Only the reader clears its own flag (no lost wake-ups).
struct alignas(64) Mailbox {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> sleeping{0};
  std::atomic<std::uint32_t> stop{0};

  /// Publishes `value`; wakes the reader if it went to sleep.
  void post(std::uint32_t value) noexcept {
    seq.store(value, std::memory_order_seq_cst);
    if (sleeping.load(std::memory_order_seq_cst) != 0) futex_wake(&seq);
  }

  /// Waits until seq != `seen`: spins up to `spins` pauses, then (if spins is not "forever")
  /// blocks on the futex. Returns the new value.
  std::uint32_t await(std::uint32_t seen, std::uint32_t spins) noexcept {
    for (std::uint32_t i = 0; i < spins; ++i) {
      const std::uint32_t v = seq.load(std::memory_order_acquire);
      if (v != seen) return v;
      cpu_relax();
    }
    for (;;) {
      sleeping.store(1, std::memory_order_seq_cst);
      const std::uint32_t v = seq.load(std::memory_order_seq_cst);
      if (v != seen) {
        sleeping.store(0, std::memory_order_relaxed);
        return v;
      }
      futex_wait(&seq, seen);
      sleeping.store(0, std::memory_order_relaxed);
    }
  }

  /// Waits until seq != `seen` by busy-polling only.
  std::uint32_t poll(std::uint32_t seen) noexcept {
    for (;;) {
      const std::uint32_t v = seq.load(std::memory_order_acquire);
      if (v != seen) return v;
      cpu_relax();
    }
  }
};
static_assert(sizeof(Mailbox) == 64);

/// Two mailboxes on separate cache lines: parent -> child, child -> parent.
struct PingPongShared {
  Mailbox to_child;
  Mailbox to_parent;
};

/// A child that answers every ping with a pong; `spins` == 0 means busy-poll only. The child
/// runs `on_ping` before each pong (the four-copy payload baseline copies bytes there).
class PingPong {
 public:
  static constexpr std::uint32_t forever = 0;

  explicit PingPong(std::uint32_t spins, std::function<void()> on_ping = {})
      : spins_(spins),
        memory_(4096),
        shared_(memory_.make<PingPongShared>()),
        child_([this, on_ping = std::move(on_ping)] { serve(on_ping); }) {}

  ~PingPong() {
    shared_->to_child.stop.store(1, std::memory_order_seq_cst);
    shared_->to_child.post(++seq_);
  }
  PingPong(const PingPong&) = delete;
  PingPong& operator=(const PingPong&) = delete;

  /// One round trip: ping, wait for the matching pong.
  void round_trip() noexcept {
    shared_->to_child.post(++seq_);
    wait(shared_->to_parent, seq_ - 1);
  }

 private:
  std::uint32_t wait(Mailbox& box, std::uint32_t seen) const noexcept {
    return spins_ == forever ? box.poll(seen) : box.await(seen, spins_);
  }

  void serve(const std::function<void()>& on_ping) noexcept {
    std::uint32_t seen = 0;
    for (;;) {
      seen = wait(shared_->to_child, seen);
      if (shared_->to_child.stop.load(std::memory_order_acquire) != 0) _exit(0);
      if (on_ping) on_ping();
      shared_->to_parent.post(seen);
    }
  }

  std::uint32_t spins_;
  std::uint32_t seq_ = 0;
  SharedMemory memory_;
  PingPongShared* shared_;
  Child child_;  // last: it starts (forks) once everything above exists
};

// ---- a minimal fork + pipe pool -------------------------------------------------------------

/// One forked child that reads 8 bytes from a pipe and writes 8 bytes back (value + 1).
class PipeChild {
 public:
  PipeChild() : fds_(make_pipes()), child_([this] { serve(); }) {
    close(fds_[0]);  // the child's ends
    close(fds_[3]);
  }
  ~PipeChild() {
    close(fds_[1]);  // EOF: the child leaves
    child_.wait();
    close(fds_[2]);
  }
  PipeChild(const PipeChild&) = delete;
  PipeChild& operator=(const PipeChild&) = delete;

  std::uint64_t call(std::uint64_t value) {
    if (write(fds_[1], &value, sizeof value) != sizeof value) fail("write to pipe");
    if (read(fds_[2], &value, sizeof value) != sizeof value) fail("read from pipe");
    return value;
  }

 private:
  // [0] child reads requests, [1] parent writes them, [2] parent reads answers, [3] child writes
  static std::array<int, 4> make_pipes() {
    int request[2];
    int answer[2];
    if (pipe2(request, O_CLOEXEC) != 0 || pipe2(answer, O_CLOEXEC) != 0) fail("pipe");
    return {request[0], request[1], answer[0], answer[1]};
  }

  void serve() noexcept {
    close(fds_[1]);
    close(fds_[2]);
    std::uint64_t v = 0;
    while (read(fds_[0], &v, sizeof v) == sizeof v) {
      ++v;
      if (write(fds_[3], &v, sizeof v) != sizeof v) _exit(1);
    }
    _exit(0);
  }

  std::array<int, 4> fds_;
  Child child_;
};

// ---- an in-process thread pool --------------------------------------------------------------

/// A plain thread pool: std::thread workers, one mutex + condition_variable queue, submit()
/// returns a std::future (what BS::thread_pool and most hand-written pools look like).
class ThreadPool {
 public:
  explicit ThreadPool(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  template <class F, class... Args>
  auto submit(F&& f, Args&&... args) {
    using R = std::invoke_result_t<std::decay_t<F>, std::decay_t<Args>...>;
    auto task = std::make_unique<Job<R, std::decay_t<F>, std::decay_t<Args>...>>(
        std::forward<F>(f), std::forward<Args>(args)...);
    std::future<R> future = task->promise.get_future();
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return future;
  }

 private:
  struct JobBase {
    virtual ~JobBase() = default;
    virtual void run() noexcept = 0;
  };

  template <class R, class F, class... Args>
  struct Job final : JobBase {
    template <class G, class... As>
    explicit Job(G&& g, As&&... as) : f(std::forward<G>(g)), args(std::forward<As>(as)...) {}
    void run() noexcept override {
      try {
        if constexpr (std::is_void_v<R>) {
          std::apply(f, std::move(args));
          promise.set_value();
        } else {
          promise.set_value(std::apply(f, std::move(args)));
        }
      } catch (...) {
        promise.set_exception(std::current_exception());
      }
    }
    F f;
    std::tuple<Args...> args;
    std::promise<R> promise;
  };

  void run() {
    for (;;) {
      std::unique_ptr<JobBase> job;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->run();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<JobBase>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

/// Environment knob: a positive integer, or `fallback`.
inline long env_long(const char* name, long fallback) noexcept {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return (end != v && n > 0) ? n : fallback;
}

}  // namespace bench
