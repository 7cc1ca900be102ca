//! A shard worker on the storage-device twin whose disk fills up: it keeps
//! serving what it can, refuses what needs space with etcd's NOSPACE,
//! raises the alarm, takes writes again once space returns, and loses
//! nothing it acknowledged.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use super::disk_space::{DiskSpaceGuard, FullDiskReporter, RETRY_INTERVAL};
use super::frontier::DurableFrontier;
use super::log_storage::ShardLogStorage;
use super::raft_group::{LogStats, RaftGroup, log_mirror};
use super::recovery::read_shard_log;
use super::{ShardCommand, ShardWorker, SnapshotSchedule};
use crate::lease::table::LeaseTable;
use crate::metrics::CoreMetrics;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
use crate::service::alarm::AlarmSet;
use crate::store::error::KvError;
use crate::store::key_space::KeySpace;
use crate::store::revision::RevisionClock;
use crate::store::shard_map::ShardMap;
use crate::store::write::WriteRequest;
use crate::test_support::run_on_monoio as run;
use crate::wal::{MemoryDevice, WalOptions};

const OPTIONS: WalOptions = WalOptions {
    segment_bytes: 1 << 20,
};

/// One shard on a fresh `device`, its worker running; returns the way in.
async fn start_shard(
    device: &MemoryDevice,
    alarms: &AlarmSet,
    snapshots: &std::path::Path,
) -> flume::Sender<ShardCommand> {
    let log = read_shard_log(0, device.clone(), 0).await.expect("read");
    let wal = log.reading.resume(OPTIONS).await.expect("resume");
    let frontier = Arc::new(DurableFrontier::new([(wal.log_id(), 0)]));
    let storage = ShardLogStorage::new(
        log_mirror(None, &log.entries, log.hard_state).expect("mirror"),
        snapshots.to_owned(),
    );
    let group = RaftGroup::start(
        storage,
        wal,
        Default::default(),
        (0, frontier),
        Arc::new(LogStats::default()),
    )
    .await
    .expect("start");
    let clock = RevisionClock::new(1, 1);
    let space = KeySpace::new(
        ShardMap::new(1, 1),
        clock.clone(),
        LeaseTable::for_member(7),
    );
    let (sender, commands) = flume::bounded(64);
    let schedule = SnapshotSchedule::new(u64::MAX, snapshots.to_owned(), sender.clone());
    let reporter = FullDiskReporter {
        alarms: alarms.clone(),
        member_id: 7,
    };
    let worker = ShardWorker::new(
        0,
        space,
        clock.slot(0),
        group,
        schedule,
        Rc::new(CoreMetrics::new(false)),
        DiskSpaceGuard::new(0, Some(reporter), OPTIONS.segment_bytes),
    );
    monoio::spawn(worker.run(commands));
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
