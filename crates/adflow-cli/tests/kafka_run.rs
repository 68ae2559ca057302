//! `adflow run --kafka` against a real Kafka-protocol broker (`ADFLOW_KAFKA_BROKERS`, e.g.
//! tansu from `scripts/services/tansu.sh start`): a generated data set produced to
//! 4-partition topics and consumed with 2 workers gives exactly the file-mode tables; a
//! consumer killed with SIGKILL mid-stream and restarted gives the same tables, nothing counted
//! twice; malformed messages land in the `dead_letters` file and on the dead-letter topic.
//! Without `ADFLOW_KAFKA_BROKERS` these tests fail, unless `ADFLOW_SKIP_SERVICE_TESTS=1`.

mod common;

use common::{
    adflow, assert_same, brokers, contents, expected, live_setup as setup, ok, produce, run_kafka,
    topic_prefix as prefix,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Splits the data set: the first 60% of every file into `h1`, the rest into `h2`.
fn split_input(dir: &Path) {
    for half in ["h1", "h2"] {
        std::fs::create_dir_all(dir.join(half)).unwrap();
    }
    for entry in std::fs::read_dir(dir.join("in")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let k = lines.len() * 6 / 10;
        let name = path.file_name().unwrap();
        let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
        std::fs::write(dir.join("h1").join(name), join(&lines[..k])).unwrap();
        std::fs::write(dir.join("h2").join(name), join(&lines[k..])).unwrap();
    }
}

fn tansu(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/tansu.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tansu.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Stops the test's own broker even when the test fails.
struct Broker(String);
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| tansu(&["stop", "--port", &self.0]));
    }
}

/// Every message of `topic` (from the beginning), as JSON.
fn read_topic(brokers: &str, topic: &str, n: usize) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet: Option<Instant> = None;
    while Instant::now() < deadline && quiet.is_none_or(|q| Instant::now() < q) {
        if got.len() >= n && quiet.is_none() {
            quiet = Some(Instant::now() + Duration::from_secs(2));
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            got.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    got
}

#[test]
fn kafka_run_matches_file_mode_and_publishes_dead_letters() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let p = prefix("same");
    ok(&mut produce(dir, &brokers, &p, None));
    ok(run_kafka(dir, &brokers, &p, "kafka").args(["--exit-when-idle", "4"]));
    assert_same(&expected(dir), &contents(&dir.join("kafka")));

    // Malformed messages: in the dead_letters changelog and on the dead-letter topic, with
    // the topic, partition and offset of each.
    let dead = contents(&dir.join("kafka"))["dead_letters"]
        .values()
        .sum::<i64>();
    assert!(dead > 10, "the generated set has malformed lines");
    let letters = read_topic(&brokers, &format!("{p}dead_letters"), dead as usize);
    assert_eq!(letters.len() as i64, dead);
    for l in &letters {
        let topic = l["topic"].as_str().unwrap();
        assert!(topic.starts_with(&p), "{l}");
        assert!(l["partition"].as_i64().unwrap() < 4 && l["offset"].as_i64().unwrap() >= 0);
        assert!(!l["reason"].as_str().unwrap().is_empty());
    }
}

#[test]
fn kafka_run_killed_and_restarted_counts_nothing_twice() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let p = prefix("kill");
    // Publish at a bounded rate (about 5 s) so the consumer is killed mid-stream.
    let mut producer = produce(dir, &brokers, &p, Some("4000"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let mut consumer = run_kafka(dir, &brokers, &p, "kafka")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    consumer.kill().unwrap(); // SIGKILL
    consumer.wait().unwrap();
    let progress = std::fs::read_to_string(dir.join("kafka/_progress.json")).unwrap();
    assert!(progress.contains("checkpoint"), "{progress}");
    assert!(producer.wait().unwrap().success());
    ok(run_kafka(dir, &brokers, &p, "kafka").args(["--exit-when-idle", "4"]));
    assert_same(&expected(dir), &contents(&dir.join("kafka")));
}

#[test]
fn kafka_run_survives_a_broker_restart() {
    // Needs the tansu binary the suite's broker runs on; starts its own broker with sqlite
    // storage so it can be restarted with its data.
    let Some(_) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    split_input(dir);
    let port = (20000 + std::process::id() % 5000).to_string();
    let db = dir.join("broker/k.db");
    let db = db.to_str().unwrap();
    let brokers = tansu(&["start", "--port", &port, "--sqlite", db]);
    let _guard = Broker(port.clone());
    let p = prefix("restart");
    let mut first = adflow();
    first
        .arg("produce")
        .arg("--input")
        .arg(dir.join("h1"))
        .args([
            "--kafka",
            &brokers,
            "--topic-prefix",
            &p,
            "--partitions",
            "4",
        ]);
    ok(&mut first);
    let mut consumer = run_kafka(dir, &brokers, &p, "kafka")
        .args(["--exit-when-idle", "6"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The broker goes away while the consumer reads the first part, and comes back.
    std::thread::sleep(Duration::from_millis(500));
    tansu(&["stop", "--port", &port]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(tansu(&["start", "--port", &port, "--sqlite", db]), brokers);
    let mut second = adflow();
    second
        .arg("produce")
        .arg("--input")
        .arg(dir.join("h2"))
        .args(["--kafka", &brokers, "--topic-prefix", &p]);
    ok(&mut second);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = consumer.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "consumer did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success());
    assert_same(&expected(dir), &contents(&dir.join("kafka")));
}

/// Two free loopback ports, as a hostfile for a cluster of two processes.
fn hostfile(dir: &Path, name: &str) -> std::path::PathBuf {
    let listeners: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let text: String = listeners
        .iter()
        .map(|l| format!("{}\n", l.local_addr().unwrap()))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Process `i` of a cluster of `n` (hostfile `hosts`), writing `out`.
#[allow(clippy::too_many_arguments)]
fn cluster(
    dir: &Path,
    brokers: &str,
    prefix: &str,
    hosts: &Path,
    n: usize,
    i: usize,
    workers: usize,
    out: &str,
) -> Command {
    let mut c = adflow();
    c.args([
        "run",
        "--kafka",
        brokers,
        "--topic-prefix",
        prefix,
        "--group",
    ])
    .arg(format!("{prefix}g"))
    .args(["--workers", &workers.to_string()])
    .args(["--processes", &n.to_string(), "--process", &i.to_string()])
    .arg("--hostfile")
    .arg(hosts)
    .arg("--output")
    .arg(dir.join(out))
    .arg("--config")
    .arg(dir.join("cfg.toml"));
    c
}

/// Runs every command to its end; all must exit 0.
fn all_ok(cmds: Vec<Command>) {
    let children: Vec<_> = cmds
        .into_iter()
        .map(|mut c| {
            c.stdout(Stdio::null()).stderr(Stdio::piped());
            (format!("{c:?}"), c.spawn().unwrap())
        })
        .collect();
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The union of several processes' changelogs.
fn union(dirs: &[std::path::PathBuf]) -> BTreeMap<String, BTreeMap<String, i64>> {
    let mut all: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for d in dirs {
        for (table, rows) in contents(d) {
            let t = all.entry(table).or_default();
            for (row, n) in rows {
                *t.entry(row).or_default() += n;
            }
        }
    }
    for rows in all.values_mut() {
        rows.retain(|_, n| *n != 0);
    }
    all
}

#[test]
fn cluster_of_processes_gives_the_spec_tables() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let p = prefix("cl");
    ok(&mut produce(dir, &brokers, &p, None));
    let want = expected(dir);
    for workers in [1, 2] {
        let hosts = hostfile(dir, &format!("hosts{workers}"));
        let outs = [format!("w{workers}p0"), format!("w{workers}p1")];
        all_ok(
            (0..2)
                .map(|i| {
                    let mut c = cluster(dir, &brokers, &p, &hosts, 2, i, workers, &outs[i]);
                    c.args(["--exit-when-idle", "3"]);
                    c
                })
                .collect(),
        );
        let dirs: Vec<_> = outs.iter().map(|o| dir.join(o)).collect();
        // Both processes wrote a share of the output.
        for d in &dirs {
            assert!(
                contents(d)["campaign_metrics"].len() > 10,
                "{}",
                d.display()
            );
        }
        assert_same(&want, &union(&dirs));
    }
}

#[test]
fn cluster_process_killed_stops_the_other_and_restarts_exactly() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let p = prefix("clkill");
    let mut producer = produce(dir, &brokers, &p, Some("4000"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let hosts = hostfile(dir, "hosts");
    let spawn = |i: usize| {
        cluster(dir, &brokers, &p, &hosts, 2, i, 1, &format!("p{i}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let p0 = spawn(0);
    let mut p1 = spawn(1);
    std::thread::sleep(Duration::from_millis(2500));
    p1.kill().unwrap(); // SIGKILL
    p1.wait().unwrap();
    let killed = Instant::now();
    let out = p0.wait_with_output().unwrap();
    let took = killed.elapsed();
    assert!(!out.status.success(), "the surviving process must fail");
    assert!(took < Duration::from_secs(10), "it took {took:?} to stop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("peer process"), "{err}");
    assert!(producer.wait().unwrap().success());

    // Restart both: every table exactly, nothing twice.
    let dirs = [dir.join("p0"), dir.join("p1")];
    all_ok(
        (0..2)
            .map(|i| {
                let mut c = cluster(dir, &brokers, &p, &hosts, 2, i, 1, &format!("p{i}"));
                c.args(["--exit-when-idle", "3"]);
                c
            })
            .collect(),
    );
    let want = expected(dir);
    assert_same(&want, &union(&dirs));

    // After that clean stop, the same job as one process with two workers continues: nothing
    // new is written, and nothing counted twice.
    all_ok(vec![{
        let mut c = run_kafka(dir, &brokers, &p, "p0");
        c.args(["--exit-when-idle", "3"]);
        c
    }]);
    assert_same(&want, &union(&dirs));
}

/// A sink that fails in live mode (its file is `/dev/full`) on a 2-worker run stops every
/// worker: `adflow run --kafka` exits non-zero with the sink's error within seconds, never
/// hangs, also though the other worker may be waiting for the frontier.
#[test]
fn kafka_run_with_a_failing_sink_exits_with_the_error() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let p = prefix("full");
    ok(&mut produce(dir, &brokers, &p, None));
    let out = dir.join("full");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("campaign_metrics.jsonl")).unwrap();
    let child = run_kafka(dir, &brokers, &p, "full")
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr) = common::wait_or_kill(
        child,
        Duration::from_secs(60),
        "adflow run --kafka after a sink error",
    );
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
}
