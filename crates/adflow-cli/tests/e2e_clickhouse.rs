//! End-to-end against a real ClickHouse server (`ADFLOW_CLICKHOUSE_URL`, started by
//! `scripts/services/clickhouse.sh`): the same generated data set through the file sink and the
//! ClickHouse sink (in one run) gives identical current contents for every table.

use adflow_model::Table;
use adflow_reference::read_changelog_dir;
use std::process::Command;

fn server() -> Option<String> {
    match std::env::var("ADFLOW_CLICKHOUSE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") => None,
        _ => panic!("ADFLOW_CLICKHOUSE_URL is not set: start scripts/services/clickhouse.sh (or set ADFLOW_SKIP_SERVICE_TESTS=1)"),
    }
}

#[test]
fn clickhouse_current_contents_equal_file_mode() {
    let Some(url) = server() else { return };
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
    let files = read_changelog_dir(&out).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = adflow_clickhouse::ClickHouseConfig::new(url.clone(), db.clone());
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
        assert_eq!(in_ch.len(), in_files.len(), "{table}: row counts differ");
        assert_eq!(in_ch, in_files, "{table}: contents differ");
        if table != Table::SuppressedPersons {
            assert!(
                !in_files.is_empty(),
                "{table} is empty: the comparison proves little"
            );
        }
    }
}
