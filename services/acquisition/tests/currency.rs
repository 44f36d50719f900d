//! The loan's currency is the application's, end to end, against real
//! servers on port 0 (acquisition with KYC, credit and funding on the same
//! listener), on both backends: codes that are not active ISO 4217
//! currencies are refused naming the field; a currency the bank does not
//! lend in (its credit policy's, the partner's agreement's) is refused at
//! submission; one that reaches funding in another currency than the bank's
//! reference data ends FUNDING_REJECTED with CURRENCY_MISMATCH; with USD
//! everywhere the loan is in USD.
use colend_contracts::acquisition::v1::{
    self as pb, acquisition_service_client::AcquisitionServiceClient,
};
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::credit::v1::{self as cpb, credit_service_client::CreditServiceClient};
use colend_contracts::funding::v1::{self as fpb, funding_service_client::FundingServiceClient};
use colend_core::{CreditCode, ResidentId};
use colend_testkit::{
    BOTH, Backend, TestServer, as_bank, as_partner, error_metadata, reason, violated_fields,
};
use tonic::Code;
use tonic::transport::Channel;

fn money(m: i64, currency: &str) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: currency.into(),
    })
}

/// An application for borrower `n` (a distinct person and business each).
fn submission(rid: &str, n: u32, currency: &str) -> pb::SubmitApplicationRequest {
    let id_body = format!("33010619850312{:03}", 400 + n);
    let cc_body = format!("91330106MA2GL{:04}", 100 + n);
    pb::SubmitApplicationRequest {
        request_id: rid.into(),
        business: Some(pb::Business {
            name: "杭州嘉禾电子有限公司".into(),
            credit_code: format!("{cc_body}{}", CreditCode::check_char(&cc_body).unwrap()),
            years_in_business: 6,
        }),
        legal_representative: Some(pb::LegalRepresentative {
            name: "陈静".into(),
            resident_id: format!("{id_body}{}", ResidentId::check_char(&id_body).unwrap()),
            mobile: "13912345678".into(),
        }),
        requested_amount: money(20_000_000, currency),
        term_months: 12,
        purpose: pb::LoanPurpose::WorkingCapital as i32,
        repayment_method: RepaymentMethod::EqualPrincipal as i32,
        partner_score: 720,
        scenario: Some(pb::ScenarioData {
            annual_tax_revenue: money(300_000_000, currency),
            invoice_turnover_12m: money(350_000_000, currency),
            turnover_trend_bps: 800,
            open_loans_elsewhere: 1,
        }),
        consent: Some(pb::Consent {
            scopes: vec!["credit_report".into()],
            granted_at: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            channel: "app".into(),
            text_version: "v1".into(),
        }),
        partner_decision: Some(pb::PartnerDecision {
            approved: true,
            reference: format!("partner-{rid}"),
        }),
    }
}

async fn settled(
    c: &mut AcquisitionServiceClient<Channel>,
    partner: &str,
    id: &str,
) -> pb::Application {
    let mut s = c
        .watch_application(as_partner(
            partner,
            pb::WatchApplicationRequest {
                application_id: id.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(m) = s.message().await.unwrap() {
        let a = m.application.unwrap();
        let st = pb::ApplicationStatus::try_from(a.status).unwrap();
        last = Some(a);
        if matches!(
            st,
            pb::ApplicationStatus::FundsReserved
                | pb::ApplicationStatus::Declined
                | pb::ApplicationStatus::KycRejected
                | pb::ApplicationStatus::FundingRejected
                | pb::ApplicationStatus::Failed
                | pb::ApplicationStatus::Parked
        ) {
            break;
        }
    }
    last.unwrap()
}

async fn set_up_partner(f: &mut FundingServiceClient<Channel>, partner: &str, currency: &str) {
    f.whitelist_institution(as_bank(fpb::WhitelistInstitutionRequest {
        request_id: format!("wl-{partner}"),
        entry: Some(fpb::WhitelistEntry {
            institution_id: partner.into(),
            kind: fpb::InstitutionKind::Partner as i32,
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    f.upsert_agreement(as_bank(fpb::UpsertAgreementRequest {
        request_id: format!("ag-{partner}"),
        agreement: Some(fpb::Agreement {
            partner_id: partner.into(),
            partner_share_bps: 3_500,
            bank_rate_bps: 800,
            partner_rate_bps: 1_000,
            daily_quota: money(1_000_000_000, currency),
            total_quota: money(1_000_000_000, currency),
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
}

async fn reference(f: &mut FundingServiceClient<Channel>, currency: &str) {
    f.set_bank_reference(as_bank(fpb::SetBankReferenceRequest {
        request_id: format!("ref-{currency}"),
        reference: Some(fpb::BankReference {
            net_tier1_capital: money(1_000_000_000_000, currency),
            total_loan_balance: money(10_000_000_000_000, currency),
            as_of: "2026-09-30".into(),
        }),
    }))
    .await
    .unwrap();
}

fn code(m: &Option<Money>) -> &str {
    m.as_ref().map_or("", |m| m.currency_code.as_str())
}

async fn loans(f: &mut FundingServiceClient<Channel>) -> Vec<fpb::Loan> {
    f.list_loans(as_bank(fpb::ListLoansRequest {
        page_size: 500,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
    .loans
}

async fn scenario(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![
            colend_acquisition::register(mesh.clone()).await?,
            colend_kyc::register(mesh.clone()).await?,
            colend_credit::register(mesh.clone()).await?,
            colend_funding::register(mesh).await?,
        ])
    })
    .await;
    let mut f = FundingServiceClient::new(s.channel.clone());
    let mut credit = CreditServiceClient::new(s.channel.clone());
    let mut c = AcquisitionServiceClient::new(s.channel.clone());
    // The bank lends in CNY (its default policy, its reference data); p1's
    // agreement is in CNY.
    reference(&mut f, "CNY").await;
    set_up_partner(&mut f, "p1", "CNY").await;

    // Not active ISO 4217 currencies: invalid, naming the field.
    for (i, bad) in ["XXX", "ABC", "XTS", "XAU", "usd"].iter().enumerate() {
        let mut sub = submission(&format!("bad-{bad}"), i as u32, bad);
        sub.scenario = None;
        let e = c
            .submit_application(as_partner("p1", sub))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(
            violated_fields(&e),
            vec!["requested_amount.currency_code"],
            "{bad}"
        );
    }
    // Scenario amounts in another currency than the request's.
    let mut mixed = submission("mixed", 9, "CNY");
    mixed.scenario.as_mut().unwrap().annual_tax_revenue = money(1, "USD");
    let e = c
        .submit_application(as_partner("p1", mixed))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&e),
        vec!["scenario.annual_tax_revenue.currency_code"]
    );

    // USD where the bank lends in CNY: refused at submission, nothing recorded.
    let e = c
        .submit_application(as_partner("p1", submission("usd-1", 10, "USD")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(reason(&e), "CURRENCY_MISMATCH");
    assert_eq!(error_metadata(&e, "expected").as_deref(), Some("CNY"));
    let listed = c
        .list_applications(as_partner("p1", pb::ListApplicationsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert!(listed.is_empty(), "{listed:?}");

    // The bank's policy moves to USD; p2's agreement is in USD; the bank's
    // reference data (rules C2, C3) is still in CNY: the journey reaches
    // funding, which refuses to count USD against CNY.
    let mut policy = credit
        .get_policy(as_bank(cpb::GetPolicyRequest {}))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    policy.version = "usd-1".into();
    for m in [
        &mut policy.product_max_amount,
        &mut policy.product_min_amount,
        &mut policy.per_borrower_cap,
        &mut policy.individual_borrower_cap,
    ] {
        m.as_mut().unwrap().currency_code = "USD".into();
    }
    credit
        .set_policy(as_bank(cpb::SetPolicyRequest {
            request_id: "policy-usd".into(),
            policy: Some(policy),
        }))
        .await
        .unwrap();
    set_up_partner(&mut f, "p2", "USD").await;
    let app = c
        .submit_application(as_partner("p2", submission("usd-2", 11, "USD")))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert_eq!(code(&app.requested_amount), "USD");
    let done = settled(&mut c, "p2", &app.application_id).await;
    assert_eq!(
        done.status,
        pb::ApplicationStatus::FundingRejected as i32,
        "{done:?}"
    );
    assert_eq!(done.reason_codes, vec!["CURRENCY_MISMATCH".to_string()]);
    // Credit decided in USD.
    assert_eq!(
        code(&done.decision.as_ref().unwrap().approved_amount),
        "USD"
    );
    assert!(loans(&mut f).await.is_empty(), "no loan in any currency");

    // USD everywhere: the loan is in USD, end to end.
    reference(&mut f, "USD").await;
    let app = c
        .submit_application(as_partner("p2", submission("usd-3", 12, "USD")))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    let done = settled(&mut c, "p2", &app.application_id).await;
    assert_eq!(
        done.status,
        pb::ApplicationStatus::FundsReserved as i32,
        "{done:?}"
    );
    let funded = done.funding.unwrap();
    for m in [
        &funded.principal,
        &funded.bank_amount,
        &funded.partner_amount,
    ] {
        assert_eq!(code(m), "USD");
    }
    let loan = f
        .book_disbursement(as_bank(fpb::BookDisbursementRequest {
            request_id: "disb-usd".into(),
            loan_id: funded.loan_id.clone(),
            value_date: colend_platform::time::format_date(colend_platform::time::business_today(
                colend_funding::app::time_zone_from_env().unwrap(),
            )),
            bank_transaction_ref: "BNK-USD".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(code(&loan.principal), "USD");
    assert!(loan.schedule.iter().all(|i| code(&i.total) == "USD"));
    // Every loan is in its application's currency.
    for l in loans(&mut f).await {
        assert_eq!(code(&l.principal), "USD", "{l:?}");
    }

    // Now a CNY application is the one refused at submission.
    let e = c
        .submit_application(as_partner("p1", submission("cny-1", 13, "CNY")))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CURRENCY_MISMATCH");
    assert_eq!(error_metadata(&e, "expected").as_deref(), Some("USD"));
    s.stop().await;
}

#[tokio::test]
async fn currency_end_to_end_embedded() {
    scenario(BOTH[0]).await;
}

#[tokio::test]
async fn currency_end_to_end_postgres_redis() {
    scenario(BOTH[1]).await;
}
