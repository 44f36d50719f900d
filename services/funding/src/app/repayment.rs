//! Repayments: accrual, the waterfall, each funder's part and ledger.
use super::*;

impl Funding {
    /// Books a repayment: accrues penalty interest on overdue amounts and the
    /// interest of the instalments now payable, allocates the amount through
    /// the loan's waterfall (a surplus prepays principal and the rest of the
    /// schedule is recomputed), splits every component between the funders
    /// and posts each funder's ledger.
    pub async fn book_repayment(
        &self,
        request_id: String,
        hash: String,
        loan_id: String,
        amount: Money,
        value_date: chrono::NaiveDate,
        bank_ref: String,
    ) -> ApiResult<pb::BookRepaymentResponse> {
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
                let (insts, accrued_flags) = load_schedule(tx, &loan_id).await?;
                let split = Split { bank: l.bank_amount, partner: l.partner_amount };
                let c = l.currency.clone();
                // Penalty on overdue amounts since the last accrual, then the
                // interest and fee of every instalment payable now.
                let acc = domain::accrue(
                    &l.accrued,
                    &insts,
                    &accrued_flags,
                    parse_date(&l.penalty_through),
                    value_date,
                    AccrualTerms {
                        split,
                        terms: &l.terms,
                        penalty_rate_bps: l.penalty_rate_bps,
                        day_count: l.day_count,
                    },
                );
                for (what, part) in [("PENALTY", acc.penalty), ("INTEREST", acc.interest), ("FEE", acc.fee)] {
                    if part.total() > 0 {
                        post_accrual(tx, &loan_id, &c, what, part.bank, part.partner).await?;
                    }
                }
                l.accrued = acc.after;
                if let Some(d) = acc.penalty_through {
                    l.penalty_through = format_date(d);
                }
                let payable = domain::payable(&insts, value_date);
                let newly = acc.newly;
                for seq in &newly {
                    sqlx::query("UPDATE instalments SET accrued = 1 WHERE loan_id = $1 AND seq = $2")
                        .bind(&loan_id)
                        .bind(*seq as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                let penalty_due = l.accrued.penalty - l.paid.penalty;
                let a = domain::allocate(
                    amount.minor_units,
                    value_date,
                    &insts,
                    (split, &l.terms),
                    &l.paid,
                    penalty_due,
                    l.waterfall,
                )
                .map_err(|e| ApiError::field("amount.minor_units", &e.to_string()))?;
                let price = Pricing { rate_bps: l.annual_rate_bps, fee_bps: l.fee_bps };
                let next = domain::apply(&insts, &a, value_date, price, l.method, l.day_count);
                for pay in &a.instalments {
                    sqlx::query(
                        "UPDATE instalments SET principal_paid = principal_paid + $1, interest_paid = interest_paid + $2, \
                         fee_paid = fee_paid + $3 WHERE loan_id = $4 AND seq = $5",
                    )
                    .bind(pay.principal)
                    .bind(pay.interest)
                    .bind(pay.fee)
                    .bind(&loan_id)
                    .bind(pay.seq as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                if a.prepaid > 0 {
                    // The instalments not yet payable are recomputed on the lower balance.
                    let later: Vec<Instalment> = next[payable.min(next.len())..].iter().map(|s| s.inst.clone()).collect();
                    sqlx::query("DELETE FROM instalments WHERE loan_id = $1 AND seq > $2")
                        .bind(&loan_id)
                        .bind(insts.get(payable.saturating_sub(1)).map(|s| s.inst.seq as i64).unwrap_or(0))
                        .execute(&mut *tx)
                        .await?;
                    insert_instalments(tx, &loan_id, &later).await?;
                }
                let settled = a.after.principal == l.principal
                    && next.iter().all(|s| s.unpaid() == 0)
                    && a.after.penalty == l.accrued.penalty;
                let status = if settled { LoanStatus::Settled } else { LoanStatus::Disbursed };
                sqlx::query(
                    "UPDATE loans SET principal_paid = $1, interest_paid = $2, penalty_paid = $3, partner_principal_paid = $4, \
                     partner_interest_paid = $5, partner_penalty_paid = $6, status = $7, updated_at = $8, \
                     interest_accrued = $9, partner_interest_accrued = $10, penalty_accrued = $11, \
                     partner_penalty_accrued = $12, penalty_through = $13, fee_paid = $15, partner_fee_paid = $16, \
                     fee_accrued = $17, partner_fee_accrued = $18 WHERE loan_id = $14",
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
                .execute(&mut *tx)
                .await?;
                // Principal repaid frees the partner's total quota (revolving) and the bank's C2/C3 room.
                sqlx::query("UPDATE partner_usage SET used = used - $1 WHERE partner_id = $2")
                    .bind(a.partner.principal)
                    .bind(&l.partner_id)
                    .execute(&mut *tx)
                    .await?;
                release_bank_exposure(tx, &l.partner_id, a.bank.principal).await?;
                post(
                    tx,
                    &loan_id,
                    &c,
                    &[
                        ("BANK", "CASH", a.bank.total(), 0),
                        ("BANK", "LOANS_RECEIVABLE", 0, a.bank.principal),
                        ("BANK", "INTEREST_RECEIVABLE", 0, a.bank.interest),
                        ("BANK", "FEE_RECEIVABLE", 0, a.bank.fee),
                        ("BANK", "PENALTY_RECEIVABLE", 0, a.bank.penalty),
                        ("PARTNER", "CASH", a.partner.total(), 0),
                        ("PARTNER", "LOANS_RECEIVABLE", 0, a.partner.principal),
                        ("PARTNER", "INTEREST_RECEIVABLE", 0, a.partner.interest),
                        ("PARTNER", "FEE_RECEIVABLE", 0, a.partner.fee),
                        ("PARTNER", "PENALTY_RECEIVABLE", 0, a.partner.penalty),
                    ],
                )
                .await?;
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
                l.paid = a.after;
                let event = loan_event(
                    &l,
                    format!("repaid:{}", repayment.repayment_id),
                    acq::ApplicationStatus::Repaying,
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
