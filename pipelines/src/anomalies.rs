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
//! A cpc/no-impression row freezes `retention` after its window. A window's state stays until
//! the last window that looks back on it has frozen (`retention` + `baseline` or `lookback`
//! windows after it), so no row's inputs change before the row freezes: expiry never rewrites
//! or retracts an emitted row. Parcel interval rows freeze as a group per waybill (see
//! [`crate::logistics`]).

use crate::types::*;
use crate::{need, Context, Pipeline, SharedName};
use adflow_engine::ops::{consolidate_batches, delay_until, expire_at, expire_grouped_at};
use adflow_engine::{group_id, Col, Diff, Freeze};
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

/// A parcel interval row freezes with every other interval row of its waybill: once one of the
/// waybill's facts (its order, its oldest track) has left the state, none of its rows changes,
/// and no row appears because of it (an interval without its expired order).
pub fn interval_freeze(i: &ParcelInterval) -> Freeze {
    let group = group_id(&[b"anomalies/waybill", i.waybill.as_str().as_bytes()]);
    Freeze::grouped(i.freeze, group, i.until)
}

/// Click totals of a window: (clicks, click cost as a wide sum).
type WindowClicks = (i64, SumFen);

/// Compares the fractions `a / b` and `c / d` (`b`, `d` > 0, `a`, `c` ≥ 0) exactly, by their
/// continued-fraction expansions: no product is formed, so nothing can overflow.
fn cmp_ratio(a: i128, b: i64, c: i128, d: i64) -> std::cmp::Ordering {
    let (mut a, mut b, mut c, mut d) = (a, b as i128, c, d as i128);
    let mut flip = false;
    loop {
        let (qa, qc) = (a / b, c / d);
        if qa != qc {
            let o = qa.cmp(&qc);
            return if flip { o.reverse() } else { o };
        }
        let (ra, rc) = (a % b, c % d);
        match (ra == 0, rc == 0) {
            (true, true) => return std::cmp::Ordering::Equal,
            (true, false) => {
                let o = std::cmp::Ordering::Less;
                return if flip { o.reverse() } else { o };
            }
            (false, true) => {
                let o = std::cmp::Ordering::Greater;
                return if flip { o.reverse() } else { o };
            }
            (false, false) => {
                // a/b = q + ra/b, c/d = q + rc/d: compare b/ra with d/rc, reversed.
                (a, b, c, d) = (b, ra, d, rc);
                flip = !flip;
            }
        }
    }
}

/// Whether window totals `w` spike against baseline totals `b`.
pub fn is_spike(w: WindowClicks, b: WindowClicks, p: &Params) -> bool {
    w.0 >= p.cpc_min_clicks
        && b.0 >= p.cpc_min_baseline_clicks
        && b.0 > 0
        && w.0 > 0
        // cost_w / clicks_w >= ratio × cost_b / clicks_b, in integers (ratio in thousandths);
        // compared as exact fractions, so no product can overflow.
        && cmp_ratio(w.1 * 1000, w.0, p.cpc_ratio_milli as i128 * b.1, b.0) != std::cmp::Ordering::Less
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
            .push(intervals.map(|i| (OutputRow::Anomaly(interval_row(&i)), interval_freeze(&i))));

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
        // A window is the baseline of the `baseline` windows after it: it stays until the last
        // of them has frozen, so no row's inputs change before the row freezes.
        let click_keep = ret.saturating_add(p.cpc_baseline.saturating_mul(cw));
        let clicks = expire_grouped_at(
            clicks,
            "ExpireClickWindows",
            move |((_, w), _): &((Sym, i64), i64)| Params::at(*w, click_keep),
        );
        let per_window: Col<'_, ((Sym, i64), WindowClicks)> =
            clicks.reduce_named("ClickWindow", |_k, vals, out| {
                let (mut n, mut cost) = (0i64, 0 as SumFen);
                for (c, r) in vals {
                    n += *r as i64;
                    cost += **c as SumFen * *r as SumFen;
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
                let mut own: WindowClicks = (0, 0);
                let mut base: WindowClicks = (0, 0);
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
                                Fixed::<2>::from_wide_ratio(own.1, own.0 as i128),
                                Fixed::<2>::from_wide_ratio(base.1, base.0 as i128),
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
            (OutputRow::Anomaly(row), freeze.into())
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
        // As for clicks: a window outlives the `lookback` windows it is a lookback of.
        let imp_keep = ret.saturating_add(p.noimp_lookback.saturating_mul(nw));
        let imps = expire_at(
            imps,
            "ExpireImpressionWindows",
            move |(_, w): &(Sym, i64)| Params::at(*w, imp_keep),
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
            (OutputRow::Anomaly(row), freeze.into())
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::cmp_ratio;
    use std::cmp::Ordering::*;

    #[test]
    fn ratios_compare_exactly_without_overflow() {
        assert_eq!(cmp_ratio(3, 2, 6, 4), Equal);
        assert_eq!(cmp_ratio(1, 3, 1, 2), Less);
        assert_eq!(cmp_ratio(2, 3, 1, 2), Greater);
        assert_eq!(cmp_ratio(0, 5, 0, 7), Equal);
        assert_eq!(cmp_ratio(0, 5, 1, 7), Less);
        assert_eq!(cmp_ratio(355, 113, 22, 7), Less);
        // Products of these would overflow i128.
        let big = i128::MAX / 3;
        assert_eq!(cmp_ratio(big, i64::MAX, big - 1, i64::MAX), Greater);
        assert_eq!(cmp_ratio(big, i64::MAX - 1, big, i64::MAX), Greater);
        // Agrees with cross-multiplication where that fits.
        for a in 0..40i128 {
            for b in 1..12i64 {
                for (c, d) in [(7i128, 3i64), (15, 10), (0, 1), (39, 11)] {
                    let want = (a * d as i128).cmp(&(c * b as i128));
                    assert_eq!(cmp_ratio(a, b, c, d), want, "{a}/{b} vs {c}/{d}");
                }
            }
        }
    }
}
