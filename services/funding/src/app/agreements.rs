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
    interest_split: String,
    residual_party: String,
    allow_negative_residual: i64,
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
        let interest_split = InterestSplit::parse(&self.interest_split)
            .ok_or_else(|| bad("interest_split", &self.interest_split))?;
        let residual_party = Party::parse(&self.residual_party)
            .ok_or_else(|| bad("residual_party", &self.residual_party))?;
        let allow_negative_residual = match self.allow_negative_residual {
            0 => false,
            1 => true,
            other => return Err(bad("allow_negative_residual", &other)),
        };
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
            interest_split: interest_split_pb(interest_split) as i32,
            residual_party: party_pb(residual_party) as i32,
            allow_negative_residual,
        })
    }
}

impl Funding {
    /// The cache key of the partner's agreement in force on business day `day`.
    pub(super) fn agreement_key(partner_id: &str, day: &str) -> String {
        format!("funding:agreement:{partner_id}:{day}")
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
        let interest_split = interest_split_of(a.interest_split).ok_or_else(|| {
            ApiError::field(
                "agreement.interest_split",
                "must be PRO_RATA (the default) or OWN_RATE; RATE_WEIGHTED is kept only for loans booked before it",
            )
        })?;
        let residual_party = party_of(a.residual_party).ok_or_else(|| {
            ApiError::field(
                "agreement.residual_party",
                "must be BANK (the default) or PARTNER",
            )
        })?;
        let partner = a.partner_id.clone();
        let stored = idempotency::run(&self.db, "UpsertAgreement".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let currency = a.total_quota.as_ref().map(|m| m.currency_code.clone()).unwrap_or_default();
                // First: the partner's usage row, locked, serialises versions
                // with reservations (and with each other).
                currency_may_change(tx, &a.partner_id, &currency).await?;
                let (v,): (i64,) = sqlx::query_as(
                    "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM agreements WHERE partner_id = $1",
                )
                .bind(&a.partner_id)
                .fetch_one(&mut *tx)
                .await?;
                let now = now_millis();
                let quota = |m: &Option<Money>| m.as_ref().map(|m| m.minor_units).unwrap_or(0);
                sqlx::query(
                    "INSERT INTO agreements (partner_id, version, partner_share_bps, bank_rate_bps, partner_rate_bps, currency, \
                     daily_quota, total_quota, effective_from, created_at, day_count, penalty_rate_bps, waterfall, \
                     credit_enhancer_id, fee_partner_share_bps, interest_split, residual_party, allow_negative_residual) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
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
                .bind(interest_split.name())
                .bind(residual_party.name())
                .bind(i64::from(a.allow_negative_residual))
                .execute(&mut *tx)
                .await?;
                let dc = day_count_of(a.day_count);
                let w = waterfall_of(&a.waterfall).unwrap_or_default();
                Ok(pb::Agreement {
                    version: (v + 1) as i32,
                    created_at: Some(timestamp(now)),
                    day_count: day_count_pb(dc) as i32,
                    waterfall: w.0.iter().map(|b| component_pb(*b) as i32).collect(),
                    interest_split: interest_split_pb(interest_split) as i32,
                    residual_party: party_pb(residual_party) as i32,
                    ..a
                })
            })
        })
        .await?;
        // Readers cache by business day; only today's entry can be live.
        let today = format_date(self.business_today());
        self.cache
            .delete(&Self::agreement_key(&partner, &today))
            .await;
        Ok(stored)
    }

    /// The partner's agreement in force today (the business day), read
    /// through the cache.
    pub async fn agreement(&self, partner_id: &str) -> ApiResult<Option<pb::Agreement>> {
        let today = format_date(self.business_today());
        let key = Self::agreement_key(partner_id, &today);
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
             fee_partner_share_bps, interest_split, residual_party, allow_negative_residual FROM agreements \
             WHERE partner_id = $1 AND effective_from <= $2 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(partner_id)
        .bind(&today)
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
                reference_currency_may_change(tx, &tier1.currency_code).await?;
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
            // Rule C2 counts the partner with its related parties.
            let day = format_date(self.business_today());
            let mut conn = self.db.pool.acquire().await?;
            let related = related_parties(&mut conn, &[partner_id], &day).await?;
            drop(conn);
            let mut group = 0i64;
            for member in related
                .get(partner_id)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                group = group
                    .checked_add(used(format!("PARTNER:{member}")).await?)
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("C2 usage overflows")))?;
            }
            (
                money(group, &c),
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
                    "INSERT INTO whitelist (institution_id, kind, effective_from, effective_to, created_at, group_id) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&e.institution_id)
                .bind(kind)
                .bind(&e.effective_from)
                .bind(&e.effective_to)
                .bind(now_millis())
                .bind(&e.group_id)
                .execute(&mut *tx)
                .await?;
                Ok(e)
            })
        })
        .await
    }
}

/// A new agreement version may be in another currency than the partner's
/// quota usage only while that usage holds nothing: it is a sum of loans in
/// one currency (the usage row's) and is never mixed with another. Whatever
/// the version's effective date: a version dated later takes effect without
/// a check of its own, so it is checked now (and the reservation batch
/// refuses, under the same lock, a loan in another currency than the
/// usage's). The usage row is locked (as a reservation batch locks it) until
/// the version is stored, and the batch reads the agreement in force after
/// taking that lock.
async fn currency_may_change(
    tx: &mut AnyConnection,
    partner_id: &str,
    currency: &str,
) -> ApiResult<()> {
    let (used, in_use): (i64, String) = sqlx::query_as(super::reserve::LOCK_TOTAL)
        .bind(partner_id)
        .fetch_one(&mut *tx)
        .await?;
    if used != 0 && in_use != currency {
        return Err(ApiError::currency_mismatch(
            in_use.clone(),
            format!(
                "partner {partner_id} has co-funded principal reserved or outstanding in {in_use}: \
                 its agreement stays in {in_use} until that is repaid or released"
            ),
        ));
    }
    Ok(())
}

/// The bank's reference data may change currency only while no co-lent
/// principal is reserved or outstanding: the C2 and C3 usage is a sum of the
/// bank's shares in the reference data's currency. The usage row is locked
/// (as a reservation batch locks it, before it reads the reference data).
async fn reference_currency_may_change(tx: &mut AnyConnection, currency: &str) -> ApiResult<()> {
    let previous: Option<(String,)> =
        sqlx::query_as("SELECT currency FROM bank_reference WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
    let Some((previous,)) = previous.filter(|(c,)| c != currency) else {
        return Ok(());
    };
    let (used,): (i64,) = sqlx::query_as(
        "INSERT INTO bank_exposure (scope, used) VALUES ('ALL', 0) \
         ON CONFLICT (scope) DO UPDATE SET used = bank_exposure.used RETURNING used",
    )
    .fetch_one(&mut *tx)
    .await?;
    if used != 0 {
        return Err(ApiError::currency_mismatch(
            previous.clone(),
            format!(
                "co-lent principal is reserved or outstanding in {previous}: the reference data \
                 (rules C2, C3) stays in {previous} until it is repaid or released"
            ),
        ));
    }
    Ok(())
}

/// Each partner's related parties on business day `day` (rule C2): every
/// partner whose latest whitelist entry begun by then names the same group,
/// the partner itself included, sorted. A partner whose latest entry names
/// no group (or that has none) is a group of its own. An entry that has
/// ended still counts: a related party's loans stay outstanding after it
/// leaves the whitelist.
pub(super) async fn related_parties(
    conn: &mut AnyConnection,
    partners: &[&str],
    day: &str,
) -> ApiResult<std::collections::HashMap<String, Vec<String>>> {
    let mut out: std::collections::HashMap<String, Vec<String>> = partners
        .iter()
        .map(|p| (p.to_string(), vec![p.to_string()]))
        .collect();
    if partners.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT institution_id, group_id, effective_from FROM whitelist \
         WHERE kind = 'PARTNER' AND effective_from <= {} AND institution_id IN ({})",
        colend_platform::db::placeholders(conn, 1, 1, 1),
        colend_platform::db::placeholders(conn, partners.len(), 1, 2),
    );
    let mut q = sqlx::query_as::<_, (String, String, String)>(&sql).bind(day.to_string());
    for p in partners {
        q = q.bind(p.to_string());
    }
    let own = latest_groups(q.fetch_all(&mut *conn).await?);
    let mut groups: Vec<&str> = own
        .values()
        .map(String::as_str)
        .filter(|g| !g.is_empty())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    if groups.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT institution_id, group_id, effective_from FROM whitelist \
         WHERE kind = 'PARTNER' AND effective_from <= {} AND institution_id IN \
         (SELECT institution_id FROM whitelist WHERE kind = 'PARTNER' AND group_id IN ({}))",
        colend_platform::db::placeholders(conn, 1, 1, 1),
        colend_platform::db::placeholders(conn, groups.len(), 1, 2),
    );
    let mut q = sqlx::query_as::<_, (String, String, String)>(&sql).bind(day.to_string());
    for g in &groups {
        q = q.bind(g.to_string());
    }
    let all = latest_groups(q.fetch_all(&mut *conn).await?);
    for (partner, members) in out.iter_mut() {
        let Some(group) = own.get(partner).filter(|g| !g.is_empty()) else {
            continue;
        };
        let mut m: Vec<String> = all
            .iter()
            .filter(|(_, g)| *g == group)
            .map(|(i, _)| i.clone())
            .collect();
        if !m.contains(partner) {
            m.push(partner.clone());
        }
        m.sort_unstable();
        *members = m;
    }
    Ok(out)
}

/// Institution → the group of its latest entry, from `(institution, group,
/// effective_from)` rows.
fn latest_groups(rows: Vec<(String, String, String)>) -> std::collections::HashMap<String, String> {
    let mut latest: std::collections::HashMap<String, (String, String)> =
        std::collections::HashMap::new();
    for (institution, group, from) in rows {
        match latest.get(&institution) {
            Some((seen, _)) if *seen >= from => {}
            _ => {
                latest.insert(institution, (from, group));
            }
        }
    }
    latest.into_iter().map(|(i, (_, g))| (i, g)).collect()
}
