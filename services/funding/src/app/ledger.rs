//! Each funder's double-entry ledger: balanced postings.
//!
//! What must hold: every posting balances for each funder (debits equal
//! credits); an accrual debits the funder's receivable and credits its
//! income by what accrued for it, so each funder's income is the sum of its
//! accruals; a repayment debits cash and credits the receivables it pays
//! (and OVERPAYMENT_PAYABLE beyond the payoff). An amount below zero (an
//! OWN_RATE residual party's negative interest) is posted on the other
//! side, so no entry carries a negative amount.
use super::*;

/// One ledger line: (funder, account, debit, credit).
pub(super) type Line = (&'static str, &'static str, i64, i64);

/// The receivable and income accounts of an accrued component.
fn accounts(what: &str) -> ApiResult<(&'static str, &'static str)> {
    match what {
        "INTEREST" => Ok(("INTEREST_RECEIVABLE", "INTEREST_INCOME")),
        "FEE" => Ok(("FEE_RECEIVABLE", "FEE_INCOME")),
        "PENALTY" => Ok(("PENALTY_RECEIVABLE", "PENALTY_INCOME")),
        other => Err(ApiError::internal(anyhow::anyhow!(
            "no ledger accounts for an accrual of {other}"
        ))),
    }
}

/// An accrual of `what` for each funder: receivable against income.
pub(super) fn accrual_lines(what: &str, bank: i64, partner: i64) -> ApiResult<Vec<Line>> {
    let (receivable, income) = accounts(what)?;
    Ok(vec![
        ("BANK", receivable, bank, 0),
        ("BANK", income, 0, bank),
        ("PARTNER", receivable, partner, 0),
        ("PARTNER", income, 0, partner),
    ])
}

/// A repayment for each funder: cash against the receivables it pays, and
/// what is owed back to the borrower beyond the payoff.
pub(super) fn repayment_lines(a: &domain::Allocation) -> Vec<Line> {
    let mut lines = Vec::with_capacity(12);
    for (funder, p) in [("BANK", a.bank), ("PARTNER", a.partner)] {
        lines.extend([
            (funder, "CASH", p.total(), 0),
            (funder, "LOANS_RECEIVABLE", 0, p.principal),
            (funder, "INTEREST_RECEIVABLE", 0, p.interest),
            (funder, "FEE_RECEIVABLE", 0, p.fee),
            (funder, "PENALTY_RECEIVABLE", 0, p.penalty),
            (funder, "OVERPAYMENT_PAYABLE", 0, p.overpayment),
        ]);
    }
    lines
}

/// Posts an accrual for each funder: receivable against income.
pub(super) async fn post_accrual(
    conn: &mut AnyConnection,
    loan_id: &str,
    currency: &str,
    what: &str,
    bank: i64,
    partner: i64,
) -> ApiResult<()> {
    post(
        conn,
        loan_id,
        currency,
        &accrual_lines(what, bank, partner)?,
    )
    .await
}

/// A line with an amount below zero moved to the other side.
fn normalised<'a>(line: &(&'a str, &'a str, i64, i64)) -> ApiResult<(&'a str, &'a str, i64, i64)> {
    let &(funder, account, debit, credit) = line;
    let overflow = || ApiError::internal(anyhow::anyhow!("a ledger line for {funder} overflows"));
    let neg = |v: i64| v.min(0).checked_neg().ok_or_else(overflow);
    let debit_side = debit
        .max(0)
        .checked_add(neg(credit)?)
        .ok_or_else(overflow)?;
    let credit_side = credit
        .max(0)
        .checked_add(neg(debit)?)
        .ok_or_else(overflow)?;
    Ok((funder, account, debit_side, credit_side))
}

/// Checks one posting: per funder, debits equal credits (after moving
/// negative amounts to the other side).
pub(super) fn balanced<'a>(
    lines: &[(&'a str, &'a str, i64, i64)],
) -> ApiResult<Vec<(&'a str, &'a str, i64, i64)>> {
    let lines = lines
        .iter()
        .map(normalised)
        .collect::<ApiResult<Vec<_>>>()?;
    for funder in ["BANK", "PARTNER"] {
        let side = |pick: fn(&(&str, &str, i64, i64)) -> i64| {
            colend_core::money::checked_sum(lines.iter().filter(|l| l.0 == funder).map(pick))
                .map_err(|_| ApiError::internal(anyhow::anyhow!("posting for {funder} overflows")))
        };
        let (d, c) = (side(|l| l.2)?, side(|l| l.3)?);
        if d != c {
            return Err(ApiError::internal(anyhow::anyhow!(
                "unbalanced posting for {funder}: {d} != {c}"
            )));
        }
    }
    Ok(lines)
}

/// Writes one balanced posting: per funder, debits equal credits.
pub(super) async fn post(
    conn: &mut AnyConnection,
    loan_id: &str,
    currency: &str,
    lines: &[(&str, &str, i64, i64)],
) -> ApiResult<()> {
    let lines = balanced(lines)?;
    let posting_id = format!("pst_{}", uuid::Uuid::now_v7().simple());
    let now = now_millis();
    for (funder, account, debit, credit) in lines.iter().filter(|l| l.2 != 0 || l.3 != 0) {
        sqlx::query(
            "INSERT INTO ledger_entries (entry_id, posting_id, loan_id, funder, account, debit, credit, currency, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(format!("ent_{}", uuid::Uuid::now_v7().simple()))
        .bind(&posting_id)
        .bind(loan_id)
        .bind(*funder)
        .bind(*account)
        .bind(*debit)
        .bind(*credit)
        .bind(currency)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
