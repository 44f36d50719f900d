//! Keyset pagination with opaque page tokens.
use crate::error::{ApiError, ApiResult};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// Validates a requested page size: 0 means the default.
pub fn page_size(requested: i32) -> ApiResult<i64> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 || n as i64 > MAX_PAGE_SIZE => {
            Err(ApiError::field("page_size", "must be between 0 and 500"))
        }
        n => Ok(n as i64),
    }
}

/// Encodes a keyset position as an opaque token.
pub fn encode_token(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("p1.{}", hex::encode(key))
    }
}

/// Decodes a token from `encode_token`; empty means the first page.
pub fn decode_token(token: &str) -> ApiResult<String> {
    if token.is_empty() {
        return Ok(String::new());
    }
    token
        .strip_prefix("p1.")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::field("page_token", "is not a token this service issued"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_token(&encode_token("abc_1")).unwrap(), "abc_1");
        assert_eq!(encode_token(""), "");
        assert!(decode_token("zzz").is_err());
        assert!(page_size(501).is_err());
        assert_eq!(page_size(0).unwrap(), 50);
    }
}
