//! Mutual TLS: a tenant registers CA certificates and identity rules. During the handshake
//! rustls checks the client certificate against the CAs of the tenant the TLS server name is
//! bound to (chain, validity period, clientAuth usage); here a verified certificate becomes a
//! principal through the tenant's rules — by SHA-256 fingerprint, or by a SAN of a given type.
//!
//! Architecture invariant: a certificate is only ever checked against the CAs of the tenant
//! its connection is bound to, and it only ever yields a principal of that tenant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use licenseseal_ledger::{TenantId, Timestamp};
use licenseseal_store::{ClientIdentityRecord, LedgerStore};
use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::{AuthError, AuthMethod, FailureReason, Principal};

/// Largest CA bundle accepted at registration.
pub const CA_BUNDLE_BYTES_MAX: usize = 64 * 1024;
/// Most certificates in one bundle.
pub const CA_BUNDLE_CERTS_MAX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtlsError {
    #[error("{0}")]
    InvalidBundle(&'static str),
    #[error("the client certificate could not be parsed")]
    InvalidCertificate,
}

/// Lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a PEM bundle of CA certificates, refusing anything that is not a usable CA:
/// no certificate at all, a block that does not parse, a certificate that is not a CA, or one
/// webpki cannot use as a trust anchor. Returns each certificate with its fingerprint.
pub fn parse_ca_bundle(pem: &str) -> Result<Vec<(CertificateDer<'static>, String)>, MtlsError> {
    let bad = |m| Err(MtlsError::InvalidBundle(m));
    if pem.len() > CA_BUNDLE_BYTES_MAX {
        return bad("the CA bundle exceeds 64 KiB");
    }
    if pem.contains("PRIVATE KEY") {
        return bad("the bundle contains a private key; send only CA certificates");
    }
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let Ok(der) = item else { return bad("a PEM block of the bundle does not parse") };
        let Ok((rest, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            return bad("a certificate of the bundle does not parse");
        };
        if !rest.is_empty() {
            return bad("a certificate of the bundle has trailing bytes");
        }
        if !cert.is_ca() {
            return bad("a certificate of the bundle is not a CA certificate (basicConstraints cA)");
        }
        let mut probe = RootCertStore::empty();
        if probe.add(der.clone()).is_err() {
            return bad("a certificate of the bundle cannot be used as a trust anchor");
        }
        if out.len() == CA_BUNDLE_CERTS_MAX {
            return bad("the bundle holds more than 16 certificates");
        }
        let fp = fingerprint(der.as_ref());
        out.push((der, fp));
    }
    if out.is_empty() {
        return bad("the bundle holds no PEM certificate");
    }
    Ok(out)
}

/// What identity rules look at in a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub fingerprint_sha256: String,
    pub san_uris: Vec<String>,
    pub san_dns: Vec<String>,
    /// Whether the certificate names clientAuth among its extended key usages.
    pub client_auth: bool,
    /// The validity period, Unix seconds: checked on every request, so that a long-lived
    /// connection stops working when its certificate expires.
    pub not_before: i64,
    pub not_after: i64,
}

impl ClientCert {
    pub fn parse(der: &[u8]) -> Result<Self, MtlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| MtlsError::InvalidCertificate)?;
        let mut parsed = ClientCert {
            fingerprint_sha256: fingerprint(der),
            san_uris: Vec::new(),
            san_dns: Vec::new(),
            client_auth: false,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) => parsed.san_uris.push((*uri).to_owned()),
                            GeneralName::DNSName(dns) => parsed.san_dns.push(dns.to_ascii_lowercase()),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::ExtendedKeyUsage(eku) => parsed.client_auth = eku.client_auth,
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// The first rule matching the certificate: a fingerprint rule, else a SAN URI rule, else a
/// SAN DNS rule. A SAN rule matches only a SAN of its own type.
pub fn identify<'a>(cert: &ClientCert, rules: &'a [ClientIdentityRecord]) -> Option<&'a ClientIdentityRecord> {
    let by_fingerprint = rules.iter().find(|r| {
        r.fingerprint_sha256.as_ref().is_some_and(|fp| {
            fp.len() == cert.fingerprint_sha256.len()
                && bool::from(fp.as_bytes().ct_eq(cert.fingerprint_sha256.as_bytes()))
        })
    });
    by_fingerprint
        .or_else(|| rules.iter().find(|r| r.san_uri.as_ref().is_some_and(|u| cert.san_uris.contains(u))))
        .or_else(|| {
            rules.iter().find(|r| r.san_dns.as_ref().is_some_and(|d| cert.san_dns.contains(&d.to_ascii_lowercase())))
        })
}

/// A tenant's mTLS trust: its CAs as a root store, and its identity rules.
pub struct TenantTrust {
    pub tenant: TenantId,
    /// `None` when the tenant registered no CA (client certificates are not requested).
    pub roots: Option<Arc<RootCertStore>>,
    pub identities: Vec<ClientIdentityRecord>,
}

struct Cached<T> {
    value: T,
    fetched: Instant,
}

/// Hostname bindings and tenant trust, cached for a bounded time and dropped on any change
/// made through this instance.
pub struct Mtls {
    store: Arc<dyn LedgerStore>,
    ttl: Duration,
    by_host: Mutex<HashMap<String, Cached<Option<TenantId>>>>,
    trust: Mutex<HashMap<TenantId, Cached<Arc<TenantTrust>>>>,
}

/// Most cached hostnames or tenants before the cache is cleared.
const CACHE_ENTRIES_MAX: usize = 10_000;

impl Mtls {
    pub fn new(store: Arc<dyn LedgerStore>, ttl: Duration) -> Self {
        Mtls { store, ttl, by_host: Mutex::new(HashMap::new()), trust: Mutex::new(HashMap::new()) }
    }

    /// The tenant an mTLS hostname is bound to.
    pub async fn tenant_for_host(&self, host: &str) -> Result<Option<TenantId>, AuthError> {
        let host = host.to_ascii_lowercase();
        if let Some(hit) = self.by_host.lock().get(&host).filter(|c| c.fetched.elapsed() < self.ttl) {
            return Ok(hit.value.clone());
        }
        let tenant = self.store.tenant_by_mtls_hostname(&host).await?;
        let mut cache = self.by_host.lock();
        if cache.len() >= CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(host, Cached { value: tenant.clone(), fetched: Instant::now() });
        Ok(tenant)
    }

    pub async fn trust(&self, tenant: &TenantId) -> Result<Arc<TenantTrust>, AuthError> {
        if let Some(hit) = self.trust.lock().get(tenant).filter(|c| c.fetched.elapsed() < self.ttl) {
            return Ok(hit.value.clone());
        }
        let cas = self.store.client_cas(tenant).await?;
        let identities = self.store.client_identities(tenant).await?;
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            for (der, _) in parse_ca_bundle(&ca.pem).unwrap_or_default() {
                let _ = roots.add(der);
            }
        }
        let roots = (!roots.is_empty()).then(|| Arc::new(roots));
        let trust = Arc::new(TenantTrust { tenant: tenant.clone(), roots, identities });
        let mut cache = self.trust.lock();
        if cache.len() >= CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(tenant.clone(), Cached { value: trust.clone(), fetched: Instant::now() });
        Ok(trust)
    }

    /// Whether a client-identity rule is still registered for `tenant` (the root of the
    /// tokens exchanged with a certificate it matched).
    pub async fn is_registered(&self, tenant: &TenantId, id: &str) -> Result<bool, AuthError> {
        Ok(self.trust(tenant).await?.identities.iter().any(|rule| rule.id.as_str() == id))
    }

    /// Forgets everything cached (after CAs, identities or hostnames change here).
    pub fn invalidate(&self) {
        self.by_host.lock().clear();
        self.trust.lock().clear();
    }

    /// The principal of a client certificate that the handshake verified against `tenant`'s CAs.
    pub async fn principal(&self, tenant: &TenantId, der: &[u8], now: Timestamp) -> Result<Principal, AuthError> {
        let fail = |r| Err(AuthError::Unauthenticated(r));
        let Ok(cert) = ClientCert::parse(der) else { return fail(FailureReason::Malformed) };
        if !cert.client_auth {
            return fail(FailureReason::NotClientAuth);
        }
        let trust = self.trust(tenant).await?;
        let Some(rule) = identify(&cert, &trust.identities) else {
            return fail(FailureReason::NoIdentityRule);
        };
        let now_secs = now.micros().div_euclid(1_000_000);
        if now_secs < cert.not_before {
            return fail(FailureReason::NotYetValid);
        }
        if now_secs > cert.not_after {
            return fail(FailureReason::Expired);
        }
        Ok(Principal {
            tenant_id: Some(tenant.clone()),
            subject: rule.subject.clone(),
            scopes: rule.scopes,
            method: AuthMethod::Mtls,
            credential_id: rule.id.to_string(),
            expires_at: None,
        })
    }
}
