//! Reading the ledger: one event, or a filtered, cursor-paginated list in ledger order.

use axum::extract::{Path, State};
use axum::Json;
use licenseseal_ledger::{CreditType, Event, EventId, EventKind, SubjectId, TenantId, Timestamp};
use licenseseal_store::EventFilter;
use serde::{Deserialize, Serialize};

use crate::extract::{Authed, Query, Read};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant_id: Option<TenantId>,
}

pub async fn get(
    State(state): State<AppState>,
    Authed(principal, _): Authed<Read>,
    Path(id): Path<String>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Event>, ApiError> {
    let id = EventId::parse(&id).map_err(|_| ApiError::NotFound("event"))?;
    let tenant_id = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let event = state.store.event(&tenant_id, &id).await?.ok_or(ApiError::NotFound("event"))?;
    if principal.subject.as_ref().is_some_and(|bound| *bound != event.subject) {
        return Err(ApiError::NotFound("event"));
    }
    Ok(Json(event))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tenant_id: Option<TenantId>,
    subject: Option<SubjectId>,
    kind: Option<String>,
    credit_type: Option<CreditType>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub struct EventPage {
    data: Vec<Event>,
    next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Authed(principal, _): Authed<Read>,
    Query(query): Query<ListQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let kind = query
        .kind
        .as_deref()
        .map(|k| {
            EventKind::parse(k)
                .ok_or_else(|| ApiError::bad_request("invalid_kind", format!("unknown event kind {k:?}")))
        })
        .transpose()?;
    let subject = match (&principal.subject, query.subject) {
        (Some(bound), Some(named)) if *bound != named => {
            return Err(ApiError::forbidden(&principal, "act for this subject"))
        }
        (Some(bound), _) => Some(bound.clone()),
        (None, named) => named,
    };
    let limit = super::page_size(&state, query.limit)?;
    let tenant_id = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let filter = EventFilter { subject, kind, credit_type: query.credit_type, from: query.from, to: query.to };
    let scope = cursor_scope(&tenant_id, &filter);
    let page = state.cursors.page(query.cursor.as_deref(), limit, &scope)?;
    let rows = state.store.events(&tenant_id, &filter, page).await?;
    let next_cursor = state.cursors.next(&rows, page, &scope);
    Ok(Json(EventPage { data: rows.into_iter().map(|(_, e)| e).collect(), next_cursor }))
}

/// Binds a cursor to the tenant and the filter it was issued for.
fn cursor_scope(tenant: &TenantId, f: &EventFilter) -> String {
    format!(
        "events|{tenant}|{}|{}|{}|{}|{}",
        f.subject.as_ref().map_or("", |s| s.as_str()),
        f.kind.map_or("", EventKind::as_str),
        f.credit_type.as_ref().map_or("", |c| c.as_str()),
        f.from.map_or(String::new(), |t| t.micros().to_string()),
        f.to.map_or(String::new(), |t| t.micros().to_string()),
    )
}
