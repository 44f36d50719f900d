//! Time helpers: stored as epoch milliseconds, sent as protobuf Timestamps.
//! Business dates ("today", daily quotas, effective dates) are dates in a
//! jurisdiction's time zone, never UTC dates: see [`business_date`].
use chrono::{DateTime, NaiveDate, Utc};
pub use chrono_tz::Tz;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn millis_of(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1000 + (ts.nanos as i64) / 1_000_000
}

/// Today's UTC date. Not a business date: see [`business_date`].
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// The business date at `now_millis` (epoch milliseconds) in the time zone
/// `tz`: in Asia/Shanghai, 16:00 UTC on 1 March is already 2 March.
pub fn business_date(tz: Tz, now_millis: i64) -> NaiveDate {
    datetime(now_millis).with_timezone(&tz).date_naive()
}

/// Today's business date in `tz`, by the system clock.
pub fn business_today(tz: Tz) -> NaiveDate {
    business_date(tz, now_millis())
}

/// An IANA time zone name ("Asia/Shanghai"); `None` for anything else.
pub fn parse_time_zone(name: &str) -> Option<Tz> {
    name.parse().ok()
}

/// The time zone `name`, the value of the setting `var`; the error names the setting.
pub fn time_zone_setting(var: &str, name: &str) -> anyhow::Result<Tz> {
    parse_time_zone(name.trim()).ok_or_else(|| {
        anyhow::anyhow!(
            "{var}={name:?} is not an IANA time zone name (such as Asia/Shanghai or Asia/Kolkata)"
        )
    })
}

/// The time zone the environment variable `var` names (`default` when unset).
pub fn time_zone_env(var: &str, default: &str) -> anyhow::Result<Tz> {
    time_zone_setting(var, &crate::config::env_or(var, default))
}

/// Where a service reads "now" for its business decisions: the system
/// clock, or (tests only) a manual clock that stays where it is set, so a
/// test can stand a second before or after local midnight.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    /// Epoch milliseconds, shared by every clone.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock standing at `millis`.
    pub fn manual(millis: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(millis)))
    }

    /// Moves a manual clock to `millis` (every clone with it); the system
    /// clock cannot be moved and is left as it is.
    pub fn set(&self, millis: i64) {
        if let Clock::Manual(at) = self {
            at.store(millis, Ordering::SeqCst);
        }
    }

    /// Now, epoch milliseconds.
    pub fn now_millis(&self) -> i64 {
        match self {
            Clock::System => now_millis(),
            Clock::Manual(at) => at.load(Ordering::SeqCst),
        }
    }

    /// The business date now in `tz`.
    pub fn business_date(&self, tz: Tz) -> NaiveDate {
        business_date(tz, self.now_millis())
    }
}

/// Parses "YYYY-MM-DD".
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

pub fn format_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub fn datetime(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn business_date_is_the_local_date() {
        let sh = parse_time_zone("Asia/Shanghai").unwrap();
        let kol = parse_time_zone("Asia/Kolkata").unwrap();
        let d = |s: &str| parse_date(s).unwrap();
        // 15:59 UTC is 23:59 in Shanghai; 16:01 UTC is 00:01 the next day.
        assert_eq!(
            business_date(sh, at("2026-03-01T15:59:00Z")),
            d("2026-03-01")
        );
        assert_eq!(
            business_date(sh, at("2026-03-01T16:00:00Z")),
            d("2026-03-02")
        );
        assert_eq!(
            business_date(sh, at("2026-03-01T16:01:00Z")),
            d("2026-03-02")
        );
        // Kolkata is UTC+5:30: midnight falls at 18:30 UTC.
        assert_eq!(
            business_date(kol, at("2026-03-01T18:29:59Z")),
            d("2026-03-01")
        );
        assert_eq!(
            business_date(kol, at("2026-03-01T18:30:00Z")),
            d("2026-03-02")
        );
        assert_eq!(parse_time_zone("Mars/Olympus"), None);
        assert_eq!(parse_time_zone(""), None);
    }

    #[test]
    fn a_manual_clock_stays_where_it_is_set() {
        let c = Clock::manual(at("2026-03-01T15:59:00Z"));
        let shared = c.clone();
        let sh = parse_time_zone("Asia/Shanghai").unwrap();
        assert_eq!(c.business_date(sh), parse_date("2026-03-01").unwrap());
        shared.set(at("2026-03-01T16:01:00Z"));
        assert_eq!(c.now_millis(), at("2026-03-01T16:01:00Z"));
        assert_eq!(c.business_date(sh), parse_date("2026-03-02").unwrap());
        assert!(Clock::System.now_millis() > 0);
    }
}
