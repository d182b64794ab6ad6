//! External identity providers: a tenant registers, lists and removes the issuers whose tokens
//! it accepts. Providers belong to the whole tenant, so subject-bound principals cannot manage
//! them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use licenseseal_auth::providers::ProviderSpec;
use licenseseal_auth::Principal;
use licenseseal_ledger::{ProviderId, TenantId, Timestamp};
use licenseseal_store::{IdentityProviderRecord, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::extract::{Authed, Json as Body, ManageKeys, Query};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    tenant_id: Option<TenantId>,
    issuer: String,
    jwks_uri: String,
    audiences: Vec<String>,
    algorithms: Vec<String>,
    subject_claim: Option<String>,
    scope_claim: Option<String>,
    leeway_seconds: Option<u32>,
    #[serde(default)]
    required_claims: Vec<String>,
}

#[derive(Serialize)]
pub struct ProviderBody {
    id: ProviderId,
    tenant_id: TenantId,
    issuer: String,
    jwks_uri: String,
    audiences: Vec<String>,
    algorithms: Vec<String>,
    subject_claim: String,
    scope_claim: String,
    leeway_seconds: u32,
    required_claims: Vec<String>,
    created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks: Option<Value>,
}

impl ProviderBody {
    fn new(p: IdentityProviderRecord, jwks: Option<Value>) -> Self {
        ProviderBody {
            id: p.id,
            tenant_id: p.tenant_id,
            issuer: p.issuer,
            jwks_uri: p.jwks_uri,
            audiences: p.audiences,
            algorithms: p.algorithms,
            subject_claim: p.subject_claim,
            scope_claim: p.scope_claim,
            leeway_seconds: p.leeway_seconds,
            required_claims: p.required_claims,
            created_at: p.created_at,
            jwks,
        }
    }
}

fn tenant_wide(principal: &Principal) -> Result<(), ApiError> {
    match principal.subject {
        Some(_) => Err(ApiError::forbidden(principal, "manage identity providers (they serve the whole tenant)")),
        None => Ok(()),
    }
}

pub async fn create(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Body(body): Body<CreateProvider>,
) -> Result<(StatusCode, Json<ProviderBody>), ApiError> {
    tenant_wide(&principal)?;
    let tenant_id = state.tenant_of(&principal, body.tenant_id.as_ref()).await?;
    if body.issuer == state.auth.authority.config().issuer {
        return Err(ApiError::bad_request("invalid_issuer", "this issuer is LicenseSeal's own Authority"));
    }
    let spec = ProviderSpec {
        issuer: body.issuer,
        jwks_uri: body.jwks_uri,
        audiences: body.audiences,
        algorithms: body.algorithms,
        subject_claim: body.subject_claim,
        scope_claim: body.scope_claim,
        leeway_seconds: body.leeway_seconds,
        required_claims: body.required_claims,
    };
    let record = spec
        .validate(tenant_id, &state.config.providers, state.clock.now())
        .map_err(|e| ApiError::bad_request("invalid_provider", e.0))?;
    state.store.insert_identity_provider(record.clone()).await.map_err(|e| match e {
        StoreError::Conflict(_) => ApiError::Conflict {
            code: "issuer_taken",
            detail: "an identity provider with this issuer is already registered".into(),
        },
        other => other.into(),
    })?;
    state.auth.providers.invalidate(None);
    Ok((StatusCode::CREATED, Json(ProviderBody::new(record, None))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant_id: Option<TenantId>,
}

pub async fn list(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    tenant_wide(&principal)?;
    let tenant_id = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let providers = state.store.identity_providers(&tenant_id).await?;
    let data: Vec<ProviderBody> = providers.into_iter().map(|p| ProviderBody::new(p, None)).collect();
    Ok(Json(json!({ "data": data })))
}

/// A provider of the principal's tenant (operators name the tenant); anything else is "not found".
async fn owned(
    state: &AppState,
    principal: &Principal,
    named: Option<&TenantId>,
    id: &str,
) -> Result<IdentityProviderRecord, ApiError> {
    tenant_wide(principal)?;
    let tenant_id = state.tenant_of(principal, named).await?;
    let id = ProviderId::parse(id).map_err(|_| ApiError::NotFound("identity provider"))?;
    state.store.identity_provider(&tenant_id, &id).await?.ok_or(ApiError::NotFound("identity provider"))
}

/// One provider, with its JWKS cache counters.
pub async fn get(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Path(id): Path<String>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<ProviderBody>, ApiError> {
    let provider = owned(&state, &principal, query.tenant_id.as_ref(), &id).await?;
    let stats = state.auth.providers.stats(&provider.jwks_uri);
    let jwks = json!({
        "fetches": stats.fetches,
        "hits": stats.hits,
        "misses": stats.misses,
        "failures": stats.failures,
    });
    Ok(Json(ProviderBody::new(provider, Some(jwks))))
}

pub async fn delete(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Path(id): Path<String>,
    Query(query): Query<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    let provider = owned(&state, &principal, query.tenant_id.as_ref(), &id).await?;
    if !state.store.delete_identity_provider(&provider.tenant_id, &provider.id).await? {
        return Err(ApiError::NotFound("identity provider"));
    }
    state.auth.providers.invalidate(Some(&provider.jwks_uri));
    Ok(StatusCode::NO_CONTENT)
}
