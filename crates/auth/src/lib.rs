//! Authentication: every credential method ends in the same `Principal`, so the server runs
//! one policy path whatever the method. This issue brings API keys; the other methods plug in
//! beside them.
//!
//! Architecture invariant: a presented secret is hashed and dropped; it never reaches a log,
//! an error or a response. The precise reason an authentication failed is recorded in the
//! audit log only; callers see one uniform answer.

mod api_key;
mod principal;

pub use api_key::{ApiKeys, ApiKeysConfig, NewApiKey};
pub use principal::{AuthMethod, Principal};

/// Why authentication failed. Never shown to the caller; logged to the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FailureReason {
    #[error("no credential")]
    Missing,
    #[error("more than one credential")]
    Ambiguous,
    #[error("malformed credential")]
    Malformed,
    #[error("unknown api key")]
    UnknownKey,
    #[error("api key revoked")]
    Revoked,
    #[error("api key expired")]
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: {0}")]
    Unauthenticated(FailureReason),
    #[error(transparent)]
    Store(#[from] licenseseal_store::StoreError),
}
