//! The fault suite: the five services as separate processes on PostgreSQL
//! and Redis, with faults injected while `colend demo` drives loans through
//! the whole journey. After every scenario the invariant checker
//! (`colend check`) must hold, and where the scenario lets every loan
//! through, the demo's money totals must equal those of a run without the
//! fault. The report of the run is written to `reliability.md` in the
//! target's test directory (and to `$COLEND_RELIABILITY_REPORT` when set;
//! `tests/reliability.md` is such a report).
use colend::demo::{DemoArgs, Summary, execute};
use colend::invariants;
use colend_contracts::acquisition::v1 as acq;
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_contracts::common::v1::Money;
use colend_contracts::funding::v1 as fund;
use colend_contracts::funding::v1::funding_service_client::FundingServiceClient;
use colend_platform::config::Backends;
use colend_testkit::proxy::{FaultProxy, Mode};
use colend_testkit::{TempDir, as_bank, as_partner, reason};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Applications of each demo run.
const APPS: usize = 24;
const SEED: u64 = 7;

/// The five services as processes.
struct Cluster {
    database_url: String,
    redis_url: String,
    prefix: String,
    dir: TempDir,
    ports: HashMap<&'static str, u16>,
    /// Where acquisition reaches funding (funding's port, or a proxy).
    acquisition_to_funding: Option<String>,
    env: HashMap<&'static str, Vec<(String, String)>>,
    children: HashMap<&'static str, Child>,
}

impl Cluster {
    fn new(database_url: String, redis_url: String) -> Cluster {
        let ports = colend::SERVICES
            .iter()
            .copied()
            .zip(colend_testkit::free_ports(colend::SERVICES.len()))
            .collect();
        Cluster {
            database_url,
            redis_url,
            prefix: format!("colend-faults-{}:", uuid::Uuid::new_v4().simple()),
            dir: TempDir::new(),
            ports,
            acquisition_to_funding: None,
            env: HashMap::new(),
            children: HashMap::new(),
        }
    }

    fn url(&self, svc: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[svc])
    }

    fn with_env(mut self, svc: &'static str, k: &str, v: &str) -> Self {
        self.env
            .entry(svc)
            .or_default()
            .push((k.to_string(), v.to_string()));
        self
    }

    fn backends(&self) -> Backends {
        Backends {
            database_url: Some(self.database_url.clone()),
            redis_url: Some(self.redis_url.clone()),
            data_dir: self.dir.0.clone(),
            cache_prefix: self.prefix.clone(),
        }
    }

    /// Starts `svc`, with its extra environment unless `plain`.
    fn spawn(&mut self, svc: &'static str, plain: bool) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_colend"));
        cmd.args([
            "serve",
            svc,
            "--listen",
            &format!("127.0.0.1:{}", self.ports[svc]),
        ])
        .env("DATABASE_URL", &self.database_url)
        .env("REDIS_URL", &self.redis_url)
        .env(
            "COLEND_AUTH_KEYS",
            format!("dev:{}", colend_platform::auth::DEV_AUTH_KEY),
        )
        .env("COLEND_CACHE_PREFIX", &self.prefix)
        .env("COLEND_DATA_DIR", &self.dir.0)
        .env("COLEND_INSTANCE_ID", format!("faults-{svc}"))
        .env("COLEND_JOURNEY_SWEEP_MS", "500")
        .env("COLEND_SHUTDOWN_GRACE_MS", "2000")
        .env("RUST_LOG", "error")
        .env_remove("COLEND_CRASH_AT")
        .env_remove("COLEND_PAUSE_AT")
        .kill_on_drop(true);
        for other in colend::SERVICES {
            cmd.env(
                format!("COLEND_{}_URL", other.to_uppercase()),
                self.url(other),
            );
        }
        if svc == "acquisition"
            && let Some(u) = &self.acquisition_to_funding
        {
            cmd.env("COLEND_FUNDING_URL", u);
        }
        if !plain {
            for (k, v) in self.env.get(svc).into_iter().flatten() {
                cmd.env(k, v);
            }
        }
        self.children
            .insert(svc, cmd.spawn().expect("colend serve starts"));
    }

    async fn healthy(&self, svc: &str) {
        let name = colend::SERVICE_NAMES[colend::SERVICES.iter().position(|s| *s == svc).unwrap()];
        colend::health(&self.url(svc), vec![name.to_string()], 60)
            .await
            .expect("service becomes SERVING");
    }

    async fn start(mut self) -> Cluster {
        for svc in colend::SERVICES {
            self.spawn(svc, false);
        }
        for svc in colend::SERVICES {
            self.healthy(svc).await;
        }
        self
    }

    /// kill -9, and wait for the process to be gone.
    async fn kill(&mut self, svc: &'static str) {
        let mut child = self.children.remove(svc).expect("running");
        child.start_kill().ok();
        let status = child.wait().await.expect("waits");
        assert_eq!(status.signal(), Some(9), "{svc} was killed by SIGKILL");
    }

    /// Waits for `svc` to kill itself at its crash point; returns after how long.
    async fn crashed(&mut self, svc: &'static str, within: Duration) -> Duration {
        let started = Instant::now();
        let child = self.children.get_mut(svc).expect("running");
        let status = tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{svc} did not reach its crash point within {within:?}"))
            .expect("waits");
        assert_eq!(status.signal(), Some(9), "{svc} died by SIGKILL");
        self.children.remove(svc);
        started.elapsed()
    }

    async fn restart(&mut self, svc: &'static str) {
        self.spawn(svc, true);
        self.healthy(svc).await;
    }

    fn demo_args(&self, applications: usize) -> DemoArgs {
        DemoArgs {
            endpoint: self.url("acquisition"),
            kyc_endpoint: Some(self.url("kyc")),
            funding_endpoint: Some(self.url("funding")),
            reconciliation_endpoint: Some(self.url("reconciliation")),
            applications,
            json: true,
            partner: None,
            concurrency: 6,
            seed: Some(SEED),
            partner_share_bps: 3_000,
        }
    }

    /// Runs the demo in the background.
    fn demo(&self, applications: usize) -> tokio::task::JoinHandle<Summary> {
        let args = self.demo_args(applications);
        tokio::spawn(async move { execute(&args).await.expect("the demo runs to its end") })
    }

    async fn pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .expect("connects")
    }

    /// Waits until funding holds at least `n` loans: the demo is mid-flight.
    async fn loans_at_least(&self, n: i64) {
        let pool = self.pool().await;
        for _ in 0..600 {
            let (k,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM funding.loans")
                .fetch_one(&pool)
                .await
                .unwrap_or((0,));
            if k >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("funding never held {n} loans");
    }

    /// Settles and checks every invariant; panics with the report on a violation.
    async fn invariants(&self) -> invariants::Report {
        let settled = invariants::settle(&self.backends(), 60)
            .await
            .expect("reads");
        let report = invariants::check(&self.backends()).await.expect("checks");
        assert!(
            settled && report.holds(),
            "invariants after the scenario:\n{report}"
        );
        report
    }

    fn acquisition(&self) -> AcquisitionServiceClient<tonic::transport::Channel> {
        AcquisitionServiceClient::new(
            colend_platform::grpc::channel(&self.url("acquisition")).unwrap(),
        )
    }

    fn funding(&self) -> FundingServiceClient<tonic::transport::Channel> {
        FundingServiceClient::new(colend_platform::grpc::channel(&self.url("funding")).unwrap())
    }
}

/// The figures a fault must not change.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Totals {
    outcomes: Vec<(String, u64)>,
    loans: u64,
    principal: i64,
    bank: i64,
    partner: i64,
    first_repayments: i64,
    recon_breaks: i64,
    ledger_breaks: i64,
    settlement: i64,
}

fn totals(s: &Summary) -> Totals {
    assert_eq!(s.errors, 0, "demo errors: {:?}", s.error_samples);
    assert!(
        s.invariant_violations.is_empty(),
        "{:?}",
        s.invariant_violations
    );
    Totals {
        outcomes: s.outcomes.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        loans: s.funded.loans,
        principal: s.funded.principal_minor,
        bank: s.funded.bank_minor,
        partner: s.funded.partner_minor,
        first_repayments: s.funded.first_repayments_minor,
        recon_breaks: s.reconciliation.breaks,
        ledger_breaks: s.reconciliation.ledger_breaks,
        settlement: s.reconciliation.partner_owes_bank_minor,
    }
}

fn describe(t: &Totals) -> String {
    format!(
        "{} loans, principal {} = bank {} + partner {}, first repayments {}, {} reconciliation breaks ({} against the ledger), partner owes bank {}",
        t.loans,
        colend_core::money::format_minor(t.principal),
        colend_core::money::format_minor(t.bank),
        colend_core::money::format_minor(t.partner),
        colend_core::money::format_minor(t.first_repayments),
        t.recon_breaks,
        t.ledger_breaks,
        colend_core::money::format_minor(t.settlement),
    )
}

struct Row {
    scenario: String,
    injected: String,
    held: String,
    invariants: invariants::Report,
    seconds: f64,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        scenario: &str,
        injected: &str,
        held: String,
        inv: invariants::Report,
        started: Instant,
    ) {
        eprintln!("[faults] {scenario}: {held}");
        self.rows.push(Row {
            scenario: scenario.into(),
            injected: injected.into(),
            held,
            invariants: inv,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    fn markdown(&self, baseline: &Totals) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Reliability: what the fault suite injects and what held\n\n\
             Produced by `cargo test -p colend --test faults` (part of the README's test command; \
             CI prints it). The five services run as separate `colend serve` processes on \
             PostgreSQL and Redis; `colend demo` drives {APPS} generated borrowers (seed {SEED}) \
             through submission, KYC, the bank's decision, funding, disbursement, a first \
             repayment and a three-way reconciliation while each fault is injected.\n\n\
             The run without any fault: {}.\n\n\
             After every scenario the invariant checker (`colend check`) verified, against every \
             service's own tables: every journey ended (completed, compensated or parked with a \
             reason); bank share + partner share = principal for every loan; every repayment cent \
             allocated exactly once; ledger trial balance zero; total quota, daily quota and the \
             bank's C2/C3 exposure each equal to what the live loans hold; acquisition and funding \
             agree on every funded journey; no parked or closed journey holds a live reservation; \
             exactly one effect per idempotency key; outboxes relayed, no dead letters; every \
             audit chain intact.\n",
            describe(baseline)
        );
        let _ = writeln!(
            s,
            "| # | scenario | injected | what held | invariants | s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for (i, r) in self.rows.iter().enumerate() {
            let inv = format!(
                "{}/{} hold",
                r.invariants.checks.iter().filter(|c| c.holds).count(),
                r.invariants.checks.len()
            );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.1} |",
                i + 1,
                r.scenario,
                r.injected,
                r.held,
                inv,
                r.seconds
            );
        }
        let _ = writeln!(s, "\n## Invariant detail per scenario\n");
        for (i, r) in self.rows.iter().enumerate() {
            let _ = writeln!(s, "{}. **{}**", i + 1, r.scenario);
            for c in &r.invariants.checks {
                let _ = writeln!(
                    s,
                    "   - {} {}: {}",
                    if c.holds { "✓" } else { "✗" },
                    c.name,
                    c.detail
                );
            }
        }
        s
    }
}

fn money(minor: i64) -> Option<Money> {
    Some(Money {
        minor_units: minor,
        currency_code: "CNY".into(),
    })
}

/// A private PostgreSQL server on a loopback port, for the restart scenario.
struct PrivatePostgres {
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn bin(tool: &str) -> String {
        let root = std::path::Path::new("/usr/lib/postgresql");
        let mut versions: Vec<_> = std::fs::read_dir(root)
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path())
            .collect();
        versions.sort();
        versions
            .last()
            .expect("a PostgreSQL version")
            .join("bin")
            .join(tool)
            .display()
            .to_string()
    }

    /// Runs a PostgreSQL tool as the postgres user (it refuses to run as root).
    fn run(args: &[&str]) -> std::process::Output {
        let as_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let out = if as_root {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
        } else {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
        };
        out.expect("runs a PostgreSQL tool")
    }

    fn start() -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("colend-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres", &dir.display().to_string()])
            .status();
        let port = colend_testkit::free_ports(1)[0];
        let data = dir.join("data").display().to_string();
        let out = Self::run(&[
            &Self::bin("initdb"),
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PrivatePostgres { dir, port };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.join("data").display().to_string();
        let log = self.dir.join("log").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let mut args = vec![
            Self::bin("pg_ctl"),
            "-D".into(),
            data,
            "-l".into(),
            log,
            "-w".into(),
        ];
        if action != "stop" {
            args.push("-o".into());
            args.push(opts);
        }
        if action != "start" {
            args.push("-m".into());
            args.push("fast".into());
        }
        args.push(action.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = Self::run(&refs);
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis server on a loopback port, for the stop/start scenario.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: colend_testkit::free_ports(1)[0],
            child: None,
        };
        r.up();
        r
    }

    fn up(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not listen");
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}

async fn status_of(c: &Cluster, partner: &str, id: &str) -> acq::Application {
    c.acquisition()
        .get_application(as_partner(
            partner,
            acq::GetApplicationRequest {
                application_id: id.into(),
            },
        ))
        .await
        .expect("reads the application")
        .into_inner()
        .application
        .unwrap()
}

async fn wait_status(c: &Cluster, partner: &str, id: &str, want: &[&str]) -> acq::Application {
    for _ in 0..600 {
        let a = status_of(c, partner, id).await;
        if want.contains(&colend::demo::status_name(a.status).as_str()) {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never reached {want:?}");
}

async fn submit(
    c: &Cluster,
    partner: &str,
    tag: &str,
    b: &colend::borrowers::Borrower,
) -> acq::Application {
    c.acquisition()
        .submit_application(as_partner(
            partner,
            colend::demo::application(format!("faults-{tag}"), format!("ref-{tag}"), b),
        ))
        .await
        .expect("submits")
        .into_inner()
        .application
        .unwrap()
}

async fn resume(c: &Cluster, id: &str, action: acq::ResumeAction, why: &str) -> acq::Application {
    c.acquisition()
        .resume_application(as_bank(acq::ResumeApplicationRequest {
            request_id: format!("resume-{id}-{}-{}", action as i32, why.replace(' ', "_")),
            application_id: id.into(),
            action: action as i32,
            operator: "ops.wang".into(),
            reason: why.into(),
        }))
        .await
        .expect("resumes")
        .into_inner()
        .application
        .unwrap()
}

/// Ends a network fault: open connections (whose byte streams the fault
/// cut mid-frame) are reset, new ones pass.
async fn heal(proxy: &FaultProxy) {
    proxy.set(Mode::Reset);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Mode::Pass(Duration::ZERO));
}

fn good_borrowers(n: usize, seed: u64) -> Vec<colend::borrowers::Borrower> {
    colend::borrowers::generate(n * 3, seed, colend_platform::time::today())
        .into_iter()
        .filter(|b| b.plant == colend::borrowers::Plant::Good)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite() {
    let redis_url = colend_testkit::require_redis().await;
    let mut report = Report::default();

    // 0. The run without a fault: the figures every later run must reproduce.
    let t = Instant::now();
    let c = Cluster::new(colend_testkit::fresh_postgres().await, redis_url.clone())
        .start()
        .await;
    let baseline = totals(&c.demo(APPS).await.unwrap());
    let inv = c.invariants().await;
    report.add(
        "baseline",
        "nothing",
        format!("demo: {}", describe(&baseline)),
        inv,
        t,
    );
    drop(c);

    // 1. kill -9 funding while the demo runs, then restart it.
    let t = Instant::now();
    let mut c = Cluster::new(colend_testkit::fresh_postgres().await, redis_url.clone())
        .start()
        .await;
    let demo = c.demo(APPS);
    c.loans_at_least(3).await;
    c.kill("funding").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.restart("funding").await;
    let got = totals(&demo.await.unwrap());
    assert_eq!(
        got, baseline,
        "the money totals are those of the run without the kill"
    );
    let inv = c.invariants().await;
    report.add(
        "kill -9 `colend serve funding` mid-demo, restart it",
        "SIGKILL to funding after its 3rd loan; restarted 0.5 s later",
        "every application terminal; demo totals identical to the baseline; 0 demo errors".into(),
        inv,
        t,
    );
    drop(c);

    // 2. Crash points: the process kills itself at a precise step.
    for (svc, point, nth, what) in [
        (
            "acquisition",
            "acquisition.submit.after_commit",
            5,
            "after the application's commit, before the reply",
        ),
        (
            "acquisition",
            "acquisition.journey.after_downstream",
            8,
            "after a downstream step succeeded, before the local commit",
        ),
        (
            "acquisition",
            "acquisition.journey.after_commit",
            8,
            "after a step's commit, before the next step",
        ),
        (
            "acquisition",
            "acquisition.outbox.after_insert",
            4,
            "after status changes were committed to the outbox, before the relay",
        ),
        (
            "funding",
            "funding.reserve.after_commit",
            4,
            "after a reservation's commit, before the reply",
        ),
        (
            "funding",
            "funding.outbox.after_insert",
            4,
            "after a disbursement and its loan event were committed, before the relay",
        ),
    ] {
        let t = Instant::now();
        let mut c = Cluster::new(colend_testkit::fresh_postgres().await, redis_url.clone())
            .with_env(svc, "COLEND_CRASH_AT", &format!("{point}@{nth}"))
            .start()
            .await;
        let demo = c.demo(APPS);
        let after = c.crashed(svc, Duration::from_secs(90)).await;
        c.restart(svc).await;
        let got = totals(&demo.await.unwrap());
        assert_eq!(got, baseline, "{point}: totals unchanged by the crash");
        let inv = c.invariants().await;
        report.add(
            &format!("kill -9 {svc} at `{point}`"),
            &format!("{svc} SIGKILLs itself {what} (hit #{nth}, {:.1} s in); restarted", after.as_secs_f64()),
            "resumed from the stored state; replays answered from idempotency keys; demo totals identical to the baseline".into(),
            inv,
            t,
        );
    }

    // 3. PostgreSQL restarted under load.
    let t = Instant::now();
    let pg = PrivatePostgres::start();
    let c = Cluster::new(pg.url(), redis_url.clone()).start().await;
    let demo = c.demo(APPS);
    c.loans_at_least(3).await;
    let restart = Instant::now();
    pg.ctl("restart");
    let down = restart.elapsed();
    let got = totals(&demo.await.unwrap());
    assert_eq!(got, baseline, "totals unchanged by the database restart");
    let inv = c.invariants().await;
    report.add(
        "PostgreSQL restarted under load",
        &format!(
            "`pg_ctl restart -m fast` of the services' database mid-demo ({:.1} s)",
            down.as_secs_f64()
        ),
        "the services reconnected; what failed meanwhile (UNAVAILABLE) was retried with its request id; demo totals identical to the baseline".into(),
        inv,
        t,
    );
    drop(c);
    drop(pg);

    // 4. Redis stopped under load and brought back.
    let t = Instant::now();
    let mut redis = PrivateRedis::start();
    let c = Cluster::new(colend_testkit::fresh_postgres().await, redis.url())
        .start()
        .await;
    let demo = c.demo(APPS);
    c.loans_at_least(2).await;
    redis.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.up();
    let got = totals(&demo.await.unwrap());
    assert_eq!(got, baseline, "totals unchanged while the cache was away");
    let inv = c.invariants().await;
    report.add(
        "Redis stopped under load, brought back",
        "the cache server killed mid-demo, restarted 2 s later (empty)",
        "cache errors counted as misses, never failed a call; demo totals identical to the baseline".into(),
        inv,
        t,
    );
    drop(c);
    drop(redis);

    // 5. 100 concurrent duplicates, and key reuse with different content.
    let t = Instant::now();
    let c = Cluster::new(colend_testkit::fresh_postgres().await, redis_url.clone())
        .start()
        .await;
    let b = &good_borrowers(1, 4242)[0];
    let msg = colend::demo::application("dup-1".into(), "ref-dup-1".into(), b);
    let calls = (0..100).map(|_| {
        let mut client = c.acquisition();
        let m = msg.clone();
        async move {
            client
                .submit_application(as_partner("dup-partner", m))
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut ids = std::collections::BTreeSet::new();
    let mut aborted = 0;
    for r in &results {
        match r {
            Ok(ok) => {
                ids.insert(
                    ok.get_ref()
                        .application
                        .as_ref()
                        .unwrap()
                        .application_id
                        .clone(),
                );
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Aborted, "{s:?}");
                assert_eq!(reason(s), "REQUEST_IN_FLIGHT");
                aborted += 1;
            }
        }
    }
    // Retried, the aborted ones get the one application.
    let again = c
        .acquisition()
        .submit_application(as_partner("dup-partner", msg.clone()))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    ids.insert(again.application_id.clone());
    assert_eq!(ids.len(), 1, "one application for 100 duplicates: {ids:?}");
    let mut changed = msg.clone();
    changed.requested_amount = money(b.requested + 100);
    let e = c
        .acquisition()
        .submit_application(as_partner("dup-partner", changed))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&e), "IDEMPOTENCY_KEY_REUSED");
    let inv = c.invariants().await;
    assert_eq!(inv.applications.values().sum::<i64>(), 1);
    report.add(
        "100 concurrent duplicates; key reuse",
        "100 SubmitApplication calls at once with one request id; then the id with a changed amount",
        format!(
            "1 application; {} answered it at once, {aborted} got ABORTED REQUEST_IN_FLIGHT and got it on retry; reuse → FAILED_PRECONDITION IDEMPOTENCY_KEY_REUSED",
            100 - aborted
        ),
        inv,
        t,
    );
    drop(c);

    // 6. A fault proxy between acquisition and funding.
    for (label, injected) in [
        (
            "latency",
            "100 ms added to every chunk, both ways, for the whole demo",
        ),
        (
            "resets",
            "every connection reset (RST) for 1.5 s mid-demo, new ones refused",
        ),
    ] {
        let t = Instant::now();
        let mut c = Cluster::new(colend_testkit::fresh_postgres().await, redis_url.clone());
        let proxy = FaultProxy::start(c.ports["funding"]).await;
        c.acquisition_to_funding = Some(proxy.url());
        let c = c.start().await;
        if label == "latency" {
            proxy.set(Mode::Pass(Duration::from_millis(100)));
        }
        let demo = c.demo(APPS);
        if label == "resets" {
            c.loans_at_least(3).await;
            proxy.set(Mode::Reset);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            proxy.set(Mode::Pass(Duration::ZERO));
        }
        let got = totals(&demo.await.unwrap());
        assert_eq!(got, baseline, "{label}: totals unchanged");
        let inv = c.invariants().await;
        report.add(
            &format!("fault proxy acquisition → funding: {label}"),
            injected,
            format!(
                "journeys retried across {} connections; demo totals identical to the baseline",
                proxy.accepted.lock().unwrap()
            ),
            inv,
            t,
        );
    }

    // 7. A black hole: journeys park, then are retried or abandoned; a
    // reservation whose answer was lost is compensated.
    let t = Instant::now();
    let mut c = Cluster::new(colend_testkit::fresh_postgres().await, redis_url.clone());
    let proxy = FaultProxy::start(c.ports["funding"]).await;
    c.acquisition_to_funding = Some(proxy.url());
    let c = c
        .with_env("acquisition", "COLEND_CALL_TIMEOUT_MS", "700")
        .with_env("acquisition", "COLEND_JOURNEY_STEP_ATTEMPTS", "3")
        .with_env("acquisition", "COLEND_JOURNEY_BACKOFF_MS", "50")
        .with_env(
            "acquisition",
            "COLEND_PAUSE_AT",
            "acquisition.journey.before_funding:1500",
        )
        .start()
        .await;
    // The demo sets the partner up (agreement, whitelist) and runs a few loans.
    let setup = c.demo(4).await.unwrap();
    let partner = setup.partner_id.clone();
    let people = good_borrowers(3, 9090);
    proxy.set(Mode::BlackHole);
    let a1 = submit(&c, &partner, "bh-1", &people[0]).await;
    let a2 = submit(&c, &partner, "bh-2", &people[1]).await;
    let p1 = wait_status(&c, &partner, &a1.application_id, &["PARKED"]).await;
    let p2 = wait_status(&c, &partner, &a2.application_id, &["PARKED"]).await;
    assert_eq!(p1.reason_codes, vec!["DEPENDENCY_UNAVAILABLE".to_string()]);
    assert_eq!(p2.reason_codes, vec!["DEPENDENCY_UNAVAILABLE".to_string()]);
    // The bank's operators find them.
    let parked: Vec<String> = c
        .acquisition()
        .list_applications(as_bank(acq::ListApplicationsRequest {
            status: acq::ApplicationStatus::Parked as i32,
            ..Default::default()
        }))
        .await
        .expect("the bank lists parked journeys")
        .into_inner()
        .applications
        .into_iter()
        .map(|a| a.application_id)
        .collect();
    assert!(
        parked.contains(&a1.application_id) && parked.contains(&a2.application_id),
        "{parked:?}"
    );
    // The path heals: stale connections are cut, new ones pass.
    heal(&proxy).await;
    // The operator retries until the step goes through (a retry can meet a
    // connection still broken from the outage and park again).
    let mut done1 = None;
    for attempt in 1..=5 {
        let r1 = resume(
            &c,
            &a1.application_id,
            acq::ResumeAction::Retry,
            &format!("funding is back ({attempt})"),
        )
        .await;
        assert_ne!(colend::demo::status_name(r1.status), "PARKED");
        let d = wait_status(
            &c,
            &partner,
            &a1.application_id,
            &["FUNDS_RESERVED", "DECLINED", "FUNDING_REJECTED", "PARKED"],
        )
        .await;
        if colend::demo::status_name(d.status) != "PARKED" {
            done1 = Some(d);
            break;
        }
    }
    let done1 = done1.expect("the retried journey went through");
    let r2 = resume(
        &c,
        &a2.application_id,
        acq::ResumeAction::Abandon,
        "borrower withdrew",
    )
    .await;
    assert_eq!(colend::demo::status_name(r2.status), "FAILED");
    assert_eq!(r2.reason_codes, vec!["ABANDONED".to_string()]);
    // A reservation for the abandoned application still in flight (the
    // journey's own request id) is refused: no orphan can hold quota.
    let late = c
        .funding()
        .reserve_funding(colend_platform::grpc::request(
            fund::ReserveFundingRequest {
                request_id: format!("{}:funding", a2.application_id),
                application_id: a2.application_id.clone(),
                partner_id: partner.clone(),
                principal: money(10_000_000),
                term_months: 12,
                annual_rate_bps: 1_000,
                repayment_method: colend_contracts::common::v1::RepaymentMethod::EqualInstalment
                    as i32,
                borrower_key: "late".into(),
                annual_fee_bps: 0,
            },
            Duration::from_secs(10),
            Some(&partner),
        ))
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");
    assert_eq!(reason(&late), "INVALID_STATE");
    // The answer to a reservation is lost: funding reserved, acquisition never heard.
    let a3 = submit(&c, &partner, "bh-3", &people[2]).await;
    wait_status(&c, &partner, &a3.application_id, &["APPROVED"]).await;
    proxy.set(Mode::DropResponses);
    let p3 = wait_status(&c, &partner, &a3.application_id, &["PARKED"]).await;
    heal(&proxy).await;
    let pool = c.pool().await;
    let (live,): (String,) =
        sqlx::query_as("SELECT status FROM funding.loans WHERE application_id = $1")
            .bind(&a3.application_id)
            .fetch_one(&pool)
            .await
            .expect("funding made the reservation whose answer was lost");
    assert_eq!(live, "RESERVED");
    let r3 = resume(
        &c,
        &a3.application_id,
        acq::ResumeAction::Abandon,
        "reservation answer lost; closing",
    )
    .await;
    assert_eq!(colend::demo::status_name(r3.status), "FAILED");
    let (voided,): (String,) =
        sqlx::query_as("SELECT status FROM funding.loans WHERE application_id = $1")
            .bind(&a3.application_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(voided, "VOID", "the compensation voided the reservation");
    // (Funding's own "reservation released" event may be relayed before or after it.)
    let history = status_of(&c, &partner, &a3.application_id).await.history;
    assert!(
        history.iter().any(|h| h.detail.contains("voided")),
        "{:?}",
        history.iter().map(|h| &h.detail).collect::<Vec<_>>()
    );
    // Replaying the abandonment changes nothing.
    let again = resume(
        &c,
        &a3.application_id,
        acq::ResumeAction::Abandon,
        "reservation answer lost; closing",
    )
    .await;
    assert_eq!(again.history.len(), r3.history.len());
    let inv = c.invariants().await;
    report.add(
        "fault proxy acquisition → funding: black hole, lost answers",
        "black hole (nothing forwarded) with 700 ms call timeouts, 3 attempts; then answers dropped while a reservation is made",
        format!(
            "2 journeys PARKED at {} with DEPENDENCY_UNAVAILABLE, listed for the bank (ListApplications, status PARKED); RETRY → {}; ABANDON → FAILED (no reservation to void) and a late ReserveFunding for it refused (INVALID_STATE); the lost-answer journey PARKED at {}, ABANDON voided its live reservation ({} → VOID), quota restored; replayed ABANDON changed nothing",
            p1.history.iter().rev().nth(1).map(|e| colend::demo::status_name(e.status)).unwrap_or_default(),
            colend::demo::status_name(done1.status),
            p3.history.iter().rev().nth(1).map(|e| colend::demo::status_name(e.status)).unwrap_or_default(),
            live
        ),
        inv,
        t,
    );
    drop(c);

    // 8. Reservations racing for the last of a partner's quota.
    let t = Instant::now();
    let c = Cluster::new(colend_testkit::fresh_postgres().await, redis_url.clone())
        .start()
        .await;
    let setup = c.demo(2).await.unwrap();
    let partner = setup.partner_id.clone();
    let used_before = setup.funded.partner_minor;
    let quota = used_before + 450_000 * 100;
    c.funding()
        .upsert_agreement(as_bank(fund::UpsertAgreementRequest {
            request_id: format!("faults-quota-{partner}"),
            agreement: Some(fund::Agreement {
                partner_id: partner.clone(),
                partner_share_bps: 3_000,
                bank_rate_bps: 900,
                partner_rate_bps: 1_100,
                daily_quota: money(5_000_000_000 * 100),
                total_quota: money(quota),
                effective_from: "2026-01-01".into(),
                penalty_rate_bps: 1_800,
                fee_partner_share_bps: 5_000,
                ..Default::default()
            }),
        }))
        .await
        .expect("a small quota");
    let people = good_borrowers(30, 5151);
    let subs = people.iter().enumerate().map(|(i, b)| {
        let c = &c;
        let partner = partner.clone();
        async move { submit(c, &partner, &format!("race-{i}"), b).await }
    });
    let apps = futures::future::join_all(subs).await;
    let mut reserved = 0;
    let mut refused = Vec::new();
    for a in &apps {
        let done = wait_status(
            &c,
            &partner,
            &a.application_id,
            &[
                "FUNDS_RESERVED",
                "FUNDING_REJECTED",
                "DECLINED",
                "KYC_REJECTED",
                "PARKED",
            ],
        )
        .await;
        match colend::demo::status_name(done.status).as_str() {
            "FUNDS_RESERVED" => reserved += 1,
            "FUNDING_REJECTED" => {
                let approved = done
                    .decision
                    .as_ref()
                    .and_then(|d| d.approved_amount.clone())
                    .map(|m| m.minor_units)
                    .unwrap_or(0);
                refused.push((
                    done.reason_codes.clone(),
                    colend_funding::domain::split(approved, 3_000).partner,
                ));
            }
            _ => {}
        }
    }
    let pool = c.pool().await;
    let (used,): (i64,) =
        sqlx::query_as("SELECT used FROM funding.partner_usage WHERE partner_id = $1")
            .bind(&partner)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(used <= quota, "no overbooking: {used} <= {quota}");
    assert!(
        reserved > 0 && !refused.is_empty(),
        "the quota ran out: {reserved} reserved, {refused:?}"
    );
    for (codes, portion) in &refused {
        assert!(codes.iter().any(|c| c.contains("QUOTA")), "{codes:?}");
        assert!(
            *portion > quota - used,
            "a refused loan ({portion}) would not have fitted what is left ({})",
            quota - used
        );
    }
    let inv = c.invariants().await;
    report.add(
        "reservations racing for the last capacity",
        &format!("30 approved loans at once against {} of partner quota left", colend_core::money::format_minor(quota - used_before)),
        format!(
            "{reserved} reserved, {} refused on the quota; in use {} of {}; every refused loan was larger than what was left ({})",
            refused.len(),
            colend_core::money::format_minor(used),
            colend_core::money::format_minor(quota),
            colend_core::money::format_minor(quota - used)
        ),
        inv,
        t,
    );
    drop(c);

    let md = report.markdown(&baseline);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability.md");
    std::fs::write(&path, &md).unwrap();
    if let Ok(p) = std::env::var("COLEND_RELIABILITY_REPORT") {
        std::fs::write(p, &md).unwrap();
    }
    eprintln!("{md}");
}
