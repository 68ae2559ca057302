//! Property tests of the Kdniao boundary (issue "robustness"): the push form, the push and
//! answer JSON, trace times and the conversion into track events. For any input nothing
//! panics and every rejection carries a reason; valid input round-trips.
//!
//! Case counts are fixed (`PROPTEST_CASES` overrides them) so the suite runs in a few
//! seconds in `make test`.

use adflow_kdniao::answer::{
    format_kdniao_time, parse_kdniao_time, KdniaoAnswer, PushRequestData, RawTrace,
};
use adflow_kdniao::receiver::parse_push_form;
use adflow_kdniao::track::{answer_to_events, clean_waybill};
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value a few levels deep, with Kdniao's field names likely.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        "20[0-9]{2}[-/][0-9]{1,2}[-/][0-9]{1,2} [0-9]{2}:[0-9]{2}:[0-9]{2,3}(\\.[0-9]{1,4})?"
            .prop_map(Value::String),
    ];
    let keys = prop::sample::select(
        &[
            "EBusinessID",
            "Data",
            "Count",
            "PushTime",
            "ShipperCode",
            "LogisticCode",
            "Success",
            "Reason",
            "State",
            "StateEx",
            "Location",
            "Traces",
            "AcceptTime",
            "AcceptStation",
            "Remark",
            "Action",
            "x",
        ][..],
    );
    leaf.prop_recursive(4, 32, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

const NAMES: [&str; 3] = ["RequestData", "RequestType", "DataSign"];

proptest! {
    #![proptest_config(config())]

    /// Any body: no panic; a rejection names only required fields, at least one.
    #[test]
    fn arbitrary_form_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Err(missing) = parse_push_form(&body) {
            let names: Vec<&str> = missing.0.split(", ").collect();
            prop_assert!(!names.is_empty() && names.iter().all(|n| NAMES.contains(n)), "{:?}", missing);
        }
    }

    /// A form with all three fields (any text, in any order, among other fields, encoded as
    /// a sender would) gives them back exactly; without some of them it names exactly those.
    #[test]
    fn push_forms_round_trip(
        data in ".{1,80}",
        ty in "[0-9]{1,4}",
        sign in "[A-Za-z0-9+/=%]{1,44}",
        extra in prop::collection::vec(("[A-Za-z]{1,8}", ".{0,10}"), 0..3),
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        drop in prop::collection::vec(any::<bool>(), 3),
        pad in "[ \t]{0,2}",
    ) {
        let values = [data.clone(), format!("{pad}{ty}{pad}"), sign.clone()];
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &extra {
            if !NAMES.contains(&k.as_str()) {
                form.append_pair(k, v);
            }
        }
        for &i in &order {
            if !drop[i] {
                form.append_pair(NAMES[i], &values[i]);
            }
        }
        let body = form.finish();
        let got = parse_push_form(body.as_bytes());
        let dropped: Vec<&str> = (0..3).filter(|&i| drop[i]).map(|i| NAMES[i]).collect();
        if dropped.is_empty() {
            let got = got.map_err(|e| TestCaseError::fail(format!("{body}: missing {e}")))?;
            prop_assert_eq!(got.request_data, data);
            prop_assert_eq!(got.request_type, ty);
            prop_assert_eq!(got.data_sign, sign);
        } else {
            prop_assert_eq!(got.map_err(|e| e.0), Err(dropped.join(", ")));
        }
    }

    /// Any JSON as a push's `RequestData` or as an answer: no panic; whatever parses converts
    /// into events without panicking, and every trace is an event, a duplicate of one, or a
    /// bad trace with a reason.
    #[test]
    fn arbitrary_push_json_never_panics(v in any_json()) {
        let text = v.to_string();
        let _ = serde_json::from_str::<PushRequestData>(&text);
        if let Ok(a) = serde_json::from_value::<KdniaoAnswer>(v) {
            let c = answer_to_events(&a);
            prop_assert!(c.events.len() + c.bad_traces.len() <= a.traces.len());
            prop_assert!(c.bad_traces.iter().all(|b| !b.reason.is_empty()));
        }
    }

    /// Every time from 1970 to 2099 formatted as Kdniao does (dashes or slashes, padded or
    /// not, with or without milliseconds) parses back to itself in +08:00.
    #[test]
    fn trace_times_round_trip(secs in 0i64..4_102_416_000, ms in 0i64..1000, slash in any::<bool>(), unpad in any::<bool>(), with_ms in any::<bool>()) {
        let ts = secs * 1000;
        let mut text = format_kdniao_time(ts);
        if unpad {
            // 2024-03-05 → 2024-3-5 (Kdniao's PushTime has this form)
            let (date, time) = text.split_once(' ').unwrap();
            let parts: Vec<String> = date.split('-').enumerate()
                .map(|(i, p)| if i == 0 { p.to_string() } else { p.trim_start_matches('0').to_string() })
                .collect();
            text = format!("{} {time}", parts.join("-"));
        }
        if slash {
            text = text.replace('-', "/");
        }
        let (text, want) = if with_ms { (format!("{text}.{ms:03}"), ts + ms) } else { (text, ts) };
        prop_assert_eq!(parse_kdniao_time(&text), Some(want), "{}", text);
    }

    /// Any text as a trace time: no panic.
    #[test]
    fn arbitrary_trace_times_never_panic(text in prop_oneof![".{0,30}", "[0-9]{1,5}[-/][0-9]{1,3}[-/][0-9]{1,3} [0-9]{1,3}:[0-9]{1,3}:[0-9]{1,4}(\\.[0-9]{0,9})?"]) {
        let _ = parse_kdniao_time(&text);
    }

    /// An answer whose traces have distinct, valid times gives one event per trace, in time
    /// order, on the cleaned waybill; traces with bad times become bad traces (one each, with
    /// the time in the reason) and do not stop the others.
    #[test]
    fn answers_convert_every_trace(
        shipper in "[A-Za-z]{2,5}",
        waybill in "[A-Za-z0-9][A-Za-z0-9 -]{0,28}",
        times in prop::collection::btree_set(0i64..4_102_416_000, 1..12),
        bad in prop::collection::vec("[a-z ]{1,12}|20[0-9]{2}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{3}", 0..3),
        state in 0u32..5,
        seed in any::<u64>(),
    ) {
        prop_assume!(!clean_waybill(&waybill).is_empty());
        let mut traces: Vec<RawTrace> = times.iter().map(|s| RawTrace {
            accept_time: Some(format_kdniao_time(s * 1000)),
            accept_station: Some(format!("station {s}")),
            ..RawTrace::default()
        }).collect();
        for b in &bad {
            traces.push(RawTrace { accept_time: Some(b.clone()), ..RawTrace::default() });
        }
        // Kdniao sends traces in any order.
        let n = traces.len();
        for i in (1..n).rev() {
            traces.swap(i, (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize);
        }
        let answer = KdniaoAnswer {
            shipper_code: Some(shipper.clone()),
            logistic_code: Some(waybill.clone()),
            success: true,
            state: Some(state.to_string()),
            traces,
            ..KdniaoAnswer::default()
        };
        let c = answer_to_events(&answer);
        prop_assert!(c.rejected.is_none());
        let got: Vec<i64> = c.events.iter().map(|(e, _)| e.ts).collect();
        let want: Vec<i64> = times.iter().map(|s| s * 1000).collect();
        prop_assert_eq!(got, want);
        prop_assert!(c.events.iter().all(|(e, _)| e.logistic_code == clean_waybill(&waybill)
            && e.shipper_code == shipper.to_ascii_uppercase()));
        prop_assert_eq!(c.bad_traces.len(), bad.len());
        for b in &c.bad_traces {
            prop_assert!(b.reason.contains(b.accept_time.trim()), "{:?}", b);
        }
    }
}
