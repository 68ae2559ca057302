//! Turning Kdniao answers into `logistics` `track` events (spec §1).
//!
//! # Which trace gets which state
//! Kdniao tells the waybill's state (`State`/`StateEx`) once, at the top; only
//! value-added answers (8001/8002, push 102) carry a per-trace `Action`. The rule:
//!
//! 1. A trace with an `Action` gets it as `state_ex`, and `state` is its class
//!    ([`state_class`]).
//! 2. Otherwise the trace(s) at the latest time get the top-level `State`/`StateEx`.
//! 3. Otherwise (earlier traces without `Action`) the state is inferred: the earliest
//!    trace is `1` (collected), later ones `2` (in transit), with no `state_ex`; when the
//!    top-level state is `0` or `1` the earlier traces get that state instead (never claim
//!    more progress than Kdniao does). Such inferred events are [`TraceRole::Inferred`]:
//!    the sink emits one only if nothing was emitted before for that waybill and trace
//!    time, so a trace that was once the latest (with the real top-level state) keeps that
//!    state when later pushes make it an earlier trace.
//!
//! Traces are sorted by time (ties keep the answer's order). Traces with an unparseable
//! time are reported in [`Conversion::bad_traces`] (with their raw text, for a dead letter)
//! and skipped; the rest are kept.
//!
//! # event_id
//! `kdn-` + lower-case hex MD5 of `"<logistic_code>|<ts_ms>|<state>|<state_ex>"`: the
//! same waybill, trace time and state always give the same id, so re-pushes of the whole
//! trace produce identical ids. Two traces of one waybill with the same time and state
//! are one event (the first in the answer's order gives the station).

use serde::Serialize;

use crate::answer::{parse_kdniao_time, KdniaoAnswer, RawTrace};
use crate::sign::md5_hex_lower;

/// Cleans a waybill number: trim, drop spaces and `-`, upper-case letters.
pub fn clean_waybill(raw: &str) -> String {
    raw.trim()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

/// Masks mobile numbers in free text: every run of exactly 11 digits starting with `1`
/// becomes `138****5678` (first 3, last 4 digits), as the spec requires for displayed
/// phones. Couriers' and recipients' numbers often appear in `AcceptStation`.
pub fn mask_phones(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let run = &chars[start..i];
            if run.len() == 11 && run[0] == '1' {
                out.extend(&run[..3]);
                out.push_str("****");
                out.extend(&run[7..]);
            } else {
                out.extend(run);
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The top-level class of a Kdniao code: `0`..`6` as is, three-digit `StateEx` codes by
/// their first digit (`201` → `2`, `404` → `4`, `601` → `6`), `10` (awaiting pickup) → `0`.
/// Anything else is returned unchanged.
pub fn state_class(code: &str) -> String {
    match code {
        "10" => "0".to_string(),
        c if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_digit()) => c[..1].to_string(),
        c => c.to_string(),
    }
}

/// True when a waybill in this state will not change any more (the spec's "final" codes:
/// the signed class, 406 return signed, 415 cancelled). The poller skips such waybills.
pub fn is_final_code(code: &str) -> bool {
    matches!(code, "3" | "301" | "302" | "304" | "311" | "406" | "415")
}

/// One `track` event of the `logistics` stream, serialized as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackEvent {
    /// Always `"track"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Stable id (see the module docs).
    pub event_id: String,
    /// Trace time, epoch milliseconds.
    pub ts: i64,
    /// Kdniao carrier code.
    pub shipper_code: String,
    /// Cleaned waybill number (the Kafka message key).
    pub logistic_code: String,
    /// Kdniao `State` class code.
    pub state: String,
    /// Kdniao `StateEx` code, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_ex: Option<String>,
    /// Trace text (`AcceptStation`), when present, with mobile numbers masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
}

impl TrackEvent {
    /// The code the pipeline uses: `state_ex` when present, else `state`.
    pub fn code(&self) -> &str {
        self.state_ex.as_deref().unwrap_or(&self.state)
    }

    /// The JSON Lines form (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// How a track event's state was determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceRole {
    /// From the trace's own `Action`.
    Action,
    /// A latest trace, carrying the top-level state.
    Latest,
    /// An earlier trace whose state is inferred; emitted only once per (waybill, time).
    Inferred,
}

/// A trace that could not be turned into an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadTrace {
    /// Carrier code (upper case).
    pub shipper_code: String,
    /// Cleaned waybill number.
    pub logistic_code: String,
    /// Index of the trace in the answer's `Traces` as sent.
    pub index: usize,
    /// The raw `AcceptTime` (or empty when absent).
    pub accept_time: String,
    /// The trace as JSON (fields that were absent or null left out, mobile numbers in its
    /// text fields masked).
    pub raw: String,
    /// Why it was skipped.
    pub reason: String,
}

/// The JSON text of a trace for a dead letter: absent fields left out, mobile numbers in
/// `AcceptStation`, `Remark` and `Location` masked.
fn trace_raw(trace: &RawTrace) -> String {
    // Written by hand so that the field order is Kdniao's whatever serde_json's map order.
    let fields = [
        ("AcceptTime", &trace.accept_time, false),
        ("AcceptStation", &trace.accept_station, true),
        ("Remark", &trace.remark, true),
        ("Action", &trace.action, false),
        ("Location", &trace.location, true),
    ];
    let parts: Vec<String> = fields
        .into_iter()
        .filter_map(|(name, value, mask)| {
            let v = value.as_deref()?;
            let v = if mask { mask_phones(v) } else { v.to_string() };
            // Serializing a string cannot fail.
            Some(format!(
                "\"{name}\":{}",
                serde_json::to_string(&v).unwrap_or_default()
            ))
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Result of converting one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversion {
    /// Events in time order, deduplicated by `event_id`, with how each state was chosen.
    pub events: Vec<(TrackEvent, TraceRole)>,
    /// Skipped traces.
    pub bad_traces: Vec<BadTrace>,
    /// Set when the whole item was unusable (no waybill number, no carrier).
    pub rejected: Option<String>,
}

/// Stable event id (see the module docs).
pub fn event_id(logistic_code: &str, ts_ms: i64, state: &str, state_ex: Option<&str>) -> String {
    format!(
        "kdn-{}",
        md5_hex_lower(&format!(
            "{logistic_code}|{ts_ms}|{state}|{}",
            state_ex.unwrap_or("")
        ))
    )
}

/// Converts one answer (query reply or push item) into track events.
pub fn answer_to_events(answer: &KdniaoAnswer) -> Conversion {
    let mut out = Conversion::default();
    let logistic_code = clean_waybill(answer.logistic_code.as_deref().unwrap_or(""));
    let shipper_code = answer
        .shipper_code
        .as_deref()
        .map(|s| s.trim().to_ascii_uppercase())
        .unwrap_or_default();
    if logistic_code.is_empty() || shipper_code.is_empty() {
        if !answer.traces.is_empty() {
            out.rejected = Some("item without LogisticCode or ShipperCode".to_string());
        }
        return out;
    }

    // (index, ts, trace)
    let mut timed = Vec::with_capacity(answer.traces.len());
    for (i, t) in answer.traces.iter().enumerate() {
        let raw = t.accept_time.clone().unwrap_or_default();
        match parse_kdniao_time(&raw) {
            Some(ts) => timed.push((i, ts, t)),
            None => out.bad_traces.push(BadTrace {
                shipper_code: shipper_code.clone(),
                logistic_code: logistic_code.clone(),
                index: i,
                raw: trace_raw(t),
                reason: if raw.trim().is_empty() {
                    "trace without AcceptTime".to_string()
                } else {
                    format!("unparseable AcceptTime {raw:?}")
                },
                accept_time: raw,
            }),
        }
    }
    timed.sort_by_key(|(i, ts, _)| (*ts, *i));
    let (Some(&(_, first_ts, _)), Some(&(_, last_ts, _))) = (timed.first(), timed.last()) else {
        return out;
    };

    let top_state = answer
        .state
        .clone()
        .or_else(|| answer.state_ex.as_deref().map(state_class))
        .unwrap_or_else(|| "0".to_string());
    let top_ex = answer.state_ex.clone();
    let early_cap = matches!(top_state.as_str(), "0" | "1");

    let mut seen = std::collections::HashSet::new();
    for (_, ts, trace) in timed {
        let (state, state_ex, role) = if let Some(action) = &trace.action {
            (state_class(action), Some(action.clone()), TraceRole::Action)
        } else if ts == last_ts {
            (top_state.clone(), top_ex.clone(), TraceRole::Latest)
        } else if early_cap {
            (top_state.clone(), None, TraceRole::Inferred)
        } else if ts == first_ts {
            ("1".to_string(), None, TraceRole::Inferred)
        } else {
            ("2".to_string(), None, TraceRole::Inferred)
        };
        let id = event_id(&logistic_code, ts, &state, state_ex.as_deref());
        if !seen.insert(id.clone()) {
            continue;
        }
        let station = trace
            .accept_station
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(mask_phones);
        out.events.push((
            TrackEvent {
                kind: "track",
                event_id: id,
                ts,
                shipper_code: shipper_code.clone(),
                logistic_code: logistic_code.clone(),
                state,
                state_ex,
                station,
            },
            role,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waybill_cleaning() {
        assert_eq!(clean_waybill("  sf 1234-5678 ab\t"), "SF12345678AB");
        assert_eq!(clean_waybill("118954907573"), "118954907573");
    }

    #[test]
    fn phones_in_station_text_are_masked() {
        assert_eq!(mask_phones("电话:18718866310)"), "电话:187****6310)");
        assert_eq!(
            mask_phones("5042260908504 138001356781 13800135678"),
            "5042260908504 138001356781 138****5678"
        );
    }

    #[test]
    fn state_classes() {
        assert_eq!(state_class("201"), "2");
        assert_eq!(state_class("404"), "4");
        assert_eq!(state_class("3"), "3");
        assert_eq!(state_class("10"), "0");
    }

    fn trace(time: &str, station: &str, action: Option<&str>) -> RawTrace {
        RawTrace {
            accept_time: Some(time.into()),
            accept_station: Some(station.into()),
            action: action.map(str::to_string),
            ..RawTrace::default()
        }
    }

    #[test]
    fn per_trace_action_wins_and_bad_time_is_reported() {
        let a = KdniaoAnswer {
            shipper_code: Some("ZTO".into()),
            logistic_code: Some("7555-0001".into()),
            success: true,
            state: Some("2".into()),
            state_ex: Some("202".into()),
            traces: vec![
                trace("2024-01-02 10:00:00", "out", Some("202")),
                trace("2024-01-01 09:00:00", "collected", Some("1")),
                trace("2024-01-01 20:00:001", "broken", Some("2")),
            ],
            ..KdniaoAnswer::default()
        };
        let c = answer_to_events(&a);
        let got: Vec<_> = c
            .events
            .iter()
            .map(|(e, r)| (e.ts, e.state.as_str(), e.state_ex.as_deref(), *r))
            .collect();
        assert_eq!(
            got,
            vec![
                (1_704_070_800_000, "1", Some("1"), TraceRole::Action),
                (1_704_160_800_000, "2", Some("202"), TraceRole::Action),
            ]
        );
        assert_eq!(c.events[0].0.logistic_code, "75550001");
        assert_eq!(
            c.bad_traces,
            vec![BadTrace {
                shipper_code: "ZTO".into(),
                logistic_code: "75550001".into(),
                index: 2,
                accept_time: "2024-01-01 20:00:001".into(),
                raw:
                    r#"{"AcceptTime":"2024-01-01 20:00:001","AcceptStation":"broken","Action":"2"}"#
                        .into(),
                reason: "unparseable AcceptTime \"2024-01-01 20:00:001\"".into()
            }]
        );
    }
}
