//! The bank's disbursement: the loan's schedule and each funder's ledger.
use super::*;

impl Funding {
    /// Books the bank's disbursement: schedule and ledger.
    pub async fn book_disbursement(
        &self,
        request_id: String,
        hash: String,
        loan_id: String,
        value_date: chrono::NaiveDate,
        bank_ref: String,
    ) -> ApiResult<pb::Loan> {
        // The business day and the clock the value date is judged by.
        let (today, now) = (self.business_today(), self.now());
        let (zone, forward_days) = (
            self.settings.time_zone,
            self.settings.disbursement_forward_days,
        );
        let loan = idempotency::run(&self.db, "BookDisbursement".into(), request_id.clone(), hash, move |tx| {
            Box::pin(async move {
                // Under the loan's lock: a release, an expiry or another
                // disbursement of this loan runs before or after, never beside.
                let mut l = lock_loan(tx, &loan_id).await?;
                if l.status != LoanStatus::Reserved {
                    if l.disbursement_ref == bank_ref && !bank_ref.is_empty() {
                        // The same bank transaction again, under another request id.
                        if l.disbursed_on != format_date(value_date) {
                            return Err(ApiError::AlreadyExists(format!(
                                "bank transaction {bank_ref} was booked as this loan's disbursement on {}",
                                l.disbursed_on
                            )));
                        }
                        let (sched, _) = load_schedule(tx, &loan_id).await?;
                        let reps = load_repayments(tx, &loan_id).await?;
                        return Ok(loan_pb(&l, &sched, reps));
                    }
                    return Err(ApiError::InvalidState(format!(
                        "loan is {}, only a reserved loan can be disbursed",
                        l.status
                    )));
                }
                if l.expires_at < now {
                    // Past its expiry the reservation holds nothing the bank
                    // may still draw on: the sweeper is voiding it.
                    return Err(ApiError::InvalidState(format!(
                        "the reservation expired at {}; reserve again",
                        colend_platform::time::datetime(l.expires_at).to_rfc3339()
                    )));
                }
                let closed: Option<(String,)> =
                    sqlx::query_as("SELECT reason FROM closed_applications WHERE application_id = $1")
                        .bind(&l.application_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some((why,)) = closed {
                    return Err(ApiError::InvalidState(format!(
                        "application {} was closed to funding ({why})",
                        l.application_id
                    )));
                }
                value_date_allowed(&l, value_date, today, zone, forward_days)?;
                let sched = domain::schedule(
                    l.principal,
                    l.term_months as i32,
                    Pricing { rate_bps: l.annual_rate_bps, fee_bps: l.fee_bps },
                    l.method,
                    value_date,
                    l.day_count,
                );
                insert_instalments(tx, &loan_id, &sched).await?;
                l.status = LoanStatus::Disbursed;
                l.disbursed_on = format_date(value_date);
                l.disbursement_ref = bank_ref;
                l.penalty_through = l.disbursed_on.clone();
                sqlx::query(
                    "UPDATE loans SET status = 'DISBURSED', disbursed_on = $1, disbursement_ref = $2, penalty_through = $1, \
                     updated_at = $3 WHERE loan_id = $4",
                )
                .bind(&l.disbursed_on)
                .bind(&l.disbursement_ref)
                .bind(now_millis())
                .bind(&loan_id)
                .execute(&mut *tx)
                .await?;
                post(
                    tx,
                    &loan_id,
                    &l.currency,
                    &[
                        ("BANK", "LOANS_RECEIVABLE", l.bank_amount, 0),
                        ("BANK", "CASH", 0, l.bank_amount),
                        ("PARTNER", "LOANS_RECEIVABLE", l.partner_amount, 0),
                        ("PARTNER", "CASH", 0, l.partner_amount),
                    ],
                )
                .await?;
                let event = loan_event(
                    &l,
                    format!("disbursed:{loan_id}"),
                    acq::ApplicationStatus::Disbursed,
                    format!("disbursed on {}", l.disbursed_on),
                    &[],
                );
                enqueue(tx, &event).await?;
                let states: Vec<InstalmentState> = sched
                    .into_iter()
                    .map(InstalmentState::new)
                    .collect();
                Ok(loan_pb(&l, &states, Vec::new()))
            })
        })
        .await?;
        // The disbursement and its loan event are committed; the relay has not run.
        colend_platform::fault::crash_point("funding.outbox.after_insert");
        self.outbox_ready.notify_one();
        let currency = loan
            .principal
            .as_ref()
            .map(|m| m.currency_code.clone())
            .unwrap_or_default();
        for (funder, amount) in [
            ("bank", &loan.bank_amount),
            ("partner", &loan.partner_amount),
        ] {
            metrics::counter!("colend_funded_minor_total", "funder" => funder, "currency" => currency.clone())
                .increment(amount.as_ref().map(|m| m.minor_units.max(0) as u64).unwrap_or(0));
        }
        Ok(loan)
    }
}

/// A disbursement's value date lies from the business day the loan was
/// reserved through the business day its reservation expires, and not after
/// today plus the forward cut-off; anything else is INVALID_ARGUMENT on
/// `value_date`, saying the window.
fn value_date_allowed(
    l: &LoanRow,
    value_date: chrono::NaiveDate,
    today: chrono::NaiveDate,
    zone: Tz,
    forward_days: u32,
) -> ApiResult<()> {
    let reserved_on = parse_date(&l.reserved_on).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "loan {}: stored reserved_on {:?} does not decode",
            l.loan_id,
            l.reserved_on
        ))
    })?;
    let expires_on = business_date(zone, l.expires_at);
    let window = domain::ValueDateWindow::of(reserved_on, expires_on, today, forward_days);
    if window.contains(value_date) {
        return Ok(());
    }
    let why = if window.from > window.to {
        format!(
            "no value date is left: the loan was reserved on {reserved_on} and today is {today}"
        )
    } else {
        format!(
            "must be from {} to {}: not before the day the loan was reserved ({reserved_on}), \
             not after its reservation expires ({expires_on}), and at most {forward_days} days \
             after today ({today}, {zone})",
            window.from, window.to
        )
    };
    Err(ApiError::field(
        "value_date",
        &format!(
            "{} is outside the disbursement window: {why}",
            format_date(value_date)
        ),
    ))
}
