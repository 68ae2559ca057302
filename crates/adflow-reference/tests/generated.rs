//! The reference over generated data: invariants that must hold whatever the data.

use adflow_gen::{generate, GenerateArgs};
use adflow_model::output::Fixed;
use adflow_model::{OutputRow, StreamKind, Table};
use adflow_reference::{compute, RefConfig};
use std::collections::BTreeMap;

#[test]
fn generated_data_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = GenerateArgs::with_output(dir.path());
    args.users = 400;
    args.days = 5;
    args.seed = 3;
    let report = generate(&args).unwrap();
    let t = compute(dir.path(), &RefConfig::default()).unwrap();

    let malformed: u64 = StreamKind::ALL
        .iter()
        .map(|s| report.stream(*s).malformed)
        .sum();
    assert_eq!(t[&Table::DeadLetters].len() as u64, malformed);
    assert_eq!(t[&Table::OrderStatus].len() as u64, report.orders);

    // Per order and model: credits sum to about 1; exactly one first and one last click.
    let mut sums: BTreeMap<(String, String), (i64, usize)> = BTreeMap::new();
    for r in &t[&Table::Attribution] {
        let OutputRow::Attribution(a) = r else {
            panic!("{r:?}")
        };
        assert!(a.click_ts <= a.order_ts && a.order_ts - a.click_ts <= 7 * 86_400_000);
        let e = sums
            .entry((a.order_id.clone(), a.model.clone()))
            .or_default();
        e.0 += a.credit.0;
        e.1 += 1;
    }
    assert!(!sums.is_empty());
    for ((order, model), (sum, n)) in &sums {
        match model.as_str() {
            "first_click" | "last_click" => assert_eq!((*sum, *n), (1_000_000, 1), "{order}"),
            _ => assert!(
                (sum - 1_000_000).abs() <= *n as i64,
                "{order} {model} {sum}"
            ),
        }
    }

    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in &t[&Table::Anomalies] {
        let OutputRow::Anomaly(a) = r else {
            panic!("{r:?}")
        };
        *kinds.entry(a.kind.clone()).or_default() += 1;
    }
    assert_eq!(
        kinds.get("cpc_spike").copied().unwrap_or(0),
        report.cpc_spikes as usize,
        "{kinds:?}"
    );
    assert!(
        kinds.get("no_impressions").copied().unwrap_or(0) >= 1,
        "{kinds:?}"
    );
    assert!(
        kinds.get("stalled_parcel").copied().unwrap_or(0) >= 1,
        "{kinds:?}"
    );
    assert!(
        kinds.get("delivery_exception").copied().unwrap_or(0) >= 1,
        "{kinds:?}"
    );
    for table in [
        Table::Triggers,
        Table::SuppressedPersons,
        Table::CampaignMetrics,
    ] {
        assert!(!t[&table].is_empty(), "{table}");
    }
    // Every metrics row has a sane CPC and refusal rate.
    for r in &t[&Table::CampaignMetrics] {
        let OutputRow::CampaignMetrics(m) = r else {
            panic!("{r:?}")
        };
        assert_eq!(m.cpc_fen.is_some(), m.clicks > 0);
        if let Some(rate) = m.refusal_rate {
            assert!(rate >= Fixed(0) && rate <= Fixed(10_000));
        }
    }
}
