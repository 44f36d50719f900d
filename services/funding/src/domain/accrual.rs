//! Daily accrual: interest and fees accrue day by day on the balance that
//! bears them, by the loan's day count, and every accrual is shared between
//! the funders as the agreement says. Pure: no I/O.
//!
//! What must hold:
//! - An instalment's interest accrues over its period on the principal of
//!   that instalment and of the later ones (the interest-bearing balance;
//!   principal past its due date bears penalty interest instead). Within a
//!   balance segment (the period, or what is left of it after a prepayment)
//!   the interest accrued through a day is `round(balance × rate × days /
//!   basis)` counted from the segment's first day; a day's accrual is the
//!   difference, so whatever dates accruals are posted on, they sum exactly
//!   to the instalment's interest. Fees accrue the same way at the fee rate.
//! - Penalty interest accrues the same way on each instalment past its due
//!   date, at the penalty rate on what is unpaid of it, within its overdue
//!   segment (from the later of the due date and the last repayment that
//!   changed the unpaid amount): `round(unpaid × rate × days / basis)`
//!   through a day, less what was posted in the segment. So accruing in
//!   steps (end-of-day runs) posts exactly what accruing once does.
//! - An accrual never goes back: accruing to a date the loan is already
//!   accrued through adds nothing.
//! - Each accrual's interest is split by the loan's [`InterestSplit`], fees
//!   by the agreement's fee split, penalty by principal share; the two parts
//!   always sum to what accrued.
//!
//! [`accrue_to`] is the one place accrual happens: a repayment accrues to
//! its value date with it before it is allocated, and an end-of-day run can
//! call it for every loan.
use super::*;
use chrono::NaiveDate;

/// Who takes the residual of the borrower's interest under
/// [`InterestSplit::OwnRate`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Party {
    #[default]
    Bank,
    Partner,
}

impl Party {
    pub fn name(&self) -> &'static str {
        match self {
            Party::Bank => "BANK",
            Party::Partner => "PARTNER",
        }
    }

    /// The stored name; anything else is `None`.
    pub fn parse(s: &str) -> Option<Party> {
        match s {
            "BANK" => Some(Party::Bank),
            "PARTNER" => Some(Party::Partner),
            _ => None,
        }
    }
}

/// How the borrower's interest is shared between the funders, frozen on
/// each loan from its agreement (rule P2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InterestSplit {
    /// By principal share (联合贷 practice).
    #[default]
    ProRata,
    /// Each funder earns its own rate on its own principal for every
    /// accrual; the residual of the borrower's interest (positive or
    /// negative) goes to the residual party.
    OwnRate,
    /// Loans booked before the split was agreed: by principal × rate
    /// weights, as they always were. Never on a new agreement.
    RateWeighted,
}

impl InterestSplit {
    pub fn name(&self) -> &'static str {
        match self {
            InterestSplit::ProRata => "PRO_RATA",
            InterestSplit::OwnRate => "OWN_RATE",
            InterestSplit::RateWeighted => "RATE_WEIGHTED",
        }
    }

    /// The stored name; anything else is `None`.
    pub fn parse(s: &str) -> Option<InterestSplit> {
        [
            InterestSplit::ProRata,
            InterestSplit::OwnRate,
            InterestSplit::RateWeighted,
        ]
        .into_iter()
        .find(|x| x.name() == s)
    }
}

/// Why a loan cannot be reserved under its agreement's interest split:
/// under OWN_RATE a borrower's rate below the funders' blended own rates
/// (bank rate × bank share + partner rate × partner share, on this loan's
/// split) leaves a negative residual, which the agreement must allow.
pub fn residual_problem(annual_rate_bps: i64, split: Split, terms: &Terms) -> Option<String> {
    if terms.interest_split != InterestSplit::OwnRate || terms.allow_negative_residual {
        return None;
    }
    let principal = i128::from(split.bank) + i128::from(split.partner);
    let borrower = i128::from(annual_rate_bps) * principal;
    let blended = i128::from(terms.bank_rate_bps) * i128::from(split.bank)
        + i128::from(terms.partner_rate_bps) * i128::from(split.partner);
    (principal > 0 && borrower < blended).then(|| {
        // Rounded up: the least whole rate that would leave no negative residual.
        let least = (blended + principal - 1) / principal;
        format!(
            "the borrower's rate of {annual_rate_bps} bps is below the funders' blended own rates \
             ({least} bps: bank {} bps, partner {} bps, by principal share); the agreement does not \
             allow a negative residual",
            terms.bank_rate_bps, terms.partner_rate_bps
        )
    })
}

/// The balance segment an instalment's interest accrues on now, and what
/// accrued in its period before that segment began (after a prepayment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// First day of the segment; `None`: the period's first day (the
    /// previous due date, or the disbursement).
    pub from: Option<NaiveDate>,
    /// The balance bearing interest in the segment; `None`: the principal
    /// of this instalment and the later ones (an untouched schedule).
    pub balance: Option<i64>,
    /// Interest and fee accrued in the period's earlier segments.
    pub interest_before: i64,
    pub fee_before: i64,
    /// OWN_RATE: each funder's own-rate interest in the earlier segments.
    pub bank_own_before: i64,
    pub partner_own_before: i64,
}

/// A disbursed loan as servicing sees it: its terms, instalments and
/// running totals. Everything an accrual or a repayment needs, nothing
/// stored elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoanState {
    pub split: Split,
    pub terms: Terms,
    pub price: Pricing,
    pub method: Method,
    pub day_count: DayCount,
    pub penalty_rate_bps: i64,
    pub waterfall: Waterfall,
    pub disbursed_on: NaiveDate,
    pub insts: Vec<InstalmentState>,
    /// Interest, fee and penalty accrued so far, and the partner's part.
    pub accrued: Accrued,
    /// Interest and fees are accrued through this date.
    pub accrued_through: NaiveDate,
    /// Penalty interest is accrued through this date.
    pub penalty_through: NaiveDate,
    pub paid: Paid,
    /// Paid beyond the payoff, owed back to the borrower.
    pub overpaid: i64,
}

/// What one accrual adds, per component and funder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accrual {
    pub penalty: FunderAmounts,
    pub interest: FunderAmounts,
    pub fee: FunderAmounts,
    /// (interest, fee) accrued now on each instalment, in the loan's order.
    pub instalments: Vec<(i64, i64)>,
    /// Penalty accrued now on each instalment (within its overdue segment),
    /// in the loan's order; empty when no penalty accrues.
    pub penalties: Vec<i64>,
    /// The loan is accrued through these dates afterwards.
    pub accrued_through: NaiveDate,
    pub penalty_through: NaiveDate,
}

impl LoanState {
    pub fn principal(&self) -> i64 {
        self.split.bank + self.split.partner
    }

    /// First day of instalment `k`'s period.
    pub fn period_start(&self, k: usize) -> NaiveDate {
        match k.checked_sub(1) {
            Some(prev) => self.insts[prev].inst.due,
            None => self.disbursed_on,
        }
    }

    /// First day of the segment instalment `k` accrues on now.
    pub fn segment_from(&self, k: usize) -> NaiveDate {
        self.insts[k]
            .segment
            .from
            .unwrap_or_else(|| self.period_start(k))
    }

    /// The balance instalment `k` accrues on now.
    pub fn segment_balance(&self, k: usize) -> i64 {
        self.insts[k]
            .segment
            .balance
            .unwrap_or_else(|| self.insts[k..].iter().map(|s| s.inst.principal).sum())
    }

    /// Each funder's part of an interest-bearing `balance`: the principal no
    /// longer bearing interest (repaid or due) is taken off each funder's
    /// amount by principal share, on the running total, as repayments are.
    pub fn funder_balances(&self, balance: i64) -> FunderAmounts {
        let off = (self.principal() - balance).clamp(0, self.principal());
        let partner = self.split.partner - partner_principal_part(off, self.split);
        FunderAmounts {
            bank: balance - partner,
            partner,
        }
    }

    /// Accrued through `date` on instalment `k` of a component whose whole
    /// is `whole` (accrued in full by the due date), `before` of it accrued
    /// in earlier segments, at `rate_bps` on the segment's balance.
    fn through(&self, k: usize, date: NaiveDate, whole: i64, before: i64, rate_bps: i64) -> i64 {
        let s = &self.insts[k];
        if s.accrued_in_full || date >= s.inst.due {
            return whole;
        }
        let from = self.segment_from(k);
        if date <= from {
            return before.min(whole);
        }
        let days = (date - from).num_days();
        before
            .saturating_add(interest(
                self.segment_balance(k),
                rate_bps,
                days,
                self.day_count,
            ))
            .min(whole)
    }

    /// Interest of instalment `k` accrued through `date`.
    pub fn interest_through(&self, k: usize, date: NaiveDate) -> i64 {
        let s = &self.insts[k];
        self.through(
            k,
            date,
            s.inst.interest,
            s.segment.interest_before,
            self.price.rate_bps,
        )
    }

    /// Fee of instalment `k` accrued through `date`.
    pub fn fee_through(&self, k: usize, date: NaiveDate) -> i64 {
        let s = &self.insts[k];
        self.through(
            k,
            date,
            s.inst.fee,
            s.segment.fee_before,
            self.price.fee_bps,
        )
    }

    /// Each funder's own-rate interest in instalment `k`'s current segment
    /// from `from_date` to `to_date` (cumulative within the segment, so
    /// consecutive intervals add up to the whole segment).
    pub fn own_between(&self, k: usize, from_date: NaiveDate, to_date: NaiveDate) -> FunderAmounts {
        let s = &self.insts[k];
        if s.accrued_in_full {
            return FunderAmounts::default();
        }
        let start = self.segment_from(k);
        let (lo, hi) = (from_date.max(start), to_date.min(s.inst.due));
        if hi <= lo {
            return FunderAmounts::default();
        }
        let bal = self.funder_balances(self.segment_balance(k));
        let dc = self.day_count;
        let own = |b: i64, rate: i64| {
            interest(b, rate, (hi - start).num_days(), dc)
                - interest(b, rate, (lo - start).num_days(), dc)
        };
        FunderAmounts {
            bank: own(bal.bank, self.terms.bank_rate_bps),
            partner: own(bal.partner, self.terms.partner_rate_bps),
        }
    }

    /// The partner's part of a running total of accrued interest (pro rata,
    /// rate-weighted); OWN_RATE is split per accrual in [`accrue_to`].
    fn partner_interest_of(&self, total: i64) -> i64 {
        match self.terms.interest_split {
            InterestSplit::RateWeighted => partner_interest_part(total, self.split, &self.terms),
            InterestSplit::ProRata | InterestSplit::OwnRate => {
                partner_principal_part(total, self.split)
            }
        }
    }

    /// The partner's part of the running total of interest paid: pro rata
    /// and rate-weighted as accrued; OWN_RATE its accrual less its share (as
    /// accrued) of what is still unpaid, so that once everything accrued is
    /// paid each funder has exactly its accrual, a negative residual
    /// included (then the residual party's part is below zero: it pays the
    /// other funder out of the repayment).
    pub fn partner_interest_paid(&self, paid_total: i64) -> i64 {
        let (total, partner) = (self.accrued.interest, self.accrued.partner_interest);
        match self.terms.interest_split {
            InterestSplit::OwnRate if total > 0 => {
                let unpaid = i128::from(total - paid_total).max(0);
                let share = (unpaid * i128::from(partner)).div_euclid(i128::from(total));
                i64::try_from(i128::from(partner) - share).expect("a part of what accrued fits")
            }
            InterestSplit::OwnRate => partner,
            _ => self.partner_interest_of(paid_total),
        }
    }

    /// The loan after `a`: each instalment's accruals and the running totals.
    pub fn with_accrual(&self, a: &Accrual) -> LoanState {
        let mut next = self.clone();
        for (s, (i, f)) in next.insts.iter_mut().zip(&a.instalments) {
            s.interest_accrued += i;
            s.fee_accrued += f;
        }
        for (s, p) in next.insts.iter_mut().zip(&a.penalties) {
            s.penalty.accrued += p;
        }
        let t = &mut next.accrued;
        t.penalty += a.penalty.total();
        t.partner_penalty += a.penalty.partner;
        t.interest += a.interest.total();
        t.partner_interest += a.interest.partner;
        t.fee += a.fee.total();
        t.partner_fee += a.fee.partner;
        next.accrued_through = a.accrued_through;
        next.penalty_through = a.penalty_through;
        next
    }

    /// Repaid in full: every instalment and all penalty paid.
    pub fn is_settled(&self) -> bool {
        self.paid.principal == self.principal()
            && self.insts.iter().all(|s| s.unpaid() == 0)
            && self.paid.penalty == self.accrued.penalty
    }
}

/// `add` split on running totals: the partner's part is `part(total after)`
/// less what it had before.
fn running(
    add: i64,
    total_before: i64,
    partner_before: i64,
    part: impl Fn(i64) -> i64,
) -> FunderAmounts {
    let partner = part(total_before + add) - partner_before;
    FunderAmounts {
        bank: add - partner,
        partner,
    }
}

/// Everything that accrues on `loan` from the dates it is accrued through
/// up to `date`: penalty interest on overdue amounts (cumulative within each
/// instalment's overdue segment), then each instalment's interest and fee
/// accrued daily (cumulative within its balance segment), each split between
/// the funders. Nothing for a date the loan is already accrued through.
pub fn accrue_to(loan: &LoanState, date: NaiveDate) -> Accrual {
    let mut out = Accrual {
        accrued_through: loan.accrued_through.max(date),
        penalty_through: loan.penalty_through.max(date),
        instalments: vec![(0, 0); loan.insts.len()],
        ..Default::default()
    };
    if date > loan.penalty_through {
        out.penalties = penalty_accrual(&loan.insts, date, loan.penalty_rate_bps, loan.day_count);
        let add = out
            .penalties
            .iter()
            .try_fold(0i64, |sum, p| sum.checked_add(*p))
            .expect("a loan's penalty is bounded by its instalments'");
        out.penalty = running(
            add,
            loan.accrued.penalty,
            loan.accrued.partner_penalty,
            |t| partner_principal_part(t, loan.split),
        );
    }
    let (mut interest_add, mut fee_add) = (0i64, 0i64);
    let mut own = FunderAmounts::default();
    for (k, s) in loan.insts.iter().enumerate() {
        let i = (loan.interest_through(k, date) - s.interest_accrued).max(0);
        let f = (loan.fee_through(k, date) - s.fee_accrued).max(0);
        out.instalments[k] = (i, f);
        interest_add += i;
        fee_add += f;
        if loan.terms.interest_split == InterestSplit::OwnRate {
            let o = loan.own_between(k, loan.accrued_through, date);
            own.bank += o.bank;
            own.partner += o.partner;
        }
    }
    out.interest = match loan.terms.interest_split {
        InterestSplit::OwnRate => {
            // Each funder its own rate; the residual to the residual party.
            let partner = match loan.terms.residual_party {
                Party::Bank => own.partner,
                Party::Partner => interest_add - own.bank,
            };
            FunderAmounts {
                bank: interest_add - partner,
                partner,
            }
        }
        _ => running(
            interest_add,
            loan.accrued.interest,
            loan.accrued.partner_interest,
            |t| loan.partner_interest_of(t),
        ),
    };
    out.fee = running(fee_add, loan.accrued.fee, loan.accrued.partner_fee, |t| {
        partner_fee_part(t, &loan.terms)
    });
    out
}

/// Loans for tests: a fresh schedule, nothing accrued or paid.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A loan of `principal` disbursed on `start`, `n` monthly instalments,
    /// split at `share_bps` to the partner, no penalty, default waterfall.
    #[expect(clippy::too_many_arguments, reason = "a test builder of every term")]
    pub fn loan(
        principal: i64,
        n: i32,
        price: Pricing,
        method: Method,
        start: NaiveDate,
        day_count: DayCount,
        share_bps: i64,
        terms: Terms,
    ) -> LoanState {
        LoanState {
            split: split(principal, share_bps),
            terms,
            price,
            method,
            day_count,
            penalty_rate_bps: 0,
            waterfall: Waterfall::default(),
            disbursed_on: start,
            insts: schedule(principal, n, price, method, start, day_count)
                .into_iter()
                .map(InstalmentState::new)
                .collect(),
            accrued: Accrued::default(),
            accrued_through: start,
            penalty_through: start,
            paid: Paid::default(),
            overpaid: 0,
        }
    }

    pub fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap_or_default()
    }

    /// A loan whose instalments are as given, owing on `value_date` as the
    /// rules before daily accrual had it: the instalments due by then and
    /// the current period's in full (accrued whole), the later ones only as
    /// prepayment; `penalty_due` of penalty.
    pub fn owing_whole_periods(
        insts: &[InstalmentState],
        value_date: NaiveDate,
        split: Split,
        terms: Terms,
        penalty_due: i64,
        waterfall: Waterfall,
    ) -> LoanState {
        let start = insts.first().map_or(value_date, |s| s.inst.due);
        let due = insts.iter().filter(|s| s.inst.due <= value_date).count();
        let insts: Vec<InstalmentState> = insts
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let mut s = s.clone();
                if k <= due {
                    s.interest_accrued = s.inst.interest;
                    s.fee_accrued = s.inst.fee;
                    s.accrued_in_full = k == due;
                }
                s
            })
            .collect();
        LoanState {
            split,
            terms,
            price: Pricing::default(),
            method: Method::EqualInstalment,
            day_count: DayCount::Act360,
            penalty_rate_bps: 0,
            waterfall,
            disbursed_on: start,
            accrued: Accrued {
                penalty: penalty_due,
                interest: insts.iter().map(|s| s.interest_accrued).sum(),
                fee: insts.iter().map(|s| s.fee_accrued).sum(),
                ..Default::default()
            },
            insts,
            accrued_through: value_date,
            penalty_through: value_date,
            paid: Paid::default(),
            overpaid: 0,
        }
    }

    /// One repayment of a walk: its value date, amount and booking.
    pub type Step = (NaiveDate, i64, Booking);

    /// Books `steps` on `loan`: each `(per_mille, days)` repays that share
    /// of the payoff `days` after the previous step (from the
    /// disbursement); then, with `pay_off_after`, the whole payoff that many
    /// days after the last step. Stops once the loan is settled.
    pub fn walk(
        mut loan: LoanState,
        steps: &[(i64, i64)],
        pay_off_after: Option<i64>,
    ) -> Vec<Step> {
        let mut day = loan.disbursed_on;
        let mut out: Vec<Step> = Vec::new();
        let later = |day: NaiveDate, days: i64| {
            day.checked_add_days(chrono::Days::new(days.unsigned_abs()))
                .unwrap_or(day)
        };
        for &(per_mille, days) in steps {
            day = later(day, days);
            let owed = payoff(&loan, day).unwrap_or_default();
            let amount = owed * per_mille / 1_000;
            if amount <= 0 {
                continue;
            }
            let Ok(b) = repay(&loan, amount, day) else {
                return out;
            };
            loan = b.after.clone();
            out.push((day, amount, b));
            if loan.is_settled() {
                return out;
            }
        }
        if let Some(days) = pay_off_after {
            day = later(day, days);
            let owed = payoff(&loan, day).unwrap_or_default();
            if owed > 0
                && let Ok(b) = repay(&loan, owed, day)
            {
                out.push((day, owed, b));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
