//! Push receiver: Kdniao POSTs a form (`RequestData`, `RequestType` 101/102, `DataSign`)
//! to any path of this server; `GET /metrics` returns the counters as JSON (with `--http`
//! the same counters, each push's outcome and duration are also served as Prometheus text
//! on a separate address, see [`crate::telemetry`]).
//!
//! # Answers
//! Every push is answered with Kdniao's JSON reply ([`PushReply`]):
//!
//! | push | HTTP | `Success` | counter |
//! |---|---|---|---|
//! | stored (its events durable, see [`TrackSink`]) | 200 | true | `pushes_accepted` |
//! | `RequestData`, `RequestType` or `DataSign` absent or empty | 200 | false | `missing_fields` |
//! | `DataSign` does not verify | 200 | false | `bad_sign` |
//! | `RequestType` not 101/102, `RequestData` not the expected JSON, body unreadable | 200 (400 unreadable) | false | `malformed` |
//! | body larger than `receiver.max_body_bytes` | 413 | false | `too_large` |
//! | body not in within `receiver.body_timeout_ms` of its head | 408 | false | `body_timeouts` |
//! | storage failure | 500 | false | `storage_errors` |
//!
//! HTTP 200 with `Success:false` is the protocol's way to reject; a 5xx makes Kdniao push
//! again. Rejections are logged without any key, and nothing of a rejected push is written.
//!
//! Inside an accepted push, each `Data` item is used or counted: an item that is not a
//! Kdniao answer object counts in `rejected_items`; one that holds nothing usable — no
//! `LogisticCode`, no `ShipperCode`, or no `Traces` without being Kdniao's "no traces yet"
//! answer ([`KdniaoAnswer::is_no_traces`]) — in `unusable_items`; a trace whose time does
//! not parse becomes a dead letter ([`crate::dead_letter`]; `bad_traces`, `dead_letters`).
//! The rest of the push is stored and acknowledged.
//!
//! # Connections
//! HTTP/1.1 (keep-alive), served by hyper with the limits of [`ReceiverConfig`]:
//! a request head must be complete within `header_timeout_ms` of the connection's start
//! (or of the first byte of a later request on it), a kept-alive connection may wait at
//! most `idle_timeout_ms` for its next request, and a body must arrive within
//! `body_timeout_ms`; a connection that breaks the head or idle limit is closed
//! (`header_timeouts`, `idle_timeouts`). At most `max_connections` connections are served
//! at once: beyond that the receiver stops accepting, so new connections wait in the
//! kernel's listen backlog until one ends (`connection_limit_waits`; `connections_open` is
//! the current number). Slow or silent clients therefore hold a slot for at most
//! `header_timeout_ms` (or `idle_timeout_ms`, or `body_timeout_ms`) and can never hold
//! more than `max_connections` of them.
//!
//! On shutdown the receiver stops accepting, lets requests in flight finish (idle
//! connections close at once) and returns once every connection has ended — which the
//! timeouts bound.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::answer::{now_kdniao_time, KdniaoAnswer, PushRequestData};
use crate::config::ReceiverConfig;
use crate::error::{KdniaoError, Provider};
use crate::secret::Secret;
use crate::sign::verify_data_sign;
use crate::sink::TrackSink;
use crate::telemetry::{record_request, Endpoint};
use crate::track::clean_waybill;

/// Receiver counters (see the module docs for which answer counts where). Every push
/// (`POST`) counts in `pushes_received` and in exactly one of `pushes_accepted`,
/// `missing_fields`, `bad_sign`, `malformed`, `too_large`, `body_timeouts`,
/// `storage_errors`.
#[derive(Debug, Default)]
pub struct ReceiverMetrics {
    /// Pushes received (`POST`s, accepted or not).
    pub pushes_received: AtomicU64,
    /// Pushes accepted.
    pub pushes_accepted: AtomicU64,
    /// Pushes rejected because their DataSign does not verify.
    pub bad_sign: AtomicU64,
    /// Pushes rejected because `RequestData`, `RequestType` or `DataSign` is absent or empty.
    pub missing_fields: AtomicU64,
    /// Pushes rejected as malformed (bad JSON, unknown RequestType, unreadable body).
    pub malformed: AtomicU64,
    /// Pushes rejected because the body is larger than `max_body_bytes` (HTTP 413).
    pub too_large: AtomicU64,
    /// Pushes whose body did not arrive within `body_timeout_ms` (HTTP 408).
    pub body_timeouts: AtomicU64,
    /// Pushes that could not be made durable.
    pub storage_errors: AtomicU64,
    /// `Data` items of accepted pushes that hold nothing usable.
    pub unusable_items: AtomicU64,
    /// Connections closed because a request head was not complete in time.
    pub header_timeouts: AtomicU64,
    /// Kept-alive connections closed after waiting `idle_timeout_ms` for a request.
    pub idle_timeouts: AtomicU64,
    /// Times the receiver reached `max_connections` and stopped accepting until a
    /// connection ended.
    pub connection_limit_waits: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
}

/// Shared receiver state.
#[derive(Debug)]
pub struct ReceiverState {
    ebusiness_id: String,
    app_key: Secret,
    sink: Arc<TrackSink>,
    settings: ReceiverConfig,
    /// Counters.
    pub metrics: ReceiverMetrics,
}

impl ReceiverState {
    /// State for a receiver of pushes to merchant `ebusiness_id`, with the default
    /// [`ReceiverConfig`] limits.
    pub fn new(ebusiness_id: String, app_key: Secret, sink: Arc<TrackSink>) -> Arc<Self> {
        Self::with_settings(ebusiness_id, app_key, sink, ReceiverConfig::default())
    }

    /// State for a receiver with the given timeouts and limits.
    pub fn with_settings(
        ebusiness_id: String,
        app_key: Secret,
        sink: Arc<TrackSink>,
        settings: ReceiverConfig,
    ) -> Arc<Self> {
        Arc::new(ReceiverState {
            ebusiness_id,
            app_key,
            sink,
            settings,
            metrics: ReceiverMetrics::default(),
        })
    }

    /// The sink pushes go to.
    pub fn sink(&self) -> &Arc<TrackSink> {
        &self.sink
    }

    /// The timeouts and limits in force.
    pub fn settings(&self) -> &ReceiverConfig {
        &self.settings
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

/// A rejection sent before the body was read to its end: the connection is closed after
/// it (the rest of the body is not read).
fn reply_and_close(state: &ReceiverState, status: StatusCode, reason: &str) -> Response {
    let mut r = reply(state, status, false, reason);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The receiver's router.
pub fn router(state: Arc<ReceiverState>) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(push)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn metrics(State(st): State<Arc<ReceiverState>>) -> Json<serde_json::Value> {
    let m = &st.metrics;
    let s = &st.sink.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Json(serde_json::json!({
        "pushes_received": g(&m.pushes_received),
        "pushes_accepted": g(&m.pushes_accepted),
        "bad_sign": g(&m.bad_sign),
        "missing_fields": g(&m.missing_fields),
        "malformed": g(&m.malformed),
        "too_large": g(&m.too_large),
        "body_timeouts": g(&m.body_timeouts),
        "storage_errors": g(&m.storage_errors),
        "unusable_items": g(&m.unusable_items),
        "events_written": g(&s.events_written),
        "duplicates": g(&s.duplicates),
        "inferred_suppressed": g(&s.inferred_suppressed),
        "bad_traces": g(&s.bad_traces),
        "dead_letters": g(&s.dead_letters),
        "rejected_items": g(&s.rejected_items),
        "header_timeouts": g(&m.header_timeouts),
        "idle_timeouts": g(&m.idle_timeouts),
        "connection_limit_waits": g(&m.connection_limit_waits),
        "connections_open": g(&m.connections_open),
    }))
}

/// The three fields of a push form (`application/x-www-form-urlencoded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushForm {
    /// `RequestData`, the JSON text as sent (percent-decoded once).
    pub request_data: String,
    /// `RequestType`, trimmed.
    pub request_type: String,
    /// `DataSign`, as sent.
    pub data_sign: String,
}

/// The push fields a form lacks (absent or empty), comma-separated in the order
/// `RequestData, RequestType, DataSign`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MissingFields(pub String);

/// Parses a push body. Any bytes are accepted (invalid UTF-8 is replaced); the last of
/// repeated fields wins; other fields are ignored. `Err` names every required field that is
/// absent or empty.
pub fn parse_push_form(body: &[u8]) -> Result<PushForm, MissingFields> {
    let mut request_data = None;
    let mut request_type = None;
    let mut sign = None;
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "RequestData" => request_data = Some(v.into_owned()),
            "RequestType" => request_type = Some(v.trim().to_string()),
            "DataSign" => sign = Some(v.into_owned()),
            _ => {}
        }
    }
    match (request_data, request_type, sign) {
        (Some(d), Some(t), Some(s)) if !d.is_empty() && !t.is_empty() && !s.is_empty() => {
            Ok(PushForm {
                request_data: d,
                request_type: t,
                data_sign: s,
            })
        }
        (d, t, s) => {
            let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
            let missing: Vec<&str> = [
                ("RequestData", present(&d)),
                ("RequestType", present(&t)),
                ("DataSign", present(&s)),
            ]
            .into_iter()
            .filter_map(|(name, ok)| (!ok).then_some(name))
            .collect();
            Err(MissingFields(missing.join(", ")))
        }
    }
}

/// Why a push item holds nothing usable, if it does not.
fn unusable(item: &KdniaoAnswer) -> Option<String> {
    if clean_waybill(item.logistic_code.as_deref().unwrap_or("")).is_empty() {
        return Some("no LogisticCode".to_string());
    }
    if item.shipper_code.as_deref().unwrap_or("").trim().is_empty() {
        return Some("no ShipperCode".to_string());
    }
    if item.traces.is_empty() && !item.is_no_traces() {
        return Some(match &item.reason {
            Some(r) => format!("no Traces (Reason: {r})"),
            None => "no Traces".to_string(),
        });
    }
    None
}

/// Reads the body within the body deadline and the size limit; `Err` is the answer.
async fn read_body(st: &ReceiverState, req: Request) -> Result<Bytes, Response> {
    let limit = st.settings.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || {
        st.metrics.too_large.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            max_body_bytes = limit,
            content_length = ?declared,
            "push rejected: body too large"
        );
        reply_and_close(
            st,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body larger than {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let deadline = st.settings.body_timeout();
    match tokio::time::timeout(deadline, Bytes::from_request(req, &())).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(too_large())
        }
        Ok(Err(rejection)) => {
            st.metrics.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %rejection.body_text(), "push rejected: body could not be read");
            Err(reply_and_close(
                st,
                StatusCode::BAD_REQUEST,
                "request body could not be read",
            ))
        }
        Err(_) => {
            st.metrics.body_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                body_timeout_ms = st.settings.body_timeout_ms,
                "push rejected: body not received in time"
            );
            Err(reply_and_close(
                st,
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "request body not received within {} ms",
                    st.settings.body_timeout_ms
                ),
            ))
        }
    }
}

async fn push(State(st): State<Arc<ReceiverState>>, req: Request) -> Response {
    if req.method() != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST a Kdniao push").into_response();
    }
    st.metrics.pushes_received.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let (accepted, answer) = match take_push(&st, req).await {
        Ok(answer) => (true, answer),
        Err(answer) => (false, answer),
    };
    record_request(
        Endpoint::Push,
        Provider::Kdniao,
        accepted,
        started.elapsed(),
    );
    answer
}

/// Handles one push: `Ok` with the answer when it was accepted, `Err` with the answer when
/// it was rejected.
async fn take_push(st: &ReceiverState, req: Request) -> Result<Response, Response> {
    let body = read_body(st, req).await?;
    let PushForm {
        request_data: data,
        request_type,
        data_sign: sign,
    } = match parse_push_form(&body) {
        Ok(form) => form,
        Err(missing) => {
            st.metrics.missing_fields.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%missing, "push rejected: fields missing");
            return Err(reply(
                st,
                StatusCode::OK,
                false,
                &format!("missing {missing}"),
            ));
        }
    };
    if !verify_data_sign(&data, &sign, &st.app_key) {
        st.metrics.bad_sign.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(request_type = %request_type, data_len = data.len(), "push rejected: DataSign does not verify");
        return Err(reply(st, StatusCode::OK, false, "DataSign invalid"));
    }
    if !matches!(request_type.as_str(), "101" | "102") {
        st.metrics.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(request_type = %request_type, "push rejected: unsupported RequestType");
        return Err(reply(
            st,
            StatusCode::OK,
            false,
            "RequestType must be 101 or 102",
        ));
    }
    let parsed: PushRequestData = match serde_json::from_str(&data) {
        Ok(p) => p,
        Err(e) => {
            st.metrics.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "push rejected: RequestData is not the expected JSON");
            return Err(reply(
                st,
                StatusCode::OK,
                false,
                "RequestData is not valid JSON",
            ));
        }
    };
    let mut answers = Vec::with_capacity(parsed.data.len());
    let mut unusable_items = 0u64;
    for (i, item) in parsed.data.into_iter().enumerate() {
        match serde_json::from_value::<KdniaoAnswer>(item) {
            Ok(a) => match unusable(&a) {
                None => answers.push(a),
                Some(why) => {
                    unusable_items += 1;
                    tracing::warn!(item = i, logistic_code = ?a.logistic_code, shipper_code = ?a.shipper_code, reason = %why, "push item holds nothing usable");
                }
            },
            Err(e) => {
                st.sink
                    .metrics
                    .rejected_items
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(item = i, error = %e, "skipping malformed push item");
            }
        }
    }
    st.metrics
        .unusable_items
        .fetch_add(unusable_items, Ordering::Relaxed);
    match st.sink.ingest(&answers).await {
        Ok(r) => {
            st.metrics.pushes_accepted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(request_type = %request_type, items = answers.len(), unusable_items, written = r.written.len(), duplicates = r.duplicates, bad_traces = r.bad_traces.len(), dead_letters = r.dead_letters.len(), "push accepted");
            Ok(reply(st, StatusCode::OK, true, ""))
        }
        Err(e) => {
            st.metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(alert = true, error = %e, "push not stored; asking Kdniao to resend");
            Err(reply(
                st,
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                "storage error, retry later",
            ))
        }
    }
}

/// Serves the receiver on `listener` until `shutdown` completes, with the timeouts and
/// limits of the state's [`ReceiverConfig`] (see the module docs). After `shutdown` no
/// connection is accepted; open ones finish their request in flight, and this returns
/// once all have ended.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ReceiverState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), KdniaoError> {
    let addr = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    let settings = state.settings.clone();
    settings.validate()?;
    tracing::info!(
        %addr,
        header_timeout_ms = settings.header_timeout_ms,
        body_timeout_ms = settings.body_timeout_ms,
        idle_timeout_ms = settings.idle_timeout_ms,
        max_connections = settings.max_connections,
        max_body_bytes = settings.max_body_bytes,
        "kdniao push receiver listening"
    );
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut at_limit = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                if at_limit {
                    tracing::info!("below the connection limit again");
                    at_limit = false;
                }
                p
            }
            Err(_) => {
                state
                    .metrics
                    .connection_limit_waits
                    .fetch_add(1, Ordering::Relaxed);
                if !at_limit {
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        "connection limit reached; new connections wait until one ends"
                    );
                }
                at_limit = true;
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break, // never closed
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // E.g. out of file descriptors: wait a little instead of spinning.
                        tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        spawn_connection(stream, peer, permit, &app, &state, &graceful);
    }
    drop(listener);
    tracing::info!(
        open = graceful.count(),
        "kdniao push receiver stopping: finishing open connections"
    );
    graceful.shutdown().await;
    tracing::info!("kdniao push receiver stopped");
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection on its own task; the permit (a connection slot) is released
/// when the connection ends.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    app: &Router,
    state: &Arc<ReceiverState>,
    graceful: &GracefulShutdown,
) {
    let in_request = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(GuardedIo::new(
        stream,
        peer,
        in_request.clone(),
        state.clone(),
    ));
    let service = TowerToHyperService::new(app.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let request = InRequest::start(&in_request);
        let answer = service.call(req);
        async move {
            let r = answer.await;
            drop(request);
            r
        }
    });
    // The head and idle deadlines are GuardedIo's: hyper's own header timer also runs
    // while a kept-alive connection waits, so it cannot tell the two apart.
    let conn = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service);
    let conn = graceful.watch(conn);
    let state = state.clone();
    tokio::spawn(async move {
        let _permit = permit;
        state
            .metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        state
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    });
}

/// Marks a connection as handling a request while alive.
struct InRequest(Arc<AtomicBool>);

impl InRequest {
    fn start(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        InRequest(flag.clone())
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The rest of a request head (deadline: `header_timeout`).
    Head,
    /// The first byte of the next request on a kept-alive connection (`idle_timeout`).
    Idle,
    /// Nothing: a request is being handled (the body deadline is the handler's).
    Busy,
}

/// The connection's socket, closing it (a read error hyper turns into the end of the
/// connection) when a request head or a kept-alive wait takes too long.
struct GuardedIo {
    stream: TcpStream,
    peer: SocketAddr,
    in_request: Arc<AtomicBool>,
    state: Arc<ReceiverState>,
    header_timeout: Duration,
    idle_timeout: Duration,
    wait: Wait,
    deadline: Pin<Box<Sleep>>,
    timed_out: Option<&'static str>,
}

impl GuardedIo {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        in_request: Arc<AtomicBool>,
        state: Arc<ReceiverState>,
    ) -> Self {
        let header_timeout = state.settings.header_timeout();
        let idle_timeout = state.settings.idle_timeout();
        GuardedIo {
            stream,
            peer,
            in_request,
            state,
            header_timeout,
            idle_timeout,
            // The first request's head is due `header_timeout` after the connection opened.
            wait: Wait::Head,
            deadline: Box::pin(tokio::time::sleep(header_timeout)),
            timed_out: None,
        }
    }

    fn arm(&mut self, wait: Wait) {
        self.wait = wait;
        let after = match wait {
            Wait::Head => self.header_timeout,
            Wait::Idle => self.idle_timeout,
            Wait::Busy => return,
        };
        self.deadline.as_mut().reset(Instant::now() + after);
    }

    /// Follows the request/response cycle: busy while the service handles a request,
    /// idle once it has answered.
    fn follow_requests(&mut self) {
        if self.in_request.load(Ordering::Acquire) {
            self.wait = Wait::Busy;
        } else if self.wait == Wait::Busy {
            self.arm(Wait::Idle);
        }
    }

    /// Called when a read is pending: fails it once the deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(what) = self.timed_out {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
        }
        if self.wait == Wait::Busy || self.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let m = &self.state.metrics;
        let what = if self.wait == Wait::Head {
            m.header_timeouts.fetch_add(1, Ordering::Relaxed);
            "request head not received within receiver.header_timeout_ms"
        } else {
            m.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            "kept-alive connection idle for receiver.idle_timeout_ms"
        };
        tracing::debug!(peer = %self.peer, "{what}; closing the connection");
        self.timed_out = Some(what);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.follow_requests();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.wait == Wait::Idle && buf.filled().len() > before {
                    // The next request has begun: its head is due in `header_timeout`.
                    this.arm(Wait::Head);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
