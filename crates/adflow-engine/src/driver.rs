//! The worker driver: reads sources, parses and validates, advances the watermark, steps the
//! dataflow, and hands released output changes to the sinks.

use crate::ops::{dedup, output_stage, DedupStats, OutputBuffer};
use crate::{to_time, Diff, EngineError, Freeze, OutRec, Program, Time};
use adflow_model::config::Settings;
use adflow_model::event::{parse_event, raw_excerpt, Event, ParseConfig};
use adflow_model::output::DeadLetterRow;
use adflow_model::{OutputRow, RawMessage, Sink, Table};
use differential_dataflow::input::{Input, InputSession};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::ProbeHandle;

/// What a source has for the worker right now.
pub enum Poll {
    /// Some messages (possibly none yet).
    Messages(Vec<RawMessage>),
    /// Nothing now; more may come later (live sources).
    Idle,
    /// The source is exhausted (bounded sources).
    Finished,
}

/// A per-worker input source.
pub trait Source {
    /// Returns up to `max` messages.
    fn poll(&mut self, max: usize) -> Result<Poll, EngineError>;
}

/// Builds the source of worker `index` of `peers`.
pub type SourceFactory =
    Arc<dyn Fn(usize, usize) -> Result<Box<dyn Source>, EngineError> + Send + Sync>;

/// The sinks, handed to worker 0 when it starts.
type SharedSinks = Arc<Mutex<Option<Vec<Box<dyn Sink>>>>>;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads in this process.
    pub workers: usize,
    pub settings: Settings,
    pub parse: ParseConfig,
    /// Messages read per step of a worker.
    pub batch: usize,
    /// Interval of progress log lines.
    pub progress_every: Duration,
    /// File mode: set (by a signal handler) to stop reading; the run then ends with
    /// [`EngineError::Interrupted`] after the sinks got what was released so far.
    pub interrupt: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl RunOptions {
    /// Options for `workers` threads with the given settings (phone secret from the
    /// environment variable the settings name, or the built-in development secret).
    pub fn new(workers: usize, settings: Settings) -> Result<Self, EngineError> {
        settings
            .validate()
            .map_err(|e| EngineError::Settings(e.to_string()))?;
        let zone = settings
            .zone_offset_minutes()
            .map_err(|e| EngineError::Settings(e.to_string()))?;
        let mut parse = ParseConfig {
            zone_offset_minutes: zone,
            ..ParseConfig::default()
        };
        match std::env::var(&settings.phone_secret_env) {
            Ok(s) if !s.is_empty() => parse.phone_secret = s.into_bytes(),
            _ => tracing::warn!(
                var = %settings.phone_secret_env,
                "phone HMAC secret not set; using the built-in development secret"
            ),
        }
        Ok(RunOptions {
            workers: workers.max(1),
            settings,
            parse,
            batch: 16_384,
            progress_every: Duration::from_secs(2),
            interrupt: None,
        })
    }
}

/// Counters of one run, summed over workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Messages read.
    pub messages: u64,
    /// Valid events applied (before dedup).
    pub events: u64,
    /// Events with `ts` below the watermark when they arrived (applied anyway).
    pub late: u64,
    /// Events ignored as duplicates.
    pub duplicates: u64,
    /// Messages rejected to `dead_letters` (malformed or older than the state retention).
    pub dead_letters: u64,
    /// Output changes handed to the sinks.
    pub changes: u64,
    /// The final watermark (file mode: the largest event time), if any event was seen.
    pub final_watermark: Option<i64>,
    /// Live mode with latency measurement: from each message's produce timestamp to the
    /// moment its effects were handed to the sinks.
    pub latency: Option<LatencySummary>,
    /// The input counts per stream, in [`adflow_model::StreamKind::index`] order (their sums
    /// are the totals above).
    pub by_stream: [crate::telemetry::StreamCounts; 4],
    /// Output changes handed to the first sink per table, in [`adflow_model::Table::ALL`]
    /// order (their sum is `changes`).
    pub changes_by_table: [u64; adflow_model::Table::ALL.len()],
}

/// Latency percentiles of a live run (milliseconds), and the span between the first and the
/// last message read (for the consumed rate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Produce timestamp → read by a worker (before the dataflow).
    pub arrival_p50_ms: u64,
    pub arrival_p99_ms: u64,
    pub ingest_span_ms: u64,
}

impl RunReport {
    pub(crate) fn add(&mut self, o: &RunReport) {
        self.messages += o.messages;
        self.events += o.events;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.dead_letters += o.dead_letters;
        self.changes += o.changes;
        for (a, b) in self.by_stream.iter_mut().zip(&o.by_stream) {
            a.add(b);
        }
        for (a, b) in self.changes_by_table.iter_mut().zip(&o.changes_by_table) {
            *a += b;
        }
        self.final_watermark = self.final_watermark.max(o.final_watermark);
        if o.latency.is_some() {
            self.latency = o.latency.clone();
        }
    }
}

/// Copies a worker's dedup counts into its report (totals and per stream).
pub(crate) fn take_dedup_stats(report: &mut RunReport, d: &DedupStats) {
    report.duplicates = d.duplicates;
    for (s, &n) in report.by_stream.iter_mut().zip(&d.duplicates_by_stream) {
        s.duplicates = n;
    }
}

/// How often a worker publishes its counts to the metrics recorder.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Publishes a worker's counts (and, on the worker that hands changes to the sinks, the
/// watermark: the frontier handed to them) to the metrics recorder.
pub(crate) fn publish(
    meter: &mut crate::telemetry::WorkerMeter,
    watermark: Option<(&crate::telemetry::WatermarkMeter, i64)>,
    report: &mut RunReport,
    dstats: &DedupStats,
) {
    take_dedup_stats(report, dstats);
    meter.publish(report, dstats.tracked);
    if let Some((w, handed)) = watermark {
        if handed > i64::MIN && handed < i64::MAX {
            w.set(handed, wall_ms());
        }
    }
}

fn dead_letter(msg: &RawMessage, reason: String) -> OutputRow {
    OutputRow::DeadLetter(DeadLetterRow {
        stream: msg.stream.name().to_string(),
        position: msg.position.to_string(),
        raw: raw_excerpt(&msg.payload),
        reason,
        seen_ts: wall_ms(),
    })
}

/// The wall clock, epoch ms.
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What happened to one input message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ingested {
    /// A valid event with event time `ts`, inserted at dataflow time `at`.
    Event { ts: i64, at: Time },
    /// Rejected (malformed, or older than the state retention); a dead letter was written at
    /// dataflow time `at` unless suppressed.
    Rejected { at: Time },
}

/// Parsing, validation and insertion of input messages at input time `cur`.
pub(crate) struct Ingest<'a> {
    pub opts: &'a RunOptions,
    pub retention: i64,
    pub tick: Time,
    pub cur: Time,
}

impl Ingest<'_> {
    pub(crate) fn new(opts: &RunOptions, cur: Time) -> Ingest<'_> {
        Ingest {
            opts,
            retention: opts.settings.state_retention.0,
            tick: opts.settings.tick.0.max(1) as Time,
            cur,
        }
    }
}

impl Ingest<'_> {
    /// Parses `msg` and inserts the event at `max(ceil_tick(ts), cur, floor)`, or a dead letter
    /// at `max(cur, floor)` (when `dead_letters` is false the rejection is only counted: its
    /// dead letter was written by an earlier run).
    pub(crate) fn ingest(
        &self,
        msg: &RawMessage,
        report: &mut RunReport,
        ev_in: &mut InputSession<Time, Event, Diff>,
        dl_in: &mut InputSession<Time, OutRec, Diff>,
        dead_letters: bool,
        floor: Time,
    ) -> Ingested {
        let cur = self.cur;
        report.messages += 1;
        let by_stream = &mut report.by_stream[msg.stream.index()];
        by_stream.messages += 1;
        let reason = match parse_event(msg.stream, &msg.payload, &self.opts.parse) {
            Ok(e) if e.ts.saturating_add(self.retention) <= cur as i64 && cur > 0 => format!(
                "too late: ts {} is older than the watermark {} minus the state retention",
                e.ts, cur
            ),
            Ok(e) => {
                report.events += 1;
                by_stream.events += 1;
                let t = to_time(e.ts).div_ceil(self.tick).saturating_mul(self.tick);
                if to_time(e.ts) < cur {
                    report.late += 1;
                    by_stream.late += 1;
                }
                let ts = e.ts;
                let at = t.max(cur).max(floor);
                ev_in.update_at(e, at, 1);
                return Ingested::Event { ts, at };
            }
            Err(reason) => reason,
        };
        report.dead_letters += 1;
        report.by_stream[msg.stream.index()].dead_letters += 1;
        let at = cur.max(floor);
        if dead_letters {
            dl_in.update_at((dead_letter(msg, reason), Freeze::NEVER), at, 1);
        }
        Ingested::Rejected { at }
    }
}

/// Hands the changes the output stage released below `cap`, with the frontier
/// `min(released frontier, cap)`, to every sink: when there are changes or the frontier moved
/// past `handed` (so sinks can report it durable). Changes with a version below `resume_below`
/// were stored by the run the sinks resumed from and are dropped; nothing is handed while the
/// frontier is below it. `report.changes` counts what the first sink got.
pub(crate) fn deliver(
    buffer: &Rc<RefCell<OutputBuffer>>,
    sinks: &mut [Box<dyn Sink>],
    resume_below: i64,
    cap: i64,
    report: &mut RunReport,
    handed: &mut i64,
) -> Result<(), EngineError> {
    let (changes, frontier) = {
        let mut b = buffer.borrow_mut();
        let frontier = (b.frontier.min(i64::MAX as Time) as i64).min(cap);
        let n = b.changes.partition_point(|c| c.version < frontier);
        if n == 0 && frontier <= *handed {
            return Ok(());
        }
        let rest = b.changes.split_off(n);
        (std::mem::replace(&mut b.changes, rest), frontier)
    };
    *handed = (*handed).max(frontier);
    if frontier < resume_below {
        return Ok(());
    }
    let mut changes = changes;
    if resume_below > i64::MIN {
        changes.retain(|c| c.version >= resume_below);
    }
    report.changes += changes.len() as u64;
    for c in &changes {
        report.changes_by_table[c.row.table() as usize] += 1;
    }
    // A sink that takes only some tables gets a copy of just those; the last sink that takes
    // every table gets the changes themselves (after the others), any other a full copy.
    let full: Vec<bool> = sinks
        .iter()
        .map(|s| Table::ALL.iter().all(|&t| s.wants(t)))
        .collect();
    let owner = full.iter().rposition(|&f| f);
    for (i, s) in sinks.iter_mut().enumerate() {
        if Some(i) == owner {
            continue;
        }
        let batch = if full[i] {
            changes.clone()
        } else {
            changes
                .iter()
                .filter(|c| s.wants(c.row.table()))
                .cloned()
                .collect()
        };
        s.write(batch, frontier)?;
    }
    if let Some(i) = owner {
        sinks[i].write(changes, frontier)?;
    }
    Ok(())
}

/// Moves both inputs to `t` (unless they are there already) and steps `worker` until the
/// dataflow has processed everything below `t` and the output stages of this worker (`buffers`:
/// none on a worker that has no sinks) have released it (ready for [`deliver`]), or until
/// `give_up` says so (another worker failed).
pub(crate) fn release_until(
    worker: &mut timely::worker::Worker,
    ev_in: &mut InputSession<Time, Event, Diff>,
    dl_in: &mut InputSession<Time, OutRec, Diff>,
    probe: &ProbeHandle<Time>,
    buffers: &[Rc<RefCell<OutputBuffer>>],
    t: Time,
    give_up: &dyn Fn() -> bool,
) {
    if t > *ev_in.time() {
        ev_in.advance_to(t);
        dl_in.advance_to(t);
    }
    ev_in.flush();
    dl_in.flush();
    worker.step_or_park_while(Some(Duration::from_millis(1)), || {
        probe.less_than(&t) && !give_up()
    });
    while buffers.iter().any(|b| b.borrow().frontier < t) && !give_up() {
        worker.step();
    }
}

/// Runs `program` over bounded sources until they are exhausted, writing every output change
/// to `sinks`. Event time ends at the largest `ts` seen: timers due later do not fire.
pub fn run(
    program: Arc<dyn Program>,
    sources: SourceFactory,
    sinks: Vec<Box<dyn Sink>>,
    opts: RunOptions,
) -> Result<RunReport, EngineError> {
    let sinks: SharedSinks = Arc::new(Mutex::new(Some(sinks)));
    let config = timely::Config::process(opts.workers);
    // The first failure of any worker (file mode runs in one process): every other worker's
    // wait gives way to it, so the run ends with that error instead of waiting for a worker
    // that is gone.
    let failed: Failure = Arc::new(Mutex::new(None));
    let guards = timely::execute(config, move |worker| {
        let r = run_worker(worker, program.as_ref(), &sources, &sinks, &opts, &failed);
        if let Err(e) = &r {
            if !matches!(e, EngineError::PeerFailed(..)) {
                tracing::error!(worker = worker.index(), error = %e, "worker failed; stopping the run");
                let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert((worker.index() as u64, e.to_string()));
            }
            drop_dataflows(worker);
        }
        r
    })
    .map_err(EngineError::Timely)?;
    join_reports(guards.join())
}

/// After a worker failed: timely keeps stepping a worker's dataflows until they complete, which
/// a failed run's never do (its operators hold capabilities); drop them, so the thread ends.
pub(crate) fn drop_dataflows(worker: &mut timely::worker::Worker) {
    for id in worker.installed_dataflows() {
        worker.drop_dataflow(id);
    }
}

/// Sums the workers' reports (from joining their guards); on failure the first error of a worker that
/// failed by itself (over the "another worker failed" of the others).
pub(crate) fn join_reports(
    results: Vec<Result<Result<RunReport, EngineError>, String>>,
) -> Result<RunReport, EngineError> {
    let mut total = RunReport::default();
    let mut first_err = None;
    for r in results {
        match r.map_err(EngineError::Timely) {
            Ok(Ok(r)) => total.add(&r),
            Ok(Err(e)) | Err(e) => {
                if matches!(first_err, None | Some(EngineError::PeerFailed(..))) {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// The first failure of a file-mode run: (worker, error).
type Failure = Arc<Mutex<Option<(u64, String)>>>;

/// `Err(PeerFailed)` once another worker of the run has failed.
fn check_peers(failed: &Failure) -> Result<(), EngineError> {
    match &*failed.lock().unwrap_or_else(|p| p.into_inner()) {
        Some((w, m)) => Err(EngineError::PeerFailed(*w, m.clone())),
        None => Ok(()),
    }
}

/// Whether another worker of the run has failed (cheap enough for a wait's condition).
fn peer_failed(failed: &Failure) -> bool {
    failed.lock().map(|f| f.is_some()).unwrap_or(true)
}

/// The handles of a built dataflow.
pub(crate) struct Built {
    pub ev_in: InputSession<Time, Event, Diff>,
    pub dl_in: InputSession<Time, OutRec, Diff>,
    pub ctl_in: InputSession<Time, (u64, Time), Diff>,
    pub probe: ProbeHandle<Time>,
    /// One output buffer per route given to [`build_dataflow`], filled on the route's target.
    pub buffers: Vec<Rc<RefCell<OutputBuffer>>>,
    pub limit: Rc<RefCell<Time>>,
    pub dstats: Rc<RefCell<DedupStats>>,
    pub global_max: Rc<Cell<Option<Time>>>,
    pub ctl_done: Rc<Cell<bool>>,
    pub dataflow_id: usize,
}

/// Builds the engine's dataflow around `program` on `worker`: event input → dedup → program →
/// output stage (worker 0), a dead-letter input, and the control input that agrees on the end
/// of event time.
pub(crate) fn build_dataflow(
    worker: &mut timely::worker::Worker,
    program: &dyn Program,
    settings: &Settings,
    routes: &[u64],
) -> Result<Built, EngineError> {
    let horizon = settings.dedup_horizon.0.max(0) as Time;
    let buffers: Vec<Rc<RefCell<OutputBuffer>>> = routes
        .iter()
        .map(|_| Rc::new(RefCell::new(OutputBuffer::default())))
        .collect();
    let routes = routes.to_vec();
    let limit = Rc::new(RefCell::new(Time::MAX));
    let dstats = Rc::new(RefCell::new(DedupStats::default()));
    let global_max: Rc<Cell<Option<Time>>> = Rc::new(Cell::new(None));
    let ctl_done = Rc::new(Cell::new(false));
    let build_error: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));

    let dataflow_id = worker.next_dataflow_index();
    let (ev_in, dl_in, ctl_in, probe) = {
        let (buffers, limit, dstats) = (buffers.clone(), limit.clone(), dstats.clone());
        let (global_max, ctl_done, build_error) =
            (global_max.clone(), ctl_done.clone(), build_error.clone());
        worker.dataflow::<Time, _, _>(move |scope| {
            let (ev_in, events) = scope.new_collection::<Event, Diff>();
            let (dl_in, dead) = scope.new_collection::<OutRec, Diff>();
            let (ctl_in, ctl) = scope.new_collection::<(u64, Time), Diff>();
            let events = dedup(events, horizon, dstats);
            let mut outs = match program.build(events, settings) {
                Ok(o) => o,
                Err(e) => {
                    *build_error.borrow_mut() = Some(e);
                    Vec::new()
                }
            };
            outs.push(dead);
            let all = differential_dataflow::collection::concatenate(scope, outs);
            let (probe, all) = all.probe();
            for (buffer, &target) in buffers.into_iter().zip(&routes) {
                output_stage(all.clone(), buffer, limit.clone(), target);
            }
            // Control: every worker sends its largest event time to every worker, so all agree
            // on where event time ends.
            ctl.inner.sink(
                Exchange::new(|((target, _), _, _): &((u64, Time), Time, Diff)| *target),
                "GlobalMaxTs",
                move |(input, frontier)| {
                    input.for_each(|_, data: &mut Vec<((u64, Time), Time, Diff)>| {
                        for ((_, m), _, r) in data.drain(..) {
                            if r > 0 {
                                global_max.set(Some(global_max.get().map_or(m, |g| g.max(m))));
                            }
                        }
                    });
                    if !frontier.frontier().less_equal(&0) {
                        ctl_done.set(true);
                    }
                },
            );
            (ev_in, dl_in, ctl_in, probe)
        })
    };
    if let Some(e) = build_error.borrow_mut().take() {
        return Err(EngineError::Build(e));
    }
    Ok(Built {
        ev_in,
        dl_in,
        ctl_in,
        probe,
        buffers,
        limit,
        dstats,
        global_max,
        ctl_done,
        dataflow_id,
    })
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    program: &dyn Program,
    sources: &SourceFactory,
    sinks: &SharedSinks,
    opts: &RunOptions,
    failed: &Failure,
) -> Result<RunReport, EngineError> {
    let index = worker.index();
    let peers = worker.peers();
    let settings = opts.settings.clone();
    let lateness = settings.allowed_lateness.0.max(0) as Time;
    let retention = settings.state_retention.0;
    let tick = settings.tick.0.max(1) as Time;

    let mut sinks: Vec<Box<dyn Sink>> = if index == 0 {
        sinks
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut source = sources(index, peers)?;
    let profile = crate::profile::register(worker);
    crate::telemetry::register_arrangements(worker);

    let Built {
        mut ev_in,
        mut dl_in,
        mut ctl_in,
        probe,
        buffers,
        limit,
        dstats,
        global_max,
        ctl_done,
        dataflow_id,
    } = build_dataflow(worker, program, &settings, &[0])?;
    let buffer = buffers[0].clone();

    let mut report = RunReport::default();
    let mut max_ts: Option<i64> = None;
    let mut history: std::collections::VecDeque<Time> = std::collections::VecDeque::new();
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut now_w: Time = 0;

    let mut handed = i64::MIN;
    // Events dated more than a day after the wall clock: event time ends at the largest `ts`,
    // so one of them moves the end of event time (and every timer due before it) there.
    let future_after = wall_ms().saturating_add(86_400_000);
    let (mut future, mut future_max) = (0u64, i64::MIN);
    let mut meter = crate::telemetry::WorkerMeter::new();
    let watermark_meter = crate::telemetry::WatermarkMeter::new();
    let mut published = Instant::now();

    loop {
        check_peers(failed)?;
        if let Some(flag) = &opts.interrupt {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::warn!(
                    worker = index,
                    "interrupted: stopping before the end of the input"
                );
                return Err(EngineError::Interrupted);
            }
        }
        match source.poll(opts.batch)? {
            Poll::Finished => break,
            Poll::Idle => {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            Poll::Messages(msgs) => {
                let cur = *ev_in.time();
                for msg in msgs {
                    let ctx = Ingest {
                        opts,
                        retention,
                        tick,
                        cur,
                    };
                    if let Ingested::Event { ts, .. } =
                        ctx.ingest(&msg, &mut report, &mut ev_in, &mut dl_in, true, 0)
                    {
                        max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
                        if ts > future_after {
                            future += 1;
                            future_max = future_max.max(ts);
                        }
                    }
                }
                if let Some(m) = max_ts {
                    let w = to_time(m).saturating_sub(lateness);
                    if w > cur {
                        ev_in.advance_to(w);
                        dl_in.advance_to(w);
                        now_w = w;
                    }
                }
                ev_in.flush();
                dl_in.flush();
                // Bounded work in flight: wait until the dataflow has caught up with the input
                // time of a few batches ago (back-pressure on the source).
                history.push_back(*ev_in.time());
                if history.len() > 4 {
                    if let Some(t) = history.pop_front() {
                        worker.step_or_park_while(Some(Duration::from_millis(1)), || {
                            probe.less_than(&t) && !peer_failed(failed)
                        });
                    }
                }
                worker.step();
            }
        }
        if index == 0 {
            deliver(
                &buffer,
                &mut sinks,
                i64::MIN,
                i64::MAX,
                &mut report,
                &mut handed,
            )?;
            if last_log.elapsed() >= opts.progress_every {
                last_log = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(
                    worker = index,
                    messages = report.messages,
                    rate = (report.messages as f64 / secs) as u64,
                    watermark = now_w,
                    dead_letters = report.dead_letters,
                    "progress"
                );
            }
        }
        if published.elapsed() >= PUBLISH_EVERY {
            published = Instant::now();
            let w = (index == 0).then_some((&watermark_meter, handed));
            publish(&mut meter, w, &mut report, &dstats.borrow());
        }
    }

    if future > 0 {
        tracing::warn!(
            worker = index,
            events = future,
            largest_ts = future_max,
            "events dated more than a day in the future: event time ends at the largest ts, so timers due until then fire"
        );
    }
    // End of input: agree on the largest event time, move every input there, release it.
    for target in 0..peers as u64 {
        if let Some(m) = max_ts {
            ctl_in.update((target, to_time(m)), 1);
        }
    }
    ctl_in.advance_to(1);
    ctl_in.flush();
    worker.step_or_park_while(Some(Duration::from_millis(1)), || {
        !ctl_done.get() && !peer_failed(failed)
    });
    check_peers(failed)?;
    // Events took effect at their tick, so event time ends at the last tick boundary reached.
    let end = global_max
        .get()
        .map(|m| m.div_ceil(tick).saturating_mul(tick) + 1)
        .unwrap_or(1)
        .max(*ev_in.time());
    *limit.borrow_mut() = end;
    let mine: &[Rc<RefCell<OutputBuffer>>] = if index == 0 { &buffers } else { &[] };
    release_until(worker, &mut ev_in, &mut dl_in, &probe, mine, end, &|| {
        peer_failed(failed)
    });
    check_peers(failed)?;
    if index == 0 {
        deliver(
            &buffer,
            &mut sinks,
            i64::MIN,
            i64::MAX,
            &mut report,
            &mut handed,
        )?;
        for s in sinks.iter_mut() {
            s.flush()?;
        }
    }
    let w = (index == 0).then_some((&watermark_meter, handed));
    publish(&mut meter, w, &mut report, &dstats.borrow());
    report.final_watermark = global_max.get().map(|m| m as i64);
    // Timers due after the end of event time must not fire, and the state's expiry
    // retractions need no processing: drop the dataflow instead of closing its inputs.
    worker.drop_dataflow(dataflow_id);
    drop((ev_in, dl_in, ctl_in));
    if let Some(p) = profile {
        p.report(worker);
    }
    tracing::info!(
        worker = index,
        messages = report.messages,
        secs = started.elapsed().as_secs_f64(),
        "worker finished"
    );
    Ok(report)
}
