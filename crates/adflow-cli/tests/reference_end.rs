//! `common::reference_contents` (the reference's tables, in the form the live-mode tests compare)
//! against the binary's file mode over the live-mode tests' data set: without an end watermark
//! both end event time at the largest ts, so the contents must be identical. And the end
//! watermark against the engine: a file whose last event lies days after the data set moves
//! the engine's event time there, as a caught-up live run's wall clock does, so the engine's
//! tables must be the reference's with that end watermark (plus the one row of the extra
//! event). No servers needed.

mod common;

use common::{adflow, contents, generate_and_run_files, ok, reference_contents};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

/// A readable account of how two contents differ (empty when they agree).
fn differences(
    expected: &BTreeMap<String, BTreeMap<String, i64>>,
    actual: &BTreeMap<String, BTreeMap<String, i64>>,
) -> String {
    let mut report = String::new();
    let empty = BTreeMap::new();
    let tables: std::collections::BTreeSet<&String> =
        expected.keys().chain(actual.keys()).collect();
    for t in tables {
        let (e, a) = (
            expected.get(t).unwrap_or(&empty),
            actual.get(t).unwrap_or(&empty),
        );
        let missing: Vec<_> = e.iter().filter(|(k, v)| a.get(*k) != Some(v)).collect();
        let extra: Vec<_> = a.iter().filter(|(k, v)| e.get(*k) != Some(v)).collect();
        if missing.is_empty() && extra.is_empty() {
            continue;
        }
        report += &format!(
            "{t}: expected {} rows, actual {}; {} missing, {} extra\n",
            e.len(),
            a.len(),
            missing.len(),
            extra.len()
        );
        for (label, rows) in [("missing", &missing), ("extra", &extra)] {
            for (row, n) in rows.iter().take(5) {
                report += &format!("  {label} (x{n}): {row}\n");
            }
        }
    }
    report
}

#[test]
fn reference_contents_match_the_file_mode_output() {
    let dir = tempfile::tempdir().unwrap();
    generate_and_run_files(dir.path(), CONFIG);
    let expected = reference_contents(&dir.path().join("in"), &dir.path().join("cfg.toml"), None);
    let actual = contents(&dir.path().join("file"));
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>()
    );
    for table in ["attribution", "order_status", "anomalies", "dead_letters"] {
        assert!(!expected[table].is_empty(), "{table} is empty");
    }
    let d = differences(&expected, &actual);
    assert!(d.is_empty(), "reference vs file mode:\n{d}");
}

/// The live-mode tests' settings (kafka_run.rs).
const CONFIG: &str =
    "allowed_lateness = \"1s\"\n[kafka]\nidle_timeout = \"1s\"\ncommit_interval = \"200ms\"\n";

const DAY: i64 = 86_400_000;

/// Copies the data set `dir/in` to `dir/far` with one more event, an impression of campaign
/// `cFAR` at `far_ts`, and runs file mode over it into `dir/far_out` with `dir/cfg.toml`: event
/// time ends at `far_ts`. Returns the output's contents without the `cFAR` metrics row.
fn run_with_end(dir: &Path, far_ts: i64) -> BTreeMap<String, BTreeMap<String, i64>> {
    let (from, to) = (dir.join("in"), dir.join("far"));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
    let mut ads = std::fs::OpenOptions::new()
        .append(true)
        .open(to.join("ad_events.jsonl"))
        .unwrap();
    writeln!(
        ads,
        "{{\"type\":\"impression\",\"event_id\":\"far-1\",\"ts\":{far_ts},\"campaign_id\":\"cFAR\",\"channel\":\"baidu\",\"device_id\":\"dfar\"}}"
    )
    .unwrap();
    drop(ads);
    let out = dir.join("far_out");
    let _ = std::fs::remove_dir_all(&out);
    ok(adflow()
        .args(["run", "--workers", "2", "--input"])
        .arg(&to)
        .arg("--output")
        .arg(&out)
        .arg("--config")
        .arg(dir.join("cfg.toml")));
    let mut c = contents(&out);
    let metrics = c.get_mut("campaign_metrics").unwrap();
    let far: Vec<String> = metrics
        .keys()
        .filter(|k| k.contains("\"campaign_id\":\"cFAR\""))
        .cloned()
        .collect();
    assert_eq!(far.len(), 1, "{far:?}");
    metrics.remove(&far[0]);
    c
}

/// Rows per table.
fn counts(c: &BTreeMap<String, BTreeMap<String, i64>>) -> BTreeMap<&str, usize> {
    c.iter().map(|(t, rows)| (t.as_str(), rows.len())).collect()
}

#[test]
fn end_watermark_matches_the_engine_run_to_a_later_event_time() {
    let dir = tempfile::tempdir().unwrap();
    generate_and_run_files(dir.path(), CONFIG);
    let (input, cfg) = (dir.path().join("in"), dir.path().join("cfg.toml"));
    // The generated period is [start, start + 2 days); end 5 days after it, within the state
    // retention (14 days): every open stall after a last track and every replenishment of a
    // signing has fallen due.
    let end = adflow_gen::DEFAULT_START_MS + 7 * DAY;
    let expected = reference_contents(&input, &cfg, Some(end));
    let file = reference_contents(&input, &cfg, None);
    let (e, f) = (counts(&expected), counts(&file));
    assert!(e["anomalies"] > f["anomalies"], "{e:?} vs {f:?}");
    assert!(
        e["suppressed_persons"] > f["suppressed_persons"],
        "{e:?} vs {f:?}"
    );
    assert!(e["triggers"] > f["triggers"], "{e:?} vs {f:?}");
    for t in [
        "attribution",
        "order_status",
        "campaign_metrics",
        "dead_letters",
    ] {
        assert_eq!(expected[t], file[t], "{t}");
    }
    let actual = run_with_end(dir.path(), end);
    let d = differences(&expected, &actual);
    assert!(d.is_empty(), "reference (end {end}) vs engine:\n{d}");
}

#[test]
fn far_future_end_watermark_matches_the_engine_when_the_retention_covers_it() {
    // Two months after the data: beyond the default state retention, where the engine expires
    // state (see the crate docs of adflow-reference); with a retention covering the span, the
    // engine's tables are the reference's: timers fire, nothing else changes.
    let dir = tempfile::tempdir().unwrap();
    generate_and_run_files(
        dir.path(),
        &format!("state_retention = \"3650d\"\n{CONFIG}"),
    );
    let (input, cfg) = (dir.path().join("in"), dir.path().join("cfg.toml"));
    let end = adflow_gen::DEFAULT_START_MS + 62 * DAY;
    let expected = reference_contents(&input, &cfg, Some(end));
    let actual = run_with_end(dir.path(), end);
    let d = differences(&expected, &actual);
    assert!(d.is_empty(), "reference (end {end}) vs engine:\n{d}");
}
