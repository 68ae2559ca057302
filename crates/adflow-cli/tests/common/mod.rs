//! Helpers shared by the binary's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

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
