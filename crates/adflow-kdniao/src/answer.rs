//! Kdniao answers and pushes as Rust types, parsed leniently: `State` as number or
//! string, `Traces`/`Reason` possibly `null`, unknown fields ignored.

use chrono::{FixedOffset, NaiveDateTime, Offset, TimeZone};
use serde::{Deserialize, Deserializer, Serialize};

/// One waybill's answer: the body of an instant query reply, or one `Data[]` item of a push.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KdniaoAnswer {
    /// Merchant id echoed by Kdniao.
    #[serde(rename = "EBusinessID", default, deserialize_with = "opt_text")]
    pub ebusiness_id: Option<String>,
    /// Our order code, when one was sent.
    #[serde(default, deserialize_with = "opt_text")]
    pub order_code: Option<String>,
    /// Carrier code (`SF`, `ZTO`, ...).
    #[serde(default, deserialize_with = "opt_text")]
    pub shipper_code: Option<String>,
    /// Waybill number as Kdniao sent it (clean it before use).
    #[serde(default, deserialize_with = "opt_text")]
    pub logistic_code: Option<String>,
    /// Kdniao's success flag (`true`/`false`, also accepted as `"true"`/`1`).
    #[serde(default, deserialize_with = "lenient_bool")]
    pub success: bool,
    /// Reason text; `null` and `""` become `None`.
    #[serde(default, deserialize_with = "opt_text")]
    pub reason: Option<String>,
    /// Waybill state code (number or string in the wire format).
    #[serde(default, deserialize_with = "opt_code")]
    pub state: Option<String>,
    /// Value-added state code (8001/8002/102).
    #[serde(default, deserialize_with = "opt_code")]
    pub state_ex: Option<String>,
    /// Current location (value-added).
    #[serde(default, deserialize_with = "opt_text")]
    pub location: Option<String>,
    /// Traces, in whatever order Kdniao sent them.
    #[serde(default, deserialize_with = "null_vec")]
    pub traces: Vec<RawTrace>,
}

/// One trace as sent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawTrace {
    /// `yyyy/MM/dd HH:mm:ss` or `yyyy-MM-dd HH:mm:ss`, China Standard Time.
    #[serde(default, deserialize_with = "opt_text")]
    pub accept_time: Option<String>,
    /// Station / description text.
    #[serde(default, deserialize_with = "opt_text")]
    pub accept_station: Option<String>,
    /// Remark.
    #[serde(default, deserialize_with = "opt_text")]
    pub remark: Option<String>,
    /// Per-trace state code (value-added answers only).
    #[serde(default, deserialize_with = "opt_code")]
    pub action: Option<String>,
    /// Per-trace location (value-added answers only).
    #[serde(default, deserialize_with = "opt_text")]
    pub location: Option<String>,
}

/// A push's `RequestData` (RequestType 101/102). Items are kept as raw JSON so that one
/// malformed item cannot sink the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PushRequestData {
    /// Kdniao's id of the merchant the push is for.
    #[serde(rename = "EBusinessID", default, deserialize_with = "opt_text")]
    pub ebusiness_id: Option<String>,
    /// When Kdniao sent it (informational).
    #[serde(default, deserialize_with = "opt_text")]
    pub push_time: Option<String>,
    /// Item count as Kdniao states it (a string in the wire format).
    #[serde(default, deserialize_with = "opt_code")]
    pub count: Option<String>,
    /// The items.
    #[serde(default, deserialize_with = "null_vec")]
    pub data: Vec<serde_json::Value>,
}

impl KdniaoAnswer {
    /// True for both "no traces" shapes: `Success:false, Reason:null, Traces:[]` (old) and
    /// `Success:true, State:"0", Traces:[]` (new, Reason `暂无轨迹信息`). Neither is an error.
    pub fn is_no_traces(&self) -> bool {
        self.traces.is_empty()
            && ((!self.success && self.reason.is_none())
                || (self.success && self.state.as_deref().is_none_or(|s| s == "0"))
                || self
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("暂无轨迹")))
    }
}

/// China Standard Time, the zone of every Kdniao timestamp.
pub fn china_offset() -> FixedOffset {
    // east_opt only fails outside ±24 h; 8 h is always valid, so the fallback is unreachable.
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| chrono::Utc.fix())
}

/// Parses a Kdniao time (`yyyy/MM/dd HH:mm:ss` or `yyyy-MM-dd HH:mm:ss`, optional `.SSS`,
/// non-padded month/day accepted) in +08:00 into epoch milliseconds. `None` when malformed
/// (e.g. the sandbox's extra-digit times).
pub fn parse_kdniao_time(text: &str) -> Option<i64> {
    let t = text.trim();
    let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y/%m/%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())?;
    let local = china_offset().from_local_datetime(&naive).single()?;
    Some(local.timestamp_millis())
}

/// Formats epoch milliseconds as `yyyy-MM-dd HH:mm:ss` in +08:00 (Kdniao's reply format).
pub fn format_kdniao_time(epoch_ms: i64) -> String {
    match china_offset().timestamp_millis_opt(epoch_ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => String::new(),
    }
}

/// The current wall-clock time as `yyyy-MM-dd HH:mm:ss` in +08:00.
pub fn now_kdniao_time() -> String {
    format_kdniao_time(chrono::Utc::now().timestamp_millis())
}

fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s).filter(|s| !s.is_empty()),
        Some(other) => Some(other.to_string()),
    })
}

fn opt_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(opt_text(d)?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::Bool(b)) => b,
        Some(serde_json::Value::String(s)) => matches!(s.trim(), "true" | "True" | "1"),
        Some(serde_json::Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    })
}

fn null_vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_time_formats_in_china_time() {
        // 2014-06-25 08:05:37 +08:00 = 2014-06-25 00:05:37 UTC.
        assert_eq!(
            parse_kdniao_time("2014/06/25 08:05:37"),
            Some(1_403_654_737_000)
        );
        assert_eq!(
            parse_kdniao_time("2014-06-25 08:05:37"),
            Some(1_403_654_737_000)
        );
        assert_eq!(
            parse_kdniao_time(" 2014-06-25 08:05:37.250 "),
            Some(1_403_654_737_250)
        );
        assert_eq!(
            parse_kdniao_time("2015-3-11 16:21:06"),
            parse_kdniao_time("2015-03-11 16:21:06")
        );
        assert_eq!(parse_kdniao_time("2019-11-19 18:09:321"), None);
        assert_eq!(parse_kdniao_time("20191-11-19 18:09:32"), None);
        assert_eq!(parse_kdniao_time(""), None);
        assert_eq!(format_kdniao_time(1_403_654_737_000), "2014-06-25 08:05:37");
    }

    #[test]
    fn state_as_number_or_string_and_nulls() {
        let a: KdniaoAnswer = serde_json::from_str(
            r#"{"State":3,"StateEx":"301","Traces":null,"Reason":null,"Success":true}"#,
        )
        .unwrap();
        assert_eq!(a.state.as_deref(), Some("3"));
        assert_eq!(a.state_ex.as_deref(), Some("301"));
        assert!(a.traces.is_empty());
        assert_eq!(a.reason, None);
        let b: KdniaoAnswer = serde_json::from_str(r#"{"State":"3","Success":"true"}"#).unwrap();
        assert_eq!(b.state.as_deref(), Some("3"));
        assert!(b.success);
    }
}
