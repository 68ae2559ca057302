//! Topic management: create the input and dead-letter topics when missing.

use adflow_model::StreamKind;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use crate::{KafkaConfig, KafkaError};

/// What [`ensure_topics`] found or did for one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicState {
    /// The topic was created with the requested partition count.
    Created,
    /// The topic existed already with this many partitions (left as it is, even if that differs
    /// from the request).
    Existed(i32),
}

/// The topics adflow uses: the four input topics and the dead-letter topic, prefix applied.
pub fn all_topics(config: &KafkaConfig) -> Vec<String> {
    let mut topics: Vec<String> = StreamKind::ALL.iter().map(|s| config.topic(*s)).collect();
    topics.push(config.dead_letters_topic());
    topics
}

/// Creates each of [`all_topics`] that does not exist yet, with `partitions` partitions and
/// replication factor 1, then waits (up to `timeout`) until the cluster metadata lists all of
/// them. Existing topics are never altered.
pub fn ensure_topics(
    config: &KafkaConfig,
    partitions: i32,
    timeout: Duration,
) -> Result<BTreeMap<String, TopicState>, KafkaError> {
    ensure_named_topics(config, &all_topics(config), partitions, timeout)
}

/// Like [`ensure_topics`] for the given topic names only (used by processes that write a
/// single topic, such as the Kdniao receiver's `<prefix>logistics`).
pub fn ensure_named_topics(
    config: &KafkaConfig,
    topics: &[String],
    partitions: i32,
    timeout: Duration,
) -> Result<BTreeMap<String, TopicState>, KafkaError> {
    if partitions < 1 {
        return Err(KafkaError::Config(format!(
            "partition count must be at least 1, got {partitions}"
        )));
    }
    let deadline = Instant::now() + timeout;
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()?
        .create()
        .map_err(KafkaError::Client)?;
    let existing = existing_topics(&admin, timeout)?;
    let mut states = BTreeMap::new();
    let mut missing = Vec::new();
    for topic in topics.iter().cloned() {
        match existing.get(&topic) {
            Some(&n) => {
                if n != partitions {
                    warn!(%topic, existing = n, requested = partitions, "topic exists with another partition count");
                }
                states.insert(topic, TopicState::Existed(n));
            }
            None => missing.push(topic),
        }
    }
    if !missing.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(timeout));
        let results =
            futures_executor::block_on(admin.create_topics(&new_topics, &opts)).map_err(|e| {
                KafkaError::CreateTopic {
                    topic: missing.join(","),
                    reason: e.to_string(),
                }
            })?;
        for result in results {
            match result {
                Ok(topic) => {
                    info!(%topic, partitions, "topic created");
                    states.insert(topic, TopicState::Created);
                }
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    states.insert(topic, TopicState::Existed(partitions));
                }
                Err((topic, code)) => {
                    return Err(KafkaError::CreateTopic {
                        topic,
                        reason: format!("{code:?}"),
                    })
                }
            }
        }
        // Wait until the metadata shows them (brokers may create topics asynchronously).
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let now = existing_topics(&admin, left.max(Duration::from_millis(500)))?;
            if missing.iter().all(|t| now.get(t).is_some_and(|&n| n >= 1)) {
                break;
            }
            if left.is_zero() {
                return Err(KafkaError::CreateTopic {
                    topic: missing.join(","),
                    reason: "created but not visible in metadata before the timeout".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(states)
}

/// Topic name → partition count, as the cluster metadata lists them.
fn existing_topics(
    admin: &AdminClient<DefaultClientContext>,
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, KafkaError> {
    let md = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(KafkaError::Metadata)?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}
