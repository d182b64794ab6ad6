//! The TLS listener (`serve --tls-listen`): rustls with client certificates requested, never
//! required, so every other method works there too.
//!
//! Binding (documented choice: SNI/Host): a tenant binds a hostname (`PATCH /v1/tenant`,
//! `mtls_hostname`). The TLS server name a client sends picks the tenant, and only that
//! tenant's CAs verify the client certificate during the handshake (chain, validity, clientAuth
//! usage — a certificate that fails is refused by the handshake itself). Every request on the
//! connection must then name that same host (`Host` or HTTP/2 `:authority`); any other host is
//! answered `421 Misdirected Request`, so one connection can never act for two tenants.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use licenseseal_ledger::TenantId;
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::LazyConfigAcceptor;

use crate::error::Problem;
use crate::{ApiError, AppState};

/// The server's certificate chain and key.
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("chain", &self.chain.len()).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the TLS certificate file holds no usable PEM certificate")]
    Certificate,
    #[error("the TLS key file holds no usable PEM private key")]
    Key,
    #[error("the TLS certificate and key do not fit together: {0}")]
    Config(String),
}

impl TlsIdentity {
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain: Vec<_> =
            CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|_| TlsError::Certificate)?;
        if chain.is_empty() {
            return Err(TlsError::Certificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Key)?;
        let identity = TlsIdentity { chain, key };
        identity.config(None).map_err(TlsError::Config)?;
        Ok(identity)
    }

    /// A rustls configuration requesting client certificates chaining to `roots` (none: not
    /// requested). HTTP/2 and HTTP/1.1 are offered.
    fn config(&self, roots: Option<Arc<RootCertStore>>) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = match roots {
            Some(roots) => WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| e.to_string())?,
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// What the TLS handshake established, attached to every request of the connection.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The server name the client asked for (SNI), lowercased.
    pub server_name: Option<String>,
    /// The tenant that name is bound to.
    pub tenant: Option<TenantId>,
    /// The client certificate, verified against that tenant's CAs.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// Completes one TLS handshake: reads the ClientHello, picks the tenant by server name, and
/// requests a client certificate against that tenant's CAs only.
pub(crate) async fn handshake(
    state: &AppState,
    identity: &TlsIdentity,
    stream: tokio::net::TcpStream,
    timeout: Duration,
) -> Option<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, TlsPeer)> {
    let start = tokio::time::timeout(timeout, LazyConfigAcceptor::new(Acceptor::default(), stream)).await.ok()?.ok()?;
    let server_name = start.client_hello().server_name().map(str::to_ascii_lowercase);
    let tenant = match &server_name {
        Some(name) => state.auth.mtls.tenant_for_host(name).await.ok().flatten(),
        None => None,
    };
    let roots = match &tenant {
        Some(t) => state.auth.mtls.trust(t).await.ok().and_then(|trust| trust.roots.clone()),
        None => None,
    };
    let config = match identity.config(roots) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the TLS configuration for a connection");
            return None;
        }
    };
    let tls = match tokio::time::timeout(timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Includes client certificates refused by the tenant's CAs (chain, validity, usage).
            tracing::warn!(target: "licenseseal::audit", server_name, reason = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => return None,
    };
    let client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
    Some((tls, TlsPeer { server_name, tenant, client_cert }))
}

fn host_of(request: &Request) -> Option<String> {
    let host = request.uri().authority().map(|a| a.host().to_owned()).or_else(|| {
        request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| strip_port(h).to_owned())
    })?;
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

/// On TLS connections: every request must name the host the handshake was for; a host bound
/// to an mTLS tenant can only be reached through a handshake for that host.
pub(crate) async fn bind_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(peer) = request.extensions().get::<TlsPeer>().cloned() else {
        return next.run(request).await;
    };
    let host = host_of(&request);
    let misdirected = match (&peer.server_name, &host) {
        (Some(sni), Some(host)) => sni != host,
        (Some(_), None) => true,
        (None, Some(host)) => matches!(state.auth.mtls.tenant_for_host(host).await, Ok(Some(_))),
        (None, None) => false,
    };
    if misdirected {
        tracing::warn!(
            target: "licenseseal::audit",
            server_name = peer.server_name.as_deref().unwrap_or(""),
            host = host.as_deref().unwrap_or(""),
            "request for another host than the TLS connection's"
        );
        return ApiError::Misdirected.into_response();
    }
    next.run(request).await
}

impl ApiError {
    pub(crate) fn misdirected_problem() -> Problem {
        Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            "this connection was opened for another host; open a new connection for this one",
        )
    }
}
