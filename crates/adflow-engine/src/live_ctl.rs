//! The control channel of a live run: the messages the workers of a cluster exchange through a
//! small dataflow of their own (timely's channels, so the same code runs on threads of one
//! process and on processes on several machines), and the decision where a restarted cluster
//! resumes.
//!
//! Nothing about the live run's coordination is shared in memory between workers: the global
//! event-time frontier is timely's progress tracking; everything else (checkpoint rounds, read
//! marks, the resume agreement, idleness, the stop agreement, failures) is one of these
//! messages, sent by one worker to every worker.

use crate::Time;
use adflow_model::StreamKind;
use std::collections::{BTreeMap, HashMap};

/// What a live engine stores with a sink flush: checkpoint round `round` at frontier `frontier`
/// of a cluster of `processes` processes, and per partition the read mark `g` (messages below
/// it were read while the input time was below the frontier).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    #[serde(default)]
    pub round: u64,
    pub frontier: i64,
    #[serde(default = "one")]
    pub processes: u64,
    /// (stream, partition, read mark), sorted.
    pub read: Vec<(String, i32, i64)>,
}

fn one() -> u64 {
    1
}

impl Checkpoint {
    /// The read marks by partition.
    pub fn marks(&self) -> HashMap<(StreamKind, i32), i64> {
        self.read
            .iter()
            .filter_map(|(s, p, g)| Some(((StreamKind::from_name(s)?, *p), *g)))
            .collect()
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(text: &str) -> Result<Checkpoint, String> {
        serde_json::from_str(text).map_err(|e| format!("unreadable sink checkpoint: {e}"))
    }
}

/// The resumable state of one sink of one process, as reported at start-up.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SinkPoints {
    pub name: String,
    /// Restorable checkpoints, newest first (`None`: the empty state).
    pub points: Vec<Option<String>>,
    /// Can go back to its previous checkpoint (written in phase 1 of a round); a sink that can
    /// not (phase 2) is only ever at the newest committed round.
    pub phase2: bool,
}

/// A control message. `worker` and `process` name the sender.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Ctl {
    /// Start-up: the resumable sinks of `process`.
    Resume {
        process: u64,
        sinks: Vec<SinkPoints>,
    },
    /// From worker 0: sinks may be handed everything below `upto`; with `round`, checkpoint
    /// round `round` is taken at exactly `upto`.
    Permit { upto: Time, round: Option<u64> },
    /// A worker's read marks for a round.
    Marks {
        round: u64,
        worker: u64,
        read: Vec<(String, i32, i64)>,
    },
    /// A process has made its phase-1 sinks durable at the round.
    Prepared { round: u64, process: u64 },
    /// Worker 0 has made the phase-2 sinks durable: the round is committed.
    Committed { round: u64 },
    /// A worker's partitions have all been idle since this wall-clock time (epoch ms), or are
    /// not idle (`None`).
    Idle { worker: u64, since_ms: Option<i64> },
    /// Stop (a signal, or every partition idle long enough): every worker stops reading.
    Stop,
    /// A stopped worker's end of event time: everything it read takes effect below `end`.
    Final { worker: u64, end: Time },
    /// A worker failed; everybody stops with this error.
    Abort { worker: u64, message: String },
}

/// Where a restarted cluster resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeDecision {
    /// The checkpoint resumed from (`None`: a fresh start).
    pub checkpoint: Option<Checkpoint>,
    /// Its text, exactly as stored by the sinks (`None`: the empty state).
    pub text: Option<String>,
}

/// Decides where the cluster resumes, from every process's [`Ctl::Resume`] report (the same
/// on every worker). The rule (see the module docs of `live`): a round's phase-1 sinks are all
/// durable before its phase-2 sinks are written, and the next round starts only once a round is
/// committed; so the newest round every constraining sink can restore is the smallest newest
/// round among them. Sinks of processes that were not part of the cluster that wrote the
/// checkpoints (index ≥ its `processes`) start empty and do not constrain it.
pub fn decide_resume(reports: &BTreeMap<u64, Vec<SinkPoints>>) -> Result<ResumeDecision, String> {
    let mut texts: BTreeMap<u64, (String, Checkpoint)> = BTreeMap::new();
    let mut old_processes = 0;
    for sinks in reports.values() {
        for s in sinks {
            for t in s.points.iter().flatten() {
                let cp = Checkpoint::parse(t)?;
                old_processes = old_processes.max(cp.processes);
                texts.entry(cp.round).or_insert((t.clone(), cp));
            }
        }
    }
    if texts.is_empty() {
        return Ok(ResumeDecision {
            checkpoint: None,
            text: None,
        });
    }
    let round_of = |p: &Option<String>| -> Result<u64, String> {
        match p {
            None => Ok(0),
            Some(t) => Ok(Checkpoint::parse(t)?.round),
        }
    };
    let mut round = u64::MAX;
    for (&process, sinks) in reports {
        for s in sinks {
            if process >= old_processes && s.points.iter().all(Option::is_none) && !s.phase2 {
                continue; // a new process of a grown cluster
            }
            let newest = s.points.first().map_or(Ok(0), round_of)?;
            round = round.min(newest);
        }
    }
    for (&process, sinks) in reports {
        for s in sinks {
            if process >= old_processes && s.points.iter().all(Option::is_none) && !s.phase2 {
                continue;
            }
            let rounds: Vec<u64> = s.points.iter().map(round_of).collect::<Result<_, _>>()?;
            if !rounds.contains(&round) {
                return Err(format!(
                    "cannot resume consistently: sink {} of process {process} holds checkpoint rounds {rounds:?}, the cluster resumes from round {round} (a process's output was lost, or sinks were added to a running deployment)",
                    s.name
                ));
            }
        }
    }
    if round == 0 {
        return Ok(ResumeDecision {
            checkpoint: None,
            text: None,
        });
    }
    let (text, cp) = texts
        .remove(&round)
        .ok_or_else(|| format!("checkpoint round {round} is not stored by any sink"))?;
    Ok(ResumeDecision {
        checkpoint: Some(cp),
        text: Some(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(round: u64, processes: u64) -> Option<String> {
        Some(
            Checkpoint {
                round,
                frontier: round as i64 * 1000,
                processes,
                read: vec![("orders".into(), 0, round as i64 * 10)],
            }
            .to_text(),
        )
    }

    fn sink(points: Vec<Option<String>>, phase2: bool) -> SinkPoints {
        SinkPoints {
            name: "file".into(),
            points,
            phase2,
        }
    }

    #[test]
    fn fresh_start_when_nothing_is_stored() {
        let mut r = BTreeMap::new();
        r.insert(0, vec![sink(vec![None], false)]);
        r.insert(1, vec![sink(vec![None], false)]);
        assert_eq!(decide_resume(&r).unwrap().checkpoint, None);
    }

    #[test]
    fn resumes_from_the_smallest_newest_round() {
        let mut r = BTreeMap::new();
        r.insert(0, vec![sink(vec![cp(5, 2), cp(4, 2)], false)]);
        r.insert(1, vec![sink(vec![cp(4, 2), cp(3, 2)], false)]);
        let d = decide_resume(&r).unwrap();
        assert_eq!(d.checkpoint.unwrap().round, 4);
        // A phase-2 sink (ClickHouse) behind them decides.
        r.insert(
            0,
            vec![
                sink(vec![cp(5, 2), cp(4, 2)], false),
                sink(vec![cp(4, 2)], true),
            ],
        );
        assert_eq!(decide_resume(&r).unwrap().checkpoint.unwrap().round, 4);
    }

    #[test]
    fn first_round_incomplete_restarts_empty() {
        let mut r = BTreeMap::new();
        r.insert(0, vec![sink(vec![cp(1, 2), None], false)]);
        r.insert(1, vec![sink(vec![None], false)]);
        assert_eq!(decide_resume(&r).unwrap().checkpoint, None);
    }

    #[test]
    fn a_grown_cluster_ignores_new_processes_and_a_gap_is_an_error() {
        let mut r = BTreeMap::new();
        r.insert(0, vec![sink(vec![cp(7, 1), cp(6, 1)], false)]);
        r.insert(1, vec![sink(vec![None], false)]);
        assert_eq!(decide_resume(&r).unwrap().checkpoint.unwrap().round, 7);
        let mut r = BTreeMap::new();
        r.insert(0, vec![sink(vec![cp(7, 2), cp(6, 2)], false)]);
        r.insert(1, vec![sink(vec![cp(5, 2), cp(4, 2)], false)]);
        assert!(decide_resume(&r).is_err());
    }
}
