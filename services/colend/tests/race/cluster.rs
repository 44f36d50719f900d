//! The meshes the concurrency suite races against.
//!
//! - [`Cluster`]: the production layout, each service its own `colend serve`
//!   process on one fresh PostgreSQL database and Redis, with two replicas
//!   each of acquisition and funding (`acquisition-1`/`-2`, `funding-1`/`-2`)
//!   and one each of kyc, credit and reconciliation. Replica `n` of
//!   acquisition calls replica `n` of funding and the other way round.
//! - [`Embedded`]: `colend up` on SQLite, one process.
use colend_platform::config::Backends;
use colend_testkit::TempDir;
use std::collections::BTreeMap;
use tokio::process::{Child, Command};

/// The `colend` binary the processes run (`COLEND_RACE_BIN`, to race an
/// older build; this crate's own by default).
pub fn binary() -> String {
    std::env::var("COLEND_RACE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_colend").to_string())
}

/// The reservations' lifetime, seconds, where the suite races their expiry
/// (scenario 1: both funding replicas, and `colend up`); the sweepers run
/// every second.
pub const SHORT_TTL_SECS: &str = "8";

/// Environment every process gets: partner rate limits and borrower
/// velocity lifted (the suite sends bursts on purpose), quick sweepers.
const COMMON: [(&str, &str); 8] = [
    ("COLEND_PARTNER_RATE_LIMIT", "100000"),
    ("COLEND_PARTNER_RATE_BURST", "100000"),
    ("COLEND_BORROWER_DAILY_APPLICATIONS", "100000"),
    ("COLEND_JOURNEY_SWEEP_MS", "500"),
    ("COLEND_FUNDING_SWEEP_SECS", "1"),
    ("COLEND_SHUTDOWN_GRACE_MS", "2000"),
    ("COLEND_CALL_TIMEOUT_MS", "10000"),
    ("RUST_LOG", "error"),
];

struct Instance {
    service: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

pub struct Cluster {
    pub database_url: String,
    pub redis_url: String,
    prefix: String,
    pub dir: TempDir,
    instances: BTreeMap<&'static str, Instance>,
}

pub const INSTANCES: [(&str, &str); 7] = [
    ("acquisition-1", "acquisition"),
    ("acquisition-2", "acquisition"),
    ("funding-1", "funding"),
    ("funding-2", "funding"),
    ("kyc", "kyc"),
    ("credit", "credit"),
    ("reconciliation", "reconciliation"),
];

impl Cluster {
    /// A fresh database and ports; `extra` environment per instance.
    pub async fn new(extra: &[(&'static str, &str, &str)]) -> Cluster {
        let redis_url = colend_testkit::require_redis().await;
        let database_url = colend_testkit::fresh_postgres().await;
        let ports = colend_testkit::free_ports(INSTANCES.len());
        let instances = INSTANCES
            .iter()
            .zip(ports)
            .map(|((name, service), port)| {
                let env = extra
                    .iter()
                    .filter(|(n, _, _)| n == name)
                    .map(|(_, k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (
                    *name,
                    Instance {
                        service,
                        port,
                        env,
                        child: None,
                    },
                )
            })
            .collect();
        Cluster {
            database_url,
            redis_url,
            prefix: format!("colend-race-{}:", uuid::Uuid::new_v4().simple()),
            dir: TempDir::new(),
            instances,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.instances[name].port)
    }

    pub fn port(&self, name: &str) -> u16 {
        self.instances[name].port
    }

    pub fn backends(&self) -> Backends {
        Backends {
            database_url: Some(self.database_url.clone()),
            redis_url: Some(self.redis_url.clone()),
            data_dir: self.dir.0.clone(),
            cache_prefix: self.prefix.clone(),
        }
    }

    /// Where instance `name` reaches `service`: the same-numbered replica.
    fn peer(&self, name: &str, service: &str) -> String {
        let n = name.rsplit_once('-').map(|(_, n)| n).unwrap_or("1");
        let wanted = format!("{service}-{n}");
        if self.instances.contains_key(wanted.as_str()) {
            return self.url(&wanted);
        }
        let first = format!("{service}-1");
        if self.instances.contains_key(first.as_str()) {
            return self.url(&first);
        }
        self.url(service)
    }

    fn spawn(&mut self, name: &'static str) {
        let mut cmd = Command::new(binary());
        let inst = &self.instances[name];
        cmd.args([
            "serve",
            inst.service,
            "--listen",
            &format!("127.0.0.1:{}", inst.port),
        ])
        .env("DATABASE_URL", &self.database_url)
        .env("REDIS_URL", &self.redis_url)
        .env(
            "COLEND_AUTH_KEYS",
            format!("dev:{}", colend_platform::auth::DEV_AUTH_KEY),
        )
        .env("COLEND_CACHE_PREFIX", &self.prefix)
        .env("COLEND_DATA_DIR", &self.dir.0)
        .env("COLEND_INSTANCE_ID", format!("race-{name}"))
        .env(
            "COLEND_DB_MAX_CONNECTIONS",
            if matches!(inst.service, "acquisition" | "funding") {
                "10"
            } else {
                "4"
            },
        )
        .env_remove("COLEND_CRASH_AT")
        .env_remove("COLEND_PAUSE_AT")
        .stdout(std::fs::File::create(self.dir.0.join(format!("{name}.out"))).expect("log file"))
        .stderr(std::fs::File::create(self.dir.0.join(format!("{name}.err"))).expect("log file"))
        .kill_on_drop(true);
        for (k, v) in COMMON {
            cmd.env(k, v);
        }
        for svc in colend::SERVICES {
            cmd.env(
                format!("COLEND_{}_URL", svc.to_uppercase()),
                self.peer(name, svc),
            );
        }
        for (k, v) in &inst.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("colend serve starts");
        if let Some(i) = self.instances.get_mut(name) {
            i.child = Some(child);
        }
    }

    async fn healthy(&self, name: &str) {
        let svc = self.instances[name].service;
        let grpc = colend::SERVICE_NAMES[colend::SERVICES
            .iter()
            .position(|s| *s == svc)
            .expect("a service")];
        colend::health(&self.url(name), vec![grpc.to_string()], 60)
            .await
            .unwrap_or_else(|e| panic!("{name} did not become SERVING: {e}"));
    }

    /// Starts every instance: the first replica of each service (which
    /// migrates the database), then the second ones.
    pub async fn start(mut self) -> Cluster {
        let (first, second): (Vec<&'static str>, Vec<&'static str>) = INSTANCES
            .iter()
            .map(|(n, _)| *n)
            .partition(|n| !n.ends_with("-2"));
        for wave in [first, second] {
            for name in &wave {
                self.spawn(name);
            }
            for name in &wave {
                self.healthy(name).await;
            }
        }
        self
    }

    /// Stops `name` (SIGKILL) and starts it again with `env` added to its
    /// own, or (`None`) with its own only.
    pub async fn restart(&mut self, name: &'static str, env: &[(&str, &str)]) {
        if let Some(mut c) = self.instances.get_mut(name).and_then(|i| i.child.take()) {
            c.start_kill().ok();
            let _ = c.wait().await;
        }
        let saved = self.instances[name].env.clone();
        if let Some(i) = self.instances.get_mut(name) {
            i.env
                .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        self.spawn(name);
        if let Some(i) = self.instances.get_mut(name) {
            i.env = saved;
        }
        self.healthy(name).await;
    }

    /// Sends a signal (STOP, CONT) to an instance.
    pub fn signal(&self, name: &str, sig: &str) {
        let pid = self.instances[name]
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("running");
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {name}");
    }

    /// Stops every process and drops the database.
    pub async fn stop(mut self) {
        for i in self.instances.values_mut() {
            if let Some(mut c) = i.child.take() {
                c.start_kill().ok();
                let _ = c.wait().await;
            }
        }
        colend_testkit::drop_database(&self.database_url).await;
    }
}

/// `colend up` on SQLite: the whole mesh in one process.
pub struct Embedded {
    pub url: String,
    pub dir: TempDir,
    child: Option<Child>,
}

impl Embedded {
    pub async fn start() -> Embedded {
        let dir = TempDir::new();
        let port = colend_testkit::free_ports(1)[0];
        let mut cmd = Command::new(binary());
        cmd.args([
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &dir.0.display().to_string(),
        ])
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env(
            "COLEND_AUTH_KEYS",
            format!("dev:{}", colend_platform::auth::DEV_AUTH_KEY),
        )
        .env("COLEND_FUNDING_RESERVATION_TTL_SECS", SHORT_TTL_SECS)
        .env_remove("COLEND_CRASH_AT")
        .env_remove("COLEND_PAUSE_AT")
        .stdout(std::fs::File::create(dir.0.join("up.out")).expect("log file"))
        .stderr(std::fs::File::create(dir.0.join("up.err")).expect("log file"))
        .kill_on_drop(true);
        for (k, v) in COMMON {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("colend up starts");
        let url = format!("http://127.0.0.1:{port}");
        colend::health(&url, Vec::new(), 60)
            .await
            .expect("colend up becomes SERVING");
        Embedded {
            url,
            dir,
            child: Some(child),
        }
    }

    pub fn backends(&self) -> Backends {
        Backends {
            database_url: None,
            redis_url: None,
            data_dir: self.dir.0.clone(),
            cache_prefix: "colend:".into(),
        }
    }

    pub async fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().ok();
            let _ = c.wait().await;
        }
    }
}
