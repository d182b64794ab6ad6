//! `licenseseal bench`: starts a fresh gateway in-process and measures it over real HTTP.
//!
//! One run measures three workloads with the same number of connections and the same
//! duration, each after a one-second warm-up that is not counted:
//!
//! 1. the ceiling: `GET /healthz` over keep-alive HTTP/1.1 (no auth, no store);
//! 2. LicenseSeal debits: `POST /v1/debits` of 1 credit with a unique idempotency key, spread
//!    round-robin over pre-granted subjects (or all on one subject with `--hot`);
//! 3. the same debits handed straight to the store (no HTTP, JSON or auth), which isolates the
//!    storage engine's durable throughput;
//! 4. the baseline a hand-rolled ledger gets: one SQLite transaction per debit
//!    (`BEGIN IMMEDIATE; SELECT; UPDATE; INSERT; COMMIT`, WAL, `synchronous = FULL`), called
//!    in-process through rusqlite without HTTP, which flatters it.
//!
//! With `--database-url postgres://…` (or `LICENSESEAL_BENCH_DATABASE_URL`) the gateway runs on
//! the PostgreSQL store instead, in a fresh schema of that database, and the baseline is one
//! PostgreSQL transaction per debit (`BEGIN; UPDATE; INSERT; COMMIT`) in another fresh schema
//! of the same server, driven by `pgbench` when it is on the PATH (else by an in-process
//! tokio-postgres loop with as many clients). Both schemas are dropped at the end.
//!
//! Latencies are the measured durations of single requests, all kept and sorted. The summary
//! is a Markdown table meant for BENCHMARKS.md; `--json` adds a JSON summary line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use licenseseal_ledger::{
    Amount, Command, CommandKind, CreditType, Fingerprint, IdempotencyKey, Outcome, SubjectId, TenantId,
};
use licenseseal_server::{AppState, ServerConfig, TlsIdentity};
use licenseseal_store::postgres::{scratch, PgConfig, PgStore};
use licenseseal_store::sqlite::SqliteConfig;
use licenseseal_store::{Clock, Execution, LedgerStore, SystemClock};
use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_postgres::{NoTls, Statement};

/// Time each workload runs before measuring starts.
const WARM_UP: Duration = Duration::from_secs(1);
/// Credits granted to every subject: far more than any run debits.
const GRANT_AMOUNT: u64 = 1_000_000_000_000;
/// Failed responses kept (per workload) to show what went wrong.
const FAILURE_EXAMPLES_MAX: usize = 5;
/// How long a baseline connection waits for SQLite's write lock before giving up.
const BASELINE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients of the PostgreSQL baseline: a hand-rolled ledger's connection pool.
const PG_BASELINE_CLIENTS: usize = 8;
/// pgbench worker threads driving those clients.
const PGBENCH_THREADS: usize = 2;
/// Longest wait to drop the bench schemas at the end.
const PG_DROP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Subjects granted credits before the run; debits go round-robin over them.
    #[arg(long, default_value_t = 1000)]
    subjects: usize,
    /// Concurrent keep-alive HTTP connections (and SQLite connections for the baseline).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds per workload, after a one-second warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Put every debit on one subject (a hot account).
    #[arg(long)]
    hot: bool,
    /// Also print the summary as one JSON line.
    #[arg(long)]
    json: bool,
    /// Directory for the two databases (must not hold a previous run); default: a temporary
    /// directory removed at the end. SQLite mode only.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run on PostgreSQL instead of SQLite: fresh schemas in this database (dropped at the end)
    /// hold the gateway's store and a one-transaction-per-debit baseline run with pgbench.
    #[arg(long, env = "LICENSESEAL_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The credential the debits carry: the API key itself, or an Authority token obtained
    /// for it from `POST /v1/authority/token`.
    #[arg(long, value_enum, default_value_t = BenchAuth::ApiKey)]
    auth: BenchAuth,
    /// Instead of the HTTP workloads, time credential checks in-process: a new Authority token
    /// (parse + Ed25519 + claims), the same token again (verified-token cache), and an API key.
    #[arg(long)]
    verify_only: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchAuth {
    ApiKey,
    Token,
    /// RFC 9421 hmac-sha256 signature over method, target URI and Content-Digest, fresh nonce
    /// per request (signed by the load generator, which pays that cost too).
    Signature,
    /// Client certificates over the TLS listener (HTTP/1.1 keep-alive; one handshake per
    /// connection).
    Mtls,
}

impl BenchAuth {
    fn name(self) -> &'static str {
        match self {
            BenchAuth::ApiKey => "API key",
            BenchAuth::Token => "Authority token",
            BenchAuth::Signature => "HTTP signature (hmac-sha256)",
            BenchAuth::Mtls => "mTLS client certificate",
        }
    }
}

/// Hostname the bench binds to its tenant for mTLS.
const BENCH_MTLS_HOST: &str = "bench.mtls.local";

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    ensure!(args.subjects >= 1, "--subjects must be at least 1");
    ensure!(args.connections >= 1, "--connections must be at least 1");
    ensure!(args.duration_secs >= 1, "--duration-secs must be at least 1");
    let duration = Duration::from_secs(args.duration_secs);
    let subjects: Arc<[String]> = (0..args.subjects).map(|i| format!("bench-subject-{i}")).collect();
    let spread = Spread { subjects: args.subjects, connections: args.connections, hot: args.hot, auth: args.auth };
    if args.verify_only {
        return verify_only().await;
    }

    let database_url = args.database_url.as_deref().map(str::trim).filter(|url| !url.is_empty());
    let (measured, backend) = match database_url {
        None => (run_sqlite(args.data_dir.as_deref(), &subjects, spread, duration).await?, Backend::Sqlite),
        Some(url) => {
            ensure!(
                args.data_dir.is_none(),
                "--data-dir is for SQLite mode; the PostgreSQL mode (--database-url or \
                 LICENSESEAL_BENCH_DATABASE_URL) keeps everything in fresh schemas"
            );
            let (measured, info) = run_postgres(url, &subjects, spread, duration).await?;
            (measured, Backend::Postgres(info))
        }
    };

    let Measured { healthz, debits, store_only, baseline } = measured;
    let summary = Summary {
        machine: Machine::detect(),
        settings: Settings::from(&args),
        backend,
        healthz,
        debits,
        store_only,
        baseline,
    };
    summary.print_markdown();
    if args.json {
        println!("{}", summary.json());
    }
    Ok(())
}

/// The four workloads of a run.
struct Measured {
    healthz: Stats,
    debits: Stats,
    store_only: Stats,
    baseline: Stats,
}

/// SQLite mode: the gateway's store and the baseline in two databases under one directory.
async fn run_sqlite(
    data_dir: Option<&Path>,
    subjects: &Arc<[String]>,
    spread: Spread,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let (_temp, root) = bench_root(data_dir)?;
    let gateway_dir = root.join("gateway");
    let store = crate::open_store(&gateway_dir, SqliteConfig::default())?;
    let gateway = start_gateway(store, &format!("store in {}", gateway_dir.display())).await?;
    let measured = measure_gateway(&gateway, subjects, spread, duration).await;
    gateway.stop().await?;
    let (healthz, debits, store_only) = measured?;

    eprintln!("bench: baseline, one SQLite transaction per debit ({duration:?})");
    let baseline_dir = root.join("baseline");
    let subjects = subjects.clone();
    let baseline = tokio::task::spawn_blocking(move || run_baseline(&baseline_dir, &subjects, spread, duration))
        .await
        .context("the baseline task failed")??;
    Ok(Measured { healthz, debits, store_only, baseline })
}

/// The directory holding both databases, and the temporary directory to remove at the end.
fn bench_root(data_dir: Option<&Path>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    let Some(dir) = data_dir else {
        let temp = tempfile::Builder::new()
            .prefix("licenseseal-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let root = temp.path().to_owned();
        return Ok((Some(temp), root));
    };
    for sub in ["gateway", "baseline"] {
        if dir.join(sub).exists() {
            bail!("{} already exists; the bench needs fresh stores", dir.join(sub).display());
        }
    }
    Ok((None, dir.to_owned()))
}

/// The ceiling and the debits, against a running gateway.
async fn measure_gateway(
    gateway: &Gateway,
    subjects: &Arc<[String]>,
    spread: Spread,
    duration: Duration,
) -> anyhow::Result<(Stats, Stats, Stats)> {
    let addr = gateway.addr;
    let (tenant, key) = tenant_key(addr, &gateway.operator_key).await?;
    eprintln!("bench: granting {} subjects", subjects.len());
    grant_all(addr, &key, subjects, spread.connections).await?;

    eprintln!("bench: GET /healthz ceiling ({duration:?})");
    let healthz = load(&Target::Plain(addr), spread.connections, duration, healthz_requests(), StatusCode::OK).await?;
    eprintln!("bench: POST /v1/debits with an {} ({duration:?})", spread.auth.name());
    let plain = Target::Plain(addr);
    let (target, debits) = match spread.auth {
        BenchAuth::ApiKey => (plain, debit_requests(Auth::Bearer(key.clone()), subjects.clone(), spread, "127.0.0.1")?),
        BenchAuth::Token => {
            let token = authority_token(addr, &key).await?;
            (plain, debit_requests(Auth::Bearer(token), subjects.clone(), spread, "127.0.0.1")?)
        }
        BenchAuth::Signature => {
            let (id, secret) = signing_key(addr, &key).await?;
            let auth = Auth::Signed { keyid: id, key: Arc::new(licenseseal_auth::httpsig::SigningKey::Hmac(secret)) };
            (plain, debit_requests(auth, subjects.clone(), spread, "127.0.0.1")?)
        }
        BenchAuth::Mtls => {
            let pki = gateway.pki.as_ref().context("the mTLS bench needs the TLS listener")?;
            let target = mtls_target(addr, &key, pki).await?;
            (target, debit_requests(Auth::None, subjects.clone(), spread, BENCH_MTLS_HOST)?)
        }
    };
    let debits = load(&target, spread.connections, duration, debits, StatusCode::CREATED).await?;
    eprintln!("bench: store only, no HTTP ({duration:?})");
    let store_only = store_only(&gateway.store, &tenant, subjects, spread, duration).await?;
    Ok((healthz, debits, store_only))
}

/// The same debits handed straight to the store from `connections` tasks: the storage
/// engine's durable throughput without HTTP, JSON or authentication.
async fn store_only(
    store: &Arc<dyn LedgerStore>,
    tenant: &TenantId,
    subjects: &Arc<[String]>,
    spread: Spread,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let window = Window::after_warm_up(duration);
    let mut tasks = JoinSet::new();
    for worker in 0..spread.connections {
        let (store, tenant, subjects) = (store.clone(), tenant.clone(), subjects.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut seq = 0u64;
            while !window.is_over() {
                let key = format!("store-{worker}-{seq}");
                let command = Command {
                    tenant_id: tenant.clone(),
                    idempotency_key: IdempotencyKey::parse(&key)?,
                    fingerprint: Fingerprint::of(&[key.as_bytes()]),
                    correlation_id: key.clone(),
                    kind: CommandKind::Debit {
                        subject: SubjectId::parse(&subjects[spread.pick(worker, seq)])?,
                        credit_type: CreditType::default(),
                        amount: Amount::new(1)?,
                        metadata: None,
                    },
                };
                seq += 1;
                let started = Instant::now();
                let result = match store.execute(command).await {
                    Ok(Execution::Fresh(Outcome::Applied(_))) => Ok(()),
                    other => Err(format!("{other:?}")),
                };
                tally.record(&window, started, result);
            }
            anyhow::Ok(tally)
        });
    }
    let mut tallies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        tallies.push(joined.context("a store worker failed")??);
    }
    Ok(Stats::new(Tally::merge(tallies), duration))
}

/// Which subject a worker's `seq`-th debit goes to: round-robin, or always the first.
#[derive(Clone, Copy)]
struct Spread {
    subjects: usize,
    connections: usize,
    hot: bool,
    auth: BenchAuth,
}

impl Spread {
    fn pick(self, worker: usize, seq: u64) -> usize {
        if self.hot {
            return 0;
        }
        let seq = usize::try_from(seq).unwrap_or(usize::MAX) % self.subjects;
        (seq * self.connections + worker) % self.subjects
    }
}

// --- The gateway under test --------------------------------------------------------------

/// A gateway serving a fresh store on an ephemeral local port until stopped.
struct Gateway {
    addr: SocketAddr,
    operator_key: String,
    store: Arc<dyn LedgerStore>,
    state: AppState,
    /// The TLS listener's certificates (always started; used by `--auth mtls`).
    pki: Option<BenchPki>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Creates the operator key in a fresh store the way `serve` does and serves the store on
/// 127.0.0.1:0 in a spawned task.
async fn start_gateway(store: Arc<dyn LedgerStore>, store_name: &str) -> anyhow::Result<Gateway> {
    let operator_key =
        crate::create_operator_key(store.as_ref()).await?.context("the bench store was initialised already")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = AppState::new(store.clone(), clock, ServerConfig::default()).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let (mut pki, identity) = bench_pki()?;
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1:0")?;
    pki.tls_addr = tls_listener.local_addr()?;
    let tls = Some((tls_listener, Arc::new(identity)));
    let task = tokio::spawn(licenseseal_server::serve_with_tls(listener, tls, state.clone(), shutdown));
    eprintln!("bench: gateway on {addr} (TLS on {}), {store_name}", pki.tls_addr);
    Ok(Gateway { addr, operator_key, store, state, pki: Some(pki), stop, task })
}

impl Gateway {
    /// Shuts down gracefully: in-flight requests finish and the store's writer stops.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the gateway task failed")?.context("the gateway failed")
    }
}

// --- HTTP client -------------------------------------------------------------------------

type Sender = SendRequest<Full<Bytes>>;

/// Builds the `seq`-th request of worker `worker`.
type MakeRequest = Arc<dyn Fn(usize, u64) -> anyhow::Result<Request<Full<Bytes>>> + Send + Sync>;

/// Where the load goes: the plain listener, or the TLS listener with a client certificate.
#[derive(Clone)]
enum Target {
    Plain(SocketAddr),
    Tls { addr: SocketAddr, connector: tokio_rustls::TlsConnector },
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Sender> {
        match self {
            Target::Plain(addr) => connect(*addr).await,
            Target::Tls { addr, connector } => {
                let stream = tcp(*addr).await?;
                let name = rustls_pki_types::ServerName::try_from(BENCH_MTLS_HOST)?;
                let tls = connector.connect(name, stream).await.context("TLS handshake failed")?;
                http1(tls).await
            }
        }
    }
}

async fn tcp(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn http1<T>(io: T) -> anyhow::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.context("HTTP/1.1 handshake failed")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "bench connection closed");
        }
    });
    Ok(sender)
}

/// One HTTP/1.1 keep-alive connection with TCP_NODELAY.
async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    http1(tcp(addr).await?).await
}

/// Sends one request and reads the whole response.
async fn exchange(sender: &mut Sender, request: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A JSON request authenticated with `key`.
fn json_request(
    path: &str,
    key: &str,
    idempotency_key: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, "127.0.0.1")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(idempotency_key) = idempotency_key {
        builder = builder.header("idempotency-key", idempotency_key);
    }
    Ok(builder.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?)
}

/// Sends a setup request, insists on `expected` and returns the JSON body.
async fn call(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
    expected: StatusCode,
) -> anyhow::Result<serde_json::Value> {
    let what = format!("{} {}", request.method(), request.uri());
    let (status, body) = exchange(sender, request).await?;
    ensure!(status == expected, "{what}: expected {expected}, got {status}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).with_context(|| format!("{what}: the response is not JSON"))
}

// --- Setup over HTTP ---------------------------------------------------------------------

/// Creates a tenant and a key for it with every scope; returns the key.
async fn tenant_key(addr: SocketAddr, operator_key: &str) -> anyhow::Result<(TenantId, String)> {
    let mut sender = connect(addr).await?;
    let tenant = json_request("/v1/tenants", operator_key, None, &json!({ "name": "bench" }))?;
    let tenant = call(&mut sender, tenant, StatusCode::CREATED).await?;
    let tenant_id = tenant["id"].as_str().context("the tenant response has no id")?;
    let body = json!({ "tenant_id": tenant_id, "name": "bench", "scopes": ["*"] });
    let key = json_request("/v1/api-keys", operator_key, None, &body)?;
    let key = call(&mut sender, key, StatusCode::CREATED).await?;
    let key = key["key"].as_str().map(str::to_owned).context("the api key response has no key")?;
    Ok((TenantId::parse(tenant_id)?, key))
}

/// Grants every subject `GRANT_AMOUNT`, over up to `connections` connections at once.
async fn grant_all(addr: SocketAddr, key: &str, subjects: &Arc<[String]>, connections: usize) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for worker in 0..connections.min(subjects.len()) {
        let (key, subjects) = (key.to_owned(), subjects.clone());
        tasks.spawn(async move {
            let mut sender = connect(addr).await?;
            for (i, subject) in subjects.iter().enumerate().skip(worker).step_by(connections) {
                let body = json!({ "subject": subject, "amount": GRANT_AMOUNT });
                let grant = json_request("/v1/grants", &key, Some(&format!("grant-{i}")), &body)?;
                call(&mut sender, grant, StatusCode::CREATED).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a grant task failed")??;
    }
    Ok(())
}

/// Exchanges `key` for an Authority token lasting an hour (longer than any run).
async fn authority_token(addr: SocketAddr, key: &str) -> anyhow::Result<String> {
    let mut sender = connect(addr).await?;
    let body = json!({ "grant_type": "client_credentials", "expires_in": 3600 });
    let request = json_request("/v1/authority/token", key, None, &body)?;
    let token = call(&mut sender, request, StatusCode::OK).await?;
    token["access_token"].as_str().map(str::to_owned).context("the token response has no access_token")
}

/// Creates an HMAC signing credential for the bench tenant: (id, secret).
async fn signing_key(addr: SocketAddr, key: &str) -> anyhow::Result<(String, Vec<u8>)> {
    use base64::Engine;
    let mut sender = connect(addr).await?;
    let body = json!({ "alg": "hmac-sha256", "scopes": ["usage.debit", "credits.grant"] });
    let created = call(&mut sender, json_request("/v1/signing-keys", key, None, &body)?, StatusCode::CREATED).await?;
    let id = created["id"].as_str().context("no signing key id")?.to_owned();
    let secret = base64::engine::general_purpose::STANDARD.decode(created["secret"].as_str().context("no secret")?)?;
    Ok((id, secret))
}

/// Throwaway certificates for the mTLS bench: a server certificate for the TLS listener and a
/// tenant CA with one client certificate.
struct BenchPki {
    tls_addr: SocketAddr,
    server_ca_pem: String,
    client_ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

fn bench_pki() -> anyhow::Result<(BenchPki, TlsIdentity)> {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
    let ca = |name: &str| -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        Ok((params.self_signed(&key)?, key))
    };
    let (server_ca, server_ca_key) = ca("bench server CA")?;
    let (client_ca, client_ca_key) = ca("bench client CA")?;
    let server_key = KeyPair::generate()?;
    let server =
        CertificateParams::new(vec![BENCH_MTLS_HOST.to_owned()])?.signed_by(&server_key, &server_ca, &server_ca_key)?;
    let client_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI("spiffe://bench/client".try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = params.signed_by(&client_key, &client_ca, &client_ca_key)?;
    let identity = TlsIdentity::from_pem(server.pem().as_bytes(), server_key.serialize_pem().as_bytes())?;
    let pki = BenchPki {
        tls_addr: "127.0.0.1:0".parse()?,
        server_ca_pem: server_ca.pem(),
        client_ca_pem: client_ca.pem(),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    };
    Ok((pki, identity))
}

/// Binds the bench tenant to the mTLS hostname, trusts the client CA, maps the client
/// certificate to a debit principal, and returns a TLS target presenting that certificate.
async fn mtls_target(addr: SocketAddr, key: &str, pki: &BenchPki) -> anyhow::Result<Target> {
    use rustls_pki_types::pem::PemObject;
    let mut sender = connect(addr).await?;
    let mut patch = json_request("/v1/tenant", key, None, &json!({ "mtls_hostname": BENCH_MTLS_HOST }))?;
    *patch.method_mut() = Method::PATCH;
    call(&mut sender, patch, StatusCode::OK).await?;
    call(
        &mut sender,
        json_request("/v1/client-cas", key, None, &json!({ "pem": pki.client_ca_pem }))?,
        StatusCode::CREATED,
    )
    .await?;
    let rule = json!({ "san_uri": "spiffe://bench/client", "scopes": ["usage.debit"] });
    call(&mut sender, json_request("/v1/client-identities", key, None, &rule)?, StatusCode::CREATED).await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(pki.server_ca_pem.as_bytes())?)?;
    let chain = vec![rustls_pki_types::CertificateDer::from_pem_slice(pki.client_cert_pem.as_bytes())?];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Target::Tls { addr: pki.tls_addr, connector: tokio_rustls::TlsConnector::from(Arc::new(config)) })
}

// --- Credential checks in-process --------------------------------------------------------

/// Credential checks timed one at a time, in-process (no HTTP): the cost a request pays for
/// authentication. Prints medians and p99s in microseconds.
async fn verify_only() -> anyhow::Result<()> {
    const TOKENS: usize = 20_000;
    let (_temp, root) = bench_root(None)?;
    let store = crate::open_store(&root.join("gateway"), SqliteConfig::default())?;
    let gateway = start_gateway(store, "verify-only").await?;
    let (_, key) = tenant_key(gateway.addr, &gateway.operator_key).await?;
    let auth = &gateway.state.auth;
    let now = SystemClock.now();
    let principal = auth.bearer(&key, now).await?;
    let request = licenseseal_auth::authority::TokenRequest::default();
    let tokens: Vec<String> = (0..TOKENS)
        .map(|_| auth.authority.issue(&principal, &request, now).map(|t| t.access_token))
        .collect::<Result<_, _>>()?;
    let timed = |label: &str, samples: Vec<Duration>| {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
        println!("| {label} | {} | {:.2} | {:.2} | {:.2} |", us.len(), at(0.5), at(0.9), at(0.99));
    };
    println!(
        "## licenseseal bench --verify-only
"
    );
    let machine = Machine::detect();
    println!(
        "Machine: {} (nproc {}). One check at a time, in-process.
",
        machine.cpu, machine.nproc
    );
    println!("| Check | Samples | p50 (µs) | p90 (µs) | p99 (µs) |");
    println!("|---|---:|---:|---:|---:|");
    for pass in ["new Authority token (parse, Ed25519, claims, chain)", "same token again (verified-token cache)"] {
        let mut samples = Vec::with_capacity(TOKENS);
        for token in &tokens {
            let started = Instant::now();
            let checked = auth.bearer(token, now).await;
            samples.push(started.elapsed());
            checked?;
        }
        timed(pass, samples);
    }
    let mut samples = Vec::with_capacity(TOKENS);
    for _ in 0..TOKENS {
        let started = Instant::now();
        let checked = auth.bearer(&key, now).await;
        samples.push(started.elapsed());
        checked?;
    }
    timed("API key (cached record)", samples);
    gateway.stop().await
}

// --- Workloads over HTTP -----------------------------------------------------------------

fn healthz_requests() -> MakeRequest {
    Arc::new(|_, _| Ok(Request::get("/healthz").header(header::HOST, "127.0.0.1").body(Full::new(Bytes::new()))?))
}

/// How the bench's debits authenticate.
enum Auth {
    Bearer(String),
    Signed {
        keyid: String,
        key: Arc<licenseseal_auth::httpsig::SigningKey>,
    },
    /// The connection's client certificate.
    None,
}

/// Debits of 1 with a unique idempotency key per request.
fn debit_requests(
    auth: Auth,
    subjects: Arc<[String]>,
    spread: Spread,
    host: &'static str,
) -> anyhow::Result<MakeRequest> {
    let bearer = match &auth {
        Auth::Bearer(token) => Some(HeaderValue::from_str(&format!("Bearer {token}"))?),
        _ => None,
    };
    Ok(Arc::new(move |worker, seq| {
        let subject = &subjects[spread.pick(worker, seq)];
        let body = format!(r#"{{"subject":"{subject}","amount":1}}"#);
        let mut builder = Request::post("/v1/debits")
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", format!("bench-{worker}-{seq}"));
        if let Some(bearer) = &bearer {
            builder = builder.header(header::AUTHORIZATION, bearer.clone());
        }
        if let Auth::Signed { keyid, key } = &auth {
            use licenseseal_auth::httpsig::{sign_request, RequestParts};
            let req = RequestParts {
                method: "POST",
                scheme: "http",
                authority: host,
                path: "/v1/debits",
                query: None,
                headers: &[],
            };
            let created = SystemClock.now().micros().div_euclid(1_000_000);
            let nonce = format!("{worker}-{seq}-{created}");
            let signed =
                sign_request(&req, body.as_bytes(), key, keyid, created, &nonce).map_err(|e| anyhow!("{e}"))?;
            builder = builder
                .header("signature-input", signed.signature_input)
                .header("signature", signed.signature)
                .header("content-digest", signed.content_digest.unwrap_or_default());
        }
        Ok(builder.body(Full::new(Bytes::from(body)))?)
    }))
}

/// Drives `make` over `connections` keep-alive connections through the warm-up and
/// `duration`; a request succeeds when answered with `expected`.
async fn load(
    target: &Target,
    connections: usize,
    duration: Duration,
    make: MakeRequest,
    expected: StatusCode,
) -> anyhow::Result<Stats> {
    let window = Window::after_warm_up(duration);
    let mut tasks = JoinSet::new();
    for worker in 0..connections {
        tasks.spawn(load_worker(target.clone(), worker, window, make.clone(), expected));
    }
    let mut tallies = Vec::with_capacity(connections);
    while let Some(joined) = tasks.join_next().await {
        tallies.push(joined.context("a load worker failed")??);
    }
    Ok(Stats::new(Tally::merge(tallies), duration))
}

/// One connection sending requests back to back until the window closes.
async fn load_worker(
    target: Target,
    worker: usize,
    window: Window,
    make: MakeRequest,
    expected: StatusCode,
) -> anyhow::Result<Tally> {
    let mut sender = target.connect().await?;
    let mut tally = Tally::default();
    let mut seq = 0;
    while !window.is_over() {
        let request = make(worker, seq)?;
        seq += 1;
        let started = Instant::now();
        let (result, broken) = match exchange(&mut sender, request).await {
            Ok((status, _)) if status == expected => (Ok(()), false),
            Ok((status, body)) => (Err(format!("{status}: {}", String::from_utf8_lossy(&body))), false),
            Err(e) => (Err(format!("transport error: {e:#}")), true),
        };
        tally.record(&window, started, result);
        if broken {
            sender = target.connect().await?;
        }
    }
    Ok(tally)
}

// --- Baseline: one SQLite transaction per debit ------------------------------------------

/// Runs `spread.connections` threads, each with its own connection, debiting 1 per
/// transaction through the warm-up and `duration`.
fn run_baseline(dir: &Path, subjects: &[String], spread: Spread, duration: Duration) -> anyhow::Result<Stats> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("baseline.db");
    seed_baseline(&baseline_connection(&path)?, subjects)?;
    let window = Window::after_warm_up(duration);
    let path = path.as_path();
    let tallies = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..spread.connections)
            .map(|worker| scope.spawn(move || baseline_worker(path, worker, subjects, spread, window)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow!("a baseline thread panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(Stats::new(Tally::merge(tallies), duration))
}

/// A connection with WAL, `synchronous = FULL` (as LicenseSeal's store) and a busy timeout.
fn baseline_connection(path: &Path) -> anyhow::Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("cannot open the baseline database {}", path.display()))?;
    conn.busy_timeout(BASELINE_BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    ensure!(mode.eq_ignore_ascii_case("wal"), "the baseline database is not in WAL mode");
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn seed_baseline(conn: &Connection, subjects: &[String]) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE TABLE accounts (subject TEXT PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE events (id INTEGER PRIMARY KEY, subject TEXT NOT NULL,
                              amount INTEGER NOT NULL, idempotency_key TEXT NOT NULL UNIQUE);
         BEGIN;",
    )?;
    let mut insert = conn.prepare("INSERT INTO accounts (subject, balance) VALUES (?1, ?2)")?;
    for subject in subjects {
        insert.execute(params![subject, GRANT_AMOUNT])?;
    }
    conn.execute_batch("COMMIT;")?;
    Ok(())
}

fn baseline_worker(
    path: &Path,
    worker: usize,
    subjects: &[String],
    spread: Spread,
    window: Window,
) -> anyhow::Result<Tally> {
    let mut conn = baseline_connection(path)?;
    let mut tally = Tally::default();
    let mut seq = 0;
    while !window.is_over() {
        let subject = &subjects[spread.pick(worker, seq)];
        let idempotency_key = format!("bench-{worker}-{seq}");
        seq += 1;
        let started = Instant::now();
        let result = debit_once(&mut conn, subject, &idempotency_key).map_err(|e| format!("{e:#}"));
        tally.record(&window, started, result);
    }
    Ok(tally)
}

/// What a hand-rolled ledger does per debit: read, check, write the balance, log the event.
fn debit_once(conn: &mut Connection, subject: &str, idempotency_key: &str) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let balance: i64 =
        tx.prepare_cached("SELECT balance FROM accounts WHERE subject = ?1")?.query_row([subject], |r| r.get(0))?;
    ensure!(balance >= 1, "insufficient balance for {subject}");
    tx.prepare_cached("UPDATE accounts SET balance = ?1 WHERE subject = ?2")?.execute(params![balance - 1, subject])?;
    tx.prepare_cached("INSERT INTO events (subject, amount, idempotency_key) VALUES (?1, 1, ?2)")?
        .execute(params![subject, idempotency_key])?;
    tx.commit()?;
    Ok(())
}

// --- PostgreSQL mode ---------------------------------------------------------------------

/// Where the PostgreSQL run happened and which baseline ran.
struct PgInfo {
    /// `host:port/database`, without credentials.
    server: String,
    version: String,
    schema: String,
    baseline_schema: String,
    runner: PgRunner,
    /// pgbench's own "latency average".
    latency_avg_ms: Option<f64>,
}

#[derive(Clone, Copy)]
enum PgRunner {
    Pgbench,
    TokioPostgres,
}

impl PgRunner {
    fn name(self) -> &'static str {
        match self {
            PgRunner::Pgbench => "pgbench",
            PgRunner::TokioPostgres => "tokio-postgres",
        }
    }
}

/// PostgreSQL mode: creates two fresh schemas, measures the gateway on one and the baseline
/// on the other, and drops both (also when a phase fails or the run is interrupted).
async fn run_postgres(
    url: &str,
    subjects: &Arc<[String]>,
    spread: Spread,
    duration: Duration,
) -> anyhow::Result<(Measured, PgInfo)> {
    let server = describe_server(url)?;
    let admin = pg_connect(url).await.with_context(|| format!("cannot connect to PostgreSQL at {server}"))?;
    let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let nonce = uuid::Uuid::now_v7().as_u128() as u32;
    let schema = format!("ls_bench_{unix}_{nonce}");
    let baseline_schema = format!("{schema}_baseline");
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}; CREATE SCHEMA {baseline_schema};"))
        .await
        .with_context(|| format!("cannot create the bench schemas on {server}"))?;
    drop(admin);
    eprintln!("bench: PostgreSQL {version} at {server}, schemas {schema} and {baseline_schema}");

    let schemas = [schema.as_str(), baseline_schema.as_str()];
    let outcome = tokio::select! {
        outcome = postgres_phases(url, schemas, subjects, spread, duration) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    drop_schemas(url, &server, schemas).await;
    let (measured, runner, latency_avg_ms) = outcome?;
    Ok((measured, PgInfo { server, version, schema, baseline_schema, runner, latency_avg_ms }))
}

async fn postgres_phases(
    url: &str,
    [schema, baseline_schema]: [&str; 2],
    subjects: &Arc<[String]>,
    spread: Spread,
    duration: Duration,
) -> anyhow::Result<(Measured, PgRunner, Option<f64>)> {
    let store = PgStore::connect(&scratch::with_search_path(url, schema), Arc::new(SystemClock), PgConfig::default())
        .await
        .context("cannot open the PostgreSQL store")?;
    let gateway = start_gateway(Arc::new(store), &format!("PostgreSQL store in schema {schema}")).await?;
    let measured = measure_gateway(&gateway, subjects, spread, duration).await;
    gateway.stop().await?;
    let (healthz, debits, store_only) = measured?;

    let baseline_url = scratch::with_search_path(url, baseline_schema);
    seed_pg_baseline(&baseline_url, subjects).await?;
    let (baseline, runner, latency_avg_ms) = match find_on_path("pgbench") {
        Some(pgbench) => {
            let (stats, latency_avg_ms) = run_pgbench(&pgbench, url, baseline_schema, spread, duration).await?;
            (stats, PgRunner::Pgbench, Some(latency_avg_ms))
        }
        None => {
            eprintln!(
                "bench: pgbench is not on the PATH; baseline with {PG_BASELINE_CLIENTS} in-process tokio-postgres \
                 clients, one PostgreSQL transaction per debit ({duration:?})"
            );
            (run_pg_loop(&baseline_url, subjects, spread, duration).await?, PgRunner::TokioPostgres, None)
        }
    };
    check_pg_baseline(&baseline_url).await?;
    Ok((Measured { healthz, debits, store_only, baseline }, runner, latency_avg_ms))
}

/// `host:port/database` of a connection string, without user or password.
fn describe_server(url: &str) -> anyhow::Result<String> {
    let config: tokio_postgres::Config =
        url.parse().map_err(|e| anyhow!("the database url is not a PostgreSQL connection string: {e}"))?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    Ok(format!("{host}:{port}/{database}"))
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "bench PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Drops the bench schemas; a failure is reported, not returned, so that results still print.
async fn drop_schemas(url: &str, server: &str, schemas: [&str; 2]) {
    let drops: String = schemas.iter().map(|s| format!("DROP SCHEMA IF EXISTS {s} CASCADE;")).collect();
    let sql = format!("SET client_min_messages = warning; {drops}");
    let dropped = tokio::time::timeout(PG_DROP_TIMEOUT, async {
        pg_connect(url).await?.batch_execute(&sql).await?;
        anyhow::Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(anyhow!("timed out after {PG_DROP_TIMEOUT:?}")));
    match dropped {
        Ok(()) => eprintln!("bench: dropped schemas {} and {}", schemas[0], schemas[1]),
        Err(e) => eprintln!(
            "bench: WARNING: cannot drop schemas {} and {} on {server} ({e:#}); drop them by hand",
            schemas[0], schemas[1]
        ),
    }
}

/// The hand-rolled ledger's tables, every subject granted `GRANT_AMOUNT`.
async fn seed_pg_baseline(url: &str, subjects: &[String]) -> anyhow::Result<()> {
    let client = pg_connect(url).await.context("cannot connect for the baseline")?;
    client
        .batch_execute(
            "CREATE TABLE accounts (subject TEXT PRIMARY KEY, balance BIGINT);
             CREATE TABLE events (id BIGSERIAL PRIMARY KEY, subject TEXT, amount BIGINT,
                                  idempotency_key TEXT UNIQUE);",
        )
        .await
        .context("cannot create the baseline tables")?;
    let grant = i64::try_from(GRANT_AMOUNT)?;
    client
        .execute("INSERT INTO accounts (subject, balance) SELECT unnest($1::text[]), $2", &[&subjects, &grant])
        .await
        .context("cannot seed the baseline accounts")?;
    client.batch_execute("ANALYZE accounts").await?;
    Ok(())
}

/// Every baseline debit must have hit an account: the debited total equals the events.
async fn check_pg_baseline(url: &str) -> anyhow::Result<()> {
    let client = pg_connect(url).await.context("cannot connect to check the baseline")?;
    let grant = i64::try_from(GRANT_AMOUNT)?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM events),
                    (SELECT COALESCE(sum($1::bigint - balance), 0)::bigint FROM accounts)",
            &[&grant],
        )
        .await?;
    let (events, debited): (i64, i64) = (row.get(0), row.get(1));
    ensure!(events > 0, "the baseline recorded no debits");
    ensure!(events == debited, "the baseline recorded {events} events but debited {debited} credits");
    Ok(())
}

/// A program on the PATH (what `which` finds).
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// The pgbench transaction: a random subject (or the hot one) and a unique key per debit.
fn pgbench_script(spread: Spread) -> String {
    let subject = if spread.hot { "0".to_owned() } else { format!("random(0, {})", spread.subjects - 1) };
    format!(
        "\\set subject {subject}
\\set nonce random(1, 9223372036854775806)
BEGIN;
UPDATE accounts SET balance = balance - 1 WHERE subject = 'bench-subject-' || :subject;
INSERT INTO events (subject, amount, idempotency_key)
  VALUES ('bench-subject-' || :subject, 1, 'pgbench-' || :client_id || '-' || :nonce);
COMMIT;
"
    )
}

/// Runs pgbench for a warm-up, then for `duration` with a per-transaction log; returns its
/// throughput (tps without initial connection time), percentiles from the log, and its
/// latency average.
async fn run_pgbench(
    pgbench: &Path,
    url: &str,
    schema: &str,
    spread: Spread,
    duration: Duration,
) -> anyhow::Result<(Stats, f64)> {
    let dir = tempfile::Builder::new()
        .prefix("licenseseal-pgbench-")
        .tempdir()
        .context("cannot create a temporary directory for pgbench")?;
    let script = dir.path().join("debit.sql");
    std::fs::write(&script, pgbench_script(spread)).context("cannot write the pgbench script")?;
    eprintln!("bench: baseline warm-up with {} ({WARM_UP:?})", pgbench.display());
    pgbench_command(pgbench, url, schema, &script, WARM_UP, None).await?;
    eprintln!(
        "bench: baseline, one PostgreSQL transaction per debit, pgbench with {PG_BASELINE_CLIENTS} clients \
         ({duration:?})"
    );
    let log_prefix = dir.path().join("tx");
    let output = pgbench_command(pgbench, url, schema, &script, duration, Some(&log_prefix)).await?;
    let tps = pgbench_number(&output, "tps = ").with_context(|| format!("no tps in the pgbench output:\n{output}"))?;
    let latency_avg_ms = pgbench_number(&output, "latency average = ")
        .with_context(|| format!("no latency average in the pgbench output:\n{output}"))?;
    let failed = pgbench_number(&output, "number of failed transactions: ").unwrap_or(0.0) as u64;

    let mut tally = read_pgbench_logs(dir.path())?;
    tally.failures = tally.failures.max(failed);
    let mut stats = Stats::new(tally, duration);
    stats.per_sec = tps;
    Ok((stats, latency_avg_ms))
}

/// `pgbench -n -M prepared -c 8 -j 2 -T <secs> -f <script> [-l --log-prefix <prefix>] <url>`
/// with `PGOPTIONS` setting the search path; returns its standard output.
async fn pgbench_command(
    pgbench: &Path,
    url: &str,
    schema: &str,
    script: &Path,
    duration: Duration,
    log_prefix: Option<&Path>,
) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(pgbench);
    command
        .args(["-n", "-M", "prepared"])
        .args(["-c", &PG_BASELINE_CLIENTS.to_string(), "-j", &PGBENCH_THREADS.to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .arg("-f")
        .arg(script);
    if let Some(prefix) = log_prefix {
        command.arg("-l").arg("--log-prefix").arg(prefix);
    }
    let output = command
        .arg(url)
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "pgbench failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim(),
        stdout.trim()
    );
    Ok(stdout)
}

/// The number after `prefix` on the first line of pgbench's summary that starts with it.
fn pgbench_number(output: &str, prefix: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// Latencies from pgbench's per-transaction logs (`tx.<pid>[.<thread>]`): the third field is
/// the latency in microseconds, or a word for a failed or skipped transaction.
fn read_pgbench_logs(dir: &Path) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut files = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("tx.")) {
            continue;
        }
        files += 1;
        let log = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        for line in log.lines() {
            match line.split_whitespace().nth(2).map(str::parse::<u64>) {
                Some(Ok(micros)) => tally.latencies.push(Duration::from_micros(micros)),
                _ => {
                    tally.failures += 1;
                    if tally.examples.len() < FAILURE_EXAMPLES_MAX {
                        tally.examples.push(format!("pgbench log: {line}"));
                    }
                }
            }
        }
    }
    ensure!(files > 0, "pgbench wrote no transaction log in {}", dir.display());
    Ok(tally)
}

/// The fallback without pgbench: `PG_BASELINE_CLIENTS` connections, each running the same
/// transaction with prepared statements, round-robin over the subjects (or on the hot one).
async fn run_pg_loop(url: &str, subjects: &Arc<[String]>, spread: Spread, duration: Duration) -> anyhow::Result<Stats> {
    let spread = Spread { connections: PG_BASELINE_CLIENTS, ..spread };
    let window = Window::after_warm_up(duration);
    let mut tasks = JoinSet::new();
    for worker in 0..PG_BASELINE_CLIENTS {
        let (url, subjects) = (url.to_owned(), subjects.clone());
        tasks.spawn(async move {
            let mut client = pg_connect(&url).await.context("cannot connect for the baseline")?;
            let update = client.prepare("UPDATE accounts SET balance = balance - 1 WHERE subject = $1").await?;
            let insert =
                client.prepare("INSERT INTO events (subject, amount, idempotency_key) VALUES ($1, 1, $2)").await?;
            let mut tally = Tally::default();
            let mut seq = 0;
            while !window.is_over() {
                let subject = &subjects[spread.pick(worker, seq)];
                let idempotency_key = format!("baseline-{worker}-{seq}");
                seq += 1;
                let started = Instant::now();
                let result = debit_pg(&mut client, &update, &insert, subject, &idempotency_key)
                    .await
                    .map_err(|e| format!("{e:#}"));
                tally.record(&window, started, result);
            }
            anyhow::Ok(tally)
        });
    }
    let mut tallies = Vec::with_capacity(PG_BASELINE_CLIENTS);
    while let Some(joined) = tasks.join_next().await {
        tallies.push(joined.context("a baseline worker failed")??);
    }
    Ok(Stats::new(Tally::merge(tallies), duration))
}

/// One debit as its own transaction: four round trips (BEGIN, UPDATE, INSERT, COMMIT).
async fn debit_pg(
    client: &mut tokio_postgres::Client,
    update: &Statement,
    insert: &Statement,
    subject: &str,
    idempotency_key: &str,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(update, &[&subject]).await?;
    tx.execute(insert, &[&subject, &idempotency_key]).await?;
    tx.commit().await
}

// --- Measurement -------------------------------------------------------------------------

/// The measured part of a workload: `duration` after the warm-up.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after_warm_up(duration: Duration) -> Self {
        let start = Instant::now() + WARM_UP;
        Window { start, end: start + duration }
    }

    fn contains(&self, at: Instant) -> bool {
        self.start <= at && at <= self.end
    }

    fn is_over(&self) -> bool {
        Instant::now() >= self.end
    }
}

/// What one worker saw: latencies of successes completed inside the window, and every
/// failure (warm-up included).
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    failures: u64,
    examples: Vec<String>,
}

impl Tally {
    fn record(&mut self, window: &Window, started: Instant, result: Result<(), String>) {
        let finished = Instant::now();
        match result {
            Ok(()) if window.contains(finished) => self.latencies.push(finished - started),
            Ok(()) => {}
            Err(example) => {
                self.failures += 1;
                if self.examples.len() < FAILURE_EXAMPLES_MAX {
                    self.examples.push(example);
                }
            }
        }
    }

    fn merge(tallies: Vec<Tally>) -> Tally {
        let mut all = Tally::default();
        for tally in tallies {
            all.latencies.extend(tally.latencies);
            all.failures += tally.failures;
            all.examples.extend(tally.examples);
        }
        all.examples.truncate(FAILURE_EXAMPLES_MAX);
        all
    }
}

/// Throughput and latency of one workload.
#[derive(Serialize)]
struct Stats {
    per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    measured: usize,
    failures: u64,
    #[serde(skip)]
    examples: Vec<String>,
}

impl Stats {
    fn new(mut tally: Tally, duration: Duration) -> Stats {
        tally.latencies.sort_unstable();
        let sorted = &tally.latencies;
        Stats {
            per_sec: sorted.len() as f64 / duration.as_secs_f64(),
            p50_ms: percentile_ms(sorted, 50.0),
            p90_ms: percentile_ms(sorted, 90.0),
            p99_ms: percentile_ms(sorted, 99.0),
            max_ms: percentile_ms(sorted, 100.0),
            measured: sorted.len(),
            failures: tally.failures,
            examples: tally.examples,
        }
    }
}

/// Nearest-rank percentile of sorted latencies, in milliseconds (NaN when there are none).
fn percentile_ms(sorted: &[Duration], percent: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

// --- Summary -----------------------------------------------------------------------------

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    cpu: String,
}

impl Machine {
    fn detect() -> Machine {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .filter(|line| line.starts_with("model name"))
                    .find_map(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Machine { nproc, cpu }
    }
}

#[derive(Serialize)]
struct Settings {
    subjects: usize,
    connections: usize,
    duration_secs: u64,
    warm_up_secs: u64,
    hot: bool,
    auth: &'static str,
}

impl From<&BenchArgs> for Settings {
    fn from(args: &BenchArgs) -> Self {
        Settings {
            subjects: args.subjects,
            connections: args.connections,
            duration_secs: args.duration_secs,
            warm_up_secs: WARM_UP.as_secs(),
            hot: args.hot,
            auth: args.auth.name(),
        }
    }
}

/// Which store the gateway ran on, and so which baseline ran.
enum Backend {
    Sqlite,
    Postgres(PgInfo),
}

struct Summary {
    machine: Machine,
    settings: Settings,
    backend: Backend,
    healthz: Stats,
    debits: Stats,
    store_only: Stats,
    baseline: Stats,
}

impl Summary {
    fn debits_per_healthz(&self) -> f64 {
        self.debits.per_sec / self.healthz.per_sec
    }

    fn debits_per_baseline(&self) -> f64 {
        self.debits.per_sec / self.baseline.per_sec
    }

    fn print_markdown(&self) {
        let (m, s) = (&self.machine, &self.settings);
        let spread = if s.hot {
            "all on one subject (`--hot`)".to_owned()
        } else {
            format!("round-robin over {} subjects", s.subjects)
        };
        println!("## licenseseal bench\n");
        println!("Machine: {} (nproc {}).", m.cpu, m.nproc);
        if let Backend::Postgres(pg) = &self.backend {
            println!(
                "Store: PostgreSQL {} at {}, fresh schema `{}` (dropped at the end), pool of {} connections.",
                pg.version,
                pg.server,
                pg.schema,
                PgConfig::default().pool_size_max
            );
        }
        println!(
            "{} connections, {} s measured after a {} s warm-up; debits of 1 {spread}, authenticated with an {}.\n",
            s.connections, s.duration_secs, s.warm_up_secs, s.auth
        );
        println!("| Workload | Throughput (/s) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | Failures |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, stats) in [
            ("`GET /healthz` over HTTP (ceiling)", &self.healthz),
            ("LicenseSeal debits over HTTP (`POST /v1/debits`)", &self.debits),
            ("LicenseSeal store only: the same debits without HTTP", &self.store_only),
            (self.baseline_label().as_str(), &self.baseline),
        ] {
            println!(
                "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                stats.per_sec, stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.max_ms, stats.failures
            );
        }
        println!();
        println!("- debits / healthz ceiling: {:.2}", self.debits_per_healthz());
        println!("- debits / baseline: {:.2}×", self.debits_per_baseline());
        match &self.backend {
            Backend::Sqlite => {
                println!(
                    "- The baseline (WAL, `synchronous = FULL`, `BEGIN IMMEDIATE; SELECT; UPDATE; INSERT; \
                     COMMIT` on {} threads) runs in-process through rusqlite, without HTTP, JSON or \
                     authentication, which flatters it.",
                    s.connections
                );
                println!(
                    "- SQLite's write lock is not fair (waiters sleep and retry), so a few baseline threads \
                     win most commits: its percentiles describe the winners, its max the starved."
                );
            }
            Backend::Postgres(pg) => Self::print_postgres_notes(s, pg),
        }
        println!(
            "- Latencies are of requests completed inside the measured window; client and server \
             share the machine."
        );
        self.print_failures();
    }

    fn baseline_label(&self) -> String {
        match &self.backend {
            Backend::Sqlite => "Baseline: one SQLite transaction per debit (in-process, no HTTP)".to_owned(),
            Backend::Postgres(pg) => match pg.runner {
                PgRunner::Pgbench => {
                    format!("Baseline: one PostgreSQL transaction per debit (pgbench, {PG_BASELINE_CLIENTS} clients)")
                }
                PgRunner::TokioPostgres => format!(
                    "Baseline: one PostgreSQL transaction per debit (in-process tokio-postgres, \
                     {PG_BASELINE_CLIENTS} clients; pgbench not found)"
                ),
            },
        }
    }

    fn print_postgres_notes(s: &Settings, pg: &PgInfo) {
        let subjects = match (s.hot, pg.runner) {
            (true, _) => "all on one subject".to_owned(),
            (false, PgRunner::Pgbench) => format!("on a random one of {} subjects", s.subjects),
            (false, PgRunner::TokioPostgres) => format!("round-robin over {} subjects", s.subjects),
        };
        let driver = match pg.runner {
            PgRunner::Pgbench => format!(
                "from {PG_BASELINE_CLIENTS} pgbench clients (`-M prepared -j {PGBENCH_THREADS}`, a separate \
                 1 s warm-up run)"
            ),
            PgRunner::TokioPostgres => format!(
                "from {PG_BASELINE_CLIENTS} in-process tokio-postgres connections (pgbench was not on the PATH)"
            ),
        };
        println!(
            "- The baseline (`BEGIN; UPDATE accounts SET balance = balance - 1 WHERE subject = $1; \
             INSERT INTO events (subject, amount, idempotency_key) VALUES ($1, 1, $2); COMMIT`, \
             READ COMMITTED, prepared statements) runs {driver}, {subjects}, in schema `{}` of the same \
             server: no HTTP, JSON or authentication, no balance check and no idempotent replay, \
             which flatters it.",
            pg.baseline_schema
        );
        if let (PgRunner::Pgbench, Some(avg)) = (pg.runner, pg.latency_avg_ms) {
            println!(
                "- Baseline throughput is pgbench's tps (without initial connection time); its \
                 percentiles come from pgbench's per-transaction log; pgbench's latency average: {avg:.3} ms."
            );
        }
        println!(
            "- The gateway is driven over {} HTTP connections and writes through {} pooled PostgreSQL \
             connections with group commit; the baseline has {PG_BASELINE_CLIENTS} clients.",
            s.connections,
            PgConfig::default().pool_size_max
        );
    }

    fn print_failures(&self) {
        for (name, stats) in [
            ("healthz", &self.healthz),
            ("debits", &self.debits),
            ("store only", &self.store_only),
            ("baseline", &self.baseline),
        ] {
            if stats.failures == 0 {
                continue;
            }
            println!("\n{name}: {} failures; first ones:", stats.failures);
            for example in &stats.examples {
                println!("  - {example}");
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut summary = json!({
            "machine": self.machine,
            "settings": self.settings,
            "healthz": self.healthz,
            "debits": self.debits,
            "store_only": self.store_only,
            "baseline": self.baseline,
            "debits_per_healthz": self.debits_per_healthz(),
            "debits_per_baseline": self.debits_per_baseline(),
        });
        if let Backend::Postgres(pg) = &self.backend {
            summary["store"] = json!({
                "kind": "postgresql",
                "version": pg.version,
                "server": pg.server,
                "pool_size_max": PgConfig::default().pool_size_max,
            });
            summary["baseline_kind"] = json!(pg.runner.name());
            summary["baseline_clients"] = json!(PG_BASELINE_CLIENTS);
            summary["baseline_latency_avg_ms"] = json!(pg.latency_avg_ms);
        }
        summary
    }
}
