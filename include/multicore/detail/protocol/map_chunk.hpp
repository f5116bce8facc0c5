// SPDX-License-Identifier: MIT
// A map chunk on the wire: its items, the entry that runs them in the worker (on several threads
// if asked), and its answer, one result per item.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../options.hpp"
#include "../serialize/serialize.hpp"
#include "../util/function_ref.hpp"
#include "../util/linkage.hpp"
#include "../util/thread_team.hpp"
#include "entries.hpp"
#include "outcome.hpp"

namespace multicore::detail {

/// One item's result: the value, or the error to throw in its place.
template <class Out>
struct ItemResult {
  Stored<Out> value;
  std::exception_ptr error;
};

/// How a chunk's answer is laid out after its item count.
enum class ChunkLayout : std::uint8_t {
  outcomes = 0,  ///< one Outcome per item (see call.hpp)
  raw = 1,       ///< every item succeeded and its result is raw bytes: one block, no tags
  failed = 2,    ///< the chunk could not be decoded at all: one serialization error message
};

/// Values whose encoding is their bytes: a chunk of them travels as one block.
template <class T>
concept block_value = encoding_of<T>(Format::binary)
== Encoding::raw;

/// Appends items, each encoded as encode<T> would (for raw values: as one block). Maps send
/// only Format::binary.
template <class T>
void encode_items(Writer& out, const std::vector<T>& items) {
  if constexpr (block_value<T>) {
    out.write(items.data(), items.size() * sizeof(T));
  } else {
    for (const T& x : items) encode(out, x);
  }
}

/// How a chunk's items are held in the worker: raw values as one block, read with one copy;
/// other values each in a Stored, decoded in place.
template <class T>
concept block_item = block_value<T> && std::is_default_constructible_v<T>;
template <class T>
using ChunkItem = std::conditional_t<block_item<T>, T, Stored<T>>;

template <class T>
T&& take_item(ChunkItem<T>& item) noexcept {
  if constexpr (block_item<T>) {
    return std::move(item);
  } else {
    return std::move(*item);
  }
}

/// Reads `n` items written by encode_items (raw values: one bounds check, one copy).
template <class T>
std::vector<ChunkItem<T>> decode_items(Reader& in, std::size_t n) {
  std::vector<ChunkItem<T>> items;
  if constexpr (block_item<T>) {
    if (n > in.remaining() / sizeof(T)) throw SerializationError("multicore: truncated chunk");
    items.resize(n);
    in.read(items.data(), n * sizeof(T));
  } else {
    items.reserve(std::min<std::size_t>(n, in.remaining()));
    for (std::size_t i = 0; i < n; ++i) items.emplace_back().decode(in);
  }
  return items;
}

template <class T>
inline constexpr bool is_tuple_or_pair = false;
template <class... Ts>
inline constexpr bool is_tuple_or_pair<std::tuple<Ts...>> = true;
template <class A, class B>
inline constexpr bool is_tuple_or_pair<std::pair<A, B>> = true;

/// Whether map calls `fn` with an item's elements, as rvalues (Python's starmap): when the
/// item is a std::tuple or std::pair and `fn` takes its elements rather than the item.
template <class Fn, class In>
constexpr bool spreads_item() {
  if constexpr (std::is_invocable_v<Fn&, In> || !is_tuple_or_pair<In>) {
    return false;
  } else {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return std::is_invocable_v<Fn&, std::tuple_element_t<I, In>...>;
    }
    (std::make_index_sequence<std::tuple_size_v<In>>{});
  }
}

/// How map calls `fn` on one item: fn(item), or fn(elements...) (see spreads_item()).
template <class Fn, class In>
decltype(auto) call_item(Fn& fn, In&& item) {
  if constexpr (spreads_item<Fn, std::remove_cvref_t<In>>()) {
    return std::apply(fn, std::forward<In>(item));
  } else {
    return std::invoke(fn, std::forward<In>(item));
  }
}

/// The result of map's call of `fn` on an item of type `In`.
template <class Fn, class In>
using item_result_t = decltype(call_item(std::declval<Fn&>(), std::declval<In>()));

/// Writes the answer of a chunk whose items failed to decode: no items, one serialization
/// error, after cutting `out` back to `mark`. Call only inside a catch block.
MULTICORE_DECL void write_chunk_failure(Writer& out, std::size_t mark) noexcept;

/// The items of a chunk that threw, each with its outcome, from any of the team's threads.
class ChunkErrors {
 public:
  /// Records the exception being handled as item i's outcome. Call only inside a catch block.
  MULTICORE_DECL void add_current(std::size_t i) noexcept;

  std::vector<std::pair<std::size_t, Writer>> list;  // (item, outcome), in no order

 private:
  std::mutex mutex_;
};

/// What a chunk's entry needs to run its items and write their answer, but not its types: the
/// work is in run_chunk(), compiled once (util/linkage.hpp), not once per map.
struct ChunkItems {
  std::size_t n = 0;
  /// Runs the items [begin, end), keeping their values for encode, and records each one that
  /// throws in the ChunkErrors. Never throws.
  FunctionRef<void(std::size_t, std::size_t)> run;
  /// Null unless the values are raw: copies the `n` values, all there, into a block.
  const FunctionRef<void(std::byte*)>* copy_block = nullptr;
  std::size_t value_bytes = 0;  ///< size of one value when copy_block is set
  /// Encodes item i's value (may throw: the item gets a serialization error).
  FunctionRef<void(Writer&, std::size_t)> encode;
};

/// Runs a chunk's items on `context.threads` threads (the worker's team, or a team of its own
/// inline) and appends the answer to `out`: the item count, then one block of raw values if
/// every item succeeded and they are raw, else one outcome per item (from `errors` for those
/// that threw).
MULTICORE_DECL void run_chunk(Writer& out, std::size_t mark, const CallContext& context,
                              const ChunkItems& items, ChunkErrors& errors) noexcept;

/// The entry for a map chunk: payload = callable, item count, items. Items run on
/// `threads` threads of the worker (processes x threads for blocking functions).
template <class Fn, class In>
struct MapChunk {
  using Out = item_result_t<Fn, In>;

  static void entry(Reader& in, Writer& out, const CallContext& context) noexcept {
    const std::size_t mark = out.size();
    Stored<Fn> fn;
    std::vector<ChunkItem<In>> items;
    try {
      decode_callable<Format::binary>(fn, in);
      std::uint64_t n = 0;
      in.read(&n, sizeof n);
      if (n > in.remaining()) throw SerializationError("multicore: corrupt chunk: bad count");
      items = decode_items<In>(in, static_cast<std::size_t>(n));
      expect_request_end(in);
    } catch (...) {
      write_chunk_failure(out, mark);
      return;
    }
    const std::size_t n = items.size();
    std::vector<Stored<Out>> values(n);
    ChunkErrors errors;
    const auto run = [&](std::size_t begin, std::size_t end) noexcept {
      for (std::size_t i = begin; i < end; ++i) {
        try {
          // The result is made right in values[i]: no copy, on any thread's stack.
          values[i].make([&] { return call_item(*fn, take_item<In>(items[i])); });
        } catch (...) {
          errors.add_current(i);
        }
      }
    };
    const auto encode_value = [&](Writer& to, std::size_t i) { encode(to, *values[i]); };
    ChunkItems chunk{n, run, nullptr, 0, encode_value};
    if constexpr (block_value<Out>) {
      const auto copy = [&](std::byte* block) {
        for (std::size_t i = 0; i < n; ++i) {
          std::memcpy(block + i * sizeof(Out), &*values[i], sizeof(Out));
        }
      };
      const FunctionRef<void(std::byte*)> copy_block = copy;
      chunk.copy_block = &copy_block;
      chunk.value_bytes = sizeof(Out);
      run_chunk(out, mark, context, chunk, errors);
    } else {
      run_chunk(out, mark, context, chunk, errors);
    }
  }
};

/// Where read_chunk_answer() puts a chunk's results, without their type.
struct ChunkResults {
  std::size_t expected = 0;
  /// Decodes item i's value from `in` (may throw: the item gets that error).
  FunctionRef<void(std::size_t, Reader&)> decode;
  /// Null unless the values are raw: takes `expected` values from a block.
  const FunctionRef<void(const std::byte*)>* copy_block = nullptr;
  std::size_t value_bytes = 0;  ///< size of one value when copy_block is set
  /// Item i gets `error` instead of a value.
  FunctionRef<void(std::size_t, const std::exception_ptr&)> fail;
};

/// Reads a chunk's answer of `results.expected` items: each item's value through
/// `results.decode` (raw: the whole block through `results.copy_block`), each failed item's
/// error through `results.fail`. Never throws: a malformed answer fails every item.
MULTICORE_DECL void read_chunk_answer(Reader& in, const ChunkResults& results) noexcept;

/// Reads a chunk's answer into one result per item, in `results` (emptied first: storage to
/// reuse, whose pages are already there). Throws only std::bad_alloc, making the results; a
/// malformed answer becomes an error on every item.
template <class Out>
std::vector<ItemResult<Out>> read_chunk(Reader& in, std::size_t expected,
                                        std::vector<ItemResult<Out>> results = {}) {
  results.clear();
  results.resize(expected);
  const auto decode = [&](std::size_t i, Reader& from) { results[i].value.decode(from); };
  const auto fail = [&](std::size_t i, const std::exception_ptr& e) {
    results[i].value.reset();
    results[i].error = e;
  };
  ChunkResults chunk{expected, decode, nullptr, 0, fail};
  if constexpr (block_value<Out>) {
    const auto copy = [&](const std::byte* block) {
      for (std::size_t i = 0; i < expected; ++i) {
        results[i].value.construct(
            [&](void* where) { raw_value_at<Out>(where, block + i * sizeof(Out)); });
      }
    };
    const FunctionRef<void(const std::byte*)> copy_block = copy;
    chunk.copy_block = &copy_block;
    chunk.value_bytes = sizeof(Out);
    read_chunk_answer(in, chunk);
  } else {
    read_chunk_answer(in, chunk);
  }
  return results;
}

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL void write_chunk_failure(Writer& out, std::size_t mark) noexcept {
  try {
    out.resize(mark);
    const std::uint64_t count = 0;
    out.write(&count, sizeof count);
    const auto layout = ChunkLayout::failed;
    out.write(&layout, 1);
    write_serialization_failure(out, out.size(), "decoding a map chunk in the worker");
  } catch (...) {
    out.resize(mark);
  }
}

MULTICORE_DECL void ChunkErrors::add_current(std::size_t i) noexcept {
  Writer error;
  write_current_exception(error);
  std::lock_guard lock(mutex_);
  list.emplace_back(i, std::move(error));
}

MULTICORE_DECL void run_chunk(Writer& out, std::size_t mark, const CallContext& context,
                              const ChunkItems& items, ChunkErrors& chunk_errors) noexcept {
  const std::size_t n = items.n;
  // The worker's team; an inline run (no worker) makes its own, joined before it returns.
  std::optional<ThreadTeam> own_team;
  ThreadTeam& team = context.team != nullptr ? *context.team : own_team.emplace();
  team.run(n, context.threads, items.run);
  std::vector<std::pair<std::size_t, Writer>>& errors = chunk_errors.list;
  try {
    const std::uint64_t count = n;
    out.write(&count, sizeof count);
    if (items.copy_block != nullptr && errors.empty()) {
      const auto layout = ChunkLayout::raw;
      out.write(&layout, 1);
      (*items.copy_block)(out.extend(n * items.value_bytes));
      return;
    }
    const auto layout = ChunkLayout::outcomes;
    out.write(&layout, 1);
    std::sort(errors.begin(), errors.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    auto error = errors.begin();
    for (std::size_t i = 0; i < n; ++i) {
      if (error != errors.end() && error->first == i) {
        out.write(error->second.data(), error->second.size());
        ++error;
        continue;
      }
      const std::size_t item_mark = out.size();
      try {
        write_outcome(out, Outcome::value);
        items.encode(out, i);
      } catch (...) {
        write_serialization_failure(out, item_mark, "encoding a result in the worker");
      }
    }
  } catch (...) {
    write_chunk_failure(out, mark);
  }
}

MULTICORE_DECL void read_chunk_answer(Reader& in, const ChunkResults& results) noexcept {
  const std::size_t expected = results.expected;
  const auto fail_all = [&](const std::exception_ptr& e) {
    for (std::size_t i = 0; i < expected; ++i) results.fail(i, e);
  };
  try {
    std::uint64_t count = 0;
    ChunkLayout layout{};
    in.read(&count, sizeof count);
    in.read(&layout, 1);
    if (layout == ChunkLayout::failed) {
      Outcome o{};
      in.read(&o, 1);
      fail_all(std::make_exception_ptr(SerializationError(read_string(in))));
      return;
    }
    if (count != expected) {
      throw SerializationError("multicore: corrupt map answer: " + std::to_string(count) +
                               " results for " + std::to_string(expected) + " inputs");
    }
    if (layout == ChunkLayout::raw) {
      if (results.copy_block == nullptr) {
        throw SerializationError("multicore: corrupt map answer: unexpected raw layout");
      }
      (*results.copy_block)(in.take(expected * results.value_bytes).data());
    } else if (layout == ChunkLayout::outcomes) {
      for (std::size_t i = 0; i < expected; ++i) {
        try {
          read_value_tag(in);
          results.decode(i, in);
        } catch (...) {
          results.fail(i, std::current_exception());
        }
      }
    } else {
      throw SerializationError("multicore: corrupt map answer: unknown layout");
    }
    expect_end(in);
  } catch (...) {
    fail_all(std::current_exception());
  }
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
