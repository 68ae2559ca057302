//! Run metrics, through the [`metrics`] facade. The binary installs a Prometheus recorder
//! when it serves `/metrics` (`adflow run --http ADDR`); without a recorder every call here
//! does nothing.
//!
//! Counters end in `_total`, quantities are in base units (seconds, messages). Every name:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `adflow_input_messages_total` | counter | `stream` | messages read |
//! | `adflow_input_events_total` | counter | `stream` | valid events applied (before dedup) |
//! | `adflow_input_late_events_total` | counter | `stream` | events whose `ts` was below the watermark when they arrived (applied anyway, spec §2) |
//! | `adflow_input_duplicates_total` | counter | `stream` | events ignored as duplicates |
//! | `adflow_dead_letters_total` | counter | `stream` | messages rejected to `dead_letters` |
//! | `adflow_output_changes_total` | counter | `table` | output changes handed to the sinks |
//! | `adflow_watermark_seconds` | gauge | | the watermark: the frontier of what has been handed to the sinks, epoch seconds |
//! | `adflow_watermark_lag_seconds` | gauge | | wall clock minus W |
//! | `adflow_freshness_seconds` | histogram | | live mode: from a message's produce time until the effects of its tick reach the sinks |
//! | `adflow_consumer_lag_messages` | gauge | `stream`, `partition` | live mode: high watermark minus the next offset to read |
//! | `adflow_sink_rows_total` | counter | `sink` | changes handed to the sink |
//! | `adflow_sink_flush_duration_seconds` | histogram | `sink` | time a sink took to make what it was handed durable |
//! | `adflow_sink_errors_total` | counter | `sink` | sink calls that failed (each ends the run) |
//! | `adflow_sink_retries_total` | counter | `sink` | failed attempts a sink retried (ClickHouse) |
//! | `adflow_sink_unavailable_seconds_total` | counter | `sink` | time a sink spent retrying before a write went through (ClickHouse) |
//! | `adflow_live_records` | gauge | `collection` | records held in live state: `dedup_keys` (the dedup operator's remembered keys), `arrangements` (updates held in all the dataflow's arrangements — joins' and reduces' indexed state — over the process's workers; only counted while a recorder is installed) |
//! | `adflow_ready` | gauge | | 1 once the run is caught up (file mode: the input is read and every table written; live mode: every partition this process reads caught up) |
//!
//! Counts are kept per worker in plain integers (the [`RunReport`]) and published as deltas
//! once per step of the worker loop, never per event, so a run with a recorder installed does
//! the same work per event as one without.

use crate::driver::RunReport;
use adflow_model::{StreamKind, Table};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// Set by [`describe`]: a recorder is installed, so the costlier gauges are kept.
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps `adflow_live_records{collection="arrangements"}` from differential's arrangement log on
/// `worker` (before its dataflow is built): every batch an arrangement adds counts its
/// updates, every merge replaces its two inputs' counts by the merged batch's, every dropped
/// batch subtracts. Each worker adds its own deltas to the one gauge. Nothing is registered
/// unless a recorder is installed.
pub(crate) fn register_arrangements(worker: &mut timely::worker::Worker) {
    use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
    if !RECORDING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Some(mut register) = worker.log_register() else {
        return;
    };
    let g = gauge!("adflow_live_records", "collection" => "arrangements");
    register.insert::<DifferentialEventBuilder, _>("differential/arrange", move |_, data| {
        let Some(data) = data else { return };
        let mut delta: i64 = 0;
        for (_, e) in data.iter() {
            match e {
                DifferentialEvent::Batch(b) => delta += b.length as i64,
                DifferentialEvent::Merge(m) => {
                    if let Some(done) = m.complete {
                        delta += done as i64 - (m.length1 + m.length2) as i64;
                    }
                }
                DifferentialEvent::Drop(d) => delta -= d.length as i64,
                _ => {}
            }
        }
        if delta != 0 {
            g.increment(delta as f64);
        }
    });
}

/// Registers the help text of every metric (after installing a recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
    describe_counter!(
        "adflow_input_messages_total",
        "Messages read, per input stream."
    );
    describe_counter!(
        "adflow_input_events_total",
        "Valid events applied (before dedup), per input stream."
    );
    describe_counter!(
        "adflow_input_late_events_total",
        "Events whose ts was below the watermark when they arrived (applied anyway)."
    );
    describe_counter!(
        "adflow_input_duplicates_total",
        "Events ignored as duplicates."
    );
    describe_counter!(
        "adflow_dead_letters_total",
        "Messages rejected to dead_letters."
    );
    describe_counter!(
        "adflow_output_changes_total",
        "Output changes handed to the sinks, per table."
    );
    describe_gauge!(
        "adflow_watermark_seconds",
        Unit::Seconds,
        "The watermark W (epoch seconds): the frontier handed to the sinks."
    );
    describe_gauge!(
        "adflow_watermark_lag_seconds",
        Unit::Seconds,
        "Wall clock minus the watermark."
    );
    describe_histogram!(
        "adflow_freshness_seconds",
        Unit::Seconds,
        "Live mode: from a message's produce time until the effects of its tick reached the sinks."
    );
    describe_gauge!(
        "adflow_consumer_lag_messages",
        "Live mode: messages of the partition not yet read (high watermark minus next offset)."
    );
    describe_counter!("adflow_sink_rows_total", "Changes handed to the sink.");
    describe_histogram!(
        "adflow_sink_flush_duration_seconds",
        Unit::Seconds,
        "Time a sink took to make what it was handed durable."
    );
    describe_counter!("adflow_sink_errors_total", "Sink calls that failed.");
    describe_counter!(
        "adflow_sink_retries_total",
        "Failed sink attempts that were retried."
    );
    describe_counter!(
        "adflow_sink_unavailable_seconds_total",
        Unit::Seconds,
        "Time sink writes spent retrying before they went through."
    );
    describe_gauge!(
        "adflow_live_records",
        "Records held in live state, per collection."
    );
    describe_gauge!("adflow_ready", "1 once the run is caught up.");
}

/// The streams in [`StreamKind::index`] order.
const STREAMS: [StreamKind; 4] = [
    StreamKind::AdEvents,
    StreamKind::Orders,
    StreamKind::Logistics,
    StreamKind::Identity,
];

/// Buckets of the freshness histogram, seconds.
pub const FRESHNESS_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
];
/// Buckets of the sink flush histogram, seconds.
pub const FLUSH_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Per-stream counts of one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    pub messages: u64,
    pub events: u64,
    pub late: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
}

impl StreamCounts {
    pub(crate) fn add(&mut self, o: &StreamCounts) {
        self.messages += o.messages;
        self.events += o.events;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.dead_letters += o.dead_letters;
    }
}

struct StreamHandles {
    messages: Counter,
    events: Counter,
    late: Counter,
    duplicates: Counter,
    dead_letters: Counter,
}

/// One worker's publisher: the handles of its metrics and what it published so far.
pub struct WorkerMeter {
    streams: Vec<StreamHandles>,
    tables: Vec<Counter>,
    published: [StreamCounts; 4],
    published_tables: Vec<u64>,
    dedup_keys: Gauge,
    published_keys: u64,
}

impl Default for WorkerMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMeter {
    pub fn new() -> WorkerMeter {
        let streams = STREAMS
            .iter()
            .map(|s| {
                let l = [("stream", s.name())];
                StreamHandles {
                    messages: counter!("adflow_input_messages_total", &l),
                    events: counter!("adflow_input_events_total", &l),
                    late: counter!("adflow_input_late_events_total", &l),
                    duplicates: counter!("adflow_input_duplicates_total", &l),
                    dead_letters: counter!("adflow_dead_letters_total", &l),
                }
            })
            .collect();
        let tables = Table::ALL
            .iter()
            .map(|t| counter!("adflow_output_changes_total", "table" => t.name()))
            .collect();
        WorkerMeter {
            streams,
            tables,
            published: Default::default(),
            published_tables: vec![0; Table::ALL.len()],
            dedup_keys: gauge!("adflow_live_records", "collection" => "dedup_keys"),
            published_keys: 0,
        }
    }

    /// Publishes what `report` counted since the last call (its per-stream and per-table
    /// counts only grow), and this worker's share of the dedup keys (`tracked`; the gauge is
    /// the sum over workers).
    pub fn publish(&mut self, report: &RunReport, tracked_keys: u64) {
        for (i, h) in self.streams.iter().enumerate() {
            let now = report.by_stream[i];
            let was = &mut self.published[i];
            h.messages.increment(now.messages - was.messages);
            h.events.increment(now.events - was.events);
            h.late.increment(now.late - was.late);
            h.duplicates.increment(now.duplicates - was.duplicates);
            h.dead_letters
                .increment(now.dead_letters - was.dead_letters);
            *was = now;
        }
        for (i, c) in self.tables.iter().enumerate() {
            let now = report.changes_by_table.get(i).copied().unwrap_or(0);
            c.increment(now - self.published_tables[i]);
            self.published_tables[i] = now;
        }
        if tracked_keys != self.published_keys {
            self.dedup_keys
                .increment(tracked_keys as f64 - self.published_keys as f64);
            self.published_keys = tracked_keys;
        }
    }
}

/// The watermark gauges (set by the worker that hands changes to the sinks).
pub struct WatermarkMeter {
    watermark: Gauge,
    lag: Gauge,
}

impl Default for WatermarkMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl WatermarkMeter {
    pub fn new() -> WatermarkMeter {
        WatermarkMeter {
            watermark: gauge!("adflow_watermark_seconds"),
            lag: gauge!("adflow_watermark_lag_seconds"),
        }
    }

    /// Sets W (epoch milliseconds) and its lag behind the wall clock `now_ms`.
    pub fn set(&self, w_ms: i64, now_ms: i64) {
        self.watermark.set(w_ms as f64 / 1000.0);
        self.lag.set((now_ms - w_ms) as f64 / 1000.0);
    }
}

/// A message's freshness: from its produce time to the moment its effects reached the sinks.
pub fn freshness() -> Histogram {
    histogram!("adflow_freshness_seconds")
}

/// Consumer lag of one partition of a stream's topic.
pub fn consumer_lag(stream: StreamKind, partition: i32) -> Gauge {
    gauge!("adflow_consumer_lag_messages", "stream" => stream.name(), "partition" => partition.to_string())
}

/// Whether each live worker of this process is caught up; a complete file run.
static READINESS: std::sync::Mutex<Readiness> = std::sync::Mutex::new(Readiness {
    workers: Vec::new(),
    complete: false,
});

struct Readiness {
    workers: Vec<Option<bool>>,
    complete: bool,
}

/// Sets `adflow_ready` from the current readiness (after installing a recorder).
pub fn set_ready_gauge_now() {
    set_ready_gauge(&READINESS.lock().unwrap_or_else(|p| p.into_inner()));
}

fn set_ready_gauge(r: &Readiness) {
    gauge!("adflow_ready").set(if ready_of(r) { 1.0 } else { 0.0 });
}

fn ready_of(r: &Readiness) -> bool {
    r.complete || (!r.workers.is_empty() && r.workers.iter().all(|w| w.unwrap_or(false)))
}

/// Live mode: worker `index` of this process is caught up (every partition it reads), or not.
pub fn set_worker_ready(index: usize, caught_up: bool) {
    let mut r = READINESS.lock().unwrap_or_else(|p| p.into_inner());
    if r.workers.len() <= index {
        r.workers.resize(index + 1, None);
    }
    r.workers[index] = Some(caught_up);
    set_ready_gauge(&r);
}

/// Live mode: the number of workers in this process (a worker not yet reporting is not
/// ready).
pub fn expect_workers(n: usize) {
    let mut r = READINESS.lock().unwrap_or_else(|p| p.into_inner());
    if r.workers.len() < n {
        r.workers.resize(n, None);
    }
    set_ready_gauge(&r);
}

/// File mode: the input is read and every table written.
pub fn set_complete() {
    let mut r = READINESS.lock().unwrap_or_else(|p| p.into_inner());
    r.complete = true;
    set_ready_gauge(&r);
}

/// Whether this process is ready (`/ready`): a complete file run, or every live worker of the
/// process caught up.
pub fn is_ready() -> bool {
    ready_of(&READINESS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The per-sink metrics of [`MeteredSink`]. Retries and unavailable time are recorded by the
/// sinks that retry (`adflow_sink_retries_total`, `adflow_sink_unavailable_seconds_total`,
/// label `sink`).
#[derive(Clone)]
pub struct SinkMeter {
    pub rows: Counter,
    pub flush: Histogram,
    pub errors: Counter,
}

impl SinkMeter {
    pub fn new(sink: &str) -> SinkMeter {
        let l = [("sink", sink.to_string())];
        SinkMeter {
            rows: counter!("adflow_sink_rows_total", &l),
            flush: histogram!("adflow_sink_flush_duration_seconds", &l),
            errors: counter!("adflow_sink_errors_total", &l),
        }
    }
}

/// A sink with its metrics: rows handed, flush durations, failed calls. Everything else is
/// the inner sink's.
pub struct MeteredSink {
    inner: Box<dyn adflow_model::Sink>,
    meter: SinkMeter,
    /// When the flush begun by `start_flush` started (until `flush_done` says it is complete).
    flushing: Option<std::time::Instant>,
}

impl MeteredSink {
    pub fn wrap(inner: Box<dyn adflow_model::Sink>) -> Box<dyn adflow_model::Sink> {
        let meter = SinkMeter::new(inner.name());
        Box::new(MeteredSink {
            inner,
            meter,
            flushing: None,
        })
    }
}

impl adflow_model::Sink for MeteredSink {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn write(
        &mut self,
        changes: Vec<adflow_model::Change>,
        frontier: i64,
    ) -> Result<(), adflow_model::SinkError> {
        let n = changes.len() as u64;
        let r = self.inner.write(changes, frontier);
        match &r {
            Ok(()) => self.meter.rows.increment(n),
            Err(_) => self.meter.errors.increment(1),
        }
        r
    }
    fn flush(&mut self) -> Result<(), adflow_model::SinkError> {
        let started = std::time::Instant::now();
        let r = self.inner.flush();
        match &r {
            Ok(()) => self.meter.flush.record(started.elapsed().as_secs_f64()),
            Err(_) => self.meter.errors.increment(1),
        }
        r
    }
    fn start_flush(&mut self) -> Result<(), adflow_model::SinkError> {
        let started = std::time::Instant::now();
        let r = self.inner.start_flush();
        match &r {
            Ok(()) => self.flushing = Some(started),
            Err(_) => self.meter.errors.increment(1),
        }
        r
    }
    fn flush_done(&mut self) -> Result<bool, adflow_model::SinkError> {
        let r = self.inner.flush_done();
        match &r {
            Ok(true) => {
                if let Some(started) = self.flushing.take() {
                    self.meter.flush.record(started.elapsed().as_secs_f64());
                }
            }
            Ok(false) => {}
            Err(_) => self.meter.errors.increment(1),
        }
        r
    }
    fn wants(&self, table: Table) -> bool {
        self.inner.wants(table)
    }
    fn durable_frontier(&self) -> i64 {
        self.inner.durable_frontier()
    }
    fn resume_frontier(&self, table: Table) -> i64 {
        self.inner.resume_frontier(table)
    }
    fn set_checkpoint(&mut self, checkpoint: &str) {
        self.inner.set_checkpoint(checkpoint)
    }
    fn resume_checkpoint(&self) -> Option<String> {
        self.inner.resume_checkpoint()
    }
    fn resumable(&self) -> bool {
        self.inner.resumable()
    }
    fn resume_points(&self) -> Vec<Option<String>> {
        self.inner.resume_points()
    }
    fn resume_to(&mut self, checkpoint: Option<&str>) -> Result<(), adflow_model::SinkError> {
        self.inner.resume_to(checkpoint)
    }
}
