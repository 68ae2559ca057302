//! Property tests of the input boundary (issue "robustness"): the event parser, money and
//! timestamps. For any input, parsing never panics and every rejection carries a reason;
//! valid input round-trips to exactly the values it was written from.
//!
//! Case counts are fixed (`PROPTEST_CASES` overrides them) so the suite runs in a few
//! seconds in `make test`.

use adflow_model::event::{parse_event, Body, IdNode, OrderFlag, ParseConfig, MAX_ID_BYTES};
use adflow_model::identity::{clean_waybill, is_junk};
use adflow_model::money::{parse_decimal, parse_fen, DecimalError, MAX_AMOUNT_FEN};
use adflow_model::time::{format_local, parse_ts_text, MAX_TS};
use adflow_model::StreamKind;
use proptest::prelude::*;
use serde_json::{json, Value};

const STREAMS: [StreamKind; 4] = [
    StreamKind::AdEvents,
    StreamKind::Orders,
    StreamKind::Logistics,
    StreamKind::Identity,
];

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

/// Any JSON value, a few levels deep, with the awkward corners: huge and negative numbers,
/// exponents, escapes, non-ASCII text, empty strings.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        "[0-9.eE+-]{1,24}".prop_map(Value::String),
        "(19|20|21)[0-9]{2}[-/][0-9]{2}[-/][0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,4})?(Z|[+-][0-9]{2}:?[0-9]{2})?"
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 20] = [
    "type",
    "event_id",
    "ts",
    "campaign_id",
    "channel",
    "device_id",
    "cost",
    "user_id",
    "order_id",
    "amount",
    "phone",
    "address",
    "status",
    "shipper_code",
    "logistic_code",
    "state",
    "state_ex",
    "station",
    "unknown_extra",
    "",
];

const TYPES: [&str; 9] = [
    "impression",
    "click",
    "order",
    "order_status",
    "shipment",
    "track",
    "link",
    "Click",
    "purchase",
];

/// An object with the spec's field names (and a few others), each holding any JSON value:
/// exercises every field check of the parser, not just the JSON syntax.
fn event_like_object() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&TYPES[..]),
        prop::collection::vec((prop::sample::select(&FIELDS[..]), any_json()), 0..14),
    )
        .prop_map(|(ty, fields)| {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), json!(ty));
            for (k, v) in fields {
                m.insert(k.to_string(), v);
            }
            Value::Object(m).to_string()
        })
}

/// Checks the parser's contract for one input: no panic (the test harness would report
/// it), and a rejection is one non-empty line.
fn check_rejection_reason(stream: StreamKind, raw: &[u8]) -> Result<(), TestCaseError> {
    if let Err(reason) = parse_event(stream, raw, &ParseConfig::default()) {
        prop_assert!(!reason.trim().is_empty(), "empty reason for {:?}", raw);
        prop_assert!(!reason.contains('\n'), "multi-line reason {:?}", reason);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_and_rejections_have_a_reason(
        raw in prop::collection::vec(any::<u8>(), 0..256),
        s in 0usize..4,
    ) {
        check_rejection_reason(STREAMS[s], &raw)?;
    }

    #[test]
    fn arbitrary_json_objects_never_panic_and_rejections_have_a_reason(
        text in event_like_object(),
        s in 0usize..4,
        bom in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut raw = if bom { "\u{feff}".to_string() } else { String::new() };
        raw.push_str(&text);
        check_rejection_reason(STREAMS[s], raw.as_bytes())?;
        if truncate {
            let bytes = raw.as_bytes();
            let at = cut.index(bytes.len().max(1));
            check_rejection_reason(STREAMS[s], &bytes[..at.min(bytes.len())])?;
        }
    }
}

/// A clean identifier: what the generator and real systems send.
fn ident() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_.:-]{0,30}".prop_filter("not junk", |s| !is_junk(s))
}

fn amount_text(fen: i64, form: u8) -> Value {
    match form {
        0 => json!(format!("{}.{:02}", fen / 100, fen % 100)),
        1 if fen % 100 == 0 => json!(fen / 100),
        1 => Value::String(format!("{}.{:02}", fen / 100, fen % 100)),
        _ => serde_json::from_str(&format!("{}.{:02}", fen / 100, fen % 100)).unwrap(),
    }
}

fn ts_value(ts: i64, form: u8, zone: i32) -> Value {
    match form {
        0 => json!(ts),
        1 => json!(format!(
            "{}.{:03}",
            format_local(ts, zone),
            ts.rem_euclid(1000)
        )),
        _ => json!(format!(
            "{}Z",
            format_local(ts, 0).replace(' ', "T") + &format!(".{:03}", ts.rem_euclid(1000))
        )),
    }
}

/// A valid event of every type, as the JSON object of spec §1 and the values it must parse to.
#[derive(Debug, Clone)]
enum Valid {
    Impression {
        campaign: String,
        channel: String,
        device: String,
        cost: i64,
    },
    Click {
        campaign: String,
        channel: String,
        device: String,
        cost: i64,
        user: Option<String>,
    },
    Order {
        order: String,
        user: String,
        amount: i64,
    },
    Status {
        order: String,
        status: &'static str,
    },
    Shipment {
        order: String,
        shipper: String,
        waybill: String,
    },
    Track {
        shipper: String,
        waybill: String,
        state: u32,
        state_ex: Option<u32>,
    },
    Link {
        device: String,
        user: String,
    },
}

fn valid_event() -> impl Strategy<Value = Valid> {
    let money = 0..=MAX_AMOUNT_FEN;
    prop_oneof![
        (ident(), ident(), ident(), money.clone()).prop_map(|(campaign, channel, device, cost)| {
            Valid::Impression {
                campaign,
                channel,
                device,
                cost,
            }
        }),
        (
            ident(),
            ident(),
            ident(),
            money.clone(),
            prop::option::of(ident())
        )
            .prop_map(|(campaign, channel, device, cost, user)| Valid::Click {
                campaign,
                channel,
                device,
                cost,
                user
            }),
        (ident(), ident(), money).prop_map(|(order, user, amount)| Valid::Order {
            order,
            user,
            amount
        }),
        (
            ident(),
            prop::sample::select(&["cancelled", "after_sale", "refunded"][..])
        )
            .prop_map(|(order, status)| Valid::Status { order, status }),
        (ident(), "[A-Za-z]{2,6}", "[A-Za-z0-9][A-Za-z0-9 -]{0,28}")
            .prop_filter("waybill not empty", |(_, _, w)| !clean_waybill(w)
                .is_empty())
            .prop_map(|(order, shipper, waybill)| Valid::Shipment {
                order,
                shipper,
                waybill
            }),
        (
            "[A-Za-z]{2,6}",
            "[A-Za-z0-9]{1,30}",
            0u32..10,
            prop::option::of(0u32..100_000)
        )
            .prop_map(|(shipper, waybill, state, state_ex)| Valid::Track {
                shipper,
                waybill,
                state,
                state_ex
            }),
        (ident(), ident())
            .prop_filter("device not junk", |(d, _)| !d
                .bytes()
                .all(|b| b == b'0' || b == b'-'))
            .prop_map(|(device, user)| Valid::Link { device, user }),
    ]
}

impl Valid {
    fn json(&self, event_id: &str, ts: Value, money_form: u8) -> (StreamKind, Value) {
        let (stream, mut v) = match self {
            Valid::Impression {
                campaign,
                channel,
                device,
                cost,
            } => (
                StreamKind::AdEvents,
                json!({"type": "impression", "campaign_id": campaign, "channel": channel,
                       "device_id": device, "cost": amount_text(*cost, money_form)}),
            ),
            Valid::Click {
                campaign,
                channel,
                device,
                cost,
                user,
            } => (
                StreamKind::AdEvents,
                json!({"type": "click", "campaign_id": campaign, "channel": channel,
                       "device_id": device, "cost": amount_text(*cost, money_form), "user_id": user}),
            ),
            Valid::Order {
                order,
                user,
                amount,
            } => (
                StreamKind::Orders,
                json!({"type": "order", "order_id": order, "user_id": user,
                       "amount": amount_text(*amount, money_form)}),
            ),
            Valid::Status { order, status } => (
                StreamKind::Orders,
                json!({"type": "order_status", "order_id": order, "status": status}),
            ),
            Valid::Shipment {
                order,
                shipper,
                waybill,
            } => (
                StreamKind::Orders,
                json!({"type": "shipment", "order_id": order, "shipper_code": shipper,
                       "logistic_code": waybill}),
            ),
            Valid::Track {
                shipper,
                waybill,
                state,
                state_ex,
            } => (
                StreamKind::Logistics,
                json!({"type": "track", "shipper_code": shipper, "logistic_code": waybill,
                       "state": state.to_string(), "state_ex": state_ex}),
            ),
            Valid::Link { device, user } => (
                StreamKind::Identity,
                json!({"type": "link", "device_id": device, "user_id": user}),
            ),
        };
        v["event_id"] = json!(event_id);
        v["ts"] = ts;
        (stream, v)
    }

    fn check(&self, body: &Body) -> Result<(), TestCaseError> {
        match (self, body) {
            (
                Valid::Impression {
                    campaign,
                    channel,
                    device,
                    cost,
                },
                Body::Impression {
                    campaign_id,
                    channel: ch,
                    device_id,
                    cost_fen,
                },
            ) => {
                prop_assert_eq!(campaign_id.as_str(), campaign.as_str());
                prop_assert_eq!(ch.as_str(), channel.as_str());
                prop_assert_eq!(device_id.as_str(), device.as_str());
                prop_assert_eq!(cost_fen, cost);
            }
            (
                Valid::Click {
                    campaign,
                    channel,
                    device,
                    cost,
                    user,
                },
                Body::Click {
                    campaign_id,
                    channel: ch,
                    device_id,
                    cost_fen,
                    user_id,
                },
            ) => {
                prop_assert_eq!(campaign_id.as_str(), campaign.as_str());
                prop_assert_eq!(ch.as_str(), channel.as_str());
                prop_assert_eq!(device_id.as_str(), device.as_str());
                prop_assert_eq!(cost_fen, cost);
                prop_assert_eq!(user_id.as_ref().map(|u| u.as_str()), user.as_deref());
            }
            (
                Valid::Order {
                    order,
                    user,
                    amount,
                },
                Body::Order {
                    order_id,
                    user_id,
                    amount_fen,
                    phone_hash,
                    ..
                },
            ) => {
                prop_assert_eq!(order_id.as_str(), order.as_str());
                prop_assert_eq!(user_id.as_str(), user.as_str());
                prop_assert_eq!(amount_fen, amount);
                prop_assert!(phone_hash.is_none());
            }
            (Valid::Status { order, status }, Body::OrderStatus { order_id, flag }) => {
                prop_assert_eq!(order_id.as_str(), order.as_str());
                let want = match *status {
                    "cancelled" => OrderFlag::Cancelled,
                    "after_sale" => OrderFlag::AfterSale,
                    _ => OrderFlag::Refunded,
                };
                prop_assert_eq!(*flag, want);
            }
            (
                Valid::Shipment {
                    order,
                    shipper,
                    waybill,
                },
                Body::Shipment {
                    order_id,
                    shipper_code,
                    logistic_code,
                },
            ) => {
                prop_assert_eq!(order_id.as_str(), order.as_str());
                prop_assert_eq!(shipper_code.as_str(), shipper.to_uppercase());
                prop_assert_eq!(logistic_code.as_str(), clean_waybill(waybill));
            }
            (
                Valid::Track {
                    shipper,
                    waybill,
                    state,
                    state_ex,
                },
                Body::Track {
                    shipper_code,
                    logistic_code,
                    state: s,
                    state_ex: sx,
                    ..
                },
            ) => {
                prop_assert_eq!(shipper_code.as_str(), shipper.to_uppercase());
                prop_assert_eq!(logistic_code.as_str(), clean_waybill(waybill));
                prop_assert_eq!(s, state);
                prop_assert_eq!(sx, state_ex);
            }
            (Valid::Link { device, user }, Body::Link { nodes }) => {
                prop_assert_eq!(
                    nodes,
                    &vec![
                        IdNode::Device(device.as_str().into()),
                        IdNode::User(user.as_str().into())
                    ]
                );
            }
            (want, got) => prop_assert!(false, "{:?} parsed as {:?}", want, got),
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(config())]

    /// A valid event, written with its timestamp as epoch ms, local text or RFC 3339 and its
    /// money as a decimal string or a JSON number, parses to exactly the values written;
    /// on another stream than its own it is rejected with a reason.
    #[test]
    fn valid_events_round_trip(
        ev in valid_event(),
        id in ident(),
        ts in 0i64..MAX_TS,
        ts_form in 0u8..3,
        money_form in 0u8..3,
        zone in -720i32..=840,
    ) {
        let cfg = ParseConfig { zone_offset_minutes: zone, ..ParseConfig::default() };
        let (stream, v) = ev.json(&id, ts_value(ts, ts_form, zone), money_form);
        let raw = v.to_string();
        let got = parse_event(stream, raw.as_bytes(), &cfg);
        let got = match got {
            Ok(e) => e,
            Err(reason) => return Err(TestCaseError::fail(format!("{raw} rejected: {reason}"))),
        };
        prop_assert_eq!(got.event_id.as_str(), id.as_str());
        prop_assert_eq!(got.ts, ts);
        ev.check(&got.body)?;
        for other in STREAMS.into_iter().filter(|s| *s != stream) {
            let r = parse_event(other, raw.as_bytes(), &cfg);
            prop_assert!(matches!(&r, Err(reason) if reason.contains("unknown type")), "{:?}", r);
        }
    }

    /// An identifier longer than the limit is rejected naming the field.
    #[test]
    fn identifiers_over_the_limit_are_rejected(
        extra in 1usize..64,
        field in prop::sample::select(&["event_id", "order_id", "user_id"][..]),
    ) {
        let mut v = json!({"type": "order", "event_id": "e1", "ts": 1_700_000_000_000i64,
                           "order_id": "o1", "user_id": "u1", "amount": "1.00"});
        v[field] = json!("x".repeat(MAX_ID_BYTES + extra));
        let r = parse_event(StreamKind::Orders, v.to_string().as_bytes(), &ParseConfig::default());
        prop_assert!(matches!(&r, Err(reason) if reason.contains(field)), "{:?}", r);
    }

    /// Every amount in range, written with 0, 1 or 2 decimals, with or without an exponent,
    /// parses to its fen exactly.
    #[test]
    fn amounts_round_trip(fen in 0..=MAX_AMOUNT_FEN, form in 0u8..4) {
        let text = match form {
            0 => format!("{}.{:02}", fen / 100, fen % 100),
            1 if fen % 10 == 0 => format!("{}.{}", fen / 100, fen % 100 / 10),
            2 if fen % 100 == 0 => format!("{}", fen / 100),
            3 => format!("{fen}e-2"),
            _ => format!("+{}.{:02}", fen / 100, fen % 100),
        };
        prop_assert_eq!(parse_fen(&text), Ok(fen), "{}", text);
    }

    /// Above the maximum is `TooLarge`, below zero `Negative` (zero itself, `-0`, is fine).
    #[test]
    fn amounts_out_of_range_are_rejected(fen in (MAX_AMOUNT_FEN + 1)..i64::MAX, neg in 1i64..MAX_AMOUNT_FEN) {
        let big = format!("{}.{:02}", fen / 100, fen % 100);
        prop_assert!(matches!(parse_fen(&big), Err(DecimalError::TooLarge(_))), "{}", big);
        let small = format!("-{}.{:02}", neg / 100, neg % 100);
        prop_assert!(matches!(parse_fen(&small), Err(DecimalError::Negative(_))), "{}", small);
    }

    /// Any text: no panic, and a rejection displays a non-empty reason.
    #[test]
    fn arbitrary_amount_text_never_panics(
        text in prop_oneof![".{0,40}", "[0-9.eE+-]{0,40}", "[0-9]{15,40}(\\.[0-9]{0,6})?(e[+-]?[0-9]{1,12})?"],
        scale in 0u32..8,
    ) {
        for r in [parse_fen(&text), parse_decimal(&text, scale)] {
            if let Err(e) = r {
                prop_assert!(!e.to_string().trim().is_empty());
            }
        }
    }

    /// Every timestamp in the accepted range, formatted in any zone as local text (with or
    /// without milliseconds) or RFC 3339 with an offset, parses back to itself.
    #[test]
    fn timestamps_round_trip(ts in 0i64..MAX_TS, zone in -720i32..=840, slash in any::<bool>()) {
        let secs = ts - ts.rem_euclid(1000);
        let mut local = format_local(ts, zone);
        if slash {
            local = local.replacen('-', "/", 2);
        }
        prop_assert_eq!(parse_ts_text(&local, zone), Ok(secs), "{}", local);
        let with_ms = format!("{local}.{:03}", ts.rem_euclid(1000));
        prop_assert_eq!(parse_ts_text(&with_ms, zone), Ok(ts), "{}", with_ms);
        let (sign, z) = if zone < 0 { ('-', -zone) } else { ('+', zone) };
        let rfc = format!(
            "{}.{:03}{sign}{:02}:{:02}",
            format_local(ts, zone).replace(' ', "T"),
            ts.rem_euclid(1000),
            z / 60,
            z % 60
        );
        prop_assert_eq!(parse_ts_text(&rfc, 0), Ok(ts), "{}", rfc);
    }

    /// Any text: no panic, and a rejection displays a non-empty reason.
    #[test]
    fn arbitrary_timestamp_text_never_panics(
        text in prop_oneof![
            ".{0,40}",
            "[0-9]{4}[-/][0-9]{1,3}[-/][0-9]{1,3}[ Tt][0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3}([.,][0-9]{0,12})?([Zz]|[+-][0-9]{2}:?[0-9]{2})?.{0,3}",
        ],
        zone in -1440i32..=1440,
    ) {
        if let Err(e) = parse_ts_text(&text, zone) {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }
}
