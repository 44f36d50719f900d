//! Reconciliation use cases.
use crate::domain::{self, Class, Kind, Rec};
use colend_contracts::common::v1::Money;
use colend_contracts::reconciliation::v1 as pb;
use colend_platform::time::{now_millis, timestamp};
use colend_platform::{ApiError, ApiResult, Db, idempotency};
use prost::Message;
use sqlx::Row;

#[derive(Clone)]
pub struct Reconciliation {
    db: Db,
}

fn side_name(s: pb::Side) -> &'static str {
    match s {
        pb::Side::Bank => "BANK",
        _ => "PARTNER",
    }
}

fn class_pb(c: Class) -> pb::BreakClass {
    match c {
        Class::Matched => pb::BreakClass::Matched,
        Class::AmountMismatch => pb::BreakClass::AmountMismatch,
        Class::MissingOnBankSide => pb::BreakClass::MissingOnBankSide,
        Class::MissingOnPartnerSide => pb::BreakClass::MissingOnPartnerSide,
        Class::Duplicate => pb::BreakClass::Duplicate,
    }
}

fn money(m: i64, c: &str) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: c.to_string(),
    })
}

impl Reconciliation {
    pub fn new(db: Db) -> Self {
        Reconciliation { db }
    }

    /// Stores a validated batch of one side's records.
    pub async fn ingest(
        &self,
        request_id: String,
        hash: String,
        r: pb::IngestRecordsRequest,
    ) -> ApiResult<i32> {
        let scope = format!("IngestRecords:{}", r.partner_id);
        let resp = idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let side = side_name(pb::Side::try_from(r.side).unwrap_or(pb::Side::Unspecified));
                let now = now_millis();
                for rec in &r.records {
                    let amount = rec.amount.clone().unwrap_or_default();
                    sqlx::query(
                        "INSERT INTO recon_records (record_id, partner_id, business_date, side, kind, transaction_id, loan_id, \
                         value_date, currency, amount, bank_portion, partner_portion, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    )
                    .bind(format!("rec_{}", uuid::Uuid::now_v7().simple()))
                    .bind(&r.partner_id)
                    .bind(&r.business_date)
                    .bind(side)
                    .bind(if rec.kind == pb::RecordKind::Disbursement as i32 { "DISBURSEMENT" } else { "REPAYMENT" })
                    .bind(&rec.transaction_id)
                    .bind(&rec.loan_id)
                    .bind(&rec.value_date)
                    .bind(&amount.currency_code)
                    .bind(amount.minor_units)
                    .bind(rec.bank_portion.as_ref().map(|m| m.minor_units).unwrap_or(0))
                    .bind(rec.partner_portion.as_ref().map(|m| m.minor_units).unwrap_or(0))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(pb::IngestRecordsResponse { accepted: r.records.len() as i32 })
            })
        })
        .await?;
        Ok(resp.accepted)
    }

    async fn load(
        &self,
        partner_id: &str,
        date: &str,
        side: &str,
    ) -> ApiResult<(Vec<Rec>, String)> {
        let rows = sqlx::query(
            "SELECT kind, transaction_id, loan_id, value_date, amount, bank_portion, partner_portion, currency \
             FROM recon_records WHERE partner_id = $1 AND business_date = $2 AND side = $3",
        )
        .bind(partner_id)
        .bind(date)
        .bind(side)
        .fetch_all(&self.db.pool)
        .await?;
        let mut currency = String::new();
        let recs = rows
            .iter()
            .map(|r| {
                currency = r.get(7);
                let kind: String = r.get(0);
                Rec {
                    kind: if kind == "DISBURSEMENT" {
                        Kind::Disbursement
                    } else {
                        Kind::Repayment
                    },
                    transaction_id: r.get(1),
                    loan_id: r.get(2),
                    value_date: r.get(3),
                    amount: r.get(4),
                    bank_portion: r.get(5),
                    partner_portion: r.get(6),
                }
            })
            .collect();
        Ok((recs, currency))
    }

    /// Reconciles a partner's day and stores the run and its breaks.
    pub async fn run(
        &self,
        request_id: String,
        hash: String,
        partner_id: String,
        date: String,
    ) -> ApiResult<pb::Run> {
        let (bank, c1) = self.load(&partner_id, &date, "BANK").await?;
        let (partner, c2) = self.load(&partner_id, &date, "PARTNER").await?;
        let currency = if c1.is_empty() {
            if c2.is_empty() { "CNY".to_string() } else { c2 }
        } else {
            c1
        };
        let outcome = domain::reconcile(&bank, &partner);
        for (class, (count, _)) in outcome.summary() {
            metrics::counter!("colend_recon_items_total", "class" => class.name())
                .increment(count as u64);
        }
        let scope = format!("RunReconciliation:{partner_id}");
        idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let now = now_millis();
                let run_id = format!("run_{}", uuid::Uuid::now_v7().simple());
                let c = currency.as_str();
                let s = outcome.settlement;
                let run = pb::Run {
                    run_id: run_id.clone(),
                    partner_id: partner_id.clone(),
                    business_date: date.clone(),
                    bank_records: bank.len() as i64,
                    partner_records: partner.len() as i64,
                    classes: outcome
                        .summary()
                        .into_iter()
                        .map(|(k, (n, a))| pb::ClassSummary {
                            break_class: class_pb(k) as i32,
                            count: n,
                            amount: money(a, c),
                        })
                        .collect(),
                    open_breaks: outcome.breaks().count() as i64,
                    settlement: Some(pb::Settlement {
                        partner_owes_bank: money(s.partner_owes_bank(), c),
                        partner_disbursement_share: money(s.partner_disbursement_share, c),
                        partner_repayment_share: money(s.partner_repayment_share, c),
                    }),
                    completed_at: Some(timestamp(now)),
                };
                for (n, b) in outcome.breaks().enumerate() {
                    sqlx::query(
                        "INSERT INTO recon_breaks (break_id, run_id, break_class, transaction_id, loan_id, currency, \
                         bank_amount, partner_amount, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(format!("{run_id}-{n:08}"))
                    .bind(&run_id)
                    .bind(b.class.name())
                    .bind(&b.transaction_id)
                    .bind(&b.loan_id)
                    .bind(c)
                    .bind(b.bank_amount)
                    .bind(b.partner_amount)
                    .bind(&b.detail)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO recon_runs (run_id, partner_id, business_date, body, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&run_id)
                .bind(&partner_id)
                .bind(&date)
                .bind(hex::encode(run.encode_to_vec()))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Ok(run)
            })
        })
        .await
    }

    /// A run's breaks, keyset-paginated by break id.
    pub async fn breaks(
        &self,
        run_id: &str,
        page_size: i64,
        after: &str,
    ) -> ApiResult<(Vec<pb::Break>, String)> {
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT run_id FROM recon_runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.db.pool)
                .await?;
        if exists.is_none() {
            return Err(ApiError::NotFound("run".into()));
        }
        let rows = sqlx::query(
            "SELECT break_id, break_class, transaction_id, loan_id, currency, bank_amount, partner_amount, detail \
             FROM recon_breaks WHERE run_id = $1 AND break_id > $2 ORDER BY break_id LIMIT $3",
        )
        .bind(run_id)
        .bind(after)
        .bind(page_size + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let mut out: Vec<pb::Break> = rows
            .iter()
            .map(|r| {
                let class: String = r.get(1);
                let c: String = r.get(4);
                pb::Break {
                    break_id: r.get(0),
                    break_class: pb::BreakClass::from_str_name(&format!("BREAK_CLASS_{class}"))
                        .unwrap_or(pb::BreakClass::Unspecified)
                        as i32,
                    transaction_id: r.get(2),
                    loan_id: r.get(3),
                    bank_amount: money(r.get(5), &c),
                    partner_amount: money(r.get(6), &c),
                    detail: r.get(7),
                }
            })
            .collect();
        let next = if out.len() as i64 > page_size {
            out.truncate(page_size as usize);
            out.last().map(|b| b.break_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }
}
