//! Cache-aside with a TTL: Redis in production, an in-process map embedded.
//! A cache error is logged and counted as a miss; it never fails a request.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default prefix of every key colend writes (`COLEND_CACHE_PREFIX`).
pub const KEY_PREFIX: &str = "colend:";

/// A cache; every key is namespaced by a prefix, so deployments (and test
/// runs) can share one Redis.
#[derive(Clone)]
pub struct Cache {
    store: Store,
    prefix: Arc<str>,
}

#[derive(Clone)]
enum Store {
    Memory(Arc<MemoryCache>),
    Redis(RedisCache),
}

impl Cache {
    /// Redis when `REDIS_URL` is set, otherwise in process.
    pub fn from_url(redis_url: Option<&str>, prefix: &str) -> anyhow::Result<Cache> {
        let store = match redis_url {
            None => Store::Memory(Arc::new(MemoryCache::new(100_000))),
            Some(url) => Store::Redis(RedisCache::new(url)?),
        };
        Ok(Cache {
            store,
            prefix: prefix.into(),
        })
    }

    pub fn memory() -> Cache {
        Cache {
            store: Store::Memory(Arc::new(MemoryCache::new(100_000))),
            prefix: KEY_PREFIX.into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.store {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    /// Reads `key` (without the prefix); `None` on a miss or an error.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let key = format!("{}{key}", self.prefix);
        let span = tracing::info_span!(
            "cache.get",
            otel.kind = "client",
            db.system = self.kind(),
            cache.hit = tracing::field::Empty
        );
        let found = tracing::Instrument::instrument(
            async {
                match &self.store {
                    Store::Memory(m) => m.get(&key),
                    Store::Redis(r) => r.get(&key).await,
                }
            },
            span.clone(),
        )
        .await;
        span.record("cache.hit", found.is_some());
        found
    }

    /// Writes `key` with a time to live; errors are logged and ignored.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        let key = format!("{}{key}", self.prefix);
        let span = tracing::info_span!("cache.set", otel.kind = "client", db.system = self.kind());
        tracing::Instrument::instrument(
            async {
                match &self.store {
                    Store::Memory(m) => m.set(key, value.to_vec(), ttl),
                    Store::Redis(r) => r.set(&key, value, ttl).await,
                }
            },
            span,
        )
        .await
    }

    /// Removes `key`; errors are logged and ignored.
    pub async fn delete(&self, key: &str) {
        let key = format!("{}{key}", self.prefix);
        match &self.store {
            Store::Memory(m) => m.delete(&key),
            Store::Redis(r) => r.delete(&key).await,
        }
    }
}

/// A bounded in-process map with expiry.
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (Instant, Vec<u8>)>>,
    capacity: usize,
}

impl MemoryCache {
    pub fn new(capacity: usize) -> Self {
        MemoryCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<u8>)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut m = self.lock();
        match m.get(key) {
            Some((exp, v)) if *exp > Instant::now() => Some(v.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    fn set(&self, key: String, value: Vec<u8>, ttl: Duration) {
        let mut m = self.lock();
        if m.len() >= self.capacity && !m.contains_key(&key) {
            let now = Instant::now();
            m.retain(|_, (exp, _)| *exp > now);
            if m.len() >= self.capacity {
                // Still full of live entries: drop an arbitrary one.
                if let Some(k) = m.keys().next().cloned() {
                    m.remove(&k);
                }
            }
        }
        m.insert(key, (Instant::now() + ttl, value));
    }

    fn delete(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Redis through a lazily connecting, self-healing connection manager, with
/// a bound on every operation.
#[derive(Clone)]
pub struct RedisCache {
    conn: redis::aio::ConnectionManager,
    op_timeout: Duration,
}

impl RedisCache {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("REDIS_URL is invalid: {e}"))?;
        let op_timeout =
            Duration::from_millis(crate::config::env_parse("COLEND_CACHE_TIMEOUT_MS", 250u64)?);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("creating the Redis connection: {e}"))?;
        Ok(RedisCache { conn, op_timeout })
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.op_timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cache error; treated as a miss");
                None
            }
            Err(_) => {
                tracing::warn!("cache timed out; treated as a miss");
                None
            }
        }
    }

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.run::<Option<Vec<u8>>>(redis::cmd("GET").arg(key).clone())
            .await
            .flatten()
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        let ms = ttl.as_millis().max(1) as u64;
        let _: Option<()> = self
            .run(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .clone(),
            )
            .await;
    }

    async fn delete(&self, key: &str) {
        let _: Option<i64> = self.run(redis::cmd("DEL").arg(key).clone()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_cache_expires_and_bounds() {
        let c = Cache {
            store: Store::Memory(Arc::new(MemoryCache::new(2))),
            prefix: "t:".into(),
        };
        c.set("a", b"1", Duration::from_secs(60)).await;
        assert_eq!(c.get("a").await.as_deref(), Some(&b"1"[..]));
        c.set("b", b"2", Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(c.get("b").await, None);
        c.set("c", b"3", Duration::from_secs(60)).await;
        c.set("d", b"4", Duration::from_secs(60)).await;
        if let Store::Memory(m) = &c.store {
            assert!(m.lock().len() <= 2);
        }
        c.delete("d").await;
        assert_eq!(c.get("d").await, None);
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_miss() {
        // Port 1 on loopback: nothing listens there.
        let c = Cache::from_url(Some("redis://127.0.0.1:1/"), KEY_PREFIX).unwrap();
        c.set("k", b"v", Duration::from_secs(1)).await;
        assert_eq!(c.get("k").await, None);
    }
}
