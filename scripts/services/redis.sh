#!/usr/bin/env bash
# Private Redis test server for adflow (the `--sink redis=URL` tests).
#
#   scripts/services/redis.sh start    # install if missing, start, wait, print the URL
#   scripts/services/redis.sh stop     # stop the instance started by `start`
#   scripts/services/redis.sh status   # print the URL and exit 0 if it answers, else exit 1
#   scripts/services/redis.sh url      # print the URL only
#
# The instance runs in the background with its own directory (pid file, log) under
# $ADFLOW_REDIS_DIR (default: <repo>/target/services/redis), listens on 127.0.0.1 only, port
# $ADFLOW_REDIS_PORT (default 16379), without persistence (no RDB, no AOF: a test server; see
# docs/redis.md for production settings). Uses Debian's redis-server package; installs it when
# missing.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${ADFLOW_REDIS_DIR:-$ROOT/target/services/redis}"
PORT="${ADFLOW_REDIS_PORT:-16379}"
URL="redis://127.0.0.1:${PORT}"
PIDFILE="$DIR/redis.pid"

log() { echo "redis.sh: $*" >&2; }

ensure_installed() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    log "redis-server not found; installing Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server redis-tools >/dev/null
    command -v redis-server >/dev/null
}

answers() {
    [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = "PONG" ]
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

start() {
    if pid="$(running_pid)" && answers; then
        log "already running (pid $pid)"
        echo "$URL"
        return 0
    fi
    ensure_installed
    mkdir -p "$DIR"
    rm -f "$PIDFILE"
    # `--daemonize yes` forks and writes the pid file itself once it listens.
    redis-server --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
        --save '' --appendonly no --dir "$DIR" \
        --daemonize yes --pidfile "$PIDFILE" --logfile "$DIR/redis.log" >/dev/null
    for _ in $(seq 1 100); do
        if answers; then
            log "started (pid $(cat "$PIDFILE" 2>/dev/null || echo ?), port $PORT)"
            echo "$URL"
            return 0
        fi
        sleep 0.1
    done
    log "server did not answer on $URL within 10 s; last log lines:"
    tail -n 20 "$DIR/redis.log" >&2 2>/dev/null || true
    return 1
}

stop() {
    local pid
    if pid="$(running_pid)"; then
        stop_gracefully "$pid" 10
    else
        log "not running"
    fi
    rm -f "$PIDFILE"
}

status() {
    if running_pid >/dev/null && answers; then
        echo "$URL"
        return 0
    fi
    log "not running"
    return 1
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
url) echo "$URL" ;;
*)
    echo "usage: $0 start|stop|status|url" >&2
    exit 2
    ;;
esac
