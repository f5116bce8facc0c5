// SPDX-License-Identifier: MIT
// The MPI C API, without the deprecated C++ bindings (they add nothing here but warnings).
#pragma once

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
