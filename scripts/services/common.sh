# Shared by the service scripts (sourced, not run). The caller defines `log MESSAGE`.

# stop_gracefully PID SECONDS: SIGTERM, wait up to SECONDS for the process to exit, then SIGKILL.
stop_gracefully() {
    local pid="$1" secs="$2"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop in $secs s; killing"
        kill -9 "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
}
