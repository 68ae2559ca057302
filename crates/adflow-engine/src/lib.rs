//! adflow's dataflow engine: the only crate besides `adflow-pipelines` that touches
//! timely/differential internals.
//!
//! # Time
//! The dataflow's logical time is **event time** in epoch milliseconds ([`Time`]). An event with
//! `ts` is inserted at time `max(ts, W)` where `W` is the input's current watermark (the largest
//! `ts` seen minus the allowed lateness). An event below `W` is *late*: it is still applied, at
//! time `W`, and because every pipeline computes from the `ts` carried in the data, totals end
//! up exactly as if it had been on time. Every output change carries its logical time as
//! `version`.
//!
//! # Timers and bounded state
//! A timer is a *future-dated update*: [`ops::delay_until`] moves an update to a later logical
//! time computed from its data (e.g. a stalled-parcel interval appears at `last_ts + 24 h`); it
//! fires when the watermark passes that time, and a retraction of its cause before then cancels
//! it, with no scan over state. [`ops::expire_at`] adds, for every record, a retraction at a
//! future time, so state older than the windows that need it leaves the dataflow and memory
//! stays flat on an endless stream. Output rows carry a *freeze time* ([`OutRec`]): updates at or
//! after it are expiry artefacts and are not written (the row stays as it was).
//!
//! # Shape
//! [`Program`] builds the business dataflow from the deduplicated events (implemented by
//! `adflow-pipelines`); [`driver::run`] runs it on `N` worker threads over a [`driver::Source`]
//! per worker and hands every output change to the [`adflow_model::Sink`]s. Nothing is
//! process-global: all state lives in the workers, so the same program runs as a cluster of
//! processes through timely's own multi-process mode.

pub mod driver;
pub mod file;
pub mod live;
pub mod live_ctl;
pub mod ops;
mod profile;
pub mod telemetry;
pub mod testing;

use adflow_model::config::Settings;
use adflow_model::event::Event;
use adflow_model::OutputRow;
use differential_dataflow::VecCollection;

/// Logical time: event time in epoch milliseconds.
pub type Time = u64;
/// Multiplicity of an update.
pub type Diff = isize;
/// A differential collection in the engine's scope.
pub type Col<'s, D, R = Diff> = VecCollection<'s, Time, D, R>;
/// An output record: the row, and when updates to it become expiry artefacts ([`Freeze`]).
pub type OutRec = (OutputRow, Freeze);
/// A freeze time that never comes.
pub const NEVER: Time = Time::MAX;

/// When updates to an output row become expiry artefacts, which the output stage does not write
/// (the row stays as it was last written).
///
/// A row freezes on its own at `at`: the earliest time one of its inputs leaves the dataflow.
/// Rows computed together from one group of inputs (a waybill's tracks and owner) can also
/// freeze as a *group*: once any row of the group has reached its `at`, i.e. once any input of
/// the group has left, every later update of every row of the group is an artefact — including
/// rows that appear only because an input left (an interval without its expired order) — until
/// `until`, when the group's last input has left and the group is forgotten.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Freeze {
    /// Updates at or after this time are not written.
    pub at: Time,
    /// 0: the row freezes on its own; otherwise the group's fingerprint ([`group_id`]).
    pub group: u128,
    /// When the group's last input leaves the dataflow (unused without a group).
    pub until: Time,
}

impl Freeze {
    /// A row that never freezes.
    pub const NEVER: Freeze = Freeze {
        at: NEVER,
        group: 0,
        until: 0,
    };

    /// A row that freezes on its own at `at`.
    pub fn at(at: Time) -> Freeze {
        Freeze {
            at,
            group: 0,
            until: 0,
        }
    }

    /// A row of freeze group `group` ([`group_id`]) whose own inputs' earliest expiry is `at`
    /// and whose group's last input leaves at `until`.
    pub fn grouped(at: Time, group: u128, until: Time) -> Freeze {
        Freeze { at, group, until }
    }
}

impl From<Time> for Freeze {
    fn from(at: Time) -> Freeze {
        Freeze::at(at)
    }
}

/// A freeze group's fingerprint: 128-bit XXH3 of the length-prefixed parts, the same on every
/// worker and process, never 0.
pub fn group_id(parts: &[&[u8]]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.digest128().max(1)
}

/// Converts a validated event time (never negative) to logical time.
pub fn to_time(ts: i64) -> Time {
    ts.max(0) as Time
}

/// The business dataflow. `adflow-pipelines` implements it by building every registered
/// pipeline module in order.
pub trait Program: Send + Sync + 'static {
    /// Builds the dataflow over the deduplicated input events and returns every output record
    /// collection (any number; the engine concatenates them).
    fn build<'s>(
        &self,
        events: Col<'s, Event>,
        settings: &Settings,
    ) -> Result<Vec<Col<'s, OutRec>>, String>;
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dataflow construction failed: {0}")]
    Build(String),
    #[error("timely: {0}")]
    Timely(String),
    #[error(transparent)]
    Sink(#[from] adflow_model::SinkError),
    #[error("source: {0}")]
    Source(String),
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("stopped: worker {0} failed: {1}")]
    PeerFailed(u64, String),
    /// File mode was told to stop (a signal) before its input was exhausted.
    #[error("interrupted before the end of the input")]
    Interrupted,
}
