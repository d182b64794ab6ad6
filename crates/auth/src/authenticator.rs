//! One entry point for every bearer credential: API keys, Authority tokens and identity
//! provider tokens all end here in a `Principal`.
//!
//! A verified token is remembered (keyed by its SHA-256) until it expires, so a repeated token
//! costs a hash and a lookup instead of a signature check. The credential the token hangs on
//! is checked on every use, from memory, so revocation still ends it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use licenseseal_ledger::{TenantId, Timestamp};
use licenseseal_store::TenantSettings;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::authority::{Authority, Root, VerifiedToken};
use crate::mtls::Mtls;
use crate::providers::Providers;
use crate::signatures::Signatures;
use crate::{jose, ApiKeys, AuthError, AuthMethod, FailureReason, Principal};

/// Longest bearer token accepted.
pub const TOKEN_BYTES_MAX: usize = 8192;

pub struct Authenticator {
    pub keys: ApiKeys,
    pub authority: Authority,
    pub providers: Providers,
    pub mtls: Mtls,
    pub signatures: Signatures,
    verified: quick_cache::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
    settings: Mutex<HashMap<TenantId, (Arc<TenantSettings>, Instant)>>,
}

/// Most tenants whose settings are cached before the cache is cleared.
const SETTINGS_CACHED_MAX: usize = 10_000;

impl Authenticator {
    pub fn new(
        keys: ApiKeys,
        authority: Authority,
        providers: Providers,
        mtls: Mtls,
        signatures: Signatures,
        verified_entries_max: usize,
    ) -> Self {
        Authenticator {
            keys,
            authority,
            providers,
            mtls,
            signatures,
            verified: quick_cache::sync::Cache::new(verified_entries_max),
            settings: Mutex::new(HashMap::new()),
        }
    }

    /// A tenant's authentication settings, cached for `ttl`.
    pub async fn settings(&self, tenant: &TenantId, ttl: Duration) -> Result<Arc<TenantSettings>, AuthError> {
        if let Some((settings, at)) = self.settings.lock().get(tenant) {
            if at.elapsed() < ttl {
                return Ok(settings.clone());
            }
        }
        let settings = Arc::new(self.keys_store().tenant_settings(tenant).await?);
        let mut cache = self.settings.lock();
        if cache.len() >= SETTINGS_CACHED_MAX {
            cache.clear();
        }
        cache.insert(tenant.clone(), (settings.clone(), Instant::now()));
        Ok(settings)
    }

    /// Forgets cached tenant settings (after a change made here).
    pub fn invalidate_settings(&self) {
        self.settings.lock().clear();
        self.mtls.invalidate();
    }

    /// Refuses a principal whose tenant does not accept its authentication method.
    pub async fn check_method(&self, principal: &Principal, ttl: Duration) -> Result<(), AuthError> {
        let Some(tenant) = &principal.tenant_id else { return Ok(()) };
        let settings = self.settings(tenant, ttl).await?;
        let allowed = match &settings.auth_methods {
            None => true,
            Some(methods) => methods.iter().any(|m| AuthMethod::parse(m) == Some(principal.method)),
        };
        if allowed {
            Ok(())
        } else {
            Err(AuthError::Unauthenticated(FailureReason::MethodNotAllowed))
        }
    }

    fn keys_store(&self) -> &Arc<dyn licenseseal_store::LedgerStore> {
        self.keys.store()
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
            Some(Root::SigningKey(id)) => self.signatures.is_active(id, now).await,
            Some(Root::ClientIdentity(id)) => match &verified.principal.tenant_id {
                Some(tenant) => self.mtls.is_registered(tenant, id.as_str()).await,
                None => Ok(false),
            },
            None => Ok(true),
        }
    }
}
