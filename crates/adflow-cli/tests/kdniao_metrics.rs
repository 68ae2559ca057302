//! `adflow kdniao … --http ADDR`: the Kdniao commands' `/metrics` parses as Prometheus text
//! (a real parser) and counts exactly the calls the stand-in Kdniao/Kuaidi100 server saw, per
//! endpoint, provider and outcome, with one duration sample per call; the receiver's push
//! counts and its counters equal its JSON `/metrics`.
//!
//! The stand-in runs in this process (`adflow_kdniao::sandbox::Sandbox`); its failure modes
//! are switched between the commands, each a separate `adflow` process scraped while it
//! lingers after its work (`/ready` 200).

mod common;

use adflow_kdniao::error::Provider;
use adflow_kdniao::sandbox::{FailMode, PushCommand, Sandbox, SandboxKuaidi100, SandboxScript};
use adflow_kdniao::Secret;
use common::{
    adflow, free_port, http_get as get, http_request as request, parse_metrics as parse,
    sample as value, Samples,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const EBID: &str = "1237100";
const KEY: &str = "metrics-test-app-key";

/// `(endpoint, provider)` → (ok, error, duration count), for every pair in the scrape.
type Calls = BTreeMap<(String, String), (f64, f64, f64)>;

fn calls(samples: &Samples) -> Calls {
    let mut out = Calls::new();
    for ((name, labels), v) in samples {
        let l = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let key = (l("endpoint"), l("provider"));
        if name == "adflow_kdniao_requests_total" {
            let e = out.entry(key).or_default();
            match l("outcome").as_str() {
                "ok" => e.0 += v,
                "error" => e.1 += v,
                other => panic!("outcome {other:?}"),
            }
        } else if name == "adflow_kdniao_request_duration_seconds_count" {
            out.entry(key).or_default().2 += v;
        }
    }
    out
}

fn pair(endpoint: &str, provider: &str) -> (String, String) {
    (endpoint.to_string(), provider.to_string())
}

/// Checks what every scrape must satisfy: counters end in `_total`, every sample is
/// adflow's, the duration histogram has the 3 s bucket and its `+Inf` bucket equals
/// `_count`.
fn check_shape(scrape: &prometheus_parse::Scrape, samples: &Samples) {
    assert!(scrape.docs.contains_key("adflow_kdniao_requests_total"));
    for s in &scrape.samples {
        assert!(s.metric.starts_with("adflow_kdniao_"), "{}", s.metric);
        match &s.value {
            prometheus_parse::Value::Counter(_) => {
                assert!(s.metric.ends_with("_total"), "{}", s.metric)
            }
            prometheus_parse::Value::Histogram(buckets) => {
                assert_eq!(s.metric, "adflow_kdniao_request_duration_seconds");
                assert!(buckets.iter().any(|b| b.less_than == 3.0), "{buckets:?}");
                let inf = buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .expect("+Inf bucket")
                    .count;
                let labels: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(
                    inf,
                    value(
                        samples,
                        "adflow_kdniao_request_duration_seconds_count",
                        &labels
                    )
                );
            }
            _ => {}
        }
    }
}

/// The stand-in's requests per provider so far: (kdniao, kuaidi100).
fn seen(sb: &Sandbox) -> (usize, usize) {
    let r = sb.requests();
    let k = r.iter().filter(|q| q.provider == Provider::Kdniao).count();
    (k, r.len() - k)
}

/// Waits (bounded) until `/ready` answers 200; fails with the child's output if it ended.
fn wait_ready(child: &mut Child, base: &str, what: &str) {
    let started = Instant::now();
    loop {
        if get(&format!("{base}/ready")).map(|r| r.0) == Some(200) {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            panic!("{what} ended ({st}) before /ready: {err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: /ready not 200 within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` to the child and waits (bounded) for it: (exit status, stdout, stderr).
fn stop(mut child: Child, signal: &str, what: &str) -> (std::process::ExitStatus, String, String) {
    assert!(std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("{what} did not end within 30 s of {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |r: Option<&mut dyn std::io::Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            r.read_to_string(&mut s).unwrap();
        }
        s
    };
    let out = read(child.stdout.as_mut().map(|o| o as &mut dyn std::io::Read));
    let err = read(child.stderr.as_mut().map(|e| e as &mut dyn std::io::Read));
    (status, out, err)
}

/// Runs a one-shot Kdniao command with `--http` and `--http-linger`, scrapes it once its work
/// is done, ends the linger with SIGTERM: (the printed report, the scrape).
fn run_scraped(dir: &Path, args: &[&str]) -> (serde_json::Value, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let what = format!("adflow kdniao {}", args[0]);
    let mut child = adflow()
        .arg("kdniao")
        .args(args)
        .arg("--config")
        .arg(dir.join("kdniao.toml"))
        .args([
            "--http",
            &format!("127.0.0.1:{port}"),
            "--http-linger",
            "60",
        ])
        .env("KDNIAO_APP_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut child, &base, &what);
    assert_eq!(get(&format!("{base}/health")).map(|r| r.0), Some(200));
    let (status, text) = get(&format!("{base}/metrics")).expect("/metrics answers");
    assert_eq!(status, 200);
    let (st, out, err) = stop(child, "-TERM", &what);
    assert!(st.success(), "{what}: {st}\n{err}");
    let report = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    (report, text)
}

fn waybill(code: &str, shipper: &str, traces: usize) -> serde_json::Value {
    let traces: Vec<serde_json::Value> = (0..traces)
        .map(|i| {
            serde_json::json!({
                "AcceptTime": format!("2024-03-0{} 10:00:00", i + 1),
                "AcceptStation": format!("到达 {code} 第{i}站"),
            })
        })
        .collect();
    serde_json::json!({
        "ShipperCode": shipper, "LogisticCode": code, "State": "2", "StateEx": "2",
        "Traces": traces,
    })
}

#[test]
fn kdniao_commands_count_every_call_per_endpoint_provider_and_outcome() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let script = SandboxScript {
        waybills: [
            waybill("YT0001", "YTO", 2),
            waybill("YT0002", "YTO", 1),
            waybill("SF0003", "SF", 1),
        ]
        .into_iter()
        .map(|w| serde_json::from_value(w).unwrap())
        .collect(),
        kuaidi100: Some(SandboxKuaidi100 {
            customer: "CUST1".into(),
            key: Secret::new("k100-key"),
        }),
        ..SandboxScript::default()
    };
    let sb = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Sandbox::start(listener, EBID, Secret::new(KEY), script)
            .await
            .unwrap()
    });
    let state = dir.join("state");
    std::fs::write(
        dir.join("kdniao.toml"),
        format!(
            r#"ebusiness_id = "{EBID}"
state_dir = "{state}"
[endpoints]
query_url = "{url}"
value_added_url = "{url}"
subscribe_url = "{url}"
[http]
timeout_ms = 5000
retries = 1
retry_delay_ms = 10
rate_limit_per_sec = 1000.0
[kuaidi100]
customer = "CUST1"
key = "k100-key"
url = "{k100}"
rate_limit_per_sec = 1000.0
"#,
            state = state.display(),
            url = sb.kdniao_url(),
            k100 = sb.kuaidi100_url(),
        ),
    )
    .unwrap();
    // SF needs CustomerName (the phone of the order): O3 has none, so Kdniao's queries of
    // SF0003 fail with a parameter error (not retried, no failover). "---" cleans to an
    // empty waybill number: its subscription fails with a parameter error.
    let orders = dir.join("orders.jsonl");
    std::fs::write(
        &orders,
        [
            r#"{"type":"shipment","event_id":"s1","ts":1,"order_id":"O1","shipper_code":"YTO","logistic_code":"YT0001"}"#,
            r#"{"type":"shipment","event_id":"s2","ts":2,"order_id":"O2","shipper_code":"YTO","logistic_code":"YT0002"}"#,
            r#"{"type":"shipment","event_id":"s3","ts":3,"order_id":"O3","shipper_code":"SF","logistic_code":"SF0003"}"#,
            r#"{"type":"shipment","event_id":"s4","ts":4,"order_id":"O4","shipper_code":"YTO","logistic_code":"---"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = dir.join("out");
    let out_arg = out.to_str().unwrap();
    let orders_arg = orders.to_str().unwrap();

    // 1. subscribe: 3 subscriptions answered Success:true, 1 parameter error.
    let before = seen(&sb);
    let (report, text) = run_scraped(dir, &["subscribe", "--orders", orders_arg]);
    assert_eq!(
        report,
        serde_json::json!({"subscribed": 3, "already": 0, "failed": 1, "skipped_lines": 0})
    );
    let (scrape, samples) = parse(&text);
    check_shape(&scrape, &samples);
    assert_eq!(
        calls(&samples),
        Calls::from([(pair("subscribe", "kdniao"), (3.0, 1.0, 4.0))]),
        "{text}"
    );
    assert_eq!(seen(&sb), (before.0 + 4, before.1));
    assert_eq!(value(&samples, "adflow_kdniao_ready", &[]), 1.0);

    // 2. poll, both providers up: YT0001 and YT0002 answered, SF0003 a parameter error;
    //    Kuaidi100 is never asked (its series are shown at 0).
    let before = seen(&sb);
    let (report, text) = run_scraped(
        dir,
        &["poll", "--output", out_arg, "--quiet-after-secs", "0"],
    );
    assert_eq!(report["queried"], 3, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(report["events"], 3, "{report}");
    let (scrape, samples) = parse(&text);
    check_shape(&scrape, &samples);
    assert_eq!(
        calls(&samples),
        Calls::from([
            (pair("track_query", "kdniao"), (2.0, 1.0, 3.0)),
            (pair("track_query", "kuaidi100"), (0.0, 0.0, 0.0)),
        ]),
        "{text}"
    );
    assert_eq!(seen(&sb), (before.0 + 3, before.1));
    let lines = std::fs::read_to_string(out.join("logistics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 3);
    assert_eq!(
        value(&samples, "adflow_kdniao_sink_events_written_total", &[]),
        3.0
    );

    // 3. poll, Kdniao answering HTTP 500: each waybill tried twice (retries = 1), then
    //    answered by Kuaidi100.
    sb.set_fail(Provider::Kdniao, FailMode::Http500);
    let before = seen(&sb);
    let (report, text) = run_scraped(
        dir,
        &["poll", "--output", out_arg, "--quiet-after-secs", "0"],
    );
    assert_eq!(report["queried"], 3, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let (scrape, samples) = parse(&text);
    check_shape(&scrape, &samples);
    assert_eq!(
        calls(&samples),
        Calls::from([
            (pair("track_query", "kdniao"), (0.0, 6.0, 6.0)),
            (pair("track_query", "kuaidi100"), (3.0, 0.0, 3.0)),
        ]),
        "{text}"
    );
    assert_eq!(seen(&sb), (before.0 + 6, before.1 + 3));
    assert_eq!(
        value(&samples, "adflow_kdniao_sink_events_written_total", &[]),
        report["events"].as_f64().unwrap()
    );

    // 4. poll, both down: 2 attempts at each provider per waybill; all three are parked.
    sb.set_fail(Provider::Kuaidi100, FailMode::Http500);
    let before = seen(&sb);
    let (report, text) = run_scraped(
        dir,
        &["poll", "--output", out_arg, "--quiet-after-secs", "0"],
    );
    assert_eq!(report["queried"], 3, "{report}");
    assert_eq!(report["failed"], 3, "{report}");
    let (scrape, samples) = parse(&text);
    check_shape(&scrape, &samples);
    assert_eq!(
        calls(&samples),
        Calls::from([
            (pair("track_query", "kdniao"), (0.0, 6.0, 6.0)),
            (pair("track_query", "kuaidi100"), (0.0, 6.0, 6.0)),
        ]),
        "{text}"
    );
    assert_eq!(seen(&sb), (before.0 + 6, before.1 + 6));

    // 5. replay-failed, both up again: the YTO queries succeed, SF0003's parameter error
    //    drops it (no failover).
    sb.set_fail(Provider::Kdniao, FailMode::None);
    sb.set_fail(Provider::Kuaidi100, FailMode::None);
    let before = seen(&sb);
    let (report, text) = run_scraped(dir, &["replay-failed", "--output", out_arg]);
    assert_eq!(
        report,
        serde_json::json!({"succeeded": 2, "still_failed": 0, "dropped": 1})
    );
    let (scrape, samples) = parse(&text);
    check_shape(&scrape, &samples);
    assert_eq!(
        calls(&samples),
        Calls::from([
            (pair("track_query", "kdniao"), (2.0, 1.0, 3.0)),
            (pair("track_query", "kuaidi100"), (0.0, 0.0, 0.0)),
            (pair("subscribe", "kdniao"), (0.0, 0.0, 0.0)),
        ]),
        "{text}"
    );
    assert_eq!(seen(&sb), (before.0 + 3, before.1));

    // 6. receive: 3 pushes accepted, one with a bad sign and one without its fields
    //    rejected; a GET is no push. Its Prometheus counters equal its JSON /metrics.
    let (listen, http) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http}");
    let push_url = format!("http://127.0.0.1:{listen}/kdniao/push");
    let mut child = adflow()
        .args([
            "kdniao",
            "receive",
            "--listen",
            &format!("127.0.0.1:{listen}"),
        ])
        .arg("--output")
        .arg(dir.join("recv"))
        .arg("--state-dir")
        .arg(dir.join("recv-state"))
        .arg("--config")
        .arg(dir.join("kdniao.toml"))
        .args(["--http", &format!("127.0.0.1:{http}")])
        .env("KDNIAO_APP_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut child, &base, "adflow kdniao receive");
    let push = |bad_sign: bool, max_items: Option<usize>| PushCommand {
        callback_url: Some(push_url.clone()),
        request_type: Some(102),
        bad_sign,
        max_items,
        ..PushCommand::default()
    };
    let good = rt.block_on(sb.push_all(push(false, Some(1)))).unwrap();
    assert_eq!((good.pushes, good.failed), (3, 0), "{good:?}");
    let bad = rt.block_on(sb.push_all(push(true, None))).unwrap();
    assert_eq!((bad.pushes, bad.failed), (1, 1), "{bad:?}");
    let (status, reply) = request(&push_url, "POST", "RequestType=102").unwrap();
    assert_eq!(status, 200);
    assert!(reply.contains("\"Success\":false"), "{reply}");
    assert_eq!(get(&push_url).map(|r| r.0), Some(405));
    let (status, json) = get(&format!("http://127.0.0.1:{listen}/metrics")).unwrap();
    assert_eq!(status, 200);
    let (status, text) = get(&format!("{base}/metrics")).unwrap();
    assert_eq!(status, 200);
    // SIGTERM (what Kubernetes and systemd send) stops the receiver cleanly.
    let (st, _, err) = stop(child, "-TERM", "adflow kdniao receive");
    assert!(st.success(), "{st}\n{err}");

    let (scrape, samples) = parse(&text);
    check_shape(&scrape, &samples);
    assert_eq!(
        calls(&samples),
        Calls::from([(pair("push", "kdniao"), (3.0, 2.0, 5.0))]),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let json = json.as_object().unwrap();
    assert_eq!(json["pushes_received"], 5);
    assert_eq!(json["pushes_accepted"], 3);
    assert_eq!(json["bad_sign"], 1);
    assert_eq!(json["missing_fields"], 1);
    let recv_lines = std::fs::read_to_string(dir.join("recv/logistics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(json["events_written"], recv_lines);
    const SINK: [&str; 6] = [
        "events_written",
        "duplicates",
        "inferred_suppressed",
        "bad_traces",
        "dead_letters",
        "rejected_items",
    ];
    for (k, v) in json {
        if k == "connections_open" {
            continue;
        }
        let name = if SINK.contains(&k.as_str()) {
            format!("adflow_kdniao_sink_{k}_total")
        } else {
            format!("adflow_kdniao_receiver_{k}_total")
        };
        assert_eq!(value(&samples, &name, &[]), v.as_f64().unwrap(), "{k}");
    }
    assert!(samples.contains_key(&("adflow_kdniao_receiver_connections_open".into(), vec![])));
}
