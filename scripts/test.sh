#!/usr/bin/env bash
# `make test`: installs what the tests need (idempotent, fast when present), starts the test
# services (ClickHouse, Redis, tansu) on loopback, runs the whole test suite against them, and
# stops them again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

log() { echo "== test.sh: $*" >&2; }

# Build tools some -sys crates need (librdkafka builds with the C toolchain).
need_pkgs=()
for p in gcc g++ make perl pkg-config; do
    command -v "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
# zlib headers for rdkafka's bundled librdkafka (feature `libz`).
dpkg -s zlib1g-dev >/dev/null 2>&1 || need_pkgs+=(zlib1g-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi

# promtool for the deploy/prometheus tests (Debian's prometheus package; no server is started).
bash scripts/services/promtool.sh install >/dev/null

# Headless Chromium for the dashboard test (Debian's chromium package; nothing is started).
bash scripts/services/chromium.sh install >/dev/null

# Start the tansu install first: it is the longest step and runs while we build.
mkdir -p "$CARGO_TARGET_DIR"
log "installing tansu (skipped when present)"
bash scripts/services/tansu.sh install > "$CARGO_TARGET_DIR/tansu-install.log" 2>&1 &
TANSU_INSTALL=$!

cleanup() {
    bash scripts/services/tansu.sh stop >/dev/null 2>&1 || true
    bash scripts/services/clickhouse.sh stop >/dev/null 2>&1 || true
    bash scripts/services/redis.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "building (release, shared target dir)"
cargo build --release --workspace --all-targets

log "starting ClickHouse"
export ADFLOW_CLICKHOUSE_URL="$(bash scripts/services/clickhouse.sh start)"

log "starting Redis"
export ADFLOW_REDIS_URL="$(bash scripts/services/redis.sh start)"

log "waiting for the tansu install"
if ! wait "$TANSU_INSTALL"; then
    cat "$CARGO_TARGET_DIR/tansu-install.log" >&2
    exit 1
fi
log "starting tansu"
export ADFLOW_KAFKA_BROKERS="$(bash scripts/services/tansu.sh start)"

log "running tests (ClickHouse at $ADFLOW_CLICKHOUSE_URL, Redis at $ADFLOW_REDIS_URL, Kafka at $ADFLOW_KAFKA_BROKERS)"
cargo test --release --workspace -- --test-threads 2
