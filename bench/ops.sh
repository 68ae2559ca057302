#!/usr/bin/env bash
# What operations cost: file-mode throughput without and with everything `adflow run` offers
# operators — `--http` (/metrics, the dashboard and its JSON endpoints, each scraped every
# second while the run goes) and `[actions]` (every trigger as a signed webhook, alerts to a
# webhook, pause_campaign dry runs) against a loopback receiver. Issue 11's bar: at most 3%.
#
#   bench/ops.sh                   # 2000 users x 7 days, 7 runs each, side by side
#   RUNS=5 USERS=1000 bench/ops.sh
#
# Timed with farm-bench (min / median / max of whole-process wall time); compare the medians
# as a ratio, both commands run in the same session on the same data.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/adflow"
WORK="${BENCH_DIR:-$ROOT/target/bench-ops}"
USERS="${USERS:-2000}"
DAYS="${DAYS:-7}"
RUNS="${RUNS:-7}"
PORT="${PORT:-18481}"
RX_PORT="${RX_PORT:-18482}"
mkdir -p "$WORK"
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }

[ -f "$WORK/in/orders.jsonl" ] || "$BIN" generate --output "$WORK/in" --seed 1 --users "$USERS" --days "$DAYS" 2>/dev/null
echo "input: $(cat "$WORK"/in/*.jsonl | wc -l) lines ($USERS users, $DAYS days)"

# The loopback receiver (crates/adflow-cli/examples/webhook_sink.rs): 200 with a WeCom-style
# success body, a few microseconds per call, so the harness takes next to nothing from the two
# cores the run uses.
cargo build --release -q -p adflow-cli --example webhook_sink
"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/webhook_sink" "127.0.0.1:$RX_PORT" &
RX=$!
trap 'kill $RX 2>/dev/null || true' EXIT

cat > "$WORK/ops.toml" <<TOML
[actions]
outbox = "$WORK/outbox"
[actions.webhook]
url = "http://127.0.0.1:$RX_PORT/triggers"
[actions.alerts]
target = "webhook"
url = "http://127.0.0.1:$RX_PORT/alerts"
kinds = ["cpc_spike", "no_impressions", "delivery_exception"]
stalled_parcels_above = 20
[actions.pause_campaign]
TOML

# A: a fresh outbox each run (so every trigger is sent), --http scraped as in production: the
# dashboard's two feeds every 2 s (the page's own poll), /metrics every 6 s (a fast Prometheus).
cat > "$WORK/with-ops.sh" <<SH
#!/usr/bin/env bash
set -uo pipefail
rm -rf "$WORK/outbox"
ADFLOW_LOG=warn ADFLOW_WEBHOOK_SECRET=bench "$BIN" run --input "$WORK/in" --output "$WORK/out-ops" --workers 2 \
    --config "$WORK/ops.toml" --http 127.0.0.1:$PORT &
pid=\$!
(
    sleep 0.5; curl -s -o /dev/null "http://127.0.0.1:$PORT/"
    n=0
    while sleep 2; do
        curl -s -o /dev/null -o /dev/null "http://127.0.0.1:$PORT/api/pipeline" "http://127.0.0.1:$PORT/api/business"
        n=\$((n + 1)); [ \$((n % 3)) = 0 ] && curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics"
    done
) &
scraper=\$!
wait \$pid; rc=\$?
kill \$scraper 2>/dev/null
exit \$rc
SH
chmod +x "$WORK/with-ops.sh"

# A = with operations, B = plain: the ratio A/B is the cost (1.03 = 3%).
farm-bench -n "$RUNS" --timeout 1200 \
    --vs "env ADFLOW_LOG=warn $BIN run --input $WORK/in --output $WORK/out-plain --workers 2" -- \
    "$WORK/with-ops.sh"
echo "actions sent in the last run: $("$BIN" actions status --outbox "$WORK/outbox" | tr -d '\n ')"
