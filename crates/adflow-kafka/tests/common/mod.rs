//! Shared helpers of the integration tests (need a Kafka-protocol broker).
#![allow(dead_code)]

use adflow_kafka::{ensure_topics, KafkaConfig, KafkaSource, SourceRecord};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The broker to test against: `ADFLOW_KAFKA_BROKERS`. When unset the test fails, unless
/// `ADFLOW_SKIP_SERVICE_TESTS=1`, in which case it is skipped (returns `None`).
pub fn brokers() -> Option<String> {
    match std::env::var("ADFLOW_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") {
                eprintln!("skipped: ADFLOW_SKIP_SERVICE_TESTS=1 and no ADFLOW_KAFKA_BROKERS");
                None
            } else {
                panic!(
                    "ADFLOW_KAFKA_BROKERS is not set: start a broker with \
                     `scripts/services/tansu.sh start` and export \
                     ADFLOW_KAFKA_BROKERS=127.0.0.1:19092, or set ADFLOW_SKIP_SERVICE_TESTS=1"
                )
            }
        }
    }
}

/// A fresh config (unique prefix and group) so tests can share one broker and run in parallel.
pub fn fresh_config(brokers: &str, name: &str) -> KafkaConfig {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut c = KafkaConfig::new(brokers);
    c.topic_prefix = format!("t{}{}_{name}.", std::process::id(), nanos % 1_000_000_000);
    c.group_id = format!("{}group", c.topic_prefix);
    // Fail fast in tests rather than after librdkafka's long defaults.
    c.properties
        .insert("session.timeout.ms".into(), "10000".into());
    c.properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    c
}

pub fn create_topics(config: &KafkaConfig, partitions: i32) {
    ensure_topics(config, partitions, Duration::from_secs(30)).expect("create topics");
}

/// Writes a small data set: keyed lines, a malformed line, a blank line. Returns the lines
/// (stream name, text) that `produce` publishes.
pub fn write_dataset(dir: &Path, per_stream: usize) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut write = |stream: &str, lines: Vec<String>, extra: &str| {
        let mut text = lines.join("\n");
        text.push_str(extra);
        std::fs::write(dir.join(format!("{stream}.jsonl")), text).unwrap();
        for l in lines {
            if !l.trim().is_empty() {
                all.push((stream.to_string(), l));
            }
        }
    };
    let ads = (0..per_stream)
        .map(|i| format!(r#"{{"type":"click","event_id":"a{i}","ts":{},"campaign_id":"c{}","channel":"douyin","device_id":"dev{}","cost":"0.35"}}"#, 1_700_000_000_000u64 + i as u64, i % 3, i % 7))
        .chain(std::iter::once("this is { not json".to_string()))
        .collect();
    write("ad_events", ads, "\n\n");
    let orders = (0..per_stream)
        .map(|i| format!(r#"{{"type":"order","event_id":"o{i}","ts":{},"order_id":"ord{}","user_id":"u{i}","amount":"19.90"}}"#, 1_700_000_000_000u64 + i as u64, i % 11))
        .collect();
    write("orders", orders, "");
    let tracks = (0..per_stream)
        .map(|i| format!(r#"{{"type":"track","event_id":"l{i}","ts":"2024/01/02 10:00:{:02}","shipper_code":"SF","logistic_code":"sf-{}","state":2}}"#, i % 60, i % 5))
        .collect();
    write("logistics", tracks, "\n");
    let ids = (0..per_stream / 2)
        .map(|i| format!(r#"{{"type":"link","event_id":"i{i}","ts":1700000000000,"device_id":"dev{i}","user_id":"u{i}"}}"#))
        .collect();
    write("identity", ids, "\n");
    all
}

/// Polls `sources` in turn until `pred` holds on all their assignments or `timeout` passes.
pub fn settle<F>(sources: &mut [&mut KafkaSource], timeout: Duration, pred: F) -> Vec<SourceRecord>
where
    F: Fn(&[Vec<(adflow_model::StreamKind, i32)>]) -> bool,
{
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        for s in sources.iter_mut() {
            got.extend(s.poll_records(1000, Duration::from_millis(100)).unwrap());
        }
        let asg: Vec<_> = sources.iter().map(|s| s.assignment()).collect();
        if pred(&asg) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "assignments did not settle: {asg:?}"
        );
    }
}

/// Polls until `n` records in total have come (or `timeout`), then polls `quiet` more to catch
/// any extra (duplicate) delivery.
pub fn consume(
    sources: &mut [&mut KafkaSource],
    n: usize,
    timeout: Duration,
    quiet: Duration,
) -> Vec<(usize, SourceRecord)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        for (i, s) in sources.iter_mut().enumerate() {
            for r in s.poll_records(500, Duration::from_millis(50)).unwrap() {
                got.push((i, r));
            }
        }
    }
    let quiet_end = Instant::now() + quiet;
    while Instant::now() < quiet_end {
        for (i, s) in sources.iter_mut().enumerate() {
            for r in s.poll_records(500, Duration::from_millis(50)).unwrap() {
                got.push((i, r));
            }
        }
    }
    got
}

pub fn all_partitions(n: i32) -> BTreeSet<(adflow_model::StreamKind, i32)> {
    adflow_model::StreamKind::ALL
        .iter()
        .flat_map(|s| (0..n).map(move |p| (*s, p)))
        .collect()
}

/// Runs `scripts/services/tansu.sh` with `args`; returns stdout.
pub fn tansu_script(state: &Path, args: &[&str]) -> String {
    let script: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/tansu.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .env("ADFLOW_TANSU_STATE", state)
        .output()
        .expect("run tansu.sh");
    assert!(
        out.status.success(),
        "tansu.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tansu broker with sqlite storage started through `scripts/services/tansu.sh` on its own
/// port, stopped on drop. Used where the test needs a restart, or resumes from an offset in the
/// middle of a record batch (tansu 0.6.0's memory engine cannot fetch from there: it only
/// returns batches whose base offset is at or after the fetch offset).
pub struct SqliteBroker {
    pub addr: String,
    port: String,
    db: String,
    state: tempfile::TempDir,
}

impl SqliteBroker {
    /// `slot` keeps the ports of tests running at the same time apart.
    pub fn start(slot: u32) -> SqliteBroker {
        let state = tempfile::tempdir().unwrap();
        let port = (19500 + (std::process::id() % 100) * 4 + slot).to_string();
        let db = state
            .path()
            .join("db")
            .join("tansu.db")
            .to_str()
            .unwrap()
            .to_string();
        let addr = tansu_script(state.path(), &["start", "--port", &port, "--sqlite", &db]);
        SqliteBroker {
            addr,
            port,
            db,
            state,
        }
    }

    /// Stops the broker and starts it again on the same database.
    pub fn restart(&self) {
        tansu_script(self.state.path(), &["stop", "--port", &self.port]);
        tansu_script(
            self.state.path(),
            &["start", "--port", &self.port, "--sqlite", &self.db],
        );
    }
}

impl Drop for SqliteBroker {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/tansu.sh");
        let _ = std::process::Command::new("bash")
            .arg(script)
            .args(["stop", "--port", &self.port])
            .env("ADFLOW_TANSU_STATE", self.state.path())
            .output();
    }
}
