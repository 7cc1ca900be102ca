//! Who belongs to each shard's Raft group, kept durable beside the logs.
//!
//! Raft's configuration (voters and learners) changes when a conf-change
//! entry is applied. raft-rs starts from the configuration its storage
//! names, and a snapshot sent to another member must carry the
//! configuration as of the snapshot's index. The WAL keeps only the
//! entries after the newest snapshot and snapshot files hold no
//! configuration, so every configuration a group takes is recorded here
//! with the Raft index it took effect at: `membership.json` in the data
//! directory, replaced atomically (temp file, fsync, rename) on each change,
//! which is rare.
//!
//! Invariants:
//! - A configuration is durable here before its entry is reported applied,
//!   so recovery, which replays only entries after the newest snapshot,
//!   never needs an entry the WAL has released.
//! - A leader's snapshot's configuration is recorded before the snapshot
//!   file is written: a crash after the file leaves the configuration too.
//! - Recovery forgets configurations above the group's applied index (from
//!   a snapshot whose installation never finished) and records again those
//!   of the conf-change entries it replays.
//!
//! Group 0 is the membership's record: its conf-change entries carry the
//! member (name, peer URLs), and `members` follows them. Every other group
//! is brought to group 0's membership by its leader on the lead member
//! (`shard::conf_change`), one change at a time, so a member-level change
//! interrupted by a crash between groups is finished after it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use raft::eraftpb::ConfState;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data_dir::{MemberRecord, write_atomically};

const FILE_NAME: &str = "membership.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum ConfigurationsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is corrupt: {reason}; restore the data directory from a backup or start with an empty --data-dir"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// A group's voters and learners from Raft index `index` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfiguration {
    pub index: u64,
    pub voters: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<u64>,
}

impl GroupConfiguration {
    pub fn from_conf_state(index: u64, conf_state: &ConfState) -> Self {
        let mut voters = conf_state.voters.clone();
        let mut learners = conf_state.learners.clone();
        voters.sort_unstable();
        learners.sort_unstable();
        Self {
            index,
            voters,
            learners,
        }
    }

    pub fn conf_state(&self) -> ConfState {
        ConfState::from((self.voters.clone(), self.learners.clone()))
    }

    /// Whether the group has exactly `members`' voters and learners.
    pub fn matches(&self, members: &[MemberRecord]) -> bool {
        let (voters, learners) = split(members);
        self.voters == voters && self.learners == learners
    }
}

/// The IDs of `members` that vote and of those that learn, sorted.
pub fn split(members: &[MemberRecord]) -> (Vec<u64>, Vec<u64>) {
    let mut voters: Vec<u64> = members
        .iter()
        .filter(|member| !member.is_learner)
        .map(|member| member.id)
        .collect();
    let mut learners: Vec<u64> = members
        .iter()
        .filter(|member| member.is_learner)
        .map(|member| member.id)
        .collect();
    voters.sort_unstable();
    learners.sort_unstable();
    (voters, learners)
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded {
    format_version: u32,
    /// Per group, its configurations in index order (never empty: the
    /// first is the bootstrap configuration at index 0).
    groups: Vec<Vec<GroupConfiguration>>,
    /// The members as group 0 last applied them.
    members: Vec<MemberRecord>,
}

/// Every group's configurations and the member list, shared by the
/// member's cores. Read at startup, when a snapshot is sent and when the
/// member list is served; written only when a configuration changes.
#[derive(Debug)]
pub struct Configurations {
    /// The data directory (`None`: kept in memory only, for tests).
    directory: Option<PathBuf>,
    /// Guarded for the rare writes; no request path takes it per key.
    recorded: Mutex<Recorded>,
}

impl Configurations {
    /// Reads `membership.json` from `directory`, or starts every group with
    /// `initial` (the bootstrap members) if there is none yet.
    pub fn open(
        directory: &Path,
        shard_count: usize,
        initial: &[MemberRecord],
    ) -> Result<Self, ConfigurationsError> {
        let path = directory.join(FILE_NAME);
        let recorded = match std::fs::read(&path) {
            Ok(bytes) => parse(&path, &bytes, shard_count)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                bootstrap(shard_count, initial)
            }
            Err(source) => return Err(ConfigurationsError::Io { path, source }),
        };
        Ok(Self {
            directory: Some(directory.to_owned()),
            recorded: Mutex::new(recorded),
        })
    }

    /// A member added to a running cluster, on its first start (`join`):
    /// every group starts from the bootstrap configuration (`initial`;
    /// its log replays the changes since, or a snapshot replaces it), and
    /// the member list is the running cluster's `members`, so every member
    /// is reached at once. Written to `directory` (`None`: memory only).
    pub fn create_joined(
        directory: Option<&Path>,
        shard_count: usize,
        initial: &[MemberRecord],
        members: &[MemberRecord],
    ) -> Result<Self, ConfigurationsError> {
        let mut recorded = bootstrap(shard_count, initial);
        recorded.members = members.to_vec();
        let configurations = Self {
            directory: directory.map(Path::to_owned),
            recorded: Mutex::new(recorded),
        };
        configurations.write(&configurations.lock())?;
        Ok(configurations)
    }

    /// Kept in memory only (tests).
    pub fn in_memory(shard_count: usize, initial: &[MemberRecord]) -> Self {
        Self {
            directory: None,
            recorded: Mutex::new(bootstrap(shard_count, initial)),
        }
    }

    /// `group`'s configuration as of Raft index `index`.
    pub fn at(&self, group: usize, index: u64) -> GroupConfiguration {
        let recorded = self.lock();
        let history = &recorded.groups[group];
        history
            .iter()
            .rev()
            .find(|configuration| configuration.index <= index)
            .unwrap_or(&history[0])
            .clone()
    }

    /// `group`'s newest configuration.
    pub fn latest(&self, group: usize) -> GroupConfiguration {
        let recorded = self.lock();
        recorded.groups[group]
            .last()
            .expect("a group always has its bootstrap configuration")
            .clone()
    }

    /// The members as group 0 last applied them.
    pub fn members(&self) -> Vec<MemberRecord> {
        self.lock().members.clone()
    }

    /// Member `id`'s record, if it is a member.
    pub fn member(&self, id: u64) -> Option<MemberRecord> {
        self.lock()
            .members
            .iter()
            .find(|member| member.id == id)
            .cloned()
    }

    /// Whether every group has group 0's membership (no member-level
    /// change is being carried to the other groups).
    pub fn converged(&self) -> bool {
        let recorded = self.lock();
        recorded.groups.iter().all(|history| {
            history
                .last()
                .is_some_and(|latest| latest.matches(&recorded.members))
        })
    }

    /// Records that `group` has `conf_state` from `index` on (and, for
    /// group 0, that the members are now `members`), durably. Anything
    /// recorded for the group at or above `index` is replaced: it came
    /// from a log or snapshot this one supersedes.
    pub fn record(
        &self,
        group: usize,
        index: u64,
        conf_state: &ConfState,
        members: Option<Vec<MemberRecord>>,
    ) -> Result<(), ConfigurationsError> {
        let mut recorded = self.lock();
        let history = &mut recorded.groups[group];
        history.retain(|configuration| configuration.index < index || configuration.index == 0);
        let configuration = GroupConfiguration::from_conf_state(index, conf_state);
        if history.last() != Some(&configuration) {
            history.push(configuration);
        }
        if let Some(members) = members {
            recorded.members = members;
        }
        self.write(&recorded)
    }

    /// Forgets `group`'s configurations above `applied` (recovery: they
    /// came from a leader's snapshot whose installation did not finish).
    pub fn forget_after(&self, group: usize, applied: u64) -> Result<(), ConfigurationsError> {
        let mut recorded = self.lock();
        let history = &mut recorded.groups[group];
        let before = history.len();
        history.retain(|configuration| configuration.index <= applied);
        if history.len() == before {
            return Ok(());
        }
        self.write(&recorded)
    }

    fn write(&self, recorded: &Recorded) -> Result<(), ConfigurationsError> {
        let Some(directory) = &self.directory else {
            return Ok(());
        };
        let path = directory.join(FILE_NAME);
        let bytes =
            serde_json::to_vec_pretty(recorded).map_err(|error| ConfigurationsError::Corrupt {
                path: path.clone(),
                reason: error.to_string(),
            })?;
        write_atomically(directory, FILE_NAME, &bytes)
            .map_err(|source| ConfigurationsError::Io { path, source })
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn bootstrap(shard_count: usize, initial: &[MemberRecord]) -> Recorded {
    let (voters, learners) = split(initial);
    let first = GroupConfiguration {
        index: 0,
        voters,
        learners,
    };
    Recorded {
        format_version: FORMAT_VERSION,
        groups: vec![vec![first]; shard_count],
        members: initial.to_vec(),
    }
}

fn parse(path: &Path, bytes: &[u8], shard_count: usize) -> Result<Recorded, ConfigurationsError> {
    let corrupt = |reason: String| ConfigurationsError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let recorded: Recorded =
        serde_json::from_slice(bytes).map_err(|error| corrupt(error.to_string()))?;
    if recorded.format_version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this build reads {FORMAT_VERSION})",
            recorded.format_version
        )));
    }
    if recorded.groups.len() != shard_count {
        return Err(corrupt(format!(
            "{} groups recorded for {shard_count} shards",
            recorded.groups.len()
        )));
    }
    for (group, history) in recorded.groups.iter().enumerate() {
        let ordered = history.windows(2).all(|pair| pair[0].index < pair[1].index);
        if history.is_empty() || !ordered {
            return Err(corrupt(format!(
                "group {group}'s configurations are missing or out of order"
            )));
        }
    }
    Ok(recorded)
}

/// A member record for tests: name `m<id>`, one peer URL.
#[cfg(test)]
pub(crate) fn test_member(id: u64, is_learner: bool) -> MemberRecord {
    MemberRecord {
        id,
        name: format!("m{id}"),
        peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
        is_learner,
    }
}

#[cfg(test)]
mod tests {
    use super::test_member as member;
    use super::*;

    #[test]
    fn configurations_survive_reopening_and_answer_by_index() {
        let directory = tempfile::tempdir().expect("dir");
        let initial = [member(1, false), member(2, false), member(3, false)];
        let configurations = Configurations::open(directory.path(), 2, &initial).expect("open");
        assert!(configurations.converged());
        let four = [1, 2, 3, 4];
        let mut members = initial.to_vec();
        members.push(member(4, true));
        configurations
            .record(
                0,
                10,
                &ConfState::from((vec![1, 2, 3], vec![4])),
                Some(members),
            )
            .expect("record");
        assert!(!configurations.converged(), "group 1 lacks the learner");
        configurations
            .record(1, 7, &ConfState::from((vec![1, 2, 3], vec![4])), None)
            .expect("record");
        assert!(configurations.converged());
        let reopened = Configurations::open(directory.path(), 2, &[]).expect("reopen");
        assert_eq!(reopened.at(0, 9).voters, vec![1, 2, 3]);
        assert!(reopened.at(0, 9).learners.is_empty());
        assert_eq!(reopened.at(0, 10).learners, vec![4]);
        assert_eq!(reopened.members().len(), 4);
        reopened
            .record(0, 12, &ConfState::from((four.to_vec(), vec![])), None)
            .expect("record");
        reopened.forget_after(0, 11).expect("forget");
        assert_eq!(reopened.latest(0).index, 10, "index 12 was never applied");
        assert!(
            Configurations::open(directory.path(), 3, &[]).is_err(),
            "a shard count that does not match is refused"
        );
    }

    #[test]
    fn a_configuration_at_an_index_replaces_what_was_recorded_above_it() {
        let configurations = Configurations::in_memory(1, &[member(1, false), member(2, false)]);
        configurations
            .record(0, 20, &ConfState::from((vec![1], vec![])), None)
            .expect("record");
        configurations
            .record(0, 15, &ConfState::from((vec![1, 2], vec![3])), None)
            .expect("record");
        assert_eq!(configurations.latest(0).index, 15);
        assert_eq!(configurations.at(0, 30).learners, vec![3]);
        assert_eq!(configurations.at(0, 3).voters, vec![1, 2]);
    }

    #[test]
    fn corrupt_files_are_refused_with_advice() {
        let directory = tempfile::tempdir().expect("dir");
        std::fs::write(directory.path().join(FILE_NAME), b"{\"format_version\":1").expect("write");
        let error = Configurations::open(directory.path(), 1, &[]).expect_err("corrupt");
        assert!(error.to_string().contains("restore the data directory"));
    }
}
