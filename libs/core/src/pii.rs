//! Personal information: masked names and keyed blind indexes.
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// A person's name. Debug and Display show only the first character.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn new(name: &str) -> Option<Self> {
        let t = name.trim();
        let n = t.chars().count();
        (1..=64).contains(&n).then(|| PersonName(t.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn masked(&self) -> String {
        let mut c = self.0.chars();
        let first = c.next().unwrap_or('*');
        format!("{first}{}", "*".repeat(c.count().max(1)))
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonName({})", self.masked())
    }
}

impl fmt::Display for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Key for blind indexes: HMAC-SHA256 of a value, so that equal values can be
/// found and deduplicated, and used in cache keys, without storing or sending
/// them in clear.
#[derive(Clone)]
pub struct BlindIndexKey(Vec<u8>);

impl BlindIndexKey {
    pub fn new(key: &[u8]) -> Self {
        BlindIndexKey(key.to_vec())
    }

    /// Hex HMAC over the parts, each length-prefixed so that parts cannot run together.
    pub fn index(&self, domain: &str, parts: &[&str]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(domain.as_bytes());
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_masked() {
        let n = PersonName::new("张三丰").unwrap();
        assert_eq!(format!("{n:?}"), "PersonName(张**)");
        assert_eq!(PersonName::new("李").unwrap().to_string(), "李*");
        assert!(PersonName::new("  ").is_none());
    }

    #[test]
    fn blind_index_is_keyed_and_unambiguous() {
        let k = BlindIndexKey::new(b"k1");
        let a = k.index("id", &["ab", "c"]);
        assert_ne!(a, k.index("id", &["a", "bc"]));
        assert_ne!(a, BlindIndexKey::new(b"k2").index("id", &["ab", "c"]));
        assert_eq!(a.len(), 64);
    }
}
