//! The gRPC face of credit.
use crate::app::Credit;
use crate::domain::Policy;
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::credit::v1::{
    self as pb,
    credit_service_server::{CreditService, CreditServiceServer},
};
use colend_platform::idempotency::request_hash;
use colend_platform::{Amount, ApiError, Violations, caller};
use tonic::{Request, Response, Status};

pub fn server(app: Credit) -> CreditServiceServer<CreditGrpc> {
    // Requests are small: anything above 1 MiB is refused before decoding.
    CreditServiceServer::new(CreditGrpc { app })
        .max_decoding_message_size(colend_platform::grpc::MAX_REQUEST_BYTES)
        .max_encoding_message_size(colend_platform::grpc::MAX_RESPONSE_BYTES)
}

pub struct CreditGrpc {
    app: Credit,
}

fn to_pb(p: &Policy) -> pb::Policy {
    let money = |m: i64| {
        Some(Money {
            minor_units: m,
            currency_code: p.currency.clone(),
        })
    };
    pb::Policy {
        version: p.version.clone(),
        min_age: p.min_age,
        max_age: p.max_age,
        allowed_region_prefixes: p.allowed_region_prefixes.clone(),
        prohibited_purposes: p.prohibited_purposes.clone(),
        max_open_loans_elsewhere: p.max_open_loans_elsewhere,
        product_max_amount: money(p.product_max_amount),
        product_min_amount: money(p.product_min_amount),
        min_term_months: p.min_term_months,
        max_term_months: p.max_term_months,
        funding_cost_bps: p.funding_cost_bps,
        operating_cost_bps: p.operating_cost_bps,
        lgd_bps: p.lgd_bps,
        margin_bps: p.margin_bps,
        fee_bps: p.fee_bps,
        apr_cap_bps: p.apr_cap_bps,
        max_pd_bps: p.max_pd_bps,
        max_bullet_term_months: p.max_bullet_term_months,
        per_borrower_cap: money(p.per_borrower_cap),
        individual_borrower_cap: money(p.individual_borrower_cap),
        day_count_basis: p.day_count_basis,
    }
}

fn from_pb(p: &pb::Policy, v: &mut Violations) -> Policy {
    v.money(
        "policy.product_max_amount",
        &p.product_max_amount,
        Amount::Required,
    );
    v.money(
        "policy.product_min_amount",
        &p.product_min_amount,
        Amount::Required,
    );
    let currency = p
        .product_max_amount
        .as_ref()
        .map(|m| m.currency_code.clone())
        .unwrap_or_default();
    // The policy lends in one currency: every amount of it is in that one.
    let of = "policy.product_max_amount";
    for (field, m) in [
        (
            "policy.product_min_amount.currency_code",
            &p.product_min_amount,
        ),
        ("policy.per_borrower_cap.currency_code", &p.per_borrower_cap),
        (
            "policy.individual_borrower_cap.currency_code",
            &p.individual_borrower_cap,
        ),
    ] {
        v.same_currency(field, m, &currency, of);
    }
    let policy = Policy {
        version: p.version.clone(),
        min_age: p.min_age,
        max_age: p.max_age,
        allowed_region_prefixes: p.allowed_region_prefixes.clone(),
        prohibited_purposes: p.prohibited_purposes.clone(),
        max_open_loans_elsewhere: p.max_open_loans_elsewhere,
        currency,
        product_max_amount: p
            .product_max_amount
            .as_ref()
            .map(|m| m.minor_units)
            .unwrap_or(0),
        product_min_amount: p
            .product_min_amount
            .as_ref()
            .map(|m| m.minor_units)
            .unwrap_or(0),
        min_term_months: p.min_term_months,
        max_term_months: p.max_term_months,
        max_bullet_term_months: p.max_bullet_term_months,
        per_borrower_cap: p
            .per_borrower_cap
            .as_ref()
            .map(|m| m.minor_units)
            .unwrap_or(0),
        individual_borrower_cap: p
            .individual_borrower_cap
            .as_ref()
            .map(|m| m.minor_units)
            .unwrap_or(0),
        day_count_basis: p.day_count_basis,
        funding_cost_bps: p.funding_cost_bps,
        operating_cost_bps: p.operating_cost_bps,
        lgd_bps: p.lgd_bps,
        margin_bps: p.margin_bps,
        fee_bps: p.fee_bps,
        apr_cap_bps: p.apr_cap_bps,
        max_pd_bps: p.max_pd_bps,
    };
    // An invalid currency is reported on product_max_amount already.
    for (field, problem) in policy
        .problems()
        .into_iter()
        .filter(|(f, _)| *f != "currency")
    {
        v.add(&format!("policy.{field}"), problem);
    }
    policy
}

#[tonic::async_trait]
impl CreditService for CreditGrpc {
    async fn decide_application(
        &self,
        request: Request<pb::DecideApplicationRequest>,
    ) -> Result<Response<pb::DecideApplicationResponse>, Status> {
        let caller = caller::partner_id(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        let Some(input) = r.input.clone() else {
            return Err(ApiError::field("input", "is required").into());
        };
        v.check(
            !input.application_id.is_empty() && input.application_id.len() <= 64,
            "input.application_id",
            "must be 1 to 64 characters",
        );
        v.check(
            input.partner_id == caller,
            "input.partner_id",
            "must be the calling partner",
        );
        v.check(
            (0..=150).contains(&input.applicant_age),
            "input.applicant_age",
            "must be 0 to 150",
        );
        v.check(!input.purpose.is_empty(), "input.purpose", "is required");
        v.money(
            "input.requested_amount",
            &input.requested_amount,
            Amount::Required,
        );
        v.money(
            "input.annual_tax_revenue",
            &input.annual_tax_revenue,
            Amount::Optional,
        );
        v.money(
            "input.invoice_turnover_12m",
            &input.invoice_turnover_12m,
            Amount::Optional,
        );
        v.money(
            "input.existing_exposure",
            &input.existing_exposure,
            Amount::Optional,
        );
        // One currency per decision: the requested amount's.
        if let Some(requested) = &input.requested_amount {
            let c = requested.currency_code.as_str();
            for (field, m) in [
                (
                    "input.annual_tax_revenue.currency_code",
                    &input.annual_tax_revenue,
                ),
                (
                    "input.invoice_turnover_12m.currency_code",
                    &input.invoice_turnover_12m,
                ),
                (
                    "input.existing_exposure.currency_code",
                    &input.existing_exposure,
                ),
            ] {
                v.same_currency(field, m, c, "input.requested_amount");
            }
        }
        v.check(
            (1..=360).contains(&input.term_months),
            "input.term_months",
            "must be 1 to 360",
        );
        v.check(
            matches!(
                RepaymentMethod::try_from(input.repayment_method),
                Ok(RepaymentMethod::EqualInstalment
                    | RepaymentMethod::EqualPrincipal
                    | RepaymentMethod::InterestFirst)
            ),
            "input.repayment_method",
            "must be EQUAL_INSTALMENT, EQUAL_PRINCIPAL or INTEREST_FIRST",
        );
        v.check(
            (0..=1000).contains(&input.partner_score),
            "input.partner_score",
            "must be 0 to 1000",
        );
        v.check(
            input.years_in_business >= 0,
            "input.years_in_business",
            "must not be negative",
        );
        v.check(
            input.open_loans_elsewhere >= 0,
            "input.open_loans_elsewhere",
            "must not be negative",
        );
        v.into_result()?;
        let hash = request_hash(&r);
        let decision = self.app.decide(r.request_id, hash, input).await?;
        Ok(Response::new(pb::DecideApplicationResponse {
            decision: Some(decision),
        }))
    }

    async fn get_decision(
        &self,
        request: Request<pb::GetDecisionRequest>,
    ) -> Result<Response<pb::GetDecisionResponse>, Status> {
        let caller = caller::partner_id(&request)?;
        let r = request.into_inner();
        let d = self.app.get_decision(&caller, &r.decision_id).await?;
        Ok(Response::new(pb::GetDecisionResponse { decision: Some(d) }))
    }

    async fn get_policy(
        &self,
        _request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let p = self.app.current_policy().await?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some(to_pb(&p)),
        }))
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        let Some(p) = &r.policy else {
            return Err(ApiError::field("policy", "is required").into());
        };
        let policy = from_pb(p, &mut v);
        v.into_result()?;
        let hash = request_hash(&r);
        let stored = self.app.set_policy(r.request_id, hash, policy).await?;
        Ok(Response::new(pb::SetPolicyResponse {
            policy: Some(to_pb(&stored)),
        }))
    }
}
