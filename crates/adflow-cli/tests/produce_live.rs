//! `adflow produce --live` (the load generator) against a real Kafka-protocol broker
//! (`ADFLOW_KAFKA_BROKERS`, e.g. tansu from `scripts/services/tansu.sh start`): about
//! rate × duration messages over all five input topics, every one parseable and keyed per spec
//! §1. Without `ADFLOW_KAFKA_BROKERS` the broker test fails, unless
//! `ADFLOW_SKIP_SERVICE_TESTS=1`; the usage tests need no broker.

mod common;

use adflow_kafka::message_key;
use adflow_model::event::{parse_event, ParseConfig};
use adflow_model::StreamKind;
use common::{adflow, brokers, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const STREAMS: [&str; 5] = ["ad_events", "orders", "logistics", "identity", "ad_reports"];

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every message of the five topics `<prefix><stream>`, read from the beginning of each
/// partition until `n` came (or 90 s), then 2 s more for any extra: (stream, key, payload).
fn consume_all(brokers: &str, prefix: &str, n: usize) -> Vec<(String, Option<String>, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{prefix}reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        if let Some(s) = t.name().strip_prefix(prefix) {
            if STREAMS.contains(&s) {
                for p in t.partitions() {
                    tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning)
                        .unwrap();
                }
            }
        }
    }
    assert!(tpl.count() >= 5, "topics of {prefix}: {tpl:?}");
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet_until: Option<Instant> = None;
    let mut got = Vec::new();
    loop {
        if got.len() >= n && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(2));
        }
        if quiet_until.is_some_and(|q| Instant::now() >= q) || Instant::now() >= deadline {
            return got;
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let stream = m.topic().strip_prefix(prefix).unwrap().to_string();
            got.push((
                stream,
                m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap(),
            ));
        }
    }
}

/// `adflow produce --live --rate 2000 --duration 3 --users 200`: ≈ 6000 messages (± 5 %),
/// exactly the acknowledged count, over all five topics; each line parses (the four model
/// streams with `parse_event`, reports by their spec §1 fields), has a unique event id in its
/// stream and a `ts` inside the run, and is keyed per spec §1.
#[test]
fn produce_live_publishes_about_rate_times_duration_over_all_five_streams() {
    let Some(brokers) = brokers() else { return };
    let prefix = format!("{}_live.", unique("cli"));
    let before = wall_ms();
    let out = adflow()
        .args(["produce", "--live", "--kafka", &brokers, "--topic-prefix"])
        .arg(&prefix)
        .args(["--rate", "2000", "--duration", "3", "--users", "200"])
        .output()
        .unwrap();
    let after = wall_ms();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "adflow produce --live failed: {stderr}"
    );
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("adflow produce --live:"))
        .unwrap_or_else(|| panic!("no summary line in {stderr}"));
    // "adflow produce --live: N events sent, M acknowledged (...)"
    let words: Vec<&str> = summary.split_whitespace().collect();
    let sent: usize = words[3].parse().unwrap_or_else(|_| panic!("{summary}"));
    let acked: usize = words[6].parse().unwrap_or_else(|_| panic!("{summary}"));
    assert_eq!(sent, acked, "{summary}");
    assert!(
        (5700..=6300).contains(&acked),
        "{acked} acknowledged, expected 6000 ± 5 %: {summary}"
    );
    for s in STREAMS {
        assert!(summary.contains(s), "{summary}");
    }

    let got = consume_all(&brokers, &prefix, acked);
    assert!(
        (5700..=6300).contains(&got.len()),
        "{} messages on the topics: {summary}",
        got.len()
    );
    let cfg = ParseConfig::default();
    let mut per_stream: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids: HashSet<(String, String)> = HashSet::new();
    for (stream, key, line) in &got {
        *per_stream.entry(stream.clone()).or_default() += 1;
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let ts = match StreamKind::from_name(stream) {
            Some(kind) => {
                let ev = parse_event(kind, line.as_bytes(), &cfg)
                    .unwrap_or_else(|e| panic!("{stream}: {e}: {line}"));
                assert_eq!(key, &message_key(kind, line.as_bytes()), "{line}");
                ev.ts
            }
            None => {
                assert_eq!(stream, "ad_reports");
                assert_eq!(v["type"], "report", "{line}");
                for f in ["platform", "account_id", "campaign_id", "channel"] {
                    assert!(v[f].is_string(), "{f}: {line}");
                }
                assert!(!v["hour"].is_null(), "{line}");
                assert!(v["impressions"].is_u64() && v["clicks"].is_u64(), "{line}");
                let cost = match &v["cost"] {
                    serde_json::Value::String(s) => s.clone(),
                    n => n.to_string(),
                };
                adflow_model::money::parse_fen(&cost).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert_eq!(key.as_deref(), v["campaign_id"].as_str(), "{line}");
                v["ts"].as_i64().unwrap()
            }
        };
        assert!(
            ts >= before - 1000 && ts <= after + 1000,
            "ts {ts} outside the run [{before}, {after}]: {line}"
        );
        let id = v["event_id"].as_str().unwrap().to_string();
        assert!(
            ids.insert((stream.clone(), id)),
            "duplicate event id in {stream}: {line}"
        );
    }
    for s in STREAMS {
        assert!(
            per_stream.get(s).copied().unwrap_or(0) > 0,
            "no {s} message: {per_stream:?}"
        );
    }
    assert_eq!(ids.len(), acked, "every acknowledged event exactly once");
}

/// Usage errors exit non-zero with a clear message (no broker needed).
#[test]
fn produce_live_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = adflow().arg("produce").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let dir = tmp.path().to_str().unwrap();
    let e = run(&[
        "--live",
        "--input",
        dir,
        "--kafka",
        "127.0.0.1:9",
        "--rate",
        "10",
        "--duration",
        "1",
    ]);
    assert!(e.contains("--input") && e.contains("--live"), "{e}");
    let e = run(&["--live", "--kafka", "127.0.0.1:9", "--duration", "1"]);
    assert!(e.contains("--rate"), "{e}");
    let e = run(&["--live", "--kafka", "127.0.0.1:9", "--rate", "10"]);
    assert!(e.contains("--duration"), "{e}");
    let e = run(&["--input", dir, "--kafka", "127.0.0.1:9", "--duration", "1"]);
    assert!(e.contains("--live"), "{e}");
    let e = run(&[
        "--live",
        "--kafka",
        "127.0.0.1:9",
        "--rate",
        "0",
        "--duration",
        "1",
    ]);
    assert!(e.contains("--rate must be a positive"), "{e}");
    let e = run(&[
        "--live",
        "--kafka",
        "127.0.0.1:9",
        "--rate",
        "10",
        "--duration",
        "1",
        "--users",
        "0",
    ]);
    assert!(e.contains("--users"), "{e}");
}

/// An unreachable broker is an error after the metadata timeout, never a hang.
#[test]
fn produce_live_fails_cleanly_without_a_broker() {
    let started = Instant::now();
    let out = adflow()
        .args([
            "produce",
            "--live",
            "--kafka",
            "127.0.0.1:9",
            "--rate",
            "100",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("adflow produce --live"), "{stderr}");
}
