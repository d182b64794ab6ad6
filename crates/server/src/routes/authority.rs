//! The token Authority over HTTP: the client-credentials exchange, the published keys, the
//! discovery document and key rotation.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use licenseseal_auth::authority::{IssueError, TokenRequest};
use licenseseal_auth::{AuthError, AuthMethod, FailureReason, Principal};
use licenseseal_ledger::{Intent, Scopes};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::extract::{self, Anonymous, Authed, ManageTenants, NoFields, OptionalJson};
use crate::{ApiError, AppState};

/// The body of `POST /v1/authority/token`, as a form or as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    /// Space-separated scopes, each held by the credential.
    scope: Option<String>,
    /// Requested lifetime in seconds (capped at the Authority's maximum).
    expires_in: Option<u64>,
}

/// Longest `expires_in` a request may name before it is refused rather than capped.
const EXPIRES_IN_MAX: u64 = 365 * 24 * 3600;

pub async fn token(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let mime = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let bytes = extract::read_body(body, &state).await?;
    let form: TokenBody = match mime.as_str() {
        "application/x-www-form-urlencoded" => serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| ApiError::bad_request("invalid_request", format!("invalid form body: {e}")))?,
        "application/json" => extract::parse_json(&bytes)?,
        _ => return Err(ApiError::UnsupportedMediaType),
    };
    if form.grant_type != "client_credentials" {
        return Err(ApiError::bad_request("unsupported_grant_type", "grant_type must be client_credentials"));
    }
    let scopes = match form.scope.as_deref() {
        None => None,
        Some(text) => Some(
            Scopes::parse(text.split(' ').filter(|s| !s.is_empty()))
                .map_err(|bad| ApiError::bad_request("invalid_scope", format!("unknown scope {bad:?}")))?,
        ),
    };
    let lifetime = match form.expires_in {
        Some(0) => return Err(ApiError::bad_request("invalid_request", "expires_in must be at least 1 second")),
        Some(s) if s > EXPIRES_IN_MAX => {
            return Err(ApiError::bad_request("invalid_request", "expires_in is far too long"));
        }
        s => s.map(Duration::from_secs),
    };
    let principal = client(&state, &parts, form.client_id.as_deref(), form.client_secret.as_deref()).await?;
    // A token the tenant would refuse is not issued.
    let as_token = Principal { method: AuthMethod::AuthorityToken, ..principal.clone() };
    if principal.tenant_id.is_some() && state.auth.check_method(&as_token, state.config.tenant_cache_ttl).await.is_err()
    {
        return Err(ApiError::bad_request(
            "unsupported_grant",
            "this tenant does not accept Authority tokens (auth_methods); use the credential itself",
        ));
    }
    let now = state.clock.now();
    let issued = state.auth.authority.issue(&principal, &TokenRequest { scopes, lifetime }, now).map_err(|e| {
        let code = match e {
            IssueError::Widening | IssueError::NoScopes => "invalid_scope",
            IssueError::Operator => "unsupported_credential",
            IssueError::CredentialExpiring => "invalid_grant",
        };
        ApiError::bad_request(code, e.to_string())
    })?;
    tracing::info!(
        target: "licenseseal::audit",
        correlation_id = extract::correlation_of(&parts),
        credential = principal.credential_id,
        method = principal.method.as_str(),
        expires_in = issued.expires_in,
        "token issued"
    );
    let body = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scopes.names().join(" "),
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The credential of a token request: `client_id` + `client_secret` (HTTP Basic or in the
/// body: an API key's id and secret), or any credential the API takes — a Bearer API key or
/// identity-provider token, a signed request, a client certificate. Exactly one.
async fn client(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body_id: Option<&str>,
    body_secret: Option<&str>,
) -> Result<Principal, ApiError> {
    let headers: &HeaderMap = &parts.headers;
    let fail = |reason: FailureReason| {
        extract::audit(parts, &reason.to_string());
        ApiError::Unauthenticated
    };
    let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
    let authorization = authorizations.next();
    if authorizations.next().is_some() {
        return Err(fail(FailureReason::Ambiguous));
    }
    let basic = match authorization.map(|v| v.to_str().map_err(|_| fail(FailureReason::Malformed))) {
        Some(Ok(value)) => match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| fail(FailureReason::Malformed))?;
                let (id, secret) = decoded.split_once(':').ok_or_else(|| fail(FailureReason::Malformed))?;
                Some((id.to_owned(), secret.to_owned()))
            }
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("bearer") => None,
            _ => return Err(fail(FailureReason::Malformed)),
        },
        Some(Err(e)) => return Err(e),
        None => None,
    };
    let in_body = match (body_id, body_secret) {
        (Some(id), Some(secret)) => Some((id.to_owned(), secret.to_owned())),
        (None, None) => None,
        _ => return Err(fail(FailureReason::Malformed)),
    };
    let now = state.clock.now();
    let other_credential = extract::has_signature(headers)
        || parts.extensions.get::<crate::tls::TlsPeer>().is_some_and(|peer| peer.client_cert.is_some());
    let principal = match (authorization, basic, in_body) {
        (_, Some(_), _) | (_, _, Some(_)) if other_credential => return Err(fail(FailureReason::Ambiguous)),
        (Some(_), Some(pair), None) | (None, None, Some(pair)) => {
            let (id, secret) = pair;
            let principal = state.auth.keys.authenticate(&secret, now).await.map_err(|e| auth_error(parts, e))?;
            if principal.credential_id != id {
                return Err(fail(FailureReason::UnknownKey));
            }
            // The tenant's method policy holds here as on every route: a tenant that refuses
            // API keys cannot have one turned into a token.
            match state.auth.check_method(&principal, state.config.tenant_cache_ttl).await {
                Ok(()) => principal,
                Err(e) => return Err(auth_error(parts, e)),
            }
        }
        // A Bearer credential, a signature or a client certificate (and their ambiguities)
        // are judged exactly as on every other route.
        (_, None, None) => extract::authenticate(parts, state).await?,
        _ => return Err(fail(FailureReason::Ambiguous)),
    };
    if principal.method == AuthMethod::AuthorityToken {
        return Err(ApiError::bad_request(
            "unsupported_credential",
            "an Authority token cannot be exchanged for another; use the credential it came from",
        ));
    }
    Ok(principal)
}

fn auth_error(parts: &axum::http::request::Parts, e: AuthError) -> ApiError {
    if let AuthError::Unauthenticated(reason) = &e {
        extract::audit(parts, &reason.to_string());
    }
    e.into()
}

pub async fn jwks(_: Anonymous, State(state): State<AppState>) -> Response {
    let mut response = Json(state.auth.authority.jwks(state.clock.now())).into_response();
    let max_age = state.auth.authority.config().jwks_max_age.as_secs();
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

pub async fn discovery(_: Anonymous, State(state): State<AppState>) -> Response {
    let issuer = state.auth.authority.config().issuer.trim_end_matches('/').to_owned();
    let body: Value = json!({
        "issuer": state.auth.authority.config().issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/v1/authority/token"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "scopes_supported": Intent::ALL.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// `POST /v1/authority/rotate`: operators only. The new key signs from now on; the previous
/// one stays published and accepted until its last token has expired.
pub async fn rotate(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageTenants>,
    OptionalJson(_): OptionalJson<NoFields>,
) -> Result<Json<Value>, ApiError> {
    if !principal.is_operator() {
        return Err(ApiError::forbidden(&principal, "rotate the Authority's signing key"));
    }
    let previous = state.auth.authority.current_kid();
    let kid = state.auth.authority.rotate(state.clock.now()).await?;
    tracing::info!(target: "licenseseal::audit", credential = principal.credential_id, kid, previous, "authority key rotated");
    Ok(Json(json!({ "kid": kid, "previous_kid": previous })))
}
