//! The bodies the actions send: trigger webhooks, alerts (generic JSON or a WeCom robot's
//! `markdown` message) and campaign pauses. Field by field in `docs/actions.md`.

use adflow_model::output::{AnomalyRow, TriggerRow};
use adflow_model::time::format_local;
use serde_json::{json, Value};

/// A WeCom robot refuses markdown content over 4096 bytes.
pub const WECOM_MAX_BYTES: usize = 4096;

/// The trigger webhook's body: the `triggers` row.
pub fn trigger_body(t: &TriggerRow) -> Value {
    json!({
        "trigger_id": t.trigger_id,
        "kind": t.kind,
        "order_id": t.order_id,
        "person_id": t.person_id,
        "campaign_id": t.campaign_id,
        "due_ts": t.due_ts,
    })
}

fn details(a: &AnomalyRow) -> Value {
    serde_json::from_str(&a.details.0).unwrap_or(Value::Null)
}

/// A readable title per anomaly kind.
fn title(kind: &str) -> &str {
    match kind {
        "cpc_spike" => "CPC spike",
        "no_impressions" => "Campaign without impressions",
        "delivery_exception" => "Delivery exception",
        "stalled_parcel" => "Stalled parcel",
        "spend_mismatch" => "Spend mismatch",
        other => other,
    }
}

fn key_name(kind: &str) -> &str {
    match kind {
        "cpc_spike" | "no_impressions" | "spend_mismatch" => "campaign",
        _ => "waybill",
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A WeCom group robot message: `{"msgtype":"markdown","markdown":{"content":...}}`.
pub fn wecom(content: String) -> Value {
    json!({"msgtype": "markdown", "markdown": {"content": cut(content, WECOM_MAX_BYTES)}})
}

fn detail_lines(d: &Value) -> String {
    let mut out = String::new();
    if let Value::Object(m) = d {
        for (k, v) in m {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("> {k}: {v}\n"));
        }
    }
    out
}

fn zone_name(zone: i32) -> String {
    let sign = if zone < 0 { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", zone.abs() / 60, zone.abs() % 60)
}

/// The alert of one anomaly interval, as a generic JSON body or a WeCom message.
pub fn anomaly_alert(id: &str, a: &AnomalyRow, wecom_format: bool, zone: i32) -> Value {
    if !wecom_format {
        return json!({
            "alert_id": id,
            "kind": a.kind,
            "key": a.key,
            "opened_ts": a.opened_ts,
            "closed_ts": a.closed_ts,
            "details": details(a),
        });
    }
    let window = match a.closed_ts {
        Some(c) => format!(
            "{} – {} ({})",
            format_local(a.opened_ts, zone),
            format_local(c, zone),
            zone_name(zone)
        ),
        None => format!(
            "since {} ({}), open",
            format_local(a.opened_ts, zone),
            zone_name(zone)
        ),
    };
    wecom(format!(
        "### adflow alert: <font color=\"warning\">{}</font>\n> {}: **{}**\n> {window}\n{}> alert id: {id}",
        title(&a.kind),
        key_name(&a.kind),
        a.key,
        detail_lines(&details(a)),
    ))
}

/// The alert when the number of open intervals of `kind` rose above `threshold`.
pub fn count_alert(
    id: &str,
    kind: &str,
    open: i64,
    threshold: u64,
    at: i64,
    wecom_format: bool,
    zone: i32,
) -> Value {
    if !wecom_format {
        return json!({
            "alert_id": id,
            "kind": format!("{kind}_count"),
            "open": open,
            "threshold": threshold,
            "at": at,
        });
    }
    wecom(format!(
        "### adflow alert: <font color=\"warning\">{open} open {} intervals</font>\n> above the threshold of {threshold}\n> at {} ({})\n> alert id: {id}",
        kind.replace('_', " "),
        format_local(at, zone),
        zone_name(zone)
    ))
}

/// The body of a campaign pause.
pub fn pause_body(id: &str, a: &AnomalyRow) -> Value {
    json!({
        "action": "pause_campaign",
        "pause_id": id,
        "campaign_id": a.key,
        "reason": a.kind,
        "anomaly": {
            "kind": a.kind,
            "key": a.key,
            "opened_ts": a.opened_ts,
            "closed_ts": a.closed_ts,
            "details": details(a),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use adflow_model::output::JsonText;

    fn spike() -> AnomalyRow {
        AnomalyRow {
            kind: "cpc_spike".into(),
            key: "c_7".into(),
            opened_ts: 1_764_547_500_000,
            closed_ts: Some(1_764_547_800_000),
            details: JsonText(r#"{"baseline_cpc_fen":120.5,"clicks":31,"cpc_fen":260.0}"#.into()),
        }
    }

    #[test]
    fn wecom_markdown_message() {
        let v = anomaly_alert("alert:cpc_spike:c_7:1764547500000", &spike(), true, 480);
        assert_eq!(v["msgtype"], "markdown");
        let c = v["markdown"]["content"].as_str().unwrap();
        assert_eq!(
            c,
            "### adflow alert: <font color=\"warning\">CPC spike</font>\n> campaign: **c_7**\n\
             > 2025-12-01 08:05:00 – 2025-12-01 08:10:00 (+08:00)\n> baseline_cpc_fen: 120.5\n\
             > clicks: 31\n> cpc_fen: 260.0\n> alert id: alert:cpc_spike:c_7:1764547500000"
        );
        assert_eq!(v.as_object().unwrap().len(), 2);
        let long = wecom("字".repeat(2000));
        assert!(long["markdown"]["content"].as_str().unwrap().len() <= WECOM_MAX_BYTES);
    }

    #[test]
    fn generic_alert_carries_the_row() {
        let v = anomaly_alert("a1", &spike(), false, 480);
        assert_eq!(v["kind"], "cpc_spike");
        assert_eq!(v["details"]["clicks"], 31);
        assert_eq!(v["closed_ts"], 1_764_547_800_000i64);
    }
}
