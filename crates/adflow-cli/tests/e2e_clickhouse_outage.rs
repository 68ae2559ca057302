//! End to end through the binary: ClickHouse is stopped for 30 s shortly after `adflow run
//! --sink clickhouse=...` started writing to it, then started again; the run finishes
//! successfully and ClickHouse's current contents equal the file output's for every table.
//!
//! Needs the server of `scripts/services/clickhouse.sh` (`ADFLOW_CLICKHOUSE_URL` must be the URL
//! it prints): the test stops and starts it through the script, and starts it again if the
//! test fails while it is down. Kept alone in its own test binary so no other test sees the
//! outage.

mod common;

use common::{assert_clickhouse_equals_files, clickhouse_url};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server stays down (the "30 s").
const OUTAGE: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/clickhouse.sh")
}

fn service(action: &str) -> String {
    let out = Command::new("bash")
        .arg(script())
        .arg(action)
        .output()
        .unwrap_or_else(|e| panic!("clickhouse.sh {action}: {e}"));
    assert!(
        out.status.success(),
        "clickhouse.sh {action} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts the server again if it is still stopped when the test ends (a failed assertion),
/// and kills the `adflow run` child if it still runs.
struct Guard {
    server_down: bool,
    child: Option<Child>,
    /// The child is stopped (SIGSTOP).
    paused: Option<u32>,
}

/// Sends SIGSTOP/SIGCONT (`sig` = `STOP`/`CONT`) to `pid`.
fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
    assert!(st.success(), "kill -{sig} {pid}: {st}");
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = self.paused {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.server_down {
            let _ = Command::new("bash").arg(script()).arg("start").output();
        }
    }
}

/// A count from the server; 0 while it does not answer (or the table does not exist yet).
fn count_rows(
    rt: &tokio::runtime::Runtime,
    cfg: &adflow_clickhouse::ClickHouseConfig,
    sql: &str,
) -> u64 {
    rt.block_on(cfg.client().query(sql).fetch_one::<u64>())
        .unwrap_or(0)
}

fn execute(rt: &tokio::runtime::Runtime, cfg: &adflow_clickhouse::ClickHouseConfig, sql: &str) {
    rt.block_on(cfg.client().query(sql).execute())
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[test]
fn clickhouse_down_for_30s_mid_run_changes_nothing() {
    let Some(url) = clickhouse_url() else { return };
    assert_eq!(
        service("url").trim_end_matches('/'),
        url.trim_end_matches('/'),
        "ADFLOW_CLICKHOUSE_URL must be the server of scripts/services/clickhouse.sh: this test stops and starts it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let mut args = adflow_gen::GenerateArgs::with_output(&input);
    // About 200k lines: ~10 s of work on a 2-core machine without the outage; the first rows
    // reach ClickHouse after ~2 s, the server goes down then.
    args.seed = 11;
    args.users = 1000;
    args.days = 4;
    adflow_gen::generate(&args).unwrap();
    let db = format!("adflow_e2e_outage_{}", std::process::id());
    let cfg = adflow_clickhouse::ClickHouseConfig::new(url.clone(), db.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    execute(&rt, &cfg, &format!("DROP DATABASE IF EXISTS {db}"));

    let out = tmp.path().join("out");
    let log = tmp.path().join("run.log");
    let mut guard = Guard {
        server_down: false,
        child: None,
        paused: None,
    };
    let started = Instant::now();
    guard.child = Some(
        Command::new(env!("CARGO_BIN_EXE_adflow"))
            .args(["run", "--workers", "2", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .arg("--sink")
            .arg(format!("clickhouse={url}?database={db}"))
            .env("ADFLOW_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let child_running = |guard: &mut Guard| {
        guard
            .child
            .as_mut()
            .map(|c| c.try_wait().unwrap().is_none())
            .unwrap_or(false)
    };

    // Wait until the sink has written something, then pull the plug.
    let count_sql = format!(
        "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'attribution'"
    );
    let rows_sql = format!("SELECT count() FROM {db}.attribution");
    loop {
        assert!(
            child_running(&mut guard),
            "adflow run ended before ClickHouse went down: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if count_rows(&rt, &cfg, &count_sql) > 0 && count_rows(&rt, &cfg, &rows_sql) > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no rows in ClickHouse after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let written_before = count_rows(&rt, &cfg, &rows_sql);
    // The server finishes its graceful shutdown only once its clients' keep-alive connections
    // fall quiet (18.16 keeps serving a connection that goes on sending requests), so the run
    // is paused while the server stops, and resumed into the outage.
    let pid = guard.child.as_ref().unwrap().id();
    signal(pid, "STOP");
    guard.paused = Some(pid);
    service("stop");
    guard.server_down = true;
    signal(pid, "CONT");
    guard.paused = None;
    let down_at = started.elapsed();
    assert!(
        child_running(&mut guard),
        "adflow run ended before ClickHouse went down (make the data set bigger)"
    );
    std::thread::sleep(OUTAGE);
    assert!(
        child_running(&mut guard),
        "adflow run ended while ClickHouse was down: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    service("start");
    guard.server_down = false;

    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(st) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "adflow run did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    guard.child = None;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "adflow run failed: {status}\n{log_text}");
    eprintln!(
        "server down at {down_at:?} ({written_before} attribution rows written before) for {OUTAGE:?}; run took {:?}",
        started.elapsed()
    );
    assert!(
        log_text.contains("ClickHouse write failed; retrying"),
        "the sink saw the outage:\n{log_text}"
    );

    assert_clickhouse_equals_files(&rt, &url, &db, &out, "");
    execute(&rt, &cfg, &format!("DROP DATABASE IF EXISTS {db}"));
}
