//! A replayed reservation tells the loan as it stands now: a caller that
//! lost the first answer and asks again after the reservation was voided or
//! disbursed is not told it is still RESERVED. And a reservation past its
//! expiry cannot be disbursed, swept or not.
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_testkit::{BOTH, Backend, TestServer, as_bank, as_service, reason};

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

fn reservation(app: &str) -> pb::ReserveFundingRequest {
    pb::ReserveFundingRequest {
        request_id: format!("{app}:funding"),
        application_id: app.into(),
        partner_id: "rp".into(),
        principal: cny(10_000_000),
        term_months: 6,
        annual_rate_bps: 1_200,
        repayment_method: RepaymentMethod::EqualInstalment as i32,
        borrower_key: format!("borrower-{app}"),
        annual_fee_bps: 100,
    }
}

fn disbursement(loan_id: &str, rid: &str) -> pb::BookDisbursementRequest {
    pb::BookDisbursementRequest {
        request_id: rid.into(),
        loan_id: loan_id.into(),
        // The business day funding runs on (its zone, as configured).
        value_date: colend_platform::time::format_date(colend_platform::time::business_today(
            colend_funding::app::time_zone_from_env().unwrap(),
        )),
        bank_transaction_ref: format!("bank-{rid}"),
    }
}

async fn scenario(backend: Backend, ttl_secs: u64) {
    let s = TestServer::start(backend, move |mesh| async move {
        let mut settings = colend_funding::app::Settings::from_env()?;
        settings.reservation_ttl = std::time::Duration::from_secs(ttl_secs);
        // The sweeper stays away: expiry is decided at disbursement here.
        settings.sweep_every = std::time::Duration::from_secs(3_600);
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    c.set_bank_reference(as_bank(pb::SetBankReferenceRequest {
        request_id: "ref".into(),
        reference: Some(pb::BankReference {
            net_tier1_capital: cny(1_000_000_000_000),
            total_loan_balance: cny(10_000_000_000_000),
            as_of: "2026-09-30".into(),
        }),
    }))
    .await
    .unwrap();
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "agr".into(),
        agreement: Some(pb::Agreement {
            partner_id: "rp".into(),
            partner_share_bps: 3_000,
            bank_rate_bps: 900,
            partner_rate_bps: 1_100,
            daily_quota: cny(100_000_000_000),
            total_quota: cny(100_000_000_000),
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.whitelist_institution(as_bank(pb::WhitelistInstitutionRequest {
        request_id: "wl".into(),
        entry: Some(pb::WhitelistEntry {
            institution_id: "rp".into(),
            kind: pb::InstitutionKind::Partner as i32,
            effective_from: "2026-01-01".into(),
            effective_to: String::new(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    let reserver = c.clone();
    let reserve = |app: &str| {
        let mut c = reserver.clone();
        let req = reservation(app);
        async move {
            c.reserve_funding(as_service("rp", req))
                .await
                .map(|r| r.into_inner().loan.unwrap())
        }
    };

    if ttl_secs > 60 {
        // Voided, then asked again with the same request id: VOID.
        let loan = reserve("a1").await.unwrap();
        assert_eq!(loan.status, pb::LoanStatus::Reserved as i32);
        c.release_funding(as_service(
            "rp",
            pb::ReleaseFundingRequest {
                request_id: "rel-a1".into(),
                loan_id: loan.loan_id.clone(),
                application_id: String::new(),
                reason: "bank declined".into(),
            },
        ))
        .await
        .unwrap();
        let again = reserve("a1").await.unwrap();
        assert_eq!(again.loan_id, loan.loan_id);
        assert_eq!(again.status, pb::LoanStatus::Void as i32);

        // Disbursed, then asked again: DISBURSED, with its schedule.
        let loan = reserve("a2").await.unwrap();
        c.book_disbursement(as_bank(disbursement(&loan.loan_id, "d-a2")))
            .await
            .unwrap();
        let again = reserve("a2").await.unwrap();
        assert_eq!(again.status, pb::LoanStatus::Disbursed as i32);
        assert!(!again.schedule.is_empty());

        // Still reserved: the stored answer, unchanged.
        let loan = reserve("a3").await.unwrap();
        assert_eq!(reserve("a3").await.unwrap(), loan);
    } else {
        // Past its expiry, not yet swept: the disbursement is refused.
        let loan = reserve("b1").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(ttl_secs * 1_000 + 200)).await;
        let e = c
            .book_disbursement(as_bank(disbursement(&loan.loan_id, "d-b1")))
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "INVALID_STATE", "{e:?}");
        assert!(e.message().contains("expired"), "{}", e.message());
    }
    s.stop().await;
}

#[tokio::test]
async fn a_replayed_reservation_tells_the_loan_as_it_stands() {
    for backend in BOTH {
        scenario(backend, 86_400).await;
    }
}

#[tokio::test]
async fn an_expired_reservation_cannot_be_disbursed() {
    for backend in BOTH {
        scenario(backend, 1).await;
    }
}
