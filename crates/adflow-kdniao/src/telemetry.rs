//! Metrics of the Kdniao commands, through the [`metrics`] facade; served as Prometheus text
//! on `--http ADDR` ([`start_http`], the shared server of [`adflow_http`]). Without `--http`
//! no recorder is installed and every call here does nothing.
//!
//! Counters end in `_total`, durations are seconds. Every name:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `adflow_kdniao_requests_total` | counter | `endpoint`, `provider`, `outcome` | provider API calls (each HTTP attempt, retries included) and pushes received; `outcome` `ok` or `error` |
//! | `adflow_kdniao_request_duration_seconds` | histogram | `endpoint`, `provider` | time of each of those calls ([`DURATION_BUCKETS`]) |
//! | `adflow_kdniao_receiver_<counter>_total` | counter | | the push receiver's counters ([`crate::receiver::ReceiverMetrics`]), e.g. `pushes_received`, `pushes_accepted`, `bad_sign` |
//! | `adflow_kdniao_receiver_connections_open` | gauge | | connections the receiver serves now |
//! | `adflow_kdniao_sink_<counter>_total` | counter | | the track sink's counters ([`crate::sink::SinkMetrics`]): `events_written`, `duplicates`, `inferred_suppressed`, `bad_traces`, `dead_letters`, `rejected_items` |
//! | `adflow_kdniao_ready` | gauge | | 1 once the command is ready (as `/ready`) |
//!
//! `endpoint` ([`Endpoint`]): `track_query` (Kdniao RequestType 1002/8001/8002, Kuaidi100
//! `poll/query.do`), `subscribe` (Kdniao 1008/8008), `push` (a push Kdniao sent to the
//! receiver, RequestType 101/102). `provider`: `kdniao` or `kuaidi100`.
//!
//! An outgoing call is one HTTP attempt: its duration runs from sending the request (after
//! the rate limiter's wait) to the classified answer; it is an `error` on a transport failure
//! or timeout, a non-2xx status, an answer that does not parse, or an API-level failure
//! (`Success:false` with a reason, Kuaidi100 `result:false`), and `ok` otherwise — "no traces
//! yet" answers included. A call refused locally during the quota back-off sends nothing
//! and is not counted. A push is `ok` when it was accepted (answered `Success:true`), else
//! `error`; its duration runs from its head to the answer (body read, sign check, storage).
//!
//! The receiver's and the sink's counters are kept in their atomics (the receiver's JSON
//! `GET /metrics` reads the same ones) and copied into the recorder at each scrape.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::error::{KdniaoError, Provider};
use crate::receiver::ReceiverMetrics;
use crate::sink::SinkMetrics;

/// Provider calls and pushes received, by `endpoint`, `provider` and `outcome`.
pub const REQUESTS: &str = "adflow_kdniao_requests_total";
/// Duration of provider calls and pushes, by `endpoint` and `provider`.
pub const REQUEST_DURATION: &str = "adflow_kdniao_request_duration_seconds";
/// Buckets of [`REQUEST_DURATION`], seconds (3 s, the client's default timeout and the
/// alert threshold, is a bound).
pub const DURATION_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0];

/// The API operation of a call (the `endpoint` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Instant query: Kdniao 1002/8001/8002, Kuaidi100 `poll/query.do`.
    TrackQuery,
    /// Subscription: Kdniao 1008/8008.
    Subscribe,
    /// A push received from Kdniao (101/102).
    Push,
}

impl Endpoint {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::TrackQuery => "track_query",
            Endpoint::Subscribe => "subscribe",
            Endpoint::Push => "push",
        }
    }
}

fn provider_label(p: Provider) -> &'static str {
    match p {
        Provider::Kdniao => "kdniao",
        Provider::Kuaidi100 => "kuaidi100",
    }
}

/// Records one call: its outcome and duration.
pub fn record_request(endpoint: Endpoint, provider: Provider, ok: bool, elapsed: Duration) {
    let (e, p) = (endpoint.as_str(), provider_label(provider));
    let outcome = if ok { "ok" } else { "error" };
    counter!(REQUESTS, "endpoint" => e, "provider" => p, "outcome" => outcome).increment(1);
    histogram!(REQUEST_DURATION, "endpoint" => e, "provider" => p).record(elapsed.as_secs_f64());
}

/// Makes the series of `endpoint` × `provider` visible (at 0) before the first call, so an
/// error rate can be computed from the start.
pub fn register(endpoint: Endpoint, provider: Provider) {
    let (e, p) = (endpoint.as_str(), provider_label(provider));
    for outcome in ["ok", "error"] {
        counter!(REQUESTS, "endpoint" => e, "provider" => p, "outcome" => outcome).increment(0);
    }
}

static READY: AtomicBool = AtomicBool::new(false);

/// Marks the command ready (`/ready` 200, `adflow_kdniao_ready` 1): the receiver is
/// listening; a one-shot command (subscribe, poll, replay-failed) has done its work.
pub fn set_ready() {
    READY.store(true, Ordering::SeqCst);
    gauge!("adflow_kdniao_ready").set(1.0);
}

/// Whether [`set_ready`] was called.
pub fn is_ready() -> bool {
    READY.load(Ordering::SeqCst)
}

/// Registers the help text of every metric (after installing a recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "Kdniao/Kuaidi100 API calls (each HTTP attempt) and pushes received, by outcome."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Duration of Kdniao/Kuaidi100 API calls and of handling pushes."
    );
    describe_gauge!(
        "adflow_kdniao_receiver_connections_open",
        "Connections the push receiver serves now."
    );
    describe_gauge!("adflow_kdniao_ready", "1 once the command is ready.");
    for (key, name, _) in receiver_counters(&ReceiverMetrics::default()) {
        describe_counter!(
            name,
            format!("The push receiver's `{key}` counter (docs/kdniao.md).")
        );
    }
    for (key, name, _) in sink_counters(&SinkMetrics::default()) {
        describe_counter!(
            name,
            format!("The track sink's `{key}` counter (docs/kdniao.md).")
        );
    }
}

/// The receiver's counters: (JSON `/metrics` key, Prometheus name, value), without
/// `connections_open`.
pub fn receiver_counters(m: &ReceiverMetrics) -> [(&'static str, &'static str, &AtomicU64); 12] {
    [
        (
            "pushes_received",
            "adflow_kdniao_receiver_pushes_received_total",
            &m.pushes_received,
        ),
        (
            "pushes_accepted",
            "adflow_kdniao_receiver_pushes_accepted_total",
            &m.pushes_accepted,
        ),
        (
            "bad_sign",
            "adflow_kdniao_receiver_bad_sign_total",
            &m.bad_sign,
        ),
        (
            "missing_fields",
            "adflow_kdniao_receiver_missing_fields_total",
            &m.missing_fields,
        ),
        (
            "malformed",
            "adflow_kdniao_receiver_malformed_total",
            &m.malformed,
        ),
        (
            "too_large",
            "adflow_kdniao_receiver_too_large_total",
            &m.too_large,
        ),
        (
            "body_timeouts",
            "adflow_kdniao_receiver_body_timeouts_total",
            &m.body_timeouts,
        ),
        (
            "storage_errors",
            "adflow_kdniao_receiver_storage_errors_total",
            &m.storage_errors,
        ),
        (
            "unusable_items",
            "adflow_kdniao_receiver_unusable_items_total",
            &m.unusable_items,
        ),
        (
            "header_timeouts",
            "adflow_kdniao_receiver_header_timeouts_total",
            &m.header_timeouts,
        ),
        (
            "idle_timeouts",
            "adflow_kdniao_receiver_idle_timeouts_total",
            &m.idle_timeouts,
        ),
        (
            "connection_limit_waits",
            "adflow_kdniao_receiver_connection_limit_waits_total",
            &m.connection_limit_waits,
        ),
    ]
}

/// The track sink's counters: (JSON `/metrics` key, Prometheus name, value).
pub fn sink_counters(m: &SinkMetrics) -> [(&'static str, &'static str, &AtomicU64); 6] {
    [
        (
            "events_written",
            "adflow_kdniao_sink_events_written_total",
            &m.events_written,
        ),
        (
            "duplicates",
            "adflow_kdniao_sink_duplicates_total",
            &m.duplicates,
        ),
        (
            "inferred_suppressed",
            "adflow_kdniao_sink_inferred_suppressed_total",
            &m.inferred_suppressed,
        ),
        (
            "bad_traces",
            "adflow_kdniao_sink_bad_traces_total",
            &m.bad_traces,
        ),
        (
            "dead_letters",
            "adflow_kdniao_sink_dead_letters_total",
            &m.dead_letters,
        ),
        (
            "rejected_items",
            "adflow_kdniao_sink_rejected_items_total",
            &m.rejected_items,
        ),
    ]
}

/// Copies the receiver's counters into the recorder.
pub fn publish_receiver(m: &ReceiverMetrics) {
    for (_, name, v) in receiver_counters(m) {
        counter!(name).absolute(v.load(Ordering::Relaxed));
    }
    gauge!("adflow_kdniao_receiver_connections_open")
        .set(m.connections_open.load(Ordering::Relaxed) as f64);
}

/// Copies the sink's counters into the recorder.
pub fn publish_sink(m: &SinkMetrics) {
    for (_, name, v) in sink_counters(m) {
        counter!(name).absolute(v.load(Ordering::Relaxed));
    }
}

/// Installs the Prometheus recorder and serves `/metrics`, `/health` and `/ready` on `addr`
/// until the returned server is dropped. `before_render` runs before each scrape (e.g.
/// [`publish_receiver`]). Once per process: the recorder is global.
pub fn start_http(
    addr: &str,
    before_render: Option<Arc<dyn Fn() + Send + Sync>>,
) -> Result<adflow_http::HttpServer, KdniaoError> {
    let handle = adflow_http::install_recorder(&[(REQUEST_DURATION, &DURATION_BUCKETS)])
        .map_err(|e| KdniaoError::Config(e.to_string()))?;
    describe();
    gauge!("adflow_kdniao_ready").set(if is_ready() { 1.0 } else { 0.0 });
    let hooks = adflow_http::Hooks {
        ready: Arc::new(is_ready),
        before_render,
    };
    adflow_http::serve(addr, handle, hooks).map_err(|e| match e {
        adflow_http::HttpError::Listen { addr, source } => KdniaoError::Server { addr, source },
        other => KdniaoError::Config(match std::error::Error::source(&other) {
            Some(cause) => format!("{other}: {cause}"),
            None => other.to_string(),
        }),
    })
}
