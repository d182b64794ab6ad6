//! Encodings shared by both backends: an event's JSON body, scope lists, string lists, and
//! stored ids.

use licenseseal_ledger::{Event, IdError, Scopes, TenantId};

use crate::StoreError;

pub(crate) fn corrupt(what: &str) -> impl Fn(IdError) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

/// The stored form of an event (everything but the tenant, which is a column).
pub(crate) fn event_body(event: &Event) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|e| StoreError::Corrupt(format!("event encode: {e}")))
}

pub(crate) fn event_from_row(tenant: &str, body: &str) -> Result<Event, StoreError> {
    let mut event: Event = serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("event body: {e}")))?;
    event.tenant_id = Some(TenantId::parse(tenant).map_err(corrupt("event tenant"))?);
    Ok(event)
}

pub(crate) fn scopes_json(scopes: Scopes) -> String {
    serde_json::to_string(&scopes.names()).expect("scope names encode")
}

pub(crate) fn scopes_from_json(json: &str) -> Result<Scopes, StoreError> {
    let names: Vec<String> = serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("scopes: {e}")))?;
    Scopes::parse(names.iter().map(String::as_str)).map_err(|s| StoreError::Corrupt(format!("unknown scope {s}")))
}

/// A list of strings (audiences, algorithms, claim names) as stored: a JSON array.
pub(crate) fn strings_json(values: &[String]) -> String {
    serde_json::to_string(values).expect("strings encode")
}

pub(crate) fn strings_from_json(json: &str, what: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A stored request-idempotency row as a claim outcome: finished when it has a status.
pub(crate) fn request_claim(
    fingerprint: Vec<u8>,
    status: Option<i64>,
    body: Option<String>,
) -> Result<crate::RequestClaim, StoreError> {
    let fingerprint: [u8; 32] =
        fingerprint.try_into().map_err(|_| StoreError::Corrupt("request fingerprint length".into()))?;
    Ok(match (status, body) {
        (None, _) => crate::RequestClaim::InFlight { fingerprint },
        (Some(status), Some(body)) => crate::RequestClaim::Done {
            fingerprint,
            status: u16::try_from(status).map_err(|_| StoreError::Corrupt("request status".into()))?,
            body,
        },
        (Some(_), None) => return Err(StoreError::Corrupt("finished request without a body".into())),
    })
}
