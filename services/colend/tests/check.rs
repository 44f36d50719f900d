//! `colend check`: it refuses storage that is not the services' (and creates
//! nothing there), holds on a healthy mesh after a demo run, and names the
//! invariant a corruption planted in SQL breaks: on the SQLite files and on
//! PostgreSQL, through the binary and through `colend::invariants::check`.
use colend::demo::{DemoArgs, execute, status_name};
use colend::invariants::{self, Refused, names};
use colend_contracts::acquisition::v1 as acq;
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_platform::config::Backends;
use colend_testkit::{Backend, TempDir, as_partner};
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs `colend check` on `b`'s storage: (succeeded, stdout, stderr).
async fn colend_check(b: &Backends, extra: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_colend"));
    cmd.arg("check")
        .arg("--data-dir")
        .arg(&b.data_dir)
        .args(extra)
        .env("RUST_LOG", "error");
    match &b.database_url {
        Some(url) => cmd.env("DATABASE_URL", url),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let out = cmd.output().await.expect("colend runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn embedded(dir: &Path) -> Backends {
    Backends {
        database_url: None,
        redis_url: None,
        data_dir: dir.to_path_buf(),
        cache_prefix: "colend:".into(),
    }
}

/// The names in `dir`, sorted (SQLite's `-wal` and `-shm` files included).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn assert_refused(r: anyhow::Result<invariants::Report>) -> String {
    match r {
        Ok(report) => panic!("checked storage that is not the services':\n{report}"),
        Err(e) => {
            assert!(
                e.downcast_ref::<Refused>().is_some(),
                "not a refusal: {e:#}"
            );
            e.to_string()
        }
    }
}

#[tokio::test]
async fn an_empty_or_wrong_data_dir_is_refused_and_left_as_it_was() {
    let dir = TempDir::new();
    let b = embedded(&dir.0);
    for extra in [&[][..], &["--wait-secs", "1"][..], &["--json"][..]] {
        let (ok, out, err) = colend_check(&b, extra).await;
        assert!(
            !ok,
            "colend check {extra:?} passed on an empty directory: {out}"
        );
        assert!(err.contains("refusing to check"), "{err}");
        assert!(err.contains("holds no colend data"), "{err}");
        assert!(!out.contains("holds "), "{out}");
        assert_eq!(listing(&dir.0), Vec::<String>::new(), "files were created");
    }
    assert!(assert_refused(invariants::check(&b).await).contains("holds no colend data"));
    assert!(invariants::settle(&b, 1).await.is_err());
    assert_eq!(listing(&dir.0), Vec::<String>::new());

    // A directory that does not exist is not created.
    let nowhere = embedded(&dir.0.join("nowhere"));
    let (ok, _, err) = colend_check(&nowhere, &[]).await;
    assert!(!ok && err.contains("is not a directory"), "{err}");
    assert!(!nowhere.data_dir.exists());

    // Files named like the services' that are not theirs (empty SQLite
    // databases): refused, and neither written nor given a log.
    for svc in colend::SERVICES {
        std::fs::write(dir.0.join(format!("{svc}.db")), b"").unwrap();
    }
    let before = listing(&dir.0);
    let (ok, _, err) = colend_check(&b, &[]).await;
    assert!(!ok, "{err}");
    assert!(err.contains("holds none of the services' tables"), "{err}");
    assert_eq!(listing(&dir.0), before);
    for svc in colend::SERVICES {
        let len = std::fs::metadata(dir.0.join(format!("{svc}.db")))
            .unwrap()
            .len();
        assert_eq!(len, 0, "{svc}.db was written");
    }
}

#[tokio::test]
async fn a_database_without_colend_schemas_is_refused_and_left_as_it_was() {
    let url = colend_testkit::fresh_postgres().await;
    let dir = TempDir::new();
    let b = Backends {
        database_url: Some(url.clone()),
        ..embedded(&dir.0)
    };
    let (ok, out, err) = colend_check(&b, &["--wait-secs", "1"]).await;
    assert!(!ok, "colend check passed on an empty database: {out}");
    assert!(err.contains("refusing to check"), "{err}");
    assert!(err.contains("holds none of the services' tables"), "{err}");
    assert_refused(invariants::check(&b).await);
    // One schema with its tables is not a colend database either.
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE SCHEMA kyc")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE kyc.audit_log (seq BIGINT)")
        .execute(&mut conn)
        .await
        .unwrap();
    let refusal = assert_refused(invariants::check(&b).await);
    assert!(
        refusal.contains("acquisition has none of its tables"),
        "{refusal}"
    );
    // Nothing was created by either.
    let (schemas,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.schemata \
         WHERE schema_name IN ('acquisition', 'credit', 'funding', 'reconciliation')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(schemas, 0, "the checker created schemas");
    assert!(listing(&dir.0).is_empty());
    conn.close().await.ok();
    colend_testkit::drop_database(&url).await;
}

/// `colend up` in a process of its own.
struct Mesh {
    child: tokio::process::Child,
    endpoint: String,
    backends: Backends,
    _logs: TempDir,
}

impl Mesh {
    async fn start(backend: Backend, data: &TempDir) -> Mesh {
        let backends = colend_testkit::backends(backend, data).await;
        let logs = TempDir::new();
        let port = colend_testkit::free_ports(1)[0];
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_colend"));
        cmd.args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&backends.data_dir)
            // This test process signs with the development key: name it.
            .env(
                "COLEND_AUTH_KEYS",
                format!("dev:{}", colend_platform::auth::DEV_AUTH_KEY),
            )
            .env("COLEND_CACHE_PREFIX", &backends.cache_prefix)
            .env("RUST_LOG", "warn")
            .env_remove("COLEND_METRICS_LISTEN")
            .stdout(std::fs::File::create(logs.0.join("up.out")).unwrap())
            .stderr(std::fs::File::create(logs.0.join("up.err")).unwrap())
            .kill_on_drop(true);
        for (var, value) in [
            ("DATABASE_URL", &backends.database_url),
            ("REDIS_URL", &backends.redis_url),
        ] {
            match value {
                Some(v) => cmd.env(var, v),
                None => cmd.env_remove(var),
            };
        }
        let child = cmd.spawn().expect("colend up starts");
        if let Err(e) = colend::health(&endpoint, Vec::new(), 60).await {
            let log = std::fs::read_to_string(logs.0.join("up.err")).unwrap_or_default();
            panic!("the mesh did not come up: {e}\n{log}");
        }
        Mesh {
            child,
            endpoint,
            backends,
            _logs: logs,
        }
    }

    /// SIGTERM, and waits for the process to end.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// Takes one more borrower to FUNDS_RESERVED (a live reservation) and
/// leaves it there; returns the application's id.
async fn reserve_one(m: &Mesh, partner: &str) -> String {
    let mut client = AcquisitionServiceClient::new(
        colend_platform::grpc::channel(&m.endpoint).expect("channel"),
    );
    let today = colend_platform::time::today();
    let good = colend::borrowers::generate(60, 4242, today)
        .into_iter()
        .enumerate()
        .filter(|(_, b)| b.plant == colend::borrowers::Plant::Good);
    for (i, b) in good.take(10) {
        let req = colend::demo::application(format!("check-{i}"), format!("risk-check-{i}"), &b);
        let app = client
            .submit_application(as_partner(partner, req))
            .await
            .expect("submits")
            .into_inner()
            .application
            .unwrap_or_default();
        for _ in 0..400 {
            let now = client
                .get_application(as_partner(
                    partner,
                    acq::GetApplicationRequest {
                        application_id: app.application_id.clone(),
                    },
                ))
                .await
                .expect("reads")
                .into_inner()
                .application
                .unwrap_or_default();
            match status_name(now.status).as_str() {
                "FUNDS_RESERVED" => return app.application_id,
                "SUBMITTED" | "KYC_PASSED" | "APPROVED" => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => break,
            }
        }
    }
    panic!("no borrower reached FUNDS_RESERVED");
}

/// Runs one statement against `service`'s storage, as someone with
/// database access would.
async fn plant(b: &Backends, service: &str, sql: &str, arg: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = match &b.database_url {
        Some(url) => {
            let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
            sqlx::query(&format!("SET search_path TO {service}"))
                .execute(&mut c)
                .await
                .unwrap();
            c
        }
        None => {
            let path: PathBuf = b.data_dir.join(format!("{service}.db"));
            let mut c = sqlx::AnyConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query("PRAGMA busy_timeout = 5000")
                .execute(&mut c)
                .await
                .unwrap();
            c
        }
    };
    let n = sqlx::query(sql)
        .bind(arg.to_string())
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    assert!(n > 0, "{sql} changed nothing");
    conn.close().await.ok();
}

/// What the library reports as violated.
async fn violated(b: &Backends) -> Vec<&'static str> {
    invariants::check(b)
        .await
        .expect("checks")
        .checks
        .iter()
        .filter(|c| !c.holds)
        .map(|c| c.name)
        .collect()
}

async fn healthy_then_corrupted(backend: Backend) {
    let data = TempDir::new();
    let mesh = Mesh::start(backend, &data).await;
    let partner = format!("check-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let sum = execute(&DemoArgs {
        endpoint: mesh.endpoint.clone(),
        kyc_endpoint: None,
        funding_endpoint: None,
        reconciliation_endpoint: None,
        applications: 12,
        json: true,
        partner: Some(partner.clone()),
        concurrency: 4,
        seed: Some(11),
        partner_share_bps: 3_000,
    })
    .await
    .expect("demo runs");
    assert_eq!(sum.errors, 0, "{:?}", sum.error_samples);
    assert!(sum.funded.loans > 0);
    let reserved = reserve_one(&mesh, &partner).await;
    let b = mesh.backends.clone();

    // Healthy, while the mesh runs.
    let (ok, out, err) = colend_check(&b, &["--wait-secs", "60"]).await;
    assert!(ok, "{out}{err}");
    let all = [
        names::JOURNEYS,
        names::SPLITS,
        names::REPAYMENTS,
        names::LEDGER,
        names::CAPACITY,
        names::DAILY,
        names::EXPOSURE,
        names::AGREE,
        names::PARKED,
        names::KEYS,
        names::RELAYED,
    ];
    for name in all {
        assert!(
            out.contains(&format!("holds    {name}: ")),
            "{name}:\n{out}"
        );
    }
    let report = invariants::check(&b).await.expect("checks");
    assert!(report.holds(), "{report}");
    assert_eq!(report.checks.len(), all.len());

    // Daily usage moved by hand.
    plant(
        &b,
        "funding",
        "UPDATE partner_daily_usage SET used = used + 1 WHERE partner_id = $1",
        &partner,
    )
    .await;
    let (ok, out, err) = colend_check(&b, &[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("VIOLATED {}: ", names::DAILY)),
        "{out}"
    );
    assert!(err.contains("1 invariant(s) violated"), "{err}");
    assert_eq!(violated(&b).await, vec![names::DAILY]);
    plant(
        &b,
        "funding",
        "UPDATE partner_daily_usage SET used = used - 1 WHERE partner_id = $1",
        &partner,
    )
    .await;
    assert!(violated(&b).await.is_empty());

    // A parked journey over its live reservation.
    plant(
        &b,
        "acquisition",
        "UPDATE applications SET status = 'PARKED', reason_codes = 'PLANTED' WHERE application_id = $1",
        &reserved,
    )
    .await;
    let (ok, out, _) = colend_check(&b, &["--json"]).await;
    assert!(!ok, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    let parked = json["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == names::PARKED))
        .expect("the parked check");
    assert_eq!(parked["holds"], false, "{out}");
    assert!(
        parked["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&reserved) && d.contains("still RESERVED")),
        "{out}"
    );
    assert_eq!(violated(&b).await, vec![names::PARKED]);
    plant(
        &b,
        "acquisition",
        "UPDATE applications SET status = 'FUNDS_RESERVED', reason_codes = '' WHERE application_id = $1",
        &reserved,
    )
    .await;
    mesh.stop().await;

    // The mesh stopped: its files are read as they are, and nothing is added.
    let before = listing(&data.0);
    let (ok, out, err) = colend_check(&b, &[]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(listing(&data.0), before, "the checker left files behind");
    match &b.database_url {
        Some(url) => colend_testkit::drop_database(url).await,
        None => {
            // Files no service has open (their logs checkpointed away) are
            // read as they are: no `-wal` or `-shm` file appears beside them.
            let quiet = TempDir::new();
            for svc in colend::SERVICES {
                let path = data.0.join(format!("{svc}.db"));
                let mut c = sqlx::AnyConnection::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut c)
                    .await
                    .unwrap();
                c.close().await.ok();
                std::fs::copy(&path, quiet.0.join(format!("{svc}.db"))).unwrap();
            }
            let before = listing(&quiet.0);
            assert_eq!(before.len(), colend::SERVICES.len());
            let (ok, out, err) = colend_check(&embedded(&quiet.0), &[]).await;
            assert!(ok, "{out}{err}");
            assert_eq!(listing(&quiet.0), before, "the checker left files behind");
        }
    }
}

#[tokio::test]
async fn holds_on_a_healthy_mesh_and_names_planted_corruption_on_sqlite() {
    healthy_then_corrupted(Backend::Embedded).await;
}

#[tokio::test]
async fn holds_on_a_healthy_mesh_and_names_planted_corruption_on_postgres() {
    healthy_then_corrupted(Backend::Production).await;
}
