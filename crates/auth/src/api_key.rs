//! API keys: `lsk_` + 192 random bits, stored only as SHA-256, found by that hash (never a
//! prefix scan), compared in constant time. Lookups are cached for a bounded time so that a
//! request costs no store round trip; last-used times are gathered in memory and written in
//! batches, never once per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use licenseseal_ledger::{KeyId, Scopes, SubjectId, TenantId, Timestamp};
use licenseseal_store::{ApiKeyRecord, LedgerStore};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{AuthError, AuthMethod, FailureReason, Principal};

/// The visible start of every key.
pub const KEY_PREFIX: &str = "lsk_";
/// Random bytes in a key: 192 bits.
const KEY_RANDOM_BYTES: usize = 24;
/// Characters of the key kept visible in listings (prefix + 8).
const VISIBLE_CHARS: usize = 12;

#[derive(Debug, Clone)]
pub struct ApiKeysConfig {
    /// How long a found key is trusted without asking the store again. Revocation through this
    /// process takes effect at once; through another instance within this time.
    pub cache_ttl: Duration,
    /// How long an unknown key is remembered as unknown.
    pub negative_cache_ttl: Duration,
    /// Most entries in the cache.
    pub cache_entries_max: usize,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            cache_ttl: Duration::from_secs(30),
            negative_cache_ttl: Duration::from_secs(5),
            cache_entries_max: 100_000,
        }
    }
}

/// A freshly generated key: the plaintext (to show once) and what is stored.
pub struct NewApiKey {
    pub secret: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

impl NewApiKey {
    /// The record to store for this key: the hash and visible prefix, never the secret.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        tenant_id: Option<TenantId>,
        name: String,
        scopes: Scopes,
        subject: Option<SubjectId>,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> ApiKeyRecord {
        ApiKeyRecord {
            id: KeyId::from_uuid(uuid::Uuid::now_v7()),
            tenant_id,
            name,
            prefix: self.prefix.clone(),
            hash: self.hash,
            scopes,
            subject,
            expires_at,
            revoked_at: None,
            created_at: now,
            last_used_at: None,
            rotated_from: None,
        }
    }

    /// The record of an operator key: every intent, on every tenant.
    pub fn operator_record(&self, now: Timestamp) -> ApiKeyRecord {
        self.record(None, "operator".into(), Scopes::all(), None, None, now)
    }
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

struct Cached {
    record: Option<ApiKeyRecord>,
    fetched: Instant,
}

pub struct ApiKeys {
    store: Arc<dyn LedgerStore>,
    config: ApiKeysConfig,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// The same records by id, for tokens that must check the key they came from.
    by_id: Mutex<HashMap<KeyId, Cached>>,
    last_used: Mutex<HashMap<KeyId, Timestamp>>,
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl ApiKeys {
    pub fn new(store: Arc<dyn LedgerStore>, config: ApiKeysConfig) -> Self {
        ApiKeys {
            store,
            config,
            cache: Mutex::new(HashMap::new()),
            by_id: Mutex::new(HashMap::new()),
            last_used: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    /// Generates a new key from the operating system's random source.
    pub fn generate() -> NewApiKey {
        let mut bytes = [0u8; KEY_RANDOM_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let secret = format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
        NewApiKey { prefix: secret[..VISIBLE_CHARS].to_owned(), hash: hash_secret(&secret), secret }
    }

    /// Whether a bearer token looks like one of our API keys (as opposed to a JWT).
    pub fn looks_like_key(token: &str) -> bool {
        token.starts_with(KEY_PREFIX)
    }

    /// Resolves a presented key to a principal, or says why not (for the audit log only).
    pub async fn authenticate(&self, presented: &str, now: Timestamp) -> Result<Principal, AuthError> {
        let fail = |r| Err(AuthError::Unauthenticated(r));
        if presented.len() > 128 || !presented.bytes().all(|b| b.is_ascii_graphic()) {
            return fail(FailureReason::Malformed);
        }
        let hash = hash_secret(presented);
        let record = match self.cached(&hash) {
            Some(record) => record,
            None => {
                let record = self.store.api_key_by_hash(hash).await?;
                self.remember(hash, record.clone());
                record
            }
        };
        // The index lookup matched on the hash already; the constant-time check makes the
        // final comparison of key material independent of where the bytes differ.
        let Some(record) = record.filter(|r| bool::from(r.hash.ct_eq(&hash))) else {
            return fail(FailureReason::UnknownKey);
        };
        if record.revoked_at.is_some() {
            return fail(FailureReason::Revoked);
        }
        if !record.is_active(now) {
            return fail(FailureReason::Expired);
        }
        self.last_used.lock().insert(record.id.clone(), now);
        Ok(Principal {
            tenant_id: record.tenant_id,
            subject: record.subject,
            scopes: record.scopes,
            method: AuthMethod::ApiKey,
            credential_id: record.id.to_string(),
            expires_at: record.expires_at,
        })
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<Option<ApiKeyRecord>> {
        let cache = self.cache.lock();
        let entry = cache.get(hash)?;
        let ttl = if entry.record.is_some() { self.config.cache_ttl } else { self.config.negative_cache_ttl };
        (entry.fetched.elapsed() < ttl).then(|| entry.record.clone())
    }

    fn remember(&self, hash: [u8; 32], record: Option<ApiKeyRecord>) {
        let mut cache = self.cache.lock();
        if cache.len() >= self.config.cache_entries_max {
            cache.clear();
        }
        cache.insert(hash, Cached { record, fetched: Instant::now() });
    }

    /// Whether the key with this id is usable at `now`: how a token checks the credential it
    /// was exchanged for, without a store write and (while cached) without a store read.
    pub async fn is_active(&self, id: &KeyId, now: Timestamp) -> Result<bool, AuthError> {
        let cached = {
            let cache = self.by_id.lock();
            cache.get(id).filter(|c| c.fetched.elapsed() < self.config.cache_ttl).map(|c| c.record.clone())
        };
        let record = match cached {
            Some(record) => record,
            None => {
                let record = self.store.api_key(id).await?;
                let mut cache = self.by_id.lock();
                if cache.len() >= self.config.cache_entries_max {
                    cache.clear();
                }
                cache.insert(id.clone(), Cached { record: record.clone(), fetched: Instant::now() });
                record
            }
        };
        Ok(record.is_some_and(|r| r.is_active(now)))
    }

    /// Forgets every cached key: called after any key is created, rotated or revoked here.
    pub fn invalidate(&self) {
        self.cache.lock().clear();
        self.by_id.lock().clear();
    }

    /// Writes the gathered last-used times in one batch.
    pub async fn flush_last_used(&self) -> Result<(), AuthError> {
        let used: Vec<_> = self.last_used.lock().drain().collect();
        if !used.is_empty() {
            self.store.touch_api_keys(used).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_random_and_prefixed() {
        let a = ApiKeys::generate();
        let b = ApiKeys::generate();
        assert!(a.secret.starts_with("lsk_") && a.secret.len() == 4 + 32);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, hash_secret(&a.secret));
        assert!(a.secret.starts_with(&a.prefix));
        assert!(!format!("{a:?}").contains(&a.secret));
    }
}
