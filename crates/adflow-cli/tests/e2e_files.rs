//! End-to-end, file mode: `adflow generate` + `adflow run`, compared with the independent batch
//! reference (`adflow-reference`) table by table and row by row; the same final tables with 1
//! and 2 workers and with every input file's lines shuffled.

mod common;

use adflow_reference::{compute, diff, read_changelog_dir, RefConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::process::Command;

fn generate(dir: &Path, seed: u64, users: u32, days: u32) {
    let mut args = adflow_gen::GenerateArgs::with_output(dir);
    args.seed = seed;
    args.users = users;
    args.days = days;
    adflow_gen::generate(&args).expect("generate");
}

/// `adflow run --input INPUT --output OUTPUT` (warnings only, no backtraces).
fn adflow_run(input: &Path, output: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_adflow"));
    c.args(["run", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .env("ADFLOW_LOG", "warn")
        .env("RUST_BACKTRACE", "0");
    c
}

fn run(input: &Path, output: &Path, workers: usize) {
    let st = adflow_run(input, output)
        .args(["--workers", &workers.to_string()])
        .status()
        .expect("spawn adflow");
    assert!(st.success(), "adflow run failed: {st}");
}

fn shuffle_dir(from: &Path, to: &Path, seed: u64) {
    std::fs::create_dir_all(to).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.shuffle(&mut rng);
        std::fs::write(to.join(p.file_name().unwrap()), lines.join("\n") + "\n").unwrap();
    }
}

#[test]
fn file_mode_matches_the_reference_for_1_and_2_workers_and_shuffled_input() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    generate(&input, 11, 250, 4);
    let expected = compute(&input, &RefConfig::default()).expect("reference");
    // The data set must exercise every table, or the comparison proves little.
    for (t, rows) in &expected {
        assert!(!rows.is_empty(), "generated data produces no {t} rows");
    }

    for workers in [1, 2] {
        let out = tmp.path().join(format!("out{workers}"));
        run(&input, &out, workers);
        let actual = read_changelog_dir(&out).expect("read output");
        if let Some(d) = diff(&expected, &actual) {
            panic!("--workers {workers} differs from the reference:\n{d}");
        }
    }

    let shuffled = tmp.path().join("shuffled");
    shuffle_dir(&input, &shuffled, 5);
    let expected_shuffled = compute(&shuffled, &RefConfig::default()).expect("reference");
    let out = tmp.path().join("out-shuffled");
    run(&shuffled, &out, 2);
    let actual = read_changelog_dir(&out).expect("read output");
    if let Some(d) = diff(&expected_shuffled, &actual) {
        panic!("shuffled input differs from the reference:\n{d}");
    }
    // Apart from dead-letter positions (lines moved), shuffling changes nothing.
    let mut a = expected.clone();
    let mut b = expected_shuffled.clone();
    a.remove(&adflow_model::Table::DeadLetters);
    b.remove(&adflow_model::Table::DeadLetters);
    assert_eq!(a, b);
}

/// A sink that fails (its file is `/dev/full`: every write is "no space left") on a 2-worker
/// run stops every worker: the run exits non-zero with the sink's error, never hangs (it used
/// to: worker 0 failed, the other waited for it forever).
#[test]
fn a_sink_error_with_two_workers_ends_the_run_with_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    generate(&input, 3, 200, 2);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("campaign_metrics.jsonl")).unwrap();
    let child = adflow_run(&input, &out)
        .args(["--workers", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn adflow");
    let (status, stderr) = common::wait_or_kill(
        child,
        std::time::Duration::from_secs(60),
        "adflow run after a sink error",
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // The error names the file.
    assert!(stderr.contains("campaign_metrics.jsonl"), "{stderr}");
}

/// `--workers 0` and an empty model list are refused with a clear message, not run silently.
#[test]
fn zero_workers_and_no_models_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = adflow_run(tmp.path(), &tmp.path().join("out"))
        .args(["--workers", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must be at least 1"), "{stderr}");

    std::fs::write(tmp.path().join("cfg.toml"), "models = []\n").unwrap();
    let out = adflow_run(tmp.path(), &tmp.path().join("out"))
        .arg("--config")
        .arg(tmp.path().join("cfg.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("models is empty"), "{stderr}");
}

/// A run that cannot read its input leaves the previous output as it was (it used to truncate
/// every table first), and `--input` naming a file says so.
#[test]
fn an_unreadable_input_leaves_the_previous_output_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    generate(&input, 3, 100, 1);
    let out = tmp.path().join("out");
    run(&input, &out, 2);
    let before: Vec<(String, Vec<u8>)> = {
        let mut v: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert!(before
        .iter()
        .any(|(n, b)| n == "campaign_metrics.jsonl" && !b.is_empty()));

    std::fs::remove_file(input.join("orders.jsonl")).unwrap();
    std::fs::create_dir(input.join("orders.jsonl")).unwrap();
    let res = adflow_run(&input, &out)
        .args(["--workers", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("orders.jsonl"), "{stderr}");
    for (name, bytes) in &before {
        let now = std::fs::read(out.join(name)).unwrap();
        assert!(
            &now == bytes,
            "{name} changed by the failed run: {} bytes before, {} after",
            bytes.len(),
            now.len()
        );
    }

    let res = adflow_run(&input.join("ad_events.jsonl"), &tmp.path().join("other"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a file"), "{stderr}");
}

/// A complete run writes `OUT/_SUCCESS`; a run stopped by SIGTERM exits 1, says its output is
/// partial, and leaves no `_SUCCESS` (it used to exit 143 at once with tables that looked
/// complete).
#[test]
fn sigterm_ends_a_file_run_as_partial_without_success_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    generate(&input, 5, 3000, 10);
    let out = tmp.path().join("out");
    // A small complete run first: the marker is there, then removed by the next run.
    let small = tmp.path().join("small");
    generate(&small, 5, 50, 1);
    run(&small, &out, 1);
    let marker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("_SUCCESS")).unwrap()).unwrap();
    assert!(marker["messages"].as_u64().unwrap() > 0, "{marker}");

    let child = adflow_run(&input, &out)
        .args(["--workers", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the run has started (its marker is gone), stop it.
    let started = std::time::Instant::now();
    while out.join("_SUCCESS").exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let res = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("partial"),
        "{stderr}"
    );
    assert!(!out.join("_SUCCESS").exists());
}

/// An event dated in 2099 is applied (file mode's event time then ends there), with a warning
/// that says so.
#[test]
fn a_far_future_event_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("ad_events.jsonl"),
        concat!(
            r#"{"type":"impression","event_id":"e1","ts":1717200000000,"campaign_id":"c","channel":"douyin","device_id":"d"}"#,
            "\n",
            r#"{"type":"impression","event_id":"e2","ts":4070908800000,"campaign_id":"c","channel":"douyin","device_id":"d"}"#,
            "\n"
        ),
    )
    .unwrap();
    let res = adflow_run(&input, &tmp.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(
        stderr.contains("more than a day in the future") && stderr.contains("4070908800000"),
        "{stderr}"
    );
}

/// Current rows of `table` in `out` (canonical JSON), each with its key fields.
fn current_keys(out: &Path, table: &str, key: &[&str]) -> Vec<(String, String)> {
    let all = common::contents(out);
    all[table]
        .iter()
        .filter(|(_, s)| **s > 0)
        .map(|(row, _)| {
            let v: serde_json::Value = serde_json::from_str(row).unwrap();
            let k = key
                .iter()
                .map(|f| v[*f].to_string())
                .collect::<Vec<_>>()
                .join("|");
            (k, row.clone())
        })
        .collect()
}

const TABLE_KEYS: [(&str, &[&str]); 6] = [
    ("anomalies", &["kind", "key", "opened_ts"]),
    ("order_status", &["order_id"]),
    ("campaign_metrics", &["campaign_id", "channel", "hour"]),
    ("attribution", &["order_id", "click_event_id", "model"]),
    ("triggers", &["trigger_id"]),
    ("suppressed_persons", &["person_id", "reason"]),
];

/// A stream longer than the state retention (24 days against 14): expiry never duplicates a
/// row, so every table's keys are unique among its current rows (before the fix, parcel
/// intervals got a second current row with a null order once their order expired).
#[test]
fn a_stream_longer_than_the_retention_keeps_every_tables_keys_unique() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    generate(&input, 3, 300, 24);
    let out = tmp.path().join("out");
    run(&input, &out, 2);
    for (table, key) in TABLE_KEYS {
        let rows = current_keys(&out, table, key);
        assert!(!rows.is_empty(), "{table} is empty");
        let mut seen = std::collections::BTreeMap::new();
        for (k, row) in rows {
            if let Some(prev) = seen.insert(k.clone(), row.clone()) {
                panic!("{table}: key {k} has two current rows:\n{prev}\n{row}");
            }
        }
    }
}

/// One valid event 15 days after the rest moves event time past the retention of every window:
/// the `cpc_spike` and `no_impressions` rows stay exactly as they were (before the fix, their
/// baselines expired first and every one of them was retracted).
#[test]
fn expiry_leaves_emitted_window_anomalies_as_they_were() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    generate(&input, 11, 250, 4);
    let windows = |out: &Path| -> Vec<String> {
        current_keys(out, "anomalies", &["kind"])
            .into_iter()
            .filter(|(k, _)| k.contains("cpc_spike") || k.contains("no_impressions"))
            .map(|(_, r)| r)
            .collect()
    };
    let before = tmp.path().join("before");
    run(&input, &before, 2);
    let expected = windows(&before);
    assert!(
        expected.iter().any(|r| r.contains("cpc_spike"))
            && expected.iter().any(|r| r.contains("no_impressions")),
        "the data set has no window anomalies: {expected:?}"
    );
    let ads = input.join("ad_events.jsonl");
    let max_ts = std::fs::read_to_string(&ads)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["ts"].as_i64())
        .max()
        .unwrap();
    let late = format!(
        r#"{{"type":"impression","event_id":"far-later","ts":{},"campaign_id":"c-later","channel":"douyin","device_id":"d-later"}}"#,
        max_ts + 15 * 86_400_000
    );
    let mut text = std::fs::read_to_string(&ads).unwrap();
    text.push_str(&late);
    text.push('\n');
    std::fs::write(&ads, text).unwrap();
    let after = tmp.path().join("after");
    run(&input, &after, 2);
    assert_eq!(windows(&after), expected);
}

/// Amounts above the documented maximum are dead letters naming it; sums never wrap.
#[test]
fn absurd_amounts_are_dead_letters_and_sums_do_not_wrap() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let ts = 1_717_200_000_000i64;
    let mut orders = String::new();
    for (i, amount) in [
        "\"50000000000000000.00\"",
        "\"50000000000000000.00\"",
        "\"10000000000.00\"",
        "10000000000",
    ]
    .iter()
    .enumerate()
    {
        orders.push_str(&format!(
            r#"{{"type":"order","event_id":"o{i}","ts":{},"order_id":"o{i}","user_id":"u1","amount":{amount}}}"#,
            ts + i as i64
        ));
        orders.push('\n');
    }
    std::fs::write(input.join("orders.jsonl"), orders).unwrap();
    std::fs::write(
        input.join("ad_events.jsonl"),
        format!(
            r#"{{"type":"click","event_id":"c1","ts":{},"campaign_id":"c","channel":"douyin","device_id":"d1","user_id":"u1","cost":"1e11"}}"#,
            ts - 1000
        ) + "\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    run(&input, &out, 2);
    let all = common::contents(&out);
    let dead: Vec<&String> = all["dead_letters"].keys().collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        dead.iter()
            .all(|r| r.contains("above the maximum of 10000000000.00 CNY")),
        "{dead:?}"
    );
    let status: Vec<&String> = all["order_status"].keys().collect();
    assert_eq!(status.len(), 2, "{status:?}");
    assert!(
        status
            .iter()
            .all(|r| r.contains(r#""amount_fen":1000000000000"#)),
        "{status:?}"
    );
}
