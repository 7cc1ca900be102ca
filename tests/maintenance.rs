//! The Maintenance service against the real binary: snapshot save →
//! `metastore snapshot restore` → start → identical `HashKV`, reads and
//! revision; corrupt files refused; `HashKV` equal across shard counts;
//! Defragment under load keeps serving; Status and MoveLeader.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{GrpcClient, MetastoreServer, require_tool};
use metastore::proto::etcdserverpb as pb;

const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
const DELETE: &str = "/etcdserverpb.KV/DeleteRange";
const COMPACT: &str = "/etcdserverpb.KV/Compact";
const GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const TIME_TO_LIVE: &str = "/etcdserverpb.Lease/LeaseTimeToLive";
const HASH_KV: &str = "/etcdserverpb.Maintenance/HashKV";
const HASH: &str = "/etcdserverpb.Maintenance/Hash";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";
const DEFRAGMENT: &str = "/etcdserverpb.Maintenance/Defragment";
const MOVE_LEADER: &str = "/etcdserverpb.Maintenance/MoveLeader";

async fn put(client: &mut GrpcClient, key: &str, value: &str, lease: i64) -> i64 {
    let request = pb::PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        lease,
        ..Default::default()
    };
    let response: pb::PutResponse = client.unary(PUT, &request).await.expect("put");
    response.header.expect("header").revision
}

async fn hash_kv(client: &mut GrpcClient, revision: i64) -> pb::HashKvResponse {
    client
        .unary(HASH_KV, &pb::HashKvRequest { revision })
        .await
        .expect("HashKV")
}

async fn range_all(client: &mut GrpcClient, revision: i64) -> pb::RangeResponse {
    let request = pb::RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        revision,
        ..Default::default()
    };
    client.unary(RANGE, &request).await.expect("range")
}

/// Puts, overwrites, deletes, a compaction, a lease with keys, and writes
/// after the compaction. Returns the lease ID.
async fn write_history(client: &mut GrpcClient) -> i64 {
    for index in 0..40 {
        put(client, &format!("key/{index:02}"), &format!("v{index}"), 0).await;
    }
    for index in (0..40).step_by(3) {
        put(client, &format!("key/{index:02}"), "overwritten", 0).await;
    }
    let request = pb::DeleteRangeRequest {
        key: Bytes::from_static(b"key/1"),
        range_end: Bytes::from_static(b"key/2"),
        ..Default::default()
    };
    let _: pb::DeleteRangeResponse = client.unary(DELETE, &request).await.expect("delete");
    let compact_at = put(client, "marker", "m", 0).await;
    let _: pb::CompactionResponse = client
        .unary(
            COMPACT,
            &pb::CompactionRequest {
                revision: compact_at,
                physical: true,
            },
        )
        .await
        .expect("compact");
    let grant: pb::LeaseGrantResponse = client
        .unary(
            GRANT,
            &pb::LeaseGrantRequest {
                ttl: 600,
                id: 0x1234,
            },
        )
        .await
        .expect("grant");
    put(client, "leased/a", "x", grant.id).await;
    put(client, "leased/b", "y", grant.id).await;
    for index in 0..10 {
        put(client, &format!("key/{index:02}"), "after compaction", 0).await;
    }
    grant.id
}

/// `metastore snapshot restore`; returns (success, exit code, stdout+stderr).
fn restore(file: &Path, data_dir: &Path, shards: Option<&str>) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_metastore"));
    command
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir);
    if let Some(shards) = shards {
        command.args(["--shards", shards]);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("run metastore snapshot restore");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn etcdctl_snapshot_save(endpoint: &str, file: &Path) -> (bool, String) {
    let output = common::etcdctl_command(endpoint, &["--command-timeout=30s", "snapshot", "save"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A snapshot through the etcd client library (no etcdctl needed).
async fn client_snapshot(endpoint: &str) -> Vec<u8> {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect");
    let mut stream = client.snapshot().await.expect("snapshot");
    let mut file = Vec::new();
    while let Some(message) = stream.message().await.expect("snapshot message") {
        file.extend_from_slice(message.blob());
    }
    file
}

#[tokio::test]
async fn etcdctl_snapshot_save_restore_gives_identical_hashkv() {
    if !require_tool("etcdctl") {
        return;
    }
    let source = MetastoreServer::start(&["--shards", "4"]);
    let mut client = GrpcClient::connect(source.addr()).await.expect("connect");
    let lease = write_history(&mut client).await;
    let expected = hash_kv(&mut client, 0).await;
    let revision = expected.header.as_ref().expect("header").revision;
    let expected_reads = range_all(&mut client, 0).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("backup.db");
    let (saved, output) = etcdctl_snapshot_save(&source.endpoint(), &file);
    assert!(saved, "etcdctl snapshot save failed: {output}");
    assert!(output.contains("Snapshot saved"), "{output}");
    let size = std::fs::metadata(&file).expect("saved file").len();
    assert_eq!(
        size % 512,
        32,
        "etcd's layout: data in 512-byte blocks + SHA-256"
    );

    for shards in [None, Some("3")] {
        let target = directory
            .path()
            .join(format!("restored-{}", shards.unwrap_or("same")));
        let (code, output) = restore(&file, &target, shards);
        assert_eq!(code, Some(0), "restore failed: {output}");
        assert!(
            output.contains(&format!("at revision {revision}")),
            "{output}"
        );
        let restored = MetastoreServer::start_in(&target, &["--shards", shards.unwrap_or("4")]);
        let mut restored_client = GrpcClient::connect(restored.addr()).await.expect("connect");
        let actual = hash_kv(&mut restored_client, revision).await;
        assert_eq!(
            actual.hash, expected.hash,
            "HashKV at {revision} ({shards:?} shards)"
        );
        assert_eq!(actual.compact_revision, expected.compact_revision);
        assert_eq!(actual.header.expect("header").revision, revision);
        let reads = range_all(&mut restored_client, 0).await;
        assert_eq!(
            reads.kvs, expected_reads.kvs,
            "same keys, values, revisions, versions"
        );
        assert_eq!(reads.header.expect("header").revision, revision);
        // History above the compaction point is there too.
        let older = expected.compact_revision + 1;
        assert_eq!(
            range_all(&mut restored_client, older).await.kvs,
            range_all(&mut client, older).await.kvs
        );
        let lease_state: pb::LeaseTimeToLiveResponse = restored_client
            .unary(
                TIME_TO_LIVE,
                &pb::LeaseTimeToLiveRequest {
                    id: lease,
                    keys: true,
                },
            )
            .await
            .expect("lease");
        assert_eq!(lease_state.granted_ttl, 600);
        assert_eq!(lease_state.keys.len(), 2);
        assert_eq!(
            put(&mut restored_client, "after/restore", "z", 0).await,
            revision + 1,
            "the revision clock continues from the snapshot's revision"
        );
    }
}

#[tokio::test]
async fn corrupt_truncated_and_misdirected_restores_are_refused() {
    let source = MetastoreServer::start(&[]);
    let mut client = GrpcClient::connect(source.addr()).await.expect("connect");
    put(&mut client, "a", "1", 0).await;
    let image = client_snapshot(&source.endpoint()).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "flipped",
            {
                let mut flipped = image.clone();
                flipped[100] ^= 0x10;
                flipped
            },
            "SHA-256 mismatch",
        ),
        (
            "truncated",
            image[..image.len() - 100].to_vec(),
            "truncated",
        ),
        ("garbage", vec![7u8; 4096], "not a MetaStore snapshot"),
    ];
    for (name, bytes, expected) in cases {
        let file = directory.path().join(name);
        std::fs::write(&file, bytes).expect("write");
        let target = directory.path().join(format!("{name}-restored"));
        let (code, output) = restore(&file, &target, None);
        assert_eq!(code, Some(2), "{name}: {output}");
        assert!(output.contains(expected), "{name}: {output}");
        assert!(
            !target.exists(),
            "{name}: nothing is created for a bad file"
        );
    }
    let good = directory.path().join("good");
    std::fs::write(&good, &image).expect("write");
    let occupied = directory.path().join("occupied");
    std::fs::create_dir_all(&occupied).expect("mkdir");
    std::fs::write(occupied.join("something"), b"x").expect("write");
    let (code, output) = restore(&good, &occupied, None);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("not empty"), "{output}");
}

#[tokio::test]
async fn hashkv_is_equal_across_shard_counts_and_refuses_like_etcd() {
    let one = MetastoreServer::start(&["--shards", "1"]);
    let five = MetastoreServer::start(&["--shards", "5"]);
    let mut clients = [
        GrpcClient::connect(one.addr()).await.expect("connect"),
        GrpcClient::connect(five.addr()).await.expect("connect"),
    ];
    for client in &mut clients {
        write_history(client).await;
    }
    let [first, second] = &mut clients;
    let current = hash_kv(first, 0).await;
    let revision = current.header.as_ref().expect("header").revision;
    for at in [0, current.compact_revision + 1, revision - 3, revision] {
        let (left, right) = (hash_kv(first, at).await, hash_kv(second, at).await);
        assert_eq!(left.hash, right.hash, "HashKV at {at}");
        assert_eq!(left.compact_revision, right.compact_revision);
    }
    let stored: [pb::HashResponse; 2] = [
        first.unary(HASH, &pb::HashRequest {}).await.expect("hash"),
        second.unary(HASH, &pb::HashRequest {}).await.expect("hash"),
    ];
    assert_eq!(stored[0].hash, stored[1].hash);
    let compacted = first
        .unary::<_, pb::HashKvResponse>(
            HASH_KV,
            &pb::HashKvRequest {
                revision: current.compact_revision,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        compacted,
        (
            11,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let future = first
        .unary::<_, pb::HashKvResponse>(
            HASH_KV,
            &pb::HashKvRequest {
                revision: revision + 10,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        future,
        (
            11,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
}

#[tokio::test]
async fn status_and_move_leader_for_a_single_member() {
    let server = MetastoreServer::start(&[]);
    let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
    let before: pb::StatusResponse = client
        .unary(STATUS, &pb::StatusRequest {})
        .await
        .expect("status");
    put(&mut client, "k", "v", 0).await;
    let after: pb::StatusResponse = client
        .unary(STATUS, &pb::StatusRequest {})
        .await
        .expect("status");
    assert_eq!(after.version, "3.4.0");
    assert!(after.db_size > 0, "WAL segments are on disk");
    assert!(after.db_size_in_use >= 2);
    assert!(
        after.raft_index > before.raft_index,
        "a write advances the Raft index"
    );
    assert_eq!(after.raft_applied_index, after.raft_index);
    let member = after.header.as_ref().expect("header").member_id;
    assert_eq!(after.leader, member);
    let _: pb::MoveLeaderResponse = client
        .unary(MOVE_LEADER, &pb::MoveLeaderRequest { target_id: member })
        .await
        .expect("moving to itself is a no-op");
    let refused = client
        .unary::<_, pb::MoveLeaderResponse>(
            MOVE_LEADER,
            &pb::MoveLeaderRequest {
                target_id: member + 1,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused, (9, "etcdserver: bad leader transferee".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defragment_during_load_keeps_serving_and_reclaims_the_log() {
    let server = MetastoreServer::start(&[
        "--shards",
        "2",
        "--wal-segment-bytes",
        "4194304",
        "--snapshot-count",
        "1000000",
    ]);
    let address = server.addr();
    let mut client = GrpcClient::connect(address).await.expect("connect");
    // Every sequential put is a WAL frame of at least 4 KiB: this rotates
    // each shard's WAL past its first 4 MiB segment.
    let value = "x".repeat(512);
    for index in 0..3000 {
        put(&mut client, &format!("fill/{}", index % 200), &value, 0).await;
    }
    let before: pb::StatusResponse = client
        .unary(STATUS, &pb::StatusRequest {})
        .await
        .expect("status");

    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let slowest_micros = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (stop, completed, slowest_micros) =
            (stop.clone(), completed.clone(), slowest_micros.clone());
        writers.push(tokio::spawn(async move {
            let mut client = GrpcClient::connect(address).await.expect("connect");
            let mut index = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                put(
                    &mut client,
                    &format!("load/{writer}/{}", index % 100),
                    "v",
                    0,
                )
                .await;
                let micros = started.elapsed().as_micros() as u64;
                slowest_micros.fetch_max(micros, Ordering::Relaxed);
                completed.fetch_add(1, Ordering::Relaxed);
                index += 1;
            }
        }));
    }
    let window = Duration::from_secs(1);
    // Baseline: the same load without a defragment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline_start = completed.load(Ordering::Relaxed);
    slowest_micros.store(0, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let baseline = completed.load(Ordering::Relaxed) - baseline_start;
    let baseline_slowest = slowest_micros.swap(0, Ordering::Relaxed);
    // Defragments back to back for the same window.
    let defrag_start = completed.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut defragments = Vec::new();
    while started.elapsed() < window {
        let one = Instant::now();
        let _: pb::DefragmentResponse = client
            .unary(DEFRAGMENT, &pb::DefragmentRequest {})
            .await
            .expect("defragment");
        defragments.push(one.elapsed());
    }
    let during = completed.load(Ordering::Relaxed) - defrag_start;
    let slowest_during = slowest_micros.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let after: pb::StatusResponse = client
        .unary(STATUS, &pb::StatusRequest {})
        .await
        .expect("status");
    eprintln!(
        "baseline: {baseline} puts in {window:?}, slowest {baseline_slowest} µs; \
         with {} back-to-back defragments (first {:?}, slowest {:?}): {during} puts in {elapsed:?}, \
         slowest {slowest_during} µs; db_size {} -> {} bytes",
        defragments.len(),
        defragments[0],
        defragments.iter().max().expect("one"),
        before.db_size,
        after.db_size
    );
    assert!(
        during > 0,
        "requests kept completing during the defragments"
    );
    assert!(
        after.db_size < before.db_size,
        "the released WAL segments are gone"
    );
}
