//! Every published fixture parses to exactly the expected track events.

use std::sync::Arc;

use adflow_kdniao::answer::{KdniaoAnswer, PushRequestData};
use adflow_kdniao::client::classify_answer;
use adflow_kdniao::error::{Provider, ProviderError};
use adflow_kdniao::sink::{FilePublisher, TrackSink};
use adflow_kdniao::track::{answer_to_events, TrackEvent};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn expected(name: &str) -> Vec<String> {
    std::fs::read_to_string(format!(
        "{}/tests/expected/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

fn lines(events: &[TrackEvent]) -> Vec<String> {
    events.iter().map(TrackEvent::to_json_line).collect()
}

fn push_items(text: &str) -> Vec<KdniaoAnswer> {
    let p: PushRequestData = serde_json::from_str(text).unwrap();
    assert_eq!(p.count.as_deref(), Some("2"));
    p.data
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

#[test]
fn query_with_traces_gives_six_exact_events() {
    let a = classify_answer(Provider::Kdniao, &fixture("query_1002_with_traces.json")).unwrap();
    assert_eq!(a.state.as_deref(), Some("3"));
    let c = answer_to_events(&a);
    assert!(c.bad_traces.is_empty());
    let events: Vec<TrackEvent> = c.events.into_iter().map(|(e, _)| e).collect();
    // 7 traces, two of them at the final time with the same state: one event.
    assert_eq!(lines(&events), expected("query_1002_with_traces.jsonl"));
    // Newest-first input, sorted ascending; the latest carries the top-level State 3.
    assert_eq!(events.last().unwrap().state, "3");
    assert_eq!(events.last().unwrap().ts, 1_403_662_983_000);
}

#[test]
fn query_without_traces_is_not_an_error_and_gives_nothing() {
    let a = classify_answer(Provider::Kdniao, &fixture("query_1002_no_traces.json")).unwrap();
    assert!(a.is_no_traces());
    assert_eq!(answer_to_events(&a).events, vec![]);
    let new_shape = classify_answer(
        Provider::Kdniao,
        r#"{"EBusinessID":"1","ShipperCode":"SF","LogisticCode":"1","Success":true,"State":"0","Reason":"暂无轨迹信息","Traces":[]}"#,
    )
    .unwrap();
    assert!(new_shape.is_no_traces());
    assert_eq!(answer_to_events(&new_shape).events, vec![]);
}

#[test]
fn push_101_gives_sixteen_exact_events() {
    let items = push_items(&fixture("push_101_request_data.json"));
    let mut events = Vec::new();
    for a in &items {
        events.extend(answer_to_events(a).events.into_iter().map(|(e, _)| e));
    }
    assert_eq!(lines(&events), expected("push_101_request_data.jsonl"));
}

#[test]
fn invalid_datasign_answer_is_a_bad_sign_error() {
    match classify_answer(Provider::Kdniao, &fixture("error_invalid_datasign.json")) {
        Err(ProviderError::BadSign { reason, .. }) => {
            assert_eq!(
                reason,
                "非法参数[DataSign[OGJjNDg1NWJmMjJlMDYwNjZmMTdiODY3MWZmMWI2ZWE=]不合法.]"
            )
        }
        other => panic!("expected BadSign, got {other:?}"),
    }
}

#[test]
fn push_reply_fixture_has_our_reply_fields() {
    let fixture: serde_json::Value = serde_json::from_str(&fixture("push_reply.json")).unwrap();
    let ours = serde_json::to_value(adflow_kdniao::receiver::PushReply {
        ebusiness_id: "1237100".into(),
        update_time: "2015-03-11 16:26:11".into(),
        success: true,
        reason: String::new(),
    })
    .unwrap();
    assert_eq!(ours, fixture);
}

#[test]
fn malformed_trace_time_is_reported_and_the_rest_kept() {
    let text = fixture("push_101_request_data.json")
        .replace("2015-03-07 14:25:00", "2015-03-07 14:25:001");
    let items = push_items(&text);
    let c = answer_to_events(&items[0]);
    assert_eq!(c.bad_traces.len(), 1);
    assert_eq!(c.bad_traces[0].accept_time, "2015-03-07 14:25:001");
    assert_eq!(c.bad_traces[0].logistic_code, "5042260908504");
    assert_eq!(c.events.len(), 7);
}

#[tokio::test]
async fn sink_dedups_repeats_and_keeps_state_of_earlier_latest_trace() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let state = dir.path().join("state");
    let open = || TrackSink::open(Arc::new(FilePublisher::new(&out).unwrap()), &state).unwrap();
    let mk = |traces: &[&str], state: &str, ex: &str| -> KdniaoAnswer {
        serde_json::from_value(serde_json::json!({
            "ShipperCode": "YTO", "LogisticCode": "yt-1", "Success": true, "State": state, "StateEx": ex,
            "Traces": traces.iter().map(|t| serde_json::json!({"AcceptTime": t, "AcceptStation": "s"})).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let sink = open();
    let first = mk(&["2024-01-01 08:00:00", "2024-01-02 08:00:00"], "4", "405");
    let r1 = sink.ingest(std::slice::from_ref(&first)).await.unwrap();
    let got: Vec<_> = r1
        .written
        .iter()
        .map(|e| (e.state.as_str(), e.state_ex.as_deref()))
        .collect();
    assert_eq!(got, vec![("1", None), ("4", Some("405"))]);
    // The same push again: nothing new.
    let r2 = sink.ingest(std::slice::from_ref(&first)).await.unwrap();
    assert_eq!((r2.written.len(), r2.duplicates), (0, 2));
    drop(sink);
    // After a restart the record of emitted ids survives; the former latest trace (405) is
    // not re-emitted as an inferred in-transit event; only the new latest trace is written.
    let sink = open();
    let second = mk(
        &[
            "2024-01-01 08:00:00",
            "2024-01-02 08:00:00",
            "2024-01-03 08:00:00",
        ],
        "3",
        "301",
    );
    let r3 = sink.ingest(std::slice::from_ref(&second)).await.unwrap();
    let got: Vec<_> = r3
        .written
        .iter()
        .map(|e| (e.ts, e.state.as_str(), e.state_ex.as_deref()))
        .collect();
    assert_eq!(got, vec![(1_704_240_000_000, "3", Some("301"))]);
    assert_eq!((r3.duplicates, r3.suppressed), (1, 1));
    let file = std::fs::read_to_string(out.join("logistics.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 3);
    assert_eq!(sink.status("YT1").await.unwrap().latest_code, "301");
}
