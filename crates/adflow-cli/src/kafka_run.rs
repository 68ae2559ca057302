//! `adflow run --kafka BROKERS ...`: live mode. Glue between the engine's live driver
//! ([`adflow_engine::live`]) and Kafka ([`adflow_kafka`]): the static-assignment consumer as a
//! [`LiveSource`], and the dead-letter topic as a [`Sink`].

use crate::{extra_sink, load_settings, RunArgs};
use adflow_engine::driver::RunOptions;
use adflow_engine::file::FileSink;
use adflow_engine::live::{
    run_live, ClusterSpec, LiveOptions, LiveSinks, LiveSource, LiveSourceFactory,
};
use adflow_engine::telemetry::MeteredSink;
use adflow_engine::EngineError;
use adflow_kafka::{
    ensure_topics, DeadLetter, DeadLetterProducer, KafkaConfig, KafkaSource, StartAt,
};
use adflow_model::output::OutputRow;
use adflow_model::{Change, Position, RawMessage, Sink, SinkError, StreamKind, Table};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Duration;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// A worker's statically assigned Kafka consumer (see [`KafkaSource::assigned`]), replaying
/// from the earliest offsets so the in-memory state is rebuilt after a restart.
struct KafkaLive {
    source: KafkaSource,
    /// When each partition was last asked for its high watermark (the slow path of
    /// `caught_up`, when librdkafka's statistics say nothing).
    asked: std::collections::HashMap<(StreamKind, i32), (std::time::Instant, bool)>,
}

fn src_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Source(e.to_string())
}

impl LiveSource for KafkaLive {
    fn partitions(&self) -> Vec<(StreamKind, i32)> {
        self.source.assignment()
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(RawMessage, Option<i64>)>, EngineError> {
        Ok(self
            .source
            .poll_records(max, wait)
            .map_err(src_err)?
            .into_iter()
            .map(|r| (r.raw, r.timestamp_ms))
            .collect())
    }

    /// librdkafka's statistics (every 100 ms: the high watermark of the last fetch response,
    /// only while the partition's leader broker is up) answer at once; when they say nothing
    /// (starting, no fetch yet) the broker is asked, at most once a second per partition.
    fn caught_up(&mut self, stream: StreamKind, partition: i32) -> bool {
        if let Some(c) = self
            .source
            .caught_up_cached(stream, partition, Duration::from_millis(500))
        {
            if c || self.source.next_offset(stream, partition).is_some() {
                return c;
            }
        }
        let key = (stream, partition);
        if let Some(&(at, c)) = self.asked.get(&key) {
            if at.elapsed() < Duration::from_secs(1) {
                return c;
            }
        }
        let c = self
            .source
            .caught_up(stream, partition, Duration::from_millis(200));
        self.asked.insert(key, (std::time::Instant::now(), c));
        c
    }

    fn lag(&self, stream: StreamKind, partition: i32) -> Option<i64> {
        self.source
            .lag_cached(stream, partition, Duration::from_secs(2))
    }

    fn commit(&mut self, offsets: &[(StreamKind, i32, i64)]) -> Result<(), EngineError> {
        // Never move a committed offset backwards (a replay re-reads what an earlier run
        // committed).
        let floor: std::collections::HashMap<(StreamKind, i32), i64> = self
            .source
            .partition_status()
            .into_iter()
            .filter_map(|p| p.committed.map(|c| ((p.stream, p.partition), c)))
            .collect();
        let ahead: Vec<(StreamKind, i32, i64)> = offsets
            .iter()
            .copied()
            .filter(|(s, p, o)| floor.get(&(*s, *p)).is_none_or(|c| o > c))
            .collect();
        if ahead.is_empty() {
            return Ok(());
        }
        // Without waiting for the coordinator: the group's offsets are for monitoring (the
        // checkpoints are in the sinks), and closing the consumer sends what is outstanding.
        self.source
            .commit_async(&ahead)
            .map(|_| ())
            .map_err(src_err)
    }
}

/// Publishes the `dead_letters` rows to the `<prefix>dead_letters` topic (with topic,
/// partition and offset of the rejected message). `write` returns once the broker has
/// acknowledged them, so the durable frontier is the frontier of the last write.
struct DeadLetterSink {
    producer: DeadLetterProducer,
    durable: i64,
}

/// `topic/partition/offset` → the parts.
fn parse_position(position: &str) -> Option<Position> {
    let mut it = position.rsplitn(3, '/');
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?.to_string();
    Some(Position::Kafka {
        topic,
        partition,
        offset,
    })
}

impl Sink for DeadLetterSink {
    fn name(&self) -> &str {
        "kafka-dead-letters"
    }

    fn wants(&self, table: Table) -> bool {
        table == Table::DeadLetters
    }

    fn write(&mut self, changes: Vec<Change>, frontier: i64) -> Result<(), SinkError> {
        // Fault tests (`FAILPOINTS`, docs/operations.md; once per call): the delivery fails.
        fail::fail_point!("sink::dead_letters::write", |_| {
            tracing::warn!(fail_point = "sink::dead_letters::write", "fail point fired");
            Err(SinkError::Other {
                sink: "kafka-dead-letters".into(),
                message: "injected fault (fail point sink::dead_letters::write)".into(),
            })
        });
        let letters: Vec<DeadLetter> = changes
            .iter()
            .filter(|c| c.sign > 0)
            .filter_map(|c| match &c.row {
                OutputRow::DeadLetter(d) => {
                    let stream = StreamKind::from_name(&d.stream)?;
                    let msg = RawMessage {
                        stream,
                        position: parse_position(&d.position)
                            .unwrap_or_else(|| Position::Other(d.position.clone())),
                        payload: d.raw.clone().into_bytes(),
                    };
                    Some(DeadLetter::new(&msg, &d.reason, d.seen_ts))
                }
                _ => None,
            })
            .collect();
        if !letters.is_empty() {
            self.producer.send(&letters).map_err(|e| SinkError::Other {
                sink: "kafka-dead-letters".into(),
                message: e.to_string(),
            })?;
        }
        self.durable = self.durable.max(frontier);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn durable_frontier(&self) -> i64 {
        self.durable
    }
}

/// The cluster of `--processes N --process I --hostfile FILE` (one process without them).
fn cluster_spec(args: &RunArgs, actions: bool) -> Result<ClusterSpec> {
    // `--http`: the dashboard is a funnel sink (so give it to every process of a cluster or
    // to none: the dataflow's shape depends on it).
    let funnel = !args.sinks.is_empty() || actions || args.http.is_some();
    let Some(n) = args.processes else {
        return Ok(ClusterSpec {
            funnel,
            ..ClusterSpec::single()
        });
    };
    let process = args.process.context("--processes needs --process I")?;
    let hostfile = args
        .hostfile
        .as_ref()
        .context("--processes needs --hostfile FILE")?;
    if n == 0 || process >= n {
        bail!("--process {process} is not below --processes {n}");
    }
    let text = std::fs::read_to_string(hostfile)
        .with_context(|| format!("reading the hostfile {}", hostfile.display()))?;
    let addresses: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if addresses.len() < n {
        bail!(
            "the hostfile {} has {} addresses, --processes is {n}",
            hostfile.display(),
            addresses.len()
        );
    }
    Ok(ClusterSpec {
        processes: n,
        process,
        addresses: addresses[..n].to_vec(),
        funnel,
    })
}

/// `adflow run --kafka ...`.
pub(crate) fn cmd_run_kafka(args: RunArgs) -> Result<()> {
    // Live defaults for tick and allowed lateness (freshness; final contents are the same).
    let settings = load_settings(args.config.as_ref())?.for_live();
    let ks = settings.kafka.clone();
    let brokers = args.kafka.clone().unwrap_or_default();
    let mut config = KafkaConfig::new(if brokers.is_empty() {
        ks.brokers.clone()
    } else {
        brokers
    });
    config.topic_prefix = args
        .topic_prefix
        .clone()
        .unwrap_or_else(|| ks.topic_prefix.clone());
    config.group_id = args.group.clone().unwrap_or_else(|| ks.group_id.clone());
    config.properties = ks.properties.clone();
    config.validate().context("kafka settings")?;

    // Topics that do not exist yet are created (4 partitions); existing ones are left alone.
    ensure_topics(&config, 4, METADATA_TIMEOUT).context("creating the adflow topics")?;

    // `[actions]` is a funnel sink on process 0: one outbox for the whole cluster, so an id is
    // known wherever it is computed, also after a restart with another number of processes.
    let cluster = cluster_spec(&args, settings.actions.is_some())?;
    let mut local: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(out) = &args.output {
        local.push(Box::new(FileSink::open_resumable(out)?));
    }
    let mut funnel: Vec<Box<dyn Sink>> = Vec::new();
    let mut actions = None;
    if cluster.process == 0 {
        for spec in &args.sinks {
            funnel.push(extra_sink(spec, &settings)?);
        }
        if let Some((sink, run)) = crate::actions::start(&settings, args.output.as_deref(), true)? {
            funnel.push(sink);
            actions = Some(run);
        }
    }
    if args.output.is_none() && args.sinks.is_empty() {
        bail!("live mode needs a sink: --output DIR and/or --sink clickhouse=URL");
    }
    local.push(Box::new(DeadLetterSink {
        producer: DeadLetterProducer::new(&config, Duration::from_secs(30))
            .context("dead-letter producer")?,
        durable: i64::MIN,
    }));
    let (server, dashboard) = args.start_http()?;
    // The dashboard sees the whole cluster's output: a funnel sink on process 0.
    if let (Some(d), 0) = (&dashboard, cluster.process) {
        funnel.push(d.sink());
    }
    let sinks = LiveSinks {
        local: local.into_iter().map(MeteredSink::wrap).collect(),
        funnel: funnel.into_iter().map(MeteredSink::wrap).collect(),
    };

    // A second signal while stopping exits at once, without the final checkpoint (the restart
    // resumes from the last committed one).
    let shutdown = crate::stop_signals()?;
    let interrupt = shutdown.clone();
    let live = LiveOptions {
        idle_timeout: Duration::from_millis(ks.idle_timeout.0 as u64),
        commit_interval: Duration::from_millis(ks.commit_interval.0 as u64),
        exit_when_idle: args
            .exit_when_idle
            .map(|s| Duration::from_secs_f64(s.max(0.0))),
        shutdown,
        measure_latency: args.latency,
        stop_stall: Duration::from_millis(ks.stop_stall_timeout.0 as u64),
    };
    let opts = RunOptions::new(args.workers, settings)?;
    let kcfg = config.clone();
    let sources: LiveSourceFactory = Arc::new(move |index, peers| {
        let source =
            KafkaSource::assigned(&kcfg, index, peers, StartAt::Beginning, METADATA_TIMEOUT)
                .map_err(src_err)?;
        Ok(Box::new(KafkaLive {
            source,
            asked: Default::default(),
        }) as Box<dyn LiveSource>)
    });
    tracing::info!(brokers = %config.brokers, group = %config.group_id, prefix = %config.topic_prefix, workers = opts.workers, processes = cluster.processes, process = cluster.process, "live mode");
    let started = std::time::Instant::now();
    let report = run_live(
        Arc::new(adflow_pipelines::AdflowProgram),
        sources,
        sinks,
        opts,
        live,
        cluster,
    )?;
    if let Some(a) = actions {
        a.finish()?;
    }
    eprintln!(
        "adflow run --kafka: {} messages ({} events, {} late, {} duplicates, {} dead letters) -> {} changes in {:.2}s, final watermark {}",
        report.messages,
        report.events,
        report.late,
        report.duplicates,
        report.dead_letters,
        report.changes,
        started.elapsed().as_secs_f64(),
        report.final_watermark.unwrap_or(0)
    );
    if let Some(l) = &report.latency {
        let span = (l.ingest_span_ms as f64 / 1000.0).max(1e-3);
        eprintln!(
            "latency (produce timestamp -> handed to the sinks): p50 {} ms, p99 {} ms, max {} ms over {} messages (of it produce timestamp -> read by a worker: p50/p99 {}/{} ms); consumed {:.0} msg/s over {:.2}s from first to last message",
            l.p50_ms, l.p99_ms, l.max_ms, l.samples, l.arrival_p50_ms, l.arrival_p99_ms, report.messages as f64 / span, span
        );
    }
    args.linger(&server, &interrupt);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(
            parse_position("p_orders/3/42"),
            Some(Position::Kafka {
                topic: "p_orders".into(),
                partition: 3,
                offset: 42
            })
        );
        assert_eq!(parse_position("orders.jsonl:7"), None);
    }
}
