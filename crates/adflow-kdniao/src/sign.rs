//! Request signatures: Kdniao's `DataSign` and Kuaidi100's `sign`.

use base64::Engine as _;
use md5::{Digest, Md5};

use crate::secret::Secret;

/// Lower-case hexadecimal MD5 of `text` (32 characters).
pub fn md5_hex_lower(text: &str) -> String {
    let digest = Md5::digest(text.as_bytes());
    let mut out = String::with_capacity(32);
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Kdniao `DataSign` before form encoding: `base64(md5_hex_lowercase(request_data + app_key))`.
///
/// The base64 is taken over the 32-character hex *text*, not over the raw 16-byte digest.
/// The result is form-encoded exactly once when the request body is built
/// (see [`crate::client::form_body`]); never encode it here.
pub fn data_sign(request_data: &str, app_key: &Secret) -> String {
    let mut input = String::with_capacity(request_data.len() + app_key.expose().len());
    input.push_str(request_data);
    input.push_str(app_key.expose());
    base64::engine::general_purpose::STANDARD.encode(md5_hex_lower(&input))
}

/// Checks a received `DataSign` (already form-decoded once) against `request_data`.
///
/// Also accepts a sign that a sender percent-encoded twice (decoded once more here), a
/// common bug on the sending side that does not weaken the check. Comparison is over the
/// whole string, so a wrong key or altered data never passes.
pub fn verify_data_sign(request_data: &str, received_sign: &str, app_key: &Secret) -> bool {
    let expected = data_sign(request_data, app_key);
    if constant_time_eq(expected.as_bytes(), received_sign.trim().as_bytes()) {
        return true;
    }
    let once_more = percent_encoding::percent_decode_str(received_sign.trim()).decode_utf8_lossy();
    constant_time_eq(expected.as_bytes(), once_more.as_bytes())
}

/// Kuaidi100 `sign`: `UPPER(md5_hex(param + key + customer))`.
pub fn kuaidi100_sign(param: &str, key: &Secret, customer: &str) -> String {
    let mut input = String::with_capacity(param.len() + key.expose().len() + customer.len());
    input.push_str(param);
    input.push_str(key.expose());
    input.push_str(customer);
    md5_hex_lower(&input).to_ascii_uppercase()
}

/// Equality whose running time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = "{'OrderCode':'','ShipperCode':'SF','LogisticCode':'118954907573'}";
    const KEY: &str = "56da2cf8-c8a2-44b2-b6fa-476cd7d1ba17";

    #[test]
    fn published_test_vector() {
        assert_eq!(
            md5_hex_lower(&format!("{DATA}{KEY}")),
            "9aa3b97eb3e60dd278c566eeeb7d942a"
        );
        assert_eq!(
            data_sign(DATA, &Secret::new(KEY)),
            "OWFhM2I5N2ViM2U2MGRkMjc4YzU2NmVlZWI3ZDk0MmE="
        );
    }

    #[test]
    fn verify_accepts_good_and_double_encoded_rejects_bad() {
        let key = Secret::new(KEY);
        assert!(verify_data_sign(
            DATA,
            "OWFhM2I5N2ViM2U2MGRkMjc4YzU2NmVlZWI3ZDk0MmE=",
            &key
        ));
        assert!(verify_data_sign(
            DATA,
            "OWFhM2I5N2ViM2U2MGRkMjc4YzU2NmVlZWI3ZDk0MmE%3D",
            &key
        ));
        assert!(!verify_data_sign(
            DATA,
            "OWFhM2I5N2ViM2U2MGRkMjc4YzU2NmVlZWI3ZDk0MmE",
            &key
        ));
        assert!(!verify_data_sign(
            DATA,
            "OWFhM2I5N2ViM2U2MGRkMjc4YzU2NmVlZWI3ZDk0MmE=",
            &Secret::new("other")
        ));
        assert!(!verify_data_sign(
            "{}",
            "OWFhM2I5N2ViM2U2MGRkMjc4YzU2NmVlZWI3ZDk0MmE=",
            &key
        ));
    }

    #[test]
    fn kuaidi100_sign_is_upper_md5_of_param_key_customer() {
        // MD5("abc") is the RFC 1321 test vector 900150983cd24fb0d6963f7d28e17f72.
        assert_eq!(
            kuaidi100_sign("a", &Secret::new("b"), "c"),
            "900150983CD24FB0D6963F7D28E17F72"
        );
        // Order is param, key, customer: swapping key and customer changes the sign.
        assert_ne!(
            kuaidi100_sign("a", &Secret::new("c"), "b"),
            "900150983CD24FB0D6963F7D28E17F72"
        );
    }
}
