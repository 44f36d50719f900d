//! Reconciliation rules. Pure: no I/O, no generated types.
//!
//! - [`matching`]: the matcher that classifies every record of a day.
//! - [`file`]: the CSV file format both sides deliver, and the generator of
//!   paired files with planted breaks.
pub mod file;
pub mod matching;

pub use matching::{
    BreakItem, Class, MatchKind, Matcher, Outcome, Overflow, Pair, Reconciler, Settlement,
    SettlementLines, Tolerance,
};

/// Days since 0001-01-01 (proleptic Gregorian), as chrono counts them.
pub type Day = i32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Disbursement,
    Repayment,
    Fee,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Disbursement => "DISBURSEMENT",
            Kind::Repayment => "REPAYMENT",
            Kind::Fee => "FEE",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "DISBURSEMENT" => Some(Kind::Disbursement),
            "REPAYMENT" => Some(Kind::Repayment),
            "FEE" => Some(Kind::Fee),
            _ => None,
        }
    }
}

/// Whose books a record comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Book {
    Bank,
    Partner,
    Ledger,
}

impl Book {
    pub fn name(self) -> &'static str {
        match self {
            Book::Bank => "BANK",
            Book::Partner => "PARTNER",
            Book::Ledger => "LEDGER",
        }
    }

    pub fn parse(s: &str) -> Option<Book> {
        match s {
            "BANK" => Some(Book::Bank),
            "PARTNER" => Some(Book::Partner),
            "LEDGER" => Some(Book::Ledger),
            _ => None,
        }
    }
}

/// Names of the repayment components, in [`Rec::components`] order.
pub const COMPONENTS: [&str; 4] = ["principal", "interest", "fee", "penalty"];

/// One side's record of one money movement, amounts in minor units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub kind: Kind,
    pub transaction_id: String,
    pub loan_id: String,
    pub value_date: Day,
    pub amount: i64,
    pub bank_portion: i64,
    pub partner_portion: i64,
    /// Principal, interest, fee, penalty, when the side gives them.
    pub components: Option<[i64; 4]>,
    /// Who holds the cash: advanced a disbursement, collected a repayment or fee.
    pub collected_by: Book,
    /// Source line, 0 when unknown.
    pub line: i64,
}

impl Rec {
    /// The same movement as `other` in every field but the source line: a
    /// record sent again unchanged.
    pub fn same_movement(&self, other: &Rec) -> bool {
        self.kind == other.kind
            && self.transaction_id == other.transaction_id
            && self.loan_id == other.loan_id
            && self.value_date == other.value_date
            && self.amount == other.amount
            && self.bank_portion == other.bank_portion
            && self.partner_portion == other.partner_portion
            && self.components == other.components
            && self.collected_by == other.collected_by
    }

    /// The rules every record must satisfy before it is matched; the message
    /// says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        match self.problems().first() {
            None => Ok(()),
            Some((field, m)) => Err(format!("{field} {m}")),
        }
    }

    /// Every rule the record breaks: (field, what is wrong).
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut p = Vec::new();
        if self.transaction_id.is_empty() || self.transaction_id.len() > 64 {
            p.push(("transaction_id", "must be 1 to 64 characters"));
        }
        if self.loan_id.len() > 64 {
            p.push(("loan_id", "must be at most 64 characters"));
        }
        if self.amount < 0 || self.bank_portion < 0 || self.partner_portion < 0 {
            p.push(("amount", "amounts must not be negative"));
        } else if self.bank_portion.checked_add(self.partner_portion) != Some(self.amount) {
            p.push((
                "partner_portion",
                "bank_portion + partner_portion must equal amount",
            ));
        }
        if let Some(c) = self.components {
            let sum = c.iter().try_fold(0i64, |a, v| a.checked_add(*v));
            if c.iter().any(|v| *v < 0) {
                p.push(("components", "must not be negative"));
            } else if sum != Some(self.amount) {
                p.push((
                    "components",
                    "principal + interest + fee + penalty must equal amount",
                ));
            }
        }
        if self.collected_by == Book::Ledger {
            p.push(("collected_by", "must be BANK or PARTNER"));
        }
        p
    }
}

/// Whether `code` has the shape of a currency code: three upper-case ASCII
/// letters. Records stored with a break are read back with this check only
/// (an earlier version may have accepted a code the ISO 4217 table now
/// refuses, such as "RMB" or "XTS"); records sent to a run are checked
/// against the table.
pub fn currency_shaped(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// "YYYY-MM-DD" to a [`Day`], strictly.
pub fn parse_day(s: &str) -> Option<Day> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |a, c| {
            c.is_ascii_digit().then(|| a * 10 + u32::from(c - b'0'))
        })
    };
    let d = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    Some(chrono::Datelike::num_days_from_ce(&d))
}

/// A [`Day`] as "YYYY-MM-DD".
pub fn format_day(d: Day) -> String {
    let mut s = String::with_capacity(10);
    push_day(&mut s, d);
    s
}

/// Appends a [`Day`] as "YYYY-MM-DD".
pub fn push_day(out: &mut String, d: Day) {
    use chrono::Datelike;
    if let Some(d) = chrono::NaiveDate::from_num_days_from_ce_opt(d) {
        let (y, m, day) = (d.year(), d.month(), d.day());
        for v in [y / 1000 % 10, y / 100 % 10, y / 10 % 10, y % 10] {
            out.push(char::from(b'0' + v as u8));
        }
        out.push('-');
        out.push(char::from(b'0' + (m / 10) as u8));
        out.push(char::from(b'0' + (m % 10) as u8));
        out.push('-');
        out.push(char::from(b'0' + (day / 10) as u8));
        out.push(char::from(b'0' + (day % 10) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_reject_nonsense() {
        let d = parse_day("2026-11-23").unwrap();
        assert_eq!(format_day(d), "2026-11-23");
        assert_eq!(parse_day("2026-11-24").unwrap(), d + 1);
        assert_eq!(parse_day("2026-02-29"), None);
        assert_eq!(parse_day("2026-1-23"), None);
        assert_eq!(parse_day("2026-11-2x"), None);
    }

    #[test]
    fn a_currency_code_is_three_upper_case_letters() {
        for ok in ["CNY", "INR", "RMB", "XTS"] {
            assert!(currency_shaped(ok), "{ok}");
        }
        for bad in ["", "cny", "CN", "CNYY", "C1Y", "人民币"] {
            assert!(!currency_shaped(bad), "{bad}");
        }
    }
}
