//! The loan's journey: KYC → the bank's credit decision → funding. Each step
//! calls another service with a request id derived from the application, so
//! a retried or resumed step is never done twice, and each result is
//! committed with the status change and an event in the history.
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
use colend_platform::error::from_downstream;
use colend_platform::grpc::{TracedChannel, request, traced_channel};
use colend_platform::time::now_millis;
use colend_platform::{ApiError, ApiResult, Db, Mesh};
use prost::Message;
use std::time::Duration;
use tokio::sync::broadcast;
use tracing::Instrument;

/// Attempts of a step before the application is failed.
const STEP_ATTEMPTS: u32 = 6;

#[derive(Clone)]
pub struct Journey {
    db: Db,
    kyc: KycServiceClient<TracedChannel>,
    credit: CreditServiceClient<TracedChannel>,
    funding: FundingServiceClient<TracedChannel>,
    timeout: Duration,
    changes: broadcast::Sender<String>,
    sealer: colend_platform::sealing::Sealer,
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
        })
    }

    /// Subscribes to "application changed" notices (application ids).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    pub fn notify(&self, application_id: &str) {
        let _ = self.changes.send(application_id.to_string());
    }

    /// Runs the journey of an application in the background.
    pub fn start(&self, application_id: String) {
        let this = self.clone();
        // The journey continues the submitting call's trace.
        let span = tracing::info_span!("journey", application_id = %application_id);
        tokio::spawn(
            async move {
                if let Err(e) = this.advance(&application_id).await {
                    tracing::error!(application_id, error = %e, "journey stopped");
                }
            }
            .instrument(span),
        );
    }

    /// On start-up: resumes every journey that has steps left.
    pub fn resume_unfinished(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let rows: Result<Vec<(String,)>, _> = sqlx::query_as(
                "SELECT application_id FROM applications WHERE status IN ('SUBMITTED', 'KYC_PASSED', 'APPROVED') ORDER BY application_id",
            )
            .fetch_all(&this.db.pool)
            .await;
            match rows {
                Ok(rows) => {
                    if !rows.is_empty() {
                        tracing::info!(count = rows.len(), "resuming unfinished journeys");
                    }
                    for (id,) in rows {
                        if let Err(e) = this.advance(&id).await {
                            tracing::error!(application_id = id, error = %e, "resumed journey stopped");
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not list unfinished journeys"),
            }
        });
    }

    /// Takes the application through every step it has left.
    pub async fn advance(&self, application_id: &str) -> ApiResult<()> {
        loop {
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
            if !status.is_in_progress() {
                return Ok(());
            }
            let plain = self
                .sealer
                .open(crate::app::REQUEST_BODY, &body)
                .map_err(ApiError::Internal)?;
            let req = pb::SubmitApplicationRequest::decode(plain.as_slice())
                .map_err(ApiError::internal)?;
            let step = match status {
                Status::Submitted => {
                    self.with_retries(|| self.step_kyc(application_id, &partner, &req))
                        .await
                }
                Status::KycPassed => {
                    self.with_retries(|| {
                        self.step_credit(
                            application_id,
                            &partner,
                            &req,
                            (kyc_age as i32, &kyc_region),
                            &person_key,
                        )
                    })
                    .await
                }
                Status::Approved => {
                    let d: pb::DecisionSummary = hex::decode(&decision)
                        .ok()
                        .and_then(|b| pb::DecisionSummary::decode(b.as_slice()).ok())
                        .unwrap_or_default();
                    self.with_retries(|| {
                        self.step_funding(application_id, &partner, &req, &d, &person_key)
                    })
                    .await
                }
                _ => return Ok(()),
            };
            let result = match step {
                Ok(r) => r,
                Err(e) => StepResult {
                    to: Status::Failed,
                    detail: format!("the journey could not continue: {e}"),
                    reasons: vec![e.reason().to_string()],
                    columns: Vec::new(),
                },
            };
            if !self.transition(application_id, status, result).await? {
                // Another worker moved it on; look again.
                continue;
            }
        }
    }

    async fn with_retries<'a, F, Fut>(&'a self, mut f: F) -> ApiResult<StepResult>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ApiResult<StepResult>> + 'a,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match f().await {
                Err(
                    e @ (ApiError::Dependency { .. }
                    | ApiError::RequestInFlight
                    | ApiError::Internal(_)),
                ) if attempt < STEP_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "journey step failed; retrying");
                    // Full jitter would need a random source; half-fixed spread is enough here.
                    tokio::time::sleep(delay + Duration::from_millis((now_millis() % 50) as u64))
                        .await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                other => return other,
            }
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

    /// Commits a step: status, columns and event in one transaction, only if
    /// the application is still in `from`. Returns false when it was not.
    async fn transition(&self, id: &str, from: Status, r: StepResult) -> ApiResult<bool> {
        let to = r.to;
        let db = self.db.clone();
        let id_owned = id.to_string();
        // Spawned: a cancelled caller cannot leave the transaction half-done.
        let done = tokio::spawn(async move {
            let id = id_owned;
            let mut tx = db.pool.begin().await?;
            let now = now_millis();
            let mut sql = String::from(
                "UPDATE applications SET status = $1, reason_codes = $2, updated_at = $3",
            );
            for (i, (col, _)) in r.columns.iter().enumerate() {
                sql.push_str(&format!(", {col} = ${}", i + 6));
            }
            sql.push_str(" WHERE application_id = $4 AND status = $5");
            let mut q = sqlx::query(&sql)
                .bind(r.to.name())
                .bind(r.reasons.join(","))
                .bind(now)
                .bind(&id)
                .bind(from.name());
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
            if to == Status::Failed {
                // A journey that could not go on: it waits for an operator.
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
