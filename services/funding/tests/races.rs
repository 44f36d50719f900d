//! Money paths raced by two funding replicas on one database: two servers
//! in this process, each with its own pool, on real sockets. On PostgreSQL
//! (READ COMMITTED, pools of 16) this is where a read-modify-write of a
//! loan loses money; on SQLite the single writer serialises, and the same
//! races must end the same way.
//!
//! Each race counts what went wrong over many loans and asserts at the end,
//! so a failure says how often it happened. After each race the partner's
//! total and daily quota in use and the bank's C2/C3 exposure (to the
//! partner and overall) must be what the race's live loans hold.
//!
//! Concurrent repayments run twice: dated on the disbursement day (nothing
//! accrues), and on loans disbursed 45 days earlier, past the first due
//! date, so each repayment posts interest and penalty accruals first; there
//! every raced loan must end exactly as one control loan repaid the same
//! amounts one after the other: balances, allocations and ledger postings.
//! Both replicas share one manual clock (business days in Asia/Shanghai),
//! standing at the start of the run: the overdue variant moves it back 45
//! days to reserve and disburse, and forward again to repay.
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_platform::Db;
use colend_platform::time::{Clock, Tz};
use colend_testkit::{BOTH, Backend, TempDir, TestServer, as_bank, as_service, reason};
use std::collections::BTreeMap;
use tonic::transport::Channel;

const LOANS: usize = 40;

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

fn m(x: &Option<Money>) -> i64 {
    x.as_ref().map(|m| m.minor_units).unwrap_or(0)
}

type Client = FundingServiceClient<Channel>;

/// The replicas' clock and where it stood at the start of the run.
fn clock() -> &'static (Clock, i64) {
    static CLOCK: std::sync::OnceLock<(Clock, i64)> = std::sync::OnceLock::new();
    CLOCK.get_or_init(|| {
        let start = colend_platform::time::now_millis();
        (Clock::manual(start), start)
    })
}

/// Moves the clock to `days` before the start of the run.
fn days_back(days: u64) {
    let (c, start) = clock();
    c.set(start - i64::try_from(days).unwrap_or(0) * 86_400_000);
}

/// The business day the clock stands on.
fn today() -> String {
    colend_platform::time::format_date(clock().0.business_date(Tz::Asia__Shanghai))
}

/// Two replicas on one PostgreSQL database; embedded storage is one
/// process's (a single SQLite writer), so there both clients call the one
/// server.
async fn replicas(backend: Backend) -> (TestServer, Option<TestServer>) {
    let dir = TempDir::new();
    let b = colend_testkit::backends(backend, &dir).await;
    let start = |b, dir| {
        TestServer::start_with(b, dir, |mesh| async move {
            let mut settings = colend_funding::app::Settings::from_env()?;
            settings.time_zone = Tz::Asia__Shanghai;
            settings.clock = clock().0.clone();
            Ok(vec![colend_funding::register_with(mesh, settings).await?])
        })
    };
    let first = start(b.clone(), dir).await;
    let second = match backend {
        Backend::Production => Some(start(b, TempDir::new()).await),
        Backend::Embedded => None,
    };
    (first, second)
}

async fn set_up(c: &mut Client, partner: &str) {
    c.set_bank_reference(as_bank(pb::SetBankReferenceRequest {
        request_id: format!("ref-{partner}"),
        reference: Some(pb::BankReference {
            net_tier1_capital: cny(1_000_000_000_000),
            total_loan_balance: cny(10_000_000_000_000),
            as_of: "2026-09-30".into(),
        }),
    }))
    .await
    .unwrap();
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: format!("agr-{partner}"),
        agreement: Some(pb::Agreement {
            partner_id: partner.into(),
            partner_share_bps: 3_000,
            bank_rate_bps: 900,
            partner_rate_bps: 1_100,
            daily_quota: cny(100_000_000_000),
            total_quota: cny(100_000_000_000),
            effective_from: "2026-01-01".into(),
            fee_partner_share_bps: 4_000,
            penalty_rate_bps: 1_800,
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
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

fn reservation(partner: &str, app: &str) -> pb::ReserveFundingRequest {
    pb::ReserveFundingRequest {
        request_id: format!("reserve-{app}"),
        application_id: app.into(),
        partner_id: partner.into(),
        principal: cny(10_000_000),
        term_months: 6,
        annual_rate_bps: 1_200,
        repayment_method: RepaymentMethod::EqualInstalment as i32,
        borrower_key: format!("borrower-{app}"),
        annual_fee_bps: 100,
    }
}

async fn reserve(c: &mut Client, partner: &str, app: &str) -> pb::Loan {
    c.reserve_funding(as_service(partner, reservation(partner, app)))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap()
}

/// A disbursement valued on the business day the clock stands on.
fn disbursement(loan_id: &str, rid: &str, bank_ref: &str) -> pb::BookDisbursementRequest {
    pb::BookDisbursementRequest {
        request_id: rid.into(),
        loan_id: loan_id.into(),
        value_date: today(),
        bank_transaction_ref: bank_ref.into(),
    }
}

fn repayment(loan_id: &str, rid: &str, bank_ref: &str, amount: i64) -> pb::BookRepaymentRequest {
    pb::BookRepaymentRequest {
        request_id: rid.into(),
        loan_id: loan_id.into(),
        amount: cny(amount),
        value_date: today(),
        bank_transaction_ref: bank_ref.into(),
    }
}

async fn get_loan(c: &mut Client, partner: &str, loan_id: &str) -> pb::Loan {
    c.get_loan(colend_testkit::as_partner(
        partner,
        pb::GetLoanRequest {
            loan_id: loan_id.into(),
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .loan
    .unwrap()
}

/// The bank's exposure to all partners (C3) and to `partner` (C2), as
/// funding reports them.
async fn usage(c: &mut Client, partner: &str) -> (i64, i64) {
    let r = c
        .get_bank_reference(as_bank(pb::GetBankReferenceRequest {
            partner_id: partner.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    (m(&r.co_lent_total), m(&r.partner_co_lent))
}

/// The partner's total quota in use and its daily quota in use summed over
/// the days, as funding's counters hold them (no API reports them: read as
/// `colend check` reads them).
async fn quota_in_use(db: &Db, partner: &str) -> (i64, i64) {
    let total: Option<(i64,)> =
        sqlx::query_as("SELECT used FROM partner_usage WHERE partner_id = $1")
            .bind(partner)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
    let daily: Vec<(i64,)> =
        sqlx::query_as("SELECT used FROM partner_daily_usage WHERE partner_id = $1")
            .bind(partner)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    (total.map_or(0, |t| t.0), daily.iter().map(|d| d.0).sum())
}

/// A race's partner and the bank's exposure before it began.
struct Counted {
    partner: &'static str,
    all_before: i64,
}

impl Counted {
    async fn start(c: &mut Client, partner: &'static str) -> Counted {
        Counted {
            partner,
            all_before: usage(c, partner).await.0,
        }
    }

    /// The partner's total and daily quota in use, the bank's exposure to
    /// it and overall (the change since the race began: the other races'
    /// partners hold the rest) against what `loans` hold now: a reserved
    /// loan its amounts, a disbursed one its principal outstanding, a void
    /// one nothing.
    async fn check(&self, c: &mut Client, db: &Db, loans: &[String]) -> Vec<String> {
        let (mut partner_live, mut daily_live, mut bank_live) = (0, 0, 0);
        for id in loans {
            let l = get_loan(c, self.partner, id).await;
            match pb::LoanStatus::try_from(l.status) {
                Ok(pb::LoanStatus::Void) => {}
                Ok(pb::LoanStatus::Reserved) => {
                    partner_live += m(&l.partner_amount);
                    daily_live += m(&l.partner_amount);
                    bank_live += m(&l.bank_amount);
                }
                _ => {
                    partner_live += m(&l.partner_outstanding);
                    daily_live += m(&l.partner_amount);
                    bank_live += m(&l.bank_outstanding);
                }
            }
        }
        let (all, to_partner) = usage(c, self.partner).await;
        let (quota, daily) = quota_in_use(db, self.partner).await;
        println!(
            "  {}: quota in use {quota}, daily {daily}, bank exposure to it {to_partner}, overall +{}",
            self.partner,
            all - self.all_before
        );
        let mut problems = Vec::new();
        for (what, booked, live) in [
            ("partner quota in use", quota, partner_live),
            ("partner daily quota in use", daily, daily_live),
            ("bank exposure to the partner (C2)", to_partner, bank_live),
            (
                "bank exposure to all partners (C3), change",
                all - self.all_before,
                bank_live,
            ),
        ] {
            if booked != live {
                problems.push(format!(
                    "{what} {booked} != live loans' {live} ({} loans)",
                    loans.len()
                ));
            }
        }
        problems
    }
}

/// Each funder's ledger totals per account: (funder, account) → (debits, credits).
async fn trial_balance(c: &mut Client) -> BTreeMap<(i32, String), (i64, i64)> {
    c.get_trial_balance(as_bank(pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner()
        .balances
        .into_iter()
        .map(|b| ((b.funder, b.account), (m(&b.debits), m(&b.credits))))
        .collect()
}

/// What the ledger moved from `before` to `after`, per account.
fn moved(
    before: &BTreeMap<(i32, String), (i64, i64)>,
    after: &BTreeMap<(i32, String), (i64, i64)>,
) -> BTreeMap<(i32, String), (i64, i64)> {
    after
        .iter()
        .map(|(k, (d, c))| {
            let (d0, c0) = before.get(k).copied().unwrap_or_default();
            (k.clone(), (d - d0, c - c0))
        })
        .filter(|(_, v)| *v != (0, 0))
        .collect()
}

/// A repayment's allocations summed per (funder, component).
fn allocated(rs: &[pb::Repayment]) -> BTreeMap<(i32, i32), i64> {
    let mut out = BTreeMap::new();
    for r in rs {
        for a in &r.allocations {
            *out.entry((a.funder, a.component)).or_default() += m(&a.amount);
        }
    }
    out.retain(|_, v| *v != 0);
    out
}

fn principal_allocated(r: &pb::Repayment) -> i64 {
    r.allocations
        .iter()
        .filter(|a| a.component == pb::Component::Principal as i32)
        .map(|a| m(&a.amount))
        .sum()
}

/// Disbursement on one replica against release on the other, on freshly
/// reserved loans: exactly one takes effect, and the bank's exposure is what
/// the live loans hold.
async fn disbursement_against_release(a: &mut Client, b: &mut Client, db: &Db) -> Vec<String> {
    let partner = "race-dr";
    set_up(a, partner).await;
    let counted = Counted::start(a, partner).await;
    let mut problems = Vec::new();
    let mut loans = Vec::new();
    for i in 0..LOANS {
        let loan = reserve(a, partner, &format!("dr-{i}")).await;
        loans.push(loan.loan_id.clone());
        let (mut x, mut y) = (a.clone(), b.clone());
        let id = loan.loan_id.clone();
        let disburse = async move {
            x.book_disbursement(as_bank(disbursement(
                &id,
                &format!("{partner}-d-{i}"),
                &format!("{partner}-bank-d-{i}"),
            )))
            .await
        };
        let id = loan.loan_id.clone();
        let release = async move {
            y.release_funding(as_service(
                partner,
                pb::ReleaseFundingRequest {
                    request_id: format!("{partner}-rel-{i}"),
                    // Even loans by loan id (an operator), odd ones by
                    // application (a journey's compensation).
                    loan_id: if i % 2 == 0 { id } else { String::new() },
                    application_id: if i % 2 == 0 {
                        String::new()
                    } else {
                        format!("dr-{i}")
                    },
                    reason: "race".into(),
                },
            ))
            .await
        };
        let (d, r) = tokio::join!(disburse, release);
        let after = get_loan(a, partner, &loan.loan_id).await;
        let disbursed = after.status == pb::LoanStatus::Disbursed as i32;
        if d.is_ok() == r.is_ok() {
            problems.push(format!(
                "loan {i}: disbursement ok={} and release ok={} (final status {})",
                d.is_ok(),
                r.is_ok(),
                after.status
            ));
        }
        if d.is_ok() != disbursed {
            problems.push(format!(
                "loan {i}: disbursement ok={} but final status {}",
                d.is_ok(),
                after.status
            ));
        }
        for e in [d.err(), r.err()].into_iter().flatten() {
            if reason(&e) != "INVALID_STATE" {
                problems.push(format!(
                    "loan {i}: the loser got {} ({})",
                    reason(&e),
                    e.message()
                ));
            }
        }
    }
    problems.extend(counted.check(a, db, &loans).await);
    problems
}

/// Concurrent repayments of one loan under different request ids, half of
/// them on each replica: each one accepted reduces principal outstanding by
/// exactly its principal allocation.
async fn concurrent_repayments(a: &mut Client, b: &mut Client, db: &Db) -> Vec<String> {
    let partner = "race-rp";
    set_up(a, partner).await;
    let counted = Counted::start(a, partner).await;
    let mut problems = Vec::new();
    let mut loans = Vec::new();
    for i in 0..LOANS {
        let loan = reserve(a, partner, &format!("rp-{i}")).await;
        loans.push(loan.loan_id.clone());
        a.book_disbursement(as_bank(disbursement(
            &loan.loan_id,
            &format!("{partner}-d-{i}"),
            &format!("{partner}-bank-d-{i}"),
        )))
        .await
        .unwrap();
        let calls = (0..3).map(|k| {
            let mut c = if k % 2 == 0 { a.clone() } else { b.clone() };
            let req = repayment(
                &loan.loan_id,
                &format!("{partner}-p-{i}-{k}"),
                &format!("{partner}-bank-p-{i}-{k}"),
                1_000_000 + k as i64,
            );
            async move { c.book_repayment(as_bank(req)).await }
        });
        let results = futures::future::join_all(calls).await;
        let accepted: Vec<pb::Repayment> = results
            .into_iter()
            .filter_map(|r| match r {
                Ok(r) => r.into_inner().repayment,
                Err(e) => {
                    problems.push(format!(
                        "loan {i}: a repayment was refused: {} {}",
                        reason(&e),
                        e.message()
                    ));
                    None
                }
            })
            .collect();
        let after = get_loan(a, partner, &loan.loan_id).await;
        let allocated: i64 = accepted.iter().map(principal_allocated).sum();
        let outstanding = m(&after.bank_outstanding) + m(&after.partner_outstanding);
        if outstanding != m(&loan.principal) - allocated {
            problems.push(format!(
                "loan {i}: principal outstanding {outstanding} != {} - {allocated} allocated over {} repayments",
                m(&loan.principal),
                accepted.len()
            ));
        }
        if after.repayments.len() != accepted.len() {
            problems.push(format!(
                "loan {i}: {} repayments listed, {} accepted",
                after.repayments.len(),
                accepted.len()
            ));
        }
        let paid_principal: i64 = after
            .balances
            .iter()
            .map(|f| m(&f.principal_outstanding))
            .sum();
        if paid_principal != outstanding {
            problems.push(format!(
                "loan {i}: funder balances {paid_principal} != outstanding {outstanding}"
            ));
        }
    }
    problems.extend(counted.check(a, db, &loans).await);
    problems
}

/// How many days before today the overdue variant's loans are disbursed:
/// past the first due date (a month in), so a repayment today first posts
/// the interest accrued since and the penalty on the overdue instalment.
const OVERDUE_DAYS: u64 = 45;

/// Each repayment of the overdue variant (the loans are of 100,000.00).
const OVERDUE_PAYMENT: i64 = 1_000_000;

/// Concurrent repayments of loans disbursed 45 days earlier, three of one
/// amount at once over both replicas: every loan must end as a control loan
/// repaid the same three one after the other (same balances per funder,
/// same allocations in total, same ledger postings). A lost update would
/// post an accrual twice or pay from stale balances.
async fn concurrent_repayments_overdue(a: &mut Client, b: &mut Client, db: &Db) -> Vec<String> {
    let partner = "race-ro";
    set_up(a, partner).await;
    let counted = Counted::start(a, partner).await;
    let mut problems = Vec::new();
    let mut loans = Vec::new();
    // Reserved and disbursed with the clock 45 days back, then repaid today.
    let disburse = |id: &str, tag: &str| {
        as_bank(disbursement(
            id,
            &format!("{partner}-d-{tag}"),
            &format!("{partner}-bank-d-{tag}"),
        ))
    };
    let pay = |id: &str, tag: &str, k: usize| {
        as_bank(repayment(
            id,
            &format!("{partner}-p-{tag}-{k}"),
            &format!("{partner}-bank-p-{tag}-{k}"),
            OVERDUE_PAYMENT,
        ))
    };

    // The control, repaid one call after the other.
    let before = trial_balance(a).await;
    days_back(OVERDUE_DAYS);
    let control = reserve(a, partner, "ro-control").await;
    loans.push(control.loan_id.clone());
    a.book_disbursement(disburse(&control.loan_id, "control"))
        .await
        .unwrap();
    days_back(0);
    for k in 0..3 {
        a.book_repayment(pay(&control.loan_id, "control", k))
            .await
            .unwrap();
    }
    let after_control = trial_balance(a).await;
    let per_loan = moved(&before, &after_control);
    let expected = get_loan(a, partner, &control.loan_id).await;
    let expected_allocated = allocated(&expected.repayments);
    let sum = |f: fn(&pb::FunderBalance) -> &Option<Money>| -> i64 {
        expected.balances.iter().map(|b| m(f(b))).sum()
    };
    println!(
        "  the control loan: interest paid {}, penalty accrued {} and paid {}",
        sum(|b| &b.interest_paid),
        sum(|b| &b.penalty_accrued),
        sum(|b| &b.penalty_paid)
    );
    if sum(|b| &b.interest_paid) == 0 || sum(|b| &b.penalty_accrued) + sum(|b| &b.penalty_paid) == 0
    {
        problems.push(format!(
            "the control loan accrued no interest or no penalty: the dates test nothing ({:?})",
            expected.balances
        ));
    }

    for i in 0..LOANS {
        let tag = i.to_string();
        days_back(OVERDUE_DAYS);
        let loan = reserve(a, partner, &format!("ro-{i}")).await;
        loans.push(loan.loan_id.clone());
        a.book_disbursement(disburse(&loan.loan_id, &tag))
            .await
            .unwrap();
        days_back(0);
        let calls = (0..3).map(|k| {
            let mut c = if k % 2 == 0 { a.clone() } else { b.clone() };
            let req = pay(&loan.loan_id, &tag, k);
            async move { c.book_repayment(req).await }
        });
        for r in futures::future::join_all(calls).await {
            if let Err(e) = r {
                problems.push(format!(
                    "loan {i}: a repayment was refused: {} {}",
                    reason(&e),
                    e.message()
                ));
            }
        }
        let after = get_loan(a, partner, &loan.loan_id).await;
        if after.repayments.len() != 3 {
            problems.push(format!(
                "loan {i}: {} repayments listed, 3 sent",
                after.repayments.len()
            ));
        }
        if after.balances != expected.balances {
            problems.push(format!(
                "loan {i}: balances {:?} != the control's {:?}",
                after.balances, expected.balances
            ));
        }
        let got = allocated(&after.repayments);
        if got != expected_allocated {
            problems.push(format!(
                "loan {i}: allocations {got:?} != the control's {expected_allocated:?}"
            ));
        }
    }
    let raced = moved(&after_control, &trial_balance(a).await);
    let want: BTreeMap<(i32, String), (i64, i64)> = per_loan
        .iter()
        .map(|(k, (d, c))| (k.clone(), (d * LOANS as i64, c * LOANS as i64)))
        .collect();
    if raced != want {
        problems.push(format!(
            "the ledger moved {raced:?} for {LOANS} raced loans, {LOANS} times the control's is {want:?}"
        ));
    }
    problems.extend(counted.check(a, db, &loans).await);
    problems
}

/// The daily accrual run (AccrueInterest on one replica) against three
/// repayments of the same loan on the other, at once, 45 days after the
/// disbursement: every loan must end as a control loan repaid without any
/// run (same balances per funder, same allocations, same ledger postings).
/// A run working from state read before the repayment's lock, or a
/// repayment from state read before the run's, would post a day twice or
/// not at all.
async fn accrual_run_against_repayments(a: &mut Client, b: &mut Client, db: &Db) -> Vec<String> {
    let partner = "race-ar";
    set_up(a, partner).await;
    let counted = Counted::start(a, partner).await;
    let mut problems = Vec::new();
    let mut loans = Vec::new();
    let disburse = |id: &str, tag: &str| {
        as_bank(disbursement(
            id,
            &format!("{partner}-d-{tag}"),
            &format!("{partner}-bank-d-{tag}"),
        ))
    };
    let pay = |id: &str, tag: &str, k: usize| {
        as_bank(repayment(
            id,
            &format!("{partner}-p-{tag}-{k}"),
            &format!("{partner}-bank-p-{tag}-{k}"),
            OVERDUE_PAYMENT,
        ))
    };
    let run = |tag: &str| {
        as_bank(pb::AccrueInterestRequest {
            request_id: format!("{partner}-run-{tag}"),
            as_of: today(),
        })
    };
    // Loans of the earlier scenarios are accrued first, so that what the
    // runs below post is this scenario's loans' alone.
    days_back(0);
    a.accrue_interest(run("before")).await.unwrap();

    // The control, repaid with no run.
    let before = trial_balance(a).await;
    days_back(OVERDUE_DAYS);
    let control = reserve(a, partner, "ar-control").await;
    loans.push(control.loan_id.clone());
    a.book_disbursement(disburse(&control.loan_id, "control"))
        .await
        .unwrap();
    days_back(0);
    for k in 0..3 {
        a.book_repayment(pay(&control.loan_id, "control", k))
            .await
            .unwrap();
    }
    let after_control = trial_balance(a).await;
    let per_loan = moved(&before, &after_control);
    let expected = get_loan(a, partner, &control.loan_id).await;
    let expected_allocated = allocated(&expected.repayments);

    let mut run_posted = 0;
    for i in 0..LOANS {
        let tag = i.to_string();
        days_back(OVERDUE_DAYS);
        let loan = reserve(a, partner, &format!("ar-{i}")).await;
        loans.push(loan.loan_id.clone());
        a.book_disbursement(disburse(&loan.loan_id, &tag))
            .await
            .unwrap();
        days_back(0);
        let mut runner = a.clone();
        let accrual = runner.accrue_interest(run(&tag));
        let repayments = (0..3).map(|k| {
            let mut c = b.clone();
            let req = pay(&loan.loan_id, &tag, k);
            async move { c.book_repayment(req).await }
        });
        let (ran, paid) = tokio::join!(accrual, futures::future::join_all(repayments));
        match ran {
            Ok(r) => run_posted += r.into_inner().loans_accrued,
            Err(e) => problems.push(format!(
                "loan {i}: the run failed: {} {}",
                reason(&e),
                e.message()
            )),
        }
        for r in paid {
            if let Err(e) = r {
                problems.push(format!(
                    "loan {i}: a repayment was refused: {} {}",
                    reason(&e),
                    e.message()
                ));
            }
        }
        let after = get_loan(a, partner, &loan.loan_id).await;
        if after.balances != expected.balances {
            problems.push(format!(
                "loan {i}: balances {:?} != the control's {:?}",
                after.balances, expected.balances
            ));
        }
        let got = allocated(&after.repayments);
        if got != expected_allocated {
            problems.push(format!(
                "loan {i}: allocations {got:?} != the control's {expected_allocated:?}"
            ));
        }
    }
    println!("  the runs took {run_posted} of the {LOANS} loans before their repayments");
    let raced = moved(&after_control, &trial_balance(a).await);
    let want: BTreeMap<(i32, String), (i64, i64)> = per_loan
        .iter()
        .map(|(k, (d, c))| (k.clone(), (d * LOANS as i64, c * LOANS as i64)))
        .collect();
    if raced != want {
        problems.push(format!(
            "the ledger moved {raced:?} for {LOANS} raced loans, {LOANS} times the control's is {want:?}"
        ));
    }
    problems.extend(counted.check(a, db, &loans).await);
    problems
}

/// The same bank transaction under two request ids at once: it is booked
/// once; the other call gets the booked repayment back (same content) or
/// ALREADY_EXISTS (other content).
async fn same_bank_reference(a: &mut Client, b: &mut Client, db: &Db) -> Vec<String> {
    let partner = "race-br";
    set_up(a, partner).await;
    let counted = Counted::start(a, partner).await;
    let mut problems = Vec::new();
    let mut loans = Vec::new();
    for i in 0..LOANS {
        let loan = reserve(a, partner, &format!("br-{i}")).await;
        loans.push(loan.loan_id.clone());
        a.book_disbursement(as_bank(disbursement(
            &loan.loan_id,
            &format!("{partner}-d-{i}"),
            &format!("{partner}-bank-d-{i}"),
        )))
        .await
        .unwrap();
        // Even loans: the same content twice; odd loans: another amount.
        let other = if i % 2 == 0 { 2_000_000 } else { 2_000_001 };
        let (mut x, mut y) = (a.clone(), b.clone());
        let first = repayment(
            &loan.loan_id,
            &format!("{partner}-q-{i}-a"),
            &format!("{partner}-bank-q-{i}"),
            2_000_000,
        );
        let second = repayment(
            &loan.loan_id,
            &format!("{partner}-q-{i}-b"),
            &format!("{partner}-bank-q-{i}"),
            other,
        );
        let (r1, r2) = tokio::join!(
            async move { x.book_repayment(as_bank(first)).await },
            async move { y.book_repayment(as_bank(second)).await }
        );
        let after = get_loan(a, partner, &loan.loan_id).await;
        if after.repayments.len() != 1 {
            problems.push(format!(
                "loan {i}: {} repayments booked for one bank transaction",
                after.repayments.len()
            ));
        }
        match (r1, r2, i % 2 == 0) {
            (Ok(x), Ok(y), true) => {
                let (x, y) = (
                    x.into_inner().repayment.unwrap(),
                    y.into_inner().repayment.unwrap(),
                );
                if x.repayment_id != y.repayment_id {
                    problems.push(format!(
                        "loan {i}: two repayments {} and {}",
                        x.repayment_id, y.repayment_id
                    ));
                }
            }
            (Ok(_), Err(e), false) | (Err(e), Ok(_), false) if reason(&e) == "ALREADY_EXISTS" => {}
            (r1, r2, same) => problems.push(format!(
                "loan {i} (same content: {same}): first {:?}, second {:?}",
                r1.map(|_| "ok").map_err(|e| reason(&e)),
                r2.map(|_| "ok").map_err(|e| reason(&e))
            )),
        }
    }
    problems.extend(counted.check(a, db, &loans).await);
    problems
}

/// A release by application (compensation) against a reservation of the
/// same application, on the two replicas at once: the application never
/// ends closed with a live reservation.
async fn release_against_reservation(a: &mut Client, b: &mut Client, db: &Db) -> Vec<String> {
    let partner = "race-cr";
    set_up(a, partner).await;
    let counted = Counted::start(a, partner).await;
    let mut problems = Vec::new();
    let mut loans = Vec::new();
    for i in 0..LOANS {
        let app = format!("cr-{i}");
        let (mut x, mut y) = (a.clone(), b.clone());
        let req = reservation(partner, &app);
        let app2 = app.clone();
        let (r, rel) = tokio::join!(
            async move { x.reserve_funding(as_service(partner, req)).await },
            async move {
                y.release_funding(as_service(
                    partner,
                    pb::ReleaseFundingRequest {
                        request_id: format!("comp-{app2}"),
                        loan_id: String::new(),
                        application_id: app2,
                        reason: "abandoned".into(),
                    },
                ))
                .await
            }
        );
        let rel = match rel {
            Ok(r) => r.into_inner().loan.unwrap_or_default(),
            Err(e) => {
                problems.push(format!(
                    "app {i}: release refused: {} {}",
                    reason(&e),
                    e.message()
                ));
                continue;
            }
        };
        match r {
            Ok(loan) => {
                let loan = loan.into_inner().loan.unwrap();
                loans.push(loan.loan_id.clone());
                let now = get_loan(a, partner, &loan.loan_id).await;
                if now.status != pb::LoanStatus::Void as i32 {
                    problems.push(format!(
                        "app {i}: closed to funding, but its loan {} is {} (release saw {:?})",
                        loan.loan_id, now.status, rel.loan_id
                    ));
                }
            }
            Err(e) if reason(&e) == "INVALID_STATE" => {
                if !rel.loan_id.is_empty() {
                    problems.push(format!(
                        "app {i}: release voided {} but the reservation was refused",
                        rel.loan_id
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "app {i}: reservation got {} {}",
                reason(&e),
                e.message()
            )),
        }
    }
    // Every application was closed: nothing may be held.
    problems.extend(counted.check(a, db, &loans).await);
    problems
}

async fn races(backend: Backend) -> Vec<String> {
    let (first, second) = replicas(backend).await;
    let mut a = FundingServiceClient::new(first.channel.clone());
    let mut b = FundingServiceClient::new(
        second
            .as_ref()
            .map_or(first.channel.clone(), |s| s.channel.clone()),
    );
    let db = colend_funding::connect(&first.backends).await.unwrap();
    let mut report = Vec::new();
    for (name, problems) in [
        (
            "disbursement against release",
            disbursement_against_release(&mut a, &mut b, &db).await,
        ),
        (
            "concurrent repayments",
            concurrent_repayments(&mut a, &mut b, &db).await,
        ),
        (
            "concurrent repayments, 45 days after the disbursement",
            concurrent_repayments_overdue(&mut a, &mut b, &db).await,
        ),
        (
            "the accrual run against repayments, 45 days after the disbursement",
            accrual_run_against_repayments(&mut a, &mut b, &db).await,
        ),
        (
            "one bank reference, two request ids",
            same_bank_reference(&mut a, &mut b, &db).await,
        ),
        (
            "release against a queued reservation",
            release_against_reservation(&mut a, &mut b, &db).await,
        ),
    ] {
        println!(
            "{backend:?} {name}: {} problems over {LOANS} loans",
            problems.len()
        );
        for p in problems.iter().take(5) {
            println!("  {p}");
        }
        if !problems.is_empty() {
            report.push(format!(
                "{name}: {} problems, first: {}",
                problems.len(),
                problems[0]
            ));
        }
    }
    db.pool.close().await;
    if let Some(second) = second {
        second.stop().await;
    }
    first.stop().await;
    report
        .into_iter()
        .map(|r| format!("{backend:?}: {r}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn money_paths_raced_by_two_replicas() {
    let mut report = Vec::new();
    for backend in BOTH {
        report.extend(races(backend).await);
    }
    assert!(report.is_empty(), "{report:#?}");
}
