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
