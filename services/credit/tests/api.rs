//! Credit API tests against a real server on port 0, on both backends.
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::credit::v1::{self as pb, credit_service_client::CreditServiceClient};
use colend_testkit::{
    BOTH, Backend, TestServer, as_bank, as_partner, as_service, reason, violated_fields,
};
use tonic::Code;

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

fn input(app: &str, purpose: &str, age: i32) -> pb::DecisionInput {
    pb::DecisionInput {
        application_id: app.into(),
        partner_id: "p1".into(),
        applicant_age: age,
        region_code: "350102".into(),
        purpose: purpose.into(),
        requested_amount: cny(30_000_000),
        term_months: 12,
        repayment_method: RepaymentMethod::EqualInstalment as i32,
        partner_score: 700,
        years_in_business: 6,
        annual_tax_revenue: cny(300_000_000),
        invoice_turnover_12m: cny(400_000_000),
        turnover_trend_bps: 1_000,
        open_loans_elsewhere: 0,
        watchlist_hit: false,
        existing_exposure: cny(0),
        individual_business: false,
        partner_approved: true,
        partner_decision_ref: "p1-risk-1".into(),
    }
}

async fn scenario(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_credit::register(mesh).await?])
    })
    .await;
    colend_testkit::assert_serving(s.channel.clone(), colend_credit::SERVICE).await;
    let mut c = CreditServiceClient::new(s.channel.clone());
    let decide = |rid: &str, i: pb::DecisionInput| {
        as_service(
            "p1",
            pb::DecideApplicationRequest {
                request_id: rid.into(),
                input: Some(i),
            },
        )
    };

    let a = c
        .decide_application(decide("d1", input("a1", "WORKING_CAPITAL", 40)))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(a.outcome, pb::DecisionOutcome::Approved as i32, "{a:?}");
    assert!(a.all_in_apr_bps <= 2_400 && a.all_in_apr_bps > a.annual_rate_bps);
    assert_eq!(a.approved_amount.as_ref().unwrap().minor_units, 30_000_000);
    assert!(a.policy_version.starts_with("default-1/"));

    // Same input and policy: same decision, whatever the request id.
    let b = c
        .decide_application(decide("d2", input("a1", "WORKING_CAPITAL", 40)))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(
        (b.pd_bps, &b.grade, b.annual_rate_bps, &b.approved_amount),
        (a.pd_bps, &a.grade, a.annual_rate_bps, &a.approved_amount)
    );

    // Hard rules decline with reason codes; the decision keeps its inputs.
    let d = c
        .decide_application(decide("d3", input("a2", "SECURITIES", 70)))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(d.outcome, pb::DecisionOutcome::Declined as i32);
    assert_eq!(
        d.reason_codes,
        vec!["AGE_OUT_OF_RANGE", "PROHIBITED_PURPOSE"]
    );
    let stored = c
        .get_decision(as_partner(
            "p1",
            pb::GetDecisionRequest {
                decision_id: d.decision_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(stored.input.unwrap().purpose, "SECURITIES");
    let e = c
        .get_decision(as_partner(
            "p2",
            pb::GetDecisionRequest {
                decision_id: d.decision_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A new policy version with a low cap makes the same loan unpriceable.
    let mut p = c
        .get_policy(as_bank(pb::GetPolicyRequest {}))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    p.version = "tight-1".into();
    p.apr_cap_bps = 500;
    c.set_policy(as_bank(pb::SetPolicyRequest {
        request_id: "p-1".into(),
        policy: Some(p.clone()),
    }))
    .await
    .unwrap();
    let t = c
        .decide_application(decide("d4", input("a3", "WORKING_CAPITAL", 40)))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(t.reason_codes, vec!["NOT_PRICEABLE_UNDER_CAP"]);
    assert!(t.policy_version.starts_with("tight-1/"));
    // The same version cannot be published twice.
    let e = c
        .set_policy(as_bank(pb::SetPolicyRequest {
            request_id: "p-2".into(),
            policy: Some(p.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_STATE");

    // An inconsistent policy is refused field by field.
    p.version = "bad".into();
    p.min_age = 70;
    p.max_age = 20;
    p.lgd_bps = 20_000;
    let e = c
        .set_policy(as_bank(pb::SetPolicyRequest {
            request_id: "p-3".into(),
            policy: Some(p),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let f = violated_fields(&e);
    assert!(
        f.contains(&"policy.min_age".to_string()) && f.contains(&"policy.lgd_bps".to_string()),
        "{f:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn credit_api_embedded() {
    scenario(BOTH[0]).await;
}

#[tokio::test]
async fn credit_api_postgres_redis() {
    scenario(BOTH[1]).await;
}
