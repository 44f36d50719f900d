//! Currencies in funding, against a real server on port 0, on both backends:
//! codes that are not active ISO 4217 currencies are refused naming the
//! field; a loan is in its request's currency and in nothing else (the
//! agreement's, the bank reference data's, the repayments'); exposure and the
//! trial balance are per currency, never summed across codes. A partner's
//! quota usage holds one currency, even when an agreement version in another
//! currency takes effect later or a reservation read the agreement before a
//! new version; a refusal for the currency is not stored, so the same
//! request succeeds once the currencies agree.
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_platform::time::{Clock, Tz};
use colend_testkit::{
    BOTH, Backend, TestServer, as_bank, as_internal, as_service, error_metadata, reason,
    violated_fields,
};
use tonic::Code;

type Client = FundingServiceClient<tonic::transport::Channel>;

fn money(m: i64, currency: &str) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: currency.into(),
    })
}

fn agreement(partner: &str, currency: &str) -> pb::Agreement {
    pb::Agreement {
        partner_id: partner.into(),
        partner_share_bps: 3_000,
        bank_rate_bps: 900,
        partner_rate_bps: 1_100,
        daily_quota: money(1_000_000_000_000, currency),
        total_quota: money(1_000_000_000_000, currency),
        effective_from: "2026-01-01".into(),
        ..Default::default()
    }
}

fn reserve(partner: &str, app: &str, principal: Option<Money>) -> pb::ReserveFundingRequest {
    pb::ReserveFundingRequest {
        request_id: format!("r-{app}"),
        application_id: app.into(),
        partner_id: partner.into(),
        principal,
        term_months: 12,
        annual_rate_bps: 1_000,
        repayment_method: RepaymentMethod::EqualInstalment as i32,
        borrower_key: format!("borrower-{app}"),
        annual_fee_bps: 0,
    }
}

fn today() -> String {
    colend_platform::time::format_date(colend_platform::time::business_today(
        colend_funding::app::time_zone_from_env().unwrap(),
    ))
}

async fn whitelist(c: &mut Client, partner: &str) {
    c.whitelist_institution(as_bank(pb::WhitelistInstitutionRequest {
        request_id: format!("wl-{partner}"),
        entry: Some(pb::WhitelistEntry {
            institution_id: partner.into(),
            kind: pb::InstitutionKind::Partner as i32,
            effective_from: "2026-01-01".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
}

async fn reference(c: &mut Client, rid: &str, currency: &str) -> Result<(), tonic::Status> {
    c.set_bank_reference(as_bank(pb::SetBankReferenceRequest {
        request_id: rid.into(),
        reference: Some(pb::BankReference {
            net_tier1_capital: money(1_000_000_000_000, currency),
            total_loan_balance: money(10_000_000_000_000, currency),
            as_of: "2026-09-30".into(),
        }),
    }))
    .await
    .map(|_| ())
}

async fn upsert(c: &mut Client, rid: &str, a: pb::Agreement) -> Result<(), tonic::Status> {
    c.upsert_agreement(as_bank(pb::UpsertAgreementRequest {
        request_id: rid.into(),
        agreement: Some(a),
    }))
    .await
    .map(|_| ())
}

async fn disburse(c: &mut Client, loan_id: &str) -> pb::Loan {
    c.book_disbursement(as_bank(pb::BookDisbursementRequest {
        request_id: format!("d-{loan_id}"),
        loan_id: loan_id.into(),
        value_date: today(),
        bank_transaction_ref: format!("B-{loan_id}"),
    }))
    .await
    .unwrap()
    .into_inner()
    .loan
    .unwrap()
}

fn assert_mismatch(e: &tonic::Status, expected: &str) {
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(reason(e), "CURRENCY_MISMATCH", "{e:?}");
    assert_eq!(error_metadata(e, "expected").as_deref(), Some(expected));
}

fn code(m: &Option<Money>) -> &str {
    m.as_ref().map_or("", |m| m.currency_code.as_str())
}

async fn currencies(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register(mesh).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());

    // Codes that are not active ISO 4217 currencies are invalid arguments,
    // each naming its field.
    for bad in ["XXX", "ABC", "XTS", "XAU", "cny"] {
        let e = upsert(&mut c, &format!("bad-{bad}"), agreement("p1", bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(
            violated_fields(&e),
            vec![
                "agreement.daily_quota.currency_code",
                "agreement.total_quota.currency_code"
            ],
            "{bad}"
        );
        let e = reference(&mut c, &format!("ref-{bad}"), bad)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert!(
            violated_fields(&e).contains(&"reference.net_tier1_capital.currency_code".to_string()),
            "{bad}: {:?}",
            violated_fields(&e)
        );
    }
    // Both quotas in one currency.
    let mut mixed = agreement("p1", "CNY");
    mixed.daily_quota = money(1_000, "USD");
    let e = upsert(&mut c, "mixed", mixed).await.unwrap_err();
    assert_eq!(
        violated_fields(&e),
        vec!["agreement.daily_quota.currency_code"]
    );

    // The bank's reference data and p1's agreement are in CNY.
    reference(&mut c, "ref-cny", "CNY").await.unwrap();
    upsert(&mut c, "a-p1", agreement("p1", "CNY"))
        .await
        .unwrap();
    whitelist(&mut c, "p1").await;
    let e = c
        .reserve_funding(as_service(
            "p1",
            reserve("p1", "xxx", money(100_000, "XXX")),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), vec!["principal.currency_code"]);
    // A principal in USD against a CNY agreement: refused, each time it is
    // asked (the refusal is not stored: the set-up can move to USD).
    for _ in 0..2 {
        let e = c
            .reserve_funding(as_service(
                "p1",
                reserve("p1", "usd-1", money(10_000_000, "USD")),
            ))
            .await
            .unwrap_err();
        assert_mismatch(&e, "CNY");
    }
    let cny = c
        .reserve_funding(as_service(
            "p1",
            reserve("p1", "cny-1", money(10_000_000, "CNY")),
        ))
        .await
        .unwrap()
        .into_inner()
        .loan
        .unwrap();
    for m in [&cny.principal, &cny.bank_amount, &cny.partner_amount] {
        assert_eq!(code(m), "CNY");
    }
    let cny = disburse(&mut c, &cny.loan_id).await;
    assert!(cny.schedule.iter().all(|i| code(&i.total) == "CNY"));

    // A repayment in another currency than the loan's.
    let e = c
        .book_repayment(as_bank(pb::BookRepaymentRequest {
            request_id: "rp-usd".into(),
            loan_id: cny.loan_id.clone(),
            amount: money(1_000, "USD"),
            value_date: today(),
            bank_transaction_ref: "B-RP-USD".into(),
        }))
        .await
        .unwrap_err();
    assert_mismatch(&e, "CNY");

    // A USD agreement for p2: its USD loans are refused while the bank's
    // reference data (rules C2, C3) is in CNY, never mixed into CNY usage.
    upsert(&mut c, "a-p2", agreement("p2", "USD"))
        .await
        .unwrap();
    whitelist(&mut c, "p2").await;
    let e = c
        .reserve_funding(as_service(
            "p2",
            reserve("p2", "usd-2", money(10_000_000, "USD")),
        ))
        .await
        .unwrap_err();
    assert_mismatch(&e, "CNY");
    // Neither the reference data nor p1's agreement changes currency while
    // CNY principal is outstanding.
    assert_mismatch(
        &reference(&mut c, "ref-usd", "USD").await.unwrap_err(),
        "CNY",
    );
    assert_mismatch(
        &upsert(&mut c, "a-p1-usd", agreement("p1", "USD"))
            .await
            .unwrap_err(),
        "CNY",
    );

    // The borrower's exposure: in the jurisdiction's currency by default
    // (CN: CNY), in any asked for, and per currency.
    let exposure = |currency: &str| pb::GetBorrowerExposureRequest {
        borrower_key: "borrower-cny-1".into(),
        currency_code: currency.into(),
    };
    let x = c
        .get_borrower_exposure(as_internal(exposure("")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(x.exposure, money(10_000_000, "CNY"));
    assert_eq!(x.by_currency, vec![money(10_000_000, "CNY").unwrap()]);
    let x = c
        .get_borrower_exposure(as_internal(exposure("USD")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(x.exposure, money(0, "USD"));
    assert_eq!(x.by_currency, vec![money(10_000_000, "CNY").unwrap()]);
    let e = c
        .get_borrower_exposure(as_internal(exposure("XXX")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), vec!["currency_code"]);

    // One currency so far: the single totals are set and equal its CurrencyTotal.
    let one = c
        .get_trial_balance(as_bank(pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.totals.len(), 1);
    assert_eq!(one.total_debits, one.totals[0].debits);
    assert_eq!(one.total_credits, one.totals[0].credits);
    assert_eq!(code(&one.total_debits), "CNY");

    // A ledger that holds two currencies (the reference data cannot move to
    // USD while CNY principal is outstanding, so the USD books of an earlier
    // period are written here directly: a balanced disbursement posting).
    let db = colend_funding::connect(&s.backends).await.unwrap();
    for (funder, account, debit, credit) in [
        ("BANK", "LOANS_RECEIVABLE", 14_000_000i64, 0i64),
        ("BANK", "CASH", 0, 14_000_000),
        ("PARTNER", "LOANS_RECEIVABLE", 6_000_000, 0),
        ("PARTNER", "CASH", 0, 6_000_000),
    ] {
        sqlx::query(
            "INSERT INTO ledger_entries (entry_id, posting_id, loan_id, funder, account, debit, credit, \
             currency, created_at) VALUES ($1, 'pst-usd', 'loan-usd', $2, $3, $4, $5, 'USD', 0)",
        )
        .bind(format!("ent-usd-{funder}-{account}"))
        .bind(funder)
        .bind(account)
        .bind(debit)
        .bind(credit)
        .execute(&db.pool)
        .await
        .unwrap();
    }

    // The trial balance: one row per funder, account and currency, totals
    // per currency, and no single total across two currencies.
    let tb = c
        .get_trial_balance(as_bank(pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tb.total_debits, None);
    assert_eq!(tb.total_credits, None);
    let codes: Vec<&str> = tb.totals.iter().map(|t| code(&t.debits)).collect();
    assert_eq!(codes, vec!["CNY", "USD"]);
    for t in &tb.totals {
        assert_eq!(t.debits, t.credits);
        let c = code(&t.debits);
        assert_eq!(code(&t.credits), c);
        // Each currency's total is the sum of its own rows only.
        let rows: i64 = tb
            .balances
            .iter()
            .filter(|b| code(&b.debits) == c)
            .map(|b| b.debits.as_ref().unwrap().minor_units)
            .sum();
        assert_eq!(t.debits.as_ref().unwrap().minor_units, rows);
        assert!(rows > 0);
    }
    let mut keys: Vec<(i32, &str, &str)> = tb
        .balances
        .iter()
        .map(|b| (b.funder, b.account.as_str(), code(&b.debits)))
        .collect();
    let n = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), n, "one row per funder, account and currency");
    // The USD rows are the USD posting's alone, CNY's the CNY loan's.
    let receivable = |currency: &str| -> i64 {
        tb.balances
            .iter()
            .filter(|b| b.account == "LOANS_RECEIVABLE" && code(&b.debits) == currency)
            .map(|b| b.debits.as_ref().unwrap().minor_units)
            .sum()
    };
    assert_eq!(receivable("USD"), 20_000_000);
    assert_eq!(receivable("CNY"), 10_000_000);
    s.stop().await;
}

#[tokio::test]
async fn currencies_embedded() {
    currencies(BOTH[0]).await;
}

#[tokio::test]
async fn currencies_postgres_redis() {
    currencies(BOTH[1]).await;
}

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// A server whose business day is `rfc3339`'s in Shanghai until the clock
/// moves, with CNY reference data, and `partner` whitelisted under a CNY
/// agreement with this partner share (effective 2026-01-01).
async fn clocked(
    backend: Backend,
    rfc3339: &str,
    partner: &str,
    partner_share_bps: i32,
) -> (TestServer, Client, Clock) {
    let mut settings = colend_funding::app::Settings::from_env().unwrap();
    settings.time_zone = Tz::Asia__Shanghai;
    settings.clock = Clock::manual(at(rfc3339));
    let clock = settings.clock.clone();
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_funding::register_with(mesh, settings).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    reference(&mut c, "ref-cny", "CNY").await.unwrap();
    whitelist(&mut c, partner).await;
    let mut a = agreement(partner, "CNY");
    a.partner_share_bps = partner_share_bps;
    upsert(&mut c, &format!("a-{partner}-cny"), a)
        .await
        .unwrap();
    (s, c, clock)
}

async fn reserve_as(
    c: &mut Client,
    partner: &str,
    app: &str,
    principal: Option<Money>,
) -> Result<pb::Loan, tonic::Status> {
    c.reserve_funding(as_service(partner, reserve(partner, app, principal)))
        .await
        .map(|r| r.into_inner().loan.unwrap())
}

async fn disburse_on(c: &mut Client, loan_id: &str, day: &str) {
    c.book_disbursement(as_bank(pb::BookDisbursementRequest {
        request_id: format!("d-{loan_id}"),
        loan_id: loan_id.into(),
        value_date: day.into(),
        bank_transaction_ref: format!("B-{loan_id}"),
    }))
    .await
    .unwrap();
}

async fn repay_on(c: &mut Client, loan_id: &str, amount: Option<Money>, day: &str) -> pb::Loan {
    let rid = format!("rp-{loan_id}-{day}");
    c.book_repayment(as_bank(pb::BookRepaymentRequest {
        request_id: rid.clone(),
        loan_id: loan_id.into(),
        amount,
        value_date: day.into(),
        bank_transaction_ref: format!("B-{rid}"),
    }))
    .await
    .unwrap();
    c.get_loan(as_bank(pb::GetLoanRequest {
        loan_id: loan_id.into(),
    }))
    .await
    .unwrap()
    .into_inner()
    .loan
    .unwrap()
}

/// The bank's co-lent principal reserved or outstanding (rule C3's usage).
async fn co_lent(c: &mut Client) -> Option<Money> {
    c.get_bank_reference(as_bank(pb::GetBankReferenceRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .co_lent_total
}

/// An agreement version in USD dated next month, stored while nothing was
/// used, takes effect while the partner still has CNY principal outstanding
/// (the bank's own share repaid first, so the reference data could move to
/// USD): a USD loan is refused rather than added to the CNY usage, until the
/// CNY principal is repaid; then the same request succeeds. A version in
/// another currency than the usage's is refused whatever its date.
async fn later_version(backend: Backend) {
    // Partner share 99.99%: the bank funds one fen of 10,000, repaid first.
    let (s, mut c, clock) = clocked(backend, "2026-11-23T02:00:00Z", "p1", 9_999).await;
    let mut later = agreement("p1", "USD");
    later.partner_share_bps = 9_999;
    later.effective_from = "2026-12-01".into();
    upsert(&mut c, "a-p1-usd-december", later.clone())
        .await
        .unwrap();

    // Under the CNY version in force today: CNY principal.
    let cny = reserve_as(&mut c, "p1", "cny-1", money(10_000, "CNY"))
        .await
        .unwrap();
    assert_eq!(
        (cny.bank_amount.clone(), cny.partner_amount.clone()),
        (money(1, "CNY"), money(9_999, "CNY"))
    );
    disburse_on(&mut c, &cny.loan_id, "2026-11-23").await;
    // One fen of principal: the bank's part (the partner's is rounded down).
    let paid = repay_on(&mut c, &cny.loan_id, money(1, "CNY"), "2026-11-23").await;
    assert_eq!(paid.status, pb::LoanStatus::Disbursed as i32, "{paid:?}");
    assert_eq!(co_lent(&mut c).await, money(0, "CNY"));

    // A version in USD is refused while CNY is used, whatever its date.
    for (rid, from) in [
        ("a-p1-usd-now", "2026-01-01"),
        ("a-p1-usd-2027", "2027-01-01"),
    ] {
        let mut usd = later.clone();
        usd.effective_from = from.into();
        assert_mismatch(&upsert(&mut c, rid, usd).await.unwrap_err(), "CNY");
    }
    // Nothing of the bank's is reserved or outstanding: the reference data
    // may move to USD.
    reference(&mut c, "ref-usd", "USD").await.unwrap();

    // December: the USD version is in force, the partner's usage still holds
    // 9,999 fen of CNY.
    clock.set(at("2026-12-02T02:00:00Z"));
    let e = reserve_as(&mut c, "p1", "usd-1", money(10_000, "USD"))
        .await
        .unwrap_err();
    assert_mismatch(&e, "CNY");
    let e = reserve_as(&mut c, "p1", "cny-2", money(10_000, "CNY"))
        .await
        .unwrap_err();
    assert_mismatch(&e, "USD");

    // The CNY principal repaid (and more, within the overpayment tolerance:
    // the payoff is 9,999 fen and 25 of interest, 6 fen more are owed back),
    // the same request succeeds, in USD.
    let settled = repay_on(&mut c, &cny.loan_id, money(10_030, "CNY"), "2026-12-02").await;
    assert_eq!(
        settled.status,
        pb::LoanStatus::Settled as i32,
        "{settled:?}"
    );
    let usd = reserve_as(&mut c, "p1", "usd-1", money(10_000, "USD"))
        .await
        .unwrap();
    assert_eq!(code(&usd.principal), "USD");
    assert_eq!(usd.partner_amount, money(9_999, "USD"));
    // Now USD is used: the version refused before is accepted under its id.
    let mut usd_now = later.clone();
    usd_now.effective_from = "2026-01-01".into();
    upsert(&mut c, "a-p1-usd-now", usd_now).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn a_later_version_never_mixes_currencies_embedded() {
    later_version(BOTH[0]).await;
}

#[tokio::test]
async fn a_later_version_never_mixes_currencies_postgres_redis() {
    later_version(BOTH[1]).await;
}

/// A reservation that read the agreement (through the cache) before a
/// version in another currency was stored is refused, against the version
/// the batch finds in force. The stale copy: a replica whose clock already
/// shows the next day cached the CNY version for it; the USD version,
/// stored on the day before, cleared only that day's entry.
async fn stale_agreement(backend: Backend) {
    let (s, mut c, clock) = clocked(backend, "2026-11-23T02:00:00Z", "p2", 3_000).await;
    let read = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.get_agreement(as_bank(pb::GetAgreementRequest {
                partner_id: "p2".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .agreement
            .unwrap()
        }
    };
    clock.set(at("2026-11-24T02:00:00Z"));
    assert_eq!(code(&read(&mut c).await.total_quota), "CNY");
    clock.set(at("2026-11-23T02:00:00Z"));
    upsert(&mut c, "a-p2-usd", agreement("p2", "USD"))
        .await
        .unwrap();
    clock.set(at("2026-11-24T02:00:00Z"));
    assert_eq!(
        code(&read(&mut c).await.total_quota),
        "CNY",
        "the copy read through the cache is the CNY version"
    );
    let e = reserve_as(&mut c, "p2", "stale-cny", money(1_000_000, "CNY"))
        .await
        .unwrap_err();
    assert_mismatch(&e, "USD");
    s.stop().await;
}

#[tokio::test]
async fn a_stale_agreement_books_nothing_in_its_old_currency_embedded() {
    stale_agreement(BOTH[0]).await;
}

#[tokio::test]
async fn a_stale_agreement_books_nothing_in_its_old_currency_postgres_redis() {
    stale_agreement(BOTH[1]).await;
}

/// Loans reserved and repaid on one day still count against that day's
/// quota: the agreement and the reference data may move to USD once nothing
/// is outstanding (the same requests refused before succeed under their
/// ids), but a USD loan is refused that day, never added to the day's CNY;
/// the next day the same request succeeds.
async fn repaid_day(backend: Backend) {
    let (s, mut c, clock) = clocked(backend, "2026-11-23T02:00:00Z", "p3", 3_000).await;
    let cny = reserve_as(&mut c, "p3", "day-cny", money(1_000_000, "CNY"))
        .await
        .unwrap();
    disburse_on(&mut c, &cny.loan_id, "2026-11-23").await;
    // Refused while CNY is outstanding.
    assert_mismatch(
        &upsert(&mut c, "a-p3-usd", agreement("p3", "USD"))
            .await
            .unwrap_err(),
        "CNY",
    );
    assert_mismatch(
        &reference(&mut c, "ref-usd", "USD").await.unwrap_err(),
        "CNY",
    );
    let settled = repay_on(&mut c, &cny.loan_id, money(1_000_000, "CNY"), "2026-11-23").await;
    assert_eq!(
        settled.status,
        pb::LoanStatus::Settled as i32,
        "{settled:?}"
    );
    // Nothing outstanding: the same requests succeed.
    upsert(&mut c, "a-p3-usd", agreement("p3", "USD"))
        .await
        .unwrap();
    reference(&mut c, "ref-usd", "USD").await.unwrap();
    let e = reserve_as(&mut c, "p3", "day-usd", money(1_000_000, "USD"))
        .await
        .unwrap_err();
    assert_mismatch(&e, "CNY");
    clock.set(at("2026-11-24T02:00:00Z"));
    let usd = reserve_as(&mut c, "p3", "day-usd", money(1_000_000, "USD"))
        .await
        .unwrap();
    assert_eq!(code(&usd.principal), "USD");
    s.stop().await;
}

#[tokio::test]
async fn a_repaid_day_keeps_its_currency_embedded() {
    repaid_day(BOTH[0]).await;
}

#[tokio::test]
async fn a_repaid_day_keeps_its_currency_postgres_redis() {
    repaid_day(BOTH[1]).await;
}

/// Usage recorded before the usage rows carried a currency (migrations
/// before 0013) takes the currency of the partner's live loans (that day's,
/// for a day's usage), else of its latest agreement version; and from then
/// on an agreement version in another currency is refused while it holds
/// anything.
async fn usage_recorded_before(backend: Backend) {
    let dir = colend_testkit::TempDir::new();
    let b = colend_testkit::backends(backend, &dir).await;
    let old = colend_testkit::TempDir::new();
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    for entry in std::fs::read_dir(migrations).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let version: u32 = name
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if (1..13).contains(&version) {
            std::fs::copy(&path, old.0.join(name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.0.as_path()).await.unwrap();
    let db = colend_platform::Db::connect(&b, "funding", &migrator)
        .await
        .unwrap();
    // p1: agreement in CNY, but its one live loan (made before currencies
    // were checked) in USD, reserved on 23 November; a voided INR loan on
    // the 22nd. p2: nothing used, its latest version in USD.
    for (partner, version, currency) in [("p1", 1, "CNY"), ("p2", 1, "CNY"), ("p2", 2, "USD")] {
        sqlx::query(
            "INSERT INTO agreements (partner_id, version, partner_share_bps, bank_rate_bps, partner_rate_bps, \
             currency, daily_quota, total_quota, effective_from, created_at) \
             VALUES ($1, $2, 3000, 900, 1100, $3, 1000000000, 1000000000, '2026-01-01', 0)",
        )
        .bind(partner)
        .bind(i64::from(version))
        .bind(currency)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    for (loan, status, currency, day) in [
        ("L1", "RESERVED", "USD", "2026-11-23"),
        ("L0", "VOID", "INR", "2026-11-22"),
    ] {
        sqlx::query(
            "INSERT INTO loans (loan_id, application_id, partner_id, status, currency, principal, bank_amount, \
             partner_amount, agreement_version, partner_share_bps, bank_rate_bps, partner_rate_bps, \
             annual_rate_bps, term_months, method, reserved_on, disbursed_on, disbursement_ref, principal_paid, \
             interest_paid, penalty_paid, partner_principal_paid, partner_interest_paid, partner_penalty_paid, \
             created_at, updated_at) VALUES ($1, $1, 'p1', $2, $3, 10000, 7000, 3000, 1, 3000, 900, 1100, 1000, \
             12, 1, $4, '', '', 0, 0, 0, 0, 0, 0, 0, 0)",
        )
        .bind(loan)
        .bind(status)
        .bind(currency)
        .bind(day)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    for (partner, used) in [("p1", 3_000i64), ("p2", 0)] {
        sqlx::query("INSERT INTO partner_usage (partner_id, used) VALUES ($1, $2)")
            .bind(partner)
            .bind(used)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    for (day, used) in [("2026-11-22", 0i64), ("2026-11-23", 3_000)] {
        sqlx::query(
            "INSERT INTO partner_daily_usage (partner_id, day, used) VALUES ('p1', $1, $2)",
        )
        .bind(day)
        .bind(used)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    db.pool.close().await;

    let db = colend_funding::connect(&b).await.unwrap();
    let total: Vec<(String, String)> =
        sqlx::query_as("SELECT partner_id, currency FROM partner_usage ORDER BY partner_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        total,
        vec![("p1".into(), "USD".into()), ("p2".into(), "USD".into())],
        "{backend:?}"
    );
    let daily: Vec<(String, String)> =
        sqlx::query_as("SELECT day, currency FROM partner_daily_usage ORDER BY day")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        daily,
        vec![
            ("2026-11-22".into(), "CNY".into()),
            ("2026-11-23".into(), "USD".into())
        ],
        "{backend:?}"
    );
    db.pool.close().await;

    let s = TestServer::start_with(b, dir, |mesh| async move {
        Ok(vec![colend_funding::register(mesh).await?])
    })
    .await;
    let mut c = FundingServiceClient::new(s.channel.clone());
    // p1's usage holds USD: a CNY version is refused naming it; p2's holds
    // nothing: any currency.
    assert_mismatch(
        &upsert(&mut c, "a-p1-cny", agreement("p1", "CNY"))
            .await
            .unwrap_err(),
        "USD",
    );
    upsert(&mut c, "a-p2-cny", agreement("p2", "CNY"))
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn usage_recorded_before_keeps_its_currency_embedded() {
    usage_recorded_before(BOTH[0]).await;
}

#[tokio::test]
async fn usage_recorded_before_keeps_its_currency_postgres_redis() {
    usage_recorded_before(BOTH[1]).await;
}
