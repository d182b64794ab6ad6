//! Settings, layered once at start-up: defaults, then `licenseseal.toml` (or `--config`), then
//! `LICENSESEAL_*` environment variables, then flags (clap reads flags and environment).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

pub const DEFAULT_CONFIG_FILE: &str = "licenseseal.toml";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(clap::Args)]
pub struct InitArgs {
    /// PostgreSQL URL (postgres://…); without it the embedded SQLite store is used.
    #[arg(long, env = "LICENSESEAL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Data directory holding the store.
    #[arg(long, env = "LICENSESEAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Config file (default: ./licenseseal.toml if present).
    #[arg(long, env = "LICENSESEAL_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Settings of the token Authority and of identity providers, shared by `serve` and
/// `authority rotate-key`.
#[derive(clap::Args, Default)]
pub struct AuthArgs {
    /// Master key sealing secrets at rest: base64 of 32 random bytes.
    #[arg(long, env = "LICENSESEAL_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<Secret>,
    /// File holding the master key (base64).
    #[arg(long, env = "LICENSESEAL_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Public base URL of this gateway: the `iss` of its tokens (default http://LISTEN).
    #[arg(long, env = "LICENSESEAL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Default lifetime of Authority tokens, in seconds (300).
    #[arg(long, env = "LICENSESEAL_TOKEN_TTL_SECONDS")]
    pub token_ttl_seconds: Option<u64>,
    /// Test setups only: one more CA (PEM file) trusted when fetching identity providers' JWKS
    /// over HTTPS. There is no setting that allows plain HTTP.
    #[arg(long, env = "LICENSESEAL_JWKS_EXTRA_CA_FILE")]
    pub jwks_extra_ca_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// PostgreSQL URL (postgres://…); without it the embedded SQLite store is used.
    #[arg(long, env = "LICENSESEAL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Data directory holding the store.
    #[arg(long, env = "LICENSESEAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "LICENSESEAL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Config file (default: ./licenseseal.toml if present).
    #[arg(long, env = "LICENSESEAL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Also listen with TLS here (client certificates requested, not required).
    #[arg(long, env = "LICENSESEAL_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener.
    #[arg(long, env = "LICENSESEAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener.
    #[arg(long, env = "LICENSESEAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RotateKeyArgs {
    /// PostgreSQL URL (postgres://…); without it the embedded SQLite store is used.
    #[arg(long, env = "LICENSESEAL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Data directory holding the store.
    #[arg(long, env = "LICENSESEAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Config file (default: ./licenseseal.toml if present).
    #[arg(long, env = "LICENSESEAL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// The config file's contents; unknown keys are an error, not a silent typo.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database_url: Option<Secret>,
    master_key_file: Option<PathBuf>,
    public_url: Option<String>,
    token_ttl_seconds: Option<u64>,
    jwks_extra_ca_file: Option<PathBuf>,
    tls_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// A value that may hold a password: never printed, only handed to the driver.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: Option<Secret>,
    pub master_key: Option<Secret>,
    pub master_key_file: Option<PathBuf>,
    pub public_url: Option<String>,
    pub token_ttl_seconds: Option<u64>,
    pub jwks_extra_ca_file: Option<PathBuf>,
    /// The TLS listener: address, certificate chain and key files.
    pub tls: Option<(SocketAddr, PathBuf, PathBuf)>,
}

/// The TLS settings given on the command line or in the environment.
#[derive(Default)]
pub struct TlsArgs {
    pub listen: Option<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Settings {
    pub fn load(
        config: Option<&Path>,
        data_dir: Option<PathBuf>,
        listen: Option<SocketAddr>,
        database_url: Option<Secret>,
        auth: AuthArgs,
        tls: TlsArgs,
    ) -> anyhow::Result<Self> {
        let file = match config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => read_file(Path::new(DEFAULT_CONFIG_FILE))?,
            None => FileConfig::default(),
        };
        let tls = match (tls.listen.or(file.tls_listen), tls.cert.or(file.tls_cert), tls.key.or(file.tls_key)) {
            (Some(listen), Some(cert), Some(key)) => Some((listen, cert, key)),
            (None, None, None) => None,
            _ => anyhow::bail!("the TLS listener needs all of tls_listen, tls_cert and tls_key"),
        };
        Ok(Settings {
            tls,
            data_dir: data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            listen: listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address")),
            database_url: database_url.or(file.database_url),
            master_key: auth.master_key,
            master_key_file: auth.master_key_file.or(file.master_key_file),
            public_url: auth.public_url.or(file.public_url),
            token_ttl_seconds: auth.token_ttl_seconds.or(file.token_ttl_seconds),
            jwks_extra_ca_file: auth.jwks_extra_ca_file.or(file.jwks_extra_ca_file),
        })
    }

    /// Names the store for messages, without any password.
    pub fn store_name(&self) -> String {
        match &self.database_url {
            Some(url) => {
                let url = url.expose();
                let host = url.rsplit('@').next().unwrap_or(url);
                format!("PostgreSQL at {}", host.trim_start_matches("postgres://").trim_start_matches("postgresql://"))
            }
            None => format!("SQLite in {}", self.data_dir.display()),
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}
