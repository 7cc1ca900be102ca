//! Membership changes in a shard's Raft group (issue 19 §5, design §6
//! "Membership").
//!
//! A member-level change (remove a member; later add, promote, update) is
//! proposed in group 0 first: its conf-change entry carries the member's
//! record (`MemberRecord` as JSON in the entry's context), and applying it
//! changes group 0's configuration and the member list
//! (`membership::Configurations`). Every other group is then brought to
//! group 0's membership by its leader on the lead member, one Raft change
//! at a time, on its ticks ([`next_step`]). A crash between groups leaves
//! the change recorded in group 0, and the next lead member finishes it:
//! the change survives a crash at any point.
//!
//! Only single-member changes are made (Raft's one-at-a-time rule; raft-rs
//! refuses a second while one is pending), so no group ever needs joint
//! consensus.

use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType};

use super::ShardWorker;
use super::member_change::{MemberChange, ReconfigPolicy, check_quorum_safety};
use crate::data_dir::MemberRecord;
use crate::membership::{Configurations, GroupConfiguration};
use crate::store::error::KvError;
use crate::wal::StorageDevice;

/// A conf-change entry's content, as decoded from the log.
pub fn decode(entry: &Entry) -> Result<ConfChange, String> {
    <ConfChange as protobuf::Message>::parse_from_bytes(&entry.data)
        .map_err(|error| format!("conf-change entry {} does not decode: {error}", entry.index))
}

/// The change that removes `member` (group 0 records it in the member list).
#[cfg(test)]
pub fn removal(member: u64) -> ConfChange {
    let mut change = ConfChange::default();
    change.set_change_type(ConfChangeType::RemoveNode);
    change.node_id = member;
    change
}

/// The configuration after `change` (what raft-rs's `apply_conf_change`
/// computes for a single change; recovery uses it without a Raft node).
pub fn apply_to_configuration(
    configuration: &GroupConfiguration,
    index: u64,
    change: &ConfChange,
) -> GroupConfiguration {
    let member = change.node_id;
    let mut voters = configuration.voters.clone();
    let mut learners = configuration.learners.clone();
    voters.retain(|id| *id != member);
    learners.retain(|id| *id != member);
    match change.get_change_type() {
        ConfChangeType::AddNode => voters.push(member),
        ConfChangeType::AddLearnerNode => learners.push(member),
        ConfChangeType::RemoveNode => {}
    }
    voters.sort_unstable();
    learners.sort_unstable();
    GroupConfiguration {
        index,
        voters,
        learners,
    }
}

/// The member list after group 0 applied `change`: a removal drops the
/// member; an addition takes the record the entry carries.
pub fn apply_to_members(members: &[MemberRecord], change: &ConfChange) -> Vec<MemberRecord> {
    let member = change.node_id;
    let mut updated: Vec<MemberRecord> = members
        .iter()
        .filter(|record| record.id != member)
        .cloned()
        .collect();
    if change.get_change_type() != ConfChangeType::RemoveNode {
        let carried = serde_json::from_slice::<MemberRecord>(&change.context).ok();
        let known = members.iter().find(|record| record.id == member).cloned();
        let mut record = carried.or(known).unwrap_or_else(|| MemberRecord {
            id: member,
            name: String::new(),
            peer_urls: Vec::new(),
            is_learner: false,
        });
        record.id = member;
        record.is_learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
        updated.push(record);
    }
    updated.sort_by_key(|record| record.id);
    updated
}

/// The member list a snapshot of group 0 implies: the members it names,
/// with the records this member knows of them (a member added while this
/// one was behind is listed by ID until it announces itself).
pub fn members_of(
    known: &[MemberRecord],
    conf_state: &raft::eraftpb::ConfState,
) -> Vec<MemberRecord> {
    let named = conf_state
        .voters
        .iter()
        .map(|id| (*id, false))
        .chain(conf_state.learners.iter().map(|id| (*id, true)));
    let mut members: Vec<MemberRecord> = named
        .map(|(id, is_learner)| {
            let mut record = known
                .iter()
                .find(|record| record.id == id)
                .cloned()
                .unwrap_or_else(|| MemberRecord {
                    id,
                    name: String::new(),
                    peer_urls: Vec::new(),
                    is_learner,
                });
            record.is_learner = is_learner;
            record
        })
        .collect();
    members.sort_by_key(|record| record.id);
    members
}

/// The next single change that brings `configuration` toward `members`
/// (group 0's), if any: additions and promotions first, then removals.
pub fn next_step(
    configuration: &GroupConfiguration,
    members: &[MemberRecord],
) -> Option<ConfChange> {
    let (voters, learners) = crate::membership::configurations::split(members);
    let mut change = ConfChange::default();
    if let Some(member) = voters.iter().find(|id| !configuration.voters.contains(id)) {
        change.set_change_type(ConfChangeType::AddNode);
        change.node_id = *member;
    } else if let Some(member) = learners
        .iter()
        .find(|id| !configuration.learners.contains(id) && !configuration.voters.contains(id))
    {
        change.set_change_type(ConfChangeType::AddLearnerNode);
        change.node_id = *member;
    } else if let Some(member) = configuration
        .voters
        .iter()
        .chain(&configuration.learners)
        .find(|id| !voters.contains(id) && !learners.contains(id))
    {
        change.set_change_type(ConfChangeType::RemoveNode);
        change.node_id = *member;
    } else {
        return None;
    }
    Some(change)
}

/// Recovery of group `group`'s configuration: forgets what was recorded
/// above `applied` and records again the conf-change entries among
/// `entries` (the WAL's, after the newest snapshot) up to `applied` that
/// the record lacks (the process died after committing, before recording).
pub fn recover(
    configurations: &Configurations,
    group: usize,
    entries: &[Entry],
    applied: u64,
) -> Result<GroupConfiguration, String> {
    configurations
        .forget_after(group, applied)
        .map_err(|error| error.to_string())?;
    for entry in entries
        .iter()
        .filter(|entry| entry.entry_type == EntryType::EntryConfChange && entry.index <= applied)
    {
        let latest = configurations.latest(group);
        if entry.index <= latest.index {
            continue;
        }
        let change = decode(entry)?;
        let configuration = apply_to_configuration(&latest, entry.index, &change);
        let members = (group == 0).then(|| apply_to_members(&configurations.members(), &change));
        configurations
            .record(group, entry.index, &configuration.conf_state(), members)
            .map_err(|error| error.to_string())?;
    }
    Ok(configurations.latest(group))
}

/// A member-level change on the lead member: waits (until `deadline`) for
/// any change still being carried to the groups, checks it against the
/// member list, proposes it in group 0, then waits until every group
/// applied it here (not for a removal of this member: it stops, and the
/// next lead member carries the removal on).
pub async fn change_member_here(
    group_zero: &flume::Sender<super::ShardCommand>,
    configurations: &Configurations,
    (own_id, change): (u64, &MemberChange),
    policy: ReconfigPolicy,
    deadline: std::time::Instant,
) -> Result<(), KvError> {
    let expired = || KvError::RequestTimedOut;
    converged_by(configurations, deadline)
        .await
        .map_err(|()| expired())?;
    let conf_change = change.conf_change(&configurations.members(), policy)?;
    let (done, applied) = futures_channel::oneshot::channel();
    let command = super::ShardCommand::ChangeMembers {
        change: conf_change,
        strict: policy.strict,
        done,
    };
    group_zero
        .send_async(command)
        .await
        .map_err(|_| KvError::ShardUnavailable(0))?;
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    monoio::time::timeout(left, applied)
        .await
        .map_err(|_| expired())?
        .map_err(|_| KvError::ShardUnavailable(0))??;
    if *change == MemberChange::Remove(own_id) {
        return Ok(());
    }
    converged_by(configurations, deadline)
        .await
        .map_err(|()| expired())
}

/// Waits until every group has group 0's membership, or `deadline`.
async fn converged_by(
    configurations: &Configurations,
    deadline: std::time::Instant,
) -> Result<(), ()> {
    while !configurations.converged() {
        if std::time::Instant::now() >= deadline {
            return Err(());
        }
        monoio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Where a member-level change's requester waits.
type ChangeAnswer = futures_channel::oneshot::Sender<Result<(), KvError>>;

/// Requests for a member-level change waiting for group 0 to apply their
/// entry, by the entry's index and term.
#[derive(Default)]
pub struct ConfChangeWaits {
    /// `(index, term, requester)`.
    waiting: Vec<(u64, u64, ChangeAnswer)>,
}

impl ConfChangeWaits {
    fn wait(
        &mut self,
        entry: (u64, u64),
        done: futures_channel::oneshot::Sender<Result<(), KvError>>,
    ) {
        self.waiting.push((entry.0, entry.1, done));
    }

    /// The entry at `(index, term)` was applied: its requester is answered.
    fn applied(&mut self, index: u64, term: u64) {
        if let Some(position) = self
            .waiting
            .iter()
            .position(|(at, of, _)| (*at, *of) == (index, term))
        {
            let (_, _, done) = self.waiting.swap_remove(position);
            let _ = done.send(Ok(()));
        }
    }

    /// Everything through `applied` is applied: a request still waiting at
    /// or below it had its entry replaced by another leader's.
    fn passed(&mut self, applied: u64) {
        for (_, _, done) in self
            .waiting
            .extract_if(.., |(index, _, _)| *index <= applied)
        {
            let _ = done.send(Err(KvError::LeaderChanged));
        }
    }
}

impl<D: StorageDevice> ShardWorker<D> {
    /// Proposes `change` in this group (group 0, on the lead member);
    /// `done` is answered once it is applied here.
    pub(super) fn propose_member_change(
        &mut self,
        change: ConfChange,
        strict: bool,
        done: futures_channel::oneshot::Sender<Result<(), KvError>>,
    ) {
        if !self.takes_writes() {
            let _ = done.send(Err(KvError::NotLeader));
            return;
        }
        if self.group.has_pending_conf_change() {
            let _ = done.send(Err(KvError::UnhealthyCluster));
            return;
        }
        if let Some((configurations, _)) = self.group.configurations() {
            let members = configurations.members();
            let progress = self.group.member_progress();
            let own = self.group.leader_id();
            if let Err(error) = check_quorum_safety(&change, &members, &progress, own, strict) {
                let _ = done.send(Err(error));
                return;
            }
        }
        match self.group.propose_conf_change(change) {
            Ok(entry) => self.conf_waits.wait(entry, done),
            Err(_) => {
                let _ = done.send(Err(KvError::NotLeader));
            }
        }
    }

    /// On the lead member's leader of a group other than 0: one step toward
    /// group 0's membership, if the group differs and has no change
    /// pending.
    pub(super) fn converge_membership(&mut self) {
        let Some((configurations, group)) = self.group.configurations() else {
            return;
        };
        if group == 0 || !self.takes_writes() || self.group.has_pending_conf_change() {
            return;
        }
        let latest = configurations.latest(group);
        let members = configurations.members();
        if let Some(change) = next_step(&latest, &members)
            && let Err(error) = self.group.propose_conf_change(change)
        {
            tracing::warn!(shard = self.shard, %error, "cannot propose a membership change");
        }
    }

    /// Applies a committed conf-change entry: the group's configuration
    /// changes (Raft's and the durable record) and, in group 0, the member
    /// list. Failing to record it is fatal, as failing to log is.
    pub(super) fn apply_conf_change(&mut self, entry: &Entry) {
        let change = match decode(entry) {
            Ok(change) => change,
            Err(error) => {
                tracing::error!(shard = self.shard, %error, "aborting");
                std::process::abort();
            }
        };
        let recorded = self.group.apply_conf_change(entry.index, &change);
        if let Err(error) = recorded {
            tracing::error!(shard = self.shard, index = entry.index, %error, "cannot apply a membership change; aborting");
            std::process::abort();
        }
        self.snapshots.logged_conf_change(entry.index);
        self.conf_waits.applied(entry.index, entry.term);
        if let Some(role) = &self.role
            && change.get_change_type() == ConfChangeType::RemoveNode
            && change.node_id == role.member_id
        {
            role.note_removed();
        }
    }

    /// After applying through `applied`: answers the requests whose entry
    /// was replaced.
    pub(super) fn settle_member_changes(&mut self, applied: u64) {
        self.conf_waits.passed(applied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::configurations::test_member as member;

    #[test]
    fn groups_converge_one_change_at_a_time() {
        let mut configuration = GroupConfiguration {
            index: 0,
            voters: vec![1, 2, 3],
            learners: vec![],
        };
        let members = vec![member(1, false), member(2, false), member(4, true)];
        let mut steps = Vec::new();
        while let Some(change) = next_step(&configuration, &members) {
            steps.push((change.get_change_type(), change.node_id));
            configuration = apply_to_configuration(&configuration, steps.len() as u64, &change);
            assert!(steps.len() <= 3, "converges");
        }
        assert_eq!(
            steps,
            vec![
                (ConfChangeType::AddLearnerNode, 4),
                (ConfChangeType::RemoveNode, 3)
            ]
        );
        assert!(configuration.matches(&members));
        let promoted = vec![member(1, false), member(2, false), member(4, false)];
        let change = next_step(&configuration, &promoted).expect("promotion");
        assert_eq!(
            (change.get_change_type(), change.node_id),
            (ConfChangeType::AddNode, 4)
        );
    }

    #[test]
    fn group_zero_carries_the_member_record() {
        let members = vec![member(1, false), member(2, false)];
        let mut change = ConfChange::default();
        change.set_change_type(ConfChangeType::AddLearnerNode);
        change.node_id = 7;
        change.context = serde_json::to_vec(&member(7, false)).expect("json").into();
        let added = apply_to_members(&members, &change);
        assert_eq!(added.len(), 3);
        assert!(added[2].is_learner && added[2].name == "m7");
        let removed = apply_to_members(&added, &removal(1));
        assert_eq!(
            removed.iter().map(|record| record.id).collect::<Vec<_>>(),
            vec![2, 7]
        );
    }

    #[test]
    fn recovery_records_what_the_log_committed_and_forgets_the_rest() {
        let configurations = Configurations::in_memory(2, &[member(1, false), member(2, false)]);
        let entry = |index: u64, change: &ConfChange| Entry {
            index,
            term: 1,
            entry_type: EntryType::EntryConfChange,
            data: protobuf::Message::write_to_bytes(change)
                .expect("encode")
                .into(),
            ..Default::default()
        };
        let entries = [entry(4, &removal(2)), entry(9, &removal(1))];
        let recovered = recover(&configurations, 0, &entries, 6).expect("recover");
        assert_eq!((recovered.index, recovered.voters.clone()), (4, vec![1]));
        assert_eq!(configurations.members().len(), 1, "member 2 is gone");
        assert_eq!(
            recover(&configurations, 1, &[], 0).expect("recover").voters,
            vec![1, 2],
            "group 1 has not applied it yet"
        );
        assert!(!configurations.converged());
    }
}
