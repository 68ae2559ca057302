#!/usr/bin/env bash
# adflow file-mode benchmark: throughput (events/s) and peak memory (max RSS).
#
#   bench/run.sh                 # default sizes
#   USERS=20000 DAYS=7 bench/run.sh
#
# 1. throughput: one generated data set, `adflow run` with 1 and 2 workers;
# 2. memory vs stream length: data sets of growing length (DAYS_LIST) run with a short state
#    retention (1 day), so live state is the same size whatever the length: peak RSS should stay
#    flat while the input grows.
# Prints a Markdown table to paste into bench/RESULTS.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/adflow"
WORK="${BENCH_DIR:-$ROOT/target/bench}"
USERS="${USERS:-20000}"
DAYS="${DAYS:-7}"
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
"$BIN" generate --output "$WORK/in-main" --seed 1 --users "$USERS" --days "$DAYS" 2>/dev/null
measure "throughput" "$WORK/in-main" 1
measure "throughput" "$WORK/in-main" 2

printf 'state_retention = "1d"\nattribution_window = "1d"\n' > "$WORK/short.toml"
for d in $DAYS_LIST; do
    "$BIN" generate --output "$WORK/in-days$d" --seed 2 --users "$MEM_USERS" --days "$d" 2>/dev/null
    measure "memory-${d}d" "$WORK/in-days$d" 2 "$WORK/short.toml"
done
