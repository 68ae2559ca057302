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
