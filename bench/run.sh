#!/usr/bin/env bash
# adflow file-mode benchmark: throughput (events/s) and peak memory (max RSS).
#
#   bench/run.sh                 # default sizes
#   USERS=20000 DAYS=7 bench/run.sh
#
# 1. throughput: one generated data set, run with 1 and 2 workers twice over:
#    * "dense": its event time compressed TIME_SCALE times (`generate --time-scale`), so about
#      100k events fall in each second of event time, as in a live stream at the target rate:
#      each 1 s engine tick carries many events and the per-event cost dominates;
#    * "sparse": the same events at their real times (about 12 per second of event time):
#      nearly every event is its own tick, and every impression changes its campaign-hour row
#      (a retraction and an insertion in campaign_metrics), so per-tick and output costs dominate;
# 2. memory vs stream length: data sets of growing length (DAYS_LIST) run with a short state
#    retention (1 day), so live state is the same size whatever the length: peak RSS should stay
#    flat while the input grows.
# Prints a Markdown table to paste into bench/RESULTS.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/adflow"
WORK="${BENCH_DIR:-$ROOT/target/bench}"
USERS="${USERS:-20000}"
DAYS="${DAYS:-1}"
TIME_SCALE="${TIME_SCALE:-8640}"
DAYS_LIST="${DAYS_LIST:-6 12 24 48}"
MEM_USERS="${MEM_USERS:-1000}"
mkdir -p "$WORK"
command -v /usr/bin/time >/dev/null && command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq time bc; }

measure() { # measure NAME INPUT WORKERS [CONFIG]
    local name="$1" input="$2" workers="$3" config="${4:-}"
    local lines; lines=$(cat "$input"/*.jsonl | wc -l)
    local extra=(); [ -n "$config" ] && extra=(--config "$config")
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$WORK/rss" env ADFLOW_LOG=warn "$BIN" run --input "$input" --output "$WORK/out-$name" --workers "$workers" "${extra[@]}"
    end=$(date +%s.%N)
    local secs rss
    secs=$(echo "$end - $start" | bc -l)
    rss=$(cat "$WORK/rss")
    printf '| %s | %d | %d | %.2f | %.0f | %d |\n' "$name" "$workers" "$lines" "$secs" "$(echo "$lines / $secs" | bc -l)" "$((rss / 1024))"
}

echo "| run | workers | input lines | seconds | lines/s | peak RSS MiB |"
echo "|---|---|---|---|---|---|"
"$BIN" generate --output "$WORK/in-dense" --seed 1 --users "$USERS" --days "$DAYS" --time-scale "$TIME_SCALE" 2>/dev/null
measure "dense" "$WORK/in-dense" 1
measure "dense" "$WORK/in-dense" 2
"$BIN" generate --output "$WORK/in-sparse" --seed 1 --users "$USERS" --days "$DAYS" 2>/dev/null
measure "sparse" "$WORK/in-sparse" 1
measure "sparse" "$WORK/in-sparse" 2

printf 'state_retention = "1d"\nattribution_window = "1d"\n' > "$WORK/short.toml"
for d in $DAYS_LIST; do
    "$BIN" generate --output "$WORK/in-days$d" --seed 2 --users "$MEM_USERS" --days "$d" 2>/dev/null
    measure "memory-${d}d" "$WORK/in-days$d" 2 "$WORK/short.toml"
done
