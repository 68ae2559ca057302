#!/usr/bin/env bash
# Private ClickHouse test server for adflow.
#
#   scripts/services/clickhouse.sh start    # install if missing, start, wait, print the URL
#   scripts/services/clickhouse.sh stop     # stop the instance started by `start`
#   scripts/services/clickhouse.sh status   # print the URL and exit 0 if it answers, else exit 1
#   scripts/services/clickhouse.sh url      # print the URL only
#
# The instance runs as a background process with its own config, data and logs under
# $ADFLOW_CLICKHOUSE_DIR (default: <repo>/target/services/clickhouse), listens on 127.0.0.1
# only, HTTP port $ADFLOW_CLICKHOUSE_HTTP_PORT (default 18123) and native TCP port
# $ADFLOW_CLICKHOUSE_TCP_PORT (default 19000). User `default`, empty password. `stop` keeps
# the data dir (a later `start` sees the same tables); `stop --wipe` removes it.
#
# Uses Debian's clickhouse-server package (18.16); installs it when missing. Nothing here is
# specific to 18.16: any clickhouse-server binary that reads XML config works.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${ADFLOW_CLICKHOUSE_DIR:-$ROOT/target/services/clickhouse}"
HTTP_PORT="${ADFLOW_CLICKHOUSE_HTTP_PORT:-18123}"
TCP_PORT="${ADFLOW_CLICKHOUSE_TCP_PORT:-19000}"
URL="http://127.0.0.1:${HTTP_PORT}"
PIDFILE="$DIR/clickhouse.pid"

log() { echo "clickhouse.sh: $*" >&2; }

server_bin() {
    if command -v clickhouse-server >/dev/null 2>&1; then
        command -v clickhouse-server
    elif [ -x /usr/sbin/clickhouse-server ]; then
        echo /usr/sbin/clickhouse-server
    elif command -v clickhouse >/dev/null 2>&1; then
        echo "$(command -v clickhouse) server"
    else
        return 1
    fi
}

ensure_installed() {
    if server_bin >/dev/null 2>&1; then
        return 0
    fi
    log "clickhouse-server not found; installing Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
    server_bin >/dev/null
}

answers() {
    # The HTTP interface answers "Ok." on / when the server is up.
    curl -fsS --max-time 2 "$URL/" 2>/dev/null | grep -q '^Ok\.'
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

write_config() {
    mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/user_files" "$DIR/format_schemas" "$DIR/log"
    cat >"$DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$DIR/log/clickhouse-server.log</log>
        <errorlog>$DIR/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>$HTTP_PORT</http_port>
    <tcp_port>$TCP_PORT</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>512</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>536870912</mark_cache_size>
    <path>$DIR/data/</path>
    <tmp_path>$DIR/tmp/</tmp_path>
    <user_files_path>$DIR/user_files/</user_files_path>
    <format_schema_path>$DIR/format_schemas/</format_schema_path>
    <users_config>$DIR/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
XML
    cat >"$DIR/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
XML
}

start() {
    if pid="$(running_pid)" && answers; then
        log "already running (pid $pid)"
        echo "$URL"
        return 0
    fi
    ensure_installed
    command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
    write_config
    local bin
    bin="$(server_bin)"
    # Run in the background, detached from this shell; stdout/stderr to a file.
    # shellcheck disable=SC2086
    (cd "$DIR" && exec setsid $bin --config-file="$DIR/config.xml" >"$DIR/log/stdout.log" 2>&1 </dev/null) &
    echo $! >"$PIDFILE"
    local pid
    pid="$(cat "$PIDFILE")"
    for _ in $(seq 1 300); do
        if answers; then
            log "started (pid $pid, data $DIR)"
            echo "$URL"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server exited during start; last log lines:"
            tail -n 30 "$DIR/log/stdout.log" "$DIR/log/clickhouse-server.err.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
    log "server did not answer on $URL within 30 s"
    return 1
}

stop() {
    local pid
    if pid="$(running_pid)"; then
        stop_gracefully "$pid" 30
    else
        log "not running"
    fi
    rm -f "$PIDFILE"
    if [ "${1:-}" = "--wipe" ]; then
        rm -rf "$DIR"
        log "wiped $DIR"
    fi
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
stop) shift; stop "${1:-}" ;;
status) status ;;
url) echo "$URL" ;;
*)
    echo "usage: $0 start|stop [--wipe]|status|url" >&2
    exit 2
    ;;
esac
