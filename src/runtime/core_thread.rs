//! One core's life: recover the shards it owns, wait for the node-wide
//! recovery plan, replay, start the shard workers, then accept connections.

use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use super::accept::{Admission, accept_loop};
use super::control::CoreControl;
use crate::config::ConnectionLimits;
use crate::data_dir::ShardDirectories;
use crate::grpc::rate_limit::RateLimiter;
use crate::grpc::server::{ServerLimits, Serving};
use crate::metrics::CoreMetrics;
use crate::service::{EtcdServices, MemberIdentity, ServiceContext};
use crate::shard::SnapshotSchedule;
use crate::shard::apply::apply_command;
use crate::shard::conf_change;
use crate::shard::disk_space::{DiskSpaceGuard, FullDiskReporter};
use crate::shard::frontier::DurableFrontier;
use crate::shard::log_entry::{self, ShardCommandRecord};
use crate::shard::log_storage::ShardLogStorage;
use crate::shard::raft_group::{GroupConfig, LogStats, RaftGroup, log_mirror};
use crate::shard::recovery::{RecoveredLog, RecoveryPlan, ShardInventory, ShardOnDisk, read_shard};
use crate::shard::snapshotting::LoadedShardSnapshot;
use crate::shard::write_path::WritePath;
use crate::shard::{ShardCommand, ShardWorker};
use crate::store::key_space::KeySpace;
use crate::store::shard_map::ShardId;
use crate::wal::{DirectDevice, WalOptions};

/// Why a core stops when the main thread gave up on startup.
const STARTUP_ABANDONED: &str = "startup was abandoned";

/// What a core tells the main thread during startup.
pub enum CoreReport {
    /// The core read its shards' logs.
    Recovered(Vec<ShardInventory>),
    /// The core replayed, logged the plan, and serves.
    Serving,
    Failed(String),
}

/// What the main thread sends every core once all logs are read.
pub struct StartupPlan {
    pub space: Arc<KeySpace>,
    pub plan: RecoveryPlan,
    /// Every shard's durability, which each shard's frames record.
    pub frontier: Arc<DurableFrontier>,
}

/// Everything one core thread starts with.
pub struct CoreSetup {
    pub core: usize,
    pub pin_to: Option<core_affinity::CoreId>,
    pub senders: Arc<[flume::Sender<ShardCommand>]>,
    pub owned_shards: Vec<(ShardId, flume::Receiver<ShardCommand>)>,
    /// Each owned shard's directories.
    pub shard_directories: Vec<ShardDirectories>,
    pub wal_options: WalOptions,
    /// Entries logged between snapshots, per shard.
    pub snapshot_count: u64,
    pub watch_progress_interval: std::time::Duration,
    /// The node's alarms, shared by every core.
    pub alarms: crate::service::alarm::AlarmSet,
    pub quota_bytes: Option<u64>,
    /// Run by core 0; `None`: off.
    pub auto_compaction: Option<crate::config::AutoCompaction>,
    pub log_stats: Vec<Arc<LogStats>>,
    /// Every shard's log counters, indexed by shard (for `Status`).
    pub all_log_stats: Arc<[Arc<LogStats>]>,
    /// The data directory (for `Status`'s size on disk).
    pub data_dir: PathBuf,
    pub listeners: Vec<StdTcpListener>,
    pub identity: MemberIdentity,
    pub limits: ServerLimits,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub reports: Sender<CoreReport>,
    pub plans: Receiver<StartupPlan>,
    /// Passed by every core once its shards are replayed. Any core reads
    /// any shard, so none may serve before all are replayed.
    pub replayed: Arc<std::sync::Barrier>,
    /// Requests from the monitoring thread (metrics, health probes).
    pub control: flume::Receiver<super::control::CoreRequest>,
    /// `false` with `--metrics off`.
    pub metrics_enabled: bool,
    pub connection_limits: ConnectionLimits,
    /// Shared by every core: the limits are node-wide.
    pub rate_limiter: Arc<RateLimiter>,
    /// Client connections open on every core, against `--max-connections`.
    pub open_connections: Arc<AtomicUsize>,
    /// Node-wide threads for request work too heavy for an executor.
    pub helpers: Arc<crate::service::helper_pool::HelperPool>,
    /// A cluster member's peers, role and timing; `None` alone.
    pub cluster: Option<super::cluster::CoreCluster>,
    /// A cluster member's peer endpoints: given to the first core only.
    pub peer_service: Option<super::cluster::PeerService>,
}

pub fn run_core(setup: CoreSetup) {
    let core = setup.core;
    let reports = setup.reports.clone();
    // A core that dies takes its shards with it; the process must not keep
    // serving half a key space.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_core_inner(setup)));
    let message = match outcome {
        Ok(Ok(())) => "core stopped".to_owned(),
        Ok(Err(error)) => error,
        Err(_) => "core panicked".to_owned(),
    };
    if message == STARTUP_ABANDONED {
        // The main thread refused to start and reports why itself.
        tracing::debug!(core, "startup was abandoned");
    } else {
        tracing::error!(core, %message, "core failed");
    }
    // During startup the main thread reports the failure and exits.
    let _ = reports.send(CoreReport::Failed(format!("core {core}: {message}")));
    std::thread::sleep(Duration::from_millis(200));
    std::process::exit(70);
}

fn run_core_inner(setup: CoreSetup) -> Result<(), String> {
    if let Some(core_id) = setup.pin_to
        && !core_affinity::set_for_current(core_id)
    {
        tracing::warn!(core = setup.core, "could not pin thread to its core");
    }
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|error| format!("cannot build the executor: {error}"))?;
    runtime.block_on(serve_core(setup))
}

/// A shard as read back from disk, before the node-wide plan.
struct RecoveredShard {
    shard: ShardId,
    commands: flume::Receiver<ShardCommand>,
    snapshot: Option<LoadedShardSnapshot>,
    log: RecoveredLog<DirectDevice>,
}

/// Reads a shard's snapshot and log, changing nothing on disk.
async fn recover_shard(
    shard: ShardId,
    commands: flume::Receiver<ShardCommand>,
    directories: &ShardDirectories,
    committed_only: bool,
) -> Result<(RecoveredShard, ShardInventory), String> {
    let on_disk = read_shard(shard, directories).await?;
    let ShardOnDisk {
        snapshot,
        log,
        inventory,
    } = if committed_only {
        on_disk.committed_only()
    } else {
        on_disk
    };
    tracing::info!(
        shard,
        snapshot_revision = inventory.snapshot_revision,
        entries_after_snapshot = log.entries.len(),
        revisions = inventory.revisions.len(),
        voids = ?inventory.voids,
        readable_through = inventory.log.readable_through,
        "read shard state"
    );
    Ok((
        RecoveredShard {
            shard,
            commands,
            snapshot,
            log,
        },
        inventory,
    ))
}

async fn serve_core(setup: CoreSetup) -> Result<(), String> {
    let CoreSetup {
        core,
        senders,
        owned_shards,
        shard_directories,
        wal_options,
        snapshot_count,
        watch_progress_interval,
        alarms,
        quota_bytes,
        auto_compaction,
        log_stats,
        all_log_stats,
        data_dir,
        listeners,
        identity,
        limits,
        max_txn_ops,
        max_request_bytes,
        reports,
        plans,
        replayed,
        control,
        metrics_enabled,
        connection_limits,
        rate_limiter,
        open_connections,
        helpers,
        cluster,
        peer_service,
        ..
    } = setup;
    let group_config = cluster
        .as_ref()
        .map_or_else(GroupConfig::single_voter, |cluster| {
            cluster.group_config.clone()
        });
    let metrics = Rc::new(CoreMetrics::new(metrics_enabled));
    let mut recovered = Vec::new();
    let mut inventories = Vec::new();
    for ((shard, receiver), directories) in owned_shards.into_iter().zip(&shard_directories) {
        let (shard_state, inventory) =
            recover_shard(shard, receiver, directories, cluster.is_some()).await?;
        recovered.push(shard_state);
        inventories.push(inventory);
    }
    reports
        .send(CoreReport::Recovered(inventories))
        .map_err(|_| STARTUP_ABANDONED.to_owned())?;
    let StartupPlan {
        space,
        plan,
        frontier,
    } = plans.recv().map_err(|_| STARTUP_ABANDONED.to_owned())?;

    let slot = space.clock().slot(core);
    let shard_ids: Vec<ShardId> = recovered.iter().map(|shard| shard.shard).collect();
    for ((recovered, stats), directories) in
        recovered.into_iter().zip(log_stats).zip(shard_directories)
    {
        let RecoveredShard {
            shard,
            commands,
            snapshot,
            log,
        } = recovered;
        let snapshot_position = snapshot
            .as_ref()
            .map(|snapshot| (snapshot.meta.raft_index, snapshot.meta.raft_term));
        replay(
            &space,
            shard,
            snapshot,
            &log.commands,
            &plan,
            cluster.is_none(),
        );
        let snapshot_index = snapshot_position.map_or(0, |(index, _)| index);
        let conf_state = cluster.as_ref().map_or_else(
            || group_config.conf_state(),
            |cluster| {
                cluster
                    .configurations
                    .at(shard, snapshot_index)
                    .conf_state()
            },
        );
        let mirror = log_mirror(
            snapshot_position,
            &log.entries,
            log.hard_state.clone(),
            &group_config,
            conf_state,
        )
        .map_err(|error| format!("shard {shard}: {error}"))?;
        let mut storage = ShardLogStorage::new(mirror, directories.snapshots.clone());
        if let Some(cluster) = &cluster {
            // The configuration after everything committed, which recovery
            // applied: recorded, or recorded now from the log.
            let applied = storage.mirror().rl().hard_state().commit;
            let configuration =
                conf_change::recover(&cluster.configurations, shard, &log.entries, applied)
                    .map_err(|error| format!("shard {shard}: {error}"))?;
            storage
                .mirror()
                .wl()
                .set_conf_state(configuration.conf_state());
            storage = storage.with_configurations(cluster.configurations.clone(), shard);
        }
        let entry_records = log.entry_records();
        let wal = log
            .reading
            .resume(wal_options)
            .await
            .map_err(|error| format!("shard {shard}: {error}"))?;
        let mut group = RaftGroup::start(
            storage,
            wal,
            entry_records,
            (shard, frontier.clone()),
            stats,
            &group_config,
        )
        .await
        .map_err(|error| format!("shard {shard}: {error}"))?;
        // A cluster member proposes nothing before it leads; its lead
        // member decides what is incomplete (`shard::lead_member`).
        if let Some((from, to)) = plan.newly_void().filter(|_| cluster.is_none()) {
            group
                .propose(log_entry::encode(&ShardCommandRecord::void(from, to)))
                .map_err(|error| format!("shard {shard}: {error}"))?;
            let persisted = group.persist().await.map_err(|error| {
                format!("shard {shard}: logging the recovery decision: {error}")
            })?;
            // A void record changes no state; replay reads it from the log.
            if let Some(last) = persisted.committed.last() {
                group.applied_through(last.index);
            }
        }
        let schedule = SnapshotSchedule::new(
            snapshot_count,
            directories.snapshots,
            senders[shard].clone(),
        )
        .after_snapshot(snapshot_position.map_or(0, |(index, _)| index));
        let mut worker = ShardWorker::new(
            shard,
            space.clone(),
            slot.clone(),
            group,
            schedule,
            metrics.clone(),
            DiskSpaceGuard::new(
                shard,
                Some(FullDiskReporter {
                    alarms: alarms.clone(),
                    member_id: identity.member_id,
                }),
                wal_options.segment_bytes,
            ),
        );
        if let Some(cluster) = &cluster {
            worker = worker
                .with_peers(Box::new(cluster.outbox(shard)))
                .with_role(cluster.role.clone());
        }
        worker.keep_spare_ready().await;
        monoio::spawn(worker.run(commands));
    }

    // Blocking is fine here: this core serves nothing yet, and its shard
    // workers have no commands until cores accept connections.
    replayed.wait();

    let owned_senders = shard_ids
        .iter()
        .map(|shard| (*shard, senders[*shard].clone()))
        .collect();
    monoio::spawn(
        CoreControl {
            metrics: metrics.clone(),
            space: space.clone(),
            owned_shards: owned_senders,
        }
        .serve(control),
    );
    if let Some(cluster) = &cluster {
        let owned = shard_ids
            .iter()
            .map(|shard| senders[*shard].clone())
            .collect();
        cluster.spawn_core_tasks(owned, senders.clone(), space.clone(), peer_service)?;
    }
    let write_path = WritePath::new(
        space.clone(),
        senders,
        slot,
        cluster.as_ref().map(|cluster| cluster.forwarder()),
    );
    if let Some(cluster) = &cluster {
        cluster.spawn_forwarded_calls(core, write_path.clone());
    }
    let watch_feed = crate::watch::feed::EventFeed::new(space.clone());
    monoio::spawn(watch_feed.clone().run());
    if core == 0 {
        // One node-wide expiry task; leases are shared by all cores.
        monoio::spawn(crate::service::lease::expire_leases(
            write_path.clone(),
            metrics.clone(),
            cluster.as_ref().map(|cluster| cluster.role.clone()),
        ));
        if let Some(policy) = auto_compaction {
            monoio::spawn(crate::service::auto_compaction::run(
                write_path.clone(),
                policy,
                crate::service::auto_compaction::REVISION_MODE_INTERVAL,
                cluster.as_ref().map(|cluster| cluster.role.clone()),
            ));
        }
    }
    let context = Rc::new(ServiceContext {
        identity,
        write_path,
        max_txn_ops,
        max_request_bytes,
        watch_feed,
        watch_progress_interval,
        metrics: metrics.clone(),
        data_dir,
        log_stats: all_log_stats,
        alarms,
        quota_bytes,
        helpers,
    });
    let services = Rc::new(EtcdServices::new(context));
    let serving = Rc::new(Serving {
        limits,
        metrics: metrics.clone(),
        rate_limiter,
        slow_request_threshold: connection_limits.slow_request_threshold,
        keepalive_interval: connection_limits.keepalive_interval,
        keepalive_timeout: connection_limits.keepalive_timeout,
        max_connection_idle: connection_limits.max_connection_idle,
        stages: connection_limits.stages,
    });
    let admission = Rc::new(Admission {
        open_connections,
        max_connections: connection_limits.max_connections,
        metrics: metrics.clone(),
    });
    let mut accepts = Vec::new();
    for listener in listeners {
        accepts.push(monoio::spawn(accept_loop(
            listener,
            services.clone(),
            serving.clone(),
            admission.clone(),
        )));
    }
    let _ = reports.send(CoreReport::Serving);
    for accept in accepts {
        accept.await?;
    }
    Ok(())
}

/// Rebuilds a shard's memtable and its leases: the snapshot's versions and
/// leases, then the logged changes after it that the plan keeps, then the
/// compaction point. Runs on the owning core before its worker starts.
///
/// A cluster member (`alone` false) applies every committed command: what
/// is incomplete stays above its readable prefix until its lead member
/// completes or voids it (`store::applied_revisions`).
fn replay(
    space: &KeySpace,
    shard: ShardId,
    snapshot: Option<LoadedShardSnapshot>,
    commands: &[ShardCommandRecord],
    plan: &RecoveryPlan,
    alone: bool,
) {
    let memtable = space.memtable(shard);
    // A restarted server gives every lease its full TTL again (as etcd).
    let now = std::time::Instant::now();
    if let Some(snapshot) = snapshot {
        for lease in &snapshot.leases {
            space.leases().insert(lease.id, lease.ttl_seconds, now);
        }
        for (key, revision, version) in snapshot.versions {
            memtable.insert(key, revision, version);
        }
    }
    // Records without a revision (lease grants, revocations of leases
    // without keys) are durable on their own; the others count only if the
    // plan keeps their revision.
    for command in commands
        .iter()
        .filter(|command| !alone || command.revision == 0 || plan.keeps(command.revision))
    {
        apply_command(space, shard, command, now);
    }
    if plan.compacted > 0 {
        memtable.compact(plan.compacted);
    }
}
