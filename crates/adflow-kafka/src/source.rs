//! [`KafkaSource`]: one Kafka consumer per dataflow worker, with manual, synchronous commits.
//!
//! # Delivery semantics
//!
//! All workers of all adflow processes of a pipeline share one consumer group
//! ([`KafkaConfig::group_id`]), so the partitions of the four input topics are spread over the
//! workers. A source never commits on its own (`enable.auto.commit=false`,
//! `enable.auto.offset.store=false`): the engine calls [`KafkaSource::commit`] with the offsets
//! whose effects every sink has durably written. A partition the group has never committed is
//! read from its earliest offset (`auto.offset.reset=earliest`). Delivery is therefore
//! at-least-once: after a crash, a restart or a rebalance, everything after the last committed
//! offset of a partition is delivered again, and the engine's `event_id` dedup (spec §1) keeps
//! it from being counted twice.
//!
//! # Rebalances and uncommitted work
//!
//! librdkafka runs the rebalance callbacks inside [`KafkaSource::poll_batch`] (and the other
//! poll functions); between two polls the assignment seen by this source does not change.
//! When partitions are revoked:
//! - messages of those partitions that librdkafka had prefetched but this source had not yet
//!   returned are discarded (the next owner fetches them again);
//! - messages already returned stay with the engine, which may finish processing them, but
//!   this source no longer commits offsets for partitions it does not own:
//!   [`KafkaSource::commit`] skips them and lists them in [`CommitOutcome::skipped`] (a late
//!   commit could otherwise move the new owner's committed offset backwards or forwards);
//! - the new owner (possibly this same source after an eager rebalance) starts at the last
//!   committed offset, so all uncommitted work on the partition is redelivered;
//! - the source does **not** commit anything on revocation: only the engine knows what is
//!   durable. To keep redelivery small the engine should commit after every durable sink flush.
//!
//! Every assignment change is also reported as a [`RebalanceEvent`] by
//! [`KafkaSource::take_rebalance_events`], so the engine can drop its per-partition state
//! (pending offsets, partition watermarks) for revoked partitions and start fresh ones for
//! assigned partitions.

use adflow_model::{Position, RawMessage, StreamKind};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};

use crate::batch::{BatchQueue, Batched};
use crate::{KafkaConfig, KafkaError};

/// `fetch.wait.max.ms` used unless `properties` sets it (librdkafka's default is 500).
pub const DEFAULT_FETCH_WAIT_MS: &str = "50";

/// Where a statically assigned source starts reading each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The earliest retained offset (replay everything).
    Beginning,
    /// The group's committed offset, or the earliest when none is committed.
    Committed,
}

/// A change of this source's partition assignment, in the order librdkafka reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions now belong to this source; reading starts at the group's committed
    /// offset (or the earliest offset when none is committed).
    Assigned(Vec<(StreamKind, i32)>),
    /// These partitions no longer belong to this source; see the module docs for what happens
    /// to uncommitted work.
    Revoked(Vec<(StreamKind, i32)>),
}

/// One consumed message with the Kafka metadata that [`RawMessage`] does not carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    /// Stream, position (`Position::Kafka` with the full topic name, prefix included) and payload.
    pub raw: RawMessage,
    /// The message key, if any.
    pub key: Option<Vec<u8>>,
    /// The message timestamp in epoch ms (`adflow produce` writes its wall clock at send time).
    pub timestamp_ms: Option<i64>,
}

/// What this source knows about one assigned partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub stream: StreamKind,
    pub partition: i32,
    /// Wall clock at which the partition was (last) assigned to this source.
    pub assigned_at: SystemTime,
    /// Wall clock at which this source last returned a message of the partition, if it has since
    /// the assignment.
    pub last_message_at: Option<SystemTime>,
    /// Offset after the last message returned since the assignment (the next one to read).
    pub next_offset: Option<i64>,
    /// The last offset this source committed for the partition since the assignment.
    pub committed: Option<i64>,
}

impl PartitionStatus {
    /// A partition just assigned at `now`: nothing read or committed yet.
    fn assigned(stream: StreamKind, partition: i32, now: SystemTime) -> PartitionStatus {
        PartitionStatus {
            stream,
            partition,
            assigned_at: now,
            last_message_at: None,
            next_offset: None,
            committed: None,
        }
    }
}

impl PartitionStatus {
    /// Since when the partition has been idle: its last message, or its assignment when no
    /// message has come since. The engine lets a partition idle for longer than its idle timeout
    /// follow wall-clock time (spec §2).
    pub fn idle_since(&self) -> SystemTime {
        self.last_message_at.unwrap_or(self.assigned_at)
    }
}

/// Result of [`KafkaSource::commit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Offsets committed to the group, as given.
    pub committed: Vec<(StreamKind, i32, i64)>,
    /// Offsets not committed because the partition is not (any more) assigned to this source.
    pub skipped: Vec<(StreamKind, i32, i64)>,
}

/// librdkafka callbacks: records assignment changes for the source to pick up after a poll.
pub(crate) struct SourceContext {
    topic_prefix: String,
    events: Mutex<Vec<RebalanceEvent>>,
    /// The last statistics librdkafka reported (see [`KafkaSource::caught_up_cached`]).
    stats: Mutex<FetchStats>,
}

/// What the last statistics report said about the fetch state.
#[derive(Default)]
struct FetchStats {
    /// When the report came.
    at: Option<Instant>,
    /// (stream, partition) → high watermark from the last fetch response, for partitions whose
    /// leader broker was up.
    high: std::collections::HashMap<(StreamKind, i32), i64>,
}

/// `statistics.interval.ms` of the consumers: how often librdkafka reports each partition's
/// high watermark (taken from its fetch responses) and each broker's state.
pub const STATS_INTERVAL_MS: &str = "100";

impl SourceContext {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<(StreamKind, i32)> {
        let mut out: Vec<(StreamKind, i32)> = tpl
            .elements()
            .iter()
            .filter_map(|e| {
                let stream = e
                    .topic()
                    .strip_prefix(self.topic_prefix.as_str())
                    .and_then(StreamKind::from_name);
                if stream.is_none() {
                    warn!(
                        topic = e.topic(),
                        "assignment names a topic that is not an input stream"
                    );
                }
                stream.map(|s| (s, e.partition()))
            })
            .collect();
        out.sort();
        out
    }

    fn push(&self, event: RebalanceEvent) {
        match self.events.lock() {
            Ok(mut events) => events.push(event),
            Err(poisoned) => poisoned.into_inner().push(event),
        }
    }

    fn drain(&self) -> Vec<RebalanceEvent> {
        match self.events.lock() {
            Ok(mut events) => std::mem::take(&mut *events),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let up: BTreeSet<i32> = statistics
            .brokers
            .values()
            .filter(|b| b.state == "UP")
            .map(|b| b.nodeid)
            .collect();
        let mut high = std::collections::HashMap::new();
        for (name, topic) in &statistics.topics {
            let Some(stream) = name
                .strip_prefix(self.topic_prefix.as_str())
                .and_then(StreamKind::from_name)
            else {
                continue;
            };
            for (&partition, p) in &topic.partitions {
                if partition >= 0 && p.hi_offset >= 0 && up.contains(&p.leader) {
                    high.insert((stream, partition), p.hi_offset);
                }
            }
        }
        let mut st = match self.stats.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        st.at = Some(Instant::now());
        st.high = high;
    }
}

impl ConsumerContext for SourceContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = self.partitions_of(tpl);
                info!(partitions = ?parts, "partitions assigned");
                self.push(RebalanceEvent::Assigned(parts));
            }
            Rebalance::Revoke(tpl) => {
                let parts = self.partitions_of(tpl);
                info!(partitions = ?parts, "partitions revoked");
                self.push(RebalanceEvent::Revoked(parts));
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    /// The outcome of a commit ([`KafkaSource::commit_async`]'s arrive only here).
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            warn!(error = %e, "offsets commit failed (the group's offsets are for monitoring; the next round commits newer ones)");
        }
    }
}

/// One worker's Kafka consumer of the four input topics. See the module docs for the delivery
/// and rebalance semantics.
///
/// Not `Sync`: each worker owns its source. Dropping it closes the consumer and leaves the group
/// (its partitions go to the other members at once, from the last committed offsets).
pub struct KafkaSource {
    config: KafkaConfig,
    /// Batch consumption of a static assignment (declared before `consumer`: dropped first).
    batch: Option<BatchQueue>,
    consumer: BaseConsumer<SourceContext>,
    partitions: BTreeMap<(StreamKind, i32), PartitionStatus>,
    events: Vec<RebalanceEvent>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes it to the four input topics (`<prefix><stream>`).
    /// `worker` only names the client (`client.id = adflow-<group>-<worker>`) in broker logs.
    /// Nothing is fetched and no partition is assigned before the first poll.
    pub fn new(config: &KafkaConfig, worker: usize) -> Result<KafkaSource, KafkaError> {
        let consumer = create_consumer(config, worker)?;
        let topics: Vec<String> = StreamKind::ALL.iter().map(|s| config.topic(*s)).collect();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|source| KafkaError::Subscribe {
                topics: topics.clone(),
                source,
            })?;
        debug!(worker, ?topics, group = %config.group_id, "kafka source subscribed");
        Ok(KafkaSource {
            config: config.clone(),
            batch: None,
            consumer,
            partitions: BTreeMap::new(),
            events: Vec::new(),
        })
    }

    /// Creates a consumer with a **static** assignment instead of a group subscription: the
    /// partitions of the four input topics (sorted by stream, then partition) are dealt out
    /// round robin over the `peers` workers of the timely cluster, and worker `worker` reads
    /// its share. The timely cluster is then the consumer group: no rebalance ever moves a
    /// partition while the dataflow holds state built from it. The group id is used only to
    /// commit offsets (see [`KafkaSource::commit`]) and read them back.
    ///
    /// Every assigned partition is read from `start` (the engine replays from the beginning
    /// to rebuild its in-memory state after a restart). The offsets the group had committed
    /// are read first and reported in [`PartitionStatus::committed`]. The topics must exist;
    /// a missing one is an error naming it.
    pub fn assigned(
        config: &KafkaConfig,
        worker: usize,
        peers: usize,
        start: StartAt,
        timeout: Duration,
    ) -> Result<KafkaSource, KafkaError> {
        let consumer = create_consumer(config, worker)?;
        let mut all = Vec::new();
        for stream in StreamKind::ALL {
            let topic = config.topic(stream);
            let md = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(KafkaError::Metadata)?;
            let count = md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            if count == 0 {
                return Err(KafkaError::Config(format!(
                    "topic {topic} does not exist (or has no partitions)"
                )));
            }
            all.extend((0..count as i32).map(|p| (stream, p)));
        }
        let mine: Vec<(StreamKind, i32)> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % peers.max(1) == worker)
            .map(|(_, sp)| sp)
            .collect();
        let mut source = KafkaSource {
            config: config.clone(),
            batch: None,
            consumer,
            partitions: BTreeMap::new(),
            events: Vec::new(),
        };
        let now = SystemTime::now();
        for &(stream, partition) in &mine {
            source.partitions.insert(
                (stream, partition),
                PartitionStatus::assigned(stream, partition, now),
            );
        }
        for (stream, partition, committed) in source.committed_offsets(timeout)? {
            if let Some(st) = source.partitions.get_mut(&(stream, partition)) {
                st.committed = committed;
            }
        }
        let mut tpl = TopicPartitionList::new();
        for &(stream, partition) in &mine {
            let offset = match start {
                StartAt::Beginning => Offset::Beginning,
                StartAt::Committed => match source.partitions[&(stream, partition)].committed {
                    Some(o) => Offset::Offset(o),
                    None => Offset::Beginning,
                },
            };
            tpl.add_partition_offset(&config.topic(stream), partition, offset)
                .map_err(KafkaError::Commit)?;
        }
        source.consumer.assign(&tpl).map_err(KafkaError::Client)?;
        let names: Vec<(String, i32)> = mine.iter().map(|&(s, p)| (config.topic(s), p)).collect();
        // SAFETY: the queue is a field of the source, dropped before the consumer.
        source.batch =
            unsafe { BatchQueue::forward(source.consumer.client().native_ptr(), &names) };
        if source.batch.is_none() && !mine.is_empty() {
            warn!(
                worker,
                "partition queues not available; consuming one message per poll"
            );
        }
        info!(worker, partitions = ?mine, ?start, "kafka source assigned");
        Ok(source)
    }

    /// The configuration this source was built from.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Returns up to `max` messages, waiting at most `timeout` for the first one and not at all
    /// for the rest (so it returns early with whatever is already buffered). An empty result
    /// means nothing arrived within `timeout`. librdkafka prefetches a bounded amount per
    /// partition (`queued.max.messages.kbytes`), so a caller applies back-pressure simply by not
    /// polling. Rebalance callbacks run here too. `max = 0` returns at once without polling.
    ///
    /// Transient errors (broker down, unknown topic not yet created, …) are logged and retried
    /// by librdkafka; only a fatal consumer error is returned.
    pub fn poll_batch(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<RawMessage>, KafkaError> {
        Ok(self
            .poll_records(max, timeout)?
            .into_iter()
            .map(|r| r.raw)
            .collect())
    }

    /// Like [`KafkaSource::poll_batch`], with each message's key and timestamp.
    pub fn poll_records(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<SourceRecord>, KafkaError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        if self.batch.is_some() {
            return self.poll_batched(max, timeout);
        }
        let deadline = Instant::now() + timeout;
        while out.len() < max {
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(wait);
            // Callbacks may have changed the assignment during that poll.
            apply_rebalance_events(
                self.consumer.context(),
                &mut self.partitions,
                &mut self.events,
            );
            match polled {
                None => {
                    if !out.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                }
                Some(Ok(msg)) => {
                    let rec = Self::record_of(&self.config, &mut self.partitions, &msg);
                    out.extend(rec);
                }
                Some(Err(e)) => {
                    self.consumer_error(e)?;
                    if !out.is_empty() {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// [`KafkaSource::poll_records`] of a static assignment: the consumer's own queue (events
    /// only) is served without waiting, then up to `max` messages come from the batch queue.
    fn poll_batched(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<SourceRecord>, KafkaError> {
        let mut out = Vec::new();
        let polled = self.consumer.poll(Duration::ZERO);
        apply_rebalance_events(
            self.consumer.context(),
            &mut self.partitions,
            &mut self.events,
        );
        match polled {
            Some(Ok(msg)) => {
                let rec = Self::record_of(&self.config, &mut self.partitions, &msg);
                out.extend(rec);
            }
            Some(Err(e)) => self.consumer_error(e)?,
            None => {}
        }
        let mut items = Vec::new();
        if let Some(b) = self.batch.as_mut() {
            let wait = if out.is_empty() {
                timeout
            } else {
                Duration::ZERO
            };
            b.consume(max - out.len(), wait, &mut items);
        }
        let now = SystemTime::now();
        for item in items {
            match item {
                Batched::Message {
                    topic,
                    partition,
                    offset,
                    payload,
                    key,
                    timestamp_ms,
                } => {
                    let rec = Self::record(
                        &self.config,
                        &mut self.partitions,
                        topic,
                        partition,
                        offset,
                        payload,
                        key,
                        timestamp_ms,
                        now,
                    );
                    out.extend(rec);
                }
                Batched::Error(message) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        return Err(KafkaError::Fatal(format!("{code:?}: {reason}")));
                    }
                    warn!(error = %message, "kafka consumer error (retrying)");
                }
            }
        }
        Ok(out)
    }

    /// [`KafkaSource::record`] of a message returned by `poll`.
    fn record_of(
        config: &KafkaConfig,
        partitions: &mut BTreeMap<(StreamKind, i32), PartitionStatus>,
        msg: &BorrowedMessage<'_>,
    ) -> Option<SourceRecord> {
        Self::record(
            config,
            partitions,
            msg.topic().to_string(),
            msg.partition(),
            msg.offset(),
            msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            msg.key().map(<[u8]>::to_vec),
            msg.timestamp().to_millis(),
            SystemTime::now(),
        )
    }

    /// A consumed message as a record, its partition's status updated; `None` (logged) for a
    /// topic that is not an input stream.
    #[allow(clippy::too_many_arguments)]
    fn record(
        config: &KafkaConfig,
        partitions: &mut BTreeMap<(StreamKind, i32), PartitionStatus>,
        topic: String,
        partition: i32,
        offset: i64,
        payload: Vec<u8>,
        key: Option<Vec<u8>>,
        timestamp_ms: Option<i64>,
        now: SystemTime,
    ) -> Option<SourceRecord> {
        let Some(stream) = config.stream_of_topic(&topic) else {
            warn!(
                topic = %topic,
                "message from a topic that is not an input stream; ignored"
            );
            return None;
        };
        let status = partitions
            .entry((stream, partition))
            .or_insert_with(|| PartitionStatus {
                stream,
                partition,
                assigned_at: now,
                last_message_at: None,
                next_offset: None,
                committed: None,
            });
        status.last_message_at = Some(now);
        status.next_offset = Some(offset + 1);
        Some(SourceRecord {
            raw: RawMessage {
                stream,
                position: Position::Kafka {
                    topic,
                    partition,
                    offset,
                },
                payload,
            },
            key,
            timestamp_ms,
        })
    }

    /// A consumer error from `poll`: fatal ones end the source, others are logged (librdkafka
    /// retries them).
    fn consumer_error(&self, e: RdError) -> Result<(), KafkaError> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            return Err(KafkaError::Fatal(format!("{code:?}: {reason}")));
        }
        if let RdError::MessageConsumptionFatal(code) = e {
            return Err(KafkaError::Fatal(format!("{code:?}")));
        }
        warn!(error = %e, "kafka consumer error (retrying)");
        Ok(())
    }

    /// Assignment changes since the last call, oldest first. Kept until taken.
    pub fn take_rebalance_events(&mut self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut self.events)
    }

    /// The next offset to read of an assigned partition, once a message of it was returned.
    pub fn next_offset(&self, stream: StreamKind, partition: i32) -> Option<i64> {
        self.partitions.get(&(stream, partition))?.next_offset
    }

    /// The partitions currently assigned to this source, sorted. Empty before the first poll
    /// and while the group rebalances.
    pub fn assignment(&self) -> Vec<(StreamKind, i32)> {
        self.partitions.keys().copied().collect()
    }

    /// Per-partition status (idle information, next offset, last commit) of the current
    /// assignment, sorted by (stream, partition).
    pub fn partition_status(&self) -> Vec<PartitionStatus> {
        self.partitions.values().cloned().collect()
    }

    /// Synchronously commits exactly the given offsets to the group, each being the **next
    /// offset to read** (last processed offset + 1), and returns once the broker has accepted
    /// them. Offsets of partitions not assigned to this source are not committed and are
    /// listed in [`CommitOutcome::skipped`]. A partition named twice, a negative offset or a
    /// non-input stream is an error and nothing is committed. Offsets are committed as given,
    /// even if lower than an earlier commit (the caller owns monotonicity). On error nothing
    /// is known to be committed; retrying after the next poll is safe.
    pub fn commit(
        &mut self,
        offsets: &[(StreamKind, i32, i64)],
    ) -> Result<CommitOutcome, KafkaError> {
        self.commit_in(offsets, rdkafka::consumer::CommitMode::Sync)
    }

    /// [`KafkaSource::commit`] without waiting for the broker: the request is queued and
    /// this returns at once (the live engine commits every checkpoint round on every worker,
    /// and a synchronous round trip to the group coordinator held the worker's dataflow each
    /// time). The outcome arrives later: a failure is logged (`offsets commit failed`) and
    /// the next commit carries newer offsets; the partition status records the offsets as
    /// committed when they are sent. The same checks as `commit` apply before anything is
    /// sent.
    pub fn commit_async(
        &mut self,
        offsets: &[(StreamKind, i32, i64)],
    ) -> Result<CommitOutcome, KafkaError> {
        self.commit_in(offsets, rdkafka::consumer::CommitMode::Async)
    }

    fn commit_in(
        &mut self,
        offsets: &[(StreamKind, i32, i64)],
        mode: rdkafka::consumer::CommitMode,
    ) -> Result<CommitOutcome, KafkaError> {
        let mut seen = BTreeSet::new();
        let mut outcome = CommitOutcome::default();
        let mut tpl = TopicPartitionList::new();
        for &(stream, partition, offset) in offsets {
            if offset < 0 {
                return Err(KafkaError::CommitRequest(format!(
                    "negative offset {offset} for {stream}/{partition}"
                )));
            }
            if !seen.insert((stream, partition)) {
                return Err(KafkaError::CommitRequest(format!(
                    "partition {stream}/{partition} named twice"
                )));
            }
            if self.partitions.contains_key(&(stream, partition)) {
                tpl.add_partition_offset(
                    &self.config.topic(stream),
                    partition,
                    Offset::Offset(offset),
                )
                .map_err(KafkaError::Commit)?;
                outcome.committed.push((stream, partition, offset));
            } else {
                outcome.skipped.push((stream, partition, offset));
            }
        }
        if !outcome.skipped.is_empty() {
            warn!(skipped = ?outcome.skipped, "not committing offsets of partitions not assigned to this source");
        }
        if outcome.committed.is_empty() {
            return Ok(outcome);
        }
        self.consumer
            .commit(&tpl, mode)
            .map_err(KafkaError::Commit)?;
        for &(stream, partition, offset) in &outcome.committed {
            if let Some(status) = self.partitions.get_mut(&(stream, partition)) {
                status.committed = Some(offset);
            }
        }
        debug!(committed = ?outcome.committed, "offsets committed");
        Ok(outcome)
    }

    /// Whether this source has read everything the partition holds: the next offset to read
    /// has reached the partition's high watermark, asked from the broker (`ListOffsets`,
    /// waiting at most `timeout`). `false` when the broker cannot be asked (down, unreachable)
    /// — a partition that cannot be read is not known to be drained.
    /// Whether the partition is caught up according to librdkafka's last statistics report
    /// (no network round trip): the report is at most `max_age` old, the partition's leader
    /// broker was up, and the next offset to read has reached the high watermark of the last
    /// fetch response. `None` when no usable report says anything about the partition
    /// (starting up, broker down, report too old): the caller then does not know.
    pub fn caught_up_cached(
        &self,
        stream: StreamKind,
        partition: i32,
        max_age: Duration,
    ) -> Option<bool> {
        let (next, high) = self.cached_offsets(stream, partition, max_age)?;
        Some(next >= high)
    }

    /// The partition's next offset to read and the high watermark of librdkafka's last
    /// statistics report, when a report at most `max_age` old knows the partition.
    fn cached_offsets(
        &self,
        stream: StreamKind,
        partition: i32,
        max_age: Duration,
    ) -> Option<(i64, i64)> {
        let status = self.partitions.get(&(stream, partition))?;
        let st = match self.consumer.context().stats.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if st.at?.elapsed() > max_age {
            return None;
        }
        let high = *st.high.get(&(stream, partition))?;
        Some((status.next_offset.unwrap_or(0), high))
    }

    /// The partition's consumer lag by librdkafka's last statistics report (no network round
    /// trip): the high watermark of the last fetch response minus the next offset to read
    /// (at least 0); `None` when no report at most `max_age` old knows the partition.
    pub fn lag_cached(&self, stream: StreamKind, partition: i32, max_age: Duration) -> Option<i64> {
        let (next, high) = self.cached_offsets(stream, partition, max_age)?;
        Some((high - next).max(0))
    }

    pub fn caught_up(&mut self, stream: StreamKind, partition: i32, timeout: Duration) -> bool {
        let Some(status) = self.partitions.get(&(stream, partition)) else {
            return false;
        };
        let next = status.next_offset;
        match self
            .consumer
            .fetch_watermarks(&self.config.topic(stream), partition, timeout)
        {
            Ok((low, high)) => {
                debug!(%stream, partition, low, high, ?next, "high watermark");
                next.unwrap_or(low.max(0)) >= high
            }
            Err(e) => {
                debug!(%stream, partition, error = %e, "high watermark unknown");
                false
            }
        }
    }

    /// Asks the group coordinator for the committed offsets of the current assignment
    /// (`None`: nothing committed). Blocks up to `timeout`.
    pub fn committed_offsets(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(StreamKind, i32, Option<i64>)>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &(stream, partition) in self.partitions.keys() {
            tpl.add_partition(&self.config.topic(stream), partition);
        }
        if tpl.count() == 0 {
            return Ok(Vec::new());
        }
        let result: KafkaResult<TopicPartitionList> = self.consumer.committed_offsets(tpl, timeout);
        let tpl = result.map_err(KafkaError::Committed)?;
        let mut out: Vec<(StreamKind, i32, Option<i64>)> = tpl
            .elements()
            .iter()
            .filter_map(|e| {
                let stream = self.config.stream_of_topic(e.topic())?;
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                Some((stream, e.partition(), offset))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// The consumer both constructors use: the configured group, no automatic commit or offset
/// store, earliest offset when nothing is committed, a short fetch wait.
fn create_consumer(
    config: &KafkaConfig,
    worker: usize,
) -> Result<BaseConsumer<SourceContext>, KafkaError> {
    let mut cc = config.client_config()?;
    cc.set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    // Brokers that hold a fetch for its full wait even when data arrives (tansu 0.6.0 does)
    // would otherwise add up to librdkafka's default 500 ms to every message's latency.
    if !config.properties.contains_key("fetch.wait.max.ms") {
        cc.set("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MS);
    }
    if !config.properties.contains_key("client.id") {
        cc.set("client.id", format!("adflow-{}-{worker}", config.group_id));
    }
    if !config.properties.contains_key("statistics.interval.ms") {
        cc.set("statistics.interval.ms", STATS_INTERVAL_MS);
    }
    let context = SourceContext {
        topic_prefix: config.topic_prefix.clone(),
        events: Mutex::new(Vec::new()),
        stats: Mutex::new(FetchStats::default()),
    };
    cc.create_with_context(context).map_err(KafkaError::Client)
}

/// Moves the assignment changes recorded by the callbacks into the source's bookkeeping.
fn apply_rebalance_events(
    context: &SourceContext,
    partitions: &mut BTreeMap<(StreamKind, i32), PartitionStatus>,
    events: &mut Vec<RebalanceEvent>,
) {
    for event in context.drain() {
        let now = SystemTime::now();
        match &event {
            RebalanceEvent::Assigned(parts) => {
                for &(stream, partition) in parts {
                    partitions.insert(
                        (stream, partition),
                        PartitionStatus::assigned(stream, partition, now),
                    );
                }
            }
            RebalanceEvent::Revoked(parts) => {
                for key in parts {
                    partitions.remove(key);
                }
            }
        }
        events.push(event);
    }
}
