//! Ledger events: immutable records of every credit movement.

use serde::{Deserialize, Serialize};

use crate::{CreditType, EventId, SubjectId, TenantId, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Grant,
    Debit,
    Refund,
    Adjustment,
    Hold,
    Capture,
    Release,
    Expiration,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Grant => "grant",
            EventKind::Debit => "debit",
            EventKind::Refund => "refund",
            EventKind::Adjustment => "adjustment",
            EventKind::Hold => "hold",
            EventKind::Capture => "capture",
            EventKind::Release => "release",
            EventKind::Expiration => "expiration",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            EventKind::Grant,
            EventKind::Debit,
            EventKind::Refund,
            EventKind::Adjustment,
            EventKind::Hold,
            EventKind::Capture,
            EventKind::Release,
            EventKind::Expiration,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Which lot a movement drew from or returned to; `lot_id: None` is the overdraft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub lot_id: Option<EventId>,
    pub amount: u64,
}

/// One immutable ledger entry. `amount` is the magnitude, `delta` the signed effect on the
/// balance, `balance_after` the account balance once it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    #[serde(default, skip_serializing)]
    pub tenant_id: Option<TenantId>,
    pub kind: EventKind,
    pub subject: SubjectId,
    pub credit_type: CreditType,
    pub amount: u64,
    pub delta: i64,
    pub balance_after: i64,
    pub correlation_id: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_of: Option<EventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<Allocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}
