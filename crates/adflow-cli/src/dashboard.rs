//! `adflow run --http`: the live dashboard at `/` and its JSON feeds (docs/operations.md,
//! "Dashboard").
//!
//! * `GET /` — one self-contained page ([`PAGE`]: inline CSS and JS, nothing fetched from
//!   elsewhere) that polls the two feeds below every 2 s;
//! * `GET /api/business` — the business view, from small aggregates a [`DashboardSink`] keeps
//!   up to date from the output changes: per campaign and channel and per channel the sums of
//!   `campaign_metrics` over its hours (ROI = gmv / cost and refusal rate = refused /
//!   (signed + refused) computed when asked), open anomalies per kind and the most recent
//!   ones, triggers per hour of `due_ts` and per kind, the number of suppressed persons;
//! * `GET /api/pipeline` — pipeline health, read from the same values `/metrics` serves (the
//!   Prometheus recorder's rendering, parsed): messages, events and dead letters per stream,
//!   the watermark and its lag, freshness p50/p99, consumer lag, sink rows and errors, ready.
//!
//! The sink is incremental: each change adds `sign ×` its row's values to the aggregates (one
//! mutex lock per batch); nothing is ever recomputed from the tables. It keeps nothing across
//! runs: after a live restart it shows the changes from the resume point on (see the docs).

use adflow_model::output::{Fixed, OutputRow};
use adflow_model::{Change, Sink, SinkError, Table};
use foldhash::HashMap;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The page served at `/`.
pub const PAGE: &str = include_str!("dashboard.html");

/// The tables the dashboard reads.
const TABLES: [Table; 5] = [
    Table::CampaignMetrics,
    Table::Anomalies,
    Table::Triggers,
    Table::SuppressedPersons,
    Table::DeadLetters,
];

/// How many of the most recent open anomalies `/api/business` lists.
const RECENT_OPEN: usize = 10;

/// The dashboard's shared state: the sink writes it, the HTTP server reads it.
#[derive(Clone, Default)]
pub struct Dashboard {
    view: Arc<Mutex<View>>,
}

impl Dashboard {
    pub fn new() -> Dashboard {
        Dashboard::default()
    }

    /// A sink of its own (live mode: a funnel sink on process 0), taking only the tables the
    /// dashboard reads ([`TABLES`]).
    pub fn sink(&self) -> Box<dyn Sink> {
        Box::new(DashboardSink {
            view: self.view.clone(),
            inner: None,
            received: i64::MIN,
        })
    }

    /// `inner` with the dashboard watching the changes it is handed (file mode: the file
    /// sink): no copy of the changes at all, where a sink of its own would get a copy of
    /// every `campaign_metrics` change (most of a run's changes). `inner` must take every
    /// table the dashboard reads; everything else is `inner`'s.
    pub fn tap(&self, inner: Box<dyn Sink>) -> Box<dyn Sink> {
        debug_assert!(TABLES.iter().all(|&t| inner.wants(t)));
        Box::new(DashboardSink {
            view: self.view.clone(),
            inner: Some(inner),
            received: i64::MIN,
        })
    }

    /// `/api/business`.
    pub fn business_json(&self) -> String {
        self.view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_json()
            .to_string()
    }
}

/// Sums of `campaign_metrics` rows (over their hours).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    impressions: i64,
    clicks: i64,
    cost_fen: i64,
    click_cost_fen: i64,
    orders: i64,
    gmv_fen: i64,
    signed: i64,
    refused: i64,
    effective: i64,
}

impl Totals {
    fn add(&mut self, d: &Totals, sign: i64) {
        self.impressions += sign * d.impressions;
        self.clicks += sign * d.clicks;
        self.cost_fen += sign * d.cost_fen;
        self.click_cost_fen += sign * d.click_cost_fen;
        self.orders += sign * d.orders;
        self.gmv_fen += sign * d.gmv_fen;
        self.signed += sign * d.signed;
        self.refused += sign * d.refused;
        self.effective += sign * d.effective;
    }

    fn add_row(&mut self, r: &adflow_model::output::CampaignMetricsRow, sign: i64) {
        self.impressions += sign * r.impressions;
        self.clicks += sign * r.clicks;
        self.cost_fen += sign * r.cost_fen;
        self.click_cost_fen += sign * r.click_cost_fen;
        self.orders += sign * r.orders;
        self.gmv_fen += sign * r.gmv_fen;
        self.signed += sign * r.signed;
        self.refused += sign * r.refused;
        self.effective += sign * r.effective;
    }

    fn is_zero(&self) -> bool {
        *self == Totals::default()
    }

    fn to_json(self, out: &mut serde_json::Map<String, Value>) {
        let ratio = |num: i64, den: i64| {
            (den != 0).then(|| {
                serde_json::to_value(Fixed::<4>::from_wide_ratio(num as i128, den as i128))
                    .unwrap_or(Value::Null)
            })
        };
        for (k, v) in [
            ("impressions", self.impressions),
            ("clicks", self.clicks),
            ("cost_fen", self.cost_fen),
            ("click_cost_fen", self.click_cost_fen),
            ("orders", self.orders),
            ("gmv_fen", self.gmv_fen),
            ("signed", self.signed),
            ("refused", self.refused),
            ("effective", self.effective),
        ] {
            out.insert(k.into(), v.into());
        }
        out.insert("roi".into(), ratio(self.gmv_fen, self.cost_fen).into());
        out.insert(
            "refusal_rate".into(),
            ratio(self.refused, self.signed + self.refused).into(),
        );
    }
}

/// The entry of `key` (created on first use without allocating on later ones).
fn slot<'a, T: Default>(map: &'a mut HashMap<String, T>, key: &str) -> &'a mut T {
    if !map.contains_key(key) {
        map.insert(key.to_string(), T::default());
    }
    // Present: inserted just above, under the same exclusive borrow (a plain `entry` would
    // allocate the key on every call).
    map.get_mut(key).expect("just inserted")
}

/// Adds `d` to the count of `key`, dropping it at zero.
fn count(map: &mut HashMap<String, i64>, key: &str, d: i64) {
    let c = slot(map, key);
    *c += d;
    if *c == 0 {
        map.remove(key);
    }
}

const HOUR_MS: i64 = 3_600_000;

/// The aggregates behind `/api/business`.
#[derive(Default)]
struct View {
    /// The frontier of the last batch: every change below it has been applied.
    frontier: Option<i64>,
    /// Changes applied.
    changes: u64,
    /// campaign → channel → totals.
    campaigns: HashMap<String, HashMap<String, Totals>>,
    channels: HashMap<String, Totals>,
    open_by_kind: HashMap<String, i64>,
    /// Open anomalies by (opened_ts, kind, key): only the open ones, so the newest are at
    /// the end.
    open: BTreeMap<(i64, String, String), i64>,
    /// Triggers by the start of the hour of `due_ts`.
    triggers_by_hour: BTreeMap<i64, i64>,
    triggers_by_kind: HashMap<String, i64>,
    triggers: i64,
    /// `suppressed_persons` rows per person (a person has one per reason).
    suppressed: HashMap<String, i64>,
    suppressed_by_reason: HashMap<String, i64>,
    dead_letters_by_stream: HashMap<String, i64>,
}

impl View {
    /// Adds `d` to the totals of (`campaign`, `channel`) and of `channel`.
    fn add_totals(&mut self, campaign: &str, channel: &str, d: &Totals) {
        let by_channel = slot(&mut self.campaigns, campaign);
        let t = slot(by_channel, channel);
        t.add(d, 1);
        if t.is_zero() {
            by_channel.remove(channel);
            if by_channel.is_empty() {
                self.campaigns.remove(campaign);
            }
        }
        let t = slot(&mut self.channels, channel);
        t.add(d, 1);
        if t.is_zero() {
            self.channels.remove(channel);
        }
    }

    fn apply(&mut self, changes: &[Change], frontier: i64) {
        // `campaign_metrics` changes come sorted by row within a version (a row's retraction
        // next to its new value, a campaign's hours together): a run of one campaign and
        // channel is summed first and added once.
        let mut run: Option<(&str, &str, Totals)> = None;
        for c in changes {
            let s = c.sign;
            match &c.row {
                OutputRow::CampaignMetrics(r) => match &mut run {
                    Some((campaign, channel, t))
                        if *campaign == r.campaign_id && *channel == r.channel =>
                    {
                        t.add_row(r, s)
                    }
                    _ => {
                        if let Some((campaign, channel, t)) = run.take() {
                            self.add_totals(campaign, channel, &t);
                        }
                        let mut t = Totals::default();
                        t.add_row(r, s);
                        run = Some((&r.campaign_id, &r.channel, t));
                    }
                },
                OutputRow::Anomaly(r) if r.closed_ts.is_none() => {
                    count(&mut self.open_by_kind, &r.kind, s);
                    let k = (r.opened_ts, r.kind.clone(), r.key.clone());
                    let n = self.open.entry(k.clone()).or_default();
                    *n += s;
                    if *n == 0 {
                        self.open.remove(&k);
                    }
                }
                OutputRow::Trigger(r) => {
                    self.triggers += s;
                    count(&mut self.triggers_by_kind, &r.kind, s);
                    let hour = r.due_ts.div_euclid(HOUR_MS) * HOUR_MS;
                    let n = self.triggers_by_hour.entry(hour).or_default();
                    *n += s;
                    if *n == 0 {
                        self.triggers_by_hour.remove(&hour);
                    }
                }
                OutputRow::SuppressedPerson(r) => {
                    count(&mut self.suppressed, &r.person_id, s);
                    count(&mut self.suppressed_by_reason, &r.reason, s);
                }
                OutputRow::DeadLetter(r) => count(&mut self.dead_letters_by_stream, &r.stream, s),
                _ => {}
            }
        }
        if let Some((campaign, channel, t)) = run {
            self.add_totals(campaign, channel, &t);
        }
        self.changes += changes.len() as u64;
        self.frontier = Some(self.frontier.map_or(frontier, |f| f.max(frontier)));
    }

    fn to_json(&self) -> Value {
        let sorted = |m: &HashMap<String, i64>| -> BTreeMap<String, i64> {
            m.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let mut campaigns: Vec<(&String, &String, &Totals)> = self
            .campaigns
            .iter()
            .flat_map(|(c, m)| m.iter().map(move |(ch, t)| (c, ch, t)))
            .collect();
        campaigns.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let campaigns: Vec<Value> = campaigns
            .into_iter()
            .map(|(c, ch, t)| {
                let mut o = serde_json::Map::new();
                o.insert("campaign_id".into(), c.as_str().into());
                o.insert("channel".into(), ch.as_str().into());
                t.to_json(&mut o);
                Value::Object(o)
            })
            .collect();
        let mut channels: Vec<(&String, &Totals)> = self.channels.iter().collect();
        channels.sort_by(|a, b| a.0.cmp(b.0));
        let channels: Vec<Value> = channels
            .into_iter()
            .map(|(ch, t)| {
                let mut o = serde_json::Map::new();
                o.insert("channel".into(), ch.as_str().into());
                t.to_json(&mut o);
                Value::Object(o)
            })
            .collect();
        let recent: Vec<Value> = self
            .open
            .iter()
            .rev()
            .filter(|(_, n)| **n > 0)
            .take(RECENT_OPEN)
            .map(|((opened_ts, kind, key), _)| {
                json!({"kind": kind, "key": key, "opened_ts": opened_ts})
            })
            .collect();
        let per_hour: Vec<Value> = self
            .triggers_by_hour
            .iter()
            .map(|(h, n)| json!({"hour": h, "count": n}))
            .collect();
        json!({
            "frontier": self.frontier,
            "changes": self.changes,
            "campaigns": campaigns,
            "channels": channels,
            "anomalies": {
                "open_total": self.open_by_kind.values().sum::<i64>(),
                "open_by_kind": sorted(&self.open_by_kind),
                "recent_open": recent,
            },
            "triggers": {
                "total": self.triggers,
                "by_kind": sorted(&self.triggers_by_kind),
                "per_hour": per_hour,
            },
            "suppressed": {
                "persons": self.suppressed.len(),
                "by_reason": sorted(&self.suppressed_by_reason),
            },
            "dead_letters_by_stream": sorted(&self.dead_letters_by_stream),
        })
    }
}

/// Feeds the [`Dashboard`]: on its own (not resumable; durable = what it received) or
/// watching another sink ([`Dashboard::tap`]).
struct DashboardSink {
    view: Arc<Mutex<View>>,
    inner: Option<Box<dyn Sink>>,
    received: i64,
}

impl Sink for DashboardSink {
    fn name(&self) -> &str {
        self.inner.as_ref().map_or("dashboard", |s| s.name())
    }

    fn wants(&self, table: Table) -> bool {
        match &self.inner {
            Some(s) => s.wants(table),
            None => TABLES.contains(&table),
        }
    }

    fn write(&mut self, changes: Vec<Change>, frontier: i64) -> Result<(), SinkError> {
        self.view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&changes, frontier);
        self.received = self.received.max(frontier);
        match &mut self.inner {
            Some(s) => s.write(changes, frontier),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.as_mut().map_or(Ok(()), |s| s.flush())
    }

    fn durable_frontier(&self) -> i64 {
        self.inner
            .as_ref()
            .map_or(self.received, |s| s.durable_frontier())
    }

    fn resume_frontier(&self, table: Table) -> i64 {
        self.inner
            .as_ref()
            .map_or(i64::MIN, |s| s.resume_frontier(table))
    }

    fn set_checkpoint(&mut self, checkpoint: &str) {
        if let Some(s) = &mut self.inner {
            s.set_checkpoint(checkpoint)
        }
    }

    fn resume_checkpoint(&self) -> Option<String> {
        self.inner.as_ref().and_then(|s| s.resume_checkpoint())
    }

    fn resumable(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.resumable())
    }

    fn resume_points(&self) -> Vec<Option<String>> {
        match &self.inner {
            Some(s) => s.resume_points(),
            None => vec![None],
        }
    }

    fn resume_to(&mut self, checkpoint: Option<&str>) -> Result<(), SinkError> {
        match &mut self.inner {
            Some(s) => s.resume_to(checkpoint),
            None if checkpoint.is_none() => Ok(()),
            None => Err(SinkError::Other {
                sink: "dashboard".into(),
                message: "keeps nothing to restore".into(),
            }),
        }
    }
}

/// One sample of the Prometheus text format: name, labels, value.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `name{a="x",b="y"} value` (comments and malformed lines: `None`).
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &rest[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The `q` quantile of a cumulative histogram (upper bound → count, `+Inf` last), linear
/// within a bucket as Prometheus's `histogram_quantile` does; `None` without samples.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = n - prev.1;
            let within = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, n);
    }
    Some(prev.0)
}

/// `/api/pipeline` from a `/metrics` rendering, at wall clock `now_ms`.
pub fn pipeline_json(metrics_text: &str, now_ms: i64) -> String {
    let mut streams: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut lag_by_stream: BTreeMap<String, f64> = BTreeMap::new();
    let mut sinks: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut tables: BTreeMap<String, u64> = BTreeMap::new();
    let mut freshness: Vec<(f64, f64)> = Vec::new();
    let mut freshness_count = 0u64;
    let (mut watermark, mut watermark_lag, mut ready) = (None, None, false);
    let mut dead_letters = 0u64;
    for s in metrics_text.lines().filter_map(parse_sample) {
        let n = s.value.max(0.0) as u64;
        let field = match s.name {
            "adflow_input_messages_total" => Some("messages"),
            "adflow_input_events_total" => Some("events"),
            "adflow_input_late_events_total" => Some("late"),
            "adflow_input_duplicates_total" => Some("duplicates"),
            "adflow_dead_letters_total" => Some("dead_letters"),
            _ => None,
        };
        if let (Some(field), Some(stream)) = (field, s.label("stream")) {
            if field == "dead_letters" {
                dead_letters += n;
            }
            streams
                .entry(stream.to_string())
                .or_default()
                .insert(field.into(), n.into());
            continue;
        }
        let sink_field = match s.name {
            "adflow_sink_rows_total" => Some("rows"),
            "adflow_sink_errors_total" => Some("errors"),
            _ => None,
        };
        if let (Some(field), Some(sink)) = (sink_field, s.label("sink")) {
            sinks
                .entry(sink.to_string())
                .or_default()
                .insert(field.into(), n.into());
            continue;
        }
        match s.name {
            "adflow_output_changes_total" => {
                if let Some(t) = s.label("table") {
                    tables.insert(t.to_string(), n);
                }
            }
            "adflow_watermark_seconds" => watermark = Some((s.value * 1000.0).round() as i64),
            "adflow_watermark_lag_seconds" => watermark_lag = Some(s.value),
            "adflow_ready" => ready = s.value >= 1.0,
            "adflow_consumer_lag_messages" => {
                if let Some(stream) = s.label("stream") {
                    *lag_by_stream.entry(stream.to_string()).or_default() += s.value.max(0.0);
                }
            }
            "adflow_freshness_seconds_bucket" => {
                let le = match s.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                freshness.push((le, s.value));
            }
            "adflow_freshness_seconds_count" => freshness_count = n,
            _ => {}
        }
    }
    freshness.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (stream, lag) in &lag_by_stream {
        streams
            .entry(stream.clone())
            .or_default()
            .insert("consumer_lag".into(), (*lag as u64).into());
    }
    let consumer_lag_total =
        (!lag_by_stream.is_empty()).then(|| lag_by_stream.values().sum::<f64>() as u64);
    json!({
        "now_ms": now_ms,
        "ready": ready,
        "watermark_ms": watermark,
        "watermark_lag_seconds": watermark_lag,
        "freshness": {
            "count": freshness_count,
            "p50_seconds": quantile(&freshness, 0.5),
            "p99_seconds": quantile(&freshness, 0.99),
        },
        "consumer_lag_total": consumer_lag_total,
        "dead_letters_total": dead_letters,
        "streams": streams,
        "sinks": sinks,
        "output_changes": tables,
    })
    .to_string()
}

/// The dashboard's routes on the `--http` server.
pub fn pages(
    dashboard: &Dashboard,
    metrics: adflow_http::PrometheusHandle,
) -> Vec<adflow_http::Page> {
    let d = dashboard.clone();
    vec![
        adflow_http::Page {
            path: "/",
            content_type: "text/html; charset=utf-8",
            body: Arc::new(|| PAGE.to_string()),
        },
        adflow_http::Page {
            path: "/api/business",
            content_type: "application/json",
            body: Arc::new(move || d.business_json()),
        },
        adflow_http::Page {
            path: "/api/pipeline",
            content_type: "application/json",
            body: Arc::new(move || pipeline_json(&metrics.render(), wall_ms())),
        },
    ]
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use adflow_model::output::{AnomalyRow, CampaignMetricsRow, JsonText, TriggerRow};

    fn metrics(campaign: &str, channel: &str, hour: i64, cost: i64, gmv: i64) -> OutputRow {
        OutputRow::CampaignMetrics(CampaignMetricsRow {
            campaign_id: campaign.into(),
            channel: channel.into(),
            hour,
            impressions: 10,
            clicks: 2,
            cost_fen: cost,
            click_cost_fen: cost,
            orders: 1,
            gmv_fen: gmv,
            signed: 1,
            refused: 1,
            effective: 1,
            refusal_rate: None,
            cpc_fen: None,
        })
    }

    fn ch(row: OutputRow, sign: i64) -> Change {
        Change {
            row,
            version: 0,
            sign,
        }
    }

    #[test]
    fn aggregates_follow_inserts_and_retractions() {
        let d = Dashboard::new();
        let mut s = d.sink();
        let anomaly = |key: &str, closed: Option<i64>| {
            OutputRow::Anomaly(AnomalyRow {
                kind: "stalled_parcel".into(),
                key: key.into(),
                opened_ts: 5,
                closed_ts: closed,
                details: JsonText("{}".into()),
            })
        };
        let trigger = OutputRow::Trigger(TriggerRow {
            trigger_id: "o1:review_coupon".into(),
            kind: "review_coupon".into(),
            order_id: "o1".into(),
            person_id: "p1".into(),
            campaign_id: None,
            due_ts: HOUR_MS + 5,
        });
        s.write(
            vec![
                ch(metrics("c1", "douyin", 0, 300, 900), 1),
                ch(metrics("c1", "douyin", HOUR_MS, 100, 0), 1),
                ch(metrics("c2", "douyin", 0, 7, 7), 1),
                ch(anomaly("w1", None), 1),
                ch(anomaly("w2", None), 1),
                ch(trigger.clone(), 1),
            ],
            10,
        )
        .unwrap();
        s.write(
            vec![
                ch(metrics("c2", "douyin", 0, 7, 7), -1),
                ch(anomaly("w1", None), -1),
                ch(anomaly("w1", Some(9)), 1),
            ],
            20,
        )
        .unwrap();
        assert_eq!(s.durable_frontier(), 20);
        assert!(!s.resumable());
        assert!(s.wants(Table::Triggers) && !s.wants(Table::Attribution));
        let v: Value = serde_json::from_str(&d.business_json()).unwrap();
        assert_eq!(v["frontier"], 20);
        let c = &v["campaigns"];
        assert_eq!(c.as_array().unwrap().len(), 1, "{c}");
        assert_eq!(c[0]["campaign_id"], "c1");
        assert_eq!(c[0]["cost_fen"], 400);
        assert_eq!(c[0]["gmv_fen"], 900);
        assert_eq!(c[0]["orders"], 2);
        assert_eq!(c[0]["roi"], 2.25);
        assert_eq!(c[0]["refusal_rate"], 0.5);
        assert_eq!(v["channels"][0]["cost_fen"], 400);
        assert_eq!(v["anomalies"]["open_by_kind"]["stalled_parcel"], 1);
        assert_eq!(v["anomalies"]["recent_open"][0]["key"], "w2");
        assert_eq!(v["triggers"]["total"], 1);
        assert_eq!(v["triggers"]["per_hour"][0]["hour"], HOUR_MS);
    }

    #[test]
    fn pipeline_reads_the_metrics_rendering() {
        let text = "# TYPE adflow_input_messages_total counter\n\
            adflow_input_messages_total{stream=\"ad_events\"} 120\n\
            adflow_dead_letters_total{stream=\"orders\"} 3\n\
            adflow_watermark_seconds 1700000000.5\n\
            adflow_watermark_lag_seconds 2.25\n\
            adflow_ready 1\n\
            adflow_consumer_lag_messages{stream=\"orders\",partition=\"0\"} 4\n\
            adflow_consumer_lag_messages{stream=\"orders\",partition=\"1\"} 5\n\
            adflow_sink_rows_total{sink=\"file\"} 77\n\
            adflow_freshness_seconds_bucket{le=\"0.5\"} 50\n\
            adflow_freshness_seconds_bucket{le=\"1\"} 100\n\
            adflow_freshness_seconds_bucket{le=\"+Inf\"} 100\n\
            adflow_freshness_seconds_count 100\n";
        let v: Value = serde_json::from_str(&pipeline_json(text, 1)).unwrap();
        assert_eq!(v["streams"]["ad_events"]["messages"], 120);
        assert_eq!(v["streams"]["orders"]["dead_letters"], 3);
        assert_eq!(v["streams"]["orders"]["consumer_lag"], 9);
        assert_eq!(v["consumer_lag_total"], 9);
        assert_eq!(v["dead_letters_total"], 3);
        assert_eq!(v["watermark_ms"], 1_700_000_000_500i64);
        assert_eq!(v["ready"], true);
        assert_eq!(v["sinks"]["file"]["rows"], 77);
        assert_eq!(v["freshness"]["p50_seconds"], 0.5);
        assert_eq!(v["freshness"]["p99_seconds"], 0.99);
        let empty: Value = serde_json::from_str(&pipeline_json("", 1)).unwrap();
        assert_eq!(empty["freshness"]["p50_seconds"], Value::Null);
        assert_eq!(empty["consumer_lag_total"], Value::Null);
    }
}
