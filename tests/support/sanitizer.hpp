// SPDX-License-Identifier: MIT
// Whether this test binary runs under a sanitizer (they reserve terabytes of address space, so
// tests that set RLIMIT_AS cannot run under them).
#pragma once

#include "failure.hpp"  // MULTICORE_TEST_ASAN

#if defined(__SANITIZE_THREAD__)
#define MULTICORE_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MULTICORE_TEST_TSAN 1
#endif
#endif
#ifndef MULTICORE_TEST_TSAN
#define MULTICORE_TEST_TSAN 0
#endif

namespace multicore_test {

inline constexpr bool under_sanitizer = MULTICORE_TEST_ASAN != 0 || MULTICORE_TEST_TSAN != 0;

}  // namespace multicore_test
