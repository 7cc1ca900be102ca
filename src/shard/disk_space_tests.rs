//! A shard worker on the storage-device twin whose disk fills up: it keeps
//! serving what it can, refuses what needs space with etcd's NOSPACE,
//! raises the alarm, takes writes again once space returns, and loses
//! nothing it acknowledged.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use super::disk_space::{FullDiskReporter, RETRY_INTERVAL};
use super::recovery::read_shard_log;
use super::{ShardCommand, test_worker};
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
use crate::service::alarm::AlarmSet;
use crate::store::error::KvError;
use crate::store::write::WriteRequest;
use crate::test_support::run_on_monoio as run;
use crate::wal::MemoryDevice;

/// One shard on a fresh `device`, its worker running; returns the way in.
async fn start_shard(
    device: &MemoryDevice,
    alarms: &AlarmSet,
    snapshots: &std::path::Path,
) -> flume::Sender<ShardCommand> {
    let reporter = FullDiskReporter {
        alarms: alarms.clone(),
        member_id: 7,
    };
    let shard = test_worker::new_worker(device, snapshots, Some(reporter)).await;
    let sender = shard.sender.clone();
    monoio::spawn(shard.worker.run(shard.commands));
    // The worker prepares the WAL's next segment before its first turn.
    while !device
        .file_names()
        .iter()
        .any(|name| name.ends_with(".spare"))
    {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    sender
}

async fn write(shard: &flume::Sender<ShardCommand>, request: WriteRequest) -> Result<i64, KvError> {
    let (reply, outcome) = oneshot::channel();
    shard
        .send_async(ShardCommand::Write {
            request,
            reply,
            queued_at: Instant::now(),
        })
        .await
        .expect("the worker runs");
    outcome
        .await
        .expect("answered")
        .map(|outcome| outcome.revision.unwrap_or(0))
}

fn put(key: String, value_len: usize) -> WriteRequest {
    WriteRequest::Put(PutRequest {
        key: Bytes::from(key),
        value: Bytes::from(vec![b'v'; value_len]),
        ..Default::default()
    })
}

async fn grant(shard: &flume::Sender<ShardCommand>, id: i64) -> Result<(), KvError> {
    let (reply, outcome) = oneshot::channel();
    shard
        .send_async(ShardCommand::GrantLease {
            id,
            ttl_seconds: 60,
            reply,
        })
        .await
        .expect("the worker runs");
    outcome.await.expect("answered")
}

#[test]
fn a_full_disk_refuses_what_needs_space_and_loses_nothing_acknowledged() {
    let directory = tempfile::tempdir().expect("temp dir");
    let alarms = AlarmSet::open(directory.path()).expect("alarms");
    let device = MemoryDevice::new();
    let acknowledged: BTreeSet<Bytes> = run(async {
        let shard = start_shard(&device, &alarms, directory.path()).await;
        let mut acknowledged = BTreeSet::new();
        // Room for the active segment and its spare, nothing more: the
        // rotation takes the spare, and the next one cannot be made.
        device.set_capacity(Some(device.used_bytes() + 64 * 1024));
        let mut refused_at = None;
        for index in 0..64 {
            let key = format!("key-{index:03}");
            match write(&shard, put(key.clone(), 64 * 1024)).await {
                Ok(_) => {
                    acknowledged.insert(Bytes::from(key));
                }
                Err(KvError::NoSpace) => {
                    refused_at = Some(index);
                    break;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        let refused_at = refused_at.expect("the disk filled up");
        assert!(
            refused_at >= 12,
            "a whole segment was written first ({refused_at})"
        );
        for _ in 0..200 {
            if alarms.no_space_raised() {
                break;
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        let reason = alarms
            .full_disk_reason()
            .expect("NOSPACE raised for the full disk");
        assert!(reason.contains("shard 0"), "{reason}");
        // Writes that add data are refused; deletions still go through.
        assert!(matches!(
            write(&shard, put("more".into(), 10)).await,
            Err(KvError::NoSpace)
        ));
        assert!(matches!(grant(&shard, 42).await, Err(KvError::NoSpace)));
        let deleted = write(
            &shard,
            WriteRequest::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"key-000"),
                ..Default::default()
            }),
        )
        .await;
        assert!(
            matches!(deleted, Ok(revision) if revision > 0),
            "{deleted:?}"
        );
        acknowledged.remove(&Bytes::from_static(b"key-000"));
        // Space comes back: within a retry interval, writes are taken again.
        device.set_capacity(None);
        monoio::time::sleep(RETRY_INTERVAL).await;
        write(&shard, put("after".into(), 10))
            .await
            .expect("space is back");
        acknowledged.insert(Bytes::from_static(b"after"));
        grant(&shard, 43).await.expect("leases too");
        acknowledged
    });
    // A crash now: everything acknowledged is in the log.
    device.crash();
    let logged = run(async {
        let log = read_shard_log(0, device.clone(), 0).await.expect("read");
        let mut live = BTreeSet::new();
        for command in &log.commands {
            for change in &command.changes {
                if change.version == 0 {
                    live.remove(&change.key);
                } else {
                    live.insert(change.key.clone());
                }
            }
        }
        live
    });
    assert_eq!(logged, acknowledged);
}
