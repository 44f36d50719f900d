//! The tables every service has and the platform owns, defined once: the
//! idempotency keys, the audit log and its head, the outbox and its dead
//! letters (`libs/platform/migrations/`). [`crate::Db::connect`] and
//! [`crate::Db::migrate`] apply them to every service's schema (or SQLite
//! file) around the service's own migrations.
//!
//! - The platform's migrations are versioned in their own table,
//!   `colend_platform_migrations` (sqlx 0.8 keeps one `_sqlx_migrations`
//!   table per schema, which the service's own migrations use), with a
//!   checksum each: an applied migration that was edited is refused, as sqlx
//!   refuses one of the service's.
//! - A migration that only creates tables no service ever had runs *before*
//!   the service's migrations, so a service migration can move rows into
//!   them (funding's and acquisition's older outboxes). One that adopts the
//!   tables every service created in its first migrations (idempotency,
//!   audit) runs *after* them, with `IF NOT EXISTS`, so fresh and existing
//!   databases end up with the same tables and indexes.
//! - On PostgreSQL the whole sequence holds an advisory lock of the schema,
//!   so replicas starting together migrate one at a time; SQLite has one
//!   connection.
//! - Existing migration files are never edited (sqlx checksums them): a
//!   change is a new migration, here or in the service.
use crate::db::Backend;
use anyhow::Context;
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Connection};

/// When a platform migration runs, relative to the service's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Creates tables no service has: before the service's migrations.
    BeforeService,
    /// Adopts or changes tables the services' first migrations created: after them.
    AfterService,
}

struct Migration {
    version: i64,
    description: &'static str,
    phase: Phase,
    postgres: &'static str,
    sqlite: &'static str,
}

impl Migration {
    fn sql(&self, backend: Backend) -> &'static str {
        match backend {
            Backend::Postgres => self.postgres,
            Backend::Sqlite => self.sqlite,
        }
    }

    fn checksum(&self, backend: Backend) -> String {
        hex::encode(Sha256::digest(self.sql(backend).as_bytes()))
    }
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox and dead letters",
        phase: Phase::BeforeService,
        postgres: include_str!("../migrations/0001_outbox.postgres.sql"),
        sqlite: include_str!("../migrations/0001_outbox.sqlite.sql"),
    },
    Migration {
        version: 2,
        description: "idempotency keys and audit log, with the created_at index",
        phase: Phase::AfterService,
        postgres: include_str!("../migrations/0002_audit_idempotency.sql"),
        sqlite: include_str!("../migrations/0002_audit_idempotency.sql"),
    },
];

/// The table of applied platform migrations, in each service's schema.
pub const VERSION_TABLE: &str = "colend_platform_migrations";

/// Applies the platform's migrations and `service`'s on `conn`: the
/// platform's new tables, then the service's migrations, then the adoption
/// of the shared tables.
pub(crate) async fn migrate(
    conn: &mut AnyConnection,
    backend: Backend,
    schema: &str,
    service: &Migrator,
) -> anyhow::Result<()> {
    let key = lock_key(schema);
    if backend == Backend::Postgres {
        // Session-level: held across the transactions below; returns an int
        // (the Any driver cannot read a void column).
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_lock($1)) AS locked")
            .bind(key)
            .execute(&mut *conn)
            .await
            .context("locking the schema for migrations")?;
    }
    let result = run(conn, backend, schema, service).await;
    if backend == Backend::Postgres {
        let unlocked = sqlx::query("SELECT 1 FROM (SELECT pg_advisory_unlock($1)) AS unlocked")
            .bind(key)
            .execute(&mut *conn)
            .await
            .context("unlocking the schema after migrations");
        // The first error is the one to report; the caller closes this
        // connection when either failed, which releases the lock anyway.
        result?;
        unlocked?;
        return Ok(());
    }
    result
}

async fn run(
    conn: &mut AnyConnection,
    backend: Backend,
    schema: &str,
    service: &Migrator,
) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         checksum TEXT NOT NULL, applied_at BIGINT NOT NULL)"
    ))
    .execute(&mut *conn)
    .await
    .context("creating the platform migrations table")?;
    let applied: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT version, checksum FROM {VERSION_TABLE} ORDER BY version"
    ))
    .fetch_all(&mut *conn)
    .await?;
    for (version, checksum) in &applied {
        let known = MIGRATIONS
            .iter()
            .find(|m| m.version == *version)
            .with_context(|| {
                format!("{schema}: platform migration {version} was applied but this version does not know it")
            })?;
        anyhow::ensure!(
            known.checksum(backend) == *checksum,
            "{schema}: platform migration {version} was applied but has been modified since"
        );
    }
    let applied = &applied;
    let pending = |phase| {
        MIGRATIONS
            .iter()
            .filter(move |m| m.phase == phase && !applied.iter().any(|(v, _)| *v == m.version))
    };
    for m in pending(Phase::BeforeService) {
        apply(conn, backend, schema, m).await?;
    }
    service
        .run(&mut *conn)
        .await
        .with_context(|| format!("running {schema} migrations"))?;
    for m in pending(Phase::AfterService) {
        apply(conn, backend, schema, m).await?;
    }
    Ok(())
}

async fn apply(
    conn: &mut AnyConnection,
    backend: Backend,
    schema: &str,
    m: &Migration,
) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    // `Executor::execute`, whose future is boxed: `RawSql::execute`'s is
    // generic over the executor's lifetime and is not `Send` for all of them.
    sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(m.sql(backend)))
        .await
        .with_context(|| {
            format!(
                "{schema}: platform migration {} ({})",
                m.version, m.description
            )
        })?;
    sqlx::query(&format!(
        "INSERT INTO {VERSION_TABLE} (version, description, checksum, applied_at) VALUES ($1, $2, $3, $4)"
    ))
    .bind(m.version)
    .bind(m.description)
    .bind(m.checksum(backend))
    .bind(crate::time::now_millis())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::debug!(schema, version = m.version, "platform migration applied");
    Ok(())
}

/// The advisory lock of a schema's migrations (PostgreSQL).
fn lock_key(schema: &str) -> i64 {
    let digest = Sha256::digest(format!("colend-platform-migrations:{schema}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_and_increasing() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
    }

    #[test]
    fn shared_tables_are_adopted_not_created_blindly() {
        // Every statement of a migration that runs after the services'
        // own must tolerate tables those already created.
        for m in MIGRATIONS.iter().filter(|m| m.phase == Phase::AfterService) {
            for backend in [Backend::Postgres, Backend::Sqlite] {
                for stmt in m.sql(backend).split(';') {
                    let s = stmt
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("--"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    let s = s.trim().to_ascii_uppercase();
                    if s.starts_with("CREATE") {
                        assert!(s.contains("IF NOT EXISTS"), "{s}");
                    }
                }
            }
        }
    }

    #[test]
    fn lock_keys_differ_by_schema() {
        assert_ne!(lock_key("funding"), lock_key("acquisition"));
        assert_eq!(lock_key("funding"), lock_key("funding"));
    }
}
