//! LicenseSeal's own token Authority: short-lived Ed25519 JWTs exchanged for a credential.
//!
//! Signing keys live in the store, their private halves sealed under the master key. The
//! newest key signs; a key that was superseded keeps verifying (and stays published) until
//! every token it could have signed has expired, then it is retired. Every instance reloads
//! the keys periodically and when it meets a kid it does not know, so a rotation made by one
//! instance reaches the others without a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use licenseseal_ledger::{
    ClientIdentityId, Intent, KeyId, ProviderId, Scopes, SigningKeyId, SubjectId, TenantId, Timestamp,
};
use licenseseal_store::{AuthorityKeyRecord, LedgerStore};
use parking_lot::RwLock;
use serde_json::{json, Value};

use crate::jose::{Ed25519Signer, Unverified, Validation, VerifyingKey};
use crate::seal::MasterKey;
use crate::{AuthError, AuthMethod, FailureReason, Principal};

/// Named limits of the Authority.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// `iss` of our tokens; also names the discovery document's issuer.
    pub issuer: String,
    /// `aud` of our tokens.
    pub audience: String,
    /// Lifetime of a token when the request names none.
    pub token_ttl_default: Duration,
    /// Longest lifetime a token can have, whatever the request asks.
    pub token_ttl_max: Duration,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// How often keys are reloaded from the store (rotations by other instances).
    pub key_reload_interval: Duration,
    /// Least time between two reloads caused by unknown kids.
    pub key_reload_cooldown: Duration,
    /// `Cache-Control: max-age` of the published JWKS.
    pub jwks_max_age: Duration,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            issuer: "http://127.0.0.1:8080".into(),
            audience: "licenseseal".into(),
            token_ttl_default: Duration::from_secs(300),
            token_ttl_max: Duration::from_secs(3600),
            leeway: Duration::from_secs(60),
            key_reload_interval: Duration::from_secs(30),
            key_reload_cooldown: Duration::from_secs(1),
            jwks_max_age: Duration::from_secs(300),
        }
    }
}

/// Where a principal's authority comes from: revoking it ends every token derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    ApiKey(KeyId),
    Provider(ProviderId),
    SigningKey(SigningKeyId),
    ClientIdentity(ClientIdentityId),
}

impl Root {
    fn of(principal: &Principal) -> Option<Root> {
        let id = principal.credential_id.as_str();
        match principal.method {
            AuthMethod::ApiKey | AuthMethod::AuthorityToken if id.starts_with(KeyId::PREFIX) => {
                KeyId::parse(id).ok().map(Root::ApiKey)
            }
            AuthMethod::IdpToken | AuthMethod::AuthorityToken if id.starts_with(ProviderId::PREFIX) => {
                ProviderId::parse(id).ok().map(Root::Provider)
            }
            AuthMethod::HttpSignature | AuthMethod::AuthorityToken if id.starts_with(SigningKeyId::PREFIX) => {
                SigningKeyId::parse(id).ok().map(Root::SigningKey)
            }
            AuthMethod::Mtls | AuthMethod::AuthorityToken if id.starts_with(ClientIdentityId::PREFIX) => {
                ClientIdentityId::parse(id).ok().map(Root::ClientIdentity)
            }
            _ => None,
        }
    }
}

/// What a caller asks of the token endpoint.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// Narrower scopes than the credential's; `None` keeps them all.
    pub scopes: Option<Scopes>,
    /// Shorter lifetime than the default; capped at the maximum.
    pub lifetime: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("operator credentials cannot be exchanged for tokens; use a tenant credential")]
    Operator,
    #[error("the requested scopes are not all held by the credential")]
    Widening,
    #[error("a token needs at least one scope")]
    NoScopes,
    #[error("the credential expires too soon to issue a token")]
    CredentialExpiring,
}

/// A signed token and what it grants.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: u64,
    pub scopes: Scopes,
}

/// A verified token: the principal it carries, until when, and the credential it hangs on.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub principal: Principal,
    /// The last moment the token is accepted: `exp` plus the leeway.
    pub accepted_until: Timestamp,
    pub root: Option<Root>,
}

struct KeyEntry {
    key: VerifyingKey,
    jwk: Value,
    /// After this the key verifies nothing (every token it signed has expired).
    retires_at: Option<Timestamp>,
}

struct Ring {
    signer: Arc<Ed25519Signer>,
    keys: HashMap<String, KeyEntry>,
    loaded: Instant,
}

pub struct Authority {
    store: Arc<dyn LedgerStore>,
    master: MasterKey,
    config: AuthorityConfig,
    ring: RwLock<Arc<Ring>>,
    reload: tokio::sync::Mutex<()>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Authority {
    /// Loads the signing keys, creating the first one on a new store. Fails when the master
    /// key does not open the current signing key (a wrong master key must not start).
    pub async fn open(
        store: Arc<dyn LedgerStore>,
        master: MasterKey,
        config: AuthorityConfig,
        now: Timestamp,
    ) -> Result<Self, AuthError> {
        let mut records = store.authority_keys().await?;
        if !records.iter().any(|r| r.superseded_at.is_none()) {
            store.rotate_authority_key(new_record(&master, now)).await?;
            records = store.authority_keys().await?;
        }
        let ring = build_ring(&records, &master, &config)?;
        Ok(Authority { store, master, config, ring: RwLock::new(Arc::new(ring)), reload: tokio::sync::Mutex::new(()) })
    }

    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// The kid that signs new tokens.
    pub fn current_kid(&self) -> String {
        self.ring.read().signer.kid().to_owned()
    }

    /// Makes a new key the signer; the previous one keeps verifying its live tokens.
    pub async fn rotate(&self, now: Timestamp) -> Result<String, AuthError> {
        let record = new_record(&self.master, now);
        let kid = record.kid.clone();
        self.store.rotate_authority_key(record).await?;
        self.reload().await?;
        Ok(kid)
    }

    /// Reloads the keys from the store.
    pub async fn reload(&self) -> Result<(), AuthError> {
        let _one_at_a_time = self.reload.lock().await;
        let records = self.store.authority_keys().await?;
        let ring = build_ring(&records, &self.master, &self.config)?;
        *self.ring.write() = Arc::new(ring);
        Ok(())
    }

    /// Reloads when the last load is older than the reload interval.
    pub async fn reload_if_due(&self) -> Result<(), AuthError> {
        let due = self.ring.read().loaded.elapsed() >= self.config.key_reload_interval;
        if due {
            self.reload().await?;
        }
        Ok(())
    }

    /// Signs a token for `principal`, narrowed as asked.
    pub fn issue(
        &self,
        principal: &Principal,
        request: &TokenRequest,
        now: Timestamp,
    ) -> Result<IssuedToken, IssueError> {
        let tenant = principal.tenant_id.as_ref().ok_or(IssueError::Operator)?;
        // A tenant credential never holds tenants.manage (a `*` key's bit for it grants
        // nothing), so its tokens never name it.
        let held = principal.scopes.without(Intent::TenantsManage);
        let scopes = match request.scopes {
            Some(asked) if !asked.is_subset_of(held) => return Err(IssueError::Widening),
            Some(asked) => asked,
            None => held,
        };
        if scopes.is_empty() {
            return Err(IssueError::NoScopes);
        }
        let lifetime = request.lifetime.unwrap_or(self.config.token_ttl_default).min(self.config.token_ttl_max);
        let now_s = now.micros().div_euclid(1_000_000);
        let mut exp = now_s.saturating_add(lifetime.as_secs() as i64);
        if let Some(until) = principal.expires_at {
            exp = exp.min(until.micros().div_euclid(1_000_000));
        }
        if exp <= now_s {
            return Err(IssueError::CredentialExpiring);
        }
        let mut claims = json!({
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "tid": tenant.as_str(),
            "scope": scopes.names().join(" "),
            "cid": principal.credential_id,
            "iat": now_s,
            "exp": exp,
            "jti": uuid::Uuid::now_v7().simple().to_string(),
        });
        if let Some(subject) = &principal.subject {
            claims["sub"] = json!(subject.as_str());
        }
        let signer = self.ring.read().signer.clone();
        let access_token = signer.sign_jwt(claims.to_string().as_bytes());
        Ok(IssuedToken { access_token, expires_in: (exp - now_s) as u64, scopes })
    }

    /// The published key set: every key that still verifies.
    pub fn jwks(&self, now: Timestamp) -> Value {
        let ring = self.ring.read().clone();
        let mut keys: Vec<&KeyEntry> = ring.keys.values().filter(|k| k.retires_at.is_none_or(|at| now < at)).collect();
        keys.sort_by(|a, b| a.key.kid().cmp(&b.key.kid()));
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Checks one of our tokens: known and unretired kid, signature, time, issuer, audience,
    /// and claims of the right shape. Does not check the root credential (the caller does).
    pub async fn verify(&self, token: &Unverified<'_>, now: Timestamp) -> Result<VerifiedToken, FailureReason> {
        let kid = token.header.kid.as_deref().ok_or(FailureReason::UnknownKid)?;
        let ring = self.ring.read().clone();
        let ring = if ring.keys.contains_key(kid) || ring.loaded.elapsed() < self.config.key_reload_cooldown {
            ring
        } else {
            // Perhaps another instance rotated: look once more, at a bounded rate.
            if self.reload().await.is_err() {
                return Err(FailureReason::UnknownKid);
            }
            self.ring.read().clone()
        };
        let entry = ring.keys.get(kid).ok_or(FailureReason::UnknownKid)?;
        if entry.retires_at.is_some_and(|at| now >= at) {
            return Err(FailureReason::KeyRetired);
        }
        token.verify(&entry.key).map_err(FailureReason::from)?;
        let claims = &token.claims;
        let audiences = [self.config.audience.clone()];
        claims
            .validate(&Validation {
                now: now.micros().div_euclid(1_000_000),
                leeway: self.config.leeway.as_secs() as i64,
                issuer: &self.config.issuer,
                audiences: &audiences,
                required: &[],
            })
            .map_err(FailureReason::from)?;
        let text = |name: &str| claims.extra.get(name).and_then(Value::as_str);
        let tenant = text("tid").and_then(|t| TenantId::parse(t).ok()).ok_or(FailureReason::InvalidClaim)?;
        let subject = match &claims.sub {
            Some(s) => Some(SubjectId::parse(s).map_err(|_| FailureReason::InvalidSubject)?),
            None => None,
        };
        let scopes = text("scope").and_then(|s| Scopes::parse(s.split(' ')).ok()).ok_or(FailureReason::InvalidClaim)?;
        let credential_id = text("cid").ok_or(FailureReason::InvalidClaim)?.to_owned();
        let exp = claims.exp.ok_or(FailureReason::MissingClaim)?;
        let expires_at = Timestamp::from_micros(exp.saturating_mul(1_000_000));
        let principal = Principal {
            tenant_id: Some(tenant),
            subject,
            scopes,
            method: AuthMethod::AuthorityToken,
            credential_id,
            expires_at: Some(expires_at),
        };
        let root = Root::of(&principal);
        if root.is_none() {
            return Err(FailureReason::InvalidClaim);
        }
        let accepted_until = Timestamp::from_micros(expires_at.micros().saturating_add(micros(self.config.leeway)));
        Ok(VerifiedToken { principal, accepted_until, root })
    }
}

fn new_record(master: &MasterKey, now: Timestamp) -> AuthorityKeyRecord {
    let (signer, pkcs8) = Ed25519Signer::generate();
    let kid = signer.kid().to_owned();
    AuthorityKeyRecord {
        sealed_private_key: master.seal(kid.as_bytes(), &pkcs8),
        kid,
        algorithm: "EdDSA".into(),
        public_key: signer.public_key().to_vec(),
        created_at: now,
        superseded_at: None,
    }
}

fn build_ring(records: &[AuthorityKeyRecord], master: &MasterKey, config: &AuthorityConfig) -> Result<Ring, AuthError> {
    let mut keys = HashMap::new();
    for record in records {
        let public: [u8; 32] = record.public_key.as_slice().try_into().map_err(|_| AuthError::CorruptSigningKey)?;
        let key = VerifyingKey::ed25519(Some(record.kid.clone()), public);
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public),
            "kid": record.kid,
            "alg": "EdDSA",
            "use": "sig",
        });
        // A superseded key signed its last token at `superseded_at`; those tokens live at most
        // the longest lifetime, plus the leeway verifiers allow.
        let retires_at = record
            .superseded_at
            .map(|at| Timestamp::from_micros(at.micros() + micros(config.token_ttl_max) + micros(config.leeway)));
        keys.insert(record.kid.clone(), KeyEntry { key, jwk, retires_at });
    }
    let current = records
        .iter()
        .filter(|r| r.superseded_at.is_none())
        .max_by_key(|r| r.created_at)
        .ok_or(AuthError::CorruptSigningKey)?;
    let pkcs8 = master.open(current.kid.as_bytes(), &current.sealed_private_key).map_err(AuthError::Seal)?;
    let signer = Ed25519Signer::from_pkcs8(&pkcs8).map_err(|_| AuthError::CorruptSigningKey)?;
    if signer.kid() != current.kid {
        return Err(AuthError::CorruptSigningKey);
    }
    Ok(Ring { signer: Arc::new(signer), keys, loaded: Instant::now() })
}
