//! The Kdniao push receiver publishing to Kafka through `KafkaTrackPublisher`, in process,
//! against a real broker (`ADFLOW_KAFKA_BROKERS`, e.g. tansu from
//! `scripts/services/tansu.sh start`), pushed to by the Kdniao stand-in over real HTTP.

mod common;

use adflow_kafka::{ensure_named_topics, KafkaConfig, KafkaTrackPublisher};
use adflow_kdniao::answer::{KdniaoAnswer, PushRequestData};
use adflow_kdniao::receiver::{serve, ReceiverState};
use adflow_kdniao::sandbox::{PushCommand, Sandbox, SandboxScript};
use adflow_kdniao::{Secret, TrackSink};
use adflow_model::StreamKind;
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const EBID: &str = "1237100";
const KEY: &str = "kafka-test-app-key-42";

fn kdniao_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../adflow-kdniao/tests")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The published Kdniao push sample (two EMS waybills, 16 traces).
fn fixture_waybills() -> Vec<KdniaoAnswer> {
    let p: PushRequestData =
        serde_json::from_str(&kdniao_file("fixtures/push_101_request_data.json")).unwrap();
    p.data
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

/// The exact track events that sample gives (what the file publisher writes).
fn expected_lines() -> Vec<String> {
    kdniao_file("expected/push_101_request_data.jsonl")
        .lines()
        .map(str::to_string)
        .collect()
}

async fn sandbox() -> Sandbox {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let script = SandboxScript {
        waybills: fixture_waybills(),
        ..SandboxScript::default()
    };
    Sandbox::start(listener, EBID, Secret::new(KEY), script)
        .await
        .unwrap()
}

/// Starts a receiver publishing through `publisher`; returns its push URL and state.
async fn receiver(
    publisher: KafkaTrackPublisher,
    state_dir: &Path,
) -> (String, Arc<ReceiverState>) {
    let sink = Arc::new(TrackSink::open(Arc::new(publisher), state_dir).unwrap());
    let state = ReceiverState::new(EBID.into(), Secret::new(KEY), sink);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kdniao/push", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state.clone(), std::future::pending()));
    (url, state)
}

fn push(url: &str, request_type: u16, bad_sign: bool) -> PushCommand {
    PushCommand {
        callback_url: Some(url.to_string()),
        request_type: Some(request_type),
        bad_sign,
        ..PushCommand::default()
    }
}

/// Every message of `topic` (all `partitions`) from the beginning: waits until `n` arrived
/// (or 60 s), then 2 s more for any extra. Returns (partition, key, payload) in offset order
/// per partition.
fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    n: usize,
) -> Vec<(i32, Option<String>, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_until: Option<Instant> = None;
    loop {
        if got.len() >= n && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(2));
        }
        if quiet_until.is_some_and(|q| Instant::now() >= q) || Instant::now() >= deadline {
            return got;
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            got.push((
                m.partition(),
                m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap(),
            ));
        }
    }
}

/// A bad-sign push publishes nothing; a good push publishes exactly the sample's 16 track
/// events (the file publisher's lines), keyed by waybill, each waybill in order in one
/// partition, acknowledged before Kdniao gets `Success:true`; a re-push publishes nothing new.
#[tokio::test]
async fn pushes_become_exactly_the_track_events_on_the_logistics_topic() {
    let Some(brokers) = brokers() else { return };
    let config = fresh_config(&brokers, "kdn");
    let topic = config.topic(StreamKind::Logistics);
    ensure_named_topics(
        &config,
        std::slice::from_ref(&topic),
        4,
        Duration::from_secs(30),
    )
    .unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let publisher = KafkaTrackPublisher::new(&config, Duration::from_secs(10)).unwrap();
    assert_eq!(publisher.topic(), topic);
    let (url, rx) = receiver(publisher, state_dir.path()).await;
    let sb = sandbox().await;

    let (status, body) = sb.push(push(&url, 101, true)).await.unwrap();
    assert_eq!(status, 200);
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["Success"], false, "{body}");
    assert_eq!(reply["Reason"], "DataSign invalid");
    assert_eq!(rx.metrics.bad_sign.load(Ordering::Relaxed), 1);

    let (status, body) = sb.push(push(&url, 101, false)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["Success"], true, "{body}");
    assert_eq!(reply["EBusinessID"], EBID);
    assert!(!body.contains(KEY));
    // Kdniao pushes the whole trace again: same ids, nothing new published.
    let (status, body) = sb.push(push(&url, 101, false)).await.unwrap();
    assert_eq!((status, reply_success(&body)), (200, true), "{body}");
    assert_eq!(rx.sink().metrics.duplicates.load(Ordering::Relaxed), 16);
    assert_eq!(rx.sink().metrics.events_written.load(Ordering::Relaxed), 16);

    let expected = expected_lines();
    assert_eq!(expected.len(), 16);
    let got = tokio::task::spawn_blocking({
        let config = config.clone();
        let topic = topic.clone();
        move || read_topic(&config, &topic, 4, 16)
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 16, "exactly the 16 events, once each: {got:#?}");
    // Same multiset of lines as the file publisher writes.
    let mut payloads: Vec<&str> = got.iter().map(|(_, _, p)| p.as_str()).collect();
    let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
    payloads.sort_unstable();
    want.sort_unstable();
    assert_eq!(payloads, want);
    for (partition, key, payload) in &got {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(
            key.as_deref(),
            v["logistic_code"].as_str(),
            "key of {payload}"
        );
        assert_eq!(v["type"], "track");
        assert!(v["event_id"].as_str().unwrap().starts_with("kdn-"));
        // One waybill, one partition.
        let same_waybill: Vec<i32> = got
            .iter()
            .filter(|(_, k, _)| k == key)
            .map(|(p, _, _)| *p)
            .collect();
        assert!(same_waybill.iter().all(|p| p == partition));
    }
    // Within a waybill (one partition), the order is the file publisher's (time order).
    for waybill in ["5042260908504", "5042260943004"] {
        let on_topic: Vec<&str> = got
            .iter()
            .filter(|(_, k, _)| k.as_deref() == Some(waybill))
            .map(|(_, _, p)| p.as_str())
            .collect();
        let in_file: Vec<&str> = expected
            .iter()
            .filter(|l| l.contains(&format!("\"logistic_code\":\"{waybill}\"")))
            .map(String::as_str)
            .collect();
        assert_eq!(on_topic, in_file, "waybill {waybill}");
    }
}

fn reply_success(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["Success"].as_bool())
        == Some(true)
}

/// No broker answering: the push is answered `Success:false` (HTTP 500, so Kdniao pushes it
/// again), and no event id is recorded as emitted, so the re-push is published in full later.
/// Needs no broker.
#[tokio::test]
async fn unacknowledged_publish_answers_failure_and_records_nothing() {
    let config = KafkaConfig::new("127.0.0.1:9");
    let publisher = KafkaTrackPublisher::new(&config, Duration::from_millis(1500)).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let (url, rx) = receiver(publisher, state_dir.path()).await;
    let sb = sandbox().await;
    let started = Instant::now();
    let (status, body) = sb.push(push(&url, 101, false)).await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(!reply_success(&body), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rx.metrics.storage_errors.load(Ordering::Relaxed), 1);
    assert_eq!(rx.sink().metrics.events_written.load(Ordering::Relaxed), 0);
    let emitted =
        std::fs::read_to_string(state_dir.path().join("emitted.jsonl")).unwrap_or_default();
    assert!(emitted.is_empty(), "{emitted}");
}
