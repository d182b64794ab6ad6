//! The one place where a backend hands a loaded account to the ledger core: sweep expired
//! lots, decide, and check the result before anything is written. Both backends call it.

use std::panic::AssertUnwindSafe;

use licenseseal_ledger::{
    decide, sweep_expired, AccountKey, AccountState, Command, CommandKind, Context, DebitRecord, Event, EventId,
    EventKind, Lot, Outcome, Refusal, RefusalCode, Timestamp,
};

use crate::StoreError;

/// What one command does to one account.
pub(crate) struct Applied {
    pub state: AccountState,
    pub events: Vec<Event>,
    pub outcome: Outcome,
}

/// Decides `cmd` on `state` at `now`. A broken ledger invariant (a panic in the core, or a
/// balance that is not the sum of the deltas) becomes an error, so the operation is rolled
/// back instead of committed.
pub(crate) fn apply(
    key: &AccountKey,
    state: &AccountState,
    cmd: &Command,
    debit: Option<&DebitRecord>,
    now: Timestamp,
) -> Result<Applied, StoreError> {
    let decided = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut next_id = || EventId::from_uuid(uuid::Uuid::now_v7());
        let mut ctx = Context { key, now, correlation_id: &cmd.correlation_id, next_id: &mut next_id };
        let mut swept = state.clone();
        let mut events = sweep_expired(&mut swept, &mut ctx);
        decide(&cmd.kind, &swept, debit, &mut ctx).map(|d| {
            events.extend(d.events);
            Applied { state: d.state, events, outcome: d.outcome }
        })
    }));
    let applied = match decided {
        Ok(result) => result?,
        Err(_) => return Err(StoreError::Corrupt("ledger invariant violated; operation rolled back".into())),
    };
    let moved: i64 = applied.events.iter().map(|e| e.delta).sum();
    if state.balance.checked_add(moved) != Some(applied.state.balance) {
        return Err(StoreError::Corrupt("balance does not equal the sum of event deltas".into()));
    }
    Ok(applied)
}

/// The account a command acts on. A refund finds it through its debit (`refunded`, the debit
/// loaded by id for the command's tenant, if any; `refunded` is left 0 for the caller to
/// fill); naming no debit of this tenant is a refusal, stored like any other outcome.
pub(crate) fn target(cmd: &Command, refunded: Option<&Event>) -> Result<(AccountKey, Option<DebitRecord>), Refusal> {
    let refuse = |code, detail: &str| Refusal {
        code,
        detail: detail.to_owned(),
        available: None,
        correlation_id: cmd.correlation_id.clone(),
    };
    let (subject, credit_type, debit) = match (&cmd.kind, refunded) {
        (CommandKind::Refund { .. }, Some(event)) if event.tenant_id.as_ref() == Some(&cmd.tenant_id) => {
            if event.kind != EventKind::Debit {
                return Err(refuse(RefusalCode::NotADebit, "refund_of must name a debit event"));
            }
            let debit = DebitRecord { event: event.clone(), refunded: 0 };
            (event.subject.clone(), event.credit_type.clone(), Some(debit))
        }
        (CommandKind::Refund { .. }, _) => {
            return Err(refuse(RefusalCode::EventNotFound, "refund_of names no event of this tenant"))
        }
        (kind, _) => {
            let (subject, credit_type) = kind.account().expect("non-refund commands name their account");
            (subject.clone(), credit_type.clone(), None)
        }
    };
    Ok((AccountKey { tenant_id: cmd.tenant_id.clone(), subject, credit_type }, debit))
}

/// The lots of `after` whose remaining credit differs from `before` (new lots included).
pub(crate) fn changed_lots<'a>(before: &'a AccountState, after: &'a AccountState) -> impl Iterator<Item = &'a Lot> {
    after.lots.iter().filter(|lot| !before.lots.iter().any(|b| b.id == lot.id && b.remaining == lot.remaining))
}
