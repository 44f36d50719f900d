//! Money in integer minor units, and exact splitting.
//!
//! Every amount is an `i64` count of minor units of its currency (fen for
//! CNY, paise for INR, cents for USD: the currency's ISO 4217 exponent says
//! how many minor units make one major unit). Products and quotients are
//! computed in `i128` and converted back with a check: a result that does not
//! fit is [`MoneyError::Overflow`], never a wrap or a truncation. Splits
//! always sum exactly to the whole.
use std::fmt;

/// Basis points in one whole (100%).
pub const BPS_ONE: i64 = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("currency code must be three upper-case letters (ISO 4217)")]
    BadCurrency,
    #[error("{0} is not an ISO 4217 currency code")]
    UnknownCurrency(String),
    #[error(
        "{0} is not a currency loans can be made in (an ISO 4217 fund, precious metal, testing, \
         no-currency or superseded code)"
    )]
    NotLendable(String),
    #[error("amount must not be negative")]
    Negative,
    #[error("amount overflows")]
    Overflow,
    #[error("the divisor must be positive")]
    Divisor,
}

/// An active ISO 4217 currency that loans can be made in.
///
/// The table is the `iso_currency` crate's (ISO 4217 list one, with its
/// amendments). Refused: codes not in it ("ABC"), the special codes (no
/// currency "XXX", testing "XTS", precious metals "XAU", "XAG", units of
/// account "XDR"), funds ("CLF", "USN") and codes superseded by another
/// currency ("HRK"). Only upper-case codes are accepted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub const CNY: Currency = Currency(iso_currency::Currency::CNY);
    pub const INR: Currency = Currency(iso_currency::Currency::INR);
    pub const USD: Currency = Currency(iso_currency::Currency::USD);

    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_uppercase) {
            return Err(MoneyError::BadCurrency);
        }
        let c = iso_currency::Currency::from_code(code)
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_string()))?;
        if c.is_special() || c.is_fund() || c.is_superseded().is_some() || c.exponent().is_none() {
            return Err(MoneyError::NotLendable(code.to_string()));
        }
        Ok(Currency(c))
    }

    pub fn as_str(&self) -> &'static str {
        self.0.code()
    }

    /// Decimal places of the minor unit (2 for CNY, INR and USD; 0 for JPY; 3 for KWD).
    pub fn exponent(&self) -> u32 {
        // parse() admits only currencies with an exponent.
        self.0.exponent().map_or(0, u32::from)
    }

    /// Minor units in one major unit (100 for CNY).
    pub fn minor_per_major(&self) -> i64 {
        10i64.pow(self.exponent())
    }

    /// Formats minor units with this currency's decimal places ("1234.50").
    pub fn format(&self, minor: i64) -> String {
        format_minor_in(minor, self.exponent())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Currency {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

/// `a + b`, or [`MoneyError::Overflow`].
pub fn checked_add(a: i64, b: i64) -> Result<i64, MoneyError> {
    a.checked_add(b).ok_or(MoneyError::Overflow)
}

/// The sum of `amounts`, or [`MoneyError::Overflow`] when it does not fit.
pub fn checked_sum<I: IntoIterator<Item = i64>>(amounts: I) -> Result<i64, MoneyError> {
    amounts.into_iter().try_fold(0i64, checked_add)
}

/// `amount × numerator ÷ denominator`, rounded half away from zero, exact in
/// `i128`. [`MoneyError::Overflow`] when the result does not fit in an `i64`;
/// [`MoneyError::Divisor`] when `denominator` is not positive.
pub fn mul_div_round(amount: i64, numerator: i64, denominator: i64) -> Result<i64, MoneyError> {
    if denominator <= 0 {
        return Err(MoneyError::Divisor);
    }
    // |i64| × |i64| < 2^126: the product and the rounding fit in i128.
    let p = i128::from(amount) * i128::from(numerator);
    let d = i128::from(denominator);
    let half = d / 2;
    let q = if p >= 0 {
        (p + half) / d
    } else {
        -((-p + half) / d)
    };
    i64::try_from(q).map_err(|_| MoneyError::Overflow)
}

/// `amount × numerator ÷ denominator`, rounded down (toward negative
/// infinity), exact in `i128`. Errors as [`mul_div_round`].
pub fn mul_div_floor(amount: i64, numerator: i64, denominator: i64) -> Result<i64, MoneyError> {
    if denominator <= 0 {
        return Err(MoneyError::Divisor);
    }
    let q = (i128::from(amount) * i128::from(numerator)).div_euclid(i128::from(denominator));
    i64::try_from(q).map_err(|_| MoneyError::Overflow)
}

/// Splits `total` into (bank, partner) so that the partner's part is at least
/// `partner_bps` of the total (rounded up to the cent, so a minimum share rule
/// holds exactly) and the two parts sum to `total`.
pub fn split_partner_share(total: i64, partner_bps: i64) -> (i64, i64) {
    assert!((0..=BPS_ONE).contains(&partner_bps), "share out of range");
    assert!(total >= 0, "total must be non-negative");
    // ceil(total × bps / 10000) without leaving i64: whole ten-thousandths
    // first (at most total), then the remainder's share (below 10^8).
    let (whole, rest) = (total / BPS_ONE, total % BPS_ONE);
    let partner = whole * partner_bps + (rest * partner_bps + BPS_ONE - 1) / BPS_ONE;
    (total - partner, partner)
}

/// Allocates `total` across `weights` in proportion, by largest remainder:
/// the parts sum exactly to `total`, each within one minor unit of its exact share.
/// With all weights zero, everything goes to the first part.
pub fn allocate(total: i64, weights: &[i64]) -> Vec<i64> {
    assert!(!weights.is_empty(), "need at least one weight");
    assert!(
        weights.iter().all(|w| *w >= 0),
        "weights must be non-negative"
    );
    let sum: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    if sum == 0 {
        let mut v = vec![0; weights.len()];
        v[0] = total;
        return v;
    }
    // Every part lies between 0 and `total` (a weight is at most the sum),
    // so each conversion back to i64 holds.
    let fit = |v: i128| i64::try_from(v).expect("a part lies between 0 and the total");
    let mut parts: Vec<i64> = Vec::with_capacity(weights.len());
    let mut rems: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    let mut assigned: i128 = 0;
    for (i, w) in weights.iter().enumerate() {
        let exact = i128::from(total) * i128::from(*w);
        let q = exact.div_euclid(sum);
        let r = exact.rem_euclid(sum);
        parts.push(fit(q));
        rems.push((r, i));
        assigned += q;
    }
    let mut left = i128::from(total) - assigned;
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

/// Formats minor units as a decimal amount with two places ("1234.50"): the
/// minor unit of CNY, INR and USD. For any currency use [`Currency::format`],
/// which takes the currency's ISO 4217 exponent.
pub fn format_minor(minor: i64) -> String {
    format_minor_in(minor, 2)
}

/// Formats minor units with `exponent` decimal places ("1234.50" for 2,
/// "1234" for 0).
pub fn format_minor_in(minor: i64, exponent: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let a = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{a}");
    }
    let unit = 10u64.pow(exponent);
    let width = exponent as usize;
    format!("{sign}{}.{:0width$}", a / unit, a % unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn currency_parses_iso_codes_only() {
        assert_eq!(Currency::parse("CNY").unwrap(), Currency::CNY);
        assert_eq!(Currency::parse("INR").unwrap(), Currency::INR);
        assert_eq!(Currency::parse("USD").unwrap(), Currency::USD);
        assert_eq!(Currency::parse("EUR").unwrap().as_str(), "EUR");
        assert_eq!("JPY".parse::<Currency>().unwrap().exponent(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().minor_per_major(), 1_000);
        assert_eq!(Currency::CNY.minor_per_major(), 100);
        // Shape.
        for bad in ["cny", "Cny", "CN", "CNYY", "", "C1Y", "ＣＮＹ"] {
            assert_eq!(Currency::parse(bad), Err(MoneyError::BadCurrency), "{bad}");
        }
        // Three letters, but not in the ISO 4217 table.
        assert_eq!(
            Currency::parse("ABC"),
            Err(MoneyError::UnknownCurrency("ABC".into()))
        );
        assert!(matches!(
            Currency::parse("RMB"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        // In the table, but nothing a loan can be made in: no currency,
        // testing, metals, units of account, funds, superseded codes.
        for code in [
            "XXX", "XTS", "XAU", "XAG", "XPT", "XDR", "CLF", "USN", "HRK",
        ] {
            assert_eq!(
                Currency::parse(code),
                Err(MoneyError::NotLendable(code.into())),
                "{code}"
            );
        }
        assert_eq!(format!("{}", Currency::CNY), "CNY");
    }

    #[test]
    fn mul_div_overflow_is_an_error_never_a_wrap() {
        assert_eq!(mul_div_round(i64::MAX, 2, 1), Err(MoneyError::Overflow));
        assert_eq!(mul_div_floor(i64::MAX, 2, 1), Err(MoneyError::Overflow));
        assert_eq!(mul_div_floor(i64::MIN, -1, 1), Err(MoneyError::Overflow));
        assert_eq!(mul_div_round(i64::MIN, 1, 1), Ok(i64::MIN));
        // A product far past i64 whose quotient fits is exact.
        assert_eq!(mul_div_floor(i64::MAX, 10_000, 10_000), Ok(i64::MAX));
        assert_eq!(mul_div_round(i64::MAX, 3, 3), Ok(i64::MAX));
        assert_eq!(mul_div_round(1, 1, 0), Err(MoneyError::Divisor));
        assert_eq!(mul_div_floor(1, 1, -5), Err(MoneyError::Divisor));
        // Rounding: half away from zero; floor toward negative infinity.
        assert_eq!(mul_div_round(5, 1, 2), Ok(3));
        assert_eq!(mul_div_round(-5, 1, 2), Ok(-3));
        assert_eq!(mul_div_floor(-5, 1, 2), Ok(-3));
        assert_eq!(mul_div_floor(5, 1, 2), Ok(2));
    }

    #[test]
    fn sums_are_checked() {
        assert_eq!(checked_sum([1, 2, 3]), Ok(6));
        assert_eq!(checked_sum([i64::MAX, 1]), Err(MoneyError::Overflow));
        assert_eq!(checked_sum([i64::MIN, -1]), Err(MoneyError::Overflow));
        assert_eq!(checked_add(i64::MAX, -1), Ok(i64::MAX - 1));
    }

    #[test]
    fn split_of_the_largest_total_is_exact() {
        let (bank, partner) = split_partner_share(i64::MAX, 3_000);
        assert_eq!(bank.checked_add(partner), Some(i64::MAX));
        assert_eq!(split_partner_share(i64::MAX, 10_000), (0, i64::MAX));
    }

    #[test]
    fn partner_share_rounds_up_to_keep_minimum() {
        assert_eq!(split_partner_share(100_001, 3_000), (70_000, 30_001));
        assert_eq!(split_partner_share(1, 3_000), (0, 1));
        assert_eq!(split_partner_share(0, 3_000), (0, 0));
    }

    #[test]
    fn format_minor_two_places() {
        assert_eq!(format_minor(123_450), "1234.50");
        assert_eq!(format_minor(-5), "-0.05");
        assert_eq!(format_minor(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn format_takes_the_currency_exponent() {
        assert_eq!(Currency::CNY.format(123_450), "1234.50");
        assert_eq!(Currency::parse("JPY").unwrap().format(123_450), "123450");
        assert_eq!(Currency::parse("KWD").unwrap().format(-1_005), "-1.005");
    }

    proptest! {
        #[test]
        fn split_sums_to_whole_and_respects_share(total in 0i64..10_000_000_000_000, bps in 0i64..=10_000) {
            let (bank, partner) = split_partner_share(total, bps);
            prop_assert_eq!(bank + partner, total);
            prop_assert!(bank >= 0 && partner >= 0);
            // partner / total >= bps / 10000, exactly
            prop_assert!(partner as i128 * BPS_ONE as i128 >= total as i128 * bps as i128);
            // and not more than one minor unit above it
            prop_assert!((partner as i128 - 1) * (BPS_ONE as i128) < total as i128 * bps as i128 || partner == 0);
        }

        #[test]
        fn allocate_sums_exactly(total in -1_000_000_000_000i64..1_000_000_000_000, weights in proptest::collection::vec(0i64..1_000_000_000, 1..8)) {
            let parts = allocate(total, &weights);
            prop_assert_eq!(parts.iter().sum::<i64>(), total);
            let sum: i128 = weights.iter().map(|w| *w as i128).sum();
            if sum > 0 {
                for (p, w) in parts.iter().zip(&weights) {
                    let exact = total as i128 * *w as i128;
                    let diff = (*p as i128 * sum - exact).abs();
                    prop_assert!(diff < sum, "part {} off its share", p);
                }
            }
        }

        #[test]
        fn mul_div_round_is_within_half(a in -1_000_000_000_000i64..1_000_000_000_000, n in 0i64..100_000, d in 1i64..100_000) {
            let q = mul_div_round(a, n, d).unwrap() as i128;
            let exact2 = 2 * a as i128 * n as i128;
            prop_assert!((2 * q * d as i128 - exact2).abs() <= d as i128);
        }

        /// Over the whole i64 range: a quotient that fits is exact (checked
        /// against an i128 oracle), one that does not is Overflow.
        #[test]
        fn mul_div_fits_or_overflows(a in any::<i64>(), n in any::<i64>(), d in 1i64..=i64::MAX) {
            let exact = a as i128 * n as i128;
            let floor = exact.div_euclid(d as i128);
            match mul_div_floor(a, n, d) {
                Ok(q) => prop_assert_eq!(q as i128, floor),
                Err(e) => {
                    prop_assert_eq!(e, MoneyError::Overflow);
                    prop_assert!(floor > i64::MAX as i128 || floor < i64::MIN as i128);
                }
            }
            match mul_div_round(a, n, d) {
                Ok(q) => prop_assert!((2 * q as i128 * d as i128 - 2 * exact).abs() <= d as i128),
                Err(e) => prop_assert_eq!(e, MoneyError::Overflow),
            }
        }

        #[test]
        fn checked_sum_matches_i128(v in proptest::collection::vec(any::<i64>(), 0..6)) {
            let wide: i128 = v.iter().map(|x| *x as i128).sum();
            match checked_sum(v.iter().copied()) {
                Ok(s) => prop_assert_eq!(s as i128, wide),
                // A running total left the range (the final one may be back in it).
                Err(e) => prop_assert_eq!(e, MoneyError::Overflow),
            }
        }

        #[test]
        fn split_never_overflows(total in 0i64..=i64::MAX, bps in 0i64..=10_000) {
            let (bank, partner) = split_partner_share(total, bps);
            prop_assert_eq!(bank as i128 + partner as i128, total as i128);
            let wide = (total as i128 * bps as i128 + 9_999) / 10_000;
            prop_assert_eq!(partner as i128, wide);
        }
    }
}
