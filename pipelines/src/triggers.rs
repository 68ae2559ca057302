//! `triggers`: marketing actions decided from logistics states — spec §4.
//!
//! From each order's [`OrderState`]: `review_coupon` due at the first out-for-delivery (202)
//! track; `replenishment` due `delay` after the first signed track, only if no `cancelled`,
//! `after_sale` or `refunded` status has `ts ≤ due`; `substitute` due at the earliest refusal
//! track (404/406/407) or `after_sale` status. Candidates are timers: delayed to `due_ts`, so a
//! replenishment appears once the watermark reaches it, and an after-sale event before then
//! cancels it without ever emitting it.
//!
//! Candidates meet the person's parcel intervals in one `reduce` per person: a trigger is
//! withheld when any stall or delivery-exception interval of any of the person's parcels
//! contains its due time (`opened ≤ due < closed`).
//!
//! Rows freeze at `order_ts + retention`.

use crate::types::*;
use crate::{need, Context, Pipeline, SharedName};
use adflow_engine::ops::delay_until;
use adflow_engine::Diff;
use adflow_model::event::OrderFlag;
use adflow_model::output::TriggerRow;
use adflow_model::{OutputRow, Sym, Table};
use serde::{Deserialize, Serialize};

pub struct Triggers;

/// A trigger before the suppression check.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub due_ts: i64,
    /// `review_coupon`, `replenishment` or `substitute`.
    pub kind: String,
    pub order_id: String,
    pub campaign_id: Option<String>,
    pub order_ts: i64,
}

/// The trigger candidates of an order.
pub fn candidates(order_id: &str, s: &OrderState, replenishment_delay: i64) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mk = |kind: &str, due_ts: i64| Candidate {
        due_ts,
        kind: kind.to_string(),
        order_id: order_id.to_string(),
        campaign_id: s.last_click.as_ref().map(|l| l.campaign_id.to_string()),
        order_ts: s.order_ts,
    };
    let summary = s.summary.as_ref();
    if let Some(t) = summary.and_then(|x| x.first_out_for_delivery) {
        out.push(mk("review_coupon", t));
    }
    if let Some(t) = summary.and_then(|x| x.first_signed) {
        let due = t.saturating_add(replenishment_delay);
        let blocked = s.flag_ts.iter().any(|f| f.is_some_and(|ts| ts <= due));
        if !blocked {
            out.push(mk("replenishment", due));
        }
    }
    let refusal = summary.and_then(|x| x.first_refusal);
    let after_sale = s.flag_at(OrderFlag::AfterSale);
    let sub = match (refusal, after_sale) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(t) = sub {
        out.push(mk("substitute", t));
    }
    out
}

/// An input of the per-person reduce.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PersonFact {
    Interval(ParcelInterval),
    Candidate(Candidate),
}

impl Pipeline for Triggers {
    fn name(&self) -> &'static str {
        "triggers"
    }
    fn uses(&self) -> &'static [SharedName] {
        &[SharedName::OrderState, SharedName::PersonIntervals]
    }
    fn provides(&self) -> &'static [SharedName] {
        &[]
    }
    fn emits(&self) -> &'static [Table] {
        &[Table::Triggers]
    }

    fn build(&self, cx: &mut Context<'_>) -> Result<(), String> {
        let state = need!(cx, order_state, SharedName::OrderState);
        let person_intervals = need!(cx, person_intervals, SharedName::PersonIntervals);
        let (delay, ret) = (cx.params.replenishment, cx.params.retention);

        let cands = state.flat_map(move |(id, s)| {
            let person = s.person_id.clone();
            candidates(&id, &s, delay)
                .into_iter()
                .map(move |c| (person.clone(), PersonFact::Candidate(c)))
        });
        let cands = delay_until(
            cands,
            "TriggerTimer",
            |(_, f): &(Sym, PersonFact)| match f {
                PersonFact::Candidate(c) => Params::at(c.due_ts, 0),
                PersonFact::Interval(_) => 0,
            },
        );
        let facts = cands.concat(person_intervals.map(|(p, i)| (p, PersonFact::Interval(i))));
        let triggers = facts.reduce_named(
            "Suppression",
            |person: &Sym, facts, out: &mut Vec<((TriggerRow, i64), Diff)>| {
                let mut intervals = Vec::new();
                let mut cands = Vec::new();
                for (f, r) in facts {
                    if *r <= 0 {
                        continue;
                    }
                    match f {
                        PersonFact::Interval(i) => intervals.push(i),
                        PersonFact::Candidate(c) => cands.push(c),
                    }
                }
                for c in cands {
                    if intervals.iter().any(|i| i.contains(c.due_ts)) {
                        continue;
                    }
                    out.push((
                        (
                            TriggerRow {
                                trigger_id: format!("{}:{}", c.order_id, c.kind),
                                kind: c.kind.clone(),
                                order_id: c.order_id.clone(),
                                person_id: person.to_string(),
                                campaign_id: c.campaign_id.clone(),
                                due_ts: c.due_ts,
                            },
                            c.order_ts,
                        ),
                        1,
                    ));
                }
            },
        );
        cx.outputs.push(triggers.map(move |(_, (row, order_ts))| {
            (OutputRow::Trigger(row), Params::at(order_ts, ret).into())
        }));
        Ok(())
    }
}
