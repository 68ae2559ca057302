//! [`ClickHouseSink`]: an [`adflow_model::Sink`] that writes the changelog to ClickHouse.
//!
//! # Semantics
//! - **Batching.** `write` appends to a buffer; a background writer thread sends the buffer once
//!   it holds `batch_rows` changes, once its oldest change is `batch_ms` old, or on `flush`.
//! - **Consolidation.** Before sending, the changes of a batch are summed per (row, version):
//!   a +1 and a −1 of the same row at the same version cancel and are not sent; a net ±n is
//!   sent as n rows of sign ±1 (the `sign` column of a collapsing table is ±1).
//! - **Order.** One batch is in flight at a time and a batch's tables are written one after the
//!   other, so changes of a key reach ClickHouse in the order they were handed over.
//! - **Exactly once.** Each INSERT (one table of one batch, at most `batch_rows` rows, a single
//!   ClickHouse block, so one atomic part) carries one extra *marker row* whose `batch_marker`
//!   column holds the INSERT's unique id (all data rows have `batch_marker = ''`; the
//!   `_current` views skip markers; a marker's sort key is unique, so merges never remove it).
//!   The INSERT is sent with `query_id` = that id. After any failed attempt (the outcome may be
//!   unknown: the connection can drop after the server took the data), the writer first waits
//!   until no query with that id runs (`system.processes`), then looks for the marker: present
//!   means the INSERT was applied and is not sent again; absent means it was not and is resent.
//!   A resend while the old INSERT still runs is refused by the server (same `query_id`).
//!   This needs no `Replicated*` table (insert deduplication on 18.16 exists only there).
//!   Ids start with `adflow-<database>-`.
//! - **Retries.** Every failure (refused connection, server down, timeout, server exception)
//!   is logged and retried with exponential backoff, forever unless `retry.max_attempts` is
//!   set; meanwhile the buffer fills and `write` blocks (back-pressure). When attempts run out
//!   the sink is failed: every later `write`/`flush` returns an error. Nothing is dropped
//!   silently.
//! - **Frontier.** After a batch is fully written, [`Sink::durable_frontier`] becomes the
//!   largest frontier handed over with the changes of that batch. It starts at `i64::MIN`.
//!   The marker rows carry that frontier in their `version` column.
//!
//! Dropping the sink without [`ClickHouseSink::close`] stops the writer after its current
//! attempt; changes not yet durable are then not written (they are above `durable_frontier`,
//! so a caller that commits input up to that frontier replays them).
//!
//! # Resuming (live mode): [`ClickHouseSink::resume`]
//! A resumable sink keeps a write-ahead *journal* in `<db>.adflow_journal` (schema migration
//! 2). Before the data of a batch is written, one INSERT (atomic, exactly once like the data)
//! records in the journal the batch (`seq`, its frontier, and the engine checkpoint given by
//! [`Sink::set_checkpoint`] if the batch is the one that `flush` writes with it) and every
//! INSERT of the batch: its id and its rows as JSON. Then the data INSERTs follow as above.
//! Batches are written one after the other, so only the newest journaled batch can be
//! partially applied.
//!
//! [`ClickHouseSink::resume`] restores the tables to the newest checkpoint `C` (frontier `F`):
//! it waits until no INSERT of an earlier run of this database is still running on the server,
//! then (1) *redoes* the INSERTs of `C`'s batch whose marker is missing (same id, same rows),
//! and (2) *undoes* every INSERT of the batches after `C` whose marker is present: it inserts
//! the same rows with the sign negated, with the marker `<id>-undo`, unless that marker is
//! already there. Afterwards every row's `sum(sign)` is exactly what the changes below `F`
//! give, and [`Sink::resume_frontier`] (every table) is `F`, [`Sink::resume_checkpoint`] the
//! checkpoint. Every step is decided by markers, so a crash during `resume` followed by
//! another `resume` neither redoes nor undoes anything twice.
//!
//! Why a journal rather than cancelling "the rows with `version >= F`" found in the tables:
//! the tables are `CollapsingMergeTree`, and a background merge may cancel a +1 written before
//! the checkpoint against a −1 of the same row written after it; afterwards nothing in the
//! table tells that the row existed at `F`. An undo built from the journal cancels exactly
//! what each INSERT added, whatever merges did meanwhile.
//!
//! In resumable mode changes handed over with a version at or above the call's frontier are
//! held back until the frontier passes them (the engine never sends such changes), so every
//! batch holds only changes below its frontier; `flush` with a pending checkpoint writes the
//! changes below the checkpoint's frontier and stores the checkpoint with them. The journal
//! keeps the batches from the newest checkpoint on; older partitions (1,024 batches each) are
//! dropped as checkpoints advance.

use crate::config::{ClickHouseConfig, RetryConfig};
use crate::error::ClickHouseError;
use crate::rows::TableRows;
use crate::schema::{qualified, JOURNAL_PARTITION_BATCHES, JOURNAL_TABLE};
use adflow_model::{Change, OutputRow, Sink, SinkError, Table};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SINK_NAME: &str = "clickhouse";

/// Counters of a running sink (monotonic since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Changes handed over through `write`.
    pub changes_received: u64,
    /// Data rows written (after consolidation; markers not counted).
    pub rows_written: u64,
    /// Changes cancelled by consolidation.
    pub changes_cancelled: u64,
    /// INSERT statements completed (one per table per batch chunk).
    pub inserts: u64,
    /// Failed attempts (each was retried or ended in `GaveUp`).
    pub failed_attempts: u64,
    /// INSERTs found already applied after an attempt with unknown outcome (not resent).
    pub inserts_found_applied: u64,
    /// Batches recorded in the journal (resumable sinks only).
    pub batches_journaled: u64,
    /// Engine checkpoints stored (resumable sinks only).
    pub checkpoints_stored: u64,
}

/// What [`ClickHouseSink::resume`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResumeReport {
    /// The frontier of the checkpoint resumed from: every change below it is stored, nothing
    /// else. `i64::MIN` when there was no checkpoint (the tables hold nothing of earlier runs).
    pub frontier: i64,
    /// The engine checkpoint stored with it.
    pub checkpoint: Option<String>,
    /// Journal sequence number of the checkpoint's batch.
    pub checkpoint_batch: Option<u64>,
    /// INSERTs of the checkpoint's batch that were missing and have been written now.
    pub inserts_redone: u64,
    /// INSERTs written after the checkpoint that have been cancelled now.
    pub inserts_undone: u64,
    /// Data rows of those INSERTs.
    pub rows_undone: u64,
}

#[derive(Default)]
struct Counters {
    /// Time writes spent retrying before they went through, milliseconds.
    unavailable_ms: AtomicU64,
    changes_received: AtomicU64,
    rows_written: AtomicU64,
    changes_cancelled: AtomicU64,
    inserts: AtomicU64,
    failed_attempts: AtomicU64,
    inserts_found_applied: AtomicU64,
    batches_journaled: AtomicU64,
    checkpoints_stored: AtomicU64,
}

struct State {
    pending: Vec<Change>,
    /// Resumable sinks: changes at or above the frontier they came with, kept until the
    /// frontier passes them (or `close`).
    held: Vec<Change>,
    /// When the oldest pending change arrived.
    pending_since: Option<Instant>,
    /// Largest frontier handed over.
    frontier: i64,
    /// Resumable sinks: the checkpoint to store with the next batch, and the frontier it
    /// belongs to (the frontier handed over when it was set).
    checkpoint: Option<(String, i64)>,
    /// The checkpoint stored last (or resumed from).
    stored_checkpoint: Option<(String, i64)>,
    /// A batch is being written.
    in_flight: bool,
    /// Callers waiting in `flush`.
    flush_waiters: usize,
    /// `start_flush`: the frontier handed over when it was called (written without waiting
    /// for `batch_ms`), and the checkpoint that must be stored before it is complete; cleared
    /// when `flush_done` reports it complete.
    flush_target: Option<(i64, Option<String>)>,
    /// Set when the writer gave up or died; every later call fails with it.
    failed: Option<String>,
    /// `close`: write everything, then stop.
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for work.
    work: Condvar,
    /// Callers wait here for space, durability or failure.
    progress: Condvar,
    durable: AtomicI64,
    /// Drop without close: stop retrying and exit.
    abort: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a thread panicked while holding it; the state is still
        // consistent enough to report the failure, so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes adflow changelog batches to ClickHouse; see the module docs for the guarantees.
pub struct ClickHouseSink {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    max_pending_rows: usize,
    /// Made by [`ClickHouseSink::resume`]: journal, checkpoints, held-back changes.
    resumable: bool,
    resumed: Option<ResumeReport>,
}

impl ClickHouseSink {
    /// Validates `config`, applies the schema when `config.apply_schema` is set, and starts the
    /// background writer. Does not require the server to be up (unless `apply_schema`): writes
    /// are retried until it is. Keeps no checkpoints (file mode).
    pub fn new(config: ClickHouseConfig) -> Result<Self, ClickHouseError> {
        Self::start(config, false)
    }

    /// A sink for live mode that survives restarts (see *Resuming* in the module docs): it
    /// restores the tables to the newest checkpoint stored in `<db>.adflow_journal` by an
    /// earlier run (undoing what was written after it, completing what it stored with it) and
    /// reports that checkpoint through [`Sink::resume_checkpoint`] and
    /// [`Sink::resume_frontier`]; with no journal entries it starts empty. Needs the server
    /// (retried per `config.retry` while it is down) and schema migration 2 (applied here
    /// when `config.apply_schema` is set). Fails with [`ClickHouseError::Resume`] when the
    /// database already holds changes written without a journal (by [`ClickHouseSink::new`]).
    pub fn resume(config: ClickHouseConfig) -> Result<Self, ClickHouseError> {
        Self::start(config, true)
    }

    fn start(config: ClickHouseConfig, resumable: bool) -> Result<Self, ClickHouseError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClickHouseError::Start)?;
        if config.apply_schema {
            runtime.block_on(crate::schema::apply_schema_with(&config))?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::new(),
                held: Vec::new(),
                pending_since: None,
                frontier: i64::MIN,
                checkpoint: None,
                stored_checkpoint: None,
                in_flight: false,
                flush_waiters: 0,
                flush_target: None,
                failed: None,
                shutdown: false,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            durable: AtomicI64::new(i64::MIN),
            abort: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let max_pending_rows = config.max_pending_rows;
        let mut writer = Writer::new(config, shared.clone());
        let resumed = if resumable {
            let report = runtime.block_on(writer.resume())?;
            {
                let mut st = shared.lock();
                st.frontier = report.frontier;
                st.stored_checkpoint = report
                    .checkpoint
                    .clone()
                    .map(|text| (text, report.frontier));
            }
            shared.durable.store(report.frontier, Ordering::Release);
            Some(report)
        } else {
            None
        };
        let handle = std::thread::Builder::new()
            .name("adflow-clickhouse-sink".into())
            .spawn(move || writer.run(runtime))
            .map_err(ClickHouseError::Start)?;
        Ok(ClickHouseSink {
            shared,
            writer: Some(handle),
            max_pending_rows,
            resumable,
            resumed,
        })
    }

    /// What [`ClickHouseSink::resume`] found and did (`None` for [`ClickHouseSink::new`]).
    pub fn resume_report(&self) -> Option<&ResumeReport> {
        self.resumed.as_ref()
    }

    /// Counters since start.
    pub fn stats(&self) -> SinkStats {
        let c = &self.shared.counters;
        SinkStats {
            changes_received: c.changes_received.load(Ordering::Relaxed),
            rows_written: c.rows_written.load(Ordering::Relaxed),
            changes_cancelled: c.changes_cancelled.load(Ordering::Relaxed),
            inserts: c.inserts.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            inserts_found_applied: c.inserts_found_applied.load(Ordering::Relaxed),
            batches_journaled: c.batches_journaled.load(Ordering::Relaxed),
            checkpoints_stored: c.checkpoints_stored.load(Ordering::Relaxed),
        }
    }

    /// Writes everything handed over (held-back changes included), then stops the writer.
    /// Fails if the writer failed.
    pub fn close(mut self) -> Result<(), SinkError> {
        {
            let mut st = self.shared.lock();
            if !st.held.is_empty() {
                let held = std::mem::take(&mut st.held);
                if st.pending.is_empty() {
                    st.pending_since = Some(Instant::now());
                }
                st.pending.extend(held);
            }
        }
        let flushed = self.flush();
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
        }
        self.shared.work.notify_all();
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                return Err(sink_error("writer thread panicked".into()));
            }
        }
        flushed
    }

    fn check_failed(&self, st: &State) -> Result<(), SinkError> {
        match &st.failed {
            Some(msg) => Err(sink_error(msg.clone())),
            None if self.writer.as_ref().is_some_and(|h| h.is_finished()) && !st.shutdown => {
                Err(sink_error("writer thread stopped".into()))
            }
            None => Ok(()),
        }
    }
}

fn sink_error(message: String) -> SinkError {
    SinkError::Other {
        sink: SINK_NAME.into(),
        message,
    }
}

/// Poll interval of callers waiting on the writer (to notice a dead writer thread).
const WAIT_TICK: Duration = Duration::from_millis(200);

impl Sink for ClickHouseSink {
    fn name(&self) -> &str {
        SINK_NAME
    }

    /// Buffers `changes`; blocks while `max_pending_rows` changes already wait (e.g. while
    /// ClickHouse is down). Fails only if the sink has failed (see `retry.max_attempts`).
    fn write(&mut self, changes: Vec<Change>, frontier: i64) -> Result<(), SinkError> {
        let n = changes.len();
        let mut st = self.shared.lock();
        loop {
            self.check_failed(&st)?;
            if st.pending.is_empty() || st.pending.len() + n <= self.max_pending_rows {
                break;
            }
            st = self
                .shared
                .progress
                .wait_timeout(st, WAIT_TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let was_empty = st.pending.is_empty();
        st.frontier = st.frontier.max(frontier);
        if self.resumable {
            let f = st.frontier;
            if !st.held.is_empty() {
                let (ready, later): (Vec<Change>, Vec<Change>) = std::mem::take(&mut st.held)
                    .into_iter()
                    .partition(|c| c.version < f);
                st.held = later;
                st.pending.extend(ready);
            }
            for c in changes {
                if c.version < f {
                    st.pending.push(c);
                } else {
                    st.held.push(c);
                }
            }
        } else {
            st.pending.extend(changes);
        }
        if was_empty && !st.pending.is_empty() {
            st.pending_since = Some(Instant::now());
        }
        self.shared
            .counters
            .changes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        drop(st);
        self.shared.work.notify_all();
        Ok(())
    }

    /// Sends what is buffered now and blocks until everything handed over so far is durable
    /// (resumable sinks: every change below the frontier handed over, and the checkpoint set
    /// before, if any).
    fn flush(&mut self) -> Result<(), SinkError> {
        let mut st = self.shared.lock();
        let target = st.frontier;
        st.flush_waiters += 1;
        self.shared.work.notify_all();
        let result = loop {
            if let Err(e) = self.check_failed(&st) {
                break Err(e);
            }
            if st.pending.is_empty()
                && st.checkpoint.is_none()
                && !st.in_flight
                && self.shared.durable.load(Ordering::Acquire) >= target
            {
                break Ok(());
            }
            st = self
                .shared
                .progress
                .wait_timeout(st, WAIT_TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        st.flush_waiters -= 1;
        result
    }

    /// Asks the writer to write what is pending now (not after `batch_ms`) and the checkpoint
    /// set last; [`ClickHouseSink::flush_done`] tells when the frontier handed over so far is
    /// durable and that checkpoint stored. Changes handed over meanwhile go to later batches
    /// (a batch with a checkpoint holds only the changes below the checkpoint's frontier).
    fn start_flush(&mut self) -> Result<(), SinkError> {
        let mut st = self.shared.lock();
        self.check_failed(&st)?;
        let checkpoint = st.checkpoint.as_ref().map(|(text, _)| text.clone());
        st.flush_target = Some((st.frontier, checkpoint));
        self.shared.work.notify_all();
        Ok(())
    }

    fn flush_done(&mut self) -> Result<bool, SinkError> {
        let mut st = self.shared.lock();
        self.check_failed(&st)?;
        let Some((target, checkpoint)) = &st.flush_target else {
            return Ok(true);
        };
        let stored = match checkpoint {
            Some(text) => st
                .stored_checkpoint
                .as_ref()
                .is_some_and(|(stored, _)| stored == text),
            None => true,
        };
        let done = stored && self.shared.durable.load(Ordering::Acquire) >= *target;
        if done {
            st.flush_target = None;
        }
        Ok(done)
    }

    fn durable_frontier(&self) -> i64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    fn resume_frontier(&self, _table: Table) -> i64 {
        self.resumed.as_ref().map_or(i64::MIN, |r| r.frontier)
    }

    /// Resumable sinks store `checkpoint` with the next `flush`, together with the frontier
    /// handed over so far (see the module docs); a checkpoint equal to the one stored last is
    /// not stored again. Ignored by sinks made with [`ClickHouseSink::new`], and while the
    /// frontier handed over has not passed the frontier resumed from: the replaying engine's
    /// checkpoints then describe an earlier frontier than the data stored, and the checkpoint
    /// resumed from stays the right one.
    fn set_checkpoint(&mut self, checkpoint: &str) {
        if !self.resumable {
            return;
        }
        let mut st = self.shared.lock();
        let f = st.frontier;
        let resumed = self.resumed.as_ref().map_or(i64::MIN, |r| r.frontier);
        if resumed > i64::MIN && f <= resumed {
            st.checkpoint = None;
            return;
        }
        let same = st
            .stored_checkpoint
            .as_ref()
            .is_some_and(|(text, sf)| text == checkpoint && *sf == f);
        st.checkpoint = (!same).then(|| (checkpoint.to_string(), f));
    }

    fn resume_checkpoint(&self) -> Option<String> {
        self.resumed.as_ref().and_then(|r| r.checkpoint.clone())
    }

    fn resumable(&self) -> bool {
        self.resumable
    }
}

impl Drop for ClickHouseSink {
    fn drop(&mut self) {
        let Some(handle) = self.writer.take() else {
            return;
        };
        {
            let mut st = self.shared.lock();
            if !st.pending.is_empty() || st.in_flight {
                tracing::warn!(
                    pending = st.pending.len(),
                    durable_frontier = self.shared.durable.load(Ordering::Acquire),
                    "ClickHouse sink dropped without close(): changes above the durable frontier are not written"
                );
            }
            st.shutdown = true;
        }
        self.shared.abort.store(true, Ordering::Release);
        self.shared.work.notify_all();
        if handle.join().is_err() {
            tracing::error!("ClickHouse sink writer thread panicked");
        }
    }
}

/// Where to cut `batch` (sorted by version here, stably) so that the first part holds at
/// most `cap` changes and no version is split; `None` when it all fits (or when its first
/// version alone exceeds `cap`, which is then written whole, as is every later version that
/// does).
fn batch_cut(batch: &mut [Change], cap: usize) -> Option<usize> {
    if batch.len() <= cap || cap == 0 {
        return None;
    }
    batch.sort_by_key(|c| c.version);
    let v = batch[cap - 1].version;
    let (before, after) = (
        batch.partition_point(|c| c.version < v),
        batch.partition_point(|c| c.version <= v),
    );
    // `after >= cap`; when version `v` runs past the cap, cut before it if anything is.
    let cut = if after > cap && before > 0 {
        before
    } else {
        after
    };
    (cut < batch.len()).then_some(cut)
}

/// One row of `adflow_journal` (see [`crate::schema::create_journal_sql`]).
#[derive(clickhouse::Row, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
struct JournalRow {
    seq: u64,
    batch_id: String,
    frontier: i64,
    has_checkpoint: u8,
    checkpoint: String,
    chunk: u32,
    insert_id: String,
    table_name: String,
    payload: String,
    written_ms: i64,
}

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct JournalSummary {
    rows: u64,
    max_seq: u64,
    checkpoints: u64,
    last_checkpoint: u64,
}

/// One INSERT of a batch, ready to send.
struct Chunk {
    table: Table,
    rows: TableRows,
    id: String,
    data_rows: usize,
}

/// Where an exactly-once INSERT goes.
#[derive(Clone, Copy)]
enum Target<'a> {
    Table(Table, &'a TableRows),
    Journal(u64, &'a [JournalRow]),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Target::Table(t, _) => t.name(),
            Target::Journal(..) => JOURNAL_TABLE,
        }
    }
}

/// The journal position of a resumable writer.
struct Journal {
    next_seq: u64,
    last_checkpoint_seq: Option<u64>,
    /// Journal partitions below this one have been dropped.
    dropped_below: u64,
}

/// The background writer: owns the client and the tokio runtime.
struct Writer {
    config: ClickHouseConfig,
    client: clickhouse::Client,
    shared: Arc<Shared>,
    /// `adflow-<database>-`: the start of every id this sink (and any earlier run on the
    /// same database) gives an INSERT.
    id_prefix: String,
    /// Unique per sink instance: batch ids never repeat across restarts.
    run_id: String,
    seq: u64,
    /// Resumable sinks only (set by `resume`).
    journal: Option<Journal>,
}

impl Writer {
    fn new(config: ClickHouseConfig, shared: Arc<Shared>) -> Self {
        let client = config.client().with_database(config.database.clone());
        Writer {
            id_prefix: format!("adflow-{}-", config.database),
            config,
            client,
            shared,
            run_id: run_id(),
            seq: 0,
            journal: None,
        }
    }

    fn run(mut self, runtime: tokio::runtime::Runtime) {
        let batch_ms = Duration::from_millis(self.config.batch_ms);
        loop {
            let (batch, frontier, checkpoint) = {
                let mut st = self.shared.lock();
                loop {
                    if self.shared.abort.load(Ordering::Acquire) || st.failed.is_some() {
                        return;
                    }
                    let durable = self.shared.durable.load(Ordering::Acquire);
                    let age = st.pending_since.map(|t| t.elapsed()).unwrap_or_default();
                    let flush_started = st.flush_target.is_some();
                    let due = !st.pending.is_empty()
                        && (st.pending.len() >= self.config.batch_rows
                            || age >= batch_ms
                            || st.flush_waiters > 0
                            || flush_started
                            || st.shutdown);
                    let checkpoint_due = st.checkpoint.is_some()
                        && (st.flush_waiters > 0 || flush_started || st.shutdown);
                    if due || checkpoint_due || (st.pending.is_empty() && st.frontier > durable) {
                        break;
                    }
                    if st.shutdown && st.pending.is_empty() {
                        return;
                    }
                    let wait = if st.pending.is_empty() {
                        Duration::from_secs(3600)
                    } else {
                        batch_ms.saturating_sub(age).max(Duration::from_millis(1))
                    };
                    st = self
                        .shared
                        .work
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                st.in_flight = true;
                let (mut batch, mut frontier, mut checkpoint) = match st.checkpoint.take() {
                    // Changes arrived after the checkpoint was set: write the part below its
                    // frontier with it, the rest in a later batch.
                    Some((text, f)) if f < st.frontier => {
                        let (now, later): (Vec<Change>, Vec<Change>) =
                            std::mem::take(&mut st.pending)
                                .into_iter()
                                .partition(|c| c.version < f);
                        if later.is_empty() {
                            st.pending_since = None;
                        }
                        st.pending = later;
                        (now, f, Some((text, f)))
                    }
                    checkpoint => {
                        st.pending_since = None;
                        (std::mem::take(&mut st.pending), st.frontier, checkpoint)
                    }
                };
                // A batch holds at most `max_pending_rows` changes, cut between versions: one
                // engine release can be far larger (a catch-up after a restart or a backlog),
                // and its journal INSERT, one request, then exceeded the server's memory limit
                // and was retried forever. The rest is the next batch; the changes below the
                // cut are all in this one, so its frontier is the first version left out. A
                // checkpoint goes with the batch that reaches its frontier.
                if let Some(cut) = batch_cut(&mut batch, self.config.max_pending_rows) {
                    let mut later = batch.split_off(cut);
                    frontier = later[0].version;
                    if let Some(cp) = checkpoint.take() {
                        st.checkpoint = Some(cp);
                    }
                    later.append(&mut st.pending);
                    st.pending = later;
                    st.pending_since.get_or_insert_with(Instant::now);
                }
                (batch, frontier, checkpoint.map(|(text, _)| text))
            };
            self.shared.progress.notify_all();
            let result = runtime.block_on(self.write_batch(batch, frontier, checkpoint.as_deref()));
            let mut st = self.shared.lock();
            st.in_flight = false;
            match result {
                Ok(()) => {
                    self.shared.durable.fetch_max(frontier, Ordering::AcqRel);
                    if let Some(text) = checkpoint {
                        st.stored_checkpoint = Some((text, frontier));
                    }
                }
                Err(e) => {
                    if !self.shared.abort.load(Ordering::Acquire) {
                        tracing::error!(error = %e, "ClickHouse sink failed; no further writes");
                    }
                    st.failed = Some(e.to_string());
                }
            }
            drop(st);
            self.shared.progress.notify_all();
        }
    }

    /// Consolidates `batch` and writes it table by table, in chunks of `batch_rows`; a
    /// resumable writer records the batch (and `checkpoint`) in the journal first.
    async fn write_batch(
        &mut self,
        batch: Vec<Change>,
        frontier: i64,
        checkpoint: Option<&str>,
    ) -> Result<(), ClickHouseError> {
        if batch.is_empty() && (checkpoint.is_none() || self.journal.is_none()) {
            return Ok(());
        }
        let received = batch.len();
        let by_table = consolidate(batch);
        let sent: usize = by_table
            .values()
            .flat_map(|v| v.iter().map(|(_, n)| n.unsigned_abs() as usize))
            .sum();
        self.shared
            .counters
            .changes_cancelled
            .fetch_add(received.saturating_sub(sent) as u64, Ordering::Relaxed);
        let mut chunks = Vec::new();
        for (table, changes) in by_table {
            let mut rows = TableRows::new(table);
            let mut data_rows = 0usize;
            for (change, net) in &changes {
                let sign: i8 = if *net > 0 { 1 } else { -1 };
                for _ in 0..net.unsigned_abs() {
                    if data_rows == self.config.batch_rows {
                        let full = std::mem::replace(&mut rows, TableRows::new(table));
                        chunks.push(self.chunk(table, full, data_rows, frontier));
                        data_rows = 0;
                    }
                    rows.push(change, sign);
                    data_rows += 1;
                }
            }
            if data_rows > 0 {
                chunks.push(self.chunk(table, rows, data_rows, frontier));
            }
        }
        let journaled = if self.journal.is_some() {
            Some(self.write_journal(&chunks, frontier, checkpoint).await?)
        } else {
            None
        };
        for chunk in &chunks {
            self.insert_exactly_once(Target::Table(chunk.table, &chunk.rows), &chunk.id)
                .await?;
            let c = &self.shared.counters;
            c.rows_written
                .fetch_add(chunk.data_rows as u64, Ordering::Relaxed);
            c.inserts.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(seq), Some(_)) = (journaled, checkpoint) {
            self.shared
                .counters
                .checkpoints_stored
                .fetch_add(1, Ordering::Relaxed);
            if let Some(j) = self.journal.as_mut() {
                j.last_checkpoint_seq = Some(seq);
            }
            self.prune_journal().await;
        }
        Ok(())
    }

    /// Gives `rows` (`data_rows` changes of `table`) a fresh id and its marker row.
    fn chunk(
        &mut self,
        table: Table,
        mut rows: TableRows,
        data_rows: usize,
        frontier: i64,
    ) -> Chunk {
        self.seq += 1;
        let id = format!(
            "{}{}-{}-{}",
            self.id_prefix,
            self.run_id,
            self.seq,
            table.name()
        );
        rows.push_marker(&id, frontier);
        Chunk {
            table,
            rows,
            id,
            data_rows,
        }
    }

    /// Records a batch in the journal (exactly once); returns its sequence number.
    async fn write_journal(
        &mut self,
        chunks: &[Chunk],
        frontier: i64,
        checkpoint: Option<&str>,
    ) -> Result<u64, ClickHouseError> {
        let seq = self.journal.as_ref().map_or(1, |j| j.next_seq);
        let batch_id = format!("{}{}-b{seq}", self.id_prefix, self.run_id);
        let written_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let mut rows = vec![JournalRow {
            seq,
            batch_id: batch_id.clone(),
            frontier,
            has_checkpoint: checkpoint.is_some().into(),
            checkpoint: checkpoint.unwrap_or_default().to_string(),
            written_ms,
            ..JournalRow::default()
        }];
        for (i, chunk) in chunks.iter().enumerate() {
            let payload =
                serde_json::to_string(&chunk.rows).map_err(|e| ClickHouseError::Protocol {
                    context: format!("journal batch {seq}"),
                    message: format!("cannot encode the rows of {}: {e}", chunk.id),
                })?;
            rows.push(JournalRow {
                seq,
                batch_id: batch_id.clone(),
                frontier,
                chunk: (i + 1) as u32,
                insert_id: chunk.id.clone(),
                table_name: chunk.table.name().to_string(),
                payload,
                written_ms,
                ..JournalRow::default()
            });
        }
        self.insert_exactly_once(Target::Journal(seq, &rows), &batch_id)
            .await?;
        if let Some(j) = self.journal.as_mut() {
            j.next_seq = seq + 1;
        }
        self.shared
            .counters
            .batches_journaled
            .fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Drops the journal partitions that hold only batches before the newest checkpoint.
    /// Failures are logged only: the journal then keeps them a while longer.
    async fn prune_journal(&mut self) {
        let Some(j) = &self.journal else { return };
        let Some(last) = j.last_checkpoint_seq else {
            return;
        };
        let keep_from = last / JOURNAL_PARTITION_BATCHES;
        if keep_from <= j.dropped_below {
            return;
        }
        let result = async {
            let sql = "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active";
            let fut = self
                .client
                .query(sql)
                .bind(self.config.database.as_str())
                .bind(JOURNAL_TABLE)
                .fetch_all::<String>();
            let timeout = self.config.request_timeout();
            let parts = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map_err(|e| ClickHouseError::client("list journal partitions", e))?,
                Err(_) => {
                    return Err(ClickHouseError::Timeout {
                        context: "list journal partitions".into(),
                        timeout_ms: timeout.as_millis() as u64,
                    })
                }
            };
            for p in parts {
                let Ok(n) = p.trim_matches('\'').parse::<u64>() else {
                    continue;
                };
                if n < keep_from {
                    let sql = format!(
                        "ALTER TABLE {} DROP PARTITION {n}",
                        qualified(&self.config.database, JOURNAL_TABLE)
                    );
                    crate::schema::execute(&self.client, &sql, timeout).await?;
                }
            }
            Ok::<(), ClickHouseError>(())
        }
        .await;
        match result {
            Ok(()) => {
                if let Some(j) = self.journal.as_mut() {
                    j.dropped_below = keep_from;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not drop old journal partitions; retried at a later checkpoint")
            }
        }
    }

    /// [`Writer::resume_once`], retried per `config.retry` while the server is unreachable.
    /// Counts a failed attempt; gives up (`Err(GaveUp)`) once `retry.max_attempts` is reached.
    fn failed_attempt(
        &self,
        attempts: &mut u32,
        retry: &RetryConfig,
        e: &ClickHouseError,
    ) -> Result<(), ClickHouseError> {
        *attempts += 1;
        self.shared
            .counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("adflow_sink_retries_total", "sink" => SINK_NAME).increment(1);
        if retry.max_attempts.is_some_and(|max| *attempts >= max) {
            return Err(ClickHouseError::GaveUp {
                attempts: *attempts,
                last_error: e.to_string(),
            });
        }
        Ok(())
    }

    async fn resume(&mut self) -> Result<ResumeReport, ClickHouseError> {
        let retry = self.config.retry.clone();
        let mut backoff = Duration::from_millis(retry.initial_backoff_ms);
        let max_backoff = Duration::from_millis(retry.max_backoff_ms);
        let mut attempts = 0u32;
        loop {
            match self.resume_once().await {
                Ok(report) => return Ok(report),
                Err(e @ (ClickHouseError::Resume(_) | ClickHouseError::GaveUp { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    self.failed_attempt(&mut attempts, &retry, &e)?;
                    tracing::warn!(attempts, backoff_ms = backoff.as_millis() as u64, error = %e, "ClickHouse sink cannot resume yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    /// Restores the tables to the newest checkpoint of the journal (see the module docs).
    /// Idempotent: every step is decided by the markers in the tables.
    async fn resume_once(&mut self) -> Result<ResumeReport, ClickHouseError> {
        let db = self.config.database.clone();
        let journal = qualified(&db, JOURNAL_TABLE);
        // With a client without default database: the database itself may be missing.
        let exists = {
            let timeout = self.config.request_timeout();
            let fut = self
                .config
                .client()
                .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
                .bind(db.as_str())
                .bind(JOURNAL_TABLE)
                .fetch_one::<u64>();
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map_err(|e| ClickHouseError::client("look for the journal", e))?,
                Err(_) => {
                    return Err(ClickHouseError::Timeout {
                        context: "look for the journal".into(),
                        timeout_ms: timeout.as_millis() as u64,
                    })
                }
            }
        };
        if exists == 0 {
            return Err(ClickHouseError::Resume(format!(
                "{db}.{JOURNAL_TABLE} does not exist: apply the schema (`adflow schema --apply URL --database {db}`, or `apply_schema = true`)"
            )));
        }
        self.wait_until_earlier_runs_finished().await?;
        let summary = self
            .fetch_row::<JournalSummary>(&format!(
                "SELECT count(), max(seq), countIf(chunk = 0 AND has_checkpoint = 1), maxIf(seq, chunk = 0 AND has_checkpoint = 1) FROM {journal}"
            ))
            .await?;
        let mut report = ResumeReport {
            frontier: i64::MIN,
            ..ResumeReport::default()
        };
        if summary.rows == 0 {
            for table in Table::ALL {
                let sql = format!(
                    "SELECT count() FROM (SELECT 1 FROM {} LIMIT 1)",
                    qualified(&db, table.name())
                );
                if self
                    .fetch_one(&sql, &[], "look for earlier changes")
                    .await?
                    > 0
                {
                    return Err(ClickHouseError::Resume(format!(
                        "{db}.{table} holds changes written without a journal (file mode, or a sink made with ClickHouseSink::new); a resumable sink needs a fresh database or one written only by resumable sinks"
                    )));
                }
            }
            self.journal = Some(Journal {
                next_seq: 1,
                last_checkpoint_seq: None,
                dropped_below: 0,
            });
            return Ok(report);
        }
        let from = (summary.checkpoints > 0).then_some(summary.last_checkpoint);
        let rows: Vec<JournalRow> = {
            let sql = format!(
                "SELECT ?fields FROM {journal} WHERE seq >= {} ORDER BY seq, chunk",
                from.unwrap_or(0)
            );
            let timeout = self.config.request_timeout();
            let fut = self.client.query(&sql).fetch_all::<JournalRow>();
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map_err(|e| ClickHouseError::client("read the journal", e))?,
                Err(_) => {
                    return Err(ClickHouseError::Timeout {
                        context: "read the journal".into(),
                        timeout_ms: timeout.as_millis() as u64,
                    })
                }
            }
        };
        // Redo: the checkpoint's batch must be complete.
        if let Some(c) = from {
            let head = rows
                .iter()
                .find(|r| r.seq == c && r.chunk == 0)
                .ok_or_else(|| {
                    ClickHouseError::Resume(format!("journal batch {c} has no batch row"))
                })?;
            report.frontier = head.frontier;
            report.checkpoint = Some(head.checkpoint.clone());
            report.checkpoint_batch = Some(c);
            for r in rows.iter().filter(|r| r.seq == c && r.chunk > 0) {
                let (table, data) = decode_chunk(r)?;
                if !self.marker_present(table, &r.insert_id).await? {
                    tracing::info!(table = %table, id = %r.insert_id, "resume: writing an INSERT of the checkpoint's batch that the earlier run did not finish");
                    self.insert_exactly_once(Target::Table(table, &data), &r.insert_id)
                        .await?;
                    report.inserts_redone += 1;
                }
            }
        }
        // Undo: everything applied after the checkpoint, newest first.
        for r in rows
            .iter()
            .rev()
            .filter(|r| from.is_none_or(|c| r.seq > c) && r.chunk > 0)
        {
            let (table, data) = decode_chunk(r)?;
            if !self.marker_present(table, &r.insert_id).await? {
                continue; // never applied (the earlier run stopped before it)
            }
            let undo_id = format!("{}-undo", r.insert_id);
            if self.marker_present(table, &undo_id).await? {
                continue; // undone by an earlier resume
            }
            let undo = data.negated(&undo_id, r.frontier);
            tracing::info!(table = %table, id = %r.insert_id, rows = undo.len() - 1, "resume: cancelling an INSERT written after the checkpoint");
            self.insert_exactly_once(Target::Table(table, &undo), &undo_id)
                .await?;
            report.inserts_undone += 1;
            report.rows_undone += (undo.len() - 1) as u64;
        }
        self.journal = Some(Journal {
            next_seq: summary.max_seq + 1,
            last_checkpoint_seq: from,
            dropped_below: 0,
        });
        tracing::info!(
            database = %db,
            frontier = report.frontier,
            checkpoint_batch = ?report.checkpoint_batch,
            redone = report.inserts_redone,
            undone = report.inserts_undone,
            "ClickHouse sink resumes"
        );
        Ok(report)
    }

    /// Errors while an INSERT of this database's sinks (an earlier run's) still runs on the
    /// server, so that its outcome is settled before the markers are read.
    async fn wait_until_earlier_runs_finished(&self) -> Result<(), ClickHouseError> {
        let sql = format!(
            "SELECT count() FROM system.processes WHERE substring(query_id, 1, {}) = ?",
            self.id_prefix.len()
        );
        let running = self
            .fetch_one(&sql, &[&self.id_prefix], "check system.processes")
            .await?;
        if running > 0 {
            return Err(ClickHouseError::Protocol {
                context: "resume".into(),
                message: format!("{running} INSERT(s) of an earlier run still running"),
            });
        }
        Ok(())
    }

    /// Adds time a write spent retrying to `adflow_sink_unavailable_seconds_total` (whole
    /// seconds; the milliseconds below a second carry over to the next span).
    fn count_unavailable(&self, d: Duration) {
        let ms = d.as_millis().min(u64::MAX as u128) as u64;
        let before = self
            .shared
            .counters
            .unavailable_ms
            .fetch_add(ms, Ordering::Relaxed);
        let secs = (before + ms) / 1000 - before / 1000;
        if secs > 0 {
            metrics::counter!("adflow_sink_unavailable_seconds_total", "sink" => SINK_NAME)
                .increment(secs);
        }
    }

    async fn insert_exactly_once(
        &self,
        target: Target<'_>,
        id: &str,
    ) -> Result<(), ClickHouseError> {
        let retry = &self.config.retry;
        let mut backoff = Duration::from_millis(retry.initial_backoff_ms);
        let max_backoff = Duration::from_millis(retry.max_backoff_ms);
        let mut attempts = 0u32;
        let mut uncertain = false;
        let mut first_failure: Option<Instant> = None;
        let table = target.name();
        loop {
            let step = async {
                if uncertain {
                    self.wait_until_not_running(id).await?;
                    if self.present(target, id).await? {
                        return Ok(true);
                    }
                }
                // Fault tests (`FAILPOINTS`, docs/operations.md): this attempt fails like a
                // dropped connection, and the retry below must recover it.
                fail::fail_point!("sink::clickhouse::insert", |_| {
                    tracing::warn!(
                        fail_point = "sink::clickhouse::insert",
                        table,
                        "fail point fired"
                    );
                    Err(ClickHouseError::client(
                        format!("insert into {}.{table}", self.config.database),
                        clickhouse::error::Error::Network(Box::new(std::io::Error::other(
                            "injected fault (fail point sink::clickhouse::insert)",
                        ))),
                    ))
                });
                self.insert_once(target, id).await?;
                Ok::<bool, ClickHouseError>(false)
            };
            match step.await {
                Ok(found) => {
                    if found {
                        tracing::info!(
                            table,
                            id,
                            "INSERT with unknown outcome was applied; not resending"
                        );
                        self.shared
                            .counters
                            .inserts_found_applied
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if attempts > 0 {
                        tracing::info!(
                            table,
                            id,
                            attempts,
                            "ClickHouse write succeeded after retries"
                        );
                    }
                    if let Some(at) = first_failure {
                        self.count_unavailable(at.elapsed());
                    }
                    return Ok(());
                }
                Err(e) => {
                    uncertain = true;
                    first_failure.get_or_insert_with(Instant::now);
                    self.failed_attempt(&mut attempts, retry, &e)?;
                    if self.shared.abort.load(Ordering::Acquire) {
                        return Err(ClickHouseError::WriterStopped(
                            "sink dropped while retrying".into(),
                        ));
                    }
                    tracing::warn!(table, id, attempts, backoff_ms = backoff.as_millis() as u64, error = %e, "ClickHouse write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    async fn present(&self, target: Target<'_>, id: &str) -> Result<bool, ClickHouseError> {
        match target {
            Target::Table(table, _) => self.marker_present(table, id).await,
            Target::Journal(seq, _) => {
                let sql = format!(
                    "SELECT count() FROM {} WHERE seq = {seq} AND batch_id = ?",
                    qualified(&self.config.database, JOURNAL_TABLE)
                );
                Ok(self.fetch_one(&sql, &[id], "check journal batch").await? > 0)
            }
        }
    }

    async fn insert_once(&self, target: Target<'_>, id: &str) -> Result<(), ClickHouseError> {
        macro_rules! send {
            ($v:expr, $t:ty) => {
                self.send_rows::<$t>(target.name(), $v, id).await
            };
        }
        match target {
            Target::Journal(_, rows) => send!(rows, JournalRow),
            Target::Table(_, rows) => match rows {
                TableRows::Attribution(v) => send!(v, crate::rows::AttributionCh),
                TableRows::OrderStatus(v) => send!(v, crate::rows::OrderStatusCh),
                TableRows::CampaignMetrics(v) => send!(v, crate::rows::CampaignMetricsCh),
                TableRows::Anomalies(v) => send!(v, crate::rows::AnomalyCh),
                TableRows::Triggers(v) => send!(v, crate::rows::TriggerCh),
                TableRows::SuppressedPersons(v) => send!(v, crate::rows::SuppressedPersonCh),
                TableRows::DeadLetters(v) => send!(v, crate::rows::DeadLetterCh),
            },
        }
    }

    async fn send_rows<T>(&self, table: &str, rows: &[T], id: &str) -> Result<(), ClickHouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        let context = || format!("insert into {}.{}", self.config.database, table);
        let timeout = self.config.request_timeout();
        let mut insert = self
            .client
            .insert::<T>(table)
            .await
            .map_err(|e| ClickHouseError::client(context(), e))?
            .with_setting("query_id", id)
            .with_timeouts(Some(timeout), Some(timeout));
        for row in rows {
            insert
                .write(row)
                .await
                .map_err(|e| ClickHouseError::client(context(), e))?;
        }
        insert
            .end()
            .await
            .map_err(|e| ClickHouseError::client(context(), e))
    }

    /// Errors while a query with `id` still runs on the server (so the caller backs off).
    async fn wait_until_not_running(&self, id: &str) -> Result<(), ClickHouseError> {
        let running: u64 = self
            .fetch_one(
                "SELECT count() FROM system.processes WHERE query_id = ?",
                &[id],
                "check system.processes",
            )
            .await?;
        if running > 0 {
            return Err(ClickHouseError::Protocol {
                context: format!("insert {id}"),
                message: "the previous attempt is still running on the server".into(),
            });
        }
        Ok(())
    }

    async fn marker_present(&self, table: Table, id: &str) -> Result<bool, ClickHouseError> {
        let sql = format!(
            "SELECT count() FROM {} WHERE batch_marker = ?",
            qualified(&self.config.database, table.name())
        );
        let n: u64 = self.fetch_one(&sql, &[id], "check batch marker").await?;
        Ok(n > 0)
    }

    async fn fetch_one(
        &self,
        sql: &str,
        args: &[&str],
        what: &str,
    ) -> Result<u64, ClickHouseError> {
        let timeout = self.config.request_timeout();
        let mut query = self.client.query(sql);
        for arg in args {
            query = query.bind(*arg);
        }
        match tokio::time::timeout(timeout, query.fetch_one::<u64>()).await {
            Ok(r) => r.map_err(|e| ClickHouseError::client(what, e)),
            Err(_) => Err(ClickHouseError::Timeout {
                context: what.into(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    async fn fetch_row<T>(&self, sql: &str) -> Result<T, ClickHouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let timeout = self.config.request_timeout();
        match tokio::time::timeout(timeout, self.client.query(sql).fetch_one::<T>()).await {
            Ok(r) => r.map_err(|e| ClickHouseError::client("read the journal", e)),
            Err(_) => Err(ClickHouseError::Timeout {
                context: "read the journal".into(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

/// The table and rows of a journal row that records an INSERT.
fn decode_chunk(r: &JournalRow) -> Result<(Table, TableRows), ClickHouseError> {
    let bad = |m: String| {
        ClickHouseError::Resume(format!("journal batch {} ({}): {m}", r.seq, r.insert_id))
    };
    let table = Table::from_name(&r.table_name)
        .ok_or_else(|| bad(format!("unknown table {:?}", r.table_name)))?;
    let rows: TableRows =
        serde_json::from_str(&r.payload).map_err(|e| bad(format!("unreadable rows: {e}")))?;
    if rows.table() != table {
        return Err(bad(format!(
            "rows of {} recorded for {table}",
            rows.table()
        )));
    }
    Ok((table, rows))
}

/// Sums signs per (row, version) and drops the zeros; grouped by table, rows in a fixed order.
pub(crate) fn consolidate(batch: Vec<Change>) -> BTreeMap<Table, Vec<(Change, i64)>> {
    let mut sums: HashMap<(OutputRow, i64), i64> = HashMap::with_capacity(batch.len());
    for c in batch {
        *sums.entry((c.row, c.version)).or_insert(0) += c.sign;
    }
    let mut by_table: BTreeMap<Table, Vec<(Change, i64)>> = BTreeMap::new();
    for ((row, version), net) in sums {
        if net != 0 {
            by_table.entry(row.table()).or_default().push((
                Change {
                    row,
                    version,
                    sign: net.signum(),
                },
                net,
            ));
        }
    }
    for v in by_table.values_mut() {
        v.sort_by(|a, b| (a.0.version, &a.0.row).cmp(&(b.0.version, &b.0.row)));
    }
    by_table
}

fn run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{nanos:x}{:x}{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use adflow_model::output::SuppressedPersonRow;

    fn sp(p: &str, since: i64, version: i64, sign: i64) -> Change {
        Change {
            row: OutputRow::SuppressedPerson(SuppressedPersonRow {
                person_id: p.into(),
                reason: "stalled_parcel".into(),
                since_ts: since,
            }),
            version,
            sign,
        }
    }

    #[test]
    fn batches_are_cut_between_versions_at_the_cap() {
        let versions = |b: &[Change]| b.iter().map(|c| c.version).collect::<Vec<_>>();
        let mk = |vs: &[i64]| vs.iter().map(|&v| sp("a", 1, v, 1)).collect::<Vec<_>>();
        // Fits: no cut.
        assert_eq!(batch_cut(&mut mk(&[3, 1, 2]), 3), None);
        // Sorted by version, cut exactly at the cap when a version ends there.
        let mut b = mk(&[4, 1, 2, 2, 3]);
        assert_eq!(batch_cut(&mut b, 3), Some(3));
        assert_eq!(versions(&b), vec![1, 2, 2, 3, 4]);
        // A version that runs past the cap goes to the next batch ...
        assert_eq!(batch_cut(&mut mk(&[1, 2, 2, 2, 3]), 3), Some(1));
        // ... unless it is the first one: then it is written whole.
        assert_eq!(batch_cut(&mut mk(&[2, 2, 2, 2, 3]), 3), Some(4));
        assert_eq!(batch_cut(&mut mk(&[2, 2, 2, 2]), 3), None);
    }

    #[test]
    fn consolidation_cancels_same_row_same_version_only() {
        let out = consolidate(vec![
            sp("a", 1, 10, 1),
            sp("a", 1, 10, -1),
            sp("b", 1, 10, 1),
            sp("b", 1, 11, -1),
            sp("c", 1, 10, 1),
            sp("c", 1, 10, 1),
        ]);
        let rows = &out[&Table::SuppressedPersons];
        let got: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|(c, n)| match &c.row {
                OutputRow::SuppressedPerson(r) => (r.person_id.clone(), c.version, *n),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".to_string(), 10, 1),
                ("c".to_string(), 10, 2),
                ("b".to_string(), 11, -1)
            ]
        );
    }

    #[test]
    fn run_ids_differ() {
        assert_ne!(run_id(), run_id());
    }
}
