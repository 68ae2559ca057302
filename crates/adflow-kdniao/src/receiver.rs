//! Push receiver: Kdniao POSTs a form (`RequestData`, `RequestType` 101/102, `DataSign`)
//! to any path of this server; `GET /metrics` returns the counters as JSON.
//!
//! A push is answered `Success:true` only after its events are durable (see
//! [`TrackSink`]). A bad or missing sign is answered `Success:false` (HTTP 200, the
//! protocol's way), logged without any key, and counted; nothing is written. A storage
//! failure is answered `Success:false` with HTTP 500 so that Kdniao pushes again.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::answer::{now_kdniao_time, KdniaoAnswer, PushRequestData};
use crate::error::KdniaoError;
use crate::secret::Secret;
use crate::sign::verify_data_sign;
use crate::sink::TrackSink;

/// Receiver counters.
#[derive(Debug, Default)]
pub struct ReceiverMetrics {
    /// Pushes accepted.
    pub pushes_accepted: AtomicU64,
    /// Pushes rejected for a bad or missing DataSign.
    pub bad_sign: AtomicU64,
    /// Pushes rejected as malformed (missing fields, bad JSON, unknown RequestType).
    pub malformed: AtomicU64,
    /// Pushes that could not be made durable.
    pub storage_errors: AtomicU64,
}

/// Shared receiver state.
#[derive(Debug)]
pub struct ReceiverState {
    ebusiness_id: String,
    app_key: Secret,
    sink: Arc<TrackSink>,
    /// Counters.
    pub metrics: ReceiverMetrics,
}

impl ReceiverState {
    /// State for a receiver of pushes to merchant `ebusiness_id`.
    pub fn new(ebusiness_id: String, app_key: Secret, sink: Arc<TrackSink>) -> Arc<Self> {
        Arc::new(ReceiverState {
            ebusiness_id,
            app_key,
            sink,
            metrics: ReceiverMetrics::default(),
        })
    }

    /// The sink pushes go to.
    pub fn sink(&self) -> &Arc<TrackSink> {
        &self.sink
    }
}

/// The reply Kdniao expects.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PushReply {
    /// Our merchant id.
    #[serde(rename = "EBusinessID")]
    pub ebusiness_id: String,
    /// Now, `yyyy-MM-dd HH:mm:ss` in +08:00.
    pub update_time: String,
    /// Accepted or not.
    pub success: bool,
    /// Empty on success.
    pub reason: String,
}

fn reply(state: &ReceiverState, status: StatusCode, success: bool, reason: &str) -> Response {
    (
        status,
        Json(PushReply {
            ebusiness_id: state.ebusiness_id.clone(),
            update_time: now_kdniao_time(),
            success,
            reason: reason.to_string(),
        }),
    )
        .into_response()
}

/// The receiver's router.
pub fn router(state: Arc<ReceiverState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(push)
        .with_state(state)
}

async fn metrics(State(st): State<Arc<ReceiverState>>) -> Json<serde_json::Value> {
    let m = &st.metrics;
    let s = &st.sink.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Json(serde_json::json!({
        "pushes_accepted": g(&m.pushes_accepted),
        "bad_sign": g(&m.bad_sign),
        "malformed": g(&m.malformed),
        "storage_errors": g(&m.storage_errors),
        "events_written": g(&s.events_written),
        "duplicates": g(&s.duplicates),
        "inferred_suppressed": g(&s.inferred_suppressed),
        "bad_traces": g(&s.bad_traces),
        "rejected_items": g(&s.rejected_items),
    }))
}

async fn push(State(st): State<Arc<ReceiverState>>, method: Method, body: Bytes) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST a Kdniao push").into_response();
    }
    let mut request_data = None;
    let mut request_type = None;
    let mut sign = None;
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "RequestData" => request_data = Some(v.into_owned()),
            "RequestType" => request_type = Some(v.trim().to_string()),
            "DataSign" => sign = Some(v.into_owned()),
            _ => {}
        }
    }
    let (Some(data), Some(sign)) = (request_data, sign) else {
        st.metrics.bad_sign.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("push rejected: RequestData or DataSign missing");
        return reply(
            &st,
            StatusCode::OK,
            false,
            "RequestData or DataSign missing",
        );
    };
    if !verify_data_sign(&data, &sign, &st.app_key) {
        st.metrics.bad_sign.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(request_type = ?request_type, data_len = data.len(), "push rejected: DataSign does not verify");
        return reply(&st, StatusCode::OK, false, "DataSign invalid");
    }
    if !matches!(request_type.as_deref(), Some("101") | Some("102")) {
        st.metrics.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(request_type = ?request_type, "push rejected: unsupported RequestType");
        return reply(&st, StatusCode::OK, false, "RequestType must be 101 or 102");
    }
    let parsed: PushRequestData = match serde_json::from_str(&data) {
        Ok(p) => p,
        Err(e) => {
            st.metrics.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "push rejected: RequestData is not the expected JSON");
            return reply(&st, StatusCode::OK, false, "RequestData is not valid JSON");
        }
    };
    let mut answers = Vec::with_capacity(parsed.data.len());
    for (i, item) in parsed.data.into_iter().enumerate() {
        match serde_json::from_value::<KdniaoAnswer>(item) {
            Ok(a) => answers.push(a),
            Err(e) => {
                st.sink
                    .metrics
                    .rejected_items
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(item = i, error = %e, "skipping malformed push item");
            }
        }
    }
    match st.sink.ingest(&answers).await {
        Ok(r) => {
            st.metrics.pushes_accepted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(request_type = ?request_type, items = answers.len(), written = r.written.len(), duplicates = r.duplicates, bad_traces = r.bad_traces.len(), "push accepted");
            reply(&st, StatusCode::OK, true, "")
        }
        Err(e) => {
            st.metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(alert = true, error = %e, "push not stored; asking Kdniao to resend");
            reply(
                &st,
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                "storage error, retry later",
            )
        }
    }
}

/// Serves the receiver on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ReceiverState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), KdniaoError> {
    let addr = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, "kdniao push receiver listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| KdniaoError::Server { addr, source })
}
