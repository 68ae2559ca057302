//! The durable outbox: every action the pipeline decided, by id, and what became of it.
//!
//! A directory with two append-only logs of JSON lines:
//! - `outbox.jsonl`, written by the sink (the engine's thread): `{"op":"add",...}` when an
//!   action is decided (its id, kind, time and the body to send), `{"op":"cancel","id":...}`
//!   when the row that decided it was retracted before it was sent. Synced at every sink
//!   flush, i.e. before the engine's checkpoint covering it is committed.
//! - `deliveries.jsonl`, written by the delivery threads and `adflow actions replay-failed`:
//!   `attempt` before each call, then one outcome — `delivered`, `failed` (after the retries;
//!   the failed queue), `dry_run` (a pause not enabled), `expired` (older than `max_age`).
//!   Each record is written (one `write`, so a process that dies keeps it) before the next
//!   call of its thread; the log is synced with every sink flush and when delivery stops.
//!
//! An id that has an outcome is never sent again by the pipeline (`replay-failed` resends
//! `failed` ones). An id whose last record is an `attempt` without an outcome was being sent
//! when the process died: the receiver may or may not have got it. It is sent again, with the
//! same `X-Adflow-Delivery-Id`, and counted as a redelivery; receivers deduplicate by that
//! header (docs/actions.md).
//!
//! Lines are appended with one `write` each; a torn last line (a crash in the middle of a
//! write) is dropped on open, a malformed line elsewhere is an error.

use crate::ActionError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The log the sink appends to.
pub const OUTBOX_FILE: &str = "outbox.jsonl";
/// The log of attempts and outcomes.
pub const DELIVERIES_FILE: &str = "deliveries.jsonl";

/// What kind of call an action is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// A `triggers` row, to the trigger webhook.
    Trigger,
    /// An operator alert, to the WeCom robot or the alert webhook.
    Alert,
    /// A campaign pause.
    PauseCampaign,
}

impl ActionKind {
    /// Every kind.
    pub const ALL: [ActionKind; 3] = [
        ActionKind::Trigger,
        ActionKind::Alert,
        ActionKind::PauseCampaign,
    ];

    /// The label in metrics and logs: `trigger`, `alert`, `pause_campaign`.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Trigger => "trigger",
            ActionKind::Alert => "alert",
            ActionKind::PauseCampaign => "pause_campaign",
        }
    }
}

/// The final fate of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Failed,
    DryRun,
    Expired,
}

/// A line of `outbox.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum OutboxRecord {
    Add {
        id: String,
        action: ActionKind,
        /// The event time that decided it (a trigger's `due_ts`, an anomaly's `opened_ts`).
        at: i64,
        body: serde_json::Value,
    },
    Cancel {
        id: String,
    },
    /// Written by [`Outbox::compact`]: an entry's whole state in one line.
    Snapshot {
        id: String,
        action: ActionKind,
        at: i64,
        body: serde_json::Value,
        present: bool,
        outcome: Option<Outcome>,
        attempts: u32,
        interrupted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
    },
}

/// A line of `deliveries.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: String,
    /// `attempt`, or an [`Outcome`] name.
    pub outcome: String,
    /// Attempts so far (with this one).
    #[serde(default)]
    pub attempts: u32,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall clock, epoch ms.
    pub wall_ms: i64,
}

/// One action as the outbox knows it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub action: ActionKind,
    pub at: i64,
    pub body: serde_json::Value,
    /// The deciding row is currently present (not retracted).
    pub present: bool,
    /// Its final fate, once it has one.
    pub outcome: Option<Outcome>,
    /// Attempts recorded (over all runs).
    pub attempts: u32,
    /// The last record is an attempt without an outcome (a crash in the middle of a call).
    pub interrupted: bool,
    /// The last error, for the failed queue.
    pub last_error: Option<String>,
}

impl Entry {
    /// A new action, present, never attempted.
    fn new(action: ActionKind, at: i64) -> Entry {
        Entry {
            action,
            at,
            body: serde_json::Value::Null,
            present: true,
            outcome: None,
            attempts: 0,
            interrupted: false,
            last_error: None,
        }
    }

    /// Whether it still has to be sent.
    pub fn pending(&self) -> bool {
        self.present && self.outcome.is_none()
    }
}

/// The outbox of one directory: the entries by id and the two logs.
pub struct Outbox {
    dir: PathBuf,
    entries: HashMap<String, Entry>,
    outbox: File,
    deliveries: File,
    /// `outbox.jsonl` has lines not yet synced.
    unsynced: bool,
    /// `deliveries.jsonl` has lines not yet synced.
    deliveries_unsynced: bool,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ActionError + '_ {
    move |source| ActionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the JSON lines of `path` (missing: none). A last line without its newline is a torn
/// write: it is cut off the file. Any other malformed line is an error.
pub(crate) fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, ActionError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        tracing::warn!(file = %path.display(), bytes = text.len() - complete, "dropping a torn last line");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(complete as u64).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    let mut out = Vec::new();
    for (n, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(
            serde_json::from_slice(line).map_err(|e| ActionError::Corrupt {
                path: path.to_path_buf(),
                line: n + 1,
                message: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

fn append_file(path: &Path) -> Result<File, ActionError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Outbox {
    /// Opens (creating) the outbox in `dir` and loads both logs.
    pub fn open(dir: &Path) -> Result<Outbox, ActionError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let op = dir.join(OUTBOX_FILE);
        let dp = dir.join(DELIVERIES_FILE);
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut compacted = false;
        for r in read_lines::<OutboxRecord>(&op)? {
            match r {
                OutboxRecord::Add {
                    id,
                    action,
                    at,
                    body,
                } => {
                    let e = entries.entry(id).or_insert_with(|| Entry::new(action, at));
                    e.present = true;
                    e.at = at;
                    e.body = body;
                }
                OutboxRecord::Cancel { id } => {
                    if let Some(e) = entries.get_mut(&id) {
                        e.present = false;
                    }
                }
                OutboxRecord::Snapshot {
                    id,
                    action,
                    at,
                    body,
                    present,
                    outcome,
                    attempts,
                    interrupted,
                    last_error,
                } => {
                    compacted = true;
                    entries.insert(
                        id,
                        Entry {
                            action,
                            at,
                            body,
                            present,
                            outcome,
                            attempts,
                            interrupted,
                            last_error,
                        },
                    );
                }
            }
        }
        for r in read_lines::<DeliveryRecord>(&dp)? {
            let Some(e) = entries.get_mut(&r.id) else {
                if compacted {
                    // A crash between a compaction's two steps: the delivery of an entry it
                    // dropped (finished, older than `max_age`).
                    continue;
                }
                return Err(ActionError::Corrupt {
                    path: dp.clone(),
                    line: 0,
                    message: format!("a delivery of {:?}, which the outbox does not hold", r.id),
                });
            };
            e.attempts = e.attempts.max(r.attempts);
            e.interrupted = false;
            match r.outcome.as_str() {
                "attempt" => e.interrupted = true,
                "delivered" => e.outcome = Some(Outcome::Delivered),
                "failed" => {
                    e.outcome = Some(Outcome::Failed);
                    e.last_error = r.error;
                }
                "dry_run" => e.outcome = Some(Outcome::DryRun),
                "expired" => e.outcome = Some(Outcome::Expired),
                other => {
                    return Err(ActionError::Corrupt {
                        path: dp.clone(),
                        line: 0,
                        message: format!("unknown outcome {other:?}"),
                    })
                }
            }
        }
        Ok(Outbox {
            dir: dir.to_path_buf(),
            entries,
            outbox: append_file(&op)?,
            deliveries: append_file(&dp)?,
            unsynced: false,
            deliveries_unsynced: false,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of `id`.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    fn append_outbox(&mut self, r: &OutboxRecord) -> Result<(), ActionError> {
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        let path = self.dir.join(OUTBOX_FILE);
        self.outbox.write_all(&line).map_err(io(&path))?;
        self.unsynced = true;
        Ok(())
    }

    /// The deciding row is present: records the action if it is new, or present again if
    /// it was cancelled (a new body replaces the old one while it has not been sent).
    /// Returns whether it is now pending and was not before (it must be queued).
    pub fn add(
        &mut self,
        id: &str,
        action: ActionKind,
        at: i64,
        body: serde_json::Value,
    ) -> Result<bool, ActionError> {
        match self.entries.get(id) {
            Some(e) if e.present || e.outcome.is_some() => return Ok(false),
            _ => {}
        }
        self.append_outbox(&OutboxRecord::Add {
            id: id.to_string(),
            action,
            at,
            body: body.clone(),
        })?;
        let e = self
            .entries
            .entry(id.to_string())
            .or_insert_with(|| Entry::new(action, at));
        e.present = true;
        e.at = at;
        e.body = body;
        Ok(true)
    }

    /// The deciding row was retracted: an action not sent yet is cancelled (a call already
    /// made cannot be taken back). Returns whether it was cancelled.
    pub fn cancel(&mut self, id: &str) -> Result<bool, ActionError> {
        match self.entries.get(id) {
            Some(e) if e.pending() => {}
            _ => return Ok(false),
        }
        self.append_outbox(&OutboxRecord::Cancel { id: id.to_string() })?;
        if let Some(e) = self.entries.get_mut(id) {
            e.present = false;
        }
        Ok(true)
    }

    /// Drops every entry decided before `cutoff` (event time) that has an outcome or was
    /// cancelled, when there are at least `min_drop` of them, by rewriting `outbox.jsonl` as one
    /// snapshot line per kept entry (a temporary file, synced, renamed over it) and then
    /// emptying `deliveries.jsonl`. Only safe with `[actions] max_age` and `cutoff` at most
    /// `now − max_age`: an id decided again after it was dropped is then expired, never sent.
    /// Returns how many were dropped.
    pub fn compact(&mut self, cutoff: i64, min_drop: usize) -> Result<usize, ActionError> {
        let dropped: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.pending() && e.at < cutoff)
            .map(|(id, _)| id.clone())
            .collect();
        if dropped.is_empty() || dropped.len() < min_drop {
            return Ok(0);
        }
        for id in &dropped {
            self.entries.remove(id);
        }
        let op = self.dir.join(OUTBOX_FILE);
        let mut kept: Vec<(&String, &Entry)> = self.entries.iter().collect();
        kept.sort_by(|a, b| (a.1.at, a.0).cmp(&(b.1.at, b.0)));
        let mut text = Vec::new();
        for (id, e) in kept {
            serde_json::to_writer(
                &mut text,
                &OutboxRecord::Snapshot {
                    id: id.clone(),
                    action: e.action,
                    at: e.at,
                    body: e.body.clone(),
                    present: e.present,
                    outcome: e.outcome,
                    attempts: e.attempts,
                    interrupted: e.interrupted,
                    last_error: e.last_error.clone(),
                },
            )?;
            text.push(b'\n');
        }
        adflow_model::durable::replace_file(&op, &text).map_err(io(&op))?;
        self.outbox = append_file(&op)?;
        self.unsynced = false;
        let dp = self.dir.join(DELIVERIES_FILE);
        self.deliveries.set_len(0).map_err(io(&dp))?;
        self.deliveries.sync_all().map_err(io(&dp))?;
        self.deliveries_unsynced = false;
        tracing::info!(dir = %self.dir.display(), dropped = dropped.len(), kept = self.entries.len(), "outbox compacted");
        Ok(dropped.len())
    }

    /// A failed action is pending again, in memory (`replay-failed` sends it; its outcome is
    /// recorded as usual).
    pub fn reopen(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id) {
            if e.outcome == Some(Outcome::Failed) {
                e.outcome = None;
                e.present = true;
            }
        }
    }

    /// Makes both logs durable (the sink's flush, before its checkpoint is committed; the
    /// end of delivery).
    pub fn sync(&mut self) -> Result<(), ActionError> {
        if self.unsynced {
            let path = self.dir.join(OUTBOX_FILE);
            self.outbox.sync_data().map_err(io(&path))?;
            self.unsynced = false;
        }
        if self.deliveries_unsynced {
            let path = self.dir.join(DELIVERIES_FILE);
            self.deliveries.sync_data().map_err(io(&path))?;
            self.deliveries_unsynced = false;
        }
        Ok(())
    }

    /// Appends a delivery record. It is in the file (the page cache) when this returns, so a
    /// process that dies keeps it; [`Outbox::sync`] makes it durable against a power loss.
    pub fn record(
        &mut self,
        id: &str,
        outcome: Option<Outcome>,
        attempts: u32,
        status: Option<u16>,
        error: Option<String>,
    ) -> Result<(), ActionError> {
        self.record_raw(
            id,
            match outcome {
                None => "attempt",
                Some(Outcome::Delivered) => "delivered",
                Some(Outcome::Failed) => "failed",
                Some(Outcome::DryRun) => "dry_run",
                Some(Outcome::Expired) => "expired",
            },
            attempts,
            status,
            error,
        )
    }

    fn record_raw(
        &mut self,
        id: &str,
        outcome: &str,
        attempts: u32,
        status: Option<u16>,
        error: Option<String>,
    ) -> Result<(), ActionError> {
        let r = DeliveryRecord {
            id: id.to_string(),
            outcome: outcome.to_string(),
            attempts,
            status,
            error: error.clone(),
            wall_ms: now_ms(),
        };
        let mut line = serde_json::to_vec(&r)?;
        line.push(b'\n');
        let path = self.dir.join(DELIVERIES_FILE);
        self.deliveries.write_all(&line).map_err(io(&path))?;
        self.deliveries_unsynced = true;
        if let Some(e) = self.entries.get_mut(id) {
            e.attempts = e.attempts.max(attempts);
            match outcome {
                "attempt" => e.interrupted = true,
                _ => {
                    e.interrupted = false;
                    e.outcome = match outcome {
                        "delivered" => Some(Outcome::Delivered),
                        "failed" => Some(Outcome::Failed),
                        "dry_run" => Some(Outcome::DryRun),
                        _ => Some(Outcome::Expired),
                    };
                    if outcome == "failed" {
                        e.last_error = error;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn state_survives_reopening_and_a_torn_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut o = Outbox::open(dir).unwrap();
        assert!(o.add("a", ActionKind::Trigger, 1, json!({"x":1})).unwrap());
        assert!(!o.add("a", ActionKind::Trigger, 1, json!({"x":1})).unwrap());
        assert!(o.add("b", ActionKind::Trigger, 2, json!({})).unwrap());
        assert!(o.add("c", ActionKind::Alert, 3, json!({})).unwrap());
        assert!(o.cancel("b").unwrap());
        o.record("a", None, 1, None, None).unwrap();
        o.record("a", Some(Outcome::Delivered), 1, Some(200), None)
            .unwrap();
        o.record("c", None, 1, None, None).unwrap();
        o.sync().unwrap();
        drop(o);
        // A crash in the middle of a line.
        let mut f = append_file(&dir.join(OUTBOX_FILE)).unwrap();
        f.write_all(b"{\"op\":\"add\",\"id\":\"d\"").unwrap();
        drop(f);

        let mut o = Outbox::open(dir).unwrap();
        assert_eq!(o.get("a").unwrap().outcome, Some(Outcome::Delivered));
        assert!(!o.get("b").unwrap().present);
        let c = o.get("c").unwrap();
        assert!(c.pending() && c.interrupted && c.attempts == 1);
        assert!(o.get("d").is_none());
        // Delivered: never again, even when retracted and inserted again.
        assert!(!o.cancel("a").unwrap());
        assert!(!o.add("a", ActionKind::Trigger, 1, json!({})).unwrap());
        // Cancelled and not sent: pending again.
        assert!(o.add("b", ActionKind::Trigger, 2, json!({"y":2})).unwrap());
        o.record("c", Some(Outcome::Failed), 4, Some(503), Some("503".into()))
            .unwrap();
        drop(o);
        let o = Outbox::open(dir).unwrap();
        assert!(o.get("b").unwrap().pending());
        assert_eq!(o.get("b").unwrap().body, json!({"y":2}));
        let c = o.get("c").unwrap();
        assert_eq!((c.outcome, c.attempts), (Some(Outcome::Failed), 4));
    }

    #[test]
    fn compaction_drops_old_finished_entries_and_keeps_the_rest_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut o = Outbox::open(dir).unwrap();
        for (id, at) in [
            ("old-done", 1),
            ("old-cancelled", 2),
            ("old-pending", 3),
            ("new-done", 50),
        ] {
            o.add(id, ActionKind::Trigger, at, json!({"id": id}))
                .unwrap();
        }
        o.record("old-done", Some(Outcome::Delivered), 1, Some(200), None)
            .unwrap();
        o.cancel("old-cancelled").unwrap();
        o.record("old-pending", None, 2, None, None).unwrap();
        o.record(
            "new-done",
            Some(Outcome::Failed),
            4,
            Some(500),
            Some("e".into()),
        )
        .unwrap();
        assert_eq!(o.compact(10, 3).unwrap(), 0, "fewer than min_drop");
        assert_eq!(o.compact(10, 2).unwrap(), 2);
        // Appends after a compaction go to the new files.
        o.add("later", ActionKind::Alert, 60, json!({})).unwrap();
        o.record("later", Some(Outcome::Delivered), 1, Some(200), None)
            .unwrap();
        o.sync().unwrap();
        drop(o);
        let o = Outbox::open(dir).unwrap();
        let mut ids: Vec<&String> = o.entries().map(|(k, _)| k).collect();
        ids.sort();
        assert_eq!(ids, ["later", "new-done", "old-pending"]);
        let p = o.get("old-pending").unwrap();
        assert!(p.pending() && p.interrupted && p.attempts == 2);
        let f = o.get("new-done").unwrap();
        assert_eq!(
            (f.outcome, f.attempts, f.last_error.as_deref()),
            (Some(Outcome::Failed), 4, Some("e"))
        );
        assert_eq!(o.get("later").unwrap().outcome, Some(Outcome::Delivered));
        // A crash between the rename and the truncation leaves deliveries of dropped ids:
        // ignored after a compaction.
        drop(o);
        let mut d = append_file(&dir.join(DELIVERIES_FILE)).unwrap();
        d.write_all(
            b"{\"id\":\"old-done\",\"outcome\":\"delivered\",\"attempts\":1,\"wall_ms\":0}\n",
        )
        .unwrap();
        drop(d);
        assert!(Outbox::open(dir).unwrap().get("old-done").is_none());
    }

    #[test]
    fn a_malformed_line_in_the_middle_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(OUTBOX_FILE), "garbage\n{}\n").unwrap();
        let e = Outbox::open(tmp.path()).err().unwrap().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
