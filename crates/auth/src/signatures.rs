//! RFC 9421 signed requests: signing credentials (HMAC secrets generated here and sealed under
//! the master key, Ed25519 public keys registered by clients), verification of a request
//! against the credential its `keyid` names, and the nonce replay check.
//!
//! Replays: a nonce is remembered until its signature could no longer pass the time window.
//! On PostgreSQL the store holds nonces, so the check holds across instances; the embedded
//! store serves one process, so nonces are kept in a bounded map in memory (no write per
//! request).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use licenseseal_ledger::{SigningKeyId, Timestamp};
use licenseseal_store::{LedgerStore, SigningKeyRecord};
use parking_lot::Mutex;
use rand::RngCore;

use crate::httpsig::{self, Policy, RequestParts, SigAlg, VerifyKey};
use crate::seal::MasterKey;
use crate::{AuthError, AuthMethod, FailureReason, Principal};

/// Named limits of signed-request checking.
#[derive(Debug, Clone)]
pub struct SignaturesConfig {
    /// How old `created` may be (before the leeway).
    pub window: Duration,
    /// Clock skew tolerated on `created` and `expires`.
    pub leeway: Duration,
    /// Most nonces remembered in memory (embedded store); beyond it, signed requests are
    /// refused until old nonces expire — never accepted unchecked.
    pub replay_cache_entries_max: usize,
    /// How long a signing credential is trusted without asking the store.
    pub key_cache_ttl: Duration,
}

impl Default for SignaturesConfig {
    fn default() -> Self {
        SignaturesConfig {
            window: Duration::from_secs(300),
            leeway: Duration::from_secs(60),
            replay_cache_entries_max: 1_000_000,
            key_cache_ttl: Duration::from_secs(30),
        }
    }
}

/// Bytes of a generated HMAC secret.
pub const HMAC_SECRET_BYTES: usize = 32;

struct CachedKey {
    key: Option<Arc<(SigningKeyRecord, VerifyKey, SigAlg)>>,
    fetched: Instant,
}

pub struct Signatures {
    store: Arc<dyn LedgerStore>,
    master: MasterKey,
    config: SignaturesConfig,
    keys: Mutex<HashMap<SigningKeyId, CachedKey>>,
    nonces: Mutex<HashMap<(SigningKeyId, String), i64>>,
}

/// Most cached credentials before the cache is cleared.
const KEYS_CACHED_MAX: usize = 100_000;

impl Signatures {
    pub fn new(store: Arc<dyn LedgerStore>, master: MasterKey, config: SignaturesConfig) -> Self {
        Signatures { store, master, config, keys: Mutex::new(HashMap::new()), nonces: Mutex::new(HashMap::new()) }
    }

    /// A fresh HMAC secret from the operating system's random source.
    pub fn generate_hmac_secret() -> [u8; HMAC_SECRET_BYTES] {
        let mut secret = [0u8; HMAC_SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        secret
    }

    /// Seals an HMAC secret for storage, bound to its key id.
    pub fn seal_secret(&self, id: &SigningKeyId, secret: &[u8]) -> Vec<u8> {
        self.master.seal(id.as_str().as_bytes(), secret)
    }

    /// Forgets cached credentials (after one is created, rotated or revoked here).
    pub fn invalidate(&self) {
        self.keys.lock().clear();
    }

    async fn credential(
        &self,
        id: &SigningKeyId,
    ) -> Result<Option<Arc<(SigningKeyRecord, VerifyKey, SigAlg)>>, AuthError> {
        if let Some(hit) = self.keys.lock().get(id).filter(|c| c.fetched.elapsed() < self.config.key_cache_ttl) {
            return Ok(hit.key.clone());
        }
        let key = match self.store.signing_key(id).await? {
            None => None,
            Some(record) => {
                let (key, alg) = match (record.alg.as_str(), &record.sealed_secret, &record.public_key) {
                    ("hmac-sha256", Some(sealed), _) => {
                        (VerifyKey::Hmac(self.master.open(id.as_str().as_bytes(), sealed)?), SigAlg::HmacSha256)
                    }
                    ("ed25519", _, Some(public)) => {
                        let public: [u8; 32] =
                            public.as_slice().try_into().map_err(|_| AuthError::CorruptSigningKey)?;
                        (VerifyKey::Ed25519(public), SigAlg::Ed25519)
                    }
                    _ => return Err(AuthError::CorruptSigningKey),
                };
                Some(Arc::new((record, key, alg)))
            }
        };
        let mut cache = self.keys.lock();
        if cache.len() >= KEYS_CACHED_MAX {
            cache.clear();
        }
        cache.insert(id.clone(), CachedKey { key: key.clone(), fetched: Instant::now() });
        Ok(key)
    }

    /// Whether a signing credential still exists and is neither revoked nor expired (the root
    /// of the tokens exchanged with it). Cached like every credential lookup.
    pub async fn is_active(&self, id: &SigningKeyId, now: Timestamp) -> Result<bool, AuthError> {
        Ok(self.credential(id).await?.is_some_and(|c| c.0.is_active(now)))
    }

    /// Verifies a signed request and returns its principal. `body` is the whole body as
    /// received (re-hashed against `Content-Digest`).
    pub async fn verify(
        &self,
        req: &RequestParts<'_>,
        body: &[u8],
        signature_input: &str,
        signature: &str,
        now: Timestamp,
    ) -> Result<Principal, AuthError> {
        let refuse = |e: httpsig::SigError| AuthError::Unauthenticated(FailureReason::Signature(e));
        let fail = |r| Err(AuthError::Unauthenticated(r));
        let inspected = httpsig::inspect(req, signature_input, signature).map_err(refuse)?;
        let Ok(id) = SigningKeyId::parse(inspected.keyid()) else { return fail(FailureReason::UnknownSigningKey) };
        let Some(credential) = self.credential(&id).await? else { return fail(FailureReason::UnknownSigningKey) };
        let (record, key, alg) = &*credential;
        if !record.is_active(now) {
            return fail(FailureReason::UnknownSigningKey);
        }
        let now_s = now.micros().div_euclid(1_000_000);
        let policy = Policy {
            now: now_s,
            window_secs: self.config.window.as_secs() as i64,
            leeway_secs: self.config.leeway.as_secs() as i64,
            require_nonce: true,
        };
        inspected.verify(req, body, key, *alg, &policy).map_err(refuse)?;
        let nonce = inspected
            .nonce()
            .ok_or(AuthError::Unauthenticated(FailureReason::Signature(httpsig::SigError::MissingNonce)))?;
        // Past this moment the signature fails the window anyway, so the nonce can be forgotten.
        let forget_at = inspected.created() + policy.window_secs + 2 * policy.leeway_secs + 1;
        self.claim(&id, nonce, now, forget_at).await?;
        Ok(Principal {
            tenant_id: Some(record.tenant_id.clone()),
            subject: record.subject.clone(),
            scopes: record.scopes,
            method: AuthMethod::HttpSignature,
            credential_id: record.id.to_string(),
            expires_at: record.expires_at,
        })
    }

    /// Records the nonce; a nonce seen before (and not yet forgotten) is a replay.
    async fn claim(&self, id: &SigningKeyId, nonce: &str, now: Timestamp, forget_at_s: i64) -> Result<(), AuthError> {
        if self.store.nonces_are_shared() {
            let until = Timestamp::from_micros(forget_at_s.saturating_mul(1_000_000));
            return match self.store.claim_nonce(id, nonce, now, until).await? {
                true => Ok(()),
                false => Err(AuthError::Unauthenticated(FailureReason::Replayed)),
            };
        }
        let now_s = now.micros().div_euclid(1_000_000);
        let mut nonces = self.nonces.lock();
        let key = (id.clone(), nonce.to_owned());
        if nonces.get(&key).is_some_and(|until| now_s < *until) {
            return Err(AuthError::Unauthenticated(FailureReason::Replayed));
        }
        if nonces.len() >= self.config.replay_cache_entries_max {
            nonces.retain(|_, until| now_s < *until);
            if nonces.len() >= self.config.replay_cache_entries_max {
                return Err(AuthError::Unauthenticated(FailureReason::ReplayCacheFull));
            }
        }
        nonces.insert(key, forget_at_s);
        Ok(())
    }
}
