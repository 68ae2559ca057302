#!/usr/bin/env bash
# Test Kafka broker for adflow: tansu (a Kafka-protocol broker, crates.io `tansu` 0.6.0).
#
# Usage:
#   scripts/services/tansu.sh install
#       cargo install tansu 0.6.0 (features dynostore,libsql) unless the binary is already there;
#       waits for an install already in flight instead of starting a second one.
#   scripts/services/tansu.sh start [--port PORT] [--sqlite FILE]
#       starts a broker on 127.0.0.1:PORT (default 19092) in the background, in-memory storage
#       (or sqlite://FILE, which survives a restart), waits until it answers and prints
#       `127.0.0.1:PORT` on stdout. Logs: $STATE/tansu.log, pid: $STATE/tansu.pid,
#       STATE=${ADFLOW_TANSU_STATE:-/tmp/adflow-tansu}-PORT.
#   scripts/services/tansu.sh stop [--port PORT]
#       stops the broker this script started on PORT (by its recorded pid only).
#   scripts/services/tansu.sh topics [--port PORT] [--partitions N] [--prefix P]
#       creates the adflow topics (ad_events, orders, logistics, identity, dead_letters) with N
#       partitions (default 4) via `tansu topic create`; an existing topic is left alone.
#
# Needs: a Rust toolchain (cargo), gcc, make. Clients: rdkafka's bundled librdkafka works;
# Debian's kcat is too old for tansu.
set -euo pipefail

TANSU_VERSION=0.6.0
PORT=19092
SQLITE=""
PARTITIONS=4
PREFIX=""

tansu_bin() {
    if [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]]; then
        echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    elif command -v tansu >/dev/null 2>&1; then
        command -v tansu
    else
        return 1
    fi
}

parse_opts() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) PORT="$2"; shift 2 ;;
            --sqlite) SQLITE="$2"; shift 2 ;;
            --partitions) PARTITIONS="$2"; shift 2 ;;
            --prefix) PREFIX="$2"; shift 2 ;;
            *) echo "tansu.sh: unknown option $1" >&2; exit 2 ;;
        esac
    done
    STATE="${ADFLOW_TANSU_STATE:-/tmp/adflow-tansu}-$PORT"
}

answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

install() {
    if tansu_bin >/dev/null; then
        echo "tansu already installed: $(tansu_bin)" >&2
        return 0
    fi
    # Another process may be installing it right now: wait for it instead of racing it.
    if pgrep -f "cargo install tansu" >/dev/null 2>&1; then
        echo "a 'cargo install tansu' is in flight; waiting for it" >&2
        while pgrep -f "cargo install tansu" >/dev/null 2>&1; do sleep 10; done
        if tansu_bin >/dev/null; then
            echo "tansu installed: $(tansu_bin)" >&2
            return 0
        fi
        echo "the other install finished without a tansu binary; installing" >&2
    fi
    command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq build-essential pkg-config
    }
    # Its own (temporary) target dir: sharing the workspace's would serialize this install behind
    # the workspace build on the build-directory lock.
    env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql --locked ||
        env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql
}

start() {
    local bin
    bin="$(tansu_bin)" || { echo "tansu not installed: run $0 install" >&2; exit 1; }
    mkdir -p "$STATE"
    if [[ -f "$STATE/tansu.pid" ]] && kill -0 "$(cat "$STATE/tansu.pid")" 2>/dev/null; then
        echo "tansu already running on port $PORT (pid $(cat "$STATE/tansu.pid"))" >&2
        echo "127.0.0.1:$PORT"
        return 0
    fi
    if answers "$PORT"; then
        echo "port $PORT is taken by another process" >&2
        exit 1
    fi
    local storage="memory://tansu/"
    local workdir="$STATE"
    if [[ -n "$SQLITE" ]]; then
        # tansu opens sqlite://DOMAIN/PATH relative to its working directory: run it in the
        # file's directory and name the file only.
        local db
        db="$(realpath -m "$SQLITE")"
        mkdir -p "$(dirname "$db")"
        workdir="$(dirname "$db")"
        storage="sqlite:///$(basename "$db")"
    fi
    # Run from the state (or database) directory; tansu also reads a .env file there if any.
    (
        cd "$workdir"
        exec env -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
            "$bin" broker \
            --listener-url "tcp://127.0.0.1:$PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$PORT" \
            --storage-engine "$storage" \
            >>"$STATE/tansu.log" 2>&1
    ) </dev/null &
    echo $! >"$STATE/tansu.pid"
    for _ in $(seq 1 100); do
        if answers "$PORT"; then
            echo "tansu started on 127.0.0.1:$PORT (pid $(cat "$STATE/tansu.pid"), storage $storage)" >&2
            echo "127.0.0.1:$PORT"
            return 0
        fi
        if ! kill -0 "$(cat "$STATE/tansu.pid")" 2>/dev/null; then
            echo "tansu exited; log:" >&2
            tail -n 30 "$STATE/tansu.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "tansu did not answer on port $PORT within 10 s; log: $STATE/tansu.log" >&2
    stop
    exit 1
}

stop() {
    local pidfile="$STATE/tansu.pid"
    if [[ ! -f "$pidfile" ]]; then
        echo "no tansu started by this script on port $PORT" >&2
        return 0
    fi
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
    echo "tansu on port $PORT stopped" >&2
}

topics() {
    local bin
    bin="$(tansu_bin)" || { echo "tansu not installed: run $0 install" >&2; exit 1; }
    for t in ad_events orders logistics identity dead_letters; do
        (cd "$STATE" 2>/dev/null || cd /tmp
         "$bin" topic create "$PREFIX$t" --partitions "$PARTITIONS" \
            --broker "tcp://127.0.0.1:$PORT") ||
            echo "topic $PREFIX$t not created (it may exist already)" >&2
    done
}

cmd="${1:-}"
shift || true
parse_opts "$@"
case "$cmd" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    topics) topics ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
