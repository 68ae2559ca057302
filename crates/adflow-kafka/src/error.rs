//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong on the Kafka side of adflow.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The configuration is unusable (for example a managed librdkafka key in `properties`).
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    /// librdkafka refused the client configuration or failed to create the client.
    #[error("cannot create Kafka client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    /// Subscribing to the input topics failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The consumer hit a fatal error; it must be dropped and recreated.
    #[error("fatal Kafka consumer error: {0}")]
    Fatal(String),
    /// A synchronous offset commit failed; nothing is known to be committed.
    #[error("offset commit failed: {0}")]
    Commit(#[source] rdkafka::error::KafkaError),
    /// Reading the group's committed offsets failed.
    #[error("cannot fetch committed offsets: {0}")]
    Committed(#[source] rdkafka::error::KafkaError),
    /// A commit named a partition of a topic that is not one of the four input topics.
    #[error("cannot commit: {0}")]
    CommitRequest(String),
    /// Fetching cluster metadata failed.
    #[error("cannot fetch metadata: {0}")]
    Metadata(#[source] rdkafka::error::KafkaError),
    /// Creating a topic failed (other than "it already exists").
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    /// Enqueuing a message failed for a reason other than a full queue.
    #[error("cannot enqueue message for {topic}: {source}")]
    Enqueue {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Some messages were not acknowledged by the broker.
    #[error(
        "{failed} message(s) not delivered ({delivered} delivered); first error: {first_error}"
    )]
    Delivery {
        delivered: u64,
        failed: u64,
        first_error: String,
    },
    /// Delivery reports did not all arrive within the timeout.
    #[error("timed out waiting for delivery reports: {pending} message(s) still pending")]
    DeliveryTimeout { pending: u64 },
    /// Reading an input file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Serialising a dead letter failed.
    #[error("cannot serialise dead letter: {0}")]
    Json(#[from] serde_json::Error),
}
