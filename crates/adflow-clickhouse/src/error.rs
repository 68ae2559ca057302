//! Errors of the ClickHouse schema tools and sink.

/// Why a ClickHouse operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    /// The configuration is unusable (bad URL, batch size out of range, missing password env...).
    #[error("clickhouse config: {0}")]
    Config(String),
    /// A request to the server failed (network, server-side exception, timeout).
    #[error("clickhouse {context}: {source}")]
    Client {
        /// What was being done (`insert into adflow.attribution`, `apply migration 1`...).
        context: String,
        #[source]
        source: clickhouse::error::Error,
    },
    /// A request did not finish within the configured timeout.
    #[error("clickhouse {context}: timed out after {timeout_ms} ms")]
    Timeout {
        /// What was being done.
        context: String,
        /// The configured limit.
        timeout_ms: u64,
    },
    /// The server answered something this crate cannot interpret.
    #[error("clickhouse {context}: unexpected answer: {message}")]
    Protocol {
        /// What was being done.
        context: String,
        /// What was wrong with the answer.
        message: String,
    },
    /// The sink gave up after the configured number of attempts (only when
    /// `retry.max_attempts` is set; by default the sink retries forever).
    #[error("clickhouse sink gave up after {attempts} attempts: {last_error}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error seen.
        last_error: String,
    },
    /// The sink's background writer is gone (it panicked or was shut down).
    #[error("clickhouse sink writer stopped: {0}")]
    WriterStopped(String),
    /// A resumable sink cannot resume from what the database holds (the journal is missing
    /// or unreadable, or the tables were written without a journal). Not retried.
    #[error("clickhouse sink cannot resume: {0}")]
    Resume(String),
    /// Starting the sink's runtime or thread failed.
    #[error("clickhouse sink: cannot start writer: {0}")]
    Start(#[source] std::io::Error),
}

impl ClickHouseError {
    pub(crate) fn client(context: impl Into<String>, source: clickhouse::error::Error) -> Self {
        ClickHouseError::Client {
            context: context.into(),
            source,
        }
    }
}
