//! Reservations, group-committed.
//!
//! Every reservation on a partner's quota updates the same few rows: the
//! partner's total and daily usage, and the bank's exposure to the partner
//! and to all co-lending (rules C2, C3). One transaction per reservation
//! serialises them on those rows, one fsync each. So reservations that
//! arrive together are decided together:
//! - one worker takes what is queued, up to `COLEND_FUNDING_RESERVE_BATCH`;
//! - it locks the batch's applications (against a release by application,
//!   which takes the same locks), then the usage rows once (always in one
//!   order: partner total, partner daily, the bank's exposure to the
//!   partner, to all);
//! - it decides each reservation in arrival order against running totals in
//!   memory, with the same checks and refusals as one at a time;
//! - a partner's usage rows carry the currency of what they hold: under
//!   their lock, a loan in another currency (or not in the currency of the
//!   agreement in force, read after the lock) is refused, so a quota sum
//!   never adds two currencies;
//! - it writes the loans, the new totals (compare-and-set against what it
//!   locked), the idempotency keys and the audit rows in one transaction.
//!
//! No batching delay is added: a batch is what queued while the previous one
//! committed, so a lone reservation goes at once. A batch that fails as a
//! whole is retried one reservation at a time, so that one bad request
//! cannot fail its neighbours.
use super::agreements::related_parties;
use super::*;
use colend_platform::idempotency::{Batched, InFlight, run_batch};
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// What a batch needs of one reservation (the agreement was read and the
/// split made before it queued).
#[derive(Clone)]
pub(super) struct Reservation {
    pub r: pb::ReserveFundingRequest,
    pub agreement: pb::Agreement,
    pub split: Split,
    /// The loan's currency: the requested principal's, never a default.
    /// The batch refuses it (CURRENCY_MISMATCH) unless it is the
    /// agreement's (this copy's and the one in force as the batch reads it),
    /// the partner's quota usage's (while it holds anything) and the bank's
    /// reference data's.
    pub currency: String,
    pub method: Method,
}

struct Waiting {
    item: Batched<Reservation>,
    span: tracing::Span,
    claim: InFlight,
    reply: oneshot::Sender<ApiResult<pb::Loan>>,
}

/// The queue in front of the batch worker.
#[derive(Clone)]
pub(super) struct Reserver {
    db: Db,
    queue: mpsc::Sender<Waiting>,
}

/// The rule limits a batch applies besides each agreement's quotas, and
/// the zone of its business day.
#[derive(Clone, Copy)]
struct Limits {
    c2_bps: i64,
    c3_bps: i64,
    ttl_ms: i64,
    time_zone: Tz,
    /// Rule C12: the all-in annual cost cap, basis points over 365 days.
    all_in_cap_bps: i64,
}

impl Reserver {
    /// Starts the batch worker; it ends when the last `Reserver` is dropped.
    pub fn start(db: Db, settings: &Settings) -> Reserver {
        let max = settings.reserve_batch.max(1);
        let (queue, rx) = mpsc::channel(max * 8);
        let limits = Limits {
            c2_bps: settings.c2_bps,
            c3_bps: settings.c3_bps,
            ttl_ms: settings.reservation_ttl.as_millis() as i64,
            time_zone: settings.time_zone,
            all_in_cap_bps: settings.all_in_cap_bps,
        };
        tokio::spawn(worker(db.clone(), limits, settings.clock.clone(), max, rx));
        Reserver { db, queue }
    }

    /// Queues one reservation and waits for its batch to commit.
    pub async fn reserve(
        &self,
        request_id: String,
        hash: String,
        reservation: Reservation,
    ) -> ApiResult<pb::Loan> {
        let scope = format!("ReserveFunding:{}", reservation.r.partner_id);
        let claim =
            InFlight::claim(&self.db, &scope, &request_id).ok_or(ApiError::RequestInFlight)?;
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            item: Batched {
                scope,
                request_id,
                hash,
                caller: colend_platform::audit::current(),
                request: reservation,
            },
            span: tracing::Span::current(),
            claim,
            reply,
        };
        let stopped = || ApiError::Dependency {
            service: "funding".into(),
            message: "the reservation worker has stopped".into(),
        };
        self.queue.send(waiting).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn worker(db: Db, limits: Limits, clock: Clock, max: usize, mut rx: mpsc::Receiver<Waiting>) {
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        commit(&db, limits, &clock, std::mem::take(&mut batch)).await;
    }
}

async fn commit(db: &Db, limits: Limits, clock: &Clock, batch: Vec<Waiting>) {
    let span = colend_platform::idempotency::transaction_span(db, "ReserveFunding");
    span.record("db.batch.size", batch.len());
    let mut items = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for w in batch {
        span.follows_from(&w.span);
        items.push(w.item);
        waiting.push((w.claim, w.reply));
    }
    metrics::histogram!("colend_reservation_batch_size").record(items.len() as f64);
    let results = match run(db, limits, clock.now_millis(), &items)
        .instrument(span.clone())
        .await
    {
        Ok(results) => results,
        Err(e) if items.len() > 1 => {
            tracing::warn!(error = %e, size = items.len(), "a reservation batch failed; taking its reservations one at a time");
            let mut results = Vec::with_capacity(items.len());
            for one in items.chunks(1) {
                let run_one = run(db, limits, clock.now_millis(), one);
                results.push(match run_one.instrument(span.clone()).await {
                    Ok(mut r) => r.pop().unwrap_or(Err(ApiError::RequestInFlight)),
                    Err(e) => Err(e),
                });
            }
            results
        }
        Err(e) => vec![Err(e)],
    };
    if results.iter().any(Result::is_ok) {
        colend_platform::fault::crash_point("funding.reserve.after_commit");
    }
    for ((claim, reply), result) in waiting.into_iter().zip(results) {
        let outcome = match &result {
            Ok(_) => "reserved".to_string(),
            Err(ApiError::QuotaExceeded { limit, .. }) => limit.clone(),
            Err(e) => e.reason().to_string(),
        };
        metrics::counter!("colend_reservations_total", "result" => outcome).increment(1);
        // The key is free again before the caller hears back.
        drop(claim);
        let _ = reply.send(result);
    }
}

/// Decides and commits `items` as of `now` (epoch milliseconds: the
/// business day and the reservations' expiry).
async fn run(
    db: &Db,
    limits: Limits,
    now: i64,
    items: &[Batched<Reservation>],
) -> ApiResult<Vec<ApiResult<pb::Loan>>> {
    let answers = run_batch(db, items, move |tx, reservations| {
        Box::pin(decide_and_write(tx, limits, now, reservations))
    })
    .await?;
    let mut results: Vec<ApiResult<pb::Loan>> = Vec::with_capacity(answers.len());
    let mut replays = Vec::new();
    for (i, (result, replayed)) in answers.into_iter().enumerate() {
        if replayed && result.is_ok() {
            replays.push(i);
        }
        results.push(result);
    }
    if !replays.is_empty() {
        refresh_replays(db, &mut results, &replays).await?;
    }
    Ok(results)
}

/// A replayed reservation answers with the loan as it stands now, not as it
/// was reserved: a caller that lost the first answer and asks again after
/// the reservation was voided (released or expired) or disbursed must not
/// be told it is still RESERVED.
async fn refresh_replays(
    db: &Db,
    results: &mut [ApiResult<pb::Loan>],
    replays: &[usize],
) -> ApiResult<()> {
    let ids: Vec<String> = replays
        .iter()
        .filter_map(|&i| results[i].as_ref().ok().map(|l| l.loan_id.clone()))
        .collect();
    let mut conn = db.pool.acquire().await?;
    let sql = format!(
        "SELECT {LOAN_COLS} FROM loans WHERE loan_id IN ({})",
        colend_platform::db::placeholders(&conn, ids.len(), 1, 1)
    );
    let mut q = sqlx::query(&sql);
    for id in &ids {
        q = q.bind(id.clone());
    }
    let mut now: HashMap<String, LoanRow> = HashMap::new();
    for row in q.fetch_all(&mut *conn).await? {
        let l = loan_row(&row)?;
        now.insert(l.loan_id.clone(), l);
    }
    for &i in replays {
        if let Ok(loan) = &mut results[i]
            && let Some(l) = now.get(&loan.loan_id)
            && l.status != LoanStatus::Reserved
        {
            let (sched, _) = load_schedule(&mut conn, &l.loan_id).await?;
            let reps = load_repayments(&mut conn, &l.loan_id).await?;
            *loan = loan_pb(l, &sched, reps);
        }
    }
    Ok(())
}

/// Locks a usage row (creating it at zero) and reads it.
async fn lock_usage(tx: &mut AnyConnection, sql: &str, keys: &[&str]) -> ApiResult<i64> {
    let mut q = sqlx::query_as::<_, (i64,)>(sql);
    for k in keys {
        q = q.bind(k.to_string());
    }
    Ok(q.fetch_one(&mut *tx).await?.0)
}

/// Locks a partner's usage row (creating it at zero) and reads it with the
/// currency of what it holds.
async fn lock_partner_usage(
    tx: &mut AnyConnection,
    sql: &str,
    keys: &[&str],
) -> ApiResult<(i64, String)> {
    let mut q = sqlx::query_as::<_, (i64, String)>(sql);
    for k in keys {
        q = q.bind(k.to_string());
    }
    Ok(q.fetch_one(&mut *tx).await?)
}

/// Moves a locked usage row from `old` to `new` (a partner's row with the
/// currency it is then in); anything else is a bug.
async fn store_usage(
    tx: &mut AnyConnection,
    sql: &str,
    keys: &[&str],
    (old, new): (i64, i64),
    currency: Option<&str>,
) -> ApiResult<()> {
    if old == new {
        return Ok(());
    }
    let mut q = sqlx::query(sql).bind(new).bind(old);
    if let Some(c) = currency {
        q = q.bind(c.to_string());
    }
    for k in keys {
        q = q.bind(k.to_string());
    }
    if q.execute(&mut *tx).await?.rows_affected() != 1 {
        return Err(ApiError::internal(anyhow::anyhow!(
            "a locked usage row changed under its batch ({keys:?})"
        )));
    }
    Ok(())
}

/// A partner's total usage row, locked (agreements take it too).
pub(super) const LOCK_TOTAL: &str = "INSERT INTO partner_usage (partner_id, used, currency) VALUES ($1, 0, '') \
    ON CONFLICT (partner_id) DO UPDATE SET used = partner_usage.used RETURNING used, currency";
const LOCK_DAILY: &str = "INSERT INTO partner_daily_usage (partner_id, day, used, currency) VALUES ($1, $2, 0, '') \
    ON CONFLICT (partner_id, day) DO UPDATE SET used = partner_daily_usage.used RETURNING used, currency";
const LOCK_EXPOSURE: &str = "INSERT INTO bank_exposure (scope, used) VALUES ($1, 0) \
    ON CONFLICT (scope) DO UPDATE SET used = bank_exposure.used RETURNING used";
const STORE_TOTAL: &str =
    "UPDATE partner_usage SET used = $1, currency = $3 WHERE used = $2 AND partner_id = $4";
const STORE_DAILY: &str = "UPDATE partner_daily_usage SET used = $1, currency = $3 \
    WHERE used = $2 AND partner_id = $4 AND day = $5";
const STORE_EXPOSURE: &str = "UPDATE bank_exposure SET used = $1 WHERE used = $2 AND scope = $3";

/// Usage as locked, and as the batch leaves it.
#[derive(Default)]
struct Usage {
    locked: HashMap<String, i64>,
    now: HashMap<String, i64>,
    /// A partner's usage: the currency of what it holds, meaningful only
    /// while that is not zero (the loan that takes it above zero sets it).
    currency: HashMap<String, String>,
}

impl Usage {
    fn lock(&mut self, key: String, used: i64) {
        self.locked.insert(key.clone(), used);
        self.now.insert(key, used);
    }
    fn lock_in(&mut self, key: String, (used, currency): (i64, String)) {
        self.currency.insert(key.clone(), currency);
        self.lock(key, used);
    }
    /// The currency `key`'s usage is in; `None` while it holds nothing.
    fn currency(&self, key: &str) -> Option<&str> {
        (self.used(key) != 0).then(|| self.currency.get(key).map_or("", String::as_str))
    }
    /// Adds `amount` in `currency`, which the caller checked is the usage's
    /// (or the usage holds nothing).
    fn add_in(&mut self, key: &str, amount: i64, currency: &str) -> ApiResult<()> {
        self.add(key, amount)?;
        if self.used(key) != 0 {
            self.currency.insert(key.to_string(), currency.to_string());
        }
        Ok(())
    }
    fn used(&self, key: &str) -> i64 {
        self.now.get(key).copied().unwrap_or(0)
    }
    fn add(&mut self, key: &str, amount: i64) -> ApiResult<()> {
        let used = self.now.entry(key.to_string()).or_insert(0);
        *used = used
            .checked_add(amount)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("usage {key} overflows")))?;
        Ok(())
    }
    fn change(&self, key: &str) -> (i64, i64) {
        (self.locked.get(key).copied().unwrap_or(0), self.used(key))
    }
}

/// What the batch read before deciding.
struct Facts {
    day: String,
    /// Application → its loan, for loans already made.
    loans: HashMap<String, String>,
    /// Application → why it was closed to funding.
    closed: HashMap<String, String>,
    /// (institution, kind) on the whitelist today.
    listed: HashSet<(String, String)>,
    /// Partner → its related parties, itself included (rule C2); a partner
    /// missing here is a group of its own.
    related: HashMap<String, Vec<String>>,
    /// Net tier-1 capital and total loans.
    reference: Option<(i64, i64)>,
    /// The currency of the reference data: C2 and C3 measure loans in it only.
    reference_currency: String,
    /// Partner → the currency of its agreement in force today, read under
    /// the usage locks (an agreement version in another currency commits
    /// under the partner's usage lock): the reservation's own copy was read
    /// before, through the cache, and may predate it.
    agreed_now: HashMap<String, String>,
}

/// `(application_id, value)` rows of `select … WHERE application_id` for these applications.
async fn by_application(
    tx: &mut AnyConnection,
    select: &str,
    apps: &[&str],
) -> ApiResult<HashMap<String, String>> {
    let sql = format!(
        "{select} IN ({})",
        colend_platform::db::placeholders(tx, apps.len(), 1, 1)
    );
    let mut q = sqlx::query_as::<_, (String, String)>(&sql);
    for a in apps {
        q = q.bind(a.to_string());
    }
    Ok(q.fetch_all(&mut *tx).await?.into_iter().collect())
}

async fn read_facts(
    tx: &mut AnyConnection,
    rs: &[Reservation],
    day: String,
    related: HashMap<String, Vec<String>>,
) -> ApiResult<Facts> {
    let apps: Vec<&str> = rs.iter().map(|q| q.r.application_id.as_str()).collect();
    let loans = by_application(
        tx,
        "SELECT application_id, loan_id FROM loans WHERE application_id",
        &apps,
    )
    .await?;
    let closed = by_application(
        tx,
        "SELECT application_id, reason FROM closed_applications WHERE application_id",
        &apps,
    )
    .await?;
    let mut institutions: Vec<&str> = rs
        .iter()
        .flat_map(|q| {
            [
                q.r.partner_id.as_str(),
                q.agreement.credit_enhancer_id.as_str(),
            ]
        })
        .filter(|i| !i.is_empty())
        .collect();
    institutions.sort_unstable();
    institutions.dedup();
    let n = institutions.len();
    let sql = format!(
        "SELECT institution_id, kind FROM whitelist WHERE institution_id IN ({}) \
         AND effective_from <= {} AND (effective_to = '' OR effective_to >= {})",
        colend_platform::db::placeholders(tx, n, 1, 1),
        colend_platform::db::placeholders(tx, 1, 1, n + 1),
        colend_platform::db::placeholders(tx, 1, 1, n + 2),
    );
    let mut q = sqlx::query_as::<_, (String, String)>(&sql);
    for i in &institutions {
        q = q.bind(i.to_string());
    }
    q = q.bind(day.clone()).bind(day.clone());
    let listed = q.fetch_all(&mut *tx).await?.into_iter().collect();
    let reference: Option<(i64, i64, String)> = sqlx::query_as(
        "SELECT net_tier1_capital, total_loan_balance, currency FROM bank_reference WHERE id = 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let reference_currency = reference.as_ref().map(|r| r.2.clone()).unwrap_or_default();
    let reference = reference.map(|(tier1, loans, _)| (tier1, loans));
    let mut partners: Vec<&str> = rs.iter().map(|q| q.r.partner_id.as_str()).collect();
    partners.sort_unstable();
    partners.dedup();
    let sql = format!(
        "SELECT a.partner_id, a.currency FROM agreements a WHERE a.partner_id IN ({}) \
         AND a.version = (SELECT MAX(b.version) FROM agreements b \
         WHERE b.partner_id = a.partner_id AND b.effective_from <= {})",
        colend_platform::db::placeholders(tx, partners.len(), 1, 1),
        colend_platform::db::placeholders(tx, 1, 1, partners.len() + 1),
    );
    let mut q = sqlx::query_as::<_, (String, String)>(&sql);
    for p in &partners {
        q = q.bind(p.to_string());
    }
    let agreed_now = q
        .bind(day.clone())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    Ok(Facts {
        reference_currency,
        agreed_now,
        day,
        loans,
        closed,
        listed,
        related,
        reference,
    })
}

/// Decides and writes a batch: see the module's documentation.
async fn decide_and_write(
    tx: &mut AnyConnection,
    limits: Limits,
    now: i64,
    rs: Vec<Reservation>,
) -> ApiResult<Vec<ApiResult<pb::Loan>>> {
    // The business day: the daily quota's day, the loans' reserved_on, and
    // the date the whitelist is read for.
    let day = format_date(business_date(limits.time_zone, now));
    // The applications first (a release by application takes the same
    // locks), then the usage rows.
    let apps: Vec<&str> = rs.iter().map(|q| q.r.application_id.as_str()).collect();
    lock_applications(tx, &apps).await?;
    let mut partners: Vec<&str> = rs.iter().map(|q| q.r.partner_id.as_str()).collect();
    partners.sort_unstable();
    partners.dedup();
    // Every path takes these rows in one order, so bookings never deadlock.
    let mut total = Usage::default();
    let mut daily = Usage::default();
    let mut exposure = Usage::default();
    for p in &partners {
        total.lock_in(
            p.to_string(),
            lock_partner_usage(tx, LOCK_TOTAL, &[p]).await?,
        );
    }
    for p in &partners {
        daily.lock_in(
            p.to_string(),
            lock_partner_usage(tx, LOCK_DAILY, &[p, &day]).await?,
        );
    }
    // Rule C2 counts each partner with its related parties: their exposure
    // rows are locked too, all partners' in one sorted pass.
    let related = related_parties(tx, &partners, &day).await?;
    let mut exposed: Vec<String> = related.values().flatten().cloned().collect();
    exposed.sort_unstable();
    exposed.dedup();
    for p in &exposed {
        let scope = format!("PARTNER:{p}");
        let used = lock_usage(tx, LOCK_EXPOSURE, &[&scope]).await?;
        exposure.lock(scope, used);
    }
    exposure.lock("ALL".into(), lock_usage(tx, LOCK_EXPOSURE, &["ALL"]).await?);
    let mut facts = read_facts(tx, &rs, day.clone(), related).await?;

    let mut rows = Vec::new();
    let mut outcomes = Vec::with_capacity(rs.len());
    for q in &rs {
        match decide(q, &mut facts, &mut total, &mut daily, &mut exposure, limits) {
            Ok(()) => {
                let row = loan_row_of(q, &facts.day, now + limits.ttl_ms);
                facts
                    .loans
                    .insert(row.application_id.clone(), row.loan_id.clone());
                outcomes.push(Ok(loan_pb(&row, &[], Vec::new())));
                rows.push(row);
            }
            Err(e) => outcomes.push(Err(e)),
        }
    }
    insert_loans(tx, &rows, now).await?;
    for p in &partners {
        let currency = total.currency(p).unwrap_or("");
        store_usage(tx, STORE_TOTAL, &[p], total.change(p), Some(currency)).await?;
    }
    for p in &partners {
        let currency = daily.currency(p).unwrap_or("");
        store_usage(tx, STORE_DAILY, &[p, &day], daily.change(p), Some(currency)).await?;
    }
    for p in &exposed {
        let scope = format!("PARTNER:{p}");
        store_usage(tx, STORE_EXPOSURE, &[&scope], exposure.change(&scope), None).await?;
    }
    store_usage(tx, STORE_EXPOSURE, &["ALL"], exposure.change("ALL"), None).await?;
    Ok(outcomes)
}

/// One reservation's checks, in the order a lone reservation makes them; on
/// success its amounts are added to the running totals.
fn decide(
    q: &Reservation,
    facts: &mut Facts,
    total: &mut Usage,
    daily: &mut Usage,
    exposure: &mut Usage,
    limits: Limits,
) -> ApiResult<()> {
    let r = &q.r;
    if let Some(id) = facts.loans.get(&r.application_id) {
        return Err(ApiError::InvalidState(format!(
            "application already has loan {id}"
        )));
    }
    if let Some(why) = facts.closed.get(&r.application_id) {
        return Err(ApiError::InvalidState(format!(
            "application {} was closed before it was funded ({why})",
            r.application_id
        )));
    }
    // Rule C12: interest and fees over a 365-day year, on the day count the
    // loan freezes from this agreement, within the all-in cap.
    if let Some(problem) = domain::all_in_problem(
        i64::from(r.annual_rate_bps),
        i64::from(r.annual_fee_bps),
        day_count_of(q.agreement.day_count),
        limits.all_in_cap_bps,
    ) {
        return Err(ApiError::field("annual_rate_bps", &problem));
    }
    // OWN_RATE: the borrower's rate must cover the funders' own rates, or
    // the agreement must allow a negative residual.
    if let Some(problem) = domain::residual_problem(
        i64::from(r.annual_rate_bps),
        q.split,
        &agreement_terms(&q.agreement),
    ) {
        return Err(ApiError::InvalidState(problem));
    }
    // Rule C12: the partner (and its credit-enhancement firm) must be on the whitelist today.
    if !facts
        .listed
        .contains(&(r.partner_id.clone(), "PARTNER".to_string()))
    {
        return Err(ApiError::NotWhitelisted(format!(
            "partner {} is not on the bank's whitelist today",
            r.partner_id
        )));
    }
    // The loan is in the request's currency; the agreement's quotas are in
    // the agreement's: a loan in another currency is refused, never counted
    // against them.
    let agreed = q
        .agreement
        .total_quota
        .as_ref()
        .map_or("", |m| m.currency_code.as_str());
    if q.currency != agreed {
        return Err(ApiError::currency_mismatch(
            agreed,
            format!(
                "the principal is in {}, partner {}'s co-lending agreement in {agreed}",
                q.currency, r.partner_id
            ),
        ));
    }
    // The same, against the agreement in force as the batch reads it: a
    // version in another currency may have been stored since the copy above
    // was read.
    let agreed_now = facts
        .agreed_now
        .get(&r.partner_id)
        .map_or("", String::as_str);
    if q.currency != agreed_now {
        return Err(ApiError::currency_mismatch(
            agreed_now,
            format!(
                "the principal is in {}, partner {}'s co-lending agreement in force in {agreed_now}",
                q.currency, r.partner_id
            ),
        ));
    }
    // The partner's quota usage (total, and today's) is a sum of loans in
    // one currency, whatever the agreement now says (a version in another
    // currency, dated later, takes effect without a check of its own): a loan
    // in another currency is refused while anything is used, never added.
    for (usage, held, until) in [
        (
            &*total,
            "reserved or outstanding",
            "its total quota usage stays in it until that is repaid or released",
        ),
        (
            &*daily,
            "reserved today",
            "its daily quota usage stays in it for the rest of the day, or until that is released",
        ),
    ] {
        if let Some(used_in) = usage.currency(&r.partner_id)
            && used_in != q.currency
        {
            return Err(ApiError::currency_mismatch(
                used_in,
                format!(
                    "the principal is in {}; partner {} has co-funded principal {held} in \
                     {used_in}: {until}",
                    q.currency, r.partner_id
                ),
            ));
        }
    }
    let enhancer = &q.agreement.credit_enhancer_id;
    if !enhancer.is_empty()
        && !facts
            .listed
            .contains(&(enhancer.clone(), "CREDIT_ENHANCER".to_string()))
    {
        return Err(ApiError::NotWhitelisted(format!(
            "credit-enhancement firm {enhancer} is not on the bank's whitelist today"
        )));
    }
    let quota = |m: &Option<Money>| m.as_ref().map(|m| m.minor_units).unwrap_or(0);
    let (partner, bank) = (q.split.partner, q.split.bank);
    if !domain::within(
        total.used(&r.partner_id),
        partner,
        quota(&q.agreement.total_quota),
    ) {
        return Err(ApiError::limit(
            "PARTNER_TOTAL_QUOTA",
            "the partner's total co-funding quota would be exceeded",
        ));
    }
    if !domain::within(
        daily.used(&r.partner_id),
        partner,
        quota(&q.agreement.daily_quota),
    ) {
        return Err(ApiError::limit(
            "PARTNER_DAILY_QUOTA",
            "the partner's daily co-funding quota would be exceeded",
        ));
    }
    // Rules C2 and C3, on the bank's share, against the reference data.
    let (tier1, total_loans) = facts.reference.ok_or_else(|| {
        ApiError::NotReady(
            "the bank's reference data (net tier-1 capital, total loans) is not set".into(),
        )
    })?;
    // C2 and C3 add the bank's share of every loan in the reference data's
    // currency; one in another currency is refused rather than mixed in.
    if q.currency != facts.reference_currency {
        return Err(ApiError::currency_mismatch(
            facts.reference_currency.clone(),
            format!(
                "the principal is in {}, the bank's reference data (rules C2, C3) in {}",
                q.currency, facts.reference_currency
            ),
        ));
    }
    let scope = format!("PARTNER:{}", r.partner_id);
    // C2 is the partner's balance with its related parties'.
    let group_used = match facts.related.get(&r.partner_id) {
        Some(members) => members.iter().try_fold(0i64, |sum, m| {
            sum.checked_add(exposure.used(&format!("PARTNER:{m}")))
        }),
        None => Some(exposure.used(&scope)),
    };
    if !group_used
        .is_some_and(|used| domain::within(used, bank, domain::limit_of(tier1, limits.c2_bps)))
    {
        return Err(ApiError::limit(
            "C2_PARTNER_CONCENTRATION",
            "the co-lent balance of the partner and its related parties would exceed their share of net tier-1 capital",
        ));
    }
    if !domain::within(
        exposure.used("ALL"),
        bank,
        domain::limit_of(total_loans, limits.c3_bps),
    ) {
        return Err(ApiError::limit(
            "C3_CO_LENDING_RATIO",
            "co-lent loans would exceed their share of the bank's total loans",
        ));
    }
    total.add_in(&r.partner_id, partner, &q.currency)?;
    daily.add_in(&r.partner_id, partner, &q.currency)?;
    exposure.add(&scope, bank)?;
    exposure.add("ALL", bank)?;
    Ok(())
}

fn loan_row_of(q: &Reservation, day: &str, expires_at: i64) -> LoanRow {
    let (r, a) = (&q.r, &q.agreement);
    LoanRow {
        loan_id: format!("loan_{}", uuid::Uuid::now_v7().simple()),
        application_id: r.application_id.clone(),
        partner_id: r.partner_id.clone(),
        status: LoanStatus::Reserved,
        currency: q.currency.clone(),
        principal: r.principal.as_ref().map(|m| m.minor_units).unwrap_or(0),
        bank_amount: q.split.bank,
        partner_amount: q.split.partner,
        agreement_version: a.version as i64,
        terms: agreement_terms(a),
        annual_rate_bps: r.annual_rate_bps as i64,
        term_months: r.term_months as i64,
        method: q.method,
        reserved_on: day.to_string(),
        disbursed_on: String::new(),
        disbursement_ref: String::new(),
        paid: Paid::default(),
        borrower_key: r.borrower_key.clone(),
        expires_at,
        day_count: day_count_of(a.day_count),
        penalty_rate_bps: a.penalty_rate_bps as i64,
        waterfall: waterfall_of(&a.waterfall).unwrap_or_default(),
        accrued: Accrued::default(),
        penalty_through: String::new(),
        fee_bps: r.annual_fee_bps as i64,
        accrued_through: String::new(),
        overpaid: 0,
    }
}

/// Parameters of one new loan's row.
const LOAN_PARAMS: usize = 30;
/// Loans a multi-row INSERT carries at most.
const LOANS_PER_INSERT: usize = 100;

async fn insert_loans(tx: &mut AnyConnection, rows: &[LoanRow], now: i64) -> ApiResult<()> {
    for chunk in rows.chunks(LOANS_PER_INSERT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = |k: usize| colend_platform::db::placeholders(tx, 1, 1, i * LOAN_PARAMS + k);
                let run = |from: usize, to: usize| {
                    colend_platform::db::placeholders(tx, to - from + 1, 1, i * LOAN_PARAMS + from)
                };
                // New loans have nothing paid or accrued yet.
                format!(
                    "({}, 0, 0, 0, 0, 0, 0, {}, 0, 0, 0, 0, '', {}, 0, 0, 0, 0, {}, '', 0, {}, {})",
                    run(1, 18),
                    run(19, 23),
                    run(24, 25),
                    run(26, 28),
                    p(29),
                    p(30)
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO loans ({LOAN_COLS}, created_at, updated_at) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for row in chunk {
            q = q
                .bind(row.loan_id.clone())
                .bind(row.application_id.clone())
                .bind(row.partner_id.clone())
                .bind(row.status.name())
                .bind(row.currency.clone())
                .bind(row.principal)
                .bind(row.bank_amount)
                .bind(row.partner_amount)
                .bind(row.agreement_version)
                .bind(row.terms.partner_share_bps)
                .bind(row.terms.bank_rate_bps)
                .bind(row.terms.partner_rate_bps)
                .bind(row.annual_rate_bps)
                .bind(row.term_months)
                .bind(method_pb(row.method) as i64)
                .bind(row.reserved_on.clone())
                .bind(row.disbursed_on.clone())
                .bind(row.disbursement_ref.clone())
                .bind(row.borrower_key.clone())
                .bind(row.expires_at)
                .bind(row.day_count.name())
                .bind(row.penalty_rate_bps)
                .bind(row.waterfall.name())
                .bind(row.fee_bps)
                .bind(row.terms.fee_partner_bps)
                .bind(row.terms.interest_split.name())
                .bind(row.terms.residual_party.name())
                .bind(i64::from(row.terms.allow_negative_residual))
                .bind(now)
                .bind(now);
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reservation(app: usize, principal: i64, quota: i64) -> Reservation {
        reservation_in(app, principal, quota, "CNY")
    }

    fn reservation_in(app: usize, principal: i64, quota: i64, currency: &str) -> Reservation {
        let m = |m: i64| money(m, currency);
        Reservation {
            r: pb::ReserveFundingRequest {
                application_id: format!("app-{app}"),
                partner_id: "p1".into(),
                principal: m(principal),
                ..Default::default()
            },
            agreement: pb::Agreement {
                partner_share_bps: 3_000,
                total_quota: m(quota),
                daily_quota: m(quota),
                ..Default::default()
            },
            split: domain::split(principal, 3_000),
            currency: currency.into(),
            method: Method::EqualInstalment,
        }
    }

    fn facts(reference: (i64, i64)) -> Facts {
        Facts {
            day: "2026-11-23".into(),
            loans: HashMap::new(),
            closed: HashMap::new(),
            listed: [("p1".to_string(), "PARTNER".to_string())].into(),
            related: HashMap::new(),
            reference: Some(reference),
            reference_currency: "CNY".into(),
            agreed_now: [("p1".to_string(), "CNY".to_string())].into(),
        }
    }

    proptest! {
        /// Deciding a batch in memory never books past any limit, and
        /// refuses a reservation only when it would not have fitted.
        #[test]
        fn a_batch_never_overbooks(
            principals in proptest::collection::vec(1i64..5_000_000, 1..200),
            quota in 0i64..50_000_000,
            used in 0i64..10_000_000,
            tier1 in 0i64..200_000_000,
            loans in 0i64..400_000_000,
        ) {
            let limits = Limits { c2_bps: 2_500, c3_bps: 5_000, ttl_ms: 0, time_zone: Tz::Asia__Shanghai, all_in_cap_bps: 2_400 };
            let mut f = facts((tier1, loans));
            let (mut total, mut daily, mut exposure) = (Usage::default(), Usage::default(), Usage::default());
            total.lock_in("p1".into(), (used, "CNY".into()));
            daily.lock_in("p1".into(), (0, String::new()));
            exposure.lock("PARTNER:p1".into(), 0);
            exposure.lock("ALL".into(), 0);
            let (mut partner_sum, mut bank_sum) = (0i64, 0i64);
            for (i, p) in principals.iter().enumerate() {
                let q = reservation(i, *p, quota);
                let before = (total.used("p1"), daily.used("p1"), exposure.used("ALL"));
                match decide(&q, &mut f, &mut total, &mut daily, &mut exposure, limits) {
                    Ok(()) => {
                        prop_assert_eq!(q.split.bank + q.split.partner, *p);
                        partner_sum += q.split.partner;
                        bank_sum += q.split.bank;
                    }
                    Err(ApiError::QuotaExceeded { limit, .. }) => {
                        let fits = |used: i64, add: i64, limit: i64| used + add <= limit;
                        let c2 = domain::limit_of(tier1, 2_500);
                        let c3 = domain::limit_of(loans, 5_000);
                        prop_assert!(
                            !fits(before.0, q.split.partner, quota)
                                || !fits(before.1, q.split.partner, quota)
                                || !fits(exposure.used("PARTNER:p1"), q.split.bank, c2)
                                || !fits(before.2, q.split.bank, c3),
                            "{limit} refused a reservation that fitted"
                        );
                        prop_assert_eq!((total.used("p1"), daily.used("p1"), exposure.used("ALL")), before);
                    }
                    Err(e) => prop_assert!(false, "unexpected refusal {e}"),
                }
            }
            prop_assert_eq!(total.used("p1"), used + partner_sum);
            prop_assert!(daily.used("p1") <= quota);
            prop_assert!(total.used("p1") <= quota.max(used));
            prop_assert!(exposure.used("PARTNER:p1") <= domain::limit_of(tier1, 2_500));
            prop_assert!(exposure.used("ALL") <= domain::limit_of(loans, 5_000));
            prop_assert_eq!(exposure.used("ALL"), bank_sum);
        }

        /// One application gets one loan, however often it appears in a batch.
        #[test]
        fn one_loan_per_application(apps in proptest::collection::vec(0usize..5, 1..50)) {
            let limits = Limits { c2_bps: 10_000, c3_bps: 10_000, ttl_ms: 0, time_zone: Tz::Asia__Shanghai, all_in_cap_bps: 2_400 };
            let mut f = facts((i64::MAX / 4, i64::MAX / 4));
            let (mut total, mut daily, mut exposure) = (Usage::default(), Usage::default(), Usage::default());
            let mut booked = HashSet::new();
            for a in apps {
                let q = reservation(a, 1_000, i64::MAX / 4);
                let fresh = !f.loans.contains_key(&q.r.application_id);
                let decided = decide(&q, &mut f, &mut total, &mut daily, &mut exposure, limits);
                prop_assert_eq!(decided.is_ok(), fresh);
                if decided.is_ok() {
                    let row = loan_row_of(&q, &f.day, 0);
                    f.loans.insert(row.application_id.clone(), row.loan_id);
                    prop_assert!(booked.insert(a));
                }
            }
        }

        /// Whatever currency the agreement in force and the reference data
        /// move to between reservations, a partner's total and daily usage
        /// each hold one currency: a loan in another is refused (naming the
        /// one held) exactly while the usage holds something, and booked
        /// otherwise. The oracle keeps one sum per currency.
        #[test]
        fn usage_never_mixes_currencies(
            total_at in (0i64..3, 0usize..3),
            daily_at in (0i64..3, 0usize..3),
            items in proptest::collection::vec((0usize..3, 1i64..10_000), 1..60),
        ) {
            const CODES: [&str; 3] = ["CNY", "USD", "INR"];
            let limits = Limits { c2_bps: 10_000, c3_bps: 10_000, ttl_ms: 0, time_zone: Tz::Asia__Shanghai, all_in_cap_bps: 2_400 };
            let mut f = facts((i64::MAX / 4, i64::MAX / 4));
            let (mut total, mut daily, mut exposure) = (Usage::default(), Usage::default(), Usage::default());
            // Usage as the batch finds it: an amount in one currency.
            total.lock_in("p1".into(), (total_at.0, CODES[total_at.1].into()));
            daily.lock_in("p1".into(), (daily_at.0, CODES[daily_at.1].into()));
            let mut sums: [HashMap<&str, i64>; 2] = Default::default();
            *sums[0].entry(CODES[total_at.1]).or_default() += total_at.0;
            *sums[1].entry(CODES[daily_at.1]).or_default() += daily_at.0;
            let held = |sums: &HashMap<&str, i64>, c: &str| {
                sums.iter().filter(|(k, v)| **k != c && **v != 0).map(|(k, _)| k.to_string()).collect::<Vec<_>>()
            };
            for (i, (code, principal)) in items.into_iter().enumerate() {
                let c = CODES[code];
                f.agreed_now.insert("p1".into(), c.into());
                f.reference_currency = c.into();
                let q = reservation_in(i, principal, i64::MAX / 4, c);
                let others: Vec<String> = held(&sums[0], c).into_iter().chain(held(&sums[1], c)).collect();
                match decide(&q, &mut f, &mut total, &mut daily, &mut exposure, limits) {
                    Ok(()) => {
                        prop_assert!(others.is_empty(), "{c} booked over {others:?}");
                        for s in &mut sums {
                            *s.entry(c).or_default() += q.split.partner;
                        }
                    }
                    Err(ApiError::CurrencyMismatch { expected, .. }) => {
                        prop_assert!(others.contains(&expected), "{c} refused for {expected}, held {others:?}");
                    }
                    Err(e) => prop_assert!(false, "unexpected refusal {e}"),
                }
                for s in &sums {
                    prop_assert!(s.values().filter(|v| **v != 0).count() <= 1, "{s:?}");
                }
                prop_assert_eq!(total.used("p1"), sums[0].values().sum::<i64>());
                prop_assert_eq!(daily.used("p1"), sums[1].values().sum::<i64>());
            }
        }
    }
}
