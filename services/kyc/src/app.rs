//! KYC use cases.
use crate::domain::{self, ListedName, Rules};
use colend_contracts::kyc::v1 as pb;
use colend_core::BlindIndexKey;
use colend_platform::config::env_parse;
use colend_platform::time::{Tz, business_today, now_millis, timestamp};
use colend_platform::{ApiError, ApiResult, Cache, Db, idempotency};
use prost::Message;
use sqlx::Row;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Settings {
    pub rules: Rules,
    /// How long a check result is served from cache (`COLEND_KYC_CACHE_TTL_SECS`, default 86400).
    pub cache_ttl: Duration,
    /// How often the watchlist snapshot is reloaded (`COLEND_KYC_WATCHLIST_REFRESH_SECS`, default 5).
    pub refresh: Duration,
    /// The zone of "today" for ages (`COLEND_KYC_TIME_ZONE`, an IANA name; default Asia/Shanghai).
    pub time_zone: Tz,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Settings {
            rules: Rules {
                min_age: env_parse("COLEND_KYC_MIN_AGE", 18)?,
                match_threshold: env_parse("COLEND_KYC_MATCH_THRESHOLD", 850)?,
            },
            cache_ttl: Duration::from_secs(env_parse("COLEND_KYC_CACHE_TTL_SECS", 86_400u64)?),
            refresh: Duration::from_secs(env_parse("COLEND_KYC_WATCHLIST_REFRESH_SECS", 5u64)?),
            time_zone: colend_platform::time::time_zone_env(
                "COLEND_KYC_TIME_ZONE",
                "Asia/Shanghai",
            )?,
        })
    }
}

struct Snapshot {
    version: String,
    entries: Arc<Vec<ListedName>>,
}

/// The subject of a check.
pub struct CheckInput {
    pub partner_id: String,
    pub person_name: String,
    pub resident_id: String,
    pub mobile: String,
    pub business_name: String,
    pub credit_code: String,
}

#[derive(Clone)]
pub struct Kyc {
    db: Db,
    cache: Cache,
    key: BlindIndexKey,
    settings: Settings,
    watchlist: Arc<RwLock<Snapshot>>,
}

impl Kyc {
    pub fn new(db: Db, cache: Cache, key: BlindIndexKey, settings: Settings) -> Self {
        Kyc {
            db,
            cache,
            key,
            settings,
            watchlist: Arc::new(RwLock::new(Snapshot {
                version: String::new(),
                entries: Arc::new(Vec::new()),
            })),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Reloads the watchlist snapshot from storage.
    pub async fn refresh_watchlist(&self) -> anyhow::Result<()> {
        let rows =
            sqlx::query("SELECT kind, name, normalized_name, created_at FROM watchlist_entries")
                .fetch_all(&self.db.pool)
                .await?;
        let mut max = 0i64;
        let entries: Vec<ListedName> = rows
            .iter()
            .map(|r| {
                max = max.max(r.get::<i64, _>(3));
                ListedName {
                    kind: r.get::<i64, _>(0) as i32,
                    name: r.get(1),
                    normalized: r.get(2),
                }
            })
            .collect();
        let version = format!("{}-{}", entries.len(), max);
        let mut w = self.watchlist.write().unwrap_or_else(|p| p.into_inner());
        w.version = version;
        w.entries = Arc::new(entries);
        Ok(())
    }

    /// Keeps the snapshot fresh in the background.
    pub fn spawn_refresher(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(this.settings.refresh).await;
                if let Err(e) = this.refresh_watchlist().await {
                    tracing::warn!(error = %e, "watchlist refresh failed");
                }
            }
        });
    }

    fn snapshot(&self) -> (String, Arc<Vec<ListedName>>) {
        let w = self.watchlist.read().unwrap_or_else(|p| p.into_inner());
        (w.version.clone(), w.entries.clone())
    }

    /// Checks a borrower; a repeat within the cache window is served from cache.
    pub async fn check(
        &self,
        request_id: String,
        hash: String,
        input: CheckInput,
    ) -> ApiResult<pb::KycCheck> {
        let subject_key = self.key.index(
            "kyc-subject",
            &[
                &input.resident_id,
                &input.credit_code,
                &input.person_name,
                &input.business_name,
                &input.mobile,
            ],
        );
        let (version, lists) = self.snapshot();
        // The cache key is a blind index: no personal data in clear.
        let cache_key = format!("kyc:v1:{}:{}:{}", input.partner_id, version, subject_key);
        let cached = self
            .cache
            .get(&cache_key)
            .await
            .and_then(|b| pb::KycCheck::decode(b.as_slice()).ok());
        let rules = self.settings.rules.clone();
        let zone = self.settings.time_zone;
        let partner = input.partner_id.clone();
        let scope = format!("CheckBorrower:{partner}");
        if let Some(mut c) = cached {
            // A repeat: its only effect is the answer, recorded under its request id.
            c.from_cache = true;
            return idempotency::record(&self.db, scope, request_id, hash, c).await;
        }
        let result = idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let subject = domain::Subject {
                    person_name: &input.person_name,
                    resident_id: &input.resident_id,
                    mobile: &input.mobile,
                    business_name: &input.business_name,
                    credit_code: &input.credit_code,
                };
                let f = domain::check(&subject, business_today(zone), &lists, &rules);
                let now = now_millis();
                let check = pb::KycCheck {
                    check_id: format!("kyc_{}", uuid::Uuid::now_v7().simple()),
                    outcome: if f.passed() {
                        pb::KycOutcome::Passed
                    } else {
                        pb::KycOutcome::Rejected
                    } as i32,
                    reason_codes: f.reason_codes.clone(),
                    age: f.age,
                    person_region_code: f.person_region.clone(),
                    business_region_code: f.business_region.clone(),
                    watchlist_hits: f
                        .hits
                        .iter()
                        .map(|h| pb::WatchlistHit {
                            kind: h.kind,
                            listed_name: h.listed_name.clone(),
                            subject: h.subject.to_string(),
                            score: h.score,
                        })
                        .collect(),
                    from_cache: false,
                    checked_at: Some(timestamp(now)),
                };
                sqlx::query(
                    "INSERT INTO kyc_checks (check_id, partner_id, subject_key, outcome, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&check.check_id)
                .bind(&input.partner_id)
                .bind(&subject_key)
                .bind(if f.passed() { "PASSED" } else { "REJECTED" })
                .bind(hex::encode(check.encode_to_vec()))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Ok(check)
            })
        })
        .await?;
        self.cache
            .set(&cache_key, &result.encode_to_vec(), self.settings.cache_ttl)
            .await;
        Ok(result)
    }

    /// A stored check of the calling partner.
    pub async fn get_check(&self, partner_id: &str, check_id: &str) -> ApiResult<pb::KycCheck> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT body FROM kyc_checks WHERE check_id = $1 AND partner_id = $2")
                .bind(check_id)
                .bind(partner_id)
                .fetch_optional(&self.db.pool)
                .await?;
        let (body,) = row.ok_or_else(|| ApiError::NotFound("check".into()))?;
        let bytes = hex::decode(body).map_err(ApiError::internal)?;
        pb::KycCheck::decode(bytes.as_slice()).map_err(ApiError::internal)
    }

    pub async fn add_watchlist_entry(
        &self,
        request_id: String,
        hash: String,
        kind: i32,
        name: String,
        note: String,
    ) -> ApiResult<pb::WatchlistEntry> {
        let entry = idempotency::run(&self.db, "AddWatchlistEntry".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let now = now_millis();
                let entry = pb::WatchlistEntry {
                    entry_id: format!("wl_{}", uuid::Uuid::now_v7().simple()),
                    kind,
                    name: name.clone(),
                    note: note.clone(),
                    created_at: Some(timestamp(now)),
                };
                sqlx::query(
                    "INSERT INTO watchlist_entries (entry_id, kind, name, normalized_name, note, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&entry.entry_id)
                .bind(kind as i64)
                .bind(&name)
                .bind(domain::normalize_name(&name))
                .bind(&note)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Ok(entry)
            })
        })
        .await?;
        self.refresh_watchlist().await.map_err(ApiError::Internal)?;
        Ok(entry)
    }

    /// Watchlist entries in id order, keyset-paginated by entry id.
    pub async fn list_watchlist(
        &self,
        page_size: i64,
        after: &str,
    ) -> ApiResult<(Vec<pb::WatchlistEntry>, String)> {
        let rows = sqlx::query(
            "SELECT entry_id, kind, name, note, created_at FROM watchlist_entries WHERE entry_id > $1 ORDER BY entry_id LIMIT $2",
        )
        .bind(after)
        .bind(page_size + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let mut entries: Vec<pb::WatchlistEntry> = rows
            .iter()
            .map(|r| pb::WatchlistEntry {
                entry_id: r.get(0),
                kind: r.get::<i64, _>(1) as i32,
                name: r.get(2),
                note: r.get(3),
                created_at: Some(timestamp(r.get(4))),
            })
            .collect();
        let next = if entries.len() as i64 > page_size {
            entries.truncate(page_size as usize);
            entries
                .last()
                .map(|e| e.entry_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((entries, next))
    }
}
