//! Chinese identifiers, validated on construction.
//!
//! - Resident ID (GB 11643-1999): 17 digits and an ISO 7064 MOD 11-2 check character.
//! - Unified social credit code (GB 32100-2015): 18 characters with a MOD 31 check character.
//! - Mobile: 11 digits starting with 1.
//!
//! Debug and Display of the personal identifiers are masked.
use chrono::{Datelike, NaiveDate};
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentifierError {
    #[error("must be 18 characters")]
    Length,
    #[error("contains a character that is not allowed")]
    Charset,
    #[error("check character does not match")]
    Checksum,
    #[error("birth date is not a valid date")]
    BirthDate,
    #[error("administrative division code is not a known province")]
    Region,
    #[error("must be 11 digits starting with 1")]
    Mobile,
}

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: [u8; 11] = *b"10X98765432";

/// Province-level division codes (first two digits of a division code).
const PROVINCES: [u32; 34] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82,
];

/// True when the 6-digit division code starts with a known province code.
pub fn is_known_region(code: &str) -> bool {
    code.len() == 6
        && code.bytes().all(|b| b.is_ascii_digit())
        && code[..2]
            .parse::<u32>()
            .map(|p| PROVINCES.contains(&p))
            .unwrap_or(false)
}

/// A resident identity card number.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResidentId(String);

impl ResidentId {
    /// The check character for the first 17 digits.
    pub fn check_char(first17: &str) -> Result<char, IdentifierError> {
        let b = first17.as_bytes();
        if b.len() != 17 {
            return Err(IdentifierError::Length);
        }
        let mut sum = 0u32;
        for (c, w) in b.iter().zip(ID_WEIGHTS) {
            if !c.is_ascii_digit() {
                return Err(IdentifierError::Charset);
            }
            sum += (c - b'0') as u32 * w;
        }
        Ok(ID_CHECK[(sum % 11) as usize] as char)
    }

    pub fn parse(raw: &str) -> Result<Self, IdentifierError> {
        let s = raw.trim().to_ascii_uppercase();
        if s.len() != 18 {
            return Err(IdentifierError::Length);
        }
        let last = s.as_bytes()[17];
        if !(last.is_ascii_digit() || last == b'X') {
            return Err(IdentifierError::Charset);
        }
        if Self::check_char(&s[..17])? != last as char {
            return Err(IdentifierError::Checksum);
        }
        let id = ResidentId(s);
        id.birth_date().ok_or(IdentifierError::BirthDate)?;
        if !is_known_region(id.region_code()) {
            return Err(IdentifierError::Region);
        }
        Ok(id)
    }

    /// Digits 1–6: administrative division code.
    pub fn region_code(&self) -> &str {
        &self.0[..6]
    }

    /// Digits 7–14: birth date.
    pub fn birth_date(&self) -> Option<NaiveDate> {
        let y = self.0[6..10].parse().ok()?;
        let m = self.0[10..12].parse().ok()?;
        let d = self.0[12..14].parse().ok()?;
        NaiveDate::from_ymd_opt(y, m, d)
    }

    /// Age in whole years on `on`.
    pub fn age_on(&self, on: NaiveDate) -> Option<i32> {
        let b = self.birth_date()?;
        let mut age = on.year() - b.year();
        if (on.month(), on.day()) < (b.month(), b.day()) {
            age -= 1;
        }
        Some(age)
    }

    /// The number itself. Handle with care: personal information.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// "1101**********123X"
    pub fn masked(&self) -> String {
        format!("{}**********{}", &self.0[..4], &self.0[14..])
    }
}

impl fmt::Debug for ResidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResidentId({})", self.masked())
    }
}

impl fmt::Display for ResidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

const CC_CHARS: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const CC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

fn cc_value(c: u8) -> Option<u32> {
    CC_CHARS.iter().position(|x| *x == c).map(|p| p as u32)
}

/// A unified social credit code. Not personal information.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CreditCode(String);

impl CreditCode {
    /// The check character for the first 17 characters.
    pub fn check_char(first17: &str) -> Result<char, IdentifierError> {
        let b = first17.as_bytes();
        if b.len() != 17 {
            return Err(IdentifierError::Length);
        }
        let mut sum = 0u32;
        for (c, w) in b.iter().zip(CC_WEIGHTS) {
            sum += cc_value(*c).ok_or(IdentifierError::Charset)? * w;
        }
        let check = (31 - sum % 31) % 31;
        Ok(CC_CHARS[check as usize] as char)
    }

    pub fn parse(raw: &str) -> Result<Self, IdentifierError> {
        let s = raw.trim().to_ascii_uppercase();
        if s.len() != 18 {
            return Err(IdentifierError::Length);
        }
        if !s.bytes().all(|c| cc_value(c).is_some()) {
            return Err(IdentifierError::Charset);
        }
        if Self::check_char(&s[..17])? != s.as_bytes()[17] as char {
            return Err(IdentifierError::Checksum);
        }
        Ok(CreditCode(s))
    }

    /// Characters 3–8: administrative division code of the registering authority.
    pub fn region_code(&self) -> &str {
        &self.0[2..8]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CreditCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mainland mobile number.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mobile(String);

impl Mobile {
    pub fn parse(raw: &str) -> Result<Self, IdentifierError> {
        let s = raw.trim();
        if s.len() == 11 && s.starts_with('1') && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Mobile(s.to_string()))
        } else {
            Err(IdentifierError::Mobile)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// "138****5678"
    pub fn masked(&self) -> String {
        format!("{}****{}", &self.0[..3], &self.0[7..])
    }
}

impl fmt::Debug for Mobile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mobile({})", self.masked())
    }
}

impl fmt::Display for Mobile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resident_id_known_good() {
        // Sample from GB 11643-1999.
        let id = ResidentId::parse("11010519491231002X").unwrap();
        assert_eq!(id.region_code(), "110105");
        assert_eq!(id.birth_date(), NaiveDate::from_ymd_opt(1949, 12, 31));
        assert_eq!(
            id.age_on(NaiveDate::from_ymd_opt(2026, 12, 30).unwrap()),
            Some(76)
        );
        assert_eq!(
            id.age_on(NaiveDate::from_ymd_opt(2026, 12, 31).unwrap()),
            Some(77)
        );
        assert_eq!(format!("{id:?}"), "ResidentId(1101**********002X)");
        assert_eq!(id.to_string(), "1101**********002X");
    }

    #[test]
    fn resident_id_rejects() {
        assert_eq!(
            ResidentId::parse("110105194912310021"),
            Err(IdentifierError::Checksum)
        );
        assert_eq!(
            ResidentId::parse("1101051949123100"),
            Err(IdentifierError::Length)
        );
        assert_eq!(
            ResidentId::parse("11010519491231002A"),
            Err(IdentifierError::Charset)
        );
        // 1949-13-31 with a matching check character
        let body = "11010519491331002";
        let id = format!("{body}{}", ResidentId::check_char(body).unwrap());
        assert_eq!(ResidentId::parse(&id), Err(IdentifierError::BirthDate));
    }

    #[test]
    fn credit_code_known_good() {
        let body = "91350100M000100Y4";
        let code = format!("{body}{}", CreditCode::check_char(body).unwrap());
        let cc = CreditCode::parse(&code).unwrap();
        assert_eq!(cc.region_code(), "350100");
        assert_eq!(
            CreditCode::parse("91350100M000100Y4I"),
            Err(IdentifierError::Charset)
        );
    }

    #[test]
    fn credit_code_published_sample() {
        // A published example code with a valid check character.
        assert!(CreditCode::parse("91110000600037341L").is_ok());
        assert_eq!(
            CreditCode::parse("91110000600037341M"),
            Err(IdentifierError::Checksum)
        );
    }

    #[test]
    fn mobile_masks() {
        let m = Mobile::parse("13812345678").unwrap();
        assert_eq!(m.to_string(), "138****5678");
        assert!(Mobile::parse("23812345678").is_err());
        assert!(Mobile::parse("1381234567").is_err());
    }

    proptest! {
        #[test]
        fn any_single_digit_change_breaks_the_id_checksum(pos in 0usize..17, delta in 1u8..10) {
            let good = "11010519491231002X";
            let mut b = good.as_bytes().to_vec();
            b[pos] = b'0' + (b[pos] - b'0' + delta) % 10;
            let s = String::from_utf8(b).unwrap();
            prop_assert!(ResidentId::parse(&s).is_err());
        }
    }
}
