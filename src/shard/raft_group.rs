//! One shard's Raft group: a raft-rs `RawNode` whose log lives in the
//! shard's WAL and snapshot files (read through `ShardLogStorage`).
//!
//! The write path is Raft's even with a single member: propose → persist
//! (one WAL write + one fdatasync for everything proposed since the last
//! persist) → commit → apply → reply. With one voter an entry is committed
//! the moment it is durable on this node. With several, the caller ticks
//! the group, steps it with the peers' messages and sends the messages
//! `persist` returns; the path is the same.

use std::sync::atomic::{AtomicU64, Ordering};

use raft::eraftpb::{ConfState, Entry, HardState, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use thiserror::Error;

use super::frontier::DurableFrontier;
use super::log_entry::{WalRecord, encode};
use super::log_storage::ShardLogStorage;
use crate::store::shard_map::ShardId;
use crate::wal::{ReleasedSegments, StorageDevice, Wal, WalError};

/// This member's Raft ID while MetaStore runs alone.
pub const LOCAL_MEMBER: u64 = 1;

/// Who votes in a group, which of them this member is, and its election
/// timing.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub member_id: u64,
    pub voters: Vec<u64>,
    /// Ticks without a leader before this member campaigns, drawn from
    /// this range after every term change (raft-rs's randomized election
    /// timeout). A range of one value makes elections deterministic (tests).
    pub election_ticks: std::ops::Range<usize>,
    /// Raft's pre-vote (`--pre-vote`): a member cut off and back does not
    /// disturb the others with a higher term. Only matters with several
    /// voters.
    pub pre_vote: bool,
}

impl GroupConfig {
    /// MetaStore alone: one voter, which leads at once.
    pub fn single_voter() -> Self {
        Self {
            member_id: LOCAL_MEMBER,
            voters: vec![LOCAL_MEMBER],
            election_ticks: 10..20,
            pre_vote: true,
        }
    }

    fn is_single_voter(&self) -> bool {
        self.voters.len() == 1
    }

    /// The bootstrap configuration: every voter, no learner.
    pub fn conf_state(&self) -> ConfState {
        ConfState::from((self.voters.clone(), vec![]))
    }
}

/// Entries the in-memory mirror keeps behind the last one (etcd's
/// `SnapshotCatchUpEntries`): enough for a follower that is slightly behind;
/// one further behind gets a snapshot. Older entries stay in the WAL until a
/// snapshot releases them, so trimming the mirror loses nothing.
pub const MIRROR_CATCH_UP_ENTRIES: u64 = 5_000;

#[derive(Debug, Error)]
pub enum GroupError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("shard did not become Raft leader after campaigning")]
    NotLeader,
    /// The leader's snapshot could not be made durable here.
    #[error("storing the leader's snapshot through Raft index {index}: {source}")]
    StoringSnapshot { index: u64, source: std::io::Error },
    /// A configuration could not be recorded durably.
    #[error("recording the group's configuration: {0}")]
    RecordingConfiguration(String),
}

/// Counters for one shard's log, written only by its core.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Raft entries made durable.
    pub entries: AtomicU64,
    /// fdatasync calls on the WAL (one per persisted batch).
    pub fsyncs: AtomicU64,
    /// Commands the shard's worker has taken (every kind), for the
    /// per-shard request metric. Written by the owning core only.
    pub commands: AtomicU64,
    /// The group's commit index after its last persist (for `Status`).
    pub committed_index: AtomicU64,
    /// The group's applied index after its last persist (for `Status`).
    pub applied_index: AtomicU64,
    /// The group's Raft term after its last persist (a cluster member's
    /// `Status` and response headers report group 0's).
    pub term: AtomicU64,
}

impl LogStats {
    pub fn entries_per_fsync(&self) -> f64 {
        let fsyncs = self.fsyncs.load(Ordering::Relaxed);
        if fsyncs == 0 {
            0.0
        } else {
            self.entries.load(Ordering::Relaxed) as f64 / fsyncs as f64
        }
    }
}

/// What one [`RaftGroup::persist`] made durable, and what Raft committed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Persisted {
    pub entries: usize,
    /// Time spent in the WAL's write + fdatasync.
    pub syncing: std::time::Duration,
    /// Entries Raft committed, in log order, for the caller to apply and
    /// then report with [`RaftGroup::applied_through`]. Nothing may change
    /// the shard's state before its entry is here.
    pub committed: Vec<Entry>,
    /// Messages for the group's other members, to send now: everything is
    /// durable that they may depend on (a vote, an acknowledged append).
    pub messages: Vec<Message>,
    /// Answers to `read_index`: the request's context and the commit
    /// index a read asked for then must wait to have applied.
    pub read_states: Vec<(Vec<u8>, u64)>,
    /// A snapshot from the group's leader that replaced the log (durable
    /// in the snapshot directory, the log restored after it): the caller
    /// must replace the shard's state with it before applying `committed`.
    pub installed: Option<raft::eraftpb::Snapshot>,
}

pub struct RaftGroup<D: StorageDevice> {
    node: RawNode<ShardLogStorage>,
    wal: Wal<D>,
    /// This group's shard, as the frontier names it.
    shard: ShardId,
    /// Every shard's durability: read into each frame this group writes
    /// and updated after each of its syncs, so recovery can prove another
    /// shard's damaged frame durable (`shard::frontier`).
    frontier: std::sync::Arc<DurableFrontier>,
    stats: std::sync::Arc<LogStats>,
    /// `(raft index, WAL record sequence)` of each entry written since the
    /// last snapshot, so a snapshot at an index can release the WAL below it.
    entry_records: std::collections::VecDeque<(u64, u64)>,
    /// Ticks since the group started, and the tick each other member was
    /// last heard from: whether a member is connected now, for the checks
    /// that keep a membership change from costing the quorum (raft-rs's
    /// own `recent_active` is cleared every election timeout).
    ticks: u64,
    heard_at_tick: std::collections::HashMap<u64, u64>,
}

/// The in-memory log mirror for a group recovered from a snapshot covering
/// `(index, term)` (or none) and the WAL `entries` after it, whose
/// configuration after applying what is committed is `conf_state`. With a single
/// voter every durable entry is committed, so the commit index is the last
/// entry's; with several, only what the logged hard state says was
/// committed is (the rest may yet be replaced by a new leader's entries).
pub fn log_mirror(
    snapshot_position: Option<(u64, u64)>,
    entries: &[Entry],
    hard_state: Option<HardState>,
    config: &GroupConfig,
    conf_state: ConfState,
) -> Result<MemStorage, raft::Error> {
    let storage = MemStorage::new_with_conf_state(conf_state.clone());
    {
        let mut writable = storage.wl();
        if let Some((index, term)) = snapshot_position {
            let mut snapshot = raft::eraftpb::Snapshot::default();
            let metadata = snapshot.mut_metadata();
            metadata.index = index;
            metadata.term = term;
            metadata.set_conf_state(conf_state.clone());
            writable.apply_snapshot(snapshot)?;
        }
        writable.append(entries)?;
        writable.set_conf_state(conf_state);
        // The last hard-state record may predate the newest snapshot (the
        // process died after writing the snapshot, before re-logging the
        // hard state), and Raft requires snapshot index <= commit <= last
        // index. A snapshot covers only committed entries.
        let mut hard_state = hard_state.unwrap_or_default();
        let (last_index, last_term) = entries
            .last()
            .map(|last| (last.index, last.term))
            .or(snapshot_position)
            .unwrap_or((0, 0));
        let snapshot_index = snapshot_position.map_or(0, |(index, _)| index);
        let committed_through = if config.is_single_voter() {
            last_index
        } else {
            snapshot_index
        };
        hard_state.commit = hard_state.commit.max(committed_through).min(last_index);
        hard_state.term = hard_state.term.max(last_term);
        writable.set_hardstate(hard_state);
    }
    Ok(storage)
}

impl<D: StorageDevice> RaftGroup<D> {
    /// Starts the group on a recovered log (everything committed in it is
    /// applied already). A single voter campaigns until it leads; a member
    /// of several starts as a follower and waits for ticks and messages.
    /// `entry_records` are `(raft index, WAL sequence)` of the recovered
    /// entries, oldest first.
    pub async fn start(
        storage: ShardLogStorage,
        wal: Wal<D>,
        entry_records: std::collections::VecDeque<(u64, u64)>,
        durability: (ShardId, std::sync::Arc<DurableFrontier>),
        stats: std::sync::Arc<LogStats>,
        group_config: &GroupConfig,
    ) -> Result<Self, GroupError> {
        let (shard, frontier) = durability;
        let applied = storage.mirror().rl().hard_state().commit;
        let several = !group_config.is_single_voter();
        let config = Config {
            id: group_config.member_id,
            election_tick: group_config.election_ticks.start,
            min_election_tick: group_config.election_ticks.start,
            max_election_tick: group_config.election_ticks.end,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // etcd's defaults for clusters: a partitioned member cannot
            // disturb the others with higher terms, and a leader that
            // loses its quorum steps down.
            pre_vote: several && group_config.pre_vote,
            check_quorum: several,
            ..Default::default()
        };
        config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&config, storage, &logger)?;
        let mut group = Self {
            node,
            wal,
            shard,
            frontier,
            stats,
            entry_records,
            ticks: 0,
            heard_at_tick: std::collections::HashMap::new(),
        };
        if several {
            return Ok(group);
        }
        group.node.campaign()?;
        let persisted = group.persist().await?;
        // Only the new leader's empty entry: the recovered log was applied
        // before the group started.
        debug_assert!(
            persisted
                .committed
                .iter()
                .all(|entry| entry.data.is_empty())
        );
        if let Some(last) = persisted.committed.last() {
            group.applied_through(last.index);
        }
        if group.node.raft.state != StateRole::Leader {
            return Err(GroupError::NotLeader);
        }
        Ok(group)
    }

    pub fn stats(&self) -> &std::sync::Arc<LogStats> {
        &self.stats
    }

    /// Advances the group's logical clock by one tick (heartbeats,
    /// elections).
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.node.tick();
    }

    /// Hands the group a message from a peer. A message Raft refuses (a
    /// local type, a response from an unknown peer) changes nothing.
    pub fn step(&mut self, message: Message) -> Result<(), GroupError> {
        self.heard_at_tick.insert(message.from, self.ticks);
        Ok(self.node.step(message)?)
    }

    /// Whether Raft wanted a snapshot newer than the newest (one naming a
    /// member added since); forgets it did.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.node.store().take_snapshot_wanted()
    }

    /// What this member, leading the group, knows of every member of it:
    /// how much of the log each holds, and whether it was heard from
    /// within an election timeout. Empty on a follower.
    pub fn member_progress(&self) -> Vec<super::member_change::MemberProgress> {
        if !self.is_leader() {
            return Vec::new();
        }
        let own = self.node.raft.id;
        let window = self.node.raft.election_timeout() as u64;
        self.node
            .raft
            .prs()
            .iter()
            .map(|(id, progress)| super::member_change::MemberProgress {
                id: *id,
                matched: progress.matched,
                active: *id == own
                    || self
                        .heard_at_tick
                        .get(id)
                        .is_some_and(|heard| self.ticks - heard <= window),
            })
            .collect()
    }

    /// Whether Raft has anything for `persist` to handle.
    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Raft's ReadIndex: asks the leader (itself, or through a message)
    /// to confirm with a quorum that it still leads and to name its commit
    /// index then; the answer comes out of `persist` with `context`. No
    /// answer comes without a leader: the caller bounds its wait.
    pub fn read_index(&mut self, context: Vec<u8>) {
        self.node.read_index(context);
    }

    /// The group's leader as this member knows it (0: none known).
    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    /// Asks the group, which this member leads, to hand its leadership to
    /// `member` (Raft's leadership transfer: once `member`'s log is caught
    /// up it is told to campaign at once). Ignored by a follower.
    pub fn transfer_leader(&mut self, member: u64) {
        if self.is_leader() && self.node.raft.lead_transferee != Some(member) {
            self.node.transfer_leader(member);
        }
    }

    /// The follower whose log matches the leader's furthest (`None` if
    /// this member does not lead or leads alone): where a leader that is
    /// asked to stop hands its leadership.
    pub fn most_caught_up_follower(&self) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let own = self.node.raft.id;
        let voters = self.node.raft.prs().conf().voters().ids();
        self.node
            .raft
            .prs()
            .iter()
            // A learner cannot lead.
            .filter(|(id, _)| **id != own && voters.contains(**id))
            .max_by_key(|(_, progress)| progress.matched)
            .map(|(id, _)| *id)
    }

    /// Keeps the group's leadership here: a transfer under way is given
    /// up (the lead member it was meant for changed).
    pub fn keep_leadership(&mut self) {
        if self.node.raft.lead_transferee.is_some() {
            self.node.raft.abort_leader_transfer();
        }
    }

    /// Whether a proposal would be taken now: this member leads and is not
    /// handing its leadership on (raft-rs drops proposals meanwhile).
    pub fn can_propose(&self) -> bool {
        self.is_leader() && self.node.raft.lead_transferee.is_none()
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Appends a command to the log (not yet durable); returns its index.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, GroupError> {
        self.node.propose(Vec::new(), data)?;
        Ok(self.node.raft.raft_log.last_index())
    }

    /// Appends a single-member configuration change to the log (not yet
    /// durable); returns its index and term.
    pub fn propose_conf_change(
        &mut self,
        change: raft::eraftpb::ConfChange,
    ) -> Result<(u64, u64), GroupError> {
        self.node.propose_conf_change(Vec::new(), change)?;
        let index = self.node.raft.raft_log.last_index();
        Ok((index, self.node.raft.term))
    }

    /// Whether a configuration change is in the log and not yet applied
    /// (raft-rs takes one at a time: it would turn a second into an empty
    /// entry).
    pub fn has_pending_conf_change(&self) -> bool {
        self.node.raft.pending_conf_index > self.node.raft.raft_log.applied
    }

    /// Applies the committed configuration change at `index`: Raft's
    /// progress tracking, the mirror's configuration and, on a cluster
    /// member, the durable record (group 0 also records the member list).
    pub fn apply_conf_change(
        &mut self,
        index: u64,
        change: &raft::eraftpb::ConfChange,
    ) -> Result<ConfState, GroupError> {
        let conf_state = self.node.apply_conf_change(change)?;
        // A leader that removed itself stays leader in raft-rs, without a
        // progress of its own: the next acknowledgement it counts would
        // panic (`maybe_commit`). It steps down; the others elect a leader.
        let own = self.node.raft.id;
        let still_member = conf_state.voters.contains(&own) || conf_state.learners.contains(&own);
        if !still_member && self.is_leader() {
            let term = self.node.raft.term;
            self.node.raft.become_follower(term, raft::INVALID_ID);
        }
        self.node
            .store()
            .mirror()
            .wl()
            .set_conf_state(conf_state.clone());
        if let Some((configurations, group)) = self.node.store().configurations() {
            let members = (*group == 0)
                .then(|| super::conf_change::apply_to_members(&configurations.members(), change));
            configurations
                .record(*group, index, &conf_state, members)
                .map_err(|error| GroupError::RecordingConfiguration(error.to_string()))?;
        }
        Ok(conf_state)
    }

    /// Where this group's configurations are recorded (`None` alone) and
    /// its number among them.
    pub fn configurations(
        &self,
    ) -> Option<(std::sync::Arc<crate::membership::Configurations>, usize)> {
        self.node.store().configurations().cloned()
    }

    /// The index of the last entry applied.
    pub fn applied_index(&self) -> u64 {
        self.node.raft.raft_log.applied
    }

    /// The index of the last entry in the log.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// The term of the entry at `index`, if the log still has it.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        self.node.raft.raft_log.term(index).ok()
    }

    /// Forgets the log through `index`, which a durable snapshot now covers:
    /// re-logs the hard state (its last record may sit in a segment about to
    /// go), stops retaining the WAL segments below the first entry after
    /// `index` and hands them back for the caller to remove, and trims the
    /// in-memory mirror.
    pub async fn compact_through(&mut self, index: u64) -> Result<ReleasedSegments, GroupError> {
        let hard_state = self.node.raft.hard_state();
        self.begin_frame();
        self.wal
            .append(&encode(&WalRecord::hard_state(&hard_state)));
        self.sync_wal().await?;
        while self
            .entry_records
            .front()
            .is_some_and(|(entry_index, _)| *entry_index <= index)
        {
            self.entry_records.pop_front();
        }
        let keep_from = self
            .entry_records
            .front()
            .map_or(self.wal.durable_sequence() + 1, |(_, sequence)| *sequence);
        let released = self.wal.detach_segments_before(keep_from)?;
        // MemStorage drops entries *before* the given index, and answers
        // `last_index` from stale snapshot metadata once it holds none: keep
        // the entry at the snapshot point.
        let applied = self.node.raft.raft_log.applied;
        self.node
            .store()
            .mirror()
            .wl()
            .compact(index.min(applied))?;
        Ok(released)
    }

    /// Prepares the WAL's next segment ahead of need; `WalError::NoSpace`
    /// on a full disk (nothing harmed). See `Wal::prepare_spare`.
    pub async fn prepare_spare(&mut self) -> Result<(), WalError> {
        self.wal.prepare_spare().await
    }

    /// Whether the WAL's next segment is ready.
    pub fn has_spare(&self) -> bool {
        self.wal.has_spare()
    }

    /// Bytes the WAL can still take without allocating.
    pub fn room_in_active_segment(&self) -> u64 {
        self.wal.room_in_active_segment()
    }

    /// The device the group's WAL lives on.
    pub fn wal_device(&self) -> &D {
        self.wal.device()
    }

    /// Makes everything proposed so far durable with one WAL write and one
    /// fdatasync, lets Raft commit it, and returns what became durable and
    /// what was committed (with one voter: everything durable). An error
    /// here is fatal: the caller aborts.
    ///
    /// Raft's `Ready` is handled whole: entries and hard state are
    /// persisted before anything is applied or sent; committed entries and
    /// messages go to the caller. A snapshot from the leader (validated
    /// when it arrived, `snapshot_install::check_snapshot`) is written to
    /// the snapshot directory and made durable first, then the log is
    /// restored after it (`LoggedRestore`) in the frame with the hard state.
    pub async fn persist(&mut self) -> Result<Persisted, GroupError> {
        let mut persisted = Persisted::default();
        while self.node.has_ready() {
            let mut ready = self.node.ready();
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                self.store_leader_snapshot(&snapshot)?;
                persisted.installed = Some(snapshot);
            }
            persisted.messages.extend(ready.take_messages());
            persisted.committed.extend(ready.take_committed_entries());
            persisted.read_states.extend(
                ready
                    .take_read_states()
                    .into_iter()
                    .map(|state| (state.request_ctx, state.index)),
            );
            let entries = ready.take_entries();
            if !entries.is_empty() || ready.hs().is_some() {
                self.begin_frame();
            }
            for entry in &entries {
                let sequence = self.wal.append(&encode(&WalRecord::entry(entry)));
                self.entry_records.push_back((entry.index, sequence));
            }
            if let Some(hard_state) = ready.hs() {
                self.wal.append(&encode(&WalRecord::hard_state(hard_state)));
            }
            if self.wal.unsynced_records() > 0 {
                let started = std::time::Instant::now();
                self.sync_wal().await?;
                persisted.syncing += started.elapsed();
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .entries
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
            }
            persisted.entries += entries.len();
            {
                let mirror = self.node.store().mirror();
                let mut writable = mirror.wl();
                writable.append(&entries)?;
                if let Some(hard_state) = ready.hs() {
                    writable.set_hardstate(hard_state.clone());
                }
            }
            persisted.messages.extend(ready.take_persisted_messages());
            let mut light = self.node.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.node.store().mirror().wl().mut_hard_state().commit = commit;
            }
            persisted.messages.extend(light.take_messages());
            persisted.committed.extend(light.take_committed_entries());
        }
        self.trim_mirror()?;
        let log = &self.node.raft.raft_log;
        self.stats
            .committed_index
            .store(log.committed, Ordering::Relaxed);
        self.stats
            .term
            .store(self.node.raft.term, Ordering::Relaxed);
        Ok(persisted)
    }

    /// Makes a leader's snapshot durable as the shard's newest snapshot
    /// file, restores the mirror to it and starts a frame whose first
    /// shard record voids every entry logged before (`LoggedRestore`): the
    /// caller's persist syncs it with the hard state. Crash before the
    /// sync: the file is the newest snapshot and covers every entry the
    /// log still has (they are all below it, or stale after it, which the
    /// leader overwrites or truncates, exactly as before the snapshot).
    fn store_leader_snapshot(
        &mut self,
        snapshot: &raft::eraftpb::Snapshot,
    ) -> Result<(), GroupError> {
        let metadata = snapshot.get_metadata();
        let index = metadata.index;
        // Before the file: a crash after it must find the configuration
        // the snapshot's position has (`membership::configurations`).
        if let Some((configurations, group)) = self.node.store().configurations() {
            let members = (*group == 0).then(|| {
                super::conf_change::members_of(&configurations.members(), metadata.get_conf_state())
            });
            configurations
                .record(*group, index, metadata.get_conf_state(), members)
                .map_err(|error| GroupError::RecordingConfiguration(error.to_string()))?;
        }
        let stored = crate::snapshot::SnapshotView::open(&snapshot.data)
            .map_err(|error| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
            })
            .and_then(|view| {
                crate::snapshot::write_snapshot_file(
                    self.node.store().snapshot_directory(),
                    &view.meta(),
                    &snapshot.data,
                    crate::snapshot::WritePace::Unpaced,
                )
            });
        if let Err(source) = stored {
            return Err(GroupError::StoringSnapshot { index, source });
        }
        self.node
            .store()
            .mirror()
            .wl()
            .apply_snapshot(snapshot.clone())?;
        self.entry_records.clear();
        self.begin_frame();
        self.wal
            .append(&encode(&WalRecord::restored(index, metadata.term)));
        Ok(())
    }

    /// Whether the snapshot this group's leader sent member `to` arrived.
    pub fn report_snapshot(&mut self, to: u64, finished: bool) {
        let status = if finished {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
    }

    /// Tells Raft the caller applied every committed entry through `index`.
    pub fn applied_through(&mut self, index: u64) {
        if index > self.node.raft.raft_log.applied {
            self.node.advance_apply_to(index);
            self.stats.applied_index.store(index, Ordering::Relaxed);
        }
    }

    /// Starts a frame with the frontier record if nothing is buffered yet.
    fn begin_frame(&mut self) {
        if self.wal.unsynced_records() == 0 {
            let record = self.frontier.record_for(self.shard);
            self.wal.append(&encode(&record));
        }
    }

    /// One group commit, then publishes how far this log is durable.
    async fn sync_wal(&mut self) -> Result<(), GroupError> {
        self.wal.sync().await?;
        self.frontier
            .publish(self.shard, self.wal.durable_sequence());
        Ok(())
    }

    /// Drops mirrored entries older than the catch-up window once it is
    /// exceeded by a tenth (so trimming is amortized, not per persist).
    fn trim_mirror(&mut self) -> Result<(), GroupError> {
        let last = self.node.raft.raft_log.last_index();
        let first = raft::Storage::first_index(self.node.store().mirror())?;
        let window = last.saturating_sub(first);
        if window > MIRROR_CATCH_UP_ENTRIES + MIRROR_CATCH_UP_ENTRIES / 10 {
            let applied = self.node.raft.raft_log.applied;
            // Keep the entry at the cut: MemStorage answers `last_index`
            // from stale snapshot metadata once it holds no entry.
            let keep_from = (last - MIRROR_CATCH_UP_ENTRIES).min(applied);
            self.node.store().mirror().wl().compact(keep_from)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn persist_trims_the_mirror_to_the_catch_up_window_and_keeps_working() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let options = crate::wal::WalOptions {
                segment_bytes: 4 * 1024 * 1024,
            };
            let (wal, _) = crate::wal::Wal::open(crate::wal::MemoryDevice::new(), options)
                .await
                .expect("wal");
            let mirror = log_mirror(
                None,
                &[],
                None,
                &GroupConfig::single_voter(),
                GroupConfig::single_voter().conf_state(),
            )
            .expect("mirror");
            let storage = ShardLogStorage::new(mirror, std::env::temp_dir());
            let stats = std::sync::Arc::new(LogStats::default());
            let frontier = std::sync::Arc::new(DurableFrontier::new([(wal.log_id(), 0)]));
            let mut group = RaftGroup::start(
                storage,
                wal,
                Default::default(),
                (0, frontier),
                stats.clone(),
                &GroupConfig::single_voter(),
            )
            .await
            .expect("start");
            let total = MIRROR_CATCH_UP_ENTRIES * 2;
            for batch in 0..total / 100 {
                for item in 0..100 {
                    group
                        .propose(format!("entry {batch}-{item}").into_bytes())
                        .expect("propose");
                }
                let persisted = group.persist().await.expect("persist");
                assert_eq!(
                    persisted.committed.len(),
                    100,
                    "one voter commits what is durable"
                );
                group.applied_through(persisted.committed.last().expect("committed").index);
            }
            let mirror = group.node.store().mirror();
            let (first, last) = (
                raft::Storage::first_index(mirror).expect("first"),
                raft::Storage::last_index(mirror).expect("last"),
            );
            assert_eq!(
                last,
                total + 1,
                "the leader's empty entry plus every proposal"
            );
            assert!(
                first > 1 && last - first <= MIRROR_CATCH_UP_ENTRIES + MIRROR_CATCH_UP_ENTRIES / 10,
                "mirror holds [{first}, {last}]"
            );
            assert_eq!(group.term_of(last), Some(1));
            group.propose(b"after trimming".to_vec()).expect("propose");
            assert_eq!(group.persist().await.expect("persist").entries, 1);
            assert_eq!(stats.entries.load(Ordering::Relaxed), total + 2);
        });
    }

    #[test]
    fn mirror_commits_through_snapshot_even_with_an_older_hard_state() {
        let stale = HardState {
            term: 2,
            vote: 1,
            commit: 40,
            ..Default::default()
        };
        let storage = log_mirror(
            Some((70, 3)),
            &[],
            Some(stale.clone()),
            &GroupConfig::single_voter(),
            GroupConfig::single_voter().conf_state(),
        )
        .expect("mirror");
        let state = storage.initial_state().expect("state");
        assert_eq!((state.hard_state.commit, state.hard_state.term), (70, 3));
        let storage = log_mirror(
            Some((70, 3)),
            &[entry(71, 3), entry(72, 4)],
            Some(stale),
            &GroupConfig::single_voter(),
            GroupConfig::single_voter().conf_state(),
        )
        .expect("mirror");
        assert_eq!(
            storage.initial_state().expect("state").hard_state.commit,
            72
        );
        assert_eq!(storage.last_index().expect("last"), 72);
        assert_eq!(storage.first_index().expect("first"), 71);
    }
}
