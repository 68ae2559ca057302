//! Integration tests against a Kafka-protocol broker (`ADFLOW_KAFKA_BROKERS`, e.g. tansu from
//! `scripts/services/tansu.sh start`).

mod common;

use adflow_kafka::{
    message_key, now_ms, produce, DeadLetter, DeadLetterProducer, KafkaSource, ProduceArgs,
    RebalanceEvent,
};
use adflow_model::{Position, RawMessage, StreamKind};
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn produce_args(dir: &std::path::Path, config: &adflow_kafka::KafkaConfig) -> ProduceArgs {
    ProduceArgs {
        input: dir.to_path_buf(),
        kafka: config.brokers.clone(),
        topic_prefix: config.topic_prefix.clone(),
        rate: None,
        partitions: None,
    }
}

/// Two sources of one group share 4-partition topics; every line arrives exactly once, with its
/// position, key and produce timestamp.
#[test]
fn two_sources_receive_every_line_exactly_once() {
    let Some(brokers) = brokers() else { return };
    let config = fresh_config(&brokers, "once");
    create_topics(&config, 4);
    let mut a = KafkaSource::new(&config, 0).unwrap();
    let mut b = KafkaSource::new(&config, 1).unwrap();
    let expected_parts = all_partitions(4);
    let early = settle(&mut [&mut a, &mut b], Duration::from_secs(60), |asg| {
        let a: BTreeSet<_> = asg[0].iter().copied().collect();
        let b: BTreeSet<_> = asg[1].iter().copied().collect();
        !a.is_empty()
            && !b.is_empty()
            && a.is_disjoint(&b)
            && a.union(&b).copied().collect::<BTreeSet<_>>() == expected_parts
    });
    assert!(early.is_empty());
    assert!(a
        .take_rebalance_events()
        .iter()
        .any(|e| matches!(e, RebalanceEvent::Assigned(_))));

    let dir = tempfile::tempdir().unwrap();
    let lines = write_dataset(dir.path(), 40);
    let before = now_ms();
    let report = produce(&produce_args(dir.path(), &config)).unwrap();
    assert_eq!(report.delivered() as usize, lines.len());
    assert_eq!(report.streams[&StreamKind::AdEvents].blank, 1);
    assert_eq!(report.streams[&StreamKind::AdEvents].keyed, 40); // the malformed line is unkeyed
    assert_eq!(report.streams[&StreamKind::Identity].keyed, 0);

    let got = consume(
        &mut [&mut a, &mut b],
        lines.len(),
        Duration::from_secs(30),
        Duration::from_millis(1500),
    );
    assert_eq!(got.len(), lines.len(), "every line once, no duplicate");
    let mut received: Vec<(String, String)> = got
        .iter()
        .map(|(_, r)| {
            (
                r.raw.stream.name().to_string(),
                String::from_utf8(r.raw.payload.clone()).unwrap(),
            )
        })
        .collect();
    let mut want = lines.clone();
    received.sort();
    want.sort();
    assert_eq!(received, want);

    let mut offsets: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
    let mut partition_of_key: BTreeMap<(StreamKind, Vec<u8>), i32> = BTreeMap::new();
    for (who, r) in &got {
        let Position::Kafka {
            topic,
            partition,
            offset,
        } = &r.raw.position
        else {
            panic!("not a Kafka position: {:?}", r.raw.position)
        };
        assert_eq!(topic, &config.topic(r.raw.stream));
        let owner = if *who == 0 { &a } else { &b };
        assert!(owner.assignment().contains(&(r.raw.stream, *partition)));
        offsets
            .entry((topic.clone(), *partition))
            .or_default()
            .push(*offset);
        assert_eq!(
            r.key.as_deref(),
            message_key(r.raw.stream, &r.raw.payload)
                .as_deref()
                .map(str::as_bytes)
        );
        if let Some(k) = &r.key {
            let p = partition_of_key
                .entry((r.raw.stream, k.clone()))
                .or_insert(*partition);
            assert_eq!(p, partition, "one key, one partition");
        }
        let ts = r.timestamp_ms.expect("timestamp");
        assert!(
            ts >= before - 1000 && ts <= now_ms() + 1000,
            "produce timestamp {ts}"
        );
    }
    for ((topic, partition), offs) in offsets {
        let want: Vec<i64> = (0..offs.len() as i64).collect();
        assert_eq!(
            offs, want,
            "{topic}/{partition}: contiguous offsets in order"
        );
    }
    let idle = a.partition_status();
    assert_eq!(idle.len(), a.assignment().len());
    assert!(idle.iter().any(|p| p.last_message_at.is_some()));
}

/// Commit part of what was read, drop the consumer, start a new one: it resumes exactly after
/// the committed offsets (only uncommitted messages come again). Runs on its own sqlite-backed
/// tansu: the memory engine of tansu 0.6.0 cannot resume inside a record batch.
#[test]
fn new_source_resumes_after_committed_offsets() {
    let Some(_) = brokers() else { return };
    let broker = SqliteBroker::start(0);
    let config = fresh_config(&broker.addr, "resume");
    create_topics(&config, 4);
    let dir = tempfile::tempdir().unwrap();
    let lines = write_dataset(dir.path(), 30);
    produce(&produce_args(dir.path(), &config)).unwrap();

    let (committed, uncommitted) = {
        let mut a = KafkaSource::new(&config, 0).unwrap();
        let got = consume(
            &mut [&mut a],
            lines.len(),
            Duration::from_secs(60),
            Duration::from_millis(500),
        );
        assert_eq!(got.len(), lines.len());
        split_and_commit(&mut a, got.into_iter().map(|(_, r)| r.raw).collect())
    };
    // `a` is dropped: it leaves the group.
    let mut b = KafkaSource::new(&config, 0).unwrap();
    let again = consume(
        &mut [&mut b],
        uncommitted.len(),
        Duration::from_secs(60),
        Duration::from_millis(1500),
    );
    let again: BTreeSet<Position> = again.into_iter().map(|(_, r)| r.raw.position).collect();
    assert_eq!(
        again, uncommitted,
        "exactly the uncommitted messages come again"
    );
    assert!(committed.is_disjoint(&again));
    // The committed offsets are visible to the new member.
    let offs = b.committed_offsets(Duration::from_secs(10)).unwrap();
    assert_eq!(offs.len(), 16);
    // A partition this source does not own is skipped, not committed.
    let outcome = b.commit(&[(StreamKind::Orders, 99, 1)]).unwrap();
    assert_eq!(outcome.skipped, vec![(StreamKind::Orders, 99, 1)]);
    assert!(b
        .commit(&[(StreamKind::Orders, 0, 1), (StreamKind::Orders, 0, 2)])
        .is_err());
}

/// Commits, per partition, the first half of what was read (next offset = half). Returns the
/// positions committed and those not.
fn split_and_commit(
    source: &mut KafkaSource,
    got: Vec<RawMessage>,
) -> (BTreeSet<Position>, BTreeSet<Position>) {
    let mut per_part: BTreeMap<(StreamKind, i32), Vec<i64>> = BTreeMap::new();
    for m in &got {
        if let Position::Kafka {
            partition, offset, ..
        } = m.position
        {
            per_part
                .entry((m.stream, partition))
                .or_default()
                .push(offset);
        }
    }
    let mut to_commit = Vec::new();
    for (&(stream, partition), offs) in &per_part {
        let next = (offs.len() / 2) as i64;
        to_commit.push((stream, partition, next));
    }
    let outcome = source.commit(&to_commit).unwrap();
    assert!(outcome.skipped.is_empty());
    assert_eq!(outcome.committed.len(), to_commit.len());
    let limit: BTreeMap<(StreamKind, i32), i64> =
        to_commit.iter().map(|&(s, p, o)| ((s, p), o)).collect();
    let mut committed = BTreeSet::new();
    let mut uncommitted = BTreeSet::new();
    for m in got {
        if let Position::Kafka {
            partition, offset, ..
        } = m.position
        {
            if offset < limit[&(m.stream, partition)] {
                committed.insert(m.position);
            } else {
                uncommitted.insert(m.position);
            }
        }
    }
    (committed, uncommitted)
}

/// A broker with sqlite storage restarted between commit and resume loses nothing: the data
/// and the committed offsets survive.
#[test]
fn sqlite_broker_restart_keeps_commits() {
    let Some(_) = brokers() else { return };
    let broker = SqliteBroker::start(1);
    let config = fresh_config(&broker.addr, "restart");
    create_topics(&config, 2);
    let dir = tempfile::tempdir().unwrap();
    let lines = write_dataset(dir.path(), 10);
    produce(&produce_args(dir.path(), &config)).unwrap();
    let (_, uncommitted) = {
        let mut a = KafkaSource::new(&config, 0).unwrap();
        let got = consume(
            &mut [&mut a],
            lines.len(),
            Duration::from_secs(60),
            Duration::from_millis(300),
        );
        assert_eq!(got.len(), lines.len());
        split_and_commit(&mut a, got.into_iter().map(|(_, r)| r.raw).collect())
    };
    broker.restart();
    let mut b = KafkaSource::new(&config, 0).unwrap();
    let again = consume(
        &mut [&mut b],
        uncommitted.len(),
        Duration::from_secs(60),
        Duration::from_millis(1500),
    );
    let again: BTreeSet<Position> = again.into_iter().map(|(_, r)| r.raw.position).collect();
    assert_eq!(again, uncommitted);
}

/// A dead letter reaches `<prefix>dead_letters` with all its fields.
#[test]
fn dead_letter_reaches_its_topic() {
    let Some(brokers) = brokers() else { return };
    let config = fresh_config(&brokers, "dlq");
    create_topics(&config, 1);
    let dlq = DeadLetterProducer::new(&config, Duration::from_secs(30)).unwrap();
    let msg = RawMessage {
        stream: StreamKind::Orders,
        position: Position::Kafka {
            topic: config.topic(StreamKind::Orders),
            partition: 3,
            offset: 17,
        },
        payload: b"{\"type\":\"order\",".to_vec(),
    };
    let letters = vec![
        DeadLetter::new(&msg, "not JSON: EOF while parsing", 1_700_000_000_123),
        DeadLetter::new(
            &RawMessage {
                stream: StreamKind::AdEvents,
                position: Position::File {
                    file: "ad_events.jsonl".into(),
                    line: 4,
                },
                payload: b"{}".to_vec(),
            },
            "missing field `type`",
            1,
        ),
    ];
    let acks = dlq.send(&letters).unwrap();
    assert_eq!(acks.len(), 2);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}reader", config.topic_prefix))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&config.dead_letters_topic(), 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            seen.push((m.offset(), v));
        }
    }
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, acks[0].1);
    let v = &seen[0].1;
    assert_eq!(v["stream"], "orders");
    assert_eq!(v["topic"], config.topic(StreamKind::Orders).as_str());
    assert_eq!(v["partition"], 3);
    assert_eq!(v["offset"], 17);
    assert_eq!(
        v["position"],
        format!("{}/3/17", config.topic(StreamKind::Orders)).as_str()
    );
    assert_eq!(v["raw"], "{\"type\":\"order\",");
    assert_eq!(v["reason"], "not JSON: EOF while parsing");
    assert_eq!(v["seen_ts"], 1_700_000_000_123i64);
    let back: DeadLetter = serde_json::from_value(seen[1].1.clone()).unwrap();
    assert_eq!(back, letters[1]);
    assert_eq!(back.position, "ad_events.jsonl:4");
    assert_eq!(back.topic, None);
}

/// A second member joins after the first read everything and committed half: the group
/// rebalances, every uncommitted message is delivered again exactly once (to its new owner),
/// the first source reports the revocation and no longer commits partitions it lost.
#[test]
fn rebalance_redelivers_uncommitted_work_only() {
    let Some(_) = brokers() else { return };
    let broker = SqliteBroker::start(2);
    let config = fresh_config(&broker.addr, "rebalance");
    create_topics(&config, 4);
    let dir = tempfile::tempdir().unwrap();
    let lines = write_dataset(dir.path(), 20);
    produce(&produce_args(dir.path(), &config)).unwrap();
    let mut a = KafkaSource::new(&config, 0).unwrap();
    let got = consume(
        &mut [&mut a],
        lines.len(),
        Duration::from_secs(60),
        Duration::from_millis(300),
    );
    assert_eq!(got.len(), lines.len());
    let (_, uncommitted) = split_and_commit(&mut a, got.into_iter().map(|(_, r)| r.raw).collect());
    a.take_rebalance_events();

    let mut b = KafkaSource::new(&config, 1).unwrap();
    let expected_parts = all_partitions(4);
    let mut again: Vec<Position> = settle(&mut [&mut a, &mut b], Duration::from_secs(60), |asg| {
        let a: BTreeSet<_> = asg[0].iter().copied().collect();
        let b: BTreeSet<_> = asg[1].iter().copied().collect();
        !a.is_empty()
            && !b.is_empty()
            && a.is_disjoint(&b)
            && a.union(&b).copied().collect::<BTreeSet<_>>() == expected_parts
    })
    .into_iter()
    .map(|r| r.raw.position)
    .collect();
    let more = consume(
        &mut [&mut a, &mut b],
        uncommitted.len().saturating_sub(again.len()),
        Duration::from_secs(30),
        Duration::from_millis(1500),
    );
    again.extend(more.into_iter().map(|(_, r)| r.raw.position));
    let unique: BTreeSet<Position> = again.iter().cloned().collect();
    assert_eq!(
        unique, uncommitted,
        "exactly the uncommitted messages come again"
    );
    assert_eq!(again.len(), unique.len(), "each once");
    assert!(a
        .take_rebalance_events()
        .iter()
        .any(|e| matches!(e, RebalanceEvent::Revoked(_))));
    let lost = *b.assignment().first().unwrap();
    let outcome = a.commit(&[(lost.0, lost.1, 1)]).unwrap();
    assert_eq!(outcome.skipped, vec![(lost.0, lost.1, 1)]);
}
