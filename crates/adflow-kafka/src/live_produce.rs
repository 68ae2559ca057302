//! `adflow produce --live`: a load generator that publishes the live generator's events
//! ([`adflow_gen::LiveGen`]: all five input streams, `ts` = the wall clock at send) to the
//! input topics at a fixed total rate for a fixed time.
//!
//! Pacing: the target count at elapsed time `t` is `rate × t`; every 10 ms slice the producer
//! sends what is due, so the stream is smooth (no per-second bursts). A run that cannot keep
//! up (generator or librdkafka queue full because the broker is slower) sends the backlog as
//! fast as it can, stops at `duration` + 100 ms, and reports that it fell behind.
//!
//! librdkafka settings: `linger.ms` 5, `batch.num.messages` 100 000, no compression, a queue of
//! at most 200 000 messages (so the lag behind the broker stays bounded and a full queue is a
//! visible "fell behind", not a timeout), acks as `adflow produce` (librdkafka's default,
//! `all`), `message.timeout.ms` 15 s. The final flush waits at most 20 s: a broker that does
//! not acknowledge is an error, never a hang. Any failed delivery stops the run with an error.

use adflow_gen::{LiveConfig, LiveGen, LiveStream};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig, ThreadedProducer};
use rdkafka::util::Timeout;
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use crate::produce::CountingContext;
use crate::{all_topics, ensure_named_topics, now_ms, KafkaConfig, KafkaError};

/// Length of a pacing slice.
const SLICE: Duration = Duration::from_millis(10);
/// How long after `duration` a run that fell behind may still send.
const GRACE: Duration = Duration::from_millis(100);
/// librdkafka's `message.timeout.ms`.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);
/// The final flush waits at most this long.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(20);
/// A run whose sends lagged their schedule by this much at some point fell behind.
const BEHIND_LAG: Duration = Duration::from_secs(1);

/// Arguments of `adflow produce --live`.
#[derive(Clone, Debug)]
pub struct LiveProduceArgs {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    pub kafka: String,
    /// Prefix of the topic names (`<prefix>ad_events`, …, `<prefix>ad_reports`).
    pub topic_prefix: String,
    /// Events per second, all streams together.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// Registered users of the simulated population.
    pub users: u32,
    /// Seed of the generator.
    pub seed: u64,
    /// Create the missing topics (the five input topics and `dead_letters`) with this many
    /// partitions first.
    pub partitions: Option<i32>,
    /// How long librdkafka waits to fill a batch (`linger.ms`).
    pub linger: Duration,
}

/// The load generator's default `linger.ms`: 20 ms. Against librdkafka's 5 ms it takes the
/// broker ~45% less CPU at 100k events/s (tansu 0.6.0, 20 partitions: 0.36 → 0.19 core), which on
/// a machine that shares its cores with the pipeline is worth more freshness than the ~10 ms it
/// adds on average.
pub const DEFAULT_LINGER_MS: u32 = 20;

/// Counts of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveStreamReport {
    pub topic: String,
    /// Messages handed to librdkafka.
    pub sent: u64,
    /// Messages acknowledged by the broker.
    pub acknowledged: u64,
}

/// What [`produce_live`] did.
#[derive(Clone, Debug, Default)]
pub struct LiveProduceReport {
    /// Per stream, in [`LiveStream::ALL`] order.
    pub streams: Vec<(LiveStream, LiveStreamReport)>,
    /// The offered rate and the number of events it asks for (`rate × duration`).
    pub offered_rate: f64,
    pub offered: u64,
    /// From the first send to the last one.
    pub send_elapsed: Duration,
    /// The final flush (waiting for the acknowledgements).
    pub flush_elapsed: Duration,
    /// The largest delay of a send behind its schedule (checked every 256 sends).
    pub max_lag: Duration,
    /// The run tag in every event id (see `adflow_gen::LiveGen`).
    pub run_tag: String,
}

impl LiveProduceReport {
    /// Messages sent, all streams.
    pub fn sent(&self) -> u64 {
        self.streams.iter().map(|(_, r)| r.sent).sum()
    }

    /// Messages acknowledged, all streams.
    pub fn acknowledged(&self) -> u64 {
        self.streams.iter().map(|(_, r)| r.acknowledged).sum()
    }

    /// Messages sent per second of the sending phase.
    pub fn achieved_rate(&self) -> f64 {
        self.sent() as f64 / self.send_elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether the run fell behind the offered rate: it could not send `rate × duration`
    /// events in time, or its sends lagged their schedule by a second or more at some point.
    pub fn fell_behind(&self) -> bool {
        self.sent() < self.offered || self.max_lag >= BEHIND_LAG
    }
}

impl fmt::Display for LiveProduceReport {
    /// One line: counts per stream (sent/acknowledged), times, rates, kept up or not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per: Vec<String> = self
            .streams
            .iter()
            .map(|(s, r)| format!("{s} {}/{}", r.sent, r.acknowledged))
            .collect();
        write!(
            f,
            "{} events sent, {} acknowledged ({}) in {:.2}s + {:.2}s flush: {:.0} ev/s achieved of {:.0} offered, ",
            self.sent(),
            self.acknowledged(),
            per.join(", "),
            self.send_elapsed.as_secs_f64(),
            self.flush_elapsed.as_secs_f64(),
            self.achieved_rate(),
            self.offered_rate,
        )?;
        if self.fell_behind() {
            write!(
                f,
                "FELL BEHIND ({} of {} offered events sent, max lag {} ms)",
                self.sent(),
                self.offered,
                self.max_lag.as_millis()
            )
        } else {
            write!(f, "kept up (max lag {} ms)", self.max_lag.as_millis())
        }
    }
}

/// The topic of a live stream: `<prefix><name>`.
pub fn live_topic(config: &KafkaConfig, stream: LiveStream) -> String {
    format!("{}{}", config.topic_prefix, stream.name())
}

/// Runs the load generator (see the module docs). Returns once every sent message is
/// acknowledged; a failed delivery, a flush that times out or an unreachable broker is an
/// error.
pub fn produce_live(args: &LiveProduceArgs) -> Result<LiveProduceReport, KafkaError> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(KafkaError::Config(format!(
            "--rate must be a positive number, got {}",
            args.rate
        )));
    }
    if args.duration.is_zero() {
        return Err(KafkaError::Config("--duration must be positive".into()));
    }
    let offered_f = args.rate * args.duration.as_secs_f64();
    if offered_f > 1e15 {
        return Err(KafkaError::Config(format!(
            "--rate × --duration is {offered_f:.0} events: too many"
        )));
    }
    let offered = offered_f.round() as u64;
    let mut gen = LiveGen::new(&LiveConfig::new(args.seed, args.users, args.rate, now_ms()))
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let run_tag = gen.run_tag().trim_end_matches('-').to_string();
    let mut config = KafkaConfig::new(args.kafka.clone());
    config.topic_prefix = args.topic_prefix.clone();
    let topics: Vec<String> = LiveStream::ALL
        .iter()
        .map(|s| live_topic(&config, *s))
        .collect();
    if let Some(n) = args.partitions {
        let mut wanted = all_topics(&config);
        for t in &topics {
            if !wanted.contains(t) {
                wanted.push(t.clone());
            }
        }
        ensure_named_topics(&config, &wanted, n, Duration::from_secs(30))?;
    }

    let mut cc = config.client_config()?;
    cc.set("linger.ms", args.linger.as_millis().to_string())
        .set("batch.num.messages", "100000")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "200000")
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        );
    let producer: ThreadedProducer<CountingContext> =
        ThreadedProducer::from_config_and_context(&cc, CountingContext::default())
            .map_err(KafkaError::Client)?;

    info!(
        rate = args.rate,
        duration_s = args.duration.as_secs_f64(),
        users = args.users,
        seed = args.seed,
        %run_tag,
        prefix = %config.topic_prefix,
        "live load generator started"
    );

    let mut sent = [0u64; 5];
    let mut total: u64 = 0;
    let mut max_lag = Duration::ZERO;
    let started = Instant::now();
    let hard_stop = started + args.duration + GRACE;
    let mut tick: u64 = 0;
    let mut failed_early = false;
    'run: loop {
        let elapsed = started.elapsed();
        let due = if elapsed >= args.duration {
            offered
        } else {
            ((args.rate * elapsed.as_secs_f64()) as u64).min(offered)
        };
        while total < due {
            let ev = gen.next_event(now_ms());
            let idx = ev.stream.index();
            let mut record = BaseRecord::with_opaque_to(topics[idx].as_str(), idx)
                .payload(ev.line)
                .timestamp(ev.ts);
            if let Some(k) = ev.key {
                record = record.key(k);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        if producer.context().failed.load(Ordering::Relaxed) > 0 {
                            failed_early = true;
                            break 'run;
                        }
                        if Instant::now() >= hard_stop {
                            break 'run;
                        }
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((source, back)) => {
                        return Err(KafkaError::Enqueue {
                            topic: back.topic.to_string(),
                            source,
                        })
                    }
                }
            }
            sent[idx] += 1;
            total += 1;
            if total.is_multiple_of(256) {
                let scheduled = Duration::from_secs_f64(total as f64 / args.rate);
                max_lag = max_lag.max(started.elapsed().saturating_sub(scheduled));
                if producer.context().failed.load(Ordering::Relaxed) > 0 {
                    failed_early = true;
                    break 'run;
                }
                if Instant::now() >= hard_stop {
                    break 'run;
                }
            }
        }
        if total >= offered || Instant::now() >= hard_stop {
            break;
        }
        tick += 1;
        let next = started + SLICE * (tick.min(u32::MAX as u64) as u32);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Late: skip the slices already past.
            tick = (now.duration_since(started).as_millis() / SLICE.as_millis()) as u64;
        }
    }
    let send_elapsed = started.elapsed();
    if total > 0 {
        let scheduled = Duration::from_secs_f64(total as f64 / args.rate);
        max_lag = max_lag.max(send_elapsed.saturating_sub(scheduled));
    }

    let flush_started = Instant::now();
    if failed_early {
        // The broker refuses messages: drop what is queued instead of waiting for it.
        producer.purge(PurgeConfig::default().queue());
    }
    if let Err(e) = producer.flush(Timeout::After(FLUSH_TIMEOUT)) {
        warn!(error = %e, "flush did not complete");
    }
    let flush_elapsed = flush_started.elapsed();
    let ctx = producer.context();
    let mut report = LiveProduceReport {
        offered_rate: args.rate,
        offered,
        send_elapsed,
        flush_elapsed,
        max_lag,
        run_tag,
        ..Default::default()
    };
    for s in LiveStream::ALL {
        report.streams.push((
            s,
            LiveStreamReport {
                topic: topics[s.index()].clone(),
                sent: sent[s.index()],
                acknowledged: ctx.delivered[s.index()].load(Ordering::Relaxed),
            },
        ));
    }
    let delivered = report.acknowledged();
    ctx.outcome(delivered, total)?;
    info!(
        sent = total,
        delivered,
        send_s = send_elapsed.as_secs_f64(),
        rate = report.achieved_rate(),
        fell_behind = report.fell_behind(),
        "live load generator done"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message_key;

    /// The generator's keys are exactly what `adflow produce` derives from each line
    /// ([`message_key`], spec §1); reports are keyed by their campaign.
    #[test]
    fn generator_keys_match_message_key() {
        let mut gen = LiveGen::new(&LiveConfig::new(9, 500, 5000.0, 1_733_000_000_000)).unwrap();
        let mut seen = [0u64; 5];
        for i in 0..40_000i64 {
            let ev = gen.next_event(1_733_000_000_000 + i / 5);
            seen[ev.stream.index()] += 1;
            match ev.stream.stream_kind() {
                Some(kind) => assert_eq!(
                    ev.key.map(str::to_string),
                    message_key(kind, ev.line.as_bytes()),
                    "{}",
                    ev.line
                ),
                None => {
                    let v: serde_json::Value = serde_json::from_str(ev.line).unwrap();
                    assert_eq!(ev.key, v["campaign_id"].as_str());
                }
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }

    #[test]
    fn rejects_bad_arguments_before_connecting() {
        let args = LiveProduceArgs {
            kafka: "127.0.0.1:9".into(),
            topic_prefix: String::new(),
            rate: 0.0,
            duration: Duration::from_secs(1),
            users: 10,
            seed: 1,
            partitions: Some(4),
            linger: Duration::from_millis(5),
        };
        assert!(matches!(produce_live(&args), Err(KafkaError::Config(_))));
        let args = LiveProduceArgs {
            rate: 10.0,
            duration: Duration::ZERO,
            ..args
        };
        assert!(matches!(produce_live(&args), Err(KafkaError::Config(_))));
    }

    #[test]
    fn summary_says_whether_it_kept_up() {
        let mut r = LiveProduceReport {
            offered_rate: 100.0,
            offered: 300,
            send_elapsed: Duration::from_secs(3),
            ..Default::default()
        };
        r.streams.push((
            LiveStream::AdEvents,
            LiveStreamReport {
                topic: "ad_events".into(),
                sent: 300,
                acknowledged: 300,
            },
        ));
        assert!(!r.fell_behind());
        assert!(r.to_string().contains("kept up"), "{r}");
        r.streams[0].1.sent = 200;
        assert!(r.fell_behind());
        assert!(r.to_string().contains("FELL BEHIND"), "{r}");
    }
}
