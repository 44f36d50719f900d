//! Daily accrual, value dates and the interest split through the API, on a
//! manual clock (business days in Asia/Shanghai), on both backends.
use colend_contracts::common::v1::{Funder, Money, RepaymentMethod};
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_platform::config::Backends;
use colend_platform::time::{Clock, Tz};
use colend_testkit::{
    BOTH, Backend, TempDir, TestServer, as_bank, as_partner, as_service, reason, violated_fields,
};
use tonic::Code;

type Client = FundingServiceClient<tonic::transport::Channel>;

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

fn m(x: &Option<Money>) -> i64 {
    x.as_ref().map(|m| m.minor_units).unwrap_or(0)
}

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// A server whose business day is `rfc3339`'s in Shanghai until the clock moves.
async fn server(backend: Backend, rfc3339: &str) -> (TestServer, Client, Clock) {
    let dir = TempDir::new();
    let b = colend_testkit::backends(backend, &dir).await;
    server_on(b, dir, rfc3339).await
}

/// [`server`] on storage prepared beforehand.
async fn server_on(b: Backends, dir: TempDir, rfc3339: &str) -> (TestServer, Client, Clock) {
    let mut settings = colend_funding::app::Settings::from_env().unwrap();
    settings.time_zone = Tz::Asia__Shanghai;
    settings.clock = Clock::manual(at(rfc3339));
    let clock = settings.clock.clone();
    let s = TestServer::start_with(b, dir, |mesh| async move {
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    c.set_bank_reference(as_bank(pb::SetBankReferenceRequest {
        request_id: "ref".into(),
        reference: Some(pb::BankReference {
            net_tier1_capital: cny(1_000_000_000_000),
            total_loan_balance: cny(10_000_000_000_000),
            as_of: "2025-12-31".into(),
        }),
    }))
    .await
    .unwrap();
    (s, c, clock)
}

fn agreement(partner: &str) -> pb::Agreement {
    pb::Agreement {
        partner_id: partner.into(),
        partner_share_bps: 3_000,
        bank_rate_bps: 1_000,
        partner_rate_bps: 1_800,
        daily_quota: cny(100_000_000_000),
        total_quota: cny(100_000_000_000),
        effective_from: "2026-01-01".into(),
        fee_partner_share_bps: 4_000,
        ..Default::default()
    }
}

async fn set_up(
    c: &mut Client,
    a: pb::Agreement,
    rid: &str,
) -> Result<pb::Agreement, tonic::Status> {
    let partner = a.partner_id.clone();
    c.whitelist_institution(as_bank(pb::WhitelistInstitutionRequest {
        request_id: format!("wl-{partner}"),
        entry: Some(pb::WhitelistEntry {
            institution_id: partner,
            kind: pb::InstitutionKind::Partner as i32,
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: rid.into(),
        agreement: Some(a),
    }))
    .await
    .map(|r| r.into_inner().agreement.unwrap())
}

/// 100,000.00 over 12 equal instalments at `rate_bps` + 1% fee a year.
fn reservation(partner: &str, app: &str, rate_bps: i32) -> pb::ReserveFundingRequest {
    pb::ReserveFundingRequest {
        request_id: format!("r-{app}"),
        application_id: app.into(),
        partner_id: partner.into(),
        principal: cny(10_000_000),
        term_months: 12,
        annual_rate_bps: rate_bps,
        repayment_method: RepaymentMethod::EqualInstalment as i32,
        borrower_key: format!("borrower-{app}"),
        annual_fee_bps: 100,
    }
}

async fn disbursed(c: &mut Client, partner: &str, app: &str, rate_bps: i32, on: &str) -> pb::Loan {
    let loan = c
        .reserve_funding(as_service(partner, reservation(partner, app, rate_bps)))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    c.book_disbursement(as_bank(pb::BookDisbursementRequest {
        request_id: format!("d-{app}"),
        loan_id: loan.loan_id.clone(),
        value_date: on.into(),
        bank_transaction_ref: format!("B-d-{app}"),
    }))
    .await
    .unwrap()
    .into_inner()
    .loan
    .unwrap()
}

fn repayment(loan: &pb::Loan, rid: &str, amount: i64, on: &str) -> pb::BookRepaymentRequest {
    pb::BookRepaymentRequest {
        request_id: rid.into(),
        loan_id: loan.loan_id.clone(),
        amount: cny(amount),
        value_date: on.into(),
        bank_transaction_ref: format!("B-{rid}"),
    }
}

async fn repay(
    c: &mut Client,
    req: pb::BookRepaymentRequest,
) -> Result<pb::BookRepaymentResponse, tonic::Status> {
    c.book_repayment(as_bank(req)).await.map(|r| r.into_inner())
}

/// Both funders' allocation of `component`.
fn allocated(r: &pb::Repayment, component: pb::Component) -> i64 {
    r.allocations
        .iter()
        .filter(|a| a.component == component as i32)
        .map(|a| m(&a.amount))
        .sum()
}

fn balance(l: &pb::Loan, f: Funder) -> pb::FunderBalance {
    l.balances
        .iter()
        .find(|b| b.funder == f as i32)
        .cloned()
        .unwrap()
}

/// The two issue examples, value dates and each funder's schedule after a
/// prepayment.
async fn accrual_and_value_dates(backend: Backend) {
    // 10:00 on 10 January 2026 in Shanghai.
    let (s, mut c, clock) = server(backend, "2026-01-10T02:00:00Z").await;
    set_up(&mut c, agreement("p1"), "a-p1").await.unwrap();

    // 100,000.00 at 6.54% + 1% fee, ACT/360: the whole first period (31
    // days) is 563.17 interest and 86.11 fee.
    let a = disbursed(&mut c, "p1", "a", 654, "2026-01-10").await;
    assert_eq!(m(&a.schedule[0].interest), 56_317);
    assert_eq!(m(&a.schedule[0].fee), 8_611);
    assert_eq!(a.accrued_through, "2026-01-10");
    assert_eq!(a.interest_split, pb::InterestSplit::ProRata as i32);
    // Not after today, not before the disbursement.
    for (rid, day) in [("a-future", "2026-01-11"), ("a-early", "2026-01-09")] {
        let e = repay(&mut c, repayment(&a, rid, 100, day))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{day}");
        assert_eq!(violated_fields(&e), vec!["value_date"]);
    }
    // Paid off the next day: one day's interest (18.17) and fee (2.78).
    clock.set(at("2026-01-11T02:00:00Z"));
    let r = repay(
        &mut c,
        repayment(&a, "a-off", 10_000_000 + 1_817 + 278, "2026-01-11"),
    )
    .await
    .unwrap();
    let rep = r.repayment.unwrap();
    let after = r.loan.unwrap();
    assert_eq!(after.status, pb::LoanStatus::Settled as i32);
    assert_eq!(allocated(&rep, pb::Component::Interest), 1_817);
    assert_eq!(allocated(&rep, pb::Component::Fee), 278);
    assert_eq!(allocated(&rep, pb::Component::Principal), 10_000_000);
    assert_eq!(after.accrued_through, "2026-01-11");
    let accrued = |l: &pb::Loan| -> i64 { l.balances.iter().map(|b| m(&b.interest_accrued)).sum() };
    assert_eq!(accrued(&after), 1_817);

    // 100,000.00 at 6.67% + 1%, paid off on its disbursement day with one
    // day's interest and fee (18.53 + 2.78): settled, nothing accrued, the
    // 21.31 owed back.
    let b = disbursed(&mut c, "p1", "b", 667, "2026-01-11").await;
    let r = repay(
        &mut c,
        repayment(&b, "b-off", 10_000_000 + 1_853 + 278, "2026-01-11"),
    )
    .await
    .unwrap();
    let (rep, after) = (r.repayment.unwrap(), r.loan.unwrap());
    assert_eq!(after.status, pb::LoanStatus::Settled as i32);
    assert_eq!(allocated(&rep, pb::Component::Interest), 0);
    assert_eq!(allocated(&rep, pb::Component::Overpayment), 2_131);
    assert_eq!(m(&after.overpayment), 2_131);
    let e = repay(&mut c, repayment(&b, "b-again", 100, "2026-01-11"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_STATE");

    // A prepayment nine days in: 9 days of interest and fee, then 50,000.00
    // of principal stops bearing interest; each funder's schedule is re-cut.
    let l = disbursed(&mut c, "p1", "c", 654, "2026-01-11").await;
    clock.set(at("2026-01-20T02:00:00Z"));
    let nine = (16_350, 2_500);
    let r = repay(
        &mut c,
        repayment(&l, "c-1", nine.0 + nine.1 + 5_000_000, "2026-01-20"),
    )
    .await
    .unwrap();
    let (rep, after) = (r.repayment.unwrap(), r.loan.unwrap());
    assert_eq!(allocated(&rep, pb::Component::Interest), nine.0);
    assert_eq!(allocated(&rep, pb::Component::Fee), nine.1);
    assert_eq!(allocated(&rep, pb::Component::Principal), 5_000_000);
    assert_eq!(after.schedule.len(), 12);
    // The first instalment: nine days on 100,000.00, 22 on 50,000.00.
    assert_eq!(m(&after.schedule[0].interest), nine.0 + 19_983);
    for i in &after.schedule {
        let lines: Vec<&pb::FunderInstalment> = after
            .funder_schedule
            .iter()
            .filter(|f| f.sequence == i.sequence)
            .collect();
        assert_eq!(lines.len(), 2);
        for (part, whole) in [
            (
                lines.iter().map(|f| m(&f.principal)).sum::<i64>(),
                m(&i.principal),
            ),
            (
                lines.iter().map(|f| m(&f.interest)).sum::<i64>(),
                m(&i.interest),
            ),
            (lines.iter().map(|f| m(&f.fee)).sum::<i64>(), m(&i.fee)),
        ] {
            assert_eq!(part, whole, "instalment {}", i.sequence);
        }
    }
    for f in [Funder::Bank, Funder::Partner] {
        let principal: i64 = after
            .funder_schedule
            .iter()
            .filter(|x| x.funder == f as i32)
            .map(|x| m(&x.principal))
            .sum();
        assert_eq!(
            principal,
            m(&balance(&after, f).principal_outstanding),
            "{f:?}"
        );
    }
    // The same value date again is fine; an earlier one is BACK_VALUED,
    // and stays so for that request id.
    repay(&mut c, repayment(&l, "c-2", 100, "2026-01-20"))
        .await
        .unwrap();
    for _ in 0..2 {
        let e = repay(&mut c, repayment(&l, "c-3", 100, "2026-01-19"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(reason(&e), "BACK_VALUED");
    }
    let seen = c
        .get_loan(as_partner(
            "p1",
            pb::GetLoanRequest {
                loan_id: l.loan_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    assert_eq!(seen.repayments.len(), 2);

    // The ledger: income is what accrued; the overpayment is owed back.
    let tb = c
        .get_trial_balance(as_bank(pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m(&tb.total_debits), m(&tb.total_credits));
    let net = |account: &str| -> i64 {
        tb.balances
            .iter()
            .filter(|b| b.account == account)
            .map(|b| m(&b.credits) - m(&b.debits))
            .sum()
    };
    assert_eq!(net("INTEREST_INCOME"), 1_817 + accrued(&seen));
    assert_eq!(net("OVERPAYMENT_PAYABLE"), 2_131);
    s.stop().await;
}

#[tokio::test]
async fn accrual_and_value_dates_embedded() {
    accrual_and_value_dates(BOTH[0]).await;
}

#[tokio::test]
async fn accrual_and_value_dates_postgres_redis() {
    accrual_and_value_dates(BOTH[1]).await;
}

/// The interest split an agreement states: PRO_RATA by default, OWN_RATE
/// each funder at its own rate with the residual to the residual party;
/// RATE_WEIGHTED is refused on an agreement.
async fn interest_split(backend: Backend) {
    let (s, mut c, clock) = server(backend, "2026-01-10T02:00:00Z").await;
    let mut rw = agreement("own");
    rw.interest_split = pb::InterestSplit::RateWeighted as i32;
    let e = set_up(&mut c, rw, "a-rw").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&e), vec!["agreement.interest_split"]);

    // Bank 10%, partner 18%, 70/30: blended 12.40%. A borrower at 6.54%
    // leaves a negative residual, refused unless the agreement allows it.
    let mut own = agreement("own");
    own.interest_split = pb::InterestSplit::OwnRate as i32;
    let stored = set_up(&mut c, own.clone(), "a-own").await.unwrap();
    assert_eq!(stored.interest_split, pb::InterestSplit::OwnRate as i32);
    assert_eq!(stored.residual_party, Funder::Bank as i32);
    let got = c
        .get_agreement(as_bank(pb::GetAgreementRequest {
            partner_id: "own".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .agreement
        .unwrap();
    assert_eq!(
        (
            got.interest_split,
            got.residual_party,
            got.allow_negative_residual
        ),
        (
            pb::InterestSplit::OwnRate as i32,
            Funder::Bank as i32,
            false
        )
    );
    for _ in 0..2 {
        let e = c
            .reserve_funding(as_service("own", reservation("own", "o1", 654)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(reason(&e), "INVALID_STATE");
        assert!(e.message().contains("1240 bps"), "{}", e.message());
    }
    own.allow_negative_residual = true;
    set_up(&mut c, own, "a-own-2").await.unwrap();
    let l = disbursed(&mut c, "own", "o2", 654, "2026-01-10").await;
    assert_eq!(l.interest_split, pb::InterestSplit::OwnRate as i32);
    assert!(l.allow_negative_residual);
    set_up(&mut c, agreement("pro"), "a-pro").await.unwrap();
    let p = disbursed(&mut c, "pro", "p1", 654, "2026-01-10").await;
    assert_eq!(p.interest_split, pb::InterestSplit::ProRata as i32);
    // The first instalment paid on its due date.
    clock.set(at("2026-02-10T02:00:00Z"));
    for (loan, rid) in [(&l, "o2-1"), (&p, "p1-1")] {
        repay(
            &mut c,
            repayment(loan, rid, m(&loan.schedule[0].total), "2026-02-10"),
        )
        .await
        .unwrap();
    }
    let get = |c: &Client, partner: &'static str, id: String| {
        let mut c = c.clone();
        async move {
            c.get_loan(as_partner(partner, pb::GetLoanRequest { loan_id: id }))
                .await
                .unwrap()
                .into_inner()
                .loan
                .unwrap()
        }
    };
    // Own rate: the partner 18% on its 30,000.00 for 31 days (465.00), the
    // bank the rest of the borrower's 563.17.
    let l = get(&c, "own", l.loan_id.clone()).await;
    let interest = |l: &pb::Loan, f: Funder| m(&balance(l, f).interest_accrued);
    assert_eq!(interest(&l, Funder::Partner), 46_500);
    assert_eq!(interest(&l, Funder::Bank), 56_317 - 46_500);
    assert_eq!(m(&balance(&l, Funder::Partner).interest_paid), 46_500);
    let line = |l: &pb::Loan, f: Funder| {
        l.funder_schedule
            .iter()
            .find(|x| x.funder == f as i32 && x.sequence == 1)
            .map(|x| m(&x.interest))
            .unwrap_or_default()
    };
    assert_eq!(line(&l, Funder::Partner), 46_500);
    // Pro rata: 30% of it.
    let p = get(&c, "pro", p.loan_id.clone()).await;
    assert_eq!(interest(&p, Funder::Partner), 16_895);
    assert_eq!(line(&p, Funder::Partner), 16_895);
    s.stop().await;
}

#[tokio::test]
async fn interest_split_embedded() {
    interest_split(BOTH[0]).await;
}

#[tokio::test]
async fn interest_split_postgres_redis() {
    interest_split(BOTH[1]).await;
}

async fn get(c: &Client, id: &str) -> pb::Loan {
    c.clone()
        .get_loan(as_bank(pb::GetLoanRequest { loan_id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap()
}

/// An overpayment is bounded: a repayment above the payoff on its value
/// date plus the tolerance (10 bps of the payoff by default) is refused,
/// naming the payoff, and books nothing; up to it the loan settles and the
/// excess is owed back.
async fn overpayments_are_bounded(backend: Backend) {
    let (s, mut c, clock) = server(backend, "2026-01-10T02:00:00Z").await;
    set_up(&mut c, agreement("p1"), "a-p1").await.unwrap();
    let l = disbursed(&mut c, "p1", "a", 667, "2026-01-10").await;
    clock.set(at("2026-01-11T02:00:00Z"));
    // The payoff the next day: 100,000.00 and a day's interest and fee
    // (18.53 + 2.78); 10 bps of it is 100.0213, so 100.02 more at most.
    let payoff = 10_000_000 + 1_853 + 278;
    let most = payoff + 10_002;
    for (rid, amount) in [
        ("typo", payoff * 1_000),
        ("max", i64::MAX),
        ("one-over", most + 1),
    ] {
        let e = repay(&mut c, repayment(&l, rid, amount, "2026-01-11"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{rid}");
        assert_eq!(violated_fields(&e), vec!["amount"], "{rid}");
        for said in [
            "the payoff on 2026-01-11 is 100021.31 CNY",
            "at most 100121.33 CNY",
        ] {
            assert!(e.message().contains(said), "{rid}: {}", e.message());
        }
    }
    // Nothing was booked, and the ledger still adds up.
    let seen = get(&c, &l.loan_id).await;
    assert_eq!(seen.status, pb::LoanStatus::Disbursed as i32);
    assert!(seen.repayments.is_empty());
    let tb = c
        .get_trial_balance(as_bank(pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m(&tb.total_debits), m(&tb.total_credits));
    // Exactly the payoff plus the tolerance settles it; the excess is owed back.
    let r = repay(&mut c, repayment(&l, "most", most, "2026-01-11"))
        .await
        .unwrap();
    let (rep, after) = (r.repayment.unwrap(), r.loan.unwrap());
    assert_eq!(after.status, pb::LoanStatus::Settled as i32);
    assert_eq!(allocated(&rep, pb::Component::Overpayment), 10_002);
    assert_eq!(m(&after.overpayment), 10_002);
    s.stop().await;
}

#[tokio::test]
async fn overpayments_are_bounded_embedded() {
    overpayments_are_bounded(BOTH[0]).await;
}

#[tokio::test]
async fn overpayments_are_bounded_postgres_redis() {
    overpayments_are_bounded(BOTH[1]).await;
}

/// A repayment may not be valued before what the loan is accrued through,
/// even when no repayment reaches that date: an end-of-day accrual through
/// the 15th (written here as it would post it) makes the 14th BACK_VALUED;
/// on the 15th what accrued is paid and nothing accrues twice.
async fn back_valued_against_what_is_accrued(backend: Backend) {
    let (s, mut c, clock) = server(backend, "2026-01-10T02:00:00Z").await;
    set_up(&mut c, agreement("p1"), "a-p1").await.unwrap();
    let l = disbursed(&mut c, "p1", "a", 654, "2026-01-10").await;
    clock.set(at("2026-01-20T02:00:00Z"));
    // Five days on 100,000.00: 90.83 interest (27.24 the partner's, pro
    // rata), 13.89 fee (5.55 the partner's, 40%).
    let db = colend_funding::connect(&s.backends).await.unwrap();
    sqlx::query(
        "UPDATE instalments SET interest_accrued = 9083, fee_accrued = 1389 \
         WHERE loan_id = $1 AND seq = 1",
    )
    .bind(&l.loan_id)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE loans SET accrued_through = '2026-01-15', interest_accrued = 9083, \
         partner_interest_accrued = 2724, fee_accrued = 1389, partner_fee_accrued = 555 \
         WHERE loan_id = $1",
    )
    .bind(&l.loan_id)
    .execute(&db.pool)
    .await
    .unwrap();
    for day in ["2026-01-11", "2026-01-14"] {
        let e = repay(&mut c, repayment(&l, &format!("early-{day}"), 100, day))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{day}");
        assert_eq!(reason(&e), "BACK_VALUED", "{day}");
        assert!(
            e.message().contains("on or after 2026-01-15") && !e.message().contains("reverse"),
            "{}",
            e.message()
        );
    }
    assert!(get(&c, &l.loan_id).await.repayments.is_empty());
    // Penalty accrued further than interest counts too.
    sqlx::query("UPDATE loans SET penalty_through = '2026-01-16' WHERE loan_id = $1")
        .bind(&l.loan_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let e = repay(&mut c, repayment(&l, "early-15", 100, "2026-01-15"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BACK_VALUED");
    assert!(e.message().contains("2026-01-16"), "{}", e.message());
    // On the 16th: what accrued through the 15th, and one more day.
    let r = repay(&mut c, repayment(&l, "on-16", 9_083 + 1_389, "2026-01-16"))
        .await
        .unwrap();
    let rep = r.repayment.unwrap();
    let one_day = (1_817, 278);
    assert_eq!(
        allocated(&rep, pb::Component::Interest) + allocated(&rep, pb::Component::Fee),
        9_083 + 1_389
    );
    let after = r.loan.unwrap();
    let accrued: i64 = after.balances.iter().map(|b| m(&b.interest_accrued)).sum();
    assert_eq!(accrued, 9_083 + one_day.0);
    assert_eq!(after.accrued_through, "2026-01-16");
    db.pool.close().await;
    s.stop().await;
}

#[tokio::test]
async fn back_valued_against_what_is_accrued_embedded() {
    back_valued_against_what_is_accrued(BOTH[0]).await;
}

#[tokio::test]
async fn back_valued_against_what_is_accrued_postgres_redis() {
    back_valued_against_what_is_accrued(BOTH[1]).await;
}

/// ReserveFunding refuses a price whose all-in cost over a 365-day year is
/// above the cap (24% by default, rule C12), on the agreement's day count,
/// and a principal above the ceiling (10^13 minor units).
async fn reservation_bounds(backend: Backend) {
    let (s, mut c, _) = server(backend, "2026-01-10T02:00:00Z").await;
    set_up(&mut c, agreement("p1"), "a-p1").await.unwrap();
    let mut act365 = agreement("p365");
    act365.day_count = pb::DayCount::Act365 as i32;
    set_up(&mut c, act365, "a-p365").await.unwrap();
    // Rate plus a 1% fee: on ACT/360 × 365/360, on ACT/365 as it is.
    for (partner, app, rate_bps, all_in) in [
        ("p1", "x2399", 2_299, Some(2_433)),
        ("p1", "x2368", 2_268, Some(2_401)),
        ("p1", "x2367", 2_267, None),
        ("p365", "y2401", 2_301, Some(2_401)),
        ("p365", "y2400", 2_300, None),
    ] {
        let r = c
            .reserve_funding(as_service(partner, reservation(partner, app, rate_bps)))
            .await;
        match all_in {
            None => assert_eq!(
                r.unwrap().into_inner().loan.unwrap().annual_rate_bps,
                rate_bps,
                "{app}"
            ),
            Some(figure) => {
                let e = r.unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "{app}");
                assert_eq!(violated_fields(&e), vec!["annual_rate_bps"], "{app}");
                let said = format!("is {figure} bps over a 365-day year");
                assert!(e.message().contains(&said), "{app}: {}", e.message());
            }
        }
    }
    // The ceiling: above it the principal is refused as such; at it the
    // reservation goes on to the limits (this agreement's quota is smaller).
    for (app, principal) in [("big", 10_000_000_000_001), ("max", i64::MAX)] {
        let mut r = reservation("p1", app, 1_000);
        r.principal = cny(principal);
        let e = c.reserve_funding(as_service("p1", r)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{app}");
        assert_eq!(violated_fields(&e), vec!["principal"], "{app}");
    }
    let mut r = reservation("p1", "ceiling", 1_000);
    r.principal = cny(10_000_000_000_000);
    let e = c.reserve_funding(as_service("p1", r)).await.unwrap_err();
    assert_eq!(reason(&e), "QUOTA_EXCEEDED");
    s.stop().await;
}

#[tokio::test]
async fn reservation_bounds_embedded() {
    reservation_bounds(BOTH[0]).await;
}

#[tokio::test]
async fn reservation_bounds_postgres_redis() {
    reservation_bounds(BOTH[1]).await;
}

/// ListLoans' first page under a database whose collation is not C (on
/// PostgreSQL the loan id column is given an ICU collation, as a database
/// created with a non-C default has it; SQLite compares bytes): pages
/// newest first, every loan once.
async fn list_loans_under_any_collation(backend: Backend) {
    let dir = TempDir::new();
    let b = colend_testkit::backends(backend, &dir).await;
    if b.database_url.is_some() {
        // Before the service prepares any statement on the table.
        let db = colend_funding::connect(&b).await.unwrap();
        sqlx::query(r#"ALTER TABLE loans ALTER COLUMN loan_id TYPE TEXT COLLATE "en-x-icu""#)
            .execute(&db.pool)
            .await
            .unwrap();
        db.pool.close().await;
    }
    let (s, mut c, _) = server_on(b, dir, "2026-01-10T02:00:00Z").await;
    set_up(&mut c, agreement("p1"), "a-p1").await.unwrap();
    let mut ids = Vec::new();
    for app in ["a", "b", "c"] {
        let loan = c
            .reserve_funding(as_service("p1", reservation("p1", app, 654)))
            .await
            .unwrap()
            .into_inner()
            .loan
            .unwrap();
        ids.push(loan.loan_id);
    }
    ids.reverse();
    for bank in [true, false] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let req = pb::ListLoansRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            };
            let page = if bank {
                c.list_loans(as_bank(req)).await
            } else {
                c.list_loans(as_partner("p1", req)).await
            }
            .unwrap()
            .into_inner();
            assert!(!page.loans.is_empty(), "an empty page (bank: {bank})");
            seen.extend(page.loans.into_iter().map(|l| l.loan_id));
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
async fn list_loans_under_any_collation_embedded() {
    list_loans_under_any_collation(BOTH[0]).await;
}

#[tokio::test]
async fn list_loans_under_any_collation_postgres_redis() {
    list_loans_under_any_collation(BOTH[1]).await;
}
