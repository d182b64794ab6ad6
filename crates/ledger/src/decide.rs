//! The rules. `decide` takes an account as loaded, a command and the current time, and
//! returns the account as it must be afterwards, the events to append and the outcome to
//! report. It never fails on a business condition: refusals are outcomes. `Err` means the
//! caller handed in something inconsistent (a store bug), never bad user input.

use crate::{
    AccountKey, AccountState, Allocation, Amount, Applied, CommandKind, Event, EventId, EventKind, Lot, Outcome,
    Refusal, RefusalCode, Timestamp,
};

/// Balances stay within ±(2^53 − 1), like amounts, so every JSON client reads them exactly
/// (and sums of lots and debts stay far from the `i64` range).
pub const BALANCE_LIMIT: i64 = crate::AMOUNT_MAX as i64;

/// Priority of lots created by positive adjustments and by refunds whose lot is gone.
pub const DEFAULT_PRIORITY: i32 = 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("refund command decided without its debit record")]
    MissingDebit,
    #[error("debit record {0} belongs to another account")]
    DebitAccountMismatch(String),
}

/// A debit named by a refund, with how much of it has been refunded so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebitRecord {
    pub event: Event,
    pub refunded: u64,
}

/// What the store must write: `state` replaces the account, `events` are appended in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub state: AccountState,
    pub events: Vec<Event>,
    pub outcome: Outcome,
}

/// Everything a decision needs besides the account and the command.
pub struct Context<'a> {
    pub key: &'a AccountKey,
    pub now: Timestamp,
    pub correlation_id: &'a str,
    /// Yields fresh, time-ordered event ids.
    pub next_id: &'a mut dyn FnMut() -> EventId,
}

/// Writes expiration events for every lot that has expired with credit left. Run before each
/// decision (and after a refund that returned credit to an expired lot).
pub fn sweep_expired(state: &mut AccountState, ctx: &mut Context<'_>) -> Vec<Event> {
    let mut events = Vec::new();
    let mut expired: Vec<usize> =
        (0..state.lots.len()).filter(|&i| state.lots[i].remaining > 0 && state.lots[i].is_expired(ctx.now)).collect();
    expired.sort_by(|&a, &b| state.lots[a].burn_order().cmp(&state.lots[b].burn_order()));
    for i in expired {
        let amount = std::mem::take(&mut state.lots[i].remaining);
        state.balance -= amount as i64;
        let lot_id = state.lots[i].id.clone();
        let mut event = new_event(ctx, EventKind::Expiration, amount, -(amount as i64), state.balance);
        event.allocations = vec![Allocation { lot_id: Some(lot_id), amount }];
        events.push(event);
    }
    state.assert_invariants();
    events
}

/// Decides one command against `state` (already swept). `debit` must be given for refunds.
pub fn decide(
    kind: &CommandKind,
    state: &AccountState,
    debit: Option<&DebitRecord>,
    ctx: &mut Context<'_>,
) -> Result<Decision, DecideError> {
    let mut next = state.clone();
    let result = match kind {
        CommandKind::Grant { amount, priority, expires_at, metadata, .. } => {
            grant(&mut next, ctx, *amount, *priority, *expires_at, metadata.clone())
        }
        CommandKind::Debit { amount, metadata, .. } => debit_lots(&mut next, ctx, *amount, metadata.clone()),
        CommandKind::Refund { amount, bound_subject, metadata, .. } => {
            let debit = debit.ok_or(DecideError::MissingDebit)?;
            if debit.event.subject != ctx.key.subject || debit.event.credit_type != ctx.key.credit_type {
                return Err(DecideError::DebitAccountMismatch(debit.event.id.to_string()));
            }
            if bound_subject.as_ref().is_some_and(|s| *s != debit.event.subject) {
                Err(refusal(RefusalCode::SubjectMismatch, "no such event", None))
            } else {
                refund(&mut next, ctx, debit, *amount, metadata.clone())
            }
        }
        CommandKind::Adjust { amount, reason, metadata, .. } => {
            adjust(&mut next, ctx, amount.get(), reason, metadata.clone())
        }
    };
    let decision = match result {
        Ok(mut events) => {
            events.extend(sweep_expired(&mut next, ctx));
            next.assert_invariants();
            debug_assert_eq!(
                events.iter().map(|e| e.delta).sum::<i64>(),
                next.balance - state.balance,
                "balance must move by exactly the events' deltas"
            );
            let applied =
                Applied { event: events[0].clone(), balance: next.balance, available: next.available(ctx.now) };
            Decision { state: next, events, outcome: Outcome::Applied(Box::new(applied)) }
        }
        Err(refused) => {
            let refused = Refusal { correlation_id: ctx.correlation_id.to_owned(), ..refused };
            Decision { state: state.clone(), events: Vec::new(), outcome: Outcome::Refused(refused) }
        }
    };
    Ok(decision)
}

fn refusal(code: RefusalCode, detail: impl Into<String>, available: Option<i64>) -> Refusal {
    Refusal { code, detail: detail.into(), available, correlation_id: String::new() }
}

fn new_event(ctx: &mut Context<'_>, kind: EventKind, amount: u64, delta: i64, balance_after: i64) -> Event {
    Event {
        id: (ctx.next_id)(),
        tenant_id: Some(ctx.key.tenant_id.clone()),
        kind,
        subject: ctx.key.subject.clone(),
        credit_type: ctx.key.credit_type.clone(),
        amount,
        delta,
        balance_after,
        correlation_id: ctx.correlation_id.to_owned(),
        created_at: ctx.now,
        refund_of: None,
        reason: None,
        priority: None,
        expires_at: None,
        allocations: Vec::new(),
        metadata: None,
    }
}

/// `balance + delta`, refused when it would leave ±`BALANCE_LIMIT`.
fn checked_balance(state: &AccountState, delta: i64) -> Result<i64, Refusal> {
    state
        .balance
        .checked_add(delta)
        .filter(|b| b.abs() <= BALANCE_LIMIT)
        .ok_or_else(|| refusal(RefusalCode::BalanceOverflow, "the resulting balance is out of range", None))
}

/// Adds credit: it first repays overdraft debt, the rest becomes a lot.
fn add_credit(state: &mut AccountState, lot: Lot, amount: u64) -> Vec<Allocation> {
    let repaid = (state.debt().max(0) as u64).min(amount);
    state.lots.push(Lot { remaining: amount - repaid, ..lot });
    if repaid > 0 {
        vec![Allocation { lot_id: None, amount: repaid }]
    } else {
        Vec::new()
    }
}

/// Takes `amount` from unexpired lots in burn order; what the lots cannot cover is drawn
/// through the overdraft and recorded as an allocation without a lot.
fn burn(state: &mut AccountState, now: Timestamp, amount: u64) -> Vec<Allocation> {
    let mut order: Vec<usize> =
        (0..state.lots.len()).filter(|&i| state.lots[i].remaining > 0 && !state.lots[i].is_expired(now)).collect();
    order.sort_by(|&a, &b| state.lots[a].burn_order().cmp(&state.lots[b].burn_order()));
    let mut left = amount;
    let mut allocations = Vec::new();
    for i in order {
        if left == 0 {
            break;
        }
        let lot = &mut state.lots[i];
        let take = lot.remaining.min(left);
        lot.remaining -= take;
        left -= take;
        allocations.push(Allocation { lot_id: Some(lot.id.clone()), amount: take });
    }
    if left > 0 {
        allocations.push(Allocation { lot_id: None, amount: left });
    }
    allocations
}

fn grant(
    state: &mut AccountState,
    ctx: &mut Context<'_>,
    amount: Amount,
    priority: i32,
    expires_at: Option<Timestamp>,
    metadata: Option<serde_json::Value>,
) -> Result<Vec<Event>, Refusal> {
    let balance = checked_balance(state, amount.as_i64())?;
    let mut event = new_event(ctx, EventKind::Grant, amount.get(), amount.as_i64(), balance);
    let lot = Lot { id: event.id.clone(), priority, expires_at, created_at: ctx.now, remaining: 0 };
    event.allocations = add_credit(state, lot, amount.get());
    state.balance = balance;
    event.priority = Some(priority);
    event.expires_at = expires_at;
    event.metadata = metadata;
    Ok(vec![event])
}

fn debit_lots(
    state: &mut AccountState,
    ctx: &mut Context<'_>,
    amount: Amount,
    metadata: Option<serde_json::Value>,
) -> Result<Vec<Event>, Refusal> {
    let available = state.available(ctx.now);
    if let Some(max) = state.policy.max_debit_amount {
        if amount.get() > max {
            let detail = format!("a single debit may not exceed {max} for this account");
            return Err(refusal(RefusalCode::MaxDebitAmountExceeded, detail, Some(available)));
        }
    }
    let floor = -(state.policy.overdraft_limit as i64);
    if available - amount.as_i64() < floor {
        let detail = format!("available credit is {available}, the debit needs {amount}");
        return Err(refusal(RefusalCode::InsufficientCredits, detail, Some(available)));
    }
    let balance = checked_balance(state, -amount.as_i64())?;
    let mut event = new_event(ctx, EventKind::Debit, amount.get(), -amount.as_i64(), balance);
    event.allocations = burn(state, ctx.now, amount.get());
    state.balance = balance;
    event.metadata = metadata;
    debug_assert!(state.available(ctx.now) >= floor, "a debit overspent the overdraft");
    Ok(vec![event])
}

fn refund(
    state: &mut AccountState,
    ctx: &mut Context<'_>,
    debit: &DebitRecord,
    amount: Option<Amount>,
    metadata: Option<serde_json::Value>,
) -> Result<Vec<Event>, Refusal> {
    let rest = debit.event.amount.saturating_sub(debit.refunded);
    let amount = amount.map_or(rest, Amount::get);
    if rest == 0 {
        return Err(refusal(RefusalCode::RefundExceedsDebit, "the debit has been refunded in full", None));
    }
    if amount > rest {
        let detail = format!("the debit has {rest} left to refund, {amount} was asked");
        return Err(refusal(RefusalCode::RefundExceedsDebit, detail, None));
    }
    let balance = checked_balance(state, amount as i64)?;
    // Reverse burn order: the overdraft part (drawn last) first, then lots last-drawn first.
    // The first `refunded` units of that order were returned by earlier refunds.
    let mut skip = debit.refunded;
    let mut left = amount;
    let mut returned = Vec::new();
    for alloc in debit.event.allocations.iter().rev() {
        let take_from = alloc.amount.saturating_sub(skip);
        skip = skip.saturating_sub(alloc.amount);
        let take = take_from.min(left);
        if take > 0 {
            returned.push(Allocation { lot_id: alloc.lot_id.clone(), amount: take });
            left -= take;
        }
    }
    debug_assert_eq!(left, 0, "debit allocations must cover the debit amount");
    let mut event = new_event(ctx, EventKind::Refund, amount, amount as i64, balance);
    let mut unplaced = left;
    for part in &returned {
        match part.lot_id.as_ref().and_then(|id| state.lots.iter_mut().find(|l| l.id == *id)) {
            Some(lot) => lot.remaining += part.amount,
            None if part.lot_id.is_none() => {
                // Overdraft part: repays debt; what the debt no longer needs becomes new credit.
                let repay = (state.debt().max(0) as u64).min(part.amount);
                state.balance += repay as i64;
                unplaced += part.amount - repay;
                continue;
            }
            None => unplaced += part.amount,
        }
        state.balance += part.amount as i64;
    }
    if unplaced > 0 {
        let lot = Lot {
            id: event.id.clone(),
            priority: DEFAULT_PRIORITY,
            expires_at: None,
            created_at: ctx.now,
            remaining: unplaced,
        };
        state.lots.push(lot);
        state.balance += unplaced as i64;
    }
    debug_assert_eq!(state.balance, balance);
    event.refund_of = Some(debit.event.id.clone());
    event.allocations = returned;
    event.metadata = metadata;
    Ok(vec![event])
}

fn adjust(
    state: &mut AccountState,
    ctx: &mut Context<'_>,
    delta: i64,
    reason: &str,
    metadata: Option<serde_json::Value>,
) -> Result<Vec<Event>, Refusal> {
    let balance = checked_balance(state, delta)?;
    let magnitude = delta.unsigned_abs();
    let mut event = new_event(ctx, EventKind::Adjustment, magnitude, delta, balance);
    event.allocations = if delta > 0 {
        let lot = Lot {
            id: event.id.clone(),
            priority: DEFAULT_PRIORITY,
            expires_at: None,
            created_at: ctx.now,
            remaining: 0,
        };
        add_credit(state, lot, magnitude)
    } else {
        // Corrections are recorded even past the overdraft limit: the operator says so.
        burn(state, ctx.now, magnitude)
    };
    state.balance = balance;
    event.reason = Some(reason.to_owned());
    event.metadata = metadata;
    Ok(vec![event])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreditType, SignedAmount, SubjectId, TenantId};

    struct Harness {
        key: AccountKey,
        state: AccountState,
        now: Timestamp,
        seq: u128,
    }

    impl Harness {
        fn new() -> Self {
            Harness {
                key: AccountKey {
                    tenant_id: TenantId::from_uuid(uuid::Uuid::from_u128(1)),
                    subject: SubjectId::parse("alice").unwrap(),
                    credit_type: CreditType::default(),
                },
                state: AccountState::default(),
                now: Timestamp::from_micros(1_000_000_000),
                seq: 0,
            }
        }

        fn run(&mut self, kind: CommandKind, debit: Option<&DebitRecord>) -> Decision {
            let mut seq = self.seq;
            let mut next_id = || {
                seq += 1;
                EventId::from_uuid(uuid::Uuid::from_u128(seq))
            };
            let mut ctx = Context { key: &self.key, now: self.now, correlation_id: "c", next_id: &mut next_id };
            let mut swept = self.state.clone();
            sweep_expired(&mut swept, &mut ctx);
            let d = decide(&kind, &swept, debit, &mut ctx).unwrap();
            self.seq = seq;
            self.state = d.state.clone();
            d
        }

        fn grant(&mut self, amount: u64, priority: i32, expires_in_s: Option<i64>) -> Decision {
            let expires_at = expires_in_s.map(|s| self.now.plus_seconds(s));
            self.run(
                CommandKind::Grant {
                    subject: self.key.subject.clone(),
                    credit_type: CreditType::default(),
                    amount: Amount::new(amount).unwrap(),
                    priority,
                    expires_at,
                    metadata: None,
                },
                None,
            )
        }

        fn debit(&mut self, amount: u64) -> Decision {
            self.run(
                CommandKind::Debit {
                    subject: self.key.subject.clone(),
                    credit_type: CreditType::default(),
                    amount: Amount::new(amount).unwrap(),
                    metadata: None,
                },
                None,
            )
        }

        fn refund(&mut self, debit: &Decision, refunded: u64, amount: Option<u64>) -> Decision {
            let record = DebitRecord { event: debit.events[0].clone(), refunded };
            let kind = CommandKind::Refund {
                refund_of: record.event.id.clone(),
                amount: amount.map(|a| Amount::new(a).unwrap()),
                bound_subject: None,
                metadata: None,
            };
            self.run(kind, Some(&record))
        }
    }

    fn refused(d: &Decision) -> Option<RefusalCode> {
        match &d.outcome {
            Outcome::Refused(r) => Some(r.code),
            Outcome::Applied(_) => None,
        }
    }

    #[test]
    fn debits_burn_lots_by_priority_then_expiry_then_age() {
        let mut h = Harness::new();
        let never = h.grant(10, 5, None);
        let late = h.grant(10, 5, Some(200));
        let early = h.grant(10, 5, Some(100));
        let first = h.grant(10, 1, None);
        let d = h.debit(35);
        let lots: Vec<_> = d.events[0].allocations.iter().map(|a| (a.lot_id.clone(), a.amount)).collect();
        assert_eq!(
            lots,
            vec![
                (Some(first.events[0].id.clone()), 10),
                (Some(early.events[0].id.clone()), 10),
                (Some(late.events[0].id.clone()), 10),
                (Some(never.events[0].id.clone()), 5),
            ]
        );
        assert_eq!(h.state.balance, 5);
    }

    #[test]
    fn debit_over_available_is_refused_and_changes_nothing() {
        let mut h = Harness::new();
        h.grant(5, 0, None);
        let before = h.state.clone();
        let d = h.debit(10);
        assert_eq!(refused(&d), Some(RefusalCode::InsufficientCredits));
        assert!(d.events.is_empty());
        assert_eq!(h.state, before);
    }

    #[test]
    fn overdraft_allows_debt_down_to_the_limit_and_grants_repay_it_first() {
        let mut h = Harness::new();
        h.state.policy.overdraft_limit = 200;
        assert_eq!(refused(&h.debit(200)), None);
        assert_eq!(h.state.balance, -200);
        assert_eq!(refused(&h.debit(1)), Some(RefusalCode::InsufficientCredits));
        let g = h.grant(300, 0, Some(10));
        assert_eq!(g.events[0].allocations, vec![Allocation { lot_id: None, amount: 200 }]);
        assert_eq!(h.state.balance, 100);
        // Only the 100 left on the lot can expire, never the repaid part.
        h.now = h.now.plus_seconds(11);
        h.debit(1);
        assert_eq!(h.state.balance, -1);
    }

    #[test]
    fn expired_credit_is_never_spendable() {
        let mut h = Harness::new();
        h.grant(1000, 0, Some(10));
        h.now = h.now.plus_seconds(11);
        assert_eq!(h.state.available(h.now), 0);
        let d = h.debit(500);
        assert_eq!(refused(&d), Some(RefusalCode::InsufficientCredits));
        assert!(d.events.is_empty(), "the refusal itself writes nothing");
        assert_eq!(h.state.balance, 0, "the sweep before the decision expired the lot");
    }

    #[test]
    fn refunds_return_to_lots_in_reverse_order_and_never_exceed_the_debit() {
        let mut h = Harness::new();
        let a = h.grant(10, 1, None);
        let b = h.grant(10, 2, None);
        let d = h.debit(15);
        let r1 = h.refund(&d, 0, Some(7));
        assert_eq!(
            r1.events[0].allocations,
            vec![
                Allocation { lot_id: Some(b.events[0].id.clone()), amount: 5 },
                Allocation { lot_id: Some(a.events[0].id.clone()), amount: 2 }
            ]
        );
        assert_eq!(h.state.balance, 12);
        assert_eq!(refused(&h.refund(&d, 7, Some(9))), Some(RefusalCode::RefundExceedsDebit));
        let rest = h.refund(&d, 7, None);
        assert_eq!(rest.events[0].amount, 8);
        assert_eq!(refused(&h.refund(&d, 15, None)), Some(RefusalCode::RefundExceedsDebit));
        assert_eq!(h.state.balance, 20);
    }

    #[test]
    fn credit_refunded_to_an_expired_lot_expires_with_it() {
        let mut h = Harness::new();
        h.grant(10, 0, Some(5));
        let d = h.debit(10);
        h.now = h.now.plus_seconds(6);
        let r = h.refund(&d, 0, None);
        let kinds: Vec<_> = r.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EventKind::Refund, EventKind::Expiration]);
        assert_eq!(h.state.balance, 0);
    }

    #[test]
    fn max_debit_amount_is_enforced() {
        let mut h = Harness::new();
        h.grant(100, 0, None);
        h.state.policy.max_debit_amount = Some(10);
        assert_eq!(refused(&h.debit(11)), Some(RefusalCode::MaxDebitAmountExceeded));
        assert_eq!(refused(&h.debit(10)), None);
    }

    #[test]
    fn balances_cannot_overflow() {
        let mut h = Harness::new();
        assert_eq!(refused(&h.grant(crate::AMOUNT_MAX, 0, None)), None);
        assert_eq!(refused(&h.grant(1, 0, None)), Some(RefusalCode::BalanceOverflow));
        assert_eq!(h.state.balance, BALANCE_LIMIT);
    }

    #[test]
    fn negative_adjustments_burn_lots_and_may_create_debt() {
        let mut h = Harness::new();
        h.grant(5, 0, None);
        let kind = CommandKind::Adjust {
            subject: h.key.subject.clone(),
            credit_type: CreditType::default(),
            amount: SignedAmount::new(-8).unwrap(),
            reason: "fix".into(),
            metadata: None,
        };
        let d = h.run(kind, None);
        assert_eq!(d.events[0].delta, -8);
        assert_eq!(h.state.balance, -3);
        assert_eq!(h.state.debt(), 3);
    }
}
