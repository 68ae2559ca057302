//! The computation itself; see the crate docs for every semantic decision.

use crate::{RefConfig, RefError, Tables};
use adflow_model::event::{parse_event, raw_excerpt, track_code, Body, OrderFlag};
use adflow_model::identity::{device_node, phone_node};
use adflow_model::output::{
    div_round_half_away, AnomalyRow, AttributionRow, CampaignMetricsRow, DeadLetterRow, Fixed,
    JsonText, OrderStatusRow, SuppressedPersonRow, TriggerRow,
};
use adflow_model::time::HOUR;
use adflow_model::{OutputRow, StreamKind, Table};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

struct Click {
    event_id: String,
    ts: i64,
    campaign: String,
    channel: String,
    /// Identity nodes of the click (device unless junk, user when logged in).
    nodes: Vec<String>,
}

struct OrderDef {
    event_id: String,
    ts: i64,
    user_id: String,
    amount_fen: i64,
    phone_masked: Option<String>,
}

struct Ship {
    event_id: String,
    ts: i64,
    shipper_code: String,
    logistic_code: String,
}

struct Track {
    ts: i64,
    event_id: String,
    code: u32,
}

/// An anomaly interval of a waybill (`stalled_parcel` or `delivery_exception`).
struct Interval {
    kind: &'static str,
    opened: i64,
    closed: Option<i64>,
}

/// Union-find over identity node keys.
#[derive(Default)]
struct Identity {
    idx: HashMap<String, usize>,
    parent: Vec<usize>,
}

impl Identity {
    fn node(&mut self, key: &str) -> usize {
        if let Some(&i) = self.idx.get(key) {
            return i;
        }
        let i = self.parent.len();
        self.parent.push(i);
        self.idx.insert(key.to_string(), i);
        i
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra.max(rb)] = ra.min(rb);
        }
    }

    fn connect(&mut self, keys: &[String]) {
        let Some(first) = keys.first() else { return };
        let a = self.node(first);
        for k in &keys[1..] {
            let b = self.node(k);
            self.union(a, b);
        }
    }

    fn root_of(&mut self, key: &str) -> usize {
        let i = self.node(key);
        self.find(i)
    }
}

#[derive(Default)]
struct Agg {
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

fn is_signed(code: u32) -> bool {
    matches!(code, 3 | 301 | 302 | 304 | 311)
}

fn is_exception(code: u32) -> bool {
    matches!(code, 4 | 401..=403 | 405 | 412..=423)
}

fn is_refusal(code: u32) -> bool {
    matches!(code, 404 | 406 | 407)
}

/// Final codes end a parcel's journey: no stall after them.
fn is_final(code: u32) -> bool {
    is_signed(code) || code == 406 || code == 415
}

/// The `delivery` of spec §4 from a waybill's tracks sorted by (ts, event_id).
fn delivery(shipped: bool, tracks: &[Track]) -> &'static str {
    if !shipped {
        return "none";
    }
    let mut signed_before = false;
    for t in tracks {
        if is_refusal(t.code) && !signed_before {
            return "refused";
        }
        signed_before |= is_signed(t.code);
    }
    let Some(last) = tracks.last() else {
        return "shipped";
    };
    match last.code {
        0 | 10 => "shipped",
        1 => "collected",
        202 | 211 => "out_for_delivery",
        c if is_signed(c) => "signed",
        c if is_exception(c) => "exception",
        _ => "in_transit",
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "null".to_string())
}

fn js_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), js)
}

/// Details text in the canonical form a changelog reader produces
/// (`serde_json::Value::to_string`).
fn details(text: String) -> JsonText {
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => JsonText(v.to_string()),
        Err(_) => JsonText(text),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RefError + '_ {
    move |source| RefError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where event time ends (spec §2): the largest `ts` of the input (`max_ts`), or
/// `max(largest ts, end)` with an end watermark (a caught-up live run whose W followed the wall
/// clock). `i64::MIN` — no timer fires — without either.
fn final_watermark(max_ts: Option<i64>, end: Option<i64>) -> i64 {
    match (max_ts, end) {
        (Some(m), Some(e)) => m.max(e),
        (Some(m), None) => m,
        (None, Some(e)) => e,
        (None, None) => i64::MIN,
    }
}

/// Computes the final contents of every output table from `input_dir/<stream>.jsonl`
/// (a missing file is an empty stream). See the crate docs for the semantics.
pub fn compute(input_dir: &Path, cfg: &RefConfig) -> Result<Tables, RefError> {
    if cfg.window_ms < 0
        || cfg.half_life_ms <= 0
        || cfg.cpc_window_ms <= 0
        || cfg.no_imp_window_ms <= 0
        || cfg.cpc_ratio_den <= 0
        || cfg.cpc_baseline_windows < 0
        || cfg.no_imp_lookback < 1
    {
        return Err(RefError::Config(format!("{cfg:?}")));
    }
    let mut tables: Tables = Table::ALL.iter().map(|t| (*t, BTreeSet::new())).collect();
    let mut out = |row: OutputRow| {
        tables.entry(row.table()).or_default().insert(row);
    };

    let mut seen: HashSet<(StreamKind, String)> = HashSet::new();
    // The largest `ts` of the valid events; the final watermark is derived from it below.
    let mut max_ts: Option<i64> = None;
    let mut ident = Identity::default();
    let mut clicks: Vec<Click> = Vec::new();
    let mut orders: BTreeMap<String, OrderDef> = BTreeMap::new();
    let mut statuses: HashMap<String, Vec<(i64, OrderFlag)>> = HashMap::new();
    let mut ships: HashMap<String, Ship> = HashMap::new();
    let mut tracks: BTreeMap<String, Vec<Track>> = BTreeMap::new();
    let mut metrics: BTreeMap<(String, String, i64), Agg> = BTreeMap::new();
    // Per campaign: impressions per no-impression window; (clicks, click cost) per CPC window.
    let mut imp_windows: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    let mut click_windows: BTreeMap<String, BTreeMap<i64, (i64, i64)>> = BTreeMap::new();

    for stream in StreamKind::ALL {
        let file = format!("{}.jsonl", stream.name());
        let path = input_dir.join(&file);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        for (i, raw) in lines.into_iter().enumerate() {
            let ev = match parse_event(stream, raw, &cfg.parse) {
                Ok(ev) => ev,
                Err(reason) => {
                    out(OutputRow::DeadLetter(DeadLetterRow {
                        stream: stream.name().to_string(),
                        position: format!("{file}:{}", i + 1),
                        raw: raw_excerpt(raw),
                        reason,
                        seen_ts: 0,
                    }));
                    continue;
                }
            };
            if !seen.insert((stream, ev.event_id.to_string())) {
                continue;
            }
            let event_id = ev.event_id.to_string();
            max_ts = Some(max_ts.map_or(ev.ts, |m| m.max(ev.ts)));
            let ts = ev.ts;
            match ev.body {
                Body::Impression {
                    campaign_id,
                    channel,
                    cost_fen,
                    ..
                } => {
                    let (campaign_id, channel) = (campaign_id.to_string(), channel.to_string());
                    *imp_windows
                        .entry(campaign_id.clone())
                        .or_default()
                        .entry(ts.div_euclid(cfg.no_imp_window_ms))
                        .or_default() += 1;
                    let m = metrics
                        .entry((campaign_id, channel, ts - ts.rem_euclid(HOUR)))
                        .or_default();
                    m.impressions += 1;
                    m.cost_fen += cost_fen;
                }
                Body::Click {
                    campaign_id,
                    channel,
                    device_id,
                    cost_fen,
                    user_id,
                } => {
                    let (campaign_id, channel) = (campaign_id.to_string(), channel.to_string());
                    let mut nodes = Vec::new();
                    nodes.extend(device_node(&device_id));
                    nodes.extend(user_id.as_deref().map(|u| format!("user:{u}")));
                    ident.connect(&nodes);
                    let cw = click_windows
                        .entry(campaign_id.clone())
                        .or_default()
                        .entry(ts.div_euclid(cfg.cpc_window_ms))
                        .or_default();
                    cw.0 += 1;
                    cw.1 += cost_fen;
                    let m = metrics
                        .entry((
                            campaign_id.clone(),
                            channel.clone(),
                            ts - ts.rem_euclid(HOUR),
                        ))
                        .or_default();
                    m.clicks += 1;
                    m.cost_fen += cost_fen;
                    m.click_cost_fen += cost_fen;
                    clicks.push(Click {
                        event_id,
                        ts,
                        campaign: campaign_id,
                        channel,
                        nodes,
                    });
                }
                Body::Order {
                    order_id,
                    user_id,
                    amount_fen,
                    phone_hash,
                    phone_masked,
                } => {
                    let (order_id, user_id) = (order_id.to_string(), user_id.to_string());
                    let mut nodes = vec![format!("user:{user_id}")];
                    nodes.extend(phone_hash.as_deref().map(phone_node));
                    ident.connect(&nodes);
                    let newer = orders
                        .get(&order_id)
                        .is_none_or(|o| (ts, &event_id) > (o.ts, &o.event_id));
                    if newer {
                        orders.insert(
                            order_id,
                            OrderDef {
                                event_id,
                                ts,
                                user_id,
                                amount_fen,
                                phone_masked,
                            },
                        );
                    }
                }
                Body::OrderStatus { order_id, flag } => {
                    statuses
                        .entry(order_id.to_string())
                        .or_default()
                        .push((ts, flag));
                }
                Body::Shipment {
                    order_id,
                    shipper_code,
                    logistic_code,
                } => {
                    let order_id = order_id.to_string();
                    let newer = ships
                        .get(&order_id)
                        .is_none_or(|s| (ts, &event_id) > (s.ts, &s.event_id));
                    if newer {
                        ships.insert(
                            order_id,
                            Ship {
                                event_id,
                                ts,
                                shipper_code: shipper_code.to_string(),
                                logistic_code: logistic_code.to_string(),
                            },
                        );
                    }
                }
                Body::Track {
                    logistic_code,
                    state,
                    state_ex,
                    ..
                } => {
                    tracks
                        .entry(logistic_code.to_string())
                        .or_default()
                        .push(Track {
                            ts,
                            event_id,
                            code: track_code(state, state_ex),
                        });
                }
                Body::Link { nodes } => {
                    let keys: Vec<String> = nodes.iter().map(|n| n.key()).collect();
                    ident.connect(&keys);
                }
            }
        }
    }
    for t in tracks.values_mut() {
        t.sort_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
    }
    // The end of event time: the only watermark every timer below is compared with.
    let w_final = final_watermark(max_ts, cfg.end_watermark_ms);

    // Persons: the smallest user id of each component.
    let user_keys: Vec<String> = ident
        .idx
        .keys()
        .filter(|k| k.starts_with("user:"))
        .cloned()
        .collect();
    let mut min_user: HashMap<usize, String> = HashMap::new();
    for k in user_keys {
        let root = ident.root_of(&k);
        let id = k["user:".len()..].to_string();
        match min_user.get(&root) {
            Some(m) if *m <= id => {}
            _ => {
                min_user.insert(root, id);
            }
        }
    }
    // Clicks by component, sorted by (ts, event_id).
    let mut clicks_by_root: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, c) in clicks.iter().enumerate() {
        let mut roots: Vec<usize> = c.nodes.iter().map(|n| ident.root_of(n)).collect();
        roots.sort_unstable();
        roots.dedup();
        for r in roots {
            clicks_by_root.entry(r).or_default().push(i);
        }
    }
    for v in clicks_by_root.values_mut() {
        v.sort_by(|&a, &b| {
            (clicks[a].ts, &clicks[a].event_id).cmp(&(clicks[b].ts, &clicks[b].event_id))
        });
    }

    // Per order: person, last click, delivery.
    struct OrderInfo {
        person: String,
        last_click: Option<usize>,
        waybill: Option<String>,
    }
    let no_tracks: Vec<Track> = Vec::new();
    let mut info: BTreeMap<String, OrderInfo> = BTreeMap::new();
    for (oid, o) in &orders {
        let root = ident.root_of(&format!("user:{}", o.user_id));
        let person = min_user
            .get(&root)
            .cloned()
            .unwrap_or_else(|| o.user_id.clone());
        let t = o.ts;
        let cands: Vec<usize> = clicks_by_root
            .get(&root)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|&i| clicks[i].ts <= t && clicks[i].ts >= t - cfg.window_ms)
                    .collect()
            })
            .unwrap_or_default();
        let n = cands.len() as i64;
        for (k, &ci) in cands.iter().enumerate() {
            let c = &clicks[ci];
            let k = k as i64;
            let mut credits: Vec<(&str, Fixed<6>)> = Vec::new();
            if k == n - 1 {
                credits.push(("last_click", Fixed(1_000_000)));
            }
            if k == 0 {
                credits.push(("first_click", Fixed(1_000_000)));
            }
            credits.push(("linear", Fixed::from_ratio(1, n)));
            let pb = match n {
                1 => Fixed(1_000_000),
                2 => Fixed(500_000),
                _ if k == 0 || k == n - 1 => Fixed(400_000),
                _ => Fixed::from_ratio(2, 10 * (n - 2)),
            };
            credits.push(("position_based", pb));
            let weight = |ts: i64| (-((t - ts) as f64) / cfg.half_life_ms as f64).exp2();
            let total: f64 = cands.iter().map(|&i| weight(clicks[i].ts)).sum();
            let td = (weight(c.ts) / total * 1e6).round() as i64;
            credits.push(("time_decay", Fixed(td)));
            for (model, credit) in credits {
                if !cfg.models.iter().any(|m| m == model) {
                    continue;
                }
                out(OutputRow::Attribution(AttributionRow {
                    order_id: oid.clone(),
                    person_id: person.clone(),
                    model: model.to_string(),
                    campaign_id: c.campaign.clone(),
                    channel: c.channel.clone(),
                    click_event_id: c.event_id.clone(),
                    click_ts: c.ts,
                    order_ts: t,
                    credit,
                    amount_fen: o.amount_fen,
                    credited_fen: div_round_half_away(
                        o.amount_fen as i128 * credit.scaled() as i128,
                        1_000_000,
                    ) as i64,
                }));
            }
        }
        let ship = ships.get(oid);
        let waybill = ship.map(|s| s.logistic_code.clone());
        let trks = waybill
            .as_ref()
            .and_then(|w| tracks.get(w))
            .unwrap_or(&no_tracks);
        let delivery = delivery(ship.is_some(), trks);
        let flags = statuses.get(oid);
        let has = |f: OrderFlag| flags.is_some_and(|v| v.iter().any(|(_, g)| *g == f));
        let (cancelled, after_sale, refunded) = (
            has(OrderFlag::Cancelled),
            has(OrderFlag::AfterSale),
            has(OrderFlag::Refunded),
        );
        let effective = delivery == "signed" && !cancelled && !after_sale && !refunded;
        let last_click = cands.last().copied();
        let lc = last_click.map(|i| &clicks[i]);
        out(OutputRow::OrderStatus(OrderStatusRow {
            order_id: oid.clone(),
            person_id: person.clone(),
            amount_fen: o.amount_fen,
            order_ts: t,
            phone_masked: o.phone_masked.clone(),
            campaign_id: lc.map(|c| c.campaign.clone()),
            channel: lc.map(|c| c.channel.clone()),
            shipper_code: ship.map(|s| s.shipper_code.clone()),
            logistic_code: waybill.clone(),
            delivery: delivery.to_string(),
            delivery_ts: trks.last().map(|t| t.ts),
            cancelled,
            after_sale,
            refunded,
            effective,
        }));
        if let Some(c) = lc {
            let m = metrics
                .entry((
                    c.campaign.clone(),
                    c.channel.clone(),
                    t - t.rem_euclid(HOUR),
                ))
                .or_default();
            m.orders += 1;
            m.gmv_fen += o.amount_fen;
            m.signed += (delivery == "signed") as i64;
            m.refused += (delivery == "refused") as i64;
            m.effective += effective as i64;
        }
        info.insert(
            oid.clone(),
            OrderInfo {
                person,
                last_click,
                waybill,
            },
        );
    }

    // campaign_metrics.
    for ((campaign_id, channel, hour), m) in metrics {
        let any = [
            m.impressions,
            m.clicks,
            m.cost_fen,
            m.click_cost_fen,
            m.orders,
            m.gmv_fen,
            m.signed,
            m.refused,
            m.effective,
        ]
        .iter()
        .any(|&x| x != 0);
        if !any {
            continue;
        }
        out(OutputRow::CampaignMetrics(CampaignMetricsRow {
            campaign_id,
            channel,
            hour,
            impressions: m.impressions,
            clicks: m.clicks,
            cost_fen: m.cost_fen,
            click_cost_fen: m.click_cost_fen,
            orders: m.orders,
            gmv_fen: m.gmv_fen,
            signed: m.signed,
            refused: m.refused,
            effective: m.effective,
            refusal_rate: (m.signed + m.refused > 0)
                .then(|| Fixed::from_ratio(m.refused, m.signed + m.refused)),
            cpc_fen: (m.clicks > 0).then(|| Fixed::from_ratio(m.click_cost_fen, m.clicks)),
        }));
    }

    // Parcel anomalies, per waybill.
    let mut waybill_orders: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (oid, i) in &info {
        if let Some(w) = &i.waybill {
            waybill_orders.entry(w).or_default().insert(oid);
        }
    }
    let mut intervals: HashMap<&str, Vec<Interval>> = HashMap::new();
    for (w, trks) in &tracks {
        let first_order = waybill_orders
            .get(w.as_str())
            .and_then(|s| s.iter().next().copied());
        let person = first_order
            .and_then(|o| info.get(o))
            .map(|i| i.person.as_str());
        let mut ivs = Vec::new();
        let mut add = |kind: &'static str, opened: i64, closed: Option<i64>, extra: String| {
            out(OutputRow::Anomaly(AnomalyRow {
                kind: kind.to_string(),
                key: w.clone(),
                opened_ts: opened,
                closed_ts: closed,
                details: details(format!(
                    r#"{{"order_id":{},"person_id":{},{extra}}}"#,
                    js_opt(first_order),
                    js_opt(person)
                )),
            }));
            ivs.push(Interval {
                kind,
                opened,
                closed,
            });
        };
        for (i, t) in trks.iter().enumerate() {
            if is_final(t.code) {
                continue;
            }
            let opened = t.ts + cfg.stall_threshold_ms;
            let last_state = format!(r#""last_state":{}"#, t.code);
            match trks.get(i + 1) {
                Some(next) if next.ts - t.ts >= cfg.stall_threshold_ms => {
                    add("stalled_parcel", opened, Some(next.ts), last_state)
                }
                Some(_) => {}
                None if w_final >= opened => add("stalled_parcel", opened, None, last_state),
                None => {}
            }
        }
        let mut i = 0;
        while i < trks.len() {
            if !is_exception(trks[i].code) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < trks.len() && is_exception(trks[j + 1].code) {
                j += 1;
            }
            let closed = trks.get(j + 1).map(|t| t.ts);
            let state = format!(r#""state":{}"#, trks[i].code);
            add("delivery_exception", trks[i].ts, closed, state);
            i = j + 1;
        }
        intervals.insert(w.as_str(), ivs);
    }

    // Campaign anomalies.
    for (campaign, windows) in &click_windows {
        for (&w, &(n, cost)) in windows {
            if n < cfg.cpc_min_clicks {
                continue;
            }
            let (mut bn, mut bcost) = (0i64, 0i64);
            for (_, &(c, k)) in windows.range(w - cfg.cpc_baseline_windows..w) {
                bn += c;
                bcost += k;
            }
            if bn < cfg.cpc_min_baseline_clicks {
                continue;
            }
            // cost/n ≥ ratio × bcost/bn, exactly.
            let lhs = cost as i128 * bn as i128 * cfg.cpc_ratio_den as i128;
            let rhs = cfg.cpc_ratio_num as i128 * bcost as i128 * n as i128;
            if lhs < rhs {
                continue;
            }
            out(OutputRow::Anomaly(AnomalyRow {
                kind: "cpc_spike".into(),
                key: campaign.clone(),
                opened_ts: w * cfg.cpc_window_ms,
                closed_ts: Some((w + 1) * cfg.cpc_window_ms),
                details: details(format!(
                    r#"{{"cpc_fen":{},"baseline_cpc_fen":{},"clicks":{n}}}"#,
                    Fixed::<2>::from_ratio(cost, n),
                    Fixed::<2>::from_ratio(bcost, bn)
                )),
            }));
        }
    }
    for (campaign, windows) in &imp_windows {
        for &v in windows.keys() {
            let w = v + 1;
            if windows.contains_key(&w) || (w + 1) * cfg.no_imp_window_ms > w_final {
                continue;
            }
            let prev: Vec<i64> = (1..=cfg.no_imp_lookback)
                .map(|k| windows.get(&(w - k)).copied().unwrap_or(0))
                .collect();
            if prev.iter().any(|&c| c < cfg.no_imp_min) {
                continue;
            }
            out(OutputRow::Anomaly(AnomalyRow {
                kind: "no_impressions".into(),
                key: campaign.clone(),
                opened_ts: w * cfg.no_imp_window_ms,
                closed_ts: Some((w + 1) * cfg.no_imp_window_ms),
                details: details(format!(
                    r#"{{"previous_impressions":{}}}"#,
                    prev.iter().sum::<i64>()
                )),
            }));
        }
    }

    // Each person's parcels.
    let mut person_waybills: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in info.values() {
        let e = person_waybills.entry(i.person.as_str()).or_default();
        if let Some(w) = &i.waybill {
            e.insert(w.as_str());
        }
    }
    let suppressed_at = |person: &str, due: i64| {
        person_waybills.get(person).is_some_and(|ws| {
            ws.iter().any(|w| {
                intervals.get(w).is_some_and(|ivs| {
                    ivs.iter()
                        .any(|iv| iv.opened <= due && iv.closed.is_none_or(|c| due < c))
                })
            })
        })
    };

    // Triggers.
    for (oid, i) in &info {
        let trks = i
            .waybill
            .as_ref()
            .and_then(|w| tracks.get(w))
            .unwrap_or(&no_tracks);
        let sts: &[(i64, OrderFlag)] = statuses.get(oid).map_or(&[], |v| v.as_slice());
        let mut due: Vec<(&str, i64)> = Vec::new();
        if let Some(t) = trks.iter().find(|t| t.code == 202) {
            due.push(("review_coupon", t.ts));
        }
        if let Some(t) = trks.iter().find(|t| is_signed(t.code)) {
            let d = t.ts + cfg.replenishment_delay_ms;
            if d <= w_final && !sts.iter().any(|(ts, _)| *ts <= d) {
                due.push(("replenishment", d));
            }
        }
        let refusal = trks.iter().find(|t| is_refusal(t.code)).map(|t| t.ts);
        let after_sale = sts
            .iter()
            .filter(|(_, f)| *f == OrderFlag::AfterSale)
            .map(|(ts, _)| *ts)
            .min();
        if let Some(d) = refusal.into_iter().chain(after_sale).min() {
            due.push(("substitute", d));
        }
        for (kind, d) in due {
            if suppressed_at(&i.person, d) {
                continue;
            }
            out(OutputRow::Trigger(TriggerRow {
                trigger_id: format!("{oid}:{kind}"),
                kind: kind.to_string(),
                order_id: oid.clone(),
                person_id: i.person.clone(),
                campaign_id: i.last_click.map(|c| clicks[c].campaign.clone()),
                due_ts: d,
            }));
        }
    }

    // suppressed_persons.
    for (person, ws) in &person_waybills {
        let mut since: BTreeMap<&str, i64> = BTreeMap::new();
        for w in ws {
            for iv in intervals.get(w).into_iter().flatten() {
                if iv.closed.is_none() {
                    let e = since.entry(iv.kind).or_insert(iv.opened);
                    *e = (*e).min(iv.opened);
                }
            }
        }
        for (reason, since_ts) in since {
            out(OutputRow::SuppressedPerson(SuppressedPersonRow {
                person_id: person.to_string(),
                reason: reason.to_string(),
                since_ts,
            }));
        }
    }
    Ok(tables)
}
