//! KYC API tests against a real server on port 0, on both backends.
use colend_contracts::kyc::v1::{self as pb, kyc_service_client::KycServiceClient};
use colend_core::{CreditCode, ResidentId};
use colend_testkit::{BOTH, Backend, TestServer, as_bank, as_partner, as_service, reason};
use tonic::Code;

async fn server(backend: Backend) -> TestServer {
    TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_kyc::register(mesh).await?])
    })
    .await
}

fn id(body: &str) -> String {
    format!("{body}{}", ResidentId::check_char(body).unwrap())
}

fn cc(body: &str) -> String {
    format!("{body}{}", CreditCode::check_char(body).unwrap())
}

fn check(
    request_id: &str,
    partner: &str,
    person: &str,
    business: &str,
) -> pb::CheckBorrowerRequest {
    pb::CheckBorrowerRequest {
        request_id: request_id.into(),
        partner_id: partner.into(),
        person_name: person.into(),
        resident_id: id("11010519800101123"),
        mobile: "13800138000".into(),
        business_name: business.into(),
        credit_code: cc("91350100M000100Y4"),
    }
}

async fn scenario(backend: Backend) {
    let s = server(backend).await;
    colend_testkit::assert_serving(s.channel.clone(), colend_kyc::SERVICE).await;
    let services = colend_testkit::reflected_services(s.channel.clone()).await;
    assert!(
        services.contains(&colend_kyc::SERVICE.to_string()),
        "{services:?}"
    );
    let mut c = KycServiceClient::new(s.channel.clone());

    // A clean borrower passes; age and region come from the ID.
    let first = c
        .check_borrower(as_service(
            "p1",
            check("k1", "p1", "王伟", "福州恒通贸易有限公司"),
        ))
        .await
        .unwrap()
        .into_inner()
        .check
        .unwrap();
    assert_eq!(first.outcome, pb::KycOutcome::Passed as i32, "{first:?}");
    assert_eq!(first.person_region_code, "110105");
    assert!(first.age >= 45);
    assert!(!first.from_cache);

    // Replaying the request id returns the original result.
    let replay = c
        .check_borrower(as_service(
            "p1",
            check("k1", "p1", "王伟", "福州恒通贸易有限公司"),
        ))
        .await
        .unwrap()
        .into_inner()
        .check
        .unwrap();
    assert_eq!(replay, first);

    // A repeat check with a new request id is served from cache.
    let cached = c
        .check_borrower(as_service(
            "p1",
            check("k2", "p1", "王伟", "福州恒通贸易有限公司"),
        ))
        .await
        .unwrap()
        .into_inner()
        .check
        .unwrap();
    assert!(cached.from_cache);
    assert_eq!(cached.check_id, first.check_id);

    // The same request id with other content is refused.
    let e = c
        .check_borrower(as_service(
            "p1",
            check("k1", "p1", "王芳", "福州恒通贸易有限公司"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason(&e), "IDEMPOTENCY_KEY_REUSED");

    // A watchlisted business (fuzzy match) is rejected.
    c.add_watchlist_entry(as_bank(pb::AddWatchlistEntryRequest {
        request_id: "w1".into(),
        kind: pb::WatchlistKind::Fraud as i32,
        name: "Star River Trading Co., Ltd.".into(),
        note: "test".into(),
    }))
    .await
    .unwrap();
    let hit = c
        .check_borrower(as_service(
            "p1",
            check("k3", "p1", "李娜", "Star-River Trading Limited"),
        ))
        .await
        .unwrap()
        .into_inner()
        .check
        .unwrap();
    assert_eq!(hit.outcome, pb::KycOutcome::Rejected as i32);
    assert_eq!(hit.reason_codes, vec!["WATCHLIST_HIT"]);
    assert_eq!(hit.watchlist_hits[0].subject, "business");

    // A bad check character is a rejection with a reason code.
    let mut bad = check("k4", "p1", "赵敏", "x");
    bad.resident_id = "110105198001011230".into();
    let r = c
        .check_borrower(as_service("p1", bad))
        .await
        .unwrap()
        .into_inner()
        .check
        .unwrap();
    assert!(
        r.reason_codes.contains(&"RESIDENT_ID_INVALID".to_string()),
        "{r:?}"
    );

    // Another partner cannot read the check; the caller must identify itself.
    let e = c
        .get_check(as_partner(
            "p2",
            pb::GetCheckRequest {
                check_id: first.check_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let own = c
        .get_check(as_partner(
            "p1",
            pb::GetCheckRequest {
                check_id: first.check_id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(own.into_inner().check.unwrap().check_id, first.check_id);
    // Checks are acquisition's to ask for: the bank core is refused; a
    // call with no token is not authenticated.
    let e = c
        .check_borrower(as_bank(check("k5", "p1", "a", "b")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(reason(&e), "PERMISSION_DENIED");
    let e = c
        .check_borrower(colend_testkit::anonymous(check("k5", "p1", "a", "b")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(reason(&e), "UNAUTHENTICATED");

    // Missing fields are reported field by field.
    let e = c
        .check_borrower(as_service(
            "p1",
            pb::CheckBorrowerRequest {
                partner_id: "p1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let fields = colend_testkit::violated_fields(&e);
    for f in [
        "request_id",
        "person_name",
        "resident_id",
        "mobile",
        "business_name",
        "credit_code",
    ] {
        assert!(
            fields.contains(&f.to_string()),
            "{f} missing from {fields:?}"
        );
    }

    // Watchlist listing pages.
    let l = c
        .list_watchlist_entries(as_bank(pb::ListWatchlistEntriesRequest {
            page_size: 10,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.entries.len(), 1);
    assert!(l.next_page_token.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn kyc_api_embedded() {
    scenario(BOTH[0]).await;
}

#[tokio::test]
async fn kyc_api_postgres_redis() {
    scenario(BOTH[1]).await;
}

/// A cache that cannot be reached is a miss, never a failed request.
#[tokio::test]
async fn kyc_answers_when_redis_is_down() {
    let dir = colend_testkit::TempDir::new();
    let backends = colend_platform::config::Backends {
        database_url: None,
        // Nothing listens on port 1 of loopback.
        redis_url: Some("redis://127.0.0.1:1".into()),
        data_dir: dir.0.clone(),
        cache_prefix: "colend-test-down:".into(),
    };
    let s = TestServer::start_with(backends, dir, |mesh| async move {
        Ok(vec![colend_kyc::register(mesh).await?])
    })
    .await;
    let mut c = KycServiceClient::new(s.channel.clone());
    for rid in ["d1", "d2"] {
        let r = c
            .check_borrower(as_service(
                "p1",
                check(rid, "p1", "王伟", "福州恒通贸易有限公司"),
            ))
            .await
            .unwrap()
            .into_inner()
            .check
            .unwrap();
        assert_eq!(r.outcome, pb::KycOutcome::Passed as i32);
        assert!(!r.from_cache, "nothing can come from a cache that is down");
    }
    s.stop().await;
}
