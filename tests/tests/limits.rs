//! Per-partner rate limits and the per-borrower velocity limit. A test binary
//! of its own: the limits are read from the environment once per process.
use colend::borrowers::{Plant, generate};
use colend::demo::application;
use colend_contracts::acquisition::v1::{
    self as acq, acquisition_service_client::AcquisitionServiceClient,
};
use colend_testkit::{Backend, TestServer, as_partner, reason};
use tonic::Code;

#[tokio::test]
async fn rate_and_velocity_limits() {
    // SAFETY: set before any thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("COLEND_PARTNER_RATE_LIMIT", "1");
        std::env::set_var("COLEND_PARTNER_RATE_BURST", "3");
        std::env::set_var("COLEND_BORROWER_DAILY_APPLICATIONS", "2");
    }
    let s = TestServer::start(Backend::Embedded, colend::register_all).await;
    let mut c = AcquisitionServiceClient::new(s.channel.clone());
    let list = |p: &str| {
        as_partner(
            p,
            acq::ListApplicationsRequest {
                page_size: 10,
                ..Default::default()
            },
        )
    };
    // A burst of 3, then RESOURCE_EXHAUSTED with when to retry.
    for _ in 0..3 {
        c.list_applications(list("rl-a")).await.unwrap();
    }
    let e = c.list_applications(list("rl-a")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(reason(&e), "RATE_LIMITED");
    let retry = tonic_types::StatusExt::get_error_details(&e)
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry.as_millis() > 0 && retry.as_millis() <= 1_000,
        "{retry:?}"
    );
    // Another partner has its own budget.
    c.list_applications(list("rl-b")).await.unwrap();

    // The same borrower at three partners: the third application in a day
    // is refused (the limit is 2 here).
    let today = colend_platform::time::today();
    let b = generate(40, 3, today)
        .into_iter()
        .find(|b| b.plant == Plant::Good)
        .expect("a good borrower");
    for (i, p) in ["v-1", "v-2", "v-3"].into_iter().enumerate() {
        let r = c
            .submit_application(as_partner(
                p,
                application(format!("vel-{i}"), format!("risk-{i}"), &b),
            ))
            .await;
        if i < 2 {
            r.unwrap();
        } else {
            let e = r.unwrap_err();
            assert_eq!(e.code(), Code::ResourceExhausted);
            assert_eq!(reason(&e), "QUOTA_EXCEEDED");
            assert_eq!(
                colend_testkit::error_metadata(&e, "limit").as_deref(),
                Some("BORROWER_VELOCITY")
            );
        }
    }
    s.stop().await;
}
