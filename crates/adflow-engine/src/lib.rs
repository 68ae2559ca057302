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
/// An output record: the row, and the time from which updates to it are expiry artefacts
/// ([`NEVER`] when the row never freezes).
pub type OutRec = (OutputRow, Time);
/// A freeze time that never comes.
pub const NEVER: Time = Time::MAX;

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
