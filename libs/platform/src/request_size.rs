//! Requests larger than a service accepts.
//!
//! Each service sets the largest request message it decodes
//! (`max_decoding_message_size`: [`crate::grpc::MAX_REQUEST_BYTES`], more
//! for reconciliation's batches). tonic refuses a larger message as soon as
//! it reads the message's length prefix, before decoding it, with
//! OUT_OF_RANGE and no details. gRPC's convention for a message too large to
//! accept is RESOURCE_EXHAUSTED, and every colend status carries ErrorInfo:
//! [`RequestSizeLayer`] rewrites that refusal on its way out into
//! RESOURCE_EXHAUSTED with reason REQUEST_TOO_LARGE and
//! `metadata["max_bytes"]`, the limit of the service called.
//!
//! What holds:
//! - tonic answers a refused request trailers-only (the status in the
//!   response headers), for unary and streaming requests alike (a client
//!   stream's handler returns the refusal as its error); only such answers
//!   are rewritten, and only when they are tonic's refusal of an oversized
//!   request (its code, its message, no details). A status colend made
//!   (always with ErrorInfo) passes untouched.
//! - Responses are not this layer's business: a response over the encoding
//!   limit ends in trailers (OUT_OF_RANGE, "encoded message length too
//!   large"), which pass as they are.
//! - The services' API tests send a 2 MiB request over a socket and pin the
//!   answer, so a tonic release that words its refusal differently fails a
//!   test instead of passing OUT_OF_RANGE through.
use crate::error::ApiError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::{Code, Status};

/// tonic's refusal of a request message over the decoding limit
/// (OUT_OF_RANGE): "…found {len} bytes, the limit is: {limit} bytes".
const DECODED_TOO_LARGE: &str = "Error, decoded message length too large:";
const DECODED_LIMIT: &str = "the limit is: ";
/// tonic's refusal of a compressed request that inflates past the limit
/// (RESOURCE_EXHAUSTED, no details): "…size limit, of {limit} bytes, exceeded…".
const INFLATED_TOO_LARGE: &str = "Error decompressing: size limit, of ";

/// The leading decimal number of `s`.
fn leading_number(s: &str) -> Option<usize> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The limit a status reports, when it is tonic's refusal of an oversized
/// request; `None` for any other status.
pub fn refused_limit(status: &Status) -> Option<usize> {
    if !status.details().is_empty() {
        return None;
    }
    let m = status.message();
    match status.code() {
        Code::OutOfRange if m.starts_with(DECODED_TOO_LARGE) => {
            let at = m.find(DECODED_LIMIT)? + DECODED_LIMIT.len();
            leading_number(&m[at..])
        }
        Code::ResourceExhausted => m.strip_prefix(INFLATED_TOO_LARGE).and_then(leading_number),
        _ => None,
    }
}

/// Rewrites a trailers-only answer refusing an oversized request; true when
/// it did.
pub fn rewrite<B>(response: &mut http::Response<B>) -> bool {
    let headers = response.headers_mut();
    // Only tonic's own refusals: OUT_OF_RANGE (11) or RESOURCE_EXHAUSTED (8)
    // without details (every status colend makes has details).
    let code = headers.get("grpc-status").map(|v| v.as_bytes());
    if !matches!(code, Some(b"11" | b"8")) || headers.contains_key("grpc-status-details-bin") {
        return false;
    }
    let Some(max_bytes) = Status::from_header_map(headers).and_then(|s| refused_limit(&s)) else {
        return false;
    };
    let status = Status::from(ApiError::RequestTooLarge { max_bytes });
    headers.remove("grpc-message");
    if status.add_header(headers).is_err() {
        return false;
    }
    if response.extensions().get::<Status>().is_some() {
        response.extensions_mut().insert(status);
    }
    true
}

/// Server side: oversized requests answered RESOURCE_EXHAUSTED with
/// ErrorInfo REQUEST_TOO_LARGE.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestSizeLayer;

impl<S> tower::Layer<S> for RequestSizeLayer {
    type Service = RequestSize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestSize { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequestSize<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RequestSize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            rewrite(&mut res);
            Ok(res)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    fn answer(s: Status) -> http::Response<()> {
        s.into_http()
    }

    fn status_of(r: &http::Response<()>) -> Status {
        Status::from_header_map(r.headers()).expect("a status")
    }

    #[test]
    fn an_oversized_request_is_resource_exhausted_with_its_limit() {
        let mut r = answer(Status::out_of_range(
            "Error, decoded message length too large: found 2097157 bytes, the limit is: 1048576 bytes",
        ));
        assert!(rewrite(&mut r));
        let s = status_of(&r);
        assert_eq!(s.code(), Code::ResourceExhausted);
        let info = s
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo");
        assert_eq!(info.reason, "REQUEST_TOO_LARGE");
        assert_eq!(info.domain, crate::error::ERROR_DOMAIN);
        assert_eq!(
            info.metadata.get("max_bytes").map(String::as_str),
            Some("1048576")
        );
        assert!(s.message().contains("1048576"), "{}", s.message());
        // The extension tonic leaves on the response follows.
        assert_eq!(
            r.extensions().get::<Status>().map(Status::code),
            Some(Code::ResourceExhausted)
        );
    }

    #[test]
    fn a_request_inflating_past_the_limit_is_too_large_as_well() {
        let mut r = answer(Status::resource_exhausted(
            "Error decompressing: size limit, of 16777216 bytes, exceeded while decompressing message",
        ));
        assert!(rewrite(&mut r));
        let s = status_of(&r);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.get_error_details()
                .error_info()
                .and_then(|i| i.metadata.get("max_bytes").cloned())
                .as_deref(),
            Some("16777216")
        );
    }

    #[test]
    fn other_statuses_pass_untouched() {
        let too_big_response = Status::out_of_range(
            "Error, encoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        let quota: Status = ApiError::limit("C2_PARTNER_CONCENTRATION", "over").into();
        let rate: Status = ApiError::RateLimited {
            retry_after: std::time::Duration::from_millis(5),
            message: "slow down".into(),
        }
        .into();
        for s in [
            too_big_response,
            Status::out_of_range("page 9 is out of range"),
            quota,
            rate,
            Status::internal("Error, decoded message length too large: the limit is: 1 bytes"),
        ] {
            let mut r = answer(s.clone());
            let before = r.headers().clone();
            assert!(!rewrite(&mut r), "{s:?}");
            assert_eq!(r.headers(), &before);
        }
        // A success (no grpc-status in the headers) as well.
        let mut ok = http::Response::new(());
        assert!(!rewrite(&mut ok));
    }

    #[test]
    fn limits_are_read_from_tonic_wording() {
        assert_eq!(leading_number("1048576 bytes"), Some(1_048_576));
        assert_eq!(leading_number("bytes"), None);
        assert_eq!(
            refused_limit(&Status::out_of_range(
                "Error, decoded message length too large: found 9 bytes"
            )),
            None
        );
    }
}
