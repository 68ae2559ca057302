//! The binary against a real Kafka-protocol broker (`ADFLOW_KAFKA_BROKERS`, e.g. tansu from
//! `scripts/services/tansu.sh start`): `adflow produce` publishes every line of a generated
//! data set, and `adflow kdniao receive --kafka` publishes the track events of a signed push.
//! Without `ADFLOW_KAFKA_BROKERS` these tests fail, unless `ADFLOW_SKIP_SERVICE_TESTS=1`.

mod common;

use adflow_kafka::{ensure_topics, message_key, KafkaConfig, KafkaSource};
use adflow_kdniao::answer::{KdniaoAnswer, PushRequestData};
use adflow_kdniao::sandbox::{PushCommand, Sandbox, SandboxScript};
use adflow_kdniao::Secret;
use adflow_model::StreamKind;
use common::{adflow, brokers, free_port, unique};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const EBID: &str = "1237100";
const KEY: &str = "cli-kafka-test-app-key-7";

/// A config with a prefix and group of its own, so tests can share one broker.
fn fresh_config(brokers: &str, name: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(brokers);
    c.topic_prefix = format!("{}_{name}.", unique("cli"));
    c.group_id = format!("{}reader", c.topic_prefix);
    c.properties
        .insert("session.timeout.ms".into(), "10000".into());
    c.properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    c
}

/// Reads the four input topics of `config` from the beginning with one group consumer until
/// `n` messages came (or 90 s), then 2 s more for any extra. Returns (stream, key, payload).
fn consume(config: &KafkaConfig, n: usize) -> Vec<(StreamKind, Option<String>, String)> {
    let mut source = KafkaSource::new(config, 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got = Vec::new();
    let mut quiet_until: Option<Instant> = None;
    loop {
        if got.len() >= n && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(2));
        }
        if quiet_until.is_some_and(|q| Instant::now() >= q) || Instant::now() >= deadline {
            return got;
        }
        for r in source
            .poll_records(1000, Duration::from_millis(100))
            .unwrap()
        {
            got.push((
                r.raw.stream,
                r.key.map(|k| String::from_utf8(k).unwrap()),
                String::from_utf8(r.raw.payload).unwrap(),
            ));
        }
    }
}

/// `adflow produce` on a generated data set: every topic holds exactly the lines of its file,
/// malformed ones included, unchanged, keyed per spec §1.
#[test]
fn produce_publishes_every_line_of_each_file_keyed() {
    let Some(brokers) = brokers() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    // The brief's `--days 1` set has no logistics lines at all; 3 days gives all four streams
    // (and malformed lines in ad_events and logistics) while staying small.
    let st = adflow()
        .args([
            "generate", "--seed", "3", "--users", "50", "--days", "3", "--output",
        ])
        .arg(&input)
        .status()
        .unwrap();
    assert!(st.success());
    let mut lines: BTreeMap<StreamKind, Vec<String>> = BTreeMap::new();
    let mut malformed = 0;
    for stream in StreamKind::ALL {
        let text = std::fs::read_to_string(input.join(format!("{}.jsonl", stream.name())))
            .unwrap_or_default();
        let ls: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        assert!(
            !ls.is_empty(),
            "{stream} is empty: the test would prove little"
        );
        malformed += ls
            .iter()
            .filter(|l| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(l).is_err()
            })
            .count();
        lines.insert(stream, ls);
    }
    assert!(malformed > 0, "the data set should contain malformed lines");
    let total: usize = lines.values().map(Vec::len).sum();

    let config = fresh_config(&brokers, "produce");
    let out = adflow()
        .args(["produce", "--input"])
        .arg(&input)
        .args(["--kafka", &brokers, "--topic-prefix", &config.topic_prefix])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "adflow produce failed: {stderr}");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("adflow produce:"))
        .unwrap_or_else(|| panic!("no summary line in {stderr}"));
    assert!(
        summary.contains(&format!("{total} lines acknowledged")),
        "{summary}"
    );

    let got = consume(&config, total);
    assert_eq!(got.len(), total, "every line exactly once");
    for stream in StreamKind::ALL {
        let mut on_topic: Vec<(Option<String>, String)> = got
            .iter()
            .filter(|(s, _, _)| *s == stream)
            .map(|(_, k, p)| (k.clone(), p.clone()))
            .collect();
        let mut in_file: Vec<(Option<String>, String)> = lines[&stream]
            .iter()
            .map(|l| (message_key(stream, l.as_bytes()), l.clone()))
            .collect();
        assert_eq!(on_topic.len(), in_file.len(), "{stream}: message count");
        on_topic.sort();
        in_file.sort();
        assert_eq!(on_topic, in_file, "{stream}: lines and keys");
    }
}

/// Usage errors exit non-zero with a clear message (no broker needed).
#[test]
fn produce_rejects_a_missing_input_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = adflow()
        .args(["produce", "--input"])
        .arg(tmp.path().join("nope"))
        .args(["--kafka", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("input directory") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

fn kdniao_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../adflow-kdniao/tests")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Kills the receiver process (our own child) when the test ends, however it ends.
struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reply_success(body: &str) -> Option<bool> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["Success"].as_bool())
}

/// `adflow kdniao receive --kafka BROKERS --topic-prefix P`: a bad-sign push publishes
/// nothing; a signed push is answered `Success:true` and its 16 track events are on
/// `<P>logistics`, exactly the lines the file publisher writes, keyed by waybill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdniao_receive_publishes_signed_pushes_to_kafka() {
    let Some(brokers) = brokers() else { return };
    let config = fresh_config(&brokers, "kdn");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = adflow()
        .args([
            "kdniao",
            "receive",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--kafka", &brokers, "--topic-prefix", &config.topic_prefix])
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .env("KDNIAO_EBUSINESS_ID", EBID)
        .env("KDNIAO_APP_KEY", KEY)
        .env("ADFLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("receiver.log")).unwrap())
        .spawn()
        .unwrap();
    let mut receiver = Receiver(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = receiver.0.try_wait().unwrap() {
            panic!(
                "receiver exited ({st}): {}",
                std::fs::read_to_string(tmp.path().join("receiver.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "receiver did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let push_data: PushRequestData =
        serde_json::from_str(&kdniao_file("fixtures/push_101_request_data.json")).unwrap();
    let waybills: Vec<KdniaoAnswer> = push_data
        .data
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let script = SandboxScript {
        waybills,
        ..SandboxScript::default()
    };
    let sb = Sandbox::start(listener, EBID, Secret::new(KEY), script)
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/kdniao/push");
    let cmd = |bad_sign| PushCommand {
        callback_url: Some(url.clone()),
        request_type: Some(101),
        bad_sign,
        ..PushCommand::default()
    };
    let (status, body) = sb.push(cmd(true)).await.unwrap();
    assert_eq!((status, reply_success(&body)), (200, Some(false)), "{body}");
    let (status, body) = sb.push(cmd(false)).await.unwrap();
    assert_eq!((status, reply_success(&body)), (200, Some(true)), "{body}");

    // The receiver created <P>logistics; create the other input topics for the group reader.
    let expected: Vec<String> = kdniao_file("expected/push_101_request_data.jsonl")
        .lines()
        .map(str::to_string)
        .collect();
    let got = tokio::task::spawn_blocking({
        let config = config.clone();
        let n = expected.len();
        move || {
            ensure_topics(&config, 4, Duration::from_secs(30)).unwrap();
            consume(&config, n)
        }
    })
    .await
    .unwrap();
    drop(receiver);
    let log = std::fs::read_to_string(tmp.path().join("receiver.log")).unwrap();
    assert!(!log.contains(KEY), "the AppKey leaked into the log");
    assert!(log.contains("push rejected"), "{log}");

    assert_eq!(got.len(), expected.len(), "{got:#?}");
    let mut got: Vec<(Option<String>, String)> = got
        .into_iter()
        .map(|(stream, key, payload)| {
            assert_eq!(stream, StreamKind::Logistics);
            (key, payload)
        })
        .collect();
    let mut want: Vec<(Option<String>, String)> = expected
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["logistic_code"].as_str().map(str::to_string), l.clone())
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}
