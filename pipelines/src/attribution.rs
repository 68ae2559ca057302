//! `attribution`: one row per (order, credited click, model) — spec §4.
//!
//! Business question: which clicks earned each order, under five models?
//!
//! ```sql
//! -- candidates of order o (person P, time T):
//! SELECT c.* FROM clicks c JOIN persons p ON c.device_node = p.node OR c.user_node = p.node
//! WHERE p.person = P AND c.ts BETWEEN T - window AND T ORDER BY c.ts, c.event_id
//! ```
//!
//! Clicks and orders are keyed by person (through the identity labels), joined, filtered by the
//! window, and reduced per order into the rows of every model. A late identity link changes a
//! label, which retracts and re-derives exactly the affected orders' rows.
//!
//! Credits are 6-decimal fixed point: `last_click`/`first_click` 1; `linear` 1/n;
//! `position_based` 0.4/0.4 and 0.2/(n−2) (n ≥ 3), 0.5/0.5 (n = 2), 1 (n = 1); `time_decay`
//! weights 2^(−(T − click_ts)/H) normalised and rounded half away from zero to 6 decimals (the
//! only floating point, on a weight, never on money). `credited_fen` = `amount_fen × credit`
//! rounded half away from zero, in integers.
//!
//! State: clicks leave the dataflow `window + retention` after their `ts`, orders `retention`
//! after theirs; a row freezes at `order_ts + retention`.
//!
//! Provides [`SharedName::Clicks`], [`SharedName::Orders`], [`SharedName::OrderPerson`],
//! [`SharedName::LastClick`].

use crate::types::*;
use crate::{need, Context, Pipeline, SharedName};
use adflow_engine::ops::expire_at;
use adflow_model::config::Model;
use adflow_model::event::Body;
use adflow_model::event::IdNode;
use adflow_model::output::{div_round_half_away, AttributionRow, Fixed};
use adflow_model::{OutputRow, Sym, Table};

pub struct Attribution;

/// The order a candidate list belongs to.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct OrderKey {
    pub order_id: Sym,
    pub person_id: Sym,
    pub order_ts: i64,
    pub amount_fen: i64,
}

/// A candidate touch: ordered by (`click_ts`, `click_event_id`).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Candidate {
    pub click_ts: i64,
    pub click_event_id: Sym,
    pub campaign_id: Sym,
    pub channel: Sym,
}

/// Credits (6-decimal scaled) of `n` ordered candidates under `model`; `ages` are T − click_ts.
pub fn credits(model: Model, ages: &[i64], half_life: i64) -> Vec<i64> {
    let n = ages.len();
    const ONE: i64 = 1_000_000;
    let mut c = vec![0i64; n];
    if n == 0 {
        return c;
    }
    match model {
        Model::LastClick => c[n - 1] = ONE,
        Model::FirstClick => c[0] = ONE,
        Model::Linear => c
            .iter_mut()
            .for_each(|x| *x = Fixed::<6>::from_ratio(1, n as i64).0),
        Model::PositionBased => match n {
            1 => c[0] = ONE,
            2 => {
                c[0] = ONE / 2;
                c[1] = ONE / 2;
            }
            _ => {
                let mid = Fixed::<6>::from_ratio(2, 10 * (n as i64 - 2)).0;
                c.iter_mut().for_each(|x| *x = mid);
                c[0] = 400_000;
                c[n - 1] = 400_000;
            }
        },
        Model::TimeDecay => {
            // Weights are not money: floating point is fine here; credits are rounded to
            // 6 decimals before they touch an amount.
            let w: Vec<f64> = ages
                .iter()
                .map(|a| (-(*a as f64) / half_life as f64).exp2())
                .collect();
            let sum: f64 = w.iter().sum();
            for (x, wi) in c.iter_mut().zip(&w) {
                *x = ((wi / sum) * 1e6).round() as i64;
            }
        }
    }
    c
}

impl Pipeline for Attribution {
    fn name(&self) -> &'static str {
        "attribution"
    }
    fn uses(&self) -> &'static [SharedName] {
        &[SharedName::Labels]
    }
    fn provides(&self) -> &'static [SharedName] {
        &[
            SharedName::Clicks,
            SharedName::Orders,
            SharedName::OrderPerson,
            SharedName::LastClick,
        ]
    }
    fn emits(&self) -> &'static [Table] {
        &[Table::Attribution]
    }

    fn build(&self, cx: &mut Context<'_>) -> Result<(), String> {
        let labels = need!(cx, labels, SharedName::Labels);
        let p = cx.params.clone();

        let clicks = cx.by_type.clicks.clone().flat_map(|e| match e.body {
            Body::Click {
                campaign_id,
                channel,
                device_id,
                user_id,
                ..
            } => Some(Click {
                ts: e.ts,
                event_id: e.event_id,
                campaign_id,
                channel,
                device_node: IdNode::device(&device_id).map(|n| n.id()),
                user_node: user_id.as_ref().and_then(IdNode::user).map(|n| n.id()),
            }),
            _ => None,
        });
        let (win, ret) = (p.window, p.retention);
        let clicks = expire_at(clicks, "ExpireClicks", move |c: &Click| {
            Params::at(c.ts, win.saturating_add(ret))
        });

        let orders = cx.by_type.orders.clone().flat_map(|e| match e.body {
            Body::Order {
                order_id,
                user_id,
                amount_fen,
                phone_masked,
                ..
            } => Some((
                order_id,
                OrderInfo {
                    ts: e.ts,
                    event_id: e.event_id,
                    user_id,
                    amount_fen,
                    phone_masked,
                },
            )),
            _ => None,
        });
        let orders = expire_at(orders, "ExpireOrders", move |(_, o): &(Sym, OrderInfo)| {
            Params::at(o.ts, ret)
        })
        .reduce_named("LatestOrderEvent", |_id, infos, out| {
            if let Some((last, _)) = infos.iter().rev().find(|(_, r)| *r > 0) {
                out.push(((*last).clone(), 1));
            }
        });

        let labels_by_node = labels.arrange_by_key_named("LabelsByNode");

        let order_person = orders
            .clone()
            .flat_map(|(id, o)| IdNode::user(&o.user_id).map(|n| (n.id(), id)))
            .join_core(labels_by_node.clone(), |_node, id, label| {
                person_of(label).map(|p| (id.clone(), p.clone()))
            });

        let clicks_by_person = clicks
            .clone()
            .flat_map(|c| {
                let mut v = Vec::with_capacity(2);
                if let Some(d) = c.device_node {
                    v.push((d, c.clone()));
                }
                if let Some(u) = c.user_node {
                    v.push((u, c));
                }
                v
            })
            .join_core(labels_by_node, |_node, click, label| {
                person_of(label).map(|p| (p.clone(), click.clone()))
            })
            .distinct();

        let orders_by_person = orders
            .clone()
            .join(order_person.clone())
            .map(|(id, (o, person))| (person, (id, o)));

        let window = p.window;
        let candidates = orders_by_person.join_map(clicks_by_person, move |person, (id, o), c| {
            (
                OrderKey {
                    order_id: id.clone(),
                    person_id: person.clone(),
                    order_ts: o.ts,
                    amount_fen: o.amount_fen,
                },
                c.clone(),
            )
        });
        let candidates = candidates.flat_map(move |(k, c)| {
            (k.order_ts - window <= c.ts && c.ts <= k.order_ts).then_some({
                (
                    k,
                    Candidate {
                        click_ts: c.ts,
                        click_event_id: c.event_id,
                        campaign_id: c.campaign_id,
                        channel: c.channel,
                    },
                )
            })
        });

        // The reduce keeps compact credits (model, candidate, credit: shared symbols, no
        // text copied) for the models the outputs need; the spec's rows are built from them
        // only when a credit changes. Building `AttributionRow`s (six owned strings each)
        // inside the reduce made every order's evaluation allocate and compare them, and its
        // output trace hold them for the retention.
        let half_life = p.half_life;
        let mut wanted: Vec<Model> = cx.settings.models.clone();
        if !wanted.contains(&Model::LastClick) {
            wanted.push(Model::LastClick); // `last_click` feeds `order_status`
        }
        let credited =
            candidates.reduce_named("AttributionModels", move |k: &OrderKey, cands, out| {
                let cands: Vec<&Candidate> = cands
                    .iter()
                    .filter(|(_, r)| *r > 0)
                    .map(|(c, _)| *c)
                    .collect();
                let ages: Vec<i64> = cands.iter().map(|c| k.order_ts - c.click_ts).collect();
                for &model in &wanted {
                    for (c, credit) in cands.iter().zip(credits(model, &ages, half_life)) {
                        if credit == 0 {
                            continue; // not a credited click under this model
                        }
                        out.push(((model, (*c).clone(), credit), 1));
                    }
                }
            });

        let last_click = credited.clone().flat_map(|(k, (model, c, _))| {
            (model == Model::LastClick).then_some({
                (
                    k.order_id,
                    LastClick {
                        campaign_id: c.campaign_id,
                        channel: c.channel,
                    },
                )
            })
        });

        let models: Vec<Model> = cx.settings.models.clone();
        cx.outputs
            .push(credited.flat_map(move |(k, (model, c, credit))| {
                models.contains(&model).then(|| {
                    let freeze = Params::at(k.order_ts, ret);
                    let row = AttributionRow {
                        order_id: k.order_id.to_string(),
                        person_id: k.person_id.to_string(),
                        model: model.name().to_string(),
                        campaign_id: c.campaign_id.to_string(),
                        channel: c.channel.to_string(),
                        click_event_id: c.click_event_id.to_string(),
                        click_ts: c.click_ts,
                        order_ts: k.order_ts,
                        credit: Fixed(credit),
                        amount_fen: k.amount_fen,
                        credited_fen: div_round_half_away(
                            k.amount_fen as i128 * credit as i128,
                            1_000_000,
                        ) as i64,
                    };
                    (OutputRow::Attribution(row), freeze.into())
                })
            }));
        cx.shared.clicks = Some(clicks);
        cx.shared.orders = Some(orders);
        cx.shared.order_person = Some(order_person);
        cx.shared.last_click = Some(last_click);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_follow_the_spec() {
        assert_eq!(credits(Model::Linear, &[3, 2, 1], 10), vec![333_333; 3]);
        assert_eq!(
            credits(Model::PositionBased, &[4, 3, 2, 1], 10),
            vec![400_000, 100_000, 100_000, 400_000]
        );
        assert_eq!(
            credits(Model::PositionBased, &[2, 1], 10),
            vec![500_000, 500_000]
        );
        assert_eq!(credits(Model::LastClick, &[2, 1], 10), vec![0, 1_000_000]);
        assert_eq!(credits(Model::FirstClick, &[2, 1], 10), vec![1_000_000, 0]);
        // One half-life apart: weights 1/2 and 1 → 1/3 and 2/3.
        assert_eq!(
            credits(Model::TimeDecay, &[20, 10], 10),
            vec![333_333, 666_667]
        );
    }
}
