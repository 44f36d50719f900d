//! The invariant checker: reads every service's own storage and verifies
//! what must hold whatever failed on the way (`colend check`, and the fault
//! suite after every scenario).
//!
//! 1. Every journey ended: completed (funds reserved, disbursed, repaying),
//!    rejected or compensated (a terminal status), or parked with a reason.
//! 2. For every loan, bank share + partner share = principal.
//! 3. Every repayment is allocated exactly once, to the cent: its
//!    allocations sum to its amount, their sums per loan equal what the loan
//!    records as paid, and no bank transaction is booked twice.
//! 4. The ledger's trial balance is zero, overall and for every posting.
//! 5. No reservation exceeds capacity: each partner's quota in use equals
//!    what its live loans hold, and is within the agreement's quota.
//! 6. Exactly one effect per idempotency key: applications, loans,
//!    disbursements and repayments each match one stored key, and no loan
//!    exists without its application (or the other way round).
//! 7. Nothing is left to relay, and every audit chain is intact.
use colend_contracts::funding::v1 as fund;
use colend_platform::config::Backends;
use prost::Message;
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;

/// One invariant and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub holds: bool,
    /// What was counted, or what broke.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    /// Applications by status.
    pub applications: std::collections::BTreeMap<String, i64>,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.checks.iter().all(|c| c.holds)
    }

    pub fn violations(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.holds)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }

    fn push(&mut self, name: &'static str, problems: Vec<String>, counted: String) {
        let holds = problems.is_empty();
        let detail = if holds {
            counted
        } else {
            let n = problems.len();
            let mut shown: Vec<String> = problems.into_iter().take(5).collect();
            if n > 5 {
                shown.push(format!("… {} more", n - 5));
            }
            shown.join("; ")
        };
        self.checks.push(Check {
            name,
            holds,
            detail,
        });
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "{} {}: {}",
                if c.holds { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        Ok(())
    }
}

const ENDED: [&str; 8] = [
    "FUNDS_RESERVED",
    "DISBURSED",
    "REPAYING",
    "KYC_REJECTED",
    "DECLINED",
    "FUNDING_REJECTED",
    "FAILED",
    "PARKED",
];

/// Outbox events not yet relayed.
async fn unrelayed(db: &colend_platform::Db) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE sent_at = 0")
        .fetch_one(&db.pool)
        .await?;
    Ok(n)
}

/// Journeys with automatic steps left, plus events not yet relayed.
async fn unfinished(acq: &colend_platform::Db, fun: &colend_platform::Db) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM applications WHERE status IN ('SUBMITTED', 'KYC_PASSED', 'APPROVED')",
    )
    .fetch_one(&acq.pool)
    .await?;
    Ok(n + unrelayed(acq).await? + unrelayed(fun).await?)
}

/// Waits (up to `secs`) until no journey has steps left and both outboxes
/// are drained; true when that happened.
pub async fn settle(backends: &Backends, secs: u64) -> anyhow::Result<bool> {
    let acq = colend_acquisition::connect(backends).await?;
    let fun = colend_funding::connect(backends).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if unfinished(&acq, &fun).await? == 0 {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Checks every invariant against the storage `backends` names.
pub async fn check(backends: &Backends) -> anyhow::Result<Report> {
    let acq = colend_acquisition::connect(backends).await?;
    let fun = colend_funding::connect(backends).await?;
    let mut report = Report::default();

    // 1. Journeys.
    let apps =
        sqlx::query("SELECT application_id, status, reason_codes, funding FROM applications")
            .fetch_all(&acq.pool)
            .await?;
    let mut problems = Vec::new();
    let mut app_status: HashMap<String, String> = HashMap::new();
    for r in &apps {
        let (id, status, reasons): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        *report.applications.entry(status.clone()).or_default() += 1;
        if !ENDED.contains(&status.as_str()) {
            problems.push(format!("{id} is still {status}"));
        } else if (status == "PARKED" || status == "FAILED") && reasons.is_empty() {
            problems.push(format!("{id} is {status} without a reason"));
        }
        app_status.insert(id, status);
    }
    report.push(
        "every journey ended (completed, compensated or parked with a reason)",
        problems,
        format!("{} applications: {:?}", apps.len(), report.applications),
    );

    // 2. Splits.
    let loans = sqlx::query(
        "SELECT loan_id, application_id, partner_id, status, principal, bank_amount, partner_amount, \
         principal_paid, interest_paid, partner_principal_paid, disbursement_ref FROM loans",
    )
    .fetch_all(&fun.pool)
    .await?;
    let mut problems = Vec::new();
    for l in &loans {
        let (id, p, b, q): (String, i64, i64, i64) = (l.get(0), l.get(4), l.get(5), l.get(6));
        if b + q != p || b < 0 || q < 0 {
            problems.push(format!("{id}: bank {b} + partner {q} != principal {p}"));
        }
    }
    report.push(
        "bank share + partner share = principal for every loan",
        problems,
        format!("{} loans", loans.len()),
    );

    // 3. Repayments.
    let reps = sqlx::query("SELECT repayment_id, loan_id, amount, bank_ref, body FROM repayments")
        .fetch_all(&fun.pool)
        .await?;
    let mut problems = Vec::new();
    let mut paid: HashMap<String, (i64, i64)> = HashMap::new();
    let mut refs: HashMap<(String, String), u32> = HashMap::new();
    let mut cents = 0i64;
    for r in &reps {
        let (id, loan, amount, bank_ref, body): (String, String, i64, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        cents += amount;
        *refs.entry((loan.clone(), bank_ref)).or_default() += 1;
        let Some(rep) = hex::decode(&body)
            .ok()
            .and_then(|b| fund::Repayment::decode(b.as_slice()).ok())
        else {
            problems.push(format!("{id}: unreadable"));
            continue;
        };
        let mut sum = 0i64;
        let e = paid.entry(loan).or_default();
        for a in &rep.allocations {
            let m = a.amount.as_ref().map(|m| m.minor_units).unwrap_or(0);
            sum += m;
            if a.component == fund::Component::Principal as i32 {
                e.0 += m;
            } else if a.component == fund::Component::Interest as i32 {
                e.1 += m;
            }
        }
        if sum != amount {
            problems.push(format!("{id}: allocations {sum} != amount {amount}"));
        }
    }
    for ((loan, r), n) in &refs {
        if *n > 1 {
            problems.push(format!("{loan}: bank transaction {r} booked {n} times"));
        }
    }
    for l in &loans {
        let (id, pp, ip): (String, i64, i64) = (l.get(0), l.get(7), l.get(8));
        let (p, i) = paid.get(&id).copied().unwrap_or_default();
        if (p, i) != (pp, ip) {
            problems.push(format!(
                "{id}: allocations principal {p} / interest {i} != loan's paid {pp} / {ip}"
            ));
        }
    }
    report.push(
        "every repayment cent allocated exactly once",
        problems,
        format!("{} repayments, {cents} minor units", reps.len()),
    );

    // 4. Ledger.
    let (d, c): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(debit), 0) AS BIGINT), CAST(COALESCE(SUM(credit), 0) AS BIGINT) FROM ledger_entries",
    )
    .fetch_one(&fun.pool)
    .await?;
    let unbalanced: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT posting_id, CAST(SUM(debit) AS BIGINT), CAST(SUM(credit) AS BIGINT) FROM ledger_entries \
         GROUP BY posting_id HAVING SUM(debit) <> SUM(credit)",
    )
    .fetch_all(&fun.pool)
    .await?;
    let mut problems: Vec<String> = unbalanced
        .iter()
        .map(|(p, d, c)| format!("posting {p}: debits {d} != credits {c}"))
        .collect();
    if d != c {
        problems.push(format!("debits {d} != credits {c}"));
    }
    report.push(
        "ledger trial balance is zero",
        problems,
        format!("debits = credits = {d}"),
    );

    // 5. Capacity.
    let usage: Vec<(String, i64)> = sqlx::query_as("SELECT partner_id, used FROM partner_usage")
        .fetch_all(&fun.pool)
        .await?;
    let quotas: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.partner_id, a.total_quota FROM agreements a WHERE a.version = \
         (SELECT MAX(b.version) FROM agreements b WHERE b.partner_id = a.partner_id)",
    )
    .fetch_all(&fun.pool)
    .await?;
    let quotas: HashMap<String, i64> = quotas.into_iter().collect();
    let mut held: HashMap<String, i64> = HashMap::new();
    for l in &loans {
        let (partner, status, q, pp): (String, String, i64, i64) =
            (l.get(2), l.get(3), l.get(6), l.get(9));
        if status != "VOID" {
            *held.entry(partner).or_default() += q - pp;
        }
    }
    let mut problems = Vec::new();
    for (partner, used) in &usage {
        let live = held.get(partner).copied().unwrap_or(0);
        if *used != live {
            problems.push(format!(
                "{partner}: quota in use {used} != held by live loans {live}"
            ));
        }
        if let Some(q) = quotas.get(partner)
            && used > q
        {
            problems.push(format!("{partner}: quota in use {used} > quota {q}"));
        }
    }
    report.push(
        "no reservation exceeds capacity",
        problems,
        format!("{} partners within quota", usage.len()),
    );

    // 6. One effect per key.
    let mut problems = Vec::new();
    let keys = |db: &colend_platform::Db, scope: &'static str| {
        let pool = db.pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM idempotency_keys WHERE outcome = 'ok' AND scope LIKE $1",
            )
            .bind(scope)
            .fetch_one(&pool)
            .await?;
            Ok::<i64, sqlx::Error>(n)
        }
    };
    let submitted = keys(&acq, "SubmitApplication:%").await?;
    if submitted != apps.len() as i64 {
        problems.push(format!(
            "{} applications but {submitted} SubmitApplication keys",
            apps.len()
        ));
    }
    let reserved = keys(&fun, "ReserveFunding:%").await?;
    if reserved != loans.len() as i64 {
        problems.push(format!(
            "{} loans but {reserved} ReserveFunding keys",
            loans.len()
        ));
    }
    let disbursed = loans
        .iter()
        .filter(|l| !l.get::<String, _>(10).is_empty())
        .count() as i64;
    let disb_keys = keys(&fun, "BookDisbursement%").await?;
    if disb_keys != disbursed {
        problems.push(format!(
            "{disbursed} disbursed loans but {disb_keys} BookDisbursement keys"
        ));
    }
    let rep_keys = keys(&fun, "BookRepayment%").await?;
    if rep_keys != reps.len() as i64 {
        problems.push(format!(
            "{} repayments but {rep_keys} BookRepayment keys",
            reps.len()
        ));
    }
    for l in &loans {
        let (loan, app, status): (String, String, String) = (l.get(0), l.get(1), l.get(3));
        match app_status.get(&app).map(String::as_str) {
            None => problems.push(format!("{loan} has no application {app}")),
            Some("FUNDS_RESERVED") if status != "RESERVED" => {
                problems.push(format!("{app} is FUNDS_RESERVED but its loan is {status}"))
            }
            Some("DISBURSED" | "REPAYING") if status == "RESERVED" || status == "VOID" => {
                problems.push(format!("{app} is disbursed but its loan is {status}"))
            }
            Some("FAILED" | "FUNDING_REJECTED" | "PARKED") if status == "RESERVED" => problems
                .push(format!(
                    "{app} ended but its reservation {loan} is still live"
                )),
            _ => {}
        }
    }
    let loan_apps: std::collections::HashSet<String> =
        loans.iter().map(|l| l.get::<String, _>(1)).collect();
    for (app, status) in &app_status {
        if matches!(status.as_str(), "FUNDS_RESERVED" | "DISBURSED" | "REPAYING")
            && !loan_apps.contains(app)
        {
            problems.push(format!("{app} is {status} but funding has no loan for it"));
        }
    }
    report.push(
        "exactly one effect per idempotency key",
        problems,
        format!(
            "{submitted} submissions, {reserved} reservations, {disb_keys} disbursements, {rep_keys} repayments"
        ),
    );

    // 7. Relays drained, audit intact.
    let mut problems = Vec::new();
    for (name, db) in [("acquisition", &acq), ("funding", &fun)] {
        let n = unrelayed(db).await?;
        if n > 0 {
            problems.push(format!("{name}: {n} outbox events not relayed"));
        }
    }
    let audit = match crate::audit_verify("all", backends).await {
        Ok(lines) => lines.len(),
        Err(e) => {
            problems.push(e.to_string());
            0
        }
    };
    report.push(
        "outboxes relayed and audit chains intact",
        problems,
        format!("{audit} audit chains intact"),
    );
    Ok(report)
}
