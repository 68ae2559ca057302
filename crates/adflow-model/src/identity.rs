//! Identity nodes (spec §3): `user:<id>`, `device:<id>`, `phone:<keyed hash>`; junk filtering;
//! phone hashing and masking; address masking; waybill cleaning.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whether an identifier is junk and must be ignored: empty (after trimming), `0`, `null`,
/// `unknown`, `undefined` (any letter case).
pub fn is_junk(id: &str) -> bool {
    let t = id.trim();
    t.is_empty()
        || t == "0"
        || t.eq_ignore_ascii_case("null")
        || t.eq_ignore_ascii_case("unknown")
        || t.eq_ignore_ascii_case("undefined")
}

/// Whether a device id is junk: a junk identifier, or made only of `0` and `-`.
pub fn is_junk_device(id: &str) -> bool {
    is_junk(id) || id.trim().bytes().all(|b| b == b'0' || b == b'-')
}

/// The node of a user id, or `None` when it is junk.
pub fn user_node(id: &str) -> Option<String> {
    (!is_junk(id)).then(|| format!("user:{}", id.trim()))
}

/// The node of a device id, or `None` when it is junk.
pub fn device_node(id: &str) -> Option<String> {
    (!is_junk_device(id)).then(|| format!("device:{}", id.trim()))
}

/// The node of a phone, given its keyed hash.
pub fn phone_node(hash: &str) -> String {
    format!("phone:{hash}")
}

/// A phone number's digits with spaces, `-`, `(`, `)` and a leading `+86`/`0086` removed.
/// `Ok(None)` for a junk value; `Err` when what remains is not 5..=20 digits.
pub fn normalize_phone(raw: &str) -> Result<Option<String>, String> {
    if is_junk(raw) {
        return Ok(None);
    }
    let mut s: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    if let Some(rest) = s.strip_prefix("+86").or_else(|| s.strip_prefix("0086")) {
        s = rest.to_string();
    }
    if s.len() < 5 || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "phone is not a phone number ({} chars)",
            raw.chars().count()
        ));
    }
    Ok(Some(s))
}

/// HMAC-SHA256 of the normalized phone with `secret`, as lowercase hex (the first 16 bytes:
/// 128 bits are plenty to join on and keep rows short).
pub fn phone_hash(normalized: &str, secret: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(normalized.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// The display form of a normalized phone: first 3 and last 4 digits (`138****5678`); shorter
/// numbers keep only their last 4 digits... or fewer: everything else becomes `*`.
pub fn mask_phone(normalized: &str) -> String {
    let n = normalized.chars().count();
    if n >= 8 {
        let head: String = normalized.chars().take(3).collect();
        let tail: String = normalized.chars().skip(n - 4).collect();
        format!("{head}{}{tail}", "*".repeat(n - 7))
    } else {
        let keep = n.saturating_sub(4).max(n / 2);
        let tail: String = normalized.chars().skip(keep).collect();
        format!("{}{tail}", "*".repeat(keep))
    }
}

/// An address with its last 8 characters replaced by `*` (all of it when shorter).
pub fn mask_address(addr: &str) -> String {
    let n = addr.chars().count();
    let keep = n.saturating_sub(8);
    let head: String = addr.chars().take(keep).collect();
    format!("{head}{}", "*".repeat(n - keep))
}

/// Cleans a waybill number: trim, drop spaces and `-`, upper-case letters.
pub fn clean_waybill(raw: &str) -> String {
    raw.trim()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(|c| c.to_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_ignored() {
        for j in ["", " ", "0", "null", "NULL", "unknown", "undefined"] {
            assert!(is_junk(j), "{j:?}");
            assert_eq!(user_node(j), None);
        }
        assert!(is_junk_device("000-000"));
        assert!(is_junk_device("----"));
        assert!(!is_junk_device("0a0"));
        assert_eq!(device_node(" d1 "), Some("device:d1".into()));
        assert_eq!(user_node("u01"), Some("user:u01".into()));
    }

    #[test]
    fn phones_hash_and_mask() {
        assert_eq!(
            normalize_phone("+86 138-1234-5678"),
            Ok(Some("13812345678".into()))
        );
        assert_eq!(normalize_phone("null"), Ok(None));
        assert!(normalize_phone("call me").is_err());
        assert_eq!(mask_phone("13812345678"), "138****5678");
        let a = phone_hash("13812345678", b"k1");
        assert_eq!(a.len(), 32);
        assert_eq!(a, phone_hash("13812345678", b"k1"));
        assert_ne!(a, phone_hash("13812345678", b"k2"));
        assert!(!mask_phone("12345").contains("123"));
    }

    #[test]
    fn addresses_and_waybills() {
        assert_eq!(
            mask_address("上海市浦东新区世纪大道100号"),
            "上海市浦东新区********"
        );
        assert_eq!(mask_address("abc"), "***");
        assert_eq!(clean_waybill(" sf 1234-5678ab "), "SF12345678AB");
    }
}
