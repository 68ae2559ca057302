//! The key layout and the pure part of the sink: which changes matter, how they consolidate,
//! and which hash fields a consolidated batch sets and deletes. No I/O here.
//!
//! Keys (all under the configured prefix `P`, default `adflow:`):
//! - `P suppressed:<person_id>`: hash `reason` → `since_ts` (decimal epoch ms), one field per
//!   current `suppressed_persons` row of the person.
//! - `P orders:<person_id>`: hash `order_id` → `delivery`, one field per *open* order of the
//!   person in the current `order_status` (see [`is_open`]).
//! - `P progress`: hash `format`, `seq`, `frontier`, `checkpoint`, `mode`, `updated_ms`
//!   (see `crate::sink`).
//!
//! Redis deletes a hash when its last field is deleted, so a person with no row left has no key.

use adflow_model::output::OrderStatusRow;
use adflow_model::{Change, OutputRow};
use std::collections::BTreeMap;

/// The version of this key layout, stored in the progress hash (`format`).
pub const FORMAT: &str = "1";

/// `P suppressed:<person_id>`.
pub fn suppressed_key(prefix: &str, person_id: &str) -> String {
    format!("{prefix}suppressed:{person_id}")
}

/// `P orders:<person_id>`.
pub fn orders_key(prefix: &str, person_id: &str) -> String {
    format!("{prefix}orders:{person_id}")
}

/// `P progress`.
pub fn progress_key(prefix: &str) -> String {
    format!("{prefix}progress")
}

/// Whether an `order_status` row is an *open* order, listed in `P orders:<person_id>`: it is
/// not cancelled, not refunded, and its parcel has not reached a final state (`delivery` is
/// neither `signed` nor `refused`). So `none` (not shipped yet), `shipped`, `collected`,
/// `in_transit`, `out_for_delivery` and `exception` are open; an order with an after-sale
/// case (`after_sale`) stays open while its parcel travels.
pub fn is_open(row: &OrderStatusRow) -> bool {
    !row.cancelled && !row.refunded && row.delivery != "signed" && row.delivery != "refused"
}

/// What one change contributes to the Redis state: the changelog projected onto the two key
/// families. Projecting before consolidating is exact: the keys are a function of the
/// projected rows, so two rows that project alike (an order whose `delivery_ts` moved while
/// `delivery` stayed) cancel just like identical rows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// A `suppressed_persons` row.
    Suppressed {
        person_id: String,
        reason: String,
        since_ts: i64,
    },
    /// An `order_status` row of an open order.
    OpenOrder {
        person_id: String,
        order_id: String,
        delivery: String,
    },
}

impl Entry {
    /// The entry of a change's row; `None` for rows of other tables and closed orders.
    pub fn of(row: &OutputRow) -> Option<Entry> {
        match row {
            OutputRow::SuppressedPerson(r) => Some(Entry::Suppressed {
                person_id: r.person_id.clone(),
                reason: r.reason.clone(),
                since_ts: r.since_ts,
            }),
            OutputRow::OrderStatus(r) if is_open(r) => Some(Entry::OpenOrder {
                person_id: r.person_id.clone(),
                order_id: r.order_id.clone(),
                delivery: r.delivery.clone(),
            }),
            _ => None,
        }
    }

    /// The hash key, field and value this entry stands for.
    pub fn location(&self, prefix: &str) -> (String, String, String) {
        match self {
            Entry::Suppressed {
                person_id,
                reason,
                since_ts,
            } => (
                suppressed_key(prefix, person_id),
                reason.clone(),
                since_ts.to_string(),
            ),
            Entry::OpenOrder {
                person_id,
                order_id,
                delivery,
            } => (
                orders_key(prefix, person_id),
                order_id.clone(),
                delivery.clone(),
            ),
        }
    }
}

/// Changes consolidated in memory between two flushes: entry → summed sign. Zero sums are
/// removed as they occur, so the batch holds at most one item per entry that changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    net: BTreeMap<Entry, i64>,
}

impl Batch {
    /// Adds one change (ignored unless it has an [`Entry`]). Returns whether it counted.
    pub fn add(&mut self, change: &Change) -> bool {
        match Entry::of(&change.row) {
            Some(e) => {
                self.add_entry(e, change.sign);
                true
            }
            None => false,
        }
    }

    /// Adds `sign` to `entry`'s sum.
    pub fn add_entry(&mut self, entry: Entry, sign: i64) {
        if sign == 0 {
            return;
        }
        match self.net.entry(entry) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(sign);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                *o.get_mut() += sign;
                if *o.get() == 0 {
                    o.remove();
                }
            }
        }
    }

    /// Adds every entry of `other`.
    pub fn merge(&mut self, other: Batch) {
        for (e, n) in other.net {
            self.add_entry(e, n);
        }
    }

    /// Entries with a non-zero sum.
    pub fn len(&self) -> usize {
        self.net.len()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.net.is_empty()
    }

    /// The entries and their sums, in entry order.
    pub fn iter(&self) -> impl Iterator<Item = (&Entry, i64)> {
        self.net.iter().map(|(e, n)| (e, *n))
    }
}

/// What a batch does to one hash key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyOps {
    /// Fields to delete (`HDEL`).
    pub del: Vec<String>,
    /// Fields to set (`HSET`), with their values.
    pub set: Vec<(String, String)>,
}

/// The writes of a consolidated batch, per key (key order, field order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub keys: BTreeMap<String, KeyOps>,
    /// Entries whose sum was neither −1, 0 nor +1: the table held a row twice or retracted a
    /// row it did not hold across the batch (never in a correct changelog); applied by sign.
    pub odd_sums: usize,
    /// Fields that two inserted entries of the batch both set (two current rows for one
    /// (person, reason) or one order: never in a correct changelog); the value larger as text wins.
    pub conflicts: usize,
}

impl Plan {
    /// Total fields deleted and set.
    pub fn ops(&self) -> (usize, usize) {
        self.keys
            .values()
            .fold((0, 0), |(d, s), k| (d + k.del.len(), s + k.set.len()))
    }
}

/// The hash writes that take the keys from the tables at one frontier to the tables at the
/// next, given the consolidated changes between them: a retracted entry deletes its field, an
/// inserted one sets it; when a field is both retracted and inserted (a person's `since_ts`
/// moved, an order's delivery state changed) only the set remains. Within a correct changelog
/// each field has at most one current row at either frontier, so the result is exact.
pub fn plan(prefix: &str, batch: &Batch) -> Plan {
    let mut del: BTreeMap<(String, String), ()> = BTreeMap::new();
    let mut set: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut odd_sums = 0;
    let mut conflicts = 0;
    for (entry, n) in batch.iter() {
        if n.abs() > 1 {
            odd_sums += 1;
        }
        let (key, field, value) = entry.location(prefix);
        if n < 0 {
            del.insert((key, field), ());
        } else {
            match set.entry((key, field)) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(value);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    conflicts += 1;
                    if value > *o.get() {
                        o.insert(value);
                    }
                }
            }
        }
    }
    let mut keys: BTreeMap<String, KeyOps> = BTreeMap::new();
    for ((key, field), ()) in del {
        if !set.contains_key(&(key.clone(), field.clone())) {
            keys.entry(key).or_default().del.push(field);
        }
    }
    for ((key, field), value) in set {
        keys.entry(key).or_default().set.push((field, value));
    }
    Plan {
        keys,
        odd_sums,
        conflicts,
    }
}

/// Applies `plan` to an in-memory model of the hashes (key → field → value), as Redis does:
/// a hash whose last field goes is removed. For tests and for documentation of the semantics.
pub fn apply_to_model(model: &mut BTreeMap<String, BTreeMap<String, String>>, plan: &Plan) {
    for (key, ops) in &plan.keys {
        let hash = model.entry(key.clone()).or_default();
        for f in &ops.del {
            hash.remove(f);
        }
        for (f, v) in &ops.set {
            hash.insert(f.clone(), v.clone());
        }
        if hash.is_empty() {
            model.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adflow_model::output::{SuppressedPersonRow, TriggerRow};

    fn sp(person: &str, reason: &str, since: i64, version: i64, sign: i64) -> Change {
        Change {
            row: OutputRow::SuppressedPerson(SuppressedPersonRow {
                person_id: person.into(),
                reason: reason.into(),
                since_ts: since,
            }),
            version,
            sign,
        }
    }

    fn order(
        order: &str,
        person: &str,
        delivery: &str,
        delivery_ts: Option<i64>,
        flags: (bool, bool, bool),
    ) -> OrderStatusRow {
        OrderStatusRow {
            order_id: order.into(),
            person_id: person.into(),
            amount_fen: 100,
            order_ts: 1,
            phone_masked: None,
            campaign_id: None,
            channel: None,
            shipper_code: None,
            logistic_code: None,
            delivery: delivery.into(),
            delivery_ts,
            cancelled: flags.0,
            after_sale: flags.1,
            refunded: flags.2,
            effective: delivery == "signed" && !flags.0 && !flags.1 && !flags.2,
        }
    }

    fn os(row: OrderStatusRow, version: i64, sign: i64) -> Change {
        Change {
            row: OutputRow::OrderStatus(row),
            version,
            sign,
        }
    }

    /// The current rows of a changelog (signs summed per row), projected as the keys hold them.
    fn expected(prefix: &str, changes: &[Change]) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut sums: BTreeMap<OutputRow, i64> = BTreeMap::new();
        for c in changes {
            *sums.entry(c.row.clone()).or_default() += c.sign;
        }
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (row, n) in sums {
            if n <= 0 {
                continue;
            }
            if let Some(e) = Entry::of(&row) {
                let (k, f, v) = e.location(prefix);
                out.entry(k).or_default().insert(f, v);
            }
        }
        out
    }

    /// Applies `changes` in flushes cut at the given versions.
    fn run(
        prefix: &str,
        changes: &[Change],
        cuts: &[i64],
    ) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut model = BTreeMap::new();
        let mut lo = i64::MIN;
        for &hi in cuts.iter().chain(std::iter::once(&i64::MAX)) {
            let mut b = Batch::default();
            for c in changes.iter().filter(|c| c.version >= lo && c.version < hi) {
                b.add(c);
            }
            let p = plan(prefix, &b);
            assert_eq!((p.odd_sums, p.conflicts), (0, 0));
            apply_to_model(&mut model, &p);
            lo = hi;
        }
        model
    }

    #[test]
    fn keys_are_prefixed() {
        assert_eq!(suppressed_key("adflow:", "u1"), "adflow:suppressed:u1");
        assert_eq!(orders_key("t:", "u:2"), "t:orders:u:2");
        assert_eq!(progress_key("adflow:"), "adflow:progress");
    }

    #[test]
    fn open_rule() {
        assert!(is_open(&order(
            "o",
            "u",
            "none",
            None,
            (false, false, false)
        )));
        assert!(is_open(&order(
            "o",
            "u",
            "in_transit",
            Some(1),
            (false, true, false)
        )));
        assert!(is_open(&order(
            "o",
            "u",
            "exception",
            Some(1),
            (false, false, false)
        )));
        assert!(!is_open(&order(
            "o",
            "u",
            "signed",
            Some(1),
            (false, false, false)
        )));
        assert!(!is_open(&order(
            "o",
            "u",
            "refused",
            Some(1),
            (false, false, false)
        )));
        assert!(!is_open(&order(
            "o",
            "u",
            "shipped",
            None,
            (true, false, false)
        )));
        assert!(!is_open(&order(
            "o",
            "u",
            "shipped",
            None,
            (false, false, true)
        )));
    }

    #[test]
    fn insert_and_retract_in_one_batch_cancel() {
        let mut b = Batch::default();
        b.add(&sp("u1", "stalled_parcel", 5, 10, 1));
        b.add(&sp("u1", "stalled_parcel", 5, 20, -1));
        assert!(b.is_empty());
        assert!(plan("p:", &b).keys.is_empty());
    }

    #[test]
    fn other_tables_are_ignored() {
        let mut b = Batch::default();
        let c = Change {
            row: OutputRow::Trigger(TriggerRow {
                trigger_id: "o:k".into(),
                kind: "k".into(),
                order_id: "o".into(),
                person_id: "u".into(),
                campaign_id: None,
                due_ts: 1,
            }),
            version: 1,
            sign: 1,
        };
        assert!(!b.add(&c));
        assert!(b.is_empty());
    }

    #[test]
    fn a_moved_since_ts_is_one_set() {
        let mut b = Batch::default();
        b.add(&sp("u1", "stalled_parcel", 5, 10, -1));
        b.add(&sp("u1", "stalled_parcel", 7, 10, 1));
        let p = plan("p:", &b);
        assert_eq!(p.keys.len(), 1);
        let ops = &p.keys["p:suppressed:u1"];
        assert!(ops.del.is_empty());
        assert_eq!(
            ops.set,
            vec![("stalled_parcel".to_string(), "7".to_string())]
        );
    }

    #[test]
    fn retracting_the_last_row_removes_the_key() {
        let mut model = BTreeMap::new();
        let mut b = Batch::default();
        b.add(&sp("u1", "stalled_parcel", 5, 10, 1));
        b.add(&sp("u1", "delivery_exception", 6, 10, 1));
        apply_to_model(&mut model, &plan("p:", &b));
        assert_eq!(model["p:suppressed:u1"].len(), 2);
        let mut b = Batch::default();
        b.add(&sp("u1", "stalled_parcel", 5, 20, -1));
        apply_to_model(&mut model, &plan("p:", &b));
        assert_eq!(model["p:suppressed:u1"].len(), 1);
        let mut b = Batch::default();
        b.add(&sp("u1", "delivery_exception", 6, 30, -1));
        apply_to_model(&mut model, &plan("p:", &b));
        assert!(model.is_empty());
    }

    #[test]
    fn order_life_cycle() {
        let o0 = order("o1", "u1", "none", None, (false, false, false));
        let o1 = order("o1", "u1", "in_transit", Some(5), (false, false, false));
        let o2 = order("o1", "u1", "in_transit", Some(6), (false, false, false));
        // A late identity link moves the order to another person.
        let o3 = order("o1", "u0", "in_transit", Some(6), (false, false, false));
        let o4 = order("o1", "u0", "signed", Some(9), (false, false, false));
        let changes = vec![
            os(o0.clone(), 1, 1),
            os(o0, 5, -1),
            os(o1.clone(), 5, 1),
            os(o1, 6, -1),
            os(o2.clone(), 6, 1),
            os(o2, 7, -1),
            os(o3.clone(), 7, 1),
            os(o3, 9, -1),
            os(o4, 9, 1),
        ];
        for cuts in [
            vec![],
            vec![2],
            vec![6],
            vec![2, 6, 7, 8],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        ] {
            let mut upto = Vec::new();
            for (i, &hi) in cuts.iter().enumerate() {
                let below: Vec<Change> =
                    changes.iter().filter(|c| c.version < hi).cloned().collect();
                upto.push((i, hi, below));
            }
            assert!(run("p:", &changes, &cuts).is_empty(), "{cuts:?}");
            for (i, hi, below) in upto {
                assert_eq!(
                    run("p:", &below, &cuts[..i]),
                    expected("p:", &below),
                    "{cuts:?} up to {hi}"
                );
            }
        }
        let partial: Vec<Change> = changes.iter().filter(|c| c.version < 8).cloned().collect();
        let m = run("p:", &partial, &[3]);
        assert_eq!(
            m["p:orders:u0"],
            BTreeMap::from([("o1".to_string(), "in_transit".to_string())])
        );
        assert!(!m.contains_key("p:orders:u1"));
    }

    /// A pseudo-random changelog (fixed seed) of a keyed table that stays valid (one current
    /// row per (person, reason)): cut into random flushes, the model always equals the current
    /// rows.
    #[test]
    fn random_changelogs_match_their_current_rows() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..200 {
            let mut current: BTreeMap<(String, String), i64> = BTreeMap::new();
            let mut changes = Vec::new();
            for v in 0..60 {
                let person = format!("u{}", next(4));
                let reason = ["stalled_parcel", "delivery_exception"][next(2) as usize];
                let key = (person.clone(), reason.to_string());
                match (current.get(&key).copied(), next(3)) {
                    (Some(old), 0) => {
                        changes.push(sp(&person, reason, old, v, -1));
                        current.remove(&key);
                    }
                    (Some(old), _) => {
                        let new = next(5) as i64;
                        changes.push(sp(&person, reason, old, v, -1));
                        changes.push(sp(&person, reason, new, v, 1));
                        current.insert(key, new);
                    }
                    (None, _) => {
                        let new = next(5) as i64;
                        changes.push(sp(&person, reason, new, v, 1));
                        current.insert(key, new);
                    }
                }
            }
            let mut cuts: Vec<i64> = (0..next(6)).map(|_| next(60) as i64).collect();
            cuts.sort();
            cuts.dedup();
            assert_eq!(run("x:", &changes, &cuts), expected("x:", &changes));
        }
    }

    #[test]
    fn odd_sums_and_conflicts_are_counted() {
        let mut b = Batch::default();
        b.add(&sp("u1", "stalled_parcel", 5, 1, 1));
        b.add(&sp("u1", "stalled_parcel", 5, 2, 1));
        b.add(&sp("u1", "delivery_exception", 5, 1, 1));
        b.add(&sp("u1", "delivery_exception", 6, 1, 1));
        let p = plan("p:", &b);
        assert_eq!((p.odd_sums, p.conflicts), (1, 1));
        assert_eq!(
            p.keys["p:suppressed:u1"].set,
            vec![
                ("delivery_exception".to_string(), "6".to_string()),
                ("stalled_parcel".to_string(), "5".to_string())
            ]
        );
    }
}
