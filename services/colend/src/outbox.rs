//! `colend outbox list|retry|drop`: a service's outbox as its operators see
//! it (libs/platform/src/outbox.rs).
//!
//! - `list` shows the pending events in order (attempts, when the next is
//!   due, the last error, whether one waits behind an earlier event of its
//!   aggregate) and the dead letters with their last error.
//! - `retry` moves a dead letter (or all of them) back to pending, in its
//!   original place in its aggregate's order, with a fresh count of attempts.
//! - `drop` deletes a dead letter for good: its aggregate's later events go on.
//!
//! Storage as `colend check` finds it (`DATABASE_URL`, else the SQLite files
//! in `--data-dir`, which must exist). A retry or a drop is recorded in the
//! service's audit log, in the same transaction, with the operator and the
//! reason.
use clap::{Args, Subcommand};
use colend_platform::config::Backends;
use colend_platform::{Db, audit, outbox};
use sqlx::Connection;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub command: OutboxCommand,
}

/// Which service's outbox, where.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// acquisition, kyc, credit, funding or reconciliation.
    #[arg(long)]
    pub service: String,
    #[arg(long, env = "COLEND_DATA_DIR", default_value = "./colend-data")]
    pub data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum OutboxCommand {
    /// Lists pending events (in order) and dead letters, with attempts and
    /// the last error.
    List {
        #[command(flatten)]
        target: Target,
        /// At most this many of each.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Moves a dead letter (or all of them) back to pending, in its place in
    /// its aggregate's order, with a fresh count of attempts.
    Retry {
        #[command(flatten)]
        target: Target,
        /// The dead letter's event id.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        event_id: Option<String>,
        /// Every dead letter of the service.
        #[arg(long)]
        all: bool,
        /// Who retries (recorded in the audit log).
        #[arg(long)]
        operator: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "retried from the dead letters")]
        reason: String,
    },
    /// Deletes a dead letter for good; its aggregate's later events go on.
    Drop {
        #[command(flatten)]
        target: Target,
        /// The dead letter's event id.
        #[arg(long)]
        event_id: String,
        /// Who drops it (recorded in the audit log).
        #[arg(long)]
        operator: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

/// Runs one `colend outbox` command; the lines to print.
pub async fn run(cmd: OutboxCommand) -> anyhow::Result<Vec<String>> {
    match cmd {
        OutboxCommand::List {
            target,
            limit,
            json,
        } => {
            anyhow::ensure!((1..=10_000).contains(&limit), "--limit must be 1 to 10000");
            let db = open(&target).await?;
            list(&db, &target.service, limit, json).await
        }
        OutboxCommand::Retry {
            target,
            event_id,
            all,
            operator,
            reason,
        } => {
            let db = open(&target).await?;
            let id = if all { None } else { event_id.as_deref() };
            let action = "colend outbox retry";
            let resource = format!("outbox:{}", id.unwrap_or("*"));
            let mut conn = db.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let n = outbox::retry(&mut tx, id).await?;
            anyhow::ensure!(
                n > 0 || id.is_none(),
                "{}: no dead letter {:?}",
                target.service,
                id.unwrap_or("")
            );
            audit::append(&mut tx, &entry(action, &resource, &operator, &reason)).await?;
            tx.commit().await?;
            Ok(vec![format!(
                "{}: {n} dead letter(s) back to pending",
                target.service
            )])
        }
        OutboxCommand::Drop {
            target,
            event_id,
            operator,
            reason,
        } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
            let db = open(&target).await?;
            let mut conn = db.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            anyhow::ensure!(
                outbox::drop_dead_letter(&mut tx, &event_id).await?,
                "{}: no dead letter {event_id:?}",
                target.service
            );
            let resource = format!("outbox:{event_id}");
            audit::append(
                &mut tx,
                &entry("colend outbox drop", &resource, &operator, &reason),
            )
            .await?;
            tx.commit().await?;
            Ok(vec![format!(
                "{}: dead letter {event_id} dropped",
                target.service
            )])
        }
    }
}

/// An operator's action for the audit log.
fn entry(action: &str, resource: &str, operator: &str, reason: &str) -> audit::Entry {
    audit::Entry {
        at: colend_platform::time::now_millis(),
        caller_class: "operator".into(),
        caller_subject: operator.to_string(),
        action: action.to_string(),
        resource: resource.to_string(),
        outcome: "ALLOWED".into(),
        reason: reason.to_string(),
        ..audit::Entry::default()
    }
}

/// The service's storage; an SQLite file that is not there is an error
/// (rather than a new, empty database).
async fn open(target: &Target) -> anyhow::Result<Db> {
    anyhow::ensure!(
        crate::SERVICES.contains(&target.service.as_str()),
        "unknown service {:?}; one of {}",
        target.service,
        crate::SERVICES.join(", ")
    );
    let mut backends = Backends::from_env();
    backends.data_dir = target.data_dir.clone();
    // An operator's tool: no migration runs, nothing is created.
    colend_platform::Db::open_existing(&backends, &target.service).await
}

fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

async fn list(db: &Db, service: &str, limit: i64, json: bool) -> anyhow::Result<Vec<String>> {
    let stats = outbox::stats(db).await?;
    let pending = outbox::pending(db, limit).await?;
    let dead = outbox::dead_letters(db, limit).await?;
    let now = colend_platform::time::now_millis();
    if json {
        let doc = serde_json::json!({
            "service": service,
            "pending": stats.pending,
            "lag_seconds": stats.lag_seconds(now),
            "dead_letters": stats.dead_letters,
            "pending_events": pending.iter().map(|p| serde_json::json!({
                "seq": p.seq,
                "event_id": p.event_id,
                "aggregate_id": p.aggregate_id,
                "topic": p.topic,
                "created_at": when(p.created_at),
                "attempts": p.attempts,
                "next_attempt_at": when(p.next_attempt_at),
                "last_error": p.last_error,
                "in_flight": p.in_flight,
                "held": p.held,
            })).collect::<Vec<_>>(),
            "dead_letter_events": dead.iter().map(|d| serde_json::json!({
                "seq": d.seq,
                "event_id": d.event_id,
                "aggregate_id": d.aggregate_id,
                "topic": d.topic,
                "created_at": when(d.created_at),
                "attempts": d.attempts,
                "last_error": d.last_error,
                "dead_at": when(d.dead_at),
            })).collect::<Vec<_>>(),
        });
        return Ok(vec![serde_json::to_string_pretty(&doc)?]);
    }
    let mut out = vec![format!(
        "{service}: {} pending (oldest {:.1} s ago), {} dead letter(s)",
        stats.pending,
        stats.lag_seconds(now),
        stats.dead_letters
    )];
    if !pending.is_empty() {
        out.push("pending (in order):".into());
        for p in &pending {
            let state = if p.in_flight {
                "being delivered".to_string()
            } else if p.held {
                "waiting behind an earlier event of its aggregate".to_string()
            } else if p.next_attempt_at > now {
                format!("next attempt {}", when(p.next_attempt_at))
            } else {
                "due".to_string()
            };
            out.push(format!(
                "  {} {} aggregate={} topic={} written={} attempts={} {state}{}",
                p.seq,
                p.event_id,
                p.aggregate_id,
                p.topic,
                when(p.created_at),
                p.attempts,
                if p.last_error.is_empty() {
                    String::new()
                } else {
                    format!(" last error: {}", p.last_error)
                }
            ));
        }
    }
    if !dead.is_empty() {
        out.push("dead letters (retry: colend outbox retry; drop: colend outbox drop):".into());
        for d in &dead {
            out.push(format!(
                "  {} {} aggregate={} topic={} written={} attempts={} dead since {} last error: {}",
                d.seq,
                d.event_id,
                d.aggregate_id,
                d.topic,
                when(d.created_at),
                d.attempts,
                when(d.dead_at),
                d.last_error
            ));
        }
    }
    Ok(out)
}
