//! The actions sink: turns changes of `triggers` and `anomalies` into outbox entries.
//!
//! Ids (the outbox's keys, `X-Adflow-Delivery-Id`):
//! - a trigger: its `trigger_id`;
//! - an alert of one anomaly interval: `alert:<kind>:<key>:<opened_ts>`;
//! - an alert on a count of open intervals: `alert:<kind>:above:<threshold>:<n>`, the n-th
//!   time (from 1, over the pipeline's life) the count rose above the threshold;
//! - a pause: `pause:<kind>:<campaign_id>:<opened_ts>`.
//!
//! Changes are applied in version order, retractions before insertions of the same version.
//! A row's insertion adds its action (once per id: an id that was ever sent, failed, dry-run
//! or expired is never added again); its retraction cancels the action if it has not been sent
//! yet. An anomaly interval that is opened and later closed is one row replaced by another
//! with the same id: one alert.
//!
//! Counts of open `stalled_parcel` / `delivery_exception` intervals are kept from the deltas;
//! they, the crossing numbers and the engine checkpoint are stored in `_state.json` at every
//! flush (live mode: the sink is resumable, a funnel sink on process 0, and resumes at the
//! checkpoint the cluster agrees on). A restarted engine hands the sink again the changes from
//! that checkpoint on; the outbox's ids keep every action once.

use crate::deliver::{lock, Deliverer};
use crate::message;
use crate::outbox::{ActionKind, Outbox, Outcome};
use crate::ActionError;
use adflow_model::output::{AnomalyRow, Change, OutputRow, Table};
use adflow_model::{Sink, SinkError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The sink's stored state.
pub const STATE_FILE: &str = "_state.json";

/// What the sink decides, from `[actions]`.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Triggers go to the webhook.
    pub triggers: bool,
    /// Anomaly kinds alerted once per interval.
    pub alert_kinds: HashSet<String>,
    /// Alert on counts of open intervals above these (kind → threshold; 0 = off).
    pub count_thresholds: BTreeMap<String, u64>,
    /// Alerts are WeCom markdown messages (otherwise generic JSON).
    pub wecom: bool,
    /// Anomaly kinds that pause their campaign.
    pub pause_kinds: HashSet<String>,
    /// Pauses are sent (otherwise a dry run).
    pub pause_enabled: bool,
    /// Actions older than this (ms behind the wall clock when decided) are expired.
    pub max_age: Option<i64>,
    /// Zone of the times in messages, minutes east of UTC.
    pub zone: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counts {
    /// Open intervals per kind.
    open: BTreeMap<String, i64>,
    /// Whether the count is above its threshold now.
    above: BTreeMap<String, bool>,
    /// How many times it rose above.
    crossings: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    checkpoint: Option<String>,
    frontier: i64,
    counts: Counts,
}

/// The actions sink. See the module docs.
pub struct ActionsSink {
    dir: PathBuf,
    outbox: Arc<Mutex<Outbox>>,
    deliverer: Arc<Deliverer>,
    plan: Plan,
    counts: Counts,
    received: i64,
    durable: i64,
    resumable: bool,
    stored: Option<Stored>,
    checkpoint: Option<String>,
    resumed_from: i64,
    resumed_checkpoint: Option<String>,
}

fn sink_err(e: impl std::fmt::Display) -> SinkError {
    SinkError::Other {
        sink: "actions".into(),
        message: e.to_string(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ActionsSink {
    /// A sink over the outbox in `dir`, sending through `deliverer`. `resumable` (live mode):
    /// it keeps `_state.json` and takes part in the cluster's resume decision.
    pub fn new(
        dir: &Path,
        outbox: Arc<Mutex<Outbox>>,
        deliverer: Arc<Deliverer>,
        plan: Plan,
        resumable: bool,
    ) -> Result<ActionsSink, ActionError> {
        let path = dir.join(STATE_FILE);
        let stored = if resumable {
            match std::fs::read(&path) {
                Ok(b) => Some(serde_json::from_slice::<Stored>(&b).map_err(|e| {
                    ActionError::Corrupt {
                        path: path.clone(),
                        line: 1,
                        message: e.to_string(),
                    }
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => return Err(ActionError::Io { path, source }),
            }
        } else {
            None
        };
        Ok(ActionsSink {
            dir: dir.to_path_buf(),
            outbox,
            deliverer,
            plan,
            counts: Counts::default(),
            received: i64::MIN,
            durable: i64::MIN,
            resumable,
            stored,
            checkpoint: None,
            resumed_from: i64::MIN,
            resumed_checkpoint: None,
        })
    }

    /// Records a new action: sent, or expired, or (a pause not enabled) a dry run.
    fn add(
        &mut self,
        outbox: &mut Outbox,
        id: &str,
        kind: ActionKind,
        at: i64,
        body: serde_json::Value,
    ) -> Result<(), ActionError> {
        if !outbox.add(id, kind, at, body)? {
            return Ok(());
        }
        let action = kind.name();
        if let Some(max) = self.plan.max_age {
            if now_ms() - at > max {
                outbox.record(id, Some(Outcome::Expired), 0, None, None)?;
                metrics::counter!("adflow_actions_expired_total", "action" => action).increment(1);
                return Ok(());
            }
        }
        if kind == ActionKind::PauseCampaign && !self.plan.pause_enabled {
            outbox.record(id, Some(Outcome::DryRun), 0, None, None)?;
            metrics::counter!("adflow_actions_dry_run_total", "action" => action).increment(1);
            tracing::info!(
                id,
                "pause_campaign (dry run: [actions.pause_campaign] enabled = false)"
            );
            return Ok(());
        }
        self.deliverer.submit(kind, id.to_string());
        Ok(())
    }

    fn apply_anomaly(
        &mut self,
        outbox: &mut Outbox,
        a: &AnomalyRow,
        sign: i64,
    ) -> Result<(), ActionError> {
        if self.plan.count_thresholds.contains_key(&a.kind) && a.closed_ts.is_none() {
            *self.counts.open.entry(a.kind.clone()).or_insert(0) += sign;
        }
        if self.plan.alert_kinds.contains(&a.kind) {
            let id = format!("alert:{}:{}:{}", a.kind, a.key, a.opened_ts);
            if sign > 0 {
                let body = message::anomaly_alert(&id, a, self.plan.wecom, self.plan.zone);
                self.add(outbox, &id, ActionKind::Alert, a.opened_ts, body)?;
            } else {
                outbox.cancel(&id)?;
            }
        }
        if self.plan.pause_kinds.contains(&a.kind) {
            let id = format!("pause:{}:{}:{}", a.kind, a.key, a.opened_ts);
            if sign > 0 {
                let body = message::pause_body(&id, a);
                self.add(outbox, &id, ActionKind::PauseCampaign, a.opened_ts, body)?;
            } else {
                outbox.cancel(&id)?;
            }
        }
        Ok(())
    }

    /// After all changes of `version`: alerts on counts that rose above their threshold.
    fn check_counts(&mut self, outbox: &mut Outbox, version: i64) -> Result<(), ActionError> {
        let thresholds: Vec<(String, u64)> = self
            .plan
            .count_thresholds
            .iter()
            .filter(|(_, &t)| t > 0)
            .map(|(k, &t)| (k.clone(), t))
            .collect();
        for (kind, threshold) in thresholds {
            let open = self.counts.open.get(&kind).copied().unwrap_or(0);
            let above = self.counts.above.get(&kind).copied().unwrap_or(false);
            if !above && open > threshold as i64 {
                self.counts.above.insert(kind.clone(), true);
                let n = self.counts.crossings.entry(kind.clone()).or_insert(0);
                *n += 1;
                let id = format!("alert:{kind}:above:{threshold}:{n}");
                let body = message::count_alert(
                    &id,
                    &kind,
                    open,
                    threshold,
                    version,
                    self.plan.wecom,
                    self.plan.zone,
                );
                self.add(outbox, &id, ActionKind::Alert, version, body)?;
            } else if above && open <= threshold as i64 {
                self.counts.above.insert(kind, false);
            }
        }
        Ok(())
    }

    fn apply(&mut self, mut changes: Vec<Change>) -> Result<(), ActionError> {
        changes.retain(|c| {
            matches!(
                (c.row.table(), self.plan.triggers),
                (Table::Triggers, true) | (Table::Anomalies, _)
            ) && c.version >= self.resumed_from
        });
        // (`wants` already kept the engine from copying any other table.)
        if changes.is_empty() {
            return Ok(());
        }
        changes.sort_by_key(|c| (c.version, c.sign));
        let outbox = self.outbox.clone();
        let mut outbox = lock(&outbox);
        let mut i = 0;
        while i < changes.len() {
            let version = changes[i].version;
            while i < changes.len() && changes[i].version == version {
                let c = &changes[i];
                match &c.row {
                    OutputRow::Trigger(t) => {
                        if c.sign > 0 {
                            let body = message::trigger_body(t);
                            self.add(
                                &mut outbox,
                                &t.trigger_id,
                                ActionKind::Trigger,
                                t.due_ts,
                                body,
                            )?;
                        } else {
                            outbox.cancel(&t.trigger_id)?;
                        }
                    }
                    OutputRow::Anomaly(a) => self.apply_anomaly(&mut outbox, a, c.sign)?,
                    _ => {}
                }
                i += 1;
            }
            self.check_counts(&mut outbox, version)?;
        }
        Ok(())
    }

    fn write_state(&self) -> Result<(), ActionError> {
        let stored = Stored {
            checkpoint: self.checkpoint.clone(),
            frontier: self.received,
            counts: self.counts.clone(),
        };
        let path = self.dir.join(STATE_FILE);
        adflow_model::durable::replace_file(&path, &serde_json::to_vec(&stored)?)
            .map_err(|source| ActionError::Io { path, source })
    }
}

impl Sink for ActionsSink {
    fn name(&self) -> &str {
        "actions"
    }

    fn wants(&self, table: Table) -> bool {
        matches!(table, Table::Triggers | Table::Anomalies)
    }

    fn write(&mut self, changes: Vec<Change>, frontier: i64) -> Result<(), SinkError> {
        if let Some(e) = self.deliverer.fatal() {
            return Err(sink_err(e));
        }
        self.apply(changes).map_err(sink_err)?;
        self.received = self.received.max(frontier);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(e) = self.deliverer.fatal() {
            return Err(sink_err(e));
        }
        lock(&self.outbox).sync().map_err(sink_err)?;
        if self.resumable {
            self.write_state().map_err(sink_err)?;
        }
        self.durable = self.received;
        Ok(())
    }

    fn durable_frontier(&self) -> i64 {
        self.durable
    }

    fn resume_frontier(&self, _table: Table) -> i64 {
        self.resumed_from
    }

    fn set_checkpoint(&mut self, checkpoint: &str) {
        self.checkpoint = Some(checkpoint.to_string());
    }

    fn resume_checkpoint(&self) -> Option<String> {
        self.resumed_checkpoint.clone()
    }

    fn resumable(&self) -> bool {
        self.resumable
    }

    fn resume_points(&self) -> Vec<Option<String>> {
        match &self.stored {
            Some(s) => vec![s.checkpoint.clone()],
            None => vec![None],
        }
    }

    /// Restores the counts stored with `checkpoint`; `None`: the counts start from zero (the
    /// outbox keeps every id it ever held either way, so nothing is sent twice).
    fn resume_to(&mut self, checkpoint: Option<&str>) -> Result<(), SinkError> {
        match (checkpoint, &self.stored) {
            (None, _) => {
                self.counts = Counts::default();
                self.resumed_from = i64::MIN;
                self.resumed_checkpoint = None;
            }
            (Some(c), Some(s)) if s.checkpoint.as_deref() == Some(c) => {
                self.counts = s.counts.clone();
                self.resumed_from = s.frontier;
                self.resumed_checkpoint = s.checkpoint.clone();
                self.received = s.frontier;
                self.durable = s.frontier;
            }
            (Some(c), _) => {
                return Err(sink_err(format!(
                    "{} holds no state for checkpoint {c}",
                    self.dir.display()
                )))
            }
        }
        self.checkpoint = self.resumed_checkpoint.clone();
        tracing::info!(dir = %self.dir.display(), frontier = self.resumed_from, "actions sink resumes");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{Deliverer, Timing};
    use adflow_model::output::{JsonText, TriggerRow};
    use std::time::Duration;

    fn trigger(id: &str, campaign: Option<&str>) -> OutputRow {
        OutputRow::Trigger(TriggerRow {
            trigger_id: id.into(),
            kind: "review_coupon".into(),
            order_id: id.split(':').next().unwrap().into(),
            person_id: "p1".into(),
            campaign_id: campaign.map(str::to_string),
            due_ts: 1_000,
        })
    }

    fn anomaly(kind: &str, key: &str, opened: i64, closed: Option<i64>) -> OutputRow {
        OutputRow::Anomaly(AnomalyRow {
            kind: kind.into(),
            key: key.into(),
            opened_ts: opened,
            closed_ts: closed,
            details: JsonText("{}".into()),
        })
    }

    fn ch(row: OutputRow, version: i64, sign: i64) -> Change {
        Change { row, version, sign }
    }

    /// A sink over a fresh outbox whose deliverer has no targets (nothing is sent).
    fn sink(dir: &Path, plan: Plan, resumable: bool) -> (ActionsSink, Arc<Mutex<Outbox>>) {
        let outbox = Arc::new(Mutex::new(Outbox::open(dir).unwrap()));
        let timing = Timing {
            timeout: Duration::from_secs(1),
            retries: 0,
            retry_delay: Duration::ZERO,
            concurrency: 1,
        };
        let d = Deliverer::start(outbox.clone(), Default::default(), timing).unwrap();
        let s = ActionsSink::new(dir, outbox.clone(), d, plan, resumable).unwrap();
        (s, outbox)
    }

    fn plan() -> Plan {
        Plan {
            triggers: true,
            alert_kinds: ["cpc_spike".to_string()].into(),
            count_thresholds: [("stalled_parcel".to_string(), 2)].into(),
            pause_kinds: ["cpc_spike".to_string()].into(),
            zone: 480,
            ..Plan::default()
        }
    }

    #[test]
    fn retractions_cancel_unsent_actions_and_replacements_keep_one_id() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, o) = sink(tmp.path(), plan(), false);
        // Replaced at the same version (retraction first, whatever the batch order): one id,
        // the new body.
        s.write(
            vec![
                ch(trigger("O1:review_coupon", Some("c2")), 20, 1),
                ch(trigger("O1:review_coupon", None), 10, 1),
                ch(trigger("O1:review_coupon", None), 20, -1),
            ],
            30,
        )
        .unwrap();
        let e = lock(&o).get("O1:review_coupon").cloned().unwrap();
        assert!(e.pending());
        assert_eq!(e.body["campaign_id"], "c2");
        // Retracted for good before it was sent: cancelled; inserted again: pending again.
        s.write(
            vec![ch(trigger("O1:review_coupon", Some("c2")), 40, -1)],
            50,
        )
        .unwrap();
        assert!(!lock(&o).get("O1:review_coupon").unwrap().present);
        s.write(vec![ch(trigger("O1:review_coupon", Some("c3")), 60, 1)], 70)
            .unwrap();
        assert!(lock(&o).get("O1:review_coupon").unwrap().pending());
        // Once it has an outcome, it is never added again.
        lock(&o)
            .record(
                "O1:review_coupon",
                Some(Outcome::Delivered),
                1,
                Some(200),
                None,
            )
            .unwrap();
        s.write(
            vec![ch(trigger("O1:review_coupon", Some("c3")), 80, -1)],
            90,
        )
        .unwrap();
        s.write(
            vec![ch(trigger("O1:review_coupon", Some("c4")), 100, 1)],
            110,
        )
        .unwrap();
        let e = lock(&o).get("O1:review_coupon").cloned().unwrap();
        assert_eq!(e.outcome, Some(Outcome::Delivered));
        assert_eq!(e.body["campaign_id"], "c3");
    }

    #[test]
    fn count_alerts_fire_once_per_rise_and_pauses_are_dry_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, o) = sink(tmp.path(), plan(), false);
        let open = |k: &str, t| anomaly("stalled_parcel", k, t, None);
        s.write(
            vec![
                ch(open("w1", 1), 10, 1),
                ch(open("w2", 2), 10, 1),
                ch(open("w3", 3), 10, 1),
                ch(anomaly("cpc_spike", "c1", 0, Some(300)), 10, 1),
            ],
            20,
        )
        .unwrap();
        let ids = |o: &Arc<Mutex<Outbox>>| {
            let mut v: Vec<String> = lock(o).entries().map(|(k, _)| k.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(
            ids(&o),
            [
                "alert:cpc_spike:c1:0",
                "alert:stalled_parcel:above:2:1",
                "pause:cpc_spike:c1:0"
            ]
        );
        assert_eq!(
            lock(&o).get("pause:cpc_spike:c1:0").unwrap().outcome,
            Some(Outcome::DryRun)
        );
        // w1 closes (its open row replaced by a closed one): 2 open, not above; w4 opens:
        // 3 open, the second rise.
        s.write(
            vec![
                ch(open("w1", 1), 30, -1),
                ch(anomaly("stalled_parcel", "w1", 1, Some(25)), 30, 1),
            ],
            40,
        )
        .unwrap();
        assert_eq!(ids(&o).len(), 3);
        s.write(vec![ch(open("w4", 4), 50, 1)], 60).unwrap();
        assert!(ids(&o).contains(&"alert:stalled_parcel:above:2:2".to_string()));
        assert_eq!(ids(&o).len(), 4);
    }

    #[test]
    fn resumes_the_counts_stored_with_its_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut s, _) = sink(dir, plan(), true);
        assert_eq!(s.resume_points(), vec![None]);
        s.resume_to(None).unwrap();
        let open = |k: &str| anomaly("stalled_parcel", k, 1, None);
        s.write(vec![ch(open("w1"), 10, 1), ch(open("w2"), 10, 1)], 20)
            .unwrap();
        s.set_checkpoint("cp1");
        s.flush().unwrap();
        drop(s);

        let (mut s, o) = sink(dir, plan(), true);
        assert_eq!(s.resume_points(), vec![Some("cp1".to_string())]);
        assert!(s.resume_to(Some("cp0")).is_err());
        s.resume_to(Some("cp1")).unwrap();
        assert_eq!(s.resume_frontier(Table::Triggers), 20);
        // Two were open at the checkpoint: a third is the first rise above 2.
        s.write(vec![ch(open("w3"), 30, 1)], 40).unwrap();
        assert!(lock(&o).get("alert:stalled_parcel:above:2:1").is_some());
    }
}
