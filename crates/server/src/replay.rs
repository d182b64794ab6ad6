//! Idempotency keys on the writes outside the ledger: creating tenants, keys, credentials,
//! changing settings and account policy. There the key is optional (PRODUCT.md); when a
//! request carries one, a retry with the same key and the same request gets the first
//! response again with `Idempotent-Replayed: true`, a different request under the key gets
//! `422`, and one that arrives while the first is still running waits for it (or gets `409`).
//! Ledger writes are not handled here: they require a key and store their outcome in the same
//! transaction as their events.
//!
//! Only a caller the route itself would let through (its intent, and a bound subject's own
//! account) takes part: any other goes straight to the handler, which refuses it, so a key
//! never hands a stored response to someone who could not have made the request. A bound
//! subject is part of the request's fingerprint. A key has one scope per tenant: a key a
//! ledger write used is taken here (`RequestClaim::UsedByLedger`, `422`), and the ledger
//! refuses a key a request here used.
//!
//! The key is claimed in the store before the handler runs and finished after it: a success
//! records its response, any refusal releases the key (a refused request wrote nothing). A
//! claim whose process died is taken over once it is older than twice the request timeout.
//! Secrets shown once (`key` of a new API key, `secret` of an HMAC signing key) are never
//! stored: a replay returns the record without them.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use licenseseal_auth::Principal;
use licenseseal_ledger::{Fingerprint, IdempotencyKey, Intent, Timestamp};
use licenseseal_store::RequestClaim;

use crate::extract::{self, Refused};
use crate::{ApiError, AppState};

/// Response fields holding a secret shown once, removed before a response is stored.
const SECRET_FIELDS: [&str; 2] = ["key", "secret"];
/// How often, and how long in all, a duplicate waits for the first request to finish.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(50);
const IN_FLIGHT_WAIT_MAX: Duration = Duration::from_secs(5);
/// Largest response body stored for replay.
const RESPONSE_BYTES_MAX: usize = 1 << 20;

pub(crate) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let outside_ledger = intent_of(request.method(), request.uri().path()).is_some();
    if !outside_ledger || !request.headers().contains_key("idempotency-key") {
        return next.run(request).await;
    }
    let mut values = request.headers().get_all("idempotency-key").iter();
    let key = match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().and_then(|s| IdempotencyKey::parse(s).ok()),
        _ => None,
    };
    let Some(key) = key else {
        return ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be one header of 1–255 printable ASCII characters",
        )
        .into_response();
    };
    let (parts, body) = request.into_parts();
    let bytes = match extract::read_body(body, &state).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    // Who is calling decides the key's scope. A request that does not authenticate is left
    // to the handler, which refuses it (and audits why) without any key being involved.
    let principal = match extract::resolve(&parts, &state).await {
        Ok(principal) => principal,
        Err(Refused::Unauthenticated(_)) => return next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(Refused::Other(e)) => return e.into_response(),
    };
    // A replay hands back a stored response, so it is only for a caller the route itself
    // would let through: anyone else goes straight to the handler, which refuses them (and
    // never learns whether the key is in use).
    if !may_replay(&principal, &parts) {
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    }
    let scope = principal.tenant_id.as_ref().map_or_else(|| "operator".to_owned(), |t| t.to_string());
    let fingerprint = fingerprint(&parts, &bytes, &principal);
    let stale = micros(state.config.request_timeout * 2);
    let mut waited = Duration::ZERO;
    loop {
        let now = state.clock.now();
        let stale_before = Timestamp::from_micros(now.micros().saturating_sub(stale));
        let claim = match state.store.claim_request(&scope, key.as_str(), fingerprint, now, stale_before).await {
            Ok(claim) => claim,
            Err(e) => return ApiError::from(e).into_response(),
        };
        match claim {
            RequestClaim::Claimed => break,
            RequestClaim::UsedByLedger => return ApiError::KeyReused.into_response(),
            RequestClaim::Done { fingerprint: stored, .. } | RequestClaim::InFlight { fingerprint: stored }
                if stored != fingerprint =>
            {
                return ApiError::KeyReused.into_response();
            }
            RequestClaim::Done { status, body, .. } => return replayed(status, body),
            RequestClaim::InFlight { .. } if waited >= IN_FLIGHT_WAIT_MAX => {
                return ApiError::Conflict {
                    code: "idempotency_key_in_flight",
                    detail: "a request with this Idempotency-Key is still being processed; retry later".into(),
                }
                .into_response();
            }
            RequestClaim::InFlight { .. } => {
                tokio::time::sleep(IN_FLIGHT_POLL).await;
                waited += IN_FLIGHT_POLL;
            }
        }
    }

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if !response.status().is_success() {
        release(&state, &scope, &key).await;
        return response;
    }
    let (response_parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, RESPONSE_BYTES_MAX).await else {
        release(&state, &scope, &key).await;
        return ApiError::Internal("a response too large to keep for replay".into()).into_response();
    };
    let stored = (response_parts.status.as_u16(), without_secrets(&body));
    if let Err(e) = state.store.finish_request(&scope, key.as_str(), Some(stored)).await {
        // The write happened; only its replay record is missing. The claim stays until it goes
        // stale, so a retry in the meantime waits and then gets 409 rather than a second write.
        tracing::error!(error = %e, "store: cannot record the response of an idempotent request");
    }
    Response::from_parts(response_parts, Body::from(body))
}

/// The intent a write outside the ledger needs (as its handler's `Authed<…>` says), or `None`
/// for every other request: reads, ledger writes (whose idempotency is the ledger's own) and
/// the token endpoint (a token is a secret, never replayed).
fn intent_of(method: &Method, path: &str) -> Option<Intent> {
    if !matches!(*method, Method::POST | Method::PATCH | Method::PUT | Method::DELETE) {
        return None;
    }
    let under = |prefix: &str| path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    match *method {
        Method::POST if path == "/v1/tenants" || path == "/v1/authority/rotate" => Some(Intent::TenantsManage),
        Method::PATCH if under("/v1/accounts") && path != "/v1/accounts" => Some(Intent::AccountsManage),
        _ if path == "/v1/tenant"
            || [
                "/v1/api-keys",
                "/v1/signing-keys",
                "/v1/identity-providers",
                "/v1/client-cas",
                "/v1/client-identities",
            ]
            .into_iter()
            .any(under) =>
        {
            Some(Intent::KeysManage)
        }
        _ => None,
    }
}

/// Whether `principal` passes the route's own checks that come before its body: the intent,
/// and for a subject-bound principal on an account route, the subject.
fn may_replay(principal: &Principal, parts: &axum::http::request::Parts) -> bool {
    let path = parts.uri.path();
    let Some(intent) = intent_of(&parts.method, path) else { return false };
    if !principal.allows(intent) {
        return false;
    }
    match (&principal.subject, path.strip_prefix("/v1/accounts/")) {
        (Some(bound), Some(named)) => named == bound.as_str(),
        _ => true,
    }
}

/// Method, path and query, the caller's bound subject (a bound caller's request means its own
/// subject), and the body — canonical JSON when it parses, so two spellings of one request
/// match.
fn fingerprint(parts: &axum::http::request::Parts, body: &[u8], principal: &Principal) -> [u8; 32] {
    let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let canonical = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| serde_json::to_vec(&v).ok());
    let bound = principal.subject.as_ref().map_or("", |s| s.as_str());
    Fingerprint::of(&[
        parts.method.as_str().as_bytes(),
        target.as_bytes(),
        bound.as_bytes(),
        canonical.as_deref().unwrap_or(body),
    ])
    .0
}

fn without_secrets(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut fields)) => {
            for name in SECRET_FIELDS {
                fields.remove(name);
            }
            serde_json::Value::Object(fields).to_string()
        }
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}

fn replayed(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

async fn release(state: &AppState, scope: &str, key: &IdempotencyKey) {
    if let Err(e) = state.store.finish_request(scope, key.as_str(), None).await {
        tracing::warn!(error = %e, "store: cannot release an idempotency key; it frees itself when stale");
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Every mutating response carries its `correlation_id` (PRODUCT.md). Ledger handlers put it
/// in their bodies themselves; this layer adds it to the JSON object bodies of the other
/// successful writes. It runs inside the replay layer, so a replay returns the first
/// response's correlation id, as ledger replays do.
pub(crate) async fn stamp(request: Request, next: Next) -> Response {
    if intent_of(request.method(), request.uri().path()).is_none() {
        return next.run(request).await;
    }
    let correlation_id = request.extensions().get::<crate::extract::CorrelationId>().map(|c| c.0.clone());
    let response = next.run(request).await;
    let json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/json");
    let (Some(correlation_id), true, true) = (correlation_id, response.status().is_success(), json) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, RESPONSE_BYTES_MAX).await else {
        return ApiError::Internal("a response too large to stamp".into()).into_response();
    };
    let stamped = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut fields)) if !fields.contains_key("correlation_id") => {
            fields.insert("correlation_id".into(), correlation_id.into());
            serde_json::Value::Object(fields).to_string().into_bytes()
        }
        _ => bytes.to_vec(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(stamped))
}
