//! adflow's actions: what leaves the pipeline as calls to other systems (`[actions]` of the
//! settings file, `docs/actions.md`).
//!
//! - every `triggers` row is POSTed to a webhook as signed JSON, **at most once per
//!   `trigger_id`**, and never lost: a durable outbox ([`outbox`]) records each trigger
//!   before its checkpoint is committed and each outcome before the next call; network
//!   errors, 5xx and 429 are retried (3 × 5 s by default), then the trigger goes to the
//!   failed queue, which [`replay_failed`] (`adflow actions replay-failed`) drains;
//! - operator alerts: once per interval of the configured anomaly kinds (CPC spike, campaign
//!   without impressions, ...) and once each time the number of open stalled parcels or
//!   delivery exceptions rises above a threshold — to a WeCom group robot (its `markdown`
//!   message) or a generic webhook;
//! - `pause_campaign` for CPC spikes and campaigns gone dark: a dry run (logged and counted)
//!   unless enabled.
//!
//! The one place an id could reach a receiver twice is a crash between the receiver's answer
//! and the outcome's record: the restarted pipeline sends it again with the same
//! `X-Adflow-Delivery-Id` (counted in `adflow_webhook_redeliveries_total`), and a receiver
//! that deduplicates by that header processes each id exactly once.

pub mod deliver;
pub mod message;
pub mod outbox;
pub mod sink;

pub use deliver::{Deliverer, Format, Target, Timing};
pub use outbox::{ActionKind, Outbox, Outcome};
pub use sink::{ActionsSink, Plan};

use adflow_model::config::{ActionsSettings, AlertTarget};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why an action could not be recorded or sent.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("actions outbox {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("actions outbox {}: line {line}: {message}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("[actions]: {0}")]
    Config(String),
    #[error("actions: encoding a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("actions HTTP client: {0}")]
    Http(String),
    #[error("another `adflow actions replay-failed` holds {}", .0.display())]
    Locked(PathBuf),
}

fn secret_from_env(var: &str) -> Result<Vec<u8>, ActionError> {
    match std::env::var(var) {
        Ok(s) if !s.is_empty() => Ok(s.into_bytes()),
        _ => Err(ActionError::Config(format!(
            "the signing secret variable {var} is not set (or empty)"
        ))),
    }
}

/// The targets and timing that `[actions]` configures.
pub fn targets(a: &ActionsSettings) -> Result<(HashMap<ActionKind, Target>, Timing), ActionError> {
    let mut t = HashMap::new();
    if let Some(w) = &a.webhook {
        t.insert(
            ActionKind::Trigger,
            Target {
                url: w.url.clone(),
                secret: Some(secret_from_env(&w.secret_env)?),
                format: Format::Json,
            },
        );
    }
    if let Some(al) = &a.alerts {
        let (format, secret) = match al.target {
            AlertTarget::Wecom => (Format::Wecom, None),
            AlertTarget::Webhook => (
                Format::Json,
                al.secret_env.as_deref().map(secret_from_env).transpose()?,
            ),
        };
        t.insert(
            ActionKind::Alert,
            Target {
                url: al.url.clone(),
                secret,
                format,
            },
        );
    }
    if let Some(p) = &a.pause_campaign {
        if p.enabled {
            let url = p
                .url
                .clone()
                .ok_or_else(|| ActionError::Config("pause_campaign.enabled needs a url".into()))?;
            t.insert(
                ActionKind::PauseCampaign,
                Target {
                    url,
                    secret: Some(secret_from_env(&p.secret_env)?),
                    format: Format::Json,
                },
            );
        }
    }
    let timing = Timing {
        timeout: Duration::from_millis(a.timeout.0.max(1) as u64),
        retries: a.retries,
        retry_delay: Duration::from_millis(a.retry_delay.0.max(0) as u64),
        concurrency: a.concurrency.max(1) as usize,
    };
    Ok((t, timing))
}

/// What the sink decides, from `[actions]`; `zone`: minutes east of UTC for messages.
pub fn plan(a: &ActionsSettings, zone: i32) -> Plan {
    let mut p = Plan {
        triggers: a.webhook.is_some(),
        max_age: a.max_age.map(|m| m.0),
        zone,
        ..Plan::default()
    };
    if let Some(al) = &a.alerts {
        p.alert_kinds = al.kinds.iter().cloned().collect();
        p.wecom = al.target == AlertTarget::Wecom;
        p.count_thresholds
            .insert("stalled_parcel".into(), al.stalled_parcels_above);
        p.count_thresholds
            .insert("delivery_exception".into(), al.delivery_exceptions_above);
    }
    if let Some(pc) = &a.pause_campaign {
        p.pause_kinds = pc.kinds.iter().cloned().collect();
        p.pause_enabled = pc.enabled;
    }
    p
}

/// The outbox directory: `[actions] outbox`, else `<output>/_actions`.
pub fn outbox_dir(a: &ActionsSettings, output: Option<&Path>) -> Result<PathBuf, ActionError> {
    match (&a.outbox, output) {
        (Some(d), _) => Ok(PathBuf::from(d)),
        (None, Some(out)) => Ok(out.join("_actions")),
        (None, None) => Err(ActionError::Config(
            "outbox is not set and there is no --output directory to keep it in".into(),
        )),
    }
}

/// Opens the outbox, starts delivery and builds the sink. The [`Deliverer`] is returned too,
/// so the caller can wait for it to drain when the run ends.
pub fn start(
    a: &ActionsSettings,
    output: Option<&Path>,
    zone: i32,
    resumable: bool,
) -> Result<(ActionsSink, Arc<Deliverer>), ActionError> {
    let dir = outbox_dir(a, output)?;
    let (targets, timing) = targets(a)?;
    let mut outbox = Outbox::open(&dir)?;
    if let Some(max_age) = a.max_age {
        // With `max_age`, what was decided longer ago than that and is finished can go: an
        // id decided again is expired, never sent. Rewritten only once that is at least half
        // of the outbox (and 10,000 entries), so a start rarely pays for it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let n = outbox.entries().count();
        outbox.compact(now - max_age.0, (n / 2).max(10_000))?;
    }
    let outbox = Arc::new(Mutex::new(outbox));
    let deliverer = Deliverer::start(outbox.clone(), targets, timing)?;
    deliverer.queue_pending();
    let sink = ActionsSink::new(&dir, outbox, deliverer.clone(), plan(a, zone), resumable)?;
    tracing::info!(outbox = %dir.display(), "actions enabled");
    Ok((sink, deliverer))
}

/// Counts of the outbox's actions by kind and state (`adflow actions status`).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
    pub dry_run: u64,
    pub expired: u64,
    pub cancelled: u64,
}

/// The outbox's actions by kind and state.
pub fn status(dir: &Path) -> Result<std::collections::BTreeMap<String, StateCounts>, ActionError> {
    let o = Outbox::open(dir)?;
    let mut out: std::collections::BTreeMap<String, StateCounts> = Default::default();
    for (_, e) in o.entries() {
        let c = out.entry(e.action.name().to_string()).or_default();
        match e.outcome {
            Some(Outcome::Delivered) => c.delivered += 1,
            Some(Outcome::Failed) => c.failed += 1,
            Some(Outcome::DryRun) => c.dry_run += 1,
            Some(Outcome::Expired) => c.expired += 1,
            None if e.present => c.pending += 1,
            None => c.cancelled += 1,
        }
    }
    Ok(out)
}

/// What [`replay_failed`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub tried: usize,
    pub delivered: usize,
    pub failed: usize,
}

/// Sends every failed action of the outbox in `dir` again (with the retries of `[actions]`),
/// in the order they were decided; each ends delivered or failed again. Safe to run while the
/// pipeline runs (the pipeline never resends a failed action); two at once are refused.
pub fn replay_failed(dir: &Path, a: &ActionsSettings) -> Result<Replayed, ActionError> {
    let lock_path = dir.join("replay.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| ActionError::Io {
            path: lock_path.clone(),
            source,
        })?;
    lock_file
        .try_lock()
        .map_err(|_| ActionError::Locked(lock_path.clone()))?;
    let (targets, timing) = targets(a)?;
    let mut outbox = Outbox::open(dir)?;
    let mut failed: Vec<(i64, String, ActionKind)> = outbox
        .entries()
        .filter(|(_, e)| e.outcome == Some(Outcome::Failed))
        .map(|(id, e)| (e.at, id.clone(), e.action))
        .collect();
    failed.sort();
    if let Some((_, id, kind)) = failed.iter().find(|(_, _, k)| !targets.contains_key(k)) {
        return Err(ActionError::Config(format!(
            "{id} is a failed {} action but [actions] configures no target for it",
            kind.name()
        )));
    }
    // Back in the queue (their attempts keep counting from the recorded ones).
    for (_, id, _) in &failed {
        outbox.reopen(id);
    }
    let outbox = Arc::new(Mutex::new(outbox));
    let deliverer = Deliverer::start(outbox.clone(), targets, timing)?;
    for (_, id, kind) in &failed {
        deliverer.submit(*kind, id.clone());
    }
    // Every action ends within its retries: wait as long as that takes.
    deliverer.drain(Duration::from_secs(365 * 86_400));
    deliverer.stop();
    if let Some(e) = deliverer.fatal() {
        return Err(ActionError::Http(e));
    }
    drop(deliverer);
    let o = deliver::lock(&outbox);
    let mut r = Replayed {
        tried: failed.len(),
        ..Replayed::default()
    };
    for (_, id, _) in &failed {
        match o.get(id).and_then(|e| e.outcome) {
            Some(Outcome::Delivered) => r.delivered += 1,
            _ => r.failed += 1,
        }
    }
    Ok(r)
}
