//! Realistic generated borrowers for the demo: resident IDs and credit codes
//! with correct check characters, plausible business data, and a planted
//! share of invalid identifiers and of applications the bank must decline.
use colend_core::{CreditCode, ResidentId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SURNAMES: [&str; 20] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "高", "林", "罗",
];
const GIVEN: [&str; 20] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀英", "华", "平",
];
const WORDS: [&str; 10] = [
    "恒通", "鑫源", "瑞丰", "华盛", "金桥", "宏达", "嘉禾", "聚福", "安泰", "新锐",
];
const TRADES: [&str; 10] = [
    "贸易",
    "餐饮",
    "电子",
    "物流",
    "服装",
    "建材",
    "科技",
    "农产品",
    "五金",
    "文化传媒",
];
/// (division code, city)
const REGIONS: [(&str, &str); 10] = [
    ("110105", "北京"),
    ("310115", "上海"),
    ("440305", "深圳"),
    ("330106", "杭州"),
    ("320583", "昆山"),
    ("350102", "福州"),
    ("510107", "成都"),
    ("420106", "武汉"),
    ("370202", "青岛"),
    ("610113", "西安"),
];
const CC_CHARS: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

/// Names on the demo's watchlists; borrowers planted with them are rejected by KYC.
pub const WATCHLISTED_PERSON: &str = "钱多多";
pub const WATCHLISTED_BUSINESS: &str = "深圳黑石投机贸易有限公司";

/// What the generator intends for a borrower (the system decides on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// A borrower the bank should be able to lend to.
    Good,
    /// A corrupted check character: rejected on submission.
    InvalidId,
    /// Housing or securities: declined (PROHIBITED_PURPOSE).
    ProhibitedPurpose,
    /// Older than the policy allows: declined (AGE_OUT_OF_RANGE).
    TooOld,
    /// Many loans elsewhere: declined (TOO_MANY_OPEN_LOANS).
    OverBorrowed,
    /// On a watchlist: rejected by KYC (WATCHLIST_HIT).
    Watchlisted,
    /// A thin, shrinking business: risk-priced above the all-in cap (NOT_PRICEABLE_UNDER_CAP).
    HighRisk,
    /// An individual business borrowing its whole RMB 200,000 cap; applying
    /// again before repaying is over the per-borrower limit (BORROWER_LIMIT_REACHED).
    AtBorrowerCap,
}

#[derive(Clone, Debug)]
pub struct Borrower {
    pub plant: Plant,
    pub person_name: String,
    pub resident_id: String,
    pub mobile: String,
    pub business_name: String,
    pub credit_code: String,
    pub years_in_business: i32,
    /// Minor units.
    pub requested: i64,
    pub term_months: i32,
    /// LoanPurpose value.
    pub purpose: i32,
    /// RepaymentMethod value.
    pub method: i32,
    pub partner_score: i32,
    pub annual_tax_revenue: i64,
    pub invoice_turnover: i64,
    pub turnover_trend_bps: i32,
    pub open_loans_elsewhere: i32,
}

pub fn resident_id(rng: &mut StdRng, region: &str, age: i32, today: chrono::NaiveDate) -> String {
    use chrono::Datelike;
    let year = today.year() - age - 1;
    let month = rng.random_range(1..=12);
    let day = rng.random_range(1..=28);
    let seq = rng.random_range(0..1000);
    let body = format!("{region}{year:04}{month:02}{day:02}{seq:03}");
    let check = ResidentId::check_char(&body).expect("17 digits");
    format!("{body}{check}")
}

pub fn credit_code(rng: &mut StdRng, region: &str) -> String {
    let kind = if rng.random_bool(0.7) { "91" } else { "92" };
    let org: String = (0..9)
        .map(|_| CC_CHARS[rng.random_range(0..CC_CHARS.len())] as char)
        .collect();
    let body = format!("{kind}{region}{org}");
    let check = CreditCode::check_char(&body).expect("valid characters");
    format!("{body}{check}")
}

/// Replaces the last (check) character with a wrong one.
fn corrupt(code: &str, alphabet: &[u8]) -> String {
    let last = code.as_bytes()[code.len() - 1];
    let wrong = alphabet
        .iter()
        .find(|c| **c != last)
        .copied()
        .unwrap_or(b'0');
    format!("{}{}", &code[..code.len() - 1], wrong as char)
}

/// Generates `n` borrowers from `seed`; the plant mix is fixed by index so
/// counts are predictable: about 5% invalid, 5% prohibited purpose, 4% too
/// old, 4% over-borrowed, 3% watchlisted, the rest good.
pub fn generate(n: usize, seed: u64, today: chrono::NaiveDate) -> Vec<Borrower> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let plant = match i % 100 {
                7 | 27 | 47 | 67 | 87 => Plant::InvalidId,
                11 | 31 | 51 | 71 | 91 => Plant::ProhibitedPurpose,
                13 | 38 | 63 | 88 => Plant::TooOld,
                17 | 42 | 68 | 93 => Plant::OverBorrowed,
                19 | 53 | 79 => Plant::Watchlisted,
                23 | 57 => Plant::HighRisk,
                29 | 83 => Plant::AtBorrowerCap,
                _ => Plant::Good,
            };
            let (region, city) = REGIONS[rng.random_range(0..REGIONS.len())];
            let age = if plant == Plant::TooOld {
                rng.random_range(66..75)
            } else {
                rng.random_range(23..60)
            };
            let mut rid = resident_id(&mut rng, region, age, today);
            let mut cc = credit_code(&mut rng, region);
            if plant == Plant::AtBorrowerCap {
                // 个体工商户: registration type 92.
                cc = format!("92{}", &cc[2..17]);
                cc.push(CreditCode::check_char(&cc).expect("valid characters"));
            }
            if plant == Plant::InvalidId {
                if i % 2 == 0 {
                    rid = corrupt(&rid, b"0123456789X");
                } else {
                    cc = corrupt(&cc, CC_CHARS);
                }
            }
            let person_name = if plant == Plant::Watchlisted && i % 2 == 1 {
                WATCHLISTED_PERSON.to_string()
            } else {
                format!(
                    "{}{}",
                    SURNAMES[rng.random_range(0..20)],
                    GIVEN[rng.random_range(0..20)]
                )
            };
            let business_name = if plant == Plant::Watchlisted && i % 2 == 0 {
                WATCHLISTED_BUSINESS.to_string()
            } else {
                format!(
                    "{city}{}{}有限公司",
                    WORDS[rng.random_range(0..10)],
                    TRADES[rng.random_range(0..10)]
                )
            };
            let revenue_yuan: i64 = rng.random_range(800_000..15_000_000);
            let requested_yuan: i64 = (rng.random_range(50_000..600_000) / 1_000) * 1_000;
            let method = rng.random_range(1..=3);
            let term = if method == 3 {
                [6, 12][rng.random_range(0..2)]
            } else {
                [6, 12, 18, 24, 36][rng.random_range(0..5)]
            };
            let mut b = Borrower {
                plant,
                person_name,
                resident_id: rid,
                mobile: format!(
                    "1{}{:09}",
                    [3, 5, 7, 8, 9][rng.random_range(0..5)],
                    rng.random_range(0..1_000_000_000)
                ),
                business_name,
                credit_code: cc,
                years_in_business: rng.random_range(1..15),
                requested: requested_yuan * 100,
                term_months: term,
                purpose: if plant == Plant::ProhibitedPurpose {
                    [5, 6][i % 2]
                } else {
                    rng.random_range(1..=4)
                },
                method,
                partner_score: rng.random_range(450..900),
                annual_tax_revenue: revenue_yuan * 100,
                invoice_turnover: revenue_yuan * rng.random_range(100..140),
                turnover_trend_bps: rng.random_range(-1_500..3_000),
                open_loans_elsewhere: if plant == Plant::OverBorrowed {
                    rng.random_range(6..10)
                } else {
                    rng.random_range(0..3)
                },
            };
            match plant {
                Plant::HighRisk => {
                    b.years_in_business = 0;
                    b.annual_tax_revenue = 150_000 * 100;
                    b.invoice_turnover = 400_000 * 100;
                    b.requested = 100_000 * 100;
                    b.turnover_trend_bps = -3_000;
                    b.partner_score = 150;
                    b.open_loans_elsewhere = 3;
                }
                Plant::AtBorrowerCap => {
                    b.years_in_business = 10;
                    b.annual_tax_revenue = 10_000_000 * 100;
                    b.invoice_turnover = 12_000_000 * 100;
                    b.requested = 200_000 * 100;
                    b.turnover_trend_bps = 2_500;
                    b.partner_score = 850;
                    b.open_loans_elsewhere = 0;
                    b.method = 1;
                    b.term_months = 12;
                }
                _ => {}
            }
            b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identifiers_are_valid_unless_planted_invalid() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let b = generate(300, 42, today);
        for x in &b {
            let ok = ResidentId::parse(&x.resident_id).is_ok()
                && CreditCode::parse(&x.credit_code).is_ok();
            assert_eq!(ok, x.plant != Plant::InvalidId, "{x:?}");
            assert!(colend_core::Mobile::parse(&x.mobile).is_ok());
        }
        assert_eq!(b.iter().filter(|x| x.plant == Plant::InvalidId).count(), 15);
        // Deterministic for a seed.
        assert_eq!(
            generate(5, 7, today)[4].resident_id,
            generate(5, 7, today)[4].resident_id
        );
    }
}
