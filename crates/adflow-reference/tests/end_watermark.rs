//! `RefConfig::end_watermark_ms`: where event time ends. `None` is file mode (W ends at the
//! largest `ts`); `Some(w)` is a caught-up live run whose W followed the wall clock, so every
//! timer due at or before `max(largest ts, w)` has fired — and nothing else changes.

use adflow_model::output::{AnomalyRow, JsonText, SuppressedPersonRow, TriggerRow};
use adflow_model::time::{DAY, HOUR, MINUTE};
use adflow_model::{OutputRow, Table};
use adflow_reference::{compute, RefConfig, Tables};

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

    /// The reference with event time ending at `end` (`None`: the largest ts).
    fn compute(&self, end: Option<i64>) -> Tables {
        let cfg = RefConfig {
            end_watermark_ms: end,
            ..RefConfig::default()
        };
        compute(self.dir.path(), &cfg).unwrap()
    }
}

fn rows(t: &Tables, table: Table) -> Vec<OutputRow> {
    t.get(&table).unwrap().iter().cloned().collect()
}

fn order(id: &str, ts: i64, user: &str, amount: &str) -> String {
    format!(
        r#"{{"type":"order","event_id":"ev-{id}-{ts}","ts":{ts},"order_id":"{id}","user_id":"{user}","amount":{amount}}}"#
    )
}

fn ship(id: &str, ts: i64, order: &str, code: &str) -> String {
    format!(
        r#"{{"type":"shipment","event_id":"{id}","ts":{ts},"order_id":"{order}","shipper_code":"SF","logistic_code":"{code}"}}"#
    )
}

fn track(id: &str, ts: i64, code: &str, state: u32, code_ex: u32) -> String {
    format!(
        r#"{{"type":"track","event_id":"{id}","ts":{ts},"shipper_code":"SF","logistic_code":"{code}","state":"{state}","state_ex":{code_ex}}}"#
    )
}

fn status(id: &str, ts: i64, order: &str, s: &str) -> String {
    format!(
        r#"{{"type":"order_status","event_id":"{id}","ts":{ts},"order_id":"{order}","status":"{s}"}}"#
    )
}

fn impression(id: &str, ts: i64, camp: &str) -> String {
    format!(
        r#"{{"type":"impression","event_id":"{id}","ts":{ts},"campaign_id":"{camp}","channel":"baidu","device_id":"dx"}}"#
    )
}

fn open_stall(waybill: &str, order: &str, opened: i64, last_state: u32) -> OutputRow {
    OutputRow::Anomaly(AnomalyRow {
        kind: "stalled_parcel".into(),
        key: waybill.into(),
        opened_ts: opened,
        closed_ts: None,
        details: JsonText(format!(
            r#"{{"last_state":{last_state},"order_id":"{order}","person_id":"u1"}}"#
        )),
    })
}

fn replenishment(order: &str, due_ts: i64) -> OutputRow {
    OutputRow::Trigger(TriggerRow {
        trigger_id: format!("{order}:replenishment"),
        kind: "replenishment".into(),
        order_id: order.into(),
        person_id: "u1".into(),
        campaign_id: None,
        due_ts,
    })
}

/// The tables whose contents do not depend on the watermark.
const UNTIMED: [Table; 4] = [
    Table::Attribution,
    Table::OrderStatus,
    Table::CampaignMetrics,
    Table::DeadLetters,
];

#[test]
fn a_late_end_watermark_opens_the_stall_after_the_last_track() {
    let orders = [
        order("o1", T0, "u1", "100"),
        ship("s1", T0 + HOUR, "o1", "SF9"),
    ];
    // One non-final track (collected): the last event of the input.
    let logistics = [track("t1", T0 + 2 * HOUR, "SF9", 1, 1)];
    let input = Input::new(&[("orders", &orders), ("logistics", &logistics)]);

    let file = input.compute(None);
    assert!(rows(&file, Table::Anomalies).is_empty());
    assert!(rows(&file, Table::SuppressedPersons).is_empty());

    let live = input.compute(Some(T0 + 2 * HOUR + 2 * DAY));
    assert_eq!(
        rows(&live, Table::Anomalies),
        vec![open_stall("SF9", "o1", T0 + 26 * HOUR, 1)]
    );
    assert_eq!(
        rows(&live, Table::SuppressedPersons),
        vec![OutputRow::SuppressedPerson(SuppressedPersonRow {
            person_id: "u1".into(),
            reason: "stalled_parcel".into(),
            since_ts: T0 + 26 * HOUR,
        })]
    );
    assert!(rows(&live, Table::Triggers).is_empty());
    for table in UNTIMED {
        assert_eq!(rows(&file, table), rows(&live, table), "{table}");
    }

    // The stall opens exactly when W reaches ts + 24 h, not a millisecond before.
    let at = input.compute(Some(T0 + 26 * HOUR));
    assert_eq!(rows(&at, Table::Anomalies).len(), 1);
    let before = input.compute(Some(T0 + 26 * HOUR - 1));
    assert!(rows(&before, Table::Anomalies).is_empty());
    assert!(rows(&before, Table::SuppressedPersons).is_empty());
    // An end watermark below the largest ts changes nothing: W ends at the larger of the two.
    let low = input.compute(Some(T0));
    assert_eq!(low, file);
}

#[test]
fn a_late_end_watermark_fires_the_replenishment() {
    let orders = [
        order("o1", T0, "u1", "100"),
        ship("s1", T0 + HOUR, "o1", "SF123"),
    ];
    let logistics = [
        track("t1", T0 + 2 * HOUR, "SF123", 1, 1),
        track("t2", T0 + 6 * HOUR, "SF123", 3, 301),
    ];
    let input = Input::new(&[("orders", &orders), ("logistics", &logistics)]);
    let due = T0 + 6 * HOUR + 3 * DAY;

    let file = input.compute(None);
    assert!(rows(&file, Table::Triggers).is_empty());
    assert!(rows(&file, Table::Anomalies).is_empty());

    let live = input.compute(Some(T0 + 6 * HOUR + 4 * DAY));
    assert_eq!(rows(&live, Table::Triggers), vec![replenishment("o1", due)]);
    // A signed parcel cannot stall, so nothing else appears.
    assert!(rows(&live, Table::Anomalies).is_empty());
    assert!(rows(&live, Table::SuppressedPersons).is_empty());
    for table in UNTIMED {
        assert_eq!(rows(&file, table), rows(&live, table), "{table}");
    }

    // Due exactly at W: fires; one millisecond later: not yet.
    assert_eq!(rows(&input.compute(Some(due)), Table::Triggers).len(), 1);
    assert!(rows(&input.compute(Some(due - 1)), Table::Triggers).is_empty());
}

#[test]
fn a_status_at_or_before_the_due_time_cancels_the_replenishment() {
    let logistics = [
        track("t1", T0 + 2 * HOUR, "SF123", 1, 1),
        track("t2", T0 + 6 * HOUR, "SF123", 3, 301),
    ];
    let due = T0 + 6 * HOUR + 3 * DAY;
    let end = Some(T0 + 30 * DAY);
    for (flag, at, fires) in [
        ("cancelled", T0 + 7 * HOUR, false),
        ("after_sale", due, false),
        ("refunded", due - MINUTE, false),
        ("refunded", due + 1, true),
    ] {
        let orders = [
            order("o1", T0, "u1", "100"),
            ship("s1", T0 + HOUR, "o1", "SF123"),
            status("st1", at, "o1", flag),
        ];
        let t = Input::new(&[("orders", &orders), ("logistics", &logistics)]).compute(end);
        let got: Vec<OutputRow> = rows(&t, Table::Triggers)
            .into_iter()
            .filter(|r| matches!(r, OutputRow::Trigger(x) if x.kind == "replenishment"))
            .collect();
        let want = if fires {
            vec![replenishment("o1", due)]
        } else {
            vec![]
        };
        assert_eq!(got, want, "{flag} at {at}");
    }
}

#[test]
fn an_open_stall_opened_by_the_end_watermark_suppresses_the_persons_triggers() {
    // u1's first parcel stalls after its only track; the second is signed, and its
    // replenishment falls due while the first parcel's stall is open.
    let orders = [
        order("o1", T0, "u1", "100"),
        ship("s1", T0 + HOUR, "o1", "SF1"),
        order("o2", T0, "u1", "200"),
        ship("s2", T0 + HOUR, "o2", "SF2"),
    ];
    let logistics = [
        track("t1", T0 + 2 * HOUR, "SF1", 2, 2),
        track("t2", T0 + 3 * HOUR, "SF2", 2, 2),
        track("t3", T0 + 6 * HOUR, "SF2", 3, 3),
    ];
    let input = Input::new(&[("orders", &orders), ("logistics", &logistics)]);
    let t = input.compute(Some(T0 + 10 * DAY));
    assert_eq!(
        rows(&t, Table::Anomalies),
        vec![open_stall("SF1", "o1", T0 + 26 * HOUR, 2)]
    );
    assert_eq!(rows(&t, Table::SuppressedPersons).len(), 1);
    assert!(rows(&t, Table::Triggers).is_empty());
}

#[test]
fn a_late_end_watermark_reports_the_quiet_window() {
    // cQ: 10 impressions in each of three windows, then none; cR keeps W just short of the
    // quiet window's end in file mode.
    let mut ads = Vec::new();
    for w in 0..3 {
        for k in 0..10 {
            ads.push(impression(
                &format!("q{w}-{k}"),
                T0 + w * 5 * MINUTE + k * 1000,
                "cQ",
            ));
        }
    }
    ads.push(impression("r1", T0 + 20 * MINUTE - 1, "cR"));
    let input = Input::new(&[("ad_events", &ads)]);
    let quiet = |t: &Tables| -> Vec<OutputRow> {
        rows(t, Table::Anomalies)
            .into_iter()
            .filter(|r| matches!(r, OutputRow::Anomaly(a) if a.kind == "no_impressions"))
            .collect()
    };
    assert!(quiet(&input.compute(None)).is_empty());
    let want = vec![OutputRow::Anomaly(AnomalyRow {
        kind: "no_impressions".into(),
        key: "cQ".into(),
        opened_ts: T0 + 15 * MINUTE,
        closed_ts: Some(T0 + 20 * MINUTE),
        details: JsonText(r#"{"previous_impressions":30}"#.into()),
    })];
    assert_eq!(quiet(&input.compute(Some(T0 + 20 * MINUTE))), want);
    assert_eq!(quiet(&input.compute(Some(T0 + 30 * DAY))), want);
}
