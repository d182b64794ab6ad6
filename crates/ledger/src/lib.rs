//! The LicenseSeal ledger domain: typed ids and amounts, accounts and their lots, the rules
//! that decide every credit movement, and idempotency decisions.
//!
//! Architecture invariant: this crate does no I/O, spawns nothing, and never reads the clock
//! or a random source. Time and fresh ids are passed in, so the same inputs always give the
//! same decision, and both store backends share one implementation of the rules.

pub mod account;
pub mod amount;
pub mod command;
pub mod decide;
pub mod event;
pub mod idempotency;
pub mod ids;
pub mod scope;
pub mod time;

pub use account::{AccountKey, AccountPolicy, AccountState, Lot};
pub use amount::{Amount, AmountError, Limit, SignedAmount, AMOUNT_MAX};
pub use command::{Command, CommandKind};
pub use decide::{decide, sweep_expired, Context, DebitRecord, DecideError, Decision};
pub use event::{Allocation, Event, EventKind};
pub use idempotency::{Fingerprint, IdempotencyDecision, StoredOutcome};
pub use ids::{
    ClientCaId, ClientIdentityId, CreditType, EventId, IdError, IdempotencyKey, KeyId, ProviderId, SigningKeyId,
    SubjectId, TenantId,
};
pub use scope::{Intent, Scopes};
pub use time::Timestamp;

/// The result of a ledger command that reached the ledger. Both variants are stored under the
/// idempotency key and replayed verbatim: outcomes are sticky.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The command was applied; `event` is its main event. Boxed: an event is far larger
    /// than a refusal.
    Applied(Box<Applied>),
    /// The ledger refused the command; nothing but this outcome was written.
    Refused(Refusal),
}

/// A successful ledger write as reported to the caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub event: Event,
    /// Account balance right after the event (Σ deltas).
    pub balance: i64,
    /// `balance − held`, excluding credit that has expired but not yet been swept.
    pub available: i64,
}

/// Why the ledger refused a command. Closed set, ordered roughly by precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// `refund_of` names no event of this tenant.
    EventNotFound,
    /// `refund_of` names an event that is not a debit.
    NotADebit,
    /// A subject-bound principal referenced another subject's event.
    SubjectMismatch,
    /// The debit is larger than the account's `max_debit_amount`.
    MaxDebitAmountExceeded,
    /// `available − amount` would fall below `−overdraft_limit`.
    InsufficientCredits,
    /// The refund would take the refunded total above the debit's amount.
    RefundExceedsDebit,
    /// The resulting balance would leave the representable range.
    BalanceOverflow,
}

impl RefusalCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::EventNotFound => "event_not_found",
            RefusalCode::NotADebit => "not_a_debit",
            RefusalCode::SubjectMismatch => "event_not_found",
            RefusalCode::MaxDebitAmountExceeded => "max_debit_amount_exceeded",
            RefusalCode::InsufficientCredits => "insufficient_credits",
            RefusalCode::RefundExceedsDebit => "refund_exceeds_debit",
            RefusalCode::BalanceOverflow => "balance_overflow",
        }
    }
}

/// A ledger refusal with a detail that is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub detail: String,
    /// Balance and available at decision time, when an account was involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    /// The correlation id of the request that was refused (replays show the original).
    #[serde(default)]
    pub correlation_id: String,
}
