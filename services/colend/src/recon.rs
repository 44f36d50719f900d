//! `colend recon …`: reconcile a day's files through the service, export
//! breaks and settlement lines as CSV, resolve breaks, generate paired test
//! files with planted breaks.
use clap::{Args, Subcommand};
use colend_contracts::reconciliation::v1::{
    self as pb, reconcile_stream_request::Item,
    reconciliation_service_client::ReconciliationServiceClient,
};
use colend_platform::grpc::channel;
use colend_reconciliation::app::into_pb;
use colend_reconciliation::domain::{self, Book, file};
use futures::StreamExt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tonic::transport::Channel;

#[derive(Subcommand)]
pub enum ReconCommand {
    /// Reconciles a day's bank and partner files through the service.
    Run(RunArgs),
    /// Exports breaks (of a run, or a partner's) as CSV.
    Breaks(BreaksArgs),
    /// Exports a run's settlement lines as CSV.
    Settlement(SettlementArgs),
    /// Closes an open break by hand.
    Resolve(ResolveArgs),
    /// Writes a pair of daily files with planted breaks of every class and
    /// the counts they must reconcile to (expected.json).
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Reconciliation service address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    #[arg(long)]
    pub partner_id: String,
    /// Business day, YYYY-MM-DD.
    #[arg(long)]
    pub date: String,
    /// The bank's file (CSV; format in services/reconciliation/README.md).
    #[arg(long)]
    pub bank: PathBuf,
    /// The partner's file.
    #[arg(long)]
    pub partner: PathBuf,
    /// Minor units an amount may drift and still match.
    #[arg(long, default_value_t = 0)]
    pub amount_tolerance: i64,
    /// Days value dates may differ and still match.
    #[arg(long, default_value_t = 0)]
    pub date_tolerance: i32,
    /// Report without storing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Also compare each side with colend's funding ledger.
    #[arg(long)]
    pub three_way: bool,
    /// Idempotency key of the run (default: a new one). Sending the same
    /// files again with the same key returns the first run.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Records per streamed batch.
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// Print the run as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the run's breaks to this CSV file.
    #[arg(long)]
    pub breaks_out: Option<PathBuf>,
    /// Also write the run's settlement lines to this CSV file.
    #[arg(long)]
    pub settlement_out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct BreaksArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// The run's breaks; or, without it, --partner-id's.
    #[arg(long, default_value = "")]
    pub run_id: String,
    #[arg(long, default_value = "")]
    pub partner_id: String,
    /// OPEN or RESOLVED.
    #[arg(long)]
    pub status: Option<String>,
    /// A class such as AMOUNT_MISMATCH.
    #[arg(long)]
    pub class: Option<String>,
    #[arg(long, default_value = "")]
    pub loan_id: String,
    /// Output file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct SettlementArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    #[arg(long)]
    pub run_id: String,
    /// Output file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ResolveArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    #[arg(long)]
    pub break_id: String,
    /// Who resolves it.
    #[arg(long)]
    pub by: String,
    /// Why.
    #[arg(long)]
    pub reason: String,
    /// Also settle the bank's record behind the break, in the partner's next run.
    #[arg(long)]
    pub settle: bool,
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Base transactions (each side's file has about this many rows).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    /// One base transaction in this many carries each planted defect.
    #[arg(long, default_value_t = 1_000)]
    pub every: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Business day, YYYY-MM-DD.
    #[arg(long, default_value = "2026-11-23")]
    pub date: String,
    /// Directory for bank.csv, partner.csv and expected.json.
    #[arg(long)]
    pub out_dir: PathBuf,
}

pub async fn run(cmd: ReconCommand) -> anyhow::Result<()> {
    match cmd {
        ReconCommand::Run(a) => run_files(a).await,
        ReconCommand::Breaks(a) => breaks(a).await,
        ReconCommand::Settlement(a) => settlement(a).await,
        ReconCommand::Resolve(a) => resolve(a).await,
        ReconCommand::Generate(a) => generate(a),
    }
}

/// A call as the bank core: a token from `COLEND_BANK_TOKEN`, or signed
/// with this process's key (`COLEND_AUTH_KEYS`, or the development key).
fn as_bank<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    match colend_platform::config::env_opt("COLEND_BANK_TOKEN") {
        Some(t) => {
            r.metadata_mut()
                .insert("authorization", colend_platform::auth::bearer(&t));
        }
        None => colend_platform::auth::sign_request(
            &mut r,
            colend_platform::auth::Class::Bank,
            None,
            "colend-recon",
        ),
    }
    r
}

fn client(endpoint: &str) -> anyhow::Result<ReconciliationServiceClient<Channel>> {
    Ok(ReconciliationServiceClient::new(channel(endpoint)?)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

pub(crate) fn status_error(what: &str, s: tonic::Status) -> anyhow::Error {
    let details = tonic_types::StatusExt::get_error_details(&s);
    let fields: Vec<String> = details
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect()
        })
        .unwrap_or_default();
    let reason = details
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    anyhow::anyhow!(
        "{what}: {:?} {} {}{}",
        s.code(),
        reason,
        s.message(),
        if fields.is_empty() {
            String::new()
        } else {
            format!(" ({})", fields.join("; "))
        }
    )
}

/// Reads one side's file on its own thread into stream messages.
fn reader(
    path: &Path,
    side: pb::Side,
    batch: usize,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<pb::ReconcileStreamRequest>> {
    let f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut r = file::FileReader::new(std::io::BufReader::with_capacity(1 << 20, f));
        let mut records = Vec::with_capacity(batch);
        let mut last = 0u64;
        loop {
            let row = r.next_row();
            let flush = row.is_none() || records.len() >= batch;
            if flush && !records.is_empty() {
                let msg = pb::ReconcileStreamRequest {
                    item: Some(Item::Batch(pb::RecordBatch {
                        side: side as i32,
                        records: std::mem::replace(&mut records, Vec::with_capacity(batch)),
                    })),
                };
                if tx.blocking_send(msg).is_err() {
                    return;
                }
                let pos = r.position();
                bar.inc(pos - last);
                last = pos;
            }
            let Some((line, row)) = row else { return };
            match row {
                Ok((rec, currency)) => records.push(into_pb(rec, currency)),
                Err(reason) => {
                    let msg = pb::ReconcileStreamRequest {
                        item: Some(Item::Malformed(pb::RejectedRow {
                            side: side as i32,
                            line,
                            reason,
                        })),
                    };
                    if tx.blocking_send(msg).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(rx)
}

fn class_name(k: i32) -> String {
    pb::BreakClass::try_from(k)
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("BREAK_CLASS_")
                .to_string()
        })
        .unwrap_or_default()
}

fn side_name(k: i32) -> &'static str {
    match pb::Side::try_from(k) {
        Ok(pb::Side::Bank) => "BANK",
        Ok(pb::Side::Partner) => "PARTNER",
        Ok(pb::Side::Ledger) => "LEDGER",
        _ => "",
    }
}

fn amount(m: &Option<colend_contracts::common::v1::Money>) -> String {
    let mut s = String::new();
    if let Some(m) = m {
        file::format_amount(&mut s, m.minor_units);
    }
    s
}

/// The run as one JSON object.
pub fn run_json(run: &pb::Run, elapsed_ms: u128) -> serde_json::Value {
    let classes: serde_json::Map<String, serde_json::Value> = run
        .classes
        .iter()
        .map(|c| (class_name(c.break_class), c.count.into()))
        .collect();
    let s = run.settlement.clone().unwrap_or_default();
    let minor = |m: &Option<colend_contracts::common::v1::Money>| {
        m.as_ref().map(|m| m.minor_units).unwrap_or(0)
    };
    serde_json::json!({
        "run_id": run.run_id,
        "partner_id": run.partner_id,
        "business_date": run.business_date,
        "dry_run": run.options.as_ref().map(|o| o.dry_run).unwrap_or(false),
        "bank_records": run.bank_records,
        "partner_records": run.partner_records,
        "ledger_records": run.ledger_records,
        "rejected_rows": run.rejected_rows,
        "classes": classes,
        "open_breaks": run.open_breaks,
        "matched_one_to_one": run.matched_one_to_one,
        "matched_one_to_many": run.matched_one_to_many,
        "matched_many_to_one": run.matched_many_to_one,
        "matched_within_tolerance": run.matched_within_tolerance,
        "resolved_earlier_breaks": run.resolved_earlier_breaks,
        "ledger_pairs": run.ledger_pairs.iter().map(|p| serde_json::json!({
            "pair": pb::Pair::try_from(p.pair).map(|x| x.as_str_name()).unwrap_or(""),
            "open_breaks": p.open_breaks,
        })).collect::<Vec<_>>(),
        "settlement": {
            "partner_owes_bank_minor": minor(&s.partner_owes_bank),
            "partner_owes_bank": amount(&s.partner_owes_bank),
            "partner_owes_gross": amount(&s.partner_owes_gross),
            "bank_owes_gross": amount(&s.bank_owes_gross),
            "lines": s.lines,
        },
        "elapsed_ms": elapsed_ms,
    })
}

async fn run_files(a: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=pb_max_batch()).contains(&a.batch),
        "--batch must be 1 to {}",
        pb_max_batch()
    );
    let t0 = Instant::now();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let bar = if a.quiet || a.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(size(&a.bank) + size(&a.partner))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} [{elapsed}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = pb::ReconcileStreamRequest {
        item: Some(Item::Start(pb::ReconcileStreamStart {
            request_id: a
                .request_id
                .clone()
                .unwrap_or_else(|| format!("recon-{}", uuid::Uuid::now_v7().simple())),
            partner_id: a.partner_id.clone(),
            business_date: a.date.clone(),
            options: Some(pb::RunOptions {
                amount_tolerance_minor: a.amount_tolerance,
                value_date_tolerance_days: a.date_tolerance,
                dry_run: a.dry_run,
                three_way: a.three_way,
            }),
        })),
    };
    let bank = tokio_stream::wrappers::ReceiverStream::new(reader(
        &a.bank,
        pb::Side::Bank,
        a.batch,
        bar.clone(),
    )?);
    let partner = tokio_stream::wrappers::ReceiverStream::new(reader(
        &a.partner,
        pb::Side::Partner,
        a.batch,
        bar.clone(),
    )?);
    // The two sides interleaved, so the service holds only what is not yet matched.
    let body = futures::stream::iter([start]).chain(futures::stream::select(bank, partner));
    let mut c = client(&a.endpoint)?;
    let run = c
        .reconcile_stream(as_bank(body))
        .await
        .map_err(|s| status_error("reconcile", s))?
        .into_inner()
        .run
        .unwrap_or_default();
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_millis();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&run_json(&run, elapsed))?
        );
    } else {
        print_run(&run, elapsed);
    }
    if !run.run_id.is_empty() {
        if let Some(out) = &a.breaks_out {
            let n =
                export_breaks(&mut c, &run.run_id, pb::BreakFilter::default(), Some(out)).await?;
            eprintln!("{n} breaks written to {}", out.display());
        }
        if let Some(out) = &a.settlement_out {
            let n = export_settlement(&mut c, &run.run_id, Some(out)).await?;
            eprintln!("{n} settlement lines written to {}", out.display());
        }
    }
    Ok(())
}

fn pb_max_batch() -> usize {
    colend_reconciliation::grpc::MAX_BATCH
}

fn print_run(run: &pb::Run, elapsed: u128) {
    let dry = run.options.as_ref().map(|o| o.dry_run).unwrap_or(false);
    println!(
        "run {} ({} {}{}): {} bank / {} partner records{}, {} rows rejected, {} ms",
        if run.run_id.is_empty() {
            "-"
        } else {
            &run.run_id
        },
        run.partner_id,
        run.business_date,
        if dry { ", dry run: nothing stored" } else { "" },
        run.bank_records,
        run.partner_records,
        if run.ledger_records > 0 {
            format!(" / {} ledger", run.ledger_records)
        } else {
            String::new()
        },
        run.rejected_rows,
        elapsed
    );
    for c in &run.classes {
        println!(
            "  {:<24} {:>9}  CNY {:>18}",
            class_name(c.break_class),
            c.count,
            amount(&c.amount)
        );
    }
    println!(
        "  matched one-to-one {}, one-to-many {}, many-to-one {}, within tolerance {}; earlier breaks closed {}",
        run.matched_one_to_one,
        run.matched_one_to_many,
        run.matched_many_to_one,
        run.matched_within_tolerance,
        run.resolved_earlier_breaks
    );
    for p in &run.ledger_pairs {
        println!(
            "  {}: {} breaks",
            pb::Pair::try_from(p.pair)
                .map(|x| x.as_str_name())
                .unwrap_or(""),
            p.open_breaks
        );
    }
    for r in run.rejected.iter().take(10) {
        println!(
            "  rejected {} line {}: {}",
            side_name(r.side),
            r.line,
            r.reason
        );
    }
    if run.rejected_rows > 10 {
        println!("  … {} more rejected rows", run.rejected_rows - 10);
    }
    if let Some(s) = &run.settlement {
        println!(
            "settlement: partner owes bank CNY {} (partner owes {}, bank owes {}; {} lines)",
            amount(&s.partner_owes_bank),
            amount(&s.partner_owes_gross),
            amount(&s.bank_owes_gross),
            s.lines
        );
    }
}

fn csv_out(out: Option<&Path>) -> anyhow::Result<csv::Writer<Box<dyn Write>>> {
    let w: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    Ok(csv::Writer::from_writer(w))
}

async fn export_breaks(
    c: &mut ReconciliationServiceClient<Channel>,
    run_id: &str,
    filter: pb::BreakFilter,
    out: Option<&Path>,
) -> anyhow::Result<u64> {
    let mut w = csv_out(out)?;
    w.write_record([
        "break_id",
        "run_id",
        "partner_id",
        "business_date",
        "pair",
        "class",
        "status",
        "age_days",
        "transaction_id",
        "loan_id",
        "bank_amount",
        "partner_amount",
        "ledger_amount",
        "components",
        "detail",
        "resolved_by",
        "resolution_reason",
    ])?;
    let mut s = c
        .stream_breaks(as_bank(pb::StreamBreaksRequest {
            run_id: run_id.to_string(),
            filter: Some(filter),
        }))
        .await
        .map_err(|s| status_error("breaks", s))?
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.next().await {
        for b in m.map_err(|s| status_error("breaks", s))?.breaks {
            let r = b.resolution.clone().unwrap_or_default();
            w.write_record([
                b.break_id.as_str(),
                &b.run_id,
                &b.partner_id,
                &b.business_date,
                pb::Pair::try_from(b.pair)
                    .map(|x| x.as_str_name().trim_start_matches("PAIR_"))
                    .unwrap_or(""),
                &class_name(b.break_class),
                pb::BreakStatus::try_from(b.status)
                    .map(|x| x.as_str_name().trim_start_matches("BREAK_STATUS_"))
                    .unwrap_or(""),
                &b.age_days.to_string(),
                &b.transaction_id,
                &b.loan_id,
                &amount(&b.bank_amount),
                &amount(&b.partner_amount),
                &amount(&b.ledger_amount),
                &b.components.join(" "),
                &b.detail,
                &r.resolved_by,
                &r.reason,
            ])?;
            n += 1;
        }
    }
    w.flush()?;
    Ok(n)
}

async fn export_settlement(
    c: &mut ReconciliationServiceClient<Channel>,
    run_id: &str,
    out: Option<&Path>,
) -> anyhow::Result<u64> {
    let mut w = csv_out(out)?;
    w.write_record([
        "transaction_id",
        "loan_id",
        "kind",
        "value_date",
        "currency",
        "amount",
        "owed_by",
        "owed",
    ])?;
    let mut s = c
        .stream_settlement_lines(as_bank(pb::StreamSettlementLinesRequest {
            run_id: run_id.to_string(),
        }))
        .await
        .map_err(|s| status_error("settlement", s))?
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.next().await {
        for l in m.map_err(|s| status_error("settlement", s))?.lines {
            w.write_record([
                l.transaction_id.as_str(),
                &l.loan_id,
                pb::RecordKind::try_from(l.kind)
                    .map(|k| k.as_str_name().trim_start_matches("RECORD_KIND_"))
                    .unwrap_or(""),
                &l.value_date,
                l.amount
                    .as_ref()
                    .map(|m| m.currency_code.as_str())
                    .unwrap_or(""),
                &amount(&l.amount),
                side_name(l.owed_by),
                &amount(&l.owed),
            ])?;
            n += 1;
        }
    }
    w.flush()?;
    Ok(n)
}

async fn breaks(a: BreaksArgs) -> anyhow::Result<()> {
    let parse = |prefix: &str, v: &Option<String>| -> anyhow::Result<String> {
        Ok(match v {
            Some(v) => format!("{prefix}{}", v.to_uppercase()),
            None => String::new(),
        })
    };
    let class = parse("BREAK_CLASS_", &a.class)?;
    let status = parse("BREAK_STATUS_", &a.status)?;
    let filter = pb::BreakFilter {
        partner_id: a.partner_id.clone(),
        break_class: if class.is_empty() {
            0
        } else {
            pb::BreakClass::from_str_name(&class)
                .ok_or_else(|| anyhow::anyhow!("unknown class {class}"))? as i32
        },
        status: if status.is_empty() {
            0
        } else {
            pb::BreakStatus::from_str_name(&status)
                .ok_or_else(|| anyhow::anyhow!("unknown status {status}"))? as i32
        },
        loan_id: a.loan_id.clone(),
        pair: 0,
    };
    let mut c = client(&a.endpoint)?;
    let n = export_breaks(&mut c, &a.run_id, filter, a.out.as_deref()).await?;
    if let Some(out) = &a.out {
        eprintln!("{n} breaks written to {}", out.display());
    }
    Ok(())
}

async fn settlement(a: SettlementArgs) -> anyhow::Result<()> {
    let mut c = client(&a.endpoint)?;
    let n = export_settlement(&mut c, &a.run_id, a.out.as_deref()).await?;
    if let Some(out) = &a.out {
        eprintln!("{n} settlement lines written to {}", out.display());
    }
    Ok(())
}

async fn resolve(a: ResolveArgs) -> anyhow::Result<()> {
    let mut c = client(&a.endpoint)?;
    let b = c
        .resolve_break(as_bank(pb::ResolveBreakRequest {
            request_id: a
                .request_id
                .unwrap_or_else(|| format!("resolve-{}", uuid::Uuid::now_v7().simple())),
            break_id: a.break_id,
            resolved_by: a.by,
            reason: a.reason,
            settle: a.settle,
        }))
        .await
        .map_err(|s| status_error("resolve", s))?
        .into_inner()
        .r#break
        .unwrap_or_default();
    let r = b.resolution.unwrap_or_default();
    println!(
        "break {} ({} {}) resolved by {}: {}",
        b.break_id,
        class_name(b.break_class),
        b.transaction_id,
        r.resolved_by,
        r.reason
    );
    Ok(())
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let day =
        domain::parse_day(&a.date).ok_or_else(|| anyhow::anyhow!("--date must be YYYY-MM-DD"))?;
    std::fs::create_dir_all(&a.out_dir)?;
    let open = |name: &str| -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(a.out_dir.join(name))?,
        ))
    };
    let (mut bank, mut partner) = (open("bank.csv")?, open("partner.csv")?);
    let mut err: Option<std::io::Error> = None;
    let e = file::generate(a.records, a.seed, day, a.every, |b, row| {
        let w = if b == Book::Bank {
            &mut bank
        } else {
            &mut partner
        };
        if let Err(x) = w.write_all(row.as_bytes()).and_then(|_| w.write_all(b"\n")) {
            err.get_or_insert(x);
        }
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    bank.flush()?;
    partner.flush()?;
    let counts = |v: &[(&'static str, i64)]| -> serde_json::Map<String, serde_json::Value> {
        v.iter()
            .map(|(k, n)| (k.to_string(), (*n).into()))
            .collect()
    };
    let expected = serde_json::json!({
        "business_date": a.date,
        "records": a.records,
        "every": a.every,
        "seed": a.seed,
        "planted_per_defect": a.records / a.every.max(file::PLANTS.len()),
        "plants": file::PLANTS,
        "bank_records": e.bank_records,
        "partner_records": e.partner_records,
        "bank_rejected": e.bank_rejected,
        "partner_rejected": e.partner_rejected,
        "exact": { "classes": counts(&e.exact), "partner_owes_bank_minor": e.exact_partner_owes_bank },
        "tolerant_1_minor_1_day": { "classes": counts(&e.tolerant), "partner_owes_bank_minor": e.tolerant_partner_owes_bank },
    });
    std::fs::write(
        a.out_dir.join("expected.json"),
        serde_json::to_string_pretty(&expected)?,
    )?;
    println!(
        "{} bank and {} partner records (+{} and {} malformed rows) written to {}",
        e.bank_records,
        e.partner_records,
        e.bank_rejected,
        e.partner_rejected,
        a.out_dir.display()
    );
    Ok(())
}
