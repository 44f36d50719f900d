//! Idempotency by client request id.
//!
//! The key is claimed first, inside the same transaction as the effect, and
//! the response is stored with it before commit. A duplicate that arrives
//! while the first is still running is refused at once with ABORTED /
//! REQUEST_IN_FLIGHT; retried, it then gets the stored response. The same key with
//! a different request hash is refused with IDEMPOTENCY_KEY_REUSED.
//! Final business refusals (decided by reason code, [`FINAL_REASONS`]) are
//! stored too, in the same transaction as the claim, so a replay gets the
//! same answer; transient failures and missing set-up are not, so a retry
//! can succeed.
//!
//! Every service's schema has the table
//! `idempotency_keys(scope, request_id, request_hash, outcome, response, created_at)`,
//! indexed by `created_at` for the retention purge; its DDL is the
//! platform's (`libs/platform/migrations/0002_audit_idempotency.sql`, applied
//! by [`crate::schema`]).
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

impl<M> Stored<M> {
    /// What the caller is told: the stored answer, or REQUEST_IN_FLIGHT
    /// while the first call is still being worked on.
    fn answer(self) -> ApiResult<M> {
        match self {
            Stored::Ok(m) => Ok(m),
            Stored::Err(e) => Err(e),
            Stored::Pending => Err(ApiError::RequestInFlight),
        }
    }
}

/// The answer for a key that could not be claimed: stored earlier, or (not
/// yet visible) being worked on by another replica. Ends the transaction.
async fn replay<M: Message + Default>(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    scope: &str,
    request_id: &str,
    hash: &str,
) -> ApiResult<M> {
    let stored = lookup::<M>(&mut tx, scope, request_id, hash).await;
    tx.rollback().await.ok();
    stored?.map_or(Err(ApiError::RequestInFlight), Stored::answer)
}

/// The span of a transaction made for `operation` (an RPC's name).
pub fn transaction_span(db: &Db, operation: &str) -> tracing::Span {
    tracing::info_span!(
        "db.transaction",
        otel.kind = "client",
        db.system = if db.backend == crate::db::Backend::Postgres { "postgresql" } else { "sqlite" },
        db.namespace = %db.schema,
        db.operation = %operation,
        db.batch.size = tracing::field::Empty,
    )
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
    decode(&stored_hash, hash, &outcome, &response).map(Some)
}

/// What a stored key says to a request with `hash`.
fn decode<M: Message + Default>(
    stored_hash: &str,
    hash: &str,
    outcome: &str,
    response: &str,
) -> ApiResult<Stored<M>> {
    if stored_hash != hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    Ok(match outcome {
        "ok" => {
            let bytes = hex::decode(response).map_err(ApiError::internal)?;
            Stored::Ok(M::decode(bytes.as_slice()).map_err(ApiError::internal)?)
        }
        "error" => {
            let (reason, message) = response.split_once('\n').unwrap_or((response, ""));
            Stored::Err(error_from_stored(reason, message))
        }
        _ => Stored::Pending,
    })
}

fn error_from_stored(reason: &str, message: &str) -> ApiError {
    let m = message.to_string();
    match reason {
        "QUOTA_EXCEEDED" => {
            let (limit, message) = message.split_once('\n').unwrap_or(("QUOTA", message));
            ApiError::limit(limit, message)
        }
        "NOT_WHITELISTED" => ApiError::NotWhitelisted(m),
        // Stored by a version that held it final: replayed whole.
        "CURRENCY_MISMATCH" => {
            let (expected, message) = message.split_once('\n').unwrap_or(("", message));
            ApiError::currency_mismatch(expected, message)
        }
        "INVALID_STATE" => ApiError::InvalidState(m),
        "NO_AGREEMENT" => ApiError::NoAgreement(m),
        "DUPLICATE_APPLICATION" => ApiError::DuplicateApplication(m),
        "NOT_FOUND" => ApiError::NotFound(m),
        "ALREADY_EXISTS" => ApiError::AlreadyExists(m),
        "BACK_VALUED" => ApiError::BackValued(m),
        // A reason stored by an older version that is no longer final.
        other => ApiError::internal(anyhow::anyhow!("stored refusal with reason {other}: {m}")),
    }
}

/// The reasons of final business refusals: a replay must return them
/// unchanged. BACK_VALUED is one: a loan's last repayment date only moves
/// forward, so the same repayment is refused the same way (rebooked with a
/// later value date, it is a corrected request, under a new id). Every other
/// error (invalid input, which never reached the effect; a missing set-up
/// such as NO_AGREEMENT, NOT_WHITELISTED or NOT_READY, which can become true;
/// CURRENCY_MISMATCH, which can stop being true: an agreement or the
/// reference data can move to the request's currency, and an agreement
/// version or reference data refused while amounts were reserved or
/// outstanding is accepted once they are repaid or released; a dependency or
/// database that is away; an internal fault) is not stored, so a retry with
/// the same request id runs again.
pub const FINAL_REASONS: &[&str] = &[
    "QUOTA_EXCEEDED",
    "INVALID_STATE",
    "DUPLICATE_APPLICATION",
    "ALREADY_EXISTS",
    "BACK_VALUED",
];

/// Decided by reason code: see [`FINAL_REASONS`].
fn storable(e: &ApiError) -> bool {
    FINAL_REASONS.contains(&e.reason())
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
    let span = transaction_span(&db, scope.split(':').next().unwrap_or(""));
    tokio::spawn(tracing::Instrument::instrument(
        async move { run_inner(db, scope, request_id, hash, effect, caller).await },
        span,
    ))
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("idempotent task failed: {e}")))?
}

/// Stores `answer` under the key and audits it, for a call whose only effect
/// is its answer (a result served from cache), and returns what the key
/// holds: `answer` the first time, the stored answer on a replay.
///
/// Nothing else is written, so the transaction does not wait for the disk
/// flush (PostgreSQL `synchronous_commit = off` for it; SQLite
/// `synchronous = NORMAL` for it). The record is atomic and consistent; a
/// crash of the database's host, not of the service, can lose the last
/// fraction of a second of such records, and a retry then records the
/// answer again. Every other write waits for the flush.
pub async fn record<M>(
    db: &Db,
    scope: String,
    request_id: String,
    hash: String,
    answer: M,
) -> ApiResult<M>
where
    M: Message + Default + 'static,
{
    let Some(in_flight) = InFlight::claim(db, &scope, &request_id) else {
        return Err(ApiError::RequestInFlight);
    };
    let db = db.clone();
    let caller = crate::audit::current();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let postgres = db.backend == crate::db::Backend::Postgres;
        let mut conn = db.pool.acquire().await?;
        if !postgres {
            sqlx::query("PRAGMA synchronous = NORMAL")
                .execute(&mut *conn)
                .await?;
        }
        let recorded = record_in(&db, &mut conn, &scope, &request_id, &hash, answer, caller).await;
        if !postgres {
            // Back to flushing every commit; a connection that cannot be is closed.
            if sqlx::query("PRAGMA synchronous = FULL")
                .execute(&mut *conn)
                .await
                .is_err()
            {
                drop(conn.detach());
            }
        }
        recorded
    })
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("recording task failed: {e}")))?
}

async fn record_in<M: Message + Default>(
    db: &Db,
    conn: &mut AnyConnection,
    scope: &str,
    request_id: &str,
    hash: &str,
    answer: M,
    caller: Option<(crate::auth::Claims, String)>,
) -> ApiResult<M> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let claimed = Claim {
        outcome: "ok",
        response: hex::encode(answer.encode_to_vec()),
        relaxed: true,
    };
    if !claim(
        db,
        &mut tx,
        scope,
        request_id,
        hash,
        crate::time::now_millis(),
        claimed,
    )
    .await?
    {
        return replay(tx, scope, request_id, hash).await;
    }
    let entry = crate::audit::Entry::for_call(caller.as_ref(), scope, request_id, "ALLOWED", "");
    crate::audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok(answer)
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
    // A duplicate of a request still being worked on is told so at once
    // (ABORTED, REQUEST_IN_FLIGHT): in this process by the in-flight set,
    // across replicas by a transaction-scoped advisory lock on PostgreSQL.
    let Some(_in_flight) = InFlight::claim(&db, &scope, &request_id) else {
        return Err(ApiError::RequestInFlight);
    };
    let now = crate::time::now_millis();
    let mut tx = db.pool.begin().await?;
    if !claim(
        &db,
        &mut tx,
        &scope,
        &request_id,
        &hash,
        now,
        Claim::pending(),
    )
    .await?
    {
        return replay(tx, &scope, &request_id, &hash).await;
    }
    // The effect runs under a savepoint: a final refusal rolls back to it
    // and is stored in this same transaction, under the claim (and, on
    // PostgreSQL, the key's advisory lock), so no other replica can see the
    // key free or act on the request between the refusal and its record.
    sqlx::query("SAVEPOINT colend_effect")
        .execute(&mut *tx)
        .await?;
    let outcome = effect(&mut tx).await;
    let (kind, response, audit) = match &outcome {
        Ok(resp) => (
            "ok",
            hex::encode(resp.encode_to_vec()),
            ("ALLOWED", String::new()),
        ),
        Err(e) if storable(e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT colend_effect")
                .execute(&mut *tx)
                .await?;
            (
                "error",
                format!("{}\n{}", e.reason(), stored_message(e)),
                ("REFUSED", format!("{}: {e}", e.reason())),
            )
        }
        Err(_) => {
            // Transient or unexpected: nothing is kept, the key stays free
            // and a retry with the same request id runs again.
            tx.rollback().await.ok();
            return outcome;
        }
    };
    let entry =
        crate::audit::Entry::for_call(caller.as_ref(), &scope, &request_id, audit.0, &audit.1);
    crate::audit::append(&mut tx, &entry).await?;
    sqlx::query(
        "UPDATE idempotency_keys SET outcome = $1, response = $2 WHERE scope = $3 AND request_id = $4",
    )
    .bind(kind)
    .bind(response)
    .bind(&scope)
    .bind(&request_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    outcome
}

/// Runs `work` at most once per (scope, request_id), for work that commits
/// in steps of its own (a run over many rows, each in its own transaction)
/// and so cannot run inside the key's transaction as [`run`] does.
///
/// - A stored answer is replayed; the key reused with other content is
///   IDEMPOTENCY_KEY_REUSED.
/// - While the work runs the key is held: in this process by the in-flight
///   set, across replicas (PostgreSQL) by a transaction-scoped advisory lock
///   on a connection of its own, taken before the stored answer is looked
///   up and kept until the answer is stored; a duplicate meanwhile is
///   refused with REQUEST_IN_FLIGHT.
/// - `work`'s answer is stored with the key and audited once it is done.
///   A failure stores nothing: the steps already committed stay, and a
///   retry under the same id runs again, so `work` must be resumable (it
///   redoes nothing already done) and its answer describes what that run
///   did.
///
/// The work runs in its own task, so a cancelled client cannot abandon it.
pub async fn run_steps<M, F, Fut>(
    db: &Db,
    scope: String,
    request_id: String,
    hash: String,
    work: F,
) -> ApiResult<M>
where
    M: Message + Default + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ApiResult<M>> + Send + 'static,
{
    let db = db.clone();
    let caller = crate::audit::current();
    let span = transaction_span(&db, scope.split(':').next().unwrap_or(""));
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let Some(_in_flight) = InFlight::claim(&db, &scope, &request_id) else {
                return Err(ApiError::RequestInFlight);
            };
            // PostgreSQL: the key held across replicas for the whole run (a
            // lock of its own, not the claim's, which is taken below).
            let mut held = None;
            if db.backend == crate::db::Backend::Postgres {
                let mut tx = db.pool.begin().await?;
                let (free,): (bool,) =
                    sqlx::query_as("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                        .bind(format!("{}\n{scope}\n{request_id}\nsteps", db.schema))
                        .fetch_one(&mut *tx)
                        .await?;
                if !free {
                    tx.rollback().await.ok();
                    return Err(ApiError::RequestInFlight);
                }
                held = Some(tx);
            }
            let stored = match held.as_mut() {
                Some(tx) => lookup::<M>(tx, &scope, &request_id, &hash).await?,
                None => {
                    let mut conn = db.pool.acquire().await?;
                    lookup::<M>(&mut conn, &scope, &request_id, &hash).await?
                }
            };
            let answer = match stored {
                Some(stored) => stored.answer(),
                None => match work().await {
                    Ok(answer) => {
                        store_answer(&db, &scope, &request_id, &hash, answer, caller).await
                    }
                    Err(e) => Err(e),
                },
            };
            if let Some(tx) = held {
                tx.rollback().await.ok();
            }
            answer
        },
        span,
    ))
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("idempotent task failed: {e}")))?
}

/// Stores `answer` under the key, audited, in a transaction of its own; the
/// answer stored already, when the key was claimed meanwhile.
async fn store_answer<M: Message + Default>(
    db: &Db,
    scope: &str,
    request_id: &str,
    hash: &str,
    answer: M,
    caller: Option<(crate::auth::Claims, String)>,
) -> ApiResult<M> {
    let mut tx = db.pool.begin().await?;
    let claimed = Claim {
        outcome: "ok",
        response: hex::encode(answer.encode_to_vec()),
        relaxed: false,
    };
    let now = crate::time::now_millis();
    if !claim(db, &mut tx, scope, request_id, hash, now, claimed).await? {
        return replay(tx, scope, request_id, hash).await;
    }
    let entry = crate::audit::Entry::for_call(caller.as_ref(), scope, request_id, "ALLOWED", "");
    crate::audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok(answer)
}

/// What a claimed key holds until the call's outcome is stored.
struct Claim {
    outcome: &'static str,
    response: String,
    /// PostgreSQL: the transaction commits without waiting for the flush
    /// (set in the same statement, saving a round trip).
    relaxed: bool,
}

impl Claim {
    fn pending() -> Claim {
        Claim {
            outcome: "pending",
            response: String::new(),
            relaxed: false,
        }
    }
}

/// Claims the key in the caller's transaction, in one statement: false when
/// it is already stored, or (PostgreSQL) when another replica holds its
/// advisory lock.
async fn claim(
    db: &Db,
    tx: &mut AnyConnection,
    scope: &str,
    request_id: &str,
    hash: &str,
    now: i64,
    c: Claim,
) -> ApiResult<bool> {
    const CLAIM: &str = "INSERT INTO idempotency_keys (scope, request_id, request_hash, outcome, response, created_at) \
         SELECT $1, $2, $3, $4, $5, $6 WHERE pg_try_advisory_xact_lock(hashtextextended($7, 0)) \
         ON CONFLICT DO NOTHING";
    const CLAIM_RELAXED: &str = "INSERT INTO idempotency_keys (scope, request_id, request_hash, outcome, response, created_at) \
         SELECT $1, $2, $3, $4, $5, $6 WHERE pg_try_advisory_xact_lock(hashtextextended($7, 0)) \
         AND set_config('synchronous_commit', 'off', true) = 'off' ON CONFLICT DO NOTHING";
    const CLAIM_SQLITE: &str = "INSERT INTO idempotency_keys (scope, request_id, request_hash, outcome, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
    let postgres = db.backend == crate::db::Backend::Postgres;
    let sql = match (postgres, c.relaxed) {
        (true, true) => CLAIM_RELAXED,
        (true, false) => CLAIM,
        (false, _) => CLAIM_SQLITE,
    };
    let mut q = sqlx::query(sql)
        .bind(scope)
        .bind(request_id)
        .bind(hash)
        .bind(c.outcome)
        .bind(c.response)
        .bind(now);
    if postgres {
        q = q.bind(format!("{}\n{scope}\n{request_id}", db.schema));
    }
    Ok(q.execute(&mut *tx).await?.rows_affected() == 1)
}

/// One request of a group commit ([`run_batch`]).
#[derive(Clone)]
pub struct Batched<R> {
    pub scope: String,
    pub request_id: String,
    pub hash: String,
    /// Who called, for the audit log ([`crate::audit::current`]).
    pub caller: Option<(crate::auth::Claims, String)>,
    pub request: R,
}

/// Runs many requests in one transaction, with one commit (one fsync) for
/// all of them: a group commit. Each request is still taken at most once
/// per key:
/// - a stored response or refusal is replayed, and a key reused with other
///   content is refused with IDEMPOTENCY_KEY_REUSED;
/// - a key another replica is working on is refused with REQUEST_IN_FLIGHT
///   (a transaction-scoped advisory lock on PostgreSQL);
/// - `effect` gets the fresh requests, in order, and returns one outcome for
///   each. Each outcome is stored with its key and audited (ALLOWED, or
///   REFUSED for a business refusal) in the same transaction.
///
/// Each answer comes with whether it was replayed from an earlier call (a
/// stored response or refusal), so the caller can tell the caller of a
/// replay what has happened since (a reservation voided meanwhile).
///
/// An `Err` from `effect` or from the database fails the whole batch, and
/// nothing of it is written. The caller holds each key's in-process claim
/// ([`InFlight::claim`]) and runs this where a cancelled client cannot
/// abandon it (a task of its own).
pub async fn run_batch<R, M, F>(
    db: &Db,
    items: &[Batched<R>],
    effect: F,
) -> ApiResult<Vec<(ApiResult<M>, bool)>>
where
    R: Clone,
    M: Message + Default,
    F: for<'t> FnOnce(&'t mut AnyConnection, Vec<R>) -> BoxFuture<'t, ApiResult<Vec<ApiResult<M>>>>,
{
    let mut results: Vec<Option<ApiResult<M>>> = items.iter().map(|_| None).collect();
    let mut replayed = vec![false; items.len()];
    let mut tx = db.pool.begin().await?;
    if db.backend == crate::db::Backend::Postgres {
        let keys: Vec<String> = items
            .iter()
            .map(|b| format!("{}\n{}\n{}", db.schema, b.scope, b.request_id))
            .collect();
        let rows: Vec<String> = (1..=keys.len()).map(|i| format!("(${i})")).collect();
        let sql = format!(
            "SELECT k FROM (VALUES {}) AS v(k) WHERE NOT pg_try_advisory_xact_lock(hashtextextended(k, 0))",
            rows.join(", ")
        );
        let mut q = sqlx::query_as::<_, (String,)>(&sql);
        for k in &keys {
            q = q.bind(k.clone());
        }
        let busy: std::collections::HashSet<String> = q
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(k,)| k)
            .collect();
        for (k, slot) in keys.iter().zip(results.iter_mut()) {
            if busy.contains(k) {
                *slot = Some(Err(ApiError::RequestInFlight));
            }
        }
    }
    let sql = format!(
        "SELECT scope, request_id, request_hash, outcome, response FROM idempotency_keys \
         WHERE (scope, request_id) IN (VALUES {})",
        crate::db::placeholders(&tx, items.len(), 2, 1)
    );
    let mut q = sqlx::query_as::<_, (String, String, String, String, String)>(&sql);
    for b in items {
        q = q.bind(b.scope.clone()).bind(b.request_id.clone());
    }
    let stored: std::collections::HashMap<(String, String), (String, String, String)> = q
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(scope, id, h, o, r)| ((scope, id), (h, o, r)))
        .collect();
    for ((b, slot), was) in items
        .iter()
        .zip(results.iter_mut())
        .zip(replayed.iter_mut())
    {
        if slot.is_some() {
            continue;
        }
        if let Some((h, o, r)) = stored.get(&(b.scope.clone(), b.request_id.clone())) {
            *slot = Some(decode::<M>(h, &b.hash, o, r).and_then(Stored::answer));
            *was = true;
        }
    }
    let fresh: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_none()).collect();
    if !fresh.is_empty() {
        let requests = fresh.iter().map(|&i| items[i].request.clone()).collect();
        let outcomes = effect(&mut tx, requests).await?;
        if outcomes.len() != fresh.len() {
            return Err(ApiError::internal(anyhow::anyhow!(
                "a batch effect gave {} outcomes for {} requests",
                outcomes.len(),
                fresh.len()
            )));
        }
        let now = crate::time::now_millis();
        let mut keys = Vec::new();
        let mut entries = Vec::new();
        for (&i, outcome) in fresh.iter().zip(outcomes) {
            let b = &items[i];
            let (kind, response, audit) = match &outcome {
                Ok(m) => (
                    "ok",
                    hex::encode(m.encode_to_vec()),
                    ("ALLOWED", String::new()),
                ),
                Err(e) if storable(e) => (
                    "error",
                    format!("{}\n{}", e.reason(), stored_message(e)),
                    ("REFUSED", format!("{}: {e}", e.reason())),
                ),
                Err(_) => {
                    results[i] = Some(outcome);
                    continue;
                }
            };
            keys.push((i, kind, response));
            entries.push(crate::audit::Entry::for_call(
                b.caller.as_ref(),
                &b.scope,
                &b.request_id,
                audit.0,
                &audit.1,
            ));
            results[i] = Some(outcome);
        }
        for chunk in keys.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO idempotency_keys (scope, request_id, request_hash, outcome, response, created_at) \
                 VALUES {}",
                crate::db::placeholders(&tx, chunk.len(), 6, 1)
            );
            let mut q = sqlx::query(&sql);
            for (i, kind, response) in chunk {
                let b = &items[*i];
                q = q
                    .bind(b.scope.clone())
                    .bind(b.request_id.clone())
                    .bind(b.hash.clone())
                    .bind(kind.to_string())
                    .bind(response.clone())
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        crate::audit::append_many(&mut tx, &entries).await?;
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .zip(replayed)
        .map(|(r, replayed)| (r.unwrap_or(Err(ApiError::RequestInFlight)), replayed))
        .collect())
}

/// Rows a multi-row INSERT of keys carries at most (6 parameters each).
const ROWS_PER_INSERT: usize = 500;

/// A key being worked on in this process; dropping it frees the key.
pub struct InFlight(String);

fn in_flight() -> &'static std::sync::Mutex<std::collections::HashSet<String>> {
    static SET: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    SET.get_or_init(Default::default)
}

impl InFlight {
    /// Claims (scope, request_id) in this process; `None` when a call with
    /// the key is already being worked on.
    pub fn claim(db: &Db, scope: &str, request_id: &str) -> Option<InFlight> {
        let key = format!("{}\n{scope}\n{request_id}", db.instance);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// CURRENCY_MISMATCH can stop being true (the set-up moves to the
    /// request's currency, or what was reserved is repaid): it is not
    /// stored, like NOT_READY, and a retry with the same id runs again.
    #[test]
    fn a_currency_mismatch_is_not_stored() {
        let e = ApiError::currency_mismatch("CNY", "the agreement is in CNY, the principal in USD");
        assert!(!storable(&e));
        assert!(!storable(&ApiError::NotReady("no reference data".into())));
        assert!(storable(&ApiError::limit("PARTNER_TOTAL_QUOTA", "full")));
    }

    /// A CURRENCY_MISMATCH stored by a version that held it final still
    /// replays with its reason, message and the currency it expected.
    #[test]
    fn a_currency_mismatch_stored_before_replays_whole() {
        let stored = "CURRENCY_MISMATCH\nCNY\nthe loan is in CNY, the amount in USD";
        let (reason, message) = stored.split_once('\n').unwrap();
        match error_from_stored(reason, message) {
            ApiError::CurrencyMismatch { expected, message } => {
                assert_eq!(expected, "CNY");
                assert_eq!(message, "the loan is in CNY, the amount in USD");
            }
            other => panic!("{other:?}"),
        }
    }
}
