// SPDX-License-Identifier: MIT
// StopSource and StopToken: asking tasks in worker processes to stop, and cancelling those
// that have not started.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "detail/transport/shm/stop_table.hpp"
#include "detail/util/linkage.hpp"
#include "detail/util/process.hpp"
#include "errors.hpp"

namespace multicore {

class StopToken;

namespace detail {

/// A pool that cancels its jobs carrying `token` when its source is stopped; `grace` (null: no
/// kill) is how long a task of it may still run before its worker is killed.
class StopListener {
 public:
  virtual void stop_requested(const StopToken& token,
                              const std::chrono::nanoseconds* grace) noexcept = 0;

 protected:
  ~StopListener() = default;
};

/// The pools of this process, told of every request_stop(). Each entry remembers the process it
/// was made in: a worker's copy of the parent's list (a fork) names pools that are not its own.
///
/// Pools are told without the list's lock held: telling one waits for its collector, which may
/// be running a Codec that stops another source (and so tells the pools too). Instead, remove()
/// waits until no one is telling the pools, so a pool is never told after it was removed.
class StopListeners {
 public:
  MULTICORE_DECL void add(StopListener* l);
  /// Waits while other threads tell pools. This thread may be telling them itself (a Codec's
  /// code destroyed a pool): notify() then skips the pool, no longer in the list.
  MULTICORE_DECL void remove(StopListener* l) noexcept;
  MULTICORE_DECL void notify(const StopToken& token,
                             const std::chrono::nanoseconds* grace) noexcept;

 private:
  struct Entry {
    StopListener* listener;
    std::uint64_t generation;
  };
  MULTICORE_DECL bool listed(StopListener* l) noexcept;
  /// How deep this thread is in notify().
  static int& telling_here() noexcept {
    thread_local int depth = 0;
    return depth;
  }
  std::mutex mutex_;
  std::condition_variable told_;
  std::vector<Entry> list_;
  int telling_ = 0;  // notify() calls under way, every thread
};

/// Never destroyed: pools in static storage may unregister after static destructors ran.
MULTICORE_DECL StopListeners& stop_listeners();

/// Whether `token`'s source was stopped, false for a token of another process image.
/// Noexcept, for the scheduler.
inline bool stop_seen(const StopToken& token) noexcept;

/// A source's flag as it is now in this process's table, for other processes' mirrors (see
/// StopTable::mirror_word): none for a default token or one of another table.
struct StopFlag {
  std::uint32_t slot = 0;
  std::uint32_t word = 0;
};
inline std::optional<StopFlag> stop_flag(const StopToken& token) noexcept;

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL void StopListeners::add(StopListener* l) {
  std::lock_guard lock(mutex_);
  list_.push_back({l, process_generation()});
}

MULTICORE_DECL void StopListeners::remove(StopListener* l) noexcept {
  std::unique_lock lock(mutex_);
  std::erase_if(list_, [&](const Entry& e) { return e.listener == l; });
  if (!telling_here()) told_.wait(lock, [&] { return telling_ == 0; });
}

MULTICORE_DECL void StopListeners::notify(const StopToken& token,
                                          const std::chrono::nanoseconds* grace) noexcept {
  std::vector<StopListener*> listeners;
  {
    std::lock_guard lock(mutex_);
    try {
      for (const Entry& e : list_) {
        if (e.generation == process_generation()) listeners.push_back(e.listener);
      }
    } catch (...) {  // out of memory: the tasks are not cancelled, but they see the stop
      return;
    }
    ++telling_;
  }
  ++telling_here();
  for (StopListener* l : listeners) {
    if (listed(l)) l->stop_requested(token, grace);
  }
  --telling_here();
  std::lock_guard lock(mutex_);
  if (--telling_ == 0) told_.notify_all();
}

MULTICORE_DECL bool StopListeners::listed(StopListener* l) noexcept {
  std::lock_guard lock(mutex_);
  return std::any_of(list_.begin(), list_.end(), [&](const Entry& e) { return e.listener == l; });
}

MULTICORE_DECL StopListeners& stop_listeners() {
  static auto* listeners = new StopListeners;
  return *listeners;
}

#endif  // MULTICORE_DEFINE

}  // namespace detail

/// What a task is given to learn that it should stop: an ordinary argument of Pool::submit,
/// Pool::call and Task::run, a value a map's function captures, or MapOptions::stop. Trivially
/// copyable; it travels to the worker as its bytes.
///
///     double calculate_e(multicore::StopToken stop) {
///       double e = 1, term = 1;
///       for (int n = 1; !stop.stop_requested(); ++n) e += term /= n;
///       return e;
///     }
///
/// A default-constructed token never stops. A token whose StopSource is destroyed reads as
/// stopped (the source's destructor stops it, like std::jthread's). Works in worker processes
/// forked by this process's pools, in this process (run_inline too) and, with a pool of an
/// mpi::Cluster, in the workers of every rank: rank 0 relays each stop to the node agents.
class StopToken {
 public:
  /// A token no source will ever stop.
  StopToken() noexcept = default;

  /// True once its source's request_stop() ran (or the source was destroyed). Costs a few plain
  /// loads, no system call: check it as often as you like. Thread-safe. Throws Error for a
  /// token that came from another program image that no stop can reach (another process's
  /// pool, or an MPI job other than the one its Cluster runs).
  bool stop_requested() const {
    if (slot_ == no_slot) return false;
    return detail::stop_word_passed(word().load(std::memory_order_acquire), live_);
  }

  /// False for a default-constructed token.
  bool stop_possible() const noexcept { return slot_ != no_slot; }

  /// Blocks until stop is requested or `timeout` has passed, without spinning (a futex on the
  /// flag); returns stop_requested(). A default token just waits out the timeout. Throws as
  /// stop_requested() does.
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    using namespace std::chrono;
    const auto capped = duration_cast<nanoseconds>(std::min<duration<double>>(timeout, hours(24)));
    const auto deadline = steady_clock::now() + capped;
    if (slot_ == no_slot) {
      std::this_thread::sleep_until(deadline);
      return false;
    }
    for (;;) {
      // Waits for the word to change from what it is now: a mirrored word (over MPI) may be
      // behind live_ rather than equal to it.
      const std::uint32_t now = word().load(std::memory_order_acquire);
      if (detail::stop_word_passed(now, live_)) return true;
      const nanoseconds left = deadline - steady_clock::now();
      if (left <= nanoseconds::zero()) return false;
      const timespec rel{static_cast<std::time_t>(left.count() / 1'000'000'000),
                         static_cast<long>(left.count() % 1'000'000'000)};
      detail::futex_wait(&word(), now, &rel);
    }
  }

  /// Tokens of the same source compare equal.
  friend bool operator==(const StopToken&, const StopToken&) noexcept = default;

 private:
  friend class StopSource;
  friend bool detail::stop_seen(const StopToken& token) noexcept;
  friend std::optional<detail::StopFlag> detail::stop_flag(const StopToken& token) noexcept;

  static constexpr std::uint32_t no_slot = ~std::uint32_t{0};

  StopToken(std::uint64_t table, std::uint32_t slot, std::uint32_t live) noexcept
      : table_(table), slot_(slot), live_(live) {}

  /// The flag this token reads, here: its source's own, or its mirror on an MPI agent.
  /// Throws Error for a token of a table this process neither has nor mirrors.
  std::atomic<std::uint32_t>& word() const {
    detail::StopTable* table = detail::stop_table_pointer().load(std::memory_order_acquire);
    const std::atomic<std::uint32_t>* w = table ? table->word_for(table_, slot_) : nullptr;
    if (w == nullptr) {
      throw Error(
          "multicore: this StopToken comes from another program image (another process's "
          "pool, or another MPI job): no stop of its StopSource can reach it here");
    }
    return *const_cast<std::atomic<std::uint32_t>*>(w);
  }

  std::uint64_t table_ = 0;  ///< StopTable::id of the table its slot is in
  std::uint32_t slot_ = no_slot;
  std::uint32_t live_ = 0;  ///< the slot's word while its source lives and is not stopped
};
static_assert(std::is_trivially_copyable_v<StopToken>);

/// Asks the tasks that carry its tokens to stop, across processes: std::stop_source's role
/// for a Pool. Copies share one stop state; the last copy's destruction requests stop.
///
///     multicore::StopSource stop;
///     auto e = pool.submit(calculate_e, stop.get_token());
///     std::this_thread::sleep_for(1s);
///     stop.request_stop();            // calculate_e sees it and returns what it has
///     std::cout << e.get();
///
/// request_stop() also cancels the tasks of every pool that carry one of its tokens as an
/// argument (or as MapOptions::stop) and have not started: they never run, their futures throw
/// Cancelled. request_stop(grace) further kills the workers still running such a task after
/// `grace` (each is replaced, as after a task_timeout); those tasks throw Cancelled too.
/// Thread-safe. At most StopTable::slots (4096) sources may live at once, across the process
/// and its workers.
class StopSource {
 public:
  /// Throws Error when 4096 sources are alive already, SystemError if the shared flags cannot
  /// be mapped.
  StopSource() : state_(std::make_shared<State>()) {}

  /// A token that sees this source's stop; a moved-from source gives a token that never stops.
  StopToken get_token() const noexcept {
    return state_ ? StopToken(state_->table, state_->slot, state_->live) : StopToken();
  }

  bool stop_requested() const noexcept { return state_ && detail::stop_seen(get_token()); }

  /// Requests stop: tokens see it at once; tasks carrying a token that have not started are
  /// cancelled. Returns true if this call made the request (false if it was made before).
  /// Never blocks on a task. (Pools fail cancelled futures from this thread.)
  bool request_stop() noexcept { return stop(nullptr); }

  /// request_stop(), then kills the workers still running a task that carries one of its tokens
  /// `grace` from now (each is replaced, as after task_timeout); those tasks throw Cancelled.
  /// May follow an earlier request_stop(). Throws std::invalid_argument for a negative grace.
  template <class Rep, class Period>
  bool request_stop(const std::chrono::duration<Rep, Period>& grace) {
    if (grace < grace.zero()) throw std::invalid_argument("multicore: negative stop grace period");
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::min<std::chrono::duration<double>>(grace, std::chrono::hours(24 * 365)));
    return stop(&ns);
  }

 private:
  struct State {
    std::uint64_t table = 0;
    std::uint32_t slot = 0;
    std::uint32_t live = 0;
    pid_t owner = getpid();

    State() {
      detail::StopTable& t = detail::stop_table();
      const auto taken = t.acquire();
      if (!taken) {
        throw Error("multicore: too many StopSources alive at once (the limit is " +
                    std::to_string(detail::StopTable::slots) +
                    ", across this process and its "
                    "workers)");
      }
      table = t.id;
      slot = *taken;
      live = t.slot[slot].word.load(std::memory_order_acquire);
    }
    ~State() {
      // A copy in a forked child (one that calls exit()) must not stop nor free the parent's.
      if (getpid() != owner) return;
      const StopToken token(table, slot, live);
      if (detail::stop_table().stop(slot, live)) detail::stop_listeners().notify(token, nullptr);
      detail::stop_table().release(slot);
    }
    State(const State&) = delete;
    State& operator=(const State&) = delete;
  };

  bool stop(const std::chrono::nanoseconds* grace) noexcept {
    if (!state_) return false;
    const bool first = detail::stop_table().stop(state_->slot, state_->live);
    // Every time with a grace (a later call may add a kill); else only the first time.
    if (first || grace != nullptr) detail::stop_listeners().notify(get_token(), grace);
    return first;
  }

  std::shared_ptr<State> state_;
};

namespace detail {
inline bool stop_seen(const StopToken& token) noexcept {
  if (token.slot_ == StopToken::no_slot) return false;
  const StopTable* table = stop_table_pointer().load(std::memory_order_acquire);
  const std::atomic<std::uint32_t>* word =
      table ? table->word_for(token.table_, token.slot_) : nullptr;
  return word != nullptr && stop_word_passed(word->load(std::memory_order_acquire), token.live_);
}

inline std::optional<StopFlag> stop_flag(const StopToken& token) noexcept {
  if (token.slot_ == StopToken::no_slot) return std::nullopt;
  const StopTable* table = stop_table_pointer().load(std::memory_order_acquire);
  if (table == nullptr || table->id != token.table_) return std::nullopt;
  return StopFlag{token.slot_, table->slot[token.slot_].word.load(std::memory_order_acquire)};
}
}  // namespace detail

}  // namespace multicore
