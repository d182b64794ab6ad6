//! Accounts: balance, held and available credit, and the account's policy.

use axum::extract::{Path, State};
use axum::Json;
use licenseseal_ledger::{AccountKey, Amount, CreditType, Limit, SubjectId, TenantId, Timestamp};
use licenseseal_store::{AccountView, PolicyChange};
use serde::{Deserialize, Deserializer, Serialize};

use crate::extract::{subject_of, Authed, Json as Body, ManageAccounts, Query, Read};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountQuery {
    tenant_id: Option<TenantId>,
    credit_type: Option<CreditType>,
    as_of: Option<Timestamp>,
}

#[derive(Serialize)]
pub struct AccountBody {
    subject: SubjectId,
    credit_type: CreditType,
    balance: i64,
    held: i64,
    available: i64,
    /// Credit on expired lots that has not yet left through an expiration event; it is
    /// already excluded from `available`.
    expired_pending: i64,
    overdraft_limit: u64,
    max_debit_amount: Option<u64>,
    updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of: Option<Timestamp>,
}

impl AccountBody {
    fn new(view: AccountView, as_of: Option<Timestamp>) -> Self {
        AccountBody {
            subject: view.key.subject,
            credit_type: view.key.credit_type,
            balance: view.balance,
            held: view.held,
            available: view.available,
            expired_pending: view.expired_pending,
            overdraft_limit: view.policy.overdraft_limit,
            max_debit_amount: view.policy.max_debit_amount,
            updated_at: view.updated_at,
            as_of,
        }
    }
}

fn parse_subject(raw: &str) -> Result<SubjectId, ApiError> {
    SubjectId::parse(raw).map_err(|e| ApiError::bad_request("invalid_subject", e.to_string()))
}

pub async fn get(
    State(state): State<AppState>,
    Authed(principal, _): Authed<Read>,
    Path(subject): Path<String>,
    Query(query): Query<AccountQuery>,
) -> Result<Json<AccountBody>, ApiError> {
    let subject = subject_of(&principal, Some(&parse_subject(&subject)?))?;
    let tenant_id = state.tenant_of(&principal, query.tenant_id.as_ref()).await?;
    let key = AccountKey { tenant_id, subject, credit_type: query.credit_type.unwrap_or_default() };
    let view = state.store.account(&key, query.as_of).await?.ok_or(ApiError::NotFound("account"))?;
    Ok(Json(AccountBody::new(view, query.as_of)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    tenant_id: Option<TenantId>,
    credit_type: Option<CreditType>,
    overdraft_limit: Option<Limit>,
    /// Absent: unchanged; `null`: no limit; a number: the limit.
    #[serde(default, deserialize_with = "present")]
    max_debit_amount: Option<Option<Amount>>,
}

/// Distinguishes a field set to `null` from an absent one.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Amount>>, D::Error> {
    Option::<Amount>::deserialize(d).map(Some)
}

pub async fn patch(
    State(state): State<AppState>,
    Authed(principal, _): Authed<ManageAccounts>,
    Path(subject): Path<String>,
    Body(body): Body<PolicyBody>,
) -> Result<Json<AccountBody>, ApiError> {
    let subject = parse_subject(&subject)?;
    let subject = subject_of(&principal, Some(&subject))?;
    if body.overdraft_limit.is_none() && body.max_debit_amount.is_none() {
        return Err(ApiError::bad_request("empty_change", "set overdraft_limit and/or max_debit_amount"));
    }
    let tenant_id = state.tenant_of(&principal, body.tenant_id.as_ref()).await?;
    let key = AccountKey { tenant_id, subject, credit_type: body.credit_type.unwrap_or_default() };
    let change = PolicyChange {
        overdraft_limit: body.overdraft_limit.map(Limit::get),
        max_debit_amount: body.max_debit_amount.map(|m| m.map(Amount::get)),
    };
    let view = state.store.set_policy(key, change).await?;
    Ok(Json(AccountBody::new(view, None)))
}
