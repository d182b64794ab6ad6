//! One entry point for every bearer credential: API keys, Authority tokens and identity
//! provider tokens all end here in a `Principal`.
//!
//! A verified token is remembered (keyed by its SHA-256) until it expires, so a repeated token
//! costs a hash and a lookup instead of a signature check. The credential the token hangs on
//! is checked on every use, from memory, so revocation still ends it.

use std::sync::Arc;

use licenseseal_ledger::Timestamp;
use sha2::{Digest, Sha256};

use crate::authority::{Authority, Root, VerifiedToken};
use crate::providers::Providers;
use crate::{jose, ApiKeys, AuthError, FailureReason, Principal};

/// Longest bearer token accepted.
pub const TOKEN_BYTES_MAX: usize = 8192;

pub struct Authenticator {
    pub keys: ApiKeys,
    pub authority: Authority,
    pub providers: Providers,
    verified: quick_cache::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
}

impl Authenticator {
    pub fn new(keys: ApiKeys, authority: Authority, providers: Providers, verified_entries_max: usize) -> Self {
        Authenticator { keys, authority, providers, verified: quick_cache::sync::Cache::new(verified_entries_max) }
    }

    /// Resolves a bearer credential (the text after `Bearer `).
    pub async fn bearer(&self, presented: &str, now: Timestamp) -> Result<Principal, AuthError> {
        if ApiKeys::looks_like_key(presented) {
            return self.keys.authenticate(presented, now).await;
        }
        self.token(presented, now).await.map(|v| v.principal)
    }

    /// Verifies a JWT (ours or a registered provider's) and the credential it hangs on.
    pub async fn token(&self, presented: &str, now: Timestamp) -> Result<VerifiedToken, AuthError> {
        let fail = |r| Err(AuthError::Unauthenticated(r));
        if presented.len() > TOKEN_BYTES_MAX {
            return fail(FailureReason::Malformed);
        }
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let verified = match self.verified.get(&hash) {
            Some(verified) => verified,
            None => {
                let token = jose::parse(presented).map_err(|e| AuthError::Unauthenticated(e.into()))?;
                let Some(issuer) = token.claims.iss.as_deref() else {
                    return fail(FailureReason::MissingClaim);
                };
                let verified = if issuer == self.authority.config().issuer {
                    self.authority.verify(&token, now).await.map_err(AuthError::Unauthenticated)?
                } else {
                    self.providers.verify(&token, issuer, now).await?
                };
                let verified = Arc::new(verified);
                self.verified.insert(hash, verified.clone());
                verified
            }
        };
        if now >= verified.accepted_until {
            self.verified.remove(&hash);
            return fail(FailureReason::Expired);
        }
        if !self.root_active(&verified, now).await? {
            return fail(FailureReason::ChainRevoked);
        }
        Ok((*verified).clone())
    }

    async fn root_active(&self, verified: &VerifiedToken, now: Timestamp) -> Result<bool, AuthError> {
        match &verified.root {
            Some(Root::ApiKey(id)) => self.keys.is_active(id, now).await,
            Some(Root::Provider(id)) => match &verified.principal.tenant_id {
                Some(tenant) => self.providers.is_registered(tenant, id).await,
                None => Ok(false),
            },
            None => Ok(true),
        }
    }
}
