//! Criterion benchmarks of funding's hot loops: the split of a principal,
//! a 36-month schedule, and a repayment on it (accrual, waterfall, re-cut).
//! Run: `cargo bench -p colend-funding --bench hot_loops`.
use chrono::NaiveDate;
use colend_funding::domain::{
    Accrued, DayCount, InstalmentState, InterestSplit, LoanState, Method, Paid, Party, Pricing,
    Terms, Waterfall, repay, schedule, split,
};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn hot_loops(c: &mut Criterion) {
    c.bench_function("split 1,000 principals", |b| {
        b.iter(|| {
            let mut sum = 0i64;
            for p in 0..1_000i64 {
                let s = split(black_box(10_000_000 + p * 1_237), black_box(3_000));
                sum += s.partner;
            }
            sum
        })
    });
    let start = NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
    let price = Pricing {
        rate_bps: 1_150,
        fee_bps: 100,
    };
    c.bench_function("schedule: 36 equal instalments", |b| {
        b.iter(|| {
            schedule(
                black_box(50_000_000),
                36,
                price,
                Method::EqualInstalment,
                start,
                DayCount::Act360,
            )
        })
    });
    let loan = LoanState {
        split: split(50_000_000, 3_000),
        terms: Terms {
            partner_share_bps: 3_000,
            bank_rate_bps: 900,
            partner_rate_bps: 1_100,
            fee_partner_bps: 5_000,
            interest_split: InterestSplit::OwnRate,
            residual_party: Party::Bank,
            allow_negative_residual: false,
        },
        price,
        method: Method::EqualInstalment,
        day_count: DayCount::Act360,
        penalty_rate_bps: 1_800,
        waterfall: Waterfall::default(),
        disbursed_on: start,
        insts: schedule(
            50_000_000,
            36,
            price,
            Method::EqualInstalment,
            start,
            DayCount::Act360,
        )
        .into_iter()
        .map(InstalmentState::new)
        .collect(),
        accrued: Accrued::default(),
        accrued_through: start,
        penalty_through: start,
        paid: Paid::default(),
        overpaid: 0,
    };
    let due = NaiveDate::from_ymd_opt(2026, 2, 15).unwrap();
    let first = loan.insts[0].unpaid();
    c.bench_function("repayment: accrue, one instalment, split per funder", |b| {
        b.iter(|| repay(&loan, black_box(first), due))
    });
    let mid = NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
    c.bench_function("repayment: a prepayment re-cutting 36 instalments", |b| {
        b.iter(|| repay(&loan, black_box(40_000_000), mid))
    });
}

criterion_group!(benches, hot_loops);
criterion_main!(benches);
