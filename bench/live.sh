#!/usr/bin/env bash
# bench/live.sh — freshness of live mode under the live load generator.
#
# For each layout (processes x workers) and each offered rate, `adflow produce --live` sends
# the generator's mix of all event types with `ts` = the wall clock at send, for DURATION
# seconds, to a tansu broker on this machine; `adflow run --kafka` (one or more processes on
# loopback) consumes it with a file sink per process and, with CLICKHOUSE=1, the ClickHouse
# sink. Freshness is sampled every 250 ms while the producer runs, from outside the pipeline:
#   file sink:  now - the newest `version` in the processes' campaign_metrics.jsonl
#   ClickHouse: now - max(version) of the rows INSERTed into campaign_metrics (the view
#               campaign_metrics_current is computed from them at query time, so a row is
#               visible there as soon as its INSERT is; querying the view itself every 250 ms
#               would aggregate the whole table each time)
# plus the engine's own `--latency` (each message's produce timestamp -> the global frontier
# passing its effects). A version is an event time rounded up to the tick, so the sampled
# figure plus the tick bounds the true "event ts -> visible" from above; it is reported with the
# tick added. Reported: p50 / p99 / max, p99 of the first and the second half of the run
# (growing = not sustainable), consumed rate, CPU seconds (total, and per process in a cluster)
# and peak RSS of the adflow processes.
#
# Also reported: the CPU seconds the broker, ClickHouse and the load generator took during the
# run ("others": broker+clickhouse+producer), to see who shares the two cores, and the broker's
# CPU in the first and the second half of the run (tansu's in-memory storage costs more per
# message the more it holds: a growing broker takes the cores from the pipeline).
#
# Knobs: RATES (events/s, 0 = unthrottled: the producer at 1M/s), DURATION (s), LAYOUTS
# ("1x2 2x1"), USERS, CLICKHOUSE (1/0), TICK, LATENESS, COMMIT, CH_BATCH_MS (the ClickHouse
# sink's `batch_ms`; unset: the live default, 250), UNTHROTTLED_STORAGE (memory | sqlite: the
# broker's storage for the unthrottled run).
# Everything runs on this machine (broker, ClickHouse, producer, pipeline share the cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/adflow}"
RATES="${RATES:-25000 50000 100000 0}"
DURATION="${DURATION:-120}"
LAYOUTS="${LAYOUTS:-1x2 2x1}"
USERS="${USERS:-20000}"
CLICKHOUSE="${CLICKHOUSE:-1}"
TICK="${TICK:-100ms}"
LATENESS="${LATENESS:-300ms}"
COMMIT="${COMMIT:-1s}"
CH_BATCH_MS="${CH_BATCH_MS:-}"
PORT="${PORT:-19392}"
WORK="$(mktemp -d /tmp/adflow-live-bench.XXXXXX)"

need=()
[ -x /usr/bin/time ] || need+=(time)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
[ -x "$BIN" ] || cargo build --release -p adflow-cli
bash scripts/services/tansu.sh install >/dev/null
BROKERS=""
TANSU_PID=""
# A fresh broker for every run: the in-memory broker keeps every message it was sent, and the
# runs before an unthrottled one would otherwise add up to more than the machine's memory.
# UNTHROTTLED_STORAGE=sqlite keeps the unthrottled run's backlog on disk instead (slow: tansu's
# sqlite storage passed only ~21k events/s at 1.5 cores on the 2-core machine of 2026-12-08).
fresh_broker() { # $1: memory | sqlite
    bash scripts/services/tansu.sh stop --port "$PORT" >/dev/null 2>&1 || true
    rm -f "$WORK"/tansu.db*
    if [ "$1" = sqlite ]; then
        BROKERS="$(bash scripts/services/tansu.sh start --port "$PORT" --sqlite "$WORK/tansu.db")"
    else
        BROKERS="$(bash scripts/services/tansu.sh start --port "$PORT")"
    fi
    TANSU_PID="$(cat "${ADFLOW_TANSU_STATE:-/tmp/adflow-tansu}-$PORT/tansu.pid" 2>/dev/null || true)"
}
CH=""
cleanup() {
    pkill -f "$WORK" 2>/dev/null || true
    bash scripts/services/tansu.sh stop --port "$PORT" >/dev/null 2>&1 || true
    [ -n "$CH" ] && bash scripts/services/clickhouse.sh stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$CLICKHOUSE" = 1 ]; then
    CH="$(bash scripts/services/clickhouse.sh start)"
fi

# utime + stime of a pid in seconds (0 when it is gone).
cpu_of() {
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
    awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.1f", ($12 + $13) / hz}' "/proc/$1/stat"
}
CH_PID=""
[ -n "$CH" ] && CH_PID="$(cat "${ADFLOW_CLICKHOUSE_DIR:-$ROOT/target/services/clickhouse}/clickhouse.pid" 2>/dev/null || true)"

tick_ms() { case "$1" in *ms) echo "${1%ms}" ;; *s) echo $(( ${1%s} * 1000 )) ;; esac; }
TICK_MS="$(tick_ms "$TICK")"
now_ms() { date +%s%3N; }
# p50 p99 max of the numbers in file $1 (one per line).
pct() {
    sort -n "$1" | awk '{a[NR]=$1} END {if (NR==0) {print "- - -"; exit}
        i50=int(NR*0.50); if (i50<1) i50=1; i99=int(NR*0.99); if (i99<1) i99=1;
        printf "%d %d %d\n", a[i50], a[i99], a[NR]}'
}
half_p99() { # p99 of the first and second half of the samples in $1
    local n; n=$(wc -l < "$1"); [ "$n" -ge 4 ] || { echo "- -"; return; }
    head -n $((n / 2)) "$1" > "$1.a"; tail -n $((n - n / 2)) "$1" > "$1.b"
    echo "$(pct "$1.a" | cut -d' ' -f2) $(pct "$1.b" | cut -d' ' -f2)"
}

cat > "$WORK/cfg.toml" <<EOF
allowed_lateness = "$LATENESS"
tick = "$TICK"
[kafka]
commit_interval = "$COMMIT"
EOF
[ -n "$CH_BATCH_MS" ] && printf '[clickhouse]\nbatch_ms = %s\n' "$CH_BATCH_MS" >> "$WORK/cfg.toml"

printf '%-6s %-8s %-9s %-22s %-22s %-20s %-12s %-8s %-9s %-34s %s\n' layout offered consumed \
    "file p50/p99/max ms" "ch p50/p99/max ms" "engine p50/p99/max" "p99 1st/2nd" "cpu s" "rss MiB" \
    "others cpu s (broker+ch+producer)" "broker cpu s 1st/2nd half"
run_one() {
    local layout="$1" rate="$2"
    local n="${layout%x*}" w="${layout#*x}" prefix="b$RANDOM$RANDOM."
    local dir="$WORK/$prefix"; mkdir -p "$dir"
    : > "$dir/hosts"
    for i in $(seq 0 $((n - 1))); do echo "127.0.0.1:$((PORT + 100 + i))" >> "$dir/hosts"; done
    local db="bench_${prefix%.}"
    if [ "$rate" = 0 ]; then fresh_broker "${UNTHROTTLED_STORAGE:-memory}"; else fresh_broker memory; fi
    local pids=()
    for i in $(seq 0 $((n - 1))); do
        local args=(run --kafka "$BROKERS" --topic-prefix "$prefix" --workers "$w" --output "$dir/out$i"
            --config "$WORK/cfg.toml" --latency)
        [ "$n" -gt 1 ] && args+=(--processes "$n" --process "$i" --hostfile "$dir/hosts")
        [ -n "$CH" ] && args+=(--sink "clickhouse=$CH/?database=$db")
        ADFLOW_LOG=warn /usr/bin/time -v "$BIN" "${args[@]}" > "$dir/run$i.out" 2> "$dir/run$i.err" &
        pids+=($!)
    done
    sleep 3
    local tansu0 ch0; tansu0=$(cpu_of "$TANSU_PID"); ch0=$(cpu_of "$CH_PID")
    local offered="$rate"; [ "$rate" = 0 ] && offered=1000000
    /usr/bin/time -v "$BIN" produce --live --kafka "$BROKERS" --topic-prefix "$prefix" --rate "$offered" \
        --duration "$DURATION" --users "$USERS" > "$dir/produce.out" 2> "$dir/produce.err" &
    local prod=$!
    : > "$dir/file.lat"; : > "$dir/ch.lat"
    local started_ms tansu_mid=""; started_ms=$(now_ms)
    sleep 2
    while kill -0 "$prod" 2>/dev/null; do
        local t; t=$(now_ms)
        if [ -z "$tansu_mid" ] && [ $((t - started_ms)) -ge $((DURATION * 500)) ]; then
            tansu_mid=$(cpu_of "$TANSU_PID")
        fi
        local v=0
        for i in $(seq 0 $((n - 1))); do
            local f="$dir/out$i/campaign_metrics.jsonl"
            [ -s "$f" ] || continue
            # The last line may be half written: read the newest complete one.
            local x; x=$(tail -c 4096 "$f" | sed '$d' | grep -o '"version":[0-9]*' | tail -1 | cut -d: -f2 || true)
            [ -n "$x" ] && [ "$x" -gt "$v" ] && v=$x
        done
        [ "$v" -gt 0 ] && echo $(( t - v + TICK_MS )) >> "$dir/file.lat"
        if [ -n "$CH" ]; then
            local c; c=$(curl -s "$CH/?database=$db" --data-binary \
                "SELECT max(version) FROM campaign_metrics WHERE batch_marker = ''" 2>/dev/null || echo 0)
            [[ "$c" =~ ^[0-9]+$ ]] && [ "$c" -gt 0 ] && echo $(( $(now_ms) - c + TICK_MS )) >> "$dir/ch.lat"
        fi
        sleep 0.25
    done
    wait "$prod" || true
    local halves
    halves="$(awk -v a="$tansu0" -v m="${tansu_mid:-$tansu0}" -v e="$(cpu_of "$TANSU_PID")" \
        'BEGIN {printf "%.0f/%.0f", m - a, e - m}')"
    sleep 3
    local others
    others="$(awk -v a="$(cpu_of "$TANSU_PID")" -v b="$tansu0" -v c="$(cpu_of "$CH_PID")" -v d="$ch0" \
        -v p="$(awk -F': ' '/User time|System time/ {s+=$2} END {printf "%.1f", s}' "$dir/produce.err")" \
        'BEGIN {printf "%.0f+%.0f+%.0f", a - b, c - d, p}')"
    for p in "${pids[@]}"; do pkill -TERM -P "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" || true; done
    local consumed cpu rss eng
    consumed=$(cat "$dir"/run*.err | grep -o 'run --kafka: [0-9]* messages' | awk '{s+=$3} END {print s+0}' || true)
    cpu=$(cat "$dir"/run*.err | awk -F': ' '/User time|System time/ {s+=$2} END {printf "%.0f", s}')
    # Per process (process 0 first): with ClickHouse, process 0's worker 0 writes the whole
    # cluster's output; a process 0 far above the others would be the funnel's bottleneck.
    local per=""
    for i in $(seq 0 $((n - 1))); do
        per+="$(awk -F': ' '/User time|System time/ {s+=$2} END {printf "%.0f", s}' "$dir/run$i.err")+"
    done
    [ "$n" -gt 1 ] && cpu="$cpu(${per%+})"
    rss=$(cat "$dir"/run*.err | awk -F': ' '/Maximum resident/ {s+=$2} END {printf "%.0f", s/1024}')
    eng=$(cat "$dir"/run*.err | grep -o 'p50 [0-9]* ms, p99 [0-9]* ms, max [0-9]* ms' | head -1 | sed -E 's/p50 ([0-9]+) ms, p99 ([0-9]+) ms, max ([0-9]+) ms/\1\/\2\/\3/' || true)
    printf '%-6s %-8s %-9s %-22s %-22s %-20s %-12s %-8s %-9s %-34s %s\n' "$layout" "$offered" \
        "$(( consumed / DURATION ))/s" "$(pct "$dir/file.lat" | tr ' ' /)" \
        "$( [ -n "$CH" ] && pct "$dir/ch.lat" | tr ' ' / || echo -)" "${eng:--}" \
        "$(half_p99 "$dir/file.lat" | tr ' ' /)" "$cpu" "$rss" "$others" "$halves"
    [ -n "${KEEP:-}" ] && cp -r "$dir" "${KEEP}/" || true
}
for layout in $LAYOUTS; do
    for rate in $RATES; do
        run_one "$layout" "$rate"
    done
done
echo "(machine: $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ); broker, ClickHouse, producer and pipeline on the same cores)"
