//! Versions a shard has proposed to its Raft log but not yet applied.
//!
//! A shard's memtable changes only when a committed entry is applied
//! (design §6), the same way on every member. Yet the shard's leader
//! evaluates each write against the writes it accepted before it: two puts
//! of one key in one group commit must get versions 1 and 2, a Txn must
//! compare against the put proposed just before it. `PendingVersions` is
//! that difference between "accepted" and "applied": the leader records a
//! write's versions here when it proposes them and forgets them when the
//! entry is applied, and write evaluation reads through it
//! (`write::WriteContext`). Readers never consult it: what is pending is
//! above the watermark anyway.
//!
//! Entries are applied in log order, and a shard proposes in revision
//! order, so each key's pending versions leave oldest first.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::Bytes;

use super::key_range::KeyRange;
use super::memtable::Version;
use crate::proto::mvccpb::KeyValue;

/// Proposed, not yet applied versions of one shard's keys.
#[derive(Debug, Default, Clone)]
pub struct PendingVersions {
    /// Each key's pending versions with their revisions, oldest first
    /// (nearly always one).
    by_key: BTreeMap<Bytes, Vec<(i64, Version)>>,
    /// Leases whose revocation is proposed: a put proposed after it must
    /// not attach to them (etcd applies both in log order, and the put
    /// finds no lease).
    revoked_leases: BTreeSet<i64>,
}

impl PendingVersions {
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty() && self.revoked_leases.is_empty()
    }

    /// Adds another shard's pending state (a multi-shard write evaluates
    /// against every participant's; shards hold disjoint keys).
    pub fn absorb(&mut self, other: PendingVersions) {
        self.by_key.extend(other.by_key);
        self.revoked_leases.extend(other.revoked_leases);
    }

    /// Records a proposed revocation of `lease`.
    pub fn revoke_lease(&mut self, lease: i64) {
        self.revoked_leases.insert(lease);
    }

    /// Whether a revocation of `lease` is proposed and not applied yet.
    pub fn is_lease_revoked(&self, lease: i64) -> bool {
        self.revoked_leases.contains(&lease)
    }

    /// Forgets a revocation once applied (the lease left the table).
    pub fn lease_revocation_applied(&mut self, lease: i64) {
        self.revoked_leases.remove(&lease);
    }

    /// Records the versions a write proposes at `revision`.
    pub fn propose<'a>(
        &mut self,
        revision: i64,
        changes: impl IntoIterator<Item = (&'a Bytes, &'a Version)>,
    ) {
        for (key, version) in changes {
            let versions = self.by_key.entry(key.clone()).or_default();
            debug_assert!(
                versions.last().is_none_or(|(newest, _)| *newest < revision),
                "a shard proposes in revision order"
            );
            versions.push((revision, version.clone()));
        }
    }

    /// Forgets `key`'s version at `revision`: its entry was applied, so the
    /// memtable holds it now.
    pub fn applied(&mut self, revision: i64, key: &[u8]) {
        let Some(versions) = self.by_key.get_mut(key) else {
            return;
        };
        // Applied in log order: the oldest pending version goes first. A
        // key with no pending version at `revision` was applied by a
        // member that did not propose it (a follower, a replay).
        if versions
            .first()
            .is_some_and(|(oldest, _)| *oldest == revision)
        {
            versions.remove(0);
        }
        if versions.is_empty() {
            self.by_key.remove(key);
        }
    }

    /// `key`'s newest pending version at or below `at`, with its revision;
    /// `None` when the memtable's answer stands.
    pub fn newest(&self, key: &[u8], at: i64) -> Option<(i64, &Version)> {
        self.by_key
            .get(key)?
            .iter()
            .rev()
            .find_map(|(revision, version)| (*revision <= at).then_some((*revision, version)))
    }

    /// Whether any pending version lies in `range`.
    pub fn touches(&self, range: &KeyRange) -> bool {
        self.in_range(range).next().is_some()
    }

    /// `stored` (the memtable's live keys of `range` at `at`, ascending)
    /// with the pending versions at or below `at` laid over it.
    pub fn overlay(&self, range: &KeyRange, at: i64, stored: Vec<KeyValue>) -> Vec<KeyValue> {
        let newer = self.in_range(range).filter_map(|(key, _)| {
            self.newest(key, at)
                .map(|(revision, version)| (key, revision, version))
        });
        lay_over(stored, newer)
    }

    /// `stored` (the memtable's keys attached to `lease`, ascending) as the
    /// newest pending versions change it: keys detached or deleted leave,
    /// keys attached join.
    pub fn keys_with_lease(&self, lease: i64, stored: Vec<Bytes>) -> Vec<Bytes> {
        let mut keys: BTreeSet<Bytes> = stored.into_iter().collect();
        for (key, versions) in &self.by_key {
            let Some((_, newest)) = versions.last() else {
                continue;
            };
            if !newest.is_tombstone() && newest.lease == lease {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        keys.into_iter().collect()
    }

    fn in_range<'a>(
        &'a self,
        range: &KeyRange,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Vec<(i64, Version)>)> + 'a {
        let (start, end) = match range {
            KeyRange::Single(key) => (Bound::Included(key.clone()), Bound::Included(key.clone())),
            KeyRange::Span { start, end } => (
                Bound::Included(start.clone()),
                end.clone().map_or(Bound::Unbounded, Bound::Excluded),
            ),
        };
        // An inverted span selects nothing (BTreeMap::range panics on it).
        let inverted = matches!((&start, &end),
            (Bound::Included(start), Bound::Excluded(end)) if start > end);
        (!inverted)
            .then(|| self.by_key.range((start, end)))
            .into_iter()
            .flatten()
    }
}

/// `stored` (live key-values, ascending by key) with newer versions laid
/// over it, each with the revision it was written at: a tombstone removes
/// its key, any other version replaces or adds it. Ascending by key.
pub fn lay_over<'a>(
    stored: Vec<KeyValue>,
    newer: impl IntoIterator<Item = (&'a Bytes, i64, &'a Version)>,
) -> Vec<KeyValue> {
    let mut merged: BTreeMap<Bytes, KeyValue> = stored
        .into_iter()
        .map(|key_value| (key_value.key.clone(), key_value))
        .collect();
    for (key, revision, version) in newer {
        if version.is_tombstone() {
            merged.remove(key);
        } else {
            merged.insert(key.clone(), version.to_key_value(key, revision));
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(value: &'static str, version: i64, lease: i64) -> Version {
        Version {
            value: Bytes::from_static(value.as_bytes()),
            create_revision: 1,
            version,
            lease,
            sub_revision: 0,
        }
    }

    fn key(name: &'static str) -> Bytes {
        Bytes::from_static(name.as_bytes())
    }

    fn span(start: &'static str, end: &'static str) -> KeyRange {
        KeyRange::Span {
            start: key(start),
            end: Some(key(end)),
        }
    }

    #[test]
    fn newest_respects_the_read_revision_and_applied_forgets_oldest_first() {
        let mut pending = PendingVersions::default();
        pending.propose(5, [(&key("a"), &put("one", 1, 0))]);
        pending.propose(6, [(&key("a"), &put("two", 2, 0))]);
        assert_eq!(pending.newest(b"a", i64::MAX).map(|(r, _)| r), Some(6));
        assert_eq!(pending.newest(b"a", 5).map(|(r, _)| r), Some(5));
        assert!(pending.newest(b"a", 4).is_none());
        pending.applied(5, b"a");
        assert_eq!(pending.newest(b"a", 5).map(|(r, _)| r), None);
        assert_eq!(pending.newest(b"a", 6).map(|(r, _)| r), Some(6));
        // Not the oldest pending revision: a follower's apply, kept.
        pending.applied(9, b"a");
        assert!(!pending.is_empty());
        pending.applied(6, b"a");
        assert!(pending.is_empty());
    }

    #[test]
    fn overlay_adds_replaces_and_removes() {
        let mut pending = PendingVersions::default();
        pending.propose(
            7,
            [
                (&key("b"), &put("new-b", 2, 0)),
                (&key("c"), &Version::tombstone()),
                (&key("d"), &put("d", 1, 0)),
                (&key("z"), &put("outside", 1, 0)),
            ],
        );
        let stored = ["a", "b", "c"]
            .iter()
            .map(|name| put(name, 1, 0).to_key_value(&key(name), 3))
            .collect();
        let merged = pending.overlay(&span("a", "e"), i64::MAX, stored);
        let summary: Vec<(String, i64)> = merged
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into(), kv.mod_revision))
            .collect();
        assert_eq!(summary, [("a".into(), 3), ("b".into(), 7), ("d".into(), 7)]);
        assert!(pending.touches(&span("c", "d")));
        assert!(!pending.touches(&span("e", "y")));
        assert!(
            !pending.touches(&span("d", "a")),
            "an inverted span is empty"
        );
        assert!(pending.touches(&KeyRange::Single(key("z"))));
    }

    #[test]
    fn lease_keys_follow_the_newest_pending_version() {
        let mut pending = PendingVersions::default();
        pending.propose(
            4,
            [
                (&key("attached"), &put("x", 1, 9)),
                (&key("detached"), &put("x", 2, 0)),
                (&key("deleted"), &Version::tombstone()),
            ],
        );
        let stored = vec![key("deleted"), key("detached"), key("kept")];
        assert_eq!(
            pending.keys_with_lease(9, stored),
            [key("attached"), key("kept")]
        );
    }
}
