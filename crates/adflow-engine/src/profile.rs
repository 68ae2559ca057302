//! Operator profile: with `ADFLOW_PROFILE=1` in the environment, each worker records how long
//! every dataflow operator ran (timely's scheduling log) and logs the busiest operators when it
//! finishes. A diagnostic for performance work; off by default (no logger is registered).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

#[derive(Default)]
struct Stats {
    names: HashMap<usize, (Vec<usize>, String)>,
    started: HashMap<usize, Duration>,
    /// Per operator: total time, calls, longest single call.
    total: HashMap<usize, (Duration, u64, Duration)>,
}

/// A registered operator profile of one worker.
pub(crate) struct Profile {
    stats: Rc<RefCell<Stats>>,
}

/// Registers the profile on `worker` when `ADFLOW_PROFILE` is set (before the dataflow is
/// built, so the operators' names are seen).
pub(crate) fn register(worker: &mut timely::worker::Worker) -> Option<Profile> {
    if std::env::var_os("ADFLOW_PROFILE").is_none_or(|v| v.is_empty() || v == "0") {
        return None;
    }
    let stats: Rc<RefCell<Stats>> = Rc::default();
    let s = stats.clone();
    worker
        .log_register()?
        .insert::<TimelyEventBuilder, _>("timely", move |_, data| {
            let Some(data) = data else { return };
            let mut st = s.borrow_mut();
            for (t, e) in data.iter() {
                match e {
                    TimelyEvent::Operates(o) => {
                        st.names.insert(o.id, (o.addr.clone(), o.name.clone()));
                    }
                    TimelyEvent::Schedule(ev) => match ev.start_stop {
                        StartStop::Start => {
                            st.started.insert(ev.id, *t);
                        }
                        StartStop::Stop => {
                            if let Some(s0) = st.started.remove(&ev.id) {
                                let e = st.total.entry(ev.id).or_default();
                                let d = t.saturating_sub(s0);
                                e.0 += d;
                                e.1 += 1;
                                e.2 = e.2.max(d);
                            }
                        }
                    },
                    _ => {}
                }
            }
        });
    Some(Profile { stats })
}

impl Profile {
    /// Logs the operators that ran longest (exclusive of the operators nested in them is not
    /// computed: a scope's time includes its children).
    pub(crate) fn report(&self, worker: &mut timely::worker::Worker) {
        if let Some(mut r) = worker.log_register() {
            r.remove("timely");
        }
        let st = self.stats.borrow();
        let mut rows: Vec<(Duration, u64, Duration, String)> = st
            .total
            .iter()
            .map(|(id, (d, n, longest))| {
                let name = st
                    .names
                    .get(id)
                    .map(|(a, n)| format!("{n} {a:?}"))
                    .unwrap_or_else(|| format!("#{id}"));
                (*d, *n, *longest, name)
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut text = String::new();
        for (d, n, longest, name) in rows.iter().take(40) {
            text.push_str(&format!(
                "\n{:>9.3}s {:>9} {:>8.1}ms {}",
                d.as_secs_f64(),
                n,
                longest.as_secs_f64() * 1e3,
                name
            ));
        }
        tracing::info!(
            worker = worker.index(),
            "operator profile (seconds, calls, longest call, operator):{text}"
        );
    }
}
