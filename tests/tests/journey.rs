//! Whole journeys across all five services over real sockets: the demo's
//! partner and bank core against `colend up`'s mesh, on the embedded backend
//! and on PostgreSQL + Redis.
use colend::demo::{DemoArgs, execute};
use colend_testkit::{Backend, TestServer};
use sqlx::Connection;

async fn mesh(backend: Backend) -> TestServer {
    TestServer::start(backend, colend::register_all).await
}

async fn journey(backend: Backend) -> TestServer {
    let s = mesh(backend).await;
    for svc in [
        "colend.acquisition.v1.AcquisitionService",
        "colend.kyc.v1.KycService",
        "colend.credit.v1.CreditService",
        "colend.funding.v1.FundingService",
        "colend.reconciliation.v1.ReconciliationService",
    ] {
        colend_testkit::assert_serving(s.channel.clone(), svc).await;
        let listed = colend_testkit::reflected_services(s.channel.clone()).await;
        assert!(listed.contains(&svc.to_string()), "{svc} not in {listed:?}");
    }
    let args = DemoArgs {
        endpoint: s.endpoint.clone(),
        kyc_endpoint: None,
        funding_endpoint: None,
        reconciliation_endpoint: None,
        applications: 60,
        json: true,
        partner: None,
        concurrency: 8,
        seed: Some(2026),
        partner_share_bps: 3_000,
    };
    let sum = execute(&args).await.expect("demo runs");
    eprintln!("{sum:#?}");
    assert_eq!(sum.errors, 0, "errors: {:?}", sum.error_samples);
    assert!(
        sum.invariant_violations.is_empty(),
        "{:?}",
        sum.invariant_violations
    );
    // The generator plants a fixed mix (see borrowers.rs): 60 applications hold
    // 3 invalid identifiers, 3 prohibited purposes, 2 too old, 2 over-borrowed, 2 watchlisted,
    // and one good borrower submitted twice while in flight.
    assert_eq!(sum.outcomes.get("INVALID_REJECTED"), Some(&3));
    assert_eq!(sum.outcomes.get("KYC_REJECTED"), Some(&2));
    assert_eq!(sum.decline_reasons.get("WATCHLIST_HIT"), Some(&2));
    assert_eq!(sum.decline_reasons.get("PROHIBITED_PURPOSE"), Some(&3));
    assert_eq!(sum.decline_reasons.get("AGE_OUT_OF_RANGE"), Some(&2));
    assert_eq!(sum.decline_reasons.get("TOO_MANY_OPEN_LOANS"), Some(&2));
    assert_eq!(sum.duplicates_rejected, 1);
    // 2 high-risk borrowers priced above the all-in cap; 1 borrower at its
    // RMB 200,000 cap applying again is declined on the per-borrower limit.
    assert_eq!(sum.decline_reasons.get("NOT_PRICEABLE_UNDER_CAP"), Some(&2));
    assert_eq!(sum.decline_reasons.get("BORROWER_LIMIT_REACHED"), Some(&1));
    assert_eq!(sum.repeat_applications.get("DECLINED"), Some(&1));
    let funded = sum.funded.loans;
    assert_eq!(
        funded + 3 + 2 + sum.outcomes.get("DECLINED").copied().unwrap_or(0),
        60
    );
    assert_eq!(sum.outcomes.get("FUNDED (REPAYING)").copied(), Some(funded));
    assert_eq!(
        sum.funded.bank_minor + sum.funded.partner_minor,
        sum.funded.principal_minor
    );
    assert!(sum.funded.min_partner_share_bps.unwrap() >= 3_000);
    assert_eq!(sum.reconciliation.bank_records, 2 * funded as i64);
    assert_eq!(sum.reconciliation.matched, 2 * funded as i64);
    assert_eq!(sum.reconciliation.breaks, 0);
    assert!(sum.reconciliation.settlement_verified);
    // Three-way: both sides agree with colend's own funding ledger.
    assert_eq!(sum.reconciliation.ledger_records, 2 * funded as i64);
    assert_eq!(sum.reconciliation.ledger_breaks, 0);
    assert!(sum.ledger_balanced);
    three_way_breaks(
        &s,
        &sum.partner_id,
        &sum.reconciliation.business_date,
        funded as i64,
    )
    .await;
    // Every service's audit chain holds after a concurrent demo.
    let report = colend::audit_verify("all", &s.backends)
        .await
        .expect("audit chains intact");
    assert_eq!(report.len(), 5, "{report:?}");
    s
}

/// A bank record colend never booked is MISSING_IN_LEDGER; the ledger's
/// movements nobody sent are missing on both sides (a dry run: nothing kept).
async fn three_way_breaks(s: &TestServer, partner: &str, date: &str, funded: i64) {
    use colend_contracts::common::v1::Money;
    use colend_contracts::reconciliation::v1::{
        self as pb, reconcile_stream_request::Item,
        reconciliation_service_client::ReconciliationServiceClient,
    };
    let cny = |m: i64| {
        Some(Money {
            minor_units: m,
            currency_code: "CNY".into(),
        })
    };
    let ghost = pb::Record {
        kind: pb::RecordKind::Repayment as i32,
        transaction_id: "ghost-1".into(),
        loan_id: "no-such-loan".into(),
        value_date: date.into(),
        amount: cny(1_000),
        bank_portion: cny(700),
        partner_portion: cny(300),
        ..Default::default()
    };
    let msgs = vec![
        pb::ReconcileStreamRequest {
            item: Some(Item::Start(pb::ReconcileStreamStart {
                request_id: "three-way-check".into(),
                partner_id: partner.into(),
                business_date: date.into(),
                options: Some(pb::RunOptions {
                    three_way: true,
                    dry_run: true,
                    ..Default::default()
                }),
            })),
        },
        pb::ReconcileStreamRequest {
            item: Some(Item::Batch(pb::RecordBatch {
                side: pb::Side::Bank as i32,
                records: vec![ghost],
            })),
        },
    ];
    let run = ReconciliationServiceClient::new(s.channel.clone())
        .reconcile_stream(colend_testkit::as_bank(futures::stream::iter(msgs)))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let count = |p: pb::Pair, k: pb::BreakClass| {
        run.ledger_pairs
            .iter()
            .find(|x| x.pair == p as i32)
            .and_then(|x| x.classes.iter().find(|c| c.break_class == k as i32))
            .map(|c| c.count)
            .unwrap_or(0)
    };
    assert_eq!(run.ledger_records, 2 * funded);
    assert_eq!(
        count(pb::Pair::BankLedger, pb::BreakClass::MissingInLedger),
        1
    );
    assert_eq!(
        count(pb::Pair::BankLedger, pb::BreakClass::MissingOnBankSide),
        2 * funded
    );
    assert_eq!(
        count(
            pb::Pair::PartnerLedger,
            pb::BreakClass::MissingOnPartnerSide
        ),
        2 * funded
    );
    assert!(run.run_id.is_empty());
}

#[tokio::test]
async fn journey_embedded() {
    let s = journey(Backend::Embedded).await;
    // Each service owns its own SQLite file.
    for svc in colend::SERVICES {
        assert!(
            s.backends.data_dir.join(format!("{svc}.db")).exists(),
            "{svc}.db missing"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn journey_postgres_redis() {
    let s = journey(Backend::Production).await;
    // Rows sit in each service's own schema, and the cache holds keys in Redis.
    let url = s.backends.database_url.clone().unwrap();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    for (schema, table) in [
        ("acquisition", "applications"),
        ("kyc", "kyc_checks"),
        ("credit", "decisions"),
        ("funding", "loans"),
        ("reconciliation", "recon_records"),
    ] {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {schema}.{table}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(n > 0, "{schema}.{table} is empty");
    }
    let client = redis::Client::open(colend_testkit::redis_url()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}kyc:v1:*", s.backends.cache_prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let policy: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("{}credit:policy:current", s.backends.cache_prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(policy.is_some());
    s.stop().await;
}
