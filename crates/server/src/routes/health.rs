//! Liveness and readiness.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::extract::Anonymous;
use crate::{ApiError, AppState};

pub async fn healthz(_: Anonymous) -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers a round trip within a second.
pub async fn readyz(_: Anonymous, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => Err(ApiError::Store(licenseseal_store::StoreError::Unavailable(e.to_string()))),
        Err(_) => Err(ApiError::Store(licenseseal_store::StoreError::Unavailable("ping timed out".into()))),
    }
}
