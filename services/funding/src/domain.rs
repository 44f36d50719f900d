//! Funding rules: the split (rule C1), schedules, the repayment waterfall and
//! each funder's part of every repayment. Pure: no I/O. Money is exact: every
//! split sums to its whole.
use chrono::{Months, NaiveDate};
use colend_core::money::{BPS_ONE, mul_div_floor, mul_div_round, split_partner_share};

/// Months per year, for monthly interest from an annual rate.
const PERIODS_PER_YEAR: i64 = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    EqualInstalment,
    EqualPrincipal,
    InterestFirst,
}

/// A co-lending agreement's terms, frozen on each loan (rule P2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    pub partner_share_bps: i64,
    pub bank_rate_bps: i64,
    pub partner_rate_bps: i64,
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

/// One instalment due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instalment {
    pub seq: i32,
    pub due: NaiveDate,
    pub principal: i64,
    pub interest: i64,
}

fn monthly_interest(balance: i64, annual_bps: i64) -> i64 {
    mul_div_round(balance, annual_bps, BPS_ONE * PERIODS_PER_YEAR)
}

/// Runs equal-instalment amortisation with payment `m`; returns the last
/// instalment's amount (remaining balance plus its interest).
fn last_payment(principal: i64, n: i32, annual_bps: i64, m: i64) -> i64 {
    let mut bal = principal;
    for _ in 1..n {
        let i = monthly_interest(bal, annual_bps);
        let p = (m - i).clamp(0, bal);
        bal -= p;
    }
    bal + monthly_interest(bal, annual_bps)
}

/// The repayment schedule. Principal parts sum exactly to `principal`.
pub fn schedule(
    principal: i64,
    n: i32,
    annual_bps: i64,
    method: Method,
    start: NaiveDate,
) -> Vec<Instalment> {
    assert!(n > 0 && principal >= 0 && annual_bps >= 0);
    let due = |k: i32| {
        start
            .checked_add_months(Months::new(k as u32))
            .unwrap_or(start)
    };
    let mut out = Vec::with_capacity(n as usize);
    let mut bal = principal;
    match method {
        Method::EqualInstalment => {
            // Smallest level payment whose final instalment is not larger...
            let (mut lo, mut hi) = (
                principal / n as i64,
                principal + monthly_interest(principal, annual_bps) * n as i64 + 1,
            );
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if last_payment(principal, n, annual_bps, mid) <= mid {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            // Of that payment and one cent less, the one whose final
            // instalment comes closest to level.
            let gap = |m: i64| (last_payment(principal, n, annual_bps, m) - m).abs();
            let level = if lo > 0 && gap(lo - 1) <= gap(lo) {
                lo - 1
            } else {
                lo
            };
            for k in 1..=n {
                let i = monthly_interest(bal, annual_bps);
                let p = if k == n {
                    bal
                } else {
                    (level - i).clamp(0, bal)
                };
                bal -= p;
                out.push(Instalment {
                    seq: k,
                    due: due(k),
                    principal: p,
                    interest: i,
                });
            }
        }
        Method::EqualPrincipal => {
            let base = principal / n as i64;
            let extra = principal % n as i64;
            for k in 1..=n {
                let i = monthly_interest(bal, annual_bps);
                let p = base + i64::from((k as i64) <= extra);
                bal -= p;
                out.push(Instalment {
                    seq: k,
                    due: due(k),
                    principal: p,
                    interest: i,
                });
            }
        }
        Method::InterestFirst => {
            for k in 1..=n {
                let i = monthly_interest(principal, annual_bps);
                let p = if k == n { principal } else { 0 };
                out.push(Instalment {
                    seq: k,
                    due: due(k),
                    principal: p,
                    interest: i,
                });
            }
        }
    }
    out
}

/// What a loan has received so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paid {
    /// Per instalment: (principal paid, interest paid).
    pub instalments: Vec<(i64, i64)>,
    pub principal: i64,
    pub interest: i64,
    pub penalty: i64,
    pub partner_principal: i64,
    pub partner_interest: i64,
    pub partner_penalty: i64,
}

/// Components of a repayment for one funder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parts {
    pub penalty: i64,
    pub interest: i64,
    pub principal: i64,
}

impl Parts {
    pub fn total(&self) -> i64 {
        self.penalty + self.interest + self.principal
    }
}

/// How one repayment is allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub bank: Parts,
    pub partner: Parts,
    /// Per instalment touched: (seq, principal, interest).
    pub instalments: Vec<(i32, i64, i64)>,
    /// The loan's paid state after this repayment.
    pub after: Paid,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaterfallError {
    #[error("amount must be positive")]
    NotPositive,
    #[error("amount {amount} exceeds the {outstanding} still owed")]
    ExceedsOutstanding { amount: i64, outstanding: i64 },
}

/// Allocates a repayment: penalty, then interest, then principal, instalment
/// by instalment in due order; then splits each component between the
/// funders. Principal follows the principal split; interest follows each
/// funder's principal × its own rate; penalty follows the principal split.
/// Funder parts are computed on running totals, so rounding never drifts:
/// at payoff each funder has received exactly its principal.
pub fn allocate(
    amount: i64,
    schedule: &[Instalment],
    split: Split,
    terms: &Terms,
    paid: &Paid,
    penalty_due: i64,
) -> Result<Allocation, WaterfallError> {
    if amount <= 0 {
        return Err(WaterfallError::NotPositive);
    }
    let outstanding: i64 = penalty_due
        + schedule
            .iter()
            .zip(paid.instalments.iter().chain(std::iter::repeat(&(0, 0))))
            .map(|(s, (pp, ip))| (s.principal - pp) + (s.interest - ip))
            .sum::<i64>();
    if amount > outstanding {
        return Err(WaterfallError::ExceedsOutstanding {
            amount,
            outstanding,
        });
    }
    let mut left = amount;
    let penalty = left.min(penalty_due);
    left -= penalty;
    let mut after = paid.clone();
    after.instalments.resize(schedule.len(), (0, 0));
    let mut touched = Vec::new();
    let (mut interest, mut principal) = (0, 0);
    for (s, st) in schedule.iter().zip(after.instalments.iter_mut()) {
        if left == 0 {
            break;
        }
        let i = left.min(s.interest - st.1);
        left -= i;
        let p = left.min(s.principal - st.0);
        left -= p;
        if i > 0 || p > 0 {
            st.1 += i;
            st.0 += p;
            interest += i;
            principal += p;
            touched.push((s.seq, p, i));
        }
    }
    debug_assert_eq!(left, 0);
    let total_principal = split.bank + split.partner;
    after.penalty += penalty;
    after.interest += interest;
    after.principal += principal;
    // Running-total splits.
    after.partner_principal = if total_principal == 0 {
        0
    } else {
        mul_div_floor(after.principal, split.partner, total_principal)
    };
    after.partner_penalty = if total_principal == 0 {
        0
    } else {
        mul_div_floor(after.penalty, split.partner, total_principal)
    };
    let w_bank = split.bank as i128 * terms.bank_rate_bps as i128;
    let w_partner = split.partner as i128 * terms.partner_rate_bps as i128;
    after.partner_interest = if w_bank + w_partner == 0 {
        if total_principal == 0 {
            0
        } else {
            mul_div_floor(after.interest, split.partner, total_principal)
        }
    } else {
        (after.interest as i128 * w_partner / (w_bank + w_partner)) as i64
    };
    let partner = Parts {
        penalty: after.partner_penalty - paid.partner_penalty,
        interest: after.partner_interest - paid.partner_interest,
        principal: after.partner_principal - paid.partner_principal,
    };
    let bank = Parts {
        penalty: penalty - partner.penalty,
        interest: interest - partner.interest,
        principal: principal - partner.principal,
    };
    Ok(Allocation {
        bank,
        partner,
        instalments: touched,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 31).unwrap()
    }

    #[test]
    fn equal_instalment_is_level() {
        let s = schedule(12_000_000, 12, 1_200, Method::EqualInstalment, d());
        assert_eq!(s.iter().map(|i| i.principal).sum::<i64>(), 12_000_000);
        let first = s[0].principal + s[0].interest;
        // 120,000.00 at 12% over 12 months: 10,661.85 a month.
        assert_eq!(first, 1_066_185);
        for i in &s[..11] {
            assert_eq!(i.principal + i.interest, first);
        }
        let last = s[11].principal + s[11].interest;
        assert!((first - last).abs() <= 12, "last {last}");
        assert_eq!(s[0].due, NaiveDate::from_ymd_opt(2026, 2, 28).unwrap());
    }

    #[test]
    fn equal_principal_and_interest_first() {
        let s = schedule(1_000_003, 3, 1_200, Method::EqualPrincipal, d());
        assert_eq!(
            s.iter().map(|i| i.principal).collect::<Vec<_>>(),
            vec![333_335, 333_334, 333_334]
        );
        assert_eq!(s[0].interest, 10_000);
        let b = schedule(1_000_000, 6, 1_200, Method::InterestFirst, d());
        assert_eq!(b.iter().map(|i| i.principal).sum::<i64>(), 1_000_000);
        assert!(
            b[..5]
                .iter()
                .all(|i| i.principal == 0 && i.interest == 10_000)
        );
    }

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
    fn waterfall_pays_interest_before_principal() {
        let s = schedule(1_000_000, 2, 1_200, Method::EqualPrincipal, d());
        let sp = split(1_000_000, 3_000);
        let t = Terms {
            partner_share_bps: 3_000,
            bank_rate_bps: 1_000,
            partner_rate_bps: 1_800,
        };
        let a = allocate(5_000, &s, sp, &t, &Paid::default(), 0).unwrap();
        assert_eq!(a.bank.principal + a.partner.principal, 0);
        assert_eq!(a.bank.interest + a.partner.interest, 5_000);
        // Interest weights: bank 700,000 × 1000, partner 300,000 × 1800.
        assert_eq!(a.partner.interest, 5_000 * 540 / 1240);
        assert!(matches!(
            allocate(2_000_000, &s, sp, &t, &Paid::default(), 0),
            Err(WaterfallError::ExceedsOutstanding { .. })
        ));
    }

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::EqualInstalment),
            Just(Method::EqualPrincipal),
            Just(Method::InterestFirst)
        ]
    }

    proptest! {
        #[test]
        fn schedule_principal_sums_exactly(p in 1i64..10_000_000_000, n in 1i32..=60, bps in 0i64..3_600, m in method()) {
            let s = schedule(p, n, bps, m, d());
            prop_assert_eq!(s.len(), n as usize);
            prop_assert_eq!(s.iter().map(|i| i.principal).sum::<i64>(), p);
            prop_assert!(s.iter().all(|i| i.principal >= 0 && i.interest >= 0));
        }

        #[test]
        fn repayments_split_exactly_and_pay_off_each_funder(
            p in 100i64..1_000_000_000, n in 1i32..=24, bps in 0i64..3_600, m in method(),
            share in 3_000i64..9_999, br in 0i64..3_000, pr in 0i64..3_000,
            cuts in proptest::collection::vec(1i64..1_000_000_000, 1..12),
        ) {
            let s = schedule(p, n, bps, m, d());
            let sp = split(p, share);
            prop_assert_eq!(sp.bank + sp.partner, p);
            let t = Terms { partner_share_bps: share, bank_rate_bps: br, partner_rate_bps: pr };
            let total: i64 = s.iter().map(|i| i.principal + i.interest).sum();
            let mut paid = Paid::default();
            let mut received = 0;
            let (mut bank_p, mut partner_p) = (0, 0);
            for c in cuts.iter().chain(std::iter::once(&i64::MAX)) {
                let amount = (*c).min(total - received);
                if amount <= 0 { break; }
                let a = allocate(amount, &s, sp, &t, &paid, 0).unwrap();
                prop_assert_eq!(a.bank.total() + a.partner.total(), amount);
                prop_assert!(a.bank.principal >= 0 && a.partner.principal >= 0);
                prop_assert!(a.bank.interest >= 0 && a.partner.interest >= 0);
                bank_p += a.bank.principal;
                partner_p += a.partner.principal;
                received += amount;
                paid = a.after;
            }
            prop_assert_eq!(received, total);
            prop_assert_eq!(bank_p, sp.bank);
            prop_assert_eq!(partner_p, sp.partner);
        }
    }
}
