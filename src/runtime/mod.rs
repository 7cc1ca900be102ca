//! The thread-per-core runtime: one pinned `monoio` executor per core, each
//! with its own `SO_REUSEPORT` listener per client URL and the workers of
//! the shards it owns.
//!
//! Invariants:
//! - A connection lives on the core that accepted it.
//! - Only a shard's owning core writes its memtable (its `ShardWorker`).
//! - Nothing blocks an executor thread; the main thread only waits for
//!   signals.

mod accept;
mod cluster;
pub mod control;
mod core_thread;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::config::ServerConfig;
use crate::data_dir::{DataDir, DataDirError};
pub use crate::data_dir::{ShardDirectories, shard_directories};
use crate::grpc::rate_limit::RateLimiter;
use crate::grpc::server::ServerLimits;
use crate::service::MemberIdentity;
use crate::service::helper_pool::HelperPool;
use crate::shard::durable_loss;
use crate::shard::frontier::DurableFrontier;
use crate::shard::raft_group::LogStats;
use crate::shard::{SHARD_QUEUE_CAPACITY, ShardCommand};
use crate::store::key_space::KeySpace;
use crate::store::revision::RevisionClock;
use crate::store::shard_map::ShardMap;
use core_thread::{CoreReport, CoreSetup, StartupPlan, run_core};

/// Requests from the monitoring thread a core may have queued; a scrape or
/// probe sends one per core at a time, so a few suffice.
const CONTROL_QUEUE_CAPACITY: usize = 16;

/// etcd's first revision for an empty store.
const INITIAL_REVISION: i64 = 1;
/// Connections the kernel queues per listener before they are accepted.
const LISTEN_BACKLOG: i32 = 1024;
/// One helper thread per this many cores (at least one): heavy request
/// work is rare, and each helper competes with the executors for a CPU.
const HELPER_THREAD_PER_CORES: usize = 4;
/// Heavy jobs waiting for a helper; callers beyond it wait for room.
const HELPER_QUEUE: usize = 64;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot listen on {address} (--listen-client-urls): {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {address} (--listen-peer-urls): {source}")]
    ListenPeers {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start core {core}: {source}")]
    Core { core: usize, source: std::io::Error },
    #[error("cannot create {path}: {source}")]
    ShardDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    /// The data directory's member was removed from its cluster (etcd
    /// refuses to start such a member with these words).
    #[error(
        "member {member_id:x}: the member has been permanently removed from the cluster; start a new member with an empty --data-dir (add it with `etcdctl member add` first)"
    )]
    Removed { member_id: u64 },
    #[error(transparent)]
    Alarms(#[from] crate::service::alarm::AlarmError),
    #[error("recovery failed: {0}")]
    Recovery(String),
    #[error("refusing to start: {0}")]
    DurableDataLost(#[from] crate::shard::durable_loss::LostDurableData),
    #[error("cannot serve metrics (--listen-metrics-urls): {0}")]
    Monitor(std::io::Error),
    #[error("cannot start the helper threads: {0}")]
    Helpers(std::io::Error),
}

/// The open file limit (RLIMIT_NOFILE) before and after [`raise_open_file_limit`].
#[derive(Debug, Clone)]
pub struct OpenFileLimit {
    pub before: u64,
    /// The soft limit now in force: what the connection cap is sized for.
    pub now: u64,
    /// Why it could not be raised, if it could not.
    pub error: Option<String>,
}

/// Raises the soft open file limit to the hard limit, as servers that hold
/// a descriptor per client do (a default soft limit of 1,024 is reached
/// long before memory or CPU run out). Call before anything opens files.
pub fn raise_open_file_limit() -> OpenFileLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // "Unlimited" is not a value Linux allows for RLIMIT_NOFILE; read it
    // as the largest.
    let before = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if before >= hard {
        return OpenFileLimit {
            before,
            now: before,
            error: None,
        };
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => OpenFileLimit {
            before,
            now: hard,
            error: None,
        },
        Err(error) => OpenFileLimit {
            before,
            now: before,
            error: Some(error.to_string()),
        },
    }
}

/// Which I/O driver the executors use.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}

/// The running node, for reporting at shutdown.
pub struct Node {
    /// Per-shard log counters, indexed by shard.
    pub log_stats: Vec<Arc<LogStats>>,
    /// The node's alarms, for health probes: `alarms.no_space_raised()`
    /// is one relaxed load.
    pub alarms: crate::service::alarm::AlarmSet,
    /// A cluster member's role and its shards' channels, to hand its
    /// leadership on before it stops; `None` alone.
    cluster: Option<MemberHandles>,
}

/// What a cluster member's shutdown needs.
type MemberHandles = (
    Arc<crate::shard::lead_member::MemberRole>,
    Arc<[flume::Sender<ShardCommand>]>,
);

impl Node {
    /// A cluster member asked to stop hands every group it leads to its
    /// most caught-up follower and waits (at most `limit`) until it leads
    /// none, so the cluster keeps a leader throughout (etcd transfers its
    /// leadership on shutdown the same way). Nothing to do alone.
    pub fn hand_off_leadership(&self, limit: std::time::Duration) {
        let Some((role, shards)) = &self.cluster else {
            return;
        };
        role.stop_leading();
        let deadline = std::time::Instant::now() + limit;
        while role.leads_any_group() && std::time::Instant::now() < deadline {
            for shard in shards.iter() {
                let _ = shard.try_send(ShardCommand::HandOffLeadership);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if role.leads_any_group() {
            tracing::warn!("stopping while still leading a group: its members elect a new leader");
        } else {
            tracing::info!("handed leadership to other members");
        }
    }

    /// Whether this member was removed from its cluster (`MemberRemove`):
    /// it must stop, as a removed etcd member does.
    pub fn is_removed(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|(role, _)| role.is_removed())
    }

    /// Logs entries per fsync for every shard (group commit effectiveness).
    pub fn log_summary(&self) {
        for (shard, stats) in self.log_stats.iter().enumerate() {
            let entries = stats.entries.load(std::sync::atomic::Ordering::Relaxed);
            let fsyncs = stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                shard,
                entries,
                fsyncs,
                entries_per_fsync = format!("{:.2}", stats.entries_per_fsync()),
                "WAL group commit"
            );
        }
    }
}

/// Starts every core, recovers every shard from its log (see
/// `shard::recovery` for the rule that makes multi-shard writes
/// all-or-nothing), and returns once all cores serve. The threads run for
/// the life of the process.
pub fn start(config: &ServerConfig) -> Result<Node, StartError> {
    let (bootstrap, shards) = match &config.cluster {
        // A member added to a running cluster, on its first start (etcd
        // ignores --initial-cluster-state once the data directory exists).
        Some(cluster)
            if cluster.initial_cluster_state == crate::config::InitialClusterState::Existing
                && !DataDir::exists(&config.data_dir) =>
        {
            let joined = crate::membership::join::join(
                cluster,
                &config.name,
                &config.data_dir,
                config.shards,
            )
            .map_err(StartError::Config)?;
            (Some(joined.bootstrap), Some(joined.shard_count))
        }
        Some(cluster) => {
            if !DataDir::exists(&config.data_dir) {
                cluster
                    .verify_bootstrap(&config.name)
                    .map_err(StartError::Config)?;
            }
            (
                Some(crate::membership::bootstrap(cluster, &config.name)),
                config.shards,
            )
        }
        None => (None, config.shards),
    };
    let data_dir = DataDir::open_member(&config.data_dir, shards, config.cores, bootstrap)?;
    let configurations = match &config.cluster {
        Some(_) => Some(Arc::new(
            crate::membership::Configurations::open(
                &config.data_dir,
                data_dir.meta.shard_count,
                &data_dir.meta.members,
            )
            .map_err(|error| StartError::Config(error.to_string()))?,
        )),
        None => None,
    };
    if let Some(configurations) = &configurations
        && configurations.member(data_dir.meta.member_id).is_none()
    {
        return Err(StartError::Removed {
            member_id: data_dir.meta.member_id,
        });
    }
    let (member, mut peer_service) = match (&config.cluster, &configurations) {
        (Some(cluster), Some(configurations)) => {
            let attributes = crate::peer::frame::MemberAttributes {
                name: config.name.clone(),
                client_urls: config.advertise_client_urls.clone(),
            };
            let (member, service) = cluster::prepare(
                cluster,
                &data_dir.meta,
                configurations.clone(),
                attributes,
                config.cores,
            )?;
            (Some(member), Some(service))
        }
        _ => (None, None),
    };
    let shard_map = ShardMap::new(data_dir.meta.shard_count, config.cores);
    let alarms = crate::service::alarm::AlarmSet::open(&config.data_dir)?;
    let identity = MemberIdentity {
        name: config.name.clone(),
        cluster_id: data_dir.meta.cluster_id,
        member_id: data_dir.meta.member_id,
        client_urls: config.advertise_client_urls.clone(),
        configurations,
        role: member.as_ref().map(|member| member.role.clone()),
        directory: member.as_ref().map(|member| member.directory.clone()),
    };
    let (senders, mut receivers): (Vec<_>, Vec<_>) = shard_map
        .all_shards()
        .map(|_| flume::bounded::<ShardCommand>(SHARD_QUEUE_CAPACITY))
        .map(|(sender, receiver)| (sender, Some(receiver)))
        .unzip();
    let senders: Arc<[flume::Sender<ShardCommand>]> = senders.into();
    let log_stats: Vec<Arc<LogStats>> = shard_map
        .all_shards()
        .map(|_| Arc::new(LogStats::default()))
        .collect();
    for shard in shard_map.all_shards() {
        let directories = shard_directories(&config.data_dir, shard);
        for path in [directories.wal, directories.snapshots] {
            std::fs::create_dir_all(&path)
                .map_err(|source| StartError::ShardDirectory { path, source })?;
        }
    }
    let listeners = bind_listeners(config)?;
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    tracing::info!(cores = config.cores, shards = shard_map.shard_count(), driver = driver_name(), data_dir = %config.data_dir.display(), "starting");
    let mut limits = ServerLimits::for_max_request_bytes(config.max_request_bytes);
    limits.max_concurrent_streams = config.connection_limits.max_concurrent_streams;
    limits.request_message_timeout = config.connection_limits.request_message_timeout;
    limits.keepalive_min_time = config.connection_limits.keepalive_min_time;
    let rate_limiter = Arc::new(
        RateLimiter::new(
            config.connection_limits.rate_limit,
            &config.connection_limits.method_rate_limits,
        )
        .map_err(|error| StartError::Config(error.to_string()))?,
    );
    let open_connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let helpers = Arc::new(
        HelperPool::start(config.cores.div_ceil(HELPER_THREAD_PER_CORES), HELPER_QUEUE)
            .map_err(StartError::Helpers)?,
    );
    let (report_sender, reports) = mpsc::channel();
    let mut plan_senders = Vec::new();
    let mut control_senders = Vec::new();
    let replayed = Arc::new(std::sync::Barrier::new(config.cores));
    for (core, core_listeners) in listeners.into_iter().enumerate() {
        let owned: Vec<_> = shard_map
            .shards_of_core(core)
            .map(|shard| {
                (
                    shard,
                    receivers[shard].take().expect("each shard is owned once"),
                )
            })
            .collect();
        let (plan_sender, plans) = mpsc::channel();
        plan_senders.push(plan_sender);
        let (control_sender, control) = flume::bounded(CONTROL_QUEUE_CAPACITY);
        control_senders.push(control_sender);
        let core_setup = CoreSetup {
            core,
            pin_to: core_ids.get(core % core_ids.len().max(1)).copied(),
            senders: senders.clone(),
            shard_directories: owned
                .iter()
                .map(|(shard, _)| shard_directories(&config.data_dir, *shard))
                .collect(),
            snapshot_count: config.snapshot_count,
            watch_progress_interval: config.watch_progress_interval,
            alarms: alarms.clone(),
            quota_bytes: config.quota_backend_bytes,
            auto_compaction: config.auto_compaction,
            log_stats: owned
                .iter()
                .map(|(shard, _)| log_stats[*shard].clone())
                .collect(),
            all_log_stats: log_stats.clone().into(),
            data_dir: config.data_dir.clone(),
            owned_shards: owned,
            wal_options: config.wal_options,
            listeners: core_listeners,
            identity: identity.clone(),
            limits: limits.clone(),
            max_txn_ops: config.max_txn_ops,
            max_request_bytes: config.max_request_bytes,
            reports: report_sender.clone(),
            plans,
            replayed: replayed.clone(),
            control,
            connection_limits: config.connection_limits.clone(),
            rate_limiter: rate_limiter.clone(),
            helpers: helpers.clone(),
            open_connections: open_connections.clone(),
            metrics_enabled: config.metrics_level != crate::config::MetricsLevel::Off,
            cluster: member.clone(),
            peer_service: peer_service.take(),
        };
        std::thread::Builder::new()
            .name(format!("metastore-core-{core}"))
            .spawn(move || run_core(core_setup))
            .map_err(|source| StartError::Core { core, source })?;
    }
    let mut inventories = Vec::new();
    for _ in 0..config.cores {
        match reports.recv() {
            Ok(CoreReport::Recovered(shards)) => inventories.extend(shards),
            Ok(CoreReport::Failed(message)) => return Err(StartError::Recovery(message)),
            Ok(CoreReport::Serving) | Err(_) => {
                return Err(StartError::Recovery(
                    "a core stopped during recovery".to_owned(),
                ));
            }
        }
    }
    inventories.sort_by_key(|inventory| inventory.shard);
    if member.is_some() {
        crate::shard::recovery::keep_voids_in_every_shard(&mut inventories);
    }
    let plan = durable_loss::decide(
        &inventories,
        &data_dir.meta.retired_wal_logs,
        &config.data_dir,
        INITIAL_REVISION,
    )?;
    let frontier =
        Arc::new(DurableFrontier::new(inventories.iter().map(|inventory| {
            (inventory.log.log_id, inventory.log.readable_through)
        })));
    if let Some((from, to)) = plan.newly_void() {
        if member.is_some() {
            tracing::info!(
                from,
                to,
                "revisions not complete in every group; the lead member completes or voids them"
            );
        } else {
            tracing::warn!(
                from,
                to,
                "discarding revisions that never became durable on every shard (none was acknowledged)"
            );
        }
    }
    tracing::info!(revision = plan.keep_through, highest_taken = plan.highest_taken, compacted = plan.compacted, voids = ?plan.voids, "recovered");
    let clock = match &member {
        Some(_) => RevisionClock::for_cluster(
            plan.highest_taken,
            config.cores,
            data_dir.meta.shard_count,
            plan.keep_through,
        ),
        None => RevisionClock::new(plan.highest_taken, config.cores),
    };
    let leases = crate::lease::table::LeaseTable::for_member(data_dir.meta.member_id);
    let space = KeySpace::new(shard_map, clock, leases);
    space.restore_compaction(plan.compacted);
    for plan_sender in plan_senders {
        plan_sender
            .send(StartupPlan {
                space: space.clone(),
                plan: plan.clone(),
                frontier: frontier.clone(),
            })
            .map_err(|_| StartError::Recovery("a core stopped during recovery".to_owned()))?;
    }
    for _ in 0..config.cores {
        match reports.recv() {
            Ok(CoreReport::Serving) => {}
            Ok(CoreReport::Failed(message)) => return Err(StartError::Recovery(message)),
            Ok(CoreReport::Recovered(_)) | Err(_) => {
                return Err(StartError::Recovery(
                    "a core stopped during startup".to_owned(),
                ));
            }
        }
    }
    crate::monitor::start(
        &config.metrics_addresses,
        config.metrics_limits,
        crate::monitor::NodeHandles {
            space,
            log_stats: log_stats.clone(),
            shard_senders: senders.clone(),
            cores: control_senders,
            data_dir: config.data_dir.clone(),
            quota_bytes: config.quota_backend_bytes,
            alarms: alarms.clone(),
            minimum_free_bytes: config.wal_options.segment_bytes,
            health_passed: Default::default(),
            health_failed: Default::default(),
            role: member.as_ref().map(|member| member.role.clone()),
        },
    )
    .map_err(StartError::Monitor)?;
    // The data directory stays locked for the life of the process.
    std::mem::forget(data_dir);
    for url in &config.listen_client_urls {
        tracing::info!(address = %url.address, "ready to serve client requests");
    }
    Ok(Node {
        log_stats,
        alarms,
        cluster: member.map(|member| (member.role, senders)),
    })
}

/// Binds one `SO_REUSEPORT` listener per core for every client URL, so the
/// kernel spreads connections over the cores.
fn bind_listeners(config: &ServerConfig) -> Result<Vec<Vec<StdTcpListener>>, StartError> {
    let mut per_core: Vec<Vec<StdTcpListener>> = (0..config.cores).map(|_| Vec::new()).collect();
    for url in &config.listen_client_urls {
        let address = url.address;
        let listen_error = |source| StartError::Listen { address, source };
        // SO_REUSEPORT would let us share a port with another process of
        // the same user without noticing. A bind without it first refuses
        // that: Linux lets SO_REUSEADDR bind over TIME_WAIT leftovers of a
        // previous run, but not over another listener.
        drop(reuse_socket(address, false).map_err(listen_error)?);
        for listeners in &mut per_core {
            let socket = reuse_socket(address, true).map_err(listen_error)?;
            socket.listen(LISTEN_BACKLOG).map_err(listen_error)?;
            listeners.push(socket.into());
        }
    }
    Ok(per_core)
}

/// A non-blocking TCP socket bound to `address` with SO_REUSEADDR, and
/// SO_REUSEPORT if `share_port`.
fn reuse_socket(address: SocketAddr, share_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(share_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}
