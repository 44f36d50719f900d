//! Repayments: accrual to the value date, the waterfall, each funder's part and ledger.
use super::*;

impl Funding {
    /// Books a repayment: accrues the loan to the value date (penalty
    /// interest on overdue amounts; interest and fees day by day, posted to
    /// each funder's income), allocates the amount through the loan's
    /// waterfall (overdue instalments in full, the current period's interest
    /// and fee accrued so far; a surplus prepays principal, which stops
    /// bearing interest that day, and the schedule is re-cut; beyond the
    /// payoff an overpayment settles the loan and is owed back), splits every
    /// component between the funders and posts each funder's ledger.
    ///
    /// A value date after the business today or before the disbursement is
    /// INVALID_ARGUMENT; before the last repayment booked on the loan, or
    /// before the date its interest, fees or penalty are accrued through, it
    /// is BACK_VALUED (accrual never runs backwards). An amount above the
    /// payoff on the value date plus the overpayment tolerance is
    /// INVALID_ARGUMENT on `amount`, stating the payoff.
    pub async fn book_repayment(
        &self,
        request_id: String,
        hash: String,
        loan_id: String,
        amount: Money,
        value_date: chrono::NaiveDate,
        bank_ref: String,
    ) -> ApiResult<pb::BookRepaymentResponse> {
        if value_date > self.business_today() {
            return Err(ApiError::field(
                "value_date",
                "must not be after today (the business date): repayments are booked once received",
            ));
        }
        let tolerance_bps = self.settings.overpayment_tolerance_bps;
        let resp = idempotency::run(&self.db, "BookRepayment".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                // Under the loan's lock: concurrent repayments of one loan
                // are booked one after the other, each on the totals the
                // previous one left.
                let mut l = lock_loan(tx, &loan_id).await?;
                let booked: Option<(String,)> =
                    sqlx::query_as("SELECT body FROM repayments WHERE loan_id = $1 AND bank_ref = $2")
                        .bind(&loan_id)
                        .bind(&bank_ref)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some((body,)) = booked {
                    // The same bank transaction again, under another request id.
                    let bytes = hex::decode(body).map_err(ApiError::internal)?;
                    let rep = pb::Repayment::decode(bytes.as_slice()).map_err(ApiError::internal)?;
                    if rep.amount.as_ref() != Some(&amount) || rep.value_date != format_date(value_date) {
                        return Err(ApiError::AlreadyExists(format!(
                            "bank transaction {bank_ref} was already booked on this loan with another amount or value date"
                        )));
                    }
                    let (sched, _) = load_schedule(tx, &loan_id).await?;
                    let all = load_repayments(tx, &loan_id).await?;
                    return Ok(pb::BookRepaymentResponse { repayment: Some(rep), loan: Some(loan_pb(&l, &sched, all)) });
                }
                if l.status != LoanStatus::Disbursed {
                    return Err(ApiError::InvalidState(format!(
                        "loan is {}, repayments need a disbursed loan",
                        l.status
                    )));
                }
                if amount.currency_code != l.currency {
                    return Err(ApiError::field("amount.currency_code", "must be the loan's currency"));
                }
                if parse_date(&l.disbursed_on).is_some_and(|d| value_date < d) {
                    return Err(ApiError::field("value_date", "must not be before the disbursement"));
                }
                let (insts, _) = load_schedule(tx, &loan_id).await?;
                let state = loan_state(&l, insts).ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("loan {loan_id} is disbursed without a disbursement date"))
                })?;
                // Accrual and penalty run forward only: a repayment valued
                // before one already booked, or before what is accrued (an
                // end-of-day accrual included), would move them back.
                let (last,): (Option<String>,) =
                    sqlx::query_as("SELECT MAX(value_date) FROM repayments WHERE loan_id = $1")
                        .bind(&loan_id)
                        .fetch_one(&mut *tx)
                        .await?;
                let earliest = domain::earliest_value_date(&state, last.as_deref().and_then(parse_date));
                if value_date < earliest {
                    return Err(ApiError::BackValued(format!(
                        "value date {} is before {earliest}: this loan's last repayment or its accrual of \
                         interest, fees and penalty already reaches that date, and accruals are never re-run; \
                         the bank books it with a value date on or after {earliest}",
                        format_date(value_date)
                    )));
                }
                // Accrue to the value date, allocate by the waterfall, re-cut
                // the schedule after a prepayment: all in the pure domain.
                let booking = domain::repay_within(&state, amount.minor_units, value_date, tolerance_bps)
                    .map_err(|e| match e {
                        domain::WaterfallError::AbovePayoff { payoff, most } => {
                            let show = |v: i64| match colend_core::Currency::parse(&l.currency) {
                                Ok(c) => format!("{} {c}", c.format(v)),
                                Err(_) => format!("{v} minor units"),
                            };
                            ApiError::field(
                                "amount",
                                &format!(
                                    "must be at most {}: the payoff on {} is {}, and a repayment may exceed it \
                                     by at most {tolerance_bps} bps of it (owed back to the borrower)",
                                    show(most),
                                    format_date(value_date),
                                    show(payoff)
                                ),
                            )
                        }
                        e => ApiError::field("amount.minor_units", &e.to_string()),
                    })?;
                let (acc, a, after) = (&booking.accrual, &booking.allocation, &booking.after);
                let c = l.currency.clone();
                // What accrued since the last accrual, for each funder: penalty
                // on overdue amounts, interest and fees day by day.
                for (what, part) in [("PENALTY", acc.penalty), ("INTEREST", acc.interest), ("FEE", acc.fee)] {
                    if part.bank != 0 || part.partner != 0 {
                        post_accrual(tx, &loan_id, &c, what, part.bank, part.partner).await?;
                    }
                }
                store_schedule(tx, &loan_id, &after.insts).await?;
                let status = if after.is_settled() { LoanStatus::Settled } else { LoanStatus::Disbursed };
                l.accrued = after.accrued.clone();
                l.penalty_through = format_date(after.penalty_through);
                l.accrued_through = format_date(after.accrued_through);
                l.overpaid = after.overpaid;
                sqlx::query(
                    "UPDATE loans SET principal_paid = $1, interest_paid = $2, penalty_paid = $3, partner_principal_paid = $4, \
                     partner_interest_paid = $5, partner_penalty_paid = $6, status = $7, updated_at = $8, \
                     interest_accrued = $9, partner_interest_accrued = $10, penalty_accrued = $11, \
                     partner_penalty_accrued = $12, penalty_through = $13, fee_paid = $15, partner_fee_paid = $16, \
                     fee_accrued = $17, partner_fee_accrued = $18, accrued_through = $19, overpayment = $20 \
                     WHERE loan_id = $14",
                )
                .bind(a.after.principal)
                .bind(a.after.interest)
                .bind(a.after.penalty)
                .bind(a.after.partner_principal)
                .bind(a.after.partner_interest)
                .bind(a.after.partner_penalty)
                .bind(status.name())
                .bind(now_millis())
                .bind(l.accrued.interest)
                .bind(l.accrued.partner_interest)
                .bind(l.accrued.penalty)
                .bind(l.accrued.partner_penalty)
                .bind(&l.penalty_through)
                .bind(&loan_id)
                .bind(a.after.fee)
                .bind(a.after.partner_fee)
                .bind(l.accrued.fee)
                .bind(l.accrued.partner_fee)
                .bind(&l.accrued_through)
                .bind(l.overpaid)
                .execute(&mut *tx)
                .await?;
                // Principal repaid frees the partner's total quota (revolving) and the bank's C2/C3 room.
                sqlx::query("UPDATE partner_usage SET used = used - $1 WHERE partner_id = $2")
                    .bind(a.partner.principal)
                    .bind(&l.partner_id)
                    .execute(&mut *tx)
                    .await?;
                release_bank_exposure(tx, &l.partner_id, a.bank.principal).await?;
                post(tx, &loan_id, &c, &repayment_lines(a)).await?;
                let mut allocations = Vec::new();
                for (funder, parts) in [(Funder::Bank, a.bank), (Funder::Partner, a.partner)] {
                    for (component, v) in [
                        (pb::Component::Penalty, parts.penalty),
                        (pb::Component::Fee, parts.fee),
                        (pb::Component::Interest, parts.interest),
                        (pb::Component::Principal, parts.principal),
                    ] {
                        allocations.push(pb::Allocation { funder: funder as i32, component: component as i32, amount: money(v, &c) });
                    }
                    if a.overpaid > 0 {
                        allocations.push(pb::Allocation {
                            funder: funder as i32,
                            component: pb::Component::Overpayment as i32,
                            amount: money(parts.overpayment, &c),
                        });
                    }
                }
                let repayment = pb::Repayment {
                    repayment_id: format!("rep_{}", uuid::Uuid::now_v7().simple()),
                    loan_id: loan_id.clone(),
                    amount: Some(amount.clone()),
                    value_date: format_date(value_date),
                    bank_transaction_ref: bank_ref.clone(),
                    allocations,
                };
                sqlx::query(
                    "INSERT INTO repayments (repayment_id, loan_id, amount, value_date, bank_ref, body, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&repayment.repayment_id)
                .bind(&loan_id)
                .bind(amount.minor_units)
                .bind(&repayment.value_date)
                .bind(&bank_ref)
                .bind(hex::encode(repayment.encode_to_vec()))
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
                l.status = status;
                l.paid = a.after.clone();
                let event = loan_event(
                    &l,
                    format!("repaid:{}", repayment.repayment_id),
                    repayment_status(&l),
                    format!(
                        "repayment of {} booked on {}",
                        colend_core::money::format_minor(amount.minor_units),
                        repayment.value_date
                    ),
                    &[],
                );
                enqueue(tx, &event).await?;
                // Includes the repayment just stored.
                let all = load_repayments(tx, &loan_id).await?;
                let (current, _) = load_schedule(tx, &loan_id).await?;
                Ok(pb::BookRepaymentResponse { repayment: Some(repayment), loan: Some(loan_pb(&l, &current, all)) })
            })
        })
        .await?;
        self.outbox_ready.notify_one();
        Ok(resp)
    }
}
