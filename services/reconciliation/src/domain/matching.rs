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
//! Rolling re-matching: every open break of earlier days, whatever its class,
//! is carried in before the day's records ([`Matcher::carry`]). The day's
//! first record of the break's transaction id on each side takes the place of
//! that side's record behind the break (a further one on the same side is a
//! duplicate). At [`Matcher::finish`] each carried break the day brought a
//! different record for is examined again with the latest record of each
//! side: when the pair now matches, the break is **resolved** and the pair
//! settles in this day's settlement, exactly as a match of the day does; when
//! it still differs (or one side is still missing), the break is **replaced**
//! by a break of this day holding the latest records, which rolls forward in
//! its turn. A carried break the day brought nothing new for stays open, as it
//! is, and is not reported again. A carried **duplicate** never settles: its
//! transaction settled when its first records matched, so when the other side
//! sends the same copy (a second booking, or the first one exported again) the
//! duplicate is **cleared**, closed settling nothing; a copy that differs keeps
//! it a duplicate, holding the latest records.
//!
//! Settlement: each matched transaction gives one line per bank record. The
//! side holding the cash owes the other side that side's portion; for a
//! disbursement the side that advanced the whole amount is owed the other
//! side's portion. A break settles nothing on the day it is found; it settles
//! on the day it is resolved, once: by re-matching (above) or by hand
//! ([`Matcher::settle_resolved`]). Every sum is checked: a total that does not
//! fit in an `i64` of minor units fails the run ([`Overflow`]), never wraps.
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

/// A sum of amounts that does not fit in an `i64` of minor units: the run
/// fails with it rather than wrap. The text names the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow(pub &'static str);

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} does not fit in a signed 64-bit count of minor units",
            self.0
        )
    }
}

impl std::error::Error for Overflow {}

/// The day's net between bank and partner, minor units of the run's one
/// currency (a run never mixes currencies).
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
    /// Positive: the partner pays the bank. `None` when the net does not fit
    /// (never for a settlement [`Matcher::finish`] returned).
    pub fn partner_owes_bank(&self) -> Option<i64> {
        self.partner_owes_gross.checked_sub(self.bank_owes_gross)
    }

    /// Adds one line of `r` (the bank's record), all sums checked; on
    /// overflow nothing is added.
    fn add(&mut self, r: &Rec, owed_by: Book, owed: i64) -> Result<(), Overflow> {
        let mut s = *self;
        let add = |total: i64, what| total.checked_add(owed).ok_or(Overflow(what));
        match owed_by {
            Book::Partner => s.partner_owes_gross = add(s.partner_owes_gross, "partner's gross")?,
            _ => s.bank_owes_gross = add(s.bank_owes_gross, "bank's gross")?,
        }
        match (r.kind, r.collected_by) {
            (Kind::Disbursement, Book::Bank) => {
                s.partner_disbursement_share =
                    add(s.partner_disbursement_share, "partner's disbursement share")?;
            }
            (Kind::Repayment | Kind::Fee, Book::Bank) => {
                s.partner_repayment_share =
                    add(s.partner_repayment_share, "partner's repayment share")?;
            }
            _ => {}
        }
        s.partner_owes_bank().ok_or(Overflow("net settlement"))?;
        s.lines = s.lines.checked_add(1).ok_or(Overflow("line count"))?;
        *self = s;
        Ok(())
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
    /// Ids of carried-in breaks of earlier runs that now match: resolved by
    /// this run, their pair settled in this run's settlement.
    pub resolved: Vec<String>,
    /// Carried-in breaks this run's records changed that still differ: (id,
    /// index in `breaks` of this run's break that carries the transaction on).
    pub replaced: Vec<(String, usize)>,
    /// Ids of carried-in DUPLICATE breaks whose other side this run sent
    /// the same copy of: closed by this run, settling nothing (the
    /// transaction settled when its first records matched).
    pub cleared: Vec<String>,
    /// Ids of breaks resolved by hand whose bank record this run settled.
    pub settled: Vec<String>,
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
}

/// An open break of an earlier run, carried in to be examined again.
struct Carried {
    break_id: String,
    class: Class,
    /// The records behind the break (at least one).
    was: [Option<Rec>; 2],
    /// This run's first record of the transaction on each side (left, right).
    now: [Option<Rec>; 2],
}

impl Carried {
    fn transaction_id(&self) -> &str {
        self.was
            .iter()
            .flatten()
            .map(|r| r.transaction_id.as_str())
            .next()
            .unwrap_or("")
    }
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
    /// Open breaks of earlier runs, by the fingerprint of their transaction
    /// id (several when breaks share one).
    carried: HashMap<u128, Vec<Carried>, Prints>,
    /// The first total that did not fit.
    overflow: Option<Overflow>,
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
            carried: HashMap::default(),
            overflow: None,
            out: Outcome {
                pair: Some(pair),
                ..Outcome::default()
            },
        }
    }

    /// Carries in an open break of an earlier run, of any class, with the
    /// records behind it (`left`, `right`: at least one), before the day's
    /// records are fed. Breaks sharing a transaction id take the day's
    /// records in the order carried, a duplicate's copy last.
    pub fn carry(&mut self, break_id: String, class: Class, left: Option<Rec>, right: Option<Rec>) {
        let Some(tx) = left.as_ref().or(right.as_ref()).map(|r| &r.transaction_id) else {
            return;
        };
        let list = self.carried.entry(xxh3_128(tx.as_bytes())).or_default();
        let c = Carried {
            break_id,
            class,
            was: [left, right],
            now: [None, None],
        };
        let at = if class == Class::Duplicate {
            list.len()
        } else {
            list.iter()
                .position(|c| c.class == Class::Duplicate)
                .unwrap_or(list.len())
        };
        list.insert(at, c);
    }

    /// Settles the bank's record of a break resolved by hand, in this run's
    /// settlement (once: the caller carries each such break into one stored
    /// run). Only the bank–partner matcher settles.
    pub fn settle_resolved(&mut self, break_id: String, bank: &Rec) {
        if !self.settle {
            return;
        }
        self.settle_line(bank);
        self.out.settled.push(break_id);
    }

    /// Feeds one record of the left (`left = true`) or right book.
    pub fn feed(&mut self, left: bool, rec: Rec) {
        if left {
            self.out.left_records += 1;
        } else {
            self.out.right_records += 1;
        }
        let h = xxh3_128(rec.transaction_id.as_bytes());
        if !self.carried.is_empty()
            && let Some(list) = self.carried.get_mut(&h)
        {
            let side = usize::from(!left);
            let mut carried = false;
            for c in list.iter_mut() {
                if c.transaction_id() != rec.transaction_id {
                    continue;
                }
                carried = true;
                if c.now[side].is_none() {
                    c.now[side] = Some(rec);
                    return;
                }
            }
            if carried {
                // The day already sent this side's record of the transaction.
                self.duplicate(left, rec);
                return;
            }
        }
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
                if left {
                    self.compare(rec, p.rec, 2);
                } else {
                    self.compare(p.rec, rec, 2);
                }
            }
            None => {
                if self.seen.contains(&h) {
                    self.duplicate(left, rec);
                } else {
                    self.pending.insert(h, Pending { left, rec });
                }
            }
        }
    }

    /// Keeps the first total that did not fit; the run fails with it.
    fn overflowed(&mut self, o: Overflow) {
        self.overflow.get_or_insert(o);
    }

    fn count(&mut self, c: Class, amount: i64) {
        let e = self.out.classes.entry(c).or_insert((0, 0));
        e.0 += 1;
        match e.1.checked_add(amount) {
            Some(v) => e.1 = v,
            None => self.overflowed(Overflow("amount of a class")),
        }
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
            self.settle_line(r);
        }
    }

    /// Adds the settlement line of the bank's record `r`.
    fn settle_line(&mut self, r: &Rec) {
        let (owed_by, owed) = settle(r);
        match self.out.settlement.add(r, owed_by, owed) {
            Ok(()) => self.out.lines.push(r, owed_by, owed),
            Err(o) => self.overflowed(o),
        }
    }

    /// Compares the two records of one transaction id; `records` of them
    /// were fed by this run. `None` when they match, else the index in
    /// `breaks` of the break they make.
    fn compare(&mut self, l: Rec, r: Rec, records: usize) -> Option<usize> {
        let (class, comps, detail) = self.classify(&l, &r);
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
            self.matched(MatchKind::OneToOne, &[&l], amount, records);
            return None;
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
        Some(self.out.breaks.len() - 1)
    }

    /// How two records of one transaction id compare, first difference
    /// wins: the class, the names of what differs, and the break's detail
    /// (empty when they match).
    fn classify(&self, l: &Rec, r: &Rec) -> (Class, Vec<&'static str>, String) {
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
        if class != Class::Matched && detail.is_empty() {
            detail = format!("differs in {}", comps.join(", "));
        }
        (class, comps, detail)
    }

    /// Examines a carried break again with the latest record of each side.
    fn reexamine(&mut self, c: Carried) {
        let Carried {
            break_id,
            class,
            was: [was_l, was_r],
            now: [now_l, now_r],
        } = c;
        let news = |now: &Option<Rec>, was: &Option<Rec>| match (now, was) {
            (Some(n), Some(w)) => !n.same_movement(w),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !news(&now_l, &was_l) && !news(&now_r, &was_r) {
            // Nothing new on either side: the break stays open as it is.
            return;
        }
        let fed = usize::from(now_l.is_some()) + usize::from(now_r.is_some());
        match (now_l.or(was_l), now_r.or(was_r)) {
            (Some(l), Some(r)) if class == Class::Duplicate => {
                // A duplicate is a further copy of a transaction id already
                // matched and settled: the other side's copy (a second
                // booking, or the first one exported again) never settles it
                // again. Copies that agree close the break, settling nothing;
                // copies that differ stay a duplicate, with the latest records.
                let (now, components, detail) = self.classify(&l, &r);
                if now == Class::Matched {
                    self.out.cleared.push(break_id);
                    return;
                }
                self.push_break(BreakItem {
                    pair: self.pair,
                    class: Class::Duplicate,
                    transaction_id: l.transaction_id.clone(),
                    loan_id: l.loan_id.clone(),
                    left: Some(l),
                    right: Some(r),
                    components,
                    detail: format!("copies of an already matched transaction differ: {detail}"),
                });
                self.out
                    .replaced
                    .push((break_id, self.out.breaks.len() - 1));
            }
            (Some(l), Some(r)) => match self.compare(l, r, fed) {
                None => self.out.resolved.push(break_id),
                Some(i) => self.out.replaced.push((break_id, i)),
            },
            (l, r) => {
                // Still one-sided: the side's new record replaces the old one.
                let left = l.is_some();
                let Some(rec) = l.or(r) else {
                    return;
                };
                let (class, detail) = if class == Class::Duplicate {
                    (
                        Class::Duplicate,
                        format!(
                            "transaction id already seen on the {} side",
                            self.book(left).name().to_lowercase()
                        ),
                    )
                } else {
                    (
                        self.pair.missing(left),
                        format!("no {} record", self.book(!left).name().to_lowercase()),
                    )
                };
                self.one_sided(class, left, rec, detail);
                self.out
                    .replaced
                    .push((break_id, self.out.breaks.len() - 1));
            }
        }
    }

    /// Examines the carried breaks again, groups what is left, matches
    /// one-to-many and many-to-one, reports the rest as missing. Fails when
    /// a total does not fit in an `i64` of minor units.
    pub fn finish(mut self) -> Result<Outcome, Overflow> {
        let mut carried: Vec<Carried> = self.carried.drain().flat_map(|(_, v)| v).collect();
        carried.sort_by(|a, b| a.break_id.cmp(&b.break_id));
        for c in carried {
            self.reexamine(c);
        }
        type Key = (String, Kind, Day, Book);
        let mut groups: BTreeMap<Key, (Vec<Rec>, Vec<Rec>)> = BTreeMap::new();
        let waiting: Vec<Pending> = self.pending.drain().collect();
        for p in waiting {
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
                    let amount = match colend_core::money::checked_sum(ls.iter().map(|r| r.amount))
                    {
                        Ok(a) => a,
                        Err(_) => {
                            self.overflowed(Overflow("amount of a one-to-many group"));
                            0
                        }
                    };
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
        if self.out.settlement.partner_owes_bank().is_none() {
            self.overflowed(Overflow("net settlement"));
        }
        match self.overflow {
            Some(o) => Err(o),
            None => Ok(self.out),
        }
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

    /// Carries an open break of an earlier run into the matcher of its
    /// pair; `false` when the run does not compare that pair (a ledger pair
    /// outside a three-way run).
    pub fn carry(
        &mut self,
        pair: Pair,
        break_id: String,
        class: Class,
        left: Option<Rec>,
        right: Option<Rec>,
    ) -> bool {
        match self.matcher(pair) {
            Some(m) => {
                m.carry(break_id, class, left, right);
                true
            }
            None => false,
        }
    }

    /// The bank–partner outcome first, then the ledger pairs.
    pub fn finish(self) -> Result<Vec<Outcome>, Overflow> {
        let mut v = vec![self.bank_partner.finish()?];
        if let Some(m) = self.bank_ledger {
            v.push(m.finish()?);
        }
        if let Some(m) = self.partner_ledger {
            v.push(m.finish()?);
        }
        Ok(v)
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
        m.finish().unwrap()
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
        assert_eq!(
            o.settlement.partner_owes_bank(),
            Some(30_000 - 3_100 - 1_500)
        );
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
        assert_eq!(o.settlement.partner_owes_bank(), Some(36_800));
        let lines: Vec<_> = o.lines.iter().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].transaction_id, "r1");
        assert_eq!(lines[0].loan_id, "L1");
        assert_eq!((lines[0].owed_by, lines[0].owed), (Book::Partner, 7_000));
    }

    #[test]
    fn carried_breaks_close_when_the_record_arrives() {
        let mut m = Matcher::new(Pair::BankPartner, Tolerance::default(), true);
        let missing = Class::MissingOnPartnerSide;
        m.carry(
            "brk-1".into(),
            missing,
            Some(rec(R, "late", 1_000, 300)),
            None,
        );
        m.carry(
            "brk-2".into(),
            missing,
            Some(rec(R, "still", 1_000, 300)),
            None,
        );
        m.feed(false, rec(R, "late", 1_000, 300));
        m.feed(true, rec(R, "today", 2_000, 600));
        m.feed(false, rec(R, "today", 2_000, 600));
        let o = m.finish().unwrap();
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
        let o = r.finish().unwrap();
        assert_eq!(o.len(), 3);
        assert_eq!(o[0].count(Class::Matched), 1);
        assert_eq!(o[0].count(Class::MissingOnBankSide), 1);
        assert_eq!(o[0].count(Class::MissingOnPartnerSide), 1);
        assert_eq!(o[1].count(Class::Matched), 2);
        assert_eq!(o[2].count(Class::Matched), 1);
        assert_eq!(o[2].count(Class::MissingInLedger), 1);
        assert_eq!(o[2].count(Class::MissingOnPartnerSide), 1);
    }

    /// Runs day after day as the service does: every open break is carried
    /// into the next run; what a run resolves or replaces closes; its breaks
    /// open.
    struct Days {
        pair: Pair,
        /// (break id, class, left, right), in the order found.
        open: Vec<(String, Class, Option<Rec>, Option<Rec>)>,
        found: usize,
    }

    impl Days {
        fn new(pair: Pair) -> Self {
            Days {
                pair,
                open: Vec::new(),
                found: 0,
            }
        }

        fn run(&mut self, left: &[Rec], right: &[Rec]) -> Outcome {
            let mut m = Matcher::new(
                self.pair,
                Tolerance::default(),
                self.pair == Pair::BankPartner,
            );
            for (id, class, l, r) in &self.open {
                m.carry(id.clone(), *class, l.clone(), r.clone());
            }
            // The right side first: the order records arrive in must not matter.
            for r in right {
                m.feed(false, r.clone());
            }
            for l in left {
                m.feed(true, l.clone());
            }
            let o = m.finish().unwrap();
            let closed: HashSet<&String> = o
                .resolved
                .iter()
                .chain(&o.cleared)
                .chain(o.replaced.iter().map(|(id, _)| id))
                .collect();
            self.open.retain(|b| !closed.contains(&b.0));
            for b in &o.breaks {
                self.found += 1;
                self.open.push((
                    format!("brk-{:06}", self.found),
                    b.class,
                    b.left.clone(),
                    b.right.clone(),
                ));
            }
            o
        }

        fn open_ids(&self) -> Vec<&str> {
            self.open.iter().map(|b| b.0.as_str()).collect()
        }
    }

    /// (partner owes bank, lines) of a day.
    fn net(o: &Outcome) -> (i64, i64) {
        (
            o.settlement.partner_owes_bank().unwrap(),
            o.settlement.lines,
        )
    }

    /// Every break class but the duplicate (below): day 1 finds it and
    /// settles nothing of it; three days without news leave it open, as it
    /// is; the day a record makes it match resolves it and settles it once,
    /// in that day's settlement, from the bank's record; the next day does
    /// not count it again.
    #[test]
    #[expect(
        clippy::inconsistent_digit_grouping,
        reason = "amounts written yuan_fen: 10_000_00 is CNY 10,000.00"
    )]
    fn every_break_class_rolls_forward_and_settles_once_on_the_day_it_resolves() {
        // The bank collected 10,000.00 of which 3,000.00 is the partner's:
        // the bank owes the partner 3,000.00 (net -3,000.00).
        let x = rec(R, "x", 10_000_00, 3_000_00);
        let owed_x = -3_000_00;
        let with = |f: &dyn Fn(&mut Rec)| {
            let mut r = x.clone();
            f(&mut r);
            r
        };
        let mut act_365 = x.clone();
        act_365.components = Some([9_800_00, 200_00, 0, 0]);
        // The same interest by ACT/360: 202.78 rather than 200.00.
        let mut act_360 = act_365.clone();
        act_360.components = Some([9_800_00, 202_78, 0, 0]);
        act_360.amount += 2_78;
        act_360.bank_portion += 2_78;
        type Day1 = (Vec<Rec>, Vec<Rec>);
        // (class, day 1's bank and partner records, the records that
        // resolve it: bank, partner; day 1's own settlement).
        let cases: Vec<(Class, Day1, Day1, (i64, i64))> = vec![
            (
                Class::AmountMismatch,
                (
                    vec![x.clone()],
                    vec![with(&|r| {
                        r.amount += 2;
                        r.bank_portion += 2;
                    })],
                ),
                (vec![], vec![x.clone()]),
                (0, 0),
            ),
            (
                // A day-count difference: the interest component differs.
                Class::AmountMismatch,
                (vec![act_365.clone()], vec![act_360]),
                (vec![], vec![act_365.clone()]),
                (0, 0),
            ),
            (
                Class::MissingOnBankSide,
                (vec![], vec![x.clone()]),
                (vec![x.clone()], vec![]),
                (0, 0),
            ),
            (
                Class::MissingOnPartnerSide,
                (vec![x.clone()], vec![]),
                (vec![], vec![x.clone()]),
                (0, 0),
            ),
            (
                Class::DateOffset,
                (vec![x.clone()], vec![with(&|r| r.value_date += 1)]),
                (vec![], vec![x.clone()]),
                (0, 0),
            ),
            (
                Class::SplitRounding,
                (
                    vec![x.clone()],
                    vec![with(&|r| {
                        r.partner_portion -= 1;
                        r.bank_portion += 1;
                    })],
                ),
                (vec![], vec![x.clone()]),
                (0, 0),
            ),
            (
                Class::AttributeMismatch,
                (vec![x.clone()], vec![with(&|r| r.loan_id = "L2".into())]),
                (vec![], vec![x.clone()]),
                (0, 0),
            ),
        ];
        // Each day also brings one clean pair of its own, which settles that day.
        let clean = |d: usize| rec(D, &format!("clean-{d}"), 1_000_00, 300_00);
        let clean_owed = 300_00;
        for (class, (bank1, partner1), (bank_n, partner_n), day1_own) in cases {
            let mut days = Days::new(Pair::BankPartner);
            let with_clean = |v: &[Rec], d: usize| {
                let mut v = v.to_vec();
                v.push(clean(d));
                v
            };
            let o = days.run(&with_clean(&bank1, 1), &with_clean(&partner1, 1));
            assert_eq!(o.breaks.len(), 1, "{class:?}");
            assert_eq!(o.breaks[0].class, class);
            assert_eq!(
                net(&o),
                (day1_own.0 + clean_owed, day1_own.1 + 1),
                "{class:?}: day 1 settles nothing of the break"
            );
            let id = days.open_ids()[0].to_string();
            for d in 2..=4 {
                let o = days.run(&[clean(d)], &[clean(d)]);
                assert_eq!(days.open_ids(), [id.as_str()], "{class:?}: day {d}");
                assert!(o.resolved.is_empty() && o.replaced.is_empty() && o.breaks.is_empty());
                assert_eq!(net(&o), (clean_owed, 1), "{class:?}: day {d}");
            }
            let o = days.run(&with_clean(&bank_n, 5), &with_clean(&partner_n, 5));
            assert_eq!(o.resolved, [id.as_str()], "{class:?}");
            assert!(o.breaks.is_empty(), "{class:?}: {:?}", o.breaks);
            assert!(days.open.is_empty());
            assert_eq!(
                net(&o),
                (owed_x + clean_owed, 2),
                "{class:?}: the resolving day settles it once"
            );
            assert_eq!(o.count(Class::Matched), 2);
            let line = o.lines.iter().find(|l| l.transaction_id == "x").unwrap();
            assert_eq!((line.owed_by, line.owed), (Book::Bank, 3_000_00));
            let o = days.run(&[clean(6)], &[clean(6)]);
            assert_eq!(net(&o), (clean_owed, 1), "{class:?}: not counted again");
            assert!(o.resolved.is_empty());
        }
    }

    /// A record that changes a break without making it match replaces it:
    /// the new break holds the latest records and rolls on; the
    /// transaction settles once, the day it finally matches.
    #[test]
    fn a_change_that_still_differs_carries_the_break_on() {
        let x = rec(R, "x", 10_000, 3_000);
        let wrong = |by: i64| {
            let mut r = x.clone();
            r.amount += by;
            r.bank_portion += by;
            r
        };
        let mut days = Days::new(Pair::BankPartner);
        days.run(std::slice::from_ref(&x), &[wrong(5)]);
        let first = days.open_ids()[0].to_string();
        // The same wrong record sent again is no news.
        let o = days.run(&[], &[wrong(5)]);
        assert!(o.breaks.is_empty() && o.replaced.is_empty());
        assert_eq!(days.open_ids(), [first.as_str()]);
        // Another wrong amount: the break is replaced by today's.
        let o = days.run(&[], &[wrong(3)]);
        assert_eq!(o.replaced, [(first.clone(), 0)]);
        assert_eq!(o.breaks[0].class, Class::AmountMismatch);
        assert_eq!(o.breaks[0].right.as_ref().unwrap().amount, 10_003);
        assert_eq!(net(&o), (0, 0));
        let second = days.open_ids()[0].to_string();
        assert_ne!(second, first);
        // The bank's own correction to 10,003 now matches the partner's latest.
        let o = days.run(&[wrong(3)], &[]);
        assert_eq!(o.resolved, [second]);
        assert_eq!(net(&o), (-3_000, 1));
        // A third record on one side of a carried transaction is a duplicate.
        let mut days = Days::new(Pair::BankPartner);
        days.run(std::slice::from_ref(&x), &[]);
        let o = days.run(&[], &[x.clone(), x.clone()]);
        assert_eq!(o.resolved.len(), 1);
        assert_eq!(o.count(Class::Duplicate), 1);
        assert_eq!(net(&o), (-3_000, 1));
    }

    /// A duplicate's transaction settles once, on the day its first records
    /// match: the other side's copy arriving later (a second booking, or the
    /// first exported again) clears the duplicate and settles nothing; a copy
    /// that differs keeps it a duplicate.
    #[test]
    fn a_carried_duplicate_clears_without_settling_again() {
        let x = rec(R, "x", 10_000, 3_000);
        let mut days = Days::new(Pair::BankPartner);
        // Day 1: the bank books x once, the partner twice.
        let o = days.run(std::slice::from_ref(&x), &[x.clone(), x.clone()]);
        assert_eq!(o.count(Class::Matched), 1);
        assert_eq!(o.count(Class::Duplicate), 1);
        assert_eq!(net(&o), (-3_000, 1), "x settles on day 1");
        let dup = days.open_ids()[0].to_string();
        // Day 2: the bank's file holds x again (an overlapping export).
        let o = days.run(std::slice::from_ref(&x), &[]);
        assert_eq!(o.cleared, [dup.as_str()]);
        assert!(o.resolved.is_empty() && o.replaced.is_empty() && o.breaks.is_empty());
        assert_eq!(o.count(Class::Matched), 0);
        assert_eq!(net(&o), (0, 0), "x is not settled again");
        assert!(days.open.is_empty());

        // The bank's copy differs from the partner's: still a duplicate, now
        // holding both copies; the agreeing copy later clears it. Nothing
        // settles after day 1.
        let mut days = Days::new(Pair::BankPartner);
        days.run(std::slice::from_ref(&x), &[x.clone(), x.clone()]);
        let dup = days.open_ids()[0].to_string();
        let mut other = x.clone();
        other.amount += 5;
        other.bank_portion += 5;
        let o = days.run(&[other], &[]);
        assert_eq!(o.replaced, [(dup, 0)]);
        assert_eq!(o.breaks[0].class, Class::Duplicate);
        assert!(o.breaks[0].left.is_some() && o.breaks[0].right.is_some());
        assert_eq!(o.breaks[0].components, ["amount"]);
        assert_eq!(net(&o), (0, 0));
        let o = days.run(std::slice::from_ref(&x), &[]);
        assert_eq!(o.cleared.len(), 1);
        assert_eq!(net(&o), (0, 0));
        assert!(days.open.is_empty());

        // Ledger pairs clear duplicates the same way.
        let mut days = Days::new(Pair::BankLedger);
        days.run(&[x.clone(), x.clone()], std::slice::from_ref(&x));
        let o = days.run(&[], std::slice::from_ref(&x));
        assert_eq!(o.cleared.len(), 1);
        assert!(days.open.is_empty());
    }

    /// Ledger pairs roll forward the same way and never settle.
    #[test]
    fn missing_in_ledger_rolls_forward_without_settling() {
        let x = rec(R, "x", 10_000, 3_000);
        let mut days = Days::new(Pair::BankLedger);
        let o = days.run(std::slice::from_ref(&x), &[]);
        assert_eq!(o.breaks[0].class, Class::MissingInLedger);
        let id = days.open_ids()[0].to_string();
        days.run(&[], &[]);
        let o = days.run(&[], std::slice::from_ref(&x));
        assert_eq!(o.resolved, [id]);
        assert_eq!(net(&o), (0, 0));
    }

    #[test]
    fn a_hand_resolution_settles_the_bank_record_once() {
        let mut m = Matcher::new(Pair::BankPartner, Tolerance::default(), true);
        let mut x = rec(R, "x", 10_000, 3_000);
        x.collected_by = Book::Partner;
        m.settle_resolved("brk-1".into(), &x);
        let o = m.finish().unwrap();
        assert_eq!(o.settled, ["brk-1"]);
        // The partner collected: it owes the bank the bank's 7,000.
        assert_eq!(net(&o), (7_000, 1));
        assert_eq!(o.count(Class::Matched), 0);
        let mut ledger = Matcher::new(Pair::BankLedger, Tolerance::default(), false);
        ledger.settle_resolved("brk-2".into(), &x);
        assert!(ledger.finish().unwrap().settled.is_empty());
    }

    #[test]
    fn totals_that_do_not_fit_fail_the_run_never_wrap() {
        // Each record alone is valid; the bank owes the partner 2 × (MAX - 1).
        let big = |tx: &str| {
            let mut r = rec(R, tx, i64::MAX, 0);
            r.bank_portion = 1;
            r.partner_portion = i64::MAX - 1;
            r
        };
        let recs = [big("a"), big("b")];
        let mut m = Matcher::new(Pair::BankPartner, Tolerance::default(), true);
        for r in &recs {
            m.feed(true, r.clone());
            m.feed(false, r.clone());
        }
        let e = m.finish().err().unwrap();
        assert!(e.to_string().contains("does not fit"), "{e}");
        // Class amounts too (a ledger pair settles nothing but counts).
        let mut m = Matcher::new(Pair::BankLedger, Tolerance::default(), false);
        for r in &recs {
            m.feed(true, r.clone());
        }
        assert_eq!(m.finish().err(), Some(Overflow("amount of a class")));
        // One-to-many: two partner records summing past i64.
        let mut m = Matcher::new(Pair::BankPartner, Tolerance::default(), true);
        m.feed(true, rec(R, "one", 1_000, 300));
        m.feed(false, big("p1"));
        m.feed(false, big("p2"));
        assert!(m.finish().is_err());
        // Settlement sums themselves.
        let mut s = Settlement {
            bank_owes_gross: i64::MAX,
            ..Settlement::default()
        };
        assert_eq!(
            s.add(&rec(R, "r", 10, 1), Book::Bank, 1),
            Err(Overflow("bank's gross"))
        );
        assert_eq!(s.bank_owes_gross, i64::MAX, "nothing added on overflow");
    }

    #[test]
    fn waiting_keeps_ids_that_share_a_fingerprint() {
        let p = |tx: &str| Pending {
            left: true,
            rec: rec(R, tx, 1, 0),
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

    /// One transaction's days: the bank's record arrives on `bank` and the
    /// partner's right record on `right` (5 or later: never); a wrong
    /// partner record (`defect`) may come first, on `wrong`.
    #[derive(Clone, Debug)]
    struct Story {
        bank: usize,
        wrong: Option<(usize, u8)>,
        right: usize,
        amount: i64,
        partner: i64,
        disbursement: bool,
    }

    fn arb_story() -> impl Strategy<Value = Story> {
        (
            0usize..6,
            0usize..6,
            proptest::option::of((1usize..3, 0u8..4)),
            10i64..1_000_000,
            0i64..5_000,
            any::<bool>(),
        )
            .prop_map(
                |(bank, first, wrong, amount, partner, disbursement)| Story {
                    bank,
                    wrong: wrong.map(|(_, defect)| (first, defect)),
                    right: first + wrong.map_or(0, |(gap, _)| gap),
                    amount,
                    partner: partner % (amount / 2),
                    disbursement,
                },
            )
    }

    proptest! {
        /// Whatever day each side's records arrive on, and whatever wrong
        /// records come first, each transaction settles exactly once, on the
        /// day its two sides first agree (the later of the bank's day and the
        /// partner's right record's day); until then it has exactly one open
        /// break. The oracle is that rule, applied per transaction.
        #[test]
        fn each_transaction_settles_once_on_the_day_its_sides_agree(
            stories in proptest::collection::vec(arb_story(), 1..40)
        ) {
            const DAYS: usize = 5;
            let recs: Vec<Rec> = stories.iter().enumerate().map(|(i, s)| {
                let kind = if s.disbursement { D } else { R };
                rec(kind, &format!("t{i:03}"), s.amount, s.partner)
            }).collect();
            let wrong = |r: &Rec, defect: u8| {
                let mut w = r.clone();
                match defect {
                    0 => { w.amount += 7; w.bank_portion += 7; }
                    1 => { w.partner_portion += 1; w.bank_portion -= 1; }
                    2 => w.value_date += 1,
                    _ => w.loan_id = "other".into(),
                }
                w
            };
            let mut days = Days::new(Pair::BankPartner);
            for d in 0..DAYS {
                let mut bank = Vec::new();
                let mut partner = Vec::new();
                for (s, r) in stories.iter().zip(&recs) {
                    if s.bank == d { bank.push(r.clone()); }
                    if let Some((w, defect)) = s.wrong && w == d { partner.push(wrong(r, defect)); }
                    if s.right == d { partner.push(r.clone()); }
                }
                let o = days.run(&bank, &partner);
                // The oracle: what settles today.
                let (mut want_net, mut want_lines) = (0i64, 0i64);
                for (s, r) in stories.iter().zip(&recs) {
                    if s.bank < DAYS && s.right < DAYS && s.bank.max(s.right) == d {
                        let (by, v) = settle(r);
                        want_net += if by == Book::Partner { v } else { -v };
                        want_lines += 1;
                    }
                }
                prop_assert_eq!(net(&o), (want_net, want_lines), "day {}", d);
            }
            // What never agreed has exactly one open break; the rest none.
            for (s, r) in stories.iter().zip(&recs) {
                let open = days.open.iter().filter(|b| {
                    b.2.as_ref().or(b.3.as_ref()).unwrap().transaction_id == r.transaction_id
                }).count();
                let seen = s.bank < DAYS || s.right < DAYS || s.wrong.is_some_and(|(w, _)| w < DAYS);
                let settled = s.bank < DAYS && s.right < DAYS;
                prop_assert_eq!(open, usize::from(seen && !settled), "{:?}", s);
            }
        }
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
            let o = m.finish().unwrap();
            // Records in breaks + records behind matches = all records.
            let in_breaks: usize = o.breaks.iter()
                .map(|b| b.left.is_some() as usize + b.right.is_some() as usize).sum();
            prop_assert_eq!(in_breaks + o.matched_records as usize, bank.len() + partner.len());
            let net: i64 = o.lines.iter()
                .map(|l| if l.owed_by == Book::Partner { l.owed } else { -l.owed }).sum();
            prop_assert_eq!(Some(net), o.settlement.partner_owes_bank());
        }
    }
}
