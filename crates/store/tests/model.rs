//! Model-based property test of both stores.
//!
//! Random sequences of ledger operations run against a real store (with a `ManualClock` the
//! test moves) and against a small reference model written here from the documented rules,
//! independently of `licenseseal_ledger::decide`. Every response is compared as it comes
//! back, and at the end every account's balance, available credit and event history.
//!
//! The same test code runs on each `Backend`: `model_sqlite` on a `SqliteStore` in a temporary
//! directory, `model_postgres` on a `PgStore` in a fresh schema of the database named by
//! `LICENSESEAL_TEST_DATABASE_URL` (skipped, saying so, when that is unset).
//!
//! The rules the model follows (see `crates/ledger/src/decide.rs`):
//! - an account holds lots (id, priority, expires_at, created_at, remaining), a balance and an
//!   overdraft limit; `debt = Σ remaining − balance` is overdraft drawn and not yet repaid;
//! - touching an account first writes one expiration event per expired lot with credit left
//!   (in burn order), and again after the operation (a refund into an expired lot expires at
//!   once); a lot with `expires_at <= now` is never spendable;
//! - a grant (and a positive adjustment) first repays debt; the rest becomes a lot;
//! - a debit is allowed iff `(balance − expired unswept credit) − amount ≥ −overdraft_limit`;
//!   it burns unexpired lots by priority, then earliest expiry (never-expiring last), then
//!   oldest, then lot id, and draws the rest through the overdraft;
//! - a negative adjustment burns the same way without any limit;
//! - a refund returns at most `debit − already refunded`, walking the debit's allocations in
//!   reverse (skipping the units earlier refunds returned): lot parts go back to their lot, the
//!   overdraft part repays debt and what the debt no longer needs becomes a new lot (priority
//!   0, never expiring);
//! - an idempotency key answers its first outcome forever; reused with another request it is
//!   refused and changes nothing.

use std::fmt;
use std::sync::Arc;

use licenseseal_ledger::{
    AccountKey, Amount, Command, CommandKind, CreditType, EventId, EventKind, Fingerprint, IdempotencyKey, Outcome,
    RefusalCode, SignedAmount, SubjectId, TenantId, Timestamp,
};
use licenseseal_store::postgres::{scratch, PgConfig, PgStore};
use licenseseal_store::sqlite::{SqliteConfig, SqliteStore};
use licenseseal_store::{Clock, EventFilter, Execution, LedgerStore, ManualClock, Page, PolicyChange, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

const SUBJECTS: usize = 3;
/// 2026-01-01T00:00:00Z in microseconds.
const START_MICROS: i64 = 1_767_225_600_000_000;
const SECOND: i64 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
enum Op {
    Grant {
        subject: usize,
        amount: u64,
        priority: i32,
        expires_in_s: Option<i64>,
    },
    Debit {
        subject: usize,
        amount: u64,
    },
    /// Refund of the `pick % n`-th applied debit (an unknown event when there is none yet).
    Refund {
        pick: usize,
        amount: Option<u64>,
    },
    /// Refund naming an event id that does not exist.
    RefundUnknown {
        amount: Option<u64>,
    },
    /// Refund naming a grant event (skipped when there is none yet).
    RefundGrant {
        pick: usize,
    },
    Adjust {
        subject: usize,
        amount: i64,
    },
    Advance {
        seconds: i64,
    },
    Policy {
        subject: usize,
        overdraft_limit: u64,
    },
    /// Shuts the store down and opens it again on the same directory (SQLite) or schema
    /// (PostgreSQL): everything must have been persisted, not just cached.
    Reopen,
    /// Re-sends the `pick % n`-th ledger command sent so far (skipped when there is none):
    /// with the same request, or with the same key and a different request.
    Retry {
        pick: usize,
        same_request: bool,
    },
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let amount = |a: &Option<u64>| a.map_or("rest".to_owned(), |a| a.to_string());
        match self {
            Op::Grant { subject, amount, priority, expires_in_s } => {
                write!(f, "grant(s{subject}, {amount}, prio {priority}")?;
                match expires_in_s {
                    Some(s) => write!(f, ", expires +{s}s)"),
                    None => write!(f, ")"),
                }
            }
            Op::Debit { subject, amount } => write!(f, "debit(s{subject}, {amount})"),
            Op::Refund { pick, amount: a } => {
                write!(f, "refund(debit #{pick} mod n, {})", amount(a))
            }
            Op::RefundUnknown { amount: a } => write!(f, "refund(unknown event, {})", amount(a)),
            Op::RefundGrant { pick } => write!(f, "refund(grant #{pick} mod n)"),
            Op::Adjust { subject, amount } => write!(f, "adjust(s{subject}, {amount:+})"),
            Op::Advance { seconds } => write!(f, "advance({seconds}s)"),
            Op::Policy { subject, overdraft_limit } => write!(f, "policy(s{subject}, overdraft {overdraft_limit})"),
            Op::Reopen => write!(f, "reopen"),
            Op::Retry { pick, same_request } => {
                let how = if *same_request { "same request" } else { "different request" };
                write!(f, "retry(command #{pick} mod n, {how})")
            }
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let refund_amount = prop::option::weighted(0.6, 1..600u64);
    prop_oneof![
        4 => (0..SUBJECTS, 1..1000u64, 0..3i32, prop::option::of(0..=5i64)).prop_map(
            |(subject, amount, priority, expires_in_s)| Op::Grant {
                subject,
                amount,
                priority,
                expires_in_s,
            }
        ),
        // Mostly small debits so that many are applied; some large enough to overdraw.
        5 => (0..SUBJECTS, prop_oneof![3 => 1..300u64, 1 => 1..1500u64])
            .prop_map(|(subject, amount)| Op::Debit { subject, amount }),
        4 => (0..64usize, refund_amount.clone())
            .prop_map(|(pick, amount)| Op::Refund { pick, amount }),
        1 => refund_amount.prop_map(|amount| Op::RefundUnknown { amount }),
        1 => (0..64usize).prop_map(|pick| Op::RefundGrant { pick }),
        2 => (0..SUBJECTS, (-500..=500i64).prop_filter("non-zero", |a| *a != 0))
            .prop_map(|(subject, amount)| Op::Adjust { subject, amount }),
        2 => (1..=10i64).prop_map(|seconds| Op::Advance { seconds }),
        2 => (0..SUBJECTS, 0..=500u64).prop_map(|(subject, overdraft_limit)| Op::Policy {
            subject,
            overdraft_limit,
        }),
        1 => Just(Op::Reopen),
        2 => (0..64usize, any::<bool>())
            .prop_map(|(pick, same_request)| Op::Retry { pick, same_request }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------

/// `(lot id, amount)`; `None` is the overdraft.
type Alloc = (Option<String>, u64);

#[derive(Debug, Clone)]
struct MLot {
    id: String,
    priority: i32,
    expires_at: Option<i64>,
    created_at: i64,
    remaining: u64,
}

impl MLot {
    fn expired(&self, now: i64) -> bool {
        matches!(self.expires_at, Some(at) if at <= now)
    }

    /// Priority, then earliest expiry (never-expiring last), then oldest, then id.
    fn burn_key(&self) -> (i32, i64, i64, String) {
        (self.priority, self.expires_at.unwrap_or(i64::MAX), self.created_at, self.id.clone())
    }
}

/// What the model expects in the event log (and in `Applied.event`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct MEvent {
    kind: EventKind,
    amount: u64,
    delta: i64,
    balance_after: i64,
    allocations: Vec<Alloc>,
}

#[derive(Debug, Clone, Default)]
struct MAccount {
    balance: i64,
    overdraft_limit: u64,
    lots: Vec<MLot>,
    log: Vec<MEvent>,
}

impl MAccount {
    fn debt(&self) -> u64 {
        let credit: i64 = self.lots.iter().map(|l| l.remaining as i64).sum();
        let debt = credit - self.balance;
        assert!(debt >= 0, "model invariant: negative debt in {self:?}");
        debt as u64
    }

    fn expired_pending(&self, now: i64) -> i64 {
        self.lots.iter().filter(|l| l.expired(now)).map(|l| l.remaining as i64).sum()
    }

    fn available(&self, now: i64) -> i64 {
        self.balance - self.expired_pending(now)
    }

    /// Expires every expired lot with credit left, in burn order.
    fn sweep(&mut self, now: i64) {
        let mut expired: Vec<&mut MLot> = self.lots.iter_mut().filter(|l| l.remaining > 0 && l.expired(now)).collect();
        expired.sort_by_key(|l| l.burn_key());
        for lot in expired {
            let amount = std::mem::take(&mut lot.remaining);
            self.balance -= amount as i64;
            self.log.push(MEvent {
                kind: EventKind::Expiration,
                amount,
                delta: -(amount as i64),
                balance_after: self.balance,
                allocations: vec![(Some(lot.id.clone()), amount)],
            });
        }
    }

    /// Takes `amount` from unexpired lots in burn order, the rest from the overdraft.
    /// Does not touch the balance.
    fn burn(&mut self, now: i64, amount: u64) -> Vec<Alloc> {
        let mut order: Vec<&mut MLot> = self.lots.iter_mut().filter(|l| l.remaining > 0 && !l.expired(now)).collect();
        order.sort_by_key(|l| l.burn_key());
        let mut left = amount;
        let mut allocations = Vec::new();
        for lot in order {
            if left == 0 {
                break;
            }
            let take = lot.remaining.min(left);
            lot.remaining -= take;
            left -= take;
            allocations.push((Some(lot.id.clone()), take));
        }
        if left > 0 {
            allocations.push((None, left));
        }
        allocations
    }

    /// Adds `amount` of credit: debt first, the rest onto `lot`. Updates the balance.
    fn add_credit(&mut self, mut lot: MLot, amount: u64) -> Vec<Alloc> {
        let repaid = self.debt().min(amount);
        lot.remaining = amount - repaid;
        self.lots.push(lot);
        self.balance += amount as i64;
        if repaid > 0 {
            vec![(None, repaid)]
        } else {
            Vec::new()
        }
    }
}

#[derive(Debug, Clone)]
struct MDebit {
    id: String,
    subject: usize,
    amount: u64,
    refunded: u64,
    allocations: Vec<Alloc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Applied { main: MEvent, balance: i64, available: i64 },
    Refused { code: RefusalCode, available: Option<i64> },
}

#[derive(Debug, Default)]
struct Model {
    accounts: Vec<MAccount>,
    debits: Vec<MDebit>,
    now: i64,
}

impl Model {
    fn new(now: i64) -> Self {
        Model { accounts: vec![MAccount::default(); SUBJECTS], debits: Vec::new(), now }
    }

    /// Records the main event of an applied operation, sweeps again, and reports it.
    fn finish(&mut self, subject: usize, main: MEvent) -> Expect {
        let now = self.now;
        let acc = &mut self.accounts[subject];
        acc.log.push(main.clone());
        acc.sweep(now);
        Expect::Applied { main, balance: acc.balance, available: acc.available(now) }
    }

    fn grant(&mut self, subject: usize, amount: u64, priority: i32, expires_at: Option<i64>, id: &str) -> Expect {
        let now = self.now;
        let acc = &mut self.accounts[subject];
        acc.sweep(now);
        let lot = MLot { id: id.to_owned(), priority, expires_at, created_at: now, remaining: 0 };
        let allocations = acc.add_credit(lot, amount);
        let main =
            MEvent { kind: EventKind::Grant, amount, delta: amount as i64, balance_after: acc.balance, allocations };
        self.finish(subject, main)
    }

    fn debit(&mut self, subject: usize, amount: u64, id: &str) -> Expect {
        let now = self.now;
        let acc = &mut self.accounts[subject];
        acc.sweep(now);
        let available = acc.available(now);
        if available - (amount as i64) < -(acc.overdraft_limit as i64) {
            return Expect::Refused { code: RefusalCode::InsufficientCredits, available: Some(available) };
        }
        let allocations = acc.burn(now, amount);
        acc.balance -= amount as i64;
        let main = MEvent {
            kind: EventKind::Debit,
            amount,
            delta: -(amount as i64),
            balance_after: acc.balance,
            allocations: allocations.clone(),
        };
        self.debits.push(MDebit { id: id.to_owned(), subject, amount, refunded: 0, allocations });
        self.finish(subject, main)
    }

    fn refund(&mut self, debit: usize, amount: Option<u64>, id: &str) -> Expect {
        let now = self.now;
        let d = &self.debits[debit];
        let subject = d.subject;
        let acc = &mut self.accounts[subject];
        acc.sweep(now);
        let rest = d.amount - d.refunded;
        let amount = amount.unwrap_or(rest);
        if amount == 0 || amount > rest {
            return Expect::Refused { code: RefusalCode::RefundExceedsDebit, available: None };
        }
        // Walk the debit's allocations backwards; earlier refunds took the first units.
        let mut skip = d.refunded;
        let mut left = amount;
        let mut parts: Vec<Alloc> = Vec::new();
        for (lot, drawn) in d.allocations.iter().rev() {
            let open = drawn.saturating_sub(skip);
            skip = skip.saturating_sub(*drawn);
            let take = open.min(left);
            if take > 0 {
                parts.push((lot.clone(), take));
                left -= take;
            }
        }
        assert_eq!(left, 0, "model: debit allocations cover the debit");
        let mut new_credit = 0;
        for (lot_id, part) in &parts {
            match lot_id {
                Some(lot_id) => {
                    let lot = acc
                        .lots
                        .iter_mut()
                        .find(|l| l.id == *lot_id)
                        .expect("model: a debit only draws from its account's lots");
                    lot.remaining += part;
                    acc.balance += *part as i64;
                }
                None => {
                    let repay = acc.debt().min(*part);
                    acc.balance += repay as i64;
                    new_credit += part - repay;
                }
            }
        }
        if new_credit > 0 {
            acc.lots.push(MLot {
                id: id.to_owned(),
                priority: 0,
                expires_at: None,
                created_at: now,
                remaining: new_credit,
            });
            acc.balance += new_credit as i64;
        }
        self.debits[debit].refunded += amount;
        let main = MEvent {
            kind: EventKind::Refund,
            amount,
            delta: amount as i64,
            balance_after: acc.balance,
            allocations: parts,
        };
        self.finish(subject, main)
    }

    fn adjust(&mut self, subject: usize, delta: i64, id: &str) -> Expect {
        let now = self.now;
        let acc = &mut self.accounts[subject];
        acc.sweep(now);
        let magnitude = delta.unsigned_abs();
        let allocations = if delta > 0 {
            let lot = MLot { id: id.to_owned(), priority: 0, expires_at: None, created_at: now, remaining: 0 };
            acc.add_credit(lot, magnitude)
        } else {
            let allocations = acc.burn(now, magnitude);
            acc.balance += delta;
            allocations
        };
        let main =
            MEvent { kind: EventKind::Adjustment, amount: magnitude, delta, balance_after: acc.balance, allocations };
        self.finish(subject, main)
    }
}

// ---------------------------------------------------------------------------------------------
// Harness: the store and the model side by side
// ---------------------------------------------------------------------------------------------

/// A ledger command sent fresh, kept for retries.
struct Sent {
    key: IdempotencyKey,
    kind: CommandKind,
    outcome: Outcome,
}

/// Which store the test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

const DATABASE_URL_VAR: &str = "LICENSESEAL_TEST_DATABASE_URL";

/// The PostgreSQL test database, when one is configured.
fn database_url() -> Option<String> {
    std::env::var(DATABASE_URL_VAR).ok().filter(|u| !u.is_empty())
}

/// Where a store lives, so that `reopen` finds the same data again.
enum Place {
    Sqlite {
        dir: tempfile::TempDir,
        config: SqliteConfig,
    },
    Postgres {
        /// The test database's URL with this case's schema on the search path.
        url: String,
        schema: String,
        /// A connection to the test database outside the store, to drop the schema with.
        /// The database the schema lives in.
        base: String,
    },
}

impl Place {
    /// A new, empty place. `tiny_cache` only applies to SQLite.
    async fn new(backend: Backend, tiny_cache: bool) -> Place {
        match backend {
            Backend::Sqlite => Place::Sqlite {
                dir: tempfile::tempdir().expect("temp dir"),
                config: SqliteConfig {
                    readers_max: 2,
                    account_cache_max: if tiny_cache { 1 } else { 100_000 },
                    ..SqliteConfig::default()
                },
            },
            Backend::Postgres => {
                let base = database_url().unwrap_or_else(|| panic!("{DATABASE_URL_VAR} is not set"));
                let (schema, url) = scratch::create(&base, "ls_test")
                    .await
                    .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR} is set but unusable: {e}"));
                Place::Postgres { url, schema, base }
            }
        }
    }

    /// Opens the store here (again).
    async fn open(&self, clock: Arc<ManualClock>) -> Result<Box<dyn LedgerStore>, StoreError> {
        Ok(match self {
            Place::Sqlite { dir, config } => Box::new(SqliteStore::open(dir.path(), clock, config.clone())?),
            Place::Postgres { url, .. } => Box::new(PgStore::connect(url, clock, PgConfig::default()).await?),
        })
    }

    /// Removes what the case left behind (the temporary directory goes when dropped).
    async fn remove(self) {
        if let Place::Postgres { schema, base, .. } = self {
            if let Err(e) = scratch::drop(&base, &schema).await {
                eprintln!("could not drop test schema {schema}: {e}");
            }
        }
    }
}

struct Harness {
    place: Place,
    /// `None` only between closing and reopening.
    store: Option<Box<dyn LedgerStore>>,
    clock: Arc<ManualClock>,
    tenant: TenantId,
    model: Model,
    sent: Vec<Sent>,
    grants: Vec<EventId>,
    counter: u64,
}

fn subject_id(i: usize) -> SubjectId {
    SubjectId::parse(&format!("s{i}")).expect("valid subject")
}

fn amount(a: u64) -> Amount {
    Amount::new(a).expect("valid amount")
}

fn unknown_event() -> EventId {
    EventId::from_uuid(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_dead_beef_0001))
}

/// The canonical request a fingerprint is taken of.
fn canonical(kind: &CommandKind) -> String {
    let opt = |a: &Option<Amount>| a.map_or("-".to_owned(), |a| a.to_string());
    match kind {
        CommandKind::Grant { subject, credit_type, amount, priority, expires_at, .. } => format!(
            "grant|{subject}|{credit_type}|{amount}|{priority}|{}",
            expires_at.map_or("-".to_owned(), |t| t.to_string())
        ),
        CommandKind::Debit { subject, credit_type, amount, .. } => format!("debit|{subject}|{credit_type}|{amount}"),
        CommandKind::Refund { refund_of, amount, .. } => format!("refund|{refund_of}|{}", opt(amount)),
        CommandKind::Adjust { subject, credit_type, amount, reason, .. } => {
            format!("adjust|{subject}|{credit_type}|{}|{reason}", amount.get())
        }
    }
}

/// The same kind of command with a different body.
fn tweaked(kind: &CommandKind) -> CommandKind {
    let mut kind = kind.clone();
    match &mut kind {
        CommandKind::Grant { amount: a, .. } | CommandKind::Debit { amount: a, .. } => {
            *a = amount(a.get() + 1);
        }
        CommandKind::Refund { amount: a, .. } => {
            *a = Some(amount(a.map_or(1, |a| a.get() + 1)));
        }
        CommandKind::Adjust { amount: a, .. } => {
            let v = a.get() + 1;
            *a = SignedAmount::new(if v == 0 { 1 } else { v }).expect("valid adjustment");
        }
    }
    kind
}

fn allocations(event: &licenseseal_ledger::Event) -> Vec<Alloc> {
    event.allocations.iter().map(|a| (a.lot_id.as_ref().map(|id| id.as_str().to_owned()), a.amount)).collect()
}

fn mevent(event: &licenseseal_ledger::Event) -> MEvent {
    MEvent {
        kind: event.kind,
        amount: event.amount,
        delta: event.delta,
        balance_after: event.balance_after,
        allocations: allocations(event),
    }
}

fn store_err(e: StoreError) -> TestCaseError {
    TestCaseError::fail(format!("store error: {e}"))
}

impl Harness {
    /// A fresh store on `backend`. With `tiny_cache` (SQLite only) the writer forgets every
    /// account but the last one touched, so most operations load their account from the
    /// database.
    async fn open(backend: Backend, tiny_cache: bool) -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::from_micros(START_MICROS)));
        let place = Place::new(backend, tiny_cache).await;
        let store = place.open(clock.clone()).await.unwrap_or_else(|e| panic!("open the {backend:?} store: {e}"));
        Harness {
            place,
            store: Some(store),
            clock,
            tenant: TenantId::from_uuid(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0042)),
            model: Model::new(START_MICROS),
            sent: Vec::new(),
            grants: Vec::new(),
            counter: 0,
        }
    }

    fn store(&self) -> &dyn LedgerStore {
        self.store.as_deref().expect("the store is open")
    }

    /// Shuts the store down and drops it.
    async fn close(&mut self) {
        if let Some(store) = self.store.take() {
            store.shutdown().await;
        }
    }

    fn key(&self, subject: usize) -> AccountKey {
        AccountKey { tenant_id: self.tenant.clone(), subject: subject_id(subject), credit_type: CreditType::default() }
    }

    fn command(&mut self, key: IdempotencyKey, kind: CommandKind) -> (Command, String) {
        self.counter += 1;
        let correlation_id = format!("corr-{}", self.counter);
        let fingerprint = Fingerprint::of(&[canonical(&kind).as_bytes()]);
        let command = Command {
            tenant_id: self.tenant.clone(),
            idempotency_key: key,
            fingerprint,
            correlation_id: correlation_id.clone(),
            kind,
        };
        (command, correlation_id)
    }

    /// Sends a fresh command, then runs `model` with the id of the event the store created
    /// (a placeholder when it refused), and compares the two.
    async fn fresh(
        &mut self,
        kind: CommandKind,
        model: impl FnOnce(&mut Model, &str) -> Expect,
    ) -> Result<(), TestCaseError> {
        let key = IdempotencyKey::parse(&format!("key-{}", self.sent.len())).expect("valid key");
        let (command, correlation_id) = self.command(key.clone(), kind.clone());
        let outcome = match self.store().execute(command).await.map_err(store_err)? {
            Execution::Fresh(outcome) => outcome,
            other => {
                return Err(TestCaseError::fail(format!("a new idempotency key was not decided fresh: {other:?}")))
            }
        };
        let id = match &outcome {
            Outcome::Applied(a) => a.event.id.as_str().to_owned(),
            Outcome::Refused(_) => "evt_refused".to_owned(),
        };
        let expect = model(&mut self.model, &id);
        self.check(&kind, &outcome, &expect, &correlation_id)?;
        if let (CommandKind::Grant { .. }, Outcome::Applied(a)) = (&kind, &outcome) {
            self.grants.push(a.event.id.clone());
        }
        self.sent.push(Sent { key, kind, outcome });
        Ok(())
    }

    fn check(
        &self,
        kind: &CommandKind,
        outcome: &Outcome,
        expect: &Expect,
        correlation_id: &str,
    ) -> Result<(), TestCaseError> {
        match (outcome, expect) {
            (Outcome::Applied(applied), Expect::Applied { main, balance, available }) => {
                let event = &applied.event;
                prop_assert_eq!(&mevent(event), main, "main event of {:?}", kind);
                prop_assert_eq!(applied.balance, *balance, "balance after {:?}", kind);
                prop_assert_eq!(applied.available, *available, "available after {:?}", kind);
                prop_assert_eq!(event.created_at.micros(), self.model.now);
                prop_assert_eq!(&event.correlation_id, correlation_id);
                prop_assert_eq!(event.tenant_id.as_ref(), Some(&self.tenant));
                match kind {
                    CommandKind::Grant { subject, priority, expires_at, .. } => {
                        prop_assert_eq!(&event.subject, subject);
                        prop_assert_eq!(event.priority, Some(*priority));
                        prop_assert_eq!(event.expires_at, *expires_at);
                    }
                    CommandKind::Debit { subject, .. } => {
                        prop_assert_eq!(&event.subject, subject);
                    }
                    CommandKind::Refund { refund_of, .. } => {
                        prop_assert_eq!(event.refund_of.as_ref(), Some(refund_of));
                    }
                    CommandKind::Adjust { subject, reason, .. } => {
                        prop_assert_eq!(&event.subject, subject);
                        prop_assert_eq!(event.reason.as_ref(), Some(reason));
                    }
                }
            }
            (Outcome::Refused(refusal), Expect::Refused { code, available }) => {
                prop_assert_eq!(refusal.code, *code, "refusal of {:?}", kind);
                prop_assert_eq!(refusal.available, *available, "refusal of {:?}", kind);
                prop_assert_eq!(&refusal.correlation_id, correlation_id);
            }
            (outcome, expect) => {
                prop_assert!(false, "{:?}\n  store: {:?}\n  model: {:?}", kind, outcome, expect);
            }
        }
        Ok(())
    }

    async fn refund_unknown(&mut self, a: Option<u64>) -> Result<(), TestCaseError> {
        let kind = CommandKind::Refund {
            refund_of: unknown_event(),
            amount: a.map(amount),
            bound_subject: None,
            metadata: None,
        };
        self.fresh(kind, |_, _| Expect::Refused { code: RefusalCode::EventNotFound, available: None }).await
    }

    async fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.model.now;
        match *op {
            Op::Grant { subject, amount: a, priority, expires_in_s } => {
                let expires_at = expires_in_s.map(|s| now + s * SECOND);
                let kind = CommandKind::Grant {
                    subject: subject_id(subject),
                    credit_type: CreditType::default(),
                    amount: amount(a),
                    priority,
                    expires_at: expires_at.map(Timestamp::from_micros),
                    metadata: None,
                };
                self.fresh(kind, |m, id| m.grant(subject, a, priority, expires_at, id)).await
            }
            Op::Debit { subject, amount: a } => {
                let kind = CommandKind::Debit {
                    subject: subject_id(subject),
                    credit_type: CreditType::default(),
                    amount: amount(a),
                    metadata: None,
                };
                self.fresh(kind, |m, id| m.debit(subject, a, id)).await
            }
            Op::Refund { pick, amount: a } => {
                let n = self.model.debits.len();
                if n == 0 {
                    return self.refund_unknown(a).await;
                }
                let debit = pick % n;
                let kind = CommandKind::Refund {
                    refund_of: EventId::parse(&self.model.debits[debit].id).expect("event id"),
                    amount: a.map(amount),
                    bound_subject: None,
                    metadata: None,
                };
                self.fresh(kind, |m, id| m.refund(debit, a, id)).await
            }
            Op::RefundUnknown { amount: a } => self.refund_unknown(a).await,
            Op::RefundGrant { pick } => {
                if self.grants.is_empty() {
                    return Ok(());
                }
                let kind = CommandKind::Refund {
                    refund_of: self.grants[pick % self.grants.len()].clone(),
                    amount: None,
                    bound_subject: None,
                    metadata: None,
                };
                self.fresh(kind, |_, _| Expect::Refused { code: RefusalCode::NotADebit, available: None }).await
            }
            Op::Adjust { subject, amount: a } => {
                let kind = CommandKind::Adjust {
                    subject: subject_id(subject),
                    credit_type: CreditType::default(),
                    amount: SignedAmount::new(a).expect("valid adjustment"),
                    reason: "model test".to_owned(),
                    metadata: None,
                };
                self.fresh(kind, |m, id| m.adjust(subject, a, id)).await
            }
            Op::Advance { seconds } => {
                self.clock.advance_seconds(seconds);
                self.model.now += seconds * SECOND;
                prop_assert_eq!(self.clock.now().micros(), self.model.now);
                Ok(())
            }
            Op::Policy { subject, overdraft_limit } => {
                let change = PolicyChange { overdraft_limit: Some(overdraft_limit), max_debit_amount: None };
                let view = self.store().set_policy(self.key(subject), change).await.map_err(store_err)?;
                let acc = &mut self.model.accounts[subject];
                acc.overdraft_limit = overdraft_limit;
                // Setting a policy touches no lots: nothing is swept.
                prop_assert_eq!(view.policy.overdraft_limit, overdraft_limit);
                prop_assert_eq!(view.balance, acc.balance, "balance in set_policy view");
                prop_assert_eq!(view.available, acc.available(now), "available in view");
                Ok(())
            }
            Op::Reopen => {
                // Like a restart: the old store is shut down and gone before the new one opens.
                self.close().await;
                self.store = Some(self.place.open(self.clock.clone()).await.map_err(store_err)?);
                Ok(())
            }
            Op::Retry { pick, same_request } => {
                if self.sent.is_empty() {
                    return Ok(());
                }
                let i = pick % self.sent.len();
                let key = self.sent[i].key.clone();
                let kind = if same_request { self.sent[i].kind.clone() } else { tweaked(&self.sent[i].kind) };
                let (command, _) = self.command(key, kind);
                let execution = self.store().execute(command).await.map_err(store_err)?;
                if same_request {
                    let original = &self.sent[i].outcome;
                    match execution {
                        Execution::Replayed(outcome) => {
                            prop_assert_eq!(&outcome, original, "replay of command #{}", i);
                        }
                        other => prop_assert!(false, "retry of command #{} with the same request: {:?}", i, other),
                    }
                } else {
                    prop_assert_eq!(
                        execution,
                        Execution::KeyReusedWithDifferentRequest,
                        "retry of command #{} with another request",
                        i
                    );
                }
                Ok(())
            }
        }
    }

    /// Every account: balance, available and policy as the model has them; the event log
    /// (paged through) as the model wrote it, summing to the balance.
    async fn check_final(&self) -> Result<(), TestCaseError> {
        let now = self.model.now;
        let mut total_events = 0;
        for subject in 0..SUBJECTS {
            let acc = &self.model.accounts[subject];
            let view = self.store().account(&self.key(subject), None).await.map_err(store_err)?;
            let Some(view) = view else {
                prop_assert!(
                    acc.log.is_empty() && acc.balance == 0 && acc.overdraft_limit == 0,
                    "s{} has no account in the store but the model has {:?}",
                    subject,
                    acc
                );
                continue;
            };
            prop_assert_eq!(view.balance, acc.balance, "final balance of s{}", subject);
            prop_assert_eq!(view.available, acc.available(now), "final available of s{}", subject);
            prop_assert_eq!(view.expired_pending, acc.expired_pending(now), "final expired_pending of s{}", subject);
            prop_assert_eq!(view.held, 0);
            prop_assert_eq!(view.policy.overdraft_limit, acc.overdraft_limit);

            let filter = EventFilter {
                subject: Some(subject_id(subject)),
                credit_type: Some(CreditType::default()),
                ..EventFilter::default()
            };
            let events = self.all_events(&filter).await?;
            total_events += events.len();
            let mut running = 0i64;
            for (i, event) in events.iter().enumerate() {
                running += event.delta;
                prop_assert_eq!(
                    event.balance_after,
                    running,
                    "s{} event {} balance_after is not the running sum of deltas",
                    subject,
                    i
                );
            }
            prop_assert_eq!(running, view.balance, "s{}: Σ deltas != balance", subject);
            let log: Vec<MEvent> = events.iter().map(mevent).collect();
            prop_assert_eq!(&log, &acc.log, "event log of s{}", subject);
        }
        let all = self.all_events(&EventFilter::default()).await?;
        prop_assert_eq!(all.len(), total_events, "events outside the model's accounts");
        Ok(())
    }

    async fn all_events(&self, filter: &EventFilter) -> Result<Vec<licenseseal_ledger::Event>, TestCaseError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = Page { after, limit: 7 };
            let rows = self.store().events(&self.tenant, filter, page).await.map_err(store_err)?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            prop_assert!(after.is_none_or(|a| *last > a), "pages move forward");
            after = Some(*last);
            let full = rows.len() == page.limit as usize;
            out.extend(rows.into_iter().map(|(_, e)| e));
            if !full {
                break;
            }
        }
        Ok(out)
    }
}

async fn run_case(backend: Backend, tiny_cache: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = Harness::open(backend, tiny_cache).await;
    let mut result = Ok(());
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = h.run(op).await {
            result = Err(TestCaseError::fail(format!("op {i} {op:?}: {e}")));
            break;
        }
    }
    if result.is_ok() {
        result = h.check_final().await;
    }
    h.close().await;
    h.place.remove().await;
    result
}

/// Runs the property on `backend`: `default_cases` random cases unless `PROPTEST_CASES` says
/// otherwise (`PROPTEST_CASES=2000` for a soak).
fn check_backend(backend: Backend, default_cases: u32) {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    let config = ProptestConfig { cases, source_file: Some(file!()), ..ProptestConfig::default() };
    let tiny_cache = match backend {
        Backend::Sqlite => any::<bool>().boxed(),
        Backend::Postgres => Just(false).boxed(),
    };
    let strategy = (tiny_cache, prop::collection::vec(op_strategy(), 1..60));
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |(tiny_cache, ops)| {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        rt.block_on(run_case(backend, tiny_cache, ops))
    });
    if let Err(e) = result {
        panic!("{backend:?}: {e}\n{runner}");
    }
}

/// 64 cases by default (a few seconds in debug builds).
#[test]
fn model_sqlite() {
    check_backend(Backend::Sqlite, 64);
}

/// 24 cases by default: every operation is a round trip to the server.
#[test]
fn model_postgres() {
    if database_url().is_none() {
        eprintln!("SKIPPED: PostgreSQL variant (set {DATABASE_URL_VAR} to run it)");
        return;
    }
    check_backend(Backend::Postgres, 24);
}
