#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python's figures for the same work on the same machine, printed as JSON.

  multiprocessing.Pool.apply round trip (one task in flight)          pool_apply_us
  concurrent.futures.ProcessPoolExecutor.submit().result()            executor_submit_us
  multiprocessing.Pool.map, default chunksize, trivial function       pool_map_tasks_per_s

Each figure is measured --repetitions times; the JSON holds every run and their median.
Worker count: the usable cores (CPU affinity), like multicore's default Pool.
Usage: bench/python_baseline.py [--repetitions 5] [--quick]
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time


def trivial(x):
    return x * 2 + 1


def per_call_us(call, calls):
    for i in range(min(100, calls)):  # warm-up
        call(i)
    start = time.perf_counter()
    for i in range(calls):
        call(i)
    return (time.perf_counter() - start) / calls * 1e6


def figure(runs, unit):
    return {"median": statistics.median(runs), "runs": runs, "unit": unit}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer calls and items (a smoke run)")
    args = parser.parse_args()

    workers = len(os.sched_getaffinity(0))
    calls = 200 if args.quick else 2000
    items = 200_000 if args.quick else 2_000_000
    context = multiprocessing.get_context("fork")  # the default on Linux; made explicit

    apply_runs, submit_runs, map_runs = [], [], []
    with context.Pool(workers) as pool:
        for _ in range(args.repetitions):
            apply_runs.append(per_call_us(lambda i: pool.apply(trivial, (i,)), calls))
        pool.map(trivial, range(1000))  # warm-up
        for _ in range(args.repetitions):
            start = time.perf_counter()
            results = pool.map(trivial, range(items))
            elapsed = time.perf_counter() - start
            if results[-1] != trivial(items - 1):
                sys.exit("python_baseline: wrong result from Pool.map")
            map_runs.append(items / elapsed)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as executor:
        for _ in range(args.repetitions):
            submit_runs.append(per_call_us(lambda i: executor.submit(trivial, i).result(), calls))

    print(json.dumps({
        "python": platform.python_version(),
        "workers": workers,
        "start_method": "fork",
        "calls_per_run": calls,
        "map_items_per_run": items,
        "results": {
            "pool_apply_us": figure(apply_runs, "us per round trip"),
            "executor_submit_us": figure(submit_runs, "us per round trip"),
            "pool_map_tasks_per_s": figure(map_runs, "tasks/s"),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
