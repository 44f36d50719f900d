//! KYC rules. Pure: no I/O.
use chrono::NaiveDate;
use colend_core::{CreditCode, Mobile, ResidentId};

/// A watchlist entry as screening sees it.
#[derive(Clone, Debug)]
pub struct ListedName {
    pub kind: i32,
    pub name: String,
    pub normalized: String,
}

/// A match of a subject against a listed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub kind: i32,
    pub listed_name: String,
    pub subject: &'static str,
    /// 0–1000.
    pub score: i32,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub reason_codes: Vec<String>,
    pub age: i32,
    pub person_region: String,
    pub business_region: String,
    pub hits: Vec<Hit>,
}

impl Finding {
    pub fn passed(&self) -> bool {
        self.reason_codes.is_empty()
    }
}

/// Screening settings.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Minimum legal age to borrow.
    pub min_age: i32,
    /// Similarity (0–1000) from which a name counts as a watchlist hit.
    pub match_threshold: i32,
}

/// Business-name suffixes that carry no identity.
const SUFFIXES: [&str; 8] = [
    "有限责任公司",
    "股份有限公司",
    "有限公司",
    "个体工商户",
    "coltd",
    "limited",
    "ltd",
    "inc",
];

/// Lower-cases, drops spaces and punctuation and legal-form suffixes.
pub fn normalize_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(|c| c.to_lowercase())
        .collect();
    for suf in SUFFIXES {
        if let Some(stripped) = s.strip_suffix(suf)
            && !stripped.is_empty()
        {
            s = stripped.to_string();
            break;
        }
    }
    s
}

/// Similarity of two normalised names, 0–1000, from the Levenshtein distance
/// over characters.
pub fn similarity(a: &str, b: &str) -> i32 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let max = a.len().max(b.len());
    if max == 0 {
        return 1000;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let d = prev[b.len()];
    (1000 - (d * 1000 / max)) as i32
}

/// Screens a name against the lists.
pub fn screen(subject: &'static str, name: &str, lists: &[ListedName], threshold: i32) -> Vec<Hit> {
    let n = normalize_name(name);
    lists
        .iter()
        .filter_map(|l| {
            let score = similarity(&n, &l.normalized);
            (score >= threshold).then(|| Hit {
                kind: l.kind,
                listed_name: l.name.clone(),
                subject,
                score,
            })
        })
        .collect()
}

/// Who is checked: the legal representative and the business.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub person_name: &'a str,
    pub resident_id: &'a str,
    pub mobile: &'a str,
    pub business_name: &'a str,
    pub credit_code: &'a str,
}

/// Runs every check on a borrower.
pub fn check(
    subject: &Subject<'_>,
    today: NaiveDate,
    lists: &[ListedName],
    rules: &Rules,
) -> Finding {
    let Subject {
        person_name,
        resident_id,
        mobile,
        business_name,
        credit_code,
    } = *subject;
    let mut reasons = Vec::new();
    let mut age = 0;
    let mut person_region = String::new();
    let mut business_region = String::new();
    match ResidentId::parse(resident_id) {
        Ok(id) => {
            person_region = id.region_code().to_string();
            match id.age_on(today) {
                Some(a) if a < 0 || id.birth_date().is_some_and(|b| b > today) => {
                    reasons.push("BIRTH_DATE_IN_FUTURE".to_string())
                }
                Some(a) => {
                    age = a;
                    if a < rules.min_age {
                        reasons.push("UNDERAGE".to_string());
                    }
                }
                None => reasons.push("RESIDENT_ID_INVALID".to_string()),
            }
        }
        Err(_) => reasons.push("RESIDENT_ID_INVALID".to_string()),
    }
    match CreditCode::parse(credit_code) {
        Ok(cc) => business_region = cc.region_code().to_string(),
        Err(_) => reasons.push("CREDIT_CODE_INVALID".to_string()),
    }
    if Mobile::parse(mobile).is_err() {
        reasons.push("MOBILE_INVALID".to_string());
    }
    let mut hits = screen("person", person_name, lists, rules.match_threshold);
    hits.extend(screen(
        "business",
        business_name,
        lists,
        rules.match_threshold,
    ));
    if !hits.is_empty() {
        reasons.push("WATCHLIST_HIT".to_string());
    }
    Finding {
        reason_codes: reasons,
        age,
        person_region,
        business_region,
        hits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            min_age: 18,
            match_threshold: 850,
        }
    }

    fn cc() -> String {
        let body = "91350100M000100Y4";
        format!("{body}{}", CreditCode::check_char(body).unwrap())
    }

    #[test]
    fn normalisation_drops_legal_form_and_punctuation() {
        assert_eq!(normalize_name("Acme Trading Co., Ltd."), "acmetrading");
        assert_eq!(normalize_name("福州 星河 贸易有限公司"), "福州星河贸易");
    }

    #[test]
    fn similarity_bounds() {
        assert_eq!(similarity("abc", "abc"), 1000);
        assert_eq!(similarity("abc", "xyz"), 0);
        assert_eq!(similarity("王小明", "王晓明"), 667);
    }

    #[test]
    fn passes_a_clean_borrower() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let f = check(
            &Subject {
                person_name: "王小明",
                resident_id: "11010519491231002X",
                mobile: "13812345678",
                business_name: "星河贸易有限公司",
                credit_code: &cc(),
            },
            today,
            &[],
            &rules(),
        );
        assert!(f.passed(), "{f:?}");
        assert_eq!(f.age, 76);
        assert_eq!(f.person_region, "110105");
        assert_eq!(f.business_region, "350100");
    }

    #[test]
    fn fuzzy_watchlist_hit_rejects() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let lists = vec![ListedName {
            kind: 3,
            name: "Star River Trading Co Ltd".into(),
            normalized: normalize_name("Star River Trading Co Ltd"),
        }];
        let f = check(
            &Subject {
                person_name: "Li Lei",
                resident_id: "11010519491231002X",
                mobile: "13812345678",
                business_name: "Star-River Trading Limited",
                credit_code: &cc(),
            },
            today,
            &lists,
            &rules(),
        );
        assert_eq!(f.reason_codes, vec!["WATCHLIST_HIT"]);
        assert_eq!(f.hits[0].subject, "business");
    }

    #[test]
    fn invalid_identifiers_and_minors_are_rejected() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let f = check(
            &Subject {
                person_name: "A",
                resident_id: "110105194912310021",
                mobile: "23812345678",
                business_name: "B",
                credit_code: "91350100M000100Y4X",
            },
            today,
            &[],
            &rules(),
        );
        assert_eq!(
            f.reason_codes,
            vec![
                "RESIDENT_ID_INVALID",
                "CREDIT_CODE_INVALID",
                "MOBILE_INVALID"
            ]
        );
        let body = "11010520150101001";
        let minor = format!("{body}{}", ResidentId::check_char(body).unwrap());
        let f = check(
            &Subject {
                person_name: "A",
                resident_id: &minor,
                mobile: "13812345678",
                business_name: "B",
                credit_code: &cc(),
            },
            today,
            &[],
            &rules(),
        );
        assert_eq!(f.reason_codes, vec!["UNDERAGE"]);
    }
}
