//! The HTTP edge of LicenseSeal (axum): routes, extractors, and the one mapping from errors to
//! RFC 9457 problem responses.
//!
//! Architecture invariant: only this crate knows HTTP. Handlers turn requests into typed
//! commands, hand them to the store, and render what comes back; they decide nothing about
//! money themselves.

mod cursor;
mod error;
mod extract;
mod idle;
mod replay;
mod routes;
mod signed;
mod tls;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use licenseseal_auth::authority::{Authority, AuthorityConfig};
use licenseseal_auth::mtls::Mtls;
use licenseseal_auth::providers::{Providers, ProvidersConfig};
use licenseseal_auth::seal::MasterKey;
use licenseseal_auth::signatures::{Signatures, SignaturesConfig};
use licenseseal_auth::{ApiKeys, ApiKeysConfig, Authenticator};
use licenseseal_ledger::TenantId;
use licenseseal_store::{Clock, LedgerStore};
use parking_lot::Mutex;

pub use cursor::CursorSigner;
pub use error::{ApiError, Problem};
pub use extract::CorrelationId;
pub use tls::{TlsIdentity, TlsPeer};

/// Named limits of the HTTP edge.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted.
    pub body_bytes_max: usize,
    /// Time a request may take before it is answered with 408.
    pub request_timeout: Duration,
    /// Default and largest page size of list endpoints.
    pub page_size_default: u32,
    pub page_size_max: u32,
    /// How often gathered API-key last-used times are written.
    pub last_used_flush_interval: Duration,
    /// Longest wait for in-flight requests after a shutdown signal.
    pub shutdown_drain_max: Duration,
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection on which neither side has moved a byte for this long is closed (a new
    /// one gets `header_read_timeout` for its first byte).
    pub idle_timeout: Duration,
    pub api_keys: ApiKeysConfig,
    pub authority: AuthorityConfig,
    pub providers: ProvidersConfig,
    pub signatures: SignaturesConfig,
    /// Most verified tokens remembered (each until its `exp`).
    pub verified_tokens_max: usize,
    /// How long tenant auth settings, mTLS hostnames, CAs and identity rules are trusted
    /// without asking the store (changes made through this instance apply at once).
    pub tenant_cache_ttl: Duration,
    /// Seals secrets at rest. The default is a random key per process, fit for tests only;
    /// the binary always loads the configured (or generated-and-kept) key.
    pub master_key: MasterKey,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            body_bytes_max: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            page_size_default: 100,
            page_size_max: 1000,
            last_used_flush_interval: Duration::from_secs(10),
            shutdown_drain_max: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            api_keys: ApiKeysConfig::default(),
            authority: AuthorityConfig::default(),
            providers: ProvidersConfig::default(),
            signatures: SignaturesConfig::default(),
            verified_tokens_max: 100_000,
            tenant_cache_ttl: Duration::from_secs(30),
            master_key: MasterKey::generate(),
        }
    }
}

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Arc<dyn LedgerStore>,
    pub auth: Authenticator,
    pub clock: Arc<dyn Clock>,
    pub cursors: CursorSigner,
    pub config: ServerConfig,
    known_tenants: Mutex<HashSet<TenantId>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub async fn new(
        store: Arc<dyn LedgerStore>,
        clock: Arc<dyn Clock>,
        config: ServerConfig,
    ) -> Result<Self, ApiError> {
        let cursors = CursorSigner::new(store.cursor_secret().await?);
        let keys = ApiKeys::new(store.clone(), config.api_keys.clone());
        let authority =
            Authority::open(store.clone(), config.master_key.clone(), config.authority.clone(), clock.now()).await?;
        let providers = Providers::new(store.clone(), config.providers.clone())?;
        let mtls = Mtls::new(store.clone(), config.tenant_cache_ttl);
        let signatures = Signatures::new(store.clone(), config.master_key.clone(), config.signatures.clone());
        let auth = Authenticator::new(keys, authority, providers, mtls, signatures, config.verified_tokens_max);
        Ok(AppState(Arc::new(Inner { store, auth, clock, cursors, config, known_tenants: Mutex::new(HashSet::new()) })))
    }
}

/// The whole application as a router.
pub fn router(state: AppState) -> Router {
    let timeout = state.config.request_timeout;
    let body_max = state.config.body_bytes_max;
    routes::routes()
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(body_max))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(replay::stamp))
        .layer(axum::middleware::from_fn_with_state(state.clone(), replay::layer))
        .layer(axum::middleware::from_fn_with_state(state.clone(), signed::verify))
        .layer(axum::middleware::from_fn_with_state(state.clone(), read_body_first))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(axum::middleware::from_fn_with_state(state.clone(), tls::bind_host))
        .layer(axum::middleware::from_fn(edge))
        .with_state(state)
}

/// Reads the whole request body (bounded, and inside the request timeout) once, before any
/// layer or handler looks at it: the signature check and the idempotency layer need it whole,
/// and handlers refuse unauthenticated or unauthorised requests before they parse it — over
/// HTTP/2 an answer before the body is read comes with a RST_STREAM for the unread rest, which
/// some clients (curl) report as a stream error instead of showing the 401 or 403.
async fn read_body_first(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(refusal) = extract::refuse_body_head(&parts.headers, &state) {
        return axum::response::IntoResponse::into_response(refusal);
    }
    match extract::read_body(body, &state).await {
        Ok(bytes) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

/// Longest request target (path and query) taken.
pub const URI_BYTES_MAX: usize = 8 * 1024;
/// Most header fields in a request.
pub const HEADERS_MAX: usize = 100;
/// Most bytes of header names and values in a request.
pub const HEADER_BYTES_MAX: usize = 32 * 1024;
/// hyper's own limits sit well above ours, so that a request over ours still reaches `edge`
/// and gets a problem body; beyond these hyper answers by itself, with an empty body.
const HYPER_HEADERS_MAX: usize = 1024;
/// (HPACK lets a few bytes on the wire decode to this much, on each of up to 200 streams.)
const H2_HEADER_LIST_BYTES_MAX: u32 = 64 * 1024;

/// A 414 or 431 problem when the request line or the headers are over our limits.
fn oversized_head(request: &Request) -> Option<Problem> {
    let target = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > URI_BYTES_MAX {
        let detail = format!("the request path and query exceed {} KiB", URI_BYTES_MAX / 1024);
        return Some(Problem::new(StatusCode::URI_TOO_LONG, "uri_too_long", detail));
    }
    let headers = request.headers();
    let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if headers.len() > HEADERS_MAX || bytes > HEADER_BYTES_MAX {
        let detail = format!(
            "the request has more than {HEADERS_MAX} header fields or {} KiB of headers",
            HEADER_BYTES_MAX / 1024
        );
        return Some(Problem::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", detail));
    }
    None
}

/// Client-certificate headers set by proxies; stripped from every incoming request.
const FORWARDED_CERT_HEADERS: [&str; 4] =
    ["x-forwarded-client-cert", "client-cert", "client-cert-chain", "x-client-cert"];

/// Outermost layer: sets the correlation id, renders every error as problem+json with it,
/// and echoes it in `X-Request-Id`.
async fn edge(mut request: Request, next: Next) -> Response {
    // Certificate headers a proxy might add are never taken from clients: identity from a
    // client certificate comes only from our own TLS handshake.
    for name in FORWARDED_CERT_HEADERS {
        request.headers_mut().remove(name);
    }
    let correlation_id = extract::correlation_from(request.headers());
    request.extensions_mut().insert(CorrelationId(correlation_id.clone()));
    let mut response = match oversized_head(&request) {
        Some(problem) => problem.render(&correlation_id),
        None => next.run(request).await,
    };
    if let Some(problem) = response.extensions_mut().remove::<Problem>() {
        if problem.status == StatusCode::FORBIDDEN {
            // Every refusal for lack of permission is audited here, whichever check made it
            // (401s are audited where the credential is checked, with the precise reason).
            tracing::warn!(
                target: "licenseseal::audit",
                correlation_id,
                credential = problem.audit_credential.as_deref().unwrap_or(""),
                reason = %problem.detail,
                "request forbidden"
            );
        }
        let headers = std::mem::take(response.headers_mut());
        response = problem.render(&correlation_id);
        for (name, value) in &headers {
            if !response.headers().contains_key(name) {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
    } else if response.status().as_u16() >= 400 {
        let is_problem = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
        if !is_problem {
            if response.status().is_server_error() {
                tracing::error!(correlation_id, status = %response.status(), "request failed");
            }
            response = Problem::for_status(response.status()).render(&correlation_id);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (at most `shutdown_drain_max`), writes pending last-used times and
/// stops the store's writer. A client that never finishes sending its request headers is cut
/// off after `header_read_timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_tls(listener, None, state, shutdown).await
}

/// Like `serve`, plus a TLS listener (client certificates requested, never required; HTTP/2
/// and HTTP/1.1) when `tls` is given. Both stop together.
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    tls: Option<(tokio::net::TcpListener, Arc<TlsIdentity>)>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let flusher = tokio::spawn(flush_last_used(state.clone()));
    let reloader = tokio::spawn(reload_authority_keys(state.clone()));
    let app = router(state.clone());
    // Both listeners answer HTTP/1.1 and HTTP/2 (the plain one with prior knowledge).
    let builder = || {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(state.config.header_read_timeout)
            .max_headers(HYPER_HEADERS_MAX)
            .half_close(true);
        builder.http2().max_header_list_size(H2_HEADER_LIST_BYTES_MAX);
        builder
    };
    let plain = builder();
    let secure = builder();
    let secure = Arc::new(secure);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (tls_listener, identity) = match tls {
        Some((l, i)) => (Some(l), Some(i)),
        None => (None, None),
    };
    tokio::pin!(shutdown);
    loop {
        let tls_accept = async {
            match &tls_listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let Some(stream) = accepted_stream(accepted).await else { continue };
                let service = TowerToHyperService::new(app.clone());
                let stream = idle::IdleTimeout::new(stream, state.config.header_read_timeout, state.config.idle_timeout);
                let connection = plain.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            accepted = tls_accept => {
                let Some(stream) = accepted_stream(accepted).await else { continue };
                let (state, app, secure, watcher) = (state.clone(), app.clone(), secure.clone(), graceful.watcher());
                let identity = identity.clone().expect("a TLS listener has an identity");
                tokio::spawn(async move {
                    let timeout = state.config.header_read_timeout;
                    let Some((tls, peer)) = tls::handshake(&state, &identity, stream, timeout).await else { return };
                    let app = tower::ServiceExt::map_request(app, move |mut request: axum::http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(peer.clone());
                        request
                    });
                    let tls = idle::IdleTimeout::new(tls, timeout, state.config.idle_timeout);
                    let connection = secure.serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app));
                    let _ = watcher.watch(connection.into_owned()).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(tls_listener);
    let drain_max = state.config.shutdown_drain_max;
    if tokio::time::timeout(drain_max, graceful.shutdown()).await.is_err() {
        tracing::warn!(?drain_max, "in-flight connections did not finish in time; closing them");
    }
    flusher.abort();
    reloader.abort();
    if let Err(e) = state.auth.keys.flush_last_used().await {
        tracing::warn!(error = %e, "could not record api key last-used times at shutdown");
    }
    state.store.shutdown().await;
    Ok(())
}

/// A freshly accepted connection with TCP_NODELAY; on an accept error (out of descriptors or
/// similar) backs off instead of spinning.
async fn accepted_stream(
    accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
) -> Option<tokio::net::TcpStream> {
    match accepted {
        Ok((stream, _)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot accept a connection");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

async fn flush_last_used(state: AppState) {
    let mut tick = tokio::time::interval(state.config.last_used_flush_interval);
    loop {
        tick.tick().await;
        if let Err(e) = state.auth.keys.flush_last_used().await {
            tracing::warn!(error = %e, "could not record api key last-used times");
        }
    }
}

/// Picks up Authority key rotations made by other instances.
async fn reload_authority_keys(state: AppState) {
    let mut tick = tokio::time::interval(state.config.authority.key_reload_interval);
    loop {
        tick.tick().await;
        if let Err(e) = state.auth.authority.reload_if_due().await {
            tracing::warn!(error = %e, "could not reload the Authority signing keys");
        }
    }
}
