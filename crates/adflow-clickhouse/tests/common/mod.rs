//! Shared helpers of the integration tests: the server URL, a fresh database, a runtime.
#![allow(dead_code)]

pub mod proxy;

use adflow_clickhouse::ClickHouseConfig;
use adflow_model::output::*;
use adflow_model::Sink;
use std::collections::BTreeMap;

/// The server under test: `ADFLOW_CLICKHOUSE_URL`. Unset: the test fails, unless
/// `ADFLOW_SKIP_SERVICE_TESTS=1`, in which case it returns `None` and the test passes vacuously.
pub fn server_url() -> Option<String> {
    match std::env::var("ADFLOW_CLICKHOUSE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") {
                eprintln!("ADFLOW_SKIP_SERVICE_TESTS=1: skipping a ClickHouse service test");
                None
            } else {
                panic!(
                    "ADFLOW_CLICKHOUSE_URL is not set. Start the test server with \
                     `scripts/services/clickhouse.sh start` and export \
                     ADFLOW_CLICKHOUSE_URL=<the URL it prints> (or set \
                     ADFLOW_SKIP_SERVICE_TESTS=1 to skip the ClickHouse service tests)."
                )
            }
        }
    }
}

/// Logs to the test output (`RUST_LOG`, default `adflow_clickhouse=info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("adflow_clickhouse=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A config for a database unique to this test and process, dropped first if it exists.
pub fn fresh_config(url: &str, name: &str) -> ClickHouseConfig {
    init_logging();
    let database = format!("adflow_test_{name}_{}", std::process::id());
    let mut config = ClickHouseConfig::new(url, database.clone());
    config.batch_rows = 100;
    config.batch_ms = 50;
    config.max_pending_rows = 400;
    config.retry.initial_backoff_ms = 50;
    config.retry.max_backoff_ms = 500;
    config.retry.request_timeout_ms = 10_000;
    run_sql(&config, &format!("DROP DATABASE IF EXISTS {database}"));
    config
}

pub fn run_sql(config: &ClickHouseConfig, sql: &str) {
    let client = config.client();
    runtime()
        .block_on(client.query(sql).execute())
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub fn query_u64(config: &ClickHouseConfig, sql: &str) -> u64 {
    let client = config.client();
    runtime()
        .block_on(client.query(sql).fetch_one::<u64>())
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn drop_database(config: &ClickHouseConfig) {
    run_sql(
        config,
        &format!("DROP DATABASE IF EXISTS {}", config.database),
    );
}

/// The current contents of every table, as the reference model computes them from a changelog:
/// rows whose signs sum positive.
pub fn expected(changes: &[Change]) -> BTreeMap<Table, Vec<OutputRow>> {
    let mut sums: BTreeMap<OutputRow, i64> = BTreeMap::new();
    for c in changes {
        *sums.entry(c.row.clone()).or_insert(0) += c.sign;
    }
    let mut out: BTreeMap<Table, Vec<OutputRow>> =
        Table::ALL.iter().map(|t| (*t, vec![])).collect();
    for (row, n) in sums {
        if n > 0 {
            out.entry(row.table()).or_default().push(row);
        }
    }
    out
}

pub fn actual(config: &ClickHouseConfig) -> BTreeMap<Table, Vec<OutputRow>> {
    let rt = runtime();
    Table::ALL
        .iter()
        .map(|t| {
            let rows = rt
                .block_on(adflow_clickhouse::current_contents(config, *t))
                .unwrap_or_else(|e| panic!("{t}: {e}"));
            (*t, rows)
        })
        .collect()
}

pub fn ch(row: OutputRow, version: i64, sign: i64) -> Change {
    Change { row, version, sign }
}

pub fn attribution(order: &str, click: &str, model: &str, credit: i64) -> OutputRow {
    OutputRow::Attribution(AttributionRow {
        order_id: order.into(),
        person_id: "u1".into(),
        model: model.into(),
        campaign_id: "c1".into(),
        channel: "douyin".into(),
        click_event_id: click.into(),
        click_ts: 1_700_000_000_000,
        order_ts: 1_700_000_360_000,
        credit: Fixed(credit),
        amount_fen: 19_900,
        credited_fen: (19_900 * credit + 500_000) / 1_000_000,
    })
}

pub fn order_status(
    order: &str,
    delivery: &str,
    campaign: Option<&str>,
    delivery_ts: Option<i64>,
) -> OutputRow {
    let signed = delivery == "signed";
    OutputRow::OrderStatus(OrderStatusRow {
        order_id: order.into(),
        person_id: "u1".into(),
        amount_fen: 19_900,
        order_ts: 1_700_000_360_000,
        phone_masked: Some("138****5678".into()),
        campaign_id: campaign.map(String::from),
        channel: campaign.map(|_| "douyin".to_string()),
        shipper_code: Some("SF".into()),
        logistic_code: if delivery == "none" {
            None
        } else {
            Some("SF123".into())
        },
        delivery: delivery.into(),
        delivery_ts,
        cancelled: false,
        after_sale: delivery == "refused",
        refunded: false,
        effective: signed,
    })
}

pub fn metrics(campaign: &str, hour: i64, clicks: i64, signed: i64, refused: i64) -> OutputRow {
    OutputRow::CampaignMetrics(CampaignMetricsRow {
        campaign_id: campaign.into(),
        channel: "douyin".into(),
        hour,
        impressions: 100 * clicks,
        clicks,
        cost_fen: 50 * clicks + 300,
        click_cost_fen: 50 * clicks,
        orders: signed + refused,
        gmv_fen: 19_900 * (signed + refused),
        signed,
        refused,
        effective: signed,
        refusal_rate: if signed + refused == 0 {
            None
        } else {
            Some(Fixed::from_ratio(refused, signed + refused))
        },
        cpc_fen: if clicks == 0 {
            None
        } else {
            Some(Fixed::from_ratio(50 * clicks, clicks))
        },
    })
}

pub fn anomaly(kind: &str, key: &str, opened: i64, closed: Option<i64>) -> OutputRow {
    OutputRow::Anomaly(AnomalyRow {
        kind: kind.into(),
        key: key.into(),
        opened_ts: opened,
        closed_ts: closed,
        details: JsonText(format!(
            r#"{{"last_state":"2","order_id":"o-{key}","person_id":"u1"}}"#
        )),
    })
}

pub fn trigger(order: &str, kind: &str, campaign: Option<&str>, due: i64) -> OutputRow {
    OutputRow::Trigger(TriggerRow {
        trigger_id: format!("{order}:{kind}"),
        kind: kind.into(),
        order_id: order.into(),
        person_id: "u1".into(),
        campaign_id: campaign.map(String::from),
        due_ts: due,
    })
}

pub fn suppressed(person: &str, reason: &str, since: i64) -> OutputRow {
    OutputRow::SuppressedPerson(SuppressedPersonRow {
        person_id: person.into(),
        reason: reason.into(),
        since_ts: since,
    })
}

pub fn dead_letter(pos: &str, raw: &str) -> OutputRow {
    OutputRow::DeadLetter(DeadLetterRow {
        stream: "orders".into(),
        position: pos.into(),
        raw: raw.into(),
        reason: "not JSON".into(),
        seen_ts: 1_700_000_000_123,
    })
}

/// A changelog touching every table: inserts, retractions at later versions, +1/−1 pairs at
/// one version, re-inserts after a retraction, nulls, quotes, tabs and non-ASCII text.
pub fn mixed_changelog(scale: usize) -> Vec<Change> {
    let h = 3_600_000i64;
    let t0 = 1_700_000_000_000i64;
    let mut v = Vec::new();
    for i in 0..scale {
        let o = format!("o{i}");
        let ts = t0 + i as i64 * 1000;
        // attribution: linear 1/2 each for two clicks, one retracted after an identity link.
        v.push(ch(attribution(&o, "k1", "linear", 500_000), ts, 1));
        v.push(ch(attribution(&o, "k2", "linear", 500_000), ts, 1));
        v.push(ch(attribution(&o, "k2", "linear", 500_000), ts + 10, -1));
        v.push(ch(attribution(&o, "k1", "linear", 500_000), ts + 10, -1));
        v.push(ch(attribution(&o, "k1", "linear", 1_000_000), ts + 10, 1));
        v.push(ch(attribution(&o, "k1", "last_click", 1_000_000), ts, 1));
        v.push(ch(attribution(&o, "k3", "time_decay", 333_333), ts, 1));
        // a +1/−1 pair at the same version (cancelled by consolidation or by the view)
        v.push(ch(
            attribution(&o, "k9", "first_click", 1_000_000),
            ts + 5,
            1,
        ));
        v.push(ch(
            attribution(&o, "k9", "first_click", 1_000_000),
            ts + 5,
            -1,
        ));
        // order_status goes none -> shipped -> signed (or refused)
        let final_state = if i % 3 == 0 { "refused" } else { "signed" };
        v.push(ch(order_status(&o, "none", None, None), ts, 1));
        v.push(ch(order_status(&o, "none", None, None), ts + 20, -1));
        v.push(ch(
            order_status(&o, "shipped", Some("c1"), None),
            ts + 20,
            1,
        ));
        v.push(ch(
            order_status(&o, "shipped", Some("c1"), None),
            ts + 30,
            -1,
        ));
        v.push(ch(
            order_status(&o, final_state, Some("c1"), Some(ts + 30)),
            ts + 30,
            1,
        ));
        // triggers: one emitted then retracted (suppressed), one kept
        v.push(ch(
            trigger(&o, "review_coupon", Some("c1"), ts + 25),
            ts + 25,
            1,
        ));
        v.push(ch(trigger(&o, "substitute", None, ts + 26), ts + 26, 1));
        v.push(ch(trigger(&o, "substitute", None, ts + 26), ts + 40, -1));
        // anomalies: opened then closed
        let key = format!("SF{i}");
        v.push(ch(
            anomaly("stalled_parcel", &key, ts + 24 * h, None),
            ts + 24 * h,
            1,
        ));
        if i % 2 == 0 {
            v.push(ch(
                anomaly("stalled_parcel", &key, ts + 24 * h, None),
                ts + 30 * h,
                -1,
            ));
            v.push(ch(
                anomaly("stalled_parcel", &key, ts + 24 * h, Some(ts + 30 * h)),
                ts + 30 * h,
                1,
            ));
        }
        // suppressed persons follow the open anomalies
        let p = format!("u{i}");
        v.push(ch(
            suppressed(&p, "stalled_parcel", ts + 24 * h),
            ts + 24 * h,
            1,
        ));
        if i % 2 == 0 {
            v.push(ch(
                suppressed(&p, "stalled_parcel", ts + 24 * h),
                ts + 30 * h,
                -1,
            ));
        }
        // dead letters never retract
        if i % 5 == 0 {
            v.push(ch(
                dead_letter(&format!("orders.jsonl:{i}"), "{\"bad\t'json\\ 中文"),
                ts,
                1,
            ));
        }
    }
    // campaign metrics: an hour row replaced as its parcels get delivered.
    for c in 0..(scale / 10 + 1) {
        let camp = format!("c{c}");
        let hour = t0 / h * h;
        v.push(ch(metrics(&camp, hour, 10, 0, 0), hour + 1, 1));
        v.push(ch(metrics(&camp, hour, 10, 0, 0), hour + 2, -1));
        v.push(ch(metrics(&camp, hour, 10, 2, 1), hour + 2, 1));
        v.push(ch(metrics(&camp, hour + h, 0, 0, 0), hour + h, 1));
        v.push(ch(metrics(&camp, hour + h, 0, 0, 0), hour + h + 1, -1));
        v.push(ch(metrics(&camp, hour + 2 * h, 3, 0, 0), hour + 2 * h, 1));
    }
    v
}

/// Hands `changes` to `sink` in calls of `per_call`, each with a frontier above its versions,
/// in version order (the engine's contract: no version below an earlier call's frontier).
pub fn write_in_order(sink: &mut dyn Sink, mut changes: Vec<Change>, per_call: usize) -> i64 {
    changes.sort_by_key(|c| c.version);
    let chunks: Vec<Vec<Change>> = changes.chunks(per_call).map(|c| c.to_vec()).collect();
    let mut frontier = i64::MIN;
    for (i, chunk) in chunks.iter().enumerate() {
        // Everything below the next call's smallest version has been handed over.
        let next = match chunks.get(i + 1) {
            Some(next) => next[0].version,
            None => chunk.iter().map(|c| c.version).max().unwrap_or(0) + 1,
        };
        frontier = frontier.max(next);
        sink.write(chunk.clone(), frontier).unwrap();
    }
    frontier
}
