//! End-to-end against a real ClickHouse server (`ADFLOW_CLICKHOUSE_URL`, started by
//! `scripts/services/clickhouse.sh`): the same generated data set through the file sink and the
//! ClickHouse sink (in one run) gives identical current contents for every table.

mod common;

use common::{assert_clickhouse_equals_files, clickhouse_url};
use std::process::Command;

/// A generated data set in `dir`.
fn generated(dir: &std::path::Path, seed: u64, users: u32, days: u32) {
    let mut args = adflow_gen::GenerateArgs::with_output(dir);
    args.seed = seed;
    args.users = users;
    args.days = days;
    adflow_gen::generate(&args).unwrap();
}

#[test]
fn clickhouse_current_contents_equal_file_mode() {
    let Some(url) = clickhouse_url() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    generated(&input, 3, 150, 3);
    let db = format!("adflow_e2e_{}", std::process::id());
    let out = tmp.path().join("out");
    // Small batches from the settings file: many journal-free INSERTs, each release cut.
    let cfg = tmp.path().join("adflow.toml");
    std::fs::write(
        &cfg,
        "[clickhouse]\nbatch_rows = 50\nmax_pending_rows = 100\nbatch_ms = 100\n",
    )
    .unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_adflow"))
        .args(["run", "--workers", "2", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--sink")
        .arg(format!("clickhouse={url}?database={db}"))
        .env("ADFLOW_LOG", "warn")
        .status()
        .unwrap();
    assert!(st.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_clickhouse_equals_files(&rt, &url, &db, &out, "");
}

#[test]
fn a_bad_clickhouse_setting_stops_the_run_before_any_output() {
    let Some(url) = clickhouse_url() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    generated(&input, 42, 20, 1);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("attribution.jsonl"), "kept\n").unwrap();
    for (text, want) in [
        (
            "[clickhouse]\nbatch_ms = 100\nbogus = 1\n",
            "unknown field `bogus`",
        ),
        ("[clickhouse]\nbatch_rows = 0\n", "batch_rows must be in"),
    ] {
        let cfg = tmp.path().join("adflow.toml");
        std::fs::write(&cfg, text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_adflow"))
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .arg("--sink")
            .arg(format!("clickhouse={url}?database=adflow_e2e_bad"))
            .env("ADFLOW_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want) && err.contains("[clickhouse]"), "{err}");
        assert_eq!(
            std::fs::read_to_string(out.join("attribution.jsonl")).unwrap(),
            "kept\n"
        );
    }
}
