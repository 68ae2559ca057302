//! A stand-in Kdniao (and Kuaidi100) server that obeys the same protocol, for tests and
//! demos. It validates `DataSign` (Kuaidi100: `sign`), answers queries from a scripted set
//! of waybills, records subscriptions, pushes track updates to a callback URL, and can be
//! told to fail (timeouts, HTTP 5xx, quota and parameter errors).
//!
//! Routes: `POST /poll/query.do` is Kuaidi100; `/control/*` is the control API
//! (`POST /control/fail`, `POST /control/push`, `POST /control/waybill`,
//! `GET /control/requests`, `GET /control/subscriptions`); every other `POST` is Kdniao.
//!
//! `POST /control/push` takes a [`PushCommand`] and answers a [`PushSummary`]
//! (`{"pushes","failed","items","status","reply"}`) once every push was answered.
//! Waybills come from the script, `POST /control/waybill`, or a spec §1 `logistics.jsonl`
//! (`sandbox --tracks FILE`, see [`crate::replay`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::answer::{now_kdniao_time, parse_kdniao_time, KdniaoAnswer};
use crate::error::{KdniaoError, Provider};
use crate::secret::Secret;
use crate::sign::{data_sign, kuaidi100_sign, verify_data_sign};
use crate::track::clean_waybill;

/// How a stand-in provider misbehaves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum FailMode {
    /// Answer normally.
    #[default]
    None,
    /// Wait `delay_ms` before answering (longer than the client's timeout).
    Timeout {
        /// Delay in ms (default 10000).
        #[serde(default = "default_delay")]
        delay_ms: u64,
    },
    /// Answer HTTP 500.
    Http500,
    /// Answer the quota error (`业务错误[没有可用套餐]`; Kuaidi100 returnCode 601).
    Quota,
    /// Answer a parameter error (`无效的输入[...]`; Kuaidi100 returnCode 400).
    BadParam,
}

fn default_delay() -> u64 {
    10_000
}

/// Kuaidi100 credentials the stand-in accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxKuaidi100 {
    /// Accepted `customer`.
    pub customer: String,
    /// Signing key.
    pub key: Secret,
}

/// The script: waybills in Kdniao's answer shape plus initial failure modes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxScript {
    /// Known waybills (Kdniao answer objects: `ShipperCode`, `LogisticCode`, `State`,
    /// `StateEx`, `Traces`).
    #[serde(default)]
    pub waybills: Vec<KdniaoAnswer>,
    /// Default callback URL for pushes.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Initial Kdniao failure mode.
    #[serde(default)]
    pub kdniao_fail: FailMode,
    /// Initial Kuaidi100 failure mode.
    #[serde(default)]
    pub kuaidi100_fail: FailMode,
    /// Kuaidi100 credentials; Kuaidi100 requests are rejected when absent.
    #[serde(default)]
    pub kuaidi100: Option<SandboxKuaidi100>,
}

/// One request the stand-in received.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// Microseconds since the stand-in started.
    pub at_us: u64,
    /// Which protocol.
    pub provider: Provider,
    /// Kdniao RequestType (0 for Kuaidi100).
    pub request_type: u16,
    /// The waybill asked about, when readable.
    pub logistic_code: String,
    /// Whether the sign verified.
    pub sign_ok: bool,
}

/// Body of `POST /control/fail`.
#[derive(Debug, Clone, Deserialize)]
pub struct FailRequest {
    /// Which stand-in.
    pub provider: Provider,
    /// The new mode (flattened: `{"provider":"kdniao","mode":"timeout","delay_ms":5000}`).
    #[serde(flatten)]
    pub mode: FailMode,
}

/// Body of `POST /control/push`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PushCommand {
    /// Where to push (default: the script's `callback_url`).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// 101 (default) or 102.
    #[serde(default)]
    pub request_type: Option<u16>,
    /// Waybills to include (default: all).
    #[serde(default)]
    pub logistic_codes: Option<Vec<String>>,
    /// Sign with a wrong key (to test rejection).
    #[serde(default)]
    pub bad_sign: bool,
    /// At most this many waybills per push (Kdniao batches its pushes); default: all in one.
    #[serde(default)]
    pub max_items: Option<usize>,
    /// Replay how each waybill's trace grew, in trace-time order, the way Kdniao pushes each
    /// update with the full trace so far: every trace `k` of a waybill is pushed once as the
    /// latest, in an item holding the waybill's first `k` traces (top-level state of the
    /// `k`-th); pushes follow the traces' times, with at most one item per waybill in a push.
    /// Default: every selected waybill once, with its full trace.
    #[serde(default)]
    pub progressive: bool,
}

/// What a multi-push ([`Sandbox::push_all`], `POST /control/push`) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushSummary {
    /// Push requests sent.
    pub pushes: u64,
    /// Pushes not answered `HTTP 200` with `Success:true` (or not answered at all).
    pub failed: u64,
    /// Waybill items sent, all pushes together.
    pub items: u64,
    /// HTTP status of the first failed push, else of the last push (0: no answer).
    pub status: u16,
    /// Reply body of that push (or the transport error).
    pub reply: String,
}

struct Inner {
    waybills: Vec<KdniaoAnswer>,
    kdniao_fail: FailMode,
    kuaidi100_fail: FailMode,
    requests: Vec<RecordedRequest>,
    subscriptions: Vec<(String, u16)>,
}

struct SandboxState {
    ebusiness_id: String,
    app_key: Secret,
    kuaidi100: Option<SandboxKuaidi100>,
    callback_url: Option<String>,
    start: Instant,
    inner: Mutex<Inner>,
    http: reqwest::Client,
}

impl SandboxState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave Inner inconsistent (plain pushes),
        // so a poisoned lock is recovered.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, provider: Provider, request_type: u16, logistic_code: String, sign_ok: bool) {
        let at_us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.lock().requests.push(RecordedRequest {
            at_us,
            provider,
            request_type,
            logistic_code,
            sign_ok,
        });
    }

    fn find(&self, logistic_code: &str) -> Option<KdniaoAnswer> {
        let lc = clean_waybill(logistic_code);
        self.lock()
            .waybills
            .iter()
            .find(|w| w.logistic_code.as_deref().map(clean_waybill).as_deref() == Some(lc.as_str()))
            .cloned()
    }
}

/// A running stand-in server.
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<SandboxState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("addr", &self.addr).finish()
    }
}

impl Sandbox {
    /// Starts the stand-in on `listener` for merchant `ebusiness_id` with `app_key`.
    pub async fn start(
        listener: tokio::net::TcpListener,
        ebusiness_id: &str,
        app_key: Secret,
        script: SandboxScript,
    ) -> Result<Sandbox, KdniaoError> {
        let addr = listener
            .local_addr()
            .map_err(|source| KdniaoError::Server {
                addr: "sandbox".into(),
                source,
            })?;
        let state = Arc::new(SandboxState {
            ebusiness_id: ebusiness_id.to_string(),
            app_key,
            kuaidi100: script.kuaidi100,
            callback_url: script.callback_url,
            start: Instant::now(),
            inner: Mutex::new(Inner {
                waybills: script.waybills,
                kdniao_fail: script.kdniao_fail,
                kuaidi100_fail: script.kuaidi100_fail,
                requests: Vec::new(),
                subscriptions: Vec::new(),
            }),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| KdniaoError::Config(format!("HTTP client: {e}")))?,
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/control/fail", post(control_fail))
            .route("/control/push", post(control_push))
            .route("/control/waybill", post(control_waybill))
            .route("/control/requests", get(control_requests))
            .route("/control/subscriptions", get(control_subscriptions))
            .route("/poll/query.do", post(kuaidi100))
            .fallback(kdniao)
            .with_state(state.clone());
        tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "sandbox server failed");
            }
        });
        tracing::info!(%addr, "kdniao stand-in listening");
        Ok(Sandbox {
            addr,
            state,
            shutdown: Some(tx),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A Kdniao endpoint URL (any path but `/control/*` and `/poll/query.do` works).
    pub fn kdniao_url(&self) -> String {
        format!("http://{}/api/dist", self.addr)
    }

    /// The Kuaidi100 endpoint URL.
    pub fn kuaidi100_url(&self) -> String {
        format!("http://{}/poll/query.do", self.addr)
    }

    /// Changes a provider's failure mode.
    pub fn set_fail(&self, provider: Provider, mode: FailMode) {
        let mut g = self.state.lock();
        match provider {
            Provider::Kdniao => g.kdniao_fail = mode,
            Provider::Kuaidi100 => g.kuaidi100_fail = mode,
        }
    }

    /// Adds or replaces a scripted waybill.
    pub fn upsert_waybill(&self, waybill: KdniaoAnswer) {
        upsert(&self.state, waybill);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// Subscriptions received: (waybill, RequestType).
    pub fn subscriptions(&self) -> Vec<(String, u16)> {
        self.state.lock().subscriptions.clone()
    }

    /// Pushes scripted waybills to a callback in one push (full traces; `max_items` and
    /// `progressive` are ignored); returns the HTTP status and reply body.
    pub async fn push(&self, cmd: PushCommand) -> Result<(u16, String), String> {
        do_push(&self.state, cmd).await
    }

    /// Sends every push `cmd` asks for (a progressive replay when `progressive`, pushes of at
    /// most `max_items` waybills); counts the pushes not accepted and sends the rest anyway.
    pub async fn push_all(&self, cmd: PushCommand) -> Result<PushSummary, String> {
        do_push_all(&self.state, cmd).await
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a stand-in until `shutdown` completes (the `sandbox` command).
pub async fn run_sandbox(
    listener: tokio::net::TcpListener,
    ebusiness_id: &str,
    app_key: Secret,
    script: SandboxScript,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KdniaoError> {
    let mut sb = Sandbox::start(listener, ebusiness_id, app_key, script).await?;
    shutdown.await;
    sb.stop();
    Ok(())
}

fn upsert(state: &SandboxState, waybill: KdniaoAnswer) {
    let lc = clean_waybill(waybill.logistic_code.as_deref().unwrap_or(""));
    let mut g = state.lock();
    g.waybills
        .retain(|w| clean_waybill(w.logistic_code.as_deref().unwrap_or("")) != lc);
    g.waybills.push(waybill);
}

fn strip_value_added(mut a: KdniaoAnswer) -> KdniaoAnswer {
    a.state_ex = None;
    a.location = None;
    for t in &mut a.traces {
        t.action = None;
        t.location = None;
    }
    a
}

fn select_waybills(state: &SandboxState, codes: Option<&[String]>) -> Vec<KdniaoAnswer> {
    let g = state.lock();
    g.waybills
        .iter()
        .filter(|w| match codes {
            None => true,
            Some(codes) => codes
                .iter()
                .any(|c| Some(clean_waybill(c)) == w.logistic_code.as_deref().map(clean_waybill)),
        })
        .cloned()
        .collect()
}

fn push_item(state: &SandboxState, request_type: u16, mut w: KdniaoAnswer) -> serde_json::Value {
    w.ebusiness_id = Some(state.ebusiness_id.clone());
    w.success = true;
    if request_type == 101 {
        w = strip_value_added(w);
    }
    let mut v = serde_json::to_value(&w).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("Reason".into(), "".into());
        o.insert("CallBack".into(), "".into());
    }
    v
}

/// Sends one signed push of `waybills` to `url`; returns the HTTP status and reply body.
async fn send_push(
    state: &SandboxState,
    url: &str,
    request_type: u16,
    waybills: Vec<KdniaoAnswer>,
    bad_sign: bool,
) -> Result<(u16, String), String> {
    let items: Vec<serde_json::Value> = waybills
        .into_iter()
        .map(|w| push_item(state, request_type, w))
        .collect();
    let data = serde_json::json!({
        "EBusinessID": state.ebusiness_id,
        "PushTime": now_kdniao_time(),
        "Count": items.len().to_string(),
        "Data": items,
    })
    .to_string();
    let sign = if bad_sign {
        data_sign(&data, &Secret::new("not-the-key"))
    } else {
        data_sign(&data, &state.app_key)
    };
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("RequestData", &data)
        .append_pair("RequestType", &request_type.to_string())
        .append_pair("DataSign", &sign)
        .finish();
    let resp = state
        .http
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded;charset=utf-8",
        )
        .body(body)
        .send()
        .await
        .map_err(|e| format!("push failed: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| format!("push reply: {e}"))?;
    Ok((status, text))
}

fn callback(state: &SandboxState, cmd: &PushCommand) -> Result<String, String> {
    cmd.callback_url
        .clone()
        .or_else(|| state.callback_url.clone())
        .ok_or_else(|| "no callback_url".to_string())
}

/// One push of the selected waybills (full traces), whatever `max_items`/`progressive` say.
async fn do_push(state: &SandboxState, cmd: PushCommand) -> Result<(u16, String), String> {
    let url = callback(state, &cmd)?;
    let waybills = select_waybills(state, cmd.logistic_codes.as_deref());
    send_push(
        state,
        &url,
        cmd.request_type.unwrap_or(101),
        waybills,
        cmd.bad_sign,
    )
    .await
}

/// Every push `cmd` asks for (a progressive replay when `progressive`, pushes of at most
/// `max_items` waybills), in order.
/// A failed push is counted and the rest are still sent.
async fn do_push_all(state: &SandboxState, cmd: PushCommand) -> Result<PushSummary, String> {
    let url = callback(state, &cmd)?;
    let request_type = cmd.request_type.unwrap_or(101);
    let waybills = select_waybills(state, cmd.logistic_codes.as_deref());
    let size = cmd.max_items.unwrap_or(usize::MAX).max(1);
    let batches: Vec<Vec<KdniaoAnswer>> = if cmd.progressive {
        progressive_batches(&waybills, size)
    } else {
        let mut all = waybills.into_iter().peekable();
        let mut out = Vec::new();
        while all.peek().is_some() {
            out.push(all.by_ref().take(size).collect());
        }
        out
    };
    let mut summary = PushSummary::default();
    for batch in batches {
        summary.pushes += 1;
        summary.items += batch.len() as u64;
        let (status, reply, ok) =
            match send_push(state, &url, request_type, batch, cmd.bad_sign).await {
                Ok((status, reply)) => {
                    let ok = status == 200
                        && serde_json::from_str::<serde_json::Value>(&reply)
                            .ok()
                            .and_then(|v| v.get("Success").and_then(|s| s.as_bool()))
                            == Some(true);
                    (status, reply, ok)
                }
                Err(e) => (0, e, false),
            };
        if !ok {
            tracing::warn!(status, %reply, "stand-in push not accepted");
        }
        if summary.failed == 0 {
            summary.status = status;
            summary.reply = reply;
        }
        if !ok {
            summary.failed += 1;
        }
    }
    Ok(summary)
}

/// The pushes of a progressive replay (see [`PushCommand::progressive`]): one step per
/// (waybill, `k`), ordered by the time of trace `k` (running maximum over the first `k`, so a
/// waybill's steps stay in order; ties keep waybill and `k` order), cut into pushes of at most
/// `size` items that never hold two steps of one waybill.
fn progressive_batches(waybills: &[KdniaoAnswer], size: usize) -> Vec<Vec<KdniaoAnswer>> {
    let mut steps: Vec<(i64, usize, usize)> = Vec::new();
    for (w, answer) in waybills.iter().enumerate() {
        let mut latest = i64::MIN;
        for (i, t) in answer.traces.iter().enumerate() {
            if let Some(ts) = t.accept_time.as_deref().and_then(parse_kdniao_time) {
                latest = latest.max(ts);
            }
            steps.push((latest, w, i + 1));
        }
    }
    steps.sort();
    let mut batches = Vec::new();
    let mut batch: Vec<KdniaoAnswer> = Vec::new();
    let mut in_batch = std::collections::HashSet::new();
    for (_, w, k) in steps {
        if batch.len() >= size || in_batch.contains(&w) {
            batches.push(std::mem::take(&mut batch));
            in_batch.clear();
        }
        in_batch.insert(w);
        batch.push(crate::replay::prefix(&waybills[w], k));
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

async fn control_fail(
    State(st): State<Arc<SandboxState>>,
    Json(req): Json<FailRequest>,
) -> Response {
    let mut g = st.lock();
    match req.provider {
        Provider::Kdniao => g.kdniao_fail = req.mode,
        Provider::Kuaidi100 => g.kuaidi100_fail = req.mode,
    }
    Json(serde_json::json!({"ok": true})).into_response()
}

async fn control_push(
    State(st): State<Arc<SandboxState>>,
    Json(cmd): Json<PushCommand>,
) -> Response {
    match do_push_all(&st, cmd).await {
        Ok(summary) => Json(summary).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e).into_response(),
    }
}

async fn control_waybill(
    State(st): State<Arc<SandboxState>>,
    Json(w): Json<KdniaoAnswer>,
) -> Response {
    upsert(&st, w);
    Json(serde_json::json!({"ok": true})).into_response()
}

async fn control_requests(State(st): State<Arc<SandboxState>>) -> Response {
    Json(st.lock().requests.clone()).into_response()
}

async fn control_subscriptions(State(st): State<Arc<SandboxState>>) -> Response {
    Json(st.lock().subscriptions.clone()).into_response()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn kdn_reply(st: &SandboxState, success: bool, reason: &str) -> Response {
    Json(serde_json::json!({
        "EBusinessID": st.ebusiness_id,
        "UpdateTime": now_kdniao_time(),
        "Success": success,
        "Reason": reason,
    }))
    .into_response()
}

async fn apply_fail(mode: FailMode) -> Option<FailMode> {
    match mode {
        FailMode::None => None,
        FailMode::Timeout { delay_ms } => {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            None
        }
        other => Some(other),
    }
}

async fn kdniao(
    State(st): State<Arc<SandboxState>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return (StatusCode::NOT_FOUND, format!("no route {uri}")).into_response();
    }
    let f = form(&body);
    let data = f.get("RequestData").cloned().unwrap_or_default();
    let sign = f.get("DataSign").cloned().unwrap_or_default();
    let request_type: u16 = f
        .get("RequestType")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let parsed: serde_json::Value = serde_json::from_str(&data)
        .or_else(|_| serde_json::from_str(&data.replace('\'', "\"")))
        .unwrap_or_default();
    let field = |k: &str| {
        parsed
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let logistic_code = clean_waybill(&field("LogisticCode"));
    let ebid_ok = f.get("EBusinessID").map(String::as_str) == Some(st.ebusiness_id.as_str());
    let sign_ok = ebid_ok && verify_data_sign(&data, &sign, &st.app_key);
    st.record(
        Provider::Kdniao,
        request_type,
        logistic_code.clone(),
        sign_ok,
    );
    if !sign_ok {
        return Json(serde_json::json!({
            "Success": false,
            "Reason": format!("非法参数[DataSign[{sign}]不合法.]"),
        }))
        .into_response();
    }
    let mode = st.lock().kdniao_fail.clone();
    match apply_fail(mode).await {
        Some(FailMode::Http500) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
        }
        Some(FailMode::Quota) => return kdn_reply(&st, false, "业务错误[没有可用套餐]"),
        Some(FailMode::BadParam) => return kdn_reply(&st, false, "无效的输入[ShipperCode]"),
        _ => {}
    }
    let shipper = field("ShipperCode").to_ascii_uppercase();
    match request_type {
        1002 | 8001 | 8002 => {
            if logistic_code.is_empty() || (request_type != 8002 && shipper.is_empty()) {
                return kdn_reply(&st, false, "无效的输入[LogisticCode/ShipperCode]");
            }
            if matches!(shipper.as_str(), "SF" | "ZTO" | "KYSY") && field("CustomerName").len() != 4
            {
                return kdn_reply(&st, false, "无效的输入[CustomerName]");
            }
            let found = st.find(&logistic_code).filter(|w| {
                shipper.is_empty()
                    || w.shipper_code
                        .as_deref()
                        .map(str::to_ascii_uppercase)
                        .as_deref()
                        == Some(shipper.as_str())
            });
            match found {
                Some(mut w) => {
                    w.ebusiness_id = Some(st.ebusiness_id.clone());
                    w.success = true;
                    w.reason = None;
                    if request_type == 1002 {
                        w = strip_value_added(w);
                    }
                    Json(w).into_response()
                }
                None => Json(serde_json::json!({
                    "EBusinessID": st.ebusiness_id,
                    "ShipperCode": shipper,
                    "LogisticCode": logistic_code,
                    "Success": true,
                    "State": "0",
                    "Reason": "暂无轨迹信息",
                    "Traces": [],
                }))
                .into_response(),
            }
        }
        1008 | 8008 => {
            if logistic_code.is_empty() || shipper.is_empty() {
                return kdn_reply(&st, false, "无效的输入[LogisticCode/ShipperCode]");
            }
            st.lock().subscriptions.push((logistic_code, request_type));
            Json(serde_json::json!({
                "EBusinessID": st.ebusiness_id,
                "UpdateTime": now_kdniao_time(),
                "Success": true,
                "Reason": "",
                "EstimatedDeliveryTime": "",
            }))
            .into_response()
        }
        _ => kdn_reply(&st, false, "无效的输入[RequestType]"),
    }
}

/// Kdniao code → Kuaidi100 state (the stand-in's reverse of [`crate::kuaidi100::map_state`]).
fn to_kuaidi100_state(code: &str) -> &'static str {
    match code {
        "1" => "1",
        "202" | "211" => "5",
        "3" | "301" | "302" | "304" | "311" => "3",
        "406" => "4",
        "407" => "6",
        "404" => "14",
        c if c.starts_with('4') => "2",
        "5" => "7",
        c if c.starts_with('6') => "8",
        _ => "0",
    }
}

fn k100_error(code: &str, message: &str) -> Response {
    Json(serde_json::json!({"result": false, "returnCode": code, "message": message}))
        .into_response()
}

async fn kuaidi100(State(st): State<Arc<SandboxState>>, body: Bytes) -> Response {
    let f = form(&body);
    let param = f.get("param").cloned().unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(&param).unwrap_or_default();
    let num = clean_waybill(parsed.get("num").and_then(|v| v.as_str()).unwrap_or(""));
    let sign_ok = match &st.kuaidi100 {
        Some(k) => {
            f.get("customer") == Some(&k.customer)
                && f.get("sign").map(String::as_str)
                    == Some(kuaidi100_sign(&param, &k.key, &k.customer).as_str())
        }
        None => false,
    };
    st.record(Provider::Kuaidi100, 0, num.clone(), sign_ok);
    if !sign_ok {
        return k100_error("503", "验证签名失败");
    }
    let mode = st.lock().kuaidi100_fail.clone();
    match apply_fail(mode).await {
        Some(FailMode::Http500) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
        }
        Some(FailMode::Quota) => return k100_error("601", "POLL:KEY已过期"),
        Some(FailMode::BadParam) => return k100_error("400", "找不到对应公司"),
        _ => {}
    }
    let Some(w) = st.find(&num) else {
        return k100_error("500", "查询无结果，请隔段时间再查");
    };
    let code = w
        .state_ex
        .clone()
        .or(w.state.clone())
        .unwrap_or_else(|| "0".into());
    let mut traces = w.traces.clone();
    traces.sort_by(|a, b| b.accept_time.cmp(&a.accept_time));
    let data: Vec<serde_json::Value> = traces
        .iter()
        .map(|t| {
            let time = t.accept_time.clone().unwrap_or_default().replace('/', "-");
            serde_json::json!({"time": time, "ftime": time, "context": t.accept_station, "location": t.location})
        })
        .collect();
    let state = to_kuaidi100_state(&code);
    Json(serde_json::json!({
        "message": "ok",
        "nu": num,
        "ischeck": if state == "3" { "1" } else { "0" },
        "condition": "F00",
        "com": parsed.get("com"),
        "status": "200",
        "state": state,
        "data": data,
    }))
    .into_response()
}
