//! The caller's deadline, carried across hops.
//!
//! The server layer reads the incoming `grpc-timeout` and keeps the deadline
//! for the call; every outbound call made while serving it
//! (`grpc::request`) is given the smaller of its own timeout and what is
//! left of the caller's, so a chain of calls never outlives its caller.
use std::time::{Duration, Instant};

tokio::task_local! {
    /// When the call being served must be answered by.
    pub static DEADLINE: Instant;
}

/// Parses a `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of the call being served, if it has one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// `timeout`, cut to what is left of the caller's deadline (at least 1 ms,
/// so a call past its deadline fails at once with DEADLINE_EXCEEDED).
pub fn bounded(timeout: Duration) -> Duration {
    match current() {
        Some(d) => timeout
            .min(d.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1)),
        None => timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("xS"), None);
    }

    #[tokio::test]
    async fn outbound_calls_get_what_is_left() {
        assert_eq!(bounded(Duration::from_secs(5)), Duration::from_secs(5));
        let d = Instant::now() + Duration::from_millis(300);
        let t = DEADLINE
            .scope(d, async { bounded(Duration::from_secs(5)) })
            .await;
        assert!(t <= Duration::from_millis(300) && t > Duration::from_millis(100));
        let past = Instant::now();
        let t = DEADLINE
            .scope(past, async { bounded(Duration::from_secs(5)) })
            .await;
        assert_eq!(t, Duration::from_millis(1));
    }
}
