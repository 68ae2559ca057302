//! Parsing one raw message into a validated [`Event`] (spec §1), or a one-line rejection reason.
//!
//! Parsing borrows from the raw bytes (`serde_json` over `&RawValue` fields), checks every field
//! with its own message, and never panics on any input. Identifiers are trimmed; waybill numbers
//! are cleaned; phones become a keyed hash plus a masked form (the raw phone never leaves this
//! module); addresses are validated and dropped (no output carries them).

use crate::identity::{clean_waybill, is_junk, mask_phone, normalize_phone, phone_hash};
use crate::money::parse_fen;
use crate::stream::StreamKind;
use crate::sym::Sym;
use crate::time::{check_range, parse_ts_text};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Settings that parsing depends on.
#[derive(Clone, Debug)]
pub struct ParseConfig {
    /// Zone of zone-less timestamps, minutes east of UTC (default +480, China Standard Time).
    pub zone_offset_minutes: i32,
    /// Secret of the phone HMAC.
    pub phone_secret: Vec<u8>,
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            zone_offset_minutes: 480,
            phone_secret: b"adflow-default-phone-secret".to_vec(),
        }
    }
}

/// A flag set on an order by an `order_status` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderFlag {
    Cancelled,
    AfterSale,
    Refunded,
}

/// An identity node (spec §3): the kind of identifier and its (trimmed, non-junk) text.
///
/// Ordered by kind (users first) and then by the text, so the smallest node of a component
/// that has a user is the user with the smallest id in string order: the component's person.
/// Nodes are compared and cloned as [`Sym`]s (no allocation, no shared `user:`/`device:`
/// prefix to compare); [`IdNode::key`] is the spec's textual form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IdNode {
    User(Sym),
    Device(Sym),
    /// Keyed hash of the phone.
    Phone(Sym),
}

impl IdNode {
    /// The node of user id `id`, or `None` when it is junk (surrounding spaces are trimmed).
    pub fn user(id: &Sym) -> Option<IdNode> {
        (!is_junk(id)).then(|| IdNode::User(trimmed(id)))
    }

    /// The node of device id `id`, or `None` when it is junk.
    pub fn device(id: &Sym) -> Option<IdNode> {
        (!crate::identity::is_junk_device(id)).then(|| IdNode::Device(trimmed(id)))
    }

    /// The user id of a user node.
    pub fn user_id(&self) -> Option<&Sym> {
        match self {
            IdNode::User(u) => Some(u),
            _ => None,
        }
    }

    /// The node's [`NodeId`]: a 128-bit hash of its kind and text.
    pub fn id(&self) -> NodeId {
        let (kind, text) = match self {
            IdNode::User(s) => (0, s),
            IdNode::Device(s) => (1, s),
            IdNode::Phone(s) => (2, s),
        };
        NodeId(xxhash_rust::xxh3::xxh3_128_with_seed(text.as_bytes(), kind))
    }

    /// `user:<id>`, `device:<id>` or `phone:<hash>`.
    pub fn key(&self) -> String {
        match self {
            IdNode::User(s) => format!("user:{s}"),
            IdNode::Device(s) => format!("device:{s}"),
            IdNode::Phone(s) => format!("phone:{s}"),
        }
    }
}

/// A fixed-width stand-in for an [`IdNode`] as the key of identity's arrangements: a 128-bit
/// hash (xxh3) of the node's kind and text. Keys compare as integers instead of following a
/// pointer to compare text, which is what made identity the costliest part of live mode. Two
/// distinct nodes share an id with probability about n²/2¹²⁹ for n nodes (below 10⁻²⁴ for a
/// billion nodes); the order of ids means nothing (labels are still [`IdNode`]s, compared as
/// text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u128);

/// `s` without surrounding whitespace (the same symbol when there is none).
fn trimmed(s: &Sym) -> Sym {
    let t = s.trim();
    if t.len() == s.len() {
        s.clone()
    } else {
        Sym::new(t)
    }
}

/// A validated input event. `event_id` and `ts` (epoch ms) are common to all.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    pub event_id: Sym,
    pub ts: i64,
    pub body: Body,
}

/// The type-specific part of an [`Event`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Body {
    Impression {
        campaign_id: Sym,
        channel: Sym,
        device_id: Sym,
        cost_fen: i64,
    },
    Click {
        campaign_id: Sym,
        channel: Sym,
        device_id: Sym,
        cost_fen: i64,
        /// `None` when absent or junk.
        user_id: Option<Sym>,
    },
    Order {
        order_id: Sym,
        user_id: Sym,
        amount_fen: i64,
        /// Keyed hash of the normalized phone, `None` when absent or junk.
        phone_hash: Option<String>,
        phone_masked: Option<String>,
    },
    OrderStatus {
        order_id: Sym,
        flag: OrderFlag,
    },
    Shipment {
        order_id: Sym,
        shipper_code: Sym,
        /// Cleaned waybill number.
        logistic_code: Sym,
    },
    Track {
        shipper_code: Sym,
        /// Cleaned waybill number.
        logistic_code: Sym,
        state: u32,
        state_ex: Option<u32>,
        station: Option<String>,
    },
    /// An identity link: the non-junk identifiers it names (at least two).
    Link {
        nodes: Vec<IdNode>,
    },
}

impl Body {
    /// The stream this kind of event travels on.
    pub fn stream(&self) -> StreamKind {
        match self {
            Body::Impression { .. } | Body::Click { .. } => StreamKind::AdEvents,
            Body::Order { .. } | Body::OrderStatus { .. } | Body::Shipment { .. } => {
                StreamKind::Orders
            }
            Body::Track { .. } => StreamKind::Logistics,
            Body::Link { .. } => StreamKind::Identity,
        }
    }

    /// The event's `type` as written in the input.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Impression { .. } => "impression",
            Body::Click { .. } => "click",
            Body::Order { .. } => "order",
            Body::OrderStatus { .. } => "order_status",
            Body::Shipment { .. } => "shipment",
            Body::Track { .. } => "track",
            Body::Link { .. } => "link",
        }
    }
}

/// The Kdniao code of a track: its `state_ex` when present, else its `state`.
pub fn track_code(state: u32, state_ex: Option<u32>) -> u32 {
    state_ex.unwrap_or(state)
}

#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<&'a RawValue>,
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
    #[serde(borrow)]
    campaign_id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    device_id: Option<&'a RawValue>,
    #[serde(borrow)]
    cost: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    phone: Option<&'a RawValue>,
    #[serde(borrow)]
    address: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    shipper_code: Option<&'a RawValue>,
    #[serde(borrow)]
    logistic_code: Option<&'a RawValue>,
    #[serde(borrow)]
    state: Option<&'a RawValue>,
    #[serde(borrow)]
    state_ex: Option<&'a RawValue>,
    #[serde(borrow)]
    station: Option<&'a RawValue>,
}

type R<T> = Result<T, String>;

fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

/// A JSON string field (required). Identifiers are trimmed.
fn string(name: &str, v: Option<&RawValue>) -> R<String> {
    match v {
        None => Err(format!("missing required field `{name}`")),
        Some(v) if is_null(v) => Err(format!("missing required field `{name}` (null)")),
        Some(v) => opt_string(name, Some(v)).map(|s| s.unwrap_or_default()),
    }
}

/// The value of JSON string literal `t`: without escapes it is the text between the quotes
/// (serde_json validated the literal when it split the object), otherwise it is decoded.
fn json_str<'a>(name: &str, t: &'a str) -> R<std::borrow::Cow<'a, str>> {
    let s: std::borrow::Cow<'a, str> = if t.len() >= 2 && t.ends_with('"') && !t.contains('\\') {
        std::borrow::Cow::Borrowed(&t[1..t.len() - 1])
    } else {
        serde_json::from_str(t).map_err(|e| format!("field `{name}`: {e}"))?
    };
    if s.len() > MAX_ID_BYTES && ID_FIELDS.contains(&name) {
        return Err(format!(
            "field `{name}` is {} bytes long, more than the {MAX_ID_BYTES} an identifier may have",
            s.len()
        ));
    }
    Ok(s)
}

/// The longest identifier accepted (bytes, before trimming): a longer `event_id`, `*_id`,
/// `phone`, `channel` or code is a dead letter, so one hostile line cannot make every state
/// record that holds it large. Kdniao waybill numbers have at most 30 characters.
pub const MAX_ID_BYTES: usize = 256;
const ID_FIELDS: [&str; 9] = [
    "event_id",
    "campaign_id",
    "channel",
    "device_id",
    "user_id",
    "order_id",
    "phone",
    "shipper_code",
    "logistic_code",
];

/// A JSON string field (optional; null means absent).
fn opt_string(name: &str, v: Option<&RawValue>) -> R<Option<String>> {
    match v {
        None => Ok(None),
        Some(v) if is_null(v) => Ok(None),
        Some(v) => {
            let t = v.get();
            if !t.starts_with('"') {
                return Err(format!("field `{name}` must be a string, got {}", kind(t)));
            }
            Ok(Some(json_str(name, t)?.trim().to_string()))
        }
    }
}

/// A non-empty identifier.
/// A required, non-empty JSON string field as a [`Sym`] (interned when `intern`: identifiers
/// with few distinct values), without an intermediate `String`.
fn ident_sym(name: &str, v: Option<&RawValue>, intern: bool) -> R<Sym> {
    let s = str_sym(name, v, intern)?;
    if s.is_empty() {
        return Err(format!("field `{name}` is empty"));
    }
    Ok(s)
}

/// A required JSON string field (trimmed) as a [`Sym`].
fn str_sym(name: &str, v: Option<&RawValue>, intern: bool) -> R<Sym> {
    let v = match v {
        None => return Err(format!("missing required field `{name}`")),
        Some(v) if is_null(v) => return Err(format!("missing required field `{name}` (null)")),
        Some(v) => v,
    };
    let t = v.get();
    if !t.starts_with('"') {
        return Err(format!("field `{name}` must be a string, got {}", kind(t)));
    }
    let s = json_str(name, t)?;
    let s = s.trim();
    Ok(if intern {
        Sym::interned(s)
    } else {
        Sym::new(s)
    })
}

fn ident(name: &str, v: Option<&RawValue>) -> R<String> {
    let s = string(name, v)?;
    if s.is_empty() {
        return Err(format!("field `{name}` is empty"));
    }
    Ok(s)
}

fn kind(t: &str) -> &'static str {
    match t.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Money: a JSON number or a decimal string, at most 2 decimals, non-negative.
fn money(name: &str, v: Option<&RawValue>, default: Option<i64>) -> R<i64> {
    let v = match v {
        Some(v) if !is_null(v) => v,
        _ => return default.ok_or_else(|| format!("missing required field `{name}`")),
    };
    let t = v.get();
    let text: std::borrow::Cow<'_, str> = if t.starts_with('"') {
        serde_json::from_str(t).map_err(|e| format!("field `{name}`: {e}"))?
    } else if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        std::borrow::Cow::Borrowed(t)
    } else {
        return Err(format!(
            "field `{name}` must be a number or a decimal string, got {}",
            kind(t)
        ));
    };
    parse_fen(&text).map_err(|e| format!("field `{name}`: {e}"))
}

/// A Kdniao code: JSON integer or a string of digits.
fn code(name: &str, v: Option<&RawValue>) -> R<Option<u32>> {
    let v = match v {
        Some(v) if !is_null(v) => v,
        _ => return Ok(None),
    };
    let t = v.get();
    let text: std::borrow::Cow<'_, str> = if t.starts_with('"') {
        serde_json::from_str(t).map_err(|e| format!("field `{name}`: {e}"))?
    } else {
        std::borrow::Cow::Borrowed(t)
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u32>()
        .map(Some)
        .map_err(|_| format!("field `{name}` is not a Kdniao state code: {}", short(text)))
}

fn short(t: &str) -> String {
    let s: String = t.chars().take(40).collect();
    if s.len() < t.len() {
        format!("{s}…")
    } else {
        s
    }
}

fn timestamp(v: Option<&RawValue>, cfg: &ParseConfig) -> R<i64> {
    let v = match v {
        Some(v) if !is_null(v) => v,
        _ => return Err("missing required field `ts`".into()),
    };
    let t = v.get();
    if t.starts_with('"') {
        let s: std::borrow::Cow<'_, str> =
            serde_json::from_str(t).map_err(|e| format!("field `ts`: {e}"))?;
        parse_ts_text(&s, cfg.zone_offset_minutes).map_err(|e| format!("field `ts`: {e}"))
    } else if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        let ms: i64 = t.parse().map_err(|_| {
            format!(
                "field `ts` must be integer epoch milliseconds, got {}",
                short(t)
            )
        })?;
        check_range(ms).map_err(|e| format!("field `ts`: {e}"))
    } else {
        Err(format!(
            "field `ts` must be a number or a string, got {}",
            kind(t)
        ))
    }
}

/// Parses one raw message of `stream` into an [`Event`], or returns a one-line reason.
pub fn parse_event(stream: StreamKind, raw: &[u8], cfg: &ParseConfig) -> Result<Event, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    // A UTF-8 byte-order mark (editors put one at the start of a file) is not part of the
    // JSON text: accepted and ignored.
    let trimmed = text.strip_prefix('\u{feff}').unwrap_or(text).trim();
    if !trimmed.starts_with('{') {
        return Err(if trimmed.is_empty() {
            "empty message".to_string()
        } else {
            "not a JSON object".to_string()
        });
    }
    let f: Fields<'_> = serde_json::from_str(trimmed).map_err(|e| format!("invalid JSON: {e}"))?;
    let ty = string("type", f.ty)?;
    let event_id = ident_sym("event_id", f.event_id, false)?;
    let ts = timestamp(f.ts, cfg)?;
    let allowed: &[&str] = match stream {
        StreamKind::AdEvents => &["impression", "click"],
        StreamKind::Orders => &["order", "order_status", "shipment"],
        StreamKind::Logistics => &["track"],
        StreamKind::Identity => &["link"],
    };
    if !allowed.contains(&ty.as_str()) {
        return Err(format!(
            "unknown type {:?} for stream {} (expected {})",
            short(&ty),
            stream,
            allowed.join(", ")
        ));
    }
    let body = match ty.as_str() {
        "impression" => Body::Impression {
            campaign_id: ident_sym("campaign_id", f.campaign_id, true)?,
            channel: ident_sym("channel", f.channel, true)?,
            device_id: str_sym("device_id", f.device_id, false)?,
            cost_fen: money("cost", f.cost, Some(0))?,
        },
        "click" => Body::Click {
            campaign_id: ident_sym("campaign_id", f.campaign_id, true)?,
            channel: ident_sym("channel", f.channel, true)?,
            device_id: str_sym("device_id", f.device_id, false)?,
            cost_fen: money("cost", f.cost, None)?,
            user_id: opt_string("user_id", f.user_id)?
                .filter(|u| !is_junk(u))
                .map(Sym::from),
        },
        "order" => {
            let user_id = string("user_id", f.user_id)?;
            if is_junk(&user_id) {
                return Err(format!(
                    "field `user_id` is a junk identifier {:?}",
                    short(&user_id)
                ));
            }
            opt_string("address", f.address)?; // validated, never kept
            let (phone_hash, phone_masked) = match opt_string("phone", f.phone)? {
                None => (None, None),
                Some(p) => match normalize_phone(&p).map_err(|e| format!("field `phone`: {e}"))? {
                    None => (None, None),
                    Some(n) => (
                        Some(phone_hash(&n, &cfg.phone_secret)),
                        Some(mask_phone(&n)),
                    ),
                },
            };
            Body::Order {
                order_id: ident_sym("order_id", f.order_id, false)?,
                user_id: Sym::from(user_id),
                amount_fen: money("amount", f.amount, None)?,
                phone_hash,
                phone_masked,
            }
        }
        "order_status" => {
            let status = string("status", f.status)?;
            let flag = match status.as_str() {
                "cancelled" => OrderFlag::Cancelled,
                "after_sale" => OrderFlag::AfterSale,
                "refunded" => OrderFlag::Refunded,
                other => {
                    return Err(format!(
                        "field `status` must be cancelled, after_sale or refunded, got {:?}",
                        short(other)
                    ))
                }
            };
            Body::OrderStatus {
                order_id: ident_sym("order_id", f.order_id, false)?,
                flag,
            }
        }
        "shipment" => Body::Shipment {
            order_id: ident_sym("order_id", f.order_id, false)?,
            shipper_code: Sym::interned(&ident("shipper_code", f.shipper_code)?.to_uppercase()),
            logistic_code: waybill(f.logistic_code)?,
        },
        "track" => Body::Track {
            shipper_code: Sym::interned(&ident("shipper_code", f.shipper_code)?.to_uppercase()),
            logistic_code: waybill(f.logistic_code)?,
            state: code("state", f.state)?.ok_or("missing required field `state`")?,
            state_ex: code("state_ex", f.state_ex)?,
            station: opt_string("station", f.station)?,
        },
        "link" => {
            let mut nodes = Vec::new();
            let mut named = 0;
            if let Some(d) = opt_string("device_id", f.device_id)? {
                named += 1;
                if !crate::identity::is_junk_device(&d) {
                    nodes.push(IdNode::Device(Sym::from(d)));
                }
            }
            if let Some(u) = opt_string("user_id", f.user_id)? {
                named += 1;
                if !is_junk(&u) {
                    nodes.push(IdNode::User(Sym::from(u)));
                }
            }
            if let Some(p) = opt_string("phone", f.phone)? {
                named += 1;
                if let Some(n) = normalize_phone(&p).map_err(|e| format!("field `phone`: {e}"))? {
                    nodes.push(IdNode::Phone(Sym::from(phone_hash(&n, &cfg.phone_secret))));
                }
            }
            if named < 2 {
                return Err("a link needs two or more of `device_id`, `phone`, `user_id`".into());
            }
            Body::Link { nodes }
        }
        _ => return Err(format!("unknown type {:?}", short(&ty))),
    };
    Ok(Event { event_id, ts, body })
}

fn waybill(v: Option<&RawValue>) -> R<Sym> {
    let c = clean_waybill(&ident("logistic_code", v)?);
    if c.is_empty() {
        return Err("field `logistic_code` is empty after cleaning".into());
    }
    Ok(Sym::from(c))
}

/// The first 4 KiB of a raw message as text (invalid UTF-8 replaced), cut at a character
/// boundary; what a `dead_letters` row shows in `raw`.
pub fn raw_excerpt(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(4096)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    while s.len() > 4096 {
        s.pop();
    }
    if raw.len() <= 4096 {
        return s;
    }
    // A multi-byte character split at the 4 KiB edge shows as U+FFFD at the end; drop it.
    if s.ends_with('\u{FFFD}') {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(stream: StreamKind, s: &str) -> Result<Event, String> {
        parse_event(stream, s.as_bytes(), &ParseConfig::default())
    }

    #[test]
    fn identifiers_longer_than_the_limit_are_rejected() {
        let cfg = ParseConfig::default();
        let line = |id: &str| {
            format!(
                r#"{{"type":"impression","event_id":"{id}","ts":1000,"campaign_id":"c1","channel":"douyin","device_id":"d1"}}"#
            )
        };
        assert!(parse_event(
            StreamKind::AdEvents,
            line(&"x".repeat(MAX_ID_BYTES)).as_bytes(),
            &cfg
        )
        .is_ok());
        let e = parse_event(
            StreamKind::AdEvents,
            line(&"x".repeat(10_000)).as_bytes(),
            &cfg,
        )
        .unwrap_err();
        assert!(e.contains("`event_id` is 10000 bytes long"), "{e}");
        let track = format!(
            r#"{{"type":"track","event_id":"t1","ts":1000,"shipper_code":"SF","logistic_code":"{}","state":"2"}}"#,
            "9".repeat(300)
        );
        let e = parse_event(StreamKind::Logistics, track.as_bytes(), &cfg).unwrap_err();
        assert!(e.contains("`logistic_code`"), "{e}");
    }

    #[test]
    fn a_byte_order_mark_before_the_json_is_ignored() {
        let line = r#"{"type":"impression","event_id":"e1","ts":1000,"campaign_id":"c1","channel":"douyin","device_id":"d1"}"#;
        let cfg = ParseConfig::default();
        let plain = parse_event(StreamKind::AdEvents, line.as_bytes(), &cfg).unwrap();
        let with_bom = format!("\u{feff}{line}");
        assert_eq!(
            parse_event(StreamKind::AdEvents, with_bom.as_bytes(), &cfg).unwrap(),
            plain
        );
        // Only a mark at the very start.
        let inside = format!("{{\u{feff}{}", &line[1..]);
        assert!(parse_event(StreamKind::AdEvents, inside.as_bytes(), &cfg).is_err());
    }

    #[test]
    fn strings_with_and_without_escapes_decode_alike() {
        let plain = p(StreamKind::AdEvents, r#"{"type":"impression","event_id":"e1","ts":1000,"campaign_id":" c1 ","channel":"douyin","device_id":"d1"}"#).unwrap();
        let escaped = p(StreamKind::AdEvents, r#"{"type":"impression","event_id":"\u0065\u0031","ts":1000,"campaign_id":"\u0020c\u0031 ","channel":"dou\u0079in","device_id":"d\u0031"}"#).unwrap();
        assert_eq!(plain, escaped);
        let Body::Impression { campaign_id, .. } = &plain.body else {
            panic!("not an impression")
        };
        assert_eq!(campaign_id.as_str(), "c1");
        // A bad escape is still an error.
        assert!(p(StreamKind::AdEvents, r#"{"type":"impression","event_id":"e1","ts":1000,"campaign_id":"\uZZZZ","channel":"douyin","device_id":"d1"}"#).is_err());
    }

    #[test]
    fn parses_every_type() {
        let e = p(StreamKind::AdEvents, r#"{"type":"click","event_id":"e1","ts":1000,"campaign_id":"c1","channel":"douyin","device_id":"d1","cost":12.34,"user_id":"u1"}"#).unwrap();
        assert_eq!(e.ts, 1000);
        assert_eq!(
            e.body,
            Body::Click {
                campaign_id: "c1".into(),
                channel: "douyin".into(),
                device_id: "d1".into(),
                cost_fen: 1234,
                user_id: Some("u1".into())
            }
        );
        let e = p(StreamKind::AdEvents, r#"{"type":"impression","event_id":"e2","ts":"2024-06-01 08:00:00","campaign_id":"c1","channel":"baidu","device_id":"d1"}"#).unwrap();
        assert_eq!(e.ts, 1_717_200_000_000);
        assert!(matches!(e.body, Body::Impression { cost_fen: 0, .. }));
        let e = p(StreamKind::Orders, r#"{"type":"order","event_id":"o1","ts":5,"order_id":"o1","user_id":"u1","amount":"199.00","phone":"13812345678","address":"上海市浦东新区世纪大道100号"}"#).unwrap();
        match e.body {
            Body::Order {
                amount_fen,
                phone_hash,
                phone_masked,
                ..
            } => {
                assert_eq!(amount_fen, 19_900);
                assert_eq!(phone_hash.map(|h| h.len()), Some(32));
                assert_eq!(phone_masked.as_deref(), Some("138****5678"));
            }
            other => panic!("{other:?}"),
        }
        let e = p(StreamKind::Logistics, r#"{"type":"track","event_id":"t1","ts":"2024/06/01 08:00:00","shipper_code":"sf","logistic_code":" sf-123 456 ","state":"2","state_ex":202}"#).unwrap();
        assert_eq!(
            e.body,
            Body::Track {
                shipper_code: "SF".into(),
                logistic_code: "SF123456".into(),
                state: 2,
                state_ex: Some(202),
                station: None
            }
        );
        let e = p(StreamKind::Identity, r#"{"type":"link","event_id":"l1","ts":1,"device_id":"000-0","user_id":"u9","phone":null}"#).unwrap();
        assert_eq!(
            e.body,
            Body::Link {
                nodes: vec![IdNode::User("u9".into())]
            }
        );
    }

    #[test]
    fn rejects_with_clear_reasons() {
        let cases = [
            (StreamKind::AdEvents, "not json", "not a JSON object"),
            (StreamKind::AdEvents, "{\"type\":", "invalid JSON"),
            (StreamKind::AdEvents, "", "empty message"),
            (
                StreamKind::AdEvents,
                r#"{"type":"order","event_id":"x","ts":1}"#,
                "unknown type",
            ),
            (
                StreamKind::AdEvents,
                r#"{"type":"click","ts":1}"#,
                "missing required field `event_id`",
            ),
            (
                StreamKind::AdEvents,
                r#"{"type":"click","event_id":"x","ts":"soon"}"#,
                "unparseable timestamp",
            ),
            (
                StreamKind::AdEvents,
                r#"{"type":"click","event_id":"x","ts":1,"campaign_id":"c","channel":"d","device_id":"d"}"#,
                "missing required field `cost`",
            ),
            (
                StreamKind::AdEvents,
                r#"{"type":"click","event_id":"x","ts":1,"campaign_id":"c","channel":"d","device_id":"d","cost":"1.234"}"#,
                "more than 2 decimals",
            ),
            (
                StreamKind::AdEvents,
                r#"{"type":"click","event_id":"x","ts":1,"campaign_id":5,"channel":"d","device_id":"d","cost":1}"#,
                "must be a string",
            ),
            (
                StreamKind::AdEvents,
                r#"{"type":"click","event_id":"x","ts":1.5,"campaign_id":"c","channel":"d","device_id":"d","cost":1}"#,
                "integer epoch milliseconds",
            ),
            (
                StreamKind::Orders,
                r#"{"type":"order","event_id":"x","ts":1,"order_id":"o","user_id":"null","amount":1}"#,
                "junk identifier",
            ),
            (
                StreamKind::Orders,
                r#"{"type":"order","event_id":"x","ts":1,"order_id":"o","user_id":"u","amount":-1}"#,
                "negative",
            ),
            (
                StreamKind::Orders,
                r#"{"type":"order_status","event_id":"x","ts":1,"order_id":"o","status":"lost"}"#,
                "must be cancelled",
            ),
            (
                StreamKind::Logistics,
                r#"{"type":"track","event_id":"x","ts":1,"shipper_code":"SF","logistic_code":"1","state":"signed"}"#,
                "not a Kdniao state code",
            ),
            (
                StreamKind::Identity,
                r#"{"type":"link","event_id":"x","ts":1,"user_id":"u"}"#,
                "two or more",
            ),
        ];
        for (stream, line, want) in cases {
            let err = p(stream, line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
            assert!(!err.contains('\n'));
        }
        assert!(parse_event(StreamKind::Orders, &[0xff, 0xfe], &ParseConfig::default()).is_err());
    }

    #[test]
    fn excerpt_is_bounded() {
        let long = "é".repeat(5000);
        let ex = raw_excerpt(long.as_bytes());
        assert!(ex.len() <= 4096 && ex.chars().all(|c| c == 'é'));
    }
}

/// A cheap look at a raw message's `ts` (epoch ms) without parsing the whole object: used to
/// read several files in event-time order. `None` when it cannot be found or read (the full
/// parse decides what is wrong with the message).
pub fn peek_ts(raw: &[u8], zone_offset_minutes: i32) -> Option<i64> {
    let key = b"\"ts\"";
    let at = raw.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &raw[at..];
    let mut i = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[i] != b':' {
        return None;
    }
    i += 1;
    i += rest[i..].iter().position(|b| !b.is_ascii_whitespace())?;
    let v = &rest[i..];
    if v.first() == Some(&b'"') {
        let end = v[1..].iter().position(|b| *b == b'"')? + 1;
        let s = std::str::from_utf8(&v[1..end]).ok()?;
        parse_ts_text(s, zone_offset_minutes).ok()
    } else {
        let end = v
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'-'))
            .unwrap_or(v.len());
        std::str::from_utf8(&v[..end]).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod peek_tests {
    use super::peek_ts;

    #[test]
    fn peeks_all_forms() {
        assert_eq!(
            peek_ts(br#"{"type":"x","ts": 1234,"a":1}"#, 480),
            Some(1234)
        );
        assert_eq!(
            peek_ts(br#"{"ts":"2024-06-01 08:00:00"}"#, 480),
            Some(1_717_200_000_000)
        );
        assert_eq!(peek_ts(br#"{"ts":true}"#, 480), None);
        assert_eq!(peek_ts(br#"{"nots":1}"#, 480), None);
    }
}
