//! The accrual run: every disbursed loan accrued through a business date
//! and posted to each funder's ledger, for the bank's `AccrueInterest` and
//! for the run funding makes itself at the start of each business day.
//!
//! What must hold:
//! - A loan accrued through D by a run holds exactly what a repayment
//!   valued D would have accrued on it ([`domain::accrue_to`] is the one
//!   place accrual happens, and the repayment path calls it too): interest
//!   and fees for the days from the disbursement up to D, day D's own
//!   interest accruing with D + 1. Accruing in steps posts what accruing
//!   once does, to each funder, so a loan's income does not depend on
//!   whether runs happened.
//! - Each loan is accrued in a transaction of its own (postings, running
//!   totals, instalments and dates together) under the loan's row lock,
//!   after which its status and dates are read again: a loan no longer
//!   disbursed, or already accrued through D, posts nothing. So several runs
//!   at once (replicas, the bank's call beside the daily run, a retry) and
//!   a repayment booked meanwhile each act on what the other left, and each
//!   day's accrual is posted once.
//! - A run cut short leaves the loans it finished accrued and the rest for
//!   the next run.
use super::*;
use colend_platform::lifecycle::{Stopping, Workers};
use std::collections::BTreeMap;

/// Loans read per page of a run (by loan id).
const PAGE: usize = 200;

/// What a run posted: the loans that had something to post and, per
/// component, currency → amount (both funders together).
#[derive(Default)]
struct Posted {
    loans: i32,
    interest: BTreeMap<String, i64>,
    fee: BTreeMap<String, i64>,
    penalty: BTreeMap<String, i64>,
}

fn overflow() -> ApiError {
    ApiError::internal(anyhow::anyhow!("the accrual run's totals overflow"))
}

impl Posted {
    /// Adds one loan's accrual, in its currency.
    fn add(&mut self, currency: &str, a: &domain::Accrual) -> ApiResult<()> {
        let parts = [
            (&mut self.interest, a.interest),
            (&mut self.fee, a.fee),
            (&mut self.penalty, a.penalty),
        ];
        if parts.iter().all(|(_, p)| p.bank == 0 && p.partner == 0) {
            return Ok(());
        }
        for (sums, p) in parts {
            let total = p.bank.checked_add(p.partner).ok_or_else(overflow)?;
            let sum = sums.entry(currency.to_string()).or_default();
            *sum = sum.checked_add(total).ok_or_else(overflow)?;
        }
        self.loans = self.loans.checked_add(1).ok_or_else(overflow)?;
        Ok(())
    }

    fn response(self, as_of: chrono::NaiveDate) -> pb::AccrueInterestResponse {
        let list = |sums: BTreeMap<String, i64>| {
            sums.into_iter()
                .map(|(currency_code, minor_units)| Money {
                    minor_units,
                    currency_code,
                })
                .collect()
        };
        pb::AccrueInterestResponse {
            as_of: format_date(as_of),
            loans_accrued: self.loans,
            interest: list(self.interest),
            fee: list(self.fee),
            penalty: list(self.penalty),
        }
    }
}

/// Accrues one loan through `as_of` in a transaction of its own, under the
/// loan's lock: what was posted, in the loan's currency; `None` when the
/// loan is no longer disbursed or is already accrued through `as_of`.
async fn accrue_loan(
    db: &Db,
    loan_id: &str,
    as_of: chrono::NaiveDate,
) -> ApiResult<Option<(String, domain::Accrual)>> {
    let mut tx = db.pool.begin().await?;
    let l = lock_loan(&mut tx, loan_id).await?;
    if l.status != LoanStatus::Disbursed {
        tx.rollback().await?;
        return Ok(None);
    }
    let (insts, _) = load_schedule(&mut tx, loan_id).await?;
    let state = loan_state(&l, insts).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "loan {loan_id} is disbursed without a disbursement date"
        ))
    })?;
    if as_of <= state.accrued_through && as_of <= state.penalty_through {
        tx.rollback().await?;
        return Ok(None);
    }
    // As a repayment valued `as_of` accrues before it allocates.
    let acc = domain::accrue_to(&state, as_of);
    let after = state.with_accrual(&acc);
    for (what, part) in [
        ("PENALTY", acc.penalty),
        ("INTEREST", acc.interest),
        ("FEE", acc.fee),
    ] {
        if part.bank != 0 || part.partner != 0 {
            post_accrual(&mut tx, loan_id, &l.currency, what, part.bank, part.partner).await?;
        }
    }
    store_accrual(&mut tx, loan_id, &after, &acc).await?;
    tx.commit().await?;
    Ok(Some((l.currency, acc)))
}

/// Stores what accrual `acc` changed on the loan, `after` it: each
/// instalment's interest and fee accrued and the penalty accrued in its
/// overdue segment, the loan's running totals and the dates it is accrued
/// through (what a repayment stores of its accrual).
async fn store_accrual(
    conn: &mut AnyConnection,
    loan_id: &str,
    after: &LoanState,
    acc: &domain::Accrual,
) -> ApiResult<()> {
    let changed = || {
        ApiError::internal(anyhow::anyhow!(
            "loan {loan_id} changed under its lock during an accrual"
        ))
    };
    for (k, (s, (interest, fee))) in after.insts.iter().zip(&acc.instalments).enumerate() {
        let penalty = acc.penalties.get(k).copied().unwrap_or_default();
        if *interest == 0 && *fee == 0 && penalty == 0 {
            continue;
        }
        let r = sqlx::query(
            "UPDATE instalments SET interest_accrued = $1, fee_accrued = $2, penalty_segment_accrued = $3 \
             WHERE loan_id = $4 AND seq = $5",
        )
        .bind(s.interest_accrued)
        .bind(s.fee_accrued)
        .bind(s.penalty.accrued)
        .bind(loan_id)
        .bind(i64::from(s.inst.seq))
        .execute(&mut *conn)
        .await?;
        if r.rows_affected() != 1 {
            return Err(changed());
        }
    }
    let t = &after.accrued;
    let r = sqlx::query(
        "UPDATE loans SET interest_accrued = $1, partner_interest_accrued = $2, penalty_accrued = $3, \
         partner_penalty_accrued = $4, fee_accrued = $5, partner_fee_accrued = $6, accrued_through = $7, \
         penalty_through = $8, updated_at = $9 WHERE loan_id = $10 AND status = 'DISBURSED'",
    )
    .bind(t.interest)
    .bind(t.partner_interest)
    .bind(t.penalty)
    .bind(t.partner_penalty)
    .bind(t.fee)
    .bind(t.partner_fee)
    .bind(format_date(after.accrued_through))
    .bind(format_date(after.penalty_through))
    .bind(now_millis())
    .bind(loan_id)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() != 1 {
        return Err(changed());
    }
    Ok(())
}

impl Funding {
    /// AccrueInterest: accrues every disbursed loan through `as_of` (not
    /// after the business today: INVALID_ARGUMENT on `as_of`). Idempotent by
    /// request id; a run that fails stores nothing, and the same request id
    /// then runs again over the loans it had not finished.
    pub async fn accrue_interest(
        &self,
        request_id: String,
        hash: String,
        as_of: chrono::NaiveDate,
    ) -> ApiResult<pb::AccrueInterestResponse> {
        if as_of > self.business_today() {
            return Err(ApiError::field(
                "as_of",
                "must not be after today (the business date): interest accrues for days that have begun",
            ));
        }
        let this = self.clone();
        idempotency::run_steps(
            &self.db,
            "AccrueInterest".into(),
            request_id,
            hash,
            move || async move { this.accrue_through(as_of, None).await },
        )
        .await
    }

    /// Accrues every disbursed loan whose interest or penalty is accrued
    /// through a date before `as_of`, page by page in loan id order, each
    /// loan in a transaction of its own (in a task of its own: a transaction
    /// abandoned half-way could leave a pooled connection unusable), and
    /// sums what was posted. A loan that fails is logged and passed over; the
    /// run then ends with its error after the others (nothing of the failed
    /// loan is kept). `stop`: the run ends early (between two loans), with
    /// what it did, once shutdown begins.
    async fn accrue_through(
        &self,
        as_of: chrono::NaiveDate,
        stop: Option<&Stopping>,
    ) -> ApiResult<pb::AccrueInterestResponse> {
        let day = format_date(as_of);
        let mut posted = Posted::default();
        let mut failed: Option<ApiError> = None;
        let mut after = String::new();
        let sql = format!(
            "SELECT loan_id FROM loans WHERE status = 'DISBURSED' AND loan_id > $1 AND disbursed_on < $2 \
             AND (accrued_through < $2 OR penalty_through < $2) ORDER BY loan_id LIMIT {PAGE}"
        );
        'pages: loop {
            let page: Vec<(String,)> = sqlx::query_as(&sql)
                .bind(&after)
                .bind(&day)
                .fetch_all(&self.db.pool)
                .await?;
            let Some((last,)) = page.last() else { break };
            after = last.clone();
            for (loan_id,) in &page {
                if stop.is_some_and(Stopping::is_stopping) {
                    break 'pages;
                }
                let (db, id) = (self.db.clone(), loan_id.clone());
                let done = tokio::spawn(async move { accrue_loan(&db, &id, as_of).await })
                    .await
                    .map_err(|e| ApiError::internal(anyhow::anyhow!("accrual task failed: {e}")))
                    .and_then(|r| r);
                match done {
                    Ok(Some((currency, acc))) => posted.add(&currency, &acc)?,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(loan_id = %loan_id, as_of = %day, error = %e, "accruing a loan failed");
                        metrics::counter!("colend_accrual_failures_total").increment(1);
                        failed.get_or_insert(e);
                    }
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(posted.response(as_of)),
        }
    }

    /// The daily run: while `daily_accrual` is on, checks the business date
    /// every `sweep_every` and, on a date it has not run for yet (and at
    /// start), accrues every loan through `accrual_lag_days` before today.
    /// A run that fails is tried again at the next check. Replicas each run
    /// it; the loan locks make each loan's accrual happen once.
    pub fn spawn_daily_accrual(&self, workers: &Workers) {
        if !self.settings.daily_accrual {
            return;
        }
        let this = self.clone();
        workers.spawn("funding-daily-accrual", |mut stopping| async move {
            // The business date last run for, in this process.
            let mut done: Option<chrono::NaiveDate> = None;
            loop {
                let today = this.business_today();
                let lag = chrono::Days::new(u64::from(this.settings.accrual_lag_days));
                if done != Some(today)
                    && let Some(as_of) = today.checked_sub_days(lag)
                {
                    match this.accrue_through(as_of, Some(&stopping)).await {
                        Ok(r) => {
                            if !stopping.is_stopping() {
                                done = Some(today);
                            }
                            if r.loans_accrued > 0 {
                                tracing::info!(
                                    as_of = %r.as_of,
                                    loans = r.loans_accrued,
                                    "daily accrual posted"
                                );
                            }
                        }
                        Err(e) => {
                            tracing::warn!(as_of = %format_date(as_of), error = %e, "daily accrual failed")
                        }
                    }
                }
                if stopping.sleep(this.settings.sweep_every).await {
                    break;
                }
            }
        });
    }
}
