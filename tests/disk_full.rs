//! A real small filesystem filling up under the real binary: a loop-mounted
//! ext4 image holds the data directory. When the WAL cannot allocate its
//! next segment, writes fail with etcd's NOSPACE error while reads,
//! watches, deletions and lease keep-alives go on; the alarm is listed and
//! `/readyz` says why; a restart on the full disk comes up read-only; once
//! space is freed and the alarm disarmed, writes resume with nothing lost.
//!
//! Needs root, mkfs.ext4 and a loop device; without root or the tools it
//! prints SKIPPED (under CI, which runs as root, it fails instead), and
//! where the kernel refuses the loop mount it prints SKIPPED.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{GrpcClient, MetastoreServer, etcdctl_command, http_request};
use etcd_client::{Client, EventType, WatchOptions};
use metastore::proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};

const IMAGE_MIB: u64 = 160;
/// Small segments so a handful of MiB fill one.
const SEGMENT_BYTES: &str = "4194304";
const VALUE_BYTES: usize = 256 * 1024;
/// gRPC RESOURCE_EXHAUSTED, etcd's code for NOSPACE.
const RESOURCE_EXHAUSTED: i32 = 8;
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// An ext4 image mounted on a temp directory, unmounted on drop.
struct LoopMount {
    _directory: tempfile::TempDir,
    mount_point: PathBuf,
}

impl LoopMount {
    fn new() -> Option<LoopMount> {
        let root = rustix::process::geteuid().is_root();
        let tools = ["mkfs.ext4", "mount", "umount"]
            .iter()
            .all(|tool| common::on_path(tool));
        if !root || !tools {
            if std::env::var_os("CI").is_some() {
                panic!("CI must run the disk-full test as root with mkfs.ext4 and mount");
            }
            eprintln!("SKIPPED: the disk-full test needs root, mkfs.ext4 and mount (loop device)");
            return None;
        }
        let directory = tempfile::tempdir().expect("temp dir");
        let image = directory.path().join("disk.img");
        let mount_point = directory.path().join("mnt");
        std::fs::create_dir(&mount_point).expect("mount point");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(IMAGE_MIB << 20).expect("size the image");
        let made = run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)).and_then(|()| {
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount_point))
        });
        if let Err(error) = made {
            // Root in a sandbox without loop devices: nothing to test on.
            eprintln!("SKIPPED: cannot mount a loop-device filesystem here: {error}");
            return None;
        }
        Some(LoopMount {
            _directory: directory,
            mount_point,
        })
    }

    fn free_bytes(&self) -> u64 {
        let stats = rustix::fs::statvfs(&self.mount_point).expect("statvfs");
        stats.f_bavail * stats.f_frsize
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|error| format!("{command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Takes all but `leave` bytes of the filesystem's free space.
fn fill(mount: &LoopMount, leave: u64) -> PathBuf {
    let filler = mount.mount_point.join("filler");
    let take = mount.free_bytes().saturating_sub(leave);
    let file = std::fs::File::create(&filler).expect("filler");
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, take).expect("fallocate");
    file.sync_all().expect("sync");
    filler
}

async fn put(client: &mut GrpcClient, key: &str) -> Result<i64, (i32, String)> {
    let response: PutResponse = client
        .unary(
            "/etcdserverpb.KV/Put",
            &PutRequest {
                key: Bytes::from(key.to_owned()),
                value: Bytes::from(vec![b'x'; VALUE_BYTES]),
                ..Default::default()
            },
        )
        .await?;
    Ok(response.header.expect("header").revision)
}

async fn count(client: &mut GrpcClient, serializable: bool) -> i64 {
    let response: RangeResponse = client
        .unary(
            "/etcdserverpb.KV/Range",
            &RangeRequest {
                key: Bytes::from_static(b"fill-"),
                range_end: Bytes::from_static(b"fill."),
                count_only: true,
                serializable,
                ..Default::default()
            },
        )
        .await
        .expect("reads are served on a full disk");
    response.count
}

fn etcdctl(server: &MetastoreServer, args: &[&str]) -> String {
    let output = etcdctl_command(&server.endpoint(), args)
        .output()
        .expect("etcdctl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Puts until the disk-full refusal; returns how many were acknowledged.
async fn put_until_full(client: &mut GrpcClient) -> usize {
    for index in 0..2_000 {
        match put(client, &format!("fill-{index:05}")).await {
            Ok(_) => {}
            Err((code, message)) => {
                assert_eq!((code, message.as_str()), (RESOURCE_EXHAUSTED, NO_SPACE));
                return index;
            }
        }
    }
    panic!("the disk never filled up");
}

fn assert_read_only(server: &MetastoreServer) {
    let alarms = etcdctl(server, &["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    let (status, body) = http_request(&server.metrics_url(), "GET", "/readyz?verbose");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the disk is full") && body.contains("cannot allocate"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_serving_and_resumes_after_disarm() {
    let Some(mount) = LoopMount::new() else {
        return;
    };
    if !common::require_tool("etcdctl") {
        return;
    }
    let data_dir = mount.mount_point.join("data");
    let flags = ["--wal-segment-bytes", SEGMENT_BYTES];
    let mut server = MetastoreServer::start_in(&data_dir, &flags);
    let mut etcd = Client::connect([server.endpoint()], None)
        .await
        .expect("connect");
    let lease = etcd.lease_grant(60, None).await.expect("grant").id();
    etcd.put("watched", "small", None).await.expect("put");
    let mut events = etcd.watch("watched", None).await.expect("watch");
    // A watch on everything the fill writes, not read until the disk is
    // full: its backlog must come in responses the client accepts (the
    // Rust client refuses messages over 4 MiB; the fill is ~256 KiB a put).
    let mut backlog = etcd
        .watch("fill-", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");

    let filler = fill(&mount, 20 << 20);
    let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
    let acknowledged = put_until_full(&mut client).await;
    assert!(acknowledged > 0, "some puts fit before the disk was full");
    assert_eq!(count(&mut client, true).await, acknowledged as i64);
    assert_eq!(count(&mut client, false).await, acknowledged as i64);
    assert_read_only(&server);
    let mut delivered = 0;
    while delivered < acknowledged {
        let response = backlog.message().await.expect("watch").expect("events");
        delivered += response.events().len();
    }
    assert_eq!(
        delivered, acknowledged,
        "every acknowledged put is watched once"
    );
    // Keep-alives, watches and deletions go on.
    let (mut keeper, mut keep_alives) = etcd.lease_keep_alive(lease).await.expect("keep-alive");
    keeper.keep_alive().await.expect("send keep-alive");
    let renewed = keep_alives
        .message()
        .await
        .expect("answer")
        .expect("a response");
    assert!(renewed.ttl() > 0);
    etcd.delete("watched", None)
        .await
        .expect("deletions are allowed");
    let deleted = loop {
        let response = events.message().await.expect("watch").expect("events");
        if let Some(event) = response
            .events()
            .iter()
            .find(|event| event.event_type() == EventType::Delete)
        {
            break event.kv().expect("kv").key().to_vec();
        }
    };
    assert_eq!(deleted, b"watched");

    // A restart on the full disk comes up read-only, alarm raised.
    server.kill_hard();
    drop(server);
    let server = MetastoreServer::start_in(&data_dir, &flags);
    let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
    assert_eq!(count(&mut client, false).await, acknowledged as i64);
    assert_eq!(
        put(&mut client, "refused").await,
        Err((RESOURCE_EXHAUSTED, NO_SPACE.to_owned()))
    );
    assert_read_only(&server);

    // Space comes back; the operator disarms; writes resume.
    std::fs::remove_file(&filler).expect("free space");
    let disarmed = etcdctl(&server, &["alarm", "disarm"]);
    assert!(disarmed.contains("NOSPACE"), "{disarmed}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    put(&mut client, "fill-after").await.expect("writes resume");
    assert_eq!(count(&mut client, false).await, acknowledged as i64 + 1);
    let (status, body) = http_request(&server.metrics_url(), "GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    drop(server);
    let server = MetastoreServer::start_in(&data_dir, &flags);
    let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
    assert_eq!(
        count(&mut client, false).await,
        acknowledged as i64 + 1,
        "nothing acknowledged was lost"
    );
    assert!(Path::new(&data_dir).exists());
}
