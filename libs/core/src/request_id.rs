//! Client request ids (idempotency keys).

/// Longest request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 255;

/// Checks a client-chosen request id: 1 to 255 printable ASCII characters.
pub fn validate_request_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("request_id is required");
    }
    if id.len() > MAX_REQUEST_ID_LEN {
        return Err("request_id must be at most 255 characters");
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("request_id must be printable ASCII without spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(validate_request_id("a").is_ok());
        assert!(validate_request_id("").is_err());
        assert!(validate_request_id(&"x".repeat(255)).is_ok());
        assert!(validate_request_id(&"x".repeat(256)).is_err());
        assert!(validate_request_id("a b").is_err());
    }
}
