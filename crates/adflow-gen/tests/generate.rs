//! The generator's contract: deterministic per seed; every non-malformed line parses with
//! `adflow_model::event::parse_event`; malformed lines fail; duplicates are exact copies placed
//! shortly after their original; lines are in event-time order up to a few seconds.

use adflow_gen::{generate, GenerateArgs};
use adflow_model::event::{parse_event, Body, ParseConfig};
use adflow_model::StreamKind;
use std::collections::HashMap;

fn small(dir: &std::path::Path, seed: u64) -> GenerateArgs {
    let mut a = GenerateArgs::with_output(dir);
    a.seed = seed;
    a.users = 300;
    a.days = 5;
    a.duplicates_per_mille = 20;
    a.malformed_per_mille = 10;
    a
}

fn read(dir: &std::path::Path, s: StreamKind) -> String {
    std::fs::read_to_string(dir.join(format!("{}.jsonl", s.name()))).unwrap()
}

#[test]
fn deterministic_per_seed() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(&small(a.path(), 7)).unwrap();
    generate(&small(b.path(), 7)).unwrap();
    generate(&small(c.path(), 8)).unwrap();
    for s in StreamKind::ALL {
        assert_eq!(read(a.path(), s), read(b.path(), s), "{s}");
        assert_ne!(read(a.path(), s), read(c.path(), s), "{s}");
    }
}

#[test]
fn lines_parse_except_malformed_and_duplicates_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let report = generate(&small(dir.path(), 42)).unwrap();
    let cfg = ParseConfig::default();
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let mut codes = HashMap::new();
    for s in StreamKind::ALL {
        let text = read(dir.path(), s);
        let counts = report.stream(s);
        let mut failed = 0;
        let mut dups = 0;
        let mut seen: HashMap<String, (usize, String, i64)> = HashMap::new();
        let mut max_ts = i64::MIN;
        let mut lines = 0;
        for (i, line) in text.lines().enumerate() {
            lines += 1;
            match parse_event(s, line.as_bytes(), &cfg) {
                Err(_) => failed += 1,
                Ok(ev) => {
                    assert!(ev.ts >= report.start_ms && ev.ts < report.end_ms, "{line}");
                    *kinds.entry(ev.body.type_name().to_string()).or_default() += 1;
                    if let Body::Track {
                        state, state_ex, ..
                    } = &ev.body
                    {
                        *codes.entry(state_ex.unwrap_or(*state)).or_insert(0) += 1;
                    }
                    if let Some((j, orig, ts)) = seen.get(ev.event_id.as_str()) {
                        assert_eq!(orig, line, "duplicate id {} differs", ev.event_id);
                        assert!(i - j <= 110, "duplicate too far: {} lines", i - j);
                        assert!(
                            max_ts - ts <= 11 * 60_000,
                            "duplicate too late in event time"
                        );
                        dups += 1;
                    } else {
                        // Event-time order up to a small local disorder.
                        assert!(
                            ev.ts >= max_ts.saturating_sub(5_000),
                            "{s}:{}: {line}",
                            i + 1
                        );
                        max_ts = max_ts.max(ev.ts);
                        seen.insert(ev.event_id.to_string(), (i, line.to_string(), ev.ts));
                    }
                }
            }
        }
        assert_eq!(failed, counts.malformed, "{s}: failures vs malformed");
        assert_eq!(dups, counts.duplicates, "{s}: duplicates");
        assert_eq!(lines, counts.lines, "{s}: lines");
        assert_eq!(seen.len() as u64, counts.events, "{s}: events");
        assert!(
            counts.malformed > 0 && counts.duplicates > 0,
            "{s}: {counts:?}"
        );
    }
    for k in [
        "impression",
        "click",
        "order",
        "order_status",
        "shipment",
        "track",
        "link",
    ] {
        assert!(kinds.get(k).copied().unwrap_or(0) > 0, "no {k}: {kinds:?}");
    }
    for c in [1, 2, 202, 301, 404, 406, 407] {
        assert!(codes.contains_key(&c), "no track code {c}: {codes:?}");
    }
    let exception = |c: &u32| matches!(c, 4 | 401..=403 | 405 | 412..=423);
    assert!(codes.keys().any(exception), "no exception code: {codes:?}");
}
