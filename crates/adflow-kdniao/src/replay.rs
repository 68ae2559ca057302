//! Turning a spec §1 `logistics.jsonl` (track events) back into Kdniao waybills, so that the
//! stand-in server ([`crate::sandbox`]) can push a data set's track sequences to a receiver
//! (`adflow kdniao sandbox --tracks FILE`, used by `scripts/demo-kdniao.sh`).
//!
//! Every track becomes a trace of its waybill (grouped by cleaned `logistic_code`) with
//! `AcceptTime` = its `ts` in +08:00 (milliseconds kept as `.SSS`), `AcceptStation` = its
//! `station`, and `Action` = its code (`state_ex` when present, else `state`), so that a
//! value-added push (RequestType 102) gives every trace its own state again. The waybill's
//! top-level `State`/`StateEx` are those of its latest trace. Traces are in time order.
//!
//! Lines the pipeline would reject (not JSON, not a `track`, a missing or non-string
//! `event_id`/`logistic_code`/`shipper_code`, no `state`, an unparseable `ts`) are skipped and
//! counted; so are repeated `event_id`s (exact duplicates).

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;

use chrono::DateTime;
use serde::Serialize;
use serde_json::Value;

use crate::answer::{format_kdniao_time, parse_kdniao_time, KdniaoAnswer, RawTrace};
use crate::track::{clean_waybill, state_class};

/// What [`waybills_from_tracks`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrackLoad {
    /// Non-blank lines read.
    pub lines: u64,
    /// Tracks turned into traces.
    pub tracks: u64,
    /// Lines skipped as unusable (see the module docs).
    pub skipped: u64,
    /// Lines skipped because their `event_id` was seen before.
    pub duplicates: u64,
    /// Waybills built.
    pub waybills: u64,
}

struct Pending {
    shipper: String,
    /// (ts, order read, code, station)
    traces: Vec<(i64, usize, String, Option<String>)>,
}

/// A non-empty JSON string (spec §1: identifiers and codes are strings).
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// A Kdniao state code (spec §1: a JSON integer or a string of digits), normalised the way
/// the pipeline reads it (`"010"` is 10). `Ok(None)`: absent, null or empty; `Err`: the pipeline
/// would reject the line.
fn code(v: Option<&Value>) -> Result<Option<String>, ()> {
    let text = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(()),
    };
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u32>()
        .map(|c| Some(c.to_string()))
        .map_err(|_| ())
}

/// Spec §1 event time: epoch ms, RFC 3339, or Kdniao's local forms in +08:00.
fn event_ts(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_kdniao_time(s).or_else(|| {
            DateTime::parse_from_rfc3339(s.trim())
                .ok()
                .map(|t| t.timestamp_millis())
        }),
        _ => None,
    }
}

/// Kdniao's `AcceptTime` form of epoch ms (+08:00), with `.SSS` when not whole seconds.
pub fn accept_time(ts_ms: i64) -> String {
    let base = format_kdniao_time(ts_ms);
    match ts_ms.rem_euclid(1000) {
        0 => base,
        ms => format!("{base}.{ms:03}"),
    }
}

/// Reads spec §1 `logistics` lines and builds one Kdniao answer per waybill (see the module
/// docs), in order of first appearance.
pub fn waybills_from_tracks(
    reader: impl BufRead,
) -> std::io::Result<(Vec<KdniaoAnswer>, TrackLoad)> {
    let mut load = TrackLoad::default();
    let mut seen_ids = HashSet::new();
    let mut order: Vec<String> = Vec::new();
    let mut by_waybill: BTreeMap<String, Pending> = BTreeMap::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        load.lines += 1;
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&line) else {
            load.skipped += 1;
            continue;
        };
        let waybill = text(obj.get("logistic_code"))
            .map(|w| clean_waybill(&w))
            .unwrap_or_default();
        let shipper = text(obj.get("shipper_code"))
            .map(|s| s.to_ascii_uppercase())
            .unwrap_or_default();
        let (Ok(state), Ok(state_ex)) = (code(obj.get("state")), code(obj.get("state_ex"))) else {
            load.skipped += 1;
            continue;
        };
        let code = state_ex.or_else(|| state.clone());
        let ts = event_ts(obj.get("ts"));
        let id = text(obj.get("event_id"));
        let (true, false, false, Some(_), Some(code), Some(ts), Some(id)) = (
            obj.get("type").and_then(Value::as_str) == Some("track"),
            waybill.is_empty(),
            shipper.is_empty(),
            state,
            code,
            ts,
            id,
        ) else {
            load.skipped += 1;
            continue;
        };
        if !seen_ids.insert(id) {
            load.duplicates += 1;
            continue;
        }
        let station = text(obj.get("station"));
        let entry = by_waybill.entry(waybill.clone()).or_insert_with(|| {
            order.push(waybill.clone());
            Pending {
                shipper: shipper.clone(),
                traces: Vec::new(),
            }
        });
        entry.traces.push((ts, n, code, station));
        load.tracks += 1;
    }
    let mut out = Vec::with_capacity(order.len());
    for waybill in order {
        let Some(mut p) = by_waybill.remove(&waybill) else {
            continue;
        };
        p.traces.sort_by_key(|(ts, n, _, _)| (*ts, *n));
        let last_code = p.traces.last().map(|(_, _, c, _)| c.clone());
        out.push(KdniaoAnswer {
            shipper_code: Some(p.shipper),
            logistic_code: Some(waybill),
            success: true,
            state: last_code.as_deref().map(state_class),
            state_ex: last_code,
            traces: p
                .traces
                .into_iter()
                .map(|(ts, _, code, station)| RawTrace {
                    accept_time: Some(accept_time(ts)),
                    accept_station: station,
                    action: Some(code),
                    ..RawTrace::default()
                })
                .collect(),
            ..KdniaoAnswer::default()
        });
    }
    load.waybills = out.len() as u64;
    Ok((out, load))
}

/// The first `k` traces of `answer` (Kdniao's view of the waybill when its `k`-th trace was
/// the latest): top-level `State`/`StateEx` from that trace's `Action` when it has one.
pub fn prefix(answer: &KdniaoAnswer, k: usize) -> KdniaoAnswer {
    let mut a = answer.clone();
    a.traces.truncate(k);
    if let Some(action) = a.traces.last().and_then(|t| t.action.clone()) {
        a.state = Some(state_class(&action));
        a.state_ex = Some(action);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::answer_to_events;

    #[test]
    fn tracks_round_trip_through_a_value_added_answer() {
        let text = [
            r#"{"type":"track","event_id":"t2","ts":"2024/06/03 12:48:57.250","shipper_code":"sf","logistic_code":"sf 12-3","state":2,"state_ex":201,"station":"转运"}"#,
            r#"{"type":"track","event_id":"t1","ts":1717390104000,"shipper_code":"SF","logistic_code":"SF123","state":"1"}"#,
            r#"{"type":"track","event_id":"t1","ts":1717390104000,"shipper_code":"SF","logistic_code":"SF123","state":"1"}"#,
            r#"{"type":"track","event_id":"t3","ts":"2024-06-04T09:00:00+08:00","shipper_code":"SF","logistic_code":"SF123","state":4,"state_ex":"404"}"#,
            r#"{"type":"view","event_id":"x","ts":1,"shipper_code":"SF","logistic_code":"SF1","state":"2"}"#,
            "not json",
            "",
            r#"{"type":"track","event_id":"t9","ts":"yesterday","shipper_code":"SF","logistic_code":"SF9","state":"2"}"#,
            r#"{"type":"track","event_id":"t8","ts":1,"shipper_code":"SF","logistic_code":123,"state":"2"}"#,
            r#"{"type":"track","ts":1,"shipper_code":"SF","logistic_code":"SF7","state":"2"}"#,
            r#"{"type":"track","event_id":"t7","ts":1,"shipper_code":"SF","logistic_code":"SF7","state":"2","state_ex":"x"}"#,
            r#"{"type":"track","event_id":"t6","ts":1,"shipper_code":"SF","logistic_code":"SF7","state":2.5}"#,
            r#"{"type":"track","event_id":"z1","ts":1717390104000,"shipper_code":"ZTO","logistic_code":"7555","state":0,"state_ex":10}"#,
        ]
        .join("\n");
        let (waybills, load) = waybills_from_tracks(text.as_bytes()).unwrap();
        assert_eq!(
            load,
            TrackLoad {
                lines: 12,
                tracks: 4,
                skipped: 7,
                duplicates: 1,
                waybills: 2
            }
        );
        let sf = &waybills[0];
        assert_eq!(sf.logistic_code.as_deref(), Some("SF123"));
        assert_eq!(sf.shipper_code.as_deref(), Some("SF"));
        assert_eq!(
            (sf.state.as_deref(), sf.state_ex.as_deref()),
            (Some("4"), Some("404"))
        );
        let events: Vec<(i64, String, Option<String>, Option<String>)> = answer_to_events(sf)
            .events
            .into_iter()
            .map(|(e, _)| (e.ts, e.state, e.state_ex, e.station))
            .collect();
        assert_eq!(
            events,
            vec![
                (1_717_390_104_000, "1".into(), Some("1".into()), None),
                (
                    1_717_390_137_250,
                    "2".into(),
                    Some("201".into()),
                    Some("转运".into())
                ),
                (1_717_462_800_000, "4".into(), Some("404".into()), None),
            ]
        );
        let zto = answer_to_events(&waybills[1]);
        assert_eq!(zto.events[0].0.state, "0");
        assert_eq!(zto.events[0].0.code(), "10");

        let first_two = prefix(sf, 2);
        assert_eq!(first_two.traces.len(), 2);
        assert_eq!(
            (first_two.state.as_deref(), first_two.state_ex.as_deref()),
            (Some("2"), Some("201"))
        );
    }
}
