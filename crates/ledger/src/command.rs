//! Ledger commands: validated requests that reach the ledger.

use crate::{Amount, CreditType, EventId, Fingerprint, IdempotencyKey, SignedAmount, SubjectId, TenantId, Timestamp};

/// One ledger write with everything needed to decide it and to recognise a retry.
#[derive(Debug, Clone)]
pub struct Command {
    pub tenant_id: TenantId,
    pub idempotency_key: IdempotencyKey,
    /// Hash of the canonical request; a key reused with another fingerprint is refused.
    pub fingerprint: Fingerprint,
    pub correlation_id: String,
    pub kind: CommandKind,
}

#[derive(Debug, Clone)]
pub enum CommandKind {
    Grant {
        subject: SubjectId,
        credit_type: CreditType,
        amount: Amount,
        priority: i32,
        expires_at: Option<Timestamp>,
        metadata: Option<serde_json::Value>,
    },
    Debit {
        subject: SubjectId,
        credit_type: CreditType,
        amount: Amount,
        metadata: Option<serde_json::Value>,
    },
    Refund {
        refund_of: EventId,
        /// Default: the unrefunded rest of the debit.
        amount: Option<Amount>,
        /// A subject-bound principal may refund only its own subject's debits.
        bound_subject: Option<SubjectId>,
        metadata: Option<serde_json::Value>,
    },
    Adjust {
        subject: SubjectId,
        credit_type: CreditType,
        amount: SignedAmount,
        reason: String,
        metadata: Option<serde_json::Value>,
    },
}

impl CommandKind {
    /// The account this command acts on, when it names one directly (refunds find theirs
    /// through the debit they reference).
    pub fn account(&self) -> Option<(&SubjectId, &CreditType)> {
        match self {
            CommandKind::Grant { subject, credit_type, .. }
            | CommandKind::Debit { subject, credit_type, .. }
            | CommandKind::Adjust { subject, credit_type, .. } => Some((subject, credit_type)),
            CommandKind::Refund { .. } => None,
        }
    }
}
