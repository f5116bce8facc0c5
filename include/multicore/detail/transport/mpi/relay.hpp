// SPDX-License-Identifier: MIT
// What rank 0 and the node agents say to each other over MPI, and how messages of any size
// travel without blocking: both halves of the relay protocol.
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../../../codec.hpp"
#include "../../../errors.hpp"
#include "../../util/warm_buffer.hpp"
#include "../../util/warm_shelf.hpp"
#include "../transport.hpp"
#include "mpi_api.hpp"

namespace multicore::detail::mpi {

// Rank 0 runs the scheduler; every other rank is a node agent with a local shared-memory pool
// (ShmTransport) whose worker slots rank 0 sees as its own. Each direction is one ordered stream
// of messages (one tag), so what rank 0 says to an agent arrives in the order it was said:
//
//   down (rank 0 -> agent):  start j | kill j | stop j | request j (+ the request's bytes) |
//                            cancel j task | stop_flag slot word | resume | exit
//   up (agent -> rank 0):    ready j | running j task elapsed | stopped j elapsed |
//                            answer j task (+ its bytes) | answer_streamed j task (+ its bytes
//                            and a StreamEnd) | died j (+ a DeathRecord and its text)
//                            | output j stream pid (+ a line) | bye
//
// A message is a Header, then its `bytes` in pieces of at most max_piece (MPI counts are ints;
// pieces also let a large payload start moving before it is all sent). MPI never lets messages
// of one sender with one tag overtake each other, so the pieces follow their header; a message
// whose pieces go as they are written (Outbox::open_stream) holds back the messages after it.
//
// Slot numbers in messages are the agent's own (0..its workers-1). Each start of a slot begins a
// new life, numbered by rank 0, and every message names the life it is about. A request that
// crossed its worker's death must not run (rank 0 requeues whatever a dead worker owed and sends
// it again itself), and a death that crossed a new start must not count: each side ignores
// messages about a life that is not the slot's current one.

inline constexpr int tag_down = 0x6d63;  // "mc"
inline constexpr int tag_up = 0x6d64;
inline constexpr std::size_t max_piece = std::size_t{8} << 20;

enum class Kind : std::uint32_t {
  // down
  start = 1,
  kill = 2,
  stop = 3,
  request = 4,
  exit = 5,
  resume = 6,  ///< continue every worker stopped from outside
  cancel = 7,  ///< skip `task_id` if not started
  /// A StopSource of rank 0 was stopped: `slot` is its slot in rank 0's stop table (not a
  /// worker's), `value` the word it holds now (see StopTable::mirror_word)
  stop_flag = 8,
  // up
  ready = 16,
  running = 17,
  answer = 18,
  died = 19,
  bye = 20,
  stopped = 21,  ///< value: ns it has been stopped for, as the agent sends this (-1: continued)
  /// A line worker j printed (tagged output): task_id 0 stdout, 1 stderr; value its pid.
  /// About whatever life: the line was printed.
  output = 22,
  /// A large answer sent up while its worker still writes it: its bytes end with a StreamEnd,
  /// which says whether it came whole (and its run time, unknown when the header left).
  answer_streamed = 23,
};

struct Header {
  Kind kind = Kind::exit;
  std::uint32_t slot = 0;
  /// Which life of the slot it is about: rank 0 numbers each start; a message about an
  /// earlier life (a request that crossed the worker's death, the death of a worker killed
  /// when a Pool closed) is ignored by whoever gets it.
  std::uint64_t life = 0;
  std::uint64_t task_id = 0;
  std::uint64_t bytes = 0;  ///< payload bytes that follow, in pieces
  /// running: ns the task's code has run for, as the agent sends this (-1: paused);
  /// answer: the run time the worker reported; ready: the worker's pid on its node.
  std::int64_t value = 0;
};
static_assert(std::is_trivially_copyable_v<Header> && sizeof(Header) == 40);

/// How a remote worker ended; its text, then the end of its stderr, follow it in the payload.
struct DeathRecord {
  std::uint8_t cause = 0;
  std::uint8_t out_of_memory = 0;  ///< Death::out_of_memory
  std::uint8_t reserved[2]{};
  std::int32_t pid = 0;
  std::int32_t signal = 0;
  std::int32_t exit_code = -1;
  std::int32_t error = 0;
  std::uint32_t text_bytes = 0;  ///< the rest of the payload is Death::output
  std::uint64_t running = 0;
};
static_assert(std::is_trivially_copyable_v<DeathRecord> && sizeof(DeathRecord) == 32);

/// Ends the bytes of an answer_streamed message.
struct StreamEnd {
  std::uint64_t run_nanos = 0;
  /// 0: cut, and dropped by rank 0: its worker died while writing it (its death follows), or
  /// stopped writing it (it follows whole, as an `answer`)
  std::uint8_t whole = 0;
  std::uint8_t reserved[7]{};
};
static_assert(std::is_trivially_copyable_v<StreamEnd> && sizeof(StreamEnd) == 16);

inline Writer encode_death(const Death& d) {
  DeathRecord r;
  r.cause = static_cast<std::uint8_t>(d.cause);
  r.out_of_memory = d.out_of_memory ? 1 : 0;
  r.pid = d.pid;
  r.signal = d.signal;
  r.exit_code = d.exit_code;
  r.error = d.error;
  r.running = d.running;
  r.text_bytes = static_cast<std::uint32_t>(d.text.size());
  Writer out;
  out.write(&r, sizeof r);
  out.write(d.text.data(), d.text.size());
  out.write(d.output.data(), d.output.size());
  return out;
}

/// Reads what encode_death wrote; `where` says which rank and host it came from.
inline Death decode_death(std::span<const std::byte> bytes, const std::string& where) {
  Death d;
  DeathRecord r;
  if (bytes.size() < sizeof r) {
    d.cause = Death::Cause::violation;
    d.text = "a malformed death report from its agent";
  } else {
    std::memcpy(&r, bytes.data(), sizeof r);
    d.cause = static_cast<Death::Cause>(
        std::min(r.cause, static_cast<std::uint8_t>(Death::Cause::replaced_program)));
    d.out_of_memory = r.out_of_memory != 0;
    d.pid = r.pid;
    d.signal = r.signal;
    d.exit_code = r.exit_code;
    d.error = r.error;
    d.running = r.running;
    const std::string_view rest(reinterpret_cast<const char*>(bytes.data()) + sizeof r,
                                bytes.size() - sizeof r);
    const std::size_t text = std::min<std::size_t>(r.text_bytes, rest.size());
    d.text = rest.substr(0, text);
    d.output = rest.substr(text);
  }
  d.where = where;
  return d;
}

/// Fails with the MPI error's own words.
inline void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw Error(std::string("multicore: ") + what +
              " failed: " + std::string(text, static_cast<std::size_t>(length)));
}

/// Large buffers kept between messages, on WarmBuffer's policy: relaying one large message
/// after another, fresh memory for each costs more than copying it (the kernel faults every
/// page in and zeroes it). Keeps two (see WarmShelf): one message arriving while the last one's
/// answer leaves.
class SpareBuffers {
 public:
  using Clock = WarmBuffer::Clock;

  /// `n` uninitialised bytes, in a kept buffer if one is large enough.
  Writer take(std::size_t n) {
    Writer out;
    if (n > min_kept) {  // a small one would waste a large buffer
      out = kept_.take(n);
      used_ = Clock::now();
    }
    out.clear();
    out.resize(n);
    return out;
  }

  /// Keeps `w`'s memory (in place of a smaller kept buffer when two are), if it is worth
  /// keeping.
  void give(Writer w) noexcept {
    if (w.capacity() > min_kept) kept_.keep(w, WarmBuffer::max_warm_bytes);  // else freed here
  }

  /// Gives back what went unused for WarmBuffer::warm_for.
  void release_if_cold(Clock::time_point now) noexcept {
    if (now - used_ >= WarmBuffer::warm_for) kept_.clear();
  }

 private:
  static constexpr std::size_t min_kept = std::size_t{1} << 20;  // smaller ones are cheap
  WarmShelf<Writer> kept_{2};
  Clock::time_point used_{};
};

/// Messages being sent without blocking. A message's header and owned bytes live here until
/// MPI is done with them; borrowed bytes must stay valid until then (see Transport::try_send).
class Outbox {
 public:
  explicit Outbox(int tag) noexcept : tag_(tag) {}
  ~Outbox() { cancel_all(); }
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  /// Starts sending `header` and `bytes` (header.bytes is set from them) to `rank`; `owned`,
  /// if given, holds the bytes and is kept until they are sent. While a stream is open, the
  /// message waits behind it (its borrowed bytes too).
  void post(int rank, Header header, std::span<const std::byte> bytes, Writer owned = {}) {
    header.bytes = bytes.size();
    if (stream_ != nullptr) {
      held_.push_back({rank, header, bytes, std::move(owned)});
      return;
    }
    Sending& s = sending_.emplace_back();
    s.header = header;
    s.owned = std::move(owned);
    s.requests.reserve(1 + (bytes.size() + max_piece - 1) / max_piece);
    isend(rank, {reinterpret_cast<const std::byte*>(&s.header), sizeof s.header}, s);
    for (std::size_t at = 0; at < bytes.size(); at += max_piece) {
      isend(rank, bytes.subspan(at, std::min(max_piece, bytes.size() - at)), s);
    }
  }

  /// Starts sending a message whose `header.bytes` bytes are still being written into `buffer`,
  /// which must be reserved for them all (it never moves): each piece goes as soon as
  /// send_written() finds it written, so a large message moves while it is made. The peer reads
  /// a message's pieces right after its header: messages posted before close_stream() wait
  /// behind it. One stream at a time. Returns the buffer to write to.
  Writer& open_stream(int rank, Header header, Writer buffer) {
    Sending& s = sending_.emplace_back();
    s.header = header;
    s.owned = std::move(buffer);
    s.rank = rank;
    s.open = true;
    stream_ = &s;  // a deque's elements stay where they are while others come and go
    s.requests.reserve(1 + (header.bytes + max_piece - 1) / max_piece);
    isend(rank, {reinterpret_cast<const std::byte*>(&s.header), sizeof s.header}, s);
    return s.owned;
  }

  bool streaming() const noexcept { return stream_ != nullptr; }

  /// Sends the open stream's pieces that are written whole (the last one: once it is all
  /// written). True if any went.
  bool send_written() {
    if (stream_ == nullptr) return false;
    Sending& s = *stream_;
    const std::span<const std::byte> written = s.owned.bytes();
    bool sent = false;
    while (s.streamed < written.size()) {
      const std::size_t n = std::min<std::size_t>(max_piece, s.header.bytes - s.streamed);
      if (written.size() - s.streamed < n) break;
      isend(s.rank, written.subspan(s.streamed, n), s);
      s.streamed += n;
      sent = true;
      stream_waits_ = false;
    }
    return sent;
  }

  /// The open stream is written (all its header.bytes): sends the rest, then what waited.
  void close_stream() {
    if (stream_ == nullptr) return;
    send_written();
    stream_->open = false;
    stream_ = nullptr;
    stream_waits_ = false;
    std::deque<Held> held = std::move(held_);
    held_.clear();
    for (Held& h : held) post(h.rank, h.header, h.bytes, std::move(h.owned));
  }

  /// Lets MPI move what is being sent; forgets what is done (its owned bytes go to `spares`,
  /// if given). True if anything finished.
  bool progress(SpareBuffers* spares = nullptr) {
    bool finished = false;
    while (!sending_.empty()) {
      Sending& s = sending_.front();
      int done = 0;
      check(MPI_Testall(static_cast<int>(s.requests.size()), s.requests.data(), &done,
                        MPI_STATUSES_IGNORE),
            "MPI_Testall");
      if (done == 0) break;
      if (s.open) {  // all it sent went: the rest is not written yet
        stream_waits_ = true;
        break;
      }
      if (spares != nullptr) spares->give(std::move(s.owned));
      sending_.pop_front();
      finished = true;
    }
    return finished;
  }

  bool empty() const noexcept { return sending_.empty(); }

  /// Something sent is still on its way (MPI moves it only while it is called), as progress()
  /// last saw: false when all there is is an open stream whose pieces sent so far have gone
  /// (its worker may be slow, or stopped, writing the rest).
  bool moving() const noexcept { return !sending_.empty() && !stream_waits_; }

 private:
  struct Sending {
    Header header;
    Writer owned;
    std::vector<MPI_Request> requests;
    int rank = 0;
    bool open = false;         // a stream: pieces still to go
    std::size_t streamed = 0;  // of a stream: bytes whose pieces went
  };

  /// A message posted while a stream was open.
  struct Held {
    int rank = 0;
    Header header;
    std::span<const std::byte> bytes;
    Writer owned;
  };

  void isend(int rank, std::span<const std::byte> bytes, Sending& s) {
    MPI_Request r = MPI_REQUEST_NULL;
    check(MPI_Isend(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, rank, tag_,
                    MPI_COMM_WORLD, &r),
          "MPI_Isend");
    s.requests.push_back(r);
  }

  void cancel_all() noexcept {
    for (Sending& s : sending_) {
      for (MPI_Request& r : s.requests) {
        if (r != MPI_REQUEST_NULL) {
          MPI_Cancel(&r);
          MPI_Request_free(&r);
        }
      }
    }
    sending_.clear();
    held_.clear();
    stream_ = nullptr;
    stream_waits_ = false;
  }

  int tag_;
  std::deque<Sending> sending_;  // oldest first; MPI completes them in order per peer
  Sending* stream_ = nullptr;    // the open stream, in sending_
  bool stream_waits_ = false;    // all it sent went (see moving())
  std::deque<Held> held_;        // posted while it is open, oldest first
};

/// A message that arrived whole.
struct Message {
  Header header;
  Writer bytes;
};

/// Receives the messages one peer sends with one tag, without blocking: the header first,
/// then the pieces of its bytes, posted for as soon as the header is known.
class Inbox {
 public:
  Inbox(int rank, int tag) noexcept : rank_(rank), tag_(tag) {}
  ~Inbox() { cancel(); }
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;
  Inbox(Inbox&&) = default;

  /// A message's pieces are arriving: MPI moves them only while someone calls it (a large or
  /// TCP message takes several calls on both sides), so whoever waits must keep polling.
  bool receiving() const noexcept { return receiving_; }

  /// The next message if it has arrived whole; otherwise lets MPI move it along. Its bytes
  /// go into a buffer from `spares`, if given.
  std::optional<Message> poll(SpareBuffers* spares = nullptr) {
    if (!receiving_) {
      int flag = 0;
      MPI_Status status;
      check(MPI_Iprobe(rank_, tag_, MPI_COMM_WORLD, &flag, &status), "MPI_Iprobe");
      if (flag == 0) return std::nullopt;
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      if (count != static_cast<int>(sizeof(Header))) {
        throw Error("multicore: a malformed message from rank " + std::to_string(rank_));
      }
      check(MPI_Recv(&current_.header, sizeof current_.header, MPI_BYTE, rank_, tag_,
                     MPI_COMM_WORLD, MPI_STATUS_IGNORE),
            "MPI_Recv");
      receiving_ = true;
      const auto n = static_cast<std::size_t>(current_.header.bytes);
      if (spares != nullptr) {
        current_.bytes = spares->take(n);
      } else {
        current_.bytes = Writer();
        current_.bytes.resize(n);
      }
      std::span<std::byte> bytes = current_.bytes.bytes();
      pieces_.clear();
      for (std::size_t at = 0; at < bytes.size(); at += max_piece) {
        MPI_Request r = MPI_REQUEST_NULL;
        check(MPI_Irecv(bytes.data() + at, static_cast<int>(std::min(max_piece, bytes.size() - at)),
                        MPI_BYTE, rank_, tag_, MPI_COMM_WORLD, &r),
              "MPI_Irecv");
        pieces_.push_back(r);
      }
    }
    int done = 1;
    if (!pieces_.empty()) {
      check(
          MPI_Testall(static_cast<int>(pieces_.size()), pieces_.data(), &done, MPI_STATUSES_IGNORE),
          "MPI_Testall");
    }
    if (done == 0) return std::nullopt;
    receiving_ = false;
    pieces_.clear();
    return std::move(current_);
  }

 private:
  void cancel() noexcept {
    for (MPI_Request& r : pieces_) {
      if (r != MPI_REQUEST_NULL) {
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
    }
    pieces_.clear();
  }

  int rank_;
  int tag_;
  bool receiving_ = false;
  Message current_;
  std::vector<MPI_Request> pieces_;
};

}  // namespace multicore::detail::mpi
