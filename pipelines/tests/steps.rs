//! Step-by-step tests: each step feeds input lines and moves the watermark; the assertions name
//! the exact changes (row, version, sign) the step releases.

use adflow_engine::testing::{run_steps, Step};
use adflow_model::config::Settings;
use adflow_model::output::*;
use adflow_model::{Change, OutputRow, StreamKind::*, Table};
use std::sync::Arc;

const T0: i64 = 1_717_200_000_000; // 2024-06-01T00:00:00Z, an hour boundary
const H: i64 = 3_600_000;
const MIN: i64 = 60_000;

fn run(steps: Vec<Step>) -> Vec<Vec<Change>> {
    run_steps(
        Arc::new(adflow_pipelines::AdflowProgram),
        Settings::default(),
        steps,
    )
    .expect("run")
}

fn of(changes: &[Change], table: Table) -> Vec<(OutputRow, i64, i64)> {
    changes
        .iter()
        .filter(|c| c.row.table() == table)
        .map(|c| (c.row.clone(), c.version, c.sign))
        .collect()
}

fn click(
    id: &str,
    ts: i64,
    campaign: &str,
    device: &str,
    user: Option<&str>,
    cost: &str,
) -> String {
    let user = user
        .map(|u| format!(r#","user_id":"{u}""#))
        .unwrap_or_default();
    format!(
        r#"{{"type":"click","event_id":"{id}","ts":{ts},"campaign_id":"{campaign}","channel":"douyin","device_id":"{device}","cost":"{cost}"{user}}}"#
    )
}

fn order(id: &str, ts: i64, user: &str, amount: &str) -> String {
    format!(
        r#"{{"type":"order","event_id":"{id}","ts":{ts},"order_id":"{id}","user_id":"{user}","amount":"{amount}"}}"#
    )
}

fn shipment(order: &str, ts: i64, waybill: &str) -> String {
    format!(
        r#"{{"type":"shipment","event_id":"s-{order}-{ts}","ts":{ts},"order_id":"{order}","shipper_code":"SF","logistic_code":"{waybill}"}}"#
    )
}

fn track(waybill: &str, ts: i64, state: u32, state_ex: Option<u32>) -> String {
    let ex = state_ex
        .map(|s| format!(r#","state_ex":"{s}""#))
        .unwrap_or_default();
    format!(
        r#"{{"type":"track","event_id":"t-{waybill}-{ts}","ts":{ts},"shipper_code":"SF","logistic_code":"{waybill}","state":{state}{ex}}}"#
    )
}

fn status(order: &str, ts: i64, status: &str) -> String {
    format!(
        r#"{{"type":"order_status","event_id":"st-{order}-{ts}","ts":{ts},"order_id":"{order}","status":"{status}"}}"#
    )
}

#[allow(clippy::too_many_arguments)] // one argument per column of the row under test
fn status_row(
    order: &str,
    user: &str,
    ts: i64,
    amount: i64,
    campaign: Option<&str>,
    waybill: Option<&str>,
    delivery: &str,
    delivery_ts: Option<i64>,
) -> OutputRow {
    OutputRow::OrderStatus(OrderStatusRow {
        order_id: order.into(),
        person_id: user.into(),
        amount_fen: amount,
        order_ts: ts,
        phone_masked: None,
        campaign_id: campaign.map(Into::into),
        channel: campaign.map(|_| "douyin".into()),
        shipper_code: waybill.map(|_| "SF".into()),
        logistic_code: waybill.map(Into::into),
        delivery: delivery.into(),
        delivery_ts,
        cancelled: false,
        after_sale: false,
        refunded: false,
        effective: delivery == "signed",
    })
}

#[test]
fn late_link_corrects_attribution() {
    let c = click("c1", T0, "A", "d1", None, "1.00");
    let o = order("o1", T0 + H, "u1", "100.00");
    let link = format!(
        r#"{{"type":"link","event_id":"l1","ts":{},"device_id":"d1","user_id":"u1"}}"#,
        T0 + 3 * H
    );
    let steps = run(vec![
        Step::new(&[(AdEvents, &c), (Orders, &o)], T0 + 2 * H),
        Step::new(&[(Identity, &link)], T0 + 4 * H),
    ]);
    // Step 1: the device is nobody yet: the order is organic.
    assert!(of(&steps[0], Table::Attribution).is_empty());
    assert_eq!(
        of(&steps[0], Table::OrderStatus),
        vec![(
            status_row("o1", "u1", T0 + H, 10_000, None, None, "none", None),
            T0 + H,
            1
        )]
    );
    // Step 2: the link makes the click u1's: five model rows appear, the status is corrected.
    let attr = of(&steps[1], Table::Attribution);
    assert_eq!(attr.len(), 5, "{attr:#?}");
    for (row, version, sign) in &attr {
        let OutputRow::Attribution(a) = row else {
            panic!()
        };
        assert_eq!(
            (
                a.order_id.as_str(),
                a.campaign_id.as_str(),
                a.click_event_id.as_str()
            ),
            ("o1", "A", "c1")
        );
        assert_eq!(
            (a.credit, a.credited_fen, a.amount_fen),
            (Fixed(1_000_000), 10_000, 10_000)
        );
        assert_eq!((*version, *sign), (T0 + 3 * H, 1));
    }
    assert_eq!(
        of(&steps[1], Table::OrderStatus),
        vec![
            (
                status_row("o1", "u1", T0 + H, 10_000, None, None, "none", None),
                T0 + 3 * H,
                -1
            ),
            (
                status_row("o1", "u1", T0 + H, 10_000, Some("A"), None, "none", None),
                T0 + 3 * H,
                1
            ),
        ]
    );
    // Orders count in the hour of `order_ts` (T0 + 1 h), not the click's hour: that hour's row
    // appears for campaign A with the order and its GMV; the click's hour is untouched.
    let m = of(&steps[1], Table::CampaignMetrics);
    assert_eq!(m.len(), 1, "{m:#?}");
    let (OutputRow::CampaignMetrics(new), version, 1) = &m[0] else {
        panic!("{m:#?}")
    };
    assert_eq!(*version, T0 + 3 * H);
    assert_eq!(
        (
            new.campaign_id.as_str(),
            new.hour,
            new.clicks,
            new.orders,
            new.gmv_fen,
            new.cpc_fen
        ),
        ("A", T0 + H, 0, 1, 10_000, None)
    );
}

#[test]
fn refusal_flips_delivery_and_decides_a_substitute() {
    let steps = run(vec![
        Step::new(
            &[
                (Orders, &order("o2", T0, "u2", "50")),
                (Orders, &shipment("o2", T0 + H, " sf-12 3 ")),
                (Logistics, &track("SF123", T0 + 2 * H, 2, None)),
            ],
            T0 + 3 * H,
        ),
        Step::new(
            &[(Logistics, &track("sf123", T0 + 4 * H, 4, Some(404)))],
            T0 + 5 * H,
        ),
    ]);
    let inserted: Vec<_> = of(&steps[0], Table::OrderStatus)
        .into_iter()
        .filter(|c| c.2 == 1)
        .collect();
    assert_eq!(
        inserted.last().unwrap(),
        &(
            status_row(
                "o2",
                "u2",
                T0,
                5_000,
                None,
                Some("SF123"),
                "in_transit",
                Some(T0 + 2 * H)
            ),
            T0 + 2 * H,
            1
        )
    );
    assert_eq!(
        of(&steps[1], Table::OrderStatus),
        vec![
            (
                status_row(
                    "o2",
                    "u2",
                    T0,
                    5_000,
                    None,
                    Some("SF123"),
                    "in_transit",
                    Some(T0 + 2 * H)
                ),
                T0 + 4 * H,
                -1
            ),
            (
                status_row(
                    "o2",
                    "u2",
                    T0,
                    5_000,
                    None,
                    Some("SF123"),
                    "refused",
                    Some(T0 + 4 * H)
                ),
                T0 + 4 * H,
                1
            ),
        ]
    );
    assert_eq!(
        of(&steps[1], Table::Triggers),
        vec![(
            OutputRow::Trigger(TriggerRow {
                trigger_id: "o2:substitute".into(),
                kind: "substitute".into(),
                order_id: "o2".into(),
                person_id: "u2".into(),
                campaign_id: None,
                due_ts: T0 + 4 * H,
            }),
            T0 + 4 * H,
            1
        )]
    );
}

fn stall_row(
    waybill: &str,
    opened: i64,
    closed: Option<i64>,
    order: &str,
    person: &str,
    state: u32,
) -> OutputRow {
    OutputRow::Anomaly(AnomalyRow {
        kind: "stalled_parcel".into(),
        key: waybill.into(),
        opened_ts: opened,
        closed_ts: closed,
        details: JsonText(format!(
            r#"{{"order_id":"{order}","person_id":"{person}","last_state":{state}}}"#
        )),
    })
}

#[test]
fn a_quiet_parcel_stalls_exactly_at_last_plus_24h_and_closes_on_the_next_track() {
    let day = 24 * H;
    let steps = run(vec![
        Step::new(
            &[
                (Orders, &order("o3", T0, "u3", "10")),
                (Orders, &shipment("o3", T0, "W3")),
                (Logistics, &track("W3", T0 + H, 2, Some(201))),
            ],
            T0 + H + day, // everything before last + 24 h is released: no stall yet
        ),
        Step::new(&[], T0 + H + day + 1), // the watermark passes last + 24 h
        Step::new(
            &[(Logistics, &track("W3", T0 + 30 * H, 2, Some(202)))],
            T0 + 31 * H,
        ),
    ]);
    assert!(of(&steps[0], Table::Anomalies).is_empty());
    assert!(of(&steps[0], Table::SuppressedPersons).is_empty());
    let opened = T0 + H + day;
    assert_eq!(
        of(&steps[1], Table::Anomalies),
        vec![(stall_row("W3", opened, None, "o3", "u3", 201), opened, 1)]
    );
    assert_eq!(
        of(&steps[1], Table::SuppressedPersons),
        vec![(
            OutputRow::SuppressedPerson(SuppressedPersonRow {
                person_id: "u3".into(),
                reason: "stalled_parcel".into(),
                since_ts: opened
            }),
            opened,
            1
        )]
    );
    assert_eq!(
        of(&steps[2], Table::Anomalies),
        vec![
            (
                stall_row("W3", opened, None, "o3", "u3", 201),
                T0 + 30 * H,
                -1
            ),
            (
                stall_row("W3", opened, Some(T0 + 30 * H), "o3", "u3", 201),
                T0 + 30 * H,
                1
            ),
        ]
    );
    assert_eq!(of(&steps[2], Table::SuppressedPersons).len(), 1); // the retraction
                                                                  // The out-for-delivery track closes the stall at its own ts, so the coupon is not withheld.
    let trig = of(&steps[2], Table::Triggers);
    assert_eq!(trig.len(), 1, "{trig:#?}");
}

#[test]
fn replenishment_fires_after_3_days_unless_after_sale_comes_first() {
    let day = 24 * H;
    let lines_a = [
        (Orders, order("o4", T0, "u4", "10")),
        (Orders, shipment("o4", T0, "W4")),
        (Logistics, track("W4", T0 + day, 3, Some(301))),
    ];
    let lines_b = [
        (Orders, order("o5", T0, "u5", "10")),
        (Orders, shipment("o5", T0, "W5")),
        (Logistics, track("W5", T0 + day, 3, Some(301))),
        (Orders, status("o5", T0 + 2 * day, "after_sale")),
    ];
    let to_refs = |v: &[(adflow_model::StreamKind, String)]| {
        v.iter().map(|(s, l)| (*s, l.clone())).collect::<Vec<_>>()
    };
    let mut all = to_refs(&lines_a);
    all.extend(to_refs(&lines_b));
    let steps = run_steps(
        Arc::new(adflow_pipelines::AdflowProgram),
        Settings::default(),
        vec![
            Step {
                lines: all,
                watermark: T0 + 4 * day,
            },
            Step {
                lines: vec![],
                watermark: T0 + 4 * day + 1,
            },
        ],
    )
    .unwrap();
    let kinds = |cs: &[Change]| -> Vec<(String, i64)> {
        of(cs, Table::Triggers)
            .into_iter()
            .map(|(r, v, s)| match r {
                OutputRow::Trigger(t) => (t.trigger_id, v * s),
                _ => unreachable!(),
            })
            .collect()
    };
    // o5's after-sale decides a substitute at its ts; o5's replenishment never appears.
    assert_eq!(
        kinds(&steps[0]),
        vec![("o5:substitute".to_string(), T0 + 2 * day)]
    );
    // o4's replenishment appears exactly when the watermark passes signed + 3 days.
    assert_eq!(
        kinds(&steps[1]),
        vec![("o4:replenishment".to_string(), T0 + 4 * day)]
    );
}

#[test]
fn coupon_is_withheld_while_another_parcel_of_the_person_is_stalled() {
    let day = 24 * H;
    let steps = run(vec![Step::new(
        &[
            (Orders, &order("o6", T0, "u6", "10")),
            (Orders, &shipment("o6", T0, "W6")),
            (Logistics, &track("W6", T0, 2, None)),
            (Orders, &order("o7", T0 + 2 * day, "u6", "10")),
            (Orders, &shipment("o7", T0 + 2 * day, "W7")),
            (Logistics, &track("W7", T0 + 3 * day, 2, Some(202))),
        ],
        T0 + 4 * day,
    )]);
    assert!(
        of(&steps[0], Table::Triggers).is_empty(),
        "{:#?}",
        of(&steps[0], Table::Triggers)
    );
    let stalls = of(&steps[0], Table::Anomalies);
    assert!(stalls.iter().any(|(r, _, s)| *s == 1
        && matches!(r, OutputRow::Anomaly(a) if a.key == "W6" && a.closed_ts.is_none())));
}

fn clicks_in_window(campaign: &str, start: i64, n: usize, cost: &str, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            click(
                &format!("{tag}-{campaign}-{start}-{i}"),
                start + i as i64 * 1000,
                campaign,
                &format!("dev-{tag}-{i}"),
                None,
                cost,
            )
        })
        .collect()
}

#[test]
fn cpc_spike_at_the_threshold_and_just_below() {
    let w = 5 * MIN;
    let mut lines = Vec::new();
    for k in 0..12 {
        lines.extend(clicks_in_window("S", T0 + k * w, 5, "1.00", "b"));
        lines.extend(clicks_in_window("N", T0 + k * w, 5, "1.00", "b"));
    }
    // Window 12: S at exactly 1.5 × baseline CPC (spike), N at 1.49 (no spike).
    lines.extend(clicks_in_window("S", T0 + 12 * w, 20, "1.50", "x"));
    lines.extend(clicks_in_window("N", T0 + 12 * w, 20, "1.49", "x"));
    let refs: Vec<(adflow_model::StreamKind, &str)> =
        lines.iter().map(|l| (AdEvents, l.as_str())).collect();
    let steps = run(vec![Step::new(&refs, T0 + 14 * w)]);
    let spikes: Vec<_> = of(&steps[0], Table::Anomalies)
        .into_iter()
        .filter(|(r, _, _)| matches!(r, OutputRow::Anomaly(a) if a.kind == "cpc_spike"))
        .collect();
    assert_eq!(
        spikes
            .iter()
            .map(|(r, _, s)| (r.clone(), *s))
            .collect::<Vec<_>>(),
        vec![(
            OutputRow::Anomaly(AnomalyRow {
                kind: "cpc_spike".into(),
                key: "S".into(),
                opened_ts: T0 + 12 * w,
                closed_ts: Some(T0 + 13 * w),
                details: JsonText(
                    r#"{"cpc_fen":150.00,"baseline_cpc_fen":100.00,"clicks":20}"#.into()
                ),
            }),
            1
        )]
    );
}

#[test]
fn no_impressions_window_is_reported_once_the_window_has_closed() {
    let w = 5 * MIN;
    let mut lines = Vec::new();
    for k in 0..3 {
        for i in 0..10 {
            lines.push(format!(
                r#"{{"type":"impression","event_id":"i{k}-{i}","ts":{},"campaign_id":"Q","channel":"baidu","device_id":"d{i}"}}"#,
                T0 + k * w + i * 1000
            ));
        }
    }
    let refs: Vec<(adflow_model::StreamKind, &str)> =
        lines.iter().map(|l| (AdEvents, l.as_str())).collect();
    let steps = run(vec![
        Step::new(&refs, T0 + 4 * w),
        Step::new(&[], T0 + 4 * w + 1),
    ]);
    let quiet = |cs: &[Change]| {
        of(cs, Table::Anomalies)
            .into_iter()
            .filter(|(r, _, _)| matches!(r, OutputRow::Anomaly(a) if a.kind == "no_impressions"))
            .collect::<Vec<_>>()
    };
    assert!(
        quiet(&steps[0]).is_empty(),
        "window 3 has not closed before the watermark passes its end"
    );
    assert_eq!(
        quiet(&steps[1]),
        vec![(
            OutputRow::Anomaly(AnomalyRow {
                kind: "no_impressions".into(),
                key: "Q".into(),
                opened_ts: T0 + 3 * w,
                closed_ts: Some(T0 + 4 * w),
                details: JsonText(r#"{"previous_impressions":30}"#.into()),
            }),
            T0 + 4 * w,
            1
        )]
    );
}
