//! Funding API tests against a real server on port 0, on both backends.
use colend_contracts::common::v1::{Funder, Money, RepaymentMethod};
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_platform::time::{Clock, Tz};
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

/// Epoch milliseconds of an RFC 3339 instant.
fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// CN settings (business days in Asia/Shanghai) on a manual clock standing
/// at `rfc3339`; move it with the returned clock.
fn clocked(rfc3339: &str) -> (colend_funding::app::Settings, Clock) {
    let mut s = colend_funding::app::Settings::from_env().unwrap();
    s.time_zone = Tz::Asia__Shanghai;
    s.clock = Clock::manual(at(rfc3339));
    let clock = s.clock.clone();
    (s, clock)
}

fn quick_expiry() -> colend_funding::app::Settings {
    let mut s = colend_funding::app::Settings::from_env().unwrap();
    s.reservation_ttl = std::time::Duration::from_secs(1);
    s.sweep_every = std::time::Duration::from_secs(1);
    s
}

async fn scenario(backend: Backend) {
    // 10:00 in Shanghai on 23 November 2026: the business day of the loans.
    let (settings, clock) = clocked("2026-11-23T02:00:00Z");
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
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
    clock.set(at("2026-12-23T02:00:00Z"));
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
    // More than is owed (within the overpayment tolerance: 10 bps of the
    // payoff) settles the loan; the excess is owed back to the borrower.
    let owed = m(&after.bank_outstanding) + m(&after.partner_outstanding);
    let paid_off = c
        .book_repayment(as_bank(pb::BookRepaymentRequest {
            request_id: "rp2".into(),
            loan_id: loan.loan_id.clone(),
            amount: cny(owed + 1_000),
            value_date: "2026-12-23".into(),
            bank_transaction_ref: "BNK-R2".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let settled = paid_off.loan.unwrap();
    assert_eq!(settled.status, pb::LoanStatus::Settled as i32);
    let over: i64 = paid_off
        .repayment
        .unwrap()
        .allocations
        .iter()
        .filter(|a| a.component == pb::Component::Overpayment as i32)
        .map(|a| m(&a.amount))
        .sum();
    assert!(over > 0 && over == m(&settled.overpayment));
    assert_eq!(owed + 1_000 - over, owed);

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
    assert_eq!(seen.repayments.len(), 2);
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
    let (settings, clock) = clocked("2026-01-10T02:00:00Z");
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
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
    clock.set(at("2026-02-20T02:00:00Z"));
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
    clock.set(at("2026-03-01T02:00:00Z"));
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

async fn reserved(
    c: &mut FundingServiceClient<tonic::transport::Channel>,
    partner: &str,
    app: &str,
    principal: i64,
) -> Result<pb::Loan, tonic::Status> {
    c.reserve_funding(as_service(partner, reserve(partner, app, principal)))
        .await
        .map(|r| r.into_inner().loan.unwrap())
}

async fn disburse_on(
    c: &mut FundingServiceClient<tonic::transport::Channel>,
    loan_id: &str,
    value_date: &str,
) -> Result<pb::Loan, tonic::Status> {
    c.book_disbursement(as_bank(pb::BookDisbursementRequest {
        request_id: format!("d-{loan_id}-{value_date}"),
        loan_id: loan_id.into(),
        value_date: value_date.into(),
        bank_transaction_ref: format!("B-{loan_id}-{value_date}"),
    }))
    .await
    .map(|r| r.into_inner().loan.unwrap())
}

/// A value date refused as outside the disbursement window.
fn outside_window(r: Result<pb::Loan, tonic::Status>) -> String {
    let e = r.expect_err("the value date is outside the window");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(violated_fields(&e), vec!["value_date"]);
    e.message().to_string()
}

/// "Daily" is a day in the jurisdiction's zone: at 23:59 in Shanghai on
/// 9 March (15:59 UTC) the daily quota is used up, an agreement and a
/// whitelist entry from 10 March are not in force yet and a disbursement
/// cannot be dated the 10th; at 00:01 on 10 March (16:01 UTC, still the 9th
/// in UTC) the quota is fresh and both are in force.
async fn business_day(backend: Backend) {
    let (settings, clock) = clocked("2026-03-09T15:59:00Z");
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    reference(&mut c, "ref", 1_000_000_000_000, 10_000_000_000_000).await;
    // One loan of 100,000.00 at 30% a day.
    let mut daily = agreement("pd", 3_000, 1_000_000_000);
    daily.daily_quota = cny(3_000_000);
    let mut later = agreement("pn", 3_000, 1_000_000_000);
    later.effective_from = "2026-03-10".into();
    for (rid, a) in [
        ("a-pd", daily),
        ("a-pn", later),
        ("a-pw", agreement("pw", 3_000, 1_000_000_000)),
    ] {
        c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
            request_id: rid.into(),
            agreement: Some(a),
        }))
        .await
        .unwrap();
    }
    whitelist(&mut c, "pd").await;
    whitelist(&mut c, "pn").await;
    c.whitelist_institution(as_bank(pb::WhitelistInstitutionRequest {
        request_id: "wl-pw".into(),
        entry: Some(pb::WhitelistEntry {
            institution_id: "pw".into(),
            kind: pb::InstitutionKind::Partner as i32,
            effective_from: "2026-03-10".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();

    // 23:59 on 9 March in Shanghai.
    let first = reserved(&mut c, "pd", "d1", 10_000_000).await.unwrap();
    assert_eq!(first.reserved_on, "2026-03-09");
    let e = reserved(&mut c, "pd", "d2", 10_000_000).await.unwrap_err();
    assert_eq!(
        colend_testkit::error_metadata(&e, "limit").as_deref(),
        Some("PARTNER_DAILY_QUOTA")
    );
    let e = reserved(&mut c, "pn", "n1", 10_000_000).await.unwrap_err();
    assert_eq!(reason(&e), "NO_AGREEMENT");
    let e = reserved(&mut c, "pw", "w1", 10_000_000).await.unwrap_err();
    assert_eq!(reason(&e), "NOT_WHITELISTED");
    outside_window(disburse_on(&mut c, &first.loan_id, "2026-03-10").await);

    // 00:01 on 10 March in Shanghai; 16:01 on 9 March in UTC.
    clock.set(at("2026-03-09T16:01:00Z"));
    let second = reserved(&mut c, "pd", "d3", 10_000_000).await.unwrap();
    assert_eq!(second.reserved_on, "2026-03-10");
    let e = reserved(&mut c, "pd", "d4", 10_000_000).await.unwrap_err();
    assert_eq!(
        colend_testkit::error_metadata(&e, "limit").as_deref(),
        Some("PARTNER_DAILY_QUOTA")
    );
    let n = reserved(&mut c, "pn", "n2", 10_000_000).await.unwrap();
    assert_eq!(n.agreement_version, 1);
    reserved(&mut c, "pw", "w2", 10_000_000).await.unwrap();
    let booked = disburse_on(&mut c, &first.loan_id, "2026-03-10")
        .await
        .unwrap();
    assert_eq!(booked.disbursed_on, "2026-03-10");
    assert_eq!(booked.reserved_on, "2026-03-09");
    s.stop().await;
}

#[tokio::test]
async fn funding_business_day_embedded() {
    business_day(BOTH[0]).await;
}

#[tokio::test]
async fn funding_business_day_postgres_redis() {
    business_day(BOTH[1]).await;
}

/// A disbursement's value date lies from the day the loan was reserved
/// through the day its reservation expires, and at most the forward
/// cut-off (2 days here) after today.
async fn value_dates(backend: Backend) {
    // 10:00 on 4 May in Shanghai; reservations last five days.
    let (mut settings, clock) = clocked("2026-05-04T02:00:00Z");
    settings.reservation_ttl = std::time::Duration::from_secs(5 * 86_400);
    settings.disbursement_forward_days = 2;
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    reference(&mut c, "ref", 1_000_000_000_000, 10_000_000_000_000).await;
    whitelist(&mut c, "p1").await;
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a".into(),
        agreement: Some(agreement("p1", 3_000, 1_000_000_000)),
    }))
    .await
    .unwrap();
    let loans: Vec<pb::Loan> = futures::future::join_all((0..3).map(|i| {
        let mut c = c.clone();
        async move {
            reserved(&mut c, "p1", &format!("v{i}"), 10_000_000)
                .await
                .unwrap()
        }
    }))
    .await;
    // Reserved on 4 May; expiring on 9 May at 10:00; today + 2 is 6 May.
    let l = &loans[0].loan_id;
    let said = outside_window(disburse_on(&mut c, l, "2019-06-01").await);
    assert!(said.contains("2026-05-04 to 2026-05-06"), "{said}");
    outside_window(disburse_on(&mut c, l, "2031-01-01").await);
    outside_window(disburse_on(&mut c, l, "2026-05-03").await);
    outside_window(disburse_on(&mut c, l, "2026-05-07").await);
    let booked = disburse_on(&mut c, l, "2026-05-06").await.unwrap();
    assert_eq!(booked.disbursed_on, "2026-05-06");

    // Noon on 8 May: today + 2 is 10 May, but the reservations expire on the 9th.
    clock.set(at("2026-05-08T04:00:00Z"));
    let said = outside_window(disburse_on(&mut c, &loans[1].loan_id, "2026-05-10").await);
    assert!(said.contains("2026-05-04 to 2026-05-09"), "{said}");
    outside_window(disburse_on(&mut c, &loans[1].loan_id, "2026-05-03").await);
    disburse_on(&mut c, &loans[1].loan_id, "2026-05-04")
        .await
        .unwrap();
    disburse_on(&mut c, &loans[2].loan_id, "2026-05-09")
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn funding_value_dates_embedded() {
    value_dates(BOTH[0]).await;
}

#[tokio::test]
async fn funding_value_dates_postgres_redis() {
    value_dates(BOTH[1]).await;
}

/// On an IN-2025 profile: rule C2 counts a partner with its related parties
/// (one whitelist group); each lender funds at least 10% to the cent; and a
/// waterfall is applied as stated or refused.
async fn related_parties(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        let mut settings = colend_funding::app::Settings::from_env()?;
        settings.jurisdiction = colend_funding::domain::Jurisdiction::In2025;
        settings.min_partner_share_bps = 1_000;
        settings.time_zone = Tz::Asia__Kolkata;
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    // C2: 25% of 42,000,000.00 is 10,500,000.00 per group of related parties.
    reference(&mut c, "ref", 4 * 10_500_000, 10_000_000_000_000).await;
    for (partner, group) in [("g1", "grp-1"), ("g2", "grp-1"), ("solo", "")] {
        let echoed = c
            .whitelist_institution(as_bank(pb::WhitelistInstitutionRequest {
                request_id: format!("wl-{partner}"),
                entry: Some(pb::WhitelistEntry {
                    institution_id: partner.into(),
                    kind: pb::InstitutionKind::Partner as i32,
                    effective_from: "2026-01-01".into(),
                    group_id: group.into(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap();
        assert_eq!(echoed.group_id, group);
        c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
            request_id: format!("a-{partner}"),
            agreement: Some(agreement(partner, 3_000, 1_000_000_000_000)),
        }))
        .await
        .unwrap();
    }
    // g1 lends: the bank's share is 7,000,000.00 of the group's 10,500,000.00.
    reserved(&mut c, "g1", "g1-a", 10_000_000).await.unwrap();
    let reader = c.clone();
    let usage = |p: &str| {
        let mut c = reader.clone();
        let p = p.to_string();
        async move {
            c.get_bank_reference(as_bank(pb::GetBankReferenceRequest { partner_id: p }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(m(&usage("g2").await.partner_co_lent), 7_000_000);
    assert_eq!(m(&usage("solo").await.partner_co_lent), 0);
    // g2 alone (7,000,000.00) would fit; with g1 it would not.
    let e = reserved(&mut c, "g2", "g2-a", 10_000_000)
        .await
        .unwrap_err();
    assert_eq!(
        colend_testkit::error_metadata(&e, "limit").as_deref(),
        Some("C2_PARTNER_CONCENTRATION")
    );
    // A partner of no group has its own room.
    reserved(&mut c, "solo", "solo-a", 10_000_000)
        .await
        .unwrap();
    // Exactly the group's room is left: 3,500,000.00 of bank share.
    reserved(&mut c, "g2", "g2-b", 5_000_000).await.unwrap();
    let e = reserved(&mut c, "g1", "g1-b", 2).await.unwrap_err();
    assert_eq!(
        colend_testkit::error_metadata(&e, "limit").as_deref(),
        Some("C2_PARTNER_CONCENTRATION")
    );
    assert_eq!(m(&usage("g1").await.partner_co_lent), 10_500_000);
    assert_eq!(m(&usage("g2").await.partner_co_lent), 10_500_000);

    // IN-2025: at a 90% partner share, 1,000.01 leaves the bank 100.01 (not 100.00).
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a-solo-90".into(),
        agreement: Some(agreement("solo", 9_000, 1_000_000_000_000)),
    }))
    .await
    .unwrap();
    let l = reserved(&mut c, "solo", "solo-90", 100_001).await.unwrap();
    assert_eq!((m(&l.bank_amount), m(&l.partner_amount)), (10_001, 90_000));
    // A cent cannot give each lender 10%.
    let e = reserved(&mut c, "solo", "solo-cent", 1).await.unwrap_err();
    assert_eq!(violated_fields(&e), vec!["principal"]);

    // Waterfalls: penalty first or last, each component once.
    use pb::Component::{Fee, Interest, Overpayment, Penalty, Principal};
    for (i, bad) in [
        vec![Interest, Penalty, Principal],
        vec![Fee, Interest, Penalty, Principal],
        vec![Penalty, Interest, Interest, Principal],
        vec![Penalty, Interest],
        vec![Penalty, Fee, Interest, Principal, Overpayment],
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = agreement("solo", 3_000, 1_000_000_000_000);
        a.waterfall = bad.iter().map(|c| *c as i32).collect();
        let e = c
            .upsert_agreement(as_bank(pb::UpsertAgreementRequest {
                request_id: format!("w-bad-{i}"),
                agreement: Some(a),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&e), vec!["agreement.waterfall"], "{bad:?}");
    }
    for (i, (stated, applied)) in [
        (
            vec![Interest, Principal, Penalty],
            vec![Fee, Interest, Principal, Penalty],
        ),
        (
            vec![Penalty, Principal, Fee, Interest],
            vec![Penalty, Principal, Fee, Interest],
        ),
        (vec![], vec![Penalty, Fee, Interest, Principal]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = agreement("solo", 3_000, 1_000_000_000_000);
        a.waterfall = stated.iter().map(|c| *c as i32).collect();
        let stored = c
            .upsert_agreement(as_bank(pb::UpsertAgreementRequest {
                request_id: format!("w-ok-{i}"),
                agreement: Some(a),
            }))
            .await
            .unwrap()
            .into_inner()
            .agreement
            .unwrap();
        let applied: Vec<i32> = applied.iter().map(|c| *c as i32).collect();
        assert_eq!(stored.waterfall, applied);
        let read = c
            .get_agreement(as_bank(pb::GetAgreementRequest {
                partner_id: "solo".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .agreement
            .unwrap();
        assert_eq!(read.waterfall, applied);
        let loan = reserved(&mut c, "solo", &format!("w-ok-{i}"), 1_000_000)
            .await
            .unwrap();
        assert_eq!(loan.waterfall, applied);
    }
    s.stop().await;
}

#[tokio::test]
async fn funding_related_parties_embedded() {
    related_parties(BOTH[0]).await;
}

#[tokio::test]
async fn funding_related_parties_postgres_redis() {
    related_parties(BOTH[1]).await;
}

/// What the test made: a loan, whose it is, the day it was reserved on and
/// the status the test left it in.
#[derive(Clone, Debug)]
struct Made {
    loan_id: String,
    partner: &'static str,
    day: String,
    status: pb::LoanStatus,
}

/// Every page of `req` as `caller` (a partner, or the bank) sends it; the
/// loans in the order given, and how many pages.
async fn all_pages(
    c: &mut FundingServiceClient<tonic::transport::Channel>,
    caller: Option<&str>,
    mut req: pb::ListLoansRequest,
) -> (Vec<pb::Loan>, usize) {
    let (mut out, mut pages) = (Vec::new(), 0);
    loop {
        let r = match caller {
            Some(p) => c.list_loans(as_partner(p, req.clone())).await,
            None => c.list_loans(as_bank(req.clone())).await,
        }
        .unwrap()
        .into_inner();
        pages += 1;
        // 0 asks for the default page of 50.
        let cap = if req.page_size == 0 {
            50
        } else {
            req.page_size as usize
        };
        assert!(
            r.loans.len() <= cap,
            "a page of {cap} holds {}",
            r.loans.len()
        );
        out.extend(r.loans);
        if r.next_page_token.is_empty() {
            return (out, pages);
        }
        assert!(pages < 100, "paging does not end");
        req.page_token = r.next_page_token;
    }
}

/// The bank's reads and ListLoans: twelve loans of two partners over three
/// business days, in every status but SETTLED, listed page by page under each
/// filter and compared with what the test made; an oversized request.
async fn loans_listed(backend: Backend) {
    // 10:00 in Shanghai on 23 November 2026; reservations outlive the test's days.
    let (mut settings, clock) = clocked("2026-11-23T02:00:00Z");
    settings.reservation_ttl = std::time::Duration::from_secs(30 * 86_400);
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());

    // A request over 1 MiB is RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE with the
    // limit; one just under it is decoded and judged on its content.
    let sized = |n: usize| pb::BookRepaymentRequest {
        request_id: "big".into(),
        loan_id: "loan_00000000000000000000000000000000".into(),
        amount: cny(100),
        value_date: "2026-11-23".into(),
        bank_transaction_ref: "x".repeat(n),
    };
    let e = c.book_repayment(as_bank(sized(2 << 20))).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(reason(&e), "REQUEST_TOO_LARGE");
    assert_eq!(
        colend_testkit::error_metadata(&e, "max_bytes").as_deref(),
        Some("1048576")
    );
    let e = c
        .book_repayment(as_bank(sized((1 << 20) - 1_000)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&e), vec!["bank_transaction_ref"]);

    reference(&mut c, "ref", 1_000_000_000_000, 10_000_000_000_000).await;
    for p in ["p1", "p2"] {
        whitelist(&mut c, p).await;
        c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
            request_id: format!("a-{p}"),
            agreement: Some(agreement(p, 3_000, 1_000_000_000_000)),
        }))
        .await
        .unwrap();
    }
    // Day by day, loan by loan: (days after 23 November, partner, how many).
    let plan: [(i64, &'static str, usize); 6] = [
        (0, "p1", 3),
        (0, "p2", 2),
        (1, "p1", 2),
        (1, "p2", 1),
        (2, "p1", 3),
        (2, "p2", 1),
    ];
    let start = at("2026-11-23T02:00:00Z");
    let mut made: Vec<Made> = Vec::new();
    for (d, partner, n) in plan {
        clock.set(start + d * 86_400_000);
        for i in 0..n {
            let app = format!("ll-{d}-{partner}-{i}");
            let loan = c
                .reserve_funding(as_service(partner, reserve(partner, &app, 1_000_000)))
                .await
                .unwrap()
                .into_inner()
                .loan
                .unwrap();
            made.push(Made {
                loan_id: loan.loan_id,
                partner,
                day: loan.reserved_on,
                status: pb::LoanStatus::Reserved,
            });
        }
    }
    // Each loan carries the business day it was reserved on.
    let days = ["2026-11-23", "2026-11-24", "2026-11-25"];
    let mut k = 0;
    for (d, _, n) in plan {
        for m in &made[k..k + n] {
            assert_eq!(m.day, days[d as usize], "{m:?}");
        }
        k += n;
    }
    // Every third loan disbursed, every third voided, the rest still reserved.
    for (i, m) in made.iter_mut().enumerate() {
        match i % 3 {
            0 => {
                c.book_disbursement(as_bank(pb::BookDisbursementRequest {
                    request_id: format!("d-{i}"),
                    loan_id: m.loan_id.clone(),
                    value_date: m.day.clone(),
                    bank_transaction_ref: format!("BNK-LL-{i}"),
                }))
                .await
                .unwrap();
                m.status = pb::LoanStatus::Disbursed;
            }
            1 => {
                c.release_funding(as_internal(pb::ReleaseFundingRequest {
                    request_id: format!("rel-{i}"),
                    loan_id: m.loan_id.clone(),
                    reason: "test".into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
                m.status = pb::LoanStatus::Void;
            }
            _ => {}
        }
    }

    // The bank reads any partner's loan, whole; a partner reads only its
    // own: another partner's is the same NOT_FOUND as a missing one.
    let get = |id: &str| pb::GetLoanRequest { loan_id: id.into() };
    let p1_loan = &made[0];
    let whole = c
        .get_loan(as_bank(get(&p1_loan.loan_id)))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(whole.partner_id, "p1");
    assert_eq!(whole.status, pb::LoanStatus::Disbursed as i32);
    assert_eq!(whole.reserved_on, "2026-11-23");
    assert_eq!(whole.schedule.len(), 12);
    c.get_loan(as_partner("p1", get(&p1_loan.loan_id)))
        .await
        .unwrap();
    let theirs = c
        .get_loan(as_partner("p2", get(&p1_loan.loan_id)))
        .await
        .unwrap_err();
    let missing = c
        .get_loan(as_partner(
            "p2",
            get("loan_00000000000000000000000000000000"),
        ))
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(
        (theirs.code(), theirs.message(), theirs.details()),
        (missing.code(), missing.message(), missing.details())
    );
    let e = c
        .get_loan(as_bank(get("loan_00000000000000000000000000000000")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Newest first: the reverse of the order the loans were made in.
    let expect = |keep: &dyn Fn(&Made) -> bool| -> Vec<String> {
        made.iter()
            .rev()
            .filter(|m| keep(m))
            .map(|m| m.loan_id.clone())
            .collect()
    };
    let list = |page_size: i32| pb::ListLoansRequest {
        page_size,
        ..Default::default()
    };
    let status = |s: pb::LoanStatus| pb::ListLoansRequest {
        status: s as i32,
        ..list(2)
    };
    let cases: Vec<(&str, Option<&str>, pb::ListLoansRequest, Vec<String>)> = vec![
        ("the bank, everything", None, list(2), expect(&|_| true)),
        (
            "the bank, one partner",
            None,
            pb::ListLoansRequest {
                partner_id: "p2".into(),
                ..list(2)
            },
            expect(&|m| m.partner == "p2"),
        ),
        (
            "the bank, voided",
            None,
            status(pb::LoanStatus::Void),
            expect(&|m| m.status == pb::LoanStatus::Void),
        ),
        (
            "the bank, reserved from the second day",
            None,
            pb::ListLoansRequest {
                reserved_from: days[1].into(),
                ..list(3)
            },
            expect(&|m| m.day.as_str() >= days[1]),
        ),
        (
            "the bank, reserved up to the second day",
            None,
            pb::ListLoansRequest {
                reserved_to: days[1].into(),
                ..list(3)
            },
            expect(&|m| m.day.as_str() <= days[1]),
        ),
        (
            "the bank, the second day only",
            None,
            pb::ListLoansRequest {
                reserved_from: days[1].into(),
                reserved_to: days[1].into(),
                ..list(1)
            },
            expect(&|m| m.day == days[1]),
        ),
        (
            "the bank, every filter",
            None,
            pb::ListLoansRequest {
                partner_id: "p1".into(),
                status: pb::LoanStatus::Disbursed as i32,
                reserved_from: days[0].into(),
                reserved_to: days[2].into(),
                ..list(1)
            },
            expect(&|m| m.partner == "p1" && m.status == pb::LoanStatus::Disbursed),
        ),
        (
            "a partner, its own",
            Some("p1"),
            list(2),
            expect(&|m| m.partner == "p1"),
        ),
        (
            "a partner naming itself, still reserved",
            Some("p1"),
            pb::ListLoansRequest {
                partner_id: "p1".into(),
                ..status(pb::LoanStatus::Reserved)
            },
            expect(&|m| m.partner == "p1" && m.status == pb::LoanStatus::Reserved),
        ),
        (
            "a partner, after the last day",
            Some("p2"),
            pb::ListLoansRequest {
                reserved_from: "2026-11-26".into(),
                ..list(2)
            },
            Vec::new(),
        ),
        ("the default page", None, list(0), expect(&|_| true)),
    ];
    for (name, caller, req, want) in cases {
        let size = req.page_size;
        let (got, pages) = all_pages(&mut c, caller, req).await;
        let ids: Vec<String> = got.iter().map(|l| l.loan_id.clone()).collect();
        assert_eq!(ids, want, "{name}");
        if size > 0 && want.len() > size as usize {
            assert!(pages > 1, "{name}: {pages} page(s)");
        }
        if size == 0 {
            assert_eq!(pages, 1, "{name}: 50 a page");
        }
        // Listed loans carry their facts, without schedules and repayments.
        for l in &got {
            let mine = made.iter().find(|x| x.loan_id == l.loan_id).unwrap();
            assert_eq!(l.partner_id, mine.partner, "{name}");
            assert_eq!(l.status, mine.status as i32, "{name}");
            assert_eq!(l.reserved_on, mine.day, "{name}");
            assert!(
                l.schedule.is_empty() && l.funder_schedule.is_empty() && l.repayments.is_empty(),
                "{name}"
            );
            assert_eq!(m(&l.principal), 1_000_000, "{name}");
        }
    }
    assert_eq!(made.len(), 12);

    // A partner cannot list another's; bad input names each field.
    let e = c
        .list_loans(as_partner(
            "p1",
            pb::ListLoansRequest {
                partner_id: "p2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&e), vec!["partner_id"]);
    let bad = pb::ListLoansRequest {
        page_size: 501,
        page_token: "not-a-token".into(),
        status: 99,
        reserved_from: "2026-11-31".into(),
        reserved_to: "2026-11-24".into(),
        ..Default::default()
    };
    let e = c.list_loans(as_bank(bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&e),
        vec!["page_size", "page_token", "status", "reserved_from"]
    );
    for (req, field) in [
        (
            pb::ListLoansRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListLoansRequest {
                reserved_from: days[2].into(),
                reserved_to: days[1].into(),
                ..Default::default()
            },
            "reserved_to",
        ),
        (
            pb::ListLoansRequest {
                partner_id: "not a partner!".into(),
                ..Default::default()
            },
            "partner_id",
        ),
    ] {
        let e = c.list_loans(as_bank(req)).await.unwrap_err();
        assert_eq!(violated_fields(&e), vec![field]);
    }
    s.stop().await;
}

#[tokio::test]
async fn funding_loans_listed_embedded() {
    loans_listed(BOTH[0]).await;
}

#[tokio::test]
async fn funding_loans_listed_postgres_redis() {
    loans_listed(BOTH[1]).await;
}
