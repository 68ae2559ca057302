//! Live mode: the driver for unbounded, partitioned sources (Kafka), on the threads of one
//! process or on a cluster of processes (timely's TCP cluster), running until it is told to
//! stop.
//!
//! # Coordination
//! Every worker drives its own input from its own partitions (dealt by global worker index,
//! see the source); nothing is shared in memory between workers. The global event-time
//! frontier is timely's progress: the smallest input time over all workers. Everything else
//! travels as [`Ctl`] messages through a small control dataflow (see [`crate::live_ctl`]).
//!
//! # Event time (spec §2)
//! A worker's input time is its watermark: the smallest `max ts − allowed lateness` over its
//! partitions that are **not caught up**; a caught-up partition (its next offset has reached
//! the high watermark the broker reported, [`LiveSource::caught_up`]) never holds it back. A
//! partition that is not caught up and has not delivered anything holds the input time where
//! it is. When all of a worker's partitions are caught up (or it has none), its input time
//! follows the wall clock: `max(W, now − allowed lateness)`. So once every partition of the
//! cluster is caught up, W follows the wall clock and every timer due before now fires — a
//! replay of old topics ends with the same tables as a live run. W never moves backwards.
//! W is at most the spec's "largest ts − lateness" while a partition is behind (a slower
//! partition's events are then not late), and equal to the spec's wall-clock rule once all
//! are caught up; versions differ from the spec's W only while partitions are behind, contents
//! never (a late event is applied exactly).
//!
//! # Delivery, checkpoints and restarts
//! Output changes go to the first worker of the process where they were computed (its
//! *leader*), which hands them to the process's sinks (`--output DIR` of each process: the
//! union of all processes' changelogs is the table). *Funnel* sinks (ClickHouse) take the
//! whole cluster's output on worker 0.
//!
//! Worker 0 issues *permits*: leaders hand their sinks only changes below the newest permit,
//! a frontier every worker has passed. Every `commit_interval` worker 0 starts checkpoint
//! round `k` at the current permit `F`: every worker sends its read marks for `F` (per
//! partition, how many messages it had read while its input time was below `F`); each leader,
//! once it has handed exactly everything below `F` and has every worker's marks, stores the
//! checkpoint (round, `F`, all marks) with a flush of its sinks (phase 1) and reports
//! `Prepared`; when every process is prepared, worker 0 flushes the funnel sinks with the same
//! checkpoint (phase 2) and broadcasts `Committed`; then every worker commits its partitions'
//! marks to the consumer group (monitoring, without waiting for the broker) and worker 0 may
//! start the next round. Both flushes run in the background ([`Sink::start_flush`]): the worker
//! goes on processing and handing over later changes, and reports `Prepared` / `Committed`
//! once every sink of the phase says its flush is complete (a synchronous ClickHouse round trip
//! or disk sync held the whole dataflow back every commit interval). So at any
//! crash, every phase-1 sink holds the committed round or the next one, and a phase-2 sink the
//! committed round: a resumable file sink keeps its previous durable point too.
//!
//! The dataflow's state lives in memory. A restarted cluster first agrees where it resumes
//! ([`crate::live_ctl::decide_resume`]: the newest round every sink can restore), cuts every
//! sink back to it, and replays every partition from the beginning to rebuild the state:
//! messages below the checkpoint's read marks are inserted as before (their dead letters are
//! not written again) and a worker's input time is held below `F` until its partitions have
//! been read up to their marks; later messages take effect at `F` or after. Sinks get only the
//! changes at or above `F`. The replayed run therefore has exactly the state the earlier one
//! had at `F` and continues every changelog without gaps or duplicates — also with another
//! number of workers or processes, since the marks are per partition. Topic retention must
//! cover the state retention.
//!
//! # Stopping
//! On the `shutdown` flag (SIGINT/SIGTERM of any process) or, with `exit_when_idle`, once
//! every worker reports all its partitions idle that long, every worker stops reading and
//! reports its end (largest `ts` read, rounded up to the tick, +1, or its input time if
//! larger); all advance to the largest end — so the effects of every consumed event are
//! released (spec §2) — and a last checkpoint round at that end is stored and committed.
//!
//! # Failures
//! An error on any worker is sent to every worker as [`Ctl::Abort`]: all of them stop with an
//! error (non-zero exit). A process that dies breaks its TCP connections: timely's
//! communication threads panic, and the binary turns any panic into an immediate exit with an
//! error, so the other processes stop within seconds (shared fate); restart all of them.

use crate::driver::{
    build_dataflow, deliver, drop_dataflows, join_reports, release_until, wall_ms, Built, Ingest,
    Ingested, RunOptions, RunReport,
};
use crate::live_ctl::{decide_resume, Checkpoint, Ctl, ResumeDecision, SinkPoints};
use crate::ops::OutputBuffer;
use crate::{to_time, Diff, EngineError, Program, Time};
use adflow_model::{Position, RawMessage, Sink, StreamKind};
use differential_dataflow::input::{Input, InputSession};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

/// One worker's share of a partitioned, unbounded input.
pub trait LiveSource {
    /// The partitions this worker reads, fixed for the whole run.
    fn partitions(&self) -> Vec<(StreamKind, i32)>;
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
    /// Whether everything the partition holds (as far as the source knows *now*) has been
    /// read. Only a caught-up partition stops holding event time back: one that cannot be read
    /// (broker unreachable) must answer `false`. Asked often (every loop of the worker, for
    /// every partition): it must answer from what the source already knows, and may ask the
    /// broker only rarely.
    fn caught_up(&mut self, stream: StreamKind, partition: i32) -> bool;
    /// The partition's consumer lag (messages not yet read: its high watermark minus the next
    /// offset to read) as far as the source knows without asking the broker; `None` when it
    /// does not know. Default: `None`.
    fn lag(&self, _stream: StreamKind, _partition: i32) -> Option<i64> {
        None
    }
}

/// Builds the live source of worker `index` of `peers` (global indexes in a cluster).
pub type LiveSourceFactory =
    Arc<dyn Fn(usize, usize) -> Result<Box<dyn LiveSource>, EngineError> + Send + Sync>;

/// Live-mode knobs (event-time settings come from [`RunOptions::settings`]).
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// How long a caught-up partition must have been quiet to count as idle for
    /// `exit_when_idle` (settings `kafka.idle_timeout`). Event time does not wait for it.
    pub idle_timeout: Duration,
    /// How often sinks are flushed with a checkpoint and offsets committed.
    pub commit_interval: Duration,
    /// Stop once every partition has been idle this long.
    pub exit_when_idle: Option<Duration>,
    /// Set (by a signal handler) to stop: in-flight work is finished, flushed and committed.
    pub shutdown: Arc<AtomicBool>,
    /// Measure the latency from each message's produce timestamp until the global frontier
    /// has passed its effects (benchmarks; costs a map entry per message).
    pub measure_latency: bool,
    /// Once stopping, fail (non-zero exit, every worker) when nothing has moved for this long:
    /// no frontier progress, nothing handed to a sink, no round prepared or committed. A stop
    /// that works through a backlog keeps moving and is never cut short; a stop that cannot
    /// finish (a lost condition, a sink that never comes back) ends with a clear error instead
    /// of a hang. Nothing is lost: the restart resumes from the last committed round.
    pub stop_stall: Duration,
}

/// The cluster this process belongs to.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Number of processes (1: no networking).
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// `host:port` of every process, in process order (unused for one process).
    pub addresses: Vec<String>,
    /// Whether the cluster has funnel sinks (ClickHouse), given to process 0. Must be the same
    /// on every process (the dataflow's shape depends on it).
    pub funnel: bool,
}

impl ClusterSpec {
    /// One process, no funnel.
    pub fn single() -> ClusterSpec {
        ClusterSpec {
            processes: 1,
            process: 0,
            addresses: Vec::new(),
            funnel: false,
        }
    }
}

/// The sinks of this process.
#[derive(Default)]
pub struct LiveSinks {
    /// Written by this process's first worker with the changes computed in this process
    /// (phase 1 of a checkpoint round).
    pub local: Vec<Box<dyn Sink>>,
    /// Process 0 only: written by worker 0 with the whole cluster's changes (phase 2).
    pub funnel: Vec<Box<dyn Sink>>,
}

/// Latency bookkeeping (see [`LiveOptions::measure_latency`]).
#[derive(Default)]
struct Latency {
    /// Insert time → produce timestamps of the messages inserted then, run-length encoded
    /// (`(produce ms, messages)`: a partition's messages come in produce order).
    pending: BTreeMap<Time, Vec<(i64, u64)>>,
    /// Histogram in milliseconds; the last bucket collects everything longer.
    histogram: Vec<u64>,
    /// Produce timestamp → read by the worker, in milliseconds (same buckets): the part of the
    /// latency spent before the dataflow (producer, broker, fetch, the consumer's queue).
    arrival: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

const LATENCY_BUCKETS: usize = 600_001;

impl Latency {
    /// Notes a message produced at `produced` (ms), read at `read_ms` and inserted at `at`.
    fn note(&mut self, at: Time, produced: i64, read_ms: Option<i64>) {
        if let Some(now) = read_ms {
            if self.arrival.is_empty() {
                self.arrival = vec![0; LATENCY_BUCKETS];
            }
            self.arrival[(now - produced).clamp(0, LATENCY_BUCKETS as i64 - 1) as usize] += 1;
        }
        let runs = self.pending.entry(at).or_default();
        match runs.last_mut() {
            Some((p, n)) if *p == produced => *n += 1,
            _ => runs.push((produced, 1)),
        }
    }

    /// The messages inserted below `frontier` reached the sinks at `now_ms`: into the
    /// freshness histogram of the metrics, and (`keep`) into this run's own histogram.
    fn release(&mut self, frontier: Time, now_ms: i64, keep: bool, freshness: &metrics::Histogram) {
        if keep && self.histogram.is_empty() {
            self.histogram = vec![0; LATENCY_BUCKETS];
        }
        let later = self.pending.split_off(&frontier);
        for (_, produced) in std::mem::replace(&mut self.pending, later) {
            for (p, n) in produced {
                let ms = (now_ms - p).clamp(0, LATENCY_BUCKETS as i64 - 1);
                freshness.record_many(ms as f64 / 1000.0, n as usize);
                if keep {
                    self.histogram[ms as usize] += n;
                }
            }
        }
    }

    fn merge(&mut self, o: &Latency) {
        if self.histogram.is_empty() {
            self.histogram = vec![0; LATENCY_BUCKETS];
        }
        for (a, b) in self.histogram.iter_mut().zip(&o.histogram) {
            *a += b;
        }
        if !o.arrival.is_empty() {
            if self.arrival.is_empty() {
                self.arrival = vec![0; LATENCY_BUCKETS];
            }
            for (a, b) in self.arrival.iter_mut().zip(&o.arrival) {
                *a += b;
            }
        }
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(o.last);
    }

    fn summary(&self) -> crate::driver::LatencySummary {
        let samples: u64 = self.histogram.iter().sum();
        let pct = |h: &[u64], q: f64| {
            let n: u64 = h.iter().sum();
            let target = ((n as f64) * q).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (ms, n) in h.iter().enumerate() {
                acc += n;
                if acc >= target {
                    return ms as u64;
                }
            }
            0
        };
        crate::driver::LatencySummary {
            samples,
            p50_ms: pct(&self.histogram, 0.50),
            p99_ms: pct(&self.histogram, 0.99),
            max_ms: self.histogram.iter().rposition(|&n| n > 0).unwrap_or(0) as u64,
            arrival_p50_ms: pct(&self.arrival, 0.50),
            arrival_p99_ms: pct(&self.arrival, 0.99),
            ingest_span_ms: match (self.first, self.last) {
                (Some(a), Some(b)) => b.saturating_duration_since(a).as_millis() as u64,
                _ => 0,
            },
        }
    }
}

/// What a worker knows about one of its partitions.
#[derive(Clone, Copy, Debug)]
struct Part {
    max_ts: Option<i64>,
    last: Instant,
    caught_up: bool,
}

/// The input time for watermark `w`: the largest `k·tick + 1 ≤ w`, so that the frontier moves a
/// whole tick at a time (one round of progress through the dataflow per tick, not one per poll)
/// and still passes version `k·tick` as soon as W does. Events are placed at their `ts` rounded
/// up to the tick, so every on-time event is released exactly when it would be with `w` itself.
fn tick_input_time(w: Time, tick: Time) -> Time {
    if w == 0 {
        return 0;
    }
    ((w - 1) / tick) * tick + 1
}

/// A worker's local watermark (see the module docs): `None` while it cannot advance.
fn local_watermark<'a>(
    parts: impl Iterator<Item = &'a Part>,
    lateness: i64,
    now_ms: i64,
) -> Option<i64> {
    let mut all_caught = true;
    let mut hold = i64::MAX;
    let mut max_seen: Option<i64> = None;
    for p in parts {
        if let Some(m) = p.max_ts {
            max_seen = Some(max_seen.map_or(m, |x| x.max(m)));
        }
        if !p.caught_up {
            all_caught = false;
            hold = hold.min(p.max_ts?.saturating_sub(lateness));
        }
    }
    if all_caught {
        let clock = now_ms.saturating_sub(lateness);
        Some(max_seen.map_or(clock, |m| m.saturating_sub(lateness).max(clock)))
    } else {
        Some(hold)
    }
}

/// Sends `msg` to every worker (its own batch, so messages arrive in the order sent). The
/// control input's time moves on with every message: only closing a time makes the exchange
/// channel push its buffered data out.
/// Starts every sink's flush with `checkpoint` (one phase of a checkpoint round).
fn start_flushes(sinks: &mut [Box<dyn Sink>], checkpoint: &str) -> Result<(), EngineError> {
    for s in sinks {
        s.set_checkpoint(checkpoint);
        s.start_flush()?;
    }
    Ok(())
}

/// Whether every sink's flush begun by [`start_flushes`] is complete (each is asked).
fn flushes_done(sinks: &mut [Box<dyn Sink>]) -> Result<bool, EngineError> {
    let mut done = true;
    for s in sinks {
        done &= s.flush_done()?;
    }
    Ok(done)
}

fn broadcast(ctl: &mut CtlInput, peers: usize, msg: Ctl) {
    send(ctl, 0..peers as u64, msg);
}

/// Sends `msg` to the workers `targets` (see [`broadcast`]).
fn send(ctl: &mut CtlInput, targets: impl Iterator<Item = u64>, msg: Ctl) {
    for t in targets {
        ctl.update((t, msg.clone()), 1);
    }
    let next = *ctl.time() + 1;
    ctl.advance_to(next);
    ctl.flush();
}

/// Whether a waiting worker must go back to its loop: a stop was requested here, or a message
/// arrived that other workers may be blocked on until this one answers (a stop, an end) or that
/// ends the run (a failure).
fn must_answer(inbox: &[Ctl], shutdown: &AtomicBool) -> bool {
    shutdown.load(Ordering::SeqCst)
        || inbox
            .iter()
            .any(|m| matches!(m, Ctl::Stop | Ctl::Final { .. } | Ctl::Abort { .. }))
}

/// The control input of a worker: (target worker, message).
type CtlInput = InputSession<Time, (u64, Ctl), Diff>;
/// What a stopping worker watches for progress: frontier, committed frontier, handed per
/// output group, rounds to prepare, round in flight.
type StopState = (Time, Time, Vec<i64>, usize, Option<u64>);
/// Read marks as sent in a [`Ctl::Marks`]: (stream, partition, mark).
type ReadList = Vec<(String, i32, i64)>;

/// The control dataflow: an input every worker sends to, and the messages received.
fn build_control(worker: &mut timely::worker::Worker) -> (CtlInput, Rc<RefCell<Vec<Ctl>>>, usize) {
    let inbox: Rc<RefCell<Vec<Ctl>>> = Rc::new(RefCell::new(Vec::new()));
    let id = worker.next_dataflow_index();
    let input = {
        let inbox = inbox.clone();
        worker.dataflow::<Time, _, _>(move |scope| {
            let (input, ctl) = scope.new_collection::<(u64, Ctl), Diff>();
            ctl.inner.sink(
                Exchange::new(|((target, _), _, _): &((u64, Ctl), Time, Diff)| *target),
                "Control",
                move |(input, _frontier)| {
                    input.for_each(|_, data: &mut Vec<((u64, Ctl), Time, Diff)>| {
                        let mut inbox = inbox.borrow_mut();
                        for ((_, m), _, r) in data.drain(..) {
                            if r > 0 {
                                inbox.push(m);
                            }
                        }
                    });
                },
            );
            input
        })
    };
    (input, inbox, id)
}

/// Runs `program` over live sources until `live.shutdown` is set or, with
/// `live.exit_when_idle`, until every partition has been idle that long. See the module docs.
pub fn run_live(
    program: Arc<dyn Program>,
    sources: LiveSourceFactory,
    sinks: LiveSinks,
    opts: RunOptions,
    live: LiveOptions,
    cluster: ClusterSpec,
) -> Result<RunReport, EngineError> {
    let threads = opts.workers.max(1);
    let config = if cluster.processes > 1 {
        if cluster.addresses.len() < cluster.processes {
            return Err(EngineError::Settings(format!(
                "the hostfile names {} processes, the cluster has {}",
                cluster.addresses.len(),
                cluster.processes
            )));
        }
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads,
                process: cluster.process,
                addresses: cluster.addresses[..cluster.processes].to_vec(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    } else {
        timely::Config::process(threads)
    };
    let sinks = Arc::new(Mutex::new(Some(sinks)));
    let latency = Arc::new(Mutex::new(Latency::default()));
    let shared_latency = latency.clone();
    let guards = timely::execute(config, move |worker| {
        let mine = if worker.index().is_multiple_of(threads) {
            lock(&sinks).take().unwrap_or_default()
        } else {
            LiveSinks::default()
        };
        live_worker(
            worker,
            program.as_ref(),
            &sources,
            mine,
            &opts,
            &live,
            &cluster,
            &shared_latency,
        )
    })
    .map_err(EngineError::Timely)?;
    let mut total = join_reports(guards.join())?;
    let lat = lock(&latency);
    if lat.first.is_some() {
        total.latency = Some(lat.summary());
    }
    Ok(total)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn kafka_pos(msg: &RawMessage) -> Option<(i32, i64)> {
    match &msg.position {
        Position::Kafka {
            partition, offset, ..
        } => Some((*partition, *offset)),
        _ => None,
    }
}

/// Where a worker is in stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Stopped reading, sent its end; waiting for every worker's.
    Stopping,
    /// Every input advances to `end`; waiting for the last checkpoint round at `end`.
    Ending(Time),
}

#[allow(clippy::too_many_arguments)]
fn live_worker(
    worker: &mut timely::worker::Worker,
    program: &dyn Program,
    sources: &LiveSourceFactory,
    sinks: LiveSinks,
    opts: &RunOptions,
    live: &LiveOptions,
    cluster: &ClusterSpec,
    latency: &Mutex<Latency>,
) -> Result<RunReport, EngineError> {
    let (mut ctl, inbox, ctl_id) = build_control(worker);
    let peers = worker.peers();
    let index = worker.index();
    let r = run_worker(
        worker, program, sources, sinks, opts, live, cluster, latency, &mut ctl, &inbox,
    );
    if let Err(e) = &r {
        if !matches!(e, EngineError::PeerFailed(..)) {
            tracing::error!(worker = index, error = %e, "worker failed; stopping the cluster");
            broadcast(
                &mut ctl,
                peers,
                Ctl::Abort {
                    worker: index as u64,
                    message: e.to_string(),
                },
            );
            for _ in 0..100 {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        }
    }
    worker.drop_dataflow(ctl_id);
    drop(ctl);
    if r.is_err() {
        drop_dataflows(worker);
    }
    r
}

/// This worker's read marks (per partition: input time of a batch, next offset after it).
#[derive(Default)]
struct Marks {
    history: HashMap<(StreamKind, i32), VecDeque<(Time, i64)>>,
    base: HashMap<(StreamKind, i32), i64>,
}

impl Marks {
    /// Per partition, the read mark of the last batch read at an input time below `f`.
    fn at(&mut self, mine: &[(StreamKind, i32)], f: Time) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for &key in mine {
            let mut g = self.base.get(&key).copied().unwrap_or(0);
            if let Some(q) = self.history.get_mut(&key) {
                while let Some(&(at, mark)) = q.front() {
                    if at >= f {
                        break;
                    }
                    g = g.max(mark);
                    q.pop_front();
                }
            }
            self.base.insert(key, g);
            out.push((key.0.name().to_string(), key.1, g));
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    worker: &mut timely::worker::Worker,
    program: &dyn Program,
    sources: &LiveSourceFactory,
    sinks: LiveSinks,
    opts: &RunOptions,
    live: &LiveOptions,
    cluster: &ClusterSpec,
    latency: &Mutex<Latency>,
    ctl: &mut InputSession<Time, (u64, Ctl), Diff>,
    inbox: &Rc<RefCell<Vec<Ctl>>>,
) -> Result<RunReport, EngineError> {
    let index = worker.index();
    let peers = worker.peers();
    let threads = opts.workers.max(1);
    let process = index / threads;
    let processes = cluster.processes.max(1);
    let leader = index.is_multiple_of(threads);
    let settings = opts.settings.clone();
    let lateness = settings.allowed_lateness.0.max(0);
    let tick = settings.tick.0.max(1) as Time;

    let n_local = sinks.local.len();
    let mut sinks: Vec<Box<dyn Sink>> = sinks.local.into_iter().chain(sinks.funnel).collect();

    // Start-up: agree where the cluster resumes.
    if leader {
        let mut report = Vec::new();
        for (i, s) in sinks.iter().enumerate() {
            if s.resumable() {
                report.push(SinkPoints {
                    name: s.name().to_string(),
                    points: s.resume_points(),
                    phase2: i >= n_local,
                });
            }
        }
        broadcast(
            ctl,
            peers,
            Ctl::Resume {
                process: process as u64,
                sinks: report,
            },
        );
    }
    let mut reports: BTreeMap<u64, Vec<SinkPoints>> = BTreeMap::new();
    let mut early: Vec<Ctl> = Vec::new();
    while reports.len() < processes {
        worker.step_or_park(Some(Duration::from_millis(1)));
        for m in inbox.borrow_mut().drain(..) {
            match m {
                Ctl::Resume { process, sinks } => {
                    reports.insert(process, sinks);
                }
                Ctl::Abort { worker, message } => {
                    return Err(EngineError::PeerFailed(worker, message))
                }
                other => early.push(other),
            }
        }
    }
    let ResumeDecision { checkpoint, text } =
        decide_resume(&reports).map_err(EngineError::Source)?;
    if leader {
        for s in sinks.iter_mut().filter(|s| s.resumable()) {
            s.resume_to(text.as_deref())?;
        }
    }
    let (resume_f, resume_marks, mut round) = match &checkpoint {
        Some(cp) => (to_time(cp.frontier), cp.marks(), cp.round),
        None => (0, HashMap::new(), 0),
    };
    let resume_below = checkpoint.as_ref().map_or(i64::MIN, |cp| cp.frontier);
    if index == 0 {
        match &checkpoint {
            Some(cp) => tracing::info!(
                round = cp.round,
                frontier = cp.frontier,
                partitions = cp.read.len(),
                "resuming from checkpoint"
            ),
            None => tracing::info!("starting fresh (no checkpoint)"),
        }
    }

    let mut source = sources(index, peers)?;
    let mine = source.partitions();
    let mut marks = Marks::default();
    let mut replaying: std::collections::HashSet<(StreamKind, i32)> = mine
        .iter()
        .copied()
        .filter(|k| resume_marks.get(k).is_some_and(|&g| g > 0))
        .collect();
    for &k in &mine {
        if let Some(&g) = resume_marks.get(&k) {
            marks.base.insert(k, g);
        }
    }
    let mut parts: BTreeMap<(StreamKind, i32), Part> = BTreeMap::new();
    let started = Instant::now();
    for &k in &mine {
        parts.insert(
            k,
            Part {
                max_ts: None,
                last: started,
                caught_up: false,
            },
        );
    }

    let routes: Vec<u64> = if processes > 1 && cluster.funnel {
        vec![(process * threads) as u64, 0]
    } else {
        vec![(process * threads) as u64]
    };
    let profile = crate::profile::register(worker);
    crate::telemetry::register_arrangements(worker);
    let Built {
        mut ev_in,
        mut dl_in,
        probe,
        buffers,
        dstats,
        dataflow_id,
        ..
    } = build_dataflow(worker, program, &settings, &routes)?;
    // The output buffers this worker hands to its sinks, each with the sinks it feeds.
    let groups: Vec<(Rc<RefCell<OutputBuffer>>, std::ops::Range<usize>)> = if !leader {
        Vec::new()
    } else if buffers.len() == 1 {
        vec![(buffers[0].clone(), 0..sinks.len())]
    } else if index == 0 {
        vec![
            (buffers[0].clone(), 0..n_local),
            (buffers[1].clone(), n_local..sinks.len()),
        ]
    } else {
        vec![(buffers[0].clone(), 0..n_local)]
    };
    let my_buffers: Vec<Rc<RefCell<OutputBuffer>>> = groups.iter().map(|g| g.0.clone()).collect();
    let mut handed: Vec<i64> = vec![i64::MIN; groups.len()];

    let mut report = RunReport::default();
    let mut lat = Latency::default();
    let freshness = crate::telemetry::freshness();
    crate::telemetry::expect_workers(threads);
    let mut meter = crate::telemetry::WorkerMeter::new();
    let watermark_meter = crate::telemetry::WatermarkMeter::new();
    let mut lag_gauges: HashMap<(StreamKind, i32), metrics::Gauge> = HashMap::new();
    let mut published = Instant::now();
    let mut history: VecDeque<Time> = VecDeque::new();
    let mut last_log = Instant::now();
    let mut max_read: Option<i64> = None;
    let mut phase = Phase::Running;
    // While stopping: what was last seen moving, and when (see `LiveOptions::stop_stall`).
    let mut stop_state: Option<StopState> = None;
    let mut stop_moved = Instant::now();

    // Checkpoint state.
    let mut permit: Time = 0;
    let mut round_at: BTreeMap<u64, Time> = BTreeMap::new();
    let mut round_marks: BTreeMap<u64, BTreeMap<u64, ReadList>> = BTreeMap::new();
    let mut my_round_marks: BTreeMap<u64, Vec<(StreamKind, i32, i64)>> = BTreeMap::new();
    let mut to_prepare: VecDeque<u64> = VecDeque::new();
    let mut prepared: BTreeMap<u64, std::collections::BTreeSet<u64>> = BTreeMap::new();
    let mut texts: BTreeMap<u64, String> = BTreeMap::new();
    let mut committed_at: Time = resume_f;
    // Worker 0 only.
    let mut in_flight: Option<u64> = None;
    // The round whose funnel-sink flush (phase 2) has been started and is not yet complete.
    let mut funnel_flushing: Option<u64> = None;
    // Leaders: the round whose local-sink flush (phase 1) has been started and is not yet
    // complete (it stays first in `to_prepare` until then).
    let mut local_flushing: Option<u64> = None;
    let mut last_round = Instant::now();
    let mut last_permit = Instant::now();
    let mut idle: BTreeMap<u64, Option<i64>> = BTreeMap::new();
    let mut finals: BTreeMap<u64, Time> = BTreeMap::new();
    let mut stop_sent = false;
    // Idle reports.
    let mut idle_sent: Option<Option<i64>> = None;
    let mut last_idle_sent = Instant::now() - Duration::from_secs(1);

    let mut pending_msgs = early;
    loop {
        // 1. Control messages.
        pending_msgs.extend(inbox.borrow_mut().drain(..));
        for m in std::mem::take(&mut pending_msgs) {
            match m {
                Ctl::Resume { .. } => {}
                Ctl::Abort { worker, message } => {
                    return Err(EngineError::PeerFailed(worker, message))
                }
                Ctl::Permit { upto, round: r } => {
                    permit = permit.max(upto);
                    if let Some(k) = r {
                        round_at.insert(k, upto);
                        let read = marks.at(&mine, upto);
                        my_round_marks.insert(
                            k,
                            read.iter()
                                .filter_map(|(s, p, g)| Some((StreamKind::from_name(s)?, *p, *g)))
                                .collect(),
                        );
                        // Only the leaders store checkpoints.
                        send(
                            ctl,
                            (0..processes).map(|p| (p * threads) as u64),
                            Ctl::Marks {
                                round: k,
                                worker: index as u64,
                                read,
                            },
                        );
                        if leader {
                            to_prepare.push_back(k);
                        }
                    }
                }
                Ctl::Marks {
                    round: k,
                    worker,
                    read,
                } => {
                    if leader {
                        round_marks.entry(k).or_default().insert(worker, read);
                    }
                }
                Ctl::Prepared { round: k, process } => {
                    prepared.entry(k).or_default().insert(process);
                }
                Ctl::Committed { round: k } => {
                    if let Some(&f) = round_at.get(&k) {
                        committed_at = committed_at.max(f);
                    }
                    if let Some(offsets) = my_round_marks.remove(&k) {
                        let offsets: Vec<_> = offsets.into_iter().filter(|o| o.2 > 0).collect();
                        if !offsets.is_empty() {
                            source.commit(&offsets)?;
                        }
                    }
                    my_round_marks.retain(|&r, _| r > k);
                    round_marks.retain(|&r, _| r > k);
                    prepared.retain(|&r, _| r > k);
                    texts.retain(|&r, _| r > k);
                    if index == 0 && in_flight == Some(k) {
                        in_flight = None;
                        last_round = Instant::now();
                    }
                    round = round.max(k);
                }
                Ctl::Idle { worker, since_ms } => {
                    idle.insert(worker, since_ms);
                }
                Ctl::Stop => {
                    if phase == Phase::Running {
                        phase = Phase::Stopping;
                    }
                }
                Ctl::Final { worker, end } => {
                    finals.insert(worker, end);
                }
            }
        }
        if live.shutdown.load(Ordering::SeqCst) && !stop_sent {
            stop_sent = true;
            tracing::info!(worker = index, "stop requested");
            broadcast(ctl, peers, Ctl::Stop);
        }
        if phase == Phase::Running && stop_sent {
            phase = Phase::Stopping;
        }

        // 2. Input.
        let cur = *ev_in.time();
        if phase == Phase::Running {
            let msgs = source.poll(opts.batch, Duration::from_millis(2))?;
            if !msgs.is_empty() {
                let ingest = Ingest::new(opts, cur);
                let mut seen: HashMap<(StreamKind, i32), (i64, i64)> = HashMap::new();
                let now = Instant::now();
                let read_ms = live.measure_latency.then(wall_ms);
                for (msg, produced_at) in &msgs {
                    let Some((partition, offset)) = kafka_pos(msg) else {
                        continue;
                    };
                    let key = (msg.stream, partition);
                    let old = resume_marks.get(&key).is_some_and(|&g| offset < g);
                    let floor = if old { 0 } else { resume_f };
                    let got = ingest.ingest(msg, &mut report, &mut ev_in, &mut dl_in, !old, floor);
                    if let Some(p) = produced_at {
                        let at = match got {
                            Ingested::Event { at, .. } | Ingested::Rejected { at } => at,
                        };
                        lat.note(at, *p, read_ms);
                    }
                    let e = seen.entry(key).or_insert((i64::MIN, offset + 1));
                    e.1 = e.1.max(offset + 1);
                    if let Ingested::Event { ts, .. } = got {
                        e.0 = e.0.max(ts);
                        max_read = Some(max_read.map_or(ts, |m| m.max(ts)));
                    }
                }
                if live.measure_latency {
                    lat.first.get_or_insert(now);
                    lat.last = Some(now);
                }
                for (&key, &(m, next)) in &seen {
                    let p = parts.entry(key).or_insert(Part {
                        max_ts: None,
                        last: now,
                        caught_up: false,
                    });
                    p.last = now;
                    if m > i64::MIN {
                        p.max_ts = Some(p.max_ts.map_or(m, |x| x.max(m)));
                    }
                    marks.history.entry(key).or_default().push_back((cur, next));
                    if replaying.contains(&key)
                        && resume_marks.get(&key).is_some_and(|&g| next >= g)
                    {
                        replaying.remove(&key);
                        tracing::info!(stream = %key.0, partition = key.1, "replay caught up");
                    }
                }
                history.push_back(*ev_in.time());
            }
            for (&(s, p), part) in parts.iter_mut() {
                part.caught_up = source.caught_up(s, p);
            }
            // The local watermark.
            if let Some(w) = local_watermark(parts.values(), lateness, wall_ms()) {
                let mut w = tick_input_time(to_time(w), tick);
                if !replaying.is_empty() {
                    w = w.min(resume_f.saturating_sub(1));
                }
                if w > *ev_in.time() {
                    ev_in.advance_to(w);
                    dl_in.advance_to(w);
                }
            }
            // Idleness, for exit_when_idle.
            if live.exit_when_idle.is_some() {
                let since = parts.values().all(|p| p.caught_up).then(|| {
                    let last = parts.values().map(|p| p.last).max().unwrap_or(started);
                    wall_ms() - last.elapsed().as_millis() as i64
                });
                let changed = idle_sent.is_none_or(|s| s.is_some() != since.is_some());
                if changed
                    || (since.is_some()
                        && last_idle_sent.elapsed() >= Duration::from_millis(250)
                        && idle_sent != Some(since))
                {
                    idle_sent = Some(since);
                    last_idle_sent = Instant::now();
                    broadcast(
                        ctl,
                        peers,
                        Ctl::Idle {
                            worker: index as u64,
                            since_ms: since,
                        },
                    );
                }
            }
        }
        if phase == Phase::Stopping && !finals.contains_key(&(index as u64)) {
            let end = max_read
                .map(|m| to_time(m).div_ceil(tick).saturating_mul(tick) + 1)
                .unwrap_or(0)
                .max(*ev_in.time());
            broadcast(
                ctl,
                peers,
                Ctl::Final {
                    worker: index as u64,
                    end,
                },
            );
            finals.insert(index as u64, end);
        }
        if phase == Phase::Stopping && finals.len() >= peers {
            let end = finals.values().copied().max().unwrap_or(0);
            tracing::info!(
                worker = index,
                end,
                "stopping at the end of the consumed events"
            );
            if end > *ev_in.time() {
                ev_in.advance_to(end);
                dl_in.advance_to(end);
            }
            phase = Phase::Ending(end);
        }
        ev_in.flush();
        dl_in.flush();
        // Back-pressure: at most a few batches ahead of the frontier. The wait gives way to a
        // stop or a failure anywhere: a stopping worker holds its input until every worker has
        // sent its end (so the frontier this worker waits for may only come after it has
        // answered), and a failed one never moves again.
        if phase == Phase::Running {
            while history.len() > 4 {
                let t = history[0];
                worker.step_or_park_while(Some(Duration::from_millis(1)), || {
                    probe.less_than(&t) && !must_answer(&inbox.borrow(), &live.shutdown)
                });
                if probe.less_than(&t) {
                    break;
                }
                history.pop_front();
            }
        } else {
            history.clear();
        }
        // While running, the source poll above is where the worker waits; once stopping, no
        // source is polled, and a spinning worker would take the cores from the sinks it waits
        // for (a ClickHouse server on the same machine).
        let park = if phase == Phase::Running {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        worker.step_or_park(Some(park));

        // 3. Sinks (leaders).
        let frontier = probe.with_frontier(|f| f.first().copied().unwrap_or(Time::MAX));
        if !lat.pending.is_empty() {
            lat.release(frontier, wall_ms(), live.measure_latency, &freshness);
        }
        if leader {
            let cap = permit.min(i64::MAX as Time) as i64;
            for (g, (buffer, range)) in groups.iter().enumerate() {
                deliver(
                    buffer,
                    &mut sinks[range.clone()],
                    resume_below,
                    cap,
                    &mut report,
                    &mut handed[g],
                )?;
            }
            // Phase 1 of the oldest round not yet prepared here. The local sinks' flush runs
            // in the background like phase 2's (started here, `Prepared` once complete).
            loop {
                if let Some(k) = local_flushing {
                    if !flushes_done(&mut sinks[..n_local])? {
                        break;
                    }
                    local_flushing = None;
                    to_prepare.pop_front();
                    broadcast(
                        ctl,
                        peers,
                        Ctl::Prepared {
                            round: k,
                            process: process as u64,
                        },
                    );
                }
                let Some(&k) = to_prepare.front() else {
                    break;
                };
                let f = round_at[&k] as i64;
                let local_handed = handed[0];
                let all_marks = round_marks.get(&k).is_some_and(|m| m.len() >= peers);
                if local_handed < f || !all_marks {
                    break;
                }
                let mut read: Vec<(String, i32, i64)> =
                    round_marks[&k].values().flatten().cloned().collect();
                read.sort();
                let text = Checkpoint {
                    round: k,
                    frontier: f,
                    processes: processes as u64,
                    read,
                }
                .to_text();
                start_flushes(&mut sinks[..n_local], &text)?;
                texts.insert(k, text);
                local_flushing = Some(k);
            }
        }
        if published.elapsed() >= crate::driver::PUBLISH_EVERY {
            published = Instant::now();
            let w = handed
                .first()
                .filter(|_| leader)
                .map(|&h| (&watermark_meter, h));
            crate::driver::publish(&mut meter, w, &mut report, &dstats.borrow());
            for &(s, p) in parts.keys() {
                if let Some(lag) = source.lag(s, p) {
                    lag_gauges
                        .entry((s, p))
                        .or_insert_with(|| crate::telemetry::consumer_lag(s, p))
                        .set(lag as f64);
                }
            }
            crate::telemetry::set_worker_ready(
                index % threads,
                !parts.is_empty() && parts.values().all(|p| p.caught_up),
            );
        }
        if index == 0 {
            // Phase 2 and the commit. The funnel sinks' flush runs in the background (a
            // ClickHouse round trip on a loaded machine takes up to a few hundred ms, and a
            // worker waiting for it held back the whole dataflow every commit interval): it is
            // started here, the worker goes on, and the round commits once every funnel sink
            // reports it complete.
            if let Some(k) = in_flight {
                let f = round_at.get(&k).map_or(i64::MAX, |&f| f as i64);
                let all = prepared.get(&k).is_some_and(|p| p.len() >= processes);
                let funnel_handed = *handed.last().unwrap_or(&i64::MIN);
                if funnel_flushing.is_none() && all && funnel_handed >= f {
                    // Not again: `texts` loses the round here, `in_flight` clears when our own
                    // Committed arrives.
                    if let Some(text) = texts.remove(&k) {
                        start_flushes(&mut sinks[n_local..], &text)?;
                        funnel_flushing = Some(k);
                    }
                }
                if funnel_flushing == Some(k) && flushes_done(&mut sinks[n_local..])? {
                    funnel_flushing = None;
                    broadcast(ctl, peers, Ctl::Committed { round: k });
                }
            }
            if in_flight.is_none() {
                let end = match phase {
                    Phase::Ending(end) => Some(end),
                    _ => None,
                };
                if let Some(end) = end {
                    if frontier >= end && committed_at < end {
                        round += 1;
                        in_flight = Some(round);
                        broadcast(
                            ctl,
                            peers,
                            Ctl::Permit {
                                upto: end,
                                round: Some(round),
                            },
                        );
                    }
                } else if frontier < Time::MAX {
                    if frontier >= resume_f
                        && frontier > committed_at
                        && last_round.elapsed() >= live.commit_interval
                    {
                        round += 1;
                        in_flight = Some(round);
                        broadcast(
                            ctl,
                            peers,
                            Ctl::Permit {
                                upto: frontier,
                                round: Some(round),
                            },
                        );
                        last_permit = Instant::now();
                    } else if frontier > permit && last_permit.elapsed() >= Duration::from_millis(2)
                    {
                        broadcast(
                            ctl,
                            peers,
                            Ctl::Permit {
                                upto: frontier,
                                round: None,
                            },
                        );
                        last_permit = Instant::now();
                    }
                }
            }
            // exit_when_idle: every worker idle long enough.
            if let (Some(d), Phase::Running, false) = (live.exit_when_idle, phase, stop_sent) {
                let now = wall_ms();
                let all = idle.len() >= peers
                    && idle
                        .values()
                        .all(|s| s.is_some_and(|s| now - s >= d.as_millis() as i64));
                if all {
                    tracing::info!("every partition idle; stopping");
                    stop_sent = true;
                    broadcast(ctl, peers, Ctl::Stop);
                    phase = Phase::Stopping;
                }
            }
            if last_log.elapsed() >= opts.progress_every {
                last_log = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(
                    messages = report.messages,
                    rate = (report.messages as f64 / secs) as u64,
                    input_time = *ev_in.time(),
                    frontier,
                    committed = committed_at,
                    dead_letters = report.dead_letters,
                    "progress"
                );
            }
        }
        if phase != Phase::Running {
            let now_state = (
                frontier,
                committed_at,
                handed.clone(),
                to_prepare.len(),
                in_flight,
            );
            // Waiting for a sink's flush is a sink call, not a stall (as the blocking call it
            // replaces was): a sink that retries keeps the stop waiting for it.
            if stop_state.as_ref() != Some(&now_state)
                || funnel_flushing.is_some()
                || local_flushing.is_some()
            {
                stop_state = Some(now_state);
                stop_moved = Instant::now();
            } else if stop_moved.elapsed() >= live.stop_stall {
                return Err(EngineError::Source(format!(
                    "the stop made no progress for {:?} (frontier {frontier}, end {:?}, committed {committed_at}, permit {permit}, handed {handed:?}, round in flight {in_flight:?}, rounds to prepare {}); exiting without the final checkpoint: a restart resumes from the last committed one",
                    live.stop_stall,
                    match phase {
                        Phase::Ending(end) => Some(end),
                        _ => None,
                    },
                    to_prepare.len(),
                )));
            }
        }
        if let Phase::Ending(end) = phase {
            if committed_at >= end {
                break;
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(
                    worker = index,
                    end,
                    frontier,
                    committed = committed_at,
                    permit,
                    handed = ?handed,
                    round_in_flight = ?in_flight,
                    to_prepare = to_prepare.len(),
                    "stopping: waiting for the final checkpoint"
                );
            }
        }
    }
    // Let the last messages (the final Committed on other workers) go out.
    if index == 0 {
        for _ in 0..10 {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }
    if let Some(p) = profile {
        p.report(worker);
    }
    let stop = match phase {
        Phase::Ending(end) => end,
        _ => *ev_in.time(),
    };
    release_until(
        worker,
        &mut ev_in,
        &mut dl_in,
        &probe,
        &my_buffers,
        stop,
        &|| false,
    );
    let w = handed
        .first()
        .filter(|_| leader)
        .map(|&h| (&watermark_meter, h));
    crate::driver::publish(&mut meter, w, &mut report, &dstats.borrow());
    report.final_watermark = Some(stop as i64);
    lat.release(Time::MAX, wall_ms(), live.measure_latency, &freshness);
    if live.measure_latency {
        lock(latency).merge(&lat);
    }
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

    fn part(max_ts: Option<i64>, caught_up: bool) -> Part {
        Part {
            max_ts,
            last: Instant::now(),
            caught_up,
        }
    }

    #[test]
    fn input_time_moves_a_tick_at_a_time_and_never_past_w() {
        assert_eq!(tick_input_time(0, 100), 0);
        assert_eq!(tick_input_time(1, 100), 1);
        assert_eq!(tick_input_time(100, 100), 1);
        // W just past version 100: it is released at once.
        assert_eq!(tick_input_time(101, 100), 101);
        assert_eq!(tick_input_time(250, 100), 201);
        assert_eq!(tick_input_time(301, 100), 301);
        for w in 1..1000 {
            let t = tick_input_time(w, 100);
            assert!(
                t <= w && (t - 1).is_multiple_of(100) && w - t < 100,
                "w {w} -> {t}"
            );
        }
        // A 1 ms tick leaves W as it is.
        assert_eq!(tick_input_time(12_345, 1), 12_345);
    }

    #[test]
    fn caught_up_partitions_never_hold_the_watermark() {
        // Two partitions behind: the smaller one holds.
        let p = [part(Some(100_000), false), part(Some(50_000), false)];
        assert_eq!(local_watermark(p.iter(), 5_000, 1_000_000), Some(45_000));
        // One behind without data yet: cannot advance.
        let p = [part(Some(100_000), false), part(None, false)];
        assert_eq!(local_watermark(p.iter(), 5_000, 1_000_000), None);
        // The smaller one caught up: only the one behind counts.
        let p = [part(Some(100_000), false), part(Some(50_000), true)];
        assert_eq!(local_watermark(p.iter(), 5_000, 1_000_000), Some(95_000));
        // All caught up: the wall clock.
        let p = [part(Some(100_000), true), part(None, true)];
        assert_eq!(local_watermark(p.iter(), 5_000, 1_000_000), Some(995_000));
        // ... unless events are ahead of it.
        assert_eq!(local_watermark(p.iter(), 5_000, 50_000), Some(95_000));
        // No partitions: the wall clock.
        assert_eq!(local_watermark([].iter(), 200, 10_000), Some(9_800));
    }

    /// A source for one worker: `batches` of impressions at `ts`, then nothing; never caught up.
    struct Scripted {
        stream: StreamKind,
        partition: i32,
        batches: usize,
        ts: i64,
        next: i64,
        /// Fails its poll from this instant on.
        fail_at: Option<Instant>,
    }

    impl LiveSource for Scripted {
        fn partitions(&self) -> Vec<(StreamKind, i32)> {
            vec![(self.stream, self.partition)]
        }
        fn poll(
            &mut self,
            _max: usize,
            wait: Duration,
        ) -> Result<Vec<(RawMessage, Option<i64>)>, EngineError> {
            if self.fail_at.is_some_and(|t| t.elapsed() > Duration::ZERO) {
                return Err(EngineError::Source("the broker went away".into()));
            }
            if self.batches == 0 {
                std::thread::sleep(wait);
                return Ok(Vec::new());
            }
            self.batches -= 1;
            let offset = self.next;
            self.next += 1;
            // Each batch a tick later: the worker's input time moves with every batch.
            let ts = self.ts + offset * 1_000;
            let payload = format!(
                r#"{{"type":"impression","event_id":"e{offset}","ts":{ts},"campaign_id":"c","channel":"douyin","device_id":"d"}}"#
            );
            Ok(vec![(
                RawMessage {
                    stream: self.stream,
                    position: Position::Kafka {
                        topic: "ad_events".into(),
                        partition: self.partition,
                        offset,
                    },
                    payload: payload.into_bytes(),
                },
                None,
            )])
        }
        fn commit(&mut self, _offsets: &[(StreamKind, i32, i64)]) -> Result<(), EngineError> {
            Ok(())
        }
        fn caught_up(&mut self, _stream: StreamKind, _partition: i32) -> bool {
            false
        }
    }

    struct Nothing;

    impl Program for Nothing {
        fn build<'s>(
            &self,
            _events: crate::Col<'s, adflow_model::event::Event>,
            _settings: &adflow_model::config::Settings,
        ) -> Result<Vec<crate::Col<'s, crate::OutRec>>, String> {
            Ok(Vec::new())
        }
    }

    /// Runs two workers: worker 0 reads 50 batches, a second apart in event time, worker 1's
    /// partition never delivers (so it holds the frontier and worker 0's back-pressure waits);
    /// worker 1 fails at `fail_at`, or the run is told to stop after 500 ms. Returns the run's
    /// result, or `None` if it did not end within 20 s.
    fn run_held_back(fail_at: Option<Instant>) -> Option<Result<u64, EngineError>> {
        run_scripted(Arc::new(Nothing), fail_at, Duration::from_secs(60))
    }

    /// [`run_held_back`] with another program and stall timeout.
    fn run_scripted(
        program: Arc<dyn Program>,
        fail_at: Option<Instant>,
        stop_stall: Duration,
    ) -> Option<Result<u64, EngineError>> {
        let shutdown = Arc::new(AtomicBool::new(false));
        let sources: LiveSourceFactory = Arc::new(move |index, _peers| {
            Ok(Box::new(Scripted {
                stream: StreamKind::AdEvents,
                partition: index as i32,
                batches: if index == 0 { 50 } else { 0 },
                ts: 1_700_000_000_000,
                next: 0,
                fail_at: if index == 1 { fail_at } else { None },
            }) as Box<dyn LiveSource>)
        });
        let settings = adflow_model::config::Settings {
            state_retention: adflow_model::config::Millis(3_650 * 86_400_000),
            ..Default::default()
        };
        let opts = RunOptions::new(2, settings).unwrap();
        let live = LiveOptions {
            idle_timeout: Duration::from_secs(1),
            commit_interval: Duration::from_millis(100),
            exit_when_idle: None,
            shutdown: shutdown.clone(),
            measure_latency: false,
            stop_stall,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = run_live(
                program,
                sources,
                LiveSinks::default(),
                opts,
                live,
                ClusterSpec::single(),
            );
            let _ = tx.send(r.map(|r| r.messages));
        });
        if fail_at.is_none() {
            std::thread::sleep(Duration::from_millis(500));
            shutdown.store(true, Ordering::SeqCst);
        }
        rx.recv_timeout(Duration::from_secs(20)).ok()
    }

    /// A program whose output never makes progress: an operator holds its first capability.
    struct Stuck;

    impl Program for Stuck {
        fn build<'s>(
            &self,
            events: crate::Col<'s, adflow_model::event::Event>,
            _settings: &adflow_model::config::Settings,
        ) -> Result<Vec<crate::Col<'s, crate::OutRec>>, String> {
            use differential_dataflow::AsCollection;
            type Cb = timely::container::CapacityContainerBuilder<Vec<(crate::OutRec, Time, Diff)>>;
            let held = timely::dataflow::operators::generic::operator::source::<_, Cb, _, _>(
                events.scope(),
                "Hold",
                |cap, _info| {
                    let cap = Some(cap);
                    move |_output| {
                        let _ = &cap;
                    }
                },
            );
            Ok(vec![held.as_collection()])
        }
    }

    /// A stop that cannot finish (the frontier never reaches the end) ends with an error after
    /// the stall timeout instead of waiting forever.
    #[test]
    fn a_stop_that_makes_no_progress_fails_after_the_stall_timeout() {
        let r = run_scripted(Arc::new(Stuck), None, Duration::from_secs(1))
            .expect("the stalled stop did not end within 20 s");
        let e = r.expect_err("a stalled stop must fail the run");
        assert!(e.to_string().contains("the stop made no progress"), "{e}");
    }

    /// A stop ends the run while worker 0 waits for the frontier worker 1 holds back: worker 1
    /// stops and waits for worker 0's end, which worker 0 must send from its wait.
    #[test]
    fn a_stop_ends_the_run_while_a_worker_waits_for_the_frontier() {
        let r = run_held_back(None).expect("the run did not stop within 20 s of the stop request");
        // It stopped while waiting: back-pressure held worker 0 a few batches ahead.
        let read = r.unwrap();
        assert!((5..50).contains(&read), "read {read} messages");
    }

    /// A worker that fails while another waits for the frontier stops the run with its error.
    #[test]
    fn a_failure_ends_the_run_while_a_worker_waits_for_the_frontier() {
        let r = run_held_back(Some(Instant::now() + Duration::from_millis(500)))
            .expect("the run did not end within 20 s of a worker's failure");
        let e = r.expect_err("a failed worker must fail the run");
        assert!(e.to_string().contains("the broker went away"), "{e}");
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latency::default();
        for i in 0..100 {
            l.note(i as Time, 1_000 - i as i64, Some(1_000));
        }
        // Runs of equal produce times are kept as one entry with a count.
        l.note(500, 0, None);
        l.note(500, 0, None);
        assert_eq!(l.pending[&500], vec![(0, 2)]);
        // Released at wall clock 1_000: latencies 0..=99 ms; the entry at 500 waits.
        l.release(100, 1_000, true, &metrics::Histogram::noop());
        let s = l.summary();
        assert_eq!((s.samples, s.p50_ms, s.p99_ms, s.max_ms), (100, 49, 98, 99));
        // Read at 1_000 as well: the whole latency was spent before the dataflow.
        assert_eq!((s.arrival_p50_ms, s.arrival_p99_ms), (49, 98));
        assert_eq!(l.pending.len(), 1);
        l.release(Time::MAX, 1_000, true, &metrics::Histogram::noop());
        assert_eq!(l.summary().samples, 102);
    }

    #[test]
    fn read_marks_count_messages_read_below_the_frontier() {
        let mut m = Marks::default();
        let key = (StreamKind::Orders, 2);
        m.history
            .insert(key, VecDeque::from(vec![(10, 5), (20, 9), (30, 12)]));
        assert_eq!(m.at(&[key], 21), vec![("orders".to_string(), 2, 9)]);
        // The mark carries over; later batches count once the frontier passes them.
        assert_eq!(m.at(&[key], 25), vec![("orders".to_string(), 2, 9)]);
        assert_eq!(m.at(&[key], 31), vec![("orders".to_string(), 2, 12)]);
        // A partition never read: 0, or the mark resumed from.
        let other = (StreamKind::Logistics, 0);
        assert_eq!(m.at(&[other], 31), vec![("logistics".to_string(), 0, 0)]);
        m.base.insert(other, 7);
        assert_eq!(m.at(&[other], 40), vec![("logistics".to_string(), 0, 7)]);
    }
}
