//! The RowBinary shape of each changelog table: the row's columns in schema order, then
//! `version`, `sign`, `batch_marker`. Field order and names must match
//! [`crate::schema::columns`] (checked by a unit test).

use adflow_model::{Change, OutputRow, Table};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

#[derive(Row, Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct AttributionCh {
    order_id: String,
    person_id: String,
    model: String,
    campaign_id: String,
    channel: String,
    click_event_id: String,
    click_ts: i64,
    order_ts: i64,
    /// Decimal(18, 6): the scaled integer.
    credit: i64,
    amount_fen: i64,
    credited_fen: i64,
    version: i64,
    sign: i8,
    batch_marker: String,
}

#[derive(Row, Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct OrderStatusCh {
    order_id: String,
    person_id: String,
    amount_fen: i64,
    order_ts: i64,
    phone_masked: Option<String>,
    campaign_id: Option<String>,
    channel: Option<String>,
    shipper_code: Option<String>,
    logistic_code: Option<String>,
    delivery: String,
    delivery_ts: Option<i64>,
    cancelled: u8,
    after_sale: u8,
    refunded: u8,
    effective: u8,
    version: i64,
    sign: i8,
    batch_marker: String,
}

#[derive(Row, Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct CampaignMetricsCh {
    campaign_id: String,
    channel: String,
    hour: i64,
    impressions: i64,
    clicks: i64,
    cost_fen: i64,
    click_cost_fen: i64,
    orders: i64,
    gmv_fen: i64,
    signed: i64,
    refused: i64,
    effective: i64,
    /// Nullable(Decimal(18, 4)): the scaled integer.
    refusal_rate: Option<i64>,
    /// Nullable(Decimal(18, 2)): the scaled integer.
    cpc_fen: Option<i64>,
    version: i64,
    sign: i8,
    batch_marker: String,
}

#[derive(Row, Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct AnomalyCh {
    kind: String,
    key: String,
    opened_ts: i64,
    closed_ts: Option<i64>,
    details: String,
    version: i64,
    sign: i8,
    batch_marker: String,
}

#[derive(Row, Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct TriggerCh {
    trigger_id: String,
    kind: String,
    order_id: String,
    person_id: String,
    campaign_id: Option<String>,
    due_ts: i64,
    version: i64,
    sign: i8,
    batch_marker: String,
}

#[derive(Row, Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct SuppressedPersonCh {
    person_id: String,
    reason: String,
    since_ts: i64,
    version: i64,
    sign: i8,
    batch_marker: String,
}

#[derive(Row, Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct DeadLetterCh {
    stream: String,
    position: String,
    raw: String,
    reason: String,
    seen_ts: i64,
    version: i64,
    sign: i8,
    batch_marker: String,
}

/// The rows of one INSERT into one table: the batch's changes plus one marker row. Serialized
/// (JSON) into the journal of a resumable sink, so that an INSERT can be repeated or undone.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum TableRows {
    Attribution(Vec<AttributionCh>),
    OrderStatus(Vec<OrderStatusCh>),
    CampaignMetrics(Vec<CampaignMetricsCh>),
    Anomalies(Vec<AnomalyCh>),
    Triggers(Vec<TriggerCh>),
    SuppressedPersons(Vec<SuppressedPersonCh>),
    DeadLetters(Vec<DeadLetterCh>),
}

impl TableRows {
    /// An empty set of rows for `table`.
    pub(crate) fn new(table: Table) -> Self {
        match table {
            Table::Attribution => TableRows::Attribution(Vec::new()),
            Table::OrderStatus => TableRows::OrderStatus(Vec::new()),
            Table::CampaignMetrics => TableRows::CampaignMetrics(Vec::new()),
            Table::Anomalies => TableRows::Anomalies(Vec::new()),
            Table::Triggers => TableRows::Triggers(Vec::new()),
            Table::SuppressedPersons => TableRows::SuppressedPersons(Vec::new()),
            Table::DeadLetters => TableRows::DeadLetters(Vec::new()),
        }
    }

    /// The table these rows belong to.
    pub(crate) fn table(&self) -> Table {
        match self {
            TableRows::Attribution(_) => Table::Attribution,
            TableRows::OrderStatus(_) => Table::OrderStatus,
            TableRows::CampaignMetrics(_) => Table::CampaignMetrics,
            TableRows::Anomalies(_) => Table::Anomalies,
            TableRows::Triggers(_) => Table::Triggers,
            TableRows::SuppressedPersons(_) => Table::SuppressedPersons,
            TableRows::DeadLetters(_) => Table::DeadLetters,
        }
    }

    /// The undo of these rows: every data row (markers dropped) with its sign negated, plus
    /// the marker row of INSERT `id`. Written after the original, it cancels it exactly in
    /// every row's `sum(sign)`, whatever merges did to the original rows meanwhile.
    pub(crate) fn negated(&self, id: &str, frontier: i64) -> TableRows {
        macro_rules! neg {
            ($v:expr, $variant:ident) => {
                TableRows::$variant(
                    $v.iter()
                        .filter(|r| r.batch_marker.is_empty())
                        .map(|r| {
                            let mut r = r.clone();
                            r.sign = -r.sign;
                            r
                        })
                        .collect(),
                )
            };
        }
        let mut out = match self {
            TableRows::Attribution(v) => neg!(v, Attribution),
            TableRows::OrderStatus(v) => neg!(v, OrderStatus),
            TableRows::CampaignMetrics(v) => neg!(v, CampaignMetrics),
            TableRows::Anomalies(v) => neg!(v, Anomalies),
            TableRows::Triggers(v) => neg!(v, Triggers),
            TableRows::SuppressedPersons(v) => neg!(v, SuppressedPersons),
            TableRows::DeadLetters(v) => neg!(v, DeadLetters),
        };
        out.push_marker(id, frontier);
        out
    }

    /// Number of rows (markers included).
    pub(crate) fn len(&self) -> usize {
        match self {
            TableRows::Attribution(v) => v.len(),
            TableRows::OrderStatus(v) => v.len(),
            TableRows::CampaignMetrics(v) => v.len(),
            TableRows::Anomalies(v) => v.len(),
            TableRows::Triggers(v) => v.len(),
            TableRows::SuppressedPersons(v) => v.len(),
            TableRows::DeadLetters(v) => v.len(),
        }
    }

    /// Appends the marker row of INSERT `id`: default columns, sign +1, `version` = the
    /// frontier durable once the batch is written, `batch_marker = id`. Its sort key is
    /// unique, so no merge ever collapses it.
    pub(crate) fn push_marker(&mut self, id: &str, frontier: i64) {
        macro_rules! marker {
            ($v:expr, $t:ty) => {
                $v.push(<$t>::default().with_meta(frontier, 1, id.to_string()))
            };
        }
        match self {
            TableRows::Attribution(v) => marker!(v, AttributionCh),
            TableRows::OrderStatus(v) => marker!(v, OrderStatusCh),
            TableRows::CampaignMetrics(v) => marker!(v, CampaignMetricsCh),
            TableRows::Anomalies(v) => marker!(v, AnomalyCh),
            TableRows::Triggers(v) => marker!(v, TriggerCh),
            TableRows::SuppressedPersons(v) => marker!(v, SuppressedPersonCh),
            TableRows::DeadLetters(v) => marker!(v, DeadLetterCh),
        }
    }

    /// Appends one change (`sign` must be ±1) whose row belongs to this table; a row of
    /// another table is ignored (callers group by table first).
    pub(crate) fn push(&mut self, change: &Change, sign: i8) {
        let (version, m) = (change.version, String::new());
        match (self, &change.row) {
            (TableRows::Attribution(v), OutputRow::Attribution(r)) => v.push(AttributionCh {
                order_id: r.order_id.clone(),
                person_id: r.person_id.clone(),
                model: r.model.clone(),
                campaign_id: r.campaign_id.clone(),
                channel: r.channel.clone(),
                click_event_id: r.click_event_id.clone(),
                click_ts: r.click_ts,
                order_ts: r.order_ts,
                credit: r.credit.scaled(),
                amount_fen: r.amount_fen,
                credited_fen: r.credited_fen,
                version,
                sign,
                batch_marker: m,
            }),
            (TableRows::OrderStatus(v), OutputRow::OrderStatus(r)) => v.push(OrderStatusCh {
                order_id: r.order_id.clone(),
                person_id: r.person_id.clone(),
                amount_fen: r.amount_fen,
                order_ts: r.order_ts,
                phone_masked: r.phone_masked.clone(),
                campaign_id: r.campaign_id.clone(),
                channel: r.channel.clone(),
                shipper_code: r.shipper_code.clone(),
                logistic_code: r.logistic_code.clone(),
                delivery: r.delivery.clone(),
                delivery_ts: r.delivery_ts,
                cancelled: r.cancelled.into(),
                after_sale: r.after_sale.into(),
                refunded: r.refunded.into(),
                effective: r.effective.into(),
                version,
                sign,
                batch_marker: m,
            }),
            (TableRows::CampaignMetrics(v), OutputRow::CampaignMetrics(r)) => {
                v.push(CampaignMetricsCh {
                    campaign_id: r.campaign_id.clone(),
                    channel: r.channel.clone(),
                    hour: r.hour,
                    impressions: r.impressions,
                    clicks: r.clicks,
                    cost_fen: r.cost_fen,
                    click_cost_fen: r.click_cost_fen,
                    orders: r.orders,
                    gmv_fen: r.gmv_fen,
                    signed: r.signed,
                    refused: r.refused,
                    effective: r.effective,
                    refusal_rate: r.refusal_rate.map(|f| f.scaled()),
                    cpc_fen: r.cpc_fen.map(|f| f.scaled()),
                    version,
                    sign,
                    batch_marker: m,
                })
            }
            (TableRows::Anomalies(v), OutputRow::Anomaly(r)) => v.push(AnomalyCh {
                kind: r.kind.clone(),
                key: r.key.clone(),
                opened_ts: r.opened_ts,
                closed_ts: r.closed_ts,
                details: r.details.0.clone(),
                version,
                sign,
                batch_marker: m,
            }),
            (TableRows::Triggers(v), OutputRow::Trigger(r)) => v.push(TriggerCh {
                trigger_id: r.trigger_id.clone(),
                kind: r.kind.clone(),
                order_id: r.order_id.clone(),
                person_id: r.person_id.clone(),
                campaign_id: r.campaign_id.clone(),
                due_ts: r.due_ts,
                version,
                sign,
                batch_marker: m,
            }),
            (TableRows::SuppressedPersons(v), OutputRow::SuppressedPerson(r)) => {
                v.push(SuppressedPersonCh {
                    person_id: r.person_id.clone(),
                    reason: r.reason.clone(),
                    since_ts: r.since_ts,
                    version,
                    sign,
                    batch_marker: m,
                })
            }
            (TableRows::DeadLetters(v), OutputRow::DeadLetter(r)) => v.push(DeadLetterCh {
                stream: r.stream.clone(),
                position: r.position.clone(),
                raw: r.raw.clone(),
                reason: r.reason.clone(),
                seen_ts: r.seen_ts,
                version,
                sign,
                batch_marker: m,
            }),
            (rows, row) => {
                tracing::error!(table = ?row.table(), rows = ?std::mem::discriminant(rows), "row pushed to the wrong table; ignored");
            }
        }
    }
}

/// Sets the changelog columns of a row.
trait WithMeta {
    fn with_meta(self, version: i64, sign: i8, batch_marker: String) -> Self;
}

macro_rules! impl_with_meta {
    ($($t:ty),*) => {$(
        impl WithMeta for $t {
            fn with_meta(mut self, version: i64, sign: i8, batch_marker: String) -> Self {
                self.version = version;
                self.sign = sign;
                self.batch_marker = batch_marker;
                self
            }
        }
    )*};
}

impl_with_meta!(
    AttributionCh,
    OrderStatusCh,
    CampaignMetricsCh,
    AnomalyCh,
    TriggerCh,
    SuppressedPersonCh,
    DeadLetterCh
);

#[cfg(test)]
mod tests {
    use super::*;

    fn names<R: Row>() -> Vec<&'static str> {
        R::COLUMN_NAMES.to_vec()
    }

    #[test]
    fn journal_json_round_trips_and_negation_cancels_data_rows_only() {
        use adflow_model::output::TriggerRow;
        let change = Change {
            row: OutputRow::Trigger(TriggerRow {
                trigger_id: "o1:review_coupon".into(),
                kind: "review_coupon".into(),
                order_id: "o1".into(),
                person_id: "u1".into(),
                campaign_id: None,
                due_ts: 5,
            }),
            version: 7,
            sign: 1,
        };
        let mut rows = TableRows::new(Table::Triggers);
        rows.push(&change, 1);
        rows.push(&change, -1);
        rows.push(&change, 1);
        rows.push_marker("id-1", 8);
        let json = serde_json::to_string(&rows).unwrap();
        let back: TableRows = serde_json::from_str(&json).unwrap();
        assert_eq!(back.table(), Table::Triggers);
        let TableRows::Triggers(v) = &back else {
            panic!("{back:?}")
        };
        assert_eq!(v.len(), 4);
        assert_eq!(v[3].batch_marker, "id-1");
        let undo = back.negated("id-1-undo", 8);
        let TableRows::Triggers(u) = &undo else {
            panic!("{undo:?}")
        };
        let signs: Vec<i8> = u.iter().map(|r| r.sign).collect();
        assert_eq!(
            signs,
            vec![-1, 1, -1, 1],
            "data rows negated, then the new marker"
        );
        assert_eq!(u[3].batch_marker, "id-1-undo");
        assert_eq!(u[3].version, 8);
        assert!(u[..3]
            .iter()
            .all(|r| r.batch_marker.is_empty() && r.version == 7));
    }

    #[test]
    fn row_structs_match_schema_columns() {
        for table in Table::ALL {
            let (cols, _) = crate::schema::columns(table);
            let mut expected: Vec<&str> = cols.iter().map(|c| c.name).collect();
            expected.extend(["version", "sign", "batch_marker"]);
            let got = match table {
                Table::Attribution => names::<AttributionCh>(),
                Table::OrderStatus => names::<OrderStatusCh>(),
                Table::CampaignMetrics => names::<CampaignMetricsCh>(),
                Table::Anomalies => names::<AnomalyCh>(),
                Table::Triggers => names::<TriggerCh>(),
                Table::SuppressedPersons => names::<SuppressedPersonCh>(),
                Table::DeadLetters => names::<DeadLetterCh>(),
            };
            assert_eq!(got, expected, "{table}");
        }
    }
}
