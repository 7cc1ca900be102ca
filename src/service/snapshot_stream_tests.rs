//! Backup → restore → load: the restored key space has the same `HashKV`,
//! reads, leases and compaction point, for any new shard count.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::lease::table::LeaseTable;
use crate::shard::snapshotting::load_shard_snapshot;
use crate::store::content_hash::hash_kv;
use crate::store::key_range::KeyRange;
use crate::store::memtable::Version;
use crate::store::revision::RevisionClock;
use crate::store::shard_map::ShardMap;

fn put(value: &str, create_revision: i64, version: i64, lease: i64) -> Version {
    Version {
        value: Bytes::copy_from_slice(value.as_bytes()),
        create_revision,
        version,
        lease,
        sub_revision: 0,
    }
}

/// Puts, overwrites, deletes, a leased key and a compaction at 5; the
/// watermark is 9.
fn source(shards: usize) -> Arc<KeySpace> {
    let clock = RevisionClock::new(9, 1);
    let space = KeySpace::new(ShardMap::new(shards, 1), clock, LeaseTable::for_member(3));
    space.leases().insert(77, 30, std::time::Instant::now());
    let history = [
        ("a", 2, put("1", 2, 1, 0)),
        ("b", 3, put("x", 3, 1, 0)),
        ("a", 4, put("2", 2, 2, 0)),
        ("b", 5, Version::tombstone()),
        ("c", 6, put("leased", 6, 1, 77)),
        ("a", 7, put("3", 2, 3, 0)),
        ("d", 8, put("", 8, 1, 0)),
        ("d", 9, Version::tombstone()),
    ];
    for (key, revision, version) in history {
        let key = Bytes::copy_from_slice(key.as_bytes());
        let shard = space.shard_map().shard_of(&key);
        space.memtable(shard).insert(key, revision, version);
    }
    space.begin_compaction(5).expect("compact");
    for shard in space.shard_map().all_shards() {
        space.memtable(shard).compact(5);
    }
    space
}

/// What a server started on the restored directory would hold: its shard
/// snapshots replayed (`runtime::core_thread::replay`) and compacted.
fn load(data_dir: &std::path::Path, shards: usize) -> Arc<KeySpace> {
    let mut revision = 0;
    let mut compacted = -1;
    let mut loaded = Vec::new();
    for shard in 0..shards {
        let directories = crate::runtime::shard_directories(data_dir, shard);
        let snapshot = load_shard_snapshot(&directories.snapshots, shard)
            .expect("load")
            .expect("every shard has a snapshot");
        revision = snapshot.meta.revision;
        compacted = snapshot.meta.compacted_revision;
        loaded.push(snapshot);
    }
    let space = KeySpace::new(
        ShardMap::new(shards, 1),
        RevisionClock::new(revision, 1),
        LeaseTable::for_member(4),
    );
    space.restore_compaction(compacted);
    for (shard, snapshot) in loaded.into_iter().enumerate() {
        for lease in &snapshot.leases {
            space
                .leases()
                .insert(lease.id, lease.ttl_seconds, std::time::Instant::now());
        }
        for (key, version_revision, version) in snapshot.versions {
            space.memtable(shard).insert(key, version_revision, version);
        }
        space.memtable(shard).compact(compacted);
    }
    space
}

#[test]
fn restore_gives_the_same_hash_reads_and_leases_on_any_shard_count() {
    let original = source(2);
    let image = backup_file_image(&original).expect("backup");
    assert_eq!(image.len() % 512, 32, "etcdctl's size check");
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("backup.db");
    std::fs::write(&file, &image).expect("write");
    let expected = hash_kv(&original, 0, 9).expect("hash");
    let all = KeyRange::from_request(b"\0", b"\0");
    for shards in [1, 2, 3, 7] {
        let target = directory.path().join(format!("restored-{shards}"));
        let summary =
            crate::snapshot::restore::restore(&file, &target, Some(shards)).expect("restore");
        assert_eq!((summary.revision, summary.compacted_revision), (9, 5));
        assert!(summary.verified_hash);
        let restored = load(&target, shards);
        assert_eq!(
            hash_kv(&restored, 0, 9).expect("hash"),
            expected,
            "{shards} shards"
        );
        assert_eq!(hash_kv(&restored, 7, 9), hash_kv(&original, 7, 9));
        for at in [5, 6, 9] {
            assert_eq!(
                restored
                    .range(&all, at, 0, false)
                    .expect("range")
                    .key_values,
                original
                    .range(&all, at, 0, false)
                    .expect("range")
                    .key_values,
                "read at {at}"
            );
        }
        assert_eq!(restored.compacted_revision(), 5);
        assert_eq!(
            restored.leases().all_leases(),
            original.leases().all_leases()
        );
        assert_eq!(restored.keys_with_lease(77), vec![Bytes::from_static(b"c")]);
        assert_eq!(restored.totals().0, original.totals().0, "live keys");
    }
    let refused =
        crate::snapshot::restore::restore(&file, &directory.path().join("restored-1"), None)
            .unwrap_err();
    assert!(refused.to_string().contains("not empty"), "{refused}");
}

#[test]
fn a_compaction_past_the_revision_fails_the_backup() {
    let space = source(2);
    // Simulate a compaction above the backup's revision landing mid-scan by
    // declaring it before the scan ends (the clock says the watermark is 9).
    let clock_ahead = KeySpace::new(
        ShardMap::new(1, 1),
        RevisionClock::new(3, 1),
        LeaseTable::for_member(1),
    );
    clock_ahead.restore_compaction(4);
    assert!(matches!(
        write_backup(&clock_ahead, Vec::new()),
        Err(BackupFailure::CompactedPastRevision {
            revision: 3,
            compacted: 4
        })
    ));
    assert!(write_backup(&space, Vec::new()).is_ok());
}
