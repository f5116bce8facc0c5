// SPDX-License-Identifier: MIT
// The optional compiled part (CMake target multicore::compiled, library libmulticore): the
// definitions of the pool's machinery, compiled once here instead of in every file that uses
// a Pool. Files using it define MULTICORE_SEPARATE_COMPILATION (the target does it for them);
// see detail/core/pool_core.hpp.
#if !defined(MULTICORE_SEPARATE_COMPILATION)
#error "src/multicore.cpp is the compiled part: compile it with MULTICORE_SEPARATE_COMPILATION"
#endif

// Every header's definitions (util/linkage.hpp), with the pool's core and what it runs on.
#define MULTICORE_COMPILED_PART 1
#include <multicore/detail/core/pool_core_impl.hpp>
#include <multicore/multicore.hpp>
