//! The contract between the dataflow and an output sink (files, ClickHouse, webhooks).
//!
//! The engine hands each sink the changes of every output table in batches, with a *frontier*:
//! after `write(changes, frontier)` the sink has received every change whose `version` is below
//! `frontier` (versions are event-time milliseconds). Changes inside one call are in no
//! particular order; a later call never carries a version below an earlier call's frontier.
//!
//! A sink reports, through [`Sink::durable_frontier`], the frontier up to which everything it
//! received is durably stored. Sources use the smallest durable frontier over all sinks to
//! decide which input offsets may be committed. A sink may buffer and write asynchronously; it
//! applies back-pressure by blocking in `write` when its buffer is full.

use crate::output::Change;

/// Why a sink could not take or store changes.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: i/o error: {source}")]
    Io {
        sink: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sink {sink}: {message}")]
    Other { sink: String, message: String },
}

/// An output sink. See the module docs for the frontier contract.
pub trait Sink: Send {
    /// A short name for logs and metrics (`file`, `clickhouse`, ...).
    fn name(&self) -> &str;

    /// Takes a batch of changes; afterwards every change with `version < frontier` has been
    /// handed over.
    fn write(&mut self, changes: Vec<Change>, frontier: i64) -> Result<(), SinkError>;

    /// Whether this sink takes the changes of `table` (default: every table). A sink that
    /// takes only some gets only theirs (it is still called with every frontier): the engine
    /// then copies just those rows for it.
    fn wants(&self, _table: crate::output::Table) -> bool {
        true
    }

    /// Blocks until everything handed over so far is durable.
    fn flush(&mut self) -> Result<(), SinkError>;

    /// Starts what [`Sink::flush`] does (with the checkpoint of [`Sink::set_checkpoint`])
    /// without waiting for it: afterwards [`Sink::flush_done`] says when everything handed over
    /// before this call is durable and that checkpoint stored. The caller may go on handing
    /// over changes meanwhile; they are not part of this flush. A sink that writes in the
    /// background overrides both, so the live engine's checkpoint rounds never stall its worker
    /// on a slow server. Default: `flush`, which is complete when it returns.
    fn start_flush(&mut self) -> Result<(), SinkError> {
        self.flush()
    }

    /// Whether the flush begun by the last [`Sink::start_flush`] is complete (`true` also when
    /// none was begun). A failure of that flush is returned here. Default: `true`.
    fn flush_done(&mut self) -> Result<bool, SinkError> {
        Ok(true)
    }

    /// Every change with `version` below this frontier is durably stored.
    fn durable_frontier(&self) -> i64;
    /// Changes of `table` with `version` below this frontier were stored by an earlier run
    /// that this sink resumes (live mode replays its input after a restart): the engine does
    /// not hand them over again. `i64::MIN` (the default) for a sink that starts empty.
    fn resume_frontier(&self, _table: crate::output::Table) -> i64 {
        i64::MIN
    }
    /// Sinks that can resume store this opaque engine checkpoint with their next `flush`,
    /// atomically with the data (the live engine records which input it had read when it
    /// released the flushed frontier). Default: ignored.
    fn set_checkpoint(&mut self, _checkpoint: &str) {}
    /// The checkpoint stored with the data this sink resumed from, if any.
    fn resume_checkpoint(&self) -> Option<String> {
        None
    }
    /// Whether this sink keeps its data across runs and resumes it (live mode): its state then
    /// constrains where a restarted cluster resumes. Default: no.
    fn resumable(&self) -> bool {
        false
    }
    /// The checkpoints this sink can be restored to, newest first; `None` stands for the empty
    /// state (nothing stored). Default: only the one it resumed from.
    fn resume_points(&self) -> Vec<Option<String>> {
        vec![self.resume_checkpoint()]
    }
    /// Restores the stored data to the given checkpoint (one of [`Sink::resume_points`];
    /// `None`: the empty state). Afterwards [`Sink::resume_checkpoint`] is that checkpoint.
    /// Default: accepts only the checkpoint it resumed from.
    fn resume_to(&mut self, checkpoint: Option<&str>) -> Result<(), SinkError> {
        if checkpoint == self.resume_checkpoint().as_deref() {
            Ok(())
        } else {
            Err(SinkError::Other {
                sink: self.name().to_string(),
                message: format!(
                    "cannot restore an earlier checkpoint than the one it resumed from ({:?})",
                    self.resume_checkpoint()
                ),
            })
        }
    }
}
