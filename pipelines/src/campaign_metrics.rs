//! `campaign_metrics`: one row per (campaign, channel, hour) — spec §4.
//!
//! ```sql
//! SELECT campaign_id, channel, hour, count(impressions), count(clicks), sum(cost), ...,
//!        count(orders last-click-attributed in the hour of order_ts), sum(gmv), signed, refused,
//!        effective
//! GROUP BY campaign_id, channel, hour
//! ```
//!
//! Every impression, click and attributed order is *exploded* into its contribution
//! ([`Metrics`], a difference type) to its key, and `count` sums contributions per key: the
//! arrangement holds one record per key, not one per event. An order's contribution follows its
//! [`OrderState`], so when a parcel is signed or refused, or a late link re-attributes the order,
//! the old contribution is retracted and the new one added — the hour's row is retracted and
//! re-inserted. A row exists while any counter is non-zero.
//!
//! Impression and click contributions expire at `hour + retention` (all of a key's at once, so
//! they consolidate); a row freezes then.

use crate::types::*;
use crate::{need, Context, Pipeline, SharedName};
use adflow_engine::ops::{consolidate_batches, expire_grouped_at};
use adflow_engine::Col;
use adflow_model::event::Body;
use adflow_model::output::{CampaignMetricsRow, Fixed};
use adflow_model::time::HOUR;
use adflow_model::{OutputRow, Sym, Table};

pub struct CampaignMetrics;

/// `(campaign_id, channel, hour)`.
pub type MetricsKey = (Sym, Sym, i64);

/// The row of a key's summed counters.
pub fn metrics_row((campaign_id, channel, hour): &MetricsKey, m: &Metrics) -> CampaignMetricsRow {
    let fen = |field, v| fen_field("campaign_metrics", field, v);
    CampaignMetricsRow {
        campaign_id: campaign_id.to_string(),
        channel: channel.to_string(),
        hour: *hour,
        impressions: m.impressions,
        clicks: m.clicks,
        cost_fen: fen("cost_fen", m.cost_fen),
        click_cost_fen: fen("click_cost_fen", m.click_cost_fen),
        orders: m.orders,
        gmv_fen: fen("gmv_fen", m.gmv_fen),
        signed: m.signed,
        refused: m.refused,
        effective: m.effective,
        refusal_rate: (m.signed + m.refused > 0)
            .then(|| Fixed::from_ratio(m.refused, m.signed + m.refused)),
        cpc_fen: (m.clicks > 0).then(|| Fixed::from_wide_ratio(m.click_cost_fen, m.clicks as i128)),
    }
}

impl Pipeline for CampaignMetrics {
    fn name(&self) -> &'static str {
        "campaign_metrics"
    }
    fn uses(&self) -> &'static [SharedName] {
        &[SharedName::OrderState]
    }
    fn provides(&self) -> &'static [SharedName] {
        &[]
    }
    fn emits(&self) -> &'static [Table] {
        &[Table::CampaignMetrics]
    }

    fn build(&self, cx: &mut Context<'_>) -> Result<(), String> {
        let state = need!(cx, order_state, SharedName::OrderState);
        let ret = cx.params.retention;

        // Ad contributions, keyed by their own hour; expiring per key.
        let ads: Col<'_, (MetricsKey, Metrics)> = cx
            .by_type
            .impressions
            .clone()
            .concat(cx.by_type.clicks.clone())
            .flat_map(|e| {
                let hour = window_start(e.ts, HOUR);
                match e.body {
                    Body::Impression {
                        campaign_id,
                        channel,
                        cost_fen,
                        ..
                    } => Some((
                        (campaign_id, channel, hour),
                        Metrics {
                            impressions: 1,
                            cost_fen: cost_fen as SumFen,
                            ..Metrics::default()
                        },
                    )),
                    Body::Click {
                        campaign_id,
                        channel,
                        cost_fen,
                        ..
                    } => Some((
                        (campaign_id, channel, hour),
                        Metrics {
                            clicks: 1,
                            cost_fen: cost_fen as SumFen,
                            click_cost_fen: cost_fen as SumFen,
                            ..Metrics::default()
                        },
                    )),
                    _ => None,
                }
            });
        // A busy tick brings many impressions of one campaign-hour: summed per batch first, so
        // the arrangement receives one update per key and tick rather than one per event.
        let ads = consolidate_batches(ads.explode(|(k, m)| Some((k, m))), "SumAdMetrics");
        let ads = expire_grouped_at(ads, "ExpireAdMetrics", move |k: &MetricsKey| {
            Params::at(k.2, ret)
        });

        let orders = state
            .flat_map(|(_, s)| {
                s.last_click.as_ref().map(|l| {
                    (
                        (
                            l.campaign_id.clone(),
                            l.channel.clone(),
                            window_start(s.order_ts, HOUR),
                        ),
                        Metrics {
                            orders: 1,
                            gmv_fen: s.amount_fen as SumFen,
                            signed: (s.delivery == Delivery::Signed) as i64,
                            refused: (s.delivery == Delivery::Refused) as i64,
                            effective: s.effective as i64,
                            ..Metrics::default()
                        },
                    )
                })
            })
            .explode(|(k, m)| Some((k, m)));

        let totals = ads.concat(orders).count();
        cx.outputs.push(totals.map(move |(k, m)| {
            let freeze = Params::at(k.2, ret);
            (
                OutputRow::CampaignMetrics(metrics_row(&k, &m)),
                freeze.into(),
            )
        }));
        Ok(())
    }
}
