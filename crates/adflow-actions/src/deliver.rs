//! Delivery: threads that send the outbox's pending actions over HTTP.
//!
//! Each action kind has its own queue and `concurrency` threads. A call is a POST of the
//! action's JSON body with the headers
//! - `X-Adflow-Delivery-Id`: the action's id (a trigger's `trigger_id`) — the receiver's
//!   idempotency key;
//! - `X-Adflow-Action`: `trigger`, `alert` or `pause_campaign`;
//! - `X-Adflow-Attempt`: 1, 2, ... over all runs;
//! - `X-Adflow-Signature`: `sha256=<hex HMAC-SHA256 of the body with the secret>`, when the
//!   target has a secret.
//!
//! A 2xx answer delivers it (a WeCom robot must also answer `errcode` 0). A network error,
//! a timeout, a 5xx or 429 answer (WeCom: `errcode` 45009 or -1) is retried `retries` times
//! `retry_delay` apart; then, or at once for any other answer, the action goes to the failed
//! queue. Every attempt and outcome is recorded in the outbox before the thread's next call.

use crate::outbox::{ActionKind, Outbox, Outcome};
use crate::ActionError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Buckets of `adflow_webhook_delivery_duration_seconds` (seconds), around the 3 s alert
/// threshold of `deploy/prometheus/alerts.yml`.
pub const DELIVERY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
];

/// How a target wants its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Any JSON receiver: 2xx is success.
    Json,
    /// A WeCom group robot: 200 with `{"errcode":0,...}` is success.
    Wecom,
}

/// Where one action kind is sent.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    /// HMAC-SHA256 key for `X-Adflow-Signature` (none: unsigned).
    pub secret: Option<Vec<u8>>,
    pub format: Format,
}

/// Timing of the calls.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub timeout: Duration,
    pub retries: u32,
    pub retry_delay: Duration,
    pub concurrency: usize,
}

/// The result of one call.
enum CallError {
    /// Worth retrying: network error, timeout, 5xx, 429, WeCom busy.
    Transient(Option<u16>, String),
    /// Not worth retrying.
    Permanent(Option<u16>, String),
}

struct Shared {
    outbox: Arc<Mutex<Outbox>>,
    targets: HashMap<ActionKind, Target>,
    timing: Timing,
    client: reqwest::blocking::Client,
    /// Actions queued or being sent, per kind.
    outstanding: Mutex<HashMap<ActionKind, usize>>,
    idle: Condvar,
    stop: AtomicBool,
    /// The first error that stops delivery (the outbox could not be written).
    fatal: Mutex<Option<String>>,
    /// Ids being sent now: an id queued twice (cancelled and added again) is sent by one
    /// thread only.
    in_flight: Mutex<HashSet<String>>,
}

/// The delivery threads of one outbox. Dropping it stops them (calls in flight finish).
pub struct Deliverer {
    shared: Arc<Shared>,
    queues: Mutex<HashMap<ActionKind, Sender<String>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts a key of any length (longer ones are hashed first): this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Deliverer {
    /// Starts the threads for the kinds that have a target.
    pub fn start(
        outbox: Arc<Mutex<Outbox>>,
        targets: HashMap<ActionKind, Target>,
        timing: Timing,
    ) -> Result<Arc<Deliverer>, ActionError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(timing.timeout)
            .connect_timeout(timing.timeout)
            .user_agent(concat!("adflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ActionError::Http(e.to_string()))?;
        let shared = Arc::new(Shared {
            outbox,
            targets,
            timing,
            client,
            outstanding: Mutex::new(HashMap::new()),
            idle: Condvar::new(),
            stop: AtomicBool::new(false),
            fatal: Mutex::new(None),
            in_flight: Mutex::new(HashSet::new()),
        });
        let d = Arc::new(Deliverer {
            shared: shared.clone(),
            queues: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let kinds: Vec<ActionKind> = shared.targets.keys().copied().collect();
        for kind in kinds {
            let (tx, rx) = channel::<String>();
            let rx = Arc::new(Mutex::new(rx));
            lock(&d.queues).insert(kind, tx);
            for n in 0..timing.concurrency.max(1) {
                let (shared, rx) = (shared.clone(), rx.clone());
                let t = std::thread::Builder::new()
                    .name(format!("adflow-{}-{n}", kind.name()))
                    .spawn(move || worker(&shared, kind, &rx))
                    .map_err(|e| ActionError::Http(format!("starting a delivery thread: {e}")))?;
                lock(&d.threads).push(t);
            }
            metrics::gauge!("adflow_actions_outbox_pending", "action" => kind.name()).set(0.0);
        }
        Ok(d)
    }

    /// Queues every action the outbox holds as pending (left by an earlier run), in the
    /// order they were decided.
    pub fn queue_pending(&self) {
        let shared = &self.shared;
        let pending: Vec<(ActionKind, String)> = {
            let o = lock(&shared.outbox);
            let mut p: Vec<(ActionKind, i64, String)> = o
                .entries()
                .filter(|(_, e)| e.pending() && shared.targets.contains_key(&e.action))
                .map(|(id, e)| (e.action, e.at, id.clone()))
                .collect();
            p.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
            p.into_iter().map(|(k, _, id)| (k, id)).collect()
        };
        if !pending.is_empty() {
            tracing::info!(
                actions = pending.len(),
                "sending the actions an earlier run left pending"
            );
        }
        for (kind, id) in pending {
            self.submit(kind, id);
        }
    }

    /// Whether actions of `kind` are sent (they have a target).
    pub fn sends(&self, kind: ActionKind) -> bool {
        self.shared.targets.contains_key(&kind)
    }

    /// Queues a pending action.
    pub fn submit(&self, kind: ActionKind, id: String) {
        let Some(tx) = lock(&self.queues).get(&kind).cloned() else {
            return;
        };
        {
            let mut out = lock(&self.shared.outstanding);
            let n = out.entry(kind).or_insert(0);
            *n += 1;
            metrics::gauge!("adflow_actions_outbox_pending", "action" => kind.name())
                .set(*n as f64);
        }
        if tx.send(id).is_err() {
            self.shared.done(kind);
        }
    }

    /// The error that stopped delivery, if any (the outbox could not be written).
    pub fn fatal(&self) -> Option<String> {
        lock(&self.shared.fatal).clone()
    }

    /// Actions queued or in flight.
    pub fn outstanding(&self) -> usize {
        lock(&self.shared.outstanding).values().sum()
    }

    /// Waits until nothing is queued or in flight, at most `timeout`; returns how many are
    /// left (they stay pending in the outbox and are sent by the next run).
    pub fn drain(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut out = lock(&self.shared.outstanding);
        loop {
            let n: usize = out.values().sum();
            let now = Instant::now();
            if n == 0 || now >= deadline || self.fatal().is_some() {
                return n;
            }
            out = self
                .shared
                .idle
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Stops the threads: calls in flight finish, queued ones stay pending in the outbox; then
    /// the outbox is synced.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        lock(&self.queues).clear();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        if let Err(e) = lock(&self.shared.outbox).sync() {
            self.shared.fail(e);
        }
    }
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn done(&self, kind: ActionKind) {
        let mut out = lock(&self.outstanding);
        if let Some(n) = out.get_mut(&kind) {
            *n = n.saturating_sub(1);
            metrics::gauge!("adflow_actions_outbox_pending", "action" => kind.name())
                .set(*n as f64);
        }
        self.idle.notify_all();
    }

    fn fail(&self, e: ActionError) {
        tracing::error!(error = %e, "action delivery stopped");
        lock(&self.fatal).get_or_insert_with(|| e.to_string());
        self.stop.store(true, Ordering::SeqCst);
        self.idle.notify_all();
    }

    /// Sleeps `d` unless stopped; returns whether it may go on.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        !self.stop.load(Ordering::SeqCst)
    }

    fn call(
        &self,
        target: &Target,
        kind: ActionKind,
        id: &str,
        attempt: u32,
        body: &[u8],
    ) -> Result<u16, CallError> {
        let mut req = self
            .client
            .post(&target.url)
            .header("Content-Type", "application/json")
            .header("X-Adflow-Delivery-Id", id)
            .header("X-Adflow-Action", kind.name())
            .header("X-Adflow-Attempt", attempt.to_string());
        if let Some(secret) = &target.secret {
            req = req.header("X-Adflow-Signature", signature(secret, body));
        }
        let resp = req
            .body(body.to_vec())
            .send()
            .map_err(|e| CallError::Transient(None, format!("{e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        if status == 429 || (500..600).contains(&status) {
            return Err(CallError::Transient(
                Some(status),
                format!("HTTP {status}: {}", clip(&text)),
            ));
        }
        if !(200..300).contains(&status) {
            return Err(CallError::Permanent(
                Some(status),
                format!("HTTP {status}: {}", clip(&text)),
            ));
        }
        if target.format == Format::Wecom {
            let code = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("errcode").and_then(|c| c.as_i64()));
            match code {
                Some(0) => {}
                Some(c @ (45009 | -1)) => {
                    return Err(CallError::Transient(
                        Some(status),
                        format!("WeCom errcode {c}: {}", clip(&text)),
                    ))
                }
                _ => {
                    return Err(CallError::Permanent(
                        Some(status),
                        format!("WeCom answer without errcode 0: {}", clip(&text)),
                    ))
                }
            }
        }
        Ok(status)
    }

    /// Sends one action until it is delivered or failed. `Err`: the outbox could not be
    /// written.
    fn deliver(&self, kind: ActionKind, id: &str) -> Result<(), ActionError> {
        let Some(target) = self.targets.get(&kind) else {
            return Ok(());
        };
        let (body, mut attempts, interrupted) = {
            let o = lock(&self.outbox);
            match o.get(id) {
                Some(e) if e.pending() => (serde_json::to_vec(&e.body)?, e.attempts, e.interrupted),
                _ => return Ok(()),
            }
        };
        let action = kind.name();
        if interrupted {
            // The process died during an earlier call: the receiver may have it already.
            metrics::counter!("adflow_webhook_redeliveries_total", "action" => action).increment(1);
            tracing::info!(
                id,
                action,
                "sending again an action whose call was interrupted"
            );
        }
        let mut tries = 0;
        loop {
            tries += 1;
            attempts += 1;
            lock(&self.outbox).record(id, None, attempts, None, None)?;
            let started = Instant::now();
            let result = self.call(target, kind, id, attempts, &body);
            metrics::histogram!("adflow_webhook_delivery_duration_seconds", "action" => action)
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(status) => {
                    lock(&self.outbox).record(
                        id,
                        Some(Outcome::Delivered),
                        attempts,
                        Some(status),
                        None,
                    )?;
                    metrics::counter!("adflow_webhook_deliveries_total", "action" => action)
                        .increment(1);
                    return Ok(());
                }
                Err(CallError::Transient(status, msg)) if tries <= self.timing.retries => {
                    metrics::counter!("adflow_webhook_retries_total", "action" => action)
                        .increment(1);
                    tracing::warn!(id, action, attempt = attempts, error = %msg, "action call failed; retrying");
                    if !self.pause(self.timing.retry_delay) {
                        // Stopping: it stays pending (the attempt is recorded).
                        let _ = status;
                        return Ok(());
                    }
                }
                Err(CallError::Transient(status, msg) | CallError::Permanent(status, msg)) => {
                    lock(&self.outbox).record(
                        id,
                        Some(Outcome::Failed),
                        attempts,
                        status,
                        Some(msg.clone()),
                    )?;
                    metrics::counter!("adflow_webhook_failures_total", "action" => action)
                        .increment(1);
                    tracing::error!(id, action, attempts, error = %msg, "action failed: in the failed queue (adflow actions replay-failed)");
                    return Ok(());
                }
            }
        }
    }
}

fn clip(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn worker(shared: &Shared, kind: ActionKind, rx: &Mutex<Receiver<String>>) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let next = lock(rx).recv_timeout(Duration::from_millis(100));
        let id = match next {
            Ok(id) => id,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if shared.stop.load(Ordering::SeqCst) {
            shared.done(kind);
            return;
        }
        if lock(&shared.in_flight).insert(id.clone()) {
            if let Err(e) = shared.deliver(kind, &id) {
                shared.fail(e);
            }
            lock(&shared.in_flight).remove(&id);
        }
        shared.done(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
