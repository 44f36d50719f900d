//! Reconciliation use cases: build a run from staged or streamed records,
//! store its breaks and settlement lines, list and resolve breaks.
//!
//! What must hold: every open break of the partner's earlier days, of every
//! class, is examined again by each run (rolling re-matching); a break's
//! amount settles once, in the run that resolves it (or, resolved by hand with
//! settle, in the partner's next run for that day or later); a run that
//! reconciles a day again takes over what the day's earlier runs resolved and
//! settled, so nothing settles twice and nothing is lost, and is refused once a
//! later day's run or a person has closed one of the day's breaks (it would
//! find, and could settle, those transactions again); a duplicate never
//! settles; business days are dates in the configured time zone, never UTC
//! dates.
use crate::domain::{
    self, Book, BreakItem, Class, Kind, Outcome, Overflow, Pair, Rec, Reconciler, Tolerance,
    format_day,
};
use colend_contracts::common::v1::Money;
use colend_contracts::reconciliation::v1 as pb;
use colend_platform::time::{
    Clock, Tz, business_date, format_date, now_millis, parse_date, timestamp,
};
use colend_platform::{ApiError, ApiResult, Db, idempotency};
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashMap, HashSet};

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

/// The business time zone when `COLEND_RECON_TIME_ZONE` is not set (CN).
pub const DEFAULT_TIME_ZONE: &str = "Asia/Shanghai";
/// The currency of a run without records when `COLEND_RECON_CURRENCY` is
/// not set (CN).
pub const DEFAULT_CURRENCY: &str = "CNY";

/// How the service runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The time zone of business days (`COLEND_RECON_TIME_ZONE`, an IANA name;
    /// default Asia/Shanghai; Asia/Kolkata for an Indian bank). "Today" for a
    /// break's age and the business day a hand resolution settles from are
    /// its dates, never UTC dates.
    pub time_zone: Tz,
    /// The currency of a run that brings no record, for a day never
    /// reconciled before (`COLEND_RECON_CURRENCY`, an ISO 4217 code; default
    /// CNY; INR for an Indian bank). A day reconciled before is run again in
    /// the currency of its latest stored run.
    pub currency: colend_core::Currency,
    /// Where "now" is read: the system clock (tests may set a manual one).
    pub clock: Clock,
}

impl Settings {
    /// From the environment; a time zone that is not an IANA name fails start-up.
    pub fn from_env() -> anyhow::Result<Settings> {
        let name = colend_platform::config::env_or("COLEND_RECON_TIME_ZONE", DEFAULT_TIME_ZONE);
        let code = colend_platform::config::env_or("COLEND_RECON_CURRENCY", DEFAULT_CURRENCY);
        Ok(Settings {
            time_zone: time_zone(&name)?,
            currency: currency(&code)?,
            clock: Clock::System,
        })
    }
}

/// The currency `COLEND_RECON_CURRENCY` names, or why it names none.
pub fn currency(code: &str) -> anyhow::Result<colend_core::Currency> {
    colend_core::Currency::parse(code.trim()).map_err(|e| {
        anyhow::anyhow!(
            "COLEND_RECON_CURRENCY={code:?} is not an ISO 4217 currency code loans are made in (such as CNY or INR): {e}"
        )
    })
}

/// The time zone `COLEND_RECON_TIME_ZONE` names, or why it names none.
pub fn time_zone(name: &str) -> anyhow::Result<Tz> {
    colend_platform::time::time_zone_setting("COLEND_RECON_TIME_ZONE", name)
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            time_zone: Tz::Asia__Shanghai,
            currency: colend_core::Currency::CNY,
            clock: Clock::System,
        }
    }
}

#[derive(Clone)]
pub struct Reconciliation {
    db: Db,
    ledger: Option<FundingLedger>,
    settings: Settings,
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

/// A record stored with a break as a domain record, with its currency. Read
/// as [`rec_of`] reads new input, except that the currency code need only
/// have the shape of one (three upper-case letters): a break an earlier
/// version stored in a code the ISO 4217 table now refuses still decodes,
/// and stays open for a run in its currency (there is none) or a hand
/// resolution.
pub fn stored_rec_of(r: pb::Record) -> Result<(Rec, String), String> {
    rec_parts(r, domain::currency_shaped).map_err(|p| {
        p.iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Like [`rec_of`], with every problem as (field, message).
pub fn rec_checked(r: pb::Record) -> Result<(Rec, String), Vec<(&'static str, &'static str)>> {
    rec_parts(r, |c| colend_core::Currency::parse(c).is_ok())
}

/// A wire record as a domain record; `currency_ok` checks the code.
fn rec_parts(
    r: pb::Record,
    currency_ok: fn(&str) -> bool,
) -> Result<(Rec, String), Vec<(&'static str, &'static str)>> {
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
    if !currency_ok(&a.currency_code) {
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

/// A break of an earlier day the run examines again: open, or closed by a
/// run of the same day this run supersedes.
struct CarriedRow {
    break_id: String,
    pair: Pair,
    class: Class,
    currency: String,
    left: Option<Rec>,
    right: Option<Rec>,
    /// '' when open; else the superseded run that closed it.
    closed_by: String,
}

/// A break resolved by hand with settle that this run settles: waiting for
/// a run, or settled by a run of the same day this run supersedes.
struct HandRow {
    break_id: String,
    currency: String,
    bank: Rec,
    /// '' while waiting; else the superseded run that settled it.
    settled_by: String,
}

/// A run being fed: records of either side, rejected rows, the content hash.
pub struct RunBuilder {
    spec: RunSpec,
    reconciler: Reconciler,
    currency: Option<String>,
    /// The run's currency when it brings no record: its day's latest stored
    /// run's, else the configured one.
    idle_currency: String,
    rejected: Vec<pb::RejectedRow>,
    rejected_count: i64,
    ledger_records: i64,
    hasher: Sha256,
    /// Loaded by `begin`; handed to the matchers once the run's currency is
    /// known (breaks in another currency are left to a run in theirs).
    carried: Vec<CarriedRow>,
    hand: Vec<HandRow>,
    installed: bool,
    /// The breaks handed to the matchers: id → `closed_by`.
    carried_in: HashMap<String, String>,
    /// The hand resolutions settled: (id, `settled_by`).
    hand_in: Vec<(String, String)>,
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
            None => {
                self.install(&currency);
                self.currency = Some(currency);
            }
            _ => {}
        }
        if book == Book::Ledger {
            self.ledger_records += 1;
        }
        self.reconciler.feed(book, rec);
    }

    /// Hands the earlier breaks in the run's `currency` to the matchers,
    /// before the run's first record: a run settles in one currency only.
    fn install(&mut self, currency: &str) {
        if self.installed {
            return;
        }
        self.installed = true;
        for c in std::mem::take(&mut self.carried) {
            if c.currency == currency
                && self
                    .reconciler
                    .carry(c.pair, c.break_id.clone(), c.class, c.left, c.right)
            {
                self.carried_in.insert(c.break_id, c.closed_by);
            }
        }
        for h in std::mem::take(&mut self.hand) {
            if h.currency == currency {
                self.reconciler
                    .bank_partner
                    .settle_resolved(h.break_id.clone(), &h.bank);
                self.hand_in.push((h.break_id, h.settled_by));
            }
        }
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
    pub fn new(db: Db, ledger: Option<FundingLedger>, settings: Settings) -> Self {
        Reconciliation {
            db,
            ledger,
            settings,
        }
    }

    /// Today's business date in the configured time zone.
    pub fn today(&self) -> chrono::NaiveDate {
        self.settings.clock.business_date(self.settings.time_zone)
    }

    /// Now (epoch milliseconds), by the configured clock.
    fn now(&self) -> i64 {
        self.settings.clock.now_millis()
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

    /// Starts a run: loads the breaks it examines again (the partner's open
    /// breaks of earlier days, of every class, and those that runs of the same
    /// day, which this run supersedes, closed by re-matching) and the hand
    /// resolutions it settles; for a three-way run, loads the funding ledger.
    pub async fn begin(&self, spec: RunSpec) -> ApiResult<RunBuilder> {
        let three_way = spec.options.three_way;
        let mut b = RunBuilder {
            reconciler: Reconciler::new(spec.tolerance(), three_way),
            spec,
            currency: None,
            idle_currency: self.settings.currency.as_str().to_string(),
            rejected: Vec::new(),
            rejected_count: 0,
            ledger_records: 0,
            hasher: Sha256::new(),
            carried: Vec::new(),
            hand: Vec::new(),
            installed: false,
            carried_in: HashMap::new(),
            hand_in: Vec::new(),
        };
        let (partner, day) = (&b.spec.partner_id, &b.spec.business_date);
        let latest: Option<(String,)> = sqlx::query_as(
            "SELECT body FROM recon_runs WHERE partner_id = $1 AND business_date = $2 \
             ORDER BY created_at DESC, run_id DESC LIMIT 1",
        )
        .bind(partner)
        .bind(day)
        .fetch_optional(&self.db.pool)
        .await?;
        if let Some((body,)) = latest {
            let run = hex::decode(body)
                .map_err(ApiError::internal)
                .and_then(|b| pb::Run::decode(b.as_slice()).map_err(ApiError::internal))?;
            if let Some(c) = run
                .settlement
                .and_then(|s| s.partner_owes_bank)
                .map(|m| m.currency_code)
                .filter(|c| domain::currency_shaped(c))
            {
                b.idle_currency = c;
            }
        }
        let cols = "break_id, pair, break_class, currency, left_record, right_record, resolved_by_run_id, \
                    settled_by_run_id, status";
        let open = sqlx::query(&format!(
            "SELECT {cols} FROM recon_breaks \
             WHERE partner_id = $1 AND status = 'OPEN' AND business_date < $2 ORDER BY break_id"
        ))
        .bind(partner)
        .bind(day)
        .fetch_all(&self.db.pool)
        .await?;
        let closed_today = sqlx::query(&format!(
            "SELECT {cols} FROM recon_breaks \
             WHERE resolved_by_run_id IN (SELECT run_id FROM recon_runs WHERE partner_id = $1 AND business_date = $2) \
             AND partner_id = $1 AND status = 'RESOLVED' AND resolution_kind IN ('MATCHED', 'REPLACED', 'CLEARED') \
             AND business_date < $2 ORDER BY break_id"
        ))
        .bind(partner)
        .bind(day)
        .fetch_all(&self.db.pool)
        .await?;
        let hand = sqlx::query(&format!(
            "SELECT {cols} FROM recon_breaks \
             WHERE partner_id = $1 AND settle_on > '' AND settle_on <= $2 AND resolution_kind = 'BY_HAND' \
             AND (settled_by_run_id = '' OR settled_by_run_id IN \
             (SELECT run_id FROM recon_runs WHERE partner_id = $1 AND business_date = $2)) ORDER BY break_id"
        ))
        .bind(partner)
        .bind(day)
        .fetch_all(&self.db.pool)
        .await?;
        let record = |hex: String| -> ApiResult<Option<Rec>> {
            match record_of_hex(&hex) {
                None if hex.is_empty() => Ok(None),
                None => Err(ApiError::internal(anyhow::anyhow!(
                    "a stored break record does not decode"
                ))),
                Some(r) => stored_rec_of(r).map(|(r, _)| Some(r)).map_err(|e| {
                    ApiError::internal(anyhow::anyhow!("a stored break record is invalid: {e}"))
                }),
            }
        };
        let decode = |row: &sqlx::any::AnyRow| -> ApiResult<CarriedRow> {
            let pair: String = row.try_get("pair")?;
            let class: String = row.try_get("break_class")?;
            let status: String = row.try_get("status")?;
            Ok(CarriedRow {
                break_id: row.try_get("break_id")?,
                pair: Pair::parse(&pair).ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("stored break pair {pair:?}"))
                })?,
                class: Class::parse(&class).ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("stored break class {class:?}"))
                })?,
                currency: row.try_get("currency")?,
                left: record(row.try_get("left_record")?)?,
                right: record(row.try_get("right_record")?)?,
                closed_by: if status == "OPEN" {
                    String::new()
                } else {
                    row.try_get("resolved_by_run_id")?
                },
            })
        };
        for row in open.iter().chain(&closed_today) {
            let c = decode(row)?;
            if c.left.is_some() || c.right.is_some() {
                b.carried.push(c);
            }
        }
        for row in &hand {
            let c = decode(row)?;
            if let (Pair::BankPartner, Some(bank)) = (c.pair, c.left) {
                b.hand.push(HandRow {
                    break_id: c.break_id,
                    currency: c.currency,
                    bank,
                    settled_by: row.try_get("settled_by_run_id")?,
                });
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
        let mut b = b;
        // A run without records still takes over its day's earlier runs: in
        // the currency of the latest of them, else the configured one.
        let currency = b
            .currency
            .clone()
            .unwrap_or_else(|| b.idle_currency.clone());
        b.install(&currency);
        let RunBuilder {
            spec,
            reconciler,
            rejected,
            rejected_count,
            ledger_records,
            carried_in,
            hand_in,
            ..
        } = b;
        // Matching the leftovers and encoding the settlement lines is CPU
        // work: keep it off the async workers.
        let c = currency.clone();
        let dry_run = spec.options.dry_run;
        let (outcomes, chunks) = tokio::task::spawn_blocking(move || {
            let outcomes = reconciler.finish()?;
            let chunks = if dry_run {
                Vec::new()
            } else {
                encode_lines(&outcomes[0].lines, &c)
            };
            Ok::<_, Overflow>((outcomes, chunks))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(overflow)?;
        let bp = &outcomes[0];
        let c = currency.as_str();
        let s = bp.settlement;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let mut run = pb::Run {
            run_id: String::new(),
            partner_id: spec.partner_id.clone(),
            business_date: spec.business_date.clone(),
            bank_records: bp.left_records,
            partner_records: bp.right_records,
            classes: summary_pb(bp, c),
            open_breaks: bp.open_breaks(),
            settlement: Some(pb::Settlement {
                partner_owes_bank: money(
                    s.partner_owes_bank()
                        .ok_or_else(|| overflow(Overflow("net settlement")))?,
                    c,
                ),
                partner_disbursement_share: money(s.partner_disbursement_share, c),
                partner_repayment_share: money(s.partner_repayment_share, c),
                partner_owes_gross: money(s.partner_owes_gross, c),
                bank_owes_gross: money(s.bank_owes_gross, c),
                lines: s.lines,
            }),
            completed_at: Some(timestamp(self.now())),
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
            resolved_earlier_breaks: count(
                outcomes
                    .iter()
                    .map(|o| o.resolved.len() + o.cleared.len())
                    .sum(),
            ),
            matched_one_to_one: bp.one_to_one,
            matched_one_to_many: bp.one_to_many,
            matched_many_to_one: bp.many_to_one,
            matched_within_tolerance: bp.within_tolerance,
            replaced_earlier_breaks: count(outcomes.iter().map(|o| o.replaced.len()).sum()),
            settled_hand_resolved_breaks: count(bp.settled.len()),
        };
        if dry_run {
            // What the run would be: refused as the run itself would be.
            let mut conn = self.db.pool.acquire().await?;
            day_taken_further(&mut conn, &run, &currency).await?;
            return Ok(run);
        }
        let now = self.now();
        idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let run_id = format!("run_{}", uuid::Uuid::now_v7().simple());
                run.run_id = run_id.clone();
                let earlier = Earlier {
                    carried_in: &carried_in,
                    hand_in: &hand_in,
                };
                store_run(tx, &run, &outcomes, earlier, chunks, &currency, now).await?;
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
        let day = Days {
            tz: self.settings.time_zone,
            today: self.today(),
        };
        let mut out: Vec<pb::Break> = rows.iter().map(|r| break_of_row(r, day)).collect();
        let next = if out.len() as i64 > page_size {
            out.truncate(page_size as usize);
            out.last().map(|b| b.break_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    /// Closes an open break by hand. With `settle`, the bank's record behind
    /// it settles in the partner's next stored run (in the break's currency)
    /// whose business day is today's, in the business time zone, or later.
    pub async fn resolve(
        &self,
        request_id: String,
        hash: String,
        break_id: String,
        resolved_by: String,
        reason: String,
        settle: bool,
    ) -> ApiResult<pb::Break> {
        let scope = "ResolveBreak".to_string();
        let day = Days {
            tz: self.settings.time_zone,
            today: self.today(),
        };
        let now = self.now();
        let settle_on = if settle {
            format_date(day.today)
        } else {
            String::new()
        };
        idempotency::run(&self.db, scope, request_id, hash, move |tx| {
            Box::pin(async move {
                let row = sqlx::query(&format!(
                    "SELECT {BREAK_COLUMNS} FROM recon_breaks WHERE break_id = $1"
                ))
                .bind(&break_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::NotFound("break".into()))?;
                let b = break_of_row(&row, day);
                if b.status == pb::BreakStatus::Resolved as i32 {
                    return Err(ApiError::InvalidState(format!(
                        "break {break_id} is already resolved"
                    )));
                }
                if settle {
                    let why = if b.pair != pb::Pair::BankPartner as i32 {
                        Some("only a BANK_PARTNER break settles")
                    } else if b.break_class == pb::BreakClass::Duplicate as i32 {
                        Some("a DUPLICATE is a copy of a transaction already matched; it settles nothing")
                    } else if b.bank_record.is_none() {
                        Some("it has no bank record to settle from (the bank books it, and a later run matches it)")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        return Err(ApiError::InvalidState(format!(
                            "break {break_id} cannot be settled: {why}"
                        )));
                    }
                }
                let done = sqlx::query(
                    "UPDATE recon_breaks SET status = 'RESOLVED', resolved_by = $1, resolution_reason = $2, \
                     resolved_at = $3, resolution_kind = 'BY_HAND', settle_on = $4 \
                     WHERE break_id = $5 AND status = 'OPEN'",
                )
                .bind(&resolved_by)
                .bind(&reason)
                .bind(now)
                .bind(&settle_on)
                .bind(&break_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done != 1 {
                    return Err(ApiError::InvalidState(format!(
                        "break {break_id} is already resolved"
                    )));
                }
                let row = sqlx::query(&format!(
                    "SELECT {BREAK_COLUMNS} FROM recon_breaks WHERE break_id = $1"
                ))
                .bind(&break_id)
                .fetch_one(&mut *tx)
                .await?;
                Ok(pb::ResolveBreakResponse {
                    r#break: Some(break_of_row(&row, day)),
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
    resolved_by, resolution_reason, resolved_at, resolved_by_run_id, resolution_kind, settle_on, settled_by_run_id";

/// The business time zone and today's date in it, for a break's age.
#[derive(Clone, Copy)]
struct Days {
    tz: Tz,
    today: chrono::NaiveDate,
}

fn break_of_row(r: &sqlx::any::AnyRow, days: Days) -> pb::Break {
    let pair = Pair::parse(&r.get::<String, _>(4)).unwrap_or(Pair::BankPartner);
    let c: String = r.get(9);
    let status = if r.get::<String, _>(6) == "RESOLVED" {
        pb::BreakStatus::Resolved
    } else {
        pb::BreakStatus::Open
    };
    let day: String = r.get(3);
    let resolved_at: i64 = r.get(19);
    // Both ends are business days in the configured time zone.
    let until = if status == pb::BreakStatus::Resolved {
        business_date(days.tz, resolved_at)
    } else {
        days.today
    };
    let age = parse_date(&day)
        .map(|d| i32::try_from((until - d).num_days().max(0)).unwrap_or(i32::MAX))
        .unwrap_or(0);
    let kind: String = r.get(21);
    let settle_on: String = r.get(22);
    let settles = (kind == "MATCHED" && pair == Pair::BankPartner)
        || (kind == "BY_HAND" && !settle_on.is_empty());
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
        business_date: day,
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
            settles,
            settled_by_run_id: r.get(23),
        }),
    }
}

/// What a run took over from earlier runs (see [`RunBuilder`]).
struct Earlier<'a> {
    /// The breaks it examined again: id → the superseded run that had
    /// closed it ('' when it was open).
    carried_in: &'a HashMap<String, String>,
    /// The hand resolutions it settled: (id, the superseded run that had
    /// settled it, or '').
    hand_in: &'a [(String, String)],
}

/// A run of this partner changed a break this run read meanwhile: the run
/// is not stored, and a retry (with the same request id) reads the breaks
/// again.
fn concurrent_run() -> ApiError {
    ApiError::Dependency {
        service: "database".into(),
        message: "another run of this partner changed its breaks meanwhile; retry with the same request id"
            .into(),
    }
}

/// A total of the day that does not fit in int64 minor units.
fn overflow(o: Overflow) -> ApiError {
    ApiError::field("records", &o.to_string())
}

/// `UPDATE recon_breaks SET {set} WHERE {cond} AND break_id IN (…)` over
/// `ids`; `$1…` in `set` and `cond` take `binds`. Every id must still be in
/// the state `cond` describes (the state the run read): one that is not was
/// changed by another run meanwhile, and the run is refused.
async fn update_breaks(
    tx: &mut AnyConnection,
    set: &str,
    cond: &str,
    binds: &[&str],
    ids: &[&str],
) -> ApiResult<()> {
    for chunk in ids.chunks(ROWS_PER_INSERT) {
        let marks: Vec<String> = (0..chunk.len())
            .map(|i| format!("${}", binds.len() + i + 1))
            .collect();
        let sql = format!(
            "UPDATE recon_breaks SET {set} WHERE {cond} AND break_id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for v in binds {
            q = q.bind(*v);
        }
        for id in chunk {
            q = q.bind(*id);
        }
        let n = q.execute(&mut *tx).await?.rows_affected();
        if usize::try_from(n).ok() != Some(chunk.len()) {
            return Err(concurrent_run());
        }
    }
    Ok(())
}

/// The state a carried break was read in: open, or closed by re-matching in
/// the superseded run `$1`.
fn read_state(closed_by: &str) -> &'static str {
    if closed_by.is_empty() {
        "status = 'OPEN' AND $1 = ''"
    } else {
        "status = 'RESOLVED' AND resolution_kind IN ('MATCHED', 'REPLACED', 'CLEARED') AND resolved_by_run_id = $1"
    }
}

/// The pairs a run compares, as an SQL list: bank–partner, and in a
/// three-way run both ledger pairs. A run supersedes, reopens and guards only
/// these; the ledger breaks of an earlier three-way run of the day stand
/// against a run that is not three-way.
fn compared_pairs(run: &pb::Run) -> &'static str {
    if run.options.as_ref().is_some_and(|o| o.three_way) {
        "'BANK_PARTNER', 'BANK_LEDGER', 'PARTNER_LEDGER'"
    } else {
        "'BANK_PARTNER'"
    }
}

/// Refuses to reconcile a day again (`INVALID_STATE`) once one of its
/// breaks, in the run's currency and a pair the run compares, was closed by
/// a later day's run (its records matched, cleared or carried on) or by a
/// person: a new run of the day would find those transactions again, and
/// could settle money that already settled. Corrections of such a day are
/// sent in a later day's run, which re-matches the day's open breaks.
async fn day_taken_further(
    conn: &mut AnyConnection,
    run: &pb::Run,
    currency: &str,
) -> ApiResult<()> {
    let row = sqlx::query(&format!(
        "SELECT b.break_id, b.resolution_kind, b.resolved_by, b.resolved_by_run_id, \
         COALESCE((SELECT r.business_date FROM recon_runs r WHERE r.run_id = b.resolved_by_run_id), '') AS run_day \
         FROM recon_breaks b WHERE b.partner_id = $1 AND b.business_date = $2 AND b.currency = $3 \
         AND b.status = 'RESOLVED' AND b.resolution_kind IN ('MATCHED', 'REPLACED', 'CLEARED', 'BY_HAND') \
         AND b.pair IN ({}) ORDER BY b.break_id LIMIT 1",
        compared_pairs(run)
    ))
    .bind(&run.partner_id)
    .bind(&run.business_date)
    .bind(currency)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let break_id: String = row.try_get("break_id")?;
    let kind: String = row.try_get("resolution_kind")?;
    let how = if kind == "BY_HAND" {
        let who: String = row.try_get("resolved_by")?;
        format!("resolved by hand by {who}")
    } else {
        let by: String = row.try_get("resolved_by_run_id")?;
        let day: String = row.try_get("run_day")?;
        format!("closed by run {by} of {day}")
    };
    Err(ApiError::InvalidState(format!(
        "business day {} cannot be reconciled again in {currency}: its break {break_id} was {how}; \
         send corrections in a later day's run, which re-matches the day's open breaks",
        run.business_date
    )))
}

/// Writes a run, its breaks and settlement lines, and closes the earlier
/// breaks it resolved, replaced or superseded; all in the caller's transaction.
async fn store_run(
    tx: &mut AnyConnection,
    run: &pb::Run,
    outcomes: &[Outcome],
    earlier: Earlier<'_>,
    chunks: Vec<Vec<u8>>,
    currency: &str,
    now: i64,
) -> ApiResult<()> {
    let run_id = &run.run_id;
    // A day reconciled again supersedes the earlier runs of that day in the
    // same currency, in the pairs this run compares: their open breaks close
    // here; what they resolved and settled this run examined and settled
    // again (below).
    sqlx::query(&format!(
        "UPDATE recon_breaks SET status = 'RESOLVED', resolved_by = 'colend-reconciliation', \
         resolution_reason = 'superseded: the day was reconciled again', resolved_at = $1, resolved_by_run_id = $2, \
         resolution_kind = 'SUPERSEDED', settled_by_run_id = '' \
         WHERE partner_id = $3 AND business_date = $4 AND currency = $5 AND status = 'OPEN' AND pair IN ({})",
        compared_pairs(run)
    ))
    .bind(now)
    .bind(run_id)
    .bind(&run.partner_id)
    .bind(&run.business_date)
    .bind(currency)
    .execute(&mut *tx)
    .await?;
    // Checked after the update above, which waits for any run or hand
    // resolution closing these breaks at the same time: what they committed
    // is seen here.
    day_taken_further(tx, run, currency).await?;
    // Earlier breaks examined again, by what became of them and the state
    // they were read in.
    let mut resolved: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut cleared: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut touched: HashSet<&str> = HashSet::new();
    let mut offset = 0usize;
    for o in outcomes {
        for id in &o.resolved {
            let closed_by = earlier.carried_in.get(id).map_or("", String::as_str);
            resolved.entry(closed_by).or_default().push(id);
            touched.insert(id);
        }
        for id in &o.cleared {
            let closed_by = earlier.carried_in.get(id).map_or("", String::as_str);
            cleared.entry(closed_by).or_default().push(id);
            touched.insert(id);
        }
        for (id, at) in &o.replaced {
            let closed_by = earlier.carried_in.get(id).map_or("", String::as_str);
            let by = format!("{run_id}-{:08}", offset + at);
            let reason =
                format!("re-examined with a later record: still differs; carried on by break {by}");
            update_breaks(
                tx,
                &format!(
                    "status = 'RESOLVED', resolved_by = 'colend-reconciliation', resolution_reason = $2, \
                     resolved_at = {now}, resolved_by_run_id = $3, resolution_kind = 'REPLACED', settled_by_run_id = ''"
                ),
                read_state(closed_by),
                &[closed_by, &reason, run_id],
                &[id],
            )
            .await?;
            touched.insert(id);
        }
        offset += o.breaks.len();
    }
    for (closed_by, ids) in &resolved {
        // Settled in this run when the pair is the bank and the partner.
        update_breaks(
            tx,
            &format!(
                "status = 'RESOLVED', resolved_by = 'colend-reconciliation', \
                 resolution_reason = 're-matched: a later record makes it match', resolved_at = {now}, \
                 resolved_by_run_id = $2, resolution_kind = 'MATCHED', \
                 settled_by_run_id = CASE WHEN pair = 'BANK_PARTNER' THEN $2 ELSE '' END"
            ),
            read_state(closed_by),
            &[closed_by, run_id],
            ids,
        )
        .await?;
    }
    for (closed_by, ids) in &cleared {
        // A duplicate settles nothing: its transaction settled when its
        // first records matched.
        update_breaks(
            tx,
            &format!(
                "status = 'RESOLVED', resolved_by = 'colend-reconciliation', \
                 resolution_reason = 'cleared: the other side sent the same copy; a duplicate settles nothing', \
                 resolved_at = {now}, resolved_by_run_id = $2, resolution_kind = 'CLEARED', settled_by_run_id = ''"
            ),
            read_state(closed_by),
            &[closed_by, run_id],
            ids,
        )
        .await?;
    }
    // Closed by a superseded run of the day and not by this one: open again.
    let mut reopen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, closed_by) in earlier.carried_in {
        if !closed_by.is_empty() && !touched.contains(id.as_str()) {
            reopen.entry(closed_by).or_default().push(id);
        }
    }
    for (closed_by, ids) in &reopen {
        update_breaks(
            tx,
            "status = 'OPEN', resolved_by = '', resolution_reason = '', resolved_at = 0, \
             resolved_by_run_id = '', resolution_kind = '', settled_by_run_id = ''",
            read_state(closed_by),
            &[closed_by],
            ids,
        )
        .await?;
    }
    // Hand resolutions settled by this run.
    let mut hand: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, settled_by) in earlier.hand_in {
        hand.entry(settled_by).or_default().push(id);
    }
    for (settled_by, ids) in &hand {
        update_breaks(
            tx,
            "settled_by_run_id = $2",
            "status = 'RESOLVED' AND resolution_kind = 'BY_HAND' AND settle_on > '' AND settled_by_run_id = $1",
            &[settled_by, run_id],
            ids,
        )
        .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_record_needs_only_the_shape_of_a_currency_code() {
        let rec = |code: &str| {
            let m = |v: i64| {
                Some(Money {
                    minor_units: v,
                    currency_code: code.to_string(),
                })
            };
            pb::Record {
                kind: pb::RecordKind::Repayment as i32,
                transaction_id: "t1".into(),
                loan_id: "l1".into(),
                value_date: "2026-11-23".into(),
                amount: m(1_000),
                bank_portion: m(700),
                partner_portion: m(300),
                ..Default::default()
            }
        };
        for code in ["RMB", "XTS"] {
            // New input: refused by the ISO 4217 table.
            let e = rec_of(rec(code)).unwrap_err();
            assert!(e.contains("amount.currency_code"), "{e}");
            // Stored with a break by an earlier version: read back.
            let (r, c) = stored_rec_of(rec(code)).unwrap();
            assert_eq!((r.amount, c.as_str()), (1_000, code));
        }
        assert!(stored_rec_of(rec("CNY")).is_ok());
        // The shape is still checked, and every other rule.
        assert!(stored_rec_of(rec("rmb")).is_err());
        let mut bad = rec("RMB");
        bad.partner_portion = None;
        assert!(stored_rec_of(bad).is_err());
    }

    #[test]
    fn the_currency_of_a_run_without_records_is_an_iso_code() {
        assert_eq!(currency("INR").unwrap(), colend_core::Currency::INR);
        assert_eq!(
            currency(DEFAULT_CURRENCY).unwrap(),
            Settings::default().currency
        );
        for bad in ["RMB", "XTS", "cny", ""] {
            let e = currency(bad).unwrap_err().to_string();
            assert!(e.contains("COLEND_RECON_CURRENCY"), "{e}");
        }
    }

    #[test]
    fn the_business_time_zone_is_an_iana_name() {
        assert_eq!(time_zone("Asia/Kolkata").unwrap(), Tz::Asia__Kolkata);
        assert_eq!(
            time_zone(DEFAULT_TIME_ZONE).unwrap(),
            Settings::default().time_zone
        );
        for bad in ["UTC+8", "Beijing", ""] {
            let e = time_zone(bad).unwrap_err().to_string();
            assert!(e.contains("COLEND_RECON_TIME_ZONE"), "{e}");
        }
        // 16:30 UTC on 30 November is already 1 December in Shanghai, and
        // still 30 November in Kolkata (22:00).
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-30T16:30:00Z")
            .unwrap()
            .timestamp_millis();
        let day = |tz| format_date(business_date(tz, at));
        assert_eq!(day(Tz::Asia__Shanghai), "2026-12-01");
        assert_eq!(day(Tz::Asia__Kolkata), "2026-11-30");
    }
}
