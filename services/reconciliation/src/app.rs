//! Reconciliation use cases: build a run from staged or streamed records,
//! store its breaks and settlement lines, list and resolve breaks.
use crate::domain::{
    self, Book, BreakItem, Class, Kind, Outcome, Pair, Rec, Reconciler, Tolerance, format_day,
};
use colend_contracts::common::v1::Money;
use colend_contracts::reconciliation::v1 as pb;
use colend_platform::time::{now_millis, timestamp};
use colend_platform::{ApiError, ApiResult, Db, idempotency};
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

/// Rejected rows kept with a run (all are counted).
pub const KEEP_REJECTED: usize = 1_000;
/// Settlement lines per stored chunk.
const LINES_PER_CHUNK: usize = 20_000;
/// Rows per multi-row INSERT.
const ROWS_PER_INSERT: usize = 40;

/// colend's own funding ledger, read from the funding service (three-way runs).
#[derive(Clone)]
pub struct FundingLedger {
    client: colend_contracts::funding::v1::funding_service_client::FundingServiceClient<
        colend_platform::grpc::TracedChannel,
    >,
    timeout: std::time::Duration,
}

impl FundingLedger {
    pub fn new(
        channel: colend_platform::grpc::TracedChannel,
        timeout: std::time::Duration,
    ) -> Self {
        FundingLedger {
            client:
                colend_contracts::funding::v1::funding_service_client::FundingServiceClient::new(
                    channel,
                ),
            timeout,
        }
    }

    /// The partner's disbursements and repayments of `value_date`, as records.
    pub async fn movements(
        &self,
        partner_id: String,
        value_date: String,
    ) -> ApiResult<Vec<(Rec, String)>> {
        use colend_contracts::funding::v1 as fpb;
        use futures::StreamExt;
        let fail = |s: tonic::Status| colend_platform::error::from_downstream("funding", s);
        let mut stream = self
            .client
            .clone()
            .stream_ledger_movements(colend_platform::grpc::request(
                fpb::StreamLedgerMovementsRequest {
                    partner_id,
                    value_date,
                },
                self.timeout,
                None,
            ))
            .await
            .map_err(fail)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            for m in batch.map_err(fail)?.movements {
                let c = m
                    .amount
                    .as_ref()
                    .map(|a| a.currency_code.clone())
                    .unwrap_or_default();
                let disbursement = m.kind == fpb::MovementKind::Disbursement as i32;
                let minor = |x: &Option<Money>| x.as_ref().map(|a| a.minor_units).unwrap_or(0);
                let rec = Rec {
                    kind: if disbursement {
                        Kind::Disbursement
                    } else {
                        Kind::Repayment
                    },
                    transaction_id: m.transaction_ref,
                    loan_id: m.loan_id,
                    value_date: domain::parse_day(&m.value_date).unwrap_or(0),
                    amount: minor(&m.amount),
                    bank_portion: minor(&m.bank_portion),
                    partner_portion: minor(&m.partner_portion),
                    components: (!disbursement).then_some([
                        m.principal,
                        m.interest,
                        m.fee,
                        m.penalty,
                    ]),
                    collected_by: Book::Bank,
                    line: 0,
                };
                out.push((rec, c));
            }
        }
        Ok(out)
    }
}

#[derive(Clone)]
pub struct Reconciliation {
    db: Db,
    ledger: Option<FundingLedger>,
}

pub fn kind_pb(k: Kind) -> pb::RecordKind {
    match k {
        Kind::Disbursement => pb::RecordKind::Disbursement,
        Kind::Repayment => pb::RecordKind::Repayment,
        Kind::Fee => pb::RecordKind::Fee,
    }
}

pub fn book_pb(b: Book) -> pb::Side {
    match b {
        Book::Bank => pb::Side::Bank,
        Book::Partner => pb::Side::Partner,
        Book::Ledger => pb::Side::Ledger,
    }
}

pub fn class_pb(c: Class) -> pb::BreakClass {
    pb::BreakClass::from_str_name(&format!("BREAK_CLASS_{}", c.name()))
        .unwrap_or(pb::BreakClass::Unspecified)
}

pub fn pair_pb(p: Pair) -> pb::Pair {
    pb::Pair::from_str_name(&format!("PAIR_{}", p.name())).unwrap_or(pb::Pair::Unspecified)
}

fn money(m: i64, c: &str) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: c.to_string(),
    })
}

/// A domain record as the wire record.
pub fn rec_pb(r: &Rec, currency: &str) -> pb::Record {
    into_pb(r.clone(), currency.to_string())
}

/// [`rec_pb`], taking the record and its currency.
pub fn into_pb(r: Rec, currency: String) -> pb::Record {
    let money = |m: i64| {
        Some(Money {
            minor_units: m,
            currency_code: currency.clone(),
        })
    };
    pb::Record {
        kind: kind_pb(r.kind) as i32,
        value_date: format_day(r.value_date),
        amount: money(r.amount),
        bank_portion: money(r.bank_portion),
        partner_portion: money(r.partner_portion),
        components: r.components.map(|c| pb::Components {
            principal: c[0],
            interest: c[1],
            fee: c[2],
            penalty: c[3],
        }),
        collected_by: book_pb(r.collected_by) as i32,
        line: r.line,
        transaction_id: r.transaction_id,
        loan_id: r.loan_id,
    }
}

/// A wire record as a domain record, with its currency; the error says
/// what is wrong.
pub fn rec_of(r: pb::Record) -> Result<(Rec, String), String> {
    rec_checked(r).map_err(|p| {
        p.iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Like [`rec_of`], with every problem as (field, message).
pub fn rec_checked(r: pb::Record) -> Result<(Rec, String), Vec<(&'static str, &'static str)>> {
    let mut bad = Vec::new();
    let kind = match pb::RecordKind::try_from(r.kind) {
        Ok(pb::RecordKind::Disbursement) => Kind::Disbursement,
        Ok(pb::RecordKind::Repayment) => Kind::Repayment,
        Ok(pb::RecordKind::Fee) => Kind::Fee,
        _ => {
            bad.push(("kind", "must be DISBURSEMENT, REPAYMENT or FEE"));
            Kind::Repayment
        }
    };
    let (Some(a), Some(b), Some(p)) = (r.amount, r.bank_portion, r.partner_portion) else {
        bad.push((
            "amount",
            "amount, bank_portion and partner_portion are required",
        ));
        return Err(bad);
    };
    if colend_core::Currency::parse(&a.currency_code).is_err() {
        bad.push((
            "amount.currency_code",
            "must be an ISO 4217 code such as CNY",
        ));
    }
    if b.currency_code != a.currency_code || p.currency_code != a.currency_code {
        bad.push((
            "bank_portion.currency_code",
            "portions must be in the amount's currency",
        ));
    }
    let collected_by = match pb::Side::try_from(r.collected_by) {
        Ok(pb::Side::Unspecified | pb::Side::Bank) => Book::Bank,
        Ok(pb::Side::Partner) => Book::Partner,
        _ => {
            bad.push(("collected_by", "must be BANK or PARTNER"));
            Book::Bank
        }
    };
    let value_date = domain::parse_day(&r.value_date).unwrap_or_else(|| {
        bad.push(("value_date", "must be a date YYYY-MM-DD"));
        0
    });
    let rec = Rec {
        kind,
        transaction_id: r.transaction_id,
        loan_id: r.loan_id,
        value_date,
        amount: a.minor_units,
        bank_portion: b.minor_units,
        partner_portion: p.minor_units,
        components: r
            .components
            .as_ref()
            .map(|c| [c.principal, c.interest, c.fee, c.penalty]),
        collected_by,
        line: r.line,
    };
    bad.extend(rec.problems());
    if bad.is_empty() {
        Ok((rec, a.currency_code))
    } else {
        Err(bad)
    }
}

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub partner_id: String,
    pub business_date: String,
    pub options: pb::RunOptions,
}

impl RunSpec {
    fn tolerance(&self) -> Tolerance {
        Tolerance {
            amount: self.options.amount_tolerance_minor,
            days: self.options.value_date_tolerance_days,
        }
    }
}

/// A run being fed: records of either side, rejected rows, the content hash.
pub struct RunBuilder {
    spec: RunSpec,
    reconciler: Reconciler,
    currency: Option<String>,
    rejected: Vec<pb::RejectedRow>,
    rejected_count: i64,
    ledger_records: i64,
    hasher: Sha256,
}

impl RunBuilder {
    /// Adds one wire record; an invalid one becomes a rejected row.
    pub fn record(&mut self, side: pb::Side, r: pb::Record) {
        self.hash_record(side, &r);
        let book = match side {
            pb::Side::Partner => Book::Partner,
            pb::Side::Ledger => Book::Ledger,
            _ => Book::Bank,
        };
        let line = r.line;
        match rec_of(r) {
            Ok((rec, currency)) => self.add(book, rec, currency),
            Err(reason) => self.reject(side, line, reason),
        }
    }

    /// Adds one domain record in `currency`.
    pub fn add(&mut self, book: Book, rec: Rec, currency: String) {
        match &self.currency {
            Some(c) if *c != currency => {
                let reason = format!("currency {currency} differs from the run's {c}");
                self.reject(book_pb(book), rec.line, reason);
                return;
            }
            None => self.currency = Some(currency),
            _ => {}
        }
        if book == Book::Ledger {
            self.ledger_records += 1;
        }
        self.reconciler.feed(book, rec);
    }

    /// A row left out of matching.
    pub fn reject(&mut self, side: pb::Side, line: i64, reason: String) {
        self.hasher.update([0xFF, side as u8]);
        self.hasher.update(line.to_le_bytes());
        self.hasher.update(reason.as_bytes());
        self.rejected_count += 1;
        if self.rejected.len() < KEEP_REJECTED {
            self.rejected.push(pb::RejectedRow {
                side: side as i32,
                line,
                reason,
            });
        }
    }

    fn hash_record(&mut self, side: pb::Side, r: &pb::Record) {
        let h = &mut self.hasher;
        let m = |x: &Option<Money>| x.as_ref().map(|m| m.minor_units).unwrap_or(i64::MIN);
        h.update([side as u8, r.kind as u8, r.collected_by as u8]);
        for s in [&r.transaction_id, &r.loan_id, &r.value_date] {
            h.update((s.len() as u32).to_le_bytes());
            h.update(s.as_bytes());
        }
        let cur = r
            .amount
            .as_ref()
            .map(|m| m.currency_code.as_str())
            .unwrap_or("");
        h.update(cur.as_bytes());
        let c = r.components.unwrap_or_default();
        for v in [
            m(&r.amount),
            m(&r.bank_portion),
            m(&r.partner_portion),
            c.principal,
            c.interest,
            c.fee,
            c.penalty,
            r.line,
            i64::from(r.components.is_some()),
        ] {
            h.update(v.to_le_bytes());
        }
    }

    /// The request hash over the start message and everything fed since.
    pub fn hash(&self, start: &pb::ReconcileStreamStart) -> String {
        let mut h = self.hasher.clone();
        h.update(start.encode_to_vec());
        hex::encode(h.finalize())
    }
}

fn hex_record(r: &Option<Rec>, currency: &str) -> String {
    r.as_ref()
        .map(|r| hex::encode(rec_pb(r, currency).encode_to_vec()))
        .unwrap_or_default()
}

fn record_of_hex(s: &str) -> Option<pb::Record> {
    if s.is_empty() {
        return None;
    }
    pb::Record::decode(hex::decode(s).ok()?.as_slice()).ok()
}

fn summary_pb(o: &Outcome, currency: &str) -> Vec<pb::ClassSummary> {
    o.classes
        .iter()
        .map(|(k, (n, a))| pb::ClassSummary {
            break_class: class_pb(*k) as i32,
            count: *n,
            amount: money(*a, currency),
        })
        .collect()
}

impl Reconciliation {
    pub fn new(db: Db, ledger: Option<FundingLedger>) -> Self {
        Reconciliation { db, ledger }
    }

    /// Stores a validated batch of one side's records.
    pub async fn ingest(
        &self,
        request_id: String,
        hash: String,
        r: pb::IngestRecordsRequest,
    ) -> ApiResult<i32> {
        let scope = format!("IngestRecords:{}", r.partner_id);
        let resp = idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let side = match pb::Side::try_from(r.side) {
                    Ok(pb::Side::Bank) => "BANK",
                    _ => "PARTNER",
                };
                let now = now_millis();
                for rec in &r.records {
                    sqlx::query(
                        "INSERT INTO recon_records (record_id, partner_id, business_date, side, kind, transaction_id, loan_id, \
                         value_date, currency, amount, bank_portion, partner_portion, created_at, body) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    )
                    .bind(format!("rec_{}", uuid::Uuid::now_v7().simple()))
                    .bind(&r.partner_id)
                    .bind(&r.business_date)
                    .bind(side)
                    .bind(pb::RecordKind::try_from(rec.kind).map(|k| k.as_str_name()).unwrap_or(""))
                    .bind(&rec.transaction_id)
                    .bind(&rec.loan_id)
                    .bind(&rec.value_date)
                    .bind(rec.amount.as_ref().map(|m| m.currency_code.as_str()).unwrap_or(""))
                    .bind(rec.amount.as_ref().map(|m| m.minor_units).unwrap_or(0))
                    .bind(rec.bank_portion.as_ref().map(|m| m.minor_units).unwrap_or(0))
                    .bind(rec.partner_portion.as_ref().map(|m| m.minor_units).unwrap_or(0))
                    .bind(now)
                    .bind(hex::encode(rec.encode_to_vec()))
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(pb::IngestRecordsResponse { accepted: r.records.len() as i32 })
            })
        })
        .await?;
        Ok(resp.accepted)
    }

    /// Starts a run: carries in the partner's open "missing" breaks of
    /// earlier days and, for a three-way run, loads the funding ledger.
    pub async fn begin(&self, spec: RunSpec) -> ApiResult<RunBuilder> {
        let three_way = spec.options.three_way;
        let mut b = RunBuilder {
            reconciler: Reconciler::new(spec.tolerance(), three_way),
            spec,
            currency: None,
            rejected: Vec::new(),
            rejected_count: 0,
            ledger_records: 0,
            hasher: Sha256::new(),
        };
        let rows = sqlx::query(
            "SELECT break_id, pair, break_class, left_record, right_record FROM recon_breaks \
             WHERE partner_id = $1 AND status = 'OPEN' AND business_date < $2 \
             AND break_class IN ('MISSING_ON_BANK_SIDE', 'MISSING_ON_PARTNER_SIDE', 'MISSING_IN_LEDGER') \
             ORDER BY break_id",
        )
        .bind(&b.spec.partner_id)
        .bind(&b.spec.business_date)
        .fetch_all(&self.db.pool)
        .await?;
        for row in rows {
            let (id, pair): (String, String) = (row.get(0), row.get(1));
            let Some(pair) = Pair::parse(&pair) else {
                continue;
            };
            let (l, r): (String, String) = (row.get(3), row.get(4));
            let (left, rec) = match (record_of_hex(&l), record_of_hex(&r)) {
                (Some(x), _) => (true, x),
                (None, Some(x)) => (false, x),
                _ => continue,
            };
            if let (Ok((rec, _)), Some(m)) = (rec_of(rec), b.reconciler.matcher(pair)) {
                m.carry(id, left, rec);
            }
        }
        if three_way {
            let Some(ledger) = &self.ledger else {
                return Err(ApiError::Dependency {
                    service: "funding".into(),
                    message: "no funding endpoint is configured for three-way runs".into(),
                });
            };
            for (rec, currency) in ledger
                .movements(b.spec.partner_id.clone(), b.spec.business_date.clone())
                .await?
            {
                b.add(Book::Ledger, rec, currency);
            }
        }
        Ok(b)
    }

    /// Feeds the records staged with IngestRecords for the run's day.
    pub async fn feed_staged(&self, b: &mut RunBuilder) -> ApiResult<()> {
        let rows = sqlx::query(
            "SELECT side, body FROM recon_records WHERE partner_id = $1 AND business_date = $2 ORDER BY record_id",
        )
        .bind(&b.spec.partner_id)
        .bind(&b.spec.business_date)
        .fetch_all(&self.db.pool)
        .await?;
        for row in rows {
            let (side, body): (String, String) = (row.get(0), row.get(1));
            let side = if side == "BANK" {
                pb::Side::Bank
            } else {
                pb::Side::Partner
            };
            if let Some(r) = record_of_hex(&body) {
                b.record(side, r);
            }
        }
        Ok(())
    }

    /// Finishes a run: classifies what is left and, unless it is a dry run,
    /// stores it (idempotently under `scope`/`request_id`/`hash`).
    pub async fn finish(
        &self,
        b: RunBuilder,
        scope: String,
        request_id: String,
        hash: String,
    ) -> ApiResult<pb::Run> {
        let RunBuilder {
            spec,
            reconciler,
            currency,
            rejected,
            rejected_count,
            ledger_records,
            ..
        } = b;
        let currency = currency.unwrap_or_else(|| "CNY".to_string());
        // Matching the leftovers and encoding the settlement lines is CPU
        // work: keep it off the async workers.
        let c = currency.clone();
        let dry_run = spec.options.dry_run;
        let (outcomes, chunks) = tokio::task::spawn_blocking(move || {
            let outcomes = reconciler.finish();
            let chunks = if dry_run {
                Vec::new()
            } else {
                encode_lines(&outcomes[0].lines, &c)
            };
            (outcomes, chunks)
        })
        .await
        .map_err(ApiError::internal)?;
        let bp = &outcomes[0];
        let c = currency.as_str();
        let s = bp.settlement;
        let mut run = pb::Run {
            run_id: String::new(),
            partner_id: spec.partner_id.clone(),
            business_date: spec.business_date.clone(),
            bank_records: bp.left_records,
            partner_records: bp.right_records,
            classes: summary_pb(bp, c),
            open_breaks: bp.open_breaks(),
            settlement: Some(pb::Settlement {
                partner_owes_bank: money(s.partner_owes_bank(), c),
                partner_disbursement_share: money(s.partner_disbursement_share, c),
                partner_repayment_share: money(s.partner_repayment_share, c),
                partner_owes_gross: money(s.partner_owes_gross, c),
                bank_owes_gross: money(s.bank_owes_gross, c),
                lines: s.lines,
            }),
            completed_at: Some(timestamp(now_millis())),
            options: Some(spec.options),
            ledger_records,
            ledger_pairs: outcomes[1..]
                .iter()
                .map(|o| pb::PairSummary {
                    pair: o.pair.map(pair_pb).unwrap_or_default() as i32,
                    classes: summary_pb(o, c),
                    open_breaks: o.open_breaks(),
                })
                .collect(),
            rejected_rows: rejected_count,
            rejected,
            resolved_earlier_breaks: outcomes.iter().map(|o| o.resolved.len() as i64).sum(),
            matched_one_to_one: bp.one_to_one,
            matched_one_to_many: bp.one_to_many,
            matched_many_to_one: bp.many_to_one,
            matched_within_tolerance: bp.within_tolerance,
        };
        if dry_run {
            return Ok(run);
        }
        idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let now = now_millis();
                let run_id = format!("run_{}", uuid::Uuid::now_v7().simple());
                run.run_id = run_id.clone();
                store_run(tx, &run, &outcomes, chunks, &currency, now).await?;
                for o in &outcomes {
                    for (class, (count, _)) in &o.classes {
                        metrics::counter!("colend_recon_items_total", "class" => class.name())
                            .increment(*count as u64);
                    }
                }
                Ok(run)
            })
        })
        .await
    }

    pub async fn get_run(&self, run_id: &str) -> ApiResult<pb::Run> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT body FROM recon_runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.db.pool)
                .await?;
        let (body,) = row.ok_or_else(|| ApiError::NotFound("run".into()))?;
        let bytes = hex::decode(body).map_err(ApiError::internal)?;
        pb::Run::decode(bytes.as_slice()).map_err(ApiError::internal)
    }

    /// Breaks matching `run_id` (if given) and the filter, keyset-paginated
    /// by break id.
    pub async fn breaks(
        &self,
        run_id: &str,
        f: &pb::BreakFilter,
        page_size: i64,
        after: &str,
    ) -> ApiResult<(Vec<pb::Break>, String)> {
        if !run_id.is_empty() {
            self.get_run(run_id).await?;
        }
        let class = pb::BreakClass::try_from(f.break_class)
            .ok()
            .filter(|c| *c != pb::BreakClass::Unspecified)
            .map(|c| {
                c.as_str_name()
                    .trim_start_matches("BREAK_CLASS_")
                    .to_string()
            })
            .unwrap_or_default();
        let status = pb::BreakStatus::try_from(f.status)
            .ok()
            .filter(|c| *c != pb::BreakStatus::Unspecified)
            .map(|c| {
                c.as_str_name()
                    .trim_start_matches("BREAK_STATUS_")
                    .to_string()
            })
            .unwrap_or_default();
        let pair = pb::Pair::try_from(f.pair)
            .ok()
            .filter(|c| *c != pb::Pair::Unspecified)
            .map(|c| c.as_str_name().trim_start_matches("PAIR_").to_string())
            .unwrap_or_default();
        let rows = sqlx::query(&format!(
            "SELECT {BREAK_COLUMNS} FROM recon_breaks \
             WHERE ($1 = '' OR run_id = $1) AND ($2 = '' OR partner_id = $2) AND ($3 = '' OR break_class = $3) \
             AND ($4 = '' OR status = $4) AND ($5 = '' OR loan_id = $5) AND ($6 = '' OR pair = $6) \
             AND break_id > $7 ORDER BY break_id LIMIT $8"
        ))
        .bind(run_id)
        .bind(&f.partner_id)
        .bind(class)
        .bind(status)
        .bind(&f.loan_id)
        .bind(pair)
        .bind(after)
        .bind(page_size + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let mut out: Vec<pb::Break> = rows.iter().map(break_of_row).collect();
        let next = if out.len() as i64 > page_size {
            out.truncate(page_size as usize);
            out.last().map(|b| b.break_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    /// Closes an open break by hand.
    pub async fn resolve(
        &self,
        request_id: String,
        hash: String,
        break_id: String,
        resolved_by: String,
        reason: String,
    ) -> ApiResult<pb::Break> {
        let scope = "ResolveBreak".to_string();
        idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let row = sqlx::query(&format!(
                    "SELECT {BREAK_COLUMNS} FROM recon_breaks WHERE break_id = $1"
                ))
                .bind(&break_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::NotFound("break".into()))?;
                if break_of_row(&row).status == pb::BreakStatus::Resolved as i32 {
                    return Err(ApiError::InvalidState(format!(
                        "break {break_id} is already resolved"
                    )));
                }
                sqlx::query(
                    "UPDATE recon_breaks SET status = 'RESOLVED', resolved_by = $1, resolution_reason = $2, \
                     resolved_at = $3 WHERE break_id = $4 AND status = 'OPEN'",
                )
                .bind(&resolved_by)
                .bind(&reason)
                .bind(now_millis())
                .bind(&break_id)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query(&format!(
                    "SELECT {BREAK_COLUMNS} FROM recon_breaks WHERE break_id = $1"
                ))
                .bind(&break_id)
                .fetch_one(&mut *tx)
                .await?;
                Ok(pb::ResolveBreakResponse {
                    r#break: Some(break_of_row(&row)),
                })
            })
        })
        .await
        .map(|r| r.r#break.unwrap_or_default())
    }

    /// A run's settlement lines, chunk by chunk.
    pub async fn settlement_chunk(
        &self,
        run_id: &str,
        chunk: i64,
    ) -> ApiResult<Option<pb::StreamSettlementLinesResponse>> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT body FROM recon_settlement_chunks WHERE run_id = $1 AND chunk = $2",
        )
        .bind(run_id)
        .bind(chunk)
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|(b,)| pb::StreamSettlementLinesResponse::decode(b.as_slice()))
            .transpose()
            .map_err(ApiError::internal)
    }
}

/// Settlement lines as stored: chunks of encoded StreamSettlementLinesResponse.
fn encode_lines(lines: &domain::SettlementLines, c: &str) -> Vec<Vec<u8>> {
    // One line message reused, encoded as field 1 of StreamSettlementLinesResponse.
    let mut chunks = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(LINES_PER_CHUNK * 80);
    let mut line = pb::SettlementLine {
        amount: money(0, c),
        owed: money(0, c),
        ..Default::default()
    };
    for (n, l) in lines.iter().enumerate() {
        line.transaction_id.clear();
        line.transaction_id.push_str(l.transaction_id);
        line.loan_id.clear();
        line.loan_id.push_str(l.loan_id);
        line.kind = kind_pb(l.kind) as i32;
        line.value_date.clear();
        domain::push_day(&mut line.value_date, l.value_date);
        if let Some(m) = &mut line.amount {
            m.minor_units = l.amount;
        }
        if let Some(m) = &mut line.owed {
            m.minor_units = l.owed;
        }
        line.owed_by = book_pb(l.owed_by) as i32;
        prost::encoding::message::encode(1, &line, &mut buf);
        if (n + 1) % LINES_PER_CHUNK == 0 {
            chunks.push(std::mem::replace(
                &mut buf,
                Vec::with_capacity(LINES_PER_CHUNK * 80),
            ));
        }
    }
    if !buf.is_empty() {
        chunks.push(buf);
    }
    chunks
}

const BREAK_COLUMNS: &str = "break_id, run_id, partner_id, business_date, pair, break_class, status, transaction_id, \
    loan_id, currency, bank_amount, partner_amount, ledger_amount, detail, components, left_record, right_record, \
    resolved_by, resolution_reason, resolved_at, resolved_by_run_id";

fn break_of_row(r: &sqlx::any::AnyRow) -> pb::Break {
    let pair = Pair::parse(&r.get::<String, _>(4)).unwrap_or(Pair::BankPartner);
    let c: String = r.get(9);
    let status = if r.get::<String, _>(6) == "RESOLVED" {
        pb::BreakStatus::Resolved
    } else {
        pb::BreakStatus::Open
    };
    let business_date: String = r.get(3);
    let resolved_at: i64 = r.get(19);
    let until = if status == pb::BreakStatus::Resolved {
        colend_platform::time::datetime(resolved_at).date_naive()
    } else {
        colend_platform::time::today()
    };
    let age = colend_platform::time::parse_date(&business_date)
        .map(|d| (until - d).num_days().max(0) as i32)
        .unwrap_or(0);
    let (l, rr): (String, String) = (r.get(15), r.get(16));
    let (left, right) = (record_of_hex(&l), record_of_hex(&rr));
    let (bank, partner, ledger) = match pair {
        Pair::BankPartner => (left, right, None),
        Pair::BankLedger => (left, None, right),
        Pair::PartnerLedger => (None, left, right),
    };
    let components: String = r.get(14);
    let some_money = |v: i64, present: bool| if present { money(v, &c) } else { None };
    pb::Break {
        break_id: r.get(0),
        break_class: Class::parse(&r.get::<String, _>(5))
            .map(class_pb)
            .unwrap_or_default() as i32,
        transaction_id: r.get(7),
        loan_id: r.get(8),
        bank_amount: some_money(r.get(10), bank.is_some()),
        partner_amount: some_money(r.get(11), partner.is_some()),
        ledger_amount: some_money(r.get(12), ledger.is_some()),
        detail: r.get(13),
        run_id: r.get(1),
        partner_id: r.get(2),
        business_date,
        pair: pair_pb(pair) as i32,
        status: status as i32,
        age_days: age,
        components: components
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        bank_record: bank,
        partner_record: partner,
        ledger_record: ledger,
        resolution: (status == pb::BreakStatus::Resolved).then(|| pb::Resolution {
            resolved_by: r.get(17),
            reason: r.get(18),
            resolved_at: Some(timestamp(resolved_at)),
            resolved_by_run_id: r.get(20),
        }),
    }
}

/// Writes a run, its breaks and settlement lines, and closes the earlier
/// breaks it resolved or superseded; all in the caller's transaction.
async fn store_run(
    tx: &mut AnyConnection,
    run: &pb::Run,
    outcomes: &[Outcome],
    chunks: Vec<Vec<u8>>,
    currency: &str,
    now: i64,
) -> ApiResult<()> {
    let run_id = &run.run_id;
    // A day reconciled again supersedes the earlier runs of that day.
    sqlx::query(
        "UPDATE recon_breaks SET status = 'RESOLVED', resolved_by = 'colend-reconciliation', \
         resolution_reason = 'superseded: the day was reconciled again', resolved_at = $1, resolved_by_run_id = $2 \
         WHERE partner_id = $3 AND business_date = $4 AND status = 'OPEN'",
    )
    .bind(now)
    .bind(run_id)
    .bind(&run.partner_id)
    .bind(&run.business_date)
    .execute(&mut *tx)
    .await?;
    for o in outcomes {
        for ids in o.resolved.chunks(ROWS_PER_INSERT) {
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "UPDATE recon_breaks SET status = 'RESOLVED', resolved_by = 'colend-reconciliation', \
                 resolution_reason = 'the missing record arrived', resolved_at = $1, resolved_by_run_id = $2 \
                 WHERE status = 'OPEN' AND break_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(now).bind(run_id);
            for id in ids {
                q = q.bind(id);
            }
            q.execute(&mut *tx).await?;
        }
    }
    let items: Vec<&BreakItem> = outcomes.iter().flat_map(|o| o.breaks.iter()).collect();
    const COLS: usize = 17;
    for (chunk_no, chunk) in items.chunks(ROWS_PER_INSERT).enumerate() {
        let mut sql = String::from(
            "INSERT INTO recon_breaks (break_id, run_id, partner_id, business_date, pair, break_class, status, \
             transaction_id, loan_id, currency, bank_amount, partner_amount, ledger_amount, detail, components, \
             left_record, right_record, created_at) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let b = i * COLS;
            sql.push('(');
            for k in 1..=COLS {
                sql.push_str(&format!("${}, ", b + k));
            }
            sql.push_str(&format!("{now})"));
        }
        let mut q = sqlx::query(&sql);
        for (i, b) in chunk.iter().enumerate() {
            let n = chunk_no * ROWS_PER_INSERT + i;
            let amount = |r: &Option<Rec>| r.as_ref().map(|r| r.amount).unwrap_or(0);
            let (bank, partner, ledger) = match b.pair {
                Pair::BankPartner => (amount(&b.left), amount(&b.right), 0),
                Pair::BankLedger => (amount(&b.left), 0, amount(&b.right)),
                Pair::PartnerLedger => (0, amount(&b.left), amount(&b.right)),
            };
            q = q
                .bind(format!("{run_id}-{n:08}"))
                .bind(run_id)
                .bind(&run.partner_id)
                .bind(&run.business_date)
                .bind(b.pair.name())
                .bind(b.class.name())
                .bind("OPEN")
                .bind(&b.transaction_id)
                .bind(&b.loan_id)
                .bind(currency)
                .bind(bank)
                .bind(partner)
                .bind(ledger)
                .bind(&b.detail)
                .bind(b.components.join(","))
                .bind(hex_record(&b.left, currency))
                .bind(hex_record(&b.right, currency));
        }
        q.execute(&mut *tx).await?;
    }
    for (i, body) in chunks.into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO recon_settlement_chunks (run_id, chunk, body) VALUES ($1, $2, $3)",
        )
        .bind(run_id)
        .bind(i as i64)
        .bind(body)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO recon_runs (run_id, partner_id, business_date, body, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(run_id)
    .bind(&run.partner_id)
    .bind(&run.business_date)
    .bind(hex::encode(run.encode_to_vec()))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
