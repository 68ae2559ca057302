//! Failover and the failed queue.
//!
//! [`Tracker::query`]: Kdniao first (with its retries); when that fails with anything but
//! a parameter error, Kuaidi100 (if configured); when both fail, the request is appended
//! to the durable failed queue (`failed.jsonl`) and [`ProviderError::Parked`] is returned.
//! Subscriptions have no backup (Kuaidi100's subscription API is not wired): a failed
//! subscription is parked directly. [`Tracker::replay_failed`] re-sends every parked
//! request once; those that fail again stay in the queue.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::answer::KdniaoAnswer;
use crate::client::{KdniaoClient, WaybillRequest};
use crate::config::KdniaoConfig;
use crate::error::{KdniaoError, Provider, ProviderError};
use crate::kuaidi100::Kuaidi100Client;
use crate::sink::{append_synced, TrackSink};
use crate::subscribe::SubscriptionBook;

/// What a parked request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// An instant query.
    Query,
    /// A subscription.
    Subscribe,
}

/// One line of the failed queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRequest {
    /// Query or subscription.
    pub kind: RequestKind,
    /// The waybill.
    pub request: WaybillRequest,
    /// Wall-clock epoch ms of the first failure.
    pub first_failed_ms: i64,
    /// Number of failed rounds (initial + replays).
    pub attempts: u32,
    /// The last error's text (never contains a secret).
    pub last_error: String,
}

/// Durable failed queue: a JSON Lines file.
#[derive(Debug)]
pub struct FailedQueue {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FailedQueue {
    /// A queue stored at `path` (created on first push).
    pub fn new(path: PathBuf) -> Self {
        FailedQueue {
            path,
            lock: Mutex::new(()),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one request durably.
    pub async fn push(&self, item: &FailedRequest) -> Result<(), KdniaoError> {
        let _g = self.lock.lock().await;
        let mut line = serde_json::to_string(item).unwrap_or_default();
        line.push('\n');
        append_synced(&self.path, line.as_bytes()).map_err(|e| KdniaoError::io(&self.path, e))
    }

    /// Every parked request (unreadable lines are skipped with a warning).
    pub async fn load(&self) -> Result<Vec<FailedRequest>, KdniaoError> {
        let _g = self.lock.lock().await;
        self.load_unlocked()
    }

    fn load_unlocked(&self) -> Result<Vec<FailedRequest>, KdniaoError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KdniaoError::io(&self.path, e)),
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(line = n + 1, error = %e, "skipping unreadable failed-queue line")
                }
            }
        }
        Ok(out)
    }

    /// Atomically replaces the queue's content (temp file, fsync, rename).
    fn replace_unlocked(&self, items: &[FailedRequest]) -> Result<(), KdniaoError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            for i in items {
                let mut line = serde_json::to_string(i).unwrap_or_default();
                line.push('\n');
                f.write_all(line.as_bytes())?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename itself is durable only once the directory is synced.
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| KdniaoError::io(&self.path, e))
    }
}

/// Result of [`Tracker::replay_failed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Requests that succeeded and left the queue.
    pub succeeded: usize,
    /// Requests that failed again and stay queued.
    pub still_failed: usize,
    /// Requests dropped because they can never succeed (parameter errors).
    pub dropped: usize,
}

/// Kdniao with Kuaidi100 failover and the failed queue.
#[derive(Debug)]
pub struct Tracker {
    kdniao: KdniaoClient,
    backup: Option<Kuaidi100Client>,
    failed: Arc<FailedQueue>,
    replay_lock: Mutex<()>,
}

impl Tracker {
    /// Builds the clients from `cfg`; the failed queue lives at `state_dir/failed.jsonl`.
    pub fn new(cfg: &KdniaoConfig, state_dir: &Path) -> Result<Self, KdniaoError> {
        std::fs::create_dir_all(state_dir).map_err(|e| KdniaoError::io(state_dir, e))?;
        let backup = match &cfg.kuaidi100 {
            Some(k) => Some(Kuaidi100Client::new(k, &cfg.http)?),
            None => None,
        };
        Ok(Tracker {
            kdniao: KdniaoClient::new(cfg)?,
            backup,
            failed: Arc::new(FailedQueue::new(state_dir.join("failed.jsonl"))),
            replay_lock: Mutex::new(()),
        })
    }

    /// The failed queue.
    pub fn failed_queue(&self) -> &FailedQueue {
        &self.failed
    }

    /// Queries without parking: Kdniao, then the backup.
    async fn query_direct(
        &self,
        req: &WaybillRequest,
    ) -> Result<(Provider, KdniaoAnswer), ProviderError> {
        let primary = match self.kdniao.query(req).await {
            Ok(a) => return Ok((Provider::Kdniao, a)),
            Err(e) => e,
        };
        if !primary.allows_failover() {
            return Err(primary);
        }
        let Some(backup) = &self.backup else {
            return Err(primary);
        };
        tracing::warn!(logistic_code = %req.logistic_code, error = %primary, "kdniao failed; failing over to kuaidi100");
        match backup.query(req).await {
            Ok(a) => Ok((Provider::Kuaidi100, a)),
            Err(e) => {
                tracing::error!(logistic_code = %req.logistic_code, kdniao = %primary, kuaidi100 = %e, "both providers failed");
                Err(e)
            }
        }
    }

    /// Queries a waybill with failover; parks it in the failed queue when every provider
    /// fails with a recoverable error.
    pub async fn query(
        &self,
        req: &WaybillRequest,
    ) -> Result<(Provider, KdniaoAnswer), ProviderError> {
        match self.query_direct(req).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.park(RequestKind::Query, req, e).await),
        }
    }

    /// Subscribes a waybill at Kdniao; parks it when that fails recoverably.
    pub async fn subscribe(&self, req: &WaybillRequest) -> Result<KdniaoAnswer, ProviderError> {
        match self.kdniao.subscribe(req).await {
            Ok(a) => Ok(a),
            Err(e) => Err(self.park(RequestKind::Subscribe, req, e).await),
        }
    }

    async fn park(
        &self,
        kind: RequestKind,
        req: &WaybillRequest,
        e: ProviderError,
    ) -> ProviderError {
        if !e.is_parkable() {
            return e;
        }
        let item = FailedRequest {
            kind,
            request: req.clone(),
            first_failed_ms: chrono::Utc::now().timestamp_millis(),
            attempts: 1,
            last_error: e.to_string(),
        };
        match self.failed.push(&item).await {
            Ok(()) => {
                tracing::warn!(logistic_code = %req.logistic_code, ?kind, error = %e, "request parked in failed queue")
            }
            Err(pe) => {
                tracing::error!(alert = true, logistic_code = %req.logistic_code, error = %pe, "could not park failed request")
            }
        }
        ProviderError::Parked { last: Box::new(e) }
    }

    /// Re-sends every parked request once (queries go through failover and their answers
    /// into `sink`; subscriptions are recorded in `book`). Successes leave the queue;
    /// recoverable failures stay (with `attempts` incremented); parameter errors are
    /// dropped with an alert. Requests parked while the replay runs are kept.
    pub async fn replay_failed(
        &self,
        sink: Option<&TrackSink>,
        book: Option<&SubscriptionBook>,
    ) -> Result<ReplayReport, KdniaoError> {
        let _r = self.replay_lock.lock().await;
        let items = self.failed.load().await?;
        let taken = items.len();
        let mut keep = Vec::new();
        let mut report = ReplayReport::default();
        for mut item in items {
            let result =
                match item.kind {
                    RequestKind::Query => match self.query_direct(&item.request).await {
                        Ok((_, answer)) => match sink {
                            Some(s) => s
                                .ingest(std::slice::from_ref(&answer))
                                .await
                                .map(|_| ())
                                .map_err(|e| ProviderError::Rejected {
                                    provider: Provider::Kdniao,
                                    reason: format!("sink: {e}"),
                                }),
                            None => Ok(()),
                        },
                        Err(e) => Err(e),
                    },
                    RequestKind::Subscribe => match self.kdniao.subscribe(&item.request).await {
                        Ok(_) => match book {
                            Some(b) => b.record(&item.request, "").await.map_err(|e| {
                                ProviderError::Rejected {
                                    provider: Provider::Kdniao,
                                    reason: format!("subscription book: {e}"),
                                }
                            }),
                            None => Ok(()),
                        },
                        Err(e) => Err(e),
                    },
                };
            match result {
                Ok(()) => report.succeeded += 1,
                Err(e) if !e.is_parkable() => {
                    tracing::error!(alert = true, logistic_code = %item.request.logistic_code, error = %e, "dropping parked request that cannot succeed");
                    report.dropped += 1;
                }
                Err(e) => {
                    item.attempts += 1;
                    item.last_error = e.to_string();
                    keep.push(item);
                    report.still_failed += 1;
                }
            }
        }
        // Keep anything parked meanwhile (appended after the `taken` items we read).
        let _g = self.failed.lock.lock().await;
        let now = self.failed.load_unlocked()?;
        keep.extend(now.into_iter().skip(taken));
        self.failed.replace_unlocked(&keep)?;
        tracing::info!(
            succeeded = report.succeeded,
            still_failed = report.still_failed,
            dropped = report.dropped,
            "failed queue replayed"
        );
        Ok(report)
    }
}
