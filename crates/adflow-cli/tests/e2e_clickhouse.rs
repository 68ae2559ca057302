//! End-to-end against a real ClickHouse server (`ADFLOW_CLICKHOUSE_URL`, started by
//! `scripts/services/clickhouse.sh`): the same generated data set through the file sink and the
//! ClickHouse sink (in one run) gives identical current contents for every table.

mod common;

use common::{assert_clickhouse_equals_files, clickhouse_url};
use std::process::Command;

#[test]
fn clickhouse_current_contents_equal_file_mode() {
    let Some(url) = clickhouse_url() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let mut args = adflow_gen::GenerateArgs::with_output(&input);
    args.seed = 3;
    args.users = 150;
    args.days = 3;
    adflow_gen::generate(&args).unwrap();
    let db = format!("adflow_e2e_{}", std::process::id());
    let out = tmp.path().join("out");
    let st = Command::new(env!("CARGO_BIN_EXE_adflow"))
        .args(["run", "--workers", "2", "--input"])
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
