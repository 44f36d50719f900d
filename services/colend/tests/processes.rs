//! The production layout: each service its own process (`colend serve`), on
//! PostgreSQL and Redis, finding the others through `COLEND_<SERVICE>_URL`.
//! A demo run through all five processes must end clean.
use colend::demo::{DemoArgs, execute};
use std::collections::HashMap;
use tokio::process::{Child, Command};

#[tokio::test]
async fn five_processes_on_postgres_and_redis() {
    let database_url = colend_testkit::fresh_postgres().await;
    let redis_url = colend_testkit::require_redis().await;
    let prefix = format!("colend-test-{}:", std::process::id());
    let free = colend_testkit::free_ports(2 * colend::SERVICES.len());
    let (main, metrics) = free.split_at(colend::SERVICES.len());
    let ports: HashMap<&str, u16> = colend::SERVICES
        .iter()
        .copied()
        .zip(main.iter().copied())
        .collect();
    let metrics_ports: HashMap<&str, u16> = colend::SERVICES
        .iter()
        .copied()
        .zip(metrics.iter().copied())
        .collect();
    let url = |s: &str| format!("http://127.0.0.1:{}", ports[s]);
    let dir = colend_testkit::TempDir::new();
    let mut children: Vec<Child> = Vec::new();
    for svc in colend::SERVICES {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_colend"));
        cmd.args([
            "serve",
            svc,
            "--listen",
            &format!("127.0.0.1:{}", ports[svc]),
        ])
        .env("DATABASE_URL", &database_url)
        .env("REDIS_URL", &redis_url)
        // This test process signs with the development key: name it.
        .env(
            "COLEND_AUTH_KEYS",
            format!("dev:{}", colend_platform::auth::DEV_AUTH_KEY),
        )
        .env("COLEND_CACHE_PREFIX", &prefix)
        .env("COLEND_DATA_DIR", &dir.0)
        // Shutdown steps are logged at info: the test reads them at the end.
        .env(
            "RUST_LOG",
            "warn,colend_platform::grpc=info,colend_platform::lifecycle=info",
        )
        .stdout(std::fs::File::create(dir.0.join(format!("{svc}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.0.join(format!("{svc}.err"))).unwrap())
        .env(
            "COLEND_METRICS_LISTEN",
            format!("127.0.0.1:{}", metrics_ports[svc]),
        )
        .kill_on_drop(true);
        for other in colend::SERVICES {
            cmd.env(format!("COLEND_{}_URL", other.to_uppercase()), url(other));
        }
        children.push(cmd.spawn().expect("colend serve starts"));
    }
    for (svc, name) in colend::SERVICES.iter().zip(colend::SERVICE_NAMES) {
        colend::health(&url(svc), vec![name.to_string()], 60)
            .await
            .expect("service becomes SERVING");
    }
    let args = DemoArgs {
        endpoint: url("acquisition"),
        kyc_endpoint: Some(url("kyc")),
        funding_endpoint: Some(url("funding")),
        reconciliation_endpoint: Some(url("reconciliation")),
        applications: 40,
        json: true,
        partner: None,
        concurrency: 8,
        seed: Some(7),
        partner_share_bps: 3_500,
    };
    let sum = execute(&args).await.expect("demo runs");
    assert_eq!(sum.errors, 0, "{:?}", sum.error_samples);
    assert!(
        sum.invariant_violations.is_empty(),
        "{:?}",
        sum.invariant_violations
    );
    assert!(sum.funded.loans > 0);
    assert!(sum.funded.min_partner_share_bps.unwrap() >= 3_500);
    assert_eq!(sum.reconciliation.breaks, 0);
    assert!(sum.reconciliation.settlement_verified);
    // Each process exposes Prometheus metrics: RPC durations and business counters.
    let acquisition = scrape(metrics_ports["acquisition"]).await;
    assert!(acquisition.contains("rpc_server_duration_seconds_bucket{rpc_service=\"colend.acquisition.v1.AcquisitionService\",rpc_method=\"SubmitApplication\",rpc_grpc_status_code=\"0\""), "{acquisition}");
    assert!(
        acquisition.contains("colend_applications_total{status=\"FUNDS_RESERVED\"}"),
        "{acquisition}"
    );
    let funding = scrape(metrics_ports["funding"]).await;
    assert!(
        funding.contains("colend_funded_minor_total{funder=\"partner\",currency=\"CNY\"}"),
        "{funding}"
    );
    assert!(
        funding.contains("colend_reservations_total{result=\"reserved\"}"),
        "{funding}"
    );
    assert!(funding.contains("colend_outbox_pending"), "{funding}");
    let recon = scrape(metrics_ports["reconciliation"]).await;
    assert!(
        recon.contains("colend_recon_items_total{class=\"MATCHED\"}"),
        "{recon}"
    );
    // Graceful stop on SIGTERM.
    for c in &children {
        if let Some(pid) = c.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for mut c in children {
        let status = tokio::time::timeout(std::time::Duration::from_secs(20), c.wait())
            .await
            .expect("stops within the bound")
            .unwrap();
        assert!(status.success(), "exit status {status}");
    }
    // Each flipped health to NOT_SERVING and drained; the background
    // workers (outbox relays, sweepers) stopped within the bound.
    let log = |svc: &str| {
        ["out", "err"]
            .iter()
            .map(|x| std::fs::read_to_string(dir.0.join(format!("{svc}.{x}"))).unwrap_or_default())
            .collect::<String>()
    };
    for svc in colend::SERVICES {
        assert!(
            log(svc).contains("health NOT_SERVING, draining"),
            "{svc}: {}",
            log(svc)
        );
    }
    for (svc, workers) in [
        (
            "acquisition",
            &["journey-sweeper", "acquisition-outbox-relay"][..],
        ),
        (
            "funding",
            &["funding-outbox-relay", "funding-expiry-sweeper"][..],
        ),
    ] {
        let l = log(svc);
        for w in workers {
            assert!(
                l.contains("worker stopped") && l.contains(w),
                "{svc}: {w} did not stop: {l}"
            );
        }
        assert!(!l.contains("did not stop within the bound"), "{l}");
    }
    colend_testkit::drop_database(&database_url).await;
}

/// GET /metrics over a plain socket.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}
