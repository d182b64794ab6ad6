//! Tenants: created by operators only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use licenseseal_ledger::TenantId;
use licenseseal_store::Tenant;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::extract::{Authed, Json as Body, ManageTenants};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
}

pub async fn create(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageTenants>,
    Body(body): Body<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !principal.is_operator() {
        return Err(ApiError::forbidden(&principal, "manage tenants (operator credentials only)"));
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_name", "name must be 1–200 printable characters"));
    }
    let tenant =
        Tenant { id: TenantId::from_uuid(uuid::Uuid::now_v7()), name: name.to_owned(), created_at: state.clock.now() };
    state.store.create_tenant(tenant.clone()).await?;
    let body = json!({ "id": tenant.id, "name": tenant.name, "created_at": tenant.created_at });
    Ok((StatusCode::CREATED, Json(body)))
}
