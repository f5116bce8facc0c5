#!/usr/bin/env bash
# Runs an MPI job that must fail: it must end (the caller's CTest timeout bounds it), exit
# non-zero (with STATUS, if given), print every pattern given, and leave no process of its
# executables behind.
# Usage: expect_failure.sh [--status STATUS] "<pattern>[|<pattern>...]" <executable>... --
#                          <mpirun command...>
set -uo pipefail
expected_status=""
if [[ $1 == --status ]]; then
  expected_status=$2
  shift 2
fi
IFS='|' read -r -a patterns <<<"$1"
shift
executables=()
while [[ $1 != -- ]]; do executables+=("$1"); shift; done
shift
output=$("$@" 2>&1)
status=$?
echo "$output"
echo "expect_failure: the job exited with status $status"
((status != 0)) || { echo "expect_failure: FAIL: it should have failed"; exit 1; }
if [[ -n $expected_status && $status != "$expected_status" ]]; then
  echo "expect_failure: FAIL: the job should have exited with status $expected_status"
  exit 1
fi
for p in "${patterns[@]}"; do
  grep -qE -- "$p" <<<"$output" || { echo "expect_failure: FAIL: no line matches: $p"; exit 1; }
done
# Workers die with their rank (PR_SET_PDEATHSIG); give them a moment, bounded.
for _ in {1..50}; do
  left=""
  for e in "${executables[@]}"; do
    left+=$(pgrep -f "^$e( |$)" || true)
  done
  [[ -z $left ]] && { echo "expect_failure: ok: it failed as expected, nothing left running"; exit 0; }
  sleep 0.1
done
echo "expect_failure: FAIL: processes left running: $left"
exit 1
