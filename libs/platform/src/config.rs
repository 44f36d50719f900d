//! Typed configuration from environment variables (12-factor), validated at start-up.
use std::str::FromStr;

/// Reads `name`, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_string(),
    }
}

/// Reads `name` when set and non-empty.
pub fn env_opt(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses `name`, or returns `default` when unset; a value that does not parse
/// is a start-up error naming the variable.
pub fn env_parse<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match env_opt(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("environment variable {name}={v:?} is invalid: {e}")),
    }
}

/// Storage and cache settings shared by every service.
#[derive(Clone, Debug)]
pub struct Backends {
    /// `postgres://…` for PostgreSQL; `None` for the embedded SQLite files.
    pub database_url: Option<String>,
    /// `redis://…`; `None` for the in-process cache.
    pub redis_url: Option<String>,
    /// Directory of the SQLite files in embedded mode.
    pub data_dir: std::path::PathBuf,
    /// Prefix of every cache key (`COLEND_CACHE_PREFIX`, default `colend:`).
    pub cache_prefix: String,
}

impl Backends {
    /// From `DATABASE_URL`, `REDIS_URL` and `COLEND_DATA_DIR` (default `./colend-data`).
    pub fn from_env() -> Self {
        Backends {
            database_url: env_opt("DATABASE_URL"),
            redis_url: env_opt("REDIS_URL"),
            data_dir: env_or("COLEND_DATA_DIR", "./colend-data").into(),
            cache_prefix: env_or("COLEND_CACHE_PREFIX", crate::cache::KEY_PREFIX),
        }
    }
}
