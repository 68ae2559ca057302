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

use crate::config::ClickHouseConfig;
use crate::error::ClickHouseError;
use crate::rows::TableRows;
use crate::schema::qualified;
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
}

#[derive(Default)]
struct Counters {
    changes_received: AtomicU64,
    rows_written: AtomicU64,
    changes_cancelled: AtomicU64,
    inserts: AtomicU64,
    failed_attempts: AtomicU64,
    inserts_found_applied: AtomicU64,
}

struct State {
    pending: Vec<Change>,
    /// When the oldest pending change arrived.
    pending_since: Option<Instant>,
    /// Largest frontier handed over.
    frontier: i64,
    /// A batch is being written.
    in_flight: bool,
    /// Callers waiting in `flush`.
    flush_waiters: usize,
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
}

impl ClickHouseSink {
    /// Validates `config`, applies the schema when `config.apply_schema` is set, and starts the
    /// background writer. Does not require the server to be up (unless `apply_schema`): writes
    /// are retried until it is.
    pub fn new(config: ClickHouseConfig) -> Result<Self, ClickHouseError> {
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
                pending_since: None,
                frontier: i64::MIN,
                in_flight: false,
                flush_waiters: 0,
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
        let writer = Writer::new(config, shared.clone());
        let handle = std::thread::Builder::new()
            .name("adflow-clickhouse-sink".into())
            .spawn(move || writer.run(runtime))
            .map_err(ClickHouseError::Start)?;
        Ok(ClickHouseSink {
            shared,
            writer: Some(handle),
            max_pending_rows,
        })
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
        }
    }

    /// Writes everything handed over, then stops the writer. Fails if the writer failed.
    pub fn close(mut self) -> Result<(), SinkError> {
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
        if n > 0 && st.pending.is_empty() {
            st.pending_since = Some(Instant::now());
        }
        st.pending.extend(changes);
        st.frontier = st.frontier.max(frontier);
        self.shared
            .counters
            .changes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        drop(st);
        self.shared.work.notify_all();
        Ok(())
    }

    /// Sends what is buffered now and blocks until everything handed over so far is durable.
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

    fn durable_frontier(&self) -> i64 {
        self.shared.durable.load(Ordering::Acquire)
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

/// The background writer: owns the client and the tokio runtime.
struct Writer {
    config: ClickHouseConfig,
    client: clickhouse::Client,
    shared: Arc<Shared>,
    /// Unique per sink instance: batch ids never repeat across restarts.
    run_id: String,
    seq: u64,
}

impl Writer {
    fn new(config: ClickHouseConfig, shared: Arc<Shared>) -> Self {
        let client = config.client().with_database(config.database.clone());
        Writer {
            config,
            client,
            shared,
            run_id: run_id(),
            seq: 0,
        }
    }

    fn run(mut self, runtime: tokio::runtime::Runtime) {
        let batch_ms = Duration::from_millis(self.config.batch_ms);
        loop {
            let (batch, frontier) = {
                let mut st = self.shared.lock();
                loop {
                    if self.shared.abort.load(Ordering::Acquire) || st.failed.is_some() {
                        return;
                    }
                    let durable = self.shared.durable.load(Ordering::Acquire);
                    let age = st.pending_since.map(|t| t.elapsed()).unwrap_or_default();
                    let due = !st.pending.is_empty()
                        && (st.pending.len() >= self.config.batch_rows
                            || age >= batch_ms
                            || st.flush_waiters > 0
                            || st.shutdown);
                    if due || (st.pending.is_empty() && st.frontier > durable) {
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
                st.pending_since = None;
                (std::mem::take(&mut st.pending), st.frontier)
            };
            self.shared.progress.notify_all();
            let result = runtime.block_on(self.write_batch(batch, frontier));
            let mut st = self.shared.lock();
            st.in_flight = false;
            match result {
                Ok(()) => self.shared.durable.store(frontier, Ordering::Release),
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

    /// Consolidates `batch` and writes it table by table, in chunks of `batch_rows`.
    async fn write_batch(
        &mut self,
        batch: Vec<Change>,
        frontier: i64,
    ) -> Result<(), ClickHouseError> {
        if batch.is_empty() {
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
        for (table, changes) in by_table {
            let mut rows = TableRows::new(table);
            let mut data_rows = 0usize;
            for (change, net) in &changes {
                let sign: i8 = if *net > 0 { 1 } else { -1 };
                for _ in 0..net.unsigned_abs() {
                    if data_rows == self.config.batch_rows {
                        self.insert_chunk(table, &mut rows, frontier).await?;
                        data_rows = 0;
                    }
                    rows.push(change, sign);
                    data_rows += 1;
                }
            }
            if data_rows > 0 {
                self.insert_chunk(table, &mut rows, frontier).await?;
            }
        }
        Ok(())
    }

    /// Adds the marker to `rows`, writes them exactly once, and leaves `rows` empty.
    async fn insert_chunk(
        &mut self,
        table: Table,
        rows: &mut TableRows,
        frontier: i64,
    ) -> Result<(), ClickHouseError> {
        self.seq += 1;
        let id = format!("adflow-{}-{}-{}", self.run_id, self.seq, table.name());
        let data_rows = rows.len();
        rows.push_marker(&id, frontier);
        self.insert_exactly_once(table, rows, &id).await?;
        let c = &self.shared.counters;
        c.rows_written
            .fetch_add(data_rows as u64, Ordering::Relaxed);
        c.inserts.fetch_add(1, Ordering::Relaxed);
        *rows = TableRows::new(table);
        Ok(())
    }

    async fn insert_exactly_once(
        &self,
        table: Table,
        rows: &TableRows,
        id: &str,
    ) -> Result<(), ClickHouseError> {
        let retry = &self.config.retry;
        let mut backoff = Duration::from_millis(retry.initial_backoff_ms);
        let max_backoff = Duration::from_millis(retry.max_backoff_ms);
        let mut attempts = 0u32;
        let mut uncertain = false;
        loop {
            let step = async {
                if uncertain {
                    self.wait_until_not_running(id).await?;
                    if self.marker_present(table, id).await? {
                        return Ok(true);
                    }
                }
                self.insert_once(table, rows, id).await?;
                Ok::<bool, ClickHouseError>(false)
            };
            match step.await {
                Ok(found) => {
                    if found {
                        tracing::info!(table = %table, id, "INSERT with unknown outcome was applied; not resending");
                        self.shared
                            .counters
                            .inserts_found_applied
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if attempts > 0 {
                        tracing::info!(table = %table, id, attempts, "ClickHouse write succeeded after retries");
                    }
                    return Ok(());
                }
                Err(e) => {
                    uncertain = true;
                    attempts += 1;
                    self.shared
                        .counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    if retry.max_attempts.is_some_and(|max| attempts >= max) {
                        return Err(ClickHouseError::GaveUp {
                            attempts,
                            last_error: e.to_string(),
                        });
                    }
                    if self.shared.abort.load(Ordering::Acquire) {
                        return Err(ClickHouseError::WriterStopped(
                            "sink dropped while retrying".into(),
                        ));
                    }
                    tracing::warn!(table = %table, id, attempts, backoff_ms = backoff.as_millis() as u64, error = %e, "ClickHouse write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    async fn insert_once(
        &self,
        table: Table,
        rows: &TableRows,
        id: &str,
    ) -> Result<(), ClickHouseError> {
        macro_rules! send {
            ($v:expr, $t:ty) => {
                self.send_rows::<$t>(table, $v, id).await
            };
        }
        match rows {
            TableRows::Attribution(v) => send!(v, crate::rows::AttributionCh),
            TableRows::OrderStatus(v) => send!(v, crate::rows::OrderStatusCh),
            TableRows::CampaignMetrics(v) => send!(v, crate::rows::CampaignMetricsCh),
            TableRows::Anomalies(v) => send!(v, crate::rows::AnomalyCh),
            TableRows::Triggers(v) => send!(v, crate::rows::TriggerCh),
            TableRows::SuppressedPersons(v) => send!(v, crate::rows::SuppressedPersonCh),
            TableRows::DeadLetters(v) => send!(v, crate::rows::DeadLetterCh),
        }
    }

    async fn send_rows<T>(&self, table: Table, rows: &[T], id: &str) -> Result<(), ClickHouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        let context = || format!("insert into {}.{}", self.config.database, table.name());
        let timeout = self.config.request_timeout();
        let mut insert = self
            .client
            .insert::<T>(table.name())
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
                id,
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
        let n: u64 = self.fetch_one(&sql, id, "check batch marker").await?;
        Ok(n > 0)
    }

    async fn fetch_one(&self, sql: &str, arg: &str, what: &str) -> Result<u64, ClickHouseError> {
        let timeout = self.config.request_timeout();
        let fut = self.client.query(sql).bind(arg).fetch_one::<u64>();
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(|e| ClickHouseError::client(what, e)),
            Err(_) => Err(ClickHouseError::Timeout {
                context: what.into(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
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
