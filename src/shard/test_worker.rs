//! A shard worker over the storage-device twin, for the worker's tests.

use std::rc::Rc;
use std::sync::Arc;

use super::disk_space::{DiskSpaceGuard, FullDiskReporter};
use super::frontier::DurableFrontier;
use super::log_storage::ShardLogStorage;
use super::raft_group::{GroupConfig, LogStats, RaftGroup, log_mirror};
use super::recovery::read_shard_log;
use super::{ShardCommand, ShardWorker, SnapshotSchedule, WriteOutcome};
use crate::lease::table::LeaseTable;
use crate::metrics::CoreMetrics;
use crate::store::error::KvError;
use crate::store::key_space::KeySpace;
use crate::store::revision::RevisionClock;
use crate::store::shard_map::ShardMap;
use crate::store::write::WriteRequest;
use crate::wal::{MemoryDevice, WalOptions};

pub const OPTIONS: WalOptions = WalOptions {
    segment_bytes: 1 << 20,
};

/// Shard 0 of a one-shard node, not yet running.
pub struct TestShard {
    pub worker: ShardWorker<MemoryDevice>,
    pub space: Arc<KeySpace>,
    pub sender: flume::Sender<ShardCommand>,
    pub commands: flume::Receiver<ShardCommand>,
}

/// A worker for shard 0 on `device` (empty, or holding a log it resumes;
/// nothing is replayed), snapshots in `snapshots`.
pub async fn new_worker(
    device: &MemoryDevice,
    snapshots: &std::path::Path,
    reporter: Option<FullDiskReporter>,
) -> TestShard {
    new_member_worker(device, snapshots, reporter, &GroupConfig::single_voter()).await
}

/// The same for a member of a group described by `config`.
pub async fn new_member_worker(
    device: &MemoryDevice,
    snapshots: &std::path::Path,
    reporter: Option<FullDiskReporter>,
    config: &GroupConfig,
) -> TestShard {
    let log = read_shard_log(0, device.clone(), 0).await.expect("read");
    let wal = log.reading.resume(OPTIONS).await.expect("resume");
    let frontier = Arc::new(DurableFrontier::new([(wal.log_id(), 0)]));
    let storage = ShardLogStorage::new(
        log_mirror(
            None,
            &log.entries,
            log.hard_state,
            config,
            config.conf_state(),
        )
        .expect("mirror"),
        snapshots.to_owned(),
    );
    let group = RaftGroup::start(
        storage,
        wal,
        Default::default(),
        (0, frontier),
        Arc::new(LogStats::default()),
        config,
    )
    .await
    .expect("start");
    // A member of a real group keeps a cluster member's clock: followers
    // learn revisions only from what they apply.
    let clock = if config.voters.len() > 1 {
        RevisionClock::for_cluster(0, 1, 1, 0)
    } else {
        RevisionClock::new(1, 1)
    };
    let space = KeySpace::new(
        ShardMap::new(1, 1),
        clock.clone(),
        LeaseTable::for_member(7),
    );
    let (sender, commands) = flume::bounded(64);
    let schedule = SnapshotSchedule::new(u64::MAX, snapshots.to_owned(), sender.clone());
    let worker = ShardWorker::new(
        0,
        space.clone(),
        clock.slot(0),
        group,
        schedule,
        Rc::new(CoreMetrics::new(false)),
        DiskSpaceGuard::new(0, reporter, OPTIONS.segment_bytes),
    );
    TestShard {
        worker,
        space,
        sender,
        commands,
    }
}

/// The Raft group of `shard` over `wal`, a log with nothing in it yet.
pub async fn start_empty_group(
    wal: crate::wal::Wal<MemoryDevice>,
    shard: usize,
    frontier: &Arc<DurableFrontier>,
    snapshots: &std::path::Path,
    config: &GroupConfig,
    configurations: Option<&Arc<crate::membership::Configurations>>,
) -> RaftGroup<MemoryDevice> {
    let mut storage = ShardLogStorage::new(
        log_mirror(None, &[], None, config, config.conf_state()).expect("mirror"),
        snapshots.to_owned(),
    );
    if let Some(configurations) = configurations {
        storage = storage.with_configurations(configurations.clone(), shard);
    }
    RaftGroup::start(
        storage,
        wal,
        Default::default(),
        (shard, frontier.clone()),
        Arc::new(LogStats::default()),
        config,
    )
    .await
    .expect("start")
}

/// Where a write's answer arrives.
pub type Answer = futures_channel::oneshot::Receiver<Result<WriteOutcome, KvError>>;

/// A write command for a worker's channel, and where its answer arrives.
pub fn write_command(request: WriteRequest) -> (ShardCommand, Answer) {
    let (reply, answer) = futures_channel::oneshot::channel();
    let command = ShardCommand::Write {
        request,
        reply,
        queued_at: std::time::Instant::now(),
    };
    (command, answer)
}
