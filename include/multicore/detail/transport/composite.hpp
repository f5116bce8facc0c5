// SPDX-License-Identifier: MIT
// Several transports seen as one: their slots numbered one after the other.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "transport.hpp"

namespace multicore::detail {

/// Slots 0..a-1 are the first part's, a..a+b-1 the second's, and so on. Each verb goes to the
/// part that holds the slot; waiting waits on the first part (which wakes at once for its own
/// events) in naps, looking at the others in between, unless callers poll for answers
/// themselves (then they look at the others). The parts are borrowed: whoever made the
/// composite keeps them alive, and decides what closing them means (see close()).
class CompositeTransport final : public Transport {
 public:
  /// `close_part(i)` is what close() does to part i.
  CompositeTransport(std::vector<Transport*> parts, std::function<void(std::size_t)> close_part)
      : parts_(std::move(parts)), close_part_(std::move(close_part)) {
    unsigned first = 0;
    for (Transport* p : parts_) {
      first_.push_back(first);
      for (unsigned j = 0; j < p->size(); ++j) where_.push_back({p, j, first});
      first += p->size();
    }
    owed_ = std::vector<std::atomic<std::uint32_t>>(where_.size());
  }
  ~CompositeTransport() override { close(); }

  unsigned size() const noexcept override { return static_cast<unsigned>(where_.size()); }
  std::string location(unsigned k) const override { return part(k).location(local(k)); }

  Capabilities capabilities() const noexcept override {
    Capabilities c;
    for (const Transport* p : parts_) {
      const Capabilities part = p->capabilities();
      c.same_image = c.same_image && part.same_image;
      c.same_machine = c.same_machine && part.same_machine;
      c.max_in_flight = std::min(c.max_in_flight, part.max_in_flight);
    }
    return c;
  }

  void start(unsigned k) override {
    forget_owed(k);
    part(k).start(local(k));
  }
  void kill(unsigned k) noexcept override { part(k).kill(local(k)); }
  bool try_stop(unsigned k) noexcept override { return part(k).try_stop(local(k)); }
  void resume() noexcept override {
    for (Transport* p : parts_) p->resume();
  }
  void relay_stop(std::uint32_t slot, std::uint32_t word) noexcept override {
    for (Transport* p : parts_) p->relay_stop(slot, word);
  }
  void cancel(unsigned k, std::uint64_t task_id) noexcept override {
    part(k).cancel(local(k), task_id);
  }
  bool try_send(unsigned k, std::span<const std::byte> message) noexcept override {
    if (where_[k].first == 0) return part(k).try_send(local(k), message);
    others_active_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                         std::memory_order_relaxed);
    // Counted before sending: its answer may be polled before try_send returns.
    owed_[k].fetch_add(1);
    owed_total_.fetch_add(1);
    if (!part(k).try_send(local(k), message)) {
      settle(k, 1);
      return false;
    }
    // Nobody polls for its answer: the collector must watch for it (it may be asleep on the
    // first part's bell, which no other part rings). Pairs with callers_polling().
    if (polling_.load() == 0) wake();
    return true;
  }
  bool pump(unsigned k) noexcept override { return part(k).pump(local(k)); }
  bool sending(unsigned k) const noexcept override { return part(k).sending(local(k)); }

  Event poll(unsigned k, TailRouter& router) noexcept override {
    Renumbering renumbered(router, where_[k].first);
    const Event e = part(k).poll(local(k), renumbered);
    if (e.kind == Event::Kind::answer) settle(k, 1);
    if (e.kind == Event::Kind::died) forget_owed(k);
    return e;
  }
  bool may_have_events(unsigned k) const noexcept override {
    return part(k).may_have_events(local(k));
  }

  bool wait(std::chrono::steady_clock::time_point deadline, bool spin) noexcept override {
    if (parts_.size() == 1) return parts_[0]->wait(deadline, spin);
    // Naps on the first part, which wakes at once for its own events, and looks at the others
    // between naps (a wait whose deadline has passed is a look). Looking costs (MPI_Iprobe),
    // so once the other parts have had nothing to say and nothing was sent to them for a
    // second, naps grow longer: an idle pool costs almost no CPU, and an answer after a long
    // quiet spell waits at most max_idle_nap more.
    auto nap = std::chrono::microseconds(2);
    for (;;) {
      // While callers poll, they read every part's answers themselves: the collector only needs
      // the first part's events, and must leave them the CPU. The last caller to stop polling
      // wakes it if answers of other parts are still owed (see callers_polling()).
      if (polling_.load() > 0) return parts_[0]->wait(deadline, false);
      const auto looked = std::chrono::steady_clock::now();
      for (std::size_t i = 1; i < parts_.size(); ++i) {
        if (parts_[i]->wait({}, false)) {
          others_active_.store(looked.time_since_epoch().count(), std::memory_order_relaxed);
          return true;
        }
      }
      if (woken_.exchange(false)) return true;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      // Just sent to or heard from another part: its answer is likely to come at once, and a
      // nap costs tens of microseconds. Look again, letting whoever shares the core run.
      if (now.time_since_epoch().count() - others_active_.load(std::memory_order_relaxed) <
          std::chrono::nanoseconds(spin_window).count()) {
        if (parts_[0]->wait({}, false)) return true;
        sched_yield();
        continue;
      }
      if (parts_[0]->wait(std::min(deadline, now + nap), spin)) return true;
      spin = false;
      const auto quiet =
          now.time_since_epoch().count() - others_active_.load(std::memory_order_relaxed);
      const bool long_quiet = quiet > std::chrono::nanoseconds(std::chrono::seconds(1)).count();
      nap = std::min<std::chrono::microseconds>(nap * 2, long_quiet ? max_idle_nap : max_nap);
    }
  }

  void wake() noexcept override {
    woken_.store(true);
    for (Transport* p : parts_) p->wake();
  }
  void callers_polling(int delta) noexcept override {
    for (Transport* p : parts_) p->callers_polling(delta);
    // Pairs with try_send(): one of the two sees the other's write (both seq_cst).
    if (polling_.fetch_add(delta) + delta == 0 && owed_total_.load() > 0) wake();
  }
  void release_cold_buffers() noexcept override {
    for (Transport* p : parts_) p->release_cold_buffers();
  }
  bool delivering_output_here() const noexcept override {
    return std::any_of(parts_.begin(), parts_.end(),
                       [](const Transport* p) { return p->delivering_output_here(); });
  }
  std::string broken() noexcept override {
    for (Transport* p : parts_) {
      if (std::string reason = p->broken(); !reason.empty()) return reason;
    }
    return {};
  }

  void close() noexcept override {
    if (closed_) return;
    closed_ = true;
    for (std::size_t i = 0; i < parts_.size(); ++i) close_part_(i);
  }

 private:
  static constexpr std::chrono::microseconds spin_window{200};
  static constexpr std::chrono::microseconds max_nap{1000};
  static constexpr std::chrono::microseconds max_idle_nap{20000};

  struct Where {
    Transport* part;
    unsigned local;
    unsigned first;  // the composite's number of the part's slot 0
  };

  /// Hands the part's slot numbers to the router as the composite's.
  class Renumbering final : public TailRouter {
   public:
    Renumbering(TailRouter& router, unsigned first) noexcept : router_(router), first_(first) {}
    AnswerTail* open_tail(unsigned k, std::uint64_t task_id, std::span<const std::byte> head,
                          std::uint64_t tail_bytes) noexcept override {
      return router_.open_tail(first_ + k, task_id, head, tail_bytes);
    }

   private:
    TailRouter& router_;
    unsigned first_;
  };

  /// `n` answers of slot k came (or will never come); never below zero.
  void settle(unsigned k, std::uint32_t n) noexcept {
    std::uint32_t owed = owed_[k].load();
    while (owed > 0 && !owed_[k].compare_exchange_weak(owed, owed - std::min(owed, n))) {
    }
    owed_total_.fetch_sub(std::min(owed, n));
  }
  void forget_owed(unsigned k) noexcept { settle(k, UINT32_MAX); }

  Transport& part(unsigned k) const noexcept { return *where_[k].part; }
  unsigned local(unsigned k) const noexcept { return where_[k].local; }

  std::vector<Transport*> parts_;
  std::function<void(std::size_t)> close_part_;
  std::vector<unsigned> first_;
  std::vector<Where> where_;
  std::atomic<bool> woken_{false};
  std::atomic<int> polling_{0};  // threads polling for answers themselves (callers_polling)
  /// Answers owed by the worker of each slot of the parts other than the first (none are
  /// counted for the first: its workers ring its bell), and their sum.
  std::vector<std::atomic<std::uint32_t>> owed_;
  std::atomic<std::uint32_t> owed_total_{0};
  /// When a part other than the first last had news or was sent a message (steady_clock ticks).
  std::atomic<std::chrono::steady_clock::rep> others_active_{0};
  bool closed_ = false;
};

}  // namespace multicore::detail
