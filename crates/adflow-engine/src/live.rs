//! Live mode: the driver for unbounded, partitioned sources (Kafka), running until it is told
//! to stop.
//!
//! # Event time
//! Every partition has its own watermark, the largest `ts` it delivered minus the allowed
//! lateness. The stream's watermark is the smallest watermark of the *active* partitions; a
//! partition is idle (not active) once it has delivered nothing for `idle_timeout` and the
//! source reports it drained ([`LiveSource::caught_up`]); an idle partition does not hold
//! event time back. A partition that has not delivered anything yet counts as active for its first
//! `idle_timeout`, so a quiet start does not race ahead of data still on its way. When every
//! partition is idle, event time follows the wall clock: it moves on from the largest
//! partition watermark by the wall-clock time elapsed since the last message (minus the idle
//! timeout), so timers (stalled parcels, replenishment, windows) still fire on a quiet stream.
//! The watermark never moves backwards.
//!
//! # Delivery and restarts
//! Worker 0 flushes every sink each `commit_interval`. With the flush goes a *checkpoint*:
//! the frontier `F` just handed to the sinks and, per partition, the read mark `g` = how many
//! messages had been read while the input time was still below `F`. Exactly the messages
//! below `g` with `ts` (rounded up to the tick) below `F` took effect before `F`; everything
//! else took effect at or after `F`. After the flush every worker commits `g` of its
//! partitions to the consumer group (for lag monitoring; a message is committed only once
//! its effects before `F` are durable in every sink).
//!
//! The dataflow's state lives in memory. A restarted job replays its partitions from the
//! beginning (the source decides where; Kafka: the earliest retained offset) to rebuild that
//! state, using the checkpoint a sink resumed with ([`adflow_model::Sink::resume_checkpoint`],
//! the file sink keeps it with its data): messages below `g` are inserted as before (their
//! dead letters are not written again) and event time is held below `F` until every partition
//! has been read up to `g`; messages at or after `g` take effect no earlier than `F`. The
//! sinks get only the changes at or above the frontier they resumed from
//! ([`adflow_model::Sink::resume_frontier`]). The replayed run therefore has exactly the
//! state the earlier one had at `F` and continues its changelog without gaps or duplicates.
//! Topic retention must cover the state retention.
//!
//! # Stopping
//! On the `shutdown` flag (SIGINT/SIGTERM) or, with `exit_when_idle`, once every partition
//! has been idle that long, worker 0 fixes a final watermark; every worker advances to it, the
//! outputs up to it are released and flushed, offsets are committed, and the run returns.
//!
//! The partition table, the durable frontier and the stop decision are shared in memory, so a
//! live run is one process with `workers` threads.

use crate::driver::{
    build_dataflow, deliver, release_until, Built, Ingest, Ingested, RunOptions, RunReport,
};
use crate::{to_time, EngineError, Program, Time};
use adflow_model::{Position, RawMessage, Sink, StreamKind, Table};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One worker's share of a partitioned, unbounded input.
pub trait LiveSource {
    /// The partitions this worker reads, fixed for the whole run.
    fn partitions(&self) -> Vec<(StreamKind, i32)>;
    /// The offsets committed by an earlier run (the next offset it would have read), per
    /// partition: messages below were fully processed then.
    fn committed_at_start(&self) -> Vec<(StreamKind, i32, i64)>;
    /// Up to `max` messages, waiting at most `wait` for the first one. Each message's
    /// position is [`Position::Kafka`] (partition and offset are used).
    /// Each message comes with its produce timestamp (epoch ms) when the source knows it.
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(RawMessage, Option<i64>)>, EngineError>;
    /// Commits, per partition, the next offset to read.
    fn commit(&mut self, offsets: &[(StreamKind, i32, i64)]) -> Result<(), EngineError>;
    /// Whether everything the partition holds (as far as the source knows) has been read.
    /// Only a caught-up partition can be idle: one that merely cannot be read (broker
    /// unreachable) keeps holding event time back.
    /// Asked only for partitions that have been quiet for the idle timeout, so it may query
    /// the broker (briefly).
    fn caught_up(&mut self, stream: StreamKind, partition: i32) -> bool;
}

/// Builds the live source of worker `index` of `peers`.
pub type LiveSourceFactory =
    Arc<dyn Fn(usize, usize) -> Result<Box<dyn LiveSource>, EngineError> + Send + Sync>;

/// Live-mode knobs (event-time settings come from [`RunOptions::settings`]).
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// See the module docs (settings `kafka.idle_timeout`).
    pub idle_timeout: Duration,
    /// How often sinks are flushed and offsets committed.
    pub commit_interval: Duration,
    /// Stop once every partition has been idle this long.
    pub exit_when_idle: Option<Duration>,
    /// Set (by a signal handler) to stop: in-flight work is finished, flushed and committed.
    pub shutdown: Arc<AtomicBool>,
    /// Measure the latency from each message's produce timestamp until its effects are
    /// handed to the sinks (benchmarks; costs a map entry per message).
    pub measure_latency: bool,
}

/// Latency bookkeeping (see [`LiveOptions::measure_latency`]).
#[derive(Default)]
struct Latency {
    /// Insert time → produce timestamps of the messages inserted then.
    pending: BTreeMap<Time, Vec<i64>>,
    /// Histogram in milliseconds; the last bucket collects everything longer.
    histogram: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

const LATENCY_BUCKETS: usize = 600_001;

impl Latency {
    fn release(&mut self, frontier: Time, now_ms: i64) {
        if self.histogram.is_empty() {
            self.histogram = vec![0; LATENCY_BUCKETS];
        }
        let later = self.pending.split_off(&frontier);
        for (_, produced) in std::mem::replace(&mut self.pending, later) {
            for p in produced {
                let ms = (now_ms - p).clamp(0, LATENCY_BUCKETS as i64 - 1) as usize;
                self.histogram[ms] += 1;
            }
        }
    }

    fn summary(&self) -> crate::driver::LatencySummary {
        let samples: u64 = self.histogram.iter().sum();
        let pct = |q: f64| {
            let target = ((samples as f64) * q).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (ms, n) in self.histogram.iter().enumerate() {
                acc += n;
                if acc >= target {
                    return ms as u64;
                }
            }
            0
        };
        crate::driver::LatencySummary {
            samples,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: self.histogram.iter().rposition(|&n| n > 0).unwrap_or(0) as u64,
            ingest_span_ms: match (self.first, self.last) {
                (Some(a), Some(b)) => b.saturating_duration_since(a).as_millis() as u64,
                _ => 0,
            },
        }
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug)]
struct Part {
    max_ts: Option<i64>,
    last: Instant,
    /// Everything the partition holds has been read.
    caught_up: bool,
}

impl Part {
    fn idle(&self, now: Instant, idle: Duration) -> bool {
        self.caught_up && now.saturating_duration_since(self.last) >= idle
    }
}

/// What the live engine stores with a sink flush (see the module docs).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    frontier: i64,
    /// (stream, partition, read mark).
    read: Vec<(String, i32, i64)>,
}

impl Checkpoint {
    fn marks(&self) -> HashMap<(StreamKind, i32), i64> {
        self.read
            .iter()
            .filter_map(|(s, p, g)| Some(((StreamKind::from_name(s)?, *p), *g)))
            .collect()
    }
}

/// (input time when a batch was read, read mark after it), oldest first.
type ReadMarks = VecDeque<(Time, i64)>;

/// State shared by the workers of one process.
struct Shared {
    /// The checkpoint this run resumes from.
    resume: Option<Checkpoint>,
    /// Partitions not yet read up to their resume read mark; event time stays below the
    /// resume frontier meanwhile.
    replaying: Mutex<std::collections::HashSet<(StreamKind, i32)>>,
    /// Per partition: (input time when a batch was read, read mark after it), oldest first.
    marks: Mutex<HashMap<(StreamKind, i32), ReadMarks>>,
    /// Per partition: the read mark of the last durable checkpoint.
    durable_marks: Mutex<HashMap<(StreamKind, i32), i64>>,
    parts: Mutex<BTreeMap<(StreamKind, i32), Part>>,
    /// Smallest durable frontier of the sinks (published by worker 0).
    durable: AtomicI64,
    /// The final watermark, once worker 0 decided to stop.
    stop_at: Mutex<Option<Time>>,
    /// Worker 0 has flushed everything up to the final watermark.
    final_flushed: AtomicBool,
    /// A worker returned an error: the others stop waiting for it.
    failed: AtomicBool,
    latency: Mutex<Latency>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The stream watermark now (see the module docs), or `None` while it cannot advance.
    fn watermark(&self, now: Instant, lateness: i64, idle: Duration) -> Option<i64> {
        let parts = lock(&self.parts);
        let mut any_active = false;
        let mut active_without_data = false;
        let mut min_active = i64::MAX;
        let mut max_seen: Option<i64> = None;
        let mut last_any = self.started;
        for p in parts.values() {
            last_any = last_any.max(p.last);
            if let Some(m) = p.max_ts {
                max_seen = Some(max_seen.map_or(m, |x| x.max(m)));
            }
            if !p.idle(now, idle) {
                any_active = true;
                match p.max_ts {
                    Some(m) => min_active = min_active.min(m),
                    None => active_without_data = true,
                }
            }
        }
        drop(parts);
        let w = if any_active {
            (!active_without_data).then(|| min_active.saturating_sub(lateness))
        } else {
            let quiet = now.saturating_duration_since(last_any).saturating_sub(idle);
            max_seen.map(|m| {
                m.saturating_sub(lateness)
                    .saturating_add(quiet.as_millis() as i64)
            })
        };
        match (&self.resume, lock(&self.replaying).is_empty()) {
            (Some(cp), false) => w.map(|w| w.min(cp.frontier.saturating_sub(1))),
            _ => w,
        }
    }

    /// The checkpoint for frontier `f`: per partition, the read mark of the last batch read
    /// at an input time below `f` (older entries are dropped).
    fn checkpoint(&self, f: i64) -> Checkpoint {
        let mut marks = lock(&self.marks);
        let base = lock(&self.durable_marks).clone();
        let mut read = Vec::new();
        for (&(stream, partition), q) in marks.iter_mut() {
            let mut g = base.get(&(stream, partition)).copied().unwrap_or(0);
            while let Some(&(at, mark)) = q.front() {
                if at as i64 >= f {
                    break;
                }
                g = g.max(mark);
                q.pop_front();
            }
            // Keep the mark as the base of the next checkpoint.
            q.push_front((0, g));
            read.push((stream.name().to_string(), partition, g));
        }
        for (&(stream, partition), &g) in &base {
            if !marks.contains_key(&(stream, partition)) {
                read.push((stream.name().to_string(), partition, g));
            }
        }
        read.sort();
        Checkpoint { frontier: f, read }
    }

    /// How long every partition has been idle (zero while one is not known to be drained).
    fn all_idle_for(&self, now: Instant) -> Duration {
        let parts = lock(&self.parts);
        if parts.values().any(|p| !p.caught_up) {
            return Duration::ZERO;
        }
        let last = parts.values().map(|p| p.last).max().unwrap_or(self.started);
        now.saturating_duration_since(last)
    }
}

/// Runs `program` over live sources until `live.shutdown` is set or, with
/// `live.exit_when_idle`, until every partition has been idle that long. See the module docs.
pub fn run_live(
    program: Arc<dyn Program>,
    sources: LiveSourceFactory,
    sinks: Vec<Box<dyn Sink>>,
    opts: RunOptions,
    live: LiveOptions,
) -> Result<RunReport, EngineError> {
    let resume: Option<Checkpoint> = sinks
        .iter()
        .filter_map(|s| s.resume_checkpoint())
        .next()
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| EngineError::Source(format!("unreadable sink checkpoint: {e}")))
        })
        .transpose()?;
    if let Some(cp) = &resume {
        tracing::info!(
            frontier = cp.frontier,
            partitions = cp.read.len(),
            "resuming from the sinks' checkpoint"
        );
    }
    let replaying = resume
        .as_ref()
        .map(|cp| {
            cp.marks()
                .into_iter()
                .filter(|&(_, g)| g > 0)
                .map(|(k, _)| k)
                .collect()
        })
        .unwrap_or_default();
    let durable_marks = resume.as_ref().map(Checkpoint::marks).unwrap_or_default();
    let sinks = Arc::new(Mutex::new(Some(sinks)));
    let shared = Arc::new(Shared {
        resume,
        replaying: Mutex::new(replaying),
        marks: Mutex::new(HashMap::new()),
        durable_marks: Mutex::new(durable_marks),
        parts: Mutex::new(BTreeMap::new()),
        durable: AtomicI64::new(i64::MIN),
        stop_at: Mutex::new(None),
        final_flushed: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        latency: Mutex::new(Latency::default()),
        started: Instant::now(),
    });
    let config = timely::Config::process(opts.workers);
    let guards = timely::execute(config, move |worker| {
        let mine = if worker.index() == 0 {
            lock(&sinks).take().unwrap_or_default()
        } else {
            Vec::new()
        };
        let r = live_worker(
            worker,
            program.as_ref(),
            &sources,
            mine,
            &opts,
            &live,
            &shared,
        );
        if r.is_err() {
            // Let the other workers stop too instead of waiting for this one forever.
            shared.failed.store(true, Ordering::SeqCst);
        }
        r
    })
    .map_err(EngineError::Timely)?;
    let mut total = RunReport::default();
    let mut first_err = None;
    for r in guards.join() {
        match r.map_err(EngineError::Timely) {
            Ok(Ok(r)) => total.add(&r),
            Ok(Err(e)) | Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Flushes every sink with the checkpoint of the frontier last handed over; then publishes
/// the durable frontier and read marks to the workers.
fn flush_all(sinks: &mut [Box<dyn Sink>], shared: &Shared, handed: i64) -> Result<(), EngineError> {
    // While replaying below the checkpoint a sink resumed from, that checkpoint stays the
    // sinks' last one: a checkpoint for an earlier frontier would not match what they hold.
    if shared
        .resume
        .as_ref()
        .is_some_and(|cp| handed < cp.frontier)
    {
        for s in sinks.iter_mut() {
            s.flush()?;
        }
        return Ok(());
    }
    let cp = shared.checkpoint(handed);
    let text = serde_json::to_string(&cp).map_err(|e| EngineError::Source(e.to_string()))?;
    let mut f = i64::MAX;
    for s in sinks.iter_mut() {
        s.set_checkpoint(&text);
        s.flush()?;
        f = f.min(s.durable_frontier());
    }
    if f >= cp.frontier {
        let mut dm = lock(&shared.durable_marks);
        dm.extend(cp.marks());
    }
    shared
        .durable
        .fetch_max(f.min(cp.frontier), Ordering::SeqCst);
    Ok(())
}

/// Commits the durable read marks of this worker's partitions (those that moved).
fn commit_durable(
    source: &mut dyn LiveSource,
    shared: &Shared,
    mine: &[(StreamKind, i32)],
    last: &mut HashMap<(StreamKind, i32), i64>,
) -> Result<(), EngineError> {
    let dm = lock(&shared.durable_marks).clone();
    let mut offsets = Vec::new();
    for key in mine {
        if let Some(&g) = dm.get(key) {
            if last.get(key).is_none_or(|&l| g > l) {
                offsets.push((key.0, key.1, g));
            }
        }
    }
    if !offsets.is_empty() {
        offsets.sort();
        source.commit(&offsets)?;
        for (s, p, g) in offsets {
            last.insert((s, p), g);
        }
    }
    Ok(())
}

fn kafka_pos(msg: &RawMessage) -> Option<(i32, i64)> {
    match &msg.position {
        Position::Kafka {
            partition, offset, ..
        } => Some((*partition, *offset)),
        _ => None,
    }
}

fn live_worker(
    worker: &mut timely::worker::Worker,
    program: &dyn Program,
    sources: &LiveSourceFactory,
    mut sinks: Vec<Box<dyn Sink>>,
    opts: &RunOptions,
    live: &LiveOptions,
    shared: &Shared,
) -> Result<RunReport, EngineError> {
    let index = worker.index();
    let settings = opts.settings.clone();
    let lateness = settings.allowed_lateness.0.max(0);
    let mut source = sources(index, worker.peers())?;
    let resume: Vec<HashMap<Table, i64>> = sinks
        .iter()
        .map(|s| {
            Table::ALL
                .into_iter()
                .map(|t| (t, s.resume_frontier(t)))
                .filter(|&(_, r)| r > i64::MIN)
                .collect()
        })
        .collect();
    // The resume checkpoint: messages below a partition's read mark took effect before its
    // frontier in the earlier run; later ones take effect at the frontier or after.
    let (resume_f, resume_marks) = match &shared.resume {
        Some(cp) => (to_time(cp.frontier), cp.marks()),
        None => (0, HashMap::new()),
    };
    let mine = source.partitions();
    let mut last_commit: HashMap<(StreamKind, i32), i64> = source
        .committed_at_start()
        .into_iter()
        .map(|(s, p, o)| ((s, p), o))
        .collect();
    {
        let now = Instant::now();
        let mut parts = lock(&shared.parts);
        for sp in source.partitions() {
            parts.insert(
                sp,
                Part {
                    max_ts: None,
                    last: now,
                    caught_up: false,
                },
            );
        }
    }

    let Built {
        mut ev_in,
        mut dl_in,
        probe,
        buffer,
        dstats,
        dataflow_id,
        ..
    } = build_dataflow(worker, program, &settings)?;

    let mut report = RunReport::default();
    let mut history: VecDeque<Time> = VecDeque::new();
    let mut last_flush = Instant::now();
    let mut last_log = Instant::now();
    let mut committed_up_to = i64::MIN;
    let mut handed = i64::MIN;
    let mut last_drain_check = Instant::now();
    let started = Instant::now();

    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(EngineError::PeerFailed);
        }
        if lock(&shared.stop_at).is_some() {
            break;
        }
        let now = Instant::now();
        if index == 0 {
            let idle_exit = live
                .exit_when_idle
                .is_some_and(|d| shared.all_idle_for(now) >= d);
            if idle_exit || live.shutdown.load(Ordering::SeqCst) {
                let w = shared
                    .watermark(now, lateness, live.idle_timeout)
                    .map_or(0, to_time);
                let stop = w.max(*ev_in.time());
                tracing::info!(watermark = stop, idle_exit, "stopping");
                *lock(&shared.stop_at) = Some(stop);
                break;
            }
        } else if live.shutdown.load(Ordering::SeqCst) && lock(&shared.stop_at).is_none() {
            // Worker 0 decides the final watermark; keep the dataflow moving meanwhile.
            worker.step_or_park(Some(Duration::from_millis(1)));
            continue;
        }

        let msgs = source.poll(opts.batch, Duration::from_millis(10))?;
        if !msgs.is_empty() {
            let cur = *ev_in.time();
            let ingest = Ingest::new(opts, cur);
            let mut seen: HashMap<(StreamKind, i32), (i64, i64)> = HashMap::new();
            let mut produced: Vec<(Time, i64)> = Vec::new();
            for (msg, produced_at) in &msgs {
                let Some((partition, offset)) = kafka_pos(msg) else {
                    continue;
                };
                let key = (msg.stream, partition);
                let old = resume_marks.get(&key).is_some_and(|&g| offset < g);
                let floor = if old { 0 } else { resume_f };
                let got = ingest.ingest(msg, &mut report, &mut ev_in, &mut dl_in, !old, floor);
                if let (true, Some(p)) = (live.measure_latency, produced_at) {
                    let at = match got {
                        Ingested::Event { at, .. } | Ingested::Rejected { at } => at,
                    };
                    produced.push((at, *p));
                }
                let e = seen.entry(key).or_insert((i64::MIN, offset + 1));
                e.1 = e.1.max(offset + 1);
                if let Ingested::Event { ts, .. } = got {
                    e.0 = e.0.max(ts);
                }
            }
            let now = Instant::now();
            if live.measure_latency {
                let mut lat = lock(&shared.latency);
                lat.first.get_or_insert(now);
                lat.last = Some(now);
                for (at, p) in produced {
                    lat.pending.entry(at).or_default().push(p);
                }
            }
            {
                let mut parts = lock(&shared.parts);
                for (&key, &(m, _)) in &seen {
                    let p = parts.entry(key).or_insert(Part {
                        max_ts: None,
                        last: now,
                        caught_up: false,
                    });
                    p.last = now;
                    if m > i64::MIN {
                        p.max_ts = Some(p.max_ts.map_or(m, |x| x.max(m)));
                    }
                }
            }
            // Read marks, before the input time moves past `cur`.
            let mut marks = lock(&shared.marks);
            let mut replaying = lock(&shared.replaying);
            for (&key, &(_, next)) in &seen {
                marks.entry(key).or_default().push_back((cur, next));
                if replaying.contains(&key) && resume_marks.get(&key).is_some_and(|&g| next >= g) {
                    replaying.remove(&key);
                    tracing::info!(stream = %key.0, partition = key.1, "replay caught up");
                }
            }
        }
        // Quiet partitions: are they drained, or just unreadable? Asked at most once a second.
        if last_drain_check.elapsed() >= Duration::from_secs(1) {
            last_drain_check = Instant::now();
            let now = Instant::now();
            let quiet: Vec<(StreamKind, i32)> = {
                let parts = lock(&shared.parts);
                mine.iter()
                    .copied()
                    .filter(|k| {
                        parts.get(k).is_some_and(|p| {
                            now.saturating_duration_since(p.last) >= live.idle_timeout
                        })
                    })
                    .collect()
            };
            let drained: Vec<((StreamKind, i32), bool)> = quiet
                .into_iter()
                .map(|(s, p)| ((s, p), source.caught_up(s, p)))
                .collect();
            let mut parts = lock(&shared.parts);
            for (k, d) in drained {
                if let Some(p) = parts.get_mut(&k) {
                    p.caught_up = d;
                }
            }
        }
        if let Some(w) = shared.watermark(Instant::now(), lateness, live.idle_timeout) {
            let w = to_time(w);
            if w > *ev_in.time() {
                ev_in.advance_to(w);
                dl_in.advance_to(w);
            }
        }
        ev_in.flush();
        dl_in.flush();
        if !msgs.is_empty() {
            history.push_back(*ev_in.time());
            if history.len() > 4 {
                if let Some(t) = history.pop_front() {
                    worker.step_while(|| probe.less_than(&t));
                }
            }
        }
        worker.step_or_park(Some(Duration::ZERO));

        if index == 0 {
            deliver(&buffer, &mut sinks, &resume, &mut report, &mut handed)?;
            if live.measure_latency && handed > 0 {
                lock(&shared.latency).release(handed as Time, wall_ms());
            }
            if last_flush.elapsed() >= live.commit_interval {
                last_flush = Instant::now();
                flush_all(&mut sinks, shared, handed)?;
            }
            if last_log.elapsed() >= opts.progress_every {
                last_log = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(
                    messages = report.messages,
                    rate = (report.messages as f64 / secs) as u64,
                    watermark = *ev_in.time(),
                    durable = shared.durable.load(Ordering::SeqCst),
                    dead_letters = report.dead_letters,
                    "progress"
                );
            }
        }
        let durable = shared.durable.load(Ordering::SeqCst);
        if durable > committed_up_to {
            commit_durable(source.as_mut(), shared, &mine, &mut last_commit)?;
            committed_up_to = durable;
        }
    }

    // Stop: advance to the final watermark, release and flush everything below it, commit.
    let stop = lock(&shared.stop_at).unwrap_or(0);
    release_until(worker, &mut ev_in, &mut dl_in, &probe, &buffer, stop);
    if index == 0 {
        deliver(&buffer, &mut sinks, &resume, &mut report, &mut handed)?;
        if live.measure_latency && handed > 0 {
            let mut lat = lock(&shared.latency);
            lat.release(handed as Time, wall_ms());
            report.latency = Some(lat.summary());
        }
        flush_all(&mut sinks, shared, handed)?;
        shared.final_flushed.store(true, Ordering::SeqCst);
    } else {
        while !shared.final_flushed.load(Ordering::SeqCst) {
            if shared.failed.load(Ordering::SeqCst) {
                return Err(EngineError::PeerFailed);
            }
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }
    commit_durable(source.as_mut(), shared, &mine, &mut last_commit)?;
    report.duplicates = dstats.borrow().duplicates;
    report.final_watermark = Some(stop as i64);
    worker.drop_dataflow(dataflow_id);
    drop((ev_in, dl_in));
    tracing::info!(
        worker = index,
        messages = report.messages,
        secs = started.elapsed().as_secs_f64(),
        "worker finished"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(resume: Option<Checkpoint>) -> Shared {
        Shared {
            replaying: Mutex::new(
                resume
                    .as_ref()
                    .map(|c| c.marks().into_keys().collect())
                    .unwrap_or_default(),
            ),
            resume,
            marks: Mutex::new(HashMap::new()),
            durable_marks: Mutex::new(HashMap::new()),
            parts: Mutex::new(BTreeMap::new()),
            durable: AtomicI64::new(i64::MIN),
            stop_at: Mutex::new(None),
            final_flushed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            latency: Mutex::new(Latency::default()),
            started: Instant::now(),
        }
    }

    fn set(s: &Shared, p: i32, max_ts: Option<i64>, last: Instant) {
        lock(&s.parts).insert(
            (StreamKind::AdEvents, p),
            Part {
                max_ts,
                last,
                caught_up: true,
            },
        );
    }

    #[test]
    fn watermark_is_the_smallest_active_partition_and_idles_forward() {
        let s = shared(None);
        let t0 = s.started;
        let idle = Duration::from_secs(10);
        set(&s, 0, Some(100_000), t0);
        set(&s, 1, None, t0);
        // A partition without data holds event time back during its first idle timeout.
        assert_eq!(s.watermark(t0 + Duration::from_secs(1), 5_000, idle), None);
        set(&s, 1, Some(50_000), t0 + Duration::from_secs(2));
        assert_eq!(
            s.watermark(t0 + Duration::from_secs(3), 5_000, idle),
            Some(45_000)
        );
        // Partition 0 goes idle: it no longer holds back... partition 1 is the only active one.
        set(&s, 0, Some(100_000), t0);
        assert_eq!(
            s.watermark(t0 + Duration::from_secs(11), 5_000, idle),
            Some(45_000)
        );
        // Everything idle: from the largest watermark on, with the wall clock.
        assert_eq!(
            s.watermark(t0 + Duration::from_secs(12), 5_000, idle),
            Some(95_000)
        );
        assert_eq!(
            s.watermark(t0 + Duration::from_secs(15), 5_000, idle),
            Some(98_000)
        );
        assert_eq!(
            s.all_idle_for(t0 + Duration::from_secs(15)),
            Duration::from_secs(13)
        );
        // A quiet partition not known to be drained (broker unreachable) is not idle.
        lock(&s.parts)
            .get_mut(&(StreamKind::AdEvents, 1))
            .unwrap()
            .caught_up = false;
        assert_eq!(
            s.watermark(t0 + Duration::from_secs(15), 5_000, idle),
            Some(45_000)
        );
        assert_eq!(s.all_idle_for(t0 + Duration::from_secs(15)), Duration::ZERO);
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latency::default();
        for i in 0..100 {
            l.pending.entry(i as Time).or_default().push(1_000 - i);
        }
        l.pending.entry(500).or_default().push(0);
        // Released at wall clock 1_000: latencies 0..=99 ms; the entry at 500 waits.
        l.release(100, 1_000);
        let s = l.summary();
        assert_eq!((s.samples, s.p50_ms, s.p99_ms, s.max_ms), (100, 49, 98, 99));
        assert_eq!(l.pending.len(), 1);
    }

    #[test]
    fn replay_holds_event_time_below_the_checkpoint() {
        let cp = Checkpoint {
            frontier: 60_000,
            read: vec![("ad_events".into(), 0, 7)],
        };
        let s = shared(Some(cp));
        let t0 = s.started;
        set(&s, 0, Some(100_000), t0);
        let idle = Duration::from_secs(10);
        assert_eq!(s.watermark(t0, 0, idle), Some(59_999));
        lock(&s.replaying).clear();
        assert_eq!(s.watermark(t0, 0, idle), Some(100_000));
    }

    #[test]
    fn checkpoint_marks_count_messages_read_below_the_frontier() {
        let s = shared(None);
        let key = (StreamKind::Orders, 2);
        lock(&s.marks).insert(key, VecDeque::from(vec![(10, 5), (20, 9), (30, 12)]));
        let cp = s.checkpoint(21);
        assert_eq!(cp.frontier, 21);
        assert_eq!(cp.read, vec![("orders".to_string(), 2, 9)]);
        // The mark carries over; later batches count once the frontier passes them.
        assert_eq!(s.checkpoint(25).read, vec![("orders".to_string(), 2, 9)]);
        assert_eq!(s.checkpoint(31).read, vec![("orders".to_string(), 2, 12)]);
    }
}
