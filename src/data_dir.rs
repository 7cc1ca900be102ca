//! The data directory: created private (0700), locked against a second
//! process, and holding `metastore.json`, the facts fixed at creation
//! (shard count, cluster and member IDs).

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::shard::durable_loss::RetiredLog;
use crate::store::shard_map::ShardId;

const META_FILE: &str = "metastore.json";
const LOCK_FILE: &str = "LOCK";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum DataDirError {
    #[error("data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another process (lock file is held)")]
    Locked(PathBuf),
    #[error(
        "{path} is corrupt: {reason}; restore the directory from a backup or start with an empty --data-dir"
    )]
    CorruptMeta { path: PathBuf, reason: String },
    #[error(
        "invalid value '{requested}' for '--shards': data directory {path} was created with {recorded} shards, and the shard count cannot change"
    )]
    ShardCountMismatch {
        path: PathBuf,
        requested: usize,
        recorded: usize,
    },
    #[error(
        "data directory {path} was created for a server running alone; a cluster member starts on an empty --data-dir"
    )]
    NotAClusterMember { path: PathBuf },
    #[error(
        "data directory {path} belongs to member {member_id:x} of a cluster; start it with that cluster's flags (--initial-cluster, --initial-advertise-peer-urls, --listen-peer-urls)"
    )]
    ClusterMember { path: PathBuf, member_id: u64 },
}

/// Facts fixed when the directory was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDirMeta {
    pub format_version: u32,
    /// Keys map to shards by `hash % shard_count`; changing it moves keys.
    pub shard_count: usize,
    pub cluster_id: u64,
    pub member_id: u64,
    /// Shard logs `metastore repair` replaced. Other shards' logs may still
    /// say how far a retired log was durable; those claims no longer bind
    /// (`shard::durable_loss`). Left out of the file while empty, so a data
    /// directory never repaired reads the same as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_wal_logs: Vec<RetiredLog>,
    /// The cluster's members as bootstrapped (`--initial-cluster`); empty
    /// for a server running alone. A restart takes them from here, as etcd
    /// ignores its `--initial-*` flags once its data directory exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberRecord>,
}

/// A member of the cluster, as recorded in `metastore.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRecord {
    /// etcd's member ID (`membership::member_id`); also its Raft ID.
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    /// A learner (`MemberAdd --learner`): receives the log, does not vote,
    /// until `MemberPromote`. Left out of the file when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_learner: bool,
}

/// Who a new cluster member's data directory is created for.
#[derive(Debug, Clone)]
pub struct ClusterBootstrap {
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: Vec<MemberRecord>,
}

/// Where a shard keeps its files.
#[derive(Debug, Clone)]
pub struct ShardDirectories {
    pub wal: PathBuf,
    pub snapshots: PathBuf,
}

/// A shard's directories inside the data directory.
pub fn shard_directories(data_dir: &Path, shard: ShardId) -> ShardDirectories {
    let root = data_dir.join("shards").join(format!("{shard:04}"));
    ShardDirectories {
        wal: root.join("wal"),
        snapshots: root.join("snap"),
    }
}

/// An open, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    pub meta: DataDirMeta,
    /// Held open for the process's life: the lock is released when it closes.
    _lock: File,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DataDir {
    /// Opens `path`, creating it with `default_shards` (or `requested_shards`)
    /// if it does not exist.
    pub fn open(
        path: &Path,
        requested_shards: Option<usize>,
        default_shards: usize,
    ) -> Result<Self, DataDirError> {
        Self::open_member(path, requested_shards, default_shards, None)
    }

    /// Opens `path` for a server: alone (`cluster` is `None`) or as a
    /// cluster member, creating the directory for `cluster`'s member if it
    /// does not exist. A directory made for one use refuses the other.
    pub fn open_member(
        path: &Path,
        requested_shards: Option<usize>,
        default_shards: usize,
        cluster: Option<ClusterBootstrap>,
    ) -> Result<Self, DataDirError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_error(path))?;
        let permissions = fs::metadata(path).map_err(io_error(path))?.permissions();
        if permissions.mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", permissions.mode() & 0o777), "data directory was readable by others; setting mode 0700");
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_error(path))?;
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(DataDirError::Locked(path.to_owned())),
            Err(fs::TryLockError::Error(source)) => {
                return Err(DataDirError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        let meta_path = path.join(META_FILE);
        let meta = match fs::read(&meta_path) {
            Ok(bytes) => {
                let meta = parse_meta(&meta_path, &bytes)?;
                if let Some(requested) =
                    requested_shards.filter(|requested| *requested != meta.shard_count)
                {
                    return Err(DataDirError::ShardCountMismatch {
                        path: path.to_owned(),
                        requested,
                        recorded: meta.shard_count,
                    });
                }
                match (&cluster, meta.members.is_empty()) {
                    (Some(_), true) => {
                        return Err(DataDirError::NotAClusterMember {
                            path: path.to_owned(),
                        });
                    }
                    (None, false) => {
                        return Err(DataDirError::ClusterMember {
                            path: path.to_owned(),
                            member_id: meta.member_id,
                        });
                    }
                    _ => {}
                }
                meta
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let (cluster_id, member_id, members) = match cluster {
                    Some(bootstrap) => {
                        (bootstrap.cluster_id, bootstrap.member_id, bootstrap.members)
                    }
                    None => (random_id(), random_id(), Vec::new()),
                };
                let meta = DataDirMeta {
                    format_version: FORMAT_VERSION,
                    shard_count: requested_shards.unwrap_or(default_shards),
                    cluster_id,
                    member_id,
                    retired_wal_logs: Vec::new(),
                    members,
                };
                write_meta(path, &meta)?;
                meta
            }
            Err(source) => {
                return Err(DataDirError::Io {
                    path: meta_path,
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            meta,
            _lock: lock,
        })
    }

    /// Whether `path` holds a data directory already (made by an earlier
    /// start).
    pub fn exists(path: &Path) -> bool {
        path.join(META_FILE).is_file()
    }

    /// Opens a data directory that must already exist (for offline tools:
    /// they must not create one where the operator mistyped a path).
    pub fn open_existing(path: &Path) -> Result<Self, DataDirError> {
        if !path.join(META_FILE).is_file() {
            return Err(DataDirError::Io {
                path: path.join(META_FILE),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a MetaStore data directory (no metastore.json)",
                ),
            });
        }
        Self::open(path, None, 1)
    }

    /// Records that a shard's log was replaced (`metastore repair`), durably,
    /// before the replacement takes its place.
    pub fn retire_wal_log(&mut self, retired: RetiredLog) -> Result<(), DataDirError> {
        if !self.meta.retired_wal_logs.contains(&retired) {
            let mut meta = self.meta.clone();
            meta.retired_wal_logs.push(retired);
            write_meta(&self.path, &meta)?;
            self.meta = meta;
        }
        Ok(())
    }
}

/// Bytes of every file under the data directory's `shards/` (WAL segments
/// and snapshot files): what the data takes on disk. Blocking (a directory
/// walk); files that vanish meanwhile (a released segment) count as 0.
pub fn shard_files_bytes(data_dir: &Path) -> u64 {
    fn walk(path: &Path) -> u64 {
        let Ok(listing) = fs::read_dir(path) else {
            return 0;
        };
        listing
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(metadata) if metadata.is_dir() => walk(&entry.path()),
                Ok(metadata) => metadata.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(&data_dir.join("shards"))
}

/// How much of a file [`remove_gradually`] frees per step, and the pause
/// after each step.
const REMOVAL_STEP_BYTES: u64 = 1024 * 1024;
const REMOVAL_STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Removes a file 1 MiB at a time (shrinking it from the end), then
/// unlinks it. Blocking: call it from a thread of its own.
///
/// Why not one unlink: ext4 frees all of a file's blocks in one journal
/// commit (and, mounted with `discard` as here, discards them in it), and
/// every WAL write and fdatasync that needs the journal meanwhile waits.
/// Measured on this machine, a 4 KiB O_DIRECT write + fdatasync loop beside
/// a writer that unlinked a 128 MiB file every 2 s: stalls of 40-50 ms at
/// each unlink (max 47.5 ms, p99.9 1.3 ms); removing the same files 8 MiB
/// per 10 ms: max 3.7 ms; 1 MiB per 5 ms (the steps used here): max 3.1 ms.
/// Under load every write of a shard waits for its WAL sync, so those
/// stalls were the put p99.
pub fn remove_gradually(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut length = file.metadata()?.len();
    while length > 0 {
        length = length.saturating_sub(REMOVAL_STEP_BYTES);
        file.set_len(length)?;
        std::thread::sleep(REMOVAL_STEP_PAUSE);
    }
    drop(file);
    fs::remove_file(path)
}

/// [`remove_gradually`] on a thread of its own, for each path in turn;
/// failures are logged (a file left behind only wastes space). The returned
/// receiver is told when every path was handled.
pub fn spawn_gradual_removal(paths: Vec<PathBuf>) -> futures_channel::oneshot::Receiver<()> {
    let (done, finished) = futures_channel::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("metastore-remove".to_owned())
        .spawn(move || {
            for path in &paths {
                if let Err(error) = remove_gradually(path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(file = %path.display(), %error, "cannot remove a file");
                }
            }
            let _ = done.send(());
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start a thread to remove files; they are left on disk");
    }
    finished
}

fn parse_meta(path: &Path, bytes: &[u8]) -> Result<DataDirMeta, DataDirError> {
    let corrupt = |reason: String| DataDirError::CorruptMeta {
        path: path.to_owned(),
        reason,
    };
    let meta: DataDirMeta =
        serde_json::from_slice(bytes).map_err(|error| corrupt(error.to_string()))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "unknown format_version {}",
            meta.format_version
        )));
    }
    if meta.shard_count == 0 || meta.shard_count > crate::config::MAX_SHARDS {
        return Err(corrupt(format!(
            "shard_count {} is out of range",
            meta.shard_count
        )));
    }
    Ok(meta)
}

/// Writes the meta file atomically.
fn write_meta(dir: &Path, meta: &DataDirMeta) -> Result<(), DataDirError> {
    let final_path = dir.join(META_FILE);
    let bytes = serde_json::to_vec_pretty(meta).map_err(|error| DataDirError::CorruptMeta {
        path: final_path.clone(),
        reason: error.to_string(),
    })?;
    write_atomically(dir, META_FILE, &bytes).map_err(io_error(&final_path))
}

/// Replaces `dir/file_name` with `bytes` so that a crash leaves either the
/// old file or the new one: temp file, fsync, rename, fsync dir.
pub fn write_atomically(dir: &Path, file_name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temp_path = dir.join(format!("{file_name}.tmp"));
    let mut file = File::create(&temp_path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp_path, dir.join(file_name))?;
    File::open(dir)?.sync_all()
}

/// A non-zero ID, unpredictable across processes (std's per-process
/// random hash keys mixed with time and pid).
fn random_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    RandomState::new()
        .hash_one((nanos, std::process::id()))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradual_removal_frees_the_file_and_reports_a_missing_one() {
        let directory =
            std::env::temp_dir().join(format!("metastore-remove-gradually-{}", std::process::id()));
        fs::create_dir_all(&directory).expect("mkdir");
        let large = directory.join("large");
        fs::write(&large, vec![7u8; 3 * 1024 * 1024 + 5]).expect("write");
        let empty = directory.join("empty");
        fs::write(&empty, b"").expect("write");
        remove_gradually(&large).expect("remove the large file");
        remove_gradually(&empty).expect("remove the empty file");
        assert!(!large.exists() && !empty.exists());
        let missing = remove_gradually(&large).expect_err("already gone");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        fs::remove_dir_all(&directory).expect("cleanup");
    }

    fn temp_dir(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("metastore-datadir-{name}-{}", random_id()));
        let _ = fs::remove_dir_all(&path);
        path
    }

    #[test]
    fn created_private_locked_and_stable() {
        let path = temp_dir("create");
        let first = DataDir::open(&path, Some(3), 2).expect("create");
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o700
        );
        assert!(matches!(
            DataDir::open(&path, None, 2),
            Err(DataDirError::Locked(_))
        ));
        let meta = first.meta.clone();
        drop(first);
        let again = DataDir::open(&path, None, 8).expect("reopen");
        assert_eq!(again.meta, meta, "IDs and shard count survive a restart");
        assert_eq!(again.meta.shard_count, 3);
        drop(again);
        assert!(matches!(
            DataDir::open(&path, Some(5), 2),
            Err(DataDirError::ShardCountMismatch { recorded: 3, .. })
        ));
        fs::remove_dir_all(&path).expect("cleanup");
    }

    #[test]
    fn corrupt_meta_is_refused_with_advice() {
        let path = temp_dir("corrupt");
        fs::create_dir_all(&path).expect("mkdir");
        fs::write(path.join(META_FILE), b"{not json").expect("write");
        let error = DataDir::open(&path, None, 2).unwrap_err().to_string();
        assert!(
            error.contains("corrupt") && error.contains("backup"),
            "{error}"
        );
        fs::remove_dir_all(&path).expect("cleanup");
    }
}
