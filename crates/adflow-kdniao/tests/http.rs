//! Integration over real HTTP on 127.0.0.1 (ephemeral ports) against the stand-in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use adflow_kdniao::answer::{KdniaoAnswer, PushRequestData};
use adflow_kdniao::client::WaybillRequest;
use adflow_kdniao::config::{Endpoints, KdniaoConfig, Kuaidi100Config};
use adflow_kdniao::error::{Provider, ProviderError};
use adflow_kdniao::receiver::{serve, ReceiverState};
use adflow_kdniao::sandbox::{FailMode, PushCommand, Sandbox, SandboxKuaidi100, SandboxScript};
use adflow_kdniao::sink::{FilePublisher, TrackSink};
use adflow_kdniao::subscribe::{poll_quiet_once, subscribe_orders, SubscriptionBook};
use adflow_kdniao::tracker::Tracker;
use adflow_kdniao::Secret;
use tokio::net::TcpListener;

const EBID: &str = "1237100";
const KEY: &str = "test-app-key-0123";

fn fixture_items() -> Vec<KdniaoAnswer> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/push_101_request_data.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let p: PushRequestData = serde_json::from_str(&text).unwrap();
    p.data
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

fn expected_push_lines() -> Vec<String> {
    std::fs::read_to_string(format!(
        "{}/tests/expected/push_101_request_data.jsonl",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

async fn sandbox() -> Sandbox {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let script = SandboxScript {
        waybills: fixture_items(),
        kuaidi100: Some(SandboxKuaidi100 {
            customer: "CUST1".into(),
            key: Secret::new("k100-key"),
        }),
        ..SandboxScript::default()
    };
    Sandbox::start(listener, EBID, Secret::new(KEY), script)
        .await
        .unwrap()
}

fn config(sb: &Sandbox) -> KdniaoConfig {
    let mut cfg = KdniaoConfig::new(EBID, Secret::new(KEY));
    cfg.endpoints = Some(Endpoints::single(&sb.kdniao_url()));
    cfg.http.timeout_ms = 300;
    cfg.http.retries = 2;
    cfg.http.retry_delay_ms = 20;
    cfg.http.rate_limit_per_sec = 200.0;
    cfg.kuaidi100 = Some(Kuaidi100Config {
        customer: "CUST1".into(),
        key: Secret::new("k100-key"),
        url: sb.kuaidi100_url(),
        rate_limit_per_sec: 200.0,
        carriers: Default::default(),
    });
    cfg.validate().unwrap();
    cfg
}

struct Receiver {
    url: String,
    out: PathBuf,
    state: Arc<ReceiverState>,
}

async fn receiver(dir: &Path) -> Receiver {
    receiver_with(dir, Default::default()).await
}

/// A receiver with the given timeouts and limits, serving on a loopback port.
async fn receiver_with(dir: &Path, cfg: adflow_kdniao::config::ReceiverConfig) -> Receiver {
    let out = dir.join("out");
    let sink = Arc::new(
        TrackSink::open(
            Arc::new(FilePublisher::new(&out).unwrap()),
            &out.join(".kdniao"),
        )
        .unwrap(),
    );
    let state = ReceiverState::with_settings(EBID.into(), Secret::new(KEY), sink, cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kdniao/push", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state.clone(), std::future::pending()));
    Receiver { url, out, state }
}

fn output_lines(out: &Path) -> Vec<String> {
    match std::fs::read_to_string(out.join("logistics.jsonl")) {
        Ok(t) => t.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

fn push_to(url: &str, bad_sign: bool) -> PushCommand {
    PushCommand {
        callback_url: Some(url.to_string()),
        request_type: Some(101),
        logistic_codes: None,
        bad_sign,
        ..PushCommand::default()
    }
}

#[tokio::test]
async fn good_push_becomes_events_and_a_correct_reply_and_repeats_add_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    let rx = receiver(dir.path()).await;

    let (status, body) = sb.push(push_to(&rx.url, false)).await.unwrap();
    assert_eq!(status, 200);
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["EBusinessID"], EBID);
    assert_eq!(reply["Success"], true);
    assert_eq!(reply["Reason"], "");
    let t = reply["UpdateTime"].as_str().unwrap();
    assert!(
        adflow_kdniao::answer::parse_kdniao_time(t).is_some() && t.len() == 19 && &t[4..5] == "-",
        "{t}"
    );
    assert_eq!(output_lines(&rx.out), expected_push_lines());

    // Kdniao pushes the whole trace again: identical ids, no new lines.
    let (status, body) = sb.push(push_to(&rx.url, false)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["Success"],
        true
    );
    assert_eq!(output_lines(&rx.out), expected_push_lines());
    assert_eq!(
        rx.state
            .sink()
            .metrics
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        16
    );
}

#[tokio::test]
async fn bad_sign_is_rejected_and_produces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    let rx = receiver(dir.path()).await;
    let (status, body) = sb.push(push_to(&rx.url, true)).await.unwrap();
    assert_eq!(status, 200);
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["Success"], false);
    assert_eq!(reply["Reason"], "DataSign invalid");
    assert!(!body.contains(KEY));
    assert_eq!(output_lines(&rx.out), Vec::<String>::new());
    assert_eq!(
        rx.state
            .metrics
            .bad_sign
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let metrics = reqwest::get(rx.url.replace("/kdniao/push", "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert_eq!(metrics["bad_sign"], 1);
    assert_eq!(metrics["events_written"], 0);
}

#[tokio::test]
async fn kdniao_timing_out_fails_over_to_kuaidi100() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    sb.set_fail(Provider::Kdniao, FailMode::Timeout { delay_ms: 2_000 });
    let tracker = Tracker::new(&config(&sb), dir.path()).unwrap();
    let req = WaybillRequest::new("EMS", "5042260908504");
    let (provider, answer) = tracker.query(&req).await.unwrap();
    assert_eq!(provider, Provider::Kuaidi100);
    assert_eq!(answer.traces.len(), 8);
    assert_eq!(
        (answer.state.as_deref(), answer.state_ex.as_deref()),
        (Some("2"), Some("2"))
    );
    let seen: Vec<(Provider, bool)> = sb
        .requests()
        .iter()
        .map(|r| (r.provider, r.sign_ok))
        .collect();
    // 1 try + 2 retries at Kdniao (all timing out), then Kuaidi100 with a valid sign.
    assert_eq!(
        seen,
        vec![
            (Provider::Kdniao, true),
            (Provider::Kdniao, true),
            (Provider::Kdniao, true),
            (Provider::Kuaidi100, true)
        ]
    );
    assert!(tracker.failed_queue().load().await.unwrap().is_empty());
}

#[tokio::test]
async fn both_down_parks_the_request_and_replay_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    sb.set_fail(Provider::Kdniao, FailMode::Http500);
    sb.set_fail(Provider::Kuaidi100, FailMode::Http500);
    let tracker = Tracker::new(&config(&sb), dir.path()).unwrap();
    let req = WaybillRequest::new("EMS", "5042260943004");
    match tracker.query(&req).await {
        Err(ProviderError::Parked { .. }) => {}
        other => panic!("expected Parked, got {other:?}"),
    }
    let queued = tracker.failed_queue().load().await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].request, req);

    // Still down: replay keeps it.
    let out = dir.path().join("out");
    let sink = TrackSink::open(
        Arc::new(FilePublisher::new(&out).unwrap()),
        &dir.path().join("s"),
    )
    .unwrap();
    let r = tracker.replay_failed(Some(&sink), None).await.unwrap();
    assert_eq!((r.succeeded, r.still_failed), (0, 1));
    assert_eq!(tracker.failed_queue().load().await.unwrap()[0].attempts, 2);

    // Back up: replay drains it once and writes the events.
    sb.set_fail(Provider::Kdniao, FailMode::None);
    sb.set_fail(Provider::Kuaidi100, FailMode::None);
    let r = tracker.replay_failed(Some(&sink), None).await.unwrap();
    assert_eq!((r.succeeded, r.still_failed), (1, 0));
    assert!(tracker.failed_queue().load().await.unwrap().is_empty());
    let r = tracker.replay_failed(Some(&sink), None).await.unwrap();
    assert_eq!((r.succeeded, r.still_failed), (0, 0));
    let expected: Vec<String> = expected_push_lines()
        .into_iter()
        .filter(|l| l.contains("5042260943004"))
        .collect();
    assert_eq!(output_lines(&out), expected);
}

#[tokio::test]
async fn quota_error_fails_over_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    sb.set_fail(Provider::Kdniao, FailMode::Quota);
    let tracker = Tracker::new(&config(&sb), dir.path()).unwrap();
    for code in ["5042260908504", "5042260943004"] {
        let (provider, _) = tracker
            .query(&WaybillRequest::new("EMS", code))
            .await
            .unwrap();
        assert_eq!(provider, Provider::Kuaidi100);
    }
    let kdniao_calls = sb
        .requests()
        .iter()
        .filter(|r| r.provider == Provider::Kdniao)
        .count();
    assert_eq!(
        kdniao_calls, 1,
        "no retry and no second call during the back-off"
    );
}

#[tokio::test]
async fn sign_and_parameter_errors_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    let mut cfg = config(&sb);
    cfg.app_key = Secret::new("wrong-key");
    cfg.kuaidi100 = None;
    let tracker = Tracker::new(&cfg, dir.path()).unwrap();
    let err = tracker
        .query(&WaybillRequest::new("EMS", "5042260908504"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Parked { last } if matches!(**last, ProviderError::BadSign { .. })),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("wrong-key"));
    assert_eq!(sb.requests().len(), 1);

    let tracker = Tracker::new(&config(&sb), &dir.path().join("b")).unwrap();
    sb.set_fail(Provider::Kdniao, FailMode::BadParam);
    let err = tracker
        .query(&WaybillRequest::new("EMS", "5042260908504"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::InvalidParam { .. }), "{err:?}");
    assert_eq!(
        sb.requests().len(),
        2,
        "parameter error: no retry, no failover"
    );
    assert!(tracker.failed_queue().load().await.unwrap().is_empty());
}

#[tokio::test]
async fn no_request_exceeds_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    let mut cfg = config(&sb);
    cfg.http.rate_limit_per_sec = 20.0;
    cfg.http.burst = 1;
    let tracker = Arc::new(Tracker::new(&cfg, dir.path()).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let t = tracker.clone();
        tasks.push(tokio::spawn(async move {
            t.query(&WaybillRequest::new("EMS", "5042260908504"))
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut at: Vec<u64> = sb.requests().iter().map(|r| r.at_us).collect();
    at.sort_unstable();
    assert_eq!(at.len(), 30);
    // Any 21 consecutive requests span at least one second, i.e. no 1-second window holds
    // more than 20. The stand-in timestamps arrivals, so a 25 ms allowance (half a slot)
    // covers loopback and scheduling jitter between the client's send and the arrival.
    for w in at.windows(21) {
        assert!(
            w[20] - w[0] >= 975_000,
            "21 requests within {} us",
            w[20] - w[0]
        );
    }
    // And the limiter does not serialize more than needed: 30 requests in well under 3 s.
    assert!(at[29] - at[0] < 3_000_000, "{} us", at[29] - at[0]);
}

#[tokio::test]
async fn subscribe_orders_once_and_poll_quiet_waybills() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    let cfg = config(&sb);
    let state = dir.path().join("state");
    let tracker = Tracker::new(&cfg, &state).unwrap();
    let book = SubscriptionBook::open(&state).unwrap();
    let orders = dir.path().join("orders.jsonl");
    std::fs::write(
        &orders,
        [
            r#"{"type":"order","event_id":"o1","ts":1,"order_id":"O1","user_id":"u","amount":"1.00","phone":"13800135678"}"#,
            r#"{"type":"shipment","event_id":"s1","ts":2,"order_id":"O1","shipper_code":"SF","logistic_code":" sf-0001 "}"#,
            r#"{"type":"shipment","event_id":"s2","ts":3,"order_id":"O2","shipper_code":"EMS","logistic_code":"5042260908504"}"#,
            r#"{"type":"shipment","event_id":"s3","ts":4,"order_id":"O2","shipper_code":"EMS","logistic_code":"5042-2609-08504"}"#,
            r#"not json"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let r = subscribe_orders(&orders, &tracker, &book).await.unwrap();
    assert_eq!(
        (r.subscribed, r.already, r.failed, r.skipped_lines),
        (2, 1, 0, 1)
    );
    assert_eq!(
        sb.subscriptions(),
        vec![
            ("SF0001".to_string(), 8008),
            ("5042260908504".to_string(), 8008)
        ]
    );
    // Durable: a second run (fresh book from disk) subscribes nothing.
    let book = SubscriptionBook::open(&state).unwrap();
    let r = subscribe_orders(&orders, &tracker, &book).await.unwrap();
    assert_eq!((r.subscribed, r.already), (0, 3));
    assert_eq!(sb.subscriptions().len(), 2);

    // Poller: everything is quiet with a zero threshold; the EMS waybill has traces.
    let out = dir.path().join("out");
    let sink = TrackSink::open(Arc::new(FilePublisher::new(&out).unwrap()), &state).unwrap();
    let now = chrono::Utc::now().timestamp_millis() + 1;
    let p = poll_quiet_once(&tracker, &book, &sink, 0, now)
        .await
        .unwrap();
    assert_eq!((p.queried, p.events, p.failed), (2, 8, 0));
    // With a one-hour threshold nothing is quiet: both were subscribed and polled just now
    // (the EMS waybill's latest track is from 2015, but we only subscribed it now).
    let p = poll_quiet_once(&tracker, &book, &sink, 3_600_000, now)
        .await
        .unwrap();
    assert_eq!((p.queried, p.events), (0, 0));
    // A waybill in a final state is never polled.
    sb.upsert_waybill(
        serde_json::from_value(serde_json::json!({
            "ShipperCode": "EMS", "LogisticCode": "5042260908504", "State": "3", "StateEx": "301",
            "Traces": [{"AcceptTime": "2015-03-12 10:00:00", "AcceptStation": "已签收"}]
        }))
        .unwrap(),
    );
    let p = poll_quiet_once(&tracker, &book, &sink, 0, now + 1)
        .await
        .unwrap();
    assert_eq!((p.queried, p.events), (2, 1));
    let p = poll_quiet_once(&tracker, &book, &sink, 0, now + 2)
        .await
        .unwrap();
    assert_eq!(
        p.queried, 1,
        "only SF0001: the EMS waybill is signed (final)"
    );
}

mod cli {
    use adflow_kdniao::{run, KdniaoCommand, KdniaoError};
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: KdniaoCommand,
    }

    #[tokio::test]
    async fn kafka_flag_needs_a_publisher_from_the_caller() {
        let cli = Cli::try_parse_from([
            "adflow",
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--kafka",
            "localhost:9092",
            "--topic-prefix",
            "demo.",
        ])
        .unwrap();
        assert_eq!(cli.command.kafka_brokers(), Some("localhost:9092"));
        assert_eq!(cli.command.kafka_topic_prefix(), "demo.");
        match run(cli.command).await {
            Err(KdniaoError::Config(m)) => assert!(m.contains("run_with_publisher"), "{m}"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
        let plain = Cli::try_parse_from(["adflow", "poll", "--kafka", "b:1"]).unwrap();
        assert_eq!(plain.command.kafka_topic_prefix(), "");
        // --topic-prefix only goes with --kafka.
        assert!(Cli::try_parse_from([
            "adflow",
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--output",
            "o",
            "--topic-prefix",
            "p."
        ])
        .is_err());
    }

    #[test]
    fn command_line_contract_parses() {
        for args in [
            vec![
                "adflow",
                "receive",
                "--listen",
                "0.0.0.0:8080",
                "--output",
                "out",
            ],
            vec![
                "adflow",
                "sandbox",
                "--listen",
                "127.0.0.1:9080",
                "--script",
                "s.json",
                "--ebusiness-id",
                "1",
            ],
            vec![
                "adflow",
                "subscribe",
                "--orders",
                "orders.jsonl",
                "--state-dir",
                "st",
            ],
            vec![
                "adflow",
                "replay-failed",
                "--state-dir",
                "st",
                "--output",
                "out",
            ],
            vec![
                "adflow",
                "query",
                "--shipper",
                "SF",
                "--waybill",
                "1",
                "--phone",
                "5678",
            ],
            vec!["adflow", "poll", "--output", "out"],
        ] {
            Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        // Exactly one of --output / --kafka.
        assert!(Cli::try_parse_from(["adflow", "receive", "--listen", "0.0.0.0:1"]).is_err());
        assert!(Cli::try_parse_from([
            "adflow",
            "receive",
            "--listen",
            "0.0.0.0:1",
            "--output",
            "o",
            "--kafka",
            "b"
        ])
        .is_err());
    }
}

#[test]
fn example_script_and_control_bodies_parse() {
    let text = std::fs::read_to_string(format!(
        "{}/examples/sandbox-script.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let s: SandboxScript = serde_json::from_str(&text).unwrap();
    assert_eq!(s.waybills.len(), 3);
    let f: adflow_kdniao::sandbox::FailRequest =
        serde_json::from_str(r#"{"provider":"kdniao","mode":"timeout","delay_ms":5000}"#).unwrap();
    assert_eq!(
        (f.provider, f.mode),
        (Provider::Kdniao, FailMode::Timeout { delay_ms: 5000 })
    );
    let f: adflow_kdniao::sandbox::FailRequest =
        serde_json::from_str(r#"{"provider":"kuaidi100","mode":"http500"}"#).unwrap();
    assert_eq!(f.mode, FailMode::Http500);
}

#[tokio::test]
async fn push_102_uses_per_trace_action_and_survives_a_malformed_time() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    let rx = receiver(dir.path()).await;
    sb.upsert_waybill(
        serde_json::from_value(serde_json::json!({
            "ShipperCode": "ZTO", "LogisticCode": "7301-2345 678", "State": 2, "StateEx": "202",
            "Traces": [
                {"AcceptTime": "2024/01/02 09:00:00", "AcceptStation": "派件中 13912345678", "Action": "202"},
                {"AcceptTime": "2024-01-01 08:00:00", "AcceptStation": "已揽收", "Action": "1"},
                {"AcceptTime": "2024-01-01 20:00:000", "AcceptStation": "到达", "Action": "201"},
                {"AcceptTime": "2024-01-01 22:00:00", "AcceptStation": "到达", "Action": 201}
            ]
        }))
        .unwrap(),
    );
    let cmd = PushCommand {
        callback_url: Some(rx.url.clone()),
        request_type: Some(102),
        logistic_codes: Some(vec!["730123 45678".into()]),
        bad_sign: false,
        ..PushCommand::default()
    };
    let (status, body) = sb.push(cmd).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"Success\":true"), "{body}");
    let got: Vec<serde_json::Value> = output_lines(&rx.out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(i64, &str, &str, &str)> = got
        .iter()
        .map(|e| {
            (
                e["ts"].as_i64().unwrap(),
                e["state"].as_str().unwrap(),
                e["state_ex"].as_str().unwrap(),
                e["station"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1_704_067_200_000, "1", "1", "已揽收"),
            (1_704_117_600_000, "2", "201", "到达"),
            (1_704_157_200_000, "2", "202", "派件中 139****5678"),
        ]
    );
    assert!(got
        .iter()
        .all(|e| e["logistic_code"] == "73012345678" && e["shipper_code"] == "ZTO"));
    assert_eq!(
        rx.state
            .sink()
            .metrics
            .bad_traces
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// `sandbox --tracks`: a spec §1 logistics.jsonl becomes waybills; a progressive RequestType
/// 102 replay through the receiver gives back exactly its well-formed, distinct tracks
/// (time, waybill, carrier, code, station), in time order, with at most `max_items` waybills
/// and one step per waybill in a push.
#[tokio::test]
async fn progressive_replay_of_a_track_file_gives_back_its_tracks_in_time_order() {
    use adflow_kdniao::replay::waybills_from_tracks;
    let lines = [
        r#"{"type":"track","event_id":"a1","ts":"2024/06/01 08:00:00","shipper_code":"SF","logistic_code":"SF-001","state":1,"state_ex":1,"station":"揽收"}"#,
        r#"{"type":"track","event_id":"b1","ts":"2024/06/01 09:30:00.250","shipper_code":"ZTO","logistic_code":"7301","state":"1"}"#,
        r#"{"type":"track","event_id":"a2","ts":"2024-06-01 20:00:00","shipper_code":"SF","logistic_code":"sf001","state":2,"state_ex":"201"}"#,
        r#"{"type":"track","event_id":"a2","ts":"2024-06-01 20:00:00","shipper_code":"SF","logistic_code":"sf001","state":2,"state_ex":"201"}"#,
        r#"{"type":"track","event_id":"c1","ts":1717236000000,"shipper_code":"YTO","logistic_code":"YT9","state":"2"}"#,
        r#"{"type":"track","event_id":"b2","ts":"2024/06/02 10:00:00","shipper_code":"ZTO","logistic_code":"7301","state":4,"state_ex":404,"station":"拒收 13912345678"}"#,
        r#"{"type":"track","event_id":"a3","ts":"2024/06/02 11:00:00","shipper_code":"SF","logistic_code":"SF001","state":3,"state_ex":301}"#,
        r#"{"type":"track","event_id":"b3","ts":"2024/06/03 10:00:00","shipper_code":"ZTO","logistic_code":"7301","state":4,"state_ex":407}"#,
        r#"not json"#,
        r#"{"type":"track","event_id":"x1","ts":"2024/06/03 10:00:00","shipper_code":"ZTO","logistic_code":7301,"state":4}"#,
    ]
    .join("\n");
    let (waybills, load) = waybills_from_tracks(text_reader(&lines)).unwrap();
    assert_eq!((load.tracks, load.skipped, load.duplicates), (7, 2, 1));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sb = Sandbox::start(
        listener,
        EBID,
        Secret::new(KEY),
        SandboxScript {
            waybills,
            ..SandboxScript::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rx = receiver(dir.path()).await;
    let summary = sb
        .push_all(PushCommand {
            callback_url: Some(rx.url.clone()),
            request_type: Some(102),
            progressive: true,
            max_items: Some(2),
            ..PushCommand::default()
        })
        .await
        .unwrap();
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.items, 7, "one item per track");
    // Steps in time order: a1 b1 | c1 a2 (a2 after c1: 20:00 > 18:00) | b2 a3 | b3.
    assert_eq!(summary.pushes, 4, "{summary:?}");
    let got: Vec<serde_json::Value> = output_lines(&rx.out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary_rows: Vec<(i64, &str, &str, &str, Option<&str>)> = got
        .iter()
        .map(|e| {
            (
                e["ts"].as_i64().unwrap(),
                e["logistic_code"].as_str().unwrap(),
                e["shipper_code"].as_str().unwrap(),
                e["state_ex"].as_str().unwrap(),
                e["station"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary_rows,
        vec![
            (1_717_200_000_000, "SF001", "SF", "1", Some("揽收")),
            (1_717_205_400_250, "7301", "ZTO", "1", None),
            (1_717_236_000_000, "YT9", "YTO", "2", None),
            (1_717_243_200_000, "SF001", "SF", "201", None),
            (
                1_717_293_600_000,
                "7301",
                "ZTO",
                "404",
                Some("拒收 139****5678")
            ),
            (1_717_297_200_000, "SF001", "SF", "301", None),
            (1_717_380_000_000, "7301", "ZTO", "407", None),
        ]
    );
    assert!(got
        .iter()
        .all(|e| e["state"].as_str().unwrap() == &e["state_ex"].as_str().unwrap()[..1]));
    // Each step re-sends the waybill's earlier traces: 0+1+2 (SF001) + 0+1+2 (7301) + 0 (YT9).
    assert_eq!(
        rx.state
            .sink()
            .metrics
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
}

fn text_reader(text: &str) -> std::io::BufReader<&[u8]> {
    std::io::BufReader::new(text.as_bytes())
}

/// 300 connections that never send a byte (more than `max_connections`) do not keep a valid
/// push from being answered: silent connections are closed at the header timeout, and the push
/// is answered `Success:true` well before any unbounded wait.
#[tokio::test]
async fn silent_connections_time_out_and_a_valid_push_still_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox().await;
    let cfg = adflow_kdniao::config::ReceiverConfig {
        header_timeout_ms: 500,
        max_connections: 64,
        ..Default::default()
    };
    let rx = receiver_with(dir.path(), cfg).await;
    let (url, out) = (rx.url.clone(), rx.out.clone());
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/kdniao/push")
        .to_string();

    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(addr.as_str()).await.unwrap());
    }
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(8),
        sb.push(push_to(&url, false)),
    )
    .await
    .expect("the push was not answered while silent connections were open")
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["Success"],
        true
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    assert_eq!(output_lines(&out), expected_push_lines());
    // The first silent connection was accepted and then closed by the header timeout.
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), silent[0].read(&mut buf))
        .await
        .expect("a silent connection stayed open past the header timeout")
        .unwrap_or(0);
    let _ = n; // closed (0) or an error reply (408) — either way it did not stay open.
}

/// A body above `max_body_bytes` is answered HTTP 413 in Kdniao's JSON reply form.
#[tokio::test]
async fn an_oversized_body_gets_413_with_the_json_reply() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = adflow_kdniao::config::ReceiverConfig {
        max_body_bytes: 1024,
        ..Default::default()
    };
    let rx = receiver_with(dir.path(), cfg).await;
    let (url, out) = (rx.url.clone(), rx.out.clone());
    let body = format!(
        "RequestData={}&RequestType=101&DataSign=x",
        "a".repeat(4096)
    );
    let res = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let reply: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(reply["EBusinessID"], EBID);
    assert_eq!(reply["Success"], false);
    assert!(!reply["Reason"].as_str().unwrap().is_empty(), "{reply}");
    assert!(output_lines(&out).is_empty());
}

/// POSTs a form to the receiver and returns the HTTP status and the JSON reply.
async fn post_form(url: &str, fields: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let res = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// A signed push of `RequestData` `data` (type 101).
async fn post_signed(url: &str, data: &str) -> (u16, serde_json::Value) {
    let sign = adflow_kdniao::sign::data_sign(data, &Secret::new(KEY));
    post_form(
        url,
        &[
            ("RequestData", data),
            ("RequestType", "101"),
            ("DataSign", &sign),
        ],
    )
    .await
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// A push without one of its three fields is `missing_fields`, apart from a push whose sign
/// does not verify (`bad_sign`); neither writes anything, and the reply names what is missing.
#[tokio::test]
async fn missing_fields_are_counted_apart_from_bad_signs() {
    let dir = tempfile::tempdir().unwrap();
    let rx = receiver(dir.path()).await;
    let data = r#"{"EBusinessID":"1237100","Count":"0","Data":[]}"#;

    let (status, reply) =
        post_form(&rx.url, &[("RequestData", data), ("RequestType", "101")]).await;
    assert_eq!(status, 200);
    assert_eq!(reply["Success"], false);
    assert_eq!(reply["Reason"], "missing DataSign");
    let (_, reply) = post_form(&rx.url, &[("RequestType", "101"), ("DataSign", "")]).await;
    assert_eq!(reply["Reason"], "missing RequestData, DataSign");
    assert_eq!(counter(&rx.state.metrics.missing_fields), 2);
    assert_eq!(counter(&rx.state.metrics.bad_sign), 0);

    let (status, reply) = post_form(
        &rx.url,
        &[
            ("RequestData", data),
            ("RequestType", "101"),
            ("DataSign", "bm90IGEgc2lnbg=="),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["Success"], false);
    assert_eq!(reply["Reason"], "DataSign invalid");
    assert_eq!(counter(&rx.state.metrics.missing_fields), 2);
    assert_eq!(counter(&rx.state.metrics.bad_sign), 1);
    assert_eq!(counter(&rx.state.metrics.pushes_accepted), 0);
    assert!(output_lines(&rx.out).is_empty());
}

/// `Data` items that hold nothing usable (no waybill number, no carrier, no traces without
/// being the "no traces yet" answer) are counted in `unusable_items`, an item that is not an
/// answer object in `rejected_items`; the usable item of the same push is stored and the push
/// is acknowledged.
#[tokio::test]
async fn data_items_without_anything_usable_are_counted_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let rx = receiver(dir.path()).await;
    let data = serde_json::json!({
        "EBusinessID": EBID, "Count": "6", "PushTime": "2024-03-01 10:00:00",
        "Data": [
            {"ShipperCode": "SF", "LogisticCode": "SF1001", "State": "2", "Success": true,
             "Traces": [{"AcceptTime": "2024-03-01 08:00:00", "AcceptStation": "已揽收"}]},
            {"ShipperCode": "SF", "LogisticCode": "", "State": "2",
             "Traces": [{"AcceptTime": "2024-03-01 08:00:00", "AcceptStation": "已揽收"}]},
            {"LogisticCode": "YT2002", "State": "2",
             "Traces": [{"AcceptTime": "2024-03-01 08:00:00", "AcceptStation": "已揽收"}]},
            {"ShipperCode": "ZTO", "LogisticCode": "7303", "State": "2", "Success": true, "Traces": []},
            {"ShipperCode": "ZTO", "LogisticCode": "7304", "State": "0", "Success": true,
             "Reason": "暂无轨迹信息", "Traces": []},
            "not an answer"
        ]
    })
    .to_string();
    let (status, reply) = post_signed(&rx.url, &data).await;
    assert_eq!(status, 200);
    assert_eq!(reply["Success"], true, "{reply}");
    assert_eq!(counter(&rx.state.metrics.unusable_items), 3);
    assert_eq!(counter(&rx.state.sink().metrics.rejected_items), 1);
    assert_eq!(counter(&rx.state.metrics.pushes_accepted), 1);
    let lines = output_lines(&rx.out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let ev: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (
            ev["logistic_code"].as_str(),
            ev["shipper_code"].as_str(),
            ev["ts"].as_i64()
        ),
        (Some("SF1001"), Some("SF"), Some(1_709_251_200_000))
    );
    let metrics: serde_json::Value = serde_json::from_str(
        &reqwest::get(rx.url.replace("/kdniao/push", "/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["unusable_items"], 3);
}

/// A trace whose time cannot be parsed becomes a dead letter (one line in the state
/// directory's `dead_letters.jsonl`, not written again when Kdniao re-sends the trace); the
/// other traces of the waybill are stored and the push is acknowledged.
#[tokio::test]
async fn an_unparseable_trace_time_is_a_dead_letter_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let rx = receiver(dir.path()).await;
    let data = serde_json::json!({
        "EBusinessID": EBID, "Count": "1",
        "Data": [
            {"ShipperCode": "ZTO", "LogisticCode": "7301", "State": "2", "Success": true,
             "Traces": [
                {"AcceptTime": "2024-03-01 08:00:00", "AcceptStation": "已揽收"},
                {"AcceptTime": "yesterday at noon", "AcceptStation": "到达 13912345678"},
                {"AcceptTime": "2024-03-01 20:00:00", "AcceptStation": "派件中"}
             ]}
        ]
    })
    .to_string();
    for _ in 0..2 {
        let (status, reply) = post_signed(&rx.url, &data).await;
        assert_eq!(status, 200);
        assert_eq!(reply["Success"], true, "{reply}");
    }
    let ts: Vec<i64> = output_lines(&rx.out)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["ts"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ts, vec![1_709_251_200_000, 1_709_294_400_000]);
    let dead = std::fs::read_to_string(
        rx.out
            .join(".kdniao")
            .join(adflow_kdniao::dead_letter::DEAD_LETTERS_FILE),
    )
    .unwrap();
    let dead: Vec<adflow_kdniao::dead_letter::DeadLetterRecord> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].stream, "logistics");
    assert_eq!(dead[0].position, "kdniao/ZTO/7301/Traces[1]");
    assert!(
        dead[0].reason.contains("yesterday at noon"),
        "{}",
        dead[0].reason
    );
    assert!(dead[0].raw.contains("139****5678"), "{}", dead[0].raw);
    assert!(!dead[0].raw.contains("13912345678"));
    assert_eq!(counter(&rx.state.sink().metrics.bad_traces), 2);
    assert_eq!(counter(&rx.state.sink().metrics.dead_letters), 1);
}
