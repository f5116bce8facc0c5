// SPDX-License-Identifier: MIT
// Umbrella header: everything multicore offers, in namespace multicore.
#pragma once

#define MULTICORE_VERSION_MAJOR 0
#define MULTICORE_VERSION_MINOR 1
#define MULTICORE_VERSION_PATCH 0

#include "codec.hpp"         // IWYU pragma: export
#include "errors.hpp"        // IWYU pragma: export
#include "map.hpp"           // IWYU pragma: export
#include "options.hpp"       // IWYU pragma: export
#include "pool.hpp"          // IWYU pragma: export
#include "ranges.hpp"        // IWYU pragma: export
#include "shared_array.hpp"  // IWYU pragma: export
#include "snapshot.hpp"      // IWYU pragma: export
#include "stats.hpp"         // IWYU pragma: export
#include "stop.hpp"          // IWYU pragma: export
#include "system.hpp"        // IWYU pragma: export
#include "task.hpp"          // IWYU pragma: export
