#!/usr/bin/env bash
# `make demo-kdniao`: the end-to-end demo with the logistics stream coming through the Kdniao
# connector instead of a file. Needs no server besides the two local processes it starts.
#
#   1. `adflow generate` writes a data set (ad_events, orders, logistics, identity).
#   2. `adflow kdniao receive --listen 127.0.0.1:$RECV_PORT --output $DIR/connector` starts
#      the push receiver (file publisher: appends + fsyncs $DIR/connector/logistics.jsonl).
#   3. `adflow kdniao sandbox --tracks $DIR/input/logistics.jsonl` starts the stand-in Kdniao
#      server with the data set's waybills and their track sequences.
#   4. The stand-in pushes them to the receiver: signed RequestType 102 pushes (per-trace
#      states), replaying in trace-time order how each waybill's trace grew (each new trace is
#      pushed with the waybill's full trace so far, as Kdniao does), at most 200 waybills a push.
#   5. Both processes are stopped; `adflow run` runs on ad_events/orders/identity of the data
#      set plus the receiver's logistics.jsonl, and `adflow report` shows what it found.
#   6. With COMPARE=1 (default) the pipeline also runs on the generated logistics.jsonl and the
#      two reports are compared (expected difference: the logistics dead letters, because the
#      connector never emits malformed lines).
#
# Settings (environment): BIN (default target/release/adflow), DEMO_DIR (demo-kdniao), SEED (7),
# USERS (2000), DAYS (7), WORKERS (2), RECV_PORT (18741), SANDBOX_PORT (18742), COMPARE (1).
# Needs curl (to tell the stand-in to push).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BIN="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/adflow}"
DIR="${DEMO_DIR:-demo-kdniao}"
SEED="${SEED:-7}"
USERS="${USERS:-2000}"
DAYS="${DAYS:-7}"
WORKERS="${WORKERS:-2}"
RECV_PORT="${RECV_PORT:-18741}"
SANDBOX_PORT="${SANDBOX_PORT:-18742}"
COMPARE="${COMPARE:-1}"

say() { echo "== demo-kdniao: $*" >&2; }
die() { echo "demo-kdniao: $*" >&2; exit 1; }

[[ -x "$BIN" ]] || die "no adflow binary at $BIN (run: cargo build --release -p adflow-cli)"
command -v curl >/dev/null 2>&1 || die "curl is needed (Debian: apt-get install curl)"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$RECV_PORT" "$SANDBOX_PORT"; do
    if answers "$p"; then
        die "port $p is taken; set RECV_PORT / SANDBOX_PORT to free ports"
    fi
done

PIDS=()
stop_services() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    PIDS=()
}
trap stop_services EXIT
trap 'stop_services; exit 130' INT TERM

wait_for() { # name port pid log
    for _ in $(seq 1 300); do
        answers "$2" && return 0
        kill -0 "$3" 2>/dev/null || { tail -n 20 "$4" >&2; die "$1 exited"; }
        sleep 0.1
    done
    tail -n 20 "$4" >&2
    die "$1 did not listen on port $2 within 30 s"
}

rm -rf "$DIR"
mkdir -p "$DIR/logs"
say "generating a data set (seed $SEED, $USERS users, $DAYS days) in $DIR/input"
"$BIN" generate --output "$DIR/input" --seed "$SEED" --users "$USERS" --days "$DAYS"

# Credentials shared by the stand-in and the receiver: a fresh random AppKey, never printed.
export KDNIAO_EBUSINESS_ID="demo-merchant"
KDNIAO_APP_KEY="demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
export KDNIAO_APP_KEY
export ADFLOW_LOG="${ADFLOW_LOG:-info}"
export NO_COLOR=1 # plain logs in $DIR/logs

say "starting the push receiver on 127.0.0.1:$RECV_PORT (writes $DIR/connector/logistics.jsonl)"
"$BIN" kdniao receive --listen "127.0.0.1:$RECV_PORT" --output "$DIR/connector" \
    >"$DIR/logs/receiver.log" 2>&1 &
PIDS+=("$!")
wait_for receiver "$RECV_PORT" "$!" "$DIR/logs/receiver.log"

say "starting the stand-in Kdniao server on 127.0.0.1:$SANDBOX_PORT with the data set's waybills"
"$BIN" kdniao sandbox --listen "127.0.0.1:$SANDBOX_PORT" --tracks "$DIR/input/logistics.jsonl" \
    >"$DIR/logs/sandbox.log" 2>&1 &
PIDS+=("$!")
wait_for sandbox "$SANDBOX_PORT" "$!" "$DIR/logs/sandbox.log"
grep -o 'waybills=[0-9]* tracks=[0-9]* skipped=[0-9]* duplicates=[0-9]*' "$DIR/logs/sandbox.log" |
    sed 's/^/   stand-in loaded: /' >&2 || true

say "the stand-in pushes every waybill's track sequence to the receiver (RequestType 102)"
summary="$(curl -sS --fail -X POST -H 'content-type: application/json' \
    --data "{\"callback_url\":\"http://127.0.0.1:$RECV_PORT/kdniao/push\",\"request_type\":102,\"progressive\":true,\"max_items\":200}" \
    "http://127.0.0.1:$SANDBOX_PORT/control/push")" || die "the push request failed; see $DIR/logs"
field() { grep -o "\"$1\":[0-9]*" <<<"$2" | head -n 1 | cut -d: -f2; }
pushes="$(field pushes "$summary")"
failed="$(field failed "$summary")"
items="$(field items "$summary")"
echo "   pushes: $pushes (items: $items), not accepted: $failed" >&2
[[ "$failed" == "0" ]] || die "$failed push(es) not accepted: $summary"
echo "   receiver counters: $(curl -sS "http://127.0.0.1:$RECV_PORT/metrics")" >&2

say "stopping the receiver and the stand-in"
stop_services

mkdir -p "$DIR/via-connector"
for s in ad_events orders identity; do
    ln -s "$(realpath "$DIR/input/$s.jsonl")" "$DIR/via-connector/$s.jsonl"
done
ln -s "$(realpath "$DIR/connector/logistics.jsonl")" "$DIR/via-connector/logistics.jsonl"
echo "   track lines: generated $(wc -l <"$DIR/input/logistics.jsonl"), via the connector $(wc -l <"$DIR/connector/logistics.jsonl")" >&2

say "running the pipeline on ad_events/orders/identity + the connector's logistics.jsonl"
ADFLOW_LOG=warn "$BIN" run --input "$DIR/via-connector" --output "$DIR/out" --workers "$WORKERS"
"$BIN" report --output "$DIR/out" | tee "$DIR/report.txt"

if [[ "$COMPARE" == "1" ]]; then
    say "for comparison: the same pipeline on the generated logistics.jsonl"
    ADFLOW_LOG=warn "$BIN" run --input "$DIR/input" --output "$DIR/out-file" --workers "$WORKERS"
    "$BIN" report --output "$DIR/out-file" >"$DIR/report-file.txt"
    say "report differences (generated file '<' vs via the connector '>'):"
    if diff <(tail -n +2 "$DIR/report-file.txt") <(tail -n +2 "$DIR/report.txt") >"$DIR/report.diff"; then
        echo "   none: the reports are identical" >&2
    else
        cat "$DIR/report.diff" >&2
        echo "   (the connector emits only well-formed, de-duplicated track events with its own" >&2
        echo "    event_ids, so the generated file's malformed logistics lines - dead letters -" >&2
        echo "    have no counterpart; see docs/kdniao.md)" >&2
    fi
fi
say "done: tables in $DIR/out, logs in $DIR/logs"
