//! Acquisition API tests against real servers on port 0, on both backends.
//! Acquisition drives the journey through KYC, credit and funding, so those
//! run beside it on the same listener.
use colend_contracts::acquisition::v1::{
    self as pb, acquisition_service_client::AcquisitionServiceClient,
};
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::funding::v1::{self as fpb, funding_service_client::FundingServiceClient};
use colend_core::{CreditCode, ResidentId};
use colend_testkit::{BOTH, Backend, TestServer, as_bank, as_partner, reason, violated_fields};
use tonic::Code;

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

fn submission(
    rid: &str,
    id_body: &str,
    cc_body: &str,
    purpose: pb::LoanPurpose,
) -> pb::SubmitApplicationRequest {
    pb::SubmitApplicationRequest {
        request_id: rid.into(),
        business: Some(pb::Business {
            name: "杭州嘉禾电子有限公司".into(),
            credit_code: format!("{cc_body}{}", CreditCode::check_char(cc_body).unwrap()),
            years_in_business: 6,
        }),
        legal_representative: Some(pb::LegalRepresentative {
            name: "陈静".into(),
            resident_id: format!("{id_body}{}", ResidentId::check_char(id_body).unwrap()),
            mobile: "13912345678".into(),
        }),
        requested_amount: cny(20_000_000),
        term_months: 12,
        purpose: purpose as i32,
        repayment_method: RepaymentMethod::EqualPrincipal as i32,
        partner_score: 720,
        scenario: Some(pb::ScenarioData {
            annual_tax_revenue: cny(300_000_000),
            invoice_turnover_12m: cny(350_000_000),
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

async fn watch_until_settled(
    c: &mut AcquisitionServiceClient<tonic::transport::Channel>,
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
        ) {
            break;
        }
    }
    last.unwrap()
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
    colend_testkit::assert_serving(s.channel.clone(), colend_acquisition::SERVICE).await;
    let mut f = FundingServiceClient::new(s.channel.clone());
    f.whitelist_institution(as_bank(fpb::WhitelistInstitutionRequest {
        request_id: "wl".into(),
        entry: Some(fpb::WhitelistEntry {
            institution_id: "p1".into(),
            kind: fpb::InstitutionKind::Partner as i32,
            effective_from: "2026-01-01".into(),
            effective_to: String::new(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    f.set_bank_reference(as_bank(fpb::SetBankReferenceRequest {
        request_id: "ref".into(),
        reference: Some(fpb::BankReference {
            net_tier1_capital: cny(1_000_000_000_000),
            total_loan_balance: cny(10_000_000_000_000),
            as_of: "2026-09-30".into(),
        }),
    }))
    .await
    .unwrap();
    f.upsert_agreement(as_bank(fpb::UpsertAgreementRequest {
        request_id: "ag".into(),
        agreement: Some(fpb::Agreement {
            partner_id: "p1".into(),
            partner_share_bps: 3_500,
            bank_rate_bps: 800,
            partner_rate_bps: 1_000,
            daily_quota: cny(1_000_000_000),
            total_quota: cny(1_000_000_000),
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    let mut c = AcquisitionServiceClient::new(s.channel.clone());

    // Invalid identifiers are refused field by field.
    let mut bad = submission(
        "s0",
        "33010619850312456",
        "91330106MA2GL0001",
        pb::LoanPurpose::WorkingCapital,
    );
    bad.legal_representative.as_mut().unwrap().resident_id = "330106198503124560".into();
    bad.business.as_mut().unwrap().credit_code = "91330106MA2GL0001I".into();
    bad.consent = None;
    bad.partner_decision = None;
    let e = c
        .submit_application(as_partner("p1", bad))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let fields = violated_fields(&e);
    for f in [
        "legal_representative.resident_id",
        "business.credit_code",
        "consent",
    ] {
        assert!(fields.contains(&f.to_string()), "{f} not in {fields:?}");
    }

    // A good application goes through KYC, credit and funding.
    let sub = submission(
        "s1",
        "33010619850312456",
        "91330106MA2GL0001",
        pb::LoanPurpose::WorkingCapital,
    );
    let app = c
        .submit_application(as_partner("p1", sub.clone()))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert_eq!(app.status, pb::ApplicationStatus::Submitted as i32);
    assert!(app.masked_resident_id.contains("****"));
    // Replay: the same application; a duplicate borrower: refused.
    let replay = c
        .submit_application(as_partner("p1", sub.clone()))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert_eq!(replay.application_id, app.application_id);
    let mut dup = sub.clone();
    dup.request_id = "s1-other".into();
    let e = c
        .submit_application(as_partner("p1", dup.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(reason(&e), "DUPLICATE_APPLICATION");
    let mut changed = sub.clone();
    changed.term_months = 24;
    let e = c
        .submit_application(as_partner("p1", changed))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "IDEMPOTENCY_KEY_REUSED");

    // Personal data is sealed at rest: the stored submission holds no resident ID or phone in clear.
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let (url, table) = match &s.backends.database_url {
            Some(u) => (u.clone(), "acquisition.applications"),
            None => (
                format!("sqlite://{}/acquisition.db", s.backends.data_dir.display()),
                "applications",
            ),
        };
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT request_body, masked_resident_id FROM {table}"
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let id = sub
            .legal_representative
            .as_ref()
            .unwrap()
            .resident_id
            .clone();
        for (body, masked) in rows {
            assert!(body.starts_with("v1."), "sealed");
            assert!(
                !body.contains(&id)
                    && !body.contains(&hex_of(&id))
                    && !body.contains("13912345678")
            );
            assert!(!masked.contains(&id[4..14]));
        }
    }
    let done = watch_until_settled(&mut c, "p1", &app.application_id).await;
    assert_eq!(
        done.status,
        pb::ApplicationStatus::FundsReserved as i32,
        "{done:?}"
    );
    let funding = done.funding.clone().unwrap();
    let (bank, partner) = (
        funding.bank_amount.unwrap().minor_units,
        funding.partner_amount.unwrap().minor_units,
    );
    assert_eq!(
        bank + partner,
        done.decision
            .as_ref()
            .unwrap()
            .approved_amount
            .as_ref()
            .unwrap()
            .minor_units
    );
    assert!(partner * 10_000 >= (bank + partner) * 3_500);
    let statuses: Vec<i32> = done.history.iter().map(|h| h.status).collect();
    assert_eq!(
        statuses,
        vec![
            pb::ApplicationStatus::Submitted as i32,
            pb::ApplicationStatus::KycPassed as i32,
            pb::ApplicationStatus::Approved as i32,
            pb::ApplicationStatus::FundsReserved as i32
        ]
    );

    // Disbursement reaches the application's history.
    f.book_disbursement(as_bank(fpb::BookDisbursementRequest {
        request_id: "disb".into(),
        loan_id: funding.loan_id.clone(),
        // Today in funding's business zone: not before the day it was reserved.
        value_date: colend_platform::time::format_date(colend_platform::time::business_today(
            colend_funding::app::time_zone_from_env().unwrap(),
        )),
        bank_transaction_ref: "BNK-9".into(),
    }))
    .await
    .unwrap();
    let mut status = 0;
    for _ in 0..100 {
        status = c
            .get_application(as_partner(
                "p1",
                pb::GetApplicationRequest {
                    application_id: app.application_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .application
            .unwrap()
            .status;
        if status == pb::ApplicationStatus::Disbursed as i32 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, pb::ApplicationStatus::Disbursed as i32);
    // The refused request id keeps its answer; once disbursed the borrower is
    // no longer in flight, so a new request id is accepted.
    let e = c
        .submit_application(as_partner("p1", dup.clone()))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "DUPLICATE_APPLICATION");
    dup.request_id = "s1-later".into();
    c.submit_application(as_partner("p1", dup)).await.unwrap();

    // A prohibited purpose is declined with a reason code.
    let declined = c
        .submit_application(as_partner(
            "p1",
            submission(
                "s2",
                "44030519900101123",
                "91440305MA5F00012",
                pb::LoanPurpose::Securities,
            ),
        ))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    let d = watch_until_settled(&mut c, "p1", &declined.application_id).await;
    assert_eq!(d.status, pb::ApplicationStatus::Declined as i32);
    assert_eq!(d.reason_codes, vec!["PROHIBITED_PURPOSE"]);

    // Both lenders must approve: the partner's "no" declines the co-funded loan.
    let mut no = submission(
        "s3",
        "37020219880808123",
        "91370202MA3C00013",
        pb::LoanPurpose::Inventory,
    );
    no.partner_decision.as_mut().unwrap().approved = false;
    let no = c
        .submit_application(as_partner("p1", no))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    let d = watch_until_settled(&mut c, "p1", &no.application_id).await;
    assert_eq!(d.status, pb::ApplicationStatus::Declined as i32);
    assert_eq!(d.reason_codes, vec!["PARTNER_NOT_APPROVED"]);

    // Other partners see nothing; lists page.
    let e = c
        .get_application(as_partner(
            "p2",
            pb::GetApplicationRequest {
                application_id: app.application_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e2 = c
        .get_application(as_partner(
            "p2",
            pb::GetApplicationRequest {
                application_id: "app_nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (e2.code(), e2.message()));
    let l1 = c
        .list_applications(as_partner(
            "p1",
            pb::ListApplicationsRequest {
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l1.applications.len(), 2);
    let l2 = c
        .list_applications(as_partner(
            "p1",
            pb::ListApplicationsRequest {
                page_size: 2,
                page_token: l1.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l2.applications.len(), 2);
    assert!(l2.next_page_token.is_empty());
    let none = c
        .list_applications(as_partner("p2", pb::ListApplicationsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(none.applications.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn acquisition_api_embedded() {
    scenario(BOTH[0]).await;
}

#[tokio::test]
async fn acquisition_api_postgres_redis() {
    scenario(BOTH[1]).await;
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// What a loan owes on the value date of its last accrual: principal
/// outstanding, and interest, fees and penalty accrued but not paid, over
/// both funders.
fn owed(loan: &fpb::Loan) -> i64 {
    let v = |m: &Option<Money>| m.as_ref().map(|m| m.minor_units).unwrap_or(0);
    loan.balances
        .iter()
        .map(|b| {
            v(&b.principal_outstanding) + v(&b.interest_accrued) - v(&b.interest_paid)
                + v(&b.fee_accrued)
                - v(&b.fee_paid)
                + v(&b.penalty_accrued)
                - v(&b.penalty_paid)
        })
        .sum()
}

/// A loan repaid in full settles its application: REPAYING for the earlier
/// repayment, then SETTLED, terminal: WatchApplication ends there. And an
/// oversized submission is refused before it is decoded.
async fn settles(backend: Backend) {
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
    f.whitelist_institution(as_bank(fpb::WhitelistInstitutionRequest {
        request_id: "wl".into(),
        entry: Some(fpb::WhitelistEntry {
            institution_id: "p1".into(),
            kind: fpb::InstitutionKind::Partner as i32,
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    f.set_bank_reference(as_bank(fpb::SetBankReferenceRequest {
        request_id: "ref".into(),
        reference: Some(fpb::BankReference {
            net_tier1_capital: cny(1_000_000_000_000),
            total_loan_balance: cny(10_000_000_000_000),
            as_of: "2026-09-30".into(),
        }),
    }))
    .await
    .unwrap();
    f.upsert_agreement(as_bank(fpb::UpsertAgreementRequest {
        request_id: "ag".into(),
        agreement: Some(fpb::Agreement {
            partner_id: "p1".into(),
            partner_share_bps: 3_500,
            bank_rate_bps: 800,
            partner_rate_bps: 1_000,
            daily_quota: cny(1_000_000_000),
            total_quota: cny(1_000_000_000),
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    let mut c = AcquisitionServiceClient::new(s.channel.clone());
    let sub = submission(
        "st1",
        "33010619850312456",
        "91330106MA2GL0001",
        pb::LoanPurpose::WorkingCapital,
    );

    // Over 1 MiB: RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE with the limit.
    let mut big = sub.clone();
    big.business.as_mut().unwrap().name = "嘉".repeat(700_000);
    let e = c
        .submit_application(as_partner("p1", big))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(reason(&e), "REQUEST_TOO_LARGE");
    assert_eq!(
        colend_testkit::error_metadata(&e, "max_bytes").as_deref(),
        Some("1048576")
    );

    let app = c
        .submit_application(as_partner("p1", sub))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    let done = watch_until_settled(&mut c, "p1", &app.application_id).await;
    assert_eq!(done.status, pb::ApplicationStatus::FundsReserved as i32);
    let loan_id = done.funding.unwrap().loan_id;
    // The bank reads the partner's loan: the day it was reserved is the
    // value date of everything below.
    let loan = f
        .get_loan(as_bank(fpb::GetLoanRequest {
            loan_id: loan_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    let day = loan.reserved_on.clone();
    assert!(!day.is_empty());
    f.book_disbursement(as_bank(fpb::BookDisbursementRequest {
        request_id: "st-d".into(),
        loan_id: loan_id.clone(),
        value_date: day.clone(),
        bank_transaction_ref: "BNK-ST-D".into(),
    }))
    .await
    .unwrap();
    let repay = |rid: &str, amount: i64| fpb::BookRepaymentRequest {
        request_id: rid.into(),
        loan_id: loan_id.clone(),
        amount: cny(amount),
        value_date: day.clone(),
        bank_transaction_ref: format!("BNK-{rid}"),
    };
    let part = f
        .book_repayment(as_bank(repay("st-r1", 100)))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(part.status, fpb::LoanStatus::Disbursed as i32);
    // The rest of what is owed, on the same value date (nothing more accrues).
    let rest = owed(&part);
    assert!(rest > 0);
    let settled = f
        .book_repayment(as_bank(repay("st-r2", rest)))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(
        settled.status,
        fpb::LoanStatus::Settled as i32,
        "{settled:?}"
    );
    assert_eq!(owed(&settled), 0);

    // The application follows and its watch ends on SETTLED.
    let mut stream = c
        .watch_application(as_partner(
            "p1",
            pb::WatchApplicationRequest {
                application_id: app.application_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    // A bound against a hang, not a measure of speed.
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(m) = stream.message().await.unwrap() {
            last = m.application;
        }
    })
    .await
    .expect("the watch ends on a terminal status");
    let last = last.expect("at least the current state");
    assert_eq!(last.status, pb::ApplicationStatus::Settled as i32);
    let statuses: Vec<i32> = last.history.iter().map(|h| h.status).collect();
    assert_eq!(
        statuses[statuses.len() - 3..],
        [
            pb::ApplicationStatus::Disbursed as i32,
            pb::ApplicationStatus::Repaying as i32,
            pb::ApplicationStatus::Settled as i32
        ],
        "{statuses:?}"
    );
    // SETTLED is terminal: listed as such, for the partner and the bank.
    let listed = c
        .list_applications(as_bank(pb::ListApplicationsRequest {
            partner_id: "p1".into(),
            status: pb::ApplicationStatus::Settled as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].application_id, app.application_id);
    s.stop().await;
}

#[tokio::test]
async fn acquisition_settles_embedded() {
    settles(BOTH[0]).await;
}

#[tokio::test]
async fn acquisition_settles_postgres_redis() {
    settles(BOTH[1]).await;
}

/// ListApplications' first page under a database whose collation is not C
/// (on PostgreSQL the application id column is given an ICU collation, as a
/// database created with a non-C default has it; SQLite compares bytes):
/// pages newest first, every application once.
async fn list_under_any_collation(backend: Backend) {
    let dir = colend_testkit::TempDir::new();
    let b = colend_testkit::backends(backend, &dir).await;
    if b.database_url.is_some() {
        // Before the service prepares any statement on the table.
        let db = colend_acquisition::connect(&b).await.unwrap();
        sqlx::query(
            r#"ALTER TABLE applications ALTER COLUMN application_id TYPE TEXT COLLATE "en-x-icu""#,
        )
        .execute(&db.pool)
        .await
        .unwrap();
        db.pool.close().await;
    }
    let s = TestServer::start_with(b, dir, |mesh| async move {
        Ok(vec![
            colend_acquisition::register(mesh.clone()).await?,
            colend_kyc::register(mesh.clone()).await?,
            colend_credit::register(mesh.clone()).await?,
            colend_funding::register(mesh).await?,
        ])
    })
    .await;
    let mut c = AcquisitionServiceClient::new(s.channel.clone());
    let mut ids = Vec::new();
    for k in 1..=3 {
        let sub = submission(
            &format!("c{k}"),
            &format!("3301061985031245{k}"),
            &format!("91330106MA2GL000{k}"),
            pb::LoanPurpose::WorkingCapital,
        );
        let app = c
            .submit_application(as_partner("p1", sub))
            .await
            .unwrap()
            .into_inner()
            .application
            .unwrap();
        ids.push(app.application_id);
    }
    ids.reverse();
    for bank in [true, false] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let req = pb::ListApplicationsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            };
            let page = if bank {
                c.list_applications(as_bank(req)).await
            } else {
                c.list_applications(as_partner("p1", req)).await
            }
            .unwrap()
            .into_inner();
            assert!(
                !page.applications.is_empty(),
                "an empty page (bank: {bank})"
            );
            seen.extend(page.applications.into_iter().map(|a| a.application_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, ids, "bank: {bank}");
    }
    s.stop().await;
}

#[tokio::test]
async fn list_under_any_collation_embedded() {
    list_under_any_collation(BOTH[0]).await;
}

#[tokio::test]
async fn list_under_any_collation_postgres_redis() {
    list_under_any_collation(BOTH[1]).await;
}
