//! `order_status`: one row per order — spec §4.
//!
//! All facts about an order — its defining event, its person, its last-click attribution, its
//! latest shipment, its waybill's summary and its status flags — are keyed by `order_id` and
//! met in one `reduce`, which behaves as an outer join: a missing fact is a null column, a new
//! fact retracts the old row and adds the new one. `delivery` comes from the waybill summary
//! (`none` without shipment, `shipped` with a shipment but no track); `effective` is `signed`
//! with none of `cancelled`, `after_sale`, `refunded`.
//!
//! A row freezes at `order_ts + retention`. Provides [`SharedName::OrderState`].

use crate::types::*;
use crate::{need, Context, Pipeline, SharedName};
use adflow_engine::ops::expire_at;
use adflow_model::event::{Body, OrderFlag};
use adflow_model::output::OrderStatusRow;
use adflow_model::{OutputRow, Sym, Table};
use serde::{Deserialize, Serialize};

pub struct OrderStatus;

/// An input of the per-order reduce.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderFact {
    Info(OrderInfo),
    Person(Sym),
    LastClick(LastClick),
    Shipment(Shipment),
    Summary(Sym, WaybillSummary),
    Flag(OrderFlag, i64),
}

/// Builds an order's state from its facts; `None` without a defining `order` event.
pub fn order_state(facts: &[&OrderFact]) -> Option<OrderState> {
    let mut info = None;
    let mut person = None;
    let mut last_click = None;
    let mut shipment: Option<&Shipment> = None;
    let mut summaries = Vec::new();
    let mut flag_ts: [Option<i64>; 3] = [None; 3];
    for f in facts {
        match f {
            OrderFact::Info(i) => info = Some(i),
            OrderFact::Person(p) => person = Some(p.clone()),
            OrderFact::LastClick(l) => last_click = Some(l.clone()),
            OrderFact::Shipment(s) => shipment = Some(s),
            OrderFact::Summary(w, s) => summaries.push((w, s)),
            OrderFact::Flag(flag, ts) => {
                let slot = &mut flag_ts[flag_index(*flag)];
                *slot = Some(slot.map_or(*ts, |t: i64| t.min(*ts)));
            }
        }
    }
    let info = info?;
    let summary = shipment.and_then(|s| {
        summaries
            .iter()
            .find(|(w, _)| **w == s.waybill)
            .map(|(_, s)| (*s).clone())
    });
    let delivery = match (shipment, &summary) {
        (None, _) => Delivery::None,
        (Some(_), None) => Delivery::Shipped,
        (Some(_), Some(s)) => s.delivery,
    };
    let (cancelled, after_sale, refunded) = (
        flag_ts[0].is_some(),
        flag_ts[1].is_some(),
        flag_ts[2].is_some(),
    );
    Some(OrderState {
        order_ts: info.ts,
        person_id: person.unwrap_or_else(|| info.user_id.clone()),
        amount_fen: info.amount_fen,
        phone_masked: info.phone_masked.clone(),
        last_click,
        shipment: shipment.cloned(),
        summary,
        delivery,
        cancelled,
        after_sale,
        refunded,
        flag_ts,
        effective: delivery == Delivery::Signed && !cancelled && !after_sale && !refunded,
    })
}

/// The output row of an order's state.
pub fn status_row(order_id: &str, s: &OrderState) -> OrderStatusRow {
    OrderStatusRow {
        order_id: order_id.to_string(),
        person_id: s.person_id.to_string(),
        amount_fen: s.amount_fen,
        order_ts: s.order_ts,
        phone_masked: s.phone_masked.clone(),
        campaign_id: s.last_click.as_ref().map(|l| l.campaign_id.to_string()),
        channel: s.last_click.as_ref().map(|l| l.channel.to_string()),
        shipper_code: s.shipment.as_ref().map(|x| x.shipper_code.to_string()),
        logistic_code: s.shipment.as_ref().map(|x| x.waybill.to_string()),
        delivery: s.delivery.name().to_string(),
        delivery_ts: s.summary.as_ref().map(|x| x.delivery_ts),
        cancelled: s.cancelled,
        after_sale: s.after_sale,
        refunded: s.refunded,
        effective: s.effective,
    }
}

impl Pipeline for OrderStatus {
    fn name(&self) -> &'static str {
        "order_status"
    }
    fn uses(&self) -> &'static [SharedName] {
        &[
            SharedName::Orders,
            SharedName::OrderPerson,
            SharedName::LastClick,
            SharedName::Shipments,
            SharedName::WaybillSummary,
        ]
    }
    fn provides(&self) -> &'static [SharedName] {
        &[SharedName::OrderState]
    }
    fn emits(&self) -> &'static [Table] {
        &[Table::OrderStatus]
    }

    fn build(&self, cx: &mut Context<'_>) -> Result<(), String> {
        let orders = need!(cx, orders, SharedName::Orders);
        let order_person = need!(cx, order_person, SharedName::OrderPerson);
        let last_click = need!(cx, last_click, SharedName::LastClick);
        let shipments = need!(cx, shipments, SharedName::Shipments);
        let summary = need!(cx, waybill_summary, SharedName::WaybillSummary);
        let p = cx.params.clone();

        let p1 = p.clone();
        let flags = cx.by_type.statuses.clone().flat_map(|e| match e.body {
            Body::OrderStatus { order_id, flag } => Some((order_id, OrderFact::Flag(flag, e.ts))),
            _ => None,
        });
        let flags = expire_at(
            flags,
            "ExpireStatus",
            move |(_, f): &(Sym, OrderFact)| match f {
                OrderFact::Flag(_, ts) => p1.linked_expiry(*ts),
                _ => adflow_engine::NEVER,
            },
        )
        .distinct();

        let summaries = shipments
            .clone()
            .map(|(id, s)| (s.waybill, id))
            .join(summary)
            .map(|(w, (id, s))| (id, OrderFact::Summary(w, s)));

        let facts = orders
            .map(|(id, o)| (id, OrderFact::Info(o)))
            .concat(order_person.map(|(id, p)| (id, OrderFact::Person(p))))
            .concat(last_click.map(|(id, l)| (id, OrderFact::LastClick(l))))
            .concat(shipments.map(|(id, s)| (id, OrderFact::Shipment(s))))
            .concat(summaries)
            .concat(flags);

        let state = facts.reduce_named("OrderState", |_id, facts, out| {
            let fs: Vec<&OrderFact> = facts
                .iter()
                .filter(|(_, r)| *r > 0)
                .map(|(f, _)| *f)
                .collect();
            if let Some(s) = order_state(&fs) {
                out.push((s, 1));
            }
        });

        let ret = p.retention;
        cx.outputs.push(state.clone().map(move |(id, s)| {
            let freeze = Params::at(s.order_ts, ret);
            (OutputRow::OrderStatus(status_row(&id, &s)), freeze.into())
        }));
        cx.shared.order_state = Some(state);
        Ok(())
    }
}
