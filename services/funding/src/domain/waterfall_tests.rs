//! The allocator pays every waterfall order an agreement may state exactly
//! as stated: `allocate` against a reference that lays out every claim on
//! the loan in the stated order and pours the repayment into them, first
//! claim first.
use super::*;
use chrono::NaiveDate;
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    Penalty,
    /// (instalment index, component)
    Instalment(usize, Bucket),
    /// Principal of instalments not yet payable.
    Prepayment,
}

/// What the reference pays of each component.
#[derive(Debug, Default, PartialEq, Eq)]
struct Paid4 {
    penalty: i64,
    fee: i64,
    interest: i64,
    principal: i64,
    prepaid: i64,
    /// (sequence, principal, interest, fee) of each instalment paid on.
    instalments: Vec<(i32, i64, i64, i64)>,
}

/// The order as a bank states it; three components without FEE take fees
/// just before interest (as documented for agreements written before fees).
fn stated_with_fee(stated: &[Bucket]) -> Vec<Bucket> {
    let mut v = stated.to_vec();
    if !v.contains(&Bucket::Fee)
        && let Some(at) = v.iter().position(|b| *b == Bucket::Interest)
    {
        v.insert(at, Bucket::Fee);
    }
    v
}

/// The reference: penalty stated first is paid before everything; stated
/// last, after every payable instalment; each payable instalment (due by the
/// value date, and the current period's), oldest first, pays its components
/// in the stated order; what is left prepays later principal. `None` when
/// the amount is more than every claim.
fn reference(
    amount: i64,
    value_date: NaiveDate,
    insts: &[InstalmentState],
    penalty_due: i64,
    stated: &[Bucket],
) -> Option<Paid4> {
    let order = stated_with_fee(stated);
    let due_by_then = insts.iter().filter(|s| s.inst.due <= value_date).count();
    let payable = (due_by_then + 1).min(insts.len());
    let mut claims: Vec<(Claim, i64)> = Vec::new();
    if order.first() == Some(&Bucket::Penalty) {
        claims.push((Claim::Penalty, penalty_due));
    }
    for (i, s) in insts.iter().enumerate().take(payable) {
        for b in order.iter().filter(|b| **b != Bucket::Penalty) {
            let owed = match b {
                Bucket::Fee => s.inst.fee - s.fee_paid,
                Bucket::Interest => s.inst.interest - s.interest_paid,
                Bucket::Principal => s.inst.principal - s.principal_paid,
                Bucket::Penalty => unreachable!(),
            };
            claims.push((Claim::Instalment(i, *b), owed));
        }
    }
    if order.last() == Some(&Bucket::Penalty) {
        claims.push((Claim::Penalty, penalty_due));
    }
    let later: i64 = insts[payable..]
        .iter()
        .map(|s| s.inst.principal - s.principal_paid)
        .sum();
    claims.push((Claim::Prepayment, later));
    if amount > claims.iter().map(|c| c.1).sum::<i64>() {
        return None;
    }
    let mut left = amount;
    let mut out = Paid4::default();
    let mut per: Vec<(i64, i64, i64)> = vec![(0, 0, 0); insts.len()];
    for (claim, owed) in claims {
        let take = left.min(owed);
        left -= take;
        match claim {
            Claim::Penalty => out.penalty += take,
            Claim::Prepayment => out.prepaid += take,
            Claim::Instalment(i, b) => match b {
                Bucket::Fee => per[i].2 += take,
                Bucket::Interest => per[i].1 += take,
                Bucket::Principal => per[i].0 += take,
                Bucket::Penalty => unreachable!(),
            },
        }
    }
    for (i, (p, int, fee)) in per.into_iter().enumerate() {
        out.principal += p;
        out.interest += int;
        out.fee += fee;
        if p > 0 || int > 0 || fee > 0 {
            out.instalments.push((insts[i].inst.seq, p, int, fee));
        }
    }
    out.principal += out.prepaid;
    Some(out)
}

/// Every order an agreement may state: the four components or the three
/// without FEE, each once, with PENALTY first or last.
fn accepted_orders() -> Vec<Vec<Bucket>> {
    use Bucket::*;
    let mut out = Vec::new();
    let rest = [Fee, Interest, Principal];
    for a in 0..3 {
        for b in 0..3 {
            for c in 0..3 {
                if a == b || b == c || a == c {
                    continue;
                }
                let mid = [rest[a], rest[b], rest[c]];
                let three: Vec<Bucket> = mid.iter().copied().filter(|x| *x != Fee).collect();
                let mut first = vec![Penalty];
                first.extend(mid);
                let mut last = mid.to_vec();
                last.push(Penalty);
                out.push(first);
                out.push(last);
                if a == 0 {
                    // FEE first among the three: each three-form once.
                    let mut f3 = vec![Penalty];
                    f3.extend(three.iter().copied());
                    let mut l3 = three.clone();
                    l3.push(Penalty);
                    out.push(f3);
                    out.push(l3);
                }
            }
        }
    }
    out
}

fn names(order: &[Bucket]) -> String {
    order
        .iter()
        .map(|b| match b {
            Bucket::Penalty => "PENALTY",
            Bucket::Fee => "FEE",
            Bucket::Interest => "INTEREST",
            Bucket::Principal => "PRINCIPAL",
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn orders_are_accepted_when_penalty_is_first_or_last() {
    let orders = accepted_orders();
    assert_eq!(orders.len(), 16);
    for o in &orders {
        let w = Waterfall::parse(&names(o)).unwrap();
        assert!(waterfall_supported(&w), "{o:?}");
        assert_eq!(w.0.to_vec(), stated_with_fee(o));
    }
    for middle in [
        "INTEREST,PENALTY,PRINCIPAL",
        "FEE,PENALTY,INTEREST,PRINCIPAL",
        "FEE,INTEREST,PENALTY,PRINCIPAL",
    ] {
        assert!(
            !waterfall_supported(&Waterfall::parse(middle).unwrap()),
            "{middle}"
        );
    }
    assert!(waterfall_supported(&Waterfall::default()));
}

/// A loan part-way through its life: instalments with random amounts, some
/// partly paid.
fn loan() -> impl Strategy<Value = Vec<InstalmentState>> {
    proptest::collection::vec(
        (
            0i64..2_000_000,
            0i64..200_000,
            0i64..50_000,
            0u32..=100,
            0u32..=100,
            0u32..=100,
        ),
        1..10,
    )
    .prop_map(|v| {
        let start = NaiveDate::from_ymd_opt(2026, 1, 10).unwrap_or_default();
        v.into_iter()
            .enumerate()
            .map(|(i, (p, int, fee, pp, ip, fp))| {
                let seq = i32::try_from(i).unwrap_or(0) + 1;
                let part = |whole: i64, pct: u32| {
                    // Most instalments untouched, some partly or fully paid.
                    if pct < 60 {
                        0
                    } else {
                        whole * i64::from(pct - 60) / 40
                    }
                };
                InstalmentState {
                    inst: Instalment {
                        seq,
                        due: start + chrono::Months::new(seq.unsigned_abs()),
                        principal: p,
                        interest: int,
                        fee,
                    },
                    principal_paid: part(p, pp),
                    interest_paid: part(int, ip),
                    fee_paid: part(fee, fp),
                    ..Default::default()
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_accepted_order_is_applied_as_stated(
        insts in loan(),
        days in 0i64..330,
        penalty_due in prop_oneof![Just(0i64), 0i64..300_000],
        which in 0usize..16,
        fraction in 0u32..=1_100,
        share in 3_000i64..=9_999,
    ) {
        let order = accepted_orders()[which].clone();
        let waterfall = Waterfall::parse(&names(&order)).unwrap_or_default();
        let value_date = NaiveDate::from_ymd_opt(2026, 1, 10).unwrap_or_default() + chrono::Days::new(days.unsigned_abs());
        let owed: i64 = penalty_due
            + insts.iter().map(|s| s.unpaid()).sum::<i64>();
        // From a cent to a little more than everything owed.
        let amount = (owed * i64::from(fraction) / 1_000).max(1);
        let split = split(10_000_000, share);
        let terms = Terms { partner_share_bps: share, bank_rate_bps: 900, partner_rate_bps: 1_100, fee_partner_bps: 4_000, ..Default::default() };
        let loan = testing::owing_whole_periods(&insts, value_date, split, terms, penalty_due, waterfall);
        let a = allocate(&loan, amount, value_date)
            .map_err(|e| TestCaseError::fail(format!("allocate refused {amount}: {e:?}")))?;
        // What is paid before the overpayment is what the stated order
        // gives, and the overpayment starts exactly past everything owed.
        let paid = amount - a.overpaid;
        let w = reference(paid, value_date, &insts, penalty_due, &order)
            .ok_or_else(|| TestCaseError::fail(format!("{paid} is more than the reference owes")))?;
        prop_assert!(
            a.overpaid == 0 || reference(paid + 1, value_date, &insts, penalty_due, &order).is_none(),
            "{} overpaid though more was owed", a.overpaid
        );
        let total = |f: fn(&Parts) -> i64| f(&a.bank) + f(&a.partner);
        prop_assert_eq!(total(|p| p.penalty), w.penalty, "penalty under {:?}", order);
        prop_assert_eq!(total(|p| p.fee), w.fee, "fee under {:?}", order);
        prop_assert_eq!(total(|p| p.interest), w.interest, "interest under {:?}", order);
        prop_assert_eq!(total(|p| p.principal), w.principal, "principal under {:?}", order);
        prop_assert_eq!(a.prepaid, w.prepaid, "prepaid under {:?}", order);
        let per: Vec<(i32, i64, i64, i64)> = a
            .instalments
            .iter()
            .map(|x| (x.seq, x.principal, x.interest, x.fee))
            .collect();
        prop_assert_eq!(per, w.instalments, "instalments under {:?}", order);
        prop_assert_eq!(a.bank.total() + a.partner.total(), amount);
    }
}
