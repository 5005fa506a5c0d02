#!/usr/bin/env bash
# The whole test suite, as CI runs it: prepares the test environment
# (scripts/test-env.sh: Docker daemon, local broker images), then runs every
# test of the workspace with every feature and prints a summary.
#
# One process per test binary (plain `cargo test`, not nextest): the broker
# fixtures share one container per test binary.
#
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p courier-testkit`.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${COURIER_TEST_STATE_DIR:-/var/tmp/courier-test}"
LOG="$STATE_DIR/cargo-test.log"
cd "$ROOT"

start=$(date +%s)
bash scripts/test-env.sh

echo "[test] cargo test --workspace --all-features --no-fail-fast $*" >&2
mkdir -p "$STATE_DIR"
set +e
cargo test --workspace --all-features --no-fail-fast "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e

awk -v status="$status" -v secs="$(($(date +%s) - start))" '
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
    }
' "$LOG" >&2
exit "$status"
