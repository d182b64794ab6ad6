//! The integration-test harness: a real gateway (a real store — SQLite in a temp directory, or
//! PostgreSQL in a fresh schema — and real HTTP on an ephemeral loopback port) started
//! in-process with a manual clock, and typed helpers to call it. Nothing is mocked.
//!
//! `conformance!` turns one test body into a SQLite and a PostgreSQL test, so both backends
//! run the same code. PostgreSQL is found through `LICENSESEAL_TEST_DATABASE_URL`; when it is
//! unset the PostgreSQL variants say that they were skipped.

#![allow(dead_code)]

pub mod idp;

use std::sync::Arc;
use std::time::Duration;

use licenseseal_auth::ApiKeys;
use licenseseal_ledger::Timestamp;
use licenseseal_server::{AppState, ServerConfig};
use licenseseal_store::postgres::{PgConfig, PgStore};
use licenseseal_store::sqlite::{SqliteConfig, SqliteStore};
use licenseseal_store::{Clock, LedgerStore, ManualClock, SystemClock};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Which store a test gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs one test body against both backends.
#[macro_export]
macro_rules! conformance {
    ($(async fn $name:ident($gw:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn scenario($gw: common::Gateway) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    scenario(common::Gateway::start_on(common::Backend::Sqlite).await.expect("sqlite")).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    match common::Gateway::start_on(common::Backend::Postgres).await {
                        Some(gw) => scenario(gw).await,
                        None => common::skipped(),
                    }
                }
            }
        )*
    };
}

pub fn skipped() {
    eprintln!("SKIPPED: PostgreSQL variant (set LICENSESEAL_TEST_DATABASE_URL to run it)");
}

pub struct Gateway {
    pub base: String,
    pub operator_key: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn LedgerStore>,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    /// The TLS listener's address, when started with one.
    pub tls_addr: Option<std::net::SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A tenant and a key with every scope on it.
pub struct Tenant {
    pub id: String,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    pub fn is_problem(&self) -> bool {
        self.header("content-type") == Some("application/problem+json")
            && self.body["status"] == self.status
            && self.body["code"].is_string()
            && self.body["correlation_id"].is_string()
    }

    pub fn i64(&self, field: &str) -> i64 {
        self.body[field].as_i64().unwrap_or_else(|| panic!("{field} missing in {}", self.body))
    }

    pub fn str(&self, field: &str) -> String {
        self.body[field].as_str().unwrap_or_else(|| panic!("{field} missing in {}", self.body)).to_owned()
    }
}

impl Gateway {
    /// A gateway on `backend`, or `None` for PostgreSQL when no test database is configured.
    pub async fn start_on(backend: Backend) -> Option<Gateway> {
        match backend {
            Backend::Sqlite => Some(Gateway::start_sqlite().await),
            Backend::Postgres => Some(Gateway::start_postgres(&fresh_schema_url().await?, PgConfig::default()).await),
        }
    }

    pub async fn start_sqlite() -> Gateway {
        Gateway::start_sqlite_with(|_| {}).await
    }

    /// A SQLite gateway with adjusted server settings.
    pub async fn start_sqlite_with(tweak: impl FnOnce(&mut ServerConfig)) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let store = SqliteStore::open(dir.path(), clock.clone(), SqliteConfig::default()).expect("open store");
        Gateway::start_with(Arc::new(store), clock, Backend::Sqlite, dir, tweak, None).await
    }

    /// A SQLite gateway that also listens with TLS, its certificate issued by `ca` for `names`.
    pub async fn start_sqlite_tls(ca: &licenseseal_testkit::TestCa, names: &[&str]) -> Gateway {
        let (cert, key) = ca.server_cert(names);
        let identity =
            licenseseal_server::TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes()).expect("tls identity");
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let store = SqliteStore::open(dir.path(), clock.clone(), SqliteConfig::default()).expect("open store");
        Gateway::start_with(Arc::new(store), clock, Backend::Sqlite, dir, |_| {}, Some(Arc::new(identity))).await
    }

    /// A gateway on `backend` with adjusted server settings, or `None` (PostgreSQL not configured).
    pub async fn start_on_with(backend: Backend, tweak: impl FnOnce(&mut ServerConfig)) -> Option<Gateway> {
        match backend {
            Backend::Sqlite => Some(Gateway::start_sqlite_with(tweak).await),
            Backend::Postgres => {
                let url = fresh_schema_url().await?;
                let clock = Arc::new(ManualClock::new(SystemClock.now()));
                let store = PgStore::connect(&url, clock.clone(), PgConfig::default()).await.expect("PostgreSQL");
                let dir = tempfile::tempdir().expect("temp dir");
                Some(Gateway::start_with(Arc::new(store), clock, Backend::Postgres, dir, tweak, None).await)
            }
        }
    }

    /// A gateway on the PostgreSQL database at `url` (e.g. a fresh schema, or a proxy to one).
    pub async fn start_postgres(url: &str, config: PgConfig) -> Gateway {
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let store = PgStore::connect(url, clock.clone(), config).await.expect("open the PostgreSQL store");
        let dir = tempfile::tempdir().expect("temp dir");
        Gateway::start_with(Arc::new(store), clock, Backend::Postgres, dir, |_| {}, None).await
    }

    async fn start_with(
        store: Arc<dyn LedgerStore>,
        clock: Arc<ManualClock>,
        backend: Backend,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut ServerConfig),
        tls: Option<Arc<licenseseal_server::TlsIdentity>>,
    ) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut config = ServerConfig {
            last_used_flush_interval: Duration::from_millis(100),
            header_read_timeout: Duration::from_secs(2),
            ..ServerConfig::default()
        };
        config.authority.issuer = base.clone();
        tweak(&mut config);
        let generated = ApiKeys::generate();
        assert!(store.initialize(generated.operator_record(clock.now())).await.expect("operator key"));
        let state = AppState::new(store.clone(), clock.clone(), config).await.expect("state");
        let (tx, rx) = oneshot::channel::<()>();
        let tls = match tls {
            Some(identity) => Some((tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind tls"), identity)),
            None => None,
        };
        let tls_addr = tls.as_ref().map(|(l, _)| l.local_addr().expect("tls addr"));
        let task = tokio::spawn(licenseseal_server::serve_with_tls(listener, tls, state, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
        let shutdown = Some(tx);
        let task = Some(task);
        Gateway { base, operator_key: generated.secret, http, clock, store, backend, dir, tls_addr, shutdown, task }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server");
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn advance(&self, seconds: i64) {
        self.clock.advance_seconds(seconds);
    }

    /// Sends a request; `idem` sets `Idempotency-Key`, `body` is sent as JSON.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        idem: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(idem) = idem {
            req = req.header("idempotency-key", idem);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::reply(req.send().await.expect("request")).await
    }

    pub async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Reply { status, headers, body }
    }

    pub async fn post(&self, path: &str, key: &str, idem: Option<&str>, body: Value) -> Reply {
        self.call("POST", path, Some(key), idem, Some(body)).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.call("GET", path, Some(key), None, None).await
    }

    /// Creates a tenant and a key with scopes `*` for it.
    pub async fn tenant(&self) -> Tenant {
        let t = self.post("/v1/tenants", &self.operator_key, None, json!({ "name": "Acme" })).await;
        assert_eq!(t.status, 201, "{}", t.body);
        let id = t.str("id");
        let key = self.key(&self.operator_key, json!({ "tenant_id": id, "name": "all", "scopes": ["*"] })).await;
        Tenant { id, key }
    }

    /// Creates an API key and returns its plaintext.
    pub async fn key(&self, as_key: &str, body: Value) -> String {
        let k = self.post("/v1/api-keys", as_key, None, body).await;
        assert_eq!(k.status, 201, "{}", k.body);
        k.str("key")
    }

    pub async fn grant(&self, key: &str, idem: &str, subject: &str, amount: i64) -> Reply {
        self.post("/v1/grants", key, Some(idem), json!({ "subject": subject, "amount": amount })).await
    }

    pub async fn debit(&self, key: &str, idem: &str, subject: &str, amount: i64) -> Reply {
        self.post("/v1/debits", key, Some(idem), json!({ "subject": subject, "amount": amount })).await
    }

    pub async fn account(&self, key: &str, subject: &str) -> Reply {
        self.get(&format!("/v1/accounts/{subject}"), key).await
    }

    /// Every event visible to `key` matching `query`, following cursors.
    pub async fn all_events(&self, key: &str, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/events?limit=1000&{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get(&path, key).await;
            assert_eq!(page.status, 200, "{}", page.body);
            out.extend(page.body["data"].as_array().expect("data").iter().cloned());
            match page.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    /// Asserts balance = Σ deltas of the subject's events and returns the balance.
    pub async fn assert_balance_is_sum_of_deltas(&self, key: &str, subject: &str) -> i64 {
        let events = self.all_events(key, &format!("subject={subject}")).await;
        let sum: i64 = events.iter().map(|e| e["delta"].as_i64().expect("delta")).sum();
        let account = self.account(key, subject).await;
        let balance = if account.status == 404 { 0 } else { account.i64("balance") };
        assert_eq!(balance, sum, "balance of {subject} must equal the sum of its event deltas");
        if let Some(last) = events.last() {
            assert_eq!(last["balance_after"].as_i64(), Some(balance));
        }
        balance
    }
}

pub mod process;

/// The URL of a new, empty schema in the test database (`None` when none is configured).
pub async fn fresh_schema_url() -> Option<String> {
    let base = std::env::var("LICENSESEAL_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())?;
    let (_, url) = licenseseal_store::postgres::scratch::create(&base, "ls_test")
        .await
        .unwrap_or_else(|e| panic!("LICENSESEAL_TEST_DATABASE_URL is set but unusable: {e}"));
    Some(url)
}
