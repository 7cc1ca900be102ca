//! etcd's member-level changes (MemberAdd, MemberRemove, MemberPromote)
//! and the rules that refuse them, as etcd 3.4 has them. Pure: the member
//! list and group 0's Raft progress in, the Raft change to propose or
//! etcd's error out. `conf_change` carries the change to every group.
//!
//! Two sets of rules:
//! - what the member list allows ([`MemberChange::conf_change`], etcd's
//!   `ValidateConfigurationChange`): no such member, an ID or peer URL
//!   taken, a promotion of a voter, too many learners;
//! - what keeps the cluster able to commit ([`check_quorum_safety`],
//!   etcd's `mayAddMember`, `mayRemoveMember`, `mayPromoteMember`, on the
//!   leader with `--strict-reconfig-check`): enough started voters, every
//!   voter connected, a learner promoted only once its log is near the
//!   leader's.

use raft::eraftpb::{ConfChange, ConfChangeType};

use crate::data_dir::MemberRecord;
use crate::store::error::KvError;

/// etcd's `readyPercent`: a learner is promoted only once its log holds
/// at least this share of the leader's.
const LEARNER_READY_SHARE: f64 = 0.9;

/// A member-level change as a client asked for it.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberChange {
    /// MemberAdd: the member's record, its ID drawn by the member that
    /// took the request (etcd's: from the peer URLs, the cluster token and
    /// the time).
    Add(MemberRecord),
    Remove(u64),
    Promote(u64),
    /// MemberUpdate: the member's new peer URLs.
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
}

/// The operator's limits on changes (`--strict-reconfig-check`,
/// `--max-learners`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconfigPolicy {
    pub strict: bool,
    pub max_learners: usize,
}

impl Default for ReconfigPolicy {
    /// etcd's defaults.
    fn default() -> Self {
        Self {
            strict: true,
            max_learners: 1,
        }
    }
}

impl MemberChange {
    pub fn member_id(&self) -> u64 {
        match self {
            MemberChange::Add(record) => record.id,
            MemberChange::Remove(id)
            | MemberChange::Promote(id)
            | MemberChange::Update { id, .. } => *id,
        }
    }

    /// The Raft change for group 0 (its context carries the member's record
    /// for the member list), if `members` (group 0's) allow it.
    pub fn conf_change(
        &self,
        members: &[MemberRecord],
        policy: ReconfigPolicy,
    ) -> Result<ConfChange, KvError> {
        let existing = members.iter().find(|record| record.id == self.member_id());
        let mut change = ConfChange {
            node_id: self.member_id(),
            ..Default::default()
        };
        match self {
            MemberChange::Add(record) => {
                if existing.is_some() {
                    return Err(KvError::MemberExists);
                }
                if urls_taken(members, record.id, &record.peer_urls) {
                    return Err(KvError::PeerUrlExists);
                }
                let learners = members.iter().filter(|member| member.is_learner).count();
                if record.is_learner && learners >= policy.max_learners {
                    return Err(KvError::TooManyLearners);
                }
                change.set_change_type(if record.is_learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                });
                change.context = record_bytes(record).into();
            }
            MemberChange::Remove(_) => {
                existing.ok_or(KvError::MemberNotFound)?;
                change.set_change_type(ConfChangeType::RemoveNode);
            }
            MemberChange::Promote(_) => {
                let record = existing.ok_or(KvError::MemberNotFound)?;
                if !record.is_learner {
                    return Err(KvError::MemberNotLearner);
                }
                let mut promoted = record.clone();
                promoted.is_learner = false;
                change.set_change_type(ConfChangeType::AddNode);
                change.context = record_bytes(&promoted).into();
            }
            MemberChange::Update { id, peer_urls } => {
                let record = existing.ok_or(KvError::MemberNotFound)?;
                if urls_taken(members, *id, peer_urls) {
                    return Err(KvError::PeerUrlExists);
                }
                let mut updated = record.clone();
                updated.peer_urls = peer_urls.clone();
                // Raft has no "update": the member is added again in the
                // role it has, which changes no configuration; group 0's
                // member list takes the new record.
                change.set_change_type(if record.is_learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                });
                change.context = record_bytes(&updated).into();
            }
        }
        Ok(change)
    }
}

impl MemberChange {
    /// Whether `members` (a member's list as its group 0 applied it) show
    /// this change made.
    pub fn is_reflected_in(&self, members: &[MemberRecord]) -> bool {
        let record = members.iter().find(|record| record.id == self.member_id());
        match self {
            MemberChange::Add(_) => record.is_some(),
            MemberChange::Remove(_) => record.is_none(),
            MemberChange::Promote(_) => record.is_some_and(|record| !record.is_learner),
            MemberChange::Update { peer_urls, .. } => {
                record.is_some_and(|record| record.peer_urls == *peer_urls)
            }
        }
    }
}

/// Whether a member other than `id` has one of `peer_urls`.
fn urls_taken(members: &[MemberRecord], id: u64, peer_urls: &[String]) -> bool {
    members
        .iter()
        .filter(|member| member.id != id)
        .any(|member| member.peer_urls.iter().any(|url| peer_urls.contains(url)))
}

fn record_bytes(record: &MemberRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a member record always serializes")
}

/// What group 0's leader knows of a member of its group (raft-rs's
/// progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberProgress {
    pub id: u64,
    /// The highest log index known to be on that member.
    pub matched: u64,
    /// Heard from within the last election timeout (raft-rs's
    /// `recent_active`, kept by check-quorum).
    pub active: bool,
}

impl MemberProgress {
    /// etcd counts a member as started once it published its name; a
    /// member that has never acknowledged an entry has never run.
    fn started(&self) -> bool {
        self.matched > 0
    }
}

/// etcd's leader-side checks of `change` (group 0's, proposed by its
/// leader `leader`) against the group's `progress` (every voter and
/// learner) and `members`.
pub fn check_quorum_safety(
    change: &ConfChange,
    members: &[MemberRecord],
    progress: &[MemberProgress],
    leader: u64,
    strict: bool,
) -> Result<(), KvError> {
    let voters: Vec<&MemberRecord> = members.iter().filter(|member| !member.is_learner).collect();
    let of = |id: u64| progress.iter().find(|member| member.id == id);
    let started = |id: u64| id == leader || of(id).is_some_and(MemberProgress::started);
    let active = |id: u64| id == leader || of(id).is_some_and(|member| member.active);
    let quorum = |voter_count: usize| voter_count / 2 + 1;
    let target = change.node_id;
    let is_learner = members
        .iter()
        .any(|member| member.id == target && member.is_learner);
    let is_voter = voters.iter().any(|member| member.id == target);
    let kind = change.get_change_type();
    match kind {
        // A member's record updated in the role it has: no configuration
        // changes, nothing to protect.
        ConfChangeType::AddNode if is_voter => Ok(()),
        ConfChangeType::AddLearnerNode if is_learner => Ok(()),
        // etcd's mayPromoteMember: readiness is checked even without
        // --strict-reconfig-check.
        ConfChangeType::AddNode if is_learner => {
            let leader_matched = of(leader).map_or(0, |member| member.matched);
            let learner_matched = of(target).map_or(0, |member| member.matched);
            if (learner_matched as f64) < leader_matched as f64 * LEARNER_READY_SHARE {
                return Err(KvError::LearnerNotReady);
            }
            let started_voters = voters.iter().filter(|member| started(member.id)).count() + 1;
            if strict && started_voters < quorum(voters.len() + 1) {
                return Err(KvError::NotEnoughStartedMembers);
            }
            Ok(())
        }
        _ if !strict => Ok(()),
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            let adds_voter = kind == ConfChangeType::AddNode;
            let started_voters = voters.iter().filter(|member| started(member.id)).count();
            if adds_voter && started_voters < quorum(voters.len() + 1) {
                return Err(KvError::NotEnoughStartedMembers);
            }
            if !voters.iter().all(|member| active(member.id)) {
                return Err(KvError::UnhealthyCluster);
            }
            Ok(())
        }
        ConfChangeType::RemoveNode => {
            // No quorum to protect when a learner leaves.
            if is_learner {
                return Ok(());
            }
            let remaining = voters.len().saturating_sub(1);
            let started_remaining = voters
                .iter()
                .filter(|member| member.id != target && started(member.id))
                .count();
            if started_remaining < quorum(remaining) {
                return Err(KvError::NotEnoughStartedMembers);
            }
            // A member that is down is safe to remove: it is not part of
            // the active quorum.
            if target != leader && !active(target) {
                return Ok(());
            }
            let active_remaining = voters
                .iter()
                .filter(|member| member.id != target && active(member.id))
                .count();
            if active_remaining < quorum(remaining) {
                return Err(KvError::UnhealthyCluster);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::configurations::test_member as member;

    fn progress(id: u64, matched: u64, active: bool) -> MemberProgress {
        MemberProgress {
            id,
            matched,
            active,
        }
    }

    fn three() -> Vec<MemberRecord> {
        vec![member(1, false), member(2, false), member(3, false)]
    }

    #[test]
    fn the_member_list_refuses_what_etcd_refuses() {
        let policy = ReconfigPolicy::default();
        let members = three();
        let mut taken = member(9, false);
        taken.peer_urls = members[1].peer_urls.clone();
        assert_eq!(
            MemberChange::Add(taken).conf_change(&members, policy),
            Err(KvError::PeerUrlExists)
        );
        assert_eq!(
            MemberChange::Add(member(2, true)).conf_change(&members, policy),
            Err(KvError::MemberExists)
        );
        assert_eq!(
            MemberChange::Remove(9).conf_change(&members, policy),
            Err(KvError::MemberNotFound)
        );
        assert_eq!(
            MemberChange::Promote(2).conf_change(&members, policy),
            Err(KvError::MemberNotLearner)
        );
        let mut with_learner = members.clone();
        with_learner.push(member(4, true));
        assert_eq!(
            MemberChange::Add(member(5, true)).conf_change(&with_learner, policy),
            Err(KvError::TooManyLearners)
        );
        let promotion = MemberChange::Promote(4)
            .conf_change(&with_learner, policy)
            .expect("a learner is promoted");
        assert_eq!(promotion.get_change_type(), ConfChangeType::AddNode);
        let carried: MemberRecord = serde_json::from_slice(&promotion.context).expect("record");
        assert!(!carried.is_learner && carried.name == "m4");
        let added = MemberChange::Add(member(5, false))
            .conf_change(&with_learner, policy)
            .expect("a voter may join beside a learner");
        assert_eq!(added.get_change_type(), ConfChangeType::AddNode);
    }

    #[test]
    fn an_update_keeps_the_role_and_takes_the_new_urls() {
        let mut members = three();
        members.push(member(4, true));
        let policy = ReconfigPolicy::default();
        let moved = vec!["http://10.9.9.9:2380".to_owned()];
        let update = |id: u64, peer_urls: Vec<String>| MemberChange::Update { id, peer_urls };
        let change = update(4, moved.clone())
            .conf_change(&members, policy)
            .expect("valid");
        assert_eq!(change.get_change_type(), ConfChangeType::AddLearnerNode);
        let carried: MemberRecord = serde_json::from_slice(&change.context).expect("record");
        assert_eq!(
            (carried.peer_urls, carried.is_learner),
            (moved.clone(), true)
        );
        assert_eq!(
            check_quorum_safety(&change, &members, &[], 1, true),
            Ok(()),
            "no configuration changes"
        );
        let voter = update(2, moved.clone())
            .conf_change(&members, policy)
            .expect("valid");
        assert_eq!(voter.get_change_type(), ConfChangeType::AddNode);
        assert_eq!(check_quorum_safety(&voter, &members, &[], 1, true), Ok(()));
        assert_eq!(
            update(2, members[0].peer_urls.clone()).conf_change(&members, policy),
            Err(KvError::PeerUrlExists)
        );
        assert_eq!(
            update(2, members[1].peer_urls.clone())
                .conf_change(&members, policy)
                .map(|change| change.node_id),
            Ok(2),
            "its own URLs again"
        );
        assert_eq!(
            update(9, moved.clone()).conf_change(&members, policy),
            Err(KvError::MemberNotFound)
        );
        assert!(!update(4, moved.clone()).is_reflected_in(&members));
        members[3].peer_urls = moved.clone();
        assert!(update(4, moved).is_reflected_in(&members));
        assert!(!MemberChange::Promote(4).is_reflected_in(&members));
        assert!(MemberChange::Remove(9).is_reflected_in(&members));
    }

    #[test]
    fn strict_checks_protect_the_quorum() {
        let members = three();
        let all_up = [
            progress(1, 50, true),
            progress(2, 50, true),
            progress(3, 50, true),
        ];
        let add_voter = MemberChange::Add(member(4, false))
            .conf_change(&members, ReconfigPolicy::default())
            .expect("valid");
        assert_eq!(
            check_quorum_safety(&add_voter, &members, &all_up, 1, true),
            Ok(())
        );
        let one_down = [
            progress(1, 50, true),
            progress(2, 50, true),
            progress(3, 50, false),
        ];
        assert_eq!(
            check_quorum_safety(&add_voter, &members, &one_down, 1, true),
            Err(KvError::UnhealthyCluster)
        );
        assert_eq!(
            check_quorum_safety(&add_voter, &members, &one_down, 1, false),
            Ok(())
        );
        // Two of three voters never started: four voters need three.
        let never_started = [
            progress(1, 50, true),
            progress(2, 0, true),
            progress(3, 0, true),
        ];
        assert_eq!(
            check_quorum_safety(&add_voter, &members, &never_started, 1, true),
            Err(KvError::NotEnoughStartedMembers)
        );
        // Removing the member that is down is safe; removing a live one
        // while another is down leaves one of two.
        assert_eq!(
            check_quorum_safety(
                &conf(ConfChangeType::RemoveNode, 3),
                &members,
                &one_down,
                1,
                true
            ),
            Ok(())
        );
        assert_eq!(
            check_quorum_safety(
                &conf(ConfChangeType::RemoveNode, 2),
                &members,
                &one_down,
                1,
                true
            ),
            Err(KvError::UnhealthyCluster)
        );
    }

    #[test]
    fn a_learner_is_promoted_once_nearly_caught_up() {
        let mut members = three();
        members.push(member(4, true));
        let promote = conf(ConfChangeType::AddNode, 4);
        let behind = [
            progress(1, 100, true),
            progress(2, 100, true),
            progress(3, 100, true),
            progress(4, 89, true),
        ];
        assert_eq!(
            check_quorum_safety(&promote, &members, &behind, 1, false),
            Err(KvError::LearnerNotReady),
            "checked even without strict checks, as etcd does"
        );
        let mut near = behind;
        near[3].matched = 90;
        assert_eq!(
            check_quorum_safety(&promote, &members, &near, 1, true),
            Ok(())
        );
        // A learner leaving never threatens the quorum.
        assert_eq!(
            check_quorum_safety(
                &conf(ConfChangeType::RemoveNode, 4),
                &members,
                &behind,
                1,
                true
            ),
            Ok(())
        );
    }

    fn conf(kind: ConfChangeType, node_id: u64) -> ConfChange {
        let mut change = ConfChange::default();
        change.set_change_type(kind);
        change.node_id = node_id;
        change
    }
}
