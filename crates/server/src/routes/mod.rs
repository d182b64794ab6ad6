//! The route table. Each submodule holds the handlers of one resource.

mod accounts;
mod authority;
mod events;
mod health;
mod keys;
mod ledger;
mod providers;
mod signing_keys;
mod tenant_auth;
mod tenants;

use axum::routing::{delete, get, post};
use axum::Router;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/.well-known/jwks.json", get(authority::jwks))
        .route("/.well-known/openid-configuration", get(authority::discovery))
        .route("/v1/authority/token", post(authority::token))
        .route("/v1/authority/rotate", post(authority::rotate))
        .route("/v1/identity-providers", post(providers::create).get(providers::list))
        .route("/v1/identity-providers/{id}", get(providers::get).delete(providers::delete))
        .route("/v1/signing-keys", post(signing_keys::create).get(signing_keys::list))
        .route("/v1/signing-keys/{id}/rotate", post(signing_keys::rotate))
        .route("/v1/signing-keys/{id}/revoke", post(signing_keys::revoke))
        .route("/v1/tenant", get(tenant_auth::get).patch(tenant_auth::patch))
        .route("/v1/client-cas", post(tenant_auth::create_ca).get(tenant_auth::list_cas))
        .route("/v1/client-cas/{id}", delete(tenant_auth::delete_ca))
        .route("/v1/client-identities", post(tenant_auth::create_identity).get(tenant_auth::list_identities))
        .route("/v1/client-identities/{id}", delete(tenant_auth::delete_identity))
        .route("/v1/tenants", post(tenants::create))
        .route("/v1/api-keys", post(keys::create).get(keys::list))
        .route("/v1/api-keys/{id}/rotate", post(keys::rotate))
        .route("/v1/api-keys/{id}/revoke", post(keys::revoke))
        .route("/v1/grants", post(ledger::grant))
        .route("/v1/debits", post(ledger::debit))
        .route("/v1/refunds", post(ledger::refund))
        .route("/v1/adjustments", post(ledger::adjust))
        .route("/v1/accounts/{subject}", get(accounts::get).patch(accounts::patch))
        .route("/v1/events", get(events::list))
        .route("/v1/events/{id}", get(events::get))
}

/// A page size from the query: default when absent, 1..=max otherwise.
fn page_size(state: &AppState, limit: Option<u32>) -> Result<u32, crate::ApiError> {
    match limit {
        None => Ok(state.config.page_size_default),
        Some(n) if (1..=state.config.page_size_max).contains(&n) => Ok(n),
        Some(_) => Err(crate::ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {}", state.config.page_size_max),
        )),
    }
}
