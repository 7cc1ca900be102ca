//! `metastore snapshot restore <file> --data-dir <dir> [--shards N]`: turns
//! a backup (`backup.rs`) into a new data directory that the server's normal
//! startup loads.
//!
//! The new directory gets new cluster and member IDs (`data_dir`), and one
//! shard snapshot file per shard (at Raft position index 1, term 1) with an
//! empty WAL after it. Each snapshot declares the backup's revision R and
//! compaction point, so recovery settles every revision up to R, restores
//! the compaction point, and the revision clock restarts at R. Versions are
//! re-partitioned by the new shard map (`shard = crc32c(key) % shards`) and
//! each lease goes to its new home shard (`lease::home_shard`).
//!
//! Invariants: the backup is read and validated in full before anything is
//! created, and an existing non-empty directory is never written into.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::backup::{Backup, BackupError, read_backup};
use super::{
    SnapshotEntry, SnapshotError, SnapshotMeta, WritePace, encode_snapshot, write_snapshot_file,
};
use crate::data_dir::{DataDir, DataDirError};
use crate::store::shard_map::ShardMap;

/// The Raft position every restored shard's snapshot claims: the log
/// starts fresh after it.
const RESTORED_RAFT_INDEX: u64 = 1;
const RESTORED_RAFT_TERM: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot read snapshot file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot file {path} is refused: {source}")]
    Invalid { path: PathBuf, source: BackupError },
    #[error("snapshot file {path} holds version {revision} of a key twice: the file is corrupt")]
    DuplicateVersion { path: PathBuf, revision: i64 },
    #[error("data directory {0} exists and is not empty; restore into a new directory")]
    TargetNotEmpty(PathBuf),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the snapshot of shard {shard}: {source}")]
    Encode { shard: usize, source: SnapshotError },
}

impl RestoreError {
    /// True when the input was at fault (a bad file or target), as opposed
    /// to the machine (I/O while writing): the command exits with 2 then.
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            Self::Read { .. }
                | Self::Invalid { .. }
                | Self::DuplicateVersion { .. }
                | Self::TargetNotEmpty(_)
        )
    }
}

/// What a restore wrote, for the command's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub revision: i64,
    pub compacted_revision: i64,
    pub versions: usize,
    pub leases: usize,
    pub shards: usize,
    pub cluster_id: u64,
    pub member_id: u64,
    pub verified_hash: bool,
}

/// Restores `file` into the new data directory `data_dir` with `shards`
/// shards (default: the source's count).
pub fn restore(
    file: &Path,
    data_dir: &Path,
    shards: Option<usize>,
) -> Result<RestoreSummary, RestoreError> {
    let image = std::fs::read(file).map_err(|source| RestoreError::Read {
        path: file.to_owned(),
        source,
    })?;
    let backup = read_backup(&Bytes::from(image)).map_err(|source| RestoreError::Invalid {
        path: file.to_owned(),
        source,
    })?;
    let shard_count = shards.unwrap_or(backup.source_shard_count as usize).max(1);
    let shard_map = ShardMap::new(shard_count, 1);
    let partitions =
        partition(&backup, &shard_map).map_err(|revision| RestoreError::DuplicateVersion {
            path: file.to_owned(),
            revision,
        })?;
    refuse_non_empty(data_dir)?;
    let directory = DataDir::open(data_dir, Some(shard_count), shard_count)?;
    let summary = RestoreSummary {
        revision: backup.revision,
        compacted_revision: backup.compacted_revision,
        versions: backup.entries.len(),
        leases: backup.leases.len(),
        shards: shard_count,
        cluster_id: directory.meta.cluster_id,
        member_id: directory.meta.member_id,
        verified_hash: backup.verified_hash,
    };
    for (shard, entries) in partitions.into_iter().enumerate() {
        write_shard(data_dir, &shard_map, shard, &backup, entries)?;
    }
    sync_directory(&data_dir.join("shards"))?;
    sync_directory(data_dir)?;
    Ok(summary)
}

/// Splits the backup's versions by the new shard map, each shard's list in
/// key order then revision ascending (the order a memtable is built in).
/// `Err(revision)` if a key has two versions at one revision.
pub fn partition(backup: &Backup, shard_map: &ShardMap) -> Result<Vec<Vec<SnapshotEntry>>, i64> {
    let mut partitions: Vec<Vec<SnapshotEntry>> =
        shard_map.all_shards().map(|_| Vec::new()).collect();
    for entry in &backup.entries {
        partitions[shard_map.shard_of(&entry.key)].push(entry.clone());
    }
    for entries in &mut partitions {
        entries.sort_unstable_by(|left, right| {
            left.key
                .cmp(&right.key)
                .then(left.revision.cmp(&right.revision))
        });
        if let Some(pair) = entries
            .windows(2)
            .find(|pair| pair[0].key == pair[1].key && pair[0].revision == pair[1].revision)
        {
            return Err(pair[0].revision);
        }
    }
    Ok(partitions)
}

/// Creates one shard's directories and writes its snapshot file.
fn write_shard(
    data_dir: &Path,
    shard_map: &ShardMap,
    shard: usize,
    backup: &Backup,
    entries: Vec<SnapshotEntry>,
) -> Result<(), RestoreError> {
    let directories = crate::runtime::shard_directories(data_dir, shard);
    for path in [&directories.wal, &directories.snapshots] {
        std::fs::create_dir_all(path).map_err(|source| RestoreError::Write {
            path: path.clone(),
            source,
        })?;
    }
    let meta = SnapshotMeta {
        shard: shard as u32,
        shard_count: shard_map.shard_count() as u32,
        raft_index: RESTORED_RAFT_INDEX,
        raft_term: RESTORED_RAFT_TERM,
        revision: backup.revision,
        compacted_revision: backup.compacted_revision,
    };
    let leases: Vec<_> = backup
        .leases
        .iter()
        .filter(|lease| crate::lease::home_shard(shard_map, lease.id) == shard)
        .copied()
        .collect();
    let image = encode_snapshot(&meta, &leases, entries)
        .map_err(|source| RestoreError::Encode { shard, source })?;
    write_snapshot_file(&directories.snapshots, &meta, &image, WritePace::Unpaced).map_err(
        |source| RestoreError::Write {
            path: directories.snapshots.clone(),
            source,
        },
    )?;
    Ok(())
}

/// The target may be missing or an empty directory, nothing else.
fn refuse_non_empty(data_dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(data_dir) {
        Ok(mut listing) => match listing.next() {
            None => Ok(()),
            Some(_) => Err(RestoreError::TargetNotEmpty(data_dir.to_owned())),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RestoreError::Write {
            path: data_dir.to_owned(),
            source,
        }),
    }
}

fn sync_directory(path: &Path) -> Result<(), RestoreError> {
    std::fs::File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| RestoreError::Write {
            path: path.to_owned(),
            source,
        })
}
