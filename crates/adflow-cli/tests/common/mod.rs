//! Helpers shared by the binary's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `adflow` binary under test, logging warnings only.
pub fn adflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_adflow"));
    c.env("ADFLOW_LOG", "warn");
    c
}

/// Waits for `child` (spawned with a piped stderr) for at most `limit`, killing it and failing
/// the test with `what` if it runs longer; returns its exit status and stderr.
pub fn wait_or_kill(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> (std::process::ExitStatus, String) {
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
    }
    (status, stderr)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `c` and fails the test with its stderr unless it exits 0.
pub fn ok(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A name fragment unique to this test run (process id and clock), for topics and groups.
pub fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}{}{}", std::process::id(), nanos % 1_000_000_000)
}

/// The broker of the Kafka tests (`ADFLOW_KAFKA_BROKERS`); `None` (the test is skipped) only
/// with `ADFLOW_SKIP_SERVICE_TESTS=1`, else a missing broker fails the test.
pub fn brokers() -> Option<String> {
    match std::env::var("ADFLOW_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") {
                eprintln!("skipped: ADFLOW_SKIP_SERVICE_TESTS=1 and no ADFLOW_KAFKA_BROKERS");
                None
            } else {
                panic!(
                    "ADFLOW_KAFKA_BROKERS is not set: start a broker with \
                     `scripts/services/tansu.sh start` and export \
                     ADFLOW_KAFKA_BROKERS=127.0.0.1:19092, or set ADFLOW_SKIP_SERVICE_TESTS=1"
                )
            }
        }
    }
}

/// The live-mode tests' reference: a generated data set in `dir/in` (seed 3, 200 users,
/// 2 days), `config` written to `dir/cfg.toml`, and the file-mode run of both into `dir/file`.
pub fn generate_and_run_files(dir: &Path, config: &str) {
    ok(adflow()
        .args([
            "generate", "--seed", "3", "--users", "200", "--days", "2", "--output",
        ])
        .arg(dir.join("in")));
    std::fs::write(dir.join("cfg.toml"), config).unwrap();
    ok(adflow()
        .args(["run", "--workers", "2", "--input"])
        .arg(dir.join("in"))
        .arg("--output")
        .arg(dir.join("file"))
        .arg("--config")
        .arg(dir.join("cfg.toml")));
}

/// The reference's (`adflow-reference`) final tables of the data set `input`
/// (`<stream>.jsonl` files) under the settings file `config_toml` (read as `adflow run
/// --config` reads it; phone secret from the variable the settings name, else the built-in
/// development secret, as `RunOptions::new` does), with event time ending at
/// `max(largest ts, end_watermark_ms)` (`None`: the largest ts, as in file mode). In the format
/// of the tests' `contents(dir)`: table name → canonical JSON of each row without `version`
/// and `sign` (and, for `dead_letters`, without `position` and `seen_ts`) → summed sign, zero
/// sums dropped; every table is present.
pub fn reference_contents(
    input: &Path,
    config_toml: &Path,
    end_watermark_ms: Option<i64>,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> {
    use adflow_model::config::Settings;
    use adflow_model::event::ParseConfig;
    use adflow_model::{Change, Table};
    use std::collections::BTreeMap;

    let text = std::fs::read_to_string(config_toml).unwrap();
    let settings = Settings::from_toml(&text).unwrap();
    let secret = match std::env::var(&settings.phone_secret_env) {
        Ok(s) if !s.is_empty() => s.into_bytes(),
        _ => ParseConfig::default().phone_secret,
    };
    let mut cfg = adflow_reference::RefConfig::from_settings(&settings, secret).unwrap();
    cfg.end_watermark_ms = end_watermark_ms;
    let tables = adflow_reference::compute(input, &cfg).unwrap();
    let mut out = BTreeMap::new();
    for table in Table::ALL {
        let mut rows: BTreeMap<String, i64> = BTreeMap::new();
        for row in tables.get(&table).into_iter().flatten() {
            let line = Change {
                row: row.clone(),
                version: 0,
                sign: 1,
            }
            .to_json_line();
            let (row, sign) = canonical_row(table.name(), &line);
            *rows.entry(row).or_default() += sign;
        }
        rows.retain(|_, s| *s != 0);
        out.insert(table.name().to_string(), rows);
    }
    out
}

/// Canonical form of one changelog line for comparing tables: the row's JSON without
/// `version`, `sign` and, for `dead_letters`, the fields that name where and when it was seen;
/// with its sign.
pub fn canonical_row(table: &str, line: &str) -> (String, i64) {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
    let sign = v.remove("sign").unwrap().as_i64().unwrap();
    v.remove("version").unwrap();
    if table == "dead_letters" {
        v.remove("position");
        v.remove("seen_ts");
    }
    (serde_json::to_string(&v).unwrap(), sign)
}

/// Current contents of every table of a changelog directory: canonical row
/// ([`canonical_row`]) → summed sign, zero sums dropped.
pub fn contents(
    dir: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(table) = name.strip_suffix(".jsonl") else {
            continue;
        };
        let mut rows: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (row, sign) = canonical_row(table, line);
            *rows.entry(row).or_default() += sign;
        }
        rows.retain(|_, s| *s != 0);
        out.insert(table.to_string(), rows);
    }
    out
}

/// The Redis server of the tests (`ADFLOW_REDIS_URL`, the URL that
/// `scripts/services/redis.sh start` prints); `None` (the test is skipped) only with
/// `ADFLOW_SKIP_SERVICE_TESTS=1`, else a missing server fails the test.
pub fn redis_url() -> Option<String> {
    match std::env::var("ADFLOW_REDIS_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") {
                eprintln!("skipped: ADFLOW_SKIP_SERVICE_TESTS=1 and no ADFLOW_REDIS_URL");
                None
            } else {
                panic!(
                    "ADFLOW_REDIS_URL is not set: start a server with \
                     `scripts/services/redis.sh start` and export \
                     ADFLOW_REDIS_URL=redis://127.0.0.1:16379, or set ADFLOW_SKIP_SERVICE_TESTS=1"
                )
            }
        }
    }
}

/// The ClickHouse server of the tests (`ADFLOW_CLICKHOUSE_URL`, the URL that
/// `scripts/services/clickhouse.sh start` prints); `None` (the test is skipped) only with
/// `ADFLOW_SKIP_SERVICE_TESTS=1`, else a missing server fails the test.
pub fn clickhouse_url() -> Option<String> {
    match std::env::var("ADFLOW_CLICKHOUSE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") => None,
        _ => panic!("ADFLOW_CLICKHOUSE_URL is not set: start scripts/services/clickhouse.sh (or set ADFLOW_SKIP_SERVICE_TESTS=1)"),
    }
}

/// Fails the test (messages prefixed by `what`) unless the current contents of every
/// ClickHouse table of the database `db` on `url` equal those of the file changelogs in `out`,
/// and every table but `suppressed_persons` has rows (else the comparison proves little).
pub fn assert_clickhouse_equals_files(
    rt: &tokio::runtime::Runtime,
    url: &str,
    db: &str,
    out: &Path,
    what: &str,
) {
    use adflow_model::Table;
    let files = adflow_reference::read_changelog_dir(out).unwrap();
    let cfg = adflow_clickhouse::ClickHouseConfig::new(url.to_string(), db.to_string());
    for table in Table::ALL {
        let in_ch = rt
            .block_on(adflow_clickhouse::current_contents(&cfg, table))
            .unwrap();
        let in_files: Vec<_> = files
            .get(&table)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        assert_eq!(
            in_ch.len(),
            in_files.len(),
            "{what}{table}: row counts differ"
        );
        assert_eq!(in_ch, in_files, "{what}{table}: contents differ");
        if table != Table::SuppressedPersons {
            assert!(
                !in_files.is_empty(),
                "{what}{table} is empty: the comparison proves little"
            );
        }
    }
}

// Live mode (`adflow run --kafka`): the helpers of `kafka_run.rs` and `faults.rs`.

/// A topic prefix unique to this test run, `run<unique>_<name>.`.
pub fn topic_prefix(name: &str) -> String {
    format!("{}_{name}.", unique("run"))
}

/// The settings of the live-mode tests.
pub const LIVE_CONFIG: &str = "allowed_lateness = \"1s\"\nstate_retention = \"3650d\"\n[kafka]\nidle_timeout = \"1s\"\ncommit_interval = \"200ms\"\n";

/// Generated data set, the settings both modes use ([`LIVE_CONFIG`]), and the file-mode
/// output (see [`generate_and_run_files`]).
pub fn live_setup(dir: &Path) {
    // Once caught up, event time follows the wall clock (spec §2): every timer of the 2024
    // data set fires, and the state retention must cover the span from the data to now.
    generate_and_run_files(dir, LIVE_CONFIG);
}

/// `adflow produce` of `dir/in` to the 4-partition topics `<prefix>...`, at `rate` events/s
/// if given.
pub fn produce(dir: &Path, brokers: &str, prefix: &str, rate: Option<&str>) -> Command {
    let mut c = adflow();
    c.arg("produce").arg("--input").arg(dir.join("in")).args([
        "--kafka",
        brokers,
        "--topic-prefix",
        prefix,
        "--partitions",
        "4",
    ]);
    if let Some(r) = rate {
        c.args(["--rate", r]);
    }
    c
}

/// `adflow run --kafka` of the topics `<prefix>...` with 2 workers (group `<prefix>g`, the
/// settings `dir/cfg.toml`), writing `dir/out`.
pub fn run_kafka(dir: &Path, brokers: &str, prefix: &str, out: &str) -> Command {
    let mut c = adflow();
    c.args([
        "run",
        "--kafka",
        brokers,
        "--topic-prefix",
        prefix,
        "--group",
    ])
    .arg(format!("{prefix}g"))
    .args(["--workers", "2", "--output"])
    .arg(dir.join(out))
    .arg("--config")
    .arg(dir.join("cfg.toml"));
    c
}

/// The tables the spec defines for the data set once a live run has caught up and gone idle:
/// the reference with the end watermark now (every timer of the data set due).
pub fn expected(
    dir: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    reference_contents(&dir.join("in"), &dir.join("cfg.toml"), Some(now))
}

/// Fails the test unless `a` holds exactly the tables `e` (and `e` has rows in every table
/// but `suppressed_persons` and `triggers`), naming a few rows that differ.
pub fn assert_same(
    e: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
    a: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
) {
    assert_eq!(e.keys().collect::<Vec<_>>(), a.keys().collect::<Vec<_>>());
    for (table, rows) in e {
        assert!(!rows.is_empty() || table == "suppressed_persons" || table == "triggers");
        let got = &a[table];
        let missing: Vec<_> = rows
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(3)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, v)| rows.get(*k) != Some(v))
            .take(3)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{table}: {} vs {} rows; expected but not found: {missing:?}; found but not expected: {extra:?}",
            rows.len(),
            got.len()
        );
    }
}

/// Ends a run's `--http-linger` with SIGTERM (the run itself is over, so the exit is clean)
/// and returns its exit status and stderr.
pub fn end_linger(child: std::process::Child, what: &str) -> (std::process::ExitStatus, String) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    wait_or_kill(child, std::time::Duration::from_secs(30), what)
}

/// A plain HTTP/1.0 request to `http://127.0.0.1:PORT/path` (a form body, if any):
/// (status, body).
pub fn http_request(url: &str, method: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let mut c = std::net::TcpStream::connect(host).ok()?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        c,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// [`http_request`] with `GET`.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    http_request(url, "GET", "")
}

/// Counter, gauge and untyped samples of a Prometheus scrape (histograms' `_count`/`_sum`
/// among them): (name, sorted labels) → value.
pub type Samples = std::collections::BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses `/metrics` text with a real Prometheus parser (failing the test if it is not).
pub fn parse_metrics(text: &str) -> (prometheus_parse::Scrape, Samples) {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics is not Prometheus text");
    let mut samples = Samples::new();
    for s in &scrape.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        samples.insert((s.metric.clone(), labels), v);
    }
    (scrape, samples)
}

/// The sample `name{labels}` (failing the test when there is none).
pub fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    *samples
        .get(&(name.to_string(), l))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

/// The sum of `name` over all its label sets.
pub fn sample_sum(samples: &Samples, name: &str) -> f64 {
    samples
        .iter()
        .filter(|((n, _), _)| n == name)
        .map(|(_, v)| v)
        .sum()
}
