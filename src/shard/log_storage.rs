//! raft-rs's `Storage` over the shard's own files.
//!
//! The WAL is the log of record. At startup the entries after the newest
//! snapshot and the hard state are read back into an in-memory mirror
//! (raft-rs's `MemStorage`), which then follows every persist; Raft reads
//! entries, terms and its initial state from that mirror. A snapshot request
//! (a follower too far behind, once there are followers) is answered from
//! the newest snapshot file, whose bytes become the Raft snapshot's data.

use std::path::PathBuf;
use std::sync::Arc;

use raft::eraftpb::{Entry, Snapshot};
use raft::storage::{MemStorage, RaftState};
use raft::{GetEntriesContext, Storage, StorageError};

use crate::membership::Configurations;
use crate::snapshot::{SnapshotView, load_newest_snapshot};

pub struct ShardLogStorage {
    /// Entries after the newest snapshot, and the hard state, as in the WAL.
    mirror: MemStorage,
    /// The shard's snapshot directory; `snapshot()` serves its newest file.
    snapshot_directory: PathBuf,
    /// On a cluster member, every group's configurations by index and this
    /// group's number in them: a snapshot carries the configuration as of
    /// its own index, which may be older than the mirror's. `None` alone.
    configurations: Option<(Arc<Configurations>, usize)>,
    /// Raft asked for a snapshot for a member the newest one does not name
    /// (added since): raft-rs on that member would refuse it, so none is
    /// sent, and the worker writes a newer one (`take_snapshot_wanted`).
    snapshot_wanted: std::cell::Cell<bool>,
}

impl ShardLogStorage {
    pub fn new(mirror: MemStorage, snapshot_directory: PathBuf) -> Self {
        Self {
            mirror,
            snapshot_directory,
            configurations: None,
            snapshot_wanted: std::cell::Cell::new(false),
        }
    }

    /// Whether a newer snapshot is wanted (and forgets it was).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// The storage of group `group` of a cluster member.
    pub fn with_configurations(
        mut self,
        configurations: Arc<Configurations>,
        group: usize,
    ) -> Self {
        self.configurations = Some((configurations, group));
        self
    }

    /// Where this group's configurations are recorded (`None` alone).
    pub fn configurations(&self) -> Option<&(Arc<Configurations>, usize)> {
        self.configurations.as_ref()
    }

    /// The in-memory mirror, for the group to keep in step with the WAL.
    pub fn mirror(&self) -> &MemStorage {
        &self.mirror
    }

    /// Where the shard's snapshot files live.
    pub fn snapshot_directory(&self) -> &std::path::Path {
        &self.snapshot_directory
    }
}

impl Storage for ShardLogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mirror.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mirror.entries(low, high, max_size, context)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.mirror.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mirror.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mirror.last_index()
    }

    /// Reads the newest snapshot file (blocking: only a lagging follower
    /// asks, rarely). A snapshot older than `request_index` is "temporarily
    /// unavailable": the shard writes a newer one soon.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let Ok(Some((_, bytes))) = load_newest_snapshot(&self.snapshot_directory) else {
            return Err(unavailable());
        };
        let meta = SnapshotView::open(&bytes)
            .map_err(|_| unavailable())?
            .meta();
        if meta.raft_index < request_index {
            return Err(unavailable());
        }
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = meta.raft_index;
        metadata.term = meta.raft_term;
        let conf_state = match &self.configurations {
            Some((configurations, group)) => {
                configurations.at(*group, meta.raft_index).conf_state()
            }
            None => self.mirror.initial_state()?.conf_state,
        };
        // raft-rs restores only a snapshot whose configuration names the
        // member (a member added after it was written).
        if !conf_state.voters.contains(&to) && !conf_state.learners.contains(&to) {
            self.snapshot_wanted.set(true);
            return Err(unavailable());
        }
        metadata.set_conf_state(conf_state);
        snapshot.data = bytes.into();
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::raft_group::LOCAL_MEMBER;
    use crate::snapshot::{SnapshotMeta, WritePace, encode_snapshot, write_snapshot_file};
    use raft::eraftpb::ConfState;

    #[test]
    fn snapshot_requests_are_served_from_the_newest_file() {
        let directory =
            std::env::temp_dir().join(format!("metastore-log-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).expect("mkdir");
        let storage = ShardLogStorage::new(
            MemStorage::new_with_conf_state(ConfState::from((vec![LOCAL_MEMBER, 2], vec![]))),
            directory.clone(),
        );
        assert!(storage.snapshot(0, 2).is_err(), "no snapshot file yet");

        let meta = SnapshotMeta {
            shard: 0,
            shard_count: 1,
            raft_index: 40,
            raft_term: 3,
            revision: 90,
            compacted_revision: -1,
        };
        let bytes = encode_snapshot(&meta, &[], std::iter::empty()).expect("encode");
        write_snapshot_file(&directory, &meta, &bytes, WritePace::Unpaced).expect("write");
        let snapshot = storage.snapshot(30, 2).expect("served");
        assert_eq!(
            (snapshot.get_metadata().index, snapshot.get_metadata().term),
            (40, 3)
        );
        assert_eq!(
            &snapshot.data[..],
            &bytes[..],
            "the file's bytes are the Raft snapshot's data"
        );
        assert!(
            storage.snapshot(41, 2).is_err(),
            "older than requested: temporarily unavailable"
        );
        assert!(!storage.take_snapshot_wanted());
        assert!(
            storage.snapshot(30, 3).is_err(),
            "a member the snapshot's configuration does not name would refuse it"
        );
        assert!(storage.take_snapshot_wanted(), "a newer one is wanted");
        std::fs::remove_dir_all(&directory).expect("cleanup");
    }
}
