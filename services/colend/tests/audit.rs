//! The audit log: a demo's calls (and a refused one) are chained;
//! `colend audit verify` accepts the chain, and after one row is changed in
//! the database names that row.
use colend::demo::{DemoArgs, execute};
use colend_testkit::{Backend, TestServer, as_partner};
use sqlx::Connection;
use std::process::Command;

fn verify(data_dir: &std::path::Path, service: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_colend"))
        .args(["audit", "verify", service, "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "error")
        .output()
        .expect("colend runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn audit_chain_detects_tampering() {
    let s = TestServer::start(Backend::Embedded, colend::register_all).await;
    let args = DemoArgs {
        endpoint: s.endpoint.clone(),
        kyc_endpoint: None,
        funding_endpoint: None,
        reconciliation_endpoint: None,
        applications: 10,
        json: true,
        partner: Some("audit-p".into()),
        concurrency: 4,
        seed: Some(5),
        partner_share_bps: 3_000,
    };
    let sum = execute(&args).await.expect("demo runs");
    assert_eq!(sum.errors, 0, "{:?}", sum.error_samples);
    // A partner trying a bank operation is refused, and that is recorded.
    let mut f = colend_contracts::funding::v1::funding_service_client::FundingServiceClient::new(
        s.channel.clone(),
    );
    let e = f
        .get_trial_balance(as_partner(
            "audit-p",
            colend_contracts::funding::v1::GetTrialBalanceRequest {},
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let dir = s.backends.data_dir.clone();
    let (ok, out) = verify(&dir, "all");
    assert!(ok, "{out}");
    // A directory that is not the mesh's is refused, and stays empty.
    let empty = colend_testkit::TempDir::new();
    let (refused_ok, refused) = verify(&empty.0, "all");
    assert!(!refused_ok && refused.contains("storage at"), "{refused}");
    assert_eq!(std::fs::read_dir(&empty.0).unwrap().count(), 0);
    for svc in colend::SERVICES {
        assert!(out.contains(&format!("{svc}: audit chain intact")), "{out}");
    }
    let db = format!("sqlite://{}", dir.join("funding.db").display());
    let mut conn = sqlx::AnyConnection::connect(&db).await.unwrap();
    let (denied,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_log WHERE outcome = 'DENIED' AND caller_class = 'partner' \
         AND partner_id = 'audit-p' AND action = 'colend.funding.v1.FundingService/GetTrialBalance'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(denied, 1);
    let (allowed,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_log WHERE outcome = 'ALLOWED' AND caller_class = 'bank' \
         AND action = 'colend.funding.v1.FundingService/BookDisbursement' AND request_id <> ''",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(allowed > 0);

    // Someone edits row 3: the chain breaks there.
    sqlx::query("UPDATE audit_log SET partner_id = 'someone-else' WHERE seq = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out) = verify(&dir, "funding");
    assert!(!ok, "{out}");
    assert!(
        out.contains("funding: audit chain broken at row 3: its contents were changed"),
        "{out}"
    );
    // Someone deletes a row elsewhere: the gap is named.
    let db = format!("sqlite://{}", dir.join("acquisition.db").display());
    let mut acq = sqlx::AnyConnection::connect(&db).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(&mut acq)
        .await
        .unwrap();
    let (ok, out) = verify(&dir, "acquisition");
    assert!(!ok, "{out}");
    assert!(
        out.contains("acquisition: audit chain broken at row 2"),
        "{out}"
    );
    drop(acq);
    drop(conn);
    s.stop().await;
}
