//! Reading changelog directories, comparing tables, writing them out.

use crate::{RefError, Tables};
use adflow_model::{Change, OutputRow, Table};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// Reads `OUT/<table>.jsonl` changelogs (a missing file is an empty table), sums the signs of
/// each row and keeps the rows with a positive sum: the tables' current contents. Every table
/// of [`Table::ALL`] is present in the result. Blank lines are skipped.
pub fn read_changelog_dir(out_dir: &Path) -> Result<Tables, RefError> {
    let mut tables = Tables::new();
    for table in Table::ALL {
        let path = out_dir.join(format!("{}.jsonl", table.name()));
        let mut sums: HashMap<OutputRow, i64> = HashMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let c = Change::from_json_line(table, line).map_err(|source| {
                        RefError::Changelog {
                            path: path.clone(),
                            line: i + 1,
                            source,
                        }
                    })?;
                    *sums.entry(c.row).or_insert(0) += c.sign;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RefError::Io { path, source }),
        }
        let rows: BTreeSet<OutputRow> = sums
            .into_iter()
            .filter(|(_, s)| *s > 0)
            .map(|(r, _)| r)
            .collect();
        tables.insert(table, rows);
    }
    Ok(tables)
}

/// The tables as compared: `dead_letters` rows keep only (stream, position, reason) — `raw`
/// and the wall-clock `seen_ts` are blanked; every table of [`Table::ALL`] is present.
pub fn comparable(t: &Tables) -> Tables {
    let mut out = Tables::new();
    for table in Table::ALL {
        let rows = t.get(&table).cloned().unwrap_or_default();
        let rows = if table == Table::DeadLetters {
            rows.into_iter()
                .map(|r| match r {
                    OutputRow::DeadLetter(mut d) => {
                        d.raw.clear();
                        d.seen_ts = 0;
                        OutputRow::DeadLetter(d)
                    }
                    other => other,
                })
                .collect()
        } else {
            rows
        };
        out.insert(table, rows);
    }
    out
}

/// `None` when `expected` and `actual` agree (after [`comparable`]); otherwise a readable
/// report: per differing table, the counts and the first 20 missing rows (expected, not
/// actual) and the first 20 extra rows (actual, not expected), as JSON.
pub fn diff(expected: &Tables, actual: &Tables) -> Option<String> {
    let (e, a) = (comparable(expected), comparable(actual));
    let mut report = String::new();
    let empty = BTreeSet::new();
    for table in Table::ALL {
        let er = e.get(&table).unwrap_or(&empty);
        let ar = a.get(&table).unwrap_or(&empty);
        let missing: Vec<&OutputRow> = er.difference(ar).collect();
        let extra: Vec<&OutputRow> = ar.difference(er).collect();
        if missing.is_empty() && extra.is_empty() {
            continue;
        }
        let _ = writeln!(
            report,
            "table {table}: expected {} rows, actual {}; {} missing, {} extra",
            er.len(),
            ar.len(),
            missing.len(),
            extra.len()
        );
        for (label, rows) in [("missing", &missing), ("extra", &extra)] {
            for r in rows.iter().take(20) {
                let _ = writeln!(report, "  {label}: {}", r.to_json());
            }
            if rows.len() > 20 {
                let _ = writeln!(report, "  … {} more {label}", rows.len() - 20);
            }
        }
    }
    (!report.is_empty()).then_some(report)
}

/// Writes each table as `dir/<table>.jsonl`, one changelog line per row (`version` 0,
/// `sign` +1), so tools that read changelogs can read the reference's tables too.
pub fn write_tables_dir(tables: &Tables, dir: &Path) -> Result<(), RefError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RefError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for table in Table::ALL {
        let path = dir.join(format!("{}.jsonl", table.name()));
        let f = std::fs::File::create(&path).map_err(io(&path))?;
        let mut w = std::io::BufWriter::new(f);
        for row in tables.get(&table).into_iter().flatten() {
            let line = Change {
                row: row.clone(),
                version: 0,
                sign: 1,
            }
            .to_json_line();
            writeln!(w, "{line}").map_err(io(&path))?;
        }
        w.flush().map_err(io(&path))?;
    }
    Ok(())
}
