//! Who may call what.
//!
//! Every call but health and reflection carries `authorization: Bearer
//! <token>`. A token is a short-lived credential signed by the bank with
//! HMAC-SHA256: `v1.<key id>.<claims, hex>.<signature, hex>`, the claims being
//! the caller class (partner, bank core or internal service), the partner
//! (for a partner), a subject and an expiry. Keys come from
//! `COLEND_AUTH_KEYS` (`id:secret,id:secret`, at least 32 bytes each) and
//! `COLEND_AUTH_KEY_ID` (the one that signs; the others still verify, for
//! rotation). Without them every process uses the published development key,
//! which `colend up` and `colend demo` rely on; a process with a
//! `DATABASE_URL` warns when it does.
//!
//! The server layer verifies the token, applies the allow-list of RPCs per
//! class ([`POLICY`]), and puts the caller's partner in the
//! `x-colend-partner-id` header the services read: from the token for a
//! partner (whatever the client sent), removed for the bank core, passed on
//! for an internal service acting for a partner.
use crate::caller::PARTNER_HEADER;
use crate::error::ApiError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};

/// The development signing key (published: never use it in production).
pub const DEV_AUTH_KEY: &str = "colend-development-auth-key-not-for-production-use";
const DEV_KEY_ID: &str = "dev";

/// Who a caller is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A fintech partner: its own applications and loans only.
    Partner,
    /// The bank's core systems and operators: bank operations.
    Bank,
    /// Another colend service.
    Internal,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Partner, Class::Bank, Class::Internal];

    pub fn name(self) -> &'static str {
        match self {
            Class::Partner => "partner",
            Class::Bank => "bank",
            Class::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub class: Class,
    /// The partner (required for a partner; for an internal service, none).
    pub partner_id: Option<String>,
    /// Who holds it (a system or person), for logs and audit.
    pub subject: String,
    /// Unix seconds.
    pub expires_at: i64,
}

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies tokens.
pub struct Authority {
    keys: BTreeMap<String, Vec<u8>>,
    current: String,
    development: bool,
    internal: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

fn now_secs() -> i64 {
    crate::time::now_millis() / 1000
}

impl Authority {
    /// The published development key.
    pub fn development() -> Authority {
        Authority {
            keys: BTreeMap::from([(DEV_KEY_ID.to_string(), DEV_AUTH_KEY.as_bytes().to_vec())]),
            current: DEV_KEY_ID.to_string(),
            development: true,
            internal: Mutex::new(None),
        }
    }

    /// `COLEND_AUTH_KEYS` / `COLEND_AUTH_KEY_ID`, or the development key
    /// when they are unset.
    pub fn from_env() -> anyhow::Result<Authority> {
        match crate::config::env_opt("COLEND_AUTH_KEYS") {
            None => Ok(Authority::development()),
            Some(spec) => Authority::parse(
                &spec,
                crate::config::env_opt("COLEND_AUTH_KEY_ID").as_deref(),
            ),
        }
    }

    /// `id:secret,id:secret`; `current` names the signing key (default: the first).
    /// `dev:<DEV_AUTH_KEY>` is the development key, named explicitly.
    pub fn parse(spec: &str, current: Option<&str>) -> anyhow::Result<Authority> {
        let mut keys = BTreeMap::new();
        let mut first = None;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, secret) = part
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("COLEND_AUTH_KEYS: each entry is id:secret"))?;
            anyhow::ensure!(
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "COLEND_AUTH_KEYS: key ids are letters, digits and '-'"
            );
            anyhow::ensure!(
                secret.len() >= 32,
                "COLEND_AUTH_KEYS: key {id} is shorter than 32 bytes"
            );
            first.get_or_insert_with(|| id.to_string());
            keys.insert(id.to_string(), secret.as_bytes().to_vec());
        }
        let current = current
            .map(str::to_string)
            .or(first)
            .ok_or_else(|| anyhow::anyhow!("COLEND_AUTH_KEYS holds no key"))?;
        anyhow::ensure!(
            keys.contains_key(&current),
            "COLEND_AUTH_KEY_ID {current} is not in COLEND_AUTH_KEYS"
        );
        Ok(Authority {
            keys,
            current,
            development: false,
            internal: Mutex::new(None),
        })
    }

    pub fn is_development(&self) -> bool {
        self.development
    }

    fn sign(&self, kid: &str, payload: &str) -> Option<Vec<u8>> {
        let key = self.keys.get(kid)?;
        let mut mac = HmacSha256::new_from_slice(key).ok()?;
        mac.update(b"v1.");
        mac.update(kid.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// A signed token for `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let body = format!(
            "{}|{}|{}|{}",
            claims.class.name(),
            claims.partner_id.as_deref().unwrap_or(""),
            claims.subject,
            claims.expires_at
        );
        let payload = hex::encode(body);
        let sig = self.sign(&self.current, &payload).unwrap_or_default();
        format!("v1.{}.{}.{}", self.current, payload, hex::encode(sig))
    }

    /// A token valid for `ttl_secs` from now.
    pub fn issue_for(
        &self,
        class: Class,
        partner_id: Option<&str>,
        subject: &str,
        ttl_secs: i64,
    ) -> String {
        self.issue(&Claims {
            class,
            partner_id: partner_id.map(str::to_string),
            subject: subject.to_string(),
            expires_at: now_secs() + ttl_secs,
        })
    }

    /// The claims of a genuine, unexpired token; otherwise why not.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, &'static str> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(kid), Some(payload), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("the token is malformed");
        };
        let key = self.keys.get(kid).ok_or("the token's key is unknown")?;
        let sig = hex::decode(sig).map_err(|_| "the token is malformed")?;
        let mut mac = HmacSha256::new_from_slice(key).map_err(|_| "the token's key is unusable")?;
        mac.update(b"v1.");
        mac.update(kid.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| "the token's signature is not valid")?;
        let body = String::from_utf8(hex::decode(payload).map_err(|_| "the token is malformed")?)
            .map_err(|_| "the token is malformed")?;
        let f: Vec<&str> = body.split('|').collect();
        let [class, partner, subject, exp] = f[..] else {
            return Err("the token is malformed");
        };
        let class = Class::parse(class).ok_or("the token's class is unknown")?;
        let expires_at: i64 = exp.parse().map_err(|_| "the token is malformed")?;
        if expires_at <= now {
            return Err("the token has expired");
        }
        let partner_id = (!partner.is_empty()).then(|| partner.to_string());
        if class == Class::Partner
            && !partner_id
                .as_deref()
                .is_some_and(crate::caller::valid_partner_id)
        {
            return Err("a partner token must name a valid partner");
        }
        Ok(Claims {
            class,
            partner_id,
            subject: subject.to_string(),
            expires_at,
        })
    }

    /// This process's token as an internal service (reissued before it expires).
    pub fn internal_token(&self) -> String {
        let now = now_secs();
        let mut cached = self.internal.lock().unwrap_or_else(|e| e.into_inner());
        match &*cached {
            Some((t, exp)) if *exp - now > 300 => t.clone(),
            _ => {
                let exp = now + 3_600;
                let t = self.issue(&Claims {
                    class: Class::Internal,
                    partner_id: None,
                    subject: "colend".into(),
                    expires_at: exp,
                });
                *cached = Some((t.clone(), exp));
                t
            }
        }
    }
}

static AUTHORITY: OnceLock<Authority> = OnceLock::new();

/// The process's authority: from the environment, read once. A malformed
/// `COLEND_AUTH_KEYS` is a start-up error (see [`init`]); here it falls back
/// to refusing every token.
pub fn authority() -> &'static Authority {
    AUTHORITY.get_or_init(|| {
        Authority::from_env().unwrap_or_else(|e| {
            tracing::error!(error = %e, "invalid auth keys: no token will verify");
            Authority {
                keys: BTreeMap::new(),
                current: String::new(),
                development: false,
                internal: Mutex::new(None),
            }
        })
    })
}

/// Validates the auth configuration at start-up: a malformed key list, or
/// production storage (`production`: a `DATABASE_URL`) without
/// `COLEND_AUTH_KEYS`, stops the process. Running production storage on the
/// published development key takes naming it explicitly
/// (`COLEND_AUTH_KEYS=dev:<DEV_AUTH_KEY>`), and is warned about.
pub fn init(production: bool) -> anyhow::Result<()> {
    let a = Authority::from_env()?;
    if production && a.is_development() {
        anyhow::bail!(
            "COLEND_AUTH_KEYS is required with DATABASE_URL: the keys that sign callers' tokens \
             (id:secret, 32 bytes or more; see k8s/README.md)"
        );
    }
    if production
        && a.keys
            .get(DEV_KEY_ID)
            .is_some_and(|k| k == DEV_AUTH_KEY.as_bytes())
    {
        tracing::warn!("COLEND_AUTH_KEYS holds the published development key");
    }
    let _ = authority();
    Ok(())
}

/// `Bearer <token>` as a metadata value.
pub fn bearer(token: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""))
}

/// Puts a token for `class` (and `partner_id`) on a request, signed by this
/// process's authority (for tools and tests that hold the key).
pub fn sign_request<T>(
    req: &mut tonic::Request<T>,
    class: Class,
    partner_id: Option<&str>,
    subject: &str,
) {
    let t = authority().issue_for(class, partner_id, subject, 900);
    req.metadata_mut().insert("authorization", bearer(&t));
}

/// Which classes may call each RPC. Every RPC of every colend service is
/// listed (a test checks it against the service descriptors); what is not
/// listed is refused.
pub const POLICY: &[(&str, &[Class])] = {
    use Class::{Bank as B, Internal as I, Partner as P};
    &[
        // acquisition: the partner's own applications; loan events from funding.
        (
            "colend.acquisition.v1.AcquisitionService/SubmitApplication",
            &[P],
        ),
        (
            "colend.acquisition.v1.AcquisitionService/GetApplication",
            &[P],
        ),
        // The bank lists too: its operators look for parked journeys.
        (
            "colend.acquisition.v1.AcquisitionService/ListApplications",
            &[P, B],
        ),
        (
            "colend.acquisition.v1.AcquisitionService/WatchApplication",
            &[P],
        ),
        (
            "colend.acquisition.v1.AcquisitionService/RecordLoanEvent",
            &[I],
        ),
        // The bank's operators decide what becomes of a parked journey.
        (
            "colend.acquisition.v1.AcquisitionService/ResumeApplication",
            &[B],
        ),
        // kyc: checks for acquisition, read by the partner; watchlists are the bank's.
        ("colend.kyc.v1.KycService/CheckBorrower", &[I]),
        ("colend.kyc.v1.KycService/GetCheck", &[P]),
        ("colend.kyc.v1.KycService/AddWatchlistEntry", &[B]),
        ("colend.kyc.v1.KycService/ListWatchlistEntries", &[B]),
        // credit: the bank's decision (read by the partner) and policy.
        ("colend.credit.v1.CreditService/DecideApplication", &[I]),
        ("colend.credit.v1.CreditService/GetDecision", &[P]),
        ("colend.credit.v1.CreditService/SetPolicy", &[B]),
        // Acquisition reads the policy's currency when an application is submitted.
        ("colend.credit.v1.CreditService/GetPolicy", &[B, I]),
        // funding: agreements, reference data and bookings are the bank's;
        // reservations come from acquisition; a partner reads its own loans.
        ("colend.funding.v1.FundingService/UpsertAgreement", &[B]),
        // Acquisition reads the agreement's currency when an application is submitted.
        ("colend.funding.v1.FundingService/GetAgreement", &[B, I]),
        ("colend.funding.v1.FundingService/ReserveFunding", &[I]),
        ("colend.funding.v1.FundingService/ReleaseFunding", &[I]),
        ("colend.funding.v1.FundingService/BookDisbursement", &[B]),
        ("colend.funding.v1.FundingService/BookRepayment", &[B]),
        // A partner reads its own loans; the bank reads and lists every loan.
        ("colend.funding.v1.FundingService/GetLoan", &[P, B]),
        ("colend.funding.v1.FundingService/ListLoans", &[P, B]),
        ("colend.funding.v1.FundingService/GetTrialBalance", &[B]),
        // The accrual run posts income on every partner's loans: the bank's.
        ("colend.funding.v1.FundingService/AccrueInterest", &[B]),
        ("colend.funding.v1.FundingService/SetBankReference", &[B]),
        ("colend.funding.v1.FundingService/GetBankReference", &[B]),
        (
            "colend.funding.v1.FundingService/WhitelistInstitution",
            &[B],
        ),
        (
            "colend.funding.v1.FundingService/GetBorrowerExposure",
            &[I, B],
        ),
        (
            "colend.funding.v1.FundingService/StreamLedgerMovements",
            &[I, B],
        ),
        // reconciliation: the bank's.
        (
            "colend.reconciliation.v1.ReconciliationService/IngestRecords",
            &[B],
        ),
        (
            "colend.reconciliation.v1.ReconciliationService/RunReconciliation",
            &[B],
        ),
        (
            "colend.reconciliation.v1.ReconciliationService/ReconcileStream",
            &[B],
        ),
        (
            "colend.reconciliation.v1.ReconciliationService/GetRun",
            &[B],
        ),
        (
            "colend.reconciliation.v1.ReconciliationService/ListBreaks",
            &[B],
        ),
        (
            "colend.reconciliation.v1.ReconciliationService/StreamBreaks",
            &[B],
        ),
        (
            "colend.reconciliation.v1.ReconciliationService/ResolveBreak",
            &[B],
        ),
        (
            "colend.reconciliation.v1.ReconciliationService/StreamSettlementLines",
            &[B],
        ),
    ]
};

/// May `class` call `method` ("package.Service/Method")?
pub fn allowed(class: Class, method: &str) -> bool {
    POLICY
        .iter()
        .any(|(m, classes)| *m == method && classes.contains(&class))
}

/// Calls a partner may make, per process: a token bucket per partner
/// (`COLEND_PARTNER_RATE_LIMIT` calls a second, default 500, with bursts of
/// `COLEND_PARTNER_RATE_BURST`, default twice that).
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
}

impl RateLimiter {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter {
            per_sec,
            burst,
            buckets: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Takes one call from `key`'s bucket, or says how long until one is free.
    pub fn take(&self, key: &str) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() > 100_000 {
            // Forget idle partners rather than grow without bound.
            b.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        if !b.contains_key(key) {
            b.insert(key.to_string(), (self.burst, now));
        }
        let Some((tokens, at)) = b.get_mut(key) else {
            return Ok(());
        };
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / self.per_sec;
            Err(std::time::Duration::from_millis(
                (wait * 1000.0).ceil() as u64
            ))
        }
    }
}

fn limiter() -> &'static RateLimiter {
    static L: OnceLock<RateLimiter> = OnceLock::new();
    L.get_or_init(|| {
        let per_sec: f64 =
            crate::config::env_parse("COLEND_PARTNER_RATE_LIMIT", 500.0).unwrap_or(500.0);
        let per_sec = if per_sec > 0.0 { per_sec } else { 500.0 };
        let burst: f64 = crate::config::env_parse("COLEND_PARTNER_RATE_BURST", 2.0 * per_sec)
            .unwrap_or(2.0 * per_sec);
        RateLimiter::new(per_sec, burst.max(1.0))
    })
}

/// The caller as the server layer established it (a request extension).
#[derive(Clone, Debug)]
pub struct Caller(pub Claims);

/// Server side: authentication and function-level authorization.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthLayer;

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
}

fn refuse<RB: Default>(e: ApiError) -> http::Response<RB> {
    tonic::Status::from(e).into_http()
}

/// The verdict on one request: the claims, or the refusal (with the claims
/// when the token was genuine).
pub fn check(headers: &http::HeaderMap, path: &str) -> Result<Claims, (Option<Claims>, ApiError)> {
    let method = path.trim_start_matches('/');
    let claims = authenticate(headers).map_err(|e| (None, e))?;
    authorize(&claims, method).map_err(|e| (Some(claims.clone()), e))?;
    Ok(claims)
}

fn authenticate(headers: &http::HeaderMap) -> Result<Claims, ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::Unauthenticated(
            "a bearer token is required (authorization metadata)".into(),
        ));
    }
    authority()
        .verify(token, now_secs())
        .map_err(|why| ApiError::Unauthenticated(why.into()))
}

fn authorize(claims: &Claims, method: &str) -> Result<(), ApiError> {
    if !allowed(claims.class, method) {
        return Err(ApiError::PermissionDenied(format!(
            "a {} caller may not call {method}",
            claims.class.name()
        )));
    }
    if let (Class::Partner, Some(p)) = (claims.class, &claims.partner_id)
        && let Err(retry_after) = limiter().take(p)
    {
        return Err(ApiError::RateLimited {
            retry_after,
            message: format!(
                "too many calls from partner {p}: retry in {} ms",
                retry_after.as_millis()
            ),
        });
    }
    Ok(())
}

impl<S, B, RB> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        // Health and reflection answer anyone.
        if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
            return Box::pin(self.inner.call(req));
        }
        match check(req.headers(), &path) {
            Err((claims, e)) => {
                tracing::info!(rpc = %path, reason = e.reason(), "call refused");
                crate::audit::denied(
                    path.trim_start_matches('/'),
                    claims.as_ref(),
                    &e.to_string(),
                );
                Box::pin(async move { Ok(refuse(e)) })
            }
            Ok(claims) => {
                let h = req.headers_mut();
                match claims.class {
                    Class::Partner => {
                        if let Some(v) = claims
                            .partner_id
                            .as_deref()
                            .and_then(|p| http::HeaderValue::from_str(p).ok())
                        {
                            h.insert(PARTNER_HEADER, v);
                        }
                    }
                    Class::Bank => {
                        h.remove(PARTNER_HEADER);
                    }
                    Class::Internal => {}
                }
                req.extensions_mut().insert(Caller(claims.clone()));
                let method = path.trim_start_matches('/').to_string();
                // The caller's deadline, for the calls this one makes.
                let deadline = req
                    .headers()
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::deadline::parse_grpc_timeout)
                    .and_then(|t| std::time::Instant::now().checked_add(t));
                let fut = self.inner.call(req);
                let fut = crate::audit::CURRENT.scope((claims, method), fut);
                match deadline {
                    Some(d) => Box::pin(crate::deadline::DEADLINE.scope(d, fut)),
                    None => Box::pin(fut),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let a = Authority::development();
        let t = a.issue_for(Class::Partner, Some("acme"), "acme-app", 60);
        let c = a.verify(&t, now_secs()).unwrap();
        assert_eq!(
            (c.class, c.partner_id.as_deref()),
            (Class::Partner, Some("acme"))
        );
        assert_eq!(a.verify(&t, now_secs() + 61), Err("the token has expired"));
        // Another partner's name in the same signature does not verify.
        let forged = t.replacen(
            &hex::encode("partner|acme"),
            &hex::encode("partner|evil"),
            1,
        );
        assert_ne!(forged, t);
        assert!(a.verify(&forged, now_secs()).is_err());
        // A key the verifier does not hold.
        let other = Authority::parse(&format!("k2:{}", "x".repeat(32)), None).unwrap();
        assert!(
            a.verify(&other.issue_for(Class::Bank, None, "x", 60), now_secs())
                .is_err()
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let s1 = "a".repeat(32);
        let s2 = "b".repeat(32);
        let old = Authority::parse(&format!("k1:{s1}"), None).unwrap();
        let new = Authority::parse(&format!("k1:{s1},k2:{s2}"), Some("k2")).unwrap();
        let t = old.issue_for(Class::Bank, None, "core", 60);
        assert!(new.verify(&t, now_secs()).is_ok());
        assert!(
            new.issue_for(Class::Bank, None, "core", 60)
                .starts_with("v1.k2.")
        );
        assert!(Authority::parse("k1:short", None).is_err());
        assert!(Authority::parse(&format!("k1:{s1}"), Some("k9")).is_err());
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let l = RateLimiter::new(10.0, 2.0);
        assert!(l.take("a").is_ok() && l.take("a").is_ok());
        let wait = l.take("a").unwrap_err();
        assert!(wait.as_millis() > 0 && wait.as_millis() <= 100, "{wait:?}");
        // Another partner has its own bucket.
        assert!(l.take("b").is_ok());
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(l.take("a").is_ok());
    }

    #[test]
    fn partners_reach_only_their_rpcs() {
        assert!(allowed(
            Class::Partner,
            "colend.acquisition.v1.AcquisitionService/SubmitApplication"
        ));
        assert!(!allowed(
            Class::Partner,
            "colend.funding.v1.FundingService/BookRepayment"
        ));
        for class in [Class::Partner, Class::Internal] {
            assert!(!allowed(
                class,
                "colend.funding.v1.FundingService/AccrueInterest"
            ));
        }
        assert!(allowed(
            Class::Bank,
            "colend.funding.v1.FundingService/AccrueInterest"
        ));
        assert!(!allowed(Class::Bank, "colend.nope.v1.X/Y"));
    }
}
