//! The outbox: events for other services (or for this service's own
//! watchers), written in the caller's transaction and relayed at least once.
//!
//! What holds:
//! - **Atomic with the change.** [`enqueue`] writes the event in the
//!   caller's transaction: the change and its event commit together or not
//!   at all.
//! - **In order per aggregate, in parallel across aggregates.** Each event
//!   belongs to an aggregate (a loan, an application) and has a `seq` taken
//!   when it is written (the commit order, when the aggregate's writers are
//!   serialized on its row). An event is delivered only once every earlier
//!   event of its aggregate has been: a head event that is failing, backing
//!   off or dead-lettered holds back its own aggregate's later events and
//!   nothing else. Heads of different aggregates are delivered concurrently
//!   (`COLEND_OUTBOX_CONCURRENCY`).
//! - **Backoff, then dead letters.** A failed delivery is tried again after
//!   `COLEND_OUTBOX_BACKOFF_MS`, doubling per attempt up to
//!   `COLEND_OUTBOX_MAX_BACKOFF_MS`, with jitter (`next_attempt_at`, per
//!   event). After `COLEND_OUTBOX_MAX_ATTEMPTS` attempts, or at once when the
//!   delivery says the event can never be taken ([`Failure::Reject`]: a
//!   payload that does not decode, a body the receiver refuses as invalid),
//!   the event moves to `outbox_dead_letters` with its last error. The relay
//!   goes on with every other aggregate. Operators list, retry and drop dead
//!   letters (`colend outbox list|retry|drop`; [`retry`], [`drop_dead_letter`]).
//! - **Several replicas, one table.** A round claims the heads it will
//!   deliver in one short statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL;
//!   SQLite has one connection) and leases them (`COLEND_OUTBOX_LEASE_MS`):
//!   no other relay claims a leased event, a delivery is cut off (and counted
//!   as failed) at half the lease so it cannot outlive it, and every outcome
//!   is written only under the same claim, so a relay whose lease ran out
//!   changes nothing. Replicas' clocks are assumed to agree within the
//!   other half of the lease. A claim names its replica
//!   (`COLEND_INSTANCE_ID`, else `HOSTNAME`): a replica that restarts after
//!   dying mid-delivery takes its own claims back at once; another replica
//!   takes them over when their lease ends.
//! - **At least once.** A relay that dies between delivering and recording
//!   it delivers again once the lease is over; receivers deduplicate by event
//!   id. An attempt that never finished still counts, so an event that kills
//!   its relay ends as a dead letter instead of looping.
//! - **Bounded.** Sent events are purged after `COLEND_OUTBOX_RETENTION_HOURS`.
//!
//! Metrics, labelled `outbox` with the service's name (its schema): `colend_outbox_pending`
//! (events not yet delivered), `colend_outbox_lag_seconds` (age of the oldest
//! of them), `colend_outbox_dead_letters` (dead letters now),
//! `colend_outbox_dead_lettered_total`, `colend_outbox_delivered_total`,
//! `colend_outbox_failures_total` (failed attempts).
//!
//! The tables are the platform's (`libs/platform/migrations/0001_outbox.*.sql`).
use crate::config::env_parse;
use crate::db::{Backend, Db};
use crate::error::{ApiError, ApiResult};
use crate::time::now_millis;
use futures::StreamExt;
use futures::future::BoxFuture;
use sqlx::{AnyConnection, Connection, Row};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Writes an event for `aggregate_id` in the caller's transaction and returns
/// its (new) id.
pub async fn enqueue(
    conn: &mut AnyConnection,
    aggregate_id: &str,
    topic: &str,
    payload: &[u8],
) -> ApiResult<String> {
    let event_id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    enqueue_with_id(conn, &event_id, aggregate_id, topic, payload).await?;
    Ok(event_id)
}

/// Writes an event with the caller's id (which receivers deduplicate by) in
/// the caller's transaction; false when an event with that id is already
/// waiting or was sent within the retention.
pub async fn enqueue_with_id(
    conn: &mut AnyConnection,
    event_id: &str,
    aggregate_id: &str,
    topic: &str,
    payload: &[u8],
) -> ApiResult<bool> {
    let done = sqlx::query(
        "INSERT INTO outbox_events (event_id, aggregate_id, topic, payload, created_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(aggregate_id)
    .bind(topic)
    .bind(hex::encode(payload))
    .bind(now_millis())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An event being delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: i64,
    pub event_id: String,
    pub aggregate_id: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub created_at: i64,
    /// 1 for the first delivery, 2 for the first retry, …
    pub attempt: i64,
}

/// Why a delivery did not go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// May go through later: tried again after the backoff (a dead letter
    /// after the last attempt).
    Retry(String),
    /// Can never go through (an undecodable payload, a body the receiver
    /// refuses as invalid): a dead letter at once.
    Reject(String),
}

impl Failure {
    pub fn retry(e: impl std::fmt::Display) -> Failure {
        Failure::Retry(e.to_string())
    }

    pub fn reject(e: impl std::fmt::Display) -> Failure {
        Failure::Reject(e.to_string())
    }
}

/// How a relay runs (environment, with defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Attempts before an event becomes a dead letter (`COLEND_OUTBOX_MAX_ATTEMPTS`, 20:
    /// with the default backoff about 1 h 45 min, longer than a receiver's
    /// usual outage).
    pub max_attempts: i64,
    /// Wait after the first failed attempt; doubles with each (`COLEND_OUTBOX_BACKOFF_MS`, 1000).
    pub backoff: Duration,
    /// Longest wait between attempts (`COLEND_OUTBOX_MAX_BACKOFF_MS`, 600000).
    pub max_backoff: Duration,
    /// Most events claimed by one round (`COLEND_OUTBOX_BATCH`, 200).
    pub batch: i64,
    /// Aggregates delivered at once (`COLEND_OUTBOX_CONCURRENCY`, 16).
    pub concurrency: usize,
    /// How long a claim lasts; a delivery is cut off at half of it (`COLEND_OUTBOX_LEASE_MS`, 30000).
    pub lease: Duration,
    /// How long sent events are kept (`COLEND_OUTBOX_RETENTION_HOURS`, 24).
    pub retention: Duration,
    /// This replica's name on its claims (`COLEND_INSTANCE_ID`, else
    /// `HOSTNAME`, which Kubernetes sets to the pod's name): a restarted
    /// replica takes back at once the claims its previous run left, instead
    /// of waiting for their lease. Replicas must have distinct names.
    pub owner: String,
    /// The owner was named (`COLEND_INSTANCE_ID` or `HOSTNAME`), not the
    /// default: only then are a previous run's claims taken back at start,
    /// since replicas sharing the default name would free each other's.
    pub named: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_attempts: 20,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            batch: 200,
            concurrency: 16,
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3_600),
            owner: "colend".into(),
            named: false,
        }
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Settings> {
        let d = Settings::default();
        let max_attempts = env_parse("COLEND_OUTBOX_MAX_ATTEMPTS", d.max_attempts)?;
        anyhow::ensure!(
            (1..=1_000).contains(&max_attempts),
            "COLEND_OUTBOX_MAX_ATTEMPTS={max_attempts} must be 1 to 1000"
        );
        let backoff = env_parse("COLEND_OUTBOX_BACKOFF_MS", 1_000u64)?;
        let max_backoff = env_parse("COLEND_OUTBOX_MAX_BACKOFF_MS", 600_000u64)?;
        anyhow::ensure!(
            backoff >= 1 && max_backoff >= backoff,
            "COLEND_OUTBOX_BACKOFF_MS must be at least 1 and at most COLEND_OUTBOX_MAX_BACKOFF_MS"
        );
        let batch = env_parse("COLEND_OUTBOX_BATCH", d.batch)?;
        anyhow::ensure!(
            (1..=10_000).contains(&batch),
            "COLEND_OUTBOX_BATCH={batch} must be 1 to 10000"
        );
        let concurrency = env_parse("COLEND_OUTBOX_CONCURRENCY", d.concurrency)?;
        anyhow::ensure!(
            (1..=1_000).contains(&concurrency),
            "COLEND_OUTBOX_CONCURRENCY={concurrency} must be 1 to 1000"
        );
        let lease = env_parse("COLEND_OUTBOX_LEASE_MS", 30_000u64)?;
        anyhow::ensure!(
            lease >= 100,
            "COLEND_OUTBOX_LEASE_MS={lease} must be at least 100"
        );
        let hours = env_parse("COLEND_OUTBOX_RETENTION_HOURS", 24u64)?;
        anyhow::ensure!(hours >= 1, "COLEND_OUTBOX_RETENTION_HOURS must be positive");
        Ok(Settings {
            max_attempts,
            backoff: Duration::from_millis(backoff),
            max_backoff: Duration::from_millis(max_backoff),
            batch,
            concurrency,
            lease: Duration::from_millis(lease),
            retention: Duration::from_secs(hours * 3_600),
            named: crate::config::env_opt("COLEND_INSTANCE_ID")
                .or_else(|| crate::config::env_opt("HOSTNAME"))
                .is_some(),
            owner: crate::config::env_opt("COLEND_INSTANCE_ID")
                .or_else(|| crate::config::env_opt("HOSTNAME"))
                .unwrap_or(d.owner),
        })
    }

    /// The wait after failed attempt `attempt` (1-based), before jitter:
    /// the backoff doubled `attempt - 1` times, at most the maximum.
    pub fn backoff_after(&self, attempt: i64) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// [`Settings::backoff_after`] with up to a quarter more at random, so
    /// events that failed together do not all come back at once.
    fn wait_after(&self, attempt: i64) -> Duration {
        let base = self.backoff_after(attempt);
        let quarter = u64::try_from(base.as_millis() / 4).unwrap_or(u64::MAX);
        base + Duration::from_millis(rand::random_range(0..=quarter))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

type DeliverFn = dyn Fn(Event) -> BoxFuture<'static, Result<(), Failure>> + Send + Sync;

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Events claimed (heads of their aggregates, due, not leased elsewhere).
    pub claimed: usize,
    pub delivered: usize,
    /// Failed attempts that will be tried again.
    pub retrying: usize,
    pub dead_lettered: usize,
    /// Full batch claimed: more may be due at once.
    pub full: bool,
}

impl Round {
    /// Whether another round should follow at once: something went out
    /// (the next events of those aggregates are now heads) or the batch was full.
    pub fn more(&self) -> bool {
        self.delivered > 0 || self.full
    }
}

/// Relays one service's outbox through a delivery the service supplies.
#[derive(Clone)]
pub struct Relay(Arc<Inner>);

struct Inner {
    db: Db,
    settings: Settings,
    deliver: Box<DeliverFn>,
    /// Run before a round: moves events an older version wrote elsewhere.
    adopt: std::sync::OnceLock<&'static str>,
    adopted_at: AtomicI64,
    /// This relay's id in its claims (see [`Relay::claim_prefix`]).
    id: String,
    /// Rounds of one relay never overlap.
    round: tokio::sync::Mutex<()>,
    /// Whether the claims of this replica's previous run were taken back.
    reclaimed: std::sync::atomic::AtomicBool,
    /// A round failed between claiming and recording: claims of this relay
    /// may be left over (none of its deliveries runs between rounds).
    left_over: std::sync::atomic::AtomicBool,
    purged_at: AtomicI64,
    observed_at: AtomicI64,
}

/// What happened to one claimed event.
enum Outcome {
    Delivered,
    Retrying,
    DeadLettered,
}

impl Relay {
    /// A relay of `db`'s outbox that hands each event to `deliver`.
    pub fn new<F, Fut>(db: Db, settings: Settings, deliver: F) -> Relay
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        Relay(Arc::new(Inner {
            db,
            settings,
            deliver: Box::new(move |e| Box::pin(deliver(e))),
            adopt: std::sync::OnceLock::new(),
            adopted_at: AtomicI64::new(0),
            id: uuid::Uuid::new_v4().simple().to_string(),
            round: tokio::sync::Mutex::new(()),
            reclaimed: std::sync::atomic::AtomicBool::new(false),
            left_over: std::sync::atomic::AtomicBool::new(false),
            purged_at: AtomicI64::new(0),
            observed_at: AtomicI64::new(0),
        }))
    }

    /// Runs `sql` (statements, in one transaction) before rounds, at most
    /// every 5 s: it moves into `outbox_events` what a previous version of
    /// the service still writes to a table of its own while both run (a
    /// rolling upgrade). The same statements as the migration that moved
    /// that table's events at the upgrade.
    /// (Set once; a second call changes nothing.)
    pub fn adopting(self, sql: &'static str) -> Relay {
        let _ = self.0.adopt.set(sql);
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Runs rounds in the background until shutdown: at once while there is
    /// more, else on `ready` (a commit wrote an event) or every second.
    pub fn spawn(
        &self,
        workers: &crate::lifecycle::Workers,
        name: &'static str,
        ready: Arc<tokio::sync::Notify>,
    ) {
        let this = self.clone();
        workers.spawn_relay(name, ready, move || {
            let this = this.clone();
            async move { this.run_once().await.map(|r| r.more()) }
        });
    }

    /// One round: claims the due heads, delivers them (aggregates in
    /// parallel), records each outcome; then the housekeeping that is due
    /// (metrics every second, purge every minute).
    pub async fn run_once(&self) -> ApiResult<Round> {
        let _one_at_a_time = self.0.round.lock().await;
        let s = &self.0.settings;
        self.adopt().await;
        self.reclaim().await?;
        // Until this round has recorded every outcome, its claims may be left over.
        self.0.left_over.store(true, Ordering::Relaxed);
        let events = self.claim().await?;
        let mut round = Round {
            claimed: events.len(),
            full: events.len() as i64 >= s.batch,
            ..Round::default()
        };
        let outcomes: Vec<ApiResult<Outcome>> = futures::stream::iter(events)
            .map(|(claim, event)| self.handle(claim, event))
            .buffer_unordered(s.concurrency)
            .collect()
            .await;
        let mut first_error = None;
        for o in outcomes {
            match o {
                Ok(Outcome::Delivered) => round.delivered += 1,
                Ok(Outcome::Retrying) => round.retrying += 1,
                Ok(Outcome::DeadLettered) => round.dead_lettered += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let service = self.0.db.schema.clone();
        metrics::counter!("colend_outbox_delivered_total", "outbox" => service.clone())
            .increment(round.delivered as u64);
        metrics::counter!("colend_outbox_failures_total", "outbox" => service.clone())
            .increment((round.retrying + round.dead_lettered) as u64);
        metrics::counter!("colend_outbox_dead_lettered_total", "outbox" => service)
            .increment(round.dead_lettered as u64);
        self.housekeeping().await;
        match first_error {
            Some(e) => Err(e),
            None => {
                self.0.left_over.store(false, Ordering::Relaxed);
                Ok(round)
            }
        }
    }

    /// The start of this relay's claim ids, `<owner>/<service>|<run>:<relay>#`
    /// (`<run>`: this process's run), cut after the replica, the run or the relay.
    fn claim_prefix(&self, upto: Upto) -> String {
        static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let mut p = format!("{}/{}|", self.0.settings.owner, self.0.db.schema);
        if upto != Upto::Replica {
            p.push_str(RUN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()));
            p.push(':');
        }
        if upto == Upto::Relay {
            p.push_str(&self.0.id);
            p.push('#');
        }
        p
    }

    /// Frees claims nobody is delivering, so their events go again now
    /// rather than when their lease ends: once per relay, those this
    /// replica's previous run left (it died while delivering); and after a
    /// round that could not record its outcomes (the database was away),
    /// this relay's own.
    async fn reclaim(&self) -> ApiResult<()> {
        let first = !self.0.reclaimed.load(Ordering::Relaxed);
        if first && self.0.settings.named {
            let (replica, run) = (
                self.claim_prefix(Upto::Replica),
                self.claim_prefix(Upto::Run),
            );
            let freed = free_claims(&self.0.db, &replica, Some(&run)).await?;
            if freed > 0 {
                tracing::info!(service = %self.0.db.schema, events = freed, "outbox events a previous run had claimed are free again");
            }
            self.0.reclaimed.store(true, Ordering::Relaxed);
        }
        if self.0.left_over.load(Ordering::Relaxed) {
            free_claims(&self.0.db, &self.claim_prefix(Upto::Relay), None).await?;
            self.0.left_over.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Claims up to a batch of due heads under a fresh claim id.
    async fn claim(&self) -> ApiResult<Vec<(Claim, RawEvent)>> {
        let s = &self.0.settings;
        let db = &self.0.db;
        let claim = format!(
            "{}{}",
            self.claim_prefix(Upto::Relay),
            uuid::Uuid::new_v4().simple()
        );
        let now = now_millis();
        let lock = if db.backend == Backend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE outbox_events SET claimed_by = $1, claimed_until = $2, attempts = attempts + 1 \
             WHERE seq IN (SELECT e.seq FROM outbox_events e \
               WHERE e.sent_at = 0 AND e.next_attempt_at <= $3 AND e.claimed_until <= $3 \
               AND NOT EXISTS (SELECT 1 FROM outbox_events p \
                 WHERE p.aggregate_id = e.aggregate_id AND p.sent_at = 0 AND p.seq < e.seq) \
               AND NOT EXISTS (SELECT 1 FROM outbox_dead_letters d WHERE d.aggregate_id = e.aggregate_id) \
               ORDER BY e.seq LIMIT $4{lock}) \
             RETURNING seq, event_id, aggregate_id, topic, payload, created_at, attempts, last_error"
        );
        let until = now.saturating_add(millis(s.lease));
        let rows = sqlx::query(&sql)
            .bind(&claim)
            .bind(until)
            .bind(now)
            .bind(s.batch)
            .fetch_all(&db.pool)
            .await?;
        let mut events = rows
            .iter()
            .map(|r| {
                Ok(RawEvent {
                    seq: r.try_get("seq")?,
                    event_id: r.try_get("event_id")?,
                    aggregate_id: r.try_get("aggregate_id")?,
                    topic: r.try_get("topic")?,
                    payload: r.try_get("payload")?,
                    created_at: r.try_get("created_at")?,
                    attempt: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        events.sort_by_key(|e| e.seq);
        // Every delivery of the round must end by half the lease from the
        // claim, however late in the round it starts, so a claim never runs
        // out while its event is being delivered.
        let deadline = now.saturating_add(millis(s.lease / 2));
        Ok(events
            .into_iter()
            .map(|e| {
                (
                    Claim {
                        id: claim.clone(),
                        deadline,
                    },
                    e,
                )
            })
            .collect())
    }

    /// Delivers one claimed event and records the outcome under the claim.
    async fn handle(&self, claimed: Claim, raw: RawEvent) -> ApiResult<Outcome> {
        let s = &self.0.settings;
        let claim = claimed.id;
        let left = claimed.deadline.saturating_sub(now_millis());
        if left <= 0 {
            // The round ran out of time before this event's turn: nothing was
            // sent, so the attempt is given back with the claim.
            sqlx::query(
                "UPDATE outbox_events SET claimed_by = '', claimed_until = 0, attempts = attempts - 1 \
                 WHERE seq = $1 AND claimed_by = $2",
            )
            .bind(raw.seq)
            .bind(&claim)
            .execute(&self.0.db.pool)
            .await?;
            return Ok(Outcome::Retrying);
        }
        if raw.attempt > s.max_attempts {
            // Earlier attempts began and never finished (the relay died or
            // lost its lease): give up rather than loop.
            let why = format!(
                "gave up after {} attempts, the last of which did not finish{}",
                s.max_attempts,
                if raw.last_error.is_empty() {
                    String::new()
                } else {
                    format!("; before that: {}", raw.last_error)
                }
            );
            return self.dead_letter(&claim, &raw, &why).await;
        }
        let payload = match hex::decode(&raw.payload) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .dead_letter(&claim, &raw, &format!("stored payload is not hex: {e}"))
                    .await;
            }
        };
        let event = Event {
            seq: raw.seq,
            event_id: raw.event_id.clone(),
            aggregate_id: raw.aggregate_id.clone(),
            topic: raw.topic.clone(),
            payload,
            created_at: raw.created_at,
            attempt: raw.attempt,
        };
        let cut_off = Duration::from_millis(u64::try_from(left).unwrap_or(0));
        let result = match tokio::time::timeout(cut_off, (self.0.deliver)(event)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Retry(format!(
                "no answer within {} ms (what was left of half the lease)",
                cut_off.as_millis()
            ))),
        };
        match result {
            Ok(()) => {
                let done = sqlx::query(
                    "UPDATE outbox_events SET sent_at = $1, claimed_by = '', claimed_until = 0, last_error = '' \
                     WHERE seq = $2 AND claimed_by = $3",
                )
                .bind(now_millis().max(1))
                .bind(raw.seq)
                .bind(&claim)
                .execute(&self.0.db.pool)
                .await?;
                if done.rows_affected() == 0 {
                    tracing::warn!(
                        event_id = raw.event_id,
                        "outbox event delivered after its claim ran out; it may be delivered again"
                    );
                }
                Ok(Outcome::Delivered)
            }
            Err(Failure::Reject(why)) => {
                tracing::error!(event_id = raw.event_id, aggregate_id = raw.aggregate_id, topic = raw.topic, error = %why, "outbox event refused for good: dead letter");
                self.dead_letter(&claim, &raw, &why).await
            }
            Err(Failure::Retry(why)) if raw.attempt >= s.max_attempts => {
                tracing::error!(event_id = raw.event_id, aggregate_id = raw.aggregate_id, attempts = raw.attempt, error = %why, "outbox event failed its last attempt: dead letter");
                self.dead_letter(&claim, &raw, &why).await
            }
            Err(Failure::Retry(why)) => {
                let wait = s.wait_after(raw.attempt);
                tracing::warn!(event_id = raw.event_id, aggregate_id = raw.aggregate_id, attempt = raw.attempt, retry_in_ms = wait.as_millis() as u64, error = %why, "outbox event not delivered; will retry");
                sqlx::query(
                    "UPDATE outbox_events SET next_attempt_at = $1, last_error = $2, claimed_by = '', claimed_until = 0 \
                     WHERE seq = $3 AND claimed_by = $4",
                )
                .bind(now_millis().saturating_add(millis(wait)))
                .bind(truncate(&why))
                .bind(raw.seq)
                .bind(&claim)
                .execute(&self.0.db.pool)
                .await?;
                Ok(Outcome::Retrying)
            }
        }
    }

    /// Moves a claimed event to the dead letters (under the claim).
    async fn dead_letter(&self, claim: &str, raw: &RawEvent, why: &str) -> ApiResult<Outcome> {
        let mut tx = self.0.db.pool.begin().await?;
        let moved = sqlx::query(
            "INSERT INTO outbox_dead_letters (seq, event_id, aggregate_id, topic, payload, created_at, attempts, \
             last_error, dead_at) \
             SELECT seq, event_id, aggregate_id, topic, payload, created_at, attempts, $1, $2 FROM outbox_events \
             WHERE seq = $3 AND claimed_by = $4 \
             ON CONFLICT (event_id) DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error, \
             dead_at = excluded.dead_at",
        )
        .bind(truncate(why))
        .bind(now_millis())
        .bind(raw.seq)
        .bind(claim)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            // The claim ran out and another relay has the event now.
            tx.rollback().await?;
            return Ok(Outcome::Retrying);
        }
        sqlx::query("DELETE FROM outbox_events WHERE seq = $1 AND claimed_by = $2")
            .bind(raw.seq)
            .bind(claim)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Outcome::DeadLettered)
    }

    async fn adopt(&self) {
        let Some(sql) = self.0.adopt.get().copied() else {
            return;
        };
        if !due(&self.0.adopted_at, 5_000) {
            return;
        }
        let result: ApiResult<()> = async {
            let mut tx = self.0.db.pool.begin().await?;
            sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(sql)).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(service = %self.0.db.schema, error = %e, "moving an older outbox's events failed");
        }
    }

    /// Metrics at most every second; the purge of sent events at most every minute.
    async fn housekeeping(&self) {
        if due(&self.0.observed_at, 1_000) {
            match stats(&self.0.db).await {
                Ok(st) => st.record(&self.0.db.schema),
                Err(e) => tracing::warn!(error = %e, "reading the outbox's size failed"),
            }
        }
        if due(&self.0.purged_at, 60_000) {
            match purge(&self.0.db, self.0.settings.retention).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(service = %self.0.db.schema, deleted = n, "sent outbox events purged")
                }
                Err(e) => tracing::warn!(error = %e, "purging sent outbox events failed"),
            }
        }
    }
}

/// Which part of a claim id (see [`Relay::claim_prefix`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upto {
    Replica,
    Run,
    Relay,
}

/// Frees pending events claimed under `prefix` (but not under `except`).
async fn free_claims(db: &Db, prefix: &str, except: Option<&str>) -> ApiResult<u64> {
    let len = |p: &str| i32::try_from(p.chars().count()).unwrap_or(i32::MAX);
    let except = except.unwrap_or("");
    let freed = sqlx::query(
        "UPDATE outbox_events SET claimed_by = '', claimed_until = 0 \
         WHERE sent_at = 0 AND claimed_until > 0 \
         AND SUBSTR(claimed_by, 1, $1) = $2 AND ($4 = '' OR SUBSTR(claimed_by, 1, $3) <> $4)",
    )
    .bind(len(prefix))
    .bind(prefix)
    .bind(len(except))
    .bind(except)
    .execute(&db.pool)
    .await?;
    Ok(freed.rows_affected())
}

/// True (and the time recorded) when `every_ms` has passed since the last time.
fn due(last: &AtomicI64, every_ms: i64) -> bool {
    let now = now_millis();
    let before = last.load(Ordering::Relaxed);
    now - before >= every_ms
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Errors are kept to their first 2,000 characters.
fn truncate(s: &str) -> String {
    s.chars().take(2_000).collect()
}

/// A claimed row as stored.
/// A round's claim on its events, and when their deliveries must end.
struct Claim {
    id: String,
    deadline: i64,
}

struct RawEvent {
    seq: i64,
    event_id: String,
    aggregate_id: String,
    topic: String,
    payload: String,
    created_at: i64,
    attempt: i64,
    last_error: String,
}

/// Deletes events sent more than `retention` ago; returns how many.
pub async fn purge(db: &Db, retention: Duration) -> ApiResult<u64> {
    let cutoff = now_millis().saturating_sub(millis(retention));
    let done = sqlx::query("DELETE FROM outbox_events WHERE sent_at > 0 AND sent_at < $1")
        .bind(cutoff)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected())
}

/// The outbox's size now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events not yet delivered (dead letters not included).
    pub pending: i64,
    /// When the oldest of them was written (0: none).
    pub oldest_pending_at: i64,
    pub dead_letters: i64,
}

impl Stats {
    /// Seconds the oldest pending event has waited.
    pub fn lag_seconds(&self, now: i64) -> f64 {
        if self.pending == 0 {
            0.0
        } else {
            (now - self.oldest_pending_at).max(0) as f64 / 1_000.0
        }
    }

    fn record(&self, service: &str) {
        let service = service.to_string();
        metrics::gauge!("colend_outbox_pending", "outbox" => service.clone())
            .set(self.pending as f64);
        metrics::gauge!("colend_outbox_lag_seconds", "outbox" => service.clone())
            .set(self.lag_seconds(now_millis()));
        metrics::gauge!("colend_outbox_dead_letters", "outbox" => service)
            .set(self.dead_letters as f64);
    }
}

/// Counts pending events and dead letters.
pub async fn stats(db: &Db) -> ApiResult<Stats> {
    let mut conn = db.pool.acquire().await?;
    let (pending, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox_events WHERE sent_at = 0")
            .fetch_one(&mut *conn)
            .await?;
    let (dead_letters,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox_dead_letters")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Stats {
        pending,
        oldest_pending_at: oldest.unwrap_or(0),
        dead_letters,
    })
}

/// A pending event, as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub seq: i64,
    pub event_id: String,
    pub aggregate_id: String,
    pub topic: String,
    pub created_at: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: String,
    /// Claimed by a relay now (being delivered).
    pub in_flight: bool,
    /// Waiting behind an earlier event (or a dead letter) of its aggregate.
    pub held: bool,
}

/// A dead letter, as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: i64,
    pub event_id: String,
    pub aggregate_id: String,
    pub topic: String,
    pub created_at: i64,
    pub attempts: i64,
    pub last_error: String,
    pub dead_at: i64,
}

/// The first `limit` pending events, in order.
pub async fn pending(db: &Db, limit: i64) -> ApiResult<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT e.seq, e.event_id, e.aggregate_id, e.topic, e.created_at, e.attempts, e.next_attempt_at, \
         e.last_error, e.claimed_until, \
         CAST(CASE WHEN EXISTS (SELECT 1 FROM outbox_events p \
                 WHERE p.aggregate_id = e.aggregate_id AND p.sent_at = 0 AND p.seq < e.seq) \
              OR EXISTS (SELECT 1 FROM outbox_dead_letters d WHERE d.aggregate_id = e.aggregate_id) \
         THEN 1 ELSE 0 END AS BIGINT) AS held \
         FROM outbox_events e WHERE e.sent_at = 0 ORDER BY e.seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let now = now_millis();
    rows.iter()
        .map(|r| {
            Ok(Pending {
                seq: r.try_get("seq")?,
                event_id: r.try_get("event_id")?,
                aggregate_id: r.try_get("aggregate_id")?,
                topic: r.try_get("topic")?,
                created_at: r.try_get("created_at")?,
                attempts: r.try_get("attempts")?,
                next_attempt_at: r.try_get("next_attempt_at")?,
                last_error: r.try_get("last_error")?,
                in_flight: r.try_get::<i64, _>("claimed_until")? > now,
                held: r.try_get::<i64, _>("held")? != 0,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(ApiError::from)
}

/// The first `limit` dead letters, in order.
pub async fn dead_letters(db: &Db, limit: i64) -> ApiResult<Vec<DeadLetter>> {
    let rows = sqlx::query(
        "SELECT seq, event_id, aggregate_id, topic, created_at, attempts, last_error, dead_at \
         FROM outbox_dead_letters ORDER BY seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                seq: r.try_get("seq")?,
                event_id: r.try_get("event_id")?,
                aggregate_id: r.try_get("aggregate_id")?,
                topic: r.try_get("topic")?,
                created_at: r.try_get("created_at")?,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
                dead_at: r.try_get("dead_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(ApiError::from)
}

/// Moves dead letters back to pending with their original place in their
/// aggregate's order and a fresh count of attempts, in the caller's
/// transaction: `event_id`, or every one when `None`. Returns how many.
pub async fn retry(conn: &mut AnyConnection, event_id: Option<&str>) -> ApiResult<u64> {
    const MOVE: &str = "INSERT INTO outbox_events (seq, event_id, aggregate_id, topic, payload, created_at, \
         attempts, next_attempt_at, last_error, claimed_by, claimed_until, sent_at) \
         SELECT seq, event_id, aggregate_id, topic, payload, created_at, 0, $1, last_error, '', 0, 0 \
         FROM outbox_dead_letters";
    // An event already back under the same id keeps its place. Only the
    // dead letters now in the outbox are removed: one written meanwhile stays.
    const REMOVE: &str = "DELETE FROM outbox_dead_letters WHERE EXISTS \
         (SELECT 1 FROM outbox_events e WHERE e.event_id = outbox_dead_letters.event_id)";
    let done = match event_id {
        Some(id) => {
            sqlx::query(&format!(
                "{MOVE} WHERE event_id = $2 ON CONFLICT DO NOTHING"
            ))
            .bind(now_millis())
            .bind(id)
            .execute(&mut *conn)
            .await?;
            sqlx::query(&format!("{REMOVE} AND event_id = $1"))
                .bind(id)
                .execute(&mut *conn)
                .await?
        }
        None => {
            sqlx::query(&format!("{MOVE} WHERE seq > 0 ON CONFLICT DO NOTHING"))
                .bind(now_millis())
                .execute(&mut *conn)
                .await?;
            sqlx::query(REMOVE).execute(&mut *conn).await?
        }
    };
    Ok(done.rows_affected())
}

/// Deletes one dead letter for good, in the caller's transaction (its
/// aggregate's later events go on); false when there is none by that id.
pub async fn drop_dead_letter(conn: &mut AnyConnection, event_id: &str) -> ApiResult<bool> {
    let done = sqlx::query("DELETE FROM outbox_dead_letters WHERE event_id = $1")
        .bind(event_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// [`retry`] in a transaction of its own.
pub async fn retry_alone(db: &Db, event_id: Option<&str>) -> ApiResult<u64> {
    let mut conn = db.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let n = retry(&mut tx, event_id).await?;
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let s = Settings {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            ..Settings::default()
        };
        let waits: Vec<u128> = (1..=6).map(|a| s.backoff_after(a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(s.backoff_after(0).as_millis(), 100);
        assert_eq!(s.backoff_after(i64::MAX), Duration::from_millis(1_000));
        for a in 1..=6 {
            let w = s.wait_after(a);
            assert!(
                w >= s.backoff_after(a) && w <= s.backoff_after(a) * 5 / 4,
                "{w:?}"
            );
        }
    }

    #[test]
    fn another_round_follows_when_something_went_out_or_the_batch_was_full() {
        assert!(!Round::default().more());
        assert!(
            Round {
                delivered: 1,
                ..Round::default()
            }
            .more()
        );
        assert!(
            Round {
                full: true,
                ..Round::default()
            }
            .more()
        );
        assert!(
            !Round {
                claimed: 3,
                retrying: 3,
                ..Round::default()
            }
            .more()
        );
    }

    #[test]
    fn lag_is_the_oldest_pending_events_age() {
        let s = Stats {
            pending: 2,
            oldest_pending_at: 1_000,
            dead_letters: 0,
        };
        assert_eq!(s.lag_seconds(3_500), 2.5);
        assert_eq!(Stats::default().lag_seconds(3_500), 0.0);
    }
}
