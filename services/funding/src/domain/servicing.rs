//! Servicing: schedules, each funder's schedule, overdue penalty interest and
//! the repayment waterfall. Pure: no I/O. Every split is exact: a funder's
//! parts are taken on running totals (floor of the running total times its
//! weight), so rounding never drifts and each funder ends with exactly its
//! share.
use super::{Method, Split, Terms};
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
pub fn interest(balance: i64, annual_bps: i64, days: i64, dc: DayCount) -> i64 {
    mul_div_round(balance, annual_bps * days, BPS_ONE * dc.basis())
}

/// One instalment due.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
        mul_div_floor(total, split.partner, whole)
    }
}

/// The partner's part of a running total of interest: each funder earns its
/// own rate on its own principal (a blended borrower rate).
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
    mul_div_floor(total, terms.fee_partner_bps, BPS_ONE)
}

/// One funder's part of one instalment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunderLine {
    pub seq: i32,
    pub principal: i64,
    pub interest: i64,
    pub fee: i64,
}

/// Each funder's schedule: (bank, partner). Line by line the two sum to the
/// borrower's instalment; each funder's principal sums to its share.
pub fn funder_schedules(
    s: &[Instalment],
    split: Split,
    terms: &Terms,
) -> (Vec<FunderLine>, Vec<FunderLine>) {
    let (mut pc, mut ic, mut fc) = (0, 0, 0);
    let (mut partner_p, mut partner_i, mut partner_f) = (0, 0, 0);
    let mut bank = Vec::with_capacity(s.len());
    let mut partner = Vec::with_capacity(s.len());
    for i in s {
        pc += i.principal;
        ic += i.interest;
        fc += i.fee;
        let np = partner_principal_part(pc, split);
        let ni = partner_interest_part(ic, split, terms);
        let nf = partner_fee_part(fc, terms);
        let line = FunderLine {
            seq: i.seq,
            principal: np - partner_p,
            interest: ni - partner_i,
            fee: nf - partner_f,
        };
        (partner_p, partner_i, partner_f) = (np, ni, nf);
        bank.push(FunderLine {
            seq: i.seq,
            principal: i.principal - line.principal,
            interest: i.interest - line.interest,
            fee: i.fee - line.fee,
        });
        partner.push(line);
    }
    (bank, partner)
}

/// An instalment with what has been paid on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalmentState {
    pub inst: Instalment,
    pub principal_paid: i64,
    pub interest_paid: i64,
    pub fee_paid: i64,
}

impl InstalmentState {
    pub fn new(inst: Instalment) -> Self {
        InstalmentState {
            inst,
            principal_paid: 0,
            interest_paid: 0,
            fee_paid: 0,
        }
    }

    pub fn unpaid(&self) -> i64 {
        (self.inst.principal - self.principal_paid)
            + (self.inst.interest - self.interest_paid)
            + (self.inst.fee - self.fee_paid)
    }
}

/// Penalty interest accrued on overdue amounts from `from` (exclusive of
/// earlier accruals) to `to`, at `penalty_bps` a year: each instalment past
/// its due date accrues on what is still unpaid of it.
pub fn penalty_accrual(
    insts: &[InstalmentState],
    from: NaiveDate,
    to: NaiveDate,
    penalty_bps: i64,
    dc: DayCount,
) -> i64 {
    insts
        .iter()
        .filter(|s| s.inst.due < to && s.unpaid() > 0)
        .map(|s| {
            let start = s.inst.due.max(from);
            interest(s.unpaid(), penalty_bps, (to - start).num_days().max(0), dc)
        })
        .sum()
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

/// An accrual up to a value date, before a repayment is allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accrual {
    pub penalty: FunderAmounts,
    pub interest: FunderAmounts,
    pub fee: FunderAmounts,
    /// The instalments whose interest and fee were accrued now.
    pub newly: Vec<i32>,
    /// The loan's running totals afterwards.
    pub after: Accrued,
    /// Penalty interest is accrued up to this date afterwards (as before
    /// when nothing could accrue).
    pub penalty_through: Option<NaiveDate>,
}

/// The loan's terms an accrual needs.
#[derive(Clone, Copy, Debug)]
pub struct AccrualTerms<'a> {
    pub split: Split,
    pub terms: &'a Terms,
    pub penalty_rate_bps: i64,
    pub day_count: DayCount,
}

/// Accrues a loan up to `value_date`: penalty interest on overdue amounts
/// since `penalty_through` (none before it, nor when it is unset), then the
/// interest and fee of every instalment payable by then whose interest is
/// not accrued yet (`accrued[i]` for `insts[i]`). Each component is split
/// between the funders on its running total (principal shares for penalty,
/// each funder's rate for interest, the agreement's fee split for fees), so
/// the partner's running part never drifts from its share of the whole.
pub fn accrue(
    before: &Accrued,
    insts: &[InstalmentState],
    accrued: &[bool],
    penalty_through: Option<NaiveDate>,
    value_date: NaiveDate,
    t: AccrualTerms<'_>,
) -> Accrual {
    let mut after = before.clone();
    let mut out = Accrual {
        penalty: FunderAmounts::default(),
        interest: FunderAmounts::default(),
        fee: FunderAmounts::default(),
        newly: Vec::new(),
        after: before.clone(),
        penalty_through,
    };
    let through = penalty_through.unwrap_or(value_date);
    if value_date > through {
        let add = penalty_accrual(insts, through, value_date, t.penalty_rate_bps, t.day_count);
        if add > 0 {
            let total = after.penalty + add;
            let partner = partner_principal_part(total, t.split) - after.partner_penalty;
            out.penalty = FunderAmounts {
                bank: add - partner,
                partner,
            };
            after.penalty = total;
            after.partner_penalty += partner;
        }
        out.penalty_through = Some(value_date);
    }
    let due = payable(insts, value_date);
    let newly: Vec<&InstalmentState> = insts[..due]
        .iter()
        .zip(accrued)
        .filter(|(_, a)| !**a)
        .map(|(s, _)| s)
        .collect();
    let add: i64 = newly.iter().map(|s| s.inst.interest).sum();
    if add > 0 {
        let total = after.interest + add;
        let partner = partner_interest_part(total, t.split, t.terms) - after.partner_interest;
        out.interest = FunderAmounts {
            bank: add - partner,
            partner,
        };
        after.interest = total;
        after.partner_interest += partner;
    }
    let add_fee: i64 = newly.iter().map(|s| s.inst.fee).sum();
    if add_fee > 0 {
        let total = after.fee + add_fee;
        let partner = partner_fee_part(total, t.terms) - after.partner_fee;
        out.fee = FunderAmounts {
            bank: add_fee - partner,
            partner,
        };
        after.fee = total;
        after.partner_fee += partner;
    }
    out.newly = newly.iter().map(|s| s.inst.seq).collect();
    out.after = after;
    out
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
}

impl Parts {
    pub fn total(&self) -> i64 {
        self.penalty + self.fee + self.interest + self.principal
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
    /// The loan's running totals after this repayment.
    pub after: Paid,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaterfallError {
    #[error("amount must be positive")]
    NotPositive,
    #[error(
        "amount {amount} exceeds the {outstanding} that can be paid now (penalty, instalments payable, outstanding principal)"
    )]
    ExceedsOutstanding { amount: i64, outstanding: i64 },
}

/// Instalments payable on `value_date`: those due by then, and the current
/// period's (paying it early pays it, with its full interest and fee).
pub fn payable(insts: &[InstalmentState], value_date: NaiveDate) -> usize {
    let due = insts
        .iter()
        .take_while(|s| s.inst.due <= value_date)
        .count();
    (due + 1).min(insts.len())
}

/// The most that can be paid on `value_date`: penalty due, everything
/// payable, and the principal of later instalments (prepayment).
pub fn payoff(insts: &[InstalmentState], value_date: NaiveDate, penalty_due: i64) -> i64 {
    let k = payable(insts, value_date);
    penalty_due
        + insts[..k].iter().map(InstalmentState::unpaid).sum::<i64>()
        + insts[k..]
            .iter()
            .map(|s| s.inst.principal - s.principal_paid)
            .sum::<i64>()
}

/// Allocates a repayment by the waterfall, instalment by instalment oldest
/// first; what is left after everything payable prepays principal. Then
/// splits each component between the funders on running totals.
pub fn allocate(
    amount: i64,
    value_date: NaiveDate,
    insts: &[InstalmentState],
    (split, terms): (Split, &Terms),
    paid: &Paid,
    penalty_due: i64,
    waterfall: Waterfall,
) -> Result<Allocation, WaterfallError> {
    if amount <= 0 {
        return Err(WaterfallError::NotPositive);
    }
    let outstanding = payoff(insts, value_date, penalty_due);
    if amount > outstanding {
        return Err(WaterfallError::ExceedsOutstanding {
            amount,
            outstanding,
        });
    }
    let mut left = amount;
    let mut penalty = 0;
    let penalty_first = waterfall.0[0] == Bucket::Penalty;
    if penalty_first {
        penalty = left.min(penalty_due);
        left -= penalty;
    }
    let (mut fee, mut interest, mut principal) = (0, 0, 0);
    let mut touched = Vec::new();
    for s in &insts[..payable(insts, value_date)] {
        let mut pay = Paying {
            seq: s.inst.seq,
            ..Default::default()
        };
        for b in waterfall.0 {
            let (slot, owed) = match b {
                Bucket::Fee => (&mut pay.fee, s.inst.fee - s.fee_paid),
                Bucket::Interest => (&mut pay.interest, s.inst.interest - s.interest_paid),
                Bucket::Principal => (&mut pay.principal, s.inst.principal - s.principal_paid),
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
    let prepaid = left;
    principal += prepaid;
    let mut after = paid.clone();
    after.principal += principal;
    after.interest += interest;
    after.fee += fee;
    after.penalty += penalty;
    after.partner_principal = partner_principal_part(after.principal, split);
    after.partner_penalty = partner_principal_part(after.penalty, split);
    after.partner_interest = partner_interest_part(after.interest, split, terms);
    after.partner_fee = partner_fee_part(after.fee, terms);
    let partner = Parts {
        penalty: after.partner_penalty - paid.partner_penalty,
        fee: after.partner_fee - paid.partner_fee,
        interest: after.partner_interest - paid.partner_interest,
        principal: after.partner_principal - paid.partner_principal,
    };
    let bank = Parts {
        penalty: penalty - partner.penalty,
        fee: fee - partner.fee,
        interest: interest - partner.interest,
        principal: principal - partner.principal,
    };
    Ok(Allocation {
        bank,
        partner,
        instalments: touched,
        prepaid,
        after,
    })
}

/// Applies an allocation to the instalments; after a prepayment the
/// instalments not yet payable are recomputed on the lower balance, over the
/// same due dates and with the same method.
pub fn apply(
    insts: &[InstalmentState],
    a: &Allocation,
    value_date: NaiveDate,
    price: Pricing,
    method: Method,
    dc: DayCount,
) -> Vec<InstalmentState> {
    let mut out: Vec<InstalmentState> = insts.to_vec();
    for pay in &a.instalments {
        if let Some(s) = out.iter_mut().find(|s| s.inst.seq == pay.seq) {
            s.principal_paid += pay.principal;
            s.interest_paid += pay.interest;
            s.fee_paid += pay.fee;
        }
    }
    if a.prepaid == 0 {
        return out;
    }
    let k = payable(&out, value_date);
    let later = out.split_off(k);
    let remaining: i64 = later.iter().map(|s| s.inst.principal).sum::<i64>() - a.prepaid;
    let from = out.last().map(|s| s.inst.due).unwrap_or(value_date);
    let dues: Vec<NaiveDate> = later.iter().map(|s| s.inst.due).collect();
    let first_seq = later.first().map(|s| s.inst.seq).unwrap_or(1);
    if remaining > 0 {
        out.extend(
            schedule_from(remaining, from, &dues, first_seq, price, method, dc)
                .into_iter()
                .map(InstalmentState::new),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::split;
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

    #[test]
    fn waterfall_pays_interest_before_principal_and_splits_by_rate() {
        let s = state(schedule(
            1_000_000,
            2,
            px(1_200),
            Method::EqualPrincipal,
            d(2026, 1, 1),
            DayCount::Act360,
        ));
        let sp = super::super::split(1_000_000, 3_000);
        let a = allocate(
            5_000,
            d(2026, 2, 1),
            &s,
            (sp, &terms()),
            &Paid::default(),
            0,
            Waterfall::default(),
        )
        .unwrap();
        // Fees first, then interest; no principal yet.
        let fee = s[0].inst.fee;
        assert_eq!(a.bank.fee + a.partner.fee, fee);
        assert_eq!(a.partner.fee, fee * 4_000 / 10_000);
        assert_eq!(a.bank.principal + a.partner.principal, 0);
        assert_eq!(a.bank.interest + a.partner.interest, 5_000 - fee);
        // Interest weights: bank 700,000 × 1000, partner 300,000 × 1800.
        assert_eq!(a.partner.interest, (5_000 - fee) * 540 / 1240);
        let big = allocate(
            2_000_000,
            d(2026, 2, 1),
            &s,
            (sp, &terms()),
            &Paid::default(),
            0,
            Waterfall::default(),
        );
        assert!(matches!(
            big,
            Err(WaterfallError::ExceedsOutstanding { .. })
        ));
    }

    #[test]
    fn principal_first_waterfall() {
        let s = state(schedule(
            1_000_000,
            2,
            px(1_200),
            Method::EqualPrincipal,
            d(2026, 1, 1),
            DayCount::Act360,
        ));
        let sp = super::super::split(1_000_000, 3_000);
        let w = Waterfall::parse("PRINCIPAL,INTEREST,PENALTY").unwrap();
        let a = allocate(
            600_000,
            d(2026, 2, 1),
            &s,
            (sp, &terms()),
            &Paid::default(),
            100,
            w,
        )
        .unwrap();
        // Principal, then interest, of the first instalment; then principal of the
        // current one; the penalty comes last and gets nothing.
        let (i1, f1) = (s[0].inst.interest, s[0].inst.fee);
        assert_eq!(
            a.instalments[0],
            Paying {
                seq: 1,
                principal: 500_000,
                interest: i1,
                fee: f1
            }
        );
        assert_eq!(
            a.instalments[1],
            Paying {
                seq: 2,
                principal: 100_000 - i1 - f1,
                interest: 0,
                fee: 0
            }
        );
        assert_eq!(a.bank.penalty + a.partner.penalty, 0);
        assert_eq!(a.prepaid, 0);
        assert!(Waterfall::parse("PENALTY,PENALTY,INTEREST").is_none());
    }

    #[test]
    fn overdue_amounts_accrue_penalty_by_day() {
        let s = state(schedule(
            1_000_000,
            2,
            px(1_200),
            Method::EqualPrincipal,
            d(2026, 1, 1),
            DayCount::Act360,
        ));
        // The first instalment (due 2026-02-01) is 10 days late on 2026-02-11.
        let p = penalty_accrual(&s, d(2026, 1, 1), d(2026, 2, 11), 1_800, DayCount::Act360);
        assert_eq!(p, interest(s[0].unpaid(), 1_800, 10, DayCount::Act360));
        // Nothing accrues again for days already accrued.
        assert_eq!(
            penalty_accrual(&s, d(2026, 2, 11), d(2026, 2, 11), 1_800, DayCount::Act360),
            0
        );
    }

    #[test]
    fn early_repayment_recomputes_the_rest() {
        let s = state(schedule(
            1_200_000,
            12,
            px(1_200),
            Method::EqualInstalment,
            d(2026, 1, 1),
            DayCount::Act360,
        ));
        let sp = super::super::split(1_200_000, 3_000);
        let first = s[0].unpaid();
        let a = allocate(
            first + 600_000,
            d(2026, 1, 20),
            &s,
            (sp, &terms()),
            &Paid::default(),
            0,
            Waterfall::default(),
        )
        .unwrap();
        assert_eq!(a.prepaid, 600_000);
        let next = apply(
            &s,
            &a,
            d(2026, 1, 20),
            px(1_200),
            Method::EqualInstalment,
            DayCount::Act360,
        );
        assert_eq!(next.len(), 12);
        let owed: i64 = next
            .iter()
            .map(|x| x.inst.principal - x.principal_paid)
            .sum();
        assert_eq!(owed, 1_200_000 - s[0].inst.principal - 600_000);
        assert!(
            next[1].inst.principal + next[1].inst.interest
                < s[1].inst.principal + s[1].inst.interest
        );
        assert_eq!(next[11].inst.due, s[11].inst.due);
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

    proptest! {
        #[test]
        fn schedules_sum_exactly(p in 1i64..10_000_000_000, n in 1i32..=60, bps in 0i64..3_600, m in method(), dc in dc()) {
            let s = schedule(p, n, px(bps), m, d(2026, 3, 31), dc);
            prop_assert_eq!(s.len(), n as usize);
            prop_assert_eq!(s.iter().map(|i| i.principal).sum::<i64>(), p);
            prop_assert!(s.iter().all(|i| i.principal >= 0 && i.interest >= 0));
        }

        #[test]
        fn funder_schedules_sum_line_by_line(p in 100i64..1_000_000_000, n in 1i32..=36, bps in 0i64..3_600, m in method(),
                                             share in 1_000i64..9_000, br in 0i64..3_000, pr in 0i64..3_000) {
            let s = schedule(p, n, px(bps), m, d(2026, 1, 31), DayCount::Act360);
            let sp = super::super::split(p, share);
            let t = Terms { partner_share_bps: share, bank_rate_bps: br, partner_rate_bps: pr , fee_partner_bps: 4_000 };
            let (b, q) = funder_schedules(&s, sp, &t);
            for ((i, x), y) in s.iter().zip(&b).zip(&q) {
                prop_assert_eq!(x.principal + y.principal, i.principal);
                prop_assert_eq!(x.interest + y.interest, i.interest);
                prop_assert!(x.principal >= 0 && y.principal >= 0 && x.interest >= 0 && y.interest >= 0);
            }
            prop_assert_eq!(b.iter().map(|x| x.principal).sum::<i64>(), sp.bank);
            prop_assert_eq!(q.iter().map(|x| x.principal).sum::<i64>(), sp.partner);
        }

        #[test]
        fn any_repayment_sequence_allocates_every_cent_once(
            p in 100i64..1_000_000_000, n in 1i32..=24, bps in 0i64..3_600, m in method(),
            share in 3_000i64..9_999, br in 0i64..3_000, pr in 0i64..3_000,
            cuts in proptest::collection::vec((1i64..1_000_000_000, 0i64..90), 1..12),
            penalty_first in proptest::bool::ANY,
        ) {
            let start = d(2026, 1, 15);
            let mut s = state(schedule(p, n, px(bps), m, start, DayCount::Act360));
            let sp = super::super::split(p, share);
            let t = Terms { partner_share_bps: share, bank_rate_bps: br, partner_rate_bps: pr , fee_partner_bps: 4_000 };
            let w = if penalty_first { Waterfall::default() } else { Waterfall::parse("INTEREST,PRINCIPAL,PENALTY").unwrap() };
            let mut paid = Paid::default();
            let (mut penalty_accrued, mut through) = (0i64, start);
            let (mut bank_p, mut partner_p, mut received) = (0, 0, 0);
            let mut day = start;
            for (cut, step) in cuts.iter().map(|(c, s)| (*c, *s)).chain(std::iter::once((i64::MAX, 400))) {
                day = day.checked_add_days(chrono::Days::new(step as u64)).unwrap();
                penalty_accrued += penalty_accrual(&s, through, day, 1_800, DayCount::Act360);
                through = day;
                let due = penalty_accrued - paid.penalty;
                let most = payoff(&s, day, due);
                let amount = cut.min(most);
                if amount <= 0 { break; }
                let a = allocate(amount, day, &s, (sp, &t), &paid, due, w).unwrap();
                prop_assert_eq!(a.bank.total() + a.partner.total(), amount);
                prop_assert!(a.bank.principal >= 0 && a.partner.principal >= 0);
                prop_assert!(a.bank.interest >= 0 && a.partner.interest >= 0);
                prop_assert!(a.bank.penalty >= 0 && a.partner.penalty >= 0);
                bank_p += a.bank.principal;
                partner_p += a.partner.principal;
                received += amount;
                s = apply(&s, &a, day, px(bps), m, DayCount::Act360);
                paid = a.after;
                prop_assert!(s.iter().all(|x| x.principal_paid <= x.inst.principal && x.interest_paid <= x.inst.interest));
            }
            // Paid off: each funder got exactly its principal back.
            prop_assert_eq!(paid.principal, p);
            prop_assert_eq!(bank_p, sp.bank);
            prop_assert_eq!(partner_p, sp.partner);
            prop_assert!(received >= p);
        }
    }

    fn accrual_loan(principal: i64, rate_bps: i64) -> Vec<InstalmentState> {
        schedule(
            principal,
            6,
            px(rate_bps),
            Method::EqualInstalment,
            d(2026, 1, 15),
            DayCount::Act360,
        )
        .into_iter()
        .map(InstalmentState::new)
        .collect()
    }

    fn accrual_terms(terms: &Terms) -> AccrualTerms<'_> {
        AccrualTerms {
            split: split(10_000_000, 3_000),
            terms,
            penalty_rate_bps: 1_800,
            day_count: DayCount::Act360,
        }
    }

    const TERMS: Terms = Terms {
        partner_share_bps: 3_000,
        bank_rate_bps: 900,
        partner_rate_bps: 1_100,
        fee_partner_bps: 4_000,
    };

    #[test]
    fn accrual_takes_each_payable_instalment_once() {
        let insts = accrual_loan(10_000_000, 1_200);
        let none = vec![false; insts.len()];
        // Before the first due date the current period's instalment is payable.
        let early = accrue(
            &Accrued::default(),
            &insts,
            &none,
            None,
            d(2026, 1, 20),
            accrual_terms(&TERMS),
        );
        assert_eq!(early.newly, vec![1]);
        assert_eq!(early.interest.total(), insts[0].inst.interest);
        // On the second due date: the two due and the current one.
        let a = accrue(
            &Accrued::default(),
            &insts,
            &none,
            None,
            insts[1].inst.due,
            accrual_terms(&TERMS),
        );
        assert_eq!(a.newly, vec![1, 2, 3]);
        let sum = |f: fn(&Instalment) -> i64| insts[..3].iter().map(|s| f(&s.inst)).sum::<i64>();
        assert_eq!(a.interest.total(), sum(|i| i.interest));
        assert_eq!(a.fee.total(), sum(|i| i.fee));
        // Accrued instalments are not accrued again.
        let mut flags = none.clone();
        for f in flags.iter_mut().take(3) {
            *f = true;
        }
        let again = accrue(
            &a.after,
            &insts,
            &flags,
            Some(insts[1].inst.due),
            insts[1].inst.due,
            accrual_terms(&TERMS),
        );
        assert!(again.newly.is_empty());
        assert_eq!(again.after, a.after);
    }

    #[test]
    fn penalty_accrues_only_after_the_date_it_was_accrued_to() {
        let insts = accrual_loan(10_000_000, 1_200);
        let flags = vec![false; insts.len()];
        let due = insts[0].inst.due;
        let late = due + chrono::Duration::days(10);
        let a = accrue(
            &Accrued::default(),
            &insts,
            &flags,
            Some(due),
            late,
            accrual_terms(&TERMS),
        );
        // Ten days on the whole first instalment at 18% ACT/360.
        assert_eq!(
            a.penalty.total(),
            interest(insts[0].unpaid(), 1_800, 10, DayCount::Act360)
        );
        assert_eq!(a.penalty_through, Some(late));
        // Unset: nothing accrues before the date it starts from.
        let unset = accrue(
            &Accrued::default(),
            &insts,
            &flags,
            None,
            late,
            accrual_terms(&TERMS),
        );
        assert_eq!(unset.penalty, FunderAmounts::default());
    }

    proptest! {
        /// Accruing a loan in any number of steps gives each funder exactly
        /// what one accrual of the same total gives (no drift between the
        /// funders), and every step's parts sum to what it adds.
        #[test]
        fn accrual_in_steps_splits_like_one_accrual(
            principal in 100_000i64..100_000_000,
            rate in 100i64..2_400,
            steps in proptest::collection::vec(0usize..6, 1..6),
            bank_rate in 0i64..2_000,
            partner_rate in 0i64..2_000,
            fee_partner in 0i64..10_000,
        ) {
            let terms = Terms { partner_share_bps: 3_000, bank_rate_bps: bank_rate, partner_rate_bps: partner_rate, fee_partner_bps: fee_partner };
            let t = AccrualTerms { split: split(principal, 3_000), terms: &terms, penalty_rate_bps: 0, day_count: DayCount::Act360 };
            let insts = schedule(principal, 6, px(rate), Method::EqualInstalment, d(2026, 1, 15), DayCount::Act360)
                .into_iter().map(InstalmentState::new).collect::<Vec<_>>();
            let mut flags = vec![false; insts.len()];
            let mut acc = Accrued::default();
            let mut sorted = steps.clone();
            sorted.sort_unstable();
            for k in sorted {
                let a = accrue(&acc, &insts, &flags, None, insts[k].inst.due, t);
                prop_assert_eq!(a.interest.total(), a.after.interest - acc.interest);
                prop_assert_eq!(a.fee.total(), a.after.fee - acc.fee);
                for seq in &a.newly { flags[(*seq - 1) as usize] = true; }
                acc = a.after;
            }
            let last = *steps.iter().max().unwrap_or(&0);
            let once = accrue(&Accrued::default(), &insts, &vec![false; insts.len()], None, insts[last].inst.due, t);
            prop_assert_eq!(&acc, &once.after);
            // Independently: the partner's interest is its rate-weighted share of the total, floored.
            let w_b = split(principal, 3_000).bank as i128 * bank_rate as i128;
            let w_p = split(principal, 3_000).partner as i128 * partner_rate as i128;
            if w_b + w_p > 0 {
                prop_assert_eq!(acc.partner_interest as i128, acc.interest as i128 * w_p / (w_b + w_p));
            }
            prop_assert_eq!(acc.partner_fee as i128, acc.fee as i128 * fee_partner as i128 / 10_000);
        }
    }
}
