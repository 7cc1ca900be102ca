//! A follower too far behind its group's log catches up from the leader's
//! snapshot (issue 19 §2): the snapshot is checked when it arrives
//! ([`check_snapshot`], before Raft sees it), made durable and the log
//! restored after it by the group (`RaftGroup::persist`), and then the
//! shard's state is replaced here.
//!
//! Readers keep going meanwhile. The shard's memtable is not cleared: the
//! snapshot's versions are inserted (those already here are the same), and
//! the versions here at or below the snapshot's revision that it does not
//! hold are removed (writes a failed lead member left and its successor
//! voided; readers never saw them). History below the snapshot's
//! compaction point is freed in steps, as after a compaction record.
//!
//! The member's readable prefix does not move at once: the snapshot
//! brings this group's parts of every revision up to its revision, but
//! the member's other groups may still lack theirs. The clock keeps the
//! snapshot's revision as a floor to reach (`RevisionClock::
//! await_floor`); the member's lead-member task has every group confirm
//! a read with its leader and apply through it, after which every part
//! of every revision up to the floor is applied here, and raises the
//! prefix (`lead_member::run`).

use std::collections::BTreeSet;

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType, Snapshot};

use super::ShardWorker;
use super::log_entry::ShardCommandRecord;
use super::snapshotting::{self, LoadedShardSnapshot};
use crate::store::shard_map::ShardId;
use crate::wal::StorageDevice;

/// Whether a `MsgSnapshot` for `shard`'s group holds a whole, undamaged
/// snapshot of that shard at the position it claims. Anything else is
/// dropped before Raft sees it (the leader sends another).
pub fn check_snapshot(message: &Message, shard: ShardId, shard_count: usize) -> Result<(), String> {
    if message.get_msg_type() != MessageType::MsgSnapshot {
        return Ok(());
    }
    let snapshot = message.get_snapshot();
    let metadata = snapshot.get_metadata();
    let view = crate::snapshot::SnapshotView::open(&snapshot.data)
        .map_err(|error| format!("damaged snapshot: {error}"))?;
    let meta = view.meta();
    if meta.shard as usize != shard || meta.shard_count as usize != shard_count {
        return Err(format!(
            "a snapshot of shard {} of {} sent to shard {shard} of {shard_count}",
            meta.shard, meta.shard_count
        ));
    }
    if (meta.raft_index, meta.raft_term) != (metadata.index, metadata.term) {
        return Err(format!(
            "the snapshot covers index {} term {}, the message claims index {} term {}",
            meta.raft_index, meta.raft_term, metadata.index, metadata.term
        ));
    }
    Ok(())
}

impl<D: StorageDevice> ShardWorker<D> {
    /// Replaces the shard's state with `snapshot` (durable already, the log
    /// restored after it) before anything committed after it is applied.
    pub(super) async fn install_leader_snapshot(&mut self, snapshot: Snapshot) {
        let loaded = match snapshotting::loaded_from_image(snapshot.data, self.shard) {
            Ok(loaded) => loaded,
            Err(error) => {
                // Checked on arrival and written as is: unreadable now
                // means memory or the disk failed under us.
                tracing::error!(shard = self.shard, %error, "the installed snapshot cannot be read back; aborting");
                std::process::abort();
            }
        };
        let meta = loaded.meta;
        tracing::info!(
            shard = self.shard,
            raft_index = meta.raft_index,
            revision = meta.revision,
            "installing the leader's snapshot"
        );
        self.replace_state(loaded);
        // What this member proposed is gone from its log: whether another
        // member committed it is unknown here.
        for (index, term, _) in self.proposals.drain(..) {
            self.fate_unknown.insert((index, term));
        }
        let clock = self.space.clock();
        clock.observe_applied(meta.revision);
        clock.await_floor(meta.revision);
        self.snapshots.logged.clear();
        self.snapshots.entries_since_snapshot = 0;
        // The group wrote it under this name (`RaftGroup::persist`).
        let newest = self
            .snapshots
            .directory
            .join(crate::snapshot::snapshot_file_name(
                meta.raft_term,
                meta.raft_index,
            ));
        self.release_log_through(meta.raft_index, newest, Vec::new())
            .await;
    }

    /// The memtable and this shard's leases as `loaded` says, without a
    /// moment in which a reader could miss a version it may see.
    fn replace_state(&mut self, loaded: LoadedShardSnapshot) {
        let LoadedShardSnapshot {
            meta,
            leases,
            versions,
        } = loaded;
        let memtable = self.space.memtable(self.shard);
        let kept: BTreeSet<(Bytes, i64)> = versions
            .iter()
            .map(|(key, revision, _)| (key.clone(), *revision))
            .collect();
        for (key, revision, version) in versions {
            memtable.insert(key, revision, version);
        }
        let stale: BTreeSet<i64> = memtable
            .versions()
            .filter(|(key, revision, _)| {
                *revision <= meta.revision
                    && *revision > meta.compacted_revision
                    && !kept.contains(&(key.clone(), *revision))
            })
            .map(|(_, revision, _)| revision)
            .collect();
        for revision in stale {
            memtable.remove_revisions(revision, revision);
        }
        let now = std::time::Instant::now();
        let table = self.space.leases();
        let shard_map = self.space.shard_map();
        let snapshot_leases: BTreeSet<i64> = leases.iter().map(|lease| lease.id).collect();
        for id in table.ids() {
            if crate::lease::home_shard(shard_map, id) == self.shard
                && !snapshot_leases.contains(&id)
            {
                table.remove(id);
            }
        }
        for lease in leases.iter().filter(|lease| !table.exists(lease.id)) {
            table.insert(lease.id, lease.ttl_seconds, now);
        }
        if meta.compacted_revision > 0 {
            let compaction = ShardCommandRecord::compaction(meta.compacted_revision);
            super::apply::apply_command(&self.space, self.shard, &compaction, now);
            self.start_compaction(meta.compacted_revision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{SnapshotMeta, encode_snapshot};

    fn snapshot_message(meta: &SnapshotMeta, claimed: (u64, u64)) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        let snapshot = message.mut_snapshot();
        snapshot.mut_metadata().index = claimed.0;
        snapshot.mut_metadata().term = claimed.1;
        snapshot.data = encode_snapshot(meta, &[], std::iter::empty())
            .expect("encode")
            .into();
        message
    }

    #[test]
    fn only_whole_snapshots_of_this_shard_at_their_claimed_position_pass() {
        let meta = SnapshotMeta {
            shard: 1,
            shard_count: 2,
            raft_index: 40,
            raft_term: 3,
            revision: 90,
            compacted_revision: -1,
        };
        let good = snapshot_message(&meta, (40, 3));
        assert_eq!(check_snapshot(&good, 1, 2), Ok(()));
        assert!(check_snapshot(&good, 0, 2).is_err(), "another shard's");
        assert!(check_snapshot(&good, 1, 4).is_err(), "another shard map");
        let misplaced = snapshot_message(&meta, (41, 3));
        assert!(check_snapshot(&misplaced, 1, 2).is_err());
        let mut damaged = good.clone();
        let mut bytes = damaged.get_snapshot().data.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        damaged.mut_snapshot().data = bytes.into();
        assert!(check_snapshot(&damaged, 1, 2).is_err());
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        assert_eq!(check_snapshot(&heartbeat, 0, 2), Ok(()), "not a snapshot");
    }
}
