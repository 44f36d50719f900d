//! Encryption of personal data at rest: ChaCha20-Poly1305 (an AEAD), with
//! key ids so keys can be rotated.
//!
//! Keys come from `COLEND_PII_KEYS` as `id:hex32bytes[,id:hex32bytes…]`; new
//! data is sealed with `COLEND_PII_KEY_ID` (default: the first key). To
//! rotate, add the new key in front, set `COLEND_PII_KEY_ID` to it, and keep
//! the old ones while data sealed with them remains. A sealed value reads
//! `v1.<key id>.<hex nonce||ciphertext>`; the context (what the value is)
//! is bound as associated data, so a value cannot be moved to another field.
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Arc;

/// Development key, used only when `COLEND_PII_KEYS` is unset.
const DEV_KEY: &str = "dev:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[derive(Clone)]
pub struct Sealer {
    keys: Arc<HashMap<String, ChaCha20Poly1305>>,
    current: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(current key {})", self.current)
    }
}

impl Sealer {
    /// From `COLEND_PII_KEYS` / `COLEND_PII_KEY_ID`.
    pub fn from_env() -> anyhow::Result<Sealer> {
        let spec = crate::config::env_opt("COLEND_PII_KEYS");
        if spec.is_none() {
            tracing::warn!(
                "COLEND_PII_KEYS is not set: personal data is sealed with the development key"
            );
        }
        Self::parse(
            spec.as_deref().unwrap_or(DEV_KEY),
            crate::config::env_opt("COLEND_PII_KEY_ID").as_deref(),
        )
    }

    /// `spec` is `id:hex32bytes[,…]`; `current` defaults to the first id.
    pub fn parse(spec: &str, current: Option<&str>) -> anyhow::Result<Sealer> {
        let mut keys = HashMap::new();
        let mut first = None;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, hex_key) = part
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("COLEND_PII_KEYS entries are id:hexkey"))?;
            anyhow::ensure!(
                !id.is_empty()
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "a PII key id must be letters, digits, '-' or '_'"
            );
            let bytes =
                hex::decode(hex_key).map_err(|_| anyhow::anyhow!("PII key {id} is not hex"))?;
            anyhow::ensure!(
                bytes.len() == 32,
                "PII key {id} must be 32 bytes (64 hex characters)"
            );
            keys.insert(
                id.to_string(),
                ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            );
            first.get_or_insert_with(|| id.to_string());
        }
        let current = current
            .map(str::to_string)
            .or(first)
            .ok_or_else(|| anyhow::anyhow!("no PII key"))?;
        anyhow::ensure!(
            keys.contains_key(&current),
            "COLEND_PII_KEY_ID {current} is not among COLEND_PII_KEYS"
        );
        Ok(Sealer {
            keys: Arc::new(keys),
            current,
        })
    }

    /// Seals `plain`, bound to `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> anyhow::Result<String> {
        let cipher = &self.keys[&self.current];
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("v1.{}.{}", self.current, hex::encode(out)))
    }

    /// Opens a value sealed by `seal` with any known key.
    pub fn open(&self, context: &str, sealed: &str) -> anyhow::Result<Vec<u8>> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("not a sealed value");
        };
        let cipher = self
            .keys
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("unknown PII key id {id}"))?;
        let bytes = hex::decode(body).map_err(|_| anyhow::anyhow!("sealed value is not hex"))?;
        anyhow::ensure!(bytes.len() > 12, "sealed value is too short");
        cipher
            .decrypt(
                Nonce::from_slice(&bytes[..12]),
                Payload {
                    msg: &bytes[12..],
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!("sealed value does not open (wrong key, context or tampered)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1:1111111111111111111111111111111111111111111111111111111111111111";
    const K2: &str = "k2:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn seals_and_opens_with_rotation() {
        let old = Sealer::parse(K1, None).unwrap();
        let v = old.seal("ctx", b"11010519491231002X").unwrap();
        assert!(v.starts_with("v1.k1."));
        assert!(!v.contains("11010519491231002X"));
        // After rotation new values use k2 and old ones still open.
        let new = Sealer::parse(&format!("{K2},{K1}"), None).unwrap();
        assert_eq!(new.open("ctx", &v).unwrap(), b"11010519491231002X");
        assert!(new.seal("ctx", b"x").unwrap().starts_with("v1.k2."));
    }

    #[test]
    fn refuses_wrong_context_key_or_tampering() {
        let s = Sealer::parse(K1, None).unwrap();
        let v = s.seal("ctx", b"secret").unwrap();
        assert!(s.open("other", &v).is_err());
        assert!(Sealer::parse(K2, None).unwrap().open("ctx", &v).is_err());
        let mut t = v.clone();
        let last = t.pop().unwrap();
        t.push(if last == '0' { '1' } else { '0' });
        assert!(s.open("ctx", &t).is_err());
        assert!(Sealer::parse("k1:abcd", None).is_err());
        assert!(Sealer::parse(K1, Some("k9")).is_err());
    }
}
