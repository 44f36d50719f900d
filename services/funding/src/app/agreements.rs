//! Bank set-up: agreements, reference data for the limits, the whitelist.
use super::*;

/// An `agreements` row, read by column name.
#[derive(sqlx::FromRow)]
struct AgreementRecord {
    version: i64,
    partner_share_bps: i64,
    bank_rate_bps: i64,
    partner_rate_bps: i64,
    currency: String,
    daily_quota: i64,
    total_quota: i64,
    effective_from: String,
    created_at: i64,
    day_count: String,
    penalty_rate_bps: i64,
    waterfall: String,
    credit_enhancer_id: String,
    fee_partner_share_bps: i64,
}

impl AgreementRecord {
    /// The agreement as the contract has it; a stored value that does not
    /// decode (or fit) is an error, never a default.
    fn into_pb(self, partner_id: &str) -> ApiResult<pb::Agreement> {
        let bad = |column: &str, value: &dyn std::fmt::Display| {
            ApiError::internal(anyhow::anyhow!(
                "agreement {partner_id} v{}: stored {column} {value} does not decode",
                self.version
            ))
        };
        let small = |column: &str, v: i64| i32::try_from(v).map_err(|_| bad(column, &v));
        let day_count =
            DayCount::parse(&self.day_count).ok_or_else(|| bad("day_count", &self.day_count))?;
        let waterfall =
            Waterfall::parse(&self.waterfall).ok_or_else(|| bad("waterfall", &self.waterfall))?;
        Ok(pb::Agreement {
            partner_id: partner_id.to_string(),
            version: small("version", self.version)?,
            partner_share_bps: small("partner_share_bps", self.partner_share_bps)?,
            bank_rate_bps: small("bank_rate_bps", self.bank_rate_bps)?,
            partner_rate_bps: small("partner_rate_bps", self.partner_rate_bps)?,
            daily_quota: money(self.daily_quota, &self.currency),
            total_quota: money(self.total_quota, &self.currency),
            effective_from: self.effective_from.clone(),
            created_at: Some(timestamp(self.created_at)),
            day_count: day_count_pb(day_count) as i32,
            penalty_rate_bps: small("penalty_rate_bps", self.penalty_rate_bps)?,
            waterfall: waterfall
                .0
                .iter()
                .map(|b| component_pb(*b) as i32)
                .collect(),
            credit_enhancer_id: self.credit_enhancer_id.clone(),
            fee_partner_share_bps: small("fee_partner_share_bps", self.fee_partner_share_bps)?,
            ..Default::default()
        })
    }
}

impl Funding {
    pub(super) fn agreement_key(partner_id: &str) -> String {
        format!("funding:agreement:{partner_id}")
    }

    /// Creates a new version of a partner's agreement.
    pub async fn upsert_agreement(
        &self,
        request_id: String,
        hash: String,
        a: pb::Agreement,
    ) -> ApiResult<pb::Agreement> {
        if let Some(problem) = domain::share_problem(
            a.partner_share_bps as i64,
            self.settings.min_partner_share_bps,
            self.settings.jurisdiction.min_bank_share_bps(),
        ) {
            return Err(ApiError::field("agreement.partner_share_bps", &problem));
        }
        let partner = a.partner_id.clone();
        let stored = idempotency::run(&self.db, "UpsertAgreement".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let (v,): (i64,) = sqlx::query_as(
                    "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM agreements WHERE partner_id = $1",
                )
                .bind(&a.partner_id)
                .fetch_one(&mut *tx)
                .await?;
                let now = now_millis();
                let quota = |m: &Option<Money>| m.as_ref().map(|m| m.minor_units).unwrap_or(0);
                let currency = a.total_quota.as_ref().map(|m| m.currency_code.clone()).unwrap_or_default();
                sqlx::query(
                    "INSERT INTO agreements (partner_id, version, partner_share_bps, bank_rate_bps, partner_rate_bps, currency, \
                     daily_quota, total_quota, effective_from, created_at, day_count, penalty_rate_bps, waterfall, \
                     credit_enhancer_id, fee_partner_share_bps) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .bind(&a.partner_id)
                .bind(v + 1)
                .bind(a.partner_share_bps as i64)
                .bind(a.bank_rate_bps as i64)
                .bind(a.partner_rate_bps as i64)
                .bind(&currency)
                .bind(quota(&a.daily_quota))
                .bind(quota(&a.total_quota))
                .bind(&a.effective_from)
                .bind(now)
                .bind(day_count_of(a.day_count).name())
                .bind(a.penalty_rate_bps as i64)
                .bind(waterfall_of(&a.waterfall).unwrap_or_default().name())
                .bind(&a.credit_enhancer_id)
                .bind(a.fee_partner_share_bps as i64)
                .execute(&mut *tx)
                .await?;
                let dc = day_count_of(a.day_count);
                let w = waterfall_of(&a.waterfall).unwrap_or_default();
                Ok(pb::Agreement {
                    version: (v + 1) as i32,
                    created_at: Some(timestamp(now)),
                    day_count: day_count_pb(dc) as i32,
                    waterfall: w.0.iter().map(|b| component_pb(*b) as i32).collect(),
                    ..a
                })
            })
        })
        .await?;
        self.cache.delete(&Self::agreement_key(&partner)).await;
        Ok(stored)
    }

    /// The partner's agreement in force today, read through the cache.
    pub async fn agreement(&self, partner_id: &str) -> ApiResult<Option<pb::Agreement>> {
        let key = Self::agreement_key(partner_id);
        if let Some(a) = self
            .cache
            .get(&key)
            .await
            .and_then(|b| pb::Agreement::decode(b.as_slice()).ok())
        {
            return Ok(Some(a));
        }
        let row: Option<AgreementRecord> = sqlx::query_as(
            "SELECT version, partner_share_bps, bank_rate_bps, partner_rate_bps, currency, daily_quota, total_quota, \
             effective_from, created_at, day_count, penalty_rate_bps, waterfall, credit_enhancer_id, \
             fee_partner_share_bps FROM agreements \
             WHERE partner_id = $1 AND effective_from <= $2 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(partner_id)
        .bind(format_date(today()))
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let a = r.into_pb(partner_id)?;
        self.cache
            .set(&key, &a.encode_to_vec(), self.settings.agreement_ttl)
            .await;
        Ok(Some(a))
    }

    /// Sets the bank's reference data.
    pub async fn set_bank_reference(
        &self,
        request_id: String,
        hash: String,
        r: pb::BankReference,
    ) -> ApiResult<pb::BankReference> {
        idempotency::run(&self.db, "SetBankReference".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let tier1 = r.net_tier1_capital.clone().unwrap_or_default();
                let total = r.total_loan_balance.clone().unwrap_or_default();
                sqlx::query("DELETE FROM bank_reference WHERE id = 1").execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO bank_reference (id, net_tier1_capital, total_loan_balance, currency, as_of, updated_at) \
                     VALUES (1, $1, $2, $3, $4, $5)",
                )
                .bind(tier1.minor_units)
                .bind(total.minor_units)
                .bind(&tier1.currency_code)
                .bind(&r.as_of)
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
                Ok(r)
            })
        })
        .await
    }

    /// The reference data and how much of each limit is used.
    pub async fn bank_reference(
        &self,
        partner_id: &str,
    ) -> ApiResult<pb::GetBankReferenceResponse> {
        let row: Option<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT net_tier1_capital, total_loan_balance, currency, as_of FROM bank_reference WHERE id = 1",
        )
        .fetch_optional(&self.db.pool)
        .await?;
        let (tier1, total, c, as_of) =
            row.ok_or_else(|| ApiError::NotFound("bank reference data".into()))?;
        let used = |scope: String| async move {
            let r: Option<(i64,)> =
                sqlx::query_as("SELECT used FROM bank_exposure WHERE scope = $1")
                    .bind(scope)
                    .fetch_optional(&self.db.pool)
                    .await?;
            Ok::<i64, ApiError>(r.map(|x| x.0).unwrap_or(0))
        };
        let all = used("ALL".into()).await?;
        let (partner_used, partner_limit) = if partner_id.is_empty() {
            (None, None)
        } else {
            (
                money(used(format!("PARTNER:{partner_id}")).await?, &c),
                money(domain::limit_of(tier1, self.settings.c2_bps), &c),
            )
        };
        Ok(pb::GetBankReferenceResponse {
            reference: Some(pb::BankReference {
                net_tier1_capital: money(tier1, &c),
                total_loan_balance: money(total, &c),
                as_of,
            }),
            co_lent_total: money(all, &c),
            co_lent_limit: money(domain::limit_of(total, self.settings.c3_bps), &c),
            partner_co_lent: partner_used,
            partner_limit,
        })
    }

    /// Adds a whitelist entry.
    pub async fn whitelist(
        &self,
        request_id: String,
        hash: String,
        e: pb::WhitelistEntry,
    ) -> ApiResult<pb::WhitelistEntry> {
        idempotency::run(&self.db, "WhitelistInstitution".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let kind = if e.kind == pb::InstitutionKind::CreditEnhancer as i32 { "CREDIT_ENHANCER" } else { "PARTNER" };
                sqlx::query(
                    "DELETE FROM whitelist WHERE institution_id = $1 AND kind = $2 AND effective_from = $3",
                )
                .bind(&e.institution_id)
                .bind(kind)
                .bind(&e.effective_from)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO whitelist (institution_id, kind, effective_from, effective_to, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&e.institution_id)
                .bind(kind)
                .bind(&e.effective_from)
                .bind(&e.effective_to)
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
                Ok(e)
            })
        })
        .await
    }
}
