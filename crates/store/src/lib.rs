//! Persistence for LicenseSeal behind one trait, `LedgerStore`.
//!
//! The store loads the accounts and lots a command touches, hands them to the ledger core
//! (`licenseseal_ledger::decide`) and writes what the core decided in one transaction,
//! together with the idempotency record. It never decides anything itself.
//!
//! Architecture invariant: only this crate knows SQL; nothing here knows HTTP.

mod apply;
mod codec;
mod error;
mod model;
pub mod postgres;
pub mod sqlite;

use std::sync::atomic::{AtomicI64, Ordering};

pub use error::StoreError;
pub use model::*;

use licenseseal_ledger::{
    AccountKey, AccountPolicy, ClientCaId, ClientIdentityId, Command, Event, EventId, KeyId, Outcome, ProviderId,
    SigningKeyId, TenantId, Timestamp,
};

/// What happened to a ledger command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    /// The command was decided now; the outcome is stored under its idempotency key.
    Fresh(Outcome),
    /// The key was used before for the same request: its stored outcome.
    Replayed(Outcome),
    /// The key was used before for a different request. Nothing changed.
    KeyReusedWithDifferentRequest,
}

/// One ledger, two backends. Every write is durable when its future resolves with `Ok`.
#[async_trait::async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// Runs a ledger command exactly once per (tenant, idempotency key).
    async fn execute(&self, command: Command) -> Result<Execution, StoreError>;

    /// Sets an account's policy, creating the account if needed; returns the account.
    async fn set_policy(&self, key: AccountKey, change: PolicyChange) -> Result<AccountView, StoreError>;

    async fn account(&self, key: &AccountKey, as_of: Option<Timestamp>) -> Result<Option<AccountView>, StoreError>;
    async fn event(&self, tenant: &TenantId, id: &EventId) -> Result<Option<Event>, StoreError>;
    async fn events(
        &self,
        tenant: &TenantId,
        filter: &EventFilter,
        page: Page,
    ) -> Result<Vec<(i64, Event)>, StoreError>;

    async fn create_tenant(&self, tenant: Tenant) -> Result<(), StoreError>;
    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;

    async fn insert_api_key(&self, key: ApiKeyRecord) -> Result<(), StoreError>;
    async fn api_key_by_hash(&self, hash: [u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError>;
    async fn api_key(&self, id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError>;
    async fn api_keys(&self, tenant: Option<&TenantId>, page: Page) -> Result<Vec<(i64, ApiKeyRecord)>, StoreError>;
    /// Sets `expires_at` to `min(expires_at, at)`, or marks the key revoked when `revoke`.
    async fn retire_api_key(&self, id: &KeyId, at: Timestamp, revoke: bool) -> Result<(), StoreError>;
    /// Records last-used times, batched by the caller (never one write per request).
    async fn touch_api_keys(&self, used: Vec<(KeyId, Timestamp)>) -> Result<(), StoreError>;

    /// Every Authority key, oldest first.
    async fn authority_keys(&self) -> Result<Vec<AuthorityKeyRecord>, StoreError>;
    /// Stores `new` and, in the same transaction, sets `superseded_at = new.created_at` on every
    /// other key that has none. Duplicate kid → `StoreError::Conflict` (and nothing written).
    async fn rotate_authority_key(&self, new: AuthorityKeyRecord) -> Result<(), StoreError>;

    /// Registers a provider; an issuer already registered (by any tenant) → StoreError::Conflict.
    async fn insert_identity_provider(&self, provider: IdentityProviderRecord) -> Result<(), StoreError>;
    /// A tenant's provider by id; `None` when it does not exist or belongs to another tenant.
    async fn identity_provider(
        &self,
        tenant: &TenantId,
        id: &ProviderId,
    ) -> Result<Option<IdentityProviderRecord>, StoreError>;
    /// The provider registered for a token issuer (`iss`), whichever tenant registered it.
    async fn identity_provider_by_issuer(&self, issuer: &str) -> Result<Option<IdentityProviderRecord>, StoreError>;
    /// A tenant's providers, oldest first.
    async fn identity_providers(&self, tenant: &TenantId) -> Result<Vec<IdentityProviderRecord>, StoreError>;
    /// Removes a tenant's provider; false when there was none.
    async fn delete_identity_provider(&self, tenant: &TenantId, id: &ProviderId) -> Result<bool, StoreError>;

    /// Stores a signing key; a duplicate id or a second successor of the same `rotated_from` → `StoreError::Conflict`.
    async fn insert_signing_key(&self, key: SigningKeyRecord) -> Result<(), StoreError>;
    /// A signing key by id, whichever tenant owns it.
    async fn signing_key(&self, id: &SigningKeyId) -> Result<Option<SigningKeyRecord>, StoreError>;
    /// A tenant's signing keys, oldest first.
    async fn signing_keys(&self, tenant: &TenantId) -> Result<Vec<SigningKeyRecord>, StoreError>;
    /// Sets `expires_at = min(expires_at, at)`, or `revoked_at = at` when `revoke`.
    async fn retire_signing_key(&self, id: &SigningKeyId, at: Timestamp, revoke: bool) -> Result<(), StoreError>;
    /// Records a nonce of a signing key until `expires_at`; false when it is still recorded (a replay).
    ///
    /// A nonce counts as recorded while `now < expires_at`; an expired one may be claimed again.
    /// Expired nonces are purged opportunistically, a bounded number at a time. On PostgreSQL the
    /// claim is one statement (`INSERT … ON CONFLICT DO UPDATE … WHERE expired … RETURNING`), so
    /// exactly one of any number of concurrent claims, from any instance, wins.
    async fn claim_nonce(
        &self,
        key: &SigningKeyId,
        nonce: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Claims `key` in `scope` (a tenant id, or `operator`) for a request outside the ledger
    /// with this `fingerprint`. A claim older than `stale_before` that never finished (its
    /// process died) may be taken over. One statement on PostgreSQL, so exactly one of any
    /// number of concurrent claims from any instance wins.
    async fn claim_request(
        &self,
        scope: &str,
        key: &str,
        fingerprint: [u8; 32],
        now: Timestamp,
        stale_before: Timestamp,
    ) -> Result<RequestClaim, StoreError>;
    /// Finishes a claim: `Some((status, body))` records the response to replay, `None` releases
    /// the key (the request wrote nothing).
    async fn finish_request(&self, scope: &str, key: &str, response: Option<(u16, String)>) -> Result<(), StoreError>;
    /// Whether `claim_nonce` is shared by every instance of the deployment (PostgreSQL: true;
    /// SQLite: false — the embedded store is single-process, so the gateway may keep nonces in
    /// memory instead of writing them).
    fn nonces_are_shared(&self) -> bool;

    /// Stores a client CA; the same fingerprint twice for one tenant → `StoreError::Conflict`.
    async fn insert_client_ca(&self, ca: ClientCaRecord) -> Result<(), StoreError>;
    /// A tenant's client CAs, oldest first.
    async fn client_cas(&self, tenant: &TenantId) -> Result<Vec<ClientCaRecord>, StoreError>;
    /// Removes a tenant's client CA; false when there was none.
    async fn delete_client_ca(&self, tenant: &TenantId, id: &ClientCaId) -> Result<bool, StoreError>;

    /// Stores a client identity; a duplicate id or the same matcher twice for one tenant → `StoreError::Conflict`.
    async fn insert_client_identity(&self, identity: ClientIdentityRecord) -> Result<(), StoreError>;
    /// A tenant's client identities, oldest first.
    async fn client_identities(&self, tenant: &TenantId) -> Result<Vec<ClientIdentityRecord>, StoreError>;
    /// Removes a tenant's client identity; false when there was none.
    async fn delete_client_identity(&self, tenant: &TenantId, id: &ClientIdentityId) -> Result<bool, StoreError>;

    /// A tenant's authentication settings; the defaults when they were never set.
    async fn tenant_settings(&self, tenant: &TenantId) -> Result<TenantSettings, StoreError>;
    /// Replaces the tenant's settings; an mtls_hostname already bound to another tenant → Conflict (nothing written).
    async fn set_tenant_settings(&self, tenant: &TenantId, settings: TenantSettings) -> Result<(), StoreError>;
    /// The tenant whose settings bind `hostname` (compared lowercase).
    async fn tenant_by_mtls_hostname(&self, hostname: &str) -> Result<Option<TenantId>, StoreError>;

    /// True once `initialize` has created the operator key.
    async fn is_initialized(&self) -> Result<bool, StoreError>;
    /// Stores the first operator key, atomically with marking the store initialised; `false`
    /// (and nothing written) when it already was, even if several instances race.
    async fn initialize(&self, operator_key: ApiKeyRecord) -> Result<bool, StoreError>;
    /// A random secret created with the store (signs pagination cursors).
    async fn cursor_secret(&self) -> Result<[u8; 32], StoreError>;
    /// Cheap round trip for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Stops accepting writes, drains the queue and waits for the last commit.
    async fn shutdown(&self);
}

/// The one source of time for the store and the server; tests substitute a manual clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Timestamp::from_micros(micros)
    }
}

/// A clock that moves only when told to (tests).
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(AtomicI64::new(start.micros()))
    }

    pub fn advance_seconds(&self, seconds: i64) {
        self.0.fetch_add(seconds * 1_000_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// A change to an account's policy; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyChange {
    pub overdraft_limit: Option<u64>,
    /// `Some(None)` clears the limit.
    pub max_debit_amount: Option<Option<u64>>,
}

impl PolicyChange {
    pub fn apply(self, policy: &mut AccountPolicy) {
        if let Some(limit) = self.overdraft_limit {
            policy.overdraft_limit = limit;
        }
        if let Some(max) = self.max_debit_amount {
            policy.max_debit_amount = max;
        }
    }
}
