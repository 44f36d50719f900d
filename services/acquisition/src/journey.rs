//! The loan's journey: KYC → the bank's credit decision → funding, as a
//! durable state machine.
//!
//! - The state is the application's status, committed with each step's
//!   result, its history event and an outbox event in one transaction.
//! - One owner at a time: a journey is advanced only under a lease
//!   (`lease_owner`, `lease_until`) renewed at every step. The sweeper of
//!   every replica takes over journeys whose lease has run out, so after a
//!   crash or restart every unfinished journey resumes.
//! - Every step calls another service with a request id derived from the
//!   application (`<id>:kyc`, `<id>:credit`, `<id>:funding`), so a step run
//!   again after a crash returns the first result instead of acting twice.
//! - A step that keeps failing for technical reasons is retried with
//!   exponential backoff and jitter, then the journey is PARKED with
//!   the reason and the step it stopped at, until an operator retries it or
//!   abandons it (`ResumeApplication`). Abandoning compensates in reverse
//!   order before the disbursement (the reservation is voided, the
//!   application closed with the reason); after the disbursement (the
//!   pivot, done by the bank core) there is only forward recovery.
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

/// How journeys are run (environment, with defaults).
struct Settings {
    /// This replica's name on the leases it holds (`COLEND_INSTANCE_ID`,
    /// else `HOSTNAME`, which Kubernetes sets to the pod's name): a
    /// restarted pod takes its own journeys back at once.
    owner: String,
    /// How long a lease lasts without renewal (`COLEND_JOURNEY_LEASE_MS`, 30000).
    lease_ms: i64,
    /// How often the sweeper looks for journeys to take over (`COLEND_JOURNEY_SWEEP_MS`, 2000).
    sweep: Duration,
    /// Attempts of a step before the journey is parked (`COLEND_JOURNEY_STEP_ATTEMPTS`, 10:
    /// with the backoff below, a service may be away about 15 to 30 s).
    attempts: u32,
    /// First retry delay; doubles up to 5 s (`COLEND_JOURNEY_BACKOFF_MS`, 200).
    backoff: Duration,
    /// When relayed outbox events were last purged (ms).
    purged: std::sync::atomic::AtomicI64,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let owner = colend_platform::config::env_opt("COLEND_INSTANCE_ID")
            .or_else(|| colend_platform::config::env_opt("HOSTNAME"))
            .unwrap_or_else(|| "colend".to_string());
        Ok(Settings {
            owner: format!("{owner}/acquisition"),
            lease_ms: env_parse("COLEND_JOURNEY_LEASE_MS", 30_000i64)?.max(100),
            sweep: Duration::from_millis(env_parse("COLEND_JOURNEY_SWEEP_MS", 2_000u64)?.max(10)),
            attempts: env_parse("COLEND_JOURNEY_STEP_ATTEMPTS", 10u32)?.max(1),
            backoff: Duration::from_millis(env_parse("COLEND_JOURNEY_BACKOFF_MS", 200u64)?.max(1)),
            purged: std::sync::atomic::AtomicI64::new(0),
        })
    }
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
        let (changes, _) = broadcast::channel(1024);
        Ok(Journey {
            db,
            kyc: KycServiceClient::new(traced_channel(&mesh.endpoints.kyc)?),
            credit: CreditServiceClient::new(traced_channel(&mesh.endpoints.credit)?),
            funding: FundingServiceClient::new(traced_channel(&mesh.endpoints.funding)?),
            timeout: mesh.call_timeout,
            changes,
            sealer: mesh.sealer.clone(),
            settings: Arc::new(Settings::from_env()?),
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

    /// The lease a new application is written with: this replica's, from now.
    pub fn new_lease(&self) -> (String, i64) {
        (
            self.settings.owner.clone(),
            now_millis() + self.settings.lease_ms,
        )
    }

    /// Runs the journey of an application in the background; `leased`: it
    /// was committed with this replica's lease ([`Journey::new_lease`]).
    pub fn start(&self, application_id: String, leased: bool) {
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
    /// lease ran out; and the outbox relay, which tells the partners'
    /// watch streams of every committed status change, at least once.
    pub fn spawn_workers(&self, workers: &colend_platform::lifecycle::Workers) {
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
        let this = self.clone();
        workers.spawn_relay(
            "acquisition-outbox-relay",
            self.outbox_ready.clone(),
            move || {
                let this = this.clone();
                async move { this.relay_once().await }
            },
        );
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
        let (parked,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM applications WHERE status = 'PARKED'")
                .fetch_one(&self.db.pool)
                .await?;
        metrics::gauge!("colend_journeys_parked").set(parked as f64);
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

    /// Relays pending outbox events to the watch streams; true when a full
    /// batch went out. A watcher deduplicates by the application's version.
    async fn relay_once(&self) -> ApiResult<bool> {
        let pending: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_id, application_id FROM outbox WHERE sent_at = 0 ORDER BY created_at, event_id LIMIT 500",
        )
        .fetch_all(&self.db.pool)
        .await?;
        if pending.is_empty() {
            return Ok(false);
        }
        crash_point("acquisition.outbox.after_insert");
        for (_, application_id) in &pending {
            let _ = self.changes.send(application_id.clone());
        }
        let now = now_millis();
        for chunk in pending.chunks(100) {
            let marks = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("UPDATE outbox SET sent_at = $1 WHERE event_id IN ({marks})");
            let mut q = sqlx::query(&sql).bind(now);
            for (event_id, _) in chunk {
                q = q.bind(event_id);
            }
            q.execute(&self.db.pool).await?;
        }
        // Relayed events are kept an hour, then removed (looked at once a minute).
        let last = self
            .settings
            .purged
            .load(std::sync::atomic::Ordering::Relaxed);
        if now - last > 60_000 {
            self.settings
                .purged
                .store(now, std::sync::atomic::Ordering::Relaxed);
            sqlx::query("DELETE FROM outbox WHERE sent_at > 0 AND sent_at < $1")
                .bind(now - 3_600_000)
                .execute(&self.db.pool)
                .await?;
        }
        Ok(pending.len() == 500)
    }

    /// Takes the lease of an unfinished journey: true when this replica now owns it.
    async fn claim(&self, application_id: &str) -> ApiResult<bool> {
        let now = now_millis();
        let claimed = sqlx::query(&format!(
            "UPDATE applications SET lease_owner = $1, lease_until = $2 WHERE application_id = $3 \
             AND status IN {IN_PROGRESS} AND (lease_owner = $1 OR lease_until < $4)"
        ))
        .bind(&self.settings.owner)
        .bind(now + self.settings.lease_ms)
        .bind(application_id)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Takes the application through every step it has left.
    pub async fn advance(&self, application_id: &str) -> ApiResult<()> {
        self.run(application_id, false).await
    }

    async fn run(&self, application_id: &str, leased: bool) -> ApiResult<()> {
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
        // Each committed step renews the lease; it is taken again only at
        // the start and after another worker moved the journey on. The
        // application is read once and then kept up to date from the steps
        // this task commits.
        let mut leased = leased;
        let mut state: Option<State> = None;
        loop {
            if !leased && !self.claim(application_id).await? {
                // Finished, parked, or another replica's lease is live.
                return Ok(());
            }
            leased = true;
            let mut s = match state.take() {
                Some(s) => s,
                None => self.load_state(application_id).await?,
            };
            let status = s.status;
            if !status.is_in_progress() {
                return Ok(());
            }
            let step = match status {
                Status::Submitted => {
                    self.with_retries(|| self.step_kyc(application_id, &s.partner, &s.req))
                        .await
                }
                Status::KycPassed => {
                    self.with_retries(|| {
                        self.step_credit(
                            application_id,
                            &s.partner,
                            &s.req,
                            (s.kyc_age as i32, &s.kyc_region),
                            &s.person_key,
                        )
                    })
                    .await
                }
                Status::Approved => {
                    colend_platform::fault::pause_point("acquisition.journey.before_funding").await;
                    let d: pb::DecisionSummary = hex::decode(&s.decision)
                        .ok()
                        .and_then(|b| pb::DecisionSummary::decode(b.as_slice()).ok())
                        .unwrap_or_default();
                    self.with_retries(|| {
                        self.step_funding(application_id, &s.partner, &s.req, &d, &s.person_key)
                    })
                    .await
                }
                _ => return Ok(()),
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
            s.moved(&result);
            if !self.transition(application_id, status, result).await? {
                // Another worker moved it on; look again.
                leased = false;
                continue;
            }
            state = Some(s);
            crash_point("acquisition.journey.after_commit");
        }
    }

    /// What the journey needs of the application.
    async fn load_state(&self, application_id: &str) -> ApiResult<State> {
        type Row = (String, String, String, i64, String, String, String);
        let (status, body, partner, kyc_age, kyc_region, decision, person_key): Row =
            sqlx::query_as(
                "SELECT status, request_body, partner_id, kyc_age, kyc_region, decision, person_key \
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
        Ok(State {
            status,
            req,
            partner,
            kyc_age,
            kyc_region,
            decision,
            person_key,
        })
    }

    /// Runs a step, retrying technical failures with exponential backoff
    /// and jitter. Every step is idempotent (its request id is derived
    /// from the application), so retrying it is safe.
    async fn with_retries<'a, T, F, Fut>(&'a self, mut f: F) -> ApiResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ApiResult<T>> + 'a,
    {
        let mut cap = self.settings.backoff;
        let mut attempt = 1;
        loop {
            match f().await {
                Err(
                    e @ (ApiError::Dependency { .. }
                    | ApiError::RequestInFlight
                    | ApiError::Internal(_)),
                ) if attempt < self.settings.attempts => {
                    tracing::warn!(attempt, error = %e, "journey step failed; retrying");
                    metrics::counter!("colend_journey_retries_total").increment(1);
                    // Equal jitter: half the delay for sure, half at random,
                    // so retries of many journeys spread out but still wait.
                    let half = cap.as_millis() as u64 / 2;
                    let wait = half + rand::random_range(0..=half);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    cap = (cap * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Voids the funding reservation the journey may have made (the
    /// compensation of the funding step); Ok when there was none.
    pub async fn compensate_funding(
        &self,
        id: &str,
        partner: &str,
        why: &str,
    ) -> ApiResult<String> {
        let msg = funding::ReleaseFundingRequest {
            request_id: format!("{id}:release"),
            loan_id: String::new(),
            reason: why.chars().take(500).collect(),
            application_id: id.to_string(),
        };
        let released = self
            .with_retries(|| {
                let mut funding = self.funding.clone();
                let msg = msg.clone();
                async move {
                    funding
                        .release_funding(request(msg, self.timeout, Some(partner)))
                        .await
                        .map_err(|s| from_downstream("funding", s))
                }
            })
            .await;
        match released {
            Ok(r) => {
                let loan = r.into_inner().loan.unwrap_or_default();
                Ok(if loan.loan_id.is_empty() {
                    "no reservation to void (funding now refuses one for this application)".into()
                } else {
                    format!("reservation {} voided", loan.loan_id)
                })
            }
            Err(ApiError::InvalidState(m)) if m.contains("VOID") => {
                Ok("the reservation was already void".into())
            }
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

    async fn step_credit(
        &self,
        id: &str,
        partner: &str,
        r: &pb::SubmitApplicationRequest,
        (age, region): (i32, &str),
        borrower_key: &str,
    ) -> ApiResult<StepResult> {
        // What the borrower already owes across partners, from the bank's own books.
        let exposure = self
            .funding
            .clone()
            .get_borrower_exposure(request(
                funding::GetBorrowerExposureRequest {
                    borrower_key: borrower_key.to_string(),
                },
                self.timeout,
                Some(partner),
            ))
            .await
            .map_err(|s| from_downstream("funding", s))?
            .into_inner()
            .exposure;
        let scenario = r.scenario.clone().unwrap_or_default();
        let purpose = pb::LoanPurpose::try_from(r.purpose)
            .map(|p| {
                p.as_str_name()
                    .trim_start_matches("LOAN_PURPOSE_")
                    .to_string()
            })
            .unwrap_or_default();
        let input = credit::DecisionInput {
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
        };
        let msg = credit::DecideApplicationRequest {
            request_id: format!("{id}:credit"),
            input: Some(input),
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
                    colend_core::money::format_minor(
                        d.approved_amount
                            .as_ref()
                            .map(|m| m.minor_units)
                            .unwrap_or(0)
                    ),
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
                let m = |x: &Option<Money>| {
                    colend_core::money::format_minor(x.as_ref().map(|m| m.minor_units).unwrap_or(0))
                };
                Ok(StepResult {
                    to: Status::FundsReserved,
                    detail: format!(
                        "funds reserved: bank {} + partner {} (agreement v{})",
                        m(&loan.bank_amount),
                        m(&loan.partner_amount),
                        loan.agreement_version
                    ),
                    reasons: Vec::new(),
                    columns: vec![("funding", hex::encode(summary.encode_to_vec()))],
                })
            }
            Err(
                e @ (ApiError::QuotaExceeded { .. }
                | ApiError::NotWhitelisted(_)
                | ApiError::NoAgreement(_)
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
    /// transaction, only if the application is still in `from`; renews the
    /// lease while steps remain and gives it up when none do. Returns false
    /// when the application had moved on.
    async fn transition(&self, id: &str, from: Status, r: StepResult) -> ApiResult<bool> {
        let to = r.to;
        let db = self.db.clone();
        let id_owned = id.to_string();
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
                sql.push_str(&format!(", {col} = ${}", i + 8));
            }
            sql.push_str(" WHERE application_id = $4 AND status = $5");
            let mut q = sqlx::query(&sql)
                .bind(r.to.name())
                .bind(r.reasons.join(","))
                .bind(now)
                .bind(&id)
                .bind(from.name())
                .bind(owner)
                .bind(lease_until);
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
