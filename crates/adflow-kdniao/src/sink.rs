//! Handing track events on: the [`TrackPublisher`] trait, its file implementation, and
//! [`TrackSink`], which deduplicates against a durable record of emitted event ids.
//!
//! Order of durability: events are first published (file appended and fsync'd, or the
//! Kafka producer's delivery confirmed), then their ids are appended (and fsync'd) to
//! `emitted.jsonl` in the state directory. A crash between the two can re-emit the same
//! events with the same `event_id`s, which the pipeline's dedup absorbs (at-least-once);
//! it can never lose one.
//!
//! A trace that cannot become an event (its time does not parse) becomes a dead letter
//! ([`crate::dead_letter`]): appended to `dead_letters.jsonl` in the state directory and
//! fsync'd before the events of the same call are published, once per distinct trace.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::answer::KdniaoAnswer;
use crate::dead_letter::{DeadLetterRecord, DEAD_LETTERS_FILE};
use crate::error::{KdniaoError, PublishError};
use crate::track::{answer_to_events, BadTrace, TraceRole, TrackEvent};

/// The future a [`TrackPublisher`] returns.
pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>>;

/// Where track events go. `publish` must return `Ok` only once the events are durable
/// (fsync'd, or acknowledged by all in-sync Kafka replicas): the receiver answers Kdniao's
/// push with `Success:true` only after that. A Kafka implementation keys each message by
/// [`TrackEvent::logistic_code`] and sends [`TrackEvent::to_json_line`] to the `logistics`
/// topic.
pub trait TrackPublisher: Send + Sync {
    /// Hands `events` on durably, in order.
    fn publish<'a>(&'a self, events: &'a [TrackEvent]) -> PublishFuture<'a>;
    /// A short description for logs (no secrets).
    fn describe(&self) -> String;
}

/// Appends events to `DIR/logistics.jsonl` and fsyncs.
#[derive(Debug, Clone)]
pub struct FilePublisher {
    path: PathBuf,
}

impl FilePublisher {
    /// A publisher appending to `dir/logistics.jsonl` (the directory is created).
    pub fn new(dir: &Path) -> Result<Self, KdniaoError> {
        std::fs::create_dir_all(dir).map_err(|e| KdniaoError::io(dir, e))?;
        Ok(FilePublisher {
            path: dir.join("logistics.jsonl"),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TrackPublisher for FilePublisher {
    fn publish<'a>(&'a self, events: &'a [TrackEvent]) -> PublishFuture<'a> {
        let mut buf = String::new();
        for e in events {
            buf.push_str(&e.to_json_line());
            buf.push('\n');
        }
        let path = self.path.clone();
        Box::pin(async move {
            if buf.is_empty() {
                return Ok(());
            }
            let p2 = path.clone();
            tokio::task::spawn_blocking(move || append_synced(&p2, buf.as_bytes()))
                .await
                .map_err(|e| PublishError::Other(format!("writer task failed: {e}")))?
                .map_err(|source| PublishError::Io { path, source })
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// [`append_synced`] on a blocking thread.
async fn append_synced_async(path: PathBuf, buf: String) -> Result<(), PublishError> {
    let p2 = path.clone();
    tokio::task::spawn_blocking(move || append_synced(&p2, buf.as_bytes()))
        .await
        .map_err(|e| PublishError::Other(format!("writer task failed: {e}")))?
        .map_err(|source| PublishError::Io { path, source })
}

/// Appends `bytes` to `path` (created if missing) and fsyncs the file.
pub(crate) fn append_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// One line of `emitted.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EmittedRecord {
    id: String,
    lc: String,
    ts: i64,
    code: String,
}

/// What the sink knows about one waybill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaybillStatus {
    /// Time of the latest emitted track event (epoch ms).
    pub latest_ts: i64,
    /// Code of that event.
    pub latest_code: String,
}

#[derive(Debug, Default)]
struct Store {
    ids: HashSet<String>,
    trace_keys: HashSet<(String, i64)>,
    status: HashMap<String, WaybillStatus>,
    /// Ids of the dead letters in `dead_letters.jsonl`.
    dead_ids: HashSet<String>,
}

impl Store {
    fn note(&mut self, id: &str, lc: &str, ts: i64, code: &str) {
        self.ids.insert(id.to_string());
        self.trace_keys.insert((lc.to_string(), ts));
        let newer = self.status.get(lc).is_none_or(|s| ts >= s.latest_ts);
        if newer {
            self.status.insert(
                lc.to_string(),
                WaybillStatus {
                    latest_ts: ts,
                    latest_code: code.to_string(),
                },
            );
        }
    }
}

/// Counters of a [`TrackSink`].
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Events written.
    pub events_written: AtomicU64,
    /// Events dropped because their `event_id` was already emitted.
    pub duplicates: AtomicU64,
    /// Inferred events dropped because their (waybill, time) was already emitted.
    pub inferred_suppressed: AtomicU64,
    /// Traces skipped for an unparseable (or missing) time, every time one is seen: a
    /// re-pushed bad trace counts again.
    pub bad_traces: AtomicU64,
    /// Dead letters written: distinct bad traces, each once.
    pub dead_letters: AtomicU64,
    /// Items skipped as unusable.
    pub rejected_items: AtomicU64,
}

/// What one [`TrackSink::ingest`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Events handed on.
    pub written: Vec<TrackEvent>,
    /// Events already emitted before.
    pub duplicates: usize,
    /// Inferred events suppressed.
    pub suppressed: usize,
    /// Traces skipped.
    pub bad_traces: Vec<BadTrace>,
    /// Dead letters written by this call (bad traces not seen before).
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Items skipped, with reasons.
    pub rejected_items: Vec<String>,
}

/// Deduplicating, durable track-event sink shared by the receiver, the poller and
/// `replay-failed`. Calls are serialized.
pub struct TrackSink {
    publisher: Arc<dyn TrackPublisher>,
    emitted_path: PathBuf,
    dead_letters_path: PathBuf,
    store: Mutex<Store>,
    /// Counters.
    pub metrics: SinkMetrics,
}

impl std::fmt::Debug for TrackSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackSink")
            .field("publisher", &self.publisher.describe())
            .field("emitted_path", &self.emitted_path)
            .field("dead_letters_path", &self.dead_letters_path)
            .finish()
    }
}

impl TrackSink {
    /// Opens the sink: loads `state_dir/emitted.jsonl` and the ids of
    /// `state_dir/dead_letters.jsonl` (each created on first write). Unreadable lines in
    /// them are skipped with a warning.
    pub fn open(publisher: Arc<dyn TrackPublisher>, state_dir: &Path) -> Result<Self, KdniaoError> {
        std::fs::create_dir_all(state_dir).map_err(|e| KdniaoError::io(state_dir, e))?;
        let emitted_path = state_dir.join("emitted.jsonl");
        let mut store = Store::default();
        match std::fs::File::open(&emitted_path) {
            Ok(f) => {
                for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                    let line = line.map_err(|e| KdniaoError::io(&emitted_path, e))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<EmittedRecord>(&line) {
                        Ok(r) => store.note(&r.id, &r.lc, r.ts, &r.code),
                        Err(e) => {
                            tracing::warn!(line = n + 1, error = %e, "skipping unreadable emitted-id record")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KdniaoError::io(&emitted_path, e)),
        }
        let dead_letters_path = state_dir.join(DEAD_LETTERS_FILE);
        store.dead_ids = load_dead_letter_ids(&dead_letters_path)?;
        tracing::info!(publisher = %publisher.describe(), known_ids = store.ids.len(), dead_letters = store.dead_ids.len(), "track sink opened");
        Ok(TrackSink {
            publisher,
            emitted_path,
            dead_letters_path,
            store: Mutex::new(store),
            metrics: SinkMetrics::default(),
        })
    }

    /// Converts `answers`, writes the dead letters of bad traces not seen before, drops
    /// what was already emitted, publishes the rest durably and records their ids. Returns
    /// only after all of it is durable; on an error nothing of what failed is recorded, so
    /// a retry of the same answers writes it again.
    pub async fn ingest(&self, answers: &[KdniaoAnswer]) -> Result<IngestReport, PublishError> {
        let mut store = self.store.lock().await;
        let mut report = IngestReport::default();
        let mut batch_ids = HashSet::new();
        let mut batch_keys = HashSet::new();
        let seen_ts = chrono::Utc::now().timestamp_millis();
        let mut batch_dead = HashSet::new();
        for answer in answers {
            let conv = answer_to_events(answer);
            for bad in &conv.bad_traces {
                let letter = DeadLetterRecord::from_bad_trace(bad, seen_ts);
                if store.dead_ids.contains(&letter.id) || !batch_dead.insert(letter.id.clone()) {
                    tracing::debug!(position = %letter.position, "bad trace already a dead letter");
                    continue;
                }
                tracing::warn!(position = %letter.position, reason = %letter.reason, "bad trace becomes a dead letter");
                report.dead_letters.push(letter);
            }
            report.bad_traces.extend(conv.bad_traces);
            if let Some(r) = conv.rejected {
                tracing::warn!(reason = %r, "skipping unusable item");
                report.rejected_items.push(r);
            }
            for (event, role) in conv.events {
                let key = (event.logistic_code.clone(), event.ts);
                if store.ids.contains(&event.event_id) || batch_ids.contains(&event.event_id) {
                    report.duplicates += 1;
                    continue;
                }
                if role == TraceRole::Inferred
                    && (store.trace_keys.contains(&key) || batch_keys.contains(&key))
                {
                    report.suppressed += 1;
                    continue;
                }
                batch_ids.insert(event.event_id.clone());
                batch_keys.insert(key);
                report.written.push(event);
            }
        }
        self.metrics
            .bad_traces
            .fetch_add(report.bad_traces.len() as u64, Ordering::Relaxed);
        self.metrics
            .rejected_items
            .fetch_add(report.rejected_items.len() as u64, Ordering::Relaxed);
        self.metrics
            .duplicates
            .fetch_add(report.duplicates as u64, Ordering::Relaxed);
        self.metrics
            .inferred_suppressed
            .fetch_add(report.suppressed as u64, Ordering::Relaxed);
        if !report.dead_letters.is_empty() {
            let mut buf = String::new();
            for d in &report.dead_letters {
                buf.push_str(&d.to_json_line());
                buf.push('\n');
            }
            append_synced_async(self.dead_letters_path.clone(), buf).await?;
            for d in &report.dead_letters {
                store.dead_ids.insert(d.id.clone());
            }
            self.metrics
                .dead_letters
                .fetch_add(report.dead_letters.len() as u64, Ordering::Relaxed);
        }
        if report.written.is_empty() {
            return Ok(report);
        }
        self.publisher.publish(&report.written).await?;
        let mut buf = String::new();
        for e in &report.written {
            let rec = EmittedRecord {
                id: e.event_id.clone(),
                lc: e.logistic_code.clone(),
                ts: e.ts,
                code: e.code().to_string(),
            };
            buf.push_str(&serde_json::to_string(&rec).unwrap_or_default());
            buf.push('\n');
        }
        append_synced_async(self.emitted_path.clone(), buf).await?;
        for e in &report.written {
            store.note(&e.event_id, &e.logistic_code, e.ts, e.code());
        }
        self.metrics
            .events_written
            .fetch_add(report.written.len() as u64, Ordering::Relaxed);
        tracing::info!(
            written = report.written.len(),
            duplicates = report.duplicates,
            suppressed = report.suppressed,
            "track events handed on"
        );
        Ok(report)
    }

    /// The dead-letter file (`<state_dir>/dead_letters.jsonl`).
    pub fn dead_letters_path(&self) -> &Path {
        &self.dead_letters_path
    }

    /// The latest emitted state of a waybill, if any.
    pub async fn status(&self, logistic_code: &str) -> Option<WaybillStatus> {
        self.store.lock().await.status.get(logistic_code).cloned()
    }
}

/// The ids in a dead-letter file (none when it does not exist yet).
fn load_dead_letter_ids(path: &Path) -> Result<HashSet<String>, KdniaoError> {
    let mut ids = HashSet::new();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(KdniaoError::io(path, e)),
    };
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| KdniaoError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<DeadLetterRecord>(&line) {
            Ok(r) => {
                ids.insert(r.id);
            }
            Err(e) => {
                tracing::warn!(line = n + 1, error = %e, "skipping unreadable dead-letter record")
            }
        }
    }
    Ok(ids)
}
