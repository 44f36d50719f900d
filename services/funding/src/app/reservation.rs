//! Reservations given back: release (by loan or by application), expiry, and the locks they share with the reservation batch (`reserve`).
use super::*;

/// Locks applications against each other until the transaction ends: the
/// reservation batch and a release by application take these first, so an
/// application closed to funding can never gain a loan afterwards, and a
/// release never misses a reservation still being committed. Taken in one
/// order (sorted) so two batches cannot deadlock. PostgreSQL: advisory
/// transaction locks; SQLite has a single writer.
pub(super) async fn lock_applications(conn: &mut AnyConnection, apps: &[&str]) -> ApiResult<()> {
    if Backend::of(conn) != Backend::Postgres || apps.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<String> = apps
        .iter()
        .map(|a| format!("colend.funding.application\n{a}"))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let rows: Vec<String> = (1..=keys.len()).map(|i| format!("(${i})")).collect();
    // OFFSET 0 keeps the sort below the locking projection: locks in key order.
    let sql = format!(
        "SELECT CAST(COUNT(pg_advisory_xact_lock(hashtextextended(k, 0))) AS BIGINT) FROM \
         (SELECT k FROM (VALUES {}) AS v(k) ORDER BY k OFFSET 0) AS sorted",
        rows.join(", ")
    );
    let mut q = sqlx::query_as::<_, (i64,)>(&sql);
    for k in keys {
        q = q.bind(k);
    }
    q.fetch_one(&mut *conn).await?;
    Ok(())
}

/// Voids a reserved loan and gives back everything it held: the partner's
/// total and daily quota and the bank's C2/C3 exposure. Under the loan's
/// lock: a loan already VOID is returned as it is with `false` (voiding is
/// idempotent: a release after an expiry, or two releases, change nothing);
/// a disbursed or settled loan is INVALID_STATE.
pub(super) async fn void_reserved(
    conn: &mut AnyConnection,
    loan_id: &str,
) -> ApiResult<(LoanRow, bool)> {
    let mut l = lock_loan(conn, loan_id).await?;
    if l.status == LoanStatus::Void {
        return Ok((l, false));
    }
    if l.status != LoanStatus::Reserved {
        return Err(ApiError::InvalidState(format!(
            "loan is {}, only a reserved loan can be released",
            l.status
        )));
    }
    let voided = sqlx::query("UPDATE loans SET status = 'VOID', updated_at = $1 WHERE loan_id = $2 AND status = 'RESERVED'")
        .bind(now_millis())
        .bind(loan_id)
        .execute(&mut *conn)
        .await?;
    if voided.rows_affected() != 1 {
        // The row is locked: anything else is a fault, never a refusal to store.
        return Err(ApiError::internal(anyhow::anyhow!(
            "loan {loan_id} changed under its lock"
        )));
    }
    sqlx::query("UPDATE partner_usage SET used = used - $1 WHERE partner_id = $2")
        .bind(l.partner_amount)
        .bind(&l.partner_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE partner_daily_usage SET used = used - $1 WHERE partner_id = $2 AND day = $3",
    )
    .bind(l.partner_amount)
    .bind(&l.partner_id)
    .bind(&l.reserved_on)
    .execute(&mut *conn)
    .await?;
    release_bank_exposure(conn, &l.partner_id, l.bank_amount).await?;
    l.status = LoanStatus::Void;
    Ok((l, true))
}

/// The bank's share of co-lent principal goes down (repaid or voided).
pub(super) async fn release_bank_exposure(
    conn: &mut AnyConnection,
    partner_id: &str,
    amount: i64,
) -> ApiResult<()> {
    for scope in [format!("PARTNER:{partner_id}"), "ALL".to_string()] {
        sqlx::query("UPDATE bank_exposure SET used = used - $1 WHERE scope = $2")
            .bind(amount)
            .bind(scope)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl Funding {
    /// Splits the loan and reserves the partner's quota, atomically.
    pub async fn reserve(
        &self,
        request_id: String,
        hash: String,
        r: pb::ReserveFundingRequest,
    ) -> ApiResult<pb::Loan> {
        let agreement = self.agreement(&r.partner_id).await?.ok_or_else(|| {
            ApiError::NoAgreement(format!(
                "no co-lending agreement is in force for partner {}",
                r.partner_id
            ))
        })?;
        let principal = r.principal.clone().unwrap_or_default();
        // The loan's currency is the request's; the batch refuses it
        // (CURRENCY_MISMATCH, not stored: the set-up can change) unless the
        // agreement, the partner's quota usage and the bank's reference
        // data are in it too.
        let currency = principal.currency_code.clone();
        // Each lender funds at least its minimum share, to the cent.
        let min = self.share_minimums();
        let split = domain::split_within(
            principal.minor_units,
            i64::from(agreement.partner_share_bps),
            min,
        )
        .ok_or_else(|| {
            ApiError::field(
                "principal",
                &format!(
                    "cannot be split in whole minor units so that the partner funds at least \
                     {} bps and the bank at least {} bps",
                    min.partner_bps, min.bank_bps
                ),
            )
        })?;
        let method = method_of(r.repayment_method as i64).ok_or_else(|| {
            ApiError::field(
                "repayment_method",
                "must be EQUAL_INSTALMENT, EQUAL_PRINCIPAL or INTEREST_FIRST",
            )
        })?;
        let reservation = reserve::Reservation {
            r,
            agreement,
            split,
            currency,
            method,
        };
        self.reserver.reserve(request_id, hash, reservation).await
    }

    /// Voids a reservation and releases the quota.
    pub async fn release(
        &self,
        request_id: String,
        hash: String,
        loan_id: String,
        application_id: String,
        reason: String,
    ) -> ApiResult<pb::Loan> {
        let loan = idempotency::run(
            &self.db,
            "ReleaseFunding".into(),
            request_id,
            hash,
            move |tx| {
                Box::pin(async move {
                    let loan_id = if loan_id.is_empty() {
                        // The application is closed to funding from now on,
                        // whether or not a reservation was made for it. Under
                        // the application's lock, which a reservation batch
                        // takes too: a reservation still being committed is
                        // seen (and voided) here, or sees the closure.
                        lock_applications(tx, &[application_id.as_str()]).await?;
                        sqlx::query(
                            "INSERT INTO closed_applications (application_id, reason, closed_at) \
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        )
                        .bind(&application_id)
                        .bind(&reason)
                        .bind(now_millis())
                        .execute(&mut *tx)
                        .await?;
                        let found: Option<(String,)> =
                            sqlx::query_as("SELECT loan_id FROM loans WHERE application_id = $1")
                                .bind(&application_id)
                                .fetch_optional(&mut *tx)
                                .await?;
                        match found {
                            Some((id,)) => id,
                            // Nothing to void: an empty loan says so.
                            None => {
                                return Ok(pb::Loan {
                                    application_id,
                                    ..Default::default()
                                });
                            }
                        }
                    } else {
                        loan_id
                    };
                    let (l, voided) = void_reserved(tx, &loan_id).await?;
                    if voided {
                        let event = loan_event(
                            &l,
                            format!("void:{loan_id}"),
                            acq::ApplicationStatus::FundingRejected,
                            format!("funding reservation released: {reason}"),
                            &["RESERVATION_RELEASED"],
                        );
                        enqueue(tx, &event).await?;
                        tracing::info!(loan_id = %loan_id, reason = %reason, "reservation released");
                    }
                    Ok(loan_pb(&l, &[], Vec::new()))
                })
            },
        )
        .await?;
        self.outbox_ready.notify_one();
        Ok(loan)
    }

    /// Voids every reservation past its expiry; returns how many.
    pub async fn sweep_expired(&self) -> ApiResult<usize> {
        let expired: Vec<(String,)> = sqlx::query_as(
            "SELECT loan_id FROM loans WHERE status = 'RESERVED' AND expires_at < $1 ORDER BY expires_at LIMIT 500",
        )
        .bind(self.now())
        .fetch_all(&self.db.pool)
        .await?;
        let mut n = 0;
        for (loan_id,) in expired {
            let db = self.db.clone();
            let voided = tokio::spawn(async move {
                let mut tx = db.pool.begin().await?;
                match void_reserved(&mut tx, &loan_id).await {
                    // Voided meanwhile (released): nothing to do.
                    Ok((_, false)) => Ok(None),
                    Ok((l, true)) => {
                        let event = loan_event(
                            &l,
                            format!("void:{loan_id}"),
                            acq::ApplicationStatus::FundingRejected,
                            "funding reservation expired before disbursement".into(),
                            &["RESERVATION_EXPIRED"],
                        );
                        enqueue(&mut tx, &event).await?;
                        tx.commit().await?;
                        Ok(Some(l))
                    }
                    Err(ApiError::InvalidState(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("sweep task failed: {e}")))??;
            if voided.is_some() {
                n += 1;
                self.outbox_ready.notify_one();
            }
        }
        if n > 0 {
            tracing::info!(count = n, "expired reservations voided");
        }
        Ok(n)
    }

    /// Sweeps expired reservations in the background.
    pub fn spawn_sweeper(&self, workers: &colend_platform::lifecycle::Workers) {
        let this = self.clone();
        workers.spawn("funding-expiry-sweeper", |mut stopping| async move {
            while !stopping.sleep(this.settings.sweep_every).await {
                if let Err(e) = this.sweep_expired().await {
                    tracing::warn!(error = %e, "sweeping expired reservations failed");
                }
            }
        });
    }
}
