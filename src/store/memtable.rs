//! One shard's MVCC memtable: every revision of every key, in a lock-free
//! skip list.
//!
//! Entries are ordered by key ascending, then revision *descending*, so a
//! seek to `(key, R)` lands on the newest version of `key` at or below R.
//!
//! Invariants:
//! - Only the core that owns the shard inserts or removes entries (single
//!   writer); any core may read concurrently (the skip list is lock-free).
//! - A reader at revision R only relies on entries with revision `<= R`, and
//!   compaction at C only removes entries that no read at a revision `>= C`
//!   can see. Readers check the compacted revision before and after reading.
//! - A key has at most one entry per revision: a revision is one write, and
//!   one write changes a key at most once.

use std::ops::Bound;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering as AtomicOrdering};

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;

use super::key_range::KeyRange;
pub use super::version_key::VersionKey;
use super::version_key::VersionProbe;
use crate::proto::mvccpb::KeyValue;

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub value: Bytes,
    /// Revision of the put that created the key's current generation.
    pub create_revision: i64,
    /// Number of puts since creation; 0 marks a tombstone (the key was
    /// deleted at this revision), exactly as etcd's index does.
    pub version: i64,
    pub lease: i64,
    /// This change's place among the changes of its revision (etcd's
    /// sub-revision: op order in a txn, key order in a delete range), so
    /// watchers see a revision's events in the order etcd gives them.
    pub sub_revision: u32,
}

impl Version {
    pub fn tombstone() -> Self {
        Self {
            value: Bytes::new(),
            create_revision: 0,
            version: 0,
            lease: 0,
            sub_revision: 0,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub fn to_key_value(&self, key: &Bytes, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}

/// Revision sentinel that sorts after every real revision of a key (real
/// revisions are >= 1 and sort descending).
const AFTER_ALL_REVISIONS: i64 = 0;

/// Where a change sits in the global history: its revision, then its
/// sub-revision. Ordered the way watchers must see changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangePosition {
    pub revision: i64,
    pub sub_revision: u32,
}

/// One change read back from a shard's history, for watchers.
#[derive(Debug, Clone)]
pub struct HistoricalChange {
    pub position: ChangePosition,
    pub key: Bytes,
    /// The version written; `None` for a delete.
    pub version: Option<Version>,
}

/// Where an incremental compaction of one memtable stands (see
/// [`Memtable::compact_step`]).
#[derive(Debug, Clone)]
pub struct CompactionCursor {
    /// History below this revision is freed; each key keeps its newest
    /// version at or below it (unless that is a tombstone).
    revision: i64,
    /// The next step's starting point.
    position: CompactionPosition,
}

#[derive(Debug, Clone)]
enum CompactionPosition {
    /// Trimming the revision index from its oldest entry.
    RevisionIndex,
    /// Walking the versions in key order.
    Versions {
        /// The first version the next step visits; `None` before the first.
        resume_at: Option<VersionKey>,
        /// The key whose newest version at or below the compaction
        /// revision was already visited: its older versions are freed.
        settled_key: Option<Bytes>,
        /// That version, when it is a tombstone: freed once the walk has
        /// passed its key (see `compact_step`).
        doomed_tombstone: Option<VersionKey>,
    },
    Finished,
}

impl CompactionCursor {
    pub fn new(revision: i64) -> Self {
        Self {
            revision,
            position: CompactionPosition::RevisionIndex,
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }
}

/// A shard's memtable.
#[derive(Default)]
pub struct Memtable {
    versions: SkipMap<VersionKey, Version>,
    /// The same versions indexed by revision: what changed at each
    /// revision. Watchers read history through it (etcd reads its backend
    /// by revision the same way); compaction trims it with `versions`.
    history: SkipMap<ChangePosition, Bytes>,
    /// `(lease, key)` for every key whose newest version is live and
    /// attached to a lease: what a revocation deletes and what
    /// `LeaseTimeToLive` lists. Rebuilt by replay like everything else.
    lease_keys: SkipMap<(i64, Bytes), ()>,
    /// Keys whose newest version is live; maintained by the single writer so
    /// `etcd_debugging_mvcc_keys_total`-style counts need no scan.
    live_keys: AtomicUsize,
    /// Approximate bytes held (keys + values), for status and quota.
    approximate_bytes: AtomicI64,
}

impl Memtable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn live_keys(&self) -> usize {
        self.live_keys.load(AtomicOrdering::Relaxed)
    }

    pub fn approximate_bytes(&self) -> i64 {
        self.approximate_bytes.load(AtomicOrdering::Relaxed)
    }

    pub fn version_count(&self) -> usize {
        self.versions.len()
    }

    /// The newest version of `key` at or below `at`, if the key is live there.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyValue> {
        let probe = VersionProbe::new(key, at);
        let entry = self
            .versions
            .lower_bound(Bound::Included(probe.as_position()))?;
        let found = entry.key();
        if found.key != key || entry.value().is_tombstone() {
            return None;
        }
        Some(entry.value().to_key_value(&found.key, found.revision))
    }

    /// The newest version of `key` regardless of revision, tombstones
    /// included. Only meaningful on the owning core (the single writer).
    pub fn newest(&self, key: &[u8]) -> Option<(i64, Version)> {
        let probe = VersionProbe::new(key, i64::MAX);
        let entry = self
            .versions
            .lower_bound(Bound::Included(probe.as_position()))?;
        (entry.key().key == key).then(|| (entry.key().revision, entry.value().clone()))
    }

    /// Calls `visit` for each key live at revision `at` within `range`, in
    /// ascending key order, until `visit` returns false.
    pub fn scan(&self, range: &KeyRange, at: i64, mut visit: impl FnMut(KeyValue) -> bool) {
        if let KeyRange::Single(key) = range {
            if let Some(key_value) = self.get(key, at) {
                visit(key_value);
            }
            return;
        }
        let mut probe = VersionKey::new(range.start().clone(), at);
        while let Some(entry) = self.versions.lower_bound(Bound::Included(&probe)) {
            let found = entry.key();
            if !range.contains(&found.key) {
                return;
            }
            if found.revision > at {
                // Landed on a newer version of this key; jump to its newest
                // version at or below `at`.
                probe = VersionKey::new(found.key.clone(), at);
                continue;
            }
            let version = entry.value();
            if !version.is_tombstone() && !visit(version.to_key_value(&found.key, found.revision)) {
                return;
            }
            probe = VersionKey::new(found.key.clone(), AFTER_ALL_REVISIONS);
        }
    }

    /// Calls `visit` for every stored version with revision `<= at`, in key
    /// order. Safe from any thread while the owner writes: versions at or
    /// below a completed revision never change (compaction may remove some
    /// below the compaction point meanwhile; reads there are refused).
    pub fn for_each_version_at_or_below(
        &self,
        at: i64,
        mut visit: impl FnMut(&Bytes, i64, &Version),
    ) {
        for entry in self.versions.iter() {
            if entry.key().revision <= at {
                visit(&entry.key().key, entry.key().revision, entry.value());
            }
        }
    }

    /// Every stored version, in key order then revision descending (the
    /// skip list's order), as owned handles (the `Bytes` are shared, not
    /// copied). Lazy and lock-free: safe from any thread while the owner
    /// writes; versions above the watermark may appear and the caller
    /// filters them, and a concurrent compaction may remove some below its
    /// point (the caller re-checks the compaction point afterwards).
    pub fn versions(&self) -> impl Iterator<Item = (Bytes, i64, Version)> + '_ {
        self.versions.iter().map(|entry| {
            let position = entry.key();
            (
                position.key.clone(),
                position.revision,
                entry.value().clone(),
            )
        })
    }

    /// Inserts `version` of `key` at `revision`. Owning core only.
    ///
    /// Normally revisions arrive in ascending order. Loading a snapshot may
    /// insert a key's versions in any order (shard snapshots list them
    /// newest first): an insert below the key's newest version adds history
    /// only, and leaves liveness and the lease index to the newest one.
    pub fn insert(&self, key: Bytes, revision: i64, version: Version) {
        let newest = self.newest(&key);
        if newest
            .as_ref()
            .is_some_and(|(newest_revision, _)| *newest_revision > revision)
        {
            self.store_version(key, revision, version);
            return;
        }
        let previous = newest.map(|(_, newest)| newest);
        self.newest_changed(&key, previous.as_ref(), Some(&version));
        self.store_version(key, revision, version);
    }

    /// Keeps the live-key count and the lease index in step when `key`'s
    /// newest version changes from `previous` to `next` (`None`: no
    /// version at all).
    fn newest_changed(&self, key: &Bytes, previous: Option<&Version>, next: Option<&Version>) {
        fn live(version: Option<&Version>) -> Option<&Version> {
            version.filter(|version| !version.is_tombstone())
        }
        let (was, is) = (live(previous), live(next));
        let previous_lease = was.map_or(0, |version| version.lease);
        let lease = is.map_or(0, |version| version.lease);
        if previous_lease != lease {
            if previous_lease != 0 {
                self.lease_keys.remove(&(previous_lease, key.clone()));
            }
            if lease != 0 {
                self.lease_keys.insert((lease, key.clone()), ());
            }
        }
        match (was.is_some(), is.is_some()) {
            (false, true) => {
                self.live_keys.fetch_add(1, AtomicOrdering::Relaxed);
            }
            (true, false) => {
                self.live_keys.fetch_sub(1, AtomicOrdering::Relaxed);
            }
            _ => {}
        }
    }

    /// Removes every version at a revision in `from..=to`: a cluster's
    /// lead member voided them after a failover (those writes never
    /// happened; `store::applied_revisions`). Owning core only. Readers
    /// never looked at them: the watermark stays below `from` until the
    /// void is applied in every group.
    pub fn remove_revisions(&self, from: i64, to: i64) {
        let first = ChangePosition {
            revision: from,
            sub_revision: 0,
        };
        let last = ChangePosition {
            revision: to,
            sub_revision: u32::MAX,
        };
        let removed: Vec<(ChangePosition, Bytes)> = self
            .history
            .range(first..=last)
            .map(|entry| (*entry.key(), entry.value().clone()))
            .collect();
        for (position, key) in removed {
            let before = self.newest(&key).map(|(_, version)| version);
            if let Some(entry) = self
                .versions
                .remove(&VersionKey::new(key.clone(), position.revision))
            {
                let bytes = (key.len() + entry.value().value.len()) as i64;
                self.approximate_bytes
                    .fetch_sub(bytes, AtomicOrdering::Relaxed);
            }
            self.history.remove(&position);
            let after = self.newest(&key).map(|(_, version)| version);
            self.newest_changed(&key, before.as_ref(), after.as_ref());
        }
    }

    /// Adds a version to the versions and the revision index and counts
    /// its bytes; the key's liveness and lease are the caller's business
    /// (an older version behind the newest, as a snapshot load inserts,
    /// changes neither).
    fn store_version(&self, key: Bytes, revision: i64, version: Version) {
        self.history.insert(
            ChangePosition {
                revision,
                sub_revision: version.sub_revision,
            },
            key.clone(),
        );
        let bytes = (key.len() + version.value.len()) as i64;
        self.approximate_bytes
            .fetch_add(bytes, AtomicOrdering::Relaxed);
        self.versions
            .insert(VersionKey::new(key, revision), version);
    }

    /// Frees history below `compact_revision` in one go: for every key, the
    /// newest version at or below it is kept (unless it is a tombstone) and
    /// every older version is removed. Owning core only; used by replay,
    /// before anything is served (the worker compacts in steps instead).
    pub fn compact(&self, compact_revision: i64) {
        let mut cursor = CompactionCursor::new(compact_revision);
        while !self.compact_step(&mut cursor, usize::MAX) {}
    }

    /// Does at most `budget` units of a compaction's work (one unit: one
    /// revision-index entry removed or one version visited) and returns
    /// whether the compaction is finished. Owning core only.
    ///
    /// Between steps the owner may insert versions, but only above the
    /// compaction revision (every revision at or below it was applied
    /// before it was chosen: it is at or below the watermark), so the
    /// version a key keeps cannot change under the cursor, and the result
    /// is the one-shot compaction's.
    pub fn compact_step(&self, cursor: &mut CompactionCursor, budget: usize) -> bool {
        let mut spent = 0;
        if matches!(cursor.position, CompactionPosition::RevisionIndex) {
            // Watchers may start at the compaction point itself, so its own
            // changes stay readable.
            let below = ChangePosition {
                revision: cursor.revision,
                sub_revision: 0,
            };
            while let Some(oldest) = self.history.front() {
                if *oldest.key() >= below {
                    break;
                }
                if spent == budget {
                    return false;
                }
                oldest.remove();
                spent += 1;
            }
            cursor.position = CompactionPosition::Versions {
                resume_at: None,
                settled_key: None,
                doomed_tombstone: None,
            };
        }
        let CompactionPosition::Versions {
            resume_at,
            settled_key,
            doomed_tombstone,
        } = &mut cursor.position
        else {
            return true;
        };
        let start = resume_at.take().map_or(Bound::Unbounded, Bound::Included);
        for entry in self.versions.range((start, Bound::Unbounded)) {
            if spent == budget {
                *resume_at = Some(entry.key().clone());
                return false;
            }
            spent += 1;
            let found = entry.key();
            if doomed_tombstone
                .as_ref()
                .is_some_and(|tombstone| tombstone.key != found.key)
            {
                // Past its key: every older version of it is gone.
                self.remove_version(doomed_tombstone.take());
            }
            if found.revision > cursor.revision {
                continue;
            }
            if settled_key.as_ref() == Some(&found.key) {
                // Older than the version this key keeps at the point.
                self.remove_entry(&entry);
            } else {
                // The newest version at or below the point: kept, unless
                // it is a tombstone (nothing can read a deleted key there),
                // which goes last, once its key is passed: until then the
                // key's newest version stays the tombstone, never an older
                // live version a write could mistake for the current one.
                *settled_key = Some(found.key.clone());
                if entry.value().is_tombstone() {
                    *doomed_tombstone = Some(found.clone());
                }
            }
        }
        self.remove_version(doomed_tombstone.take());
        cursor.position = CompactionPosition::Finished;
        true
    }

    fn remove_version(&self, position: Option<VersionKey>) {
        if let Some(entry) = position.and_then(|position| self.versions.get(&position)) {
            self.remove_entry(&entry);
        }
    }

    /// Calls `visit` for each change with a revision in `after+1..=through`,
    /// in (revision, sub-revision) order. Safe from any thread for
    /// revisions at or below the watermark; the caller re-checks the
    /// compaction point afterwards.
    pub fn changes_between(
        &self,
        after: i64,
        through: i64,
        mut visit: impl FnMut(HistoricalChange) -> bool,
    ) {
        if through <= after {
            return;
        }
        let start = ChangePosition {
            revision: after.saturating_add(1),
            sub_revision: 0,
        };
        let end = ChangePosition {
            revision: through,
            sub_revision: u32::MAX,
        };
        for entry in self.history.range(start..=end) {
            let position = *entry.key();
            let key = entry.value().clone();
            let probe = VersionProbe::new(&key, position.revision);
            let stored = self.versions.get(probe.as_position());
            // A missing version is a tombstone a compaction at exactly this
            // revision freed: still delivered as a delete, so a watch from
            // the compaction point misses nothing (etcd-io/etcd#18089).
            let version = stored
                .map(|stored| stored.value().clone())
                .filter(|version| !version.is_tombstone());
            if !visit(HistoricalChange {
                position,
                key,
                version,
            }) {
                return;
            }
        }
    }

    /// Whether any key's newest version is attached to `lease`.
    pub fn has_keys_with_lease(&self, lease: i64) -> bool {
        self.lease_keys
            .range((lease, Bytes::new())..)
            .next()
            .is_some_and(|entry| entry.key().0 == lease)
    }

    /// Keys whose newest version is attached to `lease`, in key order.
    pub fn keys_with_lease(&self, lease: i64) -> Vec<Bytes> {
        let start = (lease, Bytes::new());
        self.lease_keys
            .range(start..)
            .take_while(|entry| entry.key().0 == lease)
            .map(|entry| entry.key().1.clone())
            .collect()
    }

    fn remove_entry(&self, entry: &crossbeam_skiplist::map::Entry<'_, VersionKey, Version>) {
        let bytes = (entry.key().key.len() + entry.value().value.len()) as i64;
        self.approximate_bytes
            .fetch_sub(bytes, AtomicOrdering::Relaxed);
        entry.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(value: &str, create_revision: i64, version: i64) -> Version {
        Version {
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision,
            version,
            lease: 0,
            sub_revision: 0,
        }
    }

    fn keys_at(memtable: &Memtable, range: &KeyRange, at: i64) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        memtable.scan(range, at, |kv| {
            out.push((
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            ));
            true
        });
        out
    }

    #[test]
    fn reads_see_the_newest_version_at_or_below_the_revision() {
        let memtable = Memtable::new();
        memtable.insert(Bytes::from_static(b"a"), 2, live("1", 2, 1));
        memtable.insert(Bytes::from_static(b"a"), 4, live("2", 2, 2));
        memtable.insert(Bytes::from_static(b"b"), 3, live("x", 3, 1));
        memtable.insert(Bytes::from_static(b"b"), 5, Version::tombstone());
        assert_eq!(memtable.get(b"a", 1), None);
        assert_eq!(
            memtable.get(b"a", 3).map(|kv| kv.value),
            Some(Bytes::from_static(b"1"))
        );
        assert_eq!(memtable.get(b"a", 9).map(|kv| kv.version), Some(2));
        assert_eq!(memtable.get(b"b", 5), None);
        let all = KeyRange::from_request(b"\0", b"\0");
        assert_eq!(
            keys_at(&memtable, &all, 4),
            vec![("a".into(), 4), ("b".into(), 3)]
        );
        assert_eq!(keys_at(&memtable, &all, 5), vec![("a".into(), 4)]);
        assert_eq!(memtable.live_keys(), 1);
    }

    #[test]
    fn removing_voided_revisions_restores_what_was_newest() {
        let memtable = Memtable::new();
        let mut leased = live("1", 2, 1);
        leased.lease = 7;
        memtable.insert(Bytes::from_static(b"a"), 2, leased);
        memtable.insert(Bytes::from_static(b"a"), 4, live("2", 2, 2));
        memtable.insert(Bytes::from_static(b"b"), 5, live("x", 5, 1));
        memtable.insert(Bytes::from_static(b"a"), 6, Version::tombstone());
        let bytes_before_voids = 2; // a@2: "a" and "1"
        memtable.remove_revisions(4, 6);
        assert_eq!(memtable.version_count(), 1, "only a@2 remains");
        assert_eq!(memtable.get(b"a", 9).map(|kv| kv.mod_revision), Some(2));
        assert_eq!(memtable.get(b"b", 9), None);
        assert_eq!(memtable.live_keys(), 1);
        assert_eq!(memtable.keys_with_lease(7), vec![Bytes::from_static(b"a")]);
        assert_eq!(memtable.approximate_bytes(), bytes_before_voids);
        let mut history = Vec::new();
        memtable.changes_between(0, 10, |change| {
            history.push(change.position.revision);
            true
        });
        assert_eq!(history, vec![2]);
    }

    #[test]
    fn compaction_keeps_newest_visible_version_and_drops_tombstones() {
        let memtable = Memtable::new();
        memtable.insert(Bytes::from_static(b"a"), 2, live("1", 2, 1));
        memtable.insert(Bytes::from_static(b"a"), 3, live("2", 2, 2));
        memtable.insert(Bytes::from_static(b"b"), 4, live("x", 4, 1));
        memtable.insert(Bytes::from_static(b"b"), 5, Version::tombstone());
        memtable.insert(Bytes::from_static(b"a"), 6, live("3", 2, 3));
        memtable.compact(5);
        assert_eq!(memtable.version_count(), 2, "a@3 and a@6 remain");
        assert_eq!(memtable.get(b"a", 5).map(|kv| kv.mod_revision), Some(3));
        assert_eq!(memtable.get(b"a", 6).map(|kv| kv.mod_revision), Some(6));
        assert_eq!(
            memtable.get(b"b", 4),
            None,
            "history below the compaction point is gone"
        );
    }

    fn changes(memtable: &Memtable, after: i64, through: i64) -> Vec<(i64, u32, String, bool)> {
        let mut out = Vec::new();
        memtable.changes_between(after, through, |change| {
            out.push((
                change.position.revision,
                change.position.sub_revision,
                String::from_utf8_lossy(&change.key).into_owned(),
                change.version.is_some(),
            ));
            true
        });
        out
    }

    #[test]
    fn history_lists_changes_by_revision_then_sub_revision() {
        let memtable = Memtable::new();
        let mut second = live("2", 2, 1);
        second.sub_revision = 1;
        memtable.insert(Bytes::from_static(b"a"), 2, second);
        memtable.insert(Bytes::from_static(b"b"), 2, live("1", 2, 1));
        memtable.insert(Bytes::from_static(b"a"), 3, Version::tombstone());
        assert_eq!(
            changes(&memtable, 0, 9),
            vec![
                (2, 0, "b".into(), true),
                (2, 1, "a".into(), true),
                (3, 0, "a".into(), false)
            ]
        );
        assert_eq!(changes(&memtable, 2, 3), vec![(3, 0, "a".into(), false)]);
        memtable.compact(3);
        memtable.insert(Bytes::from_static(b"c"), 4, live("x", 4, 1));
        memtable.compact(4);
        assert_eq!(
            changes(&memtable, 0, 9),
            vec![(4, 0, "c".into(), true)],
            "changes below the compaction point are freed, the point's own stay"
        );
    }

    #[test]
    fn newest_first_inserts_give_the_same_liveness_and_lease_index() {
        let mut leased = live("1", 2, 1);
        leased.lease = 7;
        let versions = [
            (b"a", 2, leased.clone()),
            (b"a", 3, Version::tombstone()),
            (b"b", 4, leased.clone()),
            (b"b", 5, live("2", 4, 2)),
            (b"c", 6, live("x", 6, 1)),
            (b"c", 7, leased),
        ];
        let ascending = Memtable::new();
        let descending = Memtable::new();
        for (key, revision, version) in versions.iter().cloned() {
            ascending.insert(Bytes::from_static(key), revision, version);
        }
        for (key, revision, version) in versions.iter().rev().cloned() {
            descending.insert(Bytes::from_static(key), revision, version);
        }
        for memtable in [&ascending, &descending] {
            assert_eq!(memtable.live_keys(), 2, "a is deleted, b and c live");
            assert_eq!(memtable.keys_with_lease(7), vec![Bytes::from_static(b"c")]);
            assert_eq!(memtable.version_count(), 6);
        }
        assert_eq!(
            ascending.approximate_bytes(),
            descending.approximate_bytes()
        );
    }

    #[test]
    fn lease_index_follows_the_newest_version() {
        let memtable = Memtable::new();
        let mut leased = live("1", 2, 1);
        leased.lease = 7;
        memtable.insert(Bytes::from_static(b"a"), 2, leased.clone());
        memtable.insert(Bytes::from_static(b"b"), 3, leased.clone());
        assert_eq!(memtable.keys_with_lease(7).len(), 2);
        assert!(memtable.has_keys_with_lease(7) && !memtable.has_keys_with_lease(6));
        memtable.insert(Bytes::from_static(b"a"), 4, live("2", 2, 2));
        memtable.insert(Bytes::from_static(b"b"), 5, Version::tombstone());
        assert!(memtable.keys_with_lease(7).is_empty());
        assert!(!memtable.has_keys_with_lease(7));
        memtable.insert(Bytes::from_static(b"b"), 6, leased);
        assert_eq!(memtable.keys_with_lease(7), vec![Bytes::from_static(b"b")]);
        assert!(memtable.keys_with_lease(8).is_empty());
    }

    /// Everything a memtable holds, for comparing two of them.
    fn contents(
        memtable: &Memtable,
    ) -> (Vec<(VersionKey, Version)>, Vec<ChangePosition>, usize, i64) {
        (
            memtable
                .versions
                .iter()
                .map(|entry| (entry.key().clone(), entry.value().clone()))
                .collect(),
            memtable.history.iter().map(|entry| *entry.key()).collect(),
            memtable.live_keys(),
            memtable.approximate_bytes(),
        )
    }

    /// A random change of one of a few keys: mostly puts, some deletes.
    fn random_change(rng: &mut rand::rngs::StdRng, revision: i64) -> (Bytes, Version) {
        use rand::RngExt;
        let key = Bytes::from(format!("k{}", rng.random_range(0..12u32)));
        let version = if rng.random_bool(0.2) {
            Version::tombstone()
        } else {
            live(&format!("v{revision}"), 1, rng.random_range(1..5i64))
        };
        (key, version)
    }

    /// Chunked compaction, with the owner inserting above the compaction
    /// point between chunks, ends exactly like one-shot compaction, which
    /// in turn matches a model of etcd's rule. Prints its seed; rerun one
    /// with `MEMTABLE_TEST_SEED=<seed>`.
    #[test]
    fn chunked_compaction_matches_one_shot() {
        use rand::{RngExt, SeedableRng};
        let seed = std::env::var("MEMTABLE_TEST_SEED")
            .ok()
            .map(|text| text.parse().expect("MEMTABLE_TEST_SEED must be a u64"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |elapsed| elapsed.as_nanos() as u64)
            });
        println!("chunked_compaction_matches_one_shot: MEMTABLE_TEST_SEED={seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..200 {
            let (one_shot, chunked) = (Memtable::new(), Memtable::new());
            let mut revision = 1;
            for _ in 0..rng.random_range(0..150) {
                revision += 1;
                let (key, version) = random_change(&mut rng, revision);
                one_shot.insert(key.clone(), revision, version.clone());
                chunked.insert(key, revision, version);
            }
            let point = rng.random_range(1..=revision);
            let before = contents(&one_shot);
            one_shot.compact(point);
            let mut cursor = CompactionCursor::new(point);
            while !chunked.compact_step(&mut cursor, rng.random_range(0..20)) {
                // What a write evaluates against at every pause: each key's
                // newest version, if live (and so the live-key count).
                for key in (0..12).map(|key| format!("k{key}")) {
                    let live = |memtable: &Memtable| {
                        memtable
                            .newest(key.as_bytes())
                            .filter(|(_, version)| !version.is_tombstone())
                    };
                    assert_eq!(
                        live(&chunked),
                        live(&one_shot),
                        "round {round}: {key} mid-compaction"
                    );
                }
                if rng.random_bool(0.3) {
                    revision += 1;
                    let (key, version) = random_change(&mut rng, revision);
                    one_shot.insert(key.clone(), revision, version.clone());
                    chunked.insert(key, revision, version);
                }
            }
            assert_eq!(
                contents(&chunked),
                contents(&one_shot),
                "round {round}, compacted at {point}"
            );
            let expected: Vec<_> = before
                .0
                .iter()
                .filter(|(position, version)| {
                    let newest_at_point = before
                        .0
                        .iter()
                        .find(|(other, _)| other.key == position.key && other.revision <= point);
                    position.revision > point
                        || (newest_at_point.is_some_and(|(newest, _)| newest == position)
                            && !version.is_tombstone())
                })
                .cloned()
                .collect();
            let survivors: Vec<_> = contents(&one_shot)
                .0
                .into_iter()
                .filter(|(position, _)| before.0.iter().any(|(old, _)| old == position))
                .collect();
            assert_eq!(
                survivors, expected,
                "round {round}: etcd's rule, compacted at {point}"
            );
        }
    }
}
