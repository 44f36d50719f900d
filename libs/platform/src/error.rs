//! The error model. Every status colend returns carries `google.rpc.ErrorInfo`
//! (domain `colend.io`, reason from `colend.common.v1.ErrorReason` without its
//! prefix); invalid input also carries `google.rpc.BadRequest`.
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const ERROR_DOMAIN: &str = "colend.io";

pub type ApiResult<T> = Result<T, ApiError>;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Errors a use case can end in. Mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("request_id was already used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this request_id is still being processed")]
    RequestInFlight,
    #[error("{0}")]
    DuplicateApplication(String),
    /// A quota or regulatory limit; `limit` names which (e.g. "C2_PARTNER_CONCENTRATION")
    /// and travels in ErrorInfo metadata as "limit".
    #[error("{message}")]
    QuotaExceeded { limit: String, message: String },
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    NoAgreement(String),
    #[error("{0}")]
    NotWhitelisted(String),
    /// An amount is in another currency than the operation is in (the
    /// partner's agreement, the loan, the bank's reference data, the credit
    /// policy); `expected` is the currency required and travels in ErrorInfo
    /// metadata as "expected". A code that is not an ISO 4217 currency at
    /// all is InvalidArgument instead.
    #[error("{message}")]
    CurrencyMismatch { expected: String, message: String },
    /// The same bank transaction was already booked with other content.
    #[error("{0}")]
    AlreadyExists(String),
    /// A value date before one already booked on the same loan (a
    /// repayment dated before the last repayment): accruals run forward only.
    #[error("{0}")]
    BackValued(String),
    /// A precondition that can still become true (set-up not done yet):
    /// never stored against a request id, so a retry can succeed.
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Too many calls; retry after the delay (sent as google.rpc.RetryInfo).
    #[error("{message}")]
    RateLimited {
        retry_after: std::time::Duration,
        message: String,
    },
    #[error("{service} is unavailable: {message}")]
    Dependency { service: String, message: String },
    /// The request is larger than the service accepts; `max_bytes` travels
    /// in ErrorInfo metadata.
    #[error("the request is larger than this service accepts ({max_bytes} bytes)")]
    RequestTooLarge { max_bytes: usize },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

fn summary(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    pub fn invalid(violations: Vec<FieldViolation>) -> Self {
        ApiError::InvalidArgument(violations)
    }

    pub fn field(field: &str, description: &str) -> Self {
        ApiError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn limit(limit: &str, message: impl Into<String>) -> Self {
        ApiError::QuotaExceeded {
            limit: limit.to_string(),
            message: message.into(),
        }
    }

    /// An amount in another currency than `expected`.
    pub fn currency_mismatch(expected: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::CurrencyMismatch {
            expected: expected.into(),
            message: message.into(),
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// The stable reason (ErrorReason value name without prefix).
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "INVALID_ARGUMENT",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ApiError::RequestInFlight => "REQUEST_IN_FLIGHT",
            ApiError::DuplicateApplication(_) => "DUPLICATE_APPLICATION",
            ApiError::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            ApiError::InvalidState(_) => "INVALID_STATE",
            ApiError::NoAgreement(_) => "NO_AGREEMENT",
            ApiError::NotWhitelisted(_) => "NOT_WHITELISTED",
            ApiError::CurrencyMismatch { .. } => "CURRENCY_MISMATCH",
            ApiError::AlreadyExists(_) => "ALREADY_EXISTS",
            ApiError::BackValued(_) => "BACK_VALUED",
            ApiError::NotReady(_) => "NOT_READY",
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::PermissionDenied(_) => "PERMISSION_DENIED",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::Dependency { .. } => "DEPENDENCY_UNAVAILABLE",
            ApiError::RequestTooLarge { .. } => "REQUEST_TOO_LARGE",
            ApiError::Internal(_) => "INTERNAL",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::IdempotencyKeyReused => Code::FailedPrecondition,
            ApiError::RequestInFlight => Code::Aborted,
            ApiError::DuplicateApplication(_) => Code::AlreadyExists,
            ApiError::QuotaExceeded { .. } => Code::ResourceExhausted,
            ApiError::InvalidState(_) => Code::FailedPrecondition,
            ApiError::NoAgreement(_) => Code::FailedPrecondition,
            ApiError::NotWhitelisted(_) => Code::FailedPrecondition,
            ApiError::CurrencyMismatch { .. } => Code::FailedPrecondition,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::BackValued(_) => Code::FailedPrecondition,
            ApiError::NotReady(_) => Code::FailedPrecondition,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::RateLimited { .. } => Code::ResourceExhausted,
            ApiError::Dependency { .. } => Code::Unavailable,
            ApiError::RequestTooLarge { .. } => Code::ResourceExhausted,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // A lost or unreachable database is transient (UNAVAILABLE, worth a
        // retry); anything else is a fault of ours.
        let transient = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => true,
            // Connection exceptions (08…), shutdown / cannot connect now (57P…),
            // too many connections (53300), serialization failures (40001, 40P01);
            // SQLite's file busy or locked by another process past the busy
            // timeout (SQLITE_BUSY 5 and SQLITE_LOCKED 6, with their extended codes).
            sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("57P")
                    || c == "53300"
                    || c == "40001"
                    || c == "40P01"
                    || c.parse::<u32>()
                        .is_ok_and(|n| n & 0xff == 5 || n & 0xff == 6)
            }),
            _ => false,
        };
        if transient {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::Dependency {
                service: "database".into(),
                message: "the database is unavailable; retry with the same request id".into(),
            }
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut metadata = std::collections::HashMap::<String, String>::new();
        if let ApiError::QuotaExceeded { limit, .. } = &e {
            metadata.insert("limit".into(), limit.clone());
        }
        if let ApiError::CurrencyMismatch { expected, .. } = &e {
            metadata.insert("expected".into(), expected.clone());
        }
        if let ApiError::RequestTooLarge { max_bytes } = &e {
            metadata.insert("max_bytes".into(), max_bytes.to_string());
        }
        let mut details = ErrorDetails::with_error_info(e.reason(), ERROR_DOMAIN, metadata);
        if let ApiError::InvalidArgument(v) = &e {
            for f in v {
                details.add_bad_request_violation(f.field.clone(), f.description.clone());
            }
        }
        if let ApiError::RateLimited { retry_after, .. } = &e {
            details.set_retry_info(Some(*retry_after));
        }
        if let ApiError::Internal(cause) = &e {
            // The cause chain stays in the logs; the caller gets a generic message.
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        Status::with_error_details(e.code(), e.to_string(), details)
    }
}

/// Maps a status from another colend service into this service's error,
/// keeping client errors and turning transport failures into DEPENDENCY_UNAVAILABLE.
pub fn from_downstream(service: &str, status: Status) -> ApiError {
    let info = status.get_error_details().error_info().cloned();
    let reason = info.as_ref().map(|i| i.reason.clone()).unwrap_or_default();
    let msg = status.message().to_string();
    match (status.code(), reason.as_str()) {
        (_, "IDEMPOTENCY_KEY_REUSED") => ApiError::IdempotencyKeyReused,
        (_, "QUOTA_EXCEEDED") => ApiError::QuotaExceeded {
            limit: info
                .and_then(|i| i.metadata.get("limit").cloned())
                .unwrap_or_else(|| "QUOTA".into()),
            message: msg,
        },
        (_, "NO_AGREEMENT") => ApiError::NoAgreement(msg),
        (_, "NOT_WHITELISTED") => ApiError::NotWhitelisted(msg),
        (_, "CURRENCY_MISMATCH") => ApiError::CurrencyMismatch {
            expected: info
                .and_then(|i| i.metadata.get("expected").cloned())
                .unwrap_or_default(),
            message: msg,
        },
        (_, "INVALID_STATE") => ApiError::InvalidState(msg),
        (_, "ALREADY_EXISTS") => ApiError::AlreadyExists(msg),
        (_, "BACK_VALUED") => ApiError::BackValued(msg),
        (_, "NOT_READY") => ApiError::NotReady(msg),
        (Code::NotFound, _) => ApiError::NotFound(msg),
        (Code::InvalidArgument, _) => {
            let v = status
                .get_error_details()
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|f| FieldViolation::new(f.field.clone(), f.description.clone()))
                        .collect()
                })
                .unwrap_or_default();
            ApiError::InvalidArgument(v)
        }
        _ => ApiError::Dependency {
            service: service.to_string(),
            message: format!("{}: {}", status.code(), msg),
        },
    }
}

/// Accumulates field violations while validating a request.
#[derive(Default, Debug)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records a violation when `ok` is false.
    pub fn check(&mut self, ok: bool, field: &str, description: &str) {
        if !ok {
            self.add(field, description);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> ApiResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_error_info_and_field_violations() {
        let s: Status = ApiError::field("term_months", "must be 1 to 360").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let d = s.get_error_details();
        assert_eq!(d.error_info().unwrap().reason, "INVALID_ARGUMENT");
        assert_eq!(d.error_info().unwrap().domain, ERROR_DOMAIN);
        assert_eq!(
            d.bad_request().unwrap().field_violations[0].field,
            "term_months"
        );
    }

    #[test]
    fn currency_mismatch_names_the_expected_currency() {
        let s: Status = ApiError::currency_mismatch("CNY", "the agreement is in CNY").into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let info = s.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "CURRENCY_MISMATCH");
        assert_eq!(
            info.metadata.get("expected").map(String::as_str),
            Some("CNY")
        );
        match from_downstream("funding", s) {
            ApiError::CurrencyMismatch { expected, message } => {
                assert_eq!(expected, "CNY");
                assert_eq!(message, "the agreement is in CNY");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn money_fields_name_the_currency_field() {
        use colend_contracts::common::v1::Money;
        for code in ["XXX", "ABC", "usd", "XTS", "XAU", ""] {
            let mut v = Violations::new();
            let m = Some(Money {
                minor_units: 1,
                currency_code: code.into(),
            });
            v.money("requested_amount", &m, Amount::Positive);
            let Err(ApiError::InvalidArgument(f)) = v.into_result() else {
                panic!("{code} accepted");
            };
            assert_eq!(f[0].field, "requested_amount.currency_code", "{code}");
        }
        let mut v = Violations::new();
        let m = Some(Money {
            minor_units: 1,
            currency_code: "USD".into(),
        });
        v.money("requested_amount", &m, Amount::Positive);
        assert!(v.is_empty());
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let s: Status = ApiError::internal(anyhow::anyhow!("SELECT secret FROM t")).into();
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("SELECT"));
    }
}

/// How a money field is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    /// Required and greater than zero.
    Positive,
    /// Required and not negative.
    Required,
    /// May be absent; when present, not negative.
    Optional,
}

impl Violations {
    /// A client request id: 1 to 255 printable ASCII characters.
    pub fn request_id(&mut self, id: &str) {
        if let Err(e) = colend_core::request_id::validate_request_id(id) {
            self.add("request_id", e);
        }
    }

    /// A resource id: 1 to 64 characters.
    pub fn id(&mut self, field: &str, id: &str) {
        self.check(
            !id.is_empty() && id.len() <= 64,
            field,
            "must be 1 to 64 characters",
        );
    }

    /// Free text: required, at most `max` characters.
    pub fn text(&mut self, field: &str, value: &str, max: usize) {
        let n = value.trim().chars().count();
        if n == 0 {
            self.add(field, "is required");
        } else if n > max {
            self.add(field, format!("must be at most {max} characters"));
        }
    }

    /// A Money field: minor units and an ISO 4217 code.
    pub fn money(
        &mut self,
        field: &str,
        m: &Option<colend_contracts::common::v1::Money>,
        rule: Amount,
    ) {
        match m {
            None if rule == Amount::Optional => {}
            None => self.add(field, "is required"),
            Some(m) => {
                if m.minor_units < 0 {
                    self.add(&format!("{field}.minor_units"), "must not be negative");
                } else if rule == Amount::Positive && m.minor_units == 0 {
                    self.add(&format!("{field}.minor_units"), "must be positive");
                }
                self.currency(&format!("{field}.currency_code"), &m.currency_code);
            }
        }
    }

    /// A currency code: an active ISO 4217 currency loans can be made in
    /// ([`colend_core::Currency::parse`], the one check every service uses).
    pub fn currency(&mut self, field: &str, code: &str) {
        match colend_core::Currency::parse(code) {
            Ok(_) => {}
            Err(colend_core::MoneyError::BadCurrency) => self.add(
                field,
                "must be an ISO 4217 code of three upper-case letters such as CNY",
            ),
            Err(e) => self.add(field, format!("must be an active ISO 4217 currency: {e}")),
        }
    }
}

impl Violations {
    /// Records a violation at `field` when `money` is not in `currency`
    /// (amounts of one request that must share a currency).
    pub fn same_currency(
        &mut self,
        field: &str,
        money: &Option<colend_contracts::common::v1::Money>,
        currency: &str,
        of: &str,
    ) {
        if let Some(m) = money
            && m.currency_code != currency
        {
            self.add(field, format!("must be in {of}'s currency ({currency})"));
        }
    }
}
