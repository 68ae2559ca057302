//! Live mode with ClickHouse as the only sink, against a real broker (`ADFLOW_KAFKA_BROKERS`)
//! and a real ClickHouse server (`ADFLOW_CLICKHOUSE_URL`): the consumer is killed with SIGKILL
//! mid-stream and restarted; the ClickHouse sink resumes from the checkpoint it stored, and
//! the tables end up with exactly the file-mode contents, every row counted once. Without the
//! two variables these tests fail, unless `ADFLOW_SKIP_SERVICE_TESTS=1`.

mod common;

use adflow_model::{OutputRow, Table};
use common::{adflow, generate_and_run_files, ok, unique};
use std::process::Stdio;
use std::time::Duration;

fn services() -> Option<(String, String)> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match (get("ADFLOW_KAFKA_BROKERS"), get("ADFLOW_CLICKHOUSE_URL")) {
        (Some(b), Some(c)) => Some((b, c)),
        _ if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") => None,
        _ => panic!(
            "ADFLOW_KAFKA_BROKERS and ADFLOW_CLICKHOUSE_URL must be set (or ADFLOW_SKIP_SERVICE_TESTS=1)"
        ),
    }
}

/// Kills the consumer if the test fails while it runs.
struct KillOnDrop(Option<std::process::Child>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A dead letter without the fields that say where and when it was seen (they differ
/// between file and Kafka positions).
fn comparable(row: OutputRow) -> OutputRow {
    match row {
        OutputRow::DeadLetter(mut d) => {
            d.position = String::new();
            d.seen_ts = 0;
            OutputRow::DeadLetter(d)
        }
        other => other,
    }
}

fn sorted(rows: impl IntoIterator<Item = OutputRow>) -> Vec<OutputRow> {
    let mut v: Vec<OutputRow> = rows.into_iter().map(comparable).collect();
    v.sort();
    v
}

#[test]
fn kafka_run_with_clickhouse_only_killed_and_restarted_counts_nothing_twice() {
    let Some((brokers, url)) = services() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // Checkpoints every 2 s, so that the sink also writes batches (every second) between them.
    generate_and_run_files(
        dir,
        // Once caught up, event time follows the wall clock (spec §2): the retention must
        // cover the span from the 2024 data set to now.
        "allowed_lateness = \"1s\"\nstate_retention = \"3650d\"\n[kafka]\nidle_timeout = \"1s\"\ncommit_interval = \"2s\"\n",
    );

    let p = format!("{}.", unique("chk"));
    let db = format!("adflow_live_{}", std::process::id());
    let cfg = adflow_clickhouse::ClickHouseConfig::new(url.clone(), db.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sql = |q: &str| {
        rt.block_on(cfg.client().query(q).execute())
            .unwrap_or_else(|e| panic!("{q}: {e}"))
    };
    let count = |q: &str| {
        rt.block_on(cfg.client().query(q).fetch_one::<u64>())
            .unwrap_or_else(|e| panic!("{q}: {e}"))
    };
    sql(&format!("DROP DATABASE IF EXISTS {db}"));

    let consumer = || {
        let mut c = adflow();
        c.args(["run", "--kafka", &brokers, "--topic-prefix", &p, "--group"])
            .arg(format!("{p}g"))
            .args(["--workers", "2", "--sink"])
            .arg(format!("clickhouse={url}?database={db}"))
            .arg("--config")
            .arg(dir.join("cfg.toml"));
        c
    };
    // Publish at a bounded rate (about 5 s) so the consumer is killed mid-stream.
    let mut producer = adflow()
        .arg("produce")
        .arg("--input")
        .arg(dir.join("in"))
        .args([
            "--kafka",
            &brokers,
            "--topic-prefix",
            &p,
            "--partitions",
            "4",
            "--rate",
            "4000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let mut first = KillOnDrop(Some(
        consumer()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(5000));
    if let Some(mut c) = first.0.take() {
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    let checkpoints = count(&format!(
        "SELECT count() FROM {db}.adflow_journal WHERE has_checkpoint = 1"
    ));
    let batches = count(&format!(
        "SELECT count() FROM {db}.adflow_journal WHERE chunk = 0"
    ));
    assert!(checkpoints > 0, "the first run stored checkpoints");
    assert!(producer.wait().unwrap().success());
    ok(consumer().args(["--exit-when-idle", "4"]));

    // The tables the spec defines once the run has caught up: the reference with the end
    // watermark now (every timer of the data set due).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let text = std::fs::read_to_string(dir.join("cfg.toml")).unwrap();
    let settings = adflow_model::config::Settings::from_toml(&text).unwrap();
    let secret = match std::env::var(&settings.phone_secret_env) {
        Ok(s) if !s.is_empty() => s.into_bytes(),
        _ => adflow_model::event::ParseConfig::default().phone_secret,
    };
    let mut rcfg = adflow_reference::RefConfig::from_settings(&settings, secret).unwrap();
    rcfg.end_watermark_ms = Some(now);
    let files = adflow_reference::compute(&dir.join("in"), &rcfg).unwrap();
    let mut undone = 0u64;
    for table in Table::ALL {
        let in_ch = sorted(
            rt.block_on(adflow_clickhouse::current_contents(&cfg, table))
                .unwrap(),
        );
        let in_files = sorted(files.get(&table).cloned().unwrap_or_default());
        assert_eq!(in_ch.len(), in_files.len(), "{table}: row counts differ");
        assert_eq!(in_ch, in_files, "{table}: contents differ");
        if !matches!(table, Table::SuppressedPersons | Table::Triggers) {
            assert!(
                !in_files.is_empty(),
                "{table} is empty: the test proves little"
            );
        }
        // Nothing counted twice: every row's signs sum to 0 or 1 (the view alone would hide a
        // row written twice).
        let twice = count(&format!(
            "SELECT count() FROM (SELECT {cols} FROM {db}.{t} WHERE batch_marker = '' \
             GROUP BY {cols} HAVING sum(sign) NOT IN (0, 1))",
            t = table.name(),
            cols = row_columns(table),
        ));
        assert_eq!(twice, 0, "{table}: rows whose signs sum to neither 0 nor 1");
        undone += count(&format!(
            "SELECT count() FROM {db}.{} WHERE batch_marker LIKE '%-undo'",
            table.name()
        ));
    }
    eprintln!(
        "{batches} batches, {checkpoints} of them with a checkpoint, before the kill; {undone} INSERTs undone on restart"
    );
    sql(&format!("DROP DATABASE IF EXISTS {db}"));
}

/// The columns of `table`'s rows (what its `_current` view groups by).
fn row_columns(table: Table) -> String {
    let sql = adflow_clickhouse::schema_sql("x");
    let head = format!(
        "CREATE VIEW IF NOT EXISTS `x`.`{}_current` AS\nSELECT ",
        table.name()
    );
    let start = sql.find(&head).unwrap() + head.len();
    let line = sql[start..].lines().next().unwrap();
    line.trim_end_matches(", max(`version`) AS last_version")
        .to_string()
}
