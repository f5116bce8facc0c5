#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""mpi4py.futures on the work of mpi_bench's BM_Map*, as a Python baseline; prints JSON.

Run under mpirun with the same ranks as mpi_bench (rank 0 the client, the others its workers):
    mpirun --oversubscribe --bind-to none -np 3 /usr/bin/python3 -m mpi4py.futures \
        bench/mpi4py_baseline.py [--repetitions 3] [--quick]
map_trivial_items_per_s: executor.map(x*2+1) over 100000 items (chunksize 1000: mpi4py's
default of 1 gives a few thousand items/s); map_cpu_items_per_s: 600 items of ~1 ms of CPU,
the same loop as mpi_bench's cpu_item; sequential_cpu_items_per_s: those items in a plain loop.
"""
import argparse
import json
import statistics
import time

from mpi4py.futures import MPIPoolExecutor


def trivial(x):
    return x * 2 + 1


def cpu_item(x):
    acc = x
    for i in range(400_000 // 40):  # Python is ~40x slower per step: about the same CPU time
        acc = (acc * 31 + i) & 0xFFFFFFFFFFFFFFFF
    return acc


def items_per_s(executor, fn, n, chunksize):
    start = time.perf_counter()
    sum(executor.map(fn, range(n), chunksize=chunksize))
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    trivial_n, cpu_n = (10_000, 60) if args.quick else (100_000, 600)
    result = {}
    with MPIPoolExecutor() as executor:
        items_per_s(executor, trivial, 1000, 100)  # starts the workers
        for name, fn, n, chunk in (("map_trivial_items_per_s", trivial, trivial_n, 1000),
                                   ("map_cpu_items_per_s", cpu_item, cpu_n, 1)):
            runs = [items_per_s(executor, fn, n, chunk) for _ in range(args.repetitions)]
            result[name] = {"median": statistics.median(runs), "runs": runs}
        # The CPU items one after the other in this process: speedup = parallel / sequential.
        runs = []
        for _ in range(args.repetitions):
            start = time.perf_counter()
            sum(cpu_item(i) for i in range(cpu_n // 10))
            runs.append(cpu_n // 10 / (time.perf_counter() - start))
        result["sequential_cpu_items_per_s"] = {"median": statistics.median(runs), "runs": runs}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
