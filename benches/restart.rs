//! Restart time with many keys: writes `RESTART_BENCH_KEYS` keys (default
//! 1,000,000; 8-byte keys, 256-byte values) into the real binary, stops it,
//! and times a restart until the first answered read, plus a check that the
//! last key survived. Run with `cargo bench --bench restart`; it prints its
//! numbers (write rate, restart time), to compare before/after on the same
//! machine, never against fixed numbers.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{GrpcClient, MetastoreServer, probe};
use metastore::proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};

const CONNECTIONS: usize = 64;

fn key(index: u64) -> Bytes {
    Bytes::copy_from_slice(&index.to_be_bytes())
}

async fn load(address: std::net::SocketAddr, keys: u64) {
    let per_connection = keys.div_ceil(CONNECTIONS as u64);
    let tasks: Vec<_> = (0..CONNECTIONS as u64)
        .map(|connection| {
            tokio::spawn(async move {
                let mut client = GrpcClient::connect(address).await.expect("connect");
                let start = connection * per_connection;
                for index in start..(start + per_connection).min(keys) {
                    let put = PutRequest {
                        key: key(index),
                        value: Bytes::from_static(&[b'v'; 256]),
                        ..Default::default()
                    };
                    let _: PutResponse = client
                        .unary("/etcdserverpb.KV/Put", &put)
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("load task");
    }
}

/// Resident memory of the metastore process serving `data_dir`, from /proc.
fn server_rss_mib(data_dir: &std::path::Path) -> Option<u64> {
    let needle = data_dir.to_str()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(command_line) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let command_line = String::from_utf8_lossy(&command_line);
        if command_line.contains("metastore") && command_line.contains(needle) {
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let kib: u64 = status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            return Some(kib / 1024);
        }
    }
    None
}

fn main() {
    let keys: u64 = std::env::var("RESTART_BENCH_KEYS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000);
    let data_dir = tempfile::Builder::new()
        .prefix("metastore-restart-bench-")
        .tempdir()
        .expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut server = MetastoreServer::start_in(data_dir.path(), &["--log-level", "warn"]);
    let started = Instant::now();
    runtime.block_on(load(server.addr(), keys));
    let load_time = started.elapsed();
    println!(
        "wrote {keys} keys in {:.1} s ({:.0} puts/s)",
        load_time.as_secs_f64(),
        keys as f64 / load_time.as_secs_f64()
    );
    // Let the last snapshots finish, then crash the server the hard way.
    std::thread::sleep(Duration::from_secs(2));
    if let Some(rss) = server_rss_mib(data_dir.path()) {
        println!(
            "server RSS after load: {rss} MiB ({:.0} bytes per key)",
            rss as f64 * 1048576.0 / keys as f64
        );
    }
    server.kill_hard();
    drop(server);

    let restart = Instant::now();
    let server = MetastoreServer::start_in(data_dir.path(), &["--log-level", "warn"]);
    while probe(server.addr()).is_err() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let restart_time = restart.elapsed();
    let last: RangeResponse = runtime.block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        client
            .unary(
                "/etcdserverpb.KV/Range",
                &RangeRequest {
                    key: key(keys - 1),
                    ..Default::default()
                },
            )
            .await
            .expect("range")
    });
    assert_eq!(
        last.kvs.len(),
        1,
        "the last key written must survive the restart"
    );
    println!(
        "restart with {keys} keys: {:.2} s to the first answered read",
        restart_time.as_secs_f64()
    );
}
