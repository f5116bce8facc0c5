// SPDX-License-Identifier: MIT
// What the workers print: their stderr (and, tagged, their stdout) through pipes the parent
// reads, forwarded or tagged line by line, with the last lines of stderr kept for WorkerLost.
#pragma once

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "../../../errors.hpp"
#include "../../../options.hpp"
#include "../../util/process.hpp"
#include "../../util/threads.hpp"
#include "owned_descriptors.hpp"

namespace multicore::detail {

/// Most bytes of a worker's stderr kept for WorkerLost::output_tail().
inline constexpr std::size_t output_tail_bytes = 4096;

/// Longest line a tagged worker's output is passed on in: a longer one goes on in pieces of
/// this many bytes, each a line of its own.
inline constexpr std::size_t max_line_bytes = std::size_t{64} << 10;

/// The write ends of a new worker's pipes, for the fork server to hand to it (-1: none; then
/// the worker keeps the fork server's descriptor, the parent's own).
struct WorkerPipes {
  int out = -1;  ///< becomes the worker's stdout (tagged only)
  int err = -1;  ///< becomes the worker's stderr (always)
};

/// The parent's side of every worker's pipes, and the thread that reads them.
///
/// One reader thread per pool, in epoll over every pipe: the collector never reads or writes
/// output, so a slow terminal can stall the reader (and, through full pipes, the workers that
/// print, as it would without a pool) but never the collection of answers. Only the reader
/// writes to the parent's stdout/stderr or calls on_worker_output, so lines never interleave.
///
/// Worker stdout stays the parent's own stdout in `inherit` mode: only stderr is needed for
/// the tail, and that keeps one pipe (one descriptor in the parent) per worker and adds no copy
/// to the output of tasks that print a lot.
///
/// Invariant: every descriptor is held by one Pipe, in pipes_ (and epoll) from open() until it
/// reads end-of-file or stop(); mutex_ guards pipes_, slots_ and queue_.
class WorkerOutputs {
 public:
  using Callback = std::function<void(unsigned, WorkerStream, std::string_view)>;
  /// Where an MPI agent sends its workers' lines instead (to rank 0): `(slot, pid, stream,
  /// line)`.
  using Forward = std::function<void(unsigned, int, WorkerStream, std::string_view)>;
  /// What the transport knows of slot k's live worker (from shared memory): its pid, and
  /// whether it is idle with its stdio flushed, so that what it printed up to now is in its
  /// pipes.
  struct Probe {
    std::function<int(unsigned)> pid;
    std::function<bool(unsigned)> idle;
  };

  WorkerOutputs(unsigned workers, WorkerOutput mode, Callback callback, Probe probe)
      : tagged_(mode == WorkerOutput::tagged || callback),
        callback_(std::move(callback)),
        pid_(std::move(probe.pid)),
        idle_(std::move(probe.idle)),
        slots_(workers) {
    epoll_ = above_stdio(epoll_create1(EPOLL_CLOEXEC));
    wake_fd_ = above_stdio(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (epoll_ < 0 || wake_fd_ < 0) {
      const int err = errno;
      close_fds();
      throw SystemError(epoll_ < 0 ? "epoll_create1" : "eventfd", err);
    }
    try {
      OwnedDescriptors::instance().add(epoll_);
      OwnedDescriptors::instance().add(wake_fd_);
    } catch (...) {
      close_fds();
      throw;
    }
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = 0;  // pipe ids start at 1
    epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_fd_, &e);
  }

  /// Starts the reader thread, after the fork server was forked (see ShmTransport). Throws
  /// SystemError when it cannot start (a process limit, RLIMIT_NPROC, counts threads).
  void start_reader() {
    try {
      thread_ = start_own_thread("multicore-out", [this] { read_loop(); });
    } catch (const std::system_error& e) {
      throw SystemError("pthread_create", e.code().value());
    }
  }

  ~WorkerOutputs() { stop(); }
  WorkerOutputs(const WorkerOutputs&) = delete;
  WorkerOutputs& operator=(const WorkerOutputs&) = delete;

  /// Whether the calling thread is handing this object's lines to the application's callback
  /// (or writing them) right now.
  bool delivering_here() const noexcept { return delivering() == this; }

  /// Makes slot k's pipes for its next worker; the caller hands `WorkerPipes` to it and then
  /// closes them. Throws SystemError when no pipe can be made.
  WorkerPipes open(unsigned k) {
    WorkerPipes w;
    std::lock_guard lock(mutex_);
    // Pipes of a previous worker whose death was not reported (stopped and restarted in a
    // Cluster's next pool) keep its name and stay out of the new worker's tail.
    for (auto& entry : pipes_) {
      Pipe& p = entry.second;
      if (p.slot != k || p.detached) continue;
      if (p.pid == 0) p.pid = pid_(k);
      p.detached = true;
    }
    slots_[k] = Slot{};
    w.err = add(k, WorkerStream::err);
    if (tagged_) {
      try {
        w.out = add(k, WorkerStream::out);
      } catch (...) {
        ::close(w.err);
        throw;
      }
    }
    return w;
  }

  /// Slot k's worker is dead (reaped: whatever it wrote is in its pipes). Reads its pipes dry
  /// here, without blocking, flushes its last partial lines and returns the end of its stderr,
  /// starting at a line. A process the worker started may still hold a pipe: the reader then
  /// reads it on, under the dead worker's name.
  std::string died(unsigned k, int pid) {
    std::string tail;
    {
      std::lock_guard lock(mutex_);
      Slot& slot = slots_[k];
      for (auto it = pipes_.begin(); it != pipes_.end();) {
        Pipe& p = it->second;
        if (p.slot != k || p.detached) {
          ++it;
          continue;
        }
        const bool open = read_dry(p);
        p.detached = true;
        p.pid = pid;
        flush_partial(p);
        it = open ? std::next(it) : close_pipe(it);
      }
      tail = start_at_line(slot.tail);
      slot.tail.clear();
    }
    wake();
    return tail;
  }

  /// A line that a worker elsewhere printed (an MPI agent's, `where` says which), delivered
  /// like this machine's workers' lines: tagged, or handed to the callback, as worker `k`.
  /// Any thread.
  void deliver_remote(unsigned k, int pid, WorkerStream stream, std::string where,
                      std::string line) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back({k, pid, stream, true, std::move(line), std::move(where)});
    }
    wake();
  }

  /// From now on, lines go to `*forward` instead of being written or handed to the callback
  /// (an MPI agent sends them to rank 0). Set before any worker prints; `*forward` must outlive
  /// this object. Tagged mode or a callback only: without them, output is not read in lines.
  void forward_to(const Forward* forward) noexcept {
    forward_.store(forward, std::memory_order_release);
  }

  /// Reads every pipe dry, flushes partial lines, writes what is left and ends the reader.
  /// Call once the workers are gone. Idempotent.
  void stop() noexcept {
    {
      std::lock_guard lock(mutex_);
      for (auto it = pipes_.begin(); it != pipes_.end();) {
        read_dry(it->second);
        flush_partial(it->second);
        it = close_pipe(it);
      }
      stopping_ = true;
    }
    wake();
    if (thread_.joinable()) thread_.join();
    close_fds();
  }

 private:
  struct Pipe {
    int fd = -1;
    unsigned slot = 0;
    WorkerStream stream = WorkerStream::err;
    bool detached = false;  // its worker died: its slot's next worker has other pipes
    int pid = 0;            // its worker's, once known
    std::string partial;    // tagged: the line so far
  };
  struct Slot {
    std::string tail;  // the end of stderr (at most twice output_tail_bytes)
  };
  /// A piece of output for the reader to deliver: a line (tagged) or raw stderr bytes.
  struct Piece {
    unsigned slot = 0;
    int pid = 0;
    WorkerStream stream = WorkerStream::err;
    bool line = false;
    std::string text;
    std::string where;  // a remote worker's: "rank 1 (node07)"
  };

  /// A nonblocking pipe for slot k's `stream`, read here; returns its write end.
  int add(unsigned k, WorkerStream stream) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      // Two descriptors per worker can pass the usual soft limit of 1024 with 1024 workers:
      // raise it to the hard limit once, as Go's runtime does at start.
      if (errno != EMFILE || !raise_descriptor_limit() || pipe2(fds, O_CLOEXEC) != 0) {
        throw SystemError("pipe", errno);
      }
    }
    // Never 0, 1 or 2, even when the application closed them (see above_stdio).
    if (!pair_above_stdio(fds)) throw SystemError("fcntl", errno);
    try {
      // The read end stays here as long as the pipe lives. (The write end goes to the worker at
      // once: ShmTransport::start closes it right after handing it over.)
      OwnedDescriptors::instance().add(fds[0]);
    } catch (...) {
      ::close(fds[0]);
      ::close(fds[1]);
      throw;
    }
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    const std::uint64_t id = ++last_id_;
    Pipe& p = pipes_[id];
    p.fd = fds[0];
    p.slot = k;
    p.stream = stream;
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = id;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, p.fd, &e);
    return fds[1];
  }

  static bool raise_descriptor_limit() noexcept {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return false;
    limit.rlim_cur = limit.rlim_max;
    return setrlimit(RLIMIT_NOFILE, &limit) == 0;
  }

  std::map<std::uint64_t, Pipe>::iterator close_pipe(std::map<std::uint64_t, Pipe>::iterator it) {
    epoll_ctl(epoll_, EPOLL_CTL_DEL, it->second.fd, nullptr);
    OwnedDescriptors::instance().remove(it->second.fd);
    ::close(it->second.fd);
    return pipes_.erase(it);
  }

  enum class Read { data, empty, end };

  /// Reads once, at most a buffer. An error other than EINTR counts as the end.
  Read read_once(Pipe& p) {
    ssize_t n = 0;
    while ((n = ::read(p.fd, buffer_.data(), buffer_.size())) < 0 && errno == EINTR) {
    }
    if (n < 0) return errno == EAGAIN ? Read::empty : Read::end;
    if (n == 0) return Read::end;
    take(p, std::string_view(buffer_.data(), static_cast<std::size_t>(n)));
    return Read::data;
  }

  /// Reads until the pipe is empty; false at end-of-file. Bounded: a process the worker started
  /// may hold the pipe and write on for ever, but a dead worker's bytes are at most what the
  /// pipe holds (64 KiB unless it was enlarged, 1 MiB at most without privileges).
  bool read_dry(Pipe& p) {
    Read r = Read::data;
    for (std::size_t read = 0; read < dry_read_limit && (r = read_once(p)) == Read::data;
         read += buffer_.size()) {
    }
    return r != Read::end;
  }

  void take(Pipe& p, std::string_view bytes) {
    if (p.stream == WorkerStream::err && !p.detached) {
      std::string& tail = slots_[p.slot].tail;
      tail.append(bytes);
      // Keeps one byte before the window: start_at_line() sees whether a line starts there.
      if (tail.size() > 2 * output_tail_bytes) tail.erase(0, tail.size() - output_tail_bytes - 1);
    }
    if (!tagged_) {
      queue_.push_back({p.slot, 0, WorkerStream::err, false, std::string(bytes), {}});
      return;
    }
    for (std::size_t end = 0; (end = bytes.find('\n')) != std::string_view::npos;) {
      extend_partial(p, bytes.substr(0, end));
      queue_line(p);
      bytes.remove_prefix(end + 1);
    }
    extend_partial(p, bytes);
  }

  /// Appends to p's line so far; a line longer than max_line_bytes goes on in pieces of that
  /// many bytes. Without this bound a worker printing without newlines (a progress bar drawn
  /// with \r, binary garbage) grew it, in this process, until its task ended.
  void extend_partial(Pipe& p, std::string_view bytes) {
    while (p.partial.size() + bytes.size() > max_line_bytes) {
      const std::size_t n = max_line_bytes - p.partial.size();
      p.partial.append(bytes.substr(0, n));
      queue_line(p);
      bytes.remove_prefix(n);
    }
    p.partial.append(bytes);
  }

  void flush_partial(Pipe& p) {
    if (!p.partial.empty()) queue_line(p);
  }

  void queue_line(Pipe& p) {
    // The worker publishes its pid before it runs any user code, so before its first byte.
    if (p.pid == 0) p.pid = pid_(p.slot);
    queue_.push_back({p.slot, p.pid, p.stream, true, std::move(p.partial), {}});
    p.partial.clear();
  }

  /// The last output_tail_bytes of `tail`, from the first line that starts in them.
  static std::string start_at_line(const std::string& tail) {
    if (tail.size() <= output_tail_bytes) return tail;
    std::size_t from = tail.size() - output_tail_bytes;
    const std::size_t newline = tail.find('\n', from - 1);
    if (newline != std::string::npos && newline + 1 < tail.size()) from = newline + 1;
    return tail.substr(from);
  }

  void wake() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
  }

  void read_loop() noexcept {
    // The application's signal handlers do not run here; a reader of the parent's stdout that
    // went away gives EPIPE, not a SIGPIPE that would end the application.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, nullptr);
    std::array<epoll_event, 64> events{};
    std::vector<Piece> pieces;
    for (;;) {
      bool partials = false;
      {
        std::lock_guard lock(mutex_);
        pieces.swap(queue_);
        partials = std::any_of(pipes_.begin(), pipes_.end(), [](const auto& p) {
          return !p.second.partial.empty() && !p.second.detached;
        });
      }
      deliver(pieces);
      pieces.clear();
      {
        std::lock_guard lock(mutex_);
        if (stopping_ && queue_.empty()) return;
      }
      // A partial line waits for the rest; once its worker is idle (its tasks over, its stdio
      // flushed) there is no rest to wait for: look again soon.
      const int n = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()),
                               partials ? partial_line_wait_ms : -1);
      std::lock_guard lock(mutex_);
      for (int i = 0; i < n; ++i) {
        const std::uint64_t id = events[static_cast<std::size_t>(i)].data.u64;
        if (id == 0) {
          std::uint64_t count = 0;
          [[maybe_unused]] const ssize_t r = ::read(wake_fd_, &count, sizeof count);
          continue;
        }
        const auto it = pipes_.find(id);
        if (it == pipes_.end()) continue;  // closed meanwhile
        if (read_once(it->second) == Read::end) {
          flush_partial(it->second);
          close_pipe(it);
        }
      }
      if (partials) flush_idle_partials();
    }
  }

  /// Flushes the partial lines of idle workers. Idle is read first: what the worker printed
  /// before it went idle is then in the pipe, and read dry below.
  void flush_idle_partials() {
    for (auto it = pipes_.begin(); it != pipes_.end();) {
      Pipe& p = it->second;
      if (p.partial.empty() || p.detached || !idle_(p.slot)) {
        ++it;
        continue;
      }
      const bool open = read_dry(p);
      flush_partial(p);
      it = open ? std::next(it) : close_pipe(it);
    }
  }

  /// The object whose deliver() the calling thread is in, if any (see delivering_here()).
  static const WorkerOutputs*& delivering() noexcept {
    thread_local const WorkerOutputs* outputs = nullptr;
    return outputs;
  }
  struct Delivering {
    explicit Delivering(const WorkerOutputs* o) noexcept { delivering() = o; }
    ~Delivering() { delivering() = nullptr; }
    Delivering(const Delivering&) = delete;
    Delivering& operator=(const Delivering&) = delete;
  };

  /// Writes (or hands to the callback) what was read; only this thread does.
  void deliver(const std::vector<Piece>& pieces) {
    const Delivering marked(this);
    std::string out[2];  // batches for stdout, stderr: whole lines, at most PIPE_BUF if possible
    // "[worker 3 pid 4242] " ("[worker 5 pid 4242 rank 1 (node07)] " over MPI), made again
    // when the worker changes.
    std::string prefix;
    unsigned prefix_slot = 0;
    int prefix_pid = -1;
    const Forward* forward = forward_.load(std::memory_order_acquire);
    const auto write_out = [&](int stream) {
      std::string& b = out[stream];
      write_all(stream == 0 ? STDOUT_FILENO : STDERR_FILENO, b);
      b.clear();
    };
    for (const Piece& piece : pieces) {
      const int stream = piece.stream == WorkerStream::out ? 0 : 1;
      if (!piece.line) {
        write_all(STDERR_FILENO, piece.text);
        continue;
      }
      if (forward != nullptr) {
        try {
          (*forward)(piece.slot, piece.pid, piece.stream, piece.text);
        } catch (...) {  // out of memory: the line is lost, the worker is not
        }
        continue;
      }
      if (callback_) {
        try {
          callback_(piece.slot, piece.stream, piece.text);
        } catch (...) {  // the application's logger failed: nothing here can do better
        }
        continue;
      }
      if (piece.slot != prefix_slot || piece.pid != prefix_pid) {
        prefix_slot = piece.slot;
        prefix_pid = piece.pid;
        prefix = "[worker " + std::to_string(piece.slot) + " pid " + std::to_string(piece.pid) +
                 (piece.where.empty() ? "" : " ") + piece.where + "] ";
      }
      std::string& b = out[stream];
      if (!b.empty() && b.size() + prefix.size() + piece.text.size() + 1 > PIPE_BUF) {
        write_out(stream);
      }
      b.append(prefix).append(piece.text).push_back('\n');
    }
    write_out(0);
    write_out(1);
  }

  static void write_all(int fd, std::string_view bytes) noexcept {
    while (!bytes.empty()) {
      const ssize_t n = ::write(fd, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // nowhere to write (closed, EPIPE): drop it, as a write would
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  void close_fds() noexcept {
    for (int fd : {epoll_, wake_fd_}) {
      if (fd < 0) continue;
      OwnedDescriptors::instance().remove(fd);
      ::close(fd);
    }
    epoll_ = wake_fd_ = -1;
  }

 private:
  static constexpr int partial_line_wait_ms = 20;
  static constexpr std::size_t dry_read_limit = std::size_t{1} << 20;

  const bool tagged_;
  const Callback callback_;
  const std::function<int(unsigned)> pid_;
  const std::function<bool(unsigned)> idle_;
  std::atomic<const Forward*> forward_{nullptr};
  std::mutex mutex_;
  std::map<std::uint64_t, Pipe> pipes_;
  std::vector<Slot> slots_;
  std::vector<Piece> queue_;
  // Under mutex_. Left uninitialised: zero-filling it touched 16 pages of the parent's heap as
  // every pool was made, just before the fork server shares them copy-on-write.
  std::array<char, 65536> buffer_;
  std::uint64_t last_id_ = 0;
  bool stopping_ = false;
  int epoll_ = -1;
  int wake_fd_ = -1;
  std::thread thread_;
};

}  // namespace multicore::detail
