//! The thread-per-core runtime: one pinned `monoio` executor per core, each
//! with its own `SO_REUSEPORT` listener per client URL and the workers of
//! the shards it owns.
//!
//! Invariants:
//! - A connection lives on the core that accepted it.
//! - Only a shard's owning core writes its memtable (its `ShardWorker`).
//! - Nothing blocks an executor thread; the main thread only waits for
//!   signals.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::config::ServerConfig;
use crate::data_dir::{DataDir, DataDirError};
use crate::grpc::authority::AuthorityRewritingIo;
use crate::grpc::server::{ServerLimits, serve_connection};
use crate::service::{EtcdServices, MemberIdentity, ServiceContext};
use crate::shard::write_path::WritePath;
use crate::shard::{SHARD_QUEUE_CAPACITY, ShardCommand, ShardWorker};
use crate::store::key_space::KeySpace;
use crate::store::revision::RevisionClock;
use crate::store::shard_map::ShardMap;

/// etcd's first revision for an empty store.
const INITIAL_REVISION: i64 = 1;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot listen on {address} (--listen-client-urls): {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start core {core}: {source}")]
    Core { core: usize, source: std::io::Error },
}

/// Which I/O driver the executors use.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}

/// Starts every core and returns once they are serving. The threads run
/// for the life of the process.
pub fn start(config: &ServerConfig) -> Result<(), StartError> {
    let data_dir = DataDir::open(&config.data_dir, config.shards, config.cores)?;
    let shard_map = ShardMap::new(data_dir.meta.shard_count, config.cores);
    let clock = RevisionClock::new(INITIAL_REVISION, config.cores);
    let space = KeySpace::new(shard_map, clock.clone());
    let identity = MemberIdentity {
        name: config.name.clone(),
        cluster_id: data_dir.meta.cluster_id,
        member_id: data_dir.meta.member_id,
        client_urls: config.advertise_client_urls.clone(),
    };
    let (senders, mut receivers): (Vec<_>, Vec<_>) = shard_map
        .all_shards()
        .map(|_| flume::bounded::<ShardCommand>(SHARD_QUEUE_CAPACITY))
        .map(|(sender, receiver)| (sender, Some(receiver)))
        .unzip();
    let senders: Arc<[flume::Sender<ShardCommand>]> = senders.into();
    let listeners = bind_listeners(config)?;
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    tracing::info!(cores = config.cores, shards = shard_map.shard_count(), driver = driver_name(), data_dir = %config.data_dir.display(), "starting");
    let limits = ServerLimits::for_max_request_bytes(config.max_request_bytes);
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
        let core_setup = CoreSetup {
            core,
            pin_to: core_ids.get(core % core_ids.len().max(1)).copied(),
            space: space.clone(),
            senders: senders.clone(),
            owned_shards: owned,
            listeners: core_listeners,
            identity: identity.clone(),
            limits: limits.clone(),
            max_txn_ops: config.max_txn_ops,
            max_request_bytes: config.max_request_bytes,
        };
        std::thread::Builder::new()
            .name(format!("metastore-core-{core}"))
            .spawn(move || run_core(core_setup))
            .map_err(|source| StartError::Core { core, source })?;
    }
    // The data directory stays locked for the life of the process.
    std::mem::forget(data_dir);
    for url in &config.listen_client_urls {
        tracing::info!(address = %url.address, "ready to serve client requests");
    }
    Ok(())
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
            socket.listen(1024).map_err(listen_error)?;
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

/// Everything one core thread starts with.
struct CoreSetup {
    core: usize,
    pin_to: Option<core_affinity::CoreId>,
    space: Arc<KeySpace>,
    senders: Arc<[flume::Sender<ShardCommand>]>,
    owned_shards: Vec<(usize, flume::Receiver<ShardCommand>)>,
    listeners: Vec<StdTcpListener>,
    identity: MemberIdentity,
    limits: ServerLimits,
    max_txn_ops: usize,
    max_request_bytes: usize,
}

fn run_core(setup: CoreSetup) {
    let core = setup.core;
    // A core that dies takes its shards with it; the process must not keep
    // serving half a key space.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_core_inner(setup)));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(core, %error, "core failed to start"),
        Err(_) => tracing::error!(core, "core panicked"),
    }
    std::process::exit(70);
}

fn run_core_inner(setup: CoreSetup) -> std::io::Result<()> {
    if let Some(core_id) = setup.pin_to
        && !core_affinity::set_for_current(core_id)
    {
        tracing::warn!(core = setup.core, "could not pin thread to its core");
    }
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let slot = setup.space.clock().slot(setup.core);
        for (shard, receiver) in setup.owned_shards {
            let worker = ShardWorker::new(shard, setup.space.clone(), slot.clone());
            monoio::spawn(worker.run(receiver));
        }
        let write_path = WritePath::new(setup.space.clone(), setup.senders.clone(), slot);
        let context = Rc::new(ServiceContext {
            identity: setup.identity,
            write_path,
            max_txn_ops: setup.max_txn_ops,
            max_request_bytes: setup.max_request_bytes,
        });
        let services = Rc::new(EtcdServices::new(context));
        let limits = Rc::new(setup.limits);
        let mut accepts = Vec::new();
        for listener in setup.listeners {
            let listener = monoio::net::TcpListener::from_std(listener)?;
            accepts.push(monoio::spawn(accept_loop(
                listener,
                services.clone(),
                limits.clone(),
            )));
        }
        for accept in accepts {
            accept.await;
        }
        Ok(())
    })
}

async fn accept_loop(
    listener: monoio::net::TcpListener,
    services: Rc<EtcdServices>,
    limits: Rc<ServerLimits>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match stream.try_into_poll_io() {
                    Ok(io) => {
                        let io =
                            AuthorityRewritingIo::new(io, limits.max_header_list_size as usize);
                        let (services, limits) = (services.clone(), limits.clone());
                        monoio::spawn(async move {
                            if let Err(error) = serve_connection(io, services, limits).await {
                                tracing::debug!(%peer, %error, "connection closed with an error");
                            }
                        });
                    }
                    Err((error, _)) => tracing::warn!(%peer, %error, "cannot drive connection"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                monoio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
