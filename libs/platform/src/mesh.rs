//! What a service needs from the process that hosts it: storage settings, the
//! cache, where the other services are, keys and timeouts. One `Mesh` serves
//! one service in a pod, or all five in `colend up`.
use crate::cache::Cache;
use crate::config::{Backends, env_or, env_parse};
use colend_core::BlindIndexKey;
use std::time::Duration;

/// Addresses of the five services.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub acquisition: String,
    pub kyc: String,
    pub credit: String,
    pub funding: String,
    pub reconciliation: String,
}

impl Endpoints {
    /// Every service at one address (the embedded mesh).
    pub fn all_at(addr: &str) -> Self {
        Endpoints {
            acquisition: addr.to_string(),
            kyc: addr.to_string(),
            credit: addr.to_string(),
            funding: addr.to_string(),
            reconciliation: addr.to_string(),
        }
    }

    /// `COLEND_<SERVICE>_URL` for each service, defaulting to `default`.
    pub fn from_env(default: &str) -> Self {
        Endpoints {
            acquisition: env_or("COLEND_ACQUISITION_URL", default),
            kyc: env_or("COLEND_KYC_URL", default),
            credit: env_or("COLEND_CREDIT_URL", default),
            funding: env_or("COLEND_FUNDING_URL", default),
            reconciliation: env_or("COLEND_RECONCILIATION_URL", default),
        }
    }
}

#[derive(Clone)]
pub struct Mesh {
    pub backends: Backends,
    pub cache: Cache,
    pub endpoints: Endpoints,
    /// Key of the blind indexes over personal data (`COLEND_BLIND_INDEX_KEY`).
    pub blind_key: BlindIndexKey,
    /// Deadline of each call to another service (`COLEND_CALL_TIMEOUT_MS`, default 5000).
    pub call_timeout: Duration,
    /// Encryption of personal data at rest (`COLEND_PII_KEYS`, `COLEND_PII_KEY_ID`).
    pub sealer: crate::sealing::Sealer,
    /// Background workers, stopped after the server has drained.
    pub workers: crate::lifecycle::Workers,
}

/// Development key, used only when `COLEND_BLIND_INDEX_KEY` is unset.
pub const DEV_BLIND_INDEX_KEY: &str = "colend-development-blind-index-key";

impl Mesh {
    pub fn from_env(backends: Backends, endpoints: Endpoints) -> anyhow::Result<Mesh> {
        let cache = Cache::from_url(backends.redis_url.as_deref(), &backends.cache_prefix)?;
        let key = env_or("COLEND_BLIND_INDEX_KEY", DEV_BLIND_INDEX_KEY);
        if key == DEV_BLIND_INDEX_KEY && backends.database_url.is_some() {
            tracing::warn!("COLEND_BLIND_INDEX_KEY is not set: using the development key");
        }
        Ok(Mesh {
            backends,
            cache,
            endpoints,
            blind_key: BlindIndexKey::new(key.as_bytes()),
            call_timeout: Duration::from_millis(env_parse("COLEND_CALL_TIMEOUT_MS", 5000u64)?),
            sealer: crate::sealing::Sealer::from_env()?,
            workers: crate::lifecycle::Workers::default(),
        })
    }
}
