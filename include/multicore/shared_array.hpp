// SPDX-License-Identifier: MIT
// SharedArray<T>: a fixed-size array in shared memory that tasks read and write in place.
#pragma once

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "codec.hpp"
#include "detail/transport/shm/owned_descriptors.hpp"
#include "detail/util/keep_alive.hpp"
#include "detail/util/linkage.hpp"
#include "errors.hpp"

namespace multicore {

namespace detail {

/// What crosses to a worker for a SharedArray: the name of the memory's descriptor in the
/// process that made it, and the identity of the file it must turn out to be.
///
/// How the worker gets the memory: it opens /proc/<pid>/fd/<fd>, a new open of the same
/// (unlinked, nameless) memfd. Workers are forked by a fork server made with the pool, so an
/// array made later is not among their descriptors. The alternatives are worse: pidfd_getfd
/// (Linux >= 5.6) needs ptrace *attach* rights over the parent, which Yama's default
/// ptrace_scope 1 refuses to a descendant; SCM_RIGHTS needs a socket to every worker beside
/// the rings, and a message on it for every task. Opening /proc/<pid>/fd needs only ptrace
/// *read* rights (same user and a dumpable parent; Yama does not restrict it), and works with
/// every transport on the same machine. The opened file is checked against (dev, ino, bytes),
/// so a descriptor number that was meanwhile reused can never map the wrong memory.
struct SharedHandle {
  std::int64_t pid = 0;
  std::int64_t fd = -1;  ///< -1: an empty array, no memory
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t bytes = 0;
  std::array<char, 40> boot_id{};  ///< the machine's (/proc/sys/kernel/random/boot_id)
};
static_assert(sizeof(SharedHandle) == 80, "no padding: the handle is sent as its bytes");

/// This machine's boot id: a handle from another machine (an MPI rank) names no file here.
inline const std::array<char, 40>& boot_id() {
  static const std::array<char, 40> id = [] {
    std::array<char, 40> value{};
    if (std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "re")) {
      const std::size_t n = std::fread(value.data(), 1, 36, f);
      (void)n;  // a short read leaves zeros: still this machine's value every time
      std::fclose(f);
    }
    return value;
  }();
  return id;
}

/// One mapping of a SharedArray's memory in this process. The one that made the memory owns
/// its descriptor (which workers open); a worker's mapping keeps none. Mappings are
/// MADV_DONTFORK: a process forked later (a pool's fork server) gets only handles, never the
/// pages, so dropping the last handle gives the memory back. A copy of this object that a fork
/// carried into a child does nothing when destroyed there (`owner`).
class SharedMemory {
 public:
  /// `bytes` of new zero-filled memory (memfd_create: no name anywhere, gone with the last
  /// descriptor and mapping, so even a SIGKILLed parent leaves nothing).
  explicit SharedMemory(std::size_t bytes) {
    handle_.pid = getpid();
    handle_.bytes = bytes;
    handle_.boot_id = boot_id();
    const int fd = memfd_create("multicore-shared-array", MFD_CLOEXEC);
    if (fd < 0) throw SystemError("memfd_create", errno);
    handle_.fd = fd;
    struct stat st {};
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0 || fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw SystemError("ftruncate", err);
    }
    handle_.dev = st.st_dev;
    handle_.ino = st.st_ino;
    try {
      map(fd, true);
    } catch (...) {
      ::close(fd);
      throw;
    }
    // A fork server forked from now on closes it, or it would keep the memory alive.
    auto& owned = OwnedDescriptors::instance();
    std::lock_guard lock(owned.mutex);
    owned.fds.push_back(fd);
    owns_fd_ = true;
  }

  /// Maps the memory `handle` names, made by another process (a worker's view).
  SharedMemory(const SharedHandle& handle, bool writable) : handle_(handle) {
    const std::string path =
        "/proc/" + std::to_string(handle.pid) + "/fd/" + std::to_string(handle.fd);
    const int fd = ::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      throw SerializationError("multicore: cannot open the SharedArray's memory (" + path +
                               "): " + std::generic_category().message(err) +
                               (err == EACCES || err == EPERM
                                    ? " (the worker may not read the parent's descriptors: "
                                      "another user, or a non-dumpable parent)"
                                    : ""));
    }
    struct stat st {};
    const bool same = fstat(fd, &st) == 0 && st.st_dev == handle.dev && st.st_ino == handle.ino &&
                      static_cast<std::uint64_t>(st.st_size) == handle.bytes;
    try {
      if (!same) {
        throw SerializationError(
            "multicore: the SharedArray's memory is gone (the parent dropped every handle "
            "before the task could open it)");
      }
      map(fd, writable);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);  // the mapping keeps the memory
  }

  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  ~SharedMemory();

  void* data() const noexcept { return data_; }
  const SharedHandle& handle() const noexcept { return handle_; }

 private:
  void map(int fd, bool writable) {
    const int protection = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    void* p = mmap(nullptr, handle_.bytes, protection, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) throw SystemError("mmap", errno);
    madvise(p, handle_.bytes, MADV_DONTFORK);
    data_ = p;
  }

  SharedHandle handle_;
  void* data_ = nullptr;
  pid_t owner_ = getpid();
  bool owns_fd_ = false;  // made here (not a view of memory made elsewhere)
};

/// A worker's mappings of arrays made by its parent, so that the tasks of one array map it
/// once. Bounded: before each lookup it drops the mappings whose memory the parent let go
/// (its descriptor is closed, or now names another file), and it keeps at most `capacity`,
/// least recently used first out. A mapping a task still holds stays until the task drops it.
class SharedMappings {
 public:
  static constexpr std::size_t capacity = 16;

  /// Never destroyed: arrays in static storage may let go of their memory after static
  /// destructors ran. Made at static initialisation (see made_early below), before any thread:
  /// one making it at the moment another forks would leave its guard taken in the child.
  static SharedMappings& instance() {
    static auto* cache = new SharedMappings;
    return *cache;
  }

  /// Taken by open() and forget(); the child of a fork gets a fresh one (see the constructor).
  std::mutex mutex;

  MULTICORE_DECL std::shared_ptr<SharedMemory> open(const SharedHandle& handle, bool writable);

  /// Drops this process's own second mapping of memory it made and now lets go (an inline
  /// pool decodes arrays in the process that made them).
  MULTICORE_DECL void forget(const SharedHandle& handle);

  /// Mappings held (for tests).
  std::size_t size() {
    std::lock_guard lock(mutex);
    return owner_ == getpid() ? entries_.size() : 0;
  }

 private:
  struct Entry {
    std::shared_ptr<SharedMemory> memory;
    bool writable;
  };

  /// Whether the parent still has the descriptor the handle names, on the same file.
  MULTICORE_DECL static bool still_there(const SharedHandle& h);

  SharedMappings() {
    self_ = this;
    pthread_atfork(nullptr, nullptr, [] { self_->after_fork(); });
  }

  /// In the child of a fork, while it has one thread: a thread of the parent may have held the
  /// lock, or been changing the list, at the moment of the fork. The list's mappings are the
  /// parent's (their destructors do nothing here), so it is left behind rather than destroyed.
  void after_fork() noexcept {
    new (&mutex) std::mutex;
    new (&entries_) std::vector<Entry>;
    owner_ = getpid();
  }

  static inline SharedMappings* self_ = nullptr;
  std::vector<Entry> entries_;
  pid_t owner_ = getpid();
};

/// See SharedMappings::instance().
inline SharedMappings& made_early = SharedMappings::instance();

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL std::shared_ptr<SharedMemory> SharedMappings::open(const SharedHandle& handle,
                                                                  bool writable) {
  std::lock_guard lock(mutex);
  if (owner_ != getpid()) {  // a fork's copy: those mappings are not in this process
    entries_.clear();        // (their destructors do nothing here)
    owner_ = getpid();
  }
  std::erase_if(entries_, [](const Entry& e) { return !still_there(e.memory->handle()); });
  auto found = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) {
    const SharedHandle& h = e.memory->handle();
    return e.writable == writable && h.pid == handle.pid && h.dev == handle.dev &&
           h.ino == handle.ino;
  });
  if (found != entries_.end()) {
    std::rotate(entries_.begin(), found, found + 1);  // most recently used first
  } else {
    if (entries_.size() == capacity) entries_.pop_back();
    entries_.insert(entries_.begin(), {std::make_shared<SharedMemory>(handle, writable), writable});
  }
  return entries_.front().memory;
}

MULTICORE_DECL void SharedMappings::forget(const SharedHandle& handle) {
  std::lock_guard lock(mutex);
  if (owner_ != getpid()) return;
  std::erase_if(entries_, [&](const Entry& e) {
    return e.memory->handle().dev == handle.dev && e.memory->handle().ino == handle.ino;
  });
}

MULTICORE_DECL bool SharedMappings::still_there(const SharedHandle& h) {
  const std::string path = "/proc/" + std::to_string(h.pid) + "/fd/" + std::to_string(h.fd);
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && st.st_dev == h.dev && st.st_ino == h.ino;
}

MULTICORE_DECL SharedMemory::~SharedMemory() {
  if (owner_ != getpid()) return;
  if (data_ != nullptr) munmap(data_, handle_.bytes);
  if (owns_fd_) {
    SharedMappings::instance().forget(handle_);
    auto& owned = OwnedDescriptors::instance();
    {
      std::lock_guard lock(owned.mutex);
      std::erase(owned.fds, static_cast<int>(handle_.fd));
    }
    ::close(static_cast<int>(handle_.fd));
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace detail

/// A fixed-size array of T in shared memory, zero-filled, that tasks read and write in place.
///
///     void fill(std::size_t begin, std::size_t end, multicore::SharedArray<double> out);
///     multicore::SharedArray<double> out(n);   // at any time, also after the pool was made
///     std::vector<std::future<void>> done;
///     for (auto [begin, end] : multicore::ranges(n))
///       done.push_back(pool.submit(fill, begin, end, out));
///     for (auto& f : done) f.get();
///     std::span<double> s = out.span();          // what the tasks wrote
///
/// Copies share the memory (a copy is a handle, like a std::shared_ptr). Passed to a task, as
/// an argument, a map item or a member of a function object with a cereal serialize() (a
/// lambda that captures one is not trivially copyable, so it cannot be sent), only a handle
/// crosses: each worker maps the memory once
/// and the task works on it in place; what tasks write is visible to the caller once their
/// futures are ready (tasks that write the same element at once race, as threads would). The
/// memory lives while a handle to it exists, or a task that got one is queued or running; it
/// has no name (nothing in /dev/shm) and nothing outlives the process that made it. A worker
/// keeps a dropped array mapped until it next receives a SharedArray (or exits).
///
/// `SharedArray<const T>` (from read_only()) cannot be written through, and workers map it
/// read-only. Only workers on the same machine can be given one: a worker on another machine
/// (an MPI rank) fails the task with SerializationError. Copying a handle is thread-safe;
/// the elements are as thread-safe as a plain array.
template <class T>
class SharedArray {
  using element = std::remove_const_t<T>;
  static_assert(std::is_trivially_copyable_v<element> && !std::is_volatile_v<T>,
                "multicore: SharedArray<T> needs a trivially copyable T (its bytes are shared "
                "between processes as they are: no pointers to the heap, no destructor)");

 public:
  using value_type = element;

  /// An empty array.
  SharedArray() noexcept = default;

  /// `n` zero-filled elements. Throws multicore::SystemError if the memory cannot be made.
  explicit SharedArray(std::size_t n) requires(!std::is_const_v<T>) : size_(n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) {
      throw std::length_error("multicore: SharedArray size overflows size_t");
    }
    if (n != 0) {
      memory_ = std::make_shared<detail::SharedMemory>(n * sizeof(T));
      data_ = static_cast<T*>(memory_->data());
    }
  }

  SharedArray(const SharedArray&) = default;
  SharedArray& operator=(const SharedArray&) = default;
  /// Leaves `other` empty.
  SharedArray(SharedArray&& other) noexcept
      : memory_(std::move(other.memory_)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  SharedArray& operator=(SharedArray&& other) noexcept {
    memory_ = std::move(other.memory_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    return *this;
  }
  ~SharedArray() = default;

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // The address is kept here, not read through memory_: in a loop `y[i] = f(x[i])` the
  // compiler can then keep it in a register (a store of a double cannot change a double*),
  // as with a plain pointer; read through memory_, it was loaded and checked for null again at
  // every element.
  T* data() const noexcept { return data_; }
  std::span<T> span() const noexcept { return {data(), size_}; }
  T& operator[](std::size_t i) const noexcept { return data()[i]; }
  T* begin() const noexcept { return data(); }
  T* end() const noexcept { return data() + size_; }

  /// The same memory, as an array that cannot be written (workers map it read-only).
  SharedArray<const element> read_only() const noexcept {
    SharedArray<const element> view;
    view.memory_ = memory_;
    view.data_ = data_;
    view.size_ = size_;
    return view;
  }

 private:
  template <class>
  friend class SharedArray;
  friend struct Codec<SharedArray>;

  std::shared_ptr<detail::SharedMemory> memory_;
  T* data_ = nullptr;  // memory_'s address in this process
  std::size_t size_ = 0;
};

/// Sends the handle, never the elements (see SharedArray).
template <class T>
struct Codec<SharedArray<T>> {
  static void encode(Writer& out, const SharedArray<T>& array) {
    const detail::SharedHandle handle =
        array.memory_ ? array.memory_->handle() : detail::SharedHandle{};
    const std::uint64_t size = array.size_;
    out.write(&size, sizeof size);
    out.write(&handle, sizeof handle);
    // The worker opens the memory through the parent's descriptor: the job keeps it open.
    if (array.memory_ && detail::keep_alive_sink() != nullptr) {
      detail::keep_alive_sink()->push_back(array.memory_);
    }
  }

  static SharedArray<T> decode(Reader& in) {
    std::uint64_t size = 0;
    detail::SharedHandle handle;
    in.read(&size, sizeof size);
    in.read(&handle, sizeof handle);
    SharedArray<T> array;
    if (handle.fd < 0) return array;
    if (size > handle.bytes / sizeof(T)) {
      throw SerializationError("multicore: corrupt SharedArray handle");
    }
    if (handle.boot_id != detail::boot_id()) {
      throw SerializationError(
          "multicore: a SharedArray cannot be sent to a worker on another machine (an MPI "
          "rank): it is memory of the machine that made it");
    }
    array.memory_ = detail::SharedMappings::instance().open(handle, !std::is_const_v<T>);
    array.data_ = static_cast<T*>(array.memory_->data());
    array.size_ = static_cast<std::size_t>(size);
    return array;
  }
};

}  // namespace multicore
