#!/usr/bin/env bash
# Every adapter benchmark this machine can run, then one combined table.
#
# Prepares the test environment (scripts/test-env.sh: Docker daemon, local
# broker images; the benchmarks' fixtures start the containers), runs each
# benchmark below with COURIER_BENCH_OUT pointing at one JSON-lines file,
# prints every row of that file as one table (raw client vs courier, median
# of interleaved rounds, ratio) and says where the file is, so that a later
# run can be compared with it. Kafka's benchmarks that need a real broker
# run only against COURIER_TEST_KAFKA_URL (see the skip below); without
# it the Kafka rows are the mock cluster's.
#
# Usage: scripts/bench.sh [--compare OLD.json] [--only ADAPTER...]
#
#   --compare OLD.json   also print how each row moved since OLD.json
#   --only ADAPTER       run only that adapter's benchmarks (repeatable:
#                        memory, amqp, kafka, nats)
#
# Environment:
#   COURIER_BENCH_OUT    the JSON-lines file to write (default
#                        $COURIER_TEST_STATE_DIR/bench-<UTC time>.json);
#                        rows are appended, so start from a new file
#   COURIER_TEST_KAFKA_URL  a Kafka for the Kafka benchmarks that need one
#   COURIER_BENCH_ROUNDS and the benchmarks' own variables (see each
#                        benchmark's header) pass through
#
# A benchmark that fails is reported and the others still run; the script
# then exits non-zero.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${COURIER_TEST_STATE_DIR:-/var/tmp/courier-test}"
cd "$ROOT"

# adapter  package         bench target  [arguments]
# (the Kafka throughput bench runs twice: on the test broker, whose own
# cost dominates both sides, and on librdkafka's mock cluster, where the
# clients' cost shows)
BENCHES=(
    "memory courier-memory throughput"
    "memory courier-memory runtime_overhead"
    "memory courier-memory telemetry_overhead"
    "memory courier-memory runtime_memory"
    "memory courier-memory request_reply"
    "amqp   courier-amqp   throughput"
    "amqp   courier-amqp   runtime_memory"
    "amqp   courier-amqp   request_reply"
    "kafka  courier-kafka  throughput"
    "kafka  courier-kafka  throughput --mock"
    "kafka  courier-kafka  runtime_memory"
    "kafka  courier-kafka  request_reply"
    "nats   courier-nats   throughput"
    "nats   courier-nats   request_reply"
    "nats   courier-nats   latency"
    "nats   courier-nats   runtime_memory"
)

compare=""
only=()
while [ $# -gt 0 ]; do
    case "$1" in
        --compare) compare="${2:?--compare needs a file}"; shift 2 ;;
        --only) only+=("${2:?--only needs an adapter}"); shift 2 ;;
        -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "[bench] unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -n "$compare" ] && [ ! -f "$compare" ]; then
    echo "[bench] no such file: $compare" >&2
    exit 2
fi

mkdir -p "$STATE_DIR"
OUT="${COURIER_BENCH_OUT:-$STATE_DIR/bench-$(date -u +%Y%m%dT%H%M%SZ).json}"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
export COURIER_BENCH_OUT="$OUT"

bash scripts/test-env.sh

failed=()
skipped=()
for entry in "${BENCHES[@]}"; do
    read -r adapter package target args <<<"$entry"
    if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $adapter "* ]]; then
        continue
    fi
    name="$package/$target${args:+ $args}"
    # The test environment's Kafka-protocol broker (tansu, storing in
    # SQLite) serves a few thousand records a second and its fetches slow
    # down as a partition grows: the raw consumer of `throughput` stalls in
    # its first rounds and a million records through `runtime_memory` do
    # not finish within the hour. They run against a Kafka given in
    # COURIER_TEST_KAFKA_URL; the clients' own cost is measured on
    # librdkafka's mock cluster (`throughput --mock`) either way.
    # Request/reply's few hundred round trips a round run on it.
    if [ "$adapter" = kafka ] && [ -z "$args" ] && [ "$target" != request_reply ] &&
        [ -z "${COURIER_TEST_KAFKA_URL:-}" ]; then
        echo "[bench] $name: skipped: the test broker cannot carry it (set COURIER_TEST_KAFKA_URL to a Kafka to run it)" >&2
        skipped+=("$name")
        continue
    fi
    echo "[bench] cargo bench -p $package --bench $target${args:+ -- $args}" >&2
    t0=$SECONDS
    # shellcheck disable=SC2086 # args is a word list
    if cargo bench -p "$package" --bench "$target" -- $args; then
        echo "[bench] $name: done in $((SECONDS - t0)) s" >&2
    else
        echo "[bench] $name: FAILED after $((SECONDS - t0)) s" >&2
        failed+=("$name")
    fi
done

echo
echo "All benchmarks (median of interleaved rounds; ratio = courier / raw):"
if [ -s "$OUT" ]; then
    if [ -n "$compare" ]; then
        cargo run -q -p courier-testkit --bin bench-table -- "$OUT" --compare "$compare"
    else
        cargo run -q -p courier-testkit --bin bench-table -- "$OUT"
    fi
else
    echo "(no rows were written)"
fi
echo
echo "[bench] rows: $OUT (compare a later run with: scripts/bench.sh --compare $OUT)" >&2
if [ ${#skipped[@]} -gt 0 ]; then
    echo "[bench] skipped: ${skipped[*]}" >&2
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "[bench] failed: ${failed[*]}" >&2
    exit 1
fi
