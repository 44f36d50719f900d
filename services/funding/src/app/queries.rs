//! Reads: loans, the ledger's movements and balances, a borrower's exposure.
use super::*;

/// A disbursed loan's movement, read by column name.
#[derive(sqlx::FromRow)]
struct DisbursedRecord {
    loan_id: String,
    currency: String,
    principal: i64,
    bank_amount: i64,
    partner_amount: i64,
    disbursement_ref: String,
}

/// One funder's account totals, read by column name.
#[derive(sqlx::FromRow)]
struct BalanceRecord {
    funder: String,
    account: String,
    currency: String,
    debits: i64,
    credits: i64,
}

fn overflow() -> ApiError {
    ApiError::internal(anyhow::anyhow!("ledger totals overflow"))
}

impl Funding {
    /// Principal a borrower owes, reserved or outstanding, across partners.
    pub async fn borrower_exposure(&self, borrower_key: &str) -> ApiResult<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(principal - principal_paid), 0) AS BIGINT) FROM loans \
             WHERE borrower_key = $1 AND status IN ('RESERVED', 'DISBURSED')",
        )
        .bind(borrower_key)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(n)
    }

    /// A loan of the calling partner, with schedule and repayments.
    pub async fn get_loan(&self, partner_id: &str, loan_id: &str) -> ApiResult<pb::Loan> {
        let mut conn = self.db.pool.acquire().await?;
        // Scoped to the calling partner in the query itself.
        let row = sqlx::query(&format!(
            "SELECT {LOAN_COLS} FROM loans WHERE loan_id = $1 AND partner_id = $2"
        ))
        .bind(loan_id)
        .bind(partner_id)
        .fetch_optional(&mut *conn)
        .await?;
        let l = loan_row(&row.ok_or_else(|| ApiError::NotFound("loan".into()))?)?;
        let (sched, _) = load_schedule(&mut conn, loan_id).await?;
        let reps = load_repayments(&mut conn, loan_id).await?;
        Ok(loan_pb(&l, &sched, reps))
    }

    /// The day's disbursements and repayments of a partner's loans, as
    /// booked (three-way reconciliation).
    pub async fn ledger_movements(
        &self,
        partner_id: &str,
        value_date: &str,
    ) -> ApiResult<Vec<pb::LedgerMovement>> {
        let mut out = Vec::new();
        let loans: Vec<DisbursedRecord> = sqlx::query_as(
            "SELECT loan_id, currency, principal, bank_amount, partner_amount, disbursement_ref FROM loans \
             WHERE partner_id = $1 AND disbursed_on = $2 ORDER BY loan_id",
        )
        .bind(partner_id)
        .bind(value_date)
        .fetch_all(&self.db.pool)
        .await?;
        for r in loans {
            let c = &r.currency;
            out.push(pb::LedgerMovement {
                kind: pb::MovementKind::Disbursement as i32,
                value_date: value_date.to_string(),
                amount: money(r.principal, c),
                bank_portion: money(r.bank_amount, c),
                partner_portion: money(r.partner_amount, c),
                transaction_ref: r.disbursement_ref,
                loan_id: r.loan_id,
                ..Default::default()
            });
        }
        let reps: Vec<(String, String)> = sqlx::query_as(
            "SELECT r.body, l.currency FROM repayments r JOIN loans l ON l.loan_id = r.loan_id \
             WHERE l.partner_id = $1 AND r.value_date = $2 ORDER BY r.created_at, r.repayment_id",
        )
        .bind(partner_id)
        .bind(value_date)
        .fetch_all(&self.db.pool)
        .await?;
        for (body, c) in reps {
            let bytes = hex::decode(body).map_err(ApiError::internal)?;
            let rep = pb::Repayment::decode(bytes.as_slice()).map_err(ApiError::internal)?;
            let mut m = pb::LedgerMovement {
                kind: pb::MovementKind::Repayment as i32,
                transaction_ref: rep.bank_transaction_ref.clone(),
                loan_id: rep.loan_id.clone(),
                value_date: rep.value_date.clone(),
                amount: money(rep.amount.as_ref().map(|a| a.minor_units).unwrap_or(0), &c),
                ..Default::default()
            };
            let (mut bank, mut partner) = (0i64, 0i64);
            for a in &rep.allocations {
                let v = a.amount.as_ref().map(|x| x.minor_units).unwrap_or(0);
                if a.funder == Funder::Bank as i32 {
                    bank += v;
                } else {
                    partner += v;
                }
                match pb::Component::try_from(a.component) {
                    Ok(pb::Component::Principal) => m.principal += v,
                    Ok(pb::Component::Interest) => m.interest += v,
                    Ok(pb::Component::Fee) => m.fee += v,
                    Ok(pb::Component::Penalty) => m.penalty += v,
                    _ => {}
                }
            }
            m.bank_portion = money(bank, &c);
            m.partner_portion = money(partner, &c);
            out.push(m);
        }
        Ok(out)
    }

    /// Ledger totals per funder and account.
    pub async fn trial_balance(&self) -> ApiResult<pb::GetTrialBalanceResponse> {
        let rows: Vec<BalanceRecord> = sqlx::query_as(
            "SELECT funder, account, currency, CAST(SUM(debit) AS BIGINT) AS debits, \
             CAST(SUM(credit) AS BIGINT) AS credits FROM ledger_entries \
             GROUP BY funder, account, currency ORDER BY funder, account",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut balances = Vec::new();
        let (mut td, mut tc) = (0i64, 0i64);
        let mut currency = String::from("CNY");
        for r in rows {
            let funder = match r.funder.as_str() {
                "BANK" => Funder::Bank,
                "PARTNER" => Funder::Partner,
                other => {
                    return Err(ApiError::internal(anyhow::anyhow!(
                        "ledger entry with stored funder {other:?}"
                    )));
                }
            };
            currency = r.currency;
            td = td.checked_add(r.debits).ok_or_else(overflow)?;
            tc = tc.checked_add(r.credits).ok_or_else(overflow)?;
            balances.push(pb::AccountBalance {
                funder: funder as i32,
                account: r.account,
                debits: money(r.debits, &currency),
                credits: money(r.credits, &currency),
            });
        }
        Ok(pb::GetTrialBalanceResponse {
            balances,
            total_debits: money(td, &currency),
            total_credits: money(tc, &currency),
            ..Default::default()
        })
    }
}
