//! External identity providers: a tenant registers an issuer and its HTTPS JWKS URL; tokens
//! whose `iss` names it are verified with the provider's published keys.
//!
//! Architecture invariant: the token's issuer selects the provider and the provider's JWKS
//! supplies the key. Nothing the token carries (`jwk`, `jku`, `x5u`, `x5c`) is ever used, and
//! the algorithm must be both allowed by the provider and fit the key's type.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use licenseseal_ledger::{ProviderId, Scopes, SubjectId, TenantId, Timestamp};
use licenseseal_store::{IdentityProviderRecord, LedgerStore};
use parking_lot::Mutex;
use serde_json::Value;

use crate::authority::{Root, VerifiedToken};
use crate::jose::{Algorithm, JwkSet, Unverified, Validation};
use crate::jwks::{JwksCache, JwksConfig, JwksError, JwksStats, KeySet};
use crate::{AuthError, AuthMethod, FailureReason, Principal};

impl KeySet for JwkSet {
    fn parse(body: &[u8]) -> Result<Self, String> {
        JwkSet::parse(body).map_err(|e| e.to_string())
    }

    fn contains(&self, kid: &str) -> bool {
        self.get(kid).is_some()
    }
}

/// Named limits of provider handling.
#[derive(Debug, Clone)]
pub struct ProvidersConfig {
    pub jwks: JwksConfig,
    /// How long a provider looked up by issuer is trusted without asking the store.
    pub registry_ttl: Duration,
    /// How long an unknown issuer is remembered as unknown.
    pub registry_negative_ttl: Duration,
    /// Largest leeway a provider may ask for.
    pub leeway_max: Duration,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        ProvidersConfig {
            jwks: JwksConfig::default(),
            registry_ttl: Duration::from_secs(30),
            registry_negative_ttl: Duration::from_secs(5),
            leeway_max: Duration::from_secs(600),
        }
    }
}

/// A registration request, checked by `validate` before anything is stored.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub issuer: String,
    pub jwks_uri: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub subject_claim: Option<String>,
    pub scope_claim: Option<String>,
    pub leeway_seconds: Option<u32>,
    pub required_claims: Vec<String>,
}

/// Why a registration is refused; shown to the caller (it is their own input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

const DEFAULT_LEEWAY_SECONDS: u32 = 60;
const TEXT_MAX: usize = 2048;
const LIST_MAX: usize = 32;

fn claim_name_ok(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

impl ProviderSpec {
    /// The record to store, or why not.
    pub fn validate(
        self,
        tenant_id: TenantId,
        config: &ProvidersConfig,
        now: Timestamp,
    ) -> Result<IdentityProviderRecord, SpecError> {
        let err = |m: &str| Err(SpecError(m.to_owned()));
        if self.issuer.is_empty() || self.issuer.len() > TEXT_MAX || self.issuer.chars().any(char::is_control) {
            return err("issuer must be a non-empty string of at most 2048 characters");
        }
        if self.jwks_uri.len() > TEXT_MAX || crate::jwks::check_https(&self.jwks_uri).is_err() {
            return err("jwks_uri must be an absolute https:// URL (plain http is never fetched)");
        }
        if self.audiences.is_empty() || self.audiences.len() > LIST_MAX {
            return err("audiences must list 1 to 32 accepted audiences");
        }
        if self.audiences.iter().any(|a| a.is_empty() || a.len() > TEXT_MAX) {
            return err("every audience must be a non-empty string");
        }
        if self.algorithms.is_empty() {
            return err(
                "algorithms must list at least one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
            );
        }
        let mut algorithms = Vec::new();
        for name in &self.algorithms {
            match Algorithm::parse(name) {
                Ok(alg) if !algorithms.contains(&alg.as_str().to_owned()) => algorithms.push(alg.as_str().to_owned()),
                Ok(_) => {}
                Err(_) => {
                    return Err(SpecError(format!(
                        "algorithm {name:?} is not accepted; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
                    )))
                }
            }
        }
        let subject_claim = self.subject_claim.unwrap_or_else(|| "sub".into());
        let scope_claim = self.scope_claim.unwrap_or_else(|| "scope".into());
        if !claim_name_ok(&subject_claim) || !claim_name_ok(&scope_claim) {
            return err("subject_claim and scope_claim must be claim names of 1 to 128 printable characters");
        }
        if self.required_claims.len() > LIST_MAX || !self.required_claims.iter().all(|c| claim_name_ok(c)) {
            return err("required_claims must list at most 32 claim names");
        }
        let leeway_seconds = self.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
        if u64::from(leeway_seconds) > config.leeway_max.as_secs() {
            return Err(SpecError(format!("leeway_seconds may be at most {}", config.leeway_max.as_secs())));
        }
        Ok(IdentityProviderRecord {
            id: ProviderId::from_uuid(uuid::Uuid::now_v7()),
            tenant_id,
            issuer: self.issuer,
            jwks_uri: self.jwks_uri,
            audiences: self.audiences,
            algorithms,
            subject_claim,
            scope_claim,
            leeway_seconds,
            required_claims: self.required_claims,
            created_at: now,
        })
    }
}

struct Registered {
    provider: Option<Arc<IdentityProviderRecord>>,
    fetched: Instant,
}

pub struct Providers {
    store: Arc<dyn LedgerStore>,
    config: ProvidersConfig,
    jwks: JwksCache<JwkSet>,
    by_issuer: Mutex<HashMap<String, Registered>>,
}

impl Providers {
    pub fn new(store: Arc<dyn LedgerStore>, config: ProvidersConfig) -> Result<Self, AuthError> {
        let jwks = JwksCache::new(config.jwks.clone()).map_err(|_| AuthError::JwksClient)?;
        Ok(Providers { store, config, jwks, by_issuer: Mutex::new(HashMap::new()) })
    }

    /// The provider registered for `issuer`, if any (cached).
    pub async fn by_issuer(&self, issuer: &str) -> Result<Option<Arc<IdentityProviderRecord>>, AuthError> {
        {
            let cache = self.by_issuer.lock();
            if let Some(entry) = cache.get(issuer) {
                let ttl =
                    if entry.provider.is_some() { self.config.registry_ttl } else { self.config.registry_negative_ttl };
                if entry.fetched.elapsed() < ttl {
                    return Ok(entry.provider.clone());
                }
            }
        }
        let provider = self.store.identity_provider_by_issuer(issuer).await?.map(Arc::new);
        let mut cache = self.by_issuer.lock();
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(issuer.to_owned(), Registered { provider: provider.clone(), fetched: Instant::now() });
        Ok(provider)
    }

    /// Whether the provider still exists (tokens exchanged for an IdP token hang on it).
    pub async fn is_registered(&self, tenant: &TenantId, id: &ProviderId) -> Result<bool, AuthError> {
        let cached = self.by_issuer.lock().values().any(|r| {
            r.fetched.elapsed() < self.config.registry_ttl
                && r.provider.as_ref().is_some_and(|p| &p.id == id && &p.tenant_id == tenant)
        });
        if cached {
            return Ok(true);
        }
        Ok(self.store.identity_provider(tenant, id).await?.is_some())
    }

    /// Forgets cached registrations (after a provider is added or removed here).
    pub fn invalidate(&self, removed_jwks_uri: Option<&str>) {
        self.by_issuer.lock().clear();
        if let Some(uri) = removed_jwks_uri {
            self.jwks.forget(uri);
        }
    }

    pub fn stats(&self, jwks_uri: &str) -> JwksStats {
        self.jwks.stats(jwks_uri)
    }

    /// Verifies a token of the provider registered for `issuer`.
    pub async fn verify(
        &self,
        token: &Unverified<'_>,
        issuer: &str,
        now: Timestamp,
    ) -> Result<VerifiedToken, AuthError> {
        let fail = |r| Err(AuthError::Unauthenticated(r));
        let Some(provider) = self.by_issuer(issuer).await? else {
            return fail(FailureReason::UnknownIssuer);
        };
        if !provider.algorithms.iter().any(|a| a == token.header.alg.as_str()) {
            return fail(FailureReason::AlgorithmNotAllowed);
        }
        let Some(kid) = token.header.kid.as_deref() else {
            return fail(FailureReason::UnknownKid);
        };
        let keys = match self.jwks.keys_for(&provider.jwks_uri, kid).await {
            Ok(keys) => keys,
            Err(JwksError::UnknownKid) => return fail(FailureReason::UnknownKid),
            Err(_) => return fail(FailureReason::ProviderUnavailable),
        };
        let Some(key) = keys.get(kid) else {
            return fail(FailureReason::UnknownKid);
        };
        token.verify(key).map_err(|e| AuthError::Unauthenticated(e.into()))?;
        let claims = &token.claims;
        claims
            .validate(&Validation {
                now: now.micros().div_euclid(1_000_000),
                leeway: i64::from(provider.leeway_seconds),
                issuer: &provider.issuer,
                audiences: &provider.audiences,
                required: &provider.required_claims,
            })
            .map_err(|e| AuthError::Unauthenticated(e.into()))?;
        let subject = match claims.extra.get(&provider.subject_claim) {
            Some(Value::String(s)) => {
                SubjectId::parse(s).map_err(|_| AuthError::Unauthenticated(FailureReason::InvalidSubject))?
            }
            Some(_) => return fail(FailureReason::InvalidClaim),
            None => return fail(FailureReason::MissingClaim),
        };
        let scopes = scopes_from(claims.extra.get(&provider.scope_claim))
            .ok_or(AuthError::Unauthenticated(FailureReason::InvalidClaim))?;
        let exp = claims.exp.ok_or(AuthError::Unauthenticated(FailureReason::MissingClaim))?;
        let expires_at = Timestamp::from_micros(exp.saturating_mul(1_000_000));
        let principal = Principal {
            tenant_id: Some(provider.tenant_id.clone()),
            subject: Some(subject),
            scopes,
            method: AuthMethod::IdpToken,
            credential_id: provider.id.to_string(),
            expires_at: Some(expires_at),
        };
        let leeway = i64::from(provider.leeway_seconds) * 1_000_000;
        let accepted_until = Timestamp::from_micros(expires_at.micros().saturating_add(leeway));
        Ok(VerifiedToken { principal, accepted_until, root: Some(Root::Provider(provider.id.clone())) })
    }
}

/// Scopes from a provider's scope claim: a space-separated string or an array of strings.
/// Names that are not intents (an IdP's `openid`, `profile`, …) grant nothing and are skipped;
/// a claim of another JSON type is malformed. An absent claim grants nothing.
fn scopes_from(claim: Option<&Value>) -> Option<Scopes> {
    let names: Vec<&str> = match claim {
        None => Vec::new(),
        Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        Some(Value::Array(items)) => items.iter().map(Value::as_str).collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    let known = names.into_iter().filter(|n| *n == "*" || licenseseal_ledger::Intent::parse(n).is_some());
    Scopes::parse(known).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use licenseseal_ledger::Intent;
    use serde_json::json;

    fn spec() -> ProviderSpec {
        ProviderSpec {
            issuer: "https://idp.example".into(),
            jwks_uri: "https://idp.example/jwks.json".into(),
            audiences: vec!["api".into()],
            algorithms: vec!["RS256".into(), "EdDSA".into()],
            subject_claim: None,
            scope_claim: None,
            leeway_seconds: None,
            required_claims: vec![],
        }
    }

    fn check(spec: ProviderSpec) -> Result<IdentityProviderRecord, SpecError> {
        spec.validate(TenantId::from_uuid(uuid::Uuid::now_v7()), &ProvidersConfig::default(), Timestamp::from_micros(0))
    }

    #[test]
    fn registration_refuses_plain_http_symmetric_and_unsigned_algorithms() {
        let ok = check(spec()).unwrap();
        assert_eq!((ok.subject_claim.as_str(), ok.scope_claim.as_str(), ok.leeway_seconds), ("sub", "scope", 60));
        for uri in ["http://idp.example/jwks.json", "ftp://x/y", "jwks.json", "https://"] {
            assert!(check(ProviderSpec { jwks_uri: uri.into(), ..spec() }).is_err(), "{uri}");
        }
        for alg in ["HS256", "none", "None", "rs256", "ES512"] {
            assert!(check(ProviderSpec { algorithms: vec![alg.into()], ..spec() }).is_err(), "{alg}");
        }
        assert!(check(ProviderSpec { algorithms: vec![], ..spec() }).is_err());
        assert!(check(ProviderSpec { audiences: vec![], ..spec() }).is_err());
        assert!(check(ProviderSpec { leeway_seconds: Some(100_000), ..spec() }).is_err());
    }

    #[test]
    fn scope_claims_map_known_intents_and_refuse_wrong_types() {
        let s = scopes_from(Some(&json!("openid usage.debit"))).unwrap();
        assert!(s.allows(Intent::UsageDebit) && !s.allows(Intent::CreditsGrant));
        let s = scopes_from(Some(&json!(["ledger.read", "profile"]))).unwrap();
        assert!(s.allows(Intent::LedgerRead));
        assert!(scopes_from(None).unwrap().is_empty());
        assert!(scopes_from(Some(&json!(42))).is_none());
        assert!(scopes_from(Some(&json!([1]))).is_none());
    }
}
