//! Funding rules: the split (rule C1), schedules, the repayment waterfall and
//! each funder's part of every repayment. Pure: no I/O. Money is exact: every
//! split sums to its whole.
use colend_core::money::{BPS_ONE, mul_div_floor, split_partner_share};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    EqualInstalment,
    EqualPrincipal,
    InterestFirst,
}

/// Where a loan stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoanStatus {
    /// Funds reserved against the quotas and limits; not yet disbursed.
    Reserved,
    /// Disbursed by the bank; being repaid.
    Disbursed,
    /// Released or expired before disbursement: holds nothing.
    Void,
    /// Repaid in full.
    Settled,
}

impl LoanStatus {
    pub fn name(&self) -> &'static str {
        match self {
            LoanStatus::Reserved => "RESERVED",
            LoanStatus::Disbursed => "DISBURSED",
            LoanStatus::Void => "VOID",
            LoanStatus::Settled => "SETTLED",
        }
    }

    /// The stored name; anything else is `None`.
    pub fn parse(s: &str) -> Option<LoanStatus> {
        [
            LoanStatus::Reserved,
            LoanStatus::Disbursed,
            LoanStatus::Void,
            LoanStatus::Settled,
        ]
        .into_iter()
        .find(|st| st.name() == s)
    }

    /// Disbursed (or since repaid): principal is or was owed.
    pub fn was_disbursed(&self) -> bool {
        matches!(self, LoanStatus::Disbursed | LoanStatus::Settled)
    }
}

impl std::fmt::Display for LoanStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A co-lending agreement's terms, frozen on each loan (rule P2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Terms {
    pub partner_share_bps: i64,
    pub bank_rate_bps: i64,
    pub partner_rate_bps: i64,
    /// The partner's share of fees, basis points; the bank takes the rest.
    pub fee_partner_bps: i64,
    /// How the borrower's interest is shared between the funders.
    pub interest_split: InterestSplit,
    /// OWN_RATE: who takes the residual of the borrower's interest.
    pub residual_party: Party,
    /// OWN_RATE: whether that residual may be negative.
    pub allow_negative_residual: bool,
}

/// The split of a principal: bank + partner = principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    pub bank: i64,
    pub partner: i64,
}

/// Splits `principal` so the partner funds at least `partner_share_bps`
/// (rounded up to the cent) and the parts sum exactly.
pub fn split(principal: i64, partner_share_bps: i64) -> Split {
    let (bank, partner) = split_partner_share(principal, partner_share_bps);
    Split { bank, partner }
}

/// Each lender's minimum share of every loan, basis points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareMinimums {
    pub partner_bps: i64,
    pub bank_bps: i64,
}

/// `principal × bps / 10000` rounded up to the cent: the least a lender with
/// a minimum of `bps` may fund. `None` outside `0..=i64::MAX`.
pub fn minimum_part(principal: i64, bps: i64) -> Option<i64> {
    let p = i128::from(principal).checked_mul(i128::from(bps))?;
    let one = i128::from(BPS_ONE);
    i64::try_from(p.checked_add(one - 1)?.div_euclid(one)).ok()
}

/// Splits `principal` at the agreement's `partner_share_bps` so that each
/// lender funds at least its minimum exactly, to the cent: the partner's part
/// is its share rounded up, unless that leaves the bank below its minimum,
/// when it is rounded down instead (by one cent at most, since the share
/// leaves the bank at least its minimum). `None` when no split of this
/// principal into whole cents gives both lenders their minimums (a principal
/// of a cent or two, or minimums that add up to the whole).
pub fn split_within(principal: i64, partner_share_bps: i64, min: ShareMinimums) -> Option<Split> {
    if principal < 0 || !(0..=BPS_ONE).contains(&partner_share_bps) {
        return None;
    }
    let least_partner = minimum_part(principal, min.partner_bps)?;
    let most_partner = principal.checked_sub(minimum_part(principal, min.bank_bps)?)?;
    if least_partner > most_partner {
        return None;
    }
    let wanted = minimum_part(principal, partner_share_bps)?;
    let partner = wanted.clamp(least_partner, most_partner);
    Some(Split {
        bank: principal - partner,
        partner,
    })
}

/// The co-lending rules of a jurisdiction: each lender's minimum share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jurisdiction {
    /// China, 银保监办发〔2021〕24号: partner funds at least 30% of each loan (C1).
    Cn,
    /// India, co-lending model 2020: the partner NBFC funds at least 20%.
    In2020,
    /// India, co-lending directions 2025: each lender funds at least 10%.
    In2025,
}

impl Jurisdiction {
    pub fn parse(s: &str) -> Option<Jurisdiction> {
        match s.to_ascii_uppercase().as_str() {
            "CN" => Some(Jurisdiction::Cn),
            "IN-2020" => Some(Jurisdiction::In2020),
            "IN-2025" => Some(Jurisdiction::In2025),
            _ => None,
        }
    }

    /// Minimum partner share, basis points.
    pub fn min_partner_share_bps(&self) -> i64 {
        match self {
            Jurisdiction::Cn => 3_000,
            Jurisdiction::In2020 => 2_000,
            Jurisdiction::In2025 => 1_000,
        }
    }

    /// Minimum bank share, basis points (the bank always funds a part).
    pub fn min_bank_share_bps(&self) -> i64 {
        match self {
            Jurisdiction::In2025 => 1_000,
            _ => 1,
        }
    }

    /// The jurisdiction's own currency: what an amount is in when a request
    /// names none (a borrower's exposure).
    pub fn currency(&self) -> colend_core::Currency {
        match self {
            Jurisdiction::Cn => colend_core::Currency::CNY,
            Jurisdiction::In2020 | Jurisdiction::In2025 => colend_core::Currency::INR,
        }
    }

    /// The IANA time zone whose dates are the jurisdiction's business days
    /// (daily quotas, effective dates, value dates).
    pub fn time_zone(&self) -> &'static str {
        match self {
            Jurisdiction::Cn => "Asia/Shanghai",
            Jurisdiction::In2020 | Jurisdiction::In2025 => "Asia/Kolkata",
        }
    }
}

/// The value dates a disbursement may carry: from the business day the loan
/// was reserved through the business day its reservation expires, and never
/// after today plus the forward cut-off. Empty (`from > to`) when none is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueDateWindow {
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
}

impl ValueDateWindow {
    pub fn of(
        reserved_on: chrono::NaiveDate,
        expires_on: chrono::NaiveDate,
        today: chrono::NaiveDate,
        forward_days: u32,
    ) -> ValueDateWindow {
        let latest = today
            .checked_add_days(chrono::Days::new(u64::from(forward_days)))
            .unwrap_or(chrono::NaiveDate::MAX);
        ValueDateWindow {
            from: reserved_on,
            to: expires_on.min(latest),
        }
    }

    pub fn contains(&self, d: chrono::NaiveDate) -> bool {
        self.from <= d && d <= self.to
    }
}

/// Whether the allocator applies `w` exactly as it is written: penalty is
/// loan-level, so it must come first (before every instalment) or last
/// (after them); fee, interest and principal are taken per instalment in
/// the order given.
pub fn waterfall_supported(w: &Waterfall) -> bool {
    w.0[0] == Bucket::Penalty || w.0[3] == Bucket::Penalty
}

/// The largest principal a loan may have, minor units (10^13: CNY 100
/// billion). Far above any loan the rules allow (C6b: 1,000,000.00 online),
/// it bounds servicing's arithmetic (see [`schedule_from`]); ReserveFunding
/// refuses more.
pub const MAX_PRINCIPAL: i64 = 10_000_000_000_000;

/// Why a loan priced at `rate_bps` interest and `fee_bps` fees a year may
/// not be booked under the all-in cost cap (rules C10, C12). Interest and
/// fees both accrue daily on the principal in use by the day count (actual
/// days over its basis), so a year of 365 days costs the borrower
/// `(rate_bps + fee_bps) × 365 / basis`: on ACT/360 that is 365/360 of the
/// nominal price. Compared exactly; the figure stated is rounded up to the
/// basis point, as credit states it. `None` within the cap.
pub fn all_in_problem(rate_bps: i64, fee_bps: i64, dc: DayCount, cap_bps: i64) -> Option<String> {
    let basis = i128::from(dc.basis());
    let a_year = (i128::from(rate_bps) + i128::from(fee_bps)) * 365;
    (a_year > i128::from(cap_bps) * basis).then(|| {
        let all_in = (a_year + basis - 1).div_euclid(basis);
        format!(
            "the all-in annual cost of {rate_bps} bps interest plus {fee_bps} bps fees, accrued on \
             {}, is {all_in} bps over a 365-day year: above the cap of {cap_bps} bps (rule C12)",
            dc.name()
        )
    })
}

/// Checks an agreement's partner share against the minimums.
pub fn share_problem(
    partner_share_bps: i64,
    min_partner_share_bps: i64,
    min_bank_share_bps: i64,
) -> Option<String> {
    if partner_share_bps < min_partner_share_bps {
        Some(format!(
            "partner share {partner_share_bps} bps is below the minimum of {min_partner_share_bps} bps"
        ))
    } else if BPS_ONE - partner_share_bps < min_bank_share_bps {
        Some(format!(
            "the bank must fund at least {min_bank_share_bps} bps of each loan: partner share must be at most {} bps",
            BPS_ONE - min_bank_share_bps
        ))
    } else {
        None
    }
}

/// A limit as a share of a base, rounded down to the cent: `base × bps / 10000`,
/// exact in i128. A limit past the i64 range is held by every i64 total (or
/// by none, below it), so it is returned as `i64::MAX` (`i64::MIN`): the
/// comparisons in [`within`] are the same as against the exact limit.
pub fn limit_of(base: i64, bps: i64) -> i64 {
    mul_div_floor(base, bps, BPS_ONE).unwrap_or(if (base < 0) != (bps < 0) {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// True when adding `add` to `used` stays within `limit`.
pub fn within(used: i64, add: i64, limit: i64) -> bool {
    used.checked_add(add).is_some_and(|t| t <= limit)
}

mod accrual;
mod servicing;
pub use accrual::*;
pub use servicing::*;
#[cfg(test)]
mod cost_tests;

#[cfg(test)]
mod split_tests;
#[cfg(test)]
mod waterfall_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c1_share_boundary_29_99_refused_30_00_accepted() {
        let cn = Jurisdiction::Cn;
        let check = |bps| share_problem(bps, cn.min_partner_share_bps(), cn.min_bank_share_bps());
        assert!(check(2_999).is_some());
        assert!(check(3_000).is_none());
        assert!(check(9_999).is_none());
        assert!(check(10_000).is_some());
    }

    #[test]
    fn jurisdiction_profiles() {
        let i20 = Jurisdiction::parse("in-2020").unwrap();
        assert!(
            share_problem(1_999, i20.min_partner_share_bps(), i20.min_bank_share_bps()).is_some()
        );
        assert!(
            share_problem(2_000, i20.min_partner_share_bps(), i20.min_bank_share_bps()).is_none()
        );
        let i25 = Jurisdiction::parse("IN-2025").unwrap();
        assert!(
            share_problem(999, i25.min_partner_share_bps(), i25.min_bank_share_bps()).is_some()
        );
        assert!(
            share_problem(1_000, i25.min_partner_share_bps(), i25.min_bank_share_bps()).is_none()
        );
        assert!(
            share_problem(9_000, i25.min_partner_share_bps(), i25.min_bank_share_bps()).is_none()
        );
        assert!(
            share_problem(9_001, i25.min_partner_share_bps(), i25.min_bank_share_bps()).is_some()
        );
        assert_eq!(Jurisdiction::parse("XX"), None);
    }

    #[test]
    fn c2_c3_limits_at_the_cent() {
        // Net tier-1 capital 1,000,000.01: 25% is 250,000.0025, so 250,000.00 is the limit.
        let c2 = limit_of(100_000_001, 2_500);
        assert_eq!(c2, 25_000_000);
        assert!(within(24_000_000, 1_000_000, c2));
        assert!(!within(24_000_000, 1_000_001, c2));
        // Total loans 2,000,000.00: 50% is exactly 1,000,000.00.
        let c3 = limit_of(200_000_000, 5_000);
        assert!(within(0, 100_000_000, c3));
        assert!(!within(0, 100_000_001, c3));
        assert!(!within(i64::MAX, 1, i64::MAX));
        // A limit past i64 holds every total; exact below it.
        assert_eq!(limit_of(i64::MAX, 20_000), i64::MAX);
        assert_eq!(limit_of(i64::MAX, 10_000), i64::MAX);
        assert_eq!(limit_of(i64::MAX, 5_000), i64::MAX / 2);
    }

    #[test]
    fn the_all_in_cap_is_over_a_365_day_year() {
        // 23.99% on ACT/360 costs 2,432.3 bps over 365 days: refused.
        let p = all_in_problem(2_399, 0, DayCount::Act360, 2_400).unwrap();
        assert!(p.contains("2433 bps"), "{p}");
        // ACT/360: 2,367 × 365 / 360 = 2,399.9 is in; 2,368 gives 2,400.9.
        assert_eq!(all_in_problem(2_267, 100, DayCount::Act360, 2_400), None);
        assert!(all_in_problem(2_268, 100, DayCount::Act360, 2_400).is_some());
        // ACT/365: the nominal price is the annual cost.
        assert_eq!(all_in_problem(2_300, 100, DayCount::Act365, 2_400), None);
        assert!(all_in_problem(2_301, 100, DayCount::Act365, 2_400).is_some());
        // Fees count as much as interest.
        assert!(all_in_problem(0, 2_401, DayCount::Act365, 2_400).is_some());
        // The contract's largest values do not overflow.
        assert!(all_in_problem(i64::MAX, i64::MAX, DayCount::Act360, 2_400).is_some());
    }

    #[test]
    fn jurisdiction_currencies() {
        assert_eq!(Jurisdiction::Cn.currency(), colend_core::Currency::CNY);
        assert_eq!(Jurisdiction::In2020.currency(), colend_core::Currency::INR);
        assert_eq!(Jurisdiction::In2025.currency(), colend_core::Currency::INR);
    }

    #[test]
    fn loan_status_names_round_trip_and_nothing_else_parses() {
        for st in [
            LoanStatus::Reserved,
            LoanStatus::Disbursed,
            LoanStatus::Void,
            LoanStatus::Settled,
        ] {
            assert_eq!(LoanStatus::parse(st.name()), Some(st));
        }
        assert_eq!(LoanStatus::parse("reserved"), None);
        assert_eq!(LoanStatus::parse(""), None);
    }
}
