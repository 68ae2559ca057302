#!/usr/bin/env bash
# adflow Kafka → dataflow benchmark: consumed rate and end-to-end latency (produce timestamp →
# effects handed to the sinks, p50/p99/max) at several offered rates.
#
#   bench/kafka.sh                          # defaults below
#   USERS=1000 DAYS=4 RATES="10000 50000 0" bench/kafka.sh   # 0 = as fast as possible
#   USERS=20000 DAYS=1 TIME_SCALE=8640 RATES="100000 0" bench/kafka.sh
#       # event time compressed so that ~100k events fall in each second of event time: at
#       # 100k lines/s offered, event time then moves about as fast as the wall clock (live)
#
# Starts its own tansu broker (memory storage) on $PORT, generates one data set, and for each
# rate starts `adflow run --kafka ... --latency --exit-when-idle 3` on fresh topics, then
# `adflow produce --rate R`. Prints a Markdown table for bench/RESULTS.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/adflow"
WORK="${BENCH_DIR:-$ROOT/target/bench-kafka}"
USERS="${USERS:-1000}"
DAYS="${DAYS:-4}"
TIME_SCALE="${TIME_SCALE:-1}"
RATES="${RATES:-10000 20000 50000 100000 0}"
WORKERS="${WORKERS:-2}"
PORT="${PORT:-19095}"
mkdir -p "$WORK"
bash "$ROOT/scripts/services/tansu.sh" install >&2
BROKERS="$(bash "$ROOT/scripts/services/tansu.sh" start --port "$PORT")"
trap 'bash "$ROOT/scripts/services/tansu.sh" stop --port "$PORT" >/dev/null 2>&1 || true' EXIT
"$BIN" generate --output "$WORK/in" --seed 1 --users "$USERS" --days "$DAYS" --time-scale "$TIME_SCALE" 2>/dev/null
LINES=$(cat "$WORK"/in/*.jsonl | grep -c . || true)
# LATENESS (e.g. "1s") overrides the allowed lateness (default 5 s), which the latency includes.
{ [ -n "${LATENESS:-}" ] && printf 'allowed_lateness = "%s"\n' "$LATENESS"; printf '[kafka]\nidle_timeout = "2s"\n'; } > "$WORK/bench.toml"

echo "| offered rate (lines/s) | lines | produced lines/s | consumed msg/s | latency p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|"
for rate in $RATES; do
    prefix="bench$(date +%s%N)_"
    rm -rf "$WORK/out"
    ADFLOW_LOG=warn "$BIN" run --kafka "$BROKERS" --topic-prefix "$prefix" --group "${prefix}g" \
        --workers "$WORKERS" --output "$WORK/out" --config "$WORK/bench.toml" \
        --latency --exit-when-idle 3 2> "$WORK/run.log" &
    run=$!
    sleep 2 # topics created, consumers assigned
    extra=(); [ "$rate" != 0 ] && extra=(--rate "$rate")
    ADFLOW_LOG=warn "$BIN" produce --input "$WORK/in" --kafka "$BROKERS" --topic-prefix "$prefix" "${extra[@]}" 2> "$WORK/produce.log"
    wait "$run"
    produced=$(grep -o '([0-9.]* lines/s)' "$WORK/produce.log" | tr -dc '0-9.')
    lat=$(grep '^latency' "$WORK/run.log")
    p50=$(echo "$lat" | sed -E 's/.*p50 ([0-9]+) ms.*/\1/')
    p99=$(echo "$lat" | sed -E 's/.*p99 ([0-9]+) ms.*/\1/')
    max=$(echo "$lat" | sed -E 's/.*max ([0-9]+) ms.*/\1/')
    consumed=$(echo "$lat" | sed -E 's/.*consumed ([0-9]+) msg\/s.*/\1/')
    label=$rate; [ "$rate" = 0 ] && label="unlimited"
    echo "| $label | $LINES | ${produced%.*} | $consumed | $p50 | $p99 | $max |"
done
