//! Money in integer minor units, and exact splitting.
//!
//! Every amount is an `i64` count of minor units (fen). Splits are computed in
//! `i128` and always sum exactly to the whole.
use std::fmt;

/// Basis points in one whole (100%).
pub const BPS_ONE: i64 = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("currency code must be three upper-case letters (ISO 4217)")]
    BadCurrency,
    #[error("amount must not be negative")]
    Negative,
    #[error("amount overflows")]
    Overflow,
}

/// An ISO 4217 alphabetic currency code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const CNY: Currency = Currency(*b"CNY");

    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_uppercase) {
            return Err(MoneyError::BadCurrency);
        }
        Ok(Currency([b[0], b[1], b[2]]))
    }

    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
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

/// `amount × numerator ÷ denominator`, rounded half away from zero, exact in `i128`.
pub fn mul_div_round(amount: i64, numerator: i64, denominator: i64) -> i64 {
    assert!(denominator > 0, "denominator must be positive");
    let p = amount as i128 * numerator as i128;
    let d = denominator as i128;
    let q = if p >= 0 {
        (p + d / 2) / d
    } else {
        -((-p + d / 2) / d)
    };
    q as i64
}

/// `amount × numerator ÷ denominator`, rounded down (toward zero for non-negative input).
pub fn mul_div_floor(amount: i64, numerator: i64, denominator: i64) -> i64 {
    assert!(denominator > 0, "denominator must be positive");
    (amount as i128 * numerator as i128).div_euclid(denominator as i128) as i64
}

/// Splits `total` into (bank, partner) so that the partner's part is at least
/// `partner_bps` of the total (rounded up to the cent, so a minimum share rule
/// holds exactly) and the two parts sum to `total`.
pub fn split_partner_share(total: i64, partner_bps: i64) -> (i64, i64) {
    assert!((0..=BPS_ONE).contains(&partner_bps), "share out of range");
    assert!(total >= 0, "total must be non-negative");
    let p = total as i128 * partner_bps as i128;
    let partner = ((p + (BPS_ONE as i128 - 1)) / BPS_ONE as i128) as i64;
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
    let sum: i128 = weights.iter().map(|w| *w as i128).sum();
    if sum == 0 {
        let mut v = vec![0; weights.len()];
        v[0] = total;
        return v;
    }
    let mut parts: Vec<i64> = Vec::with_capacity(weights.len());
    let mut rems: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    let mut assigned: i128 = 0;
    for (i, w) in weights.iter().enumerate() {
        let exact = total as i128 * *w as i128;
        let q = exact.div_euclid(sum);
        let r = exact.rem_euclid(sum);
        parts.push(q as i64);
        rems.push((r, i));
        assigned += q;
    }
    let mut left = total as i128 - assigned;
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

/// Formats minor units as a decimal amount with two places ("1234.50").
pub fn format_minor(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let a = minor.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn currency_parses_iso_codes_only() {
        assert_eq!(Currency::parse("CNY").unwrap(), Currency::CNY);
        assert!(Currency::parse("cny").is_err());
        assert!(Currency::parse("CN").is_err());
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
            let q = mul_div_round(a, n, d) as i128;
            let exact2 = 2 * a as i128 * n as i128;
            prop_assert!((2 * q * d as i128 - exact2).abs() <= d as i128);
        }
    }
}
