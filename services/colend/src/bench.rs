//! `colend bench`: the load harness. Drives the whole journey (submit → KYC →
//! credit → funds reserved, watched by the partner) at a fixed arrival rate
//! or as fast as a number of workers can, and measures, in the same run, a
//! no-op call (grpc.health.v1 Check through the same server stack) as the
//! ceiling, so figures can be read as ratios on a noisy machine.
use crate::borrowers::{self, Plant};
use crate::demo::{Clients, application, request, setup, status_name, watch};
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::funding::v1 as fund;
use colend_contracts::funding::v1::funding_service_client::FundingServiceClient;
use colend_contracts::kyc::v1 as kyc;
use colend_contracts::kyc::v1::kyc_service_client::KycServiceClient;
use colend_contracts::reconciliation::v1::reconciliation_service_client::ReconciliationServiceClient;
use colend_platform::grpc::traced_channel;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic_types::StatusExt;

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// The mesh's address (all five services; `colend up`, or acquisition
    /// with the others behind it).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// Applications started per second (open loop). Without it: as fast as
    /// --concurrency workers go (closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to apply load.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Workers (closed loop), or most journeys in flight (open loop).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Partners the load is spread over (each has its own rate limit).
    #[arg(long, default_value_t = 4)]
    pub partners: usize,
    /// How long to measure the no-op ceiling.
    #[arg(long, default_value_t = 3)]
    pub ceiling_secs: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// What one unit of load is: `journey` (submit → final status, as the
    /// partner sees it), `reservations` (FundingService/ReserveFunding on one
    /// hot partner's quota, as acquisition calls it) or `kyc-cached` (a
    /// repeat KycService/CheckBorrower of one borrower, answered from the cache).
    #[arg(long, default_value = "journey")]
    pub scenario: Scenario,
    /// reservations: give the hot partner a total quota of exactly this many
    /// loans (each CNY 100,000.00, partner share 30%): the run then checks
    /// that exactly that many were reserved and none more (0: a quota too
    /// large to run out).
    #[arg(long, default_value_t = 0)]
    pub capacity_loans: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Journey,
    Reservations,
    KycCached,
}

/// Principal of each benchmark reservation, minor units (CNY 100,000.00).
const RESERVATION: i64 = 10_000_000;

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn latency(mut v: Vec<f64>) -> Latency {
    if v.is_empty() {
        return Latency::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Latency {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: v[v.len() - 1],
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub mode: String,
    pub duration_secs: f64,
    pub started: u64,
    pub completed: u64,
    /// Completed journeys a second.
    pub throughput: f64,
    /// Submit → final status, as the partner sees it.
    pub latency: Latency,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Open loop: arrivals not started because --concurrency were in flight.
    pub dropped: u64,
    pub statuses: BTreeMap<String, u64>,
    /// The no-op call at the same concurrency: calls a second and latency.
    pub ceiling_calls_per_sec: f64,
    pub ceiling_latency: Latency,
    /// reservations with --capacity-loans: loans reserved beyond the quota
    /// (must be 0), and whether the quota was used to the last loan.
    pub overbooked: Option<u64>,
    pub quota_exhausted: Option<bool>,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    errors: u64,
    samples: Vec<String>,
    statuses: BTreeMap<String, u64>,
}

/// Good borrowers without end: generated in chunks from successive seeds.
struct Borrowers {
    seed: u64,
    queue: Vec<borrowers::Borrower>,
}

impl Borrowers {
    fn next(&mut self) -> borrowers::Borrower {
        while self.queue.is_empty() {
            self.seed += 1;
            self.queue = borrowers::generate(2_000, self.seed, colend_platform::time::today())
                .into_iter()
                .filter(|b| b.plant == Plant::Good)
                .collect();
        }
        self.queue.pop().expect("a borrower")
    }
}

async fn ceiling(endpoint: &str, concurrency: usize, secs: u64) -> anyhow::Result<(f64, Latency)> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ch = colend_platform::grpc::channel(endpoint)?;
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut c = HealthClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                if c.check(HealthCheckRequest::default()).await.is_ok() {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, latency(all)))
}

/// One unit of load; its latency and outcome go into `tally`.
async fn unit(
    scenario: Scenario,
    c: &Clients,
    b: &borrowers::Borrower,
    id: String,
    tally: &Mutex<Tally>,
) {
    let t = Instant::now();
    let outcome = match scenario {
        Scenario::Journey => journey(c, b, id).await,
        Scenario::Reservations => reservation(c, id).await,
        Scenario::KycCached => kyc_check(c, b, id).await,
    };
    let mut g = tally.lock().unwrap_or_else(|e| e.into_inner());
    match outcome {
        Ok(status) => {
            g.latencies.push(t.elapsed().as_secs_f64() * 1e3);
            *g.statuses.entry(status).or_default() += 1;
        }
        Err(e) => {
            g.errors += 1;
            if g.samples.len() < 5 {
                g.samples.push(e);
            }
        }
    }
}

/// One journey: submit, then watch until the application's final status.
async fn journey(c: &Clients, b: &borrowers::Borrower, id: String) -> Result<String, String> {
    let mut acq = c.acquisition.clone();
    let submitted = acq
        .submit_application(request(
            application(id.clone(), id, b),
            Duration::from_secs(30),
            Some(&c.partner),
        ))
        .await;
    match submitted {
        Ok(r) => watch(c, r.into_inner().application.unwrap_or_default())
            .await
            .map(|a| status_name(a.status)),
        Err(s) => Err(format!("submit: {} {}", s.code(), s.message())),
    }
}

/// One reservation on the partner's quota, as acquisition makes it.
async fn reservation(c: &Clients, id: String) -> Result<String, String> {
    let msg = fund::ReserveFundingRequest {
        request_id: id.clone(),
        application_id: id.clone(),
        partner_id: c.partner.clone(),
        principal: Some(Money {
            minor_units: RESERVATION,
            currency_code: "CNY".into(),
        }),
        term_months: 12,
        annual_rate_bps: 1_000,
        repayment_method: RepaymentMethod::EqualInstalment as i32,
        borrower_key: id,
        annual_fee_bps: 0,
    };
    let req = colend_platform::grpc::request(msg, Duration::from_secs(30), Some(&c.partner));
    match c.funding.clone().reserve_funding(req).await {
        Ok(_) => Ok("RESERVED".into()),
        Err(s) if s.code() == tonic::Code::ResourceExhausted => Ok(s
            .get_error_details()
            .error_info()
            .and_then(|i| i.metadata.get("limit").cloned())
            .unwrap_or_else(|| "QUOTA_EXCEEDED".into())),
        Err(s) => Err(format!("reserve: {} {}", s.code(), s.message())),
    }
}

/// A KYC check of the borrower, as acquisition asks for it.
async fn kyc_check(c: &Clients, b: &borrowers::Borrower, id: String) -> Result<String, String> {
    let msg = kyc::CheckBorrowerRequest {
        request_id: id,
        partner_id: c.partner.clone(),
        person_name: b.person_name.clone(),
        resident_id: b.resident_id.clone(),
        mobile: b.mobile.clone(),
        business_name: b.business_name.clone(),
        credit_code: b.credit_code.clone(),
    };
    let req = colend_platform::grpc::request(msg, Duration::from_secs(30), Some(&c.partner));
    match c.kyc.clone().check_borrower(req).await {
        Ok(r) => Ok(if r.into_inner().check.is_some_and(|x| x.from_cache) {
            "FROM_CACHE".into()
        } else {
            "CHECKED".into()
        }),
        Err(s) => Err(format!("check: {} {}", s.code(), s.message())),
    }
}

/// Gives the hot partner a quota of exactly `loans` benchmark reservations.
async fn cap_quota(c: &Clients, loans: u64) -> anyhow::Result<()> {
    let portion = colend_funding::domain::split(RESERVATION, 3_000).partner;
    let cny = |m: i64| {
        Some(Money {
            minor_units: m,
            currency_code: "CNY".into(),
        })
    };
    let mut f = c.funding.clone();
    f.upsert_agreement(request(
        fund::UpsertAgreementRequest {
            request_id: format!("bench-quota-{}", c.partner),
            agreement: Some(fund::Agreement {
                partner_id: c.partner.clone(),
                partner_share_bps: 3_000,
                bank_rate_bps: 900,
                partner_rate_bps: 1_100,
                daily_quota: cny(portion * loans as i64),
                total_quota: cny(portion * loans as i64),
                effective_from: "2026-01-01".into(),
                penalty_rate_bps: 1_800,
                fee_partner_share_bps: 5_000,
                ..Default::default()
            }),
        },
        Duration::from_secs(30),
        None,
    ))
    .await?;
    Ok(())
}

pub async fn execute(args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.concurrency >= 1 && args.partners >= 1,
        "--concurrency and --partners must be at least 1"
    );
    let ch = traced_channel(&args.endpoint)?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut clients = Vec::new();
    for i in 0..args.partners {
        let c = Clients {
            acquisition: AcquisitionServiceClient::new(ch.clone()),
            funding: FundingServiceClient::new(ch.clone()),
            kyc: KycServiceClient::new(ch.clone()),
            recon: ReconciliationServiceClient::new(ch.clone()),
            partner: format!("bench-{}-{i}", &run[run.len() - 8..]),
            run: run.clone(),
        };
        setup(&c, 3_000).await?;
        clients.push(c);
        // Reservations all go to one hot partner's quota.
        if args.scenario == Scenario::Reservations {
            break;
        }
    }
    if args.scenario == Scenario::Reservations && args.capacity_loans > 0 {
        cap_quota(&clients[0], args.capacity_loans).await?;
    }
    // A repeat check: the first one fills the cache.
    let mut fixed = None;
    if args.scenario == Scenario::KycCached {
        let b = borrowers::generate(50, 1, colend_platform::time::today())
            .into_iter()
            .find(|b| b.plant == Plant::Good)
            .expect("a good borrower");
        kyc_check(&clients[0], &b, format!("bench-{run}-warm"))
            .await
            .map_err(|e| anyhow::anyhow!("warming the KYC cache: {e}"))?;
        fixed = Some(b);
    }
    let (ceiling_rate, ceiling_latency) =
        ceiling(&args.endpoint, args.concurrency, args.ceiling_secs).await?;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let scenario = args.scenario;
    let fixed = Arc::new(fixed);
    let people = Arc::new(Mutex::new(Borrowers {
        seed: colend_platform::time::now_millis() as u64,
        queue: Vec::new(),
    }));
    let until = Instant::now() + Duration::from_secs(args.duration_secs);
    let t0 = Instant::now();
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut dropped = 0u64;
    let next_id = {
        let started = started.clone();
        let run = run.clone();
        move || {
            let n = started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (n, format!("bench-{run}-{n}"))
        }
    };
    match args.rate {
        None => {
            let mut workers = Vec::new();
            for w in 0..args.concurrency {
                let (c, tally, people, next_id, fixed) = (
                    clients[w % clients.len()].clone(),
                    tally.clone(),
                    people.clone(),
                    next_id.clone(),
                    fixed.clone(),
                );
                workers.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        let b = match fixed.as_ref() {
                            Some(b) => b.clone(),
                            None => people.lock().unwrap_or_else(|e| e.into_inner()).next(),
                        };
                        let (_, id) = next_id();
                        unit(scenario, &c, &b, id, &tally).await;
                    }
                }));
            }
            for w in workers {
                w.await?;
            }
        }
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::new();
            while Instant::now() < until {
                tick.tick().await;
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    dropped += 1;
                    continue;
                };
                let b = match fixed.as_ref() {
                    Some(b) => b.clone(),
                    None => people.lock().unwrap_or_else(|e| e.into_inner()).next(),
                };
                let (n, id) = next_id();
                let (c, tally) = (clients[n as usize % clients.len()].clone(), tally.clone());
                tasks.push(tokio::spawn(async move {
                    unit(scenario, &c, &b, id, &tally).await;
                    drop(permit);
                }));
            }
            for t in tasks {
                t.await?;
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let g = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let completed = g.latencies.len() as u64;
    let reserved = g.statuses.get("RESERVED").copied().unwrap_or(0);
    let capped = args.scenario == Scenario::Reservations && args.capacity_loans > 0;
    Ok(Report {
        scenario: format!("{:?}", args.scenario),
        overbooked: capped.then(|| reserved.saturating_sub(args.capacity_loans)),
        quota_exhausted: capped.then_some(reserved == args.capacity_loans),
        mode: match args.rate {
            Some(r) => format!("fixed rate {r}/s, at most {} in flight", args.concurrency),
            None => format!("maximum, {} workers", args.concurrency),
        },
        duration_secs: elapsed,
        started: started.load(std::sync::atomic::Ordering::Relaxed),
        completed,
        throughput: completed as f64 / elapsed,
        latency: latency(g.latencies),
        errors: g.errors,
        error_samples: g.samples,
        dropped,
        statuses: g.statuses,
        ceiling_calls_per_sec: ceiling_rate,
        ceiling_latency,
    })
}

/// Runs the harness and prints its report; fails when any journey failed.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let r = execute(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("colend bench: {} for {:.1} s", r.mode, r.duration_secs);
        println!(
            "{}: {} started, {} completed, {:.1}/s; {} errors, {} dropped",
            match args.scenario {
                Scenario::Journey => "journeys",
                Scenario::Reservations => "reservations",
                Scenario::KycCached => "KYC checks",
            },
            r.started,
            r.completed,
            r.throughput,
            r.errors,
            r.dropped
        );
        println!(
            "latency ({}): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            match args.scenario {
                Scenario::Journey => "submit → final status",
                _ => "one call",
            },
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.p999_ms,
            r.latency.max_ms
        );
        if let (Some(over), Some(full)) = (r.overbooked, r.quota_exhausted) {
            println!(
                "quota of {} loans: {} overbooked; used to the last loan: {full}",
                args.capacity_loans, over
            );
        }
        for (s, n) in &r.statuses {
            println!("  {s:<20} {n}");
        }
        println!(
            "ceiling (no-op health check, same concurrency): {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
            r.ceiling_calls_per_sec, r.ceiling_latency.p50_ms, r.ceiling_latency.p99_ms
        );
        for e in &r.error_samples {
            println!("  error: {e}");
        }
    }
    anyhow::ensure!(r.errors == 0, "{} units failed", r.errors);
    anyhow::ensure!(
        r.overbooked.unwrap_or(0) == 0,
        "{} reservations beyond the quota",
        r.overbooked.unwrap_or(0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank_above() {
        let l = latency((1..=1000).map(f64::from).collect());
        assert_eq!(
            (l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms),
            (500.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(latency(vec![]).max_ms, 0.0);
        assert_eq!(latency(vec![7.0]).p999_ms, 7.0);
    }
}
