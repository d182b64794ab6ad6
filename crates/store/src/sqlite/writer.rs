//! The single writer. It owns the only write connection; requests queue to it and are
//! committed together (group commit: many operations, one transaction, one fsync). Each
//! operation runs inside its own savepoint, so one that fails is rolled back alone and the
//! rest of the batch still commits. No reply is sent before its batch's commit returned.
//!
//! Because it is the only writer, it keeps the accounts it has touched in memory: the cache is
//! exactly what is committed, and is dropped whole if a commit ever fails.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use licenseseal_ledger::idempotency::decide_idempotency;
use licenseseal_ledger::{
    decide, sweep_expired, AccountKey, AccountState, Command, CommandKind, Context, DebitRecord, EventId, EventKind,
    IdempotencyDecision, Outcome, Refusal, RefusalCode, StoredOutcome, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::rows::{insert_event, load_account, load_event, load_lot};
use crate::{Clock, Execution, StoreError};

/// Called once the batch holding the operation has committed (or failed to).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A non-ledger write run on the writer connection: returns whether it succeeded (else its
/// savepoint is rolled back) and what to do once the batch's fate is known.
pub(crate) type AdminOp = Box<dyn FnOnce(&Connection, &mut AccountCache, Timestamp) -> (bool, Completion) + Send>;

// Moved once through the queue; boxing the ledger variant would add an allocation per write.
#[allow(clippy::large_enum_variant)]
pub(crate) enum WriteOp {
    Ledger { command: Command, reply: oneshot::Sender<Result<Execution, StoreError>> },
    Admin(AdminOp),
}

/// Accounts as committed, keyed by account. Bounded: cleared when it grows past `max`.
pub(crate) struct AccountCache {
    map: HashMap<AccountKey, AccountState>,
    max: usize,
}

impl AccountCache {
    pub(crate) fn invalidate(&mut self, key: &AccountKey) {
        self.map.remove(key);
    }
}

pub(crate) struct Writer {
    conn: Connection,
    cache: AccountCache,
    clock: Arc<dyn Clock>,
    last_now: Timestamp,
    batch_max: usize,
}

#[allow(clippy::large_enum_variant)]
enum Pending {
    Ledger(oneshot::Sender<Result<Execution, StoreError>>, Result<Execution, StoreError>),
    Admin(Completion),
}

impl Writer {
    pub(crate) fn new(conn: Connection, clock: Arc<dyn Clock>, batch_max: usize, cache_max: usize) -> Self {
        Writer {
            conn,
            cache: AccountCache { map: HashMap::new(), max: cache_max },
            clock,
            last_now: Timestamp::from_micros(0),
            batch_max,
        }
    }

    /// Runs until every sender is gone, then returns after the last commit.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    fn now(&mut self) -> Timestamp {
        // Time never runs backwards inside the ledger, even if the wall clock does.
        self.last_now = self.last_now.max(self.clock.now());
        self.last_now
    }

    fn commit_batch(&mut self, batch: &mut Vec<WriteOp>) {
        let started = std::time::Instant::now();
        let size = batch.len();
        let now = self.now();
        let mut pending = Vec::with_capacity(batch.len());
        let began = self.conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = began {
            let message = e.to_string();
            tracing::error!(error = %message, "store: cannot begin a write transaction");
            for op in batch.drain(..) {
                let err = StoreError::Unavailable(message.clone());
                match op {
                    WriteOp::Ledger { reply, .. } => drop(reply.send(Err(err))),
                    WriteOp::Admin(op) => drop(op),
                }
            }
            return;
        }
        for op in batch.drain(..) {
            pending.push(self.run_in_savepoint(op, now));
        }
        let applied = started.elapsed();
        let committed = self.conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        tracing::debug!(
            size,
            applied_us = applied.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "batch committed"
        );
        if let Err(message) = &committed {
            tracing::error!(error = %message, "store: commit failed; the batch is rolled back");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.cache.map.clear();
        }
        for p in pending {
            let fate = committed.clone().map_err(StoreError::Unavailable);
            match p {
                Pending::Ledger(reply, result) => {
                    let _ = reply.send(fate.and(result));
                }
                Pending::Admin(done) => done(fate),
            }
        }
    }

    fn run_in_savepoint(&mut self, op: WriteOp, now: Timestamp) -> Pending {
        if let Err(e) = self.conn.execute_batch("SAVEPOINT op") {
            return match op {
                WriteOp::Ledger { reply, .. } => Pending::Ledger(reply, Err(e.into())),
                WriteOp::Admin(op) => {
                    let (_, done) = op(&self.conn, &mut self.cache, now);
                    Pending::Admin(Box::new(move |_| done(Err(StoreError::Unavailable(e.to_string())))))
                }
            };
        }
        let (ok, pending) = match op {
            WriteOp::Ledger { command, reply } => {
                let result = self.ledger(&command, now);
                if let Err(e) = &result {
                    tracing::error!(error = %e, correlation_id = %command.correlation_id, "store: ledger operation failed");
                }
                (result.is_ok(), Pending::Ledger(reply, result))
            }
            WriteOp::Admin(op) => {
                let (ok, done) = op(&self.conn, &mut self.cache, now);
                (ok, Pending::Admin(done))
            }
        };
        if !ok {
            let _ = self.conn.execute_batch("ROLLBACK TO op");
        }
        let _ = self.conn.execute_batch("RELEASE op");
        pending
    }

    fn ledger(&mut self, cmd: &Command, now: Timestamp) -> Result<Execution, StoreError> {
        let stored = load_idempotency(&self.conn, cmd)?;
        match decide_idempotency(stored.as_ref(), &cmd.fingerprint) {
            IdempotencyDecision::Replay(outcome) => return Ok(Execution::Replayed(outcome)),
            IdempotencyDecision::KeyReusedWithDifferentRequest => return Ok(Execution::KeyReusedWithDifferentRequest),
            IdempotencyDecision::Fresh => {}
        }
        let (key, debit) = match &cmd.kind {
            CommandKind::Refund { refund_of, .. } => match self.debit_record(cmd, refund_of)? {
                Ok((key, record)) => (key, Some(record)),
                Err(refusal) => return self.store_refusal(cmd, now, refusal),
            },
            kind => {
                let (subject, credit_type) = kind.account().expect("non-refund commands name their account");
                let key = AccountKey {
                    tenant_id: cmd.tenant_id.clone(),
                    subject: subject.clone(),
                    credit_type: credit_type.clone(),
                };
                (key, None)
            }
        };
        let mut state = self.account_state(&key)?;
        if let Some(debit) = &debit {
            self.load_refund_lots(&mut state, debit)?;
        }
        let before = state.clone();
        let decided = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut next_id = || EventId::from_uuid(uuid::Uuid::now_v7());
            let mut ctx = Context { key: &key, now, correlation_id: &cmd.correlation_id, next_id: &mut next_id };
            let mut swept = state;
            let mut events = sweep_expired(&mut swept, &mut ctx);
            decide(&cmd.kind, &swept, debit.as_ref(), &mut ctx).map(|d| {
                events.extend(d.events);
                (d.state, events, d.outcome)
            })
        }));
        let (after, events, outcome) = match decided {
            Ok(result) => result?,
            Err(_) => return Err(StoreError::Corrupt("ledger invariant violated; operation rolled back".into())),
        };
        let moved: i64 = events.iter().map(|e| e.delta).sum();
        if before.balance.checked_add(moved) != Some(after.balance) {
            return Err(StoreError::Corrupt("balance does not equal the sum of event deltas".into()));
        }
        for event in &events {
            insert_event(&self.conn, event)?;
        }
        if !events.is_empty() {
            write_lots(&self.conn, &key, &before, &after)?;
            upsert_account(&self.conn, &key, &after, now)?;
        }
        let event_id = match &outcome {
            Outcome::Applied(a) => Some(a.event.id.clone()),
            Outcome::Refused(_) => None,
        };
        insert_idempotency(&self.conn, cmd, &outcome, event_id.as_ref(), now)?;
        self.remember(key, after);
        Ok(Execution::Fresh(outcome))
    }

    /// A refusal decided before an account was involved (unknown debit): stored like any other
    /// outcome so that it is sticky.
    fn store_refusal(&mut self, cmd: &Command, now: Timestamp, refusal: Refusal) -> Result<Execution, StoreError> {
        let outcome = Outcome::Refused(refusal);
        insert_idempotency(&self.conn, cmd, &outcome, None, now)?;
        Ok(Execution::Fresh(outcome))
    }

    fn debit_record(
        &self,
        cmd: &Command,
        refund_of: &EventId,
    ) -> Result<Result<(AccountKey, DebitRecord), Refusal>, StoreError> {
        let not_found = |code, detail: &str| {
            let correlation_id = cmd.correlation_id.clone();
            Ok(Err(Refusal { code, detail: detail.to_owned(), available: None, correlation_id }))
        };
        let Some(event) = load_event(&self.conn, &cmd.tenant_id, refund_of)? else {
            return not_found(RefusalCode::EventNotFound, "refund_of names no event of this tenant");
        };
        if event.kind != EventKind::Debit {
            return not_found(RefusalCode::NotADebit, "refund_of must name a debit event");
        }
        let refunded: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM events WHERE refund_of = ?1")?
            .query_row([refund_of.as_str()], |r| r.get(0))?;
        let key = AccountKey {
            tenant_id: cmd.tenant_id.clone(),
            subject: event.subject.clone(),
            credit_type: event.credit_type.clone(),
        };
        Ok(Ok((key, DebitRecord { event, refunded: refunded as u64 })))
    }

    fn account_state(&mut self, key: &AccountKey) -> Result<AccountState, StoreError> {
        if let Some(state) = self.cache.map.get(key) {
            return Ok(state.clone());
        }
        Ok(load_account(&self.conn, key)?.map(|(s, _)| s).unwrap_or_default())
    }

    /// Makes sure every lot the debit drew from is in `state`, drained or not.
    fn load_refund_lots(&self, state: &mut AccountState, debit: &DebitRecord) -> Result<(), StoreError> {
        for lot_id in debit.event.allocations.iter().filter_map(|a| a.lot_id.as_ref()) {
            if !state.lots.iter().any(|l| l.id == *lot_id) {
                if let Some(lot) = load_lot(&self.conn, lot_id)? {
                    state.lots.push(lot);
                }
            }
        }
        Ok(())
    }

    fn remember(&mut self, key: AccountKey, mut state: AccountState) {
        state.lots.retain(|l| l.remaining > 0);
        if self.cache.map.len() >= self.cache.max && !self.cache.map.contains_key(&key) {
            self.cache.map.clear();
        }
        self.cache.map.insert(key, state);
    }
}

fn load_idempotency(conn: &Connection, cmd: &Command) -> Result<Option<StoredOutcome>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT fingerprint, outcome FROM idempotency WHERE tenant_id = ?1 AND key = ?2")?;
    let row = stmt
        .query_row(params![cmd.tenant_id.as_str(), cmd.idempotency_key.as_str()], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    let Some((fingerprint, outcome)) = row else {
        return Ok(None);
    };
    let fingerprint = fingerprint.try_into().map_err(|_| StoreError::Corrupt("fingerprint length".into()))?;
    let mut outcome: Outcome =
        serde_json::from_str(&outcome).map_err(|e| StoreError::Corrupt(format!("stored outcome: {e}")))?;
    if let Outcome::Applied(applied) = &mut outcome {
        // The tenant is never serialised with an event; it is the key's tenant.
        applied.event.tenant_id = Some(cmd.tenant_id.clone());
    }
    Ok(Some(StoredOutcome { fingerprint: licenseseal_ledger::Fingerprint(fingerprint), outcome }))
}

fn insert_idempotency(
    conn: &Connection,
    cmd: &Command,
    outcome: &Outcome,
    event_id: Option<&EventId>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let outcome = serde_json::to_string(outcome).map_err(|e| StoreError::Corrupt(format!("outcome encode: {e}")))?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO idempotency (tenant_id, key, fingerprint, outcome, event_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    stmt.execute(params![
        cmd.tenant_id.as_str(),
        cmd.idempotency_key.as_str(),
        &cmd.fingerprint.0[..],
        outcome,
        event_id.map(EventId::as_str),
        now.micros(),
    ])?;
    Ok(())
}

/// Writes the lots whose remaining credit changed, and the new ones.
fn write_lots(
    conn: &Connection,
    key: &AccountKey,
    before: &AccountState,
    after: &AccountState,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO lots (id, tenant_id, subject, credit_type, priority, expires_at, created_at, remaining)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining",
    )?;
    for lot in &after.lots {
        let unchanged = before.lots.iter().any(|b| b.id == lot.id && b.remaining == lot.remaining);
        if unchanged {
            continue;
        }
        stmt.execute(params![
            lot.id.as_str(),
            key.tenant_id.as_str(),
            key.subject.as_str(),
            key.credit_type.as_str(),
            lot.priority,
            lot.expires_at.map(Timestamp::micros),
            lot.created_at.micros(),
            lot.remaining as i64,
        ])?;
    }
    Ok(())
}

pub(crate) fn upsert_account(
    conn: &Connection,
    key: &AccountKey,
    state: &AccountState,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO accounts (tenant_id, subject, credit_type, balance, held, overdraft_limit, max_debit_amount, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (tenant_id, subject, credit_type) DO UPDATE SET
           balance = excluded.balance, held = excluded.held, overdraft_limit = excluded.overdraft_limit,
           max_debit_amount = excluded.max_debit_amount, updated_at = excluded.updated_at",
    )?;
    stmt.execute(params![
        key.tenant_id.as_str(),
        key.subject.as_str(),
        key.credit_type.as_str(),
        state.balance,
        state.held,
        state.policy.overdraft_limit as i64,
        state.policy.max_debit_amount.map(|v| v as i64),
        now.micros(),
    ])?;
    Ok(())
}
