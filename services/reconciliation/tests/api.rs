//! Reconciliation API tests against a real server on port 0, on both backends.
use colend_contracts::common::v1::Money;
use colend_contracts::reconciliation::v1::{
    self as pb, reconciliation_service_client::ReconciliationServiceClient,
};
use colend_testkit::{BOTH, Backend, TestServer, as_bank, violated_fields};
use tonic::Code;

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

fn rec(kind: pb::RecordKind, tx: &str, amount: i64, partner: i64) -> pb::Record {
    pb::Record {
        kind: kind as i32,
        transaction_id: tx.into(),
        loan_id: "loan_1".into(),
        value_date: "2026-11-23".into(),
        amount: cny(amount),
        bank_portion: cny(amount - partner),
        partner_portion: cny(partner),
    }
}

async fn scenario(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_reconciliation::register(mesh).await?])
    })
    .await;
    let mut c = ReconciliationServiceClient::new(s.channel.clone());
    use pb::RecordKind::{Disbursement as D, Repayment as R};
    let ingest = |rid: &str, side: pb::Side, records: Vec<pb::Record>| {
        as_bank(pb::IngestRecordsRequest {
            request_id: rid.into(),
            partner_id: "p1".into(),
            business_date: "2026-11-23".into(),
            side: side as i32,
            records,
        })
    };
    let bank = vec![
        rec(D, "d1", 1_000_000, 300_000),
        rec(R, "r1", 90_000, 27_500),
        rec(R, "r2", 50_000, 15_000),
        rec(R, "r3", 10_000, 3_000),
        rec(R, "r3", 10_000, 3_000),
    ];
    let partner = vec![
        rec(D, "d1", 1_000_000, 300_000),
        rec(R, "r1", 90_000, 27_500),
        rec(R, "r2", 50_001, 15_001),
        rec(R, "r4", 7_000, 2_100),
    ];
    assert_eq!(
        c.ingest_records(ingest("b1", pb::Side::Bank, bank.clone()))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        5
    );
    // A replayed batch is not loaded twice.
    assert_eq!(
        c.ingest_records(ingest("b1", pb::Side::Bank, bank))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        5
    );
    c.ingest_records(ingest("p1", pb::Side::Partner, partner))
        .await
        .unwrap();

    let run = c
        .run_reconciliation(as_bank(pb::RunReconciliationRequest {
            request_id: "run1".into(),
            partner_id: "p1".into(),
            business_date: "2026-11-23".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let count = |k: pb::BreakClass| {
        run.classes
            .iter()
            .find(|c| c.break_class == k as i32)
            .map(|c| c.count)
            .unwrap_or(0)
    };
    assert_eq!(run.bank_records, 5);
    assert_eq!(count(pb::BreakClass::Matched), 2);
    assert_eq!(count(pb::BreakClass::AmountMismatch), 1);
    assert_eq!(count(pb::BreakClass::Duplicate), 1);
    assert_eq!(count(pb::BreakClass::MissingOnBankSide), 1);
    assert_eq!(run.open_breaks, 3);
    // Partner owes its share of the disbursement less its share of repayments the bank collected.
    assert_eq!(
        run.settlement
            .unwrap()
            .partner_owes_bank
            .unwrap()
            .minor_units,
        300_000 - 27_500
    );

    let page1 = c
        .list_breaks(as_bank(pb::ListBreaksRequest {
            run_id: run.run_id.clone(),
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.breaks.len(), 2);
    let page2 = c
        .list_breaks(as_bank(pb::ListBreaksRequest {
            run_id: run.run_id.clone(),
            page_size: 2,
            page_token: page1.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.breaks.len(), 1);
    assert!(page2.next_page_token.is_empty());

    // Malformed rows are named by index; nothing of the batch is stored.
    let mut bad = rec(R, "", 100, 30);
    bad.bank_portion = cny(1);
    let e = c
        .ingest_records(ingest("b2", pb::Side::Bank, vec![rec(R, "ok", 1, 0), bad]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let f = violated_fields(&e);
    assert!(
        f.contains(&"records[1].transaction_id".to_string())
            && f.contains(&"records[1].partner_portion".to_string()),
        "{f:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn reconciliation_api_embedded() {
    scenario(BOTH[0]).await;
}

#[tokio::test]
async fn reconciliation_api_postgres_redis() {
    scenario(BOTH[1]).await;
}
