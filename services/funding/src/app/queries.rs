//! Reads: a loan, pages of loans, the ledger's movements and balances, a
//! borrower's exposure. A partner reads only its own loans, the bank any.
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

/// Which loans ListLoans returns.
#[derive(Clone, Debug, Default)]
pub struct LoanFilter {
    /// One partner's loans; `None`: every partner's (the bank's view).
    pub partner_id: Option<String>,
    pub status: Option<LoanStatus>,
    /// Reserved on or after this business date.
    pub reserved_from: Option<chrono::NaiveDate>,
    /// Reserved on or before this business date.
    pub reserved_to: Option<chrono::NaiveDate>,
}

fn overflow() -> ApiError {
    ApiError::internal(anyhow::anyhow!("ledger totals overflow"))
}

impl Funding {
    /// The currency of a loan, if there is one with this id (it never changes).
    pub async fn loan_currency(&self, loan_id: &str) -> ApiResult<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT currency FROM loans WHERE loan_id = $1")
                .bind(loan_id)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(row.map(|(c,)| c))
    }

    /// Principal a borrower owes, reserved or outstanding, across partners:
    /// one total per currency (never summed across codes), by code.
    pub async fn borrower_exposure(&self, borrower_key: &str) -> ApiResult<Vec<(String, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT currency, CAST(SUM(principal - principal_paid) AS BIGINT) FROM loans \
             WHERE borrower_key = $1 AND status IN ('RESERVED', 'DISBURSED') \
             GROUP BY currency ORDER BY currency",
        )
        .bind(borrower_key)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows)
    }

    /// A loan, with schedule and repayments: of the calling partner
    /// (`Some`), or any loan for the bank (`None`).
    pub async fn get_loan(&self, partner_id: Option<&str>, loan_id: &str) -> ApiResult<pb::Loan> {
        let mut conn = self.db.pool.acquire().await?;
        // Scoped to the calling partner in the query itself: another
        // partner's loan is not found, as a missing one.
        let row = sqlx::query(&format!(
            "SELECT {LOAN_COLS} FROM loans WHERE loan_id = $1 AND ($2 = '' OR partner_id = $2)"
        ))
        .bind(loan_id)
        .bind(partner_id.unwrap_or(""))
        .fetch_optional(&mut *conn)
        .await?;
        let l = loan_row(&row.ok_or_else(|| ApiError::NotFound("loan".into()))?)?;
        let (sched, _) = load_schedule(&mut conn, loan_id).await?;
        let reps = load_repayments(&mut conn, loan_id).await?;
        Ok(loan_pb(&l, &sched, reps))
    }

    /// A page of loans, newest first (loan ids are time-ordered), after the
    /// loan id `after` (empty: from the newest); with the next page's key,
    /// empty on the last page. Without schedules and repayments.
    pub async fn list_loans(
        &self,
        filter: &LoanFilter,
        page_size: i64,
        after: &str,
    ) -> ApiResult<(Vec<pb::Loan>, String)> {
        // Only the filters given are in the query, so each can use its index.
        // The first page has no key at all: a sentinel such as '~' sorts
        // before letters under a database's non-C collation and would match
        // nothing.
        let mut sql = format!("SELECT {LOAN_COLS} FROM loans WHERE TRUE");
        let mut binds: Vec<String> = Vec::new();
        let mut and = |column_op: &str, value: String| {
            binds.push(value);
            sql.push_str(&format!(" AND {column_op} ${}", binds.len()));
        };
        if !after.is_empty() {
            and("loan_id <", after.to_string());
        }
        if let Some(p) = &filter.partner_id {
            and("partner_id =", p.clone());
        }
        if let Some(st) = filter.status {
            and("status =", st.name().to_string());
        }
        // Business dates are stored "YYYY-MM-DD": they compare as text.
        if let Some(d) = filter.reserved_from {
            and("reserved_on >=", format_date(d));
        }
        if let Some(d) = filter.reserved_to {
            and("reserved_on <=", format_date(d));
        }
        sql.push_str(&format!(
            " ORDER BY loan_id DESC LIMIT ${}",
            binds.len() + 1
        ));
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b);
        }
        let rows = q
            .bind(page_size.saturating_add(1))
            .fetch_all(&self.db.pool)
            .await?;
        let mut loans = rows
            .iter()
            .map(|r| Ok(loan_pb(&loan_row(r)?, &[], Vec::new())))
            .collect::<ApiResult<Vec<_>>>()?;
        let next = match usize::try_from(page_size) {
            Ok(n) if loans.len() > n => {
                loans.truncate(n);
                loans.last().map(|l| l.loan_id.clone()).unwrap_or_default()
            }
            _ => String::new(),
        };
        Ok((loans, next))
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
            let add = |to: &mut i64, v: i64| -> ApiResult<()> {
                *to = to.checked_add(v).ok_or_else(overflow)?;
                Ok(())
            };
            for a in &rep.allocations {
                let v = a.amount.as_ref().map(|x| x.minor_units).unwrap_or(0);
                if a.funder == Funder::Bank as i32 {
                    add(&mut bank, v)?;
                } else {
                    add(&mut partner, v)?;
                }
                match pb::Component::try_from(a.component) {
                    Ok(pb::Component::Principal) => add(&mut m.principal, v)?,
                    Ok(pb::Component::Interest) => add(&mut m.interest, v)?,
                    Ok(pb::Component::Fee) => add(&mut m.fee, v)?,
                    Ok(pb::Component::Penalty) => add(&mut m.penalty, v)?,
                    _ => {}
                }
            }
            m.bank_portion = money(bank, &c);
            m.partner_portion = money(partner, &c);
            out.push(m);
        }
        Ok(out)
    }

    /// Ledger totals per funder, account and currency, and per currency:
    /// amounts in different currencies are never added together. The
    /// single-currency totals are set only when the ledger holds exactly one.
    pub async fn trial_balance(&self) -> ApiResult<pb::GetTrialBalanceResponse> {
        let rows: Vec<BalanceRecord> = sqlx::query_as(
            "SELECT funder, account, currency, CAST(SUM(debit) AS BIGINT) AS debits, \
             CAST(SUM(credit) AS BIGINT) AS credits FROM ledger_entries \
             GROUP BY funder, account, currency ORDER BY currency, funder, account",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut balances = Vec::new();
        // Currency → (debits, credits); ordered by code.
        let mut totals: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
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
            let t = totals.entry(r.currency.clone()).or_default();
            t.0 = t.0.checked_add(r.debits).ok_or_else(overflow)?;
            t.1 = t.1.checked_add(r.credits).ok_or_else(overflow)?;
            balances.push(pb::AccountBalance {
                funder: funder as i32,
                account: r.account,
                debits: money(r.debits, &r.currency),
                credits: money(r.credits, &r.currency),
            });
        }
        let (total_debits, total_credits) = match totals.iter().next() {
            Some((c, (d, cr))) if totals.len() == 1 => (money(*d, c), money(*cr, c)),
            _ => (None, None),
        };
        Ok(pb::GetTrialBalanceResponse {
            balances,
            total_debits,
            total_credits,
            totals: totals
                .into_iter()
                .map(|(c, (d, cr))| pb::CurrencyTotal {
                    debits: money(d, &c),
                    credits: money(cr, &c),
                })
                .collect(),
        })
    }
}
