//! `--sink redis=URL` against a real Redis server (`ADFLOW_REDIS_URL`, started by
//! `scripts/services/redis.sh start`): after `adflow run` over a generated data set with the
//! file sink and the Redis sink together, the Redis keys equal exactly the current
//! `suppressed_persons` and the open orders of the current `order_status` computed from the
//! file changelogs (which hold retractions of both). Without the variable these tests fail,
//! unless `ADFLOW_SKIP_SERVICE_TESTS=1`. The live-mode test also needs a broker
//! (`ADFLOW_KAFKA_BROKERS`): a consumer with both sinks is killed with SIGKILL mid-stream and
//! restarted; the keys then equal the tables of the resumed file changelogs.

mod common;

use adflow_model::{Change, OutputRow, Table};
use adflow_redis::redis;
use common::{
    adflow, brokers, live_setup, ok, produce, redis_url, run_kafka, topic_prefix, unique,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

type Keys = BTreeMap<String, BTreeMap<String, String>>;

/// The changelog `dir/<table>.jsonl` as rows with their summed signs, and how many of its
/// lines are retractions.
fn changelog(dir: &Path, table: Table) -> (BTreeMap<OutputRow, i64>, usize) {
    let text = std::fs::read_to_string(dir.join(format!("{}.jsonl", table.name()))).unwrap();
    let mut sums: BTreeMap<OutputRow, i64> = BTreeMap::new();
    let mut retractions = 0;
    for line in text.lines() {
        let c = Change::from_json_line(table, line).unwrap();
        if c.sign < 0 {
            retractions += 1;
        }
        *sums.entry(c.row).or_default() += c.sign;
    }
    (sums, retractions)
}

/// The keys the sink must hold for the file outputs in `dir` (docs/redis.md).
fn expected_keys(dir: &Path, prefix: &str) -> (Keys, Keys) {
    let mut suppressed: Keys = BTreeMap::new();
    for (row, n) in changelog(dir, Table::SuppressedPersons).0 {
        assert!((0..=1).contains(&n), "{row:?} sums to {n}");
        if let (OutputRow::SuppressedPerson(r), 1) = (row, n) {
            let old = suppressed
                .entry(format!("{prefix}suppressed:{}", r.person_id))
                .or_default()
                .insert(r.reason.clone(), r.since_ts.to_string());
            assert!(
                old.is_none(),
                "two rows for ({}, {})",
                r.person_id,
                r.reason
            );
        }
    }
    let mut orders: Keys = BTreeMap::new();
    for (row, n) in changelog(dir, Table::OrderStatus).0 {
        assert!((0..=1).contains(&n), "{row:?} sums to {n}");
        if let (OutputRow::OrderStatus(r), 1) = (row, n) {
            let open =
                !r.cancelled && !r.refunded && r.delivery != "signed" && r.delivery != "refused";
            if open {
                orders
                    .entry(format!("{prefix}orders:{}", r.person_id))
                    .or_default()
                    .insert(r.order_id.clone(), r.delivery.clone());
            }
        }
    }
    (suppressed, orders)
}

/// The hashes under `prefix<family>:`, read with `SCAN` (test only: the sink never scans).
fn redis_keys(con: &mut redis::Connection, prefix: &str, family: &str) -> Keys {
    let mut out = BTreeMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}{family}:*"))
            .arg("COUNT")
            .arg(1000)
            .query(con)
            .unwrap();
        for k in keys {
            let h: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&k).query(con).unwrap();
            out.insert(k, h);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out
}

fn delete_prefix(con: &mut redis::Connection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(con)
        .unwrap();
    if !keys.is_empty() {
        let _: u64 = redis::cmd("DEL").arg(&keys).query(con).unwrap();
    }
}

fn run_with_redis(input: &Path, out: &Path, sink: &str) {
    ok(adflow()
        .args(["run", "--workers", "2", "--input"])
        .arg(input)
        .arg("--output")
        .arg(out)
        .arg("--sink")
        .arg(sink));
}

#[test]
fn redis_keys_equal_the_current_suppressed_persons_and_open_orders() {
    let Some(url) = redis_url() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let mut args = adflow_gen::GenerateArgs::with_output(&input);
    args.seed = 3;
    args.users = 500;
    args.days = 7;
    adflow_gen::generate(&args).unwrap();
    let prefix = format!("{}:", unique("redis-e2e"));
    let sink = format!("redis={url}?prefix={prefix}");
    let out = tmp.path().join("out");
    run_with_redis(&input, &out, &sink);

    // The data set must exercise retractions, or equality proves little.
    let (sp, sp_retractions) = changelog(&out, Table::SuppressedPersons);
    let (os, os_retractions) = changelog(&out, Table::OrderStatus);
    let current_sp = sp.values().filter(|&&n| n > 0).count();
    assert!(
        sp_retractions >= 10,
        "only {sp_retractions} retractions in suppressed_persons"
    );
    assert!(os_retractions > 0, "no retraction in order_status");
    assert!(current_sp > 0, "suppressed_persons ends empty");
    let (want_sp, want_orders) = expected_keys(&out, &prefix);
    assert!(!want_orders.is_empty(), "no open order at the end");
    // Some persons were suppressed during the run and are not at its end: their keys were
    // deleted by retractions.
    let ever: std::collections::BTreeSet<String> = sp
        .keys()
        .filter_map(|row| match row {
            OutputRow::SuppressedPerson(r) => Some(format!("{prefix}suppressed:{}", r.person_id)),
            _ => None,
        })
        .collect();
    let released = ever.iter().filter(|k| !want_sp.contains_key(*k)).count();
    assert!(released > 0, "no person left the suppressed set");
    // Some order left the open set (signed, refused, cancelled or refunded) during the run.
    let closed_at_end = os
        .iter()
        .filter(|(row, &n)| {
            n > 0
                && matches!(row, OutputRow::OrderStatus(r)
                    if r.delivery == "signed" || r.delivery == "refused" || r.cancelled || r.refunded)
        })
        .count();
    assert!(closed_at_end > 0, "no closed order");

    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let got_sp = redis_keys(&mut con, &prefix, "suppressed");
    let got_orders = redis_keys(&mut con, &prefix, "orders");
    assert_eq!(
        got_sp, want_sp,
        "suppressed keys differ from suppressed_persons"
    );
    assert_eq!(
        got_orders, want_orders,
        "order keys differ from the open orders"
    );
    let progress: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}progress"))
        .query(&mut con)
        .unwrap();
    assert_eq!(progress["mode"], "file");
    assert_eq!(progress["seq"], "1", "one transaction for the whole run");
    let open_orders: usize = got_orders.values().map(|h| h.len()).sum();
    eprintln!(
        "suppressed_persons: {current_sp} current rows in {} keys ({sp_retractions} retractions in the changelog, {released} persons no longer suppressed); \
         open orders: {open_orders} in {} keys ({os_retractions} order_status retractions, {closed_at_end} closed orders)",
        got_sp.len(),
        got_orders.len()
    );

    // A second file-mode run on the same prefix over another data set starts from empty keys:
    // nothing of the first run is left.
    let input2 = tmp.path().join("in2");
    let mut args = adflow_gen::GenerateArgs::with_output(&input2);
    args.seed = 5;
    args.users = 60;
    args.days = 2;
    adflow_gen::generate(&args).unwrap();
    let out2 = tmp.path().join("out2");
    run_with_redis(&input2, &out2, &sink);
    let (want_sp, want_orders) = expected_keys(&out2, &prefix);
    assert_eq!(redis_keys(&mut con, &prefix, "suppressed"), want_sp);
    assert_eq!(redis_keys(&mut con, &prefix, "orders"), want_orders);
    delete_prefix(&mut con, &prefix);
}

#[test]
fn an_unreachable_redis_fails_the_run_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("orders.jsonl"), "").unwrap();
    let port = common::free_port();
    let started = std::time::Instant::now();
    let o = adflow()
        .args(["run", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(tmp.path().join("out"))
        .arg("--sink")
        .arg(format!(
            "redis=redis://127.0.0.1:{port}?retry_s=1&timeout_s=1"
        ))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("redis sink") && err.contains("attempts"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let o = adflow()
        .args(["run", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(tmp.path().join("out"))
        .args(["--sink", "redis=redis://127.0.0.1:1?colour=blue"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown parameter"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
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

#[test]
fn live_mode_killed_and_restarted_resumes_the_redis_keys() {
    let Some(url) = redis_url() else { return };
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    live_setup(dir);
    let p = topic_prefix("redis");
    let prefix = format!("{}:", unique("redis-live"));
    let sink = format!("redis={url}?prefix={prefix}");
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let progress = |con: &mut redis::Connection| -> BTreeMap<String, String> {
        redis::cmd("HGETALL")
            .arg(format!("{prefix}progress"))
            .query(con)
            .unwrap()
    };
    // Publish at a bounded rate (about 5 s) so the consumer is killed mid-stream.
    let mut producer = produce(dir, &brokers, &p, Some("4000"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let mut first = KillOnDrop(Some(
        run_kafka(dir, &brokers, &p, "kafka")
            .args(["--sink", &sink])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(3000));
    if let Some(mut c) = first.0.take() {
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    let before = progress(&mut con);
    assert_eq!(before.get("mode").map(String::as_str), Some("live"));
    assert!(before.contains_key("checkpoint"), "{before:?}");
    assert!(producer.wait().unwrap().success());
    ok(run_kafka(dir, &brokers, &p, "kafka")
        .args(["--sink", &sink])
        .args(["--exit-when-idle", "4"]));
    let after = progress(&mut con);
    let seq = |m: &BTreeMap<String, String>| m["seq"].parse::<u64>().unwrap();
    assert!(seq(&after) > seq(&before), "{before:?} -> {after:?}");

    // The resumed file changelogs are the tables (kafka_run.rs checks them against the
    // reference); the keys must be exactly their suppressed persons and open orders.
    let out = dir.join("kafka");
    let (want_sp, want_orders) = expected_keys(&out, &prefix);
    assert!(
        !want_orders.is_empty() || !want_sp.is_empty(),
        "nothing to compare"
    );
    assert_eq!(redis_keys(&mut con, &prefix, "suppressed"), want_sp);
    assert_eq!(redis_keys(&mut con, &prefix, "orders"), want_orders);
    let (_, sp_retractions) = changelog(&out, Table::SuppressedPersons);
    eprintln!(
        "live: seq {} before the kill, {} at the end; {} suppressed keys ({sp_retractions} retractions), {} order keys",
        seq(&before),
        seq(&after),
        want_sp.len(),
        want_orders.len()
    );
    delete_prefix(&mut con, &prefix);
}
