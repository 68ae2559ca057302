//! Connection settings shared by the source, the producers and the topic helper.

use adflow_model::StreamKind;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::KafkaError;

/// Name (before the prefix) of the dead-letter topic.
pub const DEAD_LETTERS_TOPIC: &str = "dead_letters";

/// librdkafka properties that adflow sets itself and that `properties` may therefore not
/// override: offsets are committed only by [`crate::KafkaSource::commit`], reading starts at the
/// earliest offset when the group has no committed offset, and the brokers and group come from
/// the dedicated fields.
pub const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.enable",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// Kafka settings of one adflow process (TOML/JSON table `kafka`).
///
/// ```toml
/// [kafka]
/// brokers = "127.0.0.1:19092"
/// topic_prefix = "prod."        # topics: prod.ad_events, prod.orders, …, prod.dead_letters
/// group_id = "adflow"
/// [kafka.properties]            # passed to librdkafka as is (consumers and producers)
/// "session.timeout.ms" = "10000"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Prepended to every topic name (spec §1: "prefix configurable"). Default: none.
    #[serde(default)]
    pub topic_prefix: String,
    /// Consumer group shared by all workers of all adflow processes of one pipeline.
    /// Default: `adflow`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Extra librdkafka properties for every client adflow creates (consumer and producers;
    /// librdkafka ignores, with a log line, a consumer-only property on a producer and vice
    /// versa). Keys in [`MANAGED_PROPERTIES`] are rejected.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "adflow".to_string()
}

impl KafkaConfig {
    /// A configuration with the default prefix (none), group (`adflow`) and no extra properties.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            group_id: default_group_id(),
            properties: BTreeMap::new(),
        }
    }

    /// Checks the settings: non-empty brokers and group, no managed key in `properties`.
    pub fn validate(&self) -> Result<(), KafkaError> {
        if self.brokers.trim().is_empty() {
            return Err(KafkaError::Config("`brokers` is empty".into()));
        }
        if self.group_id.trim().is_empty() {
            return Err(KafkaError::Config("`group_id` is empty".into()));
        }
        for key in self.properties.keys() {
            if MANAGED_PROPERTIES.contains(&key.trim()) {
                return Err(KafkaError::Config(format!(
                    "property `{key}` is managed by adflow and cannot be set in `properties`"
                )));
            }
        }
        Ok(())
    }

    /// The topic of `stream`: `<prefix><stream name>`.
    pub fn topic(&self, stream: StreamKind) -> String {
        format!("{}{}", self.topic_prefix, stream.name())
    }

    /// The dead-letter topic: `<prefix>dead_letters`.
    pub fn dead_letters_topic(&self) -> String {
        format!("{}{}", self.topic_prefix, DEAD_LETTERS_TOPIC)
    }

    /// The stream whose topic is `topic`, if any.
    pub fn stream_of_topic(&self, topic: &str) -> Option<StreamKind> {
        topic
            .strip_prefix(self.topic_prefix.as_str())
            .and_then(StreamKind::from_name)
    }

    /// A librdkafka configuration with the brokers and the extra properties (validated first).
    pub(crate) fn client_config(&self) -> Result<ClientConfig, KafkaError> {
        self.validate()?;
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            cc.set(k, v);
        }
        Ok(cc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_managed_keys_and_unknown_fields() {
        let mut c = KafkaConfig::new("127.0.0.1:1");
        assert!(c.validate().is_ok());
        c.properties
            .insert("enable.auto.commit".into(), "true".into());
        assert!(matches!(c.validate(), Err(KafkaError::Config(_))));
        let bad: Result<KafkaConfig, _> = serde_json::from_str(r#"{"brokers":"b:1","group":"x"}"#);
        assert!(bad.is_err());
        let ok: KafkaConfig = serde_json::from_str(
            r#"{"brokers":"b:1","topic_prefix":"p.","properties":{"linger.ms":"5"}}"#,
        )
        .unwrap();
        assert_eq!(ok.group_id, "adflow");
        assert_eq!(ok.topic(StreamKind::AdEvents), "p.ad_events");
        assert_eq!(ok.dead_letters_topic(), "p.dead_letters");
        assert_eq!(ok.stream_of_topic("p.orders"), Some(StreamKind::Orders));
        assert_eq!(ok.stream_of_topic("orders"), None);
    }
}
