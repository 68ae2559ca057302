//! `[actions]` end to end: trigger webhooks against a loopback receiver (signed, each
//! `trigger_id` once, also across a SIGKILL and a restart of a live run), retries and the
//! failed queue with `adflow actions replay-failed`, WeCom alert payloads, and the dry run of
//! `pause_campaign`.

mod common;

use common::{adflow, ok, wait_or_kill};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "test-webhook-secret";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    id: String,
    attempt: u32,
    action: String,
    body: serde_json::Value,
}

/// A loopback webhook receiver: answers every POST with `status` (and `answer` as its body)
/// after `delay_ms`, checks the HMAC signature when `signed`, and records each request.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    bad_signatures: Arc<AtomicU64>,
}

impl Receiver {
    fn start(signed: bool, answer: &'static str) -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", server.server_addr().to_ip().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let bad_signatures = Arc::new(AtomicU64::new(0));
        let server = Arc::new(server);
        for _ in 0..8 {
            let (server, got, status, delay_ms, bad) = (
                server.clone(),
                got.clone(),
                status.clone(),
                delay_ms.clone(),
                bad_signatures.clone(),
            );
            std::thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    let mut body = Vec::new();
                    req.as_reader().read_to_end(&mut body).unwrap();
                    let header = |name: &str| {
                        req.headers()
                            .iter()
                            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                            .map(|h| h.value.as_str().to_string())
                    };
                    if signed {
                        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                        mac.update(&body);
                        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                        if header("X-Adflow-Signature").as_deref() != Some(want.as_str()) {
                            bad.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(delay_ms.load(Ordering::SeqCst)));
                    let code = status.load(Ordering::SeqCst);
                    got.lock().unwrap().push(Got {
                        id: header("X-Adflow-Delivery-Id").unwrap_or_default(),
                        attempt: header("X-Adflow-Attempt")
                            .and_then(|a| a.parse().ok())
                            .unwrap_or(0),
                        action: header("X-Adflow-Action").unwrap_or_default(),
                        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                    });
                    let _ = req
                        .respond(tiny_http::Response::from_string(answer).with_status_code(code));
                }
            });
        }
        Receiver {
            url,
            got,
            status,
            delay_ms,
            bad_signatures,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Fails unless every id was called once — or, when a call failed in transit (a reset
    /// connection on a loaded machine) and was retried as a network error, with attempts
    /// 1, 2, … in order; at most 3 such retries in all.
    fn assert_each_once(&self) {
        let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for g in self.got() {
            attempts.entry(g.id).or_default().push(g.attempt);
        }
        let mut retried = 0;
        for (id, a) in &attempts {
            assert_eq!(*a, (1..=a.len() as u32).collect::<Vec<_>>(), "{id}: {a:?}");
            retried += a.len() - 1;
        }
        assert!(retried <= 3, "{retried} calls retried: {attempts:?}");
    }

    /// Requests per delivery id.
    fn per_id(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for g in self.got() {
            *m.entry(g.id).or_insert(0) += 1;
        }
        m
    }
}

/// The rows a changelog `table` of `out` ever inserted, by `id` (without `version` and
/// `sign`), and the ids whose rows' signs sum to zero (retracted for good).
fn inserted(
    out: &Path,
    table: &str,
    id: impl Fn(&serde_json::Value) -> String,
) -> (BTreeMap<String, Vec<serde_json::Value>>, BTreeSet<String>) {
    let text = std::fs::read_to_string(out.join(format!("{table}.jsonl"))).unwrap();
    let mut rows: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    for l in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = id(&v);
        let m = v.as_object_mut().unwrap();
        let sign = m.remove("sign").unwrap().as_i64().unwrap();
        m.remove("version");
        *sums.entry(key.clone()).or_insert(0) += sign;
        if sign > 0 {
            rows.entry(key).or_default().push(v);
        }
    }
    let gone = sums
        .into_iter()
        .filter(|(_, s)| *s == 0)
        .map(|(k, _)| k)
        .collect();
    (rows, gone)
}

/// The triggers a changelog directory ever inserted, by `trigger_id`, and how many of them
/// it retracted for good.
fn triggers(out: &Path) -> (BTreeMap<String, Vec<serde_json::Value>>, usize) {
    let (rows, gone) = inserted(out, "triggers", |v| {
        v["trigger_id"].as_str().unwrap().to_string()
    });
    (rows, gone.len())
}

/// `adflow actions status` of `outbox`: action kind → state → count.
fn status(outbox: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    let out = adflow()
        .args(["actions", "status", "--outbox"])
        .arg(outbox)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `adflow actions replay-failed` with the test's settings.
fn replay_failed(dir: &Path) -> std::process::Output {
    adflow()
        .args(["actions", "replay-failed", "--config"])
        .arg(dir.join("cfg.toml"))
        .env("ADFLOW_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap()
}

fn gen(dir: &Path) {
    ok(adflow()
        .args([
            "generate", "--seed", "3", "--users", "1000", "--days", "7", "--output",
        ])
        .arg(dir.join("in")));
}

fn run_files(dir: &Path, out: &str) -> (std::process::ExitStatus, String) {
    // Its stderr goes to a file: a receiver that is down makes it log every retry, more than
    // a pipe holds.
    let log = dir.join(format!("{out}.log"));
    let child = adflow()
        .args(["run", "--workers", "2", "--input"])
        .arg(dir.join("in"))
        .arg("--output")
        .arg(dir.join(out))
        .arg("--config")
        .arg(dir.join("cfg.toml"))
        .env("ADFLOW_WEBHOOK_SECRET", SECRET)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (st, _) = wait_or_kill(child, Duration::from_secs(180), "adflow run");
    (st, std::fs::read_to_string(&log).unwrap())
}

/// File mode: every trigger the run inserted reaches the receiver once, signed, with the
/// `triggers` row as its body; a second run over the same data and outbox sends nothing.
#[test]
fn file_mode_sends_each_trigger_once_and_a_rerun_sends_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    gen(dir);
    let rx = Receiver::start(true, "ok");
    std::fs::write(
        dir.join("cfg.toml"),
        format!(
            "[actions]\noutbox = \"{}\"\n[actions.webhook]\nurl = \"{}\"\n",
            dir.join("outbox").display(),
            rx.url
        ),
    )
    .unwrap();
    let (st, err) = run_files(dir, "out");
    assert!(st.success(), "{err}");
    let (rows, gone) = triggers(&dir.join("out"));
    let ids: BTreeSet<String> = rows.keys().cloned().collect();
    assert!(ids.len() > 500, "the data set has triggers: {}", ids.len());
    assert_eq!(
        gone, 0,
        "file mode retracts no trigger of this data set for good"
    );
    let per_id = rx.per_id();
    assert_eq!(per_id.keys().cloned().collect::<BTreeSet<_>>(), ids);
    rx.assert_each_once();
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    // The body is the row (the one current when it was sent: a row replaced at the same
    // version before the call went out is sent as replaced).
    for g in rx.got() {
        assert_eq!(g.action, "trigger");
        assert!(rows[&g.id].contains(&g.body), "{}: {}", g.id, g.body);
    }
    assert_eq!(
        status(&dir.join("outbox"))["trigger"]["delivered"],
        ids.len() as u64
    );

    let before = rx.got().len();
    let (st, err) = run_files(dir, "out2");
    assert!(st.success(), "{err}");
    assert_eq!(rx.got().len(), before, "a rerun sends nothing again");
}

/// A receiver that answers 503: each trigger is tried 1 + `retries` times, then lands in the
/// failed queue; once the receiver is back, `replay-failed` delivers every one of them and the
/// queue is empty.
#[test]
fn a_receiver_that_is_down_gets_retries_then_replay_failed_drains_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    gen(dir);
    let rx = Receiver::start(true, "busy");
    rx.status.store(503, Ordering::SeqCst);
    std::fs::write(
        dir.join("cfg.toml"),
        format!(
            "[actions]\noutbox = \"{}\"\nretries = 2\nretry_delay = \"20ms\"\nconcurrency = 8\n[actions.webhook]\nurl = \"{}\"\n",
            dir.join("outbox").display(),
            rx.url
        ),
    )
    .unwrap();
    // This run serves /metrics and lingers: its webhook counters are scraped at the end.
    let port = common::free_port();
    let log = dir.join("out.log");
    let child = adflow()
        .args(["run", "--workers", "2", "--input"])
        .arg(dir.join("in"))
        .arg("--output")
        .arg(dir.join("out"))
        .arg("--config")
        .arg(dir.join("cfg.toml"))
        .args([
            "--http",
            &format!("127.0.0.1:{port}"),
            "--http-linger",
            "60",
        ])
        .env("ADFLOW_WEBHOOK_SECRET", SECRET)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !dir.join("out/_SUCCESS").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the run did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, text) = common::http_get(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
    assert_eq!(code, 200);
    let (st, _) = common::end_linger(child, "adflow run --http");
    assert!(st.success(), "{}", std::fs::read_to_string(&log).unwrap());
    let (rows, gone) = triggers(&dir.join("out"));
    assert_eq!(gone, 0);
    let ids: BTreeSet<String> = rows.keys().cloned().collect();
    let n = ids.len() as f64;
    let (_, m) = common::parse_metrics(&text);
    let trigger = [("action", "trigger")];
    assert_eq!(
        common::sample(&m, "adflow_webhook_retries_total", &trigger),
        2.0 * n
    );
    assert_eq!(
        common::sample(&m, "adflow_webhook_failures_total", &trigger),
        n
    );
    assert_eq!(
        common::sample(
            &m,
            "adflow_webhook_delivery_duration_seconds_count",
            &trigger
        ),
        3.0 * n
    );
    assert_eq!(
        common::sample(&m, "adflow_actions_outbox_pending", &trigger),
        0.0
    );
    assert!(
        text.contains(
            "adflow_webhook_delivery_duration_seconds_bucket{action=\"trigger\",le=\"3\"}"
        ),
        "a bucket at the 3 s alert threshold"
    );
    let per_id = rx.per_id();
    assert_eq!(per_id.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(
        per_id.values().all(|&n| n == 3),
        "1 + 2 retries each: {per_id:?}"
    );
    let s = status(&dir.join("outbox"));
    assert_eq!(s["trigger"]["failed"], ids.len() as u64);
    assert_eq!(s["trigger"]["delivered"], 0);

    // Still down: replay-failed tries again and reports failure.
    let out = replay_failed(dir);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rx.got().len(), 6 * ids.len());

    rx.status.store(200, Ordering::SeqCst);
    let out = replay_failed(dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} tried, {} delivered, 0 still failed",
            ids.len(),
            ids.len()
        )),
        "{stderr}"
    );
    let s = status(&dir.join("outbox"));
    assert_eq!(s["trigger"]["failed"], 0);
    assert_eq!(s["trigger"]["delivered"], ids.len() as u64);
    // Each id was sent once more (attempt 7: 3 + 3 failed before), unless a call failed in
    // transit (a reset connection on this loaded machine), which is retried like any network
    // error: then that id's delivered attempt is 8. Every request the receiver got is an
    // attempt `deliveries.jsonl` recorded (a call lost before it reached the receiver too).
    let got = rx.got();
    let extra = got.len() - 6 * ids.len();
    assert!(
        (ids.len()..=ids.len() + 3).contains(&extra),
        "{extra} calls for {} ids",
        ids.len()
    );
    let mut last: BTreeMap<String, u32> = BTreeMap::new();
    for g in &got {
        let a = last.entry(g.id.clone()).or_insert(0);
        *a = (*a).max(g.attempt);
    }
    assert_eq!(last.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(last.values().all(|&a| a == 7 || a == 8), "{last:?}");
    let attempts = std::fs::read_to_string(dir.join("outbox/deliveries.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"outcome\":\"attempt\""))
        .count();
    assert!(
        (got.len()..=got.len() + 3).contains(&attempts),
        "{attempts} attempts recorded, {} received",
        got.len()
    );
    // Nothing left: a second replay tries nothing.
    let out = replay_failed(dir);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 tried"));
    assert_eq!(rx.got().len(), got.len());
}

/// Alerts to a WeCom robot: each `cpc_spike` / `no_impressions` interval once, as the robot's
/// `markdown` message JSON; a count alert when open stalled parcels rise above the threshold;
/// pauses are a dry run (recorded, never sent).
#[test]
fn wecom_alerts_match_the_robot_format_and_pauses_are_a_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    gen(dir);
    let rx = Receiver::start(false, "{\"errcode\":0,\"errmsg\":\"ok\"}");
    std::fs::write(
        dir.join("cfg.toml"),
        format!(
            "[actions]\noutbox = \"{}\"\n[actions.alerts]\ntarget = \"wecom\"\nurl = \"{}?key=robot\"\nkinds = [\"cpc_spike\", \"no_impressions\", \"delivery_exception\"]\nstalled_parcels_above = 3\ndelivery_exceptions_above = 0\n[actions.pause_campaign]\n",
            dir.join("outbox").display(),
            rx.url
        ),
    )
    .unwrap();
    let (st, err) = run_files(dir, "out");
    assert!(st.success(), "{err}");
    // The intervals of the alerted kinds, by id: every one still present is alerted; one
    // retracted for good is alerted or cancelled, depending on whether its call went out first.
    let id = |v: &serde_json::Value| {
        format!(
            "{}:{}:{}",
            v["kind"].as_str().unwrap(),
            v["key"].as_str().unwrap(),
            v["opened_ts"]
        )
    };
    let (rows, gone) = inserted(&dir.join("out"), "anomalies", id);
    let of_kinds = |kinds: &[&str], prefix: &str| -> (BTreeSet<String>, BTreeSet<String>) {
        let all: BTreeSet<String> = rows
            .keys()
            .filter(|k| kinds.iter().any(|kind| k.starts_with(&format!("{kind}:"))))
            .cloned()
            .collect();
        let current = all
            .iter()
            .filter(|k| !gone.contains(*k))
            .map(|k| format!("{prefix}{k}"))
            .collect();
        (
            all.iter().map(|k| format!("{prefix}{k}")).collect(),
            current,
        )
    };
    let (intervals, current) = of_kinds(
        &["cpc_spike", "no_impressions", "delivery_exception"],
        "alert:",
    );
    let (pauses, current_pauses) = of_kinds(&["cpc_spike", "no_impressions"], "pause:");
    assert!(!pauses.is_empty(), "the data set has campaign anomalies");
    let got = rx.got();
    let per_id = rx.per_id();
    rx.assert_each_once();
    let counted: BTreeSet<String> = per_id
        .keys()
        .filter(|k| k.starts_with("alert:stalled_parcel:above:3:"))
        .cloned()
        .collect();
    assert!(
        !counted.is_empty(),
        "more than 3 stalled parcels were open at once"
    );
    let per_interval: BTreeSet<String> = per_id
        .keys()
        .filter(|k| !counted.contains(*k))
        .cloned()
        .collect();
    assert!(per_interval.is_subset(&intervals), "{per_interval:?}");
    assert!(current.is_subset(&per_interval), "{current:?}");
    for g in &got {
        assert_eq!(g.action, "alert");
        let m = g.body.as_object().unwrap();
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m["msgtype"], "markdown");
        let content = m["markdown"]["content"].as_str().unwrap();
        assert!(content.len() <= 4096);
        assert!(content.starts_with("### adflow alert: "), "{content}");
        assert!(
            content.ends_with(&format!("> alert id: {}", g.id)),
            "{content}"
        );
    }
    let s = status(&dir.join("outbox"));
    assert_eq!(s["alert"]["delivered"], per_id.len() as u64);
    assert_eq!(
        s["alert"]["delivered"] + s["alert"].get("cancelled").copied().unwrap_or(0),
        intervals.len() as u64 + counted.len() as u64
    );
    // A dry run is recorded when decided: every interval that was ever reported.
    assert_eq!(s["pause_campaign"]["dry_run"], pauses.len() as u64);
    assert!(current_pauses.len() <= pauses.len());
    assert_eq!(s["pause_campaign"]["delivered"], 0);
    assert_eq!(s["pause_campaign"]["pending"], 0);
}

/// Live mode: a run SIGKILLed while it delivers triggers to a slow receiver, then restarted,
/// delivers every trigger the tables hold. A receiver that deduplicates by
/// `X-Adflow-Delivery-Id` processes each exactly once; an id sent twice is only one whose
/// call was cut by the kill (a later attempt number), at most one per delivery thread.
#[test]
fn live_run_killed_during_delivery_delivers_every_trigger_once() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rx = Receiver::start(true, "ok");
    rx.delay_ms.store(15, Ordering::SeqCst);
    let config = format!(
        "{}[actions]\noutbox = \"{}\"\nconcurrency = 2\n[actions.webhook]\nurl = \"{}\"\n",
        common::LIVE_CONFIG,
        dir.join("outbox").display(),
        rx.url
    );
    gen(dir);
    std::fs::write(dir.join("cfg.toml"), &config).unwrap();
    let prefix = common::topic_prefix("actions");
    ok(&mut common::produce(dir, &brokers, &prefix, None));
    let expected: BTreeSet<String> = common::expected(dir)["triggers"]
        .keys()
        .map(|row| {
            let v: serde_json::Value = serde_json::from_str(row).unwrap();
            v["trigger_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(expected.len() > 500, "{}", expected.len());

    let mut child = common::run_kafka(dir, &brokers, &prefix, "out")
        .env("ADFLOW_WEBHOOK_SECRET", SECRET)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while rx.got().len() < expected.len() / 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no deliveries"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = rx.got().len();
    assert!(before < expected.len(), "killed during delivery");

    let child = common::run_kafka(dir, &brokers, &prefix, "out")
        .args(["--exit-when-idle", "3"])
        .env("ADFLOW_WEBHOOK_SECRET", SECRET)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (st, err) = wait_or_kill(child, Duration::from_secs(240), "the restarted run");
    assert!(st.success(), "{err}");
    common::assert_same(&common::expected(dir), &common::contents(&dir.join("out")));

    let per_id = rx.per_id();
    let delivered: BTreeSet<String> = per_id.keys().cloned().collect();
    assert_eq!(
        delivered, expected,
        "every trigger of the tables, and nothing else"
    );
    let twice: Vec<&String> = per_id
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(k, _)| k)
        .collect();
    eprintln!(
        "{} triggers; {before} calls before the kill; {} ids sent twice",
        expected.len(),
        twice.len()
    );
    assert!(per_id.values().all(|&n| n <= 2), "{per_id:?}");
    assert!(
        twice.len() <= 2,
        "at most one cut call per delivery thread: {twice:?}"
    );
    for id in &twice {
        let attempts: Vec<u32> = rx
            .got()
            .iter()
            .filter(|g| &&g.id == id)
            .map(|g| g.attempt)
            .collect();
        assert_eq!(
            attempts,
            vec![1, 2],
            "{id}: a redelivery carries the next attempt number"
        );
    }
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    let s = status(&dir.join("outbox"));
    assert_eq!(s["trigger"]["delivered"], expected.len() as u64);
    assert_eq!(s["trigger"].get("pending").copied().unwrap_or(0), 0);
}
