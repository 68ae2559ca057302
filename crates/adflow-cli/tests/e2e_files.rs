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
