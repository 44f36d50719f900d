//! The concurrency suite: money races across replicas.
//!
//! On PostgreSQL the production layout runs as separate `colend serve`
//! processes: two replicas each of acquisition and funding, one each of kyc,
//! credit and reconciliation. The suite sends the competing calls of each
//! race at the same moment to different replicas, many times over, seeded:
//!
//! 1. disbursement vs release vs expiry on one freshly reserved loan (a
//!    third of them sent around the reservation's expiry: before it, after
//!    it, after its sweep; expiry must win most of those sent after the
//!    sweep);
//! 2. 2 to 4 repayments with different request ids on one disbursed loan
//!    (each below the payoff: every one must be accepted);
//! 3. one bank transaction reference under two request ids;
//! 4. compensation (ReleaseFunding by application) racing a reservation of
//!    the same application still queued in funding's group commit;
//! 5. a journey owner stalled (pause points before the funding step and
//!    before each step's commit, and SIGSTOP) until its lease is taken over
//!    (every journey's must be), then woken;
//! 6. RETRY racing ABANDON on a parked journey (most holding a live
//!    reservation);
//! 7. a reservation voided (released, expired) or disbursed under a journey
//!    parked holding it, then RETRY (before or at once); and under a journey
//!    whose owner holds the answer but has not committed it: the
//!    application must end agreeing with the loan.
//!
//! Scenarios 1 to 4 run again on SQLite (`colend up`, one process).
//!
//! After every scenario the invariant checker (`colend check`) must hold,
//! each funder's ledger (GetTrialBalance) must equal a sequential model of
//! the accepted operations (each repayment replayed, in a serial order,
//! through the pure servicing domain), and the partner's quota, daily usage
//! and the bank's C2/C3 exposure must equal what the live loans hold.
//!
//! `COLEND_RACE_ITERATIONS` sets the iterations of scenarios 1 to 4 on
//! PostgreSQL (default 200; scenarios 5 to 7 run a third of it, SQLite a
//! quarter); `COLEND_RACE_SEED` the seed (default: from the clock; printed
//! in the report and on failure); `COLEND_RACE_SCENARIOS` a subset (e.g.
//! "1,2"); `COLEND_RACE_BIN` another `colend` binary to race. The report
//! goes to `concurrency.md` (`concurrency-sqlite.md`) in the target's test
//! directory, and to `$COLEND_CONCURRENCY_REPORT` (`….sqlite`) when set.
//! PostgreSQL and Redis must be reachable: the PostgreSQL test fails, it
//! never skips, when they are not.
#[path = "race/cluster.rs"]
mod cluster;
#[path = "race/model.rs"]
mod model;

use chrono::NaiveDate;
use cluster::{Cluster, Embedded};
use colend_contracts::acquisition::v1 as acq;
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::funding::v1 as fund;
use colend_contracts::funding::v1::funding_service_client::FundingServiceClient;
use colend_platform::config::Backends;
use colend_platform::time::format_date;
use colend_testkit::proxy::{FaultProxy, Mode};
use colend_testkit::{as_bank, as_partner, reason};
use model::{Ledger, LoanModel, minor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Today in funding's business zone (the default profile's, Asia/Shanghai,
/// unless the environment names another): the value date of disbursements
/// and repayments.
fn today() -> NaiveDate {
    colend_platform::time::business_today(
        colend_funding::app::time_zone_from_env().expect("funding's time zone"),
    )
}

/// One backend at a time: the two tests share two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CALL: Duration = Duration::from_secs(15);

fn cny(minor: i64) -> Option<Money> {
    Some(Money {
        minor_units: minor,
        currency_code: "CNY".into(),
    })
}

fn iterations() -> usize {
    std::env::var("COLEND_RACE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// One seed per run, shared by both tests.
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("COLEND_RACE_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| colend_platform::time::now_millis() as u64 % 1_000_000)
    })
}

/// A failure worth sending again with the same request id.
fn transient(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    match s.code() {
        Unavailable | Aborted | DeadlineExceeded | Unknown | Cancelled => true,
        ResourceExhausted => reason(s) == "RATE_LIMITED",
        FailedPrecondition => reason(s) == "NOT_READY",
        _ => false,
    }
}

/// `client.method(request)` through [`call`]; `request` is built anew for each attempt.
macro_rules! rpc {
    ($client:expr, $method:ident, $req:expr) => {{
        call(|| {
            let mut c = $client.clone();
            let r = $req;
            async move { c.$method(r).await }
        })
        .await
    }};
}

/// Calls until the answer is not transient (same request, at most 60 s).
async fn call<T, F, Fut>(mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut cap = 20u64;
    loop {
        match f().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if transient(&s) && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(rand::random_range(cap / 2..=cap))).await;
                cap = (cap * 2).min(1_000);
            }
            Err(s) => return Err(s),
        }
    }
}

fn internal<T>(partner: &str, m: T) -> tonic::Request<T> {
    colend_platform::grpc::request(m, CALL, Some(partner))
}

/// "CODE REASON" of a refusal.
fn refusal(s: &tonic::Status) -> String {
    format!("{:?} {}", s.code(), reason(s))
}

fn is_invalid_state(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::FailedPrecondition && reason(s) == "INVALID_STATE"
}

/// The mesh as the suite sees it: every replica of acquisition and funding.
#[derive(Clone)]
struct Mesh {
    acquisition: Vec<AcquisitionServiceClient<Channel>>,
    funding: Vec<FundingServiceClient<Channel>>,
    backends: Backends,
    partner: String,
    acq_db: sqlx::AnyPool,
    fun_db: sqlx::AnyPool,
}

impl Mesh {
    async fn new(acq_urls: &[String], fun_urls: &[String], backends: Backends) -> Mesh {
        let ch = |u: &String| colend_platform::grpc::channel(u).expect("channel");
        let acq_db = colend_acquisition::connect(&backends)
            .await
            .expect("acquisition storage")
            .pool;
        let fun_db = colend_funding::connect(&backends)
            .await
            .expect("funding storage")
            .pool;
        Mesh {
            acquisition: acq_urls
                .iter()
                .map(|u| AcquisitionServiceClient::new(ch(u)))
                .collect(),
            funding: fun_urls
                .iter()
                .map(|u| FundingServiceClient::new(ch(u)))
                .collect(),
            backends,
            partner: format!("race-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            acq_db,
            fun_db,
        }
    }

    fn acq(&self, i: usize) -> AcquisitionServiceClient<Channel> {
        self.acquisition[i % self.acquisition.len()].clone()
    }

    fn fun(&self, i: usize) -> FundingServiceClient<Channel> {
        self.funding[i % self.funding.len()].clone()
    }

    /// The partner on the whitelist, the bank's reference data and an
    /// agreement with room for every loan of the suite.
    async fn setup(&self) {
        let f = self.fun(0);
        let p = self.partner.clone();
        rpc!(
            f,
            whitelist_institution,
            as_bank(fund::WhitelistInstitutionRequest {
                request_id: format!("race-whitelist-{p}"),
                entry: Some(fund::WhitelistEntry {
                    institution_id: p.clone(),
                    kind: fund::InstitutionKind::Partner as i32,
                    effective_from: "2026-01-01".into(),
                    effective_to: String::new(),
                    ..Default::default()
                }),
            })
        )
        .expect("whitelist");
        rpc!(
            f,
            set_bank_reference,
            as_bank(fund::SetBankReferenceRequest {
                request_id: format!("race-reference-{p}"),
                reference: Some(fund::BankReference {
                    net_tier1_capital: cny(80_000_000_000 * 100),
                    total_loan_balance: cny(1_000_000_000_000 * 100),
                    as_of: "2026-09-30".into(),
                }),
            })
        )
        .expect("bank reference");
        rpc!(
            f,
            upsert_agreement,
            as_bank(fund::UpsertAgreementRequest {
                request_id: format!("race-agreement-{p}"),
                agreement: Some(fund::Agreement {
                    partner_id: p.clone(),
                    partner_share_bps: 3_000,
                    bank_rate_bps: 900,
                    partner_rate_bps: 1_100,
                    daily_quota: cny(5_000_000_000 * 100),
                    total_quota: cny(50_000_000_000 * 100),
                    effective_from: "2026-01-01".into(),
                    penalty_rate_bps: 1_800,
                    fee_partner_share_bps: 5_000,
                    ..Default::default()
                }),
            })
        )
        .expect("agreement");
    }

    /// Submits each borrower (replicas in turn) and waits until every
    /// journey has ended; returns (application id, status, live loan id).
    async fn journeys(
        &self,
        tag: &str,
        people: &[colend::borrowers::Borrower],
    ) -> Vec<(String, String, Option<String>)> {
        let subs = people.iter().enumerate().map(|(i, b)| {
            let client = self.acq(i);
            let msg =
                colend::demo::application(format!("race-{tag}-{i}"), format!("ref-{tag}-{i}"), b);
            let p = self.partner.clone();
            async move {
                rpc!(client, submit_application, as_partner(&p, msg.clone()))
                    .unwrap_or_else(|s| panic!("submitting {tag}-{i}: {s:?}"))
                    .application
                    .map(|a| a.application_id)
                    .unwrap_or_default()
            }
        });
        let ids: Vec<String> = futures::future::join_all(subs).await;
        let statuses = self.settled(&ids, 120).await;
        let loans = self.loans_of(&ids).await;
        ids.into_iter()
            .map(|id| {
                let status = statuses.get(&id).cloned().unwrap_or_default();
                let loan = loans
                    .get(&id)
                    .filter(|(_, s)| s == "RESERVED")
                    .map(|(l, _)| l.clone());
                (id, status, loan)
            })
            .collect()
    }

    /// Waits (up to `secs`) until none of `ids` has automatic steps left;
    /// their statuses.
    async fn settled(&self, ids: &[String], secs: u64) -> HashMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.statuses(ids).await;
            let busy = s
                .values()
                .filter(|v| {
                    matches!(
                        v.as_str(),
                        "SUBMITTED" | "KYC_PASSED" | "APPROVED" | "ABANDONING"
                    )
                })
                .count();
            if busy == 0 && s.len() == ids.len() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{busy} of {} journeys still running after {secs} s",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn statuses(&self, ids: &[String]) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(200) {
            let marks = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT application_id, status FROM applications WHERE application_id IN ({marks})"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.acq_db).await.expect("reads applications") {
                out.insert(r.get::<String, _>(0), r.get::<String, _>(1));
            }
        }
        out
    }

    /// application id → (status, reason codes as stored, comma-separated).
    async fn applications(&self, ids: &[String]) -> HashMap<String, (String, String)> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(200) {
            let marks = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT application_id, status, reason_codes FROM applications WHERE application_id IN ({marks})"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.acq_db).await.expect("reads applications") {
                out.insert(r.get::<String, _>(0), (r.get(1), r.get(2)));
            }
        }
        out
    }

    /// application id → (loan id, loan status).
    async fn loans_of(&self, ids: &[String]) -> HashMap<String, (String, String)> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(200) {
            let marks = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT application_id, loan_id, status FROM loans WHERE application_id IN ({marks})"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.fun_db).await.expect("reads loans") {
                let (app, loan, status): (String, String, String) = (r.get(0), r.get(1), r.get(2));
                if let Some((other, _)) = out.insert(app.clone(), (loan.clone(), status)) {
                    // Reported by the scenario that looks for it.
                    out.insert(format!("{app}#dup"), (other, String::new()));
                }
            }
        }
        out
    }

    async fn loan(&self, loan_id: &str) -> fund::Loan {
        let p = self.partner.clone();
        let f = self.fun(0);
        rpc!(
            f,
            get_loan,
            as_partner(
                &p,
                fund::GetLoanRequest {
                    loan_id: loan_id.to_string(),
                },
            )
        )
        .expect("reads the loan")
        .loan
        .unwrap_or_default()
    }

    async fn disburse(
        &self,
        replica: usize,
        loan_id: &str,
        value_date: NaiveDate,
    ) -> Result<fund::Loan, tonic::Status> {
        let f = self.fun(replica);
        let msg = fund::BookDisbursementRequest {
            request_id: format!("race-disburse-{loan_id}"),
            loan_id: loan_id.to_string(),
            value_date: format_date(value_date),
            bank_transaction_ref: format!("BNK-D-{loan_id}"),
        };
        rpc!(f, book_disbursement, as_bank(msg.clone())).map(|r| r.loan.unwrap_or_default())
    }

    async fn repay(
        &self,
        replica: usize,
        request_id: String,
        loan_id: &str,
        amount: i64,
        value_date: NaiveDate,
        bank_ref: &str,
    ) -> Result<fund::BookRepaymentResponse, tonic::Status> {
        let f = self.fun(replica);
        let msg = fund::BookRepaymentRequest {
            request_id,
            loan_id: loan_id.to_string(),
            amount: cny(amount),
            value_date: format_date(value_date),
            bank_transaction_ref: bank_ref.to_string(),
        };
        rpc!(f, book_repayment, as_bank(msg.clone()))
    }

    async fn trial_balance(&self) -> Ledger {
        let f = self.fun(1);
        let tb = rpc!(
            f,
            get_trial_balance,
            as_bank(fund::GetTrialBalanceRequest {})
        )
        .expect("trial balance");
        Ledger::from_trial_balance(&tb)
    }

    /// Quota, daily usage and the bank's C2/C3 exposure against what the
    /// live loans hold; one line per difference.
    async fn counters(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let q = |sql: &'static str| {
            let db = self.fun_db.clone();
            async move {
                sqlx::query(sql)
                    .fetch_all(&db)
                    .await
                    .expect("reads funding")
            }
        };
        let mut live_partner: HashMap<String, i64> = HashMap::new();
        let mut live_bank: HashMap<String, i64> = HashMap::new();
        let mut daily: HashMap<(String, String), i64> = HashMap::new();
        for r in q("SELECT partner_id, status, bank_amount, partner_amount, principal_paid, partner_principal_paid, reserved_on FROM loans").await {
            let (p, status, bank, partner, paid, partner_paid, day): (String, String, i64, i64, i64, i64, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
            if status == "VOID" {
                continue;
            }
            *live_partner.entry(p.clone()).or_default() += partner - partner_paid;
            *live_bank.entry(p.clone()).or_default() += bank - (paid - partner_paid);
            *daily.entry((p, day)).or_default() += partner;
        }
        for r in q("SELECT partner_id, used FROM partner_usage").await {
            let (p, used): (String, i64) = (r.get(0), r.get(1));
            let live = live_partner.get(&p).copied().unwrap_or(0);
            if used != live {
                problems.push(format!(
                    "{p}: partner quota in use {used} != live loans' {live}"
                ));
            }
        }
        for r in q("SELECT partner_id, day, used FROM partner_daily_usage").await {
            let (p, day, used): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            let live = daily.get(&(p.clone(), day.clone())).copied().unwrap_or(0);
            if used != live {
                problems.push(format!(
                    "{p} {day}: daily quota in use {used} != live loans' {live}"
                ));
            }
        }
        let all: i64 = live_bank.values().sum();
        for r in q("SELECT scope, used FROM bank_exposure").await {
            let (scope, used): (String, i64) = (r.get(0), r.get(1));
            let live = match scope.strip_prefix("PARTNER:") {
                Some(p) => live_bank.get(p).copied().unwrap_or(0),
                None => all,
            };
            if used != live {
                problems.push(format!(
                    "bank exposure {scope}: {used} != live loans' bank share {live}"
                ));
            }
        }
        problems
    }
}

/// The borrowers the suite submits, each used once: good ones (their
/// journeys end with funds reserved) and ones the bank declines.
struct People {
    good: std::vec::IntoIter<colend::borrowers::Borrower>,
    declined: std::vec::IntoIter<colend::borrowers::Borrower>,
}

impl People {
    fn new(seed: u64, n: usize) -> People {
        use colend::borrowers::Plant;
        let all = colend::borrowers::generate(n * 10, seed, today());
        let (mut good, mut declined) = (Vec::new(), Vec::new());
        for b in all {
            match b.plant {
                Plant::Good => good.push(b),
                Plant::ProhibitedPurpose | Plant::TooOld | Plant::OverBorrowed => declined.push(b),
                _ => {}
            }
        }
        People {
            good: good.into_iter(),
            declined: declined.into_iter(),
        }
    }

    fn good(&mut self, n: usize) -> Vec<colend::borrowers::Borrower> {
        let v: Vec<_> = self.good.by_ref().take(n).collect();
        assert_eq!(v.len(), n, "enough generated borrowers");
        v
    }

    fn declined(&mut self, n: usize) -> Vec<colend::borrowers::Borrower> {
        let v: Vec<_> = self.declined.by_ref().take(n).collect();
        assert_eq!(v.len(), n, "enough generated borrowers");
        v
    }
}

/// What a scenario found.
#[derive(Default)]
struct Outcome {
    iterations: usize,
    /// What happened, counted ("disbursed", "voided by release", …).
    tally: BTreeMap<String, usize>,
    /// Iterations where a rule broke, with why (first few kept).
    broken: usize,
    samples: Vec<String>,
}

impl Outcome {
    /// A figure of the scenario as a whole.
    fn note(&mut self, what: impl Into<String>, n: usize) {
        self.tally.insert(what.into(), n);
    }

    fn count(&mut self, what: impl Into<String>) {
        *self.tally.entry(what.into()).or_default() += 1;
    }

    fn broke(&mut self, why: String) {
        self.broken += 1;
        if self.samples.len() < 5 {
            self.samples.push(why);
        }
    }

    fn tally(&self) -> String {
        self.tally
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

type Shared = Arc<Mutex<Outcome>>;

fn lock(o: &Shared) -> std::sync::MutexGuard<'_, Outcome> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

struct ReportRow {
    backend: &'static str,
    scenario: &'static str,
    races: &'static str,
    outcome: Outcome,
    invariants: String,
    invariants_hold: bool,
    books: Vec<String>,
    seconds: f64,
}

#[derive(Default)]
struct Report {
    rows: Vec<ReportRow>,
}

impl Report {
    fn failures(&self) -> Vec<String> {
        let mut v = Vec::new();
        for r in &self.rows {
            if r.outcome.broken > 0 {
                v.push(format!(
                    "{} / {}: {} of {} iterations broke: {}",
                    r.backend,
                    r.scenario,
                    r.outcome.broken,
                    r.outcome.iterations,
                    r.outcome.samples.join(" | ")
                ));
            }
            if !r.invariants_hold {
                v.push(format!(
                    "{} / {}: invariants: {}",
                    r.backend, r.scenario, r.invariants
                ));
            }
            if !r.books.is_empty() {
                v.push(format!(
                    "{} / {}: books: {}",
                    r.backend,
                    r.scenario,
                    r.books.join("; ")
                ));
            }
        }
        v
    }

    fn markdown(&self, seed: u64, binary: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Concurrency suite (services/colend/tests/concurrency.rs)\n\n\
             Seed {seed}; binary `{binary}`. Each iteration sends the competing calls at the same \
             moment to different replicas. \"broken\" counts iterations where a rule of the \
             scenario failed; after each scenario the invariant checker ran, and each funder's \
             ledger and the quota and exposure counters were compared with a sequential model \
             of the accepted operations.\n"
        );
        let _ = writeln!(
            s,
            "| backend | scenario | races | iterations | outcomes | broken | invariants | books = model | s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                r.backend,
                r.scenario,
                r.races,
                r.outcome.iterations,
                r.outcome.tally(),
                r.outcome.broken,
                if r.invariants_hold {
                    "hold".to_string()
                } else {
                    format!("**FAIL**: {}", r.invariants.replace('\n', " "))
                },
                if r.books.is_empty() {
                    "yes".to_string()
                } else {
                    format!("**no**: {}", r.books.join("; "))
                },
                r.seconds
            );
        }
        let broken: Vec<&ReportRow> = self.rows.iter().filter(|r| r.outcome.broken > 0).collect();
        if !broken.is_empty() {
            let _ = writeln!(s, "\n## Broken iterations (first five of each)\n");
            for r in broken {
                let _ = writeln!(s, "- {} / {}:", r.backend, r.scenario);
                for x in &r.outcome.samples {
                    let _ = writeln!(s, "  - {}", x.replace('\n', " "));
                }
            }
        }
        s
    }
}

/// Everything a scenario needs, shared with its tasks.
#[derive(Clone)]
struct Ctx {
    mesh: Mesh,
    /// The postings every accepted operation makes, as the model books them.
    ledger: Arc<Mutex<Ledger>>,
}

impl Ctx {
    fn post(&self, l: &Ledger) {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner()).add(l);
    }

    fn disbursed(&self, loan: &fund::Loan) {
        let mut l = Ledger::default();
        l.disbursement(minor(&loan.bank_amount), minor(&loan.partner_amount));
        self.post(&l);
    }
}

/// Runs the checks that follow every scenario and adds the report's row.
async fn finish(
    report: &mut Report,
    ctx: &Ctx,
    backend: &'static str,
    (scenario, races): (&'static str, &'static str),
    outcome: Outcome,
    (started, before): (Instant, Ledger),
) {
    let settled = colend::invariants::settle(&ctx.mesh.backends, 60)
        .await
        .unwrap_or(false);
    let (invariants, invariants_hold) = match colend::invariants::check(&ctx.mesh.backends).await {
        Ok(r) => (
            if r.holds() {
                format!("{}/{} hold", r.checks.len(), r.checks.len())
            } else {
                r.violations().join("; ")
            },
            r.holds() && settled,
        ),
        Err(e) => (format!("the checker failed: {e}"), false),
    };
    let mut books = Vec::new();
    let mut booked = ctx.mesh.trial_balance().await;
    booked.sub(&before);
    let model = std::mem::take(&mut *ctx.ledger.lock().unwrap_or_else(|e| e.into_inner()));
    books.extend(
        booked
            .diff(&model)
            .into_iter()
            .take(6)
            .map(|d| format!("ledger {d}")),
    );
    books.extend(ctx.mesh.counters().await.into_iter().take(6));
    eprintln!(
        "[concurrency] {backend} / {scenario}: {} iterations, {} broken; {}; invariants {}; books {}",
        outcome.iterations,
        outcome.broken,
        outcome.tally(),
        invariants,
        if books.is_empty() {
            "= model".to_string()
        } else {
            books.join("; ")
        }
    );
    report.rows.push(ReportRow {
        backend,
        scenario,
        races,
        outcome,
        invariants,
        invariants_hold,
        books,
        seconds: started.elapsed().as_secs_f64(),
    });
}

/// Journeys for `n` good borrowers, in batches; each batch's reserved loans
/// go to `race` at once (spawned), while the next batch is submitted.
async fn with_reserved_loans<F, Fut>(
    ctx: &Ctx,
    people: &mut People,
    tag: &str,
    n: usize,
    batch: usize,
    outcome: &Shared,
    race: F,
) where
    F: Fn(usize, String, String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut done = 0;
    let mut b = 0;
    while done < n {
        let k = batch.min(n - done);
        let js = ctx
            .mesh
            .journeys(&format!("{tag}-{b}"), &people.good(k))
            .await;
        for (app, status, loan) in js {
            match loan {
                Some(loan) => {
                    tasks.spawn(race(done, app, loan));
                    done += 1;
                }
                None => lock(outcome).count(format!("journey ended {status} (not raced)")),
            }
        }
        b += 1;
        assert!(b < n + 10, "journeys keep ending without a reservation");
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            lock(outcome).broke(format!("a race task failed: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Disbursement vs release vs expiry.

const S1: (&str, &str) = (
    "1. disbursement vs release vs expiry",
    "BookDisbursement (bank) on one funding replica and ReleaseFunding (by loan id) on the other, \
     at once, on a loan just reserved by a journey; a third of them around the reservation's \
     expiry (TTL 8 s, sweepers every second): 50 to 500 ms before it, up to 700 ms after it \
     (before the sweep, mostly), or 1.3 to 1.8 s after it (swept)",
);

/// When an iteration of scenario 1 sends its two calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// As soon as the journey has reserved the loan.
    AtOnce,
    /// 50 to 500 ms before the reservation expires: the disbursement may win.
    BeforeExpiry,
    /// Up to 700 ms after it, before the sweep mostly: the disbursement is
    /// refused (expired), the release voids the loan unless a sweep did.
    AfterExpiry,
    /// 1.3 to 1.8 s after it: a sweeper (every second) has voided it, and
    /// the release finds it VOID.
    AfterSweep,
}

impl When {
    /// Six in nine at once, one each around the expiry.
    fn of(i: usize) -> When {
        match i % 9 {
            6 => When::BeforeExpiry,
            7 => When::AfterExpiry,
            8 => When::AfterSweep,
            _ => When::AtOnce,
        }
    }

    /// Milliseconds from the expiry.
    fn offset(self, rng: &mut StdRng) -> i64 {
        match self {
            When::AtOnce => 0,
            When::BeforeExpiry => -rng.random_range(50..500),
            When::AfterExpiry => rng.random_range(0..700),
            When::AfterSweep => rng.random_range(1_300..1_800),
        }
    }

    fn name(self) -> &'static str {
        match self {
            When::AtOnce => "at once",
            When::BeforeExpiry => "just before the expiry",
            When::AfterExpiry => "just after the expiry",
            When::AfterSweep => "after the expiry's sweep",
        }
    }
}

/// What one iteration of scenario 1 left, judged once the loan events have
/// reached acquisition.
struct S1Race {
    app: String,
    loan_id: String,
    when: When,
    /// The calls went out after the reservation expired.
    late: bool,
    /// The loan as it ended: DISBURSED or VOID (with the release's OK VOID).
    loan_status: String,
    /// The release answered OK VOID and the disbursement INVALID_STATE.
    void_won: bool,
}

async fn s1(ctx: &Ctx, people: &mut People, n: usize, rng: &mut StdRng) -> Outcome {
    let outcome: Shared = Arc::default();
    let plan: Vec<(usize, When, i64)> = (0..n)
        .map(|i| {
            let when = When::of(i);
            (rng.random_range(0..2), when, when.offset(rng))
        })
        .collect();
    let plan = Arc::new(plan);
    let races: Arc<Mutex<Vec<S1Race>>> = Arc::default();
    let o = outcome.clone();
    let done = races.clone();
    with_reserved_loans(
        ctx,
        people,
        "s1",
        n,
        16,
        &outcome,
        move |i, app, loan_id| {
            let (ctx, outcome, plan, done) = (ctx.clone(), o.clone(), plan.clone(), done.clone());
            async move {
                let (first, mut when, offset) = plan[i];
                let mesh = &ctx.mesh;
                let l = mesh.loan(&loan_id).await;
                let expires = l
                    .reservation_expires_at
                    .map(|t| t.seconds * 1000 + t.nanos as i64 / 1_000_000)
                    .unwrap_or(0);
                if when != When::AtOnce {
                    let wait = expires + offset - colend_platform::time::now_millis();
                    if wait > 60_000 {
                        // Not a short-lived reservation (another binary's
                        // settings): raced at once instead.
                        lock(&outcome).count("planned at the expiry, raced at once: the reservation lives long");
                        when = When::AtOnce;
                    } else {
                        tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
                    }
                }
                let release = {
                    let f = mesh.fun(first + 1);
                    let p = mesh.partner.clone();
                    let msg = fund::ReleaseFundingRequest {
                        request_id: format!("race-release-{loan_id}"),
                        loan_id: loan_id.clone(),
                        reason: "the bank withdrew the offer".into(),
                        application_id: String::new(),
                    };
                    async move { rpc!(f, release_funding, internal(&p, msg.clone())) }
                };
                let sent = colend_platform::time::now_millis();
                let (d, r) = tokio::join!(mesh.disburse(first, &loan_id, today()), release);
                let late = sent > expires;
                let after = mesh.loan(&loan_id).await;
                let final_status = fund::LoanStatus::try_from(after.status)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("LOAN_STATUS_")
                            .to_string()
                    })
                    .unwrap_or_default();
                let mut o = lock(&outcome);
                let released = match &r {
                    Ok(x) => {
                        x.loan.as_ref().map(|l| l.status) == Some(fund::LoanStatus::Void as i32)
                    }
                    Err(_) => false,
                };
                let why = |o: &mut Outcome, what: &str| {
                    o.count(format!("✗ {what}"));
                    o.broke(format!(
                        "{loan_id} ({}): {what} (disbursement {}, release {}, loan now {final_status})",
                        when.name(),
                        d.as_ref().map(|_| "OK".to_string()).unwrap_or_else(refusal),
                        r.as_ref()
                            .map(|x| format!("OK {:?}", x.loan.as_ref().map(|l| l.status)))
                            .unwrap_or_else(refusal),
                    ))
                };
                if late && when == When::AtOnce {
                    o.count("sent at once, yet after the expiry (a slow journey)");
                }
                let mut void_won = false;
                match (&d, &r) {
                    (Ok(l), Ok(_)) => {
                        ctx.disbursed(l);
                        why(&mut o, "both the disbursement and the release answered OK")
                    }
                    (Ok(l), Err(e)) => {
                        ctx.disbursed(l);
                        if !is_invalid_state(e) {
                            why(&mut o, "the release lost with an unexpected refusal");
                        } else if final_status != "DISBURSED" {
                            why(&mut o, "disbursed, but the loan is not DISBURSED");
                        } else if late {
                            why(&mut o, "disbursed though sent after the reservation expired");
                        } else {
                            o.count(format!(
                                "disbursement won (release INVALID_STATE), {}",
                                when.name()
                            ));
                        }
                    }
                    (Err(e), Ok(_)) => {
                        if !is_invalid_state(e) {
                            why(&mut o, "the disbursement lost with an unexpected refusal");
                        } else if !released || final_status != "VOID" {
                            why(&mut o, "released, but the loan is not VOID");
                        } else {
                            // Who voided it (the release, or the sweep before
                            // it) is told by the event acquisition recorded.
                            void_won = true;
                        }
                    }
                    // A release by loan id fails only on a disbursed loan
                    // (voiding is idempotent: a VOID loan answers OK VOID).
                    (Err(_), Err(_)) => why(&mut o, "both refused"),
                }
                if final_status == "DISBURSED" && d.is_err() {
                    why(
                        &mut o,
                        "the loan is DISBURSED but no disbursement was accepted",
                    );
                }
                drop(o);
                done.lock().unwrap_or_else(|e| e.into_inner()).push(S1Race {
                    app,
                    loan_id,
                    when,
                    late,
                    loan_status: final_status,
                    void_won,
                });
            }
        },
    )
    .await;
    let mut o = Arc::try_unwrap(outcome)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    o.iterations = n;
    let races = std::mem::take(&mut *races.lock().unwrap_or_else(|e| e.into_inner()));
    s1_judge(ctx, races, &mut o).await;
    o
}

/// Once funding's loan events have reached acquisition: each application
/// agrees with its loan (DISBURSED, or FUNDING_REJECTED over a VOID loan),
/// and the event tells who voided a loan: the release (RESERVATION_RELEASED)
/// or the expiry sweep (RESERVATION_EXPIRED). Expiry must have won most of
/// the races sent after its sweep.
async fn s1_judge(ctx: &Ctx, races: Vec<S1Race>, o: &mut Outcome) {
    let _ = colend::invariants::settle(&ctx.mesh.backends, 60).await;
    let ids: Vec<String> = races.iter().map(|r| r.app.clone()).collect();
    let apps = ctx.mesh.applications(&ids).await;
    let (mut after_sweep, mut expiry_won) = (0, 0);
    for r in &races {
        if r.when == When::AfterSweep {
            after_sweep += 1;
        }
        let (status, reasons) = apps.get(&r.app).cloned().unwrap_or_default();
        let agrees = match r.loan_status.as_str() {
            "DISBURSED" => status == "DISBURSED",
            "VOID" => status == "FUNDING_REJECTED",
            _ => false,
        };
        if !agrees {
            o.count("✗ the application disagrees with its loan");
            o.broke(format!(
                "{} ({}): the application is {status} over a {} loan",
                r.loan_id,
                r.when.name(),
                r.loan_status
            ));
            continue;
        }
        if !r.void_won {
            continue;
        }
        if reasons.contains("RESERVATION_EXPIRED") {
            expiry_won += 1;
            o.count(format!(
                "expiry won (swept; release OK VOID, disbursement INVALID_STATE), {}",
                r.when.name()
            ));
        } else if r.late {
            o.count(format!(
                "void won: the release voided it, the disbursement refused as expired, {}",
                r.when.name()
            ));
        } else {
            o.count(format!(
                "void won: the release voided it (disbursement INVALID_STATE), {}",
                r.when.name()
            ));
        }
    }
    if after_sweep > 0 && expiry_won * 2 < after_sweep {
        o.count("✗ expiry rarely won");
        o.broke(format!(
            "expiry won {expiry_won} times, yet {after_sweep} races were sent after its sweep: \
             the scenario did not race the expiry"
        ));
    }
}

// ---------------------------------------------------------------------------
// 2. N repayments at once.

const S2: (&str, &str) = (
    "2. concurrent repayments",
    "2 to 4 BookRepayment calls with different request ids and bank references, at once, on one \
     disbursed loan, spread over both funding replicas; disbursed today (a disbursement is never \
     value-dated before the day its loan was reserved: overdue repayments race in funding's own \
     races test, on a clock both replicas share); together below the payoff, so every one must \
     be accepted",
);

/// Disburses a loan (or reports why not) and starts its model.
async fn disbursed_model(
    ctx: &Ctx,
    loan_id: &str,
    value_date: NaiveDate,
) -> Result<LoanModel, String> {
    let loan = ctx
        .mesh
        .disburse(0, loan_id, value_date)
        .await
        .map_err(|s| format!("{loan_id}: disbursement refused: {}", refusal(&s)))?;
    ctx.disbursed(&loan);
    LoanModel::new(&loan).map_err(|e| format!("{loan_id}: {e}"))
}

/// The loan's repayments and balances against the model, the accepted
/// answers against what the loan lists; the model's postings are added to
/// the expected ledger when they agree.
async fn compare(
    ctx: &Ctx,
    loan_id: &str,
    start: &LoanModel,
    accepted: &[fund::Repayment],
    o: &mut Outcome,
) -> bool {
    let after = ctx.mesh.loan(loan_id).await;
    let listed = &after.repayments;
    let mut problems = Vec::new();
    for a in accepted {
        if !listed.iter().any(|r| r.repayment_id == a.repayment_id) {
            problems.push(format!("accepted {} is not on the loan", a.repayment_id));
        }
    }
    for r in listed {
        if !accepted.iter().any(|a| a.repayment_id == r.repayment_id) {
            problems.push(format!(
                "{} is on the loan but no call was told so",
                r.repayment_id
            ));
        }
        let sum: i64 = r.allocations.iter().map(|a| minor(&a.amount)).sum();
        if sum != minor(&r.amount) {
            problems.push(format!(
                "{}: allocations {sum} != amount {}",
                r.repayment_id,
                minor(&r.amount)
            ));
        }
    }
    let principal_paid: i64 = listed.iter().map(model::principal_of).sum();
    let balances = model::reported(&after);
    let outstanding = balances[0].principal_outstanding + balances[1].principal_outstanding;
    if start.outstanding() - principal_paid != outstanding {
        problems.push(format!(
            "principal outstanding {} - principal allocated {principal_paid} != {outstanding} reported",
            start.outstanding()
        ));
    }
    let booked: Vec<(i64, NaiveDate, model::Allocations)> = listed
        .iter()
        .map(|r| {
            (
                minor(&r.amount),
                colend_platform::time::parse_date(&r.value_date).unwrap_or_default(),
                model::allocations_of(r),
            )
        })
        .collect();
    match model::serialise(start, &booked, &balances) {
        Ok((m, in_booked_order)) => {
            ctx.post(&m.ledger);
            if !in_booked_order {
                o.count("serialisable only in another order than booked");
            }
        }
        Err(e) => problems.push(format!("no serial order reproduces the books: {e}")),
    }
    if problems.is_empty() {
        true
    } else {
        o.broke(format!("{loan_id}: {}", problems.join("; ")));
        false
    }
}

async fn s2(ctx: &Ctx, people: &mut People, n: usize, rng: &mut StdRng) -> Outcome {
    let outcome: Shared = Arc::default();
    let plan: Vec<(usize, u64)> = (0..n)
        .map(|_| (rng.random_range(2..=4), rng.random()))
        .collect();
    let plan = Arc::new(plan);
    let o = outcome.clone();
    with_reserved_loans(
        ctx,
        people,
        "s2",
        n,
        16,
        &outcome,
        move |i, _app, loan_id| {
            let (ctx, outcome, plan) = (ctx.clone(), o.clone(), plan.clone());
            async move {
                let (k, sub) = plan[i];
                let mut rng = StdRng::seed_from_u64(sub);
                let start = match disbursed_model(&ctx, &loan_id, today()).await {
                    Ok(m) => m,
                    Err(e) => return lock(&outcome).broke(e),
                };
                let payoff = start.payoff(today());
                let amounts: Vec<i64> = (0..k)
                    .map(|_| rng.random_range(100..=(payoff / (k as i64 + 1)).max(101)))
                    .collect();
                let calls = amounts.iter().enumerate().map(|(j, a)| {
                    let mesh = ctx.mesh.clone();
                    let loan_id = loan_id.clone();
                    let a = *a;
                    async move {
                        mesh.repay(
                            j,
                            format!("race-repay-{loan_id}-{j}"),
                            &loan_id,
                            a,
                            today(),
                            &format!("BNK-R-{loan_id}-{j}"),
                        )
                        .await
                    }
                });
                let answers = futures::future::join_all(calls).await;
                let mut o2 = Outcome::default();
                let mut accepted = Vec::new();
                let mut refused = Vec::new();
                for (j, a) in answers.iter().enumerate() {
                    match a {
                        Ok(r) => accepted.extend(r.repayment.clone()),
                        // Every amount is below the payoff: nothing may be
                        // refused, so a refusal breaks the iteration (else a
                        // race refusing every repayment would compare nothing).
                        Err(s) => {
                            o2.count(format!("✗ repayment refused {}", refusal(s)));
                            refused.push(format!(
                                "repayment {j} of {} refused: {}",
                                amounts[j],
                                refusal(s)
                            ));
                        }
                    }
                }
                if !refused.is_empty() {
                    o2.broke(format!("{loan_id}: {}", refused.join("; ")));
                }
                let ok =
                    compare(&ctx, &loan_id, &start, &accepted, &mut o2).await && refused.is_empty();
                let mut o = lock(&outcome);
                for (k2, v) in o2.tally {
                    *o.tally.entry(k2).or_default() += v;
                }
                if o2.broken > 0 {
                    o.broke(o2.samples.join("; "));
                }
                if ok {
                    o.count(format!("{} of {k} accepted, books = model", accepted.len()));
                }
            }
        },
    )
    .await;
    let mut o = Arc::try_unwrap(outcome)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    o.iterations = n;
    o
}

// ---------------------------------------------------------------------------
// 3. One bank reference, two request ids.

const S3: (&str, &str) = (
    "3. one bank reference, two request ids",
    "two BookRepayment calls with different request ids and the same bank_transaction_ref, at \
     once, on the two funding replicas; half with the same amount and value date, half with \
     amounts that differ",
);

async fn s3(ctx: &Ctx, people: &mut People, n: usize, rng: &mut StdRng) -> Outcome {
    let outcome: Shared = Arc::default();
    let plan: Vec<(bool, u64)> = (0..n)
        .map(|_| (rng.random_bool(0.5), rng.random()))
        .collect();
    let plan = Arc::new(plan);
    let o = outcome.clone();
    with_reserved_loans(
        ctx,
        people,
        "s3",
        n,
        16,
        &outcome,
        move |i, _app, loan_id| {
            let (ctx, outcome, plan) = (ctx.clone(), o.clone(), plan.clone());
            async move {
                let (same, sub) = plan[i];
                let mut rng = StdRng::seed_from_u64(sub);
                let start = match disbursed_model(&ctx, &loan_id, today()).await {
                    Ok(m) => m,
                    Err(e) => return lock(&outcome).broke(e),
                };
                let payoff = start.payoff(today());
                let a = rng.random_range(100..=(payoff / 3).max(101));
                let b = if same {
                    a
                } else {
                    a + rng.random_range(1..=100)
                };
                let bank_ref = format!("BNK-R-{loan_id}-dup");
                let (x, y) = tokio::join!(
                    ctx.mesh.repay(
                        0,
                        format!("race-dup-{loan_id}-a"),
                        &loan_id,
                        a,
                        today(),
                        &bank_ref
                    ),
                    ctx.mesh.repay(
                        1,
                        format!("race-dup-{loan_id}-b"),
                        &loan_id,
                        b,
                        today(),
                        &bank_ref
                    ),
                );
                let id = |r: &Result<fund::BookRepaymentResponse, tonic::Status>| {
                    r.as_ref()
                        .ok()
                        .and_then(|r| r.repayment.as_ref())
                        .map(|r| r.repayment_id.clone())
                };
                let mut o2 = Outcome::default();
                let accepted: Vec<fund::Repayment> = {
                    let mut v: Vec<fund::Repayment> = [&x, &y]
                        .iter()
                        .filter_map(|r| r.as_ref().ok().and_then(|r| r.repayment.clone()))
                        .collect();
                    v.dedup_by(|p, q| p.repayment_id == q.repayment_id);
                    v
                };
                let described = format!(
                    "{} / {}",
                    x.as_ref().map(|_| "OK".to_string()).unwrap_or_else(refusal),
                    y.as_ref().map(|_| "OK".to_string()).unwrap_or_else(refusal)
                );
                match (same, &x, &y) {
                    (true, Ok(_), Ok(_)) if id(&x) == id(&y) => {
                        o2.count("same content: both answered with the one booked repayment")
                    }
                    (false, Ok(_), Err(e)) | (false, Err(e), Ok(_))
                        if e.code() == tonic::Code::AlreadyExists
                            && reason(e) == "ALREADY_EXISTS" =>
                    {
                        o2.count("different content: one booked, the other ALREADY_EXISTS")
                    }
                    _ => {
                        let kind = if same { "same" } else { "different" };
                        o2.count(format!(
                            "✗ {kind} content: answers {described}, {} repayments booked",
                            accepted.len()
                        ));
                        o2.broke(format!(
                            "{loan_id}: {kind} content, answers {described}, repayments {:?}",
                            accepted.iter().map(|r| &r.repayment_id).collect::<Vec<_>>()
                        ))
                    }
                }
                compare(&ctx, &loan_id, &start, &accepted, &mut o2).await;
                let after = ctx.mesh.loan(&loan_id).await;
                let with_ref = after
                    .repayments
                    .iter()
                    .filter(|r| r.bank_transaction_ref == bank_ref)
                    .count();
                if with_ref != 1 {
                    o2.broke(format!("{loan_id}: bank reference booked {with_ref} times"));
                }
                let mut o = lock(&outcome);
                for (k, v) in o2.tally {
                    *o.tally.entry(k).or_default() += v;
                }
                if o2.broken > 0 {
                    o.broke(o2.samples.join("; "));
                }
            }
        },
    )
    .await;
    let mut o = Arc::try_unwrap(outcome)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    o.iterations = n;
    o
}

// ---------------------------------------------------------------------------
// 4. Compensation racing a queued reservation.

const S4: (&str, &str) = (
    "4. compensation vs a queued reservation",
    "ReserveFunding for an application (queued in funding's group commit) on one funding replica \
     and ReleaseFunding by the same application id on the other, at once, 16 applications at a \
     time; the applications are real ones the bank declined",
);

async fn s4(ctx: &Ctx, people: &mut People, n: usize, rng: &mut StdRng) -> Outcome {
    let mut o = Outcome {
        iterations: n,
        ..Default::default()
    };
    let mut apps = Vec::new();
    let mut b = 0;
    while apps.len() < n {
        let k = 32.min(n - apps.len());
        for (app, status, _) in ctx
            .mesh
            .journeys(&format!("s4-{b}"), &people.declined(k))
            .await
        {
            if status == "DECLINED" {
                apps.push(app);
            } else {
                o.count(format!("journey ended {status} (not raced)"));
            }
        }
        b += 1;
        assert!(b < n + 10, "journeys keep ending other than DECLINED");
    }
    let plan: Vec<(usize, i64)> = (0..n)
        .map(|_| {
            (
                rng.random_range(0..2),
                rng.random_range(10_000..50_000) * 100,
            )
        })
        .collect();
    let mesh = ctx.mesh.clone();
    let results: Vec<_> = futures::future::join_all(apps.iter().zip(plan).enumerate().map(
        |(i, (app, (first, principal)))| {
            let mesh = mesh.clone();
            async move {
                // 16 at a time, all of a wave at once.
                tokio::time::sleep(Duration::from_millis((i / 16) as u64 * 150)).await;
                let reserve = {
                    let f = mesh.fun(first);
                    let msg = fund::ReserveFundingRequest {
                        request_id: format!("race-reserve-{app}"),
                        application_id: app.clone(),
                        partner_id: mesh.partner.clone(),
                        principal: cny(principal),
                        term_months: 12,
                        annual_rate_bps: 1_000,
                        repayment_method: RepaymentMethod::EqualInstalment as i32,
                        borrower_key: format!("race-{app}"),
                        annual_fee_bps: 0,
                    };
                    let p = mesh.partner.clone();
                    async move { rpc!(f, reserve_funding, internal(&p, msg.clone())) }
                };
                let release = {
                    let f = mesh.fun(first + 1);
                    let msg = fund::ReleaseFundingRequest {
                        request_id: format!("race-close-{app}"),
                        loan_id: String::new(),
                        reason: "journey compensated".into(),
                        application_id: app.clone(),
                    };
                    let p = mesh.partner.clone();
                    async move { rpc!(f, release_funding, internal(&p, msg.clone())) }
                };
                let (r, c) = tokio::join!(reserve, release);
                (app.clone(), r, c)
            }
        },
    ))
    .await;
    let ids: Vec<String> = apps.clone();
    // The void's event and any late batch have landed once the outboxes drain.
    let _ = colend::invariants::settle(&ctx.mesh.backends, 30).await;
    let loans = ctx.mesh.loans_of(&ids).await;
    for (app, r, c) in results {
        let loan = loans.get(&app).cloned();
        let dup = loans.contains_key(&format!("{app}#dup"));
        let reserved = r.as_ref().ok().and_then(|x| x.loan.clone());
        let released = c.as_ref().ok().and_then(|x| x.loan.clone());
        let described = format!(
            "reserve {}, release {}, loan now {:?}",
            r.as_ref().map(|_| "OK".to_string()).unwrap_or_else(refusal),
            c.as_ref()
                .map(|x| format!("OK loan {:?}", x.loan.as_ref().map(|l| l.loan_id.clone())))
                .unwrap_or_else(refusal),
            loan
        );
        let live = loan.as_ref().is_some_and(|(_, s)| s == "RESERVED");
        if live || dup {
            o.count("✗ a live reservation for a closed application");
            o.broke(format!(
                "{app}: a live reservation for a closed application ({described})"
            ));
            continue;
        }
        match (&reserved, &released, &r) {
            (Some(l), Some(x), _)
                if x.loan_id == l.loan_id && x.status == fund::LoanStatus::Void as i32 =>
            {
                o.count("reservation first, the release voided it")
            }
            (None, Some(x), Err(e))
                if x.loan_id.is_empty() && is_invalid_state(e) && loan.is_none() =>
            {
                o.count("release first, the reservation refused (INVALID_STATE)")
            }
            _ => o.broke(format!("{app}: {described}")),
        }
    }
    o
}

// ---------------------------------------------------------------------------
// 5. A stalled journey owner.

const S5: (&str, &str) = (
    "5. stalled journey owner",
    "acquisition-1 takes the journeys (lease 1 s) and stalls 1.5 s at its pause points (before \
     the funding step, and before every step's commit with the step's result in hand); in half \
     the batches it is also stopped (SIGSTOP) for 3 s at a random moment. acquisition-2's \
     sweeper (every 0.5 s) takes the leases over (every journey's must change hands) and \
     finishes the journeys; then the owner wakes",
);

async fn s5(
    c: &mut Cluster,
    ctx: &Ctx,
    people: &mut People,
    n: usize,
    rng: &mut StdRng,
) -> Outcome {
    let mut o = Outcome {
        iterations: n,
        ..Default::default()
    };
    c.restart(
        "acquisition-1",
        &[
            ("COLEND_JOURNEY_LEASE_MS", "1000"),
            (
                "COLEND_PAUSE_AT",
                "acquisition.journey.before_funding:1500,acquisition.journey.before_commit:1500",
            ),
            ("COLEND_JOURNEY_STEP_ATTEMPTS", "3"),
            ("COLEND_JOURNEY_BACKOFF_MS", "100"),
        ],
    )
    .await;
    c.restart(
        "acquisition-2",
        &[
            ("COLEND_JOURNEY_LEASE_MS", "1000"),
            ("COLEND_JOURNEY_STEP_ATTEMPTS", "3"),
            ("COLEND_JOURNEY_BACKOFF_MS", "100"),
        ],
    )
    .await;
    let owner = AcquisitionServiceClient::new(
        colend_platform::grpc::channel(&c.url("acquisition-1")).expect("channel"),
    );
    let mut all = Vec::new();
    let mut b = 0;
    while all.len() < n {
        let k = 20.min(n - all.len());
        let batch = people.good(k);
        let subs = batch.iter().enumerate().map(|(i, bw)| {
            let client = owner.clone();
            let p = ctx.mesh.partner.clone();
            let msg = colend::demo::application(
                format!("race-s5-{b}-{i}"),
                format!("ref-s5-{b}-{i}"),
                bw,
            );
            async move {
                rpc!(client, submit_application, as_partner(&p, msg.clone()))
                    .expect("submits")
                    .application
                    .map(|a| a.application_id)
                    .unwrap_or_default()
            }
        });
        let ids: Vec<String> = futures::future::join_all(subs).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_200))).await;
        if b % 2 == 0 {
            c.signal("acquisition-1", "STOP");
            tokio::time::sleep(Duration::from_millis(3_000)).await;
            c.signal("acquisition-1", "CONT");
        }
        all.extend(ids);
        b += 1;
    }
    let statuses = ctx.mesh.settled(&all, 120).await;
    // The woken owner has had its chance to write.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let statuses2 = ctx.mesh.statuses(&all).await;
    let loans = ctx.mesh.loans_of(&all).await;
    for id in &all {
        let (s1, s2) = (
            statuses.get(id).cloned().unwrap_or_default(),
            statuses2.get(id).cloned().unwrap_or_default(),
        );
        let events: Vec<(String,)> = sqlx::query_as("SELECT status FROM application_events WHERE application_id = $1 ORDER BY occurred_at, event_id")
            .bind(id)
            .fetch_all(&ctx.mesh.acq_db)
            .await
            .expect("reads history");
        let history: Vec<String> = events.into_iter().map(|e| e.0).collect();
        let mut seen = std::collections::HashSet::new();
        let repeated: Vec<&String> = history.iter().filter(|s| !seen.insert(*s)).collect();
        let loan = loans.get(id);
        let mut problems = Vec::new();
        if s1 != s2 {
            problems.push(format!("moved from {s1} to {s2} after settling"));
        }
        if s2 == "PARKED" {
            problems.push("spuriously PARKED".to_string());
        }
        if !repeated.is_empty() {
            problems.push(format!("steps committed twice: {repeated:?}"));
        }
        if loans.contains_key(&format!("{id}#dup")) {
            problems.push("two loans".into());
        }
        match (s2.as_str(), loan.map(|l| l.1.as_str())) {
            ("FUNDS_RESERVED", Some("RESERVED")) => o.count("FUNDS_RESERVED once, one live loan"),
            ("FUNDS_RESERVED", other) => {
                problems.push(format!("FUNDS_RESERVED over loan {other:?}"))
            }
            ("DECLINED" | "FUNDING_REJECTED" | "KYC_REJECTED", None | Some("VOID")) => {
                o.count(format!("{s2} (no live loan)"))
            }
            (s, l) => problems.push(format!("ended {s} with loan {l:?}")),
        }
        if !problems.is_empty() {
            o.count(format!("✗ {}", problems.join("; ")));
            o.broke(format!(
                "{id}: {} (history {history:?})",
                problems.join("; ")
            ));
        }
    }
    // Every journey stalled at a pause point longer than its lease (each
    // step's commit waits 1.5 s, the lease lasts 1 s), so every lease must
    // have changed hands: a journey still at epoch 1 means the pause points
    // stopped firing and the scenario raced nothing. Leases without an epoch
    // (an older binary) cannot tell, and are only reported.
    let mut taken_over = 0;
    let mut epochs = true;
    for id in &all {
        let epoch: Result<(i64,), _> =
            sqlx::query_as("SELECT lease_epoch FROM applications WHERE application_id = $1")
                .bind(id)
                .fetch_one(&ctx.mesh.acq_db)
                .await;
        match epoch {
            Ok((e,)) if e > 1 => taken_over += 1,
            Ok((e,)) => {
                o.count("✗ lease never taken over");
                o.broke(format!(
                    "{id}: lease_epoch {e}: its lease was never taken over (did the pause points fire?)"
                ));
            }
            Err(_) => epochs = false,
        }
    }
    if epochs {
        o.note(
            "journeys whose lease was taken over (lease_epoch > 1)",
            taken_over,
        );
    } else {
        o.note(
            "lease epochs not stored (take-overs not counted)",
            all.len(),
        );
    }
    c.restart("acquisition-1", &[]).await;
    c.restart("acquisition-2", &[]).await;
    o
}

// ---------------------------------------------------------------------------
// 6. RETRY racing ABANDON.

const S6: (&str, &str) = (
    "6. RETRY vs ABANDON on a parked journey",
    "journeys parked at the funding step (acquisition-1 reaches funding through a proxy that, \
     in three batches out of four, drops the answers, so those hold a live reservation, and in the \
     fourth forwards nothing); then ResumeApplication RETRY on one acquisition replica and \
     ABANDON on the other, at once",
);

async fn s6(
    c: &mut Cluster,
    ctx: &Ctx,
    people: &mut People,
    n: usize,
    rng: &mut StdRng,
) -> Outcome {
    let mut o = Outcome {
        iterations: n,
        ..Default::default()
    };
    let proxy = FaultProxy::start(c.port("funding-1")).await;
    let via = proxy.url();
    c.restart(
        "acquisition-1",
        &[
            ("COLEND_FUNDING_URL", via.as_str()),
            ("COLEND_CALL_TIMEOUT_MS", "2000"),
            ("COLEND_JOURNEY_STEP_ATTEMPTS", "2"),
            ("COLEND_JOURNEY_BACKOFF_MS", "50"),
            ("COLEND_PAUSE_AT", "acquisition.journey.before_funding:1500"),
        ],
    )
    .await;
    let owner = AcquisitionServiceClient::new(
        colend_platform::grpc::channel(&c.url("acquisition-1")).expect("channel"),
    );
    let mut parked = Vec::new();
    let mut b = 0;
    while parked.len() < n {
        let k = 20.min(n - parked.len());
        let batch = people.good(k);
        let subs = batch.iter().enumerate().map(|(i, bw)| {
            let client = owner.clone();
            let p = ctx.mesh.partner.clone();
            let msg = colend::demo::application(
                format!("race-s6-{b}-{i}"),
                format!("ref-s6-{b}-{i}"),
                bw,
            );
            async move {
                rpc!(client, submit_application, as_partner(&p, msg.clone()))
                    .expect("submits")
                    .application
                    .map(|a| a.application_id)
                    .unwrap_or_default()
            }
        });
        let ids: Vec<String> = futures::future::join_all(subs).await;
        // Past the credit step (which also reads funding), then cut.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = ctx.mesh.statuses(&ids).await;
            if s.values().all(|v| v != "SUBMITTED" && v != "KYC_PASSED") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "journeys never reached the funding step"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Three batches in four lose funding's answers (the reservation is
        // made: the journey parks holding it), the fourth reaches nothing.
        proxy.set(if b % 4 == 3 {
            Mode::BlackHole
        } else {
            Mode::DropResponses
        });
        let s = ctx.mesh.settled(&ids, 60).await;
        proxy.set(Mode::Reset);
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.set(Mode::Pass(Duration::ZERO));
        for id in ids {
            match s.get(&id).map(String::as_str) {
                Some("PARKED") => parked.push(id),
                other => o.count(format!("not parked: {}", other.unwrap_or("?"))),
            }
        }
        b += 1;
        assert!(b < n + 10, "journeys keep ending without parking");
    }
    let loans_before = ctx.mesh.loans_of(&parked).await;
    let with_reservation = parked
        .iter()
        .filter(|id| loans_before.get(*id).is_some_and(|l| l.1 == "RESERVED"))
        .count();
    o.note("parked holding a live reservation", with_reservation);
    // The race that matters is over a live reservation: most journeys must
    // park holding one (every DropResponses batch does).
    if with_reservation * 2 < parked.len() {
        o.broke(format!(
            "only {with_reservation} of {} parked journeys held a live reservation: the race was mostly over nothing",
            parked.len()
        ));
    }
    let plan: Vec<usize> = (0..parked.len()).map(|_| rng.random_range(0..2)).collect();
    let answers = futures::future::join_all(parked.iter().zip(plan).map(|(id, first)| {
        let mesh = ctx.mesh.clone();
        let id = id.clone();
        async move {
            let resume = |replica: usize, action: acq::ResumeAction| {
                let client = mesh.acq(replica);
                let msg = acq::ResumeApplicationRequest {
                    request_id: format!("race-{}-{id}", action.as_str_name()),
                    application_id: id.clone(),
                    action: action as i32,
                    operator: "ops.race".into(),
                    reason: "race".into(),
                };
                async move { rpc!(client, resume_application, as_bank(msg.clone())) }
            };
            let (r, a) = tokio::join!(
                resume(first, acq::ResumeAction::Retry),
                resume(first + 1, acq::ResumeAction::Abandon)
            );
            (id.clone(), r, a)
        }
    }))
    .await;
    let statuses = ctx.mesh.settled(&parked, 120).await;
    let loans = ctx.mesh.loans_of(&parked).await;
    for (id, r, a) in answers {
        let status = statuses.get(&id).cloned().unwrap_or_default();
        let loan = loans.get(&id).map(|l| l.1.clone());
        let described = format!(
            "RETRY {}, ABANDON {}, now {status} over loan {loan:?}",
            r.as_ref().map(|_| "OK".to_string()).unwrap_or_else(refusal),
            a.as_ref().map(|_| "OK".to_string()).unwrap_or_else(refusal),
        );
        let mut problems = Vec::new();
        match (&r, &a) {
            (Ok(_), Ok(_)) => problems.push("both RETRY and ABANDON answered OK".to_string()),
            (Err(_), Err(_)) => problems.push("both refused".to_string()),
            (Ok(_), Err(e)) | (Err(e), Ok(_)) if !is_invalid_state(e) => {
                problems.push("the loser's refusal is not INVALID_STATE".to_string())
            }
            _ => {}
        }
        let held = loans_before.get(&id).is_some_and(|l| l.1 == "RESERVED");
        let over = if held {
            "over a live reservation"
        } else {
            "without a reservation"
        };
        match (status.as_str(), loan.as_deref()) {
            ("FUNDS_RESERVED", Some("RESERVED")) if r.is_ok() => {
                o.count(format!("RETRY won {over}: FUNDS_RESERVED over a live loan"))
            }
            ("FAILED", Some("VOID")) if a.is_ok() && held => {
                o.count("ABANDON won over a live reservation: FAILED, the loan voided")
            }
            ("FAILED", None | Some("VOID")) if a.is_ok() && !held => {
                o.count("ABANDON won without a reservation: FAILED, no live loan")
            }
            ("FUNDING_REJECTED", _) if r.is_ok() && a.is_err() => problems.push(
                "RETRY won, yet the refused ABANDON closed the application to funding".into(),
            ),
            ("FUNDS_RESERVED", l) => problems.push(format!("FUNDS_RESERVED over {l:?}")),
            ("PARKED", Some("RESERVED")) | ("FAILED", Some("RESERVED")) => {
                problems.push("a closed journey holds a live reservation".into())
            }
            _ => problems.push("the outcome disagrees with the answers".into()),
        }
        if !problems.is_empty() {
            o.count(format!("✗ {}", problems.join("; ")));
            o.broke(format!("{id}: {} ({described})", problems.join("; ")));
        }
    }
    c.restart("acquisition-1", &[]).await;
    drop(proxy);
    o
}

// ---------------------------------------------------------------------------
// 7. A void or a disbursement under a parked or approved journey.

/// The reservations' lifetime on funding-1 while scenario 7 runs, seconds.
const S7_TTL_SECS: &str = "8";

const S7: (&str, &str) = (
    "7. void or disbursement under a parked or approved journey",
    "(a) journeys parked at APPROVED holding a reservation (acquisition-1 reaches funding-1, \
     reservations living 8 s, through a proxy that drops the answers); then the bank releases \
     the loan by id or disburses it, before the operator's RETRY or at the same moment, or the \
     reservation expires and is swept before the RETRY; RETRY on either acquisition replica. \
     (b) at the same time, journeys on acquisition-2 stalled 1.5 s before each step's commit: \
     the loan is released or disbursed as soon as it is reserved, while the application is \
     still APPROVED, so funding's event reaches acquisition before the journey commits",
);

/// What befalls the loan of a scenario 7 journey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Parked: released by loan id, then RETRY.
    Release,
    /// Parked: released by loan id and RETRY at the same moment.
    ReleaseWithRetry,
    /// Parked: disbursed, then RETRY.
    Disburse,
    /// Parked: disbursed and RETRY at the same moment.
    DisburseWithRetry,
    /// Parked: left to expire; RETRY once the sweep voided it.
    Expire,
    /// Approved, its owner stalled before the commit: released.
    ReleaseInWindow,
    /// Approved, its owner stalled before the commit: disbursed.
    DisburseInWindow,
}

impl Act {
    const PARKED: [Act; 5] = [
        Act::Release,
        Act::ReleaseWithRetry,
        Act::Disburse,
        Act::DisburseWithRetry,
        Act::Expire,
    ];

    fn name(self) -> &'static str {
        match self {
            Act::Release => "parked, released, then RETRY",
            Act::ReleaseWithRetry => "parked, released with RETRY at once",
            Act::Disburse => "parked, disbursed, then RETRY",
            Act::DisburseWithRetry => "parked, disbursed with RETRY at once",
            Act::Expire => "parked, expired and swept, then RETRY",
            Act::ReleaseInWindow => "approved, released before the journey's commit",
            Act::DisburseInWindow => "approved, disbursed before the journey's commit",
        }
    }

    /// The loan is voided or disbursed before the RETRY is sent: the
    /// journey, retried, never records FUNDS_RESERVED.
    fn before_retry(self) -> bool {
        matches!(self, Act::Release | Act::Disburse | Act::Expire)
    }

    fn disburses(self) -> bool {
        matches!(
            self,
            Act::Disburse | Act::DisburseWithRetry | Act::DisburseInWindow
        )
    }
}

/// One journey of scenario 7 and what was sent for it.
struct S7Race {
    app: String,
    loan_id: String,
    act: Act,
    /// The bank's call (release or disbursement), if one was sent.
    bank: Option<Result<(), tonic::Status>>,
    /// The operator's RETRY, if one was sent.
    retry: Option<Result<(), tonic::Status>>,
    /// The bank's call landed while the application was still APPROVED.
    in_window: bool,
}

async fn s7(
    c: &mut Cluster,
    ctx: &Ctx,
    people: &mut People,
    n: usize,
    rng: &mut StdRng,
) -> Outcome {
    let mut o = Outcome::default();
    let (na, nb) = (n.div_ceil(2), n / 2);
    let proxy = FaultProxy::start(c.port("funding-1")).await;
    let via = proxy.url();
    c.restart(
        "funding-1",
        &[("COLEND_FUNDING_RESERVATION_TTL_SECS", S7_TTL_SECS)],
    )
    .await;
    c.restart(
        "acquisition-1",
        &[
            ("COLEND_FUNDING_URL", via.as_str()),
            ("COLEND_CALL_TIMEOUT_MS", "2000"),
            ("COLEND_JOURNEY_STEP_ATTEMPTS", "2"),
            ("COLEND_JOURNEY_BACKOFF_MS", "50"),
            ("COLEND_PAUSE_AT", "acquisition.journey.before_funding:2500"),
        ],
    )
    .await;
    c.restart(
        "acquisition-2",
        &[("COLEND_PAUSE_AT", "acquisition.journey.before_commit:1500")],
    )
    .await;
    let owner = AcquisitionServiceClient::new(
        colend_platform::grpc::channel(&c.url("acquisition-1")).expect("channel"),
    );
    let plan_a: Vec<(Act, usize, usize)> = (0..na)
        .map(|i| {
            (
                Act::PARKED[i % Act::PARKED.len()],
                rng.random_range(0..2),
                rng.random_range(0..2),
            )
        })
        .collect();
    let plan_b: Vec<(Act, usize)> = (0..nb)
        .map(|i| {
            let act = if i % 2 == 0 {
                Act::ReleaseInWindow
            } else {
                Act::DisburseInWindow
            };
            (act, rng.random_range(0..2))
        })
        .collect();
    let (batch_a, batch_b) = (people.good(na), people.good(nb));
    let (mut oa, mut ob) = (Outcome::default(), Outcome::default());
    let (parked, approved) = tokio::join!(
        s7_parked(ctx, &owner, &proxy, batch_a, plan_a, &mut oa),
        s7_window(ctx, batch_b, plan_b, &mut ob),
    );
    for x in [oa, ob] {
        for (k, v) in x.tally {
            *o.tally.entry(k).or_default() += v;
        }
        o.broken += x.broken;
        o.samples.extend(x.samples);
        o.samples.truncate(5);
    }
    if parked.len() * 2 < na {
        o.broke(format!(
            "only {} of {na} journeys parked holding a reservation",
            parked.len()
        ));
    }
    let in_window = approved.iter().filter(|r| r.in_window).count();
    o.note(
        "(b): the bank's call landed while the application was APPROVED",
        in_window,
    );
    if in_window * 2 < nb {
        o.broke(format!(
            "only {in_window} of {nb} releases or disbursements landed before the journey's commit"
        ));
    }
    let races: Vec<S7Race> = parked.into_iter().chain(approved).collect();
    o.iterations = races.len();
    s7_judge(ctx, &races, &mut o).await;
    c.restart("acquisition-1", &[]).await;
    c.restart("acquisition-2", &[]).await;
    c.restart("funding-1", &[]).await;
    drop(proxy);
    o
}

/// Releases (by loan id) or disburses a loan on funding replica `replica`;
/// an accepted disbursement is booked in the model.
async fn bank_call(
    ctx: &Ctx,
    replica: usize,
    loan_id: &str,
    disburse: bool,
) -> Result<(), tonic::Status> {
    if disburse {
        let l = ctx.mesh.disburse(replica, loan_id, today()).await?;
        ctx.disbursed(&l);
        return Ok(());
    }
    let f = ctx.mesh.fun(replica);
    let p = ctx.mesh.partner.clone();
    let msg = fund::ReleaseFundingRequest {
        request_id: format!("race-s7-release-{loan_id}"),
        loan_id: loan_id.to_string(),
        reason: "the bank withdrew the offer".into(),
        application_id: String::new(),
    };
    rpc!(f, release_funding, internal(&p, msg.clone())).map(|_| ())
}

async fn retry(ctx: &Ctx, replica: usize, id: &str) -> Result<(), tonic::Status> {
    let client = ctx.mesh.acq(replica);
    let msg = acq::ResumeApplicationRequest {
        request_id: format!("race-s7-retry-{id}"),
        application_id: id.to_string(),
        action: acq::ResumeAction::Retry as i32,
        operator: "ops.race".into(),
        reason: "race".into(),
    };
    rpc!(client, resume_application, as_bank(msg.clone())).map(|_| ())
}

/// (a): journeys parked at APPROVED holding a reservation, then a release,
/// a disbursement or the expiry, and the RETRY.
async fn s7_parked(
    ctx: &Ctx,
    owner: &AcquisitionServiceClient<Channel>,
    proxy: &FaultProxy,
    batch: Vec<colend::borrowers::Borrower>,
    plan: Vec<(Act, usize, usize)>,
    o: &mut Outcome,
) -> Vec<S7Race> {
    let subs = batch.iter().enumerate().map(|(i, bw)| {
        let client = owner.clone();
        let p = ctx.mesh.partner.clone();
        let msg = colend::demo::application(format!("race-s7a-{i}"), format!("ref-s7a-{i}"), bw);
        async move {
            rpc!(client, submit_application, as_partner(&p, msg.clone()))
                .expect("submits")
                .application
                .map(|a| a.application_id)
                .unwrap_or_default()
        }
    });
    let ids: Vec<String> = futures::future::join_all(subs).await;
    // Past the credit step (which reads funding too), then cut.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ctx.mesh.statuses(&ids).await;
        if s.values().all(|v| v != "SUBMITTED" && v != "KYC_PASSED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "journeys never reached the funding step"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set(Mode::DropResponses);
    let statuses = ctx.mesh.settled(&ids, 60).await;
    proxy.set(Mode::Reset);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Mode::Pass(Duration::ZERO));
    let loans = ctx.mesh.loans_of(&ids).await;
    let mut raced = Vec::new();
    for (id, (act, bank_replica, acq_replica)) in ids.into_iter().zip(plan) {
        let status = statuses.get(&id).cloned().unwrap_or_default();
        match loans.get(&id) {
            Some((loan, s)) if status == "PARKED" && s == "RESERVED" => {
                raced.push((id, loan.clone(), act, bank_replica, acq_replica))
            }
            _ => o.count(format!("(a) not parked holding a reservation: {status}")),
        }
    }
    let races = raced
        .into_iter()
        .map(|(id, loan_id, act, bank_replica, acq_replica)| async move {
            let (bank, retried) = match act {
                Act::Release | Act::Disburse => {
                    let b = bank_call(ctx, bank_replica, &loan_id, act.disburses()).await;
                    (Some(b), retry(ctx, acq_replica, &id).await)
                }
                Act::ReleaseWithRetry | Act::DisburseWithRetry => {
                    let (b, r) = tokio::join!(
                        bank_call(ctx, bank_replica, &loan_id, act.disburses()),
                        retry(ctx, acq_replica, &id)
                    );
                    (Some(b), r)
                }
                _ => {
                    let l = ctx.mesh.loan(&loan_id).await;
                    let expires = l
                        .reservation_expires_at
                        .map(|t| t.seconds * 1000 + t.nanos as i64 / 1_000_000)
                        .unwrap_or(0);
                    let wait =
                        (expires + 1_500 - colend_platform::time::now_millis()).clamp(0, 30_000);
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                    (None, retry(ctx, acq_replica, &id).await)
                }
            };
            S7Race {
                app: id,
                loan_id,
                act,
                bank,
                retry: Some(retried),
                in_window: false,
            }
        });
    futures::future::join_all(races).await
}

/// (b): journeys on acquisition-2, stalled before each step's commit; each
/// loan released or disbursed as soon as it is reserved.
async fn s7_window(
    ctx: &Ctx,
    batch: Vec<colend::borrowers::Borrower>,
    plan: Vec<(Act, usize)>,
    o: &mut Outcome,
) -> Vec<S7Race> {
    let client = ctx.mesh.acq(1);
    let subs = batch.iter().enumerate().map(|(i, bw)| {
        let client = client.clone();
        let p = ctx.mesh.partner.clone();
        let msg = colend::demo::application(format!("race-s7b-{i}"), format!("ref-s7b-{i}"), bw);
        async move {
            rpc!(client, submit_application, as_partner(&p, msg.clone()))
                .expect("submits")
                .application
                .map(|a| a.application_id)
                .unwrap_or_default()
        }
    });
    let ids: Vec<String> = futures::future::join_all(subs).await;
    let mut plan: HashMap<String, (Act, usize)> = ids.iter().cloned().zip(plan).collect();
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !plan.is_empty() {
        let pending: Vec<String> = plan.keys().cloned().collect();
        let loans = ctx.mesh.loans_of(&pending).await;
        let statuses = ctx.mesh.statuses(&pending).await;
        for id in pending {
            let status = statuses.get(&id).map(String::as_str).unwrap_or("");
            match loans.get(&id) {
                Some((loan_id, s)) if s == "RESERVED" => {
                    let Some((act, replica)) = plan.remove(&id) else {
                        continue;
                    };
                    let (ctx, loan_id) = (ctx.clone(), loan_id.clone());
                    tasks.push(tokio::spawn(async move {
                        let bank = bank_call(&ctx, replica, &loan_id, act.disburses()).await;
                        let now = ctx.mesh.statuses(std::slice::from_ref(&id)).await;
                        let in_window = now.get(&id).is_some_and(|s| s == "APPROVED");
                        S7Race {
                            app: id,
                            loan_id,
                            act,
                            bank: Some(bank),
                            retry: None,
                            in_window,
                        }
                    }));
                }
                _ if !matches!(status, "" | "SUBMITTED" | "KYC_PASSED" | "APPROVED") => {
                    plan.remove(&id);
                    o.count(format!(
                        "(b) ended {status} without a live loan (not raced)"
                    ));
                }
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} journeys never reserved funds",
            plan.len()
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => out.push(r),
            Err(e) => o.broke(format!("a race task failed: {e}")),
        }
    }
    out
}

/// Once every journey settled and funding's events reached acquisition:
/// each application agrees with its loan (a VOID loan: FUNDING_REJECTED,
/// the borrower released; a disbursed one: DISBURSED), and a journey whose
/// loan was voided or disbursed before its RETRY never recorded
/// FUNDS_RESERVED.
async fn s7_judge(ctx: &Ctx, races: &[S7Race], o: &mut Outcome) {
    let ids: Vec<String> = races.iter().map(|r| r.app.clone()).collect();
    let _ = ctx.mesh.settled(&ids, 60).await;
    let _ = colend::invariants::settle(&ctx.mesh.backends, 60).await;
    let apps = ctx.mesh.applications(&ids).await;
    let loans = ctx.mesh.loans_of(&ids).await;
    for r in races {
        let (status, _) = apps.get(&r.app).cloned().unwrap_or_default();
        let loan = loans.get(&r.app).map(|l| l.1.clone()).unwrap_or_default();
        let history: Vec<String> = sqlx::query_as::<_, (String,)>(
            "SELECT status FROM application_events WHERE application_id = $1 ORDER BY occurred_at, event_id",
        )
        .bind(&r.app)
        .fetch_all(&ctx.mesh.acq_db)
        .await
        .expect("reads history")
        .into_iter()
        .map(|e| e.0)
        .collect();
        let (in_flight,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM inflight_borrowers WHERE application_id = $1")
                .bind(&r.app)
                .fetch_one(&ctx.mesh.acq_db)
                .await
                .expect("reads the borrowers in flight");
        let answer = |x: &Option<Result<(), tonic::Status>>| match x {
            None => "-".to_string(),
            Some(Ok(())) => "OK".to_string(),
            Some(Err(s)) => refusal(s),
        };
        let mut problems = Vec::new();
        match (loan.as_str(), status.as_str()) {
            ("VOID", "FUNDING_REJECTED") if in_flight == 0 => {}
            ("VOID", "FUNDING_REJECTED") => problems.push("the borrower is still in flight".into()),
            ("DISBURSED", "DISBURSED") => {}
            (l, s) => problems.push(format!("the application is {s} over a {l} loan")),
        }
        if r.act.before_retry() && history.iter().any(|s| s == "FUNDS_RESERVED") {
            problems.push("FUNDS_RESERVED recorded after the loan was voided or disbursed".into());
        }
        match (&r.retry, r.act.disburses()) {
            (None | Some(Ok(())), _) => {}
            // The disbursement's event may reach the parked application
            // first (PARKED → DISBURSED): nothing left to retry.
            (Some(Err(e)), true) if is_invalid_state(e) => {}
            (Some(Err(e)), _) => problems.push(format!("RETRY refused: {}", refusal(e))),
        }
        match (&r.bank, r.act.disburses()) {
            (None | Some(Ok(())), _) => {}
            // Past its expiry (a slow park) the reservation cannot be disbursed.
            (Some(Err(e)), true) if is_invalid_state(e) && loan == "VOID" => {
                o.count("the disbursement came after the expiry (refused)")
            }
            (Some(Err(e)), _) => problems.push(format!("the bank's call refused: {}", refusal(e))),
        }
        if problems.is_empty() {
            o.count(format!(
                "{}{}: {status} over a {loan} loan",
                r.act.name(),
                if r.act.before_retry() || r.retry.is_none() {
                    String::new()
                } else {
                    format!(" (RETRY {})", answer(&r.retry))
                }
            ));
        } else {
            o.count(format!("✗ {}", r.act.name()));
            o.broke(format!(
                "{} / {} ({}; bank {}, RETRY {}): {} (history {history:?})",
                r.app,
                r.loan_id,
                r.act.name(),
                answer(&r.bank),
                answer(&r.retry),
                problems.join("; ")
            ));
        }
    }
}

// ---------------------------------------------------------------------------

fn write_report(report: &Report, seed: u64, name: &str) {
    let md = report.markdown(seed, &cluster::binary());
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, &md).expect("writes the report");
    if let Ok(p) = std::env::var("COLEND_CONCURRENCY_REPORT") {
        let p = if name.contains("sqlite") {
            format!("{p}.sqlite")
        } else {
            p
        };
        std::fs::write(p, &md).expect("writes the report");
    }
    eprintln!("{md}");
}

fn verdict(report: &Report, seed: u64) {
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "the concurrency suite broke (COLEND_RACE_SEED={seed}):\n{}",
        failures.join("\n")
    );
}

/// The scenarios to run (`COLEND_RACE_SCENARIOS`, e.g. "1,2"; default all).
fn selected(k: u8) -> bool {
    match std::env::var("COLEND_RACE_SCENARIOS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|x| x.trim() == k.to_string()),
        _ => true,
    }
}

/// When a scenario starts, and the ledger then.
async fn started(ctx: &Ctx) -> (Instant, Ledger) {
    ctx.ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .0
        .clear();
    (Instant::now(), ctx.mesh.trial_balance().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_on_postgres_with_replicas() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = seed();
    let n = iterations();
    eprintln!("[concurrency] PostgreSQL: seed {seed}, {n} iterations");
    let mut c = Cluster::new(&[]).await.start().await;
    let mesh = Mesh::new(
        &[c.url("acquisition-1"), c.url("acquisition-2")],
        &[c.url("funding-1"), c.url("funding-2")],
        c.backends(),
    )
    .await;
    mesh.setup().await;
    let ctx = Ctx {
        mesh,
        ledger: Arc::default(),
    };
    let mut people = People::new(seed, n * 8);
    let mut report = Report::default();
    const PG: &str = "PostgreSQL, 2 × acquisition, 2 × funding";
    let rng = |k: u64| StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(k));
    let few = (n / 3).max(1);

    if selected(1) {
        // Expiry races against a short TTL on both funding replicas.
        let short = [(
            "COLEND_FUNDING_RESERVATION_TTL_SECS",
            cluster::SHORT_TTL_SECS,
        )];
        c.restart("funding-1", &short).await;
        c.restart("funding-2", &short).await;
        let t = started(&ctx).await;
        let o = s1(&ctx, &mut people, n, &mut rng(1)).await;
        finish(&mut report, &ctx, PG, S1, o, t).await;
        c.restart("funding-1", &[]).await;
        c.restart("funding-2", &[]).await;
    }
    if selected(2) {
        let t = started(&ctx).await;
        let o = s2(&ctx, &mut people, n, &mut rng(2)).await;
        finish(&mut report, &ctx, PG, S2, o, t).await;
    }
    if selected(3) {
        let t = started(&ctx).await;
        let o = s3(&ctx, &mut people, n, &mut rng(3)).await;
        finish(&mut report, &ctx, PG, S3, o, t).await;
    }
    if selected(4) {
        let t = started(&ctx).await;
        let o = s4(&ctx, &mut people, n, &mut rng(4)).await;
        finish(&mut report, &ctx, PG, S4, o, t).await;
    }
    if selected(5) {
        let t = started(&ctx).await;
        let o = s5(&mut c, &ctx, &mut people, few, &mut rng(5)).await;
        finish(&mut report, &ctx, PG, S5, o, t).await;
    }
    if selected(6) {
        let t = started(&ctx).await;
        let o = s6(&mut c, &ctx, &mut people, few, &mut rng(6)).await;
        finish(&mut report, &ctx, PG, S6, o, t).await;
    }
    if selected(7) {
        let t = started(&ctx).await;
        let o = s7(&mut c, &ctx, &mut people, few, &mut rng(7)).await;
        finish(&mut report, &ctx, PG, S7, o, t).await;
    }
    write_report(&report, seed, "concurrency.md");
    c.stop().await;
    verdict(&report, seed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_on_sqlite() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = seed();
    let n = (iterations() / 4).max(1);
    eprintln!("[concurrency] SQLite: seed {seed}, {n} iterations");
    let up = Embedded::start().await;
    let mesh = Mesh::new(
        std::slice::from_ref(&up.url),
        std::slice::from_ref(&up.url),
        up.backends(),
    )
    .await;
    mesh.setup().await;
    let ctx = Ctx {
        mesh,
        ledger: Arc::default(),
    };
    let mut people = People::new(seed.wrapping_add(1), n * 8);
    let mut report = Report::default();
    const SQ: &str = "SQLite, `colend up`";
    let rng = |k: u64| StdRng::seed_from_u64(seed.wrapping_mul(37).wrapping_add(k));
    for (k, scenario) in [(1u8, S1), (2, S2), (3, S3), (4, S4)] {
        if !selected(k) {
            continue;
        }
        let t = started(&ctx).await;
        let mut r = rng(k as u64);
        let o = match k {
            1 => s1(&ctx, &mut people, n, &mut r).await,
            2 => s2(&ctx, &mut people, n, &mut r).await,
            3 => s3(&ctx, &mut people, n, &mut r).await,
            _ => s4(&ctx, &mut people, n, &mut r).await,
        };
        finish(&mut report, &ctx, SQ, scenario, o, t).await;
    }
    write_report(&report, seed, "concurrency-sqlite.md");
    up.stop().await;
    verdict(&report, seed);
}
