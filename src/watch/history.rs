//! Reading the global history for watchers: the changes in a revision
//! interval, across shards, in (revision, sub-revision) order.
//!
//! Each shard's memtable indexes its changes by revision; a revision that
//! spans shards has parts in several of them, ordered by sub-revision. This
//! merges them. Pure: reads the key space, nothing else.

use std::cell::OnceCell;

use bytes::Bytes;

use crate::store::key_space::KeySpace;
use crate::store::memtable::HistoricalChange;
use crate::store::shard_map::ShardId;

/// A contiguous piece of history: every change with a revision in
/// `after+1..=through` on the shards read, in order.
#[derive(Debug, Default, Clone)]
pub struct HistoryChunk {
    pub after: i64,
    pub through: i64,
    changes: Vec<HistoricalChange>,
    /// `encoded_events[i]` is `changes[i]` as the event every watcher
    /// without `prev_kv` is sent, encoded by the first watcher to deliver
    /// it: the feed's chunks are shared by every stream on a core, so each
    /// event is encoded once per core rather than once per watcher.
    encoded_events: Vec<OnceCell<Bytes>>,
}

impl HistoryChunk {
    fn new(after: i64, through: i64, changes: Vec<HistoricalChange>) -> Self {
        let encoded_events = changes.iter().map(|_| OnceCell::new()).collect();
        Self {
            after,
            through,
            changes,
            encoded_events,
        }
    }

    pub fn changes(&self) -> &[HistoricalChange] {
        &self.changes
    }

    /// The keys' and values' bytes: the memory the chunk's encoded events
    /// take, up to their few bytes of framing each. Counted when asked
    /// (the feed asks twice per batch); catch-up chunks never need it.
    pub fn payload_bytes(&self) -> usize {
        self.changes.iter().map(payload_len).sum()
    }

    /// Each change with the cell that holds (or will hold) its shared
    /// encoded event.
    pub fn deliverable(&self) -> impl Iterator<Item = DeliverableChange<'_>> {
        self.deliverable_from(self.after + 1)
    }

    /// [`Self::deliverable`] from the first change at or above `revision`,
    /// found by binary search: a watch that takes a large feed batch in
    /// several bounded steps does not pass over what it already sent.
    pub fn deliverable_from(&self, revision: i64) -> impl Iterator<Item = DeliverableChange<'_>> {
        let first = self
            .changes
            .partition_point(|change| change.position.revision < revision);
        self.changes[first..]
            .iter()
            .zip(&self.encoded_events[first..])
            .map(|(change, encoded_event)| DeliverableChange {
                change,
                encoded_event,
            })
    }
}

/// A change's key and value bytes.
fn payload_len(change: &HistoricalChange) -> usize {
    change.key.len()
        + change
            .version
            .as_ref()
            .map_or(0, |version| version.value.len())
}

/// A change as a watcher delivers it (see [`HistoryChunk::deliverable`]).
#[derive(Clone, Copy)]
pub struct DeliverableChange<'a> {
    pub change: &'a HistoricalChange,
    /// The change's event without `prev_kv`, once some watcher encoded it.
    pub encoded_event: &'a OnceCell<Bytes>,
}

/// The history a watcher needs was compacted away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The compaction point: the oldest revision still readable.
    pub compact_revision: i64,
}

/// Checks that history from `after + 1` on is still readable. A watcher
/// may resume at the compaction point itself (etcd: `minRev < compactRev`
/// is what cancels).
pub fn check_not_compacted(space: &KeySpace, after: i64) -> Result<(), Compacted> {
    let compacted = space.compacted_revision();
    if after + 1 < compacted {
        return Err(Compacted {
            compact_revision: compacted,
        });
    }
    Ok(())
}

/// Reads the changes in `after+1..=through` from `shards`, at most about
/// `max_changes` of them and `max_payload_bytes` of their keys and values
/// per shard: a shard stops at a revision boundary once it has that many,
/// and the chunk then ends at the lowest revision every shard read
/// completely, so a revision is never split between chunks (and a chunk
/// holds at least one revision of each shard that has one).
/// `through` must be at or below the watermark.
pub fn read_changes(
    space: &KeySpace,
    shards: &[ShardId],
    after: i64,
    through: i64,
    max_changes: usize,
    max_payload_bytes: usize,
) -> Result<HistoryChunk, Compacted> {
    check_not_compacted(space, after)?;
    let mut complete_through = through;
    let mut changes = Vec::new();
    for &shard in shards {
        let mut taken = 0usize;
        let mut taken_bytes = 0usize;
        let mut last_revision = after;
        let mut truncated = false;
        space
            .memtable(shard)
            .changes_between(after, through, |change| {
                let full = taken >= max_changes || taken_bytes >= max_payload_bytes;
                if full && change.position.revision != last_revision {
                    truncated = true;
                    return false;
                }
                last_revision = change.position.revision;
                taken += 1;
                taken_bytes += payload_len(&change);
                changes.push(change);
                true
            });
        if truncated {
            complete_through = complete_through.min(last_revision);
        }
    }
    // A compaction that ran during the read may have removed changes we
    // needed; the read is only good if the point did not pass `after + 1`.
    check_not_compacted(space, after)?;
    changes.retain(|change| change.position.revision <= complete_through);
    if shards.len() > 1 {
        changes.sort_unstable_by_key(|change| change.position);
    }
    Ok(HistoryChunk::new(after, complete_through, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::table::LeaseTable;
    use crate::store::memtable::Version;
    use crate::store::revision::RevisionClock;
    use crate::store::shard_map::ShardMap;

    fn put(space: &KeySpace, key: &str, revision: i64, sub_revision: u32) {
        let shard = space.shard_map().shard_of(key.as_bytes());
        space.memtable(shard).insert(
            Bytes::copy_from_slice(key.as_bytes()),
            revision,
            Version {
                value: Bytes::from_static(b"v"),
                create_revision: revision,
                version: 1,
                lease: 0,
                sub_revision,
            },
        );
    }

    fn space_with_history() -> std::sync::Arc<KeySpace> {
        let map = ShardMap::new(4, 1);
        let space = KeySpace::new(map, RevisionClock::new(1, 1), LeaseTable::for_member(0));
        // Revision 2 spans shards (a txn of four puts, in op order d, c, b, a).
        for (sub, key) in ["d", "c", "b", "a"].iter().enumerate() {
            put(&space, key, 2, sub as u32);
        }
        for revision in 3..=9 {
            put(&space, &format!("k{revision}"), revision, 0);
        }
        space
    }

    fn keys(chunk: &HistoryChunk) -> Vec<String> {
        chunk
            .changes()
            .iter()
            .map(|change| String::from_utf8_lossy(&change.key).into_owned())
            .collect()
    }

    #[test]
    fn a_revision_spanning_shards_comes_back_in_sub_revision_order() {
        let space = space_with_history();
        let all: Vec<ShardId> = space.shard_map().all_shards().collect();
        let chunk = read_changes(&space, &all, 1, 3, 100, usize::MAX).unwrap();
        assert_eq!(keys(&chunk), vec!["d", "c", "b", "a", "k3"]);
        assert_eq!(chunk.through, 3);
    }

    #[test]
    fn chunks_end_at_revision_boundaries_and_resume_without_gaps() {
        let space = space_with_history();
        let all: Vec<ShardId> = space.shard_map().all_shards().collect();
        let mut after = 1;
        let mut seen = Vec::new();
        while after < 9 {
            let chunk = read_changes(&space, &all, after, 9, 1, usize::MAX).unwrap();
            assert!(chunk.through > after, "every chunk makes progress");
            seen.extend(chunk.changes().iter().map(|change| change.position));
            after = chunk.through;
        }
        let mut expected = seen.clone();
        expected.sort();
        expected.dedup();
        assert_eq!(seen, expected, "ordered, no duplicates");
        assert_eq!(seen.len(), 4 + 7, "no gaps");
    }

    #[test]
    fn compacted_history_is_reported() {
        let space = space_with_history();
        space.clock();
        space.restore_compaction(5);
        let all: Vec<ShardId> = space.shard_map().all_shards().collect();
        assert_eq!(
            read_changes(&space, &all, 3, 9, 100, usize::MAX).unwrap_err(),
            Compacted {
                compact_revision: 5
            }
        );
        assert!(
            read_changes(&space, &all, 4, 9, 100, usize::MAX).is_ok(),
            "resuming at the point is fine"
        );
    }
}
