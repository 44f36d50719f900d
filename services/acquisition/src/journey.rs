//! The loan's journey: KYC → the bank's credit decision → funding, as a
//! durable state machine.
//!
//! - The state is the application's status, committed with each step's
//!   result, its history event and an outbox event in one transaction.
//! - One owner at a time, fenced: a journey is advanced only under a lease
//!   (`lease_owner`, `lease_until`, `lease_epoch`). Every taking of the lease
//!   increments its epoch (a new application starts at epoch 1 under the
//!   replica that took it; the sweeper's take-overs and a RETRY claim it
//!   again), and the task remembers the epoch it took. Every write the task
//!   makes names that epoch: a step's transition is `UPDATE … WHERE
//!   application_id = … AND status = <from> AND lease_owner = <me> AND
//!   lease_epoch = <mine>`. A task whose fenced write matches no row has
//!   lost the journey (its lease ran out and another replica took it over)
//!   and stops there, committing nothing.
//! - The lease is renewed, fenced the same way, while a step runs: before an
//!   attempt once the last renewal is a quarter of a lease old, and every
//!   half lease while a call or a backoff is outstanding; a renewal that
//!   finds the lease taken over abandons the step. A committed step renews
//!   it too. The sweeper of every replica takes over journeys whose lease
//!   ran out, so after a crash or a stall every unfinished journey resumes,
//!   and the stalled owner, when it wakes, writes nothing.
//! - Every step calls another service with a request id derived from the
//!   application (`<id>:kyc`, `<id>:credit`, `<id>:funding`, `<id>:release`)
//!   and a body that is a pure function of what is stored: the submission,
//!   the KYC result, the decision, the abandonment's reason; the credit
//!   step's input, which includes the borrower's exposure read from funding,
//!   is recorded (fenced, renewing the lease) before its first call. A step
//!   run again (a retry after a lost answer, a resume, a take-over) gets the
//!   first result instead of acting twice, never IDEMPOTENCY_KEY_REUSED.
//! - A step that keeps failing for technical reasons is retried with
//!   exponential backoff and jitter, then the journey is PARKED with the
//!   reason and the step it stopped at, until an operator retries it or
//!   abandons it (`ResumeApplication`, in `app.rs`).
//! - Abandoning goes in three committed steps: PARKED → ABANDONING (the
//!   decision and who made it, with its history event; RETRY is refused from
//!   then on, and of a RETRY and an ABANDON racing, exactly one moves the
//!   status); the compensation, in reverse order, before the disbursement
//!   ([`Journey::compensate_funding`]: the reservation, if any, is voided
//!   and the application closed to funding); then ABANDONING → FAILED with
//!   reason ABANDONED, which releases the borrower. A failure in between
//!   leaves ABANDONING, which the next ABANDON continues (the sweeper does
//!   not: an operator decided, an operator finishes; `colend_journeys_abandoning`
//!   counts them). The compensation's answer is judged by reason code and
//!   the loan's status, never by message text. After the disbursement (the
//!   pivot, done by the bank core) there is only forward recovery: the
//!   release is refused (INVALID_STATE) and the disbursement, reported by
//!   funding, moves the application on.
//! - Pause points for the fault suites (`COLEND_PAUSE_AT=point:millis`):
//!   `acquisition.journey.before_funding`, before the funding step (the
//!   owner stalls holding its lease, not renewing it), and
//!   `acquisition.journey.before_commit`, a step's result in hand before its
//!   fenced transition.
use crate::app::{insert_event, load, release_borrower};
use crate::domain::Status;
use colend_contracts::acquisition::v1 as pb;
use colend_contracts::common::v1::Money;
use colend_contracts::credit::v1 as credit;
use colend_contracts::credit::v1::credit_service_client::CreditServiceClient;
use colend_contracts::funding::v1 as funding;
use colend_contracts::funding::v1::funding_service_client::FundingServiceClient;
use colend_contracts::kyc::v1 as kyc;
use colend_contracts::kyc::v1::kyc_service_client::KycServiceClient;
use colend_platform::config::env_parse;
use colend_platform::error::from_downstream;
use colend_platform::fault::crash_point;
use colend_platform::grpc::{TracedChannel, request, traced_channel};
use colend_platform::time::now_millis;
use colend_platform::{ApiError, ApiResult, Db, Mesh};
use futures::StreamExt;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast};
use tracing::Instrument;

/// Moves what acquisition's own outbox table (before the platform's) still
/// holds: migration 0010, run again by the relay while replicas of the
/// previous version may still write there.
const ADOPT_OLD_OUTBOX: &str = include_str!("../migrations/0010_platform_outbox.sql");

/// Statuses with automatic steps left, as SQL.
const IN_PROGRESS: &str = "('SUBMITTED', 'KYC_PASSED', 'APPROVED')";

#[derive(Clone)]
pub struct Journey {
    db: Db,
    kyc: KycServiceClient<TracedChannel>,
    credit: CreditServiceClient<TracedChannel>,
    funding: FundingServiceClient<TracedChannel>,
    timeout: Duration,
    changes: broadcast::Sender<String>,
    sealer: colend_platform::sealing::Sealer,
    settings: Arc<Settings>,
    outbox_ready: Arc<Notify>,
    /// Journeys this process is advancing now: one task each.
    active: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// This process advances the journey while the guard lives.
struct Advancing(
    Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    String,
);

impl Drop for Advancing {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// How journeys are run: from the environment ([`Config::from_env`]), or
/// as given.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's name on the leases it holds (`COLEND_INSTANCE_ID`,
    /// else `HOSTNAME`, which Kubernetes sets to the pod's name; suffixed
    /// `/acquisition`): a restarted pod takes its own journeys back at once.
    pub owner: String,
    /// How long a lease lasts without renewal (`COLEND_JOURNEY_LEASE_MS`, 30000).
    pub lease_ms: i64,
    /// How often the sweeper looks for journeys to take over (`COLEND_JOURNEY_SWEEP_MS`, 2000).
    pub sweep: Duration,
    /// Attempts of a step before the journey is parked (`COLEND_JOURNEY_STEP_ATTEMPTS`, 10:
    /// with the backoff below, a service may be away about 15 to 30 s).
    pub attempts: u32,
    /// First retry delay; doubles up to 5 s (`COLEND_JOURNEY_BACKOFF_MS`, 200).
    pub backoff: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Config> {
        let owner = colend_platform::config::env_opt("COLEND_INSTANCE_ID")
            .or_else(|| colend_platform::config::env_opt("HOSTNAME"))
            .unwrap_or_else(|| "colend".to_string());
        Ok(Config {
            owner: format!("{owner}/acquisition"),
            lease_ms: env_parse("COLEND_JOURNEY_LEASE_MS", 30_000i64)?,
            sweep: Duration::from_millis(env_parse("COLEND_JOURNEY_SWEEP_MS", 2_000u64)?),
            attempts: env_parse("COLEND_JOURNEY_STEP_ATTEMPTS", 10u32)?,
            backoff: Duration::from_millis(env_parse("COLEND_JOURNEY_BACKOFF_MS", 200u64)?),
        })
    }
}

/// How journeys are run, with the bounds applied.
struct Settings {
    owner: String,
    lease_ms: i64,
    sweep: Duration,
    attempts: u32,
    backoff: Duration,
}

impl Settings {
    fn new(c: Config) -> Settings {
        Settings {
            owner: c.owner,
            lease_ms: c.lease_ms.max(100),
            sweep: c.sweep.max(Duration::from_millis(10)),
            attempts: c.attempts.max(1),
            backoff: c.backoff.max(Duration::from_millis(1)),
        }
    }

    /// How often a lease held through a long step is renewed.
    fn renew_every(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 2).max(1) as u64)
    }
}

/// The lease a journey task holds, fenced by the epoch it took.
struct Held {
    epoch: i64,
    /// When the lease was last written (taken, renewed, or renewed by a commit).
    renewed: std::sync::Mutex<tokio::time::Instant>,
}

impl Held {
    fn new(epoch: i64) -> Held {
        Held {
            epoch,
            renewed: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn renewed_at(&self) -> tokio::time::Instant {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease was written at `at` (taken before the statement was sent).
    fn renewed(&self, at: tokio::time::Instant) {
        let mut r = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        *r = (*r).max(at);
    }
}

/// The write fence of one step: the journey, the status the step starts
/// from, and the lease the task holds.
#[derive(Clone, Copy)]
struct Fence<'a> {
    id: &'a str,
    from: Status,
    held: &'a Held,
}

/// Why a journey task stops in the middle of a step, committing nothing.
#[derive(Debug)]
enum Halt {
    /// Another replica took the journey over (the lease's epoch moved on):
    /// the step is abandoned and nothing of it is written.
    Lost,
    /// This replica's own storage failed: the task stops, and the sweeper
    /// resumes the journey (this replica still holds its lease).
    Failed(ApiError),
}

impl From<ApiError> for Halt {
    fn from(e: ApiError) -> Halt {
        Halt::Failed(e)
    }
}

/// The lease a new application is written with ([`Journey::new_lease`]).
pub struct NewLease {
    pub owner: String,
    pub until: i64,
    pub epoch: i64,
}

/// The application as its journey sees it.
struct State {
    status: Status,
    req: pb::SubmitApplicationRequest,
    partner: String,
    kyc_age: i64,
    kyc_region: String,
    decision: String,
    person_key: String,
    /// The credit step's input, once recorded (before its first call).
    credit_input: Option<credit::DecisionInput>,
}

impl State {
    /// The application once `r` is committed.
    fn moved(&mut self, r: &StepResult) {
        self.status = r.to;
        for (col, v) in &r.columns {
            match *col {
                "kyc_age" => self.kyc_age = v.parse().unwrap_or(0),
                "kyc_region" => self.kyc_region = v.clone(),
                "decision" => self.decision = v.clone(),
                _ => {}
            }
        }
    }
}

/// What a step decided.
struct StepResult {
    to: Status,
    detail: String,
    reasons: Vec<String>,
    columns: Vec<(&'static str, String)>,
}

impl Journey {
    pub fn new(db: Db, mesh: &Mesh) -> anyhow::Result<Journey> {
        Journey::with_config(db, mesh, Config::from_env()?)
    }

    pub fn with_config(db: Db, mesh: &Mesh, config: Config) -> anyhow::Result<Journey> {
        let (changes, _) = broadcast::channel(1024);
        Ok(Journey {
            db,
            kyc: KycServiceClient::new(traced_channel(&mesh.endpoints.kyc)?),
            credit: CreditServiceClient::new(traced_channel(&mesh.endpoints.credit)?),
            funding: FundingServiceClient::new(traced_channel(&mesh.endpoints.funding)?),
            timeout: mesh.call_timeout,
            changes,
            sealer: mesh.sealer.clone(),
            settings: Arc::new(Settings::new(config)),
            outbox_ready: Arc::new(Notify::new()),
            active: Arc::default(),
        })
    }

    /// Subscribes to "application changed" notices (application ids).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Wakes the outbox relay: a status change was committed.
    pub fn notify(&self, _application_id: &str) {
        self.outbox_ready.notify_one();
    }

    /// The lease a new application is written with: this replica's, from
    /// now, at epoch 1 (the first taking of the journey's lease).
    pub fn new_lease(&self) -> NewLease {
        NewLease {
            owner: self.settings.owner.clone(),
            until: now_millis() + self.settings.lease_ms,
            epoch: 1,
        }
    }

    /// Runs the journey of an application in the background; `leased`: the
    /// epoch of this replica's lease it was committed with
    /// ([`Journey::new_lease`]), None to claim the lease first.
    pub fn start(&self, application_id: String, leased: Option<i64>) {
        let this = self.clone();
        // The journey continues the submitting call's trace.
        let span = tracing::info_span!("journey", application_id = %application_id);
        tokio::spawn(
            async move {
                if let Err(e) = this.run(&application_id, leased).await {
                    tracing::error!(application_id, error = %e, "journey stopped");
                }
            }
            .instrument(span),
        );
    }

    /// Starts the background workers: the sweeper, which resumes every
    /// unfinished journey at start-up and takes over those whose owner's
    /// lease ran out; and the outbox relay (the platform's), which tells the
    /// partners' watch streams of every committed status change, at least once.
    pub fn spawn_workers(
        &self,
        workers: &colend_platform::lifecycle::Workers,
    ) -> anyhow::Result<()> {
        let this = self.clone();
        workers.spawn("journey-sweeper", |mut stopping| async move {
            loop {
                if let Err(e) = this.sweep().await {
                    tracing::warn!(error = %e, "sweeping journeys failed");
                }
                if stopping.sleep(this.settings.sweep).await {
                    return;
                }
            }
        });
        // A watcher deduplicates by the application's version.
        let changes = self.changes.clone();
        colend_platform::outbox::Relay::new(
            self.db.clone(),
            colend_platform::outbox::Settings::from_env()?,
            move |e| {
                crash_point("acquisition.outbox.after_insert");
                let _ = changes.send(e.aggregate_id);
                std::future::ready(Ok(()))
            },
        )
        .adopting(ADOPT_OLD_OUTBOX)
        .spawn(
            workers,
            "acquisition-outbox-relay",
            self.outbox_ready.clone(),
        );
        Ok(())
    }

    /// Takes over every unfinished journey without a live owner.
    async fn sweep(&self) -> ApiResult<()> {
        let rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT application_id FROM applications WHERE status IN {IN_PROGRESS} \
             AND (lease_until < $1 OR lease_owner = $2) ORDER BY updated_at LIMIT 500"
        ))
        .bind(now_millis())
        .bind(&self.settings.owner)
        .fetch_all(&self.db.pool)
        .await?;
        let waiting: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM applications WHERE status IN ('PARKED', 'ABANDONING') GROUP BY status",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let count = |status: Status| {
            waiting
                .iter()
                .find(|(s, _)| s == status.name())
                .map_or(0, |(_, n)| *n)
        };
        metrics::gauge!("colend_journeys_parked").set(count(Status::Parked) as f64);
        // Abandonments that stopped half-way, until an operator's ABANDON finishes them.
        metrics::gauge!("colend_journeys_abandoning").set(count(Status::Abandoning) as f64);
        if rows.is_empty() {
            return Ok(());
        }
        tracing::info!(count = rows.len(), "resuming unfinished journeys");
        futures::stream::iter(rows)
            .for_each_concurrent(16, |(id,)| async move {
                let span = tracing::info_span!("journey", application_id = %id);
                if let Err(e) = self.advance(&id).instrument(span).await {
                    tracing::error!(application_id = id, error = %e, "resumed journey stopped");
                }
            })
            .await;
        Ok(())
    }

    /// Takes the lease of an unfinished journey, incrementing its epoch:
    /// the epoch this replica now holds it at, or None when the journey is
    /// finished, parked, or another replica's lease on it is live.
    async fn claim(&self, application_id: &str) -> ApiResult<Option<i64>> {
        let now = now_millis();
        let claimed: Option<(i64,)> = sqlx::query_as(&format!(
            "UPDATE applications SET lease_owner = $1, lease_until = $2, lease_epoch = lease_epoch + 1 \
             WHERE application_id = $3 AND status IN {IN_PROGRESS} AND (lease_owner = $1 OR lease_until < $4) \
             RETURNING lease_epoch"
        ))
        .bind(&self.settings.owner)
        .bind(now + self.settings.lease_ms)
        .bind(application_id)
        .bind(now)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(claimed.map(|(epoch,)| epoch))
    }

    /// Renews the lease `f` holds, fenced by its epoch: false when the
    /// lease was taken over (or the journey moved on) in the meantime.
    async fn renew(&self, f: Fence<'_>) -> ApiResult<bool> {
        let at = tokio::time::Instant::now();
        let db = self.db.clone();
        let (id, owner, epoch) = (f.id.to_string(), self.settings.owner.clone(), f.held.epoch);
        let (from, until) = (f.from.name(), now_millis() + self.settings.lease_ms);
        // Spawned: a renewal dropped half-way (the step ended) still completes.
        let renewed = tokio::spawn(async move {
            sqlx::query(
                "UPDATE applications SET lease_until = $1 WHERE application_id = $2 AND status = $3 \
                 AND lease_owner = $4 AND lease_epoch = $5",
            )
            .bind(until)
            .bind(&id)
            .bind(from)
            .bind(&owner)
            .bind(epoch)
            .execute(&db.pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("renewal task failed: {e}")))??;
        if renewed {
            f.held.renewed(at);
        }
        Ok(renewed)
    }

    /// Renews the lease before an attempt once a quarter of it has gone by
    /// (a step's first attempt right after a commit renews nothing). An
    /// owner that stalled longer than its lease finds it taken over here,
    /// before it calls anyone.
    async fn renew_if_due(&self, f: Fence<'_>) -> Result<(), Halt> {
        let quarter = Duration::from_millis((self.settings.lease_ms / 4).max(1) as u64);
        if f.held.renewed_at().elapsed() < quarter {
            return Ok(());
        }
        match self.renew(f).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Halt::Lost),
            // Storage trouble: go on; the step's transition is fenced anyway.
            Err(e) => {
                tracing::warn!(application_id = f.id, error = %e, "renewing the journey's lease failed");
                Ok(())
            }
        }
    }

    /// Runs `work` (a call, a backoff) while renewing the lease every half
    /// lease; Halt::Lost, and `work` dropped, as soon as a renewal finds the
    /// lease taken over. Without a fence, just runs `work`.
    async fn leased<T>(
        &self,
        fence: Option<Fence<'_>>,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Halt> {
        let Some(f) = fence else {
            return Ok(work.await);
        };
        let every = self.settings.renew_every();
        let keep = async {
            let mut next = f.held.renewed_at() + every;
            loop {
                tokio::time::sleep_until(next).await;
                match self.renew(f).await {
                    Ok(true) => next = f.held.renewed_at() + every,
                    Ok(false) => return Halt::Lost,
                    Err(e) => {
                        tracing::warn!(application_id = f.id, error = %e, "renewing the journey's lease failed");
                        next = tokio::time::Instant::now() + every / 4;
                    }
                }
            }
        };
        tokio::select! {
            biased;
            out = work => Ok(out),
            halt = keep => Err(halt),
        }
    }

    /// Takes the application through every step it has left.
    pub async fn advance(&self, application_id: &str) -> ApiResult<()> {
        self.run(application_id, None).await
    }

    async fn run(&self, application_id: &str, leased: Option<i64>) -> ApiResult<()> {
        // One task per journey in this process (the lease keeps other
        // replicas out; this keeps the sweeper off journeys already running).
        let fresh = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(application_id.to_string());
        if !fresh {
            return Ok(());
        }
        let _advancing = Advancing(self.active.clone(), application_id.to_string());
        let epoch = match leased {
            Some(epoch) => epoch,
            None => match self.claim(application_id).await? {
                Some(epoch) => epoch,
                // Finished, parked, or another replica's lease is live.
                None => return Ok(()),
            },
        };
        let held = Held::new(epoch);
        // The application is read once, after the lease is taken, and then
        // kept up to date from the steps this task commits.
        let mut s = self.load_state(application_id).await?;
        loop {
            let status = s.status;
            if !status.is_in_progress() {
                return Ok(());
            }
            let fence = Fence {
                id: application_id,
                from: status,
                held: &held,
            };
            let step = match status {
                Status::Submitted => {
                    self.with_retries(Some(fence), || {
                        self.step_kyc(application_id, &s.partner, &s.req)
                    })
                    .await
                }
                Status::KycPassed => self.credit(fence, &mut s).await,
                Status::Approved => {
                    // A stalled owner (the fault suites pause here): its
                    // lease is not renewed while it waits.
                    colend_platform::fault::pause_point("acquisition.journey.before_funding").await;
                    match decode_stored::<pb::DecisionSummary>("decision", &s.decision) {
                        Ok(d) => {
                            self.with_retries(Some(fence), || {
                                self.step_funding(
                                    application_id,
                                    &s.partner,
                                    &s.req,
                                    &d,
                                    &s.person_key,
                                )
                            })
                            .await
                        }
                        Err(e) => Ok(Err(e)),
                    }
                }
                _ => return Ok(()),
            };
            let step = match step {
                Ok(step) => step,
                Err(Halt::Lost) => {
                    lost(application_id, status, epoch);
                    return Ok(());
                }
                Err(Halt::Failed(e)) => return Err(e),
            };
            let result = match step {
                Ok(r) => {
                    crash_point("acquisition.journey.after_downstream");
                    r
                }
                Err(e) => {
                    tracing::warn!(
                        application_id,
                        step = status.name(),
                        error = %e,
                        "journey parked"
                    );
                    StepResult {
                        to: Status::Parked,
                        detail: format!(
                            "parked at {}: {e}; the bank's operators can retry or abandon it",
                            status.name()
                        ),
                        reasons: vec![e.reason().to_string()],
                        columns: vec![("parked_step", status.name().to_string())],
                    }
                }
            };
            colend_platform::fault::pause_point("acquisition.journey.before_commit").await;
            let at = tokio::time::Instant::now();
            s.moved(&result);
            if !self
                .transition(application_id, status, epoch, result)
                .await?
            {
                // The fenced write matched nothing: the journey was taken
                // over (or moved on) while this step ran.
                lost(application_id, status, epoch);
                return Ok(());
            }
            held.renewed(at);
            crash_point("acquisition.journey.after_commit");
        }
    }

    /// What the journey needs of the application.
    async fn load_state(&self, application_id: &str) -> ApiResult<State> {
        type Row = (String, String, String, i64, String, String, String, String);
        let (status, body, partner, kyc_age, kyc_region, decision, person_key, credit_input): Row =
            sqlx::query_as(
                "SELECT status, request_body, partner_id, kyc_age, kyc_region, decision, person_key, credit_input \
                 FROM applications WHERE application_id = $1",
            )
            .bind(application_id)
            .fetch_one(&self.db.pool)
            .await?;
        let status = Status::parse(&status)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad status {status}")))?;
        let plain = self
            .sealer
            .open(crate::app::REQUEST_BODY, &body)
            .map_err(ApiError::Internal)?;
        let req =
            pb::SubmitApplicationRequest::decode(plain.as_slice()).map_err(ApiError::internal)?;
        let credit_input = if credit_input.is_empty() {
            None
        } else {
            Some(decode_stored("credit_input", &credit_input)?)
        };
        Ok(State {
            status,
            req,
            partner,
            kyc_age,
            kyc_region,
            decision,
            person_key,
            credit_input,
        })
    }

    /// Runs a step, retrying technical failures with exponential backoff
    /// and jitter. Every step is idempotent (its request id is derived
    /// from the application, its body from what is stored), so retrying it
    /// is safe. With a fence, the lease is renewed before an attempt when
    /// due and throughout the calls and the waits; a lease found taken over
    /// stops the step (Halt::Lost) before anything more is sent.
    async fn with_retries<'a, T, F, Fut>(
        &'a self,
        fence: Option<Fence<'a>>,
        mut f: F,
    ) -> Result<ApiResult<T>, Halt>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ApiResult<T>> + 'a,
    {
        let mut cap = self.settings.backoff;
        let mut attempt = 1;
        loop {
            if let Some(fence) = fence {
                self.renew_if_due(fence).await?;
            }
            match self.leased(fence, f()).await? {
                Err(
                    e @ (ApiError::Dependency { .. }
                    | ApiError::RequestInFlight
                    | ApiError::NotReady(_)
                    | ApiError::Internal(_)),
                ) if attempt < self.settings.attempts => {
                    tracing::warn!(attempt, error = %e, "journey step failed; retrying");
                    metrics::counter!("colend_journey_retries_total").increment(1);
                    // Equal jitter: half the delay for sure, half at random,
                    // so retries of many journeys spread out but still wait.
                    let half = cap.as_millis() as u64 / 2;
                    let wait = half + rand::random_range(0..=half);
                    self.leased(fence, tokio::time::sleep(Duration::from_millis(wait)))
                        .await?;
                    cap = (cap * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                other => return Ok(other),
            }
        }
    }

    /// Whether the bank can lend in `currency` to `partner`'s borrowers: the
    /// credit policy's currency and the partner's agreement's, read when an
    /// application is submitted. CURRENCY_MISMATCH (naming the currency
    /// required) when either is another; Ok when both match, when the
    /// partner has no agreement yet, or when either cannot be read now (the
    /// journey's steps check again: credit declines and funding refuses an
    /// amount in another currency, so no loan is ever in another currency
    /// than its application).
    pub async fn currency_supported(&self, partner: &str, currency: &str) -> ApiResult<()> {
        let (mut credit_client, mut funding_client) = (self.credit.clone(), self.funding.clone());
        let policy = credit_client.get_policy(request(
            credit::GetPolicyRequest {},
            self.timeout,
            Some(partner),
        ));
        let agreement = funding_client.get_agreement(request(
            funding::GetAgreementRequest {
                partner_id: partner.to_string(),
            },
            self.timeout,
            Some(partner),
        ));
        let (policy, agreement) = futures::join!(policy, agreement);
        let policy_currency = policy.ok().and_then(|p| {
            p.into_inner()
                .policy
                .and_then(|p| p.product_max_amount)
                .map(|m| m.currency_code)
        });
        let agreement_currency = agreement.ok().and_then(|a| {
            a.into_inner()
                .agreement
                .and_then(|a| a.total_quota)
                .map(|m| m.currency_code)
        });
        if let Some(c) = policy_currency.filter(|c| c != currency) {
            return Err(ApiError::currency_mismatch(
                c.clone(),
                format!(
                    "the bank lends in {c} (its credit policy); the requested amount is in {currency}"
                ),
            ));
        }
        if let Some(c) = agreement_currency.filter(|c| c != currency) {
            return Err(ApiError::currency_mismatch(
                c.clone(),
                format!(
                    "partner {partner}'s co-lending agreement is in {c}; the requested amount is in {currency}"
                ),
            ));
        }
        Ok(())
    }

    /// The compensation of the funding step, for an ABANDONING application:
    /// voids the reservation the journey may have made and closes the
    /// application to funding (ReleaseFunding by application id, request id
    /// `<id>:release`, with the abandonment's recorded reason: the same body
    /// on every continuation). Ok with what was done; INVALID_STATE when the
    /// loan is past the disbursement (forward recovery only); any other
    /// error leaves the abandonment to be continued.
    ///
    /// Decided by reason code and the loan's status, never by message text.
    /// Funding's answer stays true once given (its stored replay included):
    /// VOID is final, a closed application never gains a loan, and a
    /// disbursed loan never becomes void.
    pub async fn compensate_funding(&self, id: &str) -> ApiResult<String> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT status, partner_id, abandon_reason FROM applications WHERE application_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        let (status, partner, why) = row.ok_or_else(|| ApiError::NotFound("application".into()))?;
        if status != Status::Abandoning.name() {
            return Err(ApiError::InvalidState(format!(
                "the application is {status}; only an ABANDONING application is compensated"
            )));
        }
        let msg = funding::ReleaseFundingRequest {
            request_id: format!("{id}:release"),
            loan_id: String::new(),
            reason: why.chars().take(500).collect(),
            application_id: id.to_string(),
        };
        let released = self
            .with_retries(None, || {
                let mut funding = self.funding.clone();
                let msg = msg.clone();
                let partner = partner.as_str();
                async move {
                    funding
                        .release_funding(request(msg, self.timeout, Some(partner)))
                        .await
                        .map_err(|s| from_downstream("funding", s))
                }
            })
            .await
            .map_err(|h| match h {
                Halt::Failed(e) => e,
                Halt::Lost => ApiError::internal(anyhow::anyhow!("no lease to lose")),
            })?;
        match released {
            Ok(r) => {
                let loan = r.into_inner().loan.unwrap_or_default();
                if loan.loan_id.is_empty() {
                    return Ok(
                        "no reservation to void (funding refuses one for this application from now on)"
                            .into(),
                    );
                }
                match funding::LoanStatus::try_from(loan.status) {
                    Ok(funding::LoanStatus::Void) => {
                        Ok(format!("reservation {} voided", loan.loan_id))
                    }
                    Ok(funding::LoanStatus::Disbursed | funding::LoanStatus::Settled) => {
                        Err(past_the_pivot(id))
                    }
                    other => Err(ApiError::internal(anyhow::anyhow!(
                        "funding released the reservation of {id} but reports loan {} as {other:?}",
                        loan.loan_id
                    ))),
                }
            }
            // Funding refuses to void a disbursed (or settled) loan.
            Err(ApiError::InvalidState(_)) => Err(past_the_pivot(id)),
            Err(e) => Err(e),
        }
    }

    async fn step_kyc(
        &self,
        id: &str,
        partner: &str,
        r: &pb::SubmitApplicationRequest,
    ) -> ApiResult<StepResult> {
        let legal = r.legal_representative.clone().unwrap_or_default();
        let business = r.business.clone().unwrap_or_default();
        let msg = kyc::CheckBorrowerRequest {
            request_id: format!("{id}:kyc"),
            partner_id: partner.to_string(),
            person_name: legal.name,
            resident_id: legal.resident_id,
            mobile: legal.mobile,
            business_name: business.name,
            credit_code: business.credit_code,
        };
        let check = self
            .kyc
            .clone()
            .check_borrower(request(msg, self.timeout, Some(partner)))
            .await
            .map_err(|s| from_downstream("kyc", s))?
            .into_inner()
            .check
            .unwrap_or_default();
        let mut columns = vec![("kyc_check_id", check.check_id.clone())];
        if check.outcome == kyc::KycOutcome::Passed as i32 {
            columns.push(("kyc_age", check.age.to_string()));
            columns.push(("kyc_region", check.person_region_code.clone()));
            Ok(StepResult {
                to: Status::KycPassed,
                detail: format!(
                    "identity, business code and watchlists checked{}",
                    if check.from_cache {
                        " (cached result)"
                    } else {
                        ""
                    }
                ),
                reasons: Vec::new(),
                columns,
            })
        } else {
            Ok(StepResult {
                to: Status::KycRejected,
                detail: "KYC rejected the borrower".into(),
                reasons: check.reason_codes,
                columns,
            })
        }
    }

    /// The credit step. Its input (with the borrower's exposure, read from
    /// funding) is recorded before the first DecideApplication call, in a
    /// fenced write that renews the lease; every attempt, and every later
    /// resume or take-over, sends exactly that input.
    async fn credit(&self, fence: Fence<'_>, s: &mut State) -> Result<ApiResult<StepResult>, Halt> {
        let input = match &s.credit_input {
            Some(input) => input.clone(),
            None => {
                // In the application's currency: the caps it is measured against are.
                let currency = s
                    .req
                    .requested_amount
                    .as_ref()
                    .map(|m| m.currency_code.clone())
                    .unwrap_or_default();
                let exposure = match self
                    .with_retries(Some(fence), || {
                        self.exposure(&s.partner, &s.person_key, &currency)
                    })
                    .await?
                {
                    Ok(exposure) => exposure,
                    Err(e) => return Ok(Err(e)),
                };
                let input = credit_input(
                    fence.id,
                    &s.partner,
                    &s.req,
                    (s.kyc_age as i32, &s.kyc_region),
                    exposure,
                );
                self.record_credit_input(fence, &input).await?;
                s.credit_input = Some(input.clone());
                input
            }
        };
        self.with_retries(Some(fence), || {
            self.step_credit(fence.id, &s.partner, &input)
        })
        .await
    }

    /// What the borrower already owes across partners in `currency` (the
    /// application's), from the bank's own books.
    async fn exposure(
        &self,
        partner: &str,
        borrower_key: &str,
        currency: &str,
    ) -> ApiResult<Option<Money>> {
        Ok(self
            .funding
            .clone()
            .get_borrower_exposure(request(
                funding::GetBorrowerExposureRequest {
                    borrower_key: borrower_key.to_string(),
                    currency_code: currency.to_string(),
                },
                self.timeout,
                Some(partner),
            ))
            .await
            .map_err(|s| from_downstream("funding", s))?
            .into_inner()
            .exposure)
    }

    /// Records the credit step's input, fenced by the lease (renewing it).
    async fn record_credit_input(
        &self,
        f: Fence<'_>,
        input: &credit::DecisionInput,
    ) -> Result<(), Halt> {
        let at = tokio::time::Instant::now();
        let db = self.db.clone();
        let (id, owner, epoch) = (f.id.to_string(), self.settings.owner.clone(), f.held.epoch);
        let until = now_millis() + self.settings.lease_ms;
        let encoded = hex::encode(input.encode_to_vec());
        let recorded = tokio::spawn(async move {
            sqlx::query(
                "UPDATE applications SET credit_input = $1, lease_until = $2 WHERE application_id = $3 \
                 AND status = 'KYC_PASSED' AND lease_owner = $4 AND lease_epoch = $5 AND credit_input = ''",
            )
            .bind(encoded)
            .bind(until)
            .bind(&id)
            .bind(&owner)
            .bind(epoch)
            .execute(&db.pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("recording task failed: {e}")))?
        .map_err(ApiError::from)?;
        if !recorded {
            return Err(Halt::Lost);
        }
        f.held.renewed(at);
        Ok(())
    }

    async fn step_credit(
        &self,
        id: &str,
        partner: &str,
        input: &credit::DecisionInput,
    ) -> ApiResult<StepResult> {
        let msg = credit::DecideApplicationRequest {
            request_id: format!("{id}:credit"),
            input: Some(input.clone()),
        };
        let d = self
            .credit
            .clone()
            .decide_application(request(msg, self.timeout, Some(partner)))
            .await
            .map_err(|s| from_downstream("credit", s))?
            .into_inner()
            .decision
            .unwrap_or_default();
        if d.outcome == credit::DecisionOutcome::Approved as i32 {
            let summary = pb::DecisionSummary {
                decision_id: d.decision_id.clone(),
                grade: d.grade.clone(),
                pd_bps: d.pd_bps,
                approved_amount: d.approved_amount.clone(),
                approved_term_months: d.approved_term_months,
                annual_rate_bps: d.annual_rate_bps,
                all_in_apr_bps: d.all_in_apr_bps,
                policy_version: d.policy_version.clone(),
                fee_bps: d.fee_bps,
            };
            Ok(StepResult {
                to: Status::Approved,
                detail: format!(
                    "approved by the bank: grade {}, {} over {} months at {} bps (all-in {} bps)",
                    d.grade,
                    format_money(&d.approved_amount),
                    d.approved_term_months,
                    d.annual_rate_bps,
                    d.all_in_apr_bps
                ),
                reasons: Vec::new(),
                columns: vec![("decision", hex::encode(summary.encode_to_vec()))],
            })
        } else {
            Ok(StepResult {
                to: Status::Declined,
                detail: format!("declined by the bank ({})", d.decision_id),
                reasons: d.reason_codes,
                columns: Vec::new(),
            })
        }
    }

    async fn step_funding(
        &self,
        id: &str,
        partner: &str,
        r: &pb::SubmitApplicationRequest,
        d: &pb::DecisionSummary,
        borrower_key: &str,
    ) -> ApiResult<StepResult> {
        let msg = funding::ReserveFundingRequest {
            annual_fee_bps: d.fee_bps,
            borrower_key: borrower_key.to_string(),
            request_id: format!("{id}:funding"),
            application_id: id.to_string(),
            partner_id: partner.to_string(),
            principal: d.approved_amount.clone(),
            term_months: d.approved_term_months,
            annual_rate_bps: d.annual_rate_bps,
            repayment_method: r.repayment_method,
        };
        let result = self
            .funding
            .clone()
            .reserve_funding(request(msg, self.timeout, Some(partner)))
            .await
            .map_err(|s| from_downstream("funding", s));
        match result {
            Ok(resp) => {
                let loan = resp.into_inner().loan.unwrap_or_default();
                let summary = pb::FundingSummary {
                    loan_id: loan.loan_id.clone(),
                    principal: loan.principal.clone(),
                    bank_amount: loan.bank_amount.clone(),
                    partner_amount: loan.partner_amount.clone(),
                    agreement_version: loan.agreement_version,
                };
                let m = format_money;
                // A replayed answer (a retry after a lost answer, a resumed
                // journey) carries the loan as it stands now: voided
                // meanwhile (released or expired), or disbursed by the bank.
                let (to, detail, reasons) = match funding::LoanStatus::try_from(loan.status) {
                    Ok(funding::LoanStatus::Reserved) => (
                        Status::FundsReserved,
                        format!(
                            "funds reserved: bank {} + partner {} (agreement v{})",
                            m(&loan.bank_amount),
                            m(&loan.partner_amount),
                            loan.agreement_version
                        ),
                        Vec::new(),
                    ),
                    Ok(funding::LoanStatus::Void) => (
                        Status::FundingRejected,
                        format!(
                            "the reservation {} was voided before the journey recorded it",
                            loan.loan_id
                        ),
                        vec!["RESERVATION_VOID".to_string()],
                    ),
                    Ok(funding::LoanStatus::Disbursed | funding::LoanStatus::Settled) => (
                        Status::Disbursed,
                        format!(
                            "funds reserved and disbursed by the bank on {}",
                            loan.disbursed_on
                        ),
                        Vec::new(),
                    ),
                    _ => {
                        return Err(ApiError::internal(anyhow::anyhow!(
                            "funding answered a reservation with loan status {}",
                            loan.status
                        )));
                    }
                };
                Ok(StepResult {
                    to,
                    detail,
                    reasons,
                    columns: vec![("funding", hex::encode(summary.encode_to_vec()))],
                })
            }
            Err(
                e @ (ApiError::QuotaExceeded { .. }
                | ApiError::NotWhitelisted(_)
                | ApiError::NoAgreement(_)
                | ApiError::CurrencyMismatch { .. }
                | ApiError::InvalidState(_)),
            ) => Ok(StepResult {
                to: Status::FundingRejected,
                detail: e.to_string(),
                // The limit that was hit is the more useful code, when there is one.
                reasons: vec![match &e {
                    ApiError::QuotaExceeded { limit, .. } => limit.clone(),
                    other => other.reason().to_string(),
                }],
                columns: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Commits a step: status, columns, history and outbox event in one
    /// transaction, fenced: only if the application is still in `from` and
    /// this replica still holds its lease at `epoch`. Renews the lease while
    /// steps remain and gives it up when none do. Returns false when the
    /// fence matched nothing (the journey was taken over, or moved on).
    async fn transition(
        &self,
        id: &str,
        from: Status,
        epoch: i64,
        r: StepResult,
    ) -> ApiResult<bool> {
        let to = r.to;
        let db = self.db.clone();
        let id_owned = id.to_string();
        let me = self.settings.owner.clone();
        let (owner, lease_until) = if to.is_in_progress() {
            (
                self.settings.owner.clone(),
                now_millis() + self.settings.lease_ms,
            )
        } else {
            (String::new(), 0)
        };
        // Spawned: a cancelled caller cannot leave the transaction half-done.
        let done = tokio::spawn(async move {
            let id = id_owned;
            let mut tx = db.pool.begin().await?;
            let now = now_millis();
            let mut sql = String::from(
                "UPDATE applications SET status = $1, reason_codes = $2, updated_at = $3, lease_owner = $6, lease_until = $7",
            );
            for (i, (col, _)) in r.columns.iter().enumerate() {
                sql.push_str(&format!(", {col} = ${}", i + 10));
            }
            sql.push_str(
                " WHERE application_id = $4 AND status = $5 AND lease_owner = $8 AND lease_epoch = $9",
            );
            let mut q = sqlx::query(&sql)
                .bind(r.to.name())
                .bind(r.reasons.join(","))
                .bind(now)
                .bind(&id)
                .bind(from.name())
                .bind(owner)
                .bind(lease_until)
                .bind(me)
                .bind(epoch);
            for (col, v) in &r.columns {
                q = match *col {
                    "kyc_age" => q.bind(v.parse::<i64>().unwrap_or(0)),
                    _ => q.bind(v.clone()),
                };
            }
            let updated = q.execute(&mut *tx).await?;
            if updated.rows_affected() != 1 {
                return Ok::<bool, ApiError>(false);
            }
            insert_event(&mut tx, &id, r.to, &r.detail, &r.reasons, now).await?;
            if !r.to.holds_borrower() {
                release_borrower(&mut tx, &id).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("transition task failed: {e}")))??;
        if done {
            metrics::counter!("colend_applications_total", "status" => to.name()).increment(1);
            tracing::info!(
                application_id = id,
                from = from.name(),
                to = to.name(),
                "application moved"
            );
            if to == Status::Parked {
                metrics::counter!("colend_journeys_parked_total").increment(1);
            }
            self.notify(id);
        }
        Ok(done)
    }

    /// The application as the partner sees it.
    pub async fn current(&self, id: &str, partner: &str) -> ApiResult<Option<pb::Application>> {
        let mut conn = self.db.pool.acquire().await?;
        load(&mut conn, id, Some(partner)).await
    }
}

/// A journey task stops: its lease was taken over while it ran a step.
fn lost(application_id: &str, step: Status, epoch: i64) {
    metrics::counter!("colend_journey_leases_lost_total").increment(1);
    tracing::warn!(
        application_id,
        step = step.name(),
        epoch,
        "journey taken over by another owner; this task stops without committing"
    );
}

/// Why an abandonment cannot undo the funding step.
fn past_the_pivot(id: &str) -> ApiError {
    ApiError::InvalidState(format!(
        "the loan of application {id} was disbursed: it cannot be abandoned, only recovered \
         forward (the application moves on to DISBURSED when the disbursement is recorded)"
    ))
}

/// An amount as people read it: its currency and the decimal places of the
/// currency's minor unit ("CNY 200000.00", "JPY 5000").
fn format_money(m: &Option<Money>) -> String {
    let Some(m) = m else {
        return "0".into();
    };
    match colend_core::Currency::parse(&m.currency_code) {
        Ok(c) => format!("{c} {}", c.format(m.minor_units)),
        Err(_) => format!(
            "{} {}",
            m.currency_code,
            colend_core::money::format_minor(m.minor_units)
        ),
    }
}

/// A protobuf stored hex-encoded in column `column`; a value that does
/// not decode is an error, never a default.
fn decode_stored<M: Message + Default>(column: &str, v: &str) -> ApiResult<M> {
    hex::decode(v)
        .map_err(anyhow::Error::from)
        .and_then(|b| M::decode(b.as_slice()).map_err(anyhow::Error::from))
        .map_err(|e| ApiError::internal(e.context(format!("stored {column} does not decode"))))
}

/// The credit step's input: a pure function of the stored application
/// (the submission, the KYC result) and the exposure read once before it.
fn credit_input(
    id: &str,
    partner: &str,
    r: &pb::SubmitApplicationRequest,
    (age, region): (i32, &str),
    exposure: Option<Money>,
) -> credit::DecisionInput {
    let scenario = r.scenario.clone().unwrap_or_default();
    let purpose = pb::LoanPurpose::try_from(r.purpose)
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("LOAN_PURPOSE_")
                .to_string()
        })
        .unwrap_or_default();
    credit::DecisionInput {
        application_id: id.to_string(),
        partner_id: partner.to_string(),
        applicant_age: age,
        region_code: region.to_string(),
        purpose,
        requested_amount: r.requested_amount.clone(),
        term_months: r.term_months,
        repayment_method: r.repayment_method,
        partner_score: r.partner_score,
        years_in_business: r
            .business
            .as_ref()
            .map(|b| b.years_in_business)
            .unwrap_or(0),
        annual_tax_revenue: scenario.annual_tax_revenue,
        invoice_turnover_12m: scenario.invoice_turnover_12m,
        turnover_trend_bps: scenario.turnover_trend_bps,
        open_loans_elsewhere: scenario.open_loans_elsewhere,
        watchlist_hit: false,
        existing_exposure: exposure,
        individual_business: r
            .business
            .as_ref()
            .is_some_and(|b| b.credit_code.starts_with("92")),
        partner_approved: r.partner_decision.as_ref().is_some_and(|d| d.approved),
        partner_decision_ref: r
            .partner_decision
            .as_ref()
            .map(|d| d.reference.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
