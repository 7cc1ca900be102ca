//! The shard runtime: each shard has one worker task on its owning core,
//! the only code that ever writes the shard's memtable.
//!
//! Other cores talk to a shard through a bounded channel of
//! [`ShardCommand`]s. Writes that touch one shard are executed entirely by
//! its worker; writes that touch several are run by a coordinator
//! ([`write_path`]) that first *holds* every participant, in ascending shard
//! order so two coordinators never deadlock, then sends each participant
//! its part to apply.

pub mod apply;
#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod catch_up_tests;
pub mod compacting;
pub mod conf_change;
pub mod disk_space;
#[cfg(test)]
mod disk_space_tests;
pub mod durable_loss;
pub mod forwarding;
pub mod frontier;
#[cfg(test)]
mod group_twin_tests;
pub mod lead_member;
pub mod log_entry;
pub mod log_storage;
pub mod member_change;
#[cfg(test)]
mod membership_tests;
pub mod peers;
pub mod raft_group;
mod read_index;
pub mod recovery;
#[cfg(test)]
mod recovery_faults;
mod snapshot_install;
pub mod snapshot_schedule;
pub mod snapshotting;
#[cfg(test)]
pub(crate) mod test_cluster;
#[cfg(test)]
pub(crate) mod test_worker;
#[cfg(test)]
mod worker_cluster_tests;
pub mod write_path;

use bytes::Bytes;
use futures_channel::oneshot;

use crate::metrics::CoreMetrics;
use crate::store::error::KvError;
use crate::store::key_space::KeySpace;
use crate::store::memtable::Version;
use crate::store::pending::PendingVersions;
use crate::store::revision::{PendingRevision, RevisionSlot};
use crate::store::shard_map::ShardId;
use crate::store::write::{self, ChangeSet, WriteContext, WriteRequest, WriteResponse};
use crate::wal::StorageDevice;
use log_entry::ShardCommandRecord;
use raft_group::RaftGroup;
pub use snapshot_schedule::SnapshotSchedule;

/// Capacity of each shard's command channel. Senders wait when it is full,
/// which pushes back on the connections producing the load.
pub const SHARD_QUEUE_CAPACITY: usize = 1024;

/// A write's result: the response and the revision it took, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub response: WriteResponse,
    pub revision: Option<i64>,
}

pub type WriteReply = oneshot::Sender<Result<WriteOutcome, KvError>>;

pub enum ShardCommand {
    /// Execute a write whose keys all live on this shard.
    Write {
        request: WriteRequest,
        reply: WriteReply,
        /// When the sender queued it: the worker records the wait as the
        /// cross-core hop latency.
        queued_at: std::time::Instant,
    },
    /// Answer at once: the health check's proof that the worker turns.
    Probe { reply: oneshot::Sender<()> },
    /// Start no other write until the coordinator lets go (drops the sender
    /// behind `commands`); meanwhile obey only `commands`.
    ///
    /// `held` carries what the shard proposed and has not applied yet, for
    /// the coordinator to evaluate against (empty on a server alone, whose
    /// entries commit at once).
    Hold {
        held: oneshot::Sender<Result<PendingVersions, KvError>>,
        commands: flume::Receiver<HeldCommand>,
    },
    /// Log a compaction at `revision` and free the history below it, in
    /// steps between turns (the compaction point is already recorded in
    /// the key space). `done` is answered once the record is durable, or,
    /// with `physical`, once the history is freed too (etcd's flag).
    Compact {
        revision: i64,
        physical: bool,
        done: oneshot::Sender<()>,
    },
    /// Log a lease grant (this is the lease's home shard); the lease joins
    /// the table, and the reply is sent, once the record is durable.
    GrantLease {
        id: i64,
        ttl_seconds: i64,
        reply: oneshot::Sender<Result<(), KvError>>,
    },
    /// Write a snapshot now (Defragment): covers the log through the
    /// watermark, after which the WAL below it is released. Answered once
    /// that snapshot is written (at once if the last one covers it all).
    Snapshot {
        done: oneshot::Sender<Result<(), String>>,
    },
    /// The worker's snapshot thread finished writing a snapshot through
    /// `raft_index` (or failed).
    SnapshotWritten {
        raft_index: u64,
        result: Result<std::path::PathBuf, snapshotting::SnapshotFailure>,
    },
    /// A Raft message from this group's member on another node.
    Peer(Box<raft::eraftpb::Message>),
    /// One tick of the group's logical clock (a heartbeat interval).
    Tick,
    /// Answer once this member has applied everything the group had
    /// committed when the request arrived, as its leader confirms with a
    /// quorum (Raft's ReadIndex): a cluster member's linearizable read
    /// waits for it in every group. Dropped unanswered if the group's
    /// leader changes meanwhile.
    ReadIndex { done: oneshot::Sender<()> },
    /// This member is stopping: if it leads the group, hand the leadership
    /// to the most caught-up follower now (etcd's leadership transfer on
    /// shutdown), so no election timeout passes without a leader.
    HandOffLeadership,
    /// How this group's snapshot for member `to` went (the transport
    /// streamed it, or could not): Raft resumes replicating to `to`, or
    /// sends another after a heartbeat.
    SnapshotReport { to: u64, finished: bool },
    /// A member-level change, proposed in group 0 on the lead member
    /// (`conf_change`): answered once applied here, or refused.
    ChangeMembers {
        change: raft::eraftpb::ConfChange,
        /// `--strict-reconfig-check` (`member_change::check_quorum_safety`).
        strict: bool,
        done: oneshot::Sender<Result<(), KvError>>,
    },
    /// The lead member's decision that revisions `from..=to` are void
    /// (`lead_member`): log it and answer once it is applied here, or
    /// refuse if this member does not lead the group.
    Void {
        from: i64,
        to: i64,
        done: oneshot::Sender<Result<(), KvError>>,
    },
}

/// What a coordinator may ask of a shard it holds.
pub enum HeldCommand {
    /// Log and apply this shard's part of a multi-shard write at
    /// `revision` (0 when it changes no key); answer on `durable` once it is
    /// applied (committed), or with the reason it never will be. The part
    /// is pending from the moment it is proposed, so the coordinator may
    /// let go of the shard before the answer.
    Apply {
        changes: Vec<(Bytes, Version)>,
        revision: i64,
        participants: Vec<u32>,
        /// Set on the home shard of a lease being revoked.
        revoked_lease: Option<i64>,
        durable: oneshot::Sender<Result<(), KvError>>,
    },
}

/// Most commands taken from the channel in one turn; they share one fsync.
const MAX_COMMANDS_PER_TURN: usize = 1024;

impl DeferredAnswer {
    /// Answers with `error`: the entry was not applied as proposed.
    fn fail(self, error: KvError) {
        match self {
            DeferredAnswer::Write { reply, pending, .. } => {
                // The sequencer stepped back below this revision when the
                // loss was found (`apply`), so releasing it exposes
                // nothing: the group's leader assigns it to another write.
                // With several groups per member the lead member decides
                // such revisions instead (design §6); not built yet.
                if let Some(pending) = pending {
                    pending.complete();
                }
                let _ = reply.send(Err(error));
            }
            // A compaction not logged here did not happen; its fan-out
            // reports the shard unavailable.
            DeferredAnswer::Compacted { .. } => {}
            DeferredAnswer::LeaseGranted { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            DeferredAnswer::Part { done } | DeferredAnswer::Voided { done } => {
                let _ = done.send(Err(error));
            }
        }
    }
}

/// An answer that may be given only once its entry is applied, with the
/// entry's log index.
struct DeferredReply {
    /// The entry's log index and term: after a change of leader the same
    /// index may hold another entry, so both name it.
    entry: (u64, u64),
    answer: DeferredAnswer,
}

enum DeferredAnswer {
    Write {
        reply: WriteReply,
        outcome: WriteOutcome,
        /// `None` for a write that logs without taking a revision (a lease
        /// revocation with no keys).
        pending: Option<PendingRevision>,
    },
    Compacted {
        done: oneshot::Sender<()>,
        /// Answer once the history is freed, not once the record applies.
        physical: bool,
    },
    LeaseGranted {
        id: i64,
        reply: oneshot::Sender<Result<(), KvError>>,
    },
    /// A multi-shard write's part.
    Part {
        done: oneshot::Sender<Result<(), KvError>>,
    },
    /// The lead member's void decision.
    Voided {
        done: oneshot::Sender<Result<(), KvError>>,
    },
}

/// A shard's worker: the only code that writes the shard's memtable, and
/// the owner of its Raft group and WAL.
///
/// Each turn of its loop takes every command already queued (up to
/// [`MAX_COMMANDS_PER_TURN`]), evaluates each against the newest state (the
/// memtable plus what this shard proposed and has not applied yet,
/// `pending`) and proposes it to Raft; then one persist makes the whole
/// turn durable with one write and one fdatasync, Raft commits it, and the
/// worker applies the committed entries in log order (`apply`: the only
/// way the memtable changes) before it completes revisions and replies.
pub struct ShardWorker<D: StorageDevice> {
    shard: ShardId,
    space: std::sync::Arc<KeySpace>,
    /// The owning core's revision slot, shared with the core's other tasks.
    slot: RevisionSlot,
    group: RaftGroup<D>,
    snapshots: SnapshotSchedule,
    /// The owning core's metrics (WAL sync times, hop latency).
    metrics: std::rc::Rc<CoreMetrics>,
    /// The compaction being freed in steps between turns, if any.
    compaction: Option<compacting::ShardCompaction>,
    /// Whether the WAL could allocate its next segment, and what a full
    /// disk refuses (`disk_space`).
    disk: disk_space::DiskSpaceGuard,
    /// Versions proposed and not applied yet: the next write is evaluated
    /// against them, since the memtable changes only on apply.
    pending: PendingVersions,
    /// Commands proposed and not applied yet, with their log index and
    /// term, so applying this member's own entries needs no decoding.
    proposals: std::collections::VecDeque<(u64, u64, ShardCommandRecord)>,
    /// Indexes of proposals another leader's entries replaced since the
    /// last replies: their requesters get "leader changed".
    lost: std::collections::BTreeSet<(u64, u64)>,
    /// Proposals a leader's snapshot removed from this member's log
    /// (`snapshot_install`): whether they were committed elsewhere is
    /// unknown, so their requesters get "request timed out".
    fate_unknown: std::collections::BTreeSet<(u64, u64)>,
    /// Where the group's messages for other members go.
    peers: Box<dyn peers::PeerOutbox>,
    /// Whether this member led the group when last looked at.
    leading: bool,
    /// A new leader takes writes only once it applied its log through the
    /// entry that began its term: before that, the memtable may lack
    /// entries of earlier terms that will still commit.
    ready_to_lead_at: u64,
    /// On a cluster member, the member's role shared by its workers
    /// (`lead_member`): only the lead member takes writes. `None` alone.
    role: Option<std::sync::Arc<lead_member::MemberRole>>,
    /// Linearizable reads waiting on the group's ReadIndex.
    reads: read_index::ReadIndexWaits,
    /// Member-level changes proposed here (group 0) waiting to apply.
    conf_waits: conf_change::ConfChangeWaits,
}

impl<D: StorageDevice> ShardWorker<D> {
    pub fn new(
        shard: ShardId,
        space: std::sync::Arc<KeySpace>,
        slot: RevisionSlot,
        group: RaftGroup<D>,
        snapshots: SnapshotSchedule,
        metrics: std::rc::Rc<CoreMetrics>,
        disk: disk_space::DiskSpaceGuard,
    ) -> Self {
        let mut worker = Self {
            shard,
            space,
            slot,
            group,
            snapshots,
            metrics,
            compaction: None,
            disk,
            pending: PendingVersions::default(),
            proposals: Default::default(),
            lost: Default::default(),
            fate_unknown: Default::default(),
            peers: Box::new(peers::NoPeers),
            leading: false,
            ready_to_lead_at: 0,
            role: None,
            reads: Default::default(),
            conf_waits: Default::default(),
        };
        worker.note_role();
        worker
    }

    /// The worker of a group with other members: its messages go to
    /// `peers`.
    pub fn with_peers(mut self, peers: Box<dyn peers::PeerOutbox>) -> Self {
        self.peers = peers;
        self
    }

    /// The worker of a cluster member's group: writes are taken only while
    /// the member is the lead member.
    pub fn with_role(mut self, role: std::sync::Arc<lead_member::MemberRole>) -> Self {
        self.role = Some(role);
        self.note_role();
        self
    }

    /// Notes a change of role. A member that stops leading forgets what
    /// it had pending (it evaluates nothing as a follower); one that
    /// starts leading waits to apply its log through its term's first
    /// entry before it takes writes.
    fn note_role(&mut self) {
        let leading = self.group.is_leader();
        if leading && !self.leading {
            self.ready_to_lead_at = self.group.last_index();
            self.forget_replaced_proposals();
        }
        if !leading && self.leading {
            self.pending = PendingVersions::default();
        }
        self.leading = leading;
        self.reads.leader_is(self.group.leader_id());
        if let Some(role) = &self.role {
            role.note_group(self.shard, self.group.leader_id(), self.leads_caught_up());
        }
    }

    /// On becoming leader, this member's log is final through its last
    /// index: its earlier proposals past it, or with another term at their
    /// index, were replaced by another leader's entries and are lost (the
    /// new ones it proposes take indexes after its last). Kept, they would
    /// be mistaken for the new proposals at their indexes.
    fn forget_replaced_proposals(&mut self) {
        let last = self.group.last_index();
        let group = &self.group;
        let lost = &mut self.lost;
        self.proposals.retain(|(index, term, _)| {
            let kept = *index <= last && group.term_of(*index) == Some(*term);
            if !kept {
                lost.insert((*index, *term));
            }
            kept
        });
    }

    /// Whether this member leads the group and applied its log through
    /// its term's first entry.
    fn leads_caught_up(&self) -> bool {
        self.leading
            && self.group.can_propose()
            && self.group.applied_index() >= self.ready_to_lead_at
    }

    /// Whether this member may evaluate and propose writes now.
    fn takes_writes(&self) -> bool {
        self.leads_caught_up() && self.role.as_ref().is_none_or(|role| role.takes_writes())
    }

    /// On a cluster member, hands this group's leadership to the lead
    /// member if this member leads it and is not the lead member.
    fn follow_lead_member(&mut self) {
        let Some(role) = &self.role else {
            return;
        };
        let lead = role.lead_member();
        if !self.leading || lead == 0 {
            return;
        }
        let moving_to = role.moving_to();
        if lead == role.member_id && moving_to != 0 {
            // MoveLeader: every group, group 0 with the others.
            self.group.transfer_leader(moving_to);
        } else if lead == role.member_id && !role.is_stopping() {
            self.group.keep_leadership();
        } else if self.shard != 0 && lead != role.member_id {
            self.group.transfer_leader(lead);
        }
        // A transfer begun or given up changes what this member may do.
        self.note_role();
    }

    /// The worker loop. Returns when every sender is gone (shutdown).
    ///
    /// While a compaction is being freed, each iteration waits for a
    /// command at most a short pause (running a turn if one came), then
    /// takes one bounded compaction step; otherwise it waits for the next
    /// command.
    pub async fn run(mut self, commands: flume::Receiver<ShardCommand>) {
        // A full disk at startup: up read-only, with the alarm raised.
        self.keep_spare_ready().await;
        let mut deferred = Vec::new();
        loop {
            let first = if self.compaction.is_some() {
                match compacting::pause(&commands).await {
                    compacting::Paused::Command(command) => Some(command),
                    compacting::Paused::Elapsed => None,
                    compacting::Paused::Closed => return,
                }
            } else {
                match commands.recv_async().await {
                    Ok(command) => Some(command),
                    Err(_) => return,
                }
            };
            if let Some(first) = first {
                self.turn(first, &commands, &mut deferred).await;
            }
            if self.compaction.is_some() {
                self.compaction_step();
            }
        }
    }

    /// One turn: `first` and the commands queued behind it, then one
    /// persist for all of them, then their replies.
    async fn turn(
        &mut self,
        first: ShardCommand,
        commands: &flume::Receiver<ShardCommand>,
        deferred: &mut Vec<DeferredReply>,
    ) {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(command) = next.take() {
            self.handle(command, deferred).await;
            taken += 1;
            if taken < MAX_COMMANDS_PER_TURN {
                next = commands.try_recv().ok();
            }
        }
        self.persist_and_reply(deferred).await;
        self.keep_spare_ready().await;
        self.maybe_snapshot();
    }

    /// Prepares the WAL's next segment if it has none (at most once per
    /// `disk_space::RETRY_INTERVAL` while the disk is full). Startup calls
    /// it before the node serves, so a full disk raises NOSPACE before the
    /// first request.
    pub async fn keep_spare_ready(&mut self) {
        let now = std::time::Instant::now();
        if self.group.has_spare() || !self.disk.attempt_due(now) {
            return;
        }
        match self.group.prepare_spare().await {
            Ok(()) => self.disk.spare_prepared(),
            Err(error) => self.disk.spare_refused(&error, now),
        }
    }

    /// Whether a full disk refuses a write (`adds_data`: it may store new
    /// data). Tries for space first if a retry is due, so writes resume
    /// as soon as space returns.
    async fn refused_for_space(&mut self, adds_data: bool) -> bool {
        if !self
            .disk
            .refuses(adds_data, self.group.room_in_active_segment())
        {
            return false;
        }
        self.keep_spare_ready().await;
        let refused = self
            .disk
            .refuses(adds_data, self.group.room_in_active_segment());
        if refused {
            self.disk.remind();
        }
        refused
    }

    /// Frees one bounded step of the running compaction.
    fn compaction_step(&mut self) {
        let memtable = self.space.memtable(self.shard);
        let finished = self
            .compaction
            .as_mut()
            .is_some_and(|compaction| compaction.step(memtable));
        if finished && let Some(compaction) = self.compaction.take() {
            compaction.finish(self.shard);
        }
    }

    /// Starts (or raises) the stepwise freeing of history once a
    /// compaction record is applied; the first step runs after this turn.
    fn start_compaction(&mut self, revision: i64) {
        match &mut self.compaction {
            Some(running) => running.raise_to(revision),
            None => self.compaction = Some(compacting::ShardCompaction::new(revision)),
        }
    }

    async fn handle(&mut self, command: ShardCommand, deferred: &mut Vec<DeferredReply>) {
        self.group
            .stats()
            .commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match command {
            ShardCommand::Probe { reply } => {
                // Fault injection for tests: `return(N)` stalls shard N's
                // core for 5 s at every probe, as a hung disk or a runaway
                // task would.
                #[cfg(debug_assertions)]
                if let Some(target) = fail::eval("shard-worker-stall", |shard| shard)
                    && target.is_none_or(|shard| shard == self.shard.to_string())
                {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                }
                let _ = reply.send(());
            }
            ShardCommand::Write {
                request,
                reply,
                queued_at,
            } => {
                self.metrics.hop(queued_at.elapsed());
                if !self.takes_writes() {
                    let _ = reply.send(Err(KvError::NotLeader));
                    return;
                }
                if self.refused_for_space(request.may_add_data()).await {
                    let _ = reply.send(Err(KvError::NoSpace));
                    return;
                }
                match run_write(&self.space, &self.slot, request, Some(&self.pending)) {
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                    // Nothing changed: nothing to log, answer now.
                    Ok((outcome, changes, None)) if changes.is_empty() => {
                        let _ = reply.send(Ok(outcome));
                    }
                    Ok((outcome, changes, pending)) => {
                        self.pending.propose(changes.revision, &changes.changes);
                        if let Some(lease) = changes.revoked_lease {
                            self.pending.revoke_lease(lease);
                        }
                        let entry = self.propose(ShardCommandRecord::for_change_set(&changes));
                        deferred.push(DeferredReply {
                            entry,
                            answer: DeferredAnswer::Write {
                                reply,
                                outcome,
                                pending,
                            },
                        });
                    }
                }
            }
            ShardCommand::GrantLease {
                id,
                ttl_seconds,
                reply,
            } => {
                let granting = deferred.iter().any(|deferred| {
                    matches!(deferred.answer, DeferredAnswer::LeaseGranted { id: pending, .. } if pending == id)
                });
                if !self.takes_writes() {
                    let _ = reply.send(Err(KvError::NotLeader));
                    return;
                }
                if granting || self.space.leases().exists(id) {
                    let _ = reply.send(Err(KvError::LeaseExists));
                    return;
                }
                if self.refused_for_space(true).await {
                    let _ = reply.send(Err(KvError::NoSpace));
                    return;
                }
                let entry = self.propose(ShardCommandRecord::lease_grant(id, ttl_seconds));
                deferred.push(DeferredReply {
                    entry,
                    answer: DeferredAnswer::LeaseGranted { id, reply },
                });
            }
            ShardCommand::Hold { held, commands } => {
                // What this shard already accepted becomes durable and is
                // answered before it stops for the coordinator.
                self.persist_and_reply(deferred).await;
                if !self.takes_writes() {
                    let _ = held.send(Err(KvError::NotLeader));
                    return;
                }
                if held.send(Ok(self.pending.clone())).is_err() {
                    return;
                }
                while let Ok(HeldCommand::Apply {
                    changes,
                    revision,
                    participants,
                    revoked_lease,
                    durable,
                }) = commands.recv_async().await
                {
                    self.pending.propose(
                        revision,
                        changes.iter().map(|(key, version)| (key, version)),
                    );
                    if let Some(lease) = revoked_lease {
                        self.pending.revoke_lease(lease);
                    }
                    let entry = self.propose(ShardCommandRecord::for_changes(
                        revision,
                        participants,
                        changes.iter().map(|(key, version)| (key, version)),
                        revoked_lease,
                    ));
                    deferred.push(DeferredReply {
                        entry,
                        answer: DeferredAnswer::Part { done: durable },
                    });
                    // Alone, the part commits and is answered here; in a
                    // cluster once a quorum has it, after the coordinator
                    // let go.
                    self.persist_and_reply(deferred).await;
                }
            }
            ShardCommand::Compact {
                revision,
                physical,
                done,
            } => {
                if !self.takes_writes() {
                    // Dropping `done` fails the compaction's fan-out.
                    return;
                }
                let entry = self.propose(ShardCommandRecord::compaction(revision));
                deferred.push(DeferredReply {
                    entry,
                    answer: DeferredAnswer::Compacted { done, physical },
                });
            }
            ShardCommand::Snapshot { done } => self.snapshots.requested.push(done),
            ShardCommand::Peer(message) => {
                let shard_count = self.space.shard_map().shard_count();
                if let Err(error) =
                    snapshot_install::check_snapshot(&message, self.shard, shard_count)
                {
                    tracing::warn!(shard = self.shard, from = message.from, %error, "refusing the leader's snapshot");
                    return;
                }
                if let Err(error) = self.group.step(*message) {
                    tracing::debug!(shard = self.shard, %error, "a peer's Raft message was refused");
                }
                self.note_role();
            }
            ShardCommand::SnapshotReport { to, finished } => {
                self.group.report_snapshot(to, finished);
            }
            ShardCommand::Tick => {
                self.group.tick();
                if self.group.take_snapshot_wanted() {
                    self.snapshots.request();
                    self.maybe_snapshot();
                }
                self.note_role();
                self.follow_lead_member();
                self.converge_membership();
            }
            ShardCommand::ChangeMembers {
                change,
                strict,
                done,
            } => {
                self.propose_member_change(change, strict, done);
            }
            ShardCommand::HandOffLeadership => {
                if let Some(role) = &self.role {
                    role.stop_leading();
                }
                if let Some(follower) = self.group.most_caught_up_follower() {
                    self.group.transfer_leader(follower);
                    self.note_role();
                }
            }
            ShardCommand::ReadIndex { done } => {
                let member = self.role.as_ref().map_or(0, |role| role.member_id);
                let context = self.reads.ask(member, done);
                self.group.read_index(context);
            }
            ShardCommand::Void { from, to, done } => {
                if !self.leads_caught_up() {
                    let _ = done.send(Err(KvError::NotLeader));
                    return;
                }
                let entry = self.propose(ShardCommandRecord::void(from, to));
                deferred.push(DeferredReply {
                    entry,
                    answer: DeferredAnswer::Voided { done },
                });
            }
            ShardCommand::SnapshotWritten { raft_index, result } => {
                // Releasing the log re-logs the hard state; answer what is
                // pending first so those replies do not wait behind it.
                self.persist_and_reply(deferred).await;
                self.snapshot_written(raft_index, result).await;
            }
        }
    }

    /// Appends `record` to the shard's log; returns its index and term.
    fn propose(&mut self, record: ShardCommandRecord) -> (u64, u64) {
        match self.group.propose(log_entry::encode(&record)) {
            Ok(index) => {
                self.snapshots.logged_entry(index, &record);
                let term = self.group.term_of(index).unwrap_or_default();
                self.proposals.push_back((index, term, record));
                (index, term)
            }
            Err(error) => {
                // Its revision is taken and its versions are pending: without
                // its log entry the shard would diverge from its log.
                tracing::error!(shard = self.shard, %error, "cannot append to the shard's Raft log; aborting");
                std::process::abort();
            }
        }
    }

    /// Applies a committed entry: the only way the shard's state changes.
    /// This member's own proposals are applied from what it proposed; any
    /// other entry is decoded from the log.
    fn apply(&mut self, entry: &raft::eraftpb::Entry, now: std::time::Instant) {
        // A proposal at or below this index in another term was replaced
        // by another leader's entry: its write did not happen.
        // Their revisions were never readable: on a cluster member the
        // readable prefix stops below a revision until every part of it is
        // applied (`store::applied_revisions`), whatever its pending state.
        while let Some((index, term, _)) = self.proposals.front()
            && (*index < entry.index || (*index == entry.index && *term != entry.term))
        {
            self.lost.insert((*index, *term));
            self.proposals.pop_front();
        }
        let own = self
            .proposals
            .front()
            .is_some_and(|(index, term, _)| *index == entry.index && *term == entry.term);
        let command = if own {
            self.proposals.pop_front().map(|(_, _, command)| command)
        } else if entry.entry_type == raft::eraftpb::EntryType::EntryConfChange {
            self.apply_conf_change(entry);
            None
        } else if entry.data.is_empty() {
            // A new leader's empty entry.
            None
        } else {
            match <ShardCommandRecord as prost::Message>::decode(&entry.data[..]) {
                Ok(command) => Some(command),
                Err(error) => {
                    // Skipping a committed entry would fork this shard
                    // from its log and from every other member.
                    tracing::error!(shard = self.shard, index = entry.index, %error, "a committed entry does not decode; aborting");
                    std::process::abort();
                }
            }
        };
        let Some(command) = command else {
            return;
        };
        if !own {
            // Another leader's entry: it counts toward this member's own
            // snapshots, as proposals do, so a follower's log is released
            // too (the snapshot covers it once its revision is readable).
            self.snapshots.logged_entry(entry.index, &command);
        }
        apply::apply_command(&self.space, self.shard, &command, now);
        for change in &command.changes {
            self.pending.applied(command.revision, &change.key);
        }
        if command.lease_revoke != 0 {
            self.pending.lease_revocation_applied(command.lease_revoke);
        }
        if command.compact_revision > 0 {
            self.start_compaction(command.compact_revision);
        }
    }

    /// One write + one fdatasync for everything proposed. A failed write or
    /// fsync is fatal: the kernel may have dropped the dirty pages, so a
    /// retry could report success for data that is gone.
    /// Makes everything proposed durable, then applies what Raft
    /// committed, in log order.
    async fn persist_and_apply(&mut self) {
        let started = std::time::Instant::now();
        let persisted = match self.group.persist().await {
            Ok(persisted) => persisted,
            Err(error) => {
                tracing::error!(shard = self.shard, %error, "WAL write or fdatasync failed; aborting (an fsync is never retried)");
                std::process::abort();
            }
        };
        if persisted.entries > 0 {
            self.metrics
                .wal_synced(persisted.syncing, started.elapsed(), persisted.entries);
        }
        for message in persisted.messages {
            self.peers.send(message);
        }
        for (context, index) in &persisted.read_states {
            self.reads.answered(context, *index);
        }
        if let Some(snapshot) = persisted.installed {
            self.install_leader_snapshot(snapshot).await;
        }
        let now = std::time::Instant::now();
        for entry in &persisted.committed {
            self.apply(entry, now);
        }
        if let Some(last) = persisted.committed.last() {
            self.group.applied_through(last.index);
        }
        self.settle_member_changes(self.group.applied_index());
        self.reads.applied_through(self.group.applied_index());
        self.note_role();
    }

    /// Persists and applies, then answers every deferred request whose
    /// entry is applied (with one voter: all of them).
    async fn persist_and_reply(&mut self, deferred: &mut Vec<DeferredReply>) {
        if deferred.is_empty() && self.proposals.is_empty() && !self.group.has_ready() {
            return;
        }
        self.persist_and_apply().await;
        let applied = self.group.applied_index();
        // Not always in index order: proposals of an earlier term may wait
        // beside a later term's at the same or lower indexes.
        let answerable: Vec<DeferredReply> = deferred
            .extract_if(.., |deferred| deferred.entry.0 <= applied)
            .collect();
        for deferred in answerable {
            if self.lost.remove(&deferred.entry) {
                deferred.answer.fail(KvError::LeaderChanged);
                continue;
            }
            if self.fate_unknown.remove(&deferred.entry) {
                deferred.answer.fail(KvError::RequestTimedOut);
                continue;
            }
            match deferred.answer {
                DeferredAnswer::Write {
                    reply,
                    outcome,
                    pending,
                } => {
                    if let Some(pending) = pending {
                        pending.complete();
                    }
                    // The requester may have gone away; the write stands.
                    let _ = reply.send(Ok(outcome));
                }
                DeferredAnswer::Compacted {
                    done,
                    physical: true,
                } if self.compaction.is_some() => {
                    if let Some(compaction) = &mut self.compaction {
                        compaction.notify_when_freed(done);
                    }
                }
                DeferredAnswer::Compacted { done, .. } => {
                    let _ = done.send(());
                }
                DeferredAnswer::LeaseGranted { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                DeferredAnswer::Part { done } | DeferredAnswer::Voided { done } => {
                    let _ = done.send(Ok(()));
                }
            }
        }
    }
}

/// Prepares and executes `request` against the current state, taking a
/// revision only if it changes something. The caller must hold every shard
/// the request touches and apply the returned changes before dropping the
/// pending revision.
pub fn run_write(
    space: &KeySpace,
    slot: &RevisionSlot,
    request: WriteRequest,
    pending: Option<&PendingVersions>,
) -> Result<(WriteOutcome, ChangeSet, Option<PendingRevision>), KvError> {
    let lease_exists = |lease: i64| {
        space.leases().exists(lease)
            && !pending.is_some_and(|pending| pending.is_lease_revoked(lease))
    };
    let mut context = WriteContext {
        space,
        begin_revision: space.clock().watermark(),
        // The shards this write touches are held still: read their newest state.
        read_revision: write::LATEST,
        lease_exists: &lease_exists,
        pending,
    };
    let prepared = write::prepare(&context, request)?;
    let pending = prepared.changes_something.then(|| slot.take());
    let revision = pending.as_ref().map(PendingRevision::revision);
    if let Some(revision) = revision {
        context.begin_revision = revision - 1;
    }
    let (response, changes) = write::execute(&context, &prepared, revision);
    Ok((WriteOutcome { response, revision }, changes, pending))
}
