//! Credit use cases.
use crate::domain::{self, Input, Policy};
use colend_contracts::common::v1::Money;
use colend_contracts::credit::v1 as pb;
use colend_platform::config::env_parse;
use colend_platform::time::{now_millis, timestamp};
use colend_platform::{ApiError, ApiResult, Cache, Db, idempotency};
use prost::Message;
use std::time::Duration;

const POLICY_KEY: &str = "credit:policy:current";

#[derive(Clone)]
pub struct Credit {
    db: Db,
    cache: Cache,
    policy_ttl: Duration,
}

impl Credit {
    pub fn new(db: Db, cache: Cache) -> Self {
        let secs = env_parse("COLEND_CREDIT_POLICY_CACHE_TTL_SECS", 30u64).unwrap_or(30);
        Credit {
            db,
            cache,
            policy_ttl: Duration::from_secs(secs),
        }
    }

    /// Publishes `default` as the first policy when none exists.
    pub async fn ensure_policy(&self, default: Policy) -> anyhow::Result<()> {
        let problems = default.problems();
        anyhow::ensure!(
            problems.is_empty(),
            "the configured credit policy is invalid: {problems:?}"
        );
        sqlx::query(
            "INSERT INTO policies (version, seq, body, created_at) \
             SELECT $1, 1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM policies)",
        )
        .bind(&default.version)
        .bind(serde_json::to_string(&default)?)
        .bind(now_millis())
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The policy in force, read through the cache.
    pub async fn current_policy(&self) -> ApiResult<Policy> {
        if let Some(p) = self
            .cache
            .get(POLICY_KEY)
            .await
            .and_then(|b| serde_json::from_slice::<Policy>(&b).ok())
        {
            return Ok(p);
        }
        let (body,): (String,) =
            sqlx::query_as("SELECT body FROM policies ORDER BY seq DESC LIMIT 1")
                .fetch_one(&self.db.pool)
                .await?;
        let p: Policy = serde_json::from_str(&body).map_err(ApiError::internal)?;
        self.cache
            .set(POLICY_KEY, body.as_bytes(), self.policy_ttl)
            .await;
        Ok(p)
    }

    /// Publishes a new policy version.
    pub async fn set_policy(
        &self,
        request_id: String,
        hash: String,
        policy: Policy,
    ) -> ApiResult<Policy> {
        let p = policy.clone();
        let stored = idempotency::run(&self.db, "SetPolicy".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let exists: Option<(String,)> =
                    sqlx::query_as("SELECT version FROM policies WHERE version = $1")
                        .bind(&p.version)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_some() {
                    return Err(ApiError::InvalidState(format!(
                        "policy version {} already exists",
                        p.version
                    )));
                }
                let (seq,): (i64,) =
                    sqlx::query_as("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM policies")
                        .fetch_one(&mut *tx)
                        .await?;
                sqlx::query(
                    "INSERT INTO policies (version, seq, body, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&p.version)
                .bind(seq + 1)
                .bind(serde_json::to_string(&p).map_err(ApiError::internal)?)
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
                Ok(pb::SetPolicyResponse { policy: None })
            })
        })
        .await;
        stored?;
        self.cache.delete(POLICY_KEY).await;
        Ok(policy)
    }

    /// Decides an application and records the decision with its inputs.
    pub async fn decide(
        &self,
        request_id: String,
        hash: String,
        input: pb::DecisionInput,
    ) -> ApiResult<pb::Decision> {
        let policy = self.current_policy().await?;
        let domain_input = to_domain(&input);
        let outcome = domain::decide(&domain_input, &policy);
        let scope = format!("DecideApplication:{}", input.partner_id);
        idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let now = now_millis();
                // Decided in the request's currency (declined unless it is the policy's).
                let currency = domain_currency(&input);
                let money = |m: i64| Some(Money { minor_units: m, currency_code: currency.clone() });
                let decision = pb::Decision {
                    decision_id: format!("dec_{}", uuid::Uuid::now_v7().simple()),
                    outcome: if outcome.approved {
                        pb::DecisionOutcome::Approved
                    } else {
                        pb::DecisionOutcome::Declined
                    } as i32,
                    reason_codes: outcome.reasons.clone(),
                    pd_bps: outcome.pd_bps,
                    grade: outcome.grade.to_string(),
                    approved_amount: money(outcome.approved_amount),
                    approved_term_months: outcome.approved_term_months,
                    annual_rate_bps: outcome.annual_rate_bps,
                    all_in_apr_bps: outcome.all_in_apr_bps,
                    fee_bps: policy.fee_bps,
                    policy_version: format!("{}/{}", policy.version, domain::SCORECARD_VERSION),
                    input: Some(input.clone()),
                    decided_at: Some(timestamp(now)),
                };
                sqlx::query(
                    "INSERT INTO decisions (decision_id, application_id, partner_id, outcome, policy_version, body, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&decision.decision_id)
                .bind(&input.application_id)
                .bind(&input.partner_id)
                .bind(if outcome.approved { "APPROVED" } else { "DECLINED" })
                .bind(&decision.policy_version)
                .bind(hex::encode(decision.encode_to_vec()))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Ok(decision)
            })
        })
        .await
    }

    /// A stored decision of the calling partner.
    pub async fn get_decision(
        &self,
        partner_id: &str,
        decision_id: &str,
    ) -> ApiResult<pb::Decision> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT body FROM decisions WHERE decision_id = $1 AND partner_id = $2")
                .bind(decision_id)
                .bind(partner_id)
                .fetch_optional(&self.db.pool)
                .await?;
        let (body,) = row.ok_or_else(|| ApiError::NotFound("decision".into()))?;
        let bytes = hex::decode(body).map_err(ApiError::internal)?;
        pb::Decision::decode(bytes.as_slice()).map_err(ApiError::internal)
    }
}

fn minor(m: &Option<Money>) -> i64 {
    m.as_ref().map(|m| m.minor_units).unwrap_or(0)
}

/// The currency of an input's amounts: its requested amount's.
fn domain_currency(i: &pb::DecisionInput) -> String {
    i.requested_amount
        .as_ref()
        .map(|m| m.currency_code.clone())
        .unwrap_or_default()
}

fn to_domain(i: &pb::DecisionInput) -> Input {
    use colend_contracts::common::v1::RepaymentMethod as R;
    Input {
        currency: domain_currency(i),
        age: i.applicant_age,
        region_code: i.region_code.clone(),
        purpose: i.purpose.clone(),
        requested_amount: minor(&i.requested_amount),
        term_months: i.term_months,
        method: match R::try_from(i.repayment_method) {
            Ok(R::EqualPrincipal) => domain::Method::EqualPrincipal,
            Ok(R::InterestFirst) => domain::Method::InterestFirst,
            _ => domain::Method::EqualInstalment,
        },
        partner_score: i.partner_score,
        years_in_business: i.years_in_business,
        annual_tax_revenue: minor(&i.annual_tax_revenue),
        invoice_turnover_12m: minor(&i.invoice_turnover_12m),
        turnover_trend_bps: i.turnover_trend_bps,
        open_loans_elsewhere: i.open_loans_elsewhere,
        watchlist_hit: i.watchlist_hit,
        existing_exposure: minor(&i.existing_exposure),
        individual_business: i.individual_business,
        partner_approved: i.partner_approved,
    }
}
