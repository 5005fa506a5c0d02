#!/usr/bin/env bash
# Instructions per message of the consumer runtime and of a bare receive
# loop, on the in-process broker: a figure that does not move with the
# machine's load, unlike the timings of `runtime_overhead`.
#
# Usage: scripts/instructions.sh [c1] [c8] [c16]   (default: all three)
#
# Runs the `runtime_overhead` benchmark of courier-memory under valgrind's
# callgrind, one side at a time (COURIER_BENCH_SIDE), with N and with 2N
# messages (one round each); the difference of two runs divided by N is a
# side's cost per message, setting up, warming up and shutting down
# cancelled out. The runtime gets one worker thread, so that no idle
# worker's search for work is counted (it varies from run to run). Both
# sides load the broker alike, so the difference between the sides is
# what the runtime adds to the bare loop; the bare loop's own cost is
# counted inside its consume task (callgrind's --toggle-collect), without
# the loading. Needs valgrind (`apt-get install valgrind`); takes about
# a minute per case.
#
# Environment: COURIER_INSTRUCTIONS_MESSAGES (N, default 100000).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v valgrind >/dev/null 2>&1 || {
    echo "valgrind is needed: apt-get install valgrind" >&2
    exit 1
}
N="${COURIER_INSTRUCTIONS_MESSAGES:-100000}"
CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(c1 c8 c16)

BIN=$(cargo bench -p courier-memory --bench runtime_overhead --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$BIN" ] || {
    echo "could not build the runtime_overhead benchmark" >&2
    exit 1
}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# Instructions of case $1, side $2, with $3 messages; with $4, only those
# inside functions matching it (and what they call).
count() {
    local file="$OUT/$1.$2.$3" toggle=()
    [ -z "${4:-}" ] || toggle=(--toggle-collect="$4")
    COURIER_BENCH_ROUNDS=1 COURIER_BENCH_SIDE="$2" COURIER_BENCH_WORKERS=1 valgrind --tool=callgrind \
        --callgrind-out-file="$file" "${toggle[@]}" "$BIN" "$3" "$1" >/dev/null 2>&1
    callgrind_annotate "$file" 2>/dev/null | grep -F 'PROGRAM TOTALS' | awk '{gsub(",", "", $1); print $1}'
}

# Per message of case $1, side $2 (toggle $3), from runs with N and 2N messages.
per_message() {
    local once twice
    once=$(count "$1" "$2" "$N" "${3:-}") twice=$(count "$1" "$2" $((2 * N)) "${3:-}")
    echo $(((twice - once) / N))
}

printf '%-6s %14s %14s %10s\n' case "bare loop/msg" "runtime/msg" overhead
for case in "${CASES[@]}"; do
    bare=$(per_message "$case" raw 'runtime_overhead::bare::{{closure}}::*')
    added=$(($(per_message "$case" courier) - $(per_message "$case" raw)))
    printf '%-6s %14d %14d %9d%%\n' "$case" "$bare" $((bare + added)) $((added * 100 / bare))
done
