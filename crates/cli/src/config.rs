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
    /// Data directory holding the store.
    #[arg(long, env = "LICENSESEAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Config file (default: ./licenseseal.toml if present).
    #[arg(long, env = "LICENSESEAL_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Data directory holding the store.
    #[arg(long, env = "LICENSESEAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "LICENSESEAL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Config file (default: ./licenseseal.toml if present).
    #[arg(long, env = "LICENSESEAL_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The config file's contents; unknown keys are an error, not a silent typo.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
}

#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
}

impl Settings {
    pub fn load(config: Option<&Path>, data_dir: Option<PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        let file = match config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => read_file(Path::new(DEFAULT_CONFIG_FILE))?,
            None => FileConfig::default(),
        };
        Ok(Settings {
            data_dir: data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            listen: listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address")),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}
