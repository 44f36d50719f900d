//! Matching and settlement. Pure: no I/O.
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Disbursement,
    Repayment,
}

/// One side's record of one money movement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub kind: Kind,
    pub transaction_id: String,
    pub loan_id: String,
    pub value_date: String,
    pub amount: i64,
    pub bank_portion: i64,
    pub partner_portion: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Matched,
    AmountMismatch,
    MissingOnBankSide,
    MissingOnPartnerSide,
    Duplicate,
}

impl Class {
    pub fn name(&self) -> &'static str {
        match self {
            Class::Matched => "MATCHED",
            Class::AmountMismatch => "AMOUNT_MISMATCH",
            Class::MissingOnBankSide => "MISSING_ON_BANK_SIDE",
            Class::MissingOnPartnerSide => "MISSING_ON_PARTNER_SIDE",
            Class::Duplicate => "DUPLICATE",
        }
    }
}

/// One classified transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub class: Class,
    pub transaction_id: String,
    pub loan_id: String,
    pub bank_amount: i64,
    pub partner_amount: i64,
    pub detail: String,
}

/// The day's net: positive when the partner owes the bank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    pub partner_disbursement_share: i64,
    pub partner_repayment_share: i64,
}

impl Settlement {
    pub fn partner_owes_bank(&self) -> i64 {
        self.partner_disbursement_share - self.partner_repayment_share
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub items: Vec<Item>,
    pub settlement: Settlement,
}

impl Outcome {
    /// (count, amount) per class.
    pub fn summary(&self) -> BTreeMap<Class, (i64, i64)> {
        let mut m = BTreeMap::new();
        for i in &self.items {
            let e = m.entry(i.class).or_insert((0, 0));
            e.0 += 1;
            e.1 += i.bank_amount.max(i.partner_amount);
        }
        m
    }

    pub fn breaks(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.class != Class::Matched)
    }
}

fn differences(b: &Rec, p: &Rec) -> Vec<&'static str> {
    let mut d = Vec::new();
    if b.kind != p.kind {
        d.push("kind");
    }
    if b.loan_id != p.loan_id {
        d.push("loan_id");
    }
    if b.amount != p.amount {
        d.push("amount");
    }
    if b.bank_portion != p.bank_portion {
        d.push("bank_portion");
    }
    if b.partner_portion != p.partner_portion {
        d.push("partner_portion");
    }
    if b.value_date != p.value_date {
        d.push("value_date");
    }
    d
}

/// Matches one-to-one by transaction id and classifies every transaction.
/// Settlement counts matched records only: the bank advances the whole
/// disbursement, so the partner owes its share; the bank collects
/// repayments, so it owes the partner the partner's share.
pub fn reconcile(bank: &[Rec], partner: &[Rec]) -> Outcome {
    let mut by_tx: BTreeMap<&str, (Vec<&Rec>, Vec<&Rec>)> = BTreeMap::new();
    for r in bank {
        by_tx.entry(&r.transaction_id).or_default().0.push(r);
    }
    for r in partner {
        by_tx.entry(&r.transaction_id).or_default().1.push(r);
    }
    let mut out = Outcome::default();
    for (tx, (b, p)) in by_tx {
        let first = b.first().or(p.first()).copied();
        let loan = first.map(|r| r.loan_id.clone()).unwrap_or_default();
        let sum = |v: &[&Rec]| v.iter().map(|r| r.amount).sum::<i64>();
        let (class, detail) = if b.len() > 1 || p.len() > 1 {
            (
                Class::Duplicate,
                format!(
                    "{} bank and {} partner records share the transaction id",
                    b.len(),
                    p.len()
                ),
            )
        } else if b.is_empty() {
            (Class::MissingOnBankSide, "no bank record".to_string())
        } else if p.is_empty() {
            (Class::MissingOnPartnerSide, "no partner record".to_string())
        } else {
            let d = differences(b[0], p[0]);
            if d.is_empty() {
                match b[0].kind {
                    Kind::Disbursement => {
                        out.settlement.partner_disbursement_share += b[0].partner_portion
                    }
                    Kind::Repayment => {
                        out.settlement.partner_repayment_share += b[0].partner_portion
                    }
                }
                (Class::Matched, String::new())
            } else {
                (
                    Class::AmountMismatch,
                    format!("differs in {}", d.join(", ")),
                )
            }
        };
        out.items.push(Item {
            class,
            transaction_id: tx.to_string(),
            loan_id: loan,
            bank_amount: sum(&b),
            partner_amount: sum(&p),
            detail,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, tx: &str, amount: i64, partner: i64) -> Rec {
        Rec {
            kind,
            transaction_id: tx.into(),
            loan_id: "L1".into(),
            value_date: "2026-11-23".into(),
            amount,
            bank_portion: amount - partner,
            partner_portion: partner,
        }
    }

    #[test]
    fn classifies_every_kind_of_break() {
        let bank = vec![
            rec(Kind::Disbursement, "d1", 100_000, 30_000),
            rec(Kind::Repayment, "r1", 10_000, 3_100),
            rec(Kind::Repayment, "r2", 5_000, 1_500),
            rec(Kind::Repayment, "r3", 5_000, 1_500),
            rec(Kind::Repayment, "r4", 5_000, 1_500),
            rec(Kind::Repayment, "r4", 5_000, 1_500),
        ];
        let partner = vec![
            rec(Kind::Disbursement, "d1", 100_000, 30_000),
            rec(Kind::Repayment, "r1", 10_000, 3_100),
            rec(Kind::Repayment, "r2", 5_001, 1_501),
            rec(Kind::Repayment, "r5", 7_000, 2_100),
            rec(Kind::Repayment, "r4", 5_000, 1_500),
        ];
        let o = reconcile(&bank, &partner);
        let s = o.summary();
        assert_eq!(s[&Class::Matched].0, 2);
        assert_eq!(s[&Class::AmountMismatch].0, 1);
        assert_eq!(s[&Class::MissingOnPartnerSide].0, 1);
        assert_eq!(s[&Class::MissingOnBankSide].0, 1);
        assert_eq!(s[&Class::Duplicate].0, 1);
        assert_eq!(o.breaks().count(), 4);
        assert_eq!(o.settlement.partner_owes_bank(), 30_000 - 3_100);
    }
}
