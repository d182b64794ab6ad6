//! Authentication: every credential method ends in the same `Principal`, so the server runs
//! one policy path whatever the method. This issue brings API keys; the other methods plug in
//! beside them.
//!
//! Architecture invariant: a presented secret is hashed and dropped; it never reaches a log,
//! an error or a response. The precise reason an authentication failed is recorded in the
//! audit log only; callers see one uniform answer.

mod api_key;
mod authenticator;
pub mod authority;
pub mod httpsig;
pub mod jose;
pub mod jwks;
pub mod mtls;
mod principal;
pub mod providers;
pub mod seal;
pub mod signatures;

pub use api_key::{ApiKeys, ApiKeysConfig, NewApiKey};
pub use authenticator::{Authenticator, TOKEN_BYTES_MAX};
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
    #[error("credential expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("bad signature")]
    BadSignature,
    #[error("algorithm not accepted")]
    AlgorithmNotAllowed,
    #[error("token header names a key or an extension we never trust")]
    ForbiddenHeader,
    #[error("registered claim with a wrong type")]
    InvalidClaim,
    #[error("required claim missing")]
    MissingClaim,
    #[error("unknown key id")]
    UnknownKid,
    #[error("unknown issuer")]
    UnknownIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("signing key retired")]
    KeyRetired,
    #[error("identity provider keys unavailable")]
    ProviderUnavailable,
    #[error("token subject is not a valid subject id")]
    InvalidSubject,
    #[error("the credential this token came from is no longer valid")]
    ChainRevoked,
    #[error("client certificate without the clientAuth extended key usage")]
    NotClientAuth,
    #[error("client certificate matches no identity rule")]
    NoIdentityRule,
    #[error("the tenant does not accept this authentication method")]
    MethodNotAllowed,
    #[error("request signature refused")]
    BadRequestSignature,
    #[error("request signature refused: {0}")]
    Signature(httpsig::SigError),
    #[error("unknown, revoked or expired signing key")]
    UnknownSigningKey,
    #[error("replay cache full")]
    ReplayCacheFull,
    #[error("request signature nonce replayed")]
    Replayed,
    #[error("the mTLS connection belongs to another host")]
    MisdirectedCertificate,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: {0}")]
    Unauthenticated(FailureReason),
    #[error(transparent)]
    Store(#[from] licenseseal_store::StoreError),
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    #[error("a stored Authority signing key is damaged")]
    CorruptSigningKey,
    #[error("the JWKS HTTPS client could not be built")]
    JwksClient,
}

impl From<jose::JoseError> for FailureReason {
    fn from(e: jose::JoseError) -> Self {
        use jose::JoseError as J;
        match e {
            J::Malformed(_) | J::InvalidKey(_) => FailureReason::Malformed,
            J::UnsupportedAlgorithm | J::KeyMismatch => FailureReason::AlgorithmNotAllowed,
            J::ForbiddenHeader(_) => FailureReason::ForbiddenHeader,
            J::InvalidClaim(_) => FailureReason::InvalidClaim,
            J::BadSignature => FailureReason::BadSignature,
            J::UnknownKid => FailureReason::UnknownKid,
            J::Expired => FailureReason::Expired,
            J::NotYetValid => FailureReason::NotYetValid,
            J::IssuedInFuture => FailureReason::IssuedInFuture,
            J::MissingClaim(_) => FailureReason::MissingClaim,
            J::WrongAudience => FailureReason::WrongAudience,
            J::WrongIssuer => FailureReason::UnknownIssuer,
        }
    }
}
