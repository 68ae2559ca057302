//! `adflow`: the one binary. See `adflow --help`.

mod actions;
mod dashboard;
mod http;
mod kafka_run;
mod produce;
mod report;

use adflow_engine::driver::{run, RunOptions, SourceFactory};
use adflow_engine::file::{FileSink, FileSource};
use adflow_engine::telemetry::MeteredSink;
use adflow_model::config::Settings;
use adflow_model::Sink;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The dataflow allocates and frees many small records per event; glibc malloc spent about a
/// third of a file-mode run in its own bookkeeping (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "adflow",
    version,
    about = "Real-time marketing data pipeline: attribution, funnels, logistics triggers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline over input files and write every output table as a changelog.
    Run(RunArgs),
    /// Generate a realistic synthetic data set (the four input streams).
    Generate(adflow_gen::GenerateArgs),
    /// Print the ClickHouse DDL (changelog tables, `<table>_current` views), or apply it.
    Schema(SchemaArgs),
    /// Summarise the current contents of a file-mode output directory.
    Report(report::ReportArgs),
    /// Kdniao logistics connector: push receiver, queries, subscriptions, stand-in server.
    #[command(subcommand)]
    Kdniao(adflow_kdniao::KdniaoCommand),
    /// Publish a data set's input files to the Kafka input topics (keys per spec §1).
    Produce(produce::ProduceCmd),
    /// The actions' outbox (`[actions]`, docs/actions.md): replay the failed queue, status.
    #[command(subcommand)]
    Actions(actions::ActionsCmd),
}

#[derive(clap::Args)]
struct RunArgs {
    /// File mode: directory with `ad_events.jsonl`, `orders.jsonl`, `logistics.jsonl`,
    /// `identity.jsonl` (a missing file is an empty stream).
    #[arg(long, required_unless_present = "kafka", conflicts_with = "kafka")]
    input: Option<PathBuf>,
    /// Directory for the changelogs `<table>.jsonl` (required in file mode; in live mode the
    /// directory is resumed after a restart).
    #[arg(long, required_unless_present = "kafka")]
    output: Option<PathBuf>,
    /// Live mode: consume the input topics from these brokers (`host:port,...`) until
    /// SIGINT/SIGTERM. See docs/kafka.md.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// Live mode: consumer group id for committed offsets (default `adflow`, or the config's).
    #[arg(long, value_name = "ID", requires = "kafka")]
    group: Option<String>,
    /// Live mode: topic name prefix (`<P>ad_events`, ..., `<P>dead_letters`).
    #[arg(long, value_name = "P", requires = "kafka")]
    topic_prefix: Option<String>,
    /// Live mode: exit once every partition has been idle this many seconds and the outputs
    /// of the idle watermark advance are written.
    #[arg(long, value_name = "SECS", requires = "kafka")]
    exit_when_idle: Option<f64>,
    /// Live mode: measure and print the latency from each message's produce timestamp until
    /// its effects are handed to the sinks (p50/p99/max), and the consumed rate (benchmarks).
    #[arg(long, requires = "kafka")]
    latency: bool,
    /// Worker threads (per process), at least 1.
    #[arg(long, short = 'w', default_value_t = 1, value_parser = at_least_one)]
    workers: usize,
    /// Live mode as a cluster: the number of processes (timely's TCP cluster). See
    /// docs/cluster.md.
    #[arg(long, value_name = "N", requires_all = ["kafka", "process", "hostfile"])]
    processes: Option<usize>,
    /// Live mode as a cluster: this process's index, from 0.
    #[arg(long, value_name = "I", requires = "processes")]
    process: Option<usize>,
    /// Live mode as a cluster: one `host:port` per line; line I (from 0) is process I.
    #[arg(long, value_name = "FILE", requires = "processes")]
    hostfile: Option<PathBuf>,
    /// Settings file (TOML); see docs/configuration.md.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Extra sink, `clickhouse=URL` (database `adflow`, or `?database=NAME` in the URL). The
    /// schema is applied (idempotently) at start. Repeatable; file and ClickHouse sinks run
    /// together.
    #[arg(long = "sink", value_name = "KIND=URL")]
    sinks: Vec<String>,
    /// Serve `/metrics` (Prometheus text), `/health`, `/ready` and the dashboard (`/`, fed by
    /// `/api/business` and `/api/pipeline`) on this address (`host:port`; port 0 picks one,
    /// logged at start). See docs/operations.md.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// With `--http`: keep serving this many seconds after the run ended, so the final
    /// counts can be scraped (a signal ends the wait).
    #[arg(long, value_name = "SECS", requires = "http", default_value_t = 0.0)]
    http_linger: f64,
}

impl RunArgs {
    /// Starts the `--http` server, if asked for, with the dashboard whose sink the run adds.
    fn start_http(&self) -> Result<(Option<http::HttpServer>, Option<dashboard::Dashboard>)> {
        let Some(addr) = &self.http else {
            return Ok((None, None));
        };
        let d = dashboard::Dashboard::new();
        Ok((Some(http::start(addr, &d)?), Some(d)))
    }

    /// After the run, with `--http`: serves the final counts for `--http-linger`.
    fn linger(&self, server: &Option<http::HttpServer>, interrupt: &AtomicBool) {
        if server.is_some() && self.http_linger > 0.0 {
            http::linger(
                std::time::Duration::from_secs_f64(self.http_linger),
                interrupt,
            );
        }
    }
}

#[derive(clap::Args)]
struct SchemaArgs {
    /// Apply the migrations to this ClickHouse server instead of printing them.
    #[arg(long, value_name = "URL")]
    apply: Option<String>,
    /// Database name.
    #[arg(long, default_value = "adflow")]
    database: String,
}

/// Splits `http://host:port/?database=db` into the server URL and the database.
fn clickhouse_target(url: &str) -> (String, String) {
    match url.split_once('?') {
        Some((base, query)) => {
            let db = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("database="))
                .unwrap_or("adflow");
            (base.trim_end_matches('/').to_string(), db.to_string())
        }
        None => (url.trim_end_matches('/').to_string(), "adflow".to_string()),
    }
}

/// The ClickHouse sink's `batch_ms` in live mode when `[clickhouse]` does not set it (the
/// library default, used in file mode, is 1,000).
const LIVE_CLICKHOUSE_BATCH_MS: u64 = 250;

/// The ClickHouse sink's settings: `[clickhouse]` of the settings file, then the flag's `url`
/// and `database`; in `live` mode `batch_ms` is [`LIVE_CLICKHOUSE_BATCH_MS`] unless set.
/// Unknown keys and out-of-range values are errors.
fn clickhouse_config(
    settings: &Settings,
    url: String,
    database: String,
    live: bool,
) -> Result<adflow_clickhouse::ClickHouseConfig> {
    let mut cfg = match &settings.clickhouse {
        Some(t) => t
            .clone()
            .try_into::<adflow_clickhouse::ClickHouseConfig>()
            .context("in the [clickhouse] settings")?,
        None => adflow_clickhouse::ClickHouseConfig::default(),
    };
    cfg.url = url;
    cfg.database = database;
    // Live mode flushes every 250 ms unless `batch_ms` is set: at 100k events/s the 1 s
    // default was about half of ClickHouse's lag behind the file sink, at no measurable CPU
    // cost (bench/RESULTS.md, 2026-12-04).
    let batch_ms_given = settings
        .clickhouse
        .as_ref()
        .is_some_and(|t| t.contains_key("batch_ms"));
    if live && !batch_ms_given {
        cfg.batch_ms = LIVE_CLICKHOUSE_BATCH_MS;
    }
    cfg.validate().context("in the [clickhouse] settings")?;
    Ok(cfg)
}

/// The extra sink of a `--sink KIND=URL` flag in live mode (`kafka_run.rs`): resumable, see
/// [`extra_sink_with`].
fn extra_sink(spec: &str, settings: &Settings) -> Result<Box<dyn Sink>> {
    extra_sink_with(spec, true, settings)
}

/// The sink of a `--sink KIND=URL` flag. `resume` (live mode): the sink continues from the
/// checkpoint an earlier run stored with its data (ClickHouse: `ClickHouseSink::resume`, the
/// journal in the database; Redis: `RedisSink::resume`, the progress hash) and keeps the
/// checkpoints of this run; otherwise (file mode) it just writes (Redis: from empty keys).
fn extra_sink_with(spec: &str, resume: bool, settings: &Settings) -> Result<Box<dyn Sink>> {
    let Some((kind, url)) = spec.split_once('=') else {
        bail!("--sink {spec:?}: expected KIND=URL, e.g. clickhouse=http://127.0.0.1:8123");
    };
    match kind {
        "clickhouse" => {
            let (url, db) = clickhouse_target(url);
            let mut cfg = clickhouse_config(settings, url, db, resume)?;
            cfg.apply_schema = true;
            let sink = if resume {
                adflow_clickhouse::ClickHouseSink::resume(cfg)?
            } else {
                adflow_clickhouse::ClickHouseSink::new(cfg)?
            };
            Ok(Box::new(sink))
        }
        // docs/redis.md: the suppressed persons and open orders as keys for an ad server.
        "redis" => {
            let cfg = adflow_redis::RedisConfig::from_url(url)?;
            let sink = if resume {
                adflow_redis::RedisSink::resume(cfg)?
            } else {
                adflow_redis::RedisSink::new(cfg)?
            };
            Ok(Box::new(sink))
        }
        other => {
            bail!("--sink {spec:?}: unknown sink kind {other:?} (known: clickhouse, redis)")
        }
    }
}

/// Parses a count that must be at least 1 (`--workers`).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn load_settings(path: Option<&PathBuf>) -> Result<Settings> {
    match path {
        None => Ok(Settings::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let settings =
                Settings::from_toml(&text).with_context(|| format!("in {}", p.display()))?;
            // `[clickhouse]` is checked here, before any output is touched.
            if settings.clickhouse.is_some() {
                let d = adflow_clickhouse::ClickHouseConfig::default();
                clickhouse_config(&settings, d.url, d.database, false)
                    .with_context(|| format!("in {}", p.display()))?;
            }
            Ok(settings)
        }
    }
}

/// A flag that the first SIGINT/SIGTERM sets (stop cleanly); a second one while it is set
/// exits the process at once with 130.
fn stop_signals() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
            .context("installing signal handler")?;
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handler")?;
    }
    Ok(flag)
}

/// Written into a file-mode `--output DIR` once the run is complete (see `cmd_run`).
const SUCCESS_FILE: &str = "_SUCCESS";

fn cmd_run(args: RunArgs) -> Result<()> {
    if args.kafka.is_some() {
        return kafka_run::cmd_run_kafka(args);
    }
    let (Some(input), Some(output)) = (args.input.clone(), args.output.clone()) else {
        bail!("file mode needs --input DIR and --output DIR (or use --kafka BROKERS)");
    };
    if input.exists() && !input.is_dir() {
        bail!(
            "--input {} is a file: give the directory that holds <stream>.jsonl",
            input.display()
        );
    }
    if !input.is_dir() {
        bail!("input directory {} does not exist", input.display());
    }
    let settings = load_settings(args.config.as_ref())?;
    let mut opts = RunOptions::new(args.workers, settings.clone())?;
    let parse = opts.parse.clone();
    // Every input file must open and read before the output is truncated: a run that cannot
    // read its input leaves the previous output as it was.
    FileSource::open(&input, 0, 1, parse.clone())
        .with_context(|| format!("reading the input in {}", input.display()))?;
    let sources: SourceFactory = Arc::new(move |index, peers| {
        Ok(
            Box::new(FileSource::open(&input, index, peers, parse.clone())?)
                as Box<dyn adflow_engine::driver::Source>,
        )
    });
    // `OUT/_SUCCESS` says the tables in OUT are a complete run: gone from the start of a run
    // until it has written and synced every table.
    let success = output.join(SUCCESS_FILE);
    match std::fs::remove_file(&success) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", success.display()));
        }
        _ => {}
    }
    let (server, dashboard) = args.start_http()?;
    // With `--http` the dashboard watches what the file sink is handed (every table, no copy).
    let file: Box<dyn Sink> = Box::new(FileSink::create(&output)?);
    let mut sinks: Vec<Box<dyn Sink>> = vec![match &dashboard {
        Some(d) => d.tap(file),
        None => file,
    }];
    for spec in &args.sinks {
        sinks.push(extra_sink_with(spec, false, &settings)?);
    }
    let actions = match actions::start(&settings, Some(&output), false)? {
        Some((sink, run)) => {
            sinks.push(sink);
            Some(run)
        }
        None => None,
    };
    let sinks = sinks.into_iter().map(MeteredSink::wrap).collect();
    // SIGINT/SIGTERM: stop reading, hand the sinks what is released, exit 1 without
    // `_SUCCESS`; a second signal exits at once (130).
    let interrupt = stop_signals()?;
    opts.interrupt = Some(interrupt.clone());
    let started = std::time::Instant::now();
    let report = match run(
        Arc::new(adflow_pipelines::AdflowProgram),
        sources,
        sinks,
        opts,
    ) {
        Ok(r) => r,
        Err(adflow_engine::EngineError::Interrupted) => bail!(
            "interrupted: {} holds the tables of a partial run (every change up to where it stopped, no {SUCCESS_FILE}); run again for the complete tables",
            output.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let secs = started.elapsed().as_secs_f64();
    if let Some(a) = actions {
        a.finish()?;
    }
    let summary = serde_json::json!({
        "messages": report.messages,
        "events": report.events,
        "dead_letters": report.dead_letters,
        "changes": report.changes,
        "final_watermark": report.final_watermark,
    });
    // Ready (every table written and synced) before `_SUCCESS` says so to readers.
    adflow_engine::telemetry::set_complete();
    std::fs::write(&success, format!("{summary}\n"))
        .and_then(|_| std::fs::File::open(&success)?.sync_all())
        .with_context(|| format!("writing {}", success.display()))?;
    tracing::info!(
        messages = report.messages,
        events = report.events,
        late = report.late,
        duplicates = report.duplicates,
        dead_letters = report.dead_letters,
        changes = report.changes,
        watermark = report.final_watermark,
        secs,
        rate = (report.messages as f64 / secs.max(1e-9)) as u64,
        "run finished"
    );
    eprintln!(
        "adflow run: {} messages ({} events, {} late, {} duplicates, {} dead letters) -> {} changes in {:.2}s ({:.0} msg/s)",
        report.messages,
        report.events,
        report.late,
        report.duplicates,
        report.dead_letters,
        report.changes,
        secs,
        report.messages as f64 / secs.max(1e-9)
    );
    args.linger(&server, &interrupt);
    Ok(())
}

/// Any panic on any thread ends the process at once with an error. A timely cluster is
/// shared-fate: a process whose peer died sees its connection break (timely's communication
/// thread panics) and must stop instead of waiting for the peer forever.
fn install_panic_exit() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let text = info.to_string();
        if text.contains("timely communication error") {
            eprintln!("adflow: error: lost the connection to a peer process of the cluster ({text}); stopping. Restart every process of the cluster.");
        } else {
            eprintln!("adflow: error: internal failure ({text}); stopping.");
        }
        std::process::exit(70);
    }));
}

/// Configures the fail points named in `FAILPOINTS` (`name=actions;name=actions`, fail-rs
/// syntax; docs/operations.md). A malformed entry is an error naming it, not a panic.
fn configure_fail_points(spec: &str) -> Result<()> {
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            bail!("FAILPOINTS: {entry:?} is not `name=actions`");
        };
        fail::cfg(name.trim(), actions.trim())
            .map_err(|e| anyhow::anyhow!("FAILPOINTS: {entry:?}: {e}"))?;
    }
    tracing::warn!(
        FAILPOINTS = %spec,
        "fail points are active: injected faults for testing, not for production"
    );
    Ok(())
}

fn main() -> Result<()> {
    install_panic_exit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ADFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Fault tests (docs/operations.md): `FAILPOINTS` configures the sinks' fail points for the
    // whole run. Without it they are never configured and do nothing.
    if let Some(spec) = std::env::var_os("FAILPOINTS") {
        configure_fail_points(&spec.to_string_lossy())?;
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Generate(a) => {
            let r = adflow_gen::generate(&a)?;
            eprintln!(
                "adflow generate: {} lines written to {}",
                r.total_lines(),
                a.output.display()
            );
            Ok(())
        }
        Command::Report(a) => report::report(&a),
        Command::Schema(a) => match a.apply {
            None => {
                print!("{}", adflow_clickhouse::schema_sql(&a.database));
                Ok(())
            }
            Some(url) => {
                let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
                let (url, _) = clickhouse_target(&url);
                let r = rt.block_on(adflow_clickhouse::apply_schema(&url, &a.database))?;
                eprintln!(
                    "adflow schema: applied {:?}, already applied {:?}",
                    r.applied, r.already_applied
                );
                Ok(())
            }
        },
        Command::Kdniao(cmd) => {
            let kafka = produce::kdniao_kafka_publisher(&cmd)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(adflow_kdniao::run_with_publisher(cmd, kafka))?;
            Ok(())
        }
        Command::Produce(a) => produce::cmd_produce(a),
        Command::Actions(a) => actions::cmd_actions(a),
    }
}
