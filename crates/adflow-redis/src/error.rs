//! Errors of the Redis sink.

/// Why the Redis sink could not start, store or resume.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// The URL or a setting in its query is unusable.
    #[error("redis sink config: {0}")]
    Config(String),
    /// The server could not be reached or kept failing for the whole retry budget.
    #[error("redis sink: {context}: still failing after {attempts} attempts over {secs:.1} s (retry_s={budget_s}): {source}")]
    Unavailable {
        /// What was being done (`connect`, `read progress`, `commit`...).
        context: String,
        attempts: u32,
        secs: f64,
        budget_s: f64,
        #[source]
        source: redis::RedisError,
    },
    /// The server refused a command in a way retrying does not help (wrong type of a key under
    /// the prefix, authentication, ...).
    #[error("redis sink: {context}: {source}")]
    Command {
        context: String,
        #[source]
        source: redis::RedisError,
    },
    /// The keys under the prefix are not what this run can continue from.
    #[error("redis sink: {0}")]
    State(String),
}
