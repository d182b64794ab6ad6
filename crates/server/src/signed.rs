//! RFC 9421 signed requests. A middleware verifies the signature before any handler runs —
//! it needs the whole body, to re-hash it against `Content-Digest` — and leaves the outcome
//! in the request for the `Authed` extractor, so signed requests take the same policy path as
//! every other credential.
//!
//! The signed `@target-uri` is rebuilt from what this server received: scheme `https` on the
//! TLS listener and `http` on the plain one, the `Host` (or HTTP/2 `:authority`), and the path
//! and query exactly as sent. A client behind a TLS-terminating proxy must sign the URL the
//! gateway sees.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use licenseseal_auth::httpsig::RequestParts;
use licenseseal_auth::{AuthError, FailureReason, Principal};

use crate::extract::has_signature;
use crate::tls::TlsPeer;
use crate::{ApiError, AppState};

/// The outcome of checking a request's signature.
#[derive(Debug, Clone)]
pub struct SignedRequest(pub Result<Principal, FailureReason>);

pub(crate) async fn verify(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // A signature beside a bearer credential is refused as ambiguous by the extractor; there
    // is nothing to verify then.
    if !has_signature(request.headers()) || request.headers().contains_key(header::AUTHORIZATION) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match crate::extract::read_body(body, &state).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let outcome = match check(&state, &parts, &bytes).await {
        Ok(principal) => Ok(principal),
        Err(AuthError::Unauthenticated(reason)) => Err(reason),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(SignedRequest(outcome));
    next.run(request).await
}

async fn check(state: &AppState, parts: &axum::http::request::Parts, body: &[u8]) -> Result<Principal, AuthError> {
    let refuse = |r| Err(AuthError::Unauthenticated(r));
    let one = |name: &str| {
        let mut values = parts.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    };
    let (Some(input), Some(signature)) = (one("signature-input"), one("signature")) else {
        return refuse(FailureReason::Malformed);
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    let Some(authority) = authority else { return refuse(FailureReason::Malformed) };
    let headers: Vec<(&str, &str)> =
        parts.headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))).collect();
    let req = RequestParts {
        method: parts.method.as_str(),
        scheme: if parts.extensions.get::<TlsPeer>().is_some() { "https" } else { "http" },
        authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &headers,
    };
    state.auth.signatures.verify(&req, body, input, signature, state.clock.now()).await
}
