//! `adflow produce` and the Kafka side of `adflow kdniao`: glue between the command line and
//! `adflow-kafka`.

use adflow_kafka::{
    ensure_named_topics, produce, KafkaConfig, KafkaTrackPublisher, ProduceArgs,
    DEFAULT_TRACK_DELIVERY_TIMEOUT,
};
use adflow_kdniao::{KdniaoCommand, TrackPublisher};
use adflow_model::StreamKind;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Partitions of the topics `adflow produce` and `adflow kdniao … --kafka` create when missing.
pub const DEFAULT_PARTITIONS: i32 = 4;

/// `adflow produce --input DIR --kafka BROKERS [--topic-prefix P] [--rate EV_PER_S]`.
#[derive(clap::Args)]
pub struct ProduceCmd {
    /// Directory holding `ad_events.jsonl`, `orders.jsonl`, `logistics.jsonl`,
    /// `identity.jsonl` (a missing file is an empty stream).
    #[arg(long, value_name = "DIR")]
    input: PathBuf,
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, value_name = "BROKERS", env = "ADFLOW_KAFKA_BROKERS")]
    kafka: String,
    /// Prefix of the topic names (`<prefix>ad_events`, …). Default: none.
    #[arg(long, value_name = "P", default_value = "")]
    topic_prefix: String,
    /// Publish at most this many lines per second (all streams together). Default: as fast as
    /// the broker takes them.
    #[arg(long, value_name = "EV_PER_S")]
    rate: Option<f64>,
    /// Partitions of the topics created when missing (existing topics are left alone).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PARTITIONS)]
    partitions: i32,
}

/// Publishes every non-blank line of the data set unchanged (malformed lines included), keyed
/// per spec §1, after creating missing topics; prints a one-line summary.
pub fn cmd_produce(a: ProduceCmd) -> Result<()> {
    if !a.input.is_dir() {
        bail!("input directory {} does not exist", a.input.display());
    }
    let args = ProduceArgs {
        input: a.input,
        kafka: a.kafka,
        topic_prefix: a.topic_prefix,
        rate: a.rate,
        partitions: Some(a.partitions),
    };
    let report = produce(&args)
        .with_context(|| format!("adflow produce: publishing to Kafka at {}", args.kafka))?;
    let per_stream: Vec<String> = report
        .streams
        .iter()
        .map(|(stream, r)| format!("{stream} {}", r.delivered))
        .collect();
    let blank: u64 = report.streams.values().map(|r| r.blank).sum();
    let prefix = if args.topic_prefix.is_empty() {
        "none".to_string()
    } else {
        format!("{:?}", args.topic_prefix)
    };
    eprintln!(
        "adflow produce: {} lines acknowledged ({}; {} blank skipped; topic prefix {}) in {:.2}s ({:.0} lines/s)",
        report.delivered(),
        per_stream.join(", "),
        blank,
        prefix,
        report.elapsed.as_secs_f64(),
        report.delivered() as f64 / report.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// The Kafka track publisher for an `adflow kdniao` command given `--kafka BROKERS`
/// (`<prefix>logistics`, created when missing), or `None` for the other commands.
/// Call it outside the async runtime: topic creation blocks.
pub fn kdniao_kafka_publisher(cmd: &KdniaoCommand) -> Result<Option<Arc<dyn TrackPublisher>>> {
    let Some(brokers) = cmd.kafka_brokers() else {
        return Ok(None);
    };
    let mut config = KafkaConfig::new(brokers);
    config.topic_prefix = cmd.kafka_topic_prefix().to_string();
    let topic = config.topic(StreamKind::Logistics);
    ensure_named_topics(
        &config,
        std::slice::from_ref(&topic),
        DEFAULT_PARTITIONS,
        Duration::from_secs(30),
    )
    .with_context(|| format!("preparing Kafka topic {topic} at {brokers}"))?;
    let publisher = KafkaTrackPublisher::new(&config, DEFAULT_TRACK_DELIVERY_TIMEOUT)
        .with_context(|| format!("creating the Kafka producer for {brokers}"))?;
    tracing::info!(%brokers, %topic, "kdniao track events go to Kafka");
    Ok(Some(Arc::new(publisher)))
}
