//! `adflow run --http ADDR`: the run's operations endpoints, served on their own thread by
//! [`adflow_http`].
//!
//! * `GET /metrics` — every metric of [`adflow_engine::telemetry`] in the Prometheus text
//!   exposition format (version 0.0.4);
//! * `GET /health` — `200 ok` while the process runs;
//! * `GET /ready` — `200 ready` once the run is caught up (file mode: the input is read and
//!   every table written; live mode: every partition this process reads is caught up),
//!   `503 not ready` before;
//! * `GET /`, `GET /api/business`, `GET /api/pipeline` — the dashboard and its JSON feeds
//!   ([`crate::dashboard`]).
//!
//! The Prometheus recorder is installed only when `--http` is given; without it the engine's
//! metric calls do nothing.

use adflow_engine::telemetry;
use anyhow::Result;
use std::sync::Arc;

pub use adflow_http::{linger, HttpServer};

/// Installs the Prometheus recorder and serves the endpoints on `addr` (`host:port`), with
/// `dashboard`'s page and feeds.
pub fn start(addr: &str, dashboard: &crate::dashboard::Dashboard) -> Result<HttpServer> {
    let handle = adflow_http::install_recorder(&[
        ("adflow_freshness_seconds", &telemetry::FRESHNESS_BUCKETS),
        (
            "adflow_sink_flush_duration_seconds",
            &telemetry::FLUSH_BUCKETS,
        ),
        (
            "adflow_webhook_delivery_duration_seconds",
            &adflow_actions::deliver::DELIVERY_BUCKETS,
        ),
    ])?;
    telemetry::describe();
    telemetry::set_ready_gauge_now();
    let hooks = adflow_http::Hooks {
        ready: Arc::new(telemetry::is_ready),
        before_render: None,
    };
    let pages = crate::dashboard::pages(dashboard, handle.clone());
    Ok(adflow_http::serve_with(addr, handle, hooks, pages)?)
}
