//! Extractors: correlation ids, the authenticated principal (checked against the route's
//! intent before the body is even read), JSON bodies, query strings and idempotency keys.
//! Handlers never read credential headers themselves.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap};
use licenseseal_auth::{FailureReason, Principal};
use licenseseal_ledger::{IdempotencyKey, Intent, SubjectId, TenantId};
use serde::de::DeserializeOwned;

use crate::signed::SignedRequest;
use crate::tls::TlsPeer;
use crate::{ApiError, AppState};

/// The id that ties a request to its log lines and its events.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts.extensions.get::<CorrelationId>().cloned().unwrap_or_else(|| CorrelationId(new_correlation_id())))
    }
}

pub fn new_correlation_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
}

/// Honours a caller's `X-Request-Id` (if sane) or the trace id of a W3C `traceparent`.
pub fn correlation_from(headers: &HeaderMap) -> String {
    let sane = |s: &str| {
        (1..=128).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()).filter(|s| sane(s)) {
        return id.to_owned();
    }
    let trace = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(|tp| {
        let mut parts = tp.split('-');
        let (_version, trace_id) = (parts.next()?, parts.next()?);
        (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()) && trace_id != "0".repeat(32))
            .then(|| trace_id.to_ascii_lowercase())
    });
    trace.unwrap_or_else(new_correlation_id)
}

/// Marks the intent a route needs; `Authed<R>` refuses principals without it.
pub trait Requires {
    const INTENT: Intent;
    /// Completes "this credential may not …" when the intent is missing.
    const FORBIDDEN: &'static str;
}

macro_rules! intents {
    ($($name:ident => $intent:ident, $text:literal);* $(;)?) => {
        $(
            pub struct $name;
            impl Requires for $name {
                const INTENT: Intent = Intent::$intent;
                const FORBIDDEN: &'static str = concat!("perform ", $text);
            }
        )*
    };
}

intents! {
    Debit => UsageDebit, "usage.debit";
    Grant => CreditsGrant, "credits.grant";
    Refund => CreditsRefund, "credits.refund";
    Adjust => CreditsAdjust, "credits.adjust";
    Read => LedgerRead, "ledger.read";
    ManageAccounts => AccountsManage, "accounts.manage";
    ManageKeys => KeysManage, "keys.manage";
    ManageTenants => TenantsManage, "tenants.manage";
}

/// An authenticated principal allowed to perform `R::INTENT`.
pub struct Authed<R>(pub Principal, pub PhantomData<R>);

impl<R: Requires> FromRequestParts<AppState> for Authed<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = authenticate(parts, state).await?;
        if !principal.allows(R::INTENT) {
            // Audited with the other 403s by the edge middleware.
            return Err(ApiError::forbidden(&principal, R::FORBIDDEN));
        }
        Ok(Authed(principal, PhantomData))
    }
}

/// Authenticates the request's one credential: a bearer credential, an RFC 9421 signature, or
/// the client certificate of the TLS connection. A request presenting two (two
/// `Authorization` headers, a bearer credential beside a signature, a credential on a
/// connection that also presented a certificate) is refused as ambiguous: no method is ever
/// picked silently over another. The principal's tenant must accept the method.
pub(crate) async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    match resolve(parts, state).await {
        Ok(principal) => Ok(principal),
        Err(Refused::Unauthenticated(reason)) => {
            audit(parts, &reason.to_string());
            Err(ApiError::Unauthenticated)
        }
        Err(Refused::Other(e)) => Err(e),
    }
}

/// Why [`resolve`] found no principal.
pub(crate) enum Refused {
    Unauthenticated(FailureReason),
    Other(ApiError),
}

/// [`authenticate`] without the audit record: for a layer that only needs to know who is
/// calling and leaves every refusal to the handler.
pub(crate) async fn resolve(parts: &Parts, state: &AppState) -> Result<Principal, Refused> {
    let fail = |reason: FailureReason| Refused::Unauthenticated(reason);
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let authorization = values.next();
    let certificate = parts.extensions.get::<TlsPeer>().and_then(|p| Some((p.tenant.clone()?, p.client_cert.clone()?)));
    let signed = has_signature(&parts.headers);
    let presented = usize::from(authorization.is_some()) + usize::from(certificate.is_some()) + usize::from(signed);
    if values.next().is_some() || presented > 1 {
        return Err(fail(FailureReason::Ambiguous));
    }
    let now = state.clock.now();
    let resolved = if let Some((tenant, der)) = certificate {
        state.auth.mtls.principal(&tenant, der.as_ref(), now).await
    } else if signed {
        match parts.extensions.get::<SignedRequest>() {
            Some(SignedRequest(outcome)) => outcome.clone().map_err(licenseseal_auth::AuthError::Unauthenticated),
            None => Err(licenseseal_auth::AuthError::Unauthenticated(FailureReason::BadRequestSignature)),
        }
    } else {
        let Some(value) = authorization else { return Err(fail(FailureReason::Missing)) };
        let value = value.to_str().map_err(|_| fail(FailureReason::Malformed))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(fail(FailureReason::Malformed)),
        };
        state.auth.bearer(token, now).await
    };
    let principal = match resolved {
        Ok(principal) => principal,
        Err(licenseseal_auth::AuthError::Unauthenticated(reason)) => return Err(fail(reason)),
        Err(e) => return Err(Refused::Other(e.into())),
    };
    match state.auth.check_method(&principal, state.config.tenant_cache_ttl).await {
        Ok(()) => Ok(principal),
        Err(licenseseal_auth::AuthError::Unauthenticated(reason)) => Err(fail(reason)),
        Err(e) => Err(Refused::Other(e.into())),
    }
}

/// Whether the request carries RFC 9421 signature headers.
pub(crate) fn has_signature(headers: &HeaderMap) -> bool {
    headers.contains_key("signature") || headers.contains_key("signature-input")
}

/// Whether the request presents any credential at all.
fn has_credential(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || has_signature(headers)
}

/// A route open to anonymous callers. A request that presents a credential there must still
/// present a valid one: an invalid credential never downgrades to anonymous.
pub struct Anonymous;

impl FromRequestParts<AppState> for Anonymous {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if has_credential(&parts.headers) {
            authenticate(parts, state).await?;
        }
        Ok(Anonymous)
    }
}

pub(crate) fn correlation_of(parts: &Parts) -> &str {
    parts.extensions.get::<CorrelationId>().map(|c| c.0.as_str()).unwrap_or("")
}

/// The audit record of a refused credential: the precise reason, never the secret.
pub(crate) fn audit(parts: &Parts, reason: &str) {
    let correlation_id = correlation_of(parts);
    tracing::warn!(
        target: "licenseseal::audit",
        correlation_id,
        reason,
        method = %parts.method,
        path = parts.uri.path(),
        "request refused"
    );
}

impl AppState {
    /// The tenant a request acts on: a tenant principal's own (naming another is "not
    /// found"), or the existing tenant an operator names.
    pub async fn tenant_of(&self, principal: &Principal, named: Option<&TenantId>) -> Result<TenantId, ApiError> {
        match (&principal.tenant_id, named) {
            (Some(own), None) => Ok(own.clone()),
            (Some(own), Some(named)) if own == named => Ok(own.clone()),
            (Some(_), Some(_)) => Err(ApiError::NotFound("tenant")),
            (None, None) => {
                Err(ApiError::bad_request("tenant_id_required", "operator credentials must name tenant_id"))
            }
            (None, Some(named)) => {
                if self.known_tenants.lock().contains(named) {
                    return Ok(named.clone());
                }
                self.store.tenant(named).await?.ok_or(ApiError::NotFound("tenant"))?;
                self.known_tenants.lock().insert(named.clone());
                Ok(named.clone())
            }
        }
    }
}

/// The subject a request acts for: the bound subject of the principal, or the one named.
pub fn subject_of(principal: &Principal, named: Option<&SubjectId>) -> Result<SubjectId, ApiError> {
    match (&principal.subject, named) {
        (Some(bound), None) => Ok(bound.clone()),
        (Some(bound), Some(named)) if bound == named => Ok(bound.clone()),
        (Some(_), Some(_)) => Err(ApiError::forbidden(principal, "act for this subject")),
        (None, Some(named)) => Ok(named.clone()),
        (None, None) => Err(ApiError::bad_request("subject_required", "name the subject")),
    }
}

/// A JSON body with `Content-Type: application/json`, parsed strictly (unknown fields,
/// wrong types and malformed JSON are refused with the parser's message).
pub struct Json<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large()
        } else {
            ApiError::bad_request("invalid_body", "the request body could not be read")
        }
    })
}

/// A request body read whole, at most `body_bytes_max` (64 KiB) — the one place that limit is
/// enforced on a raw body.
pub(crate) async fn read_body(body: axum::body::Body, state: &AppState) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, state.config.body_bytes_max).await.map_err(|e| {
        let over_limit = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if over_limit {
            body_too_large()
        } else {
            ApiError::bad_request("invalid_body", "the request body could not be read (malformed chunked encoding?)")
        }
    })
}

fn body_too_large() -> ApiError {
    ApiError::bad_request("body_too_large", "the request body exceeds 64 KiB")
}

/// Refuses, before any of the body is read, a body announced as over the limit or sent
/// compressed (bodies are read as they come; a compressed one would be taken as garbage).
pub(crate) fn refuse_body_head(headers: &HeaderMap, state: &AppState) -> Option<ApiError> {
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > state.config.body_bytes_max as u64) {
        return Some(body_too_large());
    }
    let has_body = announced.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.to_str().is_ok_and(|v| v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity")));
    (has_body && encoded).then_some(ApiError::UnsupportedEncoding)
}

/// Parses a request body, which must be one JSON object: serde would also fill a struct from
/// an array, field by field in order, which no client means and which bypasses the checks on
/// field names.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(ApiError::bad_request("invalid_body", "the request body must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("invalid_body", format!("invalid JSON body: {e}")))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// Like `Json`, but an empty body means `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// The body of a request that takes none: empty, or `{}`. Anything else is refused, so a
/// request carrying instructions we would ignore is never carried out.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// A strictly parsed query string.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
            .map(Query)
            .map_err(|e| ApiError::bad_request("invalid_query", format!("invalid query string: {e}")))
    }
}

/// The `Idempotency-Key` header of a ledger write: required, 1–255 printable ASCII.
pub struct Idempotency(pub IdempotencyKey);

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let value = values.next().ok_or_else(|| {
            ApiError::bad_request("idempotency_key_required", "ledger writes need an Idempotency-Key header")
        })?;
        let invalid = || {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be one header of 1–255 printable ASCII characters",
            )
        };
        if values.next().is_some() {
            return Err(invalid());
        }
        let key = value.to_str().ok().and_then(|s| IdempotencyKey::parse(s).ok()).ok_or_else(invalid)?;
        Ok(Idempotency(key))
    }
}
