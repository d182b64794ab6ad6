//! `licenseseal`: the gateway binary. `init` creates a store and its operator key, `serve` runs
//! the gateway (initialising an empty data directory itself), `bench` measures it.

mod bench;
mod config;
mod sign;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use licenseseal_auth::authority::{Authority, AuthorityConfig};
use licenseseal_auth::seal::MasterKey;
use licenseseal_auth::ApiKeys;
use licenseseal_server::{AppState, ServerConfig, TlsIdentity};
use licenseseal_store::postgres::{PgConfig, PgStore};
use licenseseal_store::sqlite::{SqliteConfig, SqliteStore};
use licenseseal_store::{Clock, LedgerStore, SystemClock};

/// mimalloc: the gateway allocates on one thread (the writer) and frees on others (HTTP
/// workers), which glibc's allocator handles poorly under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "licenseseal", version, about = "API credit enforcement gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the store in the data directory and print the operator key (once).
    Init(config::InitArgs),
    /// Run the gateway.
    Serve(config::ServeArgs),
    /// Start a fresh gateway and measure debit throughput and latency against it.
    Bench(bench::BenchArgs),
    /// Sign one request (RFC 9421) and print the headers to send with it.
    Sign(sign::SignArgs),
    /// Manage the token Authority.
    #[command(subcommand)]
    Authority(AuthorityCommand),
}

#[derive(Subcommand)]
enum AuthorityCommand {
    /// Make a new signing key current. The previous key stays published and accepted until
    /// every token it signed has expired. Running instances pick the new key up within 30 s
    /// (SQLite: the store is locked while `serve` runs; use `POST /v1/authority/rotate` then).
    RotateKey(config::RotateKeyArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LICENSESEAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Command::Sign(args) = cli.command {
        return sign::run(args);
    }
    runtime.block_on(async move {
        match cli.command {
            Command::Init(args) => init(args).await,
            Command::Serve(args) => serve(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Authority(AuthorityCommand::RotateKey(args)) => rotate_key(args).await,
            Command::Sign(_) => unreachable!("signing needs no runtime and returned above"),
        }
    })
}

/// Writes log lines to stderr and never fails: a closed stderr must not take the gateway down
/// (the logging library reports a failed write on stderr itself, which would panic).
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn open_store(data_dir: &Path, config: SqliteConfig) -> anyhow::Result<Arc<SqliteStore>> {
    let store = SqliteStore::open(data_dir, Arc::new(SystemClock), config)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    Ok(Arc::new(store))
}

/// Initialises the store with an operator key; returns its plaintext, to be printed once, or
/// `None` when the store was already initialised (possibly by another instance just now).
async fn create_operator_key(store: &dyn LedgerStore) -> anyhow::Result<Option<String>> {
    let generated = ApiKeys::generate();
    let created = store.initialize(generated.operator_record(SystemClock.now())).await?;
    Ok(created.then_some(generated.secret))
}

fn print_operator_key(secret: &str) {
    println!("{}", serde_json::json!({ "operator_key": secret }));
}

/// Opens the configured store: PostgreSQL when a database URL is set, else SQLite in the data
/// directory.
async fn open_configured(settings: &config::Settings) -> anyhow::Result<Arc<dyn LedgerStore>> {
    match &settings.database_url {
        Some(url) => {
            let store = PgStore::connect(url.expose(), Arc::new(SystemClock), PgConfig::default())
                .await
                .context("cannot open the PostgreSQL store")?;
            Ok(Arc::new(store))
        }
        None => Ok(open_store(&settings.data_dir, SqliteConfig::default())?),
    }
}

async fn init(args: config::InitArgs) -> anyhow::Result<()> {
    let settings = config::Settings::load(
        args.config.as_deref(),
        args.data_dir,
        None,
        args.database_url,
        Default::default(),
        Default::default(),
    )?;
    let existing = if settings.database_url.is_some() {
        let store = open_configured(&settings).await?;
        let initialised = store.is_initialized().await?;
        store.shutdown().await;
        initialised
    } else {
        let db = SqliteStore::database_path(&settings.data_dir);
        db.exists() && SqliteStore::is_initialized_at(&db)?
    };
    if existing {
        bail!(
            "a LicenseSeal store already exists in {}; refusing to create another operator key",
            settings.store_name()
        );
    }
    let store = open_configured(&settings).await?;
    let secret = create_operator_key(store.as_ref()).await?;
    store.shutdown().await;
    match secret {
        Some(secret) => print_operator_key(&secret),
        None => bail!(
            "a LicenseSeal store already exists in {}; refusing to create another operator key",
            settings.store_name()
        ),
    }
    Ok(())
}

async fn serve(args: config::ServeArgs) -> anyhow::Result<()> {
    let tls = config::TlsArgs { listen: args.tls_listen, cert: args.tls_cert, key: args.tls_key };
    let settings =
        config::Settings::load(args.config.as_deref(), args.data_dir, args.listen, args.database_url, args.auth, tls)?;
    // Read the TLS identity before anything else, so a bad certificate fails fast.
    let tls = match &settings.tls {
        Some((listen, cert, key)) => {
            let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
            let identity = TlsIdentity::from_pem(&read(cert)?, &read(key)?)?;
            Some((*listen, Arc::new(identity)))
        }
        None => None,
    };
    let store = open_configured(&settings).await?;
    let master_key = master_key(&settings)?;
    if let Some(secret) = create_operator_key(store.as_ref()).await? {
        tracing::info!(store = %settings.store_name(), "initialised a new store; the operator key is printed once on stdout");
        print_operator_key(&secret);
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config = server_config(&settings, master_key, listener.local_addr()?)?;
    let state = AppState::new(store, clock, config).await.context("cannot start the gateway")?;
    let tls = match tls {
        Some((addr, identity)) => {
            let tls_listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen with TLS on {addr}"))?;
            tracing::info!(tls_address = %tls_listener.local_addr()?, "TLS listener (client certificates requested)");
            Some((tls_listener, identity))
        }
        None => None,
    };
    tracing::info!(listen = %listener.local_addr()?, store = %settings.store_name(), "licenseseal serving");
    licenseseal_server::serve_with_tls(listener, tls, state, shutdown_signal()).await?;
    tracing::info!("licenseseal stopped");
    Ok(())
}

/// The server's settings from the loaded configuration.
fn server_config(
    settings: &config::Settings,
    master_key: MasterKey,
    listen: std::net::SocketAddr,
) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig { master_key, ..ServerConfig::default() };
    config.authority.issuer =
        settings.public_url.clone().unwrap_or_else(|| format!("http://{listen}")).trim_end_matches('/').to_owned();
    if let Some(ttl) = settings.token_ttl_seconds {
        if ttl == 0 || ttl > config.authority.token_ttl_max.as_secs() {
            bail!("token_ttl_seconds must be between 1 and {}", config.authority.token_ttl_max.as_secs());
        }
        config.authority.token_ttl_default = std::time::Duration::from_secs(ttl);
    }
    if let Some(path) = &settings.jwks_extra_ca_file {
        let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        config.providers.jwks.extra_root_pem = Some(pem);
    }
    Ok(config)
}

/// The master key: from `LICENSESEAL_MASTER_KEY`, from the named key file, or (embedded store
/// only) from `master.key` in the data directory, generated there with mode 0600 on first
/// start. A PostgreSQL deployment must name one: every instance needs the same key.
fn master_key(settings: &config::Settings) -> anyhow::Result<MasterKey> {
    if let Some(text) = &settings.master_key {
        return MasterKey::parse_base64(text.expose()).context("LICENSESEAL_MASTER_KEY");
    }
    let (path, generate) = match (&settings.master_key_file, &settings.database_url) {
        (Some(path), _) => (path.clone(), false),
        (None, None) => (settings.data_dir.join("master.key"), true),
        (None, Some(_)) => bail!(
            "a PostgreSQL deployment needs a master key shared by every instance: set LICENSESEAL_MASTER_KEY \
             (base64 of 32 random bytes, e.g. `openssl rand -base64 32`) or master_key_file"
        ),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => MasterKey::parse_base64(&text).with_context(|| format!("invalid master key in {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
            let key = MasterKey::generate();
            write_private_file(&path, key.to_base64().as_bytes())?;
            tracing::warn!(
                path = %path.display(),
                "generated a master key for secrets at rest; back it up with the data directory, or set LICENSESEAL_MASTER_KEY"
            );
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the master key file {}", path.display())),
    }
}

/// Creates a file only its owner can read; never overwrites.
fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

async fn rotate_key(args: config::RotateKeyArgs) -> anyhow::Result<()> {
    let settings = config::Settings::load(
        args.config.as_deref(),
        args.data_dir,
        None,
        args.database_url,
        args.auth,
        Default::default(),
    )?;
    let store = open_configured(&settings).await?;
    let master_key = master_key(&settings)?;
    let now = SystemClock.now();
    let authority = Authority::open(store.clone(), master_key, AuthorityConfig::default(), now)
        .await
        .context("cannot open the Authority keys (is this the right master key?)")?;
    let previous = authority.current_kid();
    let kid = authority.rotate(now).await?;
    store.shutdown().await;
    println!("{}", serde_json::json!({ "kid": kid, "previous_kid": previous }));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
