//! Writing one stream's file: value formatting (timestamps, money), exact duplicates placed
//! shortly after their original, and malformed lines.

use crate::{GenError, StreamCounts};
use adflow_model::time::{civil_from_days, MINUTE};
use adflow_model::StreamKind;
use rand::rngs::StdRng;
use rand::Rng;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// +08:00, the zone of zone-less timestamps (the spec's default).
pub(crate) const ZONE_MIN: i64 = 480;

/// How a timestamp is written.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TsForm {
    /// `1717200000123`
    EpochMs,
    /// `"2024-06-01T00:00:00.123Z"`
    RfcUtcMs,
    /// `"2024-06-01T08:00:00+08:00"`
    RfcCst,
    /// `"2024-06-01 08:00:00"`
    Dash,
    /// `"2024-06-01 08:00:00.123"`
    DashMs,
    /// `"2024/06/01 08:00:00"`
    Slash,
    /// `"2024/06/01 08:00:00.123"`
    SlashMs,
}

impl TsForm {
    /// A form drawn with stream-typical odds: ad servers mostly send epoch ms, Kdniao the
    /// slash form, shops a mix.
    pub(crate) fn pick(rng: &mut StdRng, stream: StreamKind) -> TsForm {
        let r = rng.gen_range(0..100u32);
        match stream {
            StreamKind::AdEvents => match r {
                0..=69 => TsForm::EpochMs,
                70..=79 => TsForm::RfcUtcMs,
                80..=84 => TsForm::RfcCst,
                85..=89 => TsForm::DashMs,
                90..=94 => TsForm::Dash,
                _ => TsForm::SlashMs,
            },
            StreamKind::Logistics => match r {
                0..=59 => TsForm::Slash,
                60..=74 => TsForm::Dash,
                75..=84 => TsForm::SlashMs,
                85..=94 => TsForm::EpochMs,
                _ => TsForm::RfcCst,
            },
            _ => match r {
                0..=29 => TsForm::EpochMs,
                30..=44 => TsForm::RfcUtcMs,
                45..=59 => TsForm::RfcCst,
                60..=74 => TsForm::Dash,
                75..=84 => TsForm::DashMs,
                85..=94 => TsForm::Slash,
                _ => TsForm::SlashMs,
            },
        }
    }
}

/// Civil fields of `t + offset_min` minutes: (y, m, d, hh, mm, ss, ms).
fn parts(t: i64, offset_min: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let local = t + offset_min * MINUTE;
    let ms = local.rem_euclid(1000);
    let secs = local.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    (y, m, d, sod / 3600, sod % 3600 / 60, sod % 60, ms)
}

/// Appends `"ts":<value>` in the given form.
pub(crate) fn push_ts(buf: &mut String, ts: i64, form: TsForm) {
    buf.push_str("\"ts\":");
    push_time(buf, ts, form);
}

/// Appends a timestamp value (epoch ms number or quoted text) in the given form.
pub(crate) fn push_time(buf: &mut String, ts: i64, form: TsForm) {
    let (off, sep, tsep, ms, suffix) = match form {
        TsForm::EpochMs => {
            let _ = write!(buf, "{ts}");
            return;
        }
        TsForm::RfcUtcMs => (0, '-', 'T', true, "Z"),
        TsForm::RfcCst => (ZONE_MIN, '-', 'T', false, "+08:00"),
        TsForm::Dash => (ZONE_MIN, '-', ' ', false, ""),
        TsForm::DashMs => (ZONE_MIN, '-', ' ', true, ""),
        TsForm::Slash => (ZONE_MIN, '/', ' ', false, ""),
        TsForm::SlashMs => (ZONE_MIN, '/', ' ', true, ""),
    };
    let (y, m, d, hh, mi, ss, mss) = parts(ts, off);
    let _ = write!(
        buf,
        "\"{y:04}{sep}{m:02}{sep}{d:02}{tsep}{hh:02}:{mi:02}:{ss:02}"
    );
    if ms {
        let _ = write!(buf, ".{mss:03}");
    }
    buf.push_str(suffix);
    buf.push('"');
}

/// Appends a money value (fen) as `0.35`, `"0.35"`, `199`, `"199.00"`, `59.9` … (style 0..4).
pub(crate) fn push_money(buf: &mut String, fen: u64, style: u32) {
    let (i, f) = (fen / 100, fen % 100);
    match style % 4 {
        0 => {
            if f == 0 {
                let _ = write!(buf, "{i}");
            } else if f % 10 == 0 {
                let _ = write!(buf, "{i}.{}", f / 10);
            } else {
                let _ = write!(buf, "{i}.{f:02}");
            }
        }
        1 => {
            let _ = write!(buf, "\"{i}.{f:02}\"");
        }
        2 => {
            if f == 0 {
                let _ = write!(buf, "\"{i}\"");
            } else {
                let _ = write!(buf, "\"{i}.{f:02}\"");
            }
        }
        _ => {
            let _ = write!(buf, "{i}.{f:02}");
        }
    }
}

struct PendingDup {
    due_line: u64,
    max_key: i64,
    line: String,
}

/// One output file with its duplicate and malformed-line injection.
pub(crate) struct StreamOut {
    stream: StreamKind,
    path: PathBuf,
    w: BufWriter<File>,
    pub(crate) counts: StreamCounts,
    pending: Vec<PendingDup>,
    dup_pm: u32,
    mal_pm: u32,
    rng: StdRng,
    bad_seq: u64,
}

impl StreamOut {
    pub(crate) fn create(
        stream: StreamKind,
        path: PathBuf,
        rng: StdRng,
        dup_pm: u32,
        mal_pm: u32,
    ) -> Result<Self, GenError> {
        let f = File::create(&path).map_err(|source| GenError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(StreamOut {
            stream,
            path,
            w: BufWriter::with_capacity(1 << 20, f),
            counts: StreamCounts::default(),
            pending: Vec::new(),
            dup_pm,
            mal_pm,
            rng,
            bad_seq: 0,
        })
    }

    fn raw(&mut self, line: &str) -> Result<(), GenError> {
        self.w
            .write_all(line.as_bytes())
            .and_then(|_| self.w.write_all(b"\n"))
            .map_err(|source| GenError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.counts.lines += 1;
        self.counts.bytes += line.len() as u64 + 1;
        Ok(())
    }

    /// Writes pending duplicates that are due before a line of emission key `key`.
    fn flush_due(&mut self, key: i64) -> Result<(), GenError> {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].due_line <= self.counts.lines || key > self.pending[i].max_key {
                let p = self.pending.remove(i);
                self.raw(&p.line)?;
                self.counts.duplicates += 1;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Writes one valid event line (emission key `key`, about its event time), maybe preceded
    /// by a malformed line and maybe followed later by an exact duplicate.
    pub(crate) fn emit(&mut self, key: i64, line: &str) -> Result<(), GenError> {
        self.flush_due(key)?;
        if self.rng.gen_range(0..1000) < self.mal_pm {
            let bad = self.malformed(key, line);
            self.raw(&bad)?;
            self.counts.malformed += 1;
        }
        self.raw(line)?;
        self.counts.events += 1;
        if self.rng.gen_range(0..1000) < self.dup_pm {
            let due_line = self.counts.lines + self.rng.gen_range(1..=100);
            self.pending.push(PendingDup {
                due_line,
                max_key: key + 10 * MINUTE,
                line: line.to_string(),
            });
        }
        Ok(())
    }

    /// Writes the remaining duplicates and flushes the file.
    pub(crate) fn finish(mut self) -> Result<StreamCounts, GenError> {
        self.flush_due(i64::MAX)?;
        self.w.flush().map_err(|source| GenError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.counts)
    }

    /// A line that `parse_event` rejects for this stream.
    fn malformed(&mut self, ts: i64, valid: &str) -> String {
        self.bad_seq += 1;
        let id = format!("bad-{}-{}", self.stream.name(), self.bad_seq);
        let kind = self.rng.gen_range(0..7u32);
        let ty = match self.stream {
            StreamKind::AdEvents => "click",
            StreamKind::Orders => "order",
            StreamKind::Logistics => "track",
            StreamKind::Identity => "link",
        };
        // The stream's required fields, well-formed.
        let body = match self.stream {
            StreamKind::AdEvents => {
                r#""campaign_id":"cmp-dy-001","channel":"douyin","device_id":"d-bad","cost":"0.50""#
            }
            StreamKind::Orders => r#""order_id":"ord-bad","user_id":"u-bad","amount":"99.00""#,
            StreamKind::Logistics => {
                r#""shipper_code":"SF","logistic_code":"SF0000000000","state":"2""#
            }
            StreamKind::Identity => r#""device_id":"d-bad","user_id":"u-bad""#,
        };
        match kind {
            // Truncated JSON (a cut-off write): any proper prefix of an object is invalid.
            0 => {
                let mut cut = valid.len() / 2;
                while cut > 0 && !valid.is_char_boundary(cut) {
                    cut -= 1;
                }
                valid[..cut].to_string()
            }
            // Not JSON, or JSON but not an object.
            1 => {
                let junk = [
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                    "null",
                    "[1,2,3]",
                    "type=click ts=1717344000000",
                    "\"just a string\"",
                    "}{",
                ];
                junk[self.rng.gen_range(0..junk.len())].to_string()
            }
            // Missing event_id.
            2 => format!(r#"{{"type":"{ty}","ts":{ts},{body}}}"#),
            // Wrong value type.
            3 => match self.stream {
                StreamKind::AdEvents => format!(
                    r#"{{"type":"click","event_id":"{id}","ts":{ts},"campaign_id":12345,"channel":"douyin","device_id":"d-bad","cost":1}}"#
                ),
                StreamKind::Orders => format!(
                    r#"{{"type":"order","event_id":"{id}","ts":{ts},"order_id":987654,"user_id":"u-bad","amount":10}}"#
                ),
                StreamKind::Logistics => format!(
                    r#"{{"type":"track","event_id":"{id}","ts":{ts},"shipper_code":"SF","logistic_code":1234567890,"state":2}}"#
                ),
                StreamKind::Identity => format!(
                    r#"{{"type":"link","event_id":"{id}","ts":{ts},"device_id":"d-bad","user_id":42}}"#
                ),
            },
            // Unknown type.
            4 => {
                let t = ["view", "refund", "trace", "merge", ""][self.rng.gen_range(0..5)];
                format!(r#"{{"type":"{t}","event_id":"{id}","ts":{ts},{body}}}"#)
            }
            // Bad ts.
            5 => {
                let t = [
                    "\"yesterday\"",
                    "\"2024-13-45 10:00:00\"",
                    "true",
                    "1.7173e12",
                    "\"2024/06/03\"",
                    "-5",
                ][self.rng.gen_range(0..6)];
                format!(r#"{{"type":"{ty}","event_id":"{id}","ts":{t},{body}}}"#)
            }
            // Bad amount / cost / code / link.
            _ => match self.stream {
                StreamKind::AdEvents => {
                    let c = ["\"abc\"", "\"1.234\"", "-1", "\"¥0.5\""][self.rng.gen_range(0..4)];
                    format!(
                        r#"{{"type":"click","event_id":"{id}","ts":{ts},"campaign_id":"cmp-dy-001","channel":"douyin","device_id":"d-bad","cost":{c}}}"#
                    )
                }
                StreamKind::Orders => {
                    let a = ["\"12,50\"", "\"free\"", "-99", "19.999"][self.rng.gen_range(0..4)];
                    format!(
                        r#"{{"type":"order","event_id":"{id}","ts":{ts},"order_id":"ord-bad","user_id":"u-bad","amount":{a}}}"#
                    )
                }
                StreamKind::Logistics => {
                    let s = ["\"signed\"", "\"3a\"", "-2", "true"][self.rng.gen_range(0..4)];
                    format!(
                        r#"{{"type":"track","event_id":"{id}","ts":{ts},"shipper_code":"SF","logistic_code":"SF1","state":{s}}}"#
                    )
                }
                StreamKind::Identity => {
                    format!(r#"{{"type":"link","event_id":"{id}","ts":{ts},"user_id":"u-bad"}}"#)
                }
            },
        }
    }
}
