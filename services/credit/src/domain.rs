//! Credit rules, scorecard and pricing. Pure: no I/O. Every number comes from
//! the `Policy`, which is configuration and versioned.
use colend_platform::config::{env_opt, env_parse};
use serde::{Deserialize, Serialize};

/// Scorecard version; its coefficients are the constants in `score`.
pub const SCORECARD_VERSION: &str = "sc1";

/// The bank's credit policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub version: String,
    pub min_age: i32,
    pub max_age: i32,
    /// Division-code prefixes the bank may lend in (rule C4); empty = nationwide.
    pub allowed_region_prefixes: Vec<String>,
    /// Loan purposes declined (rule C7), as LoanPurpose names without prefix.
    pub prohibited_purposes: Vec<String>,
    pub max_open_loans_elsewhere: i32,
    /// The currency the bank lends in under this policy (ISO 4217): every
    /// amount of the policy is in it, and a request in another currency is
    /// declined (CURRENCY_MISMATCH): a limit in CNY says nothing of USD.
    pub currency: String,
    /// Product limits, minor units (rule C6b: 1,000,000 CNY fully online).
    pub product_max_amount: i64,
    pub product_min_amount: i64,
    pub min_term_months: i32,
    pub max_term_months: i32,
    /// Interest-first loans at most this long (rule C6: one year).
    pub max_bullet_term_months: i32,
    /// Most a business may owe across partners (rule C6b: 1,000,000 CNY online).
    pub per_borrower_cap: i64,
    /// Most an individual business (个体工商户) may owe (rule C6: 200,000 CNY).
    pub individual_borrower_cap: i64,
    /// Days in the interest year of the bank's agreements (360 for ACT/360,
    /// 365 for ACT/365): the all-in cost is annualised over 365 days.
    pub day_count_basis: i32,
    pub funding_cost_bps: i32,
    pub operating_cost_bps: i32,
    pub lgd_bps: i32,
    pub margin_bps: i32,
    /// Fees on top of interest, a year (credit-enhancement fee included).
    pub fee_bps: i32,
    /// All-in annual cost cap (rule C12: 24%).
    pub apr_cap_bps: i32,
    pub max_pd_bps: i32,
}

impl Policy {
    /// The default policy, every number overridable by `COLEND_CREDIT_*`.
    pub fn from_env() -> anyhow::Result<Policy> {
        let list = |name: &str, default: &str| -> Vec<String> {
            env_opt(name)
                .unwrap_or_else(|| default.to_string())
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Ok(Policy {
            version: env_opt("COLEND_CREDIT_POLICY_VERSION").unwrap_or_else(|| "default-1".into()),
            min_age: env_parse("COLEND_CREDIT_MIN_AGE", 18)?,
            max_age: env_parse("COLEND_CREDIT_MAX_AGE", 65)?,
            allowed_region_prefixes: list("COLEND_CREDIT_ALLOWED_REGIONS", ""),
            prohibited_purposes: list(
                "COLEND_CREDIT_PROHIBITED_PURPOSES",
                "HOUSING,SECURITIES,FUTURES,EQUITY_INVESTMENT,FIXED_ASSETS",
            ),
            max_open_loans_elsewhere: env_parse("COLEND_CREDIT_MAX_OPEN_LOANS", 4)?,
            currency: env_opt("COLEND_CREDIT_CURRENCY").unwrap_or_else(|| "CNY".into()),
            product_max_amount: env_parse("COLEND_CREDIT_PRODUCT_MAX_MINOR", 100_000_000)?,
            product_min_amount: env_parse("COLEND_CREDIT_PRODUCT_MIN_MINOR", 1_000_000)?,
            min_term_months: env_parse("COLEND_CREDIT_MIN_TERM_MONTHS", 3)?,
            max_term_months: env_parse("COLEND_CREDIT_MAX_TERM_MONTHS", 36)?,
            max_bullet_term_months: env_parse("COLEND_CREDIT_MAX_BULLET_TERM_MONTHS", 12)?,
            per_borrower_cap: env_parse("COLEND_CREDIT_PER_BORROWER_CAP_MINOR", 100_000_000)?,
            individual_borrower_cap: env_parse("COLEND_CREDIT_INDIVIDUAL_CAP_MINOR", 20_000_000)?,
            day_count_basis: env_parse("COLEND_CREDIT_DAY_COUNT_BASIS", 360)?,
            funding_cost_bps: env_parse("COLEND_CREDIT_FUNDING_COST_BPS", 250)?,
            operating_cost_bps: env_parse("COLEND_CREDIT_OPERATING_COST_BPS", 150)?,
            lgd_bps: env_parse("COLEND_CREDIT_LGD_BPS", 4_500)?,
            margin_bps: env_parse("COLEND_CREDIT_MARGIN_BPS", 200)?,
            fee_bps: env_parse("COLEND_CREDIT_FEE_BPS", 100)?,
            apr_cap_bps: env_parse("COLEND_CREDIT_APR_CAP_BPS", 2_400)?,
            max_pd_bps: env_parse("COLEND_CREDIT_MAX_PD_BPS", 5_000)?,
        })
    }

    /// Consistency of the numbers; each problem names its field.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut p = Vec::new();
        if self.version.trim().is_empty() || self.version.len() > 64 {
            p.push(("version", "must be 1 to 64 characters"));
        }
        if colend_core::Currency::parse(&self.currency).is_err() {
            p.push((
                "currency",
                "must be an active ISO 4217 currency such as CNY",
            ));
        }
        if !(0 < self.min_age && self.min_age <= self.max_age && self.max_age <= 120) {
            p.push(("min_age", "ages must satisfy 0 < min_age <= max_age <= 120"));
        }
        if !(0 < self.product_min_amount && self.product_min_amount <= self.product_max_amount) {
            p.push((
                "product_min_amount",
                "must be positive and at most product_max_amount",
            ));
        }
        if !(0 < self.min_term_months
            && self.min_term_months <= self.max_term_months
            && self.max_term_months <= 360)
        {
            p.push((
                "min_term_months",
                "terms must satisfy 0 < min <= max <= 360",
            ));
        }
        if !(0 < self.individual_borrower_cap
            && self.individual_borrower_cap <= self.per_borrower_cap)
        {
            p.push((
                "individual_borrower_cap",
                "must be positive and at most per_borrower_cap",
            ));
        }
        if !matches!(self.day_count_basis, 360 | 365) {
            p.push(("day_count_basis", "must be 360 or 365"));
        }
        if self.max_bullet_term_months <= 0 {
            p.push(("max_bullet_term_months", "must be positive"));
        }
        for (v, f) in [
            (self.funding_cost_bps, "funding_cost_bps"),
            (self.operating_cost_bps, "operating_cost_bps"),
            (self.margin_bps, "margin_bps"),
            (self.fee_bps, "fee_bps"),
        ] {
            if !(0..=10_000).contains(&v) {
                p.push((f, "must be between 0 and 10000"));
            }
        }
        if !(0..=10_000).contains(&self.lgd_bps) {
            p.push(("lgd_bps", "must be between 0 and 10000"));
        }
        if !(1..=10_000).contains(&self.apr_cap_bps) {
            p.push(("apr_cap_bps", "must be between 1 and 10000"));
        }
        if !(1..=10_000).contains(&self.max_pd_bps) {
            p.push(("max_pd_bps", "must be between 1 and 10000"));
        }
        p
    }
}

/// Repayment methods, as the decision needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    EqualInstalment,
    EqualPrincipal,
    InterestFirst,
}

/// What the bank decides on.
#[derive(Clone, Debug)]
pub struct Input {
    /// The currency of every amount below (the requested amount's).
    pub currency: String,
    pub age: i32,
    pub region_code: String,
    pub purpose: String,
    pub requested_amount: i64,
    pub term_months: i32,
    pub method: Method,
    pub partner_score: i32,
    pub years_in_business: i32,
    pub annual_tax_revenue: i64,
    pub invoice_turnover_12m: i64,
    pub turnover_trend_bps: i32,
    pub open_loans_elsewhere: i32,
    pub watchlist_hit: bool,
    /// Principal already owed across partners.
    pub existing_exposure: i64,
    pub individual_business: bool,
    pub partner_approved: bool,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub approved: bool,
    pub reasons: Vec<String>,
    pub points: i32,
    pub pd_bps: i32,
    pub grade: &'static str,
    pub approved_amount: i64,
    pub approved_term_months: i32,
    pub annual_rate_bps: i32,
    pub all_in_apr_bps: i32,
}

/// Scorecard points (base 600). Coefficients are version `SCORECARD_VERSION`.
/// Its revenue bands are in major units (yuan, calibrated on CNY) of the
/// policy's currency: `unit` is that currency's minor units per major unit
/// (100 for CNY, from its ISO 4217 exponent).
pub fn score(i: &Input, unit: i64) -> i32 {
    let mut p = 600;
    p += match i.years_in_business {
        ..=0 => -30,
        1..=2 => 0,
        3..=5 => 25,
        6..=10 => 40,
        _ => 50,
    };
    p += match i.annual_tax_revenue / unit {
        ..200_000 => -20,
        200_000..1_000_000 => 0,
        1_000_000..5_000_000 => 25,
        5_000_000..20_000_000 => 40,
        _ => 50,
    };
    p += match i.turnover_trend_bps {
        ..-2_000 => -40,
        -2_000..0 => -10,
        0..2_000 => 10,
        _ => 20,
    };
    // The partner's score is one input among others, capped at ±30 points.
    p += ((i.partner_score - 500) / 10).clamp(-30, 30);
    p += match i.open_loans_elsewhere {
        ..=0 => 15,
        1 => 5,
        2 => 0,
        _ => -25,
    };
    // Requested amount against invoiced turnover.
    p += if i.invoice_turnover_12m <= 0 {
        -20
    } else {
        match i.requested_amount as i128 * 100 / i.invoice_turnover_12m as i128 {
            ..=25 => 10,
            26..=50 => -10,
            _ => -30,
        }
    };
    p
}

/// Probability of default, basis points, by linear interpolation between anchors.
pub fn pd_from_points(points: i32) -> i32 {
    const ANCHORS: [(i32, i32); 7] = [
        (440, 6000),
        (500, 3000),
        (560, 1200),
        (620, 500),
        (680, 200),
        (740, 80),
        (800, 30),
    ];
    if points <= ANCHORS[0].0 {
        return ANCHORS[0].1;
    }
    for w in ANCHORS.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if points <= x1 {
            return y0 + (y1 - y0) * (points - x0) / (x1 - x0);
        }
    }
    ANCHORS[ANCHORS.len() - 1].1
}

pub fn grade(pd_bps: i32) -> &'static str {
    match pd_bps {
        ..=100 => "A",
        101..=300 => "B",
        301..=700 => "C",
        701..=1500 => "D",
        _ => "E",
    }
}

/// Largest amount per grade, minor units: major units of the policy's
/// currency times `unit` (its minor units per major unit).
pub fn grade_limit(grade: &str, unit: i64) -> i64 {
    unit * match grade {
        "A" => 1_000_000,
        "B" => 600_000,
        "C" => 300_000,
        "D" => 100_000,
        _ => 50_000,
    }
}

/// Decides. The same input and policy always give the same outcome.
pub fn decide(i: &Input, p: &Policy) -> Outcome {
    let mut reasons: Vec<String> = Vec::new();
    let r = |reasons: &mut Vec<String>, c: &str| reasons.push(c.to_string());
    // Every limit of the policy is in its currency: a request in another
    // is declined, never compared with them.
    if i.currency != p.currency {
        r(&mut reasons, "CURRENCY_MISMATCH");
    }
    // Minor units per major unit of the policy's currency (valid: see `problems`).
    let unit = colend_core::Currency::parse(&p.currency).map_or(100, |c| c.minor_per_major());
    if i.age < p.min_age || i.age > p.max_age {
        r(&mut reasons, "AGE_OUT_OF_RANGE");
    }
    if !p.allowed_region_prefixes.is_empty()
        && !p
            .allowed_region_prefixes
            .iter()
            .any(|pre| i.region_code.starts_with(pre.as_str()))
    {
        r(&mut reasons, "REGION_NOT_ALLOWED");
    }
    if p.prohibited_purposes.iter().any(|x| x == &i.purpose) {
        r(&mut reasons, "PROHIBITED_PURPOSE");
    }
    if i.watchlist_hit {
        r(&mut reasons, "WATCHLIST_HIT");
    }
    if i.open_loans_elsewhere > p.max_open_loans_elsewhere {
        r(&mut reasons, "TOO_MANY_OPEN_LOANS");
    }
    if i.requested_amount < p.product_min_amount || i.requested_amount > p.product_max_amount {
        r(&mut reasons, "AMOUNT_OUT_OF_RANGE");
    }
    if i.term_months < p.min_term_months || i.term_months > p.max_term_months {
        r(&mut reasons, "TERM_OUT_OF_RANGE");
    }
    if i.method == Method::InterestFirst && i.term_months > p.max_bullet_term_months {
        r(&mut reasons, "BULLET_TERM_TOO_LONG");
    }
    let points = score(i, unit);
    let pd_bps = pd_from_points(points);
    let g = grade(pd_bps);
    if pd_bps > p.max_pd_bps {
        r(&mut reasons, "PD_ABOVE_APPETITE");
    }
    // Half of the larger of tax revenue and invoiced turnover.
    let revenue_limit = i.annual_tax_revenue.max(i.invoice_turnover_12m) / 2;
    // What the borrower may still owe under its cap (rules C6 / C6b).
    let cap = if i.individual_business {
        p.individual_borrower_cap
    } else {
        p.per_borrower_cap
    };
    // Nothing left when the exposure is at or past the cap (or past any i64 headroom).
    let headroom = cap.checked_sub(i.existing_exposure).map_or(0, |h| h.max(0));
    if headroom < p.product_min_amount {
        r(&mut reasons, "BORROWER_LIMIT_REACHED");
    }
    let approved_amount = i
        .requested_amount
        .min(grade_limit(g, unit))
        .min(p.product_max_amount)
        .min(revenue_limit)
        .min(headroom);
    if reasons.is_empty() && approved_amount < p.product_min_amount {
        r(&mut reasons, "AMOUNT_BELOW_MINIMUM_AFTER_LIMITS");
    }
    let risk_bps = (pd_bps as i64 * p.lgd_bps as i64 / 10_000) as i32;
    let annual_rate_bps = p.funding_cost_bps + p.operating_cost_bps + risk_bps + p.margin_bps;
    // Interest and fees are both charged on the principal in use, so the
    // all-in annualised rate is their sum (PBOC Announcement [2021] No. 3),
    // over a 365-day year: ACT/360 charges 365/360 of the nominal rate.
    // Rounded up, so the cap is never understated.
    let basis = p.day_count_basis.max(1) as i64;
    let all_in_apr_bps = (((annual_rate_bps + p.fee_bps) as i64 * 365 + basis - 1) / basis) as i32;
    if all_in_apr_bps > p.apr_cap_bps {
        r(&mut reasons, "NOT_PRICEABLE_UNDER_CAP");
    }
    // Both lenders must approve a co-funded loan; the partner's "yes" is
    // needed, never sufficient.
    if !i.partner_approved {
        r(&mut reasons, "PARTNER_NOT_APPROVED");
    }
    let approved = reasons.is_empty();
    Outcome {
        approved,
        reasons,
        points,
        pd_bps,
        grade: g,
        approved_amount: if approved { approved_amount } else { 0 },
        approved_term_months: if approved { i.term_months } else { 0 },
        annual_rate_bps,
        all_in_apr_bps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        // SAFETY of the test: no COLEND_CREDIT_* variables are set in tests.
        Policy::from_env().unwrap()
    }

    const CNY: i64 = 100; // minor units per yuan

    fn good() -> Input {
        Input {
            currency: "CNY".into(),
            age: 40,
            region_code: "350100".into(),
            purpose: "WORKING_CAPITAL".into(),
            requested_amount: 300_000 * CNY,
            term_months: 12,
            method: Method::EqualInstalment,
            partner_score: 700,
            years_in_business: 6,
            annual_tax_revenue: 3_000_000 * CNY,
            invoice_turnover_12m: 4_000_000 * CNY,
            turnover_trend_bps: 1_000,
            open_loans_elsewhere: 0,
            watchlist_hit: false,
            existing_exposure: 0,
            individual_business: false,
            partner_approved: true,
        }
    }

    #[test]
    fn approves_a_good_borrower_with_cost_plus_price() {
        let p = policy();
        let o = decide(&good(), &p);
        assert!(o.approved, "{o:?}");
        assert_eq!(o.points, 600 + 40 + 25 + 10 + 20 + 15 + 10);
        assert_eq!(o.pd_bps, pd_from_points(o.points));
        let expected = p.funding_cost_bps
            + p.operating_cost_bps
            + o.pd_bps * p.lgd_bps / 10_000
            + p.margin_bps;
        assert_eq!(o.annual_rate_bps, expected);
        // ACT/360 over a 365-day year, rounded up.
        assert_eq!(o.all_in_apr_bps, ((expected + p.fee_bps) * 365 + 359) / 360);
        assert!(o.all_in_apr_bps <= p.apr_cap_bps);
    }

    #[test]
    fn a_request_in_another_currency_is_declined_not_compared() {
        let p = policy();
        let mut usd = good();
        usd.currency = "USD".into();
        let o = decide(&usd, &p);
        assert!(!o.approved);
        assert!(
            o.reasons.contains(&"CURRENCY_MISMATCH".to_string()),
            "{o:?}"
        );
        assert_eq!(o.approved_amount, 0);
        // A policy in USD decides USD requests with the same figures.
        let mut in_usd = p.clone();
        in_usd.currency = "USD".into();
        assert!(in_usd.problems().is_empty());
        let o = decide(&usd, &in_usd);
        assert!(o.approved, "{o:?}");
        assert_eq!(o.approved_amount, decide(&good(), &p).approved_amount);
        // A currency without minor units: bands and grade limits in whole yen.
        let mut jpy = p.clone();
        jpy.currency = "JPY".into();
        jpy.product_min_amount = 10_000;
        jpy.product_max_amount = 1_000_000;
        jpy.per_borrower_cap = 1_000_000;
        jpy.individual_borrower_cap = 200_000;
        let mut yen = good();
        yen.currency = "JPY".into();
        yen.requested_amount = 300_000;
        yen.annual_tax_revenue = 3_000_000;
        yen.invoice_turnover_12m = 4_000_000;
        let o = decide(&yen, &jpy);
        assert!(o.approved, "{o:?}");
        assert_eq!(o.points, decide(&good(), &p).points);
        assert_eq!(o.approved_amount, 300_000);
        // A policy currency that is not an ISO 4217 one is a problem.
        let mut bad = p;
        bad.currency = "XXX".into();
        assert!(bad.problems().iter().any(|(f, _)| *f == "currency"));
    }

    #[test]
    fn an_exposure_past_the_cap_leaves_no_headroom() {
        let p = policy();
        let mut i = good();
        i.existing_exposure = i64::MAX;
        let o = decide(&i, &p);
        assert!(o.reasons.contains(&"BORROWER_LIMIT_REACHED".to_string()));
    }

    #[test]
    fn hard_rules_give_reason_codes() {
        let p = policy();
        let mut i = good();
        i.age = 70;
        i.purpose = "SECURITIES".into();
        i.open_loans_elsewhere = 9;
        i.method = Method::InterestFirst;
        i.term_months = 24;
        let o = decide(&i, &p);
        assert!(!o.approved);
        assert_eq!(
            o.reasons,
            vec![
                "AGE_OUT_OF_RANGE",
                "PROHIBITED_PURPOSE",
                "TOO_MANY_OPEN_LOANS",
                "BULLET_TERM_TOO_LONG"
            ]
        );
    }

    #[test]
    fn region_rule_applies_only_to_local_banks() {
        let mut p = policy();
        p.allowed_region_prefixes = vec!["11".into()];
        assert_eq!(decide(&good(), &p).reasons, vec!["REGION_NOT_ALLOWED"]);
    }

    #[test]
    fn price_above_cap_is_declined() {
        let mut p = policy();
        p.apr_cap_bps = 500;
        assert_eq!(decide(&good(), &p).reasons, vec!["NOT_PRICEABLE_UNDER_CAP"]);
    }

    #[test]
    fn amount_is_limited_by_grade_revenue_and_product() {
        let p = policy();
        let mut i = good();
        i.requested_amount = 900_000 * CNY;
        let o = decide(&i, &p);
        assert!(o.approved_amount <= grade_limit(o.grade, CNY));
        assert!(o.approved_amount <= i.annual_tax_revenue.max(i.invoice_turnover_12m) / 2);
    }

    #[test]
    fn per_borrower_caps_at_the_cent() {
        let p = policy();
        let mut i = good();
        i.individual_business = true;
        i.requested_amount = 200_000 * CNY;
        // RMB 200,000 cap: exactly at the cap is fine.
        assert_eq!(decide(&i, &p).approved_amount, 200_000 * CNY);
        // Owing RMB 190,000.01 leaves 9,999.99: below the product minimum.
        i.existing_exposure = 190_000 * CNY + 1;
        assert_eq!(decide(&i, &p).reasons, vec!["BORROWER_LIMIT_REACHED"]);
        // Owing RMB 190,000.00 leaves exactly the minimum of 10,000.00.
        i.existing_exposure = 190_000 * CNY;
        assert_eq!(decide(&i, &p).approved_amount, 10_000 * CNY);
        // A company's cap is RMB 1,000,000.
        let mut c = good();
        c.existing_exposure = 900_000 * CNY;
        assert_eq!(decide(&c, &p).approved_amount, 100_000 * CNY);
    }

    #[test]
    fn apr_exactly_at_the_cap_passes_one_bp_over_fails() {
        let mut p = policy();
        let o = decide(&good(), &p);
        p.apr_cap_bps = o.all_in_apr_bps;
        assert!(decide(&good(), &p).approved);
        p.apr_cap_bps = o.all_in_apr_bps - 1;
        assert_eq!(decide(&good(), &p).reasons, vec!["NOT_PRICEABLE_UNDER_CAP"]);
    }

    #[test]
    fn age_limits_on_the_birthday() {
        let p = policy();
        let mut i = good();
        i.age = p.max_age;
        assert!(decide(&i, &p).approved);
        i.age = p.max_age + 1;
        assert_eq!(decide(&i, &p).reasons, vec!["AGE_OUT_OF_RANGE"]);
        i.age = p.min_age - 1;
        assert_eq!(decide(&i, &p).reasons, vec!["AGE_OUT_OF_RANGE"]);
    }

    #[test]
    fn a_high_risk_borrower_is_declined_for_price() {
        let p = policy();
        let mut i = good();
        i.years_in_business = 0;
        i.annual_tax_revenue = 150_000 * CNY;
        i.invoice_turnover_12m = 400_000 * CNY;
        i.requested_amount = 100_000 * CNY;
        i.turnover_trend_bps = -3_000;
        i.partner_score = 150;
        i.open_loans_elsewhere = 3;
        let o = decide(&i, &p);
        assert!(o.pd_bps > 3_777 && o.pd_bps <= p.max_pd_bps, "{o:?}");
        assert_eq!(o.reasons, vec!["NOT_PRICEABLE_UNDER_CAP"]);
    }

    #[test]
    fn the_partner_must_approve_too() {
        let p = policy();
        let mut i = good();
        i.partner_approved = false;
        let o = decide(&i, &p);
        assert_eq!(o.reasons, vec!["PARTNER_NOT_APPROVED"]);
        // The bank's own assessment is still made and recorded.
        assert_eq!(o.pd_bps, decide(&good(), &p).pd_bps);
    }

    #[test]
    fn pd_is_monotone_in_points() {
        let mut last = i32::MAX;
        for pts in 400..900 {
            let pd = pd_from_points(pts);
            assert!(pd <= last);
            last = pd;
        }
    }

    #[test]
    fn default_policy_is_consistent() {
        assert!(policy().problems().is_empty());
    }
}
