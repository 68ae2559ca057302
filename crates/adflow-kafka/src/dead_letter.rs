//! Dead-letter producer: publishes rejected input messages to `<prefix>dead_letters`.

use adflow_model::{Position, RawMessage, StreamKind};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::produce::send_blocking;
use crate::{KafkaConfig, KafkaError};

/// At most this many bytes of the raw message are kept in a dead letter (spec §1: 4 KiB).
pub const RAW_LIMIT: usize = 4096;

/// One rejected input message, as published (JSON object) to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The input stream.
    pub stream: StreamKind,
    /// Kafka topic, partition and offset when the message came from Kafka, else null.
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// The position as text: `topic/partition/offset` or `file:line`.
    pub position: String,
    /// The first 4 KiB of the raw message (invalid UTF-8 replaced by U+FFFD).
    pub raw: String,
    /// A one-line reason.
    pub reason: String,
    /// Wall clock (epoch ms) at which the pipeline rejected the message.
    pub seen_ts: i64,
}

impl DeadLetter {
    /// Builds a dead letter from a raw message: truncates the payload to [`RAW_LIMIT`] bytes
    /// (at a character boundary) and folds the reason onto one line.
    pub fn new(msg: &RawMessage, reason: &str, seen_ts: i64) -> DeadLetter {
        let (topic, partition, offset) = match &msg.position {
            Position::Kafka {
                topic,
                partition,
                offset,
            } => (Some(topic.clone()), Some(*partition), Some(*offset)),
            _ => (None, None, None),
        };
        let head = &msg.payload[..msg.payload.len().min(RAW_LIMIT)];
        let mut raw = String::from_utf8_lossy(head).into_owned();
        if raw.len() > RAW_LIMIT {
            let mut cut = RAW_LIMIT;
            while !raw.is_char_boundary(cut) {
                cut -= 1;
            }
            raw.truncate(cut);
        }
        DeadLetter {
            stream: msg.stream,
            topic,
            partition,
            offset,
            position: msg.position.to_string(),
            raw,
            reason: reason.split_whitespace().collect::<Vec<_>>().join(" "),
            seen_ts,
        }
    }
}

type Ack = (usize, Result<(i32, i64), String>);

struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<(usize, mpsc::Sender<Ack>)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (index, tx) = *opaque;
        let ack = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        // The receiver is gone only when the sender gave up waiting.
        let _ = tx.send((index, ack));
    }
}

/// Publishes [`DeadLetter`]s to `<prefix>dead_letters` and waits for the broker's
/// acknowledgement (acks=all). Thread-safe (`Sync`): workers may share one.
pub struct DeadLetterProducer {
    producer: ThreadedProducer<AckContext>,
    topic: String,
    timeout: Duration,
}

impl DeadLetterProducer {
    /// Creates the producer. `timeout` bounds each [`DeadLetterProducer::send`] call.
    pub fn new(config: &KafkaConfig, timeout: Duration) -> Result<DeadLetterProducer, KafkaError> {
        let mut cc = config.client_config()?;
        cc.set("acks", "all");
        let producer = ThreadedProducer::from_config_and_context(&cc, AckContext)
            .map_err(KafkaError::Client)?;
        Ok(DeadLetterProducer {
            producer,
            topic: config.dead_letters_topic(),
            timeout,
        })
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `letters` (as JSON, unkeyed) and returns once every one is acknowledged, with
    /// the partition and offset of each, in order. Any failure or a timeout is an error; some of
    /// the letters may have been written then (publishing again gives duplicates, never loss).
    pub fn send(&self, letters: &[DeadLetter]) -> Result<Vec<(i32, i64)>, KafkaError> {
        let (tx, rx) = mpsc::channel::<Ack>();
        for (i, letter) in letters.iter().enumerate() {
            let payload = serde_json::to_vec(letter)?;
            let record = BaseRecord::<str, [u8], _>::with_opaque_to(
                self.topic.as_str(),
                Box::new((i, tx.clone())),
            )
            .payload(payload.as_slice())
            .timestamp(crate::produce::now_ms());
            send_blocking(&self.producer, record)?;
        }
        drop(tx);
        let deadline = Instant::now() + self.timeout;
        let mut acks: Vec<Option<(i32, i64)>> = vec![None; letters.len()];
        let mut received = 0u64;
        let mut failed = 0u64;
        let mut first_error = None;
        while received + failed < letters.len() as u64 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, Ok(pos))) => {
                    if let Some(slot) = acks.get_mut(i) {
                        *slot = Some(pos);
                    }
                    received += 1;
                }
                Ok((_, Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    return Err(KafkaError::DeliveryTimeout {
                        pending: letters.len() as u64 - received - failed,
                    })
                }
            }
        }
        if failed > 0 {
            return Err(KafkaError::Delivery {
                delivered: received,
                failed,
                first_error: first_error.unwrap_or_default(),
            });
        }
        Ok(acks.into_iter().flatten().collect())
    }

    /// Waits up to `timeout` for anything still queued (nothing is after a successful `send`).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .flush(timeout)
            .map_err(|source| KafkaError::Enqueue {
                topic: self.topic.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_and_folds() {
        let mut payload = vec![b'x'; RAW_LIMIT - 1];
        payload.extend("é and more".as_bytes());
        let msg = RawMessage {
            stream: StreamKind::Orders,
            position: Position::Kafka {
                topic: "orders".into(),
                partition: 2,
                offset: 7,
            },
            payload,
        };
        let d = DeadLetter::new(&msg, "bad\njson  here", 5);
        assert!(d.raw.len() <= RAW_LIMIT);
        assert_eq!(d.reason, "bad json here");
        assert_eq!(d.position, "orders/2/7");
        assert_eq!((d.partition, d.offset), (Some(2), Some(7)));
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["stream"], "orders");
        assert_eq!(v["topic"], "orders");
    }
}
