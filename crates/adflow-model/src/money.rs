//! Money as integer fen (1 CNY = 100 fen), parsed from JSON numbers or decimal strings without
//! ever passing through floating point.
//!
//! One amount (an order's `amount`, an impression's or a click's `cost`) is at most
//! [`MAX_AMOUNT_FEN`] (10 000 000 000.00 CNY); a larger one is rejected, so the event becomes a
//! dead letter. Sums of amounts are carried as [`SumFen`] (`i128`), which cannot wrap for any
//! number of events at that maximum; a sum leaves the dataflow as an `i64` table field through
//! [`sum_to_fen`], which saturates instead of wrapping (9 223 372 036 854 775 807 fen, about
//! 9.2 × 10^16 CNY, far beyond any real total).

/// Why a decimal text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("empty number")]
    Empty,
    #[error("not a decimal number: {0:?}")]
    Syntax(String),
    #[error("negative amount: {0:?}")]
    Negative(String),
    #[error("more than {scale} decimals: {text:?}")]
    TooPrecise { text: String, scale: u32 },
    #[error("number out of range: {0:?}")]
    Overflow(String),
    #[error("amount {0:?} is above the maximum of 10000000000.00 CNY")]
    TooLarge(String),
}

/// The largest accepted amount, in fen: 10 000 000 000.00 CNY (ten billion yuan).
pub const MAX_AMOUNT_FEN: i64 = 1_000_000_000_000;

/// A sum of amounts in fen, wide enough that no realistic number of events can wrap it
/// (2^127 / [`MAX_AMOUNT_FEN`] ≈ 1.7 × 10^26 events at the maximum).
pub type SumFen = i128;

/// A sum as a table field (`Int64` fen): values beyond the `i64` range saturate at its bounds
/// instead of wrapping (only reachable with about 9.2 million events at [`MAX_AMOUNT_FEN`] in one
/// row); `saturated` reports whether it did, so the caller can log it.
pub fn sum_to_fen(sum: SumFen) -> (i64, bool) {
    match i64::try_from(sum) {
        Ok(v) => (v, false),
        Err(_) if sum > 0 => (i64::MAX, true),
        Err(_) => (i64::MIN, true),
    }
}

/// Parses a plain decimal text (`"199"`, `"199.00"`, `"0.35"`, `"-1.5"`; exponents such as
/// `1e3` are accepted when they leave at most `scale` decimals) into `value × 10^scale`.
pub fn parse_decimal(text: &str, scale: u32) -> Result<i64, DecimalError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DecimalError::Empty);
    }
    let syntax = || DecimalError::Syntax(t.to_string());
    let (neg, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => {
            let e: i32 = body[i + 1..].parse().map_err(|_| syntax())?;
            (&body[..i], e)
        }
        None => (body, 0),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(syntax());
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(syntax());
    }
    // digits = int_part ++ frac_part, value = digits × 10^(exp − len(frac_part)).
    let shift = exp as i64 - frac_part.len() as i64 + scale as i64;
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let mut value: i128 = 0;
    for b in digits.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add((b - b'0') as i128))
            .ok_or_else(|| DecimalError::Overflow(t.to_string()))?;
        if value > i64::MAX as i128 * 10 {
            return Err(DecimalError::Overflow(t.to_string()));
        }
    }
    if value == 0 {
        // Zero in any notation (`0e999999999` must not loop a billion times).
        return Ok(0);
    }
    if shift >= 0 {
        for _ in 0..shift {
            value = value
                .checked_mul(10)
                .ok_or_else(|| DecimalError::Overflow(t.to_string()))?;
            if value > i64::MAX as i128 {
                return Err(DecimalError::Overflow(t.to_string()));
            }
        }
    } else {
        for _ in 0..(-shift) {
            if value % 10 != 0 {
                return Err(DecimalError::TooPrecise {
                    text: t.to_string(),
                    scale,
                });
            }
            value /= 10;
        }
    }
    if value > i64::MAX as i128 {
        return Err(DecimalError::Overflow(t.to_string()));
    }
    Ok(if neg { -(value as i64) } else { value as i64 })
}

/// Parses a non-negative CNY amount (number text or decimal string, at most 2 decimals, at most
/// [`MAX_AMOUNT_FEN`]) into fen.
pub fn parse_fen(text: &str) -> Result<i64, DecimalError> {
    let v = match parse_decimal(text, 2) {
        Err(DecimalError::Overflow(t)) if !t.starts_with('-') => {
            return Err(DecimalError::TooLarge(t))
        }
        r => r?,
    };
    if v < 0 || text.trim_start().starts_with('-') {
        return Err(DecimalError::Negative(text.trim().to_string()));
    }
    if v > MAX_AMOUNT_FEN {
        return Err(DecimalError::TooLarge(text.trim().to_string()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fen_exactly() {
        assert_eq!(parse_fen("0.35"), Ok(35));
        assert_eq!(parse_fen("199"), Ok(19_900));
        assert_eq!(parse_fen("199.00"), Ok(19_900));
        assert_eq!(parse_fen("12.34"), Ok(1_234));
        assert_eq!(parse_fen("0.1"), Ok(10));
        assert_eq!(parse_fen(".5"), Ok(50));
        assert_eq!(parse_fen("1e2"), Ok(10_000));
        assert_eq!(parse_fen("1.5e-1"), Ok(15));
        assert_eq!(parse_fen("0.000"), Ok(0));
        assert_eq!(parse_fen("1.230"), Ok(123));
        assert_eq!(parse_fen("0e999999999"), Ok(0));
        assert_eq!(parse_fen("0.0e-999999999"), Ok(0));
    }

    #[test]
    fn rejects_bad_amounts() {
        assert!(matches!(
            parse_fen("1.234"),
            Err(DecimalError::TooPrecise { .. })
        ));
        assert!(matches!(parse_fen("-1"), Err(DecimalError::Negative(_))));
        assert!(matches!(parse_fen("abc"), Err(DecimalError::Syntax(_))));
        assert!(matches!(parse_fen(""), Err(DecimalError::Empty)));
        assert!(matches!(parse_fen("."), Err(DecimalError::Syntax(_))));
        assert!(matches!(parse_fen("1.2.3"), Err(DecimalError::Syntax(_))));
        assert!(matches!(
            parse_fen("99999999999999999999999"),
            Err(DecimalError::TooLarge(_))
        ));
        assert!(parse_fen("NaN").is_err());
    }

    #[test]
    fn amounts_stop_at_the_documented_maximum() {
        assert_eq!(parse_fen("10000000000.00"), Ok(MAX_AMOUNT_FEN));
        assert_eq!(parse_fen("1e10"), Ok(MAX_AMOUNT_FEN));
        for t in [
            "10000000000.01",
            "50000000000000000.00",
            "1e11",
            "92233720368547758.07",
        ] {
            assert_eq!(
                parse_fen(t),
                Err(DecimalError::TooLarge(t.to_string())),
                "{t}"
            );
        }
        let e = parse_fen("50000000000000000.00").unwrap_err().to_string();
        assert!(e.contains("above the maximum of 10000000000.00 CNY"), "{e}");
    }

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        assert_eq!(sum_to_fen(42), (42, false));
        assert_eq!(sum_to_fen(i64::MAX as i128), (i64::MAX, false));
        assert_eq!(sum_to_fen(i64::MAX as i128 + 1), (i64::MAX, true));
        assert_eq!(sum_to_fen(i64::MIN as i128 - 1), (i64::MIN, true));
    }
}
