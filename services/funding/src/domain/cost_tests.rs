//! The all-in cost of every repayment path (rules C10 and C12): the
//! borrower's actual cash flows, discounted at a daily rate (an independent
//! floating-point computation) and annualised over a 365-day year, never
//! cost more a year than the rate and fee the loan was priced at over that
//! year (`(rate + fee) × 365 / basis`: on ACT/360, 365/360 of the nominal
//! price), so a loan that [`all_in_problem`] lets through stays under the cap
//! however early, late or often the borrower repays (penalty aside).
use super::testing::{d, loan, walk};
use super::*;
use proptest::prelude::*;

/// The cap on the all-in annual cost (rule C12), basis points.
const CAP_BPS: i64 = 2_400;

/// Rounding allowance, basis points a year. Interest and fee are each
/// rounded half up once per balance segment, so a path can carry half a
/// cent of each more than exact per segment; on the smallest loan generated
/// (10,000.00) a payoff one day after the disbursement carries at most one
/// cent more than exact: 3.65 bps over a 365-day year, whatever the day count.
const TOLERANCE_BPS: f64 = 5.0;

/// The daily rate at which the lenders' flows (day, amount: the principal
/// out on day 0, repayments in) are worth nothing today, daily compounded:
/// Σ amount / (1 + r)^day = 0, by bisection. `None` when every flow is on
/// the disbursement day (no time passed: no rate).
fn daily_irr(flows: &[(i64, f64)]) -> Option<f64> {
    if flows.iter().all(|(t, _)| *t == 0) {
        return None;
    }
    let npv = |r: f64| {
        flows
            .iter()
            .map(|(t, a)| a / (1.0 + r).powf(*t as f64))
            .sum::<f64>()
    };
    let (mut lo, mut hi) = (-0.005, 0.005);
    assert!(
        npv(lo) >= 0.0 && npv(hi) <= 0.0,
        "the rate lies outside ±182% a year"
    );
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if npv(mid) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some((lo + hi) / 2.0)
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

/// Repayments: a payoff on the disbursement day or the day after, or shares
/// of the payoff (per mille) on random days.
fn path() -> impl Strategy<Value = Vec<(i64, i64)>> {
    prop_oneof![
        Just(vec![(1_000, 0)]),
        Just(vec![(1_000, 1)]),
        proptest::collection::vec((0i64..=1_000, 0i64..60), 0..8),
    ]
}

/// The borrower's all-in cost of a path as a nominal annual rate over a
/// 365-day year (the daily rate × 365, whatever the loan's day count: the
/// cap is on what a calendar year costs), basis points.
fn cost_bps(start: &LoanState, steps: &[testing::Step]) -> Option<f64> {
    let mut flows = vec![(0i64, -(start.principal() as f64))];
    for (day, amount, b) in steps {
        // What was paid beyond the payoff is owed back: not a cost.
        let kept = amount - b.allocation.overpaid;
        flows.push(((*day - start.disbursed_on).num_days(), kept as f64));
    }
    daily_irr(&flows).map(|r| r * 365.0 * 10_000.0)
}

#[test]
fn the_scheduled_path_costs_the_priced_rate() {
    let price = Pricing {
        rate_bps: 2_299,
        fee_bps: 100,
    };
    let l = loan(
        10_000_000,
        12,
        price,
        Method::EqualInstalment,
        d(2026, 1, 10),
        DayCount::Act365,
        3_000,
        Terms::default(),
    );
    // Each instalment paid on its due date.
    let mut loan_now = l.clone();
    let mut booked = Vec::new();
    for s in &l.insts {
        let b = repay(&loan_now, s.unpaid(), s.inst.due).unwrap();
        loan_now = b.after.clone();
        booked.push((s.inst.due, s.unpaid(), b));
    }
    assert!(loan_now.is_settled());
    let cost = cost_bps(&l, &booked).unwrap();
    // Monthly payments of simple interest at 23.99% a year: 23.76% a year
    // daily compounded.
    assert!((2_375.0..2_377.0).contains(&cost), "{cost}");
}

/// What ReserveFunding refuses would cost more than the cap: 23.99% all in
/// on ACT/360, paid off the day after its disbursement, costs 2,432 bps over
/// 365 days.
#[test]
fn a_price_the_cap_refuses_would_cost_more_than_the_cap() {
    let price = Pricing {
        rate_bps: 2_299,
        fee_bps: 100,
    };
    let check = |dc: DayCount| {
        let l = loan(
            10_000_000,
            12,
            price,
            Method::EqualInstalment,
            d(2026, 1, 10),
            dc,
            3_000,
            Terms::default(),
        );
        let done = walk(l.clone(), &[], Some(1));
        assert!(done.last().is_some_and(|s| s.2.after.is_settled()));
        (
            cost_bps(&l, &done).unwrap(),
            all_in_problem(price.rate_bps, price.fee_bps, dc, CAP_BPS),
        )
    };
    let (cost, problem) = check(DayCount::Act360);
    assert!((2_432.0..2_433.0).contains(&cost), "{cost}");
    assert!(problem.is_some());
    // The same price on ACT/365 is within the cap, and so is its cost.
    let (cost, problem) = check(DayCount::Act365);
    assert!(cost <= CAP_BPS as f64 + TOLERANCE_BPS, "{cost}");
    assert_eq!(problem, None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any loan priced within the cap as ReserveFunding checks it (over a
    /// 365-day year), repaid on any path (a payoff on day 0 or 1,
    /// prepayments of any size on any day, late instalments), costs the
    /// borrower no more than its price over that year, under the cap.
    #[test]
    fn no_repayment_path_costs_more_than_the_priced_rate(
        principal in 1_000_000i64..100_000_000,
        priced in 0i64..=CAP_BPS,
        fee_percent in 0i64..=100,
        n in 1i32..=36, m in method(), dc in dc(),
        steps in path(), last in 0i64..1_200,
    ) {
        // The nominal price (over the day-count year) whose cost over 365
        // days is `priced` or just below: up to the cap exactly.
        let all_in = priced * dc.basis() / 365;
        let fee_bps = all_in * fee_percent / 100;
        let price = Pricing { rate_bps: all_in - fee_bps, fee_bps };
        prop_assert_eq!(all_in_problem(price.rate_bps, price.fee_bps, dc, CAP_BPS), None);
        let a_year = (all_in * 365) as f64 / dc.basis() as f64;
        let start = loan(principal, n, price, m, d(2026, 1, 31), dc, 3_000, Terms::default());
        let done = walk(start.clone(), &steps, Some(last));
        let settled = done.last().is_some_and(|s| s.2.after.is_settled());
        prop_assert!(settled, "the path ends paid off");
        match cost_bps(&start, &done) {
            Some(cost) => {
                prop_assert!(cost <= a_year + TOLERANCE_BPS,
                    "cost {cost:.2} bps a year, priced {all_in} bps on {} ({a_year:.2} over 365 days)",
                    dc.name());
                prop_assert!(cost <= CAP_BPS as f64 + TOLERANCE_BPS, "cost {cost:.2} bps a year");
            }
            // Paid off the day it was disbursed: the principal back, nothing more.
            None => {
                let kept: i64 = done.iter().map(|(_, a, b)| a - b.allocation.overpaid).sum();
                prop_assert_eq!(kept, principal);
            }
        }
    }
}
