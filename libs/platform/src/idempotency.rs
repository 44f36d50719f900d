//! Idempotency by client request id.
//!
//! The key is claimed first, inside the same transaction as the effect, and
//! the response is stored with it before commit. A duplicate that arrives
//! while the first is still running is refused at once with ABORTED /
//! REQUEST_IN_FLIGHT; retried, it then gets the stored response. The same key with
//! a different request hash is refused with IDEMPOTENCY_KEY_REUSED.
//! Deterministic business refusals are stored too, so a replay gets the
//! same answer; transient failures are not, so a retry can succeed.
//!
//! Every service's schema has the table:
//! `idempotency_keys(scope, request_id, request_hash, outcome, response, created_at)`.
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use futures::future::BoxFuture;
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

/// Hash of a request's canonical protobuf encoding.
pub fn request_hash<M: Message>(m: &M) -> String {
    hex::encode(Sha256::digest(m.encode_to_vec()))
}

/// Stored outcome of an earlier call, if any.
enum Stored<M> {
    Ok(M),
    Err(ApiError),
    Pending,
}

async fn lookup<M: Message + Default>(
    conn: &mut AnyConnection,
    scope: &str,
    request_id: &str,
    hash: &str,
) -> ApiResult<Option<Stored<M>>> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT request_hash, outcome, response FROM idempotency_keys WHERE scope = $1 AND request_id = $2",
    )
    .bind(scope)
    .bind(request_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((stored_hash, outcome, response)) = row else {
        return Ok(None);
    };
    if stored_hash != hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    Ok(Some(match outcome.as_str() {
        "ok" => {
            let bytes = hex::decode(&response).map_err(ApiError::internal)?;
            Stored::Ok(M::decode(bytes.as_slice()).map_err(ApiError::internal)?)
        }
        "error" => {
            let (reason, message) = response.split_once('\n').unwrap_or((&response, ""));
            Stored::Err(error_from_stored(reason, message))
        }
        _ => Stored::Pending,
    }))
}

fn error_from_stored(reason: &str, message: &str) -> ApiError {
    let m = message.to_string();
    match reason {
        "QUOTA_EXCEEDED" => {
            let (limit, message) = message.split_once('\n').unwrap_or(("QUOTA", message));
            ApiError::limit(limit, message)
        }
        "NOT_WHITELISTED" => ApiError::NotWhitelisted(m),
        "INVALID_STATE" => ApiError::InvalidState(m),
        "NO_AGREEMENT" => ApiError::NoAgreement(m),
        "DUPLICATE_APPLICATION" => ApiError::DuplicateApplication(m),
        "NOT_FOUND" => ApiError::NotFound(m),
        _ => ApiError::InvalidState(m),
    }
}

/// Business refusals that a replay must return unchanged.
fn storable(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::QuotaExceeded { .. }
            | ApiError::InvalidState(_)
            | ApiError::NoAgreement(_)
            | ApiError::NotWhitelisted(_)
            | ApiError::DuplicateApplication(_)
    )
}

fn stored_message(e: &ApiError) -> String {
    match e {
        ApiError::NotFound(m) => m.clone(),
        ApiError::QuotaExceeded { limit, message } => format!("{limit}\n{message}"),
        other => other.to_string(),
    }
}

/// Runs `effect` at most once per (scope, request_id). The work runs in its
/// own task, so a client that cancels cannot abandon a transaction half-way.
pub async fn run<M, F>(
    db: &Db,
    scope: String,
    request_id: String,
    hash: String,
    effect: F,
) -> ApiResult<M>
where
    M: Message + Default + 'static,
    F: for<'t> FnOnce(&'t mut AnyConnection) -> BoxFuture<'t, ApiResult<M>> + Send + 'static,
{
    let db = db.clone();
    // Who is calling, for the audit log (the work below runs in its own task).
    let caller = crate::audit::current();
    let span = tracing::info_span!(
        "db.transaction",
        otel.kind = "client",
        db.system = if db.backend == crate::db::Backend::Postgres { "postgresql" } else { "sqlite" },
        db.namespace = %db.schema,
        db.operation = %scope.split(':').next().unwrap_or(""),
    );
    tokio::spawn(tracing::Instrument::instrument(
        async move { run_inner(db, scope, request_id, hash, effect, caller).await },
        span,
    ))
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("idempotent task failed: {e}")))?
}

async fn run_inner<M, F>(
    db: Db,
    scope: String,
    request_id: String,
    hash: String,
    effect: F,
    caller: Option<(crate::auth::Claims, String)>,
) -> ApiResult<M>
where
    M: Message + Default + 'static,
    F: for<'t> FnOnce(&'t mut AnyConnection) -> BoxFuture<'t, ApiResult<M>> + Send + 'static,
{
    {
        let mut conn = db.pool.acquire().await?;
        match lookup::<M>(&mut conn, &scope, &request_id, &hash).await? {
            Some(Stored::Ok(m)) => return Ok(m),
            Some(Stored::Err(e)) => return Err(e),
            Some(Stored::Pending) => return Err(ApiError::RequestInFlight),
            None => {}
        }
    }
    // A duplicate of a request still being worked on is told so at once
    // (ABORTED, REQUEST_IN_FLIGHT): in this process by the in-flight set,
    // across replicas by a transaction-scoped advisory lock on PostgreSQL.
    let Some(_in_flight) = InFlight::claim(db.instance, &scope, &request_id) else {
        return Err(ApiError::RequestInFlight);
    };
    let now = crate::time::now_millis();
    let mut tx = db.pool.begin().await?;
    if db.backend == crate::db::Backend::Postgres {
        let (got,): (i64,) = sqlx::query_as(
            "SELECT CASE WHEN pg_try_advisory_xact_lock(hashtextextended($1, 0)) THEN 1 ELSE 0 END::bigint",
        )
        .bind(format!("{}\n{scope}\n{request_id}", db.schema))
        .fetch_one(&mut *tx)
        .await?;
        if got == 0 {
            return Err(ApiError::RequestInFlight);
        }
    }
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (scope, request_id, request_hash, outcome, response, created_at) \
         VALUES ($1, $2, $3, 'pending', '', $4)",
    )
    .bind(&scope)
    .bind(&request_id)
    .bind(&hash)
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = claimed {
        drop(tx);
        if Db::is_unique_violation(&e) {
            let mut conn = db.pool.acquire().await?;
            return match lookup::<M>(&mut conn, &scope, &request_id, &hash).await? {
                Some(Stored::Ok(m)) => Ok(m),
                Some(Stored::Err(e)) => Err(e),
                _ => Err(ApiError::RequestInFlight),
            };
        }
        return Err(e.into());
    }
    match effect(&mut tx).await {
        Ok(resp) => {
            let entry =
                crate::audit::Entry::for_call(caller.as_ref(), &scope, &request_id, "ALLOWED", "");
            crate::audit::append(&mut tx, &entry).await?;
            sqlx::query(
                "UPDATE idempotency_keys SET outcome = 'ok', response = $1 WHERE scope = $2 AND request_id = $3",
            )
            .bind(hex::encode(resp.encode_to_vec()))
            .bind(&scope)
            .bind(&request_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(resp)
        }
        Err(e) => {
            tx.rollback().await.ok();
            if storable(&e) {
                sqlx::query(
                    "INSERT INTO idempotency_keys (scope, request_id, request_hash, outcome, response, created_at) \
                     VALUES ($1, $2, $3, 'error', $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(&scope)
                .bind(&request_id)
                .bind(&hash)
                .bind(format!("{}\n{}", e.reason(), stored_message(&e)))
                .bind(now)
                .execute(&db.pool)
                .await?;
                let entry = crate::audit::Entry::for_call(
                    caller.as_ref(),
                    &scope,
                    &request_id,
                    "REFUSED",
                    &format!("{}: {e}", e.reason()),
                );
                crate::audit::append_alone(&db, &entry).await?;
            }
            Err(e)
        }
    }
}

/// Keys being worked on in this process.
struct InFlight(String);

fn in_flight() -> &'static std::sync::Mutex<std::collections::HashSet<String>> {
    static SET: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    SET.get_or_init(Default::default)
}

impl InFlight {
    fn claim(instance: u64, scope: &str, request_id: &str) -> Option<InFlight> {
        let key = format!("{instance}\n{scope}\n{request_id}");
        let fresh = in_flight()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        // (A guard is made only when the key was free: dropping one frees it.)
        if fresh { Some(InFlight(key)) } else { None }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        in_flight()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// The portable DDL of the idempotency table, for each service's first migration.
pub const TABLE_DDL: &str = "CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
)";

/// Deletes keys older than the retention (`COLEND_IDEMPOTENCY_RETENTION_HOURS`,
/// default 24) every hour in the background. A request id older than that
/// is treated as new.
pub fn spawn_retention(db: &Db) -> anyhow::Result<()> {
    let hours: i64 = crate::config::env_parse("COLEND_IDEMPOTENCY_RETENTION_HOURS", 24)?;
    anyhow::ensure!(
        hours > 0,
        "COLEND_IDEMPOTENCY_RETENTION_HOURS must be positive"
    );
    let db = db.clone();
    tokio::spawn(async move {
        loop {
            let cutoff = crate::time::now_millis() - hours * 3_600_000;
            match sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(cutoff)
                .execute(&db.pool)
                .await
            {
                Ok(r) if r.rows_affected() > 0 => {
                    tracing::info!(
                        deleted = r.rows_affected(),
                        "expired idempotency keys removed"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "removing expired idempotency keys failed"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(3_600)).await;
        }
    });
    Ok(())
}
