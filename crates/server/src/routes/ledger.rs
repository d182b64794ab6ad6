//! Ledger writes: grants, debits, refunds and adjustments. Each handler validates, resolves
//! tenant and subject from the principal, builds a `Command` with the request's fingerprint
//! and hands it to the store; the ledger core decides.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use licenseseal_auth::Principal;
use licenseseal_ledger::{
    Amount, Applied, Command, CommandKind, CreditType, Event, EventId, Fingerprint, Outcome, SignedAmount, SubjectId,
    TenantId, Timestamp,
};
use licenseseal_store::Execution;
use serde::{Deserialize, Serialize};

use crate::extract::{subject_of, Adjust, Authed, CorrelationId, Debit, Grant, Idempotency, Json, Refund};
use crate::{ApiError, AppState};

/// Free-form caller data kept on the event: a JSON object of at most 4 KiB.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Metadata(serde_json::Value);

impl Metadata {
    const BYTES_MAX: usize = 4096;
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        if !value.is_object() {
            return Err(serde::de::Error::custom("metadata must be a JSON object"));
        }
        if serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len()) > Metadata::BYTES_MAX {
            return Err(serde::de::Error::custom("metadata must be at most 4096 bytes"));
        }
        Ok(Metadata(value))
    }
}

fn metadata(m: &Option<Metadata>) -> Option<serde_json::Value> {
    m.as_ref().map(|m| m.0.clone())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    tenant_id: Option<TenantId>,
    subject: Option<SubjectId>,
    amount: Amount,
    credit_type: Option<CreditType>,
    priority: Option<i32>,
    expires_at: Option<Timestamp>,
    metadata: Option<Metadata>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitBody {
    tenant_id: Option<TenantId>,
    subject: Option<SubjectId>,
    amount: Amount,
    credit_type: Option<CreditType>,
    metadata: Option<Metadata>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    tenant_id: Option<TenantId>,
    refund_of: EventId,
    amount: Option<Amount>,
    metadata: Option<Metadata>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustBody {
    tenant_id: Option<TenantId>,
    subject: Option<SubjectId>,
    amount: SignedAmount,
    reason: String,
    credit_type: Option<CreditType>,
    metadata: Option<Metadata>,
}

/// What every ledger write needs besides its kind.
struct Envelope {
    tenant_id: TenantId,
    principal: Principal,
    idempotency: Idempotency,
    correlation_id: CorrelationId,
}

impl Envelope {
    /// The fingerprint covers the method, the path and the body as resolved (tenant, subject
    /// and credit type filled in), so two spellings of one request match and a bound subject
    /// is part of the request.
    fn command(self, path: &str, canonical: &impl Serialize, kind: CommandKind) -> Command {
        let body = serde_json::to_vec(canonical).expect("request bodies serialise");
        let bound = self.principal.subject.as_ref().map_or("", |s| s.as_str());
        Command {
            tenant_id: self.tenant_id,
            idempotency_key: self.idempotency.0,
            fingerprint: Fingerprint::of(&[b"POST", path.as_bytes(), &body, bound.as_bytes()]),
            correlation_id: self.correlation_id.0,
            kind,
        }
    }
}

async fn envelope(
    state: &AppState,
    principal: Principal,
    named: Option<&TenantId>,
    idempotency: Idempotency,
    correlation_id: CorrelationId,
) -> Result<Envelope, ApiError> {
    let tenant_id = state.tenant_of(&principal, named).await?;
    Ok(Envelope { tenant_id, principal, idempotency, correlation_id })
}

fn future_expiry(state: &AppState, expires_at: Option<Timestamp>) -> Result<(), ApiError> {
    match expires_at {
        Some(at) if at <= state.clock.now() => {
            Err(ApiError::bad_request("invalid_expires_at", "expires_at must be in the future"))
        }
        _ => Ok(()),
    }
}

pub async fn grant(
    State(state): State<AppState>,
    Authed(principal, _): Authed<Grant>,
    correlation_id: CorrelationId,
    idempotency: Idempotency,
    Json(mut body): Json<GrantBody>,
) -> Result<Response, ApiError> {
    let subject = subject_of(&principal, body.subject.as_ref())?;
    future_expiry(&state, body.expires_at)?;
    let env = envelope(&state, principal, body.tenant_id.as_ref(), idempotency, correlation_id).await?;
    let credit_type = body.credit_type.take().unwrap_or_default();
    let priority = body.priority.unwrap_or(licenseseal_ledger::decide::DEFAULT_PRIORITY);
    let kind = CommandKind::Grant {
        subject: subject.clone(),
        credit_type: credit_type.clone(),
        amount: body.amount,
        priority,
        expires_at: body.expires_at,
        metadata: metadata(&body.metadata),
    };
    let canonical = GrantBody {
        tenant_id: Some(env.tenant_id.clone()),
        subject: Some(subject),
        credit_type: Some(credit_type),
        priority: Some(priority),
        ..body
    };
    execute(&state, env.command("/v1/grants", &canonical, kind)).await
}

pub async fn debit(
    State(state): State<AppState>,
    Authed(principal, _): Authed<Debit>,
    correlation_id: CorrelationId,
    idempotency: Idempotency,
    Json(mut body): Json<DebitBody>,
) -> Result<Response, ApiError> {
    let subject = subject_of(&principal, body.subject.as_ref())?;
    let env = envelope(&state, principal, body.tenant_id.as_ref(), idempotency, correlation_id).await?;
    let credit_type = body.credit_type.take().unwrap_or_default();
    let kind = CommandKind::Debit {
        subject: subject.clone(),
        credit_type: credit_type.clone(),
        amount: body.amount,
        metadata: metadata(&body.metadata),
    };
    let canonical = DebitBody {
        tenant_id: Some(env.tenant_id.clone()),
        subject: Some(subject),
        credit_type: Some(credit_type),
        ..body
    };
    execute(&state, env.command("/v1/debits", &canonical, kind)).await
}

pub async fn refund(
    State(state): State<AppState>,
    Authed(principal, _): Authed<Refund>,
    correlation_id: CorrelationId,
    idempotency: Idempotency,
    Json(body): Json<RefundBody>,
) -> Result<Response, ApiError> {
    let bound_subject = principal.subject.clone();
    let env = envelope(&state, principal, body.tenant_id.as_ref(), idempotency, correlation_id).await?;
    let kind = CommandKind::Refund {
        refund_of: body.refund_of.clone(),
        amount: body.amount,
        bound_subject,
        metadata: metadata(&body.metadata),
    };
    let canonical = RefundBody { tenant_id: Some(env.tenant_id.clone()), ..body };
    execute(&state, env.command("/v1/refunds", &canonical, kind)).await
}

pub async fn adjust(
    State(state): State<AppState>,
    Authed(principal, _): Authed<Adjust>,
    correlation_id: CorrelationId,
    idempotency: Idempotency,
    Json(mut body): Json<AdjustBody>,
) -> Result<Response, ApiError> {
    let subject = subject_of(&principal, body.subject.as_ref())?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_reason", "reason must be 1–500 printable characters"));
    }
    let reason = reason.to_owned();
    let env = envelope(&state, principal, body.tenant_id.as_ref(), idempotency, correlation_id).await?;
    let credit_type = body.credit_type.take().unwrap_or_default();
    let kind = CommandKind::Adjust {
        subject: subject.clone(),
        credit_type: credit_type.clone(),
        amount: body.amount,
        reason: reason.clone(),
        metadata: metadata(&body.metadata),
    };
    let canonical = AdjustBody {
        tenant_id: Some(env.tenant_id.clone()),
        subject: Some(subject),
        credit_type: Some(credit_type),
        reason,
        ..body
    };
    execute(&state, env.command("/v1/adjustments", &canonical, kind)).await
}

/// The body of a successful ledger write: the event, flattened, plus the account afterwards.
#[derive(Serialize)]
struct AppliedBody<'a> {
    event_id: &'a EventId,
    #[serde(flatten)]
    event: &'a Event,
    balance: i64,
    available: i64,
}

async fn execute(state: &AppState, command: Command) -> Result<Response, ApiError> {
    let (outcome, replayed) = match state.store.execute(command).await? {
        Execution::Fresh(outcome) => (outcome, false),
        Execution::Replayed(outcome) => (outcome, true),
        Execution::KeyReusedWithDifferentRequest => return Err(ApiError::KeyReused),
    };
    let mut response = match outcome {
        Outcome::Applied(applied) => {
            let Applied { event, balance, available } = *applied;
            let body = AppliedBody { event_id: &event.id, event: &event, balance, available };
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Outcome::Refused(refusal) => ApiError::Refused(refusal).into_response(),
    };
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}
