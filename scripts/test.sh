#!/usr/bin/env bash
# The whole test suite, as CI runs it: prepares the test environment
# (scripts/test-env.sh: Docker daemon, local broker images), runs every
# test of the workspace with every feature and prints a summary, then runs
# the static checks (scripts/checks.sh: fmt, clippy, docs, each facade
# feature alone, unused dependencies). It fails if either part fails.
#
# COURIER_SKIP_CHECKS=1 runs the tests only.
#
# The conformance suite prints the log lines COURIER_TEST_LOG selects; by
# default the Kafka adapter's subscription lines (assigned, paused, ended)
# and rdkafka's warnings, so that a stalled consumer group in a run leaves
# its story in the log. COURIER_TEST_LOG= (empty) prints none.
#
# One process per test binary (plain `cargo test`, not nextest): the broker
# fixtures share one container per test binary. Each container's state and
# last output lines are kept in $STATE_DIR/containers when it is removed
# (COURIER_TEST_CONTAINER_LOGS); after a failed run the containers that had
# stopped on their own and any server output reporting a panic are shown.
#
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p courier-testkit`.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${COURIER_TEST_STATE_DIR:-/var/tmp/courier-test}"
LOG="$STATE_DIR/cargo-test.log"
cd "$ROOT"

start=$(date +%s)
# A one-off build (CI) gains nothing from incremental state but its disk use.
if [ -n "${CI:-}" ]; then
    export CARGO_INCREMENTAL=0
fi
bash scripts/test-env.sh
export COURIER_TEST_LOG="${COURIER_TEST_LOG-courier_kafka=debug,rdkafka=warn}"
export COURIER_TEST_CONTAINER_LOGS="${COURIER_TEST_CONTAINER_LOGS:-$STATE_DIR/containers}"
rm -rf "$COURIER_TEST_CONTAINER_LOGS"
mkdir -p "$COURIER_TEST_CONTAINER_LOGS"

echo "[test] cargo test --workspace --all-features --no-fail-fast $*" >&2
mkdir -p "$STATE_DIR"
set +e
cargo test --workspace --all-features --no-fail-fast "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e

summary=$(awk -v status="$status" -v secs="$(($(date +%s) - start))" '
    /^test result: / {
        binaries++
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed/) passed += $i
            if ($(i + 1) ~ /^failed/) failed += $i
            if ($(i + 1) ~ /^ignored/) ignored += $i
        }
    }
    /^test .* \.\.\. FAILED$/ { failures = failures "\n  " $2 }
    END {
        printf "\n[test] summary: %d test binaries, %d passed, %d failed, %d ignored; cargo exit %d; %d s in all\n",
            binaries, passed, failed, ignored, status, secs
        if (failures != "") printf "[test] failed:%s\n", failures
        printf "courier: %d passed, %d failed, %d skipped\n", passed, failed, ignored
    }
' "$LOG")
echo "$summary" | grep -v '^courier:' >&2

# What the servers said, when a test failed: a container that had stopped
# when its test binary ended (a crash, or a test that stopped it and did
# not start it again) and server output that reports a panic.
show_containers() {
    local dir="$COURIER_TEST_CONTAINER_LOGS" waited=0 file state
    # The watchers write a container's file when its test binary is gone.
    while pgrep -f courier-test-reaper >/dev/null 2>&1 && [ "$waited" -lt 30 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    for file in "$dir"/*.log; do
        [ -e "$file" ] || continue
        state=$(head -n 1 "$file")
        case "$state" in
        "state: exited,"* | "state: dead,"*)
            echo "[test] container $(basename "$file" .log) had stopped: $state" >&2
            tail -n 30 "$file" >&2
            ;;
        esac
        if grep -q "panicked" "$file"; then
            echo "[test] container $(basename "$file" .log) reported a panic:" >&2
            grep -m 10 -A 3 "panicked" "$file" >&2 || true
        fi
    done
    echo "[test] container output of this run: $dir" >&2
}
[ "$status" -eq 0 ] || show_containers

checks=0
if [ "${COURIER_SKIP_CHECKS:-0}" != 1 ] && [ "$#" -eq 0 ]; then
    bash scripts/checks.sh || checks=$?
fi
echo "[test] tests: cargo exit $status; checks: exit $checks; $(($(date +%s) - start)) s in all" >&2
# The tests' count, last, on a line of its own.
echo "$summary" | grep '^courier:'
[ "$status" -eq 0 ] || exit "$status"
exit "$checks"
