//! The single writer. It owns the only write connection; requests queue to it and are
//! committed together (group commit: many operations, one transaction, one fsync). An
//! operation that fails is rolled back alone (the batch is redone with a savepoint around each
//! operation) and the rest of the batch still commits.
//!
//! Durability is pipelined: the connection runs with `synchronous = NORMAL`, so a COMMIT only
//! hands the WAL frames to the OS, and a second thread, the syncer, `fdatasync`s the WAL file
//! and only then answers the batch's callers, while the writer already applies the next
//! batch. No reply is ever sent before the commit that holds it is on disk. (`NORMAL` keeps
//! SQLite's own checkpoints safe: the WAL is synced before a checkpoint, the database after
//! it, and the WAL header before the WAL is reused.) Checkpoints run beside the writer, on the
//! checkpointer's thread (`checkpoint.rs`).
//!
//! Because it is the only writer, it keeps the accounts it has touched in memory: the cache is
//! exactly what is committed, and is dropped whole if a commit ever fails.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use licenseseal_ledger::idempotency::decide_idempotency;
use licenseseal_ledger::{
    AccountKey, AccountState, Applied, Command, CommandKind, DebitRecord, EventId, IdempotencyDecision, Outcome,
    Refusal, StoredOutcome, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpointer;
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
    syncer: Syncer,
    checkpointer: Checkpointer,
    failure: SyncFailure,
}

type Reply = oneshot::Sender<Result<Execution, StoreError>>;

/// What the syncer answers once the WAL holding it is on disk.
enum Pending {
    Ledger(Vec<(Reply, Result<Execution, StoreError>)>),
    Admin(Completion, Result<(), StoreError>),
}

impl Pending {
    /// Answers with the operations' results if the WAL holding them is durable, else with the
    /// reason it is not.
    fn deliver(self, durable: &Result<(), String>) {
        let lost = |reason: &String| StoreError::Unavailable(reason.clone());
        match (self, durable) {
            (Pending::Ledger(replies), Ok(())) => {
                for (reply, result) in replies {
                    let _ = reply.send(result);
                }
            }
            (Pending::Ledger(replies), Err(e)) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(lost(e)));
                }
            }
            (Pending::Admin(done, fate), Ok(())) => done(fate),
            (Pending::Admin(done, _), Err(e)) => done(Err(lost(e))),
        }
    }
}

/// Set once, by the syncer, when an fdatasync of the WAL failed: from then on nothing more is
/// written or acknowledged, and readiness fails, until the process restarts.
pub(crate) type SyncFailure = Arc<std::sync::OnceLock<String>>;

/// The thread that makes committed batches durable and then answers them, in commit order.
struct Syncer {
    tx: Option<std::sync::mpsc::Sender<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    /// Starts the syncer for the database at `db_path`, whose WAL is `<db_path>-wal`.
    fn start(db_path: &Path, failure: SyncFailure) -> Result<Self, StoreError> {
        let wal_path = wal_path(db_path);
        let wal = std::fs::File::open(&wal_path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open the WAL {}: {e}", wal_path.display())))?;
        // The WAL's directory entry must be durable too (once: the file is reused, never
        // replaced, while the store is open).
        if let Some(dir) = db_path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::Unavailable(format!("cannot sync {}: {e}", dir.display())))?;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Pending>();
        let thread = std::thread::Builder::new()
            .name("licenseseal-sync".into())
            .spawn(move || {
                // After one failed fdatasync nothing later may be acknowledged: the kernel may
                // have dropped the pages it could not write.
                while let Ok(first) = rx.recv() {
                    let mut pending = vec![first];
                    pending.extend(rx.try_iter());
                    let durable = match failure.get() {
                        Some(reason) => Err(reason.clone()),
                        None => wal.sync_data().map_err(|e| {
                            tracing::error!(error = %e, "store: fdatasync of the WAL failed; refusing every later write");
                            let reason = format!("the write-ahead log could not be synced: {e}");
                            let _ = failure.set(reason.clone());
                            reason
                        }),
                    };
                    for p in pending {
                        p.deliver(&durable);
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the syncer: {e}")))?;
        Ok(Syncer { tx: Some(tx), thread: Some(thread) })
    }

    fn send(&self, pending: Pending) {
        match &self.tx {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(pending)) = tx.send(pending) {
                    pending.deliver(&Err("the store is shutting down".into()));
                }
            }
            None => pending.deliver(&Err("the store is shutting down".into())),
        }
    }
}

impl Drop for Syncer {
    /// Waits until everything handed over is durable and answered.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SQLite's WAL file for a database file.
pub(crate) fn wal_path(db_path: &Path) -> std::path::PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

impl Writer {
    /// Takes over the write connection of the database at `db_path` (in WAL mode, with the WAL
    /// already created) and starts its syncer.
    pub(crate) fn new(
        conn: Connection,
        db_path: &Path,
        clock: Arc<dyn Clock>,
        batch_max: usize,
        cache_max: usize,
        wal_restart_pages: u32,
        failure: SyncFailure,
    ) -> Result<Self, StoreError> {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints run on the checkpointer's thread, not inside this connection's commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Writer {
            conn,
            cache: AccountCache { map: HashMap::new(), max: cache_max },
            clock,
            last_now: Timestamp::from_micros(0),
            batch_max,
            syncer: Syncer::start(db_path, failure.clone())?,
            checkpointer: Checkpointer::start(db_path, wal_restart_pages, failure.clone())?,
            failure,
        })
    }

    /// Runs until every sender is gone, then returns after the last commit is durable and
    /// answered.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(self.batch_max);
        let mut ledger = Vec::with_capacity(self.batch_max);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // Ledger writes are committed together; the rare admin write gets a transaction of
            // its own, in queue order.
            for op in batch.drain(..) {
                match op {
                    WriteOp::Ledger { command, reply } => ledger.push((command, reply)),
                    WriteOp::Admin(op) => {
                        self.commit_ledger(&mut ledger);
                        self.commit_admin(op);
                    }
                }
            }
            self.commit_ledger(&mut ledger);
            self.checkpointer.finish_if_wanted(&self.conn);
        }
    }

    fn now(&mut self) -> Timestamp {
        // Time never runs backwards inside the ledger, even if the wall clock does.
        self.last_now = self.last_now.max(self.clock.now());
        self.last_now
    }

    /// Commits a batch of ledger operations in one transaction and answers each caller after
    /// the commit. Fast path: no savepoints. If any operation fails, the transaction is rolled
    /// back and the batch redone with a savepoint around each operation, so that the failure
    /// is rolled back alone and the others still commit.
    fn commit_ledger(&mut self, ops: &mut Vec<(Command, Reply)>) {
        if ops.is_empty() {
            return;
        }
        if let Some(reason) = self.failure.get() {
            for (_, reply) in ops.drain(..) {
                let _ = reply.send(Err(StoreError::Unavailable(reason.clone())));
            }
            return;
        }
        let started = std::time::Instant::now();
        let now = self.now();
        let mut results = self.apply_ledger(ops, now, false);
        if results.as_ref().is_ok_and(|r| r.iter().any(Result::is_err)) {
            self.rollback();
            results = self.apply_ledger(ops, now, true);
        }
        let applied = started.elapsed();
        let fate = results.and_then(|r| exec(&self.conn, "COMMIT").map(|()| r).map_err(|e| e.to_string()));
        tracing::debug!(
            size = ops.len(),
            applied_us = applied.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "batch committed"
        );
        match fate {
            Ok(results) => {
                let replies = ops.drain(..).map(|(_, reply)| reply).zip(results).collect();
                self.syncer.send(Pending::Ledger(replies));
            }
            Err(message) => {
                tracing::error!(error = %message, "store: batch failed; nothing of it was committed");
                self.rollback();
                for (_, reply) in ops.drain(..) {
                    let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }

    /// Applies the operations inside one open transaction. `Err` means the transaction itself
    /// is lost (it could not begin, or SQLite rolled it back).
    fn apply_ledger(
        &mut self,
        ops: &[(Command, Reply)],
        now: Timestamp,
        careful: bool,
    ) -> Result<Vec<Result<Execution, StoreError>>, String> {
        exec(&self.conn, "BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
        let mut results = Vec::with_capacity(ops.len());
        for (command, _) in ops {
            if careful {
                exec(&self.conn, "SAVEPOINT op").map_err(|e| e.to_string())?;
            }
            let result = self.ledger(command, now);
            if let Err(e) = &result {
                tracing::error!(error = %e, correlation_id = %command.correlation_id, "store: ledger operation failed");
                if !careful {
                    results.push(result);
                    return Ok(results);
                }
                let _ = exec(&self.conn, "ROLLBACK TO op");
            }
            if careful {
                let _ = exec(&self.conn, "RELEASE op");
                if self.conn.is_autocommit() {
                    return Err("the transaction was rolled back by the database".into());
                }
            }
            results.push(result);
        }
        Ok(results)
    }

    fn commit_admin(&mut self, op: AdminOp) {
        let now = self.now();
        let refused = match self.failure.get() {
            Some(reason) => Some(reason.clone()),
            None => exec(&self.conn, "BEGIN IMMEDIATE").err().map(|e| e.to_string()),
        };
        if let Some(reason) = refused {
            // The operation must run to hand back its completion, but may write nothing: with
            // no transaction open it would commit on its own, so the connection is made
            // read-only around it.
            let _ = exec(&self.conn, "PRAGMA query_only = ON");
            let (_, done) = op(&self.conn, &mut self.cache, now);
            let _ = exec(&self.conn, "PRAGMA query_only = OFF");
            self.cache.map.clear();
            return done(Err(StoreError::Unavailable(reason)));
        }
        let (ok, done) = op(&self.conn, &mut self.cache, now);
        let fate =
            if ok { exec(&self.conn, "COMMIT").map_err(|e| StoreError::Unavailable(e.to_string())) } else { Ok(()) };
        if !ok || fate.is_err() {
            self.rollback();
        }
        // Answered in commit order, after the WAL is synced (a failed admin write changed
        // nothing, but a later reader must not see an earlier batch undone either way).
        self.syncer.send(Pending::Admin(done, fate));
    }

    /// Rolls back the open transaction and forgets every cached account, which may hold
    /// state that is no longer committed.
    fn rollback(&mut self) {
        let _ = exec(&self.conn, "ROLLBACK");
        self.cache.map.clear();
    }

    fn ledger(&mut self, cmd: &Command, now: Timestamp) -> Result<Execution, StoreError> {
        let stored = load_idempotency(&self.conn, cmd)?;
        match decide_idempotency(stored.as_ref(), &cmd.fingerprint) {
            IdempotencyDecision::Replay(outcome) => return Ok(Execution::Replayed(outcome)),
            IdempotencyDecision::KeyReusedWithDifferentRequest => return Ok(Execution::KeyReusedWithDifferentRequest),
            IdempotencyDecision::Fresh if request_key_used(&self.conn, cmd)? => {
                return Ok(Execution::KeyReusedWithDifferentRequest)
            }
            IdempotencyDecision::Fresh => {}
        }
        let refunded = match &cmd.kind {
            CommandKind::Refund { refund_of, .. } => load_event(&self.conn, &cmd.tenant_id, refund_of)?,
            _ => None,
        };
        let (key, mut debit) = match crate::apply::target(cmd, refunded.as_ref()) {
            Ok(target) => target,
            Err(refusal) => return self.store_refusal(cmd, now, refusal),
        };
        if let Some(debit) = debit.as_mut() {
            debit.refunded = self.refunded(&debit.event.id)?;
        }
        let mut state = self.account_state(&key)?;
        if let Some(debit) = &debit {
            self.load_refund_lots(&mut state, debit)?;
        }
        let crate::apply::Applied { state: after, events, outcome } =
            crate::apply::apply(&key, &state, cmd, debit.as_ref(), now)?;
        let before = state;
        for event in &events {
            insert_event(&self.conn, event)?;
        }
        if !events.is_empty() {
            write_lots(&self.conn, &key, &before, &after)?;
            upsert_account(&self.conn, &key, &after, now)?;
        }
        insert_idempotency(&self.conn, cmd, &outcome, now)?;
        self.remember(key, after);
        Ok(Execution::Fresh(outcome))
    }

    /// A refusal decided before an account was involved (unknown debit): stored like any other
    /// outcome so that it is sticky.
    fn store_refusal(&mut self, cmd: &Command, now: Timestamp, refusal: Refusal) -> Result<Execution, StoreError> {
        let outcome = Outcome::Refused(refusal);
        insert_idempotency(&self.conn, cmd, &outcome, now)?;
        Ok(Execution::Fresh(outcome))
    }

    /// How much of a debit has been refunded so far (this batch's refunds included).
    fn refunded(&self, debit: &EventId) -> Result<u64, StoreError> {
        let sql = "SELECT COALESCE(SUM(amount), 0) FROM events WHERE refund_of = ?1";
        let refunded: i64 = self.conn.prepare_cached(sql)?.query_row([debit.as_str()], |r| r.get(0))?;
        Ok(refunded as u64)
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

/// Runs a parameterless statement through the statement cache (no re-parsing per batch).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Whether a ledger write of `tenant` used `key`.
pub(crate) fn ledger_key_used(conn: &Connection, tenant: &str, key: &str) -> Result<bool, StoreError> {
    let sql = "SELECT EXISTS (SELECT 1 FROM idempotency WHERE tenant_id = ?1 AND key = ?2)";
    Ok(conn.prepare_cached(sql)?.query_row(params![tenant, key], |r| r.get(0))?)
}

/// Whether a request outside the ledger (a key, a setting, …) of the command's tenant used its
/// key: keys have one scope per tenant.
fn request_key_used(conn: &Connection, cmd: &Command) -> Result<bool, StoreError> {
    let sql = "SELECT EXISTS (SELECT 1 FROM request_idempotency WHERE scope = ?1 AND key = ?2)";
    let params = params![cmd.tenant_id.as_str(), cmd.idempotency_key.as_str()];
    Ok(conn.prepare_cached(sql)?.query_row(params, |r| r.get(0))?)
}

fn load_idempotency(conn: &Connection, cmd: &Command) -> Result<Option<StoredOutcome>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT fingerprint, refusal, event_id, balance, available FROM idempotency WHERE tenant_id = ?1 AND key = ?2",
    )?;
    let row = stmt
        .query_row(params![cmd.tenant_id.as_str(), cmd.idempotency_key.as_str()], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?;
    let Some((fingerprint, refusal, event_id, balance, available)) = row else { return Ok(None) };
    let fingerprint = fingerprint.try_into().map_err(|_| StoreError::Corrupt("fingerprint length".into()))?;
    let outcome = match (refusal, event_id) {
        (Some(refusal), _) => Outcome::Refused(
            serde_json::from_str(&refusal).map_err(|e| StoreError::Corrupt(format!("stored refusal: {e}")))?,
        ),
        (None, Some(event_id)) => {
            let id = EventId::parse(&event_id).map_err(|e| StoreError::Corrupt(format!("stored event id: {e}")))?;
            let event = load_event(conn, &cmd.tenant_id, &id)?
                .ok_or_else(|| StoreError::Corrupt(format!("idempotency record names a missing event {id}")))?;
            let (balance, available) =
                balance.zip(available).ok_or_else(|| StoreError::Corrupt("stored balance".into()))?;
            Outcome::Applied(Box::new(Applied { event, balance, available }))
        }
        (None, None) => return Err(StoreError::Corrupt("idempotency record without outcome".into())),
    };
    Ok(Some(StoredOutcome { fingerprint: licenseseal_ledger::Fingerprint(fingerprint), outcome }))
}

/// Stores the outcome under the key: a refusal as JSON, a success as its event id and the
/// balances it reported (the event itself is already in `events`).
fn insert_idempotency(conn: &Connection, cmd: &Command, outcome: &Outcome, now: Timestamp) -> Result<(), StoreError> {
    let (refusal, event_id, balance, available) = match outcome {
        Outcome::Refused(r) => {
            let json = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(format!("refusal encode: {e}")))?;
            (Some(json), None, None, None)
        }
        Outcome::Applied(a) => (None, Some(a.event.id.as_str()), Some(a.balance), Some(a.available)),
    };
    let mut stmt = conn.prepare_cached(
        "INSERT INTO idempotency (tenant_id, key, fingerprint, refusal, event_id, balance, available, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    stmt.execute(params![
        cmd.tenant_id.as_str(),
        cmd.idempotency_key.as_str(),
        &cmd.fingerprint.0[..],
        refusal,
        event_id,
        balance,
        available,
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
    let mut insert = conn.prepare_cached(
        "INSERT INTO lots (tenant_id, subject, credit_type, id, priority, expires_at, created_at, remaining)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE lots SET remaining = ?5 WHERE tenant_id = ?1 AND subject = ?2 AND credit_type = ?3 AND id = ?4",
    )?;
    let k = (key.tenant_id.as_str(), key.subject.as_str(), key.credit_type.as_str());
    for lot in crate::apply::changed_lots(before, after) {
        if before.lots.iter().any(|b| b.id == lot.id) {
            let updated = update.execute(params![k.0, k.1, k.2, lot.id.as_str(), lot.remaining as i64])?;
            if updated != 1 {
                return Err(StoreError::Corrupt(format!("lot {} of the account is missing", lot.id)));
            }
        } else {
            insert.execute(params![
                k.0,
                k.1,
                k.2,
                lot.id.as_str(),
                lot.priority,
                lot.expires_at.map(Timestamp::micros),
                lot.created_at.micros(),
                lot.remaining as i64,
            ])?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemClock;
    use licenseseal_ledger::{Amount, CreditType, Fingerprint, IdempotencyKey, SubjectId, TenantId};

    fn writer(dir: &std::path::Path) -> Writer {
        let path = dir.join("w.db");
        let mut conn = Connection::open(&path).unwrap();
        super::super::schema::configure(&conn).unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        Writer::new(conn, &path, Arc::new(SystemClock), 100, 100, 1000, SyncFailure::default()).unwrap()
    }

    fn grant(tenant: &TenantId, key: &str) -> (Command, Reply, oneshot::Receiver<Result<Execution, StoreError>>) {
        let (tx, rx) = oneshot::channel();
        let command = Command {
            tenant_id: tenant.clone(),
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
            fingerprint: Fingerprint::of(&[key.as_bytes()]),
            correlation_id: key.to_owned(),
            kind: CommandKind::Grant {
                subject: SubjectId::parse("alice").unwrap(),
                credit_type: CreditType::default(),
                amount: Amount::new(10).unwrap(),
                priority: 0,
                expires_at: None,
                metadata: None,
            },
        };
        (command, tx, rx)
    }

    #[test]
    fn a_failing_operation_is_rolled_back_alone_and_the_batch_still_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let tenant = TenantId::from_uuid(uuid::Uuid::now_v7());
        // A stored record with no outcome makes any use of its key fail inside the store.
        w.conn
            .execute(
                "INSERT INTO idempotency (tenant_id, key, fingerprint, created_at) VALUES (?1, 'poison', zeroblob(32), 0)",
                [tenant.as_str()],
            )
            .unwrap();
        let mut ops = Vec::new();
        let mut receivers = Vec::new();
        for key in ["a", "poison", "b"] {
            let (command, tx, rx) = grant(&tenant, key);
            ops.push((command, tx));
            receivers.push(rx);
        }
        w.commit_ledger(&mut ops);
        let results: Vec<_> = receivers.into_iter().map(|rx| rx.blocking_recv().unwrap()).collect();
        assert!(matches!(results[0], Ok(Execution::Fresh(Outcome::Applied(_)))), "{:?}", results[0]);
        assert!(matches!(results[1], Err(StoreError::Corrupt(_))), "{:?}", results[1]);
        assert!(matches!(results[2], Ok(Execution::Fresh(Outcome::Applied(_)))), "{:?}", results[2]);
        let (events, balance): (i64, i64) = w
            .conn
            .query_row("SELECT COUNT(*), (SELECT balance FROM accounts) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((events, balance), (2, 20), "both good grants committed, nothing of the failed one");
    }

    #[test]
    fn after_a_failed_sync_nothing_more_is_written_or_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let tenant = TenantId::from_uuid(uuid::Uuid::now_v7());
        let _ = w.failure.set("the write-ahead log could not be synced: EIO".into());
        let (command, tx, rx) = grant(&tenant, "after");
        w.commit_ledger(&mut vec![(command, tx)]);
        assert!(matches!(rx.blocking_recv().unwrap(), Err(StoreError::Unavailable(_))));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        w.commit_admin(Box::new(move |conn, _, _| {
            let wrote = conn.execute("INSERT INTO meta (key, value) VALUES ('x', x'00')", []).is_ok();
            (true, Box::new(move |fate| done_tx.send((wrote, fate.is_ok())).unwrap()))
        }));
        assert_eq!(done_rx.recv().unwrap(), (false, false), "the admin write was refused and failed");
        let rows: i64 = w
            .conn
            .query_row("SELECT (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM meta WHERE key = 'x')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows, 0);
    }
}
