//! Storage: one pool per service, on PostgreSQL (a schema of the service's
//! own) or on an SQLite file of the service's own. Queries are written once,
//! with `$1` placeholders and portable SQL, and run on either backend.
use crate::config::Backends;
use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Connection};
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The backend a connection talks to.
    pub fn of(conn: &sqlx::AnyConnection) -> Backend {
        if conn.backend_name() == "SQLite" {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }

    /// `" FOR UPDATE"` on PostgreSQL, to end a read of a row the transaction
    /// then writes; nothing on SQLite, whose single writer serialises such
    /// transactions already.
    pub fn for_update(self) -> &'static str {
        match self {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }
}

/// A service's database.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// PostgreSQL schema, or SQLite file stem: the service's name.
    pub schema: String,
    /// Which connection of this process it is (keys in-process state).
    pub instance: u64,
}

fn next_instance() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Db {
    /// Connects to the service's own storage and runs its migrations.
    pub async fn connect(
        backends: &Backends,
        service: &str,
        migrator: &Migrator,
    ) -> anyhow::Result<Db> {
        let db = Self::open(backends, service).await?;
        // With a migration Job (Kubernetes) the pods start with this off.
        if crate::config::env_parse("COLEND_MIGRATE_ON_START", true)? {
            db.run_migrations(service, migrator).await?;
        }
        Ok(db)
    }

    /// Runs the service's migrations and returns: what a migration Job runs.
    pub async fn migrate(
        backends: &Backends,
        service: &str,
        migrator: &Migrator,
    ) -> anyhow::Result<()> {
        let db = Self::open(backends, service).await?;
        db.run_migrations(service, migrator).await?;
        db.pool.close().await;
        Ok(())
    }

    /// The platform's tables ([`crate::schema`]) and the service's own.
    /// Opens a service's existing storage for an operator's tool (`colend
    /// audit verify`, `colend outbox`): no migration runs and nothing is
    /// created; storage that is not there is refused.
    pub async fn open_existing(backends: &Backends, service: &str) -> anyhow::Result<Db> {
        match &backends.database_url {
            None => {
                let file = backends.data_dir.join(format!("{service}.db"));
                anyhow::ensure!(
                    file.is_file(),
                    "no {service} storage at {} (is --data-dir the mesh's data directory?)",
                    file.display()
                );
            }
            Some(url) => {
                sqlx::any::install_default_drivers();
                let mut conn = sqlx::AnyConnection::connect(url)
                    .await
                    .context("connecting to PostgreSQL (DATABASE_URL)")?;
                let found: Option<(String,)> = sqlx::query_as(
                    "SELECT CAST(nspname AS TEXT) FROM pg_namespace WHERE nspname = $1",
                )
                .bind(service)
                .fetch_optional(&mut conn)
                .await?;
                conn.close().await.ok();
                anyhow::ensure!(
                    found.is_some(),
                    "the database has no {service} schema (is DATABASE_URL the mesh's?)"
                );
            }
        }
        Self::open(backends, service).await
    }

    async fn run_migrations(&self, service: &str, migrator: &Migrator) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        let result = crate::schema::migrate(&mut conn, self.backend, &self.schema, migrator)
            .await
            .with_context(|| format!("running {service} migrations"));
        if result.is_err() {
            // Never back to the pool holding a lock or a broken transaction.
            conn.close_on_drop();
        }
        result
    }

    async fn open(backends: &Backends, service: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let schema = service.to_string();
        anyhow::ensure!(
            schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "service name {schema:?} is not a valid schema name"
        );
        let db = match &backends.database_url {
            Some(url) if url.starts_with("postgres") => {
                Self::connect_postgres(url, &schema).await?
            }
            Some(url) => anyhow::bail!(
                "DATABASE_URL must be a postgres:// URL (got scheme {:?}); leave it unset for embedded SQLite",
                url.split(':').next().unwrap_or("")
            ),
            None => Self::connect_sqlite(&backends.data_dir, &schema).await?,
        };
        Ok(db)
    }

    async fn connect_postgres(url: &str, schema: &str) -> anyhow::Result<Db> {
        let max = crate::config::env_parse("COLEND_DB_MAX_CONNECTIONS", 16u32)?;
        let options = AnyConnectOptions::from_str(url)
            .context("DATABASE_URL is not a valid URL")?
            .log_statements(tracing::log::LevelFilter::Trace);
        let mut conn = sqlx::AnyConnection::connect_with(&options)
            .await
            .context("connecting to PostgreSQL (DATABASE_URL)")?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
        if let Err(e) = sqlx::query(&create).execute(&mut conn).await {
            // Two replicas creating the schema at once: one of them loses the race.
            let exists: Option<(String,)> =
                sqlx::query_as("SELECT CAST(nspname AS TEXT) FROM pg_namespace WHERE nspname = $1")
                    .bind(schema)
                    .fetch_optional(&mut conn)
                    .await?;
            if exists.is_none() {
                return Err(e).context("creating the service schema");
            }
        }
        conn.close().await.ok();
        let set_path = format!("SET search_path TO {schema}");
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    sqlx::query(&set_path).execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .context("connecting to PostgreSQL (DATABASE_URL)")?;
        Ok(Db {
            pool,
            backend: Backend::Postgres,
            schema: schema.to_string(),
            instance: next_instance(),
        })
    }

    async fn connect_sqlite(dir: &std::path::Path, schema: &str) -> anyhow::Result<Db> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        let path = dir.join(format!("{schema}.db"));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let options = AnyConnectOptions::from_str(&url)?;
        // One connection: SQLite has a single writer, and serialising here
        // avoids SQLITE_BUSY on lock upgrades inside transactions.
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    // Every commit is flushed to disk (a recorded cache answer
                    // relaxes this for its own transaction only).
                    sqlx::query("PRAGMA synchronous = FULL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Db {
            pool,
            backend: Backend::Sqlite,
            schema: schema.to_string(),
            instance: next_instance(),
        })
    }

    /// True when the error is a unique-constraint violation.
    pub fn is_unique_violation(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Database(d) => {
                matches!(d.kind(), sqlx::error::ErrorKind::UniqueViolation)
                    || d.code().as_deref() == Some("23505")
                    || d.message().contains("UNIQUE constraint failed")
            }
            _ => false,
        }
    }
}

/// The VALUES of a multi-row statement on `conn`: `rows` rows of `width`
/// parameters each, numbered from `first` on PostgreSQL (`($1, $2), ($3,
/// $4), …`) and anonymous on SQLite (`(?, ?), …`: SQLite looks a named
/// parameter up by a linear search, which makes statements of thousands of
/// them quadratic). A statement that uses this uses it for all its parameters.
pub fn placeholders(conn: &sqlx::AnyConnection, rows: usize, width: usize, first: usize) -> String {
    let sqlite = Backend::of(conn) == Backend::Sqlite;
    let mut out = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        if width > 1 {
            out.push('(');
        }
        for c in 0..width {
            if c > 0 {
                out.push_str(", ");
            }
            if sqlite {
                out.push('?');
            } else {
                out.push('$');
                out.push_str(&(first + r * width + c).to_string());
            }
        }
        if width > 1 {
            out.push(')');
        }
    }
    out
}
