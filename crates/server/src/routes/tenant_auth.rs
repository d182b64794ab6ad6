//! A tenant's authentication setup: which methods it accepts and its mTLS hostname
//! (`PATCH /v1/tenant`), the CAs its client certificates chain to, and the rules mapping a
//! certificate to a principal. All of it is tenant-wide, so subject-bound principals cannot
//! change it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use licenseseal_auth::mtls::parse_ca_bundle;
use licenseseal_auth::{AuthMethod, Principal};
use licenseseal_ledger::{ClientCaId, ClientIdentityId, Scopes, SubjectId, TenantId, Timestamp};
use licenseseal_store::{ClientCaRecord, ClientIdentityRecord, StoreError, TenantSettings};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::extract::{Authed, Json as Body, ManageKeys, Query};
use crate::{ApiError, AppState};

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn tenant_wide(principal: &Principal, what: &'static str) -> Result<(), ApiError> {
    match principal.subject {
        Some(_) => Err(ApiError::forbidden(principal, what)),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    tenant_id: Option<TenantId>,
    #[serde(default, deserialize_with = "nullable")]
    auth_methods: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    mtls_hostname: Option<Option<String>>,
}

fn settings_body(tenant: &TenantId, s: &TenantSettings) -> Value {
    json!({ "tenant_id": tenant, "auth_methods": s.auth_methods, "mtls_hostname": s.mtls_hostname })
}

/// A DNS hostname: 1–253 characters, labels of letters, digits and inner hyphens.
fn valid_hostname(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `PATCH /v1/tenant`: the tenant's accepted authentication methods and mTLS hostname.
pub async fn patch(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Body(body): Body<PatchTenant>,
) -> Result<Json<Value>, ApiError> {
    tenant_wide(&principal, "change tenant settings")?;
    let tenant = state.tenant_of(&principal, body.tenant_id.as_ref()).await?;
    let mut settings = state.store.tenant_settings(&tenant).await?;
    if let Some(methods) = body.auth_methods {
        settings.auth_methods = match methods {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err(ApiError::bad_request(
                        "invalid_auth_methods",
                        "auth_methods must name at least one method",
                    ));
                }
                let mut names = Vec::new();
                for name in &list {
                    let method = AuthMethod::parse(name).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_auth_methods",
                            format!("unknown method {name:?}; use api_key, authority_token, idp_token, http_signature or mtls"),
                        )
                    })?;
                    if !names.contains(&method.as_str().to_owned()) {
                        names.push(method.as_str().to_owned());
                    }
                }
                Some(names)
            }
        };
    }
    if let Some(hostname) = body.mtls_hostname {
        settings.mtls_hostname = match hostname {
            None => None,
            Some(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !valid_hostname(&name) {
                    return Err(ApiError::bad_request("invalid_mtls_hostname", "mtls_hostname must be a DNS hostname"));
                }
                Some(name)
            }
        };
    }
    state.store.set_tenant_settings(&tenant, settings.clone()).await.map_err(|e| match e {
        StoreError::Conflict(_) => ApiError::Conflict {
            code: "mtls_hostname_taken",
            detail: "this mtls_hostname is bound to another tenant".into(),
        },
        other => other.into(),
    })?;
    state.auth.invalidate_settings();
    Ok(Json(settings_body(&tenant, &settings)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant_id: Option<TenantId>,
}

pub async fn get(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let settings = state.store.tenant_settings(&tenant).await?;
    Ok(Json(settings_body(&tenant, &settings)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCa {
    tenant_id: Option<TenantId>,
    pem: String,
}

#[derive(Serialize)]
pub struct CaBody {
    id: ClientCaId,
    tenant_id: TenantId,
    fingerprint_sha256: String,
    pem: String,
    created_at: Timestamp,
}

impl From<ClientCaRecord> for CaBody {
    fn from(r: ClientCaRecord) -> Self {
        CaBody {
            id: r.id,
            tenant_id: r.tenant_id,
            fingerprint_sha256: r.fingerprint_sha256,
            pem: r.pem,
            created_at: r.created_at,
        }
    }
}

/// `POST /v1/client-cas`: a trust anchor for the tenant's client certificates. A bundle that
/// does not parse as CA certificates is refused, never silently ignored.
pub async fn create_ca(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Body(body): Body<CreateCa>,
) -> Result<(StatusCode, Json<CaBody>), ApiError> {
    tenant_wide(&principal, "manage client CAs")?;
    let tenant = state.tenant_of(&principal, body.tenant_id.as_ref()).await?;
    let certs = parse_ca_bundle(&body.pem).map_err(|e| ApiError::bad_request("invalid_ca", e.to_string()))?;
    let record = ClientCaRecord {
        id: ClientCaId::from_uuid(uuid::Uuid::now_v7()),
        tenant_id: tenant,
        pem: body.pem,
        fingerprint_sha256: certs[0].1.clone(),
        created_at: state.clock.now(),
    };
    state.store.insert_client_ca(record.clone()).await.map_err(|e| match e {
        StoreError::Conflict(_) => {
            ApiError::Conflict { code: "ca_exists", detail: "this CA certificate is already registered".into() }
        }
        other => other.into(),
    })?;
    state.auth.invalidate_settings();
    Ok((StatusCode::CREATED, Json(record.into())))
}

pub async fn list_cas(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    tenant_wide(&principal, "manage client CAs")?;
    let tenant = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let data: Vec<CaBody> = state.store.client_cas(&tenant).await?.into_iter().map(CaBody::from).collect();
    Ok(Json(json!({ "data": data })))
}

pub async fn delete_ca(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Path(id): Path<String>,
    Query(query): Query<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    tenant_wide(&principal, "manage client CAs")?;
    let tenant = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let id = ClientCaId::parse(&id).map_err(|_| ApiError::NotFound("client CA"))?;
    if !state.store.delete_client_ca(&tenant, &id).await? {
        return Err(ApiError::NotFound("client CA"));
    }
    state.auth.invalidate_settings();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIdentity {
    tenant_id: Option<TenantId>,
    fingerprint_sha256: Option<String>,
    san_uri: Option<String>,
    san_dns: Option<String>,
    subject: Option<SubjectId>,
    scopes: Scopes,
}

#[derive(Serialize)]
pub struct IdentityBody {
    id: ClientIdentityId,
    tenant_id: TenantId,
    fingerprint_sha256: Option<String>,
    san_uri: Option<String>,
    san_dns: Option<String>,
    subject: Option<SubjectId>,
    scopes: Scopes,
    created_at: Timestamp,
}

impl From<ClientIdentityRecord> for IdentityBody {
    fn from(r: ClientIdentityRecord) -> Self {
        IdentityBody {
            id: r.id,
            tenant_id: r.tenant_id,
            fingerprint_sha256: r.fingerprint_sha256,
            san_uri: r.san_uri,
            san_dns: r.san_dns,
            subject: r.subject,
            scopes: r.scopes,
            created_at: r.created_at,
        }
    }
}

/// `POST /v1/client-identities`: exactly one matcher (a fingerprint, a URI SAN or a DNS SAN)
/// mapped to scopes and an optional subject. A principal can only hand out what it holds.
pub async fn create_identity(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Body(body): Body<CreateIdentity>,
) -> Result<(StatusCode, Json<IdentityBody>), ApiError> {
    tenant_wide(&principal, "manage client identities")?;
    let tenant = state.tenant_of(&principal, body.tenant_id.as_ref()).await?;
    let matchers = [&body.fingerprint_sha256, &body.san_uri, &body.san_dns].iter().filter(|m| m.is_some()).count();
    if matchers != 1 {
        return Err(ApiError::bad_request(
            "invalid_identity",
            "name exactly one of fingerprint_sha256, san_uri, san_dns",
        ));
    }
    let fingerprint = match body.fingerprint_sha256 {
        Some(fp) => {
            let fp = fp.replace(':', "").to_ascii_lowercase();
            if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::bad_request("invalid_identity", "fingerprint_sha256 must be 64 hex digits"));
            }
            Some(fp)
        }
        None => None,
    };
    let text_ok = |s: &String| !s.is_empty() && s.len() <= 2048 && !s.chars().any(char::is_control);
    if body.san_uri.as_ref().is_some_and(|s| !text_ok(s)) || body.san_dns.as_ref().is_some_and(|s| !text_ok(s)) {
        return Err(ApiError::bad_request("invalid_identity", "SAN values must be 1–2048 printable characters"));
    }
    if body.scopes.is_empty() {
        return Err(ApiError::bad_request("invalid_scopes", "scopes must name at least one intent"));
    }
    if !principal.is_operator() && !body.scopes.is_subset_of(principal.scopes) {
        return Err(ApiError::forbidden(&principal, "grant scopes wider than its own"));
    }
    let record = ClientIdentityRecord {
        id: ClientIdentityId::from_uuid(uuid::Uuid::now_v7()),
        tenant_id: tenant,
        fingerprint_sha256: fingerprint,
        san_uri: body.san_uri,
        san_dns: body.san_dns.map(|d| d.to_ascii_lowercase()),
        subject: body.subject,
        scopes: body.scopes,
        created_at: state.clock.now(),
    };
    state.store.insert_client_identity(record.clone()).await.map_err(|e| match e {
        StoreError::Conflict(_) => {
            ApiError::Conflict { code: "identity_exists", detail: "a rule with this matcher already exists".into() }
        }
        other => other.into(),
    })?;
    state.auth.invalidate_settings();
    Ok((StatusCode::CREATED, Json(record.into())))
}

pub async fn list_identities(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    tenant_wide(&principal, "manage client identities")?;
    let tenant = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let data: Vec<IdentityBody> =
        state.store.client_identities(&tenant).await?.into_iter().map(IdentityBody::from).collect();
    Ok(Json(json!({ "data": data })))
}

pub async fn delete_identity(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageKeys>,
    Path(id): Path<String>,
    Query(query): Query<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    tenant_wide(&principal, "manage client identities")?;
    let tenant = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let id = ClientIdentityId::parse(&id).map_err(|_| ApiError::NotFound("client identity"))?;
    if !state.store.delete_client_identity(&tenant, &id).await? {
        return Err(ApiError::NotFound("client identity"));
    }
    state.auth.invalidate_settings();
    Ok(StatusCode::NO_CONTENT)
}
