//! Loans as stored: the row, its columns, the row lock, schedules and repayments.
use super::*;
use sqlx::FromRow;

pub(super) const LOAN_COLS: &str = "loan_id, application_id, partner_id, status, currency, principal, bank_amount, \
    partner_amount, agreement_version, partner_share_bps, bank_rate_bps, partner_rate_bps, annual_rate_bps, \
    term_months, method, reserved_on, disbursed_on, disbursement_ref, principal_paid, interest_paid, penalty_paid, \
    partner_principal_paid, partner_interest_paid, partner_penalty_paid, borrower_key, expires_at, day_count, \
    penalty_rate_bps, waterfall, interest_accrued, partner_interest_accrued, penalty_accrued, \
    partner_penalty_accrued, penalty_through, fee_bps, fee_partner_bps, fee_paid, partner_fee_paid, fee_accrued, \
    partner_fee_accrued, interest_split, residual_party, allow_negative_residual, accrued_through, overpayment";

/// A loan as stored, decoded: every stored enum is checked.
#[derive(Clone, Debug)]
pub(super) struct LoanRow {
    pub loan_id: String,
    pub application_id: String,
    pub partner_id: String,
    pub status: LoanStatus,
    pub currency: String,
    pub principal: i64,
    pub bank_amount: i64,
    pub partner_amount: i64,
    pub agreement_version: i64,
    pub terms: Terms,
    pub annual_rate_bps: i64,
    pub term_months: i64,
    pub method: Method,
    pub reserved_on: String,
    pub disbursed_on: String,
    pub disbursement_ref: String,
    pub paid: Paid,
    pub borrower_key: String,
    pub expires_at: i64,
    pub day_count: DayCount,
    pub penalty_rate_bps: i64,
    pub waterfall: Waterfall,
    pub accrued: Accrued,
    pub penalty_through: String,
    /// Fees on top of interest, basis points a year.
    pub fee_bps: i64,
    /// Interest and fees are accrued through this date ("" before the
    /// first accrual: the disbursement date).
    pub accrued_through: String,
    /// Paid beyond the payoff, owed back to the borrower.
    pub overpaid: i64,
}

/// The `loans` row as the database has it, read by column name.
#[derive(sqlx::FromRow)]
pub(super) struct LoanRecord {
    loan_id: String,
    application_id: String,
    partner_id: String,
    status: String,
    currency: String,
    principal: i64,
    bank_amount: i64,
    partner_amount: i64,
    agreement_version: i64,
    partner_share_bps: i64,
    bank_rate_bps: i64,
    partner_rate_bps: i64,
    annual_rate_bps: i64,
    term_months: i64,
    method: i64,
    reserved_on: String,
    disbursed_on: String,
    disbursement_ref: String,
    principal_paid: i64,
    interest_paid: i64,
    penalty_paid: i64,
    partner_principal_paid: i64,
    partner_interest_paid: i64,
    partner_penalty_paid: i64,
    borrower_key: String,
    expires_at: i64,
    day_count: String,
    penalty_rate_bps: i64,
    waterfall: String,
    interest_accrued: i64,
    partner_interest_accrued: i64,
    penalty_accrued: i64,
    partner_penalty_accrued: i64,
    penalty_through: String,
    fee_bps: i64,
    fee_partner_bps: i64,
    fee_paid: i64,
    partner_fee_paid: i64,
    fee_accrued: i64,
    partner_fee_accrued: i64,
    interest_split: String,
    residual_party: String,
    allow_negative_residual: i64,
    accrued_through: String,
    overpayment: i64,
}

/// A stored value that does not decode: the row is corrupt or from a
/// version that wrote something this one does not know. An error, never a
/// default.
fn corrupt(loan_id: &str, column: &str, value: impl std::fmt::Debug) -> ApiError {
    ApiError::internal(anyhow::anyhow!(
        "loan {loan_id}: stored {column} {value:?} does not decode"
    ))
}

impl TryFrom<LoanRecord> for LoanRow {
    type Error = ApiError;

    fn try_from(r: LoanRecord) -> ApiResult<LoanRow> {
        let id = r.loan_id.as_str();
        Ok(LoanRow {
            status: LoanStatus::parse(&r.status).ok_or_else(|| corrupt(id, "status", &r.status))?,
            method: method_of(r.method).ok_or_else(|| corrupt(id, "method", r.method))?,
            day_count: DayCount::parse(&r.day_count)
                .ok_or_else(|| corrupt(id, "day_count", &r.day_count))?,
            waterfall: Waterfall::parse(&r.waterfall)
                .ok_or_else(|| corrupt(id, "waterfall", &r.waterfall))?,
            terms: Terms {
                partner_share_bps: r.partner_share_bps,
                bank_rate_bps: r.bank_rate_bps,
                partner_rate_bps: r.partner_rate_bps,
                fee_partner_bps: r.fee_partner_bps,
                interest_split: InterestSplit::parse(&r.interest_split)
                    .ok_or_else(|| corrupt(id, "interest_split", &r.interest_split))?,
                residual_party: Party::parse(&r.residual_party)
                    .ok_or_else(|| corrupt(id, "residual_party", &r.residual_party))?,
                allow_negative_residual: match r.allow_negative_residual {
                    0 => false,
                    1 => true,
                    other => return Err(corrupt(id, "allow_negative_residual", other)),
                },
            },
            paid: Paid {
                principal: r.principal_paid,
                interest: r.interest_paid,
                penalty: r.penalty_paid,
                partner_principal: r.partner_principal_paid,
                partner_interest: r.partner_interest_paid,
                partner_penalty: r.partner_penalty_paid,
                fee: r.fee_paid,
                partner_fee: r.partner_fee_paid,
            },
            accrued: Accrued {
                interest: r.interest_accrued,
                partner_interest: r.partner_interest_accrued,
                penalty: r.penalty_accrued,
                partner_penalty: r.partner_penalty_accrued,
                fee: r.fee_accrued,
                partner_fee: r.partner_fee_accrued,
            },
            loan_id: r.loan_id,
            application_id: r.application_id,
            partner_id: r.partner_id,
            currency: r.currency,
            principal: r.principal,
            bank_amount: r.bank_amount,
            partner_amount: r.partner_amount,
            agreement_version: r.agreement_version,
            annual_rate_bps: r.annual_rate_bps,
            term_months: r.term_months,
            reserved_on: r.reserved_on,
            disbursed_on: r.disbursed_on,
            disbursement_ref: r.disbursement_ref,
            borrower_key: r.borrower_key,
            expires_at: r.expires_at,
            penalty_rate_bps: r.penalty_rate_bps,
            penalty_through: r.penalty_through,
            fee_bps: r.fee_bps,
            accrued_through: r.accrued_through,
            overpaid: r.overpayment,
        })
    }
}

/// Decodes a `loans` row read with [`LOAN_COLS`].
pub(super) fn loan_row(r: &AnyRow) -> ApiResult<LoanRow> {
    LoanRecord::from_row(r)
        .map_err(ApiError::internal)?
        .try_into()
}

/// Reads the loan and locks its row until the transaction ends: every path
/// that moves a loan's money or status (disbursement, void, expiry, release,
/// repayment) takes this lock first and then checks the status it expects,
/// so two of them on one loan run one after the other and the second sees
/// what the first did. PostgreSQL: `SELECT … FOR UPDATE`; SQLite has a
/// single writer, which serialises them already.
pub(super) async fn lock_loan(conn: &mut AnyConnection, loan_id: &str) -> ApiResult<LoanRow> {
    let lock = Backend::of(conn).for_update();
    let row = sqlx::query(&format!(
        "SELECT {LOAN_COLS} FROM loans WHERE loan_id = $1{lock}"
    ))
    .bind(loan_id)
    .fetch_optional(&mut *conn)
    .await?;
    loan_row(&row.ok_or_else(|| ApiError::NotFound("loan".into()))?)
}

/// The loan's instalments with what accrued and was paid on each, and
/// whether each one was accrued whole under the rules before daily accrual.
pub(super) async fn load_schedule(
    conn: &mut AnyConnection,
    loan_id: &str,
) -> ApiResult<(Vec<InstalmentState>, Vec<bool>)> {
    let rows: Vec<InstalmentRecord> = sqlx::query_as(
        "SELECT seq, due_date, principal, interest, principal_paid, interest_paid, accrued, fee, fee_paid, \
         accrual_from, balance, interest_before, fee_before, bank_own_before, partner_own_before, \
         interest_accrued, fee_accrued, penalty_segment_from, penalty_segment_accrued \
         FROM instalments WHERE loan_id = $1 ORDER BY seq",
    )
    .bind(loan_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut s = Vec::with_capacity(rows.len());
    for r in rows {
        let bad = |column: &str, value: &dyn std::fmt::Display| {
            ApiError::internal(anyhow::anyhow!(
                "loan {loan_id} instalment {}: stored {column} {value} does not decode",
                r.seq
            ))
        };
        s.push(InstalmentState {
            inst: Instalment {
                seq: i32::try_from(r.seq).map_err(|_| bad("seq", &r.seq))?,
                due: parse_date(&r.due_date).ok_or_else(|| bad("due_date", &r.due_date))?,
                principal: r.principal,
                interest: r.interest,
                fee: r.fee,
            },
            principal_paid: r.principal_paid,
            interest_paid: r.interest_paid,
            fee_paid: r.fee_paid,
            interest_accrued: r.interest_accrued,
            fee_accrued: r.fee_accrued,
            segment: domain::Segment {
                from: match r.accrual_from.as_str() {
                    "" => None,
                    d => Some(parse_date(d).ok_or_else(|| bad("accrual_from", &d))?),
                },
                balance: Some(r.balance),
                interest_before: r.interest_before,
                fee_before: r.fee_before,
                bank_own_before: r.bank_own_before,
                partner_own_before: r.partner_own_before,
            },
            penalty: domain::PenaltySegment {
                from: match r.penalty_segment_from.as_str() {
                    "" => None,
                    d => Some(parse_date(d).ok_or_else(|| bad("penalty_segment_from", &d))?),
                },
                accrued: r.penalty_segment_accrued,
            },
            accrued_in_full: match r.accrued {
                0 => false,
                1 => true,
                other => return Err(bad("accrued", &other)),
            },
        });
    }
    let whole = s.iter().map(|x| x.accrued_in_full).collect();
    Ok((s, whole))
}

/// An `instalments` row, read by column name.
#[derive(sqlx::FromRow)]
struct InstalmentRecord {
    seq: i64,
    due_date: String,
    principal: i64,
    interest: i64,
    principal_paid: i64,
    interest_paid: i64,
    accrued: i64,
    fee: i64,
    fee_paid: i64,
    accrual_from: String,
    balance: i64,
    interest_before: i64,
    fee_before: i64,
    bank_own_before: i64,
    partner_own_before: i64,
    interest_accrued: i64,
    fee_accrued: i64,
    penalty_segment_from: String,
    penalty_segment_accrued: i64,
}

/// The loan as servicing sees it, once disbursed (`None` before).
pub(super) fn loan_state(l: &LoanRow, insts: Vec<InstalmentState>) -> Option<LoanState> {
    let disbursed_on = parse_date(&l.disbursed_on)?;
    let through = |s: &str| {
        if s.is_empty() {
            Some(disbursed_on)
        } else {
            parse_date(s)
        }
    };
    Some(LoanState {
        split: Split {
            bank: l.bank_amount,
            partner: l.partner_amount,
        },
        terms: l.terms.clone(),
        price: Pricing {
            rate_bps: l.annual_rate_bps,
            fee_bps: l.fee_bps,
        },
        method: l.method,
        day_count: l.day_count,
        penalty_rate_bps: l.penalty_rate_bps,
        waterfall: l.waterfall,
        disbursed_on,
        insts,
        accrued: l.accrued.clone(),
        // Empty before the first accrual; anything else must be a date (a
        // corrupt one is an error, never the disbursement date).
        accrued_through: through(&l.accrued_through)?,
        penalty_through: through(&l.penalty_through)?,
        paid: l.paid.clone(),
        overpaid: l.overpaid,
    })
}

pub(super) async fn load_repayments(
    conn: &mut AnyConnection,
    loan_id: &str,
) -> ApiResult<Vec<pb::Repayment>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT body FROM repayments WHERE loan_id = $1 ORDER BY created_at, repayment_id",
    )
    .bind(loan_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(b,)| {
            let bytes = hex::decode(b).map_err(ApiError::internal)?;
            pb::Repayment::decode(bytes.as_slice()).map_err(ApiError::internal)
        })
        .collect()
}

/// Stores a new schedule (nothing accrued or paid).
pub(super) async fn insert_instalments(
    conn: &mut AnyConnection,
    loan_id: &str,
    sched: &[Instalment],
) -> ApiResult<()> {
    let mut balance: i64 = sched.iter().map(|i| i.principal).sum();
    let mut states = Vec::with_capacity(sched.len());
    for i in sched {
        let mut s = InstalmentState::new(i.clone());
        s.segment.balance = Some(balance);
        balance -= i.principal;
        states.push(s);
    }
    insert_states(conn, loan_id, &states).await
}

/// Replaces the loan's instalments with `insts` (after a repayment).
pub(super) async fn store_schedule(
    conn: &mut AnyConnection,
    loan_id: &str,
    insts: &[InstalmentState],
) -> ApiResult<()> {
    sqlx::query("DELETE FROM instalments WHERE loan_id = $1")
        .bind(loan_id)
        .execute(&mut *conn)
        .await?;
    insert_states(conn, loan_id, insts).await
}

async fn insert_states(
    conn: &mut AnyConnection,
    loan_id: &str,
    insts: &[InstalmentState],
) -> ApiResult<()> {
    for s in insts {
        let i = &s.inst;
        let balance = match s.segment.balance {
            Some(b) => b,
            None => {
                return Err(ApiError::internal(anyhow::anyhow!(
                    "loan {loan_id} instalment {}: no segment balance to store",
                    i.seq
                )));
            }
        };
        sqlx::query(
            "INSERT INTO instalments (loan_id, seq, due_date, principal, interest, principal_paid, interest_paid, accrued, \
             fee, fee_paid, accrual_from, balance, interest_before, fee_before, bank_own_before, partner_own_before, \
             interest_accrued, fee_accrued, penalty_segment_from, penalty_segment_accrued) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
        )
        .bind(loan_id)
        .bind(i64::from(i.seq))
        .bind(format_date(i.due))
        .bind(i.principal)
        .bind(i.interest)
        .bind(s.principal_paid)
        .bind(s.interest_paid)
        .bind(i64::from(s.accrued_in_full))
        .bind(i.fee)
        .bind(s.fee_paid)
        .bind(s.segment.from.map(format_date).unwrap_or_default())
        .bind(balance)
        .bind(s.segment.interest_before)
        .bind(s.segment.fee_before)
        .bind(s.segment.bank_own_before)
        .bind(s.segment.partner_own_before)
        .bind(s.interest_accrued)
        .bind(s.fee_accrued)
        .bind(s.penalty.from.map(format_date).unwrap_or_default())
        .bind(s.penalty.accrued)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
