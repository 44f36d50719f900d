//! Time helpers: stored as epoch milliseconds, sent as protobuf Timestamps.
use chrono::{DateTime, NaiveDate, Utc};

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

pub fn today() -> NaiveDate {
    Utc::now().date_naive()
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
