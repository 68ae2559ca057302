//! `adflow produce`: publishes the JSON Lines files of a data set to the input topics.

use adflow_model::StreamKind;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

use crate::{ensure_topics, KafkaConfig, KafkaError};

/// Arguments of `adflow produce`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProduceArgs {
    /// Directory holding `ad_events.jsonl`, `orders.jsonl`, `logistics.jsonl`,
    /// `identity.jsonl` (a missing file is an empty stream).
    #[arg(long)]
    pub input: PathBuf,
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "ADFLOW_KAFKA_BROKERS")]
    pub kafka: String,
    /// Prefix of the topic names (`<prefix>ad_events`, …).
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
    /// Publish at most this many lines per second (all streams together). Default: as fast as
    /// the broker takes them.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Create the missing topics (and `dead_letters`) with this many partitions first.
    #[arg(long)]
    pub partitions: Option<i32>,
}

/// Counts of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// The topic written to.
    pub topic: String,
    /// Lines published (blank lines are not).
    pub lines: u64,
    /// Lines published with a key.
    pub keyed: u64,
    /// Blank (whitespace-only) lines skipped.
    pub blank: u64,
    /// Lines acknowledged by the broker.
    pub delivered: u64,
}

/// What `produce` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceReport {
    pub streams: BTreeMap<StreamKind, StreamReport>,
    pub elapsed: Duration,
}

impl ProduceReport {
    /// Lines acknowledged by the broker, all streams together.
    pub fn delivered(&self) -> u64 {
        self.streams.values().map(|s| s.delivered).sum()
    }
}

impl fmt::Display for ProduceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (stream, r) in &self.streams {
            writeln!(
                f,
                "{stream}: {} line(s) to {} ({} keyed, {} blank skipped), {} delivered",
                r.lines, r.topic, r.keyed, r.blank, r.delivered
            )?;
        }
        write!(
            f,
            "total: {} delivered in {:.3} s",
            self.delivered(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Counts delivery reports per stream (delivery opaque: the stream index; five slots, so the
/// live producer's `ad_reports` fits too).
#[derive(Default)]
pub(crate) struct CountingContext {
    pub(crate) delivered: [AtomicU64; 5],
    pub(crate) failed: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl ClientContext for CountingContext {}

impl CountingContext {
    /// After the final flush: an error when a delivery failed (with the first failure's
    /// reason), or when fewer than `sent` messages were acknowledged (the flush timed out).
    pub(crate) fn outcome(&self, delivered: u64, sent: u64) -> Result<(), KafkaError> {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first_error = match self.first_error.lock() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            };
            return Err(KafkaError::Delivery {
                delivered,
                failed,
                first_error: first_error.unwrap_or_default(),
            });
        }
        let pending = sent.saturating_sub(delivered);
        if pending > 0 {
            return Err(KafkaError::DeliveryTimeout { pending });
        }
        Ok(())
    }
}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, stream: usize) {
        match result {
            Ok(_) => {
                if let Some(c) = self.delivered.get(stream) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = match self.first_error.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                if first.is_none() {
                    *first = Some(e.to_string());
                }
            }
        }
    }
}

/// Current wall clock in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The spec §1 message key of a line: `device_id` (ad_events), `order_id` (orders), the cleaned
/// `logistic_code` (logistics: trimmed, spaces and `-` dropped, upper case, so that every track
/// of a waybill lands in one partition), none for identity and for lines without the field
/// (not JSON, field missing or not a string/number).
pub fn message_key(stream: StreamKind, line: &[u8]) -> Option<String> {
    let field = match stream {
        StreamKind::AdEvents => "device_id",
        StreamKind::Orders => "order_id",
        StreamKind::Logistics => "logistic_code",
        StreamKind::Identity => return None,
    };
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).ok()?;
    let key = match obj.get(field)? {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let key = if stream == StreamKind::Logistics {
        key.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .flat_map(char::to_uppercase)
            .collect()
    } else {
        key
    };
    Some(key)
}

/// Enqueues `record`, waiting while librdkafka's queue is full.
pub(crate) fn send_blocking<C>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, str, [u8], C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: ProducerContext + 'static,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                record = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((source, back)) => {
                return Err(KafkaError::Enqueue {
                    topic: back.topic.to_string(),
                    source,
                })
            }
        }
    }
}

struct LineReader {
    stream: StreamKind,
    path: PathBuf,
    reader: BufReader<File>,
    /// The next line and its event time (its own `ts` when it can be read, else the previous
    /// line's), read ahead so the files can be merged in event-time order.
    next: Option<(i64, Vec<u8>)>,
    last_ts: i64,
}

impl LineReader {
    /// Reads the next line into `next` (`None` at the end of the file).
    fn fill(&mut self) -> Result<(), KafkaError> {
        let mut buf = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| KafkaError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.next = if n == 0 {
            None
        } else {
            // The zone only matters for zone-less timestamps; ordering tolerates it.
            if let Some(ts) = adflow_model::event::peek_ts(&buf, 8 * 60) {
                self.last_ts = ts;
            }
            Some((self.last_ts, buf))
        };
        Ok(())
    }
}

fn open_reader(dir: &Path, stream: StreamKind) -> Result<Option<LineReader>, KafkaError> {
    let path = dir.join(format!("{}.jsonl", stream.name()));
    match File::open(&path) {
        Ok(f) => {
            let mut r = LineReader {
                stream,
                path,
                reader: BufReader::with_capacity(1 << 16, f),
                next: None,
                last_ts: i64::MIN,
            };
            r.fill()?;
            Ok(Some(r))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KafkaError::Io { path, source }),
    }
}

/// Publishes every non-blank line of `DIR/<stream>.jsonl` to `<prefix><stream>` unchanged
/// (malformed lines included, so dead letters can be exercised), keyed by [`message_key`], with
/// the wall clock at send time as the Kafka message timestamp (for end-to-end latency). The four
/// files are merged in event-time order (by each line's `ts`; a line without a readable `ts`
/// keeps its file's previous one), as the file mode reads them, so the topics fill the way a
/// live source would; within a file the order is kept (and so is the order of a key within its
/// partition). With `rate`, sending is paced to that many lines per second.
/// Returns once every message is acknowledged; any failed delivery is an error.
pub fn produce(args: &ProduceArgs) -> Result<ProduceReport, KafkaError> {
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(KafkaError::Config(format!(
                "--rate must be a positive number, got {rate}"
            )));
        }
    }
    let mut config = KafkaConfig::new(args.kafka.clone());
    config.topic_prefix = args.topic_prefix.clone();
    if let Some(n) = args.partitions {
        ensure_topics(&config, n, Duration::from_secs(30))?;
    }
    let started = Instant::now();
    let producer: ThreadedProducer<CountingContext> = ThreadedProducer::from_config_and_context(
        &config.client_config()?,
        CountingContext::default(),
    )
    .map_err(KafkaError::Client)?;

    let mut readers = Vec::new();
    let mut report = ProduceReport::default();
    for stream in StreamKind::ALL {
        report.streams.insert(
            stream,
            StreamReport {
                topic: config.topic(stream),
                ..StreamReport::default()
            },
        );
        if let Some(r) = open_reader(&args.input, stream)? {
            readers.push(r);
        }
    }

    let topics: Vec<String> = StreamKind::ALL.iter().map(|s| config.topic(*s)).collect();
    let mut sent: u64 = 0;
    // The file whose next line has the smallest event time goes first (ties: stream order).
    while let Some(i) = readers
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.next.as_ref().map(|(ts, _)| (*ts, i)))
        .min()
        .map(|(_, i)| i)
    {
        {
            let r = &mut readers[i];
            let (_, mut buf) = r.next.take().unwrap_or_default();
            r.fill()?;
            let stream = r.stream;
            let counts = report.streams.entry(stream).or_default();
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                counts.blank += 1;
                continue;
            }
            if let Some(rate) = args.rate {
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let key = message_key(stream, &buf);
            let mut record =
                BaseRecord::with_opaque_to(topics[stream.index()].as_str(), stream.index())
                    .payload(buf.as_slice())
                    .timestamp(now_ms());
            if let Some(k) = key.as_deref() {
                record = record.key(k);
                counts.keyed += 1;
            }
            send_blocking(&producer, record)?;
            counts.lines += 1;
            sent += 1;
        }
    }
    // Messages time out after librdkafka's message.timeout.ms, so this returns.
    if let Err(e) = producer.flush(Timeout::Never) {
        warn!(error = %e, "flush failed");
    }
    let ctx = producer.context();
    let mut delivered = 0;
    for (stream, counts) in report.streams.iter_mut() {
        counts.delivered = ctx.delivered[stream.index()].load(Ordering::Relaxed);
        delivered += counts.delivered;
    }
    report.elapsed = started.elapsed();
    ctx.outcome(delivered, sent)?;
    info!(
        delivered,
        elapsed_s = report.elapsed.as_secs_f64(),
        "produce done"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_spec() {
        let k = |s, l: &str| message_key(s, l.as_bytes());
        assert_eq!(
            k(StreamKind::AdEvents, r#"{"type":"click","device_id":"d1"}"#),
            Some("d1".into())
        );
        assert_eq!(
            k(StreamKind::Orders, r#"{"order_id":42}"#),
            Some("42".into())
        );
        assert_eq!(
            k(StreamKind::Logistics, r#"{"logistic_code":" sf-123 4x "}"#),
            Some("SF1234X".into())
        );
        assert_eq!(k(StreamKind::Identity, r#"{"user_id":"u"}"#), None);
        assert_eq!(k(StreamKind::AdEvents, "not json"), None);
        assert_eq!(k(StreamKind::Orders, r#"{"order_id":null}"#), None);
    }
}
