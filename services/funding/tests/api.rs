//! Funding API tests against a real server on port 0, on both backends.
use colend_contracts::common::v1::{Funder, Money, RepaymentMethod};
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_testkit::{
    BOTH, Backend, TestServer, as_bank, as_internal, as_partner, as_service, reason,
    violated_fields,
};
use tonic::Code;

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

fn agreement(partner: &str, share: i32, total_quota: i64) -> pb::Agreement {
    pb::Agreement {
        partner_id: partner.into(),
        partner_share_bps: share,
        bank_rate_bps: 900,
        partner_rate_bps: 1_100,
        daily_quota: cny(1_000_000_000 * 100),
        total_quota: cny(total_quota),
        effective_from: "2026-01-01".into(),
        fee_partner_share_bps: 4_000,
        ..Default::default()
    }
}

fn reserve(partner: &str, app: &str, principal: i64) -> pb::ReserveFundingRequest {
    pb::ReserveFundingRequest {
        request_id: format!("r-{app}"),
        application_id: app.into(),
        partner_id: partner.into(),
        principal: cny(principal),
        term_months: 12,
        annual_rate_bps: 1_000,
        repayment_method: RepaymentMethod::EqualInstalment as i32,
        borrower_key: format!("borrower-{app}"),
        annual_fee_bps: 100,
    }
}

fn m(x: &Option<Money>) -> i64 {
    x.as_ref().map(|m| m.minor_units).unwrap_or(0)
}

async fn whitelist(c: &mut FundingServiceClient<tonic::transport::Channel>, partner: &str) {
    c.whitelist_institution(as_bank(pb::WhitelistInstitutionRequest {
        request_id: format!("wl-{partner}"),
        entry: Some(pb::WhitelistEntry {
            institution_id: partner.into(),
            kind: pb::InstitutionKind::Partner as i32,
            effective_from: "2026-01-01".into(),
            effective_to: String::new(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
}

async fn reference(
    c: &mut FundingServiceClient<tonic::transport::Channel>,
    rid: &str,
    tier1: i64,
    loans: i64,
) {
    c.set_bank_reference(as_bank(pb::SetBankReferenceRequest {
        request_id: rid.into(),
        reference: Some(pb::BankReference {
            net_tier1_capital: cny(tier1),
            total_loan_balance: cny(loans),
            as_of: "2026-09-30".into(),
        }),
    }))
    .await
    .unwrap();
}

fn quick_expiry() -> colend_funding::app::Settings {
    let mut s = colend_funding::app::Settings::from_env().unwrap();
    s.reservation_ttl = std::time::Duration::from_secs(1);
    s.sweep_every = std::time::Duration::from_secs(1);
    s
}

async fn scenario(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register(mesh).await?])
    })
    .await;
    colend_testkit::assert_serving(s.channel.clone(), colend_funding::SERVICE).await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    reference(&mut c, "ref-0", 1_000_000_000_000, 10_000_000_000_000).await;

    // Rule C1: a partner share below 30% is refused.
    let e = c
        .upsert_agreement(as_bank(pb::UpsertAgreementRequest {
            request_id: "a0".into(),
            agreement: Some(agreement("p1", 2_999, 1)),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&e), vec!["agreement.partner_share_bps"]);
    let e = c
        .reserve_funding(as_service("p1", reserve("p1", "x", 100)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NO_AGREEMENT");

    // Capacity for exactly 100 loans of 100,000.00 at a 30% share: 200 racing reservations get exactly 100.
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a1".into(),
        agreement: Some(agreement("p1", 3_000, 100 * 3_000_000)),
    }))
    .await
    .unwrap();
    // Rule C12: a partner that is not on the whitelist cannot reserve.
    let e = c
        .reserve_funding(as_service("p1", reserve("p1", "y", 100)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NOT_WHITELISTED");
    whitelist(&mut c, "p1").await;
    let results = futures::future::join_all((0..200).map(|i| {
        let mut c = c.clone();
        async move {
            c.reserve_funding(as_service(
                "p1",
                reserve("p1", &format!("app{i}"), 10_000_000),
            ))
            .await
        }
    }))
    .await;
    let ok: Vec<pb::Loan> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.get_ref().loan.clone().unwrap())
        .collect();
    assert_eq!(ok.len(), 100, "exactly the capacity is reserved");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::ResourceExhausted);
        assert_eq!(reason(r), "QUOTA_EXCEEDED");
    }
    for l in &ok {
        assert_eq!(m(&l.bank_amount) + m(&l.partner_amount), m(&l.principal));
        assert_eq!(m(&l.partner_amount), 3_000_000);
    }
    // A replayed reservation returns the same loan; a refused one stays refused.
    let again = c
        .reserve_funding(as_service(
            "p1",
            reserve("p1", &ok[0].application_id, 10_000_000),
        ))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(again.loan_id, ok[0].loan_id);

    // Releasing one frees room for exactly one more.
    c.release_funding(as_internal(pb::ReleaseFundingRequest {
        request_id: "rel1".into(),
        loan_id: ok[1].loan_id.clone(),
        reason: "test".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    c.reserve_funding(as_service("p1", reserve("p1", "late", 10_000_000)))
        .await
        .unwrap();
    let e = c
        .reserve_funding(as_service("p1", reserve("p1", "later", 10_000_000)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "QUOTA_EXCEEDED");
    assert_eq!(
        colend_testkit::error_metadata(&e, "limit").as_deref(),
        Some("PARTNER_TOTAL_QUOTA")
    );

    // Rule C2 at the cent: room for exactly one more bank share of 70,000.00 for partner p2.
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a2".into(),
        agreement: Some(agreement("p2", 3_000, 1_000_000_000_000)),
    }))
    .await
    .unwrap();
    whitelist(&mut c, "p2").await;
    reference(&mut c, "ref-c2", 4 * 7_000_000, 10_000_000_000_000).await;
    c.reserve_funding(as_service("p2", reserve("p2", "c2-a", 10_000_000)))
        .await
        .unwrap();
    let e = c
        .reserve_funding(as_service("p2", reserve("p2", "c2-b", 10_000_000)))
        .await
        .unwrap_err();
    assert_eq!(
        colend_testkit::error_metadata(&e, "limit").as_deref(),
        Some("C2_PARTNER_CONCENTRATION")
    );
    // Rule C3 at the cent: all co-lent loans against the total loan balance.
    let usage = c
        .get_bank_reference(as_bank(pb::GetBankReferenceRequest {
            partner_id: "p2".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m(&usage.partner_co_lent), 7_000_000);
    let all = m(&usage.co_lent_total);
    reference(&mut c, "ref-c3", 1_000_000_000_000, 2 * (all + 7_000_000)).await;
    c.reserve_funding(as_service("p2", reserve("p2", "c3-a", 10_000_000)))
        .await
        .unwrap();
    let e = c
        .reserve_funding(as_service("p2", reserve("p2", "c3-b", 10_000_000)))
        .await
        .unwrap_err();
    assert_eq!(
        colend_testkit::error_metadata(&e, "limit").as_deref(),
        Some("C3_CO_LENDING_RATIO")
    );
    reference(&mut c, "ref-1", 1_000_000_000_000, 10_000_000_000_000).await;

    // Disbursement generates the schedule; a repayment is split exactly.
    let loan = c
        .book_disbursement(as_bank(pb::BookDisbursementRequest {
            request_id: "d1".into(),
            loan_id: ok[0].loan_id.clone(),
            value_date: "2026-11-23".into(),
            bank_transaction_ref: "BNK-1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(loan.schedule.len(), 12);
    assert_eq!(
        loan.schedule.iter().map(|i| m(&i.principal)).sum::<i64>(),
        10_000_000
    );
    let e = c
        .book_disbursement(as_bank(pb::BookDisbursementRequest {
            request_id: "d2".into(),
            loan_id: ok[0].loan_id.clone(),
            value_date: "2026-11-23".into(),
            bank_transaction_ref: "BNK-2".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_STATE");
    let first = m(&loan.schedule[0].total) + 12_345;
    let rep = c
        .book_repayment(as_bank(pb::BookRepaymentRequest {
            request_id: "rp1".into(),
            loan_id: loan.loan_id.clone(),
            amount: cny(first),
            value_date: "2026-12-23".into(),
            bank_transaction_ref: "BNK-R1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let r = rep.repayment.unwrap();
    assert_eq!(
        r.allocations.iter().map(|a| m(&a.amount)).sum::<i64>(),
        first
    );
    let partner_interest: i64 = r
        .allocations
        .iter()
        .filter(|a| {
            a.funder == Funder::Partner as i32 && a.component == pb::Component::Interest as i32
        })
        .map(|a| m(&a.amount))
        .sum();
    assert!(partner_interest > 0);
    let after = rep.loan.unwrap();
    assert!(m(&after.bank_outstanding) + m(&after.partner_outstanding) < 10_000_000);
    // More than is owed is refused.
    let e = c
        .book_repayment(as_bank(pb::BookRepaymentRequest {
            request_id: "rp2".into(),
            loan_id: loan.loan_id.clone(),
            amount: cny(50_000_000),
            value_date: "2026-12-23".into(),
            bank_transaction_ref: "BNK-R2".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // The ledger balances; the partner sees its loan and nobody else does.
    let tb = c
        .get_trial_balance(as_bank(pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m(&tb.total_debits), m(&tb.total_credits));
    assert!(m(&tb.total_debits) > 0);
    let seen = c
        .get_loan(as_partner(
            "p1",
            pb::GetLoanRequest {
                loan_id: loan.loan_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(seen.repayments.len(), 1);
    let e = c
        .get_loan(as_partner(
            "p2",
            pb::GetLoanRequest {
                loan_id: loan.loan_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn funding_api_embedded() {
    scenario(BOTH[0]).await;
}

#[tokio::test]
async fn funding_api_postgres_redis() {
    scenario(BOTH[1]).await;
}

/// A reservation not disbursed in time is voided and gives its quota back.
async fn expiry(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![
            colend_funding::register_with(mesh, quick_expiry()).await?,
        ])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    reference(&mut c, "ref", 1_000_000_000_000, 10_000_000_000_000).await;
    whitelist(&mut c, "p1").await;
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a".into(),
        agreement: Some(agreement("p1", 3_000, 3_000_000)),
    }))
    .await
    .unwrap();
    let loan = c
        .reserve_funding(as_service("p1", reserve("p1", "e1", 10_000_000)))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert!(loan.reservation_expires_at.is_some());
    let e = c
        .reserve_funding(as_service("p1", reserve("p1", "e2", 10_000_000)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "QUOTA_EXCEEDED");
    let mut status = 0;
    for _ in 0..100 {
        status = c
            .get_loan(as_partner(
                "p1",
                pb::GetLoanRequest {
                    loan_id: loan.loan_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .loan
            .unwrap()
            .status;
        if status == pb::LoanStatus::Void as i32 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        pb::LoanStatus::Void as i32,
        "the reservation expired"
    );
    // Its quota and the bank's C2/C3 room are back.
    c.reserve_funding(as_service("p1", reserve("p1", "e3", 10_000_000)))
        .await
        .unwrap();
    let usage = c
        .get_bank_reference(as_bank(pb::GetBankReferenceRequest {
            partner_id: "p1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m(&usage.partner_co_lent), 7_000_000);
    // Rule P2: a new agreement version never changes a booked loan.
    let before_edit = c
        .get_loan(as_partner(
            "p1",
            pb::GetLoanRequest {
                loan_id: loan.loan_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a-v2".into(),
        agreement: Some(agreement("p1", 4_000, 10_000_000)),
    }))
    .await
    .unwrap();
    let after_edit = c
        .get_loan(as_partner(
            "p1",
            pb::GetLoanRequest {
                loan_id: loan.loan_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(
        (after_edit.agreement_version, after_edit.partner_share_bps),
        (before_edit.agreement_version, 3_000)
    );
    assert_eq!(after_edit.partner_amount, before_edit.partner_amount);
    // Rule C12 covers the credit-enhancement firm too.
    whitelist(&mut c, "p3").await;
    let mut a = agreement("p3", 3_000, 1_000_000_000);
    a.credit_enhancer_id = "guarantor-1".into();
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a3".into(),
        agreement: Some(a),
    }))
    .await
    .unwrap();
    let e = c
        .reserve_funding(as_service("p3", reserve("p3", "g1", 10_000_000)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NOT_WHITELISTED");
    c.whitelist_institution(as_bank(pb::WhitelistInstitutionRequest {
        request_id: "wl-g".into(),
        entry: Some(pb::WhitelistEntry {
            institution_id: "guarantor-1".into(),
            kind: pb::InstitutionKind::CreditEnhancer as i32,
            effective_from: "2026-01-01".into(),
            effective_to: String::new(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.reserve_funding(as_service("p3", reserve("p3", "g2", 10_000_000)))
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn funding_reservations_expire_embedded() {
    expiry(BOTH[0]).await;
}

#[tokio::test]
async fn funding_reservations_expire_postgres_redis() {
    expiry(BOTH[1]).await;
}

/// Servicing: ACT/365, a late instalment with penalty interest, an early
/// repayment that recomputes the schedule, and each funder's books.
async fn servicing(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register(mesh).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    reference(&mut c, "ref", 1_000_000_000_000, 10_000_000_000_000).await;
    whitelist(&mut c, "p1").await;
    let mut a = agreement("p1", 3_000, 1_000_000_000);
    a.day_count = pb::DayCount::Act365 as i32;
    a.penalty_rate_bps = 1_800;
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a".into(),
        agreement: Some(a),
    }))
    .await
    .unwrap();
    let loan = c
        .reserve_funding(as_service("p1", reserve("p1", "s1", 12_000_000)))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    let loan = c
        .book_disbursement(as_bank(pb::BookDisbursementRequest {
            request_id: "d".into(),
            loan_id: loan.loan_id.clone(),
            value_date: "2026-01-10".into(),
            bank_transaction_ref: "B-1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(loan.day_count, pb::DayCount::Act365 as i32);
    // Each funder's schedule sums, line by line, to the borrower's.
    for i in &loan.schedule {
        let lines: Vec<&pb::FunderInstalment> = loan
            .funder_schedule
            .iter()
            .filter(|f| f.sequence == i.sequence)
            .collect();
        assert_eq!(
            lines.iter().map(|f| m(&f.principal)).sum::<i64>(),
            m(&i.principal)
        );
        assert_eq!(
            lines.iter().map(|f| m(&f.interest)).sum::<i64>(),
            m(&i.interest)
        );
    }
    // The first instalment (due 2026-02-10) is paid ten days late: penalty interest comes first.
    let first = m(&loan.schedule[0].total);
    let rep = c
        .book_repayment(as_bank(pb::BookRepaymentRequest {
            request_id: "r1".into(),
            loan_id: loan.loan_id.clone(),
            amount: cny(first + 1_000),
            value_date: "2026-02-20".into(),
            bank_transaction_ref: "B-2".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let penalty: i64 = rep
        .repayment
        .as_ref()
        .unwrap()
        .allocations
        .iter()
        .filter(|x| x.component == pb::Component::Penalty as i32)
        .map(|x| m(&x.amount))
        .sum();
    // 18% a year on the overdue instalment for 10 days, ACT/365, to the cent.
    let expected = (first as i128 * 1_800 * 10 * 2 + 10_000 * 365) / (2 * 10_000 * 365);
    assert_eq!(penalty as i128, expected);
    // An early repayment of 50,000.00 recomputes the rest of the schedule.
    let before = rep.loan.unwrap();
    let later_before: i64 = before.schedule[2..].iter().map(|i| m(&i.total)).sum();
    let after = c
        .book_repayment(as_bank(pb::BookRepaymentRequest {
            request_id: "r2".into(),
            loan_id: loan.loan_id.clone(),
            amount: cny(m(&before.schedule[1].total) + 5_000_000),
            value_date: "2026-03-01".into(),
            bank_transaction_ref: "B-3".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    let later_after: i64 = after.schedule[2..].iter().map(|i| m(&i.total)).sum();
    assert!(
        later_after < later_before - 5_000_000,
        "{later_after} vs {later_before}"
    );
    assert_eq!(after.schedule.len(), 12);
    // Each funder's books: outstanding principal is its share less what it got back.
    let paid = |f: Funder| -> i64 {
        after
            .repayments
            .iter()
            .flat_map(|r| &r.allocations)
            .filter(|x| x.funder == f as i32 && x.component == pb::Component::Principal as i32)
            .map(|x| m(&x.amount))
            .sum()
    };
    let bank = after
        .balances
        .iter()
        .find(|b| b.funder == Funder::Bank as i32)
        .unwrap();
    let partner = after
        .balances
        .iter()
        .find(|b| b.funder == Funder::Partner as i32)
        .unwrap();
    assert_eq!(
        m(&bank.principal_outstanding),
        m(&after.bank_amount) - paid(Funder::Bank)
    );
    assert_eq!(
        m(&partner.principal_outstanding),
        m(&after.partner_amount) - paid(Funder::Partner)
    );
    assert!(m(&partner.interest_accrued) >= m(&partner.interest_paid));
    // The first repayment left 10.00 short of the late instalment, which went on
    // accruing penalty until the second; every penalty cent accrued was paid.
    let penalty_paid: i64 = after
        .repayments
        .iter()
        .flat_map(|r| &r.allocations)
        .filter(|x| x.component == pb::Component::Penalty as i32)
        .map(|x| m(&x.amount))
        .sum();
    assert!(penalty_paid > penalty);
    assert_eq!(
        m(&bank.penalty_paid) + m(&partner.penalty_paid),
        penalty_paid
    );
    assert_eq!(
        m(&bank.penalty_accrued) + m(&partner.penalty_accrued),
        penalty_paid
    );
    let tb = c
        .get_trial_balance(as_bank(pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m(&tb.total_debits), m(&tb.total_credits));
    s.stop().await;
}

#[tokio::test]
async fn funding_servicing_embedded() {
    servicing(BOTH[0]).await;
}

#[tokio::test]
async fn funding_servicing_postgres_redis() {
    servicing(BOTH[1]).await;
}
