//! The operations endpoints of an adflow process (`--http ADDR`), served on their own thread:
//!
//! * `GET /metrics` — every metric recorded through the [`metrics`](https://docs.rs/metrics)
//!   facade, in the Prometheus text exposition format (version 0.0.4);
//! * `GET /health` — `200 ok` while the process runs;
//! * `GET /ready` — `200 ready` when the process's readiness test says so, else
//!   `503 not ready`;
//! * any extra [`Page`]s the caller adds ([`serve_with`]; `adflow run` serves its dashboard
//!   and JSON endpoints so).
//!
//! Used by `adflow run --http` (`adflow-cli`, readiness: caught up) and by the Kdniao
//! commands (`adflow-kdniao`). The caller installs the Prometheus recorder
//! ([`install_recorder`], once per process: the recorder is global), registers its help
//! texts, then [`serve`]s. Without a recorder every metric call does nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub use metrics_exporter_prometheus::PrometheusHandle;

/// Why the endpoints could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The histogram buckets were refused, or a recorder is already installed.
    #[error("{0}")]
    Recorder(String),
    /// The address could not be bound.
    #[error("--http {addr}: cannot listen")]
    Listen {
        /// The `--http` address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server's runtime or thread could not be started.
    #[error("--http: starting the {what}")]
    Start {
        /// What failed.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Installs the Prometheus recorder as the process's global recorder, with `buckets`
/// (seconds) for the histograms named there (others get the exporter's summary default).
pub fn install_recorder(buckets: &[(&str, &[f64])]) -> Result<PrometheusHandle, HttpError> {
    let mut b = PrometheusBuilder::new();
    for (name, bounds) in buckets {
        b = b
            .set_buckets_for_metric(Matcher::Full((*name).to_string()), bounds)
            .map_err(|e| HttpError::Recorder(format!("metric buckets of {name}: {e}")))?;
    }
    b.install_recorder()
        .map_err(|e| HttpError::Recorder(format!("installing the Prometheus recorder: {e}")))
}

/// What the server asks its owner.
#[derive(Clone)]
pub struct Hooks {
    /// `/ready`: 200 when this returns true.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Called before each `/metrics` render, e.g. to copy counters kept elsewhere into the
    /// recorder.
    pub before_render: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// An extra `GET` route: the body is computed on each request (keep it cheap: it runs on the
/// server's only thread). Its path must differ from `/metrics`, `/health` and `/ready`.
#[derive(Clone)]
pub struct Page {
    /// The route's path, e.g. `/api/business`.
    pub path: &'static str,
    /// The `Content-Type` of the body.
    pub content_type: &'static str,
    /// Computes the body.
    pub body: Arc<dyn Fn() -> String + Send + Sync>,
}

/// The running server; dropping it stops the server thread.
pub struct HttpServer {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// The address served (the bound port when `:0` was asked for).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `/metrics` (rendered by `handle`), `/health` and `/ready` on `addr` (`host:port`)
/// on a thread of its own, until the returned server is dropped.
pub fn serve(addr: &str, handle: PrometheusHandle, hooks: Hooks) -> Result<HttpServer, HttpError> {
    serve_with(addr, handle, hooks, Vec::new())
}

/// [`serve`], and `pages` beside the operations endpoints.
pub fn serve_with(
    addr: &str,
    handle: PrometheusHandle,
    hooks: Hooks,
    pages: Vec<Page>,
) -> Result<HttpServer, HttpError> {
    let std_listener = std::net::TcpListener::bind(addr).map_err(|source| HttpError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    let start = |what| move |source| HttpError::Start { what, source };
    std_listener
        .set_nonblocking(true)
        .map_err(start("listener"))?;
    let bound = std_listener.local_addr().map_err(start("listener"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(start("runtime"))?;
    let thread = std::thread::Builder::new()
        .name("adflow-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "--http: cannot serve");
                        return;
                    }
                };
                // Histograms keep raw samples until the recorder's upkeep folds them in.
                let upkeep = handle.clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        every.tick().await;
                        upkeep.run_upkeep();
                    }
                });
                let app = router(handle, hooks, pages);
                let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = stopped.await;
                });
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "--http: server failed");
                }
            })
        })
        .map_err(start("thread"))?;
    tracing::info!(addr = %bound, "serving /metrics, /health and /ready on http://{bound}");
    Ok(HttpServer {
        addr: bound,
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn router(handle: PrometheusHandle, hooks: Hooks, pages: Vec<Page>) -> Router {
    let Hooks {
        ready,
        before_render,
    } = hooks;
    let mut app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                let before_render = before_render.clone();
                async move {
                    if let Some(f) = &before_render {
                        f();
                    }
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                    }
                }
            }),
        );
    for page in pages {
        let Page {
            path,
            content_type,
            body,
        } = page;
        app = app.route(
            path,
            get(move || {
                let body = body.clone();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, content_type),
                            (header::CACHE_CONTROL, "no-store"),
                        ],
                        body(),
                    )
                }
            }),
        );
    }
    app
}

/// After the work: keeps serving up to `linger` (so the final counts can be scraped), or
/// until `interrupt` is set by a signal.
pub fn linger(linger: Duration, interrupt: &std::sync::atomic::AtomicBool) {
    let until = std::time::Instant::now() + linger;
    while std::time::Instant::now() < until && !interrupt.load(std::sync::atomic::Ordering::SeqCst)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(c, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (
            head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            body.to_string(),
        )
    }

    // One test: the recorder is global to the process.
    #[test]
    fn serves_metrics_health_and_ready_with_the_hooks() {
        static READY: AtomicBool = AtomicBool::new(false);
        static RENDERS: AtomicU64 = AtomicU64::new(0);
        let handle = install_recorder(&[("test_seconds", &[0.5, 1.0])]).unwrap();
        assert!(matches!(install_recorder(&[]), Err(HttpError::Recorder(_))));
        let hooks = Hooks {
            ready: Arc::new(|| READY.load(Ordering::SeqCst)),
            before_render: Some(Arc::new(|| {
                let n = RENDERS.fetch_add(1, Ordering::SeqCst) + 1;
                metrics::counter!("test_renders_total").absolute(n);
            })),
        };
        let page = Page {
            path: "/api/x",
            content_type: "application/json",
            body: Arc::new(|| format!("{{\"renders\":{}}}", RENDERS.load(Ordering::SeqCst))),
        };
        let server = serve_with("127.0.0.1:0", handle, hooks, vec![page]).unwrap();
        let addr = server.addr();
        metrics::histogram!("test_seconds").record(0.7);
        assert_eq!(get(addr, "/health"), (200, "ok\n".to_string()));
        assert_eq!(get(addr, "/ready"), (503, "not ready\n".to_string()));
        READY.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/ready"), (200, "ready\n".to_string()));
        let (status, text) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(text.contains("test_renders_total 1\n"), "{text}");
        assert!(
            text.contains("test_seconds_bucket{le=\"0.5\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("test_seconds_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("test_seconds_count 1\n"), "{text}");
        assert_eq!(get(addr, "/api/x"), (200, "{\"renders\":1}".to_string()));
        assert_eq!(get(addr, "/nothing").0, 404);
        let taken = addr.to_string();
        assert!(matches!(
            serve(
                &taken,
                PrometheusBuilder::new().build_recorder().handle(),
                hooks_never()
            ),
            Err(HttpError::Listen { .. })
        ));
        drop(server);
    }

    fn hooks_never() -> Hooks {
        Hooks {
            ready: Arc::new(|| false),
            before_render: None,
        }
    }
}
