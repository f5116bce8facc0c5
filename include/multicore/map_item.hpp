// SPDX-License-Identifier: MIT
// MapItem: one result of a map as a value or the error in its place (MapResults::items()).
#pragma once

#include <cstddef>
#include <exception>
#include <utility>

namespace multicore {

/// One item of a map: its input's index, and either the function's result or the error that
/// took its place (RemoteError, WorkerLost, TaskTimeout, SerializationError...). What
/// MapResults::items() yields, so that a loop goes past failed items without try/catch:
///
///     for (auto& item : pool.map(parse, files).items())
///       if (item) use(*item); else log(item.index(), item.error());
///
/// The value lives in the map's results: valid until the loop moves on (move it out to keep it).
template <class T>
class MapItem {
 public:
  MapItem(std::size_t index, T* value, std::exception_ptr error) noexcept
      : index_(index), value_(value), error_(std::move(error)) {}

  /// The index of the item's input.
  std::size_t index() const noexcept { return index_; }

  /// True when the item has a value (its function returned).
  bool has_value() const noexcept { return value_ != nullptr; }
  explicit operator bool() const noexcept { return has_value(); }

  /// The value; throws the item's error when it has none.
  T& value() {
    if (value_ == nullptr) std::rethrow_exception(error_);
    return *value_;
  }
  T& operator*() { return value(); }
  T* operator->() { return &value(); }

  /// The error in the value's place; null when the item has a value.
  const std::exception_ptr& error() const noexcept { return error_; }

 private:
  std::size_t index_;
  T* value_;
  std::exception_ptr error_;
};

}  // namespace multicore
