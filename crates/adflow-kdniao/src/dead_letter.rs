//! The connector's dead letters: input it received but could not turn into track events,
//! kept instead of dropped (spec §1 "Bad input": never stops the pipeline, never
//! disappears).
//!
//! Today that is a trace whose `AcceptTime` cannot be parsed (or is missing). The
//! [`crate::sink::TrackSink`] appends one [`DeadLetterRecord`] per such trace to
//! `<state_dir>/dead_letters.jsonl` (fsync'd, before the answer's events are published, so
//! before a push is acknowledged) and counts it (`dead_letters` on the receiver's
//! `/metrics`). A record has the fields of the pipeline's `dead_letters` rows (spec §4:
//! `stream`, `position`, `raw`, `reason`, `seen_ts`) plus an `id`. Kdniao re-sends a waybill's
//! whole trace with every push, so the same bad trace comes back again and again: its `id`
//! depends only on the carrier, the waybill and the trace's text, and a trace whose `id` is
//! already in the file is not written again (it is still counted in `bad_traces`).

use serde::{Deserialize, Serialize};

use crate::sign::md5_hex_lower;
use crate::track::BadTrace;

/// The file, in the state directory.
pub const DEAD_LETTERS_FILE: &str = "dead_letters.jsonl";

/// At most this many bytes of the raw text are kept (spec §1: the first 4 KiB).
pub const RAW_LIMIT: usize = 4096;

/// One line of `dead_letters.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// `kdl-` + lower-case hex MD5 of `"<shipper_code>|<logistic_code>|<raw>"`.
    pub id: String,
    /// Always `logistics`: the stream the input was meant for.
    pub stream: String,
    /// Where the input was: `kdniao/<shipper_code>/<logistic_code>/Traces[<index>]`, the
    /// index counted in the answer (or push item) as Kdniao sent it.
    pub position: String,
    /// The trace as JSON (absent fields left out, mobile numbers masked), at most
    /// [`RAW_LIMIT`] bytes.
    pub raw: String,
    /// One line saying why it was rejected, e.g. `unparseable AcceptTime "2024-01-01 20:00:000"`.
    pub reason: String,
    /// Wall clock when it was first seen, epoch milliseconds.
    pub seen_ts: i64,
}

impl DeadLetterRecord {
    /// The dead letter of a trace that could not be converted, seen at `seen_ts`.
    pub fn from_bad_trace(bad: &BadTrace, seen_ts: i64) -> Self {
        DeadLetterRecord {
            id: format!(
                "kdl-{}",
                md5_hex_lower(&format!(
                    "{}|{}|{}",
                    bad.shipper_code, bad.logistic_code, bad.raw
                ))
            ),
            stream: "logistics".to_string(),
            position: format!(
                "kdniao/{}/{}/Traces[{}]",
                bad.shipper_code, bad.logistic_code, bad.index
            ),
            raw: truncate(&bad.raw, RAW_LIMIT).to_string(),
            reason: bad.reason.split_whitespace().collect::<Vec<_>>().join(" "),
            seen_ts,
        }
    }

    /// The JSON Lines form (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // A struct of strings and an integer always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(raw: &str, index: usize) -> BadTrace {
        BadTrace {
            shipper_code: "ZTO".into(),
            logistic_code: "7301".into(),
            index,
            accept_time: "2024-01-01 20:00:000".into(),
            raw: raw.into(),
            reason: "unparseable AcceptTime \"2024-01-01 20:00:000\"".into(),
        }
    }

    #[test]
    fn id_ignores_the_index_and_raw_is_cut_at_4_kib() {
        let a = DeadLetterRecord::from_bad_trace(&bad("{\"AcceptTime\":\"x\"}", 2), 5);
        let b = DeadLetterRecord::from_bad_trace(&bad("{\"AcceptTime\":\"x\"}", 3), 6);
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("kdl-") && a.id.len() == 36, "{}", a.id);
        assert_eq!(a.position, "kdniao/ZTO/7301/Traces[2]");
        assert_eq!(a.stream, "logistics");
        assert_eq!(a.seen_ts, 5);
        let long = "到".repeat(2000); // 6000 bytes
        let c = DeadLetterRecord::from_bad_trace(&bad(&long, 0), 0);
        assert_eq!(c.raw.len(), 4095);
        assert!(long.starts_with(&c.raw));
    }
}
