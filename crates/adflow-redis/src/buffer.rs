//! The in-memory half of the sink, without I/O: what `write` keeps, what `set_checkpoint`
//! seals, and which transactions the next `flush` commits (see `crate::sink` for the rules).

use crate::keys::{Batch, Entry};
use adflow_model::Change;

/// One transaction the next flush commits: the changes, the progress frontier, the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub batch: Batch,
    pub frontier: i64,
    pub checkpoint: Option<String>,
}

/// What `write` did with the changes handed over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Changes of `suppressed_persons` and open `order_status` rows, kept.
    pub kept: u64,
    /// Changes below the resume frontier, dropped.
    pub below_resume: u64,
}

/// Buffered changes and checkpoints.
#[derive(Debug)]
pub struct Buffer {
    /// Consolidated changes below `frontier`, not sealed.
    pending: Batch,
    /// Changes sealed by `set_checkpoint`, with the checkpoint and its frontier.
    sealed: Option<(Batch, String, i64)>,
    /// Changes at or above the frontier they came with.
    held: Vec<Change>,
    /// Largest frontier handed over (the resume frontier at start).
    frontier: i64,
    /// Live mode: changes below it are in the keys already (`i64::MIN`: none).
    resume_below: i64,
    /// The checkpoint committed last (or resumed from), with its frontier.
    stored: Option<(String, i64)>,
}

impl Buffer {
    /// An empty buffer resuming at `resume_below` (`i64::MIN`: a fresh start) from the stored
    /// checkpoint `stored`.
    pub fn new(resume_below: i64, stored: Option<(String, i64)>) -> Buffer {
        Buffer {
            pending: Batch::default(),
            sealed: None,
            held: Vec::new(),
            frontier: resume_below,
            resume_below,
            stored,
        }
    }

    /// The largest frontier handed over.
    pub fn frontier(&self) -> i64 {
        self.frontier
    }

    /// Takes a `write`: keeps the changes of the two key families, drops those below the
    /// resume frontier, holds back those at or above the frontier.
    pub fn write(&mut self, changes: Vec<Change>, frontier: i64) -> Taken {
        self.frontier = self.frontier.max(frontier);
        let f = self.frontier;
        if !self.held.is_empty() {
            let (ready, later): (Vec<Change>, Vec<Change>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|c| c.version < f);
            self.held = later;
            for c in &ready {
                self.pending.add(c);
            }
        }
        let mut taken = Taken::default();
        for c in changes {
            if Entry::of(&c.row).is_none() {
                continue;
            }
            if c.version < self.resume_below {
                taken.below_resume += 1;
                continue;
            }
            taken.kept += 1;
            if c.version < f {
                self.pending.add(&c);
            } else {
                self.held.push(c);
            }
        }
        taken
    }

    /// Seals the changes handed over so far with `checkpoint` at the current frontier. Ignored
    /// (returns false) while the frontier has not passed the resume frontier, and for the
    /// checkpoint stored last at the same frontier with nothing new.
    pub fn set_checkpoint(&mut self, checkpoint: &str) -> bool {
        let f = self.frontier;
        if self.resume_below > i64::MIN && f <= self.resume_below {
            return false;
        }
        let same = self
            .stored
            .as_ref()
            .is_some_and(|(t, sf)| t == checkpoint && *sf == f);
        if same && self.pending.is_empty() && self.sealed.is_none() {
            return false;
        }
        let mut batch = match self.sealed.take() {
            Some((b, _, _)) => b,
            None => Batch::default(),
        };
        batch.merge(std::mem::take(&mut self.pending));
        self.sealed = Some((batch, checkpoint.to_string(), f));
        true
    }

    /// The transactions a flush commits now, in order: the sealed changes with their
    /// checkpoint, then changes handed over after it (without one). Empty when there is
    /// nothing to write.
    pub fn take_commits(&mut self) -> Vec<Commit> {
        let mut out = Vec::new();
        if let Some((batch, text, f)) = self.sealed.take() {
            out.push(Commit {
                batch,
                frontier: f,
                checkpoint: Some(text),
            });
        }
        if !self.pending.is_empty() {
            out.push(Commit {
                batch: std::mem::take(&mut self.pending),
                frontier: self.frontier,
                checkpoint: None,
            });
        }
        out
    }

    /// Notes that `commit` is in the keys.
    pub fn committed(&mut self, commit: &Commit) {
        if let Some(text) = &commit.checkpoint {
            self.stored = Some((text.clone(), commit.frontier));
        }
    }

    /// Entries consolidated but not committed (held-back changes not counted).
    pub fn unsent(&self) -> usize {
        self.pending.len() + self.sealed.as_ref().map_or(0, |s| s.0.len())
    }

    /// The resume frontier.
    pub fn resume_below(&self) -> i64 {
        self.resume_below
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adflow_model::output::{SuppressedPersonRow, TriggerRow};
    use adflow_model::OutputRow;

    fn sp(person: &str, version: i64, sign: i64) -> Change {
        Change {
            row: OutputRow::SuppressedPerson(SuppressedPersonRow {
                person_id: person.into(),
                reason: "stalled_parcel".into(),
                since_ts: 1,
            }),
            version,
            sign,
        }
    }

    fn persons(c: &Commit) -> Vec<(String, i64)> {
        c.batch
            .iter()
            .map(|(e, n)| match e {
                Entry::Suppressed { person_id, .. } => (person_id.clone(), n),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn file_mode_commits_everything_without_a_checkpoint() {
        let mut b = Buffer::new(i64::MIN, None);
        let trigger = Change {
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
        let t = b.write(vec![sp("u1", 5, 1), trigger, sp("u2", 6, 1)], 10);
        assert_eq!(
            t,
            Taken {
                kept: 2,
                below_resume: 0
            }
        );
        b.write(vec![sp("u2", 12, -1)], 20);
        let c = b.take_commits();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].frontier, c[0].checkpoint.as_deref()), (20, None));
        assert_eq!(persons(&c[0]), vec![("u1".to_string(), 1)]);
        assert!(b.take_commits().is_empty());
    }

    #[test]
    fn a_checkpoint_seals_what_came_before_it() {
        let mut b = Buffer::new(i64::MIN, None);
        b.write(vec![sp("u1", 5, 1)], 10);
        assert!(b.set_checkpoint("cp1"));
        // (The engine flushes at once; changes in between go in a second commit.)
        b.write(vec![sp("u2", 15, 1)], 20);
        let c = b.take_commits();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].frontier, c[0].checkpoint.as_deref()),
            (10, Some("cp1"))
        );
        assert_eq!(persons(&c[0]), vec![("u1".to_string(), 1)]);
        assert_eq!((c[1].frontier, c[1].checkpoint.as_deref()), (20, None));
        assert_eq!(persons(&c[1]), vec![("u2".to_string(), 1)]);
        b.committed(&c[0]);
        // The same checkpoint at the same frontier again, nothing new: not stored twice.
        let mut b = Buffer::new(i64::MIN, Some(("cp1".into(), 10)));
        b.write(vec![], 10);
        assert!(!b.set_checkpoint("cp1"));
        assert!(b.take_commits().is_empty());
        // A new checkpoint with no change still commits (the progress hash moves on).
        b.write(vec![], 30);
        assert!(b.set_checkpoint("cp2"));
        let c = b.take_commits();
        assert_eq!(c.len(), 1);
        assert!(c[0].batch.is_empty());
        assert_eq!(
            (c[0].frontier, c[0].checkpoint.as_deref()),
            (30, Some("cp2"))
        );
    }

    #[test]
    fn two_checkpoints_before_a_flush_commit_once_with_the_newer() {
        let mut b = Buffer::new(i64::MIN, None);
        b.write(vec![sp("u1", 5, 1)], 10);
        b.set_checkpoint("cp1");
        b.write(vec![sp("u1", 12, -1), sp("u2", 12, 1)], 20);
        b.set_checkpoint("cp2");
        let c = b.take_commits();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].frontier, c[0].checkpoint.as_deref()),
            (20, Some("cp2"))
        );
        assert_eq!(persons(&c[0]), vec![("u2".to_string(), 1)]);
    }

    #[test]
    fn resuming_drops_what_the_keys_hold_and_ignores_replay_checkpoints() {
        let mut b = Buffer::new(100, Some(("cp1".into(), 100)));
        assert_eq!(b.frontier(), 100);
        // The replay hands over changes below the resume frontier again.
        let t = b.write(vec![sp("u1", 5, 1), sp("u1", 99, -1)], 100);
        assert_eq!(
            t,
            Taken {
                kept: 0,
                below_resume: 2
            }
        );
        assert!(!b.set_checkpoint("cp-replay"));
        assert!(b.take_commits().is_empty());
        let t = b.write(vec![sp("u3", 100, 1), sp("u4", 150, 1)], 150);
        assert_eq!(
            t,
            Taken {
                kept: 2,
                below_resume: 0
            }
        );
        assert!(b.set_checkpoint("cp2"));
        let c = b.take_commits();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].frontier, c[0].checkpoint.as_deref()),
            (150, Some("cp2"))
        );
        // u4 is at the frontier: held back.
        assert_eq!(persons(&c[0]), vec![("u3".to_string(), 1)]);
        b.write(vec![], 151);
        assert!(b.set_checkpoint("cp3"));
        let c = b.take_commits();
        assert_eq!(persons(&c[0]), vec![("u4".to_string(), 1)]);
    }

    #[test]
    fn held_changes_wait_for_the_frontier() {
        let mut b = Buffer::new(i64::MIN, None);
        b.write(vec![sp("u1", 50, 1), sp("u2", 150, 1)], 100);
        assert_eq!(b.unsent(), 1);
        b.write(vec![], 200);
        assert_eq!(b.unsent(), 2);
    }
}
