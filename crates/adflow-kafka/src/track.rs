//! Kafka side of the Kdniao connector: [`KafkaTrackPublisher`] publishes track events to
//! `<prefix>logistics` and resolves only once the broker has acknowledged every one.

use adflow_kdniao::sink::PublishFuture;
use adflow_kdniao::{PublishError, TrackEvent, TrackPublisher};
use adflow_model::StreamKind;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::{KafkaConfig, KafkaError};

/// Default bound on waiting for the broker's acknowledgement of one publish (librdkafka's
/// `message.timeout.ms`). Kdniao is answered only after that, so it stays short: a push that
/// cannot be stored in time is answered with a failure and Kdniao pushes it again.
pub const DEFAULT_TRACK_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

type Ack = Result<(i32, i64), String>;

struct OneshotContext;

impl ClientContext for OneshotContext {}

impl ProducerContext for OneshotContext {
    type DeliveryOpaque = Box<oneshot::Sender<Ack>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let ack = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        // The receiver is gone only when the publisher gave up waiting.
        let _ = tx.send(ack);
    }
}

type TrackProducer = ThreadedProducer<OneshotContext>;

/// A [`TrackPublisher`] writing each [`TrackEvent`] as one JSON line
/// ([`TrackEvent::to_json_line`], exactly what the file publisher appends) to
/// `<prefix>logistics`, keyed by its cleaned `logistic_code` (spec §1), with `acks=all` and
/// idempotence on. [`TrackPublisher::publish`] resolves `Ok` only after the broker
/// acknowledged every event of the call; any failed or missing acknowledgement is an error
/// (the Kdniao receiver then answers the push with a failure, so Kdniao pushes it again; some
/// events may have been written, which the pipeline's `event_id` dedup absorbs).
pub struct KafkaTrackPublisher {
    config: KafkaConfig,
    topic: String,
    timeout: Duration,
    producer: Mutex<Arc<TrackProducer>>,
}

impl std::fmt::Debug for KafkaTrackPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTrackPublisher")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.topic)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl KafkaTrackPublisher {
    /// A publisher to `config.topic(Logistics)`. `delivery_timeout` bounds how long one
    /// publish waits for acknowledgements (librdkafka `message.timeout.ms`); see
    /// [`DEFAULT_TRACK_DELIVERY_TIMEOUT`]. The topic is not created here (see
    /// [`crate::ensure_named_topics`]).
    pub fn new(
        config: &KafkaConfig,
        delivery_timeout: Duration,
    ) -> Result<KafkaTrackPublisher, KafkaError> {
        if delivery_timeout < Duration::from_millis(100) {
            return Err(KafkaError::Config(format!(
                "track delivery timeout must be at least 100 ms, got {delivery_timeout:?}"
            )));
        }
        let producer = new_producer(config, delivery_timeout)?;
        Ok(KafkaTrackPublisher {
            config: config.clone(),
            topic: config.topic(StreamKind::Logistics),
            timeout: delivery_timeout,
            producer: Mutex::new(Arc::new(producer)),
        })
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn lock(&self) -> MutexGuard<'_, Arc<TrackProducer>> {
        // Only an Arc is swapped under this lock; a poisoned lock holds a usable value.
        self.producer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `events` and waits for every acknowledgement; returns their (partition,
    /// offset) in order.
    pub async fn publish_events(
        &self,
        events: &[TrackEvent],
    ) -> Result<Vec<(i32, i64)>, KafkaError> {
        let producer = self.lock().clone();
        let result = self.send_and_wait(&producer, events).await;
        if result.is_err() {
            // An idempotent producer can hit a fatal error (e.g. after a broker lost
            // acknowledged sequence numbers); it then fails everything. Start a new one so the
            // next push (Kdniao's retry) can succeed.
            if let Some((code, reason)) = producer.client().fatal_error() {
                error!(?code, %reason, "Kafka track producer hit a fatal error; recreating it");
                match new_producer(&self.config, self.timeout) {
                    Ok(p) => *self.lock() = Arc::new(p),
                    Err(e) => error!(error = %e, "cannot recreate the Kafka track producer"),
                }
            }
        }
        result
    }

    async fn send_and_wait(
        &self,
        producer: &TrackProducer,
        events: &[TrackEvent],
    ) -> Result<Vec<(i32, i64)>, KafkaError> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let (tx, rx) = oneshot::channel::<Ack>();
            let payload = event.to_json_line();
            let mut record = BaseRecord::with_opaque_to(self.topic.as_str(), Box::new(tx))
                .key(event.logistic_code.as_str())
                .payload(payload.as_bytes())
                .timestamp(crate::produce::now_ms());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((source, _)) => {
                        return Err(KafkaError::Enqueue {
                            topic: self.topic.clone(),
                            source,
                        })
                    }
                }
            }
            pending.push(rx);
        }
        // librdkafka fails every message after message.timeout.ms itself; the extra margin only
        // guards against a report that never comes.
        let wait = self.timeout + Duration::from_secs(5);
        let total = pending.len() as u64;
        let mut acks = Vec::with_capacity(pending.len());
        let mut failed = 0u64;
        let mut first_error = None;
        let outcome = tokio::time::timeout(wait, async {
            for rx in pending {
                match rx.await {
                    Ok(Ok(pos)) => acks.push(pos),
                    Ok(Err(e)) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                    Err(_) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| "delivery report lost".to_string());
                    }
                }
            }
        })
        .await;
        if outcome.is_err() {
            return Err(KafkaError::DeliveryTimeout {
                pending: total - acks.len() as u64 - failed,
            });
        }
        if failed > 0 {
            return Err(KafkaError::Delivery {
                delivered: acks.len() as u64,
                failed,
                first_error: first_error.unwrap_or_default(),
            });
        }
        debug!(topic = %self.topic, events = acks.len(), "track events acknowledged");
        Ok(acks)
    }
}

fn new_producer(config: &KafkaConfig, timeout: Duration) -> Result<TrackProducer, KafkaError> {
    let mut cc = config.client_config()?;
    cc.set("acks", "all");
    cc.set("enable.idempotence", "true");
    cc.set("message.timeout.ms", timeout.as_millis().to_string());
    ThreadedProducer::from_config_and_context(&cc, OneshotContext).map_err(KafkaError::Client)
}

impl TrackPublisher for KafkaTrackPublisher {
    fn publish<'a>(&'a self, events: &'a [TrackEvent]) -> PublishFuture<'a> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            self.publish_events(events).await.map(|_| ()).map_err(|e| {
                PublishError::Other(format!(
                    "Kafka topic {} at {}: {e}",
                    self.topic, self.config.brokers
                ))
            })
        })
    }

    fn describe(&self) -> String {
        format!("kafka {} topic {}", self.config.brokers, self.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_is_shareable_and_names_its_topic() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<KafkaTrackPublisher>();
        let mut config = KafkaConfig::new("127.0.0.1:1");
        config.topic_prefix = "p.".into();
        let p = KafkaTrackPublisher::new(&config, Duration::from_secs(1)).unwrap();
        assert_eq!(p.topic(), "p.logistics");
        assert_eq!(p.describe(), "kafka 127.0.0.1:1 topic p.logistics");
        assert!(KafkaTrackPublisher::new(&config, Duration::from_millis(1)).is_err());
    }
}
