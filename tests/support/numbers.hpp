// SPDX-License-Identifier: MIT
// Integer ranges for tests, standing in for std::views::iota: clang 14 cannot compile
// libstdc++ 12's views (LLVM bug 44178, fixed in clang 16), and the suite must build with it.
#pragma once

#include <cstddef>
#include <iterator>

namespace multicore_test {

/// A forward iterator over consecutive ints.
class NumberIterator {
 public:
  using value_type = int;
  using difference_type = std::ptrdiff_t;
  using iterator_concept = std::forward_iterator_tag;

  NumberIterator() = default;
  explicit NumberIterator(int value) noexcept : value_(value) {}

  int operator*() const noexcept { return value_; }
  NumberIterator& operator++() noexcept {
    ++value_;
    return *this;
  }
  NumberIterator operator++(int) noexcept {
    NumberIterator before = *this;
    ++value_;
    return before;
  }
  friend bool operator==(NumberIterator a, NumberIterator b) noexcept {
    return a.value_ == b.value_;
  }

 private:
  int value_ = 0;
};

/// [first, last): a sized forward range, like std::views::iota(first, last).
class Numbers {
 public:
  Numbers(int first, int last) noexcept : first_(first), last_(last < first ? first : last) {}
  NumberIterator begin() const noexcept { return NumberIterator(first_); }
  NumberIterator end() const noexcept { return NumberIterator(last_); }
  std::size_t size() const noexcept { return static_cast<std::size_t>(last_ - first_); }

 private:
  int first_;
  int last_;
};

/// [first, last) as a range that does not know its size (an input read until it ends, as
/// std::views::iota(first) | std::views::take_while(...) would be).
class UnsizedNumbers {
 public:
  UnsizedNumbers(int first, int last) noexcept
      : first_(first), last_(last < first ? first : last) {}
  NumberIterator begin() const noexcept { return NumberIterator(first_); }
  NumberIterator end() const noexcept { return NumberIterator(last_); }

 private:
  int first_;
  int last_;
};

/// first, first + 1, ... without end: like std::views::iota(first). Not sized.
class NumbersFrom {
 public:
  explicit NumbersFrom(int first) noexcept : first_(first) {}
  NumberIterator begin() const noexcept { return NumberIterator(first_); }
  std::unreachable_sentinel_t end() const noexcept { return {}; }

 private:
  int first_;
};

inline Numbers numbers(int first, int last) noexcept { return {first, last}; }
inline NumbersFrom numbers_from(int first) noexcept { return NumbersFrom(first); }
inline UnsizedNumbers unsized_numbers(int first, int last) noexcept { return {first, last}; }

}  // namespace multicore_test
