//! Group commit on PostgreSQL. Each instance gathers concurrent ledger commands into batches;
//! one batch is one transaction with a fixed number of round trips whatever its size:
//!
//! 1. read the debits that refunds name (events are immutable, so no lock is needed);
//! 2. lock every account the batch touches with transaction-scoped advisory locks, taken in
//!    one fixed order (so batches on different instances never deadlock, and an account
//!    that does not exist yet locks just the same);
//! 3. read, pipelined: idempotency records, accounts, live lots, refunded totals;
//! 4. decide every command in memory through the ledger core, in order;
//! 5. write, pipelined: events, lots, accounts, idempotency records; then commit.
//!
//! The idempotency record is inserted in the same transaction as the events; a concurrent
//! insert of the same key by another instance makes the batch retry, and the retry replays.

use std::collections::{BTreeSet, HashMap, HashSet};

use deadpool_postgres::Pool;
use licenseseal_ledger::idempotency::decide_idempotency;
use licenseseal_ledger::{
    AccountKey, AccountPolicy, AccountState, Applied, Command, CommandKind, CreditType, DebitRecord, Event, EventId,
    IdempotencyDecision, IdempotencyKey, Lot, Outcome, Refusal, StoredOutcome, SubjectId, TenantId, Timestamp,
};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::codec::{corrupt, event_body, event_from_row};
use crate::{Execution, StoreError};

/// An advisory lock id: 64 bits of SHA-256 over length-prefixed `parts`, the same on every
/// instance. A collision only makes two things share a lock.
fn advisory_id(parts: &[&str]) -> i64 {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    i64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// The advisory lock id of an account.
pub(crate) fn lock_id(key: &AccountKey) -> i64 {
    advisory_id(&[key.tenant_id.as_str(), key.subject.as_str(), key.credit_type.as_str()])
}

/// The advisory lock id of a tenant's listing barrier. Every transaction that writes a
/// tenant's events holds it shared until it ends; a listing of the tenant's events takes it
/// exclusively while it reads. Events get their `seq` when inserted but become visible when
/// their transaction commits, so with several writers a later `seq` can be visible before an
/// earlier one; a listing that paged past it would skip the earlier event forever. Under the
/// barrier no writer of the tenant is mid-transaction, so every page is final.
pub fn listing_barrier_id(tenant: &TenantId) -> i64 {
    advisory_id(&["licenseseal listing barrier", tenant.as_str()])
}

/// The same barrier for a tenant's API keys (`None`: the operator's), which are listed by
/// `seq` too.
pub fn key_listing_barrier_id(tenant: Option<&TenantId>) -> i64 {
    advisory_id(&["licenseseal key listing barrier", tenant.map_or("", TenantId::as_str)])
}

/// Takes, inside the open transaction and in one round trip, the listing barriers of the
/// tenants of `keys` (shared) and then the advisory locks of the accounts (exclusive), each in
/// ascending id order: every transaction takes its locks in the same global order, so none
/// can deadlock with another, and a listing holds only its one barrier.
pub(crate) async fn lock_accounts<'a>(
    tx: &Tx<'_>,
    keys: impl IntoIterator<Item = &'a AccountKey>,
) -> Result<(), StoreError> {
    let keys: Vec<&AccountKey> = keys.into_iter().collect();
    let mut ids: Vec<i64> = keys.iter().map(|k| lock_id(k)).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut barriers: Vec<i64> = keys.iter().map(|k| listing_barrier_id(&k.tenant_id)).collect();
    barriers.sort_unstable();
    barriers.dedup();
    if !ids.is_empty() {
        // An Append runs its branches in order: every barrier before any account lock.
        execute(
            tx,
            "SELECT pg_advisory_xact_lock_shared(b) FROM unnest($1::bigint[]) AS b
             UNION ALL
             SELECT pg_advisory_xact_lock(k) FROM unnest($2::bigint[]) AS k",
            &[&barriers, &ids],
        )
        .await?;
    }
    Ok(())
}

/// A pooled connection's transaction; its statements are prepared once per connection.
pub(crate) type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Runs `sql` as a statement prepared once per connection (no parse round trip after that).
pub(crate) async fn query(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query(&statement, params).await?)
}

pub(crate) async fn execute(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&statement, params).await?)
}

/// The batch's reads. Each is prepared once per pooled connection, and PostgreSQL may then
/// keep one generic plan for it for good, made from the table sizes of that moment: a plain
/// join with `unnest` planned while a table was still empty became a sequential scan of the
/// whole table in every later batch (40 ms a batch at 130k idempotency keys). So every read
/// probes its table once per requested key, from a `LATERAL` subquery that `OFFSET 0` keeps
/// from being flattened into a join: whatever the sizes, that is an index lookup. Checked on
/// generic plans over empty tables by `tests/pg_plans.rs`.
pub const BATCH_READS: [&str; 6] =
    [READ_EVENTS, READ_IDEMPOTENCY, READ_REQUEST_KEYS, READ_ACCOUNTS, READ_LOTS, READ_REFUNDED];

/// The debits that a batch's refunds name.
const READ_EVENTS: &str = "SELECT e.tenant_id, e.body FROM unnest($1::text[]) AS r(id)
     CROSS JOIN LATERAL (SELECT tenant_id, body FROM events WHERE id = r.id OFFSET 0) e";

/// Stored outcomes of the batch's idempotency keys, with the event of each success.
const READ_IDEMPOTENCY: &str = "SELECT i.tenant_id, i.key, i.fingerprint, i.refusal, i.balance, i.available, e.body
     FROM unnest($1::text[], $2::text[]) AS k(t, k)
     CROSS JOIN LATERAL (SELECT * FROM idempotency WHERE tenant_id = k.t AND key = k.k OFFSET 0) i
     LEFT JOIN LATERAL (SELECT body FROM events WHERE id = i.event_id OFFSET 0) e ON true";

/// The batch's keys that a request outside the ledger used (keys have one scope per tenant).
const READ_REQUEST_KEYS: &str = "SELECT k.t, k.k FROM unnest($1::text[], $2::text[]) AS k(t, k)
     CROSS JOIN LATERAL (SELECT 1 FROM request_idempotency WHERE scope = k.t AND key = k.k OFFSET 0) r";

/// The batch's accounts.
const READ_ACCOUNTS: &str =
    "SELECT a.tenant_id, a.subject, a.credit_type, a.balance, a.held, a.overdraft_limit, a.max_debit_amount
     FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, c)
     CROSS JOIN LATERAL (SELECT * FROM accounts WHERE tenant_id = k.t AND subject = k.s AND credit_type = k.c
                         OFFSET 0) a";

/// The live lots of the batch's accounts, and the lots (drained or not) its refunds return to.
const READ_LOTS: &str =
    "SELECT l.id, l.tenant_id, l.subject, l.credit_type, l.priority, l.expires_at, l.created_at, l.remaining
     FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, c)
     CROSS JOIN LATERAL (SELECT * FROM lots WHERE tenant_id = k.t AND subject = k.s AND credit_type = k.c
                           AND remaining > 0 OFFSET 0) l
     UNION
     SELECT l.id, l.tenant_id, l.subject, l.credit_type, l.priority, l.expires_at, l.created_at, l.remaining
     FROM unnest($4::text[]) AS r(id)
     CROSS JOIN LATERAL (SELECT * FROM lots WHERE id = r.id OFFSET 0) l";

/// How much of each debit the batch refunds has been refunded already.
const READ_REFUNDED: &str = "SELECT r.id, COALESCE((SELECT SUM(amount) FROM events WHERE refund_of = r.id), 0)::BIGINT
     FROM unnest($1::text[]) AS r(id)";

/// Where a command lands: an account, or a refusal decided before any account is involved.
/// One per command of a batch, built once; boxing would add an allocation per command.
#[allow(clippy::large_enum_variant)]
enum Target {
    Account(AccountKey, Option<DebitRecord>),
    Refused(Refusal),
}

/// Runs `commands` as one transaction. `Ok` holds one result per command (a per-command
/// `Err` is an invariant failure of that command alone); `Err` means nothing was committed.
pub(crate) async fn run_batch(
    pool: &Pool,
    now: Timestamp,
    commands: &[&Command],
) -> Result<Vec<Result<Execution, StoreError>>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;

    let refund_ids: Vec<&str> = commands
        .iter()
        .filter_map(|c| match &c.kind {
            CommandKind::Refund { refund_of, .. } => Some(refund_of.as_str()),
            _ => None,
        })
        .collect();
    let debits = load_events(&tx, &refund_ids).await?;
    let mut targets: Vec<Target> = commands.iter().map(|c| target(c, &debits)).collect();
    let keys: BTreeSet<AccountKey> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Account(key, _) => Some(key.clone()),
            Target::Refused(_) => None,
        })
        .collect();
    lock_accounts(&tx, &keys).await?;

    let (kt, ks, kc) = key_columns(&keys);
    let idem_tenants: Vec<&str> = commands.iter().map(|c| c.tenant_id.as_str()).collect();
    let idem_keys: Vec<&str> = commands.iter().map(|c| c.idempotency_key.as_str()).collect();
    let lot_ids: Vec<&str> = debits
        .values()
        .flat_map(|e| e.allocations.iter().filter_map(|a| a.lot_id.as_ref().map(EventId::as_str)))
        .collect();
    let read_params_0: [&(dyn ToSql + Sync); 2] = [&idem_tenants, &idem_keys];
    let read_params_1: [&(dyn ToSql + Sync); 3] = [&kt, &ks, &kc];
    let read_params_2: [&(dyn ToSql + Sync); 4] = [&kt, &ks, &kc, &lot_ids];
    let read_params_3: [&(dyn ToSql + Sync); 1] = [&refund_ids];
    let (idem_rows, request_rows, account_rows, lot_rows, refunded_rows) = tokio::try_join!(
        query(&tx, READ_IDEMPOTENCY, &read_params_0),
        query(&tx, READ_REQUEST_KEYS, &read_params_0),
        query(&tx, READ_ACCOUNTS, &read_params_1),
        query(&tx, READ_LOTS, &read_params_2),
        query(&tx, READ_REFUNDED, &read_params_3),
    )?;

    let mut stored = stored_outcomes(&idem_rows)?;
    let request_keys = request_keys(&request_rows)?;
    let mut states = account_states(&account_rows, &lot_rows)?;
    let before = states.clone();
    let mut refunded: HashMap<String, u64> =
        refunded_rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect();

    let mut results = Vec::with_capacity(commands.len());
    let mut writes = Writes::default();
    for (cmd, target) in commands.iter().zip(targets.iter_mut()) {
        let slot = (cmd.tenant_id.clone(), cmd.idempotency_key.clone());
        match decide_idempotency(stored.get(&slot), &cmd.fingerprint) {
            IdempotencyDecision::Replay(outcome) => {
                results.push(Ok(Execution::Replayed(outcome)));
                continue;
            }
            IdempotencyDecision::KeyReusedWithDifferentRequest => {
                results.push(Ok(Execution::KeyReusedWithDifferentRequest));
                continue;
            }
            IdempotencyDecision::Fresh if request_keys.contains(&slot) => {
                results.push(Ok(Execution::KeyReusedWithDifferentRequest));
                continue;
            }
            IdempotencyDecision::Fresh => {}
        }
        let outcome = match target {
            Target::Refused(refusal) => Outcome::Refused(refusal.clone()),
            Target::Account(key, debit) => {
                if let Some(debit) = debit.as_mut() {
                    debit.refunded = refunded.get(debit.event.id.as_str()).copied().unwrap_or(0);
                }
                let state = states.entry(key.clone()).or_default();
                match crate::apply::apply(key, state, cmd, debit.as_ref(), now) {
                    Ok(applied) => {
                        *state = applied.state;
                        if let (CommandKind::Refund { refund_of, .. }, Outcome::Applied(a)) =
                            (&cmd.kind, &applied.outcome)
                        {
                            *refunded.entry(refund_of.to_string()).or_default() += a.event.amount;
                        }
                        if !applied.events.is_empty() {
                            writes.accounts.insert(key.clone());
                        }
                        writes.events.extend(applied.events);
                        applied.outcome
                    }
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                }
            }
        };
        stored.insert(slot, StoredOutcome { fingerprint: cmd.fingerprint, outcome: outcome.clone() });
        writes.idempotency.push((*cmd, outcome.clone()));
        results.push(Ok(Execution::Fresh(outcome)));
    }
    writes.flush(&tx, &before, &states, now).await?;
    tx.commit().await?;
    Ok(results)
}

fn target(cmd: &Command, debits: &HashMap<String, Event>) -> Target {
    let refunded = match &cmd.kind {
        CommandKind::Refund { refund_of, .. } => debits.get(refund_of.as_str()),
        _ => None,
    };
    match crate::apply::target(cmd, refunded) {
        Ok((key, debit)) => Target::Account(key, debit),
        Err(refusal) => Target::Refused(refusal),
    }
}

pub(crate) async fn load_events(tx: &Tx<'_>, ids: &[&str]) -> Result<HashMap<String, Event>, StoreError> {
    let mut events = HashMap::new();
    if ids.is_empty() {
        return Ok(events);
    }
    for row in query(tx, READ_EVENTS, &[&ids]).await? {
        let event = event_from_row(row.get(0), row.get(1))?;
        events.insert(event.id.to_string(), event);
    }
    Ok(events)
}

fn key_columns(keys: &BTreeSet<AccountKey>) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let tenants = keys.iter().map(|k| k.tenant_id.as_str()).collect();
    let subjects = keys.iter().map(|k| k.subject.as_str()).collect();
    let types = keys.iter().map(|k| k.credit_type.as_str()).collect();
    (tenants, subjects, types)
}

/// The (tenant, key) pairs of `READ_REQUEST_KEYS` rows.
fn request_keys(rows: &[Row]) -> Result<HashSet<(TenantId, IdempotencyKey)>, StoreError> {
    rows.iter()
        .map(|row| {
            let tenant = TenantId::parse(row.get(0)).map_err(corrupt("request key tenant"))?;
            Ok((tenant, IdempotencyKey::parse(row.get(1)).map_err(corrupt("request key"))?))
        })
        .collect()
}

fn stored_outcomes(rows: &[Row]) -> Result<HashMap<(TenantId, IdempotencyKey), StoredOutcome>, StoreError> {
    let mut stored = HashMap::new();
    for row in rows {
        let tenant = TenantId::parse(row.get(0)).map_err(corrupt("idempotency tenant"))?;
        let key = IdempotencyKey::parse(row.get(1)).map_err(corrupt("idempotency key"))?;
        let fingerprint: Vec<u8> = row.get(2);
        let fingerprint = fingerprint.try_into().map_err(|_| StoreError::Corrupt("fingerprint length".into()))?;
        let refusal: Option<String> = row.get(3);
        let body: Option<String> = row.get(6);
        let outcome = match (refusal, body) {
            (Some(refusal), _) => Outcome::Refused(
                serde_json::from_str(&refusal).map_err(|e| StoreError::Corrupt(format!("stored refusal: {e}")))?,
            ),
            (None, Some(body)) => {
                let event = event_from_row(tenant.as_str(), &body)?;
                let (balance, available): (Option<i64>, Option<i64>) = (row.get(4), row.get(5));
                let (balance, available) =
                    balance.zip(available).ok_or_else(|| StoreError::Corrupt("stored balance".into()))?;
                Outcome::Applied(Box::new(Applied { event, balance, available }))
            }
            (None, None) => return Err(StoreError::Corrupt("idempotency record without outcome".into())),
        };
        stored.insert(
            (tenant, key),
            StoredOutcome { fingerprint: licenseseal_ledger::Fingerprint(fingerprint), outcome },
        );
    }
    Ok(stored)
}

pub(crate) fn account_key(tenant: &str, subject: &str, credit_type: &str) -> Result<AccountKey, StoreError> {
    Ok(AccountKey {
        tenant_id: TenantId::parse(tenant).map_err(corrupt("account tenant"))?,
        subject: SubjectId::parse(subject).map_err(corrupt("account subject"))?,
        credit_type: CreditType::parse(credit_type).map_err(corrupt("account credit type"))?,
    })
}

pub(crate) fn account_state_from(row: &Row) -> AccountState {
    AccountState {
        balance: row.get(3),
        held: row.get(4),
        policy: AccountPolicy {
            overdraft_limit: row.get::<_, i64>(5) as u64,
            max_debit_amount: row.get::<_, Option<i64>>(6).map(|v| v as u64),
        },
        lots: Vec::new(),
    }
}

pub(crate) fn lot_from(row: &Row) -> Result<Lot, StoreError> {
    Ok(Lot {
        id: EventId::parse(row.get(0)).map_err(corrupt("lot id"))?,
        priority: row.get(4),
        expires_at: row.get::<_, Option<i64>>(5).map(Timestamp::from_micros),
        created_at: Timestamp::from_micros(row.get(6)),
        remaining: row.get::<_, i64>(7) as u64,
    })
}

fn account_states(accounts: &[Row], lots: &[Row]) -> Result<HashMap<AccountKey, AccountState>, StoreError> {
    let mut states = HashMap::new();
    for row in accounts {
        states.insert(account_key(row.get(0), row.get(1), row.get(2))?, account_state_from(row));
    }
    for row in lots {
        let key = account_key(row.get(1), row.get(2), row.get(3))?;
        states.entry(key).or_insert_with(AccountState::default).lots.push(lot_from(row)?);
    }
    Ok(states)
}

/// Everything a batch writes, flushed in one pipelined round trip.
#[derive(Default)]
struct Writes<'a> {
    events: Vec<Event>,
    accounts: BTreeSet<AccountKey>,
    idempotency: Vec<(&'a Command, Outcome)>,
}

impl Writes<'_> {
    async fn flush(
        &self,
        tx: &Tx<'_>,
        before: &HashMap<AccountKey, AccountState>,
        after: &HashMap<AccountKey, AccountState>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let empty = AccountState::default();
        let bodies = self.events.iter().map(event_body).collect::<Result<Vec<_>, _>>()?;
        let ev = |f: fn(&Event) -> &str| self.events.iter().map(f).collect::<Vec<&str>>();
        let ev_ids = ev(|e| e.id.as_str());
        let ev_tenants = ev(|e| e.tenant_id.as_ref().map_or("", TenantId::as_str));
        let ev_subjects = ev(|e| e.subject.as_str());
        let ev_types = ev(|e| e.credit_type.as_str());
        let ev_kinds = ev(|e| e.kind.as_str());
        let ev_amounts: Vec<i64> = self.events.iter().map(|e| e.amount as i64).collect();
        let ev_deltas: Vec<i64> = self.events.iter().map(|e| e.delta).collect();
        let ev_after: Vec<i64> = self.events.iter().map(|e| e.balance_after).collect();
        let ev_at: Vec<i64> = self.events.iter().map(|e| e.created_at.micros()).collect();
        let ev_refund_of: Vec<Option<&str>> =
            self.events.iter().map(|e| e.refund_of.as_ref().map(EventId::as_str)).collect();

        let mut lots: Vec<(&AccountKey, &Lot)> = Vec::new();
        for key in &self.accounts {
            let (b, a) = (before.get(key).unwrap_or(&empty), after.get(key).unwrap_or(&empty));
            lots.extend(crate::apply::changed_lots(b, a).map(|lot| (key, lot)));
        }
        let lot_ids: Vec<&str> = lots.iter().map(|(_, l)| l.id.as_str()).collect();
        let lot_t: Vec<&str> = lots.iter().map(|(k, _)| k.tenant_id.as_str()).collect();
        let lot_s: Vec<&str> = lots.iter().map(|(k, _)| k.subject.as_str()).collect();
        let lot_c: Vec<&str> = lots.iter().map(|(k, _)| k.credit_type.as_str()).collect();
        let lot_p: Vec<i32> = lots.iter().map(|(_, l)| l.priority).collect();
        let lot_exp: Vec<Option<i64>> = lots.iter().map(|(_, l)| l.expires_at.map(Timestamp::micros)).collect();
        let lot_at: Vec<i64> = lots.iter().map(|(_, l)| l.created_at.micros()).collect();
        let lot_rem: Vec<i64> = lots.iter().map(|(_, l)| l.remaining as i64).collect();

        let accounts: Vec<(&AccountKey, &AccountState)> =
            self.accounts.iter().map(|k| (k, after.get(k).unwrap_or(&empty))).collect();
        let ac_t: Vec<&str> = accounts.iter().map(|(k, _)| k.tenant_id.as_str()).collect();
        let ac_s: Vec<&str> = accounts.iter().map(|(k, _)| k.subject.as_str()).collect();
        let ac_c: Vec<&str> = accounts.iter().map(|(k, _)| k.credit_type.as_str()).collect();
        let ac_bal: Vec<i64> = accounts.iter().map(|(_, s)| s.balance).collect();
        let ac_held: Vec<i64> = accounts.iter().map(|(_, s)| s.held).collect();
        let ac_od: Vec<i64> = accounts.iter().map(|(_, s)| s.policy.overdraft_limit as i64).collect();
        let ac_max: Vec<Option<i64>> =
            accounts.iter().map(|(_, s)| s.policy.max_debit_amount.map(|v| v as i64)).collect();

        let mut id_t = Vec::new();
        let mut id_k = Vec::new();
        let mut id_fp = Vec::new();
        let mut id_refusal = Vec::new();
        let mut id_event = Vec::new();
        let mut id_bal = Vec::new();
        let mut id_avail = Vec::new();
        for (cmd, outcome) in &self.idempotency {
            id_t.push(cmd.tenant_id.as_str());
            id_k.push(cmd.idempotency_key.as_str());
            id_fp.push(cmd.fingerprint.0.to_vec());
            match outcome {
                Outcome::Refused(r) => {
                    let json =
                        serde_json::to_string(r).map_err(|e| StoreError::Corrupt(format!("refusal encode: {e}")))?;
                    id_refusal.push(Some(json));
                    id_event.push(None);
                    id_bal.push(None);
                    id_avail.push(None);
                }
                Outcome::Applied(a) => {
                    id_refusal.push(None);
                    id_event.push(Some(a.event.id.as_str()));
                    id_bal.push(Some(a.balance));
                    id_avail.push(Some(a.available));
                }
            }
        }
        let now_us = now.micros();
        let write_params_0: [&(dyn ToSql + Sync); 11] = [
            &ev_ids,
            &ev_tenants,
            &ev_subjects,
            &ev_types,
            &ev_kinds,
            &ev_amounts,
            &ev_deltas,
            &ev_after,
            &ev_at,
            &ev_refund_of,
            &bodies,
        ];
        let write_params_1: [&(dyn ToSql + Sync); 8] =
            [&lot_ids, &lot_t, &lot_s, &lot_c, &lot_p, &lot_exp, &lot_at, &lot_rem];
        let write_params_2: [&(dyn ToSql + Sync); 8] =
            [&ac_t, &ac_s, &ac_c, &ac_bal, &ac_held, &ac_od, &ac_max, &now_us];
        let write_params_3: [&(dyn ToSql + Sync); 8] =
            [&id_t, &id_k, &id_fp, &id_refusal, &id_event, &id_bal, &id_avail, &now_us];
        let (_, _, _, inserted) = tokio::try_join!(
            execute(tx,
                "INSERT INTO events (id, tenant_id, subject, credit_type, kind, amount, delta, balance_after, created_at, refund_of, body)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                                      $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[])",
                &write_params_0,
            ),
            execute(tx,
                "INSERT INTO lots (id, tenant_id, subject, credit_type, priority, expires_at, created_at, remaining)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[],
                                      $7::bigint[], $8::bigint[])
                 ON CONFLICT (id) DO UPDATE SET remaining = EXCLUDED.remaining",
                &write_params_1,
            ),
            execute(tx,
                "INSERT INTO accounts (tenant_id, subject, credit_type, balance, held, overdraft_limit, max_debit_amount, created_at, updated_at)
                 SELECT t, s, c, b, h, o, m, $8, $8
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
                   AS u(t, s, c, b, h, o, m)
                 ON CONFLICT (tenant_id, subject, credit_type) DO UPDATE SET
                   balance = EXCLUDED.balance, held = EXCLUDED.held, overdraft_limit = EXCLUDED.overdraft_limit,
                   max_debit_amount = EXCLUDED.max_debit_amount, updated_at = EXCLUDED.updated_at",
                &write_params_2,
            ),
            execute(tx,
                "INSERT INTO idempotency (tenant_id, key, fingerprint, refusal, event_id, balance, available, created_at)
                 SELECT t, k, f, r, e, b, a, $8
                 FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
                   AS u(t, k, f, r, e, b, a)
                 ON CONFLICT (tenant_id, key) DO NOTHING",
                &write_params_3,
            ),
        )?;
        if inserted as usize != self.idempotency.len() {
            // Another instance stored one of these keys for a request on another account:
            // start over, and the retry will replay its outcome.
            return Err(StoreError::Contention("an idempotency key was stored concurrently".into()));
        }
        Ok(())
    }
}
