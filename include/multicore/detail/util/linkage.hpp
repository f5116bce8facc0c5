// SPDX-License-Identifier: MIT
// Where the library's own non-template functions are compiled: inline in every file that uses
// them (header-only, the default), or once, in the optional compiled part.
#pragma once

// With MULTICORE_SEPARATE_COMPILATION defined (CMake: link multicore::compiled), a header
// declares such a function with MULTICORE_DECL and defines it only under MULTICORE_DEFINE,
// which src/multicore.cpp, the compiled part, turns on: a file that uses a Pool then compiles
// none of them (the way {fmt} and Asio offer it). Every file of a program must agree.
#if defined(MULTICORE_SEPARATE_COMPILATION)
#define MULTICORE_DECL
#if defined(MULTICORE_COMPILED_PART)
#define MULTICORE_DEFINE 1
#else
#define MULTICORE_DEFINE 0
#endif
#else
#define MULTICORE_DECL inline
#define MULTICORE_DEFINE 1
#endif
