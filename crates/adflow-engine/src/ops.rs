//! Engine operators: deduplication, timers (future-dated updates), expiry, and the output stage.

use crate::{to_time, Col, Diff, OutRec, Time};
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

/// How far ahead of the input frontier [`delay_until`] lets a future-dated update through;
/// later ones wait in the operator until the frontier comes this close.
pub const TIMER_LEAD: Time = 1_000;

/// Moves every update of `col` to `max(time, when(data))`: a timer. The update becomes visible
/// once the watermark passes `when(data)`; a retraction of the same data before then cancels it
/// (both land on the same future time and consolidate away).
///
/// Updates more than [`TIMER_LEAD`] beyond the input frontier are **held here**, by time,
/// under one capability at the earliest held time, and released (consolidated per time) once
/// the frontier is within the lead of their time. Logical times, and so every result and
/// version, are the same as if they were sent at once; what changes is where they wait. A
/// differential arrangement keeps updates beyond its frontier in its batcher, and every batch it
/// seals re-merges and copies all of them: a day of 7-day click expiries or 3-day timers made
/// each tick's work grow with everything pending. Here a held update costs one map insert, and
/// each tick touches only what it releases.
pub fn delay_until<'s, D, R, F>(col: Col<'s, D, R>, name: &str, mut when: F) -> Col<'s, D, R>
where
    D: Data,
    R: Semigroup + 'static,
    F: FnMut(&D) -> Time + 'static,
{
    use timely::dataflow::operators::Capability;
    col.inner
        .unary_frontier(Pipeline, name, move |_, _| {
            // Per time: the held updates, and their count after the last consolidation.
            let mut held: BTreeMap<Time, (Vec<(D, R)>, usize)> = BTreeMap::new();
            let mut cap: Option<Capability<Time>> = None;
            let mut pass: Vec<(D, Time, R)> = Vec::new();
            move |(input, frontier), output| {
                let now = frontier
                    .frontier()
                    .iter()
                    .copied()
                    .min()
                    .unwrap_or(Time::MAX);
                let lead_end = now.saturating_add(TIMER_LEAD);
                input.for_each(|c, data: &mut Vec<(D, Time, R)>| {
                    for (d, t, r) in data.drain(..) {
                        let t = t.max(when(&d));
                        if t < lead_end {
                            pass.push((d, t, r));
                            continue;
                        }
                        if cap.as_ref().is_none_or(|h| t < *h.time()) {
                            cap = Some(c.delayed(&t, 0));
                        }
                        let (v, clean) = held.entry(t).or_default();
                        v.push((d, r));
                        // Many updates of one key at one time (a window's or an hour's
                        // contributions) are summed as they come: held state stays one
                        // update per key, and a release does not sort a burst.
                        if v.len() >= (2 * *clean).max(1024) {
                            differential_dataflow::consolidation::consolidate(v);
                            *clean = v.len();
                        }
                    }
                    if !pass.is_empty() {
                        output.session(&c).give_container(&mut pass);
                    }
                });
                if held.first_key_value().is_some_and(|(t, _)| *t < lead_end) {
                    if let Some(c) = cap.as_ref() {
                        let mut session = output.session(c);
                        while let Some(e) = held.first_entry() {
                            if *e.key() >= lead_end {
                                break;
                            }
                            let (t, (mut v, _)) = e.remove_entry();
                            differential_dataflow::consolidation::consolidate(&mut v);
                            for (d, r) in v {
                                session.give((d, t, r));
                            }
                        }
                    }
                    match held.first_key_value() {
                        Some((t, _)) => {
                            if let Some(c) = cap.as_mut() {
                                c.downgrade(t);
                            }
                        }
                        None => cap = None,
                    }
                }
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
    let retractions = delay_until(
        consolidate_batches(col.clone().negate(), name),
        name,
        expiry,
    );
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

/// The dedup key of an event: a 128-bit XXH3 fingerprint of `event_id` seeded with the stream,
/// the same on every worker and process (fixed seeds). Two distinct keys share a fingerprint with
/// probability about n²/2¹²⁹ — below 10⁻¹⁸ for the 3.6·10⁹ keys an hour holds at 1M events/s —
/// and a fingerprint is 16 bytes in place, where the key itself is a shared string. It lives only
/// in memory (a restart rebuilds it from the topics), so its definition may change between
/// versions.
fn event_fingerprint(e: &Event) -> u128 {
    xxhash_rust::xxh3::xxh3_128_with_seed(
        e.event_id.as_str().as_bytes(),
        e.body.stream().index() as u64,
    )
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

type FingerprintShard = HashSet<u128, std::hash::BuildHasherDefault<FingerprintHasher>>;

/// How many hash sets the dedup operator's fingerprints are spread over (a power of two).
const FINGERPRINT_SHARDS: usize = 1024;

/// The dedup operator's fingerprints, spread over [`FINGERPRINT_SHARDS`] hash sets by bits
/// 32–41 of the fingerprint, which the sets' own hashing does not use (a set's bucket index is
/// taken from the low bits, its tag from the top seven).
///
/// A hash set grows by rehashing everything it holds in one call: one set of a million
/// fingerprints stalled its worker for up to a second on a loaded 2-core machine (live mode at
/// 100k events/s, every doubling a freshness spike), and at the key counts an hour's horizon
/// holds (hundreds of millions) a doubling would take seconds. With the keys spread, a growth
/// step rehashes one shard (1/1024 of the keys); the shards fill at about the same rate, so the
/// steps of one doubling are spread over the inserts around it instead of landing in one call.
/// The same keys, the same answers: only where a key lives changes.
struct FingerprintSet {
    shards: Vec<FingerprintShard>,
    len: usize,
}

impl Default for FingerprintSet {
    fn default() -> Self {
        FingerprintSet {
            shards: (0..FINGERPRINT_SHARDS)
                .map(|_| FingerprintShard::default())
                .collect(),
            len: 0,
        }
    }
}

impl FingerprintSet {
    fn shard(key: u128) -> usize {
        ((key as u64) >> 32) as usize & (FINGERPRINT_SHARDS - 1)
    }

    /// Adds `key`; `false` when it was already there.
    fn insert(&mut self, key: u128) -> bool {
        let added = self.shards[Self::shard(key)].insert(key);
        self.len += usize::from(added);
        added
    }

    fn remove(&mut self, key: &u128) -> bool {
        let removed = self.shards[Self::shard(*key)].remove(key);
        self.len -= usize::from(removed);
        removed
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Counters a worker keeps about its dedup operator.
#[derive(Clone, Debug, Default)]
pub struct DedupStats {
    pub duplicates: u64,
    /// `duplicates` per stream, in [`adflow_model::StreamKind::index`] order.
    pub duplicates_by_stream: [u64; 4],
    pub tracked: u64,
}

/// Drops duplicate events: a second event with the same stream and `event_id` is ignored while
/// its key is remembered.
///
/// # How long a key is remembered
/// A key is recorded at the largest logical time this operator has seen so far (the first
/// copy's, or later), and forgotten once the operator's **progress** is `horizon` past that.
/// Progress is the smaller of
/// * the input frontier (the watermark: everything earlier has arrived), and
/// * the operator's event clock: the largest `ts` of the events it has seen.
///
/// Recording at the largest time seen keeps catching redeliveries where the watermark barely
/// moves once it has jumped (a shuffled file) or where workers progress unevenly (the frontier
/// is the slowest one's). The event clock keeps the watermark from forgetting what it has not
/// earned by events: once every live source is caught up, the watermark follows the wall clock
/// (spec §2), which for a replay of old topics is a jump of months; a watermark-only expiry
/// would forget every key at that jump and count a redelivery arriving just after it. So a copy
/// that arrives less than `horizon` of event time after its original (counted in the events
/// that arrived since, as spec §1 reads "seen within the dedup horizon") is always caught.
/// State stays bounded: in a live run both are about the present, so a key lives about
/// `horizon`; keys recorded while old events arrive after the watermark has caught up with the
/// wall clock wait until current events move the clock.
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
                let mut keys = DedupKeys::new(horizon);
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
                                st.duplicates_by_stream[e.body.stream().index()] += 1;
                                continue;
                            }
                            keys.record(key, t, to_time(e.ts));
                            session.give((e, t, r));
                        }
                    });
                    for k in keys.expire(now) {
                        seen.remove(&k);
                    }
                    st.tracked = seen.len() as u64;
                }
            },
        )
        .as_collection()
}

/// A dedup operator's keys by the time they were recorded at, and its event clock (see
/// [`dedup`]).
#[derive(Debug)]
pub(crate) struct DedupKeys {
    horizon: Time,
    /// The largest logical time seen: keys are recorded at it.
    high: Time,
    /// The largest event `ts` seen.
    clock: Time,
    by_time: BTreeMap<Time, Vec<u128>>,
}

impl DedupKeys {
    pub(crate) fn new(horizon: Time) -> DedupKeys {
        DedupKeys {
            horizon,
            high: 0,
            clock: 0,
            by_time: BTreeMap::new(),
        }
    }

    /// Records `key` of an event at logical time `t` with event time `ts`.
    pub(crate) fn record(&mut self, key: u128, t: Time, ts: Time) {
        self.high = self.high.max(t);
        self.clock = self.clock.max(ts);
        self.by_time.entry(self.high).or_default().push(key);
    }

    /// Removes and returns the keys recorded at or before `progress − horizon`, where progress
    /// is the smaller of `frontier` and the event clock.
    pub(crate) fn expire(&mut self, frontier: Time) -> impl Iterator<Item = u128> {
        let progress = frontier.min(self.clock);
        let old = if progress < self.horizon {
            BTreeMap::new()
        } else {
            let keep = self.by_time.split_off(&(progress - self.horizon + 1));
            std::mem::replace(&mut self.by_time, keep)
        };
        old.into_values().flatten()
    }
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
    let mut groups = FreezeGroups::default();
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
                groups.retain(t, &mut updates);
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

/// The output stage's freeze rule ([`crate::Freeze`]): which updates of one time are written.
/// Holds, per freeze group seen, the earliest freeze time of its rows and when it is forgotten.
#[derive(Debug, Default)]
pub(crate) struct FreezeGroups {
    groups: std::collections::HashMap<u128, GroupState, FastHash>,
    /// Group ids by the `until` they were last extended to (stale entries are skipped).
    forget: BTreeMap<Time, Vec<u128>>,
}

#[derive(Debug, Clone, Copy)]
struct GroupState {
    /// The earliest `at` of the group's rows: from then on the group is frozen.
    frozen_at: Time,
    /// The group is forgotten after this.
    until: Time,
}

impl FreezeGroups {
    /// Keeps the updates of time `t` (times come in increasing order) that are not expiry
    /// artefacts: an ungrouped row's updates before its `at`; a group's updates only while
    /// none of its rows has reached its `at` — at the first time one has, all of the group's
    /// updates at that time and after are dropped, until the group's `until` has passed.
    pub(crate) fn retain(&mut self, t: Time, updates: &mut Vec<(OutRec, Diff)>) {
        while let Some(entry) = self.forget.first_entry() {
            if *entry.key() >= t {
                break;
            }
            let end = *entry.key();
            for g in entry.remove() {
                if self.groups.get(&g).is_some_and(|s| s.until <= end) {
                    self.groups.remove(&g);
                }
            }
        }
        if updates.iter().all(|((_, f), _)| f.group == 0) {
            updates.retain(|((_, f), _)| t < f.at);
            return;
        }
        let mut frozen: Vec<u128> = Vec::new();
        for ((_, f), _) in updates.iter() {
            if f.group == 0 {
                continue;
            }
            let s = self.groups.entry(f.group).or_insert(GroupState {
                frozen_at: NEVER_TIME,
                until: 0,
            });
            if t >= f.at || t >= s.frozen_at {
                frozen.push(f.group);
            }
            s.frozen_at = s.frozen_at.min(f.at);
            if f.until > s.until {
                s.until = f.until;
                self.forget.entry(f.until).or_default().push(f.group);
            }
        }
        frozen.sort_unstable();
        frozen.dedup();
        updates.retain(|((_, f), _)| {
            if f.group == 0 {
                t < f.at
            } else {
                frozen.binary_search(&f.group).is_err()
            }
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.groups.len()
    }
}

const NEVER_TIME: Time = crate::NEVER;

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
    fn fingerprints_tell_streams_and_ids_apart() {
        use adflow_model::StreamKind::{AdEvents, Identity};
        let a = event_fingerprint(&ev(AdEvents, "e1"));
        assert_eq!(a, event_fingerprint(&ev(AdEvents, "e1")));
        assert_ne!(a, event_fingerprint(&ev(AdEvents, "e2")));
        assert_ne!(a, event_fingerprint(&ev(Identity, "e1")));
        // Long ids (up to the identifier limit) hash all their bytes.
        let long = "x".repeat(256);
        let mut other = long.clone();
        other.replace_range(255.., "y");
        assert_ne!(
            event_fingerprint(&ev(AdEvents, &long)),
            event_fingerprint(&ev(AdEvents, &other))
        );
    }
    fn row(name: &str) -> OutputRow {
        OutputRow::DeadLetter(adflow_model::output::DeadLetterRow {
            stream: name.into(),
            position: String::new(),
            raw: String::new(),
            reason: String::new(),
            seen_ts: 0,
        })
    }

    fn kept(
        g: &mut FreezeGroups,
        t: Time,
        updates: Vec<(&str, crate::Freeze, Diff)>,
    ) -> Vec<String> {
        let mut u: Vec<(OutRec, Diff)> = updates
            .into_iter()
            .map(|(n, f, r)| ((row(n), f), r))
            .collect();
        g.retain(t, &mut u);
        u.into_iter()
            .map(|((r, _), d)| match r {
                OutputRow::DeadLetter(x) => format!("{}{:+}", x.stream, d),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn ungrouped_rows_freeze_on_their_own() {
        let mut g = FreezeGroups::default();
        let f = crate::Freeze::at(100);
        assert_eq!(kept(&mut g, 99, vec![("a", f, 1)]), ["a+1"]);
        assert!(kept(&mut g, 100, vec![("a", f, -1)]).is_empty());
        assert_eq!(
            kept(&mut g, 100, vec![("n", crate::Freeze::NEVER, 1)]),
            ["n+1"]
        );
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn a_group_freezes_at_its_first_expiry_and_no_row_appears_after_it() {
        let mut g = FreezeGroups::default();
        let (id, until) = (7u128, 500);
        let early = crate::Freeze::grouped(100, id, until);
        // Rows computed without the input that left at 100 carry a later freeze time.
        let later = crate::Freeze::grouped(300, id, until);
        assert_eq!(
            kept(&mut g, 10, vec![("a", early, 1), ("b", early, 1)]),
            ["a+1", "b+1"]
        );
        // At 100 the order leaves: `a` is recomputed without it (a new row `a2`), `b` keeps
        // its content but its freeze moves. Nothing of the group is written.
        let at_expiry = vec![
            ("a", early, -1),
            ("a2", later, 1),
            ("b", early, -1),
            ("b", later, 1),
        ];
        assert!(kept(&mut g, 100, at_expiry).is_empty());
        // Later changes of the group (a new track, the next expiry) are artefacts too.
        assert!(kept(&mut g, 200, vec![("c", later, 1)]).is_empty());
        assert!(kept(&mut g, 300, vec![("a2", later, -1)]).is_empty());
        // Other groups and ungrouped rows are unaffected.
        let other = crate::Freeze::grouped(400, 8, 900);
        assert_eq!(kept(&mut g, 300, vec![("x", other, 1)]), ["x+1"]);
        // After `until`, the group is forgotten: a waybill seen again is a new group.
        assert_eq!(g.len(), 2);
        assert_eq!(
            kept(
                &mut g,
                501,
                vec![("d", crate::Freeze::grouped(2000, id, 3000), 1)]
            ),
            ["d+1"]
        );
        assert_eq!(g.len(), 2);
        assert!(kept(&mut g, 901, vec![]).is_empty());
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_group_extended_by_a_new_input_is_remembered_until_its_new_end() {
        let mut g = FreezeGroups::default();
        let id = 9u128;
        assert_eq!(
            kept(
                &mut g,
                10,
                vec![("a", crate::Freeze::grouped(100, id, 200), 1)]
            ),
            ["a+1"]
        );
        // A track arrives after the group froze: it extends the group's life to 800.
        assert!(kept(
            &mut g,
            150,
            vec![("b", crate::Freeze::grouped(100, id, 800), 1)]
        )
        .is_empty());
        // Past the old end the group is still frozen.
        assert!(kept(
            &mut g,
            300,
            vec![("b", crate::Freeze::grouped(700, id, 800), 1)]
        )
        .is_empty());
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn the_fingerprint_set_spreads_keys_and_answers_like_one_set() {
        let mut set = FingerprintSet::default();
        let mut one = HashSet::new();
        let keys: Vec<u128> = (0..20_000u64)
            .map(|i| xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()))
            .collect();
        for (i, &k) in keys.iter().chain(&keys[..5_000]).enumerate() {
            assert_eq!(set.insert(k), one.insert(k), "insert {i}");
        }
        assert_eq!(set.len(), 20_000);
        for k in &keys[..7_000] {
            assert!(set.remove(k));
            assert!(!set.remove(k));
        }
        assert_eq!(set.len(), 13_000);
        assert!(!set.insert(keys[7_000]));
        assert!(set.insert(keys[0]));
        // Every shard holds a share: no shard is more than twice the mean (13.7 keys).
        let most = set.shards.iter().map(|s| s.len()).max().unwrap_or(0);
        assert!(most < 2 * 13_001 / FINGERPRINT_SHARDS + 10, "{most}");
        assert!(set.shards.iter().all(|s| !s.is_empty()));
    }

    #[test]
    fn dedup_keys_expire_by_the_slower_of_frontier_and_event_clock() {
        let h = 3_600_000;
        let t0 = 1_700_000_000_000;
        let mut k = DedupKeys::new(h);
        k.record(1, t0, t0);
        // The watermark jumps years ahead (a caught-up replay follows the wall clock): events
        // have not moved the clock, so key 1 stays; late events are placed at the watermark.
        let wall = t0 + 60_000_000_000;
        assert_eq!(k.expire(wall).count(), 0);
        k.record(2, wall, t0 + 1_000);
        assert_eq!(k.expire(wall).count(), 0);
        // An hour of events later, key 1 goes; key 2 was recorded at the wall clock.
        k.record(3, wall, t0 + h);
        assert_eq!(k.expire(wall).collect::<Vec<_>>(), vec![1]);
        // Keys are recorded at the largest time seen (key 2 at t0 + 10 h, not t0) and stay
        // until both the frontier and the event clock are an hour past it.
        let mut k = DedupKeys::new(h);
        k.record(1, t0 + 10 * h, t0 + 10 * h);
        k.record(2, t0, t0);
        assert_eq!(k.expire(t0 + 10 * h).count(), 0);
        // The frontier is, the clock is not yet.
        assert_eq!(k.expire(t0 + 11 * h).count(), 0);
        k.record(3, t0 + 11 * h, t0 + 11 * h);
        let mut gone: Vec<u128> = k.expire(t0 + 11 * h).collect();
        gone.sort();
        assert_eq!(gone, vec![1, 2]);
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

    /// `delay_until` holds updates beyond the lead and releases them, summed, at their own
    /// times once the frontier is near; a timer and its cancellation never come out.
    #[test]
    fn timers_beyond_the_lead_wait_and_come_out_at_their_times() {
        type Rows = Vec<(String, Time, Diff)>;
        let seen: Arc<Mutex<Rows>> = Arc::default();
        let s = seen.clone();
        let stages: Arc<Mutex<Vec<Rows>>> = Arc::default();
        let st = stages.clone();
        timely::execute_directly(move |worker| {
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, col) = scope.new_collection::<(&'static str, Time), Diff>();
                let out = delay_until(col, "Test", |(_, due): &(&'static str, Time)| *due);
                let s2 = s.clone();
                let (probe, _) = out
                    .inspect(move |((k, _), t, r)| s2.lock().unwrap().push((k.to_string(), *t, *r)))
                    .probe();
                (input, probe)
            });
            input.update_at(("a", 500), 0, 1);
            input.update_at(("b", 5_000), 0, 1);
            input.update_at(("b", 5_000), 0, 1);
            input.update_at(("c", 9_000), 0, 1);
            input.advance_to(100);
            input.update_at(("c", 9_000), 100, -1);
            for upto in [2_000, 4_500, 6_000] {
                input.advance_to(upto);
                input.flush();
                worker.step_while(|| probe.less_than(&upto));
                let mut now = s.lock().unwrap().clone();
                now.sort();
                st.lock().unwrap().push(now);
            }
        });
        let a = ("a".to_string(), 500, 1);
        let b = ("b".to_string(), 5_000, 2);
        assert_eq!(
            *stages.lock().unwrap(),
            vec![
                vec![a.clone()],
                vec![a.clone(), b.clone()],
                vec![a.clone(), b.clone()]
            ]
        );
        let mut all = seen.lock().unwrap().clone();
        all.sort();
        assert_eq!(
            all,
            vec![a, b],
            "the cancelled timer at 9000 never comes out"
        );
    }
}
