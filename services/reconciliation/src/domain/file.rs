//! The daily file each side delivers, and a generator of paired files with
//! planted breaks.
//!
//! CSV, comma-separated, with this header (amounts in the currency's major
//! unit with at most two decimals, exact; components may be left empty;
//! `collected_by` empty means BANK):
//!
//! ```text
//! transaction_id,loan_id,kind,value_date,currency,amount,bank_portion,partner_portion,principal,interest,fee,penalty,collected_by
//! TX000001,LN000001,REPAYMENT,2026-11-23,CNY,1050.00,735.00,315.00,1000.00,45.00,5.00,0.00,BANK
//! ```
use super::{Book, Day, Kind, Rec, format_day, parse_day};
use std::fmt::Write as _;

pub const HEADER: &str = "transaction_id,loan_id,kind,value_date,currency,amount,bank_portion,partner_portion,principal,interest,fee,penalty,collected_by";
const COLUMNS: usize = 13;

/// "1234.56", "1234.5" or "1234" to minor units (two decimals), exactly.
pub fn parse_amount(s: &[u8]) -> Option<i64> {
    let (int, frac) = match s.iter().position(|c| *c == b'.') {
        Some(p) => (&s[..p], &s[p + 1..]),
        None => (s, &b""[..]),
    };
    if int.is_empty() || int.len() > 15 || frac.len() > 2 {
        return None;
    }
    let digits = |d: &[u8]| {
        d.iter().try_fold(0i64, |a, c| {
            c.is_ascii_digit().then(|| a * 10 + i64::from(c - b'0'))
        })
    };
    let mut f = digits(frac)?;
    if frac.len() == 1 {
        f *= 10;
    }
    Some(digits(int)? * 100 + f)
}

/// Minor units as "1234.56".
pub fn format_amount(out: &mut String, minor: i64) {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:02}", m / 100, m % 100);
}

/// Reads one data row; `line` is its line number in the file. The error
/// says what is wrong with the row.
pub fn parse_row(row: &csv::ByteRecord, line: i64) -> Row {
    if row.len() != COLUMNS {
        return Err(format!("expected {COLUMNS} columns, found {}", row.len()));
    }
    let text = |i: usize, name: &str| {
        std::str::from_utf8(&row[i]).map_err(|_| format!("{name} is not UTF-8"))
    };
    let amount = |i: usize, name: &str| {
        parse_amount(&row[i]).ok_or_else(|| format!("{name} must be an amount such as 1234.56"))
    };
    let kind =
        Kind::parse(text(2, "kind")?).ok_or("kind must be DISBURSEMENT, REPAYMENT or FEE")?;
    let value_date = parse_day(text(3, "value_date")?).ok_or("value_date must be YYYY-MM-DD")?;
    let currency = text(4, "currency")?;
    if let Err(e) = colend_core::Currency::parse(currency) {
        return Err(format!(
            "currency must be an active ISO 4217 code such as CNY: {e}"
        ));
    }
    let components = if (8..12).all(|i| row[i].is_empty()) {
        None
    } else {
        Some([
            amount(8, "principal")?,
            amount(9, "interest")?,
            amount(10, "fee")?,
            amount(11, "penalty")?,
        ])
    };
    let collected_by = match &row[12] {
        b"" | b"BANK" => Book::Bank,
        b"PARTNER" => Book::Partner,
        _ => return Err("collected_by must be BANK or PARTNER".into()),
    };
    let rec = Rec {
        kind,
        transaction_id: text(0, "transaction_id")?.to_string(),
        loan_id: text(1, "loan_id")?.to_string(),
        value_date,
        amount: amount(5, "amount")?,
        bank_portion: amount(6, "bank_portion")?,
        partner_portion: amount(7, "partner_portion")?,
        components,
        collected_by,
        line,
    };
    rec.check()?;
    Ok((rec, currency.to_string()))
}

/// One data row: the record and its currency, or what is wrong with it.
pub type Row = Result<(Rec, String), String>;

/// Reads a side's file row by row: each data row as a record or as the
/// reason it cannot be one, with its line number.
pub struct FileReader<R: std::io::Read> {
    csv: csv::Reader<R>,
    row: csv::ByteRecord,
}

impl<R: std::io::Read> FileReader<R> {
    /// Expects the header line first.
    pub fn new(input: R) -> Self {
        FileReader {
            csv: csv::ReaderBuilder::new()
                .flexible(true)
                .buffer_capacity(1 << 20)
                .from_reader(input),
            row: csv::ByteRecord::new(),
        }
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.csv.position().byte()
    }

    /// The next row: (line, record and currency, or what is wrong).
    pub fn next_row(&mut self) -> Option<(i64, Row)> {
        match self.csv.read_byte_record(&mut self.row) {
            Ok(true) => {
                let line = self.row.position().map(|p| p.line() as i64).unwrap_or(0);
                Some((line, parse_row(&self.row, line)))
            }
            Ok(false) => None,
            Err(e) => {
                let line = e.position().map(|p| p.line() as i64).unwrap_or(0);
                Some((line, Err(format!("unreadable row: {e}"))))
            }
        }
    }
}

/// Writes one record as a data row (no newline).
pub fn format_row(out: &mut String, r: &Rec, currency: &str) {
    let _ = write!(
        out,
        "{},{},{},{},{},",
        r.transaction_id,
        r.loan_id,
        r.kind.name(),
        format_day(r.value_date),
        currency
    );
    format_amount(out, r.amount);
    out.push(',');
    format_amount(out, r.bank_portion);
    out.push(',');
    format_amount(out, r.partner_portion);
    match r.components {
        Some(c) => {
            for v in c {
                out.push(',');
                format_amount(out, v);
            }
        }
        None => out.push_str(",,,,"),
    }
    out.push(',');
    out.push_str(r.collected_by.name());
}

/// What a generated pair of files must reconcile to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub bank_records: i64,
    pub partner_records: i64,
    pub bank_rejected: i64,
    pub partner_rejected: i64,
    /// Counts by class name with tolerances 0 (exact).
    pub exact: Vec<(&'static str, i64)>,
    pub exact_partner_owes_bank: i64,
    /// Counts by class name with 1 minor unit and 1 day of tolerance.
    pub tolerant: Vec<(&'static str, i64)>,
    pub tolerant_partner_owes_bank: i64,
}

/// Planted defects, one per base transaction in every `every` (by position
/// modulo `every`); the rest are clean. The names are documented in the
/// reconciliation README.
pub const PLANTS: [&str; 11] = [
    "amount_mismatch",
    "missing_on_partner_side",
    "missing_on_bank_side",
    "duplicate",
    "date_offset_t_plus_1",
    "split_rounding",
    "one_to_many",
    "many_to_one",
    "attribute_mismatch",
    "one_cent_drift",
    "malformed_rows",
];

/// Deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

/// The partner's share of `amount` at `bps`, rounded up to the cent.
fn share(amount: i64, bps: i64) -> i64 {
    (amount * bps + 9_999) / 10_000
}

/// Generates `n` base transactions for `date`, writing each side's rows
/// (header first) through `emit`, and returns what they must reconcile to.
/// `every` sets the planting rate: one base transaction in `every` carries
/// each planted defect (so `n / every` of each).
pub fn generate(
    n: usize,
    seed: u64,
    date: Day,
    every: usize,
    mut emit: impl FnMut(Book, &str),
) -> Expected {
    let every = every.max(PLANTS.len());
    let mut rng = Rng(seed);
    let mut e = Expected::default();
    let mut exact = std::collections::BTreeMap::<&'static str, i64>::new();
    let mut tolerant = std::collections::BTreeMap::<&'static str, i64>::new();
    let add = |m: &mut std::collections::BTreeMap<&'static str, i64>, c: &'static str| {
        *m.entry(c).or_default() += 1;
    };
    emit(Book::Bank, HEADER);
    emit(Book::Partner, HEADER);
    let mut row = String::with_capacity(160);
    // A record, or (Err) a raw malformed line.
    let mut put_row = |book: Book, r: Result<&Rec, &str>, e: &mut Expected| match r {
        Ok(r) => {
            row.clear();
            format_row(&mut row, r, "CNY");
            emit(book, &row);
            match book {
                Book::Bank => e.bank_records += 1,
                _ => e.partner_records += 1,
            }
        }
        Err(raw) => {
            emit(book, raw);
            match book {
                Book::Bank => e.bank_rejected += 1,
                _ => e.partner_rejected += 1,
            }
        }
    };
    macro_rules! put {
        ($book:expr, $r:expr, $e:expr) => {
            put_row($book, Ok($r), $e)
        };
    }
    let owed = |r: &Rec| {
        let (by, v) = super::matching::settle(r);
        if by == Book::Partner { v } else { -v }
    };
    for i in 0..n {
        let roll = rng.range(0, 99);
        let kind = match roll {
            0..=9 => Kind::Disbursement,
            10..=11 => Kind::Fee,
            _ => Kind::Repayment,
        };
        let bps = rng.range(3_000, 5_000);
        let (amount, components) = match kind {
            Kind::Disbursement => (rng.range(100, 5_000) * 10_000, None),
            Kind::Fee => (rng.range(100, 50_000), None),
            Kind::Repayment => {
                let p = rng.range(10_000, 2_000_000);
                let int = rng.range(100, 40_000);
                let fee = rng.range(0, 2_000);
                let pen = if rng.range(0, 19) == 0 {
                    rng.range(1, 5_000)
                } else {
                    0
                };
                (p + int + fee + pen, Some([p, int, fee, pen]))
            }
        };
        let partner_portion = share(amount, bps);
        let collected_by = if kind != Kind::Disbursement && rng.range(0, 4) == 0 {
            Book::Partner
        } else {
            Book::Bank
        };
        let bank = Rec {
            kind,
            transaction_id: format!("TX{seed:x}{i:09}"),
            loan_id: format!("LN{seed:x}{i:09}"),
            value_date: date,
            amount,
            bank_portion: amount - partner_portion,
            partner_portion,
            components,
            collected_by,
            line: 0,
        };
        let slot = i % every;
        let plant = PLANTS.get(slot).copied().unwrap_or("clean");
        let mut partner = bank.clone();
        match plant {
            "amount_mismatch" => {
                let k = rng.range(2, 500);
                partner.amount += k;
                partner.bank_portion += k;
                if let Some(c) = &mut partner.components {
                    c[1] += k;
                }
                put!(Book::Bank, &bank, &mut e);
                put!(Book::Partner, &partner, &mut e);
                add(&mut exact, "AMOUNT_MISMATCH");
                add(&mut tolerant, "AMOUNT_MISMATCH");
            }
            "missing_on_partner_side" => {
                put!(Book::Bank, &bank, &mut e);
                add(&mut exact, "MISSING_ON_PARTNER_SIDE");
                add(&mut tolerant, "MISSING_ON_PARTNER_SIDE");
            }
            "missing_on_bank_side" => {
                put!(Book::Partner, &partner, &mut e);
                add(&mut exact, "MISSING_ON_BANK_SIDE");
                add(&mut tolerant, "MISSING_ON_BANK_SIDE");
            }
            "duplicate" => {
                put!(Book::Bank, &bank, &mut e);
                put!(Book::Partner, &partner, &mut e);
                put!(Book::Partner, &partner, &mut e);
                for m in [&mut exact, &mut tolerant] {
                    add(m, "DUPLICATE");
                    add(m, "MATCHED");
                }
                e.exact_partner_owes_bank += owed(&bank);
                e.tolerant_partner_owes_bank += owed(&bank);
            }
            "date_offset_t_plus_1" => {
                partner.value_date += 1;
                put!(Book::Bank, &bank, &mut e);
                put!(Book::Partner, &partner, &mut e);
                add(&mut exact, "DATE_OFFSET");
                add(&mut tolerant, "MATCHED");
                e.tolerant_partner_owes_bank += owed(&bank);
            }
            "split_rounding" => {
                partner.partner_portion -= 1;
                partner.bank_portion += 1;
                put!(Book::Bank, &bank, &mut e);
                put!(Book::Partner, &partner, &mut e);
                add(&mut exact, "SPLIT_ROUNDING");
                add(&mut tolerant, "SPLIT_ROUNDING");
            }
            "one_to_many" | "many_to_one" => {
                // The whole record on one side, two parts on the other.
                let first = amount / 3;
                let first_partner = partner_portion / 3;
                let mut a = bank.clone();
                a.transaction_id.push_str("-1");
                a.amount = first;
                a.partner_portion = first_partner;
                a.bank_portion = first - first_partner;
                a.components = None;
                let mut b = a.clone();
                b.transaction_id.pop();
                b.transaction_id.push('2');
                b.amount = amount - first;
                b.partner_portion = partner_portion - first_partner;
                b.bank_portion = b.amount - b.partner_portion;
                if plant == "one_to_many" {
                    put!(Book::Bank, &bank, &mut e);
                    put!(Book::Partner, &a, &mut e);
                    put!(Book::Partner, &b, &mut e);
                    e.exact_partner_owes_bank += owed(&bank);
                    e.tolerant_partner_owes_bank += owed(&bank);
                } else {
                    put!(Book::Bank, &a, &mut e);
                    put!(Book::Bank, &b, &mut e);
                    put!(Book::Partner, &bank, &mut e);
                    let o = owed(&a) + owed(&b);
                    e.exact_partner_owes_bank += o;
                    e.tolerant_partner_owes_bank += o;
                }
                add(&mut exact, "MATCHED");
                add(&mut tolerant, "MATCHED");
            }
            "attribute_mismatch" => {
                partner.loan_id.push('X');
                put!(Book::Bank, &bank, &mut e);
                put!(Book::Partner, &partner, &mut e);
                add(&mut exact, "ATTRIBUTE_MISMATCH");
                add(&mut tolerant, "ATTRIBUTE_MISMATCH");
            }
            "one_cent_drift" => {
                partner.amount += 1;
                partner.bank_portion += 1;
                if let Some(c) = &mut partner.components {
                    c[1] += 1;
                }
                put!(Book::Bank, &bank, &mut e);
                put!(Book::Partner, &partner, &mut e);
                add(&mut exact, "AMOUNT_MISMATCH");
                add(&mut tolerant, "MATCHED");
                e.tolerant_partner_owes_bank += owed(&bank);
            }
            _ => {
                put!(Book::Bank, &bank, &mut e);
                put!(Book::Partner, &partner, &mut e);
                add(&mut exact, "MATCHED");
                add(&mut tolerant, "MATCHED");
                e.exact_partner_owes_bank += owed(&bank);
                e.tolerant_partner_owes_bank += owed(&bank);
                if plant == "malformed_rows" {
                    put_row(
                        Book::Bank,
                        Err("TXBAD,LNBAD,REPAYMENT,2026-11-23,CNY,12.00"),
                        &mut e,
                    );
                    let bad =
                        format!("TXBAD{i},LN1,REPAYMENT,2026-13-01,CNY,1.00,0.70,0.30,,,,,BANK");
                    put_row(Book::Partner, Err(&bad), &mut e);
                }
            }
        }
    }
    e.exact = exact.into_iter().collect();
    e.tolerant = tolerant.into_iter().collect();
    e
}

#[cfg(test)]
mod tests {
    use super::super::matching::{Class, Matcher, Pair, Tolerance};
    use super::*;

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_amount(b"1234.56"), Some(123_456));
        assert_eq!(parse_amount(b"1234.5"), Some(123_450));
        assert_eq!(parse_amount(b"1234"), Some(123_400));
        assert_eq!(parse_amount(b"0.01"), Some(1));
        for bad in [&b"12a.00"[..], b"1.234", b"", b".5", b"-1.00", b"1,00"] {
            assert_eq!(parse_amount(bad), None, "{bad:?}");
        }
        let mut s = String::new();
        format_amount(&mut s, 123_405);
        assert_eq!(s, "1234.05");
    }

    fn reconcile(
        n: usize,
        every: usize,
        tol: Tolerance,
    ) -> (Expected, super::super::Outcome, i64, i64) {
        let date = parse_day("2026-11-23").unwrap();
        let mut bank = String::new();
        let mut partner = String::new();
        let e = generate(n, 7, date, every, |b, row| {
            let s = if b == Book::Bank {
                &mut bank
            } else {
                &mut partner
            };
            s.push_str(row);
            s.push('\n');
        });
        let mut m = Matcher::new(Pair::BankPartner, tol, true);
        let mut rejected = [0i64; 2];
        let read = |text: &str| {
            let mut r = FileReader::new(text.as_bytes());
            let mut out = Vec::new();
            while let Some((_, row)) = r.next_row() {
                out.push(row.map(|x| x.0));
            }
            out
        };
        let (b, p) = (read(&bank), read(&partner));
        for (left, rows) in [(true, b), (false, p)] {
            for r in rows {
                match r {
                    Ok(r) => m.feed(left, r),
                    Err(_) => rejected[usize::from(!left)] += 1,
                }
            }
        }
        (e, m.finish().unwrap(), rejected[0], rejected[1])
    }

    #[test]
    fn generated_files_reconcile_to_their_planted_counts() {
        for (tol, exact) in [
            (Tolerance::default(), true),
            (Tolerance { amount: 1, days: 1 }, false),
        ] {
            let (e, o, rb, rp) = reconcile(5_000, 100, tol);
            let want = if exact { &e.exact } else { &e.tolerant };
            for c in Class::ALL {
                let n = want
                    .iter()
                    .find(|(k, _)| *k == c.name())
                    .map(|x| x.1)
                    .unwrap_or(0);
                assert_eq!(o.count(c), n, "{} (exact={exact})", c.name());
            }
            assert_eq!((rb, rp), (e.bank_rejected, e.partner_rejected));
            assert_eq!(o.left_records, e.bank_records);
            assert_eq!(o.right_records, e.partner_records);
            let owed = if exact {
                e.exact_partner_owes_bank
            } else {
                e.tolerant_partner_owes_bank
            };
            assert_eq!(o.settlement.partner_owes_bank(), Some(owed));
            assert_eq!(o.one_to_many, 50);
            assert_eq!(o.many_to_one, 50);
        }
    }
}
