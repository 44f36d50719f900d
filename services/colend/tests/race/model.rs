//! The sequential model the concurrency suite compares funding's books
//! with: a loan replayed one repayment at a time through the pure servicing
//! domain (`colend_funding::domain`), and the double-entry postings each
//! accepted operation makes, per funder and account.
use chrono::NaiveDate;
use colend_contracts::common::v1::{Funder, Money, RepaymentMethod};
use colend_contracts::funding::v1 as fund;
use colend_funding::domain::{
    self, Accrued, Allocation, Bucket, DayCount, Instalment, InstalmentState, InterestSplit,
    LoanState, Method, Paid, Party, Pricing, Split, Terms, Waterfall,
};
use colend_platform::time::parse_date;
use std::collections::BTreeMap;

pub fn minor(m: &Option<Money>) -> i64 {
    m.as_ref().map(|m| m.minor_units).unwrap_or(0)
}

/// Debits and credits per (funder, account).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger(pub BTreeMap<(String, String), (i64, i64)>);

impl Ledger {
    fn post(&mut self, lines: &[(&str, &str, i64, i64)]) {
        for (funder, account, d, c) in lines {
            if *d == 0 && *c == 0 {
                continue;
            }
            // A negative amount is posted on the other side, as funding does.
            let (d, c) = (*d, *c);
            let (d, c) = (d.max(0) - c.min(0), c.max(0) - d.min(0));
            let e = self
                .0
                .entry((funder.to_string(), account.to_string()))
                .or_default();
            e.0 += d;
            e.1 += c;
        }
    }

    /// A disbursement: each funder's receivable against cash.
    pub fn disbursement(&mut self, bank: i64, partner: i64) {
        self.post(&[
            ("BANK", "LOANS_RECEIVABLE", bank, 0),
            ("BANK", "CASH", 0, bank),
            ("PARTNER", "LOANS_RECEIVABLE", partner, 0),
            ("PARTNER", "CASH", 0, partner),
        ]);
    }

    pub fn add(&mut self, other: &Ledger) {
        for (k, (d, c)) in &other.0 {
            let e = self.0.entry(k.clone()).or_default();
            e.0 += d;
            e.1 += c;
        }
    }

    pub fn sub(&mut self, other: &Ledger) {
        for (k, (d, c)) in &other.0 {
            let e = self.0.entry(k.clone()).or_default();
            e.0 -= d;
            e.1 -= c;
        }
        self.0.retain(|_, v| *v != (0, 0));
    }

    /// The ledger a trial balance reports.
    pub fn from_trial_balance(tb: &fund::GetTrialBalanceResponse) -> Ledger {
        let mut l = Ledger::default();
        for b in &tb.balances {
            let funder = if b.funder == Funder::Bank as i32 {
                "BANK"
            } else {
                "PARTNER"
            };
            l.post(&[(funder, &b.account, minor(&b.debits), minor(&b.credits))]);
        }
        l
    }

    /// Lines where `self` and `other` differ.
    pub fn diff(&self, other: &Ledger) -> Vec<String> {
        let mut keys: Vec<&(String, String)> = self.0.keys().chain(other.0.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| {
                let a = self.0.get(k).copied().unwrap_or_default();
                let b = other.0.get(k).copied().unwrap_or_default();
                (a != b).then(|| {
                    format!(
                        "{}/{}: booked debits {} credits {}, model {} / {}",
                        k.0, k.1, a.0, a.1, b.0, b.1
                    )
                })
            })
            .collect()
    }
}

/// One funder's figures as GetLoan reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    pub principal_outstanding: i64,
    pub interest_accrued: i64,
    pub interest_paid: i64,
    pub fee_accrued: i64,
    pub fee_paid: i64,
    pub penalty_accrued: i64,
    pub penalty_paid: i64,
}

/// Bank's and partner's balances of a loan as reported.
pub fn reported(l: &fund::Loan) -> [Balances; 2] {
    let of = |f: Funder| {
        l.balances
            .iter()
            .find(|b| b.funder == f as i32)
            .map(|b| Balances {
                principal_outstanding: minor(&b.principal_outstanding),
                interest_accrued: minor(&b.interest_accrued),
                interest_paid: minor(&b.interest_paid),
                fee_accrued: minor(&b.fee_accrued),
                fee_paid: minor(&b.fee_paid),
                penalty_accrued: minor(&b.penalty_accrued),
                penalty_paid: minor(&b.penalty_paid),
            })
            .unwrap_or_default()
    };
    [of(Funder::Bank), of(Funder::Partner)]
}

/// (funder, component) → amount, in one order for comparison.
pub type Allocations = BTreeMap<(i32, i32), i64>;

pub fn allocations_of(r: &fund::Repayment) -> Allocations {
    let mut m = Allocations::new();
    for a in &r.allocations {
        *m.entry((a.funder, a.component)).or_default() += minor(&a.amount);
    }
    m.retain(|_, v| *v != 0);
    m
}

/// Principal allocated by a repayment, both funders.
pub fn principal_of(r: &fund::Repayment) -> i64 {
    r.allocations
        .iter()
        .filter(|a| a.component == fund::Component::Principal as i32)
        .map(|a| minor(&a.amount))
        .sum()
}

/// A disbursed loan, serviced one repayment at a time through the domain.
#[derive(Clone, Debug)]
pub struct LoanModel {
    state: LoanState,
    /// The postings of the repayments booked so far.
    pub ledger: Ledger,
}

fn bucket(c: i32) -> Option<Bucket> {
    match fund::Component::try_from(c) {
        Ok(fund::Component::Penalty) => Some(Bucket::Penalty),
        Ok(fund::Component::Fee) => Some(Bucket::Fee),
        Ok(fund::Component::Interest) => Some(Bucket::Interest),
        Ok(fund::Component::Principal) => Some(Bucket::Principal),
        _ => None,
    }
}

impl LoanModel {
    /// The loan as BookDisbursement answered it (schedule, split, terms).
    pub fn new(l: &fund::Loan) -> Result<LoanModel, String> {
        let date = |s: &str| parse_date(s).ok_or_else(|| format!("bad date {s:?}"));
        let insts = l
            .schedule
            .iter()
            .map(|i| {
                Ok(InstalmentState::new(Instalment {
                    seq: i.sequence,
                    due: date(&i.due_date)?,
                    principal: minor(&i.principal),
                    interest: minor(&i.interest),
                    fee: minor(&i.fee),
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let waterfall = if l.waterfall.is_empty() {
            Waterfall::default()
        } else {
            let v: Vec<Bucket> = l.waterfall.iter().filter_map(|c| bucket(*c)).collect();
            if v.len() != 4 {
                return Err(format!("waterfall {:?}", l.waterfall));
            }
            Waterfall([v[0], v[1], v[2], v[3]])
        };
        let disbursed_on = date(&l.disbursed_on)?;
        let interest_split = match fund::InterestSplit::try_from(l.interest_split) {
            Ok(fund::InterestSplit::OwnRate) => InterestSplit::OwnRate,
            Ok(fund::InterestSplit::RateWeighted) => InterestSplit::RateWeighted,
            _ => InterestSplit::ProRata,
        };
        Ok(LoanModel {
            state: LoanState {
                split: Split {
                    bank: minor(&l.bank_amount),
                    partner: minor(&l.partner_amount),
                },
                terms: Terms {
                    partner_share_bps: l.partner_share_bps as i64,
                    bank_rate_bps: l.bank_rate_bps as i64,
                    partner_rate_bps: l.partner_rate_bps as i64,
                    fee_partner_bps: l.fee_partner_share_bps as i64,
                    interest_split,
                    residual_party: if l.residual_party == Funder::Partner as i32 {
                        Party::Partner
                    } else {
                        Party::Bank
                    },
                    allow_negative_residual: l.allow_negative_residual,
                },
                price: Pricing {
                    rate_bps: l.annual_rate_bps as i64,
                    fee_bps: l.annual_fee_bps as i64,
                },
                method: match RepaymentMethod::try_from(l.repayment_method) {
                    Ok(RepaymentMethod::EqualPrincipal) => Method::EqualPrincipal,
                    Ok(RepaymentMethod::InterestFirst) => Method::InterestFirst,
                    _ => Method::EqualInstalment,
                },
                day_count: if l.day_count == fund::DayCount::Act365 as i32 {
                    DayCount::Act365
                } else {
                    DayCount::Act360
                },
                penalty_rate_bps: l.penalty_rate_bps as i64,
                waterfall,
                disbursed_on,
                insts,
                accrued: Accrued::default(),
                accrued_through: disbursed_on,
                penalty_through: disbursed_on,
                paid: Paid::default(),
                overpaid: 0,
            },
            ledger: Ledger::default(),
        })
    }

    /// The most that can be paid on `value_date` (accruals included).
    pub fn payoff(&self, value_date: NaiveDate) -> i64 {
        domain::payoff(&self.state, value_date).unwrap_or(0)
    }

    /// Principal still owed, both funders.
    pub fn outstanding(&self) -> i64 {
        self.state.principal() - self.state.paid.principal
    }

    fn accrual(&mut self, what: &str, bank: i64, partner: i64) {
        let (receivable, income) = (format!("{what}_RECEIVABLE"), format!("{what}_INCOME"));
        self.ledger.post(&[
            ("BANK", &receivable, bank, 0),
            ("BANK", &income, 0, bank),
            ("PARTNER", &receivable, partner, 0),
            ("PARTNER", &income, 0, partner),
        ]);
    }

    /// Books one repayment as BookRepayment does (accrual to the value
    /// date, waterfall, re-cut); its allocations, or why the model refuses it.
    pub fn repay(&mut self, amount: i64, value_date: NaiveDate) -> Result<Allocations, String> {
        let b = domain::repay(&self.state, amount, value_date).map_err(|e| e.to_string())?;
        for (what, part) in [
            ("PENALTY", b.accrual.penalty),
            ("INTEREST", b.accrual.interest),
            ("FEE", b.accrual.fee),
        ] {
            if part.bank != 0 || part.partner != 0 {
                self.accrual(what, part.bank, part.partner);
            }
        }
        let a: &Allocation = &b.allocation;
        self.ledger.post(&[
            ("BANK", "CASH", a.bank.total(), 0),
            ("BANK", "LOANS_RECEIVABLE", 0, a.bank.principal),
            ("BANK", "INTEREST_RECEIVABLE", 0, a.bank.interest),
            ("BANK", "FEE_RECEIVABLE", 0, a.bank.fee),
            ("BANK", "PENALTY_RECEIVABLE", 0, a.bank.penalty),
            ("BANK", "OVERPAYMENT_PAYABLE", 0, a.bank.overpayment),
            ("PARTNER", "CASH", a.partner.total(), 0),
            ("PARTNER", "LOANS_RECEIVABLE", 0, a.partner.principal),
            ("PARTNER", "INTEREST_RECEIVABLE", 0, a.partner.interest),
            ("PARTNER", "FEE_RECEIVABLE", 0, a.partner.fee),
            ("PARTNER", "PENALTY_RECEIVABLE", 0, a.partner.penalty),
            ("PARTNER", "OVERPAYMENT_PAYABLE", 0, a.partner.overpayment),
        ]);
        let mut out = Allocations::new();
        for (funder, parts) in [(Funder::Bank, a.bank), (Funder::Partner, a.partner)] {
            for (c, v) in [
                (fund::Component::Penalty, parts.penalty),
                (fund::Component::Fee, parts.fee),
                (fund::Component::Interest, parts.interest),
                (fund::Component::Principal, parts.principal),
                (fund::Component::Overpayment, parts.overpayment),
            ] {
                if v != 0 {
                    out.insert((funder as i32, c as i32), v);
                }
            }
        }
        self.state = b.after;
        Ok(out)
    }

    /// The balances GetLoan should report for each funder (bank, partner).
    pub fn balances(&self) -> [Balances; 2] {
        let (p, a, split) = (&self.state.paid, &self.state.accrued, self.state.split);
        let out = |principal: i64, paid_p, ia, ip, fa, fp, pa, pp| Balances {
            principal_outstanding: principal - paid_p,
            interest_accrued: ia,
            interest_paid: ip,
            fee_accrued: fa,
            fee_paid: fp,
            penalty_accrued: pa,
            penalty_paid: pp,
        };
        [
            out(
                split.bank,
                p.principal - p.partner_principal,
                a.interest - a.partner_interest,
                p.interest - p.partner_interest,
                a.fee - a.partner_fee,
                p.fee - p.partner_fee,
                a.penalty - a.partner_penalty,
                p.penalty - p.partner_penalty,
            ),
            out(
                split.partner,
                p.partner_principal,
                a.partner_interest,
                p.partner_interest,
                a.partner_fee,
                p.partner_fee,
                a.partner_penalty,
                p.partner_penalty,
            ),
        ]
    }
}

/// Replays `booked` (amount, value date, reported allocations) in the
/// order given, then in every other order (at most 4! = 24) when that one
/// does not reproduce them: the books are serialisable when some serial
/// order of the accepted repayments yields exactly the allocations booked
/// and the balances reported. Returns the model after that order and
/// whether it was the booked order itself.
pub fn serialise(
    start: &LoanModel,
    booked: &[(i64, NaiveDate, Allocations)],
    reported_balances: &[Balances; 2],
) -> Result<(LoanModel, bool), String> {
    let n = booked.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut first_problem = None;
    let mut tried = 0;
    loop {
        tried += 1;
        let mut m = start.clone();
        let mut problem = None;
        for &i in &order {
            let (amount, date, want) = &booked[i];
            match m.repay(*amount, *date) {
                Ok(got) if &got == want => {}
                Ok(got) => {
                    problem = Some(format!(
                        "repayment #{i} of {amount}: booked allocations {want:?}, model {got:?}"
                    ));
                    break;
                }
                Err(e) => {
                    problem = Some(format!("repayment #{i} of {amount}: model refuses: {e}"));
                    break;
                }
            }
        }
        if problem.is_none() && &m.balances() != reported_balances {
            problem = Some(format!(
                "balances reported {reported_balances:?}, model {:?}",
                m.balances()
            ));
        }
        match problem {
            None => return Ok((m, tried == 1)),
            Some(p) => {
                first_problem.get_or_insert(p);
            }
        }
        if n > 4 || !next_permutation(&mut order) {
            return Err(first_problem.unwrap_or_default());
        }
    }
}

fn next_permutation(v: &mut [usize]) -> bool {
    let n = v.len();
    if n < 2 {
        return false;
    }
    let mut i = n - 1;
    while i > 0 && v[i - 1] >= v[i] {
        i -= 1;
    }
    if i == 0 {
        return false;
    }
    let mut j = n - 1;
    while v[j] <= v[i - 1] {
        j -= 1;
    }
    v.swap(i - 1, j);
    v[i..].reverse();
    true
}
