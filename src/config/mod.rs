//! The command line, with etcd's flag names where they apply, and (in
//! `load`) the environment variables and config file that fill in the flags
//! it leaves out.
//!
//! Every value is validated before anything starts; a bad flag or value
//! exits non-zero with a message naming the flag and where it came from.

mod cluster;
mod load;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

pub use cluster::{ClusterConfig, ClusterFlags, InitialClusterState, InitialMember};
pub use load::{ConfigError, ENVIRONMENT_PREFIX, command, load};

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
#[command(
    name = "metastore",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
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
    /// YAML configuration file whose keys are these flags' long names
    /// (`data-dir: /var/lib/metastore`). Flags and `METASTORE_<FLAG>`
    /// environment variables override it.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Comma-separated URLs serving /metrics, /health, /livez and /readyz over HTTP.
    #[arg(long, default_value = "http://127.0.0.1:2381", value_delimiter = ',', value_parser = parse_client_url)]
    pub listen_metrics_urls: Vec<ClientUrl>,
    /// Which metrics to record: `basic` and `extensive` (etcd's names) both
    /// record everything; `off` records nothing (for measuring its cost).
    #[arg(long, value_enum, default_value = "basic")]
    pub metrics: MetricsLevel,
    /// Connections the metrics URLs serve at once; beyond it a connection
    /// gets 503 and is closed.
    #[arg(long, default_value_t = crate::monitor::DEFAULT_MAX_CONNECTIONS as u32,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub metrics_max_connections: u32,
    /// A request's header on the metrics URLs must arrive within this; an
    /// idle keep-alive connection is closed after it.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub metrics_header_read_timeout: std::time::Duration,
    /// Raise the NOSPACE alarm and refuse writes when the stored data passes
    /// this many bytes; 0 means etcd's default (2 GiB), negative disables it.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// `periodic` (retention is a duration, or a number of hours) or
    /// `revision` (retention is a number of revisions).
    #[arg(long, value_enum, default_value = "periodic")]
    pub auto_compaction_mode: AutoCompactionMode,
    /// How much history automatic compaction keeps; 0 turns it off.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Client connections served at once over all cores; 0 means no limit.
    /// Default: the open file limit (raised to its hard limit at start)
    /// less an eighth, and at least 256 + 64 per core, kept for the rest.
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS: concurrent calls per client connection.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// After this long without frames from a client, ping it (HTTP/2 PING).
    #[arg(long, default_value = "2h", value_parser = parse_positive_duration)]
    pub grpc_keepalive_interval: std::time::Duration,
    /// Close a connection whose keepalive ping is not answered within this.
    #[arg(long, default_value = "20s", value_parser = parse_positive_duration)]
    pub grpc_keepalive_timeout: std::time::Duration,
    /// The shortest time between a client's pings; a client that pings more
    /// often (twice forgiven) is told to go away (GOAWAY ENHANCE_YOUR_CALM).
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub grpc_keepalive_min_time: std::time::Duration,
    /// Close a connection that has had no call in flight for this long; 0 never.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub grpc_max_connection_idle: std::time::Duration,
    /// Close a new connection that has not sent the HTTP/2 client preface and
    /// its first SETTINGS frame within this.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub grpc_handshake_timeout: std::time::Duration,
    /// Close a new connection that has not sent a whole request header block
    /// within this (a client closed by it dials again when it has a call).
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub grpc_first_request_timeout: std::time::Duration,
    /// Fail a call whose request message has been partly received for this
    /// long (its bytes are held meanwhile).
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub grpc_request_message_timeout: std::time::Duration,
    /// Requests per second admitted over the whole node; 0 means no limit.
    /// Beyond it calls fail with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 0)]
    pub rate_limit_requests: u32,
    /// Requests admitted at once above the rate (the token bucket's size);
    /// default: one second's worth.
    #[arg(long)]
    pub rate_limit_burst: Option<u32>,
    /// Per-method limits in requests per second, e.g. `Put=1000,etcdserverpb.KV/Range=5000`.
    #[arg(long, value_delimiter = ',', value_parser = parse_method_rate_limit)]
    pub method_rate_limits: Vec<MethodRateLimit>,
    /// Log unary requests that take longer than this (method, duration,
    /// peer, key prefix); etcd 3.5's flag.
    #[arg(long, default_value = "300ms", value_parser = parse_positive_duration)]
    pub warning_unary_request_duration: std::time::Duration,
    #[command(flatten)]
    pub cluster: ClusterFlags,
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// `metastore <subcommand>`: tools that run instead of the server.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Subcommand {
    /// Work with snapshots taken by `Maintenance.Snapshot` (`etcdctl snapshot save`).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Show, and with --apply carry out, what it takes to start after a
    /// shard's log lost records that had been durable (a start refused
    /// with "acknowledged data was lost to corruption").
    Repair {
        /// The data directory to repair; it must exist.
        #[arg(long)]
        data_dir: PathBuf,
        /// Carry the repair out. Without it nothing is changed.
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Create a new data directory holding a snapshot's data.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The data directory to create; it must not exist yet.
        #[arg(long)]
        data_dir: PathBuf,
        /// Shards of the new data directory (default: as many as the snapshot's server had).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_SHARDS as i64))]
        shards: Option<u32>,
    },
}

/// etcd's default `--quota-backend-bytes` (2 GiB).
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Our default SETTINGS_MAX_CONCURRENT_STREAMS (etcd advertises 2^32-1);
/// clients queue calls beyond it rather than fail.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsLevel {
    Basic,
    Extensive,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

/// What automatic compaction keeps, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep at least this much time of history.
    Periodic(std::time::Duration),
    /// Keep at least this many revisions.
    Revision(i64),
}

/// `--method-rate-limits` entry: a method (`Put`, or `etcdserverpb.KV/Put`)
/// and its requests per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRateLimit {
    pub method: String,
    pub requests_per_second: u32,
}

pub fn parse_method_rate_limit(text: &str) -> Result<MethodRateLimit, String> {
    let (method, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected METHOD=REQUESTS_PER_SECOND"))?;
    let method = method.trim().trim_start_matches('/');
    if method.is_empty() {
        return Err(format!("{text:?}: the method name is empty"));
    }
    let requests_per_second = rate
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|rate| *rate > 0)
        .ok_or_else(|| format!("{text:?}: the rate must be a positive whole number"))?;
    Ok(MethodRateLimit {
        method: method.to_owned(),
        requests_per_second,
    })
}

/// A duration written like Go's, zero allowed (`0` turns the feature off).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    if text.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|error| error.to_string())
}

/// etcd's `--auto-compaction-retention`: in periodic mode a duration, or a
/// whole number of hours; in revision mode a number of revisions. `None`
/// when it is zero (off).
pub fn parse_auto_compaction(
    mode: AutoCompactionMode,
    retention: &str,
) -> Result<Option<AutoCompaction>, String> {
    let retention = retention.trim();
    let invalid =
        |why: &str| format!("invalid value '{retention}' for '--auto-compaction-retention': {why}");
    match mode {
        AutoCompactionMode::Revision => {
            let revisions = retention
                .parse::<i64>()
                .map_err(|_| invalid("revision mode takes a number of revisions"))?;
            if revisions < 0 {
                return Err(invalid("it must not be negative"));
            }
            Ok((revisions > 0).then_some(AutoCompaction::Revision(revisions)))
        }
        AutoCompactionMode::Periodic => {
            let period = match retention.parse::<u64>() {
                Ok(hours) => std::time::Duration::from_secs(hours.saturating_mul(3600)),
                Err(_) => humantime::parse_duration(retention).map_err(|error| {
                    invalid(&format!(
                        "periodic mode takes a duration or a number of hours ({error})"
                    ))
                })?,
            };
            Ok((!period.is_zero()).then_some(AutoCompaction::Periodic(period)))
        }
    }
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
    /// Where /metrics and the health endpoints are served.
    pub metrics_addresses: Vec<SocketAddr>,
    pub metrics_level: MetricsLevel,
    /// The metrics endpoint's connection cap and header read timeout.
    pub metrics_limits: crate::monitor::MonitorLimits,
    /// `None`: no quota.
    pub quota_backend_bytes: Option<u64>,
    /// `None`: no automatic compaction.
    pub auto_compaction: Option<AutoCompaction>,
    pub connection_limits: ConnectionLimits,
    /// `None`: this member alone (one Raft voter per shard).
    pub cluster: Option<ClusterConfig>,
}

/// Protection limits on client connections and calls.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// `None`: no limit.
    pub max_connections: Option<usize>,
    /// Deadlines of a new connection's stages.
    pub stages: crate::grpc::deadlines::StageTimeouts,
    /// How long a request message may stay partly received.
    pub request_message_timeout: std::time::Duration,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: std::time::Duration,
    pub keepalive_timeout: std::time::Duration,
    pub keepalive_min_time: std::time::Duration,
    /// `None`: idle connections stay open.
    pub max_connection_idle: Option<std::time::Duration>,
    /// `None`: no node-wide rate limit.
    pub rate_limit: Option<RateLimit>,
    pub method_rate_limits: Vec<MethodRateLimit>,
    pub slow_request_threshold: std::time::Duration,
}

/// A token bucket: `requests_per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// `--max-connections`' default for an open file limit: what is left after
/// the descriptors the server needs besides client connections (shard
/// files, listeners, the metrics endpoint's connections, each core's
/// reserve descriptor and its in-flight refusals), kept generously: an
/// eighth of the limit, and at least 256 + 64 per core.
pub fn default_max_connections(open_file_limit: u64, cores: usize) -> usize {
    let reserved = (open_file_limit / 8).max(256 + 64 * cores as u64);
    open_file_limit.saturating_sub(reserved).max(64) as usize
}

impl ServerConfig {
    /// Checks what clap cannot check alone, naming the flag on error.
    /// `open_file_limit` (RLIMIT_NOFILE, after raising it) sizes the
    /// default connection cap.
    pub fn from_flags(
        flags: Flags,
        available_cores: usize,
        open_file_limit: u64,
    ) -> Result<Self, String> {
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
        let quota_backend_bytes = match flags.quota_backend_bytes {
            0 => Some(DEFAULT_QUOTA_BACKEND_BYTES),
            bytes if bytes < 0 => None,
            bytes => Some(bytes as u64),
        };
        let cluster = cluster::cluster_config(&flags.cluster, &flags.name)?;
        let auto_compaction =
            parse_auto_compaction(flags.auto_compaction_mode, &flags.auto_compaction_retention)?;
        if flags.rate_limit_burst == Some(0) {
            return Err(
                "invalid value '0' for '--rate-limit-burst': the burst must be positive".to_owned(),
            );
        }
        // Unknown method names are refused here, naming the flag.
        crate::grpc::rate_limit::RateLimiter::new(None, &flags.method_rate_limits)
            .map_err(|error| error.to_string())?;
        let connection_limits = ConnectionLimits {
            max_connections: match flags.max_connections {
                None => Some(default_max_connections(open_file_limit, cores)),
                Some(0) => None,
                Some(max) => Some(max as usize),
            },
            stages: crate::grpc::deadlines::StageTimeouts {
                handshake: flags.grpc_handshake_timeout,
                first_request: flags.grpc_first_request_timeout,
            },
            request_message_timeout: flags.grpc_request_message_timeout,
            max_concurrent_streams: flags.max_concurrent_streams,
            keepalive_interval: flags.grpc_keepalive_interval,
            keepalive_timeout: flags.grpc_keepalive_timeout,
            keepalive_min_time: flags.grpc_keepalive_min_time,
            max_connection_idle: (!flags.grpc_max_connection_idle.is_zero())
                .then_some(flags.grpc_max_connection_idle),
            rate_limit: (flags.rate_limit_requests > 0).then(|| RateLimit {
                requests_per_second: flags.rate_limit_requests,
                burst: flags.rate_limit_burst.unwrap_or(flags.rate_limit_requests),
            }),
            method_rate_limits: flags.method_rate_limits.clone(),
            slow_request_threshold: flags.warning_unary_request_duration,
        };
        Ok(Self {
            metrics_addresses: flags
                .listen_metrics_urls
                .iter()
                .map(|url| url.address)
                .collect(),
            metrics_level: flags.metrics,
            metrics_limits: crate::monitor::MonitorLimits {
                max_connections: flags.metrics_max_connections as usize,
                header_read_timeout: flags.metrics_header_read_timeout,
            },
            quota_backend_bytes,
            auto_compaction,
            connection_limits,
            cluster,
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
        let config = ServerConfig::from_flags(flags, 4, 20_000).expect("valid");
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.max_request_bytes, 1_572_864);
        assert_eq!(config.cores, 4);
        assert_eq!(
            config.advertise_client_urls,
            vec!["http://127.0.0.1:2379".to_owned()]
        );
        assert_eq!(config.data_dir, PathBuf::from("default.metastore"));
        assert_eq!(
            config.metrics_addresses,
            vec!["127.0.0.1:2381".parse::<SocketAddr>().expect("address")]
        );
        assert_eq!(config.quota_backend_bytes, Some(2 * 1024 * 1024 * 1024));
        assert_eq!(config.auto_compaction, None);
        assert_eq!(
            config.connection_limits.max_connections,
            Some(default_max_connections(20_000, 4))
        );
        assert_eq!(config.connection_limits.rate_limit, None);
    }

    #[test]
    fn auto_compaction_retention_follows_etcd() {
        use std::time::Duration;
        let periodic = AutoCompactionMode::Periodic;
        assert_eq!(
            parse_auto_compaction(periodic, "1"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            parse_auto_compaction(periodic, "30m"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(1800))))
        );
        assert_eq!(parse_auto_compaction(periodic, "0"), Ok(None));
        assert_eq!(
            parse_auto_compaction(AutoCompactionMode::Revision, "1000"),
            Ok(Some(AutoCompaction::Revision(1000)))
        );
        for (mode, bad) in [
            (periodic, "soon"),
            (AutoCompactionMode::Revision, "1h"),
            (AutoCompactionMode::Revision, "-5"),
        ] {
            let error = parse_auto_compaction(mode, bad).unwrap_err();
            assert!(error.contains("--auto-compaction-retention"), "{error}");
        }
    }

    #[test]
    fn method_rate_limits_parse() {
        assert_eq!(
            parse_method_rate_limit("etcdserverpb.KV/Put=100"),
            Ok(MethodRateLimit {
                method: "etcdserverpb.KV/Put".to_owned(),
                requests_per_second: 100
            })
        );
        for bad in ["Put", "Put=0", "=5", "Put=fast"] {
            assert!(parse_method_rate_limit(bad).is_err(), "{bad}");
        }
        let flags = Flags::try_parse_from(["metastore", "--method-rate-limits", "Teleport=5"])
            .expect("parses");
        let error = ServerConfig::from_flags(flags, 2, 20_000).unwrap_err();
        assert!(error.contains("--method-rate-limits"), "{error}");
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
            ServerConfig::from_flags(flags, 2, 20_000)
                .unwrap_err()
                .contains("--cores")
        );
    }
}
