//! A cluster in one process, for deterministic tests: members of
//! `shard_count` groups over storage-device twins, their clocks and roles
//! as cluster members', the lead member's duty and forwarded calls
//! running on the current executor, and an in-memory network between
//! them: one queue per ordered member pair (what `PeerRoutes` and
//! `Forwarder` send into), delivered through each member's `PeerInbox`
//! unless either end is cut off.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::disk_space::DiskSpaceGuard;
use super::forwarding::{CallQueues, ForwardTable, Forwarder, carry_out_forwarded_calls};
use super::frontier::DurableFrontier;
use super::lead_member::MemberRole;
use super::raft_group::GroupConfig;
use super::recovery::read_shard_log;
use super::test_worker::{OPTIONS, start_empty_group};
use super::write_path::WritePath;
use super::{ShardCommand, ShardWorker, SnapshotSchedule};
use crate::data_dir::MemberRecord;
use crate::lease::table::LeaseTable;
use crate::metrics::CoreMetrics;
use crate::peer::frame::Batch;
use crate::peer::queues::{PeerQueueTable, PeerQueues};
use crate::peer::snapshot_stream::{SnapshotAssembly, is_snapshot};
use crate::peer::transport::{Outgoing, PeerInbox, PeerRoutes};
use crate::store::key_space::KeySpace;
use crate::store::revision::RevisionClock;
use crate::store::shard_map::ShardMap;
use crate::wal::MemoryDevice;

/// One member of a [`TestCluster`].
pub struct TestMember {
    pub id: u64,
    pub space: Arc<KeySpace>,
    pub senders: Arc<[flume::Sender<ShardCommand>]>,
    pub write_path: Rc<WritePath>,
    pub role: Arc<MemberRole>,
    /// The member's membership as its groups applied it.
    pub configurations: Arc<crate::membership::Configurations>,
    /// Where the network hands what other members sent it.
    inbox: PeerInbox,
}

pub struct TestCluster {
    pub members: Vec<TestMember>,
    /// `(from, to, queue)` for every ordered pair of members.
    links: Vec<(u64, u64, flume::Receiver<Outgoing>)>,
    /// Members cut off: whatever they send or are sent is lost.
    pub isolated: RefCell<BTreeSet<u64>>,
    /// Raft messages taken from the links in the last round, delivered in
    /// the next: Raft traffic is a round slower than forwarded calls and
    /// answers, as when a follower's workers are behind, so a forwarded
    /// write's answer often arrives before its member applied the write.
    raft_in_flight: RefCell<Vec<(u64, u64, Batch)>>,
}

/// Ticks every group's workers need between elections (`GroupConfig`).
const ELECTION_TICKS: std::ops::Range<usize> = 10..20;

impl TestCluster {
    /// Members `voters` of `shard_count` groups each. With
    /// `request_timeout`, a member that does not take writes forwards them
    /// to the lead member (and gives up after that long); without, it
    /// refuses them with `NotLeader`. Each group snapshots every
    /// `snapshot_every` entries it proposed (its snapshots in a directory
    /// of its own under `snapshots`).
    pub async fn start(
        voters: &[u64],
        shard_count: usize,
        snapshots: &std::path::Path,
        request_timeout: Option<Duration>,
        snapshot_every: u64,
    ) -> Rc<Self> {
        Self::start_joining(
            (voters, &[]),
            shard_count,
            snapshots,
            request_timeout,
            snapshot_every,
        )
        .await
    }

    /// As [`Self::start`], with members `joining` started as a member
    /// added to the running cluster starts (`membership::join`): its
    /// groups begin with the bootstrap configuration, which does not hold
    /// it, and its member list is the cluster's with itself a learner. Its
    /// addition is the test's to make (MemberAdd with `joining_record`).
    pub async fn start_joining(
        (voters, joining): (&[u64], &[u64]),
        shard_count: usize,
        snapshots: &std::path::Path,
        request_timeout: Option<Duration>,
        snapshot_every: u64,
    ) -> Rc<Self> {
        let mut links = Vec::new();
        let mut members = Vec::new();
        let everyone: Vec<u64> = voters.iter().chain(joining).copied().collect();
        let initial: Vec<MemberRecord> = voters.iter().map(|id| test_record(*id, false)).collect();
        for &member_id in &everyone {
            let mut queues = BTreeMap::new();
            for &to in everyone.iter().filter(|to| **to != member_id) {
                let (queue, receiver) = flume::unbounded();
                queues.insert(to, queue);
                links.push((member_id, to, receiver));
            }
            let config = GroupConfig {
                member_id,
                voters: voters.to_vec(),
                election_ticks: ELECTION_TICKS,
                pre_vote: true,
            };
            let configurations = if joining.contains(&member_id) {
                let mut members = initial.clone();
                members.push(test_record(member_id, true));
                crate::membership::Configurations::create_joined(
                    None,
                    shard_count,
                    &initial,
                    &members,
                )
                .expect("in memory")
            } else {
                crate::membership::Configurations::in_memory(shard_count, &initial)
            };
            members.push(
                start_member(
                    &config,
                    (shard_count, Arc::new(configurations)),
                    &snapshots.join(format!("member-{member_id}")),
                    PeerQueueTable::new(queues).view(),
                    request_timeout,
                    snapshot_every,
                )
                .await,
            );
        }
        Rc::new(Self {
            members,
            links,
            isolated: RefCell::default(),
            raft_in_flight: RefCell::default(),
        })
    }

    /// One round of the network: hands on the Raft messages taken in the
    /// last round and the calls and answers queued now, between members
    /// that are both connected, and drops the rest. `false` once the
    /// members are gone.
    pub async fn deliver(&self) -> bool {
        let mut batches = std::mem::take(&mut *self.raft_in_flight.borrow_mut());
        for (from, to, queue) in &self.links {
            let (mut raft, mut calls) = (Batch::default(), Batch::default());
            for outgoing in queue.try_iter() {
                match outgoing {
                    Outgoing::Raft(shard, message) => raft.messages.push((shard, message)),
                    Outgoing::Request(request) => calls.requests.push(request),
                    Outgoing::Reply(reply) => calls.replies.push(reply),
                }
            }
            self.raft_in_flight.borrow_mut().push((*from, *to, raft));
            batches.push((*from, *to, calls));
        }
        for (from, to, batch) in batches {
            let cut_off = {
                let isolated = self.isolated.borrow();
                isolated.contains(&from) || isolated.contains(&to)
            };
            // What a real sender reports once it streamed a snapshot, or
            // could not reach the member.
            let snapshots: Vec<u32> = batch
                .messages
                .iter()
                .filter(|(_, message)| is_snapshot(message))
                .map(|(shard, _)| *shard)
                .collect();
            if !cut_off && batch != Batch::default() {
                let member = &self.members[self.index_of(to)];
                let mut assembly = SnapshotAssembly::default();
                if !matches!(
                    member.inbox.deliver(from, batch, &mut assembly).await,
                    Ok(true)
                ) {
                    return false;
                }
            }
            let sender = &self.members[self.index_of(from)];
            for shard in snapshots {
                let finished = !cut_off;
                let report = ShardCommand::SnapshotReport { to, finished };
                if sender.senders[shard as usize]
                    .send_async(report)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        }
        true
    }

    /// Runs the network and the clock on a task of their own until the
    /// members stop: a round of delivery every millisecond, a tick every
    /// two.
    pub fn run_network(self: &Rc<Self>) {
        let network = self.clone();
        monoio::spawn(async move {
            let mut step = 0u64;
            loop {
                monoio::time::sleep(Duration::from_millis(1)).await;
                step += 1;
                if !network.deliver().await || (step.is_multiple_of(2) && !network.tick().await) {
                    return;
                }
            }
        });
    }

    /// One tick to every group of every member.
    pub async fn tick(&self) -> bool {
        for shard in self.members.iter().flat_map(|member| member.senders.iter()) {
            if shard.send_async(ShardCommand::Tick).await.is_err() {
                return false;
            }
        }
        true
    }

    pub fn index_of(&self, member_id: u64) -> usize {
        self.members
            .iter()
            .position(|member| member.id == member_id)
            .expect("a member of the cluster")
    }
}

/// Starts one member: its groups over fresh devices, the lead member's
/// duty, and (with `request_timeout`) its forwarding both ways.
async fn start_member(
    config: &GroupConfig,
    (shard_count, configurations): (usize, Arc<crate::membership::Configurations>),
    snapshots: &std::path::Path,
    queues: PeerQueues,
    request_timeout: Option<Duration>,
    snapshot_every: u64,
) -> TestMember {
    let member_id = config.member_id;
    let mut wals = Vec::new();
    for _ in 0..shard_count {
        let log = read_shard_log(0, MemoryDevice::new(), 0)
            .await
            .expect("read");
        let wal = log.reading.resume(OPTIONS).await.expect("resume");
        wals.push(wal);
    }
    let frontier = Arc::new(DurableFrontier::new(
        wals.iter().map(|wal| (wal.log_id(), 0)),
    ));
    let clock = RevisionClock::for_cluster(1, 1, shard_count, 1);
    let space = KeySpace::new(
        ShardMap::new(shard_count, 1),
        clock.clone(),
        LeaseTable::for_member(member_id),
    );
    let slot = clock.slot(0);
    let role = MemberRole::new(member_id, shard_count);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..shard_count).map(|_| flume::bounded(1024)).unzip();
    let senders: Arc<[flume::Sender<ShardCommand>]> = senders.into();
    for (shard, (wal, commands)) in wals.into_iter().zip(receivers).enumerate() {
        let directory = snapshots.join(format!("shard-{shard}"));
        std::fs::create_dir_all(&directory).expect("snapshot directory");
        let group = start_empty_group(
            wal,
            shard,
            &frontier,
            &directory,
            config,
            Some(&configurations),
        )
        .await;
        let schedule = SnapshotSchedule::new(snapshot_every, directory, senders[shard].clone());
        let outbox = PeerRoutes {
            shard: shard as u32,
            queues: queues.clone(),
            dropped: Rc::default(),
        };
        let worker = ShardWorker::new(
            shard,
            space.clone(),
            slot.clone(),
            group,
            schedule,
            Rc::new(CoreMetrics::new(false)),
            DiskSpaceGuard::new(shard, None, OPTIONS.segment_bytes),
        )
        .with_peers(Box::new(outbox))
        .with_role(role.clone());
        monoio::spawn(worker.run(commands));
    }
    monoio::spawn(super::lead_member::run(
        role.clone(),
        space.clone(),
        senders.clone(),
        Duration::from_millis(5),
    ));
    let table = ForwardTable::new();
    let forwarder = request_timeout.map(|request_timeout| Forwarder {
        role: role.clone(),
        queues: queues.clone(),
        table: table.clone(),
        request_timeout,
        configurations: configurations.clone(),
        reconfig: Default::default(),
    });
    let write_path = WritePath::new(space.clone(), senders.clone(), slot, forwarder);
    let (calls, forwarded_calls) = flume::unbounded();
    monoio::spawn(carry_out_forwarded_calls(
        write_path.clone(),
        forwarded_calls,
        queues,
        request_timeout.unwrap_or(Duration::from_secs(1)),
    ));
    TestMember {
        id: member_id,
        inbox: PeerInbox {
            shards: senders.iter().cloned().collect(),
            calls: CallQueues::new(vec![calls]),
            waiting: table,
            directory: Default::default(),
        },
        space,
        senders,
        write_path,
        role,
        configurations,
    }
}

/// The record of test member `id` (what MemberAdd of it carries).
pub fn test_record(id: u64, is_learner: bool) -> MemberRecord {
    MemberRecord {
        id,
        name: format!("member-{id}"),
        peer_urls: vec![format!("http://member-{id}:2380")],
        is_learner,
    }
}
