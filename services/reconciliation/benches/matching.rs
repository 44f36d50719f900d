//! Criterion benchmark of reconciliation's matching: 100,000 transactions a
//! side, every one matched 1:1 (the common case), and the same with one
//! record in a hundred differing in amount.
//! Run: `cargo bench -p colend-reconciliation --bench matching`.
use colend_reconciliation::domain::matching::{Matcher, Pair, Tolerance};
use colend_reconciliation::domain::{Book, Kind, Rec};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const N: usize = 100_000;

fn side(n: usize, skew_every: usize) -> (Vec<Rec>, Vec<Rec>) {
    let rec = |i: usize, amount: i64| Rec {
        kind: if i.is_multiple_of(10) {
            Kind::Disbursement
        } else {
            Kind::Repayment
        },
        transaction_id: format!("TX{i:09}"),
        loan_id: format!("loan_{:08}", i / 10),
        value_date: 20_000,
        amount,
        bank_portion: amount - amount * 3 / 10,
        partner_portion: amount * 3 / 10,
        components: None,
        collected_by: Book::Bank,
        line: i as i64,
    };
    let left = (0..n).map(|i| rec(i, 100_000 + i as i64)).collect();
    let right = (0..n)
        .map(|i| {
            let skew = skew_every > 0 && i.is_multiple_of(skew_every);
            rec(i, 100_000 + i as i64 + if skew { 10 } else { 0 })
        })
        .collect();
    (left, right)
}

fn run(left: Vec<Rec>, right: Vec<Rec>) -> usize {
    let mut m = Matcher::new(Pair::BankPartner, Tolerance::default(), true);
    for (l, r) in left.into_iter().zip(right) {
        m.feed(true, l);
        m.feed(false, r);
    }
    m.finish().map_or(0, |o| o.breaks.len())
}

fn matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("matching");
    g.throughput(Throughput::Elements(2 * N as u64));
    g.sample_size(10);
    let clean = side(N, 0);
    g.bench_function("100k a side, all matched", |b| {
        b.iter_batched(|| clean.clone(), |(l, r)| run(l, r), BatchSize::LargeInput)
    });
    let skewed = side(N, 100);
    g.bench_function("100k a side, 1% amount breaks", |b| {
        b.iter_batched(|| skewed.clone(), |(l, r)| run(l, r), BatchSize::LargeInput)
    });
    g.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
