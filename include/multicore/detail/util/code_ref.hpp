// SPDX-License-Identifier: MIT
// Naming code so that another process running the same build finds it: (module, offset).
#pragma once

#include <elf.h>
#include <link.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "../../errors.hpp"
#include "linkage.hpp"

namespace multicore::detail {

// A function's address is valid in a fork of this process, but not in another process started
// from the same binary (an MPI rank): address space layout randomisation loads every module at
// another base. Its offset from the base of the module that holds it is the same everywhere,
// though, and the modules are loaded in the same order when the same build runs with the same
// libraries. So code is named by (index of its module in load order, offset), 16 + 48 bits; the
// ranks compare their modules' GNU build-ids once at start-up (see module_list) before trusting
// any name, since equal offsets alone prove nothing.

/// One loaded module (the executable, a shared library): where it is and what build it is.
struct LoadedModule {
  std::uintptr_t base = 0;   ///< where it is loaded (dlpi_addr: addresses are base + offset)
  std::uintptr_t begin = 0;  ///< lowest address of its loaded segments
  std::uintptr_t end = 0;    ///< one past the highest
  std::string name;          ///< its path ("" for the executable)
  std::string build_id;      ///< its GNU build-id, in hex ("" if it has none)
};

/// Modules of this process in load order (the order dl_iterate_phdr reports, which is the
/// dynamic loader's), read once, when first needed.
class ModuleTable {
 public:
  static const ModuleTable& instance() {
    static const ModuleTable table;
    return table;
  }

  const std::vector<LoadedModule>& modules() const noexcept { return modules_; }

  /// The name of the code at `address`: (module index << 48) | offset. Throws Error if no
  /// loaded module holds it.
  std::uint64_t name_of(const void* address) const {
    const auto a = reinterpret_cast<std::uintptr_t>(address);
    for (std::size_t i = 0; i < modules_.size(); ++i) {
      const LoadedModule& m = modules_[i];
      if (a >= m.begin && a < m.end) return (std::uint64_t{i} << offset_bits) | (a - m.base);
    }
    throw Error(
        "multicore: the function to run is not in any module loaded when the first "
        "task was sent (a module loaded later with dlopen cannot be named)");
  }

  /// The address a name stands for in this process, or nullptr if its module is unknown here.
  void* address_of(std::uint64_t name) const noexcept {
    const std::uint64_t index = name >> offset_bits;
    if (index >= modules_.size()) return nullptr;
    // NOLINTNEXTLINE(performance-no-int-to-ptr): turning a name back into code is the point
    return reinterpret_cast<void*>(modules_[index].base + (name & offset_mask));
  }

 private:
  static constexpr unsigned offset_bits = 48;
  static constexpr std::uint64_t offset_mask = (std::uint64_t{1} << offset_bits) - 1;

  ModuleTable();
  void add(const dl_phdr_info& info);
  /// The GNU build-id in a PT_NOTE segment, as hex; "" if it has none.
  static std::string build_id_in(std::uintptr_t notes, std::size_t size);

  std::vector<LoadedModule> modules_;
};

/// The name of the code at `address`, valid in every process running this build.
MULTICORE_DECL std::uint64_t code_name(const void* address);

/// The code a name stands for in this process (nullptr if its module is not loaded here).
MULTICORE_DECL void* code_address(std::uint64_t name) noexcept;

// ---- definitions (see util/linkage.hpp) ------------------------------------------------------
#if MULTICORE_DEFINE

MULTICORE_DECL std::uint64_t code_name(const void* address) {
  return ModuleTable::instance().name_of(address);
}

MULTICORE_DECL void* code_address(std::uint64_t name) noexcept {
  return ModuleTable::instance().address_of(name);
}

MULTICORE_DECL ModuleTable::ModuleTable() {
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* table) {
        static_cast<ModuleTable*>(table)->add(*info);
        return 0;
      },
      this);
}

MULTICORE_DECL void ModuleTable::add(const dl_phdr_info& info) {
  LoadedModule m;
  m.base = info.dlpi_addr;
  m.begin = UINTPTR_MAX;
  m.name = info.dlpi_name != nullptr ? info.dlpi_name : "";
  for (ElfW(Half) i = 0; i < info.dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info.dlpi_phdr[i];
    if (ph.p_type == PT_LOAD) {
      m.begin = std::min<std::uintptr_t>(m.begin, info.dlpi_addr + ph.p_vaddr);
      m.end = std::max<std::uintptr_t>(m.end, info.dlpi_addr + ph.p_vaddr + ph.p_memsz);
    } else if (ph.p_type == PT_NOTE && m.build_id.empty()) {
      m.build_id = build_id_in(info.dlpi_addr + ph.p_vaddr, ph.p_memsz);
    }
  }
  if (m.begin == UINTPTR_MAX) m.begin = m.end = 0;
  modules_.push_back(std::move(m));
}

MULTICORE_DECL std::string ModuleTable::build_id_in(std::uintptr_t notes, std::size_t size) {
  static constexpr char hex[] = "0123456789abcdef";
  std::size_t at = 0;
  while (at + sizeof(ElfW(Nhdr)) <= size) {
    ElfW(Nhdr) note;
    std::memcpy(&note, reinterpret_cast<const void*>(notes + at), sizeof note);
    const std::size_t name_at = at + sizeof note;
    const std::size_t desc_at = name_at + ((note.n_namesz + 3) & ~std::size_t{3});
    const std::size_t next = desc_at + ((note.n_descsz + 3) & ~std::size_t{3});
    if (next > size) break;
    const auto* name = reinterpret_cast<const char*>(notes + name_at);
    if (note.n_type == NT_GNU_BUILD_ID && note.n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0) {
      const auto* desc = reinterpret_cast<const unsigned char*>(notes + desc_at);
      std::string id;
      for (std::size_t i = 0; i < note.n_descsz; ++i) {
        id += hex[desc[i] >> 4];
        id += hex[desc[i] & 15];
      }
      return id;
    }
    at = next;
  }
  return {};
}

#endif  // MULTICORE_DEFINE

}  // namespace multicore::detail
