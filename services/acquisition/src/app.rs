//! Acquisition use cases and the application store.
use crate::domain::Status;
use crate::journey::Journey;
use colend_contracts::acquisition::v1 as pb;
use colend_contracts::common::v1::Money;
use colend_core::BlindIndexKey;
use colend_platform::sealing::Sealer;
use colend_platform::time::{millis_of, now_millis, timestamp};
use colend_platform::{ApiError, ApiResult, Db, idempotency};
use prost::Message;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

const APP_COLS: &str = "application_id, partner_id, status, reason_codes, business_name, credit_code, \
    masked_resident_id, currency, requested_amount, term_months, purpose, repayment_method, kyc_check_id, \
    decision, funding, created_at, updated_at";

fn split_codes(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

fn decode_hex<M: Message + Default>(s: &str) -> Option<M> {
    if s.is_empty() {
        return None;
    }
    hex::decode(s)
        .ok()
        .and_then(|b| M::decode(b.as_slice()).ok())
}

/// A stored status on the wire; a name that is not a status is an error.
fn status_pb(s: &str) -> ApiResult<i32> {
    Status::parse(s)
        .and_then(|s| {
            pb::ApplicationStatus::from_str_name(&format!("APPLICATION_STATUS_{}", s.name()))
        })
        .map(|s| s as i32)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad stored status {s:?}")))
}

fn application_of(r: &AnyRow) -> ApiResult<pb::Application> {
    let currency: String = r.get(7);
    Ok(pb::Application {
        application_id: r.get(0),
        partner_id: r.get(1),
        status: status_pb(&r.get::<String, _>(2))?,
        reason_codes: split_codes(&r.get::<String, _>(3)),
        business_name: r.get(4),
        credit_code: r.get(5),
        masked_resident_id: r.get(6),
        requested_amount: Some(Money {
            minor_units: r.get(8),
            currency_code: currency,
        }),
        term_months: r.get::<i64, _>(9) as i32,
        purpose: r.get::<i64, _>(10) as i32,
        repayment_method: r.get::<i64, _>(11) as i32,
        kyc_check_id: r.get(12),
        decision: decode_hex(&r.get::<String, _>(13)),
        funding: decode_hex(&r.get::<String, _>(14)),
        history: Vec::new(),
        created_at: Some(timestamp(r.get(15))),
        updated_at: Some(timestamp(r.get(16))),
    })
}

/// Loads an application with its history; `partner_id` scopes the read.
pub async fn load(
    conn: &mut AnyConnection,
    application_id: &str,
    partner_id: Option<&str>,
) -> ApiResult<Option<pb::Application>> {
    // Scoped to the calling partner in the query itself (None: colend's own use).
    let row = sqlx::query(&format!(
        "SELECT {APP_COLS} FROM applications WHERE application_id = $1 AND ($2 = '' OR partner_id = $2)"
    ))
    .bind(application_id)
    .bind(partner_id.unwrap_or(""))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut app = application_of(&row)?;
    let events = sqlx::query(
        "SELECT status, occurred_at, detail, reason_codes FROM application_events WHERE application_id = $1 ORDER BY event_id",
    )
    .bind(application_id)
    .fetch_all(&mut *conn)
    .await?;
    app.history = events
        .iter()
        .map(|e| {
            Ok(pb::ApplicationEvent {
                status: status_pb(&e.get::<String, _>(0))?,
                occurred_at: Some(timestamp(e.get(1))),
                detail: e.get(2),
                reason_codes: split_codes(&e.get::<String, _>(3)),
            })
        })
        .collect::<ApiResult<_>>()?;
    Ok(Some(app))
}

/// The topic of status changes in the outbox (aggregate: the application;
/// no payload: a watcher reads the application).
pub const CHANGED_TOPIC: &str = "acquisition.ApplicationChanged";

/// Appends an event to the history, and the same event to the outbox (for
/// the partner's watch streams), in the caller's transaction.
pub async fn insert_event(
    conn: &mut AnyConnection,
    application_id: &str,
    status: Status,
    detail: &str,
    reasons: &[String],
    at: i64,
) -> ApiResult<()> {
    let event_id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    colend_platform::outbox::enqueue_with_id(conn, &event_id, application_id, CHANGED_TOPIC, &[])
        .await?;
    sqlx::query(
        "INSERT INTO application_events (event_id, application_id, status, detail, reason_codes, occurred_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&event_id)
    .bind(application_id)
    .bind(status.name())
    .bind(detail)
    .bind(reasons.join(","))
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The application's borrower is no longer in flight.
pub async fn release_borrower(conn: &mut AnyConnection, application_id: &str) -> ApiResult<()> {
    sqlx::query("DELETE FROM inflight_borrowers WHERE application_id = $1")
        .bind(application_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[derive(Clone)]
pub struct Acquisition {
    db: Db,
    key: BlindIndexKey,
    sealer: Sealer,
    journey: Journey,
    /// Most applications one borrower (resident ID) may make in 24 hours,
    /// across partners (`COLEND_BORROWER_DAILY_APPLICATIONS`, default 5).
    velocity: i64,
}

/// Context bound to the sealed submission (personal data inside).
pub const REQUEST_BODY: &str = "acquisition.applications.request_body";

impl Acquisition {
    pub fn new(db: Db, key: BlindIndexKey, sealer: Sealer, journey: Journey) -> Self {
        Acquisition {
            db,
            key,
            sealer,
            journey,
            velocity: colend_platform::config::env_parse(
                "COLEND_BORROWER_DAILY_APPLICATIONS",
                5i64,
            )
            .unwrap_or(5)
            .max(1),
        }
    }

    pub fn journey(&self) -> &Journey {
        &self.journey
    }

    /// Records a validated application and starts its journey.
    pub async fn submit(
        &self,
        partner_id: String,
        hash: String,
        r: pb::SubmitApplicationRequest,
    ) -> ApiResult<pb::Application> {
        let legal = r.legal_representative.clone().unwrap_or_default();
        let business = r.business.clone().unwrap_or_default();
        let resident = colend_core::ResidentId::parse(&legal.resident_id)
            .map_err(|e| ApiError::field("legal_representative.resident_id", &e.to_string()))?;
        let credit_code = colend_core::CreditCode::parse(&business.credit_code)
            .map_err(|e| ApiError::field("business.credit_code", &e.to_string()))?;
        let person_key = self.key.index("person", &[resident.expose()]);
        let business_key = self.key.index("business", &[credit_code.as_str()]);
        // The submission holds personal data: it is stored sealed.
        let sealed_body = self
            .sealer
            .seal(REQUEST_BODY, &r.encode_to_vec())
            .map_err(ApiError::Internal)?;
        let scope = format!("SubmitApplication:{partner_id}");
        let request_id = r.request_id.clone();
        // The loan will be in the requested currency: refused at once
        // (CURRENCY_MISMATCH, nothing recorded) when the bank's credit
        // policy or the partner's agreement is in another. A replay of a
        // submission already recorded is answered by its record instead.
        let currency = r
            .requested_amount
            .as_ref()
            .map(|m| m.currency_code.clone())
            .unwrap_or_default();
        if let Err(e) = self
            .journey
            .currency_supported(&partner_id, &currency)
            .await
            && !self.recorded(&scope, &request_id).await?
        {
            return Err(e);
        }
        let velocity = self.velocity;
        // The journey starts under this replica's lease, taken with the insert.
        let lease = self.journey.new_lease();
        let epoch = lease.epoch;
        let created = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let created_here = created.clone();
        let app = idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                // Velocity: a borrower applying again and again, at one
                // partner or across several, is stopped for the day.
                let (recent,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM applications WHERE person_key = $1 AND created_at > $2",
                )
                .bind(&person_key)
                .bind(now_millis() - 86_400_000)
                .fetch_one(&mut *tx)
                .await?;
                if recent >= velocity {
                    return Err(ApiError::limit(
                        "BORROWER_VELOCITY",
                        format!(
                            "the borrower has made {recent} applications in the last 24 hours (at most {velocity})"
                        ),
                    ));
                }
                let id = format!("app_{}", uuid::Uuid::now_v7().simple());
                for key in [&person_key, &business_key] {
                    let claimed = sqlx::query(
                        "INSERT INTO inflight_borrowers (partner_id, borrower_key, application_id) VALUES ($1, $2, $3)",
                    )
                    .bind(&partner_id)
                    .bind(key)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await;
                    match claimed {
                        Ok(_) => {}
                        Err(e) if Db::is_unique_violation(&e) => {
                            return Err(ApiError::DuplicateApplication(
                                "the borrower already has an application in flight with this partner".into(),
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                let now = now_millis();
                let amount = r.requested_amount.clone().unwrap_or_default();
                let consent = r.consent.clone().unwrap_or_default();
                sqlx::query(
                    "INSERT INTO applications (application_id, partner_id, status, reason_codes, business_name, credit_code, \
                     masked_resident_id, person_key, business_key, currency, requested_amount, term_months, purpose, \
                     repayment_method, request_body, consent_scopes, consent_channel, consent_text_version, consent_granted_at, \
                     kyc_check_id, kyc_age, kyc_region, decision, funding, created_at, updated_at, lease_owner, lease_until, \
                     lease_epoch) \
                     VALUES ($1, $2, 'SUBMITTED', '', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                     '', 0, '', '', '', $18, $18, $19, $20, $21)",
                )
                .bind(&id)
                .bind(&partner_id)
                .bind(business.name.trim())
                .bind(credit_code.as_str())
                .bind(resident.masked())
                .bind(&person_key)
                .bind(&business_key)
                .bind(&amount.currency_code)
                .bind(amount.minor_units)
                .bind(r.term_months as i64)
                .bind(r.purpose as i64)
                .bind(r.repayment_method as i64)
                .bind(&sealed_body)
                .bind(consent.scopes.join(","))
                .bind(&consent.channel)
                .bind(&consent.text_version)
                .bind(consent.granted_at.as_ref().map(millis_of).unwrap_or(0))
                .bind(now)
                .bind(&lease.owner)
                .bind(lease.until)
                .bind(lease.epoch)
                .execute(&mut *tx)
                .await?;
                insert_event(tx, &id, Status::Submitted, "application received; consent recorded", &[], now).await?;
                created_here.store(true, std::sync::atomic::Ordering::Relaxed);
                load(tx, &id, None)
                    .await?
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application vanished")))
            })
        })
        .await?;
        if app.status == pb::ApplicationStatus::Submitted as i32 {
            metrics::counter!("colend_applications_total", "status" => "SUBMITTED").increment(1);
            // Committed; the reply has not gone out (the client's retry with
            // the same request id gets this application, and the sweeper
            // runs its journey).
            colend_platform::fault::crash_point("acquisition.submit.after_commit");
            // A replay (the application was made by an earlier call) takes the lease first.
            let leased = created
                .load(std::sync::atomic::Ordering::Relaxed)
                .then_some(epoch);
            self.journey.start(app.application_id.clone(), leased);
        }
        Ok(app)
    }

    /// Whether a request id was already recorded under `scope`.
    async fn recorded(&self, scope: &str, request_id: &str) -> ApiResult<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT CAST(1 AS BIGINT) FROM idempotency_keys WHERE scope = $1 AND request_id = $2",
        )
        .bind(scope)
        .bind(request_id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.is_some())
    }

    pub async fn get(&self, partner_id: &str, application_id: &str) -> ApiResult<pb::Application> {
        let mut conn = self.db.pool.acquire().await?;
        load(&mut conn, application_id, Some(partner_id))
            .await?
            .ok_or_else(|| ApiError::NotFound("application".into()))
    }

    /// The partner's applications (every partner's for "": the bank's
    /// view), newest first, keyset-paginated.
    pub async fn list(
        &self,
        partner_id: &str,
        page_size: i64,
        before: &str,
        status: Option<Status>,
    ) -> ApiResult<(Vec<pb::Application>, String)> {
        // The first page (no key) has no bound at all: a sentinel such as
        // '~' sorts before letters under a database's non-C collation and
        // would match nothing.
        let rows = sqlx::query(&format!(
            "SELECT {APP_COLS} FROM applications WHERE ($1 = '' OR partner_id = $1) \
             AND ($2 = '' OR application_id < $2) \
             AND ($3 = '' OR status = $3) ORDER BY application_id DESC LIMIT $4"
        ))
        .bind(partner_id)
        .bind(before)
        .bind(status.map(|s| s.name()).unwrap_or(""))
        .bind(page_size + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let mut apps: Vec<pb::Application> =
            rows.iter().map(application_of).collect::<ApiResult<_>>()?;
        let next = if apps.len() as i64 > page_size {
            apps.truncate(page_size as usize);
            apps.last()
                .map(|a| a.application_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((apps, next))
    }

    /// Records a disbursement or repayment reported by funding (SETTLED:
    /// the repayment that settled the loan).
    pub async fn record_loan_event(
        &self,
        hash: String,
        r: pb::RecordLoanEventRequest,
    ) -> ApiResult<pb::Application> {
        let event = match pb::ApplicationStatus::try_from(r.status) {
            Ok(pb::ApplicationStatus::Disbursed) => Status::Disbursed,
            Ok(pb::ApplicationStatus::Repaying) => Status::Repaying,
            Ok(pb::ApplicationStatus::Settled) => Status::Settled,
            Ok(pb::ApplicationStatus::FundingRejected) => Status::FundingRejected,
            _ => {
                return Err(ApiError::field(
                    "status",
                    "must be DISBURSED, REPAYING, SETTLED or FUNDING_REJECTED",
                ));
            }
        };
        let scope = format!("RecordLoanEvent:{}", r.partner_id);
        let app_id = r.application_id.clone();
        let lock = self.row_lock();
        let app = idempotency::run(&self.db, scope, r.request_id.clone(), hash, move |tx| {
            Box::pin(async move {
                // The status is read and written under the row's lock, so a
                // concurrent change (an abandonment closing the application)
                // is never overwritten with what was read before it.
                let row: Option<(String, String)> = sqlx::query_as(&format!(
                    "SELECT status, partner_id FROM applications WHERE application_id = $1{lock}"
                ))
                .bind(&r.application_id)
                .fetch_optional(&mut *tx)
                .await?;
                let (current, partner) = row.ok_or_else(|| ApiError::NotFound("application".into()))?;
                if partner != r.partner_id {
                    return Err(ApiError::NotFound("application".into()));
                }
                let current = Status::parse(&current).ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad status")))?;
                if current == Status::Approved {
                    // The journey holds the reservation's answer but has not
                    // committed FUNDS_RESERVED yet: an event applied now would
                    // be overwritten by that commit. Funding's outbox sends it
                    // again (not stored: NOT_READY is not final).
                    return Err(ApiError::NotReady(
                        "the journey has not recorded its funding yet; send the event again".into(),
                    ));
                }
                let next = current.after_loan_event(event);
                let now = now_millis();
                sqlx::query("UPDATE applications SET status = $1, updated_at = $2 WHERE application_id = $3")
                    .bind(next.name())
                    .bind(now)
                    .bind(&r.application_id)
                    .execute(&mut *tx)
                    .await?;
                if next == event && event == Status::FundingRejected {
                    sqlx::query("UPDATE applications SET reason_codes = $1 WHERE application_id = $2")
                        .bind(r.reason_codes.join(","))
                        .bind(&r.application_id)
                        .execute(&mut *tx)
                        .await?;
                }
                insert_event(tx, &r.application_id, event, &r.detail, &r.reason_codes, now).await?;
                if !next.holds_borrower() {
                    release_borrower(tx, &r.application_id).await?;
                }
                load(tx, &r.application_id, None)
                    .await?
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application vanished")))
            })
        })
        .await?;
        metrics::counter!("colend_applications_total", "status" => event.name()).increment(1);
        self.journey.notify(&app_id);
        Ok(app)
    }

    /// `" FOR UPDATE"` on PostgreSQL, for a read followed by a write of the
    /// same row in one transaction (SQLite serialises writers anyway).
    fn row_lock(&self) -> &'static str {
        self.db.backend.for_update()
    }

    /// An operator's decision on a parked journey: retry it from the step
    /// where it stopped, or abandon it.
    ///
    /// RETRY moves PARKED back to the parked step (compare-and-set on
    /// PARKED) and starts the journey, which takes the lease at a new epoch.
    ///
    /// ABANDON goes in three steps, each committed before the next:
    /// 1. PARKED → ABANDONING, with who decided and why, and its history
    ///    event ([`Acquisition::begin_abandon`]). From then on RETRY is
    ///    refused; of a RETRY and an ABANDON racing, exactly one moves the
    ///    status off PARKED, and the other is refused with INVALID_STATE.
    /// 2. The compensation ([`Journey::compensate_funding`]): the funding
    ///    reservation, if any, is voided and the application closed to
    ///    funding.
    /// 3. ABANDONING → FAILED / ABANDONED, releasing the borrower; stored as
    ///    the call's answer.
    ///
    /// A failure after step 1 (a service away, a crash) leaves ABANDONING:
    /// ABANDON again, with the same request id or a new one, continues it.
    /// The sweeper does not: an operator decided, an operator finishes.
    pub async fn resume(
        &self,
        hash: String,
        r: pb::ResumeApplicationRequest,
    ) -> ApiResult<pb::Application> {
        let abandon = r.action == pb::ResumeAction::Abandon as i32;
        let id = r.application_id.clone();
        let current: Option<(String,)> =
            sqlx::query_as("SELECT status FROM applications WHERE application_id = $1")
                .bind(&id)
                .fetch_optional(&self.db.pool)
                .await?;
        let Some((current,)) = current else {
            return Err(ApiError::NotFound("application".into()));
        };
        let current = Status::parse(&current)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad status {current}")))?;
        // What this call's compensation did; the application is closed only
        // by a call that compensated (a replay gets its stored answer first).
        let mut compensated: Option<String> = None;
        if abandon && current.can_abandon() {
            self.begin_abandon(hash.clone(), &r).await?;
            compensated = Some(self.journey.compensate_funding(&id).await?);
        }
        let lock = self.row_lock();
        let scope = "ResumeApplication".to_string();
        let app = idempotency::run(&self.db, scope, r.request_id.clone(), hash, move |tx| {
            Box::pin(async move {
                let row: Option<(String, String, String)> = sqlx::query_as(&format!(
                    "SELECT status, parked_step, abandon_reason FROM applications WHERE application_id = $1{lock}"
                ))
                .bind(&r.application_id)
                .fetch_optional(&mut *tx)
                .await?;
                let (status, step, why) = row.ok_or_else(|| ApiError::NotFound("application".into()))?;
                let status = Status::parse(&status)
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad status {status}")))?;
                let (from, to, reasons, detail) = match (abandon, compensated) {
                    (true, Some(compensated)) if status == Status::Abandoning => (
                        Status::Abandoning,
                        Status::Failed,
                        vec!["ABANDONED".to_string()],
                        format!("{why}; {compensated}"),
                    ),
                    (true, _) => {
                        return Err(ApiError::InvalidState(format!(
                            "the application is {}; only a PARKED journey can be abandoned",
                            status.name()
                        )));
                    }
                    (false, _) if status == Status::Abandoning => {
                        return Err(ApiError::InvalidState(
                            "the application is ABANDONING: it can no longer be retried (ABANDON finishes it)".into(),
                        ));
                    }
                    (false, _) if !status.can_retry() => {
                        return Err(ApiError::InvalidState(format!(
                            "the application is {}; only a PARKED journey can be resumed",
                            status.name()
                        )));
                    }
                    (false, _) => {
                        let to = Status::parse(&step)
                            .filter(|s| s.is_in_progress())
                            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad parked step {step}")))?;
                        (
                            Status::Parked,
                            to,
                            Vec::new(),
                            format!("resumed at {step} by {}: {}", r.operator, r.reason),
                        )
                    }
                };
                let now = now_millis();
                // Compare-and-set: of two decisions racing, one moves the status.
                let moved = sqlx::query(
                    "UPDATE applications SET status = $1, reason_codes = $2, parked_step = '', lease_owner = '', \
                     lease_until = 0, updated_at = $3 WHERE application_id = $4 AND status = $5",
                )
                .bind(to.name())
                .bind(reasons.join(","))
                .bind(now)
                .bind(&r.application_id)
                .bind(from.name())
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() != 1 {
                    return Err(ApiError::InvalidState(format!(
                        "the application is no longer {}: another decision was taken first",
                        from.name()
                    )));
                }
                insert_event(tx, &r.application_id, to, &detail, &reasons, now).await?;
                if !to.holds_borrower() {
                    release_borrower(tx, &r.application_id).await?;
                }
                load(tx, &r.application_id, None)
                    .await?
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application vanished")))
            })
        })
        .await?;
        self.journey.notify(&id);
        if !abandon && app.status != pb::ApplicationStatus::Parked as i32 {
            self.journey.start(id, None);
        }
        Ok(app)
    }

    /// Step 1 of ABANDON: PARKED → ABANDONING, recording who decided and why
    /// (the compensation sends it) with a history event; for an application
    /// already ABANDONING (an abandonment that stopped half-way), nothing.
    /// Idempotent by request id, under a scope of its own.
    async fn begin_abandon(
        &self,
        hash: String,
        r: &pb::ResumeApplicationRequest,
    ) -> ApiResult<pb::Application> {
        let id = r.application_id.clone();
        let why = format!("journey abandoned by {}: {}", r.operator, r.reason);
        let lock = self.row_lock();
        let scope = "ResumeApplication:abandon".to_string();
        let app = idempotency::run(&self.db, scope, r.request_id.clone(), hash, move |tx| {
            Box::pin(async move {
                let row: Option<(String,)> = sqlx::query_as(&format!(
                    "SELECT status FROM applications WHERE application_id = $1{lock}"
                ))
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
                let (status,) = row.ok_or_else(|| ApiError::NotFound("application".into()))?;
                let status = Status::parse(&status)
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad status {status}")))?;
                match status {
                    Status::Abandoning => {}
                    Status::Parked => {
                        let now = now_millis();
                        let moved = sqlx::query(
                            "UPDATE applications SET status = 'ABANDONING', abandon_reason = $1, updated_at = $2 \
                             WHERE application_id = $3 AND status = 'PARKED'",
                        )
                        .bind(&why)
                        .bind(now)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                        if moved.rows_affected() != 1 {
                            return Err(ApiError::InvalidState(
                                "the application is no longer PARKED: another decision was taken first".into(),
                            ));
                        }
                        let detail = format!("{why}; compensating before closing");
                        insert_event(tx, &id, Status::Abandoning, &detail, &["ABANDONED".to_string()], now)
                            .await?;
                    }
                    other => {
                        return Err(ApiError::InvalidState(format!(
                            "the application is {}; only a PARKED journey can be abandoned",
                            other.name()
                        )));
                    }
                }
                load(tx, &id, None)
                    .await?
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application vanished")))
            })
        })
        .await?;
        self.journey.notify(&r.application_id);
        Ok(app)
    }
}
