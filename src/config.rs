//! The command line, with etcd's flag names where they apply.
//!
//! Every value is validated before anything starts; a bad flag or value
//! exits non-zero with a message naming the flag.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: u32 = 128;
/// Upper bound on `--shards`: each shard has a worker and a channel.
pub const MAX_SHARDS: usize = 4096;
/// WAL segment size bounds; segments are preallocated, so not too large,
/// and a frame must fit (the largest request plus overhead).
pub const DEFAULT_WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// etcd's default `--snapshot-count`.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
pub const MIN_WAL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
pub const MAX_WAL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// MetaStore: an etcd-compatible key-value server.
#[derive(Debug, Clone, Parser)]
#[command(name = "metastore", version, about)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory.
    #[arg(long, default_value = "default.metastore")]
    pub data_dir: PathBuf,
    /// Comma-separated URLs to listen on for client traffic (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',', value_parser = parse_client_url)]
    pub listen_client_urls: Vec<ClientUrl>,
    /// Comma-separated client URLs to advertise to clients (default: the listen URLs).
    #[arg(long, value_delimiter = ',', value_parser = parse_client_url)]
    pub advertise_client_urls: Vec<ClientUrl>,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = DEFAULT_MAX_TXN_OPS, allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_txn_ops: u32,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES, allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_request_bytes: u32,
    /// Log level.
    #[arg(long, value_enum, default_value = "info")]
    pub log_level: LogLevel,
    /// Number of cores (executor threads) to run; default: all available.
    #[arg(long, allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cores: Option<u32>,
    /// Size of each write-ahead-log segment file, preallocated; a full segment is rotated.
    #[arg(long, default_value_t = DEFAULT_WAL_SEGMENT_BYTES, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(MIN_WAL_SEGMENT_BYTES..=MAX_WAL_SEGMENT_BYTES))]
    pub wal_segment_bytes: u64,
    /// Number of log entries per shard that trigger a snapshot (and release the WAL before it).
    #[arg(long, default_value_t = DEFAULT_SNAPSHOT_COUNT, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_count: u64,
    /// Number of key-space shards, fixed when the data directory is created (default: one per core).
    #[arg(long, allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=MAX_SHARDS as i64))]
    pub shards: Option<u32>,
    /// How often watches that asked for progress notifications receive one
    /// (e.g. `10m`, `30s`, `500ms`).
    #[arg(long, default_value = "10m", value_parser = parse_positive_duration)]
    pub experimental_watch_progress_notify_interval: std::time::Duration,
}

/// A positive duration written like Go's (`10m`, `1s`, `250ms`), as etcd's
/// duration flags take.
pub fn parse_positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration.is_zero() {
        return Err("the duration must be positive".to_owned());
    }
    Ok(duration)
}

/// A client URL: `http://host:port`, resolved to a socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientUrl {
    /// As given, for advertising.
    pub url: String,
    pub address: SocketAddr,
}

/// Parses `http://host:port[/]`. TLS (`https`) and Unix sockets are not
/// served yet, and say so.
pub fn parse_client_url(text: &str) -> Result<ClientUrl, String> {
    let Some(rest) = text.strip_prefix("http://") else {
        if text.starts_with("https://") {
            return Err(format!(
                "{text}: TLS (https) is not supported yet; use http://"
            ));
        }
        return Err(format!(
            "{text}: expected a URL of the form http://host:port"
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "{text}: expected a URL of the form http://host:port"
        ));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{text}: the URL has no port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{text}: invalid port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let address = (host, port.parse::<u16>().unwrap_or_default())
        .to_socket_addrs()
        .map_err(|error| format!("{text}: cannot resolve host {host:?}: {error}"))?
        .next()
        .ok_or_else(|| format!("{text}: host {host:?} has no address"))?;
    Ok(ClientUrl {
        url: text.trim_end_matches('/').to_owned(),
        address,
    })
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<ClientUrl>,
    pub advertise_client_urls: Vec<String>,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub log_level: LogLevel,
    pub cores: usize,
    /// `None`: use the data directory's count, or one per core for a new one.
    pub shards: Option<usize>,
    pub wal_options: crate::wal::WalOptions,
    pub snapshot_count: u64,
    pub watch_progress_interval: std::time::Duration,
}

impl ServerConfig {
    /// Checks what clap cannot check alone, naming the flag on error.
    pub fn from_flags(flags: Flags, available_cores: usize) -> Result<Self, String> {
        let cores = flags.cores.map_or(available_cores, |cores| cores as usize);
        if cores > available_cores {
            return Err(format!(
                "invalid value '{cores}' for '--cores': only {available_cores} cores are available"
            ));
        }
        if flags.name.is_empty() {
            return Err("invalid value '' for '--name': the name must not be empty".to_owned());
        }
        if flags.data_dir.as_os_str().is_empty() {
            return Err("invalid value '' for '--data-dir': the path must not be empty".to_owned());
        }
        let advertise_client_urls = if flags.advertise_client_urls.is_empty() {
            &flags.listen_client_urls
        } else {
            &flags.advertise_client_urls
        };
        Ok(Self {
            name: flags.name.clone(),
            data_dir: flags.data_dir.clone(),
            advertise_client_urls: advertise_client_urls
                .iter()
                .map(|url| url.url.clone())
                .collect(),
            listen_client_urls: flags.listen_client_urls,
            max_txn_ops: flags.max_txn_ops as usize,
            max_request_bytes: flags.max_request_bytes as usize,
            log_level: flags.log_level,
            cores,
            shards: flags.shards.map(|shards| shards as usize),
            snapshot_count: flags.snapshot_count,
            watch_progress_interval: flags.experimental_watch_progress_notify_interval,
            wal_options: crate::wal::WalOptions {
                segment_bytes: flags
                    .wal_segment_bytes
                    .next_multiple_of(crate::wal::BLOCK_SIZE as u64),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_urls() {
        let url = parse_client_url("http://127.0.0.1:2379").expect("valid");
        // Annotated: rkyv adds `PartialEq<ArchivedSocketAddr> for SocketAddr`.
        let address: SocketAddr = "127.0.0.1:2379".parse().expect("address");
        assert_eq!(url.address, address);
        assert!(parse_client_url("http://[::1]:2379/").is_ok());
        assert!(
            parse_client_url("https://127.0.0.1:2379")
                .unwrap_err()
                .contains("TLS")
        );
        assert!(parse_client_url("127.0.0.1:2379").is_err());
        assert!(parse_client_url("http://127.0.0.1").is_err());
        assert!(parse_client_url("http://127.0.0.1:99999").is_err());
        assert!(parse_client_url("http://127.0.0.1:80/path").is_err());
    }

    #[test]
    fn defaults_match_etcd() {
        let flags = Flags::try_parse_from(["metastore"]).expect("defaults parse");
        let config = ServerConfig::from_flags(flags, 4).expect("valid");
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.max_request_bytes, 1_572_864);
        assert_eq!(config.cores, 4);
        assert_eq!(
            config.advertise_client_urls,
            vec!["http://127.0.0.1:2379".to_owned()]
        );
        assert_eq!(config.data_dir, PathBuf::from("default.metastore"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let error = Flags::try_parse_from(["metastore", "--max-txn-ops", "0"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--max-txn-ops"), "{error}");
        let error = Flags::try_parse_from(["metastore", "--listen-client-urls", "localhost"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--listen-client-urls"), "{error}");
        let flags = Flags::try_parse_from(["metastore", "--cores", "64"]).expect("parses");
        assert!(
            ServerConfig::from_flags(flags, 2)
                .unwrap_err()
                .contains("--cores")
        );
    }
}
