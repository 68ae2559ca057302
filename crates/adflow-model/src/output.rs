//! The output tables of spec §4 as row structs, and the changelog entry [`Change`].
//!
//! Every output is a changelog: a [`Change`] carries a row, its `version` (the event-time
//! millisecond at which the change takes effect) and its `sign` (+1 insert, −1 retract). The
//! current contents of a table are the rows whose signs sum to a positive number.
//!
//! Times are epoch milliseconds (`i64`). Money is integer fen (`i64`). Fixed-point decimals
//! ([`Fixed`]) are held as scaled integers and written as JSON numbers with their scale, so no
//! floating-point value ever sits on a money path.

use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The output tables, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Attribution,
    OrderStatus,
    CampaignMetrics,
    Anomalies,
    Triggers,
    SuppressedPersons,
    DeadLetters,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 7] = [
        Table::Attribution,
        Table::OrderStatus,
        Table::CampaignMetrics,
        Table::Anomalies,
        Table::Triggers,
        Table::SuppressedPersons,
        Table::DeadLetters,
    ];

    /// The table's name: `OUT/<name>.jsonl` in file mode, the table name in ClickHouse.
    pub fn name(self) -> &'static str {
        match self {
            Table::Attribution => "attribution",
            Table::OrderStatus => "order_status",
            Table::CampaignMetrics => "campaign_metrics",
            Table::Anomalies => "anomalies",
            Table::Triggers => "triggers",
            Table::SuppressedPersons => "suppressed_persons",
            Table::DeadLetters => "dead_letters",
        }
    }

    /// Parses a table name as written by [`Table::name`].
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A non-negative or negative decimal with `SCALE` digits after the point, held as the integer
/// `value × 10^SCALE`. Serialized as a JSON number with exactly that precision (e.g. `0.333333`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fixed<const SCALE: u32>(pub i64);

impl<const SCALE: u32> Fixed<SCALE> {
    /// The scaled integer (`value × 10^SCALE`).
    pub fn scaled(self) -> i64 {
        self.0
    }

    /// Rounds `num / den` half away from zero to `SCALE` decimals (integer arithmetic only).
    /// `den` must be non-zero.
    pub fn from_ratio(num: i64, den: i64) -> Self {
        let scale = 10i128.pow(SCALE);
        Fixed(div_round_half_away(num as i128 * scale, den as i128) as i64)
    }

    /// [`Fixed::from_ratio`] of a wide numerator (a money sum): the result saturates at the
    /// `i64` bounds instead of wrapping. `den` must be non-zero.
    pub fn from_wide_ratio(num: i128, den: i128) -> Self {
        let scale = 10i128.pow(SCALE);
        let q = match num.checked_mul(scale) {
            Some(n) if n.checked_mul(2).is_some() => div_round_half_away(n, den),
            // |num × 10^SCALE| beyond i128/2: divide first (the quotient is far beyond i64).
            _ => num / den * scale,
        };
        Fixed(q.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

/// Integer division rounding half away from zero. `den` must be non-zero.
pub fn div_round_half_away(num: i128, den: i128) -> i128 {
    let (n, d) = if den < 0 { (-num, -den) } else { (num, den) };
    if n >= 0 {
        (2 * n + d) / (2 * d)
    } else {
        -((2 * -n + d) / (2 * d))
    }
}

impl<const SCALE: u32> fmt::Display for Fixed<SCALE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10u64.pow(SCALE);
        let neg = self.0 < 0;
        let abs = self.0.unsigned_abs();
        let (int, frac) = (abs / scale, abs % scale);
        if neg {
            f.write_str("-")?;
        }
        if SCALE == 0 {
            write!(f, "{int}")
        } else {
            write!(f, "{int}.{frac:0width$}", width = SCALE as usize)
        }
    }
}

impl<const SCALE: u32> Serialize for Fixed<SCALE> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            // Binary formats (dataflow exchange between processes) carry the scaled integer.
            return s.serialize_i64(self.0);
        }
        // Written as a JSON number token with exactly SCALE decimals; no float involved.
        let text = self.to_string();
        let raw =
            serde_json::value::RawValue::from_string(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de, const SCALE: u32> Deserialize<'de> for Fixed<SCALE> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return i64::deserialize(d).map(Fixed);
        }
        let n = serde_json::Number::deserialize(d)?;
        let text = n.to_string();
        crate::money::parse_decimal(&text, SCALE)
            .map(Fixed)
            .map_err(serde::de::Error::custom)
    }
}

/// A JSON object kept as its compact text, so rows stay `Ord + Hash`. Serialized as the object
/// itself (not as a string) in JSON output; ClickHouse stores the text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct JsonText(pub String);

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_str(&self.0);
        }
        let raw = serde_json::value::RawValue::from_string(self.0.clone())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return String::deserialize(d).map(JsonText);
        }
        let v = serde_json::Value::deserialize(d)?;
        Ok(JsonText(v.to_string()))
    }
}

/// `attribution`: one row per (order, credited click, model).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttributionRow {
    pub order_id: String,
    pub person_id: String,
    /// `last_click`, `first_click`, `linear`, `time_decay` or `position_based`.
    pub model: String,
    pub campaign_id: String,
    pub channel: String,
    pub click_event_id: String,
    pub click_ts: i64,
    pub order_ts: i64,
    /// 0..1 with 6 decimals.
    pub credit: Fixed<6>,
    pub amount_fen: i64,
    /// `amount_fen × credit` rounded half away from zero (using the 6-decimal `credit`).
    pub credited_fen: i64,
}

/// `order_status`: one row per order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderStatusRow {
    pub order_id: String,
    pub person_id: String,
    pub amount_fen: i64,
    pub order_ts: i64,
    pub phone_masked: Option<String>,
    pub campaign_id: Option<String>,
    pub channel: Option<String>,
    pub shipper_code: Option<String>,
    pub logistic_code: Option<String>,
    /// `none`, `shipped`, `collected`, `in_transit`, `out_for_delivery`, `signed`,
    /// `exception` or `refused`.
    pub delivery: String,
    pub delivery_ts: Option<i64>,
    pub cancelled: bool,
    pub after_sale: bool,
    pub refunded: bool,
    pub effective: bool,
}

/// `campaign_metrics`: one row per (campaign, channel, hour).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignMetricsRow {
    pub campaign_id: String,
    pub channel: String,
    /// Start of the hour, epoch ms.
    pub hour: i64,
    pub impressions: i64,
    pub clicks: i64,
    pub cost_fen: i64,
    pub click_cost_fen: i64,
    pub orders: i64,
    pub gmv_fen: i64,
    pub signed: i64,
    pub refused: i64,
    pub effective: i64,
    /// refused / (signed + refused), 4 decimals; null when both are 0.
    pub refusal_rate: Option<Fixed<4>>,
    /// click_cost_fen / clicks, 2 decimals; null when there is no click.
    pub cpc_fen: Option<Fixed<2>>,
}

/// `anomalies`: one row per anomaly interval.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AnomalyRow {
    /// `stalled_parcel`, `delivery_exception`, `cpc_spike` or `no_impressions`.
    pub kind: String,
    pub key: String,
    pub opened_ts: i64,
    pub closed_ts: Option<i64>,
    pub details: JsonText,
}

/// `triggers`: marketing actions decided from logistics states.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TriggerRow {
    /// `<order_id>:<kind>`.
    pub trigger_id: String,
    /// `review_coupon`, `replenishment` or `substitute`.
    pub kind: String,
    pub order_id: String,
    pub person_id: String,
    pub campaign_id: Option<String>,
    pub due_ts: i64,
}

/// `suppressed_persons`: the current set of people with a stuck or failed parcel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SuppressedPersonRow {
    pub person_id: String,
    /// `stalled_parcel` or `delivery_exception`.
    pub reason: String,
    pub since_ts: i64,
}

/// `dead_letters`: rejected input.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetterRow {
    pub stream: String,
    /// `file:line` or `topic/partition/offset`.
    pub position: String,
    /// The first 4 KiB of the raw text (cut at a character boundary).
    pub raw: String,
    /// One line saying why the message was rejected.
    pub reason: String,
    /// Wall clock when the message was seen, epoch ms.
    pub seen_ts: i64,
}

/// A row of any output table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OutputRow {
    Attribution(AttributionRow),
    OrderStatus(OrderStatusRow),
    CampaignMetrics(CampaignMetricsRow),
    Anomaly(AnomalyRow),
    Trigger(TriggerRow),
    SuppressedPerson(SuppressedPersonRow),
    DeadLetter(DeadLetterRow),
}

impl OutputRow {
    /// The table this row belongs to.
    pub fn table(&self) -> Table {
        match self {
            OutputRow::Attribution(_) => Table::Attribution,
            OutputRow::OrderStatus(_) => Table::OrderStatus,
            OutputRow::CampaignMetrics(_) => Table::CampaignMetrics,
            OutputRow::Anomaly(_) => Table::Anomalies,
            OutputRow::Trigger(_) => Table::Triggers,
            OutputRow::SuppressedPerson(_) => Table::SuppressedPersons,
            OutputRow::DeadLetter(_) => Table::DeadLetters,
        }
    }

    /// The row's fields as a JSON object (no `version`/`sign`).
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            OutputRow::Attribution(r) => serde_json::to_value(r),
            OutputRow::OrderStatus(r) => serde_json::to_value(r),
            OutputRow::CampaignMetrics(r) => serde_json::to_value(r),
            OutputRow::Anomaly(r) => serde_json::to_value(r),
            OutputRow::Trigger(r) => serde_json::to_value(r),
            OutputRow::SuppressedPerson(r) => serde_json::to_value(r),
            OutputRow::DeadLetter(r) => serde_json::to_value(r),
        };
        // Serializing these plain structs cannot fail: all keys are strings and all values
        // are strings, integers, booleans or well-formed JSON text.
        v.unwrap_or(serde_json::Value::Null)
    }

    /// Parses a row of `table` from a JSON object (extra keys such as `version` are ignored).
    pub fn from_json(table: Table, v: serde_json::Value) -> Result<OutputRow, serde_json::Error> {
        Ok(match table {
            Table::Attribution => OutputRow::Attribution(serde_json::from_value(v)?),
            Table::OrderStatus => OutputRow::OrderStatus(serde_json::from_value(v)?),
            Table::CampaignMetrics => OutputRow::CampaignMetrics(serde_json::from_value(v)?),
            Table::Anomalies => OutputRow::Anomaly(serde_json::from_value(v)?),
            Table::Triggers => OutputRow::Trigger(serde_json::from_value(v)?),
            Table::SuppressedPersons => OutputRow::SuppressedPerson(serde_json::from_value(v)?),
            Table::DeadLetters => OutputRow::DeadLetter(serde_json::from_value(v)?),
        })
    }
}

/// One changelog entry: `row` takes effect (`sign` = +1) or is retracted (`sign` = −1) at event
/// time `version` (epoch ms).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Change {
    pub row: OutputRow,
    pub version: i64,
    pub sign: i64,
}

impl Change {
    /// The file-mode changelog line: all of the row's fields (in the row struct's order)
    /// plus `version` and `sign`, without a trailing newline.
    pub fn to_json_line(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json_line(&mut out);
        out.pop(); // the newline
                   // `write_json_line` writes serde_json output and ASCII only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the changelog line of [`Change::to_json_line`] and a `\n` to `out`. The row is
    /// serialized straight into `out` (no intermediate JSON value); `version` and `sign` are
    /// spliced in before the closing brace.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let res = match &self.row {
            OutputRow::Attribution(r) => serde_json::to_writer(&mut *out, r),
            OutputRow::OrderStatus(r) => serde_json::to_writer(&mut *out, r),
            OutputRow::CampaignMetrics(r) => serde_json::to_writer(&mut *out, r),
            OutputRow::Anomaly(r) => serde_json::to_writer(&mut *out, r),
            OutputRow::Trigger(r) => serde_json::to_writer(&mut *out, r),
            OutputRow::SuppressedPerson(r) => serde_json::to_writer(&mut *out, r),
            OutputRow::DeadLetter(r) => serde_json::to_writer(&mut *out, r),
        };
        // Serializing these plain structs cannot fail (string keys; strings, integers,
        // booleans or well-formed JSON text as values); should it, the line keeps only
        // version and sign rather than being half written.
        let wrote_fields = res.is_ok() && out.len() > start + 2 && out.last() == Some(&b'}');
        if wrote_fields {
            out.pop();
            out.push(b',');
        } else {
            out.truncate(start);
            out.push(b'{');
        }
        let mut v = itoa::Buffer::new();
        out.extend_from_slice(b"\"version\":");
        out.extend_from_slice(v.format(self.version).as_bytes());
        out.extend_from_slice(b",\"sign\":");
        out.extend_from_slice(v.format(self.sign).as_bytes());
        out.extend_from_slice(b"}\n");
    }

    /// Parses a changelog line of `table` as written by [`Change::to_json_line`].
    pub fn from_json_line(table: Table, line: &str) -> Result<Change, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let version = v.get("version").and_then(|x| x.as_i64()).unwrap_or(0);
        let sign = v.get("sign").and_then(|x| x.as_i64()).unwrap_or(0);
        Ok(Change {
            row: OutputRow::from_json(table, v)?,
            version,
            sign,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_formats_with_scale() {
        assert_eq!(Fixed::<6>(333_333).to_string(), "0.333333");
        assert_eq!(Fixed::<4>(10_000).to_string(), "1.0000");
        assert_eq!(Fixed::<2>(-5).to_string(), "-0.05");
        assert_eq!(Fixed::<6>::from_ratio(1, 3), Fixed(333_333));
        assert_eq!(Fixed::<6>::from_ratio(2, 3), Fixed(666_667));
        assert_eq!(Fixed::<2>::from_ratio(-1, 8), Fixed(-13));
    }

    #[test]
    fn change_line_round_trips() {
        let c = Change {
            row: OutputRow::Trigger(TriggerRow {
                trigger_id: "o1:substitute".into(),
                kind: "substitute".into(),
                order_id: "o1".into(),
                person_id: "u1".into(),
                campaign_id: None,
                due_ts: 5,
            }),
            version: 7,
            sign: -1,
        };
        let line = c.to_json_line();
        assert!(
            line.contains("\"version\":7") && line.contains("\"sign\":-1"),
            "{line}"
        );
        assert_eq!(Change::from_json_line(Table::Triggers, &line).unwrap(), c);
    }

    #[test]
    fn change_line_is_exact_json() {
        let c = Change {
            row: OutputRow::SuppressedPerson(SuppressedPersonRow {
                person_id: "u\"1".into(),
                reason: "stalled_parcel".into(),
                since_ts: 12,
            }),
            version: -3,
            sign: 1,
        };
        let mut out = b"prefix".to_vec();
        c.write_json_line(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "prefix{\"person_id\":\"u\\\"1\",\"reason\":\"stalled_parcel\",\"since_ts\":12,\"version\":-3,\"sign\":1}\n"
        );
        assert_eq!(
            Change::from_json_line(Table::SuppressedPersons, &c.to_json_line()).unwrap(),
            c
        );
    }

    #[test]
    fn details_serialize_as_object() {
        let r = AnomalyRow {
            kind: "cpc_spike".into(),
            key: "c1".into(),
            opened_ts: 0,
            closed_ts: Some(300_000),
            details: JsonText(r#"{"clicks":20}"#.into()),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["details"]["clicks"], 20);
    }
}
