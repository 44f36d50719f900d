//! Servicing: schedules, each funder's schedule, overdue penalty interest,
//! the repayment waterfall and the re-cut of the schedule after a
//! prepayment. Pure: no I/O. Every split is exact: a funder's parts are
//! taken on running totals (floor of the running total times its weight),
//! so rounding never drifts and each funder ends with exactly its share.
//!
//! A repayment ([`repay`]) first accrues the loan to its value date
//! ([`accrue_to`]), then pays by the waterfall what is owed on that date:
//! overdue instalments in full, and of the current period only the
//! interest and fee accrued so far; what is left prepays principal, which
//! stops bearing interest on the value date: the current instalment is
//! re-cut (its interest is what accrued on the old balance plus interest on
//! the new balance to its due date) and so are the later ones. Beyond the
//! payoff a repayment is an overpayment, owed back to the borrower.
use super::{Accrual, InterestSplit, LoanState, Method, Party, Segment, Split, Terms, accrue_to};
use chrono::{Months, NaiveDate};
use colend_core::money::{BPS_ONE, mul_div_floor, mul_div_round};

/// Day count convention of interest: actual days over a 360- or 365-day year.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DayCount {
    Act360,
    Act365,
}

impl DayCount {
    pub fn basis(&self) -> i64 {
        match self {
            DayCount::Act360 => 360,
            DayCount::Act365 => 365,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DayCount::Act360 => "ACT_360",
            DayCount::Act365 => "ACT_365",
        }
    }

    pub fn parse(s: &str) -> Option<DayCount> {
        match s {
            "ACT_360" => Some(DayCount::Act360),
            "ACT_365" => Some(DayCount::Act365),
            _ => None,
        }
    }
}

/// Interest on `balance` for `days` at `annual_bps`, rounded half up.
///
/// Exact in `i128`. Servicing passes it at most an instalment's total (below
/// 1.2 × 10^13 under [`super::MAX_PRINCIPAL`]: see [`schedule_from`]) or a
/// balance of at most the principal, at rates up to 10,000 bps: the result
/// fits in an `i64` for any span of dates chrono can represent (under
/// 2 × 10^8 days), so the `expect` below cannot fire for them.
pub fn interest(balance: i64, annual_bps: i64, days: i64, dc: DayCount) -> i64 {
    mul_div_round(balance, annual_bps * days, BPS_ONE * dc.basis())
        .expect("interest on an i64 balance overflows i64")
}

/// One instalment due.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instalment {
    pub seq: i32,
    pub due: NaiveDate,
    pub principal: i64,
    pub interest: i64,
    /// Fees of the period (credit enhancement included), on the same balance as interest.
    pub fee: i64,
}

impl Instalment {
    pub fn total(&self) -> i64 {
        self.principal + self.interest + self.fee
    }
}

/// What a schedule charges a year: the borrower's rate and fees on top.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pricing {
    pub rate_bps: i64,
    pub fee_bps: i64,
}

/// `start` plus `k` months for k in `first..first + n`, each computed from
/// `start` so month ends never drift.
pub fn due_dates(start: NaiveDate, first: u32, n: u32) -> Vec<NaiveDate> {
    (first..first + n)
        .map(|k| start.checked_add_months(Months::new(k)).unwrap_or(start))
        .collect()
}

/// Days in each period: from `from` to the first due date, then between due dates.
fn period_days(from: NaiveDate, dues: &[NaiveDate]) -> Vec<i64> {
    let mut prev = from;
    dues.iter()
        .map(|d| {
            let days = (*d - prev).num_days().max(0);
            prev = *d;
            days
        })
        .collect()
}

/// Runs equal-instalment amortisation with level payment `m`; returns the
/// last instalment's amount (remaining balance plus its interest).
fn last_payment(principal: i64, days: &[i64], bps: i64, dc: DayCount, m: i64) -> i64 {
    let mut bal = principal;
    for d in &days[..days.len() - 1] {
        let i = interest(bal, bps, *d, dc);
        bal -= (m - i).clamp(0, bal);
    }
    bal + interest(bal, bps, days[days.len() - 1], dc)
}

/// The repayment schedule of a new loan: `n` monthly instalments from `start`.
pub fn schedule(
    principal: i64,
    n: i32,
    price: Pricing,
    method: Method,
    start: NaiveDate,
    dc: DayCount,
) -> Vec<Instalment> {
    schedule_from(
        principal,
        start,
        &due_dates(start, 1, n as u32),
        1,
        price,
        method,
        dc,
    )
}

/// A schedule over given due dates, the first period starting at `from`.
/// Principal parts sum exactly to `principal`.
///
/// Its sums are unchecked because they are bounded: ReserveFunding refuses a
/// principal above [`super::MAX_PRINCIPAL`] (10^13 minor units) and rates or
/// fees above 10,000 bps, terms above 360 months; periods are at most 31
/// days (monthly due dates; a re-cut period is shorter). Each period's
/// interest, and its fee, is then at most 10^13 × 31 / 360 < 8.7 × 10^11,
/// so the level payment's search bound (the principal plus every period's
/// interest) stays below 3.2 × 10^14 and every instalment's total below
/// 1.2 × 10^13: four orders of magnitude inside an `i64` (9.2 × 10^18).
pub fn schedule_from(
    principal: i64,
    from: NaiveDate,
    dues: &[NaiveDate],
    first_seq: i32,
    price: Pricing,
    method: Method,
    dc: DayCount,
) -> Vec<Instalment> {
    let annual_bps = price.rate_bps;
    assert!(principal >= 0 && annual_bps >= 0 && price.fee_bps >= 0);
    let fee_on = |bal: i64, days: i64| interest(bal, price.fee_bps, days, dc);
    let n = dues.len();
    if n == 0 {
        return Vec::new();
    }
    let days = period_days(from, dues);
    let mut out = Vec::with_capacity(n);
    let mut bal = principal;
    let seq = |k: usize| first_seq + k as i32;
    match method {
        Method::EqualInstalment => {
            // The smallest level payment whose final instalment is not larger;
            // of it and one cent less, the one whose final instalment is closest.
            let max_interest: i64 = days
                .iter()
                .map(|d| interest(principal, annual_bps, *d, dc))
                .sum();
            let (mut lo, mut hi) = (principal / n as i64, principal + max_interest + 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if last_payment(principal, &days, annual_bps, dc, mid) <= mid {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let gap = |m: i64| (last_payment(principal, &days, annual_bps, dc, m) - m).abs();
            let level = if lo > 0 && gap(lo - 1) <= gap(lo) {
                lo - 1
            } else {
                lo
            };
            for k in 0..n {
                let i = interest(bal, annual_bps, days[k], dc);
                let fee = fee_on(bal, days[k]);
                let p = if k == n - 1 {
                    bal
                } else {
                    (level - i).clamp(0, bal)
                };
                bal -= p;
                out.push(Instalment {
                    seq: seq(k),
                    due: dues[k],
                    principal: p,
                    interest: i,
                    fee,
                });
            }
        }
        Method::EqualPrincipal => {
            let base = principal / n as i64;
            let extra = principal % n as i64;
            for k in 0..n {
                let i = interest(bal, annual_bps, days[k], dc);
                let fee = fee_on(bal, days[k]);
                let p = base + i64::from((k as i64) < extra);
                bal -= p;
                out.push(Instalment {
                    seq: seq(k),
                    due: dues[k],
                    principal: p,
                    interest: i,
                    fee,
                });
            }
        }
        Method::InterestFirst => {
            for k in 0..n {
                let i = interest(principal, annual_bps, days[k], dc);
                let fee = fee_on(principal, days[k]);
                let p = if k == n - 1 { principal } else { 0 };
                out.push(Instalment {
                    seq: seq(k),
                    due: dues[k],
                    principal: p,
                    interest: i,
                    fee,
                });
            }
        }
    }
    out
}

/// The partner's part of a running total of principal (or penalty).
pub fn partner_principal_part(total: i64, split: Split) -> i64 {
    let whole = split.bank + split.partner;
    if whole == 0 {
        0
    } else {
        mul_div_floor(total, split.partner, whole).expect("a part is at most the total")
    }
}

/// The partner's part of a running total of interest by principal × rate
/// weights: how loans booked before the interest split was agreed share
/// interest ([`InterestSplit::RateWeighted`]), and only those.
pub fn partner_interest_part(total: i64, split: Split, terms: &Terms) -> i64 {
    let w_bank = split.bank as i128 * terms.bank_rate_bps as i128;
    let w_partner = split.partner as i128 * terms.partner_rate_bps as i128;
    if w_bank + w_partner == 0 {
        partner_principal_part(total, split)
    } else {
        (total as i128 * w_partner / (w_bank + w_partner)) as i64
    }
}

/// The partner's part of a running total of fees, by the agreement's fee split.
pub fn partner_fee_part(total: i64, terms: &Terms) -> i64 {
    mul_div_floor(total, terms.fee_partner_bps, BPS_ONE).expect("a part is at most the total")
}

/// One funder's part of one instalment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunderLine {
    pub seq: i32,
    pub principal: i64,
    pub interest: i64,
    pub fee: i64,
}

/// An instalment with what has accrued and been paid on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalmentState {
    pub inst: Instalment,
    pub principal_paid: i64,
    pub interest_paid: i64,
    pub fee_paid: i64,
    /// Interest and fee accrued on it so far (posted to the funders' ledgers).
    pub interest_accrued: i64,
    pub fee_accrued: i64,
    /// The balance segment its interest and fee accrue on now.
    pub segment: Segment,
    /// The overdue segment its penalty interest accrues on now.
    pub penalty: PenaltySegment,
    /// Accrued whole ahead of its due date under the rules before daily
    /// accrual (loans booked before them): payable in full, never re-cut.
    pub accrued_in_full: bool,
}

impl InstalmentState {
    /// A new instalment: nothing accrued or paid, on an untouched schedule.
    pub fn new(inst: Instalment) -> Self {
        InstalmentState {
            inst,
            ..Default::default()
        }
    }

    pub fn unpaid(&self) -> i64 {
        (self.inst.principal - self.principal_paid)
            + (self.inst.interest - self.interest_paid)
            + (self.inst.fee - self.fee_paid)
    }

    /// Whether its principal is payable on `value_date`: due by then (or
    /// accrued in full under the earlier rules). Paying it earlier is a
    /// prepayment.
    pub fn principal_payable(&self, value_date: NaiveDate) -> bool {
        self.accrued_in_full || self.inst.due <= value_date
    }

    /// First day of its overdue segment: the later of its due date and the
    /// last change of what is unpaid of it.
    pub fn penalty_from(&self) -> NaiveDate {
        self.penalty
            .from
            .map_or(self.inst.due, |from| from.max(self.inst.due))
    }

    /// Penalty interest accrued in its overdue segment through `date`:
    /// `round(unpaid × penalty_bps × days / (10,000 × basis))`, the days
    /// counted from the segment's first day, rounded half up once.
    pub fn penalty_through(&self, date: NaiveDate, penalty_bps: i64, dc: DayCount) -> i64 {
        let (unpaid, days) = (self.unpaid(), (date - self.penalty_from()).num_days());
        if unpaid <= 0 || days <= 0 {
            return 0;
        }
        interest(unpaid, penalty_bps, days, dc)
    }
}

/// The overdue segment an instalment's penalty interest accrues on: what is
/// unpaid of it is constant within it, from the later of its due date and
/// the last change of that amount (a repayment's value date).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PenaltySegment {
    /// The last change of its unpaid amount (loans booked before penalty
    /// accrued per segment: the date their penalty was accrued through);
    /// `None`: none, the segment starts on the due date.
    pub from: Option<NaiveDate>,
    /// Penalty accrued (posted) within the segment so far.
    pub accrued: i64,
}

/// Penalty interest each instalment accrues up to `to`, at `penalty_bps` a
/// year, in the loan's order: an instalment past its due date accrues on
/// what is still unpaid of it, cumulatively within its overdue segment (the
/// segment's penalty through `to` less what was already posted in it), so
/// whatever dates penalty is accrued on, the postings sum to the segment's
/// penalty rounded once.
///
/// Bounded: what a loan's instalments owe sums to below 6.2 × 10^14 (see
/// [`schedule_from`]) and the penalty rate is at most 10,000 bps, so a
/// loan's penalty over any span under ten thousand years stays inside an
/// `i64`.
pub fn penalty_accrual(
    insts: &[InstalmentState],
    to: NaiveDate,
    penalty_bps: i64,
    dc: DayCount,
) -> Vec<i64> {
    insts
        .iter()
        .map(|s| (s.penalty_through(to, penalty_bps, dc) - s.penalty.accrued).max(0))
        .collect()
}

/// Interest, fee and penalty accrued on a loan so far, and the partner's
/// running part of each (the bank's is the rest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accrued {
    pub interest: i64,
    pub partner_interest: i64,
    pub fee: i64,
    pub partner_fee: i64,
    pub penalty: i64,
    pub partner_penalty: i64,
}

/// What one accrual adds to each funder's receivable and income.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunderAmounts {
    pub bank: i64,
    pub partner: i64,
}

impl FunderAmounts {
    pub fn total(&self) -> i64 {
        self.bank + self.partner
    }
}

/// Repayment components, in the order a waterfall takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Penalty,
    Fee,
    Interest,
    Principal,
}

impl Bucket {
    fn name(&self) -> &'static str {
        match self {
            Bucket::Penalty => "PENALTY",
            Bucket::Fee => "FEE",
            Bucket::Interest => "INTEREST",
            Bucket::Principal => "PRINCIPAL",
        }
    }
}

/// The order in which a repayment pays components (default penalty → fee →
/// interest → principal). Penalty is loan-level: first if it comes first,
/// otherwise after the instalments; fee, interest and principal are taken
/// per instalment, oldest first, in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waterfall(pub [Bucket; 4]);

impl Default for Waterfall {
    fn default() -> Self {
        Waterfall([
            Bucket::Penalty,
            Bucket::Fee,
            Bucket::Interest,
            Bucket::Principal,
        ])
    }
}

impl Waterfall {
    /// "PENALTY,FEE,INTEREST,PRINCIPAL" and its permutations. An order that
    /// leaves out FEE (written before fees existed) takes fees just before interest.
    pub fn parse(s: &str) -> Option<Waterfall> {
        let mut v: Vec<Bucket> = s
            .split(',')
            .map(|p| match p.trim() {
                "PENALTY" => Some(Bucket::Penalty),
                "FEE" => Some(Bucket::Fee),
                "INTEREST" => Some(Bucket::Interest),
                "PRINCIPAL" => Some(Bucket::Principal),
                _ => None,
            })
            .collect::<Option<_>>()?;
        if v.len() == 3 && !v.contains(&Bucket::Fee) {
            let at = v.iter().position(|b| *b == Bucket::Interest)?;
            v.insert(at, Bucket::Fee);
        }
        let all = [
            Bucket::Penalty,
            Bucket::Fee,
            Bucket::Interest,
            Bucket::Principal,
        ];
        (v.len() == 4 && all.iter().all(|b| v.contains(b)))
            .then(|| Waterfall([v[0], v[1], v[2], v[3]]))
    }

    pub fn name(&self) -> String {
        self.0
            .iter()
            .map(Bucket::name)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Running totals of what a loan has received, and the partner's part of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paid {
    pub principal: i64,
    pub interest: i64,
    pub fee: i64,
    pub penalty: i64,
    pub partner_principal: i64,
    pub partner_interest: i64,
    pub partner_fee: i64,
    pub partner_penalty: i64,
}

/// Components of a repayment for one funder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parts {
    pub penalty: i64,
    pub fee: i64,
    pub interest: i64,
    pub principal: i64,
    /// Paid beyond the payoff: owed back to the borrower.
    pub overpayment: i64,
}

impl Parts {
    pub fn total(&self) -> i64 {
        self.penalty + self.fee + self.interest + self.principal + self.overpayment
    }
}

/// How much of one instalment a repayment pays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paying {
    pub seq: i32,
    pub principal: i64,
    pub interest: i64,
    pub fee: i64,
}

/// How one repayment is allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub bank: Parts,
    pub partner: Parts,
    /// Per instalment touched.
    pub instalments: Vec<Paying>,
    /// Principal paid ahead of schedule; the remaining schedule is recomputed.
    pub prepaid: i64,
    /// Paid beyond the payoff (the loan is settled): owed back to the borrower.
    pub overpaid: i64,
    /// The loan's running totals after this repayment.
    pub after: Paid,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaterfallError {
    #[error("amount must be positive")]
    NotPositive,
    #[error("the amounts owed on this loan overflow")]
    Overflow,
    /// More than the payoff on the value date plus the overpayment
    /// tolerance: refused, never booked ([`repay_within`]).
    #[error("amount is more than {most}: the payoff on the value date is {payoff}")]
    AbovePayoff { payoff: i64, most: i64 },
}

/// What a loan owes on the date it is accrued to: penalty due, the fees
/// and interest accrued and not paid, the principal due, and the principal
/// not yet due (which can only be prepaid).
fn owed(loan: &LoanState) -> Result<i64, WaterfallError> {
    let penalty_due = (loan.accrued.penalty - loan.paid.penalty).max(0);
    let per = loan.insts.iter().map(|s| {
        (s.fee_accrued - s.fee_paid).max(0)
            + (s.interest_accrued - s.interest_paid).max(0)
            + (s.inst.principal - s.principal_paid)
    });
    colend_core::money::checked_sum(std::iter::once(penalty_due).chain(per))
        .map_err(|_| WaterfallError::Overflow)
}

/// The most a repayment on `value_date` pays on `loan` before it is an
/// overpayment (the payoff): the loan is accrued to that date first. Only
/// the interest and fee accrued to the value date are owed on the current
/// period, never the whole period's.
pub fn payoff(loan: &LoanState, value_date: NaiveDate) -> Result<i64, WaterfallError> {
    owed(&loan.with_accrual(&accrue_to(loan, value_date)))
}

/// Allocates a repayment on a loan accrued to `value_date` by its
/// waterfall, instalment by instalment oldest first: of an instalment due by
/// then, what is unpaid; of the current period's, the interest and fee
/// accrued and not paid (its principal is not due). What is left prepays
/// principal; beyond the payoff it is an overpayment. Then splits each
/// component between the funders on running totals.
pub fn allocate(
    loan: &LoanState,
    amount: i64,
    value_date: NaiveDate,
) -> Result<Allocation, WaterfallError> {
    if amount <= 0 {
        return Err(WaterfallError::NotPositive);
    }
    let outstanding = owed(loan)?;
    let overpaid = (amount - outstanding).max(0);
    let mut left = amount - overpaid;
    let penalty_due = (loan.accrued.penalty - loan.paid.penalty).max(0);
    let waterfall = loan.waterfall;
    let mut penalty = 0;
    let penalty_first = waterfall.0[0] == Bucket::Penalty;
    if penalty_first {
        penalty = left.min(penalty_due);
        left -= penalty;
    }
    let (mut fee, mut interest, mut principal) = (0, 0, 0);
    let mut touched = Vec::new();
    for s in &loan.insts {
        let mut pay = Paying {
            seq: s.inst.seq,
            ..Default::default()
        };
        let principal_owed = if s.principal_payable(value_date) {
            s.inst.principal - s.principal_paid
        } else {
            0
        };
        for b in waterfall.0 {
            let (slot, owed) = match b {
                Bucket::Fee => (&mut pay.fee, (s.fee_accrued - s.fee_paid).max(0)),
                Bucket::Interest => (
                    &mut pay.interest,
                    (s.interest_accrued - s.interest_paid).max(0),
                ),
                Bucket::Principal => (&mut pay.principal, principal_owed),
                Bucket::Penalty => continue,
            };
            *slot = left.min(owed);
            left -= *slot;
        }
        if pay.principal > 0 || pay.interest > 0 || pay.fee > 0 {
            principal += pay.principal;
            interest += pay.interest;
            fee += pay.fee;
            touched.push(pay);
        }
    }
    if !penalty_first {
        let pen = left.min(penalty_due);
        penalty += pen;
        left -= pen;
    }
    // Everything owed now is paid: the rest is principal not yet due.
    let prepaid = left;
    principal += prepaid;
    let split = loan.split;
    let paid = &loan.paid;
    let mut after = paid.clone();
    after.principal += principal;
    after.interest += interest;
    after.fee += fee;
    after.penalty += penalty;
    after.partner_principal = partner_principal_part(after.principal, split);
    after.partner_penalty = partner_principal_part(after.penalty, split);
    after.partner_interest = loan.partner_interest_paid(after.interest);
    after.partner_fee = partner_fee_part(after.fee, &loan.terms);
    let partner_over = partner_principal_part(loan.overpaid + overpaid, split)
        - partner_principal_part(loan.overpaid, split);
    let partner = Parts {
        penalty: after.partner_penalty - paid.partner_penalty,
        fee: after.partner_fee - paid.partner_fee,
        interest: after.partner_interest - paid.partner_interest,
        principal: after.partner_principal - paid.partner_principal,
        overpayment: partner_over,
    };
    let bank = Parts {
        penalty: penalty - partner.penalty,
        fee: fee - partner.fee,
        interest: interest - partner.interest,
        principal: principal - partner.principal,
        overpayment: overpaid - partner.overpayment,
    };
    Ok(Allocation {
        bank,
        partner,
        instalments: touched,
        prepaid,
        overpaid,
        after,
    })
}

/// Applies an allocation to a loan accrued to `value_date`. After a
/// prepayment the principal not yet due is re-cut from the value date: the
/// current instalment keeps the interest and fee accrued so far and adds
/// those of the new balance from the value date to its due date; it and the
/// later instalments are recomputed on the new balance, over the same due
/// dates with the same method. A payoff leaves the current instalment with
/// what accrued on it and no later ones. Each instalment the allocation pays
/// starts a new overdue segment on the value date (its penalty then accrues
/// on what is left unpaid of it).
pub fn apply(loan: &LoanState, a: &Allocation, value_date: NaiveDate) -> LoanState {
    let mut next = loan.clone();
    for pay in &a.instalments {
        if let Some(s) = next.insts.iter_mut().find(|s| s.inst.seq == pay.seq) {
            s.principal_paid += pay.principal;
            s.interest_paid += pay.interest;
            s.fee_paid += pay.fee;
            // What is unpaid of it changed: a new overdue segment.
            s.penalty = PenaltySegment {
                from: Some(value_date),
                accrued: 0,
            };
        }
    }
    next.paid = a.after.clone();
    next.overpaid += a.overpaid;
    if a.prepaid == 0 {
        return next;
    }
    let Some(c) = next
        .insts
        .iter()
        .position(|s| !s.principal_payable(value_date))
    else {
        return next;
    };
    let cur = next.insts[c].clone();
    let from = value_date.max(next.period_start(c));
    let not_due: i64 = next.insts[c..]
        .iter()
        .map(|s| s.inst.principal - s.principal_paid)
        .sum();
    let remaining = (not_due - a.prepaid).max(0);
    // The current segment ends at `from`: what accrued in it stays.
    let mut segment = Segment {
        from: Some(from),
        balance: Some(remaining),
        interest_before: cur.interest_accrued,
        fee_before: cur.fee_accrued,
        bank_own_before: cur.segment.bank_own_before,
        partner_own_before: cur.segment.partner_own_before,
    };
    if next.terms.interest_split == InterestSplit::OwnRate {
        let own = next.own_between(c, next.segment_from(c), from);
        segment.bank_own_before += own.bank;
        segment.partner_own_before += own.partner;
    }
    let dues: Vec<NaiveDate> = next.insts[c..].iter().map(|s| s.inst.due).collect();
    let fresh = if remaining > 0 {
        schedule_from(
            remaining,
            from,
            &dues,
            cur.inst.seq,
            next.price,
            next.method,
            next.day_count,
        )
    } else {
        Vec::new()
    };
    let mut first = fresh.first().cloned().unwrap_or(Instalment {
        seq: cur.inst.seq,
        due: cur.inst.due,
        principal: 0,
        interest: 0,
        fee: 0,
    });
    first.interest += segment.interest_before;
    first.fee += segment.fee_before;
    let mut recut = vec![InstalmentState {
        inst: first,
        principal_paid: 0,
        interest_paid: cur.interest_paid,
        fee_paid: cur.fee_paid,
        interest_accrued: cur.interest_accrued,
        fee_accrued: cur.fee_accrued,
        segment,
        // Not due yet: no penalty has accrued on it.
        penalty: PenaltySegment::default(),
        accrued_in_full: false,
    }];
    let mut balance = remaining;
    for (k, inst) in fresh.into_iter().enumerate() {
        if k > 0 {
            let mut s = InstalmentState::new(inst);
            s.segment.balance = Some(balance);
            balance -= s.inst.principal;
            recut.push(s);
        } else {
            balance -= inst.principal;
        }
    }
    next.insts.truncate(c);
    next.insts.extend(recut);
    next
}

/// A repayment booked on a loan: the accrual to its value date, how the
/// amount is allocated, and the loan after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booking {
    pub accrual: Accrual,
    pub allocation: Allocation,
    pub after: LoanState,
}

/// The earliest value date a repayment on `loan` may carry: accrual and
/// penalty run forward only, so never before the date its interest and fees
/// are accrued through, nor the date its penalty is accrued through (an
/// end-of-day accrual moves both), nor `last_repayment` (the latest value
/// date of a repayment booked on it). An earlier value date is refused
/// (BACK_VALUED): nothing already accrued is re-run.
pub fn earliest_value_date(loan: &LoanState, last_repayment: Option<NaiveDate>) -> NaiveDate {
    let accrued = loan.accrued_through.max(loan.penalty_through);
    last_repayment.map_or(accrued, |last| last.max(accrued))
}

/// The most a repayment may bring on a loan whose payoff is `payoff`: the
/// payoff plus `tolerance_bps` of it, rounded down to the minor unit. Up to
/// that, what a repayment brings beyond the payoff settles the loan and is
/// owed back to the borrower (a payoff with a day's interest too many);
/// beyond it the amount is taken for a mistake (an amount keyed with extra
/// zeros) and refused. `None` when it does not fit in an `i64`.
pub fn most_repayable(payoff: i64, tolerance_bps: i64) -> Option<i64> {
    payoff.checked_add(mul_div_floor(payoff, tolerance_bps, BPS_ONE).ok()?)
}

/// Books a repayment of `amount` on `value_date`: accrues the loan to the
/// value date, allocates the amount by the waterfall and applies it (a
/// prepayment re-cuts the schedule). Any amount beyond the payoff is an
/// overpayment; [`repay_within`] bounds it. The caller refuses value dates
/// before the disbursement or [`earliest_value_date`]; an accrual never
/// goes back.
pub fn repay(
    loan: &LoanState,
    amount: i64,
    value_date: NaiveDate,
) -> Result<Booking, WaterfallError> {
    let accrual = accrue_to(loan, value_date);
    let accrued = loan.with_accrual(&accrual);
    book(accrual, &accrued, amount, value_date)
}

/// [`repay`], refusing an amount above [`most_repayable`] of the payoff on
/// the value date ([`WaterfallError::AbovePayoff`], which names both).
pub fn repay_within(
    loan: &LoanState,
    amount: i64,
    value_date: NaiveDate,
    tolerance_bps: i64,
) -> Result<Booking, WaterfallError> {
    let accrual = accrue_to(loan, value_date);
    let accrued = loan.with_accrual(&accrual);
    let payoff = owed(&accrued)?;
    let most = most_repayable(payoff, tolerance_bps).ok_or(WaterfallError::Overflow)?;
    if amount > most {
        return Err(WaterfallError::AbovePayoff { payoff, most });
    }
    book(accrual, &accrued, amount, value_date)
}

/// Allocates and applies `amount` on a loan `accrued` to `value_date` by `accrual`.
fn book(
    accrual: Accrual,
    accrued: &LoanState,
    amount: i64,
    value_date: NaiveDate,
) -> Result<Booking, WaterfallError> {
    let allocation = allocate(accrued, amount, value_date)?;
    let after = apply(accrued, &allocation, value_date);
    Ok(Booking {
        accrual,
        allocation,
        after,
    })
}

/// `amounts` added one after the other to a running total from `start`:
/// the partner's part of each, taken on the running total by `part`.
fn running_parts(start: i64, amounts: &[i64], part: impl Fn(i64) -> i64) -> Vec<i64> {
    let mut total = start;
    let mut before = part(start);
    amounts
        .iter()
        .map(|a| {
            total += a;
            let now = part(total);
            let d = now - before;
            before = now;
            d
        })
        .collect()
}

/// The partner's part of each line: what was paid on the lines first (on
/// the running total from `paid_outside`, what was paid off the lines), then
/// what the lines still owe, so the parts of what is unpaid are exactly
/// what the allocator will give the partner when the lines are paid.
fn line_parts(
    paid_outside: i64,
    paid: &[i64],
    unpaid: &[i64],
    part: impl Fn(i64) -> i64,
) -> Vec<i64> {
    let on_paid = running_parts(paid_outside, paid, &part);
    let start = paid_outside + paid.iter().sum::<i64>();
    let on_unpaid = running_parts(start, unpaid, &part);
    on_paid.iter().zip(&on_unpaid).map(|(a, b)| a + b).collect()
}

/// Each funder's schedule: (bank, partner). Line by line the two sum to the
/// borrower's instalment. Principal: what each funder got and will get on
/// each line by principal share; the partner's principal still owed on the
/// lines sums to its outstanding principal (a prepayment off the lines
/// included). Fees by the agreement's fee split. Interest by the loan's
/// split: pro rata (or rate-weighted) on the running total; OWN_RATE each
/// funder's own-rate interest on its part of each segment's balance, and
/// the residual to the residual party, which is what the accruals of that
/// instalment give each funder.
pub fn funder_schedules(loan: &LoanState) -> (Vec<FunderLine>, Vec<FunderLine>) {
    let insts = &loan.insts;
    let col = |f: fn(&InstalmentState) -> i64| insts.iter().map(f).collect::<Vec<i64>>();
    let split = loan.split;
    let paid_principal = col(|s| s.principal_paid);
    let outside = (loan.paid.principal - paid_principal.iter().sum::<i64>()).max(0);
    let principal = line_parts(
        outside,
        &paid_principal,
        &col(|s| s.inst.principal - s.principal_paid),
        |t| partner_principal_part(t, split),
    );
    let fee = line_parts(
        0,
        &col(|s| s.fee_paid),
        &col(|s| s.inst.fee - s.fee_paid),
        |t| partner_fee_part(t, &loan.terms),
    );
    let interest = match loan.terms.interest_split {
        InterestSplit::OwnRate => (0..insts.len())
            .map(|k| {
                let s = &insts[k];
                let own = loan.own_between(k, loan.segment_from(k), s.inst.due);
                match loan.terms.residual_party {
                    Party::Bank => s.segment.partner_own_before + own.partner,
                    Party::Partner => s.inst.interest - (s.segment.bank_own_before + own.bank),
                }
            })
            .collect(),
        _ => line_parts(
            0,
            &col(|s| s.interest_paid),
            &col(|s| s.inst.interest - s.interest_paid),
            |t| loan.partner_interest_paid(t),
        ),
    };
    let mut bank = Vec::with_capacity(insts.len());
    let mut partner = Vec::with_capacity(insts.len());
    for (k, s) in insts.iter().enumerate() {
        let p = FunderLine {
            seq: s.inst.seq,
            principal: principal[k],
            interest: interest[k],
            fee: fee[k],
        };
        bank.push(FunderLine {
            seq: s.inst.seq,
            principal: s.inst.principal - p.principal,
            interest: s.inst.interest - p.interest,
            fee: s.inst.fee - p.fee,
        });
        partner.push(p);
    }
    (bank, partner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MAX_PRINCIPAL, testing};
    use proptest::prelude::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn px(rate_bps: i64) -> Pricing {
        Pricing {
            rate_bps,
            fee_bps: 100,
        }
    }

    fn state(s: Vec<Instalment>) -> Vec<InstalmentState> {
        s.into_iter().map(InstalmentState::new).collect()
    }

    fn terms() -> Terms {
        Terms {
            partner_share_bps: 3_000,
            bank_rate_bps: 1_000,
            partner_rate_bps: 1_800,
            fee_partner_bps: 4_000,
            ..Default::default()
        }
    }

    #[test]
    fn day_count_changes_interest() {
        // 1,000,000.00 at 12% for 31 days.
        assert_eq!(
            interest(100_000_000, 1_200, 31, DayCount::Act360),
            1_033_333
        );
        assert_eq!(
            interest(100_000_000, 1_200, 31, DayCount::Act365),
            1_019_178
        );
    }

    #[test]
    fn due_dates_keep_month_ends() {
        let v = due_dates(d(2026, 1, 31), 1, 3);
        assert_eq!(v, vec![d(2026, 2, 28), d(2026, 3, 31), d(2026, 4, 30)]);
    }

    #[test]
    fn equal_instalment_is_level_to_the_cent_or_so() {
        let s = schedule(
            12_000_000,
            12,
            px(1_200),
            Method::EqualInstalment,
            d(2026, 1, 15),
            DayCount::Act365,
        );
        assert_eq!(s.iter().map(|i| i.principal).sum::<i64>(), 12_000_000);
        let totals: Vec<i64> = s.iter().map(|i| i.principal + i.interest).collect();
        let level = totals[0];
        // Interest follows actual days, so months of 28 to 31 days move the
        // principal part, not the payment.
        assert!(totals[..11].iter().all(|t| *t == level));
        assert!((totals[11] - level).abs() < 100, "{totals:?}");
    }

    #[test]
    fn equal_principal_and_interest_first() {
        let s = schedule(
            1_000_003,
            3,
            px(1_200),
            Method::EqualPrincipal,
            d(2026, 1, 1),
            DayCount::Act360,
        );
        assert_eq!(
            s.iter().map(|i| i.principal).collect::<Vec<_>>(),
            vec![333_335, 333_334, 333_334]
        );
        // January has 31 days: 1,000,003 × 12% × 31 / 360.
        assert_eq!(
            s[0].interest,
            interest(1_000_003, 1_200, 31, DayCount::Act360)
        );
        let b = schedule(
            1_000_000,
            6,
            px(1_200),
            Method::InterestFirst,
            d(2026, 1, 1),
            DayCount::Act360,
        );
        assert_eq!(b.iter().map(|i| i.principal).sum::<i64>(), 1_000_000);
        assert!(b[..5].iter().all(|i| i.principal == 0 && i.interest > 0));
    }

    fn a_loan(principal: i64, n: i32, price: Pricing, m: Method, start: NaiveDate) -> LoanState {
        testing::loan(
            principal,
            n,
            price,
            m,
            start,
            DayCount::Act360,
            3_000,
            terms(),
        )
    }

    #[test]
    fn waterfall_pays_fee_and_interest_before_principal_and_splits_pro_rata() {
        let loan = a_loan(
            1_000_000,
            2,
            px(1_200),
            Method::EqualPrincipal,
            d(2026, 1, 1),
        );
        let b = repay(&loan, 5_000, d(2026, 2, 1)).unwrap();
        let a = &b.allocation;
        // The first instalment is due: its fee and interest accrued in full.
        let (i1, f1) = (loan.insts[0].inst.interest, loan.insts[0].inst.fee);
        assert_eq!((i1, f1), (10_333, 861));
        assert_eq!(b.accrual.interest.total(), i1);
        assert_eq!(a.bank.fee + a.partner.fee, f1);
        assert_eq!(a.partner.fee, f1 * 4_000 / 10_000);
        assert_eq!(a.bank.principal + a.partner.principal, 0);
        assert_eq!(a.bank.interest + a.partner.interest, 5_000 - f1);
        // Pro rata: 300,000 of 1,000,000 (floor of the running total).
        assert_eq!(a.partner.interest, (5_000 - f1) * 3 / 10);
    }

    #[test]
    fn principal_first_waterfall() {
        let mut loan = a_loan(
            1_000_000,
            2,
            px(1_200),
            Method::EqualPrincipal,
            d(2026, 1, 1),
        );
        loan.waterfall = Waterfall::parse("PRINCIPAL,INTEREST,PENALTY").unwrap();
        let b = repay(&loan, 600_000, d(2026, 2, 1)).unwrap();
        let a = &b.allocation;
        // Principal, fee, then interest of the instalment due; the current
        // one has accrued nothing on its first day and its principal is not
        // due: the rest prepays principal. The penalty comes last.
        let (i1, f1) = (loan.insts[0].inst.interest, loan.insts[0].inst.fee);
        assert_eq!(
            a.instalments,
            vec![Paying {
                seq: 1,
                principal: 500_000,
                interest: i1,
                fee: f1
            }]
        );
        assert_eq!(a.prepaid, 100_000 - i1 - f1);
        assert_eq!(a.bank.penalty + a.partner.penalty, 0);
        assert!(Waterfall::parse("PENALTY,PENALTY,INTEREST").is_none());
    }

    /// Penalty accrues on what is overdue of each instalment, rounded once
    /// over its overdue segment however often it is accrued: 5,111.94
    /// unpaid at 18% ACT/360 is 2.55597 a day, 25.56 over ten days (rounded
    /// day by day it would be 25.60).
    #[test]
    fn overdue_amounts_accrue_penalty_by_day() {
        let mut s = state(schedule(
            1_000_000,
            2,
            px(1_200),
            Method::EqualPrincipal,
            d(2026, 1, 1),
            DayCount::Act360,
        ));
        // 5,000.00 of principal, 103.33 of interest, 8.61 of fee.
        assert_eq!(s[0].unpaid(), 511_194);
        let (bps, dc) = (1_800, DayCount::Act360);
        // Due on 2026-02-01: nothing accrues on its due date.
        assert_eq!(penalty_accrual(&s, d(2026, 2, 1), bps, dc), vec![0, 0]);
        // Ten days late on 2026-02-11.
        assert_eq!(penalty_accrual(&s, d(2026, 2, 11), bps, dc), vec![2_556, 0]);
        // Day by day: 2.56 or 2.55 a day, 25.56 in all.
        let mut daily = Vec::new();
        for day in 2..=11 {
            let add = penalty_accrual(&s, d(2026, 2, day), bps, dc);
            s[0].penalty.accrued += add[0];
            daily.push(add[0]);
        }
        assert_eq!(
            daily,
            vec![256, 255, 256, 255, 256, 256, 255, 256, 255, 256]
        );
        // Nothing accrues again for days already accrued.
        assert_eq!(penalty_accrual(&s, d(2026, 2, 11), bps, dc), vec![0, 0]);
        // 1,000.00 repaid on the 11th: a new segment on the 4,111.94 left,
        // 2.05597 a day; five days are 10.27985, 10.28.
        s[0].principal_paid += 100_000;
        s[0].penalty = PenaltySegment {
            from: Some(d(2026, 2, 11)),
            accrued: 0,
        };
        assert_eq!(s[0].penalty_from(), d(2026, 2, 11));
        assert_eq!(penalty_accrual(&s, d(2026, 2, 16), bps, dc), vec![1_028, 0]);
        // A segment begun before the due date starts on the due date.
        s[1].penalty.from = Some(d(2026, 2, 11));
        assert_eq!(s[1].penalty_from(), s[1].inst.due);
    }

    /// The first issue: 100,000.00 at 6.54% + 1% fee, ACT/360, repaid the day
    /// after its disbursement.
    #[test]
    fn an_early_payoff_pays_one_day_not_the_period() {
        let price = Pricing {
            rate_bps: 654,
            fee_bps: 100,
        };
        let loan = a_loan(
            10_000_000,
            12,
            price,
            Method::EqualInstalment,
            d(2026, 1, 10),
        );
        // What the whole first period (31 days) charges, and what paying it
        // off after a day used to cost: 563.17 interest and 86.11 fee.
        assert_eq!(
            (loan.insts[0].inst.interest, loan.insts[0].inst.fee),
            (56_317, 8_611)
        );
        // One day: 100,000.00 × 6.54% / 360 = 18.17, × 1% / 360 = 2.78.
        let day = d(2026, 1, 11);
        let owed = payoff(&loan, day).unwrap();
        assert_eq!(owed, 10_000_000 + 1_817 + 278);
        let b = repay(&loan, owed, day).unwrap();
        assert_eq!(
            (b.accrual.interest.total(), b.accrual.fee.total()),
            (1_817, 278)
        );
        let a = &b.allocation;
        let total = |f: fn(&Parts) -> i64| f(&a.bank) + f(&a.partner);
        assert_eq!(total(|p| p.interest), 1_817);
        assert_eq!(total(|p| p.fee), 278);
        assert_eq!(total(|p| p.principal), 10_000_000);
        assert_eq!(a.overpaid, 0);
        assert!(b.after.is_settled());
        // The payoff leaves the current instalment with its one day of
        // interest and fee, and no later ones.
        assert_eq!(b.after.insts.len(), 1);
        assert_eq!(
            (
                b.after.insts[0].inst.principal,
                b.after.insts[0].inst.interest,
                b.after.insts[0].inst.fee
            ),
            (0, 1_817, 278)
        );
    }

    /// The first issue's payoff on the disbursement day: 100,000.00 at 6.67%
    /// plus a 1% fee, paid with principal and one day's interest and fee
    /// (100,000.00, 18.53 and 2.78). It used to be allocated the whole first
    /// period (574.36 interest, 86.11 fee) and leave 639.14 principal
    /// outstanding.
    #[test]
    fn a_payoff_on_the_disbursement_day_settles() {
        let price = Pricing {
            rate_bps: 667,
            fee_bps: 100,
        };
        let start = d(2026, 1, 10);
        let loan = a_loan(10_000_000, 12, price, Method::EqualInstalment, start);
        assert_eq!(
            (loan.insts[0].inst.interest, loan.insts[0].inst.fee),
            (57_436, 8_611)
        );
        let one_day = (
            interest(10_000_000, 667, 1, DayCount::Act360),
            interest(10_000_000, 100, 1, DayCount::Act360),
        );
        assert_eq!(one_day, (1_853, 278));
        let b = repay(&loan, 10_000_000 + one_day.0 + one_day.1, start).unwrap();
        let a = &b.allocation;
        // No day has passed: nothing accrued, the principal is the payoff and
        // the rest is owed back to the borrower.
        assert!(b.after.is_settled());
        assert_eq!(a.bank.interest + a.partner.interest, 0);
        assert_eq!(a.bank.fee + a.partner.fee, 0);
        assert_eq!(a.bank.principal + a.partner.principal, 10_000_000);
        assert_eq!(a.overpaid, 1_853 + 278);
        assert_eq!(a.bank.overpayment + a.partner.overpayment, 2_131);
        assert_eq!(a.partner.overpayment, 2_131 * 3 / 10);
        assert_eq!(b.after.overpaid, 2_131);
        // The same amount a day later: exactly one day's interest and fee.
        let b = repay(&loan, 10_000_000 + 2_131, d(2026, 1, 11)).unwrap();
        assert!(b.after.is_settled());
        let a = &b.allocation;
        assert_eq!(a.bank.interest + a.partner.interest, 1_853);
        assert_eq!(a.bank.fee + a.partner.fee, 278);
        assert_eq!(a.overpaid, 0);
    }

    /// An overpayment is bounded: up to the payoff plus the tolerance (10
    /// bps of it by default) it settles the loan and the excess is owed
    /// back; beyond it (an amount keyed with extra zeros, or near i64::MAX)
    /// it is refused, naming the payoff.
    #[test]
    fn an_overpayment_beyond_the_tolerance_is_refused() {
        let price = Pricing {
            rate_bps: 667,
            fee_bps: 100,
        };
        let start = d(2026, 1, 10);
        let loan = a_loan(10_000_000, 12, price, Method::EqualInstalment, start);
        let day = d(2026, 1, 11);
        let owed = payoff(&loan, day).unwrap();
        assert_eq!(owed, 10_000_000 + 1_853 + 278);
        // 10 bps of 100,021.31 is 100.0213: 100.02.
        let most = most_repayable(owed, 10).unwrap();
        assert_eq!(most, owed + 10_002);
        for too_much in [most + 1, owed * 1_000, i64::MAX] {
            assert_eq!(
                repay_within(&loan, too_much, day, 10),
                Err(WaterfallError::AbovePayoff { payoff: owed, most })
            );
        }
        let b = repay_within(&loan, most, day, 10).unwrap();
        assert!(b.after.is_settled());
        assert_eq!(b.allocation.overpaid, 10_002);
        // The payoff on the disbursement day with a day's interest and fee
        // too many is within the tolerance: settled, the excess owed back.
        let b = repay_within(&loan, 10_000_000 + 2_131, start, 10).unwrap();
        assert!(b.after.is_settled());
        assert_eq!(b.allocation.overpaid, 2_131);
        // A tolerance of zero: the payoff exactly, and not a cent more.
        assert!(repay_within(&loan, owed, day, 0).is_ok());
        assert!(repay_within(&loan, owed + 1, day, 0).is_err());
        // Partial payments are untouched by it.
        assert!(repay_within(&loan, 100, day, 0).is_ok());
        assert_eq!(most_repayable(i64::MAX, 10), None);
    }

    /// The earliest value date is the latest of the last repayment and the
    /// dates interest, fees and penalty are accrued through.
    #[test]
    fn the_earliest_value_date_is_what_was_accrued_or_repaid_last() {
        let mut loan = a_loan(
            1_000_000,
            3,
            px(1_200),
            Method::EqualPrincipal,
            d(2026, 1, 1),
        );
        assert_eq!(earliest_value_date(&loan, None), d(2026, 1, 1));
        assert_eq!(
            earliest_value_date(&loan, Some(d(2026, 1, 5))),
            d(2026, 1, 5)
        );
        // An end-of-day accrual through the 10th: a repayment valued the 9th
        // would be allocated against interest accrued for days after it.
        loan = loan.with_accrual(&accrue_to(&loan, d(2026, 1, 10)));
        assert_eq!(
            earliest_value_date(&loan, Some(d(2026, 1, 5))),
            d(2026, 1, 10)
        );
        loan.penalty_through = d(2026, 1, 12);
        assert_eq!(
            earliest_value_date(&loan, Some(d(2026, 1, 5))),
            d(2026, 1, 12)
        );
        assert_eq!(
            earliest_value_date(&loan, Some(d(2026, 1, 20))),
            d(2026, 1, 20)
        );
    }

    /// At the largest principal ReserveFunding accepts, the contract's
    /// highest rate and fee and its longest term, every schedule still sums
    /// exactly (overflow panics in tests, so none happens on the way).
    #[test]
    fn schedules_at_the_ceiling_do_not_overflow() {
        let price = Pricing {
            rate_bps: 10_000,
            fee_bps: 10_000,
        };
        for m in [
            Method::EqualInstalment,
            Method::EqualPrincipal,
            Method::InterestFirst,
        ] {
            for dc in [DayCount::Act360, DayCount::Act365] {
                let s = schedule(MAX_PRINCIPAL, 360, price, m, d(2026, 1, 31), dc);
                assert_eq!(s.iter().map(|i| i.principal).sum::<i64>(), MAX_PRINCIPAL);
                // The principal plus 30 years of 100% interest and 100% fee
                // at most (365/360 of it on ACT/360).
                let totals: i64 = s.iter().map(Instalment::total).sum();
                assert!(totals <= 62 * MAX_PRINCIPAL, "{m:?} {dc:?} {totals}");
            }
        }
    }

    /// A prepayment stops bearing interest on its value date: the current
    /// instalment keeps what accrued on the old balance and adds interest on
    /// the new balance to its due date.
    #[test]
    fn a_prepayment_recuts_the_current_instalment_from_its_value_date() {
        let price = Pricing {
            rate_bps: 654,
            fee_bps: 100,
        };
        let loan = a_loan(
            10_000_000,
            12,
            price,
            Method::EqualInstalment,
            d(2026, 1, 10),
        );
        // Ten days in: 181.67 interest and 27.78 fee accrued; 50,000.00 prepaid.
        let day = d(2026, 1, 20);
        let b = repay(&loan, 18_167 + 2_778 + 5_000_000, day).unwrap();
        assert_eq!(b.accrual.interest.total(), 18_167);
        assert_eq!(b.accrual.fee.total(), 2_778);
        assert_eq!(b.allocation.prepaid, 5_000_000);
        let first = &b.after.insts[0];
        // 21 days on 50,000.00: 190.75 interest, 29.17 fee.
        assert_eq!(first.inst.interest, 18_167 + 19_075);
        assert_eq!(first.inst.fee, 2_778 + 2_917);
        assert_eq!((first.interest_paid, first.fee_paid), (18_167, 2_778));
        assert_eq!(first.segment.from, Some(day));
        assert_eq!(b.after.insts.len(), 12);
        assert_eq!(
            b.after.insts.iter().map(|s| s.inst.principal).sum::<i64>(),
            5_000_000
        );
        assert_eq!(b.after.insts[11].inst.due, loan.insts[11].inst.due);
        // On the due date the instalment's interest has accrued exactly.
        let due = first.inst.due;
        let a = accrue_to(&b.after, due);
        assert_eq!(a.interest.total(), 19_075);
        assert_eq!(a.fee.total(), 2_917);
    }

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::EqualInstalment),
            Just(Method::EqualPrincipal),
            Just(Method::InterestFirst)
        ]
    }

    fn dc() -> impl Strategy<Value = DayCount> {
        prop_oneof![Just(DayCount::Act360), Just(DayCount::Act365)]
    }

    fn interest_split() -> impl Strategy<Value = (InterestSplit, Party)> {
        prop_oneof![
            Just((InterestSplit::ProRata, Party::Bank)),
            Just((InterestSplit::OwnRate, Party::Bank)),
            Just((InterestSplit::OwnRate, Party::Partner)),
        ]
    }

    proptest! {
        #[test]
        fn schedules_sum_exactly(p in 1i64..10_000_000_000, n in 1i32..=60, bps in 0i64..3_600, m in method(), dc in dc()) {
            let s = schedule(p, n, px(bps), m, d(2026, 3, 31), dc);
            prop_assert_eq!(s.len(), n as usize);
            prop_assert_eq!(s.iter().map(|i| i.principal).sum::<i64>(), p);
            prop_assert!(s.iter().all(|i| i.principal >= 0 && i.interest >= 0));
        }

        /// Any sequence of repayments on any dates allocates every cent
        /// once, pays no instalment more than accrued on it, and ends with
        /// each funder's principal back.
        #[test]
        fn any_repayment_sequence_allocates_every_cent_once(
            p in 100i64..1_000_000_000, n in 1i32..=24, bps in 0i64..3_600, m in method(),
            share in 3_000i64..9_999, br in 0i64..3_000, pr in 0i64..3_000, (split_kind, residual) in interest_split(),
            cuts in proptest::collection::vec((1i64..1_000_000_000, 0i64..90), 1..12),
            penalty_first in proptest::bool::ANY,
        ) {
            let start = d(2026, 1, 15);
            let t = Terms { partner_share_bps: share, bank_rate_bps: br, partner_rate_bps: pr, fee_partner_bps: 4_000,
                            interest_split: split_kind, residual_party: residual, allow_negative_residual: true };
            let mut loan = testing::loan(p, n, px(bps), m, start, DayCount::Act360, share, t);
            loan.penalty_rate_bps = 1_800;
            loan.waterfall = if penalty_first { Waterfall::default() } else { Waterfall::parse("INTEREST,PRINCIPAL,PENALTY").unwrap() };
            let sp = loan.split;
            let (mut bank_p, mut partner_p) = (0, 0);
            let mut day = start;
            for (cut, step) in cuts.iter().map(|(c, s)| (*c, *s)).chain(std::iter::once((i64::MAX, 400))) {
                day = day.checked_add_days(chrono::Days::new(step as u64)).unwrap();
                let most = payoff(&loan, day).unwrap();
                let amount = cut.min(most);
                if amount <= 0 { break; }
                let b = repay(&loan, amount, day).unwrap();
                let a = &b.allocation;
                prop_assert_eq!(a.bank.total() + a.partner.total(), amount);
                prop_assert_eq!(a.overpaid, 0);
                prop_assert!(a.bank.principal >= 0 && a.partner.principal >= 0);
                prop_assert!(a.bank.penalty >= 0 && a.partner.penalty >= 0);
                prop_assert!(a.bank.fee >= 0 && a.partner.fee >= 0);
                if split_kind == InterestSplit::ProRata {
                    prop_assert!(a.bank.interest >= 0 && a.partner.interest >= 0);
                }
                bank_p += a.bank.principal;
                partner_p += a.partner.principal;
                loan = b.after;
                prop_assert!(loan.insts.iter().all(|x| x.principal_paid <= x.inst.principal
                    && x.interest_paid <= x.interest_accrued && x.interest_accrued <= x.inst.interest
                    && x.fee_paid <= x.fee_accrued && x.fee_accrued <= x.inst.fee));
            }
            // Paid off: each funder got exactly its principal back.
            prop_assert!(loan.is_settled());
            prop_assert_eq!(loan.paid.principal, p);
            prop_assert_eq!(bank_p, sp.bank);
            prop_assert_eq!(partner_p, sp.partner);
            // Every cent of interest and fee accrued was paid, to each funder.
            prop_assert_eq!(loan.paid.interest, loan.accrued.interest);
            prop_assert_eq!(loan.paid.partner_interest, loan.accrued.partner_interest);
            prop_assert_eq!(loan.paid.partner_fee, loan.accrued.partner_fee);
        }

        /// After any prepayments each funder's schedule sums line by line to
        /// the borrower's, and before any instalment is paid each funder's
        /// principal on it sums to that funder's outstanding principal.
        #[test]
        fn funder_schedules_sum_line_by_line_after_prepayments(
            p in 100_000i64..1_000_000_000, n in 1i32..=36, bps in 0i64..3_600, m in method(),
            share in 3_000i64..9_999, br in 0i64..3_000, pr in 0i64..3_000, (split_kind, residual) in interest_split(),
            prepay in proptest::collection::vec((1i64..1_000, 0i64..10), 0..4),
            later in proptest::collection::vec((1i64..1_000, 1i64..70), 0..6),
        ) {
            let start = d(2026, 1, 31);
            let t = Terms { partner_share_bps: share, bank_rate_bps: br, partner_rate_bps: pr, fee_partner_bps: 4_000,
                            interest_split: split_kind, residual_party: residual, allow_negative_residual: true };
            let mut loan = testing::loan(p, n, px(bps), m, start, DayCount::Act360, share, t);
            let mut day = start;
            let check = |loan: &LoanState, before_any_due: bool| -> Result<(), TestCaseError> {
                let (b, q) = funder_schedules(loan);
                for ((i, x), y) in loan.insts.iter().zip(&b).zip(&q) {
                    prop_assert_eq!(x.principal + y.principal, i.inst.principal);
                    prop_assert_eq!(x.interest + y.interest, i.inst.interest);
                    prop_assert_eq!(x.fee + y.fee, i.inst.fee);
                    prop_assert!(x.principal >= 0 && y.principal >= 0 && x.fee >= 0 && y.fee >= 0);
                }
                if before_any_due {
                    let outstanding_partner = loan.split.partner - loan.paid.partner_principal;
                    let outstanding_bank = loan.split.bank - (loan.paid.principal - loan.paid.partner_principal);
                    prop_assert_eq!(q.iter().map(|x| x.principal).sum::<i64>(), outstanding_partner);
                    prop_assert_eq!(b.iter().map(|x| x.principal).sum::<i64>(), outstanding_bank);
                }
                Ok(())
            };
            check(&loan, true)?;
            // Prepayments inside the first period, then repayments on any date.
            for (per_mille, step) in prepay {
                day = day.checked_add_days(chrono::Days::new(step as u64)).unwrap();
                if day >= loan.insts[0].inst.due { break; }
                let amount = payoff(&loan, day).unwrap() * per_mille / 1_000;
                if amount <= 0 { continue; }
                loan = repay(&loan, amount, day).unwrap().after;
                check(&loan, true)?;
            }
            for (per_mille, step) in later {
                day = day.checked_add_days(chrono::Days::new(step as u64)).unwrap();
                let amount = payoff(&loan, day).unwrap() * per_mille / 1_000;
                if amount <= 0 { continue; }
                loan = repay(&loan, amount, day).unwrap().after;
                check(&loan, false)?;
            }
        }
    }
}
