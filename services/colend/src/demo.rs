//! `colend demo`: acts as a partner and as the bank's core system against a
//! running mesh. Sets up the partner's agreement and the watchlists, takes
//! generated borrowers through the whole journey, books a disbursement and a
//! first repayment for every funded loan, reconciles both sides' records of
//! the day, and checks the money invariants on the way.
use crate::borrowers::{self, Borrower, Plant};
use colend_contracts::acquisition::v1 as acq;
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_contracts::common::v1::{Funder, Money};
use colend_contracts::funding::v1 as fund;
use colend_contracts::funding::v1::funding_service_client::FundingServiceClient;
use colend_contracts::kyc::v1 as kyc;
use colend_contracts::kyc::v1::kyc_service_client::KycServiceClient;
use colend_contracts::reconciliation::v1 as recon;
use colend_contracts::reconciliation::v1::reconciliation_service_client::ReconciliationServiceClient;
use colend_core::money::format_minor;
use colend_platform::auth::{Class, sign_request};
use colend_platform::grpc::{TracedChannel, traced_channel};

/// Retries a call while the service is unreachable, busy or restarting.
/// Every call the demo makes is idempotent (same request id, or a read),
/// so a retry never acts twice; backoff doubles to 2 s with full jitter,
/// for at most 90 s.
pub(crate) async fn retry<T, F, Fut>(mut f: F) -> Result<tonic::Response<T>, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let give_up = Instant::now() + Duration::from_secs(90);
    let mut cap = Duration::from_millis(50);
    loop {
        match f().await {
            Err(s) if retryable(&s) && Instant::now() < give_up => {
                let wait = rand::random_range(0..=cap.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                cap = (cap * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// A failure worth retrying with the same request id.
pub(crate) fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        s.code(),
        Unavailable | Aborted | DeadlineExceeded | Unknown | ResourceExhausted | Cancelled
    ) || (s.code() == Internal && s.message().contains("transport"))
}

/// `client.method(request(message, CALL, partner))`, retried (see [`retry`]).
macro_rules! call {
    ($client:expr, $method:ident, $msg:expr, $partner:expr) => {{
        let msg = $msg;
        let partner: Option<&str> = $partner;
        retry(|| {
            let mut client = $client.clone();
            let m = msg.clone();
            async move { client.$method(request(m, CALL, partner)).await }
        })
        .await
    }};
}

/// A call as the partner (`Some`) or as the bank core (`None`), with a
/// token signed by this process's key (`COLEND_AUTH_KEYS`, or the
/// development key that `colend up` also uses).
pub(crate) fn request<T>(
    message: T,
    timeout: Duration,
    partner: Option<&str>,
) -> tonic::Request<T> {
    let mut r = colend_platform::grpc::request(message, timeout, partner);
    match partner {
        Some(p) => sign_request(&mut r, Class::Partner, Some(p), p),
        None => sign_request(&mut r, Class::Bank, None, "colend-demo"),
    }
    r
}
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic_types::StatusExt;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Address of the mesh (all five services), or of acquisition when the
    /// services run as separate processes.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// Address of kyc, when not at --endpoint.
    #[arg(long)]
    pub kyc_endpoint: Option<String>,
    /// Address of funding, when not at --endpoint.
    #[arg(long)]
    pub funding_endpoint: Option<String>,
    /// Address of reconciliation, when not at --endpoint.
    #[arg(long)]
    pub reconciliation_endpoint: Option<String>,
    /// How many applications to submit.
    #[arg(long, default_value_t = 20)]
    pub applications: usize,
    /// Print the summary as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
    /// Partner id to act as (default: a new one per run, so each run's
    /// reconciliation covers exactly its own records).
    #[arg(long)]
    pub partner: Option<String>,
    /// Applications in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seed of the borrower generator (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Partner's share of each loan in the agreement the demo sets up, basis points.
    #[arg(long, default_value_t = 3_000)]
    pub partner_share_bps: i32,
}

const CNY: &str = "CNY";

/// Adds `v` to a money total of the summary; an overflow is an error.
fn add_to(total: &mut i64, v: i64) -> anyhow::Result<()> {
    *total = total
        .checked_add(v)
        .ok_or_else(|| anyhow::anyhow!("a funded total overflows"))?;
    Ok(())
}
const CALL: Duration = Duration::from_secs(10);

fn cny(minor: i64) -> Option<Money> {
    Some(Money {
        minor_units: minor,
        currency_code: CNY.into(),
    })
}

fn minor(m: &Option<Money>) -> i64 {
    m.as_ref().map(|m| m.minor_units).unwrap_or(0)
}

#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) acquisition: AcquisitionServiceClient<TracedChannel>,
    pub(crate) funding: FundingServiceClient<TracedChannel>,
    pub(crate) kyc: KycServiceClient<TracedChannel>,
    pub(crate) recon: ReconciliationServiceClient<TracedChannel>,
    pub(crate) partner: String,
    pub(crate) run: String,
}

/// One side's record, as the demo collects it.
#[derive(Clone, Debug)]
struct Rec {
    kind: recon::RecordKind,
    tx: String,
    loan: String,
    date: String,
    amount: i64,
    bank: i64,
    partner: i64,
}

impl Rec {
    fn to_pb(&self) -> recon::Record {
        recon::Record {
            kind: self.kind as i32,
            transaction_id: self.tx.clone(),
            loan_id: self.loan.clone(),
            value_date: self.date.clone(),
            amount: cny(self.amount),
            bank_portion: cny(self.bank),
            partner_portion: cny(self.partner),
            ..Default::default()
        }
    }
}

#[derive(Debug)]
enum Outcome {
    InvalidRejected,
    Terminal {
        status: String,
        reasons: Vec<String>,
    },
    Funded {
        status: String,
        principal: i64,
        bank: i64,
        partner: i64,
        repaid: i64,
        bank_recs: Vec<Rec>,
        partner_recs: Vec<Rec>,
        /// The same borrower applying again while owing its whole cap.
        repeat: Option<(String, Vec<String>)>,
        /// The bank's all-in annualised cost for the loan, basis points.
        apr_bps: i32,
    },
    Error(String),
}

#[derive(Debug, Default, Serialize)]
pub struct FundedSummary {
    pub loans: u64,
    pub principal_minor: i64,
    pub bank_minor: i64,
    pub partner_minor: i64,
    pub principal: String,
    pub bank: String,
    pub partner: String,
    pub min_partner_share_bps: Option<i64>,
    /// Lowest and highest all-in annualised cost of the funded loans, basis points.
    pub min_all_in_apr_bps: Option<i32>,
    pub max_all_in_apr_bps: Option<i32>,
    pub first_repayments_minor: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct ReconSummary {
    pub run_id: String,
    pub business_date: String,
    pub bank_records: i64,
    pub partner_records: i64,
    pub matched: i64,
    pub breaks: i64,
    /// colend's funding ledger records of the day (three-way).
    pub ledger_records: i64,
    /// Breaks between either side and colend's ledger.
    pub ledger_breaks: i64,
    pub partner_owes_bank_minor: i64,
    pub partner_owes_bank: String,
    pub settlement_verified: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub partner_id: String,
    pub applications: usize,
    pub seed: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub decline_reasons: BTreeMap<String, u64>,
    pub duplicates_rejected: u64,
    /// Second applications of borrowers already owing their whole cap, by status.
    pub repeat_applications: BTreeMap<String, u64>,
    pub funded: FundedSummary,
    pub reconciliation: ReconSummary,
    pub ledger_balanced: bool,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub invariant_violations: Vec<String>,
    pub elapsed_ms: u128,
}

fn reason_of(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

pub fn status_name(s: i32) -> String {
    acq::ApplicationStatus::try_from(s)
        .map(|x| {
            x.as_str_name()
                .trim_start_matches("APPLICATION_STATUS_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("{s}"))
}

fn submission(c: &Clients, i: usize, b: &Borrower, attempt: &str) -> acq::SubmitApplicationRequest {
    application(
        format!("demo-{}-{i}{attempt}", c.run),
        format!("risk-{}-{i}{attempt}", c.run),
        b,
    )
}

/// A partner's submission for borrower `b`.
pub fn application(
    request_id: String,
    reference: String,
    b: &Borrower,
) -> acq::SubmitApplicationRequest {
    acq::SubmitApplicationRequest {
        request_id,
        business: Some(acq::Business {
            name: b.business_name.clone(),
            credit_code: b.credit_code.clone(),
            years_in_business: b.years_in_business,
        }),
        legal_representative: Some(acq::LegalRepresentative {
            name: b.person_name.clone(),
            resident_id: b.resident_id.clone(),
            mobile: b.mobile.clone(),
        }),
        requested_amount: cny(b.requested),
        term_months: b.term_months,
        purpose: b.purpose,
        repayment_method: b.method,
        partner_score: b.partner_score,
        scenario: Some(acq::ScenarioData {
            annual_tax_revenue: cny(b.annual_tax_revenue),
            invoice_turnover_12m: cny(b.invoice_turnover),
            turnover_trend_bps: b.turnover_trend_bps,
            open_loans_elsewhere: b.open_loans_elsewhere,
        }),
        consent: Some(acq::Consent {
            scopes: vec![
                "identity".into(),
                "credit_report".into(),
                "tax_data".into(),
                "invoice_data".into(),
            ],
            granted_at: Some(colend_platform::time::timestamp(
                colend_platform::time::now_millis() - 60_000,
            )),
            channel: "app".into(),
            text_version: "2026.1".into(),
        }),
        partner_decision: Some(acq::PartnerDecision {
            approved: true,
            reference,
        }),
    }
}

/// Takes one borrower through the journey.
async fn one(
    c: Clients,
    i: usize,
    b: Borrower,
    today: String,
    dup: &std::sync::atomic::AtomicU64,
) -> Outcome {
    let acqc = c.acquisition.clone();
    let submitted = call!(
        acqc,
        submit_application,
        submission(&c, i, &b, ""),
        Some(c.partner.as_str())
    );
    let app = match submitted {
        Ok(r) => r.into_inner().application.unwrap_or_default(),
        Err(s) if s.code() == tonic::Code::InvalidArgument && b.plant == Plant::InvalidId => {
            return Outcome::InvalidRejected;
        }
        Err(s) => return Outcome::Error(format!("submit #{i}: {} {}", s.code(), s.message())),
    };
    // Every 50th good borrower is submitted twice while in flight: dedup must refuse it.
    if b.plant == Plant::Good && i % 50 == 3 {
        match call!(
            acqc,
            submit_application,
            submission(&c, i, &b, "-again"),
            Some(c.partner.as_str())
        ) {
            Err(s)
                if s.code() == tonic::Code::AlreadyExists
                    && reason_of(&s) == "DUPLICATE_APPLICATION" =>
            {
                dup.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            other => return Outcome::Error(format!("duplicate #{i} was not refused: {other:?}")),
        }
    }
    // Follow the application live until funds are reserved or it ends.
    let app = match watch(&c, app).await {
        Ok(a) => a,
        Err(e) => return Outcome::Error(format!("watch #{i}: {e}")),
    };
    let status = status_name(app.status);
    if status != "FUNDS_RESERVED" {
        return Outcome::Terminal {
            status,
            reasons: app.reason_codes,
        };
    }
    let apr_bps = app.decision.as_ref().map(|d| d.all_in_apr_bps).unwrap_or(0);
    let loan_id = app
        .funding
        .as_ref()
        .map(|f| f.loan_id.clone())
        .unwrap_or_default();
    // As the bank core: disburse, then book the first instalment.
    let fc = c.funding.clone();
    let disb_ref = format!("BNK-D-{}", &loan_id[5..]);
    let loan = match call!(
        fc,
        book_disbursement,
        fund::BookDisbursementRequest {
            request_id: format!("demo-disburse-{loan_id}"),
            loan_id: loan_id.clone(),
            value_date: today.clone(),
            bank_transaction_ref: disb_ref.clone(),
        },
        None
    ) {
        Ok(r) => r.into_inner().loan.unwrap_or_default(),
        Err(s) => return Outcome::Error(format!("disburse #{i}: {} {}", s.code(), s.message())),
    };
    // A borrower at its per-borrower cap applies again before repaying: the
    // bank must decline the second loan on the limit.
    let mut repeat = None;
    if b.plant == Plant::AtBorrowerCap {
        // Only once the partner sees the loan disbursed is the borrower free to apply again.
        wait_for(&c, &app.application_id, &["DISBURSED", "REPAYING"]).await;
        let again = call!(
            acqc,
            submit_application,
            submission(&c, i, &b, "-repeat"),
            Some(c.partner.as_str())
        );
        match again {
            Ok(r) => match watch(&c, r.into_inner().application.unwrap_or_default()).await {
                Ok(a) => repeat = Some((status_name(a.status), a.reason_codes)),
                Err(e) => return Outcome::Error(format!("repeat watch #{i}: {e}")),
            },
            Err(s) => return Outcome::Error(format!("repeat #{i}: {} {}", s.code(), s.message())),
        }
    }
    let first = loan.schedule.first().map(|x| minor(&x.total)).unwrap_or(0);
    let rep_ref = format!("BNK-R-{}-1", &loan_id[5..]);
    let rep = match call!(
        fc,
        book_repayment,
        fund::BookRepaymentRequest {
            request_id: format!("demo-repay-{loan_id}-1"),
            loan_id: loan_id.clone(),
            amount: cny(first),
            value_date: today.clone(),
            bank_transaction_ref: rep_ref.clone(),
        },
        None
    ) {
        Ok(r) => r.into_inner().repayment.unwrap_or_default(),
        Err(s) => return Outcome::Error(format!("repay #{i}: {} {}", s.code(), s.message())),
    };
    let part = |f: Funder, r: &fund::Repayment| -> i64 {
        r.allocations
            .iter()
            .filter(|a| a.funder == f as i32)
            .map(|a| minor(&a.amount))
            .sum()
    };
    let bank_recs = vec![
        Rec {
            kind: recon::RecordKind::Disbursement,
            tx: disb_ref.clone(),
            loan: loan_id.clone(),
            date: today.clone(),
            amount: minor(&loan.principal),
            bank: minor(&loan.bank_amount),
            partner: minor(&loan.partner_amount),
        },
        Rec {
            kind: recon::RecordKind::Repayment,
            tx: rep_ref.clone(),
            loan: loan_id.clone(),
            date: today.clone(),
            amount: minor(&rep.amount),
            bank: part(Funder::Bank, &rep),
            partner: part(Funder::Partner, &rep),
        },
    ];
    // As the partner: its own view of the loan.
    let theirs = match call!(
        fc,
        get_loan,
        fund::GetLoanRequest {
            loan_id: loan_id.clone(),
        },
        Some(c.partner.as_str())
    ) {
        Ok(r) => r.into_inner().loan.unwrap_or_default(),
        Err(s) => return Outcome::Error(format!("get loan #{i}: {} {}", s.code(), s.message())),
    };
    let mut partner_recs = vec![Rec {
        kind: recon::RecordKind::Disbursement,
        tx: theirs.disbursement_transaction_ref.clone(),
        loan: loan_id.clone(),
        date: theirs.disbursed_on.clone(),
        amount: minor(&theirs.principal),
        bank: minor(&theirs.bank_amount),
        partner: minor(&theirs.partner_amount),
    }];
    for r in &theirs.repayments {
        partner_recs.push(Rec {
            kind: recon::RecordKind::Repayment,
            tx: r.bank_transaction_ref.clone(),
            loan: loan_id.clone(),
            date: r.value_date.clone(),
            amount: minor(&r.amount),
            bank: part(Funder::Bank, r),
            partner: part(Funder::Partner, r),
        });
    }
    // Both sides record the day's movements with reconciliation.
    let rc = c.recon.clone();
    for (side, recs) in [
        (recon::Side::Bank, &bank_recs),
        (recon::Side::Partner, &partner_recs),
    ] {
        let ingest = call!(
            rc,
            ingest_records,
            recon::IngestRecordsRequest {
                request_id: format!("demo-{}-recon-{}-{i}", c.run, side.as_str_name()),
                partner_id: c.partner.clone(),
                business_date: today.clone(),
                side: side as i32,
                records: recs.iter().map(Rec::to_pb).collect(),
            },
            None
        );
        if let Err(s) = ingest {
            return Outcome::Error(format!("ingest #{i}: {} {}", s.code(), s.message()));
        }
    }
    // The application's history catches up with the loan events.
    let final_status = wait_for(&c, &app.application_id, &["REPAYING"]).await;
    Outcome::Funded {
        status: final_status,
        principal: minor(&loan.principal),
        bank: minor(&loan.bank_amount),
        partner: minor(&loan.partner_amount),
        repaid: minor(&rep.amount),
        bank_recs,
        partner_recs,
        repeat,
        apr_bps,
    }
}

/// Polls the application until it reaches one of `statuses` (for at most
/// 10 s); returns the last status seen.
async fn wait_for(c: &Clients, application_id: &str, statuses: &[&str]) -> String {
    let mut acqc = c.acquisition.clone();
    let mut last = String::new();
    for _ in 0..200 {
        if let Ok(r) = acqc
            .get_application(request(
                acq::GetApplicationRequest {
                    application_id: application_id.to_string(),
                },
                CALL,
                Some(&c.partner),
            ))
            .await
        {
            last = status_name(r.into_inner().application.unwrap_or_default().status);
            if statuses.contains(&last.as_str()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// Follows an application until funds are reserved, it ends, or it is
/// parked. A broken stream (a service restarting) is opened again.
pub(crate) async fn watch(c: &Clients, app: acq::Application) -> Result<acq::Application, String> {
    const FINAL: [&str; 6] = [
        "FUNDS_RESERVED",
        "KYC_REJECTED",
        "DECLINED",
        "FUNDING_REJECTED",
        "FAILED",
        "PARKED",
    ];
    let give_up = Instant::now() + Duration::from_secs(90);
    let mut last = app.clone();
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no final status within 90 s".into());
        }
        let mut acqc = c.acquisition.clone();
        let watched = tokio::time::timeout(left, async {
            let mut stream = acqc
                .watch_application(request(
                    acq::WatchApplicationRequest {
                        application_id: app.application_id.clone(),
                    },
                    left,
                    Some(&c.partner),
                ))
                .await?
                .into_inner();
            while let Some(m) = stream.message().await? {
                last = m.application.unwrap_or_default();
                if FINAL.contains(&status_name(last.status).as_str()) {
                    return Ok(true);
                }
            }
            Ok::<_, tonic::Status>(false)
        })
        .await;
        match watched {
            Ok(Ok(true)) => return Ok(last),
            Ok(Ok(false)) => {}
            Ok(Err(s)) if retryable(&s) => {}
            Ok(Err(s)) => return Err(format!("{} {}", s.code(), s.message())),
            Err(_) => return Err("no final status within 90 s".into()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn setup(c: &Clients, share_bps: i32) -> anyhow::Result<()> {
    let f = c.funding.clone();
    // The partner goes on the bank's whitelist (rule C12).
    call!(
        f,
        whitelist_institution,
        fund::WhitelistInstitutionRequest {
            request_id: format!("demo-whitelist-{}", c.partner),
            entry: Some(fund::WhitelistEntry {
                institution_id: c.partner.clone(),
                kind: fund::InstitutionKind::Partner as i32,
                effective_from: "2026-01-01".into(),
                effective_to: String::new(),
                ..Default::default()
            }),
        },
        None
    )?;
    // Reference data for rules C2 and C3, unless the bank has set its own.
    let reference = call!(
        f,
        get_bank_reference,
        fund::GetBankReferenceRequest::default(),
        None
    );
    if matches!(&reference, Err(s) if s.code() == tonic::Code::NotFound) {
        call!(
            f,
            set_bank_reference,
            fund::SetBankReferenceRequest {
                request_id: "demo-bank-reference".into(),
                reference: Some(fund::BankReference {
                    // RMB 80 billion net tier-1 capital, RMB 1 trillion of loans.
                    net_tier1_capital: cny(80_000_000_000 * 100),
                    total_loan_balance: cny(1_000_000_000_000 * 100),
                    as_of: "2026-09-30".into(),
                }),
            },
            None
        )?;
    } else {
        reference?;
    }
    call!(
        f,
        upsert_agreement,
        fund::UpsertAgreementRequest {
            request_id: format!("demo-agreement-{}", c.partner),
            agreement: Some(fund::Agreement {
                partner_id: c.partner.clone(),
                partner_share_bps: share_bps,
                bank_rate_bps: 900,
                partner_rate_bps: 1_100,
                daily_quota: cny(5_000_000_000 * 100),
                total_quota: cny(50_000_000_000 * 100),
                effective_from: "2026-01-01".into(),
                penalty_rate_bps: 1_800,
                fee_partner_share_bps: 5_000,
                ..Default::default()
            }),
        },
        None
    )?;
    let k = c.kyc.clone();
    for (n, (kind, name, note)) in [
        (
            kyc::WatchlistKind::Fraud,
            borrowers::WATCHLISTED_BUSINESS,
            "demo fraud list entry",
        ),
        (
            kyc::WatchlistKind::Sanctions,
            borrowers::WATCHLISTED_PERSON,
            "demo sanctions entry",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        call!(
            k,
            add_watchlist_entry,
            kyc::AddWatchlistEntryRequest {
                request_id: format!("demo-watchlist-{n}"),
                kind: kind as i32,
                name: name.into(),
                note: note.into(),
            },
            None
        )?;
    }
    Ok(())
}

/// Runs the demo and prints its summary; fails when anything went wrong.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let summary = execute(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_text(&summary);
    }
    if summary.errors > 0 || !summary.invariant_violations.is_empty() {
        anyhow::bail!(
            "the demo finished with {} errors and {} invariant violations",
            summary.errors,
            summary.invariant_violations.len()
        );
    }
    Ok(())
}

/// Runs the demo and returns its summary.
pub async fn execute(args: &DemoArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let ch = traced_channel(&args.endpoint)?;
    let at = |e: &Option<String>| {
        e.as_deref()
            .map(traced_channel)
            .unwrap_or_else(|| Ok(ch.clone()))
    };
    let run = uuid::Uuid::now_v7().simple().to_string();
    let partner = args
        .partner
        .clone()
        .unwrap_or_else(|| format!("partner-{}", &run[run.len() - 8..]));
    let c = Clients {
        acquisition: AcquisitionServiceClient::new(ch.clone()),
        funding: FundingServiceClient::new(at(&args.funding_endpoint)?),
        kyc: KycServiceClient::new(at(&args.kyc_endpoint)?),
        recon: ReconciliationServiceClient::new(at(&args.reconciliation_endpoint)?),
        partner: partner.clone(),
        run,
    };
    setup(&c, args.partner_share_bps).await.map_err(|e| {
        anyhow::anyhow!(
            "setting up the partner agreement and watchlists at {}: {e}",
            args.endpoint
        )
    })?;
    let seed = args
        .seed
        .unwrap_or_else(|| colend_platform::time::now_millis() as u64);
    let today_date = colend_platform::time::today();
    // Disbursements and repayments are value-dated on funding's business day
    // (its time zone, as `COLEND_FUNDING_TIME_ZONE` / `COLEND_FUNDING_JURISDICTION` say).
    let today = colend_platform::time::format_date(colend_platform::time::business_today(
        colend_funding::app::time_zone_from_env()?,
    ));
    let list = borrowers::generate(args.applications, seed, today_date);
    let bar = indicatif::ProgressBar::new(args.applications as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} applications {msg} [{elapsed}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let dups = std::sync::atomic::AtomicU64::new(0);
    let outcomes: Vec<Outcome> = futures::stream::iter(list.into_iter().enumerate())
        .map(|(i, b)| {
            let (c, today, dups, bar) = (c.clone(), today.clone(), &dups, bar.clone());
            async move {
                // One trace per application, across all five services.
                let span = tracing::info_span!("colend.demo.application", application = i);
                let o = tracing::Instrument::instrument(one(c, i, b, today, dups), span).await;
                bar.inc(1);
                o
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();

    let mut s = Summary {
        partner_id: partner.clone(),
        applications: args.applications,
        seed,
        duplicates_rejected: dups.load(std::sync::atomic::Ordering::Relaxed),
        ..Default::default()
    };
    let (mut bank_recs, mut partner_recs) = (Vec::new(), Vec::new());
    let mut min_share: Option<i64> = None;
    for o in outcomes {
        match o {
            Outcome::InvalidRejected => {
                *s.outcomes.entry("INVALID_REJECTED".into()).or_default() += 1
            }
            Outcome::Terminal { status, reasons } => {
                if reasons.is_empty() {
                    s.invariant_violations
                        .push(format!("{status} without reason codes"));
                }
                for r in &reasons {
                    *s.decline_reasons.entry(r.clone()).or_default() += 1;
                }
                *s.outcomes.entry(status).or_default() += 1;
            }
            Outcome::Funded {
                status,
                principal,
                bank,
                partner,
                repaid,
                bank_recs: b,
                partner_recs: p,
                repeat,
                apr_bps,
            } => {
                s.funded.min_all_in_apr_bps = Some(
                    s.funded
                        .min_all_in_apr_bps
                        .map_or(apr_bps, |m| m.min(apr_bps)),
                );
                s.funded.max_all_in_apr_bps = Some(
                    s.funded
                        .max_all_in_apr_bps
                        .map_or(apr_bps, |m| m.max(apr_bps)),
                );
                if let Some((status, reasons)) = repeat {
                    for r in &reasons {
                        *s.decline_reasons.entry(r.clone()).or_default() += 1;
                    }
                    *s.repeat_applications.entry(status).or_default() += 1;
                }
                *s.outcomes.entry(format!("FUNDED ({status})")).or_default() += 1;
                if bank + partner != principal {
                    s.invariant_violations
                        .push(format!("split {bank} + {partner} != {principal}"));
                }
                if (partner as i128) * 10_000 < principal as i128 * args.partner_share_bps as i128 {
                    s.invariant_violations.push(format!(
                        "partner share {partner} of {principal} is below the agreement"
                    ));
                }
                if principal > 0 {
                    let bps = partner * 10_000 / principal;
                    min_share = Some(min_share.map_or(bps, |m| m.min(bps)));
                }
                s.funded.loans += 1;
                add_to(&mut s.funded.principal_minor, principal)?;
                add_to(&mut s.funded.bank_minor, bank)?;
                add_to(&mut s.funded.partner_minor, partner)?;
                add_to(&mut s.funded.first_repayments_minor, repaid)?;
                bank_recs.extend(b);
                partner_recs.extend(p);
            }
            Outcome::Error(e) => {
                s.errors += 1;
                if s.error_samples.len() < 5 {
                    s.error_samples.push(e);
                }
            }
        }
    }
    s.funded.min_partner_share_bps = min_share;
    s.funded.principal = format_minor(s.funded.principal_minor);
    s.funded.bank = format_minor(s.funded.bank_minor);
    s.funded.partner = format_minor(s.funded.partner_minor);

    // Reconcile the day: the bank's records against the partner's.
    let rc = c.recon.clone();
    let run = call!(
        rc,
        run_reconciliation,
        recon::RunReconciliationRequest {
            request_id: format!("demo-{}-recon-run", c.run),
            partner_id: partner.clone(),
            business_date: today.clone(),
            options: Some(recon::RunOptions {
                three_way: true,
                ..Default::default()
            }),
        },
        None
    )?
    .into_inner()
    .run
    .unwrap_or_default();
    let matched = run
        .classes
        .iter()
        .find(|k| k.break_class == recon::BreakClass::Matched as i32)
        .map(|k| k.count)
        .unwrap_or(0);
    let expected: i64 = colend_core::money::checked_sum(bank_recs.iter().map(|r| {
        if r.kind == recon::RecordKind::Disbursement {
            r.partner
        } else {
            -r.partner
        }
    }))
    .map_err(|e| anyhow::anyhow!("expected settlement: {e}"))?;
    let owed = run
        .settlement
        .as_ref()
        .map(|x| minor(&x.partner_owes_bank))
        .unwrap_or(0);
    s.reconciliation = ReconSummary {
        run_id: run.run_id.clone(),
        business_date: today,
        bank_records: run.bank_records,
        partner_records: run.partner_records,
        matched,
        breaks: run.open_breaks,
        ledger_records: run.ledger_records,
        ledger_breaks: run.ledger_pairs.iter().map(|p| p.open_breaks).sum(),
        partner_owes_bank_minor: owed,
        partner_owes_bank: format_minor(owed),
        settlement_verified: owed == expected,
    };
    if run.open_breaks != 0 {
        s.invariant_violations.push(format!(
            "{} unexplained reconciliation breaks",
            run.open_breaks
        ));
    }
    if s.reconciliation.ledger_breaks != 0 {
        s.invariant_violations.push(format!(
            "{} breaks against colend's funding ledger",
            s.reconciliation.ledger_breaks
        ));
    }
    if owed != expected {
        s.invariant_violations.push(format!(
            "settlement {owed} differs from the records' {expected}"
        ));
    }
    let tb = c
        .funding
        .clone()
        .get_trial_balance(request(fund::GetTrialBalanceRequest {}, CALL, None))
        .await?
        .into_inner();
    s.ledger_balanced = minor(&tb.total_debits) == minor(&tb.total_credits);
    if !s.ledger_balanced {
        s.invariant_violations
            .push("ledger debits differ from credits".into());
    }
    s.elapsed_ms = started.elapsed().as_millis();
    Ok(s)
}

fn print_text(s: &Summary) {
    println!(
        "colend demo: {} applications as partner {} (seed {})",
        s.applications, s.partner_id, s.seed
    );
    println!("outcomes:");
    for (k, v) in &s.outcomes {
        println!("  {k:<28} {v}");
    }
    println!("  duplicate submissions refused {}", s.duplicates_rejected);
    for (k, v) in &s.repeat_applications {
        println!("  repeat applications {k:<14} {v}");
    }
    if !s.decline_reasons.is_empty() {
        println!("decline and rejection reasons:");
        for (k, v) in &s.decline_reasons {
            println!("  {k:<28} {v}");
        }
    }
    let f = &s.funded;
    println!(
        "funded: {} loans, CNY {} = bank {} + partner {} (lowest partner share {} bps); first instalments repaid CNY {}",
        f.loans,
        f.principal,
        f.bank,
        f.partner,
        f.min_partner_share_bps
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-".into()),
        format_minor(f.first_repayments_minor)
    );
    if let (Some(lo), Some(hi)) = (f.min_all_in_apr_bps, f.max_all_in_apr_bps) {
        println!(
            "all-in annualised cost of funded loans: {lo} to {hi} bps (cap enforced by the bank's policy)"
        );
    }
    let r = &s.reconciliation;
    println!(
        "reconciliation {} ({}): {} bank / {} partner / {} ledger records, {} matched, {} breaks ({} against the ledger); partner owes bank CNY {} ({})",
        r.run_id,
        r.business_date,
        r.bank_records,
        r.partner_records,
        r.ledger_records,
        r.matched,
        r.breaks,
        r.ledger_breaks,
        r.partner_owes_bank,
        if r.settlement_verified {
            "verified"
        } else {
            "NOT verified"
        }
    );
    println!(
        "ledger balanced: {}; errors: {}; invariant violations: {}; {} ms",
        s.ledger_balanced,
        s.errors,
        s.invariant_violations.len(),
        s.elapsed_ms
    );
    for e in &s.error_samples {
        println!("  error: {e}");
    }
    for v in &s.invariant_violations {
        println!("  violation: {v}");
    }
}
