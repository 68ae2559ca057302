//! [`Secret`]: a string that never shows itself.

use serde::Deserialize;
use std::fmt;

/// A secret value (the Kdniao AppKey, the Kuaidi100 key).
///
/// `Debug` and `Display` both print `***`; the only way to read the value is
/// [`Secret::expose`], which is called solely where a signature is computed.
/// It deliberately does not implement `Serialize`, so it cannot leak into an output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Use only to compute a signature; never log or return it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("56da2cf8-c8a2-44b2-b6fa-476cd7d1ba17");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "56da2cf8-c8a2-44b2-b6fa-476cd7d1ba17");
    }
}
