//! `anomalies`: one row per anomaly interval — spec §4.
//!
//! * `stalled_parcel`, `delivery_exception`: the parcel intervals built by [`crate::logistics`]
//!   (stalls are watermark timers there), with details naming the parcel's order and person.
//! * `cpc_spike` (key campaign): click counts and click cost per epoch-aligned window are
//!   summed by `count`; each window's totals are sent to itself and to the next `baseline`
//!   windows, and one `reduce` per (campaign, window) compares the window with the sum of the
//!   ones before it. Reported as soon as the condition holds (and retracted if later data undoes
//!   it).
//! * `no_impressions` (key campaign): impression counts per window (impressions take effect at
//!   their window's end, so a window's count changes once, not once per impression), sent to
//!   the next `lookback` windows; a window with none while each of the `lookback` before had at
//!   least the minimum is reported once the watermark passes its end (a timer).
//!
//! Window state expires `retention` after the window; rows freeze then.

use crate::types::*;
use crate::{need, Context, Pipeline, SharedName};
use adflow_engine::ops::{consolidate_batches, delay_until, expire_at, expire_grouped_at};
use adflow_engine::{Col, Diff};
use adflow_model::event::Body;
use adflow_model::output::{AnomalyRow, Fixed, JsonText};
use adflow_model::{OutputRow, Sym, Table};

pub struct Anomalies;

fn json_opt(s: &Option<Sym>) -> String {
    match s {
        Some(s) => serde_json::Value::String(s.to_string()).to_string(),
        None => "null".into(),
    }
}

/// The row of a parcel interval.
pub fn interval_row(i: &ParcelInterval) -> AnomalyRow {
    let code_field = match i.kind {
        IntervalKind::StalledParcel => "last_state",
        IntervalKind::DeliveryException => "state",
    };
    AnomalyRow {
        kind: i.kind.name().to_string(),
        key: i.waybill.to_string(),
        opened_ts: i.opened,
        closed_ts: i.closed,
        details: JsonText(format!(
            r#"{{"order_id":{},"person_id":{},"{}":{}}}"#,
            json_opt(&i.owner_order),
            json_opt(&i.owner_person),
            code_field,
            i.code
        )),
    }
}

/// Click totals of a window: (clicks, click cost).
type WindowClicks = (i64, i64);

/// Whether window totals `w` spike against baseline totals `b`.
pub fn is_spike(w: WindowClicks, b: WindowClicks, p: &Params) -> bool {
    w.0 >= p.cpc_min_clicks
        && b.0 >= p.cpc_min_baseline_clicks
        && b.0 > 0
        && w.0 > 0
        // cost_w / clicks_w >= ratio × cost_b / clicks_b, in integers (ratio in thousandths).
        && (w.1 as i128) * (b.0 as i128) * 1000 >= (p.cpc_ratio_milli as i128) * (b.1 as i128) * (w.0 as i128)
}

impl Pipeline for Anomalies {
    fn name(&self) -> &'static str {
        "anomalies"
    }
    fn uses(&self) -> &'static [SharedName] {
        &[SharedName::ParcelIntervals]
    }
    fn provides(&self) -> &'static [SharedName] {
        &[]
    }
    fn emits(&self) -> &'static [Table] {
        &[Table::Anomalies]
    }

    fn build(&self, cx: &mut Context<'_>) -> Result<(), String> {
        let intervals = need!(cx, parcel_intervals, SharedName::ParcelIntervals);
        let p = cx.params.clone();
        cx.outputs
            .push(intervals.map(|i| (OutputRow::Anomaly(interval_row(&i)), i.freeze)));

        // cpc_spike
        let (cw, ret) = (p.cpc_window, p.retention);
        let clicks = cx.by_type.clicks.clone().flat_map(move |e| match e.body {
            Body::Click {
                campaign_id,
                cost_fen,
                ..
            } => Some(((campaign_id, window_start(e.ts, cw)), cost_fen)),
            _ => None,
        });
        let clicks = expire_grouped_at(
            clicks,
            "ExpireClickWindows",
            move |((_, w), _): &((Sym, i64), i64)| Params::at(*w, ret),
        );
        let per_window: Col<'_, ((Sym, i64), (i64, i64))> =
            clicks.reduce_named("ClickWindow", |_k, vals, out| {
                let (mut n, mut cost) = (0i64, 0i64);
                for (c, r) in vals {
                    n += *r as i64;
                    cost += **c * *r as i64;
                }
                if n != 0 {
                    out.push(((n, cost), 1));
                }
            });
        let baseline = p.cpc_baseline;
        let spread = per_window.flat_map(move |((c, w), totals)| {
            (0..=baseline).map(move |k| ((c.clone(), w + k * cw), (k, totals)))
        });
        let p1 = p.clone();
        let spikes = spread.reduce_named(
            "CpcSpike",
            move |(c, w): &(Sym, i64), vals, out: &mut Vec<(AnomalyRow, Diff)>| {
                let mut own = (0i64, 0i64);
                let mut base = (0i64, 0i64);
                for ((k, (n, cost)), r) in vals {
                    if *r <= 0 {
                        continue;
                    }
                    if *k == 0 {
                        own = (*n, *cost);
                    } else {
                        base = (base.0 + n, base.1 + cost);
                    }
                }
                if is_spike(own, base, &p1) {
                    out.push((
                        AnomalyRow {
                            kind: "cpc_spike".into(),
                            key: c.to_string(),
                            opened_ts: *w,
                            closed_ts: Some(*w + p1.cpc_window),
                            details: JsonText(format!(
                                r#"{{"cpc_fen":{},"baseline_cpc_fen":{},"clicks":{}}}"#,
                                Fixed::<2>::from_ratio(own.1, own.0),
                                Fixed::<2>::from_ratio(base.1, base.0),
                                own.0
                            )),
                        },
                        1,
                    ));
                }
            },
        );
        cx.outputs.push(spikes.map(move |(_, row)| {
            let freeze = Params::at(row.opened_ts, ret);
            (OutputRow::Anomaly(row), freeze)
        }));

        // no_impressions
        let nw = p.noimp_window;
        let imps = cx
            .by_type
            .impressions
            .clone()
            .flat_map(move |e| match e.body {
                Body::Impression { campaign_id, .. } => Some((campaign_id, window_start(e.ts, nw))),
                _ => None,
            });
        // Only a window's total matters, and only from the window's end on: the window's own
        // anomaly is reported once the watermark passes its end, and the windows it is a
        // lookback of end later. So every impression takes effect at its window's end, where a
        // window's impressions consolidate into one update instead of changing the window's
        // count (and the counts spread from it) once per impression. A late impression (its
        // window already ended) takes effect at its own time, as before.
        let imps = delay_until(
            imps,
            "ImpressionsAtWindowEnd",
            move |(_, w): &(Sym, i64)| Params::at(*w, nw),
        );
        let imps = consolidate_batches(imps, "ConsolidateImpressionWindows");
        let imps = expire_at(
            imps,
            "ExpireImpressionWindows",
            move |(_, w): &(Sym, i64)| Params::at(*w, ret),
        );
        let counts = imps.count();
        let (lookback, min) = (p.noimp_lookback, p.noimp_min);
        let spread = counts.flat_map(move |((c, w), n)| {
            let n = n as i64;
            (0..=lookback)
                .filter(move |k| *k == 0 || n >= min)
                .map(move |k| ((c.clone(), w + k * nw), (k, n)))
        });
        let quiet = spread.reduce_named(
            "NoImpressions",
            move |(c, w): &(Sym, i64), vals, out: &mut Vec<(AnomalyRow, Diff)>| {
                let mut before = 0;
                let mut total = 0;
                for ((k, n), r) in vals {
                    if *r <= 0 {
                        continue;
                    }
                    if *k == 0 {
                        return; // the window has impressions
                    }
                    before += 1;
                    total += n;
                }
                if before == lookback {
                    out.push((
                        AnomalyRow {
                            kind: "no_impressions".into(),
                            key: c.to_string(),
                            opened_ts: *w,
                            closed_ts: Some(*w + nw),
                            details: JsonText(format!(r#"{{"previous_impressions":{total}}}"#)),
                        },
                        1,
                    ));
                }
            },
        );
        // Reported once the watermark has passed the window's end.
        let quiet = delay_until(
            quiet,
            "NoImpressionTimer",
            |(_, row): &((Sym, i64), AnomalyRow)| {
                Params::at(row.closed_ts.unwrap_or(row.opened_ts), 0)
            },
        );
        cx.outputs.push(quiet.map(move |(_, row)| {
            let freeze = Params::at(row.opened_ts, ret);
            (OutputRow::Anomaly(row), freeze)
        }));
        Ok(())
    }
}
