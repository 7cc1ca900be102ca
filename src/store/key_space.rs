//! The whole key space as readers see it: every shard's memtable, the
//! revision clock, and the compaction point.
//!
//! Shared by all cores (`Arc`). Reading needs no message to another core: the
//! memtables are lock-free. Writing a shard's memtable is reserved to the
//! core that owns it (see `crate::shard`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;

use super::error::KvError;
use super::key_range::KeyRange;
use super::memtable::Memtable;
use super::revision::RevisionClock;
use super::shard_map::{ShardId, ShardMap};
use crate::lease::table::LeaseTable;
use crate::proto::mvccpb::KeyValue;

/// No compaction has happened yet (etcd's `compactMainRev` starts at -1).
const NEVER_COMPACTED: i64 = -1;

pub struct KeySpace {
    shard_map: ShardMap,
    memtables: Box<[Memtable]>,
    clock: Arc<RevisionClock>,
    /// Reads at a revision below this fail with "compacted"; raised before
    /// any history is freed so a reader that checks it afterwards can tell
    /// that its view may have been cut.
    compacted_revision: AtomicI64,
    /// Every durable lease (see `crate::lease`); write evaluation checks
    /// attachments against it.
    leases: LeaseTable,
}

/// Keys found by a range read, before etcd's filters, sort and limit.
#[derive(Debug, Default)]
pub struct RangeResult {
    /// In ascending key order; at most the limit asked for.
    pub key_values: Vec<KeyValue>,
    /// Every live key in the range, regardless of the limit.
    pub count: usize,
}

impl KeySpace {
    pub fn new(shard_map: ShardMap, clock: Arc<RevisionClock>, leases: LeaseTable) -> Arc<Self> {
        let memtables = shard_map.all_shards().map(|_| Memtable::new()).collect();
        Arc::new(Self {
            shard_map,
            memtables,
            clock,
            compacted_revision: AtomicI64::new(NEVER_COMPACTED),
            leases,
        })
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Whether any shard has a key attached to `lease`.
    pub fn has_keys_with_lease(&self, lease: i64) -> bool {
        self.memtables
            .iter()
            .any(|memtable| memtable.has_keys_with_lease(lease))
    }

    /// Every key attached to `lease`, across shards, in key order. Exact
    /// only while every shard is held (a revocation) or on the owning core.
    pub fn keys_with_lease(&self, lease: i64) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = self
            .memtables
            .iter()
            .flat_map(|memtable| memtable.keys_with_lease(lease))
            .collect();
        keys.sort();
        keys
    }

    pub fn shard_map(&self) -> &ShardMap {
        &self.shard_map
    }

    pub fn clock(&self) -> &Arc<RevisionClock> {
        &self.clock
    }

    pub fn memtable(&self, shard: ShardId) -> &Memtable {
        &self.memtables[shard]
    }

    pub fn compacted_revision(&self) -> i64 {
        self.compacted_revision.load(Ordering::SeqCst)
    }

    /// Validates a compaction request (etcd's rules) and records the new
    /// compaction point. The caller then frees history on every shard.
    pub fn begin_compaction(&self, revision: i64) -> Result<(), KvError> {
        let compacted = self.compacted_revision();
        if revision <= compacted {
            return Err(KvError::Compacted);
        }
        if revision > self.clock.watermark() {
            return Err(KvError::FutureRevision);
        }
        self.compacted_revision
            .fetch_max(revision, Ordering::SeqCst);
        Ok(())
    }

    /// Restores the compaction point found in the logs at startup.
    pub fn restore_compaction(&self, revision: i64) {
        self.compacted_revision
            .fetch_max(revision, Ordering::SeqCst);
    }

    /// Resolves a request's `revision` field against the read revision
    /// `current`, with etcd's checks: future first, then compacted.
    pub fn resolve_read_revision(&self, requested: i64, current: i64) -> Result<i64, KvError> {
        if requested > current {
            return Err(KvError::FutureRevision);
        }
        let at = if requested <= 0 { current } else { requested };
        if at < self.compacted_revision() {
            return Err(KvError::Compacted);
        }
        Ok(at)
    }

    /// The shards that can hold keys of `range`, ascending.
    pub fn shards_for(&self, range: &KeyRange) -> Vec<ShardId> {
        match range {
            KeyRange::Single(key) => vec![self.shard_map.shard_of(key)],
            span if span.is_empty() => Vec::new(),
            _ => self.shard_map.all_shards().collect(),
        }
    }

    /// Live keys of `range` at revision `at` across all shards, merged into
    /// key order. `limit == 0` means no limit; `count_only` collects none.
    pub fn range(
        &self,
        range: &KeyRange,
        at: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult, KvError> {
        let mut per_shard: Vec<Vec<KeyValue>> = Vec::new();
        let mut count = 0usize;
        for shard in self.shards_for(range) {
            let mut found = Vec::new();
            self.memtables[shard].scan(range, at, |key_value| {
                count += 1;
                if !count_only && (limit == 0 || found.len() < limit) {
                    found.push(key_value);
                }
                true
            });
            per_shard.push(found);
        }
        // A compaction that started while we read may have freed versions we
        // needed; etcd would have refused the read, so do we.
        if at < self.compacted_revision() {
            return Err(KvError::Compacted);
        }
        let mut key_values = merge_sorted(per_shard);
        if limit != 0 {
            key_values.truncate(limit);
        }
        Ok(RangeResult { key_values, count })
    }

    /// True when at least one key of `range` is live at `at`.
    pub fn any_live(&self, range: &KeyRange, at: i64) -> bool {
        self.shards_for(range).into_iter().any(|shard| {
            let mut found = false;
            self.memtables[shard].scan(range, at, |_| {
                found = true;
                false
            });
            found
        })
    }

    /// Live keys and approximate bytes over all shards, for status.
    pub fn totals(&self) -> (usize, i64) {
        self.memtables
            .iter()
            .fold((0, 0), |(keys, bytes), memtable| {
                (
                    keys + memtable.live_keys(),
                    bytes + memtable.approximate_bytes(),
                )
            })
    }
}

/// Merges per-shard key-ordered lists into one key-ordered list. Shards hold
/// disjoint keys, so there are no ties.
fn merge_sorted(mut lists: Vec<Vec<KeyValue>>) -> Vec<KeyValue> {
    lists.retain(|list| !list.is_empty());
    match lists.len() {
        0 => Vec::new(),
        1 => lists.pop().unwrap_or_default(),
        _ => {
            let mut merged: Vec<KeyValue> = lists.into_iter().flatten().collect();
            merged.sort_unstable_by(|left, right| left.key.cmp(&right.key));
            merged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memtable::Version;
    use bytes::Bytes;

    #[test]
    fn range_merges_shards_counts_all_and_limits() {
        let map = ShardMap::new(4, 1);
        let clock = RevisionClock::new(1, 1);
        let space = KeySpace::new(map, clock, LeaseTable::for_member(0));
        for (index, key) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            let revision = index as i64 + 2;
            let shard = map.shard_of(key.as_bytes());
            space.memtable(shard).insert(
                Bytes::copy_from_slice(key.as_bytes()),
                revision,
                Version {
                    value: Bytes::new(),
                    create_revision: revision,
                    version: 1,
                    lease: 0,
                    sub_revision: 0,
                },
            );
        }
        let all = KeyRange::from_request(b"a", b"\0");
        let result = space.range(&all, 100, 3, false).expect("range");
        assert_eq!(result.count, 6);
        let keys: Vec<_> = result.key_values.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(
            keys,
            vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"b"),
                Bytes::from_static(b"c")
            ]
        );
        assert_eq!(space.range(&all, 4, 0, true).expect("count").count, 3);
    }
}
