//! Fault injection with fail points (`FAILPOINTS`, docs/operations.md): every place a sink
//! writes or makes its output durable fails once, at a random point of a 2-worker run. A file
//! sink fault ends the run within a time limit (a run past it is a hang: the test fails), exit
//! 1, the injected error on stderr, no `_SUCCESS`; a point beyond the run's last call leaves
//! the run exactly as a clean one. A ClickHouse insert fault is retried by the sink: the run
//! succeeds and ClickHouse holds exactly the file tables.
//!
//! The points are drawn from a seed taken from the clock and printed with every point
//! (`ADFLOW_FAULT_SEED=<seed>` draws the same points again).

mod common;

use common::{
    adflow, assert_clickhouse_equals_files, assert_same, brokers, clickhouse_url, contents,
    expected, live_setup, ok, produce, run_kafka, topic_prefix, wait_or_kill,
};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A run that takes longer hangs (a clean run of the data set takes about a second).
const LIMIT: Duration = Duration::from_secs(120);

/// Random points per fail point.
const POINTS: usize = 3;

/// The fail points of the file sink.
const FILE_POINTS: [&str; 3] = [
    "sink::file::write",
    "sink::file::flush",
    "sink::file::progress",
];

/// What a fail point logs when it fires (`adflow_engine::file`).
const FIRED: &str = "fail point fired";

type Contents = BTreeMap<String, BTreeMap<String, i64>>;

/// The seed of this test's random points: `ADFLOW_FAULT_SEED`, else the clock.
fn seed(test: &str) -> u64 {
    let seed = match std::env::var("ADFLOW_FAULT_SEED") {
        Ok(s) => s.trim().parse().expect("ADFLOW_FAULT_SEED: a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!("{test}: seed {seed} (ADFLOW_FAULT_SEED={seed} draws the same points)");
    seed
}

/// The injected error of `point` as the sinks word it.
fn injected(point: &str) -> String {
    format!("injected fault (fail point {point})")
}

/// The generated data set of these tests in `dir/in` (4 days, 1000 users: 200,000 lines, a
/// run of about a second whose file sink gets 4 to 6 writes with 2 workers).
fn generate(dir: &Path) {
    ok(adflow()
        .args([
            "generate", "--seed", "5", "--users", "1000", "--days", "4", "--output",
        ])
        .arg(dir.join("in")));
}

/// What a fail point logs at each call it passes (the `print` action of [`fault_spec`]).
fn call_mark(point: &str) -> String {
    format!("fault-test call {point}")
}

/// `FAILPOINTS` for `point` failing once after `n` calls: as `n*off->1*return->off`, except
/// that the `n` calls that pass are logged (`print`), so the test knows how many calls the
/// run made when the fault did not fire.
fn fault_spec(point: &str, n: usize) -> String {
    format!("{point}={n}*print({})->1*return->off", call_mark(point))
}

/// The calls of `point` that a run logged (see [`call_mark`]).
fn calls_logged(stderr: &str, point: &str) -> usize {
    let mark = call_mark(point);
    stderr
        .lines()
        .filter(|l| l.contains(&mark) && !l.contains("fail points are active"))
        .count()
}

/// `adflow run --workers 2` of `dir/in` into `out` with `FAILPOINTS=failpoints` (see
/// [`finish`]).
fn run_with(
    dir: &Path,
    out: &Path,
    failpoints: &str,
    extra: &[String],
    what: &str,
) -> (ExitStatus, String) {
    let mut c = adflow();
    c.args(["run", "--workers", "2", "--input"])
        .arg(dir.join("in"))
        .arg("--output")
        .arg(out)
        .args(extra);
    finish(c, Some(failpoints), &out.with_extension("stderr"), what)
}

/// Runs `c` with `FAILPOINTS=failpoints` (none: unset) and the fail points' own log lines
/// (`print`) shown, stderr to `log` (not a pipe, which a chatty run could fill): its exit
/// status and stderr. Ends within [`LIMIT`] or fails the test as a hang.
fn finish(
    mut c: Command,
    failpoints: Option<&str>,
    log: &Path,
    what: &str,
) -> (ExitStatus, String) {
    match failpoints {
        Some(f) => c.env("FAILPOINTS", f),
        None => c.env_remove("FAILPOINTS"),
    };
    let child = c
        .env("ADFLOW_LOG", "warn,fail=info")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (status, _) = wait_or_kill(child, LIMIT, &format!("{what}: a hang"));
    let stderr = std::fs::read_to_string(log).unwrap();
    println!(
        "  {what}: {status} after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    (status, stderr)
}

/// Whether `point` fired in the run that logged `stderr`.
fn fired(stderr: &str, point: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.contains(FIRED) && l.contains(point))
}

/// A clean run of `dir/in` into `dir/clean` that counts the calls of every file-sink fail
/// point (`print` only logs, the run is otherwise unchanged): its tables, the number of
/// lines of each changelog, and the calls per fail point.
fn clean_run(
    dir: &Path,
) -> (
    Contents,
    BTreeMap<String, usize>,
    BTreeMap<&'static str, usize>,
) {
    let spec: Vec<String> = FILE_POINTS
        .iter()
        .map(|p| format!("{p}=print({})", call_mark(p)))
        .collect();
    let out = dir.join("clean");
    let (status, stderr) = run_with(dir, &out, &spec.join(";"), &[], "clean run");
    assert!(status.success(), "the clean run failed: {stderr}");
    assert!(out.join("_SUCCESS").exists());
    let calls = FILE_POINTS
        .iter()
        .map(|&p| (p, calls_logged(&stderr, p)))
        .collect();
    println!("  calls in a clean run: {calls:?}");
    (contents(&out), lines(&out), calls)
}

/// Lines per changelog file of `dir`.
fn lines(dir: &Path) -> BTreeMap<String, usize> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| {
            let n = std::fs::read_to_string(&p).unwrap().lines().count();
            (p.file_name().unwrap().to_string_lossy().to_string(), n)
        })
        .collect()
}

/// The `Error: ...` line the binary ends with.
fn error_line(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.starts_with("Error: "))
}

/// `point` fails at 3 random calls below the number of calls of a clean run and once at the
/// first call beyond them. Each run ends within the limit. A run in which it fired (at call
/// `n + 1`, exactly): exit 1 with the injected error naming the file, no `_SUCCESS` (a stale
/// one is put there first). A run in which it did not fire (it made at most `n` calls: the
/// number of writes of a 2-worker run varies a little): exit 0, `_SUCCESS`, exactly the clean
/// run's changelogs.
fn file_point_fails_once(point: &str) {
    let seed = seed(point);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir);
    let (clean, clean_lines, calls) = clean_run(dir);
    let calls = calls[point];
    let mut ns: Vec<usize> = (0..POINTS)
        .filter(|_| calls > 0)
        .map(|_| rng.gen_range(0..calls))
        .collect();
    if calls == 0 {
        println!("  {point}: a clean run makes no call, so no random point below it");
    }
    // Beyond the last call of a clean run.
    ns.push(calls);
    let mut fired_runs = 0;
    for (i, &n) in ns.iter().enumerate() {
        let what = format!("{point} failing after {n} of {calls} calls (seed {seed})");
        let out = dir.join(format!("fault{i}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("_SUCCESS"), "{}\n").unwrap();
        let (status, stderr) = run_with(dir, &out, &fault_spec(point, n), &[], &what);
        let passed = calls_logged(&stderr, point);
        if fired(&stderr, point) {
            fired_runs += 1;
            assert_eq!(passed, n, "{what}: fired after {passed} calls: {stderr}");
            assert_eq!(status.code(), Some(1), "{what}: {stderr}");
            let error = error_line(&stderr).unwrap_or_else(|| panic!("{what}: no error: {stderr}"));
            assert!(error.contains(&injected(point)), "{what}: {stderr}");
            assert!(
                error.contains("sink file "),
                "{what}: the error names the file: {stderr}"
            );
            assert!(
                !out.join("_SUCCESS").exists(),
                "{what}: _SUCCESS after a failed sink"
            );
        } else {
            assert!(passed <= n, "{what}: {passed} calls and no fault: {stderr}");
            if n < calls {
                println!("  {what}: this run made only {passed} calls, the fault did not fire");
            }
            assert!(status.success(), "{what}: {stderr}");
            assert!(!stderr.contains(&injected(point)), "{what}: {stderr}");
            assert!(out.join("_SUCCESS").exists(), "{what}");
            assert_eq!(lines(&out), clean_lines, "{what}: changelog lengths differ");
            assert!(
                contents(&out) == clean,
                "{what}: tables differ from the clean run"
            );
        }
    }
    println!(
        "  {point}: {fired_runs} of {} runs failed at the fault",
        ns.len()
    );
}

#[test]
fn file_sink_write_fails_once_at_a_random_point() {
    file_point_fails_once("sink::file::write");
}

#[test]
fn file_sink_flush_fails_once_at_a_random_point() {
    file_point_fails_once("sink::file::flush");
}

/// File mode writes no `_progress.json` (only live mode's resumable sink does): the point is
/// never reached and the run is clean.
#[test]
fn file_sink_progress_fails_once_at_a_random_point() {
    file_point_fails_once("sink::file::progress");
}

/// Each INSERT of the ClickHouse sink (one table of one batch) fails once at a random point:
/// the sink retries it (the default retry starts after 100 ms), the run exits 0, and
/// ClickHouse holds exactly the tables of the file sink, which equal a clean run's.
#[test]
fn clickhouse_insert_fails_once_and_the_sink_recovers() {
    let Some(url) = clickhouse_url() else { return };
    let point = "sink::clickhouse::insert";
    let seed = seed(point);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir);
    let (clean, _, _) = clean_run(dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for i in 0..POINTS {
        // Every table but `suppressed_persons` has rows, so the final batch alone makes at
        // least 6 INSERTs: a point below 6 always fires.
        let n: usize = rng.gen_range(0..6);
        let what = format!("{point} failing after {n} calls (seed {seed})");
        let db = format!("adflow_faults_{}_{i}", std::process::id());
        let out = dir.join(format!("ch{i}"));
        let sink = vec![
            "--sink".to_string(),
            format!("clickhouse={url}?database={db}"),
        ];
        let (status, stderr) = run_with(dir, &out, &fault_spec(point, n), &sink, &what);
        assert!(
            status.success(),
            "{what}: the sink did not recover: {stderr}"
        );
        assert!(
            fired(&stderr, point),
            "{what}: the fail point did not fire: {stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("retrying") && l.contains(&injected(point))),
            "{what}: no retry of the injected fault: {stderr}"
        );
        assert!(out.join("_SUCCESS").exists(), "{what}");
        assert!(
            contents(&out) == clean,
            "{what}: file tables differ from the clean run"
        );
        assert_clickhouse_equals_files(&rt, &url, &db, &out, &format!("{what}: "));
        let cfg = adflow_clickhouse::ClickHouseConfig::new(url.clone(), db.clone());
        let drop = format!("DROP DATABASE IF EXISTS {db}");
        rt.block_on(cfg.client().query(&drop).execute())
            .unwrap_or_else(|e| panic!("{drop}: {e}"));
    }
}

/// Live mode (`adflow run --kafka`, 2 workers, `--exit-when-idle`): `point` fails once after
/// `n` calls, `n` drawn `points` times from `range` (a clean live run of the data set makes
/// about 40 writes and 18 flushes, each with a progress record; the counts vary with timing).
/// A run in which it fired: exit 1 with the injected error, within the limit. One in which it
/// did not (the run made at most `n` calls): exit 0 with the spec's tables. Either way a
/// restart without fail points ends with exactly the spec's tables: nothing lost, nothing
/// counted twice.
fn live_point_fails_once(point: &str, range: std::ops::Range<usize>, points: usize) {
    let Some(brokers) = brokers() else { return };
    let seed = seed(point);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    live_setup(dir);
    let want = expected(dir);
    for i in 0..points {
        let n = rng.gen_range(range.clone());
        let what = format!("live: {point} failing after {n} calls (seed {seed})");
        let prefix = topic_prefix(&format!("fault{i}"));
        ok(&mut produce(dir, &brokers, &prefix, None));
        let out = format!("live{i}");
        let run = || {
            let mut c = run_kafka(dir, &brokers, &prefix, &out);
            c.args(["--exit-when-idle", "4"]);
            c
        };
        let log = dir.join(format!("{out}.stderr"));
        let (status, stderr) = finish(run(), Some(&fault_spec(point, n)), &log, &what);
        let passed = calls_logged(&stderr, point);
        if fired(&stderr, point) {
            assert_eq!(passed, n, "{what}: fired after {passed} calls: {stderr}");
            assert_eq!(status.code(), Some(1), "{what}: {stderr}");
            let error = error_line(&stderr).unwrap_or_else(|| panic!("{what}: no error: {stderr}"));
            assert!(error.contains(&injected(point)), "{what}: {stderr}");
        } else {
            println!("  {what}: this run made only {passed} calls, the fault did not fire");
            assert!(passed <= n, "{what}: {passed} calls and no fault: {stderr}");
            assert!(status.success(), "{what}: {stderr}");
            assert_same(&want, &contents(&dir.join(&out)));
        }
        let log = dir.join(format!("{out}.restart.stderr"));
        let (status, stderr) = finish(run(), None, &log, &format!("{what}, restarted"));
        assert!(status.success(), "{what}: the restart failed: {stderr}");
        assert_same(&want, &contents(&dir.join(&out)));
    }
}

#[test]
fn live_file_sink_write_fails_once_and_the_restart_is_exact() {
    live_point_fails_once("sink::file::write", 0..40, 2);
}

#[test]
fn live_file_sink_flush_fails_once_and_the_restart_is_exact() {
    live_point_fails_once("sink::file::flush", 0..16, 1);
}

#[test]
fn live_file_sink_progress_fails_once_and_the_restart_is_exact() {
    live_point_fails_once("sink::file::progress", 0..16, 1);
}

#[test]
fn live_dead_letter_sink_write_fails_once_and_the_restart_is_exact() {
    live_point_fails_once("sink::dead_letters::write", 0..40, 1);
}
