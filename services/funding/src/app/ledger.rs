//! Each funder's double-entry ledger: balanced postings.
use super::*;

/// Posts an accrual for each funder: receivable against income.
pub(super) async fn post_accrual(
    conn: &mut AnyConnection,
    loan_id: &str,
    currency: &str,
    what: &str,
    bank: i64,
    partner: i64,
) -> ApiResult<()> {
    let (receivable, income) = (format!("{what}_RECEIVABLE"), format!("{what}_INCOME"));
    post(
        conn,
        loan_id,
        currency,
        &[
            ("BANK", &receivable, bank, 0),
            ("BANK", &income, 0, bank),
            ("PARTNER", &receivable, partner, 0),
            ("PARTNER", &income, 0, partner),
        ],
    )
    .await
}

/// Writes one balanced posting: per funder, debits equal credits.
pub(super) async fn post(
    conn: &mut AnyConnection,
    loan_id: &str,
    currency: &str,
    lines: &[(&str, &str, i64, i64)],
) -> ApiResult<()> {
    for funder in ["BANK", "PARTNER"] {
        let (d, c) = lines
            .iter()
            .filter(|l| l.0 == funder)
            .fold((0, 0), |(d, c), l| (d + l.2, c + l.3));
        if d != c {
            return Err(ApiError::internal(anyhow::anyhow!(
                "unbalanced posting for {funder}: {d} != {c}"
            )));
        }
    }
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
