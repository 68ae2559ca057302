//! Batch consumption for statically assigned sources.
//!
//! `BaseConsumer::poll` returns one message per call, and each call pays for a queue lock, three
//! clock reads and an event allocation inside librdkafka — at 100k messages/s that was a fifth
//! of the pipeline's CPU. A statically assigned source instead forwards the fetch queue of every
//! partition it reads to a queue of its own ([`BatchQueue`]) and takes up to `max` messages per
//! call with `rd_kafka_consume_batch_queue`. librdkafka supports this forwarding for assigned
//! partitions (`rd_kafka_queue_forward` marks it as set by the application, and fetch start
//! keeps it). The consumer's own queue then carries only events (statistics, errors, commit
//! results), which the source still serves with `poll(0)` once per batch.
//!
//! A message that carries an error (a partition-level consumer error) is returned as
//! `Batched::Error`; the caller decides, like it does for `poll`.

use rdkafka::bindings as rd;
use std::ffi::CStr;
use std::time::Duration;

/// One item of a batch, copied out of librdkafka's message (which is destroyed at once).
pub(crate) enum Batched {
    Message {
        topic: String,
        partition: i32,
        offset: i64,
        payload: Vec<u8>,
        key: Option<Vec<u8>>,
        /// Message timestamp (create or log-append time), if the broker sent one.
        timestamp_ms: Option<i64>,
    },
    /// A partition-level consumer error (librdkafka retries; fatal ones are also reported by
    /// the client's fatal-error state, which the caller checks).
    Error(String),
}

/// A queue the assigned partitions' fetch queues are forwarded to.
pub(crate) struct BatchQueue {
    queue: *mut rd::rd_kafka_queue_t,
    buf: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: the queue handle is used by the one thread that owns the source; librdkafka queues are
// thread-safe in any case.
unsafe impl Send for BatchQueue {}

impl BatchQueue {
    /// Creates the queue on client `rk` and forwards the fetch queue of each `(topic,
    /// partition)` to it. The partitions must already be assigned. Returns `None` when
    /// librdkafka does not know one of them (the caller then keeps polling the consumer).
    ///
    /// # Safety
    /// `rk` must be a live consumer handle that outlives the returned queue.
    pub(crate) unsafe fn forward(
        rk: *mut rd::rd_kafka_t,
        partitions: &[(String, i32)],
    ) -> Option<BatchQueue> {
        let queue = unsafe { rd::rd_kafka_queue_new(rk) };
        if queue.is_null() {
            return None;
        }
        let q = BatchQueue {
            queue,
            buf: Vec::new(),
        };
        for (topic, partition) in partitions {
            let c = std::ffi::CString::new(topic.as_str()).ok()?;
            let pq = unsafe { rd::rd_kafka_queue_get_partition(rk, c.as_ptr(), *partition) };
            if pq.is_null() {
                return None;
            }
            unsafe {
                rd::rd_kafka_queue_forward(pq, queue);
                rd::rd_kafka_queue_destroy(pq);
            }
        }
        Some(q)
    }

    /// Up to `max` messages, waiting at most `timeout` when none is ready (messages already
    /// queued are returned at once, without waiting for more).
    pub(crate) fn consume(&mut self, max: usize, timeout: Duration, out: &mut Vec<Batched>) {
        let max = max.max(1);
        self.buf.clear();
        self.buf.resize(max, std::ptr::null_mut());
        let mut n = self.take(0, max, 0);
        if n == 0 && !timeout.is_zero() {
            // librdkafka waits for the whole timeout unless the batch fills: wait for one
            // message, then take whatever queued behind it.
            let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
            n = self.take(0, 1, ms);
            if n == 1 {
                n += self.take(1, max - 1, 0);
            }
        }
        for &m in &self.buf[..n] {
            // SAFETY: librdkafka returned `n` valid messages; each is destroyed exactly once.
            unsafe {
                out.push(copy_message(m));
                rd::rd_kafka_message_destroy(m);
            }
        }
    }

    /// Takes up to `room` messages into `buf[at..]`, waiting up to `timeout_ms` for the batch.
    fn take(&mut self, at: usize, room: usize, timeout_ms: i32) -> usize {
        let room = room.min(self.buf.len() - at);
        if room == 0 {
            return 0;
        }
        // SAFETY: `buf[at..at + room]` is in bounds.
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue,
                timeout_ms,
                self.buf.as_mut_ptr().add(at),
                room,
            )
        };
        n.max(0) as usize
    }
}

impl Drop for BatchQueue {
    fn drop(&mut self) {
        // SAFETY: the queue was created by `rd_kafka_queue_new`; forwarded partition queues hold
        // their own reference to it, released when the consumer stops them.
        unsafe { rd::rd_kafka_queue_destroy(self.queue) };
    }
}

/// Copies what the source needs out of message `m`.
///
/// # Safety
/// `m` must be a valid message returned by librdkafka and not yet destroyed.
unsafe fn copy_message(m: *mut rd::rd_kafka_message_t) -> Batched {
    let msg = unsafe { &*m };
    if msg.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let text = unsafe { CStr::from_ptr(rd::rd_kafka_err2str(msg.err)) }
            .to_string_lossy()
            .into_owned();
        let detail = if !msg.payload.is_null() && msg.len > 0 {
            let b = unsafe { std::slice::from_raw_parts(msg.payload as *const u8, msg.len) };
            format!("{text}: {}", String::from_utf8_lossy(b))
        } else {
            text
        };
        return Batched::Error(detail);
    }
    let topic = if msg.rkt.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(msg.rkt)) }
            .to_string_lossy()
            .into_owned()
    };
    let bytes = |p: *mut std::ffi::c_void, len: usize| -> Option<Vec<u8>> {
        if p.is_null() {
            None
        } else {
            Some(unsafe { std::slice::from_raw_parts(p as *const u8, len) }.to_vec())
        }
    };
    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    let ts = unsafe { rd::rd_kafka_message_timestamp(m, &mut kind) };
    Batched::Message {
        topic,
        partition: msg.partition,
        offset: msg.offset,
        payload: bytes(msg.payload, msg.len).unwrap_or_default(),
        key: bytes(msg.key, msg.key_len),
        timestamp_ms: (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
            && ts >= 0)
            .then_some(ts),
    }
}
