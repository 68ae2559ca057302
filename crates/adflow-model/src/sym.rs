//! [`Sym`]: the identifier type of events and dataflow records.
//!
//! Identifiers (event, campaign, device, user, order and waybill ids) are copied into many
//! records and arrangements. A `String` copy allocates and copies the bytes; a `Sym` is a shared
//! immutable string, so a copy is a reference-count increment and a record holds 16 bytes
//! instead of 24. Low-cardinality identifiers (campaigns, channels, shipper codes) are interned
//! per thread ([`Sym::interned`]), so equal ones share one allocation and compare equal by
//! pointer without looking at the bytes.
//!
//! Ordering, equality and hashing are those of the text (exactly as for `String`), so the
//! pipelines' orders (smallest user id, candidate clicks by `event_id`) are unchanged, and a
//! `Sym` serializes as a plain JSON string.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// An immutable, cheaply cloned string (see the module docs).
#[derive(Clone)]
pub struct Sym(Arc<str>);

/// Most distinct strings one thread's interner keeps; beyond it strings are allocated per use
/// (bounded memory whatever the input sends).
const INTERN_LIMIT: usize = 65_536;

thread_local! {
    // foldhash, seeded per process: interning runs for every identifier of every event, and
    // SipHash was a visible share of parsing.
    static INTERNED: RefCell<HashMap<Arc<str>, (), foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

impl Sym {
    /// A new symbol holding `s`.
    pub fn new(s: &str) -> Sym {
        Sym(Arc::from(s))
    }

    /// The symbol of `s` from this thread's interner (for identifiers with few distinct
    /// values): equal strings share one allocation.
    pub fn interned(s: &str) -> Sym {
        INTERNED.with(|m| {
            let mut m = m.borrow_mut();
            if let Some((k, _)) = m.get_key_value(s) {
                return Sym(k.clone());
            }
            let a: Arc<str> = Arc::from(s);
            if m.len() < INTERN_LIMIT {
                m.insert(a.clone(), ());
            }
            Sym(a)
        })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Sym {
    fn default() -> Self {
        Sym::interned("")
    }
}

impl Deref for Sym {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Sym {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Sym {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Sym {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for Sym {}

impl PartialOrd for Sym {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sym {
    fn cmp(&self, other: &Self) -> Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            Ordering::Equal
        } else {
            (*self.0).cmp(&*other.0)
        }
    }
}

impl Hash for Sym {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (*self.0).hash(state)
    }
}

impl PartialEq<str> for Sym {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Sym {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Sym {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl From<&str> for Sym {
    fn from(s: &str) -> Sym {
        Sym::new(s)
    }
}

impl From<String> for Sym {
    fn from(s: String) -> Sym {
        Sym(Arc::from(s))
    }
}

impl From<&String> for Sym {
    fn from(s: &String) -> Sym {
        Sym::new(s)
    }
}

impl From<Sym> for String {
    fn from(s: Sym) -> String {
        s.0.to_string()
    }
}

impl From<&Sym> for String {
    fn from(s: &Sym) -> String {
        s.0.to_string()
    }
}

impl Serialize for Sym {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sym {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sym, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Sym::new(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::Sym;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    fn h<T: Hash + ?Sized>(t: &T) -> u64 {
        let mut s = DefaultHasher::new();
        t.hash(&mut s);
        s.finish()
    }

    #[test]
    fn behaves_like_the_text() {
        let a = Sym::interned("cmp-1");
        let b = Sym::interned("cmp-1");
        let c = Sym::new("cmp-1");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert!(Sym::new("a") < Sym::new("b"));
        assert!(Sym::new("u10") < Sym::new("u9"));
        assert_eq!(h(&c), h("cmp-1"));
        assert_eq!(h(&a), h(&String::from("cmp-1")));
        assert_eq!(format!("{a:?}"), "\"cmp-1\"");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"cmp-1\"");
        let d: Sym = serde_json::from_str("\"x\\\"y\"").unwrap();
        assert_eq!(d.as_str(), "x\"y");
    }
}
