//! A loan booked before daily accrual and the interest split (migrations
//! before 0011) keeps its economics after the upgrade, on both backends: its
//! interest is split rate-weighted as it was, the instalment accrued whole
//! by its last repayment stays payable in full, and accrual goes on from
//! that repayment's date. So does an agreement stored before: loans
//! reserved under it after the upgrade are split rate-weighted too, until
//! the bank stores a new version.
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_funding::domain::{self, DayCount, Method, Pricing, Terms};
use colend_platform::time::{Clock, Tz, format_date};
use colend_testkit::{BOTH, TempDir, TestServer, as_bank, as_partner, as_service, reason};

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn m(x: &Option<colend_contracts::common::v1::Money>) -> i64 {
    x.as_ref().map(|m| m.minor_units).unwrap_or(0)
}

/// Storage as the previous version left it: its migrations before 0011.
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
        if (1..11).contains(&version) {
            std::fs::copy(&path, old.0.join(name)).expect("copy");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.0.as_path())
        .await
        .expect("migrations before 0011");
    colend_platform::Db::connect(b, "funding", &migrator)
        .await
        .expect("previous version")
}

const LOAN: &str = "INSERT INTO loans (loan_id, application_id, partner_id, status, currency, principal, bank_amount, \
    partner_amount, agreement_version, partner_share_bps, bank_rate_bps, partner_rate_bps, annual_rate_bps, term_months, \
    method, reserved_on, disbursed_on, disbursement_ref, principal_paid, interest_paid, penalty_paid, \
    partner_principal_paid, partner_interest_paid, partner_penalty_paid, created_at, updated_at, day_count, \
    penalty_rate_bps, waterfall, interest_accrued, partner_interest_accrued, penalty_accrued, partner_penalty_accrued, \
    penalty_through, fee_bps, fee_partner_bps, fee_paid, partner_fee_paid, fee_accrued, partner_fee_accrued) \
    VALUES ('L1', 'A1', 'p1', 'DISBURSED', 'CNY', 12000000, 8400000, 3600000, 1, 3000, 900, 1100, 1200, 6, 1, \
    '2026-01-15', '2026-01-15', 'd1', 0, $1, 0, 0, $2, 0, 1, 1, 'ACT_360', 0, 'PENALTY,INTEREST,PRINCIPAL', $3, $4, 0, 0, \
    '2026-01-20', 100, 4000, $5, $6, $5, $6)";

#[tokio::test]
async fn a_loan_booked_before_keeps_its_economics() {
    for backend in BOTH {
        let dir = TempDir::new();
        let b = colend_testkit::backends(backend, &dir).await;
        // 120,000.00 at 12% + 1%, 6 equal instalments from 15 January; on
        // 20 January 500.00 was repaid under the earlier rules: the first
        // instalment accrued whole (1,240.00 interest, 103.33 fee), its fee
        // and 396.67 of its interest paid.
        let price = Pricing {
            rate_bps: 1_200,
            fee_bps: 100,
        };
        let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
        let sched = domain::schedule(
            12_000_000,
            6,
            price,
            Method::EqualInstalment,
            start,
            DayCount::Act360,
        );
        let (i1, f1) = (sched[0].interest, sched[0].fee);
        assert_eq!((i1, f1), (124_000, 10_333));
        let interest_paid = 50_000 - f1;
        let split = domain::split(12_000_000, 3_000);
        let terms = Terms {
            partner_share_bps: 3_000,
            bank_rate_bps: 900,
            partner_rate_bps: 1_100,
            fee_partner_bps: 4_000,
            ..Default::default()
        };
        let rw = |total: i64| domain::partner_interest_part(total, split, &terms);
        let fee_partner = f1 * 4_000 / 10_000;
        let old = previous_version(&b).await;
        sqlx::query(LOAN)
            .bind(interest_paid)
            .bind(rw(interest_paid))
            .bind(i1)
            .bind(rw(i1))
            .bind(f1)
            .bind(fee_partner)
            .execute(&old.pool)
            .await
            .expect("loan");
        for (k, i) in sched.iter().enumerate() {
            let first = k == 0;
            sqlx::query(
                "INSERT INTO instalments (loan_id, seq, due_date, principal, interest, principal_paid, interest_paid, \
                 accrued, fee, fee_paid) VALUES ('L1', $1, $2, $3, $4, 0, $5, $6, $7, $8)",
            )
            .bind(i64::from(i.seq))
            .bind(format_date(i.due))
            .bind(i.principal)
            .bind(i.interest)
            .bind(if first { interest_paid } else { 0 })
            .bind(i64::from(first))
            .bind(i.fee)
            .bind(if first { f1 } else { 0 })
            .execute(&old.pool)
            .await
            .expect("instalment");
        }
        sqlx::query(
            "INSERT INTO repayments (repayment_id, loan_id, amount, value_date, bank_ref, body, created_at) \
             VALUES ('R1', 'L1', 50000, '2026-01-20', 'b1', '', 2)",
        )
        .execute(&old.pool)
        .await
        .expect("repayment");
        // The agreement L1 was booked under (bank 9%, partner 11%, 30%).
        sqlx::query(
            "INSERT INTO agreements (partner_id, version, partner_share_bps, bank_rate_bps, partner_rate_bps, \
             currency, daily_quota, total_quota, effective_from, created_at, day_count, penalty_rate_bps, \
             waterfall, credit_enhancer_id, fee_partner_share_bps) VALUES ('p1', 1, 3000, 900, 1100, 'CNY', \
             100000000000, 100000000000, '2026-01-01', 1, 'ACT_360', 0, 'PENALTY,INTEREST,PRINCIPAL', '', 4000)",
        )
        .execute(&old.pool)
        .await
        .expect("agreement");
        old.pool.close().await;

        // The upgraded service, on 25 January in Shanghai.
        let mut settings = colend_funding::app::Settings::from_env().unwrap();
        settings.time_zone = Tz::Asia__Shanghai;
        settings.clock = Clock::manual(at("2026-01-25T02:00:00Z"));
        let clock = settings.clock.clone();
        let s = TestServer::start_with(b.clone(), dir, |mesh| async move {
            Ok(vec![colend_funding::register_with(mesh, settings).await?])
        })
        .await;
        let mut c = FundingServiceClient::new(s.channel.clone());
        let loan = c
            .get_loan(as_partner(
                "p1",
                pb::GetLoanRequest {
                    loan_id: "L1".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .loan
            .unwrap();
        assert_eq!(
            loan.interest_split,
            pb::InterestSplit::RateWeighted as i32,
            "{backend:?}"
        );
        assert_eq!(loan.accrued_through, "2026-01-20");
        assert_eq!(m(&loan.schedule[0].interest), i1);
        // Accrual goes forward only.
        let repay = |rid: &str, amount: i64, day: &str| pb::BookRepaymentRequest {
            request_id: rid.into(),
            loan_id: "L1".into(),
            amount: Some(colend_contracts::common::v1::Money {
                minor_units: amount,
                currency_code: "CNY".into(),
            }),
            value_date: day.into(),
            bank_transaction_ref: format!("b-{rid}"),
        };
        let e = c
            .book_repayment(as_bank(repay("early", 100, "2026-01-19")))
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "BACK_VALUED");
        // The rest of the first instalment (accrued whole, payable in full as
        // it was) and 10,000.00 prepaid.
        let p1 = sched[0].principal;
        let r = c
            .book_repayment(as_bank(repay(
                "r2",
                i1 - interest_paid + p1 + 1_000_000,
                "2026-01-25",
            )))
            .await
            .unwrap()
            .into_inner();
        let rep = r.repayment.unwrap();
        let part =
            |funder: colend_contracts::common::v1::Funder, component: pb::Component| -> i64 {
                rep.allocations
                    .iter()
                    .filter(|a| a.funder == funder as i32 && a.component == component as i32)
                    .map(|a| m(&a.amount))
                    .sum()
            };
        use colend_contracts::common::v1::Funder::{Bank, Partner};
        assert_eq!(
            part(Bank, pb::Component::Interest) + part(Partner, pb::Component::Interest),
            i1 - interest_paid
        );
        // Rate-weighted, on the running total, as before the upgrade.
        assert_eq!(
            part(Partner, pb::Component::Interest),
            rw(i1) - rw(interest_paid)
        );
        assert_eq!(
            part(Bank, pb::Component::Principal) + part(Partner, pb::Component::Principal),
            p1 + 1_000_000
        );
        let after = r.loan.unwrap();
        // Nothing more accrued: the first instalment was accrued whole, the
        // second's period starts on its due date.
        let accrued: i64 = after.balances.iter().map(|x| m(&x.interest_accrued)).sum();
        assert_eq!(accrued, i1);
        assert_eq!(m(&after.schedule[0].interest), i1);
        assert_eq!(
            after.schedule[1..]
                .iter()
                .map(|i| m(&i.principal))
                .sum::<i64>(),
            12_000_000 - p1 - 1_000_000
        );
        assert_eq!(after.accrued_through, "2026-01-25");

        // The agreement stored before keeps the rate-weighted split: shown
        // as it is, and frozen on a loan reserved under it now.
        let get_agreement = |c: &FundingServiceClient<_>| {
            let mut c = c.clone();
            async move {
                c.get_agreement(as_bank(pb::GetAgreementRequest {
                    partner_id: "p1".into(),
                }))
                .await
                .unwrap()
                .into_inner()
                .agreement
                .unwrap()
            }
        };
        let a = get_agreement(&c).await;
        assert_eq!(
            (a.version, a.interest_split),
            (1, pb::InterestSplit::RateWeighted as i32)
        );
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
        let cny = |minor_units: i64| {
            Some(colend_contracts::common::v1::Money {
                minor_units,
                currency_code: "CNY".into(),
            })
        };
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
        let reserve = |app: &str| pb::ReserveFundingRequest {
            request_id: format!("r-{app}"),
            application_id: app.into(),
            partner_id: "p1".into(),
            principal: cny(12_000_000),
            term_months: 6,
            annual_rate_bps: 1_200,
            repayment_method: colend_contracts::common::v1::RepaymentMethod::EqualInstalment as i32,
            borrower_key: format!("borrower-{app}"),
            annual_fee_bps: 100,
        };
        let l2 = c
            .reserve_funding(as_service("p1", reserve("A2")))
            .await
            .unwrap()
            .into_inner()
            .loan
            .unwrap();
        assert_eq!(
            (
                l2.agreement_version,
                l2.interest_split,
                l2.bank_rate_bps,
                l2.partner_rate_bps
            ),
            (1, pb::InterestSplit::RateWeighted as i32, 900, 1_100),
            "{backend:?}"
        );
        c.book_disbursement(as_bank(pb::BookDisbursementRequest {
            request_id: "d-A2".into(),
            loan_id: l2.loan_id.clone(),
            value_date: "2026-01-25".into(),
            bank_transaction_ref: "b-d-A2".into(),
        }))
        .await
        .unwrap();
        // Its first instalment paid on its due date: the partner's interest
        // is 34.375% of it (30% × 11% against 70% × 9%), not 30%.
        clock.set(at("2026-02-25T02:00:00Z"));
        let i2 = domain::interest(12_000_000, 1_200, 31, DayCount::Act360);
        let first = domain::schedule(
            12_000_000,
            6,
            price,
            Method::EqualInstalment,
            chrono::NaiveDate::from_ymd_opt(2026, 1, 25).unwrap(),
            DayCount::Act360,
        )[0]
        .clone();
        assert_eq!(first.interest, i2);
        let mut r = repay("A2-1", first.total(), "2026-02-25");
        r.loan_id = l2.loan_id.clone();
        let paid = c
            .book_repayment(as_bank(r))
            .await
            .unwrap()
            .into_inner()
            .loan
            .unwrap();
        let partner = paid
            .balances
            .iter()
            .find(|b| b.funder == colend_contracts::common::v1::Funder::Partner as i32)
            .unwrap();
        assert_eq!(m(&partner.interest_accrued), rw(i2));
        assert_eq!(m(&partner.interest_paid), rw(i2));
        assert_ne!(rw(i2), i2 * 3 / 10);
        // A new version states its split (PRO_RATA by default); loans
        // reserved under it follow it, and RATE_WEIGHTED cannot be stated.
        let mut v2 = a.clone();
        v2.interest_split = pb::InterestSplit::RateWeighted as i32;
        let e = c
            .upsert_agreement(as_bank(pb::UpsertAgreementRequest {
                request_id: "a-v2-rw".into(),
                agreement: Some(v2.clone()),
            }))
            .await
            .unwrap_err();
        assert_eq!(
            colend_testkit::violated_fields(&e),
            vec!["agreement.interest_split"]
        );
        v2.interest_split = pb::InterestSplit::Unspecified as i32;
        c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
            request_id: "a-v2".into(),
            agreement: Some(v2),
        }))
        .await
        .unwrap();
        assert_eq!(
            get_agreement(&c).await.interest_split,
            pb::InterestSplit::ProRata as i32
        );
        let l3 = c
            .reserve_funding(as_service("p1", reserve("A3")))
            .await
            .unwrap()
            .into_inner()
            .loan
            .unwrap();
        assert_eq!(
            (l3.agreement_version, l3.interest_split),
            (2, pb::InterestSplit::ProRata as i32)
        );
        s.stop().await;
        if let Some(url) = &b.database_url {
            colend_testkit::drop_database(url).await;
        }
    }
}
