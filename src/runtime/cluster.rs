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
use crate::peer::queues::PeerQueueTable;
use crate::peer::transport::{
    Acceptance, Outgoing, PEER_QUEUE_CAPACITY, PeerIdentity, PeerInbox, PeerRoutes, send_to_peer,
    serve_peers,
};
use crate::shard::ShardCommand;
use crate::shard::forwarding::{self, CallQueues, ForwardTable, Forwarder};
use crate::shard::lead_member::{self, MemberRole};
use crate::shard::member_change::ReconfigPolicy;
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
    /// Each other member's outgoing queue (its sender runs on core 0),
    /// following the membership.
    pub peer_queues: Arc<PeerQueueTable>,
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
    /// `--strict-reconfig-check` and `--max-learners`.
    pub reconfig: ReconfigPolicy,
}

/// The member's peer endpoints (the listeners and the senders' ends of
/// the queues), run by core 0.
pub struct PeerService {
    listeners: Vec<StdTcpListener>,
    identity: PeerIdentity,
    /// Who may connect, and what a member joining is told.
    acceptance: Acceptance,
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
    let peer_queues = PeerQueueTable::new(BTreeMap::new());
    let mut outgoing = Vec::new();
    // The members as this member last applied them: a member removed
    // while this one was down is not dialed again.
    for member in configurations
        .members()
        .iter()
        .filter(|member| member.id != meta.member_id)
    {
        let address = peer_address(member).map_err(StartError::Config)?;
        outgoing.push((member.id, address, peer_queues.open(member.id)));
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
        configurations: configurations.clone(),
        reconfig: ReconfigPolicy {
            strict: config.strict_reconfig_check,
            max_learners: config.max_learners,
        },
    };
    let service = PeerService {
        listeners,
        identity: PeerIdentity {
            cluster_id: meta.cluster_id,
            member_id: meta.member_id,
        },
        acceptance: Acceptance {
            configurations,
            initial_members: meta.members.clone(),
            shard_count: meta.shard_count,
        },
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
            queues: self.peer_queues.view(),
            dropped: Rc::new(Cell::new(0)),
        }
    }

    /// This core's way to the lead member, for its write path.
    pub fn forwarder(&self) -> Forwarder {
        Forwarder {
            role: self.role.clone(),
            queues: self.peer_queues.view(),
            table: self.forward_table.clone(),
            request_timeout: self.request_timeout,
            configurations: self.configurations.clone(),
            reconfig: self.reconfig,
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
            self.peer_queues.view(),
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
        let acceptance = Rc::new(service.acceptance);
        let attributes = Rc::new(service.attributes);
        for listener in service.listeners {
            let listener = monoio::net::TcpListener::from_std(listener)
                .map_err(|error| format!("cannot serve the peer listener: {error}"))?;
            let (identity, acceptance, inbox) =
                (service.identity, acceptance.clone(), inbox.clone());
            monoio::spawn(async move {
                if let Err(error) = serve_peers(listener, identity, acceptance, inbox).await {
                    tracing::error!(%error, "the peer listener failed");
                }
            });
        }
        let senders = PeerSenders {
            identity: service.identity,
            table: self.peer_queues.clone(),
            shards: shards.clone(),
            attributes,
        };
        let mut addresses = BTreeMap::new();
        for (member, address, queue) in service.outgoing {
            senders.spawn(member, address, queue);
            addresses.insert(member, address);
        }
        monoio::spawn(follow_membership(
            senders,
            self.configurations.clone(),
            addresses,
        ));
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

/// Where a member's peer URLs lead: the first that parses.
fn peer_address(member: &crate::data_dir::MemberRecord) -> Result<SocketAddr, String> {
    member
        .peer_urls
        .iter()
        .find_map(|url| crate::config::parse_client_url(url).ok())
        .map(|url| url.address)
        .ok_or_else(|| {
            format!(
                "member {} ({:x}): none of its peer URLs {:?} resolves",
                member.name, member.id, member.peer_urls
            )
        })
}

/// What starting a sender to another member takes (core 0).
struct PeerSenders {
    identity: PeerIdentity,
    table: Arc<PeerQueueTable>,
    shards: Rc<[flume::Sender<ShardCommand>]>,
    attributes: Rc<MemberAttributes>,
}

impl PeerSenders {
    fn spawn(&self, member: u64, address: SocketAddr, queue: flume::Receiver<Outgoing>) {
        monoio::spawn(send_to_peer(
            self.identity,
            (member, address),
            queue,
            self.table.clone(),
            self.shards.clone(),
            self.attributes.clone(),
        ));
    }
}

/// How often core 0 compares the peer queues with the applied membership.
const MEMBERSHIP_POLL: Duration = Duration::from_millis(100);

/// Keeps one queue and sender per other member as the membership changes:
/// a member added gets both as soon as group 0 here applied its addition
/// (before it starts, so Raft can reach it once it does), a member removed
/// loses them, and a member whose peer URLs moved is redialed at the new
/// address. `addresses` are the senders running now.
async fn follow_membership(
    senders: PeerSenders,
    configurations: Arc<Configurations>,
    mut addresses: BTreeMap<u64, SocketAddr>,
) {
    let own = senders.identity.member_id;
    loop {
        monoio::time::sleep(MEMBERSHIP_POLL).await;
        let members = configurations.members();
        for member in members.iter().filter(|member| member.id != own) {
            let address = match peer_address(member) {
                Ok(address) => address,
                Err(error) => {
                    tracing::warn!(%error, "cannot reach a member");
                    continue;
                }
            };
            if addresses.get(&member.id) == Some(&address) {
                continue;
            }
            // New, or moved: the old sender stops with its queue.
            senders.spawn(member.id, address, senders.table.open(member.id));
            addresses.insert(member.id, address);
            tracing::info!(member = format!("{:x}", member.id), %address, "sending to a member");
        }
        let gone: Vec<u64> = addresses
            .keys()
            .copied()
            .filter(|id| !members.iter().any(|member| member.id == *id))
            .collect();
        for id in gone {
            senders.table.remove(id);
            addresses.remove(&id);
            tracing::info!(
                member = format!("{id:x}"),
                "no longer sending to a removed member"
            );
        }
    }
}
