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
use licenseseal_server::{AppState, ServerConfig};
use licenseseal_store::sqlite::SqliteConfig;
use licenseseal_store::{Clock, Execution, LedgerStore, SystemClock};
use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Time each workload runs before measuring starts.
const WARM_UP: Duration = Duration::from_secs(1);
/// Credits granted to every subject: far more than any run debits.
const GRANT_AMOUNT: u64 = 1_000_000_000_000;
/// Failed responses kept (per workload) to show what went wrong.
const FAILURE_EXAMPLES_MAX: usize = 5;
/// How long a baseline connection waits for SQLite's write lock before giving up.
const BASELINE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// directory removed at the end.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    ensure!(args.subjects >= 1, "--subjects must be at least 1");
    ensure!(args.connections >= 1, "--connections must be at least 1");
    ensure!(args.duration_secs >= 1, "--duration-secs must be at least 1");
    let (_temp, root) = bench_root(args.data_dir.as_deref())?;
    let duration = Duration::from_secs(args.duration_secs);
    let subjects: Arc<[String]> = (0..args.subjects).map(|i| format!("bench-subject-{i}")).collect();
    let spread = Spread { subjects: args.subjects, connections: args.connections, hot: args.hot };

    let gateway = start_gateway(&root.join("gateway")).await?;
    let measured = measure_gateway(&gateway, &subjects, spread, duration).await;
    gateway.stop().await?;
    let (healthz, debits, store_only) = measured?;

    eprintln!("bench: baseline, one SQLite transaction per debit ({duration:?})");
    let baseline_dir = root.join("baseline");
    let baseline = tokio::task::spawn_blocking(move || run_baseline(&baseline_dir, &subjects, spread, duration))
        .await
        .context("the baseline task failed")??;

    let summary =
        Summary { machine: Machine::detect(), settings: Settings::from(&args), healthz, debits, store_only, baseline };
    summary.print_markdown();
    if args.json {
        println!("{}", summary.json());
    }
    Ok(())
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
    let healthz = load(addr, spread.connections, duration, healthz_requests(), StatusCode::OK).await?;
    eprintln!("bench: POST /v1/debits ({duration:?})");
    let debits = debit_requests(&key, subjects.clone(), spread)?;
    let debits = load(addr, spread.connections, duration, debits, StatusCode::CREATED).await?;
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
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Opens a fresh store the way `serve` does and serves it on 127.0.0.1:0 in a spawned task.
async fn start_gateway(data_dir: &Path) -> anyhow::Result<Gateway> {
    let store = crate::open_store(data_dir, SqliteConfig::default())?;
    let operator_key = crate::create_operator_key(store.as_ref()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = AppState::new(store.clone(), clock, ServerConfig::default()).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(licenseseal_server::serve(listener, state, shutdown));
    eprintln!("bench: gateway on {addr}, store in {}", data_dir.display());
    Ok(Gateway { addr, operator_key, store, stop, task })
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

/// One HTTP/1.1 keep-alive connection with TCP_NODELAY.
async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP/1.1 handshake failed")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "bench connection closed");
        }
    });
    Ok(sender)
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

// --- Workloads over HTTP -----------------------------------------------------------------

fn healthz_requests() -> MakeRequest {
    Arc::new(|_, _| Ok(Request::get("/healthz").header(header::HOST, "127.0.0.1").body(Full::new(Bytes::new()))?))
}

/// Debits of 1 with a unique idempotency key per request.
fn debit_requests(key: &str, subjects: Arc<[String]>, spread: Spread) -> anyhow::Result<MakeRequest> {
    let authorization = HeaderValue::from_str(&format!("Bearer {key}"))?;
    Ok(Arc::new(move |worker, seq| {
        let subject = &subjects[spread.pick(worker, seq)];
        let body = format!(r#"{{"subject":"{subject}","amount":1}}"#);
        Ok(Request::post("/v1/debits")
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, authorization.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", format!("bench-{worker}-{seq}"))
            .body(Full::new(Bytes::from(body)))?)
    }))
}

/// Drives `make` over `connections` keep-alive connections through the warm-up and
/// `duration`; a request succeeds when answered with `expected`.
async fn load(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    make: MakeRequest,
    expected: StatusCode,
) -> anyhow::Result<Stats> {
    let window = Window::after_warm_up(duration);
    let mut tasks = JoinSet::new();
    for worker in 0..connections {
        tasks.spawn(load_worker(addr, worker, window, make.clone(), expected));
    }
    let mut tallies = Vec::with_capacity(connections);
    while let Some(joined) = tasks.join_next().await {
        tallies.push(joined.context("a load worker failed")??);
    }
    Ok(Stats::new(Tally::merge(tallies), duration))
}

/// One connection sending requests back to back until the window closes.
async fn load_worker(
    addr: SocketAddr,
    worker: usize,
    window: Window,
    make: MakeRequest,
    expected: StatusCode,
) -> anyhow::Result<Tally> {
    let mut sender = connect(addr).await?;
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
            sender = connect(addr).await?;
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
}

impl From<&BenchArgs> for Settings {
    fn from(args: &BenchArgs) -> Self {
        Settings {
            subjects: args.subjects,
            connections: args.connections,
            duration_secs: args.duration_secs,
            warm_up_secs: WARM_UP.as_secs(),
            hot: args.hot,
        }
    }
}

struct Summary {
    machine: Machine,
    settings: Settings,
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
        println!(
            "{} connections, {} s measured after a {} s warm-up; debits of 1 {spread}.\n",
            s.connections, s.duration_secs, s.warm_up_secs
        );
        println!("| Workload | Throughput (/s) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | Failures |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, stats) in [
            ("`GET /healthz` over HTTP (ceiling)", &self.healthz),
            ("LicenseSeal debits over HTTP (`POST /v1/debits`)", &self.debits),
            ("LicenseSeal store only: the same debits without HTTP", &self.store_only),
            ("Baseline: one SQLite transaction per debit (in-process, no HTTP)", &self.baseline),
        ] {
            println!(
                "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                stats.per_sec, stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.max_ms, stats.failures
            );
        }
        println!();
        println!("- debits / healthz ceiling: {:.2}", self.debits_per_healthz());
        println!("- debits / baseline: {:.2}×", self.debits_per_baseline());
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
        println!(
            "- Latencies are of requests completed inside the measured window; client and server \
             share the machine."
        );
        self.print_failures();
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
        json!({
            "machine": self.machine,
            "settings": self.settings,
            "healthz": self.healthz,
            "debits": self.debits,
            "store_only": self.store_only,
            "baseline": self.baseline,
            "debits_per_healthz": self.debits_per_healthz(),
            "debits_per_baseline": self.debits_per_baseline(),
        })
    }
}
