//! Engine operators: deduplication, timers (future-dated updates), expiry, and the output stage.

use crate::{Col, Diff, OutRec, Time};
use adflow_model::event::Event;
use adflow_model::{Change, OutputRow};
use differential_dataflow::collection::AsCollection;
use differential_dataflow::difference::{Abelian, Semigroup};
use differential_dataflow::Data;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

/// Moves every update of `col` to `max(time, when(data))`: a timer. The update becomes visible
/// once the watermark passes `when(data)`; a retraction of the same data before then cancels it
/// (both land on the same future time and consolidate away).
pub fn delay_until<'s, D, R, F>(col: Col<'s, D, R>, name: &str, mut when: F) -> Col<'s, D, R>
where
    D: Data,
    R: Semigroup + 'static,
    F: FnMut(&D) -> Time + 'static,
{
    col.inner
        .unary(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<(D, Time, R)>| {
                    for (d, t, _) in data.iter_mut() {
                        *t = (*t).max(when(d));
                    }
                    output.session(&cap).give_container(data);
                })
            }
        })
        .as_collection()
}

/// Adds to every update of `col` its own retraction at `max(time, expiry(data))`, so the record
/// leaves the collection (and all state derived from it) at its expiry time. Expiry times that
/// depend only on a grouping key (e.g. an hour bucket) let the retractions of many records
/// consolidate into one.
pub fn expire_at<'s, D, R, F>(col: Col<'s, D, R>, name: &str, expiry: F) -> Col<'s, D, R>
where
    D: Data,
    R: Abelian + 'static,
    F: FnMut(&D) -> Time + 'static,
{
    let retractions = delay_until(col.clone().negate(), name, expiry);
    col.concat(retractions)
}

/// [`expire_at`] for records whose expiry depends on a grouping key (an hour or window bucket):
/// the retractions of one batch are summed per `(record, expiry)` before they reach an
/// arrangement, so a key's many contributions leave as one update.
pub fn expire_grouped_at<'s, D, R, F>(col: Col<'s, D, R>, name: &str, expiry: F) -> Col<'s, D, R>
where
    D: Data + Hash + Eq,
    R: Abelian + 'static,
    F: FnMut(&D) -> Time + 'static,
{
    let retractions = consolidate_batches(delay_until(col.clone().negate(), name, expiry), name);
    col.concat(retractions)
}

/// Sums the updates of each `(data, time)` within every batch the operator receives, before
/// they reach an arrangement: many updates to one key at one time (events moved to a window's
/// end, or a busy tick) become one, so the arrangement's batcher sorts and stores far fewer
/// records. Results are unchanged (a collection is the sum of its updates); updates summing to
/// zero are dropped.
pub fn consolidate_batches<'s, D, R>(col: Col<'s, D, R>, name: &str) -> Col<'s, D, R>
where
    D: Data + Hash + Eq,
    R: Semigroup + 'static,
{
    col.inner
        .unary(Pipeline, name, move |_, _| {
            let mut sums: std::collections::HashMap<(D, Time), R, FastHash> =
                std::collections::HashMap::default();
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<(D, Time, R)>| {
                    for (d, t, r) in data.drain(..) {
                        match sums.entry((d, t)) {
                            std::collections::hash_map::Entry::Occupied(mut e) => {
                                e.get_mut().plus_equals(&r)
                            }
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(r);
                            }
                        }
                    }
                    let mut session = output.session(&cap);
                    for ((d, t), r) in sums.drain() {
                        if !r.is_zero() {
                            session.give((d, t, r));
                        }
                    }
                })
            }
        })
        .as_collection()
}

/// The hasher of the engine's hash maps: fast, and seeded per process (keys come from input).
type FastHash = foldhash::fast::RandomState;

/// The dedup key of an event: a 128-bit XXH3 fingerprint of (stream, `event_id`), the same on
/// every worker and process (fixed seed). Two distinct keys share a fingerprint with probability
/// about n²/2¹²⁹ — below 10⁻¹⁸ for the 3.6·10⁹ keys an hour holds at 1M events/s — and a
/// fingerprint is 16 bytes in place, where the key itself is a shared string.
fn event_fingerprint(e: &Event) -> u128 {
    let id = e.event_id.as_str().as_bytes();
    let mut buf = [0u8; 128];
    if id.len() < buf.len() {
        buf[0] = e.body.stream().index() as u8;
        buf[1..=id.len()].copy_from_slice(id);
        xxhash_rust::xxh3::xxh3_128(&buf[..=id.len()])
    } else {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&[e.body.stream().index() as u8]);
        h.update(id);
        h.digest128()
    }
}

/// The hasher of the fingerprint set: a fingerprint is already uniformly distributed, so its
/// low 64 bits are the hash (the exchange uses the high 64).
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type FingerprintSet = HashSet<u128, std::hash::BuildHasherDefault<FingerprintHasher>>;

/// Counters a worker keeps about its dedup operator.
#[derive(Clone, Debug, Default)]
pub struct DedupStats {
    pub duplicates: u64,
    pub tracked: u64,
}

/// Drops duplicate events: a second event with the same stream and `event_id` is ignored until
/// the watermark passes `horizon` beyond the largest event time seen when the first copy arrived.
/// For in-order input that is "within `horizon` of event time"; for replays and shuffled input,
/// where the watermark barely moves, redeliveries keep being caught. State is bounded: a key is
/// forgotten once the watermark is `horizon` past the time it was recorded at.
///
/// Events are exchanged by a hash of (stream, event_id), so copies meet on one worker.
pub fn dedup<'s>(
    events: Col<'s, Event>,
    horizon: Time,
    stats: Rc<RefCell<DedupStats>>,
) -> Col<'s, Event> {
    events
        .inner
        .unary_frontier(
            Exchange::new(|(e, _, _): &(Event, Time, Diff)| (event_fingerprint(e) >> 64) as u64),
            "Dedup",
            move |_, _| {
                let mut seen = FingerprintSet::default();
                // Keys by the logical time they were recorded at (the first copy's time).
                let mut by_time: BTreeMap<Time, Vec<u128>> = BTreeMap::new();
                // The largest logical time seen so far: keys are recorded at it, so a replay or a
                // shuffled file (where the watermark barely moves) keeps catching redeliveries.
                let mut high: Time = 0;
                move |(input, frontier), output| {
                    let now = frontier
                        .frontier()
                        .iter()
                        .copied()
                        .min()
                        .unwrap_or(Time::MAX);
                    let mut st = stats.borrow_mut();
                    input.for_each(|cap, data: &mut Vec<(Event, Time, Diff)>| {
                        let mut session = output.session(&cap);
                        for (e, t, r) in data.drain(..) {
                            let key = event_fingerprint(&e);
                            if !seen.insert(key) {
                                st.duplicates += 1;
                                continue;
                            }
                            high = high.max(t);
                            by_time.entry(high).or_default().push(key);
                            session.give((e, t, r));
                        }
                    });
                    // Forget keys recorded at or before `now − horizon`.
                    if now >= horizon {
                        let keep = by_time.split_off(&(now - horizon + 1));
                        for (_, keys) in std::mem::replace(&mut by_time, keep) {
                            for k in keys {
                                seen.remove(&k);
                            }
                        }
                    }
                    st.tracked = seen.len() as u64;
                }
            },
        )
        .as_collection()
}

/// Changes released by the output stage, waiting for the driver to hand them to the sinks.
#[derive(Debug, Default)]
pub struct OutputBuffer {
    /// Consolidated changes, in version order.
    pub changes: Vec<Change>,
    /// Every change with a version below this has been released.
    pub frontier: Time,
}

/// The output stage: gathers every output record on worker `target` (the sending worker's
/// choice: worker 0, or the first worker of its own process in a cluster), and whenever the frontier passes a
/// time, releases that time's updates — dropping those at or after the row's freeze time,
/// projecting to the row, consolidating, and ordering by version — into `buffer`. Nothing at or
/// beyond `limit` is ever released (file mode stops event time at the last input timestamp, so
/// timers due later never fire).
pub fn output_stage<'s>(
    records: Col<'s, OutRec>,
    buffer: Rc<RefCell<OutputBuffer>>,
    limit: Rc<RefCell<Time>>,
    target: u64,
) {
    // Updates not yet released, by time: releasing splits the map, never scans what stays.
    let mut pending: BTreeMap<Time, Vec<(OutRec, Diff)>> = BTreeMap::new();
    let mut released: Time = 0;
    records.inner.sink(
        Exchange::new(move |_: &(OutRec, Time, Diff)| target),
        "OutputStage",
        move |(input, frontier)| {
            input.for_each(|_cap, data: &mut Vec<(OutRec, Time, Diff)>| {
                for (rec, t, r) in data.drain(..) {
                    pending.entry(t).or_default().push((rec, r));
                }
            });
            let upto = frontier
                .frontier()
                .iter()
                .copied()
                .min()
                .unwrap_or(Time::MAX)
                .min(*limit.borrow());
            if upto <= released {
                return;
            }
            let later = pending.split_off(&upto);
            let due = std::mem::replace(&mut pending, later);
            let mut buf = buffer.borrow_mut();
            // Times come in order; within a time, equal rows are summed (sorted only when the
            // time has more than one update).
            for (t, mut updates) in due {
                updates.retain(|((_, freeze), _)| t < *freeze);
                if updates.len() > 1 {
                    updates.sort_unstable_by(|a, b| a.0 .0.cmp(&b.0 .0));
                }
                let version = t.min(i64::MAX as Time) as i64;
                let mut current: Option<(OutputRow, Diff)> = None;
                for ((row, _), r) in updates {
                    match &mut current {
                        Some((c, cr)) if *c == row => *cr += r,
                        _ => {
                            if let Some((c, cr)) = current.take() {
                                push_change(&mut buf.changes, c, version, cr);
                            }
                            current = Some((row, r));
                        }
                    }
                }
                if let Some((c, cr)) = current {
                    push_change(&mut buf.changes, c, version, cr);
                }
            }
            buf.frontier = upto;
            released = upto;
        },
    );
}

/// Appends `|r|` changes of `row` (none when `r` is 0).
fn push_change(out: &mut Vec<Change>, row: OutputRow, version: i64, r: Diff) {
    if r == 0 {
        return;
    }
    let sign = if r > 0 { 1 } else { -1 };
    for _ in 1..r.unsigned_abs() {
        out.push(Change {
            row: row.clone(),
            version,
            sign,
        });
    }
    out.push(Change { row, version, sign });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(stream: adflow_model::StreamKind, id: &str) -> Event {
        let line = match stream {
            adflow_model::StreamKind::AdEvents => format!(
                r#"{{"type":"impression","event_id":"{id}","ts":1000,"campaign_id":"c","channel":"douyin","device_id":"d"}}"#
            ),
            _ => format!(
                r#"{{"type":"link","event_id":"{id}","ts":1000,"device_id":"d","user_id":"u"}}"#
            ),
        };
        adflow_model::event::parse_event(stream, line.as_bytes(), &Default::default()).unwrap()
    }

    #[test]
    fn fingerprints_tell_streams_and_ids_apart_and_agree_across_lengths() {
        use adflow_model::StreamKind::{AdEvents, Identity};
        let a = event_fingerprint(&ev(AdEvents, "e1"));
        assert_eq!(a, event_fingerprint(&ev(AdEvents, "e1")));
        assert_ne!(a, event_fingerprint(&ev(AdEvents, "e2")));
        assert_ne!(a, event_fingerprint(&ev(Identity, "e1")));
        // Ids short enough for the stack buffer and longer ones hash the same bytes the same way.
        for len in [126, 127, 128, 300] {
            let id = "x".repeat(len);
            let e = ev(AdEvents, &id);
            let mut bytes = vec![AdEvents.index() as u8];
            bytes.extend_from_slice(id.as_bytes());
            assert_eq!(
                event_fingerprint(&e),
                xxhash_rust::xxh3::xxh3_128(&bytes),
                "len {len}"
            );
        }
    }
    use differential_dataflow::input::Input;
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::Inspect;

    /// Runs `consolidate_batches` over one batch of updates and returns what it emitted, sorted.
    fn consolidated(updates: Vec<(&'static str, Time, Diff)>) -> Vec<(String, Time, Diff)> {
        let seen: Arc<Mutex<Vec<(String, Time, Diff)>>> = Arc::default();
        let s = seen.clone();
        timely::execute_directly(move |worker| {
            let mut input = worker.dataflow::<Time, _, _>(|scope| {
                let (input, col) = scope.new_collection::<&'static str, Diff>();
                consolidate_batches(col, "Test")
                    .inner
                    .inspect(move |(d, t, r)| {
                        s.lock().unwrap().push((d.to_string(), *t, *r));
                    });
                input
            });
            for (d, t, r) in &updates {
                input.update_at(*d, *t, *r);
            }
        });
        let mut v = seen.lock().unwrap().clone();
        v.sort();
        v
    }

    #[test]
    fn consolidate_batches_sums_per_record_and_time() {
        let out = consolidated(vec![
            ("a", 5, 1),
            ("b", 5, 1),
            ("a", 5, 2),
            ("a", 7, 1),
            ("c", 5, 1),
            ("c", 5, -1),
        ]);
        assert_eq!(
            out,
            vec![
                ("a".to_string(), 5, 3),
                ("a".to_string(), 7, 1),
                ("b".to_string(), 5, 1)
            ]
        );
    }
}
