//! The one mapping from errors and ledger refusals to HTTP: RFC 9457 problem+json.
//!
//! Handlers return `ApiError`; it becomes a response carrying a `Problem` extension, and the
//! edge middleware (`crate::edge`) renders the body with the request's correlation id. Bodies
//! never contain SQL, stack traces, or which part of a credential failed.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use licenseseal_auth::AuthError;
use licenseseal_ledger::{Refusal, RefusalCode};
use licenseseal_store::StoreError;
use serde::Serialize;

/// A problem to render. `correlation_id` is set only when it must differ from the current
/// request's (a replayed refusal keeps the original's).
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub correlation_id: Option<String>,
    pub extra: Option<serde_json::Value>,
    /// The refused credential's id, for the audit record; never rendered.
    pub audit_credential: Option<String>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    correlation_id: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem { status, code, detail: detail.into(), correlation_id: None, extra: None, audit_credential: None }
    }

    /// Renders the body; `correlation_id` is the current request's unless the problem has one.
    pub fn render(&self, correlation_id: &str) -> Response {
        let body = ProblemBody {
            kind: format!("https://licenseseal.dev/problems/{}", self.code.replace('_', "-")),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            correlation_id: self.correlation_id.as_deref().unwrap_or(correlation_id),
            extra: self.extra.as_ref(),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }

    /// The generic problem for a status produced outside our handlers (404, 405, 413, …).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, detail) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this method is not allowed on this path"),
            StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the request body exceeds 64 KiB"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "send application/json"),
            StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
            s if s.is_server_error() => ("internal", "an internal error occurred; quote the correlation id"),
            _ => ("bad_request", "the request could not be processed"),
        };
        Problem::new(status, code, detail)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication failed")]
    Unauthenticated,
    #[error("forbidden: {what}")]
    /// The principal may not do this; `what` completes "this credential may not …", and
    /// `credential` (its public id) goes to the audit record only.
    Forbidden { what: &'static str, credential: String },
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("unsupported content encoding")]
    UnsupportedEncoding,
    #[error("idempotency key reused with a different request")]
    KeyReused,
    #[error("ledger refused: {0:?}")]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request on a TLS connection opened for another host.
    #[error("misdirected request")]
    Misdirected,
    /// Something that must not happen (a damaged signing key, …): an opaque 500, logged.
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn forbidden(principal: &licenseseal_auth::Principal, what: &'static str) -> Self {
        ApiError::Forbidden { what, credential: principal.credential_id.clone() }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest { code, detail: detail.into() }
    }

    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            ApiError::Unauthenticated => Problem::new(S::UNAUTHORIZED, "unauthenticated", "authentication failed"),
            ApiError::Forbidden { what, credential } => Problem {
                audit_credential: Some(credential.clone()),
                ..Problem::new(S::FORBIDDEN, "forbidden", format!("this credential may not {what}"))
            },
            ApiError::BadRequest { code, detail } => Problem::new(S::BAD_REQUEST, code, detail.clone()),
            ApiError::Unprocessable { code, detail } => Problem::new(S::UNPROCESSABLE_ENTITY, code, detail.clone()),
            ApiError::NotFound(what) => Problem::new(S::NOT_FOUND, "not_found", format!("no such {what}")),
            ApiError::Conflict { code, detail } => Problem::new(S::CONFLICT, code, detail.clone()),
            ApiError::UnsupportedMediaType => Problem::for_status(S::UNSUPPORTED_MEDIA_TYPE),
            ApiError::UnsupportedEncoding => Problem::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_encoding",
                "send the request body uncompressed, without Content-Encoding",
            ),
            ApiError::KeyReused => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request; use a new key for a new attempt",
            ),
            ApiError::Refused(refusal) => refusal_problem(refusal),
            ApiError::Store(e) if e.is_unavailable() => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the ledger store is unavailable; retry with the same Idempotency-Key",
            ),
            ApiError::Misdirected => ApiError::misdirected_problem(),
            ApiError::Store(_) | ApiError::Internal(_) => Problem::for_status(S::INTERNAL_SERVER_ERROR),
        }
    }
}

fn refusal_problem(refusal: &Refusal) -> Problem {
    let status = match refusal.code {
        RefusalCode::InsufficientCredits => StatusCode::PAYMENT_REQUIRED,
        RefusalCode::EventNotFound | RefusalCode::SubjectMismatch => StatusCode::NOT_FOUND,
        RefusalCode::RefundExceedsDebit => StatusCode::CONFLICT,
        RefusalCode::NotADebit | RefusalCode::MaxDebitAmountExceeded | RefusalCode::BalanceOverflow => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    let mut problem = Problem::new(status, refusal.code.as_str(), refusal.detail.clone());
    if !refusal.correlation_id.is_empty() {
        problem.correlation_id = Some(refusal.correlation_id.clone());
    }
    problem.extra = refusal.available.map(|a| serde_json::json!({ "available": a }));
    problem
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(_) => ApiError::Unauthenticated,
            AuthError::Store(s) => ApiError::Store(s),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %e, "internal error");
        }
        if let ApiError::Store(e) = &self {
            if !e.is_unavailable() {
                tracing::error!(error = %e, "internal error");
            } else {
                tracing::warn!(error = %e, "store unavailable");
            }
        }
        let problem = self.problem();
        let mut response = problem.status.into_response();
        response.extensions_mut().insert(problem);
        response
    }
}
