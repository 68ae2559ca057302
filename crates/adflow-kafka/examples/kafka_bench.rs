//! Kafka round-trip benchmark: publishes N synthetic `ad_events` lines through
//! [`adflow_kafka::produce`] (optionally rate-limited) while W [`KafkaSource`]s of one group
//! consume them, then reports throughput and produce→consume latency (consume wall clock minus
//! the message timestamp that `produce` sets at send time).
//!
//! ```text
//! scripts/services/tansu.sh start
//! cargo run --release -p adflow-kafka --example kafka_bench -- \
//!     --brokers 127.0.0.1:19092 --events 100000 --consumers 2 --partitions 4
//! ```

use adflow_kafka::{ensure_topics, now_ms, produce, KafkaConfig, KafkaSource, ProduceArgs};
use clap::Parser;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Bootstrap servers.
    #[arg(long, env = "ADFLOW_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Number of events to publish.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events per second (default: unlimited).
    #[arg(long)]
    rate: Option<f64>,
    /// Number of consumers (one thread each, one group).
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Extra librdkafka property for the consumers, `key=value` (repeatable).
    #[arg(long = "property", short = 'X')]
    properties: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut config = KafkaConfig::new(args.brokers.clone());
    config.topic_prefix = format!("bench{}.", now_ms());
    config.group_id = format!("{}group", config.topic_prefix);
    for kv in &args.properties {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--property wants key=value, got {kv}"))?;
        config.properties.insert(k.to_string(), v.to_string());
    }
    ensure_topics(&config, args.partitions, Duration::from_secs(30))?;

    let dir = tempfile::tempdir()?;
    {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.path().join("ad_events.jsonl"))?);
        for i in 0..args.events {
            writeln!(
                f,
                r#"{{"type":"click","event_id":"e{i}","ts":{},"campaign_id":"c{}","channel":"douyin","device_id":"d{}","cost":"0.35"}}"#,
                1_700_000_000_000u64 + i as u64,
                i % 50,
                i % 10_007
            )?;
        }
    }

    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(args.consumers + 1));
    let total_parts = 4 * args.partitions as usize;
    let sizes: Arc<Vec<AtomicUsize>> =
        Arc::new((0..args.consumers).map(|_| AtomicUsize::new(0)).collect());
    let mut handles = Vec::new();
    for w in 0..args.consumers {
        let config = config.clone();
        let received = received.clone();
        let done = done.clone();
        let ready = ready.clone();
        let sizes = sizes.clone();
        handles.push(std::thread::spawn(
            move || -> Result<(Vec<i64>, i64), String> {
                let mut source = KafkaSource::new(&config, w).map_err(|e| e.to_string())?;
                // Join the group before the producer starts, and wait until the partitions
                // are spread over all consumers, so no rebalance redelivers during the run.
                let settle_deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < settle_deadline {
                    source
                        .poll_records(1, Duration::from_millis(100))
                        .map_err(|e| e.to_string())?;
                    sizes[w].store(source.assignment().len(), Ordering::Relaxed);
                    let all: Vec<usize> = sizes.iter().map(|a| a.load(Ordering::Relaxed)).collect();
                    if all.iter().all(|&n| n > 0) && all.iter().sum::<usize>() == total_parts {
                        break;
                    }
                }
                ready.wait();
                let mut lat = Vec::new();
                let mut last_ts = 0;
                while !done.load(Ordering::Relaxed) {
                    let batch = source
                        .poll_records(1000, Duration::from_millis(50))
                        .map_err(|e| e.to_string())?;
                    if batch.is_empty() {
                        continue;
                    }
                    let now = now_ms();
                    for r in &batch {
                        if let Some(ts) = r.timestamp_ms {
                            lat.push(now - ts);
                        }
                    }
                    last_ts = now;
                    received.fetch_add(batch.len(), Ordering::Relaxed);
                }
                Ok((lat, last_ts))
            },
        ));
    }
    ready.wait();

    let start_ms = now_ms();
    let start = Instant::now();
    let report = produce(&ProduceArgs {
        input: dir.path().to_path_buf(),
        kafka: config.brokers.clone(),
        topic_prefix: config.topic_prefix.clone(),
        rate: args.rate,
        partitions: None,
    })?;
    let produce_s = start.elapsed().as_secs_f64();
    let deadline = start + Duration::from_secs(args.timeout_s);
    while received.load(Ordering::Relaxed) < args.events && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut last_ms = start_ms;
    for h in handles {
        let (l, t) = h.join().map_err(|_| "consumer thread panicked")??;
        lat.extend(l);
        last_ms = last_ms.max(t);
    }
    lat.sort_unstable();
    let got = received.load(Ordering::Relaxed);
    let e2e_s = (last_ms - start_ms) as f64 / 1000.0;
    println!(
        "events={} consumers={} partitions/topic={} rate={}",
        args.events,
        args.consumers,
        args.partitions,
        args.rate
            .map_or("unlimited".to_string(), |r| format!("{r}/s"))
    );
    println!(
        "produced {} in {:.2} s = {:.0} ev/s (acked)",
        report.delivered(),
        produce_s,
        report.delivered() as f64 / produce_s
    );
    println!(
        "consumed {} in {:.2} s = {:.0} ev/s (first send to last receive)",
        got,
        e2e_s,
        got as f64 / e2e_s.max(1e-9)
    );
    println!(
        "latency ms: p50={} p99={} max={}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0)
    );
    if got != args.events {
        return Err(format!("received {got} of {} events", args.events).into());
    }
    Ok(())
}
