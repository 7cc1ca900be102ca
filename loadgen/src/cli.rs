//! Command-line interface: etcd `benchmark`'s subcommands and flags, plus
//! `--duration`, `--json`, `--threads` and `plan`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::pacing::Budget;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for etcd-compatible servers (MetaStore or etcd), flag-compatible with etcd's benchmark tool",
    after_help = "Exit status: 0 when every request succeeded, 1 when some failed (the report says how), 2 on a usage or connection error."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalOptions {
    /// gRPC endpoints (host:port), comma-separated; connections are spread
    /// over them round-robin.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Total number of HTTP/2 connections.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// Total number of concurrent clients (each sends one request at a time).
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Total number of requests.
    #[arg(
        long,
        global = true,
        default_value_t = 10_000,
        conflicts_with = "duration"
    )]
    pub total: u64,
    /// Run for this long instead of a request count (e.g. 30s, 2m).
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Offered load in requests per second (open loop; latency counts from
    /// each request's scheduled start). 0 means as fast as possible.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub rate: f64,
    /// Worker threads of the load generator (default: the CPU count, at
    /// most one per connection).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Print the report as JSON on stdout instead of etcd's text layout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Never draw a progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// How long to wait for each connection.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "2s")]
    pub dial_timeout: Duration,
}

impl GlobalOptions {
    pub fn budget(&self) -> Budget {
        match self.duration {
            Some(duration) => Budget::Duration(duration),
            None => Budget::Total(self.total),
        }
    }

    pub fn rate(&self) -> Option<f64> {
        (self.rate > 0.0).then_some(self.rate)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Workload(Workload),
    /// Find the highest throughput that meets a latency objective by
    /// stepping the offered rate up (open loop) until it breaks.
    Plan(PlanArgs),
}

/// Workloads `plan` can step through (those whose rate can be set).
#[derive(Debug, Clone, Subcommand)]
pub enum Workload {
    /// Benchmark put.
    Put(PutArgs),
    /// Benchmark range (`range <key> [end-range]`).
    Range(RangeArgs),
    /// Benchmark txns of puts.
    TxnPut(TxnPutArgs),
    /// Benchmark a read/write mix of txns (`txn-mixed <key> [end-range]`).
    TxnMixed(TxnMixedArgs),
    /// Benchmark watch: event throughput to many watchers.
    Watch(WatchArgs),
    /// Benchmark put-to-event latency.
    WatchLatency(WatchLatencyArgs),
    /// Benchmark lease keep-alive.
    LeaseKeepalive(LeaseKeepaliveArgs),
}

#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys instead of random ones.
    #[arg(long)]
    pub sequential_keys: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// Key to read.
    pub key: String,
    /// End of the range (exclusive).
    pub end_range: Option<String>,
    /// Linearizable (l) or serializable (s).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Maximum keys per response (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Return only the count.
    #[arg(long)]
    pub count_only: bool,
    /// Read every key with `key` as a prefix (instead of `end-range`).
    #[arg(long, conflicts_with = "end_range")]
    pub prefix: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TxnPutArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Puts per txn.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: u64,
}

#[derive(Debug, Clone, Args)]
pub struct TxnMixedArgs {
    /// Key the reads start at.
    pub key: String,
    /// End of the read range (exclusive).
    pub end_range: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Reads per write.
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
    /// Read consistency (inside a txn etcd always reads linearizably).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Maximum keys per read.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers per stream.
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Distinct keys watched (watchers spread over them).
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: u64,
    /// Watch the whole prefix the puts go to, rather than single keys:
    /// every watcher then sees every put.
    #[arg(long)]
    pub watch_prefix: bool,
    /// Puts made once the watchers exist.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Puts per second (0: as fast as the clients go).
    #[arg(long, default_value_t = 0.0)]
    pub put_rate: f64,
    /// Key size in bytes (after the `/watch/` prefix).
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size in bytes (at least 8: the send time travels in it).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct WatchLatencyArgs {
    /// Puts to make.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Puts per second.
    #[arg(long, default_value_t = 100.0)]
    pub put_rate: f64,
    /// Key size in bytes (after the `/watch/` prefix).
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size in bytes (at least 8).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers per stream.
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// Ask for the previous key-value with each event.
    #[arg(long)]
    pub prevkv: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LeaseKeepaliveArgs {
    /// TTL of each client's lease, in seconds.
    #[arg(long, default_value_t = 100)]
    pub lease_ttl: i64,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Latency objective as pNN=duration, e.g. p99=10ms or p99.9=50ms.
    #[arg(long, value_parser = parse_slo)]
    pub slo: Slo,
    /// First offered rate, requests per second.
    #[arg(long, default_value_t = 500.0)]
    pub start_rate: f64,
    /// Each step offers this many times the previous rate.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Highest rate to try.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// How long each step runs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub step_duration: Duration,
    /// Where to write the latency-vs-throughput chart (SVG).
    #[arg(long, default_value = "plan.svg")]
    pub chart: std::path::PathBuf,
    /// Where to write the markdown table.
    #[arg(long, default_value = "plan.md")]
    pub table: std::path::PathBuf,
    #[command(subcommand)]
    pub workload: Workload,
}

/// A latency objective: this percentile must stay at or below `limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    pub percentile: f64,
    pub limit: Duration,
}

/// Parses `p99=10ms`.
pub fn parse_slo(text: &str) -> Result<Slo, String> {
    let (name, limit) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected pNN=duration, e.g. p99=10ms"))?;
    let percentile: f64 = name
        .strip_prefix('p')
        .and_then(|number| number.parse().ok())
        .filter(|percentile| *percentile > 0.0 && *percentile <= 100.0)
        .ok_or_else(|| format!("{name:?}: expected a percentile like p50, p99 or p99.9"))?;
    let limit = humantime::parse_duration(limit).map_err(|error| format!("{limit:?}: {error}"))?;
    if limit.is_zero() {
        return Err("the latency limit must be positive".into());
    }
    Ok(Slo { percentile, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_parses_and_rejects() {
        assert_eq!(
            parse_slo("p99=10ms").unwrap(),
            Slo {
                percentile: 99.0,
                limit: Duration::from_millis(10)
            }
        );
        assert_eq!(parse_slo("p99.9=1s").unwrap().percentile, 99.9);
        for bad in ["p99", "99=10ms", "p101=1ms", "p99=fast", "p99=0s"] {
            assert!(parse_slo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn etcd_style_command_lines_parse() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "--endpoints",
            "a:1,b:2",
            "--conns",
            "4",
            "--clients",
            "16",
            "put",
            "--total",
            "100",
            "--key-size",
            "8",
            "--val-size",
            "256",
            "--key-space-size",
            "100000",
            "--sequential-keys",
        ])
        .unwrap();
        assert_eq!(cli.global.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(cli.global.budget(), Budget::Total(100));
        let Command::Workload(Workload::Put(put)) = cli.command else {
            panic!("not put")
        };
        assert_eq!(put.keys.val_size, 256);
        assert!(put.keys.sequential_keys);

        let cli = Cli::try_parse_from([
            "loadgen",
            "range",
            "foo",
            "--consistency",
            "s",
            "--duration",
            "3s",
        ])
        .unwrap();
        assert_eq!(
            cli.global.budget(),
            Budget::Duration(Duration::from_secs(3))
        );
        assert!(Cli::try_parse_from(["loadgen", "range", "foo", "--consistency", "x"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "--conns", "0", "put"]).is_err());
        assert!(
            Cli::try_parse_from(["loadgen", "put", "--total", "5", "--duration", "1s"]).is_err()
        );

        let cli =
            Cli::try_parse_from(["loadgen", "plan", "--slo", "p99=5ms", "range", "k"]).unwrap();
        assert!(matches!(cli.command, Command::Plan(_)));
    }
}
