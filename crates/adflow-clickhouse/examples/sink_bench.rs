//! Throughput and visibility delay of the ClickHouse sink.
//!
//! ```text
//! scripts/services/clickhouse.sh start
//! ADFLOW_CLICKHOUSE_URL=http://127.0.0.1:18123 \
//!   cargo run --release -p adflow-clickhouse --example sink_bench -- [ROWS] [BATCH_ROWS] [BATCH_MS]
//! ```
//!
//! - throughput: ROWS changes (attribution rows, 10% of them later retracted) written through
//!   the sink in calls of 1,000 with advancing frontiers; rows/s from the first `write` until
//!   `flush` returns (everything durable).
//! - delay: 30 single `triggers` rows, one every 100 ms; for each, the time from `write` until
//!   the row is visible in `triggers_current` (polled every 5 ms). Dominated by BATCH_MS.
//!
//! Works in the database `adflow_bench` (dropped first).

use adflow_clickhouse::{ClickHouseConfig, ClickHouseSink};
use adflow_model::output::{AttributionRow, Fixed, TriggerRow};
use adflow_model::{Change, OutputRow, Sink};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let url = std::env::var("ADFLOW_CLICKHOUSE_URL").map_err(|_| {
        anyhow::anyhow!(
            "set ADFLOW_CLICKHOUSE_URL (scripts/services/clickhouse.sh start prints it)"
        )
    })?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> anyhow::Result<u64> {
        Ok(match args.get(i) {
            Some(s) => s.parse()?,
            None => default,
        })
    };
    let rows = arg(0, 200_000)? as usize;
    let mut config = ClickHouseConfig::new(url, "adflow_bench");
    config.batch_rows = arg(1, config.batch_rows as u64)? as usize;
    config.batch_ms = arg(2, config.batch_ms)?;
    config.max_pending_rows = config.max_pending_rows.max(config.batch_rows * 4);
    config.apply_schema = true;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = config.client();
    rt.block_on(
        admin
            .query("DROP DATABASE IF EXISTS adflow_bench")
            .execute(),
    )?;

    // Throughput.
    let changes = changelog(rows);
    let n = changes.len();
    let mut sink = ClickHouseSink::new(config.clone())?;
    let start = Instant::now();
    let chunks: Vec<&[Change]> = changes.chunks(1_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        // Everything below the next call's smallest version has been handed over.
        let frontier = match chunks.get(i + 1) {
            Some(next) => next[0].version,
            None => chunk.iter().map(|c| c.version).max().unwrap_or(0) + 1,
        };
        sink.write(chunk.to_vec(), frontier)?;
    }
    sink.flush()?;
    let secs = start.elapsed().as_secs_f64();
    let stats = sink.stats();
    println!(
        "throughput: {n} changes ({} rows written, {} inserts) in {secs:.2} s = {:.0} changes/s (batch_rows {}, batch_ms {})",
        stats.rows_written,
        stats.inserts,
        n as f64 / secs,
        config.batch_rows,
        config.batch_ms
    );

    // Delay from write to visible in the current view.
    let mut delays = Vec::new();
    let base = 2_000_000_000_000i64;
    for i in 0..30i64 {
        let id = format!("bench{i}:review_coupon");
        let change = Change {
            row: OutputRow::Trigger(TriggerRow {
                trigger_id: id.clone(),
                kind: "review_coupon".into(),
                order_id: format!("bench{i}"),
                person_id: "p".into(),
                campaign_id: None,
                due_ts: base + i,
            }),
            version: base + i,
            sign: 1,
        };
        let t = Instant::now();
        sink.write(vec![change], base + i + 1)?;
        let sql =
            format!("SELECT count() FROM adflow_bench.triggers_current WHERE trigger_id = '{id}'");
        loop {
            let seen: u64 = rt.block_on(admin.query(&sql).fetch_one::<u64>())?;
            if seen > 0 {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("row {id} not visible after 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        delays.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    sink.close()?;
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "delay write->visible in triggers_current over {} rows: min {:.0} ms, p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        delays.len(),
        ms(delays[0]),
        ms(delays[delays.len() / 2]),
        ms(delays[delays.len() * 9 / 10]),
        ms(delays[delays.len() - 1])
    );
    rt.block_on(
        admin
            .query("DROP DATABASE IF EXISTS adflow_bench")
            .execute(),
    )?;
    Ok(())
}

/// `rows` attribution inserts at increasing versions; every 10th is retracted 1,000 ms later.
fn changelog(rows: usize) -> Vec<Change> {
    let t0 = 1_700_000_000_000i64;
    let mut out = Vec::with_capacity(rows + rows / 10);
    for i in 0..rows {
        let version = t0 + i as i64;
        let row = OutputRow::Attribution(AttributionRow {
            order_id: format!("order-{i:09}"),
            person_id: format!("user-{}", i % 50_000),
            model: "last_click".into(),
            campaign_id: format!("cmp-{}", i % 200),
            channel: ["douyin", "tencent", "baidu", "taobao"][i % 4].into(),
            click_event_id: format!("click-{i:09}"),
            click_ts: version - 60_000,
            order_ts: version,
            credit: Fixed(1_000_000),
            amount_fen: 19_900 + (i % 1000) as i64,
            credited_fen: 19_900 + (i % 1000) as i64,
        });
        out.push(Change {
            row: row.clone(),
            version,
            sign: 1,
        });
        if i % 10 == 0 && i + 1000 < rows {
            out.push(Change {
                row,
                version: version + 1000,
                sign: -1,
            });
        }
    }
    out.sort_by_key(|c| c.version);
    out
}
