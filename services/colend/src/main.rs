//! `colend up | serve | demo | recon | health | migrate | check | outbox | …`.
use clap::{Parser, Subcommand};
use colend_platform::config::Backends;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "colend",
    version,
    about = "Bank–fintech joint lending: the colend gRPC mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs all five services in one process on one address. Embedded
    /// (SQLite files and an in-process cache) unless DATABASE_URL and
    /// REDIS_URL are set.
    Up {
        /// Address where all five services, health and reflection answer.
        #[arg(long, env = "COLEND_LISTEN", default_value = "127.0.0.1:50051")]
        listen: String,
        /// Directory of the SQLite files in embedded mode.
        #[arg(long, env = "COLEND_DATA_DIR", default_value = "./colend-data")]
        data_dir: PathBuf,
    },
    /// Runs one service (what a Kubernetes pod runs). The other services'
    /// addresses come from COLEND_<SERVICE>_URL.
    Serve {
        /// acquisition, kyc, credit, funding or reconciliation.
        service: String,
        #[arg(long, env = "COLEND_LISTEN", default_value = "0.0.0.0:50051")]
        listen: String,
        #[arg(long, env = "COLEND_DATA_DIR", default_value = "./colend-data")]
        data_dir: PathBuf,
    },
    /// Runs a service's database migrations and exits (a Kubernetes migration
    /// Job; the pods then run with COLEND_MIGRATE_ON_START=false).
    Migrate {
        /// acquisition, kyc, credit, funding, reconciliation, or all.
        service: String,
        #[arg(long, env = "COLEND_DATA_DIR", default_value = "./colend-data")]
        data_dir: PathBuf,
    },
    /// Asks grpc.health.v1 whether services answer SERVING; exits non-zero if not.
    Health {
        /// Address to ask.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        endpoint: String,
        /// Fully qualified service names (default: all five).
        #[arg(long)]
        service: Vec<String>,
        /// Keep asking for up to this many seconds until every service is SERVING.
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
    },
    /// Acts as a partner and as the bank core against a running mesh: takes
    /// generated borrowers through the whole journey and prints a summary.
    Demo(colend::demo::DemoArgs),
    /// Reconciles a day's files, exports breaks and settlement lines,
    /// resolves breaks, generates test files.
    #[command(subcommand)]
    Recon(colend::recon::ReconCommand),
    /// As the bank core: accrues every disbursed loan's interest, fees and
    /// penalty through a business date and posts them to each funder's
    /// ledger (FundingService/AccrueInterest; funding also runs it itself
    /// each business day).
    Accrue(colend::accrue::AccrueArgs),
    /// Load harness: drives the whole journey at a fixed rate or at maximum
    /// and reports throughput and latency beside a no-op call's ceiling.
    Bench(colend::bench::BenchArgs),
    /// Issues credentials: bearer tokens signed with COLEND_AUTH_KEYS (or,
    /// when unset, the development key `colend up` uses).
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Verifies the audit log's hash chain of a service (or all); exits
    /// non-zero and names the first tampered row when one does not hold.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// A service's outbox: lists pending events and dead letters, retries
    /// or drops a dead letter (recorded in the service's audit log).
    Outbox(colend::outbox::OutboxArgs),
    /// Checks the money and journey invariants against the services'
    /// storage (DATABASE_URL, or the SQLite files in --data-dir), reading
    /// only: every journey ended or parked with a reason, splits sum to the
    /// principal, every repayment cent allocated once, ledger balanced,
    /// total and daily quota and C2/C3 exposure equal to what live loans
    /// hold, no parked journey holding a reservation, one effect per
    /// idempotency key. Exits non-zero on a violation, and refuses storage
    /// without the services' tables.
    Check {
        #[arg(long, env = "COLEND_DATA_DIR", default_value = "./colend-data")]
        data_dir: PathBuf,
        /// First wait up to this many seconds for journeys in flight and
        /// outboxes to settle.
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    Verify {
        /// acquisition, kyc, credit, funding, reconciliation, or all.
        service: String,
        #[arg(long, env = "COLEND_DATA_DIR", default_value = "./colend-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Prints a token for a partner, the bank core or an internal service.
    Issue {
        /// partner, bank or internal.
        #[arg(long)]
        class: String,
        /// The partner (required for a partner token).
        #[arg(long)]
        partner_id: Option<String>,
        /// Who holds it (a system or person), for logs.
        #[arg(long, default_value = "colend-credentials")]
        subject: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up { listen, data_dir } => {
            let _t = colend_platform::telemetry::init("colend");
            colend_platform::metrics::install_from_env()?;
            let mut backends = Backends::from_env();
            backends.data_dir = data_dir;
            colend_platform::auth::init(backends.database_url.is_some())?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            let storage = match &backends.database_url {
                Some(_) => "PostgreSQL (DATABASE_URL)".to_string(),
                None => format!("SQLite files in {}", backends.data_dir.display()),
            };
            let cache = if backends.redis_url.is_some() {
                "Redis (REDIS_URL)"
            } else {
                "in-process cache"
            };
            tracing::info!(address = %listener.local_addr()?, storage, cache, "colend mesh starting");
            let addr = listener.local_addr()?;
            let services = colend::build_mesh(&listener, backends).await?;
            eprintln!(
                "colend is up on {addr}: acquisition, kyc, credit, funding, reconciliation, health, reflection; {storage}; {cache}"
            );
            colend_platform::runner::serve_registered(
                listener,
                services,
                colend_platform::grpc::shutdown_signal(),
                colend_platform::runner::grace()?,
            )
            .await
        }
        Command::Serve {
            service,
            listen,
            data_dir,
        } => {
            let mut backends = Backends::from_env();
            backends.data_dir = data_dir;
            let name = service.clone();
            colend_platform::runner::run_single_with(
                &name,
                &listen,
                backends,
                move |mesh| async move { colend::register(&service, mesh).await },
            )
            .await
        }
        Command::Demo(args) => {
            // Quiet logs; traces go out when OTEL_EXPORTER_OTLP_ENDPOINT is set.
            let _t = colend_platform::telemetry::init("colend-demo");
            colend::demo::run(args).await
        }
        Command::Recon(cmd) => colend::recon::run(cmd).await,
        Command::Accrue(args) => colend::accrue::run(args).await,
        Command::Bench(args) => colend::bench::run(args).await,
        Command::Audit {
            command: AuditCommand::Verify { service, data_dir },
        } => {
            let mut backends = Backends::from_env();
            backends.data_dir = data_dir;
            for line in colend::audit_verify(&service, &backends).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Credentials(CredentialsCommand::Issue {
            class,
            partner_id,
            subject,
            ttl_secs,
        }) => {
            use colend_platform::auth::{Authority, Class};
            let class = Class::parse(&class)
                .ok_or_else(|| anyhow::anyhow!("--class must be partner, bank or internal"))?;
            anyhow::ensure!(
                class != Class::Partner
                    || partner_id
                        .as_deref()
                        .is_some_and(colend_platform::caller::valid_partner_id),
                "a partner token needs --partner-id (1 to 64 letters, digits, '-' or '_')"
            );
            anyhow::ensure!(
                (1..=30 * 86_400).contains(&ttl_secs),
                "--ttl-secs must be 1 to 2592000"
            );
            anyhow::ensure!(!subject.contains('|'), "--subject must not contain '|'");
            let a = Authority::from_env()?;
            if a.is_development() {
                eprintln!("note: signed with the development key (COLEND_AUTH_KEYS is not set)");
            }
            println!(
                "{}",
                a.issue_for(class, partner_id.as_deref(), &subject, ttl_secs)
            );
            Ok(())
        }
        Command::Check {
            data_dir,
            wait_secs,
            json,
        } => {
            let mut backends = Backends::from_env();
            backends.data_dir = data_dir;
            if wait_secs > 0 && !colend::invariants::settle(&backends, wait_secs).await? {
                eprintln!("journeys still in flight after {wait_secs} s");
            }
            let report = colend::invariants::check(&backends).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            anyhow::ensure!(
                report.holds(),
                "{} invariant(s) violated",
                report.violations().len()
            );
            Ok(())
        }
        Command::Outbox(args) => {
            for line in colend::outbox::run(args.command).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Migrate { service, data_dir } => {
            let _t = colend_platform::telemetry::init("colend-migrate");
            let mut backends = Backends::from_env();
            backends.data_dir = data_dir;
            colend::migrate(&service, &backends).await
        }
        Command::Health {
            endpoint,
            service,
            wait_secs,
        } => colend::health(&endpoint, service, wait_secs).await,
    }
}
