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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    pub partner_share_bps: i64,
    pub bank_rate_bps: i64,
    pub partner_rate_bps: i64,
    /// The partner's share of fees, basis points; the bank takes the rest.
    pub fee_partner_bps: i64,
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

/// A limit as a share of a base, rounded down to the cent: `base × bps / 10000`.
pub fn limit_of(base: i64, bps: i64) -> i64 {
    mul_div_floor(base, bps, BPS_ONE)
}

/// True when adding `add` to `used` stays within `limit`.
pub fn within(used: i64, add: i64, limit: i64) -> bool {
    used.checked_add(add).is_some_and(|t| t <= limit)
}

mod servicing;
pub use servicing::*;

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
