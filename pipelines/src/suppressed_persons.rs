//! `suppressed_persons`: the current set of people with a stuck or failed parcel — spec §4.
//!
//! One row per (person, reason) while any parcel of the person (a waybill of one of their
//! orders) has an open `stalled_parcel` or `delivery_exception` interval; `since_ts` is the
//! earliest `opened_ts` among them. Open stalls only exist once the watermark has passed their
//! opening (they are timers upstream), so a person becomes suppressed exactly then, and leaves
//! the set when the interval closes.
//!
//! This table is a current set: when the state behind an interval expires (retention), the row
//! goes too, so no row freezes.

use crate::{need, Context, Pipeline, SharedName};
use adflow_engine::{Diff, Freeze};
use adflow_model::output::SuppressedPersonRow;
use adflow_model::{OutputRow, Table};

pub struct SuppressedPersons;

impl Pipeline for SuppressedPersons {
    fn name(&self) -> &'static str {
        "suppressed_persons"
    }
    fn uses(&self) -> &'static [SharedName] {
        &[SharedName::PersonIntervals]
    }
    fn provides(&self) -> &'static [SharedName] {
        &[]
    }
    fn emits(&self) -> &'static [Table] {
        &[Table::SuppressedPersons]
    }

    fn build(&self, cx: &mut Context<'_>) -> Result<(), String> {
        let person_intervals = need!(cx, person_intervals, SharedName::PersonIntervals);
        let open = person_intervals
            .flat_map(|(person, i)| i.closed.is_none().then_some(((person, i.kind), i.opened)))
            .reduce_named(
                "SuppressedSince",
                |_k, opened, out: &mut Vec<(i64, Diff)>| {
                    if let Some((first, _)) = opened.iter().find(|(_, r)| *r > 0) {
                        out.push((**first, 1));
                    }
                },
            );
        cx.outputs.push(open.map(|((person_id, kind), since_ts)| {
            (
                OutputRow::SuppressedPerson(SuppressedPersonRow {
                    person_id: person_id.to_string(),
                    reason: kind.name().to_string(),
                    since_ts,
                }),
                Freeze::NEVER,
            )
        }));
        Ok(())
    }
}
