//! A cluster member's part of startup: the peer listeners (bound before
//! any core starts, so a taken port fails the start), one queue and sender
//! per other member, the member's role shared by its shard workers, and
//! each core's ticker.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ClusterConfig;
use crate::data_dir::DataDirMeta;
use crate::membership::{Configurations, MemberDirectory};
use crate::peer::forward::ForwardRequest;
use crate::peer::frame::MemberAttributes;
use crate::peer::transport::{
    Outgoing, PEER_QUEUE_CAPACITY, PeerIdentity, PeerInbox, PeerRoutes, send_to_peer, serve_peers,
};
use crate::shard::ShardCommand;
use crate::shard::forwarding::{self, CallQueues, ForwardTable, Forwarder};
use crate::shard::lead_member::{self, MemberRole};
use crate::shard::raft_group::GroupConfig;
use crate::shard::write_path::WritePath;
use crate::store::key_space::KeySpace;

use super::StartError;

/// What each core of a cluster member starts with.
#[derive(Clone)]
pub struct CoreCluster {
    pub role: Arc<MemberRole>,
    /// The same voters and timing for every group.
    pub group_config: GroupConfig,
    /// Each other member's outgoing queue (its sender runs on core 0).
    pub peer_queues: BTreeMap<u64, flume::Sender<Outgoing>>,
    pub heartbeat_interval: Duration,
    /// This member's callers waiting for the lead member's answers.
    pub forward_table: Arc<ForwardTable>,
    /// Calls other members forwarded here: core i carries out queue i's.
    pub forwarded_calls: Vec<flume::Receiver<(u64, ForwardRequest)>>,
    /// etcd's request timeout for this member's election timeout.
    pub request_timeout: Duration,
    /// What the other members announced of themselves.
    pub directory: Arc<MemberDirectory>,
    /// Every group's configuration and the member list, durable.
    pub configurations: Arc<Configurations>,
}

/// The member's peer endpoints (the listeners and the senders' ends of
/// the queues), run by core 0.
pub struct PeerService {
    listeners: Vec<StdTcpListener>,
    identity: PeerIdentity,
    members: Vec<u64>,
    outgoing: Vec<(u64, SocketAddr, flume::Receiver<Outgoing>)>,
    /// Where received calls go (see `CoreCluster::forwarded_calls`).
    calls: Vec<flume::Sender<(u64, ForwardRequest)>>,
    /// What this member announces of itself on every connection.
    attributes: MemberAttributes,
}

/// Binds the peer listeners and prepares the queues, for a member whose
/// data directory recorded `meta`: what every core gets, and what core 0
/// runs.
pub fn prepare(
    config: &ClusterConfig,
    meta: &DataDirMeta,
    configurations: Arc<Configurations>,
    attributes: MemberAttributes,
    cores: usize,
) -> Result<(CoreCluster, PeerService), StartError> {
    let voters: Vec<u64> = meta.members.iter().map(|member| member.id).collect();
    let members: Vec<u64> = configurations
        .members()
        .iter()
        .map(|member| member.id)
        .collect();
    let mut listeners = Vec::new();
    for address in &config.listen_peer_addresses {
        let listener = StdTcpListener::bind(address)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|source| StartError::ListenPeers {
                address: *address,
                source,
            })?;
        listeners.push(listener);
    }
    let mut peer_queues = BTreeMap::new();
    let mut outgoing = Vec::new();
    // The members as this member last applied them: a member removed
    // while this one was down is not dialed again.
    for member in configurations
        .members()
        .iter()
        .filter(|member| member.id != meta.member_id)
    {
        let address = member
            .peer_urls
            .iter()
            .find_map(|url| crate::config::parse_client_url(url).ok())
            .map(|url| url.address)
            .ok_or_else(|| {
                StartError::Config(format!(
                    "member {} ({:x}): none of its peer URLs {:?} resolves",
                    member.name, member.id, member.peer_urls
                ))
            })?;
        let (queue, receiver) = flume::bounded(PEER_QUEUE_CAPACITY);
        peer_queues.insert(member.id, queue);
        outgoing.push((member.id, address, receiver));
    }
    let election_ticks = config.election_ticks;
    let (calls, forwarded_calls) = (0..cores)
        .map(|_| flume::bounded(PEER_QUEUE_CAPACITY))
        .unzip();
    let cluster = CoreCluster {
        role: MemberRole::new(meta.member_id, meta.shard_count),
        group_config: GroupConfig {
            member_id: meta.member_id,
            voters: voters.clone(),
            election_ticks: election_ticks..2 * election_ticks,
            pre_vote: config.pre_vote,
        },
        peer_queues,
        heartbeat_interval: config.heartbeat_interval,
        forward_table: ForwardTable::new(),
        forwarded_calls,
        request_timeout: forwarding::request_timeout(
            config.heartbeat_interval * election_ticks as u32,
        ),
        directory: Arc::default(),
        configurations,
    };
    let service = PeerService {
        listeners,
        identity: PeerIdentity {
            cluster_id: meta.cluster_id,
            member_id: meta.member_id,
        },
        members,
        outgoing,
        calls,
        attributes,
    };
    Ok((cluster, service))
}

impl CoreCluster {
    /// Where the worker of `shard` sends its group's messages.
    pub fn outbox(&self, shard: usize) -> PeerRoutes {
        PeerRoutes {
            shard: shard as u32,
            queues: Rc::new(self.peer_queues.clone()),
            dropped: Rc::new(Cell::new(0)),
        }
    }

    /// This core's way to the lead member, for its write path.
    pub fn forwarder(&self) -> Forwarder {
        Forwarder {
            role: self.role.clone(),
            queues: Rc::new(self.peer_queues.clone()),
            table: self.forward_table.clone(),
            request_timeout: self.request_timeout,
            configurations: self.configurations.clone(),
        }
    }

    /// Carries out, with this core's `write_path`, calls other members
    /// forwarded to this one while it is the lead member.
    pub fn spawn_forwarded_calls(&self, core: usize, write_path: Rc<WritePath>) {
        let Some(calls) = self.forwarded_calls.get(core) else {
            return;
        };
        monoio::spawn(forwarding::carry_out_forwarded_calls(
            write_path,
            calls.clone(),
            Rc::new(self.peer_queues.clone()),
            self.request_timeout,
        ));
    }

    /// Runs what one core of the member runs besides its workers: every
    /// core ticks its own shards' groups; core 0, given `service`, also
    /// serves the peer listeners, sends to the other members and carries
    /// out the lead member's duty.
    pub fn spawn_core_tasks(
        &self,
        owned: Vec<flume::Sender<ShardCommand>>,
        all_shards: Arc<[flume::Sender<ShardCommand>]>,
        space: Arc<KeySpace>,
        service: Option<PeerService>,
    ) -> Result<(), String> {
        monoio::spawn(tick(owned, self.heartbeat_interval));
        let Some(service) = service else {
            return Ok(());
        };
        let shards: Rc<[flume::Sender<ShardCommand>]> = all_shards.iter().cloned().collect();
        let inbox = PeerInbox {
            shards: shards.clone(),
            calls: CallQueues::new(service.calls),
            waiting: self.forward_table.clone(),
            directory: self.directory.clone(),
        };
        let members: Rc<[u64]> = service.members.into();
        let attributes = Rc::new(service.attributes);
        for listener in service.listeners {
            let listener = monoio::net::TcpListener::from_std(listener)
                .map_err(|error| format!("cannot serve the peer listener: {error}"))?;
            let (identity, members, inbox) = (service.identity, members.clone(), inbox.clone());
            monoio::spawn(async move {
                if let Err(error) = serve_peers(listener, identity, members, inbox).await {
                    tracing::error!(%error, "the peer listener failed");
                }
            });
        }
        for (member, address, queue) in service.outgoing {
            monoio::spawn(send_to_peer(
                service.identity,
                member,
                address,
                queue,
                shards.clone(),
                attributes.clone(),
            ));
        }
        monoio::spawn(lead_member::run(
            self.role.clone(),
            space,
            all_shards,
            self.heartbeat_interval,
        ));
        Ok(())
    }
}

/// One tick per heartbeat interval to each of this core's groups. A
/// worker whose queue is full misses the tick (it is busy; Raft's timing
/// is in ticks, so it only runs a little slow).
async fn tick(shards: Vec<flume::Sender<ShardCommand>>, interval: Duration) {
    loop {
        monoio::time::sleep(interval).await;
        for shard in &shards {
            if let Err(flume::TrySendError::Disconnected(_)) = shard.try_send(ShardCommand::Tick) {
                return;
            }
        }
    }
}
