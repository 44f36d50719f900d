//! Funding use cases.
use crate::domain::Pricing;
use crate::domain::{
    self, Bucket, DayCount, Instalment, InstalmentState, Jurisdiction, Method, Paid, Split, Terms,
    Waterfall,
};
use colend_contracts::acquisition::v1 as acq;
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_contracts::common::v1::{Funder, Money, RepaymentMethod};
use colend_contracts::funding::v1 as pb;
use colend_platform::config::env_parse;
use colend_platform::time::{format_date, now_millis, parse_date, timestamp, today};
use colend_platform::{ApiError, ApiResult, Cache, Db, idempotency};
use prost::Message;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

mod reserve;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Co-lending rules (`COLEND_FUNDING_JURISDICTION`: CN, IN-2020 or IN-2025; default CN).
    pub jurisdiction: Jurisdiction,
    /// Minimum partner share (`COLEND_FUNDING_MIN_PARTNER_SHARE_BPS`; default: the jurisdiction's).
    pub min_partner_share_bps: i64,
    /// Rule C2: one partner's co-lent balance against net tier-1 capital (`COLEND_FUNDING_C2_BPS`, 2500).
    pub c2_bps: i64,
    /// Rule C3: all co-lent loans against the total loan balance (`COLEND_FUNDING_C3_BPS`, 5000).
    pub c3_bps: i64,
    /// A reservation not disbursed within this is voided (`COLEND_FUNDING_RESERVATION_TTL_SECS`, 86400).
    pub reservation_ttl: Duration,
    /// How often expired reservations are swept (`COLEND_FUNDING_SWEEP_SECS`, 30).
    pub sweep_every: Duration,
    /// Agreement cache TTL (`COLEND_FUNDING_AGREEMENT_CACHE_TTL_SECS`, default 60).
    pub agreement_ttl: Duration,
    /// Most reservations committed together (`COLEND_FUNDING_RESERVE_BATCH`, 256; 1 turns
    /// group commit off).
    pub reserve_batch: usize,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let j = colend_platform::config::env_or("COLEND_FUNDING_JURISDICTION", "CN");
        let jurisdiction = Jurisdiction::parse(&j).ok_or_else(|| {
            anyhow::anyhow!("COLEND_FUNDING_JURISDICTION={j:?} is not one of CN, IN-2020, IN-2025")
        })?;
        Ok(Settings {
            jurisdiction,
            min_partner_share_bps: env_parse(
                "COLEND_FUNDING_MIN_PARTNER_SHARE_BPS",
                jurisdiction.min_partner_share_bps(),
            )?,
            c2_bps: env_parse("COLEND_FUNDING_C2_BPS", 2_500)?,
            c3_bps: env_parse("COLEND_FUNDING_C3_BPS", 5_000)?,
            reservation_ttl: Duration::from_secs(env_parse(
                "COLEND_FUNDING_RESERVATION_TTL_SECS",
                86_400u64,
            )?),
            sweep_every: Duration::from_secs(env_parse("COLEND_FUNDING_SWEEP_SECS", 30u64)?.max(1)),
            agreement_ttl: Duration::from_secs(env_parse(
                "COLEND_FUNDING_AGREEMENT_CACHE_TTL_SECS",
                60u64,
            )?),
            reserve_batch: match env_parse("COLEND_FUNDING_RESERVE_BATCH", 256usize)? {
                n @ 1..=1_000 => n,
                n => anyhow::bail!("COLEND_FUNDING_RESERVE_BATCH={n} must be 1 to 1000"),
            },
        })
    }
}

#[derive(Clone)]
pub struct Funding {
    db: Db,
    cache: Cache,
    acquisition: AcquisitionServiceClient<colend_platform::grpc::TracedChannel>,
    call_timeout: Duration,
    settings: Settings,
    outbox_ready: Arc<tokio::sync::Notify>,
    reserver: reserve::Reserver,
}

const LOAN_COLS: &str = "loan_id, application_id, partner_id, status, currency, principal, bank_amount, \
    partner_amount, agreement_version, partner_share_bps, bank_rate_bps, partner_rate_bps, annual_rate_bps, \
    term_months, method, reserved_on, disbursed_on, disbursement_ref, principal_paid, interest_paid, penalty_paid, \
    partner_principal_paid, partner_interest_paid, partner_penalty_paid, borrower_key, expires_at, day_count, \
    penalty_rate_bps, waterfall, interest_accrued, partner_interest_accrued, penalty_accrued, \
    partner_penalty_accrued, penalty_through, fee_bps, fee_partner_bps, fee_paid, partner_fee_paid, fee_accrued, \
    partner_fee_accrued";

/// A loan as stored.
#[derive(Clone, Debug)]
struct LoanRow {
    loan_id: String,
    application_id: String,
    partner_id: String,
    status: String,
    currency: String,
    principal: i64,
    bank_amount: i64,
    partner_amount: i64,
    agreement_version: i64,
    terms: Terms,
    annual_rate_bps: i64,
    term_months: i64,
    method: i64,
    reserved_on: String,
    disbursed_on: String,
    disbursement_ref: String,
    paid: Paid,
    borrower_key: String,
    expires_at: i64,
    day_count: DayCount,
    penalty_rate_bps: i64,
    waterfall: Waterfall,
    accrued: Accrued,
    penalty_through: String,
    /// Fees on top of interest, basis points a year.
    fee_bps: i64,
}

/// Interest and penalty accrued so far, and the partner's running part of each.
#[derive(Clone, Debug, Default)]
struct Accrued {
    interest: i64,
    partner_interest: i64,
    fee: i64,
    partner_fee: i64,
    penalty: i64,
    partner_penalty: i64,
}

fn loan_row(r: &AnyRow) -> LoanRow {
    LoanRow {
        loan_id: r.get(0),
        application_id: r.get(1),
        partner_id: r.get(2),
        status: r.get(3),
        currency: r.get(4),
        principal: r.get(5),
        bank_amount: r.get(6),
        partner_amount: r.get(7),
        agreement_version: r.get(8),
        terms: Terms {
            partner_share_bps: r.get(9),
            bank_rate_bps: r.get(10),
            partner_rate_bps: r.get(11),
            fee_partner_bps: r.get(35),
        },
        annual_rate_bps: r.get(12),
        term_months: r.get(13),
        method: r.get(14),
        reserved_on: r.get(15),
        disbursed_on: r.get(16),
        disbursement_ref: r.get(17),
        paid: Paid {
            principal: r.get(18),
            interest: r.get(19),
            penalty: r.get(20),
            partner_principal: r.get(21),
            partner_interest: r.get(22),
            partner_penalty: r.get(23),
            fee: r.get(36),
            partner_fee: r.get(37),
        },
        borrower_key: r.get(24),
        expires_at: r.get(25),
        day_count: DayCount::parse(&r.get::<String, _>(26)).unwrap_or(DayCount::Act360),
        penalty_rate_bps: r.get(27),
        waterfall: Waterfall::parse(&r.get::<String, _>(28)).unwrap_or_default(),
        accrued: Accrued {
            interest: r.get(29),
            partner_interest: r.get(30),
            penalty: r.get(31),
            partner_penalty: r.get(32),
            fee: r.get(38),
            partner_fee: r.get(39),
        },
        penalty_through: r.get(33),
        fee_bps: r.get(34),
    }
}

fn method_of(m: i64) -> Method {
    match RepaymentMethod::try_from(m as i32) {
        Ok(RepaymentMethod::EqualPrincipal) => Method::EqualPrincipal,
        Ok(RepaymentMethod::InterestFirst) => Method::InterestFirst,
        _ => Method::EqualInstalment,
    }
}

fn status_of(s: &str) -> pb::LoanStatus {
    match s {
        "RESERVED" => pb::LoanStatus::Reserved,
        "DISBURSED" => pb::LoanStatus::Disbursed,
        "VOID" => pb::LoanStatus::Void,
        "SETTLED" => pb::LoanStatus::Settled,
        _ => pb::LoanStatus::Unspecified,
    }
}

fn money(minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        minor_units: minor,
        currency_code: currency.to_string(),
    })
}

fn is_postgres(conn: &AnyConnection) -> bool {
    conn.backend_name() != "SQLite"
}

/// Reads the loan and locks its row until the transaction ends: every path
/// that moves a loan's money or status (disbursement, void, expiry, release,
/// repayment) takes this lock first and then checks the status it expects,
/// so two of them on one loan run one after the other and the second sees
/// what the first did. PostgreSQL: `SELECT … FOR UPDATE`; SQLite has a
/// single writer, which serialises them already.
async fn lock_loan(conn: &mut AnyConnection, loan_id: &str) -> ApiResult<LoanRow> {
    let lock = if is_postgres(conn) { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {LOAN_COLS} FROM loans WHERE loan_id = $1{lock}"
    ))
    .bind(loan_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref()
        .map(loan_row)
        .ok_or_else(|| ApiError::NotFound("loan".into()))
}

/// Locks applications against each other until the transaction ends: the
/// reservation batch and a release by application take these first, so an
/// application closed to funding can never gain a loan afterwards, and a
/// release never misses a reservation still being committed. Taken in one
/// order (sorted) so two batches cannot deadlock. PostgreSQL: advisory
/// transaction locks; SQLite has a single writer.
async fn lock_applications(conn: &mut AnyConnection, apps: &[&str]) -> ApiResult<()> {
    if !is_postgres(conn) || apps.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<String> = apps
        .iter()
        .map(|a| format!("colend.funding.application\n{a}"))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let rows: Vec<String> = (1..=keys.len()).map(|i| format!("(${i})")).collect();
    // OFFSET 0 keeps the sort below the locking projection: locks in key order.
    let sql = format!(
        "SELECT CAST(COUNT(pg_advisory_xact_lock(hashtextextended(k, 0))) AS BIGINT) FROM \
         (SELECT k FROM (VALUES {}) AS v(k) ORDER BY k OFFSET 0) AS sorted",
        rows.join(", ")
    );
    let mut q = sqlx::query_as::<_, (i64,)>(&sql);
    for k in keys {
        q = q.bind(k);
    }
    q.fetch_one(&mut *conn).await?;
    Ok(())
}

/// The loan's instalments with what was paid on each, and whether each one's
/// interest has been accrued.
async fn load_schedule(
    conn: &mut AnyConnection,
    loan_id: &str,
) -> ApiResult<(Vec<InstalmentState>, Vec<bool>)> {
    let rows = sqlx::query(
        "SELECT seq, due_date, principal, interest, principal_paid, interest_paid, accrued, fee, fee_paid FROM instalments \
         WHERE loan_id = $1 ORDER BY seq",
    )
    .bind(loan_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut s = Vec::with_capacity(rows.len());
    let mut accrued = Vec::with_capacity(rows.len());
    for r in rows {
        let due: String = r.get(1);
        s.push(InstalmentState {
            inst: Instalment {
                seq: r.get::<i64, _>(0) as i32,
                due: parse_date(&due)
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad stored date")))?,
                principal: r.get(2),
                interest: r.get(3),
                fee: r.get(7),
            },
            principal_paid: r.get(4),
            interest_paid: r.get(5),
            fee_paid: r.get(8),
        });
        accrued.push(r.get::<i64, _>(6) != 0);
    }
    Ok((s, accrued))
}

async fn load_repayments(conn: &mut AnyConnection, loan_id: &str) -> ApiResult<Vec<pb::Repayment>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT body FROM repayments WHERE loan_id = $1 ORDER BY created_at, repayment_id",
    )
    .bind(loan_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(b,)| {
            let bytes = hex::decode(b).map_err(ApiError::internal)?;
            pb::Repayment::decode(bytes.as_slice()).map_err(ApiError::internal)
        })
        .collect()
}

/// The agreement's day count; unspecified is ACT/360.
pub fn day_count_of(v: i32) -> DayCount {
    match pb::DayCount::try_from(v) {
        Ok(pb::DayCount::Act365) => DayCount::Act365,
        _ => DayCount::Act360,
    }
}

/// The agreement's waterfall; empty is the default, anything but a
/// permutation of the three components is `None`.
pub fn waterfall_of(v: &[i32]) -> Option<Waterfall> {
    if v.is_empty() {
        return Some(Waterfall::default());
    }
    let names: Vec<&str> = v
        .iter()
        .map(|c| match pb::Component::try_from(*c) {
            Ok(pb::Component::Penalty) => "PENALTY",
            Ok(pb::Component::Interest) => "INTEREST",
            Ok(pb::Component::Principal) => "PRINCIPAL",
            Ok(pb::Component::Fee) => "FEE",
            _ => "?",
        })
        .collect();
    Waterfall::parse(&names.join(","))
}

fn day_count_pb(d: DayCount) -> pb::DayCount {
    match d {
        DayCount::Act360 => pb::DayCount::Act360,
        DayCount::Act365 => pb::DayCount::Act365,
    }
}

fn component_pb(b: Bucket) -> pb::Component {
    match b {
        Bucket::Penalty => pb::Component::Penalty,
        Bucket::Fee => pb::Component::Fee,
        Bucket::Interest => pb::Component::Interest,
        Bucket::Principal => pb::Component::Principal,
    }
}

fn loan_pb(l: &LoanRow, schedule: &[InstalmentState], repayments: Vec<pb::Repayment>) -> pb::Loan {
    let c = &l.currency;
    let live = !(l.status == "RESERVED" || l.status == "VOID");
    let split = Split {
        bank: l.bank_amount,
        partner: l.partner_amount,
    };
    let insts: Vec<Instalment> = schedule.iter().map(|s| s.inst.clone()).collect();
    let (bank_lines, partner_lines) = domain::funder_schedules(&insts, split, &l.terms);
    let lines = |f: Funder, v: &[domain::FunderLine]| -> Vec<pb::FunderInstalment> {
        v.iter()
            .map(|x| pb::FunderInstalment {
                funder: f as i32,
                sequence: x.seq,
                principal: money(x.principal, c),
                interest: money(x.interest, c),
                fee: money(x.fee, c),
            })
            .collect()
    };
    let mut funder_schedule = lines(Funder::Bank, &bank_lines);
    funder_schedule.extend(lines(Funder::Partner, &partner_lines));
    let (p, a) = (&l.paid, &l.accrued);
    let balance = |f: Funder| {
        // (principal, principal paid, interest accrued/paid, fee accrued/paid, penalty accrued/paid)
        let v = match f {
            Funder::Partner => [
                l.partner_amount,
                p.partner_principal,
                a.partner_interest,
                p.partner_interest,
                a.partner_fee,
                p.partner_fee,
                a.partner_penalty,
                p.partner_penalty,
            ],
            _ => [
                l.bank_amount,
                p.principal - p.partner_principal,
                a.interest - a.partner_interest,
                p.interest - p.partner_interest,
                a.fee - a.partner_fee,
                p.fee - p.partner_fee,
                a.penalty - a.partner_penalty,
                p.penalty - p.partner_penalty,
            ],
        };
        pb::FunderBalance {
            funder: f as i32,
            principal_outstanding: money(if live { v[0] - v[1] } else { 0 }, c),
            interest_accrued: money(v[2], c),
            interest_paid: money(v[3], c),
            fee_accrued: money(v[4], c),
            fee_paid: money(v[5], c),
            penalty_accrued: money(v[6], c),
            penalty_paid: money(v[7], c),
        }
    };
    let balances = vec![balance(Funder::Bank), balance(Funder::Partner)];
    pb::Loan {
        loan_id: l.loan_id.clone(),
        application_id: l.application_id.clone(),
        partner_id: l.partner_id.clone(),
        status: status_of(&l.status) as i32,
        principal: money(l.principal, c),
        bank_amount: money(l.bank_amount, c),
        partner_amount: money(l.partner_amount, c),
        agreement_version: l.agreement_version as i32,
        partner_share_bps: l.terms.partner_share_bps as i32,
        bank_rate_bps: l.terms.bank_rate_bps as i32,
        partner_rate_bps: l.terms.partner_rate_bps as i32,
        annual_rate_bps: l.annual_rate_bps as i32,
        term_months: l.term_months as i32,
        repayment_method: l.method as i32,
        disbursed_on: l.disbursed_on.clone(),
        disbursement_transaction_ref: l.disbursement_ref.clone(),
        schedule: insts
            .iter()
            .map(|i| pb::Instalment {
                sequence: i.seq,
                due_date: format_date(i.due),
                principal: money(i.principal, c),
                interest: money(i.interest, c),
                total: money(i.total(), c),
                fee: money(i.fee, c),
            })
            .collect(),
        bank_outstanding: balances[0].principal_outstanding.clone(),
        partner_outstanding: balances[1].principal_outstanding.clone(),
        repayments,
        reservation_expires_at: (l.status == "RESERVED").then(|| timestamp(l.expires_at)),
        day_count: day_count_pb(l.day_count) as i32,
        penalty_rate_bps: l.penalty_rate_bps as i32,
        waterfall: l
            .waterfall
            .0
            .iter()
            .map(|b| component_pb(*b) as i32)
            .collect(),
        funder_schedule,
        balances,
        annual_fee_bps: l.fee_bps as i32,
        fee_partner_share_bps: l.terms.fee_partner_bps as i32,
    }
}

/// Stores instalments (nothing paid, nothing accrued).
async fn insert_instalments(
    conn: &mut AnyConnection,
    loan_id: &str,
    sched: &[Instalment],
) -> ApiResult<()> {
    for i in sched {
        sqlx::query(
            "INSERT INTO instalments (loan_id, seq, due_date, principal, interest, principal_paid, interest_paid, accrued, \
             fee, fee_paid) VALUES ($1, $2, $3, $4, $5, 0, 0, 0, $6, 0)",
        )
        .bind(loan_id)
        .bind(i.seq as i64)
        .bind(format_date(i.due))
        .bind(i.principal)
        .bind(i.interest)
        .bind(i.fee)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Posts an accrual for each funder: receivable against income.
async fn post_accrual(
    conn: &mut AnyConnection,
    loan_id: &str,
    currency: &str,
    what: &str,
    bank: i64,
    partner: i64,
) -> ApiResult<()> {
    let (receivable, income) = (format!("{what}_RECEIVABLE"), format!("{what}_INCOME"));
    post(
        conn,
        loan_id,
        currency,
        &[
            ("BANK", &receivable, bank, 0),
            ("BANK", &income, 0, bank),
            ("PARTNER", &receivable, partner, 0),
            ("PARTNER", &income, 0, partner),
        ],
    )
    .await
}

/// Writes one balanced posting: per funder, debits equal credits.
async fn post(
    conn: &mut AnyConnection,
    loan_id: &str,
    currency: &str,
    lines: &[(&str, &str, i64, i64)],
) -> ApiResult<()> {
    for funder in ["BANK", "PARTNER"] {
        let (d, c) = lines
            .iter()
            .filter(|l| l.0 == funder)
            .fold((0, 0), |(d, c), l| (d + l.2, c + l.3));
        if d != c {
            return Err(ApiError::internal(anyhow::anyhow!(
                "unbalanced posting for {funder}: {d} != {c}"
            )));
        }
    }
    let posting_id = format!("pst_{}", uuid::Uuid::now_v7().simple());
    let now = now_millis();
    for (funder, account, debit, credit) in lines.iter().filter(|l| l.2 != 0 || l.3 != 0) {
        sqlx::query(
            "INSERT INTO ledger_entries (entry_id, posting_id, loan_id, funder, account, debit, credit, currency, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(format!("ent_{}", uuid::Uuid::now_v7().simple()))
        .bind(&posting_id)
        .bind(loan_id)
        .bind(*funder)
        .bind(*account)
        .bind(*debit)
        .bind(*credit)
        .bind(currency)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Voids a reserved loan and gives back everything it held: the partner's
/// total and daily quota and the bank's C2/C3 exposure. Under the loan's
/// lock: a loan already VOID is returned as it is with `false` (voiding is
/// idempotent: a release after an expiry, or two releases, change nothing);
/// a disbursed or settled loan is INVALID_STATE.
async fn void_reserved(conn: &mut AnyConnection, loan_id: &str) -> ApiResult<(LoanRow, bool)> {
    let mut l = lock_loan(conn, loan_id).await?;
    if l.status == "VOID" {
        return Ok((l, false));
    }
    if l.status != "RESERVED" {
        return Err(ApiError::InvalidState(format!(
            "loan is {}, only a reserved loan can be released",
            l.status
        )));
    }
    let voided = sqlx::query("UPDATE loans SET status = 'VOID', updated_at = $1 WHERE loan_id = $2 AND status = 'RESERVED'")
        .bind(now_millis())
        .bind(loan_id)
        .execute(&mut *conn)
        .await?;
    if voided.rows_affected() != 1 {
        // The row is locked: anything else is a fault, never a refusal to store.
        return Err(ApiError::internal(anyhow::anyhow!(
            "loan {loan_id} changed under its lock"
        )));
    }
    sqlx::query("UPDATE partner_usage SET used = used - $1 WHERE partner_id = $2")
        .bind(l.partner_amount)
        .bind(&l.partner_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE partner_daily_usage SET used = used - $1 WHERE partner_id = $2 AND day = $3",
    )
    .bind(l.partner_amount)
    .bind(&l.partner_id)
    .bind(&l.reserved_on)
    .execute(&mut *conn)
    .await?;
    release_bank_exposure(conn, &l.partner_id, l.bank_amount).await?;
    l.status = "VOID".into();
    Ok((l, true))
}

/// The bank's share of co-lent principal goes down (repaid or voided).
async fn release_bank_exposure(
    conn: &mut AnyConnection,
    partner_id: &str,
    amount: i64,
) -> ApiResult<()> {
    for scope in [format!("PARTNER:{partner_id}"), "ALL".to_string()] {
        sqlx::query("UPDATE bank_exposure SET used = used - $1 WHERE scope = $2")
            .bind(amount)
            .bind(scope)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A loan event for acquisition.
fn loan_event(
    loan: &LoanRow,
    event_id: String,
    status: acq::ApplicationStatus,
    detail: String,
    reasons: &[&str],
) -> acq::RecordLoanEventRequest {
    acq::RecordLoanEventRequest {
        request_id: event_id,
        application_id: loan.application_id.clone(),
        partner_id: loan.partner_id.clone(),
        status: status as i32,
        detail,
        reason_codes: reasons.iter().map(|r| r.to_string()).collect(),
    }
}

/// Writes an event to the outbox, in the caller's transaction.
async fn enqueue(conn: &mut AnyConnection, event: &acq::RecordLoanEventRequest) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, payload, created_at, sent_at, attempts) VALUES ($1, $2, $3, 0, 0) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&event.request_id)
    .bind(hex::encode(event.encode_to_vec()))
    .bind(now_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Funding {
    pub fn new(
        db: Db,
        cache: Cache,
        acquisition: Channel,
        call_timeout: Duration,
        settings: Settings,
    ) -> Self {
        Funding {
            reserver: reserve::Reserver::start(db.clone(), &settings),
            db,
            cache,
            acquisition: AcquisitionServiceClient::new(
                colend_platform::rpc_trace::ClientTrace::new(acquisition),
            ),
            call_timeout,
            settings,
            outbox_ready: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn agreement_key(partner_id: &str) -> String {
        format!("funding:agreement:{partner_id}")
    }

    /// Creates a new version of a partner's agreement.
    pub async fn upsert_agreement(
        &self,
        request_id: String,
        hash: String,
        a: pb::Agreement,
    ) -> ApiResult<pb::Agreement> {
        if let Some(problem) = domain::share_problem(
            a.partner_share_bps as i64,
            self.settings.min_partner_share_bps,
            self.settings.jurisdiction.min_bank_share_bps(),
        ) {
            return Err(ApiError::field("agreement.partner_share_bps", &problem));
        }
        let partner = a.partner_id.clone();
        let stored = idempotency::run(&self.db, "UpsertAgreement".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let (v,): (i64,) = sqlx::query_as(
                    "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM agreements WHERE partner_id = $1",
                )
                .bind(&a.partner_id)
                .fetch_one(&mut *tx)
                .await?;
                let now = now_millis();
                let quota = |m: &Option<Money>| m.as_ref().map(|m| m.minor_units).unwrap_or(0);
                let currency = a.total_quota.as_ref().map(|m| m.currency_code.clone()).unwrap_or_default();
                sqlx::query(
                    "INSERT INTO agreements (partner_id, version, partner_share_bps, bank_rate_bps, partner_rate_bps, currency, \
                     daily_quota, total_quota, effective_from, created_at, day_count, penalty_rate_bps, waterfall, \
                     credit_enhancer_id, fee_partner_share_bps) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .bind(&a.partner_id)
                .bind(v + 1)
                .bind(a.partner_share_bps as i64)
                .bind(a.bank_rate_bps as i64)
                .bind(a.partner_rate_bps as i64)
                .bind(&currency)
                .bind(quota(&a.daily_quota))
                .bind(quota(&a.total_quota))
                .bind(&a.effective_from)
                .bind(now)
                .bind(day_count_of(a.day_count).name())
                .bind(a.penalty_rate_bps as i64)
                .bind(waterfall_of(&a.waterfall).unwrap_or_default().name())
                .bind(&a.credit_enhancer_id)
                .bind(a.fee_partner_share_bps as i64)
                .execute(&mut *tx)
                .await?;
                let dc = day_count_of(a.day_count);
                let w = waterfall_of(&a.waterfall).unwrap_or_default();
                Ok(pb::Agreement {
                    version: (v + 1) as i32,
                    created_at: Some(timestamp(now)),
                    day_count: day_count_pb(dc) as i32,
                    waterfall: w.0.iter().map(|b| component_pb(*b) as i32).collect(),
                    ..a
                })
            })
        })
        .await?;
        self.cache.delete(&Self::agreement_key(&partner)).await;
        Ok(stored)
    }

    /// The partner's agreement in force today, read through the cache.
    pub async fn agreement(&self, partner_id: &str) -> ApiResult<Option<pb::Agreement>> {
        let key = Self::agreement_key(partner_id);
        if let Some(a) = self
            .cache
            .get(&key)
            .await
            .and_then(|b| pb::Agreement::decode(b.as_slice()).ok())
        {
            return Ok(Some(a));
        }
        let row = sqlx::query(
            "SELECT version, partner_share_bps, bank_rate_bps, partner_rate_bps, currency, daily_quota, total_quota, \
             effective_from, created_at, day_count, penalty_rate_bps, waterfall, credit_enhancer_id, \
             fee_partner_share_bps FROM agreements \
             WHERE partner_id = $1 AND effective_from <= $2 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(partner_id)
        .bind(format_date(today()))
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let currency: String = r.get(4);
        let a = pb::Agreement {
            partner_id: partner_id.to_string(),
            version: r.get::<i64, _>(0) as i32,
            partner_share_bps: r.get::<i64, _>(1) as i32,
            bank_rate_bps: r.get::<i64, _>(2) as i32,
            partner_rate_bps: r.get::<i64, _>(3) as i32,
            daily_quota: money(r.get(5), &currency),
            total_quota: money(r.get(6), &currency),
            effective_from: r.get(7),
            created_at: Some(timestamp(r.get(8))),
            day_count: day_count_pb(
                DayCount::parse(&r.get::<String, _>(9)).unwrap_or(DayCount::Act360),
            ) as i32,
            penalty_rate_bps: r.get::<i64, _>(10) as i32,
            waterfall: Waterfall::parse(&r.get::<String, _>(11))
                .unwrap_or_default()
                .0
                .iter()
                .map(|b| component_pb(*b) as i32)
                .collect(),
            credit_enhancer_id: r.get(12),
            fee_partner_share_bps: r.get::<i64, _>(13) as i32,
        };
        self.cache
            .set(&key, &a.encode_to_vec(), self.settings.agreement_ttl)
            .await;
        Ok(Some(a))
    }

    /// Splits the loan and reserves the partner's quota, atomically.
    pub async fn reserve(
        &self,
        request_id: String,
        hash: String,
        r: pb::ReserveFundingRequest,
    ) -> ApiResult<pb::Loan> {
        let agreement = self.agreement(&r.partner_id).await?.ok_or_else(|| {
            ApiError::NoAgreement(format!(
                "no co-lending agreement is in force for partner {}",
                r.partner_id
            ))
        })?;
        let principal = r.principal.clone().unwrap_or_default();
        let currency = agreement
            .total_quota
            .as_ref()
            .map(|m| m.currency_code.clone())
            .unwrap_or_default();
        if principal.currency_code != currency {
            return Err(ApiError::field(
                "principal.currency_code",
                "must be the agreement's currency",
            ));
        }
        let split = domain::split(principal.minor_units, agreement.partner_share_bps as i64);
        let reservation = reserve::Reservation {
            r,
            agreement,
            split,
            currency,
        };
        self.reserver.reserve(request_id, hash, reservation).await
    }

    /// Voids a reservation and releases the quota.
    pub async fn release(
        &self,
        request_id: String,
        hash: String,
        loan_id: String,
        application_id: String,
        reason: String,
    ) -> ApiResult<pb::Loan> {
        let loan = idempotency::run(
            &self.db,
            "ReleaseFunding".into(),
            request_id,
            hash,
            move |tx| {
                Box::pin(async move {
                    let loan_id = if loan_id.is_empty() {
                        // The application is closed to funding from now on,
                        // whether or not a reservation was made for it. Under
                        // the application's lock, which a reservation batch
                        // takes too: a reservation still being committed is
                        // seen (and voided) here, or sees the closure.
                        lock_applications(tx, &[application_id.as_str()]).await?;
                        sqlx::query(
                            "INSERT INTO closed_applications (application_id, reason, closed_at) \
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        )
                        .bind(&application_id)
                        .bind(&reason)
                        .bind(now_millis())
                        .execute(&mut *tx)
                        .await?;
                        let found: Option<(String,)> =
                            sqlx::query_as("SELECT loan_id FROM loans WHERE application_id = $1")
                                .bind(&application_id)
                                .fetch_optional(&mut *tx)
                                .await?;
                        match found {
                            Some((id,)) => id,
                            // Nothing to void: an empty loan says so.
                            None => {
                                return Ok(pb::Loan {
                                    application_id,
                                    ..Default::default()
                                });
                            }
                        }
                    } else {
                        loan_id
                    };
                    let (l, voided) = void_reserved(tx, &loan_id).await?;
                    if voided {
                        let event = loan_event(
                            &l,
                            format!("void:{loan_id}"),
                            acq::ApplicationStatus::FundingRejected,
                            format!("funding reservation released: {reason}"),
                            &["RESERVATION_RELEASED"],
                        );
                        enqueue(tx, &event).await?;
                        tracing::info!(loan_id = %loan_id, reason = %reason, "reservation released");
                    }
                    Ok(loan_pb(&l, &[], Vec::new()))
                })
            },
        )
        .await?;
        self.outbox_ready.notify_one();
        Ok(loan)
    }

    /// Voids every reservation past its expiry; returns how many.
    pub async fn sweep_expired(&self) -> ApiResult<usize> {
        let expired: Vec<(String,)> = sqlx::query_as(
            "SELECT loan_id FROM loans WHERE status = 'RESERVED' AND expires_at < $1 ORDER BY expires_at LIMIT 500",
        )
        .bind(now_millis())
        .fetch_all(&self.db.pool)
        .await?;
        let mut n = 0;
        for (loan_id,) in expired {
            let db = self.db.clone();
            let voided = tokio::spawn(async move {
                let mut tx = db.pool.begin().await?;
                match void_reserved(&mut tx, &loan_id).await {
                    // Voided meanwhile (released): nothing to do.
                    Ok((_, false)) => Ok(None),
                    Ok((l, true)) => {
                        let event = loan_event(
                            &l,
                            format!("void:{loan_id}"),
                            acq::ApplicationStatus::FundingRejected,
                            "funding reservation expired before disbursement".into(),
                            &["RESERVATION_EXPIRED"],
                        );
                        enqueue(&mut tx, &event).await?;
                        tx.commit().await?;
                        Ok(Some(l))
                    }
                    Err(ApiError::InvalidState(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("sweep task failed: {e}")))??;
            if voided.is_some() {
                n += 1;
                self.outbox_ready.notify_one();
            }
        }
        if n > 0 {
            tracing::info!(count = n, "expired reservations voided");
        }
        Ok(n)
    }

    /// Sweeps expired reservations in the background.
    pub fn spawn_sweeper(&self, workers: &colend_platform::lifecycle::Workers) {
        let this = self.clone();
        workers.spawn("funding-expiry-sweeper", |mut stopping| async move {
            while !stopping.sleep(this.settings.sweep_every).await {
                if let Err(e) = this.sweep_expired().await {
                    tracing::warn!(error = %e, "sweeping expired reservations failed");
                }
            }
        });
    }

    /// Sets the bank's reference data.
    pub async fn set_bank_reference(
        &self,
        request_id: String,
        hash: String,
        r: pb::BankReference,
    ) -> ApiResult<pb::BankReference> {
        idempotency::run(&self.db, "SetBankReference".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let tier1 = r.net_tier1_capital.clone().unwrap_or_default();
                let total = r.total_loan_balance.clone().unwrap_or_default();
                sqlx::query("DELETE FROM bank_reference WHERE id = 1").execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO bank_reference (id, net_tier1_capital, total_loan_balance, currency, as_of, updated_at) \
                     VALUES (1, $1, $2, $3, $4, $5)",
                )
                .bind(tier1.minor_units)
                .bind(total.minor_units)
                .bind(&tier1.currency_code)
                .bind(&r.as_of)
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
                Ok(r)
            })
        })
        .await
    }

    /// The reference data and how much of each limit is used.
    pub async fn bank_reference(
        &self,
        partner_id: &str,
    ) -> ApiResult<pb::GetBankReferenceResponse> {
        let row: Option<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT net_tier1_capital, total_loan_balance, currency, as_of FROM bank_reference WHERE id = 1",
        )
        .fetch_optional(&self.db.pool)
        .await?;
        let (tier1, total, c, as_of) =
            row.ok_or_else(|| ApiError::NotFound("bank reference data".into()))?;
        let used = |scope: String| async move {
            let r: Option<(i64,)> =
                sqlx::query_as("SELECT used FROM bank_exposure WHERE scope = $1")
                    .bind(scope)
                    .fetch_optional(&self.db.pool)
                    .await?;
            Ok::<i64, ApiError>(r.map(|x| x.0).unwrap_or(0))
        };
        let all = used("ALL".into()).await?;
        let (partner_used, partner_limit) = if partner_id.is_empty() {
            (None, None)
        } else {
            (
                money(used(format!("PARTNER:{partner_id}")).await?, &c),
                money(domain::limit_of(tier1, self.settings.c2_bps), &c),
            )
        };
        Ok(pb::GetBankReferenceResponse {
            reference: Some(pb::BankReference {
                net_tier1_capital: money(tier1, &c),
                total_loan_balance: money(total, &c),
                as_of,
            }),
            co_lent_total: money(all, &c),
            co_lent_limit: money(domain::limit_of(total, self.settings.c3_bps), &c),
            partner_co_lent: partner_used,
            partner_limit,
        })
    }

    /// Adds a whitelist entry.
    pub async fn whitelist(
        &self,
        request_id: String,
        hash: String,
        e: pb::WhitelistEntry,
    ) -> ApiResult<pb::WhitelistEntry> {
        idempotency::run(&self.db, "WhitelistInstitution".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                let kind = if e.kind == pb::InstitutionKind::CreditEnhancer as i32 { "CREDIT_ENHANCER" } else { "PARTNER" };
                sqlx::query(
                    "DELETE FROM whitelist WHERE institution_id = $1 AND kind = $2 AND effective_from = $3",
                )
                .bind(&e.institution_id)
                .bind(kind)
                .bind(&e.effective_from)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO whitelist (institution_id, kind, effective_from, effective_to, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&e.institution_id)
                .bind(kind)
                .bind(&e.effective_from)
                .bind(&e.effective_to)
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
                Ok(e)
            })
        })
        .await
    }

    /// Principal a borrower owes, reserved or outstanding, across partners.
    pub async fn borrower_exposure(&self, borrower_key: &str) -> ApiResult<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(principal - principal_paid), 0) AS BIGINT) FROM loans \
             WHERE borrower_key = $1 AND status IN ('RESERVED', 'DISBURSED')",
        )
        .bind(borrower_key)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(n)
    }

    /// Books the bank's disbursement: schedule and ledger.
    pub async fn book_disbursement(
        &self,
        request_id: String,
        hash: String,
        loan_id: String,
        value_date: chrono::NaiveDate,
        bank_ref: String,
    ) -> ApiResult<pb::Loan> {
        let loan = idempotency::run(&self.db, "BookDisbursement".into(), request_id.clone(), hash, move |tx| {
            Box::pin(async move {
                // Under the loan's lock: a release, an expiry or another
                // disbursement of this loan runs before or after, never beside.
                let mut l = lock_loan(tx, &loan_id).await?;
                if l.status != "RESERVED" {
                    if l.disbursement_ref == bank_ref && !bank_ref.is_empty() {
                        // The same bank transaction again, under another request id.
                        if l.disbursed_on != format_date(value_date) {
                            return Err(ApiError::AlreadyExists(format!(
                                "bank transaction {bank_ref} was booked as this loan's disbursement on {}",
                                l.disbursed_on
                            )));
                        }
                        let (sched, _) = load_schedule(tx, &loan_id).await?;
                        let reps = load_repayments(tx, &loan_id).await?;
                        return Ok(loan_pb(&l, &sched, reps));
                    }
                    return Err(ApiError::InvalidState(format!(
                        "loan is {}, only a reserved loan can be disbursed",
                        l.status
                    )));
                }
                let closed: Option<(String,)> =
                    sqlx::query_as("SELECT reason FROM closed_applications WHERE application_id = $1")
                        .bind(&l.application_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some((why,)) = closed {
                    return Err(ApiError::InvalidState(format!(
                        "application {} was closed to funding ({why})",
                        l.application_id
                    )));
                }
                let sched = domain::schedule(
                    l.principal,
                    l.term_months as i32,
                    Pricing { rate_bps: l.annual_rate_bps, fee_bps: l.fee_bps },
                    method_of(l.method),
                    value_date,
                    l.day_count,
                );
                insert_instalments(tx, &loan_id, &sched).await?;
                l.status = "DISBURSED".into();
                l.disbursed_on = format_date(value_date);
                l.disbursement_ref = bank_ref;
                l.penalty_through = l.disbursed_on.clone();
                sqlx::query(
                    "UPDATE loans SET status = 'DISBURSED', disbursed_on = $1, disbursement_ref = $2, penalty_through = $1, \
                     updated_at = $3 WHERE loan_id = $4",
                )
                .bind(&l.disbursed_on)
                .bind(&l.disbursement_ref)
                .bind(now_millis())
                .bind(&loan_id)
                .execute(&mut *tx)
                .await?;
                post(
                    tx,
                    &loan_id,
                    &l.currency,
                    &[
                        ("BANK", "LOANS_RECEIVABLE", l.bank_amount, 0),
                        ("BANK", "CASH", 0, l.bank_amount),
                        ("PARTNER", "LOANS_RECEIVABLE", l.partner_amount, 0),
                        ("PARTNER", "CASH", 0, l.partner_amount),
                    ],
                )
                .await?;
                let event = loan_event(
                    &l,
                    format!("disbursed:{loan_id}"),
                    acq::ApplicationStatus::Disbursed,
                    format!("disbursed on {}", l.disbursed_on),
                    &[],
                );
                enqueue(tx, &event).await?;
                let states: Vec<InstalmentState> = sched
                    .into_iter()
                    .map(InstalmentState::new)
                    .collect();
                Ok(loan_pb(&l, &states, Vec::new()))
            })
        })
        .await?;
        // The disbursement and its loan event are committed; the relay has not run.
        colend_platform::fault::crash_point("funding.outbox.after_insert");
        self.outbox_ready.notify_one();
        let currency = loan
            .principal
            .as_ref()
            .map(|m| m.currency_code.clone())
            .unwrap_or_default();
        for (funder, amount) in [
            ("bank", &loan.bank_amount),
            ("partner", &loan.partner_amount),
        ] {
            metrics::counter!("colend_funded_minor_total", "funder" => funder, "currency" => currency.clone())
                .increment(amount.as_ref().map(|m| m.minor_units.max(0) as u64).unwrap_or(0));
        }
        Ok(loan)
    }

    /// Books a repayment: accrues penalty interest on overdue amounts and the
    /// interest of the instalments now payable, allocates the amount through
    /// the loan's waterfall (a surplus prepays principal and the rest of the
    /// schedule is recomputed), splits every component between the funders
    /// and posts each funder's ledger.
    pub async fn book_repayment(
        &self,
        request_id: String,
        hash: String,
        loan_id: String,
        amount: Money,
        value_date: chrono::NaiveDate,
        bank_ref: String,
    ) -> ApiResult<pb::BookRepaymentResponse> {
        let resp = idempotency::run(&self.db, "BookRepayment".into(), request_id, hash, move |tx| {
            Box::pin(async move {
                // Under the loan's lock: concurrent repayments of one loan
                // are booked one after the other, each on the totals the
                // previous one left.
                let mut l = lock_loan(tx, &loan_id).await?;
                let booked: Option<(String,)> =
                    sqlx::query_as("SELECT body FROM repayments WHERE loan_id = $1 AND bank_ref = $2")
                        .bind(&loan_id)
                        .bind(&bank_ref)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some((body,)) = booked {
                    // The same bank transaction again, under another request id.
                    let bytes = hex::decode(body).map_err(ApiError::internal)?;
                    let rep = pb::Repayment::decode(bytes.as_slice()).map_err(ApiError::internal)?;
                    if rep.amount.as_ref() != Some(&amount) || rep.value_date != format_date(value_date) {
                        return Err(ApiError::AlreadyExists(format!(
                            "bank transaction {bank_ref} was already booked on this loan with another amount or value date"
                        )));
                    }
                    let (sched, _) = load_schedule(tx, &loan_id).await?;
                    let all = load_repayments(tx, &loan_id).await?;
                    return Ok(pb::BookRepaymentResponse { repayment: Some(rep), loan: Some(loan_pb(&l, &sched, all)) });
                }
                if l.status != "DISBURSED" {
                    return Err(ApiError::InvalidState(format!(
                        "loan is {}, repayments need a disbursed loan",
                        l.status
                    )));
                }
                if amount.currency_code != l.currency {
                    return Err(ApiError::field("amount.currency_code", "must be the loan's currency"));
                }
                if parse_date(&l.disbursed_on).is_some_and(|d| value_date < d) {
                    return Err(ApiError::field("value_date", "must not be before the disbursement"));
                }
                let (insts, accrued_flags) = load_schedule(tx, &loan_id).await?;
                let split = Split { bank: l.bank_amount, partner: l.partner_amount };
                let c = l.currency.clone();
                // Penalty interest on overdue amounts since the last accrual.
                let through = parse_date(&l.penalty_through).unwrap_or(value_date);
                if value_date > through {
                    let add = domain::penalty_accrual(&insts, through, value_date, l.penalty_rate_bps, l.day_count);
                    if add > 0 {
                        let total = l.accrued.penalty + add;
                        let partner = domain::partner_principal_part(total, split) - l.accrued.partner_penalty;
                        let bank = add - partner;
                        post_accrual(tx, &loan_id, &c, "PENALTY", bank, partner).await?;
                        l.accrued.penalty = total;
                        l.accrued.partner_penalty += partner;
                    }
                    l.penalty_through = format_date(value_date);
                }
                // Interest of every instalment payable now is accrued first.
                let payable = domain::payable(&insts, value_date);
                let newly: Vec<i32> = insts[..payable]
                    .iter()
                    .zip(&accrued_flags)
                    .filter(|(_, a)| !**a)
                    .map(|(s, _)| s.inst.seq)
                    .collect();
                let add: i64 = insts.iter().filter(|s| newly.contains(&s.inst.seq)).map(|s| s.inst.interest).sum();
                if add > 0 {
                    let total = l.accrued.interest + add;
                    let partner = domain::partner_interest_part(total, split, &l.terms) - l.accrued.partner_interest;
                    let bank = add - partner;
                    post_accrual(tx, &loan_id, &c, "INTEREST", bank, partner).await?;
                    l.accrued.interest = total;
                    l.accrued.partner_interest += partner;
                }
                // And their fees, split by the agreement's fee split.
                let add_fee: i64 = insts.iter().filter(|s| newly.contains(&s.inst.seq)).map(|s| s.inst.fee).sum();
                if add_fee > 0 {
                    let total = l.accrued.fee + add_fee;
                    let partner = domain::partner_fee_part(total, &l.terms) - l.accrued.partner_fee;
                    let bank = add_fee - partner;
                    post_accrual(tx, &loan_id, &c, "FEE", bank, partner).await?;
                    l.accrued.fee = total;
                    l.accrued.partner_fee += partner;
                }
                for seq in &newly {
                    sqlx::query("UPDATE instalments SET accrued = 1 WHERE loan_id = $1 AND seq = $2")
                        .bind(&loan_id)
                        .bind(*seq as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                let penalty_due = l.accrued.penalty - l.paid.penalty;
                let a = domain::allocate(
                    amount.minor_units,
                    value_date,
                    &insts,
                    (split, &l.terms),
                    &l.paid,
                    penalty_due,
                    l.waterfall,
                )
                .map_err(|e| ApiError::field("amount.minor_units", &e.to_string()))?;
                let price = Pricing { rate_bps: l.annual_rate_bps, fee_bps: l.fee_bps };
                let next = domain::apply(&insts, &a, value_date, price, method_of(l.method), l.day_count);
                for pay in &a.instalments {
                    sqlx::query(
                        "UPDATE instalments SET principal_paid = principal_paid + $1, interest_paid = interest_paid + $2, \
                         fee_paid = fee_paid + $3 WHERE loan_id = $4 AND seq = $5",
                    )
                    .bind(pay.principal)
                    .bind(pay.interest)
                    .bind(pay.fee)
                    .bind(&loan_id)
                    .bind(pay.seq as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                if a.prepaid > 0 {
                    // The instalments not yet payable are recomputed on the lower balance.
                    let later: Vec<Instalment> = next[payable.min(next.len())..].iter().map(|s| s.inst.clone()).collect();
                    sqlx::query("DELETE FROM instalments WHERE loan_id = $1 AND seq > $2")
                        .bind(&loan_id)
                        .bind(insts.get(payable.saturating_sub(1)).map(|s| s.inst.seq as i64).unwrap_or(0))
                        .execute(&mut *tx)
                        .await?;
                    insert_instalments(tx, &loan_id, &later).await?;
                }
                let settled = a.after.principal == l.principal
                    && next.iter().all(|s| s.unpaid() == 0)
                    && a.after.penalty == l.accrued.penalty;
                let status = if settled { "SETTLED" } else { "DISBURSED" };
                sqlx::query(
                    "UPDATE loans SET principal_paid = $1, interest_paid = $2, penalty_paid = $3, partner_principal_paid = $4, \
                     partner_interest_paid = $5, partner_penalty_paid = $6, status = $7, updated_at = $8, \
                     interest_accrued = $9, partner_interest_accrued = $10, penalty_accrued = $11, \
                     partner_penalty_accrued = $12, penalty_through = $13, fee_paid = $15, partner_fee_paid = $16, \
                     fee_accrued = $17, partner_fee_accrued = $18 WHERE loan_id = $14",
                )
                .bind(a.after.principal)
                .bind(a.after.interest)
                .bind(a.after.penalty)
                .bind(a.after.partner_principal)
                .bind(a.after.partner_interest)
                .bind(a.after.partner_penalty)
                .bind(status)
                .bind(now_millis())
                .bind(l.accrued.interest)
                .bind(l.accrued.partner_interest)
                .bind(l.accrued.penalty)
                .bind(l.accrued.partner_penalty)
                .bind(&l.penalty_through)
                .bind(&loan_id)
                .bind(a.after.fee)
                .bind(a.after.partner_fee)
                .bind(l.accrued.fee)
                .bind(l.accrued.partner_fee)
                .execute(&mut *tx)
                .await?;
                // Principal repaid frees the partner's total quota (revolving) and the bank's C2/C3 room.
                sqlx::query("UPDATE partner_usage SET used = used - $1 WHERE partner_id = $2")
                    .bind(a.partner.principal)
                    .bind(&l.partner_id)
                    .execute(&mut *tx)
                    .await?;
                release_bank_exposure(tx, &l.partner_id, a.bank.principal).await?;
                post(
                    tx,
                    &loan_id,
                    &c,
                    &[
                        ("BANK", "CASH", a.bank.total(), 0),
                        ("BANK", "LOANS_RECEIVABLE", 0, a.bank.principal),
                        ("BANK", "INTEREST_RECEIVABLE", 0, a.bank.interest),
                        ("BANK", "FEE_RECEIVABLE", 0, a.bank.fee),
                        ("BANK", "PENALTY_RECEIVABLE", 0, a.bank.penalty),
                        ("PARTNER", "CASH", a.partner.total(), 0),
                        ("PARTNER", "LOANS_RECEIVABLE", 0, a.partner.principal),
                        ("PARTNER", "INTEREST_RECEIVABLE", 0, a.partner.interest),
                        ("PARTNER", "FEE_RECEIVABLE", 0, a.partner.fee),
                        ("PARTNER", "PENALTY_RECEIVABLE", 0, a.partner.penalty),
                    ],
                )
                .await?;
                let mut allocations = Vec::new();
                for (funder, parts) in [(Funder::Bank, a.bank), (Funder::Partner, a.partner)] {
                    for (component, v) in [
                        (pb::Component::Penalty, parts.penalty),
                        (pb::Component::Fee, parts.fee),
                        (pb::Component::Interest, parts.interest),
                        (pb::Component::Principal, parts.principal),
                    ] {
                        allocations.push(pb::Allocation { funder: funder as i32, component: component as i32, amount: money(v, &c) });
                    }
                }
                let repayment = pb::Repayment {
                    repayment_id: format!("rep_{}", uuid::Uuid::now_v7().simple()),
                    loan_id: loan_id.clone(),
                    amount: Some(amount.clone()),
                    value_date: format_date(value_date),
                    bank_transaction_ref: bank_ref.clone(),
                    allocations,
                };
                sqlx::query(
                    "INSERT INTO repayments (repayment_id, loan_id, amount, value_date, bank_ref, body, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&repayment.repayment_id)
                .bind(&loan_id)
                .bind(amount.minor_units)
                .bind(&repayment.value_date)
                .bind(&bank_ref)
                .bind(hex::encode(repayment.encode_to_vec()))
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
                l.status = status.into();
                l.paid = a.after;
                let event = loan_event(
                    &l,
                    format!("repaid:{}", repayment.repayment_id),
                    acq::ApplicationStatus::Repaying,
                    format!(
                        "repayment of {} booked on {}",
                        colend_core::money::format_minor(amount.minor_units),
                        repayment.value_date
                    ),
                    &[],
                );
                enqueue(tx, &event).await?;
                // Includes the repayment just stored.
                let all = load_repayments(tx, &loan_id).await?;
                let (current, _) = load_schedule(tx, &loan_id).await?;
                Ok(pb::BookRepaymentResponse { repayment: Some(repayment), loan: Some(loan_pb(&l, &current, all)) })
            })
        })
        .await?;
        self.outbox_ready.notify_one();
        Ok(resp)
    }

    /// Relays the outbox to acquisition in the background, in order, at
    /// least once; woken right after a commit, and every second anyway.
    pub fn spawn_relay(&self, workers: &colend_platform::lifecycle::Workers) {
        let this = self.clone();
        workers.spawn_relay(
            "funding-outbox-relay",
            self.outbox_ready.clone(),
            move || {
                let this = this.clone();
                async move { this.relay_once().await }
            },
        );
    }

    /// Sends pending events: in order for each application, applications in
    /// parallel; an application whose event fails waits for the next round
    /// without holding up the others. Returns true when a full batch went out.
    async fn relay_once(&self) -> ApiResult<bool> {
        let pending: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_id, payload FROM outbox WHERE sent_at = 0 ORDER BY created_at, event_id LIMIT 500",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let full = pending.len() == 500;
        metrics::gauge!("colend_outbox_pending").set(pending.len() as f64);
        let mut by_application: Vec<(String, Vec<(String, acq::RecordLoanEventRequest)>)> =
            Vec::new();
        for (event_id, payload) in pending {
            let msg = hex::decode(&payload)
                .ok()
                .and_then(|b| acq::RecordLoanEventRequest::decode(b.as_slice()).ok())
                .ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("bad outbox payload {event_id}"))
                })?;
            match by_application
                .iter_mut()
                .find(|(app, _)| *app == msg.application_id)
            {
                Some((_, events)) => events.push((event_id, msg)),
                None => by_application.push((msg.application_id.clone(), vec![(event_id, msg)])),
            }
        }
        let sends = by_application.into_iter().map(|(_, events)| {
            let mut client = self.acquisition.clone();
            let timeout = self.call_timeout;
            async move {
                let mut sent = Vec::new();
                for (event_id, msg) in events {
                    let req = colend_platform::grpc::request(msg.clone(), timeout, Some(&msg.partner_id));
                    match client.record_loan_event(req).await {
                        Ok(_) => sent.push(Ok(event_id)),
                        Err(s) => {
                            tracing::warn!(event_id, code = ?s.code(), "acquisition did not take a loan event; will retry");
                            sent.push(Err(event_id));
                            break;
                        }
                    }
                }
                sent
            }
        });
        for result in futures::future::join_all(sends).await.into_iter().flatten() {
            let (sql, id) = match result {
                Ok(id) => (
                    "UPDATE outbox SET sent_at = $1, attempts = attempts + 1 WHERE event_id = $2",
                    id,
                ),
                Err(id) => (
                    "UPDATE outbox SET attempts = attempts + 1 WHERE event_id = $2 AND $1 >= 0",
                    id,
                ),
            };
            sqlx::query(sql)
                .bind(now_millis())
                .bind(&id)
                .execute(&self.db.pool)
                .await?;
        }
        Ok(full)
    }

    /// A loan of the calling partner, with schedule and repayments.
    pub async fn get_loan(&self, partner_id: &str, loan_id: &str) -> ApiResult<pb::Loan> {
        let mut conn = self.db.pool.acquire().await?;
        // Scoped to the calling partner in the query itself.
        let row = sqlx::query(&format!(
            "SELECT {LOAN_COLS} FROM loans WHERE loan_id = $1 AND partner_id = $2"
        ))
        .bind(loan_id)
        .bind(partner_id)
        .fetch_optional(&mut *conn)
        .await?;
        let l = row
            .as_ref()
            .map(loan_row)
            .ok_or_else(|| ApiError::NotFound("loan".into()))?;
        let (sched, _) = load_schedule(&mut conn, loan_id).await?;
        let reps = load_repayments(&mut conn, loan_id).await?;
        Ok(loan_pb(&l, &sched, reps))
    }

    /// The day's disbursements and repayments of a partner's loans, as
    /// booked (three-way reconciliation).
    pub async fn ledger_movements(
        &self,
        partner_id: &str,
        value_date: &str,
    ) -> ApiResult<Vec<pb::LedgerMovement>> {
        let mut out = Vec::new();
        let loans = sqlx::query(
            "SELECT loan_id, currency, principal, bank_amount, partner_amount, disbursement_ref FROM loans \
             WHERE partner_id = $1 AND disbursed_on = $2 ORDER BY loan_id",
        )
        .bind(partner_id)
        .bind(value_date)
        .fetch_all(&self.db.pool)
        .await?;
        for r in loans {
            let c: String = r.get(1);
            out.push(pb::LedgerMovement {
                kind: pb::MovementKind::Disbursement as i32,
                transaction_ref: r.get(5),
                loan_id: r.get(0),
                value_date: value_date.to_string(),
                amount: money(r.get(2), &c),
                bank_portion: money(r.get(3), &c),
                partner_portion: money(r.get(4), &c),
                ..Default::default()
            });
        }
        let reps: Vec<(String, String)> = sqlx::query_as(
            "SELECT r.body, l.currency FROM repayments r JOIN loans l ON l.loan_id = r.loan_id \
             WHERE l.partner_id = $1 AND r.value_date = $2 ORDER BY r.created_at, r.repayment_id",
        )
        .bind(partner_id)
        .bind(value_date)
        .fetch_all(&self.db.pool)
        .await?;
        for (body, c) in reps {
            let bytes = hex::decode(body).map_err(ApiError::internal)?;
            let rep = pb::Repayment::decode(bytes.as_slice()).map_err(ApiError::internal)?;
            let mut m = pb::LedgerMovement {
                kind: pb::MovementKind::Repayment as i32,
                transaction_ref: rep.bank_transaction_ref.clone(),
                loan_id: rep.loan_id.clone(),
                value_date: rep.value_date.clone(),
                amount: money(rep.amount.as_ref().map(|a| a.minor_units).unwrap_or(0), &c),
                ..Default::default()
            };
            let (mut bank, mut partner) = (0i64, 0i64);
            for a in &rep.allocations {
                let v = a.amount.as_ref().map(|x| x.minor_units).unwrap_or(0);
                if a.funder == Funder::Bank as i32 {
                    bank += v;
                } else {
                    partner += v;
                }
                match pb::Component::try_from(a.component) {
                    Ok(pb::Component::Principal) => m.principal += v,
                    Ok(pb::Component::Interest) => m.interest += v,
                    Ok(pb::Component::Fee) => m.fee += v,
                    Ok(pb::Component::Penalty) => m.penalty += v,
                    _ => {}
                }
            }
            m.bank_portion = money(bank, &c);
            m.partner_portion = money(partner, &c);
            out.push(m);
        }
        Ok(out)
    }

    /// Ledger totals per funder and account.
    pub async fn trial_balance(&self) -> ApiResult<pb::GetTrialBalanceResponse> {
        let rows = sqlx::query(
            "SELECT funder, account, currency, CAST(SUM(debit) AS BIGINT), CAST(SUM(credit) AS BIGINT) FROM ledger_entries \
             GROUP BY funder, account, currency ORDER BY funder, account",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut balances = Vec::new();
        let (mut td, mut tc) = (0i64, 0i64);
        let mut currency = String::from("CNY");
        for r in rows {
            let funder: String = r.get(0);
            currency = r.get(2);
            let (d, c): (i64, i64) = (r.get(3), r.get(4));
            td += d;
            tc += c;
            balances.push(pb::AccountBalance {
                funder: if funder == "BANK" {
                    Funder::Bank
                } else {
                    Funder::Partner
                } as i32,
                account: r.get(1),
                debits: money(d, &currency),
                credits: money(c, &currency),
            });
        }
        Ok(pb::GetTrialBalanceResponse {
            balances,
            total_debits: money(td, &currency),
            total_credits: money(tc, &currency),
        })
    }
}
