//! The matcher: classifies every record of a business day between two books.
//!
//! Records are fed one at a time, in any order, from either side. A record
//! whose transaction id the other side already sent is compared at once and
//! forgotten; only records still waiting for their counterpart are held
//! (plus a 16-byte fingerprint of each matched transaction id, to recognise a
//! duplicate that arrives later). Two files in the same order therefore
//! reconcile in memory bounded by the distance between them, not by their
//! size.
//!
//! Rules, in order:
//! 1. **Duplicate**: a transaction id already seen on the same side; the first
//!    record is the one matched, each further copy is a break.
//! 2. One-to-one by transaction id, compared field by field:
//!    loan, kind or collector differ → **attribute mismatch**; the amount or a
//!    component (principal, interest, fee, penalty) differs by more than the
//!    amount tolerance → **amount mismatch** naming the components; totals
//!    equal and the split differs by exactly one minor unit → **split
//!    rounding**; a portion differs by more than the tolerance → amount
//!    mismatch (bank_portion, partner_portion); value dates more than the
//!    day tolerance apart → **date offset**; otherwise **matched** (exactly,
//!    or within tolerance).
//! 3. What is left unmatched is grouped by loan, kind, value date and
//!    collector. One record on one side against two or more on the other
//!    whose amounts and portions sum to it (within the tolerance) match
//!    **one-to-many** (or **many-to-one**).
//! 4. Everything else is **missing** on the side that lacks it.
//!
//! Rolling: open "missing" breaks of earlier days are carried in before the
//! day's records; when the counterpart arrives the pair is compared as
//! usual and the earlier break is reported as resolved.
//!
//! Settlement: each matched transaction gives one line per bank record. The
//! side holding the cash owes the other side that side's portion; for a
//! disbursement the side that advanced the whole amount is owed the other
//! side's portion.
use super::{Book, COMPONENTS, Day, Kind, Rec};
use std::collections::{BTreeMap, HashMap, HashSet};
use xxhash_rust::xxh3::xxh3_128;

/// How far two records may differ and still match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tolerance {
    /// Minor units, applied to the amount, each component and each portion.
    pub amount: i64,
    /// Days between value dates.
    pub days: i32,
}

/// Which two books are compared. The first is the "left" side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pair {
    BankPartner,
    BankLedger,
    PartnerLedger,
}

impl Pair {
    pub fn books(self) -> (Book, Book) {
        match self {
            Pair::BankPartner => (Book::Bank, Book::Partner),
            Pair::BankLedger => (Book::Bank, Book::Ledger),
            Pair::PartnerLedger => (Book::Partner, Book::Ledger),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pair::BankPartner => "BANK_PARTNER",
            Pair::BankLedger => "BANK_LEDGER",
            Pair::PartnerLedger => "PARTNER_LEDGER",
        }
    }

    pub fn parse(s: &str) -> Option<Pair> {
        [Pair::BankPartner, Pair::BankLedger, Pair::PartnerLedger]
            .into_iter()
            .find(|p| p.name() == s)
    }

    /// The class of a record only one side of the pair has.
    fn missing(self, left_present: bool) -> Class {
        match (self, left_present) {
            (Pair::BankPartner, true) => Class::MissingOnPartnerSide,
            (Pair::BankPartner | Pair::BankLedger, false) => Class::MissingOnBankSide,
            (Pair::BankLedger | Pair::PartnerLedger, true) => Class::MissingInLedger,
            (Pair::PartnerLedger, false) => Class::MissingOnPartnerSide,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Matched,
    AmountMismatch,
    MissingOnBankSide,
    MissingOnPartnerSide,
    Duplicate,
    DateOffset,
    SplitRounding,
    AttributeMismatch,
    MissingInLedger,
}

impl Class {
    pub const ALL: [Class; 9] = [
        Class::Matched,
        Class::AmountMismatch,
        Class::MissingOnBankSide,
        Class::MissingOnPartnerSide,
        Class::Duplicate,
        Class::DateOffset,
        Class::SplitRounding,
        Class::AttributeMismatch,
        Class::MissingInLedger,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Matched => "MATCHED",
            Class::AmountMismatch => "AMOUNT_MISMATCH",
            Class::MissingOnBankSide => "MISSING_ON_BANK_SIDE",
            Class::MissingOnPartnerSide => "MISSING_ON_PARTNER_SIDE",
            Class::Duplicate => "DUPLICATE",
            Class::DateOffset => "DATE_OFFSET",
            Class::SplitRounding => "SPLIT_ROUNDING",
            Class::AttributeMismatch => "ATTRIBUTE_MISMATCH",
            Class::MissingInLedger => "MISSING_IN_LEDGER",
        }
    }

    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Breaks of these classes are carried into later runs until the
    /// missing record arrives.
    pub fn is_missing(self) -> bool {
        matches!(
            self,
            Class::MissingOnBankSide | Class::MissingOnPartnerSide | Class::MissingInLedger
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    OneToOne,
    OneToMany,
    ManyToOne,
}

/// A difference between the two books.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakItem {
    pub pair: Pair,
    pub class: Class,
    pub transaction_id: String,
    pub loan_id: String,
    /// The left book's record (bank, or partner in PARTNER_LEDGER).
    pub left: Option<Rec>,
    /// The right book's record (partner, or ledger).
    pub right: Option<Rec>,
    pub components: Vec<&'static str>,
    pub detail: String,
}

/// The day's net between bank and partner, minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Partner's portion of matched disbursements the bank advanced.
    pub partner_disbursement_share: i64,
    /// Partner's portion of matched repayments and fees the bank collected.
    pub partner_repayment_share: i64,
    pub partner_owes_gross: i64,
    pub bank_owes_gross: i64,
    pub lines: i64,
}

impl Settlement {
    /// Positive: the partner pays the bank.
    pub fn partner_owes_bank(&self) -> i64 {
        self.partner_owes_gross - self.bank_owes_gross
    }
}

/// Who owes whom how much for one matched record (the bank's figures).
pub fn settle(r: &Rec) -> (Book, i64) {
    match (r.kind, r.collected_by) {
        (Kind::Disbursement, Book::Partner) => (Book::Bank, r.bank_portion),
        (Kind::Disbursement, _) => (Book::Partner, r.partner_portion),
        (_, Book::Partner) => (Book::Partner, r.bank_portion),
        (_, _) => (Book::Bank, r.partner_portion),
    }
}

#[derive(Clone, Copy)]
struct LineFixed {
    text_at: usize,
    tx_len: u16,
    loan_len: u16,
    kind: Kind,
    owed_by: Book,
    value_date: Day,
    amount: i64,
    owed: i64,
}

/// Settlement lines, packed: about 40 bytes plus the ids per line.
#[derive(Default)]
pub struct SettlementLines {
    text: Vec<u8>,
    fixed: Vec<LineFixed>,
}

/// One settlement line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub transaction_id: &'a str,
    pub loan_id: &'a str,
    pub kind: Kind,
    pub value_date: Day,
    pub amount: i64,
    pub owed_by: Book,
    pub owed: i64,
}

impl SettlementLines {
    fn push(&mut self, r: &Rec, owed_by: Book, owed: i64) {
        let text_at = self.text.len();
        self.text.extend_from_slice(r.transaction_id.as_bytes());
        self.text.extend_from_slice(r.loan_id.as_bytes());
        self.fixed.push(LineFixed {
            text_at,
            // Both ids are at most 64 bytes (checked on input).
            tx_len: r.transaction_id.len() as u16,
            loan_len: r.loan_id.len() as u16,
            kind: r.kind,
            owed_by,
            value_date: r.value_date,
            amount: r.amount,
            owed,
        });
    }

    pub fn len(&self) -> usize {
        self.fixed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Line<'_>> {
        self.fixed.iter().map(|f| {
            let tx_end = f.text_at + f.tx_len as usize;
            let loan_end = tx_end + f.loan_len as usize;
            // The bytes were copied from `str`s at these offsets.
            let s = |a: usize, b: usize| std::str::from_utf8(&self.text[a..b]).unwrap_or("");
            Line {
                transaction_id: s(f.text_at, tx_end),
                loan_id: s(tx_end, loan_end),
                kind: f.kind,
                value_date: f.value_date,
                amount: f.amount,
                owed_by: f.owed_by,
                owed: f.owed,
            }
        })
    }
}

/// What one pair's comparison found.
#[derive(Default)]
pub struct Outcome {
    pub pair: Option<Pair>,
    /// Per class: (transactions, amount).
    pub classes: BTreeMap<Class, (i64, i64)>,
    pub breaks: Vec<BreakItem>,
    pub settlement: Settlement,
    pub lines: SettlementLines,
    /// Ids of carried-in breaks whose counterpart arrived.
    pub resolved: Vec<String>,
    pub one_to_one: i64,
    pub one_to_many: i64,
    pub many_to_one: i64,
    pub within_tolerance: i64,
    /// Records behind matched transactions.
    pub matched_records: i64,
    pub left_records: i64,
    pub right_records: i64,
}

impl Outcome {
    pub fn count(&self, c: Class) -> i64 {
        self.classes.get(&c).map(|v| v.0).unwrap_or(0)
    }

    pub fn open_breaks(&self) -> i64 {
        self.breaks.len() as i64
    }
}

struct Pending {
    left: bool,
    rec: Rec,
    carried: Option<String>,
}

/// Hashes a key that already is a hash (an xxh3-128 fingerprint).
#[derive(Clone, Copy, Default)]
struct Prints;

struct PrintHasher(u64);

impl std::hash::BuildHasher for Prints {
    type Hasher = PrintHasher;
    fn build_hasher(&self) -> PrintHasher {
        PrintHasher(0)
    }
}

impl std::hash::Hasher for PrintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

/// Records waiting for their counterpart, by the fingerprint of their
/// transaction id; an id whose fingerprint another waiting id already has
/// (never seen in practice, but possible) waits in `collided`, by name.
#[derive(Default)]
struct Waiting {
    by_print: HashMap<u128, Pending, Prints>,
    collided: HashMap<String, Pending>,
}

impl Waiting {
    fn get(&self, h: u128, tx: &str) -> Option<&Pending> {
        match self.by_print.get(&h) {
            Some(p) if p.rec.transaction_id == tx => Some(p),
            _ if self.collided.is_empty() => None,
            _ => self.collided.get(tx),
        }
    }

    fn remove(&mut self, h: u128, tx: &str) -> Option<Pending> {
        match self.by_print.get(&h) {
            Some(p) if p.rec.transaction_id == tx => self.by_print.remove(&h),
            _ if self.collided.is_empty() => None,
            _ => self.collided.remove(tx),
        }
    }

    /// Adds a record whose id is not waiting yet.
    fn insert(&mut self, h: u128, p: Pending) {
        use std::collections::hash_map::Entry;
        match self.by_print.entry(h) {
            Entry::Vacant(v) => {
                v.insert(p);
            }
            Entry::Occupied(_) => {
                self.collided.insert(p.rec.transaction_id.clone(), p);
            }
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.by_print
            .drain()
            .map(|(_, p)| p)
            .chain(self.collided.drain().map(|(_, p)| p))
    }
}

/// Matches the records of one pair of books.
pub struct Matcher {
    pair: Pair,
    tol: Tolerance,
    settle: bool,
    pending: Waiting,
    /// Fingerprints (xxh3-128) of matched transaction ids.
    seen: HashSet<u128, Prints>,
    out: Outcome,
}

fn amount(minor: i64) -> String {
    let mut s = String::new();
    super::file::format_amount(&mut s, minor);
    s
}

fn differ(a: i64, b: i64, tol: i64) -> bool {
    (i128::from(a) - i128::from(b)).abs() > i128::from(tol)
}

impl Matcher {
    /// `settle`: compute the bank–partner settlement from matched records.
    pub fn new(pair: Pair, tol: Tolerance, settle: bool) -> Self {
        Matcher {
            pair,
            tol,
            settle,
            pending: Waiting::default(),
            seen: HashSet::default(),
            out: Outcome {
                pair: Some(pair),
                ..Outcome::default()
            },
        }
    }

    /// Carries in the record behind an open "missing" break of an earlier run.
    pub fn carry(&mut self, break_id: String, left: bool, rec: Rec) {
        let h = xxh3_128(rec.transaction_id.as_bytes());
        if self.pending.get(h, &rec.transaction_id).is_none() {
            self.pending.insert(
                h,
                Pending {
                    left,
                    rec,
                    carried: Some(break_id),
                },
            );
        }
    }

    /// Feeds one record of the left (`left = true`) or right book.
    pub fn feed(&mut self, left: bool, rec: Rec) {
        if left {
            self.out.left_records += 1;
        } else {
            self.out.right_records += 1;
        }
        let h = xxh3_128(rec.transaction_id.as_bytes());
        let same_side = self
            .pending
            .get(h, &rec.transaction_id)
            .map(|p| p.left == left);
        match same_side {
            Some(true) => self.duplicate(left, rec),
            Some(false) => {
                let Some(p) = self.pending.remove(h, &rec.transaction_id) else {
                    return;
                };
                self.seen.insert(h);
                if let Some(id) = p.carried {
                    self.out.resolved.push(id);
                }
                if left {
                    self.compare(rec, p.rec);
                } else {
                    self.compare(p.rec, rec);
                }
            }
            None => {
                if self.seen.contains(&h) {
                    self.duplicate(left, rec);
                } else {
                    self.pending.insert(
                        h,
                        Pending {
                            left,
                            rec,
                            carried: None,
                        },
                    );
                }
            }
        }
    }

    fn count(&mut self, c: Class, amount: i64) {
        let e = self.out.classes.entry(c).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.saturating_add(amount);
    }

    fn push_break(&mut self, b: BreakItem) {
        let amount = [&b.left, &b.right]
            .iter()
            .filter_map(|r| r.as_ref().map(|r| r.amount))
            .max()
            .unwrap_or(0);
        self.count(b.class, amount);
        self.out.breaks.push(b);
    }

    /// The book a side of the pair is.
    fn book(&self, left: bool) -> Book {
        let (l, r) = self.pair.books();
        if left { l } else { r }
    }

    /// A break with a record on one side only.
    fn one_sided(&mut self, class: Class, left: bool, rec: Rec, detail: String) {
        let (transaction_id, loan_id) = (rec.transaction_id.clone(), rec.loan_id.clone());
        let (l, r) = if left {
            (Some(rec), None)
        } else {
            (None, Some(rec))
        };
        self.push_break(BreakItem {
            pair: self.pair,
            class,
            transaction_id,
            loan_id,
            left: l,
            right: r,
            components: vec![],
            detail,
        });
    }

    fn duplicate(&mut self, left: bool, rec: Rec) {
        let detail = format!(
            "transaction id already seen on the {} side",
            self.book(left).name().to_lowercase()
        );
        self.one_sided(Class::Duplicate, left, rec, detail);
    }

    fn matched(&mut self, how: MatchKind, bank: &[&Rec], amount: i64, records: usize) {
        self.count(Class::Matched, amount);
        self.out.matched_records += records as i64;
        match how {
            MatchKind::OneToOne => self.out.one_to_one += 1,
            MatchKind::OneToMany => self.out.one_to_many += 1,
            MatchKind::ManyToOne => self.out.many_to_one += 1,
        }
        if !self.settle {
            return;
        }
        for r in bank {
            let (owed_by, owed) = settle(r);
            let s = &mut self.out.settlement;
            match owed_by {
                Book::Partner => s.partner_owes_gross += owed,
                _ => s.bank_owes_gross += owed,
            }
            match (r.kind, r.collected_by) {
                (Kind::Disbursement, Book::Bank) => s.partner_disbursement_share += owed,
                (Kind::Repayment | Kind::Fee, Book::Bank) => s.partner_repayment_share += owed,
                _ => {}
            }
            s.lines += 1;
            self.out.lines.push(r, owed_by, owed);
        }
    }

    /// Compares the two records of one transaction id.
    fn compare(&mut self, l: Rec, r: Rec) {
        let tol = self.tol;
        let mut comps: Vec<&'static str> = Vec::new();
        let class;
        let mut detail = String::new();
        if l.loan_id != r.loan_id {
            comps.push("loan_id");
        }
        if l.kind != r.kind {
            comps.push("kind");
        }
        if l.collected_by != r.collected_by {
            comps.push("collected_by");
        }
        if !comps.is_empty() {
            class = Class::AttributeMismatch;
        } else {
            if differ(l.amount, r.amount, tol.amount) {
                comps.push("amount");
            }
            if let (Some(a), Some(b)) = (l.components, r.components) {
                for i in 0..4 {
                    if differ(a[i], b[i], tol.amount) {
                        comps.push(COMPONENTS[i]);
                    }
                }
            }
            if !comps.is_empty() {
                class = Class::AmountMismatch;
                detail = format!(
                    "{} {} vs {}",
                    comps.join(", "),
                    amount(l.amount),
                    amount(r.amount)
                );
            } else if l.amount == r.amount && (l.partner_portion - r.partner_portion).abs() == 1 {
                comps.extend(["bank_portion", "partner_portion"]);
                class = Class::SplitRounding;
                detail = format!(
                    "partner portion {} vs {}",
                    amount(l.partner_portion),
                    amount(r.partner_portion)
                );
            } else if differ(l.partner_portion, r.partner_portion, tol.amount)
                || differ(l.bank_portion, r.bank_portion, tol.amount)
            {
                comps.extend(["bank_portion", "partner_portion"]);
                class = Class::AmountMismatch;
                detail = format!(
                    "partner portion {} vs {}",
                    amount(l.partner_portion),
                    amount(r.partner_portion)
                );
            } else if (i64::from(l.value_date) - i64::from(r.value_date)).abs()
                > i64::from(tol.days)
            {
                class = Class::DateOffset;
                detail = format!(
                    "value date {} vs {}",
                    super::format_day(l.value_date),
                    super::format_day(r.value_date)
                );
            } else {
                class = Class::Matched;
            }
        }
        if class == Class::Matched {
            let exact = l.amount == r.amount
                && l.bank_portion == r.bank_portion
                && l.value_date == r.value_date
                && (l.components.is_none()
                    || r.components.is_none()
                    || l.components == r.components);
            if !exact {
                self.out.within_tolerance += 1;
            }
            let amount = l.amount.max(r.amount);
            self.matched(MatchKind::OneToOne, &[&l], amount, 2);
            return;
        }
        if detail.is_empty() {
            detail = format!("differs in {}", comps.join(", "));
        }
        self.push_break(BreakItem {
            pair: self.pair,
            class,
            transaction_id: l.transaction_id.clone(),
            loan_id: l.loan_id.clone(),
            left: Some(l),
            right: Some(r),
            components: comps,
            detail,
        });
    }

    /// Groups what is left, matches one-to-many and many-to-one, reports
    /// the rest as missing.
    pub fn finish(mut self) -> Outcome {
        type Key = (String, Kind, Day, Book);
        let mut groups: BTreeMap<Key, (Vec<Rec>, Vec<Rec>)> = BTreeMap::new();
        let waiting: Vec<Pending> = self.pending.drain().collect();
        for p in waiting {
            if p.carried.is_some() {
                continue;
            }
            let g = groups
                .entry((
                    p.rec.loan_id.clone(),
                    p.rec.kind,
                    p.rec.value_date,
                    p.rec.collected_by,
                ))
                .or_default();
            if p.left {
                g.0.push(p.rec);
            } else {
                g.1.push(p.rec);
            }
        }
        let tol = self.tol.amount;
        let mut missing: Vec<(bool, Rec)> = Vec::new();
        for (_, (mut ls, mut rs)) in groups {
            ls.sort_by(|a, b| (a.line, &a.transaction_id).cmp(&(b.line, &b.transaction_id)));
            rs.sort_by(|a, b| (a.line, &a.transaction_id).cmp(&(b.line, &b.transaction_id)));
            let sum =
                |v: &[Rec], f: fn(&Rec) -> i64| v.iter().map(|r| i128::from(f(r))).sum::<i128>();
            let agree = |ls: &[Rec], rs: &[Rec]| {
                [
                    |r: &Rec| r.amount,
                    |r: &Rec| r.bank_portion,
                    |r: &Rec| r.partner_portion,
                ]
                .into_iter()
                .all(|f| (sum(ls, f) - sum(rs, f)).abs() <= i128::from(tol))
            };
            let how = match (ls.len(), rs.len()) {
                (1, n) if n >= 2 && agree(&ls, &rs) => Some(MatchKind::OneToMany),
                (n, 1) if n >= 2 && agree(&ls, &rs) => Some(MatchKind::ManyToOne),
                _ => None,
            };
            match how {
                Some(how) => {
                    let amount = ls.iter().map(|r| r.amount).sum::<i64>();
                    let bank: Vec<&Rec> = match self.pair {
                        Pair::PartnerLedger => vec![],
                        _ => ls.iter().collect(),
                    };
                    self.matched(how, &bank, amount, ls.len() + rs.len());
                }
                None => {
                    missing.extend(ls.into_iter().map(|r| (true, r)));
                    missing.extend(rs.into_iter().map(|r| (false, r)));
                }
            }
        }
        missing.sort_by(|a, b| a.1.transaction_id.cmp(&b.1.transaction_id));
        for (left, rec) in missing {
            let detail = format!("no {} record", self.book(!left).name().to_lowercase());
            self.one_sided(self.pair.missing(left), left, rec, detail);
        }
        self.out
    }
}

/// Reconciles a day: bank against partner, and with `three_way` each of
/// them against colend's funding ledger.
pub struct Reconciler {
    pub bank_partner: Matcher,
    pub bank_ledger: Option<Matcher>,
    pub partner_ledger: Option<Matcher>,
}

impl Reconciler {
    pub fn new(tol: Tolerance, three_way: bool) -> Self {
        Reconciler {
            bank_partner: Matcher::new(Pair::BankPartner, tol, true),
            bank_ledger: three_way.then(|| Matcher::new(Pair::BankLedger, tol, false)),
            partner_ledger: three_way.then(|| Matcher::new(Pair::PartnerLedger, tol, false)),
        }
    }

    pub fn matcher(&mut self, pair: Pair) -> Option<&mut Matcher> {
        match pair {
            Pair::BankPartner => Some(&mut self.bank_partner),
            Pair::BankLedger => self.bank_ledger.as_mut(),
            Pair::PartnerLedger => self.partner_ledger.as_mut(),
        }
    }

    /// Feeds one record of `book`. Ledger records are ignored unless the
    /// run is three-way.
    pub fn feed(&mut self, book: Book, rec: Rec) {
        match book {
            Book::Bank => {
                if let Some(m) = &mut self.bank_ledger {
                    m.feed(true, rec.clone());
                }
                self.bank_partner.feed(true, rec);
            }
            Book::Partner => {
                if let Some(m) = &mut self.partner_ledger {
                    m.feed(true, rec.clone());
                }
                self.bank_partner.feed(false, rec);
            }
            Book::Ledger => {
                if let Some(m) = &mut self.bank_ledger {
                    m.feed(false, rec.clone());
                }
                if let Some(m) = &mut self.partner_ledger {
                    m.feed(false, rec);
                }
            }
        }
    }

    /// The bank–partner outcome first, then the ledger pairs.
    pub fn finish(self) -> Vec<Outcome> {
        let mut v = vec![self.bank_partner.finish()];
        v.extend(self.bank_ledger.map(Matcher::finish));
        v.extend(self.partner_ledger.map(Matcher::finish));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: Day = 739_578;

    fn rec(kind: Kind, tx: &str, amount: i64, partner: i64) -> Rec {
        Rec {
            kind,
            transaction_id: tx.into(),
            loan_id: "L1".into(),
            value_date: DAY,
            amount,
            bank_portion: amount - partner,
            partner_portion: partner,
            components: None,
            collected_by: Book::Bank,
            line: 0,
        }
    }

    fn run(bank: &[Rec], partner: &[Rec], tol: Tolerance) -> Outcome {
        let mut m = Matcher::new(Pair::BankPartner, tol, true);
        // Interleave, as a streaming client does.
        let n = bank.len().max(partner.len());
        for i in 0..n {
            if let Some(r) = bank.get(i) {
                m.feed(true, r.clone());
            }
            if let Some(r) = partner.get(i) {
                m.feed(false, r.clone());
            }
        }
        m.finish()
    }

    use Kind::{Disbursement as D, Repayment as R};

    #[test]
    fn classifies_every_kind_of_break() {
        let mut late = rec(R, "r6", 2_000, 600);
        late.value_date += 1;
        let mut other_loan = rec(R, "r7", 2_000, 600);
        other_loan.loan_id = "L2".into();
        let bank = vec![
            rec(D, "d1", 100_000, 30_000),
            rec(R, "r1", 10_000, 3_100),
            rec(R, "r2", 5_000, 1_500),
            rec(R, "r3", 5_000, 1_500),
            rec(R, "r4", 5_000, 1_500),
            rec(R, "r4", 5_000, 1_500),
            rec(R, "r6", 2_000, 600),
            rec(R, "r7", 2_000, 600),
            rec(R, "r8", 3_001, 901),
        ];
        let partner = vec![
            rec(D, "d1", 100_000, 30_000),
            rec(R, "r1", 10_000, 3_100),
            rec(R, "r2", 5_001, 1_501),
            rec(R, "r5", 7_000, 2_100),
            rec(R, "r4", 5_000, 1_500),
            late,
            other_loan,
            rec(R, "r8", 3_001, 900),
        ];
        let o = run(&bank, &partner, Tolerance::default());
        assert_eq!(o.count(Class::Matched), 3);
        assert_eq!(o.count(Class::AmountMismatch), 1);
        assert_eq!(o.count(Class::MissingOnPartnerSide), 1);
        assert_eq!(o.count(Class::MissingOnBankSide), 1);
        assert_eq!(o.count(Class::Duplicate), 1);
        assert_eq!(o.count(Class::DateOffset), 1);
        assert_eq!(o.count(Class::AttributeMismatch), 1);
        assert_eq!(o.count(Class::SplitRounding), 1);
        // r4 matched after its duplicate was set aside.
        assert_eq!(o.count(Class::Matched) + o.open_breaks(), 10);
        assert_eq!(o.settlement.partner_owes_bank(), 30_000 - 3_100 - 1_500);
        let split = o
            .breaks
            .iter()
            .find(|b| b.class == Class::SplitRounding)
            .unwrap();
        assert_eq!(split.components, ["bank_portion", "partner_portion"]);
    }

    #[test]
    fn names_the_component_that_differs() {
        let mut b = rec(R, "r1", 10_000, 3_000);
        b.components = Some([8_000, 1_500, 500, 0]);
        let mut p = b.clone();
        p.components = Some([8_000, 1_450, 550, 0]);
        let o = run(&[b], &[p], Tolerance::default());
        assert_eq!(o.breaks[0].class, Class::AmountMismatch);
        assert_eq!(o.breaks[0].components, ["interest", "fee"]);
    }

    #[test]
    fn tolerances_absorb_drift_and_date_offsets() {
        let b = rec(R, "r1", 10_000, 3_000);
        let mut p = rec(R, "r1", 10_001, 3_000);
        p.value_date += 1;
        let tol = Tolerance { amount: 1, days: 1 };
        let o = run(std::slice::from_ref(&b), std::slice::from_ref(&p), tol);
        assert_eq!(o.count(Class::Matched), 1);
        assert_eq!(o.within_tolerance, 1);
        let o = run(&[b], &[p], Tolerance::default());
        assert_eq!(o.count(Class::AmountMismatch), 1);
    }

    #[test]
    fn one_to_many_and_many_to_one() {
        let bank = vec![
            rec(R, "b1", 9_000, 2_700),
            rec(R, "b2", 1_000, 300),
            rec(R, "b3", 2_000, 600),
        ];
        let mut other_day = rec(R, "x", 3_000, 900);
        other_day.loan_id = "L9".into();
        let mut partner = vec![rec(R, "p1", 4_000, 1_200), rec(R, "p2", 5_000, 1_500)];
        for r in &mut partner {
            r.loan_id = "L2".into();
        }
        let mut bank = bank;
        bank[0].loan_id = "L2".into();
        bank[1].loan_id = "L3".into();
        bank[2].loan_id = "L3".into();
        let mut p3 = rec(R, "p3", 3_000, 900);
        p3.loan_id = "L3".into();
        partner.push(p3);
        let o = run(&bank, &partner, Tolerance::default());
        assert_eq!(o.one_to_many, 1);
        assert_eq!(o.many_to_one, 1);
        assert_eq!(o.count(Class::Matched), 2);
        assert!(o.breaks.is_empty());
        // Lines come from the bank's records: 1 + 2.
        assert_eq!(o.settlement.lines, 3);
        assert_eq!(o.settlement.bank_owes_gross, 2_700 + 300 + 600);
    }

    #[test]
    fn settlement_follows_the_cash() {
        let mut rep = rec(R, "r1", 10_000, 3_000);
        rep.collected_by = Book::Partner;
        let mut fee = rec(Kind::Fee, "f1", 500, 200);
        fee.collected_by = Book::Bank;
        let disb = rec(D, "d1", 100_000, 30_000);
        let all = vec![rep, fee, disb];
        let o = run(&all, &all, Tolerance::default());
        // Partner owes: its disbursement share 30,000 + the bank's 7,000 of
        // what it collected; the bank owes the partner's 200 of the fee.
        assert_eq!(o.settlement.partner_owes_gross, 37_000);
        assert_eq!(o.settlement.bank_owes_gross, 200);
        assert_eq!(o.settlement.partner_owes_bank(), 36_800);
        let lines: Vec<_> = o.lines.iter().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].transaction_id, "r1");
        assert_eq!(lines[0].loan_id, "L1");
        assert_eq!((lines[0].owed_by, lines[0].owed), (Book::Partner, 7_000));
    }

    #[test]
    fn carried_breaks_close_when_the_record_arrives() {
        let mut m = Matcher::new(Pair::BankPartner, Tolerance::default(), true);
        m.carry("brk-1".into(), true, rec(R, "late", 1_000, 300));
        m.carry("brk-2".into(), true, rec(R, "still", 1_000, 300));
        m.feed(false, rec(R, "late", 1_000, 300));
        m.feed(true, rec(R, "today", 2_000, 600));
        m.feed(false, rec(R, "today", 2_000, 600));
        let o = m.finish();
        assert_eq!(o.resolved, ["brk-1"]);
        assert_eq!(o.count(Class::Matched), 2);
        // The still-missing record stays open on its own day, not reported again.
        assert!(o.breaks.is_empty());
    }

    #[test]
    fn three_way_compares_each_side_with_the_ledger() {
        let mut r = Reconciler::new(Tolerance::default(), true);
        r.feed(Book::Ledger, rec(R, "a", 1_000, 300));
        r.feed(Book::Ledger, rec(R, "b", 1_000, 300));
        r.feed(Book::Bank, rec(R, "a", 1_000, 300));
        r.feed(Book::Bank, rec(R, "b", 1_000, 300));
        r.feed(Book::Partner, rec(R, "a", 1_000, 300));
        r.feed(Book::Partner, rec(R, "c", 1_000, 300));
        let o = r.finish();
        assert_eq!(o.len(), 3);
        assert_eq!(o[0].count(Class::Matched), 1);
        assert_eq!(o[0].count(Class::MissingOnBankSide), 1);
        assert_eq!(o[0].count(Class::MissingOnPartnerSide), 1);
        assert_eq!(o[1].count(Class::Matched), 2);
        assert_eq!(o[2].count(Class::Matched), 1);
        assert_eq!(o[2].count(Class::MissingInLedger), 1);
        assert_eq!(o[2].count(Class::MissingOnPartnerSide), 1);
    }

    #[test]
    fn waiting_keeps_ids_that_share_a_fingerprint() {
        let p = |tx: &str| Pending {
            left: true,
            rec: rec(R, tx, 1, 0),
            carried: None,
        };
        let mut w = Waiting::default();
        w.insert(7, p("a"));
        w.insert(7, p("b"));
        assert!(w.get(7, "a").is_some() && w.get(7, "b").is_some());
        assert!(w.get(7, "c").is_none());
        assert!(w.remove(7, "a").is_some());
        assert_eq!(
            w.get(7, "b").map(|p| p.rec.transaction_id.as_str()),
            Some("b")
        );
        assert_eq!(w.drain().count(), 1);
    }

    fn arb_recs() -> impl Strategy<Value = Vec<(u8, i64, i64, bool)>> {
        proptest::collection::vec(
            (0u8..40, 0i64..1_000_000, 0i64..10_000, any::<bool>()),
            0..60,
        )
    }

    proptest! {
        /// Every record is accounted for exactly once, whatever the order,
        /// and settlement lines net to the settlement.
        #[test]
        fn every_record_is_accounted_for(recs in arb_recs(), seed in any::<u64>()) {
            let mut bank = Vec::new();
            let mut partner = Vec::new();
            for (i, (tx, amount, share, side)) in recs.iter().enumerate() {
                let mut r = rec(R, &format!("t{tx}"), *amount, (*share).min(*amount));
                r.line = i as i64;
                if *side { bank.push(r) } else { partner.push(r) }
            }
            let mut order: Vec<(bool, Rec)> = bank.iter().map(|r| (true, r.clone()))
                .chain(partner.iter().map(|r| (false, r.clone()))).collect();
            // A deterministic shuffle.
            let mut s = seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut m = Matcher::new(Pair::BankPartner, Tolerance::default(), true);
            for (left, r) in order { m.feed(left, r); }
            let o = m.finish();
            // Records in breaks + records behind matches = all records.
            let in_breaks: usize = o.breaks.iter()
                .map(|b| b.left.is_some() as usize + b.right.is_some() as usize).sum();
            prop_assert_eq!(in_breaks + o.matched_records as usize, bank.len() + partner.len());
            let net: i64 = o.lines.iter()
                .map(|l| if l.owed_by == Book::Partner { l.owed } else { -l.owed }).sum();
            prop_assert_eq!(net, o.settlement.partner_owes_bank());
        }
    }
}
