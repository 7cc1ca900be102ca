//! The workloads, and turning a parsed command line into a run.

pub mod kv;
pub mod lease;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use metastore::grpc::Status;
use metastore::store::key_range::prefix_end;

use crate::cli::{Consistency, GlobalOptions, KeyArgs, RangeArgs, Workload};
use crate::keys::KeyGenerator;
use crate::progress::Progress;
use crate::report::{RunReport, Section};
use crate::runner::{Outcome, Topology, run_clients};
use kv::{PutClient, RangeClient, RangeSpec, TxnMixedClient, TxnPutClient};

/// Why a run could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flag combination that cannot work; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// Connecting or preparing failed before the clock started.
    #[error("{0}")]
    Setup(Status),
}

impl From<Status> for RunError {
    fn from(status: Status) -> Self {
        RunError::Setup(status)
    }
}

pub fn topology(global: &GlobalOptions) -> Topology {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Topology {
        endpoints: global.endpoints.clone(),
        conns: global.conns as usize,
        clients: global.clients as usize,
        threads: global.threads.unwrap_or(cores),
        dial_timeout: global.dial_timeout,
    }
}

/// Runs `workload` with the global options (whose rate `plan` overrides
/// per step) and reports what it measured.
pub fn run(
    global: &GlobalOptions,
    workload: &Workload,
    progress: &Progress,
) -> Result<RunReport, RunError> {
    let topology = topology(global);
    let budget = global.budget();
    let rate = global.rate();
    let mut settings = BTreeMap::new();
    settings.insert("endpoints".into(), global.endpoints.join(","));
    settings.insert("conns".into(), global.conns.to_string());
    settings.insert("clients".into(), global.clients.to_string());
    settings.insert("budget".into(), format!("{budget:?}"));
    settings.insert(
        "rate".into(),
        rate.map_or("max".into(), |rate| rate.to_string()),
    );
    let (name, sections) = match workload {
        Workload::Put(args) => {
            let keys = key_generator(b"", &args.keys)?;
            let value_size = args.keys.val_size;
            let outcome = run_clients(&topology, budget, rate, progress, move |client| {
                PutClient::new(client, Arc::clone(&keys), value_size)
            })?;
            ("put", sections(&["put"], &outcome))
        }
        Workload::Range(args) => {
            let spec = range_spec(args)?;
            let outcome = run_clients(&topology, budget, rate, progress, move |_| {
                RangeClient::new(&spec)
            })?;
            ("range", sections(&["range"], &outcome))
        }
        Workload::TxnPut(args) => {
            if args.txn_ops == 0 || args.txn_ops > args.keys.key_space_size {
                return Err(RunError::Usage(format!(
                    "--txn-ops {} must be between 1 and --key-space-size {} (a txn may not put a key twice)",
                    args.txn_ops, args.keys.key_space_size
                )));
            }
            let keys = key_generator(b"", &args.keys)?;
            let (value_size, ops) = (args.keys.val_size, args.txn_ops);
            let outcome = run_clients(&topology, budget, rate, progress, move |client| {
                TxnPutClient::new(client, Arc::clone(&keys), value_size, ops)
            })?;
            ("txn-put", sections(&["txn-put"], &outcome))
        }
        Workload::TxnMixed(args) => {
            if !(args.rw_ratio.is_finite() && args.rw_ratio >= 0.0) {
                return Err(RunError::Usage(
                    "--rw-ratio must be a non-negative number".into(),
                ));
            }
            let read = RangeSpec {
                key: Bytes::from(args.key.clone()),
                range_end: Bytes::from(args.end_range.clone().unwrap_or_default()),
                serializable: args.consistency == Consistency::S,
                limit: args.limit,
                count_only: false,
            };
            let keys = key_generator(b"", &args.keys)?;
            let (value_size, ratio) = (args.keys.val_size, args.rw_ratio);
            let outcome = run_clients(&topology, budget, rate, progress, move |client| {
                TxnMixedClient::new(client, read.clone(), Arc::clone(&keys), value_size, ratio)
            })?;
            ("txn-mixed", sections(&["read", "write"], &outcome))
        }
        Workload::LeaseKeepalive(args) => {
            let ttl = args.lease_ttl;
            let outcome = run_clients(&topology, budget, rate, progress, move |_| {
                lease::KeepAliveClient::new(ttl)
            })?;
            ("lease-keepalive", sections(&["lease-keepalive"], &outcome))
        }
        Workload::Watch(args) => ("watch", watch::run_watch(&topology, args, progress)?),
        Workload::WatchLatency(args) => (
            "watch-latency",
            watch::run_watch_latency(&topology, args, progress)?,
        ),
    };
    Ok(RunReport {
        workload: name.into(),
        settings,
        sections,
    })
}

fn key_generator(prefix: &[u8], args: &KeyArgs) -> Result<Arc<KeyGenerator>, RunError> {
    KeyGenerator::new(
        prefix,
        args.key_size,
        args.key_space_size,
        args.sequential_keys,
    )
    .map(Arc::new)
    .map_err(RunError::Usage)
}

fn range_spec(args: &RangeArgs) -> Result<RangeSpec, RunError> {
    if args.limit < 0 {
        return Err(RunError::Usage("--limit must not be negative".into()));
    }
    let key = Bytes::from(args.key.clone());
    let range_end = if args.prefix {
        prefix_end(&key)
    } else {
        Bytes::from(args.end_range.clone().unwrap_or_default())
    };
    Ok(RangeSpec {
        key,
        range_end,
        serializable: args.consistency == Consistency::S,
        limit: args.limit,
        count_only: args.count_only,
    })
}

fn sections(names: &[&str], outcome: &Outcome) -> Vec<Section> {
    names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let empty = crate::recorder::Recorder::new();
            let recorder = outcome.recorders.get(index).unwrap_or(&empty);
            Section::new(name, recorder, outcome.elapsed)
        })
        .collect()
}
