//! A loan whose penalty was accrued before penalty accrued per overdue
//! segment (migrations before 0015) keeps the penalty it has posted, on both
//! backends: each instalment's overdue segment starts anew on the date the
//! loan's penalty was accrued through, so the days before it are never
//! accrued again, and the days after it are rounded once per segment.
use colend_contracts::common::v1::Funder;
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_funding::domain::{
    self, Accrued, DayCount, InstalmentState, InterestSplit, LoanState, Method, Paid, Pricing,
    Terms, Waterfall,
};
use colend_platform::time::{Clock, Tz, format_date};
use colend_testkit::{BOTH, TempDir, TestServer, as_bank};

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn day(y: i32, m: u32, d: u32) -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn m(x: &Option<colend_contracts::common::v1::Money>) -> i64 {
    x.as_ref().map(|m| m.minor_units).unwrap_or(0)
}

/// `unpaid × 18% × days / 360`, rounded half up, computed apart from the
/// service's arithmetic.
fn penalty(unpaid: i64, days: i64) -> i64 {
    let num = i128::from(unpaid) * 1_800 * i128::from(days);
    let den = 10_000i128 * 360;
    i64::try_from((2 * num + den) / (2 * den)).unwrap()
}

/// Storage as the previous version left it: its migrations before 0015.
async fn previous_version(b: &colend_platform::config::Backends) -> colend_platform::Db {
    let old = TempDir::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    for entry in std::fs::read_dir(dir).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let version: u32 = name
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if (1..15).contains(&version) {
            std::fs::copy(&path, old.0.join(name)).expect("copy");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.0.as_path())
        .await
        .expect("migrations before 0015");
    colend_platform::Db::connect(b, "funding", &migrator)
        .await
        .expect("previous version")
}

const LOAN: &str = "INSERT INTO loans (loan_id, application_id, partner_id, status, currency, principal, bank_amount, \
    partner_amount, agreement_version, partner_share_bps, bank_rate_bps, partner_rate_bps, annual_rate_bps, term_months, \
    method, reserved_on, disbursed_on, disbursement_ref, principal_paid, interest_paid, penalty_paid, \
    partner_principal_paid, partner_interest_paid, partner_penalty_paid, created_at, updated_at, day_count, \
    penalty_rate_bps, waterfall, interest_accrued, partner_interest_accrued, penalty_accrued, partner_penalty_accrued, \
    penalty_through, fee_bps, fee_partner_bps, fee_paid, partner_fee_paid, fee_accrued, partner_fee_accrued, \
    interest_split, residual_party, allow_negative_residual, accrued_through, overpayment) \
    VALUES ('L1', 'A1', 'p1', 'DISBURSED', 'CNY', 10000000, 7000000, 3000000, 1, 3000, 600, 900, 1200, 6, 1, \
    '2026-01-15', '2026-01-15', 'd1', 0, 0, 0, 0, 0, 0, 1, 1, 'ACT_360', 1800, 'PENALTY,FEE,INTEREST,PRINCIPAL', \
    $1, $2, $3, $4, '2026-02-20', 100, 4000, 0, 0, $5, $6, 'PRO_RATA', 'BANK', 0, '2026-02-20', 0)";

const INSTALMENT: &str = "INSERT INTO instalments (loan_id, seq, due_date, principal, interest, principal_paid, \
    interest_paid, accrued, fee, fee_paid, accrual_from, balance, interest_before, fee_before, bank_own_before, \
    partner_own_before, interest_accrued, fee_accrued) \
    VALUES ('L1', $1, $2, $3, $4, 0, 0, 0, $5, 0, '', $6, 0, 0, 0, 0, $7, $8)";

#[tokio::test]
async fn a_loan_booked_before_keeps_its_posted_penalty() {
    for backend in BOTH {
        let dir = TempDir::new();
        let b = colend_testkit::backends(backend, &dir).await;
        // 100,000.00 at 12% + 1%, 6 equal instalments from 15 January, 18%
        // penalty; nothing repaid. Accrued through 20 February by daily runs
        // under the earlier rules: the first instalment five days overdue,
        // its penalty rounded day by day.
        let price = Pricing {
            rate_bps: 1_200,
            fee_bps: 100,
        };
        let sched = domain::schedule(
            10_000_000,
            6,
            price,
            Method::EqualInstalment,
            day(2026, 1, 15),
            DayCount::Act360,
        );
        let t1 = sched[0].total();
        let posted_before = 5 * penalty(t1, 1);
        let split = domain::split(10_000_000, 3_000);
        let terms = Terms {
            partner_share_bps: 3_000,
            bank_rate_bps: 600,
            partner_rate_bps: 900,
            fee_partner_bps: 4_000,
            interest_split: InterestSplit::ProRata,
            ..Default::default()
        };
        // Interest and fees through 20 February, as the service accrues them.
        let fresh = LoanState {
            split,
            terms,
            price,
            method: Method::EqualInstalment,
            day_count: DayCount::Act360,
            penalty_rate_bps: 0,
            waterfall: Waterfall::default(),
            disbursed_on: day(2026, 1, 15),
            insts: sched.iter().cloned().map(InstalmentState::new).collect(),
            accrued: Accrued::default(),
            accrued_through: day(2026, 1, 15),
            penalty_through: day(2026, 1, 15),
            paid: Paid::default(),
            overpaid: 0,
        };
        let through = fresh.with_accrual(&domain::accrue_to(&fresh, day(2026, 2, 20)));
        let partner_of = |t: i64| t * 3 / 10;
        let old = previous_version(&b).await;
        sqlx::query(LOAN)
            .bind(through.accrued.interest)
            .bind(through.accrued.partner_interest)
            .bind(posted_before)
            .bind(partner_of(posted_before))
            .bind(through.accrued.fee)
            .bind(through.accrued.partner_fee)
            .execute(&old.pool)
            .await
            .expect("loan");
        let mut balance = 10_000_000;
        for s in &through.insts {
            let i = &s.inst;
            sqlx::query(INSTALMENT)
                .bind(i64::from(i.seq))
                .bind(format_date(i.due))
                .bind(i.principal)
                .bind(i.interest)
                .bind(i.fee)
                .bind(balance)
                .bind(s.interest_accrued)
                .bind(s.fee_accrued)
                .execute(&old.pool)
                .await
                .expect("instalment");
            balance -= i.principal;
        }
        old.pool.close().await;

        // The upgraded service, on 26 February in Shanghai.
        let mut settings = colend_funding::app::Settings::from_env().unwrap();
        settings.time_zone = Tz::Asia__Shanghai;
        settings.clock = Clock::manual(at("2026-02-26T02:00:00Z"));
        settings.daily_accrual = false;
        let s = TestServer::start_with(b.clone(), dir, |mesh| async move {
            Ok(vec![colend_funding::register_with(mesh, settings).await?])
        })
        .await;
        let mut c = FundingServiceClient::new(s.channel.clone());
        let mut run = async |as_of: &str| {
            c.accrue_interest(as_bank(pb::AccrueInterestRequest {
                request_id: format!("acc-{as_of}"),
                as_of: as_of.into(),
            }))
            .await
            .unwrap()
            .into_inner()
        };
        // The segment starts on 20 February: five days on the first
        // instalment, rounded once, then one more day.
        let r = run("2026-02-25").await;
        assert_eq!(
            r.penalty.iter().map(|x| x.minor_units).sum::<i64>(),
            penalty(t1, 5),
            "{backend:?}"
        );
        let r = run("2026-02-26").await;
        assert_eq!(
            r.penalty.iter().map(|x| x.minor_units).sum::<i64>(),
            penalty(t1, 6) - penalty(t1, 5),
            "{backend:?}"
        );
        let loan = c
            .get_loan(as_bank(pb::GetLoanRequest {
                loan_id: "L1".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .loan
            .unwrap();
        // What was posted before stays; by principal share on the running total.
        let whole = posted_before + penalty(t1, 6);
        let of = |f: Funder| {
            loan.balances
                .iter()
                .filter(|b| b.funder == f as i32)
                .map(|b| m(&b.penalty_accrued))
                .sum::<i64>()
        };
        assert_eq!(
            (of(Funder::Bank), of(Funder::Partner)),
            (whole - partner_of(whole), partner_of(whole)),
            "{backend:?}"
        );
        s.stop().await;
    }
}
