//! The audit log: append-only and hash-chained, one per service schema.
//!
//! Every mutating call that takes effect is recorded in the same transaction
//! as the effect (by [`crate::idempotency::run`]); business refusals and
//! calls the authorization layer turns away are recorded too. A row says
//! who (caller class, subject, partner), what (the RPC), which resource (the
//! idempotency scope and request id), the outcome and why, and the trace id.
//! Each row's hash covers the previous row's hash and its own fields, so
//! changing, removing or inserting a row breaks the chain from there on;
//! [`verify`] (`colend audit verify <service>`) reports the first row that
//! does not hold. The tables (`audit_log`, `audit_head`) are the platform's
//! (`libs/platform/migrations/0002_audit_idempotency.sql`).
use crate::auth::Claims;
use crate::db::Db;
use crate::error::ApiResult;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// One audit row before it is chained.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub at: i64,
    pub caller_class: String,
    pub caller_subject: String,
    pub partner_id: String,
    pub action: String,
    pub resource: String,
    pub request_id: String,
    /// ALLOWED, REFUSED (a business refusal) or DENIED (not authorized).
    pub outcome: String,
    pub reason: String,
    pub trace_id: String,
}

tokio::task_local! {
    /// The caller and RPC of the call being served (set by the auth layer).
    pub static CURRENT: (Claims, String);
}

/// The caller and RPC of the call being served, if any.
pub fn current() -> Option<(Claims, String)> {
    CURRENT.try_with(|c| c.clone()).ok()
}

fn trace_id() -> String {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

impl Entry {
    /// An entry by `claims` (`None`: not authenticated) for `action`, now.
    pub fn new(
        claims: Option<&Claims>,
        action: &str,
        resource: &str,
        request_id: &str,
        outcome: &str,
        reason: &str,
    ) -> Entry {
        Entry {
            at: crate::time::now_millis(),
            caller_class: claims
                .map(|c| c.class.name())
                .unwrap_or("anonymous")
                .to_string(),
            caller_subject: claims.map(|c| c.subject.clone()).unwrap_or_default(),
            partner_id: claims
                .and_then(|c| c.partner_id.clone())
                .unwrap_or_default(),
            action: action.to_string(),
            resource: resource.to_string(),
            request_id: request_id.to_string(),
            outcome: outcome.to_string(),
            reason: reason.to_string(),
            trace_id: trace_id(),
        }
    }

    /// An entry for the call being served (`caller` from [`current`]; none
    /// when colend itself made the change in-process).
    pub fn for_call(
        caller: Option<&(Claims, String)>,
        resource: &str,
        request_id: &str,
        outcome: &str,
        reason: &str,
    ) -> Entry {
        match caller {
            Some((c, method)) => Entry::new(Some(c), method, resource, request_id, outcome, reason),
            None => {
                let action = resource.split(':').next().unwrap_or("");
                Entry {
                    caller_class: "internal".into(),
                    caller_subject: "in-process".into(),
                    ..Entry::new(None, action, resource, request_id, outcome, reason)
                }
            }
        }
    }

    fn digest(&self, seq: i64, prev: &str) -> String {
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(seq.to_le_bytes());
        h.update(self.at.to_le_bytes());
        for f in [
            &self.caller_class,
            &self.caller_subject,
            &self.partner_id,
            &self.action,
            &self.resource,
            &self.request_id,
            &self.outcome,
            &self.reason,
            &self.trace_id,
        ] {
            h.update((f.len() as u64).to_le_bytes());
            h.update(f.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Appends `e` in the caller's transaction. Appends are serialized on the
/// chain's head row, so the chain has no forks.
pub async fn append(tx: &mut AnyConnection, e: &Entry) -> ApiResult<()> {
    append_many(tx, std::slice::from_ref(e)).await
}

/// Rows a multi-row INSERT carries at most (13 parameters each).
const ROWS_PER_INSERT: usize = 200;

/// Appends `entries`, in order, in the caller's transaction: the head row is
/// moved once for all of them (a group commit's audit).
pub async fn append_many(tx: &mut AnyConnection, entries: &[Entry]) -> ApiResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    // Moving the head takes its row lock; the hash it returns is still the previous row's.
    let (last, mut prev): (i64, String) =
        sqlx::query_as("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
            .bind(entries.len() as i64)
            .fetch_one(&mut *tx)
            .await?;
    let mut seq = last - entries.len() as i64;
    let postgres = crate::db::Backend::of(tx) == crate::db::Backend::Postgres;
    let chunks = entries.len().div_ceil(ROWS_PER_INSERT);
    for (i, chunk) in entries.chunks(ROWS_PER_INSERT).enumerate() {
        let mut rows = Vec::with_capacity(chunk.len());
        for e in chunk {
            seq += 1;
            let hash = e.digest(seq, &prev);
            rows.push((seq, e, std::mem::replace(&mut prev, hash.clone()), hash));
        }
        let insert = format!(
            "INSERT INTO audit_log (seq, at, caller_class, caller_subject, partner_id, action, resource, request_id, \
             outcome, reason, trace_id, prev_hash, hash) VALUES {}",
            crate::db::placeholders(tx, chunk.len(), 13, 1)
        );
        // On PostgreSQL the last insert moves the head's hash in the same
        // statement (a data-modifying WITH), a round trip fewer.
        let last_on_postgres = postgres && i + 1 == chunks;
        let sql = if last_on_postgres {
            format!(
                "WITH appended AS ({insert}) UPDATE audit_head SET hash = ${} WHERE id = 1",
                chunk.len() * 13 + 1
            )
        } else {
            insert
        };
        let mut q = sqlx::query(&sql);
        for (seq, e, prev_hash, hash) in rows {
            q = q
                .bind(seq)
                .bind(e.at)
                .bind(e.caller_class.clone())
                .bind(e.caller_subject.clone())
                .bind(e.partner_id.clone())
                .bind(e.action.clone())
                .bind(e.resource.clone())
                .bind(e.request_id.clone())
                .bind(e.outcome.clone())
                .bind(e.reason.clone())
                .bind(e.trace_id.clone())
                .bind(prev_hash)
                .bind(hash);
        }
        if last_on_postgres {
            q = q.bind(prev.clone());
        }
        q.execute(&mut *tx).await?;
    }
    if !postgres {
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
            .bind(&prev)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Appends `e` in a transaction of its own.
pub async fn append_alone(db: &Db, e: &Entry) -> ApiResult<()> {
    let mut tx = db.pool.begin().await?;
    append(&mut tx, e).await?;
    tx.commit().await?;
    Ok(())
}

/// The result of checking a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every row holds; this many rows.
    Intact(i64),
    /// The first row that does not hold, and why.
    Broken { seq: i64, why: String },
}

/// Walks the chain from the first row.
pub async fn verify(db: &Db) -> ApiResult<Verdict> {
    let mut conn = db.pool.acquire().await?;
    verify_on(&mut conn).await
}

/// [`verify`] on one connection: inside a read transaction, the rows and
/// the head are read in one snapshot even while calls append.
pub async fn verify_on(conn: &mut AnyConnection) -> ApiResult<Verdict> {
    let rows = sqlx::query(
        "SELECT seq, at, caller_class, caller_subject, partner_id, action, resource, request_id, outcome, reason, \
         trace_id, prev_hash, hash FROM audit_log ORDER BY seq",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut prev = String::new();
    let mut expected_seq = 1i64;
    for r in &rows {
        let seq: i64 = r.get(0);
        let e = Entry {
            at: r.get(1),
            caller_class: r.get(2),
            caller_subject: r.get(3),
            partner_id: r.get(4),
            action: r.get(5),
            resource: r.get(6),
            request_id: r.get(7),
            outcome: r.get(8),
            reason: r.get(9),
            trace_id: r.get(10),
        };
        let (stored_prev, stored_hash): (String, String) = (r.get(11), r.get(12));
        if seq != expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                why: format!("row {expected_seq} is missing (next is {seq})"),
            });
        }
        if stored_prev != prev {
            return Ok(Verdict::Broken {
                seq,
                why: "it does not follow the previous row".into(),
            });
        }
        if e.digest(seq, &prev) != stored_hash {
            return Ok(Verdict::Broken {
                seq,
                why: "its contents were changed".into(),
            });
        }
        prev = stored_hash;
        expected_seq += 1;
    }
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((seq, hash)) = head
        && (seq != expected_seq - 1 || hash != prev)
    {
        return Ok(Verdict::Broken {
            seq: expected_seq,
            why: format!(
                "the chain ends at row {} but its head says {seq}",
                expected_seq - 1
            ),
        });
    }
    Ok(Verdict::Intact(rows.len() as i64))
}

/// Where each service records refusals made before its handler runs.
fn sinks() -> &'static RwLock<HashMap<String, Db>> {
    static S: OnceLock<RwLock<HashMap<String, Db>>> = OnceLock::new();
    S.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Registers `service`'s (e.g. "colend.funding.v1.FundingService") log for
/// denials.
pub fn register(service: &str, db: &Db) {
    if let Ok(mut m) = sinks().write() {
        m.insert(service.to_string(), db.clone());
    }
}

/// Records a call the authorization layer turned away (in the background).
pub fn denied(method: &str, claims: Option<&Claims>, reason: &str) {
    let service = method.split('/').next().unwrap_or("");
    let Some(db) = sinks().read().ok().and_then(|m| m.get(service).cloned()) else {
        return;
    };
    let e = Entry::new(claims, method, "", "", "DENIED", reason);
    tokio::spawn(async move {
        if let Err(err) = append_alone(&db, &e).await {
            tracing::warn!(error = %err, "could not record a denied call");
        }
    });
}
