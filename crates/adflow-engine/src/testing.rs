//! A step-by-step harness for pipeline tests: feed input lines, move the watermark, and see
//! exactly which changes each step releases — the `(row, version, sign)` deltas.

use crate::driver::build_dataflow;
use crate::{to_time, EngineError, Program};
use adflow_model::config::Settings;
use adflow_model::event::{parse_event, ParseConfig};
use adflow_model::output::DeadLetterRow;
use adflow_model::{Change, OutputRow, StreamKind};
use std::sync::Arc;

/// One step: these input lines arrive (in order), then the watermark moves to `watermark`
/// (event-time ms; every change with a version below it is released).
#[derive(Clone, Debug)]
pub struct Step {
    pub lines: Vec<(StreamKind, String)>,
    pub watermark: i64,
}

impl Step {
    /// A step with `lines` that then moves the watermark to `watermark`.
    pub fn new(lines: &[(StreamKind, &str)], watermark: i64) -> Step {
        Step {
            lines: lines.iter().map(|(s, l)| (*s, l.to_string())).collect(),
            watermark,
        }
    }
}

/// Runs `steps` through `program` on one worker and returns, per step, the released changes
/// sorted by (version, row, sign). Lines that do not parse become dead letters (with `seen_ts`
/// set to 0 so results are reproducible). Events below the current watermark are late and are
/// applied at the watermark, as in the real driver.
pub fn run_steps(
    program: Arc<dyn Program>,
    settings: Settings,
    steps: Vec<Step>,
) -> Result<Vec<Vec<Change>>, EngineError> {
    timely::execute_directly(move |worker| {
        let mut b = build_dataflow(worker, program.as_ref(), &settings, &[0])?;
        let parse = ParseConfig {
            zone_offset_minutes: settings.zone_offset_minutes().unwrap_or(480),
            ..ParseConfig::default()
        };
        let mut out = Vec::new();
        for step in steps {
            let cur = *b.ev_in.time();
            for (stream, line) in &step.lines {
                match parse_event(*stream, line.as_bytes(), &parse) {
                    Ok(e) => {
                        let t = to_time(e.ts).max(cur);
                        b.ev_in.update_at(e, t, 1);
                    }
                    Err(reason) => {
                        let row = OutputRow::DeadLetter(DeadLetterRow {
                            stream: stream.name().to_string(),
                            position: "test".into(),
                            raw: line.clone(),
                            reason,
                            seen_ts: 0,
                        });
                        b.dl_in.update((row, crate::Freeze::NEVER), 1);
                    }
                }
            }
            let w = to_time(step.watermark).max(cur);
            b.ev_in.advance_to(w);
            b.dl_in.advance_to(w);
            b.ev_in.flush();
            b.dl_in.flush();
            worker.step_while(|| b.probe.less_than(&w));
            let mut spins = 0;
            while b.buffers[0].borrow().frontier < w && spins < 10_000 {
                worker.step();
                spins += 1;
            }
            let mut changes = std::mem::take(&mut b.buffers[0].borrow_mut().changes);
            changes.sort_by(|x, y| (x.version, &x.row, x.sign).cmp(&(y.version, &y.row, y.sign)));
            out.push(changes);
        }
        worker.drop_dataflow(b.dataflow_id);
        Ok(out)
    })
}
