//! Taking a shard snapshot, and loading one back at startup.
//!
//! A snapshot holds a shard's versions at or below a revision W that was
//! the node's watermark when the snapshot began: every revision `<= W` is
//! complete on every shard, so recovery may treat them as settled (see
//! `recovery`). It covers the shard's Raft log through the last entry with a
//! revision `<= W` (the log is in revision order), and the entries after it
//! are replayed from the WAL.
//!
//! Writing runs on a plain thread, never on the shard's core: the memtable
//! is lock-free to read, and versions at or below a completed revision never
//! change, so the shard keeps serving while its snapshot is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::snapshot::{
    SnapshotEntry, SnapshotLease, SnapshotMeta, SnapshotView, WritePace, encode_snapshot,
    load_newest_snapshot, parse_snapshot_file_name, write_snapshot_file,
};
use crate::store::key_space::KeySpace;
use crate::store::memtable::Version;
use crate::store::shard_map::ShardId;

/// Bytes per second a snapshot is written at while the node serves (see
/// [`WritePace`] for the measurement behind it). About 7% of this
/// machine's disk bandwidth: a 100 MiB shard image takes about 3 s, during
/// which the WAL below the snapshot is simply kept a little longer.
const LIVE_SNAPSHOT_WRITE_RATE: u64 = 32 * 1024 * 1024;

/// Where a snapshot should cover up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPoint {
    pub raft_index: u64,
    pub raft_term: u64,
    pub revision: i64,
}

/// Why a snapshot was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFailure {
    pub message: String,
    /// The disk (or a quota) is full: the shard raises NOSPACE.
    pub out_of_space: bool,
}

impl std::fmt::Display for SnapshotFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}

/// Scans `shard`'s memtable at `point.revision`, encodes and writes the
/// snapshot file atomically into `directory`. Blocking: call it from a
/// thread of its own.
pub fn write_shard_snapshot(
    space: &Arc<KeySpace>,
    shard: ShardId,
    point: SnapshotPoint,
    directory: &Path,
) -> Result<PathBuf, SnapshotFailure> {
    let mut entries = Vec::new();
    space
        .memtable(shard)
        .for_each_version_at_or_below(point.revision, |key, revision, version| {
            entries.push(SnapshotEntry {
                key: key.clone(),
                revision,
                value: version.value.clone(),
                create_revision: version.create_revision,
                version: version.version,
                lease: version.lease,
                sub_revision: version.sub_revision,
            });
        });
    let meta = SnapshotMeta {
        shard: shard as u32,
        shard_count: space.shard_map().shard_count() as u32,
        raft_index: point.raft_index,
        raft_term: point.raft_term,
        revision: point.revision,
        // Read after the scan: a compaction that ran meanwhile may have
        // removed history below its point, which this then declares.
        compacted_revision: space.compacted_revision(),
    };
    // Only durable leases are in the table (grants join it once logged,
    // revocations leave it once durable), so the snapshot holds no lease a
    // crash could still take back. Replaying the log after the snapshot
    // grants or revokes again; both are idempotent.
    let leases = space.leases().leases_homed_on(space.shard_map(), shard);
    let bytes = encode_snapshot(&meta, &leases, entries).map_err(|error| SnapshotFailure {
        message: error.to_string(),
        out_of_space: false,
    })?;
    write_snapshot_file(
        directory,
        &meta,
        &bytes,
        WritePace::BytesPerSecond(LIVE_SNAPSHOT_WRITE_RATE),
    )
    .map_err(|error| SnapshotFailure {
        message: format!("writing snapshot into {}: {error}", directory.display()),
        out_of_space: crate::wal::error::is_out_of_space(&error),
    })
}

/// Deletes every snapshot file in `directory` older than `newest` (the WAL
/// before `newest` is released, so an older snapshot could not be used),
/// and temp files of older positions left by a write the process did not
/// live to finish (a temp file of a newer position may be the next
/// snapshot, being written now). Files are freed gradually
/// ([`remove_gradually`](crate::data_dir::remove_gradually) says why); a
/// crash meanwhile leaves an older, shortened snapshot, which startup never
/// picks over the newer valid one.
pub fn remove_older_snapshots(directory: &Path, newest: &Path) {
    let Some(newest_position) = newest
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(parse_snapshot_file_name)
    else {
        return;
    };
    let Ok(listing) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let snapshot_name = name.strip_suffix(".tmp").unwrap_or(name);
        let older = parse_snapshot_file_name(snapshot_name)
            .is_some_and(|position| position < newest_position);
        if older
            && let Err(error) = crate::data_dir::remove_gradually(&entry.path())
            // Another cleanup (of a later snapshot) may have got there first.
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %entry.path().display(), %error, "cannot remove an old snapshot");
        }
    }
}

/// A shard snapshot read back at startup.
pub struct LoadedShardSnapshot {
    pub meta: SnapshotMeta,
    pub leases: Vec<SnapshotLease>,
    pub versions: Vec<(Bytes, i64, Version)>,
}

/// Loads and validates the newest snapshot in `directory`, if any.
pub fn load_shard_snapshot(
    directory: &Path,
    shard: ShardId,
) -> Result<Option<LoadedShardSnapshot>, String> {
    let Some((path, bytes)) = load_newest_snapshot(directory)
        .map_err(|error| format!("reading snapshots in {}: {error}", directory.display()))?
    else {
        return Ok(None);
    };
    loaded_from_image(Bytes::from(bytes), shard)
        .map(Some)
        .map_err(|error| format!("{}: {error}", path.display()))
}

/// Validates a snapshot image of `shard` and reads it into a shard's parts.
pub fn loaded_from_image(image: Bytes, shard: ShardId) -> Result<LoadedShardSnapshot, String> {
    // Keys and values are slices of the image (about 4x faster to restore
    // than copies); the image stays in memory while any of them is alive.
    let view = SnapshotView::open(&image).map_err(|error| error.to_string())?;
    let meta = view.meta();
    if meta.shard as usize != shard {
        return Err(format!(
            "it belongs to shard {}, not {shard}; restore the data directory from a backup",
            meta.shard
        ));
    }
    let versions = view
        .entries()
        .map(|entry| {
            let version = Version {
                value: image.slice_ref(entry.value),
                create_revision: entry.create_revision,
                version: entry.version,
                lease: entry.lease,
                sub_revision: entry.sub_revision,
            };
            (image.slice_ref(entry.key), entry.revision, version)
        })
        .collect();
    Ok(LoadedShardSnapshot {
        meta,
        leases: view.leases(),
        versions,
    })
}

/// Nice value of background threads (snapshots, backups): the lowest
/// priority, so the kernel runs them only on CPU time the pinned executor
/// threads leave. On a machine with no spare core a full-priority
/// snapshot of a large memtable stole seconds of CPU from the cores and
/// showed up as the put p99 (0.2-0.6 s under a steady open-loop load).
const BACKGROUND_NICE: i32 = 19;

/// Lowers the calling thread's CPU priority (Linux nice values are per
/// thread). Failing to is harmless: the thread just competes as before.
pub fn run_in_background() {
    if let Err(error) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        tracing::debug!(%error, "cannot lower a background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::snapshot_file_name;

    #[test]
    fn cleanup_keeps_the_newest_the_next_in_flight_and_unrelated_files_only() {
        let directory = tempfile_directory();
        let names = [
            snapshot_file_name(1, 10),
            snapshot_file_name(2, 5),
            snapshot_file_name(2, 40),
            format!("{}.tmp", snapshot_file_name(2, 20)),
            format!("{}.tmp", snapshot_file_name(2, 60)),
            "notes.txt".to_owned(),
        ];
        for name in &names {
            std::fs::write(directory.join(name), b"x").expect("write");
        }
        remove_older_snapshots(&directory, &directory.join(snapshot_file_name(2, 40)));
        let mut left: Vec<String> = std::fs::read_dir(&directory)
            .expect("list")
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "notes.txt".to_owned(),
                snapshot_file_name(2, 40),
                format!("{}.tmp", snapshot_file_name(2, 60)),
            ]
        );
        std::fs::remove_dir_all(&directory).expect("cleanup");
    }

    fn tempfile_directory() -> std::path::PathBuf {
        let directory = std::env::temp_dir().join(format!(
            "metastore-snapshotting-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).expect("mkdir");
        directory
    }
}
