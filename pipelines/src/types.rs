//! Records the pipelines share, Kdniao code classes, and derived parameters.

use adflow_engine::Time;
use adflow_model::config::Settings;
use adflow_model::event::{IdNode, NodeId, OrderFlag};
pub use adflow_model::money::{sum_to_fen, SumFen};
use adflow_model::Sym;
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

/// Settings turned into the numbers the dataflow uses.
#[derive(Clone, Debug)]
pub struct Params {
    pub window: i64,
    pub half_life: i64,
    pub retention: i64,
    pub stall: i64,
    pub cpc_window: i64,
    pub cpc_baseline: i64,
    pub cpc_ratio_milli: i64,
    pub cpc_min_clicks: i64,
    pub cpc_min_baseline_clicks: i64,
    pub noimp_window: i64,
    pub noimp_lookback: i64,
    pub noimp_min: i64,
    pub replenishment: i64,
}

impl Params {
    pub fn from_settings(s: &Settings) -> Result<Params, String> {
        Ok(Params {
            window: s.attribution_window.0,
            half_life: s.time_decay_half_life.0,
            retention: s.state_retention.0,
            stall: s.stall_threshold.0,
            cpc_window: s.cpc_window.0,
            cpc_baseline: s.cpc_baseline_windows as i64,
            cpc_ratio_milli: s.cpc_ratio_scaled().map_err(|e| e.to_string())?,
            cpc_min_clicks: s.cpc_min_clicks,
            cpc_min_baseline_clicks: s.cpc_min_baseline_clicks,
            noimp_window: s.no_impression_window.0,
            noimp_lookback: s.no_impression_lookback as i64,
            noimp_min: s.no_impression_min,
            replenishment: s.replenishment_delay.0,
        })
    }

    /// Logical time `ts + d`, saturating.
    pub fn at(ts: i64, d: i64) -> Time {
        ts.saturating_add(d).max(0) as Time
    }

    /// When an order-linked record (shipment, status, track) leaves the dataflow: its `ts` plus
    /// the retention plus one attribution window of grace, so records dated a little before
    /// their order never expire before it.
    pub fn linked_expiry(&self, ts: i64) -> Time {
        Self::at(ts, self.retention.saturating_add(self.window))
    }
}

/// A component label: the smallest node of the component ([`IdNode`]'s order puts users
/// first, by id), so a component with a user is labelled by its smallest user id.
pub type Label = IdNode;

/// The person of a label, if the component has a user.
pub fn person_of(label: &Label) -> Option<&Sym> {
    label.user_id()
}

/// A click, as attribution needs it. Ordered by (`ts`, `event_id`): the candidate order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Click {
    pub ts: i64,
    pub event_id: Sym,
    pub campaign_id: Sym,
    pub channel: Sym,
    /// The click's device and (logged-in) user, as identity's node ids.
    pub device_node: Option<NodeId>,
    pub user_node: Option<NodeId>,
}

/// An order's defining event (the latest `order` event of the id by (`ts`, `event_id`)).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderInfo {
    pub ts: i64,
    pub event_id: Sym,
    pub user_id: Sym,
    pub amount_fen: i64,
    pub phone_masked: Option<String>,
}

/// The campaign and channel of an order's last-click attribution.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LastClick {
    pub campaign_id: Sym,
    pub channel: Sym,
}

/// An order's latest shipment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Shipment {
    pub ts: i64,
    pub event_id: Sym,
    pub shipper_code: Sym,
    pub waybill: Sym,
}

/// A track of a waybill, ordered by (`ts`, `event_id`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TrackRec {
    pub ts: i64,
    pub event_id: Sym,
    /// `state_ex` when present, else `state`.
    pub code: u32,
}

/// The delivery class of an order (`order_status.delivery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Delivery {
    None,
    Shipped,
    Collected,
    InTransit,
    OutForDelivery,
    Signed,
    Exception,
    Refused,
}

impl Delivery {
    pub fn name(self) -> &'static str {
        match self {
            Delivery::None => "none",
            Delivery::Shipped => "shipped",
            Delivery::Collected => "collected",
            Delivery::InTransit => "in_transit",
            Delivery::OutForDelivery => "out_for_delivery",
            Delivery::Signed => "signed",
            Delivery::Exception => "exception",
            Delivery::Refused => "refused",
        }
    }
}

/// Codes of the `signed` class.
pub fn is_signed(code: u32) -> bool {
    matches!(code, 3 | 301 | 302 | 304 | 311)
}

/// Codes of the `exception` class.
pub fn is_exception(code: u32) -> bool {
    matches!(code, 4 | 401..=403 | 405 | 412..=423)
}

/// Refusal / return codes.
pub fn is_refusal(code: u32) -> bool {
    matches!(code, 404 | 406 | 407)
}

/// Codes after which a waybill cannot stall: signed class, 406 (return signed), 415 (cancelled).
pub fn is_final(code: u32) -> bool {
    is_signed(code) || code == 406 || code == 415
}

/// The class of a latest-track code (without the refusal rule).
pub fn class_of(code: u32) -> Delivery {
    match code {
        0 | 10 => Delivery::Shipped,
        1 => Delivery::Collected,
        202 | 211 => Delivery::OutForDelivery,
        c if is_signed(c) => Delivery::Signed,
        c if is_exception(c) => Delivery::Exception,
        _ => Delivery::InTransit,
    }
}

/// What a waybill's tracks say, as order status and triggers need it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WaybillSummary {
    pub delivery: Delivery,
    pub delivery_ts: i64,
    /// First track with code 202 (out for delivery).
    pub first_out_for_delivery: Option<i64>,
    /// First track of the signed class.
    pub first_signed: Option<i64>,
    /// First track with code 404, 406 or 407.
    pub first_refusal: Option<i64>,
}

/// Kind of a parcel anomaly interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IntervalKind {
    StalledParcel,
    DeliveryException,
}

impl IntervalKind {
    pub fn name(self) -> &'static str {
        match self {
            IntervalKind::StalledParcel => "stalled_parcel",
            IntervalKind::DeliveryException => "delivery_exception",
        }
    }
}

/// A stall or delivery-exception interval of a waybill.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ParcelInterval {
    pub kind: IntervalKind,
    pub waybill: Sym,
    pub opened: i64,
    pub closed: Option<i64>,
    /// `last_state` (stalls) or `state` (exceptions).
    pub code: u32,
    pub owner_order: Option<Sym>,
    pub owner_person: Option<Sym>,
    /// When the row freezes (the earliest expiry of its waybill's facts).
    pub freeze: Time,
    /// When the last of its waybill's facts leaves the dataflow: a waybill's interval rows
    /// freeze as one group ([`adflow_engine::Freeze`]) from `freeze` until then.
    pub until: Time,
}

impl ParcelInterval {
    /// Whether `t` lies in `[opened, closed)`.
    pub fn contains(&self, t: i64) -> bool {
        self.opened <= t && self.closed.is_none_or(|c| t < c)
    }
}

/// Everything the pipelines know about an order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderState {
    pub order_ts: i64,
    pub person_id: Sym,
    pub amount_fen: i64,
    pub phone_masked: Option<String>,
    pub last_click: Option<LastClick>,
    pub shipment: Option<Shipment>,
    pub summary: Option<WaybillSummary>,
    pub delivery: Delivery,
    pub cancelled: bool,
    pub after_sale: bool,
    pub refunded: bool,
    /// Earliest status event time of each flag (cancelled, after_sale, refunded).
    pub flag_ts: [Option<i64>; 3],
    pub effective: bool,
}

impl OrderState {
    /// Earliest `ts` of a status event with `flag`.
    pub fn flag_at(&self, flag: OrderFlag) -> Option<i64> {
        self.flag_ts[flag_index(flag)]
    }
}

pub fn flag_index(f: OrderFlag) -> usize {
    match f {
        OrderFlag::Cancelled => 0,
        OrderFlag::AfterSale => 1,
        OrderFlag::Refunded => 2,
    }
}

/// Campaign counters, used as a *difference* type: records are exploded into their
/// contribution and `count` sums them per key, so the arrangement holds one record per key
/// however many events fed it. Money is summed as [`SumFen`] (`i128`), which cannot wrap; it
/// becomes a table's `i64` field through [`fen_field`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Metrics {
    pub impressions: i64,
    pub clicks: i64,
    pub cost_fen: SumFen,
    pub click_cost_fen: SumFen,
    pub orders: i64,
    pub gmv_fen: SumFen,
    pub signed: i64,
    pub refused: i64,
    pub effective: i64,
}

impl Metrics {
    fn counts(&mut self) -> [&mut i64; 6] {
        [
            &mut self.impressions,
            &mut self.clicks,
            &mut self.orders,
            &mut self.signed,
            &mut self.refused,
            &mut self.effective,
        ]
    }
    fn money(&mut self) -> [&mut SumFen; 3] {
        [
            &mut self.cost_fen,
            &mut self.click_cost_fen,
            &mut self.gmv_fen,
        ]
    }
}

impl IsZero for Metrics {
    fn is_zero(&self) -> bool {
        *self == Metrics::default()
    }
}

impl Semigroup for Metrics {
    fn plus_equals(&mut self, rhs: &Self) {
        let mut r = *rhs;
        for (a, b) in self.counts().into_iter().zip(r.counts()) {
            *a += *b;
        }
        for (a, b) in self.money().into_iter().zip(r.money()) {
            *a += *b;
        }
    }
}

impl Monoid for Metrics {
    fn zero() -> Self {
        Metrics::default()
    }
}

impl Abelian for Metrics {
    fn negate(&mut self) {
        for a in self.counts() {
            *a = -*a;
        }
        for a in self.money() {
            *a = -*a;
        }
    }
}

impl Multiply<isize> for Metrics {
    type Output = Metrics;
    fn multiply(mut self, rhs: &isize) -> Metrics {
        for a in self.counts() {
            *a *= *rhs as i64;
        }
        for a in self.money() {
            *a *= *rhs as SumFen;
        }
        self
    }
}

/// A money sum as a table field: exact while it fits `i64` fen; beyond that it saturates and
/// the saturation is logged (never a wrapped, negative total). See [`adflow_model::money`].
pub fn fen_field(table: &str, field: &str, sum: SumFen) -> i64 {
    let (v, saturated) = sum_to_fen(sum);
    if saturated {
        tracing::error!(
            table,
            field,
            sum = %sum,
            "money sum beyond the Int64 fen range; the field shows the saturated value"
        );
    }
    v
}

/// Start of the window of length `len` (epoch-aligned) containing `ts`.
pub fn window_start(ts: i64, len: i64) -> i64 {
    ts - ts.rem_euclid(len)
}
