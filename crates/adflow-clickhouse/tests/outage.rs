//! The server goes down mid-write and comes back: the sink blocks, retries and ends with
//! exactly the expected contents. Stops and starts the server with
//! `scripts/services/clickhouse.sh`, so `ADFLOW_CLICKHOUSE_URL` must be the URL that script
//! prints. Kept alone in its own test binary so no other test sees the outage.

mod common;

use adflow_clickhouse::ClickHouseSink;
use adflow_model::Sink;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/clickhouse.sh")
}

fn service(action: &str) -> String {
    let out = Command::new("bash")
        .arg(script())
        .arg(action)
        .output()
        .unwrap_or_else(|e| panic!("clickhouse.sh {action}: {e}"));
    assert!(
        out.status.success(),
        "clickhouse.sh {action} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts the server again if the test fails while it is stopped.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("bash").arg(script()).arg("start").output();
        }
    }
}

#[test]
fn server_outage_mid_write_changes_nothing() {
    let Some(url) = server_url() else { return };
    assert_eq!(
        service("url").trim_end_matches('/'),
        url.trim_end_matches('/'),
        "ADFLOW_CLICKHOUSE_URL must be the server of scripts/services/clickhouse.sh: this test stops and starts it"
    );
    let mut config = fresh_config(&url, "outage");
    config.apply_schema = true;
    config.batch_rows = 50;
    config.batch_ms = 20;
    config.max_pending_rows = 200;
    let changes = mixed_changelog(300);
    let want = expected(&changes);
    let total = changes.len();

    let mut sink = ClickHouseSink::new(config.clone()).unwrap();
    let (half_tx, half_rx) = std::sync::mpsc::channel::<()>();
    let (down_tx, down_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut sorted = changes;
        sorted.sort_by_key(|c| c.version);
        let chunks: Vec<_> = sorted.chunks(20).map(|c| c.to_vec()).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            if i == chunks.len() / 3 {
                // Let the main thread stop the server, then go on writing into the outage.
                half_tx.send(()).unwrap();
                down_rx.recv().unwrap();
            }
            let frontier = match chunks.get(i + 1) {
                Some(next) => next[0].version,
                None => chunk.iter().map(|c| c.version).max().unwrap() + 1,
            };
            let t = Instant::now();
            sink.write(chunk.clone(), frontier).unwrap();
            slowest = slowest.max(t.elapsed());
        }
        sink.flush().unwrap();
        let stats = sink.stats();
        let durable = sink.durable_frontier();
        sink.close().unwrap();
        (stats, durable, slowest, started.elapsed())
    });

    half_rx.recv().unwrap();
    let _restart = RestartOnDrop;
    service("stop");
    let down = Instant::now();
    down_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    service("start");
    let outage = down.elapsed();

    let (stats, durable, slowest_write, elapsed) = writer.join().unwrap();
    eprintln!(
        "outage {outage:?}; slowest write {slowest_write:?}; whole run {elapsed:?}; {stats:?}"
    );
    assert!(stats.failed_attempts > 0, "the outage was seen: {stats:?}");
    assert!(
        slowest_write >= Duration::from_secs(1),
        "write blocked (back-pressure) during the outage: {slowest_write:?}"
    );
    assert_eq!(stats.changes_received as usize, total);
    assert!(durable > i64::MIN);
    assert_eq!(actual(&config), want);
    drop_database(&config);
}
