//! Who is calling.
//!
//! Partners identify themselves with the `x-colend-partner-id` metadata
//! header. Partner ids are 1 to 64 characters of `[A-Za-z0-9_-]`.
use crate::error::{ApiError, FieldViolation};

pub const PARTNER_HEADER: &str = "x-colend-partner-id";

/// Checks a partner id's form.
pub fn valid_partner_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The calling partner, from metadata.
pub fn partner_id<T>(req: &tonic::Request<T>) -> Result<String, ApiError> {
    let v = req
        .metadata()
        .get(PARTNER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if v.is_empty() {
        return Err(ApiError::Unauthenticated(format!(
            "the {PARTNER_HEADER} metadata header is required"
        )));
    }
    if !valid_partner_id(v) {
        return Err(ApiError::invalid(vec![FieldViolation::new(
            PARTNER_HEADER,
            "must be 1 to 64 characters of letters, digits, '-' or '_'",
        )]));
    }
    Ok(v.to_string())
}

/// True when the bank's core systems or operators make the call, as the
/// server's auth layer established it (the bank's token); the bank reads
/// every partner's data where a partner reads only its own.
pub fn is_bank<T>(req: &tonic::Request<T>) -> bool {
    req.extensions()
        .get::<crate::auth::Caller>()
        .is_some_and(|c| c.0.class == crate::auth::Class::Bank)
}
