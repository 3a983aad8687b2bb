#!/usr/bin/env bash
# The whole test suite as three pytest sessions at once, one per group of tests/conftest.py
# TEST_GROUPS ("yarn": the dev YARN's tests and the namespace hosts'; "spark":
# tests/integration on a local Spark cluster; "light": the unit tests, the Ansible deploy,
# and the exchange algorithms', watched and Spark ML jobs). On 2 cores one group's JVM
# start-ups, YARN localisation and polling overlap the others' computing: with two groups
# `make test` took 20 min 01 s in CI, where one session took 22 min 07 s; four groups
# made every session slower than three.
# Each session's output goes to $TFYARN_TEST_LOGS/<group>.log, printed when all have
# ended; the exit status is non-zero when either failed. Extra arguments go to each.
# Short tracebacks: a CI report keeps only the head and tail of the output, and a long
# one pushed a failure's own message (its E lines) out of both.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOGS=${TFYARN_TEST_LOGS:-.test-logs}
mkdir -p "$LOGS"

pids=()
for group in yarn spark light; do
    "$PY" -m pytest --test-group "$group" --durations=15 --tb=short "$@" >"$LOGS/$group.log" 2>&1 &
    pids+=("$!")
done
# Ctrl-C or a CI timeout: SIGINT lets each session run its teardown (Spark, YARN, roles).
trap 'kill -INT "${pids[@]}" 2>/dev/null; wait' INT TERM

status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || status=1
done
for group in yarn spark light; do
    echo "=================== test group $group ($LOGS/$group.log) ==================="
    cat "$LOGS/$group.log"
done
for group in yarn spark light; do
    echo "test group $group: $(tail -n 1 "$LOGS/$group.log")"
done
exit "$status"
