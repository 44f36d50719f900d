//! The accrual run through the API, on a manual clock (business days in
//! Asia/Shanghai), on both backends: AccrueInterest posts what accrued
//! through a date per funder, once; a repayment afterwards posts only the
//! days since; a loan's income is the same with or without runs; the daily
//! run accrues every loan through the day before, once the business date
//! turns at midnight in Shanghai.
use colend_contracts::common::v1::{Funder, Money, RepaymentMethod};
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_platform::time::{Clock, Tz};
use colend_testkit::{BOTH, Backend, TestServer, as_bank, as_service, reason, violated_fields};
use std::time::Duration;
use tonic::Code;

type Client = FundingServiceClient<tonic::transport::Channel>;

/// 100,000.00 at 7.20% and 1.80% of fees a year, ACT/360, 30% from the
/// partner (fees 40% to it): round figures for the oracle below.
const PRINCIPAL: i64 = 10_000_000;
const RATE_BPS: i64 = 720;
const FEE_BPS: i64 = 180;
const PARTNER_SHARE_BPS: i64 = 3_000;
const FEE_PARTNER_BPS: i64 = 4_000;

/// (bank, partner) of `days` of interest or fees at `bps` on the whole
/// principal, split at `partner_bps`, computed from the terms alone: the
/// figures are chosen so every division is exact.
fn oracle(bps: i64, days: i64, partner_bps: i64) -> (i64, i64) {
    let num = i128::from(PRINCIPAL) * i128::from(bps) * i128::from(days);
    let den = 10_000i128 * 360;
    assert_eq!(num % den, 0, "pick figures that divide exactly");
    let whole = num / den;
    assert_eq!(whole * i128::from(partner_bps) % 10_000, 0);
    let partner = whole * i128::from(partner_bps) / 10_000;
    (
        i64::try_from(whole - partner).unwrap(),
        i64::try_from(partner).unwrap(),
    )
}

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

/// A server whose business day is `rfc3339`'s in Shanghai until the clock
/// moves; the daily run on (checking the date every 50 ms) or off.
async fn server(backend: Backend, rfc3339: &str, daily: bool) -> (TestServer, Client, Clock) {
    server_with_penalty(backend, rfc3339, daily, 0).await
}

/// [`server`], its agreement charging `penalty_bps` a year of penalty
/// interest on overdue amounts.
async fn server_with_penalty(
    backend: Backend,
    rfc3339: &str,
    daily: bool,
    penalty_bps: i32,
) -> (TestServer, Client, Clock) {
    let mut settings = colend_funding::app::Settings::from_env().unwrap();
    settings.time_zone = Tz::Asia__Shanghai;
    settings.clock = Clock::manual(at(rfc3339));
    settings.daily_accrual = daily;
    settings.accrual_lag_days = 1;
    settings.sweep_every = Duration::from_millis(50);
    let clock = settings.clock.clone();
    let s = TestServer::start(backend, |mesh| async move {
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
    c.whitelist_institution(as_bank(pb::WhitelistInstitutionRequest {
        request_id: "wl".into(),
        entry: Some(pb::WhitelistEntry {
            institution_id: "p1".into(),
            kind: pb::InstitutionKind::Partner as i32,
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: "a".into(),
        agreement: Some(pb::Agreement {
            partner_id: "p1".into(),
            partner_share_bps: PARTNER_SHARE_BPS as i32,
            bank_rate_bps: 600,
            partner_rate_bps: 900,
            daily_quota: cny(100_000_000_000),
            total_quota: cny(100_000_000_000),
            effective_from: "2026-01-01".into(),
            fee_partner_share_bps: FEE_PARTNER_BPS as i32,
            penalty_rate_bps: penalty_bps,
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    (s, c, clock)
}

async fn disbursed(c: &mut Client, app: &str, on: &str) -> pb::Loan {
    let loan = c
        .reserve_funding(as_service(
            "p1",
            pb::ReserveFundingRequest {
                request_id: format!("r-{app}"),
                application_id: app.into(),
                partner_id: "p1".into(),
                principal: cny(PRINCIPAL),
                term_months: 12,
                annual_rate_bps: RATE_BPS as i32,
                repayment_method: RepaymentMethod::EqualInstalment as i32,
                borrower_key: format!("borrower-{app}"),
                annual_fee_bps: FEE_BPS as i32,
            },
        ))
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

async fn accrue(
    c: &mut Client,
    rid: &str,
    as_of: &str,
) -> Result<pb::AccrueInterestResponse, tonic::Status> {
    c.accrue_interest(as_bank(pb::AccrueInterestRequest {
        request_id: rid.into(),
        as_of: as_of.into(),
    }))
    .await
    .map(|r| r.into_inner())
}

async fn repay(
    c: &mut Client,
    loan: &pb::Loan,
    rid: &str,
    amount: i64,
    on: &str,
) -> pb::BookRepaymentResponse {
    c.book_repayment(as_bank(pb::BookRepaymentRequest {
        request_id: rid.into(),
        loan_id: loan.loan_id.clone(),
        amount: cny(amount),
        value_date: on.into(),
        bank_transaction_ref: format!("B-{rid}"),
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn get(c: &mut Client, loan: &pb::Loan) -> pb::Loan {
    c.get_loan(as_bank(pb::GetLoanRequest {
        loan_id: loan.loan_id.clone(),
    }))
    .await
    .unwrap()
    .into_inner()
    .loan
    .unwrap()
}

async fn trial_balance(c: &mut Client) -> pb::GetTrialBalanceResponse {
    c.get_trial_balance(as_bank(pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner()
}

/// (bank, partner) credits less debits of `account`.
fn income(tb: &pb::GetTrialBalanceResponse, account: &str) -> (i64, i64) {
    let of = |f: Funder| {
        tb.balances
            .iter()
            .filter(|b| b.account == account && b.funder == f as i32)
            .map(|b| m(&b.credits) - m(&b.debits))
            .sum::<i64>()
    };
    (of(Funder::Bank), of(Funder::Partner))
}

/// The amounts of one currency in a response list (0 when absent).
fn cny_of(list: &[Money]) -> i64 {
    list.iter()
        .filter(|x| x.currency_code == "CNY")
        .map(|x| x.minor_units)
        .sum()
}

/// What a loan shows of its money (everything but its ids and repayments'
/// ids): equal for two loans booked alike.
fn money_view(
    l: &pb::Loan,
) -> (
    Vec<pb::FunderBalance>,
    Vec<pb::Instalment>,
    Vec<pb::FunderInstalment>,
    String,
    i32,
) {
    (
        l.balances.clone(),
        l.schedule.clone(),
        l.funder_schedule.clone(),
        l.accrued_through.clone(),
        l.status,
    )
}

/// Disbursed on 10 January, accrued by AccrueInterest through the 20th,
/// partly prepaid on the 25th; beside it, on a server of its own, the
/// same loan repaid alike without any run.
async fn run_then_repay(backend: Backend) {
    let start = "2026-01-10T02:00:00Z";
    let (s, mut c, clock) = server(backend, start, false).await;
    let a = disbursed(&mut c, "a", "2026-01-10").await;
    assert_eq!(a.accrued_through, "2026-01-10");

    // Input is checked first: the date, then not after today.
    clock.set(at("2026-01-20T02:00:00Z"));
    for (rid, day, field) in [
        ("", "2026-01-20", "request_id"),
        ("bad", "2026/01/20", "as_of"),
        ("future", "2026-01-21", "as_of"),
    ] {
        let e = accrue(&mut c, rid, day).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{day}");
        assert_eq!(violated_fields(&e), vec![field], "{day}");
    }

    // Ten days of interest and fees, each funder its part.
    let r = accrue(&mut c, "acc-20", "2026-01-20").await.unwrap();
    let interest = oracle(RATE_BPS, 10, PARTNER_SHARE_BPS);
    let fee = oracle(FEE_BPS, 10, FEE_PARTNER_BPS);
    assert_eq!(interest, (14_000, 6_000));
    assert_eq!(r.as_of, "2026-01-20");
    assert_eq!(r.loans_accrued, 1);
    assert_eq!(r.interest, vec![cny(interest.0 + interest.1).unwrap()]);
    assert_eq!(r.fee, vec![cny(fee.0 + fee.1).unwrap()]);
    assert_eq!(r.penalty, vec![cny(0).unwrap()]);
    let tb = trial_balance(&mut c).await;
    assert_eq!(income(&tb, "INTEREST_INCOME"), interest);
    assert_eq!(income(&tb, "FEE_INCOME"), fee);
    assert_eq!(
        income(&tb, "INTEREST_RECEIVABLE"),
        (-interest.0, -interest.1)
    );
    let seen = get(&mut c, &a).await;
    assert_eq!(seen.accrued_through, "2026-01-20");
    let accrued = |l: &pb::Loan, f: Funder| {
        let b = l.balances.iter().find(|b| b.funder == f as i32).unwrap();
        (m(&b.interest_accrued), m(&b.fee_accrued))
    };
    assert_eq!(accrued(&seen, Funder::Bank), (interest.0, fee.0));
    assert_eq!(accrued(&seen, Funder::Partner), (interest.1, fee.1));

    // The same request again: the same answer. Another request for the
    // date: nothing more to post. The id with another date: refused.
    assert_eq!(accrue(&mut c, "acc-20", "2026-01-20").await.unwrap(), r);
    let again = accrue(&mut c, "acc-20-again", "2026-01-20").await.unwrap();
    assert_eq!(
        (
            again.loans_accrued,
            again.interest.len(),
            again.fee.len(),
            again.penalty.len()
        ),
        (0, 0, 0, 0)
    );
    let e = accrue(&mut c, "acc-20", "2026-01-19").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason(&e), "IDEMPOTENCY_KEY_REUSED");
    // An earlier date posts nothing either.
    let earlier = accrue(&mut c, "acc-15", "2026-01-15").await.unwrap();
    assert_eq!(earlier.loans_accrued, 0);
    assert_eq!(trial_balance(&mut c).await.balances, tb.balances);

    // A prepayment on the 25th: fifteen days' interest and fees are paid,
    // of which the repayment posts only the last five days.
    clock.set(at("2026-01-25T02:00:00Z"));
    let owed = oracle(RATE_BPS, 15, PARTNER_SHARE_BPS);
    let owed_fee = oracle(FEE_BPS, 15, FEE_PARTNER_BPS);
    let amount = owed.0 + owed.1 + owed_fee.0 + owed_fee.1 + 2_000_000;
    let rep = repay(&mut c, &a, "a-1", amount, "2026-01-25").await;
    let tb = trial_balance(&mut c).await;
    assert_eq!(income(&tb, "INTEREST_INCOME"), owed);
    assert_eq!(income(&tb, "FEE_INCOME"), owed_fee);
    let five = oracle(RATE_BPS, 5, PARTNER_SHARE_BPS);
    assert_eq!(
        (owed.0 - interest.0, owed.1 - interest.1),
        five,
        "the repayment posted the five days since the run"
    );
    assert_eq!(rep.loan.as_ref().unwrap().accrued_through, "2026-01-25");
    // Accrued through the 25th by the repayment: a run for it posts nothing.
    assert_eq!(
        accrue(&mut c, "acc-25", "2026-01-25")
            .await
            .unwrap()
            .loans_accrued,
        0
    );

    // Another run on 20 February (the first instalment due on the 10th
    // is not paid) and a repayment on the 25th.
    clock.set(at("2026-02-20T02:00:00Z"));
    let feb = accrue(&mut c, "acc-feb-20", "2026-02-20").await.unwrap();
    assert_eq!(feb.loans_accrued, 1);
    assert!(cny_of(&feb.interest) > 0);
    clock.set(at("2026-02-25T02:00:00Z"));
    repay(&mut c, &a, "a-2", 1_000_000, "2026-02-25").await;
    let with_runs = get(&mut c, &a).await;
    let tb_with_runs = trial_balance(&mut c).await;
    s.stop().await;

    // The twin: the same loan and repayments, never a run.
    let (s, mut c, clock) = server(backend, start, false).await;
    let b = disbursed(&mut c, "a", "2026-01-10").await;
    clock.set(at("2026-01-25T02:00:00Z"));
    let rep_b = repay(&mut c, &b, "a-1", amount, "2026-01-25").await;
    let allocations =
        |r: &pb::BookRepaymentResponse| r.repayment.as_ref().unwrap().allocations.clone();
    assert_eq!(allocations(&rep_b), allocations(&rep));
    clock.set(at("2026-02-25T02:00:00Z"));
    repay(&mut c, &b, "a-2", 1_000_000, "2026-02-25").await;
    let without = get(&mut c, &b).await;
    let tb_without = trial_balance(&mut c).await;
    for account in ["INTEREST_INCOME", "FEE_INCOME", "PENALTY_INCOME"] {
        assert_eq!(
            income(&tb_with_runs, account),
            income(&tb_without, account),
            "{account}"
        );
    }
    assert_eq!(tb_with_runs.balances, tb_without.balances);
    assert_eq!(money_view(&with_runs), money_view(&without));
    s.stop().await;
}

#[tokio::test]
async fn run_then_repay_embedded() {
    run_then_repay(BOTH[0]).await;
}

#[tokio::test]
async fn run_then_repay_postgres_redis() {
    run_then_repay(BOTH[1]).await;
}

/// 18% a year of penalty interest: the agreement's rate in the penalty cases.
const PENALTY_BPS: i64 = 1_800;

/// Penalty on `unpaid` for `days` at [`PENALTY_BPS`], ACT/360, rounded half
/// up once: what one overdue segment carries, computed from the terms.
fn penalty_oracle(unpaid: i64, days: i64) -> i64 {
    let num = i128::from(unpaid) * i128::from(PENALTY_BPS) * i128::from(days);
    let den = 10_000i128 * 360;
    i64::try_from((2 * num + den) / (2 * den)).unwrap()
}

/// The penalty path, with an AccrueInterest run on every day the first
/// instalment (due 10 February) is overdue or without any: 500,000 repaid
/// on 25 February (what is left of the instalment starts a new overdue
/// segment), the second instalment overdue from 10 March, 1,500,000 repaid
/// on the 15th. The schedule as disbursed, the penalty income after the
/// first repayment, the loan, the trial balance and both repayments.
async fn penalty_path(
    backend: Backend,
    runs: bool,
) -> (
    Vec<pb::Instalment>,
    (i64, i64),
    pb::Loan,
    pb::GetTrialBalanceResponse,
    Vec<pb::BookRepaymentResponse>,
) {
    let (s, mut c, clock) =
        server_with_penalty(backend, "2026-01-10T02:00:00Z", false, PENALTY_BPS as i32).await;
    let loan = disbursed(&mut c, "p", "2026-01-10").await;
    let days = |from: u32, to: u32, month: u32| {
        (from..=to).map(move |d| format!("2026-{month:02}-{d:02}"))
    };
    let mut reps = Vec::new();
    let run = async |c: &mut Client, day: String| {
        clock.set(at(&format!("{day}T02:00:00Z")));
        if runs {
            let r = accrue(c, &format!("acc-{day}"), &day).await.unwrap();
            assert_eq!(r.loans_accrued, 1, "{day}");
        }
    };
    for day in days(11, 25, 2) {
        run(&mut c, day).await;
    }
    reps.push(repay(&mut c, &loan, "p-1", 500_000, "2026-02-25").await);
    let after_first = income(&trial_balance(&mut c).await, "PENALTY_INCOME");
    for day in days(26, 28, 2).chain(days(1, 15, 3)) {
        run(&mut c, day).await;
    }
    reps.push(repay(&mut c, &loan, "p-2", 1_500_000, "2026-03-15").await);
    let seen = get(&mut c, &loan).await;
    let tb = trial_balance(&mut c).await;
    s.stop().await;
    (loan.schedule, after_first, seen, tb, reps)
}

/// Penalty interest accrued by daily runs is exactly what accruing it at
/// the repayments alone gives, to each funder: within an overdue segment
/// it is rounded once, on the days since the segment began.
async fn penalty_with_and_without_runs(backend: Backend) {
    let (schedule, first_with, with_runs, tb_with, reps_with) = penalty_path(backend, true).await;
    let (_, first_without, without, tb_without, reps_without) = penalty_path(backend, false).await;
    // The oracle: 15 days on the first instalment; then 18 days on what the
    // first repayment left of it and 5 on the second instalment.
    let total = |k: usize| m(&schedule[k].total);
    let p1 = penalty_oracle(total(0), 15);
    let left = total(0) - (500_000 - p1);
    let whole = p1 + penalty_oracle(left, 18) + penalty_oracle(total(1), 5);
    let partner = |t: i64| t * PARTNER_SHARE_BPS / 10_000;
    for first in [first_with, first_without] {
        assert_eq!(first, (p1 - partner(p1), partner(p1)));
    }
    let penalty_income = income(&tb_with, "PENALTY_INCOME");
    assert_eq!(penalty_income, (whole - partner(whole), partner(whole)));
    assert_eq!(income(&tb_without, "PENALTY_INCOME"), penalty_income);
    for account in ["INTEREST_INCOME", "FEE_INCOME"] {
        assert_eq!(
            income(&tb_with, account),
            income(&tb_without, account),
            "{account}"
        );
    }
    assert_eq!(tb_with.balances, tb_without.balances);
    assert_eq!(money_view(&with_runs), money_view(&without));
    let allocations =
        |r: &pb::BookRepaymentResponse| r.repayment.as_ref().unwrap().allocations.clone();
    for (a, b) in reps_with.iter().zip(&reps_without) {
        assert_eq!(allocations(a), allocations(b));
    }
}

#[tokio::test]
async fn penalty_with_and_without_runs_embedded() {
    penalty_with_and_without_runs(BOTH[0]).await;
}

#[tokio::test]
async fn penalty_with_and_without_runs_postgres_redis() {
    penalty_with_and_without_runs(BOTH[1]).await;
}

/// Several runs for one date at once (as replicas would): each loan is
/// accrued once, whichever run takes it.
async fn concurrent_runs(backend: Backend) {
    let (s, mut c, clock) = server(backend, "2026-01-10T02:00:00Z", false).await;
    let n = 6;
    for i in 0..n {
        disbursed(&mut c, &format!("c{i}"), "2026-01-10").await;
    }
    clock.set(at("2026-01-20T02:00:00Z"));
    let runs = (0..3).map(|k| {
        let mut c = c.clone();
        async move {
            accrue(&mut c, &format!("run-{k}"), "2026-01-20")
                .await
                .unwrap()
        }
    });
    let answers = futures::future::join_all(runs).await;
    let loans: i32 = answers.iter().map(|r| r.loans_accrued).sum();
    let posted: i64 = answers.iter().map(|r| cny_of(&r.interest)).sum();
    let interest = oracle(RATE_BPS, 10, PARTNER_SHARE_BPS);
    assert_eq!(loans, n);
    assert_eq!(posted, i64::from(n) * (interest.0 + interest.1));
    let tb = trial_balance(&mut c).await;
    assert_eq!(
        income(&tb, "INTEREST_INCOME"),
        (i64::from(n) * interest.0, i64::from(n) * interest.1)
    );
    assert_eq!(m(&tb.total_debits), m(&tb.total_credits));
    s.stop().await;
}

#[tokio::test]
async fn concurrent_runs_embedded() {
    concurrent_runs(BOTH[0]).await;
}

#[tokio::test]
async fn concurrent_runs_postgres_redis() {
    concurrent_runs(BOTH[1]).await;
}

/// Waits (bounded) until the loan is accrued through `day`.
async fn accrued_through(c: &mut Client, loan: &pb::Loan, day: &str) -> pb::Loan {
    for _ in 0..1_200 {
        let l = get(c, loan).await;
        if l.accrued_through.as_str() >= day {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("loan {} not accrued through {day}", loan.loan_id);
}

/// The daily run: the business date turns at midnight in Shanghai (16:00
/// UTC), and funding accrues every loan through the day before.
async fn daily_run(backend: Backend) {
    let (s, mut c, clock) = server(backend, "2026-01-10T02:00:00Z", true).await;
    let a = disbursed(&mut c, "a", "2026-01-10").await;
    let b = disbursed(&mut c, "b", "2026-01-10").await;
    // 23:59 on 20 January in Shanghai: through the 19th.
    clock.set(at("2026-01-20T15:59:00Z"));
    for l in [&a, &b] {
        let seen = accrued_through(&mut c, l, "2026-01-19").await;
        assert_eq!(seen.accrued_through, "2026-01-19");
    }
    let nine = oracle(RATE_BPS, 9, PARTNER_SHARE_BPS);
    assert_eq!(
        income(&trial_balance(&mut c).await, "INTEREST_INCOME"),
        (2 * nine.0, 2 * nine.1)
    );
    // A repayment value-dated the 19th (booked a day later) is still
    // accepted: the run stops at the day before today.
    repay(&mut c, &b, "b-1", 100_000, "2026-01-19").await;
    // 00:01 on the 21st in Shanghai (still the 20th in UTC): through the 20th.
    clock.set(at("2026-01-20T16:01:00Z"));
    let seen = accrued_through(&mut c, &a, "2026-01-20").await;
    assert_eq!(seen.accrued_through, "2026-01-20");
    let ten = oracle(RATE_BPS, 10, PARTNER_SHARE_BPS);
    let b_seen = accrued_through(&mut c, &b, "2026-01-20").await;
    assert_eq!(b_seen.accrued_through, "2026-01-20");
    let tb = trial_balance(&mut c).await;
    let (bank, partner) = income(&tb, "INTEREST_INCOME");
    // Loan a: exactly ten days; loan b: ten days on what its repayment left.
    let b_interest: i64 = b_seen.balances.iter().map(|x| m(&x.interest_accrued)).sum();
    assert_eq!(bank + partner, ten.0 + ten.1 + b_interest);
    let a_accrued: i64 = seen.balances.iter().map(|x| m(&x.interest_accrued)).sum();
    assert_eq!(a_accrued, ten.0 + ten.1);
    s.stop().await;
}

#[tokio::test]
async fn daily_run_embedded() {
    daily_run(BOTH[0]).await;
}

#[tokio::test]
async fn daily_run_postgres_redis() {
    daily_run(BOTH[1]).await;
}
