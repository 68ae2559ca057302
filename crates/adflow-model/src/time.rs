//! Event-time parsing (spec §1): epoch milliseconds, RFC 3339, and the zone-less
//! `yyyy-MM-dd HH:mm:ss[.SSS]` / `yyyy/MM/dd HH:mm:ss[.SSS]` forms read in a configured zone.

/// Milliseconds in common units.
pub const SECOND: i64 = 1_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// The accepted range of event times: 1970-01-01 up to 2100-01-01 (exclusive).
pub const MAX_TS: i64 = 4_102_444_800_000;

/// Why a timestamp was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("unparseable timestamp {0:?}")]
    Syntax(String),
    #[error("timestamp {0} out of range (1970..2100)")]
    Range(i64),
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let s = self.b.get(self.i..self.i + n)?;
        let mut v = 0u32;
        for &c in s {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as u32;
        }
        self.i += n;
        Some(v)
    }
    fn byte(&mut self, allowed: &[u8]) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        if allowed.contains(&c) {
            self.i += 1;
            Some(c)
        } else {
            None
        }
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

/// Parses a textual timestamp into epoch milliseconds.
///
/// * RFC 3339 (`2024-06-01T12:00:00Z`, `2024-06-01T20:00:00.123+08:00`, space instead of `T`
///   accepted when an offset is given);
/// * `yyyy-MM-dd HH:mm:ss[.SSS]` and `yyyy/MM/dd HH:mm:ss[.SSS]`, read in the zone
///   `zone_offset_minutes` east of UTC (China Standard Time is +480).
///
/// Fractions longer than milliseconds are truncated to milliseconds.
pub fn parse_ts_text(text: &str, zone_offset_minutes: i32) -> Result<i64, TimeError> {
    let err = || TimeError::Syntax(text.chars().take(64).collect());
    let mut c = Cursor {
        b: text.trim().as_bytes(),
        i: 0,
    };
    let y = c.digits(4).ok_or_else(err)? as i64;
    let sep = c.byte(b"-/").ok_or_else(err)?;
    let mo = c.digits(2).ok_or_else(err)?;
    c.byte(&[sep]).ok_or_else(err)?;
    let d = c.digits(2).ok_or_else(err)?;
    let tsep = c.byte(b"Tt ").ok_or_else(err)?;
    let h = c.digits(2).ok_or_else(err)?;
    c.byte(b":").ok_or_else(err)?;
    let mi = c.digits(2).ok_or_else(err)?;
    c.byte(b":").ok_or_else(err)?;
    let s = c.digits(2).ok_or_else(err)?;
    let mut ms = 0u32;
    if c.byte(b".,").is_some() {
        let mut n = 0;
        while let Some(dg) = c.digits(1) {
            if n < 3 {
                ms = ms * 10 + dg;
            }
            n += 1;
        }
        if n == 0 {
            return Err(err());
        }
        for _ in n..3 {
            ms *= 10;
        }
    }
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 60
    {
        return Err(err());
    }
    // Offset: Z, ±hh:mm, ±hhmm, or none (then the configured zone; only for the space form).
    let offset_min: i64 = if c.done() {
        if tsep != b' ' && sep == b'-' {
            // `2024-06-01T12:00:00` without offset: read in the configured zone as well.
        }
        zone_offset_minutes as i64
    } else if c.byte(b"Zz").is_some() {
        0
    } else {
        let sign = c.byte(b"+-").ok_or_else(err)?;
        let oh = c.digits(2).ok_or_else(err)? as i64;
        c.byte(b":");
        let om = c.digits(2).ok_or_else(err)? as i64;
        if oh > 23 || om > 59 {
            return Err(err());
        }
        let o = oh * 60 + om;
        if sign == b'-' {
            -o
        } else {
            o
        }
    };
    if !c.done() {
        return Err(err());
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h as i64 * 3600 + mi as i64 * 60 + s.min(59) as i64;
    let t = (secs - offset_min * 60) * 1000 + ms as i64;
    check_range(t)
}

/// Checks that an epoch-ms timestamp lies in the accepted range.
pub fn check_range(t: i64) -> Result<i64, TimeError> {
    if (0..MAX_TS).contains(&t) {
        Ok(t)
    } else {
        Err(TimeError::Range(t))
    }
}

/// Formats epoch ms as `yyyy-MM-dd HH:mm:ss` in the zone `zone_offset_minutes` east of UTC.
pub fn format_local(t: i64, zone_offset_minutes: i32) -> String {
    let local = t.div_euclid(1000) + zone_offset_minutes as i64 * 60;
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    const CST: i32 = 480;

    #[test]
    fn parses_all_forms() {
        // 2024-06-01T00:00:00Z = 1717200000000
        assert_eq!(
            parse_ts_text("2024-06-01T00:00:00Z", CST),
            Ok(1_717_200_000_000)
        );
        assert_eq!(
            parse_ts_text("2024-06-01T08:00:00+08:00", CST),
            Ok(1_717_200_000_000)
        );
        assert_eq!(
            parse_ts_text("2024-06-01 08:00:00", CST),
            Ok(1_717_200_000_000)
        );
        assert_eq!(
            parse_ts_text("2024/06/01 08:00:00", CST),
            Ok(1_717_200_000_000)
        );
        assert_eq!(
            parse_ts_text("2024/06/01 08:00:00.123", CST),
            Ok(1_717_200_000_123)
        );
        assert_eq!(
            parse_ts_text("2024-06-01 08:00:00.5", CST),
            Ok(1_717_200_000_500)
        );
        assert_eq!(
            parse_ts_text("2024-06-01T00:00:00.123456Z", CST),
            Ok(1_717_200_000_123)
        );
        assert_eq!(
            parse_ts_text("2024-06-01 00:00:00", 0),
            Ok(1_717_200_000_000)
        );
        assert_eq!(
            parse_ts_text("2024-05-31T19:00:00-05:00", CST),
            Ok(1_717_200_000_000)
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "2024-06-01",
            "2024-13-01 00:00:00",
            "2024-02-30 00:00:00",
            "2024/06/01 08:00:000",
            "2024-06/01 08:00:00",
            "yesterday",
            "2024-06-01 08:00:00 +08",
        ] {
            assert!(parse_ts_text(bad, CST).is_err(), "{bad}");
        }
        assert_eq!(check_range(-1), Err(TimeError::Range(-1)));
    }

    #[test]
    fn civil_round_trip_and_format() {
        for days in [-1000, 0, 19_875, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_local(1_717_200_000_000, CST), "2024-06-01 08:00:00");
    }
}
