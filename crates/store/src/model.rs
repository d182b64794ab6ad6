//! Records the store reads and writes besides ledger events.

use std::fmt;

use licenseseal_ledger::{
    AccountKey, AccountPolicy, ClientCaId, ClientIdentityId, CreditType, EventKind, KeyId, ProviderId, Scopes,
    SigningKeyId, SubjectId, TenantId, Timestamp,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: Timestamp,
}

/// An API key as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: KeyId,
    /// `None` for operator keys, which act on any tenant.
    pub tenant_id: Option<TenantId>,
    pub name: String,
    /// The visible start of the key (e.g. `lsk_AbCd1234`), for recognising it in lists.
    pub prefix: String,
    pub hash: [u8; 32],
    pub scopes: Scopes,
    pub subject: Option<SubjectId>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<KeyId>,
}

impl ApiKeyRecord {
    pub fn is_operator(&self) -> bool {
        self.tenant_id.is_none()
    }

    /// Usable at `now`: not revoked and not past its expiry (rotation grace included).
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// A signing key of LicenseSeal's own token Authority. The private key arrives sealed
/// (encrypted under the master key by the auth crate); the store never sees it in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorityKeyRecord {
    /// RFC 7638 thumbprint; unique.
    pub kid: String,
    /// The JWS algorithm, `EdDSA`.
    pub algorithm: String,
    /// The raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    pub sealed_private_key: Vec<u8>,
    pub created_at: Timestamp,
    /// When a newer key took over signing; the key still verifies tokens it signed until they expire.
    pub superseded_at: Option<Timestamp>,
}

/// Shows the sealed private key's length only, never its bytes.
impl fmt::Debug for AuthorityKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityKeyRecord")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("public_key", &self.public_key)
            .field("sealed_private_key", &format_args!("<{} bytes>", self.sealed_private_key.len()))
            .field("created_at", &self.created_at)
            .field("superseded_at", &self.superseded_at)
            .finish()
    }
}

/// An external identity provider registered by a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProviderRecord {
    pub id: ProviderId,
    pub tenant_id: TenantId,
    /// Globally unique across tenants: a token's `iss` selects the provider.
    pub issuer: String,
    pub jwks_uri: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub subject_claim: String,
    pub scope_claim: String,
    pub leeway_seconds: u32,
    pub required_claims: Vec<String>,
    pub created_at: Timestamp,
}

/// An RFC 9421 signing credential. HMAC secrets arrive sealed (encrypted by the auth crate);
/// Ed25519 public keys in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub id: SigningKeyId,
    pub tenant_id: TenantId,
    /// `hmac-sha256` or `ed25519`.
    pub alg: String,
    /// The sealed HMAC secret (`hmac-sha256`).
    pub sealed_secret: Option<Vec<u8>>,
    /// The raw 32-byte Ed25519 public key (`ed25519`).
    pub public_key: Option<Vec<u8>>,
    pub scopes: Scopes,
    pub subject: Option<SubjectId>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// The key this one replaced by rotation; a key has at most one successor.
    pub rotated_from: Option<SigningKeyId>,
}

impl SigningKeyRecord {
    /// Usable at `now`: not revoked and not past its expiry (rotation grace included).
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// Shows the sealed secret's length only, never its bytes.
impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("alg", &self.alg)
            .field("sealed_secret", &self.sealed_secret.as_ref().map(|s| format!("<{} bytes>", s.len())))
            .field("public_key", &self.public_key)
            .field("scopes", &self.scopes)
            .field("subject", &self.subject)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("rotated_from", &self.rotated_from)
            .finish()
    }
}

/// A tenant's trust anchor for client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCaRecord {
    pub id: ClientCaId,
    pub tenant_id: TenantId,
    pub pem: String,
    /// Hex SHA-256 of the certificate's DER, computed by the caller; stored lowercase and
    /// unique per tenant.
    pub fingerprint_sha256: String,
    pub created_at: Timestamp,
}

/// Maps a verified client certificate to a principal: by fingerprint, or by a typed SAN.
/// A tenant cannot register the same matcher (fingerprint, URI SAN, DNS SAN) twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentityRecord {
    pub id: ClientIdentityId,
    pub tenant_id: TenantId,
    /// Hex SHA-256 of the certificate's DER; stored lowercase.
    pub fingerprint_sha256: Option<String>,
    pub san_uri: Option<String>,
    pub san_dns: Option<String>,
    pub subject: Option<SubjectId>,
    pub scopes: Scopes,
    pub created_at: Timestamp,
}

/// Per-tenant authentication settings. `auth_methods` None = every method allowed.
/// `mtls_hostname` (unique across tenants, lowercase) binds TLS SNI/Host to the tenant; the
/// store lowercases it when writing and when looking it up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSettings {
    pub auth_methods: Option<Vec<String>>,
    pub mtls_hostname: Option<String>,
}

/// An account as read back: balance, held, available and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub key: AccountKey,
    pub balance: i64,
    pub held: i64,
    pub available: i64,
    /// Credit on expired lots not yet swept out by an expiration event (already excluded
    /// from `available`).
    pub expired_pending: i64,
    pub policy: AccountPolicy,
    pub updated_at: Timestamp,
}

impl AccountView {
    /// This view as of a past instant, from what the store found at or before it: the last
    /// event (its `balance_after` and time) and the last policy change. `held` is 0 and
    /// `available` the balance (holds and lot expiry of the past are not reconstructed).
    pub fn as_of(mut self, last_event: Option<(i64, Timestamp)>, policy: Option<AccountPolicy>) -> Self {
        let balance = last_event.map_or(0, |(balance, _)| balance);
        (self.balance, self.held, self.available, self.expired_pending) = (balance, 0, balance, 0);
        self.policy = policy.unwrap_or_default();
        if let Some((_, at)) = last_event {
            self.updated_at = at;
        }
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EventFilter {
    pub subject: Option<SubjectId>,
    pub kind: Option<EventKind>,
    pub credit_type: Option<CreditType>,
    /// Inclusive lower bound on `created_at`.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound on `created_at`.
    pub to: Option<Timestamp>,
}

/// Keyset pagination: rows after `after` (a store sequence number), at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: Option<i64>,
    pub limit: u32,
}

/// Where an idempotent request outside the ledger (a tenant, a key, a setting) stands under
/// its key, as [`crate::LedgerStore::claim_request`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestClaim {
    /// The key was free (or its claim had gone stale): the caller now holds it and must finish
    /// or release it.
    Claimed,
    /// Another request holds the key and has not finished yet.
    InFlight { fingerprint: [u8; 32] },
    /// A request finished under the key: its fingerprint and the response it got.
    Done { fingerprint: [u8; 32], status: u16, body: String },
    /// A ledger write (grant, debit, …) already used the key: keys have one scope per tenant,
    /// so this request is a different request under a used key.
    UsedByLedger,
}
