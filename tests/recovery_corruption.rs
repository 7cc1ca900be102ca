//! Protocol-Aware Recovery through the real binary: a damaged last frame of
//! an idle shard, whose log other shards prove durable, must refuse the
//! start (naming shard, file, offset and what is at stake) instead of
//! voiding every later acknowledged write; `metastore repair` says what it
//! drops, drops it only with `--apply`, and the server then starts with
//! exactly what the repair said.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bytes::Bytes;
use common::{GrpcClient, MetastoreServer};
use metastore::proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use metastore::store::shard_map::ShardMap;
use metastore::wal::format::{FIRST_FRAME_OFFSET, FRAME_HEADER_LEN, decode_frame_header};

/// The test server's layout (`MetastoreServer`'s defaults).
const SHARDS: usize = 4;
const CORES: usize = 2;
/// Writes on the other shards after shard 0's last frame, as in the report.
const LATER_WRITES: usize = 2_001;

/// `count` distinct keys whose shard is (or is not) 0.
fn keys(on_shard_zero: bool, count: usize) -> Vec<Bytes> {
    let map = ShardMap::new(SHARDS, CORES);
    (0..)
        .map(|index| format!("key-{index:06}"))
        .filter(|key| (map.shard_of(key.as_bytes()) == 0) == on_shard_zero)
        .take(count)
        .map(Bytes::from)
        .collect()
}

async fn put_all(address: std::net::SocketAddr, keys: &[Bytes]) -> i64 {
    let mut client = GrpcClient::connect(address).await.expect("connect");
    let mut revision = 0;
    for key in keys {
        let response: PutResponse = client
            .unary(
                "/etcdserverpb.KV/Put",
                &PutRequest {
                    key: key.clone(),
                    value: Bytes::from_static(b"acknowledged"),
                    ..Default::default()
                },
            )
            .await
            .expect("put");
        revision = response.header.expect("header").revision;
    }
    revision
}

async fn count_keys(address: std::net::SocketAddr) -> (i64, i64) {
    let mut client = GrpcClient::connect(address).await.expect("connect");
    let response: RangeResponse = client
        .unary(
            "/etcdserverpb.KV/Range",
            &RangeRequest {
                key: Bytes::from_static(b"key-"),
                range_end: Bytes::from_static(b"key."),
                count_only: true,
                ..Default::default()
            },
        )
        .await
        .expect("range");
    (response.count, response.header.expect("header").revision)
}

fn segment_of_shard_zero(data_dir: &Path) -> PathBuf {
    data_dir.join("shards/0000/wal/wal-0000000000000001.log")
}

/// Flips a payload byte of the last frame of shard 0's log; returns the
/// frame's offset.
fn damage_last_frame(segment: &Path) -> u64 {
    let mut bytes = std::fs::read(segment).expect("read segment");
    let mut offset = FIRST_FRAME_OFFSET as usize;
    let mut last = None;
    while let Some(Ok(Some(header))) = bytes.get(offset..).map(decode_frame_header) {
        last = Some((offset, header.payload_length as usize));
        offset += header.frame_len() as usize;
    }
    let (start, payload_length) = last.expect("shard 0 wrote a frame");
    bytes[start + FRAME_HEADER_LEN + payload_length / 2] ^= 0x10;
    std::fs::write(segment, &bytes).expect("write segment");
    start as u64
}

fn metastore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run metastore")
}

/// Starts the server on `data_dir` expecting a refusal; returns stderr.
/// A server that starts instead is stopped after a while and fails the
/// test.
fn start_refused(data_dir: &Path) -> String {
    let client = format!("http://127.0.0.1:{}", common::free_port());
    let metrics = format!("http://127.0.0.1:{}", common::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args([
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
            "--cores",
            "2",
            "--listen-client-urls",
            &client,
            "--listen-metrics-urls",
            &metrics,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run metastore");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started on a log that lost acknowledged data; it must refuse");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("stderr");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "the start must be refused; stderr: {stderr}"
    );
    stderr
}

fn repair(data_dir: &Path, apply: bool) -> String {
    let mut args = vec!["repair", "--data-dir", data_dir.to_str().expect("utf-8")];
    if apply {
        args.push("--apply");
    }
    let output = metastore(&args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "repair failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn assert_names_the_damage(stderr: &str, frame_offset: u64) {
    for expected in [
        "acknowledged data was lost to corruption",
        "shard 0: its log (shards/0000/wal)",
        "wal-0000000000000001.log",
        &format!("byte offset {frame_offset}"),
        "metastore repair --data-dir",
        "Nothing was changed",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in: {stderr}"
        );
    }
}

/// The reported data loss: one write on shard 0, then 2,001 on the others;
/// a flipped byte in shard 0's last frame used to void all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_durable_frame_refuses_the_start_and_repair_drops_only_what_it_names() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut server = MetastoreServer::start_in(data_dir.path(), &[]);
    let first = put_all(server.addr(), &keys(true, 1)).await;
    let last = put_all(server.addr(), &keys(false, LATER_WRITES)).await;
    assert_eq!(last, first + LATER_WRITES as i64);
    server.kill_hard();
    drop(server);

    let segment = segment_of_shard_zero(data_dir.path());
    let frame_offset = damage_last_frame(&segment);
    let damaged = std::fs::read(&segment).expect("segment");
    let stderr = start_refused(data_dir.path());
    assert_names_the_damage(&stderr, frame_offset);
    let at_stake = format!("revisions {first}..={last} ({} revisions", LATER_WRITES + 1);
    assert!(
        stderr.contains(&at_stake),
        "missing {at_stake:?} in: {stderr}"
    );

    // The dry run names the same and changes nothing.
    let report = repair(data_dir.path(), false);
    assert!(
        report.contains(&at_stake) && report.contains("Nothing was changed"),
        "{report}"
    );
    assert_eq!(std::fs::read(&segment).expect("segment"), damaged);
    start_refused(data_dir.path());

    let applied = repair(data_dir.path(), true);
    assert!(applied.contains("repaired shard 0"), "{applied}");
    let server = MetastoreServer::start_in(data_dir.path(), &[]);
    let (count, revision) = count_keys(server.addr()).await;
    assert_eq!(
        count, 0,
        "the repair said it drops revisions {first}..={last}, and nothing else"
    );
    let next = put_all(server.addr(), &keys(true, 1)).await;
    assert!(next > last, "revision {next} reused one at or below {last}");
    assert!(revision >= 1);
}

/// Shard 0 never written: its last frame is the one it wrote at startup,
/// older than all 2,001 writes. The loss is still proven and refused; the
/// repair drops no key revision, and every acknowledged write survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_frame_of_an_idle_shard_is_refused_and_repair_keeps_every_write() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut server = MetastoreServer::start_in(data_dir.path(), &[]);
    let last = put_all(server.addr(), &keys(false, LATER_WRITES)).await;
    server.kill_hard();
    drop(server);

    let frame_offset = damage_last_frame(&segment_of_shard_zero(data_dir.path()));
    let stderr = start_refused(data_dir.path());
    assert_names_the_damage(&stderr, frame_offset);
    assert!(
        stderr.contains("No key revision would be discarded"),
        "{stderr}"
    );
    let report = repair(data_dir.path(), true);
    assert!(report.contains("discards no key revision"), "{report}");

    let server = MetastoreServer::start_in(data_dir.path(), &[]);
    let (count, revision) = count_keys(server.addr()).await;
    assert_eq!((count, revision), (LATER_WRITES as i64, last));
    // The repaired shard takes writes again, and a restart keeps them.
    let next = put_all(server.addr(), &keys(true, 3)).await;
    drop(server);
    let server = MetastoreServer::start_in(data_dir.path(), &[]);
    assert_eq!(
        count_keys(server.addr()).await,
        (LATER_WRITES as i64 + 3, next)
    );
}
