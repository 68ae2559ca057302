//! The sink against a real Redis server (`ADFLOW_REDIS_URL`, started by
//! `scripts/services/redis.sh start`): the keys, file-mode clearing, live-mode checkpoints and
//! resume, another writer, and a connection dropped right after `EXEC` (the transaction is
//! applied once, not twice). Without the variable these tests fail, unless
//! `ADFLOW_SKIP_SERVICE_TESTS=1`.

use adflow_model::output::{OrderStatusRow, SuppressedPersonRow};
use adflow_model::{Change, OutputRow, Sink, Table};
use adflow_redis::{RedisConfig, RedisSink};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn redis_url() -> Option<String> {
    match std::env::var("ADFLOW_REDIS_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") => None,
        _ => panic!(
            "ADFLOW_REDIS_URL is not set: start scripts/services/redis.sh and export \
             ADFLOW_REDIS_URL=redis://127.0.0.1:16379 (or set ADFLOW_SKIP_SERVICE_TESTS=1)"
        ),
    }
}

/// A prefix no other test (or run) uses.
fn prefix(tag: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}{}-{tag}:", std::process::id(), n % 1_000_000_000)
}

fn config(url: &str, prefix: &str) -> RedisConfig {
    let mut c = RedisConfig::from_url(url).unwrap();
    c.prefix = prefix.to_string();
    c.retry_for = Duration::from_secs(5);
    c.io_timeout = Duration::from_secs(2);
    c
}

fn con(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// Every key under `prefix` but the progress hash, as key → field → value.
fn keys_of(url: &str, prefix: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut c = con(url);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut c)
        .unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        if k == format!("{prefix}progress") {
            continue;
        }
        let h: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
        out.insert(k, h);
    }
    out
}

fn progress(url: &str, prefix: &str) -> BTreeMap<String, String> {
    redis::cmd("HGETALL")
        .arg(format!("{prefix}progress"))
        .query(&mut con(url))
        .unwrap()
}

fn drop_prefix(url: &str, prefix: &str) {
    let mut c = con(url);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut c)
        .unwrap();
    if !keys.is_empty() {
        let _: u64 = redis::cmd("DEL").arg(&keys).query(&mut c).unwrap();
    }
}

fn sp(person: &str, reason: &str, since: i64, version: i64, sign: i64) -> Change {
    Change {
        row: OutputRow::SuppressedPerson(SuppressedPersonRow {
            person_id: person.into(),
            reason: reason.into(),
            since_ts: since,
        }),
        version,
        sign,
    }
}

fn os(order: &str, person: &str, delivery: &str, version: i64, sign: i64) -> Change {
    Change {
        row: OutputRow::OrderStatus(OrderStatusRow {
            order_id: order.into(),
            person_id: person.into(),
            amount_fen: 100,
            order_ts: 1,
            phone_masked: None,
            campaign_id: None,
            channel: None,
            shipper_code: None,
            logistic_code: None,
            delivery: delivery.into(),
            delivery_ts: None,
            cancelled: false,
            after_sale: false,
            refunded: false,
            effective: delivery == "signed",
        }),
        version,
        sign,
    }
}

fn hash(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn file_mode_writes_the_current_keys_and_a_rerun_starts_empty() {
    let Some(url) = redis_url() else { return };
    let p = prefix("file");
    let mut s = RedisSink::new(config(&url, &p)).unwrap();
    assert!(!s.resumable());
    s.write(
        vec![
            sp("u1", "stalled_parcel", 5, 10, 1),
            sp("u2", "delivery_exception", 6, 10, 1),
            os("o1", "u1", "in_transit", 10, 1),
            os("o2", "u1", "shipped", 10, 1),
        ],
        20,
    )
    .unwrap();
    s.write(
        vec![
            sp("u2", "delivery_exception", 6, 25, -1),
            os("o2", "u1", "shipped", 25, -1),
            os("o2", "u1", "signed", 25, 1),
        ],
        30,
    )
    .unwrap();
    assert!(keys_of(&url, &p).is_empty(), "nothing is sent before flush");
    s.flush().unwrap();
    assert_eq!(s.durable_frontier(), 30);
    let want = BTreeMap::from([
        (
            format!("{p}suppressed:u1"),
            hash(&[("stalled_parcel", "5")]),
        ),
        (format!("{p}orders:u1"), hash(&[("o1", "in_transit")])),
    ]);
    assert_eq!(keys_of(&url, &p), want);
    let pr = progress(&url, &p);
    assert_eq!(pr["mode"], "file");
    assert_eq!(pr["frontier"], "30");
    assert!(!pr.contains_key("checkpoint"));
    drop(s);

    // A second file-mode run starts from empty keys.
    let mut s = RedisSink::new(config(&url, &p)).unwrap();
    assert_eq!(s.stats().keys_cleared, 3);
    assert!(keys_of(&url, &p).is_empty());
    s.write(vec![sp("u3", "stalled_parcel", 1, 1, 1)], 2)
        .unwrap();
    s.flush().unwrap();
    assert_eq!(
        keys_of(&url, &p),
        BTreeMap::from([(
            format!("{p}suppressed:u3"),
            hash(&[("stalled_parcel", "1")])
        )])
    );
    // Live mode refuses a file-mode prefix.
    let e = RedisSink::resume(config(&url, &p))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("file-mode run"), "{e}");
    drop_prefix(&url, &p);
}

#[test]
fn live_mode_stores_checkpoints_and_resumes_from_them() {
    let Some(url) = redis_url() else { return };
    let p = prefix("live");
    let mut s = RedisSink::resume(config(&url, &p)).unwrap();
    assert!(s.resumable());
    assert_eq!(s.resume_points(), vec![None]);
    assert_eq!(s.resume_frontier(Table::SuppressedPersons), i64::MIN);
    s.resume_to(None).unwrap();
    s.write(
        vec![
            sp("u1", "stalled_parcel", 5, 10, 1),
            os("o1", "u1", "in_transit", 10, 1),
        ],
        100,
    )
    .unwrap();
    s.set_checkpoint("cp1");
    s.flush().unwrap();
    assert_eq!(s.durable_frontier(), 100);
    assert_eq!(progress(&url, &p)["checkpoint"], "cp1");
    assert_eq!(progress(&url, &p)["frontier"], "100");
    // Changes handed over after the checkpoint, not yet flushed: a crash loses them.
    s.write(vec![sp("u1", "stalled_parcel", 5, 150, -1)], 200)
        .unwrap();
    drop(s);
    let before = keys_of(&url, &p);
    assert_eq!(
        before[&format!("{p}suppressed:u1")],
        hash(&[("stalled_parcel", "5")])
    );

    // File mode refuses a live prefix.
    let e = RedisSink::new(config(&url, &p)).err().unwrap().to_string();
    assert!(e.contains("live run"), "{e}");

    let mut s = RedisSink::resume(config(&url, &p)).unwrap();
    assert_eq!(s.resume_checkpoint().as_deref(), Some("cp1"));
    assert_eq!(s.resume_points(), vec![Some("cp1".to_string())]);
    assert_eq!(s.resume_frontier(Table::OrderStatus), 100);
    assert_eq!(s.durable_frontier(), 100);
    assert!(s.resume_to(None).is_err());
    assert!(s.resume_to(Some("cp0")).is_err());
    s.resume_to(Some("cp1")).unwrap();
    // The replaying engine hands over changes below the resume frontier again: dropped.
    s.write(
        vec![
            sp("u1", "stalled_parcel", 5, 10, 1),
            os("o1", "u1", "in_transit", 10, 1),
        ],
        100,
    )
    .unwrap();
    // A checkpoint set while not past the resume frontier is ignored.
    s.set_checkpoint("cp-replay");
    s.flush().unwrap();
    assert_eq!(progress(&url, &p)["checkpoint"], "cp1");
    assert_eq!(s.stats().changes_below_resume, 2);
    assert_eq!(s.stats().commits, 0);
    s.write(
        vec![
            sp("u1", "stalled_parcel", 5, 150, -1),
            os("o1", "u1", "in_transit", 160, -1),
            os("o1", "u1", "signed", 160, 1),
            os("o7", "u2", "none", 170, 1),
        ],
        200,
    )
    .unwrap();
    s.set_checkpoint("cp2");
    s.flush().unwrap();
    assert_eq!(
        keys_of(&url, &p),
        BTreeMap::from([(format!("{p}orders:u2"), hash(&[("o7", "none")]))])
    );
    let pr = progress(&url, &p);
    assert_eq!(
        (pr["checkpoint"].as_str(), pr["frontier"].as_str()),
        ("cp2", "200")
    );
    assert_eq!(pr["seq"], "2");
    drop(s);
    let s = RedisSink::resume(config(&url, &p)).unwrap();
    assert_eq!(s.resume_checkpoint().as_deref(), Some("cp2"));
    drop_prefix(&url, &p);
}

#[test]
fn changes_at_or_above_the_frontier_wait_for_it() {
    let Some(url) = redis_url() else { return };
    let p = prefix("held");
    let mut s = RedisSink::resume(config(&url, &p)).unwrap();
    s.write(
        vec![
            sp("u1", "stalled_parcel", 5, 50, 1),
            sp("u2", "stalled_parcel", 5, 150, 1),
        ],
        100,
    )
    .unwrap();
    s.set_checkpoint("cp1");
    s.flush().unwrap();
    assert_eq!(keys_of(&url, &p).len(), 1);
    s.write(vec![], 200).unwrap();
    s.set_checkpoint("cp2");
    s.flush().unwrap();
    assert_eq!(keys_of(&url, &p).len(), 2);
    drop_prefix(&url, &p);
}

#[test]
fn a_second_writer_on_the_prefix_is_detected() {
    let Some(url) = redis_url() else { return };
    let p = prefix("two");
    let mut a = RedisSink::resume(config(&url, &p)).unwrap();
    let mut b = RedisSink::resume(config(&url, &p)).unwrap();
    a.write(vec![sp("u1", "stalled_parcel", 5, 50, 1)], 100)
        .unwrap();
    a.set_checkpoint("a1");
    a.flush().unwrap();
    b.write(vec![sp("u9", "stalled_parcel", 5, 50, 1)], 100)
        .unwrap();
    b.set_checkpoint("b1");
    let e = b.flush().unwrap_err().to_string();
    assert!(e.contains("another writer"), "{e}");
    // Once failed, always failed.
    assert!(b.write(vec![], 200).is_err());
    assert!(!keys_of(&url, &p).contains_key(&format!("{p}suppressed:u9")));
    drop_prefix(&url, &p);
}

/// A TCP proxy to the Redis server that, while `cut` is set, forwards a client's `EXEC` and
/// then closes the connection before the reply reaches the client (the outcome is unknown to
/// the client); `cuts` counts the connections cut.
fn cutting_proxy(target: String, cut: Arc<AtomicBool>, cuts: Arc<AtomicUsize>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(&target) else {
                return;
            };
            let (cut, cuts) = (cut.clone(), cuts.clone());
            let mut server_r = server.try_clone().unwrap();
            let mut client_w = client.try_clone().unwrap();
            let forwarding = Arc::new(AtomicBool::new(true));
            let fwd = forwarding.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while fwd.load(Ordering::Acquire) {
                    match server_r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if !fwd.load(Ordering::Acquire)
                                || client_w.write_all(&buf[..n]).is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let exec = buf[..n].windows(8).any(|w| w == b"$4\r\nEXEC");
                            if exec && cut.load(Ordering::Acquire) {
                                // Stop relaying replies first, then let the server run EXEC.
                                forwarding.store(false, Ordering::Release);
                                let _ = server.write_all(&buf[..n]);
                                std::thread::sleep(Duration::from_millis(200));
                                cut.store(false, Ordering::Release);
                                cuts.fetch_add(1, Ordering::AcqRel);
                                let _ = client.shutdown(std::net::Shutdown::Both);
                                let _ = server.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                            if server.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_commit_whose_reply_was_lost_is_not_applied_twice() {
    let Some(url) = redis_url() else { return };
    let target = url
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicUsize::new(0));
    let port = cutting_proxy(target, cut.clone(), cuts.clone());
    let p = prefix("cut");
    let mut cfg = config(&format!("redis://127.0.0.1:{port}"), &p);
    cfg.io_timeout = Duration::from_secs(1);
    let mut s = RedisSink::resume(cfg).unwrap();
    s.write(vec![sp("u1", "stalled_parcel", 5, 50, 1)], 100)
        .unwrap();
    s.set_checkpoint("cp1");
    cut.store(true, Ordering::Release);
    s.flush().unwrap();
    assert_eq!(cuts.load(Ordering::Acquire), 1, "the proxy cut the EXEC");
    let st = s.stats();
    assert_eq!(st.commits_found_applied, 1, "{st:?}");
    assert!(st.failed_attempts >= 1, "{st:?}");
    let pr = progress(&url, &p);
    assert_eq!(
        (pr["seq"].as_str(), pr["checkpoint"].as_str()),
        ("1", "cp1")
    );
    // The next commit goes through normally.
    s.write(vec![sp("u1", "stalled_parcel", 5, 150, -1)], 200)
        .unwrap();
    s.set_checkpoint("cp2");
    s.flush().unwrap();
    assert_eq!(progress(&url, &p)["seq"], "2");
    assert!(keys_of(&url, &p).is_empty());
    drop_prefix(&url, &p);
}
