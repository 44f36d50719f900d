//! The postings of any repayment path: each balances for each funder, each
//! funder's income is the sum of its accruals, and a loan paid off leaves
//! no receivable behind.
use super::*;
use crate::domain::testing::{d, loan, walk};
use crate::domain::{InterestSplit, Party, Pricing};
use proptest::prelude::*;
use std::collections::BTreeMap;

type Books = BTreeMap<(&'static str, &'static str), i64>;

/// Posts `lines` (debit − credit per account), after checking they balance.
fn book(books: &mut Books, lines: &[Line]) -> Result<(), TestCaseError> {
    let lines = balanced(lines).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (funder, account, debit, credit) in lines {
        prop_assert!(
            debit >= 0 && credit >= 0,
            "{funder} {account} {debit} {credit}"
        );
        *books.entry((funder, account)).or_default() += debit - credit;
    }
    Ok(())
}

#[test]
fn a_negative_amount_is_posted_on_the_other_side() {
    let lines = accrual_lines("INTEREST", -3_961, 60_278).unwrap();
    let posted = balanced(&lines).unwrap();
    assert!(posted.contains(&("BANK", "INTEREST_RECEIVABLE", 0, 3_961)));
    assert!(posted.contains(&("BANK", "INTEREST_INCOME", 3_961, 0)));
    assert!(balanced(&[("BANK", "CASH", 1, 0)]).is_err());
    assert!(accrual_lines("PRINCIPAL", 1, 1).is_err());
}

proptest! {
    #[test]
    fn postings_balance_and_income_is_the_sum_of_accruals(
        p in 100_000i64..1_000_000_000, n in 1i32..=24, rate in 0i64..3_600, fee in 0i64..500,
        own in proptest::bool::ANY, residual_partner in proptest::bool::ANY,
        br in 0i64..3_000, pr in 0i64..3_000, share in 1_000i64..9_000,
        steps in proptest::collection::vec((0i64..=1_100, 0i64..75), 0..10), last in 0i64..800,
    ) {
        let terms = Terms {
            partner_share_bps: share, bank_rate_bps: br, partner_rate_bps: pr, fee_partner_bps: 4_000,
            interest_split: if own { InterestSplit::OwnRate } else { InterestSplit::ProRata },
            residual_party: if residual_partner { Party::Partner } else { Party::Bank },
            allow_negative_residual: true,
        };
        let start = loan(p, n, Pricing { rate_bps: rate, fee_bps: fee }, Method::EqualInstalment,
                         d(2026, 1, 31), DayCount::Act360, share, terms);
        let mut books = Books::new();
        book(&mut books, &[
            ("BANK", "LOANS_RECEIVABLE", start.split.bank, 0), ("BANK", "CASH", 0, start.split.bank),
            ("PARTNER", "LOANS_RECEIVABLE", start.split.partner, 0), ("PARTNER", "CASH", 0, start.split.partner),
        ])?;
        let done = walk(start.clone(), &steps, Some(last));
        let mut accrued: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (_, amount, b) in &done {
            for (what, part) in [("PENALTY", b.accrual.penalty), ("INTEREST", b.accrual.interest), ("FEE", b.accrual.fee)] {
                book(&mut books, &accrual_lines(what, part.bank, part.partner).unwrap())?;
                *accrued.entry(("BANK", what)).or_default() += part.bank;
                *accrued.entry(("PARTNER", what)).or_default() += part.partner;
            }
            let lines = repayment_lines(&b.allocation);
            let cash: i64 = lines.iter().filter(|l| l.1 == "CASH").map(|l| l.2).sum();
            prop_assert_eq!(cash, *amount);
            book(&mut books, &lines)?;
        }
        let at = |f: &'static str, a: &'static str| books.get(&(f, a)).copied().unwrap_or(0);
        for funder in ["BANK", "PARTNER"] {
            // Income (a credit balance) is what accrued for the funder.
            for (what, income) in [("INTEREST", "INTEREST_INCOME"), ("FEE", "FEE_INCOME"), ("PENALTY", "PENALTY_INCOME")] {
                prop_assert_eq!(-at(funder, income), accrued.get(&(funder, what)).copied().unwrap_or(0));
            }
        }
        let after = &done.last().map(|s| s.2.after.clone()).unwrap_or(start);
        prop_assert!(after.is_settled());
        // Paid off: nothing receivable is left, and each funder's cash is
        // its income and what was paid beyond the payoff.
        for funder in ["BANK", "PARTNER"] {
            for receivable in ["LOANS_RECEIVABLE", "INTEREST_RECEIVABLE", "FEE_RECEIVABLE", "PENALTY_RECEIVABLE"] {
                prop_assert_eq!(at(funder, receivable), 0, "{} {}", funder, receivable);
            }
            let income = at(funder, "INTEREST_INCOME") + at(funder, "FEE_INCOME") + at(funder, "PENALTY_INCOME");
            prop_assert_eq!(at(funder, "CASH"), -income - at(funder, "OVERPAYMENT_PAYABLE"));
        }
        prop_assert_eq!(-(at("BANK", "OVERPAYMENT_PAYABLE") + at("PARTNER", "OVERPAYMENT_PAYABLE")), after.overpaid);
    }
}
