//! Subscription management: each shipment's waybill is subscribed once (durable record in
//! `subscribed.jsonl`), and a poller queries subscribed waybills that went quiet.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::client::WaybillRequest;
use crate::error::{KdniaoError, ProviderError};
use crate::sink::{append_synced, TrackSink};
use crate::track::is_final_code;
use crate::tracker::Tracker;

/// One line of `subscribed.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The subscribed waybill.
    pub request: WaybillRequest,
    /// Our order id.
    #[serde(default)]
    pub order_id: String,
    /// Wall-clock epoch ms of the subscription.
    pub subscribed_ms: i64,
}

/// Durable set of subscribed waybills, keyed by cleaned waybill number.
#[derive(Debug)]
pub struct SubscriptionBook {
    path: PathBuf,
    entries: Mutex<HashMap<String, Subscription>>,
    /// When the poller last queried each waybill (in memory only).
    last_polled: Mutex<HashMap<String, i64>>,
}

impl SubscriptionBook {
    /// Loads `state_dir/subscribed.jsonl` (created on first record).
    pub fn open(state_dir: &Path) -> Result<Self, KdniaoError> {
        std::fs::create_dir_all(state_dir).map_err(|e| KdniaoError::io(state_dir, e))?;
        let path = state_dir.join("subscribed.jsonl");
        let mut entries = HashMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Subscription>(line) {
                        Ok(s) => {
                            entries.insert(s.request.logistic_code.clone(), s);
                        }
                        Err(e) => {
                            tracing::warn!(line = n + 1, error = %e, "skipping unreadable subscription record")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KdniaoError::io(&path, e)),
        }
        Ok(SubscriptionBook {
            path,
            entries: Mutex::new(entries),
            last_polled: Mutex::new(HashMap::new()),
        })
    }

    /// True when the waybill was subscribed before.
    pub async fn contains(&self, logistic_code: &str) -> bool {
        self.entries.lock().await.contains_key(logistic_code)
    }

    /// Records a successful subscription durably.
    pub async fn record(&self, req: &WaybillRequest, order_id: &str) -> Result<(), KdniaoError> {
        let mut entries = self.entries.lock().await;
        if entries.contains_key(&req.logistic_code) {
            return Ok(());
        }
        let s = Subscription {
            request: req.clone(),
            order_id: if order_id.is_empty() {
                req.order_code.clone()
            } else {
                order_id.to_string()
            },
            subscribed_ms: chrono::Utc::now().timestamp_millis(),
        };
        let mut line = serde_json::to_string(&s).unwrap_or_default();
        line.push('\n');
        append_synced(&self.path, line.as_bytes()).map_err(|e| KdniaoError::io(&self.path, e))?;
        entries.insert(req.logistic_code.clone(), s);
        Ok(())
    }

    /// Every subscription.
    pub async fn all(&self) -> Vec<Subscription> {
        self.entries.lock().await.values().cloned().collect()
    }
}

/// Result of [`subscribe_orders`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeReport {
    /// Waybills newly subscribed.
    pub subscribed: usize,
    /// Shipments whose waybill was already subscribed (or repeated in the file).
    pub already: usize,
    /// Subscriptions that failed (parked in the failed queue unless a parameter error).
    pub failed: usize,
    /// Lines that were not usable shipment events.
    pub skipped_lines: usize,
}

/// Reads an `orders.jsonl` (spec §1 `orders` stream) and subscribes every shipment's
/// waybill not subscribed before. `CustomerName` comes from the phone of the shipment's
/// `order` event when the file has one.
pub async fn subscribe_orders(
    orders: &Path,
    tracker: &Tracker,
    book: &SubscriptionBook,
) -> Result<SubscribeReport, KdniaoError> {
    let text = std::fs::read_to_string(orders).map_err(|e| KdniaoError::io(orders, e))?;
    let mut phones: HashMap<String, String> = HashMap::new();
    let mut shipments = Vec::new();
    let mut report = SubscribeReport::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            report.skipped_lines += 1;
            continue;
        };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        match s("type").as_deref() {
            Some("order") => {
                if let (Some(o), Some(p)) = (s("order_id"), s("phone")) {
                    phones.insert(o, p);
                }
            }
            Some("shipment") => match (s("order_id"), s("shipper_code"), s("logistic_code")) {
                (Some(o), Some(sc), Some(lc)) if !lc.trim().is_empty() && !sc.trim().is_empty() => {
                    shipments.push((o, sc, lc))
                }
                _ => report.skipped_lines += 1,
            },
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    for (order_id, shipper, waybill) in shipments {
        let mut req = WaybillRequest::new(&shipper, &waybill).with_order_code(&order_id);
        if let Some(p) = phones.get(&order_id) {
            req = req.with_phone(p);
        }
        if !seen.insert(req.logistic_code.clone()) || book.contains(&req.logistic_code).await {
            report.already += 1;
            continue;
        }
        match tracker.subscribe(&req).await {
            Ok(_) => {
                book.record(&req, &order_id).await?;
                report.subscribed += 1;
                tracing::info!(order_id = %order_id, logistic_code = %req.logistic_code, "subscribed");
            }
            Err(e) => {
                report.failed += 1;
                tracing::warn!(order_id = %order_id, logistic_code = %req.logistic_code, error = %e, "subscription failed");
            }
        }
    }
    Ok(report)
}

/// Result of [`poll_quiet_once`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Waybills queried.
    pub queried: usize,
    /// New track events written.
    pub events: usize,
    /// Queries that failed (parked).
    pub failed: usize,
}

/// Queries every subscribed waybill that is not final and has been quiet for at least
/// `quiet_after_ms` before `now_ms` — quiet since the latest of its latest track, its
/// subscription and its last poll by this process. Answers go into `sink` (deduplicated
/// like pushes).
pub async fn poll_quiet_once(
    tracker: &Tracker,
    book: &SubscriptionBook,
    sink: &TrackSink,
    quiet_after_ms: i64,
    now_ms: i64,
) -> Result<PollReport, KdniaoError> {
    let mut report = PollReport::default();
    for sub in book.all().await {
        let status = sink.status(&sub.request.logistic_code).await;
        if status
            .as_ref()
            .is_some_and(|s| is_final_code(&s.latest_code))
        {
            continue;
        }
        let polled = book
            .last_polled
            .lock()
            .await
            .get(&sub.request.logistic_code)
            .copied()
            .unwrap_or(i64::MIN);
        let last = status
            .map_or(sub.subscribed_ms, |s| s.latest_ts.max(sub.subscribed_ms))
            .max(polled);
        if now_ms.saturating_sub(last) < quiet_after_ms {
            continue;
        }
        book.last_polled
            .lock()
            .await
            .insert(sub.request.logistic_code.clone(), now_ms);
        report.queried += 1;
        match tracker.query(&sub.request).await {
            Ok((provider, answer)) => {
                let r = sink.ingest(std::slice::from_ref(&answer)).await?;
                tracing::info!(logistic_code = %sub.request.logistic_code, %provider, events = r.written.len(), "polled quiet waybill");
                report.events += r.written.len();
            }
            Err(ProviderError::Parked { last }) => {
                report.failed += 1;
                tracing::warn!(logistic_code = %sub.request.logistic_code, error = %last, "poll failed; parked");
            }
            Err(e) => {
                report.failed += 1;
                tracing::warn!(logistic_code = %sub.request.logistic_code, error = %e, "poll failed");
            }
        }
    }
    Ok(report)
}
