//! The `adflow kdniao <subcommand>` command line, as a library.
//!
//! | command | function |
//! |---|---|
//! | `receive --listen ADDR (--output DIR \| --kafka BROKERS [--topic-prefix P]) [--http ADDR]` | push receiver ([`crate::receiver`]) |
//! | `sandbox --listen ADDR (--script FILE \| --tracks logistics.jsonl)` | stand-in server ([`crate::sandbox`]) |
//! | `subscribe --orders FILE [--http ADDR [--http-linger S]]` | subscribe new shipments ([`crate::subscribe::subscribe_orders`]) |
//! | `replay-failed [--output DIR] [--http ADDR [--http-linger S]]` | re-send the failed queue ([`crate::tracker::Tracker::replay_failed`]) |
//! | `query --shipper SF --waybill N [--phone P]` | one query with failover, events to stdout |
//! | `poll (--output DIR \| --kafka BROKERS) [--http ADDR [--http-linger S]]` | query quiet subscribed waybills once |
//!
//! `--http ADDR` serves `/metrics` (Prometheus text, [`crate::telemetry`]), `/health` and
//! `/ready` on a separate address. `/ready` is 200 once the receiver listens, or once a
//! one-shot command has done its work (and printed its report); `--http-linger SECS` then
//! keeps serving that long (SIGINT/SIGTERM end the wait) so the final counts can be scraped.
//!
//! Credentials come from `KDNIAO_EBUSINESS_ID` / `KDNIAO_APP_KEY` or `--config FILE`
//! (see [`crate::config`]); the key is never accepted as a flag (it would show in `ps`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::client::WaybillRequest;
use crate::config::KdniaoConfig;
use crate::error::{KdniaoError, Provider};
use crate::receiver::{serve, ReceiverState};
use crate::replay::waybills_from_tracks;
use crate::sandbox::{run_sandbox, SandboxScript};
use crate::secret::Secret;
use crate::sink::{FilePublisher, TrackPublisher, TrackSink};
use crate::subscribe::{poll_quiet_once, subscribe_orders, SubscriptionBook};
use crate::telemetry::{self, Endpoint};
use crate::tracker::Tracker;

/// `adflow kdniao <subcommand>`.
#[derive(Debug, Subcommand)]
pub enum KdniaoCommand {
    /// Receive Kdniao track pushes (RequestType 101/102) and write `logistics` track events.
    Receive(ReceiveArgs),
    /// Run a stand-in Kdniao/Kuaidi100 server answering from a script (tests, demos).
    Sandbox(SandboxArgs),
    /// Subscribe every new shipment of an orders.jsonl at Kdniao (each waybill once).
    Subscribe(SubscribeArgs),
    /// Re-send the requests parked in the failed queue.
    ReplayFailed(ReplayArgs),
    /// Query one waybill now (with failover) and print its track events.
    Query(QueryArgs),
    /// Query subscribed waybills that have gone quiet (the safety-net poller, once).
    Poll(PollArgs),
}

impl KdniaoCommand {
    /// The `--kafka BROKERS` value, when the command was given one: the binary builds its
    /// Kafka [`TrackPublisher`] from it and calls [`run_with_publisher`].
    pub fn kafka_brokers(&self) -> Option<&str> {
        match self {
            KdniaoCommand::Receive(a) => a.sink.kafka.as_deref(),
            KdniaoCommand::Poll(a) => a.sink.kafka.as_deref(),
            KdniaoCommand::ReplayFailed(a) => a.kafka.as_deref(),
            _ => None,
        }
    }

    /// The `--topic-prefix P` value (default: none) that goes with `--kafka`: track events
    /// go to `<P>logistics`.
    pub fn kafka_topic_prefix(&self) -> &str {
        let prefix = match self {
            KdniaoCommand::Receive(a) => a.topic_prefix.as_deref(),
            KdniaoCommand::Poll(a) => a.topic_prefix.as_deref(),
            KdniaoCommand::ReplayFailed(a) => a.topic_prefix.as_deref(),
            _ => None,
        };
        prefix.unwrap_or("")
    }
}

/// Options shared by commands that talk to Kdniao.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// TOML configuration file (credentials may instead come from KDNIAO_EBUSINESS_ID and
    /// KDNIAO_APP_KEY, which override the file).
    #[arg(long, env = "KDNIAO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for durable connector state (emitted ids, subscriptions, failed queue).
    /// Default: the config's `state_dir`, else `<output>/.kdniao`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Where track events go: exactly one of `--output` and `--kafka`.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct SinkArgs {
    /// Append track events to `DIR/logistics.jsonl`.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Publish track events to Kafka topic `<prefix>logistics` at these bootstrap servers
    /// (`host:port[,host:port…]`), keyed by waybill number, acknowledged (acks=all) before a
    /// push is answered.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
}

/// `--http ADDR [--http-linger SECS]` of the one-shot commands.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Serve /metrics (Prometheus text), /health and /ready on this address, e.g.
    /// 127.0.0.1:9465; /ready is 200 once the command's work is done.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// With --http: keep serving this many seconds after the work is done (SIGINT/SIGTERM
    /// end the wait), so the final counts can be scraped.
    #[arg(long, value_name = "SECS", requires = "http", default_value_t = 0.0)]
    pub http_linger: f64,
}

impl HttpArgs {
    /// Starts the server when `--http` was given.
    fn start(
        &self,
        before_render: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Result<Option<adflow_http::HttpServer>, KdniaoError> {
        if !(self.http_linger.is_finite() && self.http_linger >= 0.0) {
            return Err(KdniaoError::Config(format!(
                "--http-linger {}: expected a number of seconds >= 0",
                self.http_linger
            )));
        }
        self.http
            .as_deref()
            .map(|addr| telemetry::start_http(addr, before_render))
            .transpose()
    }

    /// The work is done: `/ready` turns 200; then serves for `--http-linger`.
    async fn done(&self, server: Option<adflow_http::HttpServer>) {
        telemetry::set_ready();
        if server.is_some() && self.http_linger > 0.0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(self.http_linger)) => {}
                () = stop_signal() => {}
            }
        }
        drop(server);
    }
}

/// `receive`.
#[derive(Debug, Clone, Args)]
pub struct ReceiveArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub sink: SinkArgs,
    /// Topic-name prefix for `--kafka`: events go to `<PREFIX>logistics` (default: none).
    #[arg(long, value_name = "PREFIX", conflicts_with = "output")]
    pub topic_prefix: Option<String>,
    /// Serve /metrics (Prometheus text), /health and /ready on this address too (a port of
    /// their own; the JSON counters stay at `GET /metrics` of --listen); /ready is 200 once
    /// the receiver listens.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// `sandbox`.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Address to listen on, e.g. 127.0.0.1:9080.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// JSON script: `{"waybills":[...], "callback_url":..., "kdniao_fail":{"mode":...},
    /// "kuaidi100":{"customer":..,"key":..}}`.
    #[arg(long, value_name = "FILE", required_unless_present = "tracks")]
    pub script: Option<PathBuf>,
    /// A spec §1 `logistics.jsonl` whose track sequences become waybills (added to the
    /// script's), each trace with its own state as `Action` (push them with RequestType 102).
    #[arg(long, value_name = "FILE")]
    pub tracks: Option<PathBuf>,
    /// Merchant id the stand-in accepts.
    #[arg(long, env = "KDNIAO_EBUSINESS_ID")]
    pub ebusiness_id: String,
}

/// `subscribe`.
#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    /// orders.jsonl (spec §1 `orders` stream); `shipment` events are subscribed.
    #[arg(long, value_name = "FILE")]
    pub orders: PathBuf,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub metrics: HttpArgs,
}

/// `replay-failed`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Where replayed queries' track events go (file mode).
    #[arg(long, value_name = "DIR", conflicts_with = "kafka")]
    pub output: Option<PathBuf>,
    /// Where replayed queries' track events go (Kafka).
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// Topic-name prefix for `--kafka` (default: none).
    #[arg(long, value_name = "PREFIX", conflicts_with = "output")]
    pub topic_prefix: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub metrics: HttpArgs,
}

/// `query`.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Kdniao carrier code (SF, ZTO, YTO, ...).
    #[arg(long)]
    pub shipper: String,
    /// Waybill number (cleaned before use).
    #[arg(long)]
    pub waybill: String,
    /// Phone (or its last 4 digits) for carriers that need CustomerName.
    #[arg(long)]
    pub phone: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// `poll`.
#[derive(Debug, Clone, Args)]
pub struct PollArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub sink: SinkArgs,
    /// Topic-name prefix for `--kafka`: events go to `<PREFIX>logistics` (default: none).
    #[arg(long, value_name = "PREFIX", conflicts_with = "output")]
    pub topic_prefix: Option<String>,
    /// Override `poll.quiet_after_secs`.
    #[arg(long)]
    pub quiet_after_secs: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub metrics: HttpArgs,
}

/// Runs a command. This crate has no Kafka client: `--kafka` fails with a configuration
/// error here; the binary supplies its Kafka publisher through [`run_with_publisher`].
pub async fn run(cmd: KdniaoCommand) -> Result<(), KdniaoError> {
    run_with_publisher(cmd, None).await
}

/// Runs a command; `kafka` is the publisher used when the command says `--kafka`
/// (build it from [`KdniaoCommand::kafka_brokers`]).
pub async fn run_with_publisher(
    cmd: KdniaoCommand,
    kafka: Option<Arc<dyn TrackPublisher>>,
) -> Result<(), KdniaoError> {
    match cmd {
        KdniaoCommand::Receive(a) => receive(a, kafka).await,
        KdniaoCommand::Sandbox(a) => sandbox(a).await,
        KdniaoCommand::Subscribe(a) => {
            let cfg = KdniaoConfig::load(a.common.config.as_deref())?;
            let dir = state_dir(&a.common, &cfg, None)?;
            let tracker = Tracker::new(&cfg, &dir)?;
            let book = SubscriptionBook::open(&dir)?;
            let server = a.metrics.start(None)?;
            telemetry::register(Endpoint::Subscribe, Provider::Kdniao);
            let r = subscribe_orders(&a.orders, &tracker, &book).await?;
            println!(
                "{}",
                serde_json::json!({"subscribed": r.subscribed, "already": r.already, "failed": r.failed, "skipped_lines": r.skipped_lines})
            );
            a.metrics.done(server).await;
            Ok(())
        }
        KdniaoCommand::ReplayFailed(a) => {
            let cfg = KdniaoConfig::load(a.common.config.as_deref())?;
            let dir = state_dir(&a.common, &cfg, a.output.as_deref())?;
            let tracker = Tracker::new(&cfg, &dir)?;
            let book = SubscriptionBook::open(&dir)?;
            let sink = match (&a.output, &a.kafka) {
                (None, None) => None,
                (out, _) => Some(open_sink(out.as_deref(), kafka, &dir)?),
            };
            let server = a.metrics.start(sink.clone().map(publish_sink))?;
            register_queries(&cfg);
            telemetry::register(Endpoint::Subscribe, Provider::Kdniao);
            let r = tracker.replay_failed(sink.as_deref(), Some(&book)).await?;
            println!(
                "{}",
                serde_json::json!({"succeeded": r.succeeded, "still_failed": r.still_failed, "dropped": r.dropped})
            );
            a.metrics.done(server).await;
            Ok(())
        }
        KdniaoCommand::Query(a) => {
            let cfg = KdniaoConfig::load(a.common.config.as_deref())?;
            let dir = state_dir(&a.common, &cfg, None)
                .unwrap_or_else(|_| std::env::temp_dir().join("adflow-kdniao"));
            let tracker = Tracker::new(&cfg, &dir)?;
            let mut req = WaybillRequest::new(&a.shipper, &a.waybill);
            if let Some(p) = &a.phone {
                req = req.with_phone(p);
            }
            let (provider, answer) = tracker.query(&req).await?;
            let conv = crate::track::answer_to_events(&answer);
            eprintln!(
                "provider: {provider}; bad traces: {}",
                conv.bad_traces.len()
            );
            for (e, _) in conv.events {
                println!("{}", e.to_json_line());
            }
            Ok(())
        }
        KdniaoCommand::Poll(a) => {
            let cfg = KdniaoConfig::load(a.common.config.as_deref())?;
            let dir = state_dir(&a.common, &cfg, a.sink.output.as_deref())?;
            let tracker = Tracker::new(&cfg, &dir)?;
            let book = SubscriptionBook::open(&dir)?;
            let sink = open_sink(a.sink.output.as_deref(), kafka, &dir)?;
            let server = a.metrics.start(Some(publish_sink(sink.clone())))?;
            register_queries(&cfg);
            let quiet = a.quiet_after_secs.unwrap_or(cfg.poll.quiet_after_secs);
            let r = poll_quiet_once(&tracker, &book, &sink, secs_ms(quiet), now_ms()).await?;
            println!(
                "{}",
                serde_json::json!({"queried": r.queried, "events": r.events, "failed": r.failed})
            );
            a.metrics.done(server).await;
            Ok(())
        }
    }
}

/// A scrape hook copying the sink's counters into the recorder.
fn publish_sink(sink: Arc<TrackSink>) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || telemetry::publish_sink(&sink.metrics))
}

/// Shows the query series (at 0) of the providers `cfg` uses.
fn register_queries(cfg: &KdniaoConfig) {
    telemetry::register(Endpoint::TrackQuery, Provider::Kdniao);
    if cfg.kuaidi100.is_some() {
        telemetry::register(Endpoint::TrackQuery, Provider::Kuaidi100);
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Resolves the state directory: flag, then config, then `<output>/.kdniao`.
fn state_dir(
    common: &CommonArgs,
    cfg: &KdniaoConfig,
    output: Option<&Path>,
) -> Result<PathBuf, KdniaoError> {
    common
        .state_dir
        .clone()
        .or_else(|| cfg.state_dir.clone())
        .or_else(|| output.map(|o| o.join(".kdniao")))
        .ok_or_else(|| {
            KdniaoError::Config("no state directory: pass --state-dir or set state_dir".into())
        })
}

fn no_kafka_publisher() -> KdniaoError {
    KdniaoError::Config(
        "--kafka needs a Kafka track publisher; call run_with_publisher with one (the adflow binary does)"
            .into(),
    )
}

fn open_sink(
    output: Option<&Path>,
    kafka: Option<Arc<dyn TrackPublisher>>,
    state_dir: &Path,
) -> Result<Arc<TrackSink>, KdniaoError> {
    let publisher: Arc<dyn TrackPublisher> = match output {
        Some(dir) => Arc::new(FilePublisher::new(dir)?),
        None => kafka.ok_or_else(no_kafka_publisher)?,
    };
    Ok(Arc::new(TrackSink::open(publisher, state_dir)?))
}

async fn receive(
    a: ReceiveArgs,
    kafka: Option<Arc<dyn TrackPublisher>>,
) -> Result<(), KdniaoError> {
    if a.sink.kafka.is_some() && kafka.is_none() {
        return Err(no_kafka_publisher());
    }
    let cfg = KdniaoConfig::load(a.common.config.as_deref())?;
    let dir = state_dir(&a.common, &cfg, a.sink.output.as_deref())?;
    let sink = open_sink(a.sink.output.as_deref(), kafka, &dir)?;
    let state = ReceiverState::new(cfg.ebusiness_id.clone(), cfg.app_key.clone(), sink.clone());
    let _server = match &a.http {
        Some(addr) => {
            let st = state.clone();
            let hook: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                telemetry::publish_receiver(&st.metrics);
                telemetry::publish_sink(&st.sink().metrics);
            });
            Some(telemetry::start_http(addr, Some(hook))?)
        }
        None => None,
    };
    telemetry::register(Endpoint::Push, Provider::Kdniao);
    if cfg.poll.interval_secs > 0 {
        register_queries(&cfg);
        let tracker = Tracker::new(&cfg, &dir)?;
        let book = SubscriptionBook::open(&dir)?;
        let quiet = secs_ms(cfg.poll.quiet_after_secs);
        let every = std::time::Duration::from_secs(cfg.poll.interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match poll_quiet_once(&tracker, &book, &sink, quiet, now_ms()).await {
                    Ok(r) => tracing::info!(
                        queried = r.queried,
                        events = r.events,
                        failed = r.failed,
                        "poll round done"
                    ),
                    Err(e) => tracing::error!(error = %e, "poll round failed"),
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|source| KdniaoError::Server {
            addr: a.listen.to_string(),
            source,
        })?;
    telemetry::set_ready();
    serve(listener, state, shutdown_signal()).await
}

async fn sandbox(a: SandboxArgs) -> Result<(), KdniaoError> {
    let key = std::env::var("KDNIAO_APP_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| KdniaoError::Config("sandbox needs KDNIAO_APP_KEY".into()))?;
    let mut script = match &a.script {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| KdniaoError::io(path, e))?;
            serde_json::from_str::<SandboxScript>(&text).map_err(|e| {
                KdniaoError::Config(format!("sandbox script {}: {e}", path.display()))
            })?
        }
        None => SandboxScript::default(),
    };
    if let Some(path) = &a.tracks {
        let file = std::fs::File::open(path).map_err(|e| KdniaoError::io(path, e))?;
        let (waybills, load) = waybills_from_tracks(std::io::BufReader::new(file))
            .map_err(|e| KdniaoError::io(path, e))?;
        tracing::info!(
            file = %path.display(),
            waybills = load.waybills,
            tracks = load.tracks,
            skipped = load.skipped,
            duplicates = load.duplicates,
            "stand-in waybills loaded from track events"
        );
        let known: std::collections::HashSet<String> = waybills
            .iter()
            .filter_map(|w| w.logistic_code.clone())
            .collect();
        script.waybills.retain(|w| {
            !w.logistic_code
                .as_deref()
                .is_some_and(|c| known.contains(&crate::track::clean_waybill(c)))
        });
        script.waybills.extend(waybills);
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|source| KdniaoError::Server {
            addr: a.listen.to_string(),
            source,
        })?;
    run_sandbox(
        listener,
        &a.ebusiness_id,
        Secret::new(key),
        script,
        shutdown_signal(),
    )
    .await
}

/// SIGINT or (on Unix) SIGTERM. A signal that cannot be listened for is logged and never
/// fires (the process then runs until it is killed).
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGTERM"),
        }
    }
    ctrl_c.await;
}

/// The receiver's and the stand-in's graceful stop: [`stop_signal`] (SIGINT or SIGTERM, as
/// Kubernetes and systemd send).
async fn shutdown_signal() {
    stop_signal().await;
    tracing::info!("shutting down");
}
