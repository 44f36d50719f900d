//! `colend bench`: the load harness. Drives the whole journey (submit → KYC →
//! credit → funds reserved, watched by the partner) at a fixed arrival rate
//! or as fast as a number of workers can, and measures, in the same run, a
//! no-op call (grpc.health.v1 Check through the same server stack) as the
//! ceiling, so figures can be read as ratios on a noisy machine.
use crate::borrowers::{self, Plant};
use crate::demo::{Clients, application, request, setup, status_name, watch};
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_contracts::funding::v1::funding_service_client::FundingServiceClient;
use colend_contracts::kyc::v1::kyc_service_client::KycServiceClient;
use colend_contracts::reconciliation::v1::reconciliation_service_client::ReconciliationServiceClient;
use colend_platform::grpc::traced_channel;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

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

/// One journey: submit, then watch until the application's final status.
async fn journey(c: &Clients, b: &borrowers::Borrower, id: String, tally: &Mutex<Tally>) {
    let t = Instant::now();
    let mut acq = c.acquisition.clone();
    let submitted = acq
        .submit_application(request(
            application(id.clone(), id, b),
            Duration::from_secs(30),
            Some(&c.partner),
        ))
        .await;
    let outcome = match submitted {
        Ok(r) => watch(c, r.into_inner().application.unwrap_or_default()).await,
        Err(s) => Err(format!("submit: {} {}", s.code(), s.message())),
    };
    let mut g = tally.lock().unwrap_or_else(|e| e.into_inner());
    match outcome {
        Ok(app) => {
            g.latencies.push(t.elapsed().as_secs_f64() * 1e3);
            *g.statuses.entry(status_name(app.status)).or_default() += 1;
        }
        Err(e) => {
            g.errors += 1;
            if g.samples.len() < 5 {
                g.samples.push(e);
            }
        }
    }
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
    }
    let (ceiling_rate, ceiling_latency) =
        ceiling(&args.endpoint, args.concurrency, args.ceiling_secs).await?;

    let tally = Arc::new(Mutex::new(Tally::default()));
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
                let (c, tally, people, next_id) = (
                    clients[w % clients.len()].clone(),
                    tally.clone(),
                    people.clone(),
                    next_id.clone(),
                );
                workers.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        let b = people.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let (_, id) = next_id();
                        journey(&c, &b, id, &tally).await;
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
                let b = people.lock().unwrap_or_else(|e| e.into_inner()).next();
                let (n, id) = next_id();
                let (c, tally) = (clients[n as usize % clients.len()].clone(), tally.clone());
                tasks.push(tokio::spawn(async move {
                    journey(&c, &b, id, &tally).await;
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
    Ok(Report {
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
            "journeys: {} started, {} completed, {:.1}/s; {} errors, {} dropped",
            r.started, r.completed, r.throughput, r.errors, r.dropped
        );
        println!(
            "latency (submit → final status): p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            r.latency.p50_ms, r.latency.p99_ms, r.latency.p999_ms, r.latency.max_ms
        );
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
    anyhow::ensure!(r.errors == 0, "{} journeys failed", r.errors);
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
