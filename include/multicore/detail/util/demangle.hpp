// SPDX-License-Identifier: MIT
// Readable C++ type names for error messages ("std::vector<int>", not "St6vectorIiSaIiEE"), and
// the messages of user exceptions, read defensively.
#pragma once

#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>

#include "linkage.hpp"

namespace multicore::detail {

/// Removes every occurrence of `, <prefix>...>` (a defaulted template argument such as
/// `, std::allocator<int> >`) from `name`, matching angle brackets so nested arguments go too.
MULTICORE_DECL void erase_template_argument(std::string& name, std::string_view prefix);

/// Replaces every occurrence of `from` in `name` with `to`. Builds a new string rather than
/// calling std::string::replace, which g++ 12 at -O3 flags with a false -Wrestrict warning
/// (GCC bug 105651) in every file that includes this.
MULTICORE_DECL void replace_all(std::string& name, std::string_view from, std::string_view to);

/// Shortens a demangled libstdc++ name the way a user writes it: drops `__cxx11::` and
/// `(anonymous namespace)::`, defaulted allocators, comparators, hashers, traits and deleters,
/// and spells `std::string`. Only the standard defaults are dropped, so a custom allocator or
/// comparator stays visible.
MULTICORE_DECL std::string tidy_type_name(std::string name);

/// Demangles an Itanium ABI name (a `typeid(...).name()` or a symbol) into a readable type name;
/// returns `mangled` unchanged when it cannot be demangled. Never throws but std::bad_alloc.
MULTICORE_DECL std::string demangle(const char* mangled);

/// `e.what()`, or "" when it returns nullptr (a user type may: std::string(nullptr) would then
/// crash whoever describes the exception, the worker or the caller). A what() that throws
/// cannot be guarded against: what() is noexcept, so the throw calls std::terminate inside it.
inline const char* message_of(const std::exception& e) noexcept {
  const char* what = e.what();
  return what != nullptr ? what : "";
}

/// Describes the exception being handled for an error message: its what(), or its type when it
/// has no message ("an exception of type X with no message"). Call only inside a catch block.
MULTICORE_DECL std::string describe_thrown();

/// The readable name of `T` (cv-qualifiers and references are dropped, as `typeid` does).
template <class T>
std::string type_name() {
  return demangle(typeid(T).name());
}

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL void erase_template_argument(std::string& name, std::string_view prefix) {
  std::size_t at = 0;
  while ((at = name.find(prefix, at)) != std::string::npos) {
    std::size_t depth = 1;  // the prefix ends with the opening '<'
    std::size_t end = at + prefix.size();
    for (; end < name.size(); ++end) {
      if (name[end] == '<') {
        ++depth;
      } else if (name[end] == '>' && --depth == 0) {
        break;
      }
    }
    if (end == name.size()) return;  // unbalanced: leave the name as it is
    name.erase(at, end + 1 - at);
  }
}

MULTICORE_DECL void replace_all(std::string& name, std::string_view from, std::string_view to) {
  std::size_t at = name.find(from);
  if (at == std::string::npos) return;
  std::string out;
  out.reserve(name.size());
  std::size_t copied = 0;
  for (; at != std::string::npos; at = name.find(from, copied)) {
    out.append(name, copied, at - copied);
    out.append(to);
    copied = at + from.size();
  }
  out.append(name, copied, std::string::npos);
  name = std::move(out);
}

MULTICORE_DECL std::string tidy_type_name(std::string name) {
  replace_all(name, "std::__cxx11::", "std::");
  replace_all(name, "(anonymous namespace)::", "");
  for (std::string_view defaulted :
       {", std::char_traits<", ", std::allocator<", ", std::less<", ", std::hash<",
        ", std::equal_to<", ", std::default_delete<"}) {
    erase_template_argument(name, defaulted);
  }
  replace_all(name, " >", ">");
  replace_all(name, "std::basic_string<char>", "std::string");
  replace_all(name, "std::basic_string_view<char>", "std::string_view");
  return name;
}

MULTICORE_DECL std::string demangle(const char* mangled) {
  if (mangled == nullptr) return {};
  int status = 0;
  const std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  if (status != 0 || demangled == nullptr) return mangled;
  return tidy_type_name(demangled.get());
}

MULTICORE_DECL std::string describe_thrown() {
  std::string message;
  try {
    throw;
  } catch (const std::exception& e) {
    message = message_of(e);
  } catch (...) {
  }
  if (!message.empty()) return message;
  const std::type_info* type = abi::__cxa_current_exception_type();
  return "an exception of type " + (type != nullptr ? demangle(type->name()) : "unknown") +
         " with no message";
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
