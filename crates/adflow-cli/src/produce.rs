//! `adflow produce` (file data set, or `--live` load generator) and the Kafka side of
//! `adflow kdniao`: glue between the command line and `adflow-kafka`.

use adflow_kafka::{
    ensure_named_topics, produce, produce_live, KafkaConfig, KafkaTrackPublisher, LiveProduceArgs,
    ProduceArgs, DEFAULT_TRACK_DELIVERY_TIMEOUT,
};
use adflow_kdniao::{KdniaoCommand, TrackPublisher};
use adflow_model::StreamKind;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Partitions of the topics `adflow produce` and `adflow kdniao … --kafka` create when missing.
pub const DEFAULT_PARTITIONS: i32 = 4;
/// `--users` of `adflow produce --live` unless given.
pub const DEFAULT_LIVE_USERS: u32 = adflow_gen::DEFAULT_LIVE_USERS;
/// `--seed` of `adflow produce --live` unless given.
pub const DEFAULT_LIVE_SEED: u64 = 1;

/// `adflow produce --input DIR --kafka BROKERS [--topic-prefix P] [--rate EV_PER_S]
/// [--partitions N]`, or the load generator `adflow produce --live --kafka BROKERS
/// [--topic-prefix P] --rate EV_PER_S --duration SECS [--users N] [--seed N] [--partitions N]`.
#[derive(clap::Args)]
pub struct ProduceCmd {
    /// Directory holding `ad_events.jsonl`, `orders.jsonl`, `logistics.jsonl`,
    /// `identity.jsonl` (a missing file is an empty stream). Not with `--live`.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "live",
        conflicts_with = "live"
    )]
    input: Option<PathBuf>,
    /// Load generator: publish the live generator's events (all five streams: ad_events,
    /// orders, logistics, identity, ad_reports; `ts` = wall clock at send) at `--rate` events/s
    /// for `--duration` seconds. See docs/kafka.md.
    #[arg(long)]
    live: bool,
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, value_name = "BROKERS", env = "ADFLOW_KAFKA_BROKERS")]
    kafka: String,
    /// Prefix of the topic names (`<prefix>ad_events`, …). Default: none.
    #[arg(long, value_name = "P", default_value = "")]
    topic_prefix: String,
    /// Events per second, all streams together. File mode: at most this many lines per second
    /// (default: as fast as the broker takes them). `--live`: required, paced in 10 ms slices.
    #[arg(long, value_name = "EV_PER_S", required_if_eq("live", "true"))]
    rate: Option<f64>,
    /// `--live`: how long to send, in seconds (required).
    #[arg(long, value_name = "SECS", required_if_eq("live", "true"))]
    duration: Option<f64>,
    /// `--live`: registered users of the simulated population [default: 20000].
    #[arg(long, value_name = "N")]
    users: Option<u32>,
    /// `--live`: seed of the generator (the population depends on it alone; ids also on the
    /// start time, so runs never share an event id) [default: 1].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// `--live`: how long the producer waits to fill a batch (librdkafka's `linger.ms`); the
    /// events' `ts` is taken before the wait, so it counts in every measured freshness
    #[arg(long, value_name = "MS", default_value_t = adflow_kafka::DEFAULT_LINGER_MS)]
    linger_ms: u32,
    /// Partitions of the topics created when missing (existing topics are left alone).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PARTITIONS)]
    partitions: i32,
}

fn prefix_label(prefix: &str) -> String {
    if prefix.is_empty() {
        "none".to_string()
    } else {
        format!("{prefix:?}")
    }
}

/// `adflow produce`: the file data set, or with `--live` the load generator.
pub fn cmd_produce(a: ProduceCmd) -> Result<()> {
    if a.live {
        return cmd_produce_live(a);
    }
    // (clap's `requires` would count the flag's default `false` as present.)
    if a.duration.is_some() || a.users.is_some() || a.seed.is_some() {
        bail!("--duration, --users and --seed are options of the load generator: add --live");
    }
    let Some(input) = a.input else {
        bail!("adflow produce needs --input DIR (or --live)");
    };
    if !input.is_dir() {
        bail!("input directory {} does not exist", input.display());
    }
    let args = ProduceArgs {
        input,
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
    eprintln!(
        "adflow produce: {} lines acknowledged ({}; {} blank skipped; topic prefix {}) in {:.2}s ({:.0} lines/s)",
        report.delivered(),
        per_stream.join(", "),
        blank,
        prefix_label(&args.topic_prefix),
        report.elapsed.as_secs_f64(),
        report.delivered() as f64 / report.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// `adflow produce --live`: runs the load generator, prints a one-line summary to stderr.
fn cmd_produce_live(a: ProduceCmd) -> Result<()> {
    let (Some(rate), Some(duration)) = (a.rate, a.duration) else {
        bail!("adflow produce --live needs --rate EV_PER_S and --duration SECS");
    };
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number of events per second, got {rate}");
    }
    if !(duration.is_finite() && duration > 0.0 && duration <= 1e9) {
        bail!("--duration must be a positive number of seconds, got {duration}");
    }
    let users = a.users.unwrap_or(DEFAULT_LIVE_USERS);
    if users == 0 {
        bail!("--users must be at least 1");
    }
    let args = LiveProduceArgs {
        kafka: a.kafka,
        topic_prefix: a.topic_prefix,
        rate,
        duration: Duration::from_secs_f64(duration),
        users,
        seed: a.seed.unwrap_or(DEFAULT_LIVE_SEED),
        partitions: Some(a.partitions),
        linger: Duration::from_millis(a.linger_ms.into()),
    };
    let report = produce_live(&args).with_context(|| {
        format!(
            "adflow produce --live: publishing to Kafka at {}",
            args.kafka
        )
    })?;
    eprintln!(
        "adflow produce --live: {report}; topic prefix {}, run tag {}",
        prefix_label(&args.topic_prefix),
        report.run_tag
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
