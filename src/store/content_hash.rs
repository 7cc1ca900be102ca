//! `HashKV` and `Hash`: a checksum of the key space's MVCC content that is
//! equal on equal data whatever the shard count.
//!
//! Every version is fed to one crc32c (Castagnoli, as etcd's hashes) in key
//! order, then revision descending (the memtable's own order; shards hold
//! disjoint keys, so merging the shards by key gives one order for any
//! shard count). A version contributes, all integers little-endian:
//! `key length u64, key, revision i64, create_revision i64, version i64,
//! lease i64, sub_revision u32, value length u64, value`.
//!
//! Which versions, for `HashKV` at revision `at` with compaction point `C`
//! (etcd's `HashByRev`): every version with `C < revision <= at`, plus, for
//! each key, its newest version at or below `at` if that is at or below `C`
//! and not a tombstone (what etcd's `kvindex.Keep(at)` keeps). This depends
//! only on the logical history, not on how far a compaction has physically
//! freed versions yet, so a restored backup hashes like its source.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use bytes::Bytes;

use super::error::KvError;
use super::key_space::KeySpace;
use super::memtable::Version;

/// What `HashKV` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpaceHash {
    pub hash: u32,
    /// The compaction point the hash was computed against.
    pub compacted_revision: i64,
    /// The revision hashed (the request's, or the current one for 0).
    pub revision: i64,
}

/// Attempts before giving up when compactions keep moving under a hash.
const COMPACTION_RETRIES: usize = 3;

/// etcd's `HashByRev` over the whole key space. `requested == 0` hashes the
/// current revision `current` (the caller's watermark). Blocking (a full
/// scan): run it off the executor threads.
pub fn hash_kv(space: &KeySpace, requested: i64, current: i64) -> Result<KeySpaceHash, KvError> {
    for _ in 0..COMPACTION_RETRIES {
        let compacted = space.compacted_revision();
        // etcd refuses the compaction point itself too (`rev <= compactRev`).
        if requested > 0 && requested <= compacted {
            return Err(KvError::Compacted);
        }
        if requested > current {
            return Err(KvError::FutureRevision);
        }
        let at = if requested > 0 { requested } else { current };
        let hash = hash_history(space, at, compacted);
        // A compaction that moved meanwhile may have freed versions this
        // hash counted or needed; hash again against the new point.
        if space.compacted_revision() == compacted {
            return Ok(KeySpaceHash {
                hash,
                compacted_revision: compacted,
                revision: at,
            });
        }
    }
    Err(KvError::Compacted)
}

/// The logical history at `at` as a compaction at `compacted` leaves it
/// (the versions `hash_kv` counts): the same whether or not that
/// compaction has been applied, or has freed its versions yet, here.
pub fn hash_history(space: &KeySpace, at: i64, compacted: i64) -> u32 {
    hash_versions(space, at, |revision, newest_of_key, version| {
        revision > compacted || (newest_of_key && !version.is_tombstone())
    })
}

/// `Hash`: every version stored at or below `at`, whether or not a
/// compaction has scheduled it for removal, in the same order and encoding
/// as [`hash_kv`]. Like etcd's (a hash of the whole backend file), it
/// describes what is stored, so it can differ between members with the same
/// history while a compaction is being applied.
pub fn hash_stored(space: &KeySpace, at: i64) -> u32 {
    hash_versions(space, at, |_, _, _| true)
}

/// crc32c over the versions at or below `at` that `include(revision,
/// newest_of_key, version)` selects, in key order then revision descending.
fn hash_versions(
    space: &KeySpace,
    at: i64,
    mut include: impl FnMut(i64, bool, &Version) -> bool,
) -> u32 {
    let mut crc = 0u32;
    let mut previous_key: Option<Bytes> = None;
    for (key, revision, version) in
        merged_versions(space).filter(|(_, revision, _)| *revision <= at)
    {
        // Versions of a key are contiguous and newest first, so the first
        // one seen at or below `at` is the key's newest there.
        let newest_of_key = previous_key.as_ref() != Some(&key);
        if include(revision, newest_of_key, &version) {
            crc = hash_version(crc, &key, revision, &version);
        }
        previous_key = Some(key);
    }
    crc
}

fn hash_version(crc: u32, key: &[u8], revision: i64, version: &Version) -> u32 {
    let mut fixed = Vec::with_capacity(56);
    fixed.extend_from_slice(&(key.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &fixed);
    let crc = crc32c::crc32c_append(crc, key);
    fixed.clear();
    for field in [
        revision,
        version.create_revision,
        version.version,
        version.lease,
    ] {
        fixed.extend_from_slice(&field.to_le_bytes());
    }
    fixed.extend_from_slice(&version.sub_revision.to_le_bytes());
    fixed.extend_from_slice(&(version.value.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &fixed);
    crc32c::crc32c_append(crc, &version.value)
}

/// Every stored version of every shard in key order, then revision
/// descending: a k-way merge of the shards' skip lists by key (a heap of
/// each shard's next key). Lazy: holds one pending version per shard.
pub fn merged_versions(space: &KeySpace) -> MergedVersions<'_> {
    let mut sources: Vec<Box<dyn Iterator<Item = (Bytes, i64, Version)> + '_>> = space
        .shard_map()
        .all_shards()
        .map(|shard| {
            Box::new(space.memtable(shard).versions())
                as Box<dyn Iterator<Item = (Bytes, i64, Version)> + '_>
        })
        .collect();
    let mut heads = Vec::with_capacity(sources.len());
    let mut heap = BinaryHeap::new();
    for (index, source) in sources.iter_mut().enumerate() {
        let head = source.next();
        if let Some((key, _, _)) = &head {
            heap.push(Reverse((key.clone(), index)));
        }
        heads.push(head);
    }
    MergedVersions {
        sources,
        heads,
        heap,
        current: None,
    }
}

/// See [`merged_versions`].
pub struct MergedVersions<'a> {
    /// One iterator per shard, each in key order then revision descending.
    sources: Vec<Box<dyn Iterator<Item = (Bytes, i64, Version)> + 'a>>,
    /// Each source's next version, taken out of the iterator already.
    heads: Vec<Option<(Bytes, i64, Version)>>,
    /// Sources with a head, by the head's key (shards' keys are disjoint,
    /// so the index only breaks ties that cannot happen).
    heap: BinaryHeap<Reverse<(Bytes, usize)>>,
    /// The source whose key is being drained: a key's versions all come from
    /// one shard, so it stays current until its key changes.
    current: Option<usize>,
}

impl Iterator for MergedVersions<'_> {
    type Item = (Bytes, i64, Version);

    fn next(&mut self) -> Option<Self::Item> {
        let index = match self.current {
            Some(index) => index,
            None => {
                let Reverse((_, index)) = self.heap.pop()?;
                index
            }
        };
        let item = self.heads[index].take()?;
        let next = self.sources[index].next();
        match &next {
            Some((key, _, _)) if *key == item.0 => self.current = Some(index),
            Some((key, _, _)) => {
                self.heap.push(Reverse((key.clone(), index)));
                self.current = None;
            }
            None => self.current = None,
        }
        self.heads[index] = next;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::table::LeaseTable;
    use crate::store::revision::RevisionClock;
    use crate::store::shard_map::ShardMap;

    /// A key space with `shards` shards holding the same history: puts,
    /// overwrites, deletes and a compaction at 6.
    fn space_with_history(shards: usize) -> std::sync::Arc<KeySpace> {
        let clock = RevisionClock::new(10, 1);
        let space = KeySpace::new(ShardMap::new(shards, 1), clock, LeaseTable::for_member(1));
        let put = |value: &str, create_revision, version, lease| Version {
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision,
            version,
            lease,
            sub_revision: 0,
        };
        let history = [
            ("a", 2, put("1", 2, 1, 0)),
            ("b", 3, put("x", 3, 1, 7)),
            ("a", 4, put("2", 2, 2, 0)),
            ("c", 5, put("y", 5, 1, 0)),
            ("c", 6, Version::tombstone()),
            ("d", 7, put("z", 7, 1, 0)),
            ("a", 8, put("3", 2, 3, 0)),
            ("b", 9, Version::tombstone()),
            ("e", 10, put("", 10, 1, 0)),
        ];
        for (key, revision, version) in history {
            let key = Bytes::copy_from_slice(key.as_bytes());
            let shard = space.shard_map().shard_of(&key);
            space.memtable(shard).insert(key, revision, version);
        }
        space.begin_compaction(6).expect("compact");
        for shard in space.shard_map().all_shards() {
            space.memtable(shard).compact(6);
        }
        space
    }

    #[test]
    fn equal_history_hashes_equal_on_any_shard_count() {
        let spaces: Vec<_> = [1, 2, 3, 8].into_iter().map(space_with_history).collect();
        for at in [0, 7, 8, 10] {
            let hashes: Vec<_> = spaces
                .iter()
                .map(|space| hash_kv(space, at, 10).expect("hash"))
                .collect();
            assert!(
                hashes.windows(2).all(|pair| pair[0] == pair[1]),
                "at {at}: {hashes:?}"
            );
            assert_eq!(hashes[0].compacted_revision, 6);
        }
        let stored: Vec<_> = spaces.iter().map(|space| hash_stored(space, 10)).collect();
        assert!(stored.windows(2).all(|pair| pair[0] == pair[1]));
    }

    #[test]
    fn different_history_hashes_differently() {
        let one = space_with_history(2);
        let other = space_with_history(2);
        let key = Bytes::from_static(b"f");
        let shard = other.shard_map().shard_of(&key);
        other.memtable(shard).insert(
            key,
            10,
            Version {
                value: Bytes::from_static(b"v"),
                create_revision: 10,
                version: 1,
                lease: 0,
                sub_revision: 1,
            },
        );
        assert_ne!(
            hash_kv(&one, 10, 10).expect("hash"),
            hash_kv(&other, 10, 10).expect("hash")
        );
        assert_eq!(
            hash_kv(&one, 9, 10),
            hash_kv(&other, 9, 10),
            "a change above the hashed revision does not count"
        );
    }

    #[test]
    fn compacted_and_future_revisions_are_refused_as_etcd() {
        let space = space_with_history(3);
        assert_eq!(hash_kv(&space, 6, 10), Err(KvError::Compacted));
        assert_eq!(hash_kv(&space, 11, 10), Err(KvError::FutureRevision));
        assert_eq!(hash_kv(&space, 0, 10).expect("hash").revision, 10);
    }

    #[test]
    fn merge_yields_key_order_then_newest_first() {
        let space = space_with_history(4);
        let order: Vec<(Bytes, i64)> = merged_versions(&space)
            .map(|(key, revision, _)| (key, revision))
            .collect();
        let mut sorted = order.clone();
        sorted.sort_by(|left, right| left.0.cmp(&right.0).then(right.1.cmp(&left.1)));
        assert_eq!(order, sorted);
        assert_eq!(order.len(), 6, "a@4, a@8, b@3, b@9, d@7, e@10 remain");
    }
}
