//! API key management: create (the secret is shown once), list (never secrets), rotate with a
//! grace period, revoke. A tenant principal can never mint a key wider than itself.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use licenseseal_auth::{ApiKeys, Principal};
use licenseseal_ledger::{Intent, KeyId, Scopes, SubjectId, TenantId, Timestamp};
use licenseseal_store::ApiKeyRecord;
use serde::{Deserialize, Serialize};

use crate::extract::{Authed, Json as Body, ManageKeys, NoFields, OptionalJson, Query};
use crate::{ApiError, AppState};

/// Longest rotation grace period: 30 days.
const GRACE_SECONDS_MAX: u32 = 30 * 24 * 3600;

#[derive(Serialize)]
pub struct KeyBody {
    id: KeyId,
    /// The plaintext key: present only in the response that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    prefix: String,
    name: String,
    tenant_id: Option<TenantId>,
    scopes: Scopes,
    subject: Option<SubjectId>,
    expires_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
    created_at: Timestamp,
    last_used_at: Option<Timestamp>,
    rotated_from: Option<KeyId>,
}

impl KeyBody {
    fn new(record: ApiKeyRecord, secret: Option<String>) -> Self {
        KeyBody {
            id: record.id,
            key: secret,
            prefix: record.prefix,
            name: record.name,
            tenant_id: record.tenant_id,
            scopes: record.scopes,
            subject: record.subject,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            created_at: record.created_at,
            last_used_at: record.last_used_at,
            rotated_from: record.rotated_from,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    tenant_id: Option<TenantId>,
    name: String,
    scopes: Scopes,
    subject: Option<SubjectId>,
    expires_at: Option<Timestamp>,
}

/// A tenant principal may only hand out what it holds itself.
fn check_no_widening(principal: &Principal, scopes: Scopes, subject: Option<&SubjectId>) -> Result<(), ApiError> {
    if principal.is_operator() {
        return Ok(());
    }
    if !scopes.is_subset_of(principal.scopes) {
        return Err(ApiError::forbidden(principal, "grant scopes wider than its own"));
    }
    match (&principal.subject, subject) {
        (Some(bound), Some(s)) if bound == s => Ok(()),
        (Some(_), _) => Err(ApiError::forbidden(principal, "manage keys of other subjects")),
        (None, _) => Ok(()),
    }
}

pub async fn create(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Body(body): Body<CreateKey>,
) -> Result<(StatusCode, Json<KeyBody>), ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_name", "name must be 1–200 printable characters"));
    }
    if body.scopes.is_empty() {
        return Err(ApiError::bad_request("invalid_scopes", "scopes must name at least one intent"));
    }
    // A tenant key can never create tenants: naming that scope alone would mint a useless key.
    if body.scopes.allows(Intent::TenantsManage) && body.scopes != Scopes::all() {
        return Err(ApiError::bad_request("invalid_scopes", "tenants.manage belongs to operator keys only"));
    }
    let now = state.clock.now();
    if body.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::bad_request("invalid_expires_at", "expires_at must be in the future"));
    }
    let subject = body.subject.or_else(|| principal.subject.clone());
    check_no_widening(&principal, body.scopes, subject.as_ref())?;
    let tenant_id = state.tenant_of(&principal, body.tenant_id.as_ref()).await?;
    let generated = ApiKeys::generate();
    let record = generated.record(Some(tenant_id), name, body.scopes, subject, body.expires_at, now);
    state.store.insert_api_key(record.clone()).await?;
    Ok((StatusCode::CREATED, Json(KeyBody::new(record, Some(generated.secret)))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListKeys {
    tenant_id: Option<TenantId>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub struct KeyPage {
    data: Vec<KeyBody>,
    next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Query(query): Query<ListKeys>,
) -> Result<Json<KeyPage>, ApiError> {
    let limit = super::page_size(&state, query.limit)?;
    let tenant_id = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let scope = format!("api-keys|{tenant_id}");
    let page = state.cursors.page(query.cursor.as_deref(), limit, &scope)?;
    let rows = state.store.api_keys(Some(&tenant_id), page).await?;
    let next_cursor = state.cursors.next(&rows, page, &scope);
    let data = rows
        .into_iter()
        .filter(|(_, k)| principal.subject.is_none() || k.subject == principal.subject)
        .map(|(_, k)| KeyBody::new(k, None))
        .collect();
    Ok(Json(KeyPage { data, next_cursor }))
}

/// Finds a key the principal may manage; anything else is "not found".
async fn managed_key(state: &AppState, principal: &Principal, id: &str) -> Result<ApiKeyRecord, ApiError> {
    let id = KeyId::parse(id).map_err(|_| ApiError::NotFound("api key"))?;
    let record = state.store.api_key(&id).await?.ok_or(ApiError::NotFound("api key"))?;
    let visible = principal.is_operator()
        || (record.tenant_id == principal.tenant_id
            && (principal.subject.is_none() || record.subject == principal.subject));
    if !visible {
        return Err(ApiError::NotFound("api key"));
    }
    check_no_widening(principal, record.scopes, record.subject.as_ref())?;
    Ok(record)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    grace_seconds: Option<u32>,
}

pub async fn rotate(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<RotateBody>,
) -> Result<(StatusCode, Json<KeyBody>), ApiError> {
    let grace = body.grace_seconds.unwrap_or(0);
    if grace > GRACE_SECONDS_MAX {
        return Err(ApiError::bad_request(
            "invalid_grace_seconds",
            format!("grace_seconds must be at most {GRACE_SECONDS_MAX}"),
        ));
    }
    let old = managed_key(&state, &principal, &id).await?;
    let now = state.clock.now();
    if !old.is_active(now) {
        return Err(ApiError::Unprocessable { code: "key_inactive", detail: "the key is revoked or expired".into() });
    }
    let generated = ApiKeys::generate();
    let mut record =
        generated.record(old.tenant_id.clone(), old.name.clone(), old.scopes, old.subject.clone(), old.expires_at, now);
    record.rotated_from = Some(old.id.clone());
    // The store allows one successor per key, so concurrent rotations produce exactly one.
    state.store.insert_api_key(record.clone()).await.map_err(|e| match e {
        licenseseal_store::StoreError::Conflict(_) => ApiError::Conflict {
            code: "key_already_rotated",
            detail: "this key was already rotated; rotate its successor instead".into(),
        },
        other => other.into(),
    })?;
    state.store.retire_api_key(&old.id, now.plus_seconds(i64::from(grace)), false).await?;
    state.auth.keys.invalidate();
    Ok((StatusCode::CREATED, Json(KeyBody::new(record, Some(generated.secret)))))
}

pub async fn revoke(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Path(id): Path<String>,
    OptionalJson(_): OptionalJson<NoFields>,
) -> Result<Json<KeyBody>, ApiError> {
    let key = managed_key(&state, &principal, &id).await?;
    state.store.retire_api_key(&key.id, state.clock.now(), true).await?;
    state.auth.keys.invalidate();
    let key = state.store.api_key(&key.id).await?.ok_or(ApiError::NotFound("api key"))?;
    Ok(Json(KeyBody::new(key, None)))
}
