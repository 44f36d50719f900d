//! Daily accrual against independent oracles: the interest-bearing balance
//! replayed from the schedules in force (integer, per balance segment), and
//! each funder's own-rate interest in floating point.
use super::testing::{Step, d, loan, walk};
use super::*;
use proptest::prelude::*;

fn px(rate_bps: i64, fee_bps: i64) -> Pricing {
    Pricing { rate_bps, fee_bps }
}

fn terms(split: InterestSplit, residual: Party, bank_rate: i64, partner_rate: i64) -> Terms {
    Terms {
        partner_share_bps: 3_000,
        bank_rate_bps: bank_rate,
        partner_rate_bps: partner_rate,
        fee_partner_bps: 4_000,
        interest_split: split,
        residual_party: residual,
        allow_negative_residual: true,
    }
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

/// A repayment path: shares of the payoff (per mille) and days between.
fn path() -> impl Strategy<Value = Vec<(i64, i64)>> {
    proptest::collection::vec((0i64..=1_000, 0i64..75), 0..10)
}

/// Where the balance bears interest, replayed from the outside: over each
/// stretch between prepayments the schedule then in force says the balance
/// (the principal of the instalments not yet due) of each period. Pieces
/// `(from, to, balance)` cover every day from the disbursement to `end`;
/// a piece starts at a period's start or at a prepayment, as the loan's
/// balance segments do.
fn pieces(start: LoanState, steps: &[Step], end: NaiveDate) -> Vec<(NaiveDate, NaiveDate, i64)> {
    let mut stretches: Vec<(NaiveDate, Vec<(NaiveDate, i64)>)> = vec![(
        start.disbursed_on,
        start
            .insts
            .iter()
            .map(|s| (s.inst.due, s.inst.principal))
            .collect(),
    )];
    for (day, _, b) in steps {
        if b.allocation.prepaid > 0 {
            stretches.push((
                *day,
                b.after
                    .insts
                    .iter()
                    .map(|s| (s.inst.due, s.inst.principal))
                    .collect(),
            ));
        }
    }
    let mut out = Vec::new();
    for (i, (from, lines)) in stretches.iter().enumerate() {
        let to = stretches.get(i + 1).map_or(end, |s| s.0).min(end);
        let mut period_start = start.disbursed_on;
        for (k, (due, _)) in lines.iter().enumerate() {
            let (a, b) = (period_start.max(*from), (*due).min(to));
            if b > a {
                out.push((a, b, lines[k..].iter().map(|l| l.1).sum()));
            }
            period_start = *due;
        }
    }
    out
}

/// `balance × bps × days / (10000 × basis)`, rounded half up, in i128.
fn rounded(balance: i64, bps: i64, days: i64, basis: i64) -> i64 {
    let n = i128::from(balance) * i128::from(bps) * i128::from(days);
    let den = 10_000 * i128::from(basis);
    i64::try_from((2 * n + den) / (2 * den)).unwrap_or(i64::MAX)
}

fn accrued_sum(steps: &[Step], f: fn(&Accrual) -> FunderAmounts) -> FunderAmounts {
    steps
        .iter()
        .fold(FunderAmounts::default(), |acc, (_, _, b)| {
            let a = f(&b.accrual);
            FunderAmounts {
                bank: acc.bank + a.bank,
                partner: acc.partner + a.partner,
            }
        })
}

#[test]
fn daily_accruals_sum_to_each_instalment() {
    let l = loan(
        10_000_000,
        12,
        px(654, 100),
        Method::EqualInstalment,
        d(2026, 1, 10),
        DayCount::Act360,
        3_000,
        terms(InterestSplit::ProRata, Party::Bank, 0, 0),
    );
    let end = l.insts[2].inst.due;
    let mut day_by_day = l.clone();
    let mut day = l.disbursed_on;
    let mut daily = Vec::new();
    while day < end {
        day = day.succ_opt().unwrap();
        let a = accrue_to(&day_by_day, day);
        daily.push(a.interest.total());
        day_by_day = day_by_day.with_accrual(&a);
    }
    let once = accrue_to(&l, end);
    let three: i64 = l.insts[..3].iter().map(|s| s.inst.interest).sum();
    assert_eq!(daily.iter().sum::<i64>(), three);
    assert_eq!(once.interest.total(), three);
    // In the first period a day's accrual is 18.17 or 18.16 (100,000.00 ×
    // 6.54% / 360 = 18.1667, cumulative rounding), never more.
    assert!(
        daily[..31].iter().all(|x| (1_816..=1_817).contains(x)),
        "{daily:?}"
    );
    assert_eq!(daily[..31].iter().sum::<i64>(), l.insts[0].inst.interest);
    assert_eq!(day_by_day.accrued, l.with_accrual(&once).accrued);
    // Nothing goes back, and nothing accrues twice.
    assert_eq!(accrue_to(&day_by_day, d(2026, 1, 20)).interest.total(), 0);
    assert_eq!(accrue_to(&day_by_day, end).interest.total(), 0);
}

/// The second issue: bank 10%, partner 18%, split 70/30, borrower 6.54%,
/// over the first 31-day period of 100,000.00.
#[test]
fn each_funder_at_its_own_rate() {
    let at = |split: InterestSplit, residual: Party| {
        let l = loan(
            10_000_000,
            12,
            px(654, 100),
            Method::EqualInstalment,
            d(2026, 1, 10),
            DayCount::Act360,
            3_000,
            terms(split, residual, 1_000, 1_800),
        );
        accrue_to(&l, l.insts[0].inst.due).interest
    };
    // The rate-weighted split (loans booked before the agreement said):
    // 245.25 to the partner, 9.49% a year on its 30,000.00; 317.92 to the
    // bank, 5.27% on its 70,000.00.
    let rw = at(InterestSplit::RateWeighted, Party::Bank);
    assert_eq!((rw.bank, rw.partner), (31_792, 24_525));
    // Pro rata: each 6.54% on its principal.
    let pr = at(InterestSplit::ProRata, Party::Bank);
    assert_eq!((pr.bank, pr.partner), (56_317 - 16_895, 16_895));
    // Own rate: the partner exactly 18% on 30,000.00 for 31 days (465.00);
    // the bank the residual, 98.17 (1.63% on its 70,000.00).
    let own = at(InterestSplit::OwnRate, Party::Bank);
    assert_eq!((own.bank, own.partner), (9_817, 46_500));
    // With the partner as residual party, the bank has its 10% (602.78) and
    // the partner the residual, negative: it pays the bank 39.61.
    let own = at(InterestSplit::OwnRate, Party::Partner);
    assert_eq!((own.bank, own.partner), (60_278, -3_961));
    // Such a loan is refused unless the agreement allows a negative residual.
    let mut t = terms(InterestSplit::OwnRate, Party::Bank, 1_000, 1_800);
    t.allow_negative_residual = false;
    let sp = split(10_000_000, 3_000);
    let why = residual_problem(654, sp, &t).unwrap_or_default();
    assert!(why.contains("1240 bps"), "{why}");
    assert_eq!(residual_problem(1_240, sp, &t), None);
    assert!(residual_problem(1_239, sp, &t).is_some());
    t.allow_negative_residual = true;
    assert_eq!(residual_problem(654, sp, &t), None);
    t.interest_split = InterestSplit::ProRata;
    t.allow_negative_residual = false;
    assert_eq!(residual_problem(654, sp, &t), None);
}

/// Penalty interest accrues on what is overdue, from the date the loan is
/// accrued through, never twice, and rounded once within an overdue segment.
#[test]
fn penalty_accrues_only_after_the_date_it_was_accrued_to() {
    let mut l = loan(
        10_000_000,
        6,
        px(1_200, 100),
        Method::EqualInstalment,
        d(2026, 1, 15),
        DayCount::Act360,
        3_000,
        terms(InterestSplit::ProRata, Party::Bank, 0, 0),
    );
    l.penalty_rate_bps = 1_800;
    let due = l.insts[0].inst.due;
    let late = due + chrono::Duration::days(10);
    let a = accrue_to(&l, late);
    // Ten days at 18% ACT/360 on the whole first instalment.
    assert_eq!(
        a.penalty.total(),
        interest(l.insts[0].unpaid(), 1_800, 10, DayCount::Act360)
    );
    assert_eq!(
        a.penalty.partner,
        partner_principal_part(a.penalty.total(), l.split)
    );
    assert_eq!(a.penalty_through, late);
    let after = l.with_accrual(&a);
    assert_eq!(accrue_to(&after, late).penalty, FunderAmounts::default());
    // Cumulative within the overdue segment: ten days and then one post
    // what eleven days at once do.
    let more = accrue_to(&after, late + chrono::Duration::days(1));
    assert_eq!(
        a.penalty.total() + more.penalty.total(),
        interest(l.insts[0].unpaid(), 1_800, 11, DayCount::Act360)
    );
    let whole = interest(l.insts[0].unpaid(), 1_800, 11, DayCount::Act360);
    assert_eq!(after.with_accrual(&more).insts[0].penalty.accrued, whole);
}

/// Penalty accrued day by day against an independent computation: each
/// overdue segment's unpaid amount × 18% × its days / 365, rounded half up
/// once. The first instalment (due 15 February) is overdue; a part payment
/// on 1 March leaves part of it, which starts a new segment; the second
/// instalment is overdue from 15 March.
#[test]
fn daily_penalty_is_each_overdue_segment_rounded_once() {
    let mut l = loan(
        10_000_000,
        6,
        px(1_200, 100),
        Method::EqualInstalment,
        d(2026, 1, 15),
        DayCount::Act365,
        3_000,
        terms(InterestSplit::ProRata, Party::Bank, 0, 0),
    );
    l.penalty_rate_bps = 1_800;
    let (t1, t2) = (l.insts[0].unpaid(), l.insts[1].unpaid());
    let mut posted = FunderAmounts::default();
    let mut post = |l: &LoanState, a: &Accrual| {
        posted.bank += a.penalty.bank;
        posted.partner += a.penalty.partner;
        l.with_accrual(a)
    };
    let mut day = d(2026, 2, 15);
    while day < d(2026, 3, 1) {
        day = day.succ_opt().unwrap();
        l = post(&l, &accrue_to(&l, day));
    }
    // Fourteen days on the whole first instalment.
    let p1 = rounded(t1, 1_800, 14, 365);
    assert_eq!(l.accrued.penalty, p1);
    // 5,000.00 on 1 March: the penalty, then the first instalment's fee,
    // interest and part of its principal.
    let b = repay(&l, 500_000, day).unwrap();
    assert_eq!(b.accrual.penalty, FunderAmounts::default());
    assert_eq!(b.allocation.bank.penalty + b.allocation.partner.penalty, p1);
    let left = t1 - (500_000 - p1);
    assert_eq!(b.after.insts[0].unpaid(), left);
    assert_eq!(b.after.insts[0].penalty_from(), day);
    let after_first = b.after.clone();
    l = b.after;
    while day < d(2026, 3, 20) {
        day = day.succ_opt().unwrap();
        l = post(&l, &accrue_to(&l, day));
    }
    // Nineteen days on what was left of the first, five on the second.
    let whole = p1 + rounded(left, 1_800, 19, 365) + rounded(t2, 1_800, 5, 365);
    assert_eq!(l.accrued.penalty, whole);
    assert_eq!(posted.total(), whole);
    // Split by principal share (30%), floored, on the running total.
    assert_eq!(posted.partner, whole * 3 / 10);
    assert_eq!(l.accrued.partner_penalty, posted.partner);
    // Accrued once over the same days from the repayment: the same.
    let once = after_first.with_accrual(&accrue_to(&after_first, day));
    assert_eq!(once.accrued, l.accrued);
    assert_eq!(once.insts, l.insts);
}

/// A loan booked before daily accrual: its current instalment was accrued
/// whole, and stays payable in full (and is not re-cut by a prepayment).
#[test]
fn an_instalment_accrued_whole_before_keeps_the_earlier_rules() {
    let mut l = loan(
        10_000_000,
        6,
        px(1_200, 100),
        Method::EqualInstalment,
        d(2026, 1, 15),
        DayCount::Act360,
        3_000,
        terms(InterestSplit::RateWeighted, Party::Bank, 900, 1_100),
    );
    let first = l.insts[0].clone();
    l.insts[0].accrued_in_full = true;
    l.insts[0].interest_accrued = first.inst.interest;
    l.insts[0].fee_accrued = first.inst.fee;
    l.accrued.interest = first.inst.interest;
    l.accrued.partner_interest = partner_interest_part(first.inst.interest, l.split, &l.terms);
    l.accrued.fee = first.inst.fee;
    l.accrued.partner_fee = partner_fee_part(first.inst.fee, &l.terms);
    let day = d(2026, 1, 20);
    assert_eq!(accrue_to(&l, day).interest.total(), 0);
    let b = repay(&l, first.unpaid() + 1_000_000, day).unwrap();
    assert_eq!(b.allocation.instalments[0].principal, first.inst.principal);
    assert_eq!(b.allocation.prepaid, 1_000_000);
    assert_eq!(b.after.insts[0].inst, first.inst);
    // The next instalment is re-cut from its own period's start.
    assert_eq!(b.after.insts[1].segment.from, Some(first.inst.due));
    assert_eq!(b.after.insts[1].segment.interest_before, 0);
}

proptest! {
    /// Whatever the repayment path, the interest and fees posted by the
    /// accruals sum exactly to what accrues day by day on the balance the
    /// schedules in force say, rounded once per balance segment; and when
    /// the loan is paid off, to the interest and fees of its instalments.
    #[test]
    fn accruals_sum_to_the_interest_of_each_balance_segment(
        p in 100_000i64..1_000_000_000, n in 1i32..=24, rate in 0i64..3_600, fee in 0i64..500,
        m in method(), dc in dc(), steps in path(), last in 0i64..800, pay_off in proptest::bool::ANY,
    ) {
        let start = loan(p, n, px(rate, fee), m, d(2026, 1, 31), dc, 3_000,
                         terms(InterestSplit::ProRata, Party::Bank, 0, 0));
        let done = walk(start.clone(), &steps, pay_off.then_some(last));
        let end = done.last().map_or(start.disbursed_on, |s| s.0);
        let basis = dc.basis();
        let ps = pieces(start, &done, end);
        let want_i: i64 = ps.iter().map(|(a, b, bal)| rounded(*bal, rate, (*b - *a).num_days(), basis)).sum();
        let want_f: i64 = ps.iter().map(|(a, b, bal)| rounded(*bal, fee, (*b - *a).num_days(), basis)).sum();
        prop_assert_eq!(accrued_sum(&done, |a| a.interest).total(), want_i);
        prop_assert_eq!(accrued_sum(&done, |a| a.fee).total(), want_f);
        if let Some((_, _, b)) = done.last() && b.after.is_settled() {
            prop_assert_eq!(b.after.insts.iter().map(|s| s.inst.interest).sum::<i64>(), want_i);
            prop_assert_eq!(b.after.paid.interest, want_i);
            prop_assert_eq!(b.after.paid.fee, want_f);
        }
    }

    /// Accruing in any steps (an end-of-day run, or only at repayments)
    /// posts the same as accruing once, to each funder.
    #[test]
    fn accruing_in_steps_is_accruing_once(
        p in 100_000i64..1_000_000_000, n in 1i32..=24, rate in 0i64..3_600, m in method(), dc in dc(),
        own in proptest::bool::ANY, residual_partner in proptest::bool::ANY,
        br in 0i64..3_000, pr in 0i64..3_000, share in 1_000i64..9_000,
        stops in proptest::collection::vec(0i64..800, 1..8), penalty in 0i64..=10_000,
    ) {
        let split_kind = if own { InterestSplit::OwnRate } else { InterestSplit::ProRata };
        let residual = if residual_partner { Party::Partner } else { Party::Bank };
        let mut l = loan(p, n, px(rate, 100), m, d(2026, 1, 31), dc, share, terms(split_kind, residual, br, pr));
        l.penalty_rate_bps = penalty;
        let mut stops = stops;
        stops.sort_unstable();
        let mut stepped = l.clone();
        for s in &stops {
            let day = l.disbursed_on + chrono::Days::new(s.unsigned_abs());
            stepped = stepped.with_accrual(&accrue_to(&stepped, day));
        }
        let last = l.disbursed_on + chrono::Days::new(stops[stops.len() - 1].unsigned_abs());
        let once = l.with_accrual(&accrue_to(&l, last));
        prop_assert_eq!(&stepped.accrued, &once.accrued);
        prop_assert_eq!(stepped.accrued_through, last);
        prop_assert_eq!(&stepped, &once);
    }

    /// Accruing on any dates between repayments (end-of-day runs) posts
    /// exactly what accruing only at the repayments does, penalty included,
    /// to each funder: every repayment is allocated alike and leaves the
    /// loan alike, and accruing on to a later date in steps posts what
    /// accruing once to it does.
    #[test]
    fn runs_between_repayments_post_what_the_repayments_alone_do(
        p in 100_000i64..1_000_000_000, n in 1i32..=24, rate in 0i64..3_600, fee in 0i64..500,
        m in method(), dc in dc(), penalty in 0i64..=10_000,
        own in proptest::bool::ANY, residual_partner in proptest::bool::ANY,
        br in 0i64..3_000, pr in 0i64..3_000, share in 1_000i64..9_000,
        steps in path(), last in 0i64..400, pay_off in proptest::bool::ANY,
        runs in proptest::collection::vec(0i64..900, 0..40), beyond in 0i64..200,
    ) {
        let split_kind = if own { InterestSplit::OwnRate } else { InterestSplit::ProRata };
        let residual = if residual_partner { Party::Partner } else { Party::Bank };
        let mut start = loan(p, n, px(rate, fee), m, d(2026, 1, 31), dc, share, terms(split_kind, residual, br, pr));
        start.penalty_rate_bps = penalty;
        let reference = walk(start.clone(), &steps, pay_off.then_some(last));
        let mut runs: Vec<NaiveDate> =
            runs.iter().map(|r| start.disbursed_on + chrono::Days::new(r.unsigned_abs())).collect();
        runs.sort_unstable();
        let mut runs = runs.into_iter().peekable();
        let add = |sum: &mut [FunderAmounts; 3], a: &Accrual| {
            for (s, x) in sum.iter_mut().zip([a.penalty, a.interest, a.fee]) {
                s.bank += x.bank;
                s.partner += x.partner;
            }
        };
        let (mut twin, mut twin_posted) = (start.clone(), [FunderAmounts::default(); 3]);
        let mut reference_posted = [FunderAmounts::default(); 3];
        for (day, amount, booking) in &reference {
            while let Some(run) = runs.next_if(|r| r <= day) {
                let a = accrue_to(&twin, run);
                add(&mut twin_posted, &a);
                twin = twin.with_accrual(&a);
            }
            let b = repay(&twin, *amount, *day).unwrap();
            prop_assert_eq!(&b.allocation, &booking.allocation);
            add(&mut twin_posted, &b.accrual);
            add(&mut reference_posted, &booking.accrual);
            twin = b.after;
            prop_assert_eq!(&twin, &booking.after);
            prop_assert_eq!(twin_posted, reference_posted);
        }
        // On past the last repayment: the runs, then once to the end.
        let end = reference.last().map_or(start.disbursed_on, |s| s.0)
            .max(start.disbursed_on + chrono::Days::new(900))
            + chrono::Days::new(beyond.unsigned_abs());
        for run in runs {
            let a = accrue_to(&twin, run);
            add(&mut twin_posted, &a);
            twin = twin.with_accrual(&a);
        }
        let a = accrue_to(&twin, end);
        add(&mut twin_posted, &a);
        twin = twin.with_accrual(&a);
        let before = reference.last().map_or(start, |s| s.2.after.clone());
        let once = accrue_to(&before, end);
        add(&mut reference_posted, &once);
        prop_assert_eq!(twin_posted, reference_posted);
        prop_assert_eq!(&twin, &before.with_accrual(&once));
    }

    /// OWN_RATE: on any repayment path each funder earns its own rate on
    /// its part of the balance (an independent floating-point computation:
    /// balance × principal share × rate × days, within half a cent per
    /// balance segment), and the residual party the rest of the borrower's
    /// interest. PRO_RATA: the partner has its principal share of the
    /// interest, floored, on the running total.
    #[test]
    fn each_funder_earns_what_the_split_says(
        p in 100_000i64..1_000_000_000, n in 1i32..=24, rate in 0i64..3_600, m in method(), dc in dc(),
        br in 0i64..3_000, pr in 0i64..3_000, share in 1_000i64..9_000,
        own in proptest::bool::ANY, residual_partner in proptest::bool::ANY,
        steps in path(), last in 0i64..800,
    ) {
        let split_kind = if own { InterestSplit::OwnRate } else { InterestSplit::ProRata };
        let residual = if residual_partner { Party::Partner } else { Party::Bank };
        let start = loan(p, n, px(rate, 100), m, d(2026, 1, 31), dc, share, terms(split_kind, residual, br, pr));
        let done = walk(start.clone(), &steps, Some(last));
        let end = done.last().map_or(start.disbursed_on, |s| s.0);
        let posted = accrued_sum(&done, |a| a.interest);
        let total = posted.total();
        let sp = start.split;
        if own {
            let ps = pieces(start.clone(), &done, end);
            let basis = dc.basis() as f64;
            let own_of = |funder_amount: i64, r: i64| -> f64 {
                ps.iter().map(|(a, b, bal)| {
                    *bal as f64 * funder_amount as f64 / p as f64 * r as f64 / 10_000.0
                        * (*b - *a).num_days() as f64 / basis
                }).sum()
            };
            let tolerance = 0.5 * ps.len() as f64 + 1.0;
            let (bank_own, partner_own) = (own_of(sp.bank, br), own_of(sp.partner, pr));
            match residual {
                Party::Bank => prop_assert!((posted.partner as f64 - partner_own).abs() <= tolerance,
                    "partner {} vs {partner_own:.2} ± {tolerance}", posted.partner),
                Party::Partner => prop_assert!((posted.bank as f64 - bank_own).abs() <= tolerance,
                    "bank {} vs {bank_own:.2} ± {tolerance}", posted.bank),
            }
        } else {
            let want = i64::try_from(i128::from(total) * i128::from(sp.partner) / i128::from(p)).unwrap_or(0);
            prop_assert_eq!(posted.partner, want);
        }
        // When everything accrued is paid, each funder has been paid its accrual.
        if let Some((_, _, b)) = done.last() && b.after.is_settled() {
            prop_assert_eq!(b.after.paid.partner_interest, posted.partner);
            prop_assert_eq!(b.after.paid.interest, total);
        }
    }
}
