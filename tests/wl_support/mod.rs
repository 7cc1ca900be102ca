//! Helpers shared by the Watch / Lease / Lock / Election end-to-end tests
//! (`watch_guarantees`, `etcdctl_watch_lease`, `lease_expiry`, `lock_election`).

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use crate::common::{EtcdServer, MetastoreServer, TestServer};

/// Whether this run targets a real etcd (`TEST_AGAINST_ETCD` set).
pub fn against_etcd() -> bool {
    std::env::var_os("TEST_AGAINST_ETCD").is_some()
}

/// "etcd" or "MetaStore", for messages.
pub fn server_name() -> &'static str {
    if against_etcd() { "etcd" } else { "MetaStore" }
}

/// Starts the server under test with `args` (etcd flag names, given to
/// MetaStore and etcd alike). `None` when etcd was asked for but is missing.
pub fn start_server(args: &[&str]) -> Option<(TestServer, String)> {
    crate::common::start_metastore_or_etcd(args)
}

/// Like [`start_server`] on a data directory that outlives the server, so a
/// second call on the same `dir` is a restart.
///
/// For etcd, `EtcdServer` always passes its own temp `--data-dir`; etcd's
/// flag parser keeps the last occurrence of a flag, so the one appended here
/// wins. A restarted etcd gets new client/peer ports, which a single-member
/// cluster tolerates (the peer URL is only used to talk to other members).
pub fn start_server_in(dir: &Path, args: &[&str]) -> Option<(TestServer, String)> {
    if against_etcd() {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", dir.to_str().expect("utf-8 data dir")]);
        let etcd = EtcdServer::start_with(&all)?;
        let endpoint = etcd.endpoint();
        eprintln!("running against real etcd at {endpoint} (data dir {dir:?})");
        Some((TestServer::Etcd(etcd), endpoint))
    } else {
        let metastore = MetastoreServer::start_in(dir, args);
        let endpoint = metastore.endpoint();
        Some((TestServer::Metastore(metastore), endpoint))
    }
}

/// Awaits `fut` for at most `limit`; a timeout becomes an error naming `what`.
pub async fn within<T>(
    limit: Duration,
    what: impl std::fmt::Display,
    fut: impl Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{what}: no answer within {limit:?}"))
}

/// Connects an `etcd-client` to `endpoint` (bounded).
pub async fn connect(endpoint: &str) -> etcd_client::Client {
    // No `with_timeout`: it would bound streaming calls (Watch, KeepAlive)
    // too; callers bound their own waits with `within`.
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    within(
        Duration::from_secs(10),
        format!("connect to {endpoint}"),
        etcd_client::Client::connect([endpoint], Some(opts)),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

/// The end of a prefix range (etcd's `GetPrefixRangeEnd`): the prefix with its
/// last byte below 0xff incremented, or `\0` (all keys) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().unwrap() += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// How long one client call may take before a test fails instead of hanging.
pub const CALL: Duration = Duration::from_secs(10);

/// A client error as `Code: message` (gRPC statuses) or its text.
pub fn grpc_code(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => format!("{other}"),
    }
}

/// Awaits a client call that must succeed within [`CALL`].
pub async fn ok<T>(what: &str, fut: impl Future<Output = Result<T, etcd_client::Error>>) -> T {
    match within(CALL, what, fut).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what} failed on {}: {}", server_name(), grpc_code(&e)),
        Err(e) => panic!("{e} ({})", server_name()),
    }
}

/// Awaits a client call that must fail within [`CALL`]; its [`grpc_code`].
pub async fn err<T: std::fmt::Debug>(
    what: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> String {
    match within(CALL, what, fut).await {
        Ok(Ok(v)) => panic!(
            "{what}: expected an error from {}, got {v:?}",
            server_name()
        ),
        Ok(Err(e)) => grpc_code(&e),
        Err(e) => panic!("{e} ({})", server_name()),
    }
}
