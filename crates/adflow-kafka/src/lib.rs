//! The Kafka side of adflow (spec §1: one topic per input stream, prefix configurable).
//!
//! - [`KafkaSource`]: one consumer per dataflow worker, all in one consumer group, returning
//!   [`adflow_model::RawMessage`]s in bounded batches, with per-partition idle information and
//!   synchronous manual commits of exactly the offsets the engine hands it.
//! - [`produce()`] / [`ProduceArgs`]: `adflow produce`, publishes a file-mode data set.
//! - [`produce_live()`] / [`LiveProduceArgs`]: `adflow produce --live`, a load generator
//!   publishing `adflow_gen::LiveGen`'s events (all five streams) at a fixed rate.
//! - [`DeadLetterProducer`]: publishes rejected messages to `<prefix>dead_letters`.
//! - [`ensure_topics`]: creates the topics when missing.
//! - [`KafkaTrackPublisher`]: the Kdniao connector's track publisher (`<prefix>logistics`,
//!   acknowledged before the push is answered).
//!
//! librdkafka is built from the copy bundled in `rdkafka-sys` (`./configure && make`, no cmake;
//! needs gcc, make, and zlib headers).

mod admin;
mod batch;
mod config;
mod dead_letter;
mod error;
mod live_produce;
mod produce;
mod source;
mod track;

pub use admin::{all_topics, ensure_named_topics, ensure_topics, TopicState};
pub use config::{KafkaConfig, DEAD_LETTERS_TOPIC, MANAGED_PROPERTIES};
pub use dead_letter::{DeadLetter, DeadLetterProducer, RAW_LIMIT};
pub use error::KafkaError;
pub use live_produce::{
    live_topic, produce_live, LiveProduceArgs, LiveProduceReport, LiveStreamReport,
    DEFAULT_LINGER_MS,
};
pub use produce::{message_key, now_ms, produce, ProduceArgs, ProduceReport, StreamReport};
pub use source::{
    CommitOutcome, KafkaSource, PartitionStatus, RebalanceEvent, SourceRecord, StartAt,
    DEFAULT_FETCH_WAIT_MS,
};
pub use track::{KafkaTrackPublisher, DEFAULT_TRACK_DELIVERY_TIMEOUT};

#[cfg(test)]
mod tests {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}

    #[test]
    fn thread_safety() {
        // A worker may build its source anywhere and move it into its thread.
        send::<crate::KafkaSource>();
        // One dead-letter producer may be shared by all workers.
        send::<crate::DeadLetterProducer>();
        sync::<crate::DeadLetterProducer>();
    }
}
