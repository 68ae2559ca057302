//! The reference on tiny hand-made inputs, with hand-computed expected rows.

use adflow_model::output::{
    AnomalyRow, AttributionRow, CampaignMetricsRow, Fixed, JsonText, OrderStatusRow,
    SuppressedPersonRow, TriggerRow,
};
use adflow_model::time::{DAY, HOUR, MINUTE};
use adflow_model::{OutputRow, Table};
use adflow_reference::{compute, diff, read_changelog_dir, write_tables_dir, RefConfig, Tables};
use std::collections::BTreeSet;

/// 2024-06-02T16:00:00Z, aligned to hours and 5-minute windows.
const T0: i64 = 1_717_344_000_000;

struct Input {
    dir: tempfile::TempDir,
}

impl Input {
    fn new(files: &[(&str, &[String])]) -> Input {
        let dir = tempfile::tempdir().unwrap();
        for (name, lines) in files {
            let mut text = lines.join("\n");
            text.push('\n');
            std::fs::write(dir.path().join(format!("{name}.jsonl")), text).unwrap();
        }
        Input { dir }
    }

    fn compute(&self) -> Tables {
        compute(self.dir.path(), &RefConfig::default()).unwrap()
    }
}

fn rows(t: &Tables, table: Table) -> Vec<OutputRow> {
    t.get(&table).unwrap().iter().cloned().collect()
}

fn click(id: &str, ts: i64, camp: &str, dev: &str, cost: &str, user: Option<&str>) -> String {
    let user = user.map_or(String::new(), |u| format!(r#","user_id":"{u}""#));
    format!(
        r#"{{"type":"click","event_id":"{id}","ts":{ts},"campaign_id":"{camp}","channel":"douyin","device_id":"{dev}","cost":{cost}{user}}}"#
    )
}

fn order(id: &str, ts: i64, user: &str, amount: &str) -> String {
    format!(
        r#"{{"type":"order","event_id":"ev-{id}-{ts}","ts":{ts},"order_id":"{id}","user_id":"{user}","amount":{amount}}}"#
    )
}

fn track(id: &str, ts: i64, code: &str, state: u32, code_ex: u32) -> String {
    format!(
        r#"{{"type":"track","event_id":"{id}","ts":{ts},"shipper_code":"SF","logistic_code":"{code}","state":"{state}","state_ex":{code_ex}}}"#
    )
}

fn ship(id: &str, ts: i64, order: &str, code: &str) -> String {
    format!(
        r#"{{"type":"shipment","event_id":"{id}","ts":{ts},"order_id":"{order}","shipper_code":"sf","logistic_code":"{code}"}}"#
    )
}

fn status(id: &str, ts: i64, order: &str, s: &str) -> String {
    format!(
        r#"{{"type":"order_status","event_id":"{id}","ts":{ts},"order_id":"{order}","status":"{s}"}}"#
    )
}

fn attribution(model: &str, click_id: &str, click_ts: i64, credit: i64, fen: i64) -> OutputRow {
    OutputRow::Attribution(AttributionRow {
        order_id: "o1".into(),
        person_id: "u1".into(),
        model: model.into(),
        campaign_id: "cA".into(),
        channel: "douyin".into(),
        click_event_id: click_id.into(),
        click_ts,
        order_ts: T0 + HOUR,
        credit: Fixed(credit),
        amount_fen: 10_000,
        credited_fen: fen,
    })
}

fn status_row(delivery: &str, campaign: bool) -> OrderStatusRow {
    OrderStatusRow {
        order_id: "o1".into(),
        person_id: "u1".into(),
        amount_fen: 10_000,
        order_ts: T0 + HOUR,
        phone_masked: None,
        campaign_id: campaign.then(|| "cA".into()),
        channel: campaign.then(|| "douyin".into()),
        shipper_code: None,
        logistic_code: None,
        delivery: delivery.into(),
        delivery_ts: None,
        cancelled: false,
        after_sale: false,
        refunded: false,
        effective: false,
    }
}

#[test]
fn late_identity_link_changes_attribution() {
    let ads = [click("c1", T0, "cA", "d1", "\"0.50\"", None)];
    let orders = [order("o1", T0 + HOUR, "u1", "100")];
    let link = [format!(
        r#"{{"type":"link","event_id":"l1","ts":{},"device_id":"d1","user_id":"u1"}}"#,
        T0 + 2 * HOUR
    )];
    // The click counts in its hour, the order in the next one (its own ts).
    let metrics = |clicks: i64, orders: i64, hour: i64| {
        OutputRow::CampaignMetrics(CampaignMetricsRow {
            campaign_id: "cA".into(),
            channel: "douyin".into(),
            hour,
            impressions: 0,
            clicks,
            cost_fen: 50 * clicks,
            click_cost_fen: 50 * clicks,
            orders,
            gmv_fen: orders * 10_000,
            signed: 0,
            refused: 0,
            effective: 0,
            refusal_rate: None,
            cpc_fen: (clicks > 0).then_some(Fixed(5000)),
        })
    };

    // Without the link the click is anonymous: the order is organic.
    let t = Input::new(&[("ad_events", &ads), ("orders", &orders)]).compute();
    assert!(rows(&t, Table::Attribution).is_empty());
    assert_eq!(
        rows(&t, Table::OrderStatus),
        vec![OutputRow::OrderStatus(status_row("none", false))]
    );
    assert_eq!(rows(&t, Table::CampaignMetrics), vec![metrics(1, 0, T0)]);

    // The link arrives after the click and the order: the click is credited.
    let t = Input::new(&[
        ("ad_events", &ads),
        ("orders", &orders),
        ("identity", &link),
    ])
    .compute();
    let want: BTreeSet<OutputRow> = [
        "last_click",
        "first_click",
        "linear",
        "position_based",
        "time_decay",
    ]
    .iter()
    .map(|m| attribution(m, "c1", T0, 1_000_000, 10_000))
    .collect();
    assert_eq!(t[&Table::Attribution], want);
    assert_eq!(
        rows(&t, Table::OrderStatus),
        vec![OutputRow::OrderStatus(status_row("none", true))]
    );
    assert_eq!(
        rows(&t, Table::CampaignMetrics),
        vec![metrics(1, 0, T0), metrics(0, 1, T0 + HOUR)]
    );
}

#[test]
fn credits_of_three_candidates() {
    let t_order = T0 + 10 * DAY;
    let ads = [
        // Outside the 7-day window.
        click("k0", t_order - 8 * DAY, "cA", "d1", "1", Some("u1")),
        click("k1", t_order - 3 * DAY, "cA", "d1", "1", Some("u1")),
        click("k2", t_order - 2 * DAY, "cA", "d2", "1", Some("u1")),
        // Exactly at T: included.
        click("k3", t_order, "cA", "d1", "1", Some("u1")),
    ];
    let orders = [order("o1", t_order, "u1", "\"99.99\"")];
    let t = Input::new(&[("ad_events", &ads), ("orders", &orders)]).compute();
    let mut got: Vec<(String, String, i64, i64)> = rows(&t, Table::Attribution)
        .into_iter()
        .map(|r| match r {
            OutputRow::Attribution(a) => (a.model, a.click_event_id, a.credit.0, a.credited_fen),
            _ => unreachable!(),
        })
        .collect();
    got.sort();
    let s = |m: &str, c: &str, cr: i64, f: i64| (m.to_string(), c.to_string(), cr, f);
    let want = vec![
        s("first_click", "k1", 1_000_000, 9999),
        s("last_click", "k3", 1_000_000, 9999),
        s("linear", "k1", 333_333, 3333),
        s("linear", "k2", 333_333, 3333),
        s("linear", "k3", 333_333, 3333),
        s("position_based", "k1", 400_000, 4000),
        s("position_based", "k2", 200_000, 2000),
        s("position_based", "k3", 400_000, 4000),
        // 2^(-3/7), 2^(-2/7), 1 normalised: 0.2898559, 0.3200269, 0.3901172.
        s("time_decay", "k1", 289_856, 2898),
        s("time_decay", "k2", 320_027, 3200),
        s("time_decay", "k3", 390_117, 3901),
    ];
    assert_eq!(got, want);
}

#[test]
fn refusal_flips_delivery_unless_signed_before() {
    let orders = [
        order("o1", T0 + HOUR, "u1", "100"),
        ship("s1", T0 + 2 * HOUR, "o1", " sf-123 "),
    ];
    let refused = [
        track("t1", T0 + 3 * HOUR, "SF123", 1, 1),
        track("t2", T0 + 4 * HOUR, "SF123", 2, 2),
        track("t3", T0 + 5 * HOUR, "SF123", 2, 202),
        track("t4", T0 + 6 * HOUR, "sf 123", 4, 404),
    ];
    let t = Input::new(&[("orders", &orders), ("logistics", &refused)]).compute();
    let mut want = status_row("refused", false);
    want.shipper_code = Some("SF".into());
    want.logistic_code = Some("SF123".into());
    want.delivery_ts = Some(T0 + 6 * HOUR);
    assert_eq!(
        rows(&t, Table::OrderStatus),
        vec![OutputRow::OrderStatus(want.clone())]
    );
    let trig = |kind: &str, due: i64| {
        OutputRow::Trigger(TriggerRow {
            trigger_id: format!("o1:{kind}"),
            kind: kind.into(),
            order_id: "o1".into(),
            person_id: "u1".into(),
            campaign_id: None,
            due_ts: due,
        })
    };
    assert_eq!(
        rows(&t, Table::Triggers),
        vec![
            trig("review_coupon", T0 + 5 * HOUR),
            trig("substitute", T0 + 6 * HOUR)
        ]
    );

    // Signed first, then a 404: in transit, not refused.
    let signed_first = [
        track("t1", T0 + 3 * HOUR, "SF123", 1, 1),
        track("t2", T0 + 5 * HOUR, "SF123", 2, 202),
        track("t3", T0 + 6 * HOUR, "SF123", 3, 301),
        track("t4", T0 + 7 * HOUR, "SF123", 4, 404),
    ];
    let t = Input::new(&[("orders", &orders), ("logistics", &signed_first)]).compute();
    want.delivery = "in_transit".into();
    want.delivery_ts = Some(T0 + 7 * HOUR);
    assert_eq!(
        rows(&t, Table::OrderStatus),
        vec![OutputRow::OrderStatus(want.clone())]
    );

    // Signed and nothing else: signed and effective; replenishment once W ≥ signed + 3 days.
    let signed = [
        track("t1", T0 + 3 * HOUR, "SF123", 1, 1),
        track("t3", T0 + 6 * HOUR, "SF123", 3, 301),
    ];
    let later = [format!(
        r#"{{"type":"impression","event_id":"i1","ts":{},"campaign_id":"cX","channel":"baidu","device_id":"dx"}}"#,
        T0 + 6 * HOUR + 3 * DAY
    )];
    let t = Input::new(&[
        ("orders", &orders),
        ("logistics", &signed),
        ("ad_events", &later),
    ])
    .compute();
    assert_eq!(
        rows(&t, Table::Triggers),
        vec![trig("replenishment", T0 + 6 * HOUR + 3 * DAY)]
    );
    want.delivery = "signed".into();
    want.delivery_ts = Some(T0 + 6 * HOUR);
    want.effective = true;
    assert_eq!(
        rows(&t, Table::OrderStatus),
        vec![OutputRow::OrderStatus(want)]
    );
}

#[test]
fn stall_opens_suppresses_and_blocks_triggers() {
    let orders = [
        order("o1", T0, "u1", "100"),
        ship("s1", T0 + HOUR, "o1", "SF9"),
        // after_sale while the parcel is stalled: the substitute is suppressed.
        status("st1", T0 + 2 * HOUR + 55 * HOUR, "o1", "after_sale"),
    ];
    let logistics = [
        track("t1", T0 + 2 * HOUR, "SF9", 1, 1),
        track("t2", T0 + 32 * HOUR, "SF9", 2, 2),
    ];
    // The watermark: 25 h after the last track.
    let ads = [format!(
        r#"{{"type":"impression","event_id":"i1","ts":{},"campaign_id":"cX","channel":"baidu","device_id":"dx","cost":"0.05"}}"#,
        T0 + 57 * HOUR
    )];
    let t = Input::new(&[
        ("orders", &orders),
        ("logistics", &logistics),
        ("ad_events", &ads),
    ])
    .compute();
    let stall = |opened: i64, closed: Option<i64>, last: u32| {
        OutputRow::Anomaly(AnomalyRow {
            kind: "stalled_parcel".into(),
            key: "SF9".into(),
            opened_ts: opened,
            closed_ts: closed,
            details: JsonText(format!(
                r#"{{"last_state":{last},"order_id":"o1","person_id":"u1"}}"#
            )),
        })
    };
    assert_eq!(
        rows(&t, Table::Anomalies),
        vec![
            stall(T0 + 26 * HOUR, Some(T0 + 32 * HOUR), 1),
            stall(T0 + 56 * HOUR, None, 2),
        ]
    );
    assert_eq!(
        rows(&t, Table::SuppressedPersons),
        vec![OutputRow::SuppressedPerson(SuppressedPersonRow {
            person_id: "u1".into(),
            reason: "stalled_parcel".into(),
            since_ts: T0 + 56 * HOUR,
        })]
    );
    assert!(rows(&t, Table::Triggers).is_empty());

    // A watermark below the open stall's opening, and the after_sale after the first stall
    // closed: nothing suppresses the substitute.
    let at = |h: i64| {
        [
            orders[0].clone(),
            orders[1].clone(),
            status("st1", T0 + h * HOUR, "o1", "after_sale"),
        ]
    };
    let early = [ads[0].replace(&(T0 + 57 * HOUR).to_string(), &(T0 + 55 * HOUR).to_string())];
    let t = Input::new(&[
        ("orders", &at(33)),
        ("logistics", &logistics),
        ("ad_events", &early),
    ])
    .compute();
    assert_eq!(rows(&t, Table::Anomalies).len(), 1);
    assert!(rows(&t, Table::SuppressedPersons).is_empty());
    assert_eq!(
        rows(&t, Table::Triggers),
        vec![OutputRow::Trigger(TriggerRow {
            trigger_id: "o1:substitute".into(),
            kind: "substitute".into(),
            order_id: "o1".into(),
            person_id: "u1".into(),
            campaign_id: None,
            due_ts: T0 + 33 * HOUR,
        })]
    );
    // Inside the closed stall [26 h, 32 h): suppressed.
    let t = Input::new(&[
        ("orders", &at(31)),
        ("logistics", &logistics),
        ("ad_events", &early),
    ])
    .compute();
    assert!(rows(&t, Table::Triggers).is_empty());
    // At its closing instant: no longer suppressed.
    let t = Input::new(&[
        ("orders", &at(32)),
        ("logistics", &logistics),
        ("ad_events", &early),
    ])
    .compute();
    assert_eq!(rows(&t, Table::Triggers).len(), 1);
}

fn spike_input(last_window_costs: &[&str]) -> Tables {
    let mut ads = Vec::new();
    let mut n = 0;
    for w in 0..12 {
        for k in 0..5 {
            n += 1;
            let ts = T0 + w * 5 * MINUTE + k * MINUTE;
            ads.push(click(
                &format!("b{n}"),
                ts,
                "cS",
                &format!("d{n}"),
                "1",
                None,
            ));
        }
    }
    for (k, cost) in last_window_costs.iter().enumerate() {
        let ts = T0 + 12 * 5 * MINUTE + k as i64 * 1000;
        ads.push(click(
            &format!("s{k}"),
            ts,
            "cS",
            &format!("e{k}"),
            cost,
            None,
        ));
    }
    Input::new(&[("ad_events", &ads)]).compute()
}

#[test]
fn cpc_spike_just_above_and_just_below() {
    // Exactly 1.5 × the baseline CPC of 1.00: a spike.
    let t = spike_input(&["1.50"; 20]);
    assert_eq!(
        rows(&t, Table::Anomalies),
        vec![OutputRow::Anomaly(AnomalyRow {
            kind: "cpc_spike".into(),
            key: "cS".into(),
            opened_ts: T0 + 60 * MINUTE,
            closed_ts: Some(T0 + 65 * MINUTE),
            details: JsonText(r#"{"baseline_cpc_fen":100.0,"clicks":20,"cpc_fen":150.0}"#.into()),
        })]
    );
    // One fen less over 20 clicks: 149.95 < 150, no spike.
    let mut costs = vec!["1.50"; 19];
    costs.push("1.49");
    assert!(rows(&spike_input(&costs), Table::Anomalies).is_empty());
    // 19 clicks at twice the price: too few clicks.
    assert!(rows(&spike_input(&["2.00"; 19]), Table::Anomalies).is_empty());
}

#[test]
fn no_impressions_once_the_window_has_passed() {
    let imp = |id: String, ts: i64, camp: &str| {
        format!(
            r#"{{"type":"impression","event_id":"{id}","ts":{ts},"campaign_id":"{camp}","channel":"tencent","device_id":"dv"}}"#
        )
    };
    let mut ads = Vec::new();
    for w in 0..3 {
        for k in 0..10 {
            ads.push(imp(
                format!("i{w}-{k}"),
                T0 + w * 5 * MINUTE + k * 1000,
                "cN",
            ));
        }
    }
    let mut at_end = ads.clone();
    at_end.push(imp("x".into(), T0 + 20 * MINUTE, "cOther"));
    let t = Input::new(&[("ad_events", &at_end)]).compute();
    let got: Vec<OutputRow> = rows(&t, Table::Anomalies);
    assert_eq!(
        got,
        vec![OutputRow::Anomaly(AnomalyRow {
            kind: "no_impressions".into(),
            key: "cN".into(),
            opened_ts: T0 + 15 * MINUTE,
            closed_ts: Some(T0 + 20 * MINUTE),
            details: JsonText(r#"{"previous_impressions":30}"#.into()),
        })]
    );
    ads.push(imp("x".into(), T0 + 20 * MINUTE - 1, "cOther"));
    assert!(rows(
        &Input::new(&[("ad_events", &ads)]).compute(),
        Table::Anomalies
    )
    .is_empty());
}

#[test]
fn dead_letters_duplicates_and_changelog_round_trip() {
    let c = click("c1", T0, "cA", "d1", "1", None);
    let ads = [c.clone(), "not json".to_string(), c];
    let input = Input::new(&[("ad_events", &ads)]);
    let t = input.compute();
    match rows(&t, Table::DeadLetters).as_slice() {
        [OutputRow::DeadLetter(d)] => {
            assert_eq!(
                (d.stream.as_str(), d.position.as_str(), d.raw.as_str()),
                ("ad_events", "ad_events.jsonl:2", "not json")
            );
            assert_eq!(d.reason, "not a JSON object");
        }
        other => panic!("{other:?}"),
    }
    // The duplicate counts once.
    match rows(&t, Table::CampaignMetrics).as_slice() {
        [OutputRow::CampaignMetrics(m)] => assert_eq!((m.clicks, m.cost_fen), (1, 100)),
        other => panic!("{other:?}"),
    }
    let out = tempfile::tempdir().unwrap();
    write_tables_dir(&t, out.path()).unwrap();
    let back = read_changelog_dir(out.path()).unwrap();
    assert_eq!(diff(&t, &back), None);
    let mut fewer = back.clone();
    fewer.get_mut(&Table::CampaignMetrics).unwrap().clear();
    let report = diff(&t, &fewer).unwrap();
    assert!(report.contains("table campaign_metrics") && report.contains("1 missing"));
}

#[test]
fn config_from_default_settings_is_the_default() {
    let settings = adflow_model::config::Settings::default();
    let secret = adflow_model::event::ParseConfig::default().phone_secret;
    let got = RefConfig::from_settings(&settings, secret).unwrap();
    // 3/2 and 1500/1000 are the same ratio.
    let want = RefConfig {
        cpc_ratio_num: 1500,
        cpc_ratio_den: 1000,
        ..RefConfig::default()
    };
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
}
