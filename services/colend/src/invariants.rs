//! The invariant checker: reads every service's own storage and verifies
//! what must hold whatever failed on the way (`colend check`, the fault
//! suite after every scenario, the concurrency suite after every race).
//!
//! 1. Every journey ended: completed (funds reserved, disbursed, repaying),
//!    rejected or compensated (a terminal status), or parked with a reason.
//! 2. For every loan, bank share + partner share = principal, and its status
//!    is one funding writes.
//! 3. Every repayment is allocated exactly once, to the cent: its
//!    allocations sum to its amount, their sums per loan equal what the loan
//!    records as paid (the partner's principal too), and no bank transaction
//!    is booked twice.
//! 4. The ledger's trial balance is zero in every currency and for every
//!    posting.
//! 5. No reservation exceeds capacity: each partner's total quota in use
//!    equals what its live loans hold, and is within the quota.
//! 6. Each partner's daily quota in use equals the partner share of its live
//!    loans reserved that day, and is within the daily quota.
//! 7. The bank's co-lent exposure per partner (rule C2) and in all (rule C3)
//!    equals the bank's share of principal still outstanding on live loans.
//! 8. Acquisition and funding agree on every funded journey, and no loan
//!    exists without its application (or the other way round); every loan is
//!    in its application's currency.
//! 9. No parked or closed journey holds a live reservation, and no
//!    application closed to funding has a live loan.
//! 10. Exactly one effect per idempotency key: applications, loans,
//!     disbursements and repayments each match one stored key (a bank
//!     transaction booked again under a new request id is answered with the
//!     repayment already booked: the keys naming one repayment count once).
//! 11. Nothing is left to relay, and every audit chain is intact.
//!
//! A loan is *live* unless VOID. Funding moves its counters so (read from
//! `services/funding`: the reservation batch, `void_reserved`,
//! `release_bank_exposure` and `book_repayment`):
//! - a reservation adds the partner share to `partner_usage` and to
//!   `partner_daily_usage` of the day it is made (`loans.reserved_on`), and
//!   the bank share to `bank_exposure` `PARTNER:<id>` and `ALL`;
//! - a void (release, expiry, compensation) takes all four back, the daily
//!   row of the day the loan was reserved included;
//! - a repayment's principal frees the partner's part in `partner_usage` and
//!   the bank's part in both exposure rows, never the daily row.
//!
//! Every sum is per currency: a partner's live loans are all in one
//! currency (its agreement's), and all live loans in one (the bank's
//! reference data's), or the counters would mix codes (checks 5 and 7).
//! Sums are taken in i128, so no total of i64 amounts can wrap.
//!
//! So for the live loans: total usage = Σ (partner_amount −
//! partner_principal_paid); daily usage of (partner, day) = Σ partner_amount
//! of those reserved that day; exposure = Σ (bank_amount − (principal_paid −
//! partner_principal_paid)). A row that is absent counts as zero.
//!
//! The checker never writes and never creates anything. It refuses (an
//! error, [`Refused`]) a data directory or database without the services'
//! tables instead of reporting invariants that hold on nothing. SQLite files
//! are opened read-only (`mode=ro`; a file with no write-ahead log, i.e. no
//! service has it open, as `immutable`, so that no `-wal`/`-shm` files
//! appear). On PostgreSQL the session is read-only and the schemas and
//! tables are looked up before anything is read.
//!
//! Snapshots: each service's data is read in one read transaction, so a
//! check while traffic flows sees no half-made change. On PostgreSQL one
//! `REPEATABLE READ READ ONLY` transaction reads every service's schema: one
//! snapshot of the whole mesh. On SQLite (a file per service) acquisition is
//! read, then funding, then acquisition's applications again; a
//! cross-service rule judges an application only when it did not move
//! between the two reads (so its status held when funding was read), and
//! each rule reads the side that is written first before the side written
//! after it. Lags the mesh closes by itself (a loan event still in funding's
//! outbox) are not violations.
use colend_contracts::acquisition::v1 as acq;
use colend_contracts::common::v1::Funder;
use colend_contracts::funding::v1 as fund;
use colend_platform::audit::Verdict;
use colend_platform::config::Backends;
use prost::Message;
use serde::Serialize;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection, Row};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One invariant and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub holds: bool,
    /// What was counted, or what broke.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// What was read: the database or the data directory.
    pub storage: String,
    pub checks: Vec<Check>,
    /// Applications by status.
    pub applications: BTreeMap<String, i64>,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.checks.iter().all(|c| c.holds)
    }

    /// Every violated invariant, as "name: what broke".
    pub fn violations(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.holds)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }

    /// The check named `name`, if it was made.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn push(&mut self, name: &'static str, problems: Vec<String>, counted: String) {
        let holds = problems.is_empty();
        let detail = if holds {
            counted
        } else {
            let n = problems.len();
            let mut shown: Vec<String> = problems.into_iter().take(5).collect();
            if n > 5 {
                shown.push(format!("… {} more", n - 5));
            }
            shown.join("; ")
        };
        self.checks.push(Check {
            name,
            holds,
            detail,
        });
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "checked {}", self.storage)?;
        for c in &self.checks {
            writeln!(
                f,
                "{} {}: {}",
                if c.holds { "holds   " } else { "VIOLATED" },
                c.name,
                c.detail
            )?;
        }
        Ok(())
    }
}

/// The storage is not the services' (a wrong or empty data directory, a
/// database without colend's schemas): nothing was checked.
#[derive(Debug, Clone)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refusing to check: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// The invariants' names, in the order they are reported.
pub mod names {
    pub const JOURNEYS: &str =
        "every journey ended (completed, compensated or parked with a reason)";
    pub const SPLITS: &str = "bank share + partner share = principal for every loan";
    pub const REPAYMENTS: &str = "every repayment cent allocated exactly once";
    pub const LEDGER: &str = "ledger trial balance is zero";
    pub const CAPACITY: &str = "no reservation exceeds capacity";
    pub const DAILY: &str = "daily quota in use = partner share of live loans reserved that day";
    pub const EXPOSURE: &str =
        "bank exposure (C2 per partner, C3 in all) = bank principal outstanding on live loans";
    pub const AGREE: &str = "acquisition and funding agree on every funded journey";
    pub const PARKED: &str = "no parked or closed journey holds a live reservation";
    pub const KEYS: &str = "exactly one effect per idempotency key";
    pub const RELAYED: &str = "outboxes relayed and audit chains intact";
}

/// Statuses in which a journey has nothing left to do on its own.
const ENDED: [&str; 10] = [
    "FUNDS_RESERVED",
    "DISBURSED",
    "REPAYING",
    "SETTLED",
    "KYC_REJECTED",
    "DECLINED",
    "FUNDING_REJECTED",
    "FAILED",
    "PARKED",
    "ABANDONED",
];

/// Statuses of a journey that ended without (or after giving back) funding.
const CLOSED: [&str; 5] = [
    "FAILED",
    "FUNDING_REJECTED",
    "KYC_REJECTED",
    "DECLINED",
    "ABANDONED",
];

/// Journeys still moving: automatic steps left, or an abandonment half-way.
const IN_FLIGHT: &str = "('SUBMITTED', 'KYC_PASSED', 'APPROVED', 'ABANDONING')";

/// The loan statuses funding writes.
const LOAN_STATUSES: [&str; 4] = ["RESERVED", "DISBURSED", "SETTLED", "VOID"];

/// The five services and the tables of each the checker reads (`a|b`:
/// either; the outbox moved from a table of each service's own,
/// `outbox`, to the platform's `outbox_events` and `outbox_dead_letters`).
const REQUIRED: [(&str, &[&str]); 5] = [
    (
        "acquisition",
        &[
            "applications",
            "idempotency_keys",
            "outbox|outbox_events",
            "audit_log",
            "audit_head",
        ],
    ),
    ("kyc", &["audit_log", "audit_head"]),
    ("credit", &["audit_log", "audit_head"]),
    (
        "funding",
        &[
            "loans",
            "repayments",
            "ledger_entries",
            "agreements",
            "partner_usage",
            "partner_daily_usage",
            "bank_exposure",
            "closed_applications",
            "idempotency_keys",
            "outbox|outbox_events",
            "audit_log",
            "audit_head",
        ],
    ),
    ("reconciliation", &["audit_log", "audit_head"]),
];

/// Read-only access to every service's storage.
struct Storage {
    place: String,
    kind: Kind,
    /// Service → where its outbox events are.
    outboxes: HashMap<&'static str, Outboxes>,
}

/// Which outbox tables a service has.
#[derive(Clone, Copy, Debug, Default)]
struct Outboxes {
    /// `outbox`: `event_id`, `payload`, `sent_at` (0 while pending).
    legacy: bool,
    /// `outbox_events`: `event_id`, `aggregate_id`, `payload`, `sent_at`.
    events: bool,
    /// `outbox_dead_letters`: events given up on.
    dead: bool,
}

impl Outboxes {
    fn of(service: &str, has: &dyn Fn(&str, &str) -> bool) -> Outboxes {
        Outboxes {
            legacy: has(service, "outbox"),
            events: has(service, "outbox_events"),
            dead: has(service, "outbox_dead_letters"),
        }
    }

    fn all(has: &dyn Fn(&str, &str) -> bool) -> HashMap<&'static str, Outboxes> {
        REQUIRED
            .iter()
            .map(|(s, _)| (*s, Outboxes::of(s, has)))
            .collect()
    }
}

enum Kind {
    /// One connection; each service is a schema of its database.
    Postgres(AnyConnection),
    /// A connection per service file.
    Sqlite(Vec<SqliteFile>),
}

struct SqliteFile {
    service: &'static str,
    /// The file's write-ahead log: present while a service has it open.
    wal: PathBuf,
    /// Opened without a write-ahead log: read as a file nobody writes.
    immutable: bool,
    conn: AnyConnection,
}

impl Storage {
    /// Opens the storage `backends` names, read-only, refusing one without
    /// the services' tables.
    async fn open(backends: &Backends) -> anyhow::Result<Storage> {
        sqlx::any::install_default_drivers();
        match &backends.database_url {
            Some(url) if url.starts_with("postgres") => Self::open_postgres(url).await,
            Some(url) => anyhow::bail!(
                "DATABASE_URL must be a postgres:// URL (got scheme {:?}); leave it unset for the SQLite files",
                url.split(':').next().unwrap_or("")
            ),
            None => Self::open_sqlite(&backends.data_dir).await,
        }
    }

    async fn open_postgres(url: &str) -> anyhow::Result<Storage> {
        let database = url
            .rsplit_once('/')
            .map(|(_, d)| d.split('?').next().unwrap_or(d))
            .unwrap_or("")
            .to_string();
        let place = format!("PostgreSQL database {database:?} (DATABASE_URL), read-only");
        let options = AnyConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid URL: {e}"))?;
        let mut conn = AnyConnection::connect_with(&options)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL (DATABASE_URL): {e}"))?;
        sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            .execute(&mut conn)
            .await?;
        let schemas: Vec<String> = REQUIRED.iter().map(|(s, _)| format!("'{s}'")).collect();
        let present: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT CAST(table_schema AS TEXT), CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema IN ({})",
            schemas.join(", ")
        ))
        .fetch_all(&mut conn)
        .await?;
        let present: HashSet<(String, String)> = present.into_iter().collect();
        let has = |svc: &str, table: &str| present.contains(&(svc.to_string(), table.to_string()));
        if let Err(refused) = required(&has, &format!("database {database:?}"), "schema") {
            conn.close().await.ok();
            return Err(refused.into());
        }
        Ok(Storage {
            place,
            kind: Kind::Postgres(conn),
            outboxes: Outboxes::all(&has),
        })
    }

    async fn open_sqlite(dir: &Path) -> anyhow::Result<Storage> {
        let place = format!("SQLite files in {}, read-only", dir.display());
        if !dir.is_dir() {
            return Err(Refused(format!(
                "{} is not a directory; --data-dir must name the directory the services keep their files in",
                dir.display()
            ))
            .into());
        }
        let missing: Vec<String> = REQUIRED
            .iter()
            .map(|(s, _)| format!("{s}.db"))
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(Refused(format!(
                "{} holds no colend data ({} missing); --data-dir must name the directory the services keep their files in",
                dir.display(),
                missing.join(", ")
            ))
            .into());
        }
        let mut files = Vec::new();
        let mut present = HashSet::new();
        for (service, _) in REQUIRED {
            let path = dir.join(format!("{service}.db"));
            let wal = dir.join(format!("{service}.db-wal"));
            // No write-ahead log: no service has the file open and
            // everything is in the file itself. Read-only SQLite would
            // create the log and its index beside it; immutable does not.
            let immutable = !wal.exists();
            let url = format!(
                "sqlite://{}?mode=ro{}",
                path.display(),
                if immutable { "&immutable=true" } else { "" }
            );
            let options = AnyConnectOptions::from_str(&url)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let mut conn = AnyConnection::connect_with(&options)
                .await
                .map_err(|e| anyhow::anyhow!("opening {} read-only: {e}", path.display()))?;
            sqlx::query("PRAGMA busy_timeout = 5000")
                .execute(&mut conn)
                .await?;
            let tables: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .fetch_all(&mut conn)
                    .await
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            for (t,) in tables {
                present.insert((service.to_string(), t));
            }
            files.push(SqliteFile {
                service,
                wal,
                immutable,
                conn,
            });
        }
        let has = |svc: &str, table: &str| present.contains(&(svc.to_string(), table.to_string()));
        if let Err(refused) = required(&has, &dir.display().to_string(), "file") {
            for f in files {
                f.conn.close().await.ok();
            }
            return Err(refused.into());
        }
        Ok(Storage {
            place,
            kind: Kind::Sqlite(files),
            outboxes: Outboxes::all(&has),
        })
    }

    async fn close(self) {
        match self.kind {
            Kind::Postgres(conn) => {
                conn.close().await.ok();
            }
            Kind::Sqlite(files) => {
                for f in files {
                    f.conn.close().await.ok();
                }
            }
        }
    }

    /// True when a file read as immutable got a write-ahead log meanwhile
    /// (a service opened it): what was read may be stale.
    fn went_live(&self) -> bool {
        match &self.kind {
            Kind::Postgres(_) => false,
            Kind::Sqlite(files) => files.iter().any(|f| f.immutable && f.wal.exists()),
        }
    }

    /// The connection to `service`'s storage, outside any transaction.
    async fn on(&mut self, service: &str) -> anyhow::Result<&mut AnyConnection> {
        match &mut self.kind {
            Kind::Postgres(conn) => {
                use_schema(conn, service).await?;
                Ok(conn)
            }
            Kind::Sqlite(files) => sqlite_conn(files, service),
        }
    }

    /// Journeys still moving plus events not yet relayed.
    async fn unfinished(&mut self) -> anyhow::Result<i64> {
        let (acq_out, fun_out) = (self.outbox("acquisition"), self.outbox("funding"));
        let conn = self.on("acquisition").await?;
        let (journeys,): (i64,) = sqlx::query_as(&format!(
            "SELECT COUNT(*) FROM applications WHERE status IN {IN_FLIGHT}"
        ))
        .fetch_one(&mut *conn)
        .await?;
        let acq_events = unrelayed(conn, acq_out).await?;
        let fun_events = unrelayed(self.on("funding").await?, fun_out).await?;
        Ok(journeys + acq_events + fun_events)
    }

    fn outbox(&self, service: &str) -> Outboxes {
        self.outboxes.get(service).copied().unwrap_or_default()
    }

    /// Every service's data, each in one read transaction.
    async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let (acq_out, fun_out) = (self.outbox("acquisition"), self.outbox("funding"));
        let mut audits = Vec::new();
        match &mut self.kind {
            Kind::Postgres(conn) => {
                let mut tx = conn
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                use_schema(&mut tx, "acquisition").await?;
                let before = read_acquisition(&mut tx, acq_out).await?;
                audits.push(("acquisition", audit(&mut tx).await));
                use_schema(&mut tx, "funding").await?;
                let funding = read_funding(&mut tx, fun_out).await?;
                audits.push(("funding", audit(&mut tx).await));
                for svc in ["kyc", "credit", "reconciliation"] {
                    use_schema(&mut tx, svc).await?;
                    audits.push((svc, audit(&mut tx).await));
                }
                tx.rollback().await?;
                let after = before.positions();
                Ok(Snapshot {
                    before,
                    funding,
                    after,
                    audits,
                })
            }
            Kind::Sqlite(files) => {
                let mut tx = sqlite_conn(files, "acquisition")?.begin().await?;
                let before = read_acquisition(&mut tx, acq_out).await?;
                audits.push(("acquisition", audit(&mut tx).await));
                tx.rollback().await?;
                let mut tx = sqlite_conn(files, "funding")?.begin().await?;
                let funding = read_funding(&mut tx, fun_out).await?;
                audits.push(("funding", audit(&mut tx).await));
                tx.rollback().await?;
                let mut tx = sqlite_conn(files, "acquisition")?.begin().await?;
                let after = read_positions(&mut tx).await?;
                tx.rollback().await?;
                for svc in ["kyc", "credit", "reconciliation"] {
                    let mut tx = sqlite_conn(files, svc)?.begin().await?;
                    audits.push((svc, audit(&mut tx).await));
                    tx.rollback().await?;
                }
                Ok(Snapshot {
                    before,
                    funding,
                    after,
                    audits,
                })
            }
        }
    }
}

/// Refuses when a service's schema (or file) lacks a table the checker reads.
fn required(has: &dyn Fn(&str, &str) -> bool, place: &str, unit: &str) -> Result<(), Refused> {
    let mut empty = Vec::new();
    let mut lacking = Vec::new();
    for (svc, tables) in REQUIRED {
        let missing: Vec<&str> = tables
            .iter()
            .copied()
            .filter(|t| !t.split('|').any(|t| has(svc, t)))
            .collect();
        if missing.len() == tables.len() {
            empty.push(svc);
        } else if !missing.is_empty() {
            lacking.push(format!("{svc} lacks {}", missing.join(", ")));
        }
    }
    if empty.len() == REQUIRED.len() {
        return Err(Refused(format!(
            "{place} holds none of the services' tables (no {} {unit} with them): not colend's storage, \
             or the services never ran there",
            REQUIRED.map(|(s, _)| s).join(", ")
        )));
    }
    for svc in empty {
        lacking.push(format!("{svc} has none of its tables"));
    }
    if !lacking.is_empty() {
        return Err(Refused(format!(
            "{place} is not a complete colend storage: {} (run the services, or `colend migrate all`, first)",
            lacking.join("; ")
        )));
    }
    Ok(())
}

fn sqlite_conn<'a>(
    files: &'a mut [SqliteFile],
    service: &str,
) -> anyhow::Result<&'a mut AnyConnection> {
    files
        .iter_mut()
        .find(|f| f.service == service)
        .map(|f| &mut f.conn)
        .ok_or_else(|| anyhow::anyhow!("no file open for {service}"))
}

/// Points unqualified names at `service`'s schema (PostgreSQL).
async fn use_schema(conn: &mut AnyConnection, service: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        REQUIRED.iter().any(|(s, _)| *s == service),
        "unknown service {service:?}"
    );
    sqlx::query(&format!("SET search_path TO {service}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Outbox events not yet relayed (dead letters not included).
async fn unrelayed(conn: &mut AnyConnection, out: Outboxes) -> anyhow::Result<i64> {
    let mut n = 0;
    for (table, present) in [("outbox", out.legacy), ("outbox_events", out.events)] {
        if present {
            let (k,): (i64,) =
                sqlx::query_as(&format!("SELECT COUNT(*) FROM {table} WHERE sent_at = 0"))
                    .fetch_one(&mut *conn)
                    .await?;
            n += k;
        }
    }
    Ok(n)
}

/// Outbox events given up on.
async fn dead_letters(conn: &mut AnyConnection, out: Outboxes) -> anyhow::Result<i64> {
    if !out.dead {
        return Ok(0);
    }
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox_dead_letters")
        .fetch_one(&mut *conn)
        .await?;
    Ok(n)
}

/// The audit chain, or why it could not be walked.
async fn audit(conn: &mut AnyConnection) -> Result<Verdict, String> {
    colend_platform::audit::verify_on(conn)
        .await
        .map_err(|e| e.to_string())
}

#[derive(Debug, Clone)]
struct App {
    id: String,
    status: String,
    /// The requested amount's currency.
    currency: String,
    reasons: String,
    created_at: i64,
    updated_at: i64,
}

/// Acquisition's side, read in one transaction.
#[derive(Debug, Clone)]
struct AcquisitionData {
    apps: Vec<App>,
    /// `ok` SubmitApplication keys.
    submitted: i64,
    unrelayed: i64,
    dead: i64,
}

impl AcquisitionData {
    fn positions(&self) -> HashMap<String, (String, i64)> {
        self.apps
            .iter()
            .map(|a| (a.id.clone(), (a.status.clone(), a.updated_at)))
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Loan {
    loan_id: String,
    application_id: String,
    partner_id: String,
    status: String,
    currency: String,
    principal: i64,
    bank_amount: i64,
    partner_amount: i64,
    principal_paid: i64,
    interest_paid: i64,
    partner_principal_paid: i64,
    disbursed: bool,
    reserved_on: String,
    created_at: i64,
}

impl Loan {
    fn live(&self) -> bool {
        self.status != "VOID"
    }

    /// The partner's principal reserved or outstanding.
    fn partner_held(&self) -> i128 {
        i128::from(self.partner_amount) - i128::from(self.partner_principal_paid)
    }

    /// The bank's principal reserved or outstanding.
    fn bank_held(&self) -> i128 {
        i128::from(self.bank_amount)
            - (i128::from(self.principal_paid) - i128::from(self.partner_principal_paid))
    }
}

#[derive(Debug, Clone)]
struct Repayment {
    id: String,
    loan_id: String,
    amount: i64,
    bank_ref: String,
    created_at: i64,
    body: Option<fund::Repayment>,
}

/// Funding's side, read in one transaction.
#[derive(Debug, Clone, Default)]
struct FundingData {
    loans: Vec<Loan>,
    repayments: Vec<Repayment>,
    /// Per currency: (code, debits, credits).
    totals: Vec<(String, i64, i64)>,
    unbalanced: Vec<(String, i64, i64)>,
    usage: Vec<(String, i64)>,
    daily: Vec<(String, String, i64)>,
    exposure: Vec<(String, i64)>,
    /// Partner → the largest total and daily quota any version granted.
    quotas: HashMap<String, (i64, i64)>,
    closed: Vec<String>,
    reserve_keys: i64,
    disburse_keys: i64,
    repay_keys: i64,
    unrelayed: i64,
    dead: i64,
    /// Applications with a loan event still to relay (or given up on).
    pending: HashSet<String>,
}

struct Snapshot {
    before: AcquisitionData,
    funding: FundingData,
    /// Acquisition's applications after funding was read: (status, updated_at).
    after: HashMap<String, (String, i64)>,
    audits: Vec<(&'static str, Result<Verdict, String>)>,
}

async fn read_acquisition(
    conn: &mut AnyConnection,
    out: Outboxes,
) -> anyhow::Result<AcquisitionData> {
    let rows = sqlx::query(
        "SELECT application_id, status, currency, reason_codes, created_at, updated_at FROM applications",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut apps = Vec::with_capacity(rows.len());
    for r in &rows {
        apps.push(App {
            id: r.try_get("application_id")?,
            status: r.try_get("status")?,
            currency: r.try_get("currency")?,
            reasons: r.try_get("reason_codes")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        });
    }
    let submitted = ok_keys(conn, "SubmitApplication:%").await?;
    Ok(AcquisitionData {
        apps,
        submitted,
        unrelayed: unrelayed(conn, out).await?,
        dead: dead_letters(conn, out).await?,
    })
}

async fn read_positions(
    conn: &mut AnyConnection,
) -> anyhow::Result<HashMap<String, (String, i64)>> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT application_id, status, updated_at FROM applications")
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().map(|(a, s, u)| (a, (s, u))).collect())
}

async fn ok_keys(conn: &mut AnyConnection, scope: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM idempotency_keys WHERE outcome = 'ok' AND scope LIKE $1",
    )
    .bind(scope)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n)
}

/// Repayments the stored BookRepayment answers name. The same bank
/// transaction sent again under a new request id is answered with the
/// repayment already booked, so two keys may name one repayment.
async fn repayment_keys(conn: &mut AnyConnection) -> anyhow::Result<i64> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT response FROM idempotency_keys WHERE outcome = 'ok' AND scope LIKE 'BookRepayment%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut named = HashSet::new();
    for (response,) in rows {
        let answer = hex::decode(&response)
            .ok()
            .and_then(|b| fund::BookRepaymentResponse::decode(b.as_slice()).ok())
            .and_then(|r| r.repayment)
            .ok_or_else(|| anyhow::anyhow!("a stored BookRepayment answer is unreadable"))?;
        named.insert(answer.repayment_id);
    }
    Ok(named.len() as i64)
}

async fn read_funding(conn: &mut AnyConnection, out: Outboxes) -> anyhow::Result<FundingData> {
    let mut f = FundingData::default();
    let rows = sqlx::query(
        "SELECT loan_id, application_id, partner_id, status, currency, principal, bank_amount, partner_amount, \
         principal_paid, interest_paid, partner_principal_paid, disbursement_ref, reserved_on, created_at FROM loans",
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        f.loans.push(Loan {
            loan_id: r.try_get("loan_id")?,
            application_id: r.try_get("application_id")?,
            partner_id: r.try_get("partner_id")?,
            status: r.try_get("status")?,
            currency: r.try_get("currency")?,
            principal: r.try_get("principal")?,
            bank_amount: r.try_get("bank_amount")?,
            partner_amount: r.try_get("partner_amount")?,
            principal_paid: r.try_get("principal_paid")?,
            interest_paid: r.try_get("interest_paid")?,
            partner_principal_paid: r.try_get("partner_principal_paid")?,
            disbursed: !r.try_get::<String, _>("disbursement_ref")?.is_empty(),
            reserved_on: r.try_get("reserved_on")?,
            created_at: r.try_get("created_at")?,
        });
    }
    let rows = sqlx::query(
        "SELECT repayment_id, loan_id, amount, bank_ref, body, created_at FROM repayments",
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let body: String = r.try_get("body")?;
        f.repayments.push(Repayment {
            id: r.try_get("repayment_id")?,
            loan_id: r.try_get("loan_id")?,
            amount: r.try_get("amount")?,
            bank_ref: r.try_get("bank_ref")?,
            created_at: r.try_get("created_at")?,
            body: hex::decode(&body)
                .ok()
                .and_then(|b| fund::Repayment::decode(b.as_slice()).ok()),
        });
    }
    f.totals = sqlx::query_as(
        "SELECT currency, CAST(SUM(debit) AS BIGINT), CAST(SUM(credit) AS BIGINT) FROM ledger_entries \
         GROUP BY currency ORDER BY currency",
    )
    .fetch_all(&mut *conn)
    .await?;
    f.unbalanced = sqlx::query_as(
        "SELECT posting_id, CAST(SUM(debit) AS BIGINT), CAST(SUM(credit) AS BIGINT) FROM ledger_entries \
         GROUP BY posting_id HAVING SUM(debit) <> SUM(credit)",
    )
    .fetch_all(&mut *conn)
    .await?;
    f.usage = sqlx::query_as("SELECT partner_id, used FROM partner_usage")
        .fetch_all(&mut *conn)
        .await?;
    f.daily = sqlx::query_as("SELECT partner_id, day, used FROM partner_daily_usage")
        .fetch_all(&mut *conn)
        .await?;
    f.exposure = sqlx::query_as("SELECT scope, used FROM bank_exposure")
        .fetch_all(&mut *conn)
        .await?;
    let quotas: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT partner_id, CAST(MAX(total_quota) AS BIGINT), CAST(MAX(daily_quota) AS BIGINT) \
         FROM agreements GROUP BY partner_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    f.quotas = quotas.into_iter().map(|(p, t, d)| (p, (t, d))).collect();
    let closed: Vec<(String,)> = sqlx::query_as("SELECT application_id FROM closed_applications")
        .fetch_all(&mut *conn)
        .await?;
    f.closed = closed.into_iter().map(|(a,)| a).collect();
    f.reserve_keys = ok_keys(conn, "ReserveFunding:%").await?;
    f.disburse_keys = ok_keys(conn, "BookDisbursement%").await?;
    f.repay_keys = repayment_keys(conn).await?;
    // (event id, aggregate, payload) of every event acquisition has not had.
    let mut pending: Vec<(String, String, String)> = Vec::new();
    for (present, sql) in [
        (
            out.legacy,
            "SELECT event_id, '', payload FROM outbox WHERE sent_at = 0",
        ),
        (
            out.events,
            "SELECT event_id, aggregate_id, payload FROM outbox_events WHERE sent_at = 0",
        ),
        (
            out.dead,
            "SELECT event_id, aggregate_id, payload FROM outbox_dead_letters",
        ),
    ] {
        if present {
            pending.extend(
                sqlx::query_as::<_, (String, String, String)>(sql)
                    .fetch_all(&mut *conn)
                    .await?,
            );
        }
    }
    f.unrelayed = unrelayed(conn, out).await?;
    f.dead = dead_letters(conn, out).await?;
    let app_of: HashMap<&str, &str> = f
        .loans
        .iter()
        .map(|l| (l.loan_id.as_str(), l.application_id.as_str()))
        .collect();
    let mut apps = HashSet::new();
    for (event_id, aggregate, payload) in &pending {
        let decoded = hex::decode(payload)
            .ok()
            .and_then(|b| acq::RecordLoanEventRequest::decode(b.as_slice()).ok())
            .map(|e| e.application_id)
            .filter(|a| !a.is_empty());
        // Otherwise by the aggregate (a loan or its application), or by
        // the event id, `<kind>:<loan id>`.
        let by_aggregate = || match app_of.get(aggregate.as_str()) {
            Some(app) => Some(app.to_string()),
            None if !aggregate.is_empty() => Some(aggregate.clone()),
            None => None,
        };
        let by_id = || {
            event_id
                .split_once(':')
                .and_then(|(_, loan)| app_of.get(loan))
                .map(|a| a.to_string())
        };
        if let Some(app) = decoded.or_else(by_aggregate).or_else(by_id) {
            apps.insert(app);
        }
    }
    f.pending = apps;
    Ok(f)
}

/// The idempotency keys' retention (`COLEND_IDEMPOTENCY_RETENTION_HOURS`,
/// as the services read it): records older than that may have lost their key.
fn retention_ms() -> i64 {
    colend_platform::config::env_parse("COLEND_IDEMPOTENCY_RETENTION_HOURS", 24i64)
        .unwrap_or(24)
        .max(1)
        .saturating_mul(3_600_000)
}

/// Waits (up to `secs`) until no journey is still moving and both outboxes
/// are drained; true when that happened. Reads only, and refuses storage
/// without the services' tables as [`check`] does.
pub async fn settle(backends: &Backends, secs: u64) -> anyhow::Result<bool> {
    let mut storage = Storage::open(backends).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let settled = loop {
        match storage.unfinished().await {
            Ok(0) => break Ok(true),
            Ok(_) if std::time::Instant::now() > deadline => break Ok(false),
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            Err(e) => break Err(e),
        }
    };
    storage.close().await;
    settled
}

/// Checks every invariant against the storage `backends` names
/// (`database_url`, or the SQLite files in `data_dir`), reading only.
///
/// `Err` when nothing could be checked: the storage lacks the services'
/// tables (the error is a [`Refused`]) or could not be read. Otherwise the
/// report of every invariant: [`Report::holds`], [`Report::violations`].
pub async fn check(backends: &Backends) -> anyhow::Result<Report> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut storage = Storage::open(backends).await?;
        let snapshot = storage.snapshot().await;
        let went_live = storage.went_live();
        let place = storage.place.clone();
        storage.close().await;
        let snapshot = snapshot?;
        if went_live && attempt < 3 {
            // A service opened a file while it was read as immutable.
            continue;
        }
        let mut report = evaluate(
            &snapshot,
            colend_platform::time::now_millis(),
            retention_ms(),
        );
        report.storage = place;
        return Ok(report);
    }
}

/// Judges a snapshot: pure.
fn evaluate(s: &Snapshot, now: i64, retention_ms: i64) -> Report {
    let mut report = Report::default();
    let (acq_side, fun) = (&s.before, &s.funding);

    // 1. Journeys.
    let mut problems = Vec::new();
    for a in &acq_side.apps {
        *report.applications.entry(a.status.clone()).or_default() += 1;
        if !ENDED.contains(&a.status.as_str()) {
            problems.push(format!("{} is still {}", a.id, a.status));
        } else if (a.status == "PARKED" || a.status == "FAILED") && a.reasons.is_empty() {
            problems.push(format!("{} is {} without a reason", a.id, a.status));
        }
    }
    let counted = format!(
        "{} applications: {:?}",
        acq_side.apps.len(),
        report.applications
    );
    report.push(names::JOURNEYS, problems, counted);

    // 2. Splits.
    let mut problems = Vec::new();
    for l in &fun.loans {
        let (p, b, q) = (l.principal, l.bank_amount, l.partner_amount);
        if b + q != p || b < 0 || q < 0 {
            problems.push(format!(
                "{}: bank {b} + partner {q} != principal {p}",
                l.loan_id
            ));
        }
        if !LOAN_STATUSES.contains(&l.status.as_str()) {
            problems.push(format!("{}: unknown status {:?}", l.loan_id, l.status));
        }
    }
    report.push(
        names::SPLITS,
        problems,
        format!("{} loans", fun.loans.len()),
    );

    // 3. Repayments.
    let mut problems = Vec::new();
    // Loan → principal, interest and the partner's principal allocated.
    let mut paid: HashMap<&str, (i128, i128, i128)> = HashMap::new();
    let mut refs: HashMap<(&str, &str), u32> = HashMap::new();
    // Per currency (the loan's), in i128.
    let currency_of: HashMap<&str, &str> = fun
        .loans
        .iter()
        .map(|l| (l.loan_id.as_str(), l.currency.as_str()))
        .collect();
    let mut cents: BTreeMap<&str, i128> = BTreeMap::new();
    for r in &fun.repayments {
        *cents
            .entry(currency_of.get(r.loan_id.as_str()).copied().unwrap_or("?"))
            .or_default() += i128::from(r.amount);
        *refs
            .entry((r.loan_id.as_str(), r.bank_ref.as_str()))
            .or_default() += 1;
        let Some(rep) = &r.body else {
            problems.push(format!("{}: unreadable", r.id));
            continue;
        };
        let mut sum = 0i128;
        let e = paid.entry(r.loan_id.as_str()).or_default();
        for a in &rep.allocations {
            let m = i128::from(a.amount.as_ref().map(|m| m.minor_units).unwrap_or(0));
            sum += m;
            if a.component == fund::Component::Principal as i32 {
                e.0 += m;
                if a.funder == Funder::Partner as i32 {
                    e.2 += m;
                }
            } else if a.component == fund::Component::Interest as i32 {
                e.1 += m;
            }
        }
        if sum != i128::from(r.amount) {
            problems.push(format!(
                "{}: allocations {sum} != amount {}",
                r.id, r.amount
            ));
        }
    }
    for ((loan, r), n) in &refs {
        if *n > 1 {
            problems.push(format!("{loan}: bank transaction {r} booked {n} times"));
        }
    }
    for l in &fun.loans {
        let (p, i, pp) = paid.get(l.loan_id.as_str()).copied().unwrap_or_default();
        if (p, i) != (i128::from(l.principal_paid), i128::from(l.interest_paid)) {
            problems.push(format!(
                "{}: allocations principal {p} / interest {i} != loan's paid {} / {}",
                l.loan_id, l.principal_paid, l.interest_paid
            ));
        }
        if pp != i128::from(l.partner_principal_paid) {
            problems.push(format!(
                "{}: partner principal allocated {pp} != loan's partner principal paid {}",
                l.loan_id, l.partner_principal_paid
            ));
        }
    }
    report.push(
        names::REPAYMENTS,
        problems,
        format!(
            "{} repayments, minor units {}",
            fun.repayments.len(),
            cents
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    // 4. Ledger.
    let mut problems: Vec<String> = fun
        .unbalanced
        .iter()
        .map(|(p, d, c)| format!("posting {p}: debits {d} != credits {c}"))
        .collect();
    for (c, d, cr) in &fun.totals {
        if d != cr {
            problems.push(format!("{c}: debits {d} != credits {cr}"));
        }
    }
    let balanced: Vec<String> = fun
        .totals
        .iter()
        .map(|(c, d, _)| format!("{c} {d}"))
        .collect();
    report.push(
        names::LEDGER,
        problems,
        format!("debits = credits in each currency: {}", balanced.join(", ")),
    );

    let live: Vec<&Loan> = fun.loans.iter().filter(|l| l.live()).collect();

    // 5. Total quota.
    let mut held: BTreeMap<&str, i128> = BTreeMap::new();
    // Partner → the currencies of its live loans (one: its agreement's).
    let mut partner_currencies: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in &live {
        *held.entry(l.partner_id.as_str()).or_default() += l.partner_held();
        partner_currencies
            .entry(l.partner_id.as_str())
            .or_default()
            .insert(l.currency.as_str());
    }
    let usage: BTreeMap<&str, i64> = fun.usage.iter().map(|(p, u)| (p.as_str(), *u)).collect();
    let mut problems = Vec::new();
    for (p, cs) in &partner_currencies {
        if cs.len() > 1 {
            problems.push(format!(
                "{p}: live loans in {cs:?}: its quota usage would add different currencies"
            ));
        }
    }
    let partners: BTreeSet<&str> = held.keys().chain(usage.keys()).copied().collect();
    for p in &partners {
        let used = usage.get(p).copied().unwrap_or(0);
        let live = held.get(p).copied().unwrap_or(0);
        if i128::from(used) != live {
            problems.push(format!(
                "{p}: quota in use {used} != held by live loans {live}"
            ));
        }
        if let Some((quota, _)) = fun.quotas.get(*p)
            && used > *quota
        {
            problems.push(format!("{p}: quota in use {used} > quota {quota}"));
        }
        if used < 0 {
            problems.push(format!("{p}: quota in use {used} < 0"));
        }
    }
    report.push(
        names::CAPACITY,
        problems,
        format!(
            "{} partners, {} minor units in use, all held by live loans and within quota",
            partners.len(),
            usage.values().map(|u| i128::from(*u)).sum::<i128>()
        ),
    );

    // 6. Daily quota.
    let mut reserved: BTreeMap<(&str, &str), i128> = BTreeMap::new();
    for l in &live {
        *reserved
            .entry((l.partner_id.as_str(), l.reserved_on.as_str()))
            .or_default() += i128::from(l.partner_amount);
    }
    let daily: BTreeMap<(&str, &str), i64> = fun
        .daily
        .iter()
        .map(|(p, d, u)| ((p.as_str(), d.as_str()), *u))
        .collect();
    let days: BTreeSet<(&str, &str)> = reserved.keys().chain(daily.keys()).copied().collect();
    let mut problems = Vec::new();
    for (p, d) in &days {
        let used = daily.get(&(*p, *d)).copied().unwrap_or(0);
        let live = reserved.get(&(*p, *d)).copied().unwrap_or(0);
        if i128::from(used) != live {
            problems.push(format!(
                "{p} on {d}: daily quota in use {used} != partner share of live loans reserved that day {live}"
            ));
        }
        if let Some((_, quota)) = fun.quotas.get(*p)
            && used > *quota
        {
            problems.push(format!(
                "{p} on {d}: daily quota in use {used} > daily quota {quota}"
            ));
        }
    }
    report.push(
        names::DAILY,
        problems,
        format!(
            "{} partner-days, {} minor units reserved",
            days.len(),
            daily.values().map(|u| i128::from(*u)).sum::<i128>()
        ),
    );

    // 7. Exposure (rules C2, C3).
    let mut outstanding: BTreeMap<String, i128> = BTreeMap::new();
    let mut all = 0i128;
    let live_currencies: BTreeSet<&str> = live.iter().map(|l| l.currency.as_str()).collect();
    for l in &live {
        *outstanding
            .entry(format!("PARTNER:{}", l.partner_id))
            .or_default() += l.bank_held();
        all += l.bank_held();
    }
    outstanding.insert("ALL".into(), all);
    let exposure: BTreeMap<&str, i64> =
        fun.exposure.iter().map(|(s, u)| (s.as_str(), *u)).collect();
    let scopes: BTreeSet<&str> = outstanding
        .keys()
        .map(String::as_str)
        .chain(exposure.keys().copied())
        .collect();
    let mut problems = Vec::new();
    if live_currencies.len() > 1 {
        problems.push(format!(
            "live loans in {live_currencies:?}: the C2/C3 exposure would add different currencies"
        ));
    }
    for scope in &scopes {
        let used = exposure.get(scope).copied().unwrap_or(0);
        let live = outstanding.get(*scope).copied().unwrap_or(0);
        if i128::from(used) != live {
            problems.push(format!(
                "{scope}: exposure {used} != bank principal outstanding on live loans {live}"
            ));
        }
    }
    report.push(
        names::EXPOSURE,
        problems,
        format!("{} scopes, ALL = {all} minor units", scopes.len()),
    );

    // Acquisition against funding. An application is judged only if it did
    // not move between the reads around funding's (its status held then).
    let steady: BTreeMap<&str, &App> = acq_side
        .apps
        .iter()
        .filter(|a| s.after.get(&a.id) == Some(&(a.status.clone(), a.updated_at)))
        .map(|a| (a.id.as_str(), a))
        .collect();
    let moving = acq_side.apps.len() - steady.len();
    let loan_of: HashMap<&str, &Loan> = fun
        .loans
        .iter()
        .map(|l| (l.application_id.as_str(), l))
        .collect();

    // 8. Funded journeys.
    let mut problems = Vec::new();
    // Every loan is in its application's currency (neither ever changes).
    let requested: HashMap<&str, &str> = acq_side
        .apps
        .iter()
        .map(|a| (a.id.as_str(), a.currency.as_str()))
        .collect();
    for l in &fun.loans {
        if let Some(c) = requested.get(l.application_id.as_str())
            && *c != l.currency
        {
            problems.push(format!(
                "{} is in {} but its application {} asked for {c}",
                l.loan_id, l.currency, l.application_id
            ));
        }
    }
    for l in &fun.loans {
        // The application is made before its loan: read after funding.
        if !s.after.contains_key(&l.application_id) {
            problems.push(format!(
                "{} has no application {}",
                l.loan_id, l.application_id
            ));
        }
    }
    for a in &acq_side.apps {
        // The loan is made before the application moves on: read before.
        if matches!(
            a.status.as_str(),
            "FUNDS_RESERVED" | "DISBURSED" | "REPAYING" | "SETTLED"
        ) && !loan_of.contains_key(a.id.as_str())
        {
            problems.push(format!(
                "{} is {} but funding has no loan for it",
                a.id, a.status
            ));
        }
    }
    for (id, a) in &steady {
        let Some(l) = loan_of.get(id) else { continue };
        // A loan event still in funding's outbox: acquisition will follow.
        let lagging = fun.pending.contains(*id);
        match (a.status.as_str(), l.status.as_str()) {
            ("FUNDS_RESERVED", st) if st != "RESERVED" && !lagging => problems.push(format!(
                "{id} is FUNDS_RESERVED but its loan {} is {st}",
                l.loan_id
            )),
            ("DISBURSED" | "REPAYING", st @ ("RESERVED" | "VOID")) => problems.push(format!(
                "{id} is {} but its loan {} is {st}",
                a.status, l.loan_id
            )),
            // The repayment that settled the loan reports SETTLED, and the
            // application follows unless that event is still to relay.
            ("DISBURSED" | "REPAYING", "SETTLED") if !lagging => problems.push(format!(
                "{id} is {} but its loan {} is SETTLED",
                a.status, l.loan_id
            )),
            // SETTLED is terminal: only a settled loan gets there.
            ("SETTLED", st) if st != "SETTLED" => problems.push(format!(
                "{id} is SETTLED but its loan {} is {st}",
                l.loan_id
            )),
            ("PARKED" | "ABANDONING", st @ ("DISBURSED" | "SETTLED")) if !lagging => {
                problems.push(format!(
                    "{id} is {} but its loan {} was disbursed ({st})",
                    a.status, l.loan_id
                ))
            }
            _ => {}
        }
    }
    report.push(
        names::AGREE,
        problems,
        format!(
            "{} loans, {} applications compared{}",
            fun.loans.len(),
            steady.len(),
            if moving > 0 {
                format!(" ({moving} moved while read: next run)")
            } else {
                String::new()
            }
        ),
    );

    // 9. Parked or closed journeys holding funds.
    let mut problems = Vec::new();
    let mut parked = 0;
    for (id, a) in &steady {
        if a.status == "PARKED" {
            parked += 1;
        }
        let Some(l) = loan_of.get(id) else { continue };
        if a.status == "PARKED" && l.status == "RESERVED" {
            problems.push(format!(
                "{id} is PARKED but its loan {} is still RESERVED",
                l.loan_id
            ));
        } else if CLOSED.contains(&a.status.as_str()) && l.live() {
            problems.push(format!(
                "{id} is closed ({}) but its loan {} is {}",
                a.status, l.loan_id, l.status
            ));
        }
    }
    for app in &fun.closed {
        if let Some(l) = loan_of.get(app.as_str())
            && l.live()
        {
            problems.push(format!(
                "{app} was closed to funding but its loan {} is {}",
                l.loan_id, l.status
            ));
        }
    }
    report.push(
        names::PARKED,
        problems,
        format!(
            "{parked} parked, {} closed to funding, none holding funds",
            fun.closed.len()
        ),
    );

    // 10. One effect per key. Keys older than the retention may be gone:
    // every record made since must have its key, and no key is without one.
    let horizon = now - retention_ms + 300_000;
    let mut problems = Vec::new();
    let mut effects = |what: &str, all: usize, recent: usize, keys: i64, scope: &str| {
        if keys > all as i64 || keys < recent as i64 {
            let within = if recent == all {
                String::new()
            } else {
                format!(" ({recent} within the keys' retention)")
            };
            problems.push(format!("{all} {what}{within} but {keys} {scope} keys"));
        }
    };
    effects(
        "applications",
        acq_side.apps.len(),
        acq_side
            .apps
            .iter()
            .filter(|a| a.created_at >= horizon)
            .count(),
        acq_side.submitted,
        "SubmitApplication",
    );
    effects(
        "loans",
        fun.loans.len(),
        fun.loans.iter().filter(|l| l.created_at >= horizon).count(),
        fun.reserve_keys,
        "ReserveFunding",
    );
    effects(
        "disbursed loans",
        fun.loans.iter().filter(|l| l.disbursed).count(),
        fun.loans
            .iter()
            .filter(|l| l.disbursed && l.created_at >= horizon)
            .count(),
        fun.disburse_keys,
        "BookDisbursement",
    );
    effects(
        "repayments",
        fun.repayments.len(),
        fun.repayments
            .iter()
            .filter(|r| r.created_at >= horizon)
            .count(),
        fun.repay_keys,
        "BookRepayment",
    );
    report.push(
        names::KEYS,
        problems,
        format!(
            "{} submissions, {} reservations, {} disbursements, {} repayments",
            acq_side.submitted, fun.reserve_keys, fun.disburse_keys, fun.repay_keys
        ),
    );

    // 11. Relays drained, audit intact.
    let mut problems = Vec::new();
    for (name, n, dead) in [
        ("acquisition", acq_side.unrelayed, acq_side.dead),
        ("funding", fun.unrelayed, fun.dead),
    ] {
        if n > 0 {
            problems.push(format!("{name}: {n} outbox events not relayed"));
        }
        if dead > 0 {
            problems.push(format!(
                "{name}: {dead} outbox events given up on (dead letters)"
            ));
        }
    }
    let mut rows = 0;
    for (svc, verdict) in &s.audits {
        match verdict {
            Ok(Verdict::Intact(n)) => rows += n,
            Ok(Verdict::Broken { seq, why }) => {
                problems.push(format!("{svc}: audit chain broken at row {seq}: {why}"))
            }
            Err(e) => problems.push(format!("{svc}: audit chain unreadable: {e}")),
        }
    }
    report.push(
        names::RELAYED,
        problems,
        format!(
            "{} audit chains intact ({rows} rows), nothing left to relay",
            s.audits.len()
        ),
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, status: &str) -> App {
        App {
            id: id.into(),
            status: status.into(),
            currency: "CNY".into(),
            reasons: "X".into(),
            created_at: 0,
            updated_at: 1,
        }
    }

    fn loan(app: &str, status: &str, day: &str) -> Loan {
        Loan {
            loan_id: format!("loan-{app}"),
            application_id: app.into(),
            partner_id: "p1".into(),
            status: status.into(),
            currency: "CNY".into(),
            principal: 1_000,
            bank_amount: 700,
            partner_amount: 300,
            principal_paid: 0,
            interest_paid: 0,
            partner_principal_paid: 0,
            disbursed: status == "DISBURSED" || status == "SETTLED",
            reserved_on: day.into(),
            created_at: 0,
        }
    }

    /// One reserved and one disbursed loan with 100 of principal repaid
    /// (30 of it the partner's), one voided; counters as funding moves them.
    fn healthy() -> Snapshot {
        let mut repaid = loan("a2", "DISBURSED", "2026-11-23");
        repaid.principal_paid = 100;
        repaid.partner_principal_paid = 30;
        let apps = vec![
            app("a1", "FUNDS_RESERVED"),
            app("a2", "REPAYING"),
            app("a3", "FUNDING_REJECTED"),
        ];
        let alloc = |funder: Funder, m: i64| fund::Allocation {
            funder: funder as i32,
            component: fund::Component::Principal as i32,
            amount: Some(colend_contracts::common::v1::Money {
                minor_units: m,
                currency_code: "CNY".into(),
            }),
        };
        let before = AcquisitionData {
            submitted: 3,
            unrelayed: 0,
            dead: 0,
            apps,
        };
        let after = before.positions();
        Snapshot {
            before,
            funding: FundingData {
                loans: vec![
                    loan("a1", "RESERVED", "2026-11-24"),
                    repaid,
                    loan("a3", "VOID", "2026-11-24"),
                ],
                repayments: vec![Repayment {
                    id: "r1".into(),
                    loan_id: "loan-a2".into(),
                    amount: 100,
                    bank_ref: "b1".into(),
                    created_at: 0,
                    body: Some(fund::Repayment {
                        allocations: vec![alloc(Funder::Bank, 70), alloc(Funder::Partner, 30)],
                        ..Default::default()
                    }),
                }],
                usage: vec![("p1".into(), 300 + 270)],
                daily: vec![
                    ("p1".into(), "2026-11-23".into(), 300),
                    ("p1".into(), "2026-11-24".into(), 300),
                ],
                exposure: vec![("PARTNER:p1".into(), 700 + 630), ("ALL".into(), 1_330)],
                quotas: [("p1".to_string(), (10_000, 5_000))].into(),
                closed: vec!["a3".into()],
                reserve_keys: 3,
                disburse_keys: 1,
                repay_keys: 1,
                ..Default::default()
            },
            after,
            audits: vec![("funding", Ok(Verdict::Intact(3)))],
        }
    }

    fn failed(r: &Report) -> Vec<&'static str> {
        r.checks
            .iter()
            .filter(|c| !c.holds)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn counters_moved_as_funding_moves_them_hold() {
        let r = evaluate(&healthy(), 0, 3_600_000);
        assert!(r.holds(), "{r}");
        assert_eq!(r.checks.len(), 11);
    }

    #[test]
    fn amounts_are_never_added_across_currencies() {
        // A loan in another currency than its application's.
        let mut s = healthy();
        s.funding.loans[0].currency = "USD".into();
        let failed_now = failed(&evaluate(&s, 0, 3_600_000));
        assert!(failed_now.contains(&names::AGREE), "{failed_now:?}");
        // A partner's live loans in two currencies: usage and exposure would mix them.
        assert!(failed_now.contains(&names::CAPACITY), "{failed_now:?}");
        assert!(failed_now.contains(&names::EXPOSURE), "{failed_now:?}");
        // The ledger balances per currency, not across them.
        let mut s = healthy();
        s.funding.totals = vec![("CNY".into(), 500, 500), ("USD".into(), 7, 7)];
        assert!(evaluate(&s, 0, 3_600_000).holds());
        s.funding.totals = vec![("CNY".into(), 507, 500), ("USD".into(), 0, 7)];
        assert_eq!(failed(&evaluate(&s, 0, 3_600_000)), vec![names::LEDGER]);
    }

    #[test]
    fn a_repayment_does_not_free_daily_quota() {
        let mut s = healthy();
        s.funding.daily[0].2 = 270;
        assert_eq!(failed(&evaluate(&s, 0, 3_600_000)), vec![names::DAILY]);
    }

    #[test]
    fn a_void_not_given_back_breaks_every_counter() {
        let mut s = healthy();
        s.funding.usage[0].1 += 300;
        s.funding.daily[1].2 += 300;
        s.funding.exposure[0].1 += 700;
        s.funding.exposure[1].1 += 700;
        assert_eq!(
            failed(&evaluate(&s, 0, 3_600_000)),
            vec![names::CAPACITY, names::DAILY, names::EXPOSURE]
        );
    }

    #[test]
    fn a_parked_journey_over_a_reserved_loan_is_flagged() {
        let mut s = healthy();
        s.before.apps[0].status = "PARKED".into();
        s.after = s.before.positions();
        let r = evaluate(&s, 0, 3_600_000);
        assert_eq!(failed(&r), vec![names::PARKED]);
        // The same application moving between the two reads is left for the next run.
        s.after.insert("a1".into(), ("FUNDS_RESERVED".into(), 2));
        assert!(evaluate(&s, 0, 3_600_000).holds());
    }

    #[test]
    fn a_disbursement_still_to_relay_is_a_lag_not_a_break() {
        let mut s = healthy();
        s.funding.loans[0].status = "DISBURSED".into();
        s.funding.loans[0].disbursed = true;
        s.funding.disburse_keys = 2;
        assert_eq!(failed(&evaluate(&s, 0, 3_600_000)), vec![names::AGREE]);
        s.funding.pending.insert("a1".into());
        s.funding.unrelayed = 1;
        assert_eq!(failed(&evaluate(&s, 0, 3_600_000)), vec![names::RELAYED]);
    }

    #[test]
    fn a_settled_loan_settles_its_application() {
        let mut s = healthy();
        s.funding.loans[1].status = "SETTLED".into();
        // The SETTLED event still in funding's outbox: a lag, not a break.
        s.funding.pending.insert("a2".into());
        s.funding.unrelayed = 1;
        assert_eq!(failed(&evaluate(&s, 0, 3_600_000)), vec![names::RELAYED]);
        // Relayed, but the application stayed REPAYING: a break.
        s.funding.pending.clear();
        s.funding.unrelayed = 0;
        assert_eq!(failed(&evaluate(&s, 0, 3_600_000)), vec![names::AGREE]);
        // The application followed: SETTLED ends its journey.
        s.before.apps[1].status = "SETTLED".into();
        s.after = s.before.positions();
        let r = evaluate(&s, 0, 3_600_000);
        assert!(r.holds(), "{r}");
        assert_eq!(r.applications.get("SETTLED"), Some(&1));
        // A SETTLED application over a loan still being repaid is a break.
        s.funding.loans[1].status = "DISBURSED".into();
        assert_eq!(failed(&evaluate(&s, 0, 3_600_000)), vec![names::AGREE]);
    }

    #[test]
    fn keys_past_their_retention_may_be_gone() {
        let mut s = healthy();
        s.before.submitted = 2;
        assert_eq!(failed(&evaluate(&s, 0, 3_600_000)), vec![names::KEYS]);
        // Two days later the oldest keys may have been purged.
        assert!(evaluate(&s, 48 * 3_600_000, 24 * 3_600_000).holds());
        s.before.submitted = 4;
        assert_eq!(
            failed(&evaluate(&s, 48 * 3_600_000, 24 * 3_600_000)),
            vec![names::KEYS]
        );
    }

    #[test]
    fn refuses_storage_without_the_tables() {
        let none = |_: &str, _: &str| false;
        assert!(required(&none, "x", "file").is_err());
        let all = |_: &str, _: &str| true;
        assert!(required(&all, "x", "file").is_ok());
        let no_daily = |_: &str, t: &str| t != "partner_daily_usage";
        let e = required(&no_daily, "x", "file").unwrap_err();
        assert!(e.0.contains("funding lacks partner_daily_usage"), "{e}");
    }
}
