//! What a shard writes to its write-ahead log, as protobuf (prost)
//! messages: Raft's entries and hard state, the durable frontier (how far
//! every other shard's log was durable when this frame was written), and
//! inside each entry's data the shard's own command (a resolved change
//! set, a compaction, or a recovery decision). The byte layout of the frames around these records
//! is in `docs/wal-format.md`.
//!
//! Entries carry *results* (the exact versions written at a revision), not
//! requests: replaying them needs no evaluation, and a follower applies the
//! leader's decision verbatim.

use bytes::Bytes;
use prost::Message;
use raft::eraftpb::{Entry, EntryType, HardState};

use crate::store::memtable::Version;
use crate::store::write::ChangeSet;

/// One WAL record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WalRecord {
    #[prost(oneof = "wal_record::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<wal_record::Kind>,
}

pub mod wal_record {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Entry(super::LoggedRaftEntry),
        #[prost(message, tag = "2")]
        HardState(super::LoggedHardState),
        #[prost(message, tag = "3")]
        Frontier(super::LoggedFrontier),
        #[prost(message, tag = "4")]
        Restored(super::LoggedRestore),
    }
}

/// A snapshot from the group's leader replaced the log: every entry
/// logged before this record is void, and the log continues at `index +
/// 1`. Written after the snapshot file is durable, in the frame with the
/// hard state that commits through `index`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedRestore {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(uint64, tag = "2")]
    pub term: u64,
}

/// The first record of every frame a shard writes: how far each other
/// shard's log was durable (its fdatasync had returned) just before this
/// frame was written. If this frame survives, those records had been
/// durable once, so recovery can tell a damaged frame of theirs from a torn
/// write (`shard::durable_loss`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedFrontier {
    #[prost(message, repeated, tag = "1")]
    pub logs: Vec<LoggedDurableLog>,
}

/// How far one shard's log was durable.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedDurableLog {
    #[prost(uint32, tag = "1")]
    pub shard: u32,
    /// The log's id (`Wal::log_id`): a claim is about that log only, so a
    /// log rewritten by `metastore repair` (a new id) is not held to it.
    #[prost(fixed64, tag = "2")]
    pub log_id: u64,
    /// Every record of that log up to this sequence was durable.
    #[prost(uint64, tag = "3")]
    pub durable_through: u64,
}

/// A Raft log entry (raft-rs's `Entry`, minus fields we never set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedRaftEntry {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(uint64, tag = "2")]
    pub term: u64,
    /// raft-rs `EntryType` as i32 (normal, conf change, conf change v2).
    #[prost(int32, tag = "3")]
    pub entry_type: i32,
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedHardState {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub vote: u64,
    #[prost(uint64, tag = "3")]
    pub commit: u64,
}

/// The shard command inside a Raft entry's data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShardCommandRecord {
    /// The store revision these changes were made at (0 for records that
    /// change no key).
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// Every shard holding a part of this revision, ascending. Recovery
    /// treats the revision as complete only when each of them logged its
    /// part. Empty for single-shard writes (this shard only).
    #[prost(uint32, repeated, tag = "2")]
    pub participants: Vec<u32>,
    #[prost(message, repeated, tag = "3")]
    pub changes: Vec<LoggedChange>,
    /// Non-zero: history below this revision was compacted.
    #[prost(int64, tag = "4")]
    pub compact_revision: i64,
    /// Non-zero: recovery discarded revisions `void_from..=void_to` (they
    /// were never acknowledged); replay must not apply them.
    #[prost(int64, tag = "5")]
    pub void_from: i64,
    #[prost(int64, tag = "6")]
    pub void_to: i64,
    /// A lease granted; logged by its home shard (`crate::lease`).
    #[prost(message, optional, tag = "7")]
    pub lease_grant: Option<LoggedLease>,
    /// Non-zero: this lease was revoked (with this record's changes, the
    /// deletion of its keys, if any).
    #[prost(int64, tag = "8")]
    pub lease_revoke: i64,
}

/// A granted lease.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedLease {
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The TTL granted, after raising it to the minimum.
    #[prost(int64, tag = "2")]
    pub ttl_seconds: i64,
}

/// One key's new version (a tombstone when `version == 0`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedChange {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    #[prost(int64, tag = "3")]
    pub create_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(int64, tag = "5")]
    pub lease: i64,
    #[prost(uint32, tag = "6")]
    pub sub_revision: u32,
}

impl LoggedChange {
    pub fn from_version(key: &Bytes, version: &Version) -> Self {
        Self {
            key: key.clone(),
            value: version.value.clone(),
            create_revision: version.create_revision,
            version: version.version,
            lease: version.lease,
            sub_revision: version.sub_revision,
        }
    }

    pub fn to_version(&self) -> Version {
        Version {
            value: self.value.clone(),
            create_revision: self.create_revision,
            version: self.version,
            lease: self.lease,
            sub_revision: self.sub_revision,
        }
    }
}

impl ShardCommandRecord {
    /// The record of a write's changes on one shard, and of the lease it
    /// revokes if this shard is the lease's home.
    pub fn for_changes<'a>(
        revision: i64,
        participants: Vec<u32>,
        changes: impl IntoIterator<Item = (&'a Bytes, &'a Version)>,
        revoked_lease: Option<i64>,
    ) -> Self {
        Self {
            revision,
            participants,
            changes: changes
                .into_iter()
                .map(|(key, version)| LoggedChange::from_version(key, version))
                .collect(),
            lease_revoke: revoked_lease.unwrap_or(0),
            ..Default::default()
        }
    }

    /// The record of a write that ran entirely on this shard.
    pub fn for_change_set(change_set: &ChangeSet) -> Self {
        Self::for_changes(
            change_set.revision,
            Vec::new(),
            &change_set.changes,
            change_set.revoked_lease,
        )
    }

    pub fn lease_grant(id: i64, ttl_seconds: i64) -> Self {
        Self {
            lease_grant: Some(LoggedLease { id, ttl_seconds }),
            ..Default::default()
        }
    }

    pub fn compaction(revision: i64) -> Self {
        Self {
            compact_revision: revision,
            ..Default::default()
        }
    }

    pub fn void(from: i64, to: i64) -> Self {
        Self {
            void_from: from,
            void_to: to,
            ..Default::default()
        }
    }
}

impl WalRecord {
    pub fn entry(entry: &Entry) -> Self {
        let logged = LoggedRaftEntry {
            index: entry.index,
            term: entry.term,
            entry_type: entry.entry_type as i32,
            data: entry.data.clone(),
        };
        Self {
            kind: Some(wal_record::Kind::Entry(logged)),
        }
    }

    pub fn hard_state(hard_state: &HardState) -> Self {
        let logged = LoggedHardState {
            term: hard_state.term,
            vote: hard_state.vote,
            commit: hard_state.commit,
        };
        Self {
            kind: Some(wal_record::Kind::HardState(logged)),
        }
    }
}

impl WalRecord {
    pub fn frontier(logs: Vec<LoggedDurableLog>) -> Self {
        Self {
            kind: Some(wal_record::Kind::Frontier(LoggedFrontier { logs })),
        }
    }

    pub fn restored(index: u64, term: u64) -> Self {
        Self {
            kind: Some(wal_record::Kind::Restored(LoggedRestore { index, term })),
        }
    }
}

impl LoggedRaftEntry {
    pub fn to_entry(&self) -> Entry {
        let entry_type = match self.entry_type {
            1 => EntryType::EntryConfChange,
            2 => EntryType::EntryConfChangeV2,
            _ => EntryType::EntryNormal,
        };
        Entry {
            index: self.index,
            term: self.term,
            entry_type,
            data: self.data.clone(),
            ..Default::default()
        }
    }
}

impl LoggedHardState {
    pub fn to_hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
            ..Default::default()
        }
    }
}

/// Encodes a message into a fresh buffer.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut entry = Entry {
            index: 7,
            term: 2,
            ..Default::default()
        };
        let command = ShardCommandRecord::for_changes(
            42,
            vec![0, 3],
            [(
                &Bytes::from_static(b"k"),
                &Version {
                    value: Bytes::from_static(b"v"),
                    create_revision: 40,
                    version: 3,
                    lease: 0,
                    sub_revision: 0,
                },
            )],
            None,
        );
        entry.data = Bytes::from(encode(&command));
        let record = WalRecord::entry(&entry);
        let decoded = WalRecord::decode(&encode(&record)[..]).expect("decode");
        let Some(wal_record::Kind::Entry(logged)) = decoded.kind else {
            panic!("entry expected")
        };
        assert_eq!((logged.index, logged.term), (7, 2));
        let command_back = ShardCommandRecord::decode(logged.data).expect("command");
        assert_eq!(command_back, command);
        assert_eq!(command_back.changes[0].to_version().version, 3);
    }
}
