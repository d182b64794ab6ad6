//! Accounts and their lots, as loaded by a store for the core to decide on.

use serde::{Deserialize, Serialize};

use crate::{CreditType, EventId, SubjectId, TenantId, Timestamp};

/// An account is (tenant, subject, credit_type).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    pub tenant_id: TenantId,
    pub subject: SubjectId,
    pub credit_type: CreditType,
}

/// Per-account policy set through `PATCH /v1/accounts/{subject}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccountPolicy {
    /// How far below zero `available` may go. 0: no negative balances.
    pub overdraft_limit: u64,
    /// Largest single debit, when set.
    pub max_debit_amount: Option<u64>,
}

/// Credit added by a grant (or returned by a refund when its lot is gone), spent in burn order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    /// The id of the event that created the lot.
    pub id: EventId,
    pub priority: i32,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub remaining: u64,
}

impl Lot {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Burn order: priority ascending, then earliest expiry (never-expiring last), then
    /// oldest, then lot id.
    pub fn burn_order(&self) -> (i32, bool, i64, i64, &str) {
        let expiry = self.expires_at.map_or(i64::MAX, Timestamp::micros);
        (self.priority, self.expires_at.is_none(), expiry, self.created_at.micros(), self.id.as_str())
    }
}

/// What the core needs to know about an account to decide on it.
///
/// Invariant: `balance = Σ lot.remaining − debt` with `debt ≥ 0`, where `debt` is credit
/// drawn through the overdraft and not yet repaid. `lots` holds every lot with credit left
/// (and any drained lot a refund needs), so the debt is derivable and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountState {
    /// Σ deltas of the account's events.
    pub balance: i64,
    /// Credit reserved by open holds.
    pub held: i64,
    pub policy: AccountPolicy,
    pub lots: Vec<Lot>,
}

impl AccountState {
    /// Credit on lots, expired or not.
    pub fn lot_total(&self) -> i64 {
        self.lots.iter().map(|l| l.remaining as i64).sum()
    }

    /// Overdraft drawn and not yet repaid.
    pub fn debt(&self) -> i64 {
        self.lot_total() - self.balance
    }

    /// Credit on lots that have expired but not yet left through an expiration event.
    pub fn expired_unswept(&self, now: Timestamp) -> i64 {
        self.lots.iter().filter(|l| l.is_expired(now)).map(|l| l.remaining as i64).sum()
    }

    /// `balance − held`, never counting expired credit even before it is swept.
    pub fn available(&self, now: Timestamp) -> i64 {
        self.balance - self.held - self.expired_unswept(now)
    }

    /// Panics when the structural invariant is broken: a broken ledger must never commit.
    pub fn assert_invariants(&self) {
        assert!(self.debt() >= 0, "ledger invariant: lots exceed balance by a negative debt: {self:?}");
        assert!(self.held >= 0, "ledger invariant: negative held amount: {self:?}");
    }
}
