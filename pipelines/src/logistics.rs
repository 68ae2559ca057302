//! `logistics`: each order's latest shipment, and per waybill the delivery summary and the
//! anomaly intervals (stalls, delivery exceptions) — spec §4 `order_status.delivery` and
//! `anomalies`.
//!
//! Per waybill, one `reduce` over its facts — its tracks ordered by (`ts`, `event_id`) and its
//! owners (the orders whose latest shipment names it) — yields the [`WaybillSummary`] and the
//! [`ParcelInterval`]s. Stall intervals still open are *timers*: they are delayed to
//! `opened_ts = last_ts + threshold` and so appear only once the watermark passes it; the next
//! track retracts the pending timer before it fires (or closes the interval after it did).
//!
//! Provides [`SharedName::Shipments`], [`SharedName::WaybillSummary`],
//! [`SharedName::ParcelIntervals`], [`SharedName::PersonIntervals`].

use crate::types::*;
use crate::{need, Context, Pipeline, SharedName};
use adflow_engine::ops::{delay_until, expire_at};
use adflow_engine::Time;
use adflow_model::event::{track_code, Body};
use adflow_model::{Sym, Table};
use serde::{Deserialize, Serialize};

pub struct Logistics;

/// An input of the per-waybill reduce.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WaybillFact {
    Track(TrackRec),
    /// An order whose latest shipment names the waybill: (order_id, person_id, order_ts).
    Owner(Sym, Sym, i64),
}

/// An output of the per-waybill reduce.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WaybillOut {
    Summary(WaybillSummary),
    Interval(ParcelInterval),
}

/// Computes a waybill's summary and intervals from its tracks (sorted by (`ts`, `event_id`))
/// and owners.
pub fn waybill_outputs(
    waybill: &Sym,
    tracks: &[&TrackRec],
    owners: &[(&Sym, &Sym, i64)],
    p: &Params,
) -> Vec<WaybillOut> {
    let mut out = Vec::new();
    let Some(last) = tracks.last() else {
        return out;
    };
    // Delivery: refused when a refusal code has no signed track before it.
    let mut signed_seen = false;
    let mut refused = false;
    for t in tracks {
        if is_refusal(t.code) && !signed_seen {
            refused = true;
        }
        if is_signed(t.code) {
            signed_seen = true;
        }
    }
    let delivery = if refused {
        Delivery::Refused
    } else if is_refusal(last.code) {
        Delivery::InTransit
    } else {
        class_of(last.code)
    };
    let first = |f: &dyn Fn(u32) -> bool| tracks.iter().find(|t| f(t.code)).map(|t| t.ts);
    out.push(WaybillOut::Summary(WaybillSummary {
        delivery,
        delivery_ts: last.ts,
        first_out_for_delivery: first(&|c| c == 202),
        first_signed: first(&is_signed),
        first_refusal: first(&is_refusal),
    }));

    let owner = owners.iter().min_by(|a, b| a.0.cmp(b.0));
    let linked = tracks
        .iter()
        .map(|t| p.linked_expiry(t.ts))
        .min()
        .unwrap_or(Time::MAX);
    let owner_expiry = owners.iter().map(|o| Params::at(o.2, p.retention));
    let freeze = owner_expiry.clone().min().unwrap_or(Time::MAX).min(linked);
    let until = tracks
        .iter()
        .map(|t| p.linked_expiry(t.ts))
        .chain(owner_expiry)
        .max()
        .unwrap_or(0);
    let interval = |kind, opened, closed, code| ParcelInterval {
        kind,
        waybill: waybill.clone(),
        opened,
        closed,
        code,
        owner_order: owner.map(|o| o.0.clone()),
        owner_person: owner.map(|o| o.1.clone()),
        freeze,
        until,
    };
    // Stalls: a gap of at least the threshold after a non-final track.
    for (i, t) in tracks.iter().enumerate() {
        if is_final(t.code) {
            continue;
        }
        let opened = t.ts.saturating_add(p.stall);
        match tracks.get(i + 1) {
            Some(next) if next.ts - t.ts >= p.stall => out.push(WaybillOut::Interval(interval(
                IntervalKind::StalledParcel,
                opened,
                Some(next.ts),
                t.code,
            ))),
            Some(_) => {}
            None => out.push(WaybillOut::Interval(interval(
                IntervalKind::StalledParcel,
                opened,
                None,
                t.code,
            ))),
        }
    }
    // Delivery exceptions: maximal runs of exception-class codes.
    let mut i = 0;
    while i < tracks.len() {
        if is_exception(tracks[i].code) {
            let start = i;
            while i < tracks.len() && is_exception(tracks[i].code) {
                i += 1;
            }
            out.push(WaybillOut::Interval(interval(
                IntervalKind::DeliveryException,
                tracks[start].ts,
                tracks.get(i).map(|t| t.ts),
                tracks[start].code,
            )));
        } else {
            i += 1;
        }
    }
    out
}

impl Pipeline for Logistics {
    fn name(&self) -> &'static str {
        "logistics"
    }
    fn uses(&self) -> &'static [SharedName] {
        &[SharedName::Orders, SharedName::OrderPerson]
    }
    fn provides(&self) -> &'static [SharedName] {
        &[
            SharedName::Shipments,
            SharedName::WaybillSummary,
            SharedName::ParcelIntervals,
            SharedName::PersonIntervals,
        ]
    }
    fn emits(&self) -> &'static [Table] {
        &[]
    }

    fn build(&self, cx: &mut Context<'_>) -> Result<(), String> {
        let orders = need!(cx, orders, SharedName::Orders);
        let order_person = need!(cx, order_person, SharedName::OrderPerson);
        let p = cx.params.clone();

        let p1 = p.clone();
        let shipments = cx.by_type.shipments.clone().flat_map(|e| match e.body {
            Body::Shipment {
                order_id,
                shipper_code,
                logistic_code,
            } => Some((
                order_id,
                Shipment {
                    ts: e.ts,
                    event_id: e.event_id,
                    shipper_code,
                    waybill: logistic_code,
                },
            )),
            _ => None,
        });
        let shipments = expire_at(
            shipments,
            "ExpireShipments",
            move |(_, s): &(Sym, Shipment)| p1.linked_expiry(s.ts),
        )
        .reduce_named("LatestShipment", |_id, ships, out| {
            if let Some((last, _)) = ships.iter().rev().find(|(_, r)| *r > 0) {
                out.push(((*last).clone(), 1));
            }
        });

        let p2 = p.clone();
        let tracks = cx.by_type.tracks.clone().flat_map(|e| match e.body {
            Body::Track {
                logistic_code,
                state,
                state_ex,
                ..
            } => Some((
                logistic_code,
                WaybillFact::Track(TrackRec {
                    ts: e.ts,
                    event_id: e.event_id,
                    code: track_code(state, state_ex),
                }),
            )),
            _ => None,
        });
        let tracks = expire_at(
            tracks,
            "ExpireTracks",
            move |(_, f): &(Sym, WaybillFact)| match f {
                WaybillFact::Track(t) => p2.linked_expiry(t.ts),
                WaybillFact::Owner(..) => Time::MAX,
            },
        );

        let owners = shipments
            .clone()
            .join(order_person.clone())
            .join(orders)
            .map(|(id, ((s, person), o))| (s.waybill, WaybillFact::Owner(id, person, o.ts)));

        let p3 = p.clone();
        let outs =
            tracks
                .concat(owners)
                .reduce_named("Waybill", move |waybill: &Sym, facts, out| {
                    let mut tracks = Vec::new();
                    let mut owners = Vec::new();
                    for (f, r) in facts {
                        if *r <= 0 {
                            continue;
                        }
                        match f {
                            WaybillFact::Track(t) => tracks.push(t),
                            WaybillFact::Owner(o, person, ts) => owners.push((o, person, *ts)),
                        }
                    }
                    for o in waybill_outputs(waybill, &tracks, &owners, &p3) {
                        out.push((o, 1));
                    }
                });

        let summary = outs.clone().flat_map(|(w, o)| match o {
            WaybillOut::Summary(s) => Some((w, s)),
            WaybillOut::Interval(_) => None,
        });
        let intervals = outs.flat_map(|(_, o)| match o {
            WaybillOut::Interval(i) => Some(i),
            WaybillOut::Summary(_) => None,
        });
        // Open stalls are timers: visible from `opened` on.
        let intervals = delay_until(intervals, "StallTimer", |i: &ParcelInterval| {
            Params::at(i.opened, 0)
        });

        let waybill_persons = shipments
            .clone()
            .join(order_person)
            .map(|(_, (s, person))| (s.waybill, person))
            .distinct();
        let person_intervals = intervals
            .clone()
            .map(|i| (i.waybill.clone(), i))
            .join(waybill_persons)
            .map(|(_, (i, person))| (person, i));

        cx.shared.shipments = Some(shipments);
        cx.shared.waybill_summary = Some(summary);
        cx.shared.parcel_intervals = Some(intervals);
        cx.shared.person_intervals = Some(person_intervals);
        Ok(())
    }
}
