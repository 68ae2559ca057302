//! adflow's business pipelines, one module per output, all incremental.
//!
//! Each module implements [`Pipeline`]: it declares the shared collections it reads
//! ([`Pipeline::uses`]), the ones it adds for later modules ([`Pipeline::provides`]) and the
//! tables it emits ([`Pipeline::emits`]), and builds its part of the dataflow in
//! [`Pipeline::build`] from a [`Context`]. Modules are registered in one list, [`PIPELINES`],
//! in dependency order; [`AdflowProgram`] builds them all into one dataflow for the engine.
//! Shared collections are built once (and their arrangements reused), never re-derived per
//! module.
//!
//! To add a pipeline: write `src/<name>.rs` with a unit struct implementing [`Pipeline`], add
//! its line to [`PIPELINES`], and (if it provides something new) a field to [`Shared`]. See
//! `docs/adding-a-pipeline.md`.
//!
//! The `Pipeline` trait lives here rather than in `adflow-engine` because the shared
//! collections are typed by business records; the engine stays generic ([`adflow_engine::Program`]).

pub mod anomalies;
pub mod attribution;
pub mod campaign_metrics;
pub mod identity;
pub mod logistics;
pub mod order_status;
pub mod suppressed_persons;
pub mod triggers;
pub mod types;

use adflow_engine::{Col, OutRec, Program};
use adflow_model::config::Settings;
use adflow_model::event::{Event, NodeId};
use adflow_model::{Sym, Table};
use types::*;

/// Names of the shared collections modules exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedName {
    /// `(node, label)`: every identity node's component label.
    Labels,
    /// Clicks, with their expiry applied.
    Clicks,
    /// `(order_id, OrderInfo)`: each order's defining event.
    Orders,
    /// `(order_id, person_id)`.
    OrderPerson,
    /// `(order_id, LastClick)`: the last-click attribution of each attributed order.
    LastClick,
    /// `(order_id, Shipment)`: each order's latest shipment.
    Shipments,
    /// `(waybill, WaybillSummary)`.
    WaybillSummary,
    /// Anomaly intervals of parcels (stalls and delivery exceptions).
    ParcelIntervals,
    /// `(person_id, ParcelInterval)`: the parcel intervals of each person's parcels.
    PersonIntervals,
    /// `(order_id, OrderState)`: everything known about an order.
    OrderState,
}

/// Shared collections, filled in as modules are built.
#[derive(Default)]
pub struct Shared<'s> {
    pub labels: Option<Col<'s, (NodeId, Label)>>,
    pub clicks: Option<Col<'s, Click>>,
    pub orders: Option<Col<'s, (Sym, OrderInfo)>>,
    pub order_person: Option<Col<'s, (Sym, Sym)>>,
    pub last_click: Option<Col<'s, (Sym, LastClick)>>,
    pub shipments: Option<Col<'s, (Sym, Shipment)>>,
    pub waybill_summary: Option<Col<'s, (Sym, WaybillSummary)>>,
    pub parcel_intervals: Option<Col<'s, ParcelInterval>>,
    pub person_intervals: Option<Col<'s, (Sym, ParcelInterval)>>,
    pub order_state: Option<Col<'s, (Sym, OrderState)>>,
}

/// The deduplicated input events by type.
pub struct EventsByType<'s> {
    pub impressions: Col<'s, Event>,
    pub clicks: Col<'s, Event>,
    pub orders: Col<'s, Event>,
    pub statuses: Col<'s, Event>,
    pub shipments: Col<'s, Event>,
    pub tracks: Col<'s, Event>,
    pub links: Col<'s, Event>,
}

impl<'s> EventsByType<'s> {
    /// Splits `events` by type in one pass (no copies).
    pub fn split(events: Col<'s, Event>) -> Result<EventsByType<'s>, String> {
        use adflow_engine::{Diff, Time};
        use adflow_model::event::Body;
        use differential_dataflow::collection::AsCollection;
        use timely::container::CapacityContainerBuilder;
        use timely::dataflow::operators::core::Partition;
        let parts = events
            .inner
            .partition::<CapacityContainerBuilder<Vec<(Event, Time, Diff)>>, _, _>(
                7,
                |(e, t, r)| {
                    let i = match e.body {
                        Body::Impression { .. } => 0,
                        Body::Click { .. } => 1,
                        Body::Order { .. } => 2,
                        Body::OrderStatus { .. } => 3,
                        Body::Shipment { .. } => 4,
                        Body::Track { .. } => 5,
                        Body::Link { .. } => 6,
                    };
                    (i, (e, t, r))
                },
            );
        let c: Vec<Col<'s, Event>> = parts.into_iter().map(|s| s.as_collection()).collect();
        let [impressions, clicks, orders, statuses, shipments, tracks, links]: [Col<'s, Event>; 7] =
            c.try_into()
                .map_err(|_| "partition did not yield 7 streams".to_string())?;
        Ok(EventsByType {
            impressions,
            clicks,
            orders,
            statuses,
            shipments,
            tracks,
            links,
        })
    }
}

/// What a module builds from and into.
pub struct Context<'s> {
    pub settings: Settings,
    /// Derived numbers of the settings.
    pub params: Params,
    /// The deduplicated input events, split by type once (so each module receives, and
    /// clones, only the events it reads).
    pub by_type: EventsByType<'s>,
    pub shared: Shared<'s>,
    /// Output records, any table.
    pub outputs: Vec<Col<'s, OutRec>>,
}

macro_rules! need {
    ($cx:expr, $field:ident, $name:expr) => {
        $cx.shared
            .$field
            .clone()
            .ok_or_else(|| format!("shared collection {:?} is not built yet", $name))?
    };
}
pub(crate) use need;

/// One business pipeline module.
pub trait Pipeline: Sync {
    /// The module's name (its file name).
    fn name(&self) -> &'static str;
    /// Shared collections this module reads; they must be provided by earlier modules.
    fn uses(&self) -> &'static [SharedName];
    /// Shared collections this module adds.
    fn provides(&self) -> &'static [SharedName];
    /// Output tables this module emits rows of.
    fn emits(&self) -> &'static [Table];
    /// Builds the module's part of the dataflow.
    fn build(&self, cx: &mut Context<'_>) -> Result<(), String>;
}

/// Every pipeline module, in dependency order. `dead_letters` is produced by the engine itself
/// at ingestion (parse failures and too-late events), so it has no module here.
pub static PIPELINES: &[&dyn Pipeline] = &[
    &identity::Identity,
    &attribution::Attribution,
    &logistics::Logistics,
    &order_status::OrderStatus,
    &campaign_metrics::CampaignMetrics,
    &anomalies::Anomalies,
    &triggers::Triggers,
    &suppressed_persons::SuppressedPersons,
];

/// Checks that every module only uses what earlier modules provide.
pub fn check_registry(pipelines: &[&dyn Pipeline]) -> Result<(), String> {
    let mut have: Vec<SharedName> = Vec::new();
    for p in pipelines {
        for u in p.uses() {
            if !have.contains(u) {
                return Err(format!(
                    "pipeline {} uses {:?}, which no earlier pipeline provides",
                    p.name(),
                    u
                ));
            }
        }
        have.extend_from_slice(p.provides());
    }
    Ok(())
}

/// The whole adflow program: every module of [`PIPELINES`].
pub struct AdflowProgram;

impl Program for AdflowProgram {
    fn build<'s>(
        &self,
        events: Col<'s, Event>,
        settings: &Settings,
    ) -> Result<Vec<Col<'s, OutRec>>, String> {
        check_registry(PIPELINES)?;
        let mut cx = Context {
            settings: settings.clone(),
            params: Params::from_settings(settings)?,
            by_type: EventsByType::split(events)?,
            shared: Shared::default(),
            outputs: Vec::new(),
        };
        for p in PIPELINES {
            p.build(&mut cx)
                .map_err(|e| format!("pipeline {}: {e}", p.name()))?;
        }
        Ok(cx.outputs)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_is_ordered() {
        super::check_registry(super::PIPELINES).unwrap();
    }
}
