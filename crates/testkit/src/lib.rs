//! Test support: real servers over loopback with generated certificates. Never a dependency
//! of the shipped binary.
//!
//! `TestCa` issues server and client certificates with rcgen, so tests exercise real TLS
//! verification instead of switching it off. `JwksServer` is an HTTPS endpoint on
//! `127.0.0.1:<ephemeral>` whose answer (body, status, headers, delay, redirect) a test changes
//! while it runs, and which counts the requests it received.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// A certificate authority that exists only for one test run.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// What a client certificate issued by [`TestCa::client_cert`] contains.
#[derive(Debug, Clone)]
pub struct ClientCertSpec {
    pub common_name: String,
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    pub client_auth: bool,
    pub server_auth: bool,
    pub email_protection: bool,
    /// Start of validity in days relative to now (negative is in the past).
    pub not_before_days: i64,
    /// End of validity in days relative to now (negative is in the past, for expired certificates).
    pub not_after_days: i64,
}

impl Default for ClientCertSpec {
    fn default() -> Self {
        Self {
            common_name: "test-client".to_owned(),
            san_dns: Vec::new(),
            san_uri: Vec::new(),
            client_auth: true,
            server_auth: false,
            email_protection: false,
            not_before_days: -1,
            not_after_days: 30,
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, -1, 365);
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA certificate");
        Self { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names, or IP addresses such as "127.0.0.1"), signed
    /// by this CA: (certificate chain PEM, private key PEM). The chain is the leaf alone, since
    /// this CA signs it directly and clients are expected to trust the CA.
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let (cert, key) = self.issue_server(names);
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate as described by `spec`: (certificate chain PEM, private key PEM).
    pub fn client_cert(&self, spec: &ClientCertSpec) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&spec.common_name);
        let dns = spec.san_dns.iter().map(|name| SanType::DnsName(name.clone().try_into().expect("SAN DNS name")));
        let uris = spec.san_uri.iter().map(|uri| SanType::URI(uri.clone().try_into().expect("SAN URI")));
        params.subject_alt_names = dns.chain(uris).collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let purposes = [
            (spec.client_auth, ExtendedKeyUsagePurpose::ClientAuth),
            (spec.server_auth, ExtendedKeyUsagePurpose::ServerAuth),
            (spec.email_protection, ExtendedKeyUsagePurpose::EmailProtection),
        ];
        params.extended_key_usages = purposes.into_iter().filter(|(on, _)| *on).map(|(_, eku)| eku).collect();
        set_validity(&mut params, spec.not_before_days, spec.not_after_days);
        let key = KeyPair::generate().expect("generate client key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign client certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn issue_server(&self, names: &[&str]) -> (Certificate, KeyPair) {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server certificate names");
        params.distinguished_name = common_name(names.first().map_or("test-server", String::as_str));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, -1, 30);
        let key = KeyPair::generate().expect("generate server key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign server certificate");
        (cert, key)
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Sets validity relative to the current time. rcgen takes `time::OffsetDateTime`; deriving it
/// from the epoch keeps `time` out of our dependencies.
fn set_validity(params: &mut CertificateParams, not_before_days: i64, not_after_days: i64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    let at = |days: i64| {
        let offset = Duration::from_secs(days.unsigned_abs() * 86_400);
        if days >= 0 {
            epoch + now + offset
        } else {
            epoch + now - offset
        }
    };
    params.not_before = at(not_before_days);
    params.not_after = at(not_after_days);
}

/// A JWKS endpoint over HTTPS on `127.0.0.1:<ephemeral>`; every path serves the same answer.
/// Dropping it stops the server and every open connection.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ServerState {
    answer: Mutex<Answer>,
    fetches: AtomicUsize,
    in_flight: AtomicUsize,
    max_concurrent: AtomicUsize,
}

#[derive(Clone)]
struct Answer {
    body: Bytes,
    cache_control: Option<String>,
    status: u16,
    delay: Duration,
    redirect: Option<String>,
    chunked: bool,
}

impl Default for Answer {
    fn default() -> Self {
        Self {
            body: Bytes::from_static(br#"{"keys":[]}"#),
            cache_control: None,
            status: 200,
            delay: Duration::ZERO,
            redirect: None,
            chunked: false,
        }
    }
}

impl JwksServer {
    /// Starts serving `{"keys":[]}` with a certificate for `localhost` and `127.0.0.1` signed by `ca`.
    pub async fn start(ca: &TestCa) -> Self {
        let (cert, key) = ca.issue_server(&["localhost", "127.0.0.1"]);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(ServerState::default());
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(Arc::new(tls)), state.clone()));
        Self { addr, state, task }
    }

    /// `https://localhost:{port}/jwks.json`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/jwks.json", self.addr.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The JSON served with status 200 and `Content-Type: application/json`.
    pub fn set_body(&self, body: serde_json::Value) {
        self.state.answer.lock().body = Bytes::from(body.to_string());
    }

    /// The `Cache-Control` header sent with 200 answers, if any.
    pub fn set_cache_control(&self, value: Option<String>) {
        self.state.answer.lock().cache_control = value;
    }

    /// The status answered; anything but 200 is sent with an empty body.
    pub fn set_status(&self, status: u16) {
        self.state.answer.lock().status = status;
    }

    /// How long to sleep before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        self.state.answer.lock().delay = delay;
    }

    /// When set, every request is answered `302 Found` with this `Location`.
    pub fn set_redirect(&self, location: Option<String>) {
        self.state.answer.lock().redirect = location;
    }

    /// When set, the body is streamed in small chunks without `Content-Length`, so a client
    /// cannot reject it by its announced size.
    pub fn set_chunked(&self, chunked: bool) {
        self.state.answer.lock().chunked = chunked;
    }

    /// HTTP requests received so far.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.max_concurrent.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted. Connections live in a `JoinSet` owned by this task, so
/// aborting it also drops (and so aborts) every connection.
async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<ServerState>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        connections.spawn(async move {
            // A failed handshake is what some tests provoke (untrusted CA); nothing to report.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| answer(request, state.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn answer(
    _request: Request<hyper::body::Incoming>,
    state: Arc<ServerState>,
) -> Result<Response<TestBody>, Infallible> {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&state);
    let answer = state.answer.lock().clone();
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let response = Response::builder();
    let response = if let Some(location) = answer.redirect {
        response.status(StatusCode::FOUND).header("location", location).body(TestBody::empty())
    } else if answer.status != 200 {
        response.status(answer.status).body(TestBody::empty())
    } else {
        let response = response.status(StatusCode::OK).header("content-type", "application/json");
        let response = match answer.cache_control {
            Some(value) => response.header("cache-control", value),
            None => response,
        };
        response.body(TestBody::new(answer.body, answer.chunked))
    };
    Ok(response.expect("valid test response"))
}

/// Counts a request as in flight until dropped, also when the client goes away mid-answer.
struct InFlight<'a>(&'a ServerState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a ServerState) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_concurrent.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body sent in one piece with `Content-Length`, or in 1 KiB chunks without it.
struct TestBody {
    chunks: VecDeque<Bytes>,
    length: Option<u64>,
}

impl TestBody {
    fn empty() -> Self {
        Self { chunks: VecDeque::new(), length: Some(0) }
    }

    fn new(body: Bytes, chunked: bool) -> Self {
        if !chunked {
            let length = Some(body.len() as u64);
            return Self { chunks: VecDeque::from([body]), length };
        }
        let chunks = (0..body.len()).step_by(1024).map(|start| body.slice(start..body.len().min(start + 1024)));
        Self { chunks: chunks.collect(), length: None }
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}
